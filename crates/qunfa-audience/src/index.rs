//! The in-memory audience index of one workspace: roaring bitmaps over dense
//! contact ids for live contacts, tag and department members, and profile
//! attributes.
//!
//! Attributes are indexed three ways at once: texts (and booleans) by value,
//! numbers by rank in a range index, and texts that are dates
//! (`YYYY-MM-DD[THH:MM[:SS]]`) as timestamps in a second range index. A
//! range index is a bit-sliced index of the ranks of an attribute's distinct
//! values, kept as plain words (see [`RankIndex`]): a range test compares 64
//! contacts at once, bit by bit from the top, and is exact.
//!
//! Changes after the build go to a per-attribute overlay (the contacts whose
//! indexed value is stale, and their current values); an attribute whose
//! overlay grows past a share of its size is rebuilt from its own index.

use std::collections::{BTreeMap, HashMap};

use qunfa_core::contact::AttrValue;
use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};

use crate::Bitmap;

use crate::expr::{parse_date, CmpOp, DeptRef, Expr, Literal, Pos, Pred};

/// A bitmap an evaluation produced or borrowed: index bitmaps are read in
/// place (no copy of a 10M-contact tag to intersect it with another).
#[derive(Debug)]
pub enum Members<'a> {
    Borrowed(&'a Bitmap),
    Shared(Arc<Bitmap>),
    Owned(Bitmap),
}

impl Deref for Members<'_> {
    type Target = Bitmap;
    fn deref(&self) -> &Bitmap {
        match self {
            Members::Borrowed(b) => b,
            Members::Shared(b) => b,
            Members::Owned(b) => b,
        }
    }
}

impl Members<'_> {
    pub fn into_owned(self) -> Bitmap {
        match self {
            Members::Borrowed(b) => b.clone(),
            Members::Shared(b) => Arc::try_unwrap(b).unwrap_or_else(|b| (*b).clone()),
            Members::Owned(b) => b,
        }
    }

    /// `self ∧ other`, in place when this bitmap is owned.
    fn and(self, other: &Bitmap) -> Bitmap {
        match self {
            Members::Owned(mut b) => {
                b &= other;
                b
            }
            b => b.deref().and(other),
        }
    }

    /// `self ∖ other`, in place when this bitmap is owned.
    fn andnot(self, other: &Bitmap) -> Bitmap {
        match self {
            Members::Owned(mut b) => {
                b -= other;
                b
            }
            b => b.deref().andnot(other),
        }
    }
}

/// The union of any number of bitmaps.
fn union<'b>(parts: impl IntoIterator<Item = &'b Bitmap>) -> Bitmap {
    let parts: Vec<&Bitmap> = parts.into_iter().collect();
    match parts.as_slice() {
        [] => Bitmap::new(),
        [one] => (*one).clone(),
        _ => Bitmap::fast_or(&parts),
    }
}

/// Serialized size: the measure of a bitmap's memory used here.
fn size(b: &Bitmap) -> usize {
    b.get_serialized_size_in_bytes::<croaring::Portable>()
}

/// Packs a finished bitmap: runs where they are smaller, no spare capacity.
fn pack(b: &mut Bitmap) {
    b.run_optimize();
    b.shrink_to_fit();
}

/// A tree of named sets (tags by path, departments by id and name path),
/// with the direct members of each.
#[derive(Debug, Default, Clone)]
pub struct TreeSets {
    parent: HashMap<i64, Option<i64>>,
    children: HashMap<i64, Vec<i64>>,
    by_path: HashMap<String, i64>,
    path: HashMap<i64, String>,
    members: HashMap<i64, Bitmap>,
    /// Unions of sets that have children, kept until a change.
    subtree_cache: Arc<Mutex<HashMap<i64, Arc<Bitmap>>>>,
}

impl TreeSets {
    /// Replaces the tree (the members of sets that still exist stay).
    /// `nodes` are (id, parent, name); a node's path is its ancestors' names
    /// and its own joined by `/` (a tag's name is already its full path).
    pub fn set_nodes(&mut self, nodes: &[(i64, Option<i64>, String)], names_are_paths: bool) {
        self.parent = nodes.iter().map(|(id, p, _)| (*id, *p)).collect();
        self.children.clear();
        for (id, p, _) in nodes {
            if let Some(p) = p {
                self.children.entry(*p).or_default().push(*id);
            }
        }
        let names: HashMap<i64, &str> = nodes.iter().map(|(id, _, n)| (*id, n.as_str())).collect();
        self.path.clear();
        for (id, _, name) in nodes {
            let full = if names_are_paths {
                name.clone()
            } else {
                let mut parts = vec![name.as_str()];
                let mut at = self.parent.get(id).copied().flatten();
                let mut guard = 0;
                while let Some(p) = at {
                    parts.push(names.get(&p).copied().unwrap_or("?"));
                    at = self.parent.get(&p).copied().flatten();
                    guard += 1;
                    if guard > 64 {
                        break;
                    }
                }
                parts.reverse();
                parts.join("/")
            };
            self.path.insert(*id, full);
        }
        self.by_path = self.path.iter().map(|(id, p)| (p.clone(), *id)).collect();
        self.members.retain(|id, _| self.parent.contains_key(id));
        self.forget_subtrees();
    }

    /// Replaces the members of one set within one chunk of 65,536 ids.
    pub fn set_chunk(&mut self, set_id: i64, chunk: u32, bits: &Bitmap) {
        let m = self.members.entry(set_id).or_default();
        let lo = chunk << 16;
        m.remove_range(lo..=lo | 0xFFFF);
        *m |= bits;
        pack(m);
        self.forget_subtrees();
    }

