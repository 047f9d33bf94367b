//! Gate 1, the word library: categories of words with a severity each, an
//! allowlist, and one automaton that finds them all in normalised text.
//!
//! A library is built from sources (`LexiconBuilder`): word files in the format
//! of the common Chinese lists (one word per line, one file per category; blank
//! lines, `#` comments and duplicates are tolerated and counted), optionally
//! with a severity after a tab (`刷单<TAB>block`), plus the overrides a lint
//! proposed. Every entry is normalised like the text it is matched against and
//! all of them — the allowlist included — go into one character-wise
//! double-array Aho-Corasick automaton (`daachorse`), so a scan is one pass
//! whatever the size of the library.
//!
//! A match counts only when
//! - its characters repeat at least as often as the entry's (`谢谢` needs two 谢),
//! - an entry that starts (ends) with a Latin letter or a digit starts (ends) at
//!   a word boundary: `ass` is not in `grass`, `qq` is in `加qq`,
//! - no allowlist phrase covers it: `路口交通` cancels `口交` inside it.
//!
//! An entry written `A+B+C` (as in the common lists) is a conjunction: it
//! matches when every part is in the message, in any order.
//!
//! A built `Lexicon` never changes; reloading builds a new one and swaps it in.
//! Its `version` is a hash of its content, so every node that loads the same
//! lists reports the same version.

use std::collections::BTreeMap;
use std::fmt;

use daachorse::{CharwiseDoubleArrayAhoCorasick, CharwiseDoubleArrayAhoCorasickBuilder, MatchKind};
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};

use crate::normalize::{normalize_entry, Normalized};

/// Longest entry accepted, in characters. Real entries are words or short
/// phrases; a longer line is a broken file.
pub const MAX_ENTRY_CHARS: usize = 200;

/// What a match of an entry does to a message, weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Sent, but marked as risky (a warning verdict, a signal for the model).
    Derank,
    /// Held for a human reviewer.
    Review,
    /// Not sent.
    Block,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Derank => "derank",
            Severity::Review => "review",
            Severity::Block => "block",
        }
    }

    pub fn parse(text: &str) -> Option<Severity> {
        match text.trim() {
            "derank" => Some(Severity::Derank),
            "review" => Some(Severity::Review),
            "block" => Some(Severity::Block),
            _ => None,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A category of the library.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Category {
    /// Identifier, e.g. `fraud` or the stem of the file it came from.
    pub id: String,
    /// Severity of its entries unless an entry names its own.
    pub severity: Severity,
    pub en: String,
    pub zh: String,
}

/// One word of the library as the operator wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub word: String,
    pub category: u16,
    pub severity: Severity,
}

/// What a lint (or an operator) decided about one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Override {
    Drop,
    Severity(Severity),
}

/// A line that could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    pub source: String,
    pub line: usize,
    pub reason: String,
}

/// Why a library could not be built. The previous library keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum LexiconError {
    #[error("{}:{}: {}", .0.source, .0.line, .0.reason)]
    Line(LineError),
    #[error("{file} is not valid UTF-8 (first bad byte at offset {offset})")]
    Encoding { file: String, offset: usize },
    #[error("unknown category {0:?}")]
    UnknownCategory(String),
    #[error("the word library is empty")]
    Empty,
    #[error("the automaton could not be built: {0}")]
    Automaton(String),
}

/// What a build saw, for the operator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildStats {
    pub entries: usize,
    pub allow: usize,
    pub blank_lines: usize,
    pub comments: usize,
    pub duplicates: usize,
    /// Entries with nothing matchable left after normalisation (only symbols).
    pub unmatchable: usize,
    /// Entries removed or changed by overrides.
    pub dropped: usize,
    pub changed: usize,
}

/// One line of a word file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line<'a> {
    Blank,
    Comment,
    /// A word, with the severity the line names after a tab.
    Word(&'a str, Option<Severity>),
}

