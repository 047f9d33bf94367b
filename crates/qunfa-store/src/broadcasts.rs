//! Broadcasts: drafts, audience resolution, dispatch (freeze the audience and
//! queue its batches), the delivery queue and the inbox channel's worker step.
//!
//! The queue is the `jobs` table. A job is one batch of ≤2,000 recipients of
//! one broadcast on one channel. The inbox worker step claims jobs, writes one
//! delivery record per recipient with `ON CONFLICT DO NOTHING` and marks the
//! jobs done in the same transaction, so a crash at any point either leaves a
//! job to be redone or finds its records already written: never lost, never
//! twice.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use qunfa_audience::{AudienceSpec, Bitmap, FrozenAudience};
use qunfa_core::{
    broadcast::{BroadcastState, FallbackStep, Priority},
    contact::Channel,
    message::{Content, RawContent},
    template::Template,
};

use crate::{
    audit,
    json::{channels_from_json, content_from_json},
    params,
    queue::Scope,
    Code, Conn, Row, Store, StoreError, Value,
};

/// A broadcast as stored.
#[derive(Debug, Clone)]
pub struct BroadcastRecord {
    pub id: i64,
    pub workspace_id: i64,
    pub member_id: i64,
    pub state: BroadcastState,
    pub content: RawContent,
    pub audience_json: String,
    pub channels: Vec<Channel>,
    pub priority: Priority,
    pub client_msg_id: Option<String>,
    pub request_hash: String,
    pub n_recipients: u64,
    pub verdicts_json: Option<String>,
    pub created_at: i64,
    pub submitted_at: Option<i64>,
    pub approved_by: Option<i64>,
    pub approved_at: Option<i64>,
    pub dispatched_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub n_batches: u64,
    pub n_batches_done: u64,
    pub n_delivered: u64,
    pub n_failed: u64,
    pub n_read: u64,
    pub n_replied: u64,
    /// A flash message's time to live.
    pub ttl_ms: Option<i64>,
    /// When a flash message's content goes (set at dispatch).
    pub expires_at: Option<i64>,
    /// When retention (or a flash message's end) removed the content.
    pub purged_at: Option<i64>,
    pub paused_at: Option<i64>,
    /// Failed deliveries sent again by `retry-failed`.
    pub n_redriven: u64,
    /// Left out at send time (no consent, unsubscribed, bounced).
    pub n_filtered: u64,
    /// Accepted by a provider, its receipt still to come.
    pub n_sent: u64,
    /// Fallback recipients for whom the step's condition did not hold.
    pub n_skipped: u64,
    pub fallback: Vec<FallbackStep>,
    /// When the sender recalled it (see `recall.rs`).
    pub recalled_at: Option<i64>,
    /// The broadcast this one is a correction notice of.
    pub correction_of: Option<i64>,
    /// Recipients who forwarded it (first forward each).
    pub n_forwarded: u64,
    /// Recipients who blocked its sender from it.
    pub n_blocked: u64,
    /// Deliveries a recall stopped before they were made (`recalled` records).
    pub n_recalled: u64,
}

const BROADCAST_COLUMNS: &str =
    "id, workspace_id, member_id, state, content, audience, channels, priority, client_msg_id, request_hash,
    n_recipients, verdicts, created_at, submitted_at, approved_by, approved_at, dispatched_at, completed_at,
    n_batches, n_batches_done, n_delivered, n_failed, n_read, n_replied, ttl_ms, expires_at, purged_at, paused_at, n_redriven,
    n_filtered, n_sent, n_skipped, fallback,
    recalled_at, correction_of, n_forwarded, n_blocked, n_recalled";

/// A broadcast of the workspace, read on `c` (inside the caller's snapshot).
pub(crate) fn broadcast_in(c: &mut Conn, workspace_id: i64, id: i64) -> Result<BroadcastRecord, StoreError> {
    let r = c.query_one(
        &format!("SELECT {BROADCAST_COLUMNS} FROM broadcasts WHERE id = ? AND workspace_id = ?"),
        params![id, workspace_id],
    )?;
    broadcast_from(&r)
}

