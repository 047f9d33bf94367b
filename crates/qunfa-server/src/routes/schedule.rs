//! Scheduling (enterprise and API tiers; admins and owners): run a draft
//! once at a time or on a cron expression, cancel it before it starts, the
//! workspace's quiet hours and time zone, and the scheduler: a task that
//! submits the runs that come due through `broadcasts::submit`, the one path
//! of `POST …/send`, so a scheduled run meets exactly the rules a send meets.
//!
//! A run refused at its time is recorded (state `blocked`, its verdicts, an
//! audit entry), never dropped; a recurring schedule goes on with its next run.

use std::time::Duration;

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use qunfa_core::{
    broadcast::BroadcastState,
    preflight::{Severity, Verdict},
    schedule::{
        self as plan, CronSchedule, QuietHours, Run, Schedule, ScheduleError, ScheduleSettings, TimeZone, When,
    },
    workspace::Action,
    Code,
};
use qunfa_store::{
    schedule::{Claim, NewSchedule, ScheduleRecord, ScheduleSettingsRecord},
    StoreError,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    broadcasts::{broadcast_response, evaluate, submit, verdicts_json, Evaluated, SendContext},
    parse_id,
};
use crate::{
    error::{ApiError, ApiResult, ErrorBody},
    extract::{ApiJson, Auth},
    wire::{ts_opt, BroadcastResponse},
    AppState, Inner,
};

/// Wakes the scheduler at once (a schedule was made); it also runs every second.
static WAKE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Due runs one pass of the scheduler takes; the rest wait for the next pass.
const RUNS_PER_PASS: usize = 100;

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> Self {
        ApiError::new(e.code, e.message)
    }
}

/// When a draft runs: `at` for one run, or `cron` for recurring runs.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    /// One run: a wall time in `time_zone` (`2026-12-24T09:00:00`,
    /// `2026-12-24 09:00`) or an exact time (`2026-12-24T09:00:00+08:00`).
    pub at: Option<String>,
    /// An IANA time zone (`Asia/Shanghai`) for `at` and `cron`; default: the
    /// workspace's (`GET /v1/workspace/schedule-settings`).
    pub time_zone: Option<String>,
    /// Recurring runs: `minute hour day-of-month month day-of-week`, e.g.
    /// `0 9 * * MON` (Mondays at 09:00); each run is a new broadcast.
    pub cron: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ScheduleWire {
    /// `once`, `recurring`, or `run` (a broadcast one run of a recurring schedule made).
    pub kind: String,
    /// The time asked for (`once`), or the time a `run` was due.
    pub at: Option<String>,
    pub time_zone: Option<String>,
    pub cron: Option<String>,
    /// When it runs next, after quiet hours; null once it started, or for a
    /// recurring schedule that ended.
    pub next_run_at: Option<String>,
    /// The admin or owner the scheduler submits as.
    pub scheduled_by: Option<String>,
    /// The recurring schedule this broadcast is a run of.
    pub parent_id: Option<String>,
}

/// A broadcast with its schedule.
#[derive(Serialize, ToSchema)]
pub struct ScheduleResponse {
    #[serde(flatten)]
    pub broadcast: BroadcastResponse,
    pub schedule: ScheduleWire,
    /// The broadcasts a recurring schedule made, newest first (GET only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs: Option<Vec<ScheduleRunWire>>,
}

#[derive(Serialize, ToSchema)]
pub struct ScheduleRunWire {
    pub id: String,
    /// `scheduled` (starting), `sending`, `completed`, `pending_approval`, `blocked`, …
    pub state: String,
    /// When the run was due.
    pub due_at: Option<String>,
    pub submitted_at: Option<String>,
    pub recipients: u64,
}

