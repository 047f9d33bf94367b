-- Channels beyond the inbox: per-workspace settings, consent and opt-outs,
-- provider receipts, fallback, outgoing event webhooks, recipient reports.
-- Settings of one external channel of a workspace (JSON, secrets included).
CREATE TABLE channel_settings (
    workspace_id INTEGER NOT NULL,
    channel TEXT NOT NULL,
    settings TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, channel)
);
-- Contacts who must not get messages on a channel: unsubscribed (link or
-- API), consent withdrawn, or a hard bounce. Checked per batch at send time.
CREATE TABLE opt_outs (
    workspace_id INTEGER NOT NULL,
    channel TEXT NOT NULL,
    contact_idx INTEGER NOT NULL,
    reason TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, channel, contact_idx)
);
-- The provider's id of an accepted message (SMS), to match its receipt.
ALTER TABLE deliveries ADD COLUMN provider_id TEXT;
CREATE INDEX deliveries_provider ON deliveries(workspace_id, channel, provider_id);
-- filtered: left out at send time (no consent, unsubscribed); sent: accepted
-- by a provider, its receipt still to come.
ALTER TABLE broadcasts ADD COLUMN n_filtered INTEGER NOT NULL DEFAULT 0;
ALTER TABLE broadcasts ADD COLUMN n_sent INTEGER NOT NULL DEFAULT 0;
-- skipped: a fallback step's recipients for whom its condition did not hold.
ALTER TABLE broadcasts ADD COLUMN n_skipped INTEGER NOT NULL DEFAULT 0;
ALTER TABLE broadcasts ADD COLUMN fallback TEXT;
-- A fallback job sends only to recipients of the batch for whom the
-- condition holds on the previous channel: 'unread:inbox', 'failed:email'.
ALTER TABLE jobs ADD COLUMN condition TEXT;
-- When a job became done or dead (a fallback step waits from there), and
-- when it first became due (dispatch, or dispatch + the fallback waits;
-- a re-drive sets it anew): free deferrals are bounded from it.
ALTER TABLE jobs ADD COLUMN done_at INTEGER;
ALTER TABLE jobs ADD COLUMN due_at INTEGER;
-- Outgoing event webhooks: endpoints, events (the transactional outbox) and
-- one delivery per (event, endpoint).
CREATE TABLE event_endpoints (
    id INTEGER PRIMARY KEY,
    workspace_id INTEGER NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    events TEXT NOT NULL,
    allow_private_networks INTEGER NOT NULL DEFAULT 0,
    disabled_at INTEGER,
    created_at INTEGER NOT NULL
);
CREATE INDEX event_endpoints_workspace ON event_endpoints(workspace_id);
CREATE TABLE event_deliveries (
    id INTEGER PRIMARY KEY,
    endpoint_id INTEGER NOT NULL,
    workspace_id INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    lease_until INTEGER,
    last_status INTEGER,
    last_error TEXT,
    delivered_at INTEGER,
    created_at INTEGER NOT NULL
);
CREATE INDEX event_deliveries_ready ON event_deliveries(state, next_at);
CREATE INDEX event_deliveries_endpoint ON event_deliveries(endpoint_id, id);
CREATE TABLE reports (
    id INTEGER PRIMARY KEY,
    workspace_id INTEGER NOT NULL,
    broadcast_id INTEGER NOT NULL,
    contact_idx INTEGER NOT NULL,
    reason TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (broadcast_id, contact_idx)
);
