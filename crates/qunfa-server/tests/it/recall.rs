//! Signature, recall and correction notices (the sender's side), block and
//! forward (the recipient's side), black-box through the HTTP API.

use std::collections::HashMap;

use reqwest::Method;
use serde_json::{json, Value};

use crate::{
    channels::sink,
    support::{spawn_app_policy, Backend, TestApp},
};

/// The signature of the test workspaces ("enterprise ws", named by `TestApp::workspace`).
const SIGNATURE: &str = "\n\n来自enterprise ws";

/// Polls until `done` holds for the broadcast.
async fn wait_for(app: &TestApp, key: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..400 {
        let b = app.get(&format!("/v1/broadcasts/{id}"), key).await.expect(200);
        if done(&b) {
            return b;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("broadcast {id} never got there");
}

/// Every delivery record of a broadcast: (contact id, channel) → (state, error code).
async fn records(app: &TestApp, key: &str, id: &str) -> HashMap<(String, String), (String, String)> {
    let log = app.get(&format!("/v1/broadcasts/{id}/deliveries?limit=1000"), key).await.expect(200);
    log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                (d["contact_id"].as_str().unwrap().to_owned(), d["channel"].as_str().unwrap().to_owned()),
                (d["state"].as_str().unwrap().to_owned(), d["error_code"].as_str().unwrap_or("").to_owned()),
            )
        })
        .collect()
}

/// Counts equal records: every record is counted once, in the count of its state.
async fn assert_counts_equal_records(app: &TestApp, key: &str, id: &str) -> Value {
    let b = app.get(&format!("/v1/broadcasts/{id}"), key).await.expect(200);
    let mut by_state: HashMap<&str, u64> = HashMap::new();
    let recs = records(app, key, id).await;
    for (state, _) in recs.values() {
        let counted_as = match state.as_str() {
            "read" => "delivered",
            "sent" => "awaiting_receipt",
            s => s,
        };
        *by_state.entry(counted_as).or_default() += 1;
    }
    let c = &b["counts"];
    assert_eq!(recs.len() as u64, c["total"].as_u64().unwrap(), "{b}");
    assert_eq!(c["queued"], 0, "{b}");
    for state in ["delivered", "failed", "filtered", "skipped", "recalled", "awaiting_receipt"] {
        assert_eq!(by_state.get(state).copied().unwrap_or(0), c[state].as_u64().unwrap(), "{state}: {b}");
    }
    b
}

async fn inbox_token(app: &TestApp, key: &str, contact: &str) -> String {
    let t = app.post(&format!("/v1/contacts/{contact}/inbox-token"), key, json!({})).await.expect(201);
    t["token"].as_str().unwrap().to_owned()
}

/// The inbox item of message `id`, if the recipient has it.
async fn inbox_item(app: &TestApp, token: &str, id: &str) -> Option<Value> {
    let inbox = app.get("/v1/inbox", token).await.expect(200);
    inbox["items"].as_array().unwrap().iter().find(|i| i["message_id"] == id).cloned()
}

