//! The WeChat-compatible API (`/cgi-bin/`, docs/compat.md) through HTTP:
//! tokens and their errcodes, WeCom sends with their limits, Official
//! Account mass sends with clientmsgid, quota and paging, and the encrypted
//! `MASSSENDJOBFINISH` callback decrypted here. (tests/compat/run.sh drives
//! the same layer with the unmodified wechatpy SDK.)

use serde_json::{json, Value};

use crate::support::{spawn_app_policy, Backend, TestApp};

const CORP_ID: &str = "wwtestcorp";
const CORP_SECRET: &str = "corp-secret-0123456789abcdefghijklmnop";
const APP_ID: &str = "wxtestapp";
const APP_SECRET: &str = "app-secret-0123456789abcdefghijklmnopq";
const CB_TOKEN: &str = "cbToken123";
const CB_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

/// A call of the compatible API: always HTTP 200 with a JSON body.
async fn cgi(app: &TestApp, path: &str, query: &[(&str, &str)], body: Option<Value>) -> Value {
    let url = format!("{}/cgi-bin/{path}", app.base);
    let r = match body {
        // JSON without a Content-Type header, as many clients send it.
        Some(b) => app.http.post(url).query(query).body(b.to_string()),
        None => app.http.get(url).query(query),
    };
    let resp = r.send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    v
}

#[track_caller]
fn errcode(v: &Value) -> i64 {
    v["errcode"].as_i64().unwrap_or(0)
}

async fn wecom_token(app: &TestApp) -> String {
    let t = cgi(app, "gettoken", &[("corpid", CORP_ID), ("corpsecret", CORP_SECRET)], None).await;
    assert_eq!((errcode(&t), t["expires_in"].as_i64()), (0, Some(7200)), "{t}");
    t["access_token"].as_str().unwrap().to_owned()
}

async fn oa_token(app: &TestApp) -> String {
    let t = cgi(app, "token", &[("grant_type", "client_credential"), ("appid", APP_ID), ("secret", APP_SECRET)], None)
        .await;
    assert_eq!(t["expires_in"], 7200, "{t}");
    t["access_token"].as_str().unwrap().to_owned()
}

async fn post(app: &TestApp, path: &str, token: &str, body: Value) -> Value {
    cgi(app, path, &[("access_token", token)], Some(body)).await
}

/// An enterprise workspace with WeCom credentials; returns its owner key.
async fn wecom_workspace(app: &TestApp) -> String {
    let (_, key) = app.workspace("enterprise").await;
    app.put("/v1/compat/wecom", &key, json!({"app_id": CORP_ID, "secret": CORP_SECRET})).await.expect(200);
    key
}

/// An api workspace (plan pro) with Official Account credentials, its
/// callback at `callback` when given; returns its owner key.
async fn oa_workspace(app: &TestApp, callback: Option<&str>) -> String {
    let w = app
        .call(
            reqwest::Method::POST,
            "/v1/workspaces",
            Some(crate::support::ADMIN_TOKEN),
            Some(json!({"name": "公众号", "kind": "api", "plan": "pro"})),
        )
        .await
        .expect(201);
    let key = w["api_key"].as_str().unwrap().to_owned();
    let mut body = json!({"app_id": APP_ID, "secret": APP_SECRET});
    if let Some(url) = callback {
        body["callback_url"] = json!(url);
        body["callback_token"] = json!(CB_TOKEN);
        body["encoding_aes_key"] = json!(CB_KEY);
    }
    app.put("/v1/compat/oa", &key, body).await.expect(200);
    key
}

