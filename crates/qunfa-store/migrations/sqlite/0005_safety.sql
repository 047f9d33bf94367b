-- Content safety: the human review queue. A row is opened when a send is
-- held for review by the content check (in the transaction that holds it) and
-- decided when the broadcast is approved or rejected (in that transaction).
-- Decided rows are the training examples of the risk model.
CREATE TABLE safety_reviews (
    id INTEGER PRIMARY KEY,
    workspace_id INTEGER NOT NULL,
    broadcast_id INTEGER NOT NULL,
    text TEXT NOT NULL,
    hits TEXT NOT NULL,
    risk REAL NOT NULL,
    sampled INTEGER NOT NULL DEFAULT 0,
    lexicon_version TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    reason TEXT NOT NULL DEFAULT '',
    decided_by TEXT,
    decided_at INTEGER,
    created_at INTEGER NOT NULL
);
CREATE INDEX safety_reviews_queue ON safety_reviews(workspace_id, state, id);
CREATE INDEX safety_reviews_broadcast ON safety_reviews(broadcast_id);
