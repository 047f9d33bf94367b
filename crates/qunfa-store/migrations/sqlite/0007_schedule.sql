-- Scheduling: a node that took a due run (a one-off schedule, or a recurring
-- schedule's run) holds it until this time (UTC ms) while it submits it; a
-- run held by a node that died is taken again after it. A schedule can be
-- cancelled only while no node holds its run.
ALTER TABLE broadcasts ADD COLUMN schedule_claimed_until INTEGER;
-- The runs of a recurring schedule, newest first.
CREATE INDEX broadcasts_parent ON broadcasts(parent_id, id);
