//! The delivery engine: a worker that drains the durable queue, and the
//! housekeeping that purges content past retention.
//!
//! The queue lives in the database (`jobs`); this crate decides when to run a
//! step and keeps the metrics. A step is one transaction (see
//! `Store::run_step`), so stopping between steps — or being killed inside one
//! — loses nothing: a rolled-back step leaves its jobs ready for the next
//! worker, on this node or another.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use qunfa_core::{broadcast::Priority, contact::Channel, policy::DeliveryPolicy, Policy};
use qunfa_store::{
    broadcasts::DispatchCache,
    now_millis,
    queue::{FinishReport, StepLimits, StepReport},
    Store,
};
use tokio::sync::Notify;

pub mod email;
mod events;
pub mod external;
pub mod sms;
pub mod webhook;
pub mod wecom;
pub use external::{Links, Transports};
pub use webhook::literal_private_host;

/// Upper bounds (milliseconds) of the delivery latency histogram's buckets.
pub const LATENCY_BUCKETS_MS: [u64; 14] =
    [5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000];

/// A histogram of latencies, counted per recipient.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is +Inf.
    pub buckets: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    pub count: AtomicU64,
    pub sum_ms: AtomicU64,
}

impl Histogram {
    /// Records `n` observations of `ms`.
    pub fn observe(&self, ms: u64, n: u64) {
        let i = LATENCY_BUCKETS_MS.iter().position(|b| ms <= *b).unwrap_or(LATENCY_BUCKETS_MS.len());
        self.buckets[i].fetch_add(n, Ordering::Relaxed);
        self.count.fetch_add(n, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms.saturating_mul(n), Ordering::Relaxed);
    }
}

/// Per priority class and channel.
#[derive(Debug, Default)]
pub struct ByClass<T> {
    cells: [[T; Channel::ALL.len()]; 3],
}

impl<T> ByClass<T> {
    pub fn get(&self, priority: Priority, channel: Channel) -> &T {
        let ch = Channel::ALL.iter().position(|c| *c == channel).unwrap_or(0);
        &self.cells[priority as usize][ch]
    }

    /// Every cell with its class and channel.
    pub fn iter(&self) -> impl Iterator<Item = (Priority, Channel, &T)> {
        [Priority::Transactional, Priority::Chat, Priority::Broadcast]
            .into_iter()
            .flat_map(move |p| Channel::ALL.iter().enumerate().map(move |(i, ch)| (p, *ch, &self.cells[p as usize][i])))
    }
}

/// Counters the server exports as metrics.
#[derive(Debug, Default)]
pub struct EngineMetrics {
    pub steps: AtomicU64,
    pub jobs_done: AtomicU64,
    pub broadcasts_completed: AtomicU64,
    pub step_errors: AtomicU64,
    pub dead_letters: AtomicU64,
    /// Batches put back by a rate limit.
    pub throttled: AtomicU64,
    /// Broadcasts whose content retention purged.
    pub purged: AtomicU64,
    /// Deliveries written, per class and channel.
    pub delivered: ByClass<AtomicU64>,
    /// Deliveries that ended failed (dead letters), per class and channel.
    pub failed: ByClass<AtomicU64>,
    /// Queued → durable, per class and channel.
    pub latency: ByClass<Histogram>,
}

impl EngineMetrics {
    /// All deliveries written, every class and channel.
    pub fn delivered_total(&self) -> u64 {
        self.delivered.iter().map(|(_, _, v)| v.load(Ordering::Relaxed)).sum()
    }

    /// Counts one finished batch of a class and channel.
    pub fn record_batch(&self, priority: Priority, channel: Channel, delivered: u64, failed: u64, latency_ms: i64) {
        self.delivered.get(priority, channel).fetch_add(delivered, Ordering::Relaxed);
        self.failed.get(priority, channel).fetch_add(failed, Ordering::Relaxed);
        self.latency.get(priority, channel).observe(latency_ms.max(0) as u64, delivered);
    }

    /// Counts one recorded external batch.
    pub fn record_external(&self, batch: &qunfa_store::queue::ExternalBatch, report: &FinishReport, latency_ms: i64) {
        self.record_batch(batch.priority, batch.channel, report.delivered, report.failed, latency_ms);
        self.jobs_done.fetch_add(u64::from(report.done), Ordering::Relaxed);
        self.dead_letters.fetch_add(u64::from(report.dead), Ordering::Relaxed);
        self.broadcasts_completed.fetch_add(u64::from(report.completed), Ordering::Relaxed);
    }

