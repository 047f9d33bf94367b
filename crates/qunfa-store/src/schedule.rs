//! Schedules: a draft set to run once at a time or on a cron expression
//! (`state = 'scheduled'`, `next_run_at`), the runs that come due, cancelling
//! one before it starts, and the workspace's quiet hours and time zone.
//!
//! A due run is claimed by one `UPDATE … WHERE state = 'scheduled' AND
//! next_run_at = ?` (and no live claim): on PostgreSQL the row lock makes a
//! second node re-read the row and find nothing, so each run is taken by one
//! node. A one-off schedule is claimed with a lease (`schedule_claimed_until`)
//! and then submitted by the caller; if the node dies first, another takes it
//! when the lease ends. A recurring schedule's claim moves its `next_run_at`
//! to the following run and, in the same transaction, creates the run's
//! broadcast: a copy (`parent_id`) scheduled once, due now and already
//! claimed by the same node. Every change is audited in its transaction.

use qunfa_core::broadcast::BroadcastState;

use crate::{audit, params, Code, Conn, Row, Store, StoreError};

/// A broadcast's schedule as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRecord {
    pub broadcast_id: i64,
    pub workspace_id: i64,
    /// The broadcast's sender.
    pub member_id: i64,
    pub state: BroadcastState,
    /// A one-off run's time as asked (UTC ms); for a recurring schedule's
    /// run, the time it was due.
    pub at: Option<i64>,
    pub time_zone: Option<String>,
    pub cron: Option<String>,
    /// When it runs next (after quiet hours); `None` once it started or ended.
    pub next_run_at: Option<i64>,
    /// The admin or owner who scheduled it: the scheduler submits as them.
    pub scheduled_by: Option<i64>,
    /// The recurring schedule this broadcast is a run of.
    pub parent_id: Option<i64>,
    /// A node holds the run until then.
    pub claimed_until: Option<i64>,
}

const SCHEDULE_COLUMNS: &str = "id, workspace_id, member_id, state, schedule_at, schedule_tz, schedule_cron, next_run_at, scheduled_by, parent_id, schedule_claimed_until";

fn schedule_from(r: &Row) -> Result<ScheduleRecord, StoreError> {
    Ok(ScheduleRecord {
        broadcast_id: r.i64(0),
        workspace_id: r.i64(1),
        member_id: r.i64(2),
        state: BroadcastState::parse(r.str(3)).map_err(|_| StoreError::Corrupt(format!("state {}", r.str(3))))?,
        at: r.opt_i64(4),
        time_zone: r.opt_string(5),
        cron: r.opt_string(6),
        next_run_at: r.opt_i64(7),
        scheduled_by: r.opt_i64(8),
        parent_id: r.opt_i64(9),
        claimed_until: r.opt_i64(10),
    })
}

/// A schedule to set on a draft.
#[derive(Debug, Clone, Copy)]
pub struct NewSchedule<'a> {
    /// A one-off run's time as asked (UTC ms).
    pub at: Option<i64>,
    pub time_zone: &'a str,
    pub cron: Option<&'a str>,
    /// The first run (after quiet hours).
    pub next_run_at: i64,
    /// The verdicts of the check at scheduling (JSON), recorded with the broadcast.
    pub verdicts_json: &'a str,
}

/// What to do with a due run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// A one-off run: hold it until `lease_until` and submit it.
    Once { lease_until: i64 },
    /// A recurring schedule's run: create its broadcast (held until
    /// `lease_until`) and move the schedule to `next_run_at`; `None` ends the
    /// schedule (back to a draft).
    Recurring { next_run_at: Option<i64>, lease_until: i64 },
    /// The run fell into quiet hours since it was planned: move it to `until`.
    Defer { until: i64 },
}

/// One run of a recurring schedule: the broadcast it made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRun {
    pub broadcast_id: i64,
    pub state: BroadcastState,
    /// When the run was due.
    pub due_at: Option<i64>,
    pub submitted_at: Option<i64>,
    pub n_recipients: u64,
}

/// A broadcast with its schedule and runs, as of one snapshot.
#[derive(Debug, Clone)]
pub struct ScheduleView {
    pub broadcast: crate::broadcasts::BroadcastRecord,
    pub schedule: ScheduleRecord,
    /// The newest runs of a recurring schedule, when asked for.
    pub runs: Option<Vec<ScheduleRun>>,
}

