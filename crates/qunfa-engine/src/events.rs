//! The event worker: delivers the outbox of outgoing event webhooks
//! (`qunfa_store::events`). Each delivery is leased, POSTed with the
//! endpoint's signature (`X-Qunfa-Signature` over `timestamp.body`, the same
//! recipe as the webhook channel) and its event id as `Idempotency-Key`, then
//! recorded: delivered on a 2xx, retried with the policy's backoff otherwise,
//! failed after `MAX_EVENT_ATTEMPTS` or at once for a permanent refusal.

use std::{sync::atomic::Ordering, time::Duration};

use futures::StreamExt;
use qunfa_store::{events::EventJob, now_millis, Store};

use crate::{webhook, Engine, EngineConfig};

/// Deliveries leased per round, and in flight at once.
const EVENTS_PER_ROUND: usize = 64;
/// How long a node keeps a leased event delivery.
const EVENT_LEASE_MS: i64 = 60_000;
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What one POST came to: the status, or (status, error, permanent).
type Attempt = Result<u16, (Option<u16>, String, bool)>;

async fn post(client: &reqwest::Client, job: &EventJob) -> Attempt {
    if !job.allow_private_networks {
        if let Some(why) = webhook::literal_private_host(&job.url) {
            return Err((None, why, true));
        }
    }
    let body = job.delivery.payload.clone();
    let timestamp = now_millis() / 1000;
    let signature = qunfa_core::sign::signature(job.secret.as_bytes(), timestamp, body.as_bytes());
    let event_id = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let sent = client
        .post(&job.url)
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", event_id)
        .header("X-Qunfa-Event", &job.delivery.event_type)
        .header("X-Qunfa-Timestamp", timestamp.to_string())
        .header("X-Qunfa-Signature", signature)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => Ok(r.status().as_u16()),
        Ok(r) => {
            let status = r.status().as_u16();
            let retry = matches!(status, 408 | 425 | 429) || r.status().is_server_error();
            let permanent = !retry;
            let detail = if r.status().is_redirection() {
                let to = r.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or("?").to_owned();
                format!("HTTP {status} to {to} (redirects are not followed)")
            } else {
                let text: String = r.text().await.unwrap_or_default().chars().take(200).collect();
                format!("HTTP {status}: {text}")
            };
            Err((Some(status), detail, permanent))
        }
        Err(e) if e.is_timeout() => Err((None, "timed out".into(), false)),
        Err(e) => Err((None, format!("{e}"), false)),
    }
}

/// Leases, sends and records event deliveries until stopped.
pub(crate) async fn run(engine: Engine, store: Store, config: EngineConfig) {
    let strict = webhook::checked_client(false, EVENT_TIMEOUT);
    let permissive = webhook::checked_client(true, EVENT_TIMEOUT);
    let (Ok(strict), Ok(permissive)) = (strict, permissive) else {
        tracing::error!("cannot build the event webhook client; events stay queued");
        return;
    };
    while !engine.stop.load(Ordering::Acquire) {
        let (s, now) = (store.clone(), config.clock.now());
        let claimed = tokio::task::spawn_blocking(move || s.claim_events(EVENTS_PER_ROUND, EVENT_LEASE_MS, now)).await;
        let jobs = match claimed {
            Ok(Ok(jobs)) => jobs,
            Ok(Err(error)) => {
                tracing::warn!(%error, "claiming event deliveries failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => continue,
        };
        if jobs.is_empty() {
            tokio::select! {
                () = engine.events_wake.notified() => {}
                () = tokio::time::sleep(config.poll_interval.max(Duration::from_millis(250))) => {}
            }
            continue;
        }
        let sends: Vec<_> = jobs
            .iter()
            .map(|job| {
                let client = if job.allow_private_networks { &permissive } else { &strict };
                async move { (job.delivery.id, post(client, job).await) }
            })
            .collect();
        let outcomes: Vec<(i64, Attempt)> =
            futures::stream::iter(sends).buffer_unordered(EVENTS_PER_ROUND).collect().await;
        let (s, policy, clock) = (store.clone(), config.delivery.clone(), config.clock.clone());
        let recorded = tokio::task::spawn_blocking(move || {
            for (id, outcome) in outcomes {
                if let Err((_, error, _)) = &outcome {
                    tracing::info!(delivery = id, %error, "event delivery failed");
                }
                let jitter = (id.wrapping_mul(2_654_435_761) % 1000) as f64 / 1000.0;
                s.finish_event(id, outcome, &policy, jitter.abs(), clock.now())?;
            }
            Ok::<_, qunfa_store::StoreError>(())
        })
        .await;
        if let Ok(Err(error)) = recorded {
            tracing::warn!(%error, "recording event deliveries failed; their lease runs out and they are sent again");
        }
    }
}
