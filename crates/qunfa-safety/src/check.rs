//! One check: the three gates and the link features combined into a verdict.
//!
//! A `Safety` holds one version of everything a check needs (word library,
//! domain block list, rules, model, thresholds). It never changes: a reload
//! builds a new one and swaps it in, so a check in flight finishes on the
//! version it started with and names that version in its verdict.
//!
//! The action is the strongest of the hits: a `block` word blocks, a `review`
//! rule holds the message for a person, a `derank` category marks it as
//! risky. The model adds a hit when its risk score passes a threshold. A
//! message that nothing holds may still be picked for random human review,
//! with a probability that grows with the risk score; the pick is a hash of
//! the caller's key, so asking again gives the same answer.

use std::sync::{Arc, OnceLock};

use crate::dedup::simhash;
use crate::lexicon::{Lexicon, Scratch, Severity};
use crate::links::{extract, DomainList, Link};
use crate::model::{parse_jsonl, Model, Signals, TrainOptions};
use crate::normalize::Normalized;
use crate::rules::{find_contacts, Contacts, RuleSet};
use crate::sources::{self, Sources};

/// Longest text a check accepts, in bytes (a message is at most a few
/// thousand characters; this leaves room for long e-mail bodies).
pub const MAX_TEXT_BYTES: usize = 256 * 1024;

/// The model judges texts of at least this many (normalised) characters: a
/// shorter one carries too little evidence for it to hold a message alone.
pub const MODEL_MIN_CHARS: u32 = 8;

/// Texts shorter than this (normalised characters) get no SimHash: `🎉` and
/// `!!!` are not the same content.
pub const SIMHASH_MIN_CHARS: usize = 5;

/// The labelled examples shipped with qunfa, written for this project.
pub const DEFAULT_EXAMPLES: &str = include_str!("../data/labelled.jsonl");

/// What happens to a message, weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Allow,
    Derank,
    Review,
    Block,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Derank => "derank",
            Action::Review => "review",
            Action::Block => "block",
        }
    }
}

impl From<Severity> for Action {
    fn from(severity: Severity) -> Action {
        match severity {
            Severity::Derank => Action::Derank,
            Severity::Review => Action::Review,
            Severity::Block => Action::Block,
        }
    }
}

/// Which part of the check produced a hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Gate {
    Lexicon,
    Rules,
    Model,
    Links,
    /// Random human review.
    Sample,
}

impl Gate {
    pub fn as_str(self) -> &'static str {
        match self {
            Gate::Lexicon => "lexicon",
            Gate::Rules => "rules",
            Gate::Model => "model",
            Gate::Links => "links",
            Gate::Sample => "sample",
        }
    }
}

/// One reason in a verdict.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    pub gate: Gate,
    /// Category id: a word-list category, a rule's category, `risk`, `link.*`.
    pub category: String,
    /// The word, rule id, model version or domain that matched.
    pub rule: String,
    pub action: Action,
    /// Byte span in the original text (`start == end` for the whole message).
    pub start: usize,
    pub end: usize,
    /// The original text of the span.
    pub original: String,
    /// Why, in English and Chinese (rules, links, model); empty for words.
    pub en: String,
    pub zh: String,
}

/// The result of one check.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub action: Action,
    pub hits: Vec<Hit>,
    /// The text with every word and rule hit replaced by `*`, one per character.
    pub masked: String,
    /// Probability of spam from the model (0 without a model).
    pub risk: f32,
    /// Picked for random human review.
    pub sampled: bool,
    pub links: Vec<Link>,
    pub contacts: Contacts,
    /// SimHash of the normalised text, for near-duplicate counting; `None`
    /// when too little text is left to compare (an emoji caption).
    pub simhash: Option<u64>,
    pub lexicon_version: String,
    pub rules_version: String,
    pub model_version: Option<String>,
}

/// The numbers of a check (from the policy file).
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    /// Risk from which the model asks for review / de-ranks / blocks.
    pub risk_review: f32,
    pub risk_derank: f32,
    pub risk_block: f32,
    /// Random review: probability `sample_base + sample_per_risk × risk`.
    pub sample_base: f64,
    pub sample_per_risk: f64,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds { risk_review: 0.95, risk_derank: 0.8, risk_block: 1.01, sample_base: 0.0, sample_per_risk: 0.0 }
    }
}