/// Tokens, the credentials API and the errcodes of authentication.
pub async fn tokens_and_errors(backend: Backend) {
    let app = spawn_app_policy(backend, "").await;
    let key = wecom_workspace(&app).await;
    // Admin only; secrets never shown; bad callback settings refused.
    let (_, sender) = app.member(&key, "sender").await;
    app.put("/v1/compat/wecom", &sender, json!({"app_id": "x1", "secret": "12345678"}))
        .await
        .expect_error(403, "QF-AUTH-FORBIDDEN");
    app.put("/v1/compat/oa", &key, json!({"app_id": "wxa", "secret": "12345678", "callback_url": "http://x.test/cb", "callback_token": "tok", "encoding_aes_key": "short"}))
        .await
        .expect_error(400, "QF-BAD-REQUEST");
    app.put("/v1/compat/fax", &key, json!({"app_id": "wxa", "secret": "12345678"}))
        .await
        .expect_error(404, "QF-NOT-FOUND");
    // A short secret is refused; none makes the server generate one, shown once.
    app.put("/v1/compat/oa", &key, json!({"app_id": "wxshort", "secret": "x".repeat(31)}))
        .await
        .expect_error(400, "QF-BAD-REQUEST");
    let generated = app.put("/v1/compat/oa", &key, json!({"app_id": "wxgenerated"})).await.expect(200);
    let secret = generated["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 43);
    assert!(!app.get("/v1/compat", &key).await.expect(200).to_string().contains(&secret));
    let t =
        cgi(&app, "token", &[("grant_type", "client_credential"), ("appid", "wxgenerated"), ("secret", &secret)], None)
            .await;
    // The OA token answer is WeChat's: no errcode.
    assert!(t["access_token"].is_string() && t.get("errcode").is_none(), "{t}");
    app.call(reqwest::Method::DELETE, "/v1/compat/oa", Some(&key), None).await.expect(204);
    let listed = app.get("/v1/compat", &key).await.expect(200);
    assert_eq!(listed[0]["app_id"], CORP_ID);
    assert!(!listed.to_string().contains(CORP_SECRET), "{listed}");
    // Another workspace cannot take the same corpid.
    let (_, other) = app.workspace("enterprise").await;
    app.put("/v1/compat/wecom", &other, json!({"app_id": CORP_ID, "secret": "another-secret-0123456789abcdefghijk"}))
        .await
        .expect_error(409, "QF-DUPLICATE");

    // gettoken and token with WeChat's errcodes.
    let wc = |q: Vec<(&'static str, &'static str)>| {
        let app = &app;
        async move { errcode(&cgi(app, "gettoken", &q, None).await) }
    };
    assert_eq!(wc(vec![("corpsecret", CORP_SECRET)]).await, 41002);
    assert_eq!(wc(vec![("corpid", CORP_ID)]).await, 41004);
    assert_eq!(wc(vec![("corpid", "wwnone"), ("corpsecret", CORP_SECRET)]).await, 40013);
    assert_eq!(wc(vec![("corpid", CORP_ID), ("corpsecret", "wrong")]).await, 40001);
    let token = wecom_token(&app).await;
    oa_workspace(&app, None).await;
    let t = cgi(&app, "token", &[("grant_type", "password"), ("appid", APP_ID), ("secret", APP_SECRET)], None).await;
    assert_eq!(errcode(&t), 40002);
    let t =
        cgi(&app, "token", &[("grant_type", "client_credential"), ("appid", "wxnone"), ("secret", APP_SECRET)], None)
            .await;
    assert_eq!(errcode(&t), 40013);
    let t =
        cgi(&app, "token", &[("grant_type", "client_credential"), ("appid", APP_ID), ("secret", "wrong")], None).await;
    assert_eq!(errcode(&t), 40001);
    let oa = oa_token(&app).await;

    // Calls: 41001 without a token, 40014 for garbage, 40001 for an
    // Official Account token that is not (or no longer) valid.
    assert_eq!(errcode(&cgi(&app, "tag/list", &[], None).await), 41001);
    assert_eq!(errcode(&cgi(&app, "tag/list", &[("access_token", "garbage")], None).await), 40014);
    let stale = format!("qfo{}", "A".repeat(96));
    assert_eq!(errcode(&cgi(&app, "tags/get", &[("access_token", &stale)], None).await), 40001);
    let ok = cgi(&app, "tag/list", &[("access_token", &token), ("extra", "1")], None).await;
    assert_eq!((errcode(&ok), ok["errmsg"].as_str()), (0, Some("ok")), "{ok}");
    assert_eq!(ok["taglist"], json!([]));
    // Malformed JSON, an API of the other kind, an unknown API.
    let bad = app
        .http
        .post(format!("{}/cgi-bin/message/send?access_token={token}", app.base))
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&bad.text().await.unwrap()).unwrap()["errcode"], 47001);
    assert_eq!(errcode(&post(&app, "message/mass/sendall", &token, json!({})).await), 48001);
    assert_eq!(errcode(&post(&app, "message/send", &oa, json!({})).await), 48001);
    // New credentials void the tokens issued before.
    app.put("/v1/compat/wecom", &key, json!({"app_id": CORP_ID, "secret": CORP_SECRET})).await.expect(200);
    assert_eq!(errcode(&cgi(&app, "tag/list", &[("access_token", &token)], None).await), 40014);
    // After 7,200 s a token has expired: 42001.
    let token = wecom_token(&app).await;
    app.advance(7_201_000);
    assert_eq!(errcode(&cgi(&app, "tag/list", &[("access_token", &token)], None).await), 42001);
    assert_eq!(errcode(&cgi(&app, "tags/get", &[("access_token", &oa)], None).await), 42001);
}

