//! Sender security and account health: the verdicts on the sender's account
//! (age, abnormal logins, cooldown, health), logins and their verification,
//! health with its reasons and history, platform-admin signals and
//! overrides, the review chain and approval stages.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use qunfa_core::{
    health::{self, HealthState},
    preflight::{Severity, Verdict},
    workspace::{Action, WorkspaceKind},
    Code,
};
use qunfa_store::security::{LoginSource, LoginState};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::parse_id;
use crate::{
    error::{ApiError, ApiResult, ErrorBody},
    extract::{Admin, ApiJson, Auth, ClientInfo},
    wire::{ts, ts_opt},
    AppState, Inner,
};

const DAY_MS: i64 = 86_400_000;

/// The network of an address: cut to the policy's prefix.
pub fn network_of(s: &Inner, ip: Option<std::net::IpAddr>) -> String {
    use std::net::IpAddr;
    match ip {
        Some(IpAddr::V4(v4)) => {
            let bits = s.policy.security.network_prefix_v4;
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - u32::from(bits)) };
            format!("{}/{bits}", std::net::Ipv4Addr::from(u32::from(v4) & mask))
        }
        Some(IpAddr::V6(v6)) => {
            let bits = s.policy.security.network_prefix_v6;
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - u32::from(bits)) };
            format!("{}/{bits}", std::net::Ipv6Addr::from(u128::from(v6) & mask))
        }
        None => "unknown".to_owned(),
    }
}

/// Records where a member's request came from (when the policy watches logins).
///
/// # Errors
/// Database errors.
pub fn observe(s: &Inner, ws: i64, member_id: i64, client: &ClientInfo) -> Result<Option<LoginState>, ApiError> {
    if !s.policy.security.abnormal_login {
        return Ok(None);
    }
    Ok(Some(s.store.observe_login(ws, member_id, &login_source(s, client), s.now())?))
}

fn login_source(s: &Inner, client: &ClientInfo) -> LoginSource {
    LoginSource {
        device: client.device.clone(),
        network: network_of(s, client.ip),
        ip: client.ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string()),
    }
}

/// Scores a member's health now and stores it (a state change goes to the
/// history and the audit log). Returns the score and the state in force.
///
/// # Errors
/// Database errors.
pub fn refresh_health(s: &Inner, member_id: i64) -> Result<(health::HealthScore, HealthState), ApiError> {
    let p = &s.policy.health;
    let now = s.now();
    let inputs = s.store.health_inputs(member_id, now - i64::from(p.window_days) * DAY_MS)?;
    let score = health::score(p, &inputs);
    let security = s.store.member_security(member_id)?;
    s.store.record_health(security.workspace_id, member_id, &score, &reasons_json(&score), now)?;
    let state = security.health_override.as_ref().map_or(score.state, |(st, _)| *st);
    Ok((score, state))
}

fn reasons_json(score: &health::HealthScore) -> String {
    serde_json::to_string(&score.reasons.iter().map(HealthReasonWire::from).collect::<Vec<_>>())
        .unwrap_or_else(|_| "[]".into())
}

