//! A stand-in SMS provider on loopback, speaking the API of
//! `qunfa_engine::sms` (shaped like Aliyun `SendBatchSms` / Tencent `SendSms`):
//!
//! - `POST /sms/send` with `Authorization: Bearer {api_key}` and
//!   `{"sign_name", "template_id", "callback_url"?, "messages": [{"phone", "out_id", "params"}]}`;
//! - answers `{"code": "OK", "request_id", "results": [{"out_id", "phone", "code", "message_id"?, "message"}]}`,
//!   per number `OK`, or `INVALID_PHONE` / `BLACKLISTED` / `THROTTLED` for the numbers configured so;
//! - a wrong key gets HTTP 401 `{"code": "AUTH_FAILED", …}`;
//! - an `out_id` seen before is not sent again: the answer repeats its first
//!   `message_id` (what real providers do with `OutId`), and it is counted once;
//! - after [`SmsProvider::set_receipt_delay`] it POSTs receipts to the
//!   request's `callback_url`: `[{"message_id", "out_id", "phone", "status": "DELIVERED" | "FAILED",
//!   "err_code", "reported_at"}]`, one POST per request that sent something.
//!
//! It records every request, parsed, and can be told to fail the next
//! requests ([`SmsFailure`]).

use crate::lock;
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// One message of a recorded request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct SmsMessage {
    pub phone: String,
    pub out_id: String,
    /// The template parameters (`text`, `name`, …) as sent.
    #[serde(default)]
    pub params: serde_json::Map<String, Value>,
}

impl SmsMessage {
    /// A template parameter as text (empty when missing or not a string).
    pub fn param(&self, key: &str) -> &str {
        self.params.get(key).and_then(Value::as_str).unwrap_or("")
    }
}

/// A recorded `POST /sms/send`, parsed (also the ones refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsRequest {
    /// The `Authorization` header as sent (none: missing).
    pub authorization: Option<String>,
    pub sign_name: String,
    pub template_id: String,
    pub callback_url: Option<String>,
    pub messages: Vec<SmsMessage>,
}

/// An SMS the provider "sent" (once per `out_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentSms {
    pub message_id: String,
    pub out_id: String,
    pub phone: String,
    pub sign_name: String,
    pub template_id: String,
    pub params: serde_json::Map<String, Value>,
}

/// How the next requests fail ([`SmsProvider::fail_next`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmsFailure {
    /// Answer this HTTP status with `{"code": "ERROR", "message": "injected failure"}`, sending nothing.
    Status(u16),
    /// Never answer, sending nothing.
    Hang,
    /// Send the messages (and their receipts), then never answer: the answer is lost.
    AnswerLost,
}

#[derive(Deserialize)]
struct RawRequest {
    sign_name: Option<String>,
    template_id: Option<String>,
    callback_url: Option<String>,
    messages: Option<Vec<SmsMessage>>,
}

#[derive(Default)]
struct Behaviour {
    invalid: HashSet<String>,
    blacklisted: HashSet<String>,
    throttled: HashSet<String>,
    omitted: HashSet<String>,
    receipt_failed: HashSet<String>,
    receipt_delay: Option<Duration>,
    failures: Vec<SmsFailure>,
}

#[derive(Default)]
struct Recorded {
    requests: Vec<SmsRequest>,
    sent: Vec<SentSms>,
    /// `out_id` → index into `sent`.
    by_out_id: HashMap<String, usize>,
    receipts_posted: usize,
    receipt_errors: Vec<String>,
}

struct Shared {
    api_key: String,
    behaviour: Mutex<Behaviour>,
    recorded: Mutex<Recorded>,
    client: reqwest::Client,
}

/// The running stand-in; it stops when dropped.
pub struct SmsProvider {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _server: crate::Serving,
}

impl SmsProvider {
    /// Starts a provider on `127.0.0.1:0` that accepts `api_key`. Receipts
    /// are not sent until [`SmsProvider::set_receipt_delay`].
    ///
    /// # Panics
    /// When it cannot bind a loopback port.
    pub async fn start(api_key: &str) -> Self {
        let shared = Arc::new(Shared {
            api_key: api_key.to_owned(),
            behaviour: Mutex::default(),
            recorded: Mutex::default(),
            client: reqwest::Client::new(),
        });
        let app = Router::new().route("/sms/send", post(send)).with_state(shared.clone());
        let (addr, server) = crate::serve_loopback(app).await;
        Self { addr, shared, _server: server }
    }

    /// The base URL, e.g. `http://127.0.0.1:40000` (the API is under `/sms/send`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Numbers answered `INVALID_PHONE`.
    pub fn set_invalid<I: IntoIterator<Item = S>, S: Into<String>>(&self, phones: I) {
        lock(&self.shared.behaviour).invalid = phones.into_iter().map(Into::into).collect();
    }