/// Parses one line of a word file (`source` and `line_no` name it in errors):
/// surrounding spaces and a byte-order mark are ignored, `#` starts a comment,
/// `word<TAB>severity` sets the word's own severity.
///
/// # Errors
/// An unknown severity, or an entry longer than `MAX_ENTRY_CHARS`.
pub fn parse_line<'a>(source: &str, line_no: usize, line: &'a str) -> Result<Line<'a>, LexiconError> {
    let line = line.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    if line.is_empty() {
        return Ok(Line::Blank);
    }
    if line.starts_with('#') {
        return Ok(Line::Comment);
    }
    let fail = |reason: String| LexiconError::Line(LineError { source: source.to_owned(), line: line_no, reason });
    let (word, severity) = match line.split_once('\t') {
        Some((word, severity)) => {
            let parsed = Severity::parse(severity)
                .ok_or_else(|| fail(format!("unknown severity {:?}: use block, review or derank", severity.trim())))?;
            (word.trim(), Some(parsed))
        }
        None => (line, None),
    };
    let chars = word.chars().count();
    if chars > MAX_ENTRY_CHARS {
        return Err(fail(format!("an entry of {chars} characters; entries are at most {MAX_ENTRY_CHARS}")));
    }
    Ok(Line::Word(word, severity))
}

/// Collects sources; `build` turns them into a `Lexicon`.
#[derive(Default)]
pub struct LexiconBuilder {
    categories: Vec<Category>,
    entries: Vec<Entry>,
    seen: FxHashMap<(u16, String), usize>,
    allow: Vec<String>,
    overrides: FxHashMap<String, Override>,
    /// Categories whose `block` entries become this severity.
    category_overrides: FxHashMap<String, Severity>,
    /// Sample text for the automaton's profile-guided layout.
    layout_sample: Vec<String>,
    stats: BuildStats,
}

impl LexiconBuilder {
    pub fn new() -> LexiconBuilder {
        LexiconBuilder::default()
    }

    /// Whether a category of that id was declared.
    pub fn has_category(&self, id: &str) -> bool {
        self.categories.iter().any(|c| c.id == id)
    }

    /// Declares a category (again: updates its severity and texts).
    pub fn category(&mut self, id: &str, severity: Severity, en: &str, zh: &str) -> u16 {
        if let Some(i) = self.categories.iter().position(|c| c.id == id) {
            let c = &mut self.categories[i];
            c.severity = severity;
            c.en = en.to_owned();
            c.zh = zh.to_owned();
            return i as u16;
        }
        self.categories.push(Category { id: id.to_owned(), severity, en: en.to_owned(), zh: zh.to_owned() });
        (self.categories.len() - 1) as u16
    }

