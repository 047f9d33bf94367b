//! Scheduling: when a broadcast runs. A schedule is given at the edge as a
//! time (RFC 3339 with an offset, or a wall time in an IANA time zone) or as a
//! 5-field cron expression evaluated in a time zone; a workspace may set quiet
//! hours (`22:00-08:00`, wrapping midnight) in its own time zone, and a run
//! that falls into them goes at their end. Everything here is pure: `now` is an
//! argument, the time zone database is compiled in (`chrono-tz`).
//!
//! Daylight saving time, for every wall time (`at`, cron, the end of quiet
//! hours): a wall time that does not exist because the clocks jump forward is
//! read with the offset before the jump, so it runs as far after the jump as
//! it was after its start (02:30 in a 02:00→03:00 gap runs at 03:30); a wall
//! time that happens twice because the clocks go back runs once, at its first
//! occurrence.
//!
//! Cron expressions are the classic five fields, `minute hour day-of-month
//! month day-of-week`, with `*`, lists, ranges, steps (`*/15`, `1-5/2`, `5/10`),
//! month and weekday names (`JAN`, `MON`), 0 or 7 for Sunday, and `@hourly`,
//! `@daily`, `@weekly`, `@monthly`, `@yearly`. As in Vixie cron, when both
//! day fields are restricted (neither starts with `*`) a day matches either.

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset, SecondsFormat,
    TimeZone as _, Timelike as _,
};
use chrono_tz::Tz;

use crate::{
    policy::SchedulePolicy,
    preflight::{Severity, Verdict},
    Code, Millis,
};

const DAY: i64 = 86_400_000;
/// How far ahead the runs after the first are looked for: far enough for
/// the rarest pattern (29 February on a given weekday repeats within 28 years).
const FOLLOWING_RUNS_DAYS: u32 = 29 * 366;

/// A schedule that cannot be accepted, with the code that says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ScheduleError {
    pub code: Code,
    pub message: String,
}

impl ScheduleError {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// An instant as RFC 3339 UTC, for messages.
pub fn rfc3339(t: Millis) -> String {
    DateTime::from_timestamp_millis(t).map_or_else(|| t.to_string(), |d| d.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// An IANA time zone (`Asia/Shanghai`, `Europe/Berlin`, `UTC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeZone(Tz);

impl TimeZone {
    /// # Errors
    /// `QF-SCHEDULE-TIME-ZONE` for a name the time zone database does not know.
    pub fn parse(name: &str) -> Result<Self, ScheduleError> {
        name.trim().parse::<Tz>().map(TimeZone).map_err(|_| {
            ScheduleError::new(
                Code::ScheduleTimeZone,
                format!("unknown time zone {name:?}: use an IANA name such as Asia/Shanghai, Europe/Berlin or UTC"),
            )
        })
    }

    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    /// The wall time of an instant in this zone.
    pub fn local(&self, t: Millis) -> NaiveDateTime {
        let utc = DateTime::from_timestamp_millis(t).unwrap_or_default().naive_utc();
        self.0.from_utc_datetime(&utc).naive_local()
    }

    /// The instant of a wall time in this zone (daylight saving time as in
    /// the module docs).
    pub fn instant(&self, local: NaiveDateTime) -> Millis {
        match self.0.from_local_datetime(&local) {
            LocalResult::Single(t) => t.timestamp_millis(),
            LocalResult::Ambiguous(a, b) => a.timestamp_millis().min(b.timestamp_millis()),
            LocalResult::None => {
                // In a gap: the offset in force a day before (no zone has two
                // changes within a day) reads the wall time as if the clocks
                // had not moved yet.
                let before = self.0.offset_from_utc_datetime(&(local - Duration::days(1))).fix();
                (local - Duration::seconds(i64::from(before.local_minus_utc()))).and_utc().timestamp_millis()
            }
        }
    }

    /// The offset from UTC at `t`, in seconds.
    fn offset_at(&self, t: Millis) -> i32 {
        let utc = DateTime::from_timestamp_millis(t).unwrap_or_default().naive_utc();
        self.0.offset_from_utc_datetime(&utc).fix().local_minus_utc()
    }
}

/// Parses the time of a one-off schedule: RFC 3339 with an offset
/// (`2026-12-24T09:00:00+08:00`, `…Z`), or a wall time in `zone`
/// (`2026-12-24T09:00:00`, `2026-12-24T09:00`, `2026-12-24 09:00`).
/// `zone_named`: the request named the zone, so an offset must agree with it.
///
/// # Errors
/// `QF-SCHEDULE-INVALID` for anything else, `QF-SCHEDULE-TIME-ZONE` when the
/// offset is not the named zone's at that time.
pub fn parse_at(s: &str, zone: TimeZone, zone_named: bool) -> Result<Millis, ScheduleError> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        let t_ms = t.timestamp_millis();
        let given = t.offset().local_minus_utc();
        if zone_named && given != zone.offset_at(t_ms) {
            return Err(ScheduleError::new(
                Code::ScheduleTimeZone,
                format!(
                    "{s} has the offset {}, but {} is at {} then: give the time without an offset, or leave time_zone out",
                    t.offset(),
                    zone.name(),
                    offset_text(zone.offset_at(t_ms))
                ),
            ));
        }
        return Ok(t_ms);
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M"] {
        if let Ok(local) = NaiveDateTime::parse_from_str(s, format) {
            return Ok(zone.instant(local));
        }
    }
    Err(ScheduleError::new(
        Code::ScheduleInvalid,
        format!("at {s:?} is not a time: use 2026-12-24T09:00:00 (in time_zone) or 2026-12-24T09:00:00+08:00"),
    ))
}

fn offset_text(seconds: i32) -> String {
    let sign = if seconds < 0 { '-' } else { '+' };
    let m = seconds.unsigned_abs() / 60;
    format!("{sign}{:02}:{:02}", m / 60, m % 60)
}

/// A recurring schedule: a 5-field cron expression (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule {
    source: String,
    /// Bit `m` for minute m, `h` for hour h, `d` for day d (1–31), `m` for
    /// month m (1–12), `w` for weekday w (0 Sunday – 6 Saturday).
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// The day fields start with `*`: days then match on both fields.
    days_star: bool,
    weekdays_star: bool,
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names for `min`, `min + 1`, …
    names: &'static [&'static str],
}

