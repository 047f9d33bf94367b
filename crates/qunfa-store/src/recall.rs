//! Recall and correction notices (the sender's side), blocks and forwards
//! (the recipient's side).
//!
//! A recall stops what has not been delivered yet and hides what has: jobs
//! not claimed are cancelled and every recipient they held gets a `recalled`
//! record (`QF-RECALLED`, counted in `n_recalled`), in the recall's
//! transaction, so counts still equal records. Batches an external channel is
//! sending at that moment finish (an HTTP call cannot be taken back); a batch
//! that comes back for a retry is cancelled at its next claim
//! ([`cancel_if_recalled`]). Inbox messages already delivered stay delivered
//! (and read) in the records, but the inbox shows them as recalled, without
//! content. The stored content itself stays until retention purges it, like
//! any other, so a report made about it still has its evidence.
//!
//! A block is a row per (contact, member): every later batch of that member's
//! broadcasts gives the contact a `filtered` record (`QF-BLOCKED-SENDER`)
//! instead of the message, on every channel ([`blocked`]).

use std::collections::HashSet;

use qunfa_audience::FrozenAudience;

use crate::{audit, engagement::Marks, params, Code, Conn, Store, StoreError, Value};

/// What a recall did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecallReport {
    /// Inbox messages delivered before the recall: now shown as recalled.
    pub inbox_hidden: u64,
    /// Messages external channels had sent (delivered, or accepted by a
    /// provider): they cannot be taken back.
    pub external_sent: u64,
    /// Messages of external batches being sent at the recall: they may still arrive.
    pub external_in_flight: u64,
    /// Deliveries the recall stopped (`recalled` records).
    pub cancelled: u64,
}

/// Kinds of destination a recipient forwards a message to.
pub const FORWARD_TARGETS: [&str; 5] = ["chat", "group", "moments", "email", "other"];

/// A forward a recipient made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareRecord {
    pub share_id: i64,
    /// Whether this recipient forwarded the message for the first time (only that counts).
    pub first_forward: bool,
}

/// Contacts among `lo..=hi` who blocked the sender of `broadcast_id`.
///
/// # Errors
/// Database errors.
pub(crate) fn blocked(c: &mut Conn, broadcast_id: i64, lo: u32, hi: u32) -> Result<HashSet<u32>, StoreError> {
    Ok(c.query(
        "SELECT k.contact_idx FROM broadcasts b
             JOIN blocks k ON k.workspace_id = b.workspace_id AND k.member_id = b.member_id
             WHERE b.id = ? AND k.contact_idx BETWEEN ? AND ?",
        params![broadcast_id, lo, hi],
    )?
    .iter()
    .map(|r| r.i64(0) as u32)
    .collect())
}

/// Gives every recipient of batch `batch_no` on `channel` who has no final
/// record a `recalled` one; returns how many records that made.
fn recall_batch(
    c: &mut Conn,
    marks: &mut Marks,
    (broadcast_id, workspace_id): (i64, i64),
    frozen: &FrozenAudience,
    batch_no: usize,
    channel: &str,
    queued_at: i64,
) -> Result<u64, StoreError> {
    let members = frozen.batch(batch_no);
    let (Some(&lo), Some(&hi)) = (members.first(), members.last()) else { return Ok(0) };
    // Records an external claim (or a re-drive) left queued.
    let updated = c.execute(
        "UPDATE deliveries SET state = 'recalled', error_code = ? WHERE broadcast_id = ? AND channel = ?
         AND contact_idx BETWEEN ? AND ? AND state = 'queued'",
        params![Code::Recalled.as_str(), broadcast_id, channel, lo, hi],
    )?;
    let rows: Vec<Vec<Value>> = members
        .iter()
        .map(|idx| {
            vec![
                Value::Int(broadcast_id),
                Value::Text(channel.to_owned()),
                Value::Int(i64::from(*idx)),
                Value::Int(workspace_id),
                Value::Text("recalled".into()),
                Value::Int(0),
                Value::Text(Code::Recalled.as_str().into()),
                Value::Int(queued_at),
            ]
        })
        .collect();
    let inserted = c.bulk_insert_borrowed(
        "deliveries",
        &["broadcast_id", "channel", "contact_idx", "workspace_id", "state", "attempts", "error_code", "queued_at"],
        "ON CONFLICT DO NOTHING",
        &rows,
    )?;
    marks.sync_states(broadcast_id, channel, lo, hi);
    Ok(updated + inserted)
}

