//! The WeCom (企业微信) channel: text messages through the official server
//! API of a self-built app (developer.work.weixin.qq.com, documents 91039
//! "get access_token" and 90236 "send an app message").
//!
//! - `GET {base_url}/cgi-bin/gettoken?corpid=…&corpsecret=…` →
//!   `{"errcode": 0, "errmsg": "ok", "access_token": "…", "expires_in": 7200}`. The token is kept per
//!   (base URL, corp id, secret) until 5 minutes before it expires (half its life when that is
//!   shorter), and fetched by one caller at a time: concurrent sends wait for the same refresh.
//!   `40001`/`40013`/`40091` (and any other refusal) → `QF-CHANNEL-AUTH`; `-1`, `45009`, `45033`,
//!   HTTP 429/5xx, timeouts → retry.
//! - `POST {base_url}/cgi-bin/message/send?access_token=…` with
//!   `{"touser": "u1|u2", "msgtype": "text", "agentid": 1000002, "text": {"content": "…"}, "safe": 0,
//!   "enable_duplicate_check": 1, "duplicate_check_interval": 1800}`. One request carries one text,
//!   so recipients are grouped by their rendered text, then cut into `batch_size` (≤1,000) users.
//!   `{"errcode": 0, "invaliduser": "u2|u3", "unlicenseduser": "u4"}` → the invalid users
//!   `QF-ADDRESS-INVALID`, the unlicensed ones `QF-DELIVERY-REJECTED`, the others delivered.
//!   `40014`/`42001`/`41001` (token invalid, expired, missing) → the token is dropped, a new one
//!   fetched and the request sent once more; `81013` (no valid user) → all `QF-ADDRESS-INVALID`;
//!   `-1`, `45009`, `45033`, HTTP 429/5xx, timeouts → retry; any other errcode →
//!   `QF-DELIVERY-REJECTED` ("WeCom errcode N: errmsg").
//!
//! WeCom's duplicate check (the same `touser` and content within the interval
//! is dropped) is what makes a resent request harmless after a lost answer.
//! Checked here without a call: the user id (1–64 bytes, no `|`, no control
//! characters → `QF-ADDRESS-INVALID`) and the text (≤2,048 bytes, WeCom's limit →
//! `QF-DELIVERY-REJECTED`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use qunfa_core::{channel::WecomSettings, Code};
use qunfa_store::queue::{ExternalBatch, Outgoing, SendOutcome};
use serde_json::{json, Value};

use crate::sms::{error_chain, short};

/// Requests in flight at once per batch.
const REQUESTS_IN_FLIGHT: usize = 4;
/// WeCom's limit on a text message's content, in bytes.
const MAX_TEXT_BYTES: usize = 2048;
/// WeCom's limit on `touser` entries per request.
const MAX_TOUSER: usize = 1000;
/// Tokens are renewed this long before they expire.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);

/// (base URL, corp id, corp secret).
type TokenKey = (String, String, String);

struct CachedToken {
    token: String,
    renew_at: Instant,
}

/// One token per key; the async lock makes a refresh single-flight.
type TokenSlot = Arc<tokio::sync::Mutex<Option<CachedToken>>>;

/// The WeCom channel's sender (one per node; settings come per batch).
pub struct WecomSender {
    /// Strict (refuses non-public addresses) and permissive, by `allow_private_networks`.
    clients: [reqwest::Client; 2],
    tokens: Mutex<HashMap<TokenKey, TokenSlot>>,
}

/// A message that passed the local checks.
struct Ready<'a> {
    item: &'a Outgoing,
    userid: &'a str,
}

/// What `message/send` said about a request.
enum Answer {
    /// Sent; the users WeCom refused, with their outcomes.
    Sent(HashMap<String, SendOutcome>),
    /// The token was not accepted (worth one refresh).
    TokenRejected(String),
    /// The same outcome for every recipient of the request.
    All(SendOutcome),
}

