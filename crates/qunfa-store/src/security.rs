//! Sender security: logins by device and network (abnormal until verified),
//! one-time login codes, send attempts and cooldowns, and the account-health
//! record (state, score, reasons, history, external signals, overrides).

use qunfa_core::health::{HealthInputs, HealthScore, HealthState};

use crate::{audit, params, Store, StoreError};

/// What a request's device and network are to the member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginState {
    /// The member's first device and network, or one verified since.
    Trusted,
    /// New since the member's first login, not verified yet.
    Abnormal,
    Verified,
}

impl LoginState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trusted => "trusted",
            Self::Abnormal => "abnormal",
            Self::Verified => "verified",
        }
    }
    fn parse(s: &str) -> Self {
        match s {
            "trusted" => Self::Trusted,
            "verified" => Self::Verified,
            _ => Self::Abnormal,
        }
    }
}

/// Where a request came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginSource {
    /// The device fingerprint (a header, or a hash of the User-Agent).
    pub device: String,
    /// The network: the address cut to the policy's prefix ("10.1.2.0/24").
    pub network: String,
    pub ip: String,
}

/// One (device, network) of a member.
#[derive(Debug, Clone)]
pub struct Login {
    pub device: String,
    pub network: String,
    pub ip: String,
    pub state: LoginState,
    pub first_seen: i64,
    pub last_seen: i64,
    pub verified_by: Option<String>,
}

/// The security record of a member.
#[derive(Debug, Clone)]
pub struct MemberSecurity {
    pub member_id: i64,
    pub workspace_id: i64,
    pub created_at: i64,
    pub cooldown_until: Option<i64>,
    pub health_state: HealthState,
    pub health_score: f64,
    /// JSON list of reasons.
    pub health_reasons: String,
    /// A state set by a platform admin, with its reason.
    pub health_override: Option<(HealthState, String)>,
}

impl MemberSecurity {
    /// The state in force: the override when there is one.
    pub fn effective_state(&self) -> HealthState {
        self.health_override.as_ref().map_or(self.health_state, |(s, _)| *s)
    }
}

/// One change of a member's health state.
#[derive(Debug, Clone)]
pub struct HealthChange {
    pub state: String,
    pub score: f64,
    pub reasons: String,
    pub actor: String,
    pub at: i64,
}

impl Store {
    /// Records a request's device and network for a member and says what it
    /// is: the member's first pair is trusted; a pair never seen before is
    /// abnormal until verified.
    ///
    /// # Errors
    /// Database errors.
    pub fn observe_login(
        &self,
        workspace_id: i64,
        member_id: i64,
        source: &LoginSource,
        now: i64,
    ) -> Result<LoginState, StoreError> {
        // The common case (a known pair) is a read and a cheap update.
        let known = self.db.conn()?.query_opt(
            "SELECT state, last_seen FROM member_logins WHERE member_id = ? AND device = ? AND network = ?",
            params![member_id, source.device.as_str(), source.network.as_str()],
        )?;
        if let Some(r) = known {
            let state = LoginState::parse(r.str(0));
            // Last-seen is kept to the minute: no write per request.
            if now - r.i64(1) > 60_000 {
                self.db.write(|c| {
                    c.execute(
                        "UPDATE member_logins SET last_seen = ?, ip = ? WHERE member_id = ? AND device = ? AND network = ?",
                        params![now, source.ip.as_str(), member_id, source.device.as_str(), source.network.as_str()],
                    )?;
                    Ok(())
                })?;
            }
            return Ok(state);
        }
        self.db.write(|c| {
            // Locks the member row, so two first requests do not both become "first".
            c.execute("UPDATE members SET cooldown_until = cooldown_until WHERE id = ?", params![member_id])?;
            let seen = c.query_opt(
                "SELECT state FROM member_logins WHERE member_id = ? AND device = ? AND network = ?",
                params![member_id, source.device.as_str(), source.network.as_str()],
            )?;
            if let Some(r) = seen {
                return Ok(LoginState::parse(r.str(0)));
            }
            let any = c.query_one("SELECT COUNT(*) FROM member_logins WHERE member_id = ?", params![member_id])?.i64(0);
            let state = if any == 0 { LoginState::Trusted } else { LoginState::Abnormal };
            c.execute(
                "INSERT INTO member_logins (member_id, device, network, ip, state, first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?)",
                params![member_id, source.device.as_str(), source.network.as_str(), source.ip.as_str(), state.as_str(), now, now],
            )?;
            let details = serde_json::json!({"device": source.device, "network": source.network, "state": state.as_str()});
            audit::append(c, workspace_id, &format!("member:{member_id}"), "member.login", &format!("member:{member_id}"), &details.to_string(), now)?;
            Ok(state)
        })
    }

