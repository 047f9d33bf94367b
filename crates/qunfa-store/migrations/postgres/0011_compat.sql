-- The WeChat-compatible API (/cgi-bin/, docs/compat.md): per-workspace
-- credentials of the WeCom corp (kind 'wecom') and the Official Account
-- (kind 'oa'), access tokens (SHA-256 only), and which broadcasts were sent
-- through it (msgid = broadcast id), with their MASSSENDJOBFINISH callback.
CREATE TABLE compat_credentials (
    workspace_id BIGINT NOT NULL REFERENCES workspaces(id),
    kind TEXT NOT NULL,
    app_id TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    member_id BIGINT NOT NULL REFERENCES members(id),
    callback_url TEXT,
    callback_token TEXT,
    callback_aes_key TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, kind)
);
CREATE UNIQUE INDEX compat_credentials_app ON compat_credentials(kind, app_id);
CREATE TABLE compat_tokens (
    token_hash TEXT PRIMARY KEY,
    workspace_id BIGINT NOT NULL REFERENCES workspaces(id),
    kind TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX compat_tokens_workspace ON compat_tokens(workspace_id, expires_at);
CREATE TABLE compat_sends (
    broadcast_id BIGINT PRIMARY KEY REFERENCES broadcasts(id),
    workspace_id BIGINT NOT NULL,
    kind TEXT NOT NULL,
    dup_key TEXT,
    sender TEXT,
    created_at BIGINT NOT NULL,
    callback_state TEXT NOT NULL,
    callback_attempts BIGINT NOT NULL DEFAULT 0,
    callback_next_at BIGINT NOT NULL DEFAULT 0,
    callback_error TEXT
);
CREATE INDEX compat_sends_dup ON compat_sends(workspace_id, dup_key, created_at);
CREATE INDEX compat_sends_callback ON compat_sends(callback_state, callback_next_at);
CREATE INDEX compat_sends_workspace ON compat_sends(workspace_id, kind, created_at);
