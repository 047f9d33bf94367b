//! The recipient side of the inbox channel: tokens, listing, read receipts and
//! replies.

use crate::{json::content_from_json, new_secret, params, secret_hash, Code, Store, StoreError};
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
}

/// A reply from a recipient.
#[derive(Debug, Clone)]
pub struct ReplyRecord {
    pub id: i64,
    pub contact_idx: u32,
    pub text: String,
    pub created_at: i64,
}

const INBOX_SELECT: &str = "SELECT d.broadcast_id, b.content, d.body, w.name, d.delivered_at, d.read_at, d.replied_at
     FROM deliveries d JOIN broadcasts b ON b.id = d.broadcast_id JOIN workspaces w ON w.id = d.workspace_id";

fn item_from(r: &crate::Row) -> Result<InboxItem, StoreError> {
    Ok(InboxItem {
        broadcast_id: r.i64(0),
        content: content_from_json(r.str(1))?,
        body: r.opt_string(2),
        sender_name: r.string(3),
        delivered_at: r.opt_i64(4),
        read_at: r.opt_i64(5),
        replied_at: r.opt_i64(6),
    })
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
        if !token.starts_with("qfi_") || token.len() > 64 {
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
                "{INBOX_SELECT} WHERE d.workspace_id = ? AND d.contact_idx = ? AND d.channel = 'inbox' AND d.broadcast_id < ?
                 ORDER BY d.broadcast_id DESC LIMIT ?"
            ),
            params![workspace_id, idx, before_broadcast.unwrap_or(i64::MAX), limit],
        )?;
        rows.iter().map(item_from).collect()
    }

    /// One message of a recipient's inbox.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn inbox_message(&self, workspace_id: i64, idx: u32, broadcast_id: i64) -> Result<InboxItem, StoreError> {
        let r = self.db.conn()?.query_one(
            &format!("{INBOX_SELECT} WHERE d.workspace_id = ? AND d.contact_idx = ? AND d.channel = 'inbox' AND d.broadcast_id = ?"),
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
                "SELECT 1 FROM deliveries WHERE broadcast_id = ? AND channel = 'inbox' AND contact_idx = ? AND workspace_id = ?",
                params![broadcast_id, idx, workspace_id],
            )?;
            let first = c.execute(
                "UPDATE deliveries SET read_at = ?, state = 'read' WHERE broadcast_id = ? AND channel = 'inbox' AND contact_idx = ? AND read_at IS NULL",
                params![now, broadcast_id, idx],
            )? == 1;
            if first {
                c.execute("UPDATE broadcasts SET n_read = n_read + 1 WHERE id = ?", params![broadcast_id])?;
            }
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
                "SELECT 1 FROM deliveries WHERE broadcast_id = ? AND channel = 'inbox' AND contact_idx = ? AND workspace_id = ?",
                params![broadcast_id, idx, workspace_id],
            )?;
            // Conditional updates: only the one that changes the row counts, even
            // when a read and a reply (or two replies) race.
            let first_read = c.execute(
                "UPDATE deliveries SET read_at = ?, state = 'read' WHERE broadcast_id = ? AND channel = 'inbox' AND contact_idx = ? AND read_at IS NULL",
                params![now, broadcast_id, idx],
            )? == 1;
            if first_read {
                c.execute("UPDATE broadcasts SET n_read = n_read + 1 WHERE id = ?", params![broadcast_id])?;
            }
            let first_reply = c.execute(
                "UPDATE deliveries SET replied_at = ? WHERE broadcast_id = ? AND channel = 'inbox' AND contact_idx = ? AND replied_at IS NULL",
                params![now, broadcast_id, idx],
            )? == 1;
            if first_reply {
                c.execute("UPDATE broadcasts SET n_replied = n_replied + 1 WHERE id = ?", params![broadcast_id])?;
            }
            let id = c
                .query_one(
                    "INSERT INTO replies (workspace_id, broadcast_id, contact_idx, text, created_at) VALUES (?, ?, ?, ?, ?) RETURNING id",
                    params![workspace_id, broadcast_id, idx, text, now],
                )?
                .i64(0);
            Ok(ReplyRecord { id, contact_idx: idx, text: text.to_owned(), created_at: now })
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
