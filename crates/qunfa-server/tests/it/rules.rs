//! Platform rules, account security and the approval workflow through the
//! API, with the server's clock moved by the test (`TestApp::advance`):
//! every rule both allowing and blocking.

use serde_json::{json, Value};

use crate::support::{spawn_app_policy, Backend, TestApp, ADMIN_TOKEN};

const DAY: i64 = 86_400_000;

fn codes(v: &Value) -> Vec<String> {
    v["verdicts"].as_array().unwrap().iter().map(|v| v["code"].as_str().unwrap().to_owned()).collect()
}

fn verdict<'a>(v: &'a Value, code: &str) -> &'a Value {
    v["verdicts"].as_array().unwrap().iter().find(|x| x["code"] == code).unwrap_or_else(|| panic!("no {code} in {v}"))
}

fn error_codes(v: &Value) -> Vec<String> {
    v["error"]["details"].as_array().unwrap().iter().filter_map(|d| d["code"].as_str().map(str::to_owned)).collect()
}

async fn preflight(app: &TestApp, key: &str, id: &str) -> Value {
    app.post(&format!("/v1/broadcasts/{id}/preflight"), key, json!({})).await.expect(200)
}

async fn state_of(app: &TestApp, key: &str, id: &str) -> String {
    app.get(&format!("/v1/broadcasts/{id}"), key).await.expect(200)["state"].as_str().unwrap().to_owned()
}

/// No mass send in the account's first 15 days; it clears by itself.
pub async fn new_account_lockout(backend: Backend) {
    let app = spawn_app_policy(backend, "[tiers.personal]\nnew_account_days = 15\n").await;
    let (_, owner) = app.workspace("personal").await;
    app.contacts(&owner, 3, &["朋友"]).await;
    let id = app.draft(&owner, "周末聚会", json!({"tag": "朋友"})).await;
    let pf = preflight(&app, &owner, &id).await;
    assert_eq!(pf["ok"], false);
    let v = verdict(&pf, "QF-ACCOUNT-NEW");
    assert_eq!((v["severity"].as_str(), v["limit"].as_u64(), v["actual"].as_u64()), (Some("block"), Some(15), Some(0)));
    assert!(v["clears_at"].is_string() && v["message_zh"].as_str().unwrap().contains("15"), "{v}");
    let refused =
        app.post(&format!("/v1/broadcasts/{id}/send"), &owner, json!({})).await.expect_error(422, "QF-ACCOUNT-NEW");
    assert!(error_codes(&refused).contains(&"QF-ACCOUNT-NEW".to_owned()), "{refused}");
    assert_eq!(state_of(&app, &owner, &id).await, "draft", "a refused send changes nothing");
    // An account opened 20 days ago may send at once.
    let m = app
        .post(
            "/v1/members",
            &owner,
            json!({"name": "老账号", "role": "sender", "account_created_at": "2020-01-01T00:00:00Z"}),
        )
        .await
        .expect(201);
    let old = m["api_key"].as_str().unwrap().to_owned();
    let id2 = app.draft(&old, "周末聚会", json!({"tag": "朋友"})).await;
    assert!(!codes(&preflight(&app, &old, &id2).await).contains(&"QF-ACCOUNT-NEW".to_owned()));
    // 15 days later the lockout has cleared by itself.
    app.advance(15 * DAY + 1000);
    let pf = preflight(&app, &owner, &id).await;
    assert_eq!(pf["ok"], true, "{pf}");
}

