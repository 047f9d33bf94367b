//! Broadcasts: compose, preflight, send, approve, progress and delivery log.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::sse::{Event, KeepAlive, Sse},
    Json,
};
use futures::Stream;
use qunfa_audience::{AudienceSpec, Bitmap};
use qunfa_core::{
    broadcast::{BroadcastState, Priority},
    contact::Channel,
    message::{Content, RawContent},
    preflight::{self, AudienceShape, SendProposal, Severity, Verdict},
    workspace::{Action, WorkspaceKind},
    Code,
};
use qunfa_store::{
    broadcasts::{BroadcastRecord, DispatchRules, HoldRules, NewBroadcast},
    json::{audience_from_json, audience_to_json, content_to_json},
    safety::Fingerprint,
    StoreError,
};
use sha2::Digest;

use super::{contact_id, parse_contact_ids, parse_id, PageQuery};
use crate::{
    error::{ApiError, ApiResult, ErrorBody},
    extract::{ApiJson, Auth, ClientInfo},
    wire::*,
    AppState, Inner,
};

pub fn broadcast_response(b: BroadcastRecord) -> BroadcastResponse {
    let total = b.n_recipients * (b.channels.len() + b.fallback.len()) as u64;
    let finished = b.n_delivered + b.n_failed + b.n_filtered + b.n_skipped + b.n_sent + b.n_recalled;
    let audience = match audience_from_json(&b.audience_json) {
        Ok(AudienceSpec::All) => serde_json::json!({"all": true}),
        Ok(AudienceSpec::Contacts(ids)) => {
            serde_json::json!({"contact_ids": ids.iter().map(|i| contact_id(b.workspace_id, *i)).collect::<Vec<_>>()})
        }
        Ok(AudienceSpec::Tag(t)) => serde_json::json!({"tag": t.to_string()}),
        Ok(AudienceSpec::Tags(t)) => serde_json::json!({"tags": t.iter().map(ToString::to_string).collect::<Vec<_>>()}),
        Ok(AudienceSpec::Department(d)) => serde_json::json!({"department": d.to_string()}),
        Ok(AudienceSpec::Expression(src)) => serde_json::json!({"expr": src}),
        Ok(AudienceSpec::Frozen(id)) => serde_json::json!({"frozen_of": id.to_string()}),
        Err(_) => serde_json::Value::Null,
    };
    BroadcastResponse {
        id: b.id.to_string(),
        state: b.state.as_str().into(),
        content: b.content.into(),
        audience,
        channels: b.channels.iter().map(|c| c.as_str().to_owned()).collect(),
        priority: b.priority.as_str().into(),
        client_msg_id: b.client_msg_id,
        member_id: b.member_id.to_string(),
        recipients: b.n_recipients,
        counts: Counts {
            total,
            queued: total.saturating_sub(finished),
            sent: b.n_delivered + b.n_failed + b.n_sent,
            delivered: b.n_delivered,
            failed: b.n_failed,
            read: b.n_read,
            replied: b.n_replied,
            redriven: b.n_redriven,
            filtered: b.n_filtered,
            skipped: b.n_skipped,
            awaiting_receipt: b.n_sent,
            recalled: b.n_recalled,
            forwarded: b.n_forwarded,
            blocked: b.n_blocked,
        },
        fallback: b
            .fallback
            .iter()
            .map(|f| FallbackWire {
                channel: f.channel.as_str().into(),
                when: f.when.as_str().into(),
                after_seconds: f.after_seconds,
            })
            .collect(),
        created_at: ts(b.created_at),
        submitted_at: ts_opt(b.submitted_at),
        approved_by: b.approved_by.map(|m| m.to_string()),
        approved_at: ts_opt(b.approved_at),
        dispatched_at: ts_opt(b.dispatched_at),
        completed_at: ts_opt(b.completed_at),
        paused_at: ts_opt(b.paused_at),
        ttl_seconds: b.ttl_ms.map(|t| (t / 1000) as u64),
        expires_at: ts_opt(b.expires_at),
        purged_at: ts_opt(b.purged_at),
        verdicts: b.verdicts_json.and_then(|v| serde_json::from_str(&v).ok()),
        recalled_at: ts_opt(b.recalled_at),
        correction_of: b.correction_of.map(|id| id.to_string()),
    }
}

