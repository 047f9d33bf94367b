//! Outgoing event webhooks for integrators, as a transactional outbox.
//!
//! [`emit`] runs inside the transaction that makes the change (a broadcast's
//! state, a failed delivery, a reply, a report, an unsubscribe) and writes one
//! `event_deliveries` row per subscribed endpoint: an event exists exactly
//! when its change committed. The engine's event worker leases pending rows,
//! POSTs them signed like the webhook channel, and records the outcome; a
//! failed delivery is retried with backoff and can be redelivered by hand,
//! which adds a new row, so the log keeps every attempt's story.

use qunfa_core::{policy::DeliveryPolicy, Code};
use serde_json::Value as Json;

use crate::{audit, params, Conn, Store, StoreError};

/// Every event type an endpoint can subscribe to.
pub const EVENT_TYPES: [&str; 5] =
    ["broadcast.state_changed", "delivery.failed", "reply.received", "report.received", "contact.unsubscribed"];

/// Attempts of one event delivery before it is `failed`.
pub const MAX_EVENT_ATTEMPTS: i64 = 8;

/// Queues `event_type` with `data` for every endpoint of the workspace that
/// subscribed to it, in the caller's transaction.
///
/// # Errors
/// Database errors.
pub fn emit(c: &mut Conn, workspace_id: i64, event_type: &str, data: Json, now: i64) -> Result<u64, StoreError> {
    let endpoints = c.query(
        "SELECT id, events FROM event_endpoints WHERE workspace_id = ? AND disabled_at IS NULL",
        params![workspace_id],
    )?;
    let targets: Vec<i64> = endpoints
        .iter()
        .filter(|r| r.str(1) == "*" || r.str(1).split(',').any(|e| e == event_type))
        .map(|r| r.i64(0))
        .collect();
    if targets.is_empty() {
        return Ok(0);
    }
    let payload = serde_json::json!({
        "id": crate::new_secret("evt_"),
        "type": event_type,
        "created_at": now,
        "workspace_id": workspace_id.to_string(),
        "data": data,
    })
    .to_string();
    for endpoint in &targets {
        c.execute(
            "INSERT INTO event_deliveries (endpoint_id, workspace_id, event_type, payload, state, attempts, next_at, created_at)
             VALUES (?, ?, ?, ?, 'pending', 0, ?, ?)",
            params![*endpoint, workspace_id, event_type, payload.as_str(), now, now],
        )?;
    }
    Ok(targets.len() as u64)
}

/// Queues `broadcast.state_changed` for a broadcast that moved to `state`.
///
/// # Errors
/// Database errors.
pub fn broadcast_state(
    c: &mut Conn,
    workspace_id: i64,
    broadcast_id: i64,
    state: &str,
    now: i64,
) -> Result<(), StoreError> {
    let r = c.query_opt(
        "SELECT n_recipients, n_delivered, n_failed, n_filtered, n_read FROM broadcasts WHERE id = ?",
        params![broadcast_id],
    )?;
    let counts = r.map(|r| {
        serde_json::json!({"recipients": r.i64(0), "delivered": r.i64(1), "failed": r.i64(2), "filtered": r.i64(3), "read": r.i64(4)})
    });
    let data = serde_json::json!({"broadcast_id": broadcast_id.to_string(), "state": state, "counts": counts});
    emit(c, workspace_id, "broadcast.state_changed", data, now)?;
    Ok(())
}

/// An endpoint that receives events.
#[derive(Debug, Clone)]
pub struct EventEndpoint {
    pub id: i64,
    pub url: String,
    /// Signs every request (`X-Qunfa-Signature`), like the webhook channel.
    pub secret: String,
    /// Subscribed types, or `["*"]`.
    pub events: Vec<String>,
    pub allow_private_networks: bool,
    pub disabled: bool,
    pub created_at: i64,
}

/// One delivery of one event to one endpoint.
#[derive(Debug, Clone)]
pub struct EventDelivery {
    pub id: i64,
    pub endpoint_id: i64,
    pub event_type: String,
    pub payload: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub attempts: i64,
    pub next_at: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
    pub created_at: i64,
}

/// A leased delivery for the event worker, with where it goes.
#[derive(Debug, Clone)]
pub struct EventJob {
    pub delivery: EventDelivery,
    pub url: String,
    pub secret: String,
    pub allow_private_networks: bool,
}

const ENDPOINT_COLUMNS: &str = "id, url, secret, events, allow_private_networks, disabled_at, created_at";
const DELIVERY_COLUMNS: &str =
    "id, endpoint_id, event_type, payload, state, attempts, next_at, last_status, last_error, delivered_at, created_at";

fn endpoint_from(r: &crate::Row) -> EventEndpoint {
    EventEndpoint {
        id: r.i64(0),
        url: r.string(1),
        secret: r.string(2),
        events: r.str(3).split(',').map(str::to_owned).collect(),
        allow_private_networks: r.i64(4) != 0,
        disabled: r.opt_i64(5).is_some(),
        created_at: r.i64(6),
    }
}

