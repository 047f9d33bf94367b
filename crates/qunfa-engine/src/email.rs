//! The email channel: each message of a batch becomes a MIME email
//! (multipart/alternative, plain text and HTML) sent over SMTP.
//!
//! Connections are pooled per distinct [`EmailSettings`]: the first batch for
//! a server opens up to `pool_size` connections, later batches reuse them (a
//! change of settings makes a new pool; pools left unused are closed). A batch
//! runs `pool_size` workers, each sending one message after another on its
//! own connection; commands are pipelined (RFC 2920) when the server offers it.
//!
//! Messages are built with `lettre`'s builder and sent with `lettre`'s SMTP
//! connection, but the pool and the transaction are ours rather than
//! `lettre::AsyncSmtpTransport`'s, because the outcome depends on where a
//! transaction failed and on what may be retried:
//! - a `550` to `RCPT` means the address does not exist, a `554` greeting
//!   means the server refuses everyone for now; the transport reports both as
//!   "permanent error" without saying which command failed;
//! - a message is sent again only if nothing of it was sent (a pooled
//!   connection the server closed while idle is replaced, and the message
//!   goes on the new one); once `DATA` began, a failure is a `Retry`;
//! - every wait is bounded by `timeout_ms` (the transport only bounds the TCP
//!   connect), and a connection that timed out is closed, never reused with
//!   an answer still pending;
//! - a refused recipient costs an `RSET`, not the connection.
//!
//! Every message carries `Message-ID: <{idempotency_key}@{from domain}>` and
//! `X-Qunfa-Idempotency-Key`, the same on every attempt, so a receiver can
//! drop a repeat after a retry.

