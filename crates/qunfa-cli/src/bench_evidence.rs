//! `qunfa bench evidence`: the evidence bundle of one N-recipient broadcast
//! (issue 5: a complaint → evidence preserved within 2 hours), against the
//! raw read of what it has to read, measured in the same run.
//!
//! Setup (not timed): a fresh database, an enterprise workspace, N contacts
//! imported, one inbox broadcast to all of them dispatched as a draft and
//! delivered by the engine's own `drain` loop. Then, `runs` times:
//!
//! - **export**: `Store::export_evidence` (the bytes `GET
//!   /v1/broadcasts/{id}/evidence` returns) and `Store::record_evidence_export`
//!   (the audit entry the API appends after it), as the API handler does;
//! - **verify**: `verify_bundle` on those bytes (what `qunfa evidence verify`
//!   runs offline);
//! - **baseline**: the raw read the export cannot beat, in one read snapshot
//!   through the same database layer: one `SELECT` of all the broadcast's
//!   delivery rows (channel, contact_idx, state, attempts, error_code,
//!   queued/sent/delivered/read timestamps), kept as rows in a `Vec`, plus the
//!   frozen audience blob.

use std::time::Instant;

use qunfa_audience::AudienceSpec;
use qunfa_core::{
    broadcast::{BroadcastState, Priority},
    contact::Channel,
    import::{self, ImportFormat},
    workspace::{Name, WorkspaceKind},
    Policy,
};
use qunfa_store::{
    broadcasts::{DispatchCache, DispatchRules},
    evidence::{verify_bundle, AudienceCheck},
    now_millis, params, Row, Store,
};

use crate::bench::percentile;

/// One round's figures, in seconds (and the bundle's size in bytes).
struct Round {
    export: f64,
    record: f64,
    verify: f64,
    baseline: f64,
    bytes: usize,
}

pub fn evidence(database_url: Option<&str>, n: usize, runs: usize) -> anyhow::Result<()> {
    println!("bench evidence: the evidence bundle of one {n}-recipient inbox broadcast, {runs} runs");
    let bench = crate::bench::open(database_url)?;
    let store = &bench.store;
    let (ws, id) = setup(store, n)?;

    let mut rounds = Vec::with_capacity(runs);
    for run in 1..=runs {
        let r = round(store, ws, id, n)?;
        println!(
            "  run {run}: export {:.3} s ({:.1} MB; + audit entry {:.1} ms); verify {:.3} s; baseline raw read {:.3} s",
            r.export,
            r.bytes as f64 / 1e6,
            r.record * 1e3,
            r.verify,
            r.baseline
        );
        rounds.push(r);
    }
    let med = |f: fn(&Round) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    let (export, record, verify, baseline) =
        (med(|r| r.export), med(|r| r.record), med(|r| r.verify), med(|r| r.baseline));
    let mb = rounds.last().map_or(0, |r| r.bytes) as f64 / 1e6;
    println!(
        "  median of {runs}: export {export:.3} s + audit entry {:.1} ms = {:.0} MB/s, bundle {mb:.1} MB ({:.0} bytes/recipient)",
        record * 1e3,
        mb / export,
        mb * 1e6 / n as f64
    );
    println!("  median of {runs}: verify {verify:.3} s = {:.0} MB/s", mb / verify);
    println!(
        "  median of {runs}: baseline (delivery rows + frozen audience) {baseline:.3} s; export/baseline = {:.2}x",
        export / baseline
    );
    Ok(())
}

