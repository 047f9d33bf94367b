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
//!   (a person decides instead of a block), and for an entry that looks like
//!   ordinary text: a character-bigram model of the reference expects it at
//!   least `expect_at_least` times in text of the reference's size. That
//!   catches the long tail a reference of any size misses (names, everyday
//!   phrases seen zero times but made of common pairs of characters), while
//!   real spam words, whose pairs are rare in benign text, stay `block`;
//!
//! - `review` for a whole category that, by cross-validation inside the
//!   reference, would still block at least `category_review_share` of benign
//!   lines after the words' proposals (big mixed lists of names and everyday
//!   words cannot be made precise word by word).
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
    /// Demote entries the bigram model expects at least this often in the
    /// reference (0: off).
    pub expect_at_least: f64,
    /// Demote a whole category to review when, after the words' proposals,
    /// it still blocks at least this share of held-out reference lines (0: off).
    pub category_review_share: f64,
}

impl Default for LintOptions {
    fn default() -> LintOptions {
        LintOptions {
            review_lines: 1,
            drop_share: 0.002,
            drop_single_chars: true,
            expect_at_least: 0.1,
            category_review_share: 0.002,
        }
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

/// What the lint proposes for a whole category.
#[derive(Clone, Debug, PartialEq)]
pub struct CategoryProposal {
    pub category: String,
    pub decision: Severity,
    pub reason: String,
}

/// A lint run.
#[derive(Clone, Debug, PartialEq)]
pub struct LintReport {
    pub reference_lines: usize,
    /// Reference lines the library would block before the proposals.
    pub blocked_lines: usize,
    pub proposals: Vec<Proposal>,
    pub categories: Vec<CategoryProposal>,
}

impl LintReport {
    /// The proposals as a `lint.tsv` file.
    pub fn to_tsv(&self) -> String {
        let mut out = String::from(
            "# word\tdecision\treason (written by qunfa safety lint); category:NAME lines re-grade a whole category\n",
        );
        for c in &self.categories {
            out.push_str(&format!("{}{}\t{}\t{}\n", crate::sources::CATEGORY_PREFIX, c.category, c.decision, c.reason));
        }
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
    let mut model = Bigrams::default();
    // The bigram models of the even and the odd lines, for cross-validation
    // (a fold's model must not have seen its held-out lines).
    let mut fold_models = [Bigrams::default(), Bigrams::default()];
    // The distinct entries found in each reference line.
    let mut found: Vec<Vec<u32>> = Vec::new();
    for line in reference {
        if line.trim().is_empty() {
            continue;
        }
        normalize_into(line, &mut normalized);
        model.add(normalized.text());
        fold_models[found.len() % 2].add(normalized.text());
        lexicon.scan(&normalized, &mut scratch);
        let mut seen: Vec<u32> = scratch.hits().iter().map(|h| h.entry).collect();
        seen.sort_unstable();
        seen.dedup();
        found.push(seen);
    }
    let n_lines = found.len();
    let blocked =
        found.iter().filter(|seen| seen.iter().any(|&e| lexicon.entry(e).severity == Severity::Block)).count();
    let all: Vec<&[u32]> = found.iter().map(Vec::as_slice).collect();
    let words = word_decisions(lexicon, &all, &model, options);

    let mut proposals: Vec<Proposal> = words
        .into_iter()
        .map(|(idx, (decision, lines, reason))| {
            let entry = lexicon.entry(idx);
            Proposal {
                word: entry.word.clone(),
                category: lexicon.category(entry.category).id.clone(),
                severity: entry.severity,
                decision,
                lines,
                reason,
            }
        })
        .collect();
    proposals.sort_by(|a, b| b.lines.cmp(&a.lines).then_with(|| a.word.cmp(&b.word)));
    proposals.dedup_by(|a, b| a.word == b.word);

    // Categories too noisy to block even after the words' proposals, found by
    // cross-validation inside the reference: the proposals of one half of the
    // lines, measured on the other half (and the other way round). A word a
    // reference has not seen is as likely in the next benign message as the
    // ones the held-out half did not see.
    let mut categories = Vec::new();
    if options.category_review_share > 0.0 && n_lines >= 100 {
        let (even, odd): (Vec<&[u32]>, Vec<&[u32]>) = {
            let (mut even, mut odd) = (Vec::new(), Vec::new());
            for (i, seen) in all.iter().enumerate() {
                if i % 2 == 0 {
                    even.push(*seen)
                } else {
                    odd.push(*seen)
                }
            }
            (even, odd)
        };
        let mut held_out_blocks = vec![0usize; lexicon.categories().len()];
        for (train, test, fold_model) in [(&even, &odd, &fold_models[0]), (&odd, &even, &fold_models[1])] {
            let decisions = word_decisions(lexicon, train, fold_model, options);
            for seen in test.iter() {
                let mut hit: Vec<u16> = seen
                    .iter()
                    .filter(|&&e| lexicon.entry(e).severity == Severity::Block && !decisions.contains_key(&e))
                    .map(|&e| lexicon.entry(e).category)
                    .collect();
                hit.sort_unstable();
                hit.dedup();
                for c in hit {
                    held_out_blocks[c as usize] += 1;
                }
            }
        }
        for (c, &n) in held_out_blocks.iter().enumerate() {
            let share = n as f64 / n_lines as f64;
            let category = &lexicon.categories()[c];
            if category.severity == Severity::Block && share >= options.category_review_share {
                categories.push(CategoryProposal {
                    category: category.id.clone(),
                    decision: Severity::Review,
                    reason: format!(
                        "still blocks {:.2}% of held-out reference lines after the words' proposals",
                        share * 100.0
                    ),
                });
            }
        }
    }
    LintReport { reference_lines: n_lines, blocked_lines: blocked, proposals, categories }
}

/// Per-word proposals from the lines of a reference: entry → (drop or new
/// severity, lines found in, reason).
fn word_decisions(
    lexicon: &Lexicon,
    lines: &[&[u32]],
    model: &Bigrams,
    options: &LintOptions,
) -> FxHashMap<u32, (Option<Severity>, usize, String)> {
    let mut lines_of: FxHashMap<u32, usize> = FxHashMap::default();
    for seen in lines {
        for &e in seen.iter() {
            *lines_of.entry(e).or_default() += 1;
        }
    }
    let n_lines = lines.len();
    let mut decisions = FxHashMap::default();
    for (idx, entry) in lexicon.entries().iter().enumerate() {
        if entry.severity == Severity::Derank {
            continue;
        }
        let lines = lines_of.get(&(idx as u32)).copied().unwrap_or(0);
        let share = if n_lines == 0 { 0.0 } else { lines as f64 / n_lines as f64 };
        let single = crate::normalize::normalize_entry(&entry.word)
            .is_some_and(|n| n.text.chars().count() == 1 && !entry.word.contains('+'));
        let expected = if options.expect_at_least > 0.0 && entry.severity == Severity::Block {
            model.expected(&entry.word)
        } else {
            0.0
        };
        let (decision, reason) = if options.drop_single_chars && single {
            (None, format!("a single character (in {lines} of {n_lines} reference lines)"))
        } else if lines > 0 && share >= options.drop_share {
            (None, format!("in {lines} of {n_lines} reference lines ({:.2}%)", share * 100.0))
        } else if lines >= options.review_lines && entry.severity == Severity::Block {
            (Some(Severity::Review), format!("in {lines} of {n_lines} reference lines"))
        } else if options.expect_at_least > 0.0 && expected >= options.expect_at_least {
            (
                Some(Severity::Review),
                format!("looks like ordinary text (expected {expected:.1} times in the reference)"),
            )
        } else {
            continue;
        };
        decisions.insert(idx as u32, (decision, lines, reason));
    }
    decisions
}

/// Character unigram and bigram counts of normalised reference text.
#[derive(Default)]
struct Bigrams {
    unigrams: FxHashMap<char, u32>,
    bigrams: FxHashMap<(char, char), u32>,
    chars: u64,
}

impl Bigrams {
    fn add(&mut self, text: &str) {
        let mut previous = None;
        for c in text.chars() {
            *self.unigrams.entry(c).or_default() += 1;
            if let Some(p) = previous {
                *self.bigrams.entry((p, c)).or_default() += 1;
            }
            previous = Some(c);
            self.chars += 1;
        }
    }

    /// How many times the model expects `word` in text as long as the
    /// reference: chars × P(c1) × Π P(cᵢ | cᵢ₋₁), with a small floor for
    /// pairs never seen (so an unseen pair makes the word unlikely, not
    /// impossible).
    fn expected(&self, word: &str) -> f64 {
        let Some(entry) = crate::normalize::normalize_entry(word) else {
            return 0.0;
        };
        let chars: Vec<char> = entry.text.chars().collect();
        if chars.len() < 2 || chars.iter().any(|c| c.is_ascii_alphanumeric()) || self.chars == 0 {
            return 0.0;
        }
        let n = self.chars as f64;
        let unigram = |c: char| f64::from(self.unigrams.get(&c).copied().unwrap_or(0));
        let mut p = unigram(chars[0]) / n;
        for pair in chars.windows(2) {
            let both = f64::from(self.bigrams.get(&(pair[0], pair[1])).copied().unwrap_or(0));
            p *= (both + 0.01) / (unigram(pair[0]) + 1.0);
        }
        n * p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lexicon::LexiconBuilder;

    #[test]
    fn a_noisy_category_is_demoted_as_a_whole() {
        let mut b = LexiconBuilder::new();
        b.category("names", Severity::Block, "", "");
        b.category("spam", Severity::Block, "", "");
        let names: Vec<String> = (0..400).map(|i| format!("张{}", char::from_u32(0x4e00 + 200 + i).unwrap())).collect();
        b.add_words("names", "n", names.join("\n").as_bytes()).unwrap();
        b.add_words("spam", "s", "刷单返利".as_bytes()).unwrap();
        let lexicon = b.build().unwrap();
        // Every name once: each is unseen by one half of the reference.
        let reference: Vec<String> = names.iter().map(|n| format!("今天{n}来了")).collect();
        let report = lint(&lexicon, reference.iter().map(String::as_str), &LintOptions::default());
        let categories: Vec<&str> = report.categories.iter().map(|c| c.category.as_str()).collect();
        assert_eq!(categories, ["names"]);
        assert!(report.to_tsv().starts_with("# word"));
        assert!(report.to_tsv().contains("\ncategory:names\treview\t"));
    }

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
        // 新闻: 2 lines = 0.2% → dropped; 发展: 1 line → review; 出: single;
        // 刷单: never seen → stays block.
        assert_eq!(got, [("新闻", "drop"), ("发展", "review"), ("出", "drop")]);
        // Nothing is left to block in the held-out halves: no category proposal.
        assert!(report.categories.is_empty());
        assert!(report.to_tsv().contains("新闻\tdrop\tin 2 of 1000 reference lines (0.20%)\n"));
    }
}
