//! Scheduling through the API with the server's injected clock: one run at a
//! time, recurring runs, quiet hours, cancelling, bad input, and runs refused
//! at their time. The server's clock moves with `app.advance`; the scheduler
//! notices within its one-second tick, so the tests poll for a state, never
//! for a time. The engine reads the same clock, so a run dispatched at a
//! moved clock is delivered then; the tests look at the broadcast (`sending`
//! or `completed`, its recipients).

use qunfa_core::schedule::{rfc3339, TimeZone};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{spawn_app, spawn_app_policy, Backend, TestApp, ADMIN_TOKEN};

macro_rules! both_backends {
    ($($name:ident => $spawn:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::$spawn(super::Backend::Sqlite).await).await; } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::$spawn(super::Backend::Postgres).await).await; } )*
        }
    };
}

both_backends!(
    one_run_at_its_time => spawn_app,
    bad_schedules_change_nothing => spawn_app,
    recurring_runs_make_broadcasts => spawn_app,
    quiet_hours_move_runs => spawn_app,
    runs_refused_at_their_time_are_recorded => one_send_a_day,
    scheduled_runs_wait_for_approval => spawn_app,
);

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;

async fn one_send_a_day(backend: Backend) -> TestApp {
    spawn_app_policy(backend, "[tiers.enterprise]\nsends_per_day = 1\n").await
}

/// Now by the server's clock.
fn now(app: &TestApp) -> i64 {
    qunfa_store::now_millis() + app.clock_offset.load(std::sync::atomic::Ordering::SeqCst)
}

fn ms(ts: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(ts.as_str().expect("a time")).expect("RFC 3339").timestamp_millis()
}

/// An enterprise workspace with an admin and a sender, and 3 contacts tagged 客户:
/// (owner, admin, sender).
async fn enterprise(app: &TestApp) -> (String, String, String) {
    let (_, owner) = app.workspace("enterprise").await;
    let (_, admin) = app.member(&owner, "admin").await;
    let (_, sender) = app.member(&owner, "sender").await;
    app.contacts(&owner, 3, &["客户"]).await;
    (owner, admin, sender)
}

async fn schedule(app: &TestApp, key: &str, id: &str, body: Value) -> crate::support::Resp {
    app.post(&format!("/v1/broadcasts/{id}/schedule"), key, body).await
}

async fn delete(app: &TestApp, path: &str, key: &str) -> crate::support::Resp {
    app.call(Method::DELETE, path, Some(key), None).await
}

async fn put_settings(app: &TestApp, key: &str, body: Value) -> crate::support::Resp {
    app.call(Method::PUT, "/v1/workspace/schedule-settings", Some(key), Some(body)).await
}

async fn state(app: &TestApp, key: &str, id: &str) -> String {
    app.get(&format!("/v1/broadcasts/{id}"), key).await.expect(200)["state"].as_str().unwrap().to_owned()
}

