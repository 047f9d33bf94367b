//! The in-memory audience index of one workspace: roaring bitmaps over dense
//! contact ids for live contacts, tag and department members, and profile
//! attributes.
//!
//! Attributes are indexed three ways at once: texts (and booleans) by value,
//! numbers by rank in a bit-sliced index, and texts that are dates
//! (`YYYY-MM-DD[THH:MM[:SS]]`) as timestamps in a second bit-sliced index. A
//! bit-sliced index keeps, for each bit of a value's rank among the
//! attribute's distinct values, the bitmap of contacts whose rank has that
//! bit: a range test is two bitmap operations per bit, restricted to the
//! candidates the rest of the expression left, and exact.
//!
//! Changes after the build go to a per-attribute overlay (the contacts whose
//! indexed value is stale, and their current values); an attribute whose
//! overlay grows past a share of its size is rebuilt from its own index.

use std::collections::{BTreeMap, HashMap};

use qunfa_core::contact::AttrValue;
use roaring::{MultiOps, RoaringBitmap};

use crate::expr::{parse_date, CmpOp, DeptRef, Expr, Literal, Pos, Pred};

/// A tree of named sets (tags by path, departments by id and name path),
/// with the direct members of each.
#[derive(Debug, Default, Clone)]
pub struct TreeSets {
    parent: HashMap<i64, Option<i64>>,
    children: HashMap<i64, Vec<i64>>,
    by_path: HashMap<String, i64>,
    path: HashMap<i64, String>,
    members: HashMap<i64, RoaringBitmap>,
    /// Unions of sets that have children, kept until a change.
    subtree_cache: std::sync::Arc<std::sync::Mutex<HashMap<i64, RoaringBitmap>>>,
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
    pub fn set_chunk(&mut self, set_id: i64, chunk: u32, bits: &RoaringBitmap) {
        let m = self.members.entry(set_id).or_default();
        let lo = chunk << 16;
        m.remove_range(lo..=lo | 0xFFFF);
        *m |= bits;
        self.forget_subtrees();
    }

    fn forget_subtrees(&mut self) {
        // A fresh cache: clones of this index (none today) keep their own.
        self.subtree_cache = Default::default();
    }

    /// Direct members of a set.
    pub fn direct(&self, id: i64) -> Option<&RoaringBitmap> {
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
    pub fn subtree(&self, root: i64) -> RoaringBitmap {
        if !self.children.contains_key(&root) {
            return self.members.get(&root).cloned().unwrap_or_default();
        }
        let cache = std::sync::Arc::clone(&self.subtree_cache);
        let mut cache = cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(hit) = cache.get(&root) {
            return hit.clone();
        }
        let union = self.compute_subtree(root);
        cache.insert(root, union.clone());
        union
    }

    fn compute_subtree(&self, root: i64) -> RoaringBitmap {
        let mut parts: Vec<&RoaringBitmap> = Vec::new();
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
        match parts.as_slice() {
            [] => RoaringBitmap::new(),
            [one] => (*one).clone(),
            _ => parts.union(),
        }
    }

    fn memory(&self) -> usize {
        self.members.values().map(RoaringBitmap::serialized_size).sum()
    }
}

/// Exact range tests over ranks of distinct values (a bit-sliced index).
#[derive(Debug, Default, Clone)]
struct RankIndex {
    /// Sorted distinct values.
    dict: Vec<f64>,
    /// `slices[i]`: contacts whose rank has bit `i` set.
    slices: Vec<RoaringBitmap>,
    /// Contacts with a value.
    exists: RoaringBitmap,
}

impl RankIndex {
    fn build(values: &[(u32, f64)]) -> Self {
        let mut dict: Vec<f64> = values.iter().map(|(_, v)| *v).collect();
        dict.sort_by(f64::total_cmp);
        dict.dedup();
        let bits = usize::BITS - dict.len().saturating_sub(1).leading_zeros();
        let mut slices = vec![RoaringBitmap::new(); bits as usize];
        let mut exists = RoaringBitmap::new();
        for &(idx, v) in values {
            let rank = dict.partition_point(|d| *d < v) as u32;
            let mut r = rank;
            let mut i = 0;
            while r != 0 {
                if r & 1 == 1 {
                    slices[i].insert(idx);
                }
                r >>= 1;
                i += 1;
            }
            exists.insert(idx);
        }
        Self { dict, slices, exists }
    }