/// What the rules say about the sender's account: age, abnormal logins,
/// cooldown, health (and the tighter limits of sandbox).
///
/// # Errors
/// Database errors.
pub fn account_verdicts(
    s: &Inner,
    kind: WorkspaceKind,
    member_id: i64,
    n_recipients: u64,
    sends_today: u32,
) -> Result<Vec<Verdict>, ApiError> {
    let now = s.now();
    let mut out = Vec::new();
    let security = s.store.member_security(member_id)?;
    let days = s.policy.tier(kind).new_account_days;
    let opens = security.created_at + i64::from(days) * DAY_MS;
    if days > 0 && now < opens {
        let age_days = ((now - security.created_at).max(0) / DAY_MS) as u64;
        let mut v = Verdict::new(
            Code::AccountNew,
            Severity::Block,
            format!("The account is {age_days} day(s) old; mass send opens after {days} days."),
            format!("账号注册 {age_days} 天，满 {days} 天后才能群发。"),
        );
        (v.clears_at, v.limit, v.actual) = (Some(opens), Some(u64::from(days)), Some(age_days));
        out.push(v);
    }
    if s.policy.security.abnormal_login {
        let abnormal: Vec<_> =
            s.store.logins(member_id)?.into_iter().filter(|l| l.state == LoginState::Abnormal).collect();
        if let Some(l) = abnormal.first() {
            out.push(Verdict::new(
                Code::LoginAbnormal,
                Severity::Block,
                format!(
                    "The account was used from a new device or network ({} at {}, {}); mass send is disabled until that is verified.",
                    l.device,
                    l.network,
                    ts(l.first_seen)
                ),
                format!("检测到异常登录（设备 {}，网络 {}，{}），验证前不能群发。", l.device, l.network, ts(l.first_seen)),
            ));
        }
    }
    if let Some(until) = security.cooldown_until.filter(|u| *u > now) {
        let mut v = Verdict::new(
            Code::TooFrequent,
            Severity::Block,
            format!(
                "More than {} send attempts within {} minutes: sending pauses for {} hours.",
                s.policy.security.attempts_max,
                s.policy.security.attempts_window_minutes,
                s.policy.security.cooldown_hours
            ),
            format!(
                "操作频繁：{} 分钟内群发尝试超过 {} 次，需暂停 {} 小时。",
                s.policy.security.attempts_window_minutes,
                s.policy.security.attempts_max,
                s.policy.security.cooldown_hours
            ),
        );
        v.clears_at = Some(until);
        out.push(v);
    }
    let (score, state) = refresh_health(s, member_id)?;
    let why = |lang_zh: bool| {
        let parts: Vec<&str> =
            score.reasons.iter().map(|r| if lang_zh { r.message_zh.as_str() } else { r.message.as_str() }).collect();
        if parts.is_empty() {
            if lang_zh {
                "平台管理员设置".to_owned()
            } else {
                "set by a platform admin".to_owned()
            }
        } else {
            parts.join(" ")
        }
    };
    let reason_override = security.health_override.as_ref().map(|(_, r)| r.clone()).filter(|r| !r.is_empty());
    let reasons_en = reason_override.clone().unwrap_or_else(|| why(false));
    let reasons_zh = reason_override.unwrap_or_else(|| why(true));
    let h = &s.policy.health;
    match state {
        HealthState::Healthy => {}
        HealthState::Watch => out.push(Verdict::new(
            Code::HealthWatch,
            Severity::Warn,
            format!("Account health {:.0}/100 (watch): {reasons_en}", score.score),
            format!("账号健康度 {:.0}/100（观察）：{reasons_zh}", score.score),
        )),
        HealthState::Sandbox => {
            out.push(Verdict::new(
                Code::HealthSandbox,
                Severity::Review,
                format!("Account health {:.0}/100 (sandbox): every send is reviewed. {reasons_en}", score.score),
                format!("账号健康度 {:.0}/100（沙盒监控）：每次群发都需审核。{reasons_zh}", score.score),
            ));
            if n_recipients > h.sandbox_max_recipients {
                let mut v = Verdict::new(
                    Code::LimitRecipients,
                    Severity::Block,
                    format!(
                        "In sandbox a send reaches at most {} recipients; this one has {n_recipients}.",
                        h.sandbox_max_recipients
                    ),
                    format!("沙盒监控期间单次群发最多 {} 人，本次 {n_recipients} 人。", h.sandbox_max_recipients),
                );
                (v.limit, v.actual) = (Some(h.sandbox_max_recipients), Some(n_recipients));
                out.push(v);
            }
            if sends_today >= h.sandbox_sends_per_day {
                let mut v = Verdict::new(
                    Code::LimitDailySends,
                    Severity::Block,
                    format!("In sandbox {} mass send(s) a day; {sends_today} used today.", h.sandbox_sends_per_day),
                    format!("沙盒监控期间每日最多群发 {} 次，今日已用 {sends_today} 次。", h.sandbox_sends_per_day),
                );
                v.clears_at = Some(s.policy.day_bounds(now).1);
                (v.limit, v.actual) = (Some(u64::from(h.sandbox_sends_per_day)), Some(u64::from(sends_today)));
                out.push(v);
            }
        }
        HealthState::Suspended => out.push(Verdict::new(
            Code::HealthSuspended,
            Severity::Block,
            format!("Account health {:.0}/100: mass send is suspended. {reasons_en}", score.score),
            format!("账号健康度 {:.0}/100：群发已暂停。{reasons_zh}", score.score),
        )),
    }
    Ok(out)
}

