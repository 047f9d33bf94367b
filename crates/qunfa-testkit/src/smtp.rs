//! A stand-in SMTP server on loopback, speaking enough of RFC 5321 for
//! `lettre` and for a hand-written client:
//!
//! - greeting `220`, `EHLO`/`HELO` (advertising `PIPELINING`, `8BITMIME`,
//!   `SMTPUTF8` and `AUTH PLAIN LOGIN`), `AUTH PLAIN` (with or without an
//!   initial response) and `AUTH LOGIN`, `MAIL FROM`, `RCPT TO`, `DATA` (with
//!   dot-unstuffing), `RSET`, `NOOP`, `QUIT`;
//! - many connections at once, any number of messages per connection,
//!   pipelined commands answered in order;
//! - every accepted message is recorded ([`Received`]: envelope, raw bytes,
//!   the credentials of its session); [`Received::parse`] reads it as MIME.
//!
//! It can be told to misbehave at any time: refuse recipients (`550` or
//! `450`, [`SmtpSink::reject_rcpt`]), refuse connections at the greeting
//! (`554` or `421`, [`SmtpSink::refuse_connections`]), drop the connection in
//! the middle of `DATA` ([`SmtpSink::drop_during_data`]), answer the end of
//! `DATA` late ([`SmtpSink::delay_data_reply`]), and require credentials
//! ([`SmtpSink::require_auth`]). No TLS: tests use security `none`.

use crate::lock;
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use base64::Engine as _;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::watch,
};

pub use mail_parser;

/// The longest command line accepted (RFC 5321 allows 512 octets; a bit of slack).
const MAX_LINE: usize = 4096;
/// The largest message accepted.
const MAX_MESSAGE: usize = 32 * 1024 * 1024;

/// A message the sink accepted (answered `250` after `DATA`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The `MAIL FROM` address, without angle brackets (empty for `<>`).
    pub mail_from: String,
    /// The accepted `RCPT TO` addresses, without angle brackets.
    pub rcpt_to: Vec<String>,
    /// The message as received, dot-unstuffed, without the final `.` line.
    pub data: Vec<u8>,
    /// The credentials the session authenticated with (none: no `AUTH`).
    pub auth: Option<Credentials>,
    /// Which connection carried it (1 for the first accepted connection).
    pub connection: u64,
}

impl Received {
    /// The message parsed as MIME (headers decoded, bodies decoded to text).
    ///
    /// # Panics
    /// When the data is not a message at all (no header could be read).
    pub fn parse(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default().parse(&self.data).expect("the received data is not a MIME message")
    }

    /// The raw value of the first header called `name` (case-insensitive),
    /// unfolded, as it was on the wire (RFC 2047 words not decoded).
    pub fn raw_header(&self, name: &str) -> Option<String> {
        let text = String::from_utf8_lossy(&self.data);
        let head = text.split("\r\n\r\n").next().unwrap_or_default();
        let mut found: Option<String> = None;
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(value) = found.as_mut() {
                    value.push(' ');
                    value.push_str(line.trim());
                }
                continue;
            }
            if found.is_some() {
                break;
            }
            if let Some((key, value)) = line.split_once(':') {
                if key.trim().eq_ignore_ascii_case(name) {
                    found = Some(value.trim().to_owned());
                }
            }
        }
        found
    }
}

/// Username and password of an `AUTH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// How [`SmtpSink::reject_rcpt`] refuses an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptRejection {
    /// `550 5.1.1 user unknown`.
    UserUnknown,
    /// `450 4.2.1 mailbox busy, try again later`.
    Busy,
}

/// How [`SmtpSink::refuse_connections`] refuses new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Greets with `554 5.3.2 no service here` and closes.
    NoService,
    /// Greets with `421 4.3.2 service not available` and closes.
    Unavailable,
}

#[derive(Default)]
struct Behaviour {
    rejected_rcpt: HashMap<String, RcptRejection>,
    refusal: Option<Refusal>,
    /// Messages whose `DATA` is cut off: the connection closes after part of
    /// the data, without an answer.
    drops_left: usize,
    data_reply_delay: Option<Duration>,
    required: Option<Credentials>,
}

struct Shared {
    behaviour: Mutex<Behaviour>,
    received: Mutex<Vec<Received>>,
    auth_attempts: Mutex<Vec<Credentials>>,
    /// The number of messages accepted so far (wakes [`SmtpSink::wait_for`]).
    count: watch::Sender<usize>,
    connections: AtomicU64,
    open_connections: AtomicUsize,
    dropped_data: AtomicUsize,
}

