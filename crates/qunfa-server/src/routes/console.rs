//! Console logins: members log in with a login name and password (argon2id),
//! get an `HttpOnly` session cookie and a CSRF token for the session, and
//! then use the same `/v1` API as with an API key, with their member's role.

use argon2::{
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use axum::{
    extract::{Path, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use qunfa_core::{workspace::Action, Code};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    error::{ApiError, ApiResult, ErrorBody},
    extract::{csrf_token, session_cookie, ApiJson, Auth, ClientInfo, SESSION_COOKIE},
    routes::{parse_id, security::observe},
    wire::ts,
    AppState, Inner,
};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub login: String,
    pub password: String,
}

/// Who is logged in, and the token to send in `X-CSRF-Token` with changes.
#[derive(Serialize, ToSchema)]
pub struct ConsoleSession {
    pub member_id: String,
    pub name: String,
    pub role: String,
    pub workspace_id: String,
    pub workspace_name: String,
    pub workspace_kind: String,
    pub csrf_token: String,
    pub expires_at: Option<String>,
}

/// The hash every unknown login is checked against, so an unknown login
/// takes as long to refuse as a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("not a password of anyone").unwrap_or_default())
}

/// Argon2id (the crate's default parameters: 19 MiB, 2 passes) with a random salt, as a PHC string.
fn hash_password(password: &str) -> Result<String, ApiError> {
    let mut salt = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| ApiError::internal(&e))?;
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt).map_err(|e| ApiError::internal(&e))?.to_string())
}

fn password_matches(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// Log in to the console: answers with the session (and its CSRF token)
/// and sets the `qunfa_session` cookie (`HttpOnly`, `SameSite=Strict`).
/// Unknown logins and wrong passwords get the same answer; too many wrong
/// passwords in a row lock the login (`QF-LOGIN-LOCKED`, `Retry-After`).
#[utoipa::path(post, path = "/v1/console/login", tag = "console", request_body = LoginRequest,
    responses((status = 200, body = ConsoleSession), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    client: ClientInfo,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Response> {
    let (token, session) = state
        .blocking(move |s| {
            let now = s.now();
            let policy = &s.policy.console;
            let record = if req.login.len() <= 64 && req.password.len() <= 256 {
                s.store.login_record(req.login.trim())?
            } else {
                None
            };
            let Some(record) = record else {
                let _ = password_matches(&req.password, decoy_hash());
                return Err(ApiError::code(Code::LoginFailed));
            };
            if let Some(until) = record.locked_until.filter(|&u| u > now) {
                return Err(locked(until, now));
            }
            if !password_matches(&req.password, &record.password_hash) {
                let lock_ms = i64::from(policy.lock_minutes) * 60_000;
                return Err(
                    match s.store.login_failed(record.member_id, i64::from(policy.max_failures), lock_ms, now)? {
                        Some(until) => locked(until, now),
                        None => ApiError::code(Code::LoginFailed),
                    },
                );
            }
            let expires_at = now + i64::from(policy.session_hours) * 3_600_000;
            let opened = s.store.open_session(record.workspace_id, record.member_id, expires_at, now)?;
            // The console login is a login like any other for sender security.
            observe(s, record.workspace_id, record.member_id, &client)?;
            let ctx = s
                .store
                .session_auth(&opened.token, now)?
                .ok_or_else(|| ApiError::internal(&"a session just opened is not found"))?;
            Ok((opened.token.clone(), session_of(s, &ctx, &opened.token, Some(expires_at))?))
        })
        .await?;
    let max_age = i64::from(state.policy.console.session_hours) * 3600;
    let cookie = format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}");
    let mut response = Json(session).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).map_err(|e| ApiError::internal(&e))?);
    Ok(response)
}

fn locked(until: i64, now: i64) -> ApiError {
    let mut e = ApiError::code(Code::LoginLocked).with_details(vec![serde_json::json!({ "clears_at": ts(until) })]);
    e.retry_after = Some(((until - now).max(0) / 1000) as u64);
    e
}

