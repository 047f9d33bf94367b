//! The audit hash chain: each entry stores the hash of the one before it, so a
//! changed, inserted or deleted entry breaks the chain.

use sha2::{Digest, Sha256};

/// The hash that precedes the first entry of a chain.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hashed fields of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditFields<'a> {
    pub chain: i64,
    pub seq: i64,
    pub at: crate::Millis,
    pub actor: &'a str,
    pub action: &'a str,
    pub subject: &'a str,
    pub details: &'a str,
}

/// The hash of an entry given the previous entry's hash. Fields are length
/// prefixed so that no two different entries serialise alike.
pub fn entry_hash(prev_hash: &str, f: &AuditFields<'_>) -> String {
    let mut h = Sha256::new();
    for part in [
        prev_hash.as_bytes(),
        f.chain.to_string().as_bytes(),
        f.seq.to_string().as_bytes(),
        f.at.to_string().as_bytes(),
        f.actor.as_bytes(),
        f.action.as_bytes(),
        f.subject.as_bytes(),
        f.details.as_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

/// A stored entry, as read back for verification.
#[derive(Debug, Clone)]
pub struct StoredEntry {
    pub chain: i64,
    pub seq: i64,
    pub at: crate::Millis,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

/// What is wrong with a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainBreak {
    /// An entry's content does not match its hash (it was changed).
    Altered { seq: i64 },
    /// An entry does not link to the one before (an entry before it was removed or inserted).
    BrokenLink { seq: i64 },
    /// Sequence numbers skip (an entry was deleted).
    Gap { after: i64, next: i64 },
    /// The chain ends before the recorded head (its last entries were deleted).
    Truncated { last_seq: i64, head_seq: i64 },
}

/// Verifies one chain, given its entries in `seq` order and the head
/// (last seq and hash) recorded separately.
pub fn verify_chain(entries: &[StoredEntry], head: Option<(i64, &str)>) -> Result<usize, ChainBreak> {
    let mut prev_hash = GENESIS_HASH.to_owned();
    let mut prev_seq = 0;
    for e in entries {
        if e.seq != prev_seq + 1 {
            return Err(ChainBreak::Gap { after: prev_seq, next: e.seq });
        }
        if e.prev_hash != prev_hash {
            return Err(ChainBreak::BrokenLink { seq: e.seq });
        }
        let fields = AuditFields {
            chain: e.chain,
            seq: e.seq,
            at: e.at,
            actor: &e.actor,
            action: &e.action,
            subject: &e.subject,
            details: &e.details,
        };
        if entry_hash(&e.prev_hash, &fields) != e.hash {
            return Err(ChainBreak::Altered { seq: e.seq });
        }
        prev_hash.clone_from(&e.hash);
        prev_seq = e.seq;
    }
    if let Some((head_seq, head_hash)) = head {
        if head_seq != prev_seq {
            return Err(ChainBreak::Truncated { last_seq: prev_seq, head_seq });
        }
        if head_hash != prev_hash {
            return Err(ChainBreak::Altered { seq: prev_seq });
        }
    }
    Ok(entries.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<StoredEntry> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let details = format!("{{\"n\":{seq}}}");
                let f = AuditFields {
                    chain: 1,
                    seq,
                    at: seq * 10,
                    actor: "k1",
                    action: "contact.imported",
                    subject: "c",
                    details: &details,
                };
                let hash = entry_hash(&prev, &f);
                let e = StoredEntry {
                    chain: 1,
                    seq,
                    at: f.at,
                    actor: "k1".into(),
                    action: "contact.imported".into(),
                    subject: "c".into(),
                    details,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                e
            })
            .collect()
    }

    #[test]
    fn detects_changes_and_deletions() {
        let c = chain(5);
        let head = (5, c[4].hash.as_str());
        assert_eq!(verify_chain(&c, Some(head)), Ok(5));

        let mut altered = c.clone();
        altered[2].details = "{\"n\":99}".into();
        assert_eq!(verify_chain(&altered, Some(head)), Err(ChainBreak::Altered { seq: 3 }));

        let mut deleted = c.clone();
        deleted.remove(1);
        assert_eq!(verify_chain(&deleted, Some(head)), Err(ChainBreak::Gap { after: 1, next: 3 }));

        let truncated = &c[..4];
        assert_eq!(verify_chain(truncated, Some(head)), Err(ChainBreak::Truncated { last_seq: 4, head_seq: 5 }));
    }
}
