-- Console logins (issue 8): a member's login name and argon2 password hash
-- (PHC string), and browser sessions. Session tokens are stored as SHA-256
-- hashes; the CSRF token is derived from the session token, never stored.
-- (`member_logins` is sender security's table of devices and networks.)
CREATE TABLE console_logins (
    member_id INTEGER PRIMARY KEY,
    workspace_id INTEGER NOT NULL,
    login TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
-- Wrong passwords per (login name, client network), known names or not: a
-- lock holds only that network back, and unknown names lock like known ones.
CREATE TABLE console_login_failures (
    attempt_key TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    locked_until INTEGER,
    updated_at INTEGER NOT NULL
);
CREATE TABLE console_sessions (
    id INTEGER PRIMARY KEY,
    member_id INTEGER NOT NULL,
    workspace_id INTEGER NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX console_sessions_member ON console_sessions(member_id);