/// A personal sender recalls within the window: the inbox shows the message
/// as recalled to readers and non-readers alike, deliveries not made yet
/// (a fallback step) get `recalled` records, counts equal records.
pub async fn personal_recall(app: TestApp) {
    let (_, owner) = app.workspace("personal").await;
    let (_, other_sender) = app.member(&owner, "sender").await;
    let ids = app.contacts(&owner, 3, &["客户"]).await;
    let (hook, base) = sink().await;
    app.call(
        Method::PUT,
        "/v1/channels/webhook",
        Some(&owner),
        Some(json!({"endpoint": format!("{base}/hook"), "allow_private_networks": true})),
    )
    .await
    .expect(200);
    let (reader, unread) = (inbox_token(&app, &owner, &ids[0]).await, inbox_token(&app, &owner, &ids[1]).await);
    // Personal workspaces carry no signature.
    let b = app
        .post(
            "/v1/broadcasts",
            &owner,
            json!({"content": {"type": "text", "text": "明天下午三点开会"}, "audience": {"tag": "客户"},
                   "fallback": [{"channel": "webhook", "when": "unread", "after_seconds": 60}]}),
        )
        .await
        .expect(201);
    assert_eq!(b["content"]["text"], "明天下午三点开会");
    let id = b["id"].as_str().unwrap().to_owned();
    app.post(&format!("/v1/broadcasts/{id}/send"), &owner, json!({})).await.expect(202);
    // The inbox is delivered; the webhook step waits for its 60 s.
    wait_for(&app, &owner, &id, |b| b["counts"]["delivered"] == 3).await;
    app.post(&format!("/v1/inbox/{id}/read"), &reader, json!({})).await.expect(200);

    // Another sender of the workspace may not recall it; a draft has nothing to recall.
    app.post(&format!("/v1/broadcasts/{id}/recall"), &other_sender, json!({}))
        .await
        .expect_error(403, "QF-AUTH-FORBIDDEN");
    let draft = app.draft(&owner, "草稿", json!({"tag": "客户"})).await;
    app.post(&format!("/v1/broadcasts/{draft}/recall"), &owner, json!({})).await.expect_error(409, "QF-STATE-CONFLICT");

    // Within the window (a minute later by the server's clock).
    app.advance(60_000);
    let r = app.post(&format!("/v1/broadcasts/{id}/recall"), &owner, json!({})).await.expect(200);
    assert_eq!(
        (
            r["inbox_hidden"].as_u64(),
            r["cancelled"].as_u64(),
            r["external_sent"].as_u64(),
            r["external_in_flight"].as_u64()
        ),
        (Some(3), Some(3), Some(0), Some(0)),
        "{r}"
    );
    let b = &r["broadcast"];
    assert!(b["recalled_at"].is_string(), "{b}");
    assert_eq!((b["state"].as_str(), b["counts"]["recalled"].as_u64()), (Some("completed"), Some(3)), "{b}");
    let b = assert_counts_equal_records(&app, &owner, &id).await;
    assert_eq!((b["counts"]["total"].as_u64(), b["counts"]["delivered"].as_u64()), (Some(6), Some(3)));
    let recs = records(&app, &owner, &id).await;
    for contact in &ids {
        assert_eq!(recs[&(contact.clone(), "webhook".to_owned())], ("recalled".into(), "QF-RECALLED".into()));
    }

    // Readers and non-readers see that it was recalled, without its content.
    for token in [&reader, &unread] {
        let item = inbox_item(&app, token, &id).await.expect("still listed");
        assert_eq!(item["recalled"], true, "{item}");
        assert_eq!(item["content"], json!({"type": "recalled"}), "{item}");
        assert_eq!(item["text"], Value::Null, "{item}");
        let one = app.get(&format!("/v1/inbox/{id}"), token).await.expect(200);
        assert_eq!((one["recalled"].as_bool(), one["text"].as_str()), (Some(true), None), "{one}");
    }
    assert!(inbox_item(&app, &reader, &id).await.unwrap()["read_at"].is_string());
    assert!(inbox_item(&app, &unread, &id).await.unwrap()["read_at"].is_null());
    // A recalled message is not forwarded; a second recall is a conflict; nothing is re-driven.
    app.post(&format!("/v1/inbox/{id}/forward"), &reader, json!({})).await.expect_error(422, "QF-RECALLED");
    app.post(&format!("/v1/broadcasts/{id}/recall"), &owner, json!({})).await.expect_error(409, "QF-STATE-CONFLICT");
    // Audited, and nothing reached the webhook.
    let audit = app.get("/v1/audit?limit=1000", &owner).await.expect(200);
    assert!(audit.to_string().contains("broadcast.recalled"), "{audit}");
    assert!(hook.lock().unwrap().requests.is_empty());
}

