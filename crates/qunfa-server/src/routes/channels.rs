//! External channels: per-workspace settings, bounces, provider receipts,
//! the unsubscribe pages, and the outgoing event webhooks.

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{header, StatusCode},
    response::{Html, IntoResponse, Response},
    Json,
};
use qunfa_core::{
    channel::{ChannelSettings, SettingsKind},
    contact::{Channel, EmailAddress, HttpUrl},
    sign,
    workspace::Action,
    Code,
};
use qunfa_store::{
    channels::{BounceTarget, Receipt},
    events::{EventDelivery, EventEndpoint},
};

use super::{contact_id, parse_id, PageQuery};
use crate::{
    error::{ApiError, ApiResult, ErrorBody},
    extract::{ApiJson, Auth},
    wire::*,
    AppState,
};

fn parse_channel(s: &str) -> Result<Channel, ApiError> {
    Channel::parse(s).map_err(|code| ApiError::new(code, format!("unknown channel {s:?}")))
}

fn external_channel(s: &str) -> Result<Channel, ApiError> {
    match parse_channel(s)? {
        Channel::Inbox => Err(ApiError::new(Code::ChannelSettings, "the inbox is built in and has no settings")),
        ch => Ok(ch),
    }
}

/// Channels of the workspace: the inbox, every channel it set up, and the
/// server's webhook when the server has one.
#[utoipa::path(get, path = "/v1/channels", tag = "channels", responses((status = 200, body = Vec<ChannelWire>)))]
pub async fn list_channels(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<Vec<ChannelWire>>> {
    auth.require(Action::Read)?;
    let ws = auth.workspace_id();
    let stored = state.blocking(move |s| Ok(s.store.list_channel_settings(ws)?)).await?;
    let mut out = vec![ChannelWire {
        channel: "inbox".into(),
        source: "builtin".into(),
        settings: None,
        updated_at: None,
        generated_secret: None,
    }];
    let has_webhook = stored.iter().any(|s| s.channel == Channel::Webhook);
    out.extend(stored.into_iter().map(|s| ChannelWire {
        channel: s.channel.as_str().into(),
        source: "workspace".into(),
        settings: Some(s.settings.public_json()),
        updated_at: Some(ts(s.updated_at)),
        generated_secret: None,
    }));
    if state.options.server_webhook && !has_webhook {
        out.push(ChannelWire {
            channel: "webhook".into(),
            source: "server".into(),
            settings: None,
            updated_at: None,
            generated_secret: None,
        });
    }
    Ok(Json(out))
}

/// Set up (or change) a channel for the workspace: SMTP server, webhook
/// signing and limits, SMS provider, WeCom corp. Admins and owners only.
/// Secrets left out (or sent back as `********`) keep their stored value; a
/// webhook without a secret gets one, shown once in `generated_secret`.
#[utoipa::path(put, path = "/v1/channels/{channel}", tag = "channels", params(("channel" = String, Path)),
    request_body(content = Object, description = "the channel's settings: see docs/channels.md"),
    responses((status = 200, body = ChannelWire), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn put_channel(
    State(state): State<AppState>,
    auth: Auth,
    Path(channel): Path<String>,
    body: Bytes,
) -> ApiResult<Json<ChannelWire>> {
    auth.require(Action::ManageMembers)?;
    let channel = external_channel(&channel)?;
    let value: serde_json::Value = crate::extract::parse_json(&body)?;
    let (ws, actor) = (auth.workspace_id(), auth.0.actor());
    let (settings, generated, at) = state
        .blocking(move |s| {
            let stored = s.store.channel_settings(ws, channel)?;
            let mut generated = None;
            let settings = ChannelSettings::parse(channel, &value, stored.as_ref(), &mut || {
                let secret = qunfa_store::new_secret("whsec_");
                generated = Some(secret.clone());
                secret
            })
            .map_err(|e| {
                ApiError::new(e.code(), format!("{}: {}", e.field, e.message))
                    .with_details(vec![serde_json::json!({"field": e.field, "message": e.message})])
            })?;
            // A literal non-public host is refused now rather than at every send.
            if let Some(why) = private_target(&settings) {
                return Err(ApiError::new(Code::AddressPrivate, why));
            }
            let now = s.now();
            s.store.set_channel_settings(ws, &settings, &actor, now)?;
            Ok((settings, generated, now))
        })
        .await?;
    Ok(Json(ChannelWire {
        channel: channel.as_str().into(),
        source: "workspace".into(),
        settings: Some(settings.public_json()),
        updated_at: Some(ts(at)),
        generated_secret: generated,
    }))
}

/// Why settings point at a literal loopback/private host without
/// `allow_private_networks` (names are checked when they are resolved).
fn private_target(settings: &ChannelSettings) -> Option<String> {
    let (url, allowed) = match &settings.kind {
        SettingsKind::Email(e) => (format!("smtp://{}/", e.host), e.allow_private_networks),
        SettingsKind::Webhook(w) => (w.endpoint.clone()?, w.allow_private_networks),
        SettingsKind::Sms(s) => (s.base_url.clone(), s.allow_private_networks),
        SettingsKind::Wecom(w) => (w.base_url.clone(), w.allow_private_networks),
    };
    if allowed {
        return None;
    }
    let what = match settings.kind {
        SettingsKind::Email(_) => "the SMTP host",
        SettingsKind::Webhook(_) => "the webhook host",
        SettingsKind::Sms(_) => "the SMS provider's host",
        SettingsKind::Wecom(_) => "the WeCom API host",
    };
    qunfa_engine::literal_private_host(&url).map(|why| why.replacen("the webhook host", what, 1))
}

/// One channel's settings (secrets masked).
#[utoipa::path(get, path = "/v1/channels/{channel}", tag = "channels", params(("channel" = String, Path)),
    responses((status = 200, body = ChannelWire), (status = 404, body = ErrorBody)))]