    fn forget_subtrees(&mut self) {
        // A fresh cache: clones of this index (none today) keep their own.
        self.subtree_cache = Default::default();
    }

    /// Direct members of a set.
    pub fn direct(&self, id: i64) -> Option<&Bitmap> {
        self.members.get(&id)
    }

    pub fn exists(&self, id: i64) -> bool {
        self.parent.contains_key(&id)
    }

    pub fn id_of(&self, path: &str) -> Option<i64> {
        self.by_path.get(path).copied()
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.path.values().map(String::as_str)
    }

    /// Members of a set and all its descendants.
    pub fn subtree(&self, root: i64) -> Members<'_> {
        if !self.children.contains_key(&root) {
            return match self.members.get(&root) {
                Some(m) => Members::Borrowed(m),
                None => Members::Owned(Bitmap::new()),
            };
        }
        let mut cache = self.subtree_cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(hit) = cache.get(&root) {
            return Members::Shared(Arc::clone(hit));
        }
        let mut union = self.compute_subtree(root);
        pack(&mut union);
        let union = Arc::new(union);
        cache.insert(root, Arc::clone(&union));
        Members::Shared(union)
    }

    fn compute_subtree(&self, root: i64) -> Bitmap {
        let mut parts: Vec<&Bitmap> = Vec::new();
        let mut stack = vec![root];
        let mut seen = 0;
        while let Some(id) = stack.pop() {
            seen += 1;
            if seen > self.parent.len() + 1 {
                break; // a cycle in bad data must not hang a query
            }
            if let Some(m) = self.members.get(&id) {
                parts.push(m);
            }
            if let Some(c) = self.children.get(&id) {
                stack.extend(c);
            }
        }
        union(parts)
    }

    fn memory(&self) -> usize {
        self.members.values().map(size).sum()
    }
}

/// Exact range tests over the ranks of an attribute's distinct values: a
/// bit-sliced index kept as plain words.
///
/// For every block of 64 dense ids that holds a value, the index keeps one
/// word of "has a value" bits and one word per bit of the rank, highest bit
/// first, side by side. A range test is one pass over the blocks (those the
/// candidates touch) comparing 64 contacts' ranks with the bounds at once,
/// bit by bit from the top, stopping as soon as every rank in the block is
/// decided — usually after a few bits. A bit-sliced index made of roaring
/// bitmaps spends its time on the small array containers the lower bits
/// leave; plain words have none, and cost no more memory for the dense
/// attributes that range tests are for.
#[derive(Debug, Default, Clone)]
struct RankIndex {
    /// Sorted distinct values.
    dict: Vec<f64>,
    /// Bits of a rank.
    bits: u32,
    /// Which blocks of 64 ids hold a value, ascending.
    blocks: Vec<u32>,
    /// Per block in `blocks`: who has a value.
    present: Vec<u64>,
    /// Rank bits, highest first: `bits` runs of one word per block in
    /// `blocks` (slice-major, so that the high bits most tests stop after
    /// are read in one sequential stream).
    slices: Vec<u64>,
    /// The latest whole-workspace results, newest last: an operator counting
    /// while typing changes one term at a time, and a relative date keeps its
    /// ranks for the day. The index never changes after its build (changes go
    /// to the attribute's overlay), so entries stay right until a rebuild
    /// replaces the whole index.
    cache: Arc<Mutex<RangeCache>>,
}

/// A range test by ranks: `lo..hi`, negated or not.
type RangeKey = (u32, u32, bool);

/// Kept range results, newest last.
type RangeCache = Vec<(RangeKey, Arc<Bitmap>)>;

/// Results a range index keeps (each at most one bit per contact).
const RANGE_CACHE: usize = 4;

impl RankIndex {
    fn build(values: &[(u32, f64)]) -> Self {
        let mut dict: Vec<f64> = values.iter().map(|(_, v)| *v).collect();
        dict.sort_by(f64::total_cmp);
        dict.dedup();
        let bits = usize::BITS - dict.len().saturating_sub(1).leading_zeros();
        let mut ranked: Vec<(u32, u32)> =
            values.iter().map(|(idx, v)| (*idx, dict.partition_point(|d| *d < *v) as u32)).collect();
        ranked.sort_unstable_by_key(|(idx, _)| *idx);
        let mut index = Self { dict, bits, ..Self::default() };
        // Per block of 64 ids: its position in `blocks`.
        let mut position: Vec<u32> = Vec::new();
        for &(idx, _) in &ranked {
            let block = idx / 64;
            if index.blocks.last() != Some(&block) {
                position.resize(block as usize, u32::MAX);
                position.push(index.blocks.len() as u32);
                index.blocks.push(block);
                index.present.push(0);
            }
            *index.present.last_mut().expect("pushed above") |= 1u64 << (idx % 64);
        }
        let n_blocks = index.blocks.len();
        index.slices = vec![0; n_blocks * bits as usize];
        for (idx, rank) in ranked {
            let pos = position[(idx / 64) as usize] as usize;
            for i in 0..bits {
                if rank >> i & 1 == 1 {
                    index.slices[(bits - 1 - i) as usize * n_blocks + pos] |= 1u64 << (idx % 64);
                }
            }
        }
        index.blocks.shrink_to_fit();
        index.present.shrink_to_fit();
        index
    }

