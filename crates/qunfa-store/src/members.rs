//! Membership of tags and departments, stored as roaring bitmaps over dense
//! contact ids: one row per set and 65,536-id chunk (`idx >> 16`), holding
//! the serialized members of that chunk and their count.
//!
//! A million contacts with two tags each is a few dozen rows instead of two
//! million, so imports and bulk tagging write little, counts are sums of a
//! column, and the audience index loads a workspace's sets without scanning.
//!
//! Every change bumps the workspace's `members_version` first: that update
//! locks the workspace row, so writers of one workspace change sets one at a
//! time (no lost read-modify-write on PostgreSQL), and each changed row
//! carries the version it was written at, in commit order per workspace, for
//! other nodes to catch up.

use std::collections::{BTreeMap, HashMap};

use qunfa_audience::Bitmap;

use crate::{params, Conn, StoreError, Value};

/// What a set is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetKind {
    Tag = 1,
    Department = 2,
}

impl SetKind {
    fn code(self) -> i64 {
        self as i64
    }
}

/// The chunk of a contact id: sets are stored per chunk.
fn chunk_of(idx: u32) -> u32 {
    idx >> 16
}

/// Reserves the next membership version of the workspace, locking its row
/// until the transaction ends.
pub(crate) fn bump_version(c: &mut Conn, workspace_id: i64) -> Result<i64, StoreError> {
    Ok(c.query_one(
        "UPDATE workspaces SET members_version = members_version + 1 WHERE id = ? RETURNING members_version",
        params![workspace_id],
    )?
    .i64(0))
}

/// Reads a stored membership chunk.
///
/// # Errors
/// `Corrupt` when the bytes are not a well-formed bitmap.
pub(crate) fn decode(bytes: &[u8]) -> Result<Bitmap, StoreError> {
    qunfa_audience::decode(bytes)
        .ok_or_else(|| StoreError::Corrupt(format!("a membership bitmap of {} bytes does not decode", bytes.len())))
}

fn encode(bits: &mut Bitmap) -> Vec<u8> {
    bits.run_optimize();
    qunfa_audience::encode(bits)
}

/// Splits ids by chunk.
fn by_chunk(ids: &Bitmap) -> BTreeMap<u32, Bitmap> {
    let mut out: BTreeMap<u32, Bitmap> = BTreeMap::new();
    for idx in ids.iter() {
        out.entry(chunk_of(idx)).or_default().add(idx);
    }
    out
}

/// Writes the members of one chunk. An emptied chunk keeps its row (with no
/// members) so that an index following versions sees the removal.
fn store_chunk(
    c: &mut Conn,
    workspace_id: i64,
    kind: SetKind,
    set_id: i64,
    chunk: u32,
    bits: &mut Bitmap,
    version: i64,
) -> Result<(), StoreError> {
    {
        c.execute(
            "INSERT INTO member_sets (workspace_id, kind, set_id, chunk, cardinality, bits, version)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (workspace_id, kind, set_id, chunk)
             DO UPDATE SET cardinality = excluded.cardinality, bits = excluded.bits, version = excluded.version",
            params![
                workspace_id,
                kind.code(),
                set_id,
                i64::from(chunk),
                bits.cardinality() as i64,
                Value::Blob(encode(bits)),
                version
            ],
        )?;
    }
    Ok(())
}

fn load_chunk(c: &mut Conn, workspace_id: i64, kind: SetKind, set_id: i64, chunk: u32) -> Result<Bitmap, StoreError> {
    match c.query_opt(
        "SELECT bits FROM member_sets WHERE workspace_id = ? AND kind = ? AND set_id = ? AND chunk = ?",
        params![workspace_id, kind.code(), set_id, i64::from(chunk)],
    )? {
        Some(r) => decode(r.blob(0)),
        None => Ok(Bitmap::new()),
    }
}

/// Adds (`add`) or removes contacts of sets; returns how many memberships
/// changed per set.
pub(crate) fn change(
    c: &mut Conn,
    workspace_id: i64,
    kind: SetKind,
    changes: &BTreeMap<i64, Bitmap>,
    add: bool,
) -> Result<BTreeMap<i64, u64>, StoreError> {
    let mut changed = BTreeMap::new();
    if changes.values().all(Bitmap::is_empty) {
        return Ok(changed);
    }
    let version = bump_version(c, workspace_id)?;
    for (&set_id, ids) in changes {
        let mut n = 0;
        for (chunk, part) in by_chunk(ids) {
            let mut bits = load_chunk(c, workspace_id, kind, set_id, chunk)?;
            let before = bits.cardinality();
            if add {
                bits |= part;
            } else {
                bits -= part;
            }
            if bits.cardinality() != before {
                n += bits.cardinality().abs_diff(before);
                store_chunk(c, workspace_id, kind, set_id, chunk, &mut bits, version)?;
            }
        }
        changed.insert(set_id, n);
    }
    Ok(changed)
}

