//! The external channels' side of the store: per-workspace settings, consent
//! and opt-outs, provider receipts and email bounces.
//!
//! **Consent is checked when a batch is sent**, not when the broadcast is
//! made: `opt_outs` holds every (workspace, channel, contact) that must not get
//! messages — refused consent, an unsubscribe link, a hard bounce — and each
//! batch reads the rows of its id range (an index range scan that is almost
//! always empty). Channels that need explicit consent
//! (`delivery.opt_in_channels`) also read the contact's consent at claim time.

use std::collections::{HashMap, HashSet};

use qunfa_core::{channel::ChannelSettings, contact::Channel, Code};
use serde_json::{Map, Value as Json};

use crate::{audit, engagement::Marks, events, params, queue::channel_settings, Conn, Store, StoreError};

/// Why a contact is opted out of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptOutReason {
    /// consent: {channel: false} given through the API or an import.
    Consent,
    /// The contact used an unsubscribe link (only the contact can undo it).
    Unsubscribed,
    /// A hard bounce (undone when the address changes).
    Bounced,
}

impl OptOutReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Consent => "consent",
            Self::Unsubscribed => "unsubscribed",
            Self::Bounced => "bounced",
        }
    }
    /// The code a filtered delivery record carries.
    pub fn code(self) -> Code {
        match self {
            Self::Consent | Self::Unsubscribed => Code::Unsubscribed,
            Self::Bounced => Code::EmailBounced,
        }
    }
    fn parse(s: &str) -> Self {
        match s {
            "unsubscribed" => Self::Unsubscribed,
            "bounced" => Self::Bounced,
            _ => Self::Consent,
        }
    }
}

/// A provider's delivery receipt for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub provider_id: String,
    /// The idempotency key the message was sent with (`qf-{broadcast}-{contact}-{channel}`),
    /// for a receipt that comes before its batch was recorded.
    pub out_id: Option<String>,
    pub delivered: bool,
    /// The provider's error code when not delivered.
    pub error: Option<String>,
}

/// What [`Store::record_receipts`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiptReport {
    pub delivered: u64,
    pub failed: u64,
    /// Receipts for no known `sent` message (unknown id, or already final).
    pub ignored: u64,
}

/// Records an `opt_outs` row: insert, or keep the existing one unless the new
/// reason is stronger.
pub(crate) fn opt_out(
    c: &mut Conn,
    workspace_id: i64,
    idx: u32,
    channel: Channel,
    reason: OptOutReason,
    now: i64,
) -> Result<bool, StoreError> {
    let inserted = c.execute(
        "INSERT INTO opt_outs (workspace_id, channel, contact_idx, reason, created_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (workspace_id, channel, contact_idx) DO NOTHING",
        params![workspace_id, channel.as_str(), idx, reason.as_str(), now],
    )?;
    // An unsubscribe outranks everything; a bounce outranks a consent
    // refusal (which an operator may lift, while the address stays dead).
    let weaker = match reason {
        OptOutReason::Unsubscribed => "reason <> 'unsubscribed'",
        OptOutReason::Bounced => "reason = 'consent'",
        OptOutReason::Consent => "1 = 0",
    };
    if inserted == 0 {
        c.execute(
            &format!("UPDATE opt_outs SET reason = ? WHERE workspace_id = ? AND channel = ? AND contact_idx = ? AND {weaker}"),
            params![reason.as_str(), workspace_id, channel.as_str(), idx],
        )?;
    }
    Ok(inserted > 0)
}

/// Applies consent given for a contact (API or import): `false` opts the
/// contact out; `true` lifts an opt-out that came from consent — never one the
/// contact made through an unsubscribe link.
pub(crate) fn sync_consent(
    c: &mut Conn,
    workspace_id: i64,
    idx: u32,
    consent: impl IntoIterator<Item = (Channel, bool)>,
    now: i64,
) -> Result<(), StoreError> {
    for (channel, given) in consent {
        if given {
            c.execute(
                "DELETE FROM opt_outs WHERE workspace_id = ? AND channel = ? AND contact_idx = ? AND reason = 'consent'",
                params![workspace_id, channel.as_str(), idx],
            )?;
        } else {
            opt_out(c, workspace_id, idx, channel, OptOutReason::Consent, now)?;
        }
    }
    Ok(())
}

/// Consent as stored JSON (`{"email": true}`) → (channel, given) pairs.
pub(crate) fn consent_pairs(json: &str) -> Vec<(Channel, bool)> {
    let map: Map<String, Json> = serde_json::from_str(json).unwrap_or_default();
    map.iter().filter_map(|(k, v)| Some((Channel::parse(k).ok()?, v.as_bool()?))).collect()
}

