//! The `MASSSENDJOBFINISH` callback of Official Account mass sends, pushed
//! to the workspace's callback URL in WeChat's signed and AES-encrypted
//! format when the broadcast finishes. Delivery is at least once: a claim
//! leases a few rows for a minute (another node's claim skips them: their
//! `callback_next_at` is the lease's end), posts them concurrently with a
//! 5 s timeout each, so every post ends well within the lease, and records
//! each outcome only while it still holds the lease. A failure is retried
//! with backoff, five failures end it (`callback_state = 'failed'`).

use std::time::Duration;

use qunfa_store::{broadcasts::BroadcastRecord, compat::DueCallback};
use rand::Rng;

use super::crypto;
use crate::{error::ApiError, AppState};

/// Attempts of one callback.
const MAX_ATTEMPTS: i64 = 5;
/// How long a claim holds a callback.
pub const LEASE_MS: i64 = 60_000;
/// Callbacks one claim takes; they are posted at once, so a claim ends
/// within one timeout (plus the database calls), far within the lease.
const CLAIM: usize = 8;
/// One post's timeout (connecting included).
const TIMEOUT: Duration = Duration::from_secs(5);

/// The event's XML (wechatpy's `MassSendJobFinishEvent` reads these fields).
pub fn mass_event_xml(b: &BroadcastRecord, to_user: &str, create_time: i64) -> String {
    let total = b.n_recipients;
    let filter = total.saturating_sub(b.n_filtered + b.n_skipped);
    let sent = b.n_delivered + b.n_sent;
    let errors = b.n_failed;
    let status = if b.dispatched_at.is_none() || (errors > 0 && sent == 0) { "send fail" } else { "send success" };
    format!(
        "<xml><ToUserName><![CDATA[{to_user}]]></ToUserName><FromUserName><![CDATA[qunfa]]></FromUserName><CreateTime>{create_time}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[MASSSENDJOBFINISH]]></Event><MsgID>{}</MsgID><Status><![CDATA[{status}]]></Status><TotalCount>{total}</TotalCount><FilterCount>{filter}</FilterCount><SentCount>{sent}</SentCount><ErrorCount>{errors}</ErrorCount></xml>",
        b.id
    )
}

/// The POST of an event: the URL with `signature`, `timestamp`, `nonce`,
/// `encrypt_type=aes` and `msg_signature`, and the XML body with `Encrypt`.
///
/// # Errors
/// A malformed EncodingAESKey.
pub fn envelope(
    url: &str,
    token: &str,
    aes_key: &str,
    receive_id: &str,
    xml: &str,
    timestamp: i64,
) -> Result<(String, String), String> {
    let key = crypto::aes_key(aes_key)?;
    let mut rng = rand::thread_rng();
    let random: [u8; 16] = rng.gen();
    let nonce = rng.gen_range(100_000_000u64..10_000_000_000).to_string();
    let encrypted = crypto::encrypt(&key, random, xml, receive_id);
    let ts = timestamp.to_string();
    let msg_signature = crypto::signature(token, &ts, &nonce, &encrypted);
    let mut plain = [token, ts.as_str(), nonce.as_str()];
    plain.sort_unstable();
    let signature = hex::encode(<sha1::Sha1 as sha1::Digest>::digest(plain.concat().as_bytes()));
    let sep = if url.contains('?') { '&' } else { '?' };
    let target = format!(
        "{url}{sep}signature={signature}&timestamp={ts}&nonce={nonce}&encrypt_type=aes&msg_signature={msg_signature}"
    );
    let body = format!(
        "<xml><ToUserName><![CDATA[{receive_id}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
    );
    Ok((target, body))
}

/// The HTTP client of callbacks: 5 s timeouts, and no redirects (a
/// receiver's redirect is a failed attempt, never a post somewhere else).
///
/// # Errors
/// When the TLS backend cannot be set up.
pub fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// One round: claims due callbacks and posts them, all at once (at most
/// [`CLAIM`]); returns how many it claimed.
///
/// # Errors
/// When the claim fails.
pub async fn step(state: &AppState, client: &reqwest::Client) -> Result<usize, ApiError> {
    let due = state.blocking(|s| Ok(s.store.claim_compat_callbacks(s.now(), LEASE_MS, CLAIM)?)).await?;
    let n = due.len();
    futures::future::join_all(due.into_iter().map(|d| deliver(state, client, d))).await;
    Ok(n)
}

/// Runs until aborted: claims finished sends' callbacks and posts them.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = match client() {
            Ok(c) => c,
            Err(error) => {
                tracing::error!(%error, "compat callbacks: no HTTP client");
                return;
            }
        };
        loop {
            match step(&state, &client).await {
                // A full claim: more may be due.
                Ok(n) if n == CLAIM => continue,
                Ok(_) => {}
                Err(error) => tracing::warn!(?error, "compat callbacks: claim failed"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

async fn deliver(state: &AppState, client: &reqwest::Client, d: DueCallback) {
    let (workspace_id, broadcast_id, attempts) = (d.workspace_id, d.broadcast_id, d.attempts);
    let prepared = state
        .blocking(move |s| {
            let b = s.store.broadcast(workspace_id, broadcast_id)?;
            let creds = s.store.compat_credentials_of(workspace_id, "oa")?;
            let Some(c) = creds else { return Ok(None) };
            let (Some(url), Some(token), Some(key)) = (c.callback_url, c.callback_token, c.callback_aes_key) else {
                return Ok(None);
            };
            let now = s.now() / 1000;
            let xml = mass_event_xml(&b, &c.app_id, now);
            envelope(&url, &token, &key, &c.app_id, &xml, now).map(Some).map_err(|e| ApiError::internal(&e))
        })
        .await;
    let outcome: Result<(), String> = match prepared {
        Ok(None) => {
            let _ = state
                .blocking(move |s| Ok(s.store.finish_compat_callback(&d, "none", 0, Some("no callback configured"))?))
                .await;
            return;
        }
        Ok(Some((url, body))) => match client.post(&url).header("content-type", "text/xml").body(body).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(format!("{e:?}")),
    };
    let recorded = state
        .blocking(move |s| {
            let now = s.now();
            Ok(match outcome {
                Ok(()) => s.store.finish_compat_callback(&d, "done", now, None)?,
                Err(e) if attempts + 1 >= MAX_ATTEMPTS => {
                    s.store.finish_compat_callback(&d, "failed", now, Some(&e))?
                }
                Err(e) => {
                    let backoff = 1000 * (1i64 << attempts.clamp(0, 10));
                    s.store.finish_compat_callback(&d, "pending", now + backoff, Some(&e))?
                }
            })
        })
        .await;
    match recorded {
        Ok(true) => {}
        Ok(false) => tracing::warn!(broadcast_id, "compat callback: the lease ran out before the outcome was recorded"),
        Err(error) => tracing::warn!(?error, broadcast_id, "compat callback: the outcome was not recorded"),
    }
}
