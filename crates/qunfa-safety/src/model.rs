//! Gate 3, the risk model: logistic regression over hashed character n-grams of
//! the normalised text plus a few numeric signals from the other gates.
//!
//! The word library and the rules catch what someone has already written down.
//! Spam that rephrases itself (`兼职日结` → `日结兼职`, new filler around the same
//! offer) slips past them, but it still shares short character sequences with
//! earlier spam. A linear model over character n-grams learns those sequences
//! from labelled examples (review decisions, complaint reports) and gives every
//! text a probability of being spam, cheaply enough to run on every message.
//!
//! # Features
//!
//! * **n-grams**: every character unigram and bigram of the normalised text
//!   (and trigram, if trained with `max_ngram: 3`; n-grams made only of white
//!   space are skipped) is hashed into one of `2^buckets_log2` buckets. A
//!   bucket counts once however often it occurs (presence, not frequency) and
//!   the present buckets share a total weight of one (each gets `1/√k` for `k`
//!   present buckets, a unit L2 norm), so a long text is not scored higher just
//!   for being long. The hash is fixed and platform independent (see
//!   `for_each_ngram`); it is part of the file format.
//! * **signals** ([`Signals`]): links, contacts, lexicon hits, rule hits and
//!   category hits as `ln(1 + v)`, the number of digits as `ln(1 + v)`, the
//!   share of digits among the characters, and the length as `ln(1 + chars) / 8`.
//!
//! # Training
//!
//! [`Model::train`] drops exact duplicates, splits the examples by a hash of
//! their text (so the same text never lands in both parts and the held-out
//! evaluation is honest), and fits the weights with AdaGrad and L2 over a few
//! epochs, shuffling with a seeded SplitMix64: the same input and seed give the
//! same model, byte for byte. The decision threshold is the one that maximises
//! F1 on the training part (placed midway between the two neighbouring training
//! scores); precision, recall, F1, accuracy and AUC are then measured on the
//! held-out part with that threshold.
//!
//! # File format (version 1)
//!
//! ```text
//! b"QFRM"  u16 format version  u8 buckets_log2  u8 max_ngram  u64 total length
//! u16 signal count  u16 reserved (0)  f32 bias  f32 threshold
//! f32 × 2^buckets_log2 n-gram weights  f32 × signal count
//! u32 header length  header (JSON: options, evaluation, feature description)
//! SHA-256 of everything above (32 bytes)
//! ```
//!
//! All integers and floats are little endian. The magic, the version, the total
//! length at offset 8 and the SHA-256 trailer keep their place in later versions.
//! [`Model::version`] is the first 12 hex digits of the SHA-256 of the file.
//!
//! Nothing here does I/O or reads a clock: callers read and write the files.

use std::cell::RefCell;
use std::fmt;

use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The file magic.
pub const MAGIC: &[u8; 4] = b"QFRM";
/// The file format version this build reads and writes.
pub const FORMAT_VERSION: u16 = 1;
/// Training needs at least this many distinct examples.
pub const MIN_EXAMPLES: usize = 10;
/// Smallest and largest accepted `buckets_log2`.
pub const BUCKETS_LOG2_RANGE: std::ops::RangeInclusive<u8> = 8..=24;
/// Names of the signal features, in the order of their weights.
pub const SIGNAL_NAMES: [&str; NUM_SIGNALS] =
    ["links", "contacts", "lexicon_hits", "rule_hits", "category_hits", "digits", "digit_share", "length"];
/// Number of signal features (some [`Signals`] fields give more than one).
pub const NUM_SIGNALS: usize = 8;

/// Bytes up to and including the total length: magic, version, buckets_log2,
/// max_ngram, total length. Stable across format versions.
const PREFIX: usize = 4 + 2 + 1 + 1 + 8;
/// Bytes before the n-gram weights: the prefix, signal count, reserved, bias,
/// threshold.
const FIXED_HEAD: usize = PREFIX + 2 + 2 + 4 + 4;
const TRAILER: usize = 32;
/// Describes the feature extraction in the JSON header (informative).
const FEATURE_SCHEME: &str = "char-ngrams/presence/unit-l2/charhash-rotxor-v1";

/// Numeric signals computed by the other gates for one text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Signals {
    /// Links in the text.
    pub links: u32,
    /// Contacts: phone numbers, QQ and WeChat ids.
    pub contacts: u32,
    /// Word-library hits.
    pub lexicon_hits: u32,
    /// Rule hits.
    pub rule_hits: u32,
    /// Hits of de-ranking categories (finance, medical, political…).
    pub category_hits: u32,
    /// Digits in the text.
    pub digits: u32,
    /// Characters in the text.
    pub chars: u32,
}

impl Signals {
    /// The signal features in the order of [`SIGNAL_NAMES`].
    fn features(&self) -> [f32; NUM_SIGNALS] {
        let l = |v: u32| (v as f32).ln_1p();
        let share = if self.chars == 0 { 0.0 } else { (self.digits as f32 / self.chars as f32).min(1.0) };
        [
            l(self.links),
            l(self.contacts),
            l(self.lexicon_hits),
            l(self.rule_hits),
            l(self.category_hits),
            l(self.digits),
            share,
            l(self.chars) / 8.0,
        ]
    }
}

/// One labelled text, as read by [`parse_jsonl`] (not yet normalised).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// The text as it was sent or submitted.
    pub text: String,
    /// `true` for spam (label `spam`, `block`, `1`, `true`).
    pub spam: bool,
}

/// What can go wrong reading labelled data, training, or loading a model file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A line of labelled JSONL is wrong.
    #[error("line {line}: {message}")]
    Jsonl {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The labelled input holds no example at all.
    #[error("no labelled examples in the input")]
    NoExamples,
    /// Too few distinct examples to train and evaluate.
    #[error("too few examples to train: {got} distinct examples, at least {need} needed")]
    TooFewExamples {
        /// Distinct examples given.
        got: usize,
        /// Minimum needed.
        need: usize,
    },
    /// One part of the split holds only one class.
    #[error(
        "the {part} part has {spam} spam and {ham} ham examples; both classes are needed \
         (add examples of the missing class or change the holdout share or seed)"
    )]
    OneClass {
        /// `"training"` or `"held-out"`.
        part: &'static str,
        /// Spam examples in that part.
        spam: usize,
        /// Ham examples in that part.
        ham: usize,
    },
    /// A training option is out of range.
    #[error("bad training option: {0}")]
    BadOptions(String),
    /// The file is not a risk model.
    #[error("not a qunfa risk model file (wrong magic bytes)")]
    WrongMagic,
    /// The file is shorter than it says it is.
    #[error("risk model file is truncated: {actual} bytes, expected {expected}")]
    Truncated {
        /// Length the file should have (0 if it is too short to tell).
        expected: u64,
        /// Length it has.
        actual: u64,
    },
    /// The file is longer than it says it is.
    #[error("risk model file has {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// Bytes beyond the stated length.
        extra: u64,
    },
    /// The SHA-256 trailer does not match the content.
    #[error("risk model file is corrupted (SHA-256 checksum mismatch)")]
    Checksum,
    /// The file is of a format version this build cannot read.
    #[error("risk model file has format version {found}; this build reads version {supported}")]
    UnsupportedVersion {
        /// Version in the file.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// The checksum matches but the content is inconsistent.
    #[error("malformed risk model file: {0}")]
    Malformed(String),
}

