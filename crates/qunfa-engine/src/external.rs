//! Delivery through external channels: claim a batch (its `queued` records
//! are written in the claim), send each message with its idempotency key,
//! record the outcomes. A node that dies between the send and the record
//! leaves the job leased; when the lease runs out another node sends what is
//! still `queued` again with the same keys, so a receiver that honours
//! `Idempotency-Key` sees each message once.
//!
//! The senders live in their own modules (`email`, `webhook`, `sms`,
//! `wecom`); this one picks the sender for a batch and runs the loop.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use qunfa_core::{
    channel::{SettingsKind, WebhookSettings},
    contact::Channel,
    sign, Code,
};
use qunfa_store::{
    broadcasts::DispatchCache,
    queue::{ExternalBatch, SendOutcome},
    Store,
};

use crate::{email::EmailSender, sms::SmsSender, webhook::WebhookSender, wecom::WecomSender, Engine, EngineConfig};

/// Where links in messages point, and the key that signs them.
#[derive(Debug, Clone)]
pub struct Links {
    /// The server's public base URL, e.g. `https://qunfa.example.com`.
    pub public_url: String,
    /// The server's link key (`Store::link_key`).
    pub key: Vec<u8>,
}

impl Links {
    /// The one-click unsubscribe link of a contact on a channel.
    pub fn unsubscribe(&self, workspace_id: i64, contact_idx: u32, channel: Channel) -> String {
        let purpose = sign::unsubscribe_purpose(workspace_id, contact_idx, channel.as_str());
        format!(
            "{}/u/{workspace_id}/{contact_idx}/{}/{}",
            self.public_url,
            channel.as_str(),
            sign::link_token(&self.key, &purpose)
        )
    }

    /// The open pixel of one delivery: loading it counts as its first open
    /// (`GET /o/…`, docs/measurement.md).
    pub fn open_pixel(&self, workspace_id: i64, broadcast_id: i64, contact_idx: u32, channel: Channel) -> String {
        let purpose = sign::open_purpose(workspace_id, broadcast_id, contact_idx, channel.as_str());
        format!(
            "{}/o/{workspace_id}/{broadcast_id}/{contact_idx}/{}/{}",
            self.public_url,
            channel.as_str(),
            sign::link_token(&self.key, &purpose)
        )
    }

    /// The tracked URL of link `short` for one recipient (docs/measurement.md).
    pub fn click(&self, short: &str, contact_idx: u32, channel: Channel) -> String {
        sign::recipient_link(&self.public_url, &self.key, short, contact_idx, channel.as_str())
    }

    /// Gives each message of the batch its recipient's tracked URL in place
    /// of every tracked link's URL.
    pub fn track(&self, batch: &mut ExternalBatch) {
        if batch.tracked_links.is_empty() {
            return;
        }
        for item in &mut batch.items {
            item.tracked_urls = batch
                .tracked_links
                .iter()
                .map(|(url, short)| (url.clone(), self.click(short, item.contact_idx, batch.channel)))
                .collect();
            if let Some(text) = &item.text {
                if let std::borrow::Cow::Owned(t) = sign::rewrite_links(text, &item.tracked_urls) {
                    item.text = Some(t);
                }
            }
        }
    }

    /// Where a provider posts the delivery receipts of a workspace's channel.
    pub fn receipts(&self, workspace_id: i64, channel: Channel) -> String {
        let purpose = sign::receipts_purpose(workspace_id, channel.as_str());
        format!(
            "{}/v1/hooks/{}/{workspace_id}/{}",
            self.public_url,
            channel.as_str(),
            sign::link_token(&self.key, &purpose)
        )
    }
}

/// The external channels' senders of this node. Settings come with each
/// batch (the workspace's, `PUT /v1/channels/{channel}`).
pub struct Transports {
    pub webhook: WebhookSender,
    pub email: EmailSender,
    pub sms: SmsSender,
    pub wecom: WecomSender,
    /// Webhook settings for workspaces that set up none (the server's
    /// `webhook_secret`); none: such batches fail `QF-CHANNEL-NOT-CONFIGURED`.
    pub default_webhook: Option<WebhookSettings>,
    /// Unsubscribe links and receipt callbacks; none: messages carry no links.
    pub links: Option<Links>,
}

impl Transports {
    /// # Errors
    /// When an HTTP client cannot be built (TLS roots).
    pub fn new() -> Result<Self, reqwest::Error> {
        Ok(Self {
            webhook: WebhookSender::new()?,
            email: EmailSender::new(),
            sms: SmsSender::new()?,
            wecom: WecomSender::new()?,
            default_webhook: None,
            links: None,
        })
    }

    /// The channels this node claims batches of.
    pub fn channels(&self) -> Vec<Channel> {
        vec![Channel::Email, Channel::Webhook, Channel::Sms, Channel::Wecom]
    }

