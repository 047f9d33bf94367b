-- The WeChat-compatible API: a duplicate key (WeCom enable_duplicate_check)
-- is held by one send at a time, so that it is reserved atomically with the
-- draft (a racing identical request finds it instead of sending again). An
-- older send's key is cleared when a new send takes it after its interval.
UPDATE compat_sends SET dup_key = NULL
 WHERE dup_key IS NOT NULL
   AND broadcast_id NOT IN (SELECT MAX(broadcast_id) FROM compat_sends WHERE dup_key IS NOT NULL GROUP BY workspace_id, dup_key);
DROP INDEX compat_sends_dup;
CREATE UNIQUE INDEX compat_sends_dup ON compat_sends(workspace_id, dup_key);
