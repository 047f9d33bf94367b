//! Approvals: the stages a held broadcast needs (fixed when it is held) and
//! every decision on them, and the workspace's review chain.

use crate::{audit, params, Code, Store, StoreError};

/// One decision on a stage.
#[derive(Debug, Clone)]
pub struct ApprovalRecord {
    pub stage: String,
    pub member_id: i64,
    /// `approve` or `reject`.
    pub decision: String,
    pub comment: String,
    pub at: i64,
}

/// The approval state of a broadcast.
#[derive(Debug, Clone, Default)]
pub struct Approvals {
    /// The stages it needs, in order.
    pub stages: Vec<String>,
    pub decisions: Vec<ApprovalRecord>,
}

impl Approvals {
    /// The first stage nobody approved yet.
    pub fn next_stage(&self) -> Option<&str> {
        self.stages
            .iter()
            .find(|s| !self.decisions.iter().any(|d| &d.stage == *s && d.decision == "approve"))
            .map(String::as_str)
    }

    /// Whether `member` already decided on any stage.
    pub fn decided_by(&self, member: i64) -> bool {
        self.decisions.iter().any(|d| d.member_id == member)
    }
}

fn stages_of(json: Option<String>) -> Vec<String> {
    json.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default()
}

impl Store {
    /// A broadcast's stages and decisions.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn approvals(&self, workspace_id: i64, broadcast_id: i64) -> Result<Approvals, StoreError> {
        self.db.read(|c| {
            let b = c.query_one(
                "SELECT approval_stages FROM broadcasts WHERE id = ? AND workspace_id = ?",
                params![broadcast_id, workspace_id],
            )?;
            let rows = c.query(
                "SELECT stage, member_id, decision, comment, at FROM approvals WHERE broadcast_id = ? ORDER BY id",
                params![broadcast_id],
            )?;
            Ok(Approvals {
                stages: stages_of(b.opt_string(0)),
                decisions: rows
                    .iter()
                    .map(|r| ApprovalRecord {
                        stage: r.string(0),
                        member_id: r.i64(1),
                        decision: r.string(2),
                        comment: r.string(3),
                        at: r.i64(4),
                    })
                    .collect(),
            })
        })
    }

    /// Records one approval of a stage that is not the last (the last is
    /// recorded with the dispatch, [`Store::record_final_approval`]). The
    /// broadcast row is locked first, so racing approvers of one stage are
    /// decided one after the other.
    ///
    /// # Errors
    /// `QF-STATE-CONFLICT` when the broadcast no longer waits or the stage
    /// was approved meanwhile; `QF-APPROVAL-DUPLICATE`; database errors.
    #[allow(clippy::too_many_arguments)]
    pub fn record_approval(
        &self,
        workspace_id: i64,
        broadcast_id: i64,
        stage: &str,
        member_id: i64,
        comment: &str,
        actor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.db
            .write(|c| insert_decision(c, workspace_id, broadcast_id, stage, member_id, "approve", comment, actor, now))
    }

    /// The workspace's review chain (stage names in order; empty: none).
    ///
    /// # Errors
    /// Database errors.
    pub fn review_chain(&self, workspace_id: i64) -> Result<Vec<String>, StoreError> {
        let r = self.db.conn()?.query_one("SELECT review_chain FROM workspaces WHERE id = ?", params![workspace_id])?;
        Ok(stages_of(r.opt_string(0)))
    }

    /// Sets the workspace's review chain (checked by the caller).
    ///
    /// # Errors
    /// Database errors.
    pub fn set_review_chain(
        &self,
        workspace_id: i64,
        stages: &[String],
        actor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(stages).unwrap_or_else(|_| "[]".into());
        self.db.write(|c| {
            c.execute("UPDATE workspaces SET review_chain = ? WHERE id = ?", params![json.as_str(), workspace_id])?;
            audit::append(
                c,
                workspace_id,
                actor,
                "workspace.review_chain",
                &format!("workspace:{workspace_id}"),
                &json,
                now,
            )?;
            Ok(())
        })
    }

    /// The stages a member may approve (empty: any).
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn review_stages(&self, workspace_id: i64, member_id: i64) -> Result<Vec<String>, StoreError> {
        let r = self.db.conn()?.query_one(
            "SELECT review_stages FROM members WHERE id = ? AND workspace_id = ?",
            params![member_id, workspace_id],
        )?;
        Ok(stages_of(r.opt_string(0)))
    }

    /// Sets the stages a member may approve.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn set_review_stages(
        &self,
        workspace_id: i64,
        member_id: i64,
        stages: &[String],
        actor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(stages).unwrap_or_else(|_| "[]".into());
        self.db.write(|c| {
            let n = c.execute(
                "UPDATE members SET review_stages = ? WHERE id = ? AND workspace_id = ?",
                params![json.as_str(), member_id, workspace_id],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            audit::append(c, workspace_id, actor, "member.review_stages", &format!("member:{member_id}"), &json, now)?;
            Ok(())
        })
    }
}

/// Inserts a decision after locking the broadcast row and checking it still
/// waits for exactly this stage and the member has not decided before.
#[allow(clippy::too_many_arguments)]
pub(crate) fn insert_decision(
    c: &mut crate::Conn,
    workspace_id: i64,
    broadcast_id: i64,
    stage: &str,
    member_id: i64,
    decision: &str,
    comment: &str,
    actor: &str,
    now: i64,
) -> Result<(), StoreError> {
    let n = c.execute(
        "UPDATE broadcasts SET approval_stages = approval_stages WHERE id = ? AND workspace_id = ? AND state = 'pending_approval'",
        params![broadcast_id, workspace_id],
    )?;
    if n == 0 {
        return Err(StoreError::rejected(Code::Conflict, "the broadcast no longer waits for approval"));
    }
    let earlier =
        c.query("SELECT stage, member_id, decision FROM approvals WHERE broadcast_id = ?", params![broadcast_id])?;
    if earlier.iter().any(|r| r.i64(1) == member_id) {
        return Err(StoreError::rejected(Code::ApprovalDuplicate, "you already approved a stage of this send"));
    }
    if earlier.iter().any(|r| r.str(0) == stage && r.str(2) == "approve") {
        return Err(StoreError::rejected(Code::Conflict, format!("stage {stage:?} was approved meanwhile")));
    }
    c.execute(
        "INSERT INTO approvals (workspace_id, broadcast_id, stage, member_id, decision, comment, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        params![workspace_id, broadcast_id, stage, member_id, decision, comment, now],
    )?;
    let details = serde_json::json!({"stage": stage, "decision": decision, "comment": comment}).to_string();
    audit::append(c, workspace_id, actor, "broadcast.approval", &format!("broadcast:{broadcast_id}"), &details, now)?;
    Ok(())
}
