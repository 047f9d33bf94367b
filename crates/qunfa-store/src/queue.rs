//! The delivery queue: claiming jobs by priority, pacing them by rate limits,
//! delivering inbox batches, retries and dead letters, pause and resume,
//! re-driving failed deliveries, speed levels and the retention of content.
//!
//! A job is one batch of ≤2,000 recipients of one broadcast on one channel
//! (`jobs`). A step is one write transaction that claims jobs one at a time,
//! highest priority first, and for each writes one delivery record per
//! recipient with `ON CONFLICT DO NOTHING` and marks the job done, so a crash
//! anywhere leaves a job to redo or finds its records written: never lost,
//! never twice. A step ends after `max_jobs`, after its time budget, right
//! after an urgent (transactional or chat) job, or as soon as an urgent writer
//! waits for the database: a broadcast yields to urgent traffic between
//! batches.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use qunfa_audience::{Bitmap, FrozenAudience, BATCH_SIZE};
use qunfa_core::{broadcast::Priority, channel::ChannelSettings, contact::Channel, policy::DeliveryPolicy};

use crate::{
    audit,
    broadcasts::{complete_if_done, DispatchCache},
    channels,
    engagement::Marks,
    json::attr_display,
    params, Backend, Code, Conn, Store, StoreError, Value,
};

/// How long a claimed job is reserved for its worker.
const LEASE_MS: i64 = 60_000;
/// Longest a node skips a throttled scope before it asks the shared bucket again.
const THROTTLE_RECHECK_MS: i64 = 1_000;

/// When a step stops claiming jobs.
#[derive(Debug, Clone, Copy)]
pub struct StepLimits {
    pub max_jobs: usize,
    /// Time after which the step commits what it has.
    pub budget: Duration,
}

impl Default for StepLimits {
    fn default() -> Self {
        Self { max_jobs: 16, budget: Duration::from_millis(15) }
    }
}

/// One batch a step finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    pub broadcast_id: i64,
    pub workspace_id: i64,
    pub batch_no: i64,
    pub channel: Channel,
    pub priority: Priority,
    pub delivered: u64,
    /// Queued → durable, in milliseconds.
    pub latency_ms: i64,
}

/// What a worker step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepReport {
    pub jobs: u64,
    pub delivered: u64,
    pub completed_broadcasts: u64,
    /// Jobs put back by a rate limit.
    pub throttled: u64,
    pub batches: Vec<BatchOutcome>,
}

/// A failed job put back for a retry, or dead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferOutcome {
    pub job_id: i64,
    pub dead: bool,
    /// Failed delivery records written (when dead).
    pub failed: u64,
    pub channel: Channel,
    pub priority: Priority,
}

/// One message of an external batch, ready to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub contact_idx: u32,
    /// `qf-{broadcast}-{contact}-{channel}`: the same on every attempt and on
    /// every node, so a receiver can drop a repeat after a crash.
    pub idempotency_key: String,
    pub external_id: String,
    pub name: String,
    /// The contact's address on the channel (none: the contact has none).
    pub address: Option<String>,
    /// The text as rendered for this recipient.
    pub text: Option<String>,
    /// The contact's one-click unsubscribe link for this channel (the engine
    /// fills it in before the send; channels that can carry it do).
    pub unsubscribe_url: Option<String>,
    /// The open pixel of this delivery (email: the engine fills it in; docs/measurement.md).
    pub open_pixel_url: Option<String>,
    /// The broadcast's tracked URLs on this channel with this recipient's own
    /// tracked URL for each (the engine fills them in; an email's link card
    /// and HTML use them too).
    pub tracked_urls: Vec<(String, String)>,
}

/// A claimed batch for an external channel: its queued records are written,
/// its job is leased to this node until `lease_until`.
#[derive(Debug, Clone)]
pub struct ExternalBatch {
    pub job_id: i64,
    pub broadcast_id: i64,
    pub workspace_id: i64,
    pub batch_no: i64,
    pub channel: Channel,
    pub priority: Priority,
    /// Claims of this job so far, this one included.
    pub attempt: i64,
    pub queued_at: i64,
    pub lease_until: i64,
    /// The stored content (JSON).
    pub content_json: String,
    /// The workspace's settings of the channel (none: not set up; the batch
    /// fails with `QF-CHANNEL-NOT-CONFIGURED` unless the node has defaults).
    pub settings: Option<std::sync::Arc<ChannelSettings>>,
    /// Recipients of the batch not yet sent (delivered or failed ones are left out).
    pub items: Vec<Outgoing>,
    /// The broadcast's tracked links on this channel, (URL, short code): the
    /// engine gives each recipient their own tracked URL in place of the URL.
    pub tracked_links: Vec<(String, String)>,
    lo: u32,
    hi: u32,
}

impl ExternalBatch {
    /// A batch that does not come from the queue — for channel tests and
    /// benchmarks that drive a sender directly. Recording it is meaningless.
    pub fn synthetic(
        broadcast_id: i64,
        workspace_id: i64,
        channel: Channel,
        content_json: String,
        settings: Option<std::sync::Arc<ChannelSettings>>,
        items: Vec<Outgoing>,
    ) -> Self {
        let lo = items.iter().map(|i| i.contact_idx).min().unwrap_or(0);
        let hi = items.iter().map(|i| i.contact_idx).max().unwrap_or(0);
        Self {
            job_id: 0,
            broadcast_id,
            workspace_id,
            batch_no: 0,
            channel,
            priority: Priority::Broadcast,
            attempt: 1,
            queued_at: 0,
            lease_until: i64::MAX,
            content_json,
            settings,
            items,
            tracked_links: Vec::new(),
            lo,
            hi,
        }
    }
}

impl Outgoing {
    /// A message to `contact_idx` with its key `qf-{broadcast}-{contact}-{channel}`.
    pub fn new(
        broadcast_id: i64,
        channel: Channel,
        contact_idx: u32,
        address: Option<String>,
        text: Option<String>,
    ) -> Self {
        Self {
            contact_idx,
            idempotency_key: format!("qf-{broadcast_id}-{contact_idx}-{}", channel.as_str()),
            external_id: format!("c{contact_idx}"),
            name: format!("Contact {contact_idx}"),
            address,
            text,
            unsubscribe_url: None,
            open_pixel_url: None,
            tracked_urls: Vec::new(),
        }
    }
}

/// What the channel said about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    Delivered,
    /// Taken by a provider that reports the outcome later (an SMS receipt):
    /// the record becomes `sent` with the provider's message id, and the
    /// receipt makes it `delivered` or `failed`.
    Accepted(String),
    /// A refusal that will not change by retrying (a bad address, a 4xx).
    Rejected(Code, String),
    /// Worth trying again later (timeout, 5xx, 429, a broken answer).
    Retry(String),
    /// Not tried: the receiver is known to be down (an open circuit breaker)
    /// until `until` (Unix ms). Waiting for it does not use up an attempt —
    /// an outage does not turn a broadcast into dead letters — for up to
    /// [`MAX_DEFER_MS`] after the batch was queued.
    Deferred {
        until: i64,
        reason: String,
    },
}

/// How long after queuing a batch deferrals stop being free (then they count
/// as attempts, so a receiver that never comes back still ends in dead letters).
pub const MAX_DEFER_MS: i64 = 24 * 3_600_000;