use std::{
    collections::VecDeque,
    fmt,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use lettre::{
    message::{
        header::{HeaderName, HeaderValue},
        Mailbox, MultiPart,
    },
    transport::smtp::{
        authentication::{Credentials, Mechanism},
        client::{AsyncSmtpConnection, TlsParameters},
        commands::{Data, Ehlo, Mail, Noop, Rcpt, Rset},
        extension::{ClientId, Extension, MailBodyParameter, MailParameter},
    },
    Address, Message,
};
use qunfa_core::{
    channel::{EmailSettings, SmtpSecurity},
    Code,
};
use qunfa_store::queue::{ExternalBatch, Outgoing, SendOutcome};
use serde_json::Value;

/// Pools kept at most; the least recently used one goes first.
const MAX_POOLS: usize = 64;
/// A pool unused this long is closed.
const POOL_IDLE: Duration = Duration::from_secs(600);
/// A pooled connection idle this long is checked with `NOOP` before use.
const CHECK_AFTER: Duration = Duration::from_secs(5);
/// A pooled connection idle this long is closed rather than reused (servers
/// drop idle clients after a few minutes, RFC 5321 §4.5.3.2.7).
const CONNECTION_IDLE: Duration = Duration::from_secs(60);
/// Longest error text kept in an outcome.
const MAX_ERROR: usize = 200;
/// The longest subject before it is cut (RFC 5322's recommended line length).
const MAX_SUBJECT: usize = 78;

/// The email channel's sender (one per node; settings come per batch).
#[derive(Default)]
pub struct EmailSender {
    pools: Mutex<Vec<Arc<Pool>>>,
}

impl EmailSender {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends every message of the batch; one outcome per message, in the
    /// order of `batch.items`.
    pub async fn send(&self, batch: &ExternalBatch, settings: &EmailSettings) -> Vec<(u32, SendOutcome)> {
        if !settings.allow_private_networks {
            if let Some(why) = private_smtp_host(settings).await {
                return crate::webhook::refuse_all(batch, &SendOutcome::Rejected(Code::AddressPrivate, why));
            }
        }
        let pool = self.pool(settings);
        let content: Value = serde_json::from_str(&batch.content_json).unwrap_or_default();
        let n = batch.items.len();
        let work = Mutex::new(Work {
            queue: (0..n).collect(),
            running: 0,
            fatal: pool.broken.as_ref().map(|why| SendOutcome::Rejected(Code::ChannelSettings, why.clone())),
        });
        let n_workers = (settings.pool_size.max(1) as usize).min(n);
        lock(&work).running = n_workers;
        let job = Job { pool: &pool, items: &batch.items, content: &content, work: &work };
        let done = futures::future::join_all((0..n_workers).map(|_| job.worker())).await;
        let mut outcomes: Vec<Option<SendOutcome>> = vec![None; n];
        for (i, outcome) in done.into_iter().flatten() {
            outcomes[i] = Some(outcome);
        }
        batch
            .items
            .iter()
            .zip(outcomes)
            .map(|(item, o)| (item.contact_idx, o.unwrap_or_else(|| SendOutcome::Retry("not sent".into()))))
            .collect()
    }

    /// The pool for these settings (made on first use).
    fn pool(&self, settings: &EmailSettings) -> Arc<Pool> {
        let mut pools = lock(&self.pools);
        let now = Instant::now();
        pools.retain(|p| now.duration_since(*lock(&p.last_used)) < POOL_IDLE);
        if let Some(p) = pools.iter().find(|p| p.settings == *settings) {
            *lock(&p.last_used) = now;
            return p.clone();
        }
        if pools.len() >= MAX_POOLS {
            if let Some(oldest) = (0..pools.len()).min_by_key(|i| *lock(&pools[*i].last_used)) {
                pools.swap_remove(oldest);
            }
        }
        let p = Arc::new(Pool::new(settings.clone()));
        pools.push(p.clone());
        p
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn clip(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() <= MAX_ERROR {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(MAX_ERROR - 1).collect();
    out.push('…');
    out
}

/// Open connections to one SMTP server with one set of settings.
struct Pool {
    settings: EmailSettings,
    hello: ClientId,
    credentials: Option<Credentials>,
    tls: Option<TlsParameters>,
    from: Option<Mailbox>,
    reply_to: Option<Mailbox>,
    /// Why nothing can be sent with these settings (an unparsable `from`).
    broken: Option<String>,
    idle: Mutex<Vec<(AsyncSmtpConnection, bool, Instant)>>,
    last_used: Mutex<Instant>,
}

impl Pool {
    fn new(settings: EmailSettings) -> Self {
        let mut broken = None;
        let from = match settings.from.parse::<Mailbox>() {
            Ok(m) => Some(m),
            Err(e) => {
                broken = Some(clip(&format!("the sender address {:?} is not valid: {e}", settings.from)));
                None
            }
        };
        let reply_to = settings.reply_to.as_deref().and_then(|r| match r.parse::<Mailbox>() {
            Ok(m) => Some(m),
            Err(e) => {
                broken = Some(clip(&format!("the reply-to address {r:?} is not valid: {e}")));
                None
            }
        });
        let tls = match settings.security {
            SmtpSecurity::None => None,
            SmtpSecurity::StartTls | SmtpSecurity::Tls => match TlsParameters::new(settings.host.clone()) {
                Ok(t) => Some(t),
                Err(e) => {
                    broken = Some(clip(&format!("cannot set up TLS for {}: {e}", settings.host)));
                    None
                }
            },
        };
        let credentials = settings
            .username
            .as_ref()
            .map(|u| Credentials::new(u.clone(), settings.password.clone().unwrap_or_default()));
        Self {
            hello: ClientId::default(),
            credentials,
            tls,
            from,
            reply_to,
            broken,
            idle: Mutex::new(Vec::new()),
            last_used: Mutex::new(Instant::now()),
            settings,
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.settings.timeout_ms.max(1))
    }

    fn server(&self) -> String {
        format!("{}:{}", self.settings.host, self.settings.port)
    }

    /// A connection from the pool, or a new one. The flag says whether it
    /// came from the pool (and may have been closed by the server meanwhile).
    async fn checkout(&self) -> Result<Connection, SendOutcome> {
        loop {
            let parked = lock(&self.idle).pop();
            let Some((mut conn, pipelining, since)) = parked else { break };
            let idle = since.elapsed();
            if idle >= CONNECTION_IDLE {
                continue;
            }
            if idle >= CHECK_AFTER {
                let checked = tokio::time::timeout(self.timeout(), conn.command(Noop)).await;
                if !matches!(checked, Ok(Ok(_))) {
                    continue;
                }
            }
            return Ok(Connection { conn, pipelining, reused: true });
        }
        self.connect().await
    }

    fn checkin(&self, conn: Connection) {
        let mut idle = lock(&self.idle);
        if idle.len() < self.settings.pool_size.max(1) as usize {
            idle.push((conn.conn, conn.pipelining, Instant::now()));
        }
    }

    async fn connect(&self) -> Result<Connection, SendOutcome> {
        let (server, t) = (self.server(), self.timeout());
        let refused = |f: Failure| match f {
            Failure::Reply { code: 530 | 534 | 535, text } => SendOutcome::Rejected(Code::ChannelAuth, text),
            Failure::Reply { text, .. } => {
                SendOutcome::Retry(clip(&format!("{server} refused the connection: {text}")))
            }
            Failure::Lost(why) => SendOutcome::Retry(clip(&format!("cannot connect to {server}: {why}"))),
        };
        let host = (self.settings.host.as_str(), self.settings.port);
        let mut conn = match self.settings.security {
            SmtpSecurity::Tls => {
                let connecting =
                    AsyncSmtpConnection::connect_tokio1(host, Some(t), &self.hello, self.tls.clone(), None);
                bounded(t, connecting).await.map_err(refused)?
            }
            SmtpSecurity::None | SmtpSecurity::StartTls => {
                // Our own socket, to turn Nagle's algorithm off: a command
                // written while the previous reply's ACK is delayed would
                // otherwise wait up to 40 ms.
                let tcp = match tokio::time::timeout(t, tokio::net::TcpStream::connect(host)).await {
                    Ok(Ok(tcp)) => tcp,
                    Ok(Err(e)) => return Err(refused(Failure::Lost(e.to_string()))),
                    Err(_) => return Err(refused(Failure::Lost(format!("no answer within {} ms", t.as_millis())))),
                };
                let _ = tcp.set_nodelay(true);
                bounded(t, AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello))
                    .await
                    .map_err(refused)?
            }
        };
        if self.settings.security == SmtpSecurity::StartTls {
            if !conn.can_starttls() {
                let why = format!("{server} does not offer STARTTLS, and security is starttls (no downgrade)");
                return Err(SendOutcome::Rejected(Code::ChannelSettings, clip(&why)));
            }
            let Some(tls) = self.tls.clone() else {
                return Err(SendOutcome::Rejected(Code::ChannelSettings, "no TLS parameters".into()));
            };
            bounded(t, conn.starttls(tls, &self.hello)).await.map_err(refused)?;
        }
        // lettre keeps only the EHLO keywords it knows; ask again to learn
        // whether the server takes pipelined commands.
        let ehlo = bounded(t, conn.command(Ehlo::new(self.hello.clone()))).await.map_err(refused)?;
        let pipelining = ehlo.message().any(|line| line.split_whitespace().next() == Some("PIPELINING"));
        if let Some(credentials) = &self.credentials {
            let mechanisms = [Mechanism::Plain, Mechanism::Login];
            if conn.server_info().get_auth_mechanism(&mechanisms).is_none() {
                let why = format!("{server} offers neither AUTH PLAIN nor AUTH LOGIN");
                return Err(SendOutcome::Rejected(Code::ChannelAuth, why));
            }
            match bounded(t, conn.auth(&mechanisms, credentials)).await {
                Ok(_) => {}
                Err(Failure::Reply { code, text }) if code >= 500 => {
                    return Err(SendOutcome::Rejected(Code::ChannelAuth, clip(&format!("{server}: {text}"))))
                }
                Err(f) => return Err(refused(f)),
            }
        }
        Ok(Connection { conn, pipelining, reused: false })
    }
}

struct Connection {
    conn: AsyncSmtpConnection,
    pipelining: bool,
    /// Taken from the pool and not used yet in this batch.
    reused: bool,
}

/// How a step of a transaction failed.
enum Failure {
    /// The server answered with a negative reply.
    Reply { code: u16, text: String },
    /// No usable answer: network error, timeout, broken response. The
    /// connection is unusable.
    Lost(String),
}

impl From<lettre::transport::smtp::Error> for Failure {
    fn from(e: lettre::transport::smtp::Error) -> Self {
        let detail = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default();
        match e.status() {
            Some(code) => {
                let number = code.to_string().parse().unwrap_or(0);
                Failure::Reply { code: number, text: clip(&format!("SMTP {code} {detail}")) }
            }
            None if e.is_timeout() => Failure::Lost("timed out".into()),
            None if detail.is_empty() => Failure::Lost(e.to_string()),
            None => Failure::Lost(detail),
        }
    }
}

/// Runs one SMTP step, at most `t` long.
async fn bounded<T>(
    t: Duration,
    step: impl std::future::Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(t, step).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(Failure::Lost(format!("no answer within {} ms", t.as_millis()))),
    }
}

/// Stands for the answer to a command not sent because an earlier one failed.
const SKIPPED: &str = "not sent";

/// Commands written at once (RFC 2920 pipelining).
struct Pipelined(Mail, Rcpt, Data);

impl fmt::Display for Pipelined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.0, self.1, self.2)
    }
}