    /// Adds the words of a file (`source` names it in errors) to a category.
    ///
    /// # Errors
    /// Invalid UTF-8, an unknown category, a line longer than
    /// `MAX_ENTRY_CHARS` characters or with an unknown severity.
    pub fn add_words(&mut self, category: &str, source: &str, bytes: &[u8]) -> Result<usize, LexiconError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| LexiconError::Encoding { file: source.to_owned(), offset: e.valid_up_to() })?;
        let category_idx = self
            .categories
            .iter()
            .position(|c| c.id == category)
            .ok_or_else(|| LexiconError::UnknownCategory(category.to_owned()))? as u16;
        let default = self.categories[category_idx as usize].severity;
        let mut added = 0;
        for (i, line) in text.lines().enumerate() {
            let Some((word, severity)) = self.parse_line(source, i + 1, line)? else {
                continue;
            };
            let key = (category_idx, word.to_owned());
            if self.seen.contains_key(&key) {
                self.stats.duplicates += 1;
                continue;
            }
            self.seen.insert(key, self.entries.len());
            self.entries.push(Entry {
                word: word.to_owned(),
                category: category_idx,
                severity: severity.unwrap_or(default),
            });
            added += 1;
        }
        Ok(added)
    }

    /// Adds allowlist phrases (one per line).
    ///
    /// # Errors
    /// As for `add_words`.
    pub fn add_allow(&mut self, source: &str, bytes: &[u8]) -> Result<usize, LexiconError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| LexiconError::Encoding { file: source.to_owned(), offset: e.valid_up_to() })?;
        let mut added = 0;
        for (i, line) in text.lines().enumerate() {
            if let Some((phrase, _)) = self.parse_line(source, i + 1, line)? {
                self.allow.push(phrase.to_owned());
                added += 1;
            }
        }
        Ok(added)
    }

    /// Re-grades the `block` entries of a category, e.g. from a lint (a word's
    /// own override still wins).
    pub fn override_category(&mut self, category: &str, severity: Severity) {
        self.category_overrides.insert(category.to_owned(), severity);
    }

    /// Text like what will be scanned (ordinary messages): the automaton puts
    /// the states such text visits next to each other, so a scan misses the
    /// cache less. Changes speed only, never what is found.
    pub fn layout_sample(&mut self, lines: Vec<String>) {
        self.layout_sample = lines;
    }

    /// Drops or re-grades words (in every category), e.g. from a lint.
    pub fn override_word(&mut self, word: &str, decision: Override) {
        self.overrides.insert(word.to_owned(), decision);
    }

    fn parse_line<'a>(
        &mut self,
        source: &str,
        line_no: usize,
        line: &'a str,
    ) -> Result<Option<(&'a str, Option<Severity>)>, LexiconError> {
        match parse_line(source, line_no, line)? {
            Line::Blank => {
                self.stats.blank_lines += 1;
                Ok(None)
            }
            Line::Comment => {
                self.stats.comments += 1;
                Ok(None)
            }
            Line::Word(word, severity) => Ok(Some((word, severity))),
        }
    }

    /// Builds the automaton.
    ///
    /// # Errors
    /// No entry at all, or the automaton cannot be built.
    pub fn build(mut self) -> Result<Lexicon, LexiconError> {
        let mut stats = std::mem::take(&mut self.stats);
        let mut entries = Vec::with_capacity(self.entries.len());
        for mut entry in std::mem::take(&mut self.entries) {
            if entry.severity == Severity::Block {
                if let Some(&severity) = self.category_overrides.get(&self.categories[entry.category as usize].id) {
                    entry.severity = severity;
                    stats.changed += 1;
                }
            }
            match self.overrides.get(&entry.word) {
                Some(Override::Drop) => {
                    stats.dropped += 1;
                    continue;
                }
                Some(Override::Severity(s)) if *s != entry.severity => {
                    entry.severity = *s;
                    stats.changed += 1;
                }
                _ => {}
            }
            entries.push(entry);
        }

        // Patterns by normalised text; one pattern may stand for several
        // entries (the same word in two categories, 微信 and 微信信) and for an
        // allow phrase at once.
        let mut by_text: BTreeMap<String, usize> = BTreeMap::new();
        let mut patterns: Vec<Pattern> = Vec::new();
        let mut pattern_of = |text: String, patterns: &mut Vec<Pattern>| -> usize {
            *by_text.entry(text.clone()).or_insert_with(|| {
                let first = text.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
                let last = text.chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric());
                patterns.push(Pattern {
                    text,
                    entries: Vec::new(),
                    parts: Vec::new(),
                    allow: false,
                    word_start: first,
                    word_end: last,
                });
                patterns.len() - 1
            })
        };
        let mut kept = Vec::with_capacity(entries.len());
        let mut conjunctions: Vec<Conjunction> = Vec::new();
        for entry in entries {
            let mut parts: Vec<&str> = entry.word.split('+').filter(|p| !p.trim().is_empty()).collect();
            // `甲+甲` is `甲`: a part named twice is one part.
            let mut seen_parts = std::collections::HashSet::new();
            parts.retain(|p| normalize_entry(p).is_none_or(|n| seen_parts.insert(n.text)));
            if parts.len() > 1 {
                let normalized: Vec<_> = parts.iter().filter_map(|p| normalize_entry(p)).collect();
                if normalized.len() != parts.len() || parts.len() > 64 {
                    stats.unmatchable += 1;
                    continue;
                }
                let conjunction = conjunctions.len() as u32;
                for (i, part) in normalized.into_iter().enumerate() {
                    let p = pattern_of(part.text, &mut patterns);
                    patterns[p].parts.push((conjunction, i as u8, part.runs));
                }
                conjunctions.push(Conjunction { entry: kept.len() as u32, parts: parts.len() as u8 });
                kept.push(entry);
                continue;
            }
            let Some(normalized) = normalize_entry(parts.first().copied().unwrap_or(&entry.word)) else {
                stats.unmatchable += 1;
                continue;
            };
            let p = pattern_of(normalized.text, &mut patterns);
            patterns[p].entries.push(PatternEntry { entry: kept.len() as u32, runs: normalized.runs });
            kept.push(entry);
        }
        let mut allow_count = 0;
        for phrase in &self.allow {
            let Some(normalized) = normalize_entry(phrase) else {
                stats.unmatchable += 1;
                continue;
            };
            let p = pattern_of(normalized.text, &mut patterns);
            patterns[p].allow = true;
            allow_count += 1;
        }
        if kept.is_empty() {
            return Err(LexiconError::Empty);
        }
        stats.entries = kept.len();
        stats.allow = allow_count;

        // The value of a pattern in the automaton says what to do with a match
        // without touching `patterns` in the common case (a match costs a cache
        // miss otherwise, and the big lists produce hundreds of thousands).
        let sample: Vec<String> = self
            .layout_sample
            .iter()
            .map(|line| {
                let mut n = Normalized::new();
                crate::normalize::normalize_into(line, &mut n);
                n.text().to_owned()
            })
            .collect();
        let automaton: CharwiseDoubleArrayAhoCorasick<u32> = CharwiseDoubleArrayAhoCorasickBuilder::new()
            .match_kind(MatchKind::Standard)
            .corpus(&sample)
            .build_with_values(patterns.iter().enumerate().map(|(i, p)| (p.text.as_str(), p.value(i as u32))))
            .map_err(|e| LexiconError::Automaton(e.to_string()))?;

        let version = content_version(&self.categories, &kept, &self.allow);
        Ok(Lexicon { automaton, patterns, conjunctions, entries: kept, categories: self.categories, version, stats })
    }
}