/// What [`Store::finish_external`] recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinishReport {
    pub delivered: u64,
    /// Accepted by a provider; the receipt decides.
    pub sent: u64,
    pub failed: u64,
    /// Left for a later attempt.
    pub retrying: u64,
    /// The job is done (every record final) — or dead.
    pub done: bool,
    pub dead: bool,
    /// The broadcast completed with this batch.
    pub completed: bool,
    /// Another node holds the job now (our lease ran out); only the outcomes were recorded.
    pub lease_lost: bool,
    /// Put back until its receiver may be up again, without using an attempt.
    pub deferred: bool,
}

/// A rate limit's scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Scope {
    /// The workspace's speed level (broadcast class only).
    Workspace(i64),
    /// One sender across its broadcasts (broadcast class only).
    Sender(i64),
    /// A channel across the server (every class).
    Channel(Channel),
    /// A workspace's own limit on one of its channels (every class; its
    /// channel settings' `per_minute`).
    WorkspaceChannel(i64, Channel),
}

impl Scope {
    fn key(&self) -> String {
        match self {
            Scope::Workspace(id) => format!("workspace:{id}"),
            Scope::Sender(id) => format!("sender:{id}"),
            Scope::Channel(ch) => format!("channel:{}", ch.as_str()),
            Scope::WorkspaceChannel(id, ch) => format!("workspace:{id}:{}", ch.as_str()),
        }
    }

    /// A claim condition that skips the scope's jobs (ids and channel names
    /// are ours, never user text).
    pub(crate) fn exclusion(&self) -> String {
        let broadcast = Priority::Broadcast as i64;
        match self {
            Scope::Workspace(id) => format!(" AND NOT (priority = {broadcast} AND workspace_id = {id})"),
            Scope::Sender(id) => format!(" AND NOT (priority = {broadcast} AND member_id = {id})"),
            Scope::Channel(ch) => format!(" AND channel <> '{}'", ch.as_str()),
            Scope::WorkspaceChannel(id, ch) => {
                format!(" AND NOT (workspace_id = {id} AND channel = '{}')", ch.as_str())
            }
        }
    }
}

/// The rate limits that apply to a job: (scope, recipients per minute).
fn scopes_of(
    c: &mut Conn,
    policy: &DeliveryPolicy,
    workspace_id: i64,
    member_id: i64,
    channel: Channel,
    priority: Priority,
) -> Result<Vec<(Scope, u64)>, StoreError> {
    let mut scopes = Vec::new();
    if let Some(rate) = policy.channel_per_minute.get(channel.as_str()) {
        scopes.push((Scope::Channel(channel), *rate));
    }
    if channel != Channel::Inbox {
        if let Some(rate) = channel_settings(c, workspace_id, channel)?.and_then(|s| s.per_minute) {
            scopes.push((Scope::WorkspaceChannel(workspace_id, channel), u64::from(rate)));
        }
    }
    if priority == Priority::Broadcast {
        let level = c.query_one("SELECT speed_level FROM workspaces WHERE id = ?", params![workspace_id])?.opt_i64(0);
        if let Some(rate) = level.and_then(|l| u8::try_from(l).ok()).and_then(|l| policy.speed_level(l)) {
            scopes.push((Scope::Workspace(workspace_id), rate));
        }
        if policy.sender_per_minute > 0 {
            scopes.push((Scope::Sender(member_id), policy.sender_per_minute));
        }
    }
    Ok(scopes)
}

/// Takes `n` tokens from every bucket of `scopes`, or none: returns the wait
/// until all of them hold enough, and the scopes that are short. Buckets are
/// rows (`rate_buckets`), locked on PostgreSQL, so every node draws from the
/// same ones; each holds at most one second of its rate (and at least one
/// batch) and refills continuously.
fn take_tokens(
    c: &mut Conn,
    scopes: &[(Scope, u64)],
    n: usize,
    now: i64,
) -> Result<Option<(i64, Vec<Scope>)>, StoreError> {
    let lock = if c.backend() == Backend::Postgres { " FOR UPDATE" } else { "" };
    let need = n as i64 * 1000;
    let mut buckets = Vec::with_capacity(scopes.len());
    let (mut wait, mut short) = (0i64, Vec::new());
    for (scope, rate) in scopes {
        let (key, rate) = (scope.key(), *rate as i64);
        let capacity = (n.max(BATCH_SIZE) as i64).max(rate / 60) * 1000;
        c.execute(
            "INSERT INTO rate_buckets (scope, milli_tokens, updated_at) VALUES (?, ?, ?) ON CONFLICT (scope) DO NOTHING",
            params![key.clone(), capacity, now],
        )?;
        let r = c.query_one(
            &format!("SELECT milli_tokens, updated_at FROM rate_buckets WHERE scope = ?{lock}"),
            params![key.clone()],
        )?;
        // Milli-tokens per millisecond = rate per minute / 60.
        let refill = (now - r.i64(1)).max(0).saturating_mul(rate) / 60;
        let tokens = r.i64(0).saturating_add(refill).min(capacity);
        if tokens < need {
            let rate = rate.max(1);
            wait = wait.max(((need - tokens) * 60 + rate - 1) / rate);
            short.push(scope.clone());
        }
        buckets.push((key, tokens));
    }
    for (key, tokens) in buckets {
        let left = if wait == 0 { tokens - need } else { tokens };
        c.execute("UPDATE rate_buckets SET milli_tokens = ?, updated_at = ? WHERE scope = ?", params![left, now, key])?;
    }
    Ok((wait > 0).then_some((wait, short)))
}

/// The claim of one ready job, highest priority first, on `channels`
/// (names are ours, never user text), skipping `exclusions`.
fn claim_sql(backend: Backend, channels: &[Channel], exclusions: &str) -> String {
    let lock = if backend == Backend::Postgres { "FOR UPDATE SKIP LOCKED" } else { "" };
    let names: Vec<String> = channels.iter().map(|c| format!("'{}'", c.as_str())).collect();
    format!(
        "UPDATE jobs SET lease_owner = ?, lease_until = ?, attempts = attempts + 1
         WHERE id IN (SELECT id FROM jobs WHERE state = 'ready' AND run_at <= ? AND (lease_until IS NULL OR lease_until < ?)
                      AND channel IN ({}){exclusions}
                      ORDER BY priority, run_at, id LIMIT 1 {lock})
         RETURNING id, broadcast_id, batch_no, channel, COALESCE(due_at, created_at), priority, workspace_id, member_id, redrive, attempts,
                   condition",
        names.join(", ")
    )
}

/// Applies the rate limits to a claimed job of `n` recipients: when a bucket
/// is short, puts the job back until it refills (not counting the claim as
/// an attempt) and has this node skip the short scopes for a moment.
#[allow(clippy::too_many_arguments)]
fn throttled(
    c: &mut Conn,
    cache: &DispatchCache,
    policy: &DeliveryPolicy,
    (job_id, workspace_id, member_id): (i64, i64, i64),
    channel: Channel,
    priority: Priority,
    n: usize,
    now: i64,
) -> Result<bool, StoreError> {
    let scopes = scopes_of(c, policy, workspace_id, member_id, channel, priority)?;
    if scopes.is_empty() {
        return Ok(false);
    }
    let Some((wait, short)) = take_tokens(c, &scopes, n, now)? else { return Ok(false) };
    c.execute(
        "UPDATE jobs SET lease_until = NULL, attempts = attempts - 1, run_at = ?, throttled = 1 WHERE id = ?",
        params![now + wait, job_id],
    )?;
    cache.throttle(short, now + wait.min(THROTTLE_RECHECK_MS));
    Ok(true)
}

