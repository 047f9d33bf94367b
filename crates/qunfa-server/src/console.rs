//! The web console and the recipient inbox page: hand-written HTML, CSS and
//! JavaScript (`console/`), embedded in the binary, served with a strict
//! content security policy (no inline script, no other origin). The pages
//! call the same `/v1` API: the console with its session cookie and CSRF
//! token, the inbox page with the recipient's inbox token.

use axum::{
    http::{header, HeaderValue},
    response::{IntoResponse, Redirect, Response},
    routing::get,
    Router,
};

use crate::AppState;

const INDEX_HTML: &str = include_str!("../console/index.html");
const INBOX_HTML: &str = include_str!("../console/inbox.html");
const APP_JS: &str = include_str!("../console/app.js");
const INBOX_JS: &str = include_str!("../console/inbox.js");
const COMMON_JS: &str = include_str!("../console/common.js");
const APP_CSS: &str = include_str!("../console/app.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // The assets change with the binary; revalidating is cheap.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `/console…` and `/inbox`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/console/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/console/inbox.js", get(|| async { asset("text/javascript; charset=utf-8", INBOX_JS) }))
        .route("/console/common.js", get(|| async { asset("text/javascript; charset=utf-8", COMMON_JS) }))
        .route("/console/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/inbox", get(|| async { asset("text/html; charset=utf-8", INBOX_HTML) }))
}
