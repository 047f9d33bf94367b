//! Workspaces, members (sender accounts) and API keys.

use qunfa_core::workspace::{Name, Role, WorkspaceKind};

use crate::{audit, new_secret, params, secret_hash, Code, Row, Store, StoreError};

/// A workspace as stored.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub id: i64,
    pub name: String,
    pub kind: WorkspaceKind,
    pub plan: Option<String>,
    pub created_at: i64,
}

/// A member: a sender account of a workspace.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: i64,
    pub workspace_id: i64,
    pub name: String,
    pub role: Role,
    pub created_at: i64,
}

/// Who a request acts as, after its API key was checked.
#[derive(Debug, Clone)]
pub struct AuthContext {
    pub workspace: Workspace,
    pub member_id: i64,
    pub role: Role,
    /// The API key, or 0 for a console session.
    pub key_id: i64,
    /// The console session, when the caller is a browser.
    pub session_id: Option<i64>,
}

impl AuthContext {
    /// How this actor appears in the audit log.
    pub fn actor(&self) -> String {
        match self.session_id {
            Some(session) => format!("member:{}/session:{session}", self.member_id),
            None => format!("member:{}/key:{}", self.member_id, self.key_id),
        }
    }
}

/// A freshly issued key; the secret is shown once and only its hash is stored.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub id: i64,
    pub secret: String,
    pub role: Role,
    pub member_id: i64,
}

pub(crate) fn workspace_from(r: &Row, offset: usize) -> Result<Workspace, StoreError> {
    Ok(Workspace {
        id: r.i64(offset),
        name: r.string(offset + 1),
        kind: WorkspaceKind::parse(r.str(offset + 2)).map_err(|_| StoreError::Corrupt("workspace kind".into()))?,
        plan: r.opt_string(offset + 3),
        created_at: r.i64(offset + 4),
    })
}

fn member_from(r: &Row) -> Result<Member, StoreError> {
    Ok(Member {
        id: r.i64(0),
        workspace_id: r.i64(1),
        name: r.string(2),
        role: Role::parse(r.str(3)).map_err(|_| StoreError::Corrupt("member role".into()))?,
        created_at: r.i64(4),
    })
}

fn insert_member(
    c: &mut crate::Conn,
    workspace_id: i64,
    name: &str,
    role: Role,
    created_at: i64,
) -> Result<i64, StoreError> {
    Ok(c.query_one(
        "INSERT INTO members (workspace_id, name, role, created_at) VALUES (?, ?, ?, ?) RETURNING id",
        params![workspace_id, name, role.as_str(), created_at],
    )?
    .i64(0))
}

fn insert_key(
    c: &mut crate::Conn,
    workspace_id: i64,
    member_id: i64,
    role: Role,
    now: i64,
) -> Result<IssuedKey, StoreError> {
    let secret = new_secret("qf_");
    let id = c
        .query_one(
            "INSERT INTO api_keys (workspace_id, member_id, key_hash, key_prefix, role, created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            params![workspace_id, member_id, secret_hash(&secret), secret[..9].to_owned(), role.as_str(), now],
        )?
        .i64(0);
    Ok(IssuedKey { id, secret, role, member_id })
}

