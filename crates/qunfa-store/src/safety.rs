//! The human review queue of the content check.
//!
//! A review is opened in the transaction that holds a send for review and
//! decided in the transaction that approves (dispatches) or rejects the
//! broadcast, whichever way that happens — from the queue or from the
//! broadcast's own approve/reject. Decided reviews are the risk model's new
//! training examples (approved → ham, rejected → spam).

use crate::{db::Conn, params, Store, StoreError};

/// A review to open with a held send.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSafetyReview {
    pub text: String,
    /// The verdict's hits as JSON (what the reviewer sees).
    pub hits_json: String,
    pub risk: f64,
    pub sampled: bool,
    pub lexicon_version: String,
}

/// A review as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetyReview {
    pub id: i64,
    pub workspace_id: i64,
    pub broadcast_id: i64,
    pub text: String,
    pub hits_json: String,
    pub risk: f64,
    pub sampled: bool,
    pub lexicon_version: String,
    /// `pending`, `approved`, `rejected` or `withdrawn` (the sender cancelled).
    pub state: String,
    pub reason: String,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
    pub created_at: i64,
}

const COLUMNS: &str = "id, workspace_id, broadcast_id, text, hits, risk, sampled, lexicon_version, state, reason, decided_by, decided_at, created_at";

fn review_of(r: &crate::db::Row) -> SafetyReview {
    SafetyReview {
        id: r.i64(0),
        workspace_id: r.i64(1),
        broadcast_id: r.i64(2),
        text: r.string(3),
        hits_json: r.string(4),
        risk: r.f64(5),
        sampled: r.i64(6) != 0,
        lexicon_version: r.string(7),
        state: r.string(8),
        reason: r.string(9),
        decided_by: r.opt_string(10),
        decided_at: r.opt_i64(11),
        created_at: r.i64(12),
    }
}

/// Opens a review (in the caller's transaction).
pub(crate) fn open(
    c: &mut Conn,
    workspace_id: i64,
    broadcast_id: i64,
    review: &NewSafetyReview,
    now: i64,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO safety_reviews (workspace_id, broadcast_id, text, hits, risk, sampled, lexicon_version, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        params![workspace_id, broadcast_id, review.text.as_str(), review.hits_json.as_str(), review.risk, i64::from(review.sampled), review.lexicon_version.as_str(), now],
    )?;
    Ok(())
}

/// How a review ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approved,
    Rejected,
    /// The sender cancelled the send: not a judgement of the content.
    Withdrawn,
}

/// Decides the pending reviews of a broadcast (in the caller's transaction).
pub(crate) fn decide(
    c: &mut Conn,
    workspace_id: i64,
    broadcast_id: i64,
    decision: Decision,
    reason: &str,
    actor: &str,
    now: i64,
) -> Result<u64, StoreError> {
    let state = match decision {
        Decision::Approved => "approved",
        Decision::Rejected => "rejected",
        Decision::Withdrawn => "withdrawn",
    };
    c.execute(
        "UPDATE safety_reviews SET state = ?, reason = ?, decided_by = ?, decided_at = ? WHERE workspace_id = ? AND broadcast_id = ? AND state = 'pending'",
        params![state, reason, actor, now, workspace_id, broadcast_id],
    )
}

/// What near-duplicate counting keeps of a broadcast's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// SimHash of the normalised text.
    pub simhash: Option<u64>,
    /// Perceptual hash of the image.
    pub image_hash: Option<u64>,
}

/// A sender's recent send, for near-duplicate counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecentSend {
    pub broadcast_id: i64,
    pub fingerprint: Fingerprint,
    pub n_recipients: u64,
    pub at: i64,
    /// The recurring schedule the send was a run of, if any.
    pub parent_id: Option<i64>,
}

pub(crate) fn record_fingerprint(
    c: &mut Conn,
    workspace_id: i64,
    member_id: i64,
    broadcast_id: i64,
    f: Fingerprint,
    n_recipients: u64,
    now: i64,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO content_fingerprints (workspace_id, member_id, broadcast_id, simhash, image_hash, n_recipients, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        params![workspace_id, member_id, broadcast_id, f.simhash.map(|h| h as i64), f.image_hash.map(|h| h as i64), n_recipients, now],
    )?;
    Ok(())
}

pub(crate) fn record_domains(c: &mut Conn, workspace_id: i64, domains: &[String], now: i64) -> Result<(), StoreError> {
    for domain in domains {
        c.execute(
            "INSERT INTO seen_domains (workspace_id, domain, first_seen_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            params![workspace_id, domain.as_str(), now],
        )?;
    }
    Ok(())
}

/// Deletes fingerprints and verification codes older than `before`.
pub(crate) fn forget(c: &mut Conn, before: i64) -> Result<(), StoreError> {
    c.execute("DELETE FROM content_fingerprints WHERE created_at <= ?", params![before])?;
    c.execute("DELETE FROM verification_codes WHERE expires_at <= ?", params![before])?;
    Ok(())
}

