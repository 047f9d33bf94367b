//! The audience indexes of the workspaces, kept fresh from the database.
//!
//! An index is built on first use from the contacts and membership rows, and
//! before every use it asks the database for the workspace's two versions
//! (`contacts_version`, `members_version`): when either moved, it reads only
//! the rows written since (each carries the version of the transaction that
//! wrote it), in one read snapshot. A change committed by this node or any
//! other node sharing the database is therefore visible to the very next
//! query, at the cost of one small query when nothing changed.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use std::borrow::Cow;

use qunfa_audience::index::{AttrRef, IndexBuilder, WorkspaceIndex};
use qunfa_core::contact::AttrValue;

use crate::{members::SetKind, params, Conn, Store, StoreError};

/// The indexes of every workspace used so far.
#[derive(Default)]
pub struct Audiences {
    workspaces: Mutex<HashMap<i64, Arc<Mutex<Option<Cached>>>>>,
}

struct Cached {
    index: WorkspaceIndex,
    contacts_version: i64,
    members_version: i64,
}

/// Reads a stored attributes object (values the import already validated)
/// into owned values; [`add_stored`] reads the same without copies.
pub fn attributes_from_json(text: &str) -> BTreeMap<String, AttrValue> {
    let Ok(StoredAttrs(pairs)) = serde_json::from_str::<StoredAttrs<'_>>(text) else {
        return BTreeMap::new();
    };
    pairs
        .into_iter()
        .filter_map(|(k, v)| {
            let v = match v {
                Stored::Text(t) => AttrValue::Text(t.into_owned()),
                Stored::Number(n) => AttrValue::Number(n),
                Stored::Bool(b) => AttrValue::Bool(b),
                Stored::Other => return None,
            };
            Some((k.into_owned(), v))
        })
        .collect()
}

/// A stored attribute value, borrowed from the row's text where possible.
enum Stored<'a> {
    Text(Cow<'a, str>),
    Number(f64),
    Bool(bool),
    Other,
}