/// Records a send attempt and starts the cooldown when there were too many.
///
/// # Errors
/// Database errors.
pub fn count_attempt(s: &Inner, ws: i64, member_id: i64, broadcast_id: i64) -> Result<(), ApiError> {
    let p = &s.policy.security;
    if p.attempts_max == 0 {
        return Ok(());
    }
    let now = s.now();
    let since = now - i64::from(p.attempts_window_minutes) * 60_000;
    let n = s.store.record_send_attempt(member_id, broadcast_id, since, now)?;
    if n > p.attempts_max {
        s.store.start_cooldown(ws, member_id, now + i64::from(p.cooldown_hours) * 3_600_000, n, now)?;
    }
    Ok(())
}

// ---- wire shapes ----

#[derive(Serialize, ToSchema)]
pub struct HealthReasonWire {
    /// `devices`, `network_changes`, `forward_ratio`, `deletion_rate`, `report_rate`, `payment`, `violations`.
    pub dimension: String,
    pub value: f64,
    pub limit: f64,
    /// Points this dimension costs.
    pub penalty: f64,
    pub message: String,
    pub message_zh: String,
}

impl From<&health::HealthReason> for HealthReasonWire {
    fn from(r: &health::HealthReason) -> Self {
        HealthReasonWire {
            dimension: r.dimension.to_owned(),
            value: r.value,
            limit: r.limit,
            penalty: r.penalty,
            message: r.message.clone(),
            message_zh: r.message_zh.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct HealthChangeWire {
    pub state: String,
    pub score: f64,
    pub reasons: serde_json::Value,
    pub actor: String,
    pub at: String,
}

#[derive(Serialize, ToSchema)]
pub struct HealthResponse {
    pub member_id: String,
    /// The state in force: `healthy`, `watch`, `sandbox` or `suspended`.
    pub state: String,
    /// The computed score (100 = perfect) and the state it gives.
    pub score: f64,
    pub computed_state: String,
    pub reasons: Vec<HealthReasonWire>,
    /// A platform admin's override (`{state, reason}`), if any.
    pub override_state: Option<String>,
    pub override_reason: Option<String>,
    /// The numbers behind the score, over the window.
    pub window_days: u32,
    pub dimensions: serde_json::Value,
    pub cooldown_until: Option<String>,
    /// Mass send opens at (new accounts).
    pub account_opens_at: Option<String>,
    pub history: Vec<HealthChangeWire>,
}

fn may_see_member(auth: &Auth, member_id: i64) -> Result<(), ApiError> {
    if auth.0.member_id == member_id {
        return Ok(());
    }
    auth.require(Action::ManageMembers).or_else(|_| auth.require(Action::Audit))
}

async fn member_of(state: &AppState, ws: i64, id: &str) -> ApiResult<i64> {
    let id = parse_id(id)?;
    state.blocking(move |s| Ok(s.store.member(ws, id)?.id)).await
}

/// A member's account health: the state, the score, what lowered it, the
/// numbers behind it and the history of state changes (the member itself,
/// admins, owners and auditors).
#[utoipa::path(get, path = "/v1/members/{id}/health", tag = "security", params(("id" = String, Path)),
    responses((status = 200, body = HealthResponse), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_health(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<HealthResponse>> {
    let ws = auth.workspace_id();
    let member = member_of(&state, ws, &id).await?;
    may_see_member(&auth, member)?;
    let kind = auth.0.workspace.kind;
    let out = state
        .blocking(move |s| {
            let (score, in_force) = refresh_health(s, member)?;
            let security = s.store.member_security(member)?;
            let p = &s.policy.health;
            let inputs = s.store.health_inputs(member, s.now() - i64::from(p.window_days) * DAY_MS)?;
            let days = s.policy.tier(kind).new_account_days;
            let opens = security.created_at + i64::from(days) * DAY_MS;
            let history = s.store.health_history(member, 50)?;
            Ok(HealthResponse {
                member_id: member.to_string(),
                state: in_force.as_str().into(),
                score: score.score,
                computed_state: score.state.as_str().into(),
                reasons: score.reasons.iter().map(HealthReasonWire::from).collect(),
                override_state: security.health_override.as_ref().map(|(st, _)| st.as_str().to_owned()),
                override_reason: security.health_override.map(|(_, r)| r),
                window_days: p.window_days,
                dimensions: serde_json::json!({
                    "login_devices": inputs.devices,
                    "network_changes": inputs.network_changes,
                    "recipients": inputs.recipients,
                    "forwards": inputs.forwards,
                    "deletions": inputs.deletions,
                    "reports": inputs.reports,
                    "payment_risk": inputs.payment_risk,
                    "violations": inputs.violations,
                }),
                cooldown_until: ts_opt(security.cooldown_until.filter(|u| *u > s.now())),
                account_opens_at: (days > 0 && opens > s.now()).then(|| ts(opens)),
                history: history
                    .into_iter()
                    .map(|h| HealthChangeWire {
                        state: h.state,
                        score: h.score,
                        reasons: serde_json::from_str(&h.reasons).unwrap_or_default(),
                        actor: h.actor,
                        at: ts(h.at),
                    })
                    .collect(),
            })
        })
        .await?;
    Ok(Json(out))
}

#[derive(Serialize, ToSchema)]
pub struct LoginWire {
    pub device: String,
    pub network: String,
    pub ip: String,
    /// `trusted`, `abnormal` or `verified`.
    pub state: String,
    pub first_seen: String,
    pub last_seen: String,
    pub verified_by: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SessionResponse {
    pub member_id: String,
    /// This request's device and network, and what they are to the account.
    pub device: String,
    pub network: String,
    pub state: String,
    /// Whether mass send is open as far as logins go.
    pub mass_send_enabled: bool,
    pub logins: Vec<LoginWire>,
}

fn session_response(
    s: &Inner,
    member_id: i64,
    client: &ClientInfo,
    state: Option<LoginState>,
) -> Result<SessionResponse, ApiError> {
    let logins = s.store.logins(member_id)?;
    let enabled = !logins.iter().any(|l| l.state == LoginState::Abnormal);
    Ok(SessionResponse {
        member_id: member_id.to_string(),
        device: client.device.clone(),
        network: network_of(s, client.ip),
        state: state.map_or("unwatched", LoginState::as_str).into(),
        mass_send_enabled: enabled || !s.policy.security.abnormal_login,
        logins: logins
            .into_iter()
            .map(|l| LoginWire {
                device: l.device,
                network: l.network,
                ip: l.ip,
                state: l.state.as_str().into(),
                first_seen: ts(l.first_seen),
                last_seen: ts(l.last_seen),
                verified_by: l.verified_by,
            })
            .collect(),
    })
}

/// Log in: records this request's device (`X-Qunfa-Device`, else the
/// User-Agent) and network for the key's member. A device or network the
/// member never used before is an abnormal login: mass send stays disabled
/// until it is verified (`POST /v1/security/verify`) or an admin unlocks it.
#[utoipa::path(post, path = "/v1/sessions", tag = "security", responses((status = 200, body = SessionResponse)))]
pub async fn login(State(state): State<AppState>, auth: Auth, client: ClientInfo) -> ApiResult<Json<SessionResponse>> {
    let (ws, member) = (auth.workspace_id(), auth.0.member_id);
    let out = state
        .blocking(move |s| {
            let st = observe(s, ws, member, &client)?;
            session_response(s, member, &client, st)
        })
        .await?;
    Ok(Json(out))
}

#[derive(Serialize, ToSchema)]
pub struct LoginCodeResponse {
    /// Six digits, shown once; the member confirms with POST /v1/security/verify.
    pub code: String,
    pub expires_at: String,
}

/// Issue a one-time code that lets a member verify its abnormal logins
/// (admin or owner; not for oneself).
#[utoipa::path(post, path = "/v1/members/{id}/login-code", tag = "security", params(("id" = String, Path)),
    responses((status = 201, body = LoginCodeResponse), (status = 403, body = ErrorBody)))]
pub async fn login_code(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<LoginCodeResponse>)> {
    auth.require(Action::ManageMembers)?;
    let ws = auth.workspace_id();
    let member = member_of(&state, ws, &id).await?;
    if member == auth.0.member_id {
        return Err(ApiError::new(Code::SelfApproval, "a login code must come from another admin or the owner"));
    }
    let actor = auth.0.actor();
    let (code, expires_at) = state
        .blocking(move |s| {
            let code = format!("{:06}", rand::Rng::gen_range(&mut rand::thread_rng(), 0..1_000_000u32));
            let now = s.now();
            let expires_at = now + i64::from(s.policy.security.login_code_minutes) * 60_000;
            s.store.issue_login_code(ws, member, &qunfa_store::secret_hash(&code), &actor, expires_at, now)?;
            Ok((code, expires_at))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(LoginCodeResponse { code, expires_at: ts(expires_at) })))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    pub code: String,
}

/// Verify this login (the device and network of the request) with a one-time code an admin issued; other abnormal logins stay abnormal. Wrong codes void the open ones after the policy's login_code_max_failures.
#[utoipa::path(post, path = "/v1/security/verify", tag = "security", request_body = VerifyRequest,
    responses((status = 200, body = SessionResponse), (status = 422, body = ErrorBody)))]
pub async fn verify(
    State(state): State<AppState>,
    auth: Auth,
    client: ClientInfo,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> ApiResult<Json<SessionResponse>> {
    let (ws, member, actor) = (auth.workspace_id(), auth.0.member_id, auth.0.actor());
    let out = state
        .blocking(move |s| {
            let hash = qunfa_store::secret_hash(req.code.trim());
            let source = login_source(s, &client);
            let max = s.policy.security.login_code_max_failures;
            if !s.store.use_login_code(ws, member, &hash, &source, max, &actor, s.now())? {
                return Err(ApiError::code(Code::LoginCode));
            }
            let st = observe(s, ws, member, &client)?;
            session_response(s, member, &client, st)
        })
        .await?;
    Ok(Json(out))
}

#[derive(Serialize, ToSchema)]
pub struct UnlockResponse {
    /// Abnormal logins now verified.
    pub verified: u64,
}

/// Unlock a member's mass send after abnormal logins (admin or owner; not oneself).
#[utoipa::path(post, path = "/v1/members/{id}/unlock", tag = "security", params(("id" = String, Path)),
    responses((status = 200, body = UnlockResponse), (status = 403, body = ErrorBody)))]
pub async fn unlock(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<UnlockResponse>> {
    auth.require(Action::ManageMembers)?;
    let ws = auth.workspace_id();
    let member = member_of(&state, ws, &id).await?;
    if member == auth.0.member_id {
        return Err(ApiError::new(Code::SelfApproval, "another admin or the owner unlocks an account"));
    }
    let actor = auth.0.actor();
    let verified = state.blocking(move |s| Ok(s.store.unlock_logins(ws, member, &actor, s.now())?)).await?;
    Ok(Json(UnlockResponse { verified }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// `payment` (risk 0 = good … 1 = fraud) or `violation` (value ignored).
    pub dimension: String,
    #[serde(default)]
    pub value: f64,
    #[serde(default)]
    pub note: String,
}

/// Post an external health signal for a member (server admin token): a
/// payment-behaviour risk, or a violation found elsewhere.
#[utoipa::path(post, path = "/v1/admin/members/{id}/signals", tag = "security", params(("id" = String, Path)), request_body = SignalRequest,
    responses((status = 200, body = HealthResponse), (status = 400, body = ErrorBody)))]
pub async fn post_signal(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SignalRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let member = parse_id(&id)?;
    let value = match req.dimension.as_str() {
        "payment" if (0.0..=1.0).contains(&req.value) => req.value,
        "violation" => 1.0,
        _ => return Err(ApiError::new(Code::BadRequest, "dimension is `payment` (value 0–1) or `violation`")),
    };
    if req.note.chars().count() > 500 {
        return Err(ApiError::new(Code::BadRequest, "note: at most 500 characters"));
    }
    let out = state
        .blocking(move |s| {
            s.store.add_health_signal(member, &req.dimension, value, &req.note, "admin", s.now())?;
            let (score, in_force) = refresh_health(s, member)?;
            Ok(serde_json::json!({"member_id": member.to_string(), "state": in_force.as_str(), "score": score.score}))
        })
        .await?;
    Ok(Json(out))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideRequest {
    /// `suspended`, `sandbox`, `watch`, `healthy`, or null to lift the override.
    pub state: Option<String>,
    pub reason: String,
}

/// Set or lift a platform admin's override of a member's health state
/// (server admin token). The reason is shown to the sender.
#[utoipa::path(put, path = "/v1/admin/members/{id}/health", tag = "security", params(("id" = String, Path)), request_body = OverrideRequest,
    responses((status = 200), (status = 400, body = ErrorBody)))]
pub async fn put_override(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<OverrideRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let member = parse_id(&id)?;
    let st =
        match req.state.as_deref() {
            None => None,
            Some(v) => Some(HealthState::parse(v).ok_or_else(|| {
                ApiError::new(Code::BadRequest, "state is healthy, watch, sandbox, suspended or null")
            })?),
        };
    let reason = req.reason.trim().to_owned();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(ApiError::new(Code::BadRequest, "reason: 1 to 500 characters, shown to the sender"));
    }
    let out = state
        .blocking(move |s| {
            s.store.set_health_override(member, st, &reason, "admin", s.now())?;
            let (score, in_force) = refresh_health(s, member)?;
            Ok(serde_json::json!({"member_id": member.to_string(), "state": in_force.as_str(), "score": score.score}))
        })
        .await?;
    Ok(Json(out))
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StagesBody {
    pub stages: Vec<String>,
}

fn check_stages(stages: &[String]) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = Vec::new();
    for s in stages {
        let s = s.trim();
        if s.is_empty() || s.chars().count() > 32 || s.chars().any(char::is_control) || out.iter().any(|o| o == s) {
            return Err(ApiError::new(Code::InvalidReviewChain, format!("stage {s:?}")));
        }
        out.push(s.to_owned());
    }
    if out.len() > 5 {
        return Err(ApiError::new(Code::InvalidReviewChain, "at most 5 stages"));
    }
    Ok(out)
}

