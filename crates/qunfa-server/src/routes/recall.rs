//! The signature of enterprise messages, recall, and correction notices
//! (docs/recall.md). The recipient's block and forward are inbox routes.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use qunfa_core::{
    message::{Content, RawContent},
    workspace::{Action, Role},
    Code,
};
use qunfa_store::{broadcasts::BroadcastRecord, json::content_to_json, workspaces::Workspace};

use super::{
    broadcasts::{broadcast_response, content_error, submit, SendContext},
    parse_id,
};
use crate::{
    error::{ApiError, ApiResult, ErrorBody},
    extract::{ApiJson, Auth},
    wire::*,
    AppState, Inner,
};

/// The content as stored for a workspace: with its tier's signature at the
/// end when the tier has one (enterprise: "来自{name}", `{name}` the
/// workspace's name). What is stored is what every channel delivers, what
/// the content check reads and what the text limit counts, so the text with
/// its signature must fit the tier's limit.
///
/// # Errors
/// `QF-CONTENT-TOO-LONG` when the text fits only without the signature.
pub(crate) fn signed_content(s: &Inner, workspace: &Workspace, content: &Content) -> Result<RawContent, ApiError> {
    let tier = s.policy.tier(workspace.kind);
    let Some(template) = tier.signature.as_deref().filter(|t| !t.trim().is_empty()) else {
        return Ok(content.to_raw());
    };
    let signature = template.replace("{name}", &workspace.name);
    let raw = content.signed(&signature);
    match Content::parse(&raw, tier.text_max_chars) {
        Ok(_) => Ok(raw),
        Err(Code::TextTooLong) => {
            let limit = tier.text_max_chars;
            let longest = [&raw.text, &raw.caption, &raw.description]
                .iter()
                .filter_map(|t| t.as_ref())
                .map(|t| t.chars().count())
                .max()
                .unwrap_or(0);
            Err(ApiError::new(
                Code::TextTooLong,
                format!(
                    "with the workspace's signature {signature:?} the text has {longest} characters; this workspace allows {limit}, signature included"
                ),
            )
            .with_details(vec![serde_json::json!({"limit": limit, "actual": longest, "signature": signature})]))
        }
        Err(code) => {
            Err(ApiError::new(code, format!("the content with the signature {signature:?}: {}", code.message_en())))
        }
    }
}

/// Only the broadcast's own sender, an admin or the owner may recall or correct it.
fn may_change(role: Role, member_id: i64, b: &BroadcastRecord, what: &str) -> Result<(), ApiError> {
    if b.member_id == member_id || matches!(role, Role::Owner | Role::Admin) {
        Ok(())
    } else {
        Err(ApiError::new(Code::Forbidden, format!("only the broadcast's sender, an admin or the owner may {what} it")))
    }
}

/// What a recall did.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RecallResponse {
    /// The broadcast now (`recalled_at` set; `counts.recalled` the deliveries stopped).
    pub broadcast: BroadcastResponse,
    /// Inbox messages delivered before the recall: recipients now see them
    /// as recalled, whether they had read them or not.
    pub inbox_hidden: u64,
    /// Messages external channels (email, webhook, SMS, WeCom) had already
    /// sent: they cannot be taken back.
    pub external_sent: u64,
    /// Messages of external batches being sent at the moment of the recall:
    /// they may still arrive.
    pub external_in_flight: u64,
    /// Deliveries the recall stopped (records `recalled`).
    pub cancelled: u64,
}

