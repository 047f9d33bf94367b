//! Route handlers, one module per resource.

pub mod audiences;
pub mod broadcasts;
pub mod channels;
pub mod console;
pub mod contacts;
pub mod evidence;
pub mod inbox;
pub mod measure;
pub mod ops;
pub mod recall;
pub mod safety;
pub mod schedule;
pub mod security;
pub mod tags;
pub mod workspaces;

use qunfa_core::Code;
use serde::Deserialize;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{error::ApiError, AppState};

#[derive(OpenApi)]
#[openapi(
    info(title = "qunfa API", description = "Self-hosted mass messaging with the platform's rules built in. Errors are `{\"error\": {code, message, message_zh, hint, details}}`; see docs/errors.md for the codes."),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security =
            Some(vec![utoipa::openapi::security::SecurityRequirement::new("bearer", Vec::<String>::new())]);
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(workspaces::create_workspace))
        .routes(routes!(workspaces::current_workspace))
        .routes(routes!(workspaces::create_member, workspaces::list_members))
        .routes(routes!(contacts::create_contact, contacts::list_contacts))
        .routes(routes!(contacts::get_contact, contacts::patch_contact, contacts::delete_contact))
        .routes(routes!(contacts::import_contacts))
        .routes(routes!(contacts::inbox_token))
        .routes(routes!(tags::create_tag, tags::list_tags))
        .routes(routes!(tags::add_tag_members, tags::remove_tag_members))
        .routes(routes!(tags::create_department, tags::list_departments))
        .routes(routes!(tags::add_department_members))
        .routes(routes!(contacts::upload_media))
        .routes(routes!(contacts::get_media))
        .routes(routes!(audiences::count))
        .routes(routes!(audiences::create_segment, audiences::list_segments))
        .routes(routes!(audiences::get_segment, audiences::delete_segment))
        .routes(routes!(tags::tag_report))
        .routes(routes!(broadcasts::create_broadcast, broadcasts::list_broadcasts))
        .routes(routes!(broadcasts::get_broadcast))
        .routes(routes!(broadcasts::preflight))
        .routes(routes!(broadcasts::send))
        .routes(routes!(broadcasts::verification_code))
        .routes(routes!(broadcasts::approve))
        .routes(routes!(security::approvals))
        .routes(routes!(security::login))
        .routes(routes!(security::verify))
        .routes(routes!(security::login_code))
        .routes(routes!(security::unlock))
        .routes(routes!(security::get_health))
        .routes(routes!(security::post_signal))
        .routes(routes!(security::put_override))
        .routes(routes!(security::get_review_chain, security::put_review_chain))
        .routes(routes!(security::put_review_stages))
        .routes(routes!(broadcasts::reject))
        .routes(routes!(broadcasts::pause))
        .routes(routes!(broadcasts::resume))
        .routes(routes!(broadcasts::retry_failed))
        .routes(routes!(recall::recall))
        .routes(routes!(recall::correction))
        .routes(routes!(workspaces::get_speed, workspaces::set_speed))
        .routes(routes!(broadcasts::deliveries))
        .routes(routes!(broadcasts::replies))
        .routes(routes!(broadcasts::events))
        .routes(routes!(evidence::evidence))
        .routes(routes!(schedule::schedule_broadcast, schedule::get_schedule, schedule::cancel_schedule))
        .routes(routes!(schedule::get_settings, schedule::put_settings))
        .routes(routes!(inbox::list_inbox))
        .routes(routes!(inbox::get_message))
        .routes(routes!(inbox::read_message))
        .routes(routes!(inbox::reply_message))
        .routes(routes!(inbox::report_message))
        .routes(routes!(inbox::block_sender, inbox::unblock_sender))
        .routes(routes!(inbox::forward_message))
        .routes(routes!(inbox::unsubscribe))
        .routes(routes!(channels::list_channels))
        .routes(routes!(channels::get_channel, channels::put_channel, channels::delete_channel))
        .routes(routes!(channels::bounce))
        .routes(routes!(channels::receipts))
        .routes(routes!(channels::create_event_endpoint, channels::list_event_endpoints))
        .routes(routes!(channels::delete_event_endpoint))
        .routes(routes!(channels::event_deliveries))
        .routes(routes!(channels::redeliver_event))
        .routes(routes!(safety::check))
        .routes(routes!(safety::get_safety))
        .routes(routes!(safety::reload))
        .routes(routes!(safety::list_words, safety::add_words, safety::remove_words))
        .routes(routes!(safety::upload_words))
        .routes(routes!(safety::list_reviews))
        .routes(routes!(safety::review_examples))
        .routes(routes!(safety::get_review))
        .routes(routes!(safety::approve_review))
        .routes(routes!(safety::reject_review))
        .routes(routes!(ops::audit_log))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::metrics))
        // Measurement (issue 9, docs/measurement.md).
        .routes(routes!(measure::create_link, measure::list_links))
        .routes(routes!(measure::get_link))
        .routes(routes!(measure::recipient_url))
        .routes(routes!(measure::link_qr))
        .routes(routes!(measure::create_conversion))
        .routes(routes!(measure::close_message))
        .routes(routes!(measure::report))
        .routes(routes!(measure::create_ab_test))
        .routes(routes!(measure::get_ab_test))
        .routes(routes!(measure::decide_ab_test))
        .routes(routes!(measure::approve_ab_test))
        // Credentials of the WeChat-compatible API (crate::compat).
        .routes(routes!(crate::compat::settings::list_compat))
        .routes(routes!(crate::compat::settings::put_compat, crate::compat::settings::delete_compat))
        // Console logins (issue 8).
        .routes(routes!(console::login))
        .routes(routes!(console::logout))
        .routes(routes!(console::session))
        .routes(routes!(console::set_login))
}