/// A new device or network disables mass send until a code or an admin
/// verifies it.
pub async fn abnormal_login_until_verified(backend: Backend) {
    let app = spawn_app_policy(backend, "").await;
    let (_, owner) = app.workspace("enterprise").await;
    let (sender_id, sender) = app.member(&owner, "sender").await;
    app.contacts(&sender, 3, &["客户"]).await;
    let id = app.draft(&sender, "新品上架", json!({"tag": "客户"})).await;
    let pf_path = format!("/v1/broadcasts/{id}/preflight");
    // The first device and network are the account's own.
    let s = app.post_from("/v1/sessions", &sender, json!({}), "phone-1", "10.1.2.3").await.expect(200);
    assert_eq!((s["state"].as_str(), s["mass_send_enabled"].as_bool()), (Some("trusted"), Some(true)), "{s}");
    let pf = app.post_from(&pf_path, &sender, json!({}), "phone-1", "10.1.2.99").await.expect(200);
    assert_eq!(pf["ok"], true, "the same /24 is the same network: {pf}");
    // A new device: abnormal, and mass send stops on every device.
    let s = app.post_from("/v1/sessions", &sender, json!({}), "laptop-x", "10.1.2.3").await.expect(200);
    assert_eq!((s["state"].as_str(), s["mass_send_enabled"].as_bool()), (Some("abnormal"), Some(false)), "{s}");
    let pf = app.post_from(&pf_path, &sender, json!({}), "phone-1", "10.1.2.3").await.expect(200);
    assert_eq!(pf["ok"], false);
    assert!(verdict(&pf, "QF-LOGIN-ABNORMAL")["message"].as_str().unwrap().contains("laptop-x"), "{pf}");
    app.post_from(&format!("/v1/broadcasts/{id}/send"), &sender, json!({}), "phone-1", "10.1.2.3")
        .await
        .expect_error(422, "QF-LOGIN-ABNORMAL");
    assert_eq!(state_of(&app, &sender, &id).await, "draft");
    // Codes come from an admin, never from oneself; a wrong code changes nothing.
    app.post(&format!("/v1/members/{sender_id}/login-code"), &sender, json!({}))
        .await
        .expect_error(403, "QF-AUTH-FORBIDDEN");
    let code = app.post(&format!("/v1/members/{sender_id}/login-code"), &owner, json!({})).await.expect(201);
    let code = code["code"].as_str().unwrap().to_owned();
    let wrong = if code == "000000" { "000001" } else { "000000" };
    app.post_from("/v1/security/verify", &sender, json!({"code": wrong}), "laptop-x", "10.1.2.3")
        .await
        .expect_error(400, "QF-LOGIN-CODE");
    let s =
        app.post_from("/v1/security/verify", &sender, json!({"code": code}), "laptop-x", "10.1.2.3").await.expect(200);
    assert_eq!(s["mass_send_enabled"], true, "{s}");
    app.post_from("/v1/security/verify", &sender, json!({"code": code}), "laptop-x", "10.1.2.3")
        .await
        .expect_error(400, "QF-LOGIN-CODE");
    assert_eq!(app.post_from(&pf_path, &sender, json!({}), "laptop-x", "10.1.2.3").await.expect(200)["ok"], true);
    // An IP change (another network) is abnormal too; an admin can unlock.
    let pf = app.post_from(&pf_path, &sender, json!({}), "phone-1", "172.16.0.5").await.expect(200);
    assert!(codes(&pf).contains(&"QF-LOGIN-ABNORMAL".to_owned()), "{pf}");
    // Guessing is cut short: after 5 wrong codes the open ones are void.
    let code = app.post(&format!("/v1/members/{sender_id}/login-code"), &owner, json!({})).await.expect(201);
    let code = code["code"].as_str().unwrap().to_owned();
    for guess in (0..6).map(|i| format!("{:06}", (code.parse::<u32>().unwrap() + 1 + i) % 1_000_000)).take(5) {
        app.post_from("/v1/security/verify", &sender, json!({"code": guess}), "phone-1", "172.16.0.5")
            .await
            .expect_error(400, "QF-LOGIN-CODE");
    }
    app.post_from("/v1/security/verify", &sender, json!({"code": code}), "phone-1", "172.16.0.5")
        .await
        .expect_error(400, "QF-LOGIN-CODE");
    let (_, admin) = app.member(&owner, "admin").await;
    let u = app.post(&format!("/v1/members/{sender_id}/unlock"), &admin, json!({})).await.expect(200);
    assert_eq!(u["verified"], 1);
    let b = app
        .post_from(&format!("/v1/broadcasts/{id}/send"), &sender, json!({}), "phone-1", "172.16.0.9")
        .await
        .expect(202);
    // The engine may finish the three recipients before the answer is written.
    assert!(b["state"] == "sending" || b["state"] == "completed", "{b}");
    // Every step is in the audit log.
    let audit = app.get("/v1/audit?limit=200", &owner).await.expect(200);
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    for a in ["member.login", "member.login_code_issued", "member.login_verified"] {
        assert!(actions.contains(&a), "{a} missing: {actions:?}");
    }
}