/// The workspace's review chain (e.g. business → legal → technical): a send
/// that needs approval needs one approver per stage, in order.
#[utoipa::path(get, path = "/v1/workspace/review-chain", tag = "security", responses((status = 200, body = StagesBody)))]
pub async fn get_review_chain(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<StagesBody>> {
    let ws = auth.workspace_id();
    let stages = state.blocking(move |s| Ok(s.store.review_chain(ws)?)).await?;
    Ok(Json(StagesBody { stages }))
}

/// Set the review chain (admin or owner); an empty list turns it off (then
/// the tier's approval levels count approvers).
#[utoipa::path(put, path = "/v1/workspace/review-chain", tag = "security", request_body = StagesBody,
    responses((status = 200, body = StagesBody), (status = 400, body = ErrorBody)))]
pub async fn put_review_chain(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<StagesBody>,
) -> ApiResult<Json<StagesBody>> {
    auth.require(Action::ManageMembers)?;
    let stages = check_stages(&req.stages)?;
    let (ws, actor) = (auth.workspace_id(), auth.0.actor());
    let stages2 = stages.clone();
    state.blocking(move |s| Ok(s.store.set_review_chain(ws, &stages2, &actor, s.now())?)).await?;
    Ok(Json(StagesBody { stages }))
}

/// Set the stages of the review chain a member may approve (admin or owner;
/// empty: any stage).
#[utoipa::path(put, path = "/v1/members/{id}/review-stages", tag = "security", params(("id" = String, Path)), request_body = StagesBody,
    responses((status = 200, body = StagesBody), (status = 400, body = ErrorBody)))]
