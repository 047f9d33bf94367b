//! `/v1/safety`: check a text, see what the check is made of, reload it.

use std::time::Instant;

use axum::{extract::State, Json};
use qunfa_core::{workspace::Action as MemberAction, Code};
use qunfa_safety::{Action, CheckError, Gate, Hit, Safety, Verdict};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    error::{ApiError, ApiResult, ErrorBody},
    extract::{Admin, ApiJson, Auth},
    AppState,
};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SafetyCheckRequest {
    /// The text to check (1 character to 256 KiB).
    pub text: String,
}

#[derive(Serialize, ToSchema)]
pub struct SafetyHitWire {
    /// `lexicon`, `rules`, `model`, `links` or `sample`.
    pub gate: String,
    pub category: String,
    /// The word, rule id, domain or model version that matched.
    pub rule: String,
    /// What this hit alone does: `derank`, `review` or `block`.
    pub action: String,
    /// Character offsets (Unicode scalar values) in the text; equal for the whole message.
    pub start: usize,
    pub end: usize,
    /// UTF-8 byte offsets of the same span.
    pub start_byte: usize,
    pub end_byte: usize,
    /// The text of the span as written.
    pub original: String,
    pub message: String,
    pub message_zh: String,
}

#[derive(Serialize, ToSchema)]
pub struct SafetyLinkWire {
    pub url: String,
    pub host: String,
    pub registrable: String,
    pub obfuscated: bool,
    pub shortener: bool,
    pub ip: bool,
    pub lookalike: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SafetyCheckResponse {
    /// `allow`, `derank`, `review` or `block`.
    pub action: String,
    /// The hits, at most 500 (the first ones in the order found).
    pub hits: Vec<SafetyHitWire>,
    /// How many hits there were in all.
    pub hits_total: usize,
    /// The text with every word and rule hit replaced by `*`.
    pub masked: String,
    /// The risk model's probability of spam.
    pub risk: f32,
    /// Picked for random human review.
    pub sampled: bool,
    pub links: Vec<SafetyLinkWire>,
    pub contacts: u32,
    /// SimHash of the normalised text (hex), for near-duplicate counting; null for very short texts.
    pub simhash: Option<String>,
    pub lexicon_version: String,
    pub rules_version: String,
    pub model_version: Option<String>,
    pub took_us: u64,
}

impl SafetyCheckResponse {
    pub fn new(text: &str, v: &Verdict, took_us: u64) -> SafetyCheckResponse {
        SafetyCheckResponse {
            action: v.action.as_str().into(),
            hits: {
                // Character offsets from one pass over the text, not one per hit.
                let mut char_at = vec![0u32; text.len() + 1];
                let mut n = 0u32;
                for (i, c) in text.char_indices() {
                    char_at[i..i + c.len_utf8()].fill(n);
                    n += 1;
                }
                char_at[text.len()] = n;
                v.hits.iter().take(MAX_HITS).map(|h| hit_wire(&char_at, h)).collect()
            },
            hits_total: v.hits.len(),
            masked: v.masked.clone(),
            risk: v.risk,
            sampled: v.sampled,
            links: v
                .links
                .iter()
                .map(|l| SafetyLinkWire {
                    url: l.url.clone(),
                    host: l.host.clone(),
                    registrable: l.registrable.clone(),
                    obfuscated: l.obfuscated,
                    shortener: l.shortener,
                    ip: l.ip,
                    lookalike: l.lookalike.clone(),
                })
                .collect(),
            contacts: v.contacts.total(),
            simhash: v.simhash.map(|h| format!("{h:016x}")),
            lexicon_version: v.lexicon_version.clone(),
            rules_version: v.rules_version.clone(),
            model_version: v.model_version.clone(),
            took_us,
        }
    }
}

/// Most hits an answer lists.
pub const MAX_HITS: usize = 500;

fn hit_wire(char_at: &[u32], h: &Hit) -> SafetyHitWire {
    let (start, end) = (char_at[h.start] as usize, char_at[h.end] as usize);
    let (message, message_zh) = if h.en.is_empty() {
        (
            format!("The word {:?} of the word list {:?} ({}).", h.rule, h.category, h.action.as_str()),
            format!("命中词库“{}”中的词“{}”（{}）。", h.category, h.rule, h.action.as_str()),
        )
    } else {
        (h.en.clone(), h.zh.clone())
    };
    SafetyHitWire {
        gate: h.gate.as_str().into(),
        category: h.category.clone(),
        rule: h.rule.clone(),
        action: h.action.as_str().into(),
        start,
        end,
        start_byte: h.start,
        end_byte: h.end,
        original: h.original.clone(),
        message,
        message_zh,
    }
}

pub fn check_error(e: CheckError) -> ApiError {
    ApiError::new(Code::SafetyText, e.to_string())
}

/// Check a text with the three gates and the link features: the action, every hit with its position, the masked text.
#[utoipa::path(post, path = "/v1/safety/check", tag = "safety", request_body = SafetyCheckRequest,
    responses((status = 200, body = SafetyCheckResponse), (status = 400, body = ErrorBody)))]
