//! A stand-in WeCom (企业微信) server API on loopback: the two calls qunfa's
//! WeCom channel makes (developer.work.weixin.qq.com, documents 91039 and 90236).
//!
//! - `GET /cgi-bin/gettoken?corpid=&corpsecret=` → `{"errcode": 0, "errmsg": "ok", "access_token", "expires_in"}`;
//!   a wrong corpid is `40013`, a wrong secret `40001`.
//! - `POST /cgi-bin/message/send?access_token=` with a text message → `{"errcode": 0, "errmsg": "ok",
//!   "invaliduser": "u2|u3", "msgid"}`. The token is checked (`41001` missing, `40014` unknown, `42001`
//!   expired), the agent id (`40056`), `touser` (more than 1,000 ids: `40058`), the content
//!   (`44004` empty, `45002` over 2,048 bytes). Users not in the directory (when one is set) are
//!   `invaliduser`; when none is valid the answer is `81013`. With `enable_duplicate_check: 1` an
//!   identical (agentid, touser, content) within `duplicate_check_interval` seconds is answered
//!   `ok` but not delivered again — WeCom's own dedupe.
//!
//! It records every call and can expire or forget its tokens, and fail the
//! next calls ([`WecomFailure`]).

use crate::lock;
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::{json, Value};

/// A recorded `POST /cgi-bin/message/send` (also the ones refused).
#[derive(Debug, Clone, PartialEq)]
pub struct WecomSendRequest {
    pub access_token: Option<String>,
    /// `touser` split at `|`.
    pub touser: Vec<String>,
    pub msgtype: String,
    pub agentid: Option<i64>,
    pub content: String,
    pub safe: Option<i64>,
    pub enable_duplicate_check: Option<i64>,
    pub duplicate_check_interval: Option<i64>,
    /// The whole body as sent.
    pub body: Value,
}

/// How the next calls fail ([`WecomApi::fail_next`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WecomFailure {
    /// Answer HTTP 200 with this errcode (e.g. `45009` rate limit, `-1` system busy).
    Errcode(i64),
    /// Answer this HTTP status.
    Status(u16),
    /// Never answer.
    Hang,
}

struct Token {
    expires: Instant,
    expired: bool,
}

struct Behaviour {
    expires_in: u64,
    directory: Option<HashSet<String>>,
    failures: Vec<WecomFailure>,
    token_failures: Vec<WecomFailure>,
}

#[derive(Default)]
struct Recorded {
    gettoken_calls: usize,
    tokens: HashMap<String, Token>,
    issued: usize,
    requests: Vec<WecomSendRequest>,
    delivered: Vec<(String, String)>,
    /// (agentid, touser, content) → when it was last delivered.
    recent: HashMap<(i64, String, String), Instant>,
    msgids: usize,
}

struct Shared {
    corp_id: String,
    corp_secret: String,
    agent_id: i64,
    behaviour: Mutex<Behaviour>,
    recorded: Mutex<Recorded>,
}

/// The running stand-in; it stops when dropped.
pub struct WecomApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _server: crate::Serving,
}

impl WecomApi {
    /// Starts the API on `127.0.0.1:0` for one corp and one app. Tokens last
    /// 7,200 s; every user id exists until [`WecomApi::set_directory`].
    ///
    /// # Panics
    /// When it cannot bind a loopback port.
    pub async fn start(corp_id: &str, corp_secret: &str, agent_id: i64) -> Self {
        let shared = Arc::new(Shared {
            corp_id: corp_id.to_owned(),
            corp_secret: corp_secret.to_owned(),
            agent_id,
            behaviour: Mutex::new(Behaviour {
                expires_in: 7200,
                directory: None,
                failures: Vec::new(),
                token_failures: Vec::new(),
            }),
            recorded: Mutex::default(),
        });
        let app = Router::new()
            .route("/cgi-bin/gettoken", get(gettoken))
            .route("/cgi-bin/message/send", post(message_send))
            .with_state(shared.clone());
        let (addr, server) = crate::serve_loopback(app).await;
        Self { addr, shared, _server: server }
    }

