//! Black-box tests through the HTTP API. Every test runs on SQLite and on
//! PostgreSQL, each with a fresh database and a server on port 0.

mod channels;
mod compat;
mod console;
mod recall;
mod rules;
mod safety;
mod schedule;
mod support;

use channels::{
    channel_settings, consent_and_unsubscribe, event_webhooks, external_channels_end_to_end, fallback_order_checked,
};

use safety::{content_in_preflight_send_and_review_queue, near_duplicates_need_a_code, safety_check_api};

use recall::{block_and_forward, enterprise_signature_and_correction, personal_recall, recall_refused};

use reqwest::Method;
use serde_json::{json, Value};
use support::{spawn_app, Backend, TestApp, ADMIN_TOKEN};

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::spawn_app(super::Backend::Sqlite).await).await; } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::spawn_app(super::Backend::Postgres).await).await; } )*
        }
    };
}

// After the macro, which it uses to run its tests on both backends.
mod evidence;
mod measure;

both_backends!(
    first_mass_send_end_to_end,
    bad_input_changes_nothing,
    import_reports_broken_lines,
    auth_roles_and_isolation,
    personal_rules_all_at_once,
    daily_quota_clears_at_midnight,
    enterprise_approval,
    idempotent_client_msg_id,
    contacts_crud,
    departments_tags_and_media,
    operations_endpoints,
    no_panic_on_junk,
    delivery_controls,
    audience_expressions,
    segments_bulk_tagging_and_tag_report,
    channel_settings,
    consent_and_unsubscribe,
    fallback_order_checked,
    event_webhooks,
    external_channels_end_to_end,
    safety_check_api,
    content_in_preflight_send_and_review_queue,
    near_duplicates_need_a_code,
    personal_recall,
    recall_refused,
    enterprise_signature_and_correction,
    block_and_forward,
);

macro_rules! rules_tests {
    ($($name:ident),* $(,)?) => {
        mod rules_sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { crate::rules::$name(crate::Backend::Sqlite).await; } )*
        }
        mod rules_postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { crate::rules::$name(crate::Backend::Postgres).await; } )*
        }
    };
}

