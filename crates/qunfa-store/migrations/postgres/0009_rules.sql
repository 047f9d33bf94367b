-- Wrong login codes count against the member's open codes: after the
-- policy's login_code_max_failures they are void (no guessing six digits).
ALTER TABLE login_codes ADD COLUMN failures BIGINT NOT NULL DEFAULT 0;
-- Rules read recent sends of a workspace (frequency caps) and reports of a
-- sender's broadcasts (account health).
CREATE INDEX broadcasts_dispatched ON broadcasts(workspace_id, dispatched_at);
CREATE INDEX reports_broadcast ON reports(broadcast_id);
