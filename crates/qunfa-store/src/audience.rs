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

use qunfa_audience::index::{IndexBuilder, WorkspaceIndex};
use qunfa_audience::roaring::RoaringBitmap;
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

/// Reads a stored attributes object (values the import already validated).
pub fn attributes_from_json(text: &str) -> BTreeMap<String, AttrValue> {
    let Ok(map) = serde_json::from_str::<BTreeMap<String, serde_json::Value>>(text) else {
        return BTreeMap::new();
    };
    map.into_iter()
        .filter_map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => AttrValue::Text(s),
                serde_json::Value::Number(n) => AttrValue::Number(n.as_f64()?),
                serde_json::Value::Bool(b) => AttrValue::Bool(b),
                _ => return None,
            };
            Some((k, v))
        })
        .collect()
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
            let bits = RoaringBitmap::deserialize_from(r.blob(3))
                .map_err(|e| StoreError::Corrupt(format!("a membership bitmap: {e}")))?;
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
            let attrs = attributes_from_json(r.str(1));
            builder.add(r.i64(0) as u32, attrs.iter().map(|(k, v)| (k.as_str(), v)));
            Ok(())
        },
    )?;
    let mut index = builder.build();
    load_trees(c, workspace_id, &mut index)?;
    load_members(c, workspace_id, 0, &mut index)?;
    Ok(Cached { index, contacts_version, members_version })
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
        if changed > 50_000 && changed > cached.index.live().len() / 4 {
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