/// Why a check could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("the text is empty")]
    Empty,
    #[error("the text has {0} bytes; at most {MAX_TEXT_BYTES} are checked")]
    TooLong(usize),
}

/// One version of everything a check needs.
pub struct Safety {
    pub lexicon: Arc<Lexicon>,
    pub domains: Arc<DomainList>,
    pub rules: Arc<RuleSet>,
    pub model: Option<Arc<Model>>,
    pub thresholds: Thresholds,
}

impl std::fmt::Debug for Safety {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Safety")
            .field("lexicon", &self.lexicon.version())
            .field("rules", &self.rules.version())
            .field("model", &self.model.as_ref().map(|m| m.version()))
            .finish()
    }
}

/// Per-thread scratch space (checks run on many threads at once).
#[derive(Default)]
pub struct CheckScratch {
    normalized: Normalized,
    lexicon: Scratch,
}

impl Safety {
    /// The default lists, rules and model.
    ///
    /// # Panics
    /// Never: the defaults are checked by tests.
    pub fn defaults() -> Safety {
        let mut safety = Safety::defaults_without_model();
        safety.model = Some(default_model());
        safety
    }

    /// The shipped lists and rules, no model.
    fn defaults_without_model() -> Safety {
        let built = sources::build(&Sources { defaults: true, ..Sources::default() }).expect("the default lists build");
        Safety::without_model(built.lexicon, built.domains, RuleSet::default_rules())
    }

    /// A check of gates 1 and 2 and the links, with default thresholds.
    pub fn without_model(lexicon: Lexicon, domains: DomainList, rules: RuleSet) -> Safety {
        Safety {
            lexicon: Arc::new(lexicon),
            domains: Arc::new(domains),
            rules: Arc::new(rules),
            model: None,
            thresholds: Thresholds::default(),
        }
    }

    /// Checks a text. `sample_key` decides random review (use the broadcast
    /// id, so checking again gives the same answer).
    ///
    /// # Errors
    /// An empty text or one longer than `MAX_TEXT_BYTES`.
    pub fn check(&self, text: &str, sample_key: u64, scratch: &mut CheckScratch) -> Result<Verdict, CheckError> {
        if text.trim().is_empty() {
            return Err(CheckError::Empty);
        }
        if text.len() > MAX_TEXT_BYTES {
            return Err(CheckError::TooLong(text.len()));
        }
        let CheckScratch { normalized, lexicon: lexicon_scratch } = scratch;
        self.lexicon.normalize_and_scan(text, normalized, lexicon_scratch);
        let mut hits = Vec::new();

        for h in lexicon_scratch.hits() {
            let entry = self.lexicon.entry(h.entry);
            let (start, end) = normalized.original_span(h.start, h.end);
            hits.push(Hit {
                gate: Gate::Lexicon,
                category: self.lexicon.category(entry.category).id.clone(),
                rule: entry.word.clone(),
                action: entry.severity.into(),
                start,
                end,
                original: text[start..end].to_owned(),
                en: String::new(),
                zh: String::new(),
            });
        }
        let lexicon_hits = hits.len() as u32;

        let links = extract(text);
        for link in &links {
            hits.extend(self.link_hits(text, link));
        }

        let contacts = find_contacts(text, normalized);
        let mut rule_hits = 0;
        let mut category_hits = 0;
        for fired in self.rules.evaluate(normalized, &contacts, links.len() as u32) {
            let rule = self.rules.rule(fired.rule);
            if rule.action == Severity::Derank {
                category_hits += 1;
            } else {
                rule_hits += 1;
            }
            let spans: Vec<(usize, usize)> = if fired.spans.is_empty() {
                vec![(0, 0)]
            } else {
                fired.spans.iter().map(|&(s, e)| normalized.original_span(s, e)).collect()
            };
            for (start, end) in spans {
                hits.push(Hit {
                    gate: Gate::Rules,
                    category: rule.category.clone(),
                    rule: rule.id.clone(),
                    action: rule.action.into(),
                    start,
                    end,
                    original: text[start..end].to_owned(),
                    en: rule.en.clone(),
                    zh: rule.zh.clone(),
                });
            }
        }

        let signals = Signals {
            links: links.len() as u32,
            contacts: contacts.total(),
            lexicon_hits,
            rule_hits,
            category_hits,
            digits: normalized.text().bytes().filter(u8::is_ascii_digit).count() as u32,
            chars: normalized.char_count() as u32,
        };
        let mut risk = 0.0;
        if let Some(model) = self.model.as_ref().filter(|_| signals.chars >= MODEL_MIN_CHARS) {
            risk = model.score(normalized.text(), &signals);
            let t = &self.thresholds;
            let action = if risk >= t.risk_block {
                Some(Action::Block)
            } else if risk >= t.risk_review {
                Some(Action::Review)
            } else if risk >= t.risk_derank {
                Some(Action::Derank)
            } else {
                None
            };
            if let Some(action) = action {
                let top: Vec<String> = model
                    .explain(normalized.text(), &signals, 5)
                    .into_iter()
                    .filter(|(_, w)| *w > 0.0)
                    .map(|(feature, _)| feature)
                    .collect();
                hits.push(Hit {
                    gate: Gate::Model,
                    category: "risk".into(),
                    rule: format!("model:{}", model.version()),
                    action,
                    start: 0,
                    end: 0,
                    original: String::new(),
                    en: format!("The risk model scores this text {risk:.2} (most telling: {}).", top.join(", ")),
                    zh: format!("风险模型评分 {risk:.2}（主要特征：{}）。", top.join("、")),
                });
            }
        }

        let mut action = hits.iter().map(|h| h.action).max().unwrap_or(Action::Allow);
        let mut sampled = false;
        if action < Action::Review {
            let t = &self.thresholds;
            let p = (t.sample_base + t.sample_per_risk * f64::from(risk)).clamp(0.0, 1.0);
            if p > 0.0 && unit_hash(sample_key, normalized.text()) < p {
                sampled = true;
                action = Action::Review;
                hits.push(Hit {
                    gate: Gate::Sample,
                    category: "sample".into(),
                    rule: format!("sample:{p:.3}"),
                    action: Action::Review,
                    start: 0,
                    end: 0,
                    original: String::new(),
                    en: format!("Picked for random human review (probability {:.1}% at this risk).", p * 100.0),
                    zh: format!("被随机抽中人工复核（此风险下的概率为 {:.1}%）。", p * 100.0),
                });
            }
        }

        let masked = mask(text, &hits);
        Ok(Verdict {
            action,
            hits,
            masked,
            risk,
            sampled,
            links,
            contacts,
            simhash: (normalized.char_count() >= SIMHASH_MIN_CHARS).then(|| simhash(normalized.text())),
            lexicon_version: self.lexicon.version().to_owned(),
            rules_version: self.rules.version().to_owned(),
            model_version: self.model.as_ref().map(|m| m.version()),
        })
    }

