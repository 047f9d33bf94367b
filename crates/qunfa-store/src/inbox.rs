//! The recipient side of the inbox channel: tokens, listing, read receipts and
//! replies.

use std::{collections::HashMap, sync::Mutex};

use crate::{
    audit, engagement::Marks, json::content_from_json, new_secret, params, secret_hash, Code, Store, StoreError,
};
use qunfa_core::message::RawContent;

/// One message in a recipient's inbox.
#[derive(Debug, Clone)]
pub struct InboxItem {
    pub broadcast_id: i64,
    pub content: RawContent,
    /// The text rendered for this recipient, when the message has variables.
    pub body: Option<String>,
    pub sender_name: String,
    pub delivered_at: Option<i64>,
    pub read_at: Option<i64>,
    pub replied_at: Option<i64>,
    /// The sender recalled the message: its content is not shown (`recalled`).
    pub recalled: bool,
}

/// A reply from a recipient.
#[derive(Debug, Clone)]
pub struct ReplyRecord {
    pub id: i64,
    pub contact_idx: u32,
    pub text: String,
    pub created_at: i64,
}

const INBOX_SELECT: &str =
    "SELECT d.broadcast_id, b.content, d.body, w.name, d.delivered_at, d.read_at, d.replied_at, b.expires_at, b.recalled_at
     FROM deliveries d JOIN broadcasts b ON b.id = d.broadcast_id JOIN workspaces w ON w.id = d.workspace_id";

/// One page of the inbox of the recipient a token stands for, the token
/// looked up in the same statement: one snapshot, one read lock, one trip
/// through the statement cache. The token and the sender (the workspace) are
/// read once; the messages come from the index
/// `deliveries_recipient (workspace_id, contact_idx, broadcast_id)`, read
/// backwards from the cursor, so no page is sorted. No row: an unknown token;
/// one row without a message (the outer join's): a known token, empty page.
/// The placeholders are, in order: the cursor, the token's hash, the limit.
const TOKEN_INBOX_PAGE: &str =
    "SELECT d.broadcast_id, b.content, d.body, w.name, d.delivered_at, d.read_at, d.replied_at, b.expires_at, b.recalled_at
     FROM inbox_tokens t
     JOIN workspaces w ON w.id = t.workspace_id
     LEFT JOIN deliveries d ON d.workspace_id = t.workspace_id AND d.contact_idx = t.contact_idx
         AND d.channel = 'inbox' AND d.broadcast_id < ? AND d.state IN ('delivered', 'read')
     LEFT JOIN broadcasts b ON b.id = d.broadcast_id
     WHERE t.token_hash = ?
     ORDER BY d.broadcast_id DESC LIMIT ?";

/// Contents parsed recently, by broadcast id, with the stored text each was
/// parsed from: every recipient of a broadcast reads the same content, so the
/// inbox parses it once instead of once per read. An entry is used only when
/// the text just read is the one it was parsed from, so the inbox shows what
/// is committed (a purged or changed content is parsed again). Bounded:
/// emptied when full, and long contents are not kept.
static PARSED_CONTENTS: Mutex<Option<ParsedContents>> = Mutex::new(None);
/// Broadcast id → (the stored text, what it parses to).
type ParsedContents = HashMap<i64, (Box<str>, RawContent)>;
const PARSED_CONTENTS_MAX_ENTRIES: usize = 512;
const PARSED_CONTENTS_MAX_TEXT_BYTES: usize = 8 * 1024;

/// [`content_from_json`] through [`PARSED_CONTENTS`].
fn parsed_content(broadcast_id: i64, text: &str) -> Result<RawContent, StoreError> {
    if text.len() > PARSED_CONTENTS_MAX_TEXT_BYTES {
        return content_from_json(text);
    }
    {
        let memo = PARSED_CONTENTS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((parsed_from, content)) = memo.as_ref().and_then(|m| m.get(&broadcast_id)) {
            if **parsed_from == *text {
                return Ok(content.clone());
            }
        }
    }
    let content = content_from_json(text)?;
    let mut memo = PARSED_CONTENTS.lock().unwrap_or_else(|e| e.into_inner());
    let memo = memo.get_or_insert_with(HashMap::new);
    if memo.len() >= PARSED_CONTENTS_MAX_ENTRIES {
        memo.clear();
    }
    memo.insert(broadcast_id, (text.into(), content.clone()));
    Ok(content)
}

/// What a recipient sees of a message whose time ran out: a flash message
/// past `expires_at` shows as purged at once, before the housekeeping purges
/// its stored content.
const EXPIRED: &str = r#"{"type":"purged"}"#;