/// Blanks the texts of a broadcast's reviews when its content is purged.
pub(crate) fn purge(c: &mut Conn, broadcast_id: i64) -> Result<(), StoreError> {
    // The hits quote the text too.
    c.execute(
        "UPDATE safety_reviews SET text = '', hits = '[]' WHERE broadcast_id = ? AND text <> ''",
        params![broadcast_id],
    )?;
    Ok(())
}

impl Store {
    /// The domains of `domains` this workspace has never sent a link to.
    ///
    /// # Errors
    /// Database errors.
    pub fn unseen_domains(&self, workspace_id: i64, domains: &[String]) -> Result<Vec<String>, StoreError> {
        if domains.is_empty() {
            return Ok(Vec::new());
        }
        self.db.read(|c| {
            let mut unseen = Vec::new();
            for d in domains {
                if c.query_opt(
                    "SELECT 1 FROM seen_domains WHERE workspace_id = ? AND domain = ?",
                    params![workspace_id, d.as_str()],
                )?
                .is_none()
                {
                    unseen.push(d.clone());
                }
            }
            Ok(unseen)
        })
    }

    /// The sends of a member since `since` (for near-duplicate counting).
    ///
    /// # Errors
    /// Database errors.
    pub fn recent_sends(&self, workspace_id: i64, member_id: i64, since: i64) -> Result<Vec<RecentSend>, StoreError> {
        self.db.read(|c| {
            let rows = c.query(
                "SELECT f.broadcast_id, f.simhash, f.image_hash, f.n_recipients, f.created_at, b.parent_id
                 FROM content_fingerprints f LEFT JOIN broadcasts b ON b.id = f.broadcast_id
                 WHERE f.workspace_id = ? AND f.member_id = ? AND f.created_at >= ?",
                params![workspace_id, member_id, since],
            )?;
            Ok(rows
                .iter()
                .map(|r| RecentSend {
                    broadcast_id: r.i64(0),
                    fingerprint: Fingerprint {
                        simhash: r.opt_i64(1).map(|h| h as u64),
                        image_hash: r.opt_i64(2).map(|h| h as u64),
                    },
                    n_recipients: r.i64(3) as u64,
                    at: r.i64(4),
                    parent_id: r.opt_i64(5),
                })
                .collect())
        })
    }

    /// The recurring schedule a broadcast is a run of, if any.
    ///
    /// # Errors
    /// Database errors.
    pub fn schedule_parent(&self, workspace_id: i64, broadcast_id: i64) -> Result<Option<i64>, StoreError> {
        let r = self.db.conn()?.query_opt(
            "SELECT parent_id FROM broadcasts WHERE id = ? AND workspace_id = ?",
            params![broadcast_id, workspace_id],
        )?;
        Ok(r.and_then(|r| r.opt_i64(0)))
    }

    /// Stores a verification code (its hash) for a broadcast, valid until `expires_at`.
    ///
    /// # Errors
    /// Database errors.
    pub fn issue_verification_code(
        &self,
        workspace_id: i64,
        broadcast_id: i64,
        code_hash: &str,
        actor: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        self.db.write(|c| {
            c.execute(
                "INSERT INTO verification_codes (workspace_id, broadcast_id, code_hash, issued_by, expires_at, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                params![workspace_id, broadcast_id, code_hash, actor, expires_at, now],
            )?;
            crate::audit::append(c, workspace_id, actor, "broadcast.verification_code_issued", &format!("broadcast:{broadcast_id}"), &serde_json::json!({"expires_at": expires_at}).to_string(), now)?;
            Ok(())
        })
    }

    /// Uses a code: true when it was issued for this broadcast, is unused and has not expired.
    ///
    /// # Errors
    /// Database errors.
    pub fn use_verification_code(
        &self,
        workspace_id: i64,
        broadcast_id: i64,
        code_hash: &str,
        actor: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.db.write(|c| {
            let n = c.execute(
                "UPDATE verification_codes SET used_at = ? WHERE workspace_id = ? AND broadcast_id = ? AND code_hash = ? AND used_at IS NULL AND expires_at > ?",
                params![now, workspace_id, broadcast_id, code_hash, now],
            )?;
            if n > 0 {
                crate::audit::append(c, workspace_id, actor, "broadcast.verified", &format!("broadcast:{broadcast_id}"), "{}", now)?;
            }
            Ok(n > 0)
        })
    }

    /// Whether a code was used for the broadcast (its sender confirmed it).
    ///
    /// # Errors
    /// Database errors.
    pub fn broadcast_verified(&self, workspace_id: i64, broadcast_id: i64) -> Result<bool, StoreError> {
        self.db.read(|c| {
            Ok(c.query_opt(
                "SELECT 1 FROM verification_codes WHERE workspace_id = ? AND broadcast_id = ? AND used_at IS NOT NULL",
                params![workspace_id, broadcast_id],
            )?
            .is_some())
        })
    }

