//! The HTTP face of qunfa: the `/v1` REST API, its OpenAPI document and
//! Swagger UI, health and metrics. Only this crate knows HTTP and JSON.

pub mod compat;
pub mod console;
pub mod error;
pub mod extract;
mod routes;
pub use routes::console::set_login_direct;
pub mod safety;
pub mod wire;

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use axum::{extract::DefaultBodyLimit, Router};
use qunfa_core::Policy;
use qunfa_engine::Engine;
use qunfa_store::Store;

use crate::error::ApiError;

/// Everything a handler can reach.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub store: Store,
    pub policy: Policy,
    pub engine: Engine,
    admin_token_hash: String,
    pub metrics: HttpMetrics,
    pub options: ServerOptions,
    /// The content-safety check (reloadable).
    pub safety: Arc<safety::SafetyState>,
}

/// What a server needs beyond its store and engine.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// The public base URL of links in messages (unsubscribe, receipts).
    pub public_url: String,
    /// The key of those links (`Store::link_key`).
    pub link_key: Vec<u8>,
    /// The server has webhook settings of its own (`webhook_secret`) that
    /// workspaces without their own use.
    pub server_webhook: bool,
    /// The content-safety check; `None`: the lists, rules and model shipped with qunfa.
    pub safety: Option<Arc<safety::SafetyState>>,
    /// The clock every rule reads; `None`: the wall clock. Tests inject one.
    pub clock: Option<Clock>,
    /// Take the client address from `X-Forwarded-For` (behind a trusted proxy).
    pub trust_forwarded_for: bool,
}

/// A clock in Unix milliseconds, injectable so rules with windows and
/// lockouts can be tested deterministically.
#[derive(Clone)]
pub struct Clock(pub Arc<dyn Fn() -> i64 + Send + Sync>);

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", (self.0)())
    }
}

/// Request counters by status class.
#[derive(Default)]
pub struct HttpMetrics {
    pub by_class: [AtomicU64; 6],
}

impl HttpMetrics {
    fn record(&self, status: u16) {
        let class = usize::from(status / 100).min(5);
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
    }
}

impl Inner {
    /// Now, in Unix milliseconds, by the server's clock.
    pub fn now(&self) -> i64 {
        match &self.options.clock {
            Some(clock) => (clock.0)(),
            None => qunfa_store::now_millis(),
        }
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// `admin_token_hash` is the SHA-256 (hex) of the server admin token.
    pub fn new(store: Store, policy: Policy, engine: Engine, admin_token_hash: String) -> Self {
        Self::with_options(store, policy, engine, admin_token_hash, ServerOptions::default())
    }

    pub fn with_options(
        store: Store,
        policy: Policy,
        engine: Engine,
        admin_token_hash: String,
        options: ServerOptions,
    ) -> Self {
        let safety = options.safety.clone().unwrap_or_else(|| Arc::new(safety::SafetyState::defaults(&policy.safety)));
        AppState(Arc::new(Inner {
            store,
            policy,
            engine,
            admin_token_hash,
            metrics: HttpMetrics::default(),
            options,
            safety,
        }))
    }

    pub fn admin_token_hash(&self) -> &str {
        &self.0.admin_token_hash
    }

    /// Runs blocking store work off the async threads.
    ///
    /// # Errors
    /// `f`'s error; a panicked task is an internal error.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || f(&state.0)).await.map_err(|e| ApiError::internal(&e))?
    }
}

/// Largest request body (imports are sent in chunks by the CLI).
pub const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

/// The whole application.
pub fn app(state: AppState) -> Router {
    let (router, openapi) = routes::router().split_for_parts();
    let openapi = Arc::new(openapi);
    router
        .merge(routes::ops::docs_router(openapi))
        // The WeChat-compatible API (/cgi-bin/, docs/compat.md), outside the OpenAPI document.
        .merge(compat::router())
        .merge(console::router())
        .route(
            "/u/{workspace}/{contact}/{channel}/{token}",
            axum::routing::get(routes::channels::unsubscribe_page).post(routes::channels::unsubscribe),
        )
        // Measurement: tracked links and the open pixel (no login: the short code or a signed token).
        .route("/l/{short}", axum::routing::get(routes::measure::follow_link))
        .route(
            "/o/{workspace}/{broadcast}/{contact}/{channel}/{token}",
            axum::routing::get(routes::measure::open_pixel),
        )
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_requests))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn count_requests(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let response = next.run(req).await;
    state.metrics.record(response.status().as_u16());
    response
}

/// Serves until `shutdown` resolves, then stops the engine after its step in flight.
///
/// # Errors
/// When serving fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let engine = state.engine.clone();
    // Words added through the API on any node reach this one within seconds.
    let follower = state.clone();
    let follow = tokio::spawn(async move {
        loop {
            let s = follower.clone();
            let outcome = tokio::task::spawn_blocking(move || s.safety.follow_words(&s.store)).await;
            match outcome {
                Ok(Ok(true)) => tracing::info!("content-safety words changed: library rebuilt"),
                Ok(Ok(false)) => {}
                Ok(Err(error)) => tracing::warn!(%error, "content-safety words could not be followed"),
                Err(error) => tracing::warn!(%error, "content-safety follower panicked"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        }
    });
    // Scheduled and recurring runs, submitted when they come due.
    let scheduler = routes::schedule::spawn(state.clone());
    // A/B tests: delayed arms and decisions (routes/measure.rs).
    let ab_tests = routes::measure::spawn(state.clone());
    // MASSSENDJOBFINISH callbacks of the WeChat-compatible API.
    let compat_callbacks = compat::callback::spawn(state.clone());
    let result = axum::serve(listener, app(state).into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await;
    follow.abort();
    scheduler.abort();
    ab_tests.abort();
    compat_callbacks.abort();
    engine.shutdown().await;
    result
}