fn runs_of(c: &mut Conn, workspace_id: i64, parent_id: i64, limit: usize) -> Result<Vec<ScheduleRun>, StoreError> {
    let rows = c.query(
        "SELECT id, state, schedule_at, submitted_at, n_recipients FROM broadcasts
         WHERE parent_id = ? AND workspace_id = ? ORDER BY id DESC LIMIT ?",
        params![parent_id, workspace_id, limit],
    )?;
    rows.iter()
        .map(|r| {
            Ok(ScheduleRun {
                broadcast_id: r.i64(0),
                state: BroadcastState::parse(r.str(1))
                    .map_err(|_| StoreError::Corrupt(format!("state {}", r.str(1))))?,
                due_at: r.opt_i64(2),
                submitted_at: r.opt_i64(3),
                n_recipients: r.i64(4) as u64,
            })
        })
        .collect()
}

/// A workspace's scheduling settings as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleSettingsRecord {
    /// `HH:MM-HH:MM`.
    pub quiet_hours: Option<String>,
    /// An IANA name.
    pub time_zone: Option<String>,
}

/// Why a schedule change found nothing to change.
fn conflict(c: &mut Conn, workspace_id: i64, id: i64, now: i64, doing: &str) -> StoreError {
    let row = c.query_opt(
        "SELECT state, schedule_claimed_until FROM broadcasts WHERE id = ? AND workspace_id = ?",
        params![id, workspace_id],
    );
    match row {
        Err(e) => e,
        Ok(None) => StoreError::NotFound,
        Ok(Some(r)) if r.str(0) == "scheduled" && r.opt_i64(1).is_some_and(|t| t > now) => {
            StoreError::rejected(Code::Conflict, format!("cannot {doing}: its run is starting"))
        }
        Ok(Some(r)) => StoreError::rejected(Code::Conflict, format!("cannot {doing}: the broadcast is {}", r.str(0))),
    }
}

impl Store {
    /// Schedules a draft.
    ///
    /// # Errors
    /// `QF-STATE-CONFLICT` unless it is a draft, `NotFound`, or database errors.
    pub fn schedule_broadcast(
        &self,
        workspace_id: i64,
        id: i64,
        new: NewSchedule<'_>,
        scheduled_by: i64,
        actor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.db.write(|c| {
            let n = c.execute(
                "UPDATE broadcasts SET state = 'scheduled', schedule_at = ?, schedule_tz = ?, schedule_cron = ?, next_run_at = ?,
                 scheduled_by = ?, verdicts = ?, schedule_claimed_until = NULL
                 WHERE id = ? AND workspace_id = ? AND state = 'draft'",
                params![new.at, new.time_zone, new.cron, new.next_run_at, scheduled_by, new.verdicts_json, id, workspace_id],
            )?;
            if n == 0 {
                return Err(conflict(c, workspace_id, id, now, "schedule it (only a draft can be scheduled)"));
            }
            let details = serde_json::json!({
                "at": new.at, "time_zone": new.time_zone, "cron": new.cron, "next_run_at": new.next_run_at,
            });
            audit::append(c, workspace_id, actor, "broadcast.scheduled", &format!("broadcast:{id}"), &details.to_string(), now)?;
            crate::events::broadcast_state(c, workspace_id, id, "scheduled", now)?;
            Ok(())
        })
    }

    /// Cancels a schedule before it starts: the broadcast is a draft again.
    /// A recurring schedule stops; its runs that started are not touched.
    ///
    /// # Errors
    /// `QF-STATE-CONFLICT` when it is not scheduled (it already ran, or never
    /// was) or a node is starting its run, `NotFound`, or database errors.
    pub fn unschedule_broadcast(&self, workspace_id: i64, id: i64, actor: &str, now: i64) -> Result<(), StoreError> {
        self.db.write(|c| {
            let n = c.execute(
                "UPDATE broadcasts SET state = 'draft', schedule_at = NULL, schedule_tz = NULL, schedule_cron = NULL,
                 next_run_at = NULL, scheduled_by = NULL, verdicts = NULL
                 WHERE id = ? AND workspace_id = ? AND state = 'scheduled' AND COALESCE(schedule_claimed_until, 0) <= ?",
                params![id, workspace_id, now],
            )?;
            if n == 0 {
                return Err(conflict(c, workspace_id, id, now, "cancel the schedule"));
            }
            audit::append(c, workspace_id, actor, "broadcast.unscheduled", &format!("broadcast:{id}"), "{}", now)?;
            crate::events::broadcast_state(c, workspace_id, id, "draft", now)?;
            Ok(())
        })
    }

