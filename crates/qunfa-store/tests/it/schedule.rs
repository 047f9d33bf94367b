//! Schedules in the store: each due run is claimed by exactly one of several
//! racing claimers (nodes), a claimed run can be neither cancelled nor
//! claimed again until its lease ends, a recurring schedule's run becomes a
//! broadcast of its own, and every change is on the audit chain.

use qunfa_core::{broadcast::BroadcastState, workspace::WorkspaceKind, Code};
use qunfa_store::{
    schedule::{Claim, NewSchedule},
    Store, StoreError,
};

use super::{rejected_code, text_broadcast, ws, Fixture, NOW};

const HOUR: i64 = 3_600_000;

fn scheduled(f: &Fixture, w: i64, text: &str, cron: Option<&str>, next_run_at: i64) -> i64 {
    let (b, _) = f.store.create_broadcast(w, 1, &text_broadcast(text, None), "t", NOW).unwrap();
    let new = NewSchedule {
        at: cron.is_none().then_some(next_run_at),
        time_zone: "Asia/Shanghai",
        cron,
        next_run_at,
        verdicts_json: "[]",
    };
    f.store.schedule_broadcast(w, b.id, new, 1, "member:1", NOW).unwrap();
    b.id
}

/// `n` threads claim the same run at once; returns what each got.
fn race(store: &Store, w: i64, id: i64, due: i64, claim: Claim, now: i64) -> Vec<Option<i64>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| s.spawn(move || store.claim_schedule(w, id, due, claim, &format!("node{i}"), now)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    })
}

pub fn scheduled_runs_are_claimed_once(f: Fixture) {
    let w = ws(&f, WorkspaceKind::Enterprise);
    let due = NOW + HOUR;
    let once = scheduled(&f, w, "定时一次", None, due);
    // A draft only; not due before its time.
    let again = NewSchedule { at: Some(due), time_zone: "UTC", cron: None, next_run_at: due, verdicts_json: "[]" };
    assert_eq!(rejected_code(f.store.schedule_broadcast(w, once, again, 1, "t", NOW)), Code::Conflict);
    assert!(f.store.due_schedules(due - 1, 10).unwrap().is_empty());
    let found = f.store.due_schedules(due, 10).unwrap();
    assert_eq!(found.iter().map(|r| (r.broadcast_id, r.next_run_at)).collect::<Vec<_>>(), [(once, Some(due))]);

    // One of six racing nodes claims it; the run then waits for that node.
    let lease_until = due + 300_000;
    let got = race(&f.store, w, once, due, Claim::Once { lease_until }, due);
    assert_eq!(got.iter().flatten().collect::<Vec<_>>(), [&once], "{got:?}");
    assert!(f.store.due_schedules(due + 1000, 10).unwrap().is_empty());
    let starting = f.store.unschedule_broadcast(w, once, "t", due + 1000);
    assert_eq!(rejected_code(starting), Code::Conflict);
    // A node that died: after the lease it is due again, and may be cancelled.
    assert_eq!(f.store.due_schedules(lease_until, 10).unwrap().len(), 1);
    f.store.unschedule_broadcast(w, once, "t", lease_until).unwrap();
    let b = f.store.broadcast(w, once).unwrap();
    assert_eq!(b.state, BroadcastState::Draft);
    assert_eq!(f.store.schedule(w, once).unwrap().next_run_at, None);
    assert!(matches!(f.store.unschedule_broadcast(w, 999_999, "t", NOW), Err(StoreError::NotFound)));

    // A recurring schedule: one run each, a broadcast of its own per run.
    let every = scheduled(&f, w, "每小时", Some("0 * * * *"), due);
    let got = race(&f.store, w, every, due, Claim::Recurring { next_run_at: Some(due + HOUR), lease_until }, due);
    let runs: Vec<i64> = got.into_iter().flatten().collect();
    assert_eq!(runs.len(), 1);
    let run = f.store.schedule(w, runs[0]).unwrap();
    assert_eq!(
        (run.state, run.parent_id, run.at, run.next_run_at, run.claimed_until, run.scheduled_by),
        (BroadcastState::Scheduled, Some(every), Some(due), Some(due), Some(lease_until), Some(1))
    );
    let parent = f.store.schedule(w, every).unwrap();
    assert_eq!((parent.state, parent.next_run_at), (BroadcastState::Scheduled, Some(due + HOUR)));
    let (copy, original) = (f.store.broadcast(w, runs[0]).unwrap(), f.store.broadcast(w, every).unwrap());
    assert_eq!(
        (copy.content.text, copy.audience_json, copy.member_id),
        (original.content.text, original.audience_json, 1)
    );
    // The run held by its node is not due; the schedule is not due again yet.
    assert!(f.store.due_schedules(due + 1000, 10).unwrap().is_empty());
    // A run refused at its time is recorded once.
    assert!(f.store.block_scheduled_run(w, runs[0], r#"[{"code":"QF-CONTENT-BLOCKED"}]"#, "node0", due).unwrap());
    assert!(!f.store.block_scheduled_run(w, runs[0], "[]", "node1", due).unwrap());
    assert_eq!(f.store.broadcast(w, runs[0]).unwrap().state, BroadcastState::Blocked);
    // Quiet hours since: the next run moves, once.
    let got = race(&f.store, w, every, due + HOUR, Claim::Defer { until: due + 3 * HOUR }, due + HOUR);
    assert!(got.iter().all(Option::is_none));
    assert_eq!(f.store.schedule(w, every).unwrap().next_run_at, Some(due + 3 * HOUR));
    // The last run ends the schedule: a draft again, with its runs listed.
    let last = Claim::Recurring { next_run_at: None, lease_until: due + 4 * HOUR };
    let got = race(&f.store, w, every, due + 3 * HOUR, last, due + 3 * HOUR);
    assert_eq!(got.iter().flatten().count(), 1);
    assert_eq!(f.store.broadcast(w, every).unwrap().state, BroadcastState::Draft);
    let listed = f.store.schedule_runs(w, every, 10).unwrap();
    let listed: Vec<_> = listed.iter().map(|r| (r.state, r.due_at)).collect();
    assert_eq!(listed, [(BroadcastState::Scheduled, Some(due + 3 * HOUR)), (BroadcastState::Blocked, Some(due))]);

    let entries = f.store.audit_entries(w, 0, 1000).unwrap();
    let count = |action: &str| entries.iter().filter(|e| e.action == action).count();
    assert_eq!(
        (count("broadcast.scheduled"), count("schedule.run"), count("schedule.deferred"), count("schedule.ended")),
        (2, 3, 1, 1)
    );
    assert_eq!((count("broadcast.unscheduled"), count("broadcast.blocked")), (1, 1));
    assert!(f.store.audit_verify().unwrap().iter().all(|r| r.result.is_ok()));
}

pub fn schedule_settings_round_trip(f: Fixture) {
    let w = ws(&f, WorkspaceKind::Enterprise);
    assert_eq!(f.store.schedule_settings(w).unwrap(), Default::default());
    let set = qunfa_store::schedule::ScheduleSettingsRecord {
        quiet_hours: Some("22:00-08:00".into()),
        time_zone: Some("Europe/Berlin".into()),
    };
    f.store.set_schedule_settings(w, &set, "member:1", NOW).unwrap();
    assert_eq!(f.store.schedule_settings(w).unwrap(), set);
    let entries = f.store.audit_entries(w, 0, 100).unwrap();
    assert!(entries.iter().any(|e| e.action == "workspace.schedule_settings"));
}