fn broadcast_from(r: &Row) -> Result<BroadcastRecord, StoreError> {
    Ok(BroadcastRecord {
        id: r.i64(0),
        workspace_id: r.i64(1),
        member_id: r.i64(2),
        state: BroadcastState::parse(r.str(3)).map_err(|_| StoreError::Corrupt(format!("state {}", r.str(3))))?,
        content: content_from_json(r.str(4))?,
        audience_json: r.string(5),
        channels: channels_from_json(r.str(6))?,
        priority: Priority::from_i64(r.i64(7)),
        client_msg_id: r.opt_string(8),
        request_hash: r.string(9),
        n_recipients: r.i64(10) as u64,
        verdicts_json: r.opt_string(11),
        created_at: r.i64(12),
        submitted_at: r.opt_i64(13),
        approved_by: r.opt_i64(14),
        approved_at: r.opt_i64(15),
        dispatched_at: r.opt_i64(16),
        completed_at: r.opt_i64(17),
        n_batches: r.i64(18) as u64,
        n_batches_done: r.i64(19) as u64,
        n_delivered: r.i64(20) as u64,
        n_failed: r.i64(21) as u64,
        n_read: r.i64(22) as u64,
        n_replied: r.i64(23) as u64,
        ttl_ms: r.opt_i64(24),
        expires_at: r.opt_i64(25),
        purged_at: r.opt_i64(26),
        paused_at: r.opt_i64(27),
        n_redriven: r.i64(28) as u64,
        n_filtered: r.i64(29) as u64,
        n_sent: r.i64(30) as u64,
        n_skipped: r.i64(31) as u64,
        fallback: crate::json::fallback_from_json(r.opt_str(32).unwrap_or("[]"))?,
        recalled_at: r.opt_i64(33),
        correction_of: r.opt_i64(34),
        n_forwarded: r.i64(35) as u64,
        n_blocked: r.i64(36) as u64,
        n_recalled: r.i64(37) as u64,
    })
}

/// A new draft.
#[derive(Debug, Clone)]
pub struct NewBroadcast {
    pub content_json: String,
    pub audience_json: String,
    pub channels: Vec<Channel>,
    pub priority: Priority,
    pub client_msg_id: Option<String>,
    /// Hash of the request body, to tell a retry from a reuse of `client_msg_id`.
    pub request_hash: String,
    /// A flash message: its content goes this long after dispatch.
    pub ttl_ms: Option<i64>,
    /// Channels to fall back to, in order (checked with `check_fallback`).
    pub fallback: Vec<FallbackStep>,
}

/// One delivery record.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    pub contact_idx: u32,
    pub channel: String,
    pub state: String,
    pub attempts: i64,
    pub error_code: Option<String>,
    pub last_error: Option<String>,
    pub queued_at: i64,
    pub sent_at: Option<i64>,
    pub delivered_at: Option<i64>,
    pub read_at: Option<i64>,
    pub replied_at: Option<i64>,
}

/// Decoded broadcasts the worker keeps between steps: the frozen audience and
/// the parsed template, so a batch never re-decodes them.
///
/// It also remembers the rate-limit scopes this node found short, so its
/// claims skip their jobs for a moment instead of putting back each one.
#[derive(Default)]
pub struct DispatchCache {
    entries: Mutex<HashMap<i64, Arc<CachedBroadcast>>>,
    throttled: Mutex<HashMap<Scope, i64>>,
}

pub(crate) struct CachedBroadcast {
    pub(crate) workspace_id: i64,
    pub(crate) frozen: FrozenAudience,
    /// The text's template when it has variables (rendered per recipient).
    pub(crate) template: Option<Template>,
    /// The text as sent when it has no variables.
    pub(crate) text: Option<String>,
    /// The stored content (JSON), for channels that carry all of it.
    pub(crate) content_json: String,
}

impl DispatchCache {
    pub(crate) fn get(&self, c: &mut Conn, broadcast_id: i64) -> Result<Arc<CachedBroadcast>, StoreError> {
        if let Some(hit) = self.entries.lock().unwrap_or_else(|e| e.into_inner()).get(&broadcast_id) {
            return Ok(hit.clone());
        }
        let r = c.query_one(
            "SELECT workspace_id, frozen_audience, content, batch_size FROM broadcasts WHERE id = ?",
            params![broadcast_id],
        )?;
        let frozen = FrozenAudience::deserialize(r.blob(1))
            .map_err(|e| StoreError::Corrupt(e.to_string()))?
            .with_batch_size(r.opt_i64(3).map(|n| n as usize));
        let raw = content_from_json(r.str(2))?;
        // The content was validated when the draft was made; the limit here only
        // guards against a corrupt row.
        let content =
            Content::parse(&raw, usize::MAX).map_err(|code| StoreError::Corrupt(format!("content: {code:?}")))?;
        let first = content.texts().first().map(|t| t.template().clone());
        let text = first.as_ref().filter(|t| !t.has_variables()).map(|t| t.render(&|_| None));
        let template = first.filter(Template::has_variables);
        let entry =
            Arc::new(CachedBroadcast { workspace_id: r.i64(0), frozen, template, text, content_json: r.string(2) });
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= 32 {
            entries.clear();
        }
        entries.insert(broadcast_id, entry.clone());
        Ok(entry)
    }

