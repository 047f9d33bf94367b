//! Saved segments (named audience expressions, evaluated when used), bulk
//! tagging by expression, and the tag report.

use std::collections::{BTreeMap, HashMap};

use qunfa_audience::{
    expr::{Expr, SegmentError},
    Bitmap,
};
use qunfa_core::{policy::TierPolicy, Code};

use crate::{
    audit,
    members::{self, SetKind},
    params, tags, Store, StoreError,
};

/// A saved segment.
#[derive(Debug, Clone)]
pub struct SegmentRecord {
    pub id: i64,
    pub name: String,
    pub expr: String,
    pub created_at: i64,
    pub updated_at: i64,
}

fn segment_record(r: &crate::Row) -> SegmentRecord {
    SegmentRecord { id: r.i64(0), name: r.string(1), expr: r.string(2), created_at: r.i64(3), updated_at: r.i64(4) }
}

/// One line of the tag report.
#[derive(Debug, Clone)]
pub struct TagReportLine {
    pub id: i64,
    pub path: String,
    /// Contacts with this tag itself.
    pub n_contacts: u64,
    /// Distinct contacts with this tag or one of its sub-tags.
    pub size: u64,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    /// Not used by a send (nor created) within the dormancy window.
    pub dormant: bool,
}

impl Store {
    /// Saves a segment; the caller has checked the expression.
    ///
    /// # Errors
    /// `QF-DUPLICATE` for a name in use, or database errors.
    pub fn create_segment(
        &self,
        workspace_id: i64,
        name: &str,
        expr: &str,
        actor: &str,
        now: i64,
    ) -> Result<SegmentRecord, StoreError> {
        self.db.write(|c| {
            if c.query_opt("SELECT 1 FROM segments WHERE workspace_id = ? AND name = ?", params![workspace_id, name])?.is_some() {
                return Err(StoreError::rejected(Code::Duplicate, format!("a segment named {name:?} exists")));
            }
            let id = c
                .query_one(
                    "INSERT INTO segments (workspace_id, name, expr, created_at, updated_at) VALUES (?, ?, ?, ?, ?) RETURNING id",
                    params![workspace_id, name, expr, now, now],
                )?
                .i64(0);
            let details = serde_json::json!({"name": name, "expr": expr}).to_string();
            audit::append(c, workspace_id, actor, "segment.created", &format!("segment:{id}"), &details, now)?;
            Ok(SegmentRecord { id, name: name.to_owned(), expr: expr.to_owned(), created_at: now, updated_at: now })
        })
    }

    /// Every segment of a workspace, by name.
    ///
    /// # Errors
    /// Database errors.
    pub fn segments(&self, workspace_id: i64) -> Result<Vec<SegmentRecord>, StoreError> {
        Ok(self
            .db
            .conn()?
            .query(
                "SELECT id, name, expr, created_at, updated_at FROM segments WHERE workspace_id = ? ORDER BY name",
                params![workspace_id],
            )?
            .iter()
            .map(segment_record)
            .collect())
    }

