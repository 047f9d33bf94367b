//! The evidence bundle of a broadcast: one JSON file with what was sent, to
//! whom, on whose decision and with what outcome, that proves itself against
//! the workspace's audit chain (format `qunfa-evidence/1`, docs/evidence.md).
//!
//! [`Store::export_evidence`] reads everything in one read snapshot and writes
//! the file as it reads: the frozen audience in batches of 2,000 and the
//! delivery log row by row, so a million recipients are never held as structs.
//! [`verify_bundle`] checks a file with no I/O: every audit entry's hash and
//! link, the range ending at the head recorded at export, the content against
//! the SHA-256 that `broadcast.created` recorded, the frozen audience against
//! the SHA-256 that `broadcast.dispatched` recorded, and `bundle_sha256`.
//!
//! The file is the bundle's canonical JSON ([`canonical_json`]) with its own
//! hash added as the last member, so it can be written as a stream and the
//! hash checked whatever a tool did to whitespace or key order since. The
//! format is defined here, next to its verifier, rather than in the server:
//! the verifier must be pure and offline (the CLI runs it on a file), and one
//! module keeps the writer and the reader from drifting apart.

use std::{borrow::Cow, fmt, sync::OnceLock};

use qunfa_core::audit::{entry_hash, AuditFields};
use serde::{
    de::{self, IgnoredAny, SeqAccess, Visitor},
    Deserialize, Deserializer,
};
use sha2::{Digest, Sha256};

use crate::{audit, contact_public_id, params, Conn, Row, Store, StoreError, Value};

/// The `format` of the bundles this module writes and reads.
pub const FORMAT: &str = "qunfa-evidence/1";

/// The columns of a row of `deliveries.rows`, in order.
pub const DELIVERY_COLUMNS: [&str; 11] = [
    "channel",
    "contact_id",
    "state",
    "attempts",
    "error_code",
    "last_error",
    "queued_at",
    "sent_at",
    "delivered_at",
    "read_at",
    "replied_at",
];

/// The key of the bundle's own hash, left out of what it hashes.
const HASH_KEY: &str = "bundle_sha256";

/// What retention leaves of a broadcast's content (`Store::purge_content`).
const PURGED_CONTENT: &str = r#"{"type":"purged"}"#;

/// Audience members looked up per query.
const LOOKUP: usize = qunfa_audience::BATCH_SIZE;

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub bundle_sha256: String,
    pub bytes: usize,
    pub n_recipients: u64,
    pub n_deliveries: u64,
    /// The first audit entry of the range (the broadcast's `broadcast.created`).
    pub first_seq: i64,
    /// The chain's head when the snapshot was taken: the range's last entry.
    pub head_seq: i64,
    pub head_hash: String,
}

impl Store {
    /// Appends the evidence bundle of a broadcast to `out`, read in one
    /// snapshot, at `exported_at`. The export itself is not audited here (the
    /// caller records it with [`Store::record_evidence_export`] afterwards).
    ///
    /// # Errors
    /// `NotFound` when the broadcast is not the workspace's; `Corrupt` when its
    /// frozen audience does not decode or it has no audit entry; database errors.
    pub fn export_evidence(
        &self,
        workspace_id: i64,
        broadcast_id: i64,
        exported_at: i64,
        out: &mut Vec<u8>,
    ) -> Result<ExportSummary, StoreError> {
        let start = out.len();
        let written = self.db.read(|c| write_bundle(c, workspace_id, broadcast_id, exported_at, out));
        let mut summary = match written {
            Ok(s) => s,
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        };
        // What was written is the canonical form without the hash; the hash
        // goes in as the last member.
        summary.bundle_sha256 = hex::encode(Sha256::digest(&out[start..]));
        out.pop();
        out.push(b',');
        write_str(out, HASH_KEY);
        out.push(b':');
        write_str(out, &summary.bundle_sha256);
        out.push(b'}');
        summary.bytes = out.len() - start;
        Ok(summary)
    }

    /// Audits an export: a `broadcast.evidence_exported` entry with the
    /// bundle's hash and the head it ends at, so the live chain attests the
    /// file from now on. It is appended after the snapshot, so it is never in
    /// the bundle it describes (the next export of the broadcast has it).
    ///
    /// # Errors
    /// Database errors.
    pub fn record_evidence_export(
        &self,
        workspace_id: i64,
        broadcast_id: i64,
        summary: &ExportSummary,
        actor: &str,
        now: i64,
    ) -> Result<i64, StoreError> {
        let details = serde_json::json!({
            "bundle_sha256": summary.bundle_sha256,
            "head_seq": summary.head_seq,
            "head_hash": summary.head_hash,
            "n_recipients": summary.n_recipients,
            "n_deliveries": summary.n_deliveries,
        });
        self.db.write(|c| {
            audit::append(
                c,
                workspace_id,
                actor,
                "broadcast.evidence_exported",
                &format!("broadcast:{broadcast_id}"),
                &details.to_string(),
                now,
            )
        })
    }
}

const BROADCAST_COLUMNS: &str =
    "member_id, state, content, audience, channels, priority, client_msg_id, n_recipients, verdicts,
    created_at, submitted_at, approved_by, approved_at, dispatched_at, completed_at, n_batches, n_batches_done,
    n_delivered, n_failed, n_read, n_replied, ttl_ms, expires_at, purged_at, paused_at, n_redriven, n_filtered,
    n_sent, n_skipped, fallback, approval_stages, recalled_at, frozen_audience";