pub async fn check(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<SafetyCheckRequest>,
) -> ApiResult<Json<SafetyCheckResponse>> {
    auth.require(MemberAction::Read)?;
    state
        .blocking(move |s| {
            let started = Instant::now();
            let verdict = s.safety.check(&req.text, 0).map_err(check_error)?;
            let took_us = started.elapsed().as_micros() as u64;
            Ok(Json(SafetyCheckResponse::new(&req.text, &verdict, took_us)))
        })
        .await
}

#[derive(Serialize, ToSchema)]
pub struct SafetyCategoryWire {
    pub id: String,
    pub severity: String,
    pub en: String,
    pub zh: String,
    pub entries: usize,
}

#[derive(Serialize, ToSchema)]
pub struct SafetyInfoResponse {
    pub lexicon_version: String,
    pub rules_version: String,
    pub model_version: Option<String>,
    pub categories: Vec<SafetyCategoryWire>,
    pub entries: usize,
    pub allow_phrases: usize,
    pub blocked_domains: usize,
    pub rules: usize,
    /// The model's evaluation on its held-out examples.
    pub model_precision: Option<f64>,
    pub model_recall: Option<f64>,
    /// The configured sources (server admin answers only).
    pub lexicon_dir: Option<String>,
    pub rules_file: Option<String>,
    pub model_file: Option<String>,
}

fn info(s: &crate::Inner, safety: &Safety, admin: bool) -> SafetyInfoResponse {
    let lexicon = &safety.lexicon;
    let mut counts = vec![0usize; lexicon.categories().len()];
    for e in lexicon.entries() {
        counts[e.category as usize] += 1;
    }
    let config = s.safety.config();
    SafetyInfoResponse {
        lexicon_version: lexicon.version().into(),
        rules_version: safety.rules.version().into(),
        model_version: safety.model.as_ref().map(|m| m.version()),
        categories: lexicon
            .categories()
            .iter()
            .zip(counts)
            .map(|(c, n)| SafetyCategoryWire {
                id: c.id.clone(),
                severity: c.severity.as_str().into(),
                en: c.en.clone(),
                zh: c.zh.clone(),
                entries: n,
            })
            .collect(),
        entries: lexicon.entries().len(),
        allow_phrases: lexicon.stats().allow,
        blocked_domains: safety.domains.len(),
        rules: safety.rules.rules().len(),
        model_precision: safety.model.as_ref().map(|m| m.evaluation().precision),
        model_recall: safety.model.as_ref().map(|m| m.evaluation().recall),
        // Server paths are for the server admin only.
        lexicon_dir: config.lexicon_dir.as_ref().filter(|_| admin).map(|p| p.display().to_string()),
        rules_file: config.rules_file.as_ref().filter(|_| admin).map(|p| p.display().to_string()),
        model_file: config.model_file.as_ref().filter(|_| admin).map(|p| p.display().to_string()),
    }
}

/// What the check is made of: versions, categories, counts, the model's evaluation.
#[utoipa::path(get, path = "/v1/safety", tag = "safety", responses((status = 200, body = SafetyInfoResponse)))]
pub async fn get_safety(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<SafetyInfoResponse>> {
    auth.require(MemberAction::Read)?;
    Ok(Json(info(&state, &state.safety.current(), false)))
}

/// Reload the word library, rules and model from their files (server admin). On an error the previous version keeps serving.
#[utoipa::path(post, path = "/v1/safety/reload", tag = "safety",
    responses((status = 200, body = SafetyInfoResponse), (status = 422, body = ErrorBody)))]
