//! Contacts: create, read, change, delete, and bulk import.

use std::collections::{BTreeMap, HashMap, HashSet};

use qunfa_audience::Bitmap;

use qunfa_core::{
    contact::{Channel, ContactInput},
    policy::TierPolicy,
    tag::TagPath,
};
use serde_json::{Map, Value as Json};

use crate::{
    audit, channels,
    json::{attributes_to_json, consent_to_json, parse_object},
    members::{self, SetKind},
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

/// A contact ready to store, built by the thread that parses: its row (with
/// the dense id still to fill in) and its tag paths. The single writer then
/// only assigns ids and inserts.
pub struct PreparedContact {
    row: Vec<Value>,
    tags: Vec<TagPath>,
}

/// Row positions of [`CONTACT_COLUMNS_INSERT`].
const COL_IDX: usize = 1;
const COL_EXTERNAL_ID: usize = 2;

impl PreparedContact {
    pub fn new(c: ContactInput) -> Self {
        let attributes = attributes_to_json(&c.attributes);
        let consent = consent_to_json(&c.consent);
        let row = vec![
            Value::Int(0),
            Value::Int(0),
            Value::Text(c.external_id.into_string()),
            Value::Text(c.name),
            Value::Text(attributes),
            c.channels.email.map(|e| e.into_string()).into(),
            c.channels.phone.map(|e| e.into_string()).into(),
            c.channels.webhook.map(|e| e.into_string()).into(),
            c.channels.wecom_userid.into(),
            Value::Text(consent),
            Value::Int(0),
            Value::Int(0),
            Value::Int(0),
        ];
        Self { row, tags: c.tags }
    }

    fn text(&self, col: usize) -> Option<&str> {
        match &self.row[col] {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// A chunk of prepared contacts with what the writer needs to know about it.
pub struct PreparedChunk {
    contacts: Vec<PreparedContact>,
    /// Distinct tag paths of the chunk.
    paths: Vec<TagPath>,
    /// Distinct attribute keys of the chunk.
    keys: Vec<String>,
}

impl PreparedChunk {
    pub fn new(inputs: Vec<ContactInput>) -> Self {
        let mut paths: rustc_hash::FxHashSet<&TagPath> = Default::default();
        let mut keys: rustc_hash::FxHashSet<&String> = Default::default();
        let mut previous: Option<&ContactInput> = None;
        for c in &inputs {
            // Contacts of one file mostly share their attribute names.
            if !previous.is_some_and(|p| p.attributes.keys().eq(c.attributes.keys())) {
                keys.extend(c.attributes.keys());
            }
            previous = Some(c);
            paths.extend(c.tags.iter());
        }
        let paths = paths.into_iter().cloned().collect();
        let keys = keys.into_iter().cloned().collect();
        Self { contacts: inputs.into_iter().map(PreparedContact::new).collect(), paths, keys }
    }

    /// Drops the contacts at the given ascending positions (duplicates the
    /// parser found across chunks); tag paths only they used are dropped too.
    pub fn skip(&mut self, positions: &[usize]) {
        if positions.is_empty() {
            return;
        }
        let mut skipped = positions.iter().peekable();
        let mut i = 0;
        self.contacts.retain(|_| {
            let keep = skipped.next_if_eq(&&i).is_none();
            i += 1;
            keep
        });
        let used: HashSet<&TagPath> = self.contacts.iter().flat_map(|c| c.tags.iter()).collect();
        self.paths.retain(|p| used.contains(p));
    }
}

/// The outcome of importing a file.
#[derive(Debug, Default)]
pub struct ImportReport {
    /// `None` when lines were rejected and the import was not partial: nothing was written.
    pub outcome: Option<ImportOutcome>,
    pub rejected: Vec<qunfa_core::import::Rejection>,
}

/// Contacts per chunk handed from the parser to the writer.
const IMPORT_CHUNK: usize = 8192;

/// Threads that parse an import while the writer stores it: every core (the
/// writer mostly waits on SQLite, and parsing is the larger share of the work).
pub fn import_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(8)
}

/// Reserves the next contacts version of the workspace (locking its row until
/// the transaction ends); rows written in this transaction carry it, so the
/// audience index can fetch what changed since the version it has.
pub(crate) fn bump_contacts_version(c: &mut Conn, workspace_id: i64) -> Result<i64, StoreError> {
    Ok(c.query_one(
        "UPDATE workspaces SET contacts_version = contacts_version + 1 WHERE id = ? RETURNING contacts_version",
        params![workspace_id],
    )?
    .i64(0))
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
        self.db.write(|c| {
            let mut state = ImportState::start(c, workspace_id)?;
            for chunk in contacts.chunks(IMPORT_CHUNK) {
                state.chunk(c, tier, PreparedChunk::new(chunk.to_vec()), now)?;
            }
            state.finish(c, tier, actor, now)
        })
    }

    /// Imports a whole file: one thread parses and validates it in chunks
    /// while this one writes them, all in one transaction. Any rejected line
    /// rolls everything back unless `partial` is set.
    ///
    /// # Errors
    /// Tier rule errors (nothing is written), or database errors.
    #[allow(clippy::too_many_arguments)] // each argument is a distinct input of one import
    pub fn import_file(
        &self,
        workspace_id: i64,
        tier: &TierPolicy,
        format: qunfa_core::import::ImportFormat,
        data: &[u8],
        partial: bool,
        actor: &str,
        now: i64,
    ) -> Result<ImportReport, StoreError> {
        let mut rejected = Vec::new();
        let result = self.db.write(|c| {
            // Parsing threads validate and prepare rows; this thread (the
            // writer) stores each chunk as soon as it arrives, in file order.
            let mut state = ImportState::start(c, workspace_id)?;
            let mut failure = None;
            rejected = qunfa_core::import::parse_with(
                format,
                data,
                import_threads(),
                IMPORT_CHUNK,
                &PreparedChunk::new,
                &mut |chunk| {
                    let mut prepared = chunk.prepared;
                    prepared.skip(&chunk.skipped);
                    match state.chunk(c, tier, prepared, now) {
                        Ok(()) => true,
                        Err(e) => {
                            failure = Some(e);
                            false
                        }
                    }
                },
            );
            if let Some(e) = failure {
                return Err(e);
            }
            if !rejected.is_empty() && !partial {
                return Err(StoreError::rejected(Code::ImportRejected, "lines were rejected"));
            }
            state.finish(c, tier, actor, now)
        });
        match result {
            Ok(outcome) => Ok(ImportReport { outcome: Some(outcome), rejected }),
            Err(StoreError::Rejected { code: Code::ImportRejected, .. }) => {
                Ok(ImportReport { outcome: None, rejected })
            }
            Err(e) => Err(e),
        }
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
            let mut state = ImportState::start(c, workspace_id)?;
            state.chunk(c, tier, PreparedChunk::new(vec![contact.clone()]), now)?;
            state.finish(c, tier, actor, now)?;
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
                &format!(
                    "SELECT {CONTACT_COLUMNS} FROM contacts WHERE workspace_id = ? AND idx = ? AND deleted_at IS NULL"
                ),
                params![workspace_id, idx],
            )?;
            let mut rec = record_from(&r)?;
            let tag_ids = members::sets_of(c, workspace_id, SetKind::Tag, idx)?;
            let mut paths = Vec::with_capacity(tag_ids.len());
            for id in tag_ids {
                paths.push(c.query_one("SELECT path FROM tags WHERE id = ?", params![id])?.string(0));
            }
            paths.sort();
            rec.tags = paths;
            rec.departments = members::sets_of(c, workspace_id, SetKind::Department, idx)?;
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

    /// Live contacts whose external id is `query` or whose name starts with
    /// it (ASCII letters in any case, on both databases), by id, after
    /// `after_idx` (the console's search box). A name match scans the
    /// workspace's contacts (no index on names); the page size bounds the answer.
    ///
    /// # Errors
    /// Database errors.
    pub fn search_contacts(
        &self,
        workspace_id: i64,
        query: &str,
        after_idx: Option<u32>,
        limit: usize,
    ) -> Result<Vec<ContactRecord>, StoreError> {
        let after = after_idx.map_or(-1, i64::from);
        let escaped: String =
            query.chars().flat_map(|c| if matches!(c, '%' | '_' | '\\') { vec!['\\', c] } else { vec![c] }).collect();
        let rows = self.db.conn()?.query(
            &format!(
                "SELECT {CONTACT_COLUMNS} FROM contacts WHERE workspace_id = ? AND deleted_at IS NULL AND idx > ? \
                 AND (external_id = ? OR lower(name) LIKE lower(?) ESCAPE '\\') ORDER BY idx LIMIT ?"
            ),
            params![workspace_id, after, query, format!("{escaped}%"), limit],
        )?;
        rows.iter().map(record_from).collect()
    }

    /// Live contacts among `idxs` (without their tags and departments), by id.
    ///
    /// # Errors
    /// Database errors.
    pub fn contacts_among(&self, workspace_id: i64, idxs: &[u32]) -> Result<Vec<ContactRecord>, StoreError> {
        if idxs.is_empty() {
            return Ok(Vec::new());
        }
        let list = idxs.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let rows = self.db.conn()?.query(
            &format!(
                "SELECT {CONTACT_COLUMNS} FROM contacts WHERE workspace_id = ? AND deleted_at IS NULL AND idx IN ({list}) ORDER BY idx"
            ),
            params![workspace_id],
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
            let version = bump_contacts_version(c, workspace_id)?;
            let old_email = c
                .query_opt("SELECT email FROM contacts WHERE workspace_id = ? AND idx = ?", params![workspace_id, idx])?
                .and_then(|r| r.opt_string(0));
            let changed = c.execute(
                "UPDATE contacts SET name = ?, attributes = ?, email = ?, phone = ?, webhook = ?, wecom_userid = ?, consent = ?, updated_at = ?,
                 version = ?
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
                    version,
                    workspace_id,
                    idx,
                    updated.external_id.as_str()
                ],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound);
            }
            record_attribute_keys(c, workspace_id, updated.attributes.keys())?;
            channels::sync_consent(c, workspace_id, idx, updated.consent.iter().map(|(k, v)| (*k, *v)), now)?;
            if old_email.as_deref() != updated.channels.email.as_ref().map(|e| e.as_str()) {
                channels::address_changed(c, workspace_id, idx, Channel::Email)?;
            }
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
            let version = bump_contacts_version(c, workspace_id)?;
            let changed = c.execute(
                "UPDATE contacts SET deleted_at = ?, external_id = ?, name = '', attributes = '{}', email = NULL, phone = NULL,
                 webhook = NULL, wecom_userid = NULL, consent = '{}', updated_at = ?, version = ?
                 WHERE workspace_id = ? AND idx = ? AND deleted_at IS NULL",
                // A control character: no external id a user can give (ExternalId refuses them).
                params![now, format!("\u{1}deleted\u{1}{idx}"), now, version, workspace_id, idx],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound);
            }
            members::remove_everywhere(c, workspace_id, SetKind::Tag, idx)?;
            members::remove_everywhere(c, workspace_id, SetKind::Department, idx)?;
            c.execute("DELETE FROM inbox_tokens WHERE workspace_id = ? AND contact_idx = ?", params![workspace_id, idx])?;
            // Texts rendered for them and texts they wrote are personal data too.
            c.execute("UPDATE deliveries SET body = NULL WHERE workspace_id = ? AND contact_idx = ?", params![workspace_id, idx])?;
            c.execute("UPDATE replies SET text = '' WHERE workspace_id = ? AND contact_idx = ?", params![workspace_id, idx])?;
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

/// One import in progress inside a write transaction.
struct ImportState {
    workspace_id: i64,
    outcome: ImportOutcome,
    /// Whether the workspace had contacts before (else no lookups are needed).
    had_contacts: bool,
    tag_ids: HashMap<String, i64>,
    tags_loaded: bool,
    /// New memberships per tag, written once at the end.
    tagged: BTreeMap<i64, Bitmap>,
    keys: Vec<String>,
    n_contacts: u64,
    first_idx: Option<u32>,
    /// The contacts version this import writes at.
    version: i64,
}

const CONTACT_COLUMNS_INSERT: [&str; 13] = [
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
    "version",
];

impl ImportState {
    fn start(c: &mut Conn, workspace_id: i64) -> Result<Self, StoreError> {
        let n_known =
            c.query_one("SELECT next_contact_idx FROM workspaces WHERE id = ?", params![workspace_id])?.i64(0);
        Ok(Self {
            workspace_id,
            version: bump_contacts_version(c, workspace_id)?,
            outcome: ImportOutcome::default(),
            had_contacts: n_known > 0,
            tag_ids: HashMap::new(),
            tags_loaded: false,
            tagged: BTreeMap::new(),
            keys: Vec::new(),
            n_contacts: 0,
            first_idx: None,
        })
    }

    /// Writes one chunk: new contacts are inserted, known external ids updated
    /// (attributes and consent merge, tags are added).
    fn chunk(&mut self, c: &mut Conn, tier: &TierPolicy, chunk: PreparedChunk, now: i64) -> Result<(), StoreError> {
        let workspace_id = self.workspace_id;
        // Tags: create every path (and its ancestors) that does not exist yet.
        let missing: Vec<&TagPath> = chunk.paths.iter().filter(|t| !self.tag_ids.contains_key(t.as_str())).collect();
        if !missing.is_empty() {
            let (_, created) =
                tags::ensure_paths(c, workspace_id, tier, &missing, now, &mut self.tag_ids, &mut self.tags_loaded)?;
            self.outcome.tags_created += created;
        }
        for k in chunk.keys {
            if !self.keys.contains(&k) {
                self.keys.push(k);
            }
        }
        // Which external ids exist already.
        let mut known: Vec<Option<u32>> = vec![None; chunk.contacts.len()];
        if self.had_contacts {
            for (slot, p) in known.iter_mut().zip(&chunk.contacts) {
                *slot = c
                    .query_opt(
                        "SELECT idx FROM contacts WHERE workspace_id = ? AND external_id = ? AND deleted_at IS NULL",
                        params![workspace_id, p.text(COL_EXTERNAL_ID)],
                    )?
                    .map(|r| r.i64(0) as u32);
            }
        }
        let n_new = known.iter().filter(|k| k.is_none()).count() as u64;
        let mut next_idx = if n_new > 0 { allocate_idx(c, workspace_id, n_new)? } else { 0 };
        let mut contact_rows = Vec::with_capacity(n_new as usize);
        let mut updates = Vec::new();
        for (mut p, existing) in chunk.contacts.into_iter().zip(known) {
            let idx = existing.unwrap_or_else(|| {
                next_idx += 1;
                next_idx - 1
            });
            self.first_idx.get_or_insert(idx);
            for t in &p.tags {
                self.tagged.entry(self.tag_ids[t.as_str()]).or_default().add(idx);
            }
            if existing.is_some() {
                updates.push((idx, p));
            } else {
                p.row[0] = Value::Int(workspace_id);
                p.row[COL_IDX] = Value::Int(i64::from(idx));
                p.row[10] = Value::Int(now);
                p.row[11] = Value::Int(now);
                p.row[12] = Value::Int(self.version);
                contact_rows.push(p.row);
            }
        }
        self.n_contacts += (contact_rows.len() + updates.len()) as u64;
        self.outcome.imported += c.bulk_insert_borrowed("contacts", &CONTACT_COLUMNS_INSERT, "", &contact_rows)?;
        // A refusal given with a new contact opts it out at once.
        for row in &contact_rows {
            if let (Value::Int(idx), Value::Text(consent)) = (&row[COL_IDX], &row[9]) {
                if consent.contains("false") {
                    channels::sync_consent(c, workspace_id, *idx as u32, channels::consent_pairs(consent), now)?;
                }
            }
        }
        for (idx, p) in &updates {
            update_from_import(c, workspace_id, *idx, p, now, self.version)?;
        }
        self.outcome.updated += updates.len() as u64;
        Ok(())
    }

    fn finish(self, c: &mut Conn, tier: &TierPolicy, actor: &str, now: i64) -> Result<ImportOutcome, StoreError> {
        let workspace_id = self.workspace_id;
        members::change(c, workspace_id, SetKind::Tag, &self.tagged, true)?;
        tags::check_member_limits(c, workspace_id, tier, &self.tagged.keys().copied().collect::<Vec<_>>())?;
        record_attribute_keys(c, workspace_id, self.keys.iter())?;
        let details = serde_json::json!({"imported": self.outcome.imported, "updated": self.outcome.updated, "tags_created": self.outcome.tags_created});
        let (subject, action) = match (self.n_contacts, self.outcome.imported, self.first_idx) {
            (1, 1, Some(idx)) => (format!("contact:{idx}"), "contact.created"),
            (n, ..) => (format!("contacts:{n}"), "contacts.imported"),
        };
        audit::append(c, workspace_id, actor, action, &subject, &details.to_string(), now)?;
        Ok(self.outcome)
    }
}

/// Applies an import line to a known contact: attributes and consent merge,
/// given addresses replace, an empty name keeps the old one.
fn update_from_import(
    c: &mut Conn,
    workspace_id: i64,
    idx: u32,
    p: &PreparedContact,
    now: i64,
    version: i64,
) -> Result<(), StoreError> {
    let current = c.query_one(
        "SELECT attributes, consent, email FROM contacts WHERE workspace_id = ? AND idx = ?",
        params![workspace_id, idx],
    )?;
    let mut attributes = parse_object(current.str(0))?;
    attributes.extend(parse_object(p.text(4).unwrap_or("{}"))?);
    let mut consent = parse_object(current.str(1))?;
    consent.extend(parse_object(p.text(9).unwrap_or("{}"))?);
    channels::sync_consent(c, workspace_id, idx, channels::consent_pairs(p.text(9).unwrap_or("{}")), now)?;
    if p.text(5).is_some_and(|e| Some(e) != current.opt_str(2)) {
        channels::address_changed(c, workspace_id, idx, Channel::Email)?;
    }
    let name = p.text(3).filter(|n| !n.is_empty());
    c.execute(
        "UPDATE contacts SET name = COALESCE(?, name), attributes = ?, email = COALESCE(?, email), phone = COALESCE(?, phone),
         webhook = COALESCE(?, webhook), wecom_userid = COALESCE(?, wecom_userid), consent = ?, updated_at = ?, version = ?
         WHERE workspace_id = ? AND idx = ?",
        params![
            name,
            Json::Object(attributes).to_string(),
            p.text(5),
            p.text(6),
            p.text(7),
            p.text(8),
            Json::Object(consent).to_string(),
            now,
            version,
            workspace_id,
            idx
        ],
    )?;
    Ok(())
}