/// Writes the bundle without its hash, in canonical form: members in key
/// order, which [`Obj`] checks in debug builds.
fn write_bundle(
    c: &mut Conn,
    workspace_id: i64,
    broadcast_id: i64,
    exported_at: i64,
    out: &mut Vec<u8>,
) -> Result<ExportSummary, StoreError> {
    let b = c
        .query_opt(
            &format!("SELECT {BROADCAST_COLUMNS} FROM broadcasts WHERE id = ? AND workspace_id = ?"),
            params![broadcast_id, workspace_id],
        )?
        .ok_or(StoreError::NotFound)?;
    let workspace = c.query_one("SELECT name, kind FROM workspaces WHERE id = ?", params![workspace_id])?;
    let subject = format!("broadcast:{broadcast_id}");
    let first_seq = c
        .query_one("SELECT MIN(seq) FROM audit_log WHERE chain = ? AND subject = ?", params![workspace_id, subject])?
        .opt_i64(0)
        .ok_or_else(|| StoreError::Corrupt(format!("broadcast {broadcast_id} has no audit entry")))?;
    let head = c.query_one("SELECT seq, hash FROM audit_heads WHERE chain = ?", params![workspace_id])?;
    let (head_seq, head_hash) = (head.i64(0), head.string(1));

    let mut top = Obj::open(out);
    top.key(out, "approvals");
    write_approvals(c, workspace_id, broadcast_id, out)?;
    top.key(out, "audience");
    let n_recipients = write_audience(c, workspace_id, b.opt_blob(32), out)?;
    top.key(out, "audit");
    let mut audit = Obj::open(out);
    audit.key(out, "entries");
    write_audit_range(c, workspace_id, first_seq, out)?;
    audit.key(out, "head");
    let mut h = Obj::open(out);
    h.key(out, "hash");
    write_str(out, &head_hash);
    h.key(out, "seq");
    write_int(out, head_seq);
    h.close(out);
    audit.close(out);
    top.key(out, "broadcast");
    write_broadcast(&b, broadcast_id, out);
    let content = b.str(2);
    top.key(out, "content");
    write_embedded(out, Some(content));
    top.key(out, "content_json");
    write_str(out, content);
    top.key(out, "content_sha256");
    write_str(out, &hex::encode(Sha256::digest(content.as_bytes())));
    top.key(out, "deliveries");
    let n_deliveries = write_deliveries(c, workspace_id, broadcast_id, out)?;
    top.key(out, "exported_at");
    write_int(out, exported_at);
    top.key(out, "format");
    write_str(out, FORMAT);
    top.key(out, "reports");
    write_reports(c, workspace_id, broadcast_id, out)?;
    top.key(out, "reviews");
    write_reviews(c, workspace_id, broadcast_id, out)?;
    top.key(out, "verdicts");
    write_embedded(out, b.opt_str(8));
    top.key(out, "workspace");
    let mut w = Obj::open(out);
    w.key(out, "id");
    write_id(out, workspace_id);
    w.key(out, "kind");
    write_str(out, workspace.str(1));
    w.key(out, "name");
    write_str(out, workspace.str(0));
    w.close(out);
    top.close(out);
    Ok(ExportSummary {
        bundle_sha256: String::new(),
        bytes: 0,
        n_recipients,
        n_deliveries,
        first_seq,
        head_seq,
        head_hash,
    })
}

/// The broadcast row (columns of [`BROADCAST_COLUMNS`]) without its content.
fn write_broadcast(b: &Row, id: i64, out: &mut Vec<u8>) {
    let mut o = Obj::open(out);
    o.key(out, "approval_stages");
    write_embedded(out, b.opt_str(30));
    o.key(out, "approved_at");
    write_opt_int(out, b.opt_i64(12));
    o.key(out, "approved_by");
    match b.opt_i64(11) {
        Some(m) => write_id(out, m),
        None => write_null(out),
    }
    o.key(out, "audience");
    write_embedded(out, Some(b.str(3)));
    o.key(out, "channels");
    write_embedded(out, Some(b.str(4)));
    o.key(out, "client_msg_id");
    write_opt_str(out, b.opt_str(6));
    o.key(out, "completed_at");
    write_opt_int(out, b.opt_i64(14));
    o.key(out, "counts");
    let mut counts = Obj::open(out);
    for (key, column) in [
        ("batches", 15),
        ("batches_done", 16),
        ("delivered", 17),
        ("failed", 18),
        ("filtered", 26),
        ("read", 19),
        ("redriven", 25),
        ("replied", 20),
        ("sent", 27),
        ("skipped", 28),
    ] {
        counts.key(out, key);
        write_int(out, b.i64(column));
    }
    counts.close(out);
    o.key(out, "created_at");
    write_int(out, b.i64(9));
    o.key(out, "dispatched_at");
    write_opt_int(out, b.opt_i64(13));
    o.key(out, "expires_at");
    write_opt_int(out, b.opt_i64(22));
    o.key(out, "fallback");
    write_embedded(out, b.opt_str(29));
    o.key(out, "id");
    write_id(out, id);
    o.key(out, "member_id");
    write_id(out, b.i64(0));
    o.key(out, "n_recipients");
    write_int(out, b.i64(7));
    o.key(out, "paused_at");
    write_opt_int(out, b.opt_i64(24));
    o.key(out, "priority");
    write_str(out, qunfa_core::broadcast::Priority::from_i64(b.i64(5)).as_str());
    o.key(out, "purged_at");
    write_opt_int(out, b.opt_i64(23));
    o.key(out, "recalled_at");
    write_opt_int(out, b.opt_i64(31));
    o.key(out, "state");
    write_str(out, b.str(1));
    o.key(out, "submitted_at");
    write_opt_int(out, b.opt_i64(10));
    o.key(out, "ttl_ms");
    write_opt_int(out, b.opt_i64(21));
    o.close(out);
}