pub async fn reload(State(state): State<AppState>, _admin: Admin) -> ApiResult<Json<SafetyInfoResponse>> {
    state
        .blocking(|s| {
            let safety = s.safety.reload(&s.store).map_err(|e| ApiError::new(Code::SafetySources, e))?;
            tracing::info!(lexicon = safety.lexicon.version(), "content safety reloaded");
            Ok(Json(info(s, &safety, true)))
        })
        .await
}

/// The preflight verdicts of a text's safety verdict (none when it is allowed).
pub fn verdicts(text: &str, v: &Verdict) -> Vec<qunfa_core::preflight::Verdict> {
    use qunfa_core::preflight::{Severity, Verdict as Pre};
    let (code, severity) = match v.action {
        Action::Allow => return Vec::new(),
        Action::Derank => (Code::ContentDerank, Severity::Warn),
        Action::Review => (Code::ContentReview, Severity::Review),
        Action::Block => (Code::ContentBlocked, Severity::Block),
    };
    let decisive: Vec<&Hit> = v.hits.iter().filter(|h| h.action == v.action).collect();
    let describe = |h: &Hit, zh: bool| -> String {
        let at = text[..h.start].chars().count();
        match (h.gate, zh) {
            (Gate::Lexicon, false) => format!("{:?} ({}) at character {}", h.original, h.category, at + 1),
            (Gate::Lexicon, true) => format!("“{}”（{}，第 {} 个字符）", h.original, h.category, at + 1),
            (_, false) => h.en.clone(),
            (_, true) => h.zh.clone(),
        }
    };
    let list = |zh: bool| -> String {
        let mut parts: Vec<String> = decisive.iter().take(5).map(|h| describe(h, zh)).collect();
        parts.dedup();
        if decisive.len() > 5 {
            parts.push(if zh {
                format!("等 {} 处", decisive.len())
            } else {
                format!("and {} more", decisive.len() - 5)
            });
        }
        parts.join(if zh { "；" } else { "; " })
    };
    let (en, zh) = match v.action {
        Action::Block => {
            (format!("The content is blocked: {}.", list(false)), format!("内容被禁止发送：{}。", list(true)))
        }
        Action::Review => {
            (format!("The content needs a human review: {}.", list(false)), format!("内容需人工审核：{}。", list(true)))
        }
        _ => (
            format!("The content is sent but marked as risky: {}.", list(false)),
            format!("内容将被标记为有风险：{}。", list(true)),
        ),
    };
    vec![Pre {
        code,
        severity,
        message: en,
        message_zh: zh,
        hint: code.hint().to_owned(),
        clears_at: None,
        limit: None,
        actual: None,
    }]
}

#[derive(Serialize, ToSchema)]
pub struct SafetyReviewWire {
    pub id: String,
    pub broadcast_id: String,
    /// The text as checked (emptied when the broadcast's content is purged).
    pub text: String,
    pub hits: Vec<serde_json::Value>,
    pub risk: f64,
    /// Picked by random human review rather than by a hit.
    pub sampled: bool,
    pub lexicon_version: String,
    /// `pending`, `approved` or `rejected`.
    pub state: String,
    pub reason: String,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    pub created_at: String,
}

fn review_wire(r: qunfa_store::safety::SafetyReview) -> SafetyReviewWire {
    SafetyReviewWire {
        id: r.id.to_string(),
        broadcast_id: r.broadcast_id.to_string(),
        text: r.text,
        hits: serde_json::from_str(&r.hits_json).unwrap_or_default(),
        risk: r.risk,
        sampled: r.sampled,
        lexicon_version: r.lexicon_version,
        state: r.state,
        reason: r.reason,
        decided_by: r.decided_by,
        decided_at: r.decided_at.map(crate::wire::ts),
        created_at: crate::wire::ts(r.created_at),
    }
}

#[derive(Serialize, ToSchema)]
pub struct SafetyReviewList {
    pub reviews: Vec<SafetyReviewWire>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReviewQuery {
    /// `pending`, `approved` or `rejected`; default all.
    pub state: Option<String>,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

/// The review queue: sends held by the content check, newest first.
#[utoipa::path(get, path = "/v1/safety/reviews", tag = "safety", params(ReviewQuery),
    responses((status = 200, body = SafetyReviewList), (status = 400, body = ErrorBody)))]
