//! Contacts, bulk import, inbox tokens and media uploads.

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::IntoResponse,
    Json,
};
use qunfa_core::{
    contact::{ContactInput, RawChannels, RawContact},
    import::ImportFormat,
    message::MediaId,
    workspace::Action,
    Code,
};
use qunfa_store::contacts::ContactRecord;
use serde::Deserialize;

use super::{contact_id, parse_contact_id, PageQuery};
use crate::{
    error::{ApiError, ApiResult, ErrorBody},
    extract::{ApiJson, Auth},
    wire::*,
    AppState,
};

pub fn contact_response(workspace_id: i64, c: ContactRecord) -> ContactResponse {
    ContactResponse {
        id: contact_id(workspace_id, c.idx),
        external_id: c.external_id,
        name: c.name,
        attributes: c.attributes,
        channels: ChannelsWire { email: c.email, phone: c.phone, webhook: c.webhook, wecom_userid: c.wecom_userid },
        consent: c.consent,
        tags: c.tags,
        departments: c.departments.iter().map(ToString::to_string).collect(),
        created_at: ts(c.created_at),
        updated_at: ts(c.updated_at),
        opt_outs: None,
    }
}

fn contact_error(e: qunfa_core::contact::ContactError) -> ApiError {
    ApiError::new(e.code, format!("{}: {}", e.field, e.code.message_en()))
        .with_details(vec![serde_json::json!({"field": e.field})])
}

/// Create a contact.
#[utoipa::path(post, path = "/v1/contacts", tag = "contacts", request_body = ContactRequest,
    responses((status = 201, body = ContactResponse), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_contact(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<ContactRequest>,
) -> ApiResult<(StatusCode, Json<ContactResponse>)> {
    auth.require(Action::ManageContacts)?;
    let channels = req.channels.unwrap_or_default();
    let raw = RawContact {
        external_id: Some(req.external_id),
        name: req.name,
        attributes: req.attributes.unwrap_or_default().into_iter().collect(),
        channels: RawChannels {
            email: channels.email,
            phone: channels.phone,
            webhook: channels.webhook,
            wecom_userid: channels.wecom_userid,
        },
        consent: req.consent.unwrap_or_default(),
        tags: req.tags.unwrap_or_default(),
    };
    let input = ContactInput::parse(raw).map_err(contact_error)?;
    let (ws, kind, actor) = (auth.workspace_id(), auth.0.workspace.kind, auth.0.actor());
    let rec =
        state.blocking(move |s| Ok(s.store.create_contact(ws, s.policy.tier(kind), &input, &actor, s.now())?)).await?;
    Ok((StatusCode::CREATED, Json(contact_response(ws, rec))))
}

/// `?limit=&cursor=&q=` of the contact list.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ContactListQuery {
    /// 1 to 1,000; default 100.
    pub limit: Option<usize>,
    pub cursor: Option<String>,
    /// Only contacts whose external id is this, or whose name starts with it (1–128 characters).
    pub q: Option<String>,
}

/// List contacts, by id; `q` searches by external id or the start of the name.
#[utoipa::path(get, path = "/v1/contacts", tag = "contacts", params(ContactListQuery),
    responses((status = 200, body = Page<ContactResponse>), (status = 400, body = ErrorBody)))]
pub async fn list_contacts(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<ContactListQuery>,
) -> ApiResult<Json<Page<ContactResponse>>> {
    auth.require(Action::Read)?;
    let ws = auth.workspace_id();
    let limit = PageQuery { limit: q.limit, cursor: None }.limit()?;
    let after = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(parse_contact_id(ws, c).map_err(|_| ApiError::code(Code::BadCursor))?),
    };
    let search = q.q.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    if search.as_ref().is_some_and(|s| s.chars().count() > 128) {
        return Err(ApiError::new(Code::BadRequest, "q is at most 128 characters"));
    }
    let rows = state
        .blocking(move |s| {
            Ok(match &search {
                Some(query) => s.store.search_contacts(ws, query, after, limit)?,
                None => s.store.contacts(ws, after, limit)?,
            })
        })
        .await?;
    let next_cursor = (rows.len() == limit).then(|| rows.last().map(|c| contact_id(ws, c.idx))).flatten();
    Ok(Json(Page { items: rows.into_iter().map(|c| contact_response(ws, c)).collect(), next_cursor }))
}

/// One contact, with tags and departments.
#[utoipa::path(get, path = "/v1/contacts/{id}", tag = "contacts", params(("id" = String, Path)),
    responses((status = 200, body = ContactResponse), (status = 404, body = ErrorBody)))]