/// Too many send attempts in the window → a 4-hour cooldown with clears_at.
pub async fn too_frequent_cooldown(backend: Backend) {
    let app = spawn_app_policy(backend, "[security]\nattempts_max = 3\nattempts_window_minutes = 10\n").await;
    let (_, owner) = app.workspace("enterprise").await;
    app.contacts(&owner, 2, &[]).await;
    for i in 0..3 {
        let id = app.draft(&owner, &format!("通知 {i}"), json!({"all": true})).await;
        app.post(&format!("/v1/broadcasts/{id}/send"), &owner, json!({})).await.expect(202);
    }
    // Preflight does not count.
    let id = app.draft(&owner, "第四条通知", json!({"all": true})).await;
    assert_eq!(preflight(&app, &owner, &id).await["ok"], true);
    let refused = app
        .post(&format!("/v1/broadcasts/{id}/send"), &owner, json!({}))
        .await
        .expect_error(422, "QF-OPERATION-TOO-FREQUENT");
    assert!(refused["error"]["details"].to_string().contains("clears_at"), "{refused}");
    let pf = preflight(&app, &owner, &id).await;
    assert!(verdict(&pf, "QF-OPERATION-TOO-FREQUENT")["clears_at"].is_string());
    // Still cooling down after 3 hours; clear after 4.
    app.advance(3 * 3_600_000);
    assert!(codes(&preflight(&app, &owner, &id).await).contains(&"QF-OPERATION-TOO-FREQUENT".to_owned()));
    app.advance(3_600_000 + 1000);
    assert_eq!(preflight(&app, &owner, &id).await["ok"], true);
    let health = app.get("/v1/members/1/health", &owner).await;
    assert!(health.status == 200 || health.status == 404);
}