fn content_version(categories: &[Category], entries: &[Entry], allow: &[String]) -> String {
    let mut lines: Vec<String> = entries
        .iter()
        .map(|e| format!("w\t{}\t{}\t{}", categories[e.category as usize].id, e.severity, e.word))
        .chain(allow.iter().map(|a| format!("a\t{a}")))
        .chain(categories.iter().map(|c| format!("c\t{}\t{}", c.id, c.severity)))
        .collect();
    lines.sort_unstable();
    let mut hash = Sha256::new();
    for line in &lines {
        hash.update(line.as_bytes());
        hash.update(b"\n");
    }
    hex::encode(&hash.finalize()[..6])
}

struct Pattern {
    text: String,
    entries: Vec<PatternEntry>,
    /// Conjunction parts this pattern is.
    parts: Vec<PartOf>,
    allow: bool,
    word_start: bool,
    word_end: bool,
}

/// A pattern that is part `part` of conjunction `conjunction`.
type PartOf = (u32, u8, Option<Box<[u16]>>);

const VALUE_WORD_START: u32 = 1 << 31;
const VALUE_WORD_END: u32 = 1 << 30;
/// The rest of the value is a pattern index (look it up), not an entry index.
const VALUE_COMPLEX: u32 = 1 << 29;
const VALUE_INDEX: u32 = VALUE_COMPLEX - 1;