/// WeCom message/send: recipients, limits, invalid ids, duplicate check, verdicts.
pub async fn wecom_send(backend: Backend) {
    let app = spawn_app_policy(backend, "").await;
    let key = wecom_workspace(&app).await;
    let token = wecom_token(&app).await;
    let dept = post(&app, "department/create", &token, json!({"name": "研发部", "parentid": 1})).await;
    assert_eq!(dept["errmsg"], "created", "{dept}");
    let dept = dept["id"].as_i64().unwrap();
    for (u, d) in [("zhang", dept), ("li", dept), ("wang", 1)] {
        let r = post(&app, "user/create", &token, json!({"userid": u, "name": u, "department": [d], "extra_field": 1}))
            .await;
        assert_eq!(errcode(&r), 0, "{r}");
    }
    let tag = post(&app, "tag/create", &token, json!({"tagname": "VIP"})).await["tagid"].as_i64().unwrap();
    let r = post(&app, "tag/addtagusers", &token, json!({"tagid": tag, "userlist": ["wang", "nobody"]})).await;
    assert_eq!(r["invalidlist"], "nobody");
    let text = |t: &str| json!({"content": t});

    let r = post(&app, "message/send", &token, json!({"touser": "zhang|nobody", "toparty": format!("{dept}|999999"), "totag": format!("{tag}|888888"), "msgtype": "text", "agentid": 1, "text": text("周会改到三点")})).await;
    assert_eq!(errcode(&r), 0, "{r}");
    assert_eq!(
        (r["invaliduser"].as_str(), r["invalidparty"].as_str(), r["invalidtag"].as_str()),
        (Some("nobody"), Some("999999"), Some("888888"))
    );
    let id = r["msgid"].as_str().unwrap().to_owned();
    let done = app.wait_completed(&key, &id).await;
    assert_eq!(done["recipients"], 3, "zhang and li by department, wang by tag: {done}");
    assert_eq!(done["content"]["text"], "周会改到三点\n\n来自enterprise ws", "the enterprise signature applies");

    let send = |body: Value| {
        let (app, token) = (&app, &token);
        async move { post(app, "message/send", token, body).await }
    };
    assert_eq!(
        errcode(
            &send(json!({"touser": "ghost1|ghost2", "toparty": "424242", "msgtype": "text", "text": text("x")})).await
        ),
        81013
    );
    let users: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    assert_eq!(errcode(&send(json!({"touser": users.join("|"), "msgtype": "text", "text": text("x")})).await), 40058);
    let parties: Vec<String> = (0..101).map(|i| i.to_string()).collect();
    assert_eq!(
        errcode(&send(json!({"toparty": parties.join("|"), "msgtype": "text", "text": text("x")})).await),
        40058
    );
    assert_eq!(errcode(&send(json!({"totag": parties.join("|"), "msgtype": "text", "text": text("x")})).await), 40058);
    // 2,048 bytes of text at most (682 CJK characters are 2,046 bytes).
    assert_eq!(
        errcode(&send(json!({"touser": "zhang", "msgtype": "text", "text": text(&"字".repeat(683))})).await),
        45002
    );
    let r = send(json!({"touser": "zhang", "msgtype": "text", "text": text(&"字".repeat(682))})).await;
    assert_eq!(errcode(&r), 0, "{r}");
    assert_eq!(errcode(&send(json!({"touser": "zhang", "msgtype": "text", "text": text("  ")})).await), 44004);
    assert_eq!(errcode(&send(json!({"touser": "zhang", "msgtype": "voice", "voice": {"media_id": "x"}})).await), 40008);
    assert_eq!(
        errcode(&send(json!({"touser": "zhang", "msgtype": "image", "image": {"media_id": "0".repeat(64)}})).await),
        40007
    );
    // Content safety: blocked content is 87014 with qunfa's code in errmsg.
    let r =
        send(json!({"touser": "zhang", "msgtype": "text", "text": text("高价收ＵＳＤＴ，当天结算，稳赚不赔")})).await;
    assert_eq!(errcode(&r), 87014, "{r}");
    assert!(r["errmsg"].as_str().unwrap().contains("QF-CONTENT-BLOCKED"), "{r}");
    // Duplicate check: the same message within the interval is sent once.
    let dup = json!({"touser": "li", "msgtype": "text", "text": text("只发一次"), "enable_duplicate_check": 1, "duplicate_check_interval": 60});
    let a = send(dup.clone()).await;
    let b = send(dup.clone()).await;
    assert_eq!(a["msgid"], b["msgid"]);
    app.advance(61_000);
    let c = send(dup).await;
    assert_ne!(a["msgid"], c["msgid"], "after the interval it is a new message");
    // Other message types map onto qunfa content.
    for body in [
        json!({"touser": "zhang", "msgtype": "textcard", "textcard": {"title": "通知", "description": "详情", "url": "https://example.com/a", "btntxt": "更多"}}),
        json!({"touser": "zhang", "msgtype": "news", "news": {"articles": [{"title": "新品", "url": "https://example.com/n", "picurl": "https://example.com/p.png"}]}}),
        json!({"touser": "zhang", "msgtype": "markdown", "markdown": {"content": "**重要**"}}),
        json!({"touser": "zhang", "msgtype": "miniprogram_notice", "miniprogram_notice": {"appid": "wx123", "page": "pages/index", "title": "提醒"}}),
    ] {
        let r = send(body.clone()).await;
        assert_eq!(errcode(&r), 0, "{body}: {r}");
    }
    // Enterprise workspaces cannot recall (the tier's rule): 48002.
    let r = post(&app, "message/recall", &token, json!({"msgid": id})).await;
    assert_eq!(errcode(&r), 48002, "{r}");
    assert!(r["errmsg"].as_str().unwrap().contains("QF-RECALL-NOT-ALLOWED"));
    assert_eq!(errcode(&post(&app, "message/recall", &token, json!({"msgid": "123456789"})).await), 40058);
    // user/delete erases the contact; the userid is unknown afterwards.
    assert_eq!(post(&app, "user/create", &token, json!({"userid": "temp", "name": "临时"})).await["errmsg"], "created");
    assert_eq!(
        cgi(&app, "user/delete", &[("access_token", &token), ("userid", "temp")], None).await["errmsg"],
        "deleted"
    );
    assert_eq!(errcode(&cgi(&app, "user/get", &[("access_token", &token), ("userid", "temp")], None).await), 60111);
    // A send held for approval (above 500 recipients) is accepted: errcode 0,
    // and it waits in qunfa like any held send.
    app.contacts(&key, 501, &[]).await;
    let r = send(json!({"touser": "@all", "msgtype": "text", "text": text("全员大会")})).await;
    assert_eq!(errcode(&r), 0, "{r}");
    let held = app.get(&format!("/v1/broadcasts/{}", r["msgid"].as_str().unwrap()), &key).await.expect(200);
    assert_eq!(held["state"], "pending_approval", "{held}");
}

