//! Contacts: create, read, change, delete, and bulk import.

use std::collections::{BTreeMap, HashMap, HashSet};

use qunfa_core::{contact::ContactInput, policy::TierPolicy, tag::TagPath};
use serde_json::{Map, Value as Json};

use crate::{
    audit,
    json::{attributes_to_json, consent_to_json, parse_object},
    params, tags, Code, Conn, Row, Store, StoreError, Value,
};

/// A contact as stored.
#[derive(Debug, Clone)]
pub struct ContactRecord {
    pub idx: u32,
    pub external_id: String,
    pub name: String,
    pub attributes: Map<String, Json>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub webhook: Option<String>,
    pub wecom_userid: Option<String>,
    pub consent: Map<String, Json>,
    pub tags: Vec<String>,
    pub departments: Vec<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

const CONTACT_COLUMNS: &str =
    "idx, external_id, name, attributes, email, phone, webhook, wecom_userid, consent, created_at, updated_at";

fn record_from(r: &Row) -> Result<ContactRecord, StoreError> {
    Ok(ContactRecord {
        idx: r.i64(0) as u32,
        external_id: r.string(1),
        name: r.string(2),
        attributes: parse_object(r.str(3))?,
        email: r.opt_string(4),
        phone: r.opt_string(5),
        webhook: r.opt_string(6),
        wecom_userid: r.opt_string(7),
        consent: parse_object(r.str(8))?,
        tags: Vec::new(),
        departments: Vec::new(),
        created_at: r.i64(9),
        updated_at: r.i64(10),
    })
}

/// Per contact: name, external id and attributes, for rendering templates.
pub type TemplateData = HashMap<u32, (String, String, Map<String, Json>)>;

/// The counts of an import.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportOutcome {
    pub imported: u64,
    pub updated: u64,
    pub tags_created: u64,
}

fn contact_values(workspace_id: i64, idx: u32, c: &ContactInput, now: i64) -> Vec<Value> {
    vec![
        Value::Int(workspace_id),
        Value::Int(i64::from(idx)),
        Value::Text(c.external_id.as_str().to_owned()),
        Value::Text(c.name.clone()),
        Value::Text(attributes_to_json(&c.attributes)),
        c.channels.email.as_ref().map(|e| e.as_str()).into(),
        c.channels.phone.as_ref().map(|e| e.as_str()).into(),
        c.channels.webhook.as_ref().map(|e| e.as_str()).into(),
        c.channels.wecom_userid.as_deref().into(),
        Value::Text(consent_to_json(&c.consent)),
        Value::Int(now),
        Value::Int(now),
    ]
}

/// Reserves `n` dense ids in the workspace; returns the first.
fn allocate_idx(c: &mut Conn, workspace_id: i64, n: u64) -> Result<u32, StoreError> {
    let r = c.query_one(
        "UPDATE workspaces SET next_contact_idx = next_contact_idx + ? WHERE id = ? RETURNING next_contact_idx",
        params![n, workspace_id],
    )?;
    let end = r.i64(0);
    if end > i64::from(u32::MAX) {
        return Err(StoreError::rejected(Code::PayloadTooLarge, "the workspace has used all 2^32 contact ids"));
    }
    Ok((end - n as i64) as u32)
}

fn record_attribute_keys<'a>(
    c: &mut Conn,
    workspace_id: i64,
    keys: impl Iterator<Item = &'a String>,
) -> Result<(), StoreError> {
    let keys: HashSet<&String> = keys.collect();
    c.bulk_insert(
        "attribute_keys",
        &["workspace_id", "key"],
        "ON CONFLICT DO NOTHING",
        &mut keys.into_iter().map(|k| vec![Value::Int(workspace_id), Value::Text(k.clone())]),
    )?;
    Ok(())
}

impl Store {
    /// Imports contacts atomically: new external ids are created, known ones
    /// updated (their tags are added to), tag paths are created as needed.
    /// On any rule violation nothing is written.
    ///
    /// # Errors
    /// `QF-TAG-NESTED-NOT-ALLOWED`, `QF-LIMIT-TAGS`, `QF-LIMIT-TAG-MEMBERS`, or
    /// database errors.
    pub fn import_contacts(
        &self,
        workspace_id: i64,
        tier: &TierPolicy,
        contacts: &[ContactInput],
        actor: &str,
        now: i64,
    ) -> Result<ImportOutcome, StoreError> {
        self.db.write(|c| import_in(c, workspace_id, tier, contacts, actor, now))
    }