/// Recall a sent message (its sender, an admin or the owner): within the
/// tier's `recall_seconds` of dispatch (personal: 2 minutes). Deliveries not
/// made yet are stopped; inbox copies show as recalled, read or not;
/// external channels cannot take back what they sent (counted in the answer).
/// Enterprise workspaces cannot recall (`QF-RECALL-NOT-ALLOWED`): they send a
/// correction notice. After the window: `QF-RECALL-WINDOW`. Twice: 409.
#[utoipa::path(post, path = "/v1/broadcasts/{id}/recall", tag = "broadcasts", params(("id" = String, Path)),
    responses((status = 200, body = RecallResponse), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn recall(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<RecallResponse>> {
    auth.require(Action::Send)?;
    let (ws, id, kind, actor) = (auth.workspace_id(), parse_id(&id)?, auth.0.workspace.kind, auth.0.actor());
    let (role, member_id) = (auth.0.role, auth.0.member_id);
    let (report, b) =
        state.blocking(move |s| recall_now(s, &Recaller { kind, role, member_id, actor: &actor }, ws, id)).await?;
    Ok(Json(RecallResponse {
        broadcast: broadcast_response(b),
        inbox_hidden: report.inbox_hidden,
        external_sent: report.external_sent,
        external_in_flight: report.external_in_flight,
        cancelled: report.cancelled,
    }))
}

/// Who recalls: the workspace's tier, the member's role and id, the audit actor.
#[derive(Clone, Copy)]
pub(crate) struct Recaller<'a> {
    pub kind: qunfa_core::workspace::WorkspaceKind,
    pub role: Role,
    pub member_id: i64,
    pub actor: &'a str,
}

/// The one recall of `POST /v1/broadcasts/{id}/recall` and of the
/// WeChat-compatible API (`message/recall`, `message/mass/delete`): only the
/// sender, an admin or the owner; within the tier's window of the dispatch.
///
/// # Errors
/// `QF-AUTH-FORBIDDEN`, `QF-RECALL-NOT-ALLOWED`, `QF-RECALL-WINDOW`,
/// `QF-STATE-CONFLICT` (never sent, or recalled already), database errors.
pub(crate) fn recall_now(
    s: &Inner,
    who: &Recaller<'_>,
    ws: i64,
    id: i64,
) -> Result<(qunfa_store::recall::RecallReport, BroadcastRecord), ApiError> {
    let kind = who.kind;
    let b = s.store.broadcast(ws, id)?;
    may_change(who.role, who.member_id, &b, "recall")?;
    let Some(dispatched_at) = b.dispatched_at else {
        return Err(ApiError::new(
            Code::Conflict,
            format!("the broadcast is {}: nothing was sent to recall", b.state.as_str()),
        ));
    };
    let Some(window) = s.policy.tier(who.kind).recall_seconds else {
        return Err(ApiError::new(
            Code::RecallNotAllowed,
            format!(
                "{} workspaces cannot recall a sent message; send a correction notice to the same recipients: POST /v1/broadcasts/{id}/correction",
                kind.as_str()
            ),
        )
        .with_details(vec![serde_json::json!({
            "kind": kind.as_str(),
            "correction": format!("/v1/broadcasts/{id}/correction"),
        })]));
    };
    if let Some(at) = b.recalled_at {
        return Err(ApiError::new(Code::Conflict, format!("the broadcast was recalled at {}", ts(at))));
    }
    let now = s.now();
    let elapsed_seconds = (now - dispatched_at).max(0) / 1000;
    if now - dispatched_at > i64::from(window) * 1000 {
        return Err(ApiError::new(
            Code::RecallWindow,
            format!(
                "the broadcast was sent {elapsed_seconds} s ago; {} workspaces can recall within {window} s of the send",
                kind.as_str()
            ),
        )
        .with_details(vec![serde_json::json!({
            "window_seconds": window,
            "dispatched_at": ts(dispatched_at),
            "elapsed_seconds": elapsed_seconds,
            "correction": format!("/v1/broadcasts/{id}/correction"),
        })]));
    }
    let report = s.store.recall_broadcast(ws, id, who.actor, now)?;
    Ok((report, s.store.broadcast(ws, id)?))
}

/// A correction notice's content.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CorrectionRequest {
    /// The corrected message, in the shape of `POST /v1/broadcasts`.
    pub content: ContentWire,
}

/// One-click correction notice of a sent broadcast (any tier; enterprise
/// workspaces, which cannot recall, especially): a new broadcast with this
/// content to exactly the recipients the original was dispatched to (its
/// frozen audience, not its tags again; contacts deleted since are left
/// out), on its channels, with `correction_of` set, submitted at once
/// through every rule of a send. The answer is the new broadcast (202; held
/// for approval like any send when a rule says so). Refused like a send
/// (422 with every verdict): the draft stays, and `POST /v1/broadcasts/{id}/send`
/// sends it once fixed.
#[utoipa::path(post, path = "/v1/broadcasts/{id}/correction", tag = "broadcasts", params(("id" = String, Path)), request_body = CorrectionRequest,
    responses((status = 202, body = BroadcastResponse), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn correction(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CorrectionRequest>,
) -> ApiResult<(StatusCode, Json<BroadcastResponse>)> {
    auth.require(Action::Send)?;
    let id = parse_id(&id)?;
    let tier = state.policy.tier(auth.0.workspace.kind);
    let raw: RawContent = req.content.into();
    let content =
        Content::parse(&raw, tier.text_max_chars).map_err(|code| content_error(code, &raw, tier.text_max_chars))?;
    let signed = signed_content(&state, &auth.0.workspace, &content)?;
    let ws = auth.workspace_id();
    let (role, member_id) = (auth.0.role, auth.0.member_id);
    let ctx = SendContext {
        kind: auth.0.workspace.kind,
        plan: auth.0.workspace.plan.clone(),
        actor: auth.0.actor(),
        member_id,
    };
    let b = state
        .blocking(move |s| {
            let original = s.store.broadcast(ws, id)?;
            may_change(role, member_id, &original, "correct")?;
            for media in content.media() {
                if !s.store.media_exists(ws, media)? {
                    return Err(ApiError::new(
                        Code::MediaNotFound,
                        format!("media {} was not uploaded to this workspace", media.as_str()),
                    ));
                }
            }
            let draft =
                s.store.create_correction(ws, ctx.member_id, id, &content_to_json(&signed), &ctx.actor, s.now())?;
            submit(s, &ctx, &draft, None).map_err(|mut e| {
                e.message = format!("{} (the correction notice is kept as draft {})", e.message, draft.id);
                e
            })
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(broadcast_response(b))))
}
