//! The SMS channel: one HTTP provider API, shaped like the common ones
//! (Aliyun `SendBatchSms`, Tencent `SendSms`): a signed template whose
//! parameters carry the rendered text, many numbers per request, and
//! delivery receipts posted back later.
//!
//! # Request
//!
//! `POST {base_url}/sms/send` with `Authorization: Bearer {api_key}` and
//! `Content-Type: application/json`, at most `batch_size` messages each
//! (4 requests in flight per batch, each bounded by `timeout_ms`):
//!
//! ```json
//! {"sign_name": "…", "template_id": "…", "callback_url": "https://…",
//!  "messages": [{"phone": "+8613800138000", "out_id": "qf-7-42-sms",
//!                "params": {"text": "<rendered text>", "name": "<contact name>",
//!                           "unsubscribe_url": "https://…"}}]}
//! ```
//!
//! `callback_url` is left out when there is none, `params.unsubscribe_url`
//! when the message has no unsubscribe link. `out_id` is the idempotency key
//! `qf-{broadcast}-{contact}-{channel}`, the same on every attempt: the
//! provider sends an `out_id` once and answers a repeat with the first
//! `message_id`, so a batch retried after a lost answer sends no second SMS.
//!
//! # Answer
//!
//! HTTP 200 with
//! `{"code": "OK", "request_id": "…", "results": [{"out_id", "phone", "code", "message_id", "message"}]}`.
//! Per message: `OK` → `Accepted(message_id)` (the receipt decides);
//! `INVALID_PHONE` → `QF-ADDRESS-INVALID`; `BLACKLISTED` and unknown codes →
//! `QF-DELIVERY-REJECTED`; `THROTTLED`, or missing from `results` → retry.
//! For the whole request: HTTP 401/403 or `"code": "AUTH_FAILED"` →
//! `QF-CHANNEL-AUTH`; HTTP 429, 5xx, a timeout, a connection error, an
//! unreadable body or `"code": "THROTTLED"` → retry; another 4xx (or another
//! top-level code) → `QF-DELIVERY-REJECTED` with the body's `message`.
//! Numbers that are not `+`, then 6–20 digits (spaces and dashes dropped)
//! are refused here (`QF-ADDRESS-INVALID`) and never sent.
//!
//! # Receipts
//!
//! Later the provider `POST`s to `callback_url` (one `Content-Type:
//! application/json` request per group of reports, any grouping) a JSON array:
//!
//! ```json
//! [{"message_id": "sms-1", "out_id": "qf-7-42-sms", "phone": "+8613800138000",
//!   "status": "DELIVERED", "err_code": "DELIVRD", "reported_at": 1700000000}]
//! ```
//!
//! `status` is `DELIVERED` or `FAILED`; `err_code` is the operator's code
//! (free text, may be empty); `reported_at` is Unix seconds. `message_id`
//! is the one the send answered (`Accepted`), `out_id` the idempotency key.
//! The qunfa server receives them (`/v1/hooks/sms/…`); a receipt may arrive
//! more than once and before the send's outcome is recorded.

use futures::StreamExt;
use qunfa_core::{channel::SmsSettings, contact::PhoneNumber, Code};
use qunfa_store::queue::{ExternalBatch, Outgoing, SendOutcome};
use serde_json::{json, Value};

/// Requests in flight at once per batch.
const REQUESTS_IN_FLIGHT: usize = 4;

/// The SMS channel's sender (one per node; settings come per batch).
pub struct SmsSender {
    /// Strict (refuses non-public addresses) and permissive, by `allow_private_networks`.
    clients: [reqwest::Client; 2],
}

/// A message that passed the local checks.
struct Ready<'a> {
    item: &'a Outgoing,
    phone: String,
    text: &'a str,
}

impl SmsSender {
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new() -> Result<Self, reqwest::Error> {
        Ok(Self { clients: crate::webhook::checked_clients()? })
    }