/// A workspace's scheduling settings (both replaced by a PUT).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSettingsRequest {
    /// `HH:MM-HH:MM` (may wrap midnight) in the workspace's time zone; null: none.
    /// Scheduled and recurring runs never start inside them: a run due there goes at their end.
    #[serde(default)]
    pub quiet_hours: Option<String>,
    /// An IANA time zone; null: the policy's `schedule.default_time_zone`.
    #[serde(default)]
    pub time_zone: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ScheduleSettingsResponse {
    /// `HH:MM-HH:MM` in the workspace's time zone, or null.
    pub quiet_hours: Option<String>,
    /// The zone the workspace set, or null.
    pub time_zone: Option<String>,
    /// The zone in force: the workspace's, or the policy's default.
    pub effective_time_zone: String,
}

/// The workspace's settings, resolved (the policy's zone when it has none).
fn settings_of(s: &Inner, workspace_id: i64) -> Result<ScheduleSettings, ApiError> {
    let stored = s.store.schedule_settings(workspace_id)?;
    let zone = stored.time_zone.as_deref().unwrap_or(&s.policy.schedule.default_time_zone);
    // Both were checked when set; the policy's zone when the policy was read.
    Ok(ScheduleSettings {
        time_zone: TimeZone::parse(zone)?,
        quiet_hours: stored.quiet_hours.as_deref().map(QuietHours::parse).transpose()?,
    })
}

fn schedule_wire(r: &ScheduleRecord) -> ScheduleWire {
    let kind = if r.parent_id.is_some() {
        "run"
    } else if r.cron.is_some() {
        "recurring"
    } else {
        "once"
    };
    ScheduleWire {
        kind: kind.into(),
        at: ts_opt(r.at),
        time_zone: r.time_zone.clone(),
        cron: r.cron.clone(),
        next_run_at: if r.state == BroadcastState::Scheduled { ts_opt(r.next_run_at) } else { None },
        scheduled_by: r.scheduled_by.map(|m| m.to_string()),
        parent_id: r.parent_id.map(|p| p.to_string()),
    }
}