impl WecomSender {
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new() -> Result<Self, reqwest::Error> {
        Ok(Self { clients: crate::webhook::checked_clients()?, tokens: Mutex::default() })
    }

    /// Sends every message of the batch; one outcome per message.
    pub async fn send(&self, batch: &ExternalBatch, settings: &WecomSettings) -> Vec<(u32, SendOutcome)> {
        if !settings.allow_private_networks {
            if let Some(why) = crate::webhook::literal_private_host(&settings.base_url) {
                let why = why.replacen("the webhook host", "the WeCom API host", 1);
                return crate::webhook::refuse_all(batch, &SendOutcome::Rejected(Code::AddressPrivate, why));
            }
        }
        let mut outcomes = Vec::with_capacity(batch.items.len());
        // Groups of recipients with the same text, in order of first appearance.
        let mut groups: Vec<(&str, Vec<Ready>)> = Vec::new();
        let mut group_of: HashMap<&str, usize> = HashMap::new();
        for item in &batch.items {
            match check(item) {
                Ok((text, ready)) => {
                    let i = *group_of.entry(text).or_insert_with(|| {
                        groups.push((text, Vec::new()));
                        groups.len() - 1
                    });
                    groups[i].1.push(ready);
                }
                Err(outcome) => outcomes.push((item.contact_idx, outcome)),
            }
        }
        let size = (settings.batch_size as usize).clamp(1, MAX_TOUSER);
        // The futures are made first (not in a closure of the stream), which
        // keeps the whole future `Send` for `tokio::spawn`.
        let requests: Vec<_> = groups
            .iter()
            .flat_map(|(text, users)| users.chunks(size).map(move |chunk| (*text, chunk)))
            .map(|(text, chunk)| self.send_chunk(settings, text, chunk))
            .collect();
        let mut answers = futures::stream::iter(requests).buffer_unordered(REQUESTS_IN_FLIGHT);
        while let Some(answered) = answers.next().await {
            outcomes.extend(answered);
        }
        outcomes
    }