const FIELDS: [Field; 5] = [
    Field { name: "minute", min: 0, max: 59, names: &[] },
    Field { name: "hour", min: 0, max: 23, names: &[] },
    Field { name: "day of month", min: 1, max: 31, names: &[] },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
    },
    // 7 is Sunday too.
    Field { name: "day of week", min: 0, max: 7, names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"] },
];

/// The longest cron expression accepted.
const CRON_MAX_CHARS: usize = 200;

impl CronSchedule {
    /// # Errors
    /// `QF-SCHEDULE-CRON` naming the field and what is wrong with it.
    pub fn parse(s: &str) -> Result<Self, ScheduleError> {
        let source = s.trim();
        let bad = |m: String| ScheduleError::new(Code::ScheduleCron, m);
        if source.chars().count() > CRON_MAX_CHARS {
            return Err(bad(format!("a cron expression has at most {CRON_MAX_CHARS} characters")));
        }
        let expanded = match source.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            m if m.starts_with('@') => {
                return Err(bad(format!(
                    "unknown shortcut {source:?}: use @hourly, @daily, @weekly, @monthly or @yearly"
                )))
            }
            _ => source,
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(bad(format!(
                "a cron expression has 5 fields (minute hour day-of-month month day-of-week), e.g. \"0 9 * * MON\" for Mondays at 09:00; {source:?} has {}",
                parts.len()
            )));
        }
        let mut bits = [0u64; 5];
        for (i, (part, field)) in parts.iter().zip(&FIELDS).enumerate() {
            bits[i] = parse_field(part, field).map_err(|m| bad(format!("{} {part:?}: {m}", field.name)))?;
        }
        // Sunday is 0 and 7.
        let weekdays = (bits[4] | (bits[4] >> 7)) & 0x7f;
        Ok(CronSchedule {
            source: source.to_owned(),
            minutes: bits[0],
            hours: bits[1] as u32,
            days: bits[2] as u32,
            months: bits[3] as u16,
            weekdays: weekdays as u8,
            days_star: parts[2].starts_with('*'),
            weekdays_star: parts[4].starts_with('*'),
        })
    }

    /// The expression as given.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let day = self.days & (1 << date.day()) != 0;
        let weekday = self.weekdays & (1 << date.weekday().num_days_from_sunday()) != 0;
        if self.days_star || self.weekdays_star {
            day && weekday
        } else {
            day || weekday
        }
    }

    /// The wall times of a matching day, minutes after midnight, ascending.
    fn times_of_day(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for h in (0..24).filter(|h| self.hours & (1 << h) != 0) {
            out.extend((0..60).filter(|m| self.minutes & (1u64 << m) != 0).map(|m| h * 60 + m));
        }
        out
    }

    /// Days (from a fixed start, a full 28-year weekday and leap-year cycle)
    /// on which the expression fires.
    fn matching_days(&self) -> impl Iterator<Item = i64> + '_ {
        let start = NaiveDate::from_ymd_opt(2001, 1, 1).unwrap_or_default();
        (0..28 * 366).filter(move |d| self.day_matches(start + Duration::days(*d)))
    }

    /// Whether the expression fires at all (`0 0 30 2 *` never does).
    pub fn fires_ever(&self) -> bool {
        self.matching_days().next().is_some()
    }

    /// The shortest time between two runs, in wall-clock minutes (a change
    /// to or from daylight saving time may shorten one interval by its size).
    /// `None` when it never fires.
    pub fn min_interval_minutes(&self) -> Option<u32> {
        let times = self.times_of_day();
        let (first, last) = (*times.first()?, *times.last()?);
        let within_day = times.windows(2).map(|w| w[1] - w[0]).min();
        let mut previous: Option<i64> = None;
        let mut day_gap: Option<i64> = None;
        for day in self.matching_days() {
            if let Some(p) = previous {
                day_gap = Some(day_gap.map_or(day - p, |g| g.min(day - p)));
            }
            previous = Some(day);
        }
        previous?;
        let across_days = day_gap.map(|g| (g * 1440) as u32 + first - last);
        within_day.into_iter().chain(across_days).min().or(Some(u32::MAX))
    }

    /// The first run strictly after `after`, looking `within_days` ahead.
    pub fn next_after(&self, after: Millis, zone: TimeZone, within_days: u32) -> Option<Millis> {
        let times = self.times_of_day();
        let start = zone.local(after).date();
        // From the day before: a wall time of that day moved by a gap may
        // fall after `after`.
        for d in -1..=i64::from(within_days) {
            let date = start + Duration::days(d);
            if !self.day_matches(date) {
                continue;
            }
            // The smallest instant of the day: a wall time moved by a gap may
            // pass a later one.
            let best = times
                .iter()
                .filter_map(|m| NaiveTime::from_hms_opt(m / 60, m % 60, 0))
                .map(|t| zone.instant(date.and_time(t)))
                .filter(|t| *t > after)
                .min();
            if best.is_some() {
                return best;
            }
        }
        None
    }
}