    /// Contacts whose rank is `>= lo` and `< hi` or, with `negate`, who have
    /// a value outside that range.
    fn rank_range(&self, lo: usize, hi: usize, negate: bool) -> Bitmap {
        let n = self.dict.len();
        let hi = hi.min(n);
        if (lo >= hi && !negate) || self.blocks.is_empty() {
            return Bitmap::new();
        }
        let test = BlockTest { lo: lo as u64, hi: hi as u64, n: n as u64, negate, bits: self.bits as usize };
        let mut out = vec![0u64; self.blocks.last().map_or(0, |b| *b as usize + 1)];
        let n_blocks = self.blocks.len();
        for (pos, (&block, &base)) in self.blocks.iter().zip(&self.present).enumerate() {
            out[block as usize] = test.block(base, |j| self.slices[j * n_blocks + pos]);
        }
        crate::from_words(&out)
    }

    /// The value of every contact that has one (for a rebuild).
    fn values(&self) -> Vec<(u32, f64)> {
        let mut out = Vec::new();
        for (pos, (&block, &present)) in self.blocks.iter().zip(&self.present).enumerate() {
            let mut present = present;
            while present != 0 {
                let b = present.trailing_zeros();
                present &= present - 1;
                let mut rank = 0usize;
                for slice in self.slices.iter().skip(pos).step_by(self.blocks.len()).copied() {
                    rank = rank << 1 | (slice >> b & 1) as usize;
                }
                out.push((block * 64 + b, self.dict[rank]));
            }
        }
        out
    }

    /// Contacts whose value compares with `v` as `op` says.
    fn test(&self, op: CmpOp, v: f64) -> Members<'_> {
        let below = self.dict.partition_point(|d| *d < v);
        let upto = self.dict.partition_point(|d| *d <= v);
        let n = self.dict.len();
        let (lo, hi, negate) = match op {
            CmpOp::Eq => (below, upto, false),
            CmpOp::Ne => (below, upto, true),
            CmpOp::Lt => (0, below, false),
            CmpOp::Le => (0, upto, false),
            CmpOp::Gt => (upto, n, false),
            CmpOp::Ge => (below, n, false),
        };
        let key: RangeKey = (lo as u32, hi as u32, negate);
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = cache.iter().position(|(k, _)| *k == key) {
            let hit = cache.remove(at);
            cache.push(hit.clone());
            return Members::Shared(hit.1);
        }
        drop(cache);
        // Everyone is tested, even when the rest of an expression left few
        // candidates: the blocks few candidates touch are scattered, so
        // testing them costs as much in memory waits as a sequential pass
        // over all, and a whole result serves the next expression too.
        let all = Arc::new(self.rank_range(lo, hi, negate));
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= RANGE_CACHE {
            cache.remove(0);
        }
        cache.push((key, Arc::clone(&all)));
        Members::Shared(all)
    }

    fn memory(&self) -> usize {
        let cached: usize =
            self.cache.lock().unwrap_or_else(PoisonError::into_inner).iter().map(|(_, b)| size(b)).sum();
        (self.present.capacity() + self.slices.capacity() + self.dict.capacity()) * 8
            + self.blocks.capacity() * 4
            + cached
    }
}

/// One range test on blocks of 64 contacts.
struct BlockTest {
    lo: u64,
    hi: u64,
    n: u64,
    negate: bool,
    bits: usize,
}

impl BlockTest {
    /// Which of `base` have a rank in `lo..hi` (or, negated, outside it),
    /// comparing from the highest bit and stopping once all are decided.
    #[inline]
    fn block(&self, base: u64, slice: impl Fn(usize) -> u64) -> u64 {
        let in_range = if self.lo >= self.hi {
            0
        } else {
            // `≥ lo`: what is above lo so far, and what equals it so far.
            let (mut ge, mut eq_lo) = if self.lo > 0 { (0, base) } else { (base, 0) };
            // `< hi`: what is below hi so far, and what equals it so far.
            let (mut lt, mut eq_hi) = if self.hi < self.n { (0, base) } else { (base, 0) };
            for j in 0..self.bits {
                if eq_lo | eq_hi == 0 {
                    break;
                }
                let slice = slice(j);
                let i = self.bits - 1 - j;
                if self.lo >> i & 1 == 1 {
                    eq_lo &= slice;
                } else {
                    ge |= eq_lo & slice;
                    eq_lo &= !slice;
                }
                if self.hi >> i & 1 == 1 {
                    lt |= eq_hi & !slice;
                    eq_hi &= slice;
                } else {
                    eq_hi &= !slice;
                }
            }
            (ge | eq_lo) & lt
        };
        if self.negate {
            base & !in_range
        } else {
            in_range
        }
    }
}

fn cmp_f64(op: CmpOp, a: f64, b: f64) -> bool {
    match op {
        CmpOp::Eq => a == b,
        CmpOp::Ne => a != b,
        CmpOp::Lt => a < b,
        CmpOp::Le => a <= b,
        CmpOp::Gt => a > b,
        CmpOp::Ge => a >= b,
    }
}

/// One profile attribute across the workspace.
#[derive(Debug, Default, Clone)]
struct AttrIndex {
    present: Bitmap,
    /// Texts that are not dates, by value.
    text: HashMap<Box<str>, Bitmap>,
    /// Contacts whose value is such a text.
    texts: Bitmap,
    bools: [Bitmap; 2],
    numbers: RankIndex,
    dates: RankIndex,
    /// Contacts whose indexed value is out of date…
    stale: Bitmap,
    /// …and their current value (`None`: no longer set).
    overlay: HashMap<u32, Option<AttrValue>>,
}