    pub(crate) fn forget(&self, broadcast_id: i64) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(&broadcast_id);
    }

    /// Skips the jobs of `scopes` until `until`.
    pub(crate) fn throttle(&self, scopes: Vec<Scope>, until: i64) {
        let mut throttled = self.throttled.lock().unwrap_or_else(|e| e.into_inner());
        for scope in scopes {
            throttled.insert(scope, until);
        }
    }

    /// Claim conditions that skip the scopes throttled at `now`.
    pub(crate) fn exclusions(&self, now: i64) -> String {
        let mut throttled = self.throttled.lock().unwrap_or_else(|e| e.into_inner());
        throttled.retain(|_, until| *until > now);
        throttled.keys().map(Scope::exclusion).collect()
    }
}

/// What a hold for approval records.
#[derive(Debug, Clone, Copy)]
pub struct HoldRules<'a> {
    /// The daily send quota and the day's start, counted when held.
    pub daily_limit: Option<(u32, i64)>,
    pub verdicts_json: &'a str,
    /// The content check's review to open for the queue.
    pub review: Option<&'a crate::safety::NewSafetyReview>,
    /// The approval stages the send needs (JSON list).
    pub stages_json: &'a str,
    /// The state the broadcast must be in (a draft, or a scheduled run).
    pub from: BroadcastState,
}

/// How a dispatch is allowed to start, and what it records.
#[derive(Debug, Clone, Copy)]
pub struct DispatchRules<'a> {
    /// The state the broadcast must be in.
    pub from: BroadcastState,
    /// The sender's daily limit and the start of its local day, re-checked in
    /// the dispatch transaction so two racing sends cannot both pass.
    pub daily_limit: Option<(u32, i64)>,
    pub approved_by: Option<i64>,
    /// The verdicts (JSON) recorded with the broadcast.
    pub verdicts_json: &'a str,
    /// The content's fingerprint, counted for near-duplicate sends.
    pub fingerprint: Option<crate::safety::Fingerprint>,
    /// Registrable domains of the content's links, remembered as seen.
    pub link_domains: &'a [String],
    /// The approver's comment, kept with the broadcast's content review.
    pub review_reason: &'a str,
    /// The last approval stage, decided in the dispatch transaction: (stage, approver, comment).
    pub final_approval: Option<(&'a str, i64, &'a str)>,
    /// Fast contact growth: batches of this many recipients, this far apart (ms).
    pub waves: Option<(usize, i64)>,
    /// Frequency caps `(cap, since, window)`: recipients who reached one are
    /// counted again in the dispatch transaction, under the workspace's lock
    /// (so racing sends cannot both pass a cap), and get a `filtered` record on
    /// every channel at once (`QF-LIMIT-CONTACT-FREQUENCY`): no batch sends to them.
    pub caps: &'a [(u32, i64, &'static str)],
}

impl DispatchRules<'static> {
    /// A draft sent at once: no quota, no approval, no verdicts, no fingerprint
    /// (benchmarks and tests).
    pub fn draft() -> DispatchRules<'static> {
        DispatchRules {
            from: BroadcastState::Draft,
            daily_limit: None,
            approved_by: None,
            verdicts_json: "[]",
            fingerprint: None,
            link_domains: &[],
            review_reason: "",
            final_approval: None,
            waves: None,
            caps: &[],
        }
    }
}

/// Completes a sending broadcast whose every batch is done (delivered or dead
/// letter) and audits it; returns whether it completed now.
pub(crate) fn complete_if_done(c: &mut Conn, broadcast_id: i64, now: i64) -> Result<bool, StoreError> {
    let done = c.query_opt(
        "UPDATE broadcasts SET state = 'completed', completed_at = ? WHERE id = ? AND state = 'sending' AND n_batches_done >= n_batches
         RETURNING workspace_id, n_delivered, n_failed",
        params![now, broadcast_id],
    )?;
    let Some(r) = done else { return Ok(false) };
    let details = serde_json::json!({"delivered": r.i64(1), "failed": r.i64(2)}).to_string();
    audit::append(c, r.i64(0), "engine", "broadcast.completed", &format!("broadcast:{broadcast_id}"), &details, now)?;
    crate::events::broadcast_state(c, r.i64(0), broadcast_id, "completed", now)?;
    Ok(true)
}

/// Refuses when the member's sends today reach `limit`. The member row is
/// locked first (a no-op update), so on PostgreSQL two racing sends of one
/// member count one after the other; SQLite has one writer anyway.
fn check_daily_quota(c: &mut Conn, member_id: i64, limit: u32, day_start: i64) -> Result<(), StoreError> {
    c.execute("UPDATE members SET role = role WHERE id = ?", params![member_id])?;
    if sends_today_in(c, member_id, day_start)? >= limit {
        return Err(StoreError::rejected(Code::LimitDailySends, "the daily send quota was used by another send"));
    }
    Ok(())
}