    /// Reviews of a workspace, newest first, optionally in one state, after `before` (an id).
    ///
    /// # Errors
    /// Database errors.
    pub fn safety_reviews(
        &self,
        workspace_id: i64,
        state: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<SafetyReview>, StoreError> {
        self.db.read(|c| {
            let rows = c.query(
                &format!(
                    "SELECT {COLUMNS} FROM safety_reviews WHERE workspace_id = ? AND (? = '' OR state = ?) AND id < ? ORDER BY id DESC LIMIT ?"
                ),
                params![workspace_id, state.unwrap_or(""), state.unwrap_or(""), before.unwrap_or(i64::MAX), limit as i64],
            )?;
            Ok(rows.iter().map(review_of).collect())
        })
    }

    /// One review.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn safety_review(&self, workspace_id: i64, id: i64) -> Result<SafetyReview, StoreError> {
        self.db.read(|c| {
            c.query_opt(
                &format!("SELECT {COLUMNS} FROM safety_reviews WHERE workspace_id = ? AND id = ?"),
                params![workspace_id, id],
            )?
            .map(|r| review_of(&r))
            .ok_or(StoreError::NotFound)
        })
    }

    /// The latest content review of a broadcast, if it had one.
    ///
    /// # Errors
    /// Database errors.
    pub fn safety_review_of(&self, workspace_id: i64, broadcast_id: i64) -> Result<Option<SafetyReview>, StoreError> {
        self.db.read(|c| {
            Ok(c.query_opt(
                &format!("SELECT {COLUMNS} FROM safety_reviews WHERE workspace_id = ? AND broadcast_id = ? ORDER BY id DESC LIMIT 1"),
                params![workspace_id, broadcast_id],
            )?
            .map(|r| review_of(&r)))
        })
    }

    /// Decided reviews with their text, oldest first: the training examples.
    ///
    /// # Errors
    /// Database errors.
    pub fn decided_safety_reviews(&self, workspace_id: i64) -> Result<Vec<SafetyReview>, StoreError> {
        self.db.read(|c| {
            let rows = c.query(
                &format!("SELECT {COLUMNS} FROM safety_reviews WHERE workspace_id = ? AND state IN ('approved', 'rejected') AND text <> '' ORDER BY id"),
                params![workspace_id],
            )?;
            Ok(rows.iter().map(review_of).collect())
        })
    }
}

/// The server setting that counts changes of the API words (every node
/// compares it with the version its library was built from).
const WORDS_VERSION: &str = "safety_words_version";

fn bump_words_version(c: &mut Conn) -> Result<(), StoreError> {
    let current = c
        .query_opt("SELECT value FROM server_settings WHERE key = ?", params![WORDS_VERSION])?
        .and_then(|r| r.str(0).parse::<i64>().ok())
        .unwrap_or(0);
    c.execute(
        "INSERT INTO server_settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![WORDS_VERSION, (current + 1).to_string()],
    )?;
    Ok(())
}

/// A word or allow phrase added through the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyWord {
    /// `word` or `allow`.
    pub kind: String,
    pub category: String,
    pub word: String,
    pub severity: String,
}

impl Store {
    /// Every word and allow phrase added through the API.
    ///
    /// # Errors
    /// Database errors.
    pub fn safety_words(&self) -> Result<Vec<SafetyWord>, StoreError> {
        self.db.read(|c| {
            let rows = c.query("SELECT kind, category, word, severity FROM safety_words ORDER BY id", params![])?;
            Ok(rows
                .iter()
                .map(|r| SafetyWord {
                    kind: r.string(0),
                    category: r.string(1),
                    word: r.string(2),
                    severity: r.string(3),
                })
                .collect())
        })
    }

    /// Changes whenever a word is added, re-graded or removed (any node).
    ///
    /// # Errors
    /// Database errors.
    pub fn safety_words_signature(&self) -> Result<String, StoreError> {
        Ok(self.setting(WORDS_VERSION)?.unwrap_or_else(|| "0".into()))
    }

    /// Adds words (or re-grades them); returns how many were written.
    ///
    /// # Errors
    /// Database errors.
    pub fn add_safety_words(&self, words: &[SafetyWord], actor: &str, now: i64) -> Result<u64, StoreError> {
        self.db.write(|c| {
            let mut n = 0;
            for w in words {
                // A re-graded word gets a new row (and id), so the signature changes.
                c.execute(
                    "DELETE FROM safety_words WHERE kind = ? AND category = ? AND word = ?",
                    params![w.kind.as_str(), w.category.as_str(), w.word.as_str()],
                )?;
                n += c.execute(
                    "INSERT INTO safety_words (kind, category, word, severity, created_at) VALUES (?, ?, ?, ?, ?)",
                    params![w.kind.as_str(), w.category.as_str(), w.word.as_str(), w.severity.as_str(), now],
                )?;
            }
            bump_words_version(c)?;
            tracing::info!(actor, n, "content-safety words added");
            Ok(n)
        })
    }

    /// Removes words; returns how many were there.
    ///
    /// # Errors
    /// Database errors.
    pub fn remove_safety_words(&self, words: &[SafetyWord]) -> Result<u64, StoreError> {
        self.db.write(|c| {
            let mut n = 0;
            for w in words {
                n += c.execute(
                    "DELETE FROM safety_words WHERE kind = ? AND category = ? AND word = ?",
                    params![w.kind.as_str(), w.category.as_str(), w.word.as_str()],
                )?;
            }
            bump_words_version(c)?;
            Ok(n)
        })
    }
}
