//! The webhook channel: a signed JSON POST per message (`X-Qunfa-Signature`,
//! see `qunfa_core::sign`) to the contact's webhook address or the workspace's
//! endpoint, or `coalesce` messages per POST (`{"messages": […]}`) to the
//! workspace's endpoint.
//!
//! The sender guards both sides of the wire:
//!
//! - **SSRF.** Unless the workspace allows private networks, a URL whose host
//!   is, or resolves to, a loopback, private, link-local, shared (CGNAT),
//!   multicast, documentation or otherwise non-public address is refused
//!   (`QF-ADDRESS-PRIVATE`) without a request. Literal addresses and
//!   `localhost` names are checked before sending; names are checked by the
//!   strict client's own resolver, on the very addresses it then connects to,
//!   so a DNS answer that changes between a check and the connect (DNS
//!   rebinding) cannot slip through. Redirects are never followed
//!   (`QF-DELIVERY-REDIRECT`).
//! - **The receivers.** Each host (scheme, host, port) has a circuit breaker
//!   and a cap on requests in flight, in memory, shared by every batch and
//!   workspace of this node. After `breaker_failures` consecutive failures
//!   (connect errors, timeouts, 5xx, 429) the breaker opens: nothing is sent to
//!   the host for `breaker_cooldown_ms` (the messages come back as `Retry`,
//!   and the engine retries the batch later). Then exactly one probe goes
//!   through: success closes the breaker, failure opens it again for twice as
//!   long (up to 10 minutes). A 429 with `Retry-After` opens it at least that
//!   long. Because a message takes its place in the host's queue before it
//!   asks the breaker, a breaker that opens mid-batch stops the rest of the
//!   batch at once.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use futures::StreamExt;
use qunfa_core::{channel::WebhookSettings, Code};
use qunfa_store::{
    now_millis,
    queue::{ExternalBatch, Outgoing, SendOutcome},
};
use reqwest::{
    dns::{Addrs, Name, Resolve, Resolving},
    Url,
};
use tokio::sync::Semaphore;

/// The longest an error text gets (it is stored as the delivery's `last_error`).
const MAX_ERROR_CHARS: usize = 200;
/// The longest a breaker stays open after failed probes.
const MAX_COOLDOWN: Duration = Duration::from_secs(600);
/// The longest a `Retry-After` is honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Hosts remembered before idle ones (closed breaker, nothing in flight) are forgotten.
const MAX_REMEMBERED_HOSTS: usize = 4096;

/// The webhook channel's sender (one per node; settings come per batch).
pub struct WebhookSender {
    /// Refuses non-public addresses in its resolver.
    strict: reqwest::Client,
    /// For workspaces with `allow_private_networks`.
    permissive: reqwest::Client,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
}

impl WebhookSender {
    /// # Errors
    /// When the HTTP client cannot be built (TLS roots).
    pub fn new() -> Result<Self, reqwest::Error> {
        Self::with_static_hosts(HashMap::new())
    }