/// Removes one contact from every set of a kind that holds it.
pub(crate) fn remove_everywhere(c: &mut Conn, workspace_id: i64, kind: SetKind, idx: u32) -> Result<(), StoreError> {
    let holding = sets_of(c, workspace_id, kind, idx)?;
    if holding.is_empty() {
        return Ok(());
    }
    let one = Bitmap::of(&[idx]);
    let changes = holding.into_iter().map(|s| (s, one.clone())).collect();
    change(c, workspace_id, kind, &changes, false)?;
    Ok(())
}

/// The sets of a kind that hold a contact, ascending.
pub(crate) fn sets_of(c: &mut Conn, workspace_id: i64, kind: SetKind, idx: u32) -> Result<Vec<i64>, StoreError> {
    let rows = c.query(
        "SELECT set_id, bits FROM member_sets WHERE workspace_id = ? AND kind = ? AND chunk = ? ORDER BY set_id",
        params![workspace_id, kind.code(), i64::from(chunk_of(idx))],
    )?;
    let mut out = Vec::new();
    for r in rows {
        if decode(r.blob(1))?.contains(idx) {
            out.push(r.i64(0));
        }
    }
    Ok(out)
}

/// The sets of a kind each of `idxs` is directly in: one query per chunk of
/// 65,536 contact ids, whatever the number of contacts.
pub(crate) fn sets_of_many(
    c: &mut Conn,
    workspace_id: i64,
    kind: SetKind,
    idxs: &[u32],
) -> Result<HashMap<u32, Vec<i64>>, StoreError> {
    let mut out: HashMap<u32, Vec<i64>> = HashMap::with_capacity(idxs.len());
    let mut chunks: Vec<u32> = idxs.iter().map(|i| chunk_of(*i)).collect();
    chunks.sort_unstable();
    chunks.dedup();
    for chunk in chunks {
        let rows = c.query(
            "SELECT set_id, bits FROM member_sets WHERE workspace_id = ? AND kind = ? AND chunk = ? ORDER BY set_id",
            params![workspace_id, kind.code(), i64::from(chunk)],
        )?;
        let sets = rows.iter().map(|r| Ok((r.i64(0), decode(r.blob(1))?))).collect::<Result<Vec<_>, StoreError>>()?;
        for idx in idxs.iter().filter(|i| chunk_of(**i) == chunk) {
            let mine: Vec<i64> = sets.iter().filter(|(_, bits)| bits.contains(*idx)).map(|(id, _)| *id).collect();
            if !mine.is_empty() {
                out.insert(*idx, mine);
            }
        }
    }
    Ok(out)
}

/// How many contacts one set holds.
pub(crate) fn count(c: &mut Conn, workspace_id: i64, kind: SetKind, set_id: i64) -> Result<u64, StoreError> {
    Ok(c.query_one(
        "SELECT CAST(COALESCE(SUM(cardinality), 0) AS BIGINT) FROM member_sets WHERE workspace_id = ? AND kind = ? AND set_id = ?",
        params![workspace_id, kind.code(), set_id],
    )?
    .i64(0) as u64)
}

/// How many contacts each non-empty set of a kind holds.
pub(crate) fn counts(c: &mut Conn, workspace_id: i64, kind: SetKind) -> Result<BTreeMap<i64, u64>, StoreError> {
    Ok(c.query(
        "SELECT set_id, CAST(SUM(cardinality) AS BIGINT) FROM member_sets WHERE workspace_id = ? AND kind = ? GROUP BY set_id",
        params![workspace_id, kind.code()],
    )?
    .iter()
    .map(|r| (r.i64(0), r.i64(1) as u64))
    .collect())
}

/// Moves memberships kept as one row per contact (schema version 1) into
/// bitmaps: run once by the migration to version 2, before the old table goes.
pub(crate) fn migrate_rows(c: &mut Conn, table: &str, set_column: &str, kind: SetKind) -> Result<(), StoreError> {
    let rows = c.query(&format!("SELECT workspace_id, {set_column}, contact_idx FROM {table}"), params![])?;
    let mut per_workspace: BTreeMap<i64, BTreeMap<i64, Bitmap>> = BTreeMap::new();
    for r in &rows {
        per_workspace.entry(r.i64(0)).or_default().entry(r.i64(1)).or_default().add(r.i64(2) as u32);
    }
    for (workspace_id, sets) in per_workspace {
        change(c, workspace_id, kind, &sets, true)?;
    }
    Ok(())
}