/// Parses labelled JSONL: one object per line, `{"text": "...", "label": "spam"}`.
///
/// Accepted labels: `"spam"`/`"ham"`, `"block"`/`"allow"` (review decisions),
/// `1`/`0`, `true`/`false` (also as strings; case and surrounding spaces do not
/// matter). Other fields are ignored. Blank lines are skipped; a byte-order mark
/// at the start is ignored.
///
/// # Errors
///
/// [`ModelError::Jsonl`] with the 1-based line number for a line that is not a
/// JSON object, lacks a string `"text"` or a `"label"`, or has an unknown label;
/// [`ModelError::NoExamples`] if there is no example at all.
pub fn parse_jsonl(input: &str) -> Result<Vec<Example>, ModelError> {
    let input = input.strip_prefix('\u{feff}').unwrap_or(input);
    let mut out = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line_no = i + 1;
        let err = |message: String| ModelError::Jsonl { line: line_no, message };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| err(format!("invalid JSON: {e}")))?;
        let serde_json::Value::Object(obj) = value else {
            return Err(err("expected a JSON object".to_owned()));
        };
        let text = match obj.get("text") {
            None => return Err(err("missing \"text\"".to_owned())),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(_) => return Err(err("\"text\" must be a string".to_owned())),
        };
        let spam = match obj.get("label") {
            None => return Err(err("missing \"label\"".to_owned())),
            Some(label) => parse_label(label).ok_or_else(|| {
                err(format!(
                    "unknown label {label} (expected \"spam\"/\"ham\", \"block\"/\"allow\", 1/0 or true/false)"
                ))
            })?,
        };
        out.push(Example { text, spam });
    }
    if out.is_empty() {
        return Err(ModelError::NoExamples);
    }
    Ok(out)
}

fn parse_label(label: &serde_json::Value) -> Option<bool> {
    match label {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::Number(n) => {
            let v = n.as_f64()?;
            if v == 1.0 {
                Some(true)
            } else if v == 0.0 {
                Some(false)
            } else {
                None
            }
        }
        serde_json::Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "spam" | "block" | "1" | "true" => Some(true),
            "ham" | "allow" | "0" | "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Options of [`Model::train`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainOptions {
    /// Passes over the training part (1..=1000).
    pub epochs: u32,
    /// AdaGrad base learning rate (> 0).
    pub learning_rate: f32,
    /// L2 regularisation strength (≥ 0), applied to the weights an example touches.
    pub l2: f32,
    /// Share of the distinct texts held out for evaluation (strictly between 0 and 1).
    pub holdout: f32,
    /// Seed of the hold-out split and of the shuffling.
    pub seed: u64,
    /// The n-gram table has `2^buckets_log2` weights (8..=24; 16 is 256 KiB).
    pub buckets_log2: u8,
    /// Longest n-gram: 1, 2 (default: unigrams and bigrams) or 3 (trigrams
    /// too, about 1.5 times the scoring time).
    pub max_ngram: u8,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 12,
            learning_rate: 0.2,
            l2: 1e-6,
            holdout: 0.2,
            seed: 0x5146_524d,
            buckets_log2: 16,
            max_ngram: 2,
        }
    }
}

impl TrainOptions {
    fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::BadOptions(m));
        if !(1..=1000).contains(&self.epochs) {
            return bad(format!("epochs must be between 1 and 1000, not {}", self.epochs));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(format!("learning_rate must be a positive number, not {}", self.learning_rate));
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return bad(format!("l2 must be zero or a positive number, not {}", self.l2));
        }
        if !(self.holdout > 0.0 && self.holdout < 1.0) {
            return bad(format!("holdout must be strictly between 0 and 1, not {}", self.holdout));
        }
        if !BUCKETS_LOG2_RANGE.contains(&self.buckets_log2) {
            return bad(format!(
                "buckets_log2 must be between {} and {}, not {}",
                BUCKETS_LOG2_RANGE.start(),
                BUCKETS_LOG2_RANGE.end(),
                self.buckets_log2
            ));
        }
        if !(1..=3).contains(&self.max_ngram) {
            return bad(format!("max_ngram must be 1, 2 or 3, not {}", self.max_ngram));
        }
        Ok(())
    }
}

/// How the model did on the held-out part (counts on the training part too).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Distinct examples trained on.
    pub n_train: usize,
    /// Distinct examples held out.
    pub n_test: usize,
    /// Exact duplicates (same text and label) dropped before the split.
    pub duplicates_dropped: usize,
    /// Decision threshold: a score at or above it counts as spam. Chosen to
    /// maximise F1 on the training part.
    pub threshold: f32,
    /// Held-out spam scored at or above the threshold.
    pub true_positives: usize,
    /// Held-out ham scored at or above the threshold.
    pub false_positives: usize,
    /// Held-out ham scored below the threshold.
    pub true_negatives: usize,
    /// Held-out spam scored below the threshold.
    pub false_negatives: usize,
    /// TP / (TP + FP); 0 when nothing is flagged.
    pub precision: f64,
    /// TP / (TP + FN).
    pub recall: f64,
    /// Harmonic mean of precision and recall; 0 when both are 0.
    pub f1: f64,
    /// (TP + TN) / n_test.
    pub accuracy: f64,
    /// Area under the ROC curve of the held-out scores (ties count half).
    pub auc: f64,
}

/// The JSON header of the file.
#[derive(Serialize, Deserialize)]
struct Header {
    format: u16,
    features: String,
    signals: Vec<String>,
    options: TrainOptions,
    evaluation: Evaluation,
}