fn sends_today_in(c: &mut Conn, member_id: i64, day_start: i64) -> Result<u32, StoreError> {
    Ok(c
        .query_one(
            "SELECT COUNT(*) FROM broadcasts WHERE member_id = ? AND submitted_at >= ? AND state IN ('pending_approval', 'sending', 'completed')",
            params![member_id, day_start],
        )?
        .i64(0) as u32)
}

impl Store {
    /// Lets a `client_msg_id` used before `before` be used again: the old
    /// broadcast keeps everything but the id (idempotency has a window).
    ///
    /// # Errors
    /// Database errors.
    pub fn expire_client_msg_id(&self, workspace_id: i64, client_msg_id: &str, before: i64) -> Result<u64, StoreError> {
        self.db.write(|c| {
            c.execute(
                "UPDATE broadcasts SET client_msg_id = NULL WHERE workspace_id = ? AND client_msg_id = ? AND created_at < ?",
                params![workspace_id, client_msg_id, before],
            )
        })
    }

    /// Creates a draft. A `client_msg_id` already used in the workspace returns
    /// the original broadcast (`false`) when the request is the same, and is
    /// refused when it differs.
    ///
    /// # Errors
    /// `QF-CLIENT-MSG-ID-REUSED`, or database errors.
    pub fn create_broadcast(
        &self,
        workspace_id: i64,
        member_id: i64,
        new: &NewBroadcast,
        actor: &str,
        now: i64,
    ) -> Result<(BroadcastRecord, bool), StoreError> {
        let result = self.db.write(|c| create_broadcast_in(c, workspace_id, member_id, new, actor, now));
        match result {
            // Two racing requests with one client_msg_id: the loser reads the winner's row.
            Err(e) if e.is_unique_violation() && new.client_msg_id.is_some() => {
                self.create_broadcast(workspace_id, member_id, new, actor, now)
            }
            other => other,
        }
    }

