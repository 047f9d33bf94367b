//! Tags and departments.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use qunfa_core::{
    tag::TagPath,
    workspace::{Action, Name, WorkspaceKind},
    Code,
};
use qunfa_store::tags::TagRecord;

use super::{parse_contact_ids, parse_id};
use crate::{
    error::{ApiError, ApiResult, ErrorBody},
    extract::{ApiJson, Auth},
    wire::*,
    AppState,
};

fn tag_response(t: TagRecord) -> TagResponse {
    TagResponse {
        id: t.id.to_string(),
        path: t.path,
        parent_id: t.parent_id.map(|p| p.to_string()),
        n_contacts: t.n_contacts,
        created_at: ts(t.created_at),
        last_used_at: ts_opt(t.last_used_at),
    }
}

/// Create a tag. Enterprise tags nest up to three levels (`a/b/c`); missing parents are created.
#[utoipa::path(post, path = "/v1/tags", tag = "tags", request_body = TagRequest,
    responses((status = 201, body = TagResponse), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_tag(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<TagRequest>,
) -> ApiResult<(StatusCode, Json<TagResponse>)> {
    auth.require(Action::ManageContacts)?;
    let path = TagPath::parse(&req.path)
        .map_err(|code| ApiError::new(code, format!("{:?}: {}", req.path, code.message_en())))?;
    let (ws, kind, actor) = (auth.workspace_id(), auth.0.workspace.kind, auth.0.actor());
    let tag = state.blocking(move |s| Ok(s.store.create_tag(ws, s.policy.tier(kind), &path, &actor, s.now())?)).await?;
    Ok((StatusCode::CREATED, Json(tag_response(tag))))
}

/// Every tag, by path.
#[utoipa::path(get, path = "/v1/tags", tag = "tags", responses((status = 200, body = Vec<TagResponse>)))]
pub async fn list_tags(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<Vec<TagResponse>>> {
    auth.require(Action::Read)?;
    let ws = auth.workspace_id();
    let tags = state.blocking(move |s| Ok(s.store.tags(ws)?)).await?;
    Ok(Json(tags.into_iter().map(tag_response).collect()))
}

async fn tag_members(
    state: AppState,
    auth: Auth,
    id: String,
    req: TagMembersRequest,
    add: bool,
) -> ApiResult<Json<ChangedResponse>> {
    auth.require(Action::ManageContacts)?;
    let ws = auth.workspace_id();
    let tag_id = parse_id(&id)?;
    let contact_ids = match (req.contact_ids, req.expr) {
        (Some(ids), None) => ids,
        (None, Some(src)) => {
            // Bulk tagging: everyone the expression selects now.
            let (kind, actor) = (auth.0.workspace.kind, auth.0.actor());
            let changed = state
                .blocking(move |s| {
                    let e = super::audiences::compile(s, ws, &src)?;
                    let now = s.now();
                    let ids =
                        s.store.with_audience(ws, |i| i.evaluate(&e, now))?.map_err(super::audiences::resolve_error)?;
                    Ok(s.store.tag_members_matching(ws, s.policy.tier(kind), tag_id, &ids, add, &src, &actor, now)?)
                })
                .await?;
            return Ok(Json(ChangedResponse { changed }));
        }
        _ => return Err(ApiError::new(Code::BadRequest, "give exactly one of contact_ids or expr")),
    };
    let req = ContactIdsRequest { contact_ids };
    if req.contact_ids.len() > state.policy.api_batch_max {
        return Err(ApiError::new(
            Code::ApiBatchTooLarge,
            format!("at most {} contact ids per request", state.policy.api_batch_max),
        ));
    }
    let idxs = parse_contact_ids(ws, &req.contact_ids)?;
    let (kind, actor) = (auth.0.workspace.kind, auth.0.actor());
    let changed = state
        .blocking(move |s| {
            Ok({
                let change = if add {
                    qunfa_store::tags::MembershipChange::Add(&idxs)
                } else {
                    qunfa_store::tags::MembershipChange::Remove(&idxs)
                };
                s.store.tag_members(ws, s.policy.tier(kind), tag_id, change, &actor, s.now())
            }?)
        })
        .await?;
    Ok(Json(ChangedResponse { changed }))
}

/// Tag contacts: picked ones, or everyone an expression selects (`{"expr": "…"}`).
#[utoipa::path(post, path = "/v1/tags/{id}/members", tag = "tags", params(("id" = String, Path)), request_body = TagMembersRequest,
    responses((status = 200, body = ChangedResponse), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn add_tag_members(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<TagMembersRequest>,
) -> ApiResult<Json<ChangedResponse>> {
    tag_members(state, auth, id, req, true).await
}

/// Untag contacts: picked ones, or everyone an expression selects.
#[utoipa::path(delete, path = "/v1/tags/{id}/members", tag = "tags", params(("id" = String, Path)), request_body = TagMembersRequest,
    responses((status = 200, body = ChangedResponse), (status = 404, body = ErrorBody)))]
pub async fn remove_tag_members(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<TagMembersRequest>,
) -> ApiResult<Json<ChangedResponse>> {
    tag_members(state, auth, id, req, false).await
}

/// The tag report: every tag's size (with sub-tags), last use, and whether it is dormant.
#[utoipa::path(get, path = "/v1/tags/report", tag = "tags", params(TagReportQuery), responses((status = 200, body = TagReport)))]
pub async fn tag_report(
    State(state): State<AppState>,
    auth: Auth,
    axum::extract::Query(q): axum::extract::Query<TagReportQuery>,
) -> ApiResult<Json<TagReport>> {
    auth.require(Action::Read)?;
    let ws = auth.workspace_id();
    let days = q.dormant_days.unwrap_or(90).clamp(1, 36_500);
    let lines = state.blocking(move |s| Ok(s.store.tag_report(ws, s.now(), days)?)).await?;
    let items: Vec<TagReportItem> = lines
        .into_iter()
        .map(|l| TagReportItem {
            id: l.id.to_string(),
            path: l.path,
            n_contacts: l.n_contacts,
            size: l.size,
            created_at: ts(l.created_at),
            last_used_at: ts_opt(l.last_used_at),
            dormant: l.dormant,
        })
        .collect();
    Ok(Json(TagReport { dormant_days: days, n_dormant: items.iter().filter(|i| i.dormant).count(), items }))
}

/// Create a department (enterprise workspaces).
#[utoipa::path(post, path = "/v1/departments", tag = "departments", request_body = DepartmentRequest,
    responses((status = 201, body = DepartmentResponse), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_department(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<DepartmentRequest>,
) -> ApiResult<(StatusCode, Json<DepartmentResponse>)> {
    auth.require(Action::ManageContacts)?;
    if !state.policy.tier(auth.0.workspace.kind).departments {
        return Err(ApiError::code(Code::DepartmentNotAllowed));
    }
    let name = Name::parse(&req.name)
        .map_err(|_| ApiError::new(Code::InvalidDepartment, "a department name has 1 to 128 characters"))?;
    let parent =
        match req.parent_id.as_deref() {
            None => None,
            Some(p) => Some(p.parse::<i64>().map_err(|_| {
                ApiError::new(Code::InvalidDepartment, format!("parent_id {p:?} is not a department id"))
            })?),
        };
    let (ws, actor) = (auth.workspace_id(), auth.0.actor());
    let d = state.blocking(move |s| Ok(s.store.create_department(ws, &name, parent, &actor, s.now())?)).await?;
    Ok((
        StatusCode::CREATED,
        Json(DepartmentResponse {
            id: d.id.to_string(),
            name: d.name,
            parent_id: d.parent_id.map(|p| p.to_string()),
            n_contacts: 0,
            children: vec![],
        }),
    ))
}

/// The department tree.
#[utoipa::path(get, path = "/v1/departments", tag = "departments", responses((status = 200, body = Vec<DepartmentResponse>)))]
pub async fn list_departments(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<Vec<DepartmentResponse>>> {
    auth.require(Action::Read)?;
    let ws = auth.workspace_id();
    let all = state.blocking(move |s| Ok(s.store.departments(ws)?)).await?;
    fn build(all: &[qunfa_store::tags::DepartmentRecord], parent: Option<i64>) -> Vec<DepartmentResponse> {
        all.iter()
            .filter(|d| d.parent_id == parent)
            .map(|d| DepartmentResponse {
                id: d.id.to_string(),
                name: d.name.clone(),
                parent_id: d.parent_id.map(|p| p.to_string()),
                n_contacts: d.n_contacts,
                children: build(all, Some(d.id)),
            })
            .collect()
    }
    Ok(Json(build(&all, None)))
}

/// Put contacts in a department.
#[utoipa::path(post, path = "/v1/departments/{id}/members", tag = "departments", params(("id" = String, Path)), request_body = ContactIdsRequest,
    responses((status = 200, body = ChangedResponse), (status = 404, body = ErrorBody)))]
pub async fn add_department_members(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ContactIdsRequest>,
) -> ApiResult<Json<ChangedResponse>> {
    auth.require(Action::ManageContacts)?;
    if auth.0.workspace.kind != WorkspaceKind::Enterprise && !state.policy.tier(auth.0.workspace.kind).departments {
        return Err(ApiError::code(Code::DepartmentNotAllowed));
    }
    let ws = auth.workspace_id();
    let dept = parse_id(&id)?;
    if req.contact_ids.len() > state.policy.api_batch_max {
        return Err(ApiError::new(
            Code::ApiBatchTooLarge,
            format!("at most {} contact ids per request", state.policy.api_batch_max),
        ));
    }
    let idxs = parse_contact_ids(ws, &req.contact_ids)?;
    let actor = auth.0.actor();
    let changed = state.blocking(move |s| Ok(s.store.department_members(ws, dept, &idxs, &actor, s.now())?)).await?;
    Ok(Json(ChangedResponse { changed }))
}
