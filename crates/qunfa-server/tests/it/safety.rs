//! Content safety through the API: the check, preflight and send, the review
//! queue, reload with broken files.

use serde_json::{json, Value};

use crate::support::{spawn_app_safety, Backend, TestApp, ADMIN_TOKEN};

pub async fn safety_check_api(app: TestApp) {
    let (_, key) = app.workspace("enterprise").await;
    // Evasion is seen through, positions are characters of the original text.
    let v =
        app.post("/v1/safety/check", &key, json!({"text": "招聘兼职，刷*單日结，加微信 abc12345"})).await.expect(200);
    assert_eq!(v["action"], "block", "{v}");
    let hit = v["hits"].as_array().unwrap().iter().find(|h| h["rule"] == "刷单").expect("刷单 found");
    assert_eq!((hit["gate"].as_str(), hit["category"].as_str()), (Some("lexicon"), Some("fraud")));
    assert_eq!(
        (hit["start"].as_u64(), hit["end"].as_u64(), hit["original"].as_str()),
        (Some(5), Some(8), Some("刷*單"))
    );
    assert!(v["masked"].as_str().unwrap().contains("***"), "{v}");
    assert!(v["lexicon_version"].as_str().is_some_and(|s| s.len() == 12));
    assert!(v["model_version"].is_string());
    // Ordinary text passes, an allowlisted phrase does not match.
    let v = app
        .post("/v1/safety/check", &key, json!({"text": "明天上午九点在三楼会议室开周会，请准时参加。"}))
        .await
        .expect(200);
    assert_eq!(v["action"], "allow", "{v}");
    assert_eq!(v["hits"], json!([]));
    // A rule with its reason in both languages.
    let v = app.post("/v1/safety/check", &key, json!({"text": "转发此消息到朋友圈，即可领取红包"})).await.expect(200);
    let rule = v["hits"].as_array().unwrap().iter().find(|h| h["gate"] == "rules").expect("a rule");
    assert_eq!(rule["rule"], "inducement.share_for_reward");
    assert!(rule["message_zh"].as_str().unwrap().contains("诱导"));
    // Links: a blocked look-alike domain, an obfuscated one.
    let v = app.post("/v1/safety/check", &key, json!({"text": "领奖请访问 www点lucky-prize点top"})).await.expect(200);
    assert_eq!(v["links"][0]["obfuscated"], true, "{v}");
    // Bad input: clear errors.
    app.post("/v1/safety/check", &key, json!({"text": "  "})).await.expect_error(400, "QF-SAFETY-TEXT");
    app.post("/v1/safety/check", &key, json!({"text": "字".repeat(100_000)})).await.expect_error(400, "QF-SAFETY-TEXT");
    app.post("/v1/safety/check", &key, json!({"txt": "x"})).await.expect_error(400, "QF-BAD-JSON");
    // What it is made of.
    let info = app.get("/v1/safety", &key).await.expect(200);
    let categories: Vec<&str> =
        info["categories"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(categories, ["absolute", "fraud", "inducement"]);
    assert!(info["model_precision"].as_f64().unwrap() > 0.8, "{info}");
}

pub async fn content_in_preflight_send_and_review_queue(app: TestApp) {
    let (_, owner) = app.workspace("enterprise").await;
    let (_, sender) = app.member(&owner, "sender").await;
    let (_, reviewer) = app.member(&owner, "reviewer").await;
    app.contacts(&owner, 3, &["客户"]).await;

    // A blocked word: preflight explains it, send refuses, nothing changes.
    let bad = app.draft(&sender, "高价收ＵＳＤＴ，当天结算，稳赚不赔", json!({"tag": "客户"})).await;
    let pf = app.post(&format!("/v1/broadcasts/{bad}/preflight"), &sender, json!({})).await.expect(200);
    assert_eq!(pf["ok"], false);
    let v = pf["verdicts"].as_array().unwrap().iter().find(|v| v["code"] == "QF-CONTENT-BLOCKED").expect("blocked");
    assert!(v["message"].as_str().unwrap().contains("(fraud)"), "{v}");
    assert!(v["message_zh"].as_str().unwrap().contains("内容被禁止发送"), "{v}");
    app.post(&format!("/v1/broadcasts/{bad}/send"), &sender, json!({})).await.expect_error(422, "QF-CONTENT-BLOCKED");
    assert_eq!(app.get(&format!("/v1/broadcasts/{bad}"), &sender).await.expect(200)["state"], "draft");

    // A review word: the send is held and a review opens in the queue.
    let held = app.draft(&sender, "本店开业大酬宾，全网最低价，欢迎选购", json!({"tag": "客户"})).await;
    let b = app.post(&format!("/v1/broadcasts/{held}/send"), &sender, json!({})).await.expect(202);
    assert_eq!(b["state"], "pending_approval");
    let queue = app.get("/v1/safety/reviews?state=pending", &reviewer).await.expect(200);
    let reviews = queue["reviews"].as_array().unwrap();
    assert_eq!(reviews.len(), 1, "{queue}");
    let review = &reviews[0];
    assert_eq!(review["broadcast_id"].as_str(), Some(held.as_str()));
    assert!(review["hits"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["rule"] == "全网最低价" || h["rule"] == "absolute.strong"));
    let rid = review["id"].as_str().unwrap().to_owned();
    // The sender cannot decide; a rejection needs a reason; then it is decided once.
    app.post(&format!("/v1/safety/reviews/{rid}/approve"), &sender, json!({}))
        .await
        .expect_error(403, "QF-AUTH-FORBIDDEN");
    app.post(&format!("/v1/safety/reviews/{rid}/reject"), &reviewer, json!({}))
        .await
        .expect_error(400, "QF-BAD-REQUEST");
    let r = app
        .post(&format!("/v1/safety/reviews/{rid}/reject"), &reviewer, json!({"reason": "极限用语"}))
        .await
        .expect(200);
    assert_eq!((r["state"].as_str(), r["reason"].as_str()), (Some("rejected"), Some("极限用语")));
    assert_eq!(app.get(&format!("/v1/broadcasts/{held}"), &sender).await.expect(200)["state"], "cancelled");
    app.post(&format!("/v1/safety/reviews/{rid}/approve"), &reviewer, json!({}))
        .await
        .expect_error(409, "QF-STATE-CONFLICT");

    // Another held send, approved from the queue: dispatched and delivered.
    let ok = app.draft(&sender, "新品上市，行业第一品牌，欢迎到店体验", json!({"tag": "客户"})).await;
    app.post(&format!("/v1/broadcasts/{ok}/send"), &sender, json!({})).await.expect(202);
    let queue = app.get("/v1/safety/reviews?state=pending", &reviewer).await.expect(200);
    let rid = queue["reviews"][0]["id"].as_str().unwrap().to_owned();
    let r = app
        .post(&format!("/v1/safety/reviews/{rid}/approve"), &reviewer, json!({"reason": "品牌方授权"}))
        .await
        .expect(200);
    assert_eq!((r["state"].as_str(), r["reason"].as_str()), (Some("approved"), Some("品牌方授权")));
    assert_eq!(app.wait_completed(&sender, &ok).await["counts"]["delivered"], 3);

    // An admin's own held send: the admin cannot decide its review in the
    // queue; cancelling it withdraws the review (no training example).
    let (_, admin) = app.member(&owner, "admin").await;
    let own = app.draft(&admin, "本店开业，全网最低价，欢迎选购", json!({"tag": "客户"})).await;
    app.post(&format!("/v1/broadcasts/{own}/send"), &admin, json!({})).await.expect(202);
    let queue = app.get("/v1/safety/reviews?state=pending", &admin).await.expect(200);
    let rid = queue["reviews"][0]["id"].as_str().unwrap().to_owned();
    app.post(&format!("/v1/safety/reviews/{rid}/reject"), &admin, json!({"reason": "x"}))
        .await
        .expect_error(403, "QF-APPROVAL-SELF");
    app.post(&format!("/v1/broadcasts/{own}/reject"), &admin, json!({"comment": "不发了"})).await.expect(200);
    let r = app.get(&format!("/v1/safety/reviews/{rid}"), &admin).await.expect(200);
    assert_eq!(r["state"], "withdrawn");

    // The decisions are training examples.
    let examples = app.get("/v1/safety/reviews/examples", &reviewer).await.expect(200);
    let examples = examples.as_str().unwrap();
    let labels: Vec<String> = examples
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["label"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(labels, ["spam", "ham"]);
    app.get("/v1/safety/reviews?state=maybe", &reviewer).await.expect_error(400, "QF-BAD-REQUEST");

    // A link to a domain the workspace never sent is pointed out (a warning), once.
    let codes = |pf: &Value| -> Vec<String> {
        pf["verdicts"].as_array().unwrap().iter().map(|v| v["code"].as_str().unwrap().to_owned()).collect()
    };
    let linked =
        app.draft(&sender, "订单查询请访问 https://shop.example-store.cn/orders 谢谢", json!({"tag": "客户"})).await;
    let pf = app.post(&format!("/v1/broadcasts/{linked}/preflight"), &sender, json!({})).await.expect(200);
    assert!(codes(&pf).contains(&"QF-CONTENT-NEW-DOMAIN".to_owned()), "{pf}");
    assert_eq!(pf["ok"], true);
    app.post(&format!("/v1/broadcasts/{linked}/send"), &sender, json!({})).await.expect(202);
    let again = app.draft(&sender, "退货请访问 https://www.example-store.cn/returns", json!({"tag": "客户"})).await;
    let pf = app.post(&format!("/v1/broadcasts/{again}/preflight"), &sender, json!({})).await.expect(200);
    assert!(!codes(&pf).contains(&"QF-CONTENT-NEW-DOMAIN".to_owned()), "{pf}");
    app.get("/v1/safety/reviews/999999", &reviewer).await.expect_error(404, "QF-NOT-FOUND");
}

/// Reload: a new word is used at once; a broken file is a clear error and the
/// previous library keeps serving.
pub async fn reload_keeps_serving_on_errors(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("custom.txt"), "奇怪词\n").unwrap();
    let config = qunfa_server::safety::SafetyConfig { lexicon_dir: Some(dir.path().to_owned()), ..Default::default() };
    let app = spawn_app_safety(backend, config).await;
    let (_, key) = app.workspace("enterprise").await;
    let check = |text: &'static str| {
        let app = &app;
        let key = key.clone();
        async move { app.post("/v1/safety/check", &key, json!({ "text": text })).await.expect(200) }
    };
    assert_eq!(check("有个奇怪词").await["action"], "block");
    let before = check("有个新词语").await;
    assert_eq!(before["action"], "allow");

    std::fs::write(dir.path().join("custom.txt"), "奇怪词\n新词语\n").unwrap();
    let info = app.post("/v1/safety/reload", ADMIN_TOKEN, json!({})).await.expect(200);
    assert_ne!(info["lexicon_version"], before["lexicon_version"]);
    assert_eq!(check("有个新词语").await["action"], "block");
    let version = info["lexicon_version"].clone();

    // Broken files: each is a clear error, and the last good library serves on.
    let long = "长".repeat(10_000);
    for (bytes, expected) in [
        (b"ok\n\xff\xfe".to_vec(), "not valid UTF-8"),
        (format!("ok\n{long}\n").into_bytes(), "custom.txt:2: an entry of 10000 characters"),
        (b"ok\tsometimes\n".to_vec(), "unknown severity"),
    ] {
        std::fs::write(dir.path().join("custom.txt"), bytes).unwrap();
        let e = app.post("/v1/safety/reload", ADMIN_TOKEN, json!({})).await.expect_error(422, "QF-SAFETY-SOURCES");
        assert!(e["error"]["message"].as_str().unwrap().contains(expected), "{e}");
        let v = check("有个新词语").await;
        assert_eq!((v["action"].as_str(), &v["lexicon_version"]), (Some("block"), &version));
    }
    // Blank lines and duplicates are fine.
    std::fs::write(dir.path().join("custom.txt"), "\n奇怪词\n\n奇怪词\n").unwrap();
    app.post("/v1/safety/reload", ADMIN_TOKEN, json!({})).await.expect(200);
    assert_eq!(check("有个新词语").await["action"], "allow");
    // A broken model file refuses to load, with the file named.
    let model = dir.path().join("model.qfrm");
    std::fs::write(&model, b"QFRM garbage").unwrap();
    let config = qunfa_server::safety::SafetyConfig { model_file: Some(model), ..Default::default() };
    let err = qunfa_server::safety::SafetyState::load(config, &crate::support::no_sampling()).unwrap_err();
    assert!(err.starts_with("model ") && err.contains("model.qfrm"), "{err}");
    // Words managed through the API: used at once, checked, removable.
    let body = json!({"category": "品牌", "severity": "review", "words": ["竞品甲", "竞品乙"]});
    app.post("/v1/safety/words", &key, body.clone()).await.expect_error(401, "QF-AUTH-REQUIRED");
    let info = app.post("/v1/safety/words", ADMIN_TOKEN, body).await.expect(200);
    assert!(info["categories"].as_array().unwrap().iter().any(|c| c["id"] == "品牌"), "{info}");
    let v = check("推荐竞 品 甲的用户").await;
    assert_eq!(v["action"], "review", "{v}");
    let bad = json!({"category": "品牌", "words": ["好词", "***", "长".repeat(300)]});
    let e = app.post("/v1/safety/words", ADMIN_TOKEN, bad).await.expect_error(400, "QF-BAD-REQUEST");
    assert_eq!(e["error"]["details"].as_array().unwrap().len(), 2, "{e}");
    let allow = json!({"kind": "allow", "words": ["竞品甲乙丙"]});
    app.post("/v1/safety/words", ADMIN_TOKEN, allow).await.expect(200);
    assert_eq!(check("关于竞品甲乙丙的报告").await["action"], "allow");
    let listed = app.get("/v1/safety/words", ADMIN_TOKEN).await.expect(200);
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
    let remove = json!({"category": "品牌", "words": ["竞品甲"]});
    app.call(reqwest::Method::DELETE, "/v1/safety/words", Some(ADMIN_TOKEN), Some(remove)).await.expect(200);
    assert_eq!(check("推荐竞品甲的用户").await["action"], "allow");

    // A word file uploaded into a category: blank lines and duplicates are
    // fine; invalid UTF-8 or a 10,000-character entry refuses the whole file.
    let path = "/v1/safety/words/%E4%B8%8A%E4%BC%A0?severity=review";
    let file = "# 上传\n\n上传词甲\n上传词甲\n上传词乙\tblock\n";
    app.put_raw(path, &key, "text/plain", file).await.expect_error(401, "QF-AUTH-REQUIRED");
    app.put_raw(path, ADMIN_TOKEN, "text/plain", file).await.expect(200);
    assert_eq!(check("有上传词甲").await["action"], "review");
    assert_eq!(check("有上传词乙").await["action"], "block");
    let e = app
        .put_raw(path, ADMIN_TOKEN, "text/plain", b"ok\n\xff\xfe".to_vec())
        .await
        .expect_error(400, "QF-BAD-REQUEST");
    assert!(e["error"]["message"].as_str().unwrap().contains("not valid UTF-8"), "{e}");
    let e = app
        .put_raw(path, ADMIN_TOKEN, "text/plain", format!("新词丙\n{long}\n"))
        .await
        .expect_error(400, "QF-BAD-REQUEST");
    assert!(e["error"]["message"].as_str().unwrap().contains(":2: an entry of 10000 characters"), "{e}");
    assert_eq!(check("有新词丙").await["action"], "allow");

    // Only the admin reloads.
    app.post("/v1/safety/reload", &key, json!({})).await.expect_error(401, "QF-AUTH-REQUIRED");
}

