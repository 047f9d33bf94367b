//! `qunfa bench …`: throughput of the bulk paths, each measured against the
//! raw bulk insert of the same rows in the same run (the floor).

use std::time::Instant;

use anyhow::Context;
use qunfa_audience::AudienceSpec;
use qunfa_core::{
    broadcast::{BroadcastState, Priority},
    contact::Channel,
    import::{self, ImportFormat},
    message::RawContent,
    workspace::{Name, WorkspaceKind},
    Policy,
};
use qunfa_store::{
    broadcasts::{DispatchCache, DispatchRules, NewBroadcast},
    json::content_to_json,
    now_millis, params, DbLocation, Store, Value,
};

/// A database for one benchmark run: a fresh SQLite file in a temporary
/// directory, or a fresh database on the PostgreSQL server given.
pub struct BenchDb {
    pub store: Store,
    _tmp: Option<tempfile::TempDir>,
}

pub fn open(database_url: Option<&str>) -> anyhow::Result<BenchDb> {
    match database_url {
        Some(url) if url.starts_with("postgres") => {
            let name = qunfa_store::new_secret("qunfa_bench_");
            let mut client = postgres::Client::connect(url, postgres::NoTls)?;
            client.batch_execute(&format!("CREATE DATABASE {name}"))?;
            let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
            Ok(BenchDb { store: Store::open(DbLocation::Postgres(format!("{base}/{name}")), 4)?, _tmp: None })
        }
        _ => {
            let tmp = tempfile::tempdir()?;
            let store = Store::open(DbLocation::Sqlite(tmp.path().join("bench.db")), 4)?;
            Ok(BenchDb { store, _tmp: Some(tmp) })
        }
    }
}

pub fn ndjson_contacts(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 260);
    let cities = ["上海", "杭州", "广州", "深圳", "北京", "成都"];
    for i in 0..n {
        let city = cities[i % cities.len()];
        let line = serde_json::json!({
            "external_id": format!("c{i}"),
            "name": format!("用户{i}"),
            "attributes": {"city": city, "spend": (i * 37) % 20_000, "age": 18 + i % 50, "vip": i % 10 == 0, "last_active": "2026-10-01"},
            "channels": {"email": format!("u{i}@example.com")},
            "tags": [format!("等级/L{}", i % 3), format!("兴趣/T{}", i % 17)],
        });
        serde_json::to_writer(&mut out, &line).expect("writing to a Vec");
        out.push(b'\n');
    }
    out
}

/// The same contacts as [`ndjson_contacts`], as CSV (tags separated by `|`).
fn csv_contacts(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 120);
    out.extend_from_slice(b"external_id,name,email,tags,city,spend,age,vip,last_active\n");
    let cities = ["上海", "杭州", "广州", "深圳", "北京", "成都"];
    for i in 0..n {
        let line = format!(
            "c{i},用户{i},u{i}@example.com,等级/L{}|兴趣/T{},{},{},{},{},2026-10-01\n",
            i % 3,
            i % 17,
            cities[i % cities.len()],
            (i * 37) % 20_000,
            18 + i % 50,
            i % 10 == 0
        );
        out.extend_from_slice(line.as_bytes());
    }
    out
}

fn rate(n: usize, secs: f64) -> String {
    format!("{:.0}/s", n as f64 / secs)
}