    /// The base URL, e.g. `http://127.0.0.1:40000` (the API is under `/cgi-bin/`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `expires_in` of the tokens issued from now on.
    pub fn set_expires_in(&self, seconds: u64) {
        lock(&self.shared.behaviour).expires_in = seconds;
    }

    /// The user ids that exist; any other is `invaliduser`.
    pub fn set_directory<I: IntoIterator<Item = S>, S: Into<String>>(&self, userids: I) {
        lock(&self.shared.behaviour).directory = Some(userids.into_iter().map(Into::into).collect());
    }

    /// Expires every token issued so far (sends with them get `42001`).
    pub fn expire_tokens(&self) {
        for token in lock(&self.shared.recorded).tokens.values_mut() {
            token.expired = true;
        }
    }

    /// Forgets every token issued so far (sends with them get `40014`).
    pub fn invalidate_tokens(&self) {
        lock(&self.shared.recorded).tokens.clear();
    }

    /// The next `n` `message/send` calls fail as `how`.
    pub fn fail_next(&self, n: usize, how: WecomFailure) {
        lock(&self.shared.behaviour).failures.extend(std::iter::repeat_n(how, n));
    }

    /// The next `n` `gettoken` calls fail as `how`.
    pub fn fail_next_gettoken(&self, n: usize, how: WecomFailure) {
        lock(&self.shared.behaviour).token_failures.extend(std::iter::repeat_n(how, n));
    }

    /// `gettoken` calls so far (also the refused ones).
    pub fn gettoken_calls(&self) -> usize {
        lock(&self.shared.recorded).gettoken_calls
    }

    /// Every `message/send` call, in order of arrival.
    pub fn requests(&self) -> Vec<WecomSendRequest> {
        lock(&self.shared.recorded).requests.clone()
    }

    /// Every message delivered, as (userid, content), in order.
    pub fn delivered(&self) -> Vec<(String, String)> {
        lock(&self.shared.recorded).delivered.clone()
    }

    /// How many messages were delivered (a duplicate dropped by the
    /// duplicate check does not count).
    pub fn delivered_count(&self) -> usize {
        lock(&self.shared.recorded).delivered.len()
    }
}

fn errcode(code: i64, msg: &str) -> Response {
    Json(json!({"errcode": code, "errmsg": msg})).into_response()
}

fn failure_answer(how: WecomFailure) -> Option<Response> {
    match how {
        WecomFailure::Errcode(code) => {
            let msg = match code {
                -1 => "system busy",
                45009 => "reach max api daily quota limit",
                45033 => "api concurrent out of limit",
                _ => "injected failure",
            };
            Some(errcode(code, msg))
        }
        WecomFailure::Status(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Some((status, "injected failure").into_response())
        }
        WecomFailure::Hang => None,
    }
}

async fn hang() -> Response {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    (StatusCode::GATEWAY_TIMEOUT, "hung").into_response()
}