impl Store {
    /// Creates a workspace with an owner member and the owner's first key.
    ///
    /// # Errors
    /// `QF-INVALID-NAME`, or database errors.
    pub fn create_workspace(
        &self,
        name: &Name,
        kind: WorkspaceKind,
        plan: Option<&str>,
        actor: &str,
        now: i64,
    ) -> Result<(Workspace, IssuedKey), StoreError> {
        self.db.write(|c| {
            let id = c
                .query_one(
                    "INSERT INTO workspaces (name, kind, plan, created_at) VALUES (?, ?, ?, ?) RETURNING id",
                    params![name.as_str(), kind.as_str(), plan, now],
                )?
                .i64(0);
            let member_id = insert_member(c, id, "owner", Role::Owner, now)?;
            let key = insert_key(c, id, member_id, Role::Owner, now)?;
            let details = serde_json::json!({"name": name.as_str(), "kind": kind.as_str(), "plan": plan}).to_string();
            audit::append(c, 0, actor, "workspace.created", &format!("workspace:{id}"), &details, now)?;
            audit::append(c, id, actor, "workspace.created", &format!("workspace:{id}"), &details, now)?;
            audit::append(c, id, actor, "api_key.created", &format!("api_key:{}", key.id), r#"{"role":"owner"}"#, now)?;
            let workspace =
                Workspace { id, name: name.as_str().to_owned(), kind, plan: plan.map(str::to_owned), created_at: now };
            Ok((workspace, key))
        })
    }

    /// Adds a member (sender account) with a first key of its role.
    /// `created_at` is when the account was opened (it may predate qunfa).
    ///
    /// # Errors
    /// Database errors.
    pub fn create_member(
        &self,
        workspace_id: i64,
        name: &Name,
        role: Role,
        created_at: i64,
        actor: &str,
        now: i64,
    ) -> Result<(Member, IssuedKey), StoreError> {
        self.db.write(|c| {
            let id = insert_member(c, workspace_id, name.as_str(), role, created_at)?;
            let key = insert_key(c, workspace_id, id, role, now)?;
            let details = serde_json::json!({"name": name.as_str(), "role": role.as_str()}).to_string();
            audit::append(c, workspace_id, actor, "member.created", &format!("member:{id}"), &details, now)?;
            audit::append(c, workspace_id, actor, "api_key.created", &format!("api_key:{}", key.id), &details, now)?;
            let member = Member { id, workspace_id, name: name.as_str().to_owned(), role, created_at };
            Ok((member, key))
        })
    }

    /// Issues another key for an existing member.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn issue_key(&self, workspace_id: i64, member_id: i64, actor: &str, now: i64) -> Result<IssuedKey, StoreError> {
        self.db.write(|c| {
            let m = c.query_one(
                "SELECT role FROM members WHERE id = ? AND workspace_id = ?",
                params![member_id, workspace_id],
            )?;
            let role = Role::parse(m.str(0)).map_err(|_| StoreError::Corrupt("member role".into()))?;
            let key = insert_key(c, workspace_id, member_id, role, now)?;
            audit::append(
                c,
                workspace_id,
                actor,
                "api_key.created",
                &format!("api_key:{}", key.id),
                &format!("{{\"role\":\"{}\"}}", role.as_str()),
                now,
            )?;
            Ok(key)
        })
    }

    /// Lists the members of a workspace.
    ///
    /// # Errors
    /// Database errors.
    pub fn members(&self, workspace_id: i64) -> Result<Vec<Member>, StoreError> {
        let rows = self.db.conn()?.query(
            "SELECT id, workspace_id, name, role, created_at FROM members WHERE workspace_id = ? ORDER BY id",
            params![workspace_id],
        )?;
        rows.iter().map(member_from).collect()
    }

    /// Looks up the workspace and role an API key acts as. Revoked or unknown
    /// keys give `None`.
    ///
    /// # Errors
    /// Database errors.
    pub fn authenticate(&self, secret: &str) -> Result<Option<AuthContext>, StoreError> {
        if !secret.starts_with("qf_") || secret.len() > 64 {
            return Ok(None);
        }
        let row = self.db.conn()?.query_opt(
            "SELECT w.id, w.name, w.kind, w.plan, w.created_at, k.member_id, k.role, k.id
             FROM api_keys k JOIN workspaces w ON w.id = k.workspace_id
             WHERE k.key_hash = ? AND k.revoked_at IS NULL",
            params![secret_hash(secret)],
        )?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(AuthContext {
            workspace: workspace_from(&r, 0)?,
            member_id: r.i64(5),
            role: Role::parse(r.str(6)).map_err(|_| StoreError::Corrupt("key role".into()))?,
            key_id: r.i64(7),
            session_id: None,
        }))
    }

    /// One workspace.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn workspace(&self, id: i64) -> Result<Workspace, StoreError> {
        let r = self
            .db
            .conn()?
            .query_one("SELECT id, name, kind, plan, created_at FROM workspaces WHERE id = ?", params![id])?;
        workspace_from(&r, 0)
    }

    /// Every workspace.
    ///
    /// # Errors
    /// Database errors.
    pub fn workspaces(&self) -> Result<Vec<Workspace>, StoreError> {
        let rows =
            self.db.conn()?.query("SELECT id, name, kind, plan, created_at FROM workspaces ORDER BY id", params![])?;
        rows.iter().map(|r| workspace_from(r, 0)).collect()
    }

    /// One member of a workspace.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn member(&self, workspace_id: i64, member_id: i64) -> Result<Member, StoreError> {
        let r = self.db.conn()?.query_one(
            "SELECT id, workspace_id, name, role, created_at FROM members WHERE id = ? AND workspace_id = ?",
            params![member_id, workspace_id],
        )?;
        member_from(&r)
    }

    /// Checks a plan name against the tier's plans.
    ///
    /// # Errors
    /// `QF-BAD-REQUEST` for an unknown plan.
    pub fn check_plan(tier: &qunfa_core::policy::TierPolicy, plan: Option<&str>) -> Result<(), StoreError> {
        match plan {
            Some(p) if !tier.plans.contains_key(p) => Err(StoreError::rejected(
                Code::BadRequest,
                format!("unknown plan {p:?}; plans: {}", tier.plans.keys().cloned().collect::<Vec<_>>().join(", ")),
            )),
            _ => Ok(()),
        }
    }
}