/// Creates the workspace, imports `n` contacts, dispatches one inbox
/// broadcast to all of them and delivers it; returns (workspace, broadcast).
pub(crate) fn setup(store: &Store, n: usize) -> anyhow::Result<(i64, i64)> {
    let policy = Policy::builtin();
    let (w, _) =
        store.create_workspace(&Name::parse("bench")?, WorkspaceKind::Enterprise, None, "bench", now_millis())?;
    let t = Instant::now();
    let parsed = import::parse(ImportFormat::Ndjson, &crate::bench::ndjson_contacts(n));
    store.import_contacts(w.id, &policy.tiers.enterprise, &parsed.contacts, "bench", now_millis())?;
    drop(parsed);
    store.with_audience(w.id, |_| ())?;
    let imported = t.elapsed().as_secs_f64();

    let new = crate::bench::text_broadcast(
        "双十一大促：全场五折，详情见门店。",
        Priority::Broadcast,
        r#"{"all":true}"#.into(),
        Channel::Inbox,
    );
    let t = Instant::now();
    let (b, _) = store.create_broadcast(w.id, 1, &new, "bench", now_millis())?;
    let audience = store.resolve_audience(w.id, &AudienceSpec::All)?;
    store.dispatch(w.id, b.id, &audience, DispatchRules::draft(), "bench", now_millis())?;
    let cache = DispatchCache::default();
    let config = qunfa_engine::EngineConfig::default();
    let metrics = qunfa_engine::EngineMetrics::default();
    let stop = std::sync::atomic::AtomicBool::new(false);
    anyhow::ensure!(
        qunfa_engine::drain(store, &cache, &config, &metrics, &stop, &now_millis),
        "a delivery step failed"
    );
    let delivered = t.elapsed().as_secs_f64();
    let rec = store.broadcast(w.id, b.id)?;
    anyhow::ensure!(
        rec.state == BroadcastState::Completed && rec.n_delivered == n as u64,
        "broadcast did not complete: {:?}, {} delivered",
        rec.state,
        rec.n_delivered
    );
    let (records, dupes) = store.delivery_totals(b.id)?;
    anyhow::ensure!(records == n as u64 && dupes == 0, "{records} records, {dupes} duplicated");
    println!(
        "  ({:?}) setup: {n} contacts imported and indexed in {imported:.1} s; broadcast {} dispatched and delivered in {delivered:.1} s ({records} records)",
        store.backend(),
        b.id
    );
    Ok((w.id, b.id))
}

fn round(store: &Store, ws: i64, id: i64, n: usize) -> anyhow::Result<Round> {
    // (a) The export as the API runs it: the bundle's bytes, then its audit entry.
    let t = Instant::now();
    let mut bundle = Vec::new();
    let summary = store.export_evidence(ws, id, now_millis(), &mut bundle)?;
    let export = t.elapsed().as_secs_f64();
    let t = Instant::now();
    store.record_evidence_export(ws, id, &summary, "bench", now_millis())?;
    let record = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        summary.n_recipients == n as u64 && summary.n_deliveries == n as u64 && summary.bytes == bundle.len(),
        "export: {} recipients, {} deliveries, {} of {} bytes",
        summary.n_recipients,
        summary.n_deliveries,
        summary.bytes,
        bundle.len()
    );

    // (b) Offline verification of those bytes.
    let t = Instant::now();
    let verified = verify_bundle(&bundle);
    let verify = t.elapsed().as_secs_f64();
    let v = verified.map_err(|p| anyhow::anyhow!("the bundle does not verify: {p}"))?;
    anyhow::ensure!(
        v.n_deliveries == n
            && matches!(v.audience, AudienceCheck::Matches { count, .. } if count == n as u64)
            && v.bundle_sha256 == summary.bundle_sha256,
        "verify: {} deliveries, audience {:?}",
        v.n_deliveries,
        v.audience
    );
    let bytes = bundle.len();
    drop(bundle);

    // (c) Baseline: the delivery rows into a Vec and the frozen audience blob,
    // in one read snapshot, through the same database layer as the export.
    let t = Instant::now();
    let (audience, rows) = store.db.read(|c| {
        let audience = c
            .query_one("SELECT frozen_audience FROM broadcasts WHERE id = ? AND workspace_id = ?", params![id, ws])?
            .blob(0)
            .to_vec();
        let mut rows: Vec<Row> = Vec::with_capacity(n);
        c.for_each_row(
            "SELECT channel, contact_idx, state, attempts, error_code, queued_at, sent_at, delivered_at, read_at
             FROM deliveries WHERE broadcast_id = ? ORDER BY channel, contact_idx",
            params![id],
            &mut |r| {
                rows.push(r);
                Ok(())
            },
        )?;
        Ok((audience, rows))
    })?;
    let baseline = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        rows.len() == n && !audience.is_empty(),
        "baseline: {} rows, {} audience bytes",
        rows.len(),
        audience.len()
    );
    drop(rows);
    Ok(Round { export, record, verify, baseline, bytes })
}
