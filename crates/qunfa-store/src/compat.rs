//! The WeChat-compatible API's own rows (docs/compat.md): credentials per
//! workspace, access tokens (SHA-256 only), and the broadcasts sent through
//! it with their `MASSSENDJOBFINISH` callback. Contacts, tags, departments and
//! broadcasts are qunfa's own; nothing here is a second copy of them.

use std::collections::HashMap;

use crate::{
    audit,
    broadcasts::{create_broadcast_in, BroadcastRecord, NewBroadcast},
    contacts::ContactRecord,
    members::{self, SetKind},
    params, Code, Row, Store, StoreError, Value,
};

/// The credentials of one compatible API of a workspace.
#[derive(Debug, Clone)]
pub struct CompatCredentials {
    pub workspace_id: i64,
    /// `wecom` or `oa`.
    pub kind: String,
    /// The corpid or appid.
    pub app_id: String,
    /// SHA-256 (hex) of the corpsecret or secret.
    pub secret_hash: String,
    /// The member compatible sends act as (the admin who set the credentials).
    pub member_id: i64,
    pub callback_url: Option<String>,
    pub callback_token: Option<String>,
    pub callback_aes_key: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

const CRED_COLUMNS: &str = "workspace_id, kind, app_id, secret_hash, member_id, callback_url, callback_token, callback_aes_key, created_at, updated_at";

fn cred_from(r: &Row) -> CompatCredentials {
    CompatCredentials {
        workspace_id: r.i64(0),
        kind: r.string(1),
        app_id: r.string(2),
        secret_hash: r.string(3),
        member_id: r.i64(4),
        callback_url: r.opt_string(5),
        callback_token: r.opt_string(6),
        callback_aes_key: r.opt_string(7),
        created_at: r.i64(8),
        updated_at: r.i64(9),
    }
}

/// A broadcast sent through the compatible API.
#[derive(Debug, Clone)]
pub struct CompatSend {
    pub broadcast_id: i64,
    pub workspace_id: i64,
    /// `wecom`, `oa` or `customer` (WeCom customer mass send).
    pub kind: String,
    /// The sending member's userid of a customer mass send.
    pub sender: Option<String>,
    pub created_at: i64,
    pub callback_state: String,
}

/// A callback due: the send, how often it was tried, and the lease the
/// claim holds (its `callback_next_at`: the outcome is recorded only while
/// the row still carries it).
#[derive(Debug, Clone)]
pub struct DueCallback {
    pub workspace_id: i64,
    pub broadcast_id: i64,
    pub attempts: i64,
    pub lease_until: i64,
}

/// The compat row a draft is created with ([`Store::create_compat_broadcast`]).
#[derive(Debug, Clone)]
pub struct NewCompatSend<'a> {
    /// `wecom`, `oa`, `oa-preview` or `customer`.
    pub kind: &'a str,
    /// The duplicate key (WeCom `enable_duplicate_check`) and the time from
    /// which an earlier send with it is a duplicate.
    pub dup: Option<(&'a str, i64)>,
    /// The sending member's userid of a customer mass send.
    pub sender: Option<&'a str>,
    /// A `MASSSENDJOBFINISH` is due when the broadcast finishes.
    pub callback: bool,
}

/// What [`Store::create_compat_broadcast`] found or made.
#[derive(Debug, Clone)]
pub enum CompatDraft {
    /// A new draft with its compat row.
    Created(BroadcastRecord),
    /// The broadcast that holds the same `client_msg_id` with the same request.
    SameClientMsgId(BroadcastRecord),
    /// The send that holds the duplicate key within the interval.
    Duplicate(BroadcastRecord),
}

impl Store {
    /// Sets (or replaces) a workspace's credentials of one kind.
    ///
    /// # Errors
    /// `QF-DUPLICATE` when another workspace has the app id, or database errors.
    pub fn set_compat_credentials(&self, c: &CompatCredentials, actor: &str, now: i64) -> Result<(), StoreError> {
        let result = self.db.write(|conn| {
            conn.execute(
                "DELETE FROM compat_credentials WHERE workspace_id = ? AND kind = ?",
                params![c.workspace_id, c.kind.as_str()],
            )?;
            conn.execute(
                &format!("INSERT INTO compat_credentials ({CRED_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                params![
                    c.workspace_id,
                    c.kind.as_str(),
                    c.app_id.as_str(),
                    c.secret_hash.as_str(),
                    c.member_id,
                    c.callback_url.clone(),
                    c.callback_token.clone(),
                    c.callback_aes_key.clone(),
                    now,
                    now
                ],
            )?;
            // New credentials void the tokens issued under the old ones.
            conn.execute(
                "DELETE FROM compat_tokens WHERE workspace_id = ? AND kind = ?",
                params![c.workspace_id, c.kind.as_str()],
            )?;
            let details = serde_json::json!({"kind": c.kind, "app_id": c.app_id, "callback_url": c.callback_url});
            audit::append(
                conn,
                c.workspace_id,
                actor,
                "compat.credentials_set",
                &format!("compat:{}", c.kind),
                &details.to_string(),
                now,
            )?;
            Ok(())
        });
        match result {
            Err(e) if e.is_unique_violation() => Err(StoreError::rejected(
                Code::Duplicate,
                format!("the {} id {:?} belongs to another workspace", c.kind, c.app_id),
            )),
            other => other,
        }
    }

