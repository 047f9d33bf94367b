//! Gate 2, rules: what a word list cannot say.
//!
//! A rule names terms and how they must occur in a message (after
//! normalisation, like the word library):
//!
//! - `any`: at least `min_distinct` different terms of the list (default 1);
//! - `all`: groups of terms, one term of each group somewhere in the message
//!   ("A and B within a message", e.g. 转发 and 红包);
//! - `none`: terms that cancel the rule ("A but not B");
//! - `except`: phrases that cancel a term they cover (第一次 is not the
//!   absolute term 第一).
//!
//! Besides words, a term can be a detector: `@phone` (a mainland mobile
//! number, in any digit style, spaced or not), `@qq` (a QQ number after QQ/扣扣),
//! `@wechat` (an id after 微信/vx/wx…), `@email` and `@link` (counted by the
//! caller). Rules come from TOML (`data/rules.toml` is the default set written
//! for this project) and each has an action: `derank` for categories such as
//! finance, medical or political content, `review` or `block` for the rest.

use std::collections::BTreeMap;

use daachorse::{CharwiseDoubleArrayAhoCorasick, CharwiseDoubleArrayAhoCorasickBuilder, MatchKind};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::lexicon::Severity;
use crate::normalize::{normalize_entry, Normalized};

/// The rules shipped with qunfa.
pub const DEFAULT_RULES: &str = include_str!("../data/rules.toml");

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("the rules are not valid TOML: {0}")]
    Toml(String),
    #[error("rule {rule:?}: {reason}")]
    Rule { rule: String, reason: String },
    #[error("the rule automaton could not be built: {0}")]
    Automaton(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<RuleFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    id: String,
    category: String,
    action: String,
    en: String,
    zh: String,
    #[serde(default)]
    any: Vec<String>,
    #[serde(default)]
    min_distinct: Option<usize>,
    #[serde(default)]
    all: Vec<Vec<String>>,
    #[serde(default)]
    none: Vec<String>,
    #[serde(default)]
    except: Vec<String>,
}

/// One rule as loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub category: String,
    pub action: Severity,
    pub en: String,
    pub zh: String,
    any_detectors: Vec<Detector>,
    all_detectors: Vec<(usize, Detector)>,
    min_distinct: usize,
    n_all: usize,
    has_any: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Detector {
    Phone,
    Qq,
    Wechat,
    Email,
    Link,
}

impl Detector {
    fn parse(term: &str) -> Option<Detector> {
        Some(match term {
            "@phone" => Detector::Phone,
            "@qq" => Detector::Qq,
            "@wechat" => Detector::Wechat,
            "@email" => Detector::Email,
            "@link" => Detector::Link,
            _ => return None,
        })
    }

    fn count(self, found: &Contacts, links: u32) -> u32 {
        match self {
            Detector::Phone => found.phones,
            Detector::Qq => found.qq,
            Detector::Wechat => found.wechat,
            Detector::Email => found.emails,
            Detector::Link => links,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Any(u32),
    All(u32),
    None,
    Except,
}

/// Contact details found in a text (contact harvesting, and a signal for the
/// risk model).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Contacts {
    pub phones: u32,
    pub qq: u32,
    pub wechat: u32,
    pub emails: u32,
}

impl Contacts {
    pub fn total(&self) -> u32 {
        self.phones + self.qq + self.wechat + self.emails
    }
}

/// A rule that fired, with the spans (normalised bytes) of the terms that
/// made it fire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleHit {
    pub rule: u32,
    pub spans: Vec<(usize, usize)>,
}

/// A compiled set of rules.
pub struct RuleSet {
    automaton: Option<CharwiseDoubleArrayAhoCorasick<u32>>,
    /// Per pattern: the (rule, slot) pairs it is a term of.
    refs: Vec<Vec<(u32, Slot)>>,
    rules: Vec<Rule>,
    version: String,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet").field("version", &self.version).field("rules", &self.rules.len()).finish()
    }
}