/// A trained risk model. Immutable; share it behind an `Arc`.
#[derive(Clone)]
pub struct Model {
    buckets_log2: u8,
    max_ngram: u8,
    bias: f32,
    threshold: f32,
    weights: Vec<f32>,
    signal_weights: [f32; NUM_SIGNALS],
    options: TrainOptions,
    evaluation: Evaluation,
    /// The JSON header exactly as written, so that a loaded model writes the
    /// same bytes (and has the same version) as the one that was saved.
    header: Vec<u8>,
    version: String,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("version", &self.version)
            .field("buckets_log2", &self.buckets_log2)
            .field("max_ngram", &self.max_ngram)
            .field("bias", &self.bias)
            .field("threshold", &self.threshold)
            .field("signal_weights", &self.signal_weights)
            .field("evaluation", &self.evaluation)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------
// Feature extraction
// ---------------------------------------------------------------------------

/// The hash of one character: multiply, xorshift, multiply.
#[inline(always)]
fn char_hash(c: char) -> u64 {
    let mut x = (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 32;
    x.wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

/// The hash of a bigram from the hashes of its characters.
#[inline(always)]
fn bigram_hash(a: u64, b: u64) -> u64 {
    (a.rotate_left(21) ^ b).wrapping_mul(0xA076_1D64_78BD_642F)
}

/// The hash of a trigram from the hashes of its characters.
#[inline(always)]
fn trigram_hash(a: u64, b: u64, c: u64) -> u64 {
    (a.rotate_left(42) ^ b.rotate_left(21) ^ c).wrapping_mul(0xE703_7ED1_A0B4_28DB)
}

/// `char::is_whitespace`, with a shortcut for everything above U+3000 (the
/// last white-space code point), that is for CJK.
#[inline(always)]
fn is_space(c: char) -> bool {
    (c as u32) <= 0x3000 && c.is_whitespace()
}

/// Calls `f(hash, chars, n)` for every n-gram of `text` with `n <= N` that is
/// not whitespace only, in text order (at each character: the unigram, the
/// bigram and the trigram ending there); `chars[..n]` are its characters.
///
/// The hash is fixed and platform independent (part of the file format): each
/// code point goes through multiply–xorshift–multiply, a bigram or trigram
/// combines the hashes of its characters by rotation, xor and one more
/// multiply, and the bucket is the top `buckets_log2` bits. Each character is
/// hashed once, whatever `N`.
#[inline(always)]
fn for_each_ngram<const N: usize>(text: &str, mut f: impl FnMut(u64, [char; 3], usize)) {
    let mut it = text.chars();
    let Some(a) = it.next() else { return };
    let (a_ws, ha) = (is_space(a), char_hash(a));
    if !a_ws {
        f(ha, [a, a, a], 1);
    }
    if N < 2 {
        for c in it {
            if !is_space(c) {
                f(char_hash(c), [c, c, c], 1);
            }
        }
        return;
    }
    let Some(b) = it.next() else { return };
    let (b_ws, hb) = (is_space(b), char_hash(b));
    if !b_ws {
        f(hb, [b, b, b], 1);
    }
    if !(a_ws && b_ws) {
        f(bigram_hash(ha, hb), [a, b, b], 2);
    }
    // p1 is the previous character, p2 the one before; `*_ws` whether they
    // are white space, `h*` their hashes.
    let (mut p2, mut p1, mut p2_ws, mut p1_ws, mut h2, mut h1) = (a, b, a_ws, b_ws, ha, hb);
    for c in it {
        let (ws, h) = (is_space(c), char_hash(c));
        if !ws {
            f(h, [c, c, c], 1);
            f(bigram_hash(h1, h), [p1, c, c], 2);
            if N >= 3 {
                f(trigram_hash(h2, h1, h), [p2, p1, c], 3);
            }
        } else {
            if !p1_ws {
                f(bigram_hash(h1, h), [p1, c, c], 2);
            }
            if N >= 3 && !(p1_ws && p2_ws) {
                f(trigram_hash(h2, h1, h), [p2, p1, c], 3);
            }
        }
        (p2, p2_ws, h2, p1, p1_ws, h1) = (p1, p1_ws, h1, c, ws, h);
    }
}

/// Calls `f(bucket, chars, n)` once per distinct bucket of the n-grams of
/// `text` (in order of first occurrence, with the first n-gram that hit it) and
/// returns the number of distinct buckets. `seen` is a zeroed bitset memory,
/// grown as needed and left zeroed.
#[inline(always)]
fn for_each_bucket<const N: usize>(
    seen: &mut Vec<u64>,
    buckets_log2: u8,
    text: &str,
    mut f: impl FnMut(u32, [char; 3], usize),
) -> usize {
    let words = 1usize << (buckets_log2.max(6) - 6);
    if seen.len() < words {
        seen.resize(words, 0);
    }
    // `words` is a power of two: masking the index lets the compiler drop the
    // bounds check (it changes nothing, the bucket is below 2^buckets_log2).
    let mask = words - 1;
    let seen = &mut seen[..=mask];
    let shift = 64 - u32::from(buckets_log2);
    let mut k = 0usize;
    for_each_ngram::<N>(text, |key, chars, n| {
        let b = (key >> shift) as u32;
        let word = &mut seen[(b >> 6) as usize & mask];
        let bit = 1u64 << (b & 63);
        if *word & bit == 0 {
            *word |= bit;
            k += 1;
            f(b, chars, n);
        }
    });
    // Clear what was set: by walking the text again if it is short compared
    // with the bitset, else all at once.
    if text.len().saturating_mul(16) < words {
        for_each_ngram::<N>(text, |key, _, _| seen[(key >> (shift + 6)) as usize & mask] = 0);
    } else {
        seen.fill(0);
    }
    k
}

/// Runs `f` with the thread's bucket bitset (or a fresh one if it is busy or gone).
#[inline]
fn with_seen<R>(f: impl FnOnce(&mut Vec<u64>) -> R) -> R {
    thread_local! {
        static SEEN: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    }
    let mut f = Some(f);
    let done = SEEN.try_with(|s| s.try_borrow_mut().ok().and_then(|mut s| f.take().map(|f| f(&mut s)))).ok().flatten();
    match (done, f) {
        (Some(r), _) => r,
        (None, Some(f)) => f(&mut Vec::new()),
        (None, None) => unreachable!("`f` ran but returned no result"),
    }
}

/// [`for_each_bucket`] for n-grams up to `max_ngram` (1, 2 or 3).
fn buckets(max_ngram: u8, buckets_log2: u8, text: &str, f: impl FnMut(u32, [char; 3], usize)) -> usize {
    with_seen(|seen| match max_ngram {
        1 => for_each_bucket::<1>(seen, buckets_log2, text, f),
        2 => for_each_bucket::<2>(seen, buckets_log2, text, f),
        _ => for_each_bucket::<3>(seen, buckets_log2, text, f),
    })
}

/// The hot loop of [`Model::score`]: the sum of the weights of the distinct
/// buckets of `text` (in the order of [`Sum4`]) and their number. The sum is a
/// local here so that it stays in registers.
fn weight_sum<const N: usize>(seen: &mut Vec<u64>, buckets_log2: u8, text: &str, weights: &[f32]) -> (f32, usize) {
    let mut sum = Sum4::default();
    // A power of two long, see `for_each_bucket`.
    let mask = weights.len().wrapping_sub(1);
    let weights = &weights[..=mask];
    let k = for_each_bucket::<N>(seen, buckets_log2, text, |b, _, _| sum.add(weights[b as usize & mask]));
    (sum.total(), k)
}

/// A sum of f32 in four interleaved lanes (element `i` goes to lane `i % 4`):
/// four independent addition chains instead of one, and the same result
/// whether the elements come from [`Model::score`] or from stored features.
#[derive(Clone, Copy, Default)]
struct Sum4(f32, f32, f32, f32);

impl Sum4 {
    #[inline(always)]
    fn add(&mut self, x: f32) {
        let t = self.0 + x;
        (self.0, self.1, self.2) = (self.1, self.2, self.3);
        self.3 = t;
    }

    #[inline(always)]
    fn total(self) -> f32 {
        (self.0 + self.1) + (self.2 + self.3)
    }
}

/// The features of one training example.
struct Features {
    buckets: Vec<u32>,
    scale: f32,
    signals: [f32; NUM_SIGNALS],
    spam: bool,
}

fn extract(max_ngram: u8, buckets_log2: u8, text: &str, signals: &Signals, spam: bool) -> Features {
    let mut list = Vec::new();
    let k = buckets(max_ngram, buckets_log2, text, |b, _, _| list.push(b));
    Features { buckets: list, scale: ngram_scale(k), signals: signals.features(), spam }
}

#[inline]
fn ngram_scale(k: usize) -> f32 {
    if k == 0 {
        0.0
    } else {
        1.0 / (k as f32).sqrt()
    }
}

#[inline]
fn sigmoid32(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

#[inline]
fn sigmoid64(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

// ---------------------------------------------------------------------------
// Deterministic pseudo-randomness
// ---------------------------------------------------------------------------

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a over the bytes of `text`, mixed with `seed`: decides the split.
fn text_hash(text: &str, seed: u64) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in text.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01B3);
    }
    let mut state = h ^ seed.rotate_left(17);
    splitmix64(&mut state)
}

// ---------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------

impl Model {
    /// Trains a model on `(normalised text, signals, is_spam)` examples.
    ///
    /// Exact duplicates (same text and label) are dropped; the rest are split
    /// into a training and a held-out part by a seeded hash of the text, so
    /// equal texts always land in the same part. Deterministic for a given
    /// input and seed (on one platform: `exp` comes from the platform's libm).
    ///
    /// # Errors
    ///
    /// [`ModelError::BadOptions`] for out-of-range options,
    /// [`ModelError::TooFewExamples`] for fewer than [`MIN_EXAMPLES`] distinct
    /// examples, [`ModelError::OneClass`] when the training or the held-out
    /// part lacks spam or ham.
    pub fn train(
        examples: &[(String, Signals, bool)],
        options: &TrainOptions,
    ) -> Result<(Model, Evaluation), ModelError> {
        options.validate()?;
        let log2 = options.buckets_log2;

        // Drop exact duplicates, split by text hash.
        let mut distinct: FxHashSet<(&str, bool)> = FxHashSet::default();
        let mut train = Vec::new();
        let mut test = Vec::new();
        let mut duplicates = 0usize;
        let cut = (f64::from(options.holdout) * (u64::MAX as f64)) as u64;
        for (text, signals, spam) in examples {
            if !distinct.insert((text.as_str(), *spam)) {
                duplicates += 1;
                continue;
            }
            let features = extract(options.max_ngram, log2, text, signals, *spam);
            if text_hash(text, options.seed) < cut {
                test.push(features);
            } else {
                train.push(features);
            }
        }
        let total = train.len() + test.len();
        if total < MIN_EXAMPLES {
            return Err(ModelError::TooFewExamples { got: total, need: MIN_EXAMPLES });
        }
        for (part, set) in [("training", &train), ("held-out", &test)] {
            let spam = set.iter().filter(|f| f.spam).count();
            let ham = set.len() - spam;
            if spam == 0 || ham == 0 {
                return Err(ModelError::OneClass { part, spam, ham });
            }
        }

        // AdaGrad with L2 on the touched weights.
        let n = 1usize << log2;
        let lr = f64::from(options.learning_rate);
        let l2 = f64::from(options.l2);
        const EPS: f64 = 1e-8;
        let mut w = vec![0f64; n];
        let mut g = vec![0f64; n];
        let mut sw = [0f64; NUM_SIGNALS];
        let mut sg = [0f64; NUM_SIGNALS];
        let (mut b, mut bg) = (0f64, 0f64);
        let mut order: Vec<usize> = (0..train.len()).collect();
        let mut rng = options.seed ^ 0x7172_6d5f_7368_7566;
        for _ in 0..options.epochs {
            for i in (1..order.len()).rev() {
                let j = (splitmix64(&mut rng) % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
            for &i in &order {
                let ex = &train[i];
                let scale = f64::from(ex.scale);
                let mut z = b;
                for &k in &ex.buckets {
                    z += w[k as usize] * scale;
                }
                for (s, x) in sw.iter().zip(ex.signals) {
                    z += s * f64::from(x);
                }
                let err = sigmoid64(z) - if ex.spam { 1.0 } else { 0.0 };
                for &k in &ex.buckets {
                    let k = k as usize;
                    let grad = err * scale + l2 * w[k];
                    g[k] += grad * grad;
                    w[k] -= lr * grad / (g[k].sqrt() + EPS);
                }
                for ((s, acc), x) in sw.iter_mut().zip(sg.iter_mut()).zip(ex.signals) {
                    let grad = err * f64::from(x) + l2 * *s;
                    if grad != 0.0 {
                        *acc += grad * grad;
                        *s -= lr * grad / (acc.sqrt() + EPS);
                    }
                }
                bg += err * err;
                b -= lr * err / (bg.sqrt() + EPS);
            }
        }

        let mut model = Model {
            buckets_log2: log2,
            max_ngram: options.max_ngram,
            bias: b as f32,
            threshold: 0.5,
            weights: w.iter().map(|&v| v as f32).collect(),
            signal_weights: sw.map(|v| v as f32),
            options: options.clone(),
            evaluation: Evaluation::default(),
            header: Vec::new(),
            version: String::new(),
        };

        // Threshold: best F1 on the training part.
        let train_scores: Vec<(f32, bool)> = train.iter().map(|f| (model.score_features(f), f.spam)).collect();
        let threshold = best_f1_threshold(train_scores);

        // Held-out evaluation.
        let test_scores: Vec<(f32, bool)> = test.iter().map(|f| (model.score_features(f), f.spam)).collect();
        let evaluation = evaluate(&test_scores, threshold, train.len(), duplicates);

        model.threshold = threshold;
        model.evaluation = evaluation.clone();
        let header = Header {
            format: FORMAT_VERSION,
            features: FEATURE_SCHEME.to_owned(),
            signals: SIGNAL_NAMES.iter().map(|s| (*s).to_owned()).collect(),
            options: options.clone(),
            evaluation: evaluation.clone(),
        };
        model.header = serde_json::to_vec(&header).map_err(|e| ModelError::Malformed(e.to_string()))?;
        model.version = version_of(&model.to_bytes());
        Ok((model, evaluation))
    }

    /// Scores precomputed features exactly like [`Model::score`] does.
    fn score_features(&self, f: &Features) -> f32 {
        let mut sum = Sum4::default();
        for &b in &f.buckets {
            sum.add(self.weights[b as usize]);
        }
        self.finish(sum.total(), f.scale, &f.signals)
    }

    #[inline]
    fn finish(&self, ngram_sum: f32, scale: f32, signals: &[f32; NUM_SIGNALS]) -> f32 {
        let mut z = self.bias + ngram_sum * scale;
        for (w, x) in self.signal_weights.iter().zip(signals) {
            z += w * x;
        }
        sigmoid32(z)
    }

    /// Probability (0..=1) that the normalised text is spam.
    ///
    /// Allocation-free after the first call on a thread (it reuses a per-thread
    /// bitset of `2^buckets_log2` bits).
    pub fn score(&self, normalised: &str, signals: &Signals) -> f32 {
        let (log2, weights) = (self.buckets_log2, &self.weights[..]);
        let (sum, k) = with_seen(|seen| match self.max_ngram {
            1 => weight_sum::<1>(seen, log2, normalised, weights),
            2 => weight_sum::<2>(seen, log2, normalised, weights),
            _ => weight_sum::<3>(seen, log2, normalised, weights),
        });
        self.finish(sum, ngram_scale(k), &signals.features())
    }

    /// Whether the score reaches the model's threshold.
    pub fn is_spam(&self, normalised: &str, signals: &Signals) -> bool {
        self.score(normalised, signals) >= self.threshold
    }

    /// The n-grams and signals that pushed the score up most: up to `n` entries
    /// with a positive contribution to the log-odds, largest first, each as a
    /// description (the n-gram itself, such as `刷单`, or a signal name from
    /// [`SIGNAL_NAMES`]) and its contribution (weight × feature value).
    ///
    /// The bias is not listed. When two n-grams of the text share a bucket the
    /// first one is named. Slower than [`Model::score`]; meant for verdicts
    /// that are shown to someone.
    pub fn explain(&self, normalised: &str, signals: &Signals, n: usize) -> Vec<(String, f32)> {
        if n == 0 {
            return Vec::new();
        }
        enum Why {
            Gram([char; 3], usize),
            Signal(&'static str),
        }
        let mut found: Vec<(f32, Why)> = Vec::new();
        let k = buckets(self.max_ngram, self.buckets_log2, normalised, |b, chars, len| {
            let w = self.weights[b as usize];
            if w > 0.0 {
                found.push((w, Why::Gram(chars, len)));
            }
        });
        let scale = ngram_scale(k);
        for w in &mut found {
            w.0 *= scale;
        }
        for ((w, x), name) in self.signal_weights.iter().zip(signals.features()).zip(SIGNAL_NAMES) {
            if w * x > 0.0 {
                found.push((w * x, Why::Signal(name)));
            }
        }
        // Stable sort: equal contributions keep text order, n-grams first.
        found.sort_by(|a, b| b.0.total_cmp(&a.0));
        found.truncate(n);
        found
            .into_iter()
            .map(|(c, why)| match why {
                Why::Gram(chars, len) => (chars[..len].iter().collect(), c),
                Why::Signal(name) => (name.to_owned(), c),
            })
            .collect()
    }

    /// The decision threshold (also in [`Evaluation::threshold`]).
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// How the model did on its held-out data.
    pub fn evaluation(&self) -> &Evaluation {
        &self.evaluation
    }

    /// The options it was trained with.
    pub fn options(&self) -> &TrainOptions {
        &self.options
    }

    /// First 12 hex digits of the SHA-256 of [`Model::to_bytes`].
    pub fn version(&self) -> String {
        self.version.clone()
    }

    /// The model file (see the module documentation for the layout).
    pub fn to_bytes(&self) -> Vec<u8> {
        let total = expected_len(self.buckets_log2, self.header.len());
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.push(self.buckets_log2);
        out.push(self.max_ngram);
        out.extend_from_slice(&(total as u64).to_le_bytes());
        out.extend_from_slice(&(NUM_SIGNALS as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.bias.to_le_bytes());
        out.extend_from_slice(&self.threshold.to_le_bytes());
        for w in &self.weights {
            out.extend_from_slice(&w.to_le_bytes());
        }
        for w in &self.signal_weights {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&(self.header.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.header);
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        debug_assert_eq!(out.len(), total);
        out
    }

    /// Reads a model file written by [`Model::to_bytes`].
    ///
    /// # Errors
    ///
    /// [`ModelError::WrongMagic`] for a file that is not a model,
    /// [`ModelError::Truncated`] / [`ModelError::TrailingBytes`] when the length
    /// differs from the one recorded in the file, [`ModelError::Checksum`] when
    /// the SHA-256 trailer does not match, [`ModelError::UnsupportedVersion`]
    /// for another format version and [`ModelError::Malformed`] for
    /// inconsistent content. Never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, ModelError> {
        let actual = bytes.len() as u64;
        if bytes.len() < 4 {
            return if MAGIC.starts_with(bytes) {
                Err(ModelError::Truncated { expected: 0, actual })
            } else {
                Err(ModelError::WrongMagic)
            };
        }
        if &bytes[..4] != MAGIC {
            return Err(ModelError::WrongMagic);
        }
        if bytes.len() < PREFIX {
            return Err(ModelError::Truncated { expected: 0, actual });
        }
        let mut r = Reader { bytes, pos: 4 };
        let version = u16::from_le_bytes(r.array()?);
        let [buckets_log2] = r.array::<1>()?;
        let [max_ngram] = r.array::<1>()?;
        let total = u64::from_le_bytes(r.array()?);
        if total > actual {
            return Err(ModelError::Truncated { expected: total, actual });
        }
        if total < actual {
            return Err(ModelError::TrailingBytes { extra: actual - total });
        }
        if bytes.len() < FIXED_HEAD + TRAILER {
            return Err(ModelError::Malformed(format!("{} bytes is too short for a model file", bytes.len())));
        }
        let (body, trailer) = bytes.split_at(bytes.len() - TRAILER);
        if Sha256::digest(body).as_slice() != trailer {
            return Err(ModelError::Checksum);
        }
        if version != FORMAT_VERSION {
            return Err(ModelError::UnsupportedVersion { found: version, supported: FORMAT_VERSION });
        }
        if !BUCKETS_LOG2_RANGE.contains(&buckets_log2) {
            return Err(ModelError::Malformed(format!("buckets_log2 {buckets_log2} is out of range")));
        }
        if !(1..=3).contains(&max_ngram) {
            return Err(ModelError::Malformed(format!("max_ngram {max_ngram} is out of range")));
        }
        let mut r = Reader { bytes: body, pos: PREFIX };
        let n_signals = u16::from_le_bytes(r.array()?);
        if usize::from(n_signals) != NUM_SIGNALS {
            return Err(ModelError::Malformed(format!("{n_signals} signal weights; this build uses {NUM_SIGNALS}")));
        }
        let _reserved = r.array::<2>()?;
        let bias = r.f32()?;
        let threshold = r.f32()?;
        let n = 1usize << buckets_log2;
        let raw = r.take(n * 4)?;
        let weights: Vec<f32> = raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let mut signal_weights = [0f32; NUM_SIGNALS];
        for w in &mut signal_weights {
            *w = r.f32()?;
        }
        let header_len = u32::from_le_bytes(r.array()?) as usize;
        let header = r.take(header_len)?.to_vec();
        if r.pos != body.len() {
            return Err(ModelError::Malformed(format!("{} unexpected bytes after the header", body.len() - r.pos)));
        }
        if !(bias.is_finite()
            && threshold.is_finite()
            && weights.iter().all(|w| w.is_finite())
            && signal_weights.iter().all(|w| w.is_finite()))
        {
            return Err(ModelError::Malformed("a weight is not a finite number".to_owned()));
        }
        let parsed: Header = serde_json::from_slice(&header)
            .map_err(|e| ModelError::Malformed(format!("header is not valid JSON: {e}")))?;
        if parsed.format != FORMAT_VERSION
            || parsed.options.buckets_log2 != buckets_log2
            || parsed.options.max_ngram != max_ngram
        {
            return Err(ModelError::Malformed("header does not match the binary layout".to_owned()));
        }
        Ok(Model {
            buckets_log2,
            max_ngram,
            bias,
            threshold,
            weights,
            signal_weights,
            options: parsed.options,
            evaluation: parsed.evaluation,
            header,
            version: version_of(bytes),
        })
    }
}

fn expected_len(buckets_log2: u8, header_len: usize) -> usize {
    FIXED_HEAD + (4usize << buckets_log2) + 4 * NUM_SIGNALS + 4 + header_len + TRAILER
}

fn version_of(bytes: &[u8]) -> String {
    let mut v = hex::encode(Sha256::digest(bytes));
    v.truncate(12);
    v
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ModelError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            ModelError::Malformed(format!("content ends early (need {n} bytes at offset {})", self.pos))
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ModelError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn f32(&mut self) -> Result<f32, ModelError> {
        Ok(f32::from_le_bytes(self.array()?))
    }
}

// ---------------------------------------------------------------------------
// Threshold and metrics
// ---------------------------------------------------------------------------

/// The threshold that maximises F1 over `(score, is_spam)` pairs, placed midway
/// between the lowest score flagged and the next lower score. Ties in F1 go to
/// the higher threshold (fewer texts flagged).
fn best_f1_threshold(mut scores: Vec<(f32, bool)>) -> f32 {
    scores.sort_by(|a, b| b.0.total_cmp(&a.0));
    let positives = scores.iter().filter(|s| s.1).count();
    if scores.is_empty() || positives == 0 {
        return 0.5;
    }
    let (mut best_f1, mut best_k) = (-1.0f64, scores.len());
    let mut tp = 0usize;
    for k in 1..=scores.len() {
        tp += usize::from(scores[k - 1].1);
        // Only cut between distinct scores.
        if k < scores.len() && scores[k].0 == scores[k - 1].0 {
            continue;
        }
        let f1 = 2.0 * tp as f64 / (k + positives) as f64;
        if f1 > best_f1 {
            best_f1 = f1;
            best_k = k;
        }
    }
    let low = scores[best_k - 1].0;
    if best_k == scores.len() {
        return low;
    }
    let next = scores[best_k].0;
    let mid = low / 2.0 + next / 2.0;
    if mid > next && mid <= low {
        mid
    } else {
        low
    }
}

fn evaluate(scores: &[(f32, bool)], threshold: f32, n_train: usize, duplicates: usize) -> Evaluation {
    let (mut tp, mut fp, mut tn, mut fn_) = (0, 0, 0, 0);
    for &(s, spam) in scores {
        match (s >= threshold, spam) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, false) => tn += 1,
            (false, true) => fn_ += 1,
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fn_);
    let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
    Evaluation {
        n_train,
        n_test: scores.len(),
        duplicates_dropped: duplicates,
        threshold,
        true_positives: tp,
        false_positives: fp,
        true_negatives: tn,
        false_negatives: fn_,
        precision,
        recall,
        f1,
        accuracy: ratio(tp + tn, scores.len()),
        auc: auc(scores),
    }
}

/// Mann–Whitney AUC with average ranks for ties.
fn auc(scores: &[(f32, bool)]) -> f64 {
    let mut sorted: Vec<(f32, bool)> = scores.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = sorted.iter().filter(|s| s.1).count();
    let negatives = sorted.len() - positives;
    if positives == 0 || negatives == 0 {
        return 0.0;
    }
    let mut rank_sum = 0f64;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j].0 == sorted[i].0 {
            j += 1;
        }
        // Ranks i+1 ..= j share their average.
        let avg = (i + 1 + j) as f64 / 2.0;
        rank_sum += avg * sorted[i..j].iter().filter(|s| s.1).count() as f64;
        i = j;
    }
    let p = positives as f64;
    (rank_sum - p * (p + 1.0) / 2.0) / (p * negatives as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator for the synthetic data.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            splitmix64(&mut self.0)
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }
        fn num(&mut self, max: u64) -> u64 {
            self.next() % max
        }
    }

    const SPAM_PHRASES: &[&str] = &[
        "刷单",
        "兼职日结",
        "加微信",
        "免费领取",
        "点击链接",
        "日赚三百",
        "躺赚",
        "无需押金",
        "手机兼职",
        "加vx",
        "扫码进群",
        "返利高",
        "宝妈学生党",
        "稳赚不赔",
        "私聊领红包",
    ];
    const SPAM_FILLER: &[&str] =
        &["名额有限", "速来", "在家就能做", "当天到账", "不收费", "先到先得", "联系客服", "机会难得", "工作轻松"];
    const HAM_TEMPLATES: &[&str] = &[
        "您好本周{d}下午{n}点召开部门例会请准时参加",
        "尊敬的客户您的订单已发货预计{d}送达",
        "物业通知{d}上午{n}点至{m}点停水请提前储水",
        "会议室预订成功时间为{d}{n}点地点三楼会议室",
        "您的快递已到达小区驿站请凭取件码取件",
        "学校通知{d}举行家长会请各位家长准时出席",
        "温馨提示明天有雨出门请携带雨具",
        "社区卫生服务中心{d}开展免费体检活动",
        "您预约的门诊时间为{d}上午{n}点请携带身份证",
        "年终总结报告请于{d}前提交至部门负责人",
        "图书馆{d}闭馆维护给您带来不便敬请谅解",
        "本月水电费账单已生成请按时缴纳",
    ];
    const DAYS: &[&str] = &["周一", "周二", "周三", "周四", "周五", "三月五日", "下周", "明天", "后天"];

    fn signals_for(text: &str) -> Signals {
        let digits = text.chars().filter(|c| c.is_ascii_digit()).count() as u32;
        Signals {
            links: u32::from(text.contains("http")),
            contacts: u32::from(text.contains("vx") || text.contains("微信")),
            digits,
            chars: text.chars().count() as u32,
            ..Signals::default()
        }
    }

    fn synthetic() -> Vec<(String, Signals, bool)> {
        let mut rng = Rng(42);
        let mut out = Vec::new();
        for _ in 0..200 {
            let mut s = String::new();
            s.push_str(rng.pick(SPAM_FILLER));
            s.push_str(rng.pick(SPAM_PHRASES));
            s.push_str(rng.pick(SPAM_FILLER));
            s.push_str(rng.pick(SPAM_PHRASES));
            if rng.num(2) == 0 {
                s.push_str(&format!("wx{}", 10000 + rng.num(90000)));
            }
            if rng.num(3) == 0 {
                s.push_str("httpxyz");
            }
            let sig = signals_for(&s);
            out.push((s, sig, true));
        }
        for _ in 0..200 {
            let s = rng
                .pick(HAM_TEMPLATES)
                .replace("{d}", rng.pick(DAYS))
                .replace("{n}", &(1 + rng.num(12)).to_string())
                .replace("{m}", &(1 + rng.num(12)).to_string());
            let sig = signals_for(&s);
            out.push((s, sig, false));
        }
        out
    }

    fn trained() -> (Model, Evaluation) {
        Model::train(&synthetic(), &TrainOptions::default()).unwrap()
    }

    #[test]
    fn learns_the_synthetic_set() {
        let (model, eval) = trained();
        assert!(eval.n_test > 20, "{eval:?}");
        assert!(eval.precision >= 0.9, "{eval:?}");
        assert!(eval.recall >= 0.9, "{eval:?}");
        assert!(eval.auc >= 0.9, "{eval:?}");
        assert_eq!(
            eval.true_positives + eval.false_positives + eval.true_negatives + eval.false_negatives,
            eval.n_test
        );
        assert_eq!(model.evaluation(), &eval);
        assert!(eval.threshold > 0.0 && eval.threshold < 1.0, "{eval:?}");

        let spam = "兼职日结刷单加微信免费领取点击链接";
        let ham = "物业通知明天上午9点至11点停水请提前储水";
        let s_spam = model.score(spam, &signals_for(spam));
        let s_ham = model.score(ham, &signals_for(ham));
        assert!(s_spam > s_ham, "{s_spam} vs {s_ham}");
        assert!(s_spam > model.threshold(), "{s_spam}");
        assert!(model.is_spam(spam, &signals_for(spam)));
        assert!(!model.is_spam(ham, &signals_for(ham)));
        assert!((0.0..=1.0).contains(&s_spam) && (0.0..=1.0).contains(&s_ham));
    }

    #[test]
    fn explain_names_spam_ngrams() {
        let (model, _) = trained();
        let spam = "兼职日结刷单加微信";
        let why = model.explain(spam, &signals_for(spam), 5);
        assert!(!why.is_empty() && why.len() <= 5, "{why:?}");
        assert!(why.windows(2).all(|w| w[0].1 >= w[1].1), "{why:?}");
        assert!(why.iter().all(|(_, c)| *c > 0.0), "{why:?}");
        assert!(why.iter().all(|(d, _)| spam.contains(d.as_str()) || SIGNAL_NAMES.contains(&d.as_str())), "{why:?}");
        assert!(model.explain(spam, &signals_for(spam), 0).is_empty());
    }

    #[test]
    fn empty_and_odd_texts_score() {
        let (model, _) = trained();
        for text in ["", " ", "   \n ", "a", "ab", "😀😀😀", "\u{10FFFF}\u{10FFFF}"] {
            let s = model.score(text, &Signals::default());
            assert!((0.0..=1.0).contains(&s), "{text:?} → {s}");
            let _ = model.explain(text, &Signals::default(), 3);
        }
    }

    #[test]
    fn score_matches_training_features() {
        let (model, _) = trained();
        for (text, sig, spam) in synthetic().iter().take(20) {
            let f = extract(model.max_ngram, model.buckets_log2, text, sig, *spam);
            assert_eq!(model.score_features(&f).to_bits(), model.score(text, sig).to_bits());
        }
    }

    #[test]
    fn whitespace_only_ngrams_are_skipped() {
        let mut grams = Vec::new();
        for_each_ngram::<3>("a  b", |_, c, n| grams.push(c[..n].iter().collect::<String>()));
        assert_eq!(grams, ["a", "a ", "a  ", "b", " b", "  b"]);
        let mut keys = FxHashSet::default();
        for_each_ngram::<3>("ab", |k, _, _| assert!(keys.insert(k)));
        assert_eq!(keys.len(), 3);
    }

    #[test]
    fn round_trip_gives_identical_scores() {
        let (model, _) = trained();
        let bytes = model.to_bytes();
        assert_eq!(&bytes[..4], MAGIC);
        let loaded = Model::from_bytes(&bytes).unwrap();
        assert_eq!(loaded.to_bytes(), bytes);
        assert_eq!(loaded.version(), model.version());
        assert_eq!(loaded.version().len(), 12);
        assert_eq!(loaded.evaluation(), model.evaluation());
        assert_eq!(loaded.options(), model.options());
        assert_eq!(loaded.threshold().to_bits(), model.threshold().to_bits());
        for (text, sig, _) in synthetic() {
            assert_eq!(model.score(&text, &sig).to_bits(), loaded.score(&text, &sig).to_bits());
        }
    }

    #[test]
    fn damaged_files_are_errors() {
        let (model, _) = trained();
        let bytes = model.to_bytes();

        let mut corrupted = bytes.clone();
        corrupted[100] ^= 0x01;
        assert!(matches!(Model::from_bytes(&corrupted), Err(ModelError::Checksum)));
        let mut corrupted = bytes.clone();
        let last = corrupted.len() - 1;
        corrupted[last] ^= 0x80;
        assert!(matches!(Model::from_bytes(&corrupted), Err(ModelError::Checksum)));

        for len in [0, 2, 4, 10, 16, 40, bytes.len() / 2, bytes.len() - 1] {
            let err = Model::from_bytes(&bytes[..len]).unwrap_err();
            assert!(matches!(err, ModelError::Truncated { .. }), "{len}: {err}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(Model::from_bytes(&longer), Err(ModelError::TrailingBytes { extra: 1 })));

        let mut magic = bytes.clone();
        magic[..4].copy_from_slice(b"PK\x03\x04");
        assert!(matches!(Model::from_bytes(&magic), Err(ModelError::WrongMagic)));
        assert!(matches!(Model::from_bytes(b"{\"a\""), Err(ModelError::WrongMagic)));

        // Another version with a valid checksum.
        let mut other = bytes[..bytes.len() - TRAILER].to_vec();
        other[4..6].copy_from_slice(&2u16.to_le_bytes());
        let digest = Sha256::digest(&other);
        other.extend_from_slice(&digest);
        let err = Model::from_bytes(&other).unwrap_err();
        assert!(matches!(err, ModelError::UnsupportedVersion { found: 2, supported: 1 }), "{err}");

        // Flipping every byte of a small model one at a time never panics.
        let small = TrainOptions { buckets_log2: 8, epochs: 2, ..TrainOptions::default() };
        let (small, _) = Model::train(&synthetic(), &small).unwrap();
        let bytes = small.to_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] = b[i].wrapping_add(1);
            assert!(Model::from_bytes(&b).is_err(), "byte {i}");
        }
    }

    #[test]
    fn training_is_deterministic() {
        let a = trained().0;
        let b = trained().0;
        assert_eq!(a.to_bytes(), b.to_bytes());
        assert_eq!(a.version(), b.version());
        let other = TrainOptions { seed: 7, ..TrainOptions::default() };
        let c = Model::train(&synthetic(), &other).unwrap().0;
        assert_ne!(a.version(), c.version());
    }

    #[test]
    fn duplicates_are_dropped_and_never_straddle_the_split() {
        let mut data = synthetic();
        let extra: Vec<_> = data.iter().take(50).cloned().collect();
        data.extend(extra);
        let (_, eval) = Model::train(&data, &TrainOptions::default()).unwrap();
        let distinct: FxHashSet<(&str, bool)> = data.iter().map(|(t, _, s)| (t.as_str(), *s)).collect();
        assert!(eval.duplicates_dropped >= 50);
        assert_eq!(eval.n_train + eval.n_test, distinct.len());
        assert_eq!(eval.n_train + eval.n_test + eval.duplicates_dropped, data.len());
    }

    #[test]
    fn training_errors() {
        let data = synthetic();
        let spam_only: Vec<_> = data.iter().filter(|e| e.2).cloned().collect();
        let err = Model::train(&spam_only, &TrainOptions::default()).unwrap_err();
        assert!(matches!(err, ModelError::OneClass { part: "training", ham: 0, .. }), "{err}");
        assert!(err.to_string().contains("training"), "{err}");

        let few: Vec<_> = data.iter().step_by(50).cloned().collect();
        let err = Model::train(&few, &TrainOptions::default()).unwrap_err();
        assert!(matches!(err, ModelError::TooFewExamples { got: 8, need: MIN_EXAMPLES }), "{err}");

        for bad in [
            TrainOptions { epochs: 0, ..TrainOptions::default() },
            TrainOptions { learning_rate: 0.0, ..TrainOptions::default() },
            TrainOptions { learning_rate: f32::NAN, ..TrainOptions::default() },
            TrainOptions { l2: -1.0, ..TrainOptions::default() },
            TrainOptions { holdout: 0.0, ..TrainOptions::default() },
            TrainOptions { holdout: 1.0, ..TrainOptions::default() },
            TrainOptions { buckets_log2: 30, ..TrainOptions::default() },
        ] {
            let err = Model::train(&data, &bad).unwrap_err();
            assert!(matches!(err, ModelError::BadOptions(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn one_class_in_held_out_part_is_an_error() {
        // Twelve ham texts and one spam: whichever part gets the spam, the other lacks it.
        let mut data: Vec<_> = (0..12).map(|i| (format!("普通通知第{i}号"), Signals::default(), false)).collect();
        data.push(("刷单兼职".to_owned(), Signals::default(), true));
        let err = Model::train(&data, &TrainOptions::default()).unwrap_err();
        assert!(matches!(err, ModelError::OneClass { .. }), "{err}");
    }

    #[test]
    fn parse_jsonl_accepts_all_label_forms() {
        let input = "\u{feff}{\"text\": \"刷单\", \"label\": \"spam\"}\n\
                     \n\
                     {\"text\": \"会议\", \"label\": \"ham\"}\r\n\
                     {\"text\": \"a\", \"label\": 1, \"id\": 7}\n\
                     {\"text\": \"b\", \"label\": 0}\n\
                     {\"text\": \"c\", \"label\": true}\n\
                     {\"text\": \"d\", \"label\": false}\n   \n\
                     {\"text\": \"e\", \"label\": \"Block\"}\n\
                     {\"text\": \"f\", \"label\": \" allow \"}\n";
        let got = parse_jsonl(input).unwrap();
        let labels: Vec<bool> = got.iter().map(|e| e.spam).collect();
        assert_eq!(labels, [true, false, true, false, true, false, true, false]);
        assert_eq!(got[0], Example { text: "刷单".to_owned(), spam: true });
    }

    #[test]
    fn parse_jsonl_errors_name_the_line() {
        let cases = [
            ("{\"text\": \"a\", \"label\": \"spam\"}\n\n{not json}\n", 3, "invalid JSON"),
            ("{\"label\": \"spam\"}\n", 1, "missing \"text\""),
            ("{\"text\": \"a\", \"label\": \"spam\"}\n{\"text\": 5, \"label\": \"spam\"}", 2, "must be a string"),
            ("{\"text\": \"a\"}", 1, "missing \"label\""),
            ("\n{\"text\": \"a\", \"label\": \"maybe\"}", 2, "unknown label \"maybe\""),
            ("{\"text\": \"a\", \"label\": 2}", 1, "unknown label 2"),
            ("[1, 2]", 1, "expected a JSON object"),
        ];
        for (input, line, what) in cases {
            let err = parse_jsonl(input).unwrap_err();
            match &err {
                ModelError::Jsonl { line: l, message } => {
                    assert_eq!(*l, line, "{input:?}: {err}");
                    assert!(message.contains(what), "{input:?}: {err}");
                }
                other => panic!("{input:?}: {other}"),
            }
            assert!(err.to_string().starts_with(&format!("line {line}: ")), "{err}");
        }
        assert!(matches!(parse_jsonl(""), Err(ModelError::NoExamples)));
        assert!(matches!(parse_jsonl("\n  \n"), Err(ModelError::NoExamples)));
    }

    #[test]
    fn hash_spreads_structured_ngrams() {
        // 50,000 consecutive CJK bigrams and 64,000 ASCII trigrams fill the
        // 2^16 buckets as random hashing would (within 2%).
        let h = |c: u32| char_hash(char::from_u32(c).unwrap());
        let check = |hashes: Vec<u64>| {
            let n = hashes.len() as f64;
            let distinct: FxHashSet<u64> = hashes.into_iter().map(|x| x >> 48).collect();
            let random = 65536.0 * (1.0 - (-n / 65536.0).exp());
            let got = distinct.len() as f64;
            assert!((got - random).abs() < 0.02 * random, "{got} buckets, random hashing fills {random:.0}");
        };
        check((0..250).flat_map(|a| (0..200).map(move |b| bigram_hash(h(0x4E00 + a), h(0x4E00 + b)))).collect());
        check(
            (0x20..0x60)
                .flat_map(|a| (0x20..0x60).flat_map(move |b| (0x61..0x7b).map(move |c| trigram_hash(h(a), h(b), h(c)))))
                .collect(),
        );
    }

    #[test]
    fn other_ngram_lengths_train_and_round_trip() {
        for max_ngram in [1, 3] {
            let options = TrainOptions { max_ngram, buckets_log2: 12, ..TrainOptions::default() };
            let (model, eval) = Model::train(&synthetic(), &options).unwrap();
            assert!(eval.f1 >= 0.9, "{max_ngram}: {eval:?}");
            let loaded = Model::from_bytes(&model.to_bytes()).unwrap();
            assert_eq!(loaded.options().max_ngram, max_ngram);
            for (text, sig, spam) in synthetic().iter().step_by(7) {
                let f = extract(max_ngram, 12, text, sig, *spam);
                assert_eq!(model.score_features(&f).to_bits(), loaded.score(text, sig).to_bits());
            }
            let why = model.explain("兼职日结刷单", &Signals::default(), 20);
            assert!(why.iter().all(|(d, _)| d.chars().count() <= usize::from(max_ngram)), "{why:?}");
        }
        let err = Model::train(&synthetic(), &TrainOptions { max_ngram: 4, ..TrainOptions::default() }).unwrap_err();
        assert!(matches!(err, ModelError::BadOptions(_)), "{err}");
    }

    #[test]
    fn threshold_and_auc_helpers() {
        let t = best_f1_threshold(vec![(0.9, true), (0.8, true), (0.2, false), (0.1, false)]);
        assert!((t - 0.5).abs() < 1e-6, "{t}");
        assert_eq!(auc(&[(0.9, true), (0.8, true), (0.2, false), (0.1, false)]), 1.0);
        assert_eq!(auc(&[(0.5, true), (0.5, false)]), 0.5);
        assert_eq!(auc(&[(0.1, true), (0.9, false)]), 0.0);
    }
}