/// An attribute value borrowed from where it was read (no allocation per
/// contact when building an index from stored rows).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttrRef<'a> {
    Text(&'a str),
    Number(f64),
    Bool(bool),
}

impl<'a> From<&'a AttrValue> for AttrRef<'a> {
    fn from(v: &'a AttrValue) -> Self {
        match v {
            AttrValue::Text(s) => AttrRef::Text(s),
            AttrValue::Number(n) => AttrRef::Number(*n),
            AttrValue::Bool(b) => AttrRef::Bool(*b),
        }
    }
}

/// Collects one attribute's values before its index is built.
#[derive(Default)]
struct AttrBuilder {
    present: Bitmap,
    text: HashMap<Box<str>, Bitmap>,
    bools: [Bitmap; 2],
    numbers: Vec<(u32, f64)>,
    dates: Vec<(u32, f64)>,
}

impl AttrBuilder {
    fn add(&mut self, idx: u32, v: AttrRef<'_>) {
        self.present.add(idx);
        match v {
            AttrRef::Text(s) => {
                // A date is indexed as a date only: one bitmap per distinct
                // timestamp would cost more than all the other values.
                if let Some(ms) = as_date(s) {
                    self.dates.push((idx, ms as f64));
                    return;
                }
                let bm = match self.text.get_mut(s) {
                    Some(bm) => bm,
                    None => self.text.entry(s.into()).or_default(),
                };
                bm.add(idx);
            }
            AttrRef::Number(n) => self.numbers.push((idx, n)),
            AttrRef::Bool(b) => {
                self.bools[usize::from(b)].add(idx);
            }
        }
    }

    fn build(mut self) -> AttrIndex {
        pack(&mut self.present);
        self.text.values_mut().for_each(pack);
        self.bools.iter_mut().for_each(pack);
        let mut texts = union(self.text.values());
        pack(&mut texts);
        AttrIndex {
            present: self.present,
            text: self.text,
            texts,
            bools: self.bools,
            numbers: RankIndex::build(&self.numbers),
            dates: RankIndex::build(&self.dates),
            stale: Bitmap::new(),
            overlay: HashMap::new(),
        }
    }
}

/// A text that is a date, as milliseconds (cheap to reject most texts).
fn as_date(s: &str) -> Option<i64> {
    if s.len() >= 10 && s.as_bytes()[0].is_ascii_digit() {
        parse_date(s)
    } else {
        None
    }
}

/// A text literal that is a date compares as a date.
fn date_literal(l: &Literal) -> Option<Literal> {
    match l {
        Literal::Text(t) => as_date(t).map(Literal::Date),
        _ => None,
    }
}

/// Whether a current value satisfies a predicate (for overlay entries and
/// the reference model in tests).
pub fn value_matches(value: Option<&AttrValue>, pred: &Pred, now_ms: i64) -> bool {
    let Some(value) = value else { return false };
    match pred {
        Pred::Exists => true,
        Pred::Contains(needle) => match value {
            AttrValue::Text(s) if as_date(s).is_none() => s.to_lowercase().contains(&needle.to_lowercase()),
            _ => false,
        },
        Pred::In(list) => list.iter().any(|l| literal_matches(value, CmpOp::Eq, l, now_ms)),
        Pred::Cmp(op, l) => literal_matches(value, *op, l, now_ms),
    }
}

fn literal_matches(value: &AttrValue, op: CmpOp, l: &Literal, now_ms: i64) -> bool {
    if let Some(d) = date_literal(l) {
        return literal_matches(value, op, &d, now_ms);
    }
    match (value, l) {
        (AttrValue::Text(s), Literal::Text(_)) if as_date(s).is_some() => false,
        (AttrValue::Text(s), Literal::Text(t)) => match op {
            CmpOp::Eq => s == t,
            CmpOp::Ne => s != t,
            _ => false,
        },
        (AttrValue::Bool(b), Literal::Bool(c)) => match op {
            CmpOp::Eq => b == c,
            CmpOp::Ne => b != c,
            _ => false,
        },
        (AttrValue::Number(n), Literal::Number(m)) => cmp_f64(op, *n, *m),
        (AttrValue::Text(s), Literal::Date(_) | Literal::Relative(_)) => match parse_date(s) {
            Some(ms) => cmp_f64(op, ms as f64, literal_ms(l, now_ms) as f64),
            None => false,
        },
        _ => false,
    }
}

fn literal_ms(l: &Literal, now_ms: i64) -> i64 {
    match l {
        Literal::Date(ms) => *ms,
        Literal::Relative(d) => now_ms.saturating_add(*d),
        _ => 0,
    }
}

