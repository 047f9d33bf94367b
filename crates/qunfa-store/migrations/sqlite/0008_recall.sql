-- Recall, correction notices, forwards (issue 5; the columns of
-- 0006_workflow.sql and these).

-- Deliveries a recall stopped before they were made: their records are
-- `recalled` (QF-RECALLED), so counts still equal records.
ALTER TABLE broadcasts ADD COLUMN n_recalled INTEGER NOT NULL DEFAULT 0;
-- A recipient forwarded a message: one row per forward (the first one counts
-- in `broadcasts.n_forwarded`). `target` is a kind of destination, never text
-- the recipient wrote.
CREATE TABLE shares (
    id INTEGER PRIMARY KEY,
    workspace_id INTEGER NOT NULL,
    broadcast_id INTEGER NOT NULL,
    contact_idx INTEGER NOT NULL,
    target TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX shares_broadcast ON shares(broadcast_id, id);