/// Health: signals and violations move the account healthy → watch →
/// sandbox → suspended, with reasons and history; a platform admin overrides.
pub async fn health_states(backend: Backend) {
    let app = spawn_app_policy(backend, "").await;
    let (_, owner) = app.workspace("enterprise").await;
    let (sender_id, sender) = app.member(&owner, "sender").await;
    let (_, reviewer) = app.member(&owner, "reviewer").await;
    app.contacts(&owner, 60, &["客户"]).await;
    let health = format!("/v1/members/{sender_id}/health");
    let h = app.get(&health, &sender).await.expect(200);
    assert_eq!((h["state"].as_str(), h["score"].as_f64()), (Some("healthy"), Some(100.0)), "{h}");
    // Another sender cannot read it; the owner can. Signals need the server admin.
    let (_, other) = app.member(&owner, "sender").await;
    app.get(&health, &other).await.expect_error(403, "QF-AUTH-FORBIDDEN");
    let signal = format!("/v1/admin/members/{sender_id}/signals");
    app.post(&signal, &owner, json!({"dimension": "payment", "value": 1.0}))
        .await
        .expect_error(401, "QF-AUTH-REQUIRED");
    app.post(&signal, ADMIN_TOKEN, json!({"dimension": "payment", "value": 2.0}))
        .await
        .expect_error(400, "QF-BAD-REQUEST");
    // Payment risk 1.0 costs 40: watch (a warning).
    let r = app
        .post(&signal, ADMIN_TOKEN, json!({"dimension": "payment", "value": 1.0, "note": "chargebacks"}))
        .await
        .expect(200);
    assert_eq!(r["state"], "watch", "{r}");
    let id = app.draft(&sender, "会员日活动", json!({"tag": "客户"})).await;
    let pf = preflight(&app, &sender, &id).await;
    assert_eq!((pf["ok"].as_bool(), verdict(&pf, "QF-HEALTH-WATCH")["severity"].as_str()), (Some(true), Some("warn")));
    // Trying to send blocked content is a violation: 40 + 15 → 45, sandbox.
    let bad = app.draft(&sender, "招聘兼职，刷单日结", json!({"tag": "客户"})).await;
    app.post(&format!("/v1/broadcasts/{bad}/send"), &sender, json!({})).await.expect_error(422, "QF-CONTENT-BLOCKED");
    let h = app.get(&health, &owner).await.expect(200);
    assert_eq!((h["state"].as_str(), h["dimensions"]["violations"].as_u64()), (Some("sandbox"), Some(1)), "{h}");
    let dims: Vec<&str> = h["reasons"].as_array().unwrap().iter().filter_map(|r| r["dimension"].as_str()).collect();
    assert_eq!(dims, ["payment", "violations"]);
    assert!(h["history"].as_array().unwrap().iter().any(|c| c["state"] == "sandbox"), "{h}");
    // In sandbox: more than 50 recipients is refused; a smaller send is reviewed.
    let pf = preflight(&app, &sender, &id).await;
    assert!(
        codes(&pf).contains(&"QF-HEALTH-SANDBOX".to_owned()) && codes(&pf).contains(&"QF-LIMIT-RECIPIENTS".to_owned()),
        "{pf}"
    );
    let ids = app.get("/v1/contacts?limit=5", &owner).await.expect(200);
    let picked: Vec<&str> = ids["items"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    let small = app.draft(&sender, "会员日活动", json!({"contact_ids": picked})).await;
    let b = app.post(&format!("/v1/broadcasts/{small}/send"), &sender, json!({})).await.expect(202);
    assert_eq!(b["state"], "pending_approval", "every sandbox send is reviewed: {b}");
    app.post(&format!("/v1/broadcasts/{small}/approve"), &reviewer, json!({"comment": "ok"})).await.expect(202);
    // A platform admin suspends with a reason the sender sees, then lifts it.
    let over = format!("/v1/admin/members/{sender_id}/health");
    app.put(&over, ADMIN_TOKEN, json!({"state": "suspended", "reason": "投诉核查中"})).await.expect(200);
    let pf = preflight(&app, &sender, &id).await;
    assert!(verdict(&pf, "QF-HEALTH-SUSPENDED")["message_zh"].as_str().unwrap().contains("投诉核查中"), "{pf}");
    app.put(&over, ADMIN_TOKEN, json!({"state": null, "reason": "核查完毕"})).await.expect(200);
    let h = app.get(&health, &sender).await.expect(200);
    assert_eq!((h["state"].as_str(), h["override_state"].as_str()), (Some("sandbox"), None), "{h}");
    // The violation leaves the 30-day window; the payment signal stands
    // until a new one says otherwise.
    app.advance(31 * DAY);
    let h = app.get(&health, &sender).await.expect(200);
    assert_eq!((h["state"].as_str(), h["score"].as_f64()), (Some("watch"), Some(60.0)), "{h}");
    app.post(&signal, ADMIN_TOKEN, json!({"dimension": "payment", "value": 0.0, "note": "settled"})).await.expect(200);
    let h = app.get(&health, &sender).await.expect(200);
    assert_eq!((h["state"].as_str(), h["score"].as_f64()), (Some("healthy"), Some(100.0)), "{h}");
}

/// Approval levels (>500 one approver, >5,000 two), the three-review chain,
/// stages per reviewer, comments, no approving twice.
pub async fn approval_levels_and_chain(backend: Backend) {
    let app = spawn_app_policy(backend, "").await;
    let (_, owner) = app.workspace("enterprise").await;
    let (_, sender) = app.member(&owner, "sender").await;
    let (r1_id, r1) = app.member(&owner, "reviewer").await;
    let (r2_id, r2) = app.member(&owner, "reviewer").await;
    let (r3_id, r3) = app.member(&owner, "reviewer").await;
    app.contacts(&owner, 5001, &["全员"]).await;
    let id = app.draft(&sender, "年度大会通知", json!({"tag": "全员"})).await;
    assert_eq!(
        app.post(&format!("/v1/broadcasts/{id}/send"), &sender, json!({})).await.expect(202)["state"],
        "pending_approval"
    );
    let a = app.get(&format!("/v1/broadcasts/{id}/approvals"), &sender).await.expect(200);
    assert_eq!(a["stages"], json!(["level-1", "level-2"]), "{a}");
    let b = app.post(&format!("/v1/broadcasts/{id}/approve"), &r1, json!({"comment": "一审同意"})).await.expect(202);
    assert_eq!(b["state"], "pending_approval", "two levels above 5,000: {b}");
    app.post(&format!("/v1/broadcasts/{id}/approve"), &r1, json!({})).await.expect_error(409, "QF-APPROVAL-DUPLICATE");
    let a = app.get(&format!("/v1/broadcasts/{id}/approvals"), &sender).await.expect(200);
    assert_eq!((a["next_stage"].as_str(), a["decisions"][0]["comment"].as_str()), (Some("level-2"), Some("一审同意")));
    let b = app.post(&format!("/v1/broadcasts/{id}/approve"), &r2, json!({"comment": "二审同意"})).await.expect(202);
    assert_eq!(b["state"], "sending", "{b}");
    app.post(&format!("/v1/broadcasts/{id}/approve"), &r3, json!({})).await.expect_error(409, "QF-STATE-CONFLICT");

    // The three-review chain: business → legal → technical, each by its reviewer.
    app.put("/v1/workspace/review-chain", &sender, json!({"stages": ["business"]}))
        .await
        .expect_error(403, "QF-AUTH-FORBIDDEN");
    app.put("/v1/workspace/review-chain", &owner, json!({"stages": ["a", "a"]}))
        .await
        .expect_error(400, "QF-INVALID-REVIEW-CHAIN");
    let chain = json!({"stages": ["business", "legal", "technical"]});
    app.put("/v1/workspace/review-chain", &owner, chain.clone()).await.expect(200);
    assert_eq!(app.get("/v1/workspace/review-chain", &sender).await.expect(200), chain);
    for (m, stage) in [(&r1_id, "business"), (&r2_id, "legal"), (&r3_id, "technical")] {
        app.put(&format!("/v1/members/{m}/review-stages"), &owner, json!({"stages": [stage]})).await.expect(200);
    }
    let ids = app.get("/v1/contacts?limit=600", &owner).await.expect(200);
    let picked: Vec<&str> =
        ids["items"].as_array().unwrap().iter().take(501).map(|c| c["id"].as_str().unwrap()).collect();
    let id = app.draft(&sender, "合规审查通知", json!({"contact_ids": picked.clone()})).await;
    app.post(&format!("/v1/broadcasts/{id}/send"), &sender, json!({})).await.expect(202);
    let a = app.get(&format!("/v1/broadcasts/{id}/approvals"), &sender).await.expect(200);
    assert_eq!(a["stages"], chain["stages"]);
    app.post(&format!("/v1/broadcasts/{id}/approve"), &r2, json!({})).await.expect_error(403, "QF-APPROVAL-STAGE");
    app.post(&format!("/v1/broadcasts/{id}/approve"), &r1, json!({"comment": "业务同意"})).await.expect(202);
    app.post(&format!("/v1/broadcasts/{id}/approve"), &r2, json!({"comment": "法务同意"})).await.expect(202);
    assert_eq!(state_of(&app, &sender, &id).await, "pending_approval");
    let b = app.post(&format!("/v1/broadcasts/{id}/approve"), &r3, json!({"comment": "技术同意"})).await.expect(202);
    assert!(b["state"] == "sending" || b["state"] == "completed", "the engine may already be done: {b}");
    let a = app.get(&format!("/v1/broadcasts/{id}/approvals"), &sender).await.expect(200);
    let stages: Vec<&str> = a["decisions"].as_array().unwrap().iter().map(|d| d["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["business", "legal", "technical"]);
    // A rejection at the legal stage cancels, with its comment kept.
    let id = app.draft(&sender, "第二份通知", json!({"contact_ids": picked})).await;
    app.post(&format!("/v1/broadcasts/{id}/send"), &sender, json!({})).await.expect(202);
    app.post(&format!("/v1/broadcasts/{id}/approve"), &r1, json!({})).await.expect(202);
    let r = app.post(&format!("/v1/broadcasts/{id}/reject"), &r2, json!({"comment": "措辞需修改"})).await.expect(200);
    assert_eq!(r["state"], "cancelled");
    let a = app.get(&format!("/v1/broadcasts/{id}/approvals"), &sender).await.expect(200);
    assert_eq!(
        (a["decisions"][1]["decision"].as_str(), a["decisions"][1]["comment"].as_str()),
        (Some("reject"), Some("措辞需修改"))
    );
    let audit = app.get("/v1/audit?limit=500", &owner).await.expect(200);
    let n = audit["items"].as_array().unwrap().iter().filter(|e| e["action"] == "broadcast.approval").count();
    assert!(n >= 5, "every decision is audited ({n})");
}

/// Per-recipient frequency caps (API tier: 4 a month): recipients at the
/// cap are filtered and counted with the code, the rest are sent.
pub async fn frequency_caps(backend: Backend) {
    let app = spawn_app_policy(backend, "").await;
    let (_, owner) = app.workspace("api").await;
    app.contacts(&owner, 3, &[]).await;
    for i in 0..4 {
        let id = app.draft(&owner, &format!("月度资讯 {i}"), json!({"all": true})).await;
        assert_eq!(preflight(&app, &owner, &id).await["verdicts"], json!([]), "under the cap");
        app.post(&format!("/v1/broadcasts/{id}/send"), &owner, json!({})).await.expect(202);
        app.wait_completed(&owner, &id).await;
    }
    // A fourth contact joins: it is under the cap, the first three are at it.
    app.post("/v1/contacts", &owner, json!({"external_id": "new", "name": "新关注"})).await.expect(201);
    let id = app.draft(&owner, "月度资讯 5", json!({"all": true})).await;
    let pf = preflight(&app, &owner, &id).await;
    let v = verdict(&pf, "QF-LIMIT-CONTACT-FREQUENCY");
    assert_eq!((pf["ok"].as_bool(), v["severity"].as_str(), v["actual"].as_u64()), (Some(true), Some("warn"), Some(3)));
    app.post(&format!("/v1/broadcasts/{id}/send"), &owner, json!({})).await.expect(202);
    let done = app.wait_completed(&owner, &id).await;
    assert_eq!(
        (done["counts"]["delivered"].as_u64(), done["counts"]["filtered"].as_u64()),
        (Some(1), Some(3)),
        "{done}"
    );
    let log = app.get(&format!("/v1/broadcasts/{id}/deliveries?limit=10"), &owner).await.expect(200);
    let capped =
        log["items"].as_array().unwrap().iter().filter(|d| d["error_code"] == "QF-LIMIT-CONTACT-FREQUENCY").count();
    assert_eq!(capped, 3, "{log}");
    // Transactional messages are not mass messages: not capped.
    let t = app
        .post("/v1/broadcasts", &owner, json!({"content": {"type": "text", "text": "验证码 1234"}, "audience": {"all": true}, "priority": "transactional"}))
        .await
        .expect(201);
    assert_eq!(preflight(&app, &owner, t["id"].as_str().unwrap()).await["verdicts"], json!([]));
    // A month later the window is clear.
    app.advance(31 * DAY);
    let id = app.draft(&owner, "下月资讯", json!({"all": true})).await;
    assert_eq!(preflight(&app, &owner, &id).await["verdicts"], json!([]));
}

/// Fast growth: more than 30% of the audience added within a day → waves.
pub async fn growth_waves(backend: Backend) {
    let app = spawn_app_policy(backend, "[security]\ngrowth_tiers = [\"personal\"]\n").await;
    let (_, owner) = app.workspace("personal").await;
    app.contacts(&owner, 8, &["新朋友"]).await;
    let id = app.draft(&owner, "你好，很高兴认识你", json!({"tag": "新朋友"})).await;
    let pf = preflight(&app, &owner, &id).await;
    let v = verdict(&pf, "QF-SEND-IN-WAVES");
    assert_eq!(
        (pf["ok"].as_bool(), v["severity"].as_str(), v["actual"].as_u64()),
        (Some(true), Some("delay"), Some(100))
    );
    assert!(v["message"].as_str().unwrap().contains("4 waves of up to 2"), "{v}");
    let b = app.post(&format!("/v1/broadcasts/{id}/send"), &owner, json!({})).await.expect(202);
    assert_eq!(b["state"], "sending");
    // The first wave goes at once; the others wait their hour.
    for _ in 0..400 {
        let b = app.get(&format!("/v1/broadcasts/{id}"), &owner).await.expect(200);
        if b["counts"]["delivered"] == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let b = app.get(&format!("/v1/broadcasts/{id}"), &owner).await.expect(200);
    assert_eq!((b["counts"]["delivered"].as_u64(), b["state"].as_str()), (Some(2), Some("sending")), "{b}");
    // Pausing and resuming keeps the later waves at their times.
    app.post(&format!("/v1/broadcasts/{id}/pause"), &owner, json!({})).await.expect(200);
    app.post(&format!("/v1/broadcasts/{id}/resume"), &owner, json!({})).await.expect(200);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let b = app.get(&format!("/v1/broadcasts/{id}"), &owner).await.expect(200);
    assert_eq!(b["counts"]["delivered"], 2, "waves stay spaced after a resume: {b}");
    // A recall cancels the waves still to come: every recipient has a record.
    app.post(&format!("/v1/broadcasts/{id}/recall"), &owner, json!({})).await.expect(200);
    let done = app.wait_completed(&owner, &id).await;
    assert_eq!(
        (done["counts"]["delivered"].as_u64(), done["counts"]["recalled"].as_u64()),
        (Some(2), Some(6)),
        "{done}"
    );
    // A day later the same contacts are no longer new.
    app.advance(25 * 3_600_000);
    let id = app.draft(&owner, "周末愉快", json!({"tag": "新朋友"})).await;
    assert!(!codes(&preflight(&app, &owner, &id).await).contains(&"QF-SEND-IN-WAVES".to_owned()));
}

/// `client_msg_id`: the original within 24 hours, free again after.
pub async fn client_msg_id_window(backend: Backend) {
    let app = spawn_app_policy(backend, "").await;
    let (_, key) = app.workspace("enterprise").await;
    app.contacts(&key, 1, &[]).await;
    let body =
        json!({"content": {"type": "text", "text": "到货通知"}, "audience": {"all": true}, "client_msg_id": "m-1"});
    let first = app.post("/v1/broadcasts", &key, body.clone()).await.expect(201);
    app.advance(23 * 3_600_000);
    assert_eq!(app.post("/v1/broadcasts", &key, body.clone()).await.expect(200)["id"], first["id"]);
    let other = json!({"content": {"type": "text", "text": "别的"}, "audience": {"all": true}, "client_msg_id": "m-1"});
    app.post("/v1/broadcasts", &key, other.clone()).await.expect_error(409, "QF-CLIENT-MSG-ID-REUSED");
    app.advance(2 * 3_600_000);
    let again = app.post("/v1/broadcasts", &key, other).await.expect(201);
    assert_ne!(again["id"], first["id"]);
}
