//! `/v1/compat`: the credentials of the WeChat-compatible API (admins and
//! owners). Secrets are stored as SHA-256 only; the callback token and
//! EncodingAESKey are stored as given (they sign and encrypt callbacks) and
//! masked in answers.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use qunfa_core::{workspace::Action, Code};
use qunfa_store::compat::CompatCredentials;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Kind;
use crate::{
    error::{ApiError, ApiResult, ErrorBody},
    extract::{ApiJson, Auth},
    wire::ts,
    AppState,
};

/// Credentials of one compatible API.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompatCredentialsRequest {
    /// The corpid (WeCom) or appid (Official Account) clients send.
    pub app_id: String,
    /// The corpsecret or AppSecret: 32 to 128 characters (stored as SHA-256
    /// only). Omitted: the server generates one (43 letters and digits) and
    /// answers it once, in `secret`.
    pub secret: Option<String>,
    /// Where `MASSSENDJOBFINISH` events are posted (Official Account).
    pub callback_url: Option<String>,
    /// The callback Token (3 to 32 letters and digits).
    pub callback_token: Option<String>,
    /// The 43-character EncodingAESKey.
    pub encoding_aes_key: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CompatCredentialsResponse {
    /// `wecom` or `oa`.
    pub kind: String,
    pub app_id: String,
    /// The member compatible calls act as (whose quota and rules apply).
    pub member_id: String,
    pub callback_url: Option<String>,
    /// Masked.
    pub callback_token: Option<String>,
    /// Masked.
    pub encoding_aes_key: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// The secret the server generated (when none was given): shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// Shortest secret accepted: a corpsecret is 43 characters, an AppSecret 32.
const MIN_SECRET: usize = 32;

/// A generated secret: 43 letters and digits (like a corpsecret).
fn new_secret() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..43).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

fn mask(s: &Option<String>) -> Option<String> {
    s.as_ref().map(|v| format!("{}…", v.chars().take(3).collect::<String>()))
}

fn response(c: CompatCredentials) -> CompatCredentialsResponse {
    CompatCredentialsResponse {
        kind: c.kind.clone(),
        app_id: c.app_id.clone(),
        member_id: c.member_id.to_string(),
        callback_url: c.callback_url.clone(),
        callback_token: mask(&c.callback_token),
        encoding_aes_key: mask(&c.callback_aes_key),
        created_at: ts(c.created_at),
        updated_at: ts(c.updated_at),
        secret: None,
    }
}

fn kind_of(s: &str) -> Result<Kind, ApiError> {
    Kind::parse(s).ok_or_else(|| ApiError::new(Code::NotFound, "the compatible APIs are wecom and oa"))
}

fn bad(field: &str, message: &str) -> ApiError {
    ApiError::new(Code::BadRequest, format!("{field}: {message}"))
        .with_details(vec![serde_json::json!({"field": field})])
}

/// Set the credentials of the WeCom (`wecom`) or Official Account (`oa`)
/// compatible API (admin or owner). Compatible calls act as the member who
/// sets them; new credentials void the tokens issued before.
#[utoipa::path(put, path = "/v1/compat/{kind}", tag = "compat", params(("kind" = String, Path, description = "wecom or oa")),
    request_body = CompatCredentialsRequest,
    responses((status = 200, body = CompatCredentialsResponse), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn put_compat(
    State(state): State<AppState>,
    auth: Auth,
    Path(kind): Path<String>,
    ApiJson(req): ApiJson<CompatCredentialsRequest>,
) -> ApiResult<Json<CompatCredentialsResponse>> {
    auth.require(Action::ManageMembers)?;
    let kind = kind_of(&kind)?;
    let app_id = req.app_id.trim().to_owned();
    if app_id.is_empty()
        || app_id.len() > 64
        || !app_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(bad("app_id", "1 to 64 letters, digits, _ or -"));
    }
    let generated = req.secret.is_none();
    let secret = req.secret.unwrap_or_else(new_secret);
    if !(MIN_SECRET..=128).contains(&secret.chars().count()) {
        return Err(bad("secret", "32 to 128 characters, or none: the server then generates one"));
    }
    let callback = [&req.callback_url, &req.callback_token, &req.encoding_aes_key];
    if callback.iter().any(|v| v.is_some()) && !callback.iter().all(|v| v.is_some()) {
        return Err(bad("callback_url", "give callback_url, callback_token and encoding_aes_key together"));
    }
    if let Some(url) = &req.callback_url {
        qunfa_core::contact::HttpUrl::parse(url).map_err(|_| bad("callback_url", "an absolute http(s) URL"))?;
    }
    if let Some(t) = &req.callback_token {
        if !(3..=32).contains(&t.len()) || !t.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(bad("callback_token", "3 to 32 letters and digits"));
        }
    }
    if let Some(k) = &req.encoding_aes_key {
        super::crypto::aes_key(k).map_err(|e| bad("encoding_aes_key", &e))?;
    }
    let creds = CompatCredentials {
        workspace_id: auth.workspace_id(),
        kind: kind.as_str().to_owned(),
        app_id,
        secret_hash: qunfa_store::secret_hash(&secret),
        member_id: auth.0.member_id,
        callback_url: req.callback_url,
        callback_token: req.callback_token,
        callback_aes_key: req.encoding_aes_key,
        created_at: 0,
        updated_at: 0,
    };
    let (ws, actor) = (auth.workspace_id(), auth.0.actor());
    let saved = state
        .blocking(move |s| {
            s.store.set_compat_credentials(&creds, &actor, s.now())?;
            s.store.compat_credentials_of(ws, &creds.kind)?.ok_or_else(ApiError::not_found)
        })
        .await?;
    let mut out = response(saved);
    out.secret = generated.then_some(secret);
    Ok(Json(out))
}

/// The workspace's compatible-API credentials (secrets never shown).
#[utoipa::path(get, path = "/v1/compat", tag = "compat", responses((status = 200, body = Vec<CompatCredentialsResponse>)))]
pub async fn list_compat(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<Vec<CompatCredentialsResponse>>> {
    auth.require(Action::ManageMembers)?;
    let ws = auth.workspace_id();
    let list = state.blocking(move |s| Ok(s.store.compat_credentials(ws)?)).await?;
    Ok(Json(list.into_iter().map(response).collect()))
}

/// Remove a compatible API's credentials and its tokens (admin or owner).
#[utoipa::path(delete, path = "/v1/compat/{kind}", tag = "compat", params(("kind" = String, Path, description = "wecom or oa")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_compat(
    State(state): State<AppState>,
    auth: Auth,
    Path(kind): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(Action::ManageMembers)?;
    let kind = kind_of(&kind)?;
    let (ws, actor) = (auth.workspace_id(), auth.0.actor());
    state.blocking(move |s| Ok(s.store.delete_compat_credentials(ws, kind.as_str(), &actor, s.now())?)).await?;
    Ok(StatusCode::NO_CONTENT)
}
