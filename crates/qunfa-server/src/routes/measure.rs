//! Measurement (docs/measurement.md): tracked links and their QR codes, the
//! redirect and the email open pixel, conversions, reading time from the
//! inbox, broadcast reports (JSON and CSV), A/B tests.

use std::time::Duration;

use axum::{
    extract::{Path, Query, State},
    http::{header, HeaderMap, Method, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use chrono::{Datelike, Timelike};
use qunfa_audience::{AudienceSpec, Bitmap};
use qunfa_core::{
    abtest::{Metric, Variable},
    contact::Channel,
    contact::HttpUrl,
    message::{Content, RawContent},
    schedule::TimeZone,
    stats::{self, Proportion},
    workspace::Action,
    Code,
};
use qunfa_store::{
    abtest::{AbTestRecord, NewAbTest, NewArm},
    broadcasts::NewBroadcast,
    json::{audience_to_json, content_to_json},
    measure::{ChannelFigures, Clicker, LinkRecord, MeasureReport, NewConversion, NewLink, READ_HISTOGRAM_MS},
};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use utoipa::{IntoParams, ToSchema};

use super::{
    broadcasts::{evaluate, submit, SendContext},
    contact_id, parse_contact_id, parse_id,
};
use crate::{
    error::{ApiError, ApiResult, ErrorBody},
    extract::{ApiJson, Auth, InboxAuth},
    wire::{ts, ts_opt, ContentWire, Page},
    AppState, Inner,
};

// ---------------------------------------------------------------- links

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLinkRequest {
    /// Where the link goes (http or https).
    pub url: String,
    /// Where the link is used, for attribution: `email`, `poster-shanghai`, `qr-store-12` … (1 to 64 characters).
    pub channel: String,
    /// Optional campaign name (at most 64 characters).
    pub campaign: Option<String>,
    /// The broadcast its clicks and conversions count for.
    pub broadcast_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct LinkResponse {
    pub id: String,
    pub short: String,
    pub url: String,
    /// The public tracked URL (`{public_url}/l/{short}`), also the QR code's content.
    pub tracked_url: String,
    /// The QR code of `tracked_url` (PNG; `?format=svg` for SVG).
    pub qr_url: String,
    pub broadcast_id: Option<String>,
    pub channel: String,
    pub campaign: Option<String>,
    /// Clicks by people (bots and prefetchers are in `filtered`).
    pub clicks: u64,
    /// Recipients (known by the token of their link) who clicked, each once.
    pub unique_clicks: u64,
    pub filtered: u64,
    pub conversions: u64,
    pub conversion_value: i64,
    pub created_at: String,
}

fn link_response(s: &Inner, l: LinkRecord) -> LinkResponse {
    let base = s.options.public_url.trim_end_matches('/');
    LinkResponse {
        id: l.id.to_string(),
        tracked_url: format!("{base}/l/{}", l.short),
        qr_url: format!("{base}/v1/links/{}/qr", l.id),
        short: l.short,
        url: l.url,
        broadcast_id: l.broadcast_id.map(|b| b.to_string()),
        channel: l.channel,
        campaign: l.campaign,
        clicks: l.n_clicks,
        unique_clicks: l.n_unique,
        filtered: l.n_filtered,
        conversions: l.n_conversions,
        conversion_value: l.conversion_value,
        created_at: ts(l.created_at),
    }
}

/// A label (channel, campaign): 1 to 64 printable characters.
fn label(name: &str, value: &str) -> Result<String, ApiError> {
    let v = value.trim();
    if v.is_empty() || v.chars().count() > 64 || v.chars().any(char::is_control) {
        return Err(ApiError::new(Code::LinkInvalid, format!("{name} has 1 to 64 printable characters")));
    }
    Ok(v.to_owned())
}

/// Create a tracked link for a channel (and campaign), optionally of a broadcast.
#[utoipa::path(post, path = "/v1/links", tag = "measurement", request_body = CreateLinkRequest,
    responses((status = 201, body = LinkResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create_link(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<CreateLinkRequest>,
) -> ApiResult<(StatusCode, Json<LinkResponse>)> {
    auth.require(Action::Send)?;
    let url =
        HttpUrl::parse(req.url.trim()).map_err(|_| ApiError::new(Code::LinkInvalid, "url must be an http(s) URL"))?;
    let new = NewLink {
        url: url.as_str().to_owned(),
        channel: label("channel", &req.channel)?,
        campaign: req.campaign.as_deref().map(|c| label("campaign", c)).transpose()?,
        broadcast_id: req.broadcast_id.as_deref().map(parse_id).transpose()?,
    };
    let (ws, actor) = (auth.workspace_id(), auth.0.actor());
    let link = state.blocking(move |s| Ok(link_response(s, s.store.create_link(ws, &new, &actor, s.now())?))).await?;
    Ok((StatusCode::CREATED, Json(link)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LinksQuery {
    /// Only the links of this broadcast.
    pub broadcast_id: Option<String>,
    /// 1 to 1,000; default 100.
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

/// The workspace's tracked links with their counts, newest first.
#[utoipa::path(get, path = "/v1/links", tag = "measurement", params(LinksQuery),
    responses((status = 200, body = Page<LinkResponse>)))]
pub async fn list_links(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<LinksQuery>,
) -> ApiResult<Json<Page<LinkResponse>>> {
    auth.require(Action::Read)?;
    let page = super::PageQuery { limit: q.limit, cursor: q.cursor };
    let (limit, before) = (page.limit()?, page.cursor_i64()?);
    let broadcast = q.broadcast_id.as_deref().map(parse_id).transpose()?;
    let ws = auth.workspace_id();
    let items = state
        .blocking(move |s| {
            Ok(s.store
                .links(ws, broadcast, before, limit)?
                .into_iter()
                .map(|l| link_response(s, l))
                .collect::<Vec<_>>())
        })
        .await?;
    let next_cursor = (items.len() == limit).then(|| items.last().map(|l| l.id.clone())).flatten();
    Ok(Json(Page { items, next_cursor }))
}

/// One tracked link with its counts.
#[utoipa::path(get, path = "/v1/links/{id}", tag = "measurement", params(("id" = String, Path)),
    responses((status = 200, body = LinkResponse), (status = 404, body = ErrorBody)))]
pub async fn get_link(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<LinkResponse>> {
    auth.require(Action::Read)?;
    let (ws, id) = (auth.workspace_id(), parse_id(&id)?);
    Ok(Json(state.blocking(move |s| Ok(link_response(s, s.store.link(ws, id)?))).await?))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RecipientUrlQuery {
    pub contact_id: String,
    /// The delivery channel the recipient gets the broadcast on (default inbox).
    pub channel: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RecipientUrlResponse {
    /// The tracked URL with the recipient's token: a click counts for them.
    pub url: String,
    /// The open pixel of the broadcast for this recipient and channel (an
    /// `<img>` in an HTML email: loading it counts as the first open).
    pub open_pixel_url: String,
}

/// The tracked URL of a link for one recipient of its broadcast (what a
/// message rendered for that recipient carries), so their click is theirs.
#[utoipa::path(get, path = "/v1/links/{id}/recipient-url", tag = "measurement", params(("id" = String, Path), RecipientUrlQuery),
    responses((status = 200, body = RecipientUrlResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn recipient_url(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(q): Query<RecipientUrlQuery>,
) -> ApiResult<Json<RecipientUrlResponse>> {
    auth.require(Action::Send)?;
    let (ws, id) = (auth.workspace_id(), parse_id(&id)?);
    let idx = parse_contact_id(ws, &q.contact_id)?;
    let channel = channel_of(q.channel.as_deref())?;
    let url = state
        .blocking(move |s| {
            let link = s.store.link(ws, id)?;
            let Some(b) = link.broadcast_id else {
                return Err(ApiError::new(Code::LinkInvalid, "only a link of a broadcast has recipients"));
            };
            Ok(RecipientUrlResponse {
                url: recipient_link(s, &link.short, idx, channel.as_str()),
                open_pixel_url: open_pixel_url(s, ws, b, idx, channel.as_str()),
            })
        })
        .await?;
    Ok(Json(url))
}

fn channel_of(name: Option<&str>) -> Result<Channel, ApiError> {
    let name = name.unwrap_or("inbox");
    Channel::parse(name).map_err(|code| ApiError::new(code, format!("unknown channel {name:?}")))
}

/// The tracked URL of `short` for one recipient: `?r={idx}.{channel}.{token}`.
pub fn recipient_link(s: &Inner, short: &str, idx: u32, channel: &str) -> String {
    qunfa_core::sign::recipient_link(&s.options.public_url, &s.options.link_key, short, idx, channel)
}

/// The URL of the open pixel of one email (or other HTML) delivery.
pub fn open_pixel_url(s: &Inner, workspace_id: i64, broadcast_id: i64, idx: u32, channel: &str) -> String {
    let purpose = qunfa_core::sign::open_purpose(workspace_id, broadcast_id, idx, channel);
    let token = qunfa_core::sign::link_token(&s.options.link_key, &purpose);
    format!("{}/o/{workspace_id}/{broadcast_id}/{idx}/{channel}/{token}", s.options.public_url.trim_end_matches('/'))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct QrQuery {
    /// `png` (default) or `svg`.
    pub format: Option<String>,
    /// Pixels per module of the PNG, 1 to 32 (default 8).
    pub scale: Option<u32>,
}

/// The QR code of a tracked link (its `tracked_url`, with the link's channel
/// and campaign behind it), as PNG or SVG, for posters and other offline channels.
#[utoipa::path(get, path = "/v1/links/{id}/qr", tag = "measurement", params(("id" = String, Path), QrQuery),
    responses((status = 200, description = "image/png or image/svg+xml"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn link_qr(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(q): Query<QrQuery>,
) -> ApiResult<Response> {
    auth.require(Action::Read)?;
    let (ws, id) = (auth.workspace_id(), parse_id(&id)?);
    let svg = match q.format.as_deref() {
        None | Some("png") => false,
        Some("svg") => true,
        Some(other) => return Err(ApiError::new(Code::BadRequest, format!("format is png or svg, not {other:?}"))),
    };
    let scale = q.scale.unwrap_or(8);
    if !(1..=32).contains(&scale) {
        return Err(ApiError::new(Code::BadRequest, "scale is between 1 and 32"));
    }
    let (bytes, content_type) = state
        .blocking(move |s| {
            let link = s.store.link(ws, id)?;
            let url = format!("{}/l/{}", s.options.public_url.trim_end_matches('/'), link.short);
            let qr = qr_modules(&url)?;
            Ok(if svg { (qr_svg(&qr).into_bytes(), "image/svg+xml") } else { (qr_png(&qr, scale)?, "image/png") })
        })
        .await?;
    Ok(([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "private, max-age=3600")], bytes)
        .into_response())
}

/// A QR code's dark modules, row by row, `width` × `width`.
pub struct QrModules {
    pub width: usize,
    pub dark: Vec<bool>,
}

/// The quiet zone around a code, in modules (the standard's 4).
const QUIET: usize = 4;

fn qr_modules(text: &str) -> Result<QrModules, ApiError> {
    let code = qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M)
        .map_err(|e| ApiError::new(Code::LinkInvalid, format!("no QR code for this URL: {e}")))?;
    let width = code.width();
    let dark = code.to_colors().into_iter().map(|c| c == qrcode::Color::Dark).collect();
    Ok(QrModules { width, dark })
}

fn qr_svg(qr: &QrModules) -> String {
    let size = qr.width + 2 * QUIET;
    let mut path = String::new();
    for (i, _) in qr.dark.iter().enumerate().filter(|(_, d)| **d) {
        let (x, y) = (i % qr.width + QUIET, i / qr.width + QUIET);
        path.push_str(&format!("M{x} {y}h1v1h-1z"));
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {size} {size}\" width=\"{w}\" height=\"{w}\" shape-rendering=\"crispEdges\"><rect width=\"{size}\" height=\"{size}\" fill=\"#fff\"/><path fill=\"#000\" d=\"{path}\"/></svg>\n",
        w = size * 8
    )
}

fn qr_png(qr: &QrModules, scale: u32) -> Result<Vec<u8>, ApiError> {
    let size = ((qr.width + 2 * QUIET) as u32) * scale;
    let img = image::GrayImage::from_fn(size, size, |x, y| {
        let (mx, my) = ((x / scale) as usize, (y / scale) as usize);
        let dark = mx >= QUIET
            && my >= QUIET
            && mx < QUIET + qr.width
            && my < QUIET + qr.width
            && qr.dark[(my - QUIET) * qr.width + (mx - QUIET)];
        image::Luma([if dark { 0 } else { 255 }])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).map_err(|e| ApiError::internal(&e))?;
    Ok(out.into_inner())
}

// ------------------------------------------------------- redirect and pixel

/// Words in a User-Agent of link checkers, previewers, crawlers and scripts.
const BOT_AGENTS: &[&str] = &[
    "bot",
    "spider",
    "crawl",
    "slurp",
    "preview",
    "facebookexternalhit",
    "whatsapp",
    "telegram",
    "slack",
    "discord",
    "skype",
    "curl/",
    "wget",
    "python-requests",
    "go-http-client",
    "headless",
    "lighthouse",
    "proofpoint",
    "mimecast",
    "barracuda",
    "safelinks",
    "scanner",
];

/// A request by a bot or a prefetch rather than by a person: `HEAD`, a
/// prefetch or preview purpose header, no User-Agent, or one of [`BOT_AGENTS`].
pub fn is_automated(method: &Method, headers: &HeaderMap) -> bool {
    if method == Method::HEAD {
        return true;
    }
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    for name in ["purpose", "sec-purpose", "x-purpose", "x-moz"] {
        let v = value(name);
        if v.contains("prefetch") || v.contains("preview") || v.contains("prerender") {
            return true;
        }
    }
    let agent = value("user-agent");
    agent.trim().is_empty() || BOT_AGENTS.iter().any(|w| agent.contains(w))
}

#[derive(Deserialize)]
pub struct ClickQuery {
    /// `{contact_idx}.{channel}.{token}`: the recipient, from their own link.
    pub r: Option<String>,
}

/// `GET /l/{short}`: records the click (a person's; bots and prefetchers are
/// counted apart) and redirects to the link's URL.
pub async fn follow_link(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Path(short): Path<String>,
    Query(q): Query<ClickQuery>,
) -> ApiResult<Response> {
    if short.is_empty() || short.len() > 16 || !short.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(ApiError::not_found());
    }
    let person = !is_automated(&method, &headers);
    let outcome = state
        .blocking(move |s| {
            // A token that does not verify is ignored: the click counts, without a recipient.
            let clicker = q.r.as_deref().and_then(|r| {
                let mut parts = r.splitn(3, '.');
                let idx: u32 = parts.next()?.parse().ok()?;
                let channel = parts.next()?.to_owned();
                let token = parts.next()?;
                qunfa_core::sign::verify_link_token(
                    &s.options.link_key,
                    &qunfa_core::sign::click_purpose(&short, idx, &channel),
                    token,
                )
                .then_some((idx, channel))
            });
            let clicker_ref = clicker.as_ref().map(|(idx, ch)| Clicker { contact_idx: *idx, channel: ch });
            Ok(s.store.record_click(&short, clicker_ref, person, s.now())?)
        })
        .await?;
    Ok((StatusCode::FOUND, [(header::LOCATION, outcome.url.as_str()), (header::CACHE_CONTROL, "no-store")], "")
        .into_response())
}

/// A transparent 1×1 GIF.
const PIXEL_GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02,
    0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// `GET /o/{workspace}/{broadcast}/{contact}/{channel}/{token}`: the open
/// pixel of an email. A signed open by a person counts as the delivery's
/// first open (prefetches do not); the answer is always the pixel, so a mail
/// client shows nothing broken.
pub async fn open_pixel(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Path((ws, broadcast, idx, channel, token)): Path<(i64, i64, u32, String, String)>,
) -> Response {
    let person = !is_automated(&method, &headers);
    let purpose = qunfa_core::sign::open_purpose(ws, broadcast, idx, &channel);
    if person && qunfa_core::sign::verify_link_token(&state.options.link_key, &purpose, &token) {
        let result = state.blocking(move |s| Ok(s.store.record_open(ws, broadcast, idx, &channel, s.now())?)).await;
        if let Err(e) = result {
            if e.code != Code::NotFound {
                tracing::warn!(code = e.code.as_str(), message = %e.message, "open pixel not recorded");
            }
        }
    }
    ([(header::CONTENT_TYPE, "image/gif"), (header::CACHE_CONTROL, "no-store")], PIXEL_GIF).into_response()
}

// ------------------------------------------------------------ conversions

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversionRequest {
    /// Your id of the event (1 to 128 characters): reporting it again changes nothing.
    pub event_id: String,
    /// What happened (`purchase`, `signup` …; default `conversion`).
    pub name: Option<String>,
    /// Its value in the smallest unit of your currency (default 0).
    pub value: Option<i64>,
    pub broadcast_id: Option<String>,
    /// The short code of the tracked link it came through.
    pub link: Option<String>,
    pub contact_id: Option<String>,
    /// The channel the contact got the broadcast on, when several.
    pub channel: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ConversionResponse {
    pub id: String,
    pub event_id: String,
    pub broadcast_id: Option<String>,
    pub link_id: Option<String>,
    pub contact_id: Option<String>,
    pub channel: Option<String>,
    /// The contact's first conversion on this broadcast (counts in `converted`).
    pub first_of_recipient: bool,
    pub created_at: String,
}

/// Report a conversion (integrators): attributed to a broadcast, a tracked
/// link (and so its channel and campaign) and a contact. Idempotent by
/// `event_id`: 201 the first time, 200 with the same record after.
#[utoipa::path(post, path = "/v1/conversions", tag = "measurement", request_body = ConversionRequest,
    responses((status = 201, body = ConversionResponse), (status = 200, body = ConversionResponse), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_conversion(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<ConversionRequest>,
) -> ApiResult<(StatusCode, Json<ConversionResponse>)> {
    auth.require(Action::Send)?;
    let ws = auth.workspace_id();
    let invalid = |m: &str| ApiError::new(Code::ConversionInvalid, m.to_owned());
    let event_id = req.event_id.trim().to_owned();
    if event_id.is_empty() || event_id.chars().count() > 128 || event_id.chars().any(char::is_control) {
        return Err(invalid("event_id has 1 to 128 printable characters"));
    }
    let name = match req.name.as_deref() {
        None => "conversion".to_owned(),
        Some(n) => label("name", n).map_err(|_| invalid("name has 1 to 64 printable characters"))?,
    };
    let value = req.value.unwrap_or(0);
    if value < 0 {
        return Err(invalid("value is 0 or more"));
    }
    if req.broadcast_id.is_none() && req.link.is_none() {
        return Err(invalid("give broadcast_id or link: a conversion is attributed to something"));
    }
    let new = NewConversion {
        event_id,
        name,
        value,
        broadcast_id: req.broadcast_id.as_deref().map(parse_id).transpose()?,
        link_short: req.link.clone(),
        contact_idx: req.contact_id.as_deref().map(|c| parse_contact_id(ws, c)).transpose()?,
        channel: req.channel.as_deref().map(|c| channel_of(Some(c)).map(|c| c.as_str().to_owned())).transpose()?,
    };
    let (record, created) = state.blocking(move |s| Ok(s.store.record_conversion(ws, &new, s.now())?)).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((
        status,
        Json(ConversionResponse {
            id: record.id.to_string(),
            event_id: record.event_id,
            broadcast_id: record.broadcast_id.map(|b| b.to_string()),
            link_id: record.link_id.map(|l| l.to_string()),
            contact_id: record.contact_idx.map(|i| contact_id(ws, i)),
            channel: record.channel,
            first_of_recipient: record.first_of_recipient,
            created_at: ts(record.created_at),
        }),
    ))
}

// ----------------------------------------------------------- reading time

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CloseRequest {
    /// How long the page says the message was visible (ms); the server's
    /// own open → close time bounds it.
    pub visible_ms: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct CloseResponse {
    /// Whether a view was open (a repeated close records nothing).
    pub recorded: bool,
    /// The reading time this view added (ms, capped by the policy).
    pub read_ms: Option<i64>,
}

/// The recipient closed the message opened with `POST …/read`: the time
/// between them (at most the policy's `measurement.read_cap_seconds`) adds
/// to the reading time.
#[utoipa::path(post, path = "/v1/inbox/{message_id}/close", tag = "inbox", params(("message_id" = String, Path)), request_body = CloseRequest,
    responses((status = 200, body = CloseResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn close_message(
    State(state): State<AppState>,
    auth: InboxAuth,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<CloseResponse>> {
    let id = parse_id(&id)?;
    let req: CloseRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CloseRequest::default()
    } else {
        crate::extract::parse_json(&body)?
    };
    if req.visible_ms.is_some_and(|v| v < 0) {
        return Err(ApiError::new(Code::BadRequest, "visible_ms is 0 or more"));
    }
    let read_ms = state
        .blocking(move |s| {
            let (ws, idx) = auth.recipient(&s.store)?;
            let cap = i64::from(s.policy.measurement.read_cap_seconds) * 1000;
            Ok(s.store.close_view(ws, idx, id, req.visible_ms, cap, s.now())?)
        })
        .await?;
    Ok(Json(CloseResponse { recorded: read_ms.is_some(), read_ms }))
}

// ---------------------------------------------------------------- reports

#[derive(Serialize, ToSchema, Clone, Copy)]
pub struct RatesWire {
    /// delivered / records.
    pub delivery: f64,
    /// opened / delivered (and so on for the others).
    pub open: f64,
    pub reply: f64,
    pub forward: f64,
    pub click: f64,
    pub conversion: f64,
}

#[derive(Serialize, ToSchema)]
pub struct FiguresWire {
    /// A delivery channel, or `all`.
    pub channel: String,
    pub records: u64,
    pub delivered: u64,
    pub failed: u64,
    /// Filtered at send time, skipped fallback steps, recalled.
    pub not_sent: u64,
    /// Not sent yet, or waiting for a receipt.
    pub pending: u64,
    pub opened: u64,
    pub replied: u64,
    pub forwarded: u64,
    pub clicked: u64,
    pub converted: u64,
    pub reported: u64,
    pub rates: RatesWire,
}

#[derive(Serialize, ToSchema)]
pub struct HistogramBucket {
    pub from_ms: i64,
    /// Absent for the last, open-ended bucket.
    pub to_ms: Option<i64>,
    pub recipients: u64,
}

#[derive(Serialize, ToSchema)]
pub struct ReadingWire {
    /// Recipients with a measured reading time (open → close).
    pub measured_recipients: u64,
    /// Their average total reading time (ms); null when none was measured.
    pub average_ms: Option<u64>,
    /// The average is below `short_read_seconds`: the title or layout likely needs work.
    pub short_read: bool,
    pub short_read_seconds: u32,
    pub histogram: Vec<HistogramBucket>,
}

#[derive(Serialize, ToSchema)]
pub struct HeatmapsWire {
    /// The zone of the hours (the workspace's, docs/scheduling.md).
    pub time_zone: String,
    /// `opens[day][hour]`: first opens by day of week (0 = Monday) and hour.
    pub opens: Vec<Vec<u64>>,
    /// `clicks[day][hour]`: clicks by people.
    pub clicks: Vec<Vec<u64>>,
}

#[derive(Serialize, ToSchema)]
pub struct SourceWire {
    pub link_id: String,
    pub short: String,
    pub channel: String,
    pub campaign: Option<String>,
    pub clicks: u64,
    pub unique_clicks: u64,
    pub filtered: u64,
    pub conversions: u64,
    pub conversion_value: i64,
}

#[derive(Serialize, ToSchema)]
pub struct ReportResponse {
    pub broadcast_id: String,
    /// The segment or expression the report is restricted to.
    pub segment: Option<String>,
    pub recipients: u64,
    pub totals: FiguresWire,
    pub channels: Vec<FiguresWire>,
    /// Recipients who blocked the sender from this broadcast.
    pub blocked: u64,
    /// Every click by a person on the broadcast's tracked links.
    pub clicks: u64,
    pub conversions: u64,
    pub conversion_value: i64,
    pub reading: ReadingWire,
    pub heatmaps: HeatmapsWire,
    /// Clicks and conversions by tracked link (its channel and campaign).
    pub sources: Vec<SourceWire>,
}

fn ratio(n: u64, d: u64) -> f64 {
    if d == 0 {
        0.0
    } else {
        ((n as f64 / d as f64) * 10_000.0).round() / 10_000.0
    }
}

fn figures_wire(f: &ChannelFigures) -> FiguresWire {
    FiguresWire {
        channel: f.channel.clone(),
        records: f.records,
        delivered: f.delivered,
        failed: f.failed,
        not_sent: f.not_sent,
        pending: f.pending,
        opened: f.opened,
        replied: f.replied,
        forwarded: f.forwarded,
        clicked: f.clicked,
        converted: f.converted,
        reported: f.reported,
        rates: RatesWire {
            delivery: ratio(f.delivered, f.records),
            open: ratio(f.opened, f.delivered),
            reply: ratio(f.replied, f.delivered),
            forward: ratio(f.forwarded, f.delivered),
            click: ratio(f.clicked, f.delivered),
            conversion: ratio(f.converted, f.delivered),
        },
    }
}

fn heatmap(zone: TimeZone, hours: &[(i64, u64)]) -> Vec<Vec<u64>> {
    let mut grid = vec![vec![0u64; 24]; 7];
    for &(hour, n) in hours {
        // The middle of the hour, so a zone with a half-hour offset puts it in one local hour.
        let local = zone.local(hour * 3_600_000 + 1_800_000);
        grid[local.weekday().num_days_from_monday() as usize][local.hour() as usize] += n;
    }
    grid
}

fn report_wire(s: &Inner, ws: i64, r: &MeasureReport, segment: Option<String>) -> Result<ReportResponse, ApiError> {
    let stored = s.store.schedule_settings(ws)?;
    let zone_name = stored.time_zone.unwrap_or_else(|| s.policy.schedule.default_time_zone.clone());
    let zone = TimeZone::parse(&zone_name).map_err(|e| ApiError::internal(&e.message))?;
    let all = &r.all;
    let average_ms = (all.read_timed > 0).then(|| (all.read_ms_sum.max(0) as u64) / all.read_timed);
    let short = s.policy.measurement.short_read_seconds;
    let mut from = 0;
    let histogram = all
        .read_histogram
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let bucket = HistogramBucket { from_ms: from, to_ms: READ_HISTOGRAM_MS.get(i).copied(), recipients: n };
            from = READ_HISTOGRAM_MS.get(i).copied().unwrap_or(from);
            bucket
        })
        .collect();
    Ok(ReportResponse {
        broadcast_id: r.broadcast_id.to_string(),
        segment,
        recipients: r.recipients,
        totals: figures_wire(all),
        channels: r.channels.iter().map(figures_wire).collect(),
        blocked: r.blocked,
        clicks: r.clicks,
        conversions: r.conversions,
        conversion_value: r.conversion_value,
        reading: ReadingWire {
            measured_recipients: all.read_timed,
            average_ms,
            short_read: average_ms.is_some_and(|a| a < u64::from(short) * 1000),
            short_read_seconds: short,
            histogram,
        },
        heatmaps: HeatmapsWire {
            time_zone: zone.name().to_owned(),
            opens: heatmap(zone, &r.opens_by_hour),
            clicks: heatmap(zone, &r.clicks_by_hour),
        },
        sources: r
            .links
            .iter()
            .map(|l| SourceWire {
                link_id: l.id.to_string(),
                short: l.short.clone(),
                channel: l.channel.clone(),
                campaign: l.campaign.clone(),
                clicks: l.n_clicks,
                unique_clicks: l.n_unique,
                filtered: l.n_filtered,
                conversions: l.n_conversions,
                conversion_value: l.conversion_value,
            })
            .collect(),
    })
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// Restrict to the recipients in this saved segment.
    pub segment: Option<String>,
    /// Restrict to the recipients an audience expression selects now.
    pub expr: Option<String>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

/// The report of a broadcast: delivery, open, reply, forward, click and
/// conversion counts and rates, overall and per channel; reading time with
/// its histogram and the short-read flag; heatmaps by day of week and hour;
/// clicks and conversions by tracked link. `?segment=` or `?expr=`
/// restricts it to some recipients; `?format=csv` gives it as CSV.
#[utoipa::path(get, path = "/v1/broadcasts/{id}/report", tag = "measurement", params(("id" = String, Path), ReportQuery),
    responses((status = 200, body = ReportResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn report(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(q): Query<ReportQuery>,
) -> ApiResult<Response> {
    auth.require(Action::Read)?;
    let (ws, id) = (auth.workspace_id(), parse_id(&id)?);
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => return Err(ApiError::new(Code::BadRequest, format!("format is json or csv, not {other:?}"))),
    };
    let source = match (q.segment, q.expr) {
        (Some(_), Some(_)) => return Err(ApiError::new(Code::ReportSegment, "give segment or expr, not both")),
        (Some(name), None) => Some((format!("segment:{name}"), name)),
        (None, Some(expr)) => Some((expr.clone(), expr)),
        (None, None) => None,
    };
    let wire = state
        .blocking(move |s| {
            let (r, label) = match &source {
                None => (s.store.measure_report(ws, id)?, None),
                Some((src, label)) => {
                    qunfa_audience::expr::parse(src).map_err(|e| {
                        ApiError::new(Code::ReportSegment, format!("the expression does not parse: {}", e.message))
                    })?;
                    // The broadcast first: an unknown one is a 404, not a segment error.
                    s.store.broadcast(ws, id)?;
                    let members = s
                        .store
                        .resolve_audience_at(ws, &AudienceSpec::Expression(src.clone()), s.now())
                        .map_err(|_| {
                            ApiError::new(
                                Code::ReportSegment,
                                format!("{label:?} names no segment, tag or attribute of this workspace"),
                            )
                        })?;
                    (s.store.measure_report_of(ws, id, &members)?, Some(label.clone()))
                }
            };
            report_wire(s, ws, &r, label)
        })
        .await?;
    if !csv {
        return Ok(Json(wire).into_response());
    }
    let body = report_csv(&wire).map_err(|e| ApiError::internal(&e))?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"qunfa-report-{id}.csv\"")),
        ],
        body,
    )
        .into_response())
}

/// The report as CSV: one row per figure, `section,key,metric,value`.
pub fn report_csv(r: &ReportResponse) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["section", "key", "metric", "value"])?;
    w.write_record(["broadcast", &r.broadcast_id, "recipients", &r.recipients.to_string()])?;
    if let Some(seg) = &r.segment {
        w.write_record(["broadcast", &r.broadcast_id, "segment", seg])?;
    }
    for f in std::iter::once(&r.totals).chain(&r.channels) {
        for (metric, v) in [
            ("records", f.records),
            ("delivered", f.delivered),
            ("failed", f.failed),
            ("not_sent", f.not_sent),
            ("pending", f.pending),
            ("opened", f.opened),
            ("replied", f.replied),
            ("forwarded", f.forwarded),
            ("clicked", f.clicked),
            ("converted", f.converted),
            ("reported", f.reported),
        ] {
            w.write_record(["channel", &f.channel, metric, &v.to_string()])?;
        }
        let rt = f.rates;
        for (metric, v) in [
            ("delivery_rate", rt.delivery),
            ("open_rate", rt.open),
            ("reply_rate", rt.reply),
            ("forward_rate", rt.forward),
            ("click_rate", rt.click),
            ("conversion_rate", rt.conversion),
        ] {
            w.write_record(["channel", &f.channel, metric, &v.to_string()])?;
        }
    }
    w.write_record(["totals", "all", "blocked", &r.blocked.to_string()])?;
    w.write_record(["totals", "all", "clicks", &r.clicks.to_string()])?;
    w.write_record(["totals", "all", "conversions", &r.conversions.to_string()])?;
    w.write_record(["totals", "all", "conversion_value", &r.conversion_value.to_string()])?;
    let rd = &r.reading;
    w.write_record(["reading", "all", "measured_recipients", &rd.measured_recipients.to_string()])?;
    w.write_record(["reading", "all", "average_ms", &rd.average_ms.map(|a| a.to_string()).unwrap_or_default()])?;
    w.write_record(["reading", "all", "short_read", &rd.short_read.to_string()])?;
    for b in &rd.histogram {
        let key = match b.to_ms {
            Some(to) => format!("{}-{to}ms", b.from_ms),
            None => format!("{}ms+", b.from_ms),
        };
        w.write_record(["reading_histogram", &key, "recipients", &b.recipients.to_string()])?;
    }
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    for (name, grid) in [("heatmap_opens", &r.heatmaps.opens), ("heatmap_clicks", &r.heatmaps.clicks)] {
        for (d, row) in grid.iter().enumerate() {
            for (h, n) in row.iter().enumerate().filter(|(_, n)| **n > 0) {
                w.write_record([name, &format!("{} {h:02}", DAYS[d]), "count", &n.to_string()])?;
            }
        }
    }
    for src in &r.sources {
        let key = format!("{}/{}", src.channel, src.campaign.as_deref().unwrap_or(""));
        for (metric, v) in [
            ("clicks", src.clicks as i64),
            ("unique_clicks", src.unique_clicks as i64),
            ("filtered", src.filtered as i64),
            ("conversions", src.conversions as i64),
            ("conversion_value", src.conversion_value),
        ] {
            w.write_record(["source", &key, metric, &v.to_string()])?;
        }
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8(bytes).unwrap_or_default())
}

// ---------------------------------------------------------------- A/B tests

#[derive(Deserialize, ToSchema, Clone)]
#[serde(deny_unknown_fields)]
pub struct VariantRequest {
    /// A name for the arm (default A, B, C …).
    pub label: Option<String>,
    /// The content of this arm (variables `content` and `attachment`).
    pub content: Option<ContentWire>,
    /// The channel of this arm (variable `channel`).
    pub channel: Option<String>,
    /// How long after the start this arm is sent (variable `send_time`).
    pub send_after_seconds: Option<u64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAbTestRequest {
    /// The draft whose audience, content, channels and priority the arms start from.
    pub broadcast_id: String,
    /// What the variants differ in: `content`, `send_time`, `channel` or `attachment`.
    pub variable: String,
    /// 2 to 5 variants (3 recommended), each giving only the declared variable.
    pub variants: Vec<VariantRequest>,
    /// What decides: `open`, `reply`, `forward`, `click` or `conversion` (share of delivered recipients).
    pub metric: String,
    /// The share of the audience in the test (0 < f ≤ 1); the winner goes to the rest.
    pub test_fraction: f64,
    /// Seed of the random assignment (default: random); the same seed and audience give the same arms.
    pub seed: Option<u64>,
    /// Stratify the assignment by this contact attribute (each value spread evenly over the arms).
    pub stratify_by: Option<String>,
    /// `auto` (default): the winner goes to the rest at the decision; `approval`: it waits for POST …/approve.
    pub winner: Option<String>,
    /// When to decide, after the last arm is sent (60 s to 30 days; default 24 h).
    pub decide_after_seconds: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct WarningWire {
    pub code: String,
    pub message: String,
    pub message_zh: String,
    pub hint: String,
}

#[derive(Serialize, ToSchema)]
pub struct ArmWire {
    pub arm: u32,
    pub label: String,
    /// The declared variable's value in this arm.
    #[schema(value_type = Object)]
    pub variant: serde_json::Value,
    pub broadcast_id: String,
    pub assigned: u64,
    pub send_at: String,
    /// Delivered recipients (the metric's denominator).
    pub delivered: u64,
    /// Recipients who did what the metric counts.
    pub successes: u64,
    pub rate: f64,
}

#[derive(Serialize, Deserialize, ToSchema, Clone)]
pub struct StatisticsWire {
    /// The arm with the highest rate so far.
    pub best_arm: u32,
    /// The runner-up the best is compared with.
    pub runner_up: Option<u32>,
    /// Two-proportion z-test, best against runner-up.
    pub z: Option<f64>,
    pub z_p_value: Option<f64>,
    /// Pearson's chi-square over every arm (k − 1 degrees of freedom).
    pub chi_square: Option<f64>,
    pub chi_square_p_value: Option<f64>,
    pub degrees_of_freedom: u32,
    /// The policy's threshold.
    pub significance: f64,
    /// The winner at this threshold; null: no significant winner.
    pub winner_arm: Option<u32>,
    /// In words, with the p-values.
    pub summary: String,
}

#[derive(Serialize, ToSchema)]
pub struct AbTestResponse {
    pub id: String,
    /// `testing`, `awaiting_approval` (a winner waits for approval), `winner_sent` or `no_winner`.
    pub state: String,
    pub broadcast_id: String,
    pub variable: String,
    pub metric: String,
    pub test_fraction: f64,
    pub seed: String,
    pub stratify_by: Option<String>,
    pub winner_mode: String,
    pub decide_at: String,
    /// Recipients left for the winner.
    pub rest_recipients: u64,
    pub arms: Vec<ArmWire>,
    /// The statistics now (while testing) or at the decision.
    pub statistics: StatisticsWire,
    pub decided_at: Option<String>,
    pub winner_arm: Option<u32>,
    pub winner_broadcast_id: Option<String>,
    pub warnings: Vec<WarningWire>,
}

fn warning(code: Code, message: String) -> WarningWire {
    WarningWire { code: code.as_str().into(), message, message_zh: code.message_zh().into(), hint: code.hint().into() }
}

fn ab_invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(Code::AbInvalid, message)
}

/// The arms' successes and trials under the test's metric, from their broadcasts' counters.
fn arm_figures(s: &Inner, t: &AbTestRecord) -> Result<Vec<(Proportion, u64)>, ApiError> {
    let metric = Metric::parse(&t.metric).ok_or_else(|| ApiError::internal(&"stored metric"))?;
    let mut out = Vec::new();
    for a in &t.arms {
        let r = s.store.measure_report(t.workspace_id, a.broadcast_id)?;
        let f = &r.all;
        let successes = match metric {
            Metric::Open => f.opened,
            Metric::Reply => f.replied,
            Metric::Forward => f.forwarded,
            Metric::Click => f.clicked,
            Metric::Conversion => f.converted,
        };
        out.push((Proportion { successes: successes.min(f.delivered), trials: f.delivered }, f.delivered));
    }
    Ok(out)
}

fn statistics(s: &Inner, arms: &[Proportion]) -> StatisticsWire {
    let alpha = s.policy.measurement.ab_significance;
    let d = stats::decide(arms, alpha);
    let mut order: Vec<usize> = (0..arms.len()).collect();
    order.sort_by(|&i, &j| arms[j].rate().partial_cmp(&arms[i].rate()).unwrap_or(std::cmp::Ordering::Equal));
    let runner_up = order.get(1).map(|&i| i as u32);
    let fmt = |p: Option<f64>| p.map_or_else(|| "n/a".to_owned(), |p| format!("{p:.4}"));
    let summary = match d.winner {
        Some(w) => format!(
            "arm {w} wins at {alpha}: chi-square p = {}, against the runner-up z-test p = {}",
            fmt(d.chi_square.map(|c| c.p_value)),
            fmt(d.z_test.map(|z| z.p_value))
        ),
        None => format!(
            "no significant winner at {alpha}: chi-square p = {}, best against runner-up z-test p = {}",
            fmt(d.chi_square.map(|c| c.p_value)),
            fmt(d.z_test.map(|z| z.p_value))
        ),
    };
    StatisticsWire {
        best_arm: d.best as u32,
        runner_up,
        z: d.z_test.map(|z| z.statistic),
        z_p_value: d.z_test.map(|z| z.p_value),
        chi_square: d.chi_square.map(|c| c.statistic),
        chi_square_p_value: d.chi_square.map(|c| c.p_value),
        degrees_of_freedom: arms.len().saturating_sub(1) as u32,
        significance: alpha,
        winner_arm: d.winner.map(|w| w as u32),
        summary,
    }
}

fn ab_response(s: &Inner, t: &AbTestRecord, warnings: Vec<WarningWire>) -> Result<AbTestResponse, ApiError> {
    let figures = arm_figures(s, t)?;
    let live = statistics(s, &figures.iter().map(|f| f.0).collect::<Vec<_>>());
    let stats = t.decision_json.as_deref().and_then(|j| serde_json::from_str(j).ok()).unwrap_or(live);
    Ok(AbTestResponse {
        id: t.id.to_string(),
        state: t.state.clone(),
        broadcast_id: t.base_broadcast_id.to_string(),
        variable: t.variable.clone(),
        metric: t.metric.clone(),
        test_fraction: t.test_fraction,
        seed: t.seed.to_string(),
        stratify_by: t.stratify_by.clone(),
        winner_mode: t.winner_mode.clone(),
        decide_at: ts(t.decide_at),
        rest_recipients: t.n_rest,
        arms: t
            .arms
            .iter()
            .zip(&figures)
            .map(|(a, (p, delivered))| ArmWire {
                arm: a.arm,
                label: a.label.clone(),
                variant: serde_json::from_str(&a.variant_json).unwrap_or(serde_json::Value::Null),
                broadcast_id: a.broadcast_id.to_string(),
                assigned: a.n_assigned,
                send_at: ts(a.send_at),
                delivered: *delivered,
                successes: p.successes,
                rate: ratio(p.successes, p.trials),
            })
            .collect(),
        statistics: stats,
        decided_at: ts_opt(t.decided_at),
        winner_arm: t.winner_arm,
        winner_broadcast_id: t.winner_broadcast_id.map(|b| b.to_string()),
        warnings,
    })
}

/// Start an A/B test of a draft: its audience is split (seeded, optionally
/// stratified) into a test fraction dealt over the arms and the rest; each
/// arm is a broadcast of its own, checked by every rule like any send. At
/// `decide_at` the winner by the metric (chi-square and z-test, p-values in
/// `statistics`) goes to the rest — at once (`auto`) or on approval; without
/// a significant winner nothing is sent (`no_winner`).
#[utoipa::path(post, path = "/v1/ab-tests", tag = "measurement", request_body = CreateAbTestRequest,
    responses((status = 201, body = AbTestResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_ab_test(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<CreateAbTestRequest>,
) -> ApiResult<(StatusCode, Json<AbTestResponse>)> {
    auth.require(Action::Send)?;
    let variable = Variable::parse(&req.variable)
        .ok_or_else(|| ab_invalid("variable is content, send_time, channel or attachment"))?;
    let metric =
        Metric::parse(&req.metric).ok_or_else(|| ab_invalid("metric is open, reply, forward, click or conversion"))?;
    if !(2..=5).contains(&req.variants.len()) {
        return Err(ab_invalid(format!("give 2 to 5 variants (3 recommended), not {}", req.variants.len())));
    }
    if !(req.test_fraction > 0.0 && req.test_fraction <= 1.0) {
        return Err(ab_invalid("test_fraction is above 0 and at most 1"));
    }
    let winner_mode = req.winner.clone().unwrap_or_else(|| "auto".into());
    if !matches!(winner_mode.as_str(), "auto" | "approval") {
        return Err(ab_invalid("winner is auto or approval"));
    }
    let decide_after = req.decide_after_seconds.unwrap_or(86_400);
    if !(60..=30 * 86_400).contains(&decide_after) {
        return Err(ab_invalid("decide_after_seconds is between 60 and 2592000"));
    }
    if let Some(attr) = &req.stratify_by {
        if attr.is_empty() || attr.len() > 64 || !attr.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return Err(ab_invalid("stratify_by names a contact attribute"));
        }
    }
    // Every variant gives the declared variable and nothing else, each a different value.
    let tier = state.policy.tier(auth.0.workspace.kind);
    let mut values = Vec::new();
    for (i, v) in req.variants.iter().enumerate() {
        let given = [v.content.is_some(), v.channel.is_some(), v.send_after_seconds.is_some()];
        let wanted = match variable {
            Variable::Content | Variable::Attachment => [true, false, false],
            Variable::Channel => [false, true, false],
            Variable::SendTime => [false, false, true],
        };
        if given != wanted {
            return Err(ab_invalid(format!(
                "variant {i} must give only the {} (variants differ in one declared variable)",
                match variable {
                    Variable::Content | Variable::Attachment => "content",
                    Variable::Channel => "channel",
                    Variable::SendTime => "send_after_seconds",
                }
            )));
        }
        let value = match variable {
            Variable::Content | Variable::Attachment => {
                let raw: RawContent = v.content.clone().expect("checked above").into();
                let content = Content::parse(&raw, tier.text_max_chars)
                    .map_err(|code| super::broadcasts::content_error(code, &raw, tier.text_max_chars))?;
                let key = if variable == Variable::Attachment {
                    raw.content_type.clone()
                } else {
                    content_to_json(&content.to_raw())
                };
                (key, serde_json::to_value(ContentWire::from(content.to_raw())).unwrap_or_default())
            }
            Variable::Channel => {
                let c = channel_of(v.channel.as_deref())?;
                (c.as_str().to_owned(), serde_json::json!(c.as_str()))
            }
            Variable::SendTime => {
                let secs = v.send_after_seconds.expect("checked above");
                if secs > 7 * 86_400 {
                    return Err(ab_invalid("send_after_seconds is at most 604800 (7 days)"));
                }
                (secs.to_string(), serde_json::json!(secs))
            }
        };
        if values.iter().any(|(k, _)| *k == value.0) {
            return Err(ab_invalid(format!(
                "variant {i} repeats another's {}: the arms must differ",
                if variable == Variable::Attachment { "attachment type" } else { variable.as_str() }
            )));
        }
        values.push(value);
    }
    let labels: Vec<String> = req
        .variants
        .iter()
        .enumerate()
        .map(|(i, v)| v.label.clone().unwrap_or_else(|| ((b'A' + i as u8) as char).to_string()))
        .collect();
    let base_id = parse_id(&req.broadcast_id)?;
    let workspace = auth.0.workspace.clone();
    let ctx = SendContext {
        kind: workspace.kind,
        plan: workspace.plan.clone(),
        actor: auth.0.actor(),
        member_id: auth.0.member_id,
    };
    let seed = req.seed.unwrap_or_else(rand::random);
    let variants = req.variants.clone();
    let (fraction, stratify_by) = (req.test_fraction, req.stratify_by.clone());
    let response = state
        .blocking(move |s| {
            let ws = workspace.id;
            let base = s.store.broadcast(ws, base_id)?;
            if base.state != qunfa_core::broadcast::BroadcastState::Draft {
                return Err(ab_invalid(format!("the base broadcast is {}, not a draft", base.state.as_str())));
            }
            let now = s.now();
            let spec = qunfa_store::json::audience_from_json(&base.audience_json)?;
            let audience: Vec<u32> = s.store.resolve_audience_at(ws, &spec, now)?.iter().collect();
            let strata = match &stratify_by {
                Some(attr) => Some(s.store.contact_attribute_values(ws, attr)?),
                None => None,
            };
            let stratum = strata.as_ref().map(|m| {
                move |id: u32| -> String { m.get(&id).cloned().unwrap_or_default() }
            });
            let assignment = qunfa_core::abtest::assign(
                &audience,
                variants.len(),
                fraction,
                seed,
                stratum.as_ref().map(|f| f as &dyn Fn(u32) -> String),
            );
            let mut warnings = Vec::new();
            let min = u64::from(s.policy.measurement.ab_min_per_arm);
            let smallest = assignment.arms.iter().map(Vec::len).min().unwrap_or(0) as u64;
            if smallest < min {
                warnings.push(warning(
                    Code::AbSmallArm,
                    format!("the smallest arm has {smallest} recipients, fewer than {min}: a difference may not be significant"),
                ));
            }
            if smallest == 0 {
                return Err(ab_invalid("an arm would have no recipients: the audience is too small for this test"));
            }
            // The arms: drafts of their own, then sent through every rule.
            let mut arms = Vec::new();
            let signed_base = content_to_json(&base.content);
            for (i, (members, (_, value))) in assignment.arms.iter().zip(&values).enumerate() {
                let (content_json, channels) = match variable {
                    Variable::Content | Variable::Attachment => {
                        let raw: RawContent = variants[i].content.clone().expect("checked").into();
                        let content = Content::parse(&raw, s.policy.tier(workspace.kind).text_max_chars)
                            .map_err(|code| ApiError::new(code, "variant content"))?;
                        (content_to_json(&super::recall::signed_content(s, &workspace, &content)?), base.channels.clone())
                    }
                    Variable::Channel => (signed_base.clone(), vec![channel_of(variants[i].channel.as_deref())?]),
                    Variable::SendTime => (signed_base.clone(), base.channels.clone()),
                };
                let audience_json = audience_to_json(&AudienceSpec::Contacts(members.clone()));
                let new = NewBroadcast {
                    request_hash: hex::encode(sha2::Sha256::digest(
                        format!("ab:{base_id}:{seed}:{i}:{content_json}").as_bytes(),
                    )),
                    content_json,
                    audience_json,
                    channels,
                    priority: base.priority,
                    client_msg_id: None,
                    ttl_ms: base.ttl_ms,
                    fallback: if variable == Variable::Channel { Vec::new() } else { base.fallback.clone() },
                };
                let (b, _) = s.store.create_broadcast(ws, ctx.member_id, &new, &ctx.actor, now)?;
                let send_at = now + variants[i].send_after_seconds.unwrap_or(0) as i64 * 1000;
                arms.push((b, value.clone(), members.len() as u64, send_at, labels[i].clone()));
            }
            // Every arm passes the rules before any is sent.
            for (b, ..) in &arms {
                let e = evaluate(s, workspace.kind, workspace.plan.as_deref(), b, false)?;
                if qunfa_core::preflight::blocks(&e.verdicts) {
                    return Err(ApiError::from_verdicts(&e.verdicts, now));
                }
            }
            let last_send = arms.iter().map(|a| a.3).max().unwrap_or(now);
            let new_test = NewAbTest {
                base_broadcast_id: base_id,
                variable: variable.as_str().into(),
                metric: metric.as_str().into(),
                test_fraction: fraction,
                seed,
                stratify_by: stratify_by.clone(),
                winner_mode: winner_mode.clone(),
                decide_at: last_send + decide_after as i64 * 1000,
                rest: Bitmap::of(&assignment.rest),
                arms: arms
                    .iter()
                    .map(|(b, value, n, send_at, label)| NewArm {
                        label: label.clone(),
                        variant_json: value.to_string(),
                        broadcast_id: b.id,
                        n_assigned: *n,
                        send_at: *send_at,
                    })
                    .collect(),
            };
            let test_id = s.store.create_ab_test(ws, ctx.member_id, &new_test, &ctx.actor, now)?;
            for (b, _, _, send_at, _) in &arms {
                if *send_at <= now {
                    submit(s, &ctx, b, None)?;
                }
            }
            ab_response(s, &s.store.ab_test(ws, test_id)?, warnings)
        })
        .await?;
    WAKE.notify_one();
    Ok((StatusCode::CREATED, Json(response)))
}

/// An A/B test with its arms and statistics.
#[utoipa::path(get, path = "/v1/ab-tests/{id}", tag = "measurement", params(("id" = String, Path)),
    responses((status = 200, body = AbTestResponse), (status = 404, body = ErrorBody)))]
pub async fn get_ab_test(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<AbTestResponse>> {
    auth.require(Action::Read)?;
    let (ws, id) = (auth.workspace_id(), parse_id(&id)?);
    Ok(Json(state.blocking(move |s| ab_response(s, &s.store.ab_test(ws, id)?, Vec::new())).await?))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct DecideRequest {
    /// For `approve`: send this arm to the rest (required when there is no significant winner).
    pub arm: Option<u32>,
}

/// Decide an A/B test now instead of at `decide_at` (same rules).
#[utoipa::path(post, path = "/v1/ab-tests/{id}/decide", tag = "measurement", params(("id" = String, Path)),
    responses((status = 200, body = AbTestResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn decide_ab_test(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<AbTestResponse>> {
    auth.require(Action::Send)?;
    let (ws, id, actor) = (auth.workspace_id(), parse_id(&id)?, auth.0.actor());
    let out = state
        .blocking(move |s| {
            let t = s.store.ab_test(ws, id)?;
            if t.state != "testing" {
                return Err(ApiError::new(Code::Conflict, format!("the A/B test is {}, decided already", t.state)));
            }
            decide(s, &t, &actor)?;
            ab_response(s, &s.store.ab_test(ws, id)?, Vec::new())
        })
        .await?;
    Ok(Json(out))
}

/// Send the winner (or, without a significant winner, the arm named) to the
/// rest of the audience (a key that may send).
#[utoipa::path(post, path = "/v1/ab-tests/{id}/approve", tag = "measurement", params(("id" = String, Path)), request_body = DecideRequest,
    responses((status = 200, body = AbTestResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn approve_ab_test(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<AbTestResponse>> {
    auth.require(Action::Send)?;
    let req: DecideRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DecideRequest::default()
    } else {
        crate::extract::parse_json(&body)?
    };
    let (ws, id, actor) = (auth.workspace_id(), parse_id(&id)?, auth.0.actor());
    let out = state
        .blocking(move |s| {
            let t = s.store.ab_test(ws, id)?;
            let arm = match (t.state.as_str(), req.arm, t.winner_arm) {
                ("awaiting_approval", Some(a), _) | ("no_winner", Some(a), _) => a,
                ("awaiting_approval", None, Some(w)) => w,
                ("no_winner", None, _) => {
                    return Err(ApiError::new(
                        Code::AbNoWinner,
                        "there is no significant winner: name the arm to send ({\"arm\": N}) or leave the rest unsent",
                    ))
                }
                (state, ..) => {
                    return Err(ApiError::new(Code::Conflict, format!("the A/B test is {state}: nothing to approve")))
                }
            };
            if !t.arms.iter().any(|a| a.arm == arm) {
                return Err(ab_invalid(format!("the test has no arm {arm}")));
            }
            send_winner(s, &t, arm, &t.state, &actor)?;
            ab_response(s, &s.store.ab_test(ws, id)?, Vec::new())
        })
        .await?;
    Ok(Json(out))
}

/// Decides a test that is testing: records the statistics and moves it to
/// `winner_sent` (sending the winner), `awaiting_approval` or `no_winner`.
fn decide(s: &Inner, t: &AbTestRecord, actor: &str) -> Result<(), ApiError> {
    let figures = arm_figures(s, t)?;
    let stats = statistics(s, &figures.iter().map(|f| f.0).collect::<Vec<_>>());
    let json = serde_json::to_string(&stats).map_err(|e| ApiError::internal(&e))?;
    let now = s.now();
    let (ws, id) = (t.workspace_id, t.id);
    match stats.winner_arm {
        None => {
            s.store.decide_ab_test(ws, id, "testing", "no_winner", Some(&json), None, actor, now)?;
        }
        Some(w) if t.winner_mode == "approval" => {
            s.store.decide_ab_test(ws, id, "testing", "awaiting_approval", Some(&json), Some((w, None)), actor, now)?;
        }
        Some(w) => {
            if s.store.decide_ab_test(ws, id, "testing", "decided", Some(&json), Some((w, None)), actor, now)? {
                let t = s.store.ab_test(ws, id)?;
                send_winner(s, &t, w, "decided", actor)?;
            }
        }
    }
    Ok(())
}

/// Sends arm `arm`'s broadcast again, to the rest of the audience, as the
/// test's sender; the test goes from `from` to `winner_sent`. A send the
/// rules refuse leaves the test in `from`, with the refusal as the answer.
fn send_winner(s: &Inner, t: &AbTestRecord, arm: u32, from: &str, actor: &str) -> Result<(), ApiError> {
    let (ws, id) = (t.workspace_id, t.id);
    s.store.claim_ab_winner(ws, id, from)?;
    let result = (|| {
        let a = t.arms.iter().find(|a| a.arm == arm).ok_or_else(|| ab_invalid(format!("no arm {arm}")))?;
        let source = s.store.broadcast(ws, a.broadcast_id)?;
        let rest: Vec<u32> = s.store.ab_rest(ws, id)?.iter().collect();
        if rest.is_empty() {
            return Ok(None);
        }
        let content_json = content_to_json(&source.content);
        let new = NewBroadcast {
            request_hash: hex::encode(sha2::Sha256::digest(format!("ab:{id}:winner:{arm}:{content_json}").as_bytes())),
            content_json,
            audience_json: audience_to_json(&AudienceSpec::Contacts(rest)),
            channels: source.channels.clone(),
            priority: source.priority,
            client_msg_id: None,
            ttl_ms: source.ttl_ms,
            fallback: source.fallback.clone(),
        };
        let workspace = s.store.workspace(ws)?;
        let ctx =
            SendContext { kind: workspace.kind, plan: workspace.plan, actor: actor.to_owned(), member_id: t.member_id };
        let (b, _) = s.store.create_broadcast(ws, t.member_id, &new, actor, s.now())?;
        s.store.tag_ab_broadcast(ws, id, b.id)?;
        submit(s, &ctx, &b, None)?;
        Ok(Some(b.id))
    })();
    match result {
        Ok(b) => {
            s.store.decide_ab_test(ws, id, "sending_winner", "winner_sent", None, Some((arm, b)), actor, s.now())?;
            Ok(())
        }
        Err(e) => {
            // Back to where it was: the operator can fix the cause and approve again.
            let back = if from == "decided" { "awaiting_approval" } else { from };
            s.store.decide_ab_test(
                ws,
                id,
                "sending_winner",
                back,
                None,
                t.winner_arm.map(|w| (w, None)),
                actor,
                s.now(),
            )?;
            Err(e)
        }
    }
}

static WAKE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// The A/B task: sends arms whose time came (the `send_time` variable) and
/// decides tests whose `decide_at` passed, by the server's clock, every second.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(error) = state.blocking(run_due).await {
                tracing::warn!(code = error.code.as_str(), message = %error.message, "A/B pass failed");
            }
            tokio::select! {
                () = WAKE.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    })
}

/// One pass of the A/B task; returns how many arms and tests it handled.
///
/// # Errors
/// Database errors reading what is due; a failing test is logged and left for the next pass.
pub fn run_due(s: &Inner) -> Result<usize, ApiError> {
    let now = s.now();
    let mut done = 0;
    for (ws, test, broadcast, member) in s.store.due_ab_arms(now, 20)? {
        let outcome = (|| {
            let workspace = s.store.workspace(ws)?;
            let ctx = SendContext {
                kind: workspace.kind,
                plan: workspace.plan,
                actor: format!("ab_test:{test}"),
                member_id: member,
            };
            let b = s.store.broadcast(ws, broadcast)?;
            submit(s, &ctx, &b, None)
        })();
        match outcome {
            Ok(_) => done += 1,
            Err(e) => tracing::warn!(test, broadcast, code = e.code.as_str(), message = %e.message, "A/B arm not sent"),
        }
    }
    for (ws, id) in s.store.due_ab_tests(now, 20)? {
        let t = s.store.ab_test(ws, id)?;
        // Arms still waiting to be sent (refused, say) keep the test open.
        match decide(s, &t, &format!("ab_test:{id}")) {
            Ok(()) => done += 1,
            Err(e) => tracing::warn!(test = id, code = e.code.as_str(), message = %e.message, "A/B test not decided"),
        }
    }
    Ok(done)
}