/// Schedule a draft (admin or owner; enterprise and API workspaces). Every
/// rule is checked now as preflight does, as of the first run: a verdict that
/// blocks and does not clear by itself by then (content, audience, limits)
/// refuses the schedule with every verdict (422); one that clears by then
/// (the daily quota) does not. A run inside the workspace's quiet hours goes
/// at their end (`next_run_at`, verdict `QF-SCHEDULE-QUIET-HOURS`). At its
/// time the run is submitted like `POST …/send` by the member who scheduled it.
#[utoipa::path(post, path = "/v1/broadcasts/{id}/schedule", tag = "schedule", params(("id" = String, Path)), request_body = ScheduleRequest,
    responses((status = 200, body = ScheduleResponse), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn schedule_broadcast(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ScheduleRequest>,
) -> ApiResult<Json<ScheduleResponse>> {
    auth.require(Action::Schedule)?;
    let kind = auth.0.workspace.kind;
    if !state.policy.tier(kind).scheduling {
        return Err(ApiError::new(
            Code::ScheduleNotAllowed,
            format!("{} workspaces cannot schedule broadcasts", kind.as_str()),
        ));
    }
    let (ws, id) = (auth.workspace_id(), parse_id(&id)?);
    let (plan_name, member, actor) = (auth.0.workspace.plan.clone(), auth.0.member_id, auth.0.actor());
    let response = state
        .blocking(move |s| {
            let b = s.store.broadcast(ws, id)?;
            if b.state != BroadcastState::Draft {
                return Err(ApiError::new(
                    Code::Conflict,
                    format!(
                        "the broadcast is {}: only a draft can be scheduled (DELETE its schedule first to change it)",
                        b.state.as_str()
                    ),
                ));
            }
            let settings = settings_of(s, ws)?;
            let input = plan::ScheduleInput {
                at: req.at.as_deref(),
                cron: req.cron.as_deref(),
                time_zone: req.time_zone.as_deref().map(TimeZone::parse).transpose()?,
            };
            let now = s.now();
            let planned = plan::plan(&s.policy.schedule, &input, &settings, now)?;
            let run_at = planned.first_run.at;
            let Evaluated { verdicts, .. } = evaluate(s, kind, plan_name.as_deref(), &b, false)?;
            let (mut blocking, rest): (Vec<Verdict>, Vec<Verdict>) = verdicts
                .into_iter()
                .partition(|v| v.severity == Severity::Block && v.clears_at.is_none_or(|c| c > run_at));
            if !blocking.is_empty() {
                blocking.extend(rest);
                return Err(ApiError::from_verdicts(&blocking, s.now()));
            }
            // What the run will meet: reviews, delays, warnings, and quiet hours.
            let mut recorded: Vec<Verdict> = rest.into_iter().filter(|v| v.severity != Severity::Block).collect();
            recorded.extend(plan::quiet_hours_verdict(&planned.first_run, &settings));
            recorded.sort_by_key(|v| v.severity);
            let cron = match &planned.schedule.when {
                When::Cron(c) => Some(c.as_str().to_owned()),
                When::At(_) => None,
            };
            let new = NewSchedule {
                at: match planned.schedule.when {
                    When::At(t) => Some(t),
                    When::Cron(_) => None,
                },
                time_zone: planned.schedule.time_zone.name(),
                cron: cron.as_deref(),
                next_run_at: run_at,
                verdicts_json: &verdicts_json(&recorded),
            };
            s.store.schedule_broadcast(ws, id, new, member, &actor, now)?;
            WAKE.notify_one();
            response_of(s, ws, id, false)
        })
        .await?;
    Ok(Json(response))
}

fn response_of(s: &Inner, ws: i64, id: i64, with_runs: bool) -> Result<ScheduleResponse, ApiError> {
    // One snapshot: a run made while this reads shows with the schedule it moved.
    let view = s.store.schedule_view(ws, id, with_runs.then_some(100))?;
    let runs = view.runs.map(|runs| {
        runs.into_iter()
            .map(|r| ScheduleRunWire {
                id: r.broadcast_id.to_string(),
                state: r.state.as_str().into(),
                due_at: ts_opt(r.due_at),
                submitted_at: ts_opt(r.submitted_at),
                recipients: r.n_recipients,
            })
            .collect()
    });
    Ok(ScheduleResponse {
        broadcast: broadcast_response(view.broadcast),
        schedule: schedule_wire(&view.schedule),
        runs,
    })
}

/// A broadcast's schedule, and the runs (newest 100) of a recurring one.
#[utoipa::path(get, path = "/v1/broadcasts/{id}/schedule", tag = "schedule", params(("id" = String, Path)),
    responses((status = 200, body = ScheduleResponse), (status = 404, body = ErrorBody)))]
