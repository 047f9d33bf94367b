//! `spawn_app()`: qunfa on port 0 with a fresh database, and a client.

use qunfa_store::{test_support, Store};
use reqwest::Method;
use serde_json::{json, Value};

pub const ADMIN_TOKEN: &str = "qfa_test_admin_token";

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub store: Store,
    /// How far the server's clock runs ahead of the wall clock (ms).
    pub clock_offset: std::sync::Arc<std::sync::atomic::AtomicI64>,
    _db: test_support::TestDb,
}

/// What a test server differs in.
#[derive(Default)]
pub struct Setup<'a> {
    pub webhook_secret: Option<&'a str>,
    pub safety: Option<qunfa_server::safety::SafetyConfig>,
    /// Policy overrides (TOML) on top of the test policy.
    pub policy: &'a str,
}

/// The policy of test servers: the built-in one without the rules that
/// would get in the way of tests about something else (new-account
/// lockout, send-attempt cooldown); tests of those rules turn them on.
pub const TEST_POLICY: &str = "
[tiers.personal]
new_account_days = 0
[security]
attempts_max = 0
growth_tiers = []
";

#[derive(Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, None).await
}

/// A server with the webhook channel, signing with `secret`; retries come
/// fast (50 ms, doubling to 200 ms, 4 attempts) and answers time out after 300 ms.
pub async fn spawn_app_with(backend: Backend, webhook_secret: Option<&str>) -> TestApp {
    spawn(backend, Setup { webhook_secret, ..Setup::default() }).await
}

/// A server whose content check comes from `safety` (files the test controls).
pub async fn spawn_app_safety(backend: Backend, safety: qunfa_server::safety::SafetyConfig) -> TestApp {
    spawn(backend, Setup { safety: Some(safety), ..Setup::default() }).await
}

/// A server with policy overrides (TOML over [`TEST_POLICY`]).
pub async fn spawn_app_policy(backend: Backend, policy: &str) -> TestApp {
    spawn(backend, Setup { policy, ..Setup::default() }).await
}

pub async fn spawn(backend: Backend, setup: Setup<'_>) -> TestApp {
    let Setup { webhook_secret, safety, policy } = setup;
    let mut policy_toml: toml::Table = toml::from_str(TEST_POLICY).unwrap();
    for (k, v) in toml::from_str::<toml::Table>(policy).expect("policy overrides parse") {
        match (policy_toml.get_mut(&k), v) {
            (Some(toml::Value::Table(base)), toml::Value::Table(over)) => {
                for (k2, v2) in over {
                    base.insert(k2, v2);
                }
            }
            (_, v) => {
                policy_toml.insert(k, v);
            }
        }
    }
    let policy = qunfa_core::Policy::from_toml_str(&toml::to_string(&policy_toml).unwrap()).expect("test policy");
    let clock_offset = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let offset = clock_offset.clone();
    let clock = qunfa_server::Clock(std::sync::Arc::new(move || {
        qunfa_store::now_millis() + offset.load(std::sync::atomic::Ordering::SeqCst)
    }));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let db = tokio::task::spawn_blocking(move || match backend {
        Backend::Sqlite => test_support::sqlite(),
        Backend::Postgres => test_support::postgres(),
    })
    .await
    .unwrap();
    let location = db.location.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(location, 4).expect("open store")).await.unwrap();
    // The engine reads the server's clock: what the server queues for later
    // is due when `advance` says so.
    let engine_offset = clock_offset.clone();
    let engine_clock = qunfa_engine::EngineClock(std::sync::Arc::new(move || {
        qunfa_store::now_millis() + engine_offset.load(std::sync::atomic::Ordering::SeqCst)
    }));
    let mut config = qunfa_engine::EngineConfig {
        poll_interval: std::time::Duration::from_millis(50),
        clock: engine_clock,
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = store.clone();
    let link_key = tokio::task::spawn_blocking(move || s.link_key().unwrap()).await.unwrap();
    let public_url = format!("http://{addr}");
    let mut transports = qunfa_engine::Transports::new().unwrap();
    transports.links = Some(qunfa_engine::Links { public_url: public_url.clone(), key: link_key.clone() });
    // Retries come fast in tests (50 ms, doubling to 200 ms, 4 attempts).
    (config.delivery.retry_base_ms, config.delivery.retry_max_ms, config.delivery.max_attempts) = (50, 200, 4);
    if let Some(secret) = webhook_secret {
        // Every test endpoint shares one host: its circuit breaker stays out
        // of the way here (the engine's webhook tests cover it).
        let value = serde_json::json!({"secret": secret, "allow_private_networks": true, "timeout_ms": 300, "breaker_failures": 1000});
        let settings = qunfa_core::channel::ChannelSettings::parse(
            qunfa_core::contact::Channel::Webhook,
            &value,
            None,
            &mut String::new,
        )
        .unwrap();
        if let qunfa_core::channel::SettingsKind::Webhook(w) = settings.kind {
            transports.default_webhook = Some(w);
        }
    }
    let options = qunfa_server::ServerOptions {
        public_url,
        link_key,
        server_webhook: transports.default_webhook.is_some(),
        safety: Some(std::sync::Arc::new(match safety {
            Some(config) => qunfa_server::safety::SafetyState::load(config, &no_sampling()).unwrap(),
            None => qunfa_server::safety::SafetyState::defaults(&no_sampling()),
        })),
        clock: Some(clock),
        trust_forwarded_for: true,
    };
    let engine = qunfa_engine::Engine::start_with(store.clone(), config, transports);
    let state = qunfa_server::AppState::with_options(
        store.clone(),
        policy,
        engine,
        qunfa_store::secret_hash(ADMIN_TOKEN),
        options,
    );
    tokio::spawn(qunfa_server::serve(listener, state, std::future::pending()));
    TestApp { base: format!("http://{addr}"), http: reqwest::Client::new(), store, clock_offset, _db: db }
}