pub async fn list_reviews(
    State(state): State<AppState>,
    auth: Auth,
    axum::extract::Query(q): axum::extract::Query<ReviewQuery>,
) -> ApiResult<Json<SafetyReviewList>> {
    auth.require(MemberAction::Read)?;
    if let Some(s) = q.state.as_deref() {
        if !matches!(s, "pending" | "approved" | "rejected") {
            return Err(ApiError::new(Code::BadRequest, "state is pending, approved or rejected"));
        }
    }
    let page = super::PageQuery { limit: q.limit, cursor: q.cursor };
    let (limit, before) = (page.limit()?, page.cursor_i64()?);
    let ws = auth.workspace_id();
    let reviews = state.blocking(move |s| Ok(s.store.safety_reviews(ws, q.state.as_deref(), before, limit)?)).await?;
    let next_cursor = (reviews.len() == limit).then(|| reviews.last().map(|r| r.id.to_string())).flatten();
    Ok(Json(SafetyReviewList { reviews: reviews.into_iter().map(review_wire).collect(), next_cursor }))
}

/// One review.
#[utoipa::path(get, path = "/v1/safety/reviews/{id}", tag = "safety", params(("id" = String, Path)),
    responses((status = 200, body = SafetyReviewWire), (status = 404, body = ErrorBody)))]
