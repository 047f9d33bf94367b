//! Content safety: every text that qunfa sends passes three gates.
//!
//! 1. the word library (`lexicon`): categories of words with a severity each,
//!    matched on normalised text so that `敏*感 词`, full-width letters,
//!    traditional characters, homoglyphs and repeated characters still match;
//! 2. rules (`rules`): inducement, absolute advertising terms, contact harvesting,
//!    co-occurrence, and categories (finance, medical, political) that de-rank;
//! 3. the risk model (`model`): logistic regression over character n-grams and
//!    signals from the other gates.
//!
//! Near-duplicate text and images (`dedup`) and links (`links`) add features.
//! Everything here is pure: no I/O, no clock; files are read by the callers.

pub mod check;
pub mod dedup;
pub mod lexicon;
pub mod links;
pub mod lint;
pub mod model;
pub mod normalize;
pub mod rules;
pub mod sources;

pub use check::{Action, CheckError, CheckScratch, Gate, Hit, Safety, Thresholds, Verdict};