    /// A broadcast's schedule columns (whatever its state).
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn schedule(&self, workspace_id: i64, id: i64) -> Result<ScheduleRecord, StoreError> {
        let r = self.db.conn()?.query_one(
            &format!("SELECT {SCHEDULE_COLUMNS} FROM broadcasts WHERE id = ? AND workspace_id = ?"),
            params![id, workspace_id],
        )?;
        schedule_from(&r)
    }

    /// Runs due at `now` on every workspace, earliest first: scheduled, their
    /// time come, not held by a node.
    ///
    /// # Errors
    /// Database errors.
    pub fn due_schedules(&self, now: i64, limit: usize) -> Result<Vec<ScheduleRecord>, StoreError> {
        let rows = self.db.conn()?.query(
            &format!(
                "SELECT {SCHEDULE_COLUMNS} FROM broadcasts
                 WHERE state = 'scheduled' AND next_run_at <= ? AND COALESCE(schedule_claimed_until, 0) <= ?
                 ORDER BY next_run_at, id LIMIT ?"
            ),
            params![now, now, limit],
        )?;
        rows.iter().map(schedule_from).collect()
    }

    /// Claims the run of `id` that was due at `due`. Returns the broadcast to
    /// submit (the schedule itself, or the run's new broadcast), or `None`
    /// when another node took the run or it was cancelled (and for `Defer`).
    ///
    /// # Errors
    /// Database errors.
    pub fn claim_schedule(
        &self,
        workspace_id: i64,
        id: i64,
        due: i64,
        claim: Claim,
        actor: &str,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        let subject = format!("broadcast:{id}");
        let guard = "WHERE id = ? AND workspace_id = ? AND state = 'scheduled' AND next_run_at = ? AND COALESCE(schedule_claimed_until, 0) <= ?";
        self.db.write(|c| match claim {
            Claim::Once { lease_until } => {
                let n = c.execute(
                    &format!("UPDATE broadcasts SET schedule_claimed_until = ? {guard}"),
                    params![lease_until, id, workspace_id, due, now],
                )?;
                if n == 0 {
                    return Ok(None);
                }
                let details = serde_json::json!({"due": due}).to_string();
                audit::append(c, workspace_id, actor, "schedule.run", &subject, &details, now)?;
                Ok(Some(id))
            }
            Claim::Defer { until } => {
                let n = c.execute(
                    &format!("UPDATE broadcasts SET next_run_at = ? {guard}"),
                    params![until, id, workspace_id, due, now],
                )?;
                if n > 0 {
                    let details = serde_json::json!({"due": due, "next_run_at": until, "reason": "quiet_hours"});
                    audit::append(c, workspace_id, actor, "schedule.deferred", &subject, &details.to_string(), now)?;
                }
                Ok(None)
            }
            Claim::Recurring { next_run_at, lease_until } => {
                let n = match next_run_at {
                    Some(next) => c.execute(
                        &format!("UPDATE broadcasts SET next_run_at = ? {guard}"),
                        params![next, id, workspace_id, due, now],
                    )?,
                    // The last run: the schedule ends, a draft again.
                    None => c.execute(
                        &format!("UPDATE broadcasts SET state = 'draft', next_run_at = NULL {guard}"),
                        params![id, workspace_id, due, now],
                    )?,
                };
                if n == 0 {
                    return Ok(None);
                }
                let parent = c.query_one(
                    "SELECT content, audience, priority, ttl_ms FROM broadcasts WHERE id = ?",
                    params![id],
                )?;
                let run = c
                    .query_one(
                        "INSERT INTO broadcasts (workspace_id, member_id, state, content, audience, channels, priority, request_hash,
                         created_at, ttl_ms, fallback, parent_id, scheduled_by, schedule_at, schedule_tz, next_run_at, schedule_claimed_until)
                         SELECT workspace_id, member_id, 'scheduled', content, audience, channels, priority, request_hash,
                         ?, ttl_ms, fallback, id, scheduled_by, ?, schedule_tz, ?, ?
                         FROM broadcasts WHERE id = ? RETURNING id",
                        params![now, due, due, lease_until, id],
                    )?
                    .i64(0);
                let created = serde_json::json!({
                    "content_sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(parent.str(0).as_bytes())),
                    "audience": parent.str(1),
                    "priority": qunfa_core::broadcast::Priority::from_i64(parent.i64(2)).as_str(),
                    "ttl_ms": parent.opt_i64(3),
                    "parent_id": id,
                });
                let run_subject = format!("broadcast:{run}");
                audit::append(c, workspace_id, actor, "broadcast.created", &run_subject, &created.to_string(), now)?;
                let details = serde_json::json!({"due": due, "run": run, "next_run_at": next_run_at});
                audit::append(c, workspace_id, actor, "schedule.run", &subject, &details.to_string(), now)?;
                if next_run_at.is_none() {
                    audit::append(c, workspace_id, actor, "schedule.ended", &subject, "{}", now)?;
                    crate::events::broadcast_state(c, workspace_id, id, "draft", now)?;
                }
                Ok(Some(run))
            }
        })
    }

    /// Records a scheduled run refused at its time: state `blocked` with the
    /// verdicts that refused it. Returns false when it is no longer scheduled.
    ///
    /// # Errors
    /// Database errors.
    pub fn block_scheduled_run(
        &self,
        workspace_id: i64,
        id: i64,
        verdicts_json: &str,
        actor: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.db.write(|c| {
            let n = c.execute(
                "UPDATE broadcasts SET state = 'blocked', verdicts = ?, submitted_at = ?, next_run_at = NULL
                 WHERE id = ? AND workspace_id = ? AND state = 'scheduled'",
                params![verdicts_json, now, id, workspace_id],
            )?;
            if n == 0 {
                return Ok(false);
            }
            audit::append(c, workspace_id, actor, "broadcast.blocked", &format!("broadcast:{id}"), verdicts_json, now)?;
            crate::events::broadcast_state(c, workspace_id, id, "blocked", now)?;
            Ok(true)
        })
    }

    /// The runs of a recurring schedule (broadcasts with `parent_id`), newest first.
    ///
    /// # Errors
    /// Database errors.
    pub fn schedule_runs(
        &self,
        workspace_id: i64,
        parent_id: i64,
        limit: usize,
    ) -> Result<Vec<ScheduleRun>, StoreError> {
        runs_of(&mut *self.db.conn()?, workspace_id, parent_id, limit)
    }

    /// A broadcast, its schedule and (with `runs_limit`, for a recurring one)
    /// its newest runs, read in one snapshot: a run the scheduler creates
    /// while this reads shows with the `next_run_at` it moved, never without.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn schedule_view(
        &self,
        workspace_id: i64,
        id: i64,
        runs_limit: Option<usize>,
    ) -> Result<ScheduleView, StoreError> {
        self.db.read(|c| {
            let r = c.query_one(
                &format!("SELECT {SCHEDULE_COLUMNS} FROM broadcasts WHERE id = ? AND workspace_id = ?"),
                params![id, workspace_id],
            )?;
            let schedule = schedule_from(&r)?;
            let runs = match runs_limit {
                Some(limit) if schedule.cron.is_some() => Some(runs_of(c, workspace_id, id, limit)?),
                _ => None,
            };
            let broadcast = crate::broadcasts::broadcast_in(c, workspace_id, id)?;
            Ok(ScheduleView { broadcast, schedule, runs })
        })
    }

    /// The workspace's quiet hours and time zone.
    ///
    /// # Errors
    /// `NotFound`, or database errors.
    pub fn schedule_settings(&self, workspace_id: i64) -> Result<ScheduleSettingsRecord, StoreError> {
        let r = self
            .db
            .conn()?
            .query_one("SELECT quiet_hours, time_zone FROM workspaces WHERE id = ?", params![workspace_id])?;
        Ok(ScheduleSettingsRecord { quiet_hours: r.opt_string(0), time_zone: r.opt_string(1) })
    }

    /// Sets the workspace's quiet hours and time zone (checked by the caller).
    ///
    /// # Errors
    /// Database errors.
    pub fn set_schedule_settings(
        &self,
        workspace_id: i64,
        settings: &ScheduleSettingsRecord,
        actor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.db.write(|c| {
            c.execute(
                "UPDATE workspaces SET quiet_hours = ?, time_zone = ? WHERE id = ?",
                params![settings.quiet_hours.clone(), settings.time_zone.clone(), workspace_id],
            )?;
            let details = serde_json::json!({"quiet_hours": settings.quiet_hours, "time_zone": settings.time_zone});
            let subject = format!("workspace:{workspace_id}");
            audit::append(c, workspace_id, actor, "workspace.schedule_settings", &subject, &details.to_string(), now)?;
            Ok(())
        })
    }
}
