//! Extractors: JSON bodies with coded errors, and the kinds of caller
//! (workspace API key or console session, recipient inbox token, server admin token).

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{header, request::Parts, Method},
};
use qunfa_core::{workspace::Action, Code};
use qunfa_store::workspaces::AuthContext;
use serde::de::DeserializeOwned;

use crate::{error::ApiError, AppState};

/// A JSON body. Malformed JSON, wrong types and unknown fields are answered
/// with `QF-BAD-JSON` and serde's description of where the problem is. The
/// `Content-Type` header is not required (many clients omit it).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::code(Code::PayloadTooLarge)
            } else {
                ApiError::new(Code::BadRequest, e.body_text())
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body with a coded error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." || path.is_empty() { inner.to_string() } else { format!("{path}: {inner}") };
        ApiError::new(Code::BadJson, message)
    })?;
    de.end().map_err(|e| ApiError::new(Code::BadJson, e.to_string()))?;
    Ok(value)
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A caller with a workspace API key.
pub struct Auth(pub AuthContext);

impl Auth {
    /// Refuses unless the key's role allows `action`.
    ///
    /// # Errors
    /// `QF-AUTH-FORBIDDEN`.
    pub fn require(&self, action: Action) -> Result<(), ApiError> {
        if self.0.role.allows(action) {
            Ok(())
        } else {
            Err(ApiError::new(
                Code::Forbidden,
                format!("the {} role may not do this ({action:?})", self.0.role.as_str()),
            ))
        }
    }
    pub fn workspace_id(&self) -> i64 {
        self.0.workspace.id
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    /// An API key (`Authorization: Bearer qf_…`), else a console session
    /// cookie; a change through the cookie also needs the session's CSRF
    /// token in `X-CSRF-Token`.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(token) = bearer(parts) {
            let token = token.to_owned();
            let ctx = state.blocking(move |s| s.store.authenticate(&token).map_err(ApiError::from)).await?;
            return ctx.map(Auth).ok_or_else(|| ApiError::code(Code::Unauthenticated));
        }
        let token = session_cookie(&parts.headers).ok_or_else(|| ApiError::code(Code::Unauthenticated))?.to_owned();
        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe {
            let sent = parts.headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
            if !constant_time_eq(sent.as_bytes(), csrf_token(&token).as_bytes()) {
                return Err(ApiError::code(Code::CsrfToken));
            }
        }
        let ctx = state
            .blocking(move |s| {
                let now = s.now();
                s.store.session_auth(&token, now).map_err(ApiError::from)
            })
            .await?;
        ctx.map(Auth).ok_or_else(|| ApiError::new(Code::Unauthenticated, "the console session ended; log in again"))
    }
}

/// The console's session cookie.
pub const SESSION_COOKIE: &str = "qunfa_session";
/// The browser's own id, set at its first console login: the device of
/// sender security for requests that carry it.
pub const DEVICE_COOKIE: &str = "qunfa_device";

fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// The value of the session cookie, if the request has one.
pub fn session_cookie(headers: &axum::http::HeaderMap) -> Option<&str> {
    cookie(headers, SESSION_COOKIE)
}

/// The device sender security sees for a browser id.
pub fn browser_device(id: &str) -> String {
    format!("browser:{}", &qunfa_store::secret_hash(id)[..16])
}

/// The browser id cookie, if the request has one.
pub fn device_cookie(headers: &axum::http::HeaderMap) -> Option<&str> {
    cookie(headers, DEVICE_COOKIE)
}

/// A session's CSRF token: derived from the session token (which scripts
/// cannot read: the cookie is `HttpOnly`), so nothing more is stored.
pub fn csrf_token(session_token: &str) -> String {
    qunfa_store::secret_hash(&format!("csrf:{session_token}"))[..32].to_owned()
}

/// Equality of two secrets (or their hashes) in time independent of where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A recipient's inbox token, not yet looked up. A route looks it up off the
/// async threads in the same call that does its work ([`InboxAuth::recipient`],
/// or a store call given [`InboxAuth::token`]), so a recipient's request leaves
/// the async threads once, not twice (the inbox is the busiest read path). The
/// token is looked up on every request, never cached: deleting a contact
/// deletes its tokens, on any node.
pub struct InboxAuth(String);

impl InboxAuth {
    /// The recipient the token stands for: (workspace id, contact idx). Call
    /// it on a blocking thread.
    ///
    /// # Errors
    /// `QF-AUTH-REQUIRED` for an unknown token, or database errors.
    pub fn recipient(&self, store: &qunfa_store::Store) -> Result<(i64, u32), ApiError> {
        store.inbox_auth(&self.0)?.ok_or_else(Self::unknown)
    }

    /// The token itself, for store calls that look it up on their own
    /// connection ([`qunfa_store::Store::inbox_of_token`]).
    pub fn token(&self) -> &str {
        &self.0
    }

    /// The answer to a token that stands for no one.
    pub fn unknown() -> ApiError {
        ApiError::new(Code::Unauthenticated, "an inbox token is required (POST /v1/contacts/{id}/inbox-token)")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for InboxAuth {
    type Rejection = ApiError;

    /// Refuses what cannot be an inbox token (no bearer, a workspace key)
    /// before the body is read; the lookup is the route's.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(|| ApiError::code(Code::Unauthenticated))?;
        if !qunfa_store::inbox::is_inbox_token(token) {
            return Err(InboxAuth::unknown());
        }
        Ok(InboxAuth(token.to_owned()))
    }
}

/// The server administrator.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(|| ApiError::code(Code::Unauthenticated))?;
        if constant_time_eq(qunfa_store::secret_hash(token).as_bytes(), state.admin_token_hash().as_bytes()) {
            Ok(Admin)
        } else {
            Err(ApiError::new(Code::Unauthenticated, "the server admin token is required"))
        }
    }
}

/// Where a request came from: the device fingerprint (`X-Qunfa-Device`, else
/// the console's browser id cookie, else a hash of the User-Agent) and the client address (the connection's, or
/// the last `X-Forwarded-For` entry — the one the proxy added — when the server trusts its proxy).
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub device: String,
    pub ip: Option<std::net::IpAddr>,
}

impl FromRequestParts<AppState> for ClientInfo {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header_str = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let device = match (header_str("x-qunfa-device"), header_str("user-agent")) {
            (Some(d), _) if !d.is_empty() => d.chars().take(128).collect(),
            _ if device_cookie(&parts.headers).is_some() => {
                browser_device(device_cookie(&parts.headers).unwrap_or_default())
            }
            (_, Some(ua)) if !ua.is_empty() => format!("ua:{}", &qunfa_store::secret_hash(ua)[..16]),
            _ => "unknown".to_owned(),
        };
        let forwarded = if state.options.trust_forwarded_for {
            // The last entry is the one the trusted proxy added; earlier ones
            // are whatever the client sent.
            header_str("x-forwarded-for").and_then(|v| v.rsplit(',').next()).and_then(|v| v.trim().parse().ok())
        } else {
            None
        };
        let peer = parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
        Ok(ClientInfo { device, ip: forwarded.or(peer) })
    }
}