pub async fn get_review(
    State(state): State<AppState>,
    auth: Auth,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<Json<SafetyReviewWire>> {
    auth.require(MemberAction::Read)?;
    let (ws, id) = (auth.workspace_id(), super::parse_id(&id)?);
    let review = state.blocking(move |s| Ok(s.store.safety_review(ws, id)?)).await?;
    Ok(Json(review_wire(review)))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ReviewDecision {
    /// A comment (approve) or the reason (reject, required).
    pub reason: Option<String>,
}

/// Approve a held send from the queue: the broadcast is approved and dispatched
/// (reviewer, admin or owner; not its own sender), exactly as POST /v1/broadcasts/{id}/approve.
#[utoipa::path(post, path = "/v1/safety/reviews/{id}/approve", tag = "safety", params(("id" = String, Path)), request_body = ReviewDecision,
    responses((status = 200, body = SafetyReviewWire), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn approve_review(
    State(state): State<AppState>,
    auth: Auth,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<SafetyReviewWire>> {
    decide(state, auth, id, body, true).await
}

/// Reject a held send from the queue with a reason: the broadcast is rejected
/// and the text becomes a spam example for the risk model.
#[utoipa::path(post, path = "/v1/safety/reviews/{id}/reject", tag = "safety", params(("id" = String, Path)), request_body = ReviewDecision,
    responses((status = 200, body = SafetyReviewWire), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn reject_review(
    State(state): State<AppState>,
    auth: Auth,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<SafetyReviewWire>> {
    decide(state, auth, id, body, false).await
}

async fn decide(
    state: AppState,
    auth: Auth,
    id: String,
    body: axum::body::Bytes,
    approve: bool,
) -> ApiResult<Json<SafetyReviewWire>> {
    auth.require(MemberAction::Approve)?;
    let decision: ReviewDecision = if body.iter().all(u8::is_ascii_whitespace) {
        ReviewDecision::default()
    } else {
        crate::extract::parse_json(&body)?
    };
    let reason = decision.reason.unwrap_or_default();
    if !approve && reason.trim().is_empty() {
        return Err(ApiError::new(Code::BadRequest, "a rejection needs a reason"));
    }
    let (ws, id) = (auth.workspace_id(), super::parse_id(&id)?);
    let member = auth.0.member_id;
    let review = state
        .blocking(move |s| {
            let review = s.store.safety_review(ws, id)?;
            if s.store.broadcast(ws, review.broadcast_id)?.member_id == member {
                return Err(ApiError::new(Code::SelfApproval, "the sender of a held send cannot decide its review"));
            }
            Ok(review)
        })
        .await?;
    if review.state != "pending" {
        return Err(ApiError::new(Code::Conflict, format!("the review is already {}", review.state)));
    }
    // The broadcast's own approve or reject decides the review, in its transaction.
    let body = axum::body::Bytes::from(serde_json::json!({ "comment": reason }).to_string());
    let broadcast = axum::extract::Path(review.broadcast_id.to_string());
    if approve {
        let _dispatched = super::broadcasts::approve(State(state.clone()), auth, broadcast, body).await?;
    } else {
        let _cancelled = super::broadcasts::reject(State(state.clone()), auth, broadcast, body).await?;
    }
    let review = state.blocking(move |s| Ok(s.store.safety_review(ws, id)?)).await?;
    Ok(Json(review_wire(review)))
}

/// Decided reviews as labelled JSONL for `qunfa safety train --data`:
/// approved → `ham`, rejected → `spam`.
#[utoipa::path(get, path = "/v1/safety/reviews/examples", tag = "safety",
    responses((status = 200, content_type = "application/x-ndjson", body = String)))]
pub async fn review_examples(State(state): State<AppState>, auth: Auth) -> ApiResult<axum::response::Response> {
    auth.require(MemberAction::Read)?;
    let ws = auth.workspace_id();
    let reviews = state.blocking(move |s| Ok(s.store.decided_safety_reviews(ws)?)).await?;
    let mut out = String::new();
    for r in reviews {
        let label = if r.state == "approved" { "ham" } else { "spam" };
        out.push_str(&serde_json::json!({"text": r.text, "label": label, "review": r.id.to_string()}).to_string());
        out.push('\n');
    }
    Ok(axum::response::IntoResponse::into_response((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson; charset=utf-8")],
        out,
    )))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SafetyWordsRequest {
    /// `word` (default) or `allow` (a phrase that cancels a match it covers).
    pub kind: Option<String>,
    /// The category (a new one is created); ignored for allow phrases.
    pub category: Option<String>,
    /// `block` (default), `review` or `derank`.
    pub severity: Option<String>,
    pub words: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SafetyWordWire {
    pub kind: String,
    pub category: String,
    pub word: String,
    pub severity: String,
}

fn words_of(req: SafetyWordsRequest) -> Result<Vec<qunfa_store::safety::SafetyWord>, ApiError> {
    let kind = req.kind.unwrap_or_else(|| "word".into());
    if !matches!(kind.as_str(), "word" | "allow") {
        return Err(ApiError::new(Code::BadRequest, "kind is word or allow"));
    }
    let category =
        if kind == "allow" { "allow".to_owned() } else { req.category.unwrap_or_default().trim().to_owned() };
    let valid_category =
        |c: &str| !c.is_empty() && c.chars().count() <= 64 && !c.chars().any(|ch| ch.is_control() || ch == '@');
    if !valid_category(&category) {
        return Err(ApiError::new(Code::BadRequest, "category: 1 to 64 characters, no control characters or @"));
    }
    let severity = req.severity.unwrap_or_else(|| "block".into());
    if qunfa_safety::lexicon::Severity::parse(&severity).is_none() {
        return Err(ApiError::new(Code::BadRequest, "severity is block, review or derank"));
    }
    if req.words.is_empty() || req.words.len() > 10_000 {
        return Err(ApiError::new(Code::BadRequest, "words: 1 to 10,000 of them"));
    }
    let mut bad = Vec::new();
    let mut out = Vec::new();
    for w in &req.words {
        let word = w.trim();
        let chars = word.chars().count();
        if word.is_empty() || chars > qunfa_safety::lexicon::MAX_ENTRY_CHARS || word.chars().any(char::is_control) {
            bad.push(serde_json::Value::String(format!(
                "{:?}: 1 to {} characters, no control characters",
                word.chars().take(20).collect::<String>(),
                qunfa_safety::lexicon::MAX_ENTRY_CHARS
            )));
        } else if word.starts_with('#') {
            bad.push(serde_json::Value::String(format!(
                "{word:?}: a word cannot start with # (word files read it as a comment)"
            )));
        } else if qunfa_safety::normalize::normalize_entry(word).is_none() {
            bad.push(serde_json::Value::String(format!("{word:?}: nothing to match (only symbols or spaces)")));
        } else {
            out.push(qunfa_store::safety::SafetyWord {
                kind: kind.clone(),
                category: category.clone(),
                word: word.to_owned(),
                severity: severity.clone(),
            });
        }
    }
    if !bad.is_empty() {
        return Err(ApiError::new(Code::BadRequest, "some words cannot be used; nothing was changed").with_details(bad));
    }
    Ok(out)
}

/// Words and allow phrases added through the API (server admin).
#[utoipa::path(get, path = "/v1/safety/words", tag = "safety", responses((status = 200, body = [SafetyWordWire])))]
pub async fn list_words(State(state): State<AppState>, _admin: Admin) -> ApiResult<Json<Vec<SafetyWordWire>>> {
    let words = state.blocking(|s| Ok(s.store.safety_words()?)).await?;
    Ok(Json(
        words
            .into_iter()
            .map(|w| SafetyWordWire { kind: w.kind, category: w.category, word: w.word, severity: w.severity })
            .collect(),
    ))
}

/// Add words (or allow phrases) to the word library, or re-grade them (server admin); the library is rebuilt and swapped in at once, on other nodes within seconds.
#[utoipa::path(post, path = "/v1/safety/words", tag = "safety", request_body = SafetyWordsRequest,
    responses((status = 200, body = SafetyInfoResponse), (status = 400, body = ErrorBody)))]
pub async fn add_words(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(req): ApiJson<SafetyWordsRequest>,
) -> ApiResult<Json<SafetyInfoResponse>> {
    let words = words_of(req)?;
    change_words(state, words, true).await
}

/// Remove words (or allow phrases) added through the API (server admin).
#[utoipa::path(delete, path = "/v1/safety/words", tag = "safety", request_body = SafetyWordsRequest,
    responses((status = 200, body = SafetyInfoResponse), (status = 400, body = ErrorBody)))]
pub async fn remove_words(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(req): ApiJson<SafetyWordsRequest>,
) -> ApiResult<Json<SafetyInfoResponse>> {
    let words = words_of(req)?;
    change_words(state, words, false).await
}

async fn change_words(
    state: AppState,
    words: Vec<qunfa_store::safety::SafetyWord>,
    add: bool,
) -> ApiResult<Json<SafetyInfoResponse>> {
    state
        .blocking(move |s| {
            if add {
                s.store.add_safety_words(&words, "admin", s.now())?;
            } else {
                s.store.remove_safety_words(&words)?;
            }
            let safety = s.safety.reload(&s.store).map_err(|e| ApiError::new(Code::SafetySources, e))?;
            Ok(Json(info(s, &safety, true)))
        })
        .await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// `block` (default), `review` or `derank`; a line `word<TAB>review` sets its own.
    pub severity: Option<String>,
}

/// Upload a word file into a category (server admin): UTF-8 text, one word a
/// line, in the format of the common lists (blank lines, `#` comments and
/// duplicates are skipped). Any bad line refuses the whole file with its line
/// number; nothing changes.
#[utoipa::path(put, path = "/v1/safety/words/{category}", tag = "safety", params(("category" = String, Path), UploadQuery),
    request_body(content = String, content_type = "text/plain"),
    responses((status = 200, body = SafetyInfoResponse), (status = 400, body = ErrorBody)))]