    fn link_hits(&self, text: &str, link: &Link) -> Vec<Hit> {
        let mut hits = Vec::new();
        let mut hit = |category: &str, action: Action, rule: String, en: String, zh: String| {
            hits.push(Hit {
                gate: Gate::Links,
                category: category.into(),
                rule,
                action,
                start: link.start,
                end: link.end,
                original: text[link.start..link.end].to_owned(),
                en,
                zh,
            });
        };
        if let Some(listed) = self.domains.matches_link(link) {
            hit(
                "link.blocked",
                Action::Block,
                listed.to_owned(),
                format!("The link goes to {}, which is on the block list.", link.host),
                format!("链接指向黑名单中的域名 {}。", link.host),
            );
        }
        if let Some(imitated) = &link.lookalike {
            hit(
                "link.lookalike",
                Action::Block,
                link.host.clone(),
                format!("The link's domain imitates {imitated} with look-alike characters."),
                format!("链接域名用形近字符仿冒 {imitated}。"),
            );
        }
        if link.shortener {
            hit(
                "link.shortener",
                Action::Review,
                link.registrable.clone(),
                "A short link hides where it goes; use the full address.".into(),
                "短链接隐藏了真实地址，请使用完整链接。".into(),
            );
        }
        if link.ip {
            hit(
                "link.ip",
                Action::Review,
                link.host.clone(),
                "The link goes to a bare IP address.".into(),
                "链接指向裸 IP 地址。".into(),
            );
        }
        if link.obfuscated {
            hit(
                "link.obfuscated",
                Action::Review,
                link.host.clone(),
                "The link is written to slip past filters (点, [.], spaces…).".into(),
                "链接以规避过滤的方式书写（如“点”“[.]”或空格）。".into(),
            );
        }
        hits
    }
}