/// `{bitmap, contact_ids, count, external_ids, sha256}`: the stored frozen
/// audience (hex), its members as public contact ids with their external ids
/// (`null` for a contact deleted since), and the bitmap's SHA-256 as
/// `broadcast.dispatched` audits it. Returns the number of members.
fn write_audience(
    c: &mut Conn,
    workspace_id: i64,
    frozen: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> Result<u64, StoreError> {
    let members = match frozen {
        Some(bytes) => qunfa_audience::decode(bytes)
            .ok_or_else(|| StoreError::Corrupt("the frozen audience is not a roaring bitmap".into()))?
            .to_vec(),
        None => Vec::new(),
    };
    let mut o = Obj::open(out);
    o.key(out, "bitmap");
    match frozen {
        Some(bytes) => write_str(out, &hex::encode(bytes)),
        None => write_null(out),
    }
    o.key(out, "contact_ids");
    // The external ids are written beside, to follow the ids in key order.
    let mut external_ids = Vec::with_capacity(members.len() * 12 + 2);
    out.push(b'[');
    external_ids.push(b'[');
    for (n, batch) in members.chunks(LOOKUP).enumerate() {
        let found = external_ids_of(c, workspace_id, batch)?;
        for (i, (idx, external_id)) in batch.iter().zip(found).enumerate() {
            if n > 0 || i > 0 {
                out.push(b',');
                external_ids.push(b',');
            }
            write_id(out, contact_public_id(workspace_id, *idx));
            match external_id {
                Some(e) => write_str(&mut external_ids, &e),
                None => write_null(&mut external_ids),
            }
        }
    }
    out.push(b']');
    external_ids.push(b']');
    o.key(out, "count");
    write_int(out, members.len() as i64);
    o.key(out, "external_ids");
    out.extend_from_slice(&external_ids);
    o.key(out, "sha256");
    match frozen {
        Some(bytes) => write_str(out, &hex::encode(Sha256::digest(bytes))),
        None => write_null(out),
    }
    o.close(out);
    Ok(members.len() as u64)
}

/// External ids of `batch` (sorted contact ids), `None` for deleted contacts.
/// A dense batch is one range scan; a sparse one is looked up by id, the
/// list padded to one statement shape.
fn external_ids_of(c: &mut Conn, workspace_id: i64, batch: &[u32]) -> Result<Vec<Option<String>>, StoreError> {
    let (Some(&lo), Some(&hi)) = (batch.first(), batch.last()) else { return Ok(Vec::new()) };
    let rows = if ((hi - lo) as usize) < 2 * batch.len() {
        c.query(
            "SELECT idx, external_id, deleted_at FROM contacts WHERE workspace_id = ? AND idx >= ? AND idx <= ?",
            params![workspace_id, lo, hi],
        )?
    } else {
        static SQL: OnceLock<String> = OnceLock::new();
        let sql = SQL.get_or_init(|| {
            format!(
                "SELECT idx, external_id, deleted_at FROM contacts WHERE workspace_id = ? AND idx IN ({})",
                vec!["?"; LOOKUP].join(", ")
            )
        });
        let mut values = Vec::with_capacity(LOOKUP + 1);
        values.push(Value::Int(workspace_id));
        values.extend((0..LOOKUP).map(|i| Value::Int(i64::from(batch[i.min(batch.len() - 1)]))));
        c.query(sql, &values)?
    };
    let mut found = vec![None; batch.len()];
    for r in rows {
        if let Ok(rank) = batch.binary_search(&(r.i64(0) as u32)) {
            if r.opt_i64(2).is_none() {
                found[rank] = Some(r.string(1));
            }
        }
    }
    Ok(found)
}

/// The audit entries of the workspace's chain from `first_seq` on, oldest first.
fn write_audit_range(c: &mut Conn, workspace_id: i64, first_seq: i64, out: &mut Vec<u8>) -> Result<(), StoreError> {
    out.push(b'[');
    let mut first = true;
    c.for_each_row(
        "SELECT chain, seq, at, actor, action, subject, details, prev_hash, hash FROM audit_log
         WHERE chain = ? AND seq >= ? ORDER BY seq",
        params![workspace_id, first_seq],
        &mut |r| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            let mut o = Obj::open(out);
            o.key(out, "action");
            write_str(out, r.str(4));
            o.key(out, "actor");
            write_str(out, r.str(3));
            o.key(out, "at");
            write_int(out, r.i64(2));
            o.key(out, "chain");
            write_int(out, r.i64(0));
            // The exact text that was hashed, not a parsed copy.
            o.key(out, "details");
            write_str(out, r.str(6));
            o.key(out, "hash");
            write_str(out, r.str(8));
            o.key(out, "prev_hash");
            write_str(out, r.str(7));
            o.key(out, "seq");
            write_int(out, r.i64(1));
            o.key(out, "subject");
            write_str(out, r.str(5));
            o.close(out);
            Ok(())
        },
    )?;
    out.push(b']');
    Ok(())
}

/// `{columns, rows}`: one row per delivery record, without the rendered body.
fn write_deliveries(c: &mut Conn, workspace_id: i64, broadcast_id: i64, out: &mut Vec<u8>) -> Result<u64, StoreError> {
    let mut o = Obj::open(out);
    o.key(out, "columns");
    out.push(b'[');
    for (i, column) in DELIVERY_COLUMNS.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, column);
    }
    out.push(b']');
    o.key(out, "rows");
    out.push(b'[');
    let mut n = 0u64;
    c.for_each_row(
        "SELECT channel, contact_idx, state, attempts, error_code, last_error, queued_at, sent_at, delivered_at, read_at, replied_at
         FROM deliveries WHERE broadcast_id = ? ORDER BY channel, contact_idx",
        params![broadcast_id],
        &mut |r| {
            if n > 0 {
                out.push(b',');
            }
            n += 1;
            out.push(b'[');
            write_str(out, r.str(0));
            out.push(b',');
            write_id(out, contact_public_id(workspace_id, r.i64(1) as u32));
            out.push(b',');
            write_str(out, r.str(2));
            out.push(b',');
            write_int(out, r.i64(3));
            out.push(b',');
            write_opt_str(out, r.opt_str(4));
            out.push(b',');
            write_opt_str(out, r.opt_str(5));
            for column in 6..=10 {
                out.push(b',');
                write_opt_int(out, r.opt_i64(column));
            }
            out.push(b']');
            Ok(())
        },
    )?;
    out.push(b']');
    o.close(out);
    Ok(n)
}

/// Every decision on the broadcast's approval stages.
fn write_approvals(c: &mut Conn, workspace_id: i64, broadcast_id: i64, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let rows = c.query(
        "SELECT id, stage, member_id, decision, comment, at FROM approvals WHERE workspace_id = ? AND broadcast_id = ? ORDER BY id",
        params![workspace_id, broadcast_id],
    )?;
    write_list(out, &rows, |out, r| {
        let mut o = Obj::open(out);
        o.key(out, "at");
        write_int(out, r.i64(5));
        o.key(out, "comment");
        write_str(out, r.str(4));
        o.key(out, "decision");
        write_str(out, r.str(3));
        o.key(out, "id");
        write_id(out, r.i64(0));
        o.key(out, "member_id");
        write_id(out, r.i64(2));
        o.key(out, "stage");
        write_str(out, r.str(1));
        o.close(out);
    });
    Ok(())
}