impl AttrIndex {
    /// Base (built) matches of a predicate, before the overlay.
    fn base(&self, pred: &Pred, now_ms: i64) -> Members<'_> {
        let empty = || Members::Owned(Bitmap::new());
        match pred {
            Pred::Exists => Members::Borrowed(&self.present),
            Pred::Contains(needle) => {
                let needle = needle.to_lowercase();
                Members::Owned(union(
                    self.text.iter().filter(|(v, _)| v.to_lowercase().contains(&needle)).map(|(_, bm)| bm),
                ))
            }
            Pred::In(list) => {
                let parts: Vec<Members<'_>> =
                    list.iter().map(|l| self.base(&Pred::Cmp(CmpOp::Eq, l.clone()), now_ms)).collect();
                Members::Owned(union(parts.iter().map(Deref::deref)))
            }
            Pred::Cmp(op, l) => match l {
                Literal::Text(t) => {
                    if let Some(d) = date_literal(l) {
                        return self.dates.test(*op, literal_ms(&d, now_ms) as f64);
                    }
                    let eq = self.text.get(t.as_str());
                    match (op, eq) {
                        (CmpOp::Eq, Some(eq)) => Members::Borrowed(eq),
                        (CmpOp::Ne, Some(eq)) => Members::Owned(&self.texts - eq),
                        (CmpOp::Ne, None) => Members::Borrowed(&self.texts),
                        _ => empty(),
                    }
                }
                Literal::Bool(b) => match op {
                    CmpOp::Eq => Members::Borrowed(&self.bools[usize::from(*b)]),
                    CmpOp::Ne => Members::Borrowed(&self.bools[usize::from(!*b)]),
                    _ => empty(),
                },
                Literal::Number(n) => self.numbers.test(*op, *n),
                Literal::Date(_) | Literal::Relative(_) => self.dates.test(*op, literal_ms(l, now_ms) as f64),
            },
        }
    }

    fn eval(&self, pred: &Pred, now_ms: i64, restrict: Option<&Bitmap>) -> Members<'_> {
        let base = self.base(pred, now_ms);
        if self.stale.is_empty() {
            return base;
        }
        let mut out = base.andnot(&self.stale);
        for (idx, v) in &self.overlay {
            if restrict.is_none_or(|r| r.contains(*idx)) && value_matches(v.as_ref(), pred, now_ms) {
                out.add(*idx);
            }
        }
        Members::Owned(out)
    }

    /// The current value of every contact that has one (for a rebuild).
    fn current_values(&self) -> Vec<(u32, AttrValue)> {
        let mut out: Vec<(u32, AttrValue)> = Vec::with_capacity(self.present.cardinality() as usize);
        for (v, bm) in &self.text {
            out.extend((bm - &self.stale).iter().map(|i| (i, AttrValue::Text(v.to_string()))));
        }
        for (b, bm) in self.bools.iter().enumerate() {
            out.extend((bm - &self.stale).iter().map(|i| (i, AttrValue::Bool(b == 1))));
        }
        for (i, n) in self.numbers.values() {
            if !self.stale.contains(i) {
                out.push((i, AttrValue::Number(n)));
            }
        }
        for (i, ms) in self.dates.values() {
            if !self.stale.contains(i) {
                out.push((i, AttrValue::Text(crate::expr::format_date(ms as i64))));
            }
        }
        out.extend(self.overlay.iter().filter_map(|(i, v)| v.clone().map(|v| (*i, v))));
        out.sort_by_key(|(i, _)| *i);
        out
    }

    fn has(&self, idx: u32) -> bool {
        match self.overlay.get(&idx) {
            Some(v) => v.is_some(),
            None => self.present.contains(idx) && !self.stale.contains(idx),
        }
    }

    fn memory(&self) -> usize {
        size(&self.present)
            + self.text.iter().map(|(k, v)| k.len() + 48 + size(v)).sum::<usize>()
            + self.bools.iter().map(size).sum::<usize>()
            + self.numbers.memory()
            + self.dates.memory()
            + size(&self.stale)
            + self.overlay.len() * 64
    }
}

/// Why an expression cannot be evaluated in this workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveError {
    pub kind: ResolveErrorKind,
    pub pos: Pos,
    pub message: String,
    /// Existing names close to the unknown one, best first.
    pub suggestions: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveErrorKind {
    UnknownTag,
    UnknownDepartment,
    UnknownAttribute,
    UnknownSegment,
    ForeignContact,
}

/// Names within a small edit distance of `wanted`, best first (at most 3).
pub fn nearest<'a>(wanted: &str, names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let w: Vec<char> = wanted.chars().collect();
    let limit = (w.len() / 2).max(2);
    let mut scored: Vec<(usize, &str)> = names
        .filter_map(|n| {
            let c: Vec<char> = n.chars().collect();
            let d = edit_distance(&w, &c);
            let contains = n.contains(wanted) || wanted.contains(n);
            (d <= limit || contains).then_some((d, n))
        })
        .collect();
    scored.sort();
    scored.into_iter().take(3).map(|(_, n)| n.to_owned()).collect()
}

fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The audience index of one workspace.
#[derive(Debug, Clone)]
pub struct WorkspaceIndex {
    workspace_id: i64,
    live: Bitmap,
    pub tags: TreeSets,
    pub departments: TreeSets,
    attrs: HashMap<String, AttrIndex>,
}

/// Builds a [`WorkspaceIndex`] from contacts given in any order (fastest in
/// ascending id order).
pub struct IndexBuilder {
    workspace_id: i64,
    live: Bitmap,
    attrs: HashMap<String, AttrBuilder>,
}

impl IndexBuilder {
    pub fn new(workspace_id: i64) -> Self {
        Self { workspace_id, live: Bitmap::new(), attrs: HashMap::new() }
    }