/// What is left to send of a batch, shared by its workers.
struct Work {
    queue: VecDeque<usize>,
    /// Workers still running.
    running: usize,
    /// Set when the last worker could not connect: the rest of the batch gets it.
    fatal: Option<SendOutcome>,
}

#[derive(Clone, Copy)]
struct Job<'a> {
    pool: &'a Pool,
    items: &'a [Outgoing],
    content: &'a Value,
    work: &'a Mutex<Work>,
}

/// A message ready for the wire.
struct Prepared {
    from: Address,
    to: Address,
    bytes: Vec<u8>,
    /// The bytes dot-stuffed and ended with `.` (none: not UTF-8).
    payload: Option<Payload>,
}

/// A message as it goes after `DATA`: dot-stuffed (RFC 5321 §4.5.2), ended
/// with the `.` line.
struct Payload(String);

impl Payload {
    fn new(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut out = String::with_capacity(text.len() + 16);
        for line in text.split_inclusive('\n') {
            if line.starts_with('.') {
                out.push('.');
            }
            out.push_str(line);
        }
        if !out.ends_with("\r\n") {
            out.push_str("\r\n");
        }
        out.push_str(".\r\n");
        Some(Self(out))
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Job<'_> {
    /// Sends messages of the batch one after another on one connection
    /// until none are left.
    async fn worker(self) -> Vec<(usize, SendOutcome)> {
        let mut done = Vec::new();
        let mut conn: Option<Connection> = None;
        loop {
            let next = {
                let mut work = lock(self.work);
                match work.queue.pop_front() {
                    Some(i) => Some((i, work.fatal.clone())),
                    None => {
                        work.running -= 1;
                        None
                    }
                }
            };
            let Some((i, fatal)) = next else { break };
            if let Some(outcome) = fatal {
                done.push((i, outcome));
                continue;
            }
            let prepared = match self.prepare(&self.items[i]) {
                Ok(p) => p,
                Err(outcome) => {
                    done.push((i, outcome));
                    continue;
                }
            };
            let mut c = match conn.take() {
                Some(c) => c,
                None => match self.pool.checkout().await {
                    Ok(c) => c,
                    Err(outcome) => {
                        // Leave the message to a worker that has a connection;
                        // the last worker standing gives the rest this outcome.
                        let mut work = lock(self.work);
                        if work.running > 1 {
                            work.running -= 1;
                            work.queue.push_back(i);
                            break;
                        }
                        work.fatal = Some(outcome.clone());
                        done.push((i, outcome));
                        continue;
                    }
                },
            };
            let (mut outcome, mut usable) = self.transaction(&mut c, &prepared).await;
            if c.reused && !usable && outcome.is_none() {
                // The server closed the pooled connection while it was idle,
                // before any of this message went out: send it on a new one.
                match self.pool.connect().await {
                    Ok(fresh) => {
                        c = fresh;
                        (outcome, usable) = self.transaction(&mut c, &prepared).await;
                    }
                    Err(o) => outcome = Some(o),
                }
            }
            c.reused = false;
            let outcome =
                outcome.unwrap_or_else(|| SendOutcome::Retry(format!("connection to {} lost", self.pool.server())));
            done.push((i, outcome));
            if usable {
                conn = Some(c);
            }
        }
        if let Some(c) = conn {
            self.pool.checkin(c);
        }
        done
    }

    /// One SMTP transaction. Returns the outcome (none: the connection was
    /// lost before anything of the message was sent, so it may go again on
    /// another) and whether the connection can be used further.
    async fn transaction(&self, c: &mut Connection, m: &Prepared) -> (Option<SendOutcome>, bool) {
        let t = self.pool.timeout();
        let mut params = Vec::new();
        if !m.bytes.is_ascii() {
            if !c.conn.server_info().supports_feature(Extension::EightBitMime) {
                return (
                    Some(rejected(Code::DeliveryRejected, "the server does not take 8-bit mail (8BITMIME)")),
                    true,
                );
            }
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        if !AsRef::<str>::as_ref(&m.from).is_ascii() || !AsRef::<str>::as_ref(&m.to).is_ascii() {
            if !c.conn.server_info().supports_feature(Extension::SmtpUtfEight) {
                let why = "the server does not take internationalised addresses (SMTPUTF8)";
                return (Some(rejected(Code::AddressInvalid, why)), true);
            }
            params.push(MailParameter::SmtpUtfEight);
        }
        let (mail, rcpt) = (Mail::new(Some(m.from.clone()), params), Rcpt::new(m.to.clone(), vec![]));
        let (mail, rcpt, data) = if c.pipelining {
            let first = bounded(t, c.conn.command(Pipelined(mail, rcpt, Data))).await;
            if let Err(Failure::Lost(_)) = first {
                return (None, false);
            }
            let second = bounded(t, c.conn.read_response()).await;
            let third = bounded(t, c.conn.read_response()).await;
            (first, second, third)
        } else {
            let first = bounded(t, c.conn.command(mail)).await;
            if let Err(Failure::Lost(_)) = first {
                return (None, false);
            }
            let second = match first {
                Ok(_) => bounded(t, c.conn.command(rcpt)).await,
                Err(_) => Err(Failure::Lost(SKIPPED.into())),
            };
            let third = match second {
                Ok(_) => bounded(t, c.conn.command(Data)).await,
                Err(_) => Err(Failure::Lost(SKIPPED.into())),
            };
            (first, second, third)
        };
        let server = self.pool.server();
        let lost = [&mail, &rcpt, &data].iter().any(|r| matches!(r, Err(Failure::Lost(w)) if w != SKIPPED));
        let refused = match (&mail, &rcpt, &data) {
            (Err(f), ..) => Some(outcome_of(f, Stage::Mail, &server)),
            (Ok(_), Err(f), _) => Some(outcome_of(f, Stage::Rcpt, &server)),
            (Ok(_), Ok(_), Err(f)) => Some(outcome_of(f, Stage::Data, &server)),
            _ => None,
        };
        if let Some((outcome, usable)) = refused {
            // A pipelined DATA that was taken although MAIL or RCPT failed
            // leaves the server waiting for a message: give up the connection.
            let usable = usable && !lost && data.is_err() && self.reset(c).await;
            return (Some(outcome), usable);
        }
        // The message and its final dot in one write (`message` writes them
        // apart, and a lone small write may wait for a delayed ACK).
        let sent = match &m.payload {
            Some(payload) => bounded(t, c.conn.command(payload)).await,
            None => bounded(t, c.conn.message(&m.bytes)).await,
        };
        match sent {
            Ok(_) => (Some(SendOutcome::Delivered), true),
            Err(f) => {
                let (outcome, usable) = outcome_of(&f, Stage::Message, &server);
                let usable = usable && self.reset(c).await;
                (Some(outcome), usable)
            }
        }
    }

    /// `RSET` after a refusal; whether the connection is still good.
    async fn reset(&self, c: &mut Connection) -> bool {
        bounded(self.pool.timeout(), c.conn.command(Rset)).await.is_ok()
    }

    fn prepare(&self, item: &Outgoing) -> Result<Prepared, SendOutcome> {
        let pool = self.pool;
        let Some(from) = pool.from.clone() else {
            let why = pool.broken.clone().unwrap_or_else(|| "no sender address".into());
            return Err(SendOutcome::Rejected(Code::ChannelSettings, why));
        };
        let Some(address) = item.address.as_deref() else {
            return Err(rejected(Code::ChannelNoAddress, "the contact has no email address"));
        };
        let to: Address = address.trim().parse().map_err(|e| {
            SendOutcome::Rejected(Code::AddressInvalid, clip(&format!("{address:?} is not an email address: {e}")))
        })?;
        let name: String = item.name.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        let name = name.trim();
        let mut rendered = render(self.content, item.text.as_deref(), item.unsubscribe_url.as_deref());
        if !item.tracked_urls.is_empty() {
            // The link card's URL and links in the HTML: this recipient's tracked URLs.
            for body in [&mut rendered.plain, &mut rendered.html] {
                if let std::borrow::Cow::Owned(b) = qunfa_core::sign::rewrite_links(body, &item.tracked_urls) {
                    *body = b;
                }
            }
        }
        if let Some(pixel) = &item.open_pixel_url {
            // The open pixel (docs/measurement.md): a person's mail client loading it counts as the open.
            let img = format!("<img src=\"{}\" width=\"1\" height=\"1\" alt=\"\">\n</body>", escape(pixel));
            rendered.html = rendered.html.replacen("</body>", &img, 1);
        }
        let key = &item.idempotency_key;
        let mut builder = Message::builder()
            .from(from.clone())
            .to(Mailbox::new((!name.is_empty()).then(|| name.to_owned()), to.clone()))
            .subject(rendered.subject)
            .message_id(Some(format!("<{key}@{}>", from.email.domain())))
            .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("X-Qunfa-Idempotency-Key"), key.clone()));
        if let Some(reply_to) = &pool.reply_to {
            builder = builder.reply_to(reply_to.clone());
        }
        if let Some(url) = &item.unsubscribe_url {
            builder = builder
                .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("List-Unsubscribe"), format!("<{url}>")))
                .raw_header(HeaderValue::new(
                    HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                    "List-Unsubscribe=One-Click".into(),
                ));
        }
        let message = builder
            .multipart(MultiPart::alternative_plain_html(rendered.plain, rendered.html))
            .map_err(|e| SendOutcome::Rejected(Code::InvalidContent, clip(&format!("cannot build the email: {e}"))))?;
        let bytes = message.formatted();
        Ok(Prepared { from: from.email, to, payload: Payload::new(&bytes), bytes })
    }
}

