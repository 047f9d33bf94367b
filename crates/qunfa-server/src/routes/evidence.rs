//! The evidence bundle of a broadcast, as a file download: content, frozen
//! audience, verdicts, reviews, approvals, delivery log, reports and the
//! audit chain range that proves them (`qunfa_store::evidence`, docs/evidence.md).

use axum::{
    extract::{Path, State},
    http::header,
    response::{IntoResponse, Response},
};
use qunfa_core::workspace::Action;
use serde::Serialize;
use utoipa::ToSchema;

use super::parse_id;
use crate::{
    error::{ApiResult, ErrorBody},
    extract::Auth,
    AppState,
};

/// The bundle's top level (format `qunfa-evidence/1`; every field is
/// described in docs/evidence.md). Times are Unix milliseconds, ids are
/// decimal strings. The file is canonical JSON with `bundle_sha256` as its
/// last member.
#[derive(Serialize, ToSchema)]
pub struct EvidenceBundle {
    /// `qunfa-evidence/1`.
    pub format: String,
    pub exported_at: i64,
    /// `{id, kind, name}`.
    #[schema(value_type = Object)]
    pub workspace: serde_json::Value,
    /// The broadcast row: state, audience as named, channels, priority, timestamps, counts.
    #[schema(value_type = Object)]
    pub broadcast: serde_json::Value,
    /// The content, parsed from `content_json`.
    #[schema(value_type = Object)]
    pub content: serde_json::Value,
    /// The content exactly as stored (what `broadcast.created` hashed).
    pub content_json: String,
    pub content_sha256: String,
    /// `{bitmap, contact_ids, count, external_ids, sha256}`: the frozen audience.
    #[schema(value_type = Object)]
    pub audience: serde_json::Value,
    /// The verdicts recorded when the broadcast was submitted.
    #[schema(value_type = Object)]
    pub verdicts: serde_json::Value,
    #[schema(value_type = Vec<Object>)]
    pub approvals: serde_json::Value,
    /// The content check's reviews.
    #[schema(value_type = Vec<Object>)]
    pub reviews: serde_json::Value,
    /// `{columns, rows}`: one row per delivery record (no rendered bodies).
    #[schema(value_type = Object)]
    pub deliveries: serde_json::Value,
    #[schema(value_type = Vec<Object>)]
    pub reports: serde_json::Value,
    /// `{entries, head}`: the workspace's chain from the broadcast's first entry to the head.
    #[schema(value_type = Object)]
    pub audit: serde_json::Value,
    /// SHA-256 of the canonical form of everything else.
    pub bundle_sha256: String,
}

/// A broadcast's evidence bundle, as a file (auditors, admins, owners).
///
/// Read in one snapshot. The export is then audited (`broadcast.evidence_exported`
/// with the bundle's hash) after the snapshot, so that entry is in the next
/// export, not this one. Verify a file offline with `qunfa evidence verify`.
#[utoipa::path(get, path = "/v1/broadcasts/{id}/evidence", tag = "broadcasts", params(("id" = String, Path)),
    responses((status = 200, description = "The bundle, as an attachment `qunfa-evidence-{id}.json`; header `x-qunfa-bundle-sha256` repeats its hash",
                content_type = "application/json", body = EvidenceBundle),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn evidence(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Response> {
    auth.require(Action::Audit)?;
    let id = parse_id(&id)?;
    let (ws, actor) = (auth.workspace_id(), auth.0.actor());
    let (bundle, summary) = state
        .blocking(move |s| {
            let now = s.now();
            let mut bundle = Vec::new();
            let summary = s.store.export_evidence(ws, id, now, &mut bundle)?;
            s.store.record_evidence_export(ws, id, &summary, &actor, now)?;
            Ok((bundle, summary))
        })
        .await?;
    tracing::info!(
        workspace_id = ws,
        broadcast_id = id,
        bytes = summary.bytes,
        recipients = summary.n_recipients,
        deliveries = summary.n_deliveries,
        "evidence exported"
    );
    let headers = [
        (header::CONTENT_TYPE, "application/json".to_owned()),
        (header::CONTENT_DISPOSITION, format!("attachment; filename=\"qunfa-evidence-{id}.json\"")),
        (header::HeaderName::from_static("x-qunfa-bundle-sha256"), summary.bundle_sha256),
    ];
    Ok((headers, bundle).into_response())
}
