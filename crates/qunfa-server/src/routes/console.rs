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
    extract::{
        browser_device, csrf_token, device_cookie, session_cookie, ApiJson, Auth, ClientInfo, DEVICE_COOKIE,
        SESSION_COOKIE,
    },
    routes::{
        parse_id,
        security::{network_of, observe},
    },
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
    /// The login name (to change the password).
    pub login: Option<String>,
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

/// Most argon2 checks at once (each takes 19 MiB and tens of milliseconds):
/// a flood of logins waits here instead of filling the blocking pool that
/// every store call shares.
fn hashing() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get))
    })
}

/// Runs `f` (which hashes a password) with a hashing permit; `QF-UNAVAILABLE`
/// with `Retry-After` when none frees up within two seconds.
async fn with_hashing<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&Inner) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let permit = tokio::time::timeout(std::time::Duration::from_secs(2), hashing().acquire())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            let mut e = ApiError::new(Code::Unavailable, "too many logins at once; try again in a moment");
            e.retry_after = Some(1);
            e
        })?;
    let out = state.blocking(f).await;
    drop(permit);
    out
}

/// A password as the console takes it: 10 to 256 characters.
fn password_ok(password: &str) -> bool {
    (10..=256).contains(&password.chars().count())
}

/// Log in to the console: answers with the session (and its CSRF token)
/// and sets the `qunfa_session` cookie (`HttpOnly`, `SameSite=Strict`).
/// The body must be JSON (`Content-Type: application/json`), so a form on
/// another site cannot log a browser in. Unknown logins and wrong passwords
/// get the same answer; `console.max_failures` of them in a row from one
/// network lock that login name for that network (`QF-LOGIN-LOCKED`,
/// `Retry-After`), whether the name exists or not.
#[utoipa::path(post, path = "/v1/console/login", tag = "console", request_body = LoginRequest,
    responses((status = 200, body = ConsoleSession), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Response> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !json {
        return Err(ApiError::new(Code::BadRequest, "log in with a JSON body (Content-Type: application/json)"));
    }
    let login_name = req.login.trim().to_owned();
    // A browser without its id gets one now, and this login is observed as it.
    let new_device = device_cookie(&headers).is_none().then(|| qunfa_store::new_secret("br_"));
    let mut client = client;
    if let Some(id) = &new_device {
        if headers.get("x-qunfa-device").is_none() {
            client.device = browser_device(id);
        }
    }
    let (token, session) = with_hashing(&state, move |s| {
        let now = s.now();
        let policy = &s.policy.console;
        let key = qunfa_store::console::attempt_key(&login_name, &network_of(s, client.ip));
        if let Some(until) = s.store.login_locked(&key, now)? {
            return Err(locked(until, now));
        }
        let record = if login_name.len() <= 64 && password_ok(&req.password) {
            s.store.login_record(&login_name)?
        } else {
            None
        };
        let matched = match &record {
            Some(r) => password_matches(&req.password, &r.password_hash),
            None => {
                let _ = password_matches(&req.password, decoy_hash());
                false
            }
        };
        let refused = |s: &Inner| -> Result<ApiError, ApiError> {
            let lock_ms = i64::from(policy.lock_minutes) * 60_000;
            Ok(match s.store.login_failed(&key, i64::from(policy.max_failures), lock_ms, now)? {
                Some(until) => locked(until, now),
                None => ApiError::code(Code::LoginFailed),
            })
        };
        let Some(record) = record.filter(|_| matched) else {
            return Err(refused(s)?);
        };
        let expires_at = now + i64::from(policy.session_hours) * 3_600_000;
        let Some(opened) = s.store.open_session(
            record.workspace_id,
            record.member_id,
            &record.password_hash,
            &key,
            expires_at,
            now,
        )?
        else {
            // Locked by concurrent guesses, or the password changed meanwhile.
            return Err(refused(s)?);
        };
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
    let mut response = Json(session).into_response();
    let cookies = response.headers_mut();
    let attrs = cookie_attributes(&state, &headers);
    let cookie = format!("{SESSION_COOKIE}={token}; {attrs}; Max-Age={max_age}");
    cookies.append(header::SET_COOKIE, HeaderValue::from_str(&cookie).map_err(|e| ApiError::internal(&e))?);
    if let Some(id) = new_device {
        // The browser's own id for sender security (a browser update changes
        // its User-Agent, not this), kept for a year.
        let device = format!("{DEVICE_COOKIE}={id}; {attrs}; Max-Age=31536000");
        cookies.append(header::SET_COOKIE, HeaderValue::from_str(&device).map_err(|e| ApiError::internal(&e))?);
    }
    Ok(response)
}

/// The cookies' attributes: `Secure` too when the request came over HTTPS
/// through the trusted proxy (`trust_forwarded_for` and `X-Forwarded-Proto: https`).
fn cookie_attributes(state: &AppState, headers: &HeaderMap) -> &'static str {
    let https = state.options.trust_forwarded_for
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    if https {
        "Path=/; HttpOnly; SameSite=Strict; Secure"
    } else {
        "Path=/; HttpOnly; SameSite=Strict"
    }
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
    let login = s.store.login_record_of(ctx.member_id)?.map(|r| r.login);
    Ok(ConsoleSession {
        member_id: ctx.member_id.to_string(),
        login,
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
    let out = state
        .blocking(move |s| {
            let expires_at = match auth.0.session_id {
                Some(id) => s.store.session_expiry(id, s.now())?,
                None => None,
            };
            session_of(s, &auth.0, &token, expires_at)
        })
        .await?;
    Ok(Json(out))
}

fn not_a_session() -> ApiError {
    ApiError::new(Code::Unauthenticated, "this is not a console session (log in at POST /v1/console/login)")
}

/// Log out: ends the session and clears the cookie.
#[utoipa::path(post, path = "/v1/console/logout", tag = "console",
    responses((status = 204), (status = 401, body = ErrorBody)))]
pub async fn logout(State(state): State<AppState>, auth: Auth, headers: HeaderMap) -> ApiResult<Response> {
    let session = auth.0.session_id.ok_or_else(not_a_session)?;
    let (ws, actor) = (auth.workspace_id(), auth.0.actor());
    state
        .blocking(move |s| {
            let now = s.now();
            Ok(s.store.end_session(ws, session, &actor, now)?)
        })
        .await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    let cookie = format!("{SESSION_COOKIE}=; {}; Max-Age=0", cookie_attributes(&state, &headers));
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
    /// The member's current password, when it changes its own login.
    pub current_password: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    pub member_id: String,
    pub login: String,
}

/// Set a member's console login and password: an admin or the owner for the
/// roles it may grant, or the member itself (with `current_password` once it
/// has one). Ends the member's console sessions and clears the login's failed attempts.
#[utoipa::path(put, path = "/v1/members/{id}/login", tag = "console", params(("id" = String, Path)), request_body = SetLoginRequest,
    responses((status = 200, body = LoginResponse), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn set_login(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SetLoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    let member = parse_id(&id)?;
    let own = member == auth.0.member_id;
    if !own {
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
    if !password_ok(&req.password) {
        return Err(ApiError::new(Code::InvalidLogin, "the password must be 10 to 256 characters"));
    }
    let (ws, actor, role) = (auth.workspace_id(), auth.0.actor(), auth.0.role);
    let stored = login.clone();
    with_hashing(&state, move |s| {
        let target = s.store.member(ws, member)?;
        // An admin may not take over the owner's account (as with roles).
        if !own && !role.may_grant(target.role) {
            return Err(ApiError::new(
                Code::Forbidden,
                format!("a {} may not set the login of a {}", role.as_str(), target.role.as_str()),
            ));
        }
        // Changing one's own password needs the current one.
        if own {
            if let Some(current) = s.store.login_record_of(member)? {
                let given = req.current_password.as_deref().unwrap_or("");
                if !password_matches(given, &current.password_hash) {
                    return Err(ApiError::new(Code::InvalidLogin, "current_password is wrong or missing"));
                }
            }
        }
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