fn rejected(code: Code, why: &str) -> SendOutcome {
    SendOutcome::Rejected(code, why.to_owned())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Mail,
    Rcpt,
    Data,
    /// The message and its final `.`.
    Message,
}

/// The outcome of a failed step, and whether the connection is still good.
fn outcome_of(f: &Failure, stage: Stage, server: &str) -> (SendOutcome, bool) {
    match f {
        Failure::Lost(why) => {
            let what = match stage {
                Stage::Message => "the connection was lost while sending the message",
                _ => "the connection was lost",
            };
            (SendOutcome::Retry(clip(&format!("{server}: {what}: {why}"))), false)
        }
        Failure::Reply { code: 421, text } => (SendOutcome::Retry(text.clone()), false),
        Failure::Reply { code: 530 | 535, text } => (SendOutcome::Rejected(Code::ChannelAuth, text.clone()), true),
        Failure::Reply { code: 550 | 551 | 553, text } if stage == Stage::Rcpt => {
            (SendOutcome::Rejected(Code::AddressInvalid, text.clone()), true)
        }
        Failure::Reply { code: 400..=499, text } => (SendOutcome::Retry(text.clone()), true),
        Failure::Reply { text, .. } => (SendOutcome::Rejected(Code::DeliveryRejected, text.clone()), true),
    }
}