    /// One broadcast of the workspace.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn broadcast(&self, workspace_id: i64, id: i64) -> Result<BroadcastRecord, StoreError> {
        broadcast_in(&mut *self.db.conn()?, workspace_id, id)
    }

    /// Broadcasts of the workspace, newest first, before `before_id`.
    ///
    /// # Errors
    /// Database errors.
    pub fn broadcasts(
        &self,
        workspace_id: i64,
        before_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<BroadcastRecord>, StoreError> {
        let rows = self.db.conn()?.query(
            &format!(
                "SELECT {BROADCAST_COLUMNS} FROM broadcasts WHERE workspace_id = ? AND id < ? ORDER BY id DESC LIMIT ?"
            ),
            params![workspace_id, before_id.unwrap_or(i64::MAX), limit],
        )?;
        rows.iter().map(broadcast_from).collect()
    }

    /// Mass sends a member submitted since `day_start`.
    ///
    /// # Errors
    /// Database errors.
    pub fn sends_today(&self, member_id: i64, day_start: i64) -> Result<u32, StoreError> {
        sends_today_in(&mut *self.db.conn()?, member_id, day_start)
    }

    /// The contacts an audience names, now, from the workspace's audience
    /// index (brought up to date with everything committed first).
    ///
    /// # Errors
    /// `NotFound` for an unknown tag, department or segment, or a name an
    /// expression uses that has gone since; database errors.
    pub fn resolve_audience(&self, workspace_id: i64, spec: &AudienceSpec) -> Result<Bitmap, StoreError> {
        self.resolve_audience_at(workspace_id, spec, crate::now_millis())
    }

    /// [`Store::resolve_audience`] with relative dates ("last_active > 30 days ago") taken from `now`.
    ///
    /// # Errors
    /// As [`Store::resolve_audience`].
    pub fn resolve_audience_at(&self, workspace_id: i64, spec: &AudienceSpec, now: i64) -> Result<Bitmap, StoreError> {
        let mut expr = None;
        if let AudienceSpec::Expression(src) = spec {
            // Checked when the draft was made; a name that has gone since
            // makes the audience invalid, like a deleted tag.
            let mut e = qunfa_audience::expr::parse(src).map_err(|_| StoreError::NotFound)?;
            self.expand_segments(workspace_id, &mut e)?.map_err(|_| StoreError::NotFound)?;
            expr = Some(e);
        }
        // A correction notice: the bitmap its original was dispatched to.
        let frozen = match spec {
            AudienceSpec::Frozen(id) => Some(
                qunfa_audience::decode(&self.frozen_audience(workspace_id, *id)?)
                    .ok_or_else(|| StoreError::Corrupt(format!("the frozen audience of broadcast {id}")))?,
            ),
            _ => None,
        };
        self.with_audience(workspace_id, |index| {
            let subtrees = |sets: &qunfa_audience::index::TreeSets, roots: &[i64]| {
                let mut out = Bitmap::new();
                for &root in roots {
                    if !sets.exists(root) {
                        return Err(StoreError::NotFound);
                    }
                    out |= &*sets.subtree(root);
                }
                Ok(out & index.live())
            };
            match spec {
                AudienceSpec::All => Ok(index.live().clone()),
                AudienceSpec::Contacts(ids) => Ok(Bitmap::of(ids) & index.live()),
                AudienceSpec::Tag(id) => subtrees(&index.tags, &[*id]),
                AudienceSpec::Tags(ids) => subtrees(&index.tags, ids),
                AudienceSpec::Department(id) => subtrees(&index.departments, &[*id]),
                AudienceSpec::Expression(_) => {
                    let e = expr.as_ref().expect("parsed above");
                    index.evaluate(e, now).map_err(|_| StoreError::NotFound)
                }
                // Contacts deleted since are left out: they have nothing left to send to.
                AudienceSpec::Frozen(_) => Ok(frozen.as_ref().expect("read above") & index.live()),
            }
        })?
    }

    /// Holds a draft (or a scheduled run that came due) for approval.
    ///
    /// # Errors
    /// `QF-STATE-CONFLICT` unless it is a draft or scheduled, or database errors.
    pub fn hold_for_approval(
        &self,
        workspace_id: i64,
        id: i64,
        hold: HoldRules<'_>,
        actor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let HoldRules { daily_limit, verdicts_json, review, stages_json, from } = hold;
        self.db.write(|c| {
            if let Some((limit, day_start)) = daily_limit {
                let member = c.query_one("SELECT member_id FROM broadcasts WHERE id = ? AND workspace_id = ?", params![id, workspace_id])?;
                check_daily_quota(c, member.i64(0), limit, day_start)?;
            }
            let n = c.execute(
                "UPDATE broadcasts SET state = 'pending_approval', submitted_at = ?, verdicts = ?, approval_stages = ? WHERE id = ? AND workspace_id = ? AND state = ?",
                params![now, verdicts_json, stages_json, id, workspace_id, from.as_str()],
            )?;
            if n == 0 {
                return Err(StoreError::rejected(Code::Conflict, "only a draft can be submitted"));
            }
            if let Some(review) = review {
                crate::safety::open(c, workspace_id, id, review, now)?;
            }
            audit::append(c, workspace_id, actor, "broadcast.submitted", &format!("broadcast:{id}"), verdicts_json, now)?;
            crate::events::broadcast_state(c, workspace_id, id, "pending_approval", now)?;
            Ok(())
        })
    }

    /// Rejects a broadcast waiting for approval.
    ///
    /// # Errors
    /// `QF-STATE-CONFLICT`, or database errors.
    #[allow(clippy::too_many_arguments)]
    pub fn reject_broadcast(
        &self,
        workspace_id: i64,
        id: i64,
        comment: &str,
        withdrawn: bool,
        reviewer: Option<(&str, i64)>,
        actor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.db.write(|c| {
            // A reviewer's rejection is a decision on the stage the send waits
            // for, checked and recorded (and audited) like an approval.
            if let Some((stage, member)) = reviewer {
                crate::approvals::insert_decision(c, workspace_id, id, stage, member, "reject", comment, actor, now)?;
            }
            let n = c.execute(
                "UPDATE broadcasts SET state = 'cancelled' WHERE id = ? AND workspace_id = ? AND state = 'pending_approval'",
                params![id, workspace_id],
            )?;
            if n == 0 {
                return Err(StoreError::rejected(Code::Conflict, "only a broadcast waiting for approval can be rejected"));
            }
            let decision = if withdrawn { crate::safety::Decision::Withdrawn } else { crate::safety::Decision::Rejected };
            crate::safety::decide(c, workspace_id, id, decision, comment, actor, now)?;
            if !withdrawn {
                // A rejected content review is a violation of the sender's account.
                let reviewed = c.query_opt(
                    "SELECT b.member_id FROM safety_reviews r JOIN broadcasts b ON b.id = r.broadcast_id
                     WHERE r.broadcast_id = ? AND r.state = 'rejected' LIMIT 1",
                    params![id],
                )?;
                if let Some(r) = reviewed {
                    crate::security::violation_once(c, r.i64(0), id, "content review rejected", actor, now)?;
                }
            }
            audit::append(c, workspace_id, actor, "broadcast.rejected", &format!("broadcast:{id}"), &serde_json::json!({"comment": comment}).to_string(), now)?;
            crate::events::broadcast_state(c, workspace_id, id, "rejected", now)?;
            Ok(())
        })
    }

    /// Freezes the audience and queues its batches: one job per batch and
    /// channel. The broadcast moves to `sending`.
    ///
    /// # Errors
    /// `QF-STATE-CONFLICT` when the broadcast is no longer in `rules.from`,
    /// `QF-LIMIT-DAILY-SENDS` when a racing send used the quota, or database errors.
    pub fn dispatch(
        &self,
        workspace_id: i64,
        id: i64,
        audience: &Bitmap,
        rules: DispatchRules<'_>,
        actor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let frozen_bytes = FrozenAudience::serialize(audience);
        let n_recipients = audience.cardinality();
        let batch_size =
            rules.waves.map_or(qunfa_audience::BATCH_SIZE, |(size, _)| size.clamp(1, qunfa_audience::BATCH_SIZE));
        let wave_gap = rules.waves.map_or(0, |(_, gap)| gap);
        let n_batches = (n_recipients as usize).div_ceil(batch_size);
        let urgent = self.db.write(|c| {
            let b = c.query_one(
                "SELECT member_id, state, channels, priority, audience, fallback FROM broadcasts WHERE id = ? AND workspace_id = ?",
                params![id, workspace_id],
            )?;
            if b.str(1) != rules.from.as_str() {
                return Err(StoreError::rejected(Code::Conflict, format!("the broadcast is {}, not {}", b.str(1), rules.from.as_str())));
            }
            if let Some((limit, day_start)) = rules.daily_limit {
                // A send held for approval counted when it was submitted.
                if matches!(rules.from, BroadcastState::Draft | BroadcastState::Scheduled) {
                    check_daily_quota(c, b.i64(0), limit, day_start)?;
                }
            }
            if let Some((stage, approver, comment)) = rules.final_approval {
                // Checked against the row while it still waits (locked first).
                crate::approvals::insert_decision(c, workspace_id, id, stage, approver, "approve", comment, actor, now)?;
            }
            let channels = channels_from_json(b.str(2))?;
            let fallback = crate::json::fallback_from_json(b.opt_str(5).unwrap_or("[]"))?;
            // Every channel, primary and fallback, with its job condition and start.
            let mut plan: Vec<(Channel, Option<String>, i64)> = channels.iter().map(|c| (*c, None, now)).collect();
            let mut previous = channels.last().copied().unwrap_or(Channel::Inbox);
            let mut start = now;
            for step in &fallback {
                start += i64::from(step.after_seconds) * 1000;
                plan.push((step.channel, Some(step.condition(previous)), start));
                previous = step.channel;
            }
            let priority = b.i64(3);
            // The state guard makes a racing reject, approve or send lose cleanly:
            // on PostgreSQL the row lock makes the loser re-read the new state.
            let changed = c.execute(
                "UPDATE broadcasts SET state = 'sending', frozen_audience = ?, n_recipients = ?, n_batches = ?, dispatched_at = ?,
                 submitted_at = COALESCE(submitted_at, ?), approved_by = ?, approved_at = ?, verdicts = ?, expires_at = ? + ttl_ms
                 WHERE id = ? AND state = ?",
                params![
                    frozen_bytes.clone(),
                    n_recipients,
                    (n_batches * plan.len()) as u64,
                    now,
                    now,
                    rules.approved_by,
                    rules.approved_by.map(|_| now),
                    rules.verdicts_json,
                    now,
                    id,
                    rules.from.as_str()
                ],
            )?;
            if changed == 0 {
                return Err(StoreError::rejected(Code::Conflict, format!("the broadcast is no longer {}", rules.from.as_str())));
            }
            if let Some(waves) = rules.waves {
                c.execute(
                    "UPDATE broadcasts SET batch_size = ?, wave_interval_ms = ? WHERE id = ?",
                    params![batch_size as i64, waves.1, id],
                )?;
            }
            let capped = if rules.caps.is_empty() {
                Bitmap::new()
            } else {
                // Dispatches of a workspace count caps one after another.
                c.execute("UPDATE workspaces SET kind = kind WHERE id = ?", params![workspace_id])?;
                let mut capped = Bitmap::new();
                for r in crate::security::contacts_at_cap_in(c, workspace_id, id, audience, rules.caps)? {
                    capped.or_inplace(&r.contacts);
                }
                capped
            };
            if !capped.is_empty() {
                let capped = &capped;
                let n = capped.cardinality();
                c.execute(
                    "UPDATE broadcasts SET capped = ?, n_capped = ?, n_filtered = n_filtered + ? WHERE id = ?",
                    params![FrozenAudience::serialize(capped), n, n * plan.len() as u64, id],
                )?;
                let mut rows = Vec::with_capacity(capped.cardinality() as usize * plan.len());
                for (channel, _, _) in &plan {
                    for idx in capped.iter() {
                        rows.push(vec![
                            Value::Int(id),
                            Value::Text(channel.as_str().to_owned()),
                            Value::Int(i64::from(idx)),
                            Value::Int(workspace_id),
                            Value::Text("filtered".into()),
                            Value::Int(0),
                            Value::Int(now),
                            Value::Text(Code::LimitContactFrequency.as_str().into()),
                        ]);
                    }
                }
                c.bulk_insert(
                    "deliveries",
                    &["broadcast_id", "channel", "contact_idx", "workspace_id", "state", "attempts", "queued_at", "error_code"],
                    "",
                    &mut rows.into_iter(),
                )?;
                // Capped records are final at once: not sent.
                let mut marks = crate::engagement::Marks::new();
                for (channel, _, _) in &plan {
                    marks.add_all(id, channel.as_str(), "not_sent", capped);
                }
                marks.apply(c)?;
            }
            if rules.from == BroadcastState::PendingApproval {
                crate::safety::decide(c, workspace_id, id, crate::safety::Decision::Approved, rules.review_reason, actor, now)?;
            }
            crate::safety::record_domains(c, workspace_id, rules.link_domains, now)?;
            if let Some(f) = rules.fingerprint {
                crate::safety::record_fingerprint(c, workspace_id, b.i64(0), id, f, n_recipients, now)?;
            }
            let mut jobs = Vec::with_capacity(n_batches * plan.len());
            for (channel, condition, run_at) in &plan {
                for batch_no in 0..n_batches {
                    jobs.push(vec![
                        Value::Int(id),
                        Value::Int(workspace_id),
                        Value::Int(batch_no as i64),
                        Value::Text(channel.as_str().to_owned()),
                        Value::Int(priority),
                        Value::Int(*run_at + batch_no as i64 * wave_gap),
                        Value::Text("ready".into()),
                        Value::Int(now),
                        Value::Int(b.i64(0)),
                        condition.clone().map_or(Value::Null, Value::Text),
                        Value::Int(*run_at + batch_no as i64 * wave_gap),
                    ]);
                }
            }
            c.bulk_insert(
                "jobs",
                &["broadcast_id", "workspace_id", "batch_no", "channel", "priority", "run_at", "state", "created_at", "member_id", "condition", "due_at"],
                "",
                &mut jobs.into_iter(),
            )?;
            if n_batches == 0 {
                c.execute("UPDATE broadcasts SET state = 'completed', completed_at = ? WHERE id = ?", params![now, id])?;
            }
            // Tags used by a send are not dormant.
            if let Ok(spec) = crate::json::audience_from_json(b.str(4)) {
                let tags = match spec {
                    AudienceSpec::Tag(t) => vec![t],
                    AudienceSpec::Tags(t) => t,
                    _ => vec![],
                };
                for tag in tags {
                    c.execute("UPDATE tags SET last_used_at = ? WHERE id = ? AND workspace_id = ?", params![now, tag, workspace_id])?;
                }
                if let AudienceSpec::Expression(src) = crate::json::audience_from_json(b.str(4))? {
                    for path in qunfa_audience::expr::parse(&src).map(|e| e.tag_paths()).unwrap_or_default() {
                        c.execute("UPDATE tags SET last_used_at = ? WHERE path = ? AND workspace_id = ?", params![now, path, workspace_id])?;
                    }
                }
            }
            let details = serde_json::json!({
                "n_recipients": n_recipients,
                "n_batches": n_batches,
                "approved_by": rules.approved_by,
                "audience_sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&frozen_bytes)),
            });
            audit::append(c, workspace_id, actor, "broadcast.dispatched", &format!("broadcast:{id}"), &details.to_string(), now)?;
            crate::events::broadcast_state(c, workspace_id, id, "sending", now)?;
            Ok(priority < Priority::Broadcast as i64 && n_batches > 0)
        })?;
        if urgent {
            self.db.note_urgent_queued();
        }
        Ok(())
    }

    /// The frozen audience of a dispatched broadcast.
    ///
    /// # Errors
    /// `NotFound` (also before dispatch), or database errors.
    pub fn frozen_audience(&self, workspace_id: i64, id: i64) -> Result<Vec<u8>, StoreError> {
        let r = self.db.conn()?.query_one(
            "SELECT frozen_audience FROM broadcasts WHERE id = ? AND workspace_id = ? AND frozen_audience IS NOT NULL",
            params![id, workspace_id],
        )?;
        Ok(r.blob(0).to_vec())
    }

    /// Delivery records of a broadcast, by channel and contact, after `after`.
    ///
    /// # Errors
    /// Database errors.
    pub fn deliveries(
        &self,
        broadcast_id: i64,
        after: Option<(String, u32)>,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let (after_channel, after_idx) = after.map_or((String::new(), -1), |(c, i)| (c, i64::from(i)));
        let rows = self.db.conn()?.query(
            "SELECT contact_idx, channel, state, attempts, error_code, queued_at, sent_at, delivered_at, read_at, replied_at, last_error
             FROM deliveries WHERE broadcast_id = ? AND (channel, contact_idx) > (?, ?)
             ORDER BY channel, contact_idx LIMIT ?",
            params![broadcast_id, after_channel, after_idx, limit],
        )?;
        Ok(rows
            .iter()
            .map(|r| DeliveryRecord {
                contact_idx: r.i64(0) as u32,
                channel: r.string(1),
                state: r.string(2),
                attempts: r.i64(3),
                error_code: r.opt_string(4),
                queued_at: r.i64(5),
                sent_at: r.opt_i64(6),
                delivered_at: r.opt_i64(7),
                read_at: r.opt_i64(8),
                replied_at: r.opt_i64(9),
                last_error: r.opt_string(10),
            })
            .collect())
    }

    /// Counts delivery records of a broadcast per (channel, contact) pair and
    /// the number of pairs with more than one record (always 0: the primary key
    /// forbids it; the check exists for fault tests and evidence).
    ///
    /// # Errors
    /// Database errors.
    pub fn delivery_totals(&self, broadcast_id: i64) -> Result<(u64, u64), StoreError> {
        let mut c = self.db.conn()?;
        let total =
            c.query_one("SELECT COUNT(*) FROM deliveries WHERE broadcast_id = ?", params![broadcast_id])?.i64(0);
        let dupes = c
            .query_one(
                "SELECT COUNT(*) FROM (SELECT channel, contact_idx FROM deliveries WHERE broadcast_id = ? GROUP BY channel, contact_idx HAVING COUNT(*) > 1) d",
                params![broadcast_id],
            )?
            .i64(0);
        Ok((total as u64, dupes as u64))
    }
}

