//! The delivery engine: a worker that drains the durable queue.
//!
//! The queue lives in the database (`jobs`); this crate only decides when to
//! run a step. A step is one transaction (see `Store::run_inbox_step`), so
//! stopping between steps — or being killed inside one — loses nothing: a
//! rolled-back step leaves its jobs ready for the next worker.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use qunfa_store::{broadcasts::DispatchCache, now_millis, Store};
use tokio::sync::Notify;

/// Counters the server exports as metrics.
#[derive(Debug, Default)]
pub struct EngineMetrics {
    pub steps: AtomicU64,
    pub jobs_done: AtomicU64,
    pub deliveries: AtomicU64,
    pub broadcasts_completed: AtomicU64,
    pub step_errors: AtomicU64,
    pub dead_letters: AtomicU64,
}

/// Settings of the worker.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// A name for this node, stored as the lease owner of its jobs.
    pub node: String,
    /// Jobs (batches of ≤2,000) claimed per step, i.e. per transaction.
    pub jobs_per_step: usize,
    /// How often an idle worker looks for work other nodes queued.
    pub poll_interval: Duration,
    /// Failed attempts after which a job becomes a dead letter.
    pub max_job_attempts: i64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            node: format!("node-{}", std::process::id()),
            jobs_per_step: 16,
            poll_interval: Duration::from_millis(250),
            max_job_attempts: 5,
        }
    }
}

/// A running worker.
#[derive(Clone)]
pub struct Engine {
    wake: Arc<Notify>,
    stop: Arc<AtomicBool>,
    pub metrics: Arc<EngineMetrics>,
    done: Arc<Notify>,
    finished: Arc<AtomicBool>,
}

impl Engine {
    /// Starts the worker on the current tokio runtime.
    pub fn start(store: Store, config: EngineConfig) -> Self {
        let engine = Engine {
            wake: Arc::new(Notify::new()),
            stop: Arc::new(AtomicBool::new(false)),
            metrics: Arc::new(EngineMetrics::default()),
            done: Arc::new(Notify::new()),
            finished: Arc::new(AtomicBool::new(false)),
        };
        let e = engine.clone();
        tokio::spawn(async move {
            let cache = Arc::new(DispatchCache::default());
            while !e.stop.load(Ordering::Acquire) {
                let (store2, cache2, e2, config2) = (store.clone(), cache.clone(), e.clone(), config.clone());
                let drained = tokio::task::spawn_blocking(move || {
                    drain(&store2, &cache2, &config2, &e2.metrics, &e2.stop, &now_millis)
                })
                .await;
                let pause = match drained {
                    Ok(true) => config.poll_interval,
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
        engine
    }

    /// Tells the worker that new jobs are queued.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stops after the step in flight commits.
    pub async fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
        while !self.finished.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(Duration::from_millis(100), self.done.notified()).await;
        }
    }
}

/// Runs delivery steps until the queue is empty or `stop` is set; `clock`
/// gives the time (tests inject one). Returns `false` after an error, when the
/// caller should back off.
///
/// A step that fails is retried one job at a time, so one job that always
/// fails (a poison message) cannot hold back the others: when the
/// single-job step fails too, that job is deferred with backoff and, after
/// `max_job_attempts`, becomes a dead letter. A database that is down or
/// locked defers nothing: the worker just backs off.
pub fn drain(
    store: &Store,
    cache: &DispatchCache,
    config: &EngineConfig,
    metrics: &EngineMetrics,
    stop: &AtomicBool,
    clock: &dyn Fn() -> i64,
) -> bool {
    let mut jobs_per_step = config.jobs_per_step;
    while !stop.load(Ordering::Acquire) {
        match store.run_inbox_step(&config.node, cache, jobs_per_step, clock()) {
            Ok(report) => {
                metrics.steps.fetch_add(1, Ordering::Relaxed);
                metrics.jobs_done.fetch_add(report.jobs, Ordering::Relaxed);
                metrics.deliveries.fetch_add(report.delivered, Ordering::Relaxed);
                metrics.broadcasts_completed.fetch_add(report.completed_broadcasts, Ordering::Relaxed);
                if report.jobs > 0 {
                    tracing::debug!(jobs = report.jobs, delivered = report.delivered, "delivery step");
                }
                if report.jobs == 0 {
                    return true;
                }
                jobs_per_step = config.jobs_per_step;
            }
            Err(error) if error.is_transient() => {
                metrics.step_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "database unavailable; delivery paused, its jobs stay queued");
                return false;
            }
            Err(error) if jobs_per_step > 1 => {
                metrics.step_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "delivery step failed; retrying its jobs one at a time");
                jobs_per_step = 1;
            }
            Err(error) => {
                metrics.step_errors.fetch_add(1, Ordering::Relaxed);
                match store.defer_failed_job(&error.to_string(), config.max_job_attempts, clock()) {
                    Ok(Some((job, dead))) => {
                        if dead {
                            metrics.dead_letters.fetch_add(1, Ordering::Relaxed);
                        }
                        tracing::warn!(%error, job, dead, "delivery job failed");
                    }
                    Ok(None) => {}
                    Err(defer_error) => {
                        tracing::warn!(%error, %defer_error, "delivery job failed and could not be deferred");
                        return false;
                    }
                }
                jobs_per_step = config.jobs_per_step;
            }
        }
    }
    true
}
