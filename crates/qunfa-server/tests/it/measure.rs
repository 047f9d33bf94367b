//! Measurement through the API (docs/measurement.md): tracked links, bots
//! and prefetchers, QR codes, the open pixel, conversions, reading time,
//! reports (JSON, CSV, per segment) whose counters always equal a recount
//! of the records, and A/B tests end to end on a simulated audience.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::support::{spawn_app, spawn_app_policy, Backend, TestApp};

both_backends!(
    links_clicks_bots_and_qr_codes,
    reading_time_reports_and_conversions,
    email_open_pixel,
    inbox_messages_carry_tracked_links
);

/// Enterprise sends above 500 recipients wait for an approver; these tests
/// are about what happens after the send.
const NO_APPROVALS: &str = "[tiers.enterprise]\napproval = []\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_test_with_a_winner_sqlite() {
    ab_test_with_a_winner(spawn_app_policy(Backend::Sqlite, NO_APPROVALS).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_test_with_a_winner_postgres() {
    ab_test_with_a_winner(spawn_app_policy(Backend::Postgres, NO_APPROVALS).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_test_send_time_and_attachment_sqlite() {
    ab_test_send_time_and_attachment(spawn_app_policy(Backend::Sqlite, NO_APPROVALS).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_test_send_time_and_attachment_postgres() {
    ab_test_send_time_and_attachment(spawn_app_policy(Backend::Postgres, NO_APPROVALS).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_test_without_a_winner_sqlite() {
    ab_test_without_a_winner(spawn_app_policy(Backend::Sqlite, NO_APPROVALS).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_test_without_a_winner_postgres() {
    ab_test_without_a_winner(spawn_app_policy(Backend::Postgres, NO_APPROVALS).await).await;
}

/// A client that does not follow redirects, with a browser's User-Agent.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148")
        .build()
        .unwrap()
}

async fn inbox_token(app: &TestApp, key: &str, contact: &str) -> String {
    let t = app.post(&format!("/v1/contacts/{contact}/inbox-token"), key, json!({})).await.expect(201);
    t["token"].as_str().unwrap().to_owned()
}

/// The workspace id and dense index of a public contact id.
fn split_id(contact: &str) -> (i64, u32) {
    let id: i64 = contact.parse().unwrap();
    (id >> 32, (id & 0xFFFF_FFFF) as u32)
}

/// Sends `text` to every contact and waits for it; returns the broadcast id.
async fn send_all(app: &TestApp, key: &str, text: &str) -> String {
    let id = app.draft(key, text, json!({"all": true})).await;
    app.post(&format!("/v1/broadcasts/{id}/send"), key, json!({})).await.expect(202);
    app.wait_completed(key, &id).await;
    id
}

/// The stored counters of a broadcast equal a recount of its records.
async fn assert_counters_exact(app: &TestApp, id: &str) {
    let store = app.store.clone();
    let id: i64 = id.parse().unwrap();
    let (stored, recounted) = tokio::task::spawn_blocking(move || store.measure_recount(id).unwrap()).await.unwrap();
    assert_eq!(stored, recounted, "counters drifted from the records");
    let store = app.store.clone();
    let (stored, derived) = tokio::task::spawn_blocking(move || store.measure_sets_recount(id).unwrap()).await.unwrap();
    assert_eq!(stored, derived, "engagement sets drifted from the records");
}

async fn links_clicks_bots_and_qr_codes(app: TestApp) {
    let (_, key) = app.workspace("enterprise").await;
    let ids = app.contacts(&key, 3, &[]).await;
    let b = send_all(&app, &key, "双十二活动").await;

    // Bad input: a clear code, nothing created.
    for (body, code) in [
        (json!({"url": "ftp://example.com/x", "channel": "poster"}), "QF-LINK-INVALID"),
        (json!({"url": "https://example.com/x", "channel": ""}), "QF-LINK-INVALID"),
        (json!({"url": "https://example.com/x", "channel": "a".repeat(65)}), "QF-LINK-INVALID"),
        (json!({"url": "https://example.com/x", "channel": "poster", "campaign": " "}), "QF-LINK-INVALID"),
        (json!({"url": "https://example.com/x"}), "QF-BAD-JSON"),
    ] {
        app.post("/v1/links", &key, body).await.expect_error(400, code);
    }
    app.post("/v1/links", &key, json!({"url": "https://example.com/x", "channel": "poster", "broadcast_id": "999999"}))
        .await
        .expect_error(404, "QF-NOT-FOUND");
    assert_eq!(app.get("/v1/links", &key).await.expect(200)["items"], json!([]));

    let link = app
        .post(
            "/v1/links",
            &key,
            json!({"url": "https://shop.example.com/sale?x=1", "channel": "poster-shanghai", "campaign": "双十二", "broadcast_id": b}),
        )
        .await
        .expect(201);
    let (link_id, short) = (link["id"].as_str().unwrap().to_owned(), link["short"].as_str().unwrap().to_owned());
    assert_eq!(link["tracked_url"], format!("{}/l/{short}", app.base));
    let plain =
        app.post("/v1/links", &key, json!({"url": "https://example.com/", "channel": "email"})).await.expect(201);

    // People are redirected and counted; bots, previews and prefetches are redirected and filtered.
    let web = browser();
    let follow = |client: reqwest::Client, url: String| async move { client.get(url).send().await.unwrap() };
    let r = follow(web.clone(), format!("{}/l/{short}", app.base)).await;
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "https://shop.example.com/sale?x=1");
    let raw = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for ua in ["Mozilla/5.0 (compatible; Googlebot/2.1)", "Slackbot-LinkExpanding 1.0", "curl/8.0", "WhatsApp/2.23"] {
        let r = raw.get(format!("{}/l/{short}", app.base)).header("user-agent", ua).send().await.unwrap();
        assert_eq!(r.status(), 302, "{ua}");
    }
    let r = web.get(format!("{}/l/{short}", app.base)).header("sec-purpose", "prefetch").send().await.unwrap();
    assert_eq!(r.status(), 302);
    let r = web.head(format!("{}/l/{short}", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(raw.get(format!("{}/l/nosuchcode", app.base)).send().await.unwrap().status(), 404);
    assert_eq!(raw.get(format!("{}/l/bad-code!", app.base)).send().await.unwrap().status(), 404);

    // A recipient's own link attributes the click to them, once per link; a forged token is ignored.
    let mine = app.get(&format!("/v1/links/{link_id}/recipient-url?contact_id={}", ids[0]), &key).await.expect(200);
    let mine_url = mine["url"].as_str().unwrap().to_owned();
    assert!(mine_url.starts_with(&format!("{}/l/{short}?r=", app.base)), "{mine_url}");
    for _ in 0..2 {
        assert_eq!(follow(web.clone(), mine_url.clone()).await.status(), 302);
    }
    let forged = mine_url.replace(&format!("r={}.", split_id(&ids[0]).1), &format!("r={}.", split_id(&ids[1]).1));
    assert_eq!(follow(web.clone(), forged).await.status(), 302);
    app.get(&format!("/v1/links/{}/recipient-url?contact_id={}", plain["id"].as_str().unwrap(), ids[0]), &key)
        .await
        .expect_error(400, "QF-LINK-INVALID");
    app.get(&format!("/v1/links/{link_id}/recipient-url?contact_id=12"), &key).await.expect_error(404, "QF-NOT-FOUND");

    let counted = app.get(&format!("/v1/links/{link_id}"), &key).await.expect(200);
    // 1 anonymous + 2 by the recipient + 1 forged (anonymous); 4 bots + 1 prefetch + 1 HEAD.
    assert_eq!(
        (counted["clicks"].as_u64(), counted["unique_clicks"].as_u64(), counted["filtered"].as_u64()),
        (Some(4), Some(1), Some(6)),
        "{counted}"
    );
    let report = app.get(&format!("/v1/broadcasts/{b}/report"), &key).await.expect(200);
    assert_eq!(report["clicks"], 4);
    assert_eq!(report["totals"]["clicked"], 1);
    assert_eq!(report["totals"]["rates"]["click"], 0.3333);
    assert_eq!(report["sources"][0]["channel"], "poster-shanghai");
    assert_eq!(report["sources"][0]["campaign"], "双十二");
    let clicks_in_heatmap: u64 = report["heatmaps"]["clicks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| d.as_array().unwrap())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(clicks_in_heatmap, 4);
    assert_counters_exact(&app, &b).await;
    let listed = app.get(&format!("/v1/links?broadcast_id={b}"), &key).await.expect(200);
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);

    // The QR code of the tracked URL: a PNG with the quiet zone and finder patterns, and an SVG.
    let png =
        app.http.get(format!("{}/v1/links/{link_id}/qr?scale=4", app.base)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(png.headers()["content-type"], "image/png");
    let img = image::load_from_memory(&png.bytes().await.unwrap()).unwrap().to_luma8();
    assert_eq!(img.width(), img.height());
    let modules = img.width() / 4;
    assert!((21 + 8..=177 + 8).contains(&modules) && (modules - 8 - 21).is_multiple_of(4), "{modules} modules");
    let dark = |mx: u32, my: u32| img.get_pixel(mx * 4 + 1, my * 4 + 1).0[0] < 128;
    assert!(!dark(0, 0) && !dark(3, 3), "quiet zone");
    // A finder pattern: dark ring, light ring, dark 3×3 core, in three corners.
    for (x0, y0) in [(4, 4), (modules - 11, 4), (4, modules - 11)] {
        assert!(
            dark(x0, y0) && dark(x0 + 6, y0 + 6) && !dark(x0 + 1, y0 + 1) && dark(x0 + 3, y0 + 3),
            "finder at {x0},{y0}"
        );
    }
    let svg =
        app.http.get(format!("{}/v1/links/{link_id}/qr?format=svg", app.base)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    let svg = svg.text().await.unwrap();
    assert!(svg.contains(&format!("viewBox=\"0 0 {modules} {modules}\"")) && svg.contains("<path"), "{svg:.200}");
    app.get(&format!("/v1/links/{link_id}/qr?format=gif"), &key).await.expect_error(400, "QF-BAD-REQUEST");
    app.get(&format!("/v1/links/{link_id}/qr?scale=0"), &key).await.expect_error(400, "QF-BAD-REQUEST");
    app.get("/v1/links/999999/qr", &key).await.expect_error(404, "QF-NOT-FOUND");

    // Another workspace sees none of it.
    let (_, other) = app.workspace("enterprise").await;
    app.get(&format!("/v1/links/{link_id}"), &other).await.expect_error(404, "QF-NOT-FOUND");
    app.get(&format!("/v1/broadcasts/{b}/report"), &other).await.expect_error(404, "QF-NOT-FOUND");
}

async fn reading_time_reports_and_conversions(app: TestApp) {
    let (_, key) = app.workspace("enterprise").await;
    let ids = app.contacts(&key, 10, &[]).await;
    let b = send_all(&app, &key, "年终盘点").await;
    // Both sent before the clock moves.
    let b2 = send_all(&app, &key, "短消息").await;
    let mut tokens = Vec::new();
    for id in &ids[..5] {
        tokens.push(inbox_token(&app, &key, id).await);
    }
    let read = |t: usize| {
        let (app, token, b) = (&app, tokens[t].clone(), b.clone());
        async move { app.post(&format!("/v1/inbox/{b}/read"), &token, json!({})).await.expect(200) }
    };
    let close = |t: usize, body: Value| {
        let (app, token, b) = (&app, tokens[t].clone(), b.clone());
        async move { app.post(&format!("/v1/inbox/{b}/close"), &token, body).await }
    };
    // 0 reads 5 s; 1 leaves the page open 20 minutes (capped at 600 s); 2 says it was visible 3 s of 10.
    // (The server's clock is the wall clock moved ahead, so a page's `visible_ms` pins exact figures.)
    read(0).await;
    read(1).await;
    read(2).await;
    app.advance(5_000);
    assert_eq!(close(0, json!({"visible_ms": 5000})).await.expect(200), json!({"recorded": true, "read_ms": 5000}));
    app.advance(5_000);
    assert_eq!(close(2, json!({"visible_ms": 3000})).await.expect(200)["read_ms"], 3000);
    app.advance(1_190_000);
    assert_eq!(close(1, json!({})).await.expect(200)["read_ms"], 600_000);
    // A second close records nothing; a new view adds to the recipient's time (0: 5 s + 4 s = 9 s).
    assert_eq!(close(0, json!({})).await.expect(200), json!({"recorded": false, "read_ms": null}));
    read(0).await;
    app.advance(4_000);
    close(0, json!({"visible_ms": 4000})).await.expect(200);
    close(0, json!({"visible_ms": -1})).await.expect_error(400, "QF-BAD-REQUEST");
    close(0, json!({"visible": 1})).await.expect_error(400, "QF-BAD-JSON");
    app.post("/v1/inbox/999999/close", &tokens[0], json!({})).await.expect_error(404, "QF-NOT-FOUND");
    // 3 replies (which opens it), 4 forwards and reports it.
    app.post(&format!("/v1/inbox/{b}/reply"), &tokens[3], json!({"text": "收到"})).await.expect(201);
    app.post(&format!("/v1/inbox/{b}/forward"), &tokens[4], json!({"to": "group"})).await.expect(201);
    app.post(&format!("/v1/inbox/{b}/report"), &tokens[4], json!({"reason": "spam"})).await.expect(200);
    app.post(&format!("/v1/inbox/{b}/block"), &tokens[4], json!({})).await.expect(200);

    // Conversions: attributed to the broadcast and a contact; idempotent by event id.
    let conv = |body: Value| {
        let (app, key) = (&app, key.clone());
        async move { app.post("/v1/conversions", &key, body).await }
    };
    let first = conv(
        json!({"event_id": "order-1", "name": "purchase", "value": 9900, "broadcast_id": b, "contact_id": ids[0]}),
    )
    .await
    .expect(201);
    assert_eq!((first["first_of_recipient"].as_bool(), first["channel"].as_str()), (Some(true), Some("inbox")));
    let again = conv(
        json!({"event_id": "order-1", "name": "purchase", "value": 9900, "broadcast_id": b, "contact_id": ids[0]}),
    )
    .await
    .expect(200);
    assert_eq!(again["id"], first["id"]);
    conv(json!({"event_id": "order-1", "name": "purchase", "value": 1, "broadcast_id": b, "contact_id": ids[0]}))
        .await
        .expect_error(409, "QF-DUPLICATE");
    let second =
        conv(json!({"event_id": "order-2", "value": 100, "broadcast_id": b, "contact_id": ids[0]})).await.expect(201);
    assert_eq!(second["first_of_recipient"], false);
    conv(json!({"event_id": "visit-9", "broadcast_id": b})).await.expect(201);
    for (body, status, code) in [
        (json!({"event_id": "", "broadcast_id": b}), 400, "QF-CONVERSION-INVALID"),
        (json!({"event_id": "x", "value": -5, "broadcast_id": b}), 400, "QF-CONVERSION-INVALID"),
        (json!({"event_id": "x"}), 400, "QF-CONVERSION-INVALID"),
        (json!({"event_id": "x", "broadcast_id": "999999"}), 404, "QF-NOT-FOUND"),
        (json!({"event_id": "x", "link": "nosuch"}), 404, "QF-NOT-FOUND"),
        (json!({"event_id": "x", "broadcast_id": b, "channel": "fax"}), 400, "QF-INVALID-CHANNEL"),
        (json!({"event_id": "x", "broadcast_id": b, "contact_id": ids[0], "channel": "email"}), 404, "QF-NOT-FOUND"),
    ] {
        conv(body).await.expect_error(status, code);
    }

    let r = app.get(&format!("/v1/broadcasts/{b}/report"), &key).await.expect(200);
    let t = &r["totals"];
    assert_eq!(r["recipients"], 10);
    assert_eq!(
        ["records", "delivered", "opened", "replied", "forwarded", "converted", "reported"].map(|k| t[k].clone()),
        [10, 10, 5, 1, 1, 1, 1].map(|n| json!(n)),
        "{r}"
    );
    // Replying and forwarding open it too: 0, 1, 2 read, 3 replied, 4 forwarded = 5 opened.
    assert_eq!(t["rates"]["delivery"], 1.0);
    assert_eq!((r["conversions"].as_u64(), r["conversion_value"].as_i64()), (Some(3), Some(10_000)));
    assert_eq!(r["blocked"], 1);
    // Reading: 9 s, 600 s, 3 s → average 204 s; buckets [8,15) s, [300 s, ∞), [2,4) s.
    let reading = &r["reading"];
    assert_eq!((reading["measured_recipients"].as_u64(), reading["average_ms"].as_u64()), (Some(3), Some(204_000)));
    assert_eq!(reading["short_read"], false);
    let hist: Vec<u64> =
        reading["histogram"].as_array().unwrap().iter().map(|b| b["recipients"].as_u64().unwrap()).collect();
    assert_eq!(hist, [0, 1, 0, 1, 0, 0, 0, 0, 1]);
    assert_eq!(reading["histogram"][8]["to_ms"], Value::Null);
    assert_eq!(reading["histogram"][3], json!({"from_ms": 8000, "to_ms": 15000, "recipients": 1}));
    // The opens heatmap holds every first open, in the workspace's zone.
    assert_eq!(r["heatmaps"]["time_zone"], "Asia/Shanghai");
    let opens: u64 = r["heatmaps"]["opens"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| d.as_array().unwrap())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(opens, 5);
    assert_eq!(r["channels"].as_array().unwrap().len(), 1);
    assert_eq!(r["channels"][0]["channel"], "inbox");
    assert_counters_exact(&app, &b).await;

    // A segment: the first three contacts (i < 3) — 0, 1 and 2 read, with 9 s, 600 s and 3 s.
    let seg = app.get(&format!("/v1/broadcasts/{b}/report?expr=i%20%3C%203"), &key).await.expect(200);
    assert_eq!((seg["recipients"].as_u64(), seg["totals"]["opened"].as_u64()), (Some(3), Some(3)), "{seg}");
    assert_eq!(seg["segment"], "i < 3");
    assert_eq!(seg["reading"]["average_ms"], 204_000);
    assert_eq!((seg["totals"]["converted"].as_u64(), seg["conversions"].as_u64()), (Some(1), Some(2)));
    app.post("/v1/segments", &key, json!({"name": "后五位", "expr": "i >= 5"})).await.expect(201);
    let seg = app.get(&format!("/v1/broadcasts/{b}/report?segment=后五位"), &key).await.expect(200);
    assert_eq!((seg["recipients"].as_u64(), seg["totals"]["opened"].as_u64()), (Some(5), Some(0)), "{seg}");
    assert_eq!(seg["reading"]["average_ms"], Value::Null);
    app.get(&format!("/v1/broadcasts/{b}/report?segment=无此分群"), &key).await.expect_error(400, "QF-REPORT-SEGMENT");
    app.get(&format!("/v1/broadcasts/{b}/report?expr=i%20%3C"), &key).await.expect_error(400, "QF-REPORT-SEGMENT");
    app.get(&format!("/v1/broadcasts/{b}/report?expr=all&segment=x"), &key)
        .await
        .expect_error(400, "QF-REPORT-SEGMENT");
    app.get(&format!("/v1/broadcasts/{b}/report?format=xml"), &key).await.expect_error(400, "QF-BAD-REQUEST");
    app.get("/v1/broadcasts/999999/report?expr=all", &key).await.expect_error(404, "QF-NOT-FOUND");

    // CSV: the same figures, one per row.
    let resp = app
        .http
        .get(format!("{}/v1/broadcasts/{b}/report?format=csv", app.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = resp.text().await.unwrap();
    let rows: HashMap<(String, String, String), String> = csv
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            ((f[0].into(), f[1].into(), f[2].into()), f[3].into())
        })
        .collect();
    let cell = |a: &str, b: &str, c: &str| rows.get(&(a.into(), b.into(), c.into())).cloned().unwrap_or_default();
    assert_eq!(csv.lines().next(), Some("section,key,metric,value"));
    assert_eq!(cell("channel", "all", "opened"), "5");
    assert_eq!(cell("channel", "inbox", "open_rate"), "0.5");
    assert_eq!(cell("reading", "all", "average_ms"), "204000");
    assert_eq!(cell("reading_histogram", "300000ms+", "recipients"), "1");
    assert_eq!(cell("totals", "all", "conversion_value"), "10000");
    assert_eq!(cell("totals", "all", "blocked"), "1");

    // Short reads are flagged: a broadcast read for 2 s on average.
    // A page cannot claim more than the server saw between open and close.
    app.post(&format!("/v1/inbox/{b2}/read"), &tokens[0], json!({})).await.expect(200);
    app.advance(2_000);
    let closed =
        app.post(&format!("/v1/inbox/{b2}/close"), &tokens[0], json!({"visible_ms": 999_999})).await.expect(200);
    let ms = closed["read_ms"].as_u64().unwrap();
    assert!((2_000..3_000).contains(&ms), "{closed}");
    let r2 = app.get(&format!("/v1/broadcasts/{b2}/report"), &key).await.expect(200);
    assert_eq!((r2["reading"]["average_ms"].as_u64(), r2["reading"]["short_read"].as_bool()), (Some(ms), Some(true)));
    assert_counters_exact(&app, &b2).await;

    // The open pixel of a delivery counts as its first open (contact 5 had not opened it);
    // a forged token and a prefetch change nothing, and every answer is the pixel.
    let link = app
        .post("/v1/links", &key, json!({"url": "https://example.com/", "channel": "email", "broadcast_id": b}))
        .await
        .expect(201);
    let urls = app
        .get(&format!("/v1/links/{}/recipient-url?contact_id={}", link["id"].as_str().unwrap(), ids[5]), &key)
        .await
        .expect(200);
    let pixel = urls["open_pixel_url"].as_str().unwrap().to_owned();
    let forged = format!("{}{}", &pixel[..pixel.len() - 2], if pixel.ends_with("00") { "11" } else { "00" });
    for (url, prefetch) in [(&forged, false), (&pixel, true), (&pixel, false), (&pixel, false)] {
        let mut req = browser().get(url.as_str());
        if prefetch {
            req = req.header("purpose", "prefetch");
        }
        let gif = req.send().await.unwrap();
        assert_eq!(gif.headers()["content-type"], "image/gif");
        assert!(gif.bytes().await.unwrap().starts_with(b"GIF89a"));
    }
    let r = app.get(&format!("/v1/broadcasts/{b}/report"), &key).await.expect(200);
    assert_eq!(r["totals"]["opened"], 6, "one open by the pixel: {r}");
    assert_counters_exact(&app, &b).await;
}

/// An email carries its delivery's open pixel; loading it counts the open
/// once, on the email channel; a prefetch does not.
async fn email_open_pixel(app: TestApp) {
    let smtp = qunfa_testkit::smtp::SmtpSink::start().await;
    let (_, key) = app.workspace("enterprise").await;
    app.put(
        "/v1/channels/email",
        &key,
        json!({"host": "127.0.0.1", "port": smtp.port(), "security": "none", "from": "群发 <news@shop.example>", "allow_private_networks": true}),
    )
    .await
    .expect(200);
    let people = [("a", "zhang@example.com"), ("b", "li@example.com")]
        .iter()
        .map(|(id, email)| {
            json!({"external_id": id, "channels": {"email": email}, "consent": {"email": true}}).to_string() + "\n"
        })
        .collect::<String>();
    app.raw("/v1/contacts/import", &key, "application/x-ndjson", people).await.expect(200);
    let b = app
        .post(
            "/v1/broadcasts",
            &key,
            json!({"content": {"type": "text", "text": "周年庆邀请：https://shop.example/anniv 。"}, "audience": {"all": true}, "channels": ["email"]}),
        )
        .await
        .expect(201);
    let id = b["id"].as_str().unwrap().to_owned();
    // A tracked link of the draft on the email channel: each email carries
    // its recipient's own tracked URL instead.
    let link = app
        .post("/v1/links", &key, json!({"url": "https://shop.example/anniv", "channel": "email", "broadcast_id": id}))
        .await
        .expect(201);
    let short = link["short"].as_str().unwrap().to_owned();
    app.post(&format!("/v1/broadcasts/{id}/send"), &key, json!({})).await.expect(202);
    app.wait_completed(&key, &id).await;
    let mails = smtp.wait_for(2, std::time::Duration::from_secs(5)).await;
    let pixels: Vec<String> = mails
        .iter()
        .map(|m| {
            let html = m.parse().body_html(0).expect("an HTML part").into_owned();
            let at = html.find(&format!("{}/o/", app.base)).expect("the open pixel");
            html[at..].split('"').next().unwrap().replace("&amp;", "&")
        })
        .collect();
    assert_ne!(pixels[0], pixels[1], "one pixel per delivery");
    let tracked: Vec<String> = mails
        .iter()
        .map(|m| {
            let text = m.parse().body_text(0).expect("a text part").into_owned();
            assert!(!text.contains("https://shop.example/anniv"), "{text}");
            let at = text.find(&format!("{}/l/{short}?r=", app.base)).expect("a tracked URL");
            text[at..].split_whitespace().next().unwrap().to_owned()
        })
        .collect();
    assert_ne!(tracked[0], tracked[1], "one tracked URL per recipient");
    let r = browser().get(&tracked[0]).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (302, "https://shop.example/anniv"));
    let web = browser();
    let prefetch = web.get(&pixels[0]).header("sec-purpose", "prefetch").send().await.unwrap();
    assert_eq!(prefetch.headers()["content-type"], "image/gif");
    let r = app.get(&format!("/v1/broadcasts/{id}/report"), &key).await.expect(200);
    assert_eq!(r["totals"]["opened"], 0, "a prefetch is not an open");
    for _ in 0..2 {
        assert_eq!(web.get(&pixels[0]).send().await.unwrap().status(), 200);
    }
    let r = app.get(&format!("/v1/broadcasts/{id}/report"), &key).await.expect(200);
    assert_eq!((r["totals"]["opened"].as_u64(), r["channels"][0]["channel"].as_str()), (Some(1), Some("email")), "{r}");
    assert_eq!(r["channels"][0]["rates"]["open"], 0.5);
    assert_eq!(
        (r["clicks"].as_u64(), r["channels"][0]["clicked"].as_u64()),
        (Some(1), Some(1)),
        "the click is the recipient's: {r}"
    );
    assert_eq!(app.get(&format!("/v1/broadcasts/{id}"), &key).await.expect(200)["counts"]["read"], 1);
    assert_counters_exact(&app, &id).await;
}

/// A broadcast's tracked links on the inbox channel: each recipient's inbox
/// shows their own tracked URL where the text has the link's URL, and a
/// click on it counts for them.
async fn inbox_messages_carry_tracked_links(app: TestApp) {
    let (_, key) = app.workspace("enterprise").await;
    let ids = app.contacts(&key, 2, &[]).await;
    let text = "会员日 https://shop.example/vip ，详情 https://shop.example/vip/rules";
    let id = app.draft(&key, text, json!({"all": true})).await;
    let link = app
        .post("/v1/links", &key, json!({"url": "https://shop.example/vip", "channel": "inbox", "broadcast_id": id}))
        .await
        .expect(201);
    let short = link["short"].as_str().unwrap().to_owned();
    // A link of another channel is not used in the inbox.
    app.post(
        "/v1/links",
        &key,
        json!({"url": "https://shop.example/vip/rules", "channel": "email", "broadcast_id": id}),
    )
    .await
    .expect(201);
    // Two links to a new domain: the risk model holds it for a review.
    let sent = app.post(&format!("/v1/broadcasts/{id}/send"), &key, json!({})).await.expect(202);
    assert_eq!(sent["state"], "pending_approval", "{sent}");
    let (_, reviewer) = app.member(&key, "reviewer").await;
    let queue = app.get("/v1/safety/reviews?state=pending", &reviewer).await.expect(200);
    let rid = queue["reviews"][0]["id"].as_str().unwrap().to_owned();
    app.post(&format!("/v1/safety/reviews/{rid}/approve"), &reviewer, json!({})).await.expect(200);
    app.wait_completed(&key, &id).await;

    let mut urls = Vec::new();
    for contact in &ids {
        let token = inbox_token(&app, &key, contact).await;
        let one = app.get(&format!("/v1/inbox/{id}"), &token).await.expect(200);
        let listed = app.get("/v1/inbox", &token).await.expect(200);
        assert_eq!(listed["items"][0]["text"], one["text"], "the list and the message agree");
        let shown = one["text"].as_str().unwrap().to_owned();
        let mine = app
            .get(&format!("/v1/links/{}/recipient-url?contact_id={contact}", link["id"].as_str().unwrap()), &key)
            .await
            .expect(200)["url"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(shown, format!("会员日 {mine} ，详情 https://shop.example/vip/rules\n\n来自enterprise ws"));
        assert!(mine.starts_with(&format!("{}/l/{short}?r={}.inbox.", app.base, split_id(contact).1)), "{mine}");
        urls.push(mine);
    }
    assert_eq!(browser().get(&urls[1]).send().await.unwrap().status(), 302);
    let r = app.get(&format!("/v1/broadcasts/{id}/report"), &key).await.expect(200);
    assert_eq!((r["clicks"].as_u64(), r["totals"]["clicked"].as_u64()), (Some(1), Some(1)), "{r}");
    let segment = app.get(&format!("/v1/broadcasts/{id}/report?expr=all"), &key).await.expect(200);
    assert_eq!(segment["totals"]["clicked"], 1);
    assert_counters_exact(&app, &id).await;
}

/// Whether simulated recipient `idx` responds at `rate_per_mille`: a fixed
/// hash, so every run sees the same responders.
fn responds(idx: u32, rate_per_mille: u64) -> bool {
    (u64::from(idx).wrapping_mul(2_654_435_761) >> 7) % 1000 < rate_per_mille
}

/// Arm broadcast → its recipients (dense idx), from the delivery log.
async fn recipients(app: &TestApp, key: &str, broadcast: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/broadcasts/{broadcast}/deliveries?limit=1000&cursor={c}"),
            None => format!("/v1/broadcasts/{broadcast}/deliveries?limit=1000"),
        };
        let page = app.get(&path, key).await.expect(200);
        out.extend(page["items"].as_array().unwrap().iter().map(|d| split_id(d["contact_id"].as_str().unwrap()).1));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    out.sort_unstable();
    out
}

/// Opens the message for every recipient of `broadcast` who responds at `rate_per_mille`.
async fn simulate_opens(app: &TestApp, ws: i64, broadcast: &str, who: &[u32], rate_per_mille: u64) -> u64 {
    let (store, b, who) = (app.store.clone(), broadcast.parse::<i64>().unwrap(), who.to_vec());
    let now = qunfa_store::now_millis();
    // Four at a time: each open is a transaction of its own (a commit each on PostgreSQL).
    tokio::task::spawn_blocking(move || {
        let responders: Vec<u32> = who.into_iter().filter(|&i| responds(i, rate_per_mille)).collect();
        std::thread::scope(|scope| {
            for part in responders.chunks(responders.len().div_ceil(4).max(1)) {
                let store = &store;
                scope.spawn(move || {
                    for &idx in part {
                        assert!(store.mark_read(ws, idx, b, now).unwrap());
                    }
                });
            }
        });
        responders.len() as u64
    })
    .await
    .unwrap()
}

/// Polls until the broadcast is completed; shows it when it does not.
async fn wait_broadcast(app: &TestApp, key: &str, id: &str) -> Value {
    let mut b = Value::Null;
    for _ in 0..400 {
        b = app.get(&format!("/v1/broadcasts/{id}"), key).await.expect(200);
        if b["state"] == "completed" {
            return b;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("broadcast {id} did not complete: {b}");
}

async fn wait_state(app: &TestApp, key: &str, test: &str, state: &str) -> Value {
    for _ in 0..400 {
        let t = app.get(&format!("/v1/ab-tests/{test}"), key).await.expect(200);
        if t["state"] == state {
            return t;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("A/B test {test} never got to {state}");
}

/// 4,000 contacts in two cities; 3 arms of 1,000 (stratified by city) with
/// known open rates 10%, 20% and 12%; the decision comes by itself when the
/// server's clock passes `decide_at`, and the winner (arm 1) goes to the other 1,000.
async fn ab_test_with_a_winner(app: TestApp) {
    let (ws, key) = app.workspace("enterprise").await;
    let ws: i64 = ws.parse().unwrap();
    let mut body = String::new();
    for i in 0..4000 {
        let city = if i % 2 == 0 { "上海" } else { "北京" };
        body.push_str(&json!({"external_id": format!("c{i}"), "attributes": {"city": city}}).to_string());
        body.push('\n');
    }
    app.raw("/v1/contacts/import", &key, "application/x-ndjson", body).await.expect(200);
    let base = app.draft(&key, "年货节", json!({"all": true})).await;
    let variants = json!([
        {"label": "直白", "content": {"type": "text", "text": "年货节全场八折"}},
        {"label": "紧迫", "content": {"type": "text", "text": "最后三天！年货节满减"}},
        {"label": "福利", "content": {"type": "text", "text": "送您一张年货节优惠券"}},
    ]);
    let t = app
        .post(
            "/v1/ab-tests",
            &key,
            json!({"broadcast_id": base, "variable": "content", "variants": variants, "metric": "open",
                   "test_fraction": 0.75, "seed": 20261206, "stratify_by": "city", "decide_after_seconds": 3600}),
        )
        .await
        .expect(201);
    assert_eq!(t["warnings"], json!([]), "1,000 per arm is enough");
    assert_eq!((t["state"].as_str(), t["rest_recipients"].as_u64()), (Some("testing"), Some(1000)));
    let test = t["id"].as_str().unwrap().to_owned();
    let arms: Vec<String> =
        t["arms"].as_array().unwrap().iter().map(|a| a["broadcast_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(t["arms"][1]["variant"]["text"], "最后三天！年货节满减");
    for a in &arms {
        app.wait_completed(&key, a).await;
    }
    // The split is the seeded one, stratified: 500 of each city per arm, nobody twice.
    let mut seen = std::collections::HashSet::new();
    let mut arm_members = Vec::new();
    for a in &arms {
        let who = recipients(&app, &key, a).await;
        assert_eq!(who.len(), 1000);
        // Contacts were imported in order: idx i is in 上海 when i is even.
        assert_eq!(who.iter().filter(|&&i| i % 2 == 0).count(), 500, "stratified by city");
        assert!(who.iter().all(|i| seen.insert(*i)));
        arm_members.push(who);
    }
    let audience: Vec<u32> = (0..4000).collect();
    let city = |i: u32| if i.is_multiple_of(2) { "上海".to_owned() } else { "北京".to_owned() };
    let expected = qunfa_core::abtest::assign(&audience, 3, 0.75, 20261206, Some(&city as &dyn Fn(u32) -> String));
    assert_eq!(arm_members, expected.arms, "reproducible from the seed");

    // The simulated audience responds at 10%, 20% and 12%.
    let mut opened = Vec::new();
    for (a, rate) in arms.iter().zip([100, 200, 120]) {
        opened.push(simulate_opens(&app, ws, a, &arm_members[opened.len()], rate).await);
    }
    let live = app.get(&format!("/v1/ab-tests/{test}"), &key).await.expect(200);
    let observed: Vec<u64> =
        live["arms"].as_array().unwrap().iter().map(|a| a["successes"].as_u64().unwrap()).collect();
    assert_eq!(observed, opened);
    assert!((70..=130).contains(&opened[0]) && (160..=240).contains(&opened[1]), "{opened:?}");
    // The statistics are those of the observed counts.
    let props: Vec<qunfa_core::stats::Proportion> =
        opened.iter().map(|&s| qunfa_core::stats::Proportion { successes: s, trials: 1000 }).collect();
    let d = qunfa_core::stats::decide(&props, 0.05);
    let s = &live["statistics"];
    assert_eq!((s["best_arm"].as_u64(), s["winner_arm"].as_u64()), (Some(1), Some(1)), "{s}");
    assert!((s["chi_square_p_value"].as_f64().unwrap() - d.chi_square.unwrap().p_value).abs() < 1e-12);
    assert!((s["z_p_value"].as_f64().unwrap() - d.z_test.unwrap().p_value).abs() < 1e-12);
    assert!(s["z_p_value"].as_f64().unwrap() < 0.05);

    // Not yet: the decision waits for decide_at, by the server's clock; then it comes by itself.
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    assert_eq!(app.get(&format!("/v1/ab-tests/{test}"), &key).await.expect(200)["state"], "testing");
    app.advance(3_601_000);
    let done = wait_state(&app, &key, &test, "winner_sent").await;
    assert_eq!(done["winner_arm"], 1);
    assert!(done["statistics"]["summary"].as_str().unwrap().starts_with("arm 1 wins"), "{done}");
    // The winner's send: arm 1's content to exactly the rest, delivered by the engine.
    let winner = done["winner_broadcast_id"].as_str().unwrap().to_owned();
    let w = app.get(&format!("/v1/broadcasts/{winner}"), &key).await.expect(200);
    assert!(matches!(w["state"].as_str(), Some("sending" | "completed")), "{w}");
    assert_eq!(w["recipients"], 1000);
    assert_eq!(
        w["content"]["text"],
        app.get(&format!("/v1/broadcasts/{}", arms[1]), &key).await.expect(200)["content"]["text"]
    );
    let rest: Vec<u32> =
        w["audience"]["contact_ids"].as_array().unwrap().iter().map(|c| split_id(c.as_str().unwrap()).1).collect();
    assert_eq!(rest, expected.rest, "the winner goes to exactly the rest");
    assert_eq!(app.wait_completed(&key, &winner).await["counts"]["delivered"], 1000);
    // Decided once: deciding or approving again is a conflict.
    app.post(&format!("/v1/ab-tests/{test}/decide"), &key, json!({})).await.expect_error(409, "QF-STATE-CONFLICT");
    app.post(&format!("/v1/ab-tests/{test}/approve"), &key, json!({})).await.expect_error(409, "QF-STATE-CONFLICT");
    for a in &arms {
        assert_counters_exact(&app, a).await;
    }
}

/// Equal response rates: no significant winner, nothing goes to the rest
/// until an arm is named; small arms warn; malformed tests change nothing.
async fn ab_test_without_a_winner(app: TestApp) {
    let (_, key) = app.workspace("enterprise").await;
    let ids = app.contacts(&key, 600, &[]).await;
    let ws = split_id(&ids[0]).0;
    let base = app.draft(&key, "周末活动", json!({"all": true})).await;
    let good = json!({"broadcast_id": base, "variable": "channel", "metric": "open", "test_fraction": 0.5,
                      "variants": [{"channel": "inbox"}, {"channel": "email"}]});
    let with = |k: &str, v: Value| {
        let mut g = good.clone();
        g[k] = v;
        g
    };
    for body in [
        with("variants", json!([{"channel": "inbox"}])),
        with("variants", json!([{"channel": "inbox"}, {"channel": "inbox"}])),
        with("variants", json!([{"channel": "inbox"}, {"content": {"type": "text", "text": "x"}}])),
        with("variants", json!([{"channel": "inbox", "send_after_seconds": 60}, {"channel": "email"}])),
        with("variants", json!((0..6).map(|i| json!({"send_after_seconds": i * 60})).collect::<Vec<_>>())),
        with("variable", json!("colour")),
        with("metric", json!("likes")),
        with("test_fraction", json!(0)),
        with("test_fraction", json!(1.5)),
        with("winner", json!("maybe")),
        with("decide_after_seconds", json!(5)),
        with("stratify_by", json!("city; drop")),
    ] {
        app.post("/v1/ab-tests", &key, body).await.expect_error(400, "QF-AB-INVALID");
    }
    app.post("/v1/ab-tests", &key, with("broadcast_id", json!("999999"))).await.expect_error(404, "QF-NOT-FOUND");
    let list = app.get("/v1/broadcasts?limit=100", &key).await.expect(200);
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "nothing was created");

    // Three content arms of 100: below 1,000 per arm, a warning (not a refusal).
    let t = app
        .post(
            "/v1/ab-tests",
            &key,
            json!({"broadcast_id": base, "variable": "content", "metric": "open", "test_fraction": 0.5, "seed": 7,
                   "winner": "approval",
                   "variants": [{"content": {"type": "text", "text": "周六见"}}, {"content": {"type": "text", "text": "周日见"}},
                                {"content": {"type": "text", "text": "周末来玩"}}]}),
        )
        .await
        .expect(201);
    assert_eq!(t["warnings"][0]["code"], "QF-AB-SMALL-ARM");
    assert!(t["warnings"][0]["message_zh"].as_str().is_some_and(|m| !m.is_empty()));
    let test = t["id"].as_str().unwrap().to_owned();
    let arms: Vec<String> =
        t["arms"].as_array().unwrap().iter().map(|a| a["broadcast_id"].as_str().unwrap().to_owned()).collect();
    for a in &arms {
        assert_eq!(app.wait_completed(&key, a).await["counts"]["delivered"], 100);
    }
    // The same response rate everywhere: 30%.
    for a in &arms {
        let who = recipients(&app, &key, a).await;
        simulate_opens(&app, ws, a, &who, 300).await;
    }
    app.post(&format!("/v1/ab-tests/{test}/approve"), &key, json!({})).await.expect_error(409, "QF-STATE-CONFLICT");
    let decided = app.post(&format!("/v1/ab-tests/{test}/decide"), &key, json!({})).await.expect(200);
    assert_eq!(decided["state"], "no_winner");
    assert_eq!(decided["winner_arm"], Value::Null);
    let s = &decided["statistics"];
    assert_eq!(s["winner_arm"], Value::Null);
    assert!(s["chi_square_p_value"].as_f64().unwrap() >= 0.05, "{s}");
    assert!(s["summary"].as_str().unwrap().starts_with("no significant winner"), "{s}");
    assert_eq!(s["degrees_of_freedom"], 2);
    // Nothing went to the rest.
    assert_eq!(app.get("/v1/broadcasts?limit=100", &key).await.expect(200)["items"].as_array().unwrap().len(), 4);
    app.post(&format!("/v1/ab-tests/{test}/approve"), &key, json!({})).await.expect_error(409, "QF-AB-NO-WINNER");
    app.post(&format!("/v1/ab-tests/{test}/approve"), &key, json!({"arm": 7})).await.expect_error(400, "QF-AB-INVALID");
    // The operator sends arm 2 anyway.
    let sent = app.post(&format!("/v1/ab-tests/{test}/approve"), &key, json!({"arm": 2})).await.expect(200);
    assert_eq!((sent["state"].as_str(), sent["winner_arm"].as_u64()), (Some("winner_sent"), Some(2)));
    let w = wait_broadcast(&app, &key, sent["winner_broadcast_id"].as_str().unwrap()).await;
    assert_eq!(w["counts"]["delivered"], 300);
    assert!(w["content"]["text"].as_str().unwrap().starts_with("周末来玩"));
}

/// The `send_time` variable: the delayed arm waits as a draft until the A/B
/// task sends it at its time (by the server's clock), and the decision waits
/// for the last arm. The `attachment` variable: arms of different content types.
async fn ab_test_send_time_and_attachment(app: TestApp) {
    let (_, key) = app.workspace("enterprise").await;
    app.contacts(&key, 200, &[]).await;
    let base = app.draft(&key, "早上好还是晚上好", json!({"all": true})).await;
    let t = app
        .post(
            "/v1/ab-tests",
            &key,
            json!({"broadcast_id": base, "variable": "send_time", "metric": "open", "test_fraction": 1.0, "seed": 1,
                   "decide_after_seconds": 60, "variants": [{"send_after_seconds": 0}, {"send_after_seconds": 7200}]}),
        )
        .await
        .expect(201);
    assert_eq!(t["warnings"][0]["code"], "QF-AB-SMALL-ARM");
    assert_eq!(t["rest_recipients"], 0);
    let test = t["id"].as_str().unwrap().to_owned();
    let (now_arm, later_arm) =
        (t["arms"][0]["broadcast_id"].as_str().unwrap(), t["arms"][1]["broadcast_id"].as_str().unwrap());
    assert_eq!(t["arms"][1]["variant"], 7200);
    assert_eq!(app.wait_completed(&key, now_arm).await["counts"]["delivered"], 100);
    assert_eq!(app.get(&format!("/v1/broadcasts/{later_arm}"), &key).await.expect(200)["state"], "draft");
    // Both arms have the base's content.
    let texts: Vec<Value> = [now_arm, later_arm]
        .iter()
        .map(|id| {
            let (app, key) = (&app, &key);
            async move { app.get(&format!("/v1/broadcasts/{id}"), key).await.expect(200)["content"]["text"].clone() }
        })
        .collect::<futures::future::JoinAll<_>>()
        .await;
    assert_eq!(texts[0], texts[1]);
    // Two hours on, the A/B task sends the second arm; the decision comes 60 s after that.
    app.advance(7_201_000);
    let mut sent = Value::Null;
    for _ in 0..200 {
        sent = app.get(&format!("/v1/broadcasts/{later_arm}"), &key).await.expect(200);
        if sent["state"] != "draft" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(matches!(sent["state"].as_str(), Some("sending" | "completed")), "{sent}");
    assert_eq!(sent["recipients"], 100);
    // … and the engine delivers it, to the other half.
    assert_eq!(app.wait_completed(&key, later_arm).await["counts"]["delivered"], 100);
    let (first, second) = (recipients(&app, &key, now_arm).await, recipients(&app, &key, later_arm).await);
    assert!(first.iter().all(|idx| !second.contains(idx)), "each recipient in one arm");
    assert_eq!(app.get(&format!("/v1/ab-tests/{test}"), &key).await.expect(200)["state"], "testing");
    app.advance(61_000);
    // Nobody opened anything: no test to run, no winner, nothing sent.
    let done = wait_state(&app, &key, &test, "no_winner").await;
    assert_eq!(done["statistics"]["chi_square"], Value::Null);

    // Attachment: the arms' content types must differ.
    let text = json!({"type": "text", "text": "看看"});
    let link = json!({"type": "link", "url": "https://shop.example.com/", "title": "看看"});
    let base = app.draft(&key, "附件", json!({"all": true})).await;
    let body = |variants: Value| json!({"broadcast_id": base, "variable": "attachment", "metric": "click", "test_fraction": 0.5, "variants": variants});
    app.post("/v1/ab-tests", &key, body(json!([{"content": text}, {"content": {"type": "text", "text": "别的字"}}])))
        .await
        .expect_error(400, "QF-AB-INVALID");
    let t = app.post("/v1/ab-tests", &key, body(json!([{"content": text}, {"content": link}]))).await.expect(201);
    assert_eq!(
        (t["arms"][0]["variant"]["type"].as_str(), t["arms"][1]["variant"]["type"].as_str()),
        (Some("text"), Some("link"))
    );
    assert_eq!((t["arms"][0]["assigned"].as_u64(), t["arms"][1]["assigned"].as_u64()), (Some(50), Some(50)));
}
