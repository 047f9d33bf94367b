//! The audit log: an append-only hash chain per workspace (chain 0 is the
//! server's own), written in the same transaction as the change it records.

use qunfa_core::audit::{entry_hash, verify_chain, AuditFields, ChainBreak, StoredEntry, GENESIS_HASH};

use crate::{params, Conn, Store, StoreError};

/// Appends one entry to `chain` inside the caller's transaction.
///
/// # Errors
/// Database errors.
pub fn append(
    c: &mut Conn,
    chain: i64,
    actor: &str,
    action: &str,
    subject: &str,
    details: &str,
    now: i64,
) -> Result<i64, StoreError> {
    c.execute(
        "INSERT INTO audit_heads (chain, seq, hash) VALUES (?, 0, ?) ON CONFLICT (chain) DO NOTHING",
        params![chain, GENESIS_HASH],
    )?;
    // The UPDATE takes the row lock (PostgreSQL) or is already serialised by the
    // write transaction (SQLite), so two appends never share a sequence number.
    let head =
        c.query_one("UPDATE audit_heads SET seq = seq + 1 WHERE chain = ? RETURNING seq, hash", params![chain])?;
    let (seq, prev_hash) = (head.i64(0), head.string(1));
    let fields = AuditFields { chain, seq, at: now, actor, action, subject, details };
    let hash = entry_hash(&prev_hash, &fields);
    c.execute(
        "INSERT INTO audit_log (chain, seq, at, actor, action, subject, details, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        params![chain, seq, now, actor, action, subject, details, prev_hash, hash.clone()],
    )?;
    c.execute("UPDATE audit_heads SET hash = ? WHERE chain = ?", params![hash, chain])?;
    Ok(seq)
}

/// The verification result of one chain.
#[derive(Debug, Clone)]
pub struct ChainReport {
    pub chain: i64,
    pub result: Result<usize, ChainBreak>,
}

fn stored(r: &crate::Row) -> StoredEntry {
    StoredEntry {
        chain: r.i64(0),
        seq: r.i64(1),
        at: r.i64(2),
        actor: r.string(3),
        action: r.string(4),
        subject: r.string(5),
        details: r.string(6),
        prev_hash: r.string(7),
        hash: r.string(8),
    }
}

const ENTRY_COLUMNS: &str = "chain, seq, at, actor, action, subject, details, prev_hash, hash";

impl Store {
    /// Verifies every chain against its recorded head.
    ///
    /// # Errors
    /// Database errors (a broken chain is a report, not an error).
    pub fn audit_verify(&self) -> Result<Vec<ChainReport>, StoreError> {
        self.db.read(|c| {
            let heads = c.query("SELECT chain, seq, hash FROM audit_heads ORDER BY chain", params![])?;
            let mut chains: Vec<i64> = heads.iter().map(|r| r.i64(0)).collect();
            for r in c.query("SELECT DISTINCT chain FROM audit_log", params![])? {
                if !chains.contains(&r.i64(0)) {
                    chains.push(r.i64(0));
                }
            }
            let mut out = Vec::new();
            for chain in chains {
                let entries: Vec<StoredEntry> = c
                    .query(
                        &format!("SELECT {ENTRY_COLUMNS} FROM audit_log WHERE chain = ? ORDER BY seq"),
                        params![chain],
                    )?
                    .iter()
                    .map(stored)
                    .collect();
                let head = heads.iter().find(|r| r.i64(0) == chain);
                let result = match head {
                    Some(h) => verify_chain(&entries, Some((h.i64(1), h.str(2)))),
                    // Entries without a head: the head row itself was removed.
                    None => Err(ChainBreak::Truncated { last_seq: entries.len() as i64, head_seq: 0 }),
                };
                out.push(ChainReport { chain, result });
            }
            Ok(out)
        })
    }

    /// Entries of one workspace's chain after `after_seq`, oldest first.
    ///
    /// # Errors
    /// Database errors.
    pub fn audit_entries(&self, chain: i64, after_seq: i64, limit: usize) -> Result<Vec<StoredEntry>, StoreError> {
        let rows = self.db.conn()?.query(
            &format!("SELECT {ENTRY_COLUMNS} FROM audit_log WHERE chain = ? AND seq > ? ORDER BY seq LIMIT ?"),
            params![chain, after_seq, limit],
        )?;
        Ok(rows.iter().map(stored).collect())
    }
}
