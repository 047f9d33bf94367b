//! Lexicon lint: find the entries of a word list that will block ordinary text.
//!
//! Real lists are noisy: single characters (出, 日), everyday words, names.
//! The lint scans a benign reference text the operator supplies (news,
//! reviews, their own past messages) with the library and proposes, per
//! entry of severity `block` or `review`:
//!
//! - `drop` for a single character (it cannot be judged without context) and
//!   for an entry found in at least `drop_share` of the reference lines;
//! - `review` for an entry found in at least `review_lines` reference lines
//!   (a person decides instead of a block);
//!
//! The proposals are written as a `lint.tsv` that the library applies when it
//! loads (see `sources`). Measure the result on other text than the reference:
//! the benchmark splits the corpus in two halves for that.

use rustc_hash::FxHashMap;

use crate::lexicon::{Lexicon, Scratch, Severity};
use crate::normalize::{normalize_into, Normalized};

/// The lint's knobs.
#[derive(Clone, Debug, PartialEq)]
pub struct LintOptions {
    /// Entries in at least this many reference lines are demoted to review.
    pub review_lines: usize,
    /// Entries in at least this share of the reference lines are dropped.
    pub drop_share: f64,
    /// Drop single-character entries (CJK or Latin) whatever the reference says.
    pub drop_single_chars: bool,
}

impl Default for LintOptions {
    fn default() -> LintOptions {
        LintOptions { review_lines: 2, drop_share: 0.002, drop_single_chars: true }
    }
}

/// What the lint proposes for one word.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    pub word: String,
    pub category: String,
    pub severity: Severity,
    /// `drop`, or the new severity.
    pub decision: Option<Severity>,
    /// Reference lines the entry is found in.
    pub lines: usize,
    pub reason: String,
}

impl Proposal {
    pub fn decision_str(&self) -> &'static str {
        self.decision.map_or("drop", Severity::as_str)
    }
}

/// A lint run.
#[derive(Clone, Debug, PartialEq)]
pub struct LintReport {
    pub reference_lines: usize,
    /// Reference lines the library would block before the proposals.
    pub blocked_lines: usize,
    pub proposals: Vec<Proposal>,
}

impl LintReport {
    /// The proposals as a `lint.tsv` file.
    pub fn to_tsv(&self) -> String {
        let mut out = String::from("# word\tdecision\treason (written by qunfa safety lint)\n");
        for p in &self.proposals {
            out.push_str(&format!("{}\t{}\t{}\n", p.word, p.decision_str(), p.reason));
        }
        out
    }
}

/// Lints `lexicon` against benign `reference` lines.
pub fn lint<'a>(lexicon: &Lexicon, reference: impl IntoIterator<Item = &'a str>, options: &LintOptions) -> LintReport {
    let mut normalized = Normalized::new();
    let mut scratch = Scratch::new();
    let mut lines_of: FxHashMap<u32, usize> = FxHashMap::default();
    let mut seen: Vec<u32> = Vec::new();
    let (mut n_lines, mut blocked) = (0usize, 0usize);
    for line in reference {
        if line.trim().is_empty() {
            continue;
        }
        n_lines += 1;
        normalize_into(line, &mut normalized);
        lexicon.scan(&normalized, &mut scratch);
        seen.clear();
        seen.extend(scratch.hits().iter().map(|h| h.entry));
        seen.sort_unstable();
        seen.dedup();
        if seen.iter().any(|&e| lexicon.entry(e).severity == Severity::Block) {
            blocked += 1;
        }
        for &e in &seen {
            *lines_of.entry(e).or_default() += 1;
        }
    }
    let mut proposals = Vec::new();
    for (idx, entry) in lexicon.entries().iter().enumerate() {
        if entry.severity == Severity::Derank {
            continue;
        }
        let lines = lines_of.get(&(idx as u32)).copied().unwrap_or(0);
        let share = if n_lines == 0 { 0.0 } else { lines as f64 / n_lines as f64 };
        let single = crate::normalize::normalize_entry(&entry.word)
            .is_some_and(|n| n.text.chars().count() == 1 && !entry.word.contains('+'));
        let (decision, reason) = if options.drop_single_chars && single {
            (None, format!("a single character (in {lines} of {n_lines} reference lines)"))
        } else if lines > 0 && share >= options.drop_share {
            (None, format!("in {lines} of {n_lines} reference lines ({:.2}%)", share * 100.0))
        } else if lines >= options.review_lines && entry.severity == Severity::Block {
            (Some(Severity::Review), format!("in {lines} of {n_lines} reference lines"))
        } else {
            continue;
        };
        proposals.push(Proposal {
            word: entry.word.clone(),
            category: lexicon.category(entry.category).id.clone(),
            severity: entry.severity,
            decision,
            lines,
            reason,
        });
    }
    proposals.sort_by(|a, b| b.lines.cmp(&a.lines).then_with(|| a.word.cmp(&b.word)));
    proposals.dedup_by(|a, b| a.word == b.word);
    LintReport { reference_lines: n_lines, blocked_lines: blocked, proposals }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lexicon::LexiconBuilder;

    #[test]
    fn proposes_drops_and_demotions() {
        let mut b = LexiconBuilder::new();
        b.category("c", Severity::Block, "", "");
        b.add_words("c", "c", "出\n新闻\n刷单\n发展\n".as_bytes()).unwrap();
        let lexicon = b.build().unwrap();
        let mut reference = vec!["今日新闻", "新闻联播", "经济发展"];
        reference.extend(std::iter::repeat_n("普通的一句话", 997));
        let report = lint(&lexicon, reference, &LintOptions::default());
        assert_eq!(report.reference_lines, 1000);
        assert_eq!(report.blocked_lines, 3);
        let got: Vec<(&str, &str)> = report.proposals.iter().map(|p| (p.word.as_str(), p.decision_str())).collect();
        // 新闻: 2 lines = 0.2% → dropped; 发展: 1 line → kept; 出: single.
        assert_eq!(got, [("新闻", "drop"), ("出", "drop")]);
        assert!(report.to_tsv().contains("新闻\tdrop\tin 2 of 1000 reference lines (0.20%)\n"));
    }
}
