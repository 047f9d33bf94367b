//! `qunfa bench report`: the measurement report of one N-recipient broadcast
//! (issue 9: report queries ≤200 ms on a 1M-recipient broadcast), against the
//! plain aggregate over its delivery records, measured in the same run.
//!
//! Setup (not timed): a fresh database, an enterprise workspace, N contacts,
//! one inbox broadcast delivered by the engine's `drain` loop (as `bench
//! evidence` does); then engagement written in bulk — 30% opened (spread
//! over a week of hours, with reading times up to 2 minutes), 2% replied,
//! 2.5% forwarded, 5% clicked (a click row each on one tracked link), 1%
//! converted (a conversion row each) — and the counters set from those
//! records by `Store::measure_rebuild` (what the event routes keep up one
//! event at a time). Then, `runs` times:
//!
//! - **report**: `Store::measure_report`, what `GET /v1/broadcasts/{id}/report`
//!   reads (counts and rates per channel, reading histogram, heatmap hours, links);
//! - **baseline**: the plain `COUNT`/`SUM … GROUP BY channel` over the
//!   broadcast's delivery records that a report without counters needs at
//!   the least (it has neither the histogram nor the heatmaps);
//! - **segment**: `Store::measure_report_of` for half of the audience: the
//!   broadcast's engagement sets intersected with the segment; against
//!   `Store::measure_report_of_scan`, the same report from a scan of the
//!   records (the two must be equal).
//!
//! Each round checks that the report's figures equal the baseline's.

use std::time::Instant;

use qunfa_store::{
    measure::{NewLink, READ_HISTOGRAM_MS},
    now_millis, params, Store, Value,
};

use crate::bench::percentile;

struct Round {
    report: f64,
    baseline: f64,
    segment: f64,
    segment_scan: f64,
}

pub fn report(database_url: Option<&str>, n: usize, runs: usize) -> anyhow::Result<()> {
    println!("bench report: the measurement report of one {n}-recipient inbox broadcast, {runs} runs");
    let bench = crate::bench::open(database_url)?;
    let store = &bench.store;
    let (ws, id) = crate::bench_evidence::setup(store, n)?;
    let t = Instant::now();
    engage(store, ws, id)?;
    println!("  engagement written and counters rebuilt in {:.1} s", t.elapsed().as_secs_f64());

    let half = qunfa_audience::Bitmap::from_range(0..(n as u32 / 2));
    let mut rounds = Vec::with_capacity(runs);
    for run in 1..=runs {
        let r = round(store, ws, id, &half)?;
        println!(
            "  run {run}: report {:.2} ms; baseline GROUP BY {:.1} ms; segment (half the audience) {:.1} ms; its scan of the records {:.1} ms",
            r.report * 1e3,
            r.baseline * 1e3,
            r.segment * 1e3,
            r.segment_scan * 1e3
        );
        rounds.push(r);
    }
    let med = |f: fn(&Round) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    let (report, baseline, segment) = (med(|r| r.report), med(|r| r.baseline), med(|r| r.segment));
    let segment_scan = med(|r| r.segment_scan);
    println!(
        "  median of {runs}: report {:.2} ms (target ≤200 ms); baseline {:.1} ms; baseline/report = {:.0}x",
        report * 1e3,
        baseline * 1e3,
        baseline / report,
    );
    println!(
        "  segment report {:.1} ms (target ≤200 ms); the same from the records {:.1} ms; scan/sets = {:.1}x",
        segment * 1e3,
        segment_scan * 1e3,
        segment_scan / segment
    );
    Ok(())
}