/// What a recipient sees of a message its sender recalled, whether they had
/// read it or not (the stored content stays until retention, as evidence).
const RECALLED: &str = r#"{"type":"recalled"}"#;

fn item_from(r: &crate::Row) -> Result<InboxItem, StoreError> {
    let broadcast_id = r.i64(0);
    let recalled = r.opt_i64(8).is_some();
    let expired = r.opt_i64(7).is_some_and(|at| at <= crate::now_millis());
    let shown = if recalled {
        RECALLED
    } else if expired {
        EXPIRED
    } else {
        r.str(1)
    };
    Ok(InboxItem {
        broadcast_id,
        content: parsed_content(broadcast_id, shown)?,
        body: if recalled || expired { None } else { r.opt_string(2) },
        sender_name: r.string(3),
        delivered_at: r.opt_i64(4),
        read_at: r.opt_i64(5),
        replied_at: r.opt_i64(6),
        recalled,
    })
}

/// Whether `token` has the shape of an inbox token (whether it exists is for
/// [`Store::inbox_auth`]).
pub fn is_inbox_token(token: &str) -> bool {
    token.starts_with("qfi_") && token.len() <= 64
}

impl Store {
    /// Issues a token with which one recipient reads their inbox.
    ///
    /// # Errors
    /// `NotFound` for an unknown contact, or database errors.
    pub fn create_inbox_token(&self, workspace_id: i64, idx: u32, actor: &str, now: i64) -> Result<String, StoreError> {
        let token = new_secret("qfi_");
        self.db.write(|c| {
            c.query_one(
                "SELECT 1 FROM contacts WHERE workspace_id = ? AND idx = ? AND deleted_at IS NULL",
                params![workspace_id, idx],
            )?;
            c.execute(
                "INSERT INTO inbox_tokens (token_hash, workspace_id, contact_idx, created_at) VALUES (?, ?, ?, ?)",
                params![secret_hash(&token), workspace_id, idx, now],
            )?;
            crate::audit::append(c, workspace_id, actor, "inbox_token.created", &format!("contact:{idx}"), "{}", now)?;
            Ok(())
        })?;
        Ok(token)
    }

    /// The recipient a token stands for.
    ///
    /// # Errors
    /// Database errors.
    pub fn inbox_auth(&self, token: &str) -> Result<Option<(i64, u32)>, StoreError> {
        if !is_inbox_token(token) {
            return Ok(None);
        }
        let r = self.db.conn()?.query_opt(
            "SELECT workspace_id, contact_idx FROM inbox_tokens WHERE token_hash = ?",
            params![secret_hash(token)],
        )?;
        Ok(r.map(|r| (r.i64(0), r.i64(1) as u32)))
    }

    /// A recipient's inbox, newest first, before `before_broadcast`.
    ///
    /// # Errors
    /// Database errors.
    pub fn inbox(
        &self,
        workspace_id: i64,
        idx: u32,
        before_broadcast: Option<i64>,
        limit: usize,
    ) -> Result<Vec<InboxItem>, StoreError> {
        let rows = self.db.conn()?.query(
            &format!(
                "{INBOX_SELECT} WHERE d.workspace_id = ? AND d.contact_idx = ? AND d.channel = 'inbox' AND d.state IN ('delivered', 'read') AND d.broadcast_id < ?
                 ORDER BY d.broadcast_id DESC LIMIT ?"
            ),
            params![workspace_id, idx, before_broadcast.unwrap_or(i64::MAX), limit],
        )?;
        rows.iter().map(item_from).collect()
    }

    /// The inbox of the recipient `token` stands for, as [`Store::inbox`]
    /// gives it, or `None` for an unknown token. The token is looked up on
    /// every call, never cached (deleting a contact deletes its tokens, on any
    /// node), in the statement that reads the page ([`TOKEN_INBOX_PAGE`]).
    ///
    /// # Errors
    /// Database errors.
    pub fn inbox_of_token(
        &self,
        token: &str,
        before_broadcast: Option<i64>,
        limit: usize,
    ) -> Result<Option<Vec<InboxItem>>, StoreError> {
        if !is_inbox_token(token) {
            return Ok(None);
        }
        let mut known = false;
        let mut items = Vec::with_capacity(limit.min(100));
        self.db.conn()?.for_each_row(
            TOKEN_INBOX_PAGE,
            params![before_broadcast.unwrap_or(i64::MAX), secret_hash(token), limit],
            &mut |r| {
                known = true;
                if r.opt_i64(0).is_some() {
                    items.push(item_from(&r)?);
                }
                Ok(())
            },
        )?;
        Ok(known.then_some(items))
    }