    /// Every device and network of a member, newest first.
    ///
    /// # Errors
    /// Database errors.
    pub fn logins(&self, member_id: i64) -> Result<Vec<Login>, StoreError> {
        let rows = self.db.conn()?.query(
            "SELECT device, network, ip, state, first_seen, last_seen, verified_by FROM member_logins WHERE member_id = ? ORDER BY first_seen DESC",
            params![member_id],
        )?;
        Ok(rows
            .iter()
            .map(|r| Login {
                device: r.string(0),
                network: r.string(1),
                ip: r.string(2),
                state: LoginState::parse(r.str(3)),
                first_seen: r.i64(4),
                last_seen: r.i64(5),
                verified_by: r.opt_string(6),
            })
            .collect())
    }

    /// Stores a one-time login code (its hash) for a member.
    ///
    /// # Errors
    /// Database errors.
    pub fn issue_login_code(
        &self,
        workspace_id: i64,
        member_id: i64,
        code_hash: &str,
        actor: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        self.db.write(|c| {
            c.execute(
                "INSERT INTO login_codes (member_id, code_hash, issued_by, expires_at, created_at) VALUES (?, ?, ?, ?, ?)",
                params![member_id, code_hash, actor, expires_at, now],
            )?;
            let details = serde_json::json!({"expires_at": expires_at}).to_string();
            audit::append(c, workspace_id, actor, "member.login_code_issued", &format!("member:{member_id}"), &details, now)?;
            Ok(())
        })
    }

    /// Uses a login code: when it is the member's, unused, unexpired and not
    /// void, the login presenting it (`source`) becomes verified; other
    /// abnormal logins stay abnormal. A wrong code counts against every open
    /// code of the member; after `max_failures` they are void.
    ///
    /// # Errors
    /// Database errors. `Ok(false)`: the code is wrong, used, expired or void.
    #[allow(clippy::too_many_arguments)]
    pub fn use_login_code(
        &self,
        workspace_id: i64,
        member_id: i64,
        code_hash: &str,
        source: &LoginSource,
        max_failures: u32,
        actor: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.db.write(|c| {
            let n = c.execute(
                "UPDATE login_codes SET used_at = ? WHERE member_id = ? AND code_hash = ? AND used_at IS NULL AND expires_at > ? AND failures < ?",
                params![now, member_id, code_hash, now, i64::from(max_failures)],
            )?;
            if n == 0 {
                c.execute(
                    "UPDATE login_codes SET failures = failures + 1 WHERE member_id = ? AND used_at IS NULL AND expires_at > ?",
                    params![member_id, now],
                )?;
                return Ok(false);
            }
            // The presenting login is recorded first if this is its first request.
            c.execute(
                "INSERT INTO member_logins (member_id, device, network, ip, state, first_seen, last_seen) VALUES (?, ?, ?, ?, 'abnormal', ?, ?)
                 ON CONFLICT (member_id, device, network) DO NOTHING",
                params![member_id, source.device.as_str(), source.network.as_str(), source.ip.as_str(), now, now],
            )?;
            let verified = c.execute(
                "UPDATE member_logins SET state = 'verified', verified_by = ?, verified_at = ?
                 WHERE member_id = ? AND device = ? AND network = ? AND state = 'abnormal'",
                params![actor, now, member_id, source.device.as_str(), source.network.as_str()],
            )?;
            let details = serde_json::json!({"verified": verified, "by": "code", "device": source.device, "network": source.network}).to_string();
            audit::append(c, workspace_id, actor, "member.login_verified", &format!("member:{member_id}"), &details, now)?;
            Ok(true)
        })
    }

