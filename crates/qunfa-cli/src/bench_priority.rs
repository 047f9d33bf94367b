//! `qunfa bench priority`: latency of transactional and chat messages while a
//! large broadcast is being delivered, against the same messages on an idle
//! queue (the baseline, measured in the same run).
//!
//! The delivery engine runs as in `qunfa serve` (its own worker, woken on
//! dispatch). Each urgent message goes the way the API sends one: create the
//! draft and dispatch it under the urgent-writer mark, wake the engine. Its
//! latency is from the start of the create to the moment its delivery record
//! is committed (read back from the database, polled every 200 µs).

use crate::bench::percentile;
use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use qunfa_audience::AudienceSpec;
use qunfa_core::{
    broadcast::{BroadcastState, Priority},
    contact::Channel,
    import::{self, ImportFormat},
    workspace::{Name, WorkspaceKind},
    Policy,
};
use qunfa_store::{broadcasts::DispatchRules, now_millis, Store};

/// Sends one urgent message to contact `idx` as the API does and waits until
/// its delivery record is durable; returns the latency in milliseconds.
fn urgent_message(
    store: &Store,
    engine: &qunfa_engine::Engine,
    ws: i64,
    idx: u32,
    priority: Priority,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    let new = crate::bench::text_broadcast(
        "您的验证码是 246810",
        priority,
        format!(r#"{{"contact_ids":[{idx}]}}"#),
        Channel::Inbox,
    );
    let id = {
        let _urgent = store.db.urgent();
        let (b, _) = store.create_broadcast(ws, 1, &new, "bench", now_millis())?;
        b.id
    };
    let audience = store.resolve_audience(ws, &AudienceSpec::Contacts(vec![idx]))?;
    let rules = DispatchRules::draft();
    {
        let _urgent = store.db.urgent();
        store.dispatch(ws, id, &audience, rules, "bench", now_millis())?;
    }
    engine.wake();
    loop {
        if store.broadcast(ws, id)?.state == BroadcastState::Completed {
            return Ok(t.elapsed().as_secs_f64() * 1000.0);
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(60), "urgent message {id} was not delivered in 60 s");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn summary(label: &str, mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let (p50, p99, max) = (percentile(&v, 0.5), percentile(&v, 0.99), v.last().copied().unwrap_or(f64::NAN));
    println!("  {label}: {} messages, p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms", v.len());
    (p50, p99)
}

pub fn priority(database_url: Option<&str>, n: usize, runs: usize, baseline_messages: usize) -> anyhow::Result<()> {
    println!("bench priority: chat/transactional messages while a {n}-recipient inbox broadcast runs, {runs} runs");
    let bench = crate::bench::open(database_url)?;
    let store = bench.store.clone();
    let policy = Policy::builtin();
    let (w, _) =
        store.create_workspace(&Name::parse("bench")?, WorkspaceKind::Enterprise, None, "bench", now_millis())?;
    let t = Instant::now();
    let parsed = import::parse(ImportFormat::Ndjson, &crate::bench::ndjson_contacts(n));
    store.import_contacts(w.id, &policy.tiers.enterprise, &parsed.contacts, "bench", now_millis())?;
    store.with_audience(w.id, |_| ())?;
    println!("  ({:?}) {n} contacts imported and indexed in {:.1} s", store.backend(), t.elapsed().as_secs_f64());

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let engine =
        rt.block_on(async { qunfa_engine::Engine::start(store.clone(), qunfa_engine::EngineConfig::default()) });
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next_idx = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as u32
    };

    // Baseline: the same messages with nothing else queued.
    let mut idle = Vec::new();
    for i in 0..baseline_messages {
        let class = if i % 2 == 0 { Priority::Chat } else { Priority::Transactional };
        idle.push(urgent_message(&store, &engine, w.id, next_idx(), class)?);
    }
    let (_, idle_p99) = summary("idle queue (baseline)", idle);

    let mut under_load = Vec::new();
    for run in 1..=runs {
        let (b, _) = store.create_broadcast(
            w.id,
            1,
            &crate::bench::text_broadcast("双十一大促", Priority::Broadcast, r#"{"all":true}"#.into(), Channel::Inbox),
            "bench",
            now_millis(),
        )?;
        let t = Instant::now();
        let audience = store.resolve_audience(w.id, &AudienceSpec::All)?;
        let rules = DispatchRules::draft();
        store.dispatch(w.id, b.id, &audience, rules, "bench", now_millis())?;
        engine.wake();
        let mut samples = Vec::new();
        let done = AtomicBool::new(false);
        while !done.load(Ordering::Relaxed) {
            let class = if samples.len() % 2 == 0 { Priority::Chat } else { Priority::Transactional };
            samples.push(urgent_message(&store, &engine, w.id, next_idx(), class)?);
            if store.broadcast(w.id, b.id)?.state == BroadcastState::Completed {
                done.store(true, Ordering::Relaxed);
            }
        }
        let took = t.elapsed().as_secs_f64();
        let (records, dupes) = store.delivery_totals(b.id)?;
        anyhow::ensure!(records == n as u64 && dupes == 0, "broadcast: {records} records, {dupes} duplicated");
        println!(
            "  run {run}: broadcast of {n} delivered in {took:.2} s while {} urgent messages went through",
            samples.len()
        );
        under_load.extend(samples);
    }
    let (_, p99) = summary("during the broadcast", under_load);
    println!("  p99 during the broadcast / idle p99 = {:.2}x", p99 / idle_p99);
    rt.block_on(engine.shutdown());
    Ok(())
}