    /// Like [`WebhookSender::new`], but the names in `hosts` (lowercase) resolve
    /// to the given addresses without asking DNS — and still go through the
    /// same address checks. For tests, and for endpoints pinned to addresses.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (TLS roots).
    pub fn with_static_hosts(hosts: HashMap<String, Vec<IpAddr>>) -> Result<Self, reqwest::Error> {
        let hosts = Arc::new(hosts);
        // No proxies: the address checks must apply to the host the request
        // connects to, which a proxy would hide.
        let client = |public_only: bool| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .dns_resolver(Arc::new(CheckedResolver { public_only, static_hosts: hosts.clone() }))
                .user_agent(concat!("qunfa/", env!("CARGO_PKG_VERSION")))
                .build()
        };
        Ok(Self { strict: client(true)?, permissive: client(false)?, hosts: Mutex::default() })
    }

    /// Sends every message of the batch; one outcome per message.
    pub async fn send(&self, batch: &ExternalBatch, settings: &WebhookSettings) -> Vec<(u32, SendOutcome)> {
        // Parsed and written again once: the body carries it canonical.
        let content: serde_json::Value = serde_json::from_str(&batch.content_json).unwrap_or_default();
        let content = &content.to_string();
        let mut requests: Vec<Request> = Vec::new();
        let mut to_endpoint: Vec<usize> = Vec::new();
        let mut outcomes = Vec::with_capacity(batch.items.len());
        for (at, item) in batch.items.iter().enumerate() {
            match (&item.address, &settings.endpoint) {
                (Some(_), _) => requests.push(Request { items: vec![at] }),
                (None, Some(_)) => to_endpoint.push(at),
                (None, None) => outcomes.push((
                    item.contact_idx,
                    SendOutcome::Rejected(Code::ChannelNoAddress, "the contact has no webhook address".into()),
                )),
            }
        }
        for items in to_endpoint.chunks(settings.coalesce.max(1) as usize) {
            requests.push(Request { items: items.to_vec() });
        }
        // Made lazily (a large batch would otherwise hold every request's
        // future at once), by an iterator rather than a closure of the stream,
        // which keeps the whole future `Send` for `tokio::spawn`.
        let sends = requests.into_iter().map(|r| self.deliver(batch, settings, content, r));
        let mut sent = futures::stream::iter(sends).buffer_unordered(settings.concurrency.max(1) as usize);
        while let Some(done) = sent.next().await {
            outcomes.extend(done);
        }
        outcomes
    }

    async fn deliver(
        &self,
        batch: &ExternalBatch,
        settings: &WebhookSettings,
        content: &str,
        request: Request,
    ) -> Vec<(u32, SendOutcome)> {
        let items: Vec<&Outgoing> = request.items.iter().map(|&at| &batch.items[at]).collect();
        let outcome = match items.first().and_then(|i| i.address.as_ref()).or(settings.endpoint.as_ref()) {
            Some(url) => self.post(batch, settings, content, url, &items).await,
            None => SendOutcome::Rejected(Code::ChannelNoAddress, "the contact has no webhook address".into()),
        };
        items.iter().map(|i| (i.contact_idx, outcome.clone())).collect()
    }

    /// One POST of one message, or of several (`{"messages": […]}`) to the
    /// workspace endpoint when coalescing; its outcome is every message's.
    async fn post(
        &self,
        batch: &ExternalBatch,
        settings: &WebhookSettings,
        content: &str,
        url: &str,
        items: &[&Outgoing],
    ) -> SendOutcome {
        let url = match Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => u,
            Ok(_) => return SendOutcome::Rejected(Code::AddressInvalid, short(format!("not an http(s) URL: {url}"))),
            Err(e) => {
                return SendOutcome::Rejected(Code::AddressInvalid, short(format!("not a valid URL ({e}): {url}")))
            }
        };
        if !settings.allow_private_networks {
            if let Some(why) = literal_host_refusal(&url) {
                return SendOutcome::Rejected(Code::AddressPrivate, short(why));
            }
        }
        let host = self.host(&url);
        // Before queueing for the host: an open breaker answers at once.
        let peek = |h: &Arc<Host>| lock(&h.breaker).refusal(Instant::now()).map_or(Ok(()), Err);
        if let Err(refused) = clearance(&host, settings, peek).await {
            return refused;
        }
        let Ok(_permit) = host.permits(settings.per_host_concurrency.max(1)).acquire_owned().await else {
            return SendOutcome::Retry("the host's request queue is closed".into());
        };
        // Again once it is this message's turn: the breaker may have opened
        // meanwhile (then the rest of the batch for this host stops here).
        let admit = |h: &Arc<Host>| Breaker::admit(h, Instant::now());
        let mut admission = match clearance(&host, settings, admit).await {
            Ok(admission) => admission,
            Err(refused) => return refused,
        };
        let body = body(batch, content, items);
        let keys = items.iter().map(|i| i.idempotency_key.as_str()).collect::<Vec<_>>().join(",");
        // Signed now, not when the batch was claimed: the wait for the host
        // must not age the timestamp.
        let timestamp = now_millis() / 1000;
        let signature = qunfa_core::sign::signature(settings.secret.as_bytes(), timestamp, body.as_bytes());
        let client = if settings.allow_private_networks { &self.permissive } else { &self.strict };
        let timeout = Duration::from_millis(settings.timeout_ms.max(1));
        let sent = client
            .post(url)
            .timeout(timeout)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", keys)
            .header("X-Qunfa-Timestamp", timestamp.to_string())
            .header("X-Qunfa-Signature", signature)
            .body(body)
            .send()
            .await;
        let (outcome, verdict) = match sent {
            Ok(response) => judge(response, settings.timeout_ms).await,
            Err(e) => judge_error(e, settings.timeout_ms),
        };
        let why = match &outcome {
            SendOutcome::Retry(why) | SendOutcome::Rejected(_, why) => why.as_str(),
            _ => "",
        };
        admission.settle(verdict, why, settings);
        outcome
    }

    /// The host's breaker and queue, made on first use.
    fn host(&self, url: &Url) -> Arc<Host> {
        let key = format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or_default()
        );
        let mut hosts = lock(&self.hosts);
        if hosts.len() >= MAX_REMEMBERED_HOSTS && !hosts.contains_key(&key) {
            hosts.retain(|_, h| Arc::strong_count(h) > 1 || !lock(&h.breaker).is_idle());
        }
        hosts.entry(key).or_insert_with_key(|key| Arc::new(Host::new(key.clone()))).clone()
    }
}

