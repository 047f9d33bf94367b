//! Console logins and browser sessions.
//!
//! A member may have one login (a name unique on the server) with a password,
//! stored as the argon2 PHC string the server computed (the store never sees
//! the password). A successful login opens a session: a random token in an
//! `HttpOnly` cookie, stored here as its SHA-256 hash, valid until
//! `expires_at` unless logged out. Wrong passwords count per login; after
//! `max_failures` in a row (per login name and client network, known names
//! or not) lock that pair until `locked_until`.

use qunfa_core::{workspace::Role, Code};

use crate::{
    audit, params,
    workspaces::{workspace_from, AuthContext},
    Store, StoreError,
};

/// What a login name stands for, with what is needed to check a password.
#[derive(Debug, Clone)]
pub struct LoginRecord {
    pub member_id: i64,
    pub workspace_id: i64,
    pub login: String,
    pub password_hash: String,
}

fn login_from(r: &crate::db::Row) -> LoginRecord {
    LoginRecord { member_id: r.i64(0), workspace_id: r.i64(1), login: r.string(2), password_hash: r.string(3) }
}

/// A session just opened; the token is shown once (the cookie).
#[derive(Debug, Clone)]
pub struct OpenedSession {
    pub id: i64,
    pub token: String,
    pub expires_at: i64,
}

/// Prefix of session tokens (as `qf_` is of API keys).
pub const SESSION_PREFIX: &str = "qs_";

/// The key wrong passwords are counted under: the login name and the
/// client's network (`login|network`).
pub fn attempt_key(login: &str, network: &str) -> String {
    format!("{login}|{network}")
}

impl Store {
    /// Sets (or replaces) a member's login name and password hash; ends the
    /// member's open sessions and clears the name's failed attempts.
    ///
    /// # Errors
    /// `QF-LOGIN-TAKEN` when another member has that login, `NotFound` for a
    /// member outside the workspace, or database errors.
    pub fn set_login(
        &self,
        workspace_id: i64,
        member_id: i64,
        login: &str,
        password_hash: &str,
        actor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.db.write(|c| {
            c.query_one("SELECT id FROM members WHERE id = ? AND workspace_id = ?", params![member_id, workspace_id])?;
            let taken = c.query_opt("SELECT member_id FROM console_logins WHERE login = ?", params![login])?;
            if taken.is_some_and(|r| r.i64(0) != member_id) {
                return Err(StoreError::rejected(Code::LoginTaken, format!("the login {login:?} is taken")));
            }
            c.execute("DELETE FROM console_logins WHERE member_id = ?", params![member_id])?;
            c.execute(
                "INSERT INTO console_logins (member_id, workspace_id, login, password_hash, updated_at) VALUES (?, ?, ?, ?, ?)",
                params![member_id, workspace_id, login, password_hash, now],
            )?;
            // Every `login|network` key of this name: '}' follows '|'.
            c.execute(
                "DELETE FROM console_login_failures WHERE attempt_key >= ? AND attempt_key < ?",
                params![format!("{login}|"), format!("{login}}}")],
            )?;
            c.execute(
                "UPDATE console_sessions SET revoked_at = ? WHERE member_id = ? AND revoked_at IS NULL",
                params![now, member_id],
            )?;
            let details = serde_json::json!({ "login": login }).to_string();
            audit::append(c, workspace_id, actor, "member.login_set", &format!("member:{member_id}"), &details, now)?;
            Ok(())
        })
    }

    /// The record of a login name, if there is one.
    ///
    /// # Errors
    /// Database errors.
    pub fn login_record(&self, login: &str) -> Result<Option<LoginRecord>, StoreError> {
        let row = self.db.conn()?.query_opt(
            "SELECT member_id, workspace_id, login, password_hash FROM console_logins WHERE login = ?",
            params![login],
        )?;
        Ok(row.as_ref().map(login_from))
    }

    /// The login record of a member, if it has one.
    ///
    /// # Errors
    /// Database errors.
    pub fn login_record_of(&self, member_id: i64) -> Result<Option<LoginRecord>, StoreError> {
        let row = self.db.conn()?.query_opt(
            "SELECT member_id, workspace_id, login, password_hash FROM console_logins WHERE member_id = ?",
            params![member_id],
        )?;
        Ok(row.as_ref().map(login_from))
    }

    /// Until when attempts under `key` are locked, if they are now.
    ///
    /// # Errors
    /// Database errors.
    pub fn login_locked(&self, key: &str, now: i64) -> Result<Option<i64>, StoreError> {
        let row = self.db.conn()?.query_opt(
            "SELECT locked_until FROM console_login_failures WHERE attempt_key = ? AND locked_until > ?",
            params![key, now],
        )?;
        Ok(row.and_then(|r| r.opt_i64(0)))
    }