pub async fn upload_words(
    State(state): State<AppState>,
    _admin: Admin,
    axum::extract::Path(category): axum::extract::Path<String>,
    axum::extract::Query(q): axum::extract::Query<UploadQuery>,
    body: axum::body::Bytes,
) -> ApiResult<Json<SafetyInfoResponse>> {
    use qunfa_safety::lexicon::{parse_line, Line, Severity};
    let severity = q.severity.unwrap_or_else(|| "block".into());
    if Severity::parse(&severity).is_none() {
        return Err(ApiError::new(Code::BadRequest, "severity is block, review or derank"));
    }
    let category = category.trim().to_owned();
    if category.is_empty() || category.chars().count() > 64 || category.chars().any(|c| c.is_control() || c == '@') {
        return Err(ApiError::new(Code::BadRequest, "category: 1 to 64 characters, no control characters or @"));
    }
    let source = format!("{category} (upload)");
    let refused = |reason: String| ApiError::new(Code::BadRequest, format!("{reason}; nothing was changed"));
    let text = std::str::from_utf8(&body)
        .map_err(|e| refused(format!("{source} is not valid UTF-8 (first bad byte at offset {})", e.valid_up_to())))?;
    // The word files' own line format: the same parser as the library's.
    let mut seen = std::collections::BTreeSet::new();
    let mut all = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Line::Word(word, own) = parse_line(&source, i + 1, line).map_err(|e| refused(e.to_string()))? else {
            continue;
        };
        if word.chars().any(char::is_control) {
            return Err(refused(format!("{source}:{}: control characters", i + 1)));
        }
        if seen.insert(word.to_owned()) {
            all.push(qunfa_store::safety::SafetyWord {
                kind: "word".into(),
                category: category.clone(),
                word: word.to_owned(),
                severity: own.map_or_else(|| severity.clone(), |s| s.as_str().to_owned()),
            });
        }
    }
    if all.is_empty() {
        return Err(ApiError::new(Code::BadRequest, "the file has no words"));
    }
    change_words(state, all, true).await
}