pub async fn put_review_stages(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<StagesBody>,
) -> ApiResult<Json<StagesBody>> {
    auth.require(Action::ManageMembers)?;
    let stages = check_stages(&req.stages)?;
    let ws = auth.workspace_id();
    let member = member_of(&state, ws, &id).await?;
    let actor = auth.0.actor();
    let stages2 = stages.clone();
    state.blocking(move |s| Ok(s.store.set_review_stages(ws, member, &stages2, &actor, s.now())?)).await?;
    Ok(Json(StagesBody { stages }))
}

#[derive(Serialize, ToSchema)]
pub struct ApprovalWire {
    pub stage: String,
    pub member_id: String,
    /// `approve` or `reject`.
    pub decision: String,
    pub comment: String,
    pub at: String,
}

#[derive(Serialize, ToSchema)]
pub struct ApprovalsResponse {
    /// The stages the send needs, in order (fixed when it was held).
    pub stages: Vec<String>,
    /// The stage it waits for, if it still waits.
    pub next_stage: Option<String>,
    pub decisions: Vec<ApprovalWire>,
}

/// A broadcast's approval stages and every decision with its comment.
#[utoipa::path(get, path = "/v1/broadcasts/{id}/approvals", tag = "broadcasts", params(("id" = String, Path)),
    responses((status = 200, body = ApprovalsResponse), (status = 404, body = ErrorBody)))]
