-- Delivery engine: speed levels, pause, re-drives, flash messages, retention.
-- A workspace's speed level (0 fastest … 4 slowest); NULL sends unthrottled.
ALTER TABLE workspaces ADD COLUMN speed_level BIGINT;
-- Flash messages: time to live (set at creation) and the moment the content
-- goes (set at dispatch). purged_at: when retention removed the content.
ALTER TABLE broadcasts ADD COLUMN ttl_ms BIGINT;
ALTER TABLE broadcasts ADD COLUMN expires_at BIGINT;
ALTER TABLE broadcasts ADD COLUMN purged_at BIGINT;
ALTER TABLE broadcasts ADD COLUMN paused_at BIGINT;
ALTER TABLE broadcasts ADD COLUMN n_redriven BIGINT NOT NULL DEFAULT 0;
CREATE INDEX broadcasts_retention ON broadcasts(purged_at, completed_at);
-- The sender, for per-sender rates; throttled: deferred by a rate limit (a
-- speed change makes it ready again); redrive: re-sent failed deliveries.
ALTER TABLE jobs ADD COLUMN member_id BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN throttled BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN redrive BIGINT NOT NULL DEFAULT 0;
CREATE INDEX jobs_broadcast ON jobs(broadcast_id, state);
ALTER TABLE deliveries ADD COLUMN last_error TEXT;
-- Token buckets of the rate limits, shared by every node: scope is
-- 'workspace:ID', 'sender:ID' or 'channel:NAME'; tokens in thousandths.
CREATE TABLE rate_buckets (
    scope TEXT PRIMARY KEY,
    milli_tokens BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
