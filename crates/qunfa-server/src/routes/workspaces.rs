//! Workspaces and members.

use axum::{extract::State, http::StatusCode, Json};
use qunfa_core::workspace::{Action, Name, Role, WorkspaceKind};

use crate::{
    error::{ApiError, ApiResult, ErrorBody},
    extract::{Admin, ApiJson, Auth},
    wire::*,
    AppState,
};

/// Create a workspace (server admin token). Answers with the owner's API key.
#[utoipa::path(post, path = "/v1/workspaces", tag = "workspaces", request_body = CreateWorkspaceRequest,
    responses((status = 201, body = CreateWorkspaceResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn create_workspace(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(req): ApiJson<CreateWorkspaceRequest>,
) -> ApiResult<(StatusCode, Json<CreateWorkspaceResponse>)> {
    let name = Name::parse(&req.name)?;
    let kind = WorkspaceKind::parse(&req.kind)?;
    let plan = req.plan.filter(|p| !p.is_empty());
    let (w, key) = state
        .blocking(move |s| {
            qunfa_store::Store::check_plan(s.policy.tier(kind), plan.as_deref())?;
            Ok(s.store.create_workspace(&name, kind, plan.as_deref(), "admin", s.now())?)
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreateWorkspaceResponse {
            id: w.id.to_string(),
            name: w.name,
            kind: w.kind.as_str().into(),
            plan: w.plan,
            member_id: key.member_id.to_string(),
            api_key: key.secret,
        }),
    ))
}

/// The workspace of the calling key.
#[utoipa::path(get, path = "/v1/workspace", tag = "workspaces", responses((status = 200, body = WorkspaceResponse)))]
pub async fn current_workspace(auth: Auth) -> Json<WorkspaceResponse> {
    let a = auth.0;
    Json(WorkspaceResponse {
        id: a.workspace.id.to_string(),
        name: a.workspace.name,
        kind: a.workspace.kind.as_str().into(),
        plan: a.workspace.plan,
        created_at: ts(a.workspace.created_at),
        member_id: a.member_id.to_string(),
        role: a.role.as_str().into(),
    })
}

/// Add a member (a sender account, reviewer, auditor…) with its own API key.
#[utoipa::path(post, path = "/v1/members", tag = "workspaces", request_body = CreateMemberRequest,
    responses((status = 201, body = MemberResponse), (status = 403, body = ErrorBody)))]
pub async fn create_member(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<CreateMemberRequest>,
) -> ApiResult<(StatusCode, Json<MemberResponse>)> {
    auth.require(Action::ManageMembers)?;
    let name = Name::parse(&req.name)?;
    let role = Role::parse(&req.role)?;
    if !auth.0.role.may_grant(role) {
        return Err(ApiError::new(
            qunfa_core::Code::Forbidden,
            format!("a {} may not create a {}", auth.0.role.as_str(), role.as_str()),
        ));
    }
    let now = state.now();
    let created_at = match req.account_created_at.as_deref() {
        None => now,
        Some(s) => parse_ts(s).filter(|t| *t <= now).ok_or_else(|| {
            ApiError::new(qunfa_core::Code::BadRequest, "account_created_at must be an RFC 3339 time in the past")
        })?,
    };
    let (ws, actor) = (auth.workspace_id(), auth.0.actor());
    let (m, key) =
        state.blocking(move |s| Ok(s.store.create_member(ws, &name, role, created_at, &actor, now)?)).await?;
    Ok((
        StatusCode::CREATED,
        Json(MemberResponse {
            id: m.id.to_string(),
            name: m.name,
            role: m.role.as_str().into(),
            created_at: ts(m.created_at),
            api_key: Some(key.secret),
        }),
    ))
}

/// Members of the workspace.
#[utoipa::path(get, path = "/v1/members", tag = "workspaces", responses((status = 200, body = Vec<MemberResponse>)))]
pub async fn list_members(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<Vec<MemberResponse>>> {
    auth.require(Action::Read)?;
    let ws = auth.workspace_id();
    let members = state.blocking(move |s| Ok(s.store.members(ws)?)).await?;
    Ok(Json(
        members
            .into_iter()
            .map(|m| MemberResponse {
                id: m.id.to_string(),
                name: m.name,
                role: m.role.as_str().into(),
                created_at: ts(m.created_at),
                api_key: None,
            })
            .collect(),
    ))
}

/// The workspace's speed level (like the Official Account's speed/get):
/// 0 fastest … 4 slowest, in recipients per minute from the policy; `null`
/// sends unthrottled.
#[utoipa::path(get, path = "/v1/speed", tag = "workspaces", responses((status = 200, body = SpeedLevel)))]
pub async fn get_speed(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<SpeedLevel>> {
    auth.require(Action::Read)?;
    let ws = auth.workspace_id();
    let level = state.blocking(move |s| Ok(s.store.speed_level(ws)?)).await?;
    Ok(Json(SpeedLevel { level, per_minute: level.and_then(|l| state.policy.delivery.speed_level(l)) }))
}

/// Set the speed level (admin or owner). It applies to broadcasts in flight
/// at once, both slower and faster.
#[utoipa::path(put, path = "/v1/speed", tag = "workspaces", request_body = SpeedLevel,
    responses((status = 200, body = SpeedLevel), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn set_speed(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<SpeedLevel>,
) -> ApiResult<Json<SpeedLevel>> {
    auth.require(Action::ManageMembers)?;
    let per_minute = match req.level {
        None => None,
        Some(l) => Some(state.policy.delivery.speed_level(l).ok_or_else(|| {
            ApiError::new(qunfa_core::Code::BadRequest, "the speed level is 0 (fastest) to 4 (slowest), or null")
        })?),
    };
    let (ws, actor, level) = (auth.workspace_id(), auth.0.actor(), req.level);
    state.blocking(move |s| Ok(s.store.set_speed_level(ws, level, &actor, s.now())?)).await?;
    state.engine.wake();
    Ok(Json(SpeedLevel { level, per_minute }))
}