/// A running SMTP sink. Stops when dropped.
pub struct SmtpSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _task: crate::Serving,
}

impl SmtpSink {
    /// Starts a sink on `127.0.0.1:0` that accepts everything.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(Behaviour::default()),
            received: Mutex::new(Vec::new()),
            auth_attempts: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
            connections: AtomicU64::new(0),
            open_connections: AtomicUsize::new(0),
            dropped_data: AtomicUsize::new(0),
        });
        let task = crate::Serving(tokio::spawn(accept_loop(listener, shared.clone())));
        Self { addr, shared, _task: task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every message accepted so far, in the order they were accepted.
    pub fn messages(&self) -> Vec<Received> {
        lock(&self.shared.received).clone()
    }

    /// The number of messages accepted so far.
    pub fn count(&self) -> usize {
        *self.shared.count.borrow()
    }

    /// Forgets the messages and `AUTH` attempts recorded so far (the
    /// behaviour stays as set).
    pub fn clear(&self) {
        lock(&self.shared.received).clear();
        lock(&self.shared.auth_attempts).clear();
        self.shared.count.send_replace(0);
    }

    /// Waits until at least `n` messages were accepted and returns them all.
    ///
    /// # Panics
    /// When fewer than `n` arrive within `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let mut rx = self.shared.count.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|count| *count >= n)).await;
        match waited {
            Ok(Ok(_)) => self.messages(),
            _ => panic!("the SMTP sink received {} of {n} messages within {timeout:?}", self.count()),
        }
    }

    /// Every `AUTH` the sink was sent (also the refused ones), decoded.
    pub fn auth_attempts(&self) -> Vec<Credentials> {
        lock(&self.shared.auth_attempts).clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.open_connections.load(Ordering::Relaxed)
    }

    /// Messages whose `DATA` was cut off so far ([`Self::drop_during_data`]).
    pub fn dropped_data(&self) -> usize {
        self.shared.dropped_data.load(Ordering::Relaxed)
    }

    /// Refuses `RCPT TO` for `address` (case-insensitive) from now on.
    pub fn reject_rcpt(&self, address: &str, how: RcptRejection) {
        lock(&self.shared.behaviour).rejected_rcpt.insert(address.to_ascii_lowercase(), how);
    }

    /// Accepts every recipient again.
    pub fn accept_all_rcpt(&self) {
        lock(&self.shared.behaviour).rejected_rcpt.clear();
    }

    /// Refuses new connections at the greeting (none: greets with `220`
    /// again). Open connections are not affected.
    pub fn refuse_connections(&self, refusal: Option<Refusal>) {
        lock(&self.shared.behaviour).refusal = refusal;
    }

    /// Cuts off the next `n` messages in the middle of `DATA`: the sink reads
    /// the first line of the data, then closes the connection without answering.
    pub fn drop_during_data(&self, n: usize) {
        lock(&self.shared.behaviour).drops_left = n;
    }

    /// Answers the end of `DATA` only after `delay` (none: at once). The
    /// message is recorded when the answer is sent, even if the client gave up.
    pub fn delay_data_reply(&self, delay: Option<Duration>) {
        lock(&self.shared.behaviour).data_reply_delay = delay;
    }

    /// Requires `AUTH` with these credentials before `MAIL` (none: no
    /// `AUTH` needed, and any credentials are accepted).
    pub fn require_auth(&self, username: &str, password: &str) {
        lock(&self.shared.behaviour).required =
            Some(Credentials { username: username.to_owned(), password: password.to_owned() });
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let n = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let shared = shared.clone();
        tokio::spawn(async move {
            shared.open_connections.fetch_add(1, Ordering::Relaxed);
            let _ = Session::new(stream, shared.clone(), n).run().await;
            shared.open_connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Why a session ended early.
enum End {
    /// The client went away, or the sink closed on purpose.
    Closed,
}

impl From<std::io::Error> for End {
    fn from(_: std::io::Error) -> Self {
        End::Closed
    }
}

struct Session {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    /// Replies not yet written: they go out when the client has nothing more
    /// buffered (pipelined commands get one write for all their replies).
    out: Vec<u8>,
    shared: Arc<Shared>,
    connection: u64,
    auth: Option<Credentials>,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
}

impl Session {
    fn new(stream: TcpStream, shared: Arc<Shared>, connection: u64) -> Self {
        let (read, writer) = stream.into_split();
        Self {
            reader: BufReader::with_capacity(64 * 1024, read),
            writer,
            out: Vec::with_capacity(1024),
            shared,
            connection,
            auth: None,
            mail_from: None,
            rcpt_to: Vec::new(),
        }
    }

    fn reply(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    async fn flush(&mut self) -> Result<(), End> {
        if !self.out.is_empty() {
            self.writer.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads one line (with its line ending); flushes pending replies first
    /// when the client has sent nothing more yet.
    async fn read_line(&mut self, line: &mut Vec<u8>) -> Result<(), End> {
        if self.reader.buffer().is_empty() {
            self.flush().await?;
        }
        line.clear();
        let n = tokio::io::AsyncReadExt::take(&mut self.reader, MAX_LINE as u64).read_until(b'\n', line).await?;
        if n == 0 {
            return Err(End::Closed);
        }
        Ok(())
    }

    async fn run(mut self) -> Result<(), End> {
        let refusal = lock(&self.shared.behaviour).refusal;
        match refusal {
            Some(Refusal::NoService) => {
                self.reply("554 5.3.2 qunfa-sink: no SMTP service here");
                return self.close().await;
            }
            Some(Refusal::Unavailable) => {
                self.reply("421 4.3.2 qunfa-sink: service not available, closing channel");
                return self.close().await;
            }
            None => self.reply("220 qunfa-sink ESMTP ready"),
        }
        let mut line = Vec::with_capacity(256);
        loop {
            self.read_line(&mut line).await?;
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            let (verb, rest) = match text.split_once(' ') {
                Some((v, r)) => (v.to_ascii_uppercase(), r.trim()),
                None => (text.to_ascii_uppercase(), ""),
            };
            let rest = rest.to_owned();
            match verb.as_str() {
                "EHLO" => {
                    self.reset();
                    self.reply("250-qunfa-sink greets you");
                    self.reply("250-PIPELINING");
                    self.reply("250-8BITMIME");
                    self.reply("250-SMTPUTF8");
                    self.reply(&format!("250-SIZE {MAX_MESSAGE}"));
                    self.reply("250 AUTH PLAIN LOGIN");
                }
                "HELO" => {
                    self.reset();
                    self.reply("250 qunfa-sink");
                }
                "AUTH" => self.auth(&rest).await?,
                "MAIL" => self.mail(&rest),
                "RCPT" => self.rcpt(&rest),
                "DATA" => self.data().await?,
                "RSET" => {
                    self.reset();
                    self.reply("250 2.0.0 OK");
                }
                "NOOP" => self.reply("250 2.0.0 OK"),
                "QUIT" => {
                    self.reply("221 2.0.0 bye");
                    return self.close().await;
                }
                "" => self.reply("500 5.5.2 empty command"),
                _ => self.reply("502 5.5.1 command not implemented"),
            }
        }
    }

    async fn close(mut self) -> Result<(), End> {
        self.flush().await?;
        self.writer.shutdown().await?;
        Ok(())
    }

    fn reset(&mut self) {
        self.mail_from = None;
        self.rcpt_to.clear();
    }

    async fn auth(&mut self, args: &str) -> Result<(), End> {
        if self.auth.is_some() {
            self.reply("503 5.5.1 already authenticated");
            return Ok(());
        }
        let mut words = args.split_whitespace();
        let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
        let initial = words.next().map(str::to_owned);
        let credentials = match mechanism.as_str() {
            "PLAIN" => {
                let response = match initial {
                    Some(r) if r != "=" => r,
                    _ => {
                        self.reply("334 ");
                        self.challenge_answer().await?
                    }
                };
                let decoded = decode_base64(&response).unwrap_or_default();
                // authzid \0 authcid \0 passwd
                let mut parts = decoded.split(|b| *b == 0).map(|p| String::from_utf8_lossy(p).into_owned());
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(_), Some(user), Some(pass)) => Some(Credentials { username: user, password: pass }),
                    _ => None,
                }
            }
            "LOGIN" => {
                let user = match initial {
                    Some(r) => r,
                    None => {
                        self.reply("334 VXNlcm5hbWU6"); // "Username:"
                        self.challenge_answer().await?
                    }
                };
                self.reply("334 UGFzc3dvcmQ6"); // "Password:"
                let pass = self.challenge_answer().await?;
                match (decode_base64(&user), decode_base64(&pass)) {
                    (Some(u), Some(p)) => Some(Credentials {
                        username: String::from_utf8_lossy(&u).into_owned(),
                        password: String::from_utf8_lossy(&p).into_owned(),
                    }),
                    _ => None,
                }
            }
            _ => {
                self.reply("504 5.5.4 unrecognized authentication type");
                return Ok(());
            }
        };
        let Some(credentials) = credentials else {
            self.reply("501 5.5.2 cannot decode the AUTH response");
            return Ok(());
        };
        lock(&self.shared.auth_attempts).push(credentials.clone());
        let required = lock(&self.shared.behaviour).required.clone();
        if required.is_some_and(|r| r != credentials) {
            self.reply("535 5.7.8 authentication credentials invalid");
        } else {
            self.auth = Some(credentials);
            self.reply("235 2.7.0 authentication successful");
        }
        Ok(())
    }

    async fn challenge_answer(&mut self) -> Result<String, End> {
        let mut line = Vec::new();
        self.read_line(&mut line).await?;
        Ok(String::from_utf8_lossy(&line).trim().to_owned())
    }

    fn mail(&mut self, args: &str) {
        let needs_auth = lock(&self.shared.behaviour).required.is_some();
        if needs_auth && self.auth.is_none() {
            self.reply("530 5.7.0 authentication required");
            return;
        }
        if self.mail_from.is_some() {
            self.reply("503 5.5.1 nested MAIL command");
            return;
        }
        match path_argument(args, "FROM:") {
            Some(from) => {
                self.mail_from = Some(from);
                self.reply("250 2.1.0 OK");
            }
            None => self.reply("501 5.5.4 syntax: MAIL FROM:<address>"),
        }
    }

    fn rcpt(&mut self, args: &str) {
        if self.mail_from.is_none() {
            self.reply("503 5.5.1 need MAIL before RCPT");
            return;
        }
        let Some(to) = path_argument(args, "TO:") else {
            self.reply("501 5.5.4 syntax: RCPT TO:<address>");
            return;
        };
        let rejection = lock(&self.shared.behaviour).rejected_rcpt.get(&to.to_ascii_lowercase()).copied();
        match rejection {
            Some(RcptRejection::UserUnknown) => self.reply(&format!("550 5.1.1 <{to}>: user unknown")),
            Some(RcptRejection::Busy) => self.reply(&format!("450 4.2.1 <{to}>: mailbox busy, try again later")),
            None => {
                self.rcpt_to.push(to);
                self.reply("250 2.1.5 OK");
            }
        }
    }

    async fn data(&mut self) -> Result<(), End> {
        if self.mail_from.is_none() || self.rcpt_to.is_empty() {
            self.reply("503 5.5.1 need MAIL and RCPT before DATA");
            return Ok(());
        }
        self.reply("354 end data with <CR><LF>.<CR><LF>");
        let cut_off = {
            let mut b = lock(&self.shared.behaviour);
            let cut = b.drops_left > 0;
            b.drops_left = b.drops_left.saturating_sub(1);
            cut
        };
        let mut data = Vec::with_capacity(4096);
        let mut line = Vec::with_capacity(1024);
        let mut too_large = false;
        loop {
            self.read_line(&mut line).await?;
            if cut_off {
                // Part of the data has arrived; go away without a word.
                self.shared.dropped_data.fetch_add(1, Ordering::Relaxed);
                return Err(End::Closed);
            }
            if line == b".\r\n" || line == b".\n" {
                break;
            }
            let unstuffed = if line.starts_with(b"..") { &line[1..] } else { &line[..] };
            if data.len() + unstuffed.len() > MAX_MESSAGE {
                too_large = true;
            } else {
                data.extend_from_slice(unstuffed);
            }
        }
        let mail_from = self.mail_from.take().unwrap_or_default();
        let rcpt_to = std::mem::take(&mut self.rcpt_to);
        if too_large {
            self.reply("552 5.3.4 message too big");
            return Ok(());
        }
        let delay = lock(&self.shared.behaviour).data_reply_delay;
        if let Some(delay) = delay {
            self.flush().await?;
            tokio::time::sleep(delay).await;
        }
        let message = Received { mail_from, rcpt_to, data, auth: self.auth.clone(), connection: self.connection };
        {
            let mut received = lock(&self.shared.received);
            received.push(message);
            self.shared.count.send_replace(received.len());
        }
        self.reply("250 2.0.0 OK: queued");
        Ok(())
    }
}

/// `FROM:<a@b.c> SIZE=123` → `a@b.c`.
fn path_argument(args: &str, keyword: &str) -> Option<String> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = args[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    Some(rest[..end].to_owned())
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_arguments() {
        assert_eq!(path_argument("FROM:<a@b.c> BODY=8BITMIME", "FROM:").as_deref(), Some("a@b.c"));
        assert_eq!(path_argument("from: <a@b.c>", "FROM:").as_deref(), Some("a@b.c"));
        assert_eq!(path_argument("FROM:<>", "FROM:").as_deref(), Some(""));
        assert_eq!(path_argument("TO:a@b.c", "TO:"), None);
        assert_eq!(path_argument("TO", "TO:"), None);
    }

    /// A hand-written client: AUTH LOGIN, pipelined commands, dot-stuffed data,
    /// RSET, a refused recipient, AUTH PLAIN with a challenge on a second connection.
    #[tokio::test]
    async fn speaks_smtp_to_a_plain_client() {
        let sink = SmtpSink::start().await;
        sink.require_auth("user", "pass");
        sink.reject_rcpt("nobody@example.com", RcptRejection::UserUnknown);
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let stream = TcpStream::connect(sink.addr()).await.expect("connect");
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let mut replies = Vec::new();
        let mut send = async |lines: &[String], n: usize, replies: &mut Vec<String>| {
            write.write_all(lines.concat().as_bytes()).await.expect("write");
            for _ in 0..n {
                let mut line = String::new();
                read.read_line(&mut line).await.expect("read");
                replies.push(line.trim_end().to_owned());
            }
        };
        send(&[], 1, &mut replies).await;
        send(&["EHLO me\r\n".into()], 6, &mut replies).await;
        send(&["MAIL FROM:<a@example.com>\r\n".into()], 1, &mut replies).await;
        send(&["AUTH LOGIN\r\n".into()], 1, &mut replies).await;
        send(&[format!("{}\r\n", b64("user"))], 1, &mut replies).await;
        send(&[format!("{}\r\n", b64("pass"))], 1, &mut replies).await;
        let pipelined = [
            "MAIL FROM:<a@example.com>\r\n",
            "RCPT TO:<nobody@example.com>\r\n",
            "RCPT TO:<b@example.com>\r\n",
            "DATA\r\n",
        ];
        send(&pipelined.map(String::from), 4, &mut replies).await;
        send(
            &[
                "Subject: s\r\n\r\n..dot\r\nline\r\n.\r\n".into(),
                "RSET\r\n".into(),
                "NOOP\r\n".into(),
                "QUIT\r\n".into(),
            ],
            4,
            &mut replies,
        )
        .await;
        let codes: Vec<&str> = replies.iter().map(|r| &r[..3]).collect();
        assert_eq!(
            codes,
            [
                "220", "250", "250", "250", "250", "250", "250", "530", "334", "334", "235", "250", "550", "250",
                "354", "250", "250", "250", "221"
            ],
            "{replies:#?}"
        );
        let received = sink.wait_for(1, Duration::from_secs(5)).await;
        assert_eq!(received[0].mail_from, "a@example.com");
        assert_eq!(received[0].rcpt_to, ["b@example.com"]);
        assert_eq!(received[0].data, b"Subject: s\r\n\r\n.dot\r\nline\r\n");
        assert_eq!(received[0].auth, Some(Credentials { username: "user".into(), password: "pass".into() }));

        let stream = TcpStream::connect(sink.addr()).await.expect("connect");
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let mut line = String::new();
        read.read_line(&mut line).await.expect("greeting");
        write.write_all(b"HELO me\r\nAUTH PLAIN\r\n").await.expect("write");
        for expected in ["250", "334"] {
            line.clear();
            read.read_line(&mut line).await.expect("read");
            assert!(line.starts_with(expected), "{line}");
        }
        write.write_all(format!("{}\r\n", b64("\0user\0wrong")).as_bytes()).await.expect("write");
        line.clear();
        read.read_line(&mut line).await.expect("read");
        assert!(line.starts_with("535"), "{line}");
        assert_eq!(sink.auth_attempts().len(), 2);
    }

    #[test]
    fn raw_headers_are_unfolded() {
        let r = Received {
            mail_from: String::new(),
            rcpt_to: vec![],
            data: b"Subject: a\r\n b\r\nTo: x@y.z\r\n\r\nSubject: body\r\n".to_vec(),
            auth: None,
            connection: 1,
        };
        assert_eq!(r.raw_header("subject").as_deref(), Some("a b"));
        assert_eq!(r.raw_header("To").as_deref(), Some("x@y.z"));
        assert_eq!(r.raw_header("From"), None);
    }
}
