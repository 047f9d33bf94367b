//! Audience expressions: counting while the operator types, and the checks
//! every expression passes before a broadcast may use it.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use qunfa_audience::{
    expr::{self, Expr, SegmentError},
    index::{ResolveError, ResolveErrorKind},
};
use qunfa_core::{preflight::AudienceShape, workspace::Action, Code};

use crate::{
    error::{ApiError, ApiResult, ErrorBody},
    extract::{ApiJson, Auth},
    wire::{CountRequest, CountResponse, SampleContact, SegmentRequest, SegmentResponse},
    AppState, Inner,
};

/// Contacts shown with a count unless the request says otherwise, and the most.
const DEFAULT_SAMPLE: u32 = 5;
const MAX_SAMPLE: u32 = 50;

/// `k` ranks spread evenly over `0..n` (all of them when `n <= k`).
fn spread(n: u64, k: u64) -> Vec<u64> {
    if n <= k {
        return (0..n).collect();
    }
    (0..k).map(|i| i * n / k).collect()
}

pub fn resolve_error(e: ResolveError) -> ApiError {
    let code = match e.kind {
        ResolveErrorKind::UnknownTag => Code::AudienceUnknownTag,
        ResolveErrorKind::UnknownDepartment => Code::AudienceUnknownDepartment,
        ResolveErrorKind::UnknownAttribute => Code::AudienceUnknownAttribute,
        ResolveErrorKind::UnknownSegment => Code::AudienceUnknownSegment,
        ResolveErrorKind::ForeignContact => Code::NotFound,
    };
    let hint = match e.suggestions.as_slice() {
        [] => code.hint().to_owned(),
        s => format!("Did you mean {}?", s.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(" or ")),
    };
    ApiError::new(code, e.message)
        .with_details(e.suggestions.into_iter().map(serde_json::Value::String).collect())
        .at(e.pos, hint)
}

/// Parses an expression and checks every name in it against the workspace.
///
/// # Errors
/// `QF-AUDIENCE-SYNTAX` with the position, `QF-AUDIENCE-UNKNOWN-*` with
/// suggestions, `QF-NOT-FOUND` for another workspace's contact ids.
pub fn compile(s: &Inner, workspace_id: i64, src: &str) -> Result<Expr, ApiError> {
    let mut e = expr::parse(src).map_err(|e| ApiError::new(Code::AudienceSyntax, e.message).at(e.pos, e.hint))?;
    if let Err(err) = s.store.expand_segments(workspace_id, &mut e)? {
        return Err(match err {
            SegmentError::Unknown { name, pos } => {
                let names: Vec<String> = s.store.segments(workspace_id)?.into_iter().map(|s| s.name).collect();
                let suggestions = qunfa_audience::index::nearest(&name, names.iter().map(String::as_str));
                resolve_error(ResolveError {
                    kind: ResolveErrorKind::UnknownSegment,
                    pos,
                    message: format!("there is no segment {name:?}"),
                    suggestions,
                })
            }
            SegmentError::Broken { name, pos, error } => ApiError::new(
                Code::AudienceSyntax,
                format!("segment {name:?} does not parse: {} (at {})", error.message, error.pos),
            )
            .at(pos, "fix or delete the saved segment"),
            SegmentError::TooDeep { name, pos } => ApiError::new(
                Code::AudienceSyntax,
                format!("segment {name:?} uses segments more than 8 deep (a segment that uses itself?)"),
            )
            .at(pos, "make the segments not refer to each other in a circle"),
        });
    }
    s.store.with_audience(workspace_id, |index| index.check(&e))?.map_err(resolve_error)?;
    Ok(e)
}

/// What the tier rules see of an expression: the simple forms are what they
/// look like; anything else is a combination.
pub fn shape_of(e: &Expr) -> AudienceShape {
    match e {
        Expr::All => AudienceShape::All,
        Expr::Tag { .. } => AudienceShape::Tag,
        Expr::Dept { .. } => AudienceShape::Department,
        Expr::Ids(ids) => AudienceShape::Contacts { n_ids: ids.len() },
        Expr::Or(parts) if parts.iter().all(|p| matches!(p, Expr::Tag { .. })) => {
            AudienceShape::Tags { n_tags: parts.len() }
        }
        e => AudienceShape::Expression { n_terms: e.n_terms() },
    }
}

