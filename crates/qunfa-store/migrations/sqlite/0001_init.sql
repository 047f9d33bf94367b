-- qunfa schema, SQLite flavour. Timestamps are Unix milliseconds; JSON lives in TEXT.
CREATE TABLE workspaces (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    plan TEXT,
    created_at INTEGER NOT NULL,
    next_contact_idx INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE members (
    id INTEGER PRIMARY KEY,
    workspace_id INTEGER NOT NULL REFERENCES workspaces(id),
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX members_workspace ON members(workspace_id);
CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY,
    workspace_id INTEGER NOT NULL REFERENCES workspaces(id),
    member_id INTEGER NOT NULL REFERENCES members(id),
    key_hash TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE contacts (
    workspace_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    external_id TEXT NOT NULL,
    name TEXT NOT NULL,
    attributes TEXT NOT NULL,
    email TEXT,
    phone TEXT,
    webhook TEXT,
    wecom_userid TEXT,
    consent TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted_at INTEGER,
    PRIMARY KEY (workspace_id, idx)
) WITHOUT ROWID;
CREATE UNIQUE INDEX contacts_external_id ON contacts(workspace_id, external_id);
CREATE TABLE attribute_keys (
    workspace_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (workspace_id, key)
) WITHOUT ROWID;
CREATE TABLE departments (
    id INTEGER PRIMARY KEY,
    workspace_id INTEGER NOT NULL REFERENCES workspaces(id),
    name TEXT NOT NULL,
    parent_id INTEGER REFERENCES departments(id),
    created_at INTEGER NOT NULL
);
CREATE INDEX departments_workspace ON departments(workspace_id, parent_id);
CREATE TABLE contact_departments (
    workspace_id INTEGER NOT NULL,
    department_id INTEGER NOT NULL,
    contact_idx INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, department_id, contact_idx)
) WITHOUT ROWID;
CREATE TABLE tags (
    id INTEGER PRIMARY KEY,
    workspace_id INTEGER NOT NULL REFERENCES workspaces(id),
    path TEXT NOT NULL,
    parent_id INTEGER REFERENCES tags(id),
    created_at INTEGER NOT NULL,
    last_used_at INTEGER
);
CREATE UNIQUE INDEX tags_path ON tags(workspace_id, path);
CREATE TABLE contact_tags (
    workspace_id INTEGER NOT NULL,
    tag_id INTEGER NOT NULL,
    contact_idx INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, tag_id, contact_idx)
) WITHOUT ROWID;
CREATE TABLE media (
    workspace_id INTEGER NOT NULL,
    id TEXT NOT NULL,
    content_type TEXT NOT NULL,
    filename TEXT,
    size INTEGER NOT NULL,
    bytes BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, id)
) WITHOUT ROWID;
CREATE TABLE broadcasts (
    id INTEGER PRIMARY KEY,
    workspace_id INTEGER NOT NULL REFERENCES workspaces(id),
    member_id INTEGER NOT NULL REFERENCES members(id),
    state TEXT NOT NULL,
    content TEXT NOT NULL,
    audience TEXT NOT NULL,
    channels TEXT NOT NULL,
    priority INTEGER NOT NULL,
    client_msg_id TEXT,
    request_hash TEXT NOT NULL,
    n_recipients INTEGER NOT NULL DEFAULT 0,
    frozen_audience BLOB,
    verdicts TEXT,
    created_at INTEGER NOT NULL,
    submitted_at INTEGER,
    approved_by INTEGER,
    approved_at INTEGER,
    dispatched_at INTEGER,
    completed_at INTEGER,
    n_batches INTEGER NOT NULL DEFAULT 0,
    n_batches_done INTEGER NOT NULL DEFAULT 0,
    n_delivered INTEGER NOT NULL DEFAULT 0,
    n_failed INTEGER NOT NULL DEFAULT 0,
    n_read INTEGER NOT NULL DEFAULT 0,
    n_replied INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX broadcasts_client_msg_id ON broadcasts(workspace_id, client_msg_id) WHERE client_msg_id IS NOT NULL;
CREATE INDEX broadcasts_member_submitted ON broadcasts(member_id, submitted_at);
CREATE INDEX broadcasts_workspace ON broadcasts(workspace_id, id);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    broadcast_id INTEGER NOT NULL REFERENCES broadcasts(id),
    workspace_id INTEGER NOT NULL,
    batch_no INTEGER NOT NULL,
    channel TEXT NOT NULL,
    priority INTEGER NOT NULL,
    run_at INTEGER NOT NULL,
    state TEXT NOT NULL,
    lease_owner TEXT,
    lease_until INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX jobs_batch ON jobs(broadcast_id, channel, batch_no);
CREATE INDEX jobs_ready ON jobs(state, priority, run_at, id);
CREATE TABLE deliveries (
    broadcast_id INTEGER NOT NULL,
    channel TEXT NOT NULL,
    contact_idx INTEGER NOT NULL,
    workspace_id INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    error_code TEXT,
    body TEXT,
    queued_at INTEGER NOT NULL,
    sent_at INTEGER,
    delivered_at INTEGER,
    read_at INTEGER,
    replied_at INTEGER,
    PRIMARY KEY (broadcast_id, channel, contact_idx)
) WITHOUT ROWID;
CREATE INDEX deliveries_recipient ON deliveries(workspace_id, contact_idx, broadcast_id);
CREATE TABLE replies (
    id INTEGER PRIMARY KEY,
    workspace_id INTEGER NOT NULL,
    broadcast_id INTEGER NOT NULL,
    contact_idx INTEGER NOT NULL,
    text TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX replies_broadcast ON replies(broadcast_id, id);
CREATE TABLE inbox_tokens (
    token_hash TEXT PRIMARY KEY,
    workspace_id INTEGER NOT NULL,
    contact_idx INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE audit_heads (
    chain INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE audit_log (
    chain INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL,
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