fn frozen_of(c: &mut Conn, broadcast_id: i64) -> Result<FrozenAudience, StoreError> {
    let r = c.query_one("SELECT frozen_audience, batch_size FROM broadcasts WHERE id = ?", params![broadcast_id])?;
    Ok(FrozenAudience::deserialize(r.blob(0))
        .map_err(|e| StoreError::Corrupt(e.to_string()))?
        .with_batch_size(r.opt_i64(1).map(|n| n as usize)))
}

/// A job an external claim just took, of a broadcast recalled since it was
/// queued (a batch that was in flight at the recall and came back for a
/// retry, or one a paused broadcast held): instead of sending, its
/// recipients without a final record get `recalled` ones and the job is
/// cancelled. Returns whether it was.
///
/// # Errors
/// Database errors.
pub(crate) fn cancel_if_recalled(
    c: &mut Conn,
    marks: &mut Marks,
    (job_id, broadcast_id, batch_no): (i64, i64, i64),
    channel: &str,
    queued_at: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let r = c.query_one("SELECT workspace_id, recalled_at FROM broadcasts WHERE id = ?", params![broadcast_id])?;
    if r.opt_i64(1).is_none() {
        return Ok(false);
    }
    let frozen = frozen_of(c, broadcast_id)?;
    let n = recall_batch(c, marks, (broadcast_id, r.i64(0)), &frozen, batch_no as usize, channel, queued_at)?;
    c.execute(
        "UPDATE jobs SET state = 'cancelled', lease_until = NULL, throttled = 0, done_at = ? WHERE id = ?",
        params![now, job_id],
    )?;
    c.execute(
        "UPDATE broadcasts SET n_recalled = n_recalled + ?, n_batches_done = n_batches_done + 1 WHERE id = ?",
        params![n, broadcast_id],
    )?;
    crate::broadcasts::complete_if_done(c, broadcast_id, now)?;
    Ok(true)
}

