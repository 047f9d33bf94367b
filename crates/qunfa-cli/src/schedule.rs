//! `qunfa schedule …`: schedule a draft once or on a cron expression, show
//! or cancel a schedule, and the workspace's quiet hours and time zone —
//! thin clients of the API (admins and owners of enterprise and API
//! workspaces; see docs/scheduling.md).

use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{render_verdict, Client};

/// `qunfa schedule ID --at …` or `--cron …`, or a subcommand.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ScheduleArgs {
    #[command(subcommand)]
    command: Option<ScheduleCommand>,
    /// The draft to schedule.
    broadcast_id: Option<String>,
    /// One run: `2026-12-24T09:00` (a wall time in --tz) or `2026-12-24T09:00:00+08:00`.
    #[arg(long)]
    at: Option<String>,
    /// The IANA time zone of --at and --cron (default: the workspace's).
    #[arg(long)]
    tz: Option<String>,
    /// Recurring runs, five fields: `"0 9 * * MON"` is Mondays at 09:00.
    #[arg(long)]
    cron: Option<String>,
}

#[derive(Subcommand)]
enum ScheduleCommand {
    /// Cancel a schedule before it starts (the broadcast is a draft again).
    Cancel { broadcast_id: String },
    /// A schedule, and the runs of a recurring one.
    Show { broadcast_id: String },
    /// Show or set the workspace's quiet hours and time zone.
    Settings {
        /// `22:00-08:00` (may wrap midnight), or `off`.
        #[arg(long)]
        quiet_hours: Option<String>,
        /// An IANA time zone, or `default` for the policy's.
        #[arg(long)]
        time_zone: Option<String>,
    },
}

fn print_schedule(s: &Value) {
    let id = s["id"].as_str().unwrap_or("?");
    let sch = &s["schedule"];
    let when = match (sch["cron"].as_str(), sch["at"].as_str()) {
        (Some(cron), _) => format!("cron \"{cron}\""),
        (None, Some(at)) => format!("at {at}"),
        _ => String::new(),
    };
    println!(
        "broadcast {id}: {} — {} {when} ({})",
        s["state"].as_str().unwrap_or("?"),
        sch["kind"].as_str().unwrap_or("?"),
        sch["time_zone"].as_str().unwrap_or("?")
    );
    match sch["next_run_at"].as_str() {
        Some(next) => println!("  next run: {next}"),
        None => println!("  no run to come"),
    }
    for v in s["verdicts"].as_array().into_iter().flatten().filter(|v| v.get("code").is_some()) {
        println!("{}", render_verdict(v));
    }
    for run in s["runs"].as_array().into_iter().flatten() {
        println!(
            "  run {}: {} (due {}, {} recipients)",
            run["id"].as_str().unwrap_or("?"),
            run["state"].as_str().unwrap_or("?"),
            run["due_at"].as_str().unwrap_or("?"),
            run["recipients"]
        );
    }
}

fn print_settings(s: &Value) {
    println!(
        "quiet hours: {}; time zone: {}{}",
        s["quiet_hours"].as_str().unwrap_or("none"),
        s["effective_time_zone"].as_str().unwrap_or("?"),
        if s["time_zone"].is_null() { " (the policy's default)" } else { "" }
    );
}

pub async fn run(client: &Client, args: ScheduleArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(ScheduleCommand::Cancel { broadcast_id }) => {
            let (_, b) = client.send(Method::DELETE, &format!("/v1/broadcasts/{broadcast_id}/schedule"), None).await?;
            println!("broadcast {broadcast_id}: schedule cancelled — {}", b["state"].as_str().unwrap_or("?"));
        }
        Some(ScheduleCommand::Show { broadcast_id }) => {
            print_schedule(&client.get(&format!("/v1/broadcasts/{broadcast_id}/schedule")).await?);
        }
        Some(ScheduleCommand::Settings { quiet_hours, time_zone }) => {
            let path = "/v1/workspace/schedule-settings";
            let mut settings = client.get(path).await?;
            if quiet_hours.is_some() || time_zone.is_some() {
                let value = |v: Option<String>, none: &str, current: &Value| match v {
                    Some(v) if v == none => Value::Null,
                    Some(v) => Value::String(v),
                    None => current.clone(),
                };
                let body = json!({
                    "quiet_hours": value(quiet_hours, "off", &settings["quiet_hours"]),
                    "time_zone": value(time_zone, "default", &settings["time_zone"]),
                });
                settings = client.send(Method::PUT, path, Some(body)).await?.1;
            }
            print_settings(&settings);
        }
        None => {
            let Some(id) = args.broadcast_id else {
                bail!("give the broadcast to schedule (qunfa schedule ID --at … | --cron …), or a subcommand")
            };
            let body = json!({"at": args.at, "time_zone": args.tz, "cron": args.cron});
            print_schedule(&client.post(&format!("/v1/broadcasts/{id}/schedule"), body).await?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