/// The parts of an email made from a message.
#[derive(Debug, PartialEq, Eq)]
struct Rendered {
    subject: String,
    plain: String,
    html: String,
}

const IMAGE: &str = "[图片 / Image]";
const FILE: &str = "[文件 / File]";
const MINIPROGRAM: &str = "[小程序 / Mini program]";

/// Renders the stored content with the recipient's text (`text`: the first
/// text of the content as rendered for the recipient, which wins over the
/// stored one).
fn render(content: &Value, text: Option<&str>, unsubscribe_url: Option<&str>) -> Rendered {
    let field = |k: &str| content.get(k).and_then(Value::as_str).filter(|s| !s.trim().is_empty());
    let title = field("title");
    let (plain, html) = match field("type").unwrap_or("text") {
        "link" => {
            let url = field("url").unwrap_or_default();
            let description = text.or(field("description"));
            let mut plain = String::new();
            let mut html = String::new();
            if let Some(title) = title {
                plain.push_str(&format!("{title}\n\n"));
                html.push_str(&format!("<p><strong><a href=\"{}\">{}</a></strong></p>\n", escape(url), escape(title)));
            }
            if let Some(d) = description {
                plain.push_str(&format!("{d}\n\n"));
                html.push_str(&paragraphs(d));
            }
            plain.push_str(url);
            html.push_str(&format!("<p><a href=\"{0}\">{0}</a></p>\n", escape(url)));
            (plain, html)
        }
        "richtext" => {
            let source = text.or(field("html")).unwrap_or_default();
            (html_to_text(source), source.to_owned())
        }
        "image" => with_line(IMAGE, text.or(field("caption"))),
        "file" => {
            let line = format!("{FILE} {}", field("filename").unwrap_or_default());
            with_line(line.trim_end(), None)
        }
        "miniprogram" => {
            let line = format!("{MINIPROGRAM} {}", title.unwrap_or_default());
            with_line(line.trim_end(), None)
        }
        _ => {
            let body = text.or(field("text")).unwrap_or_default();
            (body.to_owned(), paragraphs(body))
        }
    };
    let subject = subject(title, &plain);
    let (mut plain, mut html) = (plain, html);
    if let Some(url) = unsubscribe_url {
        plain.push_str(&format!("\n\n-- \n退订 / Unsubscribe: {url}\n"));
        html.push_str(&format!(
            "<hr>\n<p style=\"font-size:12px;color:#888888\"><a href=\"{}\">退订 / Unsubscribe</a></p>\n",
            escape(url)
        ));
    }
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title></head><body>\n{html}</body></html>\n",
        escape(&subject)
    );
    Rendered { subject, plain, html }
}