/// One field's values as bits.
fn parse_field(text: &str, field: &Field) -> Result<u64, String> {
    let value = |s: &str| -> Result<u32, String> {
        let v = match s.parse::<u32>() {
            Ok(v) => v,
            Err(_) => match field.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
                Some(i) => field.min + i as u32,
                None if field.names.is_empty() => return Err(format!("{s:?} is not a number")),
                None => return Err(format!("{s:?} is not a number or a name ({})", field.names.join(", "))),
            },
        };
        if v < field.min || v > field.max {
            return Err(format!("{v} is outside {}-{}", field.min, field.max));
        }
        Ok(v)
    };
    let mut bits = 0u64;
    for item in text.split(',') {
        if item.is_empty() {
            return Err("an empty list item".into());
        }
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step = s.parse::<u32>().map_err(|_| format!("step {s:?} is not a number"))?;
                if step == 0 {
                    return Err("a step of 0".into());
                }
                (r, step)
            }
            None => (item, 1),
        };
        let (lo, hi) = if range == "*" {
            (field.min, field.max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else if item.contains('/') {
            // `5/10`: from 5 to the end, every 10.
            (value(range)?, field.max)
        } else {
            let v = value(range)?;
            (v, v)
        };
        if lo > hi {
            return Err(format!("the range {lo}-{hi} goes backwards"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

/// Quiet hours: a daily span of wall-clock time (`22:00-08:00` wraps
/// midnight) in which scheduled runs do not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    /// Minutes after midnight; `start != end`.
    start: u32,
    end: u32,
}

impl QuietHours {
    /// # Errors
    /// `QF-SCHEDULE-QUIET-HOURS-FORMAT` unless it is `HH:MM-HH:MM` with two different times.
    pub fn parse(s: &str) -> Result<Self, ScheduleError> {
        let bad = || {
            ScheduleError::new(
                Code::QuietHoursFormat,
                format!("quiet hours {s:?}: use HH:MM-HH:MM with two different times, e.g. 22:00-08:00"),
            )
        };
        let minutes = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
            if !(1..=2).contains(&h.len()) || m.len() != 2 || !digits(h) || !digits(m) {
                return None;
            }
            let (h, m) = (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (start, end) = (minutes(a).ok_or_else(bad)?, minutes(b).ok_or_else(bad)?);
        if start == end {
            return Err(bad());
        }
        Ok(QuietHours { start, end })
    }

    /// The canonical text, `22:00-08:00`.
    pub fn as_string(&self) -> String {
        format!("{:02}:{:02}-{:02}:{:02}", self.start / 60, self.start % 60, self.end / 60, self.end % 60)
    }

    fn contains(&self, minute_of_day: u32) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute_of_day)
        } else {
            minute_of_day >= self.start || minute_of_day < self.end
        }
    }

    /// When the quiet period that contains `t` ends, or `None` when `t` is
    /// outside quiet hours.
    pub fn end_of(&self, t: Millis, zone: TimeZone) -> Option<Millis> {
        let local = zone.local(t);
        let minute = local.time().num_seconds_from_midnight() / 60;
        if !self.contains(minute) {
            return None;
        }
        // The end is later the same day, unless the span wraps and `t` is before midnight.
        let date =
            if self.start > self.end && minute >= self.start { local.date() + Duration::days(1) } else { local.date() };
        let end = NaiveTime::from_hms_opt(self.end / 60, self.end % 60, 0).unwrap_or_default();
        Some(zone.instant(date.and_time(end)).max(t))
    }
}

/// A workspace's scheduling settings, resolved: the zone of its quiet hours
/// and of schedules that name none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleSettings {
    pub time_zone: TimeZone,
    pub quiet_hours: Option<QuietHours>,
}

impl ScheduleSettings {
    /// When a run due at `t` goes: `t`, or the end of the quiet hours it falls into.
    pub fn run_at(&self, t: Millis) -> Run {
        let at = self.quiet_hours.and_then(|q| q.end_of(t, self.time_zone)).unwrap_or(t);
        Run { nominal: t, at }
    }
}

/// One run: when the schedule says, and when it goes (after quiet hours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub nominal: Millis,
    pub at: Millis,
}