/// Writes engagement in bulk and rebuilds the counters from it.
fn engage(store: &Store, ws: i64, id: i64) -> anyhow::Result<()> {
    let base = now_millis() - 7 * 24 * 3_600_000;
    let link = store.create_link(
        ws,
        &NewLink {
            url: "https://shop.example.com/".into(),
            broadcast_id: Some(id),
            channel: "email".into(),
            campaign: None,
        },
        "bench",
        now_millis(),
    )?;
    store.db.write(|c| {
        c.execute(
            "UPDATE deliveries SET read_at = ? + (contact_idx % 168) * 3600000, read_ms = (contact_idx * 7919) % 120000, state = 'read'
             WHERE broadcast_id = ? AND contact_idx % 10 < 3",
            params![base, id],
        )?;
        c.execute(
            "UPDATE deliveries SET replied_at = ? WHERE broadcast_id = ? AND contact_idx % 50 = 0",
            params![base + 3_600_000, id],
        )?;
        c.execute(
            "UPDATE deliveries SET forwarded_at = ? WHERE broadcast_id = ? AND contact_idx % 40 = 1",
            params![base + 3_600_000, id],
        )?;
        c.execute(
            "UPDATE deliveries SET clicked_at = ? + (contact_idx % 168) * 3600000 WHERE broadcast_id = ? AND contact_idx % 20 = 2",
            params![base, id],
        )?;
        c.execute(
            "UPDATE deliveries SET converted_at = ? WHERE broadcast_id = ? AND contact_idx % 100 = 2",
            params![base + 7_200_000, id],
        )?;
        let clicked: Vec<i64> = c
            .query("SELECT contact_idx FROM deliveries WHERE broadcast_id = ? AND clicked_at IS NOT NULL", params![id])?
            .iter()
            .map(|r| r.i64(0))
            .collect();
        let rows: Vec<Vec<Value>> = clicked
            .iter()
            .map(|&idx| {
                vec![
                    Value::Int(link.id),
                    Value::Int(ws),
                    Value::Int(id),
                    Value::Int(idx),
                    Value::Text("inbox".into()),
                    Value::Int(base + (idx % 168) * 3_600_000),
                ]
            })
            .collect();
        c.bulk_insert_borrowed("clicks", &["link_id", "workspace_id", "broadcast_id", "contact_idx", "channel", "created_at"], "", &rows)?;
        let conversions: Vec<Vec<Value>> = clicked
            .iter()
            .filter(|&&idx| idx % 100 == 2)
            .map(|&idx| {
                vec![
                    Value::Int(ws),
                    Value::Text(format!("bench-{idx}")),
                    Value::Text("purchase".into()),
                    Value::Int(9900),
                    Value::Int(id),
                    Value::Int(link.id),
                    Value::Int(idx),
                    Value::Text("inbox".into()),
                    Value::Text(String::new()),
                    Value::Int(base + 7_200_000),
                ]
            })
            .collect();
        c.bulk_insert_borrowed(
            "conversions",
            &["workspace_id", "event_id", "name", "value", "broadcast_id", "link_id", "contact_idx", "channel", "request_hash", "created_at"],
            "",
            &conversions,
        )?;
        Ok(())
    })?;
    store.measure_rebuild(id)?;
    Ok(())
}

/// (records, delivered, opened, replied, forwarded, clicked, converted, timed, read ms) by the plain aggregate.
type Plain = [i64; 9];

fn round(store: &Store, ws: i64, id: i64, half: &qunfa_audience::Bitmap) -> anyhow::Result<Round> {
    let t = Instant::now();
    let r = store.measure_report(ws, id)?;
    let report = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        r.all.read_histogram.len() == READ_HISTOGRAM_MS.len() + 1 && !r.opens_by_hour.is_empty(),
        "empty report"
    );

    let t = Instant::now();
    let plain: Plain = store.db.read(|c| {
        let row = c.query_one(
            "SELECT COUNT(*), CAST(SUM(CASE WHEN state IN ('delivered', 'read') THEN 1 ELSE 0 END) AS BIGINT), COUNT(read_at),
             COUNT(replied_at), COUNT(forwarded_at), COUNT(clicked_at), COUNT(converted_at), COUNT(read_ms),
             CAST(COALESCE(SUM(read_ms), 0) AS BIGINT)
             FROM deliveries WHERE broadcast_id = ? GROUP BY channel",
            params![id],
        )?;
        Ok(std::array::from_fn(|i| row.i64(i)))
    })?;
    let baseline = t.elapsed().as_secs_f64();
    let a = &r.all;
    let from_report = [
        a.records as i64,
        a.delivered as i64,
        a.opened as i64,
        a.replied as i64,
        a.forwarded as i64,
        a.clicked as i64,
        a.converted as i64,
        a.read_timed as i64,
        a.read_ms_sum,
    ];
    anyhow::ensure!(from_report == plain, "the report {from_report:?} differs from the records {plain:?}");

    let t = Instant::now();
    let s = store.measure_report_of(ws, id, half)?;
    let segment = t.elapsed().as_secs_f64();
    anyhow::ensure!(s.recipients == half.cardinality(), "segment of {} recipients", s.recipients);
    let t = Instant::now();
    let scanned = store.measure_report_of_scan(ws, id, half)?;
    let segment_scan = t.elapsed().as_secs_f64();
    anyhow::ensure!(s == scanned, "the segment report from the sets differs from the one from the records");
    Ok(Round { report, baseline, segment, segment_scan })
}