/// The content check's reviews of the broadcast.
fn write_reviews(c: &mut Conn, workspace_id: i64, broadcast_id: i64, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let rows = c.query(
        "SELECT id, text, hits, risk, sampled, lexicon_version, state, reason, decided_by, decided_at, created_at
         FROM safety_reviews WHERE workspace_id = ? AND broadcast_id = ? ORDER BY id",
        params![workspace_id, broadcast_id],
    )?;
    write_list(out, &rows, |out, r| {
        let mut o = Obj::open(out);
        o.key(out, "created_at");
        write_int(out, r.i64(10));
        o.key(out, "decided_at");
        write_opt_int(out, r.opt_i64(9));
        o.key(out, "decided_by");
        write_opt_str(out, r.opt_str(8));
        o.key(out, "hits");
        write_embedded(out, Some(r.str(2)));
        o.key(out, "id");
        write_id(out, r.i64(0));
        o.key(out, "lexicon_version");
        write_str(out, r.str(5));
        o.key(out, "reason");
        write_str(out, r.str(7));
        o.key(out, "risk");
        write_json(out, &r.f64(3));
        o.key(out, "sampled");
        write_json(out, &(r.i64(4) != 0));
        o.key(out, "state");
        write_str(out, r.str(6));
        o.key(out, "text");
        write_str(out, r.str(1));
        o.close(out);
    });
    Ok(())
}

/// Recipients' reports of the broadcast (spam, fraud, …).
fn write_reports(c: &mut Conn, workspace_id: i64, broadcast_id: i64, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let rows = c.query(
        "SELECT id, contact_idx, reason, created_at FROM reports WHERE workspace_id = ? AND broadcast_id = ? ORDER BY id",
        params![workspace_id, broadcast_id],
    )?;
    write_list(out, &rows, |out, r| {
        let mut o = Obj::open(out);
        o.key(out, "contact_id");
        write_id(out, contact_public_id(workspace_id, r.i64(1) as u32));
        o.key(out, "created_at");
        write_int(out, r.i64(3));
        o.key(out, "id");
        write_id(out, r.i64(0));
        o.key(out, "reason");
        write_str(out, r.str(2));
        o.close(out);
    });
    Ok(())
}

fn write_list(out: &mut Vec<u8>, rows: &[Row], mut item: impl FnMut(&mut Vec<u8>, &Row)) {
    out.push(b'[');
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        item(out, r);
    }
    out.push(b']');
}

/// An object written member by member. Keys must come in canonical (byte)
/// order; debug builds check it, and every test that verifies an export
/// would fail on a misplaced key.
struct Obj {
    last: Option<&'static str>,
}

impl Obj {
    fn open(out: &mut Vec<u8>) -> Obj {
        out.push(b'{');
        Obj { last: None }
    }

    fn key(&mut self, out: &mut Vec<u8>, key: &'static str) {
        if let Some(last) = self.last {
            debug_assert!(last < key, "evidence keys out of order: {last:?} before {key:?}");
            out.push(b',');
        }
        self.last = Some(key);
        write_str(out, key);
        out.push(b':');
    }

    fn close(self, out: &mut Vec<u8>) {
        out.push(b'}');
    }
}

/// A JSON string as serde_json writes it: the canonical escaping.
fn write_str(out: &mut Vec<u8>, s: &str) {
    write_json(out, s);
}

fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing a string, number or boolean to memory cannot fail.
    serde_json::to_writer(&mut *out, value).expect("serializing a scalar to memory");
}

fn write_null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"null");
}

fn write_int(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn write_opt_int(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        Some(v) => write_int(out, v),
        None => write_null(out),
    }
}

fn write_opt_str(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(v) => write_str(out, v),
        None => write_null(out),
    }
}

/// An id as the API shows it: a decimal string (JavaScript loses 64-bit numbers).
fn write_id(out: &mut Vec<u8>, id: i64) {
    out.push(b'"');
    write_int(out, id);
    out.push(b'"');
}

/// A stored JSON text as a JSON value (a text that is not JSON as a string).
fn write_embedded(out: &mut Vec<u8>, text: Option<&str>) {
    match text.map(|t| canonical_json(t.as_bytes())) {
        None => write_null(out),
        Some(Ok(canonical)) => out.extend_from_slice(&canonical),
        Some(Err(_)) => write_str(out, text.unwrap_or_default()),
    }
}

/// The canonical form of a JSON text, which `bundle_sha256` hashes: no
/// whitespace, object members sorted by key (byte order of the UTF-8 key,
/// which is code-point order), strings escaped as serde_json writes them
/// (only `"`, `\` and control characters; `\b \f \n \r \t` short, others as
/// `\u00xx`), numbers exactly as written (no float is parsed, so none is
/// rounded), `true`, `false`, `null`. Duplicate keys are refused.
///
/// # Errors
/// What is wrong and where (a byte offset) when `input` is not JSON.
pub fn canonical_json(input: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(input.len());
    Canon::new(input, None)?.document(&mut out)?;
    Ok(out)
}

/// Deepest nesting the canonicaliser follows (the bundle needs 5 levels
/// plus what stored JSON adds).
const MAX_DEPTH: usize = 128;

/// A recursive-descent reader that writes the canonical form as it reads.
struct Canon<'a> {
    text: &'a str,
    bytes: &'a [u8],
    i: usize,
    depth: usize,
    /// A member of the top-level object to leave out, and its canonical value.
    drop_key: Option<&'a str>,
    dropped: Option<Vec<u8>>,
}

impl<'a> Canon<'a> {
    fn new(input: &'a [u8], drop_key: Option<&'a str>) -> Result<Self, String> {
        let text = std::str::from_utf8(input).map_err(|e| format!("not UTF-8 at byte {}", e.valid_up_to()))?;
        Ok(Canon { text, bytes: input, i: 0, depth: 0, drop_key, dropped: None })
    }

