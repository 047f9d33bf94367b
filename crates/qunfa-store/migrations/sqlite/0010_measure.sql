-- Measurement (issue 9, docs/measurement.md): reading time, tracked links and
-- their clicks, conversions, the counters reports read, A/B tests.

-- Reading time per delivery: the view in progress (opened, not closed yet)
-- and the sum of the closed views (each capped).
ALTER TABLE deliveries ADD COLUMN view_started_at INTEGER;
ALTER TABLE deliveries ADD COLUMN read_ms INTEGER;
-- The recipient's first attributed click and conversion.
ALTER TABLE deliveries ADD COLUMN clicked_at INTEGER;
ALTER TABLE deliveries ADD COLUMN converted_at INTEGER;

-- A tracked link: GET /l/{short} records a click and redirects to url.
-- channel and campaign attribute the click (an offline poster, a QR code, a
-- chat group …); broadcast_id, when set, attributes it to that broadcast.
CREATE TABLE links (
    id INTEGER PRIMARY KEY,
    workspace_id INTEGER NOT NULL,
    short TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    broadcast_id INTEGER,
    channel TEXT NOT NULL,
    campaign TEXT,
    created_at INTEGER NOT NULL,
    n_clicks INTEGER NOT NULL DEFAULT 0,
    n_unique INTEGER NOT NULL DEFAULT 0,
    n_filtered INTEGER NOT NULL DEFAULT 0,
    n_conversions INTEGER NOT NULL DEFAULT 0,
    conversion_value INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX links_workspace ON links(workspace_id, id);
CREATE INDEX links_broadcast ON links(broadcast_id, id);
-- Clicks by people (bots and prefetchers are counted in links.n_filtered
-- only). contact_idx is set when the URL carried a recipient token.
CREATE TABLE clicks (
    id INTEGER PRIMARY KEY,
    link_id INTEGER NOT NULL,
    workspace_id INTEGER NOT NULL,
    broadcast_id INTEGER,
    contact_idx INTEGER,
    channel TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX clicks_link ON clicks(link_id, id);
-- Recipients who clicked a link, each once: the insert that adds the row is
-- the one that counts in links.n_unique (racing clicks count once).
CREATE TABLE link_clickers (
    link_id INTEGER NOT NULL,
    contact_idx INTEGER NOT NULL,
    PRIMARY KEY (link_id, contact_idx)
);
CREATE INDEX clicks_broadcast ON clicks(broadcast_id, id);
-- Conversions reported by integrators; event_id makes a report idempotent.
CREATE TABLE conversions (
    id INTEGER PRIMARY KEY,
    workspace_id INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    broadcast_id INTEGER,
    link_id INTEGER,
    contact_idx INTEGER,
    channel TEXT,
    request_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX conversions_event ON conversions(workspace_id, event_id);
CREATE INDEX conversions_broadcast ON conversions(broadcast_id, id);
-- The counters a report reads, moved in the transaction of each event:
-- per broadcast, delivery channel ('*': not tied to one), metric and bucket
-- (-1: the total; an hour since the epoch for heatmaps; a histogram bucket).
CREATE TABLE measure_counts (
    broadcast_id INTEGER NOT NULL,
    channel TEXT NOT NULL,
    metric TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (broadcast_id, channel, metric, bucket)
) WITHOUT ROWID;
-- The A/B test a broadcast is an arm or the winner's send of: its sends are
-- parts of one send, not near-duplicates of each other.
ALTER TABLE broadcasts ADD COLUMN ab_test_id INTEGER;
-- A/B tests: arms are broadcasts of their own (ab_arms), sent to a seeded
-- random split of a test fraction of the base draft's audience; the winner
-- goes to the rest (rest_audience).
CREATE TABLE ab_tests (
    id INTEGER PRIMARY KEY,
    workspace_id INTEGER NOT NULL,
    member_id INTEGER NOT NULL,
    base_broadcast_id INTEGER NOT NULL,
    state TEXT NOT NULL,
    variable TEXT NOT NULL,
    metric TEXT NOT NULL,
    test_fraction REAL NOT NULL,
    seed INTEGER NOT NULL,
    stratify_by TEXT,
    winner_mode TEXT NOT NULL,
    decide_at INTEGER NOT NULL,
    rest_audience BLOB NOT NULL,
    n_rest INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    decided_at INTEGER,
    decision TEXT,
    winner_arm INTEGER,
    winner_broadcast_id INTEGER
);
CREATE INDEX ab_tests_due ON ab_tests(state, decide_at);
CREATE INDEX ab_tests_workspace ON ab_tests(workspace_id, id);
CREATE TABLE ab_arms (
    test_id INTEGER NOT NULL,
    arm INTEGER NOT NULL,
    label TEXT NOT NULL,
    variant TEXT NOT NULL,
    broadcast_id INTEGER NOT NULL,
    n_assigned INTEGER NOT NULL,
    -- When the arm goes out (the send_time variable delays arms).
    send_at INTEGER NOT NULL,
    PRIMARY KEY (test_id, arm)
);
