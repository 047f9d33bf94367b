//! Engagement sets (docs/measurement.md): per broadcast, channel and metric,
//! the recipients it holds — delivered, failed, not sent, opened (and in
//! which hour), replied, forwarded, clicked, converted, reading time (its
//! histogram bucket and each bit of its value) — as roaring bitmaps over
//! dense contact ids in 65,536-id chunks (`measure_sets`, like tag
//! memberships in [`crate::members`]).
//!
//! A segment report intersects them with the segment's bitmap: a few hundred
//! small rows for a million recipients instead of a scan of a million
//! records. Sums are exact: the total reading time of a segment is
//! Σ 2ᵏ · |segment ∩ {recipients whose time has bit k}|.
//!
//! Writers collect their changes in [`Marks`] and apply them once, at the end
//! of their transaction, in key order: rows are read and rewritten under a
//! row lock on PostgreSQL (no lost update), and every transaction takes those
//! locks in the same order (no deadlock between two batches or two events).
//! Delivery states are not tracked change by change: a writer re-derives the
//! state classes of the id range it wrote from the records themselves
//! ([`Marks::sync_states`]), so a set cannot drift from its records. Every
//! writer of delivery states takes the broadcast row (its counters) before it
//! applies its marks, and the records are read at that point.

use std::collections::BTreeMap;

use qunfa_audience::Bitmap;

use crate::{
    measure::{hour_of, read_bucket},
    params, Backend, Conn, StoreError, Value,
};

/// The delivery-state classes a record counts in (none while it is pending:
/// queued, or accepted by a provider with no receipt yet).
pub const STATE_CLASSES: [&str; 3] = ["delivered", "failed", "not_sent"];

/// The class of a delivery state: `None` while pending.
pub fn state_class(state: &str) -> Option<&'static str> {
    match state {
        "delivered" | "read" => Some("delivered"),
        "failed" => Some("failed"),
        "queued" | "sent" => None,
        _ => Some("not_sent"),
    }
}

/// Bits of a reading time kept as sets: 2⁴⁰ ms is 34 years.
const READ_MS_BITS: u32 = 40;