/// The value at fraction `p` of sorted samples (NaN when there are none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `bench import`: parse + validate + store N contacts with 2 tags each, in
/// `runs` runs, each with fresh databases and its own baseline.
pub fn import(database_url: Option<&str>, n: usize, runs: usize, format: ImportFormat) -> anyhow::Result<()> {
    let data = match format {
        ImportFormat::Ndjson => ndjson_contacts(n),
        ImportFormat::Csv => csv_contacts(n),
    };
    println!(
        "bench import: {n} contacts with 2 tags and 5 attributes each ({:.1} MB of {format:?}), {runs} runs",
        data.len() as f64 / 1e6
    );
    let policy = Policy::builtin();
    let (mut totals, mut baselines) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        // Baseline: the raw bulk insert of the same rows, no parsing or rules.
        let base = open(database_url)?;
        let (w, _) = base.store.create_workspace(
            &Name::parse("baseline")?,
            WorkspaceKind::Enterprise,
            None,
            "bench",
            now_millis(),
        )?;
        let parsed = import::parse(format, &data);
        anyhow::ensure!(parsed.rejected.is_empty(), "generated data was rejected");
        let rows: Vec<Vec<Value>> = parsed
            .contacts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                vec![
                    Value::Int(w.id),
                    Value::Int(i as i64),
                    Value::Text(c.external_id.as_str().into()),
                    Value::Text(c.name.clone()),
                    Value::Text(qunfa_store::json::attributes_to_json(&c.attributes)),
                    Value::Text(c.channels.email.as_ref().map(|e| e.as_str().to_owned()).unwrap_or_default()),
                    Value::Text("{}".into()),
                    Value::Int(0),
                    Value::Int(0),
                ]
            })
            .collect();
        drop(parsed);
        // Memberships as stored: one roaring bitmap per tag and 65,536-id chunk.
        let mut sets: std::collections::BTreeMap<(i64, u32), qunfa_audience::Bitmap> = Default::default();
        for i in 0..n as u32 {
            for tag in [i64::from(i % 3) + 1, i64::from(i % 17) + 10] {
                sets.entry((tag, i >> 16)).or_default().add(i);
            }
        }
        let tag_rows: Vec<Vec<Value>> = sets
            .iter()
            .map(|((tag, chunk), bits)| {
                let blob = qunfa_audience::encode(bits);
                vec![
                    Value::Int(w.id),
                    Value::Int(1),
                    Value::Int(*tag),
                    Value::Int(i64::from(*chunk)),
                    Value::Int(bits.cardinality() as i64),
                    Value::Blob(blob),
                    Value::Int(1),
                ]
            })
            .collect();
        let t = Instant::now();
        base.store.db.write(|c| {
            c.bulk_insert(
                "contacts",
                &[
                    "workspace_id",
                    "idx",
                    "external_id",
                    "name",
                    "attributes",
                    "email",
                    "consent",
                    "created_at",
                    "updated_at",
                ],
                "",
                &mut rows.into_iter(),
            )?;
            c.bulk_insert(
                "member_sets",
                &["workspace_id", "kind", "set_id", "chunk", "cardinality", "bits", "version"],
                "",
                &mut tag_rows.into_iter(),
            )
        })?;
        let baseline = t.elapsed().as_secs_f64();
        drop(base);

        // The parsing side alone (on the import's threads, nothing stored):
        // where the import stands when the writer is not the bottleneck.
        let t = Instant::now();
        let parse_rejected = import::parse_with(
            format,
            &data,
            qunfa_store::contacts::import_threads(),
            8192,
            &qunfa_store::contacts::PreparedChunk::new,
            &mut |chunk| {
                drop(chunk);
                true
            },
        );
        let parse_only = t.elapsed().as_secs_f64();
        anyhow::ensure!(parse_rejected.is_empty(), "generated data was rejected");

        let bench = open(database_url)?;
        let (w, _) = bench.store.create_workspace(
            &Name::parse("bench")?,
            WorkspaceKind::Enterprise,
            None,
            "bench",
            now_millis(),
        )?;
        // The real path: the file's bytes in, parsed and validated on one
        // thread while the single writer stores them, one transaction.
        let t = Instant::now();
        let report =
            bench.store.import_file(w.id, &policy.tiers.enterprise, format, &data, false, "bench", now_millis())?;
        let total = t.elapsed().as_secs_f64();
        if let Some(r) = report.rejected.first() {
            anyhow::bail!(
                "{} lines rejected, first: line {} {} {}",
                report.rejected.len(),
                r.line,
                r.code.as_str(),
                r.message
            );
        }
        let imported = report.outcome.map_or(0, |o| o.imported);
        anyhow::ensure!(imported == n as u64, "imported {imported} of {n}");
        println!(
            "  run {run} ({:?}): bytes → parsed, validated, stored and committed {total:.3} s = {}; baseline raw insert {baseline:.3} s = {}; parsing alone {parse_only:.3} s",
            bench.store.backend(),
            rate(n, total),
            rate(n, baseline)
        );
        totals.push(total);
        baselines.push(baseline);
    }
    let (total, baseline) = (median(totals), median(baselines));
    println!(
        "  median: import {total:.3} s = {} contacts/s; baseline {baseline:.3} s = {} rows/s; import/baseline = {:.2}x",
        rate(n, total),
        rate(n, baseline),
        total / baseline
    );
    Ok(())
}

/// `bench fanout`: an N-recipient inbox broadcast from accepted (dispatch) to
/// every delivery record committed.
pub fn fanout(database_url: Option<&str>, n: usize, runs: usize) -> anyhow::Result<()> {
    println!("bench fanout: {n}-recipient inbox broadcast, accepted → every delivery record durable, {runs} runs");
    let (mut totals, mut baselines) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let (total, baseline) = fanout_once(database_url, n)?;
        println!("  run {run}: fanout {total:.3} s = {}; baseline raw insert {baseline:.3} s", rate(n, total));
        totals.push(total);
        baselines.push(baseline);
    }
    let (total, baseline) = (median(totals), median(baselines));
    println!("  median: accepted → all {n} durable {total:.3} s = {} deliveries/s; baseline {baseline:.3} s; fanout/baseline = {:.2}x", rate(n, total), total / baseline);
    Ok(())
}