    /// One message of a recipient's inbox.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn inbox_message(&self, workspace_id: i64, idx: u32, broadcast_id: i64) -> Result<InboxItem, StoreError> {
        let r = self.db.conn()?.query_one(
            &format!(
                "{INBOX_SELECT} WHERE d.workspace_id = ? AND d.contact_idx = ? AND d.channel = 'inbox' AND d.state IN ('delivered', 'read')
                 AND d.broadcast_id = ?"
            ),
            params![workspace_id, idx, broadcast_id],
        )?;
        item_from(&r)
    }

    /// Records that the recipient opened the message. Only the first read
    /// counts; returns whether this was it.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn mark_read(&self, workspace_id: i64, idx: u32, broadcast_id: i64, now: i64) -> Result<bool, StoreError> {
        self.db.write(|c| {
            c.query_one(
                "SELECT 1 FROM deliveries WHERE broadcast_id = ? AND channel = 'inbox' AND contact_idx = ? AND workspace_id = ?
                 AND state IN ('delivered', 'read')",
                params![broadcast_id, idx, workspace_id],
            )?;
            let first = c.execute(
                "UPDATE deliveries SET read_at = ?, state = 'read' WHERE broadcast_id = ? AND channel = 'inbox' AND contact_idx = ? AND read_at IS NULL",
                params![now, broadcast_id, idx],
            )? == 1;
            if first {
                c.execute("UPDATE broadcasts SET n_read = n_read + 1 WHERE id = ?", params![broadcast_id])?;
                let mut marks = Marks::new();
                crate::measure::first_open(c, &mut marks, (broadcast_id, "inbox", idx), now)?;
                marks.apply(c)?;
            }
            // Every open starts a view; `close_view` measures it.
            crate::measure::start_view(c, broadcast_id, idx, now)?;
            Ok(first)
        })
    }

    /// Stores a reply to a message (which also counts as reading it).
    ///
    /// # Errors
    /// `NotFound`, `QF-INVALID-CONTENT` for empty or over-long text, or database errors.
    pub fn reply(
        &self,
        workspace_id: i64,
        idx: u32,
        broadcast_id: i64,
        text: &str,
        now: i64,
    ) -> Result<ReplyRecord, StoreError> {
        let text = text.trim();
        if text.is_empty()
            || text.chars().count() > 2048
            || text.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            return Err(StoreError::rejected(
                Code::InvalidContent,
                "a reply has 1 to 2,048 characters and no control characters",
            ));
        }
        self.db.write(|c| {
            c.query_one(
                "SELECT 1 FROM deliveries WHERE broadcast_id = ? AND channel = 'inbox' AND contact_idx = ? AND workspace_id = ?
                 AND state IN ('delivered', 'read')",
                params![broadcast_id, idx, workspace_id],
            )?;
            // Conditional updates: only the one that changes the row counts, even
            // when a read and a reply (or two replies) race.
            let first_read = c.execute(
                "UPDATE deliveries SET read_at = ?, state = 'read' WHERE broadcast_id = ? AND channel = 'inbox' AND contact_idx = ? AND read_at IS NULL",
                params![now, broadcast_id, idx],
            )? == 1;
            let mut marks = Marks::new();
            if first_read {
                c.execute("UPDATE broadcasts SET n_read = n_read + 1 WHERE id = ?", params![broadcast_id])?;
                crate::measure::first_open(c, &mut marks, (broadcast_id, "inbox", idx), now)?;
            }
            let first_reply = c.execute(
                "UPDATE deliveries SET replied_at = ? WHERE broadcast_id = ? AND channel = 'inbox' AND contact_idx = ? AND replied_at IS NULL",
                params![now, broadcast_id, idx],
            )? == 1;
            if first_reply {
                c.execute("UPDATE broadcasts SET n_replied = n_replied + 1 WHERE id = ?", params![broadcast_id])?;
                crate::measure::bump(c, broadcast_id, "inbox", "replied", -1, 1)?;
                marks.set(broadcast_id, "inbox", "replied", -1, idx, true);
            }
            marks.apply(c)?;
            let id = c
                .query_one(
                    "INSERT INTO replies (workspace_id, broadcast_id, contact_idx, text, created_at) VALUES (?, ?, ?, ?, ?) RETURNING id",
                    params![workspace_id, broadcast_id, idx, text, now],
                )?
                .i64(0);
            // A thin event: the text stays behind the API (and retention).
            let data = serde_json::json!({
                "broadcast_id": broadcast_id.to_string(),
                "contact_id": crate::contact_public_id(workspace_id, idx).to_string(),
                "reply_id": id.to_string(),
            });
            crate::events::emit(c, workspace_id, "reply.received", data, now)?;
            Ok(ReplyRecord { id, contact_idx: idx, text: text.to_owned(), created_at: now })
        })
    }

    /// A recipient reports a message (spam, fraud, …): one report per
    /// recipient and message (a second one changes nothing), an audit entry
    /// and a `report.received` event. Returns whether it was new.
    ///
    /// # Errors
    /// `NotFound` when the message was not delivered to this recipient,
    /// `QF-BAD-REQUEST` for a reason that is not one of [`REPORT_REASONS`].
    pub fn report(
        &self,
        workspace_id: i64,
        idx: u32,
        broadcast_id: i64,
        reason: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        if !REPORT_REASONS.contains(&reason) {
            return Err(StoreError::rejected(
                Code::BadRequest,
                format!("reason must be one of {}", REPORT_REASONS.join(", ")),
            ));
        }
        self.db.write(|c| {
            c.query_opt(
                "SELECT 1 FROM deliveries WHERE broadcast_id = ? AND channel = 'inbox' AND contact_idx = ? AND workspace_id = ?
                 AND state IN ('delivered', 'read')",
                params![broadcast_id, idx, workspace_id],
            )?
            .ok_or(StoreError::NotFound)?;
            let n = c.execute(
                "INSERT INTO reports (workspace_id, broadcast_id, contact_idx, reason, created_at) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (broadcast_id, contact_idx) DO NOTHING",
                params![workspace_id, broadcast_id, idx, reason, now],
            )?;
            if n == 0 {
                return Ok(false);
            }
            crate::measure::bump(c, broadcast_id, "inbox", "reported", -1, 1)?;
            let details = serde_json::json!({"reason": reason, "contact": idx}).to_string();
            audit::append(c, workspace_id, "recipient", "broadcast.reported", &format!("broadcast:{broadcast_id}"), &details, now)?;
            let data = serde_json::json!({
                "broadcast_id": broadcast_id.to_string(),
                "contact_id": crate::contact_public_id(workspace_id, idx).to_string(),
                "reason": reason,
            });
            crate::events::emit(c, workspace_id, "report.received", data, now)?;
            Ok(true)
        })
    }

    /// Replies to a broadcast, oldest first, after `after_id`.
    ///
    /// # Errors
    /// Database errors.
    pub fn replies(
        &self,
        broadcast_id: i64,
        after_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ReplyRecord>, StoreError> {
        let rows = self.db.conn()?.query(
            "SELECT id, contact_idx, text, created_at FROM replies WHERE broadcast_id = ? AND id > ? ORDER BY id LIMIT ?",
            params![broadcast_id, after_id.unwrap_or(0), limit],
        )?;
        Ok(rows
            .iter()
            .map(|r| ReplyRecord {
                id: r.i64(0),
                contact_idx: r.i64(1) as u32,
                text: r.string(2),
                created_at: r.i64(3),
            })
            .collect())
    }
}