    /// Numbers answered `BLACKLISTED`.
    pub fn set_blacklisted<I: IntoIterator<Item = S>, S: Into<String>>(&self, phones: I) {
        lock(&self.shared.behaviour).blacklisted = phones.into_iter().map(Into::into).collect();
    }

    /// Numbers answered `THROTTLED` (not sent).
    pub fn set_throttled<I: IntoIterator<Item = S>, S: Into<String>>(&self, phones: I) {
        lock(&self.shared.behaviour).throttled = phones.into_iter().map(Into::into).collect();
    }

    /// Numbers left out of the results (not sent).
    pub fn set_omitted<I: IntoIterator<Item = S>, S: Into<String>>(&self, phones: I) {
        lock(&self.shared.behaviour).omitted = phones.into_iter().map(Into::into).collect();
    }

    /// Numbers whose receipt says `FAILED` (err_code `UNDELIVERABLE`).
    pub fn set_receipt_failed<I: IntoIterator<Item = S>, S: Into<String>>(&self, phones: I) {
        lock(&self.shared.behaviour).receipt_failed = phones.into_iter().map(Into::into).collect();
    }

    /// Sends receipts this long after each request (none: no receipts).
    pub fn set_receipt_delay(&self, delay: Option<Duration>) {
        lock(&self.shared.behaviour).receipt_delay = delay;
    }

    /// The next `n` requests fail as `how` (after the ones already queued).
    pub fn fail_next(&self, n: usize, how: SmsFailure) {
        lock(&self.shared.behaviour).failures.extend(std::iter::repeat_n(how, n));
    }

    /// Every request received, in order of arrival.
    pub fn requests(&self) -> Vec<SmsRequest> {
        lock(&self.shared.recorded).requests.clone()
    }

    /// Every SMS sent, once per `out_id`, in order.
    pub fn sent(&self) -> Vec<SentSms> {
        lock(&self.shared.recorded).sent.clone()
    }

    /// How many SMS were sent (repeated `out_id`s count once).
    pub fn sent_count(&self) -> usize {
        lock(&self.shared.recorded).sent.len()
    }

    /// Receipt POSTs the callback answered with a 2xx.
    pub fn receipts_posted(&self) -> usize {
        lock(&self.shared.recorded).receipts_posted
    }

    /// Receipt POSTs that failed (connection error or non-2xx), described.
    pub fn receipt_errors(&self) -> Vec<String> {
        lock(&self.shared.recorded).receipt_errors.clone()
    }
}

fn now_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn answer(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"code": code, "message": message}))).into_response()
}

async fn send(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let parsed: Result<RawRequest, _> = serde_json::from_slice(&body);
    let request = match &parsed {
        Ok(raw) => SmsRequest {
            authorization: authorization.clone(),
            sign_name: raw.sign_name.clone().unwrap_or_default(),
            template_id: raw.template_id.clone().unwrap_or_default(),
            callback_url: raw.callback_url.clone(),
            messages: raw.messages.clone().unwrap_or_default(),
        },
        Err(_) => SmsRequest {
            authorization: authorization.clone(),
            sign_name: String::new(),
            template_id: String::new(),
            callback_url: None,
            messages: Vec::new(),
        },
    };
    let request_no = {
        let mut recorded = lock(&shared.recorded);
        recorded.requests.push(request.clone());
        recorded.requests.len()
    };
    if authorization.as_deref() != Some(&format!("Bearer {}", shared.api_key)) {
        return answer(StatusCode::UNAUTHORIZED, "AUTH_FAILED", "invalid api key");
    }
    let failure = {
        let mut behaviour = lock(&shared.behaviour);
        (!behaviour.failures.is_empty()).then(|| behaviour.failures.remove(0))
    };
    match failure {
        Some(SmsFailure::Status(status)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return answer(status, "ERROR", "injected failure");
        }
        Some(SmsFailure::Hang) => return hang().await,
        Some(SmsFailure::AnswerLost) | None => {}
    }
    let Ok(raw) = parsed else {
        return answer(StatusCode::BAD_REQUEST, "BAD_REQUEST", "the body is not valid JSON");
    };
    if raw.sign_name.as_deref().unwrap_or("").is_empty() || raw.template_id.as_deref().unwrap_or("").is_empty() {
        return answer(StatusCode::BAD_REQUEST, "BAD_REQUEST", "sign_name and template_id are required");
    }
    if request.messages.is_empty() {
        return answer(StatusCode::BAD_REQUEST, "BAD_REQUEST", "messages must not be empty");
    }
    let (results, receipts) = deliver(&shared, &request);
    if let (Some(url), false) = (request.callback_url.clone(), receipts.is_empty()) {
        let delay = lock(&shared.behaviour).receipt_delay;
        if let Some(delay) = delay {
            let shared = shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                post_receipts(&shared, &url, receipts).await;
            });
        }
    }
    if failure == Some(SmsFailure::AnswerLost) {
        return hang().await;
    }
    Json(json!({"code": "OK", "request_id": format!("req-{request_no}"), "results": results})).into_response()
}