impl RuleSet {
    /// The default rules.
    ///
    /// # Panics
    /// Never: the default set is checked by a test.
    pub fn default_rules() -> RuleSet {
        RuleSet::parse(DEFAULT_RULES).expect("the default rules are valid")
    }

    /// Parses and compiles rules from TOML.
    ///
    /// # Errors
    /// Invalid TOML, an unknown field or action, a rule without terms, a term
    /// with nothing matchable, an unknown detector, duplicate ids.
    pub fn parse(text: &str) -> Result<RuleSet, RulesError> {
        let file: RulesFile = toml::from_str(text).map_err(|e| RulesError::Toml(e.to_string()))?;
        let mut by_text: BTreeMap<String, usize> = BTreeMap::new();
        let mut texts: Vec<String> = Vec::new();
        let mut refs: Vec<Vec<(u32, Slot)>> = Vec::new();
        let mut rules = Vec::new();
        for (idx, r) in file.rule.into_iter().enumerate() {
            let fail = |reason: String| RulesError::Rule { rule: r.id.clone(), reason };
            if rules.iter().any(|x: &Rule| x.id == r.id) {
                return Err(fail("a second rule with this id".into()));
            }
            let action = Severity::parse(&r.action)
                .ok_or_else(|| fail(format!("unknown action {:?}: use block, review or derank", r.action)))?;
            if r.any.is_empty() && r.all.is_empty() {
                return Err(fail("a rule needs `any` or `all` terms".into()));
            }
            if r.all.iter().any(Vec::is_empty) {
                return Err(fail("an empty group in `all`".into()));
            }
            let rule_idx = idx as u32;
            let mut any_detectors = Vec::new();
            let mut all_detectors = Vec::new();
            let mut add = |term: &str, slot: Slot| -> Result<(), RulesError> {
                if term.starts_with('@') {
                    let detector = Detector::parse(term).ok_or_else(|| RulesError::Rule {
                        rule: r.id.clone(),
                        reason: format!("unknown detector {term:?}: use @phone, @qq, @wechat, @email or @link"),
                    })?;
                    match slot {
                        Slot::Any(_) => any_detectors.push(detector),
                        Slot::All(group) => all_detectors.push((group as usize, detector)),
                        _ => {
                            return Err(RulesError::Rule {
                                rule: r.id.clone(),
                                reason: "detectors only go in `any` or `all`".into(),
                            })
                        }
                    }
                    return Ok(());
                }
                let normalized = normalize_entry(term).ok_or_else(|| RulesError::Rule {
                    rule: r.id.clone(),
                    reason: format!("the term {term:?} has nothing to match"),
                })?;
                let p = *by_text.entry(normalized.text.clone()).or_insert_with(|| {
                    texts.push(normalized.text);
                    refs.push(Vec::new());
                    texts.len() - 1
                });
                // `any` counts distinct patterns: two spellings of one term are one term.
                let slot = match slot {
                    Slot::Any(_) => Slot::Any(p as u32),
                    other => other,
                };
                if !refs[p].contains(&(rule_idx, slot)) {
                    refs[p].push((rule_idx, slot));
                }
                Ok(())
            };
            for (i, term) in r.any.iter().enumerate() {
                add(term, Slot::Any(i as u32))?;
            }
            for (g, group) in r.all.iter().enumerate() {
                for term in group {
                    add(term, Slot::All(g as u32))?;
                }
            }
            for term in &r.none {
                add(term, Slot::None)?;
            }
            for term in &r.except {
                add(term, Slot::Except)?;
            }
            let min_distinct = r.min_distinct.unwrap_or(1).max(1);
            if !r.any.is_empty() && min_distinct > r.any.len() {
                return Err(fail(format!("min_distinct is {min_distinct} but `any` has {} terms", r.any.len())));
            }
            rules.push(Rule {
                id: r.id,
                category: r.category,
                action,
                en: r.en,
                zh: r.zh,
                any_detectors,
                all_detectors,
                min_distinct,
                n_all: r.all.len(),
                has_any: !r.any.is_empty(),
            });
        }
        let automaton = if texts.is_empty() {
            None
        } else {
            Some(
                CharwiseDoubleArrayAhoCorasickBuilder::new()
                    .match_kind(MatchKind::Standard)
                    .build(&texts)
                    .map_err(|e| RulesError::Automaton(e.to_string()))?,
            )
        };
        let version = hex::encode(&Sha256::digest(text.as_bytes())[..6]);
        Ok(RuleSet { automaton, refs, rules, version })
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn rule(&self, idx: u32) -> &Rule {
        &self.rules[idx as usize]
    }

    /// Evaluates every rule on `text`; `contacts` and `links` feed the detectors.
    pub fn evaluate(&self, text: &Normalized, contacts: &Contacts, links: u32) -> Vec<RuleHit> {
        // (rule, slot, start, end) of every term found.
        let mut found: Vec<(u32, Slot, usize, usize)> = Vec::new();
        if let Some(automaton) = &self.automaton {
            for m in automaton.find_overlapping_iter(text.text()) {
                for &(rule, slot) in &self.refs[m.value() as usize] {
                    found.push((rule, slot, m.start(), m.end()));
                }
            }
        }
        let mut fired = Vec::new();
        found.sort_unstable_by_key(|&(rule, _, start, _)| (rule, start));
        let mut rest = &found[..];
        for (idx, rule) in self.rules.iter().enumerate() {
            let idx = idx as u32;
            let n = rest.iter().take_while(|f| f.0 == idx).count();
            let (mine, tail) = rest.split_at(n);
            rest = tail;
            if let Some(hit) = rule.fires(idx, mine, contacts, links) {
                fired.push(hit);
            }
        }
        fired
    }
}

impl Rule {
    fn fires(&self, idx: u32, found: &[(u32, Slot, usize, usize)], contacts: &Contacts, links: u32) -> Option<RuleHit> {
        // Except spans by start, with the furthest end reached so far: a span
        // (s, e) is covered when an except span starting at or before s ends
        // at or after e. O(n log n) however many terms a text repeats.
        let mut excepts: Vec<(usize, usize)> =
            found.iter().filter(|f| f.1 == Slot::Except).map(|&(_, _, s, e)| (s, e)).collect();
        excepts.sort_unstable();
        let mut furthest = Vec::with_capacity(excepts.len());
        let mut max_end = 0;
        for &(_, e) in &excepts {
            max_end = max_end.max(e);
            furthest.push(max_end);
        }
        let excepted = |start: usize, end: usize| {
            let n = excepts.partition_point(|&(s, _)| s <= start);
            n > 0 && furthest[n - 1] >= end
        };
        if found.iter().any(|&(_, slot, s, e)| slot == Slot::None && !excepted(s, e)) {
            return None;
        }
        let terms: Vec<(Slot, usize, usize)> = found
            .iter()
            .filter(|&&(_, slot, s, e)| matches!(slot, Slot::Any(_) | Slot::All(_)) && !excepted(s, e))
            .map(|&(_, slot, s, e)| (slot, s, e))
            .collect();
        if self.has_any {
            let mut distinct: Vec<u32> = terms
                .iter()
                .filter_map(|(slot, _, _)| match slot {
                    Slot::Any(i) => Some(*i),
                    _ => None,
                })
                .collect();
            distinct.sort_unstable();
            distinct.dedup();
            let detected = self.any_detectors.iter().filter(|d| d.count(contacts, links) > 0).count();
            if distinct.len() + detected < self.min_distinct {
                return None;
            }
        }
        for group in 0..self.n_all {
            let by_term = terms.iter().any(|(slot, _, _)| *slot == Slot::All(group as u32));
            let by_detector = self.all_detectors.iter().any(|&(g, d)| g == group && d.count(contacts, links) > 0);
            if !by_term && !by_detector {
                return None;
            }
        }
        Some(RuleHit { rule: idx, spans: terms.iter().map(|&(_, s, e)| (s, e)).collect() })
    }
}

/// Finds phone numbers, QQ numbers, WeChat ids (in normalised text, so `①③⑧`,
/// `1 3 8` and `壹叁捌` are digits) and e-mail addresses (in the original).
pub fn find_contacts(original: &str, text: &Normalized) -> Contacts {
    let mut found = Contacts::default();
    let haystack = text.text();
    let mut digits = String::new();
    let mut before_digits = 0usize;
    let flush = |digits: &mut String, before: usize, found: &mut Contacts| {
        if digits.is_empty() {
            return;
        }
        let prefix = &haystack[..before];
        let b = digits.as_bytes();
        if b.len() == 11 && b[0] == b'1' && (b'3'..=b'9').contains(&b[1]) {
            found.phones += 1;
        } else if (5..=11).contains(&b.len()) && ends_with_any(prefix, &["q", "扣", "企鹅"]) {
            found.qq += 1;
        }
        digits.clear();
    };
    for (i, c) in haystack.char_indices() {
        if c.is_ascii_digit() {
            if digits.is_empty() {
                before_digits = i;
            }
            for _ in 0..text.info(i).run.min(32) {
                digits.push(c);
            }
        } else {
            flush(&mut digits, before_digits, &mut found);
        }
    }
    flush(&mut digits, before_digits, &mut found);

    // WeChat ids: 6–20 letters, digits (and _ or -, dropped by normalising)
    // starting with a letter, right after a word for WeChat. One pass: a
    // keyword is only looked for where one of its first characters is.
    const KEYWORDS: [&str; 10] = ["微信", "威信", "薇信", "维信", "v信", "vx", "wx", "weixin", "wechat", "加v"];
    for (at, c) in haystack.char_indices() {
        if !matches!(c, '微' | '威' | '薇' | '维' | 'v' | 'w' | '加') {
            continue;
        }
        let rest = &haystack[at..];
        let Some(keyword) = KEYWORDS.iter().find(|k| rest.starts_with(**k)) else {
            continue;
        };
        let id: String = rest[keyword.len()..].chars().take_while(|c| c.is_ascii_alphanumeric()).take(40).collect();
        let id = id.strip_prefix("hao").unwrap_or(&id);
        if (6..=20).contains(&id.len()) && id.starts_with(|c: char| c.is_ascii_alphabetic()) {
            found.wechat += 1;
        }
    }
    found.emails = count_emails(original);
    found
}

fn ends_with_any(text: &str, suffixes: &[&str]) -> bool {
    // Normalised text: `qq` and `扣扣` arrive collapsed to one character.
    let tail: String = {
        let chars: Vec<char> = text.chars().rev().take(4).collect();
        chars.into_iter().rev().collect()
    };
    suffixes.iter().any(|s| tail.contains(s))
}

fn count_emails(text: &str) -> u32 {
    let bytes = text.as_bytes();
    let mut n = 0;
    for (at, _) in text.match_indices('@') {
        let local = bytes[..at].iter().rev().take_while(|b| b.is_ascii_alphanumeric() || b"._%+-".contains(b)).count();
        let domain = &text[at + 1..];
        let domain_len = domain.bytes().take_while(|b| b.is_ascii_alphanumeric() || b".-".contains(b)).count();
        let domain = domain[..domain_len].trim_end_matches('.');
        if local > 0 && domain.contains('.') && !domain.starts_with('.') {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::normalize;

    fn fired(rules: &RuleSet, text: &str) -> Vec<String> {
        let n = normalize(text);
        let contacts = find_contacts(text, &n);
        let mut ids: Vec<String> =
            rules.evaluate(&n, &contacts, 0).iter().map(|h| rules.rule(h.rule).id.clone()).collect();
        ids.sort();
        ids
    }

    #[test]
    fn the_default_rules_load() {
        let rules = RuleSet::default_rules();
        assert!(rules.rules().len() >= 8, "{rules:?}");
    }

    #[test]
    fn rule_shapes() {
        let rules = RuleSet::parse(
            r#"
            [[rule]]
            id = "share"
            category = "inducement"
            action = "review"
            en = "e"
            zh = "z"
            all = [["转发", "分享"], ["红包", "领取"]]
            none = ["请勿转发"]

            [[rule]]
            id = "first"
            category = "absolute"
            action = "derank"
            en = "e"
            zh = "z"
            any = ["第一"]
            except = ["第一次", "第一天"]

            [[rule]]
            id = "finance"
            category = "finance"
            action = "derank"
            en = "e"
            zh = "z"
            any = ["股票", "股 票", "基金", "理财"]
            min_distinct = 2

            [[rule]]
            id = "harvest"
            category = "contact"
            action = "review"
            en = "e"
            zh = "z"
            all = [["加我", "联系"], ["@phone", "@wechat", "@qq"]]
            "#,
        )
        .unwrap();
        let cases: &[(&str, &[&str])] = &[
            ("转发此消息领取红包", &["share"]),
            ("转 发 此消息 領 取", &["share"]),
            ("转发此消息", &[]),
            ("请勿转发，红包活动已结束", &[]),
            ("销量第一", &["first"]),
            ("第一次参加", &[]),
            ("第一天和第一名", &["first"]),
            ("股票", &[]),
            ("股票和基金", &["finance"]),
            ("股票股票", &[]),
            ("股 票", &[]),
            ("有事联系13800138000", &["harvest"]),
            ("有事联系①③⑧ 0013 8000", &["harvest"]),
            ("有事联系 1380013800", &[]),
            ("加我vx: abc_12345", &["harvest"]),
            ("加我qq 12345678", &["harvest"]),
        ];
        for (text, expected) in cases {
            assert_eq!(&fired(&rules, text), expected, "in {text:?}");
        }
    }

    #[test]
    fn bad_rules_are_clear_errors() {
        let cases = [
            ("[[rule]]\nid='a'\ncategory='c'\naction='maybe'\nen=''\nzh=''\nany=['x']", "unknown action"),
            ("[[rule]]\nid='a'\ncategory='c'\naction='block'\nen=''\nzh=''", "needs `any` or `all`"),
            ("[[rule]]\nid='a'\ncategory='c'\naction='block'\nen=''\nzh=''\nany=['@fax']", "unknown detector"),
            ("[[rule]]\nid='a'\ncategory='c'\naction='block'\nen=''\nzh=''\nany=['**']", "nothing to match"),
            ("[[rule]]\nid='a'\ncategory='c'\naction='block'\nen=''\nzh=''\nany=['x']\ncolour='red'", "unknown field"),
            ("[[rule]", "not valid TOML"),
        ];
        for (text, expected) in cases {
            let err = RuleSet::parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?} gave {err}");
        }
    }

    #[test]
    fn contacts() {
        let check = |text: &str| {
            let c = find_contacts(text, &normalize(text));
            (c.phones, c.qq, c.wechat, c.emails)
        };
        assert_eq!(check("电话 138-0013-8000"), (1, 0, 0, 0));
        assert_eq!(check("一三八零零一三八零零零"), (1, 0, 0, 0));
        assert_eq!(check("订单号 12345678901234"), (0, 0, 0, 0));
        assert_eq!(check("扣扣：8 8 6 6 5"), (0, 1, 0, 0));
        assert_eq!(check("薇信 ab_cd_12"), (0, 0, 1, 0));
        assert_eq!(check("写信到 a.b@example.com 或 @某人"), (0, 0, 0, 1));
    }
}