pub async fn get_contact(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<ContactResponse>> {
    auth.require(Action::Read)?;
    let ws = auth.workspace_id();
    let idx = parse_contact_id(ws, &id)?;
    let (rec, opt_outs) =
        state.blocking(move |s| Ok((s.store.contact(ws, idx)?, s.store.opt_outs_of(ws, idx)?))).await?;
    let mut out = contact_response(ws, rec);
    out.opt_outs = Some(
        opt_outs
            .into_iter()
            .map(|(channel, reason)| OptOutWire { channel: channel.as_str().into(), reason: reason.as_str().into() })
            .collect(),
    );
    Ok(Json(out))
}

/// Change a contact: attributes and consent merge, addresses replace.
#[utoipa::path(patch, path = "/v1/contacts/{id}", tag = "contacts", params(("id" = String, Path)), request_body = ContactPatchRequest,
    responses((status = 200, body = ContactResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn patch_contact(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ContactPatchRequest>,
) -> ApiResult<Json<ContactResponse>> {
    auth.require(Action::ManageContacts)?;
    let ws = auth.workspace_id();
    let idx = parse_contact_id(ws, &id)?;
    let actor = auth.0.actor();
    let rec = state
        .blocking(move |s| {
            let current = s.store.contact(ws, idx)?;
            let mut attributes: std::collections::BTreeMap<String, serde_json::Value> =
                current.attributes.into_iter().collect();
            for (k, v) in req.attributes.unwrap_or_default() {
                if v.is_null() {
                    attributes.remove(&k);
                } else {
                    attributes.insert(k, v);
                }
            }
            let mut channels = RawChannels {
                email: current.email,
                phone: current.phone,
                webhook: current.webhook,
                wecom_userid: current.wecom_userid,
            };
            for (k, v) in req.channels.unwrap_or_default() {
                let value = match v {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) if s.is_empty() => None,
                    serde_json::Value::String(s) => Some(s),
                    _ => return Err(ApiError::new(Code::BadJson, format!("channels.{k}: expected a string or null"))),
                };
                match k.as_str() {
                    "email" => channels.email = value,
                    "phone" => channels.phone = value,
                    "webhook" => channels.webhook = value,
                    "wecom_userid" => channels.wecom_userid = value,
                    _ => return Err(ApiError::new(Code::BadJson, format!("channels: unknown field `{k}`"))),
                }
            }
            let mut consent: std::collections::BTreeMap<String, bool> =
                current.consent.into_iter().filter_map(|(k, v)| v.as_bool().map(|b| (k, b))).collect();
            consent.extend(req.consent.unwrap_or_default());
            let raw = RawContact {
                external_id: Some(current.external_id),
                name: req.name.or(Some(current.name)),
                attributes: attributes.into_iter().collect(),
                channels,
                consent,
                tags: Vec::new(),
            };
            let input = ContactInput::parse(raw).map_err(contact_error)?;
            Ok(s.store.update_contact(ws, idx, &input, &actor, s.now())?)
        })
        .await?;
    Ok(Json(contact_response(ws, rec)))
}

/// Delete a contact: personal data is erased at once; delivery records keep the id only.
#[utoipa::path(delete, path = "/v1/contacts/{id}", tag = "contacts", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_contact(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(Action::ManageContacts)?;
    let ws = auth.workspace_id();
    let idx = parse_contact_id(ws, &id)?;
    let actor = auth.0.actor();
    state.blocking(move |s| Ok(s.store.delete_contact(ws, idx, &actor, s.now())?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// Import the valid lines even when some are rejected (default: all or nothing).
    pub partial: Option<bool>,
    /// `csv` or `ndjson`, when the Content-Type does not say.
    pub format: Option<String>,
}

/// Bulk import (CSV with a header line, or NDJSON). Known external ids are
/// updated (attributes merge, tags are added). Rejected lines are reported with
/// their line numbers; unless `partial=true`, any rejected line means nothing is imported.
#[utoipa::path(post, path = "/v1/contacts/import", tag = "contacts", params(ImportQuery),
    request_body(content = String, content_type = "text/csv"),
    responses((status = 200, body = ImportResponse), (status = 422, body = ErrorBody)))]
pub async fn import_contacts(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<ImportQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<ImportResponse>> {
    auth.require(Action::ManageContacts)?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let format = match q.format.as_deref() {
        Some("csv") => ImportFormat::Csv,
        Some("ndjson") => ImportFormat::Ndjson,
        Some(other) => return Err(ApiError::new(Code::ImportFormat, format!("unknown format {other:?}"))),
        None => ImportFormat::detect(content_type).ok_or_else(|| ApiError::code(Code::ImportFormat))?,
    };
    let (ws, kind, actor) = (auth.workspace_id(), auth.0.workspace.kind, auth.0.actor());
    let partial = q.partial.unwrap_or(false);
    state
        .blocking(move |s| {
            let report = s.store.import_file(ws, s.policy.tier(kind), format, &body, partial, &actor, s.now())?;
            let rejected: Vec<RejectedLine> = report
                .rejected
                .iter()
                .map(|r| RejectedLine { line: r.line, code: r.code.as_str().into(), message: r.message.clone() })
                .collect();
            let Some(outcome) = report.outcome else {
                let details = rejected.iter().take(1000).map(|r| serde_json::to_value(r).unwrap_or_default()).collect();
                return Err(ApiError::new(
                    Code::ImportRejected,
                    format!(
                        "{} line(s) rejected; nothing was imported (first at line {})",
                        rejected.len(),
                        rejected[0].line
                    ),
                )
                .with_details(details));
            };
            Ok(Json(ImportResponse {
                imported: outcome.imported,
                updated: outcome.updated,
                tags_created: outcome.tags_created,
                rejected,
            }))
        })
        .await
}

/// Issue a token with which this contact reads their inbox.
#[utoipa::path(post, path = "/v1/contacts/{id}/inbox-token", tag = "contacts", params(("id" = String, Path)),
    responses((status = 201, body = TokenResponse), (status = 404, body = ErrorBody)))]