/// A description line (image, file, mini program) and an optional caption.
fn with_line(line: &str, caption: Option<&str>) -> (String, String) {
    let mut plain = line.to_owned();
    let mut html = format!("<p><em>{}</em></p>\n", escape(line));
    if let Some(c) = caption {
        plain.push_str(&format!("\n\n{c}"));
        html.push_str(&paragraphs(c));
    }
    (plain, html)
}

/// The title, else the first non-empty line of the text, cut to 78 characters.
fn subject(title: Option<&str>, plain: &str) -> String {
    let line = title.unwrap_or_else(|| plain.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default());
    let line: String = line.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let line = line.trim();
    if line.chars().count() <= MAX_SUBJECT {
        return line.to_owned();
    }
    let mut cut: String = line.chars().take(MAX_SUBJECT - 1).collect();
    cut.truncate(cut.trim_end().len());
    cut.push('…');
    cut
}

/// Text as HTML paragraphs: blank lines separate paragraphs, single line
/// breaks stay line breaks.
fn paragraphs(text: &str) -> String {
    let text = text.replace("\r\n", "\n");
    let mut html = String::new();
    let mut paragraph: Vec<&str> = Vec::new();
    for line in text.split('\n').chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if !paragraph.is_empty() {
                let lines: Vec<String> = paragraph.iter().map(|l| escape(l)).collect();
                html.push_str(&format!("<p>{}</p>\n", lines.join("<br>\n")));
                paragraph.clear();
            }
        } else {
            paragraph.push(line);
        }
    }
    html
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The readable text of (the operator's own) HTML, for the plain-text part:
/// tags dropped, block ends as line breaks, a few entities decoded.
fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    let mut skipping: Option<&str> = None;
    while let Some(start) = rest.find('<') {
        if skipping.is_none() {
            out.push_str(&decode_entities(&rest[..start]));
        }
        let Some(end) = rest[start..].find('>') else {
            rest = "";
            break;
        };
        let tag = rest[start + 1..start + end].trim().to_ascii_lowercase();
        rest = &rest[start + end + 1..];
        let name: String = tag.trim_start_matches('/').chars().take_while(char::is_ascii_alphanumeric).collect();
        let closing = tag.starts_with('/');
        match skipping {
            Some(s) if closing && name == s => skipping = None,
            Some(_) => {}
            None => match name.as_str() {
                "script" | "style" | "head" if !closing => {
                    skipping = Some(if name == "script" {
                        "script"
                    } else if name == "style" {
                        "style"
                    } else {
                        "head"
                    })
                }
                "br" => out.push('\n'),
                "p" | "div" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "ul" | "ol" | "table" | "blockquote" => {
                    out.push_str("\n\n")
                }
                "li" | "tr" if !closing => out.push_str("\n- "),
                _ => {}
            },
        }
    }
    if skipping.is_none() {
        out.push_str(&decode_entities(rest));
    }
    // At most one blank line in a row, no spaces at line ends.
    let mut text = String::with_capacity(out.len());
    let mut blank = 0;
    for line in out.lines() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            blank += 1;
            continue;
        }
        if !text.is_empty() {
            text.push_str(if blank > 0 { "\n\n" } else { "\n" });
        }
        blank = 0;
        text.push_str(line.trim_start());
    }
    text
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    s.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Why the SMTP server may not be used under SSRF protection: its host is, or
/// resolves to, a non-public address. (lettre resolves the name again when it
/// connects; a name that changes its answer in between is not caught here.)
async fn private_smtp_host(settings: &EmailSettings) -> Option<String> {
    let host = settings.host.trim_start_matches('[').trim_end_matches(']');
    let suffix = " (not used: allow_private_networks is off in the email settings)";
    if host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost") {
        return Some(format!("the SMTP host {host} is a loopback name{suffix}"));
    }
    let addrs: Vec<std::net::SocketAddr> = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![std::net::SocketAddr::new(ip, settings.port)],
        // A name that does not resolve is left to the connection (a retry).
        Err(_) => tokio::net::lookup_host((host, settings.port)).await.map(Iterator::collect).unwrap_or_default(),
    };
    addrs.iter().find_map(|a| {
        crate::webhook::non_public(a.ip()).map(|kind| format!("the SMTP host {host} is {} ({kind}){suffix}", a.ip()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(v: serde_json::Value) -> Value {
        v
    }

    #[test]
    fn payloads_are_dot_stuffed_and_terminated() {
        let p = |b: &[u8]| Payload::new(b).map(|p| p.0);
        assert_eq!(p(b"a\r\n.b\r\n..\r\nc.\r\n").as_deref(), Some("a\r\n..b\r\n...\r\nc.\r\n.\r\n"));
        assert_eq!(p(b".x").as_deref(), Some("..x\r\n.\r\n"));
        assert_eq!(p(b"\xff"), None);
    }

    #[test]
    fn text_becomes_paragraphs() {
        let r = render(
            &content(serde_json::json!({"type": "text", "text": "x"})),
            Some("你好 <b>&\n第二行\n\n第二段"),
            None,
        );
        assert_eq!(r.subject, "你好 <b>&");
        assert_eq!(r.plain, "你好 <b>&\n第二行\n\n第二段");
        assert!(r.html.contains("<p>你好 &lt;b&gt;&amp;<br>\n第二行</p>\n<p>第二段</p>"), "{}", r.html);
    }

    #[test]
    fn long_first_lines_are_cut() {
        let long = "长".repeat(100);
        let s = subject(None, &format!("\n  \n{long}\nmore"));
        assert_eq!(s.chars().count(), 78);
        assert!(s.ends_with('…'));
        assert_eq!(subject(Some("Title"), "text"), "Title");
        assert_eq!(subject(None, "short"), "short");
    }

    #[test]
    fn links_have_title_description_and_url() {
        let c =
            serde_json::json!({"type": "link", "title": "新品", "url": "https://e.com/a?b=1&c=2", "description": "d"});
        let r = render(&c, Some("为您推荐"), Some("https://q.example/u/1"));
        assert_eq!(r.subject, "新品");
        assert!(r.plain.starts_with("新品\n\n为您推荐\n\nhttps://e.com/a?b=1&c=2"));
        assert!(r.plain.contains("退订 / Unsubscribe: https://q.example/u/1"));
        assert!(r.html.contains("href=\"https://e.com/a?b=1&amp;c=2\""));
        assert!(r.html.contains("<a href=\"https://q.example/u/1\">退订 / Unsubscribe</a>"));
    }

    #[test]
    fn richtext_keeps_the_html_and_strips_it_for_text() {
        let html = "<style>p{}</style><h1>标题</h1><p>第一段 &amp; more<br>next</p><ul><li>a</li><li>b</li></ul>";
        let c = serde_json::json!({"type": "richtext", "html": html});
        let r = render(&c, None, None);
        assert!(r.html.contains(html));
        assert_eq!(r.plain, "标题\n\n第一段 & more\nnext\n\n- a\n- b");
        assert_eq!(r.subject, "标题");
    }

    #[test]
    fn media_get_a_description_line() {
        let r = render(&serde_json::json!({"type": "file", "filename": "报告.pdf"}), None, None);
        assert_eq!((r.subject.as_str(), r.plain.as_str()), ("[文件 / File] 报告.pdf", "[文件 / File] 报告.pdf"));
        let r = render(&serde_json::json!({"type": "image", "media_id": "ab"}), Some("看图"), None);
        assert_eq!(r.plain, "[图片 / Image]\n\n看图");
        let r = render(&serde_json::json!({"type": "miniprogram", "title": "小程序"}), None, None);
        assert_eq!(r.subject, "小程序");
    }
}
