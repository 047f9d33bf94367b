//! A/B tests (docs/measurement.md): each arm is a broadcast of its own, sent
//! to its share of a seeded split of the base draft's audience; the test
//! keeps the rest of the audience (a frozen bitmap) for the winner. A test
//! moves `testing` → `decided` (winner sent, or waiting for approval) or
//! `no_winner`, each step by an `UPDATE … WHERE state = <expected>`.

use qunfa_audience::Bitmap;

use crate::{audit, params, Code, Store, StoreError};

/// One arm as created.
#[derive(Debug, Clone)]
pub struct NewArm {
    pub label: String,
    /// The declared variable's value in this arm (JSON, for display).
    pub variant_json: String,
    pub broadcast_id: i64,
    pub n_assigned: u64,
    pub send_at: i64,
}

/// A test as created (the arm broadcasts exist already, as drafts).
#[derive(Debug, Clone)]
pub struct NewAbTest {
    pub base_broadcast_id: i64,
    pub variable: String,
    pub metric: String,
    pub test_fraction: f64,
    pub seed: u64,
    pub stratify_by: Option<String>,
    /// `auto` or `approval`.
    pub winner_mode: String,
    pub decide_at: i64,
    pub rest: Bitmap,
    pub arms: Vec<NewArm>,
}

/// An arm as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArmRecord {
    pub arm: u32,
    pub label: String,
    pub variant_json: String,
    pub broadcast_id: i64,
    pub n_assigned: u64,
    pub send_at: i64,
}

/// A test as stored.
#[derive(Debug, Clone)]
pub struct AbTestRecord {
    pub id: i64,
    pub workspace_id: i64,
    pub member_id: i64,
    pub base_broadcast_id: i64,
    /// `testing`, `awaiting_approval`, `winner_sent` or `no_winner`.
    pub state: String,
    pub variable: String,
    pub metric: String,
    pub test_fraction: f64,
    pub seed: u64,
    pub stratify_by: Option<String>,
    pub winner_mode: String,
    pub decide_at: i64,
    pub n_rest: u64,
    pub created_at: i64,
    pub decided_at: Option<i64>,
    /// The statistics at the decision (JSON written by the server).
    pub decision_json: Option<String>,
    pub winner_arm: Option<u32>,
    pub winner_broadcast_id: Option<i64>,
    pub arms: Vec<ArmRecord>,
}

const TEST_COLUMNS: &str =
    "id, workspace_id, member_id, base_broadcast_id, state, variable, metric, test_fraction, seed, stratify_by,
    winner_mode, decide_at, n_rest, created_at, decided_at, decision, winner_arm, winner_broadcast_id";

impl Store {
    /// Stores a test whose arm broadcasts were created (and are sent by the caller).
    ///
    /// # Errors
    /// Database errors.
    pub fn create_ab_test(
        &self,
        workspace_id: i64,
        member_id: i64,
        new: &NewAbTest,
        actor: &str,
        now: i64,
    ) -> Result<i64, StoreError> {
        self.db.write(|c| {
            let id = c
                .query_one(
                    "INSERT INTO ab_tests (workspace_id, member_id, base_broadcast_id, state, variable, metric, test_fraction, seed,
                     stratify_by, winner_mode, decide_at, rest_audience, n_rest, created_at)
                     VALUES (?, ?, ?, 'testing', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    params![
                        workspace_id,
                        member_id,
                        new.base_broadcast_id,
                        new.variable.as_str(),
                        new.metric.as_str(),
                        new.test_fraction,
                        new.seed as i64,
                        new.stratify_by.clone(),
                        new.winner_mode.as_str(),
                        new.decide_at,
                        qunfa_audience::FrozenAudience::serialize(&new.rest),
                        new.rest.cardinality(),
                        now
                    ],
                )?
                .i64(0);
            for (i, arm) in new.arms.iter().enumerate() {
                c.execute(
                    "UPDATE broadcasts SET ab_test_id = ? WHERE id = ? AND workspace_id = ?",
                    params![id, arm.broadcast_id, workspace_id],
                )?;
                c.execute(
                    "INSERT INTO ab_arms (test_id, arm, label, variant, broadcast_id, n_assigned, send_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    params![id, i as i64, arm.label.as_str(), arm.variant_json.as_str(), arm.broadcast_id, arm.n_assigned, arm.send_at],
                )?;
            }
            let details = serde_json::json!({
                "base": new.base_broadcast_id,
                "variable": new.variable,
                "metric": new.metric,
                "seed": new.seed.to_string(),
                "arms": new.arms.iter().map(|a| a.broadcast_id).collect::<Vec<_>>(),
                "rest": new.rest.cardinality(),
            });
            audit::append(c, workspace_id, actor, "ab_test.created", &format!("ab_test:{id}"), &details.to_string(), now)?;
            Ok(id)
        })
    }