pub async fn get_schedule(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<ScheduleResponse>> {
    auth.require(Action::Read)?;
    let (ws, id) = (auth.workspace_id(), parse_id(&id)?);
    let response = state
        .blocking(move |s| {
            let r = s.store.schedule(ws, id)?;
            if r.time_zone.is_none() {
                return Err(ApiError::new(Code::NotFound, "the broadcast has no schedule"));
            }
            response_of(s, ws, id, true)
        })
        .await?;
    Ok(Json(response))
}

/// Cancel a schedule before it starts (admin or owner): the broadcast is a
/// draft again. A recurring schedule stops; the broadcasts its runs made are
/// not touched. 409 once the run started (or while a node is starting it).
#[utoipa::path(delete, path = "/v1/broadcasts/{id}/schedule", tag = "schedule", params(("id" = String, Path)),
    responses((status = 200, body = BroadcastResponse), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel_schedule(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<BroadcastResponse>> {
    auth.require(Action::Schedule)?;
    let (ws, id, actor) = (auth.workspace_id(), parse_id(&id)?, auth.0.actor());
    let b = state
        .blocking(move |s| {
            s.store.unschedule_broadcast(ws, id, &actor, s.now())?;
            Ok(s.store.broadcast(ws, id)?)
        })
        .await?;
    Ok(Json(broadcast_response(b)))
}

fn settings_wire(s: &Inner, r: ScheduleSettingsRecord) -> ScheduleSettingsResponse {
    let effective = r.time_zone.clone().unwrap_or_else(|| s.policy.schedule.default_time_zone.clone());
    ScheduleSettingsResponse { quiet_hours: r.quiet_hours, time_zone: r.time_zone, effective_time_zone: effective }
}

/// The workspace's quiet hours and time zone.
#[utoipa::path(get, path = "/v1/workspace/schedule-settings", tag = "schedule",
    responses((status = 200, body = ScheduleSettingsResponse)))]
pub async fn get_settings(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<ScheduleSettingsResponse>> {
    auth.require(Action::Read)?;
    let ws = auth.workspace_id();
    Ok(Json(state.blocking(move |s| Ok(settings_wire(s, s.store.schedule_settings(ws)?))).await?))
}

/// Set the workspace's quiet hours and time zone (admin or owner). They
/// apply to runs planned from now on, and to every run at its time: a run
/// due inside quiet hours goes at their end.
#[utoipa::path(put, path = "/v1/workspace/schedule-settings", tag = "schedule", request_body = ScheduleSettingsRequest,
    responses((status = 200, body = ScheduleSettingsResponse), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_settings(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<ScheduleSettingsRequest>,
) -> ApiResult<Json<ScheduleSettingsResponse>> {
    auth.require(Action::Schedule)?;
    let quiet_hours = req.quiet_hours.as_deref().map(QuietHours::parse).transpose()?.map(|q| q.as_string());
    let time_zone = req.time_zone.as_deref().map(TimeZone::parse).transpose()?.map(|z| z.name().to_owned());
    let record = ScheduleSettingsRecord { quiet_hours, time_zone };
    let (ws, actor) = (auth.workspace_id(), auth.0.actor());
    let answer = state
        .blocking(move |s| {
            s.store.set_schedule_settings(ws, &record, &actor, s.now())?;
            Ok(settings_wire(s, record))
        })
        .await?;
    Ok(Json(answer))
}

/// Starts the scheduler: every second, and when a schedule is made, it
/// fires the runs that are due. Abort the handle to stop it.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match state.blocking(run_due).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(runs = n, "scheduled runs fired"),
                Err(error) => {
                    tracing::warn!(code = error.code.as_str(), message = %error.message, "scheduler pass failed")
                }
            }
            tokio::select! {
                () = WAKE.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    })
}

/// One pass of the scheduler: takes the runs due now (by the server's clock)
/// and submits each; returns how many ran (sent, held for approval, or
/// recorded as blocked). A run another node took is skipped.
///
/// # Errors
/// Database errors reading the due runs; a failing run is logged and
/// tried again when its claim runs out.
pub fn run_due(s: &Inner) -> Result<usize, ApiError> {
    let now = s.now();
    let mut ran = 0;
    for due in s.store.due_schedules(now, RUNS_PER_PASS)? {
        match fire(s, &due, now) {
            Ok(true) => ran += 1,
            Ok(false) => {}
            Err(error) => tracing::warn!(
                broadcast_id = due.broadcast_id,
                code = error.code.as_str(),
                message = %error.message,
                "scheduled run failed; tried again when its claim runs out"
            ),
        }
    }
    Ok(ran)
}