impl Store {
    /// Recalls a dispatched broadcast (whether the tier allows it and the
    /// window are the caller's rules): see the module documentation.
    ///
    /// # Errors
    /// `QF-STATE-CONFLICT` when it was not dispatched or is recalled already,
    /// `NotFound`, or database errors.
    pub fn recall_broadcast(
        &self,
        workspace_id: i64,
        id: i64,
        actor: &str,
        now: i64,
    ) -> Result<RecallReport, StoreError> {
        self.db.write(|c| {
            let b = c.query_one(
                "SELECT state, recalled_at, CASE WHEN frozen_audience IS NULL THEN 0 ELSE 1 END FROM broadcasts WHERE id = ? AND workspace_id = ?",
                params![id, workspace_id],
            )?;
            if b.opt_i64(1).is_some() {
                return Err(StoreError::rejected(Code::Conflict, "the broadcast was recalled already"));
            }
            if !matches!(b.str(0), "sending" | "paused" | "completed") || b.i64(2) == 0 {
                return Err(StoreError::rejected(
                    Code::Conflict,
                    format!("the broadcast is {}: only a sent broadcast can be recalled", b.str(0)),
                ));
            }
            // Jobs first, then the broadcast row: the order a worker step takes
            // them. A job a step or an external claim holds is not waited for
            // twice: once its claim commits it is done or leased, and left alone.
            let jobs = c.query(
                "UPDATE jobs SET state = 'cancelled', lease_until = NULL, throttled = 0, done_at = ?
                 WHERE broadcast_id = ? AND (state = 'held' OR (state = 'ready' AND (lease_until IS NULL OR lease_until < ?)))
                 RETURNING batch_no, channel, COALESCE(due_at, created_at)",
                params![now, id, now],
            )?;
            let mut cancelled = 0;
            let mut marks = Marks::new();
            if !jobs.is_empty() {
                let frozen = frozen_of(c, id)?;
                for job in &jobs {
                    cancelled += recall_batch(
                        c,
                        &mut marks,
                        (id, workspace_id),
                        &frozen,
                        job.i64(0) as usize,
                        job.str(1),
                        job.i64(2),
                    )?;
                }
            }
            // A paused broadcast has nothing held any more: it is sending what
            // is in flight, or completes below.
            let n = c.execute(
                "UPDATE broadcasts SET recalled_at = ?, n_recalled = n_recalled + ?, n_batches_done = n_batches_done + ?,
                 state = CASE WHEN state = 'paused' THEN 'sending' ELSE state END, paused_at = NULL
                 WHERE id = ? AND recalled_at IS NULL AND state IN ('sending', 'paused', 'completed')",
                params![now, cancelled, jobs.len(), id],
            )?;
            if n == 0 {
                // Rolls the cancellations back too.
                return Err(StoreError::rejected(Code::Conflict, "the broadcast changed state during the recall"));
            }
            marks.apply(c)?;
            let count = |c: &mut Conn, sql: &str| -> Result<u64, StoreError> {
                Ok(c.query_one(sql, params![id])?.i64(0) as u64)
            };
            let report = RecallReport {
                inbox_hidden: count(
                    c,
                    "SELECT COUNT(*) FROM deliveries WHERE broadcast_id = ? AND channel = 'inbox' AND state IN ('delivered', 'read')",
                )?,
                external_sent: count(
                    c,
                    "SELECT COUNT(*) FROM deliveries WHERE broadcast_id = ? AND channel <> 'inbox' AND state IN ('delivered', 'read', 'sent')",
                )?,
                external_in_flight: count(
                    c,
                    "SELECT COUNT(*) FROM deliveries WHERE broadcast_id = ? AND channel <> 'inbox' AND state = 'queued'",
                )?,
                cancelled,
            };
            let details = serde_json::json!({
                "inbox_hidden": report.inbox_hidden,
                "external_sent": report.external_sent,
                "external_in_flight": report.external_in_flight,
                "cancelled": report.cancelled,
                "batches_cancelled": jobs.len(),
            });
            audit::append(c, workspace_id, actor, "broadcast.recalled", &format!("broadcast:{id}"), &details.to_string(), now)?;
            crate::events::broadcast_state(c, workspace_id, id, "recalled", now)?;
            crate::broadcasts::complete_if_done(c, id, now)?;
            Ok(report)
        })
    }