fn session_of(
    s: &Inner,
    ctx: &qunfa_store::workspaces::AuthContext,
    token: &str,
    expires_at: Option<i64>,
) -> Result<ConsoleSession, ApiError> {
    let member = s.store.member(ctx.workspace.id, ctx.member_id)?;
    Ok(ConsoleSession {
        member_id: ctx.member_id.to_string(),
        name: member.name,
        role: ctx.role.as_str().to_owned(),
        workspace_id: ctx.workspace.id.to_string(),
        workspace_name: ctx.workspace.name.clone(),
        workspace_kind: ctx.workspace.kind.as_str().to_owned(),
        csrf_token: csrf_token(token),
        expires_at: expires_at.map(ts),
    })
}

/// The session of the console cookie (after a reload: who is logged in, and
/// the CSRF token again).
#[utoipa::path(get, path = "/v1/console/session", tag = "console",
    responses((status = 200, body = ConsoleSession), (status = 401, body = ErrorBody)))]
pub async fn session(State(state): State<AppState>, auth: Auth, headers: HeaderMap) -> ApiResult<Json<ConsoleSession>> {
    let token = session_cookie(&headers).ok_or_else(not_a_session)?.to_owned();
    if auth.0.session_id.is_none() {
        return Err(not_a_session());
    }
    let out = state.blocking(move |s| session_of(s, &auth.0, &token, None)).await?;
    Ok(Json(out))
}

fn not_a_session() -> ApiError {
    ApiError::new(Code::Unauthenticated, "this is not a console session (log in at POST /v1/console/login)")
}

/// Log out: ends the session and clears the cookie.
#[utoipa::path(post, path = "/v1/console/logout", tag = "console",
    responses((status = 204), (status = 401, body = ErrorBody)))]
pub async fn logout(State(state): State<AppState>, auth: Auth) -> ApiResult<Response> {
    let session = auth.0.session_id.ok_or_else(not_a_session)?;
    let (ws, actor) = (auth.workspace_id(), auth.0.actor());
    state
        .blocking(move |s| {
            let now = s.now();
            Ok(s.store.end_session(ws, session, &actor, now)?)
        })
        .await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    let cookie = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    response
        .headers_mut()
        .insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).map_err(|e| ApiError::internal(&e))?);
    Ok(response)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetLoginRequest {
    /// 2 to 64 letters, digits, `.`, `_`, `-` or `@`; unique on the server.
    pub login: String,
    /// 10 to 256 characters.
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    pub member_id: String,
    pub login: String,
}

/// Set a member's console login and password (an admin or the owner, or the
/// member itself). Ends the member's open console sessions and unlocks the login.
#[utoipa::path(put, path = "/v1/members/{id}/login", tag = "console", params(("id" = String, Path)), request_body = SetLoginRequest,
    responses((status = 200, body = LoginResponse), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn set_login(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SetLoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    let member = parse_id(&id)?;
    if member != auth.0.member_id {
        auth.require(Action::ManageMembers)?;
    }
    let login = req.login.trim().to_owned();
    let login_ok = (2..=64).contains(&login.len())
        && login.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if !login_ok {
        return Err(ApiError::new(
            Code::InvalidLogin,
            "the login name must be 2 to 64 letters, digits, '.', '_', '-' or '@'",
        ));
    }
    let n = req.password.chars().count();
    if !(10..=256).contains(&n) {
        return Err(ApiError::new(Code::InvalidLogin, "the password must be 10 to 256 characters"));
    }
    let (ws, actor) = (auth.workspace_id(), auth.0.actor());
    let stored = login.clone();
    state
        .blocking(move |s| {
            let phc = hash_password(&req.password)?;
            let now = s.now();
            Ok(s.store.set_login(ws, member, &stored, &phc, &actor, now)?)
        })
        .await?;
    Ok(Json(LoginResponse { member_id: member.to_string(), login }))
}

/// Sets a login for the demo and for tests: the same hashing as the API.
///
/// # Errors
/// As [`set_login`]'s store call.
pub fn set_login_direct(
    store: &qunfa_store::Store,
    workspace_id: i64,
    member_id: i64,
    login: &str,
    password: &str,
    now: i64,
) -> Result<(), ApiError> {
    let phc = hash_password(password)?;
    Ok(store.set_login(workspace_id, member_id, login, &phc, "admin", now)?)
}
