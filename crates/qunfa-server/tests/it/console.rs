//! The web console: logins, sessions and CSRF through the API (both
//! backends), and the operator's and the recipient's whole path in a real
//! headless Chromium (SQLite).

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{spawn_app_policy, Backend, Resp, TestApp};

const PASSWORD: &str = "correct horse 1";

/// A request carrying the console cookie (and the CSRF token, if any).
async fn with_cookie(
    app: &TestApp,
    method: Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> Resp {
    let mut r =
        app.http.request(method, format!("{}{path}", app.base)).header("cookie", format!("qunfa_session={cookie}"));
    if let Some(t) = csrf {
        r = r.header("x-csrf-token", t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    Resp { status, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }
}

/// Logs in; returns (cookie, csrf token, body), or the error answer.
async fn login(app: &TestApp, login: &str, password: &str) -> Result<(String, String, Value), Resp> {
    let resp = app
        .http
        .post(format!("{}/v1/console/login", app.base))
        .json(&json!({"login": login, "password": password}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let cookie = resp.headers().get("set-cookie").map(|v| v.to_str().unwrap().to_owned());
    let mut body: Value = resp.json().await.unwrap();
    if status != 200 {
        if let Some(r) = retry_after {
            body["retry_after"] = json!(r);
        }
        return Err(Resp { status, body });
    }
    let cookie = cookie.expect("a session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{attr} missing in {cookie}");
    }
    let value = cookie.split(';').next().unwrap().strip_prefix("qunfa_session=").unwrap().to_owned();
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    Ok((value, csrf, body))
}

/// Logins, roles, CSRF, lockout, expiry, password change and logout.
pub async fn console_logins(backend: Backend) {
    let app = spawn_app_policy(backend, "[console]\nmax_failures = 3\nlock_minutes = 10\nsession_hours = 1\n").await;
    let (_, owner) = app.workspace("enterprise").await;
    let (sender_id, sender_key) = app.member(&owner, "sender").await;
    let (reviewer_id, reviewer_key) = app.member(&owner, "reviewer").await;
    let (_, other_ws) = app.workspace("enterprise").await;
    let set = |login: &str, password: &str| json!({"login": login, "password": password});
    let path = |id: &str| format!("/v1/members/{id}/login");

    // Setting logins: checked input, roles, uniqueness, workspaces.
    app.put(&path(&sender_id), &owner, set("li.si", PASSWORD)).await.expect(200);
    app.put(&path(&sender_id), &owner, set("li si", PASSWORD)).await.expect_error(400, "QF-INVALID-LOGIN");
    app.put(&path(&sender_id), &owner, set("li.si", "short")).await.expect_error(400, "QF-INVALID-LOGIN");
    app.put(&path(&reviewer_id), &sender_key, set("wang", PASSWORD)).await.expect_error(403, "QF-AUTH-FORBIDDEN");
    app.put(&path(&reviewer_id), &owner, set("li.si", PASSWORD)).await.expect_error(409, "QF-LOGIN-TAKEN");
    app.put(&path(&sender_id), &other_ws, set("x.y", PASSWORD)).await.expect_error(404, "QF-NOT-FOUND");
    // A member may set its own; changing it again needs the current password.
    app.put(&path(&reviewer_id), &reviewer_key, set("wang.wu", PASSWORD)).await.expect(200);
    app.put(&path(&reviewer_id), &reviewer_key, set("wang.wu", "another password 2"))
        .await
        .expect_error(400, "QF-INVALID-LOGIN");
    let mut change = set("wang.wu", "another password 2");
    change["current_password"] = json!("wrong password!");
    app.put(&path(&reviewer_id), &reviewer_key, change.clone()).await.expect_error(400, "QF-INVALID-LOGIN");
    change["current_password"] = json!(PASSWORD);
    app.put(&path(&reviewer_id), &reviewer_key, change).await.expect(200);
    app.put(&path(&reviewer_id), &owner, set("wang.wu", PASSWORD)).await.expect(200);
    // An admin may not take over the owner's account.
    let (_, admin_key) = app.member(&owner, "admin").await;
    let owner_id = app.get("/v1/workspace", &owner).await.expect(200)["member_id"].as_str().unwrap().to_owned();
    app.put(&path(&owner_id), &admin_key, set("the.owner", PASSWORD)).await.expect_error(403, "QF-AUTH-FORBIDDEN");
    app.put(&path(&sender_id), &admin_key, set("li.si", PASSWORD)).await.expect(200);
    // The login body must be JSON: a form on another site cannot log a browser in.
    let form = app
        .http
        .post(format!("{}/v1/console/login", app.base))
        .header("content-type", "text/plain")
        .body(json!({"login": "li.si", "password": PASSWORD}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(form.status().as_u16(), 400);
    assert!(form.headers().get("set-cookie").is_none());

    // Wrong password and unknown login: the same answer.
    let e = login(&app, "li.si", "wrong password!").await.unwrap_err();
    assert_eq!((e.status, e.code()), (401, "QF-LOGIN-FAILED"));
    let e = login(&app, "nobody", PASSWORD).await.unwrap_err();
    assert_eq!((e.status, e.code()), (401, "QF-LOGIN-FAILED"));

    let (cookie, csrf, me) = login(&app, "li.si", PASSWORD).await.unwrap_or_else(|e| panic!("{}", e.body));
    assert_eq!((me["member_id"].as_str(), me["role"].as_str()), (Some(sender_id.as_str()), Some("sender")));
    let ws = with_cookie(&app, Method::GET, "/v1/workspace", &cookie, None, None).await.expect(200);
    assert_eq!(ws["member_id"], sender_id.as_str());
    let again = with_cookie(&app, Method::GET, "/v1/console/session", &cookie, None, None).await.expect(200);
    assert_eq!(again["csrf_token"], csrf.as_str());

    // Changes need the CSRF token; without it nothing changes.
    let tag = json!({"path": "浏览器标签"});
    let e = with_cookie(&app, Method::POST, "/v1/tags", &cookie, None, Some(tag.clone())).await;
    assert_eq!((e.status, e.code()), (403, "QF-CSRF-TOKEN"));
    let e = with_cookie(
        &app,
        Method::POST,
        "/v1/tags",
        &cookie,
        Some("0123456789abcdef0123456789abcdef"),
        Some(tag.clone()),
    )
    .await;
    assert_eq!((e.status, e.code()), (403, "QF-CSRF-TOKEN"));
    assert_eq!(app.get("/v1/tags", &owner).await.expect(200), json!([]));
    with_cookie(&app, Method::POST, "/v1/tags", &cookie, Some(&csrf), Some(tag)).await.expect(201);
    let tag_id = app.get("/v1/tags", &owner).await.expect(200)[0]["id"].as_str().unwrap().to_owned();
    let e = with_cookie(
        &app,
        Method::DELETE,
        &format!("/v1/tags/{tag_id}/members"),
        &cookie,
        None,
        Some(json!({"contact_ids": []})),
    )
    .await;
    assert_eq!((e.status, e.code()), (403, "QF-CSRF-TOKEN"), "every change needs the token, DELETE too");
    // An API key wins over a cookie sent with it.
    let both = app
        .http
        .get(format!("{}/v1/workspace", app.base))
        .bearer_auth(&owner)
        .header("cookie", format!("qunfa_session={cookie}"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_ne!(both["member_id"], sender_id.as_str());
    // The session acts with its member's role, and is named in the audit log.
    let e = with_cookie(
        &app,
        Method::POST,
        "/v1/members",
        &cookie,
        Some(&csrf),
        Some(json!({"name": "x", "role": "sender"})),
    )
    .await;
    assert_eq!((e.status, e.code()), (403, "QF-AUTH-FORBIDDEN"));
    let audit = app.get("/v1/audit?limit=1000", &owner).await.expect(200);
    let tag_entry = audit["items"].as_array().unwrap().iter().find(|e| e["action"] == "tag.created").unwrap().clone();
    assert!(tag_entry["actor"].as_str().unwrap().contains("/session:"), "{tag_entry}");
    // A session cookie is not an API key and the other way round.
    app.get("/v1/workspace", &cookie).await.expect_error(401, "QF-AUTH-REQUIRED");

    // A successful login starts the count of wrong passwords again.
    for _ in 0..2 {
        assert_eq!(login(&app, "wang.wu", "wrong password!").await.unwrap_err().code(), "QF-LOGIN-FAILED");
    }
    assert!(login(&app, "wang.wu", PASSWORD).await.is_ok());
    // Lockout after 3 wrong passwords in a row; it clears after 10 minutes.
    for _ in 0..2 {
        assert_eq!(login(&app, "wang.wu", "wrong password!").await.unwrap_err().code(), "QF-LOGIN-FAILED");
    }
    let e = login(&app, "wang.wu", "wrong password!").await.unwrap_err();
    assert_eq!((e.status, e.code()), (429, "QF-LOGIN-LOCKED"));
    assert!(e.body["retry_after"].as_str().is_some_and(|s| s.parse::<u64>().unwrap() > 500), "{}", e.body);
    assert_eq!(login(&app, "wang.wu", PASSWORD).await.unwrap_err().code(), "QF-LOGIN-LOCKED", "locked for everyone");
    assert!(login(&app, "li.si", PASSWORD).await.is_ok(), "other logins are not locked");
    // Unknown names lock like known ones: the answers do not tell them apart.
    for _ in 0..2 {
        assert_eq!(login(&app, "no.such.name", "wrong password!").await.unwrap_err().code(), "QF-LOGIN-FAILED");
    }
    assert_eq!(login(&app, "no.such.name", "wrong password!").await.unwrap_err().code(), "QF-LOGIN-LOCKED");
    app.advance(10 * 60_000 + 1_000);
    let (reviewer_cookie, _, _) = login(&app, "wang.wu", PASSWORD).await.unwrap_or_else(|e| panic!("{}", e.body));

    // A new password ends the member's sessions.
    app.put(&path(&reviewer_id), &owner, set("wang.wu", "another password 2")).await.expect(200);
    with_cookie(&app, Method::GET, "/v1/workspace", &reviewer_cookie, None, None)
        .await
        .expect_error(401, "QF-AUTH-REQUIRED");
    assert!(login(&app, "wang.wu", PASSWORD).await.is_err());

    // Behind the trusted proxy over HTTPS, the cookies are Secure too.
    let https = app
        .http
        .post(format!("{}/v1/console/login", app.base))
        .header("x-forwarded-proto", "https")
        .json(&json!({"login": "li.si", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let cookies: Vec<String> =
        https.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    assert!(!cookies.is_empty() && cookies.iter().all(|c| c.contains("; Secure")), "{cookies:?}");
    // Logging out ends the session; sessions also end after session_hours.
    with_cookie(&app, Method::POST, "/v1/console/logout", &cookie, Some(&csrf), None).await.expect(204);
    with_cookie(&app, Method::GET, "/v1/workspace", &cookie, None, None).await.expect_error(401, "QF-AUTH-REQUIRED");
    let (cookie, _, _) = login(&app, "li.si", PASSWORD).await.unwrap_or_else(|e| panic!("{}", e.body));
    app.advance(3_600_000 + 1_000);
    with_cookie(&app, Method::GET, "/v1/workspace", &cookie, None, None).await.expect_error(401, "QF-AUTH-REQUIRED");
    // Logout and session need a session.
    app.post("/v1/console/logout", &sender_key, json!({})).await.expect_error(401, "QF-AUTH-REQUIRED");
}

/// The tour in Chromium: log in → import contacts → build an
/// audience → compose with a flagged word and see it highlighted → fix it
/// → preflight → send → approve (another member) → watch progress → open
/// the message as the recipient → see it counted as read. With
/// `QUNFA_SCREENSHOTS=DIR` it saves a screenshot of each page there.
pub async fn browser_tour() {
    use qunfa_testkit::webdriver::Browser;
    const T: Duration = Duration::from_secs(20);
    let app = spawn_app_policy(
        Backend::Sqlite,
        "[[tiers.enterprise.approval]]\nabove = 1\napprovers = 1\n\
         [safety]\nreview_sample_base = 0.0\nreview_sample_per_risk = 0.0\n",
    )
    .await;
    let (_, owner) = app.workspace("enterprise").await;
    let (sender_id, _) = app.member(&owner, "sender").await;
    let (reviewer_id, _) = app.member(&owner, "reviewer").await;
    app.put(&format!("/v1/members/{sender_id}/login"), &owner, json!({"login": "sender", "password": PASSWORD}))
        .await
        .expect(200);
    app.put(&format!("/v1/members/{reviewer_id}/login"), &owner, json!({"login": "reviewer", "password": PASSWORD}))
        .await
        .expect(200);
    let shots = std::env::var_os("QUNFA_SCREENSHOTS").map(std::path::PathBuf::from);
    if let Some(dir) = &shots {
        std::fs::create_dir_all(dir).unwrap();
    }

    let b = match Browser::launch("zh-CN").await {
        Ok(b) => b,
        Err(e) => panic!(
            "the browser test needs Chromium: {e} (apt-get install chromium chromium-driver; .ci/run installs them)"
        ),
    };
    let shot = |name: &'static str| {
        let (b, shots) = (&b, shots.clone());
        async move {
            if let Some(dir) = shots {
                std::fs::write(dir.join(format!("{name}.png")), b.screenshot().await.unwrap()).unwrap();
            }
        }
    };
    let base = app.base.clone();
    let log_in = |who: &'static str| {
        let (b, base) = (&b, base.clone());
        async move {
            b.goto(&format!("{base}/console/#/login")).await.unwrap();
            let field = b.wait("#login", None, T).await.unwrap();
            b.type_into(&field, who, true).await.unwrap();
            b.type_into(&b.wait("#password", None, T).await.unwrap(), PASSWORD, true).await.unwrap();
            b.click_on("#sign-in", None, T).await.unwrap();
            b.wait("#whoami", Some(who), T).await.unwrap();
        }
    };

    // Log in (the page is Chinese for a Chinese browser).
    b.goto(&format!("{base}/")).await.unwrap();
    b.wait("h1", Some("登录控制台"), T).await.unwrap();
    shot("01-login").await;
    log_in("sender").await;
    // Wrong passwords say so, in place.
    b.click_on("#logout", None, T).await.unwrap();
    b.type_into(&b.wait("#login", None, T).await.unwrap(), "sender", true).await.unwrap();
    b.type_into(&b.wait("#password", None, T).await.unwrap(), "not the password", true).await.unwrap();
    b.click_on("#sign-in", None, T).await.unwrap();
    b.wait(".error", Some("登录名或密码错误"), T).await.unwrap();
    log_in("sender").await;

    // Import contacts (CSV pasted), with the result and the table updated.
    b.goto(&format!("{base}/console/#/contacts")).await.unwrap();
    let csv = "external_id,name,tags,city\nu1,张三,客户等级/金牌,上海\nu2,李四,客户等级/金牌,上海\nu3,王五,客户等级/银牌,北京\n";
    b.type_into(&b.wait("#import-text", None, T).await.unwrap(), csv, true).await.unwrap();
    b.click_on("#import-start", None, T).await.unwrap();
    b.wait("#import-result", Some("3 新增, 0 更新, 3 新建标签"), T).await.unwrap();
    b.wait("#contacts td", Some("王五"), T).await.unwrap();
    shot("02-contacts").await;
    // The tags the import made, with their sizes (sub-tags included).
    b.click_on("a[href='#/tags']", None, T).await.unwrap();
    b.wait("#tags tr", Some("客户等级/金牌 2 2"), T).await.unwrap();
    let rows = b.find_all("#tags tbody tr").await.unwrap();
    assert_eq!(b.text(&rows[0]).await.unwrap().trim(), "客户等级 3 0", "the parent counts its sub-tags");

    // Build an audience: an error points at its position, then the live count.
    b.goto(&format!("{base}/console/#/audience")).await.unwrap();
    let expr = b.wait("#expr", None, T).await.unwrap();
    b.type_into(&expr, "city = ", true).await.unwrap();
    b.wait("#expr-out .error", None, T).await.unwrap();
    b.wait("#expr-out .at", None, T).await.unwrap();
    b.type_into(&expr, "上海 & tag:客户等级/金牌", false).await.unwrap();
    b.wait("#count", Some("2"), T).await.unwrap();
    assert_eq!(b.text(&b.wait("#count", None, T).await.unwrap()).await.unwrap(), "2");
    shot("03-audience").await;
    b.click_on("#use-audience", None, T).await.unwrap();

    // Each message type asks for its own fields (an image: an upload and a caption).
    b.click_on("#content-type option[value=image]", None, T).await.unwrap();
    b.wait("label[for=content-upload]", None, T).await.unwrap();
    b.wait("label[for=content-text]", Some("说明文字"), T).await.unwrap();
    b.click_on("#content-type option[value=miniprogram]", None, T).await.unwrap();
    b.wait("#content-appid", None, T).await.unwrap();
    b.click_on("#content-type option[value=text]", None, T).await.unwrap();
    b.wait_gone("#content-appid", T).await.unwrap();
    // Compose with a flagged word: highlighted in place, with its reason.
    let text = b.wait("#content-text", None, T).await.unwrap();
    b.type_into(&text, "兼职刷单，日结三百，轻松赚钱！", true).await.unwrap();
    let mark = b.wait("#highlight mark.block", None, T).await.unwrap();
    assert!(b.text(&mark).await.unwrap().contains("刷单"), "the word is marked where it is");
    b.wait("#safety-action[data-action=block]", Some("拦截"), T).await.unwrap();
    let masked = b.text(&b.wait("#masked", None, T).await.unwrap()).await.unwrap();
    assert!(!masked.contains("刷单") && masked.contains('*'), "{masked}");
    shot("04-compose-flagged").await;
    // Fixed: nothing marked any more.
    b.type_into(&text, "{{name}}您好，本周六上午十点门店会员活动，欢迎参加。", true).await.unwrap();
    b.wait("#safety-action[data-action=allow]", None, T).await.unwrap();
    b.wait_gone("#highlight mark", T).await.unwrap();
    // Variables previewed for a recipient of the audience.
    b.wait("#personal-preview", Some("张三您好，本周六"), T).await.unwrap();
    assert_eq!(
        b.property(&b.wait("#compose-expr", None, T).await.unwrap(), "value").await.unwrap(),
        "city = 上海 & tag:客户等级/金牌"
    );
    b.click_on("#save-preflight", None, T).await.unwrap();

    // Preflight: sendable, two recipients, and the approval it will need.
    b.wait("#preflight-recipients", Some("2"), T).await.unwrap();
    b.wait("#verdicts", Some("QF-APPROVAL-REQUIRED"), T).await.unwrap();
    shot("05-preflight").await;
    let id = b.url().await.unwrap().rsplit('/').next().unwrap().to_owned();
    b.click_on("#send", None, T).await.unwrap();
    b.wait("#state", Some("待审批"), T).await.unwrap();

    // Another member approves; progress arrives live.
    log_in("reviewer").await;
    b.goto(&format!("{base}/console/#/approvals")).await.unwrap();
    b.click_on(&format!("#broadcasts a[href='#/broadcasts/{id}']"), None, T).await.unwrap();
    b.click_on("#approve", None, T).await.unwrap();
    b.wait("#state", Some("已完成"), T).await.unwrap();
    b.wait("[data-count=delivered]", Some("2"), T).await.unwrap();
    shot("06-progress").await;

    // The sender gives 张三 the inbox link (reviewers may not), and the
    // recipient opens the message on a phone-sized screen.
    log_in("sender").await;
    b.goto(&format!("{base}/console/#/contacts")).await.unwrap();
    b.wait("#contacts a", Some("王五"), T).await.unwrap();
    b.type_into(&b.wait("#contact-search", None, T).await.unwrap(), "张", true).await.unwrap();
    b.wait_count("#contacts tbody tr", 1, T).await.unwrap();
    b.click_on("#contacts a", Some("张三"), T).await.unwrap();
    b.click_on("#open-inbox", None, T).await.unwrap();
    let href = b.text(&b.wait("#inbox-href", None, T).await.unwrap()).await.unwrap();
    b.window(390, 844).await.unwrap();
    b.goto(&format!("{base}{href}")).await.unwrap();
    let link = b.wait("#messages a", Some("张三您好，本周六上午十点"), T).await.unwrap();
    b.wait(".read-state", Some("未读"), T).await.unwrap();
    b.click(&link).await.unwrap();
    b.wait("#message", Some("张三您好，本周六上午十点门店会员活动"), T).await.unwrap();
    shot("07-inbox-phone").await;
    // Leaving the message ends the view: its reading time is recorded.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    b.click_on("#main a", Some("返回"), T).await.unwrap();
    b.wait("#messages", None, T).await.unwrap();
    let mut reading = Value::Null;
    for _ in 0..50 {
        reading = app.get(&format!("/v1/broadcasts/{id}/report"), &owner).await.expect(200)["reading"].clone();
        if reading["measured_recipients"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reading["measured_recipients"], 1, "{reading}");
    assert!(reading["average_ms"].as_f64().unwrap() >= 1_000.0, "{reading}");
    assert_eq!(reading["short_read"], true, "about a second is a short read");

    // Counted as read, live on the broadcast page.
    b.window(1280, 900).await.unwrap();
    b.goto(&format!("{base}/console/#/broadcasts/{id}")).await.unwrap();
    b.wait("[data-count=read]", Some("1"), T).await.unwrap();
    b.wait("[data-rate=delivery_rate]", Some("100.0%"), T).await.unwrap();
    b.wait("[data-rate=read_rate]", Some("50.0%"), T).await.unwrap();
    // Switch to English: the same page in the other language.
    b.click_on("#lang", None, T).await.unwrap();
    b.wait("#state", Some("completed"), T).await.unwrap();
    b.wait("#progress", Some("Read"), T).await.unwrap();
    // The report: rates per channel, reading time (short: about a second), the heatmap.
    b.wait("#report-rates", Some("Open rate"), T).await.unwrap();
    b.wait("#report-rates tr", Some("inbox 100.0% 50.0%"), T).await.unwrap();
    b.wait("#short-read", None, T).await.unwrap();
    b.execute("document.getElementById('rs-h').scrollIntoView()", Vec::new()).await.unwrap();
    shot("08-broadcast-en").await;
    let stored = app.get(&format!("/v1/broadcasts/{id}"), &owner).await.expect(200);
    assert_eq!((stored["counts"]["delivered"].as_u64(), stored["counts"]["read"].as_u64()), (Some(2), Some(1)));
    // A tracked link for a poster: a bad URL is refused with its code, then one is listed with its QR code.
    b.type_into(&b.wait("#link-url", None, T).await.unwrap(), "ftp://shop.example/x", true).await.unwrap();
    b.type_into(&b.wait("#link-channel", None, T).await.unwrap(), "poster", true).await.unwrap();
    b.click_on("#add-link", None, T).await.unwrap();
    b.wait("#tl-h ~ div .error", Some("QF-LINK-INVALID"), T).await.unwrap();
    b.type_into(&b.wait("#link-url", None, T).await.unwrap(), "https://shop.example/poster", true).await.unwrap();
    b.click_on("#add-link", None, T).await.unwrap();
    b.wait("#links-table td", Some("https://shop.example/poster"), T).await.unwrap();
    b.wait("#links-table a", Some("PNG"), T).await.unwrap();
    let links = app.get(&format!("/v1/links?broadcast_id={id}"), &owner).await.expect(200);
    assert_eq!((links["items"][0]["channel"].as_str(), links["items"].as_array().unwrap().len()), (Some("poster"), 1));

    // The account page: this browser is the sender's trusted device (its id
    // cookie, not the User-Agent), and the password can be changed there.
    b.click_on("a[href='#/health']", None, T).await.unwrap();
    b.wait("#login-state", Some("trusted"), T).await.unwrap();
    b.type_into(&b.wait("#current-password", None, T).await.unwrap(), PASSWORD, true).await.unwrap();
    b.type_into(&b.wait("#new-password", None, T).await.unwrap(), "a brand new password", true).await.unwrap();
    b.click_on("#change-password", None, T).await.unwrap();
    b.wait("#sign-in", None, T).await.unwrap();
    b.type_into(&b.wait("#login", None, T).await.unwrap(), "sender", true).await.unwrap();
    b.type_into(&b.wait("#password", None, T).await.unwrap(), "a brand new password", true).await.unwrap();
    b.click_on("#sign-in", None, T).await.unwrap();
    b.wait("#whoami", Some("sender"), T).await.unwrap();
    b.quit().await;
}

/// The review queue and scheduling in Chromium: a send the content check
/// holds is approved from the queue with its hits marked; a draft is
/// scheduled with a cron expression and unscheduled again.
pub async fn browser_review_and_schedule() {
    use qunfa_testkit::webdriver::Browser;
    const T: Duration = Duration::from_secs(20);
    let app =
        spawn_app_policy(Backend::Sqlite, "[safety]\nreview_sample_base = 0.0\nreview_sample_per_risk = 0.0\n").await;
    let (_, owner) = app.workspace("enterprise").await;
    let owner_id = app.get("/v1/workspace", &owner).await.expect(200)["member_id"].as_str().unwrap().to_owned();
    let (reviewer_id, _) = app.member(&owner, "reviewer").await;
    for (id, login) in [(&owner_id, "boss"), (&reviewer_id, "checker")] {
        app.put(&format!("/v1/members/{id}/login"), &owner, json!({"login": login, "password": PASSWORD}))
            .await
            .expect(200);
    }
    app.contacts(&owner, 3, &["会员"]).await;
    let b = Browser::launch("zh-CN").await.unwrap_or_else(|e| panic!("the browser test needs Chromium: {e}"));
    let base = app.base.clone();
    // (login, the role as the header shows it)
    let log_in = |who: &'static str, role: &'static str| {
        let (b, base) = (&b, base.clone());
        async move {
            b.goto(&format!("{base}/console/#/login")).await.unwrap();
            b.type_into(&b.wait("#login", None, T).await.unwrap(), who, true).await.unwrap();
            b.type_into(&b.wait("#password", None, T).await.unwrap(), PASSWORD, true).await.unwrap();
            b.click_on("#sign-in", None, T).await.unwrap();
            b.wait("#whoami", Some(role), T).await.unwrap();
        }
    };

    // A text the content check sends to human review.
    log_in("boss", "所有者").await;
    b.goto(&format!("{base}/console/#/compose")).await.unwrap();
    b.type_into(&b.wait("#compose-expr", None, T).await.unwrap(), "tag:会员", true).await.unwrap();
    b.type_into(&b.wait("#content-text", None, T).await.unwrap(), "周末赚钱小技巧，轻松上手。", true).await.unwrap();
    b.wait("#safety-action[data-action=review]", None, T).await.unwrap();
    b.click_on("#save-preflight", None, T).await.unwrap();
    b.wait("#verdicts", Some("QF-CONTENT-REVIEW"), T).await.unwrap();
    let held = b.url().await.unwrap().rsplit('/').next().unwrap().to_owned();
    b.click_on("#send", None, T).await.unwrap();
    b.wait("#state", Some("待审批"), T).await.unwrap();

    // The reviewer sees it in the queue, the hits marked, and approves it.
    log_in("checker", "审核员").await;
    b.click_on("a[href='#/reviews']", None, T).await.unwrap();
    let card = format!("#reviews a[href='#/broadcasts/{held}']");
    b.wait(&card, None, T).await.unwrap();
    b.wait("#reviews .highlight mark.review", Some("赚钱"), T).await.unwrap();
    b.click_on("#reviews button.primary", None, T).await.unwrap();
    b.wait_gone(&card, T).await.unwrap();
    assert_eq!(app.wait_completed(&owner, &held).await["counts"]["delivered"], 3);

    // The owner schedules a draft every Monday at 09:00, then takes it back.
    log_in("boss", "所有者").await;
    b.goto(&format!("{base}/console/#/compose")).await.unwrap();
    b.type_into(&b.wait("#compose-expr", None, T).await.unwrap(), "tag:会员", true).await.unwrap();
    b.type_into(&b.wait("#content-text", None, T).await.unwrap(), "每周一上午九点的会员周报。", true).await.unwrap();
    b.wait("#safety-action[data-action=allow]", None, T).await.unwrap();
    b.click_on("#save-preflight", None, T).await.unwrap();
    b.wait("#preflight-recipients", Some("3"), T).await.unwrap();
    let draft = b.url().await.unwrap().rsplit('/').next().unwrap().to_owned();
    b.type_into(&b.wait("#schedule-zone", None, T).await.unwrap(), "Asia/Shanghai", true).await.unwrap();
    b.type_into(&b.wait("#schedule-cron", None, T).await.unwrap(), "0 9 * * MON", true).await.unwrap();
    b.click_on("#schedule", None, T).await.unwrap();
    b.wait("#state", Some("已定时"), T).await.unwrap();
    b.wait("#schedule-at", Some("0 9 * * MON"), T).await.unwrap();
    let stored = app.get(&format!("/v1/broadcasts/{draft}/schedule"), &owner).await.expect(200);
    assert_eq!(stored["schedule"]["cron"], "0 9 * * MON");
    b.click_on("#unschedule", None, T).await.unwrap();
    b.wait("#state", Some("草稿"), T).await.unwrap();
    // A bad cron expression is explained in place; nothing is scheduled.
    b.type_into(&b.wait("#schedule-cron", None, T).await.unwrap(), "0 9 31 2 *", true).await.unwrap();
    b.click_on("#schedule", None, T).await.unwrap();
    b.wait(".error", Some("QF-SCHEDULE-NEVER"), T).await.unwrap();
    assert_eq!(app.get(&format!("/v1/broadcasts/{draft}"), &owner).await.expect(200)["state"], "draft");
    b.quit().await;
}
