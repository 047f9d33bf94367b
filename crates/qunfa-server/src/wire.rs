//! Wire types: the JSON shapes of the API, with their OpenAPI schemas. Domain
//! types stay free of serde; conversions live here.

use std::collections::BTreeMap;

use qunfa_core::{message::RawContent, preflight::Verdict};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// RFC 3339 time of a Unix-millisecond timestamp.
pub fn ts(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(String::new, |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

pub fn ts_opt(ms: Option<i64>) -> Option<String> {
    ms.map(ts)
}

/// Parses an RFC 3339 time.
pub fn parse_ts(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis())
}

/// A page of a list.
#[derive(Serialize, ToSchema)]
pub struct Page<T: ToSchema> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspaceRequest {
    pub name: String,
    /// `personal`, `enterprise` or `api`.
    pub kind: String,
    /// For `api` workspaces: `basic` (500 recipients), `standard` (2,000) or `pro` (10,000), per the policy.
    pub plan: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CreateWorkspaceResponse {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub plan: Option<String>,
    pub member_id: String,
    /// The owner's API key. Shown once; only its hash is stored.
    pub api_key: String,
}

#[derive(Serialize, ToSchema)]
pub struct WorkspaceResponse {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub plan: Option<String>,
    pub created_at: String,
    /// The member and role of the key that asked.
    pub member_id: String,
    pub role: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMemberRequest {
    pub name: String,
    /// `owner`, `admin`, `sender`, `reviewer`, `auditor` or `viewer`.
    pub role: String,
    /// When the sender account was opened, if before today (RFC 3339).
    pub account_created_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct MemberResponse {
    pub id: String,
    pub name: String,
    pub role: String,
    pub created_at: String,
    /// Present only in the answer to the creation.
    pub api_key: Option<String>,
}

#[derive(Deserialize, Serialize, ToSchema, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct ChannelsWire {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub webhook: Option<String>,
    pub wecom_userid: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactRequest {
    pub external_id: String,
    pub name: Option<String>,
    /// Free profile attributes: string, number or boolean values.
    #[schema(value_type = Object)]
    pub attributes: Option<serde_json::Map<String, serde_json::Value>>,
    pub channels: Option<ChannelsWire>,
    /// Consent per channel, e.g. `{"email": true}`.
    pub consent: Option<BTreeMap<String, bool>>,
    /// Tag paths, created when missing.
    pub tags: Option<Vec<String>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactPatchRequest {
    pub name: Option<String>,
    /// Merged into the stored attributes; a `null` value removes the key.
    #[schema(value_type = Object)]
    pub attributes: Option<serde_json::Map<String, serde_json::Value>>,
    /// Each given address replaces the stored one; `null` or `""` removes it.
    #[schema(value_type = Object)]
    pub channels: Option<serde_json::Map<String, serde_json::Value>>,
    /// Merged into the stored consent.
    pub consent: Option<BTreeMap<String, bool>>,
}

#[derive(Serialize, ToSchema)]
pub struct ContactResponse {
    pub id: String,
    pub external_id: String,
    pub name: String,
    #[schema(value_type = Object)]
    pub attributes: serde_json::Map<String, serde_json::Value>,
    pub channels: ChannelsWire,
    #[schema(value_type = Object)]
    pub consent: serde_json::Map<String, serde_json::Value>,
    pub tags: Vec<String>,
    pub departments: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Channels the contact gets no messages on, with why: `consent`
    /// (refused), `unsubscribed` (by the contact), `bounced` (a hard bounce).
    /// Only on `GET /v1/contacts/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opt_outs: Option<Vec<OptOutWire>>,
}

#[derive(Serialize, ToSchema)]
pub struct OptOutWire {
    pub channel: String,
    pub reason: String,
}

#[derive(Serialize, ToSchema)]
pub struct RejectedLine {
    pub line: u64,
    pub code: String,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct ImportResponse {
    pub imported: u64,
    pub updated: u64,
    pub tags_created: u64,
    /// Lines that could not be parsed. Without `partial=true` any rejected
    /// line refuses the whole file (422) and nothing is imported.
    pub rejected: Vec<RejectedLine>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagRequest {
    /// `客户等级/金牌/华东`: up to 3 levels (enterprise), one level (personal).
    pub path: String,
}

#[derive(Serialize, ToSchema)]
pub struct TagResponse {
    pub id: String,
    pub path: String,
    pub parent_id: Option<String>,
    /// Contacts carrying this tag itself (not its children).
    pub n_contacts: u64,
    pub created_at: String,
    pub last_used_at: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactIdsRequest {
    pub contact_ids: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ChangedResponse {
    pub changed: u64,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DepartmentRequest {
    pub name: String,
    pub parent_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DepartmentResponse {
    pub id: String,
    pub name: String,
    pub parent_id: Option<String>,
    pub n_contacts: u64,
    #[schema(no_recursion)]
    pub children: Vec<DepartmentResponse>,
}

/// Message content. Fields by type: `text` (text); `image` (media_id,
/// caption?); `link` (url, title, description?); `miniprogram` (appid,
/// pagepath, title, thumb_media_id?); `file` (media_id, filename); `richtext`
/// (html). Texts may use `{{name}}`, `{{external_id}}`, `{{attribute}}` and
/// `{{attribute|default}}`.
#[derive(Deserialize, Serialize, ToSchema, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct ContentWire {
    #[serde(rename = "type")]
    pub content_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub appid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pagepath: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thumb_media_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
}

impl From<ContentWire> for RawContent {
    fn from(w: ContentWire) -> Self {
        RawContent {
            content_type: w.content_type,
            text: w.text,
            media_id: w.media_id,
            caption: w.caption,
            url: w.url,
            title: w.title,
            description: w.description,
            appid: w.appid,
            pagepath: w.pagepath,
            thumb_media_id: w.thumb_media_id,
            filename: w.filename,
            html: w.html,
        }
    }
}

impl From<RawContent> for ContentWire {
    fn from(r: RawContent) -> Self {
        ContentWire {
            content_type: r.content_type,
            text: r.text,
            media_id: r.media_id,
            caption: r.caption,
            url: r.url,
            title: r.title,
            description: r.description,
            appid: r.appid,
            pagepath: r.pagepath,
            thumb_media_id: r.thumb_media_id,
            filename: r.filename,
            html: r.html,
        }
    }
}

/// Who a broadcast goes to: exactly one of the fields.
#[derive(Deserialize, Serialize, ToSchema, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct AudienceWire {
    /// Every contact of the workspace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
    /// Picked contacts (at most 2,000 per request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact_ids: Option<Vec<String>>,
    /// One tag, by id or path, with its sub-tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Several tags (their union); enterprise and API workspaces only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// One department, by id, with its sub-departments (enterprise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    /// An audience expression, e.g. `tag:"客户等级/金牌" & city = "上海" & last_active > -90d`
    /// (enterprise and API workspaces; see docs/audiences.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expr: Option<String>,
    /// A saved segment, by name or id, evaluated when the send is checked and dispatched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagMembersRequest {
    /// Picked contacts (at most 2,000 per request).
    pub contact_ids: Option<Vec<String>>,
    /// Everyone an audience expression selects now (bulk tagging).
    pub expr: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentRequest {
    /// 1–64 characters, unique in the workspace.
    pub name: String,
    /// The audience expression, checked now and evaluated whenever the segment is used.
    pub expr: String,
}

#[derive(Serialize, ToSchema)]
pub struct SegmentResponse {
    pub id: String,
    pub name: String,
    pub expr: String,
    /// Contacts it selects now.
    pub count: u64,
    pub created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct TagReportItem {
    pub id: String,
    pub path: String,
    /// Contacts with this tag itself.
    pub n_contacts: u64,
    /// Distinct contacts with this tag or any sub-tag.
    pub size: u64,
    pub created_at: String,
    pub last_used_at: Option<String>,
    /// Neither created nor used by a send within `dormant_days`.
    pub dormant: bool,
}

#[derive(Serialize, ToSchema)]
pub struct TagReport {
    pub dormant_days: u32,
    pub n_dormant: usize,
    pub items: Vec<TagReportItem>,
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct TagReportQuery {
    /// Days without use after which a tag counts as dormant (default 90).
    pub dormant_days: Option<u32>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CountRequest {
    /// An audience expression.
    pub expr: String,
    /// How many matching contacts to show, spread evenly over the matches
    /// (default 5, at most 50; 0 for none).
    pub sample: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct CountResponse {
    /// Live contacts the expression selects now.
    pub count: u64,
    /// A few of them, spread evenly over the matches in id order.
    pub sample: Vec<SampleContact>,
    /// Time to evaluate, in milliseconds (the sample's lookup not included).
    pub took_ms: f64,
}

#[derive(Serialize, ToSchema)]
pub struct SampleContact {
    pub id: String,
    pub external_id: String,
    pub name: String,
    #[schema(value_type = Object)]
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBroadcastRequest {
    pub content: ContentWire,
    pub audience: AudienceWire,
    /// Defaults to `["inbox"]`.
    pub channels: Option<Vec<String>>,
    /// `transactional`, `chat` or `broadcast` (default).
    pub priority: Option<String>,
    /// Idempotency key: the same key with the same body returns the original
    /// broadcast; with a different body it is refused.
    pub client_msg_id: Option<String>,
    /// A flash message: its content self-destructs this many seconds after
    /// the send starts (bounds in the policy: `delivery.flash_*`).
    pub ttl_seconds: Option<u64>,
    /// Channels to fall back to, in order, after the last of `channels`:
    /// `[{"channel": "email", "when": "unread", "after_seconds": 7200},
    /// {"channel": "sms", "when": "failed", "after_seconds": 600}]`.
    pub fallback: Option<Vec<FallbackWire>>,
}

/// One fallback step.
#[derive(Serialize, Deserialize, ToSchema, Clone)]
#[serde(deny_unknown_fields)]
pub struct FallbackWire {
    pub channel: String,
    /// `unread` (the inbox message was not read; only after the inbox) or
    /// `failed` (the channel before failed, or its recipient was filtered).
    pub when: String,
    /// How long after the channel before (60 s to 7 days).
    pub after_seconds: u32,
}

/// The workspace's speed level.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpeedLevel {
    /// 0 (fastest) to 4 (slowest); `null` sends unthrottled.
    pub level: Option<u8>,
    /// Recipients per minute at this level (`null`: unthrottled).
    #[serde(default)]
    pub per_minute: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct RedriveResponse {
    /// Failed deliveries queued again.
    pub redriven: u64,
    pub broadcast: BroadcastResponse,
}

#[derive(Serialize, ToSchema, Debug)]
pub struct VerdictWire {
    pub code: String,
    /// `block`, `review`, `delay` or `warn`.
    pub severity: String,
    pub message: String,
    pub message_zh: String,
    pub hint: String,
    pub clears_at: Option<String>,
    pub limit: Option<u64>,
    pub actual: Option<u64>,
}

impl From<&Verdict> for VerdictWire {
    fn from(v: &Verdict) -> Self {
        VerdictWire {
            code: v.code.as_str().to_owned(),
            severity: v.severity.as_str().to_owned(),
            message: v.message.clone(),
            message_zh: v.message_zh.clone(),
            hint: v.hint.clone(),
            clears_at: ts_opt(v.clears_at),
            limit: v.limit,
            actual: v.actual,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct PreflightResponse {
    /// True when nothing blocks: the send goes out (or waits for approval when a verdict says `review`).
    pub ok: bool,
    pub recipients: u64,
    pub verdicts: Vec<VerdictWire>,
}

#[derive(Serialize, ToSchema, Default)]
pub struct Counts {
    pub total: u64,
    pub queued: u64,
    pub sent: u64,
    pub delivered: u64,
    pub failed: u64,
    pub read: u64,
    pub replied: u64,
    /// Failed deliveries sent again by `retry-failed`.
    pub redriven: u64,
    /// Left out at send time: no consent on a channel that needs it,
    /// unsubscribed, or a bounced address (each record has the reason).
    pub filtered: u64,
    /// Fallback recipients for whom the step's condition did not hold (they
    /// read the inbox message, or the channel before did not fail).
    pub skipped: u64,
    /// Taken by a provider (SMS), waiting for its delivery receipt.
    pub awaiting_receipt: u64,
    /// Deliveries a recall stopped before they were made (records `recalled`).
    pub recalled: u64,
    /// Recipients who forwarded the message (each counted once).
    pub forwarded: u64,
    /// Recipients who blocked the sender from this message.
    pub blocked: u64,
}

#[derive(Serialize, ToSchema)]
pub struct BroadcastResponse {
    pub id: String,
    /// `draft`, `scheduled`, `pending_approval`, `sending`, `paused`, `completed`, `cancelled`
    /// or `blocked` (a scheduled run refused at its time).
    pub state: String,
    /// `{"type": "purged"}` once retention (or a flash message's end) removed it.
    pub content: ContentWire,
    #[schema(value_type = Object)]
    pub audience: serde_json::Value,
    pub channels: Vec<String>,
    pub priority: String,
    pub client_msg_id: Option<String>,
    pub member_id: String,
    /// Recipients of the frozen audience (0 before dispatch).
    pub recipients: u64,
    pub counts: Counts,
    pub created_at: String,
    pub submitted_at: Option<String>,
    pub approved_by: Option<String>,
    pub approved_at: Option<String>,
    pub dispatched_at: Option<String>,
    pub completed_at: Option<String>,
    pub paused_at: Option<String>,
    /// A flash message's time to live.
    pub ttl_seconds: Option<u64>,
    /// When a flash message's content goes.
    pub expires_at: Option<String>,
    /// When the content was purged (retention or flash).
    pub purged_at: Option<String>,
    /// The verdicts recorded at submission.
    pub verdicts: Option<Vec<serde_json::Value>>,
    /// The fallback order (empty: none).
    pub fallback: Vec<FallbackWire>,
    /// When the sender recalled it (inbox copies show as recalled since).
    pub recalled_at: Option<String>,
    /// The broadcast this one is a correction notice of.
    pub correction_of: Option<String>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequest {
    pub comment: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryWire {
    pub contact_id: String,
    pub channel: String,
    /// `queued` (external channels, being sent), `delivered` or `failed`.
    pub state: String,
    pub attempts: i64,
    pub error_code: Option<String>,
    /// The channel's last answer when it failed or is being retried.
    pub last_error: Option<String>,
    pub queued_at: String,
    pub sent_at: Option<String>,
    pub delivered_at: Option<String>,
    pub read_at: Option<String>,
    pub replied_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct InboxItemWire {
    /// The message id used by the inbox routes.
    pub message_id: String,
    /// The sending workspace's name.
    pub from: String,
    pub content: ContentWire,
    /// The text as rendered for this recipient.
    pub text: Option<String>,
    pub delivered_at: Option<String>,
    pub read_at: Option<String>,
    pub replied_at: Option<String>,
    /// The sender recalled the message: `content` is `{"type": "recalled"}`
    /// and there is no `text`, whether it had been read or not.
    pub recalled: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyRequest {
    pub text: String,
}

#[derive(Serialize, ToSchema)]
pub struct ReplyResponse {
    pub id: String,
    pub contact_id: String,
    pub text: String,
    pub created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct ReadResponse {
    /// False when the message had been read before (only the first read counts).
    pub first_read: bool,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub token: String,
}

#[derive(Serialize, ToSchema)]
pub struct MediaResponse {
    pub media_id: String,
    pub content_type: String,
    pub size: u64,
}

#[derive(Serialize, ToSchema)]
pub struct AuditEntryWire {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub subject: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Serialize, ToSchema)]
pub struct HealthResponse {
    pub status: String,
    pub database: String,
    pub version: String,
}

/// A channel the workspace can send through, with its settings (secrets masked).
#[derive(Serialize, ToSchema)]
pub struct ChannelWire {
    /// `inbox`, `email`, `webhook`, `sms` or `wecom`.
    pub channel: String,
    /// `workspace` (its own settings), `server` (the server's webhook
    /// settings) or `builtin` (the inbox).
    pub source: String,
    /// The settings as stored, secrets shown as `********` (send them back
    /// unchanged, or leave them out, to keep them).
    #[schema(value_type = Object)]
    pub settings: Option<serde_json::Value>,
    pub updated_at: Option<String>,
    /// A signing secret made for this request: shown once, never again.
    pub generated_secret: Option<String>,
}

/// A bounce reported by a bounce processor or the SMTP server's DSNs.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BounceRequest {
    /// The Message-ID qunfa gave the email (`<qf-…-email@…>`); or give
    /// `broadcast_id` and `email`.
    pub message_id: Option<String>,
    pub broadcast_id: Option<String>,
    pub email: Option<String>,
    /// `hard` (the address is gone: it is opted out of email until it
    /// changes) or `soft` (this message only).
    #[serde(rename = "type")]
    pub kind: String,
    /// The diagnostic, e.g. `550 5.1.1 user unknown`.
    pub diagnostic: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct BounceResponse {
    pub broadcast_id: String,
    pub contact_id: String,
    pub opted_out: bool,
}

/// One SMS delivery receipt, as the provider posts it.
#[derive(Deserialize, ToSchema)]
pub struct ReceiptWire {
    pub message_id: String,
    pub out_id: Option<String>,
    pub phone: Option<String>,
    /// `DELIVERED` or `FAILED`.
    pub status: String,
    pub err_code: Option<String>,
    pub reported_at: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct ReceiptsResponse {
    pub received: usize,
    pub delivered: u64,
    pub failed: u64,
    /// Receipts for no message waiting for one (unknown, or already final).
    pub ignored: u64,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEventEndpointRequest {
    pub url: String,
    /// Event types (default: all): broadcast.state_changed, delivery.failed,
    /// reply.received, report.received, contact.unsubscribed.
    pub events: Option<Vec<String>>,
    /// At least 16 bytes; made for you when left out (shown once).
    pub secret: Option<String>,
    /// Allow an endpoint on loopback or private networks.
    pub allow_private_networks: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct EventEndpointWire {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub allow_private_networks: bool,
    /// Shown once, when the endpoint is made.
    pub secret: Option<String>,
    pub created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct EventDeliveryWire {
    pub id: String,
    pub endpoint_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub attempts: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<String>,
    pub delivered_at: Option<String>,
    pub created_at: String,
    /// The event as sent.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    /// spam, fraud, harassment, illegal or other.
    pub reason: String,
}

#[derive(Serialize, ToSchema)]
pub struct ReportResponse {
    /// False when this recipient had reported the message already.
    pub first_report: bool,
}

#[derive(Serialize, ToSchema)]
pub struct BlockResponse {
    /// Whether the recipient blocks the message's sender now.
    pub blocked: bool,
    /// True when this call changed it (a second block, or an unblock without
    /// a block, changes nothing).
    pub changed: bool,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ForwardRequest {
    /// Where to: chat, group, moments, email or other (default other).
    pub to: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ForwardResponse {
    /// This forward's record.
    pub share_id: String,
    /// False when this recipient had forwarded the message before (only the first counts).
    pub first_forward: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InboxUnsubscribeRequest {
    /// The channel to stop (e.g. `email`); `inbox` stops mass messages in the inbox.
    pub channel: String,
}

#[derive(Serialize, ToSchema)]
pub struct UnsubscribeResponse {
    pub channel: String,
    /// False when the contact was unsubscribed already.
    pub changed: bool,
}