    /// Contacts (within `restrict` if given) whose rank is `>= lo` and `< hi`.
    fn rank_range(&self, lo: usize, hi: usize, restrict: Option<&RoaringBitmap>) -> RoaringBitmap {
        let base = match restrict {
            Some(r) => &self.exists & r,
            None => self.exists.clone(),
        };
        if lo >= hi || base.is_empty() {
            return RoaringBitmap::new();
        }
        let n = self.dict.len();
        match (lo == 0, hi >= n) {
            (true, true) => base,
            (false, true) => self.at_least(lo as u32, base),
            (true, false) => self.below(hi as u32, base),
            (false, false) if hi == lo + 1 => self.equal(lo as u32, base),
            (false, false) => {
                let from_lo = self.at_least(lo as u32, base);
                self.below(hi as u32, from_lo)
            }
        }
    }

    /// Members of `base` whose rank is exactly `c`: every step shrinks the
    /// set in place.
    fn equal(&self, c: u32, mut eq: RoaringBitmap) -> RoaringBitmap {
        for (i, slice) in self.slices.iter().enumerate().rev() {
            if eq.is_empty() {
                break;
            }
            if c >> i & 1 == 1 {
                eq &= slice;
            } else {
                eq -= slice;
            }
        }
        eq
    }

    /// Members of `base` whose rank is below `c`. The pieces are taken where
    /// `c` has a 1 bit, after the candidates shrank through the 0 bits above
    /// it: cheap when `c` is small.
    fn below(&self, c: u32, base: RoaringBitmap) -> RoaringBitmap {
        if c as usize >= self.dict.len() {
            return base;
        }
        if c == 0 {
            return RoaringBitmap::new();
        }
        if (c as usize) * 2 > self.dict.len() {
            let at_least = self.at_least_direct(c, base.clone());
            return base - at_least;
        }
        let mut pieces: Vec<RoaringBitmap> = Vec::new();
        let mut eq = base;
        for (i, slice) in self.slices.iter().enumerate().rev() {
            if eq.is_empty() {
                break;
            }
            if c >> i & 1 == 1 {
                pieces.push(&eq - slice);
                eq &= slice;
            } else {
                eq -= slice;
            }
        }
        pieces.union()
    }

    /// Members of `base` whose rank is at least `c` (O'Neil's algorithm),
    /// as the complement of the ranks below when `c` is small.
    fn at_least(&self, c: u32, base: RoaringBitmap) -> RoaringBitmap {
        if c == 0 {
            return base;
        }
        if (c as usize) * 2 <= self.dict.len() {
            let below = self.below(c, base.clone());
            return base - below;
        }
        self.at_least_direct(c, base)
    }

    fn at_least_direct(&self, c: u32, base: RoaringBitmap) -> RoaringBitmap {
        if c == 0 {
            return base;
        }
        if (c as usize) >= self.dict.len() || self.slices.len() < (u32::BITS - c.leading_zeros()) as usize {
            return RoaringBitmap::new();
        }
        let mut above: Vec<RoaringBitmap> = Vec::new();
        let mut eq = base;
        for i in (0..self.slices.len()).rev() {
            if eq.is_empty() {
                break;
            }
            if c >> i & 1 == 1 {
                eq &= &self.slices[i];
            } else {
                above.push(&eq & &self.slices[i]);
                eq -= &self.slices[i];
            }
        }
        above.push(eq);
        above.union()
    }

    /// The rank of every contact with a value (for a rebuild).
    fn values(&self) -> Vec<(u32, f64)> {
        let mut ranks: BTreeMap<u32, u32> = self.exists.iter().map(|i| (i, 0)).collect();
        for (bit, slice) in self.slices.iter().enumerate() {
            for idx in slice {
                if let Some(r) = ranks.get_mut(&idx) {
                    *r |= 1 << bit;
                }
            }
        }
        ranks.into_iter().map(|(idx, r)| (idx, self.dict[r as usize])).collect()
    }

    fn test(&self, op: CmpOp, v: f64, restrict: Option<&RoaringBitmap>) -> RoaringBitmap {
        let below = self.dict.partition_point(|d| *d < v);
        let upto = self.dict.partition_point(|d| *d <= v);
        let n = self.dict.len();
        match op {
            CmpOp::Eq => self.rank_range(below, upto, restrict),
            CmpOp::Ne => {
                let mut r = self.rank_range(0, below, restrict);
                r |= self.rank_range(upto, n, restrict);
                r
            }
            CmpOp::Lt => self.rank_range(0, below, restrict),
            CmpOp::Le => self.rank_range(0, upto, restrict),
            CmpOp::Gt => self.rank_range(upto, n, restrict),
            CmpOp::Ge => self.rank_range(below, n, restrict),
        }
    }