impl Run {
    /// Whether quiet hours moved it.
    pub fn moved(&self) -> bool {
        self.at != self.nominal
    }
}

/// When a schedule runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum When {
    /// Once, at this instant.
    At(Millis),
    /// Whenever the expression fires.
    Cron(CronSchedule),
}

/// A schedule: when, and the zone its wall times are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub when: When,
    pub time_zone: TimeZone,
}

impl Schedule {
    /// The next nominal run strictly after `after` (looking `within_days` ahead).
    pub fn next_after(&self, after: Millis, within_days: u32) -> Option<Millis> {
        match &self.when {
            When::At(t) => (*t > after).then_some(*t),
            When::Cron(c) => c.next_after(after, self.time_zone, within_days),
        }
    }

    /// The run after one that was due at `due` and fires at `now`: a
    /// recurring schedule's next run after both (runs missed while no node
    /// ran collapse into the one that fires now), moved out of quiet hours.
    /// `None` for a one-off schedule, or a recurring one that ends.
    pub fn following_run(&self, due: Millis, now: Millis, settings: &ScheduleSettings) -> Option<Run> {
        match &self.when {
            When::At(_) => None,
            When::Cron(c) => {
                c.next_after(due.max(now), self.time_zone, FOLLOWING_RUNS_DAYS).map(|t| settings.run_at(t))
            }
        }
    }
}

/// What a schedule request gives.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScheduleInput<'a> {
    pub at: Option<&'a str>,
    pub cron: Option<&'a str>,
    /// The zone the request named; the workspace's otherwise.
    pub time_zone: Option<TimeZone>,
}

/// An accepted schedule and its first run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulePlan {
    pub schedule: Schedule,
    pub first_run: Run,
}

