//! A stand-in HTTP receiver on loopback (webhook endpoints, event hooks).
//!
//! It answers every method on every path, records each request as it arrives
//! (before answering, so a request it hangs on is recorded too), and can be
//! told how to answer, for one path or for all of them ([`Behaviour`]):
//! a status, hang until dropped, answer 200 late, redirect, fail the next N
//! requests with 500, or flap between 500 and 200.

use crate::lock;
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    Router,
};
use tokio::sync::watch;

/// How the receiver answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer this status (`200 ok` by default), with an empty-ish body.
    Status(u16),
    /// Answer this status with these extra headers (e.g. `429` with `Retry-After`).
    StatusWithHeaders(u16, Vec<(String, String)>),
    /// Never answer (until the receiver is dropped).
    Hang,
    /// Answer `200` after this long.
    DelayThenOk(Duration),
    /// Answer `302 Found` with this `Location`.
    Redirect(String),
    /// Answer the next N requests with `500`, then `200`.
    FailFirst(u32),
    /// Alternate `500`, `200`, `500`, … starting with `500`.
    Flap,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self::Status(200)
    }
}

/// A request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names are lowercase; values that are not UTF-8 are left out.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub received_at: Instant,
}

impl Recorded {
    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

/// A behaviour and the requests it has answered (for `FailFirst` and `Flap`).
#[derive(Debug, Default)]
struct Program {
    behaviour: Behaviour,
    answered: u64,
}

struct Shared {
    requests: Mutex<Vec<Recorded>>,
    count: watch::Sender<usize>,
    global: Mutex<Program>,
    per_path: Mutex<HashMap<String, Program>>,
    shutdown: watch::Receiver<bool>,
}

/// The receiver; stops when dropped (hanging requests are then answered `503`).
pub struct HttpReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    _server: crate::Serving,
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

impl HttpReceiver {
    /// Binds `127.0.0.1:0` and serves; answers `200` everywhere until told otherwise.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start() -> Self {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            requests: Mutex::default(),
            count: watch::Sender::new(0),
            global: Mutex::default(),
            per_path: Mutex::default(),
            shutdown: shutdown_rx,
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let (addr, server) = crate::serve_loopback(app).await;
        Self { addr, shared, shutdown, _server: server }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:{port}{path}` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// How every path without its own behaviour answers from now on.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *lock(&self.shared.global) = Program { behaviour, answered: 0 };
    }

    /// How `path` (without the query) answers from now on.
    pub fn set_path_behaviour(&self, path: &str, behaviour: Behaviour) {
        lock(&self.shared.per_path).insert(path.to_owned(), Program { behaviour, answered: 0 });
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }

    /// The requests so far to `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        lock(&self.shared.requests).iter().filter(|r| r.path == path).cloned().collect()
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        *self.shared.count.borrow()
    }

    /// Forgets the recorded requests (the behaviours stay).
    pub fn clear(&self) {
        let mut requests = lock(&self.shared.requests);
        requests.clear();
        self.shared.count.send_replace(0);
    }

    /// Waits until at least `n` requests arrived or `timeout` passed; returns
    /// the requests so far either way (the caller asserts).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let mut rx = self.shared.count.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await;
        self.requests()
    }
}

/// What to do with the request now, decided under the lock.
enum Answer {
    Status(u16, Vec<(String, String)>),
    Hang,
    Delay(Duration),
    Redirect(String),
}

fn decide(program: &mut Program) -> Answer {
    let n = program.answered;
    program.answered += 1;
    match &program.behaviour {
        Behaviour::Status(s) => Answer::Status(*s, Vec::new()),
        Behaviour::StatusWithHeaders(s, h) => Answer::Status(*s, h.clone()),
        Behaviour::Hang => Answer::Hang,
        Behaviour::DelayThenOk(d) => Answer::Delay(*d),
        Behaviour::Redirect(to) => Answer::Redirect(to.clone()),
        Behaviour::FailFirst(k) if n < u64::from(*k) => Answer::Status(500, Vec::new()),
        Behaviour::FailFirst(_) => Answer::Status(200, Vec::new()),
        Behaviour::Flap if n.is_multiple_of(2) => Answer::Status(500, Vec::new()),
        Behaviour::Flap => Answer::Status(200, Vec::new()),
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let recorded = Recorded {
        method: method.to_string(),
        path: path.clone(),
        query: uri.query().map(str::to_owned),
        headers: headers
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
        body: body.to_vec(),
        received_at: Instant::now(),
    };
    {
        let mut requests = lock(&shared.requests);
        requests.push(recorded);
        let n = requests.len();
        shared.count.send_replace(n);
    }
    let answer = {
        let mut per_path = lock(&shared.per_path);
        match per_path.get_mut(&path) {
            Some(program) => decide(program),
            None => {
                drop(per_path);
                decide(&mut lock(&shared.global))
            }
        }
    };
    match answer {
        Answer::Status(status, extra) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let text = if status.is_success() { "ok" } else { status.canonical_reason().unwrap_or("error") };
            let mut response = (status, text).into_response();
            for (name, value) in extra {
                if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                    response.headers_mut().append(n, v);
                }
            }
            response
        }
        Answer::Hang => {
            let mut shutdown = shared.shutdown.clone();
            let _ = shutdown.wait_for(|stop| *stop).await;
            (StatusCode::SERVICE_UNAVAILABLE, "stopped").into_response()
        }
        Answer::Delay(delay) => {
            tokio::time::sleep(delay).await;
            (StatusCode::OK, "ok").into_response()
        }
        Answer::Redirect(to) => (StatusCode::FOUND, [(axum::http::header::LOCATION, to)], "moved").into_response(),
    }
}