async fn gettoken(State(shared): State<Arc<Shared>>, Query(query): Query<HashMap<String, String>>) -> Response {
    let failure = {
        let mut behaviour = lock(&shared.behaviour);
        lock(&shared.recorded).gettoken_calls += 1;
        (!behaviour.token_failures.is_empty()).then(|| behaviour.token_failures.remove(0))
    };
    if let Some(how) = failure {
        return match failure_answer(how) {
            Some(r) => r,
            None => hang().await,
        };
    }
    let (corpid, secret) = (query.get("corpid"), query.get("corpsecret"));
    match (corpid, secret) {
        (None, _) => return errcode(41002, "corpid missing"),
        (_, None) => return errcode(41004, "corpsecret missing"),
        (Some(c), _) if *c != shared.corp_id => return errcode(40013, "invalid corpid"),
        (_, Some(s)) if *s != shared.corp_secret => {
            return errcode(40001, "invalid credential, access_token is invalid or not latest")
        }
        _ => {}
    }
    let expires_in = lock(&shared.behaviour).expires_in;
    let mut recorded = lock(&shared.recorded);
    recorded.issued += 1;
    let token = format!("tok-{}-{}", recorded.issued, shared.agent_id);
    let expires = Instant::now() + Duration::from_secs(expires_in);
    recorded.tokens.insert(token.clone(), Token { expires, expired: false });
    Json(json!({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": expires_in})).into_response()
}

async fn message_send(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let body = parsed.clone().unwrap_or(Value::Null);
    let request = WecomSendRequest {
        access_token: query.get("access_token").cloned(),
        touser: body["touser"].as_str().unwrap_or("").split('|').filter(|u| !u.is_empty()).map(str::to_owned).collect(),
        msgtype: body["msgtype"].as_str().unwrap_or("").to_owned(),
        agentid: body["agentid"].as_i64(),
        content: body["text"]["content"].as_str().unwrap_or("").to_owned(),
        safe: body["safe"].as_i64(),
        enable_duplicate_check: body["enable_duplicate_check"].as_i64(),
        duplicate_check_interval: body["duplicate_check_interval"].as_i64(),
        body: body.clone(),
    };
    lock(&shared.recorded).requests.push(request.clone());
    let failure = {
        let mut behaviour = lock(&shared.behaviour);
        (!behaviour.failures.is_empty()).then(|| behaviour.failures.remove(0))
    };
    if let Some(how) = failure {
        return match failure_answer(how) {
            Some(r) => r,
            None => hang().await,
        };
    }
    let Some(token) = &request.access_token else {
        return errcode(41001, "access_token missing");
    };
    match lock(&shared.recorded).tokens.get(token) {
        None => return errcode(40014, "invalid access_token"),
        Some(t) if t.expired || t.expires <= Instant::now() => return errcode(42001, "access_token expired"),
        Some(_) => {}
    }
    if parsed.is_none() {
        return errcode(47001, "data format error");
    }
    if request.agentid != Some(shared.agent_id) {
        return errcode(40056, "invalid agentid");
    }
    if request.msgtype != "text" {
        return errcode(40008, "invalid message type");
    }
    if request.content.is_empty() {
        return errcode(44004, "empty content");
    }
    if request.content.len() > 2048 {
        return errcode(45002, "content size out of limit");
    }
    if request.touser.len() > 1000 {
        return errcode(40058, "invalid parameter: touser exceeds 1000");
    }
    let mut seen = HashSet::new();
    let users: Vec<&String> = request.touser.iter().filter(|u| seen.insert(u.as_str())).collect();
    let directory = lock(&shared.behaviour).directory.clone();
    let (valid, invalid): (Vec<&String>, Vec<&String>) =
        users.into_iter().partition(|u| u.len() <= 64 && directory.as_ref().is_none_or(|d| d.contains(*u)));
    if valid.is_empty() {
        return errcode(81013, "user & party & tag all invalid");
    }
    let mut recorded = lock(&shared.recorded);
    let now = Instant::now();
    let key = (shared.agent_id, body["touser"].as_str().unwrap_or("").to_owned(), request.content.clone());
    let interval = Duration::from_secs(request.duplicate_check_interval.unwrap_or(1800).clamp(0, 14_400) as u64);
    let duplicate = request.enable_duplicate_check == Some(1)
        && recorded.recent.get(&key).is_some_and(|at| now.duration_since(*at) < interval);
    if !duplicate {
        for u in &valid {
            recorded.delivered.push(((*u).clone(), request.content.clone()));
        }
        recorded.recent.insert(key, now);
    }
    recorded.msgids += 1;
    let invaliduser: Vec<&str> = invalid.iter().map(|u| u.as_str()).collect();
    Json(json!({
        "errcode": 0,
        "errmsg": "ok",
        "invaliduser": invaliduser.join("|"),
        "msgid": format!("msg-{}", recorded.msgids),
    }))
    .into_response()
}