    /// Removes a workspace's credentials of one kind (and its tokens).
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn delete_compat_credentials(
        &self,
        workspace_id: i64,
        kind: &str,
        actor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.db.write(|c| {
            let n = c.execute(
                "DELETE FROM compat_credentials WHERE workspace_id = ? AND kind = ?",
                params![workspace_id, kind],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            c.execute("DELETE FROM compat_tokens WHERE workspace_id = ? AND kind = ?", params![workspace_id, kind])?;
            audit::append(c, workspace_id, actor, "compat.credentials_deleted", &format!("compat:{kind}"), "{}", now)?;
            Ok(())
        })
    }

    /// A workspace's credentials, by kind.
    ///
    /// # Errors
    /// Database errors.
    pub fn compat_credentials(&self, workspace_id: i64) -> Result<Vec<CompatCredentials>, StoreError> {
        self.db.read(|c| {
            Ok(c.query(
                &format!("SELECT {CRED_COLUMNS} FROM compat_credentials WHERE workspace_id = ? ORDER BY kind"),
                params![workspace_id],
            )?
            .iter()
            .map(cred_from)
            .collect())
        })
    }

    /// The credentials of an app id (corpid or appid) of a kind.
    ///
    /// # Errors
    /// Database errors.
    pub fn compat_app(&self, kind: &str, app_id: &str) -> Result<Option<CompatCredentials>, StoreError> {
        self.db.read(|c| {
            Ok(c.query_opt(
                &format!("SELECT {CRED_COLUMNS} FROM compat_credentials WHERE kind = ? AND app_id = ?"),
                params![kind, app_id],
            )?
            .map(|r| cred_from(&r)))
        })
    }

    /// The credentials of a workspace of a kind.
    ///
    /// # Errors
    /// Database errors.
    pub fn compat_credentials_of(
        &self,
        workspace_id: i64,
        kind: &str,
    ) -> Result<Option<CompatCredentials>, StoreError> {
        self.db.read(|c| {
            Ok(c.query_opt(
                &format!("SELECT {CRED_COLUMNS} FROM compat_credentials WHERE workspace_id = ? AND kind = ?"),
                params![workspace_id, kind],
            )?
            .map(|r| cred_from(&r)))
        })
    }

    /// Stores an access token's hash; tokens of the workspace that expired are dropped.
    ///
    /// # Errors
    /// Database errors.
    pub fn issue_compat_token(
        &self,
        workspace_id: i64,
        kind: &str,
        token_hash: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        self.db.write(|c| {
            // Expired tokens stay a day, so that using one is "expired" (42001), not "invalid".
            c.execute(
                "DELETE FROM compat_tokens WHERE workspace_id = ? AND expires_at < ?",
                params![workspace_id, now - 86_400_000],
            )?;
            c.execute(
                "INSERT INTO compat_tokens (token_hash, workspace_id, kind, expires_at, created_at) VALUES (?, ?, ?, ?, ?)",
                params![token_hash, workspace_id, kind, expires_at, now],
            )?;
            Ok(())
        })
    }

    /// The (workspace, kind, expires_at) of an access token's hash.
    ///
    /// # Errors
    /// Database errors.
    pub fn compat_token(&self, token_hash: &str) -> Result<Option<(i64, String, i64)>, StoreError> {
        self.db.read(|c| {
            Ok(c.query_opt(
                "SELECT workspace_id, kind, expires_at FROM compat_tokens WHERE token_hash = ?",
                params![token_hash],
            )?
            .map(|r| (r.i64(0), r.string(1), r.i64(2))))
        })
    }

    /// The live contacts with these external ids: external id → idx.
    ///
    /// # Errors
    /// Database errors.
    pub fn contacts_by_external_ids(
        &self,
        workspace_id: i64,
        ids: &[String],
    ) -> Result<HashMap<String, u32>, StoreError> {
        let mut out = HashMap::with_capacity(ids.len());
        if ids.is_empty() {
            return Ok(out);
        }
        self.db.read(|c| {
            for chunk in ids.chunks(500) {
                let marks = vec!["?"; chunk.len()].join(", ");
                let mut values: Vec<Value> = vec![Value::Int(workspace_id)];
                values.extend(chunk.iter().map(|s| Value::Text(s.clone())));
                for r in c.query(
                    &format!(
                        "SELECT external_id, idx FROM contacts WHERE workspace_id = ? AND deleted_at IS NULL AND external_id IN ({marks})"
                    ),
                    &values,
                )? {
                    out.insert(r.string(0), r.i64(1) as u32);
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// External ids of live contacts in idx order after `after`, at most `limit`:
    /// (idx, external id).
    ///
    /// # Errors
    /// Database errors.
    pub fn external_ids_page(
        &self,
        workspace_id: i64,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Vec<(u32, String)>, StoreError> {
        self.db.read(|c| {
            Ok(c.query(
                "SELECT idx, external_id FROM contacts WHERE workspace_id = ? AND deleted_at IS NULL AND idx > ? ORDER BY idx LIMIT ?",
                params![workspace_id, after.map_or(-1, i64::from), limit as i64],
            )?
            .iter()
            .map(|r| (r.i64(0) as u32, r.string(1)))
            .collect())
        })
    }

    /// The number of live contacts of a workspace.
    ///
    /// # Errors
    /// Database errors.
    pub fn live_contact_count(&self, workspace_id: i64) -> Result<u64, StoreError> {
        self.db.read(|c| {
            Ok(c.query_one(
                "SELECT CAST(COUNT(*) AS BIGINT) FROM contacts WHERE workspace_id = ? AND deleted_at IS NULL",
                params![workspace_id],
            )?
            .i64(0) as u64)
        })
    }

    /// External ids of these contacts (live ones), by idx.
    ///
    /// # Errors
    /// Database errors.
    pub fn external_ids_of(&self, workspace_id: i64, idxs: &[u32]) -> Result<Vec<(u32, String)>, StoreError> {
        let mut out = Vec::with_capacity(idxs.len());
        self.db.read(|c| {
            for chunk in idxs.chunks(1000) {
                let list = chunk.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
                for r in c.query(
                    &format!(
                        "SELECT idx, external_id FROM contacts WHERE workspace_id = ? AND deleted_at IS NULL AND idx IN ({list}) ORDER BY idx"
                    ),
                    params![workspace_id],
                )? {
                    out.push((r.i64(0) as u32, r.string(1)));
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Creates the draft of a compatible send and its `compat_sends` row in
    /// one transaction, so a broadcast of this API never exists without its
    /// row. A duplicate key held by a send since `dup.1` answers that send
    /// (the key is unique per workspace: of two racing identical requests one
    /// creates, the other finds it); an older holder gives the key up. A
    /// `client_msg_id` held by a draft that was never sent (refused) with
    /// another request is released for this one; held with the same request,
    /// or by a broadcast that was submitted, it answers that broadcast (or
    /// `QF-CLIENT-MSG-ID-REUSED` when the request differs).
    ///
    /// # Errors
    /// `QF-CLIENT-MSG-ID-REUSED`, or database errors.
    pub fn create_compat_broadcast(
        &self,
        workspace_id: i64,
        member_id: i64,
        new: &NewBroadcast,
        send: &NewCompatSend<'_>,
        actor: &str,
        now: i64,
    ) -> Result<CompatDraft, StoreError> {
        let mut tries = 0;
        loop {
            let result = self.db.write(|c| {
                if let Some((key, since)) = send.dup {
                    if let Some(r) = c.query_opt(
                        "SELECT broadcast_id FROM compat_sends WHERE workspace_id = ? AND dup_key = ? AND created_at >= ?",
                        params![workspace_id, key, since],
                    )? {
                        return Ok(Err(r.i64(0)));
                    }
                    // Only an older holder: a racing request's row (committed after
                    // the read above, on PostgreSQL) keeps the key, and our insert
                    // below fails on the unique index instead.
                    c.execute(
                        "UPDATE compat_sends SET dup_key = NULL WHERE workspace_id = ? AND dup_key = ? AND created_at < ?",
                        params![workspace_id, key, since],
                    )?;
                }
                if let Some(cid) = &new.client_msg_id {
                    // Only a draft of this API: a /v1 draft keeps its client_msg_id.
                    c.execute(
                        "UPDATE broadcasts SET client_msg_id = NULL
                         WHERE workspace_id = ? AND client_msg_id = ? AND state = 'draft' AND request_hash <> ?
                           AND id IN (SELECT broadcast_id FROM compat_sends WHERE workspace_id = ?)",
                        params![workspace_id, cid.as_str(), new.request_hash.as_str(), workspace_id],
                    )?;
                }
                let (b, created) = create_broadcast_in(c, workspace_id, member_id, new, actor, now)?;
                if !created {
                    return Ok(Ok(CompatDraft::SameClientMsgId(b)));
                }
                c.execute(
                    "INSERT INTO compat_sends (broadcast_id, workspace_id, kind, dup_key, sender, created_at, callback_state)
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                    params![
                        b.id,
                        workspace_id,
                        send.kind,
                        send.dup.map(|d| d.0),
                        send.sender,
                        now,
                        if send.callback { "pending" } else { "none" }
                    ],
                )?;
                Ok(Ok(CompatDraft::Created(b)))
            });
            match result {
                Ok(Ok(draft)) => return Ok(draft),
                Ok(Err(id)) => return Ok(CompatDraft::Duplicate(self.broadcast(workspace_id, id)?)),
                // A racing request took the duplicate key or the client_msg_id:
                // the next round finds its row.
                Err(e) if e.is_unique_violation() && tries < 3 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// A send of the compatible API.
    ///
    /// # Errors
    /// Database errors.
    pub fn compat_send(&self, workspace_id: i64, broadcast_id: i64) -> Result<Option<CompatSend>, StoreError> {
        self.db.read(|c| {
            Ok(c.query_opt(
                "SELECT broadcast_id, workspace_id, kind, sender, created_at, callback_state FROM compat_sends WHERE workspace_id = ? AND broadcast_id = ?",
                params![workspace_id, broadcast_id],
            )?
            .map(|r| send_from(&r)))
        })
    }

    /// Sends of a kind created in `[from, to)`, oldest first, after the cursor id.
    ///
    /// # Errors
    /// Database errors.
    pub fn compat_sends(
        &self,
        workspace_id: i64,
        kind: &str,
        from: i64,
        to: i64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<CompatSend>, StoreError> {
        self.db.read(|c| {
            Ok(c.query(
                "SELECT broadcast_id, workspace_id, kind, sender, created_at, callback_state FROM compat_sends
                 WHERE workspace_id = ? AND kind = ? AND created_at >= ? AND created_at < ? AND broadcast_id > ?
                 ORDER BY broadcast_id LIMIT ?",
                params![workspace_id, kind, from, to, after, limit as i64],
            )?
            .iter()
            .map(send_from)
            .collect())
        })
    }

    /// The broadcast holding a `client_msg_id`, with its creation time.
    ///
    /// # Errors
    /// Database errors.
    pub fn broadcast_by_client_msg_id(&self, workspace_id: i64, cid: &str) -> Result<Option<(i64, i64)>, StoreError> {
        self.db.read(|c| {
            Ok(c.query_opt(
                "SELECT id, created_at FROM broadcasts WHERE workspace_id = ? AND client_msg_id = ?",
                params![workspace_id, cid],
            )?
            .map(|r| (r.i64(0), r.i64(1))))
        })
    }

    /// Claims callbacks whose broadcast finished, for `lease_ms`: each row's
    /// `callback_next_at` becomes the lease's end, so another node's claim
    /// skips it until then, and only the claim that holds it records the
    /// outcome ([`Store::finish_compat_callback`]).
    ///
    /// # Errors
    /// Database errors.
    pub fn claim_compat_callbacks(
        &self,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<DueCallback>, StoreError> {
        let due = |c: &mut crate::Conn| {
            c.query(
                "SELECT s.workspace_id, s.broadcast_id, s.callback_attempts, s.callback_next_at FROM compat_sends s
                 JOIN broadcasts b ON b.id = s.broadcast_id
                 WHERE s.callback_state = 'pending' AND s.callback_next_at <= ? AND b.state IN ('completed', 'cancelled', 'blocked')
                 ORDER BY s.broadcast_id LIMIT ?",
                params![now, limit as i64],
            )
        };
        // Polled often: a read first, so that an idle poll never takes the writer.
        if self.db.read(due)?.is_empty() {
            return Ok(Vec::new());
        }
        self.db.write(|c| {
            let rows = due(c)?;
            let mut out = Vec::new();
            for r in rows {
                let n = c.execute(
                    "UPDATE compat_sends SET callback_next_at = ? WHERE broadcast_id = ? AND callback_state = 'pending' AND callback_next_at = ?",
                    params![now + lease_ms, r.i64(1), r.i64(3)],
                )?;
                if n == 1 {
                    out.push(DueCallback {
                        workspace_id: r.i64(0),
                        broadcast_id: r.i64(1),
                        attempts: r.i64(2),
                        lease_until: now + lease_ms,
                    });
                }
            }
            Ok(out)
        })
    }

    /// Records a callback's outcome: `done`, `failed` (no more attempts),
    /// `none` (nothing to post), or pending again at `next_at` — only while
    /// the row is still leased by this claim (`due.lease_until`). `false`
    /// when the lease was lost (another node claimed it after the lease ran
    /// out): nothing is recorded.
    ///
    /// # Errors
    /// Database errors.
    pub fn finish_compat_callback(
        &self,
        due: &DueCallback,
        state: &str,
        next_at: i64,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.db.write(|c| {
            let n = c.execute(
                "UPDATE compat_sends SET callback_state = ?, callback_attempts = callback_attempts + 1, callback_next_at = ?, callback_error = ?
                 WHERE broadcast_id = ? AND callback_state = 'pending' AND callback_next_at = ?",
                params![state, next_at, error, due.broadcast_id, due.lease_until],
            )?;
            Ok(n == 1)
        })
    }

    /// A send's callback: (state, attempts).
    ///
    /// # Errors
    /// Database errors.
    pub fn compat_callback_state(&self, broadcast_id: i64) -> Result<Option<(String, i64)>, StoreError> {
        self.db.read(|c| {
            Ok(c.query_opt(
                "SELECT callback_state, callback_attempts FROM compat_sends WHERE broadcast_id = ?",
                params![broadcast_id],
            )?
            .map(|r| (r.string(0), r.i64(1))))
        })
    }

    /// Live contacts among `idxs` (sorted) with the departments each is
    /// directly in: one contact query per 1,000 and one department query per
    /// 65,536-id chunk (a directory page without a query per contact).
    ///
    /// # Errors
    /// Database errors.
    pub fn contacts_with_departments(&self, workspace_id: i64, idxs: &[u32]) -> Result<Vec<ContactRecord>, StoreError> {
        let mut out = Vec::with_capacity(idxs.len());
        for chunk in idxs.chunks(1000) {
            out.extend(self.contacts_among(workspace_id, chunk)?);
        }
        let found: Vec<u32> = out.iter().map(|r| r.idx).collect();
        let mut departments = self.db.read(|c| members::sets_of_many(c, workspace_id, SetKind::Department, &found))?;
        for rec in &mut out {
            rec.departments = departments.remove(&rec.idx).unwrap_or_default();
        }
        Ok(out)
    }
}

fn send_from(r: &Row) -> CompatSend {
    CompatSend {
        broadcast_id: r.i64(0),
        workspace_id: r.i64(1),
        kind: r.string(2),
        sender: r.opt_string(3),
        created_at: r.i64(4),
        callback_state: r.string(5),
    }
}