/// Bad input: after the window, or in an enterprise workspace, a recall is
/// refused with a code and changes nothing.
pub async fn recall_refused(app: TestApp) {
    // Enterprise first, before the server's clock moves ahead (below).
    let (_, enterprise) = app.workspace("enterprise").await;
    app.contacts(&enterprise, 2, &["员工"]).await;
    let id = app.draft(&enterprise, "季度会议改期", json!({"tag": "员工"})).await;
    app.post(&format!("/v1/broadcasts/{id}/send"), &enterprise, json!({})).await.expect(202);
    app.wait_completed(&enterprise, &id).await;
    let e = app
        .post(&format!("/v1/broadcasts/{id}/recall"), &enterprise, json!({}))
        .await
        .expect_error(422, "QF-RECALL-NOT-ALLOWED");
    assert!(e["error"]["hint"].as_str().unwrap().contains("/correction"), "{e}");
    let b = app.get(&format!("/v1/broadcasts/{id}"), &enterprise).await.expect(200);
    assert!(b["recalled_at"].is_null(), "{b}");

    let (_, personal) = app.workspace("personal").await;
    let ids = app.contacts(&personal, 2, &["客户"]).await;
    let token = inbox_token(&app, &personal, &ids[0]).await;
    let id = app.draft(&personal, "周五团建", json!({"tag": "客户"})).await;
    app.post(&format!("/v1/broadcasts/{id}/send"), &personal, json!({})).await.expect(202);
    app.wait_completed(&personal, &id).await;
    app.advance(121_000);
    let e = app
        .post(&format!("/v1/broadcasts/{id}/recall"), &personal, json!({}))
        .await
        .expect_error(422, "QF-RECALL-WINDOW");
    assert_eq!(e["error"]["details"][0]["window_seconds"], 120, "{e}");
    assert!(e["error"]["details"][0]["elapsed_seconds"].as_u64().unwrap() >= 121, "{e}");
    let b = app.get(&format!("/v1/broadcasts/{id}"), &personal).await.expect(200);
    assert_eq!((b["recalled_at"].is_null(), b["counts"]["recalled"].as_u64()), (true, Some(0)), "{b}");
    let item = inbox_item(&app, &token, &id).await.unwrap();
    assert_eq!((item["recalled"].as_bool(), item["text"].as_str()), (Some(false), Some("周五团建")));
}

/// Enterprise messages end with "来自{企业名}" on every channel, counted in
/// the text limit; a correction notice goes to exactly the frozen audience
/// of the message it corrects, whatever happened to the tag since.
pub async fn enterprise_signature_and_correction(app: TestApp) {
    let (_, owner) = app.workspace("enterprise").await;
    let (_, other_sender) = app.member(&owner, "sender").await;
    let ids = app.contacts(&owner, 3, &["客户"]).await;
    let (hook, base) = sink().await;
    app.call(
        Method::PUT,
        "/v1/channels/webhook",
        Some(&owner),
        Some(json!({"endpoint": format!("{base}/hook"), "allow_private_networks": true})),
    )
    .await
    .expect(200);
    let token = inbox_token(&app, &owner, &ids[0]).await;
    let request = json!({"content": {"type": "text", "text": "{{name}}，本周六门店活动"}, "audience": {"tag": "客户"},
                         "channels": ["inbox", "webhook"], "client_msg_id": "promo-1"});
    let b = app.post("/v1/broadcasts", &owner, request.clone()).await.expect(201);
    assert_eq!(b["content"]["text"].as_str().unwrap(), format!("{{{{name}}}}，本周六门店活动{SIGNATURE}"));
    let id = b["id"].as_str().unwrap().to_owned();
    // A retry of the same request is still the same broadcast.
    assert_eq!(app.post("/v1/broadcasts", &owner, request).await.expect(200)["id"], id.as_str());
    app.post(&format!("/v1/broadcasts/{id}/send"), &owner, json!({})).await.expect(202);
    app.wait_completed(&owner, &id).await;
    let item = inbox_item(&app, &token, &id).await.unwrap();
    assert_eq!(item["text"].as_str().unwrap(), format!("用户0，本周六门店活动{SIGNATURE}"));
    {
        let hook = hook.lock().unwrap();
        assert_eq!(hook.requests.len(), 3);
        for (_, _, body) in &hook.requests {
            let body: Value = serde_json::from_slice(body).unwrap();
            assert!(body["text"].as_str().unwrap().ends_with(SIGNATURE), "{body}");
        }
    }
    // The signature counts toward the text limit.
    let long = "字".repeat(2048 - 3);
    let e = app
        .post("/v1/broadcasts", &owner, json!({"content": {"type": "text", "text": long}, "audience": {"tag": "客户"}}))
        .await
        .expect_error(422, "QF-CONTENT-TOO-LONG");
    assert_eq!(e["error"]["details"][0]["signature"], "来自enterprise ws", "{e}");

    // The tag changes: contact 0 leaves it, a new contact joins it.
    let tags = app.get("/v1/tags", &owner).await.expect(200);
    let tag = tags.as_array().unwrap().iter().find(|t| t["path"] == "客户").unwrap()["id"].as_str().unwrap().to_owned();
    app.call(Method::DELETE, &format!("/v1/tags/{tag}/members"), Some(&owner), Some(json!({"contact_ids": [ids[0]]})))
        .await
        .expect(200);
    let newcomer = app.raw(
        "/v1/contacts/import",
        &owner,
        "application/x-ndjson",
        "{\"external_id\":\"new\",\"tags\":[\"客户\"]}\n",
    );
    newcomer.await.expect(200);

    // Bad input: another sender's correction, a correction of a draft.
    let correction = json!({"content": {"type": "text", "text": "更正：活动改到周日"}});
    app.post(&format!("/v1/broadcasts/{id}/correction"), &other_sender, correction.clone())
        .await
        .expect_error(403, "QF-AUTH-FORBIDDEN");
    let draft = app.draft(&owner, "草稿", json!({"tag": "客户"})).await;
    app.post(&format!("/v1/broadcasts/{draft}/correction"), &owner, correction.clone())
        .await
        .expect_error(409, "QF-STATE-CONFLICT");

    // One click: the notice is created and sent to the original's recipients.
    let c = app.post(&format!("/v1/broadcasts/{id}/correction"), &owner, correction).await.expect(202);
    let cid = c["id"].as_str().unwrap().to_owned();
    assert_eq!(c["correction_of"], id.as_str(), "{c}");
    assert_eq!(c["audience"], json!({"frozen_of": id}), "{c}");
    assert_eq!(c["channels"], json!(["inbox", "webhook"]), "{c}");
    assert_eq!(c["content"]["text"].as_str().unwrap(), format!("更正：活动改到周日{SIGNATURE}"));
    let done = app.wait_completed(&owner, &cid).await;
    assert_eq!(done["recipients"], 3, "{done}");
    let original: Vec<String> =
        records(&app, &owner, &id).await.into_keys().filter(|(_, ch)| ch == "inbox").map(|(c, _)| c).collect();
    let mut corrected: Vec<String> =
        records(&app, &owner, &cid).await.into_keys().filter(|(_, ch)| ch == "inbox").map(|(c, _)| c).collect();
    let (mut original, mut expected) = (original, ids.clone());
    original.sort();
    corrected.sort();
    expected.sort();
    assert_eq!(original, expected);
    assert_eq!(corrected, expected, "exactly the frozen audience, not the tag now");
    let item = inbox_item(&app, &token, &cid).await.expect("contact 0 left the tag but got the notice");
    assert_eq!(item["text"].as_str().unwrap(), format!("更正：活动改到周日{SIGNATURE}"));
    assert_counts_equal_records(&app, &owner, &cid).await;
}