/// A changed email address lifts a bounce opt-out of the old one.
pub(crate) fn address_changed(c: &mut Conn, workspace_id: i64, idx: u32, channel: Channel) -> Result<(), StoreError> {
    c.execute(
        "DELETE FROM opt_outs WHERE workspace_id = ? AND channel = ? AND contact_idx = ? AND reason = 'bounced'",
        params![workspace_id, channel.as_str(), idx],
    )?;
    Ok(())
}

/// Opted-out contacts of a channel among ids `lo..=hi`, with the reason.
pub(crate) fn opted_out(
    c: &mut Conn,
    workspace_id: i64,
    channel: Channel,
    lo: u32,
    hi: u32,
) -> Result<HashMap<u32, OptOutReason>, StoreError> {
    Ok(c
        .query(
            "SELECT contact_idx, reason FROM opt_outs WHERE workspace_id = ? AND channel = ? AND contact_idx BETWEEN ? AND ?",
            params![workspace_id, channel.as_str(), lo, hi],
        )?
        .iter()
        .map(|r| (r.i64(0) as u32, OptOutReason::parse(r.str(1))))
        .collect())
}

/// Contacts among `lo..=hi` whose stored consent for `channel` is `true`.
pub(crate) fn consenting(
    c: &mut Conn,
    workspace_id: i64,
    channel: Channel,
    lo: u32,
    hi: u32,
) -> Result<HashSet<u32>, StoreError> {
    let mut out = HashSet::new();
    for r in c.query(
        "SELECT idx, consent FROM contacts WHERE workspace_id = ? AND idx BETWEEN ? AND ? AND deleted_at IS NULL",
        params![workspace_id, lo, hi],
    )? {
        let consent: Map<String, Json> = serde_json::from_str(r.str(1)).unwrap_or_default();
        if consent.get(channel.as_str()).and_then(Json::as_bool) == Some(true) {
            out.insert(r.i64(0) as u32);
        }
    }
    Ok(out)
}

/// One workspace channel's settings as stored, with when they changed.
#[derive(Debug, Clone)]
pub struct StoredSettings {
    pub channel: Channel,
    pub settings: ChannelSettings,
    pub updated_at: i64,
}

impl Store {
    /// The server's key for signed links (unsubscribe, receipt callbacks),
    /// made once and shared by every node.
    ///
    /// # Errors
    /// Database errors.
    pub fn link_key(&self) -> Result<Vec<u8>, StoreError> {
        let key = self.setting_init("link_key", &crate::new_secret(""))?;
        Ok(key.into_bytes())
    }

    /// The settings of one channel of a workspace.
    ///
    /// # Errors
    /// Database errors.
    pub fn channel_settings(&self, workspace_id: i64, channel: Channel) -> Result<Option<ChannelSettings>, StoreError> {
        let mut c = self.db.conn()?;
        Ok(channel_settings(&mut c, workspace_id, channel)?.map(|s| (*s).clone()))
    }

    /// Every channel a workspace set up.
    ///
    /// # Errors
    /// Database errors.
    pub fn list_channel_settings(&self, workspace_id: i64) -> Result<Vec<StoredSettings>, StoreError> {
        let rows = self.db.conn()?.query(
            "SELECT channel, settings, updated_at FROM channel_settings WHERE workspace_id = ? ORDER BY channel",
            params![workspace_id],
        )?;
        rows.iter()
            .map(|r| {
                let channel =
                    Channel::parse(r.str(0)).map_err(|_| StoreError::Corrupt(format!("channel {}", r.str(0))))?;
                let settings = ChannelSettings::from_stored(channel, r.str(1))
                    .map_err(|e| StoreError::Corrupt(format!("{} settings: {e}", channel.as_str())))?;
                Ok(StoredSettings { channel, settings, updated_at: r.i64(2) })
            })
            .collect()
    }

    /// Stores a channel's settings (replacing any), with an audit entry that
    /// names the channel but holds no secret.
    ///
    /// # Errors
    /// Database errors.
    pub fn set_channel_settings(
        &self,
        workspace_id: i64,
        settings: &ChannelSettings,
        actor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let channel = settings.channel();
        self.db.write(|c| {
            c.execute(
                "INSERT INTO channel_settings (workspace_id, channel, settings, updated_at) VALUES (?, ?, ?, ?)
                 ON CONFLICT (workspace_id, channel) DO UPDATE SET settings = excluded.settings, updated_at = excluded.updated_at",
                params![workspace_id, channel.as_str(), settings.to_json().to_string(), now],
            )?;
            let details = serde_json::json!({"channel": channel.as_str(), "per_minute": settings.per_minute});
            audit::append(c, workspace_id, actor, "channel.configured", &format!("channel:{}", channel.as_str()), &details.to_string(), now)?;
            Ok(())
        })
    }

