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
    pub hits: Vec<SafetyHitWire>,
    /// The text with every word and rule hit replaced by `*`.
    pub masked: String,
    /// The risk model's probability of spam.
    pub risk: f32,
    /// Picked for random human review.
    pub sampled: bool,
    pub links: Vec<SafetyLinkWire>,
    pub contacts: u32,
    /// SimHash of the normalised text (hex), for near-duplicate counting.
    pub simhash: String,
    pub lexicon_version: String,
    pub rules_version: String,
    pub model_version: Option<String>,
    pub took_us: u64,
}

impl SafetyCheckResponse {
    pub fn new(text: &str, v: &Verdict, took_us: u64) -> SafetyCheckResponse {
        SafetyCheckResponse {
            action: v.action.as_str().into(),
            hits: v.hits.iter().map(|h| hit_wire(text, h)).collect(),
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
            simhash: format!("{:016x}", v.simhash),
            lexicon_version: v.lexicon_version.clone(),
            rules_version: v.rules_version.clone(),
            model_version: v.model_version.clone(),
            took_us,
        }
    }
}

fn hit_wire(text: &str, h: &Hit) -> SafetyHitWire {
    let start = text[..h.start].chars().count();
    let end = start + text[h.start..h.end].chars().count();
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
    /// The configured sources.
    pub lexicon_dir: Option<String>,
    pub rules_file: Option<String>,
    pub model_file: Option<String>,
}

fn info(s: &crate::Inner, safety: &Safety) -> SafetyInfoResponse {
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
        lexicon_dir: config.lexicon_dir.as_ref().map(|p| p.display().to_string()),
        rules_file: config.rules_file.as_ref().map(|p| p.display().to_string()),
        model_file: config.model_file.as_ref().map(|p| p.display().to_string()),
    }
}

/// What the check is made of: versions, categories, counts, the model's evaluation.
#[utoipa::path(get, path = "/v1/safety", tag = "safety", responses((status = 200, body = SafetyInfoResponse)))]
pub async fn get_safety(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<SafetyInfoResponse>> {
    auth.require(MemberAction::Read)?;
    Ok(Json(info(&state, &state.safety.current())))
}

/// Reload the word library, rules and model from their files (server admin). On an error the previous version keeps serving.
#[utoipa::path(post, path = "/v1/safety/reload", tag = "safety",
    responses((status = 200, body = SafetyInfoResponse), (status = 422, body = ErrorBody)))]
pub async fn reload(State(state): State<AppState>, _admin: Admin) -> ApiResult<Json<SafetyInfoResponse>> {
    state
        .blocking(|s| {
            let safety = s.safety.reload().map_err(|e| ApiError::new(Code::SafetySources, e))?;
            tracing::info!(lexicon = safety.lexicon.version(), "content safety reloaded");
            Ok(Json(info(s, &safety)))
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
            format!("The content is sent with lower priority: {}.", list(false)),
            format!("内容将降低发送优先级：{}。", list(true)),
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