fn segment_response(s: &Inner, ws: i64, r: qunfa_store::segments::SegmentRecord) -> Result<SegmentResponse, ApiError> {
    let count = match compile(s, ws, &r.expr) {
        Ok(e) => s.store.with_audience(ws, |i| i.count(&e, s.now()))?.unwrap_or(0),
        Err(_) => 0, // a name it uses is gone; sending to it is refused with the reason
    };
    Ok(SegmentResponse {
        id: r.id.to_string(),
        name: r.name,
        expr: r.expr,
        count,
        created_at: crate::wire::ts(r.created_at),
    })
}

/// Save a segment: a named audience expression, evaluated whenever it is used
/// (`segment:NAME` in expressions, `audience: {"segment": …}` in broadcasts).
#[utoipa::path(post, path = "/v1/segments", tag = "audiences", request_body = SegmentRequest,
    responses((status = 201, body = SegmentResponse), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_segment(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<SegmentRequest>,
) -> ApiResult<(StatusCode, Json<SegmentResponse>)> {
    auth.require(Action::ManageContacts)?;
    let name = req.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::new(Code::InvalidName, "a segment name has 1 to 64 characters"));
    }
    let (ws, actor) = (auth.workspace_id(), auth.0.actor());
    let out = state
        .blocking(move |s| {
            compile(s, ws, &req.expr)?;
            let r = s.store.create_segment(ws, &name, &req.expr, &actor, s.now())?;
            segment_response(s, ws, r)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(out)))
}

/// Every saved segment, with how many contacts each selects now.
#[utoipa::path(get, path = "/v1/segments", tag = "audiences", responses((status = 200, body = Vec<SegmentResponse>)))]
pub async fn list_segments(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<Vec<SegmentResponse>>> {
    auth.require(Action::Read)?;
    let ws = auth.workspace_id();
    let out = state
        .blocking(move |s| s.store.segments(ws)?.into_iter().map(|r| segment_response(s, ws, r)).collect())
        .await?;
    Ok(Json(out))
}

/// One saved segment.
#[utoipa::path(get, path = "/v1/segments/{id}", tag = "audiences", params(("id" = String, Path)),
    responses((status = 200, body = SegmentResponse), (status = 404, body = ErrorBody)))]
pub async fn get_segment(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<SegmentResponse>> {
    auth.require(Action::Read)?;
    let (ws, id) = (auth.workspace_id(), super::parse_id(&id)?);
    Ok(Json(state.blocking(move |s| segment_response(s, ws, s.store.segment(ws, id)?)).await?))
}

/// Delete a saved segment.
#[utoipa::path(delete, path = "/v1/segments/{id}", tag = "audiences", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_segment(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(Action::ManageContacts)?;
    let (ws, id, actor) = (auth.workspace_id(), super::parse_id(&id)?, auth.0.actor());
    state.blocking(move |s| Ok(s.store.delete_segment(ws, id, &actor, s.now())?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Counts the live contacts an audience expression selects, now.
#[utoipa::path(post, path = "/v1/audiences/count", tag = "audiences", request_body = CountRequest,
    responses((status = 200, body = CountResponse), (status = 400, body = ErrorBody)))]
pub async fn count(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<CountRequest>,
) -> ApiResult<Json<CountResponse>> {
    auth.require(Action::Read)?;
    let ws = auth.workspace_id();
    let out = state
        .blocking(move |s| {
            let wanted = req.sample.unwrap_or(DEFAULT_SAMPLE);
            if wanted > MAX_SAMPLE {
                return Err(ApiError::new(
                    Code::BadRequest,
                    format!("sample: at most {MAX_SAMPLE} contacts, not {wanted}"),
                ));
            }
            let e = compile(s, ws, &req.expr)?;
            let t = std::time::Instant::now();
            let now = s.now();
            let matched = s.store.with_audience(ws, |index| index.evaluate(&e, now))?.map_err(resolve_error)?;
            let took_ms = t.elapsed().as_secs_f64() * 1000.0;
            let count = matched.cardinality();
            let picks = spread(count, u64::from(wanted));
            let idxs: Vec<u32> = picks.iter().filter_map(|&rank| matched.select(rank as u32)).collect();
            let sample = s
                .store
                .contacts_among(ws, &idxs)?
                .into_iter()
                .map(|c| SampleContact {
                    id: super::contact_id(ws, c.idx),
                    external_id: c.external_id,
                    name: c.name,
                    attributes: c.attributes,
                })
                .collect();
            Ok(CountResponse { count, sample, took_ms })
        })
        .await?;
    Ok(Json(out))
}
