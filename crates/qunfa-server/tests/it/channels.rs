//! Channels beyond the inbox, black-box through the HTTP API: per-workspace
//! settings, consent and unsubscribe links, fallback orders, outgoing event
//! webhooks (signatures checked with an independent HMAC implementation).

use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::TestApp;

/// HMAC-SHA256 of `ts.body`, as `sha256=<hex>`, with the `hmac` crate (not
/// qunfa's own implementation).
pub fn independent_signature(secret: &[u8], ts: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A loopback receiver of signed POSTs: records (path, headers, body) and
/// answers with the status of its path (`/fail` → 500).
#[derive(Default)]
pub struct Sink {
    pub requests: Vec<(String, axum::http::HeaderMap, Vec<u8>)>,
}

pub async fn sink() -> (Arc<Mutex<Sink>>, String) {
    async fn take(
        axum::extract::State(s): axum::extract::State<Arc<Mutex<Sink>>>,
        axum::extract::Path(name): axum::extract::Path<String>,
        headers: axum::http::HeaderMap,
        body: axum::body::Bytes,
    ) -> axum::http::StatusCode {
        s.lock().unwrap().requests.push((name.clone(), headers, body.to_vec()));
        if name == "fail" {
            axum::http::StatusCode::INTERNAL_SERVER_ERROR
        } else {
            axum::http::StatusCode::OK
        }
    }
    let state = Arc::new(Mutex::new(Sink::default()));
    let router = axum::Router::new().route("/{name}", axum::routing::post(take)).with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (state, base)
}

async fn put(app: &TestApp, path: &str, key: &str, body: Value) -> crate::support::Resp {
    app.call(Method::PUT, path, Some(key), Some(body)).await
}

/// Settings are checked field by field, kept per workspace, shown with
/// secrets masked, changed only by admins; a broadcast on a channel the
/// workspace did not set up is blocked by preflight with the fix.
pub async fn channel_settings(app: TestApp) {
    let (_, key) = app.workspace("enterprise").await;
    let (_, sender) = app.member(&key, "sender").await;
    let smtp = json!({"host": "smtp.example.com", "port": 2525, "security": "starttls", "username": "news", "password": "s3cret", "from": "店铺 <news@example.com>", "per_minute": 600});

    // Bad input: a clear error naming the field, nothing stored.
    let e = put(&app, "/v1/channels/email", &key, json!({"host": "smtp.example.com", "from": "nobody"}))
        .await
        .expect_error(400, "QF-CHANNEL-SETTINGS");
    assert_eq!(e["error"]["details"][0]["field"], "from", "{e}");
    put(&app, "/v1/channels/email", &key, json!({"host": "h", "from": "a@b.co", "colour": "red"}))
        .await
        .expect_error(400, "QF-CHANNEL-SETTINGS");
    put(&app, "/v1/channels/inbox", &key, json!({})).await.expect_error(400, "QF-CHANNEL-SETTINGS");
    put(&app, "/v1/channels/fax", &key, json!({})).await.expect_error(400, "QF-INVALID-CHANNEL");
    // SSRF: a private or metadata address is refused unless allowed.
    put(&app, "/v1/channels/webhook", &key, json!({"endpoint": "http://169.254.169.254/latest"}))
        .await
        .expect_error(422, "QF-ADDRESS-PRIVATE");
    put(
        &app,
        "/v1/channels/sms",
        &key,
        json!({"base_url": "http://10.1.2.3", "api_key": "k", "sign_name": "s", "template_id": "t"}),
    )
    .await
    .expect_error(422, "QF-ADDRESS-PRIVATE");
    put(&app, "/v1/channels/email", &key, json!({"host": "127.0.0.1", "from": "a@b.co"}))
        .await
        .expect_error(422, "QF-ADDRESS-PRIVATE");
    put(&app, "/v1/channels/email", &sender, smtp.clone()).await.expect_error(403, "QF-AUTH-FORBIDDEN");
    let list = app.get("/v1/channels", &key).await.expect(200);
    assert_eq!(list.as_array().unwrap().len(), 1, "only the inbox: {list}");

    // Preflight says which channel is missing and how to set it up.
    let cid = app.contacts(&key, 1, &[]).await;
    let b = app
        .post(
            "/v1/broadcasts",
            &key,
            json!({"content": {"type": "text", "text": "hi"}, "audience": {"contact_ids": cid}, "channels": ["inbox", "email"]}),
        )
        .await
        .expect(201);
    let id = b["id"].as_str().unwrap();
    let pf = app.post(&format!("/v1/broadcasts/{id}/preflight"), &key, json!({})).await.expect(200);
    assert_eq!(pf["ok"], false);
    assert!(pf["verdicts"].as_array().unwrap().iter().any(|v| v["code"] == "QF-CHANNEL-NOT-CONFIGURED"), "{pf}");
    app.post(&format!("/v1/broadcasts/{id}/send"), &key, json!({}))
        .await
        .expect_error(422, "QF-CHANNEL-NOT-CONFIGURED");

    // Stored, masked, the password kept when left out.
    let got = put(&app, "/v1/channels/email", &key, smtp.clone()).await.expect(200);
    assert_eq!(got["settings"]["password"], "********");
    assert_eq!(got["settings"]["port"], 2525);
    assert_eq!(got["settings"]["per_minute"], 600);
    let mut changed = smtp.clone();
    changed.as_object_mut().unwrap().remove("password");
    changed["port"] = json!(587);
    put(&app, "/v1/channels/email", &key, changed).await.expect(200);
    let one = app.get("/v1/channels/email", &key).await.expect(200);
    assert_eq!((one["settings"]["port"].as_u64(), one["settings"]["password"].as_str()), (Some(587), Some("********")));
    let text = serde_json::to_string(&app.get("/v1/channels", &key).await.expect(200)).unwrap();
    assert!(!text.contains("s3cret"), "no secret in any answer: {text}");
    // A webhook without a secret gets one, shown once.
    let w =
        put(&app, "/v1/channels/webhook", &key, json!({"endpoint": "https://hooks.example.com/in"})).await.expect(200);
    let secret = w["generated_secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_") && secret.len() > 16);
    assert_eq!(w["settings"]["secret"], "********");
    let again = put(&app, "/v1/channels/webhook", &key, json!({"coalesce": 5})).await.expect(200);
    assert_eq!(again["generated_secret"], Value::Null, "the secret is kept");

    // Now the preflight passes; another workspace sees none of it.
    let pf = app.post(&format!("/v1/broadcasts/{id}/preflight"), &key, json!({})).await.expect(200);
    assert!(!pf["verdicts"].as_array().unwrap().iter().any(|v| v["code"] == "QF-CHANNEL-NOT-CONFIGURED"), "{pf}");
    let (_, other) = app.workspace("enterprise").await;
    app.get("/v1/channels/email", &other).await.expect_error(404, "QF-NOT-FOUND");
    app.call(Method::DELETE, "/v1/channels/email", Some(&key), None).await.expect(204);
    app.get("/v1/channels/email", &key).await.expect_error(404, "QF-NOT-FOUND");
    let audit = app.get("/v1/audit?limit=200", &key).await.expect(200);
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(actions.contains(&"channel.configured") && actions.contains(&"channel.removed"), "{actions:?}");
    assert!(!audit.to_string().contains("s3cret"));
}

