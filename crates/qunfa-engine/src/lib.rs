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
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            node: format!("node-{}", std::process::id()),
            jobs_per_step: 16,
            poll_interval: Duration::from_millis(250),
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
                let drained = tokio::task::spawn_blocking(move || e2.drain(&store2, &cache2, &config2)).await;
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

    /// Runs steps until the queue is empty or a stop is requested. Returns
    /// `false` after an error.
    fn drain(&self, store: &Store, cache: &DispatchCache, config: &EngineConfig) -> bool {
        while !self.stop.load(Ordering::Acquire) {
            match store.run_inbox_step(&config.node, cache, config.jobs_per_step, now_millis()) {
                Ok(report) => {
                    self.metrics.steps.fetch_add(1, Ordering::Relaxed);
                    self.metrics.jobs_done.fetch_add(report.jobs, Ordering::Relaxed);
                    self.metrics.deliveries.fetch_add(report.delivered, Ordering::Relaxed);
                    self.metrics.broadcasts_completed.fetch_add(report.completed_broadcasts, Ordering::Relaxed);
                    if report.jobs > 0 {
                        tracing::debug!(jobs = report.jobs, delivered = report.delivered, "delivery step");
                    }
                    if report.jobs == 0 {
                        return true;
                    }
                }
                Err(error) => {
                    self.metrics.step_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "delivery step failed; its jobs stay queued");
                    return false;
                }
            }
        }
        true
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