/// Checks a schedule request against the policy at `now`: a one-off time at
/// least `min_lead_seconds` and at most `max_horizon_days` ahead; a cron
/// expression that fires, not more often than `min_interval_minutes`, first
/// within the horizon. The first run is moved out of quiet hours.
///
/// # Errors
/// `QF-SCHEDULE-INVALID`, `-PAST`, `-TOO-FAR`, `-TIME-ZONE`, `-CRON`,
/// `-NEVER` or `-TOO-OFTEN`, with what is wrong.
pub fn plan(
    policy: &SchedulePolicy,
    input: &ScheduleInput<'_>,
    settings: &ScheduleSettings,
    now: Millis,
) -> Result<SchedulePlan, ScheduleError> {
    let zone = input.time_zone.unwrap_or(settings.time_zone);
    let horizon = now + i64::from(policy.max_horizon_days) * DAY;
    let when = match (input.at, input.cron) {
        (Some(_), Some(_)) => {
            return Err(ScheduleError::new(
                Code::ScheduleInvalid,
                "give either at (one run) or cron (recurring runs), not both",
            ))
        }
        (None, None) => {
            return Err(ScheduleError::new(Code::ScheduleInvalid, "give at (one run) or cron (recurring runs)"))
        }
        (Some(at), None) => {
            let t = parse_at(at, zone, input.time_zone.is_some())?;
            let lead = i64::from(policy.min_lead_seconds) * 1000;
            if t <= now {
                return Err(ScheduleError::new(
                    Code::SchedulePast,
                    format!("{at} ({}) is in the past; it is now {}", rfc3339(t), rfc3339(now)),
                ));
            }
            if t < now + lead {
                return Err(ScheduleError::new(
                    Code::SchedulePast,
                    format!(
                        "{at} is less than {} seconds ahead: schedule it later, or send it now",
                        policy.min_lead_seconds
                    ),
                ));
            }
            if t > horizon {
                return Err(ScheduleError::new(
                    Code::ScheduleTooFar,
                    format!("{at} is more than {} days ahead", policy.max_horizon_days),
                ));
            }
            When::At(t)
        }
        (None, Some(expr)) => {
            let cron = CronSchedule::parse(expr)?;
            let Some(interval) = cron.min_interval_minutes() else {
                return Err(ScheduleError::new(
                    Code::ScheduleNever,
                    format!("{:?} never fires: no date has that day of the month in those months", cron.as_str()),
                ));
            };
            if interval < policy.min_interval_minutes {
                return Err(ScheduleError::new(
                    Code::ScheduleTooOften,
                    format!(
                        "{:?} fires {interval} minute(s) apart; recurring sends are at least {} minutes apart",
                        cron.as_str(),
                        policy.min_interval_minutes
                    ),
                ));
            }
            When::Cron(cron)
        }
    };
    let schedule = Schedule { when, time_zone: zone };
    let Some(first) = schedule.next_after(now, policy.max_horizon_days) else {
        return Err(ScheduleError::new(
            Code::ScheduleTooFar,
            format!("the first run is more than {} days ahead", policy.max_horizon_days),
        ));
    };
    Ok(SchedulePlan { schedule, first_run: settings.run_at(first) })
}