rules_tests!(
    new_account_lockout,
    abnormal_login_until_verified,
    too_frequent_cooldown,
    health_states,
    approval_levels_and_chain,
    frequency_caps,
    growth_waves,
    client_msg_id_window,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_logins_sqlite() {
    console::console_logins(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_logins_postgres() {
    console::console_logins(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_tour() {
    console::browser_tour().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_review_and_schedule() {
    console::browser_review_and_schedule().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_policy_sqlite() {
    recall::recall_and_signature_follow_the_policy(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_policy_postgres() {
    recall::recall_and_signature_follow_the_policy(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safety_reload_sqlite() {
    safety::reload_keeps_serving_on_errors(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safety_reload_postgres() {
    safety::reload_keeps_serving_on_errors(Backend::Postgres).await;
}

async fn first_mass_send_end_to_end(app: TestApp) {
    let (_, owner) = app.workspace("enterprise").await;
    // Import CSV with nested tags and attributes.
    let csv = "external_id,name,email,tags,city,spend\n\
               u1,张三,zs@example.com,客户等级/金牌/华东,上海,16000\n\
               u2,李四,,客户等级/金牌,北京,15500\n\
               u3,王五,,客户等级/银牌,广州,9000\n";
    let out = app.raw("/v1/contacts/import", &owner, "text/csv", csv).await.expect(200);
    assert_eq!((out["imported"].as_u64(), out["tags_created"].as_u64()), (Some(3), Some(4)));
    let tags = app.get("/v1/tags", &owner).await.expect(200);
    let paths: Vec<&str> = tags.as_array().unwrap().iter().map(|t| t["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["客户等级", "客户等级/金牌", "客户等级/金牌/华东", "客户等级/银牌"]);

    // Compose for the 金牌 subtree with a variable, preflight, send.
    let id = app.draft(&owner, "{{name}}您好：{{city}}门店 VIP 专场", json!({"tag": "客户等级/金牌"})).await;
    let pf = app.post(&format!("/v1/broadcasts/{id}/preflight"), &owner, json!({})).await.expect(200);
    assert_eq!((pf["ok"].as_bool(), pf["recipients"].as_u64()), (Some(true), Some(2)));
    assert_eq!(pf["verdicts"], json!([]));
    let sent = app.post(&format!("/v1/broadcasts/{id}/send"), &owner, json!({})).await.expect(202);
    // The engine may finish before the answer is written.
    assert!(sent["state"] == "sending" || sent["state"] == "completed", "{sent}");
    let done = app.wait_completed(&owner, &id).await;
    assert_eq!(done["counts"]["delivered"], 2);
    assert_eq!(done["counts"]["queued"], 0);
    assert!(done["dispatched_at"].is_string() && done["completed_at"].is_string());
    // A second send of the same broadcast is a conflict, not a second delivery.
    app.post(&format!("/v1/broadcasts/{id}/send"), &owner, json!({})).await.expect_error(409, "QF-STATE-CONFLICT");

    // Exactly one delivery record per recipient.
    let log = app.get(&format!("/v1/broadcasts/{id}/deliveries"), &owner).await.expect(200);
    let items = log["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|d| d["state"] == "delivered" && d["attempts"] == 1 && d["delivered_at"].is_string()));

    // The recipient reads and replies with their own token.
    let contacts = app.get("/v1/contacts", &owner).await.expect(200);
    let zhang = contacts["items"][0]["id"].as_str().unwrap().to_owned();
    let token = app.post(&format!("/v1/contacts/{zhang}/inbox-token"), &owner, json!({})).await.expect(201)["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let inbox = app.get("/v1/inbox", &token).await.expect(200);
    let msg = &inbox["items"][0];
    // Enterprise messages end with the workspace's signature (docs/recall.md).
    assert_eq!(msg["text"], "张三您好：上海门店 VIP 专场\n\n来自enterprise ws");
    assert!(msg["read_at"].is_null());
    let mid = msg["message_id"].as_str().unwrap().to_owned();
    assert_eq!(app.post(&format!("/v1/inbox/{mid}/read"), &token, json!({})).await.expect(200)["first_read"], true);
    assert_eq!(app.post(&format!("/v1/inbox/{mid}/read"), &token, json!({})).await.expect(200)["first_read"], false);
    app.post(&format!("/v1/inbox/{mid}/reply"), &token, json!({"text": "收到，谢谢"})).await.expect(201);
    app.post(&format!("/v1/inbox/{mid}/reply"), &token, json!({"text": "坏\u{0}字符"}))
        .await
        .expect_error(400, "QF-INVALID-CONTENT");
    app.post(&format!("/v1/inbox/{mid}/reply"), &token, json!({"text": "再次回复"})).await.expect(201);
    let b = app.get(&format!("/v1/broadcasts/{id}"), &owner).await.expect(200);
    assert_eq!((b["counts"]["read"].as_u64(), b["counts"]["replied"].as_u64()), (Some(1), Some(1)));
    let replies = app.get(&format!("/v1/broadcasts/{id}/replies"), &owner).await.expect(200);
    assert_eq!(replies["items"][0]["text"], "收到，谢谢");
    // The recipient cannot see a message that was not sent to them.
    app.post(&format!("/v1/inbox/{}/read", mid.parse::<i64>().unwrap() + 1), &token, json!({}))
        .await
        .expect_error(404, "QF-NOT-FOUND");
    // Workspace keys are not inbox tokens, and inbox tokens are not workspace keys.
    app.get("/v1/inbox", &owner).await.expect_error(401, "QF-AUTH-REQUIRED");
    app.get("/v1/contacts", &token).await.expect_error(401, "QF-AUTH-REQUIRED");

    // Every state change is in the audit log, and the chain verifies.
    let audit = app.get("/v1/audit?limit=1000", &owner).await.expect(200);
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in [
        "workspace.created",
        "contacts.imported",
        "broadcast.created",
        "broadcast.dispatched",
        "broadcast.completed",
        "inbox_token.created",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    let store = app.store.clone();
    let reports = tokio::task::spawn_blocking(move || store.audit_verify().unwrap()).await.unwrap();
    assert!(reports.iter().all(|r| r.result.is_ok()), "{reports:?}");
}

async fn count(app: &TestApp, key: &str, path: &str) -> usize {
    let v = app.get(path, key).await.expect(200);
    v.get("items").unwrap_or(&v).as_array().unwrap().len()
}

async fn bad_input_changes_nothing(app: TestApp) {
    let (_, key) = app.workspace("enterprise").await;
    let ids = app.contacts(&key, 2, &["A"]).await;
    let r = app.raw("/v1/broadcasts", &key, "application/json", "{\"content\": ").await;
    r.expect_error(400, "QF-BAD-JSON");
    let r = app
        .post(
            "/v1/broadcasts",
            &key,
            json!({"content": {"type": "text", "text": "hi"}, "audience": {"all": true}, "colour": "red"}),
        )
        .await;
    let body = r.expect_error(400, "QF-BAD-JSON");
    assert!(body["error"]["message"].as_str().unwrap().contains("colour"), "{body}");
    let r = app
        .post(
            "/v1/broadcasts",
            &key,
            json!({"content": {"type": "text", "text": "群".repeat(3000)}, "audience": {"all": true}}),
        )
        .await;
    let body = r.expect_error(422, "QF-CONTENT-TOO-LONG");
    assert_eq!(body["error"]["details"][0], json!({"limit": 2048, "actual": 3000}));
    app.post("/v1/broadcasts", &key, json!({"content": {"type": "text", "text": "  "}, "audience": {"all": true}}))
        .await
        .expect_error(400, "QF-CONTENT-EMPTY");
    app.post(
        "/v1/broadcasts",
        &key,
        json!({"content": {"type": "text", "text": "hi {{name"}, "audience": {"all": true}}),
    )
    .await
    .expect_error(400, "QF-TEMPLATE-SYNTAX");
    app.post("/v1/broadcasts", &key, json!({"content": {"type": "video"}, "audience": {"all": true}}))
        .await
        .expect_error(400, "QF-INVALID-CONTENT");
    app.post(
        "/v1/broadcasts",
        &key,
        json!({"content": {"type": "text", "text": "hi"}, "audience": {"all": true, "tag": "A"}}),
    )
    .await
    .expect_error(400, "QF-AUDIENCE-INVALID");
    app.post("/v1/broadcasts", &key, json!({"content": {"type": "text", "text": "hi"}, "audience": {"tag": "nope"}}))
        .await
        .expect_error(404, "QF-NOT-FOUND");
    app.post(
        "/v1/broadcasts",
        &key,
        json!({"content": {"type": "text", "text": "hi"}, "audience": {"all": true}, "channels": ["pigeon"]}),
    )
    .await
    .expect_error(400, "QF-INVALID-CHANNEL");
    let many: Vec<String> = (0..2001).map(|_| ids[0].clone()).collect();
    app.post(
        "/v1/broadcasts",
        &key,
        json!({"content": {"type": "text", "text": "hi"}, "audience": {"contact_ids": many}}),
    )
    .await
    .expect_error(422, "QF-LIMIT-API-BATCH");
    assert_eq!(count(&app, &key, "/v1/broadcasts").await, 0, "no draft was created by bad input");

    // A four-level tag path.
    app.post("/v1/tags", &key, json!({"path": "a/b/c/d"})).await.expect_error(400, "QF-TAG-TOO-DEEP");
    app.post("/v1/tags", &key, json!({"path": "a//b"})).await.expect_error(400, "QF-INVALID-TAG-PATH");
    assert_eq!(count(&app, &key, "/v1/tags").await, 1);

    // A contact id of another workspace is not found, in a path and in an audience.
    let (_, other) = app.workspace("enterprise").await;
    let foreign = app.contacts(&other, 1, &[]).await;
    app.get(&format!("/v1/contacts/{}", foreign[0]), &key).await.expect_error(404, "QF-NOT-FOUND");
    app.get("/v1/contacts/not-a-number", &key).await.expect_error(404, "QF-NOT-FOUND");
    let r = app
        .post(
            "/v1/broadcasts",
            &key,
            json!({"content": {"type": "text", "text": "hi"}, "audience": {"contact_ids": [ids[0], foreign[0]]}}),
        )
        .await;
    let body = r.expect_error(404, "QF-NOT-FOUND");
    assert_eq!(body["error"]["details"], json!([foreign[0]]));
    app.post("/v1/tags/1/members", &key, json!({"contact_ids": [foreign[0]]})).await.expect_error(404, "QF-NOT-FOUND");
    assert_eq!(count(&app, &key, "/v1/broadcasts").await, 0);

    // An empty audience is refused at send with the verdict, and nothing is sent.
    app.post("/v1/tags", &key, json!({"path": "空标签"})).await.expect(201);
    let id = app.draft(&key, "hi", json!({"tag": "空标签"})).await;
    let pf = app.post(&format!("/v1/broadcasts/{id}/preflight"), &key, json!({})).await.expect(200);
    assert_eq!((pf["ok"].as_bool(), pf["verdicts"][0]["code"].as_str()), (Some(false), Some("QF-AUDIENCE-EMPTY")));
    app.post(&format!("/v1/broadcasts/{id}/send"), &key, json!({})).await.expect_error(422, "QF-AUDIENCE-EMPTY");
    assert_eq!(app.get(&format!("/v1/broadcasts/{id}"), &key).await.expect(200)["state"], "draft");

    // Unknown template variables: a draft is kept, the send is refused.
    let id = app.draft(&key, "{{shoe_size}} 码鞋到货", json!({"all": true})).await;
    let body = app
        .post(&format!("/v1/broadcasts/{id}/send"), &key, json!({}))
        .await
        .expect_error(422, "QF-TEMPLATE-UNKNOWN-VARIABLE");
    assert!(body["error"]["message"].as_str().unwrap().contains("shoe_size"));
    assert_eq!(app.get(&format!("/v1/broadcasts/{id}"), &key).await.expect(200)["state"], "draft");
    // Bad pagination.
    app.get("/v1/contacts?limit=0", &key).await.expect_error(400, "QF-BAD-REQUEST");
    app.get("/v1/broadcasts?cursor=xyz", &key).await.expect_error(400, "QF-BAD-CURSOR");
}

async fn import_reports_broken_lines(app: TestApp) {
    let (_, key) = app.workspace("enterprise").await;
    let body = "{\"external_id\":\"a\",\"name\":\"甲\"}\n{broken json\n{\"external_id\":\"b\",\"channels\":{\"email\":\"not-an-email\"}}\n{\"external_id\":\"c\",\"tags\":[\"a/b/c/d\"]}\n";
    let r = app.raw("/v1/contacts/import", &key, "application/x-ndjson", body).await;
    let err = r.expect_error(422, "QF-IMPORT-REJECTED");
    let lines: Vec<(u64, &str)> = err["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["line"].as_u64().unwrap(), d["code"].as_str().unwrap()))
        .collect();
    assert_eq!(lines, [(2, "QF-BAD-JSON"), (3, "QF-INVALID-EMAIL"), (4, "QF-TAG-TOO-DEEP")]);
    assert_eq!(count(&app, &key, "/v1/contacts").await, 0, "nothing imported");
    assert_eq!(count(&app, &key, "/v1/tags").await, 0);
    // With partial=true the valid lines go in and the others are reported.
    let out = app.raw("/v1/contacts/import?partial=true", &key, "application/x-ndjson", body).await.expect(200);
    assert_eq!(out["imported"], 1);
    assert_eq!(out["rejected"].as_array().unwrap().len(), 3);
    // CSV with a wrong field count, and a body that is neither format.
    let r = app.raw("/v1/contacts/import", &key, "text/csv", "external_id,name\nx,1\ny,2,3\n").await;
    let err = r.expect_error(422, "QF-IMPORT-REJECTED");
    assert_eq!(err["error"]["details"][0]["line"], 3);
    app.raw("/v1/contacts/import", &key, "image/png", "x").await.expect_error(400, "QF-IMPORT-FORMAT");
    assert_eq!(count(&app, &key, "/v1/contacts").await, 1);
}

async fn auth_roles_and_isolation(app: TestApp) {
    // Admin-only workspace creation; the admin token is nothing else.
    app.call(Method::POST, "/v1/workspaces", None, Some(json!({"name": "x", "kind": "personal"})))
        .await
        .expect_error(401, "QF-AUTH-REQUIRED");
    app.call(Method::POST, "/v1/workspaces", Some("qfa_wrong"), Some(json!({"name": "x", "kind": "personal"})))
        .await
        .expect_error(401, "QF-AUTH-REQUIRED");
    app.call(Method::POST, "/v1/workspaces", Some(ADMIN_TOKEN), Some(json!({"name": "x", "kind": "galaxy"})))
        .await
        .expect_error(400, "QF-INVALID-KIND");
    app.call(
        Method::POST,
        "/v1/workspaces",
        Some(ADMIN_TOKEN),
        Some(json!({"name": "x", "kind": "api", "plan": "mega"})),
    )
    .await
    .expect_error(400, "QF-BAD-REQUEST");
    app.get("/v1/contacts", ADMIN_TOKEN).await.expect_error(401, "QF-AUTH-REQUIRED");
    let (_, owner) = app.workspace("enterprise").await;
    app.call(Method::POST, "/v1/workspaces", Some(&owner), Some(json!({"name": "x", "kind": "personal"})))
        .await
        .expect_error(401, "QF-AUTH-REQUIRED");
    app.get("/v1/contacts", "qf_00000000000000000000000000000000").await.expect_error(401, "QF-AUTH-REQUIRED");

    let (_, viewer) = app.member(&owner, "viewer").await;
    let (_, sender) = app.member(&owner, "sender").await;
    let (_, auditor) = app.member(&owner, "auditor").await;
    app.contacts(&owner, 1, &[]).await;
    app.get("/v1/contacts", &viewer).await.expect(200);
    app.post("/v1/contacts", &viewer, json!({"external_id": "v"})).await.expect_error(403, "QF-AUTH-FORBIDDEN");
    app.post("/v1/broadcasts", &viewer, json!({"content": {"type": "text", "text": "hi"}, "audience": {"all": true}}))
        .await
        .expect_error(403, "QF-AUTH-FORBIDDEN");
    app.get("/v1/audit", &viewer).await.expect_error(403, "QF-AUTH-FORBIDDEN");
    app.get("/v1/audit", &auditor).await.expect(200);
    app.post("/v1/members", &sender, json!({"name": "x", "role": "admin"}))
        .await
        .expect_error(403, "QF-AUTH-FORBIDDEN");
    let (_, admin) = app.member(&owner, "admin").await;
    app.post("/v1/members", &admin, json!({"name": "x", "role": "owner"})).await.expect_error(403, "QF-AUTH-FORBIDDEN");
    let id = app.draft(&sender, "hi", json!({"all": true})).await;

    // Another workspace sees none of it.
    let (_, stranger) = app.workspace("enterprise").await;
    app.get(&format!("/v1/broadcasts/{id}"), &stranger).await.expect_error(404, "QF-NOT-FOUND");
    app.post(&format!("/v1/broadcasts/{id}/send"), &stranger, json!({})).await.expect_error(404, "QF-NOT-FOUND");
    assert_eq!(count(&app, &stranger, "/v1/contacts").await, 0);
    let me = app.get("/v1/workspace", &sender).await.expect(200);
    assert_eq!(me["role"], "sender");
}

async fn personal_rules_all_at_once(app: TestApp) {
    let (_, key) = app.workspace("personal").await;
    app.post("/v1/tags", &key, json!({"path": "客户/VIP"})).await.expect_error(422, "QF-TAG-NESTED-NOT-ALLOWED");
    app.contacts(&key, 201, &[]).await;
    // 201 friends over one tag is impossible (500 per tag is fine), so use all.
    let id = app.draft(&key, "周末聚会", json!({"all": true})).await;
    let pf = app.post(&format!("/v1/broadcasts/{id}/preflight"), &key, json!({})).await.expect(200);
    assert_eq!(pf["verdicts"][0]["code"], "QF-LIMIT-RECIPIENTS");
    assert_eq!((pf["verdicts"][0]["limit"].as_u64(), pf["verdicts"][0]["actual"].as_u64()), (Some(200), Some(201)));

    // A file to two tags: every violation at once, each with a code, both languages and a fix.
    let media = app.raw("/v1/media?filename=a.pdf", &key, "application/pdf", "%PDF-1.4 demo").await.expect(201);
    app.post("/v1/tags", &key, json!({"path": "同事"})).await.expect(201);
    app.post("/v1/tags", &key, json!({"path": "家人"})).await.expect(201);
    let b = app
        .post("/v1/broadcasts", &key, json!({"content": {"type": "file", "media_id": media["media_id"], "filename": "a.pdf"}, "audience": {"tags": ["同事", "家人"]}, "channels": ["inbox", "sms"]}))
        .await
        .expect(201);
    let id = b["id"].as_str().unwrap();
    let err = app
        .post(&format!("/v1/broadcasts/{id}/send"), &key, json!({}))
        .await
        .expect_error(422, "QF-CONTENT-TYPE-NOT-ALLOWED");
    let codes: Vec<&str> =
        err["error"]["details"].as_array().unwrap().iter().map(|v| v["code"].as_str().unwrap()).collect();
    assert_eq!(
        codes,
        ["QF-CONTENT-TYPE-NOT-ALLOWED", "QF-AUDIENCE-COMBINATION", "QF-AUDIENCE-EMPTY", "QF-CHANNEL-NOT-CONFIGURED"]
    );
    for v in err["error"]["details"].as_array().unwrap() {
        assert!(v["message_zh"].as_str().unwrap().chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)), "{v}");
        assert!(!v["hint"].as_str().unwrap().is_empty());
    }
    assert_eq!(app.get(&format!("/v1/broadcasts/{id}"), &key).await.expect(200)["state"], "draft");
    // Departments do not exist for personal workspaces.
    app.post("/v1/departments", &key, json!({"name": "x"})).await.expect_error(422, "QF-DEPARTMENT-NOT-ALLOWED");
}

async fn daily_quota_clears_at_midnight(app: TestApp) {
    let (_, key) = app.workspace("personal").await;
    let ids = app.contacts(&key, 3, &[]).await;
    for i in 0..5 {
        let id = app.draft(&key, &format!("第{i}条"), json!({"contact_ids": [ids[i % 3]]})).await;
        app.post(&format!("/v1/broadcasts/{id}/send"), &key, json!({})).await.expect(202);
    }
    let id = app.draft(&key, "第六条", json!({"contact_ids": [ids[0]]})).await;
    let pf = app.post(&format!("/v1/broadcasts/{id}/preflight"), &key, json!({})).await.expect(200);
    let v = &pf["verdicts"][0];
    assert_eq!(
        (v["code"].as_str(), v["limit"].as_u64(), v["actual"].as_u64()),
        (Some("QF-LIMIT-DAILY-SENDS"), Some(5), Some(5))
    );
    let clears_at = v["clears_at"].as_str().expect("the quota clears by itself");
    // Local midnight in UTC+8 is 16:00 UTC.
    assert!(clears_at.ends_with("T16:00:00.000Z"), "{clears_at}");
    let resp = app.http.post(format!("{}/v1/broadcasts/{id}/send", app.base)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    assert!(resp.headers().get("retry-after").is_some(), "a quota refusal says when to retry");
}

async fn enterprise_approval(app: TestApp) {
    let (_, owner) = app.workspace("enterprise").await;
    let (_, sender) = app.member(&owner, "sender").await;
    let (_, reviewer) = app.member(&owner, "reviewer").await;
    app.contacts(&owner, 501, &["全员"]).await;
    let id = app.draft(&sender, "年终答谢会邀请", json!({"tag": "全员"})).await;
    let pf = app.post(&format!("/v1/broadcasts/{id}/preflight"), &sender, json!({})).await.expect(200);
    assert_eq!(pf["ok"], true);
    assert_eq!(pf["verdicts"][0]["code"], "QF-APPROVAL-REQUIRED");
    assert_eq!(pf["verdicts"][0]["severity"], "review");
    let b = app.post(&format!("/v1/broadcasts/{id}/send"), &sender, json!({})).await.expect(202);
    assert_eq!(b["state"], "pending_approval");
    // A sender cannot approve; nobody approves their own send; a reviewer can.
    app.post(&format!("/v1/broadcasts/{id}/approve"), &sender, json!({})).await.expect_error(403, "QF-AUTH-FORBIDDEN");
    let (_, sender_reviewer) = app.member(&owner, "admin").await;
    let own = app.draft(&sender_reviewer, "自己审批", json!({"tag": "全员"})).await;
    app.post(&format!("/v1/broadcasts/{own}/send"), &sender_reviewer, json!({})).await.expect(202);
    app.post(&format!("/v1/broadcasts/{own}/approve"), &sender_reviewer, json!({}))
        .await
        .expect_error(403, "QF-APPROVAL-SELF");
    let b = app.post(&format!("/v1/broadcasts/{id}/approve"), &reviewer, json!({"comment": "同意"})).await.expect(202);
    assert!(b["state"] == "sending" || b["state"] == "completed", "{b}");
    app.post(&format!("/v1/broadcasts/{id}/approve"), &reviewer, json!({}))
        .await
        .expect_error(409, "QF-STATE-CONFLICT");
    let done = app.wait_completed(&sender, &id).await;
    assert_eq!(done["counts"]["delivered"], 501);
    assert!(done["approved_by"].is_string());
    // Rejecting the other one cancels it.
    let r = app.post(&format!("/v1/broadcasts/{own}/reject"), &reviewer, json!({"comment": "重复"})).await.expect(200);
    assert_eq!(r["state"], "cancelled");
}

async fn idempotent_client_msg_id(app: TestApp) {
    let (_, key) = app.workspace("enterprise").await;
    app.contacts(&key, 2, &[]).await;
    let body = json!({"content": {"type": "text", "text": "到货通知"}, "audience": {"all": true}, "client_msg_id": "order-42"});
    let first = app.post("/v1/broadcasts", &key, body.clone()).await.expect(201);
    let again = app.post("/v1/broadcasts", &key, body).await.expect(200);
    assert_eq!(first["id"], again["id"]);
    let other = json!({"content": {"type": "text", "text": "别的内容"}, "audience": {"all": true}, "client_msg_id": "order-42"});
    app.post("/v1/broadcasts", &key, other).await.expect_error(409, "QF-CLIENT-MSG-ID-REUSED");
    assert_eq!(count(&app, &key, "/v1/broadcasts").await, 1);
}

async fn contacts_crud(app: TestApp) {
    let (_, key) = app.workspace("enterprise").await;
    let c = app
        .post("/v1/contacts", &key, json!({"external_id": "wx-1", "name": "赵六", "attributes": {"city": "杭州", "spend": 12}, "channels": {"email": "z@example.com"}, "consent": {"email": true}, "tags": ["新客"]}))
        .await
        .expect(201);
    let id = c["id"].as_str().unwrap();
    assert_eq!(c["tags"], json!(["新客"]));
    app.post("/v1/contacts", &key, json!({"external_id": "wx-1"})).await.expect_error(409, "QF-DUPLICATE");
    // Search: the external id exactly, or the start of the name; LIKE's wildcards are plain characters.
    app.post("/v1/contacts", &key, json!({"external_id": "wx_9", "name": "赵%七"})).await.expect(201);
    let names = |v: Value| -> Vec<String> {
        v["items"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(names(app.get("/v1/contacts?q=%E8%B5%B5", &key).await.expect(200)), ["赵六", "赵%七"]);
    assert_eq!(names(app.get("/v1/contacts?q=wx-1", &key).await.expect(200)), ["赵六"]);
    assert_eq!(names(app.get("/v1/contacts?q=%E8%B5%B5%25", &key).await.expect(200)), ["赵%七"]);
    assert_eq!(names(app.get("/v1/contacts?q=wx", &key).await.expect(200)), Vec::<String>::new(), "ids match exactly");
    assert_eq!(names(app.get("/v1/contacts?q=%E8%B5%B5&limit=1", &key).await.expect(200)), ["赵六"]);
    let latin = app.post("/v1/contacts", &key, json!({"external_id": "wx-10", "name": "Zhang_San"})).await.expect(201);
    let other = app.post("/v1/contacts", &key, json!({"external_id": "wx-11", "name": "ZhangXi"})).await.expect(201);
    assert_eq!(
        names(app.get("/v1/contacts?q=zhang", &key).await.expect(200)),
        ["Zhang_San", "ZhangXi"],
        "any case, both databases"
    );
    assert_eq!(names(app.get("/v1/contacts?q=ZHANG_", &key).await.expect(200)), ["Zhang_San"], "_ is not a wildcard");
    assert_eq!(
        names(app.get("/v1/contacts?q=zhang%5C", &key).await.expect(200)),
        Vec::<String>::new(),
        "a backslash is a backslash"
    );
    for c in [latin, other] {
        app.call(Method::DELETE, &format!("/v1/contacts/{}", c["id"].as_str().unwrap()), Some(&key), None)
            .await
            .expect(204);
    }
    app.get(&format!("/v1/contacts?q={}", "x".repeat(129)), &key).await.expect_error(400, "QF-BAD-REQUEST");
    app.call(
        Method::DELETE,
        &format!(
            "/v1/contacts/{}",
            app.get("/v1/contacts?q=wx_9", &key).await.expect(200)["items"][0]["id"].as_str().unwrap()
        ),
        Some(&key),
        None,
    )
    .await
    .expect(204);
    app.post("/v1/contacts", &key, json!({"external_id": "wx-2", "channels": {"phone": "abc"}}))
        .await
        .expect_error(400, "QF-INVALID-PHONE");
    let p = app
        .call(Method::PATCH, &format!("/v1/contacts/{id}"), Some(&key), Some(json!({"attributes": {"spend": 99, "city": null}, "channels": {"email": null, "phone": "+86 138 0000 0000"}})))
        .await
        .expect(200);
    assert_eq!(p["attributes"], json!({"spend": 99}));
    assert_eq!(p["channels"]["email"], Value::Null);
    assert_eq!(p["channels"]["phone"], "+8613800000000");
    assert_eq!(p["name"], "赵六");
    app.call(Method::PATCH, &format!("/v1/contacts/{id}"), Some(&key), Some(json!({"channels": {"email": "bad"}})))
        .await
        .expect_error(400, "QF-INVALID-EMAIL");
    app.call(Method::DELETE, &format!("/v1/contacts/{id}"), Some(&key), None).await.expect(204);
    app.get(&format!("/v1/contacts/{id}"), &key).await.expect_error(404, "QF-NOT-FOUND");
    app.call(Method::DELETE, &format!("/v1/contacts/{id}"), Some(&key), None).await.expect_error(404, "QF-NOT-FOUND");
    // The external id can be imported again and gets a new id.
    let again = app.post("/v1/contacts", &key, json!({"external_id": "wx-1"})).await.expect(201);
    assert_ne!(again["id"], c["id"]);
}

async fn departments_tags_and_media(app: TestApp) {
    let (_, key) = app.workspace("enterprise").await;
    let ids = app.contacts(&key, 4, &[]).await;
    let hq = app.post("/v1/departments", &key, json!({"name": "总部"})).await.expect(201);
    let east = app.post("/v1/departments", &key, json!({"name": "华东区", "parent_id": hq["id"]})).await.expect(201);
    app.post("/v1/departments", &key, json!({"name": "x", "parent_id": "99999"}))
        .await
        .expect_error(400, "QF-INVALID-DEPARTMENT");
    let eid = east["id"].as_str().unwrap();
    app.post(&format!("/v1/departments/{eid}/members"), &key, json!({"contact_ids": [ids[0], ids[1]]}))
        .await
        .expect(200);
    let tree = app.get("/v1/departments", &key).await.expect(200);
    assert_eq!(tree[0]["children"][0]["n_contacts"], 2);
    let hid = hq["id"].as_str().unwrap();
    let id = app.draft(&key, "部门通知", json!({"department": hid})).await;
    app.post(&format!("/v1/broadcasts/{id}/send"), &key, json!({})).await.expect(202);
    assert_eq!(app.wait_completed(&key, &id).await["recipients"], 2);

    // A tag named like a number is found by its name, not taken for an id.
    let first = app.post("/v1/tags", &key, json!({"path": "先建"})).await.expect(201);
    let numeric = app.post("/v1/tags", &key, json!({"path": first["id"]})).await.expect(201);
    assert_ne!(numeric["id"], first["id"]);
    let b = app
        .post("/v1/broadcasts", &key, json!({"content": {"type": "text", "text": "x"}, "audience": {"tag": "1"}}))
        .await
        .expect(201);
    assert_eq!(b["audience"]["tag"], numeric["id"]);
    let tag = app.post("/v1/tags", &key, json!({"path": "活动/618"})).await.expect(201);
    let tid = tag["id"].as_str().unwrap();
    app.post(&format!("/v1/tags/{tid}/members"), &key, json!({"contact_ids": [ids[2], ids[3]]})).await.expect(200);
    app.call(Method::DELETE, &format!("/v1/tags/{tid}/members"), Some(&key), Some(json!({"contact_ids": [ids[3]]})))
        .await
        .expect(200);
    let id = app.draft(&key, "活动提醒", json!({"tag": "活动"})).await;
    app.post(&format!("/v1/broadcasts/{id}/send"), &key, json!({})).await.expect(202);
    assert_eq!(app.wait_completed(&key, &id).await["recipients"], 1);
    let tags = app.get("/v1/tags", &key).await.expect(200);
    let used = tags.as_array().unwrap().iter().find(|t| t["path"] == "活动").unwrap();
    assert!(used["last_used_at"].is_string(), "a send marks its tag used");

    // Images are stored by content hash and must exist before a send names them.
    let png = [0x89u8, b'P', b'N', b'G', 1, 2, 3];
    let m = app.raw("/v1/media", &key, "image/png", png.to_vec()).await.expect(201);
    let mid = m["media_id"].as_str().unwrap();
    assert_eq!(mid.len(), 64);
    let again = app.raw("/v1/media", &key, "image/png", png.to_vec()).await.expect(201);
    assert_eq!(again["media_id"], m["media_id"]);
    let got = app.http.get(format!("{}/v1/media/{mid}", app.base)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), &png);
    app.post(
        "/v1/broadcasts",
        &key,
        json!({"content": {"type": "image", "media_id": mid, "caption": "新品"}, "audience": {"all": true}}),
    )
    .await
    .expect(201);
    let missing = "0".repeat(64);
    app.post(
        "/v1/broadcasts",
        &key,
        json!({"content": {"type": "image", "media_id": missing}, "audience": {"all": true}}),
    )
    .await
    .expect_error(404, "QF-MEDIA-NOT-FOUND");
    app.post(
        "/v1/broadcasts",
        &key,
        json!({"content": {"type": "link", "url": "ftp://x", "title": "t"}, "audience": {"all": true}}),
    )
    .await
    .expect_error(400, "QF-INVALID-URL");
}

async fn operations_endpoints(app: TestApp) {
    let h = app.call(Method::GET, "/healthz", None, None).await.expect(200);
    assert_eq!(h["status"], "ok");
    let spec = app.call(Method::GET, "/openapi.json", None, None).await.expect(200);
    for path in
        ["/v1/workspaces", "/v1/contacts/import", "/v1/broadcasts/{id}/preflight", "/v1/inbox/{message_id}/read"]
    {
        assert!(spec["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
    }
    let docs = app.http.get(format!("{}/docs", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(docs.contains("swagger-ui-bundle.js"));
    let js = app.http.get(format!("{}/docs/swagger-ui-bundle.js", app.base)).send().await.unwrap();
    assert_eq!(js.status().as_u16(), 200);
    let (_, key) = app.workspace("personal").await;
    app.contacts(&key, 1, &[]).await;
    let id = app.draft(&key, "hi", json!({"all": true})).await;
    app.post(&format!("/v1/broadcasts/{id}/send"), &key, json!({})).await.expect(202);
    app.wait_completed(&key, &id).await;
    let metrics = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("qunfa_deliveries_total{class=\"broadcast\",channel=\"inbox\"} 1"), "{metrics}");
    assert!(metrics.contains("qunfa_delivery_latency_seconds_count{class=\"broadcast\",channel=\"inbox\"} 1"));
    assert!(metrics.contains("# TYPE qunfa_queue_batches gauge"));
    assert!(metrics.contains("# TYPE qunfa_event_deliveries_pending gauge"));
    assert!(metrics.contains("qunfa_http_requests_total{class=\"2xx\"}"));
    // Progress over SSE ends with the completed state.
    let sse = app
        .http
        .get(format!("{}/v1/broadcasts/{id}/events", app.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(sse.contains("event: progress") && sse.contains("\"state\":\"completed\""), "{sse}");
}

async fn no_panic_on_junk(app: TestApp) {
    let (_, key) = app.workspace("enterprise").await;
    app.contacts(&key, 1, &["t"]).await;
    let junk = [
        "null", "[]", "0", "\"x\"", "{}", "{\"content\":null}", "{\"content\":{\"type\":1}}",
        "{\"content\":{\"type\":\"text\",\"text\":\"\\u0000\"},\"audience\":{\"all\":true}}",
        "{\"content\":{\"type\":\"text\",\"text\":\"x\"},\"audience\":{\"contact_ids\":[\"-1\",\"18446744073709551616\"]}}",
        "{\"content\":{\"type\":\"text\",\"text\":\"x\"},\"audience\":{\"department\":\"0\"}}",
        "{\"content\":{\"type\":\"text\",\"text\":\"x\"},\"audience\":{\"tags\":[]}}",
        "{\"content\":{\"type\":\"miniprogram\",\"appid\":\"../../\",\"pagepath\":\"p\",\"title\":\"t\"},\"audience\":{\"all\":true}}",
        "{\"path\":\"\"}", "{\"external_id\":\"\u{202e}\"}", "{\"contact_ids\":[1,2]}", "\u{feff}{}",
    ];
    for path in [
        "/v1/broadcasts",
        "/v1/tags",
        "/v1/contacts",
        "/v1/departments",
        "/v1/tags/1/members",
        "/v1/members",
        "/v1/broadcasts/1/send",
        "/v1/broadcasts/1/approve",
    ] {
        for body in junk {
            let r = app.raw(path, &key, "application/json", body.to_owned()).await;
            assert!(r.status < 500, "{path} {body} -> {}", r.status);
        }
    }
    for path in [
        "/v1/contacts/99999999999999999999",
        "/v1/broadcasts/-1",
        "/v1/broadcasts/0/deliveries",
        "/v1/inbox/abc",
        "/v1/media/zz",
    ] {
        let r = app.get(path, &key).await;
        assert!(matches!(r.status, 401 | 404), "{path} -> {}", r.status);
    }
}

async fn audience_expressions(app: TestApp) {
    let (_, owner) = app.workspace("enterprise").await;
    let csv = "external_id,name,tags,city,spend,last_active\n\
               u1,张三,客户等级/金牌/华东,上海,16000,2026-11-01\n\
               u2,李四,客户等级/金牌,北京,15500,2020-01-01\n\
               u3,王五,客户等级/银牌|流失,上海,9000,2026-11-10\n\
               u4,赵六,,上海,100,\n";
    app.raw("/v1/contacts/import", &owner, "text/csv", csv).await.expect(200);
    let count = |expr: &str| {
        let (app, owner, expr) = (&app, owner.clone(), expr.to_owned());
        async move { app.post("/v1/audiences/count", &owner, json!({"expr": expr})).await }
    };
    let n = |v: Value| v["count"].as_u64().unwrap();
    assert_eq!(n(count("tag:客户等级").await.expect(200)), 3);
    assert_eq!(n(count("tag:\"客户等级/金牌\" & city = 上海").await.expect(200)), 1);
    assert_eq!(n(count("city = 上海 & spend > 5000 & !tag:流失").await.expect(200)), 1);
    assert_eq!(n(count("(tag:客户等级/银牌 | spend < 1000) & last_active > 2026-01-01").await.expect(200)), 1);
    assert!(count("all").await.expect(200)["took_ms"].as_f64().is_some());
    // A sample of the matches comes with the count: 5 by default, spread over them.
    let all = count("all").await.expect(200);
    let ids: Vec<&str> = all["sample"].as_array().unwrap().iter().map(|c| c["external_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["u1", "u2", "u3", "u4"]);
    let shanghai =
        app.post("/v1/audiences/count", &owner, json!({"expr": "city = 上海", "sample": 2})).await.expect(200);
    assert_eq!(shanghai["count"], 3);
    let picked: Vec<&str> =
        shanghai["sample"].as_array().unwrap().iter().map(|c| c["external_id"].as_str().unwrap()).collect();
    assert_eq!(picked, ["u1", "u3"], "ranks 0 and 1 of 3 spread over two picks");
    assert_eq!(shanghai["sample"][0]["attributes"]["city"], "上海");
    app.post("/v1/audiences/count", &owner, json!({"expr": "all", "sample": 51}))
        .await
        .expect_error(400, "QF-BAD-REQUEST");
    let none = app.post("/v1/audiences/count", &owner, json!({"expr": "all", "sample": 0})).await.expect(200);
    assert_eq!(none["sample"], json!([]));

    // Errors point at the position and suggest the fix.
    let e = count("tag:客户等级 & (city = 上海").await.expect_error(400, "QF-AUDIENCE-SYNTAX");
    assert_eq!(e["error"]["position"], 21, "the end, where ) is missing");
    assert!(e["error"]["hint"].as_str().unwrap().contains("add )"), "{e}");
    let e = count("city = 上海 & tag:\"客户等级/金\"").await.expect_error(400, "QF-AUDIENCE-UNKNOWN-TAG");
    assert_eq!(e["error"]["position"], 16, "the quoted path");
    assert_eq!(e["error"]["details"][0], "客户等级/金牌");
    assert!(e["error"]["hint"].as_str().unwrap().contains("客户等级/金牌"));
    let e = count("ctiy = 上海").await.expect_error(400, "QF-AUDIENCE-UNKNOWN-ATTRIBUTE");
    assert_eq!(e["error"]["details"], json!(["city"]));
    count("id:1").await.expect_error(404, "QF-NOT-FOUND");

    // A tag change is visible to the very next count.
    let contacts = app.get("/v1/contacts", &owner).await.expect(200);
    let zhao = contacts["items"][3]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        n(count(&format!("id:{zhao} | id in (1, {zhao})").replace("(1,", &format!("({zhao},"))).await.expect(200)),
        1
    );
    let tags = app.get("/v1/tags", &owner).await.expect(200);
    let lost =
        tags.as_array().unwrap().iter().find(|t| t["path"] == "流失").unwrap()["id"].as_str().unwrap().to_owned();
    app.post(&format!("/v1/tags/{lost}/members"), &owner, json!({"contact_ids": [zhao]})).await.expect(200);
    assert_eq!(n(count("tag:流失").await.expect(200)), 2);

    // A broadcast to an expression reaches exactly its contacts.
    let id = app.draft(&owner, "{{name}}您好", json!({"expr": "city = 上海 & !tag:流失"})).await;
    let b = app.get(&format!("/v1/broadcasts/{id}"), &owner).await.expect(200);
    assert_eq!(b["audience"], json!({"expr": "city = 上海 & !tag:流失"}));
    let pf = app.post(&format!("/v1/broadcasts/{id}/preflight"), &owner, json!({})).await.expect(200);
    assert_eq!((pf["ok"].as_bool(), pf["recipients"].as_u64()), (Some(true), Some(1)), "{pf}");
    app.post(&format!("/v1/broadcasts/{id}/send"), &owner, json!({})).await.expect(202);
    let done = app.wait_completed(&owner, &id).await;
    assert_eq!(done["counts"]["delivered"], 1);
    let bad = app
        .post(
            "/v1/broadcasts",
            &owner,
            json!({"content": {"type": "text", "text": "x"}, "audience": {"expr": "tag:无此标签"}}),
        )
        .await;
    bad.expect_error(400, "QF-AUDIENCE-UNKNOWN-TAG");

    // Personal workspaces: one tag or picked contacts, never a combination.
    let (_, personal) = app.workspace("personal").await;
    app.contacts(&personal, 3, &["好友"]).await;
    let one = app.draft(&personal, "hi", json!({"expr": "tag:好友"})).await;
    let pf = app.post(&format!("/v1/broadcasts/{one}/preflight"), &personal, json!({})).await.expect(200);
    assert_eq!((pf["ok"].as_bool(), pf["recipients"].as_u64()), (Some(true), Some(3)), "{pf}");
    app.post("/v1/segments", &personal, json!({"name": "朋友们", "expr": "tag:好友"})).await.expect(201);
    let seg = app.draft(&personal, "hi", json!({"segment": "朋友们"})).await;
    let pf = app.post(&format!("/v1/broadcasts/{seg}/preflight"), &personal, json!({})).await.expect(200);
    assert_eq!(pf["ok"], true, "a segment of one tag is one tag: {pf}");
    let combo = app.draft(&personal, "hi", json!({"expr": "tag:好友 & city = 上海"})).await;
    let pf = app.post(&format!("/v1/broadcasts/{combo}/preflight"), &personal, json!({})).await.expect(200);
    assert_eq!(pf["verdicts"][0]["code"], "QF-AUDIENCE-COMBINATION", "{pf}");
    assert!(pf["verdicts"][0]["hint"].as_str().is_some_and(|h| !h.is_empty()));
}

async fn segments_bulk_tagging_and_tag_report(app: TestApp) {
    let (_, owner) = app.workspace("enterprise").await;
    let csv = "external_id,name,tags,city,spend\n\
               u1,张三,客户等级/金牌,上海,16000\n\
               u2,李四,客户等级/银牌,北京,15500\n\
               u3,王五,,上海,9000\n\
               u4,赵六,,上海,100\n";
    app.raw("/v1/contacts/import", &owner, "text/csv", csv).await.expect(200);

    // A saved segment is evaluated when used, and usable inside expressions.
    let seg = app
        .post("/v1/segments", &owner, json!({"name": "上海高消费", "expr": "city = 上海 & spend > 5000"}))
        .await
        .expect(201);
    assert_eq!(seg["count"], 2);
    app.post("/v1/segments", &owner, json!({"name": "上海高消费", "expr": "all"}))
        .await
        .expect_error(409, "QF-DUPLICATE");
    app.post("/v1/segments", &owner, json!({"name": "坏", "expr": "city ="}))
        .await
        .expect_error(400, "QF-AUDIENCE-SYNTAX");
    let count = |expr: &str| {
        let (app, owner, expr) = (&app, owner.clone(), expr.to_owned());
        async move { app.post("/v1/audiences/count", &owner, json!({"expr": expr})).await }
    };
    assert_eq!(count("segment:上海高消费 & !tag:客户等级").await.expect(200)["count"], 1);
    let e = count("segment:上海高消").await.expect_error(400, "QF-AUDIENCE-UNKNOWN-SEGMENT");
    assert_eq!(e["error"]["details"], json!(["上海高消费"]));
    app.post("/v1/segments", &owner, json!({"name": "套娃", "expr": "segment:套娃 | all"}))
        .await
        .expect_error(400, "QF-AUDIENCE-UNKNOWN-SEGMENT");

    // Bulk tagging by expression; the change is visible to the segment at once.
    let vip = app.post("/v1/tags", &owner, json!({"path": "VIP"})).await.expect(201);
    let vip_id = vip["id"].as_str().unwrap();
    let r = app
        .post(&format!("/v1/tags/{vip_id}/members"), &owner, json!({"expr": "segment:上海高消费"}))
        .await
        .expect(200);
    assert_eq!(r["changed"], 2);
    let r = app.post(&format!("/v1/tags/{vip_id}/members"), &owner, json!({"expr": "spend > 5000"})).await.expect(200);
    assert_eq!(r["changed"], 1, "only 李四 is new");
    assert_eq!(count("tag:VIP").await.expect(200)["count"], 3);
    let r = app
        .call(Method::DELETE, &format!("/v1/tags/{vip_id}/members"), Some(&owner), Some(json!({"expr": "city = 北京"})))
        .await
        .expect(200);
    assert_eq!(r["changed"], 1);
    app.post(&format!("/v1/tags/{vip_id}/members"), &owner, json!({"expr": "all", "contact_ids": []}))
        .await
        .expect_error(400, "QF-BAD-REQUEST");

    // Send to the segment: evaluated at dispatch.
    let id = app.draft(&owner, "hi", json!({"segment": "上海高消费"})).await;
    let pf = app.post(&format!("/v1/broadcasts/{id}/preflight"), &owner, json!({})).await.expect(200);
    assert_eq!(pf["recipients"], 2, "{pf}");
    app.post(&format!("/v1/broadcasts/{id}/send"), &owner, json!({})).await.expect(202);
    assert_eq!(app.wait_completed(&owner, &id).await["counts"]["delivered"], 2);
    let list = app.get("/v1/segments", &owner).await.expect(200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let seg_id = seg["id"].as_str().unwrap();
    app.call(Method::DELETE, &format!("/v1/segments/{seg_id}"), Some(&owner), None).await.expect(204);
    app.get(&format!("/v1/segments/{seg_id}"), &owner).await.expect_error(404, "QF-NOT-FOUND");

    // The tag report: sizes with sub-tags, last use, dormancy.
    let report = app.get("/v1/tags/report", &owner).await.expect(200);
    assert_eq!(report["dormant_days"], 90);
    let line = |path: &str| report["items"].as_array().unwrap().iter().find(|i| i["path"] == path).unwrap().clone();
    assert_eq!((line("客户等级")["size"].as_u64(), line("客户等级")["n_contacts"].as_u64()), (Some(2), Some(0)));
    assert_eq!(line("VIP")["size"], 2);
    assert_eq!(line("VIP")["dormant"], false, "just created");
    let id = app.draft(&owner, "hi", json!({"expr": "tag:VIP"})).await;
    app.post(&format!("/v1/broadcasts/{id}/send"), &owner, json!({})).await.expect(202);
    app.wait_completed(&owner, &id).await;
    let report = app.get("/v1/tags/report", &owner).await.expect(200);
    let vip_line = report["items"].as_array().unwrap().iter().find(|i| i["path"] == "VIP").unwrap().clone();
    assert!(vip_line["last_used_at"].is_string(), "a send by expression marks its tags used: {vip_line}");
}

/// Speed levels, pause and resume, retry-failed and flash messages over HTTP.
async fn delivery_controls(app: TestApp) {
    let (_, key) = app.workspace("enterprise").await;
    let (_, sender) = app.member(&key, "sender").await;
    let (_, reviewer) = app.member(&key, "reviewer").await;
    app.contacts(&key, 5_000, &[]).await;
    assert_eq!(app.get("/v1/speed", &key).await.expect(200), json!({"level": null, "per_minute": null}));
    app.call(Method::PUT, "/v1/speed", Some(&key), Some(json!({"level": 5}))).await.expect_error(400, "QF-BAD-REQUEST");
    app.call(Method::PUT, "/v1/speed", Some(&sender), Some(json!({"level": 1})))
        .await
        .expect_error(403, "QF-AUTH-FORBIDDEN");
    // Level 4 (100,000 a minute): the 5,000 go as 2,000 now, 2,000 after 1.2 s, 1,000 after 0.6 s more.
    let set = app.call(Method::PUT, "/v1/speed", Some(&key), Some(json!({"level": 4}))).await.expect(200);
    assert_eq!(set, json!({"level": 4, "per_minute": 100_000}));

    let id = app.draft(&sender, "分批通知", json!({"all": true})).await;
    app.post(&format!("/v1/broadcasts/{id}/pause"), &sender, json!({})).await.expect_error(409, "QF-STATE-CONFLICT");
    app.post(&format!("/v1/broadcasts/{id}/send"), &sender, json!({})).await.expect(202);
    app.post(&format!("/v1/broadcasts/{id}/approve"), &reviewer, json!({})).await.expect(202);
    let paused = app.post(&format!("/v1/broadcasts/{id}/pause"), &sender, json!({})).await.expect(200);
    assert_eq!(paused["state"], "paused");
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let still = app.get(&format!("/v1/broadcasts/{id}"), &key).await.expect(200);
    assert_eq!(still["state"], "paused");
    assert!(still["counts"]["delivered"].as_u64().unwrap() <= 2_000, "{still}");
    // Unthrottled again, and resumed: the rest goes at once.
    app.call(Method::PUT, "/v1/speed", Some(&key), Some(json!({"level": null}))).await.expect(200);
    assert_eq!(
        app.post(&format!("/v1/broadcasts/{id}/resume"), &sender, json!({})).await.expect(200)["state"],
        "sending"
    );
    let done = app.wait_completed(&key, &id).await;
    assert_eq!(done["counts"]["delivered"], 5_000);
    // Nothing failed: nothing to re-drive.
    app.post(&format!("/v1/broadcasts/{id}/retry-failed"), &sender, json!({}))
        .await
        .expect_error(409, "QF-STATE-CONFLICT");

    // Flash messages: the time to live is bounded by the policy.
    let flash = |ttl: u64| json!({"content": {"type": "text", "text": "阅后即焚"}, "audience": {"all": true}, "ttl_seconds": ttl});
    app.post("/v1/broadcasts", &sender, flash(5)).await.expect_error(400, "QF-BAD-REQUEST");
    let b = app.post("/v1/broadcasts", &sender, flash(600)).await.expect(201);
    assert_eq!(b["ttl_seconds"], 600);
    assert_eq!(b["expires_at"], Value::Null, "the clock starts at dispatch");
}

/// What the loopback webhook receiver saw, and how it answers.
#[derive(Default)]
struct Receiver {
    /// (path name, idempotency key, signature valid, body)
    requests: Vec<(String, String, bool, Value)>,
    fixed: bool,
}

const HOOK_SECRET: &str = "whsec_test_0123456789";

async fn hook(
    axum::extract::State(r): axum::extract::State<std::sync::Arc<std::sync::Mutex<Receiver>>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, &'static str) {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let ts: i64 = h("x-qunfa-timestamp").parse().unwrap_or(0);
    let valid = qunfa_core::sign::verify(HOOK_SECRET.as_bytes(), ts, &body, &h("x-qunfa-signature"));
    let (seen, fixed) = {
        let mut r = r.lock().unwrap();
        let seen = r.requests.iter().filter(|x| x.0 == name).count();
        r.requests.push((name.clone(), h("idempotency-key"), valid, serde_json::from_slice(&body).unwrap_or_default()));
        (seen, r.fixed)
    };
    use axum::http::StatusCode as S;
    match name.as_str() {
        "flaky" if seen == 0 => (S::SERVICE_UNAVAILABLE, "try later"),
        "slow" if seen == 0 => {
            tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
            (S::OK, "late")
        }
        "bad" if !fixed => (S::BAD_REQUEST, "unknown user"),
        "down" if !fixed => (S::INTERNAL_SERVER_ERROR, "boom"),
        _ => (S::OK, "ok"),
    }
}

/// The webhook channel end to end against a receiver on loopback: signed
/// requests, one idempotency key per recipient, retries of 5xx and timeouts,
/// refusals and missing addresses recorded with their codes, dead letters after
/// the last attempt, and retry-failed re-driving exactly the failed ones.
async fn webhook_channel(app: TestApp) {
    let receiver = std::sync::Arc::new(std::sync::Mutex::new(Receiver::default()));
    let router = axum::Router::new().route("/hook/{name}", axum::routing::post(hook)).with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });

    let (_, key) = app.workspace("enterprise").await;
    let names = ["ok1", "ok2", "flaky", "slow", "bad", "down"];
    let mut body: String = names
        .iter()
        .map(|n| {
            json!({"external_id": n, "name": format!("用户{n}"), "channels": {"webhook": format!("{base}/hook/{n}")}})
                .to_string()
                + "\n"
        })
        .collect();
    body.push_str("{\"external_id\":\"nohook\"}\n");
    // A peer that answers garbage instead of HTTP.
    let junk = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let junk_url = format!("http://{}/hook", junk.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = junk.accept().await {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let _ = conn.write_all(b"BANANA/9 what\r\n\r\n\x00\xff").await;
        }
    });
    body.push_str(&(json!({"external_id": "junk", "channels": {"webhook": junk_url}}).to_string() + "\n"));
    app.raw("/v1/contacts/import", &key, "application/x-ndjson", body).await.expect(200);
    let b = app
        .post(
            "/v1/broadcasts",
            &key,
            json!({"content": {"type": "text", "text": "{{name}}，您好"}, "audience": {"all": true}, "channels": ["webhook"]}),
        )
        .await
        .expect(201);
    let id = b["id"].as_str().unwrap().to_owned();
    app.post(&format!("/v1/broadcasts/{id}/send"), &key, json!({})).await.expect(202);
    let done = app.wait_completed(&key, &id).await;
    assert_eq!((done["counts"]["delivered"].as_u64(), done["counts"]["failed"].as_u64()), (Some(4), Some(4)), "{done}");

    let log = app.get(&format!("/v1/broadcasts/{id}/deliveries?limit=50"), &key).await.expect(200);
    let codes: Vec<(String, Value)> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["state"] == "failed")
        .map(|d| (d["error_code"].as_str().unwrap().to_owned(), d["last_error"].clone()))
        .collect();
    assert!(codes.contains(&("QF-DELIVERY-REJECTED".into(), json!("HTTP 400: unknown user"))), "{codes:?}");
    assert!(codes.contains(&("QF-DELIVERY-FAILED".into(), json!("HTTP 500"))), "{codes:?}");
    assert!(codes.iter().any(|c| c.0 == "QF-CHANNEL-NO-ADDRESS"), "{codes:?}");
    assert_eq!(codes.iter().filter(|c| c.0 == "QF-DELIVERY-FAILED").count(), 2, "down and junk: {codes:?}");
    {
        let r = receiver.lock().unwrap();
        assert!(r.requests.iter().all(|x| x.2), "every request is signed with the secret");
        let count = |n: &str| r.requests.iter().filter(|x| x.0 == n).count();
        assert_eq!((count("ok1"), count("bad"), count("flaky"), count("down")), (1, 1, 2, 4));
        assert!(count("slow") >= 2, "a timeout is retried");
        // A retry carries the key of the first try; every recipient has its own.
        for n in names {
            let keys: std::collections::HashSet<&str> =
                r.requests.iter().filter(|x| x.0 == n).map(|x| x.1.as_str()).collect();
            assert_eq!(keys.len(), 1, "{n}: {keys:?}");
        }
        let all: std::collections::HashSet<&str> = r.requests.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(all.len(), 6);
        let ok1 = &r.requests.iter().find(|x| x.0 == "ok1").unwrap().3;
        assert_eq!(
            (ok1["text"].as_str(), ok1["external_id"].as_str()),
            (Some("用户ok1，您好\n\n来自enterprise ws"), Some("ok1"))
        );
        assert_eq!(ok1["broadcast_id"], id.as_str());
    }
    // The endpoints are fixed: retry-failed sends exactly the failed ones again.
    receiver.lock().unwrap().fixed = true;
    let before = receiver.lock().unwrap().requests.len();
    let r = app.post(&format!("/v1/broadcasts/{id}/retry-failed"), &key, json!({})).await.expect(202);
    assert_eq!(r["redriven"], 4);
    let done = app.wait_completed(&key, &id).await;
    // The junk peer still answers junk, the contact without an address has none.
    assert_eq!((done["counts"]["delivered"].as_u64(), done["counts"]["failed"].as_u64()), (Some(6), Some(2)), "{done}");
    assert_eq!(done["counts"]["redriven"], 4);
    let r = receiver.lock().unwrap();
    let again: Vec<&str> = r.requests[before..].iter().map(|x| x.0.as_str()).collect();
    assert_eq!(again.len(), 2, "{again:?}");
    assert!(again.contains(&"bad") && again.contains(&"down"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_webhook_channel() {
    webhook_channel(support::spawn_app_with(Backend::Sqlite, Some(HOOK_SECRET)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_webhook_channel() {
    webhook_channel(support::spawn_app_with(Backend::Postgres, Some(HOOK_SECRET)).await).await;
}
