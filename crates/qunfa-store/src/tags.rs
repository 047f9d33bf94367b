//! Tags (flat for personal workspaces, up to three levels for enterprise) and
//! departments (a tree), with their members.

use std::collections::{BTreeMap, HashMap};

use qunfa_audience::Bitmap;

use qunfa_core::{policy::TierPolicy, tag::TagPath, workspace::Name};

use crate::{
    audit,
    members::{self, SetKind},
    params, Code, Conn, Store, StoreError,
};

/// A tag with its direct member count.
#[derive(Debug, Clone)]
pub struct TagRecord {
    pub id: i64,
    pub path: String,
    pub parent_id: Option<i64>,
    pub n_contacts: u64,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// Contacts to add to or remove from a tag.
#[derive(Debug, Clone, Copy)]
pub enum MembershipChange<'a> {
    Add(&'a [u32]),
    Remove(&'a [u32]),
}

fn tag_record(r: &crate::Row, n_contacts: u64) -> TagRecord {
    TagRecord {
        id: r.i64(0),
        path: r.string(1),
        parent_id: r.opt_i64(2),
        created_at: r.i64(3),
        last_used_at: r.opt_i64(4),
        n_contacts,
    }
}

/// A department.
#[derive(Debug, Clone)]
pub struct DepartmentRecord {
    pub id: i64,
    pub name: String,
    pub parent_id: Option<i64>,
    pub n_contacts: u64,
}

/// Makes sure every path (and, for nested tags, its ancestors) exists, adding
/// ids to `ids` (loaded from the database on first use, `loaded`); returns
/// the number created. Enforces the tier's tag rules.
pub(crate) fn ensure_paths<'m>(
    c: &mut Conn,
    workspace_id: i64,
    tier: &TierPolicy,
    paths: &[&TagPath],
    now: i64,
    ids: &'m mut HashMap<String, i64>,
    loaded: &mut bool,
) -> Result<(&'m HashMap<String, i64>, u64), StoreError> {
    if paths.is_empty() {
        return Ok((ids, 0));
    }
    if !*loaded {
        for r in c.query("SELECT path, id FROM tags WHERE workspace_id = ?", params![workspace_id])? {
            ids.insert(r.string(0), r.i64(1));
        }
        *loaded = true;
    }
    let mut created = 0;
    for path in paths {
        if path.depth() > 1 && !tier.nested_tags {
            return Err(StoreError::rejected(
                Code::TagNested,
                format!("tag {:?} is nested; this workspace has flat tags", path.as_str()),
            ));
        }
        for p in path.ancestors_and_self() {
            if ids.contains_key(p.as_str()) {
                continue;
            }
            let parent_id = p.parent().map(|parent| ids[parent.as_str()]);
            let id = c
                .query_one(
                    "INSERT INTO tags (workspace_id, path, parent_id, created_at) VALUES (?, ?, ?, ?) RETURNING id",
                    params![workspace_id, p.as_str(), parent_id, now],
                )?
                .i64(0);
            ids.insert(p.as_str().to_owned(), id);
            created += 1;
        }
    }
    if created > 0 {
        // The tag tree changed: indexes following the membership version reload it.
        members::bump_version(c, workspace_id)?;
    }
    if let Some(max) = tier.max_tags {
        if created > 0 && ids.len() as u64 > max {
            return Err(StoreError::rejected(
                Code::LimitTags,
                format!("this would make {} tags; the limit is {max}", ids.len()),
            ));
        }
    }
    Ok((ids, created))
}

/// Refuses when a tag among `tag_ids` holds more contacts than the tier allows.
pub(crate) fn check_member_limits(
    c: &mut Conn,
    workspace_id: i64,
    tier: &TierPolicy,
    tag_ids: &[i64],
) -> Result<(), StoreError> {
    let Some(max) = tier.max_contacts_per_tag else { return Ok(()) };
    for &tag_id in tag_ids {
        let n = members::count(c, workspace_id, SetKind::Tag, tag_id)?;
        if n > max {
            let path = c.query_one("SELECT path FROM tags WHERE id = ?", params![tag_id])?.string(0);
            return Err(StoreError::Rejected {
                code: Code::LimitTagMembers,
                message: format!("tag {path:?} would hold {n} contacts; the limit is {max}"),
                details: vec![path],
            });
        }
    }
    Ok(())
}

impl Store {
    /// Creates a tag (and its missing ancestors).
    ///
    /// # Errors
    /// `QF-DUPLICATE`, tier rule errors, or database errors.
    pub fn create_tag(
        &self,
        workspace_id: i64,
        tier: &TierPolicy,
        path: &TagPath,
        actor: &str,
        now: i64,
    ) -> Result<TagRecord, StoreError> {
        let id = self.db.write(|c| {
            let (mut ids, mut loaded) = (HashMap::new(), false);
            let (ids, created) = ensure_paths(c, workspace_id, tier, &[path], now, &mut ids, &mut loaded)?;
            if created == 0 {
                return Err(StoreError::rejected(Code::Duplicate, format!("tag {:?} exists", path.as_str())));
            }
            let id = ids[path.as_str()];
            audit::append(
                c,
                workspace_id,
                actor,
                "tag.created",
                &format!("tag:{id}"),
                &serde_json::json!({"path": path.as_str()}).to_string(),
                now,
            )?;
            Ok(id)
        })?;
        self.tag(workspace_id, id)
    }