/// A PNG of a gradient with a square (what a campaign picture could be).
fn picture(size: u32, shade: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(size, size, |x, y| {
        let inside = x > size / 4 && x < size * 3 / 4 && y > size / 4 && y < size * 3 / 4;
        if inside {
            image::Rgb([shade, 40, 40])
        } else {
            image::Rgb([(x * 255 / size) as u8, (y * 255 / size) as u8, 128])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

pub async fn near_duplicates_need_a_code(app: TestApp) {
    let (_, owner) = app.workspace("enterprise").await;
    let (_, sender) = app.member(&owner, "sender").await;
    let (_, admin) = app.member(&owner, "admin").await;
    app.contacts(&owner, 30, &["客户"]).await;
    let audience = json!({"tag": "客户"});
    let text = "【会员日】本周六全场八折，凭会员卡到店还可领取精美礼品一份，详询门店。";
    let first = app.draft(&sender, text, audience.clone()).await;
    app.post(&format!("/v1/broadcasts/{first}/send"), &sender, json!({})).await.expect(202);
    // Another text is not a duplicate.
    let other = app.draft(&sender, "下周二上午十点召开季度总结会，请各部门负责人准时参加。", audience.clone()).await;
    app.post(&format!("/v1/broadcasts/{other}/send"), &sender, json!({})).await.expect(202);

    // The same text with a small change: 30 + 30 recipients is above 50.
    let again = app.draft(&sender, &text.replace("八折", "八五折"), audience.clone()).await;
    let pf = app.post(&format!("/v1/broadcasts/{again}/preflight"), &sender, json!({})).await.expect(200);
    let v = pf["verdicts"].as_array().unwrap().iter().find(|v| v["code"] == "QF-CONTENT-DUPLICATE").expect("duplicate");
    assert_eq!((v["limit"].as_u64(), v["actual"].as_u64()), (Some(50), Some(60)), "{v}");
    assert!(v["clears_at"].is_string(), "{v}");
    app.post(&format!("/v1/broadcasts/{again}/send"), &sender, json!({}))
        .await
        .expect_error(422, "QF-CONTENT-DUPLICATE");
    // The sender cannot issue the code; an admin can. Wrong, then right, then reused.
    app.post(&format!("/v1/broadcasts/{again}/verification-code"), &sender, json!({}))
        .await
        .expect_error(403, "QF-AUTH-FORBIDDEN");
    let code = app.post(&format!("/v1/broadcasts/{again}/verification-code"), &admin, json!({})).await.expect(201);
    let code = code["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 6);
    let wrong = if code == "000000" { "000001" } else { "000000" };
    app.post(&format!("/v1/broadcasts/{again}/send"), &sender, json!({"verification_code": wrong}))
        .await
        .expect_error(400, "QF-VERIFICATION-CODE");
    assert_eq!(app.get(&format!("/v1/broadcasts/{again}"), &sender).await.expect(200)["state"], "draft");
    app.post(&format!("/v1/broadcasts/{again}/send"), &sender, json!({"verification_code": code})).await.expect(202);
    // A code is for one broadcast, once.
    let third = app.draft(&sender, &text.replace("八折", "七折"), audience.clone()).await;
    app.post(&format!("/v1/broadcasts/{third}/send"), &sender, json!({"verification_code": code}))
        .await
        .expect_error(400, "QF-VERIFICATION-CODE");

    // The same picture with another caption counts too.
    let png = picture(96, 200);
    let m = app.raw("/v1/media", &owner, "image/png", png).await.expect(201);
    let media = m["media_id"].as_str().unwrap().to_owned();
    let image = |caption: &str| json!({"content": {"type": "image", "media_id": media, "caption": caption}, "audience": {"tag": "客户"}});
    let a = app.post("/v1/broadcasts", &sender, image("周末特惠")).await.expect(201);
    app.post(&format!("/v1/broadcasts/{}/send", a["id"].as_str().unwrap()), &sender, json!({})).await.expect(202);
    let b = app.post("/v1/broadcasts", &sender, image("新品到店，欢迎品鉴")).await.expect(201);
    app.post(&format!("/v1/broadcasts/{}/send", b["id"].as_str().unwrap()), &sender, json!({}))
        .await
        .expect_error(422, "QF-CONTENT-DUPLICATE");
}