/// An error text fit to store: no control characters, at most 500 characters.
fn clean(error: &str) -> String {
    error.chars().filter(|ch| !ch.is_control()).take(500).collect()
}

/// A number in [0, 1) from a job and time, to spread retries.
fn jitter(job_id: i64, now: i64) -> f64 {
    let mut z = (job_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ now as u64;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as f64 / (u64::MAX as f64 + 1.0)
}

/// The inbox records of one batch: rendered per recipient when the message
/// has variables. Returns how many were written now.
#[allow(clippy::too_many_arguments)]
fn deliver_inbox_batch(
    c: &mut Conn,
    cache: &DispatchCache,
    marks: &mut Marks,
    broadcast_id: i64,
    batch_no: usize,
    queued_at: i64,
    redrive: bool,
    now: i64,
) -> Result<(u64, u64), StoreError> {
    let b = cache.get(c, broadcast_id)?;
    let members = b.frozen.batch(batch_no);
    let (Some(&lo), Some(&hi)) = (members.first(), members.last()) else { return Ok((0, 0)) };
    // Contacts who refused the inbox (or blocked the sender) get a `filtered`
    // record instead; those that have no record yet are the ones this step filters.
    let mut opted: HashMap<u32, Code> = channels::opted_out(c, b.workspace_id, Channel::Inbox, lo, hi)?
        .into_iter()
        .map(|(idx, reason)| (idx, reason.code()))
        .collect();
    for idx in crate::recall::blocked(c, broadcast_id, lo, hi)? {
        opted.entry(idx).or_insert(Code::BlockedSender);
    }
    opted.retain(|idx, _| members.binary_search(idx).is_ok());
    let mut new_filtered = opted.len() as u64;
    if !opted.is_empty() {
        for r in c.query(
            "SELECT contact_idx FROM deliveries WHERE broadcast_id = ? AND channel = 'inbox' AND contact_idx BETWEEN ? AND ?
             AND state <> 'queued'",
            params![broadcast_id, lo, hi],
        )? {
            if opted.contains_key(&(r.i64(0) as u32)) {
                new_filtered -= 1;
            }
        }
    }
    if redrive {
        // Failed records of this batch were set back to `queued` by a
        // re-drive; they are written again below, rendered like the rest.
        c.execute(
            "DELETE FROM deliveries WHERE broadcast_id = ? AND channel = 'inbox' AND contact_idx BETWEEN ? AND ? AND state = 'queued'",
            params![broadcast_id, lo, hi],
        )?;
    }
    let bodies: Option<HashMap<u32, String>> = match &b.template {
        Some(t) => {
            let data = Store::template_data(c, b.workspace_id, lo, hi)?;
            Some(
                members
                    .iter()
                    .map(|idx| {
                        let d = data.get(idx);
                        let text = t.render(&|var| {
                            let (name, external_id, attrs) = d?;
                            match var {
                                "name" => Some(name.clone()),
                                "external_id" => Some(external_id.clone()),
                                _ => attrs.get(var).and_then(attr_display),
                            }
                        });
                        (*idx, text)
                    })
                    .collect(),
            )
        }
        None => None,
    };
    let workspace_id = b.workspace_id;
    let written = c.bulk_insert(
        "deliveries",
        &[
            "broadcast_id",
            "channel",
            "contact_idx",
            "workspace_id",
            "state",
            "attempts",
            "body",
            "queued_at",
            "sent_at",
            "delivered_at",
            "error_code",
        ],
        "ON CONFLICT DO NOTHING",
        &mut members.iter().map(|idx| match opted.get(idx) {
            None => vec![
                Value::Int(broadcast_id),
                Value::Text("inbox".into()),
                Value::Int(i64::from(*idx)),
                Value::Int(workspace_id),
                Value::Text("delivered".into()),
                Value::Int(1),
                bodies.as_ref().and_then(|b| b.get(idx)).cloned().into(),
                Value::Int(queued_at),
                Value::Int(now),
                Value::Int(now),
                Value::Null,
            ],
            Some(code) => vec![
                Value::Int(broadcast_id),
                Value::Text("inbox".into()),
                Value::Int(i64::from(*idx)),
                Value::Int(workspace_id),
                Value::Text("filtered".into()),
                Value::Int(0),
                Value::Null,
                Value::Int(queued_at),
                Value::Null,
                Value::Null,
                Value::Text(code.as_str().into()),
            ],
        }),
    )?;
    if written == members.len() as u64 {
        // Every record is new (no re-drive, no record from before): each
        // one's class is the state written here.
        let mut delivered: Bitmap = members.iter().copied().collect();
        let filtered: Bitmap = opted.keys().copied().collect();
        delivered.andnot_inplace(&filtered);
        marks.add_all(broadcast_id, "inbox", "delivered", &delivered);
        marks.add_all(broadcast_id, "inbox", "not_sent", &filtered);
    } else {
        marks.sync_states(broadcast_id, "inbox", lo, hi);
    }
    Ok((written - new_filtered.min(written), new_filtered.min(written)))
}

impl Store {
    /// One worker step (see the module documentation): claims ready jobs one
    /// at a time, highest priority first, paces broadcast-class jobs by the
    /// rate limits of `policy`, and delivers inbox batches, all in one
    /// transaction.
    ///
    /// # Errors
    /// Database errors; the transaction is rolled back and the jobs stay ready.
    pub fn run_step(
        &self,
        owner: &str,
        cache: &DispatchCache,
        policy: &DeliveryPolicy,
        limits: StepLimits,
        now: i64,
    ) -> Result<StepReport, StoreError> {
        let backend = self.backend();
        let started = Instant::now();
        let db = self.db.clone();
        self.db.write(|c| {
            let claim_sql = |exclusions: String| claim_sql(backend, &[Channel::Inbox], &exclusions);
            let mut sql = claim_sql(cache.exclusions(now));
            let mut report = StepReport::default();
            let mut touched: Vec<(i64, u64, u64, u64)> = Vec::new();
            let mut marks = Marks::new();
            while let Some(job) = c.query_opt(&sql, params![owner, now + LEASE_MS, now, now])? {
                let (job_id, broadcast_id, batch_no, queued_at) = (job.i64(0), job.i64(1), job.i64(2), job.i64(4));
                let priority = Priority::from_i64(job.i64(5));
                let (workspace_id, member_id, redrive) = (job.i64(6), job.i64(7), job.i64(8) != 0);
                let channel = Channel::Inbox;
                let n = cache.get(c, broadcast_id)?.frozen.batch(batch_no as usize).len();
                if throttled(c, cache, policy, (job_id, workspace_id, member_id), channel, priority, n, now)? {
                    report.throttled += 1;
                    sql = claim_sql(cache.exclusions(now));
                    continue;
                }
                if priority != Priority::Broadcast {
                    db.clear_urgent_queued();
                }
                let (delivered, filtered) =
                    deliver_inbox_batch(c, cache, &mut marks, broadcast_id, batch_no as usize, queued_at, redrive, now)?;
                c.execute(
                    "UPDATE jobs SET state = 'done', lease_until = NULL, throttled = 0, done_at = ? WHERE id = ?",
                    params![now, job_id],
                )?;
                report.jobs += 1;
                report.delivered += delivered;
                report.batches.push(BatchOutcome {
                    broadcast_id,
                    workspace_id,
                    batch_no,
                    channel,
                    priority,
                    delivered,
                    latency_ms: now - queued_at,
                });
                match touched.iter_mut().find(|t| t.0 == broadcast_id) {
                    Some(t) => (t.1, t.2, t.3) = (t.1 + delivered, t.2 + 1, t.3 + filtered),
                    None => touched.push((broadcast_id, delivered, 1, filtered)),
                }
                if priority != Priority::Broadcast
                    || report.jobs as usize >= limits.max_jobs
                    || started.elapsed() >= limits.budget
                    || db.urgent_pending()
                {
                    break;
                }
            }
            // Counters last, in id order: the broadcast rows are the locks
            // steps of several nodes share; taking them late and in one order
            // keeps steps from deadlocking on each other.
            touched.sort_unstable();
            for (broadcast_id, delivered, batches, filtered) in touched {
                c.execute(
                    "UPDATE broadcasts SET n_delivered = n_delivered + ?, n_batches_done = n_batches_done + ?, n_filtered = n_filtered + ?
                     WHERE id = ?",
                    params![delivered, batches, filtered, broadcast_id],
                )?;
                if complete_if_done(c, broadcast_id, now)? {
                    report.completed_broadcasts += 1;
                    cache.forget(broadcast_id);
                }
            }
            // Engagement sets after the counters, in key order (same reason).
            marks.apply(c)?;
            Ok(report)
        })
    }

    /// Claims up to `max_jobs` ready batches of the external `channels` for
    /// this node (highest priority first, paced like inbox batches) and, in
    /// the same transaction, writes a `queued` delivery record for each of
    /// their recipients, so every recipient has its one record before any
    /// send. The job stays leased to `owner` for `lease_ms`: if this node dies,
    /// another claims it after that and sends what is still `queued`, with the
    /// same idempotency keys.
    ///
    /// # Errors
    /// Database errors; nothing is claimed then.
    #[allow(clippy::too_many_arguments)]
    pub fn claim_external(
        &self,
        owner: &str,
        channels: &[Channel],
        cache: &DispatchCache,
        policy: &DeliveryPolicy,
        max_jobs: usize,
        lease_ms: i64,
        now: i64,
    ) -> Result<Vec<ExternalBatch>, StoreError> {
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        let backend = self.backend();
        self.db.write(|c| {
            let mut sql = claim_sql(backend, channels, &cache.exclusions(now));
            let mut out = Vec::new();
            let mut marks = Marks::new();
            while out.len() < max_jobs {
                let Some(job) = c.query_opt(&sql, params![owner, now + lease_ms, now, now])? else { break };
                let (job_id, broadcast_id, batch_no, queued_at) = (job.i64(0), job.i64(1), job.i64(2), job.i64(4));
                let priority = Priority::from_i64(job.i64(5));
                let (workspace_id, member_id) = (job.i64(6), job.i64(7));
                let channel = Channel::parse(job.str(3)).map_err(|_| StoreError::Corrupt(format!("channel {}", job.str(3))))?;
                // A batch of a broadcast recalled since it was queued is not sent.
                if crate::recall::cancel_if_recalled(c, &mut marks, (job_id, broadcast_id, batch_no), channel.as_str(), queued_at, now)? {
                    continue;
                }
                // A fallback step waits until the channel before it finished
                // this batch, and then its own wait (before any rate token is taken).
                let condition = job.opt_string(10).and_then(|s| parse_condition(&s));
                if let Some((_, previous, after_ms)) = condition {
                    if let Some(ready_at) = fallback_ready_at(c, broadcast_id, batch_no, previous, after_ms, now)? {
                        c.execute(
                            "UPDATE jobs SET lease_until = NULL, attempts = attempts - 1, run_at = ? WHERE id = ?",
                            params![ready_at, job_id],
                        )?;
                        continue;
                    }
                }
                let condition = condition.map(|(unread, previous, _)| (unread, previous));
                let b = cache.get(c, broadcast_id)?;
                let members = b.frozen.batch(batch_no as usize);
                if throttled(c, cache, policy, (job_id, workspace_id, member_id), channel, priority, members.len(), now)? {
                    sql = claim_sql(backend, channels, &cache.exclusions(now));
                    continue;
                }
                let (Some(&lo), Some(&hi)) = (members.first(), members.last()) else {
                    c.execute("UPDATE jobs SET state = 'done', lease_until = NULL, done_at = ? WHERE id = ?", params![now, job_id])?;
                    continue;
                };

                c.bulk_insert(
                    "deliveries",
                    &["broadcast_id", "channel", "contact_idx", "workspace_id", "state", "attempts", "queued_at"],
                    "ON CONFLICT DO NOTHING",
                    &mut members.iter().map(|idx| {
                        vec![
                            Value::Int(broadcast_id),
                            Value::Text(channel.as_str().into()),
                            Value::Int(i64::from(*idx)),
                            Value::Int(workspace_id),
                            Value::Text("queued".into()),
                            Value::Int(0),
                            Value::Int(queued_at),
                        ]
                    }),
                )?;
                let mut pending: Vec<u32> = c
                    .query(
                        "SELECT contact_idx FROM deliveries WHERE broadcast_id = ? AND channel = ? AND contact_idx BETWEEN ? AND ?
                         AND state = 'queued' ORDER BY contact_idx",
                        params![broadcast_id, channel.as_str(), lo, hi],
                    )?
                    .iter()
                    .map(|r| r.i64(0) as u32)
                    .collect();
                let (skipped, filtered) = leave_out(
                    c,
                    policy,
                    (broadcast_id, workspace_id, channel),
                    (lo, hi),
                    condition,
                    &mut pending,
                )?;
                if skipped + filtered > 0 {
                    c.execute(
                        "UPDATE broadcasts SET n_skipped = n_skipped + ?, n_filtered = n_filtered + ? WHERE id = ?",
                        params![skipped, filtered, broadcast_id],
                    )?;
                    marks.sync_states(broadcast_id, channel.as_str(), lo, hi);
                }
                let column = match channel {
                    Channel::Email => "email",
                    Channel::Sms => "phone",
                    Channel::Webhook => "webhook",
                    Channel::Wecom => "wecom_userid",
                    Channel::Inbox => "NULL",
                };
                let addresses: HashMap<u32, String> = c
                    .query(
                        &format!(
                            "SELECT idx, {column} FROM contacts WHERE workspace_id = ? AND idx BETWEEN ? AND ? AND deleted_at IS NULL AND {column} IS NOT NULL"
                        ),
                        params![workspace_id, lo, hi],
                    )?
                    .iter()
                    .map(|r| (r.i64(0) as u32, r.string(1)))
                    .collect();
                let data = Store::template_data(c, workspace_id, lo, hi)?;
                let items = pending
                    .into_iter()
                    .map(|idx| {
                        let d = data.get(&idx);
                        let text = match &b.template {
                            Some(t) => Some(t.render(&|var| {
                                let (name, external_id, attrs) = d?;
                                match var {
                                    "name" => Some(name.clone()),
                                    "external_id" => Some(external_id.clone()),
                                    _ => attrs.get(var).and_then(attr_display),
                                }
                            })),
                            None => b.text.clone(),
                        };
                        Outgoing {
                            contact_idx: idx,
                            idempotency_key: format!("qf-{broadcast_id}-{idx}-{}", channel.as_str()),
                            external_id: d.map(|d| d.1.clone()).unwrap_or_default(),
                            name: d.map(|d| d.0.clone()).unwrap_or_default(),
                            address: addresses.get(&idx).cloned(),
                            text,
                            unsubscribe_url: None,
            open_pixel_url: None,
                            tracked_urls: Vec::new(),
                        }
                    })
                    .collect();
                out.push(ExternalBatch {
                    job_id,
                    broadcast_id,
                    workspace_id,
                    batch_no,
                    channel,
                    priority,
                    attempt: job.i64(9),
                    queued_at,
                    lease_until: now + lease_ms,
                    content_json: b.content_json.clone(),
                    settings: channel_settings(c, workspace_id, channel)?,
                    tracked_links: crate::measure::tracked_links(c, broadcast_id, channel.as_str())?,
                    items,
                    lo,
                    hi,
                });
            }
            marks.apply(c)?;
            Ok(out)
        })
    }

    /// Extends the lease of a batch still being sent, if this claim still
    /// holds it (same owner, same expiry): returns the new expiry, or none
    /// when the lease was lost (another node took the job over).
    ///
    /// # Errors
    /// Database errors.
    pub fn renew_lease(
        &self,
        owner: &str,
        job_id: i64,
        lease_until: i64,
        new_until: i64,
    ) -> Result<Option<i64>, StoreError> {
        self.db.write(|c| {
            let n = c.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND lease_owner = ? AND lease_until = ? AND state = 'ready'",
                params![new_until, job_id, owner, lease_until],
            )?;
            Ok((n == 1).then_some(new_until))
        })
    }

    /// Records what the channel said about a claimed batch, in one
    /// transaction: delivered and rejected records become final (each record
    /// changes once: only from `queued`), and the broadcast's counts move with
    /// them. When nothing of the batch is left queued the job is done; else it
    /// is retried after the policy's backoff, and after its last attempt the
    /// rest fails with `QF-DELIVERY-FAILED` (a dead letter). If the lease ran
    /// out and another node holds the job, only the outcomes are recorded.
    ///
    /// # Errors
    /// Database errors; nothing is recorded then, and the lease runs out.
    pub fn finish_external(
        &self,
        owner: &str,
        batch: &ExternalBatch,
        outcomes: &[(u32, SendOutcome)],
        policy: &DeliveryPolicy,
        now: i64,
    ) -> Result<FinishReport, StoreError> {
        self.db.write(|c| {
            let mut report = FinishReport::default();
            let mut failures = Vec::new();
            let (id, ch) = (batch.broadcast_id, batch.channel.as_str());
            // Deliveries, the common case, are written in sets of ids (ours,
            // integers) rather than one statement per recipient.
            let mut delivered: Vec<u32> =
                outcomes.iter().filter(|(_, o)| *o == SendOutcome::Delivered).map(|(idx, _)| *idx).collect();
            delivered.sort_unstable();
            delivered.dedup();
            for ids in delivered.chunks(500) {
                let list = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
                report.delivered += c.execute(
                    &format!(
                        "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, sent_at = ?, delivered_at = ?, last_error = NULL
                         WHERE broadcast_id = ? AND channel = ? AND contact_idx IN ({list}) AND state = 'queued'"
                    ),
                    params![now, now, id, ch],
                )?;
            }
            for (idx, outcome) in outcomes {
                match outcome {
                    SendOutcome::Delivered => {}
                    SendOutcome::Accepted(provider_id) => {
                        report.sent += c.execute(
                            "UPDATE deliveries SET state = 'sent', attempts = attempts + 1, sent_at = ?, provider_id = ?, last_error = NULL
                             WHERE broadcast_id = ? AND channel = ? AND contact_idx = ? AND state = 'queued'",
                            params![now, clean(provider_id), id, ch, *idx],
                        )?;
                    }
                    SendOutcome::Rejected(code, error) => {
                        failures.push(serde_json::json!({
                            "contact_id": crate::contact_public_id(batch.workspace_id, *idx).to_string(),
                            "code": code.as_str(),
                            "error": clean(error),
                        }));
                        report.failed += c.execute(
                            "UPDATE deliveries SET state = 'failed', attempts = attempts + 1, error_code = ?, last_error = ?
                             WHERE broadcast_id = ? AND channel = ? AND contact_idx = ? AND state = 'queued'",
                            params![code.as_str(), clean(error), id, ch, *idx],
                        )?;
                    }
                    SendOutcome::Deferred { reason, .. } => {
                        report.retrying += c.execute(
                            "UPDATE deliveries SET last_error = ?
                             WHERE broadcast_id = ? AND channel = ? AND contact_idx = ? AND state = 'queued'",
                            params![clean(reason), id, ch, *idx],
                        )?;
                    }
                    SendOutcome::Retry(error) => {
                        report.retrying += c.execute(
                            "UPDATE deliveries SET attempts = attempts + 1, last_error = ?
                             WHERE broadcast_id = ? AND channel = ? AND contact_idx = ? AND state = 'queued'",
                            params![clean(error), id, ch, *idx],
                        )?;
                    }
                }
            }
            // The lease is this claim's only if owner and expiry match: a node
            // that claimed the job again after its own lease ran out holds a
            // newer lease, and this older round only records its outcomes.
            let job = c.query_one("SELECT lease_owner, state, lease_until FROM jobs WHERE id = ?", params![batch.job_id])?;
            let mut batches_done = 0u64;
            if job.opt_string(0).as_deref() != Some(owner) || job.str(1) != "ready" || job.opt_i64(2) != Some(batch.lease_until)
            {
                report.lease_lost = true;
            } else {
                let left = c
                    .query_one(
                        "SELECT COUNT(*) FROM deliveries WHERE broadcast_id = ? AND channel = ? AND contact_idx BETWEEN ? AND ? AND state = 'queued'",
                        params![id, ch, batch.lo, batch.hi],
                    )?
                    .i64(0);
                let retried = outcomes.iter().any(|(_, o)| matches!(o, SendOutcome::Retry(_)));
                let deferred_until = outcomes
                    .iter()
                    .filter_map(|(_, o)| match o {
                        SendOutcome::Deferred { until, .. } => Some(*until),
                        _ => None,
                    })
                    .max();
                if left == 0 {
                    c.execute(
                        "UPDATE jobs SET state = 'done', lease_until = NULL, throttled = 0, done_at = ? WHERE id = ?",
                        params![now, batch.job_id],
                    )?;
                    (report.done, batches_done) = (true, 1);
                } else if let (false, Some(until), true) = (retried, deferred_until, now - batch.queued_at < MAX_DEFER_MS) {
                    // Only deferred: back when the receiver may be up, the claim not counted.
                    let last_error = outcomes.iter().find_map(|(_, o)| match o {
                        SendOutcome::Deferred { reason, .. } => Some(clean(reason)),
                        _ => None,
                    });
                    c.execute(
                        "UPDATE jobs SET run_at = ?, lease_until = NULL, attempts = attempts - 1, last_error = ? WHERE id = ?",
                        params![until.max(now + 100), last_error, batch.job_id],
                    )?;
                    report.deferred = true;
                } else if batch.attempt < i64::from(policy.max_attempts) {
                    let delay = policy.retry_delay_ms(batch.attempt as u32, jitter(batch.job_id, now)) as i64;
                    let last_error = outcomes.iter().find_map(|(_, o)| match o {
                        SendOutcome::Retry(e) => Some(clean(e)),
                        _ => None,
                    });
                    c.execute(
                        "UPDATE jobs SET run_at = ?, lease_until = NULL, last_error = ? WHERE id = ?",
                        params![now + delay, last_error, batch.job_id],
                    )?;
                } else {
                    let dead = c.execute(
                        "UPDATE deliveries SET state = 'failed', error_code = ? WHERE broadcast_id = ? AND channel = ?
                         AND contact_idx BETWEEN ? AND ? AND state = 'queued'",
                        params![Code::DeliveryFailed.as_str(), id, ch, batch.lo, batch.hi],
                    )?;
                    c.execute("UPDATE jobs SET state = 'dead', lease_until = NULL, done_at = ? WHERE id = ?", params![now, batch.job_id])?;
                    report.failed += dead;
                    (report.done, report.dead, batches_done) = (true, true, 1);
                    failures.push(serde_json::json!({"dead_letter": true, "failed": dead, "code": Code::DeliveryFailed.as_str()}));
                    let details = serde_json::json!({"job": batch.job_id, "batch": batch.batch_no, "channel": ch, "failed": dead})
                        .to_string();
                    audit::append(c, batch.workspace_id, "engine", "delivery.dead_letter", &format!("broadcast:{id}"), &details, now)?;
                }
            }
            c.execute(
                "UPDATE broadcasts SET n_delivered = n_delivered + ?, n_sent = n_sent + ?, n_failed = n_failed + ?, n_batches_done = n_batches_done + ? WHERE id = ?",
                params![report.delivered, report.sent, report.failed, batches_done, id],
            )?;
            let mut marks = Marks::new();
            marks.sync_states(id, ch, batch.lo, batch.hi);
            marks.apply(c)?;
            if !failures.is_empty() {
                let data = serde_json::json!({"broadcast_id": id.to_string(), "channel": ch, "batch": batch.batch_no, "failures": failures});
                crate::events::emit(c, batch.workspace_id, "delivery.failed", data, now)?;
            }
            report.completed = batches_done > 0 && complete_if_done(c, id, now)?;
            Ok(report)
        })
    }

    /// After a step failed: takes the job a step would claim first, counts the
    /// failed attempt and retries it later (exponential backoff with jitter,
    /// from the policy). At the policy's last attempt the job is dead: its
    /// recipients get `failed` delivery records with `QF-DELIVERY-FAILED` and
    /// the error, so the broadcast still completes and the failure shows in
    /// its counts (and `retry-failed` can re-drive it later).
    ///
    /// # Errors
    /// Database errors.
    pub fn defer_failed_job(
        &self,
        error: &str,
        policy: &DeliveryPolicy,
        now: i64,
    ) -> Result<Option<DeferOutcome>, StoreError> {
        let backend = self.backend();
        self.db.write(|c| {
            let lock = if backend == Backend::Postgres { "FOR UPDATE SKIP LOCKED" } else { "" };
            let Some(job) = c.query_opt(
                &format!(
                    "SELECT id, broadcast_id, batch_no, channel, attempts, created_at, priority FROM jobs
                     WHERE state = 'ready' AND run_at <= ? AND (lease_until IS NULL OR lease_until < ?) AND channel = 'inbox'
                     ORDER BY priority, run_at, id LIMIT 1 {lock}"
                ),
                params![now, now],
            )?
            else {
                return Ok(None);
            };
            let (job_id, broadcast_id, batch_no, channel, attempts) =
                (job.i64(0), job.i64(1), job.i64(2), job.string(3), job.i64(4) + 1);
            let error = clean(error);
            let mut outcome = DeferOutcome {
                job_id,
                dead: false,
                failed: 0,
                channel: Channel::parse(&channel).unwrap_or(Channel::Inbox),
                priority: Priority::from_i64(job.i64(6)),
            };
            if attempts < i64::from(policy.max_attempts) {
                let delay = policy.retry_delay_ms(attempts as u32, jitter(job_id, now)) as i64;
                c.execute(
                    "UPDATE jobs SET attempts = ?, run_at = ?, last_error = ?, lease_until = NULL WHERE id = ?",
                    params![attempts, now + delay, error, job_id],
                )?;
                return Ok(Some(outcome));
            }
            c.execute(
                "UPDATE jobs SET attempts = ?, state = 'dead', last_error = ?, lease_until = NULL, done_at = ? WHERE id = ?",
                params![attempts, error.clone(), now, job_id],
            )?;
            let b = c.query_one(
                "SELECT workspace_id, frozen_audience, batch_size FROM broadcasts WHERE id = ?",
                params![broadcast_id],
            )?;
            let workspace_id = b.i64(0);
            let mut batch_range = None;
            let failed = match FrozenAudience::deserialize(b.blob(1)) {
                Ok(frozen) => {
                    let frozen = frozen.with_batch_size(b.opt_i64(2).map(|n| n as usize));
                    let members = frozen.batch(batch_no as usize);
                    batch_range = members.first().zip(members.last()).map(|(&lo, &hi)| (lo, hi));
                    let rows: Vec<Vec<Value>> = frozen
                        .batch(batch_no as usize)
                        .iter()
                        .map(|idx| {
                            vec![
                                Value::Int(broadcast_id),
                                Value::Text(channel.clone()),
                                Value::Int(i64::from(*idx)),
                                Value::Int(workspace_id),
                                Value::Text("failed".into()),
                                Value::Int(attempts),
                                Value::Text(Code::DeliveryFailed.as_str().into()),
                                Value::Text(error.clone()),
                                Value::Int(job.i64(5)),
                            ]
                        })
                        .collect();
                    c.bulk_insert_borrowed(
                        "deliveries",
                        &[
                            "broadcast_id",
                            "channel",
                            "contact_idx",
                            "workspace_id",
                            "state",
                            "attempts",
                            "error_code",
                            "last_error",
                            "queued_at",
                        ],
                        "ON CONFLICT DO NOTHING",
                        &rows,
                    )?
                }
                Err(_) => 0,
            };
            c.execute(
                "UPDATE broadcasts SET n_failed = n_failed + ?, n_batches_done = n_batches_done + 1 WHERE id = ?",
                params![failed, broadcast_id],
            )?;
            if let Some((lo, hi)) = batch_range {
                let mut marks = Marks::new();
                marks.sync_states(broadcast_id, &channel, lo, hi);
                marks.apply(c)?;
            }
            let details =
                serde_json::json!({"job": job_id, "batch": batch_no, "failed": failed, "error": error}).to_string();
            audit::append(
                c,
                workspace_id,
                "engine",
                "delivery.dead_letter",
                &format!("broadcast:{broadcast_id}"),
                &details,
                now,
            )?;
            complete_if_done(c, broadcast_id, now)?;
            outcome.dead = true;
            outcome.failed = failed;
            Ok(Some(outcome))
        })
    }

    /// Pauses a sending broadcast: its waiting batches are held (a batch in
    /// flight finishes). Returns the broadcast's counts at the pause.
    ///
    /// # Errors
    /// `QF-STATE-CONFLICT` unless it is sending, `NotFound`, or database errors.
    pub fn pause_broadcast(&self, workspace_id: i64, id: i64, actor: &str, now: i64) -> Result<(), StoreError> {
        self.db.write(|c| {
            // Jobs first, then the broadcast: the order a worker step locks
            // them in (on PostgreSQL the other order deadlocks with a step).
            let held = c.execute(
                "UPDATE jobs SET state = 'held' WHERE broadcast_id = ? AND state = 'ready'
                 AND EXISTS (SELECT 1 FROM broadcasts WHERE id = ? AND workspace_id = ? AND state = 'sending')",
                params![id, id, workspace_id],
            )?;
            let n = c.execute(
                "UPDATE broadcasts SET state = 'paused', paused_at = ? WHERE id = ? AND workspace_id = ? AND state = 'sending'",
                params![now, id, workspace_id],
            )?;
            if n == 0 {
                // Rolls the holds back too.
                return Err(state_conflict(c, workspace_id, id, "only a sending broadcast can be paused")?);
            }
            let details = serde_json::json!({"batches_held": held}).to_string();
            audit::append(c, workspace_id, actor, "broadcast.paused", &format!("broadcast:{id}"), &details, now)?;
            crate::events::broadcast_state(c, workspace_id, id, "paused", now)?;
            Ok(())
        })
    }

    /// Resumes a paused broadcast: its held batches are ready again.
    ///
    /// # Errors
    /// `QF-STATE-CONFLICT` unless it is paused, `NotFound`, or database errors.
    pub fn resume_broadcast(&self, workspace_id: i64, id: i64, actor: &str, now: i64) -> Result<(), StoreError> {
        self.db.write(|c| {
            let resumed = c.execute(
                // Batches due while paused go now; later ones (waves, fallback
                // steps) keep their time.
                "UPDATE jobs SET state = 'ready', run_at = CASE WHEN run_at < ? THEN ? ELSE run_at END, throttled = 0
                 WHERE broadcast_id = ? AND state = 'held'
                 AND EXISTS (SELECT 1 FROM broadcasts WHERE id = ? AND workspace_id = ? AND state = 'paused')",
                params![now, now, id, id, workspace_id],
            )?;
            let n = c.execute(
                "UPDATE broadcasts SET state = 'sending', paused_at = NULL WHERE id = ? AND workspace_id = ? AND state = 'paused'",
                params![id, workspace_id],
            )?;
            if n == 0 {
                return Err(state_conflict(c, workspace_id, id, "only a paused broadcast can be resumed")?);
            }
            let details = serde_json::json!({"batches_resumed": resumed}).to_string();
            audit::append(c, workspace_id, actor, "broadcast.resumed", &format!("broadcast:{id}"), &details, now)?;
            crate::events::broadcast_state(c, workspace_id, id, "sending", now)?;
            // Paused after its last batch: nothing is left to send.
            complete_if_done(c, id, now)?;
            Ok(())
        })
    }

    /// Re-drives the failed deliveries of a completed broadcast (the
    /// "compensation" of the source documents): their records go back to
    /// `queued`, the batches that hold them are queued again, and the
    /// broadcast is sending until they are done. Returns the number of
    /// deliveries re-driven.
    ///
    /// # Errors
    /// `QF-STATE-CONFLICT` unless the broadcast is completed with failed
    /// deliveries, `NotFound`, or database errors.
    pub fn redrive_failed(&self, workspace_id: i64, id: i64, actor: &str, now: i64) -> Result<u64, StoreError> {
        self.db.write(|c| {
            let b = c.query_one(
                "SELECT state, frozen_audience, n_failed, recalled_at, batch_size FROM broadcasts WHERE id = ? AND workspace_id = ?",
                params![id, workspace_id],
            )?;
            if b.str(0) != "completed" {
                return Err(StoreError::rejected(Code::Conflict, format!("the broadcast is {}: only a completed broadcast can be re-driven", b.str(0))));
            }
            if b.opt_i64(3).is_some() {
                return Err(StoreError::rejected(Code::Recalled, "the broadcast was recalled: nothing of it is sent again"));
            }
            let frozen = FrozenAudience::deserialize(b.blob(1))
                .map_err(|e| StoreError::Corrupt(e.to_string()))?
                .with_batch_size(b.opt_i64(4).map(|n| n as usize));
            let failed = c.query(
                "SELECT channel, contact_idx FROM deliveries WHERE broadcast_id = ? AND state = 'failed'",
                params![id],
            )?;
            if failed.is_empty() {
                return Err(StoreError::rejected(Code::Conflict, "the broadcast has no failed deliveries"));
            }
            let mut batches: Vec<(String, i64)> = failed
                .iter()
                .filter_map(|r| frozen.batch_of(r.i64(1) as u32).map(|b| (r.string(0), b as i64)))
                .collect();
            batches.sort();
            batches.dedup();
            let requeued = c.query(
                "UPDATE deliveries SET state = 'queued', error_code = NULL WHERE broadcast_id = ? AND state = 'failed'
                 RETURNING channel, contact_idx",
                params![id],
            )?;
            let n = requeued.len() as u64;
            let mut marks = Marks::new();
            for r in &requeued {
                marks.state_change(id, r.str(0), r.i64(1) as u32, Some("failed"), "queued");
            }
            for (channel, batch_no) in &batches {
                c.execute(
                    "UPDATE jobs SET state = 'ready', run_at = ?, due_at = ?, attempts = 0, redrive = 1, throttled = 0, lease_until = NULL, last_error = NULL, done_at = NULL
                     WHERE broadcast_id = ? AND channel = ? AND batch_no = ?",
                    params![now, now, id, channel.clone(), *batch_no],
                )?;
            }
            c.execute(
                "UPDATE broadcasts SET state = 'sending', completed_at = NULL, n_failed = n_failed - ?, n_redriven = n_redriven + ?,
                 n_batches_done = n_batches_done - ? WHERE id = ?",
                params![n, n, batches.len(), id],
            )?;
            // The records that were queued again leave the failed set (after
            // the broadcast row, like every writer: no lock-order deadlock).
            marks.apply(c)?;
            let details = serde_json::json!({"deliveries": n, "batches": batches.len()}).to_string();
            audit::append(c, workspace_id, actor, "broadcast.redriven", &format!("broadcast:{id}"), &details, now)?;
            Ok(n)
        })
    }

    /// Sets the workspace's speed level (0 fastest … 4 slowest; `None` sends
    /// unthrottled). It applies to batches in flight at once: batches a
    /// slower level put back are ready again.
    ///
    /// # Errors
    /// Database errors.
    pub fn set_speed_level(
        &self,
        workspace_id: i64,
        level: Option<u8>,
        actor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.db.write(|c| {
            c.execute("UPDATE workspaces SET speed_level = ? WHERE id = ?", params![level.map(i64::from), workspace_id])?;
            c.execute(
                "UPDATE jobs SET run_at = ?, throttled = 0 WHERE workspace_id = ? AND state = 'ready' AND throttled = 1",
                params![now, workspace_id],
            )?;
            let details = serde_json::json!({"level": level}).to_string();
            audit::append(c, workspace_id, actor, "workspace.speed_level", &format!("workspace:{workspace_id}"), &details, now)?;
            Ok(())
        })
    }

    /// The workspace's speed level.
    ///
    /// # Errors
    /// Database errors.
    pub fn speed_level(&self, workspace_id: i64) -> Result<Option<u8>, StoreError> {
        let r = self.db.conn()?.query_one("SELECT speed_level FROM workspaces WHERE id = ?", params![workspace_id])?;
        Ok(r.opt_i64(0).and_then(|l| u8::try_from(l).ok()))
    }

    /// Purges the content of broadcasts past retention, and of flash messages
    /// past their time to live, once they are no longer sending: the text
    /// (replaced by a `purged` marker), rendered bodies and reply texts go;
    /// delivery records, counts and the audit chain stay. Works in groups of
    /// 100 broadcasts; returns how many it purged.
    ///
    /// # Errors
    /// Database errors.
    pub fn purge_content(&self, retention_ms: i64, now: i64) -> Result<u64, StoreError> {
        self.db.write(|c| {
            let due = c.query(
                "SELECT id, workspace_id FROM broadcasts WHERE purged_at IS NULL AND state IN ('completed', 'cancelled')
                 AND (completed_at <= ? OR expires_at <= ? OR (state = 'cancelled' AND created_at <= ?)) LIMIT 100",
                params![now - retention_ms, now, now - retention_ms],
            )?;
            for r in &due {
                let (id, workspace_id) = (r.i64(0), r.i64(1));
                c.execute(
                    r#"UPDATE broadcasts SET content = '{"type":"purged"}', purged_at = ? WHERE id = ?"#,
                    params![now, id],
                )?;
                c.execute(
                    "UPDATE deliveries SET body = NULL WHERE broadcast_id = ? AND body IS NOT NULL",
                    params![id],
                )?;
                c.execute("UPDATE replies SET text = '' WHERE broadcast_id = ?", params![id])?;
                crate::safety::purge(c, id)?;
                audit::append(c, workspace_id, "engine", "broadcast.purged", &format!("broadcast:{id}"), "{}", now)?;
            }
            // Near-duplicate fingerprints and verification codes matter for a
            // window of minutes to hours; past retention they go too.
            crate::safety::forget(c, now - retention_ms)?;
            Ok(due.len() as u64)
        })
    }

    /// Batches waiting (ready, held or throttled), by priority class and
    /// channel, for the metrics.
    ///
    /// # Errors
    /// Database errors.
    pub fn queue_depth(&self) -> Result<Vec<(Priority, String, u64)>, StoreError> {
        let rows = self.db.conn()?.query(
            "SELECT priority, channel, COUNT(*) FROM jobs WHERE state IN ('ready', 'held') GROUP BY priority, channel",
            params![],
        )?;
        Ok(rows.iter().map(|r| (Priority::from_i64(r.i64(0)), r.string(1), r.i64(2) as u64)).collect())
    }
}