    fn document(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        self.value(out, true)?;
        self.skip_ws();
        if self.i != self.bytes.len() {
            return Err(self.error("trailing characters"));
        }
        Ok(())
    }

    fn error(&self, what: &str) -> String {
        format!("{what} at byte {}", self.i)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        self.skip_ws();
        if self.peek() != Some(byte) {
            return Err(self.error(&format!("expected '{}'", byte as char)));
        }
        self.i += 1;
        Ok(())
    }

    fn value(&mut self, out: &mut Vec<u8>, top: bool) -> Result<(), String> {
        self.skip_ws();
        match self.peek() {
            Some(b'{') | Some(b'[') => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(self.error("nested too deep"));
                }
                if self.peek() == Some(b'{') {
                    self.object(out, top)?;
                } else {
                    self.array(out)?;
                }
                self.depth -= 1;
                Ok(())
            }
            Some(b'"') => {
                let s = self.string()?;
                write_str(out, &s);
                Ok(())
            }
            Some(b't') => self.literal(out, "true"),
            Some(b'f') => self.literal(out, "false"),
            Some(b'n') => self.literal(out, "null"),
            Some(b'-' | b'0'..=b'9') => self.number(out),
            Some(_) => Err(self.error("unexpected character")),
            None => Err(self.error("unexpected end")),
        }
    }

    fn object(&mut self, out: &mut Vec<u8>, top: bool) -> Result<(), String> {
        self.i += 1;
        let start = out.len();
        out.push(b'{');
        // Members are written as they come; only when their keys are not
        // already in order are they rearranged (our own files never are).
        let mut members: Vec<(Cow<'a, str>, usize, usize)> = Vec::new();
        let mut in_order = true;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            out.push(b'}');
            return Ok(());
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a key"));
            }
            let key = self.string()?;
            self.expect(b':')?;
            if top && self.drop_key == Some(&*key) {
                let mut value = Vec::new();
                self.value(&mut value, false)?;
                if self.dropped.replace(value).is_some() {
                    return Err(self.error(&format!("duplicate key {key:?}")));
                }
            } else {
                if !members.is_empty() {
                    out.push(b',');
                }
                let member_start = out.len();
                write_str(out, &key);
                out.push(b':');
                self.value(out, false)?;
                if members.last().is_some_and(|(last, _, _)| *last >= key) {
                    in_order = false;
                }
                members.push((key, member_start, out.len()));
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    break;
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
        if !in_order {
            let body = out.split_off(start + 1);
            let base = start + 1;
            members.sort_by(|a, b| a.0.cmp(&b.0));
            if let Some(w) = members.windows(2).find(|w| w[0].0 == w[1].0) {
                return Err(format!("duplicate key {:?} in the object at byte {start}", w[0].0));
            }
            for (n, (_, from, to)) in members.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&body[from - base..to - base]);
            }
        }
        out.push(b'}');
        Ok(())
    }

    fn array(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        self.i += 1;
        out.push(b'[');
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            out.push(b']');
            return Ok(());
        }
        loop {
            self.value(out, false)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    out.push(b',');
                }
                Some(b']') => {
                    self.i += 1;
                    break;
                }
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
        out.push(b']');
        Ok(())
    }

    /// A string token, unescaped (borrowed when it has no escapes).
    fn string(&mut self) -> Result<Cow<'a, str>, String> {
        self.i += 1;
        let start = self.i;
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(Cow::Borrowed(&self.text[start..self.i - 1]));
                }
                Some(b'\\') => break,
                Some(c) if c < 0x20 => return Err(self.error("control character in a string")),
                Some(_) => self.i += 1,
            }
        }
        let mut s = String::from(&self.text[start..self.i]);
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(Cow::Owned(s));
                }
                Some(b'\\') => {
                    self.i += 1;
                    let escaped = self.peek();
                    self.i += 1;
                    match escaped {
                        Some(b'"') => s.push('"'),
                        Some(b'\\') => s.push('\\'),
                        Some(b'/') => s.push('/'),
                        Some(b'b') => s.push('\u{8}'),
                        Some(b'f') => s.push('\u{c}'),
                        Some(b'n') => s.push('\n'),
                        Some(b'r') => s.push('\r'),
                        Some(b't') => s.push('\t'),
                        Some(b'u') => {
                            let unit = self.hex4()?;
                            let code = match unit {
                                0xD800..=0xDBFF => {
                                    if !self.text[self.i..].starts_with("\\u") {
                                        return Err(self.error("lone surrogate"));
                                    }
                                    self.i += 2;
                                    let low = self.hex4()?;
                                    if !(0xDC00..=0xDFFF).contains(&low) {
                                        return Err(self.error("lone surrogate"));
                                    }
                                    0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                                }
                                0xDC00..=0xDFFF => return Err(self.error("lone surrogate")),
                                _ => unit,
                            };
                            s.push(char::from_u32(code).ok_or_else(|| self.error("bad \\u escape"))?);
                        }
                        _ => return Err(self.error("bad escape")),
                    }
                }
                Some(c) if c < 0x20 => return Err(self.error("control character in a string")),
                Some(_) => {
                    let run = self.i;
                    while self.peek().is_some_and(|c| c != b'"' && c != b'\\' && c >= 0x20) {
                        self.i += 1;
                    }
                    s.push_str(&self.text[run..self.i]);
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self.text.get(self.i..self.i + 4).ok_or_else(|| self.error("bad \\u escape"))?;
        let v = u32::from_str_radix(digits, 16).map_err(|_| self.error("bad \\u escape"))?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.error("bad \\u escape"));
        }
        self.i += 4;
        Ok(v)
    }

    fn literal(&mut self, out: &mut Vec<u8>, word: &str) -> Result<(), String> {
        if !self.text[self.i..].starts_with(word) {
            return Err(self.error("unexpected word"));
        }
        self.i += word.len();
        out.extend_from_slice(word.as_bytes());
        Ok(())
    }

    fn number(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("bad number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                return Err(self.error("bad number"));
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                return Err(self.error("bad number"));
            }
            self.digits();
        }
        out.extend_from_slice(&self.bytes[start..self.i]);
        Ok(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
    }
}