/// Recall within the tier's window; customer mass send with cursor paging.
pub async fn wecom_recall_and_customers(backend: Backend) {
    let app = spawn_app_policy(backend, "[tiers.enterprise]\nrecall_seconds = 86400\n").await;
    let key = wecom_workspace(&app).await;
    let token = wecom_token(&app).await;
    app.contacts(&key, 5, &[]).await;
    let r = post(
        &app,
        "message/send",
        &token,
        json!({"touser": "u0|u1", "msgtype": "text", "text": {"content": "发错了"}}),
    )
    .await;
    let id = r["msgid"].as_str().unwrap().to_owned();
    let r = post(&app, "message/send", &token, json!({"touser": "u2", "msgtype": "text", "text": {"content": "晚了"}}))
        .await;
    let late = r["msgid"].as_str().unwrap().to_owned();
    app.wait_completed(&key, &id).await;
    app.wait_completed(&key, &late).await;
    assert_eq!(errcode(&post(&app, "message/recall", &token, json!({"msgid": id})).await), 0);
    let b = app.get(&format!("/v1/broadcasts/{id}"), &key).await.expect(200);
    assert!(b["recalled_at"].is_string(), "{b}");
    assert_eq!(errcode(&post(&app, "message/recall", &token, json!({"msgid": id})).await), 40058);

    // Corp tags and a customer mass send filtered by them.
    let g = post(
        &app,
        "externalcontact/add_corp_tag",
        &token,
        json!({"group_name": "等级", "tag": [{"name": "金牌"}, {"name": "银牌"}]}),
    )
    .await;
    let gold = g["tag_group"]["tag"][0]["id"].as_str().unwrap().to_owned();
    for u in ["u0", "u1", "u2", "u3"] {
        let r = post(
            &app,
            "externalcontact/mark_tag",
            &token,
            json!({"userid": "boss", "external_userid": u, "add_tag": [gold]}),
        )
        .await;
        assert_eq!(errcode(&r), 0, "{r}");
    }
    let list = post(&app, "externalcontact/get_corp_tag_list", &token, json!({})).await;
    assert_eq!(list["tag_group"][0]["tag"].as_array().unwrap().len(), 2, "{list}");
    let externals: Vec<String> = (0..10_001).map(|i| format!("u{i}")).collect();
    let r = post(
        &app,
        "externalcontact/add_msg_template",
        &token,
        json!({"external_userid": externals, "text": {"content": "x"}}),
    )
    .await;
    assert_eq!(errcode(&r), 40058, "10,000 external_userid at most");
    let r = post(&app, "externalcontact/add_msg_template", &token, json!({"chat_type": "single", "external_userid": ["u0", "u1", "u2", "u4", "ghost"], "sender": "boss", "tag_filter": {"group_list": [{"tag_list": [gold]}]}, "text": {"content": "金牌专享"}})).await;
    assert_eq!(r["fail_list"], json!(["ghost"]), "{r}");
    let msgid = r["msgid"].as_str().unwrap().to_owned();
    app.wait_completed(&key, msgid.trim_start_matches("msg")).await;
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let mut body = json!({"msgid": msgid, "limit": 2});
        if !cursor.is_empty() {
            body["cursor"] = json!(cursor);
        }
        let page = post(&app, "externalcontact/get_groupmsg_send_result", &token, body).await;
        assert_eq!(errcode(&page), 0, "{page}");
        for x in page["send_list"].as_array().unwrap() {
            assert_eq!((x["status"].as_i64(), x["userid"].as_str()), (Some(1), Some("boss")));
            seen.push(x["external_userid"].as_str().unwrap().to_owned());
        }
        cursor = page["next_cursor"].as_str().unwrap().to_owned();
        if cursor.is_empty() {
            break;
        }
    }
    assert_eq!(seen, ["u0", "u1", "u2"], "u4 is not gold");
    let task = post(&app, "externalcontact/get_groupmsg_task", &token, json!({"msgid": msgid})).await;
    assert_eq!(task["task_list"][0]["status"], 1);
    let server_now = qunfa_store::now_millis() + app.clock_offset.load(std::sync::atomic::Ordering::SeqCst);
    let now = (server_now / 1000).to_string();
    let listed = post(
        &app,
        "externalcontact/get_groupmsg_list_v2",
        &token,
        json!({"chat_type": "single", "start_time": 0, "end_time": now}),
    )
    .await;
    assert_eq!(errcode(&listed), 40058, "a month at most: {listed}");
    let listed = post(
        &app,
        "externalcontact/get_groupmsg_list_v2",
        &token,
        json!({"chat_type": "single", "start_time": server_now / 1000 - 3600, "end_time": now}),
    )
    .await;
    assert_eq!(listed["group_msg_list"][0]["msgid"], msgid.as_str(), "{listed}");
    assert_eq!(listed["group_msg_list"][0]["creator"], "boss");
    // Past the tier's window.
    app.advance(86_401_000);
    let token = wecom_token(&app).await;
    let r = post(&app, "message/recall", &token, json!({"msgid": late})).await;
    assert!(r["errmsg"].as_str().unwrap().contains("QF-RECALL-WINDOW"), "{r}");
}