/// Why a recipient reports a message.
pub const REPORT_REASONS: [&str; 5] = ["spam", "fraud", "harassment", "illegal", "other"];

#[cfg(test)]
mod tests {
    //! The token path of the inbox against the plain one, on both backends.
    //! Messages are written as rows, without the delivery engine: what is
    //! tested is how they are read.

    use qunfa_core::{
        import::{parse, ImportFormat},
        workspace::{Name, WorkspaceKind},
        Policy,
    };

    use super::*;
    use crate::test_support;

    const NOW: i64 = 1_767_225_600_000;

    #[test]
    fn inbox_of_token_sqlite() {
        inbox_of_token_reads_what_is_committed(test_support::sqlite());
    }

    #[test]
    fn inbox_of_token_postgres() {
        inbox_of_token_reads_what_is_committed(test_support::postgres());
    }

    /// A broadcast of `text` delivered to `recipients` (contact idx, rendered body).
    fn deliver(
        store: &Store,
        workspace_id: i64,
        member_id: i64,
        text: &str,
        recipients: &[(u32, Option<&str>)],
    ) -> i64 {
        store
            .db
            .write(|c| {
                let id = c
                    .query_one(
                        "INSERT INTO broadcasts (workspace_id, member_id, state, content, audience, channels, priority,
                         request_hash, created_at) VALUES (?, ?, 'completed', ?, '{\"all\":true}', '[\"inbox\"]', 2, ?, ?)
                         RETURNING id",
                        params![workspace_id, member_id, serde_json::json!({"type": "text", "text": text}).to_string(), text, NOW],
                    )?
                    .i64(0);
                for &(idx, body) in recipients {
                    c.execute(
                        "INSERT INTO deliveries (broadcast_id, channel, contact_idx, workspace_id, state, attempts, body,
                         queued_at, delivered_at) VALUES (?, 'inbox', ?, ?, 'delivered', 1, ?, ?, ?)",
                        params![id, idx, workspace_id, body, NOW, NOW + id],
                    )?;
                }
                Ok(id)
            })
            .unwrap()
    }

    /// What a test compares of an item: id, content type and text, body, delivery time.
    type Summary = (i64, String, Option<String>, Option<String>, Option<i64>);

    fn summary(items: &[InboxItem]) -> Vec<Summary> {
        items
            .iter()
            .map(|i| {
                (i.broadcast_id, i.content.content_type.clone(), i.content.text.clone(), i.body.clone(), i.delivered_at)
            })
            .collect()
    }

    fn inbox_of_token_reads_what_is_committed(db: test_support::TestDb) {
        let store = Store::open(db.location.clone(), 4).unwrap();
        let (w, key) =
            store.create_workspace(&Name::parse("门店").unwrap(), WorkspaceKind::Personal, None, "t", NOW).unwrap();
        let people = parse(
            ImportFormat::Ndjson,
            "{\"external_id\":\"a\",\"name\":\"张三\"}\n{\"external_id\":\"b\"}\n".as_bytes(),
        );
        store.import_contacts(w.id, &Policy::builtin().tiers.personal, &people.contacts, "t", NOW).unwrap();
        let zhang = store.create_inbox_token(w.id, 0, "t", NOW).unwrap();
        let other = store.create_inbox_token(w.id, 1, "t", NOW).unwrap();

        // Unknown and malformed tokens stand for no one; a known token with no message has an empty inbox.
        assert!(store.inbox_of_token("qfi_00000000000000000000000000000000", None, 100).unwrap().is_none());
        assert!(store.inbox_of_token("qf_not_an_inbox_token", None, 100).unwrap().is_none());
        assert_eq!(store.inbox_of_token(&zhang, None, 100).unwrap().map(|i| i.len()), Some(0));

        let b1 = deliver(&store, w.id, key.member_id, "一", &[(0, None)]);
        let b2 = deliver(&store, w.id, key.member_id, "{{name}}，二", &[(0, Some("张三，二")), (1, Some("，二"))]);
        let b3 = deliver(&store, w.id, key.member_id, "三", &[(0, None)]);

        // The same messages as the plain listing, newest first, with the sender's name.
        let page = store.inbox_of_token(&zhang, None, 100).unwrap().unwrap();
        assert_eq!(summary(&page), summary(&store.inbox(w.id, 0, None, 100).unwrap()));
        assert_eq!(page.iter().map(|i| i.broadcast_id).collect::<Vec<_>>(), [b3, b2, b1]);
        assert_eq!(page[1].body.as_deref(), Some("张三，二"));
        assert!(page.iter().all(|i| i.sender_name == "门店"));
        // Pages before a cursor, with a limit.
        let next = store.inbox_of_token(&zhang, Some(b3), 1).unwrap().unwrap();
        assert_eq!(summary(&next), summary(&store.inbox(w.id, 0, Some(b3), 1).unwrap()));
        assert_eq!(next.iter().map(|i| i.broadcast_id).collect::<Vec<_>>(), [b2]);
        assert_eq!(store.inbox_of_token(&zhang, Some(b1), 100).unwrap().map(|i| i.len()), Some(0));
        // Each token reads its own recipient's messages.
        assert_eq!(
            summary(&store.inbox_of_token(&other, None, 100).unwrap().unwrap()),
            summary(&store.inbox(w.id, 1, None, 100).unwrap())
        );

        // A content changed after it was read (retention purges it) is read as it is now.
        store
            .db
            .write(|c| c.execute("UPDATE broadcasts SET content = '{\"type\":\"purged\"}' WHERE id = ?", params![b1]))
            .unwrap();
        let page = store.inbox_of_token(&zhang, None, 100).unwrap().unwrap();
        assert_eq!((page[2].content.content_type.as_str(), page[2].content.text.as_deref()), ("purged", None));
        assert_eq!(page[0].content.text.as_deref(), Some("三"));

        // Deleting the contact deletes its token at once.
        store.delete_contact(w.id, 0, "t", NOW).unwrap();
        assert!(store.inbox_of_token(&zhang, None, 100).unwrap().is_none());
        assert!(store.inbox_auth(&zhang).unwrap().is_none());
        assert!(store.inbox_of_token(&other, None, 100).unwrap().is_some());
    }
}