/// What a verified bundle shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub workspace_id: i64,
    pub broadcast_id: i64,
    pub exported_at: i64,
    /// The audit range, first and last (= the head at export) entry.
    pub first_seq: i64,
    pub head_seq: i64,
    pub head_hash: String,
    /// The hash the range's first entry links to (the entry before it).
    pub linked_to: String,
    pub content: ContentCheck,
    pub audience: AudienceCheck,
    pub n_deliveries: usize,
    pub n_approvals: usize,
    pub n_reviews: usize,
    pub n_reports: usize,
    pub bundle_sha256: String,
}

/// How the content was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentCheck {
    /// It hashes to what the `broadcast.created` entry `seq` recorded.
    Matches { created_seq: i64 },
    /// Retention removed it (entry `purged_seq`, `broadcast.purged`); the
    /// chain still holds its hash (entry `created_seq`).
    Purged { created_seq: i64, purged_seq: i64 },
}

/// How the audience was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudienceCheck {
    /// The bitmap hashes to what the `broadcast.dispatched` entry `seq`
    /// recorded, and the listed contacts are exactly its members.
    Matches { dispatched_seq: i64, count: u64 },
    /// Never dispatched: no audience was frozen.
    NotDispatched,
}

/// Why a bundle does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("not a qunfa evidence bundle: {0}")]
    Malformed(String),
    #[error("the format is {0:?}; this verifier reads {FORMAT}")]
    Format(String),
    #[error("the bundle has no audit entries")]
    NoAuditEntries,
    #[error("audit entry {seq} is from chain {chain}, not the chain of workspace {workspace_id}")]
    AuditWrongChain { seq: i64, chain: i64, workspace_id: i64 },
    #[error("audit entries skip from {after} to {next}: entries were removed or reordered")]
    AuditGap { after: i64, next: i64 },
    #[error("audit entry {seq} does not link to the entry before it: an entry was changed, inserted or removed")]
    AuditLinkBroken { seq: i64 },
    #[error("audit entry {seq} ({action}) was changed: its fields do not hash to its recorded hash")]
    AuditEntryAltered { seq: i64, action: String },
    #[error("the audit range ends at entry {last_seq} ({last_hash}), but the chain's head at export was entry {head_seq} ({head_hash})")]
    AuditHead { last_seq: i64, last_hash: String, head_seq: i64, head_hash: String },
    #[error("the audit range does not start with the `broadcast.created` entry of broadcast {broadcast_id}")]
    AuditStart { broadcast_id: i64 },
    #[error("audit entry {seq} ({action}) has no {field} in its details")]
    AuditDetails { seq: i64, action: &'static str, field: &'static str },
    #[error("the content was changed: content_json hashes to {actual}, but audit entry {seq} (broadcast.created) recorded {recorded}")]
    ContentHash { seq: i64, recorded: String, actual: String },
    #[error("content_sha256 is {stated}, but content_json hashes to {actual}")]
    ContentHashField { stated: String, actual: String },
    #[error("`content` was changed: it is not what `content_json` (the stored text the audit chain hashes) says")]
    ContentMismatch,
    #[error("the content was purged (audit entry {purged_seq}) but the bundle holds content")]
    PurgedContent { purged_seq: i64 },
    #[error("the frozen audience was changed: the bitmap hashes to {actual}, but audit entry {seq} (broadcast.dispatched) recorded {recorded}")]
    AudienceHash { seq: i64, recorded: String, actual: String },
    #[error("the audience list does not match the frozen audience the audit chain attests: {0}")]
    AudienceList(String),
    #[error("the delivery log does not fit the audience: {0}")]
    Deliveries(String),
    #[error("the bundle was changed after export: bundle_sha256 is {stated}, but the bundle hashes to {actual}")]
    BundleHash { stated: String, actual: String },
}

