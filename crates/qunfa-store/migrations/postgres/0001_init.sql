-- qunfa schema, PostgreSQL flavour. Timestamps are Unix milliseconds; JSON lives in TEXT.
CREATE TABLE workspaces (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    plan TEXT,
    created_at BIGINT NOT NULL,
    next_contact_idx BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE members (
    id BIGSERIAL PRIMARY KEY,
    workspace_id BIGINT NOT NULL REFERENCES workspaces(id),
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX members_workspace ON members(workspace_id);
CREATE TABLE api_keys (
    id BIGSERIAL PRIMARY KEY,
    workspace_id BIGINT NOT NULL REFERENCES workspaces(id),
    member_id BIGINT NOT NULL REFERENCES members(id),
    key_hash TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE TABLE contacts (
    workspace_id BIGINT NOT NULL,
    idx BIGINT NOT NULL,
    external_id TEXT NOT NULL,
    name TEXT NOT NULL,
    attributes TEXT NOT NULL,
    email TEXT,
    phone TEXT,
    webhook TEXT,
    wecom_userid TEXT,
    consent TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT,
    PRIMARY KEY (workspace_id, idx)
);
CREATE UNIQUE INDEX contacts_external_id ON contacts(workspace_id, external_id);
CREATE TABLE attribute_keys (
    workspace_id BIGINT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (workspace_id, key)
);
CREATE TABLE departments (
    id BIGSERIAL PRIMARY KEY,
    workspace_id BIGINT NOT NULL REFERENCES workspaces(id),
    name TEXT NOT NULL,
    parent_id BIGINT REFERENCES departments(id),
    created_at BIGINT NOT NULL
);
CREATE INDEX departments_workspace ON departments(workspace_id, parent_id);
CREATE TABLE contact_departments (
    workspace_id BIGINT NOT NULL,
    department_id BIGINT NOT NULL,
    contact_idx BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, department_id, contact_idx)
);
CREATE TABLE tags (
    id BIGSERIAL PRIMARY KEY,
    workspace_id BIGINT NOT NULL REFERENCES workspaces(id),
    path TEXT NOT NULL,
    parent_id BIGINT REFERENCES tags(id),
    created_at BIGINT NOT NULL,
    last_used_at BIGINT
);
CREATE UNIQUE INDEX tags_path ON tags(workspace_id, path);
CREATE TABLE contact_tags (
    workspace_id BIGINT NOT NULL,
    tag_id BIGINT NOT NULL,
    contact_idx BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, tag_id, contact_idx)
);
CREATE TABLE media (
    workspace_id BIGINT NOT NULL,
    id TEXT NOT NULL,
    content_type TEXT NOT NULL,
    filename TEXT,
    size BIGINT NOT NULL,
    bytes BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, id)
);
CREATE TABLE broadcasts (
    id BIGSERIAL PRIMARY KEY,
    workspace_id BIGINT NOT NULL REFERENCES workspaces(id),
    member_id BIGINT NOT NULL REFERENCES members(id),
    state TEXT NOT NULL,
    content TEXT NOT NULL,
    audience TEXT NOT NULL,
    channels TEXT NOT NULL,
    priority BIGINT NOT NULL,
    client_msg_id TEXT,
    request_hash TEXT NOT NULL,
    n_recipients BIGINT NOT NULL DEFAULT 0,
    frozen_audience BYTEA,
    verdicts TEXT,
    created_at BIGINT NOT NULL,
    submitted_at BIGINT,
    approved_by BIGINT,
    approved_at BIGINT,
    dispatched_at BIGINT,
    completed_at BIGINT,
    n_batches BIGINT NOT NULL DEFAULT 0,
    n_batches_done BIGINT NOT NULL DEFAULT 0,
    n_delivered BIGINT NOT NULL DEFAULT 0,
    n_failed BIGINT NOT NULL DEFAULT 0,
    n_read BIGINT NOT NULL DEFAULT 0,
    n_replied BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX broadcasts_client_msg_id ON broadcasts(workspace_id, client_msg_id) WHERE client_msg_id IS NOT NULL;
CREATE INDEX broadcasts_member_submitted ON broadcasts(member_id, submitted_at);
CREATE INDEX broadcasts_workspace ON broadcasts(workspace_id, id);
CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    broadcast_id BIGINT NOT NULL REFERENCES broadcasts(id),
    workspace_id BIGINT NOT NULL,
    batch_no BIGINT NOT NULL,
    channel TEXT NOT NULL,
    priority BIGINT NOT NULL,
    run_at BIGINT NOT NULL,
    state TEXT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    attempts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX jobs_batch ON jobs(broadcast_id, channel, batch_no);
CREATE INDEX jobs_ready ON jobs(state, priority, run_at, id);
CREATE TABLE deliveries (
    broadcast_id BIGINT NOT NULL,
    channel TEXT NOT NULL,
    contact_idx BIGINT NOT NULL,
    workspace_id BIGINT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    error_code TEXT,
    body TEXT,
    queued_at BIGINT NOT NULL,
    sent_at BIGINT,
    delivered_at BIGINT,
    read_at BIGINT,
    replied_at BIGINT,
    PRIMARY KEY (broadcast_id, channel, contact_idx)
);
CREATE INDEX deliveries_recipient ON deliveries(workspace_id, contact_idx, broadcast_id);
CREATE TABLE replies (
    id BIGSERIAL PRIMARY KEY,
    workspace_id BIGINT NOT NULL,
    broadcast_id BIGINT NOT NULL,
    contact_idx BIGINT NOT NULL,
    text TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX replies_broadcast ON replies(broadcast_id, id);
CREATE TABLE inbox_tokens (
    token_hash TEXT PRIMARY KEY,
    workspace_id BIGINT NOT NULL,
    contact_idx BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE audit_heads (
    chain BIGINT PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE audit_log (
    chain BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (chain, seq)
);
CREATE TABLE server_settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