    fn record(&self, report: &StepReport) {
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.jobs_done.fetch_add(report.jobs, Ordering::Relaxed);
        self.broadcasts_completed.fetch_add(report.completed_broadcasts, Ordering::Relaxed);
        self.throttled.fetch_add(report.throttled, Ordering::Relaxed);
        for b in &report.batches {
            self.record_batch(b.priority, b.channel, b.delivered, 0, b.latency_ms);
            tracing::info!(
                broadcast = b.broadcast_id,
                workspace = b.workspace_id,
                batch = b.batch_no,
                channel = b.channel.as_str(),
                class = b.priority.as_str(),
                delivered = b.delivered,
                latency_ms = b.latency_ms,
                "batch delivered"
            );
        }
    }
}

/// The clock the engine stamps and compares its records with (Unix ms): the
/// wall clock, or the server's own when one is injected (tests move it), so
/// that a job the server queued "in two hours" is due when the server says so.
/// Signature timestamps for receivers stay on the wall clock.
#[derive(Clone)]
pub struct EngineClock(pub Arc<dyn Fn() -> i64 + Send + Sync>);

impl EngineClock {
    pub fn now(&self) -> i64 {
        (self.0)()
    }
}

impl Default for EngineClock {
    fn default() -> Self {
        Self(Arc::new(now_millis))
    }
}

impl std::fmt::Debug for EngineClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EngineClock({})", self.now())
    }
}

/// Settings of the worker.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// A name for this node, stored as the lease owner of its jobs.
    pub node: String,
    /// When a step (one transaction) stops claiming batches.
    pub limits: StepLimits,
    /// How often an idle worker looks for work other nodes queued.
    pub poll_interval: Duration,
    /// Retries, rates and retention.
    pub delivery: DeliveryPolicy,
    /// How often content past retention is purged.
    pub housekeeping_interval: Duration,
    /// Now, for the records.
    pub clock: EngineClock,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            node: format!("node-{}", std::process::id()),
            limits: StepLimits::default(),
            poll_interval: Duration::from_millis(250),
            delivery: Policy::builtin().delivery,
            housekeeping_interval: Duration::from_secs(60),
            clock: EngineClock::default(),
        }
    }
}

/// A running worker.
#[derive(Clone)]
pub struct Engine {
    wake: Arc<Notify>,
    external_wake: Arc<Notify>,
    events_wake: Arc<Notify>,
    stop: Arc<AtomicBool>,
    pub metrics: Arc<EngineMetrics>,
    done: Arc<Notify>,
    finished: Arc<AtomicBool>,
}

impl Engine {
    /// Starts the worker and the housekeeping on the current tokio runtime.
    /// External channels are not sent on this node (see [`Engine::start_with`]).
    pub fn start(store: Store, config: EngineConfig) -> Self {
        Self::start_inner(store, config, None)
    }

    /// Starts the worker, the housekeeping and the worker of the external channels.
    pub fn start_with(store: Store, config: EngineConfig, transports: Transports) -> Self {
        Self::start_inner(store, config, Some(transports))
    }

    fn start_inner(store: Store, config: EngineConfig, transports: Option<Transports>) -> Self {
        let engine = Engine {
            wake: Arc::new(Notify::new()),
            external_wake: Arc::new(Notify::new()),
            events_wake: Arc::new(Notify::new()),
            stop: Arc::new(AtomicBool::new(false)),
            metrics: Arc::new(EngineMetrics::default()),
            done: Arc::new(Notify::new()),
            finished: Arc::new(AtomicBool::new(false)),
        };
        let e = engine.clone();
        let (store2, config2) = (store.clone(), config.clone());
        tokio::spawn(async move {
            let cache = Arc::new(DispatchCache::default());
            while !e.stop.load(Ordering::Acquire) {
                let (store, cache, e2, config) = (store2.clone(), cache.clone(), e.clone(), config2.clone());
                let drained = tokio::task::spawn_blocking(move || {
                    drain(&store, &cache, &config, &e2.metrics, &e2.stop, &|| config.clock.now())
                })
                .await;
                let pause = match drained {
                    Ok(true) => config2.poll_interval,
                    // An error: back off so a broken database is not hammered.
                    Ok(false) | Err(_) => Duration::from_secs(1),
                };
                tokio::select! {
                    () = e.wake.notified() => {}
                    () = tokio::time::sleep(pause) => {}
                }
            }
            e.finished.store(true, Ordering::Release);
            e.done.notify_waiters();
        });
        if let Some(transports) = transports {
            tokio::spawn(external::run(engine.clone(), store.clone(), config.clone(), Arc::new(transports)));
            tokio::spawn(events::run(engine.clone(), store.clone(), config.clone()));
        }
        let e = engine.clone();
        tokio::spawn(async move {
            let retention_ms = i64::from(config.delivery.retention_hours) * 3_600_000;
            while !e.stop.load(Ordering::Acquire) {
                let (store, e2, now) = (store.clone(), e.clone(), config.clock.now());
                let _ = tokio::task::spawn_blocking(move || housekeeping(&store, &e2.metrics, retention_ms, now)).await;
                tokio::select! {
                    () = e.done.notified() => {}
                    () = tokio::time::sleep(config.housekeeping_interval) => {}
                }
            }
        });
        engine
    }

