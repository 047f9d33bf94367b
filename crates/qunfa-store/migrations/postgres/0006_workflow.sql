-- Platform rules, account security and the send workflow (issue 5).

-- Sender security: every (device, network) a member's requests came from.
-- A pair seen for the first time after the member's first one is `abnormal`
-- until the member verifies it with a one-time code or an admin unlocks it.
CREATE TABLE member_logins (
    member_id BIGINT NOT NULL,
    device TEXT NOT NULL,
    network TEXT NOT NULL,
    ip TEXT NOT NULL,
    state TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    verified_by TEXT,
    verified_at BIGINT,
    PRIMARY KEY (member_id, device, network)
);
-- One-time codes that verify an abnormal login (SHA-256 only).
CREATE TABLE login_codes (
    id BIGSERIAL PRIMARY KEY,
    member_id BIGINT NOT NULL,
    code_hash TEXT NOT NULL,
    issued_by TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX login_codes_member ON login_codes(member_id, id);
-- Every send attempt (refused ones too), for "operation too frequent".
CREATE TABLE send_attempts (
    id BIGSERIAL PRIMARY KEY,
    member_id BIGINT NOT NULL,
    broadcast_id BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX send_attempts_member ON send_attempts(member_id, at);
ALTER TABLE members ADD COLUMN cooldown_until BIGINT;
-- Account health: the state in force, its score and reasons (JSON).
ALTER TABLE members ADD COLUMN health_state TEXT NOT NULL DEFAULT 'healthy';
ALTER TABLE members ADD COLUMN health_score DOUBLE PRECISION NOT NULL DEFAULT 100;
ALTER TABLE members ADD COLUMN health_reasons TEXT NOT NULL DEFAULT '[]';
-- A state a platform admin set by hand (suspended, or healthy to lift one), with its reason.
ALTER TABLE members ADD COLUMN health_override TEXT;
-- The review stages (JSON list) this member may approve in a review chain.
ALTER TABLE members ADD COLUMN review_stages TEXT NOT NULL DEFAULT '[]';
CREATE TABLE health_history (
    id BIGSERIAL PRIMARY KEY,
    member_id BIGINT NOT NULL,
    state TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    reasons TEXT NOT NULL,
    actor TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX health_history_member ON health_history(member_id, id);
-- External signals (payment behaviour) and violations, per member.
CREATE TABLE health_signals (
    id BIGSERIAL PRIMARY KEY,
    member_id BIGINT NOT NULL,
    dimension TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    note TEXT NOT NULL,
    actor TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX health_signals_member ON health_signals(member_id, dimension, at);

-- Approvals: the stages a held broadcast needs (JSON list, fixed when it is
-- held) and every decision on them.
ALTER TABLE broadcasts ADD COLUMN approval_stages TEXT;
CREATE TABLE approvals (
    id BIGSERIAL PRIMARY KEY,
    workspace_id BIGINT NOT NULL,
    broadcast_id BIGINT NOT NULL,
    stage TEXT NOT NULL,
    member_id BIGINT NOT NULL,
    decision TEXT NOT NULL,
    comment TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX approvals_broadcast ON approvals(broadcast_id, id);
-- Workspace settings of the workflow: the review chain (JSON list of
-- stages), quiet hours ("22:00-08:00") and the time zone they are in.
ALTER TABLE workspaces ADD COLUMN review_chain TEXT NOT NULL DEFAULT '[]';
ALTER TABLE workspaces ADD COLUMN quiet_hours TEXT;
ALTER TABLE workspaces ADD COLUMN time_zone TEXT;

-- Per-recipient frequency caps: contacts of the frozen audience over a cap
-- (a roaring bitmap) get a `filtered` record instead of the message.
ALTER TABLE broadcasts ADD COLUMN capped BYTEA;
ALTER TABLE broadcasts ADD COLUMN n_capped BIGINT NOT NULL DEFAULT 0;
-- Fast contact growth: smaller batches (this many recipients) this far apart (ms).
ALTER TABLE broadcasts ADD COLUMN wave_interval_ms BIGINT;
ALTER TABLE broadcasts ADD COLUMN batch_size BIGINT;

-- Scheduling: when (UTC ms) and how (time zone, cron) a broadcast runs.
ALTER TABLE broadcasts ADD COLUMN schedule_at BIGINT;
ALTER TABLE broadcasts ADD COLUMN schedule_tz TEXT;
ALTER TABLE broadcasts ADD COLUMN schedule_cron TEXT;
ALTER TABLE broadcasts ADD COLUMN next_run_at BIGINT;
ALTER TABLE broadcasts ADD COLUMN scheduled_by BIGINT;
ALTER TABLE broadcasts ADD COLUMN parent_id BIGINT;
CREATE INDEX broadcasts_due ON broadcasts(state, next_run_at);

-- Recall and correction notices.
ALTER TABLE broadcasts ADD COLUMN recalled_at BIGINT;
ALTER TABLE broadcasts ADD COLUMN correction_of BIGINT;
ALTER TABLE broadcasts ADD COLUMN n_forwarded BIGINT NOT NULL DEFAULT 0;
ALTER TABLE broadcasts ADD COLUMN n_blocked BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN forwarded_at BIGINT;
-- A recipient who blocked a sender: nothing more from that member reaches them.
CREATE TABLE blocks (
    workspace_id BIGINT NOT NULL,
    contact_idx BIGINT NOT NULL,
    member_id BIGINT NOT NULL,
    broadcast_id BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, contact_idx, member_id)
);
CREATE INDEX blocks_member ON blocks(member_id, created_at);