    /// Counts a wrong password (or an unknown name) under `key`; the
    /// `max_failures`-th in a row locks the key until `now + lock_ms` and
    /// starts the count again. Returns until when it is locked, if it now is.
    ///
    /// # Errors
    /// Database errors.
    pub fn login_failed(
        &self,
        key: &str,
        max_failures: i64,
        lock_ms: i64,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        self.db.write(|c| {
            let failures = c
                .query_one(
                    "INSERT INTO console_login_failures (attempt_key, failures, updated_at) VALUES (?, 1, ?) \
                     ON CONFLICT (attempt_key) DO UPDATE SET failures = console_login_failures.failures + 1, updated_at = excluded.updated_at \
                     RETURNING failures",
                    params![key, now],
                )?
                .i64(0);
            if failures < max_failures {
                return Ok(None);
            }
            let until = now + lock_ms;
            c.execute(
                "UPDATE console_login_failures SET failures = 0, locked_until = ? WHERE attempt_key = ?",
                params![until, key],
            )?;
            Ok(Some(until))
        })
    }

    /// Opens a session for a member whose password (`checked_hash`) was just
    /// verified, unless meanwhile the password changed or `key` got locked
    /// (then `None`: concurrent guesses cannot outrun the lock, nor an old
    /// password a change). Clears `key`'s failures and the member's ended sessions.
    ///
    /// # Errors
    /// Database errors.
    #[allow(clippy::too_many_arguments)]
    pub fn open_session(
        &self,
        workspace_id: i64,
        member_id: i64,
        checked_hash: &str,
        key: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<Option<OpenedSession>, StoreError> {
        let token = crate::new_secret(SESSION_PREFIX);
        let hash = crate::secret_hash(&token);
        self.db.write(|c| {
            let current = c.query_opt(
                "SELECT password_hash FROM console_logins WHERE member_id = ? AND workspace_id = ?",
                params![member_id, workspace_id],
            )?;
            if current.is_none_or(|r| r.str(0) != checked_hash) {
                return Ok(None);
            }
            let locked = c.query_opt(
                "SELECT 1 FROM console_login_failures WHERE attempt_key = ? AND locked_until > ?",
                params![key, now],
            )?;
            if locked.is_some() {
                return Ok(None);
            }
            c.execute("DELETE FROM console_login_failures WHERE attempt_key = ?", params![key])?;
            c.execute(
                "DELETE FROM console_sessions WHERE member_id = ? AND (expires_at <= ? OR revoked_at IS NOT NULL)",
                params![member_id, now],
            )?;
            let id = c
                .query_one(
                    "INSERT INTO console_sessions (member_id, workspace_id, token_hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?) RETURNING id",
                    params![member_id, workspace_id, hash.as_str(), now, expires_at],
                )?
                .i64(0);
            let details = serde_json::json!({ "session": id }).to_string();
            let actor = format!("member:{member_id}/session:{id}");
            audit::append(c, workspace_id, &actor, "member.console_login", &format!("member:{member_id}"), &details, now)?;
            Ok(Some(OpenedSession { id, token: token.clone(), expires_at }))
        })
    }

    /// When a session ends, if it is open.
    ///
    /// # Errors
    /// Database errors.
    pub fn session_expiry(&self, session_id: i64, now: i64) -> Result<Option<i64>, StoreError> {
        let row = self.db.conn()?.query_opt(
            "SELECT expires_at FROM console_sessions WHERE id = ? AND revoked_at IS NULL AND expires_at > ?",
            params![session_id, now],
        )?;
        Ok(row.map(|r| r.i64(0)))
    }

    /// Who a session token acts as; `None` for an unknown, expired or
    /// ended session.
    ///
    /// # Errors
    /// Database errors.
    pub fn session_auth(&self, token: &str, now: i64) -> Result<Option<AuthContext>, StoreError> {
        if !token.starts_with(SESSION_PREFIX) || token.len() > 64 {
            return Ok(None);
        }
        let row = self.db.conn()?.query_opt(
            "SELECT w.id, w.name, w.kind, w.plan, w.created_at, s.member_id, m.role, s.id
             FROM console_sessions s JOIN members m ON m.id = s.member_id JOIN workspaces w ON w.id = s.workspace_id
             WHERE s.token_hash = ? AND s.revoked_at IS NULL AND s.expires_at > ?",
            params![crate::secret_hash(token), now],
        )?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(AuthContext {
            workspace: workspace_from(&r, 0)?,
            member_id: r.i64(5),
            role: Role::parse(r.str(6)).map_err(|_| StoreError::Corrupt("member role".into()))?,
            key_id: 0,
            session_id: Some(r.i64(7)),
        }))
    }

    /// Ends a session (log out).
    ///
    /// # Errors
    /// Database errors.
    pub fn end_session(&self, workspace_id: i64, session_id: i64, actor: &str, now: i64) -> Result<(), StoreError> {
        self.db.write(|c| {
            c.execute(
                "UPDATE console_sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                params![now, session_id],
            )?;
            let details = serde_json::json!({ "session": session_id }).to_string();
            audit::append(c, workspace_id, actor, "member.console_logout", actor, &details, now)?;
            Ok(())
        })
    }
}