/// The verdict that says quiet hours moved a run (severity `delay`).
pub fn quiet_hours_verdict(run: &Run, settings: &ScheduleSettings) -> Option<Verdict> {
    if !run.moved() {
        return None;
    }
    let quiet = settings.quiet_hours.map(|q| q.as_string()).unwrap_or_default();
    let zone = settings.time_zone.name();
    let (nominal, at) = (rfc3339(run.nominal), rfc3339(run.at));
    Some(Verdict {
        code: Code::ScheduleQuietHours,
        severity: Severity::Delay,
        message: format!("{nominal} is inside the quiet hours {quiet} ({zone}): the run goes at their end, {at}."),
        message_zh: format!("{nominal} 处于免打扰时段 {quiet}（{zone}）内，将在免打扰结束时（{at}）发送。"),
        hint: Code::ScheduleQuietHours.hint().to_owned(),
        clears_at: Some(run.at),
        limit: None,
        actual: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str) -> TimeZone {
        TimeZone::parse(name).unwrap()
    }

    fn at(s: &str) -> Millis {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn cron(s: &str) -> CronSchedule {
        CronSchedule::parse(s).unwrap()
    }

    /// The next `n` runs of `expr` in `tz` after `from`, as RFC 3339 UTC.
    fn runs(expr: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        let (c, z) = (cron(expr), zone(tz));
        let mut t = at(from);
        let mut out = Vec::new();
        for _ in 0..n {
            t = c.next_after(t, z, 400).expect("fires");
            out.push(rfc3339(t));
        }
        out
    }

    fn policy() -> SchedulePolicy {
        crate::Policy::builtin().schedule
    }

    #[test]
    fn time_zones() {
        assert_eq!(zone("Asia/Shanghai").name(), "Asia/Shanghai");
        let e = TimeZone::parse("Mars/Olympus").unwrap_err();
        assert_eq!(e.code, Code::ScheduleTimeZone);
        assert!(TimeZone::parse("").is_err());
    }

    #[test]
    fn times_with_offsets_and_zones() {
        let sh = zone("Asia/Shanghai");
        assert_eq!(parse_at("2026-12-24T09:00:00", sh, true), Ok(at("2026-12-24T01:00:00Z")));
        assert_eq!(parse_at("2026-12-24 09:00", sh, false), Ok(at("2026-12-24T01:00:00Z")));
        assert_eq!(parse_at("2026-12-24T09:00:00+08:00", sh, true), Ok(at("2026-12-24T01:00:00Z")));
        // An offset is exact; a named zone must agree with it.
        assert_eq!(parse_at("2026-12-24T09:00:00Z", sh, false), Ok(at("2026-12-24T09:00:00Z")));
        assert_eq!(parse_at("2026-12-24T09:00:00Z", sh, true).unwrap_err().code, Code::ScheduleTimeZone);
        assert_eq!(parse_at("tomorrow at nine", sh, false).unwrap_err().code, Code::ScheduleInvalid);
        assert_eq!(parse_at("2026-02-30T09:00:00", sh, false).unwrap_err().code, Code::ScheduleInvalid);
    }

    #[test]
    fn wall_times_across_dst() {
        let ny = zone("America/New_York");
        // 2026-03-08 02:30 does not exist in New York: read with EST, 03:30 EDT.
        assert_eq!(parse_at("2026-03-08T02:30:00", ny, true), Ok(at("2026-03-08T07:30:00Z")));
        assert_eq!(ny.local(at("2026-03-08T07:30:00Z")).to_string(), "2026-03-08 03:30:00");
        // 2026-11-01 01:30 happens twice: the first one (EDT).
        assert_eq!(parse_at("2026-11-01T01:30:00", ny, true), Ok(at("2026-11-01T05:30:00Z")));
    }

    #[test]
    fn cron_syntax() {
        let bad = |s: &str| CronSchedule::parse(s).unwrap_err();
        assert_eq!(bad("0 9 * *").code, Code::ScheduleCron);
        assert!(bad("0 9 * *").message.contains("5 fields"), "{}", bad("0 9 * *").message);
        assert!(bad("0 0 9 * * *").message.contains("has 6"));
        assert!(bad("61 * * * *").message.contains("minute \"61\": 61 is outside 0-59"));
        assert!(bad("0 24 * * *").message.contains("hour"));
        assert!(bad("0 9 0 * *").message.contains("day of month"));
        assert!(bad("0 9 * 13 *").message.contains("month"));
        assert!(bad("0 9 * * 8").message.contains("day of week"));
        assert!(bad("*/0 * * * *").message.contains("step of 0"));
        assert!(bad("0 9-5 * * *").message.contains("backwards"));
        assert!(bad("0 9 * * FUNDAY").message.contains("not a number or a name"));
        assert!(bad("0 9,,10 * * *").message.contains("empty"));
        assert!(bad("@reboot").message.contains("shortcut"));
        assert_eq!(cron("@daily"), CronSchedule { source: "@daily".into(), ..cron("0 0 * * *") });
        assert_eq!(cron("0 9 * * 7").weekdays, cron("0 9 * * SUN").weekdays);
        assert_eq!(cron("0 9 * jan-mar mon-fri").months, 0b1110);
        assert_eq!(cron("5/20 * * * *").minutes, (1 << 5) | (1 << 25) | (1 << 45));
    }

    #[test]
    fn next_runs_in_a_zone() {
        // Mondays at 09:00 in Shanghai are 01:00 UTC.
        expect_test::expect![[r#"
            [
                "2026-01-05T01:00:00Z",
                "2026-01-12T01:00:00Z",
                "2026-01-19T01:00:00Z",
            ]
        "#]]
        .assert_debug_eq(&runs("0 9 * * 1", "Asia/Shanghai", "2026-01-01T00:00:00Z", 3));
        // Both day fields restricted: the 1st or a Friday.
        expect_test::expect![[r#"
            [
                "2026-05-01T12:00:00Z",
                "2026-05-08T12:00:00Z",
                "2026-05-15T12:00:00Z",
            ]
        "#]]
        .assert_debug_eq(&runs("0 12 1 * FRI", "UTC", "2026-04-30T12:00:00Z", 3));
        // The last second before a run does not skip it; the run itself does.
        let c = cron("30 8 * * *");
        assert_eq!(c.next_after(at("2026-06-01T08:29:59Z"), zone("UTC"), 2), Some(at("2026-06-01T08:30:00Z")));
        assert_eq!(c.next_after(at("2026-06-01T08:30:00Z"), zone("UTC"), 2), Some(at("2026-06-02T08:30:00Z")));
    }

    #[test]
    fn cron_across_dst_changes() {
        // Daily at 02:30 in New York: on the day of the spring gap it runs at
        // 03:30 EDT (07:30Z), once; otherwise at 02:30 local.
        expect_test::expect![[r#"
            [
                "2026-03-07T07:30:00Z",
                "2026-03-08T07:30:00Z",
                "2026-03-09T06:30:00Z",
            ]
        "#]]
        .assert_debug_eq(&runs("30 2 * * *", "America/New_York", "2026-03-07T00:00:00Z", 3));
        // Hourly through the autumn change: 01:00 happens twice, runs once.
        expect_test::expect![[r#"
            [
                "2026-11-01T04:00:00Z",
                "2026-11-01T05:00:00Z",
                "2026-11-01T07:00:00Z",
                "2026-11-01T08:00:00Z",
            ]
        "#]]
        .assert_debug_eq(&runs("0 * * * *", "America/New_York", "2026-11-01T03:30:00Z", 4));
        // 02:00, 02:30, 03:00 and 03:30 on the gap day: the moved 02:00 and
        // 02:30 are 03:00 and 03:30, so two runs, not four.
        assert_eq!(
            runs("0,30 2,3 * * *", "America/New_York", "2026-03-08T06:59:00Z", 3),
            ["2026-03-08T07:00:00Z", "2026-03-08T07:30:00Z", "2026-03-09T06:00:00Z"]
        );
    }

    #[test]
    fn never_and_intervals() {
        assert_eq!(cron("0 0 30 2 *").min_interval_minutes(), None);
        assert_eq!(cron("0 0 31 4,6,9,11 *").min_interval_minutes(), None);
        assert!(!cron("0 0 30 2 *").fires_ever());
        // 29 February fires, every four years.
        assert!(cron("0 0 29 2 *").fires_ever());
        assert_eq!(cron("0 0 29 2 *").min_interval_minutes(), Some((4 * 365 + 1) * 1440));
        assert_eq!(cron("*/5 * * * *").min_interval_minutes(), Some(5));
        assert_eq!(cron("0 9,17 * * *").min_interval_minutes(), Some(8 * 60));
        // 23:00 and 01:00 on consecutive days are 2 hours apart.
        assert_eq!(cron("0 1,23 * * *").min_interval_minutes(), Some(2 * 60));
        // Mondays at 00:00 and 23:00: 23 hours apart, never across days.
        assert_eq!(cron("0 0,23 * * MON").min_interval_minutes(), Some(23 * 60));
        assert_eq!(cron("0 9 * * 1").min_interval_minutes(), Some(7 * 1440));
    }

    #[test]
    fn quiet_hours() {
        let bad = |s: &str| QuietHours::parse(s).unwrap_err().code;
        assert_eq!(bad("22:00"), Code::QuietHoursFormat);
        assert_eq!(bad("22:00-22:00"), Code::QuietHoursFormat);
        assert_eq!(bad("24:00-08:00"), Code::QuietHoursFormat);
        assert_eq!(bad("22:60-08:00"), Code::QuietHoursFormat);
        assert_eq!(bad("ten-eight"), Code::QuietHoursFormat);
        assert_eq!(QuietHours::parse("9:05-17:00").unwrap().as_string(), "09:05-17:00");

        let sh = zone("Asia/Shanghai");
        let q = QuietHours::parse("22:00-08:00").unwrap();
        let end = |t: &str| q.end_of(at(t), sh).map(rfc3339);
        // 23:30 local → 08:00 the next day; 02:00 local → 08:00 the same day.
        assert_eq!(end("2026-12-24T15:30:00Z").as_deref(), Some("2026-12-25T00:00:00Z"));
        assert_eq!(end("2026-12-24T18:00:00Z").as_deref(), Some("2026-12-25T00:00:00Z"));
        // The edges: 22:00 is quiet, 08:00 is not, 21:59 is not.
        assert_eq!(end("2026-12-24T14:00:00Z").as_deref(), Some("2026-12-25T00:00:00Z"));
        assert_eq!(end("2026-12-25T00:00:00Z"), None);
        assert_eq!(end("2026-12-24T13:59:00Z"), None);
        // A span within one day.
        let lunch = QuietHours::parse("12:00-13:30").unwrap();
        assert_eq!(lunch.end_of(at("2026-12-24T04:10:00Z"), sh).map(rfc3339).as_deref(), Some("2026-12-24T05:30:00Z"));
        assert_eq!(lunch.end_of(at("2026-12-24T05:30:00Z"), sh), None);
        // Ending in a DST gap: 02:30 New York on 2026-03-08 is 03:30 EDT.
        let ny = zone("America/New_York");
        let night = QuietHours::parse("23:00-02:30").unwrap();
        assert_eq!(night.end_of(at("2026-03-08T05:00:00Z"), ny).map(rfc3339).as_deref(), Some("2026-03-08T07:30:00Z"));
    }

    #[test]
    fn plans() {
        let p = policy();
        let now = at("2026-12-01T00:00:00Z");
        let settings = ScheduleSettings { time_zone: zone("Asia/Shanghai"), quiet_hours: None };
        let input = |at: Option<&'static str>, cron: Option<&'static str>| ScheduleInput { at, cron, time_zone: None };
        let code = |i: ScheduleInput<'_>| plan(&p, &i, &settings, now).unwrap_err().code;

        let one = plan(&p, &input(Some("2026-12-24T09:00:00"), None), &settings, now).unwrap();
        assert_eq!(one.first_run, Run { nominal: at("2026-12-24T01:00:00Z"), at: at("2026-12-24T01:00:00Z") });
        assert_eq!(one.schedule.following_run(one.first_run.nominal, one.first_run.nominal, &settings), None);
        assert_eq!(code(input(Some("2026-11-30T09:00:00"), None)), Code::SchedulePast);
        // Less than the lead ahead.
        assert_eq!(code(input(Some("2026-12-01T08:00:10"), None)), Code::SchedulePast);
        assert_eq!(code(input(Some("2028-12-01T08:00:00"), None)), Code::ScheduleTooFar);
        assert_eq!(code(input(None, None)), Code::ScheduleInvalid);
        assert_eq!(code(input(Some("2026-12-24T09:00:00"), Some("0 9 * * *"))), Code::ScheduleInvalid);
        assert_eq!(code(input(None, Some("0 0 30 2 *"))), Code::ScheduleNever);
        assert_eq!(code(input(None, Some("*/5 * * * *"))), Code::ScheduleTooOften);
        assert_eq!(code(input(None, Some("0 9 * *"))), Code::ScheduleCron);

        let weekly = plan(&p, &input(None, Some("0 9 * * MON")), &settings, now).unwrap();
        assert_eq!(rfc3339(weekly.first_run.at), "2026-12-07T01:00:00Z");
        // Runs missed while no node ran collapse into one; the next is a week on.
        let next = weekly.schedule.following_run(weekly.first_run.nominal, at("2026-12-20T00:00:00Z"), &settings);
        assert_eq!(next.map(|r| rfc3339(r.at)).as_deref(), Some("2026-12-21T01:00:00Z"));

        // Quiet hours move the run and say so.
        let quiet = ScheduleSettings { quiet_hours: Some(QuietHours::parse("22:00-08:00").unwrap()), ..settings };
        let late = plan(&p, &input(Some("2026-12-24T23:15"), None), &quiet, now).unwrap();
        assert_eq!(rfc3339(late.first_run.at), "2026-12-25T00:00:00Z");
        let v = quiet_hours_verdict(&late.first_run, &quiet).unwrap();
        assert_eq!((v.code, v.severity), (Code::ScheduleQuietHours, Severity::Delay));
        assert!(v.message.contains("22:00-08:00 (Asia/Shanghai)"), "{}", v.message);
        assert_eq!(quiet_hours_verdict(&one.first_run, &quiet), None);
        // A zone named in the request is the schedule's; quiet hours stay the workspace's.
        let berlin = ScheduleInput { time_zone: Some(zone("Europe/Berlin")), ..input(Some("2026-12-24T09:00"), None) };
        let b = plan(&p, &berlin, &quiet, now).unwrap();
        assert_eq!(
            (rfc3339(b.first_run.at), b.schedule.time_zone.name()),
            ("2026-12-24T08:00:00Z".into(), "Europe/Berlin")
        );
    }
}