fn fanout_once(database_url: Option<&str>, n: usize) -> anyhow::Result<(f64, f64)> {
    let policy = Policy::builtin();
    let bench = open(database_url)?;
    let store = &bench.store;
    let (w, _) =
        store.create_workspace(&Name::parse("bench")?, WorkspaceKind::Enterprise, None, "bench", now_millis())?;
    let parsed = import::parse(ImportFormat::Ndjson, &ndjson_contacts(n));
    store.import_contacts(w.id, &policy.tiers.enterprise, &parsed.contacts, "bench", now_millis())?;

    // Baseline: the raw bulk insert of the same N delivery rows, one prepared
    // statement in one transaction, into the same table and indexes.
    let t = Instant::now();
    store.db.write(|c| {
        c.bulk_insert(
            "deliveries",
            &[
                "broadcast_id",
                "channel",
                "contact_idx",
                "workspace_id",
                "state",
                "attempts",
                "queued_at",
                "sent_at",
                "delivered_at",
            ],
            "",
            &mut (0..n).map(|i| {
                vec![
                    Value::Int(-1),
                    Value::Text("inbox".into()),
                    Value::Int(i as i64),
                    Value::Int(w.id),
                    Value::Text("delivered".into()),
                    Value::Int(1),
                    Value::Int(1),
                    Value::Int(1),
                    Value::Int(1),
                ]
            }),
        )
    })?;
    let baseline = t.elapsed().as_secs_f64();
    store.db.write(|c| c.execute("DELETE FROM deliveries WHERE broadcast_id = -1", params![]))?;

    let new = text_broadcast(
        "双十一大促：全场五折，详情见门店。",
        Priority::Broadcast,
        r#"{"all":true}"#.into(),
        Channel::Inbox,
    );
    let (b, _) = store.create_broadcast(w.id, 1, &new, "bench", now_millis())?;
    let cache = DispatchCache::default();
    // The worker as a server runs it: the same steps, limits and policy.
    let config = qunfa_engine::EngineConfig::default();
    let metrics = qunfa_engine::EngineMetrics::default();

    // The audience index exists already, as in a running server (which
    // builds it at start and keeps it fresh).
    store.with_audience(w.id, |_| ())?;
    let t = Instant::now();
    let audience = store.resolve_audience(w.id, &AudienceSpec::All)?;
    let rules = DispatchRules::draft();
    store.dispatch(w.id, b.id, &audience, rules, "bench", now_millis())?;
    let accepted = t.elapsed().as_secs_f64();
    let stop = std::sync::atomic::AtomicBool::new(false);
    anyhow::ensure!(
        qunfa_engine::drain(store, &cache, &config, &metrics, &stop, &now_millis),
        "a delivery step failed"
    );
    let total = t.elapsed().as_secs_f64();
    let rec = store.broadcast(w.id, b.id)?;
    anyhow::ensure!(
        rec.state == BroadcastState::Completed && rec.n_delivered == n as u64,
        "broadcast did not complete: {:?}",
        rec.state
    );
    let (records, dupes) = store.delivery_totals(b.id)?;
    anyhow::ensure!(records == n as u64 && dupes == 0, "{records} records, {dupes} duplicated");
    println!(
        "  ({:?}) freeze audience + queue {accepted:.3} s; {} steps; check: {records} delivery records, {dupes} duplicates, state {}",
        store.backend(),
        metrics.steps.load(std::sync::atomic::Ordering::Relaxed),
        rec.state.as_str()
    );
    Ok((total, baseline))
}

/// Makes sure a benchmark database URL is usable before a long run.
pub fn check_url(url: Option<&str>) -> anyhow::Result<()> {
    if let Some(u) = url {
        if u.starts_with("postgres") {
            postgres::Client::connect(u, postgres::NoTls).context("cannot connect to the PostgreSQL server")?;
        }
    }
    Ok(())
}

/// A text broadcast as benchmarks send it.
pub(crate) fn text_broadcast(text: &str, priority: Priority, audience_json: String, channel: Channel) -> NewBroadcast {
    let raw = RawContent { content_type: "text".into(), text: Some(text.into()), ..Default::default() };
    NewBroadcast {
        content_json: content_to_json(&raw),
        audience_json,
        channels: vec![channel],
        priority,
        client_msg_id: None,
        request_hash: text.into(),
        ttl_ms: None,
        fallback: Vec::new(),
    }
}