    /// Creates one contact.
    ///
    /// # Errors
    /// `QF-DUPLICATE` when the external id exists, tag rule errors, or database errors.
    pub fn create_contact(
        &self,
        workspace_id: i64,
        tier: &TierPolicy,
        contact: &ContactInput,
        actor: &str,
        now: i64,
    ) -> Result<ContactRecord, StoreError> {
        let idx = self.db.write(|c| {
            let exists = c.query_opt(
                "SELECT idx FROM contacts WHERE workspace_id = ? AND external_id = ?",
                params![workspace_id, contact.external_id.as_str()],
            )?;
            if exists.is_some() {
                return Err(StoreError::rejected(
                    Code::Duplicate,
                    format!("a contact with external_id {:?} exists", contact.external_id.as_str()),
                ));
            }
            import_in(c, workspace_id, tier, std::slice::from_ref(contact), actor, now)?;
            let r = c.query_one(
                "SELECT idx FROM contacts WHERE workspace_id = ? AND external_id = ?",
                params![workspace_id, contact.external_id.as_str()],
            )?;
            Ok(r.i64(0) as u32)
        })?;
        self.contact(workspace_id, idx)
    }

    /// One live contact with its tags and departments.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn contact(&self, workspace_id: i64, idx: u32) -> Result<ContactRecord, StoreError> {
        self.db.read(|c| {
            let r = c.query_one(
                &format!("SELECT {CONTACT_COLUMNS} FROM contacts WHERE workspace_id = ? AND idx = ? AND deleted_at IS NULL"),
                params![workspace_id, idx],
            )?;
            let mut rec = record_from(&r)?;
            rec.tags = c
                .query(
                    "SELECT t.path FROM contact_tags ct JOIN tags t ON t.id = ct.tag_id
                     WHERE ct.workspace_id = ? AND ct.contact_idx = ? ORDER BY t.path",
                    params![workspace_id, idx],
                )?
                .iter()
                .map(|r| r.string(0))
                .collect();
            rec.departments = c
                .query(
                    "SELECT department_id FROM contact_departments WHERE workspace_id = ? AND contact_idx = ? ORDER BY department_id",
                    params![workspace_id, idx],
                )?
                .iter()
                .map(|r| r.i64(0))
                .collect();
            Ok(rec)
        })
    }

    /// Live contacts after `after_idx`, by id.
    ///
    /// # Errors
    /// Database errors.
    pub fn contacts(
        &self,
        workspace_id: i64,
        after_idx: Option<u32>,
        limit: usize,
    ) -> Result<Vec<ContactRecord>, StoreError> {
        let after = after_idx.map_or(-1, i64::from);
        let rows = self.db.conn()?.query(
            &format!(
                "SELECT {CONTACT_COLUMNS} FROM contacts WHERE workspace_id = ? AND deleted_at IS NULL AND idx > ? ORDER BY idx LIMIT ?"
            ),
            params![workspace_id, after, limit],
        )?;
        rows.iter().map(record_from).collect()
    }

    /// Replaces a contact's fields with `updated` (validated by the caller from
    /// the stored contact merged with a patch). The external id may not change.
    ///
    /// # Errors
    /// `NotFound`, `QF-DUPLICATE`, or database errors.
    pub fn update_contact(
        &self,
        workspace_id: i64,
        idx: u32,
        updated: &ContactInput,
        actor: &str,
        now: i64,
    ) -> Result<ContactRecord, StoreError> {
        self.db.write(|c| {
            let changed = c.execute(
                "UPDATE contacts SET name = ?, attributes = ?, email = ?, phone = ?, webhook = ?, wecom_userid = ?, consent = ?, updated_at = ?
                 WHERE workspace_id = ? AND idx = ? AND deleted_at IS NULL AND external_id = ?",
                params![
                    updated.name.clone(),
                    attributes_to_json(&updated.attributes),
                    updated.channels.email.as_ref().map(|e| e.as_str()),
                    updated.channels.phone.as_ref().map(|e| e.as_str()),
                    updated.channels.webhook.as_ref().map(|e| e.as_str()),
                    updated.channels.wecom_userid.as_deref(),
                    consent_to_json(&updated.consent),
                    now,
                    workspace_id,
                    idx,
                    updated.external_id.as_str()
                ],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound);
            }
            record_attribute_keys(c, workspace_id, updated.attributes.keys())?;
            audit::append(c, workspace_id, actor, "contact.updated", &format!("contact:{idx}"), "{}", now)?;
            Ok(())
        })?;
        self.contact(workspace_id, idx)
    }

    /// Deletes a contact: its personal data is erased at once, its id is never
    /// reused, and delivery records keep only the id.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn delete_contact(&self, workspace_id: i64, idx: u32, actor: &str, now: i64) -> Result<(), StoreError> {
        self.db.write(|c| {
            let changed = c.execute(
                "UPDATE contacts SET deleted_at = ?, external_id = ?, name = '', attributes = '{}', email = NULL, phone = NULL,
                 webhook = NULL, wecom_userid = NULL, consent = '{}', updated_at = ?
                 WHERE workspace_id = ? AND idx = ? AND deleted_at IS NULL",
                params![now, format!("~deleted~{idx}"), now, workspace_id, idx],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound);
            }
            c.execute("DELETE FROM contact_tags WHERE workspace_id = ? AND contact_idx = ?", params![workspace_id, idx])?;
            c.execute("DELETE FROM contact_departments WHERE workspace_id = ? AND contact_idx = ?", params![workspace_id, idx])?;
            c.execute("DELETE FROM inbox_tokens WHERE workspace_id = ? AND contact_idx = ?", params![workspace_id, idx])?;
            audit::append(c, workspace_id, actor, "contact.deleted", &format!("contact:{idx}"), "{}", now)?;
            Ok(())
        })
    }

    /// Live contact ids among `idxs`; the rest are reported missing.
    ///
    /// # Errors
    /// Database errors.
    pub fn existing_contacts(&self, workspace_id: i64, idxs: &[u32]) -> Result<(Vec<u32>, Vec<u32>), StoreError> {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        let mut conn = self.db.conn()?;
        for &idx in idxs {
            let r = conn.query_opt(
                "SELECT 1 FROM contacts WHERE workspace_id = ? AND idx = ? AND deleted_at IS NULL",
                params![workspace_id, idx],
            )?;
            if r.is_some() {
                found.push(idx);
            } else {
                missing.push(idx);
            }
        }
        Ok((found, missing))
    }

    /// Whether any contact of the workspace has the attribute `key`.
    ///
    /// # Errors
    /// Database errors.
    pub fn attribute_keys(&self, workspace_id: i64) -> Result<HashSet<String>, StoreError> {
        let rows =
            self.db.conn()?.query("SELECT key FROM attribute_keys WHERE workspace_id = ?", params![workspace_id])?;
        Ok(rows.iter().map(|r| r.string(0)).collect())
    }

    /// Name, external id and attributes of `idxs`, for rendering templates.
    ///
    /// # Errors
    /// Database errors.
    pub fn template_data(c: &mut Conn, workspace_id: i64, lo: u32, hi: u32) -> Result<TemplateData, StoreError> {
        let rows = c.query(
            "SELECT idx, name, external_id, attributes FROM contacts WHERE workspace_id = ? AND idx >= ? AND idx <= ?",
            params![workspace_id, lo, hi],
        )?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            out.insert(r.i64(0) as u32, (r.string(1), r.string(2), parse_object(r.str(3))?));
        }
        Ok(out)
    }
}