/// A recipient blocks the sender: their later sends give this contact a
/// `filtered` record with QF-BLOCKED-SENDER on every channel (counts equal
/// records), other members' sends still arrive, and the recipient can lift
/// it. Forwards count once per recipient.
pub async fn block_and_forward(app: TestApp) {
    let (_, owner) = app.workspace("personal").await;
    let (_, other_sender) = app.member(&owner, "sender").await;
    let ids = app.contacts(&owner, 3, &["客户"]).await;
    let (blocker, forwarder) = (inbox_token(&app, &owner, &ids[0]).await, inbox_token(&app, &owner, &ids[1]).await);
    let (_, base) = sink().await;
    app.call(
        Method::PUT,
        "/v1/channels/webhook",
        Some(&owner),
        Some(json!({"endpoint": format!("{base}/hook"), "allow_private_networks": true})),
    )
    .await
    .expect(200);
    let send = |key: String, text: &'static str, channels: Value| {
        let app = &app;
        async move {
            let b = app
                .post(
                    "/v1/broadcasts",
                    &key,
                    json!({"content": {"type": "text", "text": text}, "audience": {"tag": "客户"}, "channels": channels}),
                )
                .await
                .expect(201);
            let id = b["id"].as_str().unwrap().to_owned();
            app.post(&format!("/v1/broadcasts/{id}/send"), &key, json!({})).await.expect(202);
            app.wait_completed(&key, &id).await;
            id
        }
    };
    let first = send(owner.clone(), "新品到店", json!(["inbox"])).await;

    // Block, twice: one block, counted once.
    let r = app.post(&format!("/v1/inbox/{first}/block"), &blocker, json!({})).await.expect(200);
    assert_eq!((r["blocked"].as_bool(), r["changed"].as_bool()), (Some(true), Some(true)));
    let r = app.post(&format!("/v1/inbox/{first}/block"), &blocker, json!({})).await.expect(200);
    assert_eq!(r["changed"], false);
    // Forward, twice: two shares, counted once (and read once).
    let f1 = app.post(&format!("/v1/inbox/{first}/forward"), &forwarder, json!({"to": "chat"})).await.expect(201);
    let f2 = app.call(Method::POST, &format!("/v1/inbox/{first}/forward"), Some(&forwarder), None).await.expect(201);
    assert_eq!((f1["first_forward"].as_bool(), f2["first_forward"].as_bool()), (Some(true), Some(false)));
    assert_ne!(f1["share_id"], f2["share_id"]);
    app.post(&format!("/v1/inbox/{first}/forward"), &forwarder, json!({"to": "moon"}))
        .await
        .expect_error(400, "QF-BAD-REQUEST");
    app.post(&format!("/v1/inbox/{first}/forward"), &owner, json!({})).await.expect_error(401, "QF-AUTH-REQUIRED");
    app.post("/v1/inbox/999999/block", &blocker, json!({})).await.expect_error(404, "QF-NOT-FOUND");
    let b = app.get(&format!("/v1/broadcasts/{first}"), &owner).await.expect(200);
    let c = &b["counts"];
    assert_eq!(
        (c["blocked"].as_u64(), c["forwarded"].as_u64(), c["read"].as_u64()),
        (Some(1), Some(1), Some(1)),
        "{b}"
    );

    // The blocked sender's next send, on the inbox and the webhook.
    let second = send(owner.clone(), "周末特惠", json!(["inbox", "webhook"])).await;
    let b = assert_counts_equal_records(&app, &owner, &second).await;
    assert_eq!((b["counts"]["filtered"].as_u64(), b["counts"]["delivered"].as_u64()), (Some(2), Some(4)), "{b}");
    let recs = records(&app, &owner, &second).await;
    for channel in ["inbox", "webhook"] {
        assert_eq!(recs[&(ids[0].clone(), channel.to_owned())], ("filtered".into(), "QF-BLOCKED-SENDER".into()));
    }
    assert!(inbox_item(&app, &blocker, &second).await.is_none());
    assert!(inbox_item(&app, &forwarder, &second).await.is_some());
    // Another member of the workspace still reaches the contact.
    let third = send(other_sender.clone(), "会员日提醒", json!(["inbox"])).await;
    assert!(inbox_item(&app, &blocker, &third).await.is_some());

    // Only the recipient lifts the block; the sender reaches them again.
    let r = app.call(Method::DELETE, &format!("/v1/inbox/{first}/block"), Some(&blocker), None).await.expect(200);
    assert_eq!((r["blocked"].as_bool(), r["changed"].as_bool()), (Some(false), Some(true)));
    let fourth = send(owner.clone(), "新品预告", json!(["inbox"])).await;
    assert!(inbox_item(&app, &blocker, &fourth).await.is_some());
    assert_counts_equal_records(&app, &owner, &fourth).await;
}