/// (broadcast, channel, metric, bucket, chunk).
type Key = (i64, String, &'static str, i64, u32);

fn chunk_of(idx: u32) -> u32 {
    idx >> 16
}

/// Changes to engagement sets, applied together by [`Marks::apply`].
#[derive(Default)]
pub(crate) struct Marks {
    /// Per row: ids to add and ids to remove (disjoint; the later change wins).
    map: BTreeMap<Key, (Bitmap, Bitmap)>,
    /// Id ranges whose state classes are derived from the records when the
    /// marks are applied: (broadcast, channel, lo, hi).
    syncs: Vec<(i64, String, u32, u32)>,
}

impl Marks {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn put(&mut self, key: Key, add: &Bitmap, remove: &Bitmap) {
        let e = self.map.entry(key).or_default();
        e.0.andnot_inplace(remove);
        e.0.or_inplace(add);
        e.1.andnot_inplace(add);
        e.1.or_inplace(remove);
    }

    /// Adds (`on`) or removes one recipient.
    pub(crate) fn set(
        &mut self,
        broadcast_id: i64,
        channel: &str,
        metric: &'static str,
        bucket: i64,
        idx: u32,
        on: bool,
    ) {
        let one = Bitmap::of(&[idx]);
        let key = (broadcast_id, channel.to_owned(), metric, bucket, chunk_of(idx));
        if on {
            self.put(key, &one, &Bitmap::new());
        } else {
            self.put(key, &Bitmap::new(), &one);
        }
    }

    /// Adds recipients to one set (records just created with that class).
    pub(crate) fn add_all(&mut self, broadcast_id: i64, channel: &str, metric: &'static str, ids: &Bitmap) {
        let none = Bitmap::new();
        let (Some(first), Some(last)) = (ids.minimum(), ids.maximum()) else { return };
        for chunk in chunk_of(first)..=chunk_of(last) {
            let part = ids & &Bitmap::from_range(chunk << 16..=(chunk << 16 | 0xffff));
            if !part.is_empty() {
                self.put((broadcast_id, channel.to_owned(), metric, -1, chunk), &part, &none);
            }
        }
    }

    /// The recipient's first open, at `at`.
    pub(crate) fn first_open(&mut self, broadcast_id: i64, channel: &str, idx: u32, at: i64) {
        self.set(broadcast_id, channel, "opened", -1, idx, true);
        self.set(broadcast_id, channel, "opened_hour", hour_of(at), idx, true);
    }

    /// The recipient's total reading time went from `before` to `after`.
    pub(crate) fn read_time(&mut self, broadcast_id: i64, channel: &str, idx: u32, before: Option<i64>, after: i64) {
        self.set(broadcast_id, channel, "read_timed", -1, idx, true);
        let after_bucket = read_bucket(after);
        if let Some(b) = before.map(read_bucket).filter(|&b| b != after_bucket) {
            self.set(broadcast_id, channel, "read_hist", b, idx, false);
        }
        self.set(broadcast_id, channel, "read_hist", after_bucket, idx, true);
        let (old, new) = (before.unwrap_or(0).max(0) as u64, after.max(0) as u64);
        for k in 0..READ_MS_BITS {
            let (was, is) = (old >> k & 1 == 1, new >> k & 1 == 1);
            if was != is {
                self.set(broadcast_id, channel, "read_ms_bit", i64::from(k), idx, is);
            }
        }
    }

    /// A record moved from state `from` to `to` (`None`: it did not exist).
    pub(crate) fn state_change(&mut self, broadcast_id: i64, channel: &str, idx: u32, from: Option<&str>, to: &str) {
        let (old, new) = (from.and_then(state_class), state_class(to));
        if old == new {
            return;
        }
        if let Some(m) = old {
            self.set(broadcast_id, channel, m, -1, idx, false);
        }
        if let Some(m) = new {
            self.set(broadcast_id, channel, m, -1, idx, true);
        }
    }

    /// Sets the state classes of ids `lo..=hi` of one channel to what their
    /// records say (an id without a record is pending) — read when the marks
    /// are applied, that is after the writer took the broadcast row: a
    /// writer that changed one of those records meanwhile has committed.
    pub(crate) fn sync_states(&mut self, broadcast_id: i64, channel: &str, lo: u32, hi: u32) {
        if lo <= hi {
            self.syncs.push((broadcast_id, channel.to_owned(), lo, hi));
        }
    }

    fn derive_states(
        &mut self,
        c: &mut Conn,
        broadcast_id: i64,
        channel: &str,
        lo: u32,
        hi: u32,
    ) -> Result<(), StoreError> {
        let mut derived: [Bitmap; 3] = Default::default();
        c.for_each_row(
            "SELECT contact_idx, state FROM deliveries WHERE broadcast_id = ? AND channel = ? AND contact_idx BETWEEN ? AND ?",
            params![broadcast_id, channel, lo, hi],
            &mut |r| {
                if let Some(class) = state_class(r.str(1)) {
                    let i = STATE_CLASSES.iter().position(|&m| m == class).expect("a class");
                    derived[i].add(r.i64(0) as u32);
                }
                Ok(())
            },
        )?;
        for chunk in chunk_of(lo)..=chunk_of(hi) {
            let first = (chunk << 16).max(lo);
            let last = (chunk << 16 | 0xffff).min(hi);
            let range = Bitmap::from_range(first..=last);
            for (metric, ids) in STATE_CLASSES.iter().zip(&derived) {
                let add = ids & &range;
                let remove = &range - &add;
                self.put((broadcast_id, channel.to_owned(), metric, -1, chunk), &add, &remove);
            }
        }
        Ok(())
    }

    /// Writes the changes, row by row in key order.
    ///
    /// # Errors
    /// `Corrupt` when a stored set does not decode, or database errors.
    pub(crate) fn apply(mut self, c: &mut Conn) -> Result<(), StoreError> {
        for (broadcast_id, channel, lo, hi) in std::mem::take(&mut self.syncs) {
            self.derive_states(c, broadcast_id, &channel, lo, hi)?;
        }
        let postgres = c.backend() == Backend::Postgres;
        let select = format!(
            "SELECT bits FROM measure_sets WHERE broadcast_id = ? AND channel = ? AND metric = ? AND bucket = ? AND chunk = ?{}",
            if postgres { " FOR UPDATE" } else { "" }
        );
        for ((broadcast_id, channel, metric, bucket, chunk), (add, remove)) in self.map {
            if add.is_empty() && remove.is_empty() {
                continue;
            }
            let key: Vec<Value> = vec![
                broadcast_id.into(),
                channel.as_str().into(),
                metric.into(),
                bucket.into(),
                i64::from(chunk).into(),
            ];
            let mut row = c.query_opt(&select, &key)?;
            if row.is_none() {
                if add.is_empty() {
                    continue;
                }
                if postgres {
                    // Another transaction may be creating the row: wait for
                    // it, then lock whichever row is there.
                    c.execute(
                        "INSERT INTO measure_sets (broadcast_id, channel, metric, bucket, chunk, cardinality, bits)
                         VALUES (?, ?, ?, ?, ?, 0, ?) ON CONFLICT DO NOTHING",
                        params![
                            broadcast_id,
                            channel.as_str(),
                            metric,
                            bucket,
                            i64::from(chunk),
                            Value::Blob(encode(&mut Bitmap::new()))
                        ],
                    )?;
                    row = c.query_opt(&select, &key)?;
                }
            }
            let mut bits = match &row {
                Some(r) => decode(r.blob(0))?,
                None => Bitmap::new(),
            };
            if add.is_subset(&bits) && !bits.intersect(&remove) && row.is_some() {
                continue;
            }
            bits.andnot_inplace(&remove);
            bits.or_inplace(&add);
            write_row(c, (broadcast_id, &channel, metric, bucket, chunk), &mut bits)?;
        }
        Ok(())
    }
}

fn encode(bits: &mut Bitmap) -> Vec<u8> {
    bits.run_optimize();
    qunfa_audience::encode(bits)
}

fn decode(bytes: &[u8]) -> Result<Bitmap, StoreError> {
    qunfa_audience::decode(bytes)
        .ok_or_else(|| StoreError::Corrupt(format!("an engagement set of {} bytes does not decode", bytes.len())))
}

/// Stores one row (an emptied set is deleted).
fn write_row(
    c: &mut Conn,
    (broadcast_id, channel, metric, bucket, chunk): (i64, &str, &str, i64, u32),
    bits: &mut Bitmap,
) -> Result<(), StoreError> {
    if bits.is_empty() {
        c.execute(
            "DELETE FROM measure_sets WHERE broadcast_id = ? AND channel = ? AND metric = ? AND bucket = ? AND chunk = ?",
            params![broadcast_id, channel, metric, bucket, i64::from(chunk)],
        )?;
        return Ok(());
    }
    c.execute(
        "INSERT INTO measure_sets (broadcast_id, channel, metric, bucket, chunk, cardinality, bits) VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (broadcast_id, channel, metric, bucket, chunk)
         DO UPDATE SET cardinality = excluded.cardinality, bits = excluded.bits",
        params![broadcast_id, channel, metric, bucket, i64::from(chunk), bits.cardinality() as i64, Value::Blob(encode(bits))],
    )?;
    Ok(())
}

/// The sets of a broadcast as its records give them: (channel, metric,
/// bucket) → recipients.
pub(crate) fn derive(c: &mut Conn, broadcast_id: i64) -> Result<crate::measure::EngagementSets, StoreError> {
    let mut out: crate::measure::EngagementSets = BTreeMap::new();
    c.for_each_row(
        "SELECT channel, contact_idx, state, read_at, replied_at, forwarded_at, clicked_at, converted_at, read_ms
         FROM deliveries WHERE broadcast_id = ?",
        params![broadcast_id],
        &mut |r| {
            let (ch, idx) = (r.str(0), r.i64(1) as u32);
            let mut add = |metric: &str, bucket: i64| {
                out.entry((ch.to_owned(), metric.to_owned(), bucket)).or_default().add(idx);
            };
            if let Some(class) = state_class(r.str(2)) {
                add(class, -1);
            }
            if let Some(at) = r.opt_i64(3) {
                add("opened", -1);
                add("opened_hour", hour_of(at));
            }
            for (i, metric) in [(4, "replied"), (5, "forwarded"), (6, "clicked"), (7, "converted")] {
                if r.opt_i64(i).is_some() {
                    add(metric, -1);
                }
            }
            if let Some(ms) = r.opt_i64(8) {
                add("read_timed", -1);
                add("read_hist", read_bucket(ms));
                for k in 0..READ_MS_BITS {
                    if (ms.max(0) as u64) >> k & 1 == 1 {
                        add("read_ms_bit", i64::from(k));
                    }
                }
            }
            Ok(())
        },
    )?;
    Ok(out)
}

/// Replaces the sets of a broadcast with what its records give (for records
/// written in bulk, and for broadcasts older than the sets).
///
/// # Errors
/// Database errors.
pub(crate) fn rebuild(c: &mut Conn, broadcast_id: i64) -> Result<(), StoreError> {
    let sets = derive(c, broadcast_id)?;
    c.execute("DELETE FROM measure_sets WHERE broadcast_id = ?", params![broadcast_id])?;
    for ((channel, metric, bucket), ids) in sets {
        let mut by_chunk: BTreeMap<u32, Bitmap> = BTreeMap::new();
        for idx in ids.iter() {
            by_chunk.entry(chunk_of(idx)).or_default().add(idx);
        }
        for (chunk, mut bits) in by_chunk {
            write_row(c, (broadcast_id, &channel, &metric, bucket, chunk), &mut bits)?;
        }
    }
    Ok(())
}

/// The stored sets of a broadcast: (channel, metric, bucket) → recipients.
///
/// # Errors
/// `Corrupt` when a set does not decode, or database errors.
pub(crate) fn load(c: &mut Conn, broadcast_id: i64) -> Result<crate::measure::EngagementSets, StoreError> {
    let mut out: crate::measure::EngagementSets = BTreeMap::new();
    let mut failed = None;
    c.for_each_row(
        "SELECT channel, metric, bucket, bits FROM measure_sets WHERE broadcast_id = ?",
        params![broadcast_id],
        &mut |r| {
            match decode(r.blob(3)) {
                Ok(bits) => out.entry((r.string(0), r.string(1), r.i64(2))).or_default().or_inplace(&bits),
                Err(e) => failed = Some(e),
            }
            Ok(())
        },
    )?;
    match failed {
        Some(e) => Err(e),
        None => Ok(out),
    }
}