    /// Creates the draft of a correction notice of broadcast `original_id`:
    /// `content_json` to exactly the audience the original was dispatched to
    /// (`{"frozen_of": original_id}`), on its channels, fallback and priority,
    /// with `correction_of` set. Submitting it is the caller's (the normal rules).
    ///
    /// # Errors
    /// `QF-STATE-CONFLICT` unless the original was dispatched, `NotFound`, or database errors.
    pub fn create_correction(
        &self,
        workspace_id: i64,
        member_id: i64,
        original_id: i64,
        content_json: &str,
        actor: &str,
        now: i64,
    ) -> Result<crate::broadcasts::BroadcastRecord, StoreError> {
        let id = self.db.write(|c| {
            let o = c.query_one(
                "SELECT state, CASE WHEN frozen_audience IS NULL THEN 0 ELSE 1 END, channels, priority, fallback FROM broadcasts WHERE id = ? AND workspace_id = ?",
                params![original_id, workspace_id],
            )?;
            if o.i64(1) == 0 {
                return Err(StoreError::rejected(
                    Code::Conflict,
                    format!("the broadcast is {}: only a sent broadcast has recipients to correct", o.str(0)),
                ));
            }
            let audience_json = crate::json::audience_to_json(&qunfa_audience::AudienceSpec::Frozen(original_id));
            let content_sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(content_json.as_bytes()));
            let id = c
                .query_one(
                    "INSERT INTO broadcasts (workspace_id, member_id, state, content, audience, channels, priority, request_hash, created_at, fallback, correction_of)
                     VALUES (?, ?, 'draft', ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    params![
                        workspace_id,
                        member_id,
                        content_json,
                        audience_json.clone(),
                        o.string(2),
                        o.i64(3),
                        content_sha256.clone(),
                        now,
                        o.opt_string(4),
                        original_id
                    ],
                )?
                .i64(0);
            // Like `broadcast.created`: the chain keeps the content's hash only.
            let details = serde_json::json!({
                "content_sha256": content_sha256,
                "audience": audience_json,
                "correction_of": original_id,
            });
            audit::append(c, workspace_id, actor, "broadcast.created", &format!("broadcast:{id}"), &details.to_string(), now)?;
            Ok(id)
        })?;
        self.broadcast(workspace_id, id)
    }

    /// The recipient blocks the sender of a message they got in the inbox:
    /// nothing more from that member reaches them, on any channel. Returns
    /// whether the block is new (a second one changes nothing).
    ///
    /// # Errors
    /// `NotFound` when the message was not delivered to this recipient, or database errors.
    pub fn block_sender(&self, workspace_id: i64, idx: u32, broadcast_id: i64, now: i64) -> Result<bool, StoreError> {
        self.db.write(|c| {
            let member_id = inbox_sender(c, workspace_id, idx, broadcast_id)?;
            let n = c.execute(
                "INSERT INTO blocks (workspace_id, contact_idx, member_id, broadcast_id, created_at) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (workspace_id, contact_idx, member_id) DO NOTHING",
                params![workspace_id, idx, member_id, broadcast_id, now],
            )?;
            if n == 0 {
                return Ok(false);
            }
            c.execute("UPDATE broadcasts SET n_blocked = n_blocked + 1 WHERE id = ?", params![broadcast_id])?;
            let details = serde_json::json!({"contact": idx, "broadcast": broadcast_id}).to_string();
            audit::append(c, workspace_id, "recipient", "member.blocked", &format!("member:{member_id}"), &details, now)?;
            Ok(true)
        })
    }

    /// The recipient lifts their block of the sender of a message (only the
    /// recipient can). The broadcast's `n_blocked` keeps counting the block
    /// that was made. Returns whether there was a block.
    ///
    /// # Errors
    /// `NotFound` when the message was not delivered to this recipient, or database errors.
    pub fn unblock_sender(&self, workspace_id: i64, idx: u32, broadcast_id: i64, now: i64) -> Result<bool, StoreError> {
        self.db.write(|c| {
            let member_id = inbox_sender(c, workspace_id, idx, broadcast_id)?;
            let n = c.execute(
                "DELETE FROM blocks WHERE workspace_id = ? AND contact_idx = ? AND member_id = ?",
                params![workspace_id, idx, member_id],
            )?;
            if n == 0 {
                return Ok(false);
            }
            let details = serde_json::json!({"contact": idx, "broadcast": broadcast_id}).to_string();
            audit::append(
                c,
                workspace_id,
                "recipient",
                "member.unblocked",
                &format!("member:{member_id}"),
                &details,
                now,
            )?;
            Ok(true)
        })
    }

