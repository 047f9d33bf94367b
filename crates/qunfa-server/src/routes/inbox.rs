//! The recipient's side: list the inbox, open a message (read receipt), reply.
//! These routes take an inbox token, never a workspace key.

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    Json,
};
use qunfa_store::{inbox::InboxItem, now_millis};

use super::{contact_id, parse_id, PageQuery};
use crate::{
    error::{ApiResult, ErrorBody},
    extract::{ApiJson, InboxAuth},
    wire::*,
    AppState,
};

fn item_wire(i: InboxItem) -> InboxItemWire {
    let text = i.body.clone().or_else(|| {
        let c = &i.content;
        c.text.clone().or_else(|| c.caption.clone()).or_else(|| c.description.clone()).or_else(|| c.html.clone())
    });
    InboxItemWire {
        message_id: i.broadcast_id.to_string(),
        from: i.sender_name,
        content: i.content.into(),
        text,
        delivered_at: ts_opt(i.delivered_at),
        read_at: ts_opt(i.read_at),
        replied_at: ts_opt(i.replied_at),
    }
}

/// The recipient's messages, newest first.
#[utoipa::path(get, path = "/v1/inbox", tag = "inbox", params(PageQuery),
    responses((status = 200, body = Page<InboxItemWire>), (status = 401, body = ErrorBody)))]
pub async fn list_inbox(
    State(state): State<AppState>,
    InboxAuth(ws, idx): InboxAuth,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<InboxItemWire>>> {
    let (limit, before) = (q.limit()?, q.cursor_i64()?);
    let rows = state.blocking(move |s| Ok(s.store.inbox(ws, idx, before, limit)?)).await?;
    let next_cursor = (rows.len() == limit).then(|| rows.last().map(|i| i.broadcast_id.to_string())).flatten();
    Ok(Json(Page { items: rows.into_iter().map(item_wire).collect(), next_cursor }))
}

/// One message (does not mark it read; POST …/read does).
#[utoipa::path(get, path = "/v1/inbox/{message_id}", tag = "inbox", params(("message_id" = String, Path)),
    responses((status = 200, body = InboxItemWire), (status = 404, body = ErrorBody)))]
pub async fn get_message(
    State(state): State<AppState>,
    InboxAuth(ws, idx): InboxAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<InboxItemWire>> {
    let id = parse_id(&id)?;
    let item = state.blocking(move |s| Ok(s.store.inbox_message(ws, idx, id)?)).await?;
    Ok(Json(item_wire(item)))
}

/// Read receipt: the first call marks the message read and counts it.
#[utoipa::path(post, path = "/v1/inbox/{message_id}/read", tag = "inbox", params(("message_id" = String, Path)),
    responses((status = 200, body = ReadResponse), (status = 404, body = ErrorBody)))]
pub async fn read_message(
    State(state): State<AppState>,
    InboxAuth(ws, idx): InboxAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<ReadResponse>> {
    let id = parse_id(&id)?;
    let first_read = state.blocking(move |s| Ok(s.store.mark_read(ws, idx, id, now_millis())?)).await?;
    Ok(Json(ReadResponse { first_read }))
}

/// Reply to a message.
#[utoipa::path(post, path = "/v1/inbox/{message_id}/reply", tag = "inbox", params(("message_id" = String, Path)), request_body = ReplyRequest,
    responses((status = 201, body = ReplyResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn reply_message(
    State(state): State<AppState>,
    InboxAuth(ws, idx): InboxAuth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ReplyRequest>,
) -> ApiResult<(StatusCode, Json<ReplyResponse>)> {
    let id = parse_id(&id)?;
    let r = state.blocking(move |s| Ok(s.store.reply(ws, idx, id, &req.text, now_millis())?)).await?;
    Ok((
        StatusCode::CREATED,
        Json(ReplyResponse {
            id: r.id.to_string(),
            contact_id: contact_id(ws, r.contact_idx),
            text: r.text,
            created_at: ts(r.created_at),
        }),
    ))
}