    /// Adds a live contact with its attributes.
    pub fn add<'a>(&mut self, idx: u32, attributes: impl IntoIterator<Item = (&'a str, &'a AttrValue)>) {
        self.add_refs(idx, attributes.into_iter().map(|(k, v)| (k, AttrRef::from(v))));
    }

    /// [`IndexBuilder::add`] with borrowed values.
    pub fn add_refs<'a>(&mut self, idx: u32, attributes: impl IntoIterator<Item = (&'a str, AttrRef<'a>)>) {
        self.live.add(idx);
        for (k, v) in attributes {
            match self.attrs.get_mut(k) {
                Some(b) => b.add(idx, v),
                None => self.attrs.entry(k.to_owned()).or_default().add(idx, v),
            }
        }
    }

    pub fn build(mut self) -> WorkspaceIndex {
        pack(&mut self.live);
        WorkspaceIndex {
            workspace_id: self.workspace_id,
            live: self.live,
            tags: TreeSets::default(),
            departments: TreeSets::default(),
            attrs: self.attrs.into_iter().map(|(k, b)| (k, b.build())).collect(),
        }
    }
}

/// Overlay entries beyond which an attribute is rebuilt: a share of its size,
/// at least this many.
const MIN_OVERLAY_REBUILD: usize = 4096;

impl WorkspaceIndex {
    pub fn workspace_id(&self) -> i64 {
        self.workspace_id
    }

    /// Live contacts.
    pub fn live(&self) -> &Bitmap {
        &self.live
    }

    /// Names of the attributes some contact has or had.
    pub fn attribute_names(&self) -> impl Iterator<Item = &str> {
        self.attrs.keys().map(String::as_str)
    }

    /// Sets a contact's attributes to exactly `attributes` (an insert, an
    /// update or, with `live = false`, a deletion).
    pub fn set_contact(&mut self, idx: u32, live: bool, attributes: &BTreeMap<String, AttrValue>) {
        if live {
            self.live.add(idx);
        } else {
            self.live.remove(idx);
        }
        for (k, a) in self.attrs.iter_mut() {
            if !attributes.contains_key(k) && a.has(idx) {
                a.stale.add(idx);
                a.overlay.insert(idx, None);
            }
        }
        for (k, v) in attributes {
            let a = self.attrs.entry(k.clone()).or_default();
            a.stale.add(idx);
            a.overlay.insert(idx, Some(v.clone()));
        }
        self.compact();
    }

    /// Rebuilds attributes whose overlay has grown large.
    fn compact(&mut self) {
        for a in self.attrs.values_mut() {
            let limit = (a.present.cardinality() as usize / 16).max(MIN_OVERLAY_REBUILD);
            if a.overlay.len() > limit {
                let mut b = AttrBuilder::default();
                for (idx, v) in a.current_values() {
                    b.add(idx, AttrRef::from(&v));
                }
                *a = b.build();
            }
        }
    }

    /// Evaluates an expression: the live contacts it selects.
    ///
    /// # Errors
    /// Unknown tags, departments or attributes (with suggestions), or ids of
    /// another workspace.
    pub fn evaluate(&self, expr: &Expr, now_ms: i64) -> Result<Bitmap, ResolveError> {
        self.check(expr)?;
        Ok(self.eval(expr, now_ms, None).and(&self.live))
    }

    /// How many live contacts an expression selects.
    ///
    /// # Errors
    /// As [`WorkspaceIndex::evaluate`].
    pub fn count(&self, expr: &Expr, now_ms: i64) -> Result<u64, ResolveError> {
        self.check(expr)?;
        Ok(self.eval(expr, now_ms, None).and_cardinality(&self.live))
    }

    /// Resolves names before any bitmap work, so errors come first.
    ///
    /// # Errors
    /// As [`WorkspaceIndex::evaluate`].
    pub fn check(&self, expr: &Expr) -> Result<(), ResolveError> {
        match expr {
            Expr::All => Ok(()),
            Expr::Tag { path, pos } => match self.tags.id_of(path) {
                Some(_) => Ok(()),
                None => Err(ResolveError {
                    kind: ResolveErrorKind::UnknownTag,
                    pos: *pos,
                    message: format!("there is no tag {path:?}"),
                    suggestions: nearest(path, self.tags.paths()),
                }),
            },
            Expr::Dept { dept, pos } => {
                let found = match dept {
                    DeptRef::Id(id) => self.departments.exists(*id),
                    DeptRef::Path(p) => self.departments.id_of(p).is_some(),
                };
                if found {
                    return Ok(());
                }
                let name = match dept {
                    DeptRef::Id(id) => id.to_string(),
                    DeptRef::Path(p) => p.clone(),
                };
                Err(ResolveError {
                    kind: ResolveErrorKind::UnknownDepartment,
                    pos: *pos,
                    message: format!("there is no department {name:?}"),
                    suggestions: nearest(&name, self.departments.paths()),
                })
            }
            Expr::Ids(ids) => match ids.iter().find(|id| (**id >> 32) as i64 != self.workspace_id) {
                Some(id) => Err(ResolveError {
                    kind: ResolveErrorKind::ForeignContact,
                    pos: 0,
                    message: format!("contact {id} is not in this workspace"),
                    suggestions: Vec::new(),
                }),
                None => Ok(()),
            },
            Expr::Attr { key, pos, .. } => {
                if self.attrs.contains_key(key) {
                    Ok(())
                } else {
                    Err(ResolveError {
                        kind: ResolveErrorKind::UnknownAttribute,
                        pos: *pos,
                        message: format!("no contact has the attribute {key:?}"),
                        suggestions: nearest(key, self.attribute_names()),
                    })
                }
            }
            Expr::Segment { name, pos } => Err(ResolveError {
                kind: ResolveErrorKind::UnknownSegment,
                pos: *pos,
                message: format!("segment {name:?} was not expanded"),
                suggestions: Vec::new(),
            }),
            Expr::Not(e) => self.check(e),
            Expr::And(v) | Expr::Or(v) => v.iter().try_for_each(|e| self.check(e)),
        }
    }