    /// Sends every message of the batch; one outcome per message.
    /// `callback_url`: where the provider posts delivery receipts.
    pub async fn send(
        &self,
        batch: &ExternalBatch,
        settings: &SmsSettings,
        callback_url: Option<&str>,
    ) -> Vec<(u32, SendOutcome)> {
        if !settings.allow_private_networks {
            if let Some(why) = crate::webhook::literal_private_host(&settings.base_url) {
                let why = why.replacen("the webhook host", "the SMS provider's host", 1);
                return crate::webhook::refuse_all(batch, &SendOutcome::Rejected(Code::AddressPrivate, why));
            }
        }
        let mut outcomes = Vec::with_capacity(batch.items.len());
        let mut ready = Vec::with_capacity(batch.items.len());
        for item in &batch.items {
            match check(item) {
                Ok(r) => ready.push(r),
                Err(outcome) => outcomes.push((item.contact_idx, outcome)),
            }
        }
        let size = settings.batch_size.max(1) as usize;
        // The futures are made first (not in a closure of the stream), which
        // keeps the whole future `Send` for `tokio::spawn`.
        let requests: Vec<_> = ready.chunks(size).map(|chunk| self.post(settings, callback_url, chunk)).collect();
        let mut answers = futures::stream::iter(requests).buffer_unordered(REQUESTS_IN_FLIGHT);
        while let Some(answered) = answers.next().await {
            outcomes.extend(answered);
        }
        outcomes
    }

    /// One request: an outcome for each message of `chunk`.
    async fn post(
        &self,
        settings: &SmsSettings,
        callback_url: Option<&str>,
        chunk: &[Ready<'_>],
    ) -> Vec<(u32, SendOutcome)> {
        let messages: Vec<Value> = chunk
            .iter()
            .map(|r| {
                let mut params = json!({"text": r.text, "name": r.item.name});
                if let Some(url) = &r.item.unsubscribe_url {
                    params["unsubscribe_url"] = json!(url);
                }
                json!({"phone": r.phone, "out_id": r.item.idempotency_key, "params": params})
            })
            .collect();
        let mut body =
            json!({"sign_name": settings.sign_name, "template_id": settings.template_id, "messages": messages});
        if let Some(url) = callback_url {
            body["callback_url"] = json!(url);
        }
        let url = format!("{}/sms/send", settings.base_url.trim_end_matches('/'));
        let answer = self.clients[usize::from(settings.allow_private_networks)]
            .post(url)
            .timeout(std::time::Duration::from_millis(settings.timeout_ms))
            .bearer_auth(&settings.api_key)
            .json(&body)
            .send()
            .await;
        let all = |outcome: SendOutcome| -> Vec<(u32, SendOutcome)> {
            chunk.iter().map(|r| (r.item.contact_idx, outcome.clone())).collect()
        };
        let response = match answer {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return all(SendOutcome::Retry(format!("SMS provider timed out after {} ms", settings.timeout_ms)))
            }
            Err(e) => return all(SendOutcome::Retry(short(&format!("SMS provider unreachable: {}", error_chain(&e))))),
        };
        let status = response.status();
        let text = match response.text().await {
            Ok(t) => t,
            Err(e) if e.is_timeout() => {
                return all(SendOutcome::Retry(format!("SMS provider timed out after {} ms", settings.timeout_ms)))
            }
            Err(e) => {
                return all(SendOutcome::Retry(short(&format!("SMS provider answer broke off: {}", error_chain(&e)))))
            }
        };
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        let message = parsed.as_ref().and_then(|v| v["message"].as_str()).map(str::to_owned);
        let described = || message.clone().unwrap_or_else(|| text.trim().to_owned());
        let code = status.as_u16();
        if code == 401 || code == 403 {
            return all(SendOutcome::Rejected(
                Code::ChannelAuth,
                short(&format!("SMS provider refused the API key (HTTP {code}): {}", described())),
            ));
        }
        if code == 429 || status.is_server_error() {
            return all(SendOutcome::Retry(short(&format!("SMS provider answered HTTP {code}: {}", described()))));
        }
        if !status.is_success() {
            return all(SendOutcome::Rejected(
                Code::DeliveryRejected,
                short(&format!("SMS provider answered HTTP {code}: {}", described())),
            ));
        }
        let Some(parsed) = parsed else {
            return all(SendOutcome::Retry(short(&format!(
                "SMS provider answered an unreadable body: {}",
                text.trim()
            ))));
        };
        match parsed["code"].as_str() {
            Some("OK") => {}
            Some("AUTH_FAILED") => {
                return all(SendOutcome::Rejected(
                    Code::ChannelAuth,
                    short(&format!("SMS provider refused the API key: {}", described())),
                ))
            }
            Some("THROTTLED") => {
                return all(SendOutcome::Retry(short(&format!("SMS provider is throttling: {}", described()))))
            }
            Some(other) => {
                return all(SendOutcome::Rejected(
                    Code::DeliveryRejected,
                    short(&format!("SMS provider: {other}: {}", described())),
                ))
            }
            None => return all(SendOutcome::Retry("SMS provider answered without a code".into())),
        }
        let results: std::collections::HashMap<&str, &Value> = parsed["results"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| Some((r["out_id"].as_str()?, r))).collect())
            .unwrap_or_default();
        chunk
            .iter()
            .map(|r| {
                let outcome = match results.get(r.item.idempotency_key.as_str()) {
                    Some(result) => per_message(result),
                    None => SendOutcome::Retry("the SMS provider's answer left this number out".into()),
                };
                (r.item.contact_idx, outcome)
            })
            .collect()
    }
}