/// Answers per number and records what is sent; returns the results and
/// the receipts to post (only for messages sent by this request).
fn deliver(shared: &Shared, request: &SmsRequest) -> (Vec<Value>, Vec<Value>) {
    let behaviour = lock(&shared.behaviour);
    let mut recorded = lock(&shared.recorded);
    let (mut results, mut receipts) = (Vec::new(), Vec::new());
    for m in &request.messages {
        let phone = m.phone.as_str();
        if behaviour.omitted.contains(phone) {
            continue;
        }
        let refusal = if behaviour.invalid.contains(phone) || !plausible_phone(phone) {
            Some(("INVALID_PHONE", "the number does not exist"))
        } else if behaviour.blacklisted.contains(phone) {
            Some(("BLACKLISTED", "the number is on the blacklist"))
        } else if behaviour.throttled.contains(phone) {
            Some(("THROTTLED", "too many messages to this number"))
        } else {
            None
        };
        if let Some((code, message)) = refusal {
            results.push(json!({"out_id": m.out_id, "phone": phone, "code": code, "message": message}));
            continue;
        }
        let message_id = match recorded.by_out_id.get(&m.out_id) {
            Some(i) => recorded.sent[*i].message_id.clone(),
            None => {
                let message_id = format!("sms-{}", recorded.sent.len() + 1);
                recorded.sent.push(SentSms {
                    message_id: message_id.clone(),
                    out_id: m.out_id.clone(),
                    phone: phone.to_owned(),
                    sign_name: request.sign_name.clone(),
                    template_id: request.template_id.clone(),
                    params: m.params.clone(),
                });
                let idx = recorded.sent.len() - 1;
                recorded.by_out_id.insert(m.out_id.clone(), idx);
                let failed = behaviour.receipt_failed.contains(phone);
                receipts.push(json!({
                    "message_id": message_id,
                    "out_id": m.out_id,
                    "phone": phone,
                    "status": if failed { "FAILED" } else { "DELIVERED" },
                    "err_code": if failed { "UNDELIVERABLE" } else { "DELIVRD" },
                    "reported_at": now_seconds(),
                }));
                message_id
            }
        };
        results
            .push(json!({"out_id": m.out_id, "phone": phone, "code": "OK", "message_id": message_id, "message": "OK"}));
    }
    (results, receipts)
}

fn plausible_phone(phone: &str) -> bool {
    let digits = phone.strip_prefix('+').unwrap_or(phone);
    (6..=20).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

async fn post_receipts(shared: &Shared, url: &str, receipts: Vec<Value>) {
    let result = shared.client.post(url).json(&receipts).timeout(Duration::from_secs(10)).send().await;
    let mut recorded = lock(&shared.recorded);
    match result {
        Ok(r) if r.status().is_success() => recorded.receipts_posted += 1,
        Ok(r) => recorded.receipt_errors.push(format!("{url}: HTTP {}", r.status())),
        Err(e) => recorded.receipt_errors.push(format!("{url}: {e}")),
    }
}

async fn hang() -> Response {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    answer(StatusCode::GATEWAY_TIMEOUT, "ERROR", "hung")
}

/// A receiver of delivery receipts on loopback: `POST /receipts` with a
/// JSON array, each entry kept (for tests of senders without the server).
pub struct ReceiptSink {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Value>>>,
    _server: crate::Serving,
}

impl ReceiptSink {
    /// Starts the receiver on `127.0.0.1:0`.
    ///
    /// # Panics
    /// When it cannot bind a loopback port.
    pub async fn start() -> Self {
        let received: Arc<Mutex<Vec<Value>>> = Arc::default();
        let app = Router::new()
            .route(
                "/receipts",
                post(|State(received): State<Arc<Mutex<Vec<Value>>>>, Json(body): Json<Vec<Value>>| async move {
                    lock(&received).extend(body);
                    StatusCode::NO_CONTENT
                }),
            )
            .with_state(received.clone());
        let (addr, server) = crate::serve_loopback(app).await;
        Self { addr, received, _server: server }
    }

    /// The callback URL to give the provider.
    pub fn url(&self) -> String {
        format!("http://{}/receipts", self.addr)
    }

    /// Every receipt received so far.
    pub fn receipts(&self) -> Vec<Value> {
        lock(&self.received).clone()
    }

    /// Waits until at least `n` receipts arrived or `timeout` passed; returns
    /// what arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.receipts();
            if got.len() >= n || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