impl<'de> serde::Deserialize<'de> for Stored<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Stored<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an attribute value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Stored::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Stored::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Stored::Number(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Stored::Number(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Stored::Number(v as f64))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Stored::Bool(v))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Stored::Other)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Stored::Other)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
                Ok(Stored::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// A stored attributes object as borrowed pairs.
struct StoredAttrs<'a>(Vec<(Cow<'a, str>, Stored<'a>)>);

impl<'de> serde::Deserialize<'de> for StoredAttrs<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Key<'a>(Cow<'a, str>);
        impl<'de> serde::Deserialize<'de> for Key<'de> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                match Stored::deserialize(d)? {
                    Stored::Text(t) => Ok(Key(t)),
                    _ => Err(serde::de::Error::custom("a key is a string")),
                }
            }
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StoredAttrs<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an attributes object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Key(k), v)) = map.next_entry::<Key<'de>, Stored<'de>>()? {
                    out.push((k, v));
                }
                Ok(StoredAttrs(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Adds a stored contact to an index builder without copying its values.
fn add_stored(builder: &mut IndexBuilder, idx: u32, attributes: &str) {
    let Ok(StoredAttrs(pairs)) = serde_json::from_str::<StoredAttrs<'_>>(attributes) else {
        builder.add_refs(idx, std::iter::empty());
        return;
    };
    builder.add_refs(
        idx,
        pairs.iter().filter_map(|(k, v)| {
            let v = match v {
                Stored::Text(t) => AttrRef::Text(t),
                Stored::Number(n) => AttrRef::Number(*n),
                Stored::Bool(b) => AttrRef::Bool(*b),
                Stored::Other => return None,
            };
            Some((k.as_ref(), v))
        }),
    );
}

fn versions(c: &mut Conn, workspace_id: i64) -> Result<(i64, i64), StoreError> {
    let r =
        c.query_one("SELECT contacts_version, members_version FROM workspaces WHERE id = ?", params![workspace_id])?;
    Ok((r.i64(0), r.i64(1)))
}

fn load_trees(c: &mut Conn, workspace_id: i64, index: &mut WorkspaceIndex) -> Result<(), StoreError> {
    let tags: Vec<(i64, Option<i64>, String)> = c
        .query("SELECT id, parent_id, path FROM tags WHERE workspace_id = ?", params![workspace_id])?
        .iter()
        .map(|r| (r.i64(0), r.opt_i64(1), r.string(2)))
        .collect();
    index.tags.set_nodes(&tags, true);
    let depts: Vec<(i64, Option<i64>, String)> = c
        .query("SELECT id, parent_id, name FROM departments WHERE workspace_id = ?", params![workspace_id])?
        .iter()
        .map(|r| (r.i64(0), r.opt_i64(1), r.string(2)))
        .collect();
    index.departments.set_nodes(&depts, false);
    Ok(())
}

/// Applies membership rows written after `since` (all of them for 0).
fn load_members(c: &mut Conn, workspace_id: i64, since: i64, index: &mut WorkspaceIndex) -> Result<(), StoreError> {
    c.for_each_row(
        "SELECT kind, set_id, chunk, bits FROM member_sets WHERE workspace_id = ? AND version > ?",
        params![workspace_id, since],
        &mut |r| {
            let bits = crate::members::decode(r.blob(3))?;
            let sets = if r.i64(0) == SetKind::Tag as i64 { &mut index.tags } else { &mut index.departments };
            sets.set_chunk(r.i64(1), r.i64(2) as u32, &bits);
            Ok(())
        },
    )
}

fn build(c: &mut Conn, workspace_id: i64) -> Result<Cached, StoreError> {
    let (contacts_version, members_version) = versions(c, workspace_id)?;
    let mut builder = IndexBuilder::new(workspace_id);
    c.for_each_row(
        "SELECT idx, attributes FROM contacts WHERE workspace_id = ? AND deleted_at IS NULL ORDER BY idx",
        params![workspace_id],
        &mut |r| {
            add_stored(&mut builder, r.i64(0) as u32, r.str(1));
            Ok(())
        },
    )?;
    let mut index = builder.build();
    load_trees(c, workspace_id, &mut index)?;
    load_members(c, workspace_id, 0, &mut index)?;
    // The bitmaps were allocated between the build's temporaries; a copy
    // packs them together, so the pages the temporaries leave free can be
    // given back to the system instead of staying resident half-used.
    let packed = index.clone();
    drop(index);
    Ok(Cached { index: packed, contacts_version, members_version })
}

/// Brings an index up to date; `false` when so much changed that building
/// it again is cheaper.
fn refresh(c: &mut Conn, workspace_id: i64, cached: &mut Cached) -> Result<bool, StoreError> {
    let (contacts_version, members_version) = versions(c, workspace_id)?;
    if contacts_version > cached.contacts_version {
        let changed = c
            .query_one(
                "SELECT COUNT(*) FROM contacts WHERE workspace_id = ? AND version > ?",
                params![workspace_id, cached.contacts_version],
            )?
            .i64(0) as u64;
        if changed > 50_000 && changed > cached.index.live().cardinality() / 4 {
            return Ok(false);
        }
        let index = &mut cached.index;
        c.for_each_row(
            "SELECT idx, attributes, deleted_at FROM contacts WHERE workspace_id = ? AND version > ? ORDER BY idx",
            params![workspace_id, cached.contacts_version],
            &mut |r| {
                let live = r.opt_i64(2).is_none();
                let attrs = if live { attributes_from_json(r.str(1)) } else { BTreeMap::new() };
                index.set_contact(r.i64(0) as u32, live, &attrs);
                Ok(())
            },
        )?;
        cached.contacts_version = contacts_version;
    }
    if members_version > cached.members_version {
        load_trees(c, workspace_id, &mut cached.index)?;
        load_members(c, workspace_id, cached.members_version, &mut cached.index)?;
        cached.members_version = members_version;
    }
    Ok(true)
}

impl Store {
    /// Runs `f` on the workspace's audience index, first brought up to date
    /// with everything committed (built on first use).
    ///
    /// # Errors
    /// Database errors.
    pub fn with_audience<T>(&self, workspace_id: i64, f: impl FnOnce(&WorkspaceIndex) -> T) -> Result<T, StoreError> {
        let slot = {
            let mut map = self.audiences.workspaces.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            map.entry(workspace_id).or_default().clone()
        };
        let mut guard = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.db.read(|c| {
            let fresh = match guard.as_mut() {
                Some(cached) => refresh(c, workspace_id, cached)?,
                None => false,
            };
            if !fresh {
                *guard = Some(build(c, workspace_id)?);
            }
            Ok(())
        })?;
        let cached = guard.as_ref().expect("built above");
        Ok(f(&cached.index))
    }

    /// Builds the index of every workspace (at start, so that the first
    /// query of each does not wait for it).
    ///
    /// # Errors
    /// Database errors.
    pub fn warm_audiences(&self) -> Result<usize, StoreError> {
        let ids: Vec<i64> =
            self.db.conn()?.query("SELECT id FROM workspaces", params![])?.iter().map(|r| r.i64(0)).collect();
        for id in &ids {
            self.with_audience(*id, |_| ())?;
        }
        Ok(ids.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qunfa_audience::expr::parse;

    #[test]
    fn stored_attributes_are_read_without_copies_and_with_escapes() {
        let mut b = IndexBuilder::new(1);
        add_stored(
            &mut b,
            0,
            r#"{"a":"x\"y","n":5,"f":-2.5,"b":true,"z":null,"l":[1,{"k":[]}],"o":{"k":1},"d":"2026-01-02"}"#,
        );
        add_stored(&mut b, 1, "not json");
        add_stored(&mut b, 2, r#"{"a":"plain"}"#);
        let w = b.build();
        let q = |e: &str| w.evaluate(&parse(e).unwrap(), 0).map(|r| r.iter().collect::<Vec<u32>>());
        assert_eq!(q(r#"a = "x\"y""#), Ok(vec![0]));
        assert_eq!(q("n = 5 & f < 0 & b = true & d > 2026-01-01"), Ok(vec![0]));
        assert_eq!(q("all"), Ok(vec![0, 1, 2]), "a row that does not parse is a contact without attributes");
        assert!(q("z exists").is_err() && q("l exists").is_err(), "null, arrays and objects are not indexed");
        let owned = attributes_from_json(r#"{"a":"x\"y","n":5,"z":null,"o":{"k":1}}"#);
        assert_eq!(owned.len(), 2);
        assert_eq!(owned["a"], AttrValue::Text("x\"y".into()));
        assert_eq!(owned["n"], AttrValue::Number(5.0));
    }
}