    /// Whether a term is a range test: evaluated after the lookups, so that
    /// an `&` that is already empty skips it.
    fn is_range(e: &Expr) -> bool {
        matches!(e, Expr::Attr { pred: Pred::Cmp(_, Literal::Number(_) | Literal::Date(_) | Literal::Relative(_)), .. })
    }

    /// The contacts `expr` selects; when `restrict` is given, only members of
    /// it are guaranteed to be right (callers intersect).
    fn eval(&self, expr: &Expr, now_ms: i64, restrict: Option<&Bitmap>) -> Members<'_> {
        let empty = || Members::Owned(Bitmap::new());
        match expr {
            Expr::All => Members::Borrowed(&self.live),
            Expr::Tag { path, .. } => self.tags.id_of(path).map_or_else(empty, |id| self.tags.subtree(id)),
            Expr::Dept { dept, .. } => {
                let id = match dept {
                    DeptRef::Id(id) => Some(*id),
                    DeptRef::Path(p) => self.departments.id_of(p),
                };
                id.map_or_else(empty, |id| self.departments.subtree(id))
            }
            Expr::Ids(ids) => Members::Owned(ids.iter().map(|id| (*id & 0xFFFF_FFFF) as u32).collect()),
            Expr::Segment { .. } => empty(), // refused by `check`
            Expr::Attr { key, pred, .. } => self.attrs.get(key).map_or_else(empty, |a| a.eval(pred, now_ms, restrict)),
            Expr::Not(inner) => {
                let base = restrict.unwrap_or(&self.live);
                Members::Owned(base - &*self.eval(inner, now_ms, Some(base)))
            }
            Expr::Or(parts) => {
                let parts: Vec<Members<'_>> = parts.iter().map(|p| self.eval(p, now_ms, restrict)).collect();
                Members::Owned(union(parts.iter().map(Deref::deref)))
            }
            Expr::And(parts) => {
                // Lookups first, then range tests on what is left, then exclusions.
                let mut order: Vec<&Expr> = parts.iter().collect();
                order.sort_by_key(|e| match e {
                    Expr::Not(_) => 2,
                    e if Self::is_range(e) => 1,
                    _ => 0,
                });
                let mut acc: Option<Members<'_>> = None;
                for p in order {
                    let within = acc.as_deref().or(restrict);
                    if within.is_some_and(Bitmap::is_empty) {
                        break;
                    }
                    let Some(w) = within else {
                        acc = Some(self.eval(p, now_ms, None));
                        continue;
                    };
                    let (r, exclude) = match p {
                        Expr::Not(inner) => (self.eval(inner, now_ms, Some(w)), true),
                        p => (self.eval(p, now_ms, Some(w)), false),
                    };
                    let next = match (acc.take(), restrict) {
                        (Some(a), _) if exclude => a.andnot(&r),
                        (Some(a), _) => a.and(&r),
                        (None, Some(w)) if exclude => w.andnot(&r),
                        (None, Some(w)) => w.and(&r),
                        (None, None) => unreachable!("`within` was one of them"),
                    };
                    acc = Some(Members::Owned(next));
                }
                // No parts: every contact.
                acc.unwrap_or(Members::Borrowed(&self.live))
            }
        }
    }

    /// Approximate heap bytes of the index.
    pub fn memory(&self) -> usize {
        size(&self.live)
            + self.tags.memory()
            + self.departments.memory()
            + self.attrs.iter().map(|(k, a)| k.len() + a.memory()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::parse;

    #[test]
    fn range_tests_agree_with_a_scan_at_every_threshold() {
        // Enough distinct values for bins of several values, a value held
        // by a quarter of the contacts, gaps in the ids, a chunk boundary.
        let mut values = Vec::new();
        let mut state = 7u64;
        for idx in (0..140_000u32).step_by(7) {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let r = (state >> 33) % 400;
            if r < 20 {
                continue; // no value
            }
            let v = if r < 120 { 42.0 } else { (r % 300) as f64 / 2.0 };
            values.push((idx, v));
        }
        let index = RankIndex::build(&values);
        assert!(index.bits >= 8, "ranks of several bits: {}", index.bits);
        let restrict: Bitmap = values.iter().map(|(i, _)| *i).filter(|i| i % 3 != 0).collect();
        let few: Bitmap = values.iter().map(|(i, _)| *i).filter(|i| i % 101 == 0).collect();
        let ops = [CmpOp::Eq, CmpOp::Ne, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge];
        for t in (-2..310).map(|t| f64::from(t) / 2.0) {
            for op in ops {
                for r in [None, Some(&restrict), Some(&few)] {
                    let want: Vec<u32> = values
                        .iter()
                        .filter(|(i, v)| cmp_f64(op, *v, t) && r.is_none_or(|r| r.contains(*i)))
                        .map(|(i, _)| *i)
                        .collect();
                    let mut got = index.test(op, t).into_owned();
                    if let Some(r) = r {
                        got &= r;
                    }
                    assert_eq!(got.to_vec(), want, "{op:?} {t} restricted: {}", r.is_some());
                }
            }
        }
        let mut back = index.values();
        back.sort_by_key(|(i, _)| *i);
        assert_eq!(back, values);
    }

    fn idx() -> WorkspaceIndex {
        let mut b = IndexBuilder::new(1);
        let t = |s: &str| AttrValue::Text(s.into());
        let people: Vec<Vec<(&str, AttrValue)>> = vec![
            vec![("city", t("上海")), ("spend", AttrValue::Number(100.0)), ("last_active", t("2026-11-01"))],
            vec![("city", t("杭州")), ("spend", AttrValue::Number(6000.0)), ("vip", AttrValue::Bool(true))],
            vec![("city", t("上海")), ("spend", AttrValue::Number(5000.0)), ("last_active", t("2026-01-01"))],
            vec![("spend", AttrValue::Number(-3.5))],
        ];
        for (i, attrs) in people.iter().enumerate() {
            b.add(i as u32, attrs.iter().map(|(k, v)| (*k, v)));
        }
        let mut w = b.build();
        w.tags.set_nodes(&[(1, None, "等级".into()), (2, Some(1), "等级/金牌".into()), (3, None, "流失".into())], true);
        w.tags.set_chunk(1, 0, &[3].into_iter().collect());
        w.tags.set_chunk(2, 0, &[0, 1].into_iter().collect());
        w.tags.set_chunk(3, 0, &[1].into_iter().collect());
        w
    }

    fn q(w: &WorkspaceIndex, s: &str) -> Vec<u32> {
        let now = crate::expr::parse_date("2026-11-21").unwrap();
        w.evaluate(&parse(s).unwrap(), now).unwrap().iter().collect()
    }

    #[test]
    fn terms_and_combinations() {
        let w = idx();
        assert_eq!(q(&w, "tag:等级"), [0, 1, 3]);
        assert_eq!(q(&w, "tag:等级/金牌 & !tag:流失"), [0]);
        assert_eq!(q(&w, "city = 上海 & spend >= 5000"), [2]);
        assert_eq!(q(&w, "spend > 100"), [1, 2]);
        assert_eq!(q(&w, "spend <= 100"), [0, 3]);
        assert_eq!(q(&w, "spend != 5000"), [0, 1, 3]);
        assert_eq!(q(&w, "spend = 5000.0"), [2]);
        assert!(q(&w, "spend < -1000").is_empty());
        assert_eq!(q(&w, "spend < 0"), [3]);
        assert_eq!(q(&w, "city != 上海"), [1]);
        assert_eq!(q(&w, "!(city = 上海)"), [1, 3]);
        assert_eq!(q(&w, "city in (杭州, 北京) | vip = true"), [1]);
        assert_eq!(q(&w, "city contains 海"), [0, 2]);
        assert_eq!(q(&w, "last_active > -90d"), [0]);
        assert_eq!(q(&w, "last_active < 2026-06-01"), [2]);
        assert_eq!(q(&w, "vip exists | id:4294967299"), [1, 3]);
        assert_eq!(q(&w, "all & !tag:等级"), [2]);
    }

    #[test]
    fn cached_subtrees_follow_changes() {
        let mut w = idx();
        assert_eq!(q(&w, "tag:等级"), [0, 1, 3]);
        w.tags.set_chunk(2, 0, &[2].into_iter().collect());
        assert_eq!(q(&w, "tag:等级"), [2, 3], "a child's change reaches the parent's cached union");
        w.tags.set_nodes(&[(1, None, "等级".into()), (3, None, "流失".into())], true);
        assert_eq!(q(&w, "tag:等级"), [3], "a removed child is gone from the union");
    }

    #[test]
    fn unknown_names_suggest_near_ones() {
        let w = idx();
        let e = w.evaluate(&parse("tag:\"等级/金\"").unwrap(), 0).unwrap_err();
        assert_eq!((e.kind, e.pos), (ResolveErrorKind::UnknownTag, 4));
        assert_eq!(e.suggestions[0], "等级/金牌");
        let e = w.evaluate(&parse("tag:A & ctiy = 1").unwrap(), 0).unwrap_err();
        assert_eq!(e.kind, ResolveErrorKind::UnknownTag);
        let e = w.evaluate(&parse("ctiy = 上海").unwrap(), 0).unwrap_err();
        assert_eq!((e.kind, e.suggestions.clone()), (ResolveErrorKind::UnknownAttribute, vec!["city".to_owned()]));
        let e = w.evaluate(&parse("id:8589934593").unwrap(), 0).unwrap_err();
        assert_eq!(e.kind, ResolveErrorKind::ForeignContact);
    }

    #[test]
    fn updates_are_visible_and_compaction_keeps_values() {
        let mut w = idx();
        let mut attrs = BTreeMap::new();
        attrs.insert("city".to_owned(), AttrValue::Text("北京".into()));
        attrs.insert("spend".to_owned(), AttrValue::Number(9000.0));
        w.set_contact(0, true, &attrs);
        assert_eq!(q(&w, "city = 北京"), [0]);
        assert_eq!(q(&w, "spend > 5000"), [0, 1]);
        assert_eq!(q(&w, "last_active exists"), [2], "an attribute no longer given is gone");
        w.set_contact(2, false, &BTreeMap::new());
        assert_eq!(q(&w, "all"), [0, 1, 3]);
        // Many changes: the overlay is folded into a rebuilt index.
        for i in 10..10_000u32 {
            let mut a = BTreeMap::new();
            a.insert("spend".to_owned(), AttrValue::Number(f64::from(i)));
            w.set_contact(i, true, &a);
        }
        assert!(w.attrs["spend"].overlay.len() < 4096);
        assert_eq!(q(&w, "spend >= 9000 & spend < 9003").len(), 4, "0 (9000), 9000, 9001, 9002");
        assert_eq!(q(&w, "spend > 9998"), [9999]);
    }
}