    /// An admin vouches for every abnormal login of a member.
    ///
    /// # Errors
    /// Database errors.
    pub fn unlock_logins(&self, workspace_id: i64, member_id: i64, actor: &str, now: i64) -> Result<u64, StoreError> {
        self.db.write(|c| verify_logins(c, workspace_id, member_id, actor, "admin", now))
    }

    /// Records a send attempt (refused ones too) and returns how many the
    /// member made since `since`, this one included.
    ///
    /// # Errors
    /// Database errors.
    pub fn record_send_attempt(
        &self,
        member_id: i64,
        broadcast_id: i64,
        since: i64,
        now: i64,
    ) -> Result<u32, StoreError> {
        self.db.write(|c| {
            c.execute(
                "INSERT INTO send_attempts (member_id, broadcast_id, outcome, at) VALUES (?, ?, 'attempt', ?)",
                params![member_id, broadcast_id, now],
            )?;
            let n = c
                .query_one(
                    "SELECT COUNT(*) FROM send_attempts WHERE member_id = ? AND at > ?",
                    params![member_id, since],
                )?
                .i64(0);
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
    }

    /// Starts a cooldown ("operation too frequent") until `until`.
    ///
    /// # Errors
    /// Database errors.
    pub fn start_cooldown(
        &self,
        workspace_id: i64,
        member_id: i64,
        until: i64,
        attempts: u32,
        now: i64,
    ) -> Result<(), StoreError> {
        self.db.write(|c| {
            // A cooldown in force is not extended by the attempts it refuses.
            let started = c.execute(
                "UPDATE members SET cooldown_until = ? WHERE id = ? AND (cooldown_until IS NULL OR cooldown_until <= ?)",
                params![until, member_id, now],
            )?;
            if started == 0 {
                return Ok(());
            }
            let details = serde_json::json!({"until": until, "attempts": attempts}).to_string();
            audit::append(c, workspace_id, "system", "member.cooldown", &format!("member:{member_id}"), &details, now)?;
            Ok(())
        })
    }

    /// A member's security record.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn member_security(&self, member_id: i64) -> Result<MemberSecurity, StoreError> {
        let r = self.db.conn()?.query_one(
            "SELECT id, workspace_id, created_at, cooldown_until, health_state, health_score, health_reasons, health_override FROM members WHERE id = ?",
            params![member_id],
        )?;
        let health_override = r.opt_string(7).and_then(|s| {
            let v: serde_json::Value = serde_json::from_str(&s).ok()?;
            let state = HealthState::parse(v["state"].as_str()?)?;
            Some((state, v["reason"].as_str().unwrap_or_default().to_owned()))
        });
        Ok(MemberSecurity {
            member_id: r.i64(0),
            workspace_id: r.i64(1),
            created_at: r.i64(2),
            cooldown_until: r.opt_i64(3),
            health_state: HealthState::parse(r.str(4)).unwrap_or(HealthState::Healthy),
            health_score: r.f64(5),
            health_reasons: r.string(6),
            health_override,
        })
    }

    /// The numbers of a member's health since `since`.
    ///
    /// # Errors
    /// Database errors.
    pub fn health_inputs(&self, member_id: i64, since: i64) -> Result<HealthInputs, StoreError> {
        self.db.read(|c| {
            let one = |c: &mut crate::Conn, sql: &str| -> Result<i64, StoreError> {
                Ok(c.query_one(sql, params![member_id, since])?.opt_i64(0).unwrap_or(0))
            };
            let devices = one(c, "SELECT COUNT(DISTINCT device) FROM member_logins WHERE member_id = ? AND last_seen >= ?")?;
            let network_changes = one(
                c,
                "SELECT COUNT(DISTINCT network) FROM member_logins WHERE member_id = ? AND first_seen >= ? AND state <> 'trusted'",
            )?;
            let sums = c.query_one(
                "SELECT CAST(SUM(n_recipients) AS BIGINT), CAST(SUM(n_forwarded) AS BIGINT) FROM broadcasts WHERE member_id = ? AND dispatched_at >= ?",
                params![member_id, since],
            )?;
            let deletions = one(c, "SELECT COUNT(*) FROM blocks WHERE member_id = ? AND created_at >= ?")?;
            let reports = one(
                c,
                "SELECT COUNT(*) FROM reports r JOIN broadcasts b ON b.id = r.broadcast_id WHERE b.member_id = ? AND r.created_at >= ?",
            )?;
            let violations = one(
                c,
                "SELECT COUNT(*) FROM health_signals WHERE member_id = ? AND at >= ? AND dimension = 'violation'",
            )?;
            let payment = c.query_opt(
                "SELECT value FROM health_signals WHERE member_id = ? AND dimension = 'payment' ORDER BY id DESC LIMIT 1",
                params![member_id],
            )?;
            let n = |v: i64| u64::try_from(v).unwrap_or(0);
            Ok(HealthInputs {
                devices: u32::try_from(devices).unwrap_or(u32::MAX),
                network_changes: u32::try_from(network_changes).unwrap_or(u32::MAX),
                recipients: n(sums.opt_i64(0).unwrap_or(0)),
                forwards: n(sums.opt_i64(1).unwrap_or(0)),
                deletions: n(deletions),
                reports: n(reports),
                payment_risk: payment.map(|r| r.f64(0)),
                violations: u32::try_from(violations).unwrap_or(u32::MAX),
            })
        })
    }

    /// Stores a freshly computed score; a change of state is kept in the
    /// history and audited.
    ///
    /// # Errors
    /// Database errors.
    pub fn record_health(
        &self,
        workspace_id: i64,
        member_id: i64,
        score: &HealthScore,
        reasons_json: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let current = self.member_security(member_id)?;
        if current.health_state == score.state
            && (current.health_score - score.score).abs() < 1e-9
            && current.health_reasons == reasons_json
        {
            return Ok(());
        }
        self.db.write(|c| {
            // The row lock first: two requests that see one change record it once.
            c.execute("UPDATE members SET health_state = health_state WHERE id = ?", params![member_id])?;
            let old = c.query_one("SELECT health_state FROM members WHERE id = ?", params![member_id])?.string(0);
            c.execute(
                "UPDATE members SET health_state = ?, health_score = ?, health_reasons = ? WHERE id = ?",
                params![score.state.as_str(), score.score, reasons_json, member_id],
            )?;
            if old != score.state.as_str() {
                c.execute(
                    "INSERT INTO health_history (member_id, state, score, reasons, actor, at) VALUES (?, ?, ?, ?, 'system', ?)",
                    params![member_id, score.state.as_str(), score.score, reasons_json, now],
                )?;
                let details = serde_json::json!({"from": old, "to": score.state.as_str(), "score": score.score}).to_string();
                audit::append(c, workspace_id, "system", "member.health", &format!("member:{member_id}"), &details, now)?;
            }
            Ok(())
        })
    }

    /// Sets (or, with `None`, lifts) a platform admin's override of a member's state.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn set_health_override(
        &self,
        member_id: i64,
        state: Option<HealthState>,
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.db.write(|c| {
            let r = c.query_one("SELECT workspace_id, health_score FROM members WHERE id = ?", params![member_id])?;
            let (ws, score) = (r.i64(0), r.f64(1));
            let value = state.map(|s| serde_json::json!({"state": s.as_str(), "reason": reason}).to_string());
            c.execute("UPDATE members SET health_override = ? WHERE id = ?", params![value, member_id])?;
            let label = state.map_or("lifted", HealthState::as_str);
            let reasons = serde_json::json!([{"dimension": "override", "message": reason}]).to_string();
            c.execute(
                "INSERT INTO health_history (member_id, state, score, reasons, actor, at) VALUES (?, ?, ?, ?, ?, ?)",
                params![member_id, label, score, reasons, actor, now],
            )?;
            let details = serde_json::json!({"override": label, "reason": reason}).to_string();
            audit::append(c, ws, actor, "member.health_override", &format!("member:{member_id}"), &details, now)?;
            Ok(())
        })
    }