impl Pattern {
    fn value(&self, idx: u32) -> u32 {
        let mut value = 0;
        if self.word_start {
            value |= VALUE_WORD_START;
        }
        if self.word_end {
            value |= VALUE_WORD_END;
        }
        let simple = !self.allow && self.parts.is_empty() && self.entries.len() == 1 && self.entries[0].runs.is_none();
        if simple && self.entries[0].entry <= VALUE_INDEX {
            value | self.entries[0].entry
        } else {
            value | VALUE_COMPLEX | idx
        }
    }
}

struct Conjunction {
    entry: u32,
    parts: u8,
}

struct PatternEntry {
    entry: u32,
    runs: Option<Box<[u16]>>,
}

/// A word of the library found in a text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LexiconHit {
    pub entry: u32,
    /// Byte span in the normalised text.
    pub start: usize,
    pub end: usize,
}

/// Scratch space of scans, reused to avoid allocating.
#[derive(Debug, Default)]
pub struct Scratch {
    /// The automaton's matches: normalised start, end, value.
    raw: Vec<(u32, u32, u32)>,
    hits: Vec<LexiconHit>,
    allow: Vec<(usize, usize)>,
    /// Parts of complete conjunctions: conjunction, part, start, end.
    parts: Vec<(u32, u8, usize, usize)>,
    /// Indices in `raw` of the matches of conjunction parts.
    with_parts: Vec<u32>,
    /// Per conjunction, the parts seen (all zero between scans).
    seen: Vec<u64>,
    /// The conjunctions with bits in `seen`.
    touched: Vec<u32>,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch::default()
    }

    /// The hits of the last scan, in the order found (conjunctions last).
    pub fn hits(&self) -> &[LexiconHit] {
        &self.hits
    }
}

/// A built word library.
pub struct Lexicon {
    automaton: CharwiseDoubleArrayAhoCorasick<u32>,
    patterns: Vec<Pattern>,
    conjunctions: Vec<Conjunction>,
    entries: Vec<Entry>,
    categories: Vec<Category>,
    version: String,
    stats: BuildStats,
}

impl fmt::Debug for Lexicon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lexicon").field("version", &self.version).field("entries", &self.entries.len()).finish()
    }
}

impl Lexicon {
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn stats(&self) -> &BuildStats {
        &self.stats
    }