    /// One segment by id.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn segment(&self, workspace_id: i64, id: i64) -> Result<SegmentRecord, StoreError> {
        let r = self.db.conn()?.query_one(
            "SELECT id, name, expr, created_at, updated_at FROM segments WHERE workspace_id = ? AND id = ?",
            params![workspace_id, id],
        )?;
        Ok(segment_record(&r))
    }

    /// Deletes a segment (sends that named it and are not dispatched yet will
    /// be refused as invalid).
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn delete_segment(&self, workspace_id: i64, id: i64, actor: &str, now: i64) -> Result<(), StoreError> {
        self.db.write(|c| {
            let r =
                c.query_one("SELECT name FROM segments WHERE workspace_id = ? AND id = ?", params![workspace_id, id])?;
            c.execute("DELETE FROM segments WHERE id = ?", params![id])?;
            let details = serde_json::json!({"name": r.string(0)}).to_string();
            audit::append(c, workspace_id, actor, "segment.deleted", &format!("segment:{id}"), &details, now)?;
            Ok(())
        })
    }

    /// Replaces `segment:NAME` terms by the saved expressions.
    ///
    /// # Errors
    /// The outer error is a database error; the inner one an unknown,
    /// broken or cyclic segment.
    pub fn expand_segments(&self, workspace_id: i64, expr: &mut Expr) -> Result<Result<(), SegmentError>, StoreError> {
        let mut has = false;
        expr_visit(expr, &mut |e| has |= matches!(e, Expr::Segment { .. }));
        if !has {
            return Ok(Ok(()));
        }
        let saved: HashMap<String, String> =
            self.segments(workspace_id)?.into_iter().map(|s| (s.name, s.expr)).collect();
        Ok(expr.expand_segments(&mut |name| saved.get(name).cloned()))
    }

    /// Adds (or removes) every contact of `ids` to a tag: bulk tagging by an
    /// expression. Returns how many memberships changed.
    ///
    /// # Errors
    /// `NotFound` for an unknown tag, `QF-LIMIT-TAG-MEMBERS`, or database errors.
    #[allow(clippy::too_many_arguments)] // each argument is a distinct input of one change
    pub fn tag_members_matching(
        &self,
        workspace_id: i64,
        tier: &TierPolicy,
        tag_id: i64,
        ids: &Bitmap,
        add: bool,
        expr: &str,
        actor: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        self.db.write(|c| {
            c.query_one("SELECT id FROM tags WHERE id = ? AND workspace_id = ?", params![tag_id, workspace_id])?;
            // Only live contacts: the index's view may be a moment older than this transaction.
            let mut live = ids.clone();
            if !live.is_empty() {
                let mut dead = Bitmap::new();
                c.for_each_row(
                    "SELECT idx FROM contacts WHERE workspace_id = ? AND idx BETWEEN ? AND ? AND deleted_at IS NOT NULL",
                    params![workspace_id, live.minimum().unwrap_or(0), live.maximum().unwrap_or(0)],
                    &mut |r| {
                        dead.add(r.i64(0) as u32);
                        Ok(())
                    },
                )?;
                live -= dead;
            }
            let changes = BTreeMap::from([(tag_id, live)]);
            let changed = members::change(c, workspace_id, SetKind::Tag, &changes, add)?.get(&tag_id).copied().unwrap_or(0);
            if add {
                tags::check_member_limits(c, workspace_id, tier, &[tag_id])?;
            }
            let action = if add { "tag.members_added" } else { "tag.members_removed" };
            let details = serde_json::json!({"changed": changed, "matched": ids.cardinality(), "expr": expr}).to_string();
            audit::append(c, workspace_id, actor, action, &format!("tag:{tag_id}"), &details, now)?;
            Ok(changed)
        })
    }

    /// Every tag with its size (with sub-tags), last use and whether it is
    /// dormant: neither created nor used by a send in the last `dormant_days`.
    ///
    /// # Errors
    /// Database errors.
    pub fn tag_report(&self, workspace_id: i64, now: i64, dormant_days: u32) -> Result<Vec<TagReportLine>, StoreError> {
        let tags = self.tags(workspace_id)?;
        let sizes: HashMap<i64, u64> = self.with_audience(workspace_id, |i| {
            tags.iter().map(|t| (t.id, i.tags.subtree(t.id).cardinality())).collect()
        })?;
        let cutoff = now - i64::from(dormant_days) * 86_400_000;
        Ok(tags
            .into_iter()
            .map(|t| TagReportLine {
                size: sizes.get(&t.id).copied().unwrap_or(0),
                dormant: t.last_used_at.unwrap_or(t.created_at) < cutoff,
                id: t.id,
                path: t.path,
                n_contacts: t.n_contacts,
                created_at: t.created_at,
                last_used_at: t.last_used_at,
            })
            .collect())
    }
}

fn expr_visit(e: &Expr, f: &mut dyn FnMut(&Expr)) {
    f(e);
    match e {
        Expr::Not(x) => expr_visit(x, f),
        Expr::And(v) | Expr::Or(v) => v.iter().for_each(|x| expr_visit(x, f)),
        _ => {}
    }
}