/// Official Account mass send: recipients, clientmsgid, quota, statuses, paging.
pub async fn oa_mass_send(backend: Backend) {
    let app = spawn_app_policy(backend, "[tiers.api]\nsends_per_day = 4\nrecall_seconds = 1800\n").await;
    let key = oa_workspace(&app, None).await;
    let token = oa_token(&app).await;
    let mut ndjson = String::new();
    for i in 0..10_001 {
        ndjson.push_str(&json!({"external_id": format!("o{i:05}"), "name": format!("粉丝{i}")}).to_string());
        ndjson.push('\n');
    }
    app.raw("/v1/contacts/import", &key, "application/x-ndjson", ndjson).await.expect(200);
    // Followers: 10,000 a page; next_openid always present, empty at the end.
    let p1 = cgi(&app, "user/get", &[("access_token", &token)], None).await;
    assert_eq!((p1["total"].as_u64(), p1["count"].as_u64()), (Some(10_001), Some(10_000)));
    assert_eq!(p1["next_openid"], "o09999");
    let p2 = cgi(&app, "user/get", &[("access_token", &token), ("next_openid", "o09999")], None).await;
    assert_eq!(
        (p2["count"].as_u64(), p2["data"]["openid"][0].as_str(), p2["next_openid"].as_str()),
        (Some(1), Some("o10000"), Some(""))
    );
    // Tags.
    let tag = post(&app, "tags/create", &token, json!({"tag": {"name": "老粉"}})).await["tag"]["id"].as_i64().unwrap();
    assert_eq!(errcode(&post(&app, "tags/create", &token, json!({"tag": {"name": "老粉"}})).await), 45157);
    assert_eq!(errcode(&post(&app, "tags/create", &token, json!({"tag": {"name": "长".repeat(31)}})).await), 45158);
    let fifty_one: Vec<String> = (0..51).map(|i| format!("o{i:05}")).collect();
    assert_eq!(
        errcode(
            &post(&app, "tags/members/batchtagging", &token, json!({"tagid": tag, "openid_list": fifty_one})).await
        ),
        40032
    );
    let r = post(
        &app,
        "tags/members/batchtagging",
        &token,
        json!({"tagid": tag, "openid_list": ["o00001", "o00002", "o00003"]}),
    )
    .await;
    assert_eq!(errcode(&r), 0, "{r}");
    assert_eq!(post(&app, "tags/getidlist", &token, json!({"openid": "o00002"})).await["tagid_list"], json!([tag]));
    let members = post(&app, "user/tag/get", &token, json!({"tagid": tag, "next_openid": ""})).await;
    assert_eq!((members["count"].as_u64(), members["next_openid"].as_str()), (Some(3), Some("")));
    let tags = cgi(&app, "tags/get", &[("access_token", &token)], None).await;
    assert_eq!(tags["tags"][0]["count"], 3);

    let text = |t: &str| json!({"content": t});
    // message/mass/send: 2 to 10,000 OpenIDs, else 40130.
    let one =
        post(&app, "message/mass/send", &token, json!({"touser": ["o00001"], "msgtype": "text", "text": text("x")}))
            .await;
    assert_eq!(errcode(&one), 40130);
    let many: Vec<String> = (0..10_001).map(|i| format!("o{i:05}")).collect();
    assert_eq!(
        errcode(
            &post(&app, "message/mass/send", &token, json!({"touser": many, "msgtype": "text", "text": text("x")}))
                .await
        ),
        40130
    );
    // By tag, with the legacy group_id: 45159 for an unknown tag.
    assert_eq!(
        errcode(
            &post(
                &app,
                "message/mass/sendall",
                &token,
                json!({"filter": {"is_to_all": false, "group_id": 99999}, "msgtype": "text", "text": text("x")})
            )
            .await
        ),
        45159
    );
    let by_tag = post(&app, "message/mass/sendall", &token, json!({"filter": {"is_to_all": false, "group_id": tag.to_string()}, "msgtype": "text", "text": text("老粉福利"), "send_ignore_reprint": 0})).await;
    assert_eq!((errcode(&by_tag), by_tag["errmsg"].as_str()), (0, Some("send job submission success")), "{by_tag}");
    let id = by_tag["msg_id"].as_i64().unwrap();
    let b = app.wait_completed(&key, &id.to_string()).await;
    assert_eq!(b["recipients"], 3);
    let st = post(&app, "message/mass/get", &token, json!({"msg_id": id})).await;
    assert_eq!(st["msg_status"], "SEND_SUCCESS");
    // clientmsgid: at once 45066; later 45065 with the original msg_id; too long 45067.
    let body =
        json!({"touser": ["o00001", "o00002"], "msgtype": "text", "text": text("订单提醒"), "clientmsgid": "order-1"});
    let first = post(&app, "message/mass/send", &token, body.clone()).await;
    assert_eq!(errcode(&first), 0, "{first}");
    assert_eq!(errcode(&post(&app, "message/mass/send", &token, body.clone()).await), 45066);
    app.advance(61_000);
    let token = oa_token(&app).await;
    let again = post(&app, "message/mass/send", &token, body).await;
    assert_eq!((errcode(&again), &again["msg_id"]), (45065, &first["msg_id"]), "{again}");
    let long =
        json!({"touser": ["o00001", "o00002"], "msgtype": "text", "text": text("x"), "clientmsgid": "c".repeat(65)});
    assert_eq!(errcode(&post(&app, "message/mass/send", &token, long).await), 45067);
    // Preview: one follower.
    let p = post(
        &app,
        "message/mass/preview",
        &token,
        json!({"touser": "o00005", "msgtype": "text", "text": text("预览")}),
    )
    .await;
    assert_eq!(p["errmsg"], "preview success", "{p}");
    // Delete (the tier's recall window) → DELETE.
    let fid = first["msg_id"].as_i64().unwrap();
    app.wait_completed(&key, &fid.to_string()).await;
    assert_eq!(errcode(&post(&app, "message/mass/delete", &token, json!({"msg_id": fid, "article_idx": 0})).await), 0);
    assert_eq!(post(&app, "message/mass/get", &token, json!({"msg_id": fid})).await["msg_status"], "DELETE");
    // The daily quota (4 here; the tag send, the clientmsgid send and the
    // preview, which is a send in qunfa, used three): 45028.
    let r = post(
        &app,
        "message/mass/sendall",
        &token,
        json!({"filter": {"is_to_all": false, "tag_id": tag}, "msgtype": "text", "text": text("第四次")}),
    )
    .await;
    assert_eq!(errcode(&r), 0, "{r}");
    let r = post(
        &app,
        "message/mass/sendall",
        &token,
        json!({"filter": {"is_to_all": false, "tag_id": tag}, "msgtype": "text", "text": text("第五次")}),
    )
    .await;
    assert_eq!(errcode(&r), 45028, "{r}");
    assert!(r["errmsg"].as_str().unwrap().contains("QF-LIMIT-DAILY-SENDS"));
    // Speed levels.
    assert_eq!(errcode(&post(&app, "message/mass/speed/set", &token, json!({"speed": 5})).await), 45083);
    assert_eq!(errcode(&post(&app, "message/mass/speed/set", &token, json!({"speed": 2})).await), 0);
    assert_eq!(post(&app, "message/mass/speed/get", &token, json!({})).await["speed"], 2);
    assert_eq!(app.get("/v1/speed", &key).await.expect(200)["level"], 2, "the workspace's own speed level");
}

/// What the callback receiver got: (query, body).
type Got = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

async fn receive(
    axum::extract::State(got): axum::extract::State<Got>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
    body: String,
) -> &'static str {
    got.lock().unwrap().push((q.unwrap_or_default(), body));
    "success"
}