/// A response: status and JSON body (or the text as a JSON string).
pub struct Resp {
    pub status: u16,
    pub body: Value,
}

impl Resp {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected answer: {}", self.body);
        self.body
    }
    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str) -> Value {
        assert_eq!((self.status, self.code()), (status, code), "unexpected answer: {}", self.body);
        for field in ["message", "message_zh", "hint"] {
            assert!(
                self.body["error"][field].as_str().is_some_and(|s| !s.is_empty()),
                "error without {field}: {}",
                self.body
            );
        }
        self.body
    }
}

impl TestApp {
    /// Moves the server's (and the engine's) clock `ms` ahead.
    pub fn advance(&self, ms: i64) {
        self.clock_offset.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }

    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Resp {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        self.finish(r).await
    }

    /// A POST from a given device and address (`X-Qunfa-Device`, `X-Forwarded-For`).
    pub async fn post_from(&self, path: &str, token: &str, body: Value, device: &str, ip: &str) -> Resp {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("x-qunfa-device", device)
            .header("x-forwarded-for", ip)
            .json(&body);
        self.finish(r).await
    }

    /// A PUT with a JSON body.
    pub async fn put(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call(Method::PUT, path, Some(token), Some(body)).await
    }

    /// A PUT with a raw body.
    pub async fn put_raw(&self, path: &str, token: &str, content_type: &str, body: impl Into<reqwest::Body>) -> Resp {
        let r = self
            .http
            .put(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body);
        self.finish(r).await
    }

    pub async fn raw(&self, path: &str, token: &str, content_type: &str, body: impl Into<reqwest::Body>) -> Resp {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body);
        self.finish(r).await
    }

    async fn finish(&self, r: reqwest::RequestBuilder) -> Resp {
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        assert_ne!(status, 500, "internal error: {body}");
        Resp { status, body }
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.call(Method::GET, path, Some(token), None).await
    }
    pub async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// Creates a workspace; returns (id, owner key).
    pub async fn workspace(&self, kind: &str) -> (String, String) {
        let w = self
            .call(
                Method::POST,
                "/v1/workspaces",
                Some(ADMIN_TOKEN),
                Some(json!({"name": format!("{kind} ws"), "kind": kind})),
            )
            .await
            .expect(201);
        (w["id"].as_str().unwrap().to_owned(), w["api_key"].as_str().unwrap().to_owned())
    }

    /// Adds a member; returns (member id, key).
    pub async fn member(&self, key: &str, role: &str) -> (String, String) {
        let m = self.post("/v1/members", key, json!({"name": format!("{role} 成员"), "role": role})).await.expect(201);
        (m["id"].as_str().unwrap().to_owned(), m["api_key"].as_str().unwrap().to_owned())
    }

    /// Imports `n` contacts as NDJSON, each with `tags`; returns their ids.
    pub async fn contacts(&self, key: &str, n: usize, tags: &[&str]) -> Vec<String> {
        let mut body = String::new();
        for i in 0..n {
            body.push_str(&json!({"external_id": format!("u{i}"), "name": format!("用户{i}"), "attributes": {"city": "上海", "i": i}, "tags": tags}).to_string());
            body.push('\n');
        }
        let out = self.raw("/v1/contacts/import", key, "application/x-ndjson", body).await.expect(200);
        assert_eq!(out["imported"].as_u64().unwrap() + out["updated"].as_u64().unwrap(), n as u64);
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/contacts?limit=1000&cursor={c}"),
                None => "/v1/contacts?limit=1000".into(),
            };
            let page = self.get(&path, key).await.expect(200);
            ids.extend(page["items"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()));
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return ids,
            }
        }
    }

    /// Creates a text broadcast; returns its id.
    pub async fn draft(&self, key: &str, text: &str, audience: Value) -> String {
        let b = self
            .post("/v1/broadcasts", key, json!({"content": {"type": "text", "text": text}, "audience": audience}))
            .await
            .expect(201);
        b["id"].as_str().unwrap().to_owned()
    }

    /// Polls until the broadcast is completed.
    /// The engagement sets of a broadcast equal what its records give.
    pub async fn assert_sets_exact(&self, id: &str) {
        let (store, n) = (self.store.clone(), id.parse::<i64>().expect("a broadcast id"));
        let (stored, derived) =
            tokio::task::spawn_blocking(move || store.measure_sets_recount(n).unwrap()).await.unwrap();
        assert_eq!(stored, derived, "the engagement sets of broadcast {id} drifted from its records");
    }

    pub async fn wait_completed(&self, key: &str, id: &str) -> Value {
        for _ in 0..400 {
            let b = self.get(&format!("/v1/broadcasts/{id}"), key).await.expect(200);
            if b["state"] == "completed" {
                // Every completed broadcast of every test: its engagement
                // sets are what its records say (the writers kept them up).
                self.assert_sets_exact(id).await;
                return b;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("broadcast {id} did not complete");
    }
}

/// The policy's safety numbers without random human review, so that a test's
/// broadcast is held only for the reasons the test is about.
pub fn no_sampling() -> qunfa_core::policy::SafetyPolicy {
    let mut safety = qunfa_core::Policy::builtin().safety;
    safety.review_sample_base = 0.0;
    safety.review_sample_per_risk = 0.0;
    safety
}