/// Recall and signature come from the policy: an operator who lets
/// enterprise workspaces recall within 5 minutes, with another signature.
pub async fn recall_and_signature_follow_the_policy(backend: Backend) {
    let app = spawn_app_policy(backend, "[tiers.enterprise]\nrecall_seconds = 300\nsignature = \"（{name}）\"").await;
    let (_, owner) = app.workspace("enterprise").await;
    let ids = app.contacts(&owner, 2, &["员工"]).await;
    let token = inbox_token(&app, &owner, &ids[1]).await;
    let id = app.draft(&owner, "下午茶", json!({"tag": "员工"})).await;
    app.post(&format!("/v1/broadcasts/{id}/send"), &owner, json!({})).await.expect(202);
    app.wait_completed(&owner, &id).await;
    let item = inbox_item(&app, &token, &id).await.unwrap();
    assert_eq!(item["text"], "下午茶\n\n（enterprise ws）");
    app.advance(200_000);
    let r = app.post(&format!("/v1/broadcasts/{id}/recall"), &owner, json!({})).await.expect(200);
    assert_eq!((r["inbox_hidden"].as_u64(), r["cancelled"].as_u64()), (Some(2), Some(0)), "{r}");
    assert_eq!(inbox_item(&app, &token, &id).await.unwrap()["recalled"], true);
    assert_counts_equal_records(&app, &owner, &id).await;
}