/// The error for a state change that did not apply: 404 when the broadcast
/// is not the workspace's, else a conflict naming its state.
fn state_conflict(c: &mut Conn, workspace_id: i64, id: i64, what: &str) -> Result<StoreError, StoreError> {
    let r = c.query_one("SELECT state FROM broadcasts WHERE id = ? AND workspace_id = ?", params![id, workspace_id])?;
    Ok(StoreError::rejected(Code::Conflict, format!("{what}; it is {}", r.str(0))))
}

/// How long a fallback step waits before it looks again at a channel before
/// it that has not finished the batch.
const FALLBACK_RECHECK_MS: i64 = 30_000;

/// `unread:inbox:7200000` → (unread, the channel before, the wait in ms).
fn parse_condition(s: &str) -> Option<(bool, Channel, i64)> {
    let mut parts = s.split(':');
    let when = parts.next()?;
    let previous = Channel::parse(parts.next()?).ok()?;
    let after_ms = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    Some((when == "unread", previous, after_ms))
}

/// When a fallback step of a batch may run, if not now: while the channel
/// before it still has the batch, a re-check later; once that finished, its
/// finish plus the step's wait (so a paused, resumed or paced broadcast still
/// gives every recipient the full wait).
fn fallback_ready_at(
    c: &mut Conn,
    broadcast_id: i64,
    batch_no: i64,
    previous: Channel,
    after_ms: i64,
    now: i64,
) -> Result<Option<i64>, StoreError> {
    let prev = c.query_opt(
        "SELECT state, done_at FROM jobs WHERE broadcast_id = ? AND batch_no = ? AND channel = ?",
        params![broadcast_id, batch_no, previous.as_str()],
    )?;
    Ok(match prev {
        Some(r) if matches!(r.str(0), "ready" | "held") => Some(now + FALLBACK_RECHECK_MS),
        Some(r) => r.opt_i64(1).map(|done| done + after_ms).filter(|at| *at > now),
        None => None,
    })
}