    /// One test with its arms.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn ab_test(&self, workspace_id: i64, id: i64) -> Result<AbTestRecord, StoreError> {
        self.db.read(|c| {
            let r = c.query_one(
                &format!("SELECT {TEST_COLUMNS} FROM ab_tests WHERE id = ? AND workspace_id = ?"),
                params![id, workspace_id],
            )?;
            let arms = c
                .query(
                    "SELECT arm, label, variant, broadcast_id, n_assigned, send_at FROM ab_arms WHERE test_id = ? ORDER BY arm",
                    params![id],
                )?
                .iter()
                .map(|a| ArmRecord {
                    arm: a.i64(0) as u32,
                    label: a.string(1),
                    variant_json: a.string(2),
                    broadcast_id: a.i64(3),
                    n_assigned: a.i64(4) as u64,
                    send_at: a.i64(5),
                })
                .collect();
            Ok(AbTestRecord {
                id: r.i64(0),
                workspace_id: r.i64(1),
                member_id: r.i64(2),
                base_broadcast_id: r.i64(3),
                state: r.string(4),
                variable: r.string(5),
                metric: r.string(6),
                test_fraction: r.f64(7),
                seed: r.i64(8) as u64,
                stratify_by: r.opt_string(9),
                winner_mode: r.string(10),
                decide_at: r.i64(11),
                n_rest: r.i64(12) as u64,
                created_at: r.i64(13),
                decided_at: r.opt_i64(14),
                decision_json: r.opt_string(15),
                winner_arm: r.opt_i64(16).map(|a| a as u32),
                winner_broadcast_id: r.opt_i64(17),
                arms,
            })
        })
    }

    /// Tests still testing whose decision time has come: (workspace, id).
    ///
    /// # Errors
    /// Database errors.
    pub fn due_ab_tests(&self, now: i64, limit: usize) -> Result<Vec<(i64, i64)>, StoreError> {
        Ok(self
            .db
            .conn()?
            .query(
                "SELECT workspace_id, id FROM ab_tests WHERE state = 'testing' AND decide_at <= ? ORDER BY decide_at LIMIT ?",
                params![now, limit],
            )?
            .iter()
            .map(|r| (r.i64(0), r.i64(1)))
            .collect())
    }

    /// Arms of tests still testing that are due and not sent yet (their
    /// broadcast is still a draft): (workspace, test, arm broadcast, member).
    ///
    /// # Errors
    /// Database errors.
    pub fn due_ab_arms(&self, now: i64, limit: usize) -> Result<Vec<(i64, i64, i64, i64)>, StoreError> {
        Ok(self
            .db
            .conn()?
            .query(
                "SELECT t.workspace_id, t.id, a.broadcast_id, t.member_id FROM ab_arms a JOIN ab_tests t ON t.id = a.test_id
                 JOIN broadcasts b ON b.id = a.broadcast_id
                 WHERE t.state = 'testing' AND a.send_at <= ? AND b.state = 'draft' ORDER BY a.send_at LIMIT ?",
                params![now, limit],
            )?
            .iter()
            .map(|r| (r.i64(0), r.i64(1), r.i64(2), r.i64(3)))
            .collect())
    }

    /// The audience left for the winner.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn ab_rest(&self, workspace_id: i64, id: i64) -> Result<Bitmap, StoreError> {
        let r = self.db.conn()?.query_one(
            "SELECT rest_audience FROM ab_tests WHERE id = ? AND workspace_id = ?",
            params![id, workspace_id],
        )?;
        qunfa_audience::decode(r.blob(0))
            .ok_or_else(|| StoreError::Corrupt(format!("the rest audience of A/B test {id}")))
    }

    /// Records the decision: `to` is `awaiting_approval`, `winner_sent` or
    /// `no_winner`, from `from`. Returns false when another node (or request)
    /// decided first.
    ///
    /// # Errors
    /// Database errors.
    #[allow(clippy::too_many_arguments)]
    pub fn decide_ab_test(
        &self,
        workspace_id: i64,
        id: i64,
        from: &str,
        to: &str,
        decision_json: Option<&str>,
        winner: Option<(u32, Option<i64>)>,
        actor: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.db.write(|c| {
            let n = c.execute(
                "UPDATE ab_tests SET state = ?, decided_at = COALESCE(decided_at, ?), decision = COALESCE(?, decision),
                 winner_arm = ?, winner_broadcast_id = ? WHERE id = ? AND workspace_id = ? AND state = ?",
                params![
                    to,
                    now,
                    decision_json.map(str::to_owned),
                    winner.map(|w| i64::from(w.0)),
                    winner.and_then(|w| w.1),
                    id,
                    workspace_id,
                    from
                ],
            )?;
            if n == 0 {
                return Ok(false);
            }
            let details = serde_json::json!({"from": from, "to": to, "winner_arm": winner.map(|w| w.0), "winner_broadcast": winner.and_then(|w| w.1)});
            audit::append(c, workspace_id, actor, "ab_test.decided", &format!("ab_test:{id}"), &details.to_string(), now)?;
            Ok(true)
        })
    }

    /// Marks `broadcast_id` as the send of test `id`'s winner (before it is submitted).
    ///
    /// # Errors
    /// Database errors.
    pub fn tag_ab_broadcast(&self, workspace_id: i64, id: i64, broadcast_id: i64) -> Result<(), StoreError> {
        self.db.write(|c| {
            c.execute(
                "UPDATE broadcasts SET ab_test_id = ? WHERE id = ? AND workspace_id = ?",
                params![id, broadcast_id, workspace_id],
            )
        })?;
        Ok(())
    }

    /// The other broadcasts of the A/B test `broadcast_id` belongs to (arms
    /// and the winner's send): parts of one send, so the near-duplicate rule
    /// does not count them against each other. Empty for other broadcasts.
    ///
    /// # Errors
    /// Database errors.
    pub fn ab_siblings(&self, workspace_id: i64, broadcast_id: i64) -> Result<Vec<i64>, StoreError> {
        Ok(self
            .db
            .conn()?
            .query(
                "SELECT s.id FROM broadcasts b JOIN broadcasts s ON s.ab_test_id = b.ab_test_id AND s.workspace_id = b.workspace_id
                 WHERE b.id = ? AND b.workspace_id = ? AND s.id <> b.id",
                params![broadcast_id, workspace_id],
            )?
            .iter()
            .map(|r| r.i64(0))
            .collect())
    }

    /// Claims a test for sending its winner (`from` → `sending_winner`), so
    /// that only one request or node creates the winner's broadcast.
    ///
    /// # Errors
    /// `QF-STATE-CONFLICT` when the test is not in `from` any more.
    pub fn claim_ab_winner(&self, workspace_id: i64, id: i64, from: &str) -> Result<(), StoreError> {
        let n = self.db.write(|c| {
            c.execute(
                "UPDATE ab_tests SET state = 'sending_winner' WHERE id = ? AND workspace_id = ? AND state = ?",
                params![id, workspace_id, from],
            )
        })?;
        if n == 0 {
            return Err(StoreError::rejected(Code::Conflict, format!("the A/B test is no longer {from}")));
        }
        Ok(())
    }
}
