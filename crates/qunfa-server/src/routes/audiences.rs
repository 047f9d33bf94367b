//! Audience expressions: counting while the operator types, and the checks
//! every expression passes before a broadcast may use it.

use axum::{extract::State, Json};
use qunfa_audience::{
    expr::{self, Expr},
    index::{ResolveError, ResolveErrorKind},
};
use qunfa_core::{preflight::AudienceShape, workspace::Action, Code};

use crate::{
    error::{ApiError, ApiResult, ErrorBody},
    extract::{ApiJson, Auth},
    wire::{CountRequest, CountResponse},
    AppState, Inner,
};

fn resolve_error(e: ResolveError) -> ApiError {
    let code = match e.kind {
        ResolveErrorKind::UnknownTag => Code::AudienceUnknownTag,
        ResolveErrorKind::UnknownDepartment => Code::AudienceUnknownDepartment,
        ResolveErrorKind::UnknownAttribute => Code::AudienceUnknownAttribute,
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
    let e = expr::parse(src).map_err(|e| ApiError::new(Code::AudienceSyntax, e.message).at(e.pos, e.hint))?;
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
            let e = compile(s, ws, &req.expr)?;
            let t = std::time::Instant::now();
            let now = qunfa_store::now_millis();
            let n = s.store.with_audience(ws, |index| index.evaluate(&e, now))?.map_err(resolve_error)?.len();
            Ok(CountResponse { count: n, took_ms: t.elapsed().as_secs_f64() * 1000.0 })
        })
        .await?;
    Ok(Json(out))
}
