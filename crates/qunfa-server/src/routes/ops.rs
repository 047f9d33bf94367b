//! Operations: health, metrics, the OpenAPI document, Swagger UI, the audit log.

use std::{fmt::Write, sync::atomic::Ordering, sync::Arc};

use axum::{
    extract::{Query, State},
    http::{header, StatusCode},
    response::{Html, IntoResponse},
    routing::get,
    Json, Router,
};
use qunfa_core::workspace::Action;
use qunfa_store::Backend;

use super::PageQuery;
use crate::{
    error::{ApiResult, ErrorBody},
    extract::Auth,
    wire::*,
    AppState,
};

/// Liveness and database reachability.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, body = HealthResponse), (status = 503, body = HealthResponse)))]
pub async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<HealthResponse>) {
    let db = state.blocking(|s| s.store.ping().map_err(Into::into)).await;
    let database = match state.store.backend() {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let (status, text) =
        if db.is_ok() { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "database unavailable") };
    (
        status,
        Json(HealthResponse {
            status: text.into(),
            database: database.into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }),
    )
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()), responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = String::new();
    let m = &state.metrics;
    out.push_str(
        "# HELP qunfa_http_requests_total HTTP responses by status class.\n# TYPE qunfa_http_requests_total counter\n",
    );
    for (i, class) in ["1xx", "1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate().skip(1) {
        let _ =
            writeln!(out, "qunfa_http_requests_total{{class=\"{class}\"}} {}", m.by_class[i].load(Ordering::Relaxed));
    }
    let e = &state.engine.metrics;
    let counters = [
        ("qunfa_engine_steps_total", "Delivery steps (transactions) run.", e.steps.load(Ordering::Relaxed)),
        ("qunfa_engine_jobs_total", "Delivery batches completed.", e.jobs_done.load(Ordering::Relaxed)),
        ("qunfa_broadcasts_completed_total", "Broadcasts completed.", e.broadcasts_completed.load(Ordering::Relaxed)),
        (
            "qunfa_engine_step_errors_total",
            "Delivery steps that failed and were rolled back.",
            e.step_errors.load(Ordering::Relaxed),
        ),
        ("qunfa_dead_letters_total", "Batches that exhausted their attempts.", e.dead_letters.load(Ordering::Relaxed)),
        ("qunfa_throttled_total", "Batches put back by a rate limit.", e.throttled.load(Ordering::Relaxed)),
        ("qunfa_purged_total", "Broadcasts whose content retention purged.", e.purged.load(Ordering::Relaxed)),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
    }
    let by_class = [
        ("qunfa_deliveries_total", "Deliveries written, by priority class and channel.", &e.delivered),
        ("qunfa_deliveries_failed_total", "Deliveries that ended failed, by class and channel.", &e.failed),
    ];
    for (name, help, cells) in by_class {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (class, channel, v) in cells.iter() {
            let _ = writeln!(
                out,
                "{name}{{class=\"{}\",channel=\"{}\"}} {}",
                class.as_str(),
                channel.as_str(),
                v.load(Ordering::Relaxed)
            );
        }
    }
    let name = "qunfa_delivery_latency_seconds";
    let _ = writeln!(out, "# HELP {name} Queued to durable delivery, per recipient.\n# TYPE {name} histogram");
    for (class, channel, h) in e.latency.iter() {
        let labels = format!("class=\"{}\",channel=\"{}\"", class.as_str(), channel.as_str());
        let mut cumulative = 0;
        for (i, bound) in qunfa_engine::LATENCY_BUCKETS_MS.iter().enumerate() {
            cumulative += h.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}", *bound as f64 / 1000.0);
        }
        let count = h.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0);
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
    // Queue depth comes from the database: every node sees every node's work.
    if let Ok(depth) = state.blocking(|s| Ok(s.store.queue_depth()?)).await {
        let name = "qunfa_queue_batches";
        let _ = writeln!(out, "# HELP {name} Batches waiting (ready, held or throttled).\n# TYPE {name} gauge");
        for (class, channel, n) in depth {
            let _ = writeln!(out, "{name}{{class=\"{}\",channel=\"{channel}\"}} {n}", class.as_str());
        }
    }
    if let Ok(pending) = state.blocking(|s| Ok(s.store.events_pending()?)).await {
        let name = "qunfa_event_deliveries_pending";
        let _ = writeln!(
            out,
            "# HELP {name} Outgoing event webhook deliveries not yet delivered or failed.\n# TYPE {name} gauge"
        );
        let _ = writeln!(out, "{name} {pending}");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// The workspace's audit log (hash-chained), oldest first.
#[utoipa::path(get, path = "/v1/audit", tag = "operations", params(PageQuery),
    responses((status = 200, body = Page<AuditEntryWire>), (status = 403, body = ErrorBody)))]
pub async fn audit_log(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<AuditEntryWire>>> {
    auth.require(Action::Audit)?;
    let (ws, limit, after) = (auth.workspace_id(), q.limit()?, q.cursor_i64()?.unwrap_or(0));
    let rows = state.blocking(move |s| Ok(s.store.audit_entries(ws, after, limit)?)).await?;
    let next_cursor = (rows.len() == limit).then(|| rows.last().map(|e| e.seq.to_string())).flatten();
    let items = rows
        .into_iter()
        .map(|e| AuditEntryWire {
            seq: e.seq,
            at: ts(e.at),
            actor: e.actor,
            action: e.action,
            subject: e.subject,
            details: serde_json::from_str(&e.details).unwrap_or(serde_json::Value::String(e.details)),
            prev_hash: e.prev_hash,
            hash: e.hash,
        })
        .collect();
    Ok(Json(Page { items, next_cursor }))
}

const SWAGGER_JS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js");
const SWAGGER_CSS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui.css");
const DOCS_HTML: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>qunfa API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>"##;

/// `/openapi.json` and the vendored Swagger UI at `/docs`.
pub fn docs_router(openapi: Arc<utoipa::openapi::OpenApi>) -> Router<AppState> {
    let json = Arc::new(openapi.to_pretty_json().unwrap_or_default());
    Router::new()
        .route(
            "/openapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], json.as_str().to_owned()) }),
        )
        .route("/docs", get(|| async { Html(DOCS_HTML) }))
        .route("/docs/", get(|| async { Html(DOCS_HTML) }))
        .route(
            "/docs/swagger-ui-bundle.js",
            get(|| async { ([(header::CONTENT_TYPE, "application/javascript")], SWAGGER_JS) }),
        )
        .route("/docs/swagger-ui.css", get(|| async { ([(header::CONTENT_TYPE, "text/css")], SWAGGER_CSS) }))
}