/// Takes out of `pending` the recipients this batch must not send to, and
/// gives their records a final state: `skipped` when a fallback step's
/// condition does not hold for them, `filtered` with the reason when they
/// refused the channel (opt-out) or it needs consent they did not give.
/// Returns (skipped, filtered).
fn leave_out(
    c: &mut Conn,
    policy: &DeliveryPolicy,
    (broadcast_id, workspace_id, channel): (i64, i64, Channel),
    (lo, hi): (u32, u32),
    condition: Option<(bool, Channel)>,
    pending: &mut Vec<u32>,
) -> Result<(u64, u64), StoreError> {
    let mut out: Vec<(u32, &'static str, Option<Code>)> = Vec::new();
    if let Some((unread, previous)) = condition {
        let sql = if unread {
            // Send to those who have not read: skip the readers.
            "SELECT contact_idx FROM deliveries WHERE broadcast_id = ? AND channel = ? AND contact_idx BETWEEN ? AND ? AND read_at IS NOT NULL"
        } else {
            // Send to those the channel before failed: skip everyone else.
            "SELECT contact_idx FROM deliveries WHERE broadcast_id = ? AND channel = ? AND contact_idx BETWEEN ? AND ?
             AND state IN ('failed', 'filtered')"
        };
        let hits: std::collections::HashSet<u32> =
            c.query(sql, params![broadcast_id, previous.as_str(), lo, hi])?.iter().map(|r| r.i64(0) as u32).collect();
        pending.retain(|idx| {
            let send = hits.contains(idx) != unread;
            if !send {
                out.push((*idx, "skipped", None));
            }
            send
        });
    }
    let opted = channels::opted_out(c, workspace_id, channel, lo, hi)?;
    let blocked = crate::recall::blocked(c, broadcast_id, lo, hi)?;
    let consenting =
        if policy.needs_opt_in(channel) { Some(channels::consenting(c, workspace_id, channel, lo, hi)?) } else { None };
    pending.retain(|idx| {
        let code = match (opted.get(idx), &consenting) {
            (Some(reason), _) => Some(reason.code()),
            (None, _) if blocked.contains(idx) => Some(Code::BlockedSender),
            (None, Some(yes)) if !yes.contains(idx) => Some(Code::ConsentMissing),
            _ => None,
        };
        if code.is_some() {
            out.push((*idx, "filtered", code));
        }
        code.is_none()
    });
    let (mut skipped, mut filtered) = (0, 0);
    for (idx, state, code) in out {
        let n = c.execute(
            "UPDATE deliveries SET state = ?, error_code = ? WHERE broadcast_id = ? AND channel = ? AND contact_idx = ? AND state = 'queued'",
            params![state, code.map(Code::as_str), broadcast_id, channel.as_str(), idx],
        )?;
        if state == "skipped" {
            skipped += n;
        } else {
            filtered += n;
        }
    }
    Ok((skipped, filtered))
}

/// The workspace's stored settings of a channel.
///
/// # Errors
/// Database errors, or stored JSON that no longer parses.
pub(crate) fn channel_settings(
    c: &mut Conn,
    workspace_id: i64,
    channel: Channel,
) -> Result<Option<std::sync::Arc<ChannelSettings>>, StoreError> {
    let Some(row) = c.query_opt(
        "SELECT settings FROM channel_settings WHERE workspace_id = ? AND channel = ?",
        params![workspace_id, channel.as_str()],
    )?
    else {
        return Ok(None);
    };
    ChannelSettings::from_stored(channel, row.str(0))
        .map(|s| Some(std::sync::Arc::new(s)))
        .map_err(|e| StoreError::Corrupt(format!("{} settings of workspace {workspace_id}: {e}", channel.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_spread_over_the_unit_interval() {
        let values: Vec<f64> = (0..1000).map(|i| jitter(i, 1_700_000_000_000)).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        let low = values.iter().filter(|v| **v < 0.5).count();
        assert!((400..600).contains(&low), "{low} of 1000 below 0.5");
    }
}
