//! `qunfa schedule` end to end: a real server process, the workspace's quiet
//! hours and time zone, a recurring and a one-off schedule, their refusals,
//! and cancelling.

mod common;

use common::{qunfa, serve, text};

const ADMIN: &str = "qfa_cli_schedule_token";

#[test]
fn schedule_commands() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_server, url) = serve(d, ADMIN, "");
    let args = ["workspace", "create", "--name", "定时企业", "--kind", "enterprise", "--server", &url];
    let o = qunfa(d, &args).args(["--admin-token", ADMIN]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let key = text(&o).split_whitespace().find(|w| w.starts_with("qf_")).expect("a key").to_owned();
    let c = |args: &[&str]| qunfa(d, args).args(["--server", &url, "--api-key", &key]).output().unwrap();
    std::fs::write(d.join("c.csv"), "external_id,name\na,甲\nb,乙\n").unwrap();
    assert!(c(&["contacts", "import", "c.csv"]).status.success());

    let o = c(&["schedule", "settings", "--quiet-hours", "22:00-08:00", "--time-zone", "UTC"]);
    assert!(o.status.success() && text(&o).contains("quiet hours: 22:00-08:00; time zone: UTC"), "{}", text(&o));
    let o = c(&["schedule", "settings", "--time-zone", "Mars/Olympus"]);
    assert!(!o.status.success() && text(&o).contains("QF-SCHEDULE-TIME-ZONE"), "{}", text(&o));

    // A draft (a dry run leaves one), scheduled at noon every 1 January (so it does not run during the test).
    let o = c(&["send", "--text", "午间提醒", "--all", "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    let id = text(&o).split_whitespace().nth(1).unwrap().trim_end_matches(':').to_owned();
    let o = c(&["schedule", &id, "--cron", "0 12 1 1 *"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("scheduled — recurring cron \"0 12 1 1 *\" (UTC)"), "{}", text(&o));
    assert!(text(&o).contains("T12:00:00.000Z"), "{}", text(&o));
    let o = c(&["schedule", "show", &id]);
    assert!(o.status.success() && text(&o).contains("next run:"), "{}", text(&o));
    let o = c(&["explain", &id]);
    assert!(o.status.success() && text(&o).contains("scheduled"), "{}", text(&o));
    let o = c(&["schedule", "cancel", &id]);
    assert!(o.status.success() && text(&o).contains("schedule cancelled — draft"), "{}", text(&o));

    // Refusals with their codes; then once, two days ahead at 23:00 UTC: quiet hours move it.
    let o = c(&["schedule", &id, "--at", "2000-01-01T09:00"]);
    assert!(!o.status.success() && text(&o).contains("QF-SCHEDULE-PAST"), "{}", text(&o));
    let o = c(&["schedule", &id, "--cron", "0 0 30 2 *"]);
    assert!(!o.status.success() && text(&o).contains("QF-SCHEDULE-NEVER"), "{}", text(&o));
    let day = (chrono::Utc::now() + chrono::Duration::days(2)).format("%Y-%m-%d").to_string();
    let o = c(&["schedule", &id, "--at", &format!("{day}T23:00")]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("QF-SCHEDULE-QUIET-HOURS") && text(&o).contains("T08:00:00.000Z"), "{}", text(&o));
    let o = c(&["schedule"]);
    assert!(!o.status.success() && text(&o).contains("give the broadcast to schedule"), "{}", text(&o));
}