/// [`Store::create_broadcast`] inside the caller's write transaction (so a
/// caller can write its own rows with the draft, atomically).
///
/// # Errors
/// `QF-CLIENT-MSG-ID-REUSED`, or database errors (a unique violation when a
/// racing request took the `client_msg_id`: the caller retries).
pub(crate) fn create_broadcast_in(
    c: &mut Conn,
    workspace_id: i64,
    member_id: i64,
    new: &NewBroadcast,
    actor: &str,
    now: i64,
) -> Result<(BroadcastRecord, bool), StoreError> {
    if let Some(cid) = &new.client_msg_id {
        if let Some(r) = c.query_opt(
            &format!("SELECT {BROADCAST_COLUMNS} FROM broadcasts WHERE workspace_id = ? AND client_msg_id = ?"),
            params![workspace_id, cid.as_str()],
        )? {
            let existing = broadcast_from(&r)?;
            if existing.request_hash != new.request_hash {
                return Err(StoreError::rejected(
                    Code::DuplicateClientMsgId,
                    format!("client_msg_id {cid:?} was used by broadcast {} with different content", existing.id),
                ));
            }
            return Ok((existing, false));
        }
    }
    let id = c
            .query_one(
                "INSERT INTO broadcasts (workspace_id, member_id, state, content, audience, channels, priority, client_msg_id, request_hash, created_at, ttl_ms, fallback)
                 VALUES (?, ?, 'draft', ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                params![
                    workspace_id,
                    member_id,
                    new.content_json.clone(),
                    new.audience_json.clone(),
                    crate::json::channels_to_json(&new.channels),
                    new.priority as i64,
                    new.client_msg_id.clone(),
                    new.request_hash.clone(),
                    now,
                    new.ttl_ms,
                    (!new.fallback.is_empty()).then(|| crate::json::fallback_to_json(&new.fallback))
                ],
            )?
            .i64(0);
    // The chain keeps the content's hash, not the content: retention
    // purges the content, and the chain must still verify.
    let details = serde_json::json!({
        "content_sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(new.content_json.as_bytes())),
        "audience": new.audience_json,
        "priority": new.priority.as_str(),
        "ttl_ms": new.ttl_ms,
    });
    audit::append(c, workspace_id, actor, "broadcast.created", &format!("broadcast:{id}"), &details.to_string(), now)?;
    let r = c.query_one(&format!("SELECT {BROADCAST_COLUMNS} FROM broadcasts WHERE id = ?"), params![id])?;
    Ok((broadcast_from(&r)?, true))
}