/// The local checks: an address that can be a phone number, a text.
fn check(item: &Outgoing) -> Result<Ready<'_>, SendOutcome> {
    let Some(address) = &item.address else {
        return Err(SendOutcome::Rejected(Code::ChannelNoAddress, "the contact has no phone number".into()));
    };
    let Ok(phone) = PhoneNumber::parse(address) else {
        return Err(SendOutcome::Rejected(
            Code::AddressInvalid,
            short(&format!("{address:?} is not a phone number (+ and 6 to 20 digits)")),
        ));
    };
    let Some(text) = item.text.as_deref().filter(|t| !t.trim().is_empty()) else {
        return Err(SendOutcome::Rejected(Code::InvalidContent, "the message has no text to send by SMS".into()));
    };
    Ok(Ready { item, phone: phone.into_string(), text })
}

/// The outcome of one entry of `results`.
fn per_message(result: &Value) -> SendOutcome {
    let message = result["message"].as_str().unwrap_or("");
    match result["code"].as_str().unwrap_or("") {
        "OK" => match result["message_id"].as_str().filter(|id| !id.is_empty()) {
            Some(id) => SendOutcome::Accepted(id.to_owned()),
            None => SendOutcome::Retry("the SMS provider accepted the message without a message_id".into()),
        },
        "INVALID_PHONE" => {
            SendOutcome::Rejected(Code::AddressInvalid, short(&format!("SMS provider: INVALID_PHONE: {message}")))
        }
        "THROTTLED" => SendOutcome::Retry(short(&format!("SMS provider: THROTTLED: {message}"))),
        "" => SendOutcome::Retry("the SMS provider's result has no code".into()),
        other => SendOutcome::Rejected(Code::DeliveryRejected, short(&format!("SMS provider: {other}: {message}"))),
    }
}

/// An error with its causes (reqwest's own message hides the reason).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// At most 200 characters, on one line.
pub(crate) fn short(s: &str) -> String {
    let line: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let line = line.trim();
    match (line.chars().count() > 200, line.char_indices().nth(199)) {
        (true, Some((i, _))) => format!("{}…", &line[..i]),
        _ => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::short;

    #[test]
    fn short_texts_stay_on_one_line_within_200_characters() {
        assert_eq!(short("a\nb"), "a b");
        assert_eq!(short(&"短".repeat(300)).chars().count(), 200);
        assert_eq!(short(&"x".repeat(200)), "x".repeat(200));
    }
}