/// Polls until the broadcast leaves `scheduled` (the scheduler took it); returns it.
async fn wait_ran(app: &TestApp, key: &str, id: &str) -> Value {
    for _ in 0..800 {
        let b = app.get(&format!("/v1/broadcasts/{id}"), key).await.expect(200);
        if b["state"] != "scheduled" {
            return b;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("broadcast {id} did not run");
}

/// Polls the schedule until `done` holds for it.
async fn wait_schedule(app: &TestApp, key: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..800 {
        let s = app.get(&format!("/v1/broadcasts/{id}/schedule"), key).await.expect(200);
        if done(&s) {
            return s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the schedule of {id} did not get there");
}

async fn audit_actions(app: &TestApp, owner: &str) -> Vec<(String, String, String)> {
    let log = app.get("/v1/audit?limit=1000", owner).await.expect(200);
    log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["subject"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn one_run_at_its_time(app: TestApp) {
    let (owner, admin, sender) = enterprise(&app).await;
    let id = app.draft(&sender, "双十二活动预告", json!({"tag": "客户"})).await;
    let at = now(&app) + HOUR;

    // Scheduling needs an admin or the owner.
    schedule(&app, &sender, &id, json!({"at": rfc3339(at)})).await.expect_error(403, "QF-AUTH-FORBIDDEN");
    let s = schedule(&app, &admin, &id, json!({"at": rfc3339(at)})).await.expect(200);
    assert_eq!((s["id"].as_str(), s["state"].as_str()), (Some(id.as_str()), Some("scheduled")), "{s}");
    assert_eq!(
        (s["schedule"]["kind"].as_str(), s["schedule"]["time_zone"].as_str()),
        (Some("once"), Some("Asia/Shanghai"))
    );
    assert_eq!(ms(&s["schedule"]["next_run_at"]), at / 1000 * 1000);
    assert_eq!(s["verdicts"], json!([]), "nothing to say about this send");
    // A scheduled broadcast is not sent by hand, nor scheduled twice; preflight still explains it.
    app.post(&format!("/v1/broadcasts/{id}/send"), &sender, json!({})).await.expect_error(409, "QF-STATE-CONFLICT");
    schedule(&app, &admin, &id, json!({"at": rfc3339(at + HOUR)})).await.expect_error(409, "QF-STATE-CONFLICT");
    assert_eq!(app.post(&format!("/v1/broadcasts/{id}/preflight"), &sender, json!({})).await.expect(200)["ok"], true);

    // Half an hour on: an earlier schedule (10 minutes ahead) runs; this one does not.
    let earlier = app.draft(&sender, "十分钟后", json!({"tag": "客户"})).await;
    schedule(&app, &owner, &earlier, json!({"at": rfc3339(now(&app) + 10 * MINUTE)})).await.expect(200);
    app.advance(30 * MINUTE);
    let ran = wait_ran(&app, &sender, &earlier).await;
    assert!(went_out(&ran) && ran["recipients"] == 3, "{ran}");
    assert_eq!(state(&app, &sender, &id).await, "scheduled");

    // Past its time: submitted like a send, by the scheduler for the admin.
    app.advance(31 * MINUTE);
    let ran = wait_ran(&app, &sender, &id).await;
    assert!(went_out(&ran) && ran["recipients"] == 3, "{ran}");
    assert!(ms(&ran["dispatched_at"]) >= at, "{ran}");
    let s = app.get(&format!("/v1/broadcasts/{id}/schedule"), &sender).await.expect(200);
    assert_eq!(s["schedule"]["next_run_at"], Value::Null, "{s}");
    // Too late to cancel.
    let e = app.call(Method::DELETE, &format!("/v1/broadcasts/{id}/schedule"), Some(&admin), None).await;
    e.expect_error(409, "QF-STATE-CONFLICT");

    // Cancelled before it starts: a draft again, which may be sent by hand.
    let third = app.draft(&sender, "取消的定时", json!({"tag": "客户"})).await;
    schedule(&app, &admin, &third, json!({"at": rfc3339(now(&app) + HOUR)})).await.expect(200);
    let path = format!("/v1/broadcasts/{third}/schedule");
    delete(&app, &path, &sender).await.expect_error(403, "QF-AUTH-FORBIDDEN");
    let b = delete(&app, &path, &admin).await.expect(200);
    assert_eq!(b["state"], "draft");
    delete(&app, &path, &admin).await.expect_error(409, "QF-STATE-CONFLICT");
    app.get(&format!("/v1/broadcasts/{third}/schedule"), &sender).await.expect_error(404, "QF-NOT-FOUND");
    app.post(&format!("/v1/broadcasts/{third}/send"), &sender, json!({})).await.expect(202);

    let admin_member = app.get("/v1/workspace", &admin).await.expect(200)["member_id"].as_str().unwrap().to_owned();
    let actions = audit_actions(&app, &owner).await;
    let on = |subject: &str, action: &str| actions.iter().filter(|(_, a, s)| a == action && s == subject).count();
    let subject = format!("broadcast:{id}");
    assert_eq!((on(&subject, "broadcast.scheduled"), on(&subject, "schedule.run")), (1, 1), "{actions:?}");
    let dispatched = actions.iter().find(|(_, a, s)| a == "broadcast.dispatched" && *s == subject).unwrap();
    assert_eq!(dispatched.0, format!("scheduler:member:{admin_member}"));
    assert_eq!(on(&format!("broadcast:{third}"), "broadcast.unscheduled"), 1);
}

async fn bad_schedules_change_nothing(app: TestApp) {
    let (owner, admin, sender) = enterprise(&app).await;
    let id = app.draft(&sender, "年会通知", json!({"tag": "客户"})).await;
    let t = now(&app);
    let refused = [
        (json!({"at": rfc3339(t - HOUR)}), "QF-SCHEDULE-PAST"),
        (json!({"at": rfc3339(t + 10_000)}), "QF-SCHEDULE-PAST"),
        (json!({"at": rfc3339(t + 400 * 24 * HOUR)}), "QF-SCHEDULE-TOO-FAR"),
        (json!({"at": "2026-12-24T09:00:00", "time_zone": "Mars/Olympus"}), "QF-SCHEDULE-TIME-ZONE"),
        (json!({"cron": "0 9 * * 1", "time_zone": "Mars/Olympus"}), "QF-SCHEDULE-TIME-ZONE"),
        (json!({"at": "next Tuesday"}), "QF-SCHEDULE-INVALID"),
        (json!({}), "QF-SCHEDULE-INVALID"),
        (json!({"at": rfc3339(t + HOUR), "cron": "0 9 * * 1"}), "QF-SCHEDULE-INVALID"),
        (json!({"cron": "0 0 30 2 *"}), "QF-SCHEDULE-NEVER"),
        (json!({"cron": "0 9 * *"}), "QF-SCHEDULE-CRON"),
        (json!({"cron": "99 9 * * *"}), "QF-SCHEDULE-CRON"),
        (json!({"cron": "*/10 * * * *"}), "QF-SCHEDULE-TOO-OFTEN"),
    ];
    for (body, code) in refused {
        let e = schedule(&app, &admin, &id, body.clone()).await.expect_error(422, code);
        assert!(!e["error"]["message"].as_str().unwrap().is_empty(), "{body}: {e}");
    }
    schedule(&app, &admin, &id, json!({"when": "soon"})).await.expect_error(400, "QF-BAD-JSON");
    // Content that is blocked now is refused now, with every verdict.
    let bad = app.draft(&sender, "高价收ＵＳＤＴ，当天结算，稳赚不赔", json!({"tag": "客户"})).await;
    let e =
        schedule(&app, &admin, &bad, json!({"at": rfc3339(t + HOUR)})).await.expect_error(422, "QF-CONTENT-BLOCKED");
    assert!(e["error"]["details"].as_array().unwrap().iter().any(|v| v["code"] == "QF-CONTENT-BLOCKED"), "{e}");
    // Nothing changed.
    for b in [&id, &bad] {
        assert_eq!(state(&app, &sender, b).await, "draft");
    }
    let actions = audit_actions(&app, &owner).await;
    assert!(!actions.iter().any(|(_, a, _)| a == "broadcast.scheduled"), "{actions:?}");

    // Personal workspaces do not schedule.
    let (_, personal) = app.workspace("personal").await;
    let ids = app.contacts(&personal, 1, &[]).await;
    let p = app.draft(&personal, "个人定时", json!({"contact_ids": [ids[0]]})).await;
    schedule(&app, &personal, &p, json!({"at": rfc3339(t + HOUR)})).await.expect_error(422, "QF-SCHEDULE-NOT-ALLOWED");
    assert_eq!(state(&app, &personal, &p).await, "draft");

    // Settings: checked, admins only, unchanged by a refusal.
    let path = "/v1/workspace/schedule-settings";
    put_settings(&app, &admin, json!({"time_zone": "Mars/Olympus"})).await.expect_error(422, "QF-SCHEDULE-TIME-ZONE");
    put_settings(&app, &admin, json!({"quiet_hours": "22:00"}))
        .await
        .expect_error(422, "QF-SCHEDULE-QUIET-HOURS-FORMAT");
    put_settings(&app, &admin, json!({"quiet_hours": "25:00-08:00"}))
        .await
        .expect_error(422, "QF-SCHEDULE-QUIET-HOURS-FORMAT");
    put_settings(&app, &sender, json!({"quiet_hours": "22:00-08:00"})).await.expect_error(403, "QF-AUTH-FORBIDDEN");
    let s = app.get(path, &sender).await.expect(200);
    assert_eq!(s, json!({"quiet_hours": null, "time_zone": null, "effective_time_zone": "Asia/Shanghai"}));
    let s = put_settings(&app, &owner, json!({"quiet_hours": "22:00-8:00", "time_zone": "Europe/Berlin"}))
        .await
        .expect(200);
    assert_eq!(
        s,
        json!({"quiet_hours": "22:00-08:00", "time_zone": "Europe/Berlin", "effective_time_zone": "Europe/Berlin"})
    );
    let e = app.call(Method::DELETE, &format!("/v1/broadcasts/{id}/schedule"), Some(&admin), None).await;
    e.expect_error(409, "QF-STATE-CONFLICT");
    app.call(Method::DELETE, "/v1/broadcasts/999999/schedule", Some(&admin), None)
        .await
        .expect_error(404, "QF-NOT-FOUND");
}

/// A run that went out: sending, or delivered already (the engine reads the
/// same clock).
fn went_out(b: &Value) -> bool {
    matches!(b["state"].as_str(), Some("sending" | "completed"))
}

/// The next time after `after` whose minute is `minute` (UTC).
fn next_minute(after: i64, minute: i64) -> i64 {
    let hour_start = after / HOUR * HOUR;
    let t = hour_start + minute * MINUTE;
    if t > after {
        t
    } else {
        t + HOUR
    }
}

async fn recurring_runs_make_broadcasts(app: TestApp) {
    let (owner, admin, sender) = enterprise(&app).await;
    put_settings(&app, &admin, json!({"time_zone": "UTC"})).await.expect(200);
    let id = app.draft(&sender, "每小时库存提醒", json!({"tag": "客户"})).await;
    // Hourly, at a minute a quarter of an hour from now.
    let minute = (now(&app) / MINUTE + 15) % 60;
    let s = schedule(&app, &admin, &id, json!({"cron": format!("{minute} * * * *")})).await.expect(200);
    let first = next_minute(now(&app), minute);
    assert_eq!((s["state"].as_str(), s["schedule"]["kind"].as_str()), (Some("scheduled"), Some("recurring")));
    assert_eq!((ms(&s["schedule"]["next_run_at"]), s["schedule"]["time_zone"].as_str()), (first, Some("UTC")));

    // The first run: a new broadcast, sent; the schedule moves on an hour.
    app.advance(first - now(&app) + 30_000);
    let s = wait_schedule(&app, &sender, &id, |s| s["runs"].as_array().is_some_and(|r| r.len() == 1)).await;
    assert_eq!((s["state"].as_str(), ms(&s["schedule"]["next_run_at"])), (Some("scheduled"), first + HOUR), "{s}");
    let run1 = s["runs"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(ms(&s["runs"][0]["due_at"]), first);
    let b1 = wait_ran(&app, &sender, &run1).await;
    assert!(went_out(&b1) && b1["recipients"] == 3, "{b1}");
    assert_eq!(
        b1["content"]["text"], "每小时库存提醒\n\n来自enterprise ws",
        "a run carries the signature stored with the content"
    );
    let r1 = app.get(&format!("/v1/broadcasts/{run1}/schedule"), &sender).await.expect(200);
    assert_eq!(
        (r1["schedule"]["kind"].as_str(), r1["schedule"]["parent_id"].as_str()),
        (Some("run"), Some(id.as_str()))
    );

    // The second run, an hour on.
    app.advance(HOUR);
    let s = wait_schedule(&app, &sender, &id, |s| s["runs"].as_array().is_some_and(|r| r.len() == 2)).await;
    let run2 = s["runs"][0]["id"].as_str().unwrap().to_owned();
    assert_ne!(run1, run2);
    assert!(went_out(&wait_ran(&app, &sender, &run2).await));
    assert_eq!((s["state"].as_str(), ms(&s["schedule"]["next_run_at"])), (Some("scheduled"), first + 2 * HOUR));

    // A word added since blocks the third run: recorded, and the schedule goes on.
    let words = json!({"category": "测试", "severity": "block", "words": ["库存提醒"]});
    app.post("/v1/safety/words", ADMIN_TOKEN, words).await.expect(200);
    app.advance(HOUR);
    let s = wait_schedule(&app, &sender, &id, |s| s["runs"].as_array().is_some_and(|r| r.len() == 3)).await;
    let run3 = s["runs"][0]["id"].as_str().unwrap().to_owned();
    let b3 = wait_ran(&app, &sender, &run3).await;
    assert_eq!(b3["state"], "blocked", "{b3}");
    assert!(b3["verdicts"].as_array().unwrap().iter().any(|v| v["code"] == "QF-CONTENT-BLOCKED"), "{b3}");
    assert_eq!((s["state"].as_str(), ms(&s["schedule"]["next_run_at"])), (Some("scheduled"), first + 3 * HOUR));
    let actions = audit_actions(&app, &owner).await;
    assert!(actions.iter().any(|(_, a, s)| a == "broadcast.blocked" && *s == format!("broadcast:{run3}")));

    // Cancelling stops the schedule; the runs stay as they are.
    let b = app.call(Method::DELETE, &format!("/v1/broadcasts/{id}/schedule"), Some(&owner), None).await.expect(200);
    assert_eq!(b["state"], "draft");
    assert!(matches!(state(&app, &sender, &run1).await.as_str(), "sending" | "completed"));
    assert_eq!(state(&app, &sender, &run3).await, "blocked");
}

/// `HH:MM` of an instant, UTC.
fn hhmm(t: i64) -> String {
    let local = TimeZone::parse("UTC").unwrap().local(t);
    local.format("%H:%M").to_string()
}

async fn quiet_hours_move_runs(app: TestApp) {
    let (_, admin, sender) = enterprise(&app).await;
    // Quiet from half an hour to three hours from now (UTC; it may wrap midnight).
    let t = now(&app);
    let (quiet_start, quiet_end) = ((t + 30 * MINUTE) / MINUTE * MINUTE, (t + 3 * HOUR) / MINUTE * MINUTE);
    let settings = json!({"time_zone": "UTC", "quiet_hours": format!("{}-{}", hhmm(quiet_start), hhmm(quiet_end))});
    put_settings(&app, &admin, settings).await.expect(200);

    // A run an hour from now is inside: it goes at their end, and says so.
    let id = app.draft(&sender, "夜间不打扰", json!({"tag": "客户"})).await;
    let s = schedule(&app, &admin, &id, json!({"at": rfc3339(t + HOUR)})).await.expect(200);
    assert_eq!(ms(&s["schedule"]["next_run_at"]), quiet_end, "{s}");
    assert_eq!(ms(&s["schedule"]["at"]), (t + HOUR) / 1000 * 1000);
    let v = s["verdicts"].as_array().unwrap().iter().find(|v| v["code"] == "QF-SCHEDULE-QUIET-HOURS").expect("said so");
    assert_eq!((v["severity"].as_str(), ms(&v["clears_at"])), (Some("delay"), quiet_end), "{v}");
    assert!(v["message_zh"].as_str().unwrap().contains("免打扰"));
    // A run before them is not moved; late into them (the clock jumps past its
    // time into the quiet hours), it waits for their end too.
    let before = app.draft(&sender, "免打扰之前", json!({"tag": "客户"})).await;
    let s = schedule(&app, &admin, &before, json!({"at": rfc3339(t + 20 * MINUTE)})).await.expect(200);
    assert_eq!(ms(&s["schedule"]["next_run_at"]), (t + 20 * MINUTE) / 1000 * 1000);
    assert!(!s["verdicts"].as_array().unwrap().iter().any(|v| v["code"] == "QF-SCHEDULE-QUIET-HOURS"));
    app.advance(2 * HOUR);
    let s = wait_schedule(&app, &sender, &before, |s| ms(&s["schedule"]["next_run_at"]) == quiet_end).await;
    assert_eq!(s["state"], "scheduled");
    assert_eq!(state(&app, &sender, &id).await, "scheduled");

    // Past the end both run.
    app.advance(HOUR + 2 * MINUTE);
    for b in [&id, &before] {
        assert!(went_out(&wait_ran(&app, &sender, b).await));
    }
}

async fn runs_refused_at_their_time_are_recorded(app: TestApp) {
    let (owner, admin, sender) = enterprise(&app).await;
    // Stay clear of local midnight (UTC+8), when the daily quota resets.
    let day = 24 * HOUR;
    let into_day = (now(&app) + 8 * HOUR).rem_euclid(day);
    if into_day > day - 20 * MINUTE {
        app.advance(day - into_day + MINUTE);
    }
    let id = app.draft(&sender, "定时的第一条", json!({"tag": "客户"})).await;
    schedule(&app, &admin, &id, json!({"at": rfc3339(now(&app) + 2 * MINUTE)})).await.expect(200);
    // The sender uses today's one send in between.
    let now_send = app.draft(&sender, "手动的一条", json!({"tag": "客户"})).await;
    app.post(&format!("/v1/broadcasts/{now_send}/send"), &sender, json!({})).await.expect(202);
    // Today is used up: a schedule for today is refused, one for tomorrow is not
    // (the quota clears by itself before it runs).
    let later = app.draft(&sender, "明天的一条", json!({"tag": "客户"})).await;
    let e = schedule(&app, &admin, &later, json!({"at": rfc3339(now(&app) + 5 * MINUTE)})).await;
    e.expect_error(422, "QF-LIMIT-DAILY-SENDS");
    schedule(&app, &admin, &later, json!({"at": rfc3339(now(&app) + day)})).await.expect(200);

    // At its time the run meets the used quota: recorded as blocked, with the verdicts.
    app.advance(3 * MINUTE);
    let b = wait_ran(&app, &sender, &id).await;
    assert_eq!(b["state"], "blocked", "{b}");
    let v = &b["verdicts"].as_array().unwrap()[0];
    assert_eq!((v["code"].as_str(), v["severity"].as_str()), (Some("QF-LIMIT-DAILY-SENDS"), Some("block")), "{b}");
    let s = app.get(&format!("/v1/broadcasts/{id}/schedule"), &sender).await.expect(200);
    assert_eq!(s["schedule"]["next_run_at"], Value::Null);
    let e = app.call(Method::DELETE, &format!("/v1/broadcasts/{id}/schedule"), Some(&admin), None).await;
    e.expect_error(409, "QF-STATE-CONFLICT");
    let actions = audit_actions(&app, &owner).await;
    let blocked = actions.iter().find(|(_, a, s)| a == "broadcast.blocked" && *s == format!("broadcast:{id}"));
    assert!(blocked.is_some_and(|(actor, _, _)| actor.starts_with("scheduler:member:")), "{actions:?}");
    // Tomorrow's is still waiting.
    assert_eq!(state(&app, &sender, &later).await, "scheduled");
}

async fn scheduled_runs_wait_for_approval(app: TestApp) {
    let (_, owner) = app.workspace("enterprise").await;
    let (_, sender) = app.member(&owner, "sender").await;
    let (_, reviewer) = app.member(&owner, "reviewer").await;
    app.contacts(&owner, 501, &["全员"]).await;
    let id = app.draft(&sender, "年终答谢会邀请", json!({"tag": "全员"})).await;
    // The review it will need does not stop the schedule; it is recorded.
    let s = schedule(&app, &owner, &id, json!({"at": rfc3339(now(&app) + 5 * MINUTE)})).await.expect(200);
    let v = &s["verdicts"].as_array().unwrap()[0];
    assert_eq!((v["code"].as_str(), v["severity"].as_str()), (Some("QF-APPROVAL-REQUIRED"), Some("review")), "{s}");
    // At its time it is held for approval, then approved like any send.
    app.advance(6 * MINUTE);
    let b = wait_ran(&app, &sender, &id).await;
    assert_eq!(b["state"], "pending_approval", "{b}");
    let b = app.post(&format!("/v1/broadcasts/{id}/approve"), &reviewer, json!({})).await.expect(202);
    assert!(went_out(&b) && b["recipients"] == 501, "{b}");
}