/// Claims one due run and submits it.
fn fire(s: &Inner, r: &ScheduleRecord, now: i64) -> Result<bool, ApiError> {
    let (ws, id) = (r.workspace_id, r.broadcast_id);
    let Some(due) = r.next_run_at else { return Ok(false) };
    let member = r.scheduled_by.unwrap_or(r.member_id);
    let actor = format!("scheduler:member:{member}");
    let settings = settings_of(s, ws)?;
    // Nothing starts inside quiet hours (set since it was planned, or a run
    // that is late): it goes at their end.
    if let Some(until) = settings.quiet_hours.and_then(|q| q.end_of(now, settings.time_zone)) {
        s.store.claim_schedule(ws, id, due, Claim::Defer { until }, &actor, now)?;
        return Ok(false);
    }
    let lease_until = now + i64::from(s.policy.schedule.claim_lease_seconds) * 1000;
    let claim = match &r.cron {
        None => Claim::Once { lease_until },
        Some(expr) => {
            let zone = TimeZone::parse(r.time_zone.as_deref().unwrap_or(&s.policy.schedule.default_time_zone));
            let schedule = match (CronSchedule::parse(expr), zone) {
                (Ok(cron), Ok(time_zone)) => Schedule { when: When::Cron(cron), time_zone },
                (Err(e), _) | (_, Err(e)) => {
                    // Checked when scheduled; a stored one that no longer parses stops here, recorded.
                    let v = refusal(e.code, &e.message);
                    s.store.block_scheduled_run(ws, id, &verdicts_json(&[v]), &actor, now)?;
                    return Ok(true);
                }
            };
            let next = schedule.following_run(due, now, &settings).map(|run: Run| run.at);
            Claim::Recurring { next_run_at: next, lease_until }
        }
    };
    let Some(run_id) = s.store.claim_schedule(ws, id, due, claim, &actor, now)? else { return Ok(false) };
    submit_run(s, ws, run_id, member, &actor)
}

/// A verdict that refuses a run for a reason outside preflight.
fn refusal(code: Code, message: &str) -> Verdict {
    Verdict::new(code, Severity::Block, message.to_owned(), code.message_zh().to_owned())
}

/// Submits a claimed run as the member who scheduled it, or records why not.
fn submit_run(s: &Inner, ws: i64, run_id: i64, member: i64, actor: &str) -> Result<bool, ApiError> {
    let b = s.store.broadcast(ws, run_id)?;
    let workspace = s.store.workspace(ws)?;
    let now = s.now();
    // The tier and the member's role must still allow scheduling.
    let refused = if !s.policy.tier(workspace.kind).scheduling {
        Some(refusal(
            Code::ScheduleNotAllowed,
            &format!("{} workspaces can no longer schedule broadcasts", workspace.kind.as_str()),
        ))
    } else {
        match s.store.member(ws, member) {
            Ok(m) if m.role.allows(Action::Schedule) => None,
            Ok(m) => Some(refusal(
                Code::Forbidden,
                &format!("member {member} who scheduled it is now a {} and may not schedule", m.role.as_str()),
            )),
            Err(StoreError::NotFound) => {
                Some(refusal(Code::Forbidden, &format!("member {member} who scheduled it no longer exists")))
            }
            Err(e) => return Err(e.into()),
        }
    };
    if let Some(v) = refused {
        s.store.block_scheduled_run(ws, run_id, &verdicts_json(&[v]), actor, now)?;
        return Ok(true);
    }
    let ctx = SendContext { kind: workspace.kind, plan: workspace.plan, actor: actor.to_owned(), member_id: member };
    match submit(s, &ctx, &b, None) {
        Ok(b) => {
            tracing::info!(
                broadcast_id = b.id,
                member_id = ctx.member_id,
                state = b.state.as_str(),
                "scheduled run submitted"
            );
            Ok(true)
        }
        // Cancelled or taken meanwhile.
        Err(e) if e.status == StatusCode::CONFLICT => Ok(false),
        // Kept claimed: tried again when the claim runs out.
        Err(e) if e.status.is_server_error() => Err(e),
        Err(e) => {
            let verdicts = if e.details.iter().any(|d| d.get("severity").is_some()) {
                serde_json::Value::Array(e.details).to_string()
            } else {
                let mut v = refusal(e.code, &e.message);
                if let Some(zh) = e.message_zh {
                    v.message_zh = zh;
                }
                verdicts_json(&[v])
            };
            s.store.block_scheduled_run(ws, run_id, &verdicts, actor, now)?;
            Ok(true)
        }
    }
}