    fn memory(&self) -> usize {
        self.slices.iter().map(RoaringBitmap::serialized_size).sum::<usize>()
            + self.exists.serialized_size()
            + self.dict.len() * 8
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
    present: RoaringBitmap,
    /// Texts that are not dates, by value.
    text: HashMap<Box<str>, RoaringBitmap>,
    /// Contacts whose value is such a text.
    texts: RoaringBitmap,
    bools: [RoaringBitmap; 2],
    numbers: RankIndex,
    dates: RankIndex,
    /// Contacts whose indexed value is out of date…
    stale: RoaringBitmap,
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
    present: RoaringBitmap,
    text: HashMap<Box<str>, RoaringBitmap>,
    bools: [RoaringBitmap; 2],
    numbers: Vec<(u32, f64)>,
    dates: Vec<(u32, f64)>,
}

impl AttrBuilder {
    fn add(&mut self, idx: u32, v: AttrRef<'_>) {
        self.present.insert(idx);
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
                bm.insert(idx);
            }
            AttrRef::Number(n) => self.numbers.push((idx, n)),
            AttrRef::Bool(b) => {
                self.bools[usize::from(b)].insert(idx);
            }
        }
    }

    fn build(self) -> AttrIndex {
        let texts = self.text.values().union();
        AttrIndex {
            present: self.present,
            text: self.text,
            texts,
            bools: self.bools,
            numbers: RankIndex::build(&self.numbers),
            dates: RankIndex::build(&self.dates),
            stale: RoaringBitmap::new(),
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
    fn base(&self, pred: &Pred, now_ms: i64, restrict: Option<&RoaringBitmap>) -> RoaringBitmap {
        match pred {
            Pred::Exists => self.present.clone(),
            Pred::Contains(needle) => {
                let needle = needle.to_lowercase();
                self.text.iter().filter(|(v, _)| v.to_lowercase().contains(&needle)).map(|(_, bm)| bm).union()
            }
            Pred::In(list) => list
                .iter()
                .map(|l| self.base(&Pred::Cmp(CmpOp::Eq, l.clone()), now_ms, restrict))
                .collect::<Vec<_>>()
                .union(),
            Pred::Cmp(op, l) => match l {
                Literal::Text(t) => {
                    if let Some(d) = date_literal(l) {
                        return self.dates.test(*op, literal_ms(&d, now_ms) as f64, restrict);
                    }
                    let eq = self.text.get(t.as_str()).cloned().unwrap_or_default();
                    match op {
                        CmpOp::Eq => eq,
                        CmpOp::Ne => &self.texts - eq,
                        _ => RoaringBitmap::new(),
                    }
                }
                Literal::Bool(b) => match op {
                    CmpOp::Eq => self.bools[usize::from(*b)].clone(),
                    CmpOp::Ne => self.bools[usize::from(!*b)].clone(),
                    _ => RoaringBitmap::new(),
                },
                Literal::Number(n) => self.numbers.test(*op, *n, restrict),
                Literal::Date(_) | Literal::Relative(_) => self.dates.test(*op, literal_ms(l, now_ms) as f64, restrict),
            },
        }
    }

    fn eval(&self, pred: &Pred, now_ms: i64, restrict: Option<&RoaringBitmap>) -> RoaringBitmap {
        let mut out = self.base(pred, now_ms, restrict);
        if !self.stale.is_empty() {
            out -= &self.stale;
            for (idx, v) in &self.overlay {
                if restrict.is_none_or(|r| r.contains(*idx)) && value_matches(v.as_ref(), pred, now_ms) {
                    out.insert(*idx);
                }
            }
        }
        out
    }

    /// The current value of every contact that has one (for a rebuild).
    fn current_values(&self) -> Vec<(u32, AttrValue)> {
        let mut out: Vec<(u32, AttrValue)> = Vec::with_capacity(self.present.len() as usize);
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
        self.present.serialized_size()
            + self.text.iter().map(|(k, v)| k.len() + 48 + v.serialized_size()).sum::<usize>()
            + self.bools.iter().map(RoaringBitmap::serialized_size).sum::<usize>()
            + self.numbers.memory()
            + self.dates.memory()
            + self.stale.serialized_size()
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
    live: RoaringBitmap,
    pub tags: TreeSets,
    pub departments: TreeSets,
    attrs: HashMap<String, AttrIndex>,
}

/// Builds a [`WorkspaceIndex`] from contacts given in any order (fastest in
/// ascending id order).
pub struct IndexBuilder {
    workspace_id: i64,
    live: RoaringBitmap,
    attrs: HashMap<String, AttrBuilder>,
}

impl IndexBuilder {
    pub fn new(workspace_id: i64) -> Self {
        Self { workspace_id, live: RoaringBitmap::new(), attrs: HashMap::new() }
    }

    /// Adds a live contact with its attributes.
    pub fn add<'a>(&mut self, idx: u32, attributes: impl IntoIterator<Item = (&'a str, &'a AttrValue)>) {
        self.add_refs(idx, attributes.into_iter().map(|(k, v)| (k, AttrRef::from(v))));
    }

    /// [`IndexBuilder::add`] with borrowed values.
    pub fn add_refs<'a>(&mut self, idx: u32, attributes: impl IntoIterator<Item = (&'a str, AttrRef<'a>)>) {
        // `insert`, not `push`: roaring's `push` looks for the maximum of a
        // bitmap container on every call (a 1,024-word scan).
        self.live.insert(idx);
        for (k, v) in attributes {
            match self.attrs.get_mut(k) {
                Some(b) => b.add(idx, v),
                None => self.attrs.entry(k.to_owned()).or_default().add(idx, v),
            }
        }
    }

    pub fn build(self) -> WorkspaceIndex {
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
    pub fn live(&self) -> &RoaringBitmap {
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
            self.live.insert(idx);
        } else {
            self.live.remove(idx);
        }
        for (k, a) in self.attrs.iter_mut() {
            if !attributes.contains_key(k) && a.has(idx) {
                a.stale.insert(idx);
                a.overlay.insert(idx, None);
            }
        }
        for (k, v) in attributes {
            let a = self.attrs.entry(k.clone()).or_default();
            a.stale.insert(idx);
            a.overlay.insert(idx, Some(v.clone()));
        }
        self.compact();
    }

    /// Rebuilds attributes whose overlay has grown large.
    fn compact(&mut self) {
        for a in self.attrs.values_mut() {
            let limit = (a.present.len() as usize / 16).max(MIN_OVERLAY_REBUILD);
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
    pub fn evaluate(&self, expr: &Expr, now_ms: i64) -> Result<RoaringBitmap, ResolveError> {
        self.check(expr)?;
        let mut out = self.eval(expr, now_ms, None);
        out &= &self.live;
        Ok(out)
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

    /// Whether evaluating a term gains from a restriction (range tests walk
    /// bit slices; everything else is a lookup).
    fn is_range(e: &Expr) -> bool {
        matches!(e, Expr::Attr { pred: Pred::Cmp(_, Literal::Number(_) | Literal::Date(_) | Literal::Relative(_)), .. })
    }

    /// The contacts `expr` selects; when `restrict` is given, only members of
    /// it are guaranteed to be right (callers intersect).
    fn eval(&self, expr: &Expr, now_ms: i64, restrict: Option<&RoaringBitmap>) -> RoaringBitmap {
        match expr {
            Expr::All => self.live.clone(),
            Expr::Tag { path, .. } => self.tags.id_of(path).map(|id| self.tags.subtree(id)).unwrap_or_default(),
            Expr::Dept { dept, .. } => {
                let id = match dept {
                    DeptRef::Id(id) => Some(*id),
                    DeptRef::Path(p) => self.departments.id_of(p),
                };
                id.map(|id| self.departments.subtree(id)).unwrap_or_default()
            }
            Expr::Ids(ids) => ids.iter().map(|id| (*id & 0xFFFF_FFFF) as u32).collect(),
            Expr::Segment { .. } => RoaringBitmap::new(), // refused by `check`
            Expr::Attr { key, pred, .. } => {
                self.attrs.get(key).map(|a| a.eval(pred, now_ms, restrict)).unwrap_or_default()
            }
            Expr::Not(inner) => {
                let base = restrict.unwrap_or(&self.live);
                base - self.eval(inner, now_ms, Some(base))
            }
            Expr::Or(parts) => {
                let mut out = RoaringBitmap::new();
                for p in parts {
                    out |= self.eval(p, now_ms, restrict);
                }
                out
            }
            Expr::And(parts) => {
                // Lookups first, then range tests on what is left, then exclusions.
                let mut order: Vec<&Expr> = parts.iter().collect();
                order.sort_by_key(|e| match e {
                    Expr::Not(_) => 2,
                    e if Self::is_range(e) => 1,
                    _ => 0,
                });
                let mut acc: Option<RoaringBitmap> = restrict.cloned();
                for p in order {
                    if acc.as_ref().is_some_and(RoaringBitmap::is_empty) {
                        break;
                    }
                    acc = Some(match (acc, p) {
                        (Some(a), Expr::Not(inner)) => {
                            let minus = self.eval(inner, now_ms, Some(&a));
                            a - minus
                        }
                        (Some(a), p) => {
                            let r = self.eval(p, now_ms, Some(&a));
                            a & r
                        }
                        (None, p) => self.eval(p, now_ms, None),
                    });
                }
                acc.unwrap_or_default()
            }
        }
    }

    /// Approximate heap bytes of the index.
    pub fn memory(&self) -> usize {
        self.live.serialized_size()
            + self.tags.memory()
            + self.departments.memory()
            + self.attrs.iter().map(|(k, a)| k.len() + a.memory()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::parse;

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