    /// The recipient forwards a message (which also counts as reading it):
    /// a share row per forward; only a recipient's first forward counts in
    /// `n_forwarded`.
    ///
    /// # Errors
    /// `NotFound` when the message was not delivered to this recipient,
    /// `QF-RECALLED` when the sender recalled it, `QF-STATE-CONFLICT` when its
    /// content is gone (retention, a flash message's end), `QF-BAD-REQUEST`
    /// for a target not in [`FORWARD_TARGETS`]; database errors.
    pub fn forward(
        &self,
        workspace_id: i64,
        idx: u32,
        broadcast_id: i64,
        target: &str,
        now: i64,
    ) -> Result<ShareRecord, StoreError> {
        if !FORWARD_TARGETS.contains(&target) {
            return Err(StoreError::rejected(
                Code::BadRequest,
                format!("to must be one of {}", FORWARD_TARGETS.join(", ")),
            ));
        }
        self.db.write(|c| {
            let b = c
                .query_opt(
                    "SELECT b.recalled_at, b.purged_at, b.expires_at FROM deliveries d JOIN broadcasts b ON b.id = d.broadcast_id
                     WHERE d.broadcast_id = ? AND d.channel = 'inbox' AND d.contact_idx = ? AND d.workspace_id = ?
                     AND d.state IN ('delivered', 'read')",
                    params![broadcast_id, idx, workspace_id],
                )?
                .ok_or(StoreError::NotFound)?;
            if b.opt_i64(0).is_some() {
                return Err(StoreError::rejected(Code::Recalled, "the sender recalled this message"));
            }
            if b.opt_i64(1).is_some() || b.opt_i64(2).is_some_and(|at| at <= now) {
                return Err(StoreError::rejected(Code::Conflict, "the message's content is gone (retention or a flash message's end)"));
            }
            let first_read = c.execute(
                "UPDATE deliveries SET read_at = ?, state = 'read' WHERE broadcast_id = ? AND channel = 'inbox' AND contact_idx = ? AND read_at IS NULL",
                params![now, broadcast_id, idx],
            )? == 1;
            let first_forward = c.execute(
                "UPDATE deliveries SET forwarded_at = ? WHERE broadcast_id = ? AND channel = 'inbox' AND contact_idx = ? AND forwarded_at IS NULL",
                params![now, broadcast_id, idx],
            )? == 1;
            c.execute(
                "UPDATE broadcasts SET n_read = n_read + ?, n_forwarded = n_forwarded + ? WHERE id = ?",
                params![i64::from(first_read), i64::from(first_forward), broadcast_id],
            )?;
            let mut marks = Marks::new();
            if first_read {
                crate::measure::first_open(c, &mut marks, (broadcast_id, "inbox", idx), now)?;
            }
            if first_forward {
                crate::measure::bump(c, broadcast_id, "inbox", "forwarded", -1, 1)?;
                marks.set(broadcast_id, "inbox", "forwarded", -1, idx, true);
            }
            marks.apply(c)?;
            let share_id = c
                .query_one(
                    "INSERT INTO shares (workspace_id, broadcast_id, contact_idx, target, created_at) VALUES (?, ?, ?, ?, ?) RETURNING id",
                    params![workspace_id, broadcast_id, idx, target, now],
                )?
                .i64(0);
            Ok(ShareRecord { share_id, first_forward })
        })
    }
}

/// The member who sent a message delivered to this recipient's inbox.
fn inbox_sender(c: &mut Conn, workspace_id: i64, idx: u32, broadcast_id: i64) -> Result<i64, StoreError> {
    Ok(c.query_opt(
        "SELECT b.member_id FROM deliveries d JOIN broadcasts b ON b.id = d.broadcast_id
             WHERE d.broadcast_id = ? AND d.channel = 'inbox' AND d.contact_idx = ? AND d.workspace_id = ?
             AND d.state IN ('delivered', 'read')",
        params![broadcast_id, idx, workspace_id],
    )?
    .ok_or(StoreError::NotFound)?
    .i64(0))
}