    /// Sends a claimed batch: one outcome per message.
    pub async fn send(&self, batch: &mut ExternalBatch) -> Vec<(u32, SendOutcome)> {
        if let Some(links) = &self.links {
            links.track(batch);
            if matches!(batch.channel, Channel::Email | Channel::Sms) {
                for item in &mut batch.items {
                    item.unsubscribe_url = Some(links.unsubscribe(batch.workspace_id, item.contact_idx, batch.channel));
                    if batch.channel == Channel::Email {
                        item.open_pixel_url = Some(links.open_pixel(
                            batch.workspace_id,
                            batch.broadcast_id,
                            item.contact_idx,
                            batch.channel,
                        ));
                    }
                }
            }
        }
        let batch = &*batch;
        let settings = batch.settings.clone();
        match (batch.channel, settings.as_deref().map(|s| &s.kind)) {
            (Channel::Email, Some(SettingsKind::Email(s))) => self.email.send(batch, s).await,
            (Channel::Sms, Some(SettingsKind::Sms(s))) => {
                let callback = self.links.as_ref().map(|l| l.receipts(batch.workspace_id, Channel::Sms));
                self.sms.send(batch, s, callback.as_deref()).await
            }
            (Channel::Wecom, Some(SettingsKind::Wecom(s))) => self.wecom.send(batch, s).await,
            (Channel::Webhook, Some(SettingsKind::Webhook(s))) => self.webhook.send(batch, s).await,
            (Channel::Webhook, None) if self.default_webhook.is_some() => {
                self.webhook.send(batch, self.default_webhook.as_ref().expect("checked")).await
            }
            _ => batch
                .items
                .iter()
                .map(|i| {
                    let why = format!("the workspace has not set up the {} channel", batch.channel.as_str());
                    (i.contact_idx, SendOutcome::Rejected(Code::ChannelNotConfigured, why))
                })
                .collect(),
        }
    }
}

/// Claims, sends and records external batches until stopped.
pub(crate) async fn run(engine: Engine, store: Store, config: EngineConfig, transports: Arc<Transports>) {
    let channels = transports.channels();
    let cache = Arc::new(DispatchCache::default());
    let lease_ms = i64::from(config.delivery.external_lease_seconds) * 1000;
    // Rounds of claimed batches being sent; the next claim overlaps them.
    let mut in_flight = tokio::task::JoinSet::new();
    while !engine.stop.load(Ordering::Acquire) {
        while in_flight.len() >= ROUNDS_IN_FLIGHT {
            in_flight.join_next().await;
        }
        let (s, c, cfg, chs) = (store.clone(), cache.clone(), config.clone(), channels.clone());
        let claimed = tokio::task::spawn_blocking(move || {
            s.claim_external(&cfg.node, &chs, &c, &cfg.delivery, 4, lease_ms, cfg.clock.now())
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
            if in_flight.is_empty() {
                tokio::select! {
                    () = engine.external_wake.notified() => {}
                    () = tokio::time::sleep(config.poll_interval) => {}
                }
            } else {
                in_flight.join_next().await;
            }
            continue;
        }
        // The claimed batches go out together (each sender bounds its own
        // concurrency per batch and per host); each is recorded when its
        // sends are done.
        let (e, s, cfg, t) = (engine.clone(), store.clone(), config.clone(), transports.clone());
        in_flight.spawn(async move {
            let rounds: Vec<_> = batches.into_iter().map(|batch| send_and_record(&e, &s, &cfg, &t, batch)).collect();
            futures::future::join_all(rounds).await;
        });
    }
    // Stopping: what was sent is recorded before the worker ends.
    while in_flight.join_next().await.is_some() {}
}

/// Claims whose batches may be out at once on one node.
const ROUNDS_IN_FLIGHT: usize = 2;

/// Sends one claimed batch and records its outcomes.
async fn send_and_record(
    engine: &Engine,
    store: &Store,
    config: &EngineConfig,
    transports: &Transports,
    mut batch: ExternalBatch,
) {
    let started = std::time::Instant::now();
    // A slow receiver can make a batch outlive its lease: while it is sent,
    // the lease is extended every third of its length (if this claim still
    // holds it), so no other node takes the job over and sends it again.
    let lease_ms = i64::from(config.delivery.external_lease_seconds) * 1000;
    let (job_id, mut lease_until) = (batch.job_id, batch.lease_until);
    let outcomes = {
        let send = transports.send(&mut batch);
        tokio::pin!(send);
        loop {
            let tick = tokio::time::sleep(Duration::from_millis((lease_ms / 3).max(1) as u64));
            tokio::select! {
                outcomes = &mut send => break outcomes,
                () = tick => {
                    let (s, node, now) = (store.clone(), config.node.clone(), config.clock.now());
                    let renewed = tokio::task::spawn_blocking(move || {
                        s.renew_lease(&node, job_id, lease_until, now + lease_ms)
                    })
                    .await;
                    match renewed {
                        Ok(Ok(Some(until))) => lease_until = until,
                        Ok(Ok(None)) => tracing::warn!(job = job_id, "the lease of a batch in flight was lost; it is only recorded"),
                        _ => tracing::warn!(job = job_id, "renewing the lease of a batch in flight failed"),
                    }
                }
            }
        }
    };
    batch.lease_until = lease_until;
    let (s, cfg, m) = (store.clone(), config.clone(), engine.metrics.clone());
    let node = config.node.clone();
    let recorded = tokio::task::spawn_blocking(move || {
        let now = cfg.clock.now();
        let r = s.finish_external(&node, &batch, &outcomes, &cfg.delivery, now);
        if let Ok(report) = &r {
            m.record_external(&batch, report, now - batch.queued_at);
            tracing::info!(
                broadcast = batch.broadcast_id,
                batch = batch.batch_no,
                channel = batch.channel.as_str(),
                class = batch.priority.as_str(),
                attempt = batch.attempt,
                delivered = report.delivered,
                sent = report.sent,
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