    /// Removes a channel's settings; its queued batches then fail with
    /// `QF-CHANNEL-NOT-CONFIGURED`.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn delete_channel_settings(
        &self,
        workspace_id: i64,
        channel: Channel,
        actor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.db.write(|c| {
            let n = c.execute(
                "DELETE FROM channel_settings WHERE workspace_id = ? AND channel = ?",
                params![workspace_id, channel.as_str()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            audit::append(
                c,
                workspace_id,
                actor,
                "channel.removed",
                &format!("channel:{}", channel.as_str()),
                "{}",
                now,
            )?;
            Ok(())
        })
    }

    /// Unsubscribes a contact from a channel (the one-click link, or the
    /// recipient's inbox): an opt-out that only the contact can undo, the
    /// contact's consent set to `false`, an audit entry and an event.
    /// Returns whether it was new.
    ///
    /// # Errors
    /// `NotFound` for an unknown or deleted contact, or database errors.
    pub fn unsubscribe(&self, workspace_id: i64, idx: u32, channel: Channel, now: i64) -> Result<bool, StoreError> {
        self.db.write(|c| {
            let Some(row) = c.query_opt(
                "SELECT consent FROM contacts WHERE workspace_id = ? AND idx = ? AND deleted_at IS NULL",
                params![workspace_id, idx],
            )?
            else {
                return Err(StoreError::NotFound);
            };
            let mut consent: Map<String, Json> = serde_json::from_str(row.str(0)).unwrap_or_default();
            let before = c.query_opt(
                "SELECT reason FROM opt_outs WHERE workspace_id = ? AND channel = ? AND contact_idx = ?",
                params![workspace_id, channel.as_str(), idx],
            )?;
            if before.as_ref().is_some_and(|r| r.str(0) == "unsubscribed") {
                return Ok(false);
            }
            opt_out(c, workspace_id, idx, channel, OptOutReason::Unsubscribed, now)?;
            consent.insert(channel.as_str().into(), Json::Bool(false));
            let version = crate::contacts::bump_contacts_version(c, workspace_id)?;
            c.execute(
                "UPDATE contacts SET consent = ?, updated_at = ?, version = ? WHERE workspace_id = ? AND idx = ?",
                params![Json::Object(consent).to_string(), now, version, workspace_id, idx],
            )?;
            let details = serde_json::json!({"channel": channel.as_str()}).to_string();
            audit::append(
                c,
                workspace_id,
                "recipient",
                "contact.unsubscribed",
                &format!("contact:{idx}"),
                &details,
                now,
            )?;
            let data = serde_json::json!({
                "contact_id": crate::contact_public_id(workspace_id, idx).to_string(),
                "channel": channel.as_str(),
            });
            events::emit(c, workspace_id, "contact.unsubscribed", data, now)?;
            Ok(true)
        })
    }

    /// The contact's opt-outs: channel and reason.
    ///
    /// # Errors
    /// Database errors.
    pub fn opt_outs_of(&self, workspace_id: i64, idx: u32) -> Result<Vec<(Channel, OptOutReason)>, StoreError> {
        let rows = self.db.conn()?.query(
            "SELECT channel, reason FROM opt_outs WHERE workspace_id = ? AND contact_idx = ? ORDER BY channel",
            params![workspace_id, idx],
        )?;
        Ok(rows.iter().filter_map(|r| Some((Channel::parse(r.str(0)).ok()?, OptOutReason::parse(r.str(1))))).collect())
    }

    /// Applies a provider's receipts: a `sent` record becomes `delivered` or
    /// `failed` (once: only from `sent`), with the broadcast's counts in the
    /// same transaction; a failure emits `delivery.failed`.
    ///
    /// # Errors
    /// Database errors.
    pub fn record_receipts(
        &self,
        workspace_id: i64,
        channel: Channel,
        receipts: &[Receipt],
        now: i64,
    ) -> Result<ReceiptReport, StoreError> {
        self.db.write(|c| {
            let mut report = ReceiptReport::default();
            // (delivered, failed, of which were `sent`) per broadcast.
            let mut by_broadcast: HashMap<i64, (u64, u64, u64)> = HashMap::new();
            let mut failures: HashMap<i64, Vec<Json>> = HashMap::new();
            let mut marks = Marks::new();
            for r in receipts {
                let found = c.query_opt(
                    "SELECT broadcast_id, contact_idx FROM deliveries WHERE workspace_id = ? AND channel = ? AND provider_id = ? AND state = 'sent'",
                    params![workspace_id, channel.as_str(), r.provider_id.as_str()],
                )?;
                // A receipt can beat its own batch's record (a fast provider,
                // a long batch): the message is still `queued`, found by its key.
                let (from, found) = match found {
                    Some(row) => ("sent", Some((row.i64(0), row.i64(1)))),
                    None => ("queued", r.out_id.as_deref().and_then(|k| parse_key(k, channel))),
                };
                let Some((broadcast_id, idx)) = found else {
                    report.ignored += 1;
                    continue;
                };
                let (state, code) = if r.delivered { ("delivered", None) } else { ("failed", Some(Code::DeliveryRejected.as_str())) };
                let n = c.execute(
                    "UPDATE deliveries SET state = ?, sent_at = COALESCE(sent_at, ?), delivered_at = ?, error_code = ?, last_error = ?,
                     provider_id = ?, attempts = CASE WHEN attempts = 0 THEN 1 ELSE attempts END
                     WHERE broadcast_id = ? AND channel = ? AND contact_idx = ? AND workspace_id = ? AND state = ?",
                    params![
                        state,
                        now,
                        if r.delivered { Some(now) } else { None },
                        code,
                        r.error.as_deref().map(|e| format!("receipt: {e}")),
                        r.provider_id.as_str(),
                        broadcast_id,
                        channel.as_str(),
                        idx,
                        workspace_id,
                        from
                    ],
                )?;
                if n == 0 {
                    report.ignored += 1;
                    continue;
                }
                marks.state_change(broadcast_id, channel.as_str(), idx as u32, Some(from), state);
                let e = by_broadcast.entry(broadcast_id).or_default();
                // From `sent` the message leaves the awaiting count; from `queued` it never entered it.
                if from == "sent" {
                    e.2 += n;
                }
                if r.delivered {
                    e.0 += n;
                    report.delivered += n;
                } else {
                    e.1 += n;
                    report.failed += n;
                    failures.entry(broadcast_id).or_default().push(serde_json::json!({
                        "contact_id": crate::contact_public_id(workspace_id, idx as u32).to_string(),
                        "code": Code::DeliveryRejected.as_str(),
                        "error": r.error,
                    }));
                }
            }
            let mut ids: Vec<_> = by_broadcast.into_iter().collect();
            ids.sort_unstable_by_key(|(id, _)| *id);
            for (id, (delivered, failed, was_sent)) in ids {
                c.execute(
                    "UPDATE broadcasts SET n_sent = n_sent - ?, n_delivered = n_delivered + ?, n_failed = n_failed + ? WHERE id = ?",
                    params![was_sent, delivered, failed, id],
                )?;
                if let Some(list) = failures.remove(&id) {
                    let data = serde_json::json!({"broadcast_id": id.to_string(), "channel": channel.as_str(), "failures": list});
                    events::emit(c, workspace_id, "delivery.failed", data, now)?;
                }
            }
            marks.apply(c)?;
            Ok(report)
        })
    }

    /// Records a bounce of an email sent by qunfa, named by its Message-ID
    /// (`<qf-{broadcast}-{contact}-email@…>`) or by broadcast and address.
    /// The record becomes `failed` with `QF-EMAIL-BOUNCED` (from `delivered`
    /// or `queued`, once), the counts move, and a hard bounce opts the address
    /// out of email until it changes. Returns the broadcast and contact.
    ///
    /// # Errors
    /// `NotFound` when no such email was sent by this workspace, or database errors.
    pub fn record_bounce(
        &self,
        workspace_id: i64,
        target: BounceTarget<'_>,
        hard: bool,
        diagnostic: &str,
        now: i64,
    ) -> Result<(i64, u32), StoreError> {
        self.db.write(|c| {
            let (broadcast_id, idx) = match target {
                BounceTarget::MessageId(id) => parse_message_id(id).ok_or(StoreError::NotFound)?,
                BounceTarget::Address { broadcast_id, email } => {
                    // The contact at that address that this broadcast emailed
                    // (addresses are not unique across contacts).
                    let row = c
                        .query_opt(
                            "SELECT k.idx FROM contacts k JOIN deliveries d ON d.workspace_id = k.workspace_id AND d.contact_idx = k.idx
                             WHERE k.workspace_id = ? AND k.email = ? AND k.deleted_at IS NULL AND d.broadcast_id = ? AND d.channel = 'email'
                             ORDER BY k.idx LIMIT 1",
                            params![workspace_id, email, broadcast_id],
                        )?
                        .ok_or(StoreError::NotFound)?;
                    (broadcast_id, row.i64(0) as u32)
                }
            };
            let row = c
                .query_opt(
                    "SELECT state FROM deliveries WHERE broadcast_id = ? AND channel = 'email' AND contact_idx = ? AND workspace_id = ?",
                    params![broadcast_id, idx, workspace_id],
                )?
                .ok_or(StoreError::NotFound)?;
            let was = row.string(0);
            let diagnostic: String = diagnostic.chars().filter(|c| !c.is_control()).take(300).collect();
            // Counted only by the statement that changed the record: a repeated
            // or racing bounce (or a racing batch record) changes nothing twice.
            let changed = matches!(was.as_str(), "delivered" | "sent" | "queued")
                && c.execute(
                    "UPDATE deliveries SET state = 'failed', error_code = ?, last_error = ?
                     WHERE broadcast_id = ? AND channel = 'email' AND contact_idx = ? AND state = ?",
                    params![Code::EmailBounced.as_str(), format!("bounce: {diagnostic}"), broadcast_id, idx, was.as_str()],
                )? == 1;
            if changed {
                let column = match was.as_str() {
                    "delivered" => "n_delivered = n_delivered - 1,",
                    "sent" => "n_sent = n_sent - 1,",
                    _ => "",
                };
                c.execute(&format!("UPDATE broadcasts SET {column} n_failed = n_failed + 1 WHERE id = ?"), params![broadcast_id])?;
                // The sets after the broadcast row, like every writer.
                let mut marks = Marks::new();
                marks.state_change(broadcast_id, "email", idx, Some(was.as_str()), "failed");
                marks.apply(c)?;
                let data = serde_json::json!({
                    "broadcast_id": broadcast_id.to_string(), "channel": "email",
                    "failures": [{"contact_id": crate::contact_public_id(workspace_id, idx).to_string(), "code": Code::EmailBounced.as_str(), "error": diagnostic}],
                });
                events::emit(c, workspace_id, "delivery.failed", data, now)?;
            }
            if hard {
                opt_out(c, workspace_id, idx, Channel::Email, OptOutReason::Bounced, now)?;
            }
            let details = serde_json::json!({"hard": hard, "broadcast": broadcast_id}).to_string();
            audit::append(c, workspace_id, "provider", "email.bounced", &format!("contact:{idx}"), &details, now)?;
            Ok((broadcast_id, idx))
        })
    }
}

/// Which email a bounce is about.
#[derive(Debug, Clone, Copy)]
pub enum BounceTarget<'a> {
    /// The Message-ID qunfa gave it, with or without angle brackets.
    MessageId(&'a str),
    /// The broadcast and the recipient's address.
    Address { broadcast_id: i64, email: &'a str },
}

/// `qf-12-34-sms` → (12, 34) when the channel is `channel`.
fn parse_key(key: &str, channel: Channel) -> Option<(i64, i64)> {
    let mut parts = key.strip_prefix("qf-")?.splitn(3, '-');
    let broadcast = parts.next()?.parse().ok()?;
    let idx: u32 = parts.next()?.parse().ok()?;
    (parts.next()? == channel.as_str()).then_some((broadcast, i64::from(idx)))
}

/// `<qf-12-34-email@example.com>` → (12, 34).
pub fn parse_message_id(id: &str) -> Option<(i64, u32)> {
    let id = id.trim().trim_start_matches('<').trim_end_matches('>');
    let local = id.split('@').next()?;
    let mut parts = local.strip_prefix("qf-")?.splitn(3, '-');
    let broadcast = parts.next()?.parse().ok()?;
    let idx = parts.next()?.parse().ok()?;
    (parts.next()? == "email").then_some((broadcast, idx))
}

#[cfg(test)]
mod tests {
    use super::parse_message_id;

    #[test]
    fn message_ids() {
        assert_eq!(parse_message_id("<qf-12-34-email@shop.example>"), Some((12, 34)));
        assert_eq!(parse_message_id("qf-12-34-email@x"), Some((12, 34)));
        assert_eq!(parse_message_id("<qf-12-34-sms@x>"), None);
        assert_eq!(parse_message_id("<abc@x>"), None);
    }
}