    /// Records an external signal (`payment`, risk 0–1) or a violation.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn add_health_signal(
        &self,
        member_id: i64,
        dimension: &str,
        value: f64,
        note: &str,
        actor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.db.write(|c| {
            let ws = c.query_one("SELECT workspace_id FROM members WHERE id = ?", params![member_id])?.i64(0);
            c.execute(
                "INSERT INTO health_signals (member_id, dimension, value, note, actor, at) VALUES (?, ?, ?, ?, ?, ?)",
                params![member_id, dimension, value, note, actor, now],
            )?;
            let details = serde_json::json!({"dimension": dimension, "value": value, "note": note}).to_string();
            audit::append(c, ws, actor, "member.health_signal", &format!("member:{member_id}"), &details, now)?;
            Ok(())
        })
    }

    /// Records a violation of the sender's account for a broadcast, once per
    /// broadcast (retrying a refused send is not another violation).
    ///
    /// # Errors
    /// Database errors.
    pub fn add_violation(
        &self,
        member_id: i64,
        broadcast_id: i64,
        what: &str,
        actor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.db.write(|c| violation_once(c, member_id, broadcast_id, what, actor, now))
    }

    /// A member's state changes, newest first.
    ///
    /// # Errors
    /// Database errors.
    pub fn health_history(&self, member_id: i64, limit: usize) -> Result<Vec<HealthChange>, StoreError> {
        let rows = self.db.conn()?.query(
            "SELECT state, score, reasons, actor, at FROM health_history WHERE member_id = ? ORDER BY id DESC LIMIT ?",
            params![member_id, limit as i64],
        )?;
        Ok(rows
            .iter()
            .map(|r| HealthChange {
                state: r.string(0),
                score: r.f64(1),
                reasons: r.string(2),
                actor: r.string(3),
                at: r.i64(4),
            })
            .collect())
    }
}