    pub fn categories(&self) -> &[Category] {
        &self.categories
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn entry(&self, idx: u32) -> &Entry {
        &self.entries[idx as usize]
    }

    pub fn category(&self, idx: u16) -> &Category {
        &self.categories[idx as usize]
    }

    #[doc(hidden)]
    pub fn count_raw(&self, text: &str) -> usize {
        self.automaton.find_overlapping_iter(text).count()
    }

    /// Finds every entry in `text`. The hits are in `scratch.hits()`.
    pub fn scan(&self, text: &Normalized, scratch: &mut Scratch) {
        scratch.raw.clear();
        for m in self.automaton.find_overlapping_iter(text.text()) {
            scratch.raw.push((m.start() as u32, m.end() as u32, m.value()));
        }
        self.process(text, scratch);
    }

    /// Normalises `original` into `normalized` and finds every entry in it,
    /// in one pass (the same hits as `normalize_into` then `scan`).
    pub fn normalize_and_scan(&self, original: &str, normalized: &mut Normalized, scratch: &mut Scratch) {
        scratch.raw.clear();
        let raw = &mut scratch.raw;
        let mut stepper = self.automaton.find_overlapping_stepper();
        crate::normalize::normalize_with(original, normalized, |c| {
            stepper.consume(c);
            for m in stepper.matches() {
                raw.push((m.start() as u32, m.end() as u32, m.value()));
            }
        });
        self.process(normalized, scratch);
    }

    /// Turns the automaton's raw matches into hits.
    fn process(&self, text: &Normalized, scratch: &mut Scratch) {
        scratch.hits.clear();
        scratch.allow.clear();
        scratch.parts.clear();
        scratch.with_parts.clear();
        for i in 0..scratch.raw.len() {
            let (start, end, value) = scratch.raw[i];
            let (start, end) = (start as usize, end as usize);
            if value & (VALUE_WORD_START | VALUE_WORD_END) != 0 && !at_word_boundaries(value, text, start, end) {
                continue;
            }
            if value & VALUE_COMPLEX == 0 {
                scratch.hits.push(LexiconHit { entry: value & VALUE_INDEX, start, end });
                continue;
            }
            let pattern = &self.patterns[(value & VALUE_INDEX) as usize];
            if pattern.allow {
                scratch.allow.push((start, end));
            }
            for pe in &pattern.entries {
                if pe.runs.as_deref().is_none_or(|runs| runs_satisfied(text, start, runs)) {
                    scratch.hits.push(LexiconHit { entry: pe.entry, start, end });
                }
            }
            if !pattern.parts.is_empty() {
                scratch.with_parts.push(i as u32);
            }
        }
        if !scratch.allow.is_empty() {
            // Allow spans by start with the furthest end so far: a hit is
            // covered when a span starting at or before it ends at or after
            // it (O(n log n) for texts that repeat a phrase thousands of times).
            scratch.allow.sort_unstable();
            let mut max_end = 0;
            for span in scratch.allow.iter_mut() {
                max_end = max_end.max(span.1);
                span.1 = max_end;
            }
            let allow = &scratch.allow;
            scratch.hits.retain(|h| !covered(allow, h.start, h.end));
        }
        if !scratch.with_parts.is_empty() {
            self.conjunctions(text, scratch);
        }
    }

    /// Adds the hits of the conjunctions whose parts were all seen. A word
    /// can be a part of hundreds of conjunctions and few of them ever
    /// complete, so the parts seen are first only marked, per conjunction,
    /// and collected (then sorted) for the complete ones alone.
    fn conjunctions(&self, text: &Normalized, scratch: &mut Scratch) {
        if scratch.seen.len() < self.conjunctions.len() {
            scratch.seen.resize(self.conjunctions.len(), 0);
        }
        let Scratch { raw, hits, allow, parts, with_parts, seen, touched } = scratch;
        touched.clear();
        // Each part of each match that counts, as (conjunction, part, start, end).
        let each_part = |on_part: &mut dyn FnMut(u32, u8, usize, usize)| {
            for &i in with_parts.iter() {
                let (start, end, value) = raw[i as usize];
                let (start, end) = (start as usize, end as usize);
                if !allow.is_empty() && covered(allow, start, end) {
                    continue;
                }
                for (conjunction, part, runs) in &self.patterns[(value & VALUE_INDEX) as usize].parts {
                    if runs.as_deref().is_none_or(|runs| runs_satisfied(text, start, runs)) {
                        on_part(*conjunction, *part, start, end);
                    }
                }
            }
        };
        each_part(&mut |conjunction, part, _, _| {
            let bits = &mut seen[conjunction as usize];
            if *bits == 0 {
                touched.push(conjunction);
            }
            *bits |= 1 << part;
        });
        // Complete conjunctions keep all their bits set, the others none.
        let mut complete = false;
        for &conjunction in touched.iter() {
            let bits = &mut seen[conjunction as usize];
            if bits.count_ones() == u32::from(self.conjunctions[conjunction as usize].parts) {
                *bits = u64::MAX;
                complete = true;
            } else {
                *bits = 0;
            }
        }
        if complete {
            each_part(&mut |conjunction, part, start, end| {
                if seen[conjunction as usize] == u64::MAX {
                    parts.push((conjunction, part, start, end));
                }
            });
            // The first occurrence of each part of each conjunction, in order.
            parts.sort_unstable();
            let mut last = None;
            for &(conjunction, part, start, end) in parts.iter() {
                if last != Some((conjunction, part)) {
                    hits.push(LexiconHit { entry: self.conjunctions[conjunction as usize].entry, start, end });
                    last = Some((conjunction, part));
                }
            }
            for &conjunction in touched.iter() {
                seen[conjunction as usize] = 0;
            }
        }
    }
}

/// Whether an allow span covers `start..end` (`allow` sorted by start, each
/// end raised to the furthest end so far).
fn covered(allow: &[(usize, usize)], start: usize, end: usize) -> bool {
    let n = allow.partition_point(|&(s, _)| s <= start);
    n > 0 && allow[n - 1].1 >= end
}

/// An entry that starts (ends) with a Latin letter or digit must start (end)
/// a word of the text: the neighbouring character is no Latin letter or digit,
/// or something was dropped in between. Digits written as Chinese numerals
/// belong to the Chinese text around them, so they neither need nor break a
/// boundary (`2024六合彩` holds 六合彩).
fn at_word_boundaries(value: u32, text: &Normalized, start: usize, end: usize) -> bool {
    // The bytes of a multi-byte character are not ASCII, so a neighbour is a
    // Latin letter or digit exactly when its byte next to the match is one:
    // the character information is only looked up then (in Chinese text,
    // rarely).
    let bytes = text.text().as_bytes();
    if value & VALUE_WORD_START != 0 && start > 0 && bytes[start - 1].is_ascii_alphanumeric() {
        let first = text.info(start);
        if !first.hanzi && !first.gap_before && !first.gap_inside && !text.info(start - 1).hanzi {
            return false;
        }
    }
    if value & VALUE_WORD_END != 0 && bytes.get(end).is_some_and(u8::is_ascii_alphanumeric) {
        let last_at = text.text()[..end].char_indices().next_back().map_or(start, |(i, _)| i);
        let last = text.info(last_at);
        let next = text.info(end);
        if !last.hanzi && !last.gap_inside && !next.gap_before && !next.hanzi {
            return false;
        }
    }
    true
}

fn runs_satisfied(text: &Normalized, start: usize, runs: &[u16]) -> bool {
    let haystack = &text.text()[start..];
    haystack.char_indices().zip(runs).all(|((i, _), &need)| text.info(start + i).run >= need)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::normalize;

    fn library(words: &[(&str, &str)], allow: &[&str]) -> Lexicon {
        let mut b = LexiconBuilder::new();
        for (category, _) in words {
            b.category(category, Severity::Block, "", "");
        }
        for (category, word) in words {
            b.add_words(category, "test", word.as_bytes()).unwrap();
        }
        b.add_allow("allow", allow.join("\n").as_bytes()).unwrap();
        b.build().unwrap()
    }

    fn found(lexicon: &Lexicon, text: &str) -> Vec<String> {
        let normalized = normalize(text);
        let mut scratch = Scratch::new();
        lexicon.scan(&normalized, &mut scratch);
        scratch
            .hits()
            .iter()
            .map(|h| {
                let (s, e) = normalized.original_span(h.start, h.end);
                format!("{}={}", lexicon.entry(h.entry).word, &text[s..e])
            })
            .collect()
    }

    #[test]
    fn matches_through_evasions_but_not_inside_words() {
        let l = library(
            &[
                ("fraud", "刷单"),
                ("porn", "口交"),
                ("porn", "ass"),
                ("ads", "qq"),
                ("ads", "谢谢"),
                ("covid", "肺炎+病毒"),
                ("gambling", "6合彩"),
                ("twice", "甲+甲"),
            ],
            &["路口交通"],
        );
        let cases: &[(&str, &[&str])] = &[
            ("接刷单", &["刷单=刷单"]),
            ("接 刷*單 啦", &["刷单=刷*單"]),
            ("刷刷单单", &["刷单=刷刷单单"]),
            ("路口交通拥堵", &[]),
            ("他说口交", &["口交=口交"]),
            ("grass", &[]),
            ("bad ass", &["ass=ass"]),
            ("a s s", &["ass=a s s"]),
            ("аss", &["ass=аss"]),
            ("as", &[]),
            ("mass", &[]),
            ("加qq123", &[]),
            ("加qq 123", &["qq=qq"]),
            ("加ＱＱ号", &["qq=ＱＱ"]),
            ("谢谢你", &["谢谢=谢谢"]),
            ("感谢你", &[]),
            ("肺炎", &[]),
            ("一个甲字", &["甲+甲=甲"]),
            // Chinese numerals are Chinese text: no word boundary needed or broken.
            ("2024六合彩开奖", &["6合彩=六合彩"]),
            ("x六合彩", &["6合彩=六合彩"]),
            ("20246合彩", &[]),
            ("病毒性肺炎", &["肺炎+病毒=肺炎", "肺炎+病毒=病毒"]),
        ];
        for (text, expected) in cases {
            assert_eq!(&found(&l, text), expected, "in {text:?}");
        }
    }

    #[test]
    fn conjunctions_sharing_parts() {
        // 股票 is a part of three conjunctions; only those whose other parts
        // are in the text match, each part by its first occurrence.
        let l = library(
            &[("finance", "股票+内幕"), ("finance", "股票+稳赚\n股票+翻倍+内幕"), ("finance", "翻倍+稳赚")],
            &["内幕消息公开"],
        );
        let cases: &[(&str, &[&str])] = &[
            ("股票内幕", &["股票+内幕=股票", "股票+内幕=内幕"]),
            ("股票 稳赚 股票", &["股票+稳赚=股票", "股票+稳赚=稳赚"]),
            (
                "稳赚股票翻倍有内幕",
                &[
                    "股票+内幕=股票",
                    "股票+内幕=内幕",
                    "股票+稳赚=股票",
                    "股票+稳赚=稳赚",
                    "股票+翻倍+内幕=股票",
                    "股票+翻倍+内幕=翻倍",
                    "股票+翻倍+内幕=内幕",
                    "翻倍+稳赚=翻倍",
                    "翻倍+稳赚=稳赚",
                ],
            ),
            // The allowlist cancels the part it covers, so nothing completes.
            ("股票的内幕消息公开", &[]),
            ("股票翻倍", &[]),
        ];
        for (text, expected) in cases {
            assert_eq!(&found(&l, text), expected, "in {text:?}");
        }
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let mut b = LexiconBuilder::new();
        b.category("c", Severity::Block, "", "");
        let long = "长".repeat(10_000);
        let err = b.add_words("c", "c.txt", format!("a\n\n{long}\n").as_bytes()).unwrap_err();
        assert_eq!(err.to_string(), "c.txt:3: an entry of 10000 characters; entries are at most 200");
        let err = b.add_words("c", "c.txt", b"ok\n\xff\xfe").unwrap_err();
        assert_eq!(err.to_string(), "c.txt is not valid UTF-8 (first bad byte at offset 3)");
        let err = b.add_words("c", "c.txt", "x\tmaybe".as_bytes()).unwrap_err();
        assert!(err.to_string().contains("unknown severity"), "{err}");
        assert!(matches!(b.add_words("nope", "n", b"x"), Err(LexiconError::UnknownCategory(_))));
        assert!(matches!(LexiconBuilder::new().build(), Err(LexiconError::Empty)));
    }

    #[test]
    fn blank_lines_duplicates_and_overrides_are_counted() {
        let mut b = LexiconBuilder::new();
        b.category("c", Severity::Block, "", "");
        b.add_words("c", "c.txt", "# list\n甲乙\n\n甲乙\n丙丁\t review\n出\n".as_bytes()).unwrap();
        b.override_word("出", Override::Drop);
        let l = b.build().unwrap();
        let s = l.stats();
        assert_eq!((s.entries, s.blank_lines, s.duplicates, s.comments, s.dropped), (2, 1, 1, 1, 1));
        assert_eq!(l.entries()[1].severity, Severity::Review);
    }

    #[test]
    fn the_version_follows_the_content() {
        let a = library(&[("c", "甲乙\n丙丁")], &[]);
        let b = library(&[("c", "丙丁\n甲乙")], &[]);
        let c = library(&[("c", "丙丁\n甲乙\n戊")], &[]);
        assert_eq!(a.version(), b.version());
        assert_ne!(a.version(), c.version());
    }
}