fn import_in(
    c: &mut Conn,
    workspace_id: i64,
    tier: &TierPolicy,
    contacts: &[ContactInput],
    actor: &str,
    now: i64,
) -> Result<ImportOutcome, StoreError> {
    let mut outcome = ImportOutcome::default();
    // Which external ids exist already.
    let mut existing: HashMap<String, u32> = HashMap::new();
    let n_known = c.query_one("SELECT next_contact_idx FROM workspaces WHERE id = ?", params![workspace_id])?.i64(0);
    if n_known > 0 {
        if contacts.len() as i64 > n_known / 8 {
            for r in c.query(
                "SELECT external_id, idx FROM contacts WHERE workspace_id = ? AND deleted_at IS NULL",
                params![workspace_id],
            )? {
                existing.insert(r.string(0), r.i64(1) as u32);
            }
        } else {
            for contact in contacts {
                if let Some(r) = c.query_opt(
                    "SELECT idx FROM contacts WHERE workspace_id = ? AND external_id = ? AND deleted_at IS NULL",
                    params![workspace_id, contact.external_id.as_str()],
                )? {
                    existing.insert(contact.external_id.as_str().to_owned(), r.i64(0) as u32);
                }
            }
        }
    }
    // Tags: create every path (and its ancestors) that does not exist.
    let mut paths: Vec<&TagPath> = contacts.iter().flat_map(|c| c.tags.iter()).collect();
    paths.sort();
    paths.dedup();
    let (tag_ids, created) = tags::ensure_paths(c, workspace_id, tier, &paths, now)?;
    outcome.tags_created = created;

    let n_new = contacts.iter().filter(|ct| !existing.contains_key(ct.external_id.as_str())).count() as u64;
    let mut next_idx = if n_new > 0 { allocate_idx(c, workspace_id, n_new)? } else { 0 };
    let mut assigned: Vec<u32> = Vec::with_capacity(contacts.len());
    let mut updates = Vec::new();
    let mut inserts = Vec::new();
    for contact in contacts {
        match existing.get(contact.external_id.as_str()) {
            Some(&idx) => {
                assigned.push(idx);
                updates.push((idx, contact));
            }
            None => {
                assigned.push(next_idx);
                inserts.push((next_idx, contact));
                next_idx += 1;
            }
        }
    }
    outcome.imported = c.bulk_insert(
        "contacts",
        &[
            "workspace_id",
            "idx",
            "external_id",
            "name",
            "attributes",
            "email",
            "phone",
            "webhook",
            "wecom_userid",
            "consent",
            "created_at",
            "updated_at",
        ],
        "",
        &mut inserts.iter().map(|(idx, ct)| contact_values(workspace_id, *idx, ct, now)),
    )?;
    for (idx, ct) in &updates {
        // Attributes merge: an import adds and overwrites keys, it does not erase others.
        let current = c.query_one(
            "SELECT attributes, consent FROM contacts WHERE workspace_id = ? AND idx = ?",
            params![workspace_id, *idx],
        )?;
        let mut attributes = parse_object(current.str(0))?;
        for (k, v) in &ct.attributes {
            attributes.insert(k.clone(), crate::json::attr_to_json(v));
        }
        let mut consent = parse_object(current.str(1))?;
        for (ch, given) in &ct.consent {
            consent.insert(ch.as_str().to_owned(), Json::Bool(*given));
        }
        let name = if ct.name.is_empty() { None } else { Some(ct.name.clone()) };
        c.execute(
            "UPDATE contacts SET name = COALESCE(?, name), attributes = ?, email = COALESCE(?, email), phone = COALESCE(?, phone),
             webhook = COALESCE(?, webhook), wecom_userid = COALESCE(?, wecom_userid), consent = ?, updated_at = ?
             WHERE workspace_id = ? AND idx = ?",
            params![
                name,
                Json::Object(attributes).to_string(),
                ct.channels.email.as_ref().map(|e| e.as_str()),
                ct.channels.phone.as_ref().map(|e| e.as_str()),
                ct.channels.webhook.as_ref().map(|e| e.as_str()),
                ct.channels.wecom_userid.as_deref(),
                Json::Object(consent).to_string(),
                now,
                workspace_id,
                *idx
            ],
        )?;
    }
    outcome.updated = updates.len() as u64;

    let mut tagged_ids: HashSet<i64> = HashSet::new();
    let mut tag_rows = Vec::new();
    for (ct, idx) in contacts.iter().zip(&assigned) {
        for path in &ct.tags {
            let tag_id = tag_ids[path.as_str()];
            tagged_ids.insert(tag_id);
            tag_rows.push([tag_id, i64::from(*idx)]);
        }
    }
    c.bulk_insert(
        "contact_tags",
        &["workspace_id", "tag_id", "contact_idx"],
        if updates.is_empty() { "" } else { "ON CONFLICT DO NOTHING" },
        &mut tag_rows.iter().map(|[t, i]| vec![Value::Int(workspace_id), Value::Int(*t), Value::Int(*i)]),
    )?;
    tags::check_member_limits(c, workspace_id, tier, &tagged_ids.into_iter().collect::<Vec<_>>())?;
    let mut keys: BTreeMap<&String, ()> = BTreeMap::new();
    for ct in contacts {
        for k in ct.attributes.keys() {
            keys.insert(k, ());
        }
    }
    record_attribute_keys(c, workspace_id, keys.into_keys())?;
    let details = serde_json::json!({"imported": outcome.imported, "updated": outcome.updated, "tags_created": outcome.tags_created});
    let subject =
        if contacts.len() == 1 { format!("contact:{}", assigned[0]) } else { format!("contacts:{}", contacts.len()) };
    let action = if contacts.len() == 1 && outcome.imported == 1 { "contact.created" } else { "contacts.imported" };
    audit::append(c, workspace_id, actor, action, &subject, &details.to_string(), now)?;
    Ok(outcome)
}