/// Contacts of an audience who reached a frequency cap.
#[derive(Debug)]
pub struct CapReach {
    /// `day`, `week` or `month`.
    pub window: &'static str,
    pub cap: u32,
    pub contacts: qunfa_audience::Bitmap,
}

impl Store {
    /// For each cap `(cap, since, window)`: the contacts of `audience` (of
    /// broadcast `broadcast_id`, which itself does not count) who
    /// already received `cap` mass messages (broadcast priority) of the
    /// workspace dispatched since `since` — one more would exceed it. A
    /// broadcast counts for the contacts it did not filter for a cap.
    ///
    /// # Errors
    /// Database errors, a corrupt stored audience.
    pub fn contacts_at_cap(
        &self,
        workspace_id: i64,
        broadcast_id: i64,
        audience: &qunfa_audience::Bitmap,
        caps: &[(u32, i64, &'static str)],
    ) -> Result<Vec<CapReach>, StoreError> {
        contacts_at_cap_in(&mut *self.db.conn()?, workspace_id, broadcast_id, audience, caps)
    }

    /// The contacts of `audience` created since `since` (new contacts).
    ///
    /// # Errors
    /// Database errors.
    pub fn new_contacts_in(
        &self,
        workspace_id: i64,
        audience: &qunfa_audience::Bitmap,
        since: i64,
    ) -> Result<u64, StoreError> {
        // Contact ids are handed out in creation order: binary-search the
        // first id created since `since` (a few point reads, no index needed),
        // then count the audience from there.
        let mut c = self.db.conn()?;
        let (mut lo, mut hi) = (0i64, i64::from(u32::MAX) + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let r = c.query_opt(
                "SELECT idx, created_at FROM contacts WHERE workspace_id = ? AND idx >= ? ORDER BY idx LIMIT 1",
                params![workspace_id, mid],
            )?;
            match r {
                Some(r) if r.i64(1) < since => lo = r.i64(0) + 1,
                _ => hi = mid,
            }
        }
        let first = u32::try_from(lo).unwrap_or(u32::MAX);
        Ok(audience.range_cardinality(first..))
    }
}

fn verify_logins(
    c: &mut crate::Conn,
    workspace_id: i64,
    member_id: i64,
    actor: &str,
    how: &str,
    now: i64,
) -> Result<u64, StoreError> {
    let n = c.execute(
        "UPDATE member_logins SET state = 'verified', verified_by = ?, verified_at = ? WHERE member_id = ? AND state = 'abnormal'",
        params![actor, now, member_id],
    )?;
    let details = serde_json::json!({"verified": n, "by": how}).to_string();
    audit::append(c, workspace_id, actor, "member.login_verified", &format!("member:{member_id}"), &details, now)?;
    Ok(n)
}

/// A violation for `broadcast_id`, unless one was recorded for it already (in the caller's transaction).
pub(crate) fn violation_once(
    c: &mut crate::Conn,
    member_id: i64,
    broadcast_id: i64,
    what: &str,
    actor: &str,
    now: i64,
) -> Result<(), StoreError> {
    let prefix = format!("broadcast {broadcast_id}:");
    let seen = c.query_opt(
        "SELECT 1 FROM health_signals WHERE member_id = ? AND dimension = 'violation' AND substr(note, 1, ?) = ?",
        params![member_id, prefix.len() as i64, prefix.as_str()],
    )?;
    if seen.is_some() {
        return Ok(());
    }
    let ws = c.query_one("SELECT workspace_id FROM members WHERE id = ?", params![member_id])?.i64(0);
    let note = format!("{prefix} {what}");
    c.execute(
        "INSERT INTO health_signals (member_id, dimension, value, note, actor, at) VALUES (?, 'violation', 1, ?, ?, ?)",
        params![member_id, note.as_str(), actor, now],
    )?;
    let details = serde_json::json!({"dimension": "violation", "broadcast_id": broadcast_id, "note": note}).to_string();
    audit::append(c, ws, actor, "member.health_signal", &format!("member:{member_id}"), &details, now)?;
    Ok(())
}

/// [`Store::contacts_at_cap`] on a given connection (the dispatch transaction
/// counts again under its lock).
pub(crate) fn contacts_at_cap_in(
    c: &mut crate::Conn,
    workspace_id: i64,
    broadcast_id: i64,
    audience: &qunfa_audience::Bitmap,
    caps: &[(u32, i64, &'static str)],
) -> Result<Vec<CapReach>, StoreError> {
    use qunfa_audience::{decode, Bitmap};
    let Some(earliest) = caps.iter().map(|c| c.1).min() else { return Ok(Vec::new()) };
    let rows = c.query(
        "SELECT dispatched_at, frozen_audience, capped FROM broadcasts
         WHERE workspace_id = ? AND id <> ? AND priority = 2 AND dispatched_at >= ? AND frozen_audience IS NOT NULL ORDER BY id",
        params![workspace_id, broadcast_id, earliest],
    )?;
    let mut sent: Vec<(i64, Bitmap)> = Vec::with_capacity(rows.len());
    for r in &rows {
        let mut b = decode(r.blob(1)).ok_or_else(|| StoreError::Corrupt("frozen audience".into()))?;
        b.and_inplace(audience);
        if let Some(capped) = r.opt_blob(2).and_then(decode) {
            b.andnot_inplace(&capped);
        }
        sent.push((r.i64(0), b));
    }
    let mut out = Vec::new();
    for &(cap, since, window) in caps {
        if cap == 0 {
            out.push(CapReach { window, cap, contacts: audience.clone() });
            continue;
        }
        // levels[k]: contacts who received at least k + 1 in the window.
        let mut levels: Vec<Bitmap> = vec![Bitmap::new(); cap as usize];
        for (_, b) in sent.iter().filter(|(at, _)| *at >= since) {
            for k in (1..levels.len()).rev() {
                let up = levels[k - 1].and(b);
                levels[k].or_inplace(&up);
            }
            levels[0].or_inplace(b);
        }
        let contacts = levels.pop().unwrap_or_default();
        if !contacts.is_empty() {
            out.push(CapReach { window, cap, contacts });
        }
    }
    Ok(out)
}