    /// One tag.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn tag(&self, workspace_id: i64, id: i64) -> Result<TagRecord, StoreError> {
        let mut c = self.db.conn()?;
        let r = c.query_one(
            "SELECT id, path, parent_id, created_at, last_used_at FROM tags WHERE workspace_id = ? AND id = ?",
            params![workspace_id, id],
        )?;
        let n = members::count(&mut c, workspace_id, SetKind::Tag, id)?;
        Ok(tag_record(&r, n))
    }

    /// Whether a tag id exists in the workspace (without counting its members).
    ///
    /// # Errors
    /// Database errors.
    pub fn tag_exists(&self, workspace_id: i64, id: i64) -> Result<bool, StoreError> {
        Ok(self
            .db
            .conn()?
            .query_opt("SELECT 1 FROM tags WHERE workspace_id = ? AND id = ?", params![workspace_id, id])?
            .is_some())
    }

    /// The id of a tag path.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn tag_by_path(&self, workspace_id: i64, path: &TagPath) -> Result<i64, StoreError> {
        Ok(self
            .db
            .conn()?
            .query_one("SELECT id FROM tags WHERE workspace_id = ? AND path = ?", params![workspace_id, path.as_str()])?
            .i64(0))
    }

    /// Every tag of a workspace, by path.
    ///
    /// # Errors
    /// Database errors.
    pub fn tags(&self, workspace_id: i64) -> Result<Vec<TagRecord>, StoreError> {
        let mut c = self.db.conn()?;
        let rows = c.query(
            "SELECT id, path, parent_id, created_at, last_used_at FROM tags WHERE workspace_id = ? ORDER BY path",
            params![workspace_id],
        )?;
        let counts = members::counts(&mut c, workspace_id, SetKind::Tag)?;
        Ok(rows.iter().map(|r| tag_record(r, counts.get(&r.i64(0)).copied().unwrap_or(0))).collect())
    }

    /// Adds or removes contacts of a tag. Returns how many changed.
    ///
    /// # Errors
    /// `NotFound` for an unknown tag or contact, `QF-LIMIT-TAG-MEMBERS`, or database errors.
    pub fn tag_members(
        &self,
        workspace_id: i64,
        tier: &TierPolicy,
        tag_id: i64,
        change: MembershipChange<'_>,
        actor: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        let (idxs, add) = match change {
            MembershipChange::Add(idxs) => (idxs, true),
            MembershipChange::Remove(idxs) => (idxs, false),
        };
        self.db.write(|c| {
            c.query_one("SELECT id FROM tags WHERE id = ? AND workspace_id = ?", params![tag_id, workspace_id])?;
            require_contacts(c, workspace_id, idxs)?;
            let ids: Bitmap = idxs.iter().copied().collect();
            let changed = members::change(c, workspace_id, SetKind::Tag, &BTreeMap::from([(tag_id, ids)]), add)?;
            let changed = changed.get(&tag_id).copied().unwrap_or(0);
            if add {
                check_member_limits(c, workspace_id, tier, &[tag_id])?;
            }
            let action = if add { "tag.members_added" } else { "tag.members_removed" };
            audit::append(
                c,
                workspace_id,
                actor,
                action,
                &format!("tag:{tag_id}"),
                &serde_json::json!({"changed": changed, "requested": idxs.len()}).to_string(),
                now,
            )?;
            Ok(changed)
        })
    }

    /// Creates a department under `parent_id`.
    ///
    /// # Errors
    /// `NotFound` for an unknown parent, or database errors.
    pub fn create_department(
        &self,
        workspace_id: i64,
        name: &Name,
        parent_id: Option<i64>,
        actor: &str,
        now: i64,
    ) -> Result<DepartmentRecord, StoreError> {
        self.db.write(|c| {
            if let Some(parent) = parent_id {
                c.query_one("SELECT id FROM departments WHERE id = ? AND workspace_id = ?", params![parent, workspace_id])
                    .map_err(|_| StoreError::rejected(Code::InvalidDepartment, format!("parent department {parent} does not exist")))?;
            }
            members::bump_version(c, workspace_id)?;
            let id = c
                .query_one(
                    "INSERT INTO departments (workspace_id, name, parent_id, created_at) VALUES (?, ?, ?, ?) RETURNING id",
                    params![workspace_id, name.as_str(), parent_id, now],
                )?
                .i64(0);
            audit::append(c, workspace_id, actor, "department.created", &format!("department:{id}"), &serde_json::json!({"name": name.as_str(), "parent_id": parent_id}).to_string(), now)?;
            Ok(DepartmentRecord { id, name: name.as_str().to_owned(), parent_id, n_contacts: 0 })
        })
    }

    /// Whether a department id exists in the workspace.
    ///
    /// # Errors
    /// Database errors.
    pub fn department_exists(&self, workspace_id: i64, id: i64) -> Result<bool, StoreError> {
        Ok(self
            .db
            .conn()?
            .query_opt("SELECT 1 FROM departments WHERE workspace_id = ? AND id = ?", params![workspace_id, id])?
            .is_some())
    }

    /// Every department of a workspace.
    ///
    /// # Errors
    /// Database errors.
    pub fn departments(&self, workspace_id: i64) -> Result<Vec<DepartmentRecord>, StoreError> {
        let mut c = self.db.conn()?;
        let rows = c.query(
            "SELECT id, name, parent_id FROM departments WHERE workspace_id = ? ORDER BY id",
            params![workspace_id],
        )?;
        let counts = members::counts(&mut c, workspace_id, SetKind::Department)?;
        Ok(rows
            .iter()
            .map(|r| DepartmentRecord {
                id: r.i64(0),
                name: r.string(1),
                parent_id: r.opt_i64(2),
                n_contacts: counts.get(&r.i64(0)).copied().unwrap_or(0),
            })
            .collect())
    }

    /// Adds contacts to a department.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn department_members(
        &self,
        workspace_id: i64,
        department_id: i64,
        idxs: &[u32],
        actor: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        self.db.write(|c| {
            c.query_one(
                "SELECT id FROM departments WHERE id = ? AND workspace_id = ?",
                params![department_id, workspace_id],
            )?;
            require_contacts(c, workspace_id, idxs)?;
            let ids: Bitmap = idxs.iter().copied().collect();
            let changes = BTreeMap::from([(department_id, ids)]);
            let n = members::change(c, workspace_id, SetKind::Department, &changes, true)?
                .get(&department_id)
                .copied()
                .unwrap_or(0);
            audit::append(
                c,
                workspace_id,
                actor,
                "department.members_added",
                &format!("department:{department_id}"),
                &serde_json::json!({"added": n}).to_string(),
                now,
            )?;
            Ok(n)
        })
    }
}

/// Refuses unless every id is a live contact of the workspace.
fn require_contacts(c: &mut Conn, workspace_id: i64, idxs: &[u32]) -> Result<(), StoreError> {
    let mut missing = Vec::new();
    for &idx in idxs {
        if c.query_opt(
            "SELECT 1 FROM contacts WHERE workspace_id = ? AND idx = ? AND deleted_at IS NULL",
            params![workspace_id, idx],
        )?
        .is_none()
        {
            missing.push(crate::contact_public_id(workspace_id, idx).to_string());
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Rejected {
            code: Code::NotFound,
            message: format!("{} contact id(s) not found in this workspace", missing.len()),
            details: missing,
        })
    }
}