/// The MASSSENDJOBFINISH event: signed, AES-encrypted, decrypted here.
pub async fn oa_callback(backend: Backend) {
    let app = spawn_app_policy(backend, "").await;
    let got: Got = Default::default();
    let router = axum::Router::new().route("/cb", axum::routing::post(receive)).with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/cb", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let key = oa_workspace(&app, Some(&url)).await;
    app.contacts(&key, 4, &[]).await;
    let token = oa_token(&app).await;
    let r = post(
        &app,
        "message/mass/sendall",
        &token,
        json!({"filter": {"is_to_all": true}, "msgtype": "text", "text": {"content": "全体通知"}}),
    )
    .await;
    let id = r["msg_id"].as_i64().unwrap();
    let mut event = None;
    for _ in 0..200 {
        if let Some(e) = got.lock().unwrap().first().cloned() {
            event = Some(e);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (query, body) = event.expect("a callback arrives");
    let q: std::collections::HashMap<String, String> = serde_urlencoded_pairs(&query);
    let encrypted = body.split("<Encrypt><![CDATA[").nth(1).and_then(|s| s.split("]]>").next()).unwrap();
    use qunfa_server::compat::crypto;
    assert_eq!(q["msg_signature"], crypto::signature(CB_TOKEN, &q["timestamp"], &q["nonce"], encrypted));
    assert_eq!(q["encrypt_type"], "aes");
    let (xml, receive_id) = crypto::decrypt(&crypto::aes_key(CB_KEY).unwrap(), encrypted).unwrap();
    assert_eq!(receive_id, APP_ID);
    for part in [
        "<Event><![CDATA[MASSSENDJOBFINISH]]></Event>".to_owned(),
        format!("<MsgID>{id}</MsgID>"),
        "<Status><![CDATA[send success]]></Status>".into(),
        "<TotalCount>4</TotalCount><FilterCount>4</FilterCount><SentCount>4</SentCount><ErrorCount>0</ErrorCount>"
            .into(),
    ] {
        assert!(xml.contains(&part), "{part} not in {xml}");
    }
    // Exactly one event per send: the outcome is recorded once ("done" after
    // one attempt), and a done callback is never claimed again.
    let mut state = None;
    for _ in 0..200 {
        let store = app.store.clone();
        state = tokio::task::spawn_blocking(move || store.compat_callback_state(id).unwrap()).await.unwrap();
        if state.as_ref().is_some_and(|(s, _)| s == "done") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(state, Some(("done".to_owned(), 1)));
    assert_eq!(got.lock().unwrap().len(), 1);
}

/// A call with the device header of an integration (the abnormal-login rule sees it).
async fn post_device(app: &TestApp, path: &str, token: &str, body: Value, device: &str) -> Value {
    let url = format!("{}/cgi-bin/{path}", app.base);
    let r =
        app.http.post(url).query(&[("access_token", token)]).header("x-qunfa-device", device).body(body.to_string());
    serde_json::from_str(&r.send().await.unwrap().text().await.unwrap()).unwrap()
}

/// How many broadcasts the workspace has.
async fn n_broadcasts(app: &TestApp, key: &str) -> usize {
    app.get("/v1/broadcasts?limit=100", key).await.expect(200)["items"].as_array().unwrap().len()
}

/// 2 to 10,000 OpenIDs and up to 10,000 external_userid are one send (not an
/// `id in (…)` expression, not refused by the /v1 batch of 2,000).
pub async fn large_picked_audiences(backend: Backend) {
    let app = spawn_app_policy(backend, "").await;
    let key = oa_workspace(&app, None).await;
    let token = oa_token(&app).await;
    let mut ndjson = String::new();
    for i in 0..10_000 {
        ndjson.push_str(&json!({"external_id": format!("o{i:05}"), "name": format!("粉丝{i}")}).to_string());
        ndjson.push('\n');
    }
    app.raw("/v1/contacts/import", &key, "application/x-ndjson", ndjson).await.expect(200);
    let all: Vec<String> = (0..10_000).map(|i| format!("o{i:05}")).collect();
    let r = post(
        &app,
        "message/mass/send",
        &token,
        json!({"touser": all, "msgtype": "text", "text": {"content": "万人通知"}}),
    )
    .await;
    assert_eq!(errcode(&r), 0, "{r}");
    let b = app.get(&format!("/v1/broadcasts/{}", r["msg_id"]), &key).await.expect(200);
    assert!(matches!(b["state"].as_str(), Some("sending" | "completed")), "{b}");
    assert_eq!(b["recipients"].as_u64(), Some(10_000), "{b}");

    // WeCom customer mass send: 2,500 external_userid (held for approval above 500: accepted).
    let app = spawn_app_policy(backend, "").await;
    let key = wecom_workspace(&app).await;
    let token = wecom_token(&app).await;
    app.contacts(&key, 2_500, &[]).await;
    let externals: Vec<String> = (0..2_500).map(|i| format!("u{i}")).collect();
    let r = post(
        &app,
        "externalcontact/add_msg_template",
        &token,
        json!({"external_userid": externals, "sender": "boss", "text": {"content": "新品上市"}}),
    )
    .await;
    assert_eq!(errcode(&r), 0, "{r}");
    let id = r["msgid"].as_str().unwrap().trim_start_matches("msg").to_owned();
    let b = app.get(&format!("/v1/broadcasts/{id}"), &key).await.expect(200);
    assert_eq!(b["state"], "pending_approval", "{b}");
    let pre = app.post(&format!("/v1/broadcasts/{id}/preflight"), &key, json!({})).await.expect(200);
    assert_eq!(pre["recipients"], 2_500, "{pre}");
    assert!(!pre.to_string().contains("QF-LIMIT-API-BATCH"), "{pre}");
}

/// A refused send does not block its clientmsgid: the retry submits the
/// same draft; meanwhile mass/get says SEND_FAIL, not SENDING.
pub async fn refused_send_is_retried(backend: Backend) {
    let app = spawn_app_policy(backend, "[tiers.api]\nsends_per_day = 1\n").await;
    let key = oa_workspace(&app, None).await;
    app.contacts(&key, 3, &[]).await;
    let token = oa_token(&app).await;
    let body = |t: &str, cid: Option<&str>| {
        let mut b = json!({"touser": ["u0", "u1"], "msgtype": "text", "text": {"content": t}});
        if let Some(cid) = cid {
            b["clientmsgid"] = json!(cid);
        }
        b
    };
    assert_eq!(errcode(&post(&app, "message/mass/send", &token, body("第一条", None)).await), 0);
    // The daily quota is used: refused, and the draft keeps the clientmsgid.
    let refused = post(&app, "message/mass/send", &token, body("第二条", Some("c-2"))).await;
    assert_eq!(errcode(&refused), 45028, "{refused}");
    let draft = app.get("/v1/broadcasts?limit=1", &key).await.expect(200)["items"][0].clone();
    assert_eq!(draft["state"], "draft");
    let draft_id: i64 = draft["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(post(&app, "message/mass/get", &token, json!({"msg_id": draft_id})).await["msg_status"], "SEND_FAIL");
    // At once again: still refused (not 45066 for a send that never went out).
    assert_eq!(errcode(&post(&app, "message/mass/send", &token, body("第二条", Some("c-2"))).await), 45028);
    // The next local day (within the clientmsgid's hours): the retry sends the same draft.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
        + app.clock_offset.load(std::sync::atomic::Ordering::SeqCst);
    let day = 86_400_000;
    app.advance(day - (now + 8 * 3_600_000) % day + 1_000);
    let token = oa_token(&app).await;
    let retry = post(&app, "message/mass/send", &token, body("第二条", Some("c-2"))).await;
    assert_eq!((errcode(&retry), retry["msg_id"].as_i64()), (0, Some(draft_id)), "{retry}");
    // Dispatched (the engine may have delivered it already).
    let b = app.get(&format!("/v1/broadcasts/{draft_id}"), &key).await.expect(200);
    assert!(matches!(b["state"].as_str(), Some("sending" | "completed")), "{b}");
    assert_eq!(n_broadcasts(&app, &key).await, 2, "no second draft");
    // Now it was sent: the clientmsgid answers the original.
    let again = post(&app, "message/mass/send", &token, body("第二条", Some("c-2"))).await;
    assert_eq!((errcode(&again), again["msg_id"].as_i64()), (45065, Some(draft_id)), "{again}");
    // A refused draft gives its clientmsgid up to a request with other content.
    let refused = post(&app, "message/mass/send", &token, body("第三条", Some("c-3"))).await;
    assert_eq!(errcode(&refused), 45028, "{refused}");
    let other = post(&app, "message/mass/send", &token, body("第三条（改）", Some("c-3"))).await;
    assert_eq!(errcode(&other), 45028, "refused for the quota again, not for the clientmsgid: {other}");
}

/// Identical WeCom sends with enable_duplicate_check at the same moment: one broadcast.
pub async fn concurrent_duplicates_send_once(backend: Backend) {
    let app = spawn_app_policy(backend, "").await;
    let key = wecom_workspace(&app).await;
    let token = wecom_token(&app).await;
    app.contacts(&key, 3, &[]).await;
    let body = json!({"touser": "u0|u1|u2", "msgtype": "text", "text": {"content": "只发一次"},
                      "enable_duplicate_check": 1, "duplicate_check_interval": 600});
    let calls = (0..8).map(|_| post(&app, "message/send", &token, body.clone()));
    let answers = futures::future::join_all(calls).await;
    let ids: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|r| {
            assert_eq!(errcode(r), 0, "{r}");
            r["msgid"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert_eq!(n_broadcasts(&app, &key).await, 1);
    let id = ids.into_iter().next().unwrap();
    assert_eq!(app.wait_completed(&key, &id).await["recipients"], 3);
    // After the interval it is a new send.
    app.advance(601_000);
    let token = wecom_token(&app).await;
    let r = post(&app, "message/send", &token, body).await;
    assert_ne!(r["msgid"].as_str().unwrap(), id, "{r}");
}

/// Rules the compatible API must not escape: abnormal logins, the personal
/// tier's single audience, the body limit before authentication.
pub async fn rules_apply(backend: Backend) {
    let app = spawn_app_policy(backend, "").await;
    let key = wecom_workspace(&app).await;
    let token = wecom_token(&app).await;
    app.contacts(&key, 2, &[]).await;
    let send = json!({"touser": "u0|u1", "msgtype": "text", "text": {"content": "设备"}});
    let r = post_device(&app, "message/send", &token, send.clone(), "integration-a").await;
    assert_eq!(errcode(&r), 0, "the member's first device is trusted: {r}");
    let r = post_device(&app, "message/send", &token, send, "integration-b").await;
    assert_eq!(errcode(&r), 48001, "{r}");
    assert!(r["errmsg"].as_str().unwrap().contains("QF-LOGIN-ABNORMAL"), "{r}");

    // Personal: users and a tag together are a combination (refused, nothing made).
    let (_, pkey) = app.workspace("personal").await;
    app.put("/v1/compat/wecom", &pkey, json!({"app_id": "wwpersonal", "secret": CORP_SECRET})).await.expect(200);
    let t = cgi(&app, "gettoken", &[("corpid", "wwpersonal"), ("corpsecret", CORP_SECRET)], None).await;
    let ptoken = t["access_token"].as_str().unwrap().to_owned();
    app.contacts(&pkey, 3, &[]).await;
    let tag = post(&app, "tag/create", &ptoken, json!({"tagname": "朋友"})).await["tagid"].as_i64().unwrap();
    post(&app, "tag/addtagusers", &ptoken, json!({"tagid": tag, "userlist": ["u2"]})).await;
    let r = post(
        &app,
        "message/send",
        &ptoken,
        json!({"touser": "u0", "totag": tag, "msgtype": "text", "text": {"content": "混合"}}),
    )
    .await;
    assert_eq!(errcode(&r), 45009, "{r}");
    assert!(r["errmsg"].as_str().unwrap().contains("QF-AUDIENCE-COMBINATION"), "{r}");
    let r = post(
        &app,
        "externalcontact/add_msg_template",
        &ptoken,
        json!({"external_userid": ["u0"], "text": {"content": "混合"},
        "tag_filter": {"group_list": [{"tag_list": [format!("et{tag}")]}]}}),
    )
    .await;
    assert!(r["errmsg"].as_str().unwrap_or_default().contains("QF-AUDIENCE-COMBINATION"), "{r}");
    assert_eq!(n_broadcasts(&app, &pkey).await, 0);

    // A body above 21 MB: not read without a token, refused with one. Only
    // the headers are sent: the answer must come without the body (a client
    // writing the body would race the server closing the connection).
    let big = 22 * 1024 * 1024;
    let r = headers_only(&app.base, "/cgi-bin/message/send", big).await;
    assert_eq!(errcode(&r), 41001, "{r}");
    let r = headers_only(&app.base, &format!("/cgi-bin/message/send?access_token={token}"), big).await;
    assert_eq!(errcode(&r), 40006, "{r}");
    // A /v1 broadcast is no msgid of this API.
    let ids = app.contacts(&key, 2, &[]).await;
    let v1 = app.draft(&key, "v1", json!({"contact_ids": ids})).await;
    assert_eq!(
        errcode(
            &post(&app, "externalcontact/cancel_groupmsg_send", &token, json!({"msgid": format!("msg{v1}")})).await
        ),
        40058
    );
}

/// A POST that declares `length` bytes of body and sends none: the answer,
/// which the server must give from the headers alone.
async fn headers_only(base: &str, path: &str, length: usize) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.strip_prefix("http://").unwrap();
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = conn.read(&mut buf).await.unwrap_or(0);
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((headers, body)) = text.split_once("\r\n\r\n") {
                let len = headers
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                    .and_then(|v| v.parse::<usize>().ok());
                if n == 0 || len.is_some_and(|len| body.len() >= len) {
                    return body.to_owned();
                }
            } else if n == 0 {
                return String::new();
            }
        }
    };
    let body =
        tokio::time::timeout(std::time::Duration::from_secs(10), read).await.expect("an answer without the body");
    serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body:?}"))
}

/// cancel_groupmsg_send stops what is left (a held send is withdrawn), it does not recall.
pub async fn cancel_stops_what_is_left(backend: Backend) {
    let app = spawn_app_policy(backend, "").await;
    let key = wecom_workspace(&app).await;
    let token = wecom_token(&app).await;
    app.contacts(&key, 600, &[]).await;
    let externals: Vec<String> = (0..600).map(|i| format!("u{i}")).collect();
    let r = post(
        &app,
        "externalcontact/add_msg_template",
        &token,
        json!({"external_userid": externals, "text": {"content": "待审"}}),
    )
    .await;
    let msgid = r["msgid"].as_str().unwrap().to_owned();
    let id = msgid.trim_start_matches("msg");
    assert_eq!(app.get(&format!("/v1/broadcasts/{id}"), &key).await.expect(200)["state"], "pending_approval");
    let r = post(&app, "externalcontact/cancel_groupmsg_send", &token, json!({"msgid": msgid})).await;
    assert_eq!(errcode(&r), 0, "{r}");
    let b = app.get(&format!("/v1/broadcasts/{id}"), &key).await.expect(200);
    assert_eq!((b["state"].as_str(), b["recalled_at"].is_null()), (Some("cancelled"), true), "{b}");
    // A completed send has nothing left to stop: nothing changes (no recall).
    let r = post(
        &app,
        "externalcontact/add_msg_template",
        &token,
        json!({"external_userid": ["u1", "u2"], "text": {"content": "已发"}}),
    )
    .await;
    let done = r["msgid"].as_str().unwrap().to_owned();
    app.wait_completed(&key, done.trim_start_matches("msg")).await;
    assert_eq!(errcode(&post(&app, "externalcontact/cancel_groupmsg_send", &token, json!({"msgid": done})).await), 0);
    let b = app.get(&format!("/v1/broadcasts/{}", done.trim_start_matches("msg")), &key).await.expect(200);
    assert_eq!((b["state"].as_str(), b["recalled_at"].is_null()), (Some("completed"), true), "{b}");
}

/// user/list of the root without fetch_child: the contacts in no department,
/// however many contacts come before them.
pub async fn user_list_filters_before_the_page(backend: Backend) {
    let app = spawn_app_policy(backend, "").await;
    let key = wecom_workspace(&app).await;
    let token = wecom_token(&app).await;
    let dept =
        post(&app, "department/create", &token, json!({"name": "大部门", "parentid": 1})).await["id"].as_i64().unwrap();
    let ids = app.contacts(&key, 10_003, &[]).await;
    let ws = ids[0].parse::<i64>().unwrap() >> 32;
    let idxs: Vec<u32> =
        (0..10_000).map(|i| qunfa_store::contact_idx_of(ws, ids[i].parse().unwrap()).unwrap()).collect();
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || store.department_members(ws, dept - 1, &idxs, "test", 0).unwrap())
        .await
        .unwrap();
    let root = cgi(&app, "user/simplelist", &[("access_token", &token), ("department_id", "1")], None).await;
    let users: Vec<&str> = root["userlist"].as_array().unwrap().iter().map(|u| u["userid"].as_str().unwrap()).collect();
    assert_eq!(users, ["u10000", "u10001", "u10002"]);
    let d = cgi(&app, "user/list", &[("access_token", &token), ("department_id", &dept.to_string())], None).await;
    assert_eq!(d["userlist"].as_array().unwrap().len(), 10_000);
    assert_eq!(d["userlist"][0]["department"], json!([dept]));
    let all =
        cgi(&app, "user/simplelist", &[("access_token", &token), ("department_id", "1"), ("fetch_child", "1")], None)
            .await;
    assert_eq!(all["userlist"].as_array().unwrap().len(), 10_000, "a page of 10,000");
}

/// A receiver's redirect is a failed attempt, never a post somewhere else.
pub async fn callback_redirects_are_not_followed(backend: Backend) {
    let app = spawn_app_policy(backend, "").await;
    let got: Got = Default::default();
    let router = axum::Router::new()
        .route("/cb", axum::routing::post(|| async { axum::response::Redirect::temporary("/elsewhere") }))
        .route("/elsewhere", axum::routing::any(receive))
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/cb", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let key = oa_workspace(&app, Some(&url)).await;
    app.contacts(&key, 2, &[]).await;
    let token = oa_token(&app).await;
    let r = post(
        &app,
        "message/mass/sendall",
        &token,
        json!({"filter": {"is_to_all": true}, "msgtype": "text", "text": {"content": "跳转"}}),
    )
    .await;
    let id = r["msg_id"].as_i64().unwrap();
    let mut state = None;
    for _ in 0..300 {
        let store = app.store.clone();
        state = tokio::task::spawn_blocking(move || store.compat_callback_state(id).unwrap()).await.unwrap();
        if state.as_ref().is_some_and(|(_, attempts)| *attempts >= 1) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(state, Some(("pending".to_owned(), 1)), "a failed attempt, retried later");
    assert!(got.lock().unwrap().is_empty(), "the redirect was followed");
}

fn serde_urlencoded_pairs(q: &str) -> std::collections::HashMap<String, String> {
    q.split('&').filter_map(|p| p.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

macro_rules! compat_tests {
    ($($name:ident),* $(,)?) => {
        mod compat_sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(crate::support::Backend::Sqlite).await; } )*
        }
        mod compat_postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(crate::support::Backend::Postgres).await; } )*
        }
    };
}

compat_tests!(
    tokens_and_errors,
    wecom_send,
    wecom_recall_and_customers,
    oa_mass_send,
    oa_callback,
    large_picked_audiences,
    refused_send_is_retried,
    concurrent_duplicates_send_once,
    rules_apply,
    cancel_stops_what_is_left,
    user_list_filters_before_the_page,
    callback_redirects_are_not_followed,
);