pub async fn approvals(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<ApprovalsResponse>> {
    let (ws, id) = (auth.workspace_id(), parse_id(&id)?);
    let (a, b) = state.blocking(move |s| Ok((s.store.approvals(ws, id)?, s.store.broadcast(ws, id)?))).await?;
    let waiting = b.state == qunfa_core::broadcast::BroadcastState::PendingApproval;
    Ok(Json(ApprovalsResponse {
        next_stage: waiting.then(|| a.next_stage().map(str::to_owned)).flatten(),
        stages: a.stages.clone(),
        decisions: a
            .decisions
            .into_iter()
            .map(|d| ApprovalWire {
                stage: d.stage,
                member_id: d.member_id.to_string(),
                decision: d.decision,
                comment: d.comment,
                at: ts(d.at),
            })
            .collect(),
    }))
}

/// The stages a held send needs: the workspace's review chain when it has
/// one, else one generic stage per approver the tier's levels ask for (at
/// least one: a held send always needs someone).
pub fn approval_stages(s: &Inner, kind: WorkspaceKind, ws: i64, n_recipients: u64) -> Result<Vec<String>, ApiError> {
    let chain = s.store.review_chain(ws)?;
    if !chain.is_empty() {
        return Ok(chain);
    }
    let n = s.policy.tier(kind).approvers_needed(n_recipients).max(1);
    Ok((1..=n).map(|i| format!("level-{i}")).collect())
}