pub async fn inbox_token(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<TokenResponse>)> {
    auth.require(Action::ManageContacts)?;
    let ws = auth.workspace_id();
    let idx = parse_contact_id(ws, &id)?;
    let actor = auth.0.actor();
    let token = state.blocking(move |s| Ok(s.store.create_inbox_token(ws, idx, &actor, s.now())?)).await?;
    Ok((StatusCode::CREATED, Json(TokenResponse { token })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct MediaQuery {
    pub filename: Option<String>,
}

/// Most bytes of one media upload.
const MAX_MEDIA_BYTES: usize = 20 * 1024 * 1024;

/// Upload an image or file (raw body; Content-Type names its type). Stored by content hash.
#[utoipa::path(post, path = "/v1/media", tag = "media", params(MediaQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = MediaResponse), (status = 400, body = ErrorBody)))]
pub async fn upload_media(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<MediaQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<MediaResponse>)> {
    auth.require(Action::ManageContacts)?;
    if body.is_empty() {
        return Err(ApiError::new(Code::BadRequest, "the upload is empty"));
    }
    if body.len() > MAX_MEDIA_BYTES {
        return Err(ApiError::code(Code::PayloadTooLarge));
    }
    if q.filename.as_deref().is_some_and(|f| f.chars().count() > 255 || f.chars().any(char::is_control)) {
        return Err(ApiError::new(Code::BadRequest, "filename has at most 255 characters and no control characters"));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let (ws, actor) = (auth.workspace_id(), auth.0.actor());
    let size = body.len() as u64;
    let ct = content_type.clone();
    let id = state
        .blocking(move |s| {
            // Images get a perceptual hash, for counting repeated images.
            let image_hash = ct.starts_with("image/").then(|| qunfa_safety::dedup::image_hash(&body).ok()).flatten();
            let upload = qunfa_store::media::MediaUpload {
                bytes: &body,
                content_type: &ct,
                filename: q.filename.as_deref(),
                image_hash,
            };
            Ok(s.store.put_media(ws, upload, &actor, s.now())?)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(MediaResponse { media_id: id.as_str().to_owned(), content_type, size })))
}

/// Download a media item.
#[utoipa::path(get, path = "/v1/media/{id}", tag = "media", params(("id" = String, Path)),
    responses((status = 200, body = Vec<u8>), (status = 404, body = ErrorBody)))]
pub async fn get_media(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    auth.require(Action::Read)?;
    let media_id = MediaId::parse(&id).map_err(|_| ApiError::not_found())?;
    let ws = auth.workspace_id();
    let (content_type, bytes) = state.blocking(move |s| Ok(s.store.media(ws, &media_id)?)).await?;
    Ok(([(header::CONTENT_TYPE, content_type)], bytes))
}