/// Verifies a bundle (the bytes of the file), with no I/O. Checks run from
/// what the audit chain anchors to what only `bundle_sha256` covers, so a
/// changed content, entry or audience is named as such even when the
/// tamperer also recomputed `bundle_sha256`.
///
/// What this proves is that the bundle is consistent with a chain that ends
/// at `audit.head`; that the head is the server's own is checked against the
/// server (its chain still has that entry, and the `broadcast.evidence_exported`
/// entry after it records `bundle_sha256`).
///
/// # Errors
/// The first [`Problem`] found.
pub fn verify_bundle(bytes: &[u8]) -> Result<Verified, Problem> {
    let mut canon = Canon::new(bytes, Some(HASH_KEY)).map_err(Problem::Malformed)?;
    let mut canonical = Vec::with_capacity(bytes.len());
    canon.document(&mut canonical).map_err(Problem::Malformed)?;
    // Another format may not parse as this one: its name is the better message.
    let format_problem = |e: serde_json::Error| match serde_json::from_slice::<FormatView>(bytes) {
        Ok(FormatView { format: Some(f) }) if f != FORMAT => Problem::Format(f),
        _ => Problem::Malformed(e.to_string()),
    };
    let b: BundleView = serde_json::from_slice(bytes).map_err(format_problem)?;
    if b.format != FORMAT {
        return Err(Problem::Format(b.format));
    }
    let workspace_id = parse_id(&b.workspace.id, "workspace.id")?;
    let broadcast_id = parse_id(&b.broadcast.id, "broadcast.id")?;
    let subject = format!("broadcast:{broadcast_id}");

    // The chain: every hash, every link, ending at the recorded head.
    let entries = &b.audit.entries;
    let first = entries.first().ok_or(Problem::NoAuditEntries)?;
    for (i, e) in entries.iter().enumerate() {
        if e.chain != workspace_id {
            return Err(Problem::AuditWrongChain { seq: e.seq, chain: e.chain, workspace_id });
        }
        if i > 0 {
            let prev = &entries[i - 1];
            if e.seq != prev.seq + 1 {
                return Err(Problem::AuditGap { after: prev.seq, next: e.seq });
            }
            if e.prev_hash != prev.hash {
                return Err(Problem::AuditLinkBroken { seq: e.seq });
            }
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
            return Err(Problem::AuditEntryAltered { seq: e.seq, action: e.action.clone() });
        }
    }
    let last = entries.last().unwrap_or(first);
    if last.seq != b.audit.head.seq || last.hash != b.audit.head.hash {
        return Err(Problem::AuditHead {
            last_seq: last.seq,
            last_hash: last.hash.clone(),
            head_seq: b.audit.head.seq,
            head_hash: b.audit.head.hash.clone(),
        });
    }
    if first.action != "broadcast.created" || first.subject != subject {
        return Err(Problem::AuditStart { broadcast_id });
    }
    let about = |action: &str| entries.iter().rev().find(|e| e.subject == subject && e.action == action);

    // The content, against the hash the chain kept of it.
    let actual = hex::encode(Sha256::digest(b.content_json.as_bytes()));
    let recorded = detail(first, "broadcast.created", "content_sha256")?;
    let content = match about("broadcast.purged") {
        Some(purged) if actual != recorded => {
            if b.content_json != PURGED_CONTENT {
                return Err(Problem::PurgedContent { purged_seq: purged.seq });
            }
            ContentCheck::Purged { created_seq: first.seq, purged_seq: purged.seq }
        }
        _ if actual != recorded => return Err(Problem::ContentHash { seq: first.seq, recorded, actual }),
        _ => ContentCheck::Matches { created_seq: first.seq },
    };
    if b.content_sha256 != actual {
        return Err(Problem::ContentHashField { stated: b.content_sha256, actual });
    }
    let stated_content = serde_json::from_str::<serde_json::Value>(&b.content_json)
        .unwrap_or_else(|_| serde_json::Value::String(b.content_json.clone()));
    if stated_content != b.content {
        return Err(Problem::ContentMismatch);
    }

    // The audience, against the hash of the bitmap frozen at dispatch.
    let a = &b.audience;
    let mut contact_ids: Vec<u64> = Vec::new();
    let audience = match about("broadcast.dispatched") {
        None => {
            if a.count != 0 || !a.contact_ids.is_empty() || a.bitmap.is_some() {
                return Err(Problem::AudienceList(
                    "the broadcast was never dispatched, but the bundle lists an audience".into(),
                ));
            }
            AudienceCheck::NotDispatched
        }
        Some(dispatched) => {
            let recorded = detail(dispatched, "broadcast.dispatched", "audience_sha256")?;
            let bitmap = a
                .bitmap
                .as_deref()
                .ok_or_else(|| Problem::AudienceList("the frozen audience (bitmap) is missing".into()))?;
            let bitmap = hex::decode(bitmap).map_err(|_| Problem::AudienceList("the bitmap is not hex".into()))?;
            let actual = hex::encode(Sha256::digest(&bitmap));
            if actual != recorded {
                return Err(Problem::AudienceHash { seq: dispatched.seq, recorded, actual });
            }
            if a.sha256.as_deref() != Some(actual.as_str()) {
                return Err(Problem::AudienceList(format!(
                    "audience.sha256 is {:?}, the bitmap hashes to {actual}",
                    a.sha256
                )));
            }
            let members = qunfa_audience::decode(&bitmap)
                .ok_or_else(|| Problem::AudienceList("the bitmap is not a roaring bitmap".into()))?
                .to_vec();
            contact_ids = members.iter().map(|idx| contact_public_id(workspace_id, *idx) as u64).collect();
            for (rank, want) in contact_ids.iter().enumerate() {
                match a.contact_ids.get(rank) {
                    Some(got) if got.parse::<u64>().ok() == Some(*want) => {}
                    Some(got) => {
                        return Err(Problem::AudienceList(format!(
                            "contact_ids[{rank}] is {got}, the frozen audience has {want} there"
                        )))
                    }
                    None => {
                        return Err(Problem::AudienceList(format!(
                            "contact {want} of the frozen audience is missing from contact_ids"
                        )))
                    }
                }
            }
            if a.contact_ids.len() != contact_ids.len() {
                return Err(Problem::AudienceList(format!(
                    "contact_ids has {} contacts, the frozen audience {}",
                    a.contact_ids.len(),
                    contact_ids.len()
                )));
            }
            let n = contact_ids.len() as u64;
            if a.count != n || a.external_ids.0 != contact_ids.len() {
                return Err(Problem::AudienceList(format!(
                    "count is {} and external_ids has {}, the frozen audience {n}",
                    a.count, a.external_ids.0
                )));
            }
            let details = serde_json::from_str::<serde_json::Value>(&dispatched.details).unwrap_or_default();
            if details["n_recipients"].as_u64() != Some(n) {
                return Err(Problem::AudienceList(format!(
                    "audit entry {} recorded {} recipients, the bitmap has {n}",
                    dispatched.seq, details["n_recipients"]
                )));
            }
            AudienceCheck::Matches { dispatched_seq: dispatched.seq, count: n }
        }
    };

    // Delivery records: only to members of the audience, one per channel.
    let d = &b.deliveries;
    if d.columns != DELIVERY_COLUMNS {
        return Err(Problem::Deliveries(format!("the columns are {:?}, not {DELIVERY_COLUMNS:?}", d.columns)));
    }
    let mut pairs: Vec<(&str, u64)> = Vec::with_capacity(d.rows.len());
    for (n, row) in d.rows.iter().enumerate() {
        if row.n_columns != DELIVERY_COLUMNS.len() {
            return Err(Problem::Deliveries(format!("row {n} has {} columns", row.n_columns)));
        }
        if contact_ids.binary_search(&row.contact_id).is_err() {
            return Err(Problem::Deliveries(format!(
                "row {n} ({}, contact {}) is for a contact outside the frozen audience",
                row.channel, row.contact_id
            )));
        }
        pairs.push((row.channel.as_str(), row.contact_id));
    }
    pairs.sort_unstable();
    if let Some(w) = pairs.windows(2).find(|w| w[0] == w[1]) {
        return Err(Problem::Deliveries(format!("two records for contact {} on {}", w[0].1, w[0].0)));
    }

    // Last, what only the bundle's own hash covers.
    let actual = hex::encode(Sha256::digest(&canonical));
    if b.bundle_sha256 != actual {
        return Err(Problem::BundleHash { stated: b.bundle_sha256, actual });
    }
    Ok(Verified {
        workspace_id,
        broadcast_id,
        exported_at: b.exported_at,
        first_seq: first.seq,
        head_seq: last.seq,
        head_hash: last.hash.clone(),
        linked_to: first.prev_hash.clone(),
        content,
        audience,
        n_deliveries: d.rows.len(),
        n_approvals: b.approvals.0,
        n_reviews: b.reviews.0,
        n_reports: b.reports.0,
        bundle_sha256: actual,
    })
}

