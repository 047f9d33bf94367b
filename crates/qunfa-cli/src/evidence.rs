//! `qunfa evidence BROADCAST_ID [--out FILE]` downloads a broadcast's evidence
//! bundle and checks it at once; `qunfa evidence verify FILE` checks a bundle
//! offline (`qunfa_store::evidence::verify_bundle`, docs/evidence.md).

use std::{path::PathBuf, process::ExitCode};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use qunfa_store::evidence::{verify_bundle, AudienceCheck, ContentCheck, Problem, Verified};

use crate::config::Config;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EvidenceArgs {
    #[command(subcommand)]
    command: Option<EvidenceCommand>,
    /// The broadcast whose evidence to download (auditor, admin or owner key).
    #[arg(required = true)]
    broadcast_id: Option<String>,
    /// Where to write the bundle (default qunfa-evidence-BROADCAST_ID.json).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum EvidenceCommand {
    /// Check a bundle offline: every audit entry's hash and link up to the
    /// recorded head, the content and the frozen audience against the hashes
    /// the chain recorded, the bundle's own hash. Exits 1 when it fails.
    Verify { file: PathBuf },
}

pub fn run(config: &Config, args: EvidenceArgs) -> anyhow::Result<ExitCode> {
    match (args.command, args.broadcast_id) {
        (Some(EvidenceCommand::Verify { file }), _) => {
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            Ok(report(&file.display().to_string(), verify_bundle(&bytes)))
        }
        (None, Some(id)) => {
            let client = crate::api_client(config)?;
            let bytes = crate::runtime()?.block_on(client.download(&format!("/v1/broadcasts/{id}/evidence")))?;
            let out = args.out.unwrap_or_else(|| PathBuf::from(format!("qunfa-evidence-{id}.json")));
            std::fs::write(&out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
            println!("wrote {} ({})", out.display(), size(bytes.len()));
            Ok(report(&out.display().to_string(), verify_bundle(&bytes)))
        }
        (None, None) => bail!("give a broadcast id, or `verify FILE`"),
    }
}

/// Prints what was checked, or the problem; exit code 1 on a problem.
fn report(file: &str, result: Result<Verified, Problem>) -> ExitCode {
    let v = match result {
        Ok(v) => v,
        Err(problem) => {
            println!("FAILED {file}: {problem}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "OK {file}: evidence of broadcast {} (workspace {}), exported {}",
        v.broadcast_id,
        v.workspace_id,
        time(v.exported_at)
    );
    println!(
        "  audit: entries {}–{} of the workspace's chain: every hash and link verified; head {} = {}",
        v.first_seq, v.head_seq, v.head_seq, v.head_hash
    );
    match v.content {
        ContentCheck::Matches { created_seq } => {
            println!("  content: matches the SHA-256 recorded by entry {created_seq} (broadcast.created)")
        }
        ContentCheck::Purged { created_seq, purged_seq } => {
            println!("  content: purged by retention (entry {purged_seq}); its SHA-256 stays in entry {created_seq}")
        }
    }
    match v.audience {
        AudienceCheck::Matches { dispatched_seq, count } => println!(
            "  audience: {count} recipients, exactly the frozen audience whose SHA-256 entry {dispatched_seq} (broadcast.dispatched) recorded"
        ),
        AudienceCheck::NotDispatched => println!("  audience: none (the broadcast was never dispatched)"),
    }
    println!(
        "  deliveries: {} records, all to audience members, one per contact and channel; approvals {}, reviews {}, reports {}",
        v.n_deliveries, v.n_approvals, v.n_reviews, v.n_reports
    );
    println!("  bundle_sha256: {}", v.bundle_sha256);
    println!(
        "  against the server: its audit entry {} has hash {}, and a later broadcast.evidence_exported entry records this bundle_sha256",
        v.head_seq, v.head_hash
    );
    ExitCode::SUCCESS
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

fn size(bytes: usize) -> String {
    match bytes {
        0..1_000 => format!("{bytes} bytes"),
        1_000..1_000_000 => format!("{:.1} kB", bytes as f64 / 1e3),
        _ => format!("{:.1} MB", bytes as f64 / 1e6),
    }
}