fn parse_audience(s: &Inner, ws: i64, w: &AudienceWire) -> Result<AudienceSpec, ApiError> {
    let given = [
        w.all.is_some(),
        w.contact_ids.is_some(),
        w.tag.is_some(),
        w.tags.is_some(),
        w.department.is_some(),
        w.expr.is_some(),
        w.segment.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(ApiError::new(
            Code::AudienceInvalid,
            "give exactly one of all, contact_ids, tag, tags, department, expr or segment",
        ));
    }
    if let Some(seg) = &w.segment {
        let name = match seg.parse::<i64>() {
            Ok(id) => match s.store.segment(ws, id) {
                Ok(r) => r.name,
                Err(StoreError::NotFound) => seg.clone(),
                Err(e) => return Err(e.into()),
            },
            Err(_) => seg.clone(),
        };
        let src = format!("segment:\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""));
        super::audiences::compile(s, ws, &src)?;
        return Ok(AudienceSpec::Expression(src));
    }
    if let Some(src) = &w.expr {
        let expr = super::audiences::compile(s, ws, src)?;
        drop(expr);
        return Ok(AudienceSpec::Expression(src.clone()));
    }
    // A tag is named by its path first; a number names a tag id only when no
    // tag has that path (a tag may well be called "2024").
    let tag_id = |t: &str| -> Result<i64, ApiError> {
        let path = qunfa_core::tag::TagPath::parse(t);
        if let Ok(path) = &path {
            match s.store.tag_by_path(ws, path) {
                Ok(id) => return Ok(id),
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match (t.parse::<i64>(), path) {
            (Ok(id), _) if s.store.tag_exists(ws, id)? => Ok(id),
            (_, Err(code)) => Err(ApiError::new(code, format!("tag {t:?}: {}", code.message_en()))),
            (_, Ok(_)) => Err(ApiError::new(Code::NotFound, format!("no tag {t:?} in this workspace"))),
        }
    };
    if w.all == Some(false) {
        return Err(ApiError::new(Code::AudienceInvalid, "all must be true when given"));
    }
    if w.all.is_some() {
        return Ok(AudienceSpec::All);
    }
    if let Some(ids) = &w.contact_ids {
        if ids.len() > s.policy.api_batch_max {
            return Err(ApiError::new(
                Code::ApiBatchTooLarge,
                format!("{} contact ids; at most {} per request", ids.len(), s.policy.api_batch_max),
            ));
        }
        let mut idxs = parse_contact_ids(ws, ids)?;
        let (_, missing) = s.store.existing_contacts(ws, &idxs)?;
        if !missing.is_empty() {
            let details = missing.iter().map(|i| serde_json::Value::String(contact_id(ws, *i))).collect();
            return Err(ApiError::new(
                Code::NotFound,
                format!("{} contact id(s) not found in this workspace", missing.len()),
            )
            .with_details(details));
        }
        idxs.sort_unstable();
        idxs.dedup();
        return Ok(AudienceSpec::Contacts(idxs));
    }
    if let Some(t) = &w.tag {
        return Ok(AudienceSpec::Tag(tag_id(t)?));
    }
    if let Some(tags) = &w.tags {
        if tags.is_empty() {
            return Err(ApiError::new(Code::AudienceInvalid, "tags is empty"));
        }
        let mut ids = tags.iter().map(|t| tag_id(t)).collect::<Result<Vec<_>, _>>()?;
        ids.sort_unstable();
        ids.dedup();
        return Ok(AudienceSpec::Tags(ids));
    }
    let d = w.department.as_deref().unwrap_or_default();
    let id = parse_id(d)?;
    if !s.store.department_exists(ws, id)? {
        return Err(ApiError::new(Code::NotFound, format!("no department {d:?} in this workspace")));
    }
    Ok(AudienceSpec::Department(id))
}

pub(crate) fn content_error(code: Code, raw: &RawContent, limit: usize) -> ApiError {
    if code == Code::TextTooLong {
        let longest = [&raw.text, &raw.caption, &raw.description, &raw.html]
            .iter()
            .filter_map(|t| t.as_ref())
            .map(|t| t.chars().count())
            .max()
            .unwrap_or(0);
        return ApiError::new(code, format!("the text has {longest} characters; this workspace allows {limit}"))
            .with_details(vec![serde_json::json!({"limit": limit, "actual": longest})]);
    }
    ApiError::code(code)
}

/// Compose a broadcast (a draft). Malformed content, text over the tier's
/// limit, unknown channels and contacts of other workspaces are refused here;
/// every other rule is reported by preflight.
#[utoipa::path(post, path = "/v1/broadcasts", tag = "broadcasts", request_body = CreateBroadcastRequest,
    responses((status = 201, body = BroadcastResponse), (status = 200, description = "the original broadcast of a repeated client_msg_id", body = BroadcastResponse),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_broadcast(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<CreateBroadcastRequest>,
) -> ApiResult<(StatusCode, Json<BroadcastResponse>)> {
    auth.require(Action::Send)?;
    let tier = state.policy.tier(auth.0.workspace.kind);
    let raw: RawContent = req.content.into();
    let content =
        Content::parse(&raw, tier.text_max_chars).map_err(|code| content_error(code, &raw, tier.text_max_chars))?;
    // Enterprise messages end with the workspace's signature (docs/recall.md).
    let signed = super::recall::signed_content(&state, &auth.0.workspace, &content)?;
    let mut channels = Vec::new();
    for c in req.channels.unwrap_or_else(|| vec!["inbox".into()]) {
        let ch = Channel::parse(&c).map_err(|code| ApiError::new(code, format!("unknown channel {c:?}")))?;
        if !channels.contains(&ch) {
            channels.push(ch);
        }
    }
    if channels.is_empty() {
        return Err(ApiError::new(Code::InvalidChannel, "name at least one channel"));
    }
    let steps: Vec<(String, String, u32)> =
        req.fallback.unwrap_or_default().into_iter().map(|f| (f.channel, f.when, f.after_seconds)).collect();
    let fallback =
        qunfa_core::broadcast::check_fallback(&channels, &steps).map_err(|(code, m)| ApiError::new(code, m))?;
    let priority = match req.priority.as_deref() {
        None => Priority::Broadcast,
        Some(p) => Priority::parse(p)
            .map_err(|_| ApiError::new(Code::BadRequest, "priority is transactional, chat or broadcast"))?,
    };
    if let Some(cid) = &req.client_msg_id {
        if cid.is_empty() || cid.chars().count() > 128 {
            return Err(ApiError::new(Code::BadRequest, "client_msg_id has 1 to 128 characters"));
        }
    }
    let ttl_ms = match req.ttl_seconds {
        None => None,
        Some(t) => {
            let d = &state.policy.delivery;
            let (min, max) = (u64::from(d.flash_min_seconds), u64::from(d.flash_max_hours) * 3600);
            if !(min..=max).contains(&t) {
                return Err(ApiError::new(
                    Code::BadRequest,
                    format!("ttl_seconds of a flash message is between {min} and {max}"),
                ));
            }
            Some(t as i64 * 1000)
        }
    };
    let (ws, member, actor) = (auth.workspace_id(), auth.0.member_id, auth.0.actor());
    let audience = req.audience;
    let client_msg_id = req.client_msg_id;
    let (b, created) = state
        .blocking(move |s| {
            for media in content.media() {
                if !s.store.media_exists(ws, media)? {
                    return Err(ApiError::new(
                        Code::MediaNotFound,
                        format!("media {} was not uploaded to this workspace", media.as_str()),
                    ));
                }
            }
            let spec = parse_audience(s, ws, &audience)?;
            // The request as given (without the signature) identifies a retry.
            let content_json = content_to_json(&content.to_raw());
            let audience_json = audience_to_json(&spec);
            let request_hash = hex::encode(sha2::Sha256::digest(
                format!(
                    "{content_json}\n{audience_json}\n{}\n{}\n{ttl_ms:?}{}",
                    qunfa_store::json::channels_to_json(&channels),
                    priority.as_str(),
                    if fallback.is_empty() { String::new() } else { qunfa_store::json::fallback_to_json(&fallback) }
                )
                .as_bytes(),
            ));
            let new = NewBroadcast {
                content_json: content_to_json(&signed),
                audience_json,
                channels,
                priority,
                client_msg_id,
                request_hash,
                ttl_ms,
                fallback,
            };
            // Transactional and chat messages go ahead of a running broadcast.
            let _urgent = (priority != Priority::Broadcast).then(|| s.store.db.urgent());
            if let Some(cid) = &new.client_msg_id {
                // Idempotency lasts the policy's window; then the id may name new content.
                let window = i64::from(s.policy.client_msg_id_hours) * 3_600_000;
                s.store.expire_client_msg_id(ws, cid, s.now() - window)?;
            }
            Ok(s.store.create_broadcast(ws, member, &new, &actor, s.now())?)
        })
        .await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(broadcast_response(b))))
}

/// Broadcasts, newest first.
#[utoipa::path(get, path = "/v1/broadcasts", tag = "broadcasts", params(PageQuery), responses((status = 200, body = Page<BroadcastResponse>)))]
pub async fn list_broadcasts(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<BroadcastResponse>>> {
    auth.require(Action::Read)?;
    let (ws, limit, before) = (auth.workspace_id(), q.limit()?, q.cursor_i64()?);
    let rows = state.blocking(move |s| Ok(s.store.broadcasts(ws, before, limit)?)).await?;
    let next_cursor = (rows.len() == limit).then(|| rows.last().map(|b| b.id.to_string())).flatten();
    Ok(Json(Page { items: rows.into_iter().map(broadcast_response).collect(), next_cursor }))
}

async fn load(state: &AppState, ws: i64, id: &str) -> ApiResult<BroadcastRecord> {
    let id = parse_id(id)?;
    state.blocking(move |s| Ok(s.store.broadcast(ws, id)?)).await
}

/// A broadcast with its state and counts.
#[utoipa::path(get, path = "/v1/broadcasts/{id}", tag = "broadcasts", params(("id" = String, Path)),
    responses((status = 200, body = BroadcastResponse), (status = 404, body = ErrorBody)))]
pub async fn get_broadcast(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<BroadcastResponse>> {
    auth.require(Action::Read)?;
    Ok(Json(broadcast_response(load(&state, auth.workspace_id(), &id).await?)))
}

/// Every verdict on a broadcast, with its audience resolved now.
/// `already_counted`: the broadcast itself is among the sender's sends today.
/// The review the content check asks for (the same check as `evaluate`'s:
/// the broadcast id decides random review).
fn content_review(s: &Inner, b: &BroadcastRecord) -> Result<Option<qunfa_store::safety::NewSafetyReview>, ApiError> {
    let content =
        Content::parse(&b.content, usize::MAX).map_err(|_| ApiError::internal(&"stored content does not parse"))?;
    let text = safety_text(&content);
    let verdict = s.safety.check(&text, b.id as u64).map_err(super::safety::check_error)?;
    if verdict.action != qunfa_safety::Action::Review {
        return Ok(None);
    }
    let hits = super::safety::SafetyCheckResponse::new(&text, &verdict, 0).hits;
    Ok(Some(qunfa_store::safety::NewSafetyReview {
        text,
        hits_json: serde_json::to_string(&hits).unwrap_or_else(|_| "[]".into()),
        risk: f64::from(verdict.risk),
        sampled: verdict.sampled,
        lexicon_version: verdict.lexicon_version,
    }))
}

/// Everything of a message that recipients read, for the safety check.
fn safety_text(content: &Content) -> String {
    let mut parts: Vec<&str> = content.texts().iter().map(|t| t.as_str()).collect();
    match content {
        Content::Link { url, title, .. } => {
            parts.push(title);
            parts.push(url.as_str());
        }
        Content::MiniProgram { title, .. } => parts.push(title),
        Content::File { filename, .. } => parts.push(filename),
        _ => {}
    }
    parts.join("\n")
}

pub fn evaluate(
    s: &Inner,
    kind: WorkspaceKind,
    plan: Option<&str>,
    b: &BroadcastRecord,
    already_counted: bool,
) -> Result<Evaluated, ApiError> {
    let now = s.now();
    let spec = audience_from_json(&b.audience_json)?;
    let mut verdicts = Vec::new();
    let audience = match s.store.resolve_audience_at(b.workspace_id, &spec, now) {
        Ok(a) => a,
        Err(StoreError::NotFound) => {
            verdicts.push(Verdict {
                code: Code::AudienceInvalid,
                severity: Severity::Block,
                message: "A tag or department of this audience was deleted.".into(),
                message_zh: "发送对象中的标签或部门已被删除。".into(),
                hint: "Compose the broadcast again with an existing tag or department.".into(),
                clears_at: None,
                limit: None,
                actual: None,
            });
            Bitmap::new()
        }
        Err(e) => return Err(e.into()),
    };
    let content =
        Content::parse(&b.content, usize::MAX).map_err(|_| ApiError::internal(&"stored content does not parse"))?;
    let keys = s.store.attribute_keys(b.workspace_id)?;
    let mut unknown_variables: Vec<String> = Vec::new();
    for text in content.texts() {
        for v in text.template().unknown_variables(&|k| keys.contains(k)) {
            if !unknown_variables.iter().any(|u| u == v) {
                unknown_variables.push(v.to_owned());
            }
        }
    }
    let shape = match &spec {
        AudienceSpec::All => AudienceShape::All,
        AudienceSpec::Contacts(ids) => AudienceShape::Contacts { n_ids: ids.len() },
        AudienceSpec::Tag(_) => AudienceShape::Tag,
        AudienceSpec::Tags(t) => AudienceShape::Tags { n_tags: t.len() },
        AudienceSpec::Department(_) => AudienceShape::Department,
        AudienceSpec::Frozen(_) => AudienceShape::Frozen,
        AudienceSpec::Expression(src) => match qunfa_audience::expr::parse(src) {
            // A saved segment counts as what it contains.
            Ok(mut e) => match s.store.expand_segments(b.workspace_id, &mut e)? {
                Ok(()) => super::audiences::shape_of(&e),
                Err(_) => AudienceShape::Expression { n_terms: e.n_terms() },
            },
            Err(_) => AudienceShape::Expression { n_terms: 0 },
        },
    };
    let (day_start, _) = s.policy.day_bounds(now);
    let mut sends_today = s.store.sends_today(b.member_id, day_start)?;
    if already_counted {
        sends_today = sends_today.saturating_sub(1);
    }
    // Every channel the broadcast may use (fallback included) must be set up.
    let mut all_channels = b.channels.clone();
    all_channels.extend(b.fallback.iter().map(|f| f.channel));
    let mut available = vec![Channel::Inbox];
    available.extend(s.store.list_channel_settings(b.workspace_id)?.into_iter().map(|c| c.channel));
    if s.options.server_webhook {
        available.push(Channel::Webhook);
    }
    // A send of the WeChat-compatible API (its row is written with the
    // draft) may pick as many contacts as WeChat's mass send names; every
    // other rule is the same. Approvals and scheduled runs judge it alike.
    let batch_max = if s.store.compat_send(b.workspace_id, b.id)?.is_some() {
        s.policy.compat_batch_max
    } else {
        s.policy.api_batch_max
    };
    let proposal = SendProposal {
        kind,
        plan,
        content: &content,
        unknown_variables,
        audience: shape,
        batch_max,
        n_recipients: audience.cardinality(),
        channels: &all_channels,
        available_channels: &available,
        sends_today,
        now,
    };
    verdicts.extend(preflight::preflight(&s.policy, &proposal));
    let n_recipients = audience.cardinality();
    verdicts.extend(super::security::account_verdicts(s, kind, b.member_id, n_recipients, sends_today)?);
    let cap_verdict = frequency_caps(s, kind, b, &audience, now)?;
    verdicts.extend(cap_verdict);
    let (waves, wave_verdict) = growth_waves(s, kind, b, &audience, now)?;
    verdicts.extend(wave_verdict);
    // Content safety, on every text a recipient will see; the broadcast id
    // decides random review, so checking again gives the same answer.
    let text = safety_text(&content);
    let mut fingerprint = Fingerprint { simhash: None, image_hash: None };
    let mut domains: Vec<String> = Vec::new();
    if !text.trim().is_empty() {
        let verdict = s.safety.check(&text, b.id as u64).map_err(super::safety::check_error)?;
        verdicts.extend(super::safety::verdicts(&text, &verdict));
        fingerprint.simhash = verdict.simhash;
        domains = verdict.links.iter().map(|l| l.registrable.clone()).collect();
        domains.sort();
        domains.dedup();
        let unseen = s.store.unseen_domains(b.workspace_id, &domains)?;
        if !unseen.is_empty() {
            verdicts.push(Verdict {
                code: Code::ContentNewDomain,
                severity: Severity::Warn,
                message: format!("This workspace has never sent a link to {}.", unseen.join(", ")),
                message_zh: format!("本账号从未发送过指向 {} 的链接。", unseen.join("、")),
                hint: Code::ContentNewDomain.hint().to_owned(),
                clears_at: None,
                limit: None,
                actual: Some(unseen.len() as u64),
            });
        }
    }
    if let Some(media) = content.media().first() {
        fingerprint.image_hash = s.store.media_image_hash(b.workspace_id, media.as_str())?;
    }
    verdicts.extend(duplicate_verdict(s, b, fingerprint, audience.cardinality(), now)?);
    verdicts.sort_by_key(|v| v.severity);
    Ok(Evaluated { verdicts, audience, fingerprint, domains, waves })
}

/// The frequency caps of a send as `(cap, since, window)`: none for
/// transactional and chat messages.
fn cap_windows(s: &Inner, kind: WorkspaceKind, b: &BroadcastRecord, now: i64) -> Vec<(u32, i64, &'static str)> {
    if b.priority != Priority::Broadcast {
        return Vec::new();
    }
    let day_start = s.policy.day_bounds(now).0;
    s.policy
        .tier(kind)
        .contact_caps
        .windows()
        .into_iter()
        .map(|(cap, days, name)| {
            let since = if days == 1 { day_start } else { now - i64::from(days) * 86_400_000 };
            (cap, since, name)
        })
        .collect()
}

/// Per-recipient frequency caps: the contacts who already received as many
/// mass messages as a cap allows get a `filtered` record instead (counted,
/// never dropped silently). Only broadcast-class sends count and are capped.
fn frequency_caps(
    s: &Inner,
    kind: WorkspaceKind,
    b: &BroadcastRecord,
    audience: &Bitmap,
    now: i64,
) -> Result<Option<Verdict>, ApiError> {
    let caps = cap_windows(s, kind, b, now);
    if caps.is_empty() || audience.is_empty() {
        return Ok(None);
    }
    let reached = s.store.contacts_at_cap(b.workspace_id, b.id, audience, &caps)?;
    let mut capped = Bitmap::new();
    for r in &reached {
        capped.or_inplace(&r.contacts);
    }
    if capped.is_empty() {
        return Ok(None);
    }
    let parts: Vec<String> =
        reached.iter().map(|r| format!("{} at {} per {}", r.contacts.cardinality(), r.cap, r.window)).collect();
    let parts_zh: Vec<String> = reached
        .iter()
        .map(|r| {
            let w = match r.window {
                "day" => "日",
                "week" => "周",
                _ => "月",
            };
            format!("{} 人已达每{w} {} 次", r.contacts.cardinality(), r.cap)
        })
        .collect();
    let n = capped.cardinality();
    let mut v = Verdict::new(
        Code::LimitContactFrequency,
        Severity::Warn,
        format!(
            "{n} of {} recipients reached a frequency cap ({}): they are filtered, the rest are sent.",
            audience.cardinality(),
            parts.join(", ")
        ),
        format!("{} 名接收者已达频次上限（{}），将被过滤，其余正常发送。", n, parts_zh.join("，")),
    );
    v.actual = Some(n);
    Ok(Some(v))
}

/// Waves of a send: (batch size, gap between batches in ms).
type Waves = (usize, i64);

/// Fast contact growth: when more than the policy's share of the audience
/// became contacts within the window, the send goes out in waves.
fn growth_waves(
    s: &Inner,
    kind: WorkspaceKind,
    b: &BroadcastRecord,
    audience: &Bitmap,
    now: i64,
) -> Result<(Option<Waves>, Option<Verdict>), ApiError> {
    let p = &s.policy.security;
    let n = audience.cardinality();
    if p.growth_waves <= 1
        || n < u64::from(p.growth_waves)
        || b.priority != Priority::Broadcast
        || !p.growth_tiers.iter().any(|t| t == kind.as_str())
    {
        return Ok((None, None));
    }
    let since = now - i64::from(p.growth_window_hours) * 3_600_000;
    let new = s.store.new_contacts_in(b.workspace_id, audience, since)?;
    let share = new as f64 / n as f64;
    if share <= p.growth_share {
        return Ok((None, None));
    }
    let size = (n as usize).div_ceil(p.growth_waves as usize).min(qunfa_audience::BATCH_SIZE);
    let gap = i64::from(p.growth_wave_minutes) * 60_000;
    let waves = (n as usize).div_ceil(size);
    let v = Verdict::new(
        Code::SendInWaves,
        Severity::Delay,
        format!(
            "{new} of {n} recipients ({:.0}%) became contacts within {} hours (above {:.0}%): the send goes out in {waves} waves of up to {size}, {} minutes apart.",
            share * 100.0,
            p.growth_window_hours,
            p.growth_share * 100.0,
            p.growth_wave_minutes
        ),
        format!(
            "{} 小时内新增联系人 {new} 人，占发送对象 {:.0}%（超过 {:.0}%）：将分 {waves} 批发送，每批最多 {size} 人，间隔 {} 分钟。",
            p.growth_window_hours,
            share * 100.0,
            p.growth_share * 100.0,
            p.growth_wave_minutes
        ),
    )
    .clears(now + gap * (waves as i64 - 1))
    .limits((p.growth_share * 100.0) as u64, (share * 100.0) as u64);
    Ok((Some((size, gap)), Some(v)))
}

/// What `evaluate` found.
pub struct Evaluated {
    pub verdicts: Vec<Verdict>,
    pub audience: Bitmap,
    pub fingerprint: Fingerprint,
    /// Registrable domains of the content's links.
    pub domains: Vec<String>,
    /// Fast contact growth: (batch size, gap ms) of the waves.
    pub waves: Option<(usize, i64)>,
}

/// Secondary verification: the sender's earlier sends of the same or
/// near-same text (SimHash) or image (perceptual hash) in the window, with
/// this one, reach more recipients than the policy allows. A single send is
/// never held by itself; a code an admin issued and the sender used clears it.
fn duplicate_verdict(
    s: &Inner,
    b: &BroadcastRecord,
    f: Fingerprint,
    n_recipients: u64,
    now: i64,
) -> Result<Option<Verdict>, ApiError> {
    use qunfa_safety::dedup::{hamming, IMAGE_NEAR, SIMHASH_NEAR};
    let p = &s.policy.safety;
    if p.duplicate_max_recipients == 0 || (f.simhash.is_none() && f.image_hash.is_none()) {
        return Ok(None);
    }
    let window = i64::from(p.duplicate_window_minutes) * 60_000;
    let recent = s.store.recent_sends(b.workspace_id, b.member_id, now - window)?;
    // Runs of one recurring schedule repeat by design (an admin scheduled the
    // series): they are not near-duplicates of each other.
    let parent = s.store.schedule_parent(b.workspace_id, b.id)?;
    // The arms of an A/B test and its winner's send are parts of one send (routes/measure.rs).
    let ab_siblings = s.store.ab_siblings(b.workspace_id, b.id)?;
    let near = |a: Option<u64>, b: Option<u64>, d: u32| matches!((a, b), (Some(x), Some(y)) if hamming(x, y) <= d);
    let earlier: Vec<_> = recent
        .iter()
        .filter(|r| r.broadcast_id != b.id && (parent.is_none() || r.parent_id != parent))
        .filter(|r| !ab_siblings.contains(&r.broadcast_id))
        .filter(|r| {
            near(f.simhash, r.fingerprint.simhash, SIMHASH_NEAR)
                || near(f.image_hash, r.fingerprint.image_hash, IMAGE_NEAR)
        })
        .collect();
    let reached: u64 = earlier.iter().map(|r| r.n_recipients).sum();
    let total = reached + n_recipients;
    if earlier.is_empty() || total <= p.duplicate_max_recipients || s.store.broadcast_verified(b.workspace_id, b.id)? {
        return Ok(None);
    }
    let mut v = Verdict {
        code: Code::ContentDuplicate,
        severity: Severity::Block,
        message: format!(
            "{} earlier send(s) of the same or near-same content reached {reached} recipients in the last {} minutes; with this one {total}, above {}: confirm with a code.",
            earlier.len(),
            p.duplicate_window_minutes,
            p.duplicate_max_recipients
        ),
        message_zh: format!(
            "近 {} 分钟内已有 {} 次相同或相似内容的群发，共 {reached} 人；加上本次为 {total} 人，超过 {} 人，需二次验证。",
            p.duplicate_window_minutes,
            earlier.len(),
            p.duplicate_max_recipients
        ),
        hint: Code::ContentDuplicate.hint().to_owned(),
        clears_at: None,
        limit: Some(p.duplicate_max_recipients),
        actual: Some(total),
    };
    // Clears when enough earlier sends leave the window, oldest first (all of
    // them, when this send alone is above the limit: a single send is never
    // held by itself).
    let mut left = total;
    let mut by_age: Vec<_> = earlier.iter().map(|r| (r.at, r.n_recipients)).collect();
    by_age.sort_unstable();
    for (at, n) in &by_age {
        left -= n;
        if left <= p.duplicate_max_recipients || left == n_recipients {
            v.clears_at = Some(at + window);
            if left <= p.duplicate_max_recipients {
                break;
            }
        }
    }
    Ok(Some(v))
}

/// The optional body of a send.
#[derive(serde::Deserialize, utoipa::ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// The code an admin issued when the send needs secondary verification
    /// (QF-CONTENT-DUPLICATE).
    pub verification_code: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct VerificationCodeResponse {
    /// Six digits; shown once. The sender sends the broadcast with it.
    pub code: String,
    pub expires_at: String,
}

/// Issue a one-time code for a send that needs secondary verification
/// (reviewer, admin or owner; not the broadcast's own sender).
#[utoipa::path(post, path = "/v1/broadcasts/{id}/verification-code", tag = "broadcasts", params(("id" = String, Path)),
    responses((status = 201, body = VerificationCodeResponse), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn verification_code(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<VerificationCodeResponse>)> {
    auth.require(Action::Approve)?;
    let ws = auth.workspace_id();
    let b = load(&state, ws, &id).await?;
    if b.member_id == auth.0.member_id {
        return Err(ApiError::new(Code::SelfApproval, "the code must come from someone other than the sender"));
    }
    if !b.state.may_submit() && b.state != BroadcastState::PendingApproval {
        return Err(ApiError::new(
            Code::Conflict,
            format!("the broadcast is {}, not a draft or waiting for approval", b.state.as_str()),
        ));
    }
    let actor = auth.0.actor();
    let (code, expires_at) = state
        .blocking(move |s| {
            let code = format!("{:06}", rand::Rng::gen_range(&mut rand::thread_rng(), 0..1_000_000u32));
            let now = s.now();
            let expires_at = now + i64::from(s.policy.safety.verification_code_minutes) * 60_000;
            s.store.issue_verification_code(ws, b.id, &qunfa_store::secret_hash(&code), &actor, expires_at, now)?;
            Ok((code, expires_at))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(VerificationCodeResponse { code, expires_at: crate::wire::ts(expires_at) })))
}

/// An optional JSON body: empty means the defaults.
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        crate::extract::parse_json(body)
    }
}

pub(crate) fn verdicts_json(verdicts: &[Verdict]) -> String {
    serde_json::to_string(&verdicts.iter().map(VerdictWire::from).collect::<Vec<_>>()).unwrap_or_else(|_| "[]".into())
}

/// "Why can't I send?": every reason the send would be blocked, held for approval or delayed, each with a code, messages in English and Chinese, and a fix.
#[utoipa::path(post, path = "/v1/broadcasts/{id}/preflight", tag = "broadcasts", params(("id" = String, Path)),
    responses((status = 200, body = PreflightResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn preflight(
    State(state): State<AppState>,
    auth: Auth,
    client: ClientInfo,
    Path(id): Path<String>,
) -> ApiResult<Json<PreflightResponse>> {
    auth.require(Action::Read)?;
    let b = load(&state, auth.workspace_id(), &id).await?;
    // A scheduled one too: what its run would meet now.
    if !b.state.may_submit() && !matches!(b.state, BroadcastState::PendingApproval | BroadcastState::Scheduled) {
        return Err(ApiError::new(
            Code::Conflict,
            format!("the broadcast is {}; GET it for the verdicts recorded at submission", b.state.as_str()),
        ));
    }
    let (kind, plan) = (auth.0.workspace.kind, auth.0.workspace.plan.clone());
    let pending = b.state == BroadcastState::PendingApproval;
    let member = auth.0.member_id;
    let Evaluated { verdicts, audience, .. } = state
        .blocking(move |s| {
            super::security::observe(s, b.workspace_id, member, &client)?;
            evaluate(s, kind, plan.as_deref(), &b, pending)
        })
        .await?;
    Ok(Json(PreflightResponse {
        ok: !preflight::blocks(&verdicts),
        recipients: audience.cardinality(),
        verdicts: verdicts.iter().map(VerdictWire::from).collect(),
    }))
}

/// Send: freezes the audience and queues delivery (202), holds the broadcast
/// for approval when a verdict says `review` (202, state `pending_approval`),
/// or refuses with every verdict (422).
#[utoipa::path(post, path = "/v1/broadcasts/{id}/send", tag = "broadcasts", params(("id" = String, Path)), request_body = SendRequest,
    responses((status = 202, body = BroadcastResponse), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn send(
    State(state): State<AppState>,
    auth: Auth,
    client: ClientInfo,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<BroadcastResponse>)> {
    auth.require(Action::Send)?;
    let send_request: SendRequest = optional_body(&body)?;
    let ws = auth.workspace_id();
    let b = load(&state, ws, &id).await?;
    if !b.state.may_submit() {
        return Err(ApiError::new(Code::Conflict, format!("the broadcast is {}, not a draft", b.state.as_str())));
    }
    let ctx = SendContext {
        kind: auth.0.workspace.kind,
        plan: auth.0.workspace.plan.clone(),
        actor: auth.0.actor(),
        member_id: auth.0.member_id,
    };
    let b = state
        .blocking(move |s| {
            // A send from a new device or network is an abnormal login.
            super::security::observe(s, b.workspace_id, ctx.member_id, &client)?;
            submit(s, &ctx, &b, send_request.verification_code.as_deref())
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(broadcast_response(b))))
}

/// Who submits a send, and for which workspace.
#[derive(Debug, Clone)]
pub struct SendContext {
    pub kind: WorkspaceKind,
    pub plan: Option<String>,
    /// The audit actor (`member:ID`, or the scheduler acting for one).
    pub actor: String,
    /// The member submitting (the sender for a send; the scheduler passes the sender).
    pub member_id: i64,
}

/// Submits a draft: evaluates every rule, then dispatches it, holds it for
/// approval, or refuses with every verdict (`QF-…` 422). The one path of
/// `POST …/send` and of a schedule that comes due.
///
/// # Errors
/// The verdicts that block, a wrong verification code, a state conflict.
pub fn submit(
    s: &Inner,
    ctx: &SendContext,
    b: &BroadcastRecord,
    verification_code: Option<&str>,
) -> Result<BroadcastRecord, ApiError> {
    let (ws, kind, actor) = (b.workspace_id, ctx.kind, &ctx.actor);
    if let Some(code) = verification_code {
        let hash = qunfa_store::secret_hash(code.trim());
        if !s.store.use_verification_code(ws, b.id, &hash, actor, s.now())? {
            return Err(ApiError::code(Code::VerificationCode));
        }
    }
    // Every attempt counts towards "operation too frequent", refused ones too.
    super::security::count_attempt(s, ws, b.member_id, b.id)?;
    let Evaluated { verdicts, audience, fingerprint, domains, waves } =
        evaluate(s, kind, ctx.plan.as_deref(), b, false)?;
    if preflight::blocks(&verdicts) {
        if verdicts.iter().any(|v| v.code == Code::ContentBlocked) {
            // Trying to send blocked content is a violation of the account.
            s.store.add_violation(b.member_id, b.id, "refused: blocked content", actor, s.now())?;
        }
        return Err(ApiError::from_verdicts(&verdicts, s.now()));
    }
    let now = s.now();
    let recorded = verdicts_json(&verdicts);
    let daily_limit = s.policy.tier(kind).sends_per_day.map(|l| (l, s.policy.day_bounds(now).0));
    if preflight::needs_review(&verdicts) {
        // Held by the content check: a review for the queue, opened with the hold.
        let review = if verdicts.iter().any(|v| v.code == Code::ContentReview) { content_review(s, b)? } else { None };
        let stages = super::security::approval_stages(s, kind, ws, audience.cardinality())?;
        let stages_json = serde_json::to_string(&stages).unwrap_or_else(|_| "[]".into());
        let hold = HoldRules {
            daily_limit,
            verdicts_json: &recorded,
            review: review.as_ref(),
            stages_json: &stages_json,
            from: b.state,
        };
        s.store.hold_for_approval(ws, b.id, hold, actor, now)?;
    } else {
        let rules = DispatchRules {
            from: b.state,
            daily_limit,
            approved_by: None,
            verdicts_json: &recorded,
            fingerprint: Some(fingerprint),
            link_domains: &domains,
            review_reason: "",
            final_approval: None,
            waves,
            caps: &cap_windows(s, kind, b, now),
        };
        // Transactional and chat messages go ahead of a running broadcast.
        let _urgent = (b.priority != Priority::Broadcast).then(|| s.store.db.urgent());
        s.store.dispatch(ws, b.id, &audience, rules, actor, now)?;
        s.engine.wake();
    }
    Ok(s.store.broadcast(ws, b.id)?)
}

/// Approve a broadcast waiting for approval (reviewer, admin or owner; not its own sender). It is dispatched at once.
#[utoipa::path(post, path = "/v1/broadcasts/{id}/approve", tag = "broadcasts", params(("id" = String, Path)), request_body = ApprovalRequest,
    responses((status = 202, body = BroadcastResponse), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn approve(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<BroadcastResponse>)> {
    auth.require(Action::Approve)?;
    let comment = optional_body::<ApprovalRequest>(&body)?.comment.unwrap_or_default();
    let ws = auth.workspace_id();
    let b = load(&state, ws, &id).await?;
    if b.state != BroadcastState::PendingApproval {
        return Err(ApiError::new(
            Code::Conflict,
            format!("the broadcast is {}, not waiting for approval", b.state.as_str()),
        ));
    }
    if b.member_id == auth.0.member_id {
        return Err(ApiError::code(Code::SelfApproval));
    }
    let (kind, plan, actor, approver) =
        (auth.0.workspace.kind, auth.0.workspace.plan.clone(), auth.0.actor(), auth.0.member_id);
    let b = state
        .blocking(move |s| {
            let next = stage_to_decide(s, ws, b.id, approver)?;
            let approvals = s.store.approvals(ws, b.id)?;
            let now = s.now();
            if approvals.stages.last().is_some_and(|last| last != &next) {
                // Not the last stage: recorded; the send waits for the next one.
                s.store.record_approval(ws, b.id, &next, approver, &comment, &actor, now)?;
                return Ok(s.store.broadcast(ws, b.id)?);
            }
            let Evaluated { verdicts, audience, fingerprint, domains, waves } =
                evaluate(s, kind, plan.as_deref(), &b, true)?;
            if preflight::blocks(&verdicts) {
                return Err(ApiError::from_verdicts(&verdicts, s.now()));
            }
            let mut recorded: serde_json::Value = serde_json::from_str(&verdicts_json(&verdicts)).unwrap_or_default();
            if let Some(list) = recorded.as_array_mut() {
                list.push(serde_json::json!({"approved_by": approver.to_string(), "comment": comment}));
            }
            let recorded_json = recorded.to_string();
            let rules = DispatchRules {
                from: BroadcastState::PendingApproval,
                daily_limit: None,
                approved_by: Some(approver),
                verdicts_json: &recorded_json,
                fingerprint: Some(fingerprint),
                link_domains: &domains,
                review_reason: &comment,
                final_approval: Some((&next, approver, &comment)),
                waves,
                caps: &cap_windows(s, kind, &b, now),
            };
            s.store.dispatch(ws, b.id, &audience, rules, &actor, now)?;
            s.engine.wake();
            Ok(s.store.broadcast(ws, b.id)?)
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(broadcast_response(b))))
}

/// The stage of a held send `member` may decide now: not after a decision of
/// its own on the send, and only a stage the member reviews.
fn stage_to_decide(s: &Inner, ws: i64, id: i64, member: i64) -> Result<String, ApiError> {
    let approvals = s.store.approvals(ws, id)?;
    if approvals.decided_by(member) {
        return Err(ApiError::new(Code::ApprovalDuplicate, "each stage needs a different member"));
    }
    // Held before stages existed: one approval.
    let next = if approvals.stages.is_empty() {
        "level-1".to_owned()
    } else {
        approvals
            .next_stage()
            .ok_or_else(|| ApiError::new(Code::Conflict, "every stage is approved already"))?
            .to_owned()
    };
    let allowed = s.store.review_stages(ws, member)?;
    if !allowed.is_empty() && !allowed.contains(&next) {
        return Err(ApiError::new(
            Code::ApprovalStage,
            format!("the send waits for stage {next:?}; you review {}", allowed.join(", ")),
        ));
    }
    Ok(next)
}

/// Reject a broadcast waiting for approval.
#[utoipa::path(post, path = "/v1/broadcasts/{id}/reject", tag = "broadcasts", params(("id" = String, Path)), request_body = ApprovalRequest,
    responses((status = 200, body = BroadcastResponse), (status = 409, body = ErrorBody)))]
pub async fn reject(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<BroadcastResponse>> {
    auth.require(Action::Approve)?;
    let comment = optional_body::<ApprovalRequest>(&body)?.comment.unwrap_or_default();
    let ws = auth.workspace_id();
    let id = parse_id(&id)?;
    let (actor, member) = (auth.0.actor(), auth.0.member_id);
    let b = state
        .blocking(move |s| {
            let b = s.store.broadcast(ws, id)?;
            // A sender cancelling their own held send withdraws it: its content
            // review is not a judgement (and no spam example).
            let withdrawn = b.member_id == member;
            let stage = if withdrawn { None } else { Some(stage_to_decide(s, ws, id, member)?) };
            let reviewer = stage.as_deref().map(|st| (st, member));
            s.store.reject_broadcast(ws, id, &comment, withdrawn, reviewer, &actor, s.now())?;
            Ok(s.store.broadcast(ws, id)?)
        })
        .await?;
    Ok(Json(broadcast_response(b)))
}

/// Pause a sending broadcast: batches not yet started wait (a batch in flight
/// finishes). Resume continues where it stopped.
#[utoipa::path(post, path = "/v1/broadcasts/{id}/pause", tag = "broadcasts", params(("id" = String, Path)),
    responses((status = 200, body = BroadcastResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn pause(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<BroadcastResponse>> {
    control(&state, &auth, &id, |s, ws, id, actor| s.store.pause_broadcast(ws, id, actor, s.now())).await
}

/// Runs a state change of a broadcast in flight for a sender, wakes the
/// engine, and answers with the broadcast as it is now.
async fn control(
    state: &AppState,
    auth: &Auth,
    id: &str,
    change: impl FnOnce(&Inner, i64, i64, &str) -> Result<(), StoreError> + Send + 'static,
) -> ApiResult<Json<BroadcastResponse>> {
    auth.require(Action::Send)?;
    let (ws, id, actor) = (auth.workspace_id(), parse_id(id)?, auth.0.actor());
    let b = state
        .blocking(move |s| {
            change(s, ws, id, &actor)?;
            s.engine.wake();
            Ok(s.store.broadcast(ws, id)?)
        })
        .await?;
    Ok(Json(broadcast_response(b)))
}

/// Resume a paused broadcast.
#[utoipa::path(post, path = "/v1/broadcasts/{id}/resume", tag = "broadcasts", params(("id" = String, Path)),
    responses((status = 200, body = BroadcastResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn resume(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<BroadcastResponse>> {
    control(&state, &auth, &id, |s, ws, id, actor| s.store.resume_broadcast(ws, id, actor, s.now())).await
}

/// Re-drive the failed deliveries of a completed broadcast (compensation):
/// exactly the recipients whose delivery failed are sent again, with the
/// same idempotency keys; the broadcast is `sending` until they are done.
#[utoipa::path(post, path = "/v1/broadcasts/{id}/retry-failed", tag = "broadcasts", params(("id" = String, Path)),
    responses((status = 202, body = RedriveResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn retry_failed(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<RedriveResponse>)> {
    auth.require(Action::Send)?;
    let (ws, id, actor) = (auth.workspace_id(), parse_id(&id)?, auth.0.actor());
    let (redriven, b) = state
        .blocking(move |s| {
            let n = s.store.redrive_failed(ws, id, &actor, s.now())?;
            s.engine.wake();
            Ok((n, s.store.broadcast(ws, id)?))
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(RedriveResponse { redriven, broadcast: broadcast_response(b) })))
}

/// The per-recipient delivery log.
#[utoipa::path(get, path = "/v1/broadcasts/{id}/deliveries", tag = "broadcasts", params(("id" = String, Path), PageQuery),
    responses((status = 200, body = Page<DeliveryWire>), (status = 404, body = ErrorBody)))]
pub async fn deliveries(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<DeliveryWire>>> {
    auth.require(Action::Read)?;
    let ws = auth.workspace_id();
    let b = load(&state, ws, &id).await?;
    let limit = q.limit()?;
    let after = match q.cursor.as_deref() {
        None => None,
        Some(c) => {
            let (ch, idx) = c.split_once(':').ok_or_else(|| ApiError::code(Code::BadCursor))?;
            Some((ch.to_owned(), idx.parse::<u32>().map_err(|_| ApiError::code(Code::BadCursor))?))
        }
    };
    let rows = state.blocking(move |s| Ok(s.store.deliveries(b.id, after, limit)?)).await?;
    let next_cursor =
        (rows.len() == limit).then(|| rows.last().map(|d| format!("{}:{}", d.channel, d.contact_idx))).flatten();
    let items = rows
        .into_iter()
        .map(|d| DeliveryWire {
            contact_id: contact_id(ws, d.contact_idx),
            channel: d.channel,
            state: d.state,
            attempts: d.attempts,
            error_code: d.error_code,
            last_error: d.last_error,
            queued_at: ts(d.queued_at),
            sent_at: ts_opt(d.sent_at),
            delivered_at: ts_opt(d.delivered_at),
            read_at: ts_opt(d.read_at),
            replied_at: ts_opt(d.replied_at),
        })
        .collect();
    Ok(Json(Page { items, next_cursor }))
}

/// Replies recipients sent to a broadcast.
#[utoipa::path(get, path = "/v1/broadcasts/{id}/replies", tag = "broadcasts", params(("id" = String, Path), PageQuery),
    responses((status = 200, body = Page<ReplyResponse>), (status = 404, body = ErrorBody)))]
pub async fn replies(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<ReplyResponse>>> {
    auth.require(Action::Read)?;
    let ws = auth.workspace_id();
    let b = load(&state, ws, &id).await?;
    let (limit, after) = (q.limit()?, q.cursor_i64()?);
    let rows = state.blocking(move |s| Ok(s.store.replies(b.id, after, limit)?)).await?;
    let next_cursor = (rows.len() == limit).then(|| rows.last().map(|r| r.id.to_string())).flatten();
    let items = rows
        .into_iter()
        .map(|r| ReplyResponse {
            id: r.id.to_string(),
            contact_id: contact_id(ws, r.contact_idx),
            text: r.text,
            created_at: ts(r.created_at),
        })
        .collect();
    Ok(Json(Page { items, next_cursor }))
}

/// Progress as server-sent events: a `progress` event (the broadcast as JSON)
/// whenever its state or counts change; the stream ends when it is completed or cancelled.
#[utoipa::path(get, path = "/v1/broadcasts/{id}/events", tag = "broadcasts", params(("id" = String, Path)),
    responses((status = 200, content_type = "text/event-stream", body = String), (status = 404, body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    auth.require(Action::Read)?;
    let ws = auth.workspace_id();
    let first = load(&state, ws, &id).await?;
    let id = first.id;
    let stream = futures::stream::unfold((state, None::<String>, false), move |(state, last, done)| async move {
        if done {
            return None;
        }
        loop {
            let b = match state.blocking(move |s| Ok(s.store.broadcast(ws, id)?)).await {
                Ok(b) => b,
                Err(_) => return None,
            };
            let finished =
                matches!(b.state, BroadcastState::Completed | BroadcastState::Cancelled | BroadcastState::Blocked);
            let json = serde_json::to_string(&broadcast_response(b)).unwrap_or_default();
            if last.as_deref() != Some(json.as_str()) {
                let event = Event::default().event("progress").data(json.clone());
                return Some((Ok(event), (state, Some(json), finished)));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