/// Whether a request may go to `host` now, as `check` says (a look at the
/// breaker, or its admission). While a probe is in flight the others wait
/// for its answer (at most a timeout), then go or not with it.
async fn clearance<T>(
    host: &Arc<Host>,
    settings: &WebhookSettings,
    check: impl Fn(&Arc<Host>) -> Result<T, Refusal>,
) -> Result<T, SendOutcome> {
    let wait = Duration::from_millis(settings.timeout_ms.max(1)) + Duration::from_millis(100);
    loop {
        // Made before the check, so a probe that settles in between still wakes it.
        let probe_done = host.probe_done.notified();
        match check(host) {
            Ok(cleared) => return Ok(cleared),
            Err(Refusal::Probing) if tokio::time::timeout(wait, probe_done).await.is_ok() => continue,
            Err(refusal @ Refusal::Open { until_unix_ms, .. }) => {
                let reason = short(refusal.describe(&host.key));
                return Err(SendOutcome::Deferred { until: until_unix_ms, reason });
            }
            Err(refusal) => return Err(SendOutcome::Retry(short(refusal.describe(&host.key)))),
        }
    }
}

/// The messages of one POST.
///
/// Positions in the batch's items, not references: a request type without a
/// lifetime keeps the lazily made futures `Send` for `tokio::spawn`.
struct Request {
    /// Never empty; one item with its own address, or items for the endpoint.
    items: Vec<usize>,
}

/// The JSON body of one POST: the message's object, or `{"messages": […]}`
/// when several are coalesced. Written directly (keys in the order
/// `serde_json` sorts them), with the batch's content serialized once.
fn body(batch: &ExternalBatch, content_json: &str, items: &[&Outgoing]) -> String {
    use std::fmt::Write;
    // Serializing a string or an optional string cannot fail.
    let quoted = |v: &str| serde_json::to_string(v).unwrap_or_default();
    let mut out = String::with_capacity(items.len() * (content_json.len() + 256) + 16);
    if items.len() > 1 {
        out.push_str(r#"{"messages":["#);
    }
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            r#"{{"broadcast_id":"{}","contact_id":"{}","content":{content_json},"external_id":{},"id":{},"name":{},"priority":"{}","text":{}}}"#,
            batch.broadcast_id,
            (batch.workspace_id << 32) | i64::from(item.contact_idx),
            quoted(&item.external_id),
            quoted(&item.idempotency_key),
            quoted(&item.name),
            batch.priority.as_str(),
            item.text.as_deref().map_or_else(|| "null".to_owned(), quoted),
        );
    }
    if items.len() > 1 {
        out.push_str("]}");
    }
    out
}