/// `?limit=&cursor=` of list routes.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// 1 to 1,000; default 100.
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

impl PageQuery {
    pub fn limit(&self) -> Result<usize, ApiError> {
        match self.limit {
            None => Ok(100),
            Some(n @ 1..=1000) => Ok(n),
            Some(_) => Err(ApiError::new(Code::BadRequest, "limit must be between 1 and 1000")),
        }
    }
    /// The cursor as a number.
    pub fn cursor_i64(&self) -> Result<Option<i64>, ApiError> {
        self.cursor.as_deref().map(|c| c.parse::<i64>().map_err(|_| ApiError::code(Code::BadCursor))).transpose()
    }
}

/// A resource id from the path; anything that is not one is simply not found.
pub fn parse_id(s: &str) -> Result<i64, ApiError> {
    s.parse::<i64>().ok().filter(|v| *v > 0).ok_or_else(ApiError::not_found)
}

/// The dense index of a contact id, which must belong to `workspace_id`.
pub fn parse_contact_id(workspace_id: i64, s: &str) -> Result<u32, ApiError> {
    s.parse::<i64>().ok().and_then(|id| qunfa_store::contact_idx_of(workspace_id, id)).ok_or_else(ApiError::not_found)
}

/// Contact ids of a request body; any foreign or malformed id refuses the
/// request with every such id in the details.
pub fn parse_contact_ids(workspace_id: i64, ids: &[String]) -> Result<Vec<u32>, ApiError> {
    let mut out = Vec::with_capacity(ids.len());
    let mut bad = Vec::new();
    for id in ids {
        match parse_contact_id(workspace_id, id) {
            Ok(idx) => out.push(idx),
            Err(_) => bad.push(serde_json::Value::String(id.clone())),
        }
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(ApiError::new(Code::NotFound, format!("{} contact id(s) not found in this workspace", bad.len()))
            .with_details(bad))
    }
}

pub fn contact_id(workspace_id: i64, idx: u32) -> String {
    qunfa_store::contact_public_id(workspace_id, idx).to_string()
}
