//! `qunfa report BROADCAST_ID`: a broadcast's measurement report
//! (`GET /v1/broadcasts/{id}/report`, docs/measurement.md) as a table, or as
//! CSV with `--csv`.

use std::{fmt::Write as _, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use crate::client::Client;

#[derive(Args)]
pub struct ReportArgs {
    pub broadcast_id: String,
    /// Only the recipients in this saved segment.
    #[arg(long, conflicts_with = "expr")]
    pub segment: Option<String>,
    /// Only the recipients an audience expression selects.
    #[arg(long)]
    pub expr: Option<String>,
    /// Print (or write, with --out) the report as CSV.
    #[arg(long)]
    pub csv: bool,
    /// Write the CSV to this file instead of printing it.
    #[arg(long, requires = "csv")]
    pub out: Option<PathBuf>,
}

fn query(args: &ReportArgs) -> String {
    let mut q = Vec::new();
    if let Some(s) = &args.segment {
        q.push(format!("segment={}", encode(s)));
    }
    if let Some(e) = &args.expr {
        q.push(format!("expr={}", encode(e)));
    }
    if args.csv {
        q.push("format=csv".into());
    }
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

/// Percent-encodes a query value (everything but unreserved ASCII).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn run(client: &Client, args: ReportArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/v1/broadcasts/{}/report{}", args.broadcast_id, query(&args));
    if args.csv {
        let bytes = client.download(&path).await?;
        match &args.out {
            Some(out) => {
                std::fs::write(out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
                println!("wrote {}", out.display());
            }
            None => print!("{}", String::from_utf8_lossy(&bytes)),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let r = client.get(&path).await?;
    print!("{}", render(&r));
    Ok(ExitCode::SUCCESS)
}

fn pct(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".into(), |f| format!("{:.1}%", f * 100.0))
}

/// The report as text: counts and rates per channel, reading time, heatmap peaks, sources.
pub fn render(r: &Value) -> String {
    let mut out = String::new();
    let _ = write!(out, "broadcast {}", r["broadcast_id"].as_str().unwrap_or("?"));
    if let Some(seg) = r["segment"].as_str() {
        let _ = write!(out, " — segment {seg}");
    }
    let _ = writeln!(out, ": {} recipients", r["recipients"]);
    let _ = writeln!(
        out,
        "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "channel", "delivered", "opened", "replied", "forwarded", "clicked", "converted", "failed"
    );
    let rows = std::iter::once(&r["totals"]).chain(r["channels"].as_array().into_iter().flatten());
    for f in rows {
        let rt = &f["rates"];
        let _ = writeln!(
            out,
            "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            f["channel"].as_str().unwrap_or("?"),
            f["delivered"].to_string(),
            f["opened"].to_string(),
            f["replied"].to_string(),
            f["forwarded"].to_string(),
            f["clicked"].to_string(),
            f["converted"].to_string(),
            f["failed"].to_string()
        );
        let _ = writeln!(
            out,
            "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "",
            pct(&rt["delivery"]),
            pct(&rt["open"]),
            pct(&rt["reply"]),
            pct(&rt["forward"]),
            pct(&rt["click"]),
            pct(&rt["conversion"])
        );
    }
    let _ =
        writeln!(out, "clicks {} · conversions {} (value {})", r["clicks"], r["conversions"], r["conversion_value"]);
    let rd = &r["reading"];
    match rd["average_ms"].as_u64() {
        Some(avg) => {
            let _ = writeln!(
                out,
                "reading time: {:.1} s on average over {} recipients{}",
                avg as f64 / 1000.0,
                rd["measured_recipients"],
                if rd["short_read"] == true {
                    format!(" — under {} s: try a better title or layout", rd["short_read_seconds"])
                } else {
                    String::new()
                }
            );
        }
        None => {
            let _ = writeln!(out, "reading time: not measured yet");
        }
    }
    for b in rd["histogram"].as_array().into_iter().flatten() {
        let to = b["to_ms"].as_i64().map_or_else(|| "…".into(), |t| format!("{:.0} s", t as f64 / 1000.0));
        let _ = writeln!(
            out,
            "  {:>5.0} s – {:<6} {}",
            b["from_ms"].as_i64().unwrap_or(0) as f64 / 1000.0,
            to,
            b["recipients"]
        );
    }
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    for (name, key) in [("opens", "opens"), ("clicks", "clicks")] {
        let mut cells: Vec<(u64, usize, usize)> = Vec::new();
        for (d, row) in r["heatmaps"][key].as_array().into_iter().flatten().enumerate() {
            for (h, n) in row.as_array().into_iter().flatten().enumerate() {
                if let Some(n) = n.as_u64().filter(|n| *n > 0) {
                    cells.push((n, d, h));
                }
            }
        }
        cells.sort_unstable_by(|a, b| b.cmp(a));
        if !cells.is_empty() {
            let top: Vec<String> =
                cells.iter().take(3).map(|(n, d, h)| format!("{} {h:02}:00 ({n})", DAYS[*d])).collect();
            let _ = writeln!(
                out,
                "busiest hours for {name} ({}): {}",
                r["heatmaps"]["time_zone"].as_str().unwrap_or("?"),
                top.join(", ")
            );
        }
    }
    for s in r["sources"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "link {} [{}{}]: {} clicks ({} recipients, {} filtered), {} conversions",
            s["short"].as_str().unwrap_or("?"),
            s["channel"].as_str().unwrap_or("?"),
            s["campaign"].as_str().map(|c| format!(" / {c}")).unwrap_or_default(),
            s["clicks"],
            s["unique_clicks"],
            s["filtered"],
            s["conversions"]
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_rates_reading_and_peaks() {
        let r = serde_json::json!({
            "broadcast_id": "7", "segment": null, "recipients": 10,
            "totals": {"channel": "all", "delivered": 10, "opened": 5, "replied": 1, "forwarded": 1, "clicked": 2,
                       "converted": 1, "failed": 0,
                       "rates": {"delivery": 1.0, "open": 0.5, "reply": 0.1, "forward": 0.1, "click": 0.2, "conversion": 0.1}},
            "channels": [],
            "clicks": 3, "conversions": 1, "conversion_value": 9900,
            "reading": {"measured_recipients": 2, "average_ms": 4000, "short_read": true, "short_read_seconds": 8,
                        "histogram": [{"from_ms": 0, "to_ms": 2000, "recipients": 1}, {"from_ms": 300000, "to_ms": null, "recipients": 1}]},
            "heatmaps": {"time_zone": "Asia/Shanghai", "opens": [[0, 2], [], [], [], [], [], [0, 0, 0, 4]], "clicks": []},
            "sources": [{"short": "Ab3", "channel": "poster", "campaign": "双十二", "clicks": 3, "unique_clicks": 2, "filtered": 1, "conversions": 1}]
        });
        let text = render(&r);
        assert!(text.starts_with("broadcast 7: 10 recipients\n"), "{text}");
        assert!(text.contains("50.0%") && text.contains("20.0%"), "{text}");
        assert!(
            text.contains("all               10         5         1         1         2         1         0\n"),
            "{text}"
        );
        assert!(text.contains("4.0 s on average over 2 recipients — under 8 s"), "{text}");
        assert!(text.contains("busiest hours for opens (Asia/Shanghai): Sun 03:00 (4), Mon 01:00 (2)"), "{text}");
        assert!(
            text.contains("link Ab3 [poster / 双十二]: 3 clicks (2 recipients, 1 filtered), 1 conversions"),
            "{text}"
        );
        assert_eq!(encode("i < 3"), "i%20%3C%203");
    }
}