fn parse_id(s: &str, what: &str) -> Result<i64, Problem> {
    s.parse().map_err(|_| Problem::Malformed(format!("{what} is not an id: {s:?}")))
}

/// A text field of an audit entry's details.
fn detail(e: &EntryView, action: &'static str, field: &'static str) -> Result<String, Problem> {
    serde_json::from_str::<serde_json::Value>(&e.details)
        .ok()
        .and_then(|d| d[field].as_str().map(str::to_owned))
        .ok_or(Problem::AuditDetails { seq: e.seq, action, field })
}

#[derive(Deserialize)]
struct FormatView {
    format: Option<String>,
}

/// The parts of a bundle the verifier reads (the rest is covered by the hash).
#[derive(Deserialize)]
struct BundleView {
    format: String,
    exported_at: i64,
    workspace: IdView,
    broadcast: IdView,
    content: serde_json::Value,
    content_json: String,
    content_sha256: String,
    audience: AudienceView,
    audit: AuditView,
    deliveries: DeliveriesView,
    approvals: Count,
    reviews: Count,
    reports: Count,
    bundle_sha256: String,
}

#[derive(Deserialize)]
struct IdView {
    id: String,
}

#[derive(Deserialize)]
struct AudienceView {
    bitmap: Option<String>,
    contact_ids: Vec<String>,
    count: u64,
    external_ids: Count,
    sha256: Option<String>,
}

#[derive(Deserialize)]
struct AuditView {
    entries: Vec<EntryView>,
    head: HeadView,
}

#[derive(Deserialize)]
struct HeadView {
    seq: i64,
    hash: String,
}

#[derive(Deserialize)]
struct EntryView {
    chain: i64,
    seq: i64,
    at: i64,
    actor: String,
    action: String,
    subject: String,
    details: String,
    prev_hash: String,
    hash: String,
}

#[derive(Deserialize)]
struct DeliveriesView {
    columns: Vec<String>,
    rows: Vec<DeliveryRowView>,
}

/// A delivery row as the verifier keeps it: its channel and contact (a
/// million rows are not kept whole).
struct DeliveryRowView {
    channel: String,
    contact_id: u64,
    n_columns: usize,
}

impl<'de> Deserialize<'de> for DeliveryRowView {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = DeliveryRowView;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a delivery row: [channel, contact_id, …]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DeliveryRowView, A::Error> {
                let channel: String = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let contact_id: String = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(1, &self))?;
                let contact_id = contact_id
                    .parse()
                    .map_err(|_| de::Error::custom(format!("contact_id {contact_id:?} is not an id")))?;
                let mut n_columns = 2;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n_columns += 1;
                }
                Ok(DeliveryRowView { channel, contact_id, n_columns })
            }
        }
        d.deserialize_seq(RowVisitor)
    }
}

/// The length of a list whose items the verifier does not read.
struct Count(usize);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CountVisitor;
        impl<'de> Visitor<'de> for CountVisitor {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Count(n))
            }
        }
        d.deserialize_seq(CountVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        match canonical_json(s.as_bytes()) {
            Ok(c) => String::from_utf8(c).unwrap(),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn canonical_form() {
        assert_eq!(
            canon(r#" { "b" : 1, "a" : [ 1.50, -0, 2e10, true, null ], "c": {"y": "", "x": {}} } "#),
            r#"{"a":[1.50,-0,2e10,true,null],"b":1,"c":{"x":{},"y":""}}"#
        );
        // Escapes become serde_json's: only what must be escaped, short forms.
        assert_eq!(canon(r#"["\u00e9\/\u0001\n", "\ud83d\ude00", "群发"]"#), "[\"é/\\u0001\\n\",\"😀\",\"群发\"]");
        // Keys sort by bytes (code points), after unescaping.
        assert_eq!(canon(r#"{"\u00e9":1,"z":2,"a":3}"#), r#"{"a":3,"z":2,"é":1}"#);
        assert_eq!(canon(r#"{"a":1,"a":2}"#), r#"error: duplicate key "a" in the object at byte 0"#);
        assert_eq!(canon(r#"{"a":1,"b":2,"a":2}"#), r#"error: duplicate key "a" in the object at byte 0"#);
        for bad in ["", "{", "[1,]", "01", "1.", "\"\\ud800\"", "\"a\nb\"", "tru", "{} x", "{\"a\" 1}", "-"] {
            assert!(canon(bad).starts_with("error:"), "{bad:?} → {}", canon(bad));
        }
        assert!(canon(&"[".repeat(200)).contains("nested too deep"));
        // Canonical input comes out unchanged.
        let c = canon(r#"{"a":[{"k":"v"}],"b":"\"\\"}"#);
        assert_eq!(canon(&c), c);
    }

    /// The bitmap of a set is not one byte string: CRoaring chooses
    /// containers (run containers after `run_optimize`, as the audience index
    /// keeps them), so the verifier hashes the stored bytes it is given and
    /// checks their members, rather than re-encoding the contact ids.
    #[test]
    fn a_set_has_more_than_one_serialization() {
        let ids: Vec<u32> = (0..10_000).collect();
        let plain = qunfa_audience::Bitmap::of(&ids);
        let mut optimized = plain.clone();
        optimized.run_optimize();
        assert_eq!(plain.to_vec(), optimized.to_vec());
        assert_ne!(qunfa_audience::encode(&plain), qunfa_audience::encode(&optimized));
    }
}