/// What a request says about its host's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// It answered (2xx, 3xx, most 4xx).
    Up,
    /// It failed (connect error, timeout, 5xx, 429), maybe asking for a pause.
    Down { retry_after: Option<Duration> },
    /// Nothing was learnt (e.g. the request was refused before connecting).
    Unknown,
}

async fn judge(response: reqwest::Response, timeout_ms: u64) -> (SendOutcome, Verdict) {
    let status = response.status().as_u16();
    if response.status().is_success() {
        return (SendOutcome::Delivered, Verdict::Up);
    }
    if response.status().is_redirection() {
        let location = response.headers().get(reqwest::header::LOCATION).map(|l| String::from_utf8_lossy(l.as_bytes()));
        let why = match location {
            Some(location) => format!("HTTP {status} to {location}"),
            None => format!("HTTP {status} without a Location"),
        };
        return (SendOutcome::Rejected(Code::DeliveryRedirect, short(why)), Verdict::Up);
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
    match status {
        // Retried: the status is the story (and the body is not waited for).
        429 => {
            let extra = retry_after.map(|d| format!(" (Retry-After {} s)", d.as_secs())).unwrap_or_default();
            (SendOutcome::Retry(format!("HTTP 429{extra}")), Verdict::Down { retry_after })
        }
        408 => (SendOutcome::Retry("HTTP 408".into()), Verdict::Down { retry_after: None }),
        // Too Early: the host is fine, the message is worth sending again.
        425 => (SendOutcome::Retry("HTTP 425".into()), Verdict::Up),
        500.. => (SendOutcome::Retry(format!("HTTP {status}")), Verdict::Down { retry_after }),
        // Refused for good: the receiver's reason is worth keeping.
        _ => {
            let text = snippet(response, timeout_ms).await;
            let why = if text.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {text}") };
            (SendOutcome::Rejected(Code::DeliveryRejected, short(why)), Verdict::Up)
        }
    }
}

/// The start of an error answer's body, on one line.
async fn snippet(mut response: reqwest::Response, timeout_ms: u64) -> String {
    let mut bytes = Vec::new();
    // The request's timeout covers the body too; reading stops early anyway.
    while bytes.len() < 512 {
        match tokio::time::timeout(Duration::from_millis(timeout_ms.max(1)), response.chunk()).await {
            Ok(Ok(Some(chunk))) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn judge_error(error: reqwest::Error, timeout_ms: u64) -> (SendOutcome, Verdict) {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<NonPublicAddress>() {
            return (SendOutcome::Rejected(Code::AddressPrivate, short(refused.to_string())), Verdict::Unknown);
        }
        source = e.source();
    }
    if error.is_timeout() {
        return (SendOutcome::Retry(format!("timed out after {timeout_ms} ms")), Verdict::Down { retry_after: None });
    }
    // Without the URL: a contact's address may carry a token.
    let error = error.without_url();
    let mut parts = vec![error.to_string()];
    let mut source = std::error::Error::source(&error);
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    let prefix = if error.is_connect() { "could not connect: " } else { "" };
    (SendOutcome::Retry(short(format!("{prefix}{}", parts.join(": ")))), Verdict::Down { retry_after: None })
}

/// At most [`MAX_ERROR_CHARS`] characters.
fn short(text: String) -> String {
    if text.chars().count() <= MAX_ERROR_CHARS {
        return text;
    }
    let mut cut: String = text.chars().take(MAX_ERROR_CHARS - 1).collect();
    cut.push('…');
    cut
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// Hosts: breaker and queue.

struct Host {
    /// `scheme://host:port`.
    key: String,
    breaker: Mutex<Breaker>,
    /// The queue: `per_host_concurrency` permits (and that number).
    permits: Mutex<(u32, Arc<Semaphore>)>,
    /// Wakes the requests waiting for a probe's answer.
    probe_done: tokio::sync::Notify,
}

impl Host {
    fn new(key: String) -> Self {
        Self {
            key,
            breaker: Mutex::default(),
            permits: Mutex::new((0, Arc::new(Semaphore::new(0)))),
            probe_done: tokio::sync::Notify::new(),
        }
    }

    /// The host's queue with `cap` requests in flight at most.
    fn permits(&self, cap: u32) -> Arc<Semaphore> {
        let mut permits = lock(&self.permits);
        if permits.0 != cap {
            // First use, or the cap changed (the workspace's settings, or
            // another workspace with another cap sends to the host): a fresh
            // queue. Requests holding permits of the old one finish on their own.
            *permits = (cap, Arc::new(Semaphore::new(cap as usize)));
        }
        permits.1.clone()
    }
}

#[derive(Debug, Clone, Default)]
struct Breaker {
    phase: Phase,
    consecutive_failures: u32,
    /// How long it stays open this time (doubles after failed probes).
    cooldown: Duration,
    /// Why the last request failed.
    last_failure: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Closed,
    /// Nothing goes through until `until` (`until_unix_ms` for the messages).
    Open { until: Instant, until_unix_ms: i64 },
    /// One probe is in flight; everything else waits for its answer.
    HalfOpen,
}

/// Why a message was not sent to its host.
enum Refusal {
    Open { until_unix_ms: i64, failures: u32, last_failure: String },
    Probing,
}

impl Refusal {
    fn describe(&self, host: &str) -> String {
        match self {
            Self::Open { until_unix_ms, failures, last_failure } => format!(
                "circuit open for host {host} until {} after {failures} failures (last: {last_failure})",
                utc(*until_unix_ms)
            ),
            Self::Probing => format!("circuit open for host {host}: its probe request did not answer in time"),
        }
    }
}

impl Breaker {
    fn is_idle(&self) -> bool {
        self.phase == Phase::Closed && self.consecutive_failures == 0
    }

    /// Why nothing may be sent now, without changing the state.
    fn refusal(&self, now: Instant) -> Option<Refusal> {
        match self.phase {
            Phase::Closed => None,
            Phase::Open { until, until_unix_ms } if now < until => Some(Refusal::Open {
                until_unix_ms,
                failures: self.consecutive_failures,
                last_failure: self.last_failure.clone(),
            }),
            Phase::Open { .. } => None,
            Phase::HalfOpen => Some(Refusal::Probing),
        }
    }

    /// Lets a request through (the probe, after a cooldown), or not.
    fn admit(host: &Arc<Host>, now: Instant) -> Result<Admission, Refusal> {
        let mut breaker = lock(&host.breaker);
        if let Some(refusal) = breaker.refusal(now) {
            return Err(refusal);
        }
        let probe = matches!(breaker.phase, Phase::Open { .. });
        if probe {
            breaker.phase = Phase::HalfOpen;
        }
        Ok(Admission { host: host.clone(), probe, settled: false })
    }

    fn open(&mut self, now: Instant, cooldown: Duration) {
        let until = now + cooldown;
        let until_unix_ms = now_millis().saturating_add(i64::try_from(cooldown.as_millis()).unwrap_or(i64::MAX));
        self.phase = Phase::Open { until, until_unix_ms };
    }
}

/// A request let through by the breaker; its verdict updates the breaker.
struct Admission {
    host: Arc<Host>,
    probe: bool,
    settled: bool,
}

impl Admission {
    /// `why`: the outcome's text, kept as the breaker's last failure.
    fn settle(&mut self, verdict: Verdict, why: &str, settings: &WebhookSettings) {
        self.settled = true;
        let now = Instant::now();
        let base = Duration::from_millis(settings.breaker_cooldown_ms);
        let mut b = lock(&self.host.breaker);
        match verdict {
            Verdict::Up => {
                // A late answer of a request let in before the breaker opened
                // does not close it: only the probe decides.
                if self.probe || b.phase == Phase::Closed {
                    b.phase = Phase::Closed;
                    b.consecutive_failures = 0;
                    b.cooldown = Duration::ZERO;
                }
            }
            Verdict::Down { retry_after } => {
                b.consecutive_failures = b.consecutive_failures.saturating_add(1);
                b.last_failure = why.chars().take(80).collect();
                let pause = retry_after.unwrap_or_default();
                match b.phase {
                    _ if self.probe => {
                        let cooldown = (b.cooldown * 2).clamp(base, MAX_COOLDOWN.max(base));
                        b.cooldown = cooldown;
                        b.open(now, cooldown.max(pause));
                    }
                    Phase::Closed if b.consecutive_failures >= settings.breaker_failures.max(1) => {
                        b.cooldown = base;
                        b.open(now, base.max(pause));
                    }
                    Phase::Closed if !pause.is_zero() => b.open(now, pause),
                    Phase::Open { until, .. } if now + pause > until => b.open(now, pause),
                    _ => {}
                }
            }
            Verdict::Unknown => {
                if self.probe {
                    // The next request probes instead.
                    b.open(now, Duration::ZERO);
                }
            }
        }
        drop(b);
        if self.probe {
            self.host.probe_done.notify_waiters();
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        // A probe dropped unanswered (the batch was cancelled) must not keep
        // the host half-open for ever.
        if self.probe && !self.settled {
            let mut b = lock(&self.host.breaker);
            if b.phase == Phase::HalfOpen {
                b.open(Instant::now(), Duration::ZERO);
            }
            drop(b);
            self.host.probe_done.notify_waiters();
        }
    }
}

/// `2025-06-01T12:00:03.123Z`.
fn utc(unix_ms: i64) -> String {
    let (secs, ms) = (unix_ms.div_euclid(1000), unix_ms.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

// ---------------------------------------------------------------------------
// SSRF: which addresses are public.

/// Why a URL's literal host may not be sent to (a non-public address, or a
/// `localhost` name); none: it may, or it is a name the resolver checks.
fn literal_host_refusal(url: &Url) -> Option<String> {
    // The URL parser writes every IPv4 spelling (`2130706433`, `0x7f.1`)
    // dotted, and IPv6 in brackets.
    let host = url.host_str()?;
    let ip = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    };
    match ip {
        Some(ip) => non_public(ip).map(|kind| format!("the webhook host {ip} is {kind}{SSRF_HINT}")),
        None => {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            let loopback = name == "localhost" || name.ends_with(".localhost");
            loopback.then(|| format!("the webhook host {name} is a loopback name{SSRF_HINT}"))
        }
    }
}

const SSRF_HINT: &str = " (not sent: allow_private_networks is off)";

/// Why a URL (given as text) may not be sent to under SSRF protection: a
/// literal non-public address or a `localhost` name; none: it may, or its
/// name is checked when it is resolved ([`checked_client`]).
pub fn literal_private_host(url: &str) -> Option<String> {
    literal_host_refusal(&Url::parse(url).ok()?)
}

/// The strict and the permissive [`checked_client`], indexed by
/// `allow_private_networks` (for the provider channels: SMS, WeCom).
///
/// # Errors
/// When a client cannot be built (TLS roots).
pub fn checked_clients() -> Result<[reqwest::Client; 2], reqwest::Error> {
    let long = Duration::from_secs(120);
    Ok([checked_client(false, long)?, checked_client(true, long)?])
}

/// Every message of a batch refused at once with the same outcome.
pub(crate) fn refuse_all(batch: &ExternalBatch, outcome: &SendOutcome) -> Vec<(u32, SendOutcome)> {
    batch.items.iter().map(|i| (i.contact_idx, outcome.clone())).collect()
}

/// An HTTP client that follows no redirect, uses no proxy and — unless
/// `allow_private` — refuses names that resolve to non-public addresses
/// (the event webhooks use it; the webhook channel keeps its own pair).
///
/// # Errors
/// When the client cannot be built (TLS roots).
pub fn checked_client(allow_private: bool, timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .dns_resolver(Arc::new(CheckedResolver { public_only: !allow_private, static_hosts: Arc::default() }))
        .user_agent(concat!("qunfa/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// What kind of non-public address `ip` is; none: a public one.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, ..) => "an unspecified address",
        (127, ..) => "a loopback address",
        (10, ..) | (172, 16..=31, _) | (192, 168, _) => "a private address",
        (169, 254, _) => "a link-local address (cloud metadata)",
        (100, 64..=127, _) => "a shared (CGNAT) address",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        (192, 0, 0) | (192, 88, 99) | (198, 18..=19, _) => "a reserved address",
        (224..=239, ..) => "a multicast address",
        (255, 255, 255) if ip == Ipv4Addr::BROADCAST => "the broadcast address",
        (240..=255, ..) => "a reserved address",
        _ => return None,
    })
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    // IPv4 inside IPv6: mapped (::ffff:a.b.c.d), compatible (::a.b.c.d),
    // NAT64 (64:ff9b::a.b.c.d) and 6to4 (2002:aabb:ccdd::) are judged by
    // the IPv4 address they lead to.
    let embedded = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    match s {
        [0, 0, 0, 0, 0, 0, 0, 0] => Some("an unspecified address"),
        [0, 0, 0, 0, 0, 0, 0, 1] => Some("a loopback address"),
        [0, 0, 0, 0, 0, 0xffff, hi, lo] | [0, 0, 0, 0, 0, 0, hi, lo] | [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => {
            non_public_v4(embedded(hi, lo))
        }
        [0x2002, hi, lo, ..] => non_public_v4(embedded(hi, lo)),
        [0x64, 0xff9b, 1, ..] => Some("a reserved address"),
        [0x100, 0, 0, 0, ..] => Some("a reserved address"),
        [0x2001, 0xdb8, ..] => Some("a documentation address"),
        [x, ..] if x & 0xfff0 == 0x3ff0 => Some("a documentation address"),
        [x, ..] if x & 0xfe00 == 0xfc00 => Some("a unique-local (private) address"),
        [x, ..] if x & 0xffc0 == 0xfe80 => Some("a link-local address"),
        [x, ..] if x & 0xffc0 == 0xfec0 => Some("a site-local (private) address"),
        [x, ..] if x & 0xff00 == 0xff00 => Some("a multicast address"),
        _ => None,
    }
}

/// A name resolved to a non-public address (the strict client's resolver
/// refuses it; the sender finds it in the error's sources).
#[derive(Debug)]
struct NonPublicAddress {
    name: String,
    ip: IpAddr,
    kind: &'static str,
}

impl std::fmt::Display for NonPublicAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the webhook host {} resolves to {}, {}{SSRF_HINT}", self.name, self.ip, self.kind)
    }
}

impl std::error::Error for NonPublicAddress {}

/// Resolves names (DNS, or the static table first); with `public_only`,
/// refuses a name if any of its addresses is non-public — checked on the
/// addresses the connection then uses.
struct CheckedResolver {
    public_only: bool,
    static_hosts: Arc<HashMap<String, Vec<IpAddr>>>,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let name = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        let fixed = self.static_hosts.get(&name).cloned();
        let public_only = self.public_only;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = match fixed {
                Some(ips) => ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect(),
                None => tokio::net::lookup_host((name.as_str(), 0)).await?.collect(),
            };
            if public_only {
                if name == "localhost" || name.ends_with(".localhost") {
                    let refused =
                        NonPublicAddress { name, ip: IpAddr::V4(Ipv4Addr::LOCALHOST), kind: "a loopback name" };
                    return Err(refused.into());
                }
                if let Some((ip, kind)) = addrs.iter().find_map(|a| non_public(a.ip()).map(|k| (a.ip(), k))) {
                    return Err(NonPublicAddress { name, ip, kind }.into());
                }
            }
            if addrs.is_empty() {
                return Err(format!("{name} has no addresses").into());
            }
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_and_non_public_addresses() {
        let refused = [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.5",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:5",
            "2002:a00:5::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "3fff::1",
        ];
        for ip in refused {
            assert!(non_public(ip.parse().unwrap()).is_some(), "{ip} should be refused");
        }
        let allowed = [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.1.1",
            "192.169.0.1",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ];
        for ip in allowed {
            assert!(non_public(ip.parse().unwrap()).is_none(), "{ip} should be allowed");
        }
    }

    #[test]
    fn literal_hosts_in_urls() {
        let refused = |u: &str| literal_host_refusal(&Url::parse(u).unwrap());
        assert!(refused("http://127.0.0.1:8080/x").unwrap().contains("127.0.0.1 is a loopback address"));
        // Other spellings of 127.0.0.1 are parsed as IPv4 by the URL parser.
        assert!(refused("http://2130706433/").is_some());
        assert!(refused("http://0x7f.1/").is_some());
        assert!(refused("http://[::ffff:7f00:1]/").is_some());
        assert!(refused("http://LocalHost./").unwrap().contains("loopback name"));
        assert!(refused("http://api.localhost/").is_some());
        assert!(refused("https://hooks.example.com/").is_none());
        assert!(refused("https://8.8.8.8/").is_none());
    }

    #[test]
    fn bodies_are_what_serde_json_writes() {
        use qunfa_core::contact::Channel;
        let content = r#"{"type":"text","text":"{{name}}，您好 \"x\"","z":[1,2.5,null],"a":{"b":true}}"#;
        let mut items = vec![
            Outgoing::new(42, Channel::Webhook, 7, None, Some("张三，您好 \"quoted\"\n\u{1}".into())),
            Outgoing::new(42, Channel::Webhook, 8, None, None),
        ];
        items[0].name = "张\\三".into();
        let batch = ExternalBatch::synthetic(42, 3, Channel::Webhook, content.into(), None, items.clone());
        let parsed: serde_json::Value = serde_json::from_str(content).unwrap();
        let expected = |item: &Outgoing| {
            serde_json::json!({
                "id": item.idempotency_key,
                "broadcast_id": "42",
                "contact_id": ((3_i64 << 32) | i64::from(item.contact_idx)).to_string(),
                "external_id": item.external_id,
                "name": item.name,
                "priority": batch.priority.as_str(),
                "content": parsed,
                "text": item.text,
            })
        };
        let content = parsed.to_string();
        assert_eq!(body(&batch, &content, &[&items[0]]), expected(&items[0]).to_string());
        assert_eq!(body(&batch, &content, &[&items[1]]), expected(&items[1]).to_string());
        let both = serde_json::json!({ "messages": [expected(&items[0]), expected(&items[1])] });
        assert_eq!(body(&batch, &content, &[&items[0], &items[1]]), both.to_string());
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc(1_767_225_599_999), "2025-12-31T23:59:59.999Z");
    }

    #[test]
    fn errors_are_short() {
        assert_eq!(short("x".repeat(300)).chars().count(), MAX_ERROR_CHARS);
        assert_eq!(short("ok".into()), "ok");
    }
}