pub async fn get_channel(
    State(state): State<AppState>,
    auth: Auth,
    Path(channel): Path<String>,
) -> ApiResult<Json<ChannelWire>> {
    auth.require(Action::Read)?;
    let channel = external_channel(&channel)?;
    let ws = auth.workspace_id();
    let stored = state.blocking(move |s| Ok(s.store.list_channel_settings(ws)?)).await?;
    let s = stored.into_iter().find(|s| s.channel == channel).ok_or_else(ApiError::not_found)?;
    Ok(Json(ChannelWire {
        channel: channel.as_str().into(),
        source: "workspace".into(),
        settings: Some(s.settings.public_json()),
        updated_at: Some(ts(s.updated_at)),
        generated_secret: None,
    }))
}

/// Remove a channel's settings. Batches still queued on it fail with
/// `QF-CHANNEL-NOT-CONFIGURED` (retry-failed sends them once it is set up again).
#[utoipa::path(delete, path = "/v1/channels/{channel}", tag = "channels", params(("channel" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_channel(
    State(state): State<AppState>,
    auth: Auth,
    Path(channel): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(Action::ManageMembers)?;
    let channel = external_channel(&channel)?;
    let (ws, actor) = (auth.workspace_id(), auth.0.actor());
    state.blocking(move |s| Ok(s.store.delete_channel_settings(ws, channel, &actor, s.now())?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Record an email bounce (from a bounce processor or the mail server's
/// delivery status notifications). The delivery becomes `failed` with
/// `QF-EMAIL-BOUNCED`; a hard bounce also stops email to the address until it
/// changes.
#[utoipa::path(post, path = "/v1/bounces", tag = "channels", request_body = BounceRequest,
    responses((status = 200, body = BounceResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn bounce(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<BounceRequest>,
) -> ApiResult<Json<BounceResponse>> {
    auth.require(Action::ManageContacts)?;
    let hard = match req.kind.as_str() {
        "hard" => true,
        "soft" => false,
        other => return Err(ApiError::new(Code::BadRequest, format!("type must be hard or soft, not {other:?}"))),
    };
    let ws = auth.workspace_id();
    let (broadcast_id, email) = match (&req.message_id, &req.broadcast_id, &req.email) {
        (Some(_), None, None) => (None, None),
        (None, Some(b), Some(e)) => {
            let email =
                EmailAddress::parse(e).map_err(|code| ApiError::new(code, format!("{e:?} is not an email address")))?;
            (Some(parse_id(b)?), Some(email.into_string()))
        }
        _ => return Err(ApiError::new(Code::BadRequest, "give message_id, or broadcast_id and email")),
    };
    let diagnostic = req.diagnostic.unwrap_or_default();
    let message_id = req.message_id;
    let (b, idx) = state
        .blocking(move |s| {
            let target = match (&message_id, broadcast_id, &email) {
                (Some(m), ..) => BounceTarget::MessageId(m),
                (None, Some(broadcast_id), Some(email)) => BounceTarget::Address { broadcast_id, email },
                _ => unreachable!("checked above"),
            };
            Ok(s.store.record_bounce(ws, target, hard, &diagnostic, s.now())?)
        })
        .await?;
    Ok(Json(BounceResponse { broadcast_id: b.to_string(), contact_id: contact_id(ws, idx), opted_out: hard }))
}

/// Delivery receipts from a provider (the URL qunfa gives it with each
/// request: it carries a token, so it needs no API key). The body is a JSON
/// array of receipts: `[{"message_id", "status": "DELIVERED"|"FAILED", "err_code"}]`.
#[utoipa::path(post, path = "/v1/hooks/{channel}/{workspace_id}/{token}", tag = "channels",
    params(("channel" = String, Path), ("workspace_id" = String, Path), ("token" = String, Path)),
    request_body = Vec<ReceiptWire>,
    responses((status = 200, body = ReceiptsResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn receipts(
    State(state): State<AppState>,
    Path((channel, workspace_id, token)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<Json<ReceiptsResponse>> {
    let channel = parse_channel(&channel)?;
    let ws = parse_id(&workspace_id)?;
    if channel != Channel::Sms
        || !sign::verify_link_token(&state.options.link_key, &sign::receipts_purpose(ws, channel.as_str()), &token)
    {
        return Err(ApiError::not_found());
    }
    let list: Vec<ReceiptWire> = crate::extract::parse_json(&body)?;
    let received = list.len();
    let mut receipts = Vec::with_capacity(list.len());
    for r in list {
        let delivered = match r.status.as_str() {
            "DELIVERED" | "delivered" | "SUCCESS" => true,
            "FAILED" | "failed" | "UNDELIVERED" | "REJECTED" => false,
            other => {
                return Err(ApiError::new(
                    Code::BadRequest,
                    format!("status must be DELIVERED or FAILED, not {other:?}"),
                ))
            }
        };
        receipts.push(Receipt { provider_id: r.message_id, out_id: r.out_id, delivered, error: r.err_code });
    }
    let report = state.blocking(move |s| Ok(s.store.record_receipts(ws, channel, &receipts, s.now())?)).await?;
    Ok(Json(ReceiptsResponse { received, delivered: report.delivered, failed: report.failed, ignored: report.ignored }))
}

/// The parts of an unsubscribe link, checked.
fn unsubscribe_target(
    state: &AppState,
    ws: &str,
    idx: &str,
    channel: &str,
    token: &str,
) -> Option<(i64, u32, Channel)> {
    let ws = ws.parse::<i64>().ok()?;
    let idx = idx.parse::<u32>().ok()?;
    let channel = Channel::parse(channel).ok()?;
    let purpose = sign::unsubscribe_purpose(ws, idx, channel.as_str());
    sign::verify_link_token(&state.options.link_key, &purpose, token).then_some((ws, idx, channel))
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;line-height:1.6}}\
         button{{font-size:1rem;padding:.6rem 1.2rem;cursor:pointer}}</style></head><body>{body}</body></html>"
    );
    (status, [(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

fn bad_link() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "退订链接无效 / Invalid link",
        &format!(
            "<h1>退订链接无效</h1><p>The unsubscribe link is not valid ({}). {}</p>",
            Code::UnsubscribeLink.as_str(),
            Code::UnsubscribeLink.hint()
        ),
    )
}

/// The unsubscribe page of a link in a message: asks to confirm (a GET never
/// unsubscribes, so mail scanners that follow links change nothing).
pub async fn unsubscribe_page(
    State(state): State<AppState>,
    Path((ws, idx, channel, token)): Path<(String, String, String, String)>,
) -> Response {
    let Some((_, _, channel)) = unsubscribe_target(&state, &ws, &idx, &channel, &token) else { return bad_link() };
    page(
        StatusCode::OK,
        "退订 / Unsubscribe",
        &format!(
            "<h1>退订 / Unsubscribe</h1><p>不再通过 <b>{ch}</b> 接收群发消息？<br>Stop receiving mass messages by <b>{ch}</b>?</p>\
             <form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
             <button type=\"submit\">确认退订 / Unsubscribe</button></form>",
            ch = channel.as_str()
        ),
    )
}

/// Unsubscribes: the page's button, or a mail client's one-click POST
/// (RFC 8058, `List-Unsubscribe=One-Click`). Works without login; repeating it
/// changes nothing.
pub async fn unsubscribe(
    State(state): State<AppState>,
    Path((ws, idx, channel, token)): Path<(String, String, String, String)>,
) -> Response {
    let Some((ws, idx, channel)) = unsubscribe_target(&state, &ws, &idx, &channel, &token) else { return bad_link() };
    let done = state.blocking(move |s| Ok(s.store.unsubscribe(ws, idx, channel, s.now())?)).await;
    match done {
        Ok(_) => page(
            StatusCode::OK,
            "已退订 / Unsubscribed",
            &format!(
                "<h1>已退订 / Unsubscribed</h1><p>您将不再通过 <b>{ch}</b> 收到群发消息。<br>You will no longer get mass messages by <b>{ch}</b>.</p>",
                ch = channel.as_str()
            ),
        ),
        Err(e) if e.code == Code::NotFound => bad_link(),
        Err(e) => e.into_response(),
    }
}

fn endpoint_wire(e: EventEndpoint, secret: Option<String>) -> EventEndpointWire {
    EventEndpointWire {
        id: e.id.to_string(),
        url: e.url,
        events: e.events,
        allow_private_networks: e.allow_private_networks,
        secret,
        created_at: ts(e.created_at),
    }
}

fn delivery_wire(d: EventDelivery) -> EventDeliveryWire {
    EventDeliveryWire {
        id: d.id.to_string(),
        endpoint_id: d.endpoint_id.to_string(),
        event_type: d.event_type,
        next_attempt_at: (d.state == "pending").then(|| ts(d.next_at)),
        state: d.state,
        attempts: d.attempts,
        last_status: d.last_status,
        last_error: d.last_error,
        delivered_at: ts_opt(d.delivered_at),
        created_at: ts(d.created_at),
        payload: serde_json::from_str(&d.payload).unwrap_or_default(),
    }
}

/// Add an endpoint for events: signed POSTs (`X-Qunfa-Signature`, like the
/// webhook channel) of broadcast state changes, failed deliveries, replies,
/// reports and unsubscribes. The secret is shown once.
#[utoipa::path(post, path = "/v1/event-endpoints", tag = "events", request_body = CreateEventEndpointRequest,
    responses((status = 201, body = EventEndpointWire), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_event_endpoint(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<CreateEventEndpointRequest>,
) -> ApiResult<(StatusCode, Json<EventEndpointWire>)> {
    auth.require(Action::ManageMembers)?;
    let url = HttpUrl::parse(&req.url)
        .map_err(|code| ApiError::new(code, format!("{:?} is not an absolute http(s) URL", req.url)))?
        .into_string();
    let allow_private = req.allow_private_networks.unwrap_or(false);
    if !allow_private {
        if let Some(why) = qunfa_engine::literal_private_host(&url) {
            return Err(ApiError::new(Code::AddressPrivate, why));
        }
    }
    let secret = match req.secret {
        Some(s) if s.len() < 16 => return Err(ApiError::new(Code::BadRequest, "secret must be at least 16 bytes")),
        Some(s) => s,
        None => qunfa_store::new_secret("whsec_"),
    };
    let events = qunfa_store::events::parse_event_types(&req.events.unwrap_or_default())?;
    let (ws, actor) = (auth.workspace_id(), auth.0.actor());
    let secret2 = secret.clone();
    let e = state
        .blocking(move |s| {
            Ok(s.store.create_event_endpoint(ws, &url, &secret2, &events, allow_private, &actor, s.now())?)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(endpoint_wire(e, Some(secret)))))
}

/// The workspace's event endpoints.
#[utoipa::path(get, path = "/v1/event-endpoints", tag = "events", responses((status = 200, body = Vec<EventEndpointWire>)))]
pub async fn list_event_endpoints(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Vec<EventEndpointWire>>> {
    auth.require(Action::Read)?;
    let ws = auth.workspace_id();
    let list = state.blocking(move |s| Ok(s.store.event_endpoints(ws)?)).await?;
    Ok(Json(list.into_iter().map(|e| endpoint_wire(e, None)).collect()))
}

/// Remove an endpoint: it gets nothing more; its log stays readable.
#[utoipa::path(delete, path = "/v1/event-endpoints/{id}", tag = "events", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_event_endpoint(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(Action::ManageMembers)?;
    let (ws, id, actor) = (auth.workspace_id(), parse_id(&id)?, auth.0.actor());
    state.blocking(move |s| Ok(s.store.delete_event_endpoint(ws, id, &actor, s.now())?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The delivery log of an endpoint, newest first: every attempt's state,
/// HTTP status and error, and the event as sent.
#[utoipa::path(get, path = "/v1/event-endpoints/{id}/deliveries", tag = "events", params(("id" = String, Path), PageQuery),
    responses((status = 200, body = Page<EventDeliveryWire>), (status = 404, body = ErrorBody)))]
pub async fn event_deliveries(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<EventDeliveryWire>>> {
    auth.require(Action::Read)?;
    let (ws, id, limit, before) = (auth.workspace_id(), parse_id(&id)?, q.limit()?, q.cursor_i64()?);
    let rows = state.blocking(move |s| Ok(s.store.event_deliveries(ws, id, before, limit)?)).await?;
    let next_cursor = (rows.len() == limit).then(|| rows.last().map(|d| d.id.to_string())).flatten();
    Ok(Json(Page { items: rows.into_iter().map(delivery_wire).collect(), next_cursor }))
}

/// Send a logged event again (a new delivery; the old one stays in the log).
#[utoipa::path(post, path = "/v1/event-deliveries/{id}/redeliver", tag = "events", params(("id" = String, Path)),
    responses((status = 201, body = EventDeliveryWire), (status = 404, body = ErrorBody)))]
pub async fn redeliver_event(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<EventDeliveryWire>)> {
    auth.require(Action::ManageMembers)?;
    let (ws, id, actor) = (auth.workspace_id(), parse_id(&id)?, auth.0.actor());
    let d = state.blocking(move |s| Ok(s.store.redeliver_event(ws, id, &actor, s.now())?)).await?;
    state.engine.wake_events();
    Ok((StatusCode::CREATED, Json(delivery_wire(d))))
}