    /// One `message/send` (sent again once with a fresh token when WeCom
    /// refuses the token): an outcome for each recipient of `chunk`.
    async fn send_chunk(&self, settings: &WecomSettings, text: &str, chunk: &[Ready<'_>]) -> Vec<(u32, SendOutcome)> {
        let all = |outcome: SendOutcome| -> Vec<(u32, SendOutcome)> {
            chunk.iter().map(|r| (r.item.contact_idx, outcome.clone())).collect()
        };
        // Two contacts may share a user id; WeCom gets it once.
        let mut userids: Vec<&str> = Vec::with_capacity(chunk.len());
        for r in chunk {
            if !userids.contains(&r.userid) {
                userids.push(r.userid);
            }
        }
        let touser = userids.join("|");
        let mut answer = Answer::All(SendOutcome::Retry("WeCom was not asked".into()));
        for attempt in 0..2 {
            let token = match self.token(settings).await {
                Ok(t) => t,
                Err(outcome) => return all(outcome),
            };
            answer = self.post_message(settings, &token, &touser, text).await;
            match &answer {
                Answer::TokenRejected(_) if attempt == 0 => self.drop_token(settings, &token).await,
                _ => break,
            }
        }
        match answer {
            Answer::Sent(refused) => chunk
                .iter()
                .map(|r| (r.item.contact_idx, refused.get(r.userid).cloned().unwrap_or(SendOutcome::Delivered)))
                .collect(),
            Answer::TokenRejected(why) => {
                all(SendOutcome::Retry(short(&format!("WeCom refused a fresh access_token: {why}"))))
            }
            Answer::All(outcome) => all(outcome),
        }
    }

    async fn post_message(&self, settings: &WecomSettings, token: &str, touser: &str, text: &str) -> Answer {
        let body = json!({
            "touser": touser,
            "msgtype": "text",
            "agentid": settings.agent_id,
            "text": {"content": text},
            "safe": 0,
            "enable_duplicate_check": 1,
            "duplicate_check_interval": settings.duplicate_check_interval,
        });
        let url = format!("{}/cgi-bin/message/send", settings.base_url.trim_end_matches('/'));
        let sent = self.clients[usize::from(settings.allow_private_networks)]
            .post(url)
            .query(&[("access_token", token)])
            .timeout(Duration::from_millis(settings.timeout_ms))
            .json(&body)
            .send()
            .await;
        let parsed = match read_json(sent, settings, "message/send").await {
            Ok(v) => v,
            Err(outcome) => return Answer::All(outcome),
        };
        let errcode = parsed["errcode"].as_i64().unwrap_or(-2);
        let errmsg = parsed["errmsg"].as_str().unwrap_or("");
        match errcode {
            0 => {
                let mut refused = HashMap::new();
                for user in ids(&parsed["invaliduser"]) {
                    let why = "WeCom: the user id does not exist or is not visible to the app";
                    refused.insert(user, SendOutcome::Rejected(Code::AddressInvalid, why.into()));
                }
                for user in ids(&parsed["unlicenseduser"]) {
                    let why = "WeCom: the user has no interface licence";
                    refused.entry(user).or_insert_with(|| SendOutcome::Rejected(Code::DeliveryRejected, why.into()));
                }
                Answer::Sent(refused)
            }
            40014 | 42001 | 41001 => Answer::TokenRejected(format!("errcode {errcode}: {errmsg}")),
            81013 => Answer::All(SendOutcome::Rejected(
                Code::AddressInvalid,
                short(&format!("WeCom errcode 81013: no valid recipient: {errmsg}")),
            )),
            -1 | 45009 | 45033 => Answer::All(SendOutcome::Retry(short(&format!("WeCom errcode {errcode}: {errmsg}")))),
            -2 => Answer::All(SendOutcome::Retry("WeCom answered without an errcode".into())),
            _ => Answer::All(SendOutcome::Rejected(
                Code::DeliveryRejected,
                short(&format!("WeCom errcode {errcode}: {errmsg}")),
            )),
        }
    }

    /// The token slot of these settings.
    fn slot(&self, settings: &WecomSettings) -> TokenSlot {
        let key = (settings.base_url.clone(), settings.corp_id.clone(), settings.corp_secret.clone());
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if tokens.len() >= 1024 && !tokens.contains_key(&key) {
            // Stale keys (changed secrets) pile up over months; start afresh.
            tokens.clear();
        }
        tokens.entry(key).or_default().clone()
    }

    /// A valid access token: the cached one, or one fetched now (by one
    /// caller; the others wait for it).
    async fn token(&self, settings: &WecomSettings) -> Result<String, SendOutcome> {
        let slot = self.slot(settings);
        let mut cached = slot.lock().await;
        if let Some(t) = cached.as_ref().filter(|t| Instant::now() < t.renew_at) {
            return Ok(t.token.clone());
        }
        let fetched = self.fetch_token(settings).await?;
        let token = fetched.token.clone();
        *cached = Some(fetched);
        Ok(token)
    }

    /// Forgets `token` (unless another caller already replaced it).
    async fn drop_token(&self, settings: &WecomSettings, token: &str) {
        let slot = self.slot(settings);
        let mut cached = slot.lock().await;
        if cached.as_ref().is_some_and(|t| t.token == token) {
            *cached = None;
        }
    }

    async fn fetch_token(&self, settings: &WecomSettings) -> Result<CachedToken, SendOutcome> {
        let url = format!("{}/cgi-bin/gettoken", settings.base_url.trim_end_matches('/'));
        let asked = Instant::now();
        let sent = self.clients[usize::from(settings.allow_private_networks)]
            .get(url)
            .query(&[("corpid", settings.corp_id.as_str()), ("corpsecret", settings.corp_secret.as_str())])
            .timeout(Duration::from_millis(settings.timeout_ms))
            .send()
            .await;
        let parsed = read_json(sent, settings, "gettoken").await?;
        let errcode = parsed["errcode"].as_i64().unwrap_or(0);
        let errmsg = parsed["errmsg"].as_str().unwrap_or("");
        match errcode {
            0 => {}
            -1 | 45009 | 45033 => {
                return Err(SendOutcome::Retry(short(&format!("WeCom gettoken errcode {errcode}: {errmsg}"))))
            }
            _ => {
                return Err(SendOutcome::Rejected(
                    Code::ChannelAuth,
                    short(&format!("WeCom refused the corp id or secret: errcode {errcode}: {errmsg}")),
                ))
            }
        }
        let Some(token) = parsed["access_token"].as_str().filter(|t| !t.is_empty()) else {
            return Err(SendOutcome::Retry("WeCom gettoken answered without an access_token".into()));
        };
        let life = Duration::from_secs(parsed["expires_in"].as_u64().unwrap_or(7200));
        // The clock starts at the request: the token may be older than the answer.
        let renew_at = asked + life - TOKEN_MARGIN.min(life / 2);
        Ok(CachedToken { token: token.to_owned(), renew_at })
    }
}

/// The JSON body of an answer, or the outcome for every recipient when there
/// is none worth reading.
async fn read_json(
    sent: Result<reqwest::Response, reqwest::Error>,
    settings: &WecomSettings,
    call: &str,
) -> Result<Value, SendOutcome> {
    let timed_out = || SendOutcome::Retry(format!("WeCom {call} timed out after {} ms", settings.timeout_ms));
    let response = match sent {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Err(timed_out()),
        Err(e) => return Err(SendOutcome::Retry(short(&format!("WeCom {call} unreachable: {}", error_chain(&e))))),
    };
    let status = response.status();
    let text = match response.text().await {
        Ok(t) => t,
        Err(e) if e.is_timeout() => return Err(timed_out()),
        Err(e) => {
            return Err(SendOutcome::Retry(short(&format!("WeCom {call} answer broke off: {}", error_chain(&e)))))
        }
    };
    if status.as_u16() == 429 || status.is_server_error() {
        return Err(SendOutcome::Retry(short(&format!(
            "WeCom {call} answered HTTP {}: {}",
            status.as_u16(),
            text.trim()
        ))));
    }
    if !status.is_success() {
        return Err(SendOutcome::Rejected(
            Code::DeliveryRejected,
            short(&format!("WeCom {call} answered HTTP {}: {}", status.as_u16(), text.trim())),
        ));
    }
    serde_json::from_str(&text)
        .map_err(|_| SendOutcome::Retry(short(&format!("WeCom {call} answered an unreadable body: {}", text.trim()))))
}

/// The ids of a `u1|u2` field (empty or missing: none).
fn ids(field: &Value) -> impl Iterator<Item = String> + '_ {
    field.as_str().unwrap_or("").split('|').filter(|u| !u.is_empty()).map(str::to_owned)
}

/// The local checks: a user id that can be valid, a text WeCom takes.
fn check(item: &Outgoing) -> Result<(&str, Ready<'_>), SendOutcome> {
    let Some(userid) = item.address.as_deref() else {
        return Err(SendOutcome::Rejected(Code::ChannelNoAddress, "the contact has no WeCom user id".into()));
    };
    if userid.is_empty() || userid.len() > 64 || userid.contains('|') || userid.chars().any(char::is_control) {
        return Err(SendOutcome::Rejected(
            Code::AddressInvalid,
            short(&format!("{userid:?} cannot be a WeCom user id (1 to 64 bytes, no |)")),
        ));
    }
    let Some(text) = item.text.as_deref().filter(|t| !t.trim().is_empty()) else {
        return Err(SendOutcome::Rejected(Code::InvalidContent, "the message has no text to send to WeCom".into()));
    };
    if text.len() > MAX_TEXT_BYTES {
        return Err(SendOutcome::Rejected(
            Code::DeliveryRejected,
            format!("the text is {} bytes; WeCom takes at most {MAX_TEXT_BYTES}", text.len()),
        ));
    }
    Ok((text, Ready { item, userid }))
}