    /// Tells the worker that new jobs are queued.
    pub fn wake(&self) {
        self.wake.notify_one();
        self.external_wake.notify_one();
        self.events_wake.notify_one();
    }

    /// Wakes the event worker (a redelivery was queued).
    pub fn wake_events(&self) {
        self.events_wake.notify_one();
    }

    /// Stops after the step in flight commits.
    pub async fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
        self.external_wake.notify_one();
        while !self.finished.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(Duration::from_millis(100), self.done.notified()).await;
        }
    }
}

/// Purges content past retention (and flash messages past their time), in
/// groups, until nothing is due. Returns how many broadcasts it purged.
pub fn housekeeping(store: &Store, metrics: &EngineMetrics, retention_ms: i64, now: i64) -> u64 {
    let mut total = 0;
    loop {
        match store.purge_content(retention_ms, now) {
            Ok(n) => {
                total += n;
                metrics.purged.fetch_add(n, Ordering::Relaxed);
                if n < 100 {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "retention purge failed; it runs again later");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(broadcasts = total, "content past retention purged");
    }
    total
}

/// Runs delivery steps until the queue is empty or `stop` is set; `clock`
/// gives the time (tests inject one). Returns `false` after an error, when the
/// caller should back off.
///
/// A step that fails is retried one job at a time, so one job that always
/// fails (a poison message) cannot hold back the others: when the
/// single-job step fails too, that job is deferred with backoff and, after
/// the policy's `max_attempts`, becomes a dead letter. A database that is
/// down or locked defers nothing: the worker just backs off. Between steps
/// the worker lets urgent writers (transactional and chat sends) in first.
pub fn drain(
    store: &Store,
    cache: &DispatchCache,
    config: &EngineConfig,
    metrics: &EngineMetrics,
    stop: &AtomicBool,
    clock: &dyn Fn() -> i64,
) -> bool {
    let mut limits = config.limits;
    while !stop.load(Ordering::Acquire) {
        yield_to_urgent_writers(store);
        match store.run_step(&config.node, cache, &config.delivery, limits, clock()) {
            Ok(report) => {
                metrics.record(&report);
                if report.jobs == 0 && report.throttled == 0 {
                    return true;
                }
                limits = config.limits;
            }
            Err(error) if error.is_retryable() => {
                // Another node's step won a lock race; ours was rolled back whole.
                metrics.step_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%error, "delivery step rolled back by the database; running it again");
            }
            Err(error) if error.is_transient() => {
                metrics.step_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "database unavailable; delivery paused, its jobs stay queued");
                return false;
            }
            Err(error) if limits.max_jobs > 1 => {
                metrics.step_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "delivery step failed; retrying its jobs one at a time");
                limits.max_jobs = 1;
            }
            Err(error) => {
                metrics.step_errors.fetch_add(1, Ordering::Relaxed);
                match store.defer_failed_job(&error.to_string(), &config.delivery, clock()) {
                    Ok(Some(outcome)) => {
                        if outcome.dead {
                            metrics.dead_letters.fetch_add(1, Ordering::Relaxed);
                            metrics
                                .failed
                                .get(outcome.priority, outcome.channel)
                                .fetch_add(outcome.failed, Ordering::Relaxed);
                        }
                        tracing::warn!(%error, job = outcome.job_id, dead = outcome.dead, "delivery job failed");
                    }
                    Ok(None) => {}
                    Err(defer_error) => {
                        tracing::warn!(%error, %defer_error, "delivery job failed and could not be deferred");
                        return false;
                    }
                }
                limits = config.limits;
            }
        }
    }
    true
}

/// Waits (briefly) while urgent writers want the database, so the worker's
/// next step does not take the writer lock before them.
fn yield_to_urgent_writers(store: &Store) {
    let start = Instant::now();
    while store.db.urgent_waiting() && start.elapsed() < Duration::from_millis(50) {
        std::thread::sleep(Duration::from_micros(200));
    }
}
