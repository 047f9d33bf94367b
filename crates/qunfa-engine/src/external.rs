//! Delivery through external channels: claim a batch (its `queued` records
//! are written in the claim), send each message with its idempotency key,
//! record the outcomes. A node that dies between the send and the record
//! leaves the job leased; when the lease runs out another node sends what is
//! still `queued` again with the same keys, so a receiver that honours
//! `Idempotency-Key` sees each message once.
//!
//! The webhook channel is the first external channel: a signed JSON POST to
//! the contact's webhook address.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use futures::StreamExt;
use qunfa_core::{contact::Channel, Code};
use qunfa_store::{
    broadcasts::DispatchCache,
    now_millis,
    queue::{ExternalBatch, Outgoing, SendOutcome},
    Store,
};

use crate::{Engine, EngineConfig};

/// Settings of the webhook channel.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Signs every request (`X-Qunfa-Signature`, see `qunfa_core::sign`).
    pub secret: Vec<u8>,
    /// Longest wait for one answer; a timeout is retried.
    pub timeout: Duration,
    /// Requests in flight at once per batch.
    pub concurrency: usize,
}

impl WebhookConfig {
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self { secret: secret.into(), timeout: Duration::from_secs(5), concurrency: 64 }
    }
}

/// The webhook channel's sender.
pub struct Webhook {
    config: WebhookConfig,
    client: reqwest::Client,
}

impl Webhook {
    /// # Errors
    /// When the HTTP client cannot be built (TLS roots).
    pub fn new(config: WebhookConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("qunfa/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { config, client })
    }

    /// Sends every message of the batch; one outcome per message.
    pub async fn send(&self, batch: &ExternalBatch) -> Vec<(u32, SendOutcome)> {
        let content: serde_json::Value = serde_json::from_str(&batch.content_json).unwrap_or_default();
        let content = &content;
        // The futures are made first (not in a closure of the stream), which
        // keeps the whole future `Send` for `tokio::spawn`.
        let sends: Vec<_> = batch.items.iter().map(|item| self.post(batch, content, item)).collect();
        futures::stream::iter(sends).buffer_unordered(self.config.concurrency.max(1)).collect().await
    }

    async fn post(&self, batch: &ExternalBatch, content: &serde_json::Value, item: &Outgoing) -> (u32, SendOutcome) {
        (item.contact_idx, self.post_one(batch, content, item).await)
    }

    async fn post_one(&self, batch: &ExternalBatch, content: &serde_json::Value, item: &Outgoing) -> SendOutcome {
        let Some(url) = &item.address else {
            return SendOutcome::Rejected(Code::ChannelNoAddress, "the contact has no webhook address".into());
        };
        let body = serde_json::json!({
            "id": item.idempotency_key,
            "broadcast_id": batch.broadcast_id.to_string(),
            "contact_id": ((batch.workspace_id << 32) | i64::from(item.contact_idx)).to_string(),
            "external_id": item.external_id,
            "name": item.name,
            "priority": batch.priority.as_str(),
            "content": content,
            "text": item.text,
        })
        .to_string();
        let timestamp = now_millis() / 1000;
        let signature = qunfa_core::sign::signature(&self.config.secret, timestamp, body.as_bytes());
        let sent = self
            .client
            .post(url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", &item.idempotency_key)
            .header("X-Qunfa-Timestamp", timestamp.to_string())
            .header("X-Qunfa-Signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => SendOutcome::Delivered,
            Ok(r) if matches!(r.status().as_u16(), 408 | 425 | 429) || r.status().is_server_error() => {
                SendOutcome::Retry(format!("HTTP {}", r.status().as_u16()))
            }
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                let text: String = text.chars().take(200).collect();
                SendOutcome::Rejected(Code::DeliveryRejected, format!("HTTP {status}: {text}"))
            }
            Err(e) if e.is_timeout() => SendOutcome::Retry("timed out".into()),
            Err(e) => SendOutcome::Retry(format!("{e}")),
        }
    }
}

/// The external channels this node sends through.
#[derive(Default)]
pub struct Transports {
    pub webhook: Option<Webhook>,
}

impl Transports {
    pub fn channels(&self) -> Vec<Channel> {
        self.webhook.iter().map(|_| Channel::Webhook).collect()
    }

    async fn send(&self, batch: &ExternalBatch) -> Vec<(u32, SendOutcome)> {
        match (batch.channel, &self.webhook) {
            (Channel::Webhook, Some(w)) => w.send(batch).await,
            // Claims name only configured channels.
            _ => batch
                .items
                .iter()
                .map(|i| (i.contact_idx, SendOutcome::Retry("the channel is not configured on this node".into())))
                .collect(),
        }
    }
}

/// Claims, sends and records external batches until stopped.
pub(crate) async fn run(engine: Engine, store: Store, config: EngineConfig, transports: Arc<Transports>) {
    let channels = transports.channels();
    let cache = Arc::new(DispatchCache::default());
    let lease_ms = i64::from(config.delivery.external_lease_seconds) * 1000;
    while !engine.stop.load(Ordering::Acquire) {
        let (s, c, cfg, chs) = (store.clone(), cache.clone(), config.clone(), channels.clone());
        let claimed = tokio::task::spawn_blocking(move || {
            s.claim_external(&cfg.node, &chs, &c, &cfg.delivery, 4, lease_ms, now_millis())
        })
        .await;
        let batches = match claimed {
            Ok(Ok(b)) => b,
            Ok(Err(error)) => {
                tracing::warn!(%error, "claiming external batches failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => continue,
        };
        if batches.is_empty() {
            tokio::select! {
                () = engine.external_wake.notified() => {}
                () = tokio::time::sleep(config.poll_interval) => {}
            }
            continue;
        }
        for batch in batches {
            let started = std::time::Instant::now();
            let outcomes = transports.send(&batch).await;
            let (s, cfg, m) = (store.clone(), config.clone(), engine.metrics.clone());
            let node = config.node.clone();
            let recorded = tokio::task::spawn_blocking(move || {
                let r = s.finish_external(&node, &batch, &outcomes, &cfg.delivery, now_millis());
                if let Ok(report) = &r {
                    let latency = now_millis() - batch.queued_at;
                    m.record_batch(batch.priority, batch.channel, report.delivered, report.failed, latency);
                    if report.done {
                        m.jobs_done.fetch_add(1, Ordering::Relaxed);
                    }
                    if report.dead {
                        m.dead_letters.fetch_add(1, Ordering::Relaxed);
                    }
                    if report.completed {
                        m.broadcasts_completed.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::info!(
                        broadcast = batch.broadcast_id,
                        batch = batch.batch_no,
                        channel = batch.channel.as_str(),
                        class = batch.priority.as_str(),
                        attempt = batch.attempt,
                        delivered = report.delivered,
                        failed = report.failed,
                        retrying = report.retrying,
                        lease_lost = report.lease_lost,
                        took_ms = started.elapsed().as_millis() as u64,
                        "external batch"
                    );
                }
                r
            })
            .await;
            match recorded {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    engine.metrics.step_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "recording an external batch failed; its lease runs out and it is sent again");
                }
                Err(_) => {}
            }
        }
    }
}