/// Replaces the characters of word and rule hits by `*`.
fn mask(text: &str, hits: &[Hit]) -> String {
    let mut spans: Vec<(usize, usize)> = hits
        .iter()
        .filter(|h| matches!(h.gate, Gate::Lexicon | Gate::Rules) && h.start < h.end)
        .map(|h| (h.start, h.end))
        .collect();
    if spans.is_empty() {
        return text.to_owned();
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end) in spans {
        let start = start.max(at);
        if start >= end {
            continue;
        }
        out.push_str(&text[at..start]);
        out.extend(text[start..end].chars().map(|c| if c.is_whitespace() { c } else { '*' }));
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

/// A number in [0, 1) from a key and a text (FNV-1a, then a mix).
fn unit_hash(key: u64, text: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ key;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The signals and normalised text of each example, computed with `safety`
/// (its model is not used), ready for `Model::train`.
pub fn featurize(safety: &Safety, examples: &[crate::model::Example]) -> Vec<(String, Signals, bool)> {
    let without_model = Safety {
        lexicon: safety.lexicon.clone(),
        domains: safety.domains.clone(),
        rules: safety.rules.clone(),
        model: None,
        thresholds: Thresholds::default(),
    };
    let mut scratch = CheckScratch::default();
    examples
        .iter()
        .filter_map(|e| {
            let verdict = without_model.check(&e.text, 0, &mut scratch).ok()?;
            let signals = signals_of(&verdict, &scratch.normalized);
            Some((scratch.normalized.text().to_owned(), signals, e.spam))
        })
        .collect()
}

fn signals_of(verdict: &Verdict, normalized: &Normalized) -> Signals {
    let count = |gate: Gate, derank: Option<bool>| {
        verdict
            .hits
            .iter()
            .filter(|h| h.gate == gate && derank.is_none_or(|d| (h.action == Action::Derank) == d))
            .count() as u32
    };
    Signals {
        links: verdict.links.len() as u32,
        contacts: verdict.contacts.total(),
        lexicon_hits: count(Gate::Lexicon, None),
        rule_hits: count(Gate::Rules, Some(false)),
        category_hits: count(Gate::Rules, Some(true)),
        digits: normalized.text().bytes().filter(u8::is_ascii_digit).count() as u32,
        chars: normalized.char_count() as u32,
    }
}

/// The model trained on the shipped examples with the default lists (once per
/// process; training takes a few milliseconds).
///
/// # Panics
/// Never: the shipped examples train (checked by a test).
pub fn default_model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let safety = Safety::defaults_without_model();
            let examples = parse_jsonl(DEFAULT_EXAMPLES).expect("the shipped examples parse");
            let (model, _) = Model::train(&featurize(&safety, &examples), &TrainOptions::default())
                .expect("the shipped examples train");
            Arc::new(model)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_hits_and_keeps_the_rest() {
        let hit = |start, end| Hit {
            gate: Gate::Lexicon,
            category: String::new(),
            rule: String::new(),
            action: Action::Block,
            start,
            end,
            original: String::new(),
            en: String::new(),
            zh: String::new(),
        };
        let text = "接刷 单，日结";
        assert_eq!(mask(text, &[hit(3, 10)]), "接* *，日结");
        assert_eq!(mask(text, &[hit(3, 10), hit(7, 10)]), "接* *，日结");
    }

    #[test]
    fn bad_input() {
        let safety = Safety::defaults();
        let mut scratch = CheckScratch::default();
        assert_eq!(safety.check("  \n", 0, &mut scratch), Err(CheckError::Empty));
        let long = "字".repeat(MAX_TEXT_BYTES);
        assert_eq!(safety.check(&long, 0, &mut scratch), Err(CheckError::TooLong(MAX_TEXT_BYTES * 3)));
    }

    #[test]
    fn the_gates_together() {
        let safety = Safety::defaults();
        let mut scratch = CheckScratch::default();
        let check = |text: &str, scratch: &mut CheckScratch| safety.check(text, 1, scratch).unwrap();
        let v = check("明天上午九点在三楼会议室开周会，请准时参加。", &mut scratch);
        assert_eq!(v.action, Action::Allow, "{v:?}");
        let v = check("招聘兼职刷单，日结300元，加微信 abc12345 详聊", &mut scratch);
        assert_eq!(v.action, Action::Block, "{v:?}");
        assert!(v.masked.contains("**"), "{}", v.masked);
        let v = check("转发此消息到朋友圈，即可领取红包！", &mut scratch);
        assert!(v.action >= Action::Review, "{v:?}");
    }
}