fn delivery_from(r: &crate::Row) -> EventDelivery {
    EventDelivery {
        id: r.i64(0),
        endpoint_id: r.i64(1),
        event_type: r.string(2),
        payload: r.string(3),
        state: r.string(4),
        attempts: r.i64(5),
        next_at: r.i64(6),
        last_status: r.opt_i64(7),
        last_error: r.opt_string(8),
        delivered_at: r.opt_i64(9),
        created_at: r.i64(10),
    }
}

/// Checks a list of event types: each known, or `*` alone.
///
/// # Errors
/// `QF-BAD-REQUEST` naming the unknown type.
pub fn parse_event_types(types: &[String]) -> Result<Vec<String>, StoreError> {
    if types.is_empty() || types == ["*"] {
        return Ok(vec!["*".into()]);
    }
    let mut out = Vec::new();
    for t in types {
        if !EVENT_TYPES.contains(&t.as_str()) {
            return Err(StoreError::rejected(
                Code::BadRequest,
                format!("unknown event type {t:?}; known: {} (or \"*\")", EVENT_TYPES.join(", ")),
            ));
        }
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    Ok(out)
}

impl Store {
    /// Adds an event endpoint.
    ///
    /// # Errors
    /// Database errors.
    #[allow(clippy::too_many_arguments)]
    pub fn create_event_endpoint(
        &self,
        workspace_id: i64,
        url: &str,
        secret: &str,
        events: &[String],
        allow_private_networks: bool,
        actor: &str,
        now: i64,
    ) -> Result<EventEndpoint, StoreError> {
        self.db.write(|c| {
            let row = c.query_one(
                &format!(
                    "INSERT INTO event_endpoints (workspace_id, url, secret, events, allow_private_networks, created_at)
                     VALUES (?, ?, ?, ?, ?, ?) RETURNING {ENDPOINT_COLUMNS}"
                ),
                params![workspace_id, url, secret, events.join(","), i64::from(allow_private_networks), now],
            )?;
            let e = endpoint_from(&row);
            let details = serde_json::json!({"url": url, "events": events}).to_string();
            audit::append(
                c,
                workspace_id,
                actor,
                "event_endpoint.created",
                &format!("event_endpoint:{}", e.id),
                &details,
                now,
            )?;
            Ok(e)
        })
    }

    /// The workspace's event endpoints.
    ///
    /// # Errors
    /// Database errors.
    pub fn event_endpoints(&self, workspace_id: i64) -> Result<Vec<EventEndpoint>, StoreError> {
        let rows = self.db.conn()?.query(
            &format!("SELECT {ENDPOINT_COLUMNS} FROM event_endpoints WHERE workspace_id = ? AND disabled_at IS NULL ORDER BY id"),
            params![workspace_id],
        )?;
        Ok(rows.iter().map(endpoint_from).collect())
    }

    /// Removes an endpoint: it gets nothing more; its log stays readable.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn delete_event_endpoint(&self, workspace_id: i64, id: i64, actor: &str, now: i64) -> Result<(), StoreError> {
        self.db.write(|c| {
            let n = c.execute(
                "UPDATE event_endpoints SET disabled_at = ? WHERE id = ? AND workspace_id = ? AND disabled_at IS NULL",
                params![now, id, workspace_id],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            c.execute(
                "UPDATE event_deliveries SET state = 'failed', last_error = 'endpoint removed' WHERE endpoint_id = ? AND state = 'pending'",
                params![id],
            )?;
            audit::append(c, workspace_id, actor, "event_endpoint.removed", &format!("event_endpoint:{id}"), "{}", now)?;
            Ok(())
        })
    }

    /// An endpoint's delivery log, newest first, `limit` after `before` (an id).
    ///
    /// # Errors
    /// `NotFound` for another workspace's endpoint, or database errors.
    pub fn event_deliveries(
        &self,
        workspace_id: i64,
        endpoint_id: i64,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<EventDelivery>, StoreError> {
        let mut c = self.db.conn()?;
        c.query_opt(
            "SELECT id FROM event_endpoints WHERE id = ? AND workspace_id = ?",
            params![endpoint_id, workspace_id],
        )?
        .ok_or(StoreError::NotFound)?;
        let rows = c.query(
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM event_deliveries WHERE endpoint_id = ? AND id < ? ORDER BY id DESC LIMIT ?"
            ),
            params![endpoint_id, before.unwrap_or(i64::MAX), limit as i64],
        )?;
        Ok(rows.iter().map(delivery_from).collect())
    }

    /// Sends one logged event again, as a new delivery (the old one stays in
    /// the log as it was). Returns the new delivery.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn redeliver_event(
        &self,
        workspace_id: i64,
        delivery_id: i64,
        actor: &str,
        now: i64,
    ) -> Result<EventDelivery, StoreError> {
        self.db.write(|c| {
            let old = c
                .query_opt(
                    "SELECT d.endpoint_id, d.event_type, d.payload FROM event_deliveries d JOIN event_endpoints e ON e.id = d.endpoint_id
                     WHERE d.id = ? AND d.workspace_id = ? AND e.disabled_at IS NULL",
                    params![delivery_id, workspace_id],
                )?
                .ok_or(StoreError::NotFound)?;
            let row = c.query_one(
                &format!(
                    "INSERT INTO event_deliveries (endpoint_id, workspace_id, event_type, payload, state, attempts, next_at, created_at)
                     VALUES (?, ?, ?, ?, 'pending', 0, ?, ?) RETURNING {DELIVERY_COLUMNS}"
                ),
                params![old.i64(0), workspace_id, old.str(1), old.str(2), now, now],
            )?;
            let details = serde_json::json!({"redelivery_of": delivery_id}).to_string();
            audit::append(c, workspace_id, actor, "event.redelivered", &format!("event_endpoint:{}", old.i64(0)), &details, now)?;
            Ok(delivery_from(&row))
        })
    }

    /// Leases up to `max` due event deliveries for `lease_ms`.
    ///
    /// # Errors
    /// Database errors.
    pub fn claim_events(&self, max: usize, lease_ms: i64, now: i64) -> Result<Vec<EventJob>, StoreError> {
        let skip_locked = match self.backend() {
            crate::Backend::Postgres => " FOR UPDATE OF d SKIP LOCKED",
            crate::Backend::Sqlite => "",
        };
        self.db.write(|c| {
            let rows = c.query(
                &format!(
                    "SELECT d.id, e.url, e.secret, e.allow_private_networks FROM event_deliveries d JOIN event_endpoints e ON e.id = d.endpoint_id
                     WHERE d.state = 'pending' AND d.next_at <= ? AND (d.lease_until IS NULL OR d.lease_until < ?)
                     ORDER BY d.next_at, d.id LIMIT ?{skip_locked}"
                ),
                params![now, now, max as i64],
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let d = c.query_one(
                    &format!("UPDATE event_deliveries SET lease_until = ? WHERE id = ? RETURNING {DELIVERY_COLUMNS}"),
                    params![now + lease_ms, r.i64(0)],
                )?;
                out.push(EventJob {
                    delivery: delivery_from(&d),
                    url: r.string(1),
                    secret: r.string(2),
                    allow_private_networks: r.i64(3) != 0,
                });
            }
            Ok(out)
        })
    }

    /// Records one attempt of an event delivery: delivered, or retried after
    /// the policy's backoff until [`MAX_EVENT_ATTEMPTS`], then `failed`.
    /// `permanent` failures (SSRF refusal, a 4xx other than 408/429) fail at once.
    ///
    /// # Errors
    /// Database errors.
    pub fn finish_event(
        &self,
        delivery_id: i64,
        outcome: Result<u16, (Option<u16>, String, bool)>,
        policy: &DeliveryPolicy,
        jitter: f64,
        now: i64,
    ) -> Result<(), StoreError> {
        self.db.write(|c| {
            match &outcome {
                Ok(status) => {
                    c.execute(
                        "UPDATE event_deliveries SET state = 'delivered', attempts = attempts + 1, last_status = ?, last_error = NULL,
                         delivered_at = ?, lease_until = NULL WHERE id = ? AND state = 'pending'",
                        params![i64::from(*status), now, delivery_id],
                    )?;
                }
                Err((status, error, permanent)) => {
                    let attempts = c
                        .query_opt("SELECT attempts FROM event_deliveries WHERE id = ?", params![delivery_id])?
                        .map_or(0, |r| r.i64(0))
                        + 1;
                    let give_up = *permanent || attempts >= MAX_EVENT_ATTEMPTS;
                    let delay = policy.retry_delay_ms(attempts as u32, jitter) as i64;
                    c.execute(
                        "UPDATE event_deliveries SET state = ?, attempts = ?, last_status = ?, last_error = ?, next_at = ?, lease_until = NULL
                         WHERE id = ? AND state = 'pending'",
                        params![
                            if give_up { "failed" } else { "pending" },
                            attempts,
                            status.map(i64::from),
                            error.chars().take(300).collect::<String>(),
                            now + delay,
                            delivery_id
                        ],
                    )?;
                }
            }
            Ok(())
        })
    }

    /// Event deliveries not yet final (for tests and metrics).
    ///
    /// # Errors
    /// Database errors.
    pub fn events_pending(&self) -> Result<u64, StoreError> {
        Ok(
            self.db
                .conn()?
                .query_one("SELECT COUNT(*) FROM event_deliveries WHERE state = 'pending'", params![])?
                .i64(0) as u64,
        )
    }
}