/// Consent is honoured when a batch is sent: a refusal (consent false, or
/// the one-click unsubscribe link) gives a `filtered` record with the reason
/// and a count, never a silent drop; only the contact can undo an unsubscribe.
pub async fn consent_and_unsubscribe(app: TestApp) {
    let (ws, key) = app.workspace("enterprise").await;
    let ws: i64 = ws.parse().unwrap();
    let body = [
        json!({"external_id": "yes", "consent": {"inbox": true}}),
        json!({"external_id": "no", "consent": {"inbox": false}}),
        json!({"external_id": "quiet"}),
    ]
    .iter()
    .map(|v| v.to_string() + "\n")
    .collect::<String>();
    app.raw("/v1/contacts/import", &key, "application/x-ndjson", body).await.expect(200);
    let b = app.draft(&key, "第一条", json!({"all": true})).await;
    app.post(&format!("/v1/broadcasts/{b}/send"), &key, json!({})).await.expect(202);
    let done = app.wait_completed(&key, &b).await;
    let c = &done["counts"];
    assert_eq!(
        (c["delivered"].as_u64(), c["filtered"].as_u64(), c["queued"].as_u64()),
        (Some(2), Some(1), Some(0)),
        "{done}"
    );
    let log = app.get(&format!("/v1/broadcasts/{b}/deliveries?limit=10"), &key).await.expect(200);
    let filtered: Vec<&Value> = log["items"].as_array().unwrap().iter().filter(|d| d["state"] == "filtered").collect();
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0]["error_code"], "QF-UNSUBSCRIBED");

    // The unsubscribe link of "quiet" (as a message would carry it).
    let contacts = app.get("/v1/contacts?limit=10", &key).await.expect(200);
    let quiet = contacts["items"].as_array().unwrap().iter().find(|c| c["external_id"] == "quiet").unwrap();
    let quiet_id: i64 = quiet["id"].as_str().unwrap().parse().unwrap();
    let idx = (quiet_id & 0xffff_ffff) as u32;
    let store = app.store.clone();
    let link_key = tokio::task::spawn_blocking(move || store.link_key().unwrap()).await.unwrap();
    let token = qunfa_core::sign::link_token(&link_key, &qunfa_core::sign::unsubscribe_purpose(ws, idx, "inbox"));
    let url = format!("{}/u/{ws}/{idx}/inbox/{token}", app.base);
    // A GET (a link scanner) changes nothing; it shows the confirmation.
    let page = app.http.get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<form method=\"post\""));
    // A forged or edited link is refused.
    let forged = format!("{}/u/{ws}/{}/inbox/{token}", app.base, idx + 1);
    assert_eq!(app.http.post(&forged).send().await.unwrap().status(), 404);
    assert_eq!(app.http.get(format!("{}/u/{ws}/{idx}/inbox/00", app.base)).send().await.unwrap().status(), 404);
    // RFC 8058 one-click POST, no login.
    let r = app
        .http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("已退订"));
    assert_eq!(app.http.post(&url).send().await.unwrap().status(), 200, "repeating changes nothing");
    let quiet_now = app.get(&format!("/v1/contacts/{quiet_id}"), &key).await.expect(200);
    assert_eq!(quiet_now["consent"]["inbox"], false);
    assert_eq!(quiet_now["opt_outs"], json!([{"channel": "inbox", "reason": "unsubscribed"}]));
    // An operator cannot re-subscribe them by setting consent.
    app.call(Method::PATCH, &format!("/v1/contacts/{quiet_id}"), Some(&key), Some(json!({"consent": {"inbox": true}})))
        .await
        .expect(200);
    // But consent given for "no" does lift their earlier refusal.
    let no = contacts["items"].as_array().unwrap().iter().find(|c| c["external_id"] == "no").unwrap();
    let no_id = no["id"].as_str().unwrap();
    app.call(Method::PATCH, &format!("/v1/contacts/{no_id}"), Some(&key), Some(json!({"consent": {"inbox": true}})))
        .await
        .expect(200);

    let b2 = app.draft(&key, "第二条", json!({"all": true})).await;
    app.post(&format!("/v1/broadcasts/{b2}/send"), &key, json!({})).await.expect(202);
    let done = app.wait_completed(&key, &b2).await;
    assert_eq!(
        (done["counts"]["delivered"].as_u64(), done["counts"]["filtered"].as_u64()),
        (Some(2), Some(1)),
        "{done}"
    );
    let log = app.get(&format!("/v1/broadcasts/{b2}/deliveries?limit=10"), &key).await.expect(200);
    let filtered: Vec<i64> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["state"] == "filtered")
        .map(|d| d["contact_id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(filtered, vec![quiet_id]);
    // A refused (filtered) inbox record is not in the recipient's inbox.
    let t = app.post(&format!("/v1/contacts/{quiet_id}/inbox-token"), &key, json!({})).await.expect(201);
    let quiet_token = t["token"].as_str().unwrap();
    let inbox = app.get("/v1/inbox", quiet_token).await.expect(200);
    let ids: Vec<&str> = inbox["items"].as_array().unwrap().iter().map(|m| m["message_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [b.as_str()], "the first message only, not the filtered second: {inbox}");
    app.post(&format!("/v1/inbox/{b2}/read"), quiet_token, json!({})).await.expect_error(404, "QF-NOT-FOUND");
    // The recipient can also stop a channel from the inbox.
    let yes = contacts["items"].as_array().unwrap().iter().find(|c| c["external_id"] == "yes").unwrap();
    let t = app
        .post(&format!("/v1/contacts/{}/inbox-token", yes["id"].as_str().unwrap()), &key, json!({}))
        .await
        .expect(201);
    let token = t["token"].as_str().unwrap();
    let u = app.post("/v1/inbox/unsubscribe", token, json!({"channel": "email"})).await.expect(200);
    assert_eq!(u["changed"], true);
    app.post("/v1/inbox/unsubscribe", token, json!({"channel": "pigeon"}))
        .await
        .expect_error(400, "QF-INVALID-CHANNEL");
}

/// A fallback order is checked when the draft is made and shown with it.
pub async fn fallback_order_checked(app: TestApp) {
    let (_, key) = app.workspace("enterprise").await;
    let ids = app.contacts(&key, 2, &[]).await;
    let draft = |fallback: Value| json!({"content": {"type": "text", "text": "重要通知"}, "audience": {"contact_ids": ids}, "channels": ["inbox"], "fallback": fallback});
    for bad in [
        json!([{"channel": "inbox", "when": "unread", "after_seconds": 3600}]),
        json!([{"channel": "sms", "when": "unread", "after_seconds": 3600}, {"channel": "email", "when": "unread", "after_seconds": 600}]),
        json!([{"channel": "email", "when": "later", "after_seconds": 3600}]),
        json!([{"channel": "email", "when": "unread", "after_seconds": 5}]),
        json!([{"channel": "email", "when": "unread", "after_seconds": 3600}, {"channel": "email", "when": "failed", "after_seconds": 600}]),
    ] {
        app.post("/v1/broadcasts", &key, draft(bad)).await.expect_error(400, "QF-INVALID-FALLBACK");
    }
    let good = json!([{"channel": "email", "when": "unread", "after_seconds": 7200}, {"channel": "sms", "when": "failed", "after_seconds": 600}]);
    let b = app.post("/v1/broadcasts", &key, draft(good.clone())).await.expect(201);
    assert_eq!(b["fallback"], good);
    assert_eq!(b["counts"]["total"], 0, "a draft has no recipients yet");
    // Preflight wants the fallback channels set up too.
    let id = b["id"].as_str().unwrap();
    let pf = app.post(&format!("/v1/broadcasts/{id}/preflight"), &key, json!({})).await.expect(200);
    let missing: Vec<&Value> =
        pf["verdicts"].as_array().unwrap().iter().filter(|v| v["code"] == "QF-CHANNEL-NOT-CONFIGURED").collect();
    assert_eq!(missing.len(), 2, "{pf}");
}

/// Outgoing event webhooks: state changes, replies, reports and unsubscribes
/// reach the endpoint signed (checked with an independent HMAC), failures are
/// retried and logged, a logged event can be redelivered, and an endpoint on
/// a private network needs an explicit allowance.
pub async fn event_webhooks(app: TestApp) {
    let (sink, base) = sink().await;
    let (_, key) = app.workspace("enterprise").await;
    app.post("/v1/event-endpoints", &key, json!({"url": format!("{base}/events")}))
        .await
        .expect_error(422, "QF-ADDRESS-PRIVATE");
    app.post("/v1/event-endpoints", &key, json!({"url": "ftp://x"})).await.expect_error(400, "QF-INVALID-URL");
    app.post(
        "/v1/event-endpoints",
        &key,
        json!({"url": format!("{base}/x"), "events": ["nope"], "allow_private_networks": true}),
    )
    .await
    .expect_error(400, "QF-BAD-REQUEST");
    let ep = app
        .post("/v1/event-endpoints", &key, json!({"url": format!("{base}/events"), "allow_private_networks": true}))
        .await
        .expect(201);
    let secret = ep["secret"].as_str().unwrap().to_owned();
    let failing = app
        .post(
            "/v1/event-endpoints",
            &key,
            json!({"url": format!("{base}/fail"), "events": ["report.received"], "allow_private_networks": true, "secret": "0123456789abcdef-fail"}),
        )
        .await
        .expect(201);
    let listed = app.get("/v1/event-endpoints", &key).await.expect(200);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[0]["secret"], Value::Null, "secrets are shown once");

    let ids = app.contacts(&key, 3, &[]).await;
    let b = app.draft(&key, "活动通知", json!({"contact_ids": ids})).await;
    app.post(&format!("/v1/broadcasts/{b}/send"), &key, json!({})).await.expect(202);
    app.wait_completed(&key, &b).await;
    let t = app.post(&format!("/v1/contacts/{}/inbox-token", ids[0]), &key, json!({})).await.expect(201);
    let token = t["token"].as_str().unwrap();
    app.post(&format!("/v1/inbox/{b}/reply"), token, json!({"text": "收到"})).await.expect(201);
    let r = app.post(&format!("/v1/inbox/{b}/report"), token, json!({"reason": "spam"})).await.expect(200);
    assert_eq!(r["first_report"], true);
    let r = app.post(&format!("/v1/inbox/{b}/report"), token, json!({"reason": "spam"})).await.expect(200);
    assert_eq!(r["first_report"], false, "one report per recipient");
    app.post(&format!("/v1/inbox/{b}/report"), token, json!({"reason": "boring"}))
        .await
        .expect_error(400, "QF-BAD-REQUEST");

    // Wait for: sending, completed, reply, report on the good endpoint.
    let mut types = Vec::new();
    for _ in 0..200 {
        types = sink
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.0 == "events")
            .map(|r| r.1.get("x-qunfa-event").unwrap().to_str().unwrap().to_owned())
            .collect::<Vec<_>>();
        if types.len() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    types.sort();
    assert_eq!(types, ["broadcast.state_changed", "broadcast.state_changed", "reply.received", "report.received"]);
    {
        let s = sink.lock().unwrap();
        for (name, headers, body) in s.requests.iter().filter(|r| r.0 == "events") {
            let ts = headers.get("x-qunfa-timestamp").unwrap().to_str().unwrap();
            let sig = headers.get("x-qunfa-signature").unwrap().to_str().unwrap();
            assert_eq!(sig, independent_signature(secret.as_bytes(), ts, body), "{name}");
            let event: Value = serde_json::from_slice(body).unwrap();
            assert_eq!(headers.get("idempotency-key").unwrap().to_str().unwrap(), event["id"].as_str().unwrap());
            if event["type"] == "reply.received" {
                assert_eq!(event["data"]["broadcast_id"], b.as_str());
                assert!(event["data"].get("text").is_none(), "events are thin: the text stays behind the API");
            }
        }
        let states: Vec<String> = s
            .requests
            .iter()
            .filter_map(|r| serde_json::from_slice::<Value>(&r.2).ok())
            .filter(|e| e["type"] == "broadcast.state_changed")
            .map(|e| e["data"]["state"].as_str().unwrap().to_owned())
            .collect();
        assert!(states.contains(&"sending".into()) && states.contains(&"completed".into()), "{states:?}");
    }
    // The failing endpoint: retried, and the log says why.
    let fid = failing["id"].as_str().unwrap();
    let mut log = Value::Null;
    for _ in 0..200 {
        log = app.get(&format!("/v1/event-endpoints/{fid}/deliveries"), &key).await.expect(200);
        if log["items"][0]["attempts"].as_i64().unwrap_or(0) >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let first = &log["items"][0];
    assert_eq!((first["type"].as_str(), first["last_status"].as_i64()), (Some("report.received"), Some(500)), "{log}");
    assert!(first["attempts"].as_i64().unwrap() >= 2, "{log}");
    // Redelivery by hand: a new delivery; the good endpoint's one goes through.
    let eid = ep["id"].as_str().unwrap();
    let good_log = app.get(&format!("/v1/event-endpoints/{eid}/deliveries"), &key).await.expect(200);
    let delivered = good_log["items"].as_array().unwrap().iter().find(|d| d["state"] == "delivered").unwrap();
    let before = sink.lock().unwrap().requests.len();
    let again = app
        .post(&format!("/v1/event-deliveries/{}/redeliver", delivered["id"].as_str().unwrap()), &key, json!({}))
        .await;
    let again = again.expect(201);
    assert_eq!(again["state"], "pending");
    for _ in 0..200 {
        if sink.lock().unwrap().requests.len() > before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let last: Value = serde_json::from_slice(&sink.lock().unwrap().requests.last().unwrap().2).unwrap();
    assert_eq!(last["id"], delivered["payload"]["id"], "the same event, so a receiver can drop the repeat");
    // Another workspace cannot see or redeliver it.
    let (_, other) = app.workspace("enterprise").await;
    app.get(&format!("/v1/event-endpoints/{eid}/deliveries"), &other).await.expect_error(404, "QF-NOT-FOUND");
    app.post(&format!("/v1/event-deliveries/{}/redeliver", delivered["id"].as_str().unwrap()), &other, json!({}))
        .await
        .expect_error(404, "QF-NOT-FOUND");
}

/// Email, SMS and WeCom through the API to real loopback peers: what each
/// peer received, consent filtering with its reason, the one-click
/// unsubscribe link of a received email, SMS receipts posted back, and a
/// bounce turning a delivery into a failure.
pub async fn external_channels_end_to_end(app: TestApp) {
    use qunfa_testkit::{sms::SmsProvider, smtp::SmtpSink, wecom::WecomApi};
    let smtp = SmtpSink::start().await;
    let sms = SmsProvider::start("sms-key-0123").await;
    sms.set_receipt_delay(Some(std::time::Duration::from_millis(50)));
    let wecom = WecomApi::start("ww-corp", "corp-secret-0123", 1_000_002).await;
    wecom.set_directory(["zhangsan", "lisi"]);
    let (ws, key) = app.workspace("enterprise").await;
    put(
        &app,
        "/v1/channels/email",
        &key,
        json!({"host": "127.0.0.1", "port": smtp.port(), "security": "none", "from": "群发测试 <news@shop.example>", "allow_private_networks": true}),
    )
    .await
    .expect(200);
    put(
        &app,
        "/v1/channels/sms",
        &key,
        json!({"base_url": sms.url(), "api_key": "sms-key-0123", "sign_name": "群发", "template_id": "SMS_001", "allow_private_networks": true}),
    )
    .await
    .expect(200);
    put(&app, "/v1/channels/wecom", &key, json!({"base_url": wecom.url(), "corp_id": "ww-corp", "corp_secret": "corp-secret-0123", "agent_id": 1_000_002, "allow_private_networks": true}))
        .await
        .expect(200);
    let body = [
        json!({"external_id": "a", "name": "张三", "channels": {"email": "zhang@example.com", "phone": "+8613800000001", "wecom_userid": "zhangsan"}, "consent": {"email": true, "sms": true}}),
        json!({"external_id": "b", "name": "李四", "channels": {"email": "li@example.com", "phone": "+8613800000002", "wecom_userid": "lisi"}}),
        json!({"external_id": "c", "name": "王五", "channels": {"wecom_userid": "wangwu"}, "consent": {"email": true}}),
    ]
    .iter()
    .map(|v| v.to_string() + "\n")
    .collect::<String>();
    app.raw("/v1/contacts/import", &key, "application/x-ndjson", body).await.expect(200);
    let b = app
        .post(
            "/v1/broadcasts",
            &key,
            json!({"content": {"type": "text", "text": "{{name}}，双十一活动开始了"}, "audience": {"all": true}, "channels": ["email", "sms", "wecom"]}),
        )
        .await
        .expect(201);
    let id = b["id"].as_str().unwrap().to_owned();
    app.post(&format!("/v1/broadcasts/{id}/send"), &key, json!({})).await.expect(202);
    app.wait_completed(&key, &id).await;
    // The SMS receipt comes back through the callback URL.
    let mut done = Value::Null;
    for _ in 0..200 {
        done = app.get(&format!("/v1/broadcasts/{id}"), &key).await.expect(200);
        if done["counts"]["awaiting_receipt"] == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let c = &done["counts"];
    // email: a delivered, b no consent, c no address; sms: a delivered, b no
    // consent, c no phone (no consent either); wecom: a, b delivered, c unknown.
    assert_eq!(
        (c["total"].as_u64(), c["delivered"].as_u64(), c["filtered"].as_u64(), c["failed"].as_u64()),
        (Some(9), Some(4), Some(3), Some(2)),
        "{done}"
    );
    let log = app.get(&format!("/v1/broadcasts/{id}/deliveries?limit=50"), &key).await.expect(200);
    let codes: Vec<(String, String)> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["state"] != "delivered")
        .map(|d| (d["channel"].as_str().unwrap().to_owned(), d["error_code"].as_str().unwrap_or("").to_owned()))
        .collect();
    assert!(codes.contains(&("email".into(), "QF-CONSENT-MISSING".into())), "{codes:?}");
    assert!(codes.contains(&("email".into(), "QF-CHANNEL-NO-ADDRESS".into())), "{codes:?}");
    assert!(codes.contains(&("wecom".into(), "QF-ADDRESS-INVALID".into())), "{codes:?}");

    // What the peers received.
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].rcpt_to, ["zhang@example.com"]);
    let parsed = mails[0].parse();
    assert!(parsed.body_text(0).unwrap().contains("张三，双十一活动开始了"));
    let message_id = mails[0].raw_header("Message-ID").unwrap();
    assert!(message_id.starts_with(&format!("<qf-{id}-")), "{message_id}");
    let unsubscribe = mails[0].raw_header("List-Unsubscribe").unwrap();
    assert_eq!(mails[0].raw_header("List-Unsubscribe-Post").as_deref(), Some("List-Unsubscribe=One-Click"));
    let sent = sms.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].phone.as_str(), sent[0].template_id.as_str()), ("+8613800000001", "SMS_001"));
    // Enterprise messages end with the workspace's signature (docs/recall.md).
    assert_eq!(sent[0].params["text"], "张三，双十一活动开始了\n\n来自enterprise ws");
    let mut got = wecom.delivered();
    got.sort();
    assert_eq!(
        got,
        [
            ("lisi".to_owned(), "李四，双十一活动开始了\n\n来自enterprise ws".to_owned()),
            ("zhangsan".to_owned(), "张三，双十一活动开始了\n\n来自enterprise ws".to_owned())
        ]
    );

    // The one-click unsubscribe of the received email, without login.
    let url = unsubscribe.trim_start_matches('<').trim_end_matches('>').to_owned();
    assert!(url.starts_with(&app.base), "{url}");
    let r = app.http.post(&url).body("List-Unsubscribe=One-Click").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let contacts = app.get("/v1/contacts?limit=10", &key).await.expect(200);
    let a = contacts["items"].as_array().unwrap().iter().find(|c| c["external_id"] == "a").unwrap();
    assert_eq!(a["consent"]["email"], false);

    // A hard bounce reported later: the delivery fails, counts move once.
    let bounce = app.post(
        "/v1/bounces",
        &key,
        json!({"message_id": message_id, "type": "hard", "diagnostic": "550 5.1.1 user unknown"}),
    );
    let bounce = bounce.await.expect(200);
    assert_eq!(bounce["broadcast_id"], id.as_str());
    app.post("/v1/bounces", &key, json!({"message_id": "<nope@x>", "type": "hard"}))
        .await
        .expect_error(404, "QF-NOT-FOUND");
    app.post("/v1/bounces", &key, json!({"message_id": message_id, "type": "squishy"}))
        .await
        .expect_error(400, "QF-BAD-REQUEST");
    let after = app.get(&format!("/v1/broadcasts/{id}"), &key).await.expect(200);
    assert_eq!(
        (after["counts"]["delivered"].as_u64(), after["counts"]["failed"].as_u64()),
        (Some(3), Some(3)),
        "{after}"
    );
    app.assert_sets_exact(&id).await;
    // A forged receipt URL is refused.
    let forged = format!("{}/v1/hooks/sms/{ws}/deadbeef", app.base);
    let r = app.http.post(&forged).json(&json!([{"message_id": "x", "status": "DELIVERED"}])).send().await.unwrap();
    assert_eq!(r.status(), 404);
}
