//! The policy: every number of the platform rules, read from a TOML file whose
//! defaults ship in `policy/default.toml`. Code never hard-codes a limit.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{message::ContentType, workspace::WorkspaceKind};

/// The built-in policy file.
pub const DEFAULT_POLICY_TOML: &str = include_str!("../policy/default.toml");

/// The limits of one account tier.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TierPolicy {
    /// Most recipients of one send; `None` is unlimited.
    pub max_recipients: Option<u64>,
    /// Approval levels: a send with more recipients than a level's `above`
    /// needs that level's number of approvers (the highest level that applies).
    #[serde(default)]
    pub approval: Vec<ApprovalLevel>,
    /// No mass send while the sender's account is younger than this (0: none).
    pub new_account_days: u32,
    /// Mass messages one contact may receive from the workspace per local
    /// day, 7 days and 30 days (unset: no cap). Recipients over a cap are
    /// filtered and counted.
    #[serde(default)]
    pub contact_caps: ContactCaps,
    /// Whether broadcasts may be scheduled (by an admin or owner).
    pub scheduling: bool,
    /// How long after dispatch the sender may recall a send (unset: no recall).
    pub recall_seconds: Option<u32>,
    /// Text appended to every message, `{name}` being the workspace's name.
    pub signature: Option<String>,
    /// Mass sends per sender per local day; `None` is unlimited.
    pub sends_per_day: Option<u32>,
    pub text_max_chars: usize,
    pub content_types: Vec<String>,
    pub max_tags: Option<u64>,
    pub max_contacts_per_tag: Option<u64>,
    pub nested_tags: bool,
    pub departments: bool,
    /// Whether one send may combine tags, departments and contacts.
    pub combined_audiences: bool,
    /// Recipient limits per plan (API tier); a workspace's plan picks one.
    #[serde(default)]
    pub plans: BTreeMap<String, u64>,
    pub default_plan: Option<String>,
}

/// One approval level of a tier.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApprovalLevel {
    pub above: u64,
    pub approvers: u32,
}

/// Per-recipient frequency caps.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContactCaps {
    pub day: Option<u32>,
    pub week: Option<u32>,
    pub month: Option<u32>,
}

impl ContactCaps {
    /// Each cap in force with its window in days: (cap, days, name).
    pub fn windows(&self) -> Vec<(u32, u32, &'static str)> {
        [(self.day, 1, "day"), (self.week, 7, "week"), (self.month, 30, "month")]
            .into_iter()
            .filter_map(|(cap, days, name)| cap.map(|c| (c, days, name)))
            .collect()
    }
}

impl TierPolicy {
    /// The number of approvers a send to `n` recipients needs (0: none).
    pub fn approvers_needed(&self, n: u64) -> u32 {
        self.approval.iter().filter(|l| n > l.above).map(|l| l.approvers).max().unwrap_or(0)
    }

    /// The lowest recipient count that needs approval.
    pub fn approval_above(&self) -> Option<u64> {
        self.approval.iter().map(|l| l.above).min()
    }

    pub fn allows_type(&self, t: ContentType) -> bool {
        self.content_types.iter().any(|s| s == t.as_str())
    }

    /// The recipient limit for a workspace on `plan`.
    pub fn recipient_limit(&self, plan: Option<&str>) -> Option<u64> {
        let plan = plan.or(self.default_plan.as_deref());
        plan.and_then(|p| self.plans.get(p).copied()).or(self.max_recipients)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tiers {
    pub personal: TierPolicy,
    pub enterprise: TierPolicy,
    pub api: TierPolicy,
}

/// The whole policy.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub day_utc_offset_hours: i32,
    pub api_batch_max: usize,
    /// Most picked contacts of one send of the WeChat-compatible API (an
    /// Official Account `mass/send` names up to 10,000 OpenIDs, a WeCom
    /// customer mass send up to 10,000 external_userids).
    pub compat_batch_max: usize,
    /// A `client_msg_id` returns the original broadcast for this long.
    pub client_msg_id_hours: u32,
    pub tiers: Tiers,
    pub delivery: DeliveryPolicy,
    pub safety: SafetyPolicy,
    pub security: SecurityPolicy,
    pub health: HealthPolicy,
    pub schedule: SchedulePolicy,
    pub measurement: MeasurementPolicy,
    pub console: ConsolePolicy,
}

/// Measurement: reading time and A/B tests (docs/measurement.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MeasurementPolicy {
    /// One view (open → close) counts for at most this long.
    pub read_cap_seconds: u32,
    /// An average reading time below this flags the content (title, layout).
    pub short_read_seconds: u32,
    /// An A/B test warns below this many recipients per arm.
    pub ab_min_per_arm: u32,
    /// A winner needs p below this.
    pub ab_significance: f64,
}

/// Console logins.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsolePolicy {
    /// A browser session lasts this long after the login.
    pub session_hours: u32,
    /// Wrong passwords in a row that lock a login.
    pub max_failures: u32,
    /// How long a locked login stays locked.
    pub lock_minutes: u32,
}

/// Scheduled and recurring sends.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SchedulePolicy {
    /// A one-off run is at least this far ahead (sooner: send it now).
    pub min_lead_seconds: u32,
    /// A one-off run, and a recurring schedule's first, is at most this far ahead.
    pub max_horizon_days: u32,
    /// Runs of a recurring schedule are at least this far apart.
    pub min_interval_minutes: u32,
    /// The zone of schedules and quiet hours in workspaces that set none (IANA name).
    pub default_time_zone: String,
    /// A node that took a due run and died before submitting it: another
    /// node runs it after this.
    pub claim_lease_seconds: u32,
}

/// Sender security: abnormal logins, "operation too frequent", fast growth.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecurityPolicy {
    /// A request from a device or network the member never used disables
    /// mass send until verified.
    pub abnormal_login: bool,
    /// Addresses in one IPv4 / IPv6 prefix of this length are one network.
    pub network_prefix_v4: u8,
    pub network_prefix_v6: u8,
    /// How long a one-time login code stays valid.
    pub login_code_minutes: u32,
    /// Wrong codes after which the member's open codes are void.
    pub login_code_max_failures: u32,
    /// More than this many send attempts within the window → cooldown (0: off).
    pub attempts_max: u32,
    pub attempts_window_minutes: u32,
    pub cooldown_hours: u32,
    /// More than this share of the audience added within the window → the
    /// send goes out in waves.
    pub growth_share: f64,
    /// The tiers the growth rule applies to (friend growth of personal accounts).
    pub growth_tiers: Vec<String>,
    pub growth_window_hours: u32,
    pub growth_waves: u32,
    pub growth_wave_minutes: u32,
}

/// Account health: six dimensions scored into healthy / watch / sandbox / suspended.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthPolicy {
    pub window_days: u32,
    /// Score (100 = perfect) below which the account is in watch, sandbox, suspended.
    pub watch_below: f64,
    pub sandbox_below: f64,
    pub suspend_below: f64,
    /// Rates are judged only once the sender reached this many recipients in the window.
    pub min_recipients: u64,
    pub devices_max: u32,
    pub device_penalty: f64,
    pub network_changes_max: u32,
    pub network_change_penalty: f64,
    pub forward_ratio_max: f64,
    pub forward_penalty: f64,
    pub deletion_rate_max: f64,
    pub deletion_penalty: f64,
    pub report_rate_max: f64,
    pub report_penalty: f64,
    /// A payment signal of risk r (0–1) costs r × this.
    pub payment_penalty: f64,
    /// Each violation (a refused content block, a rejected review) in the window.
    pub violation_penalty: f64,
    /// Limits in sandbox.
    pub sandbox_sends_per_day: u32,
    pub sandbox_max_recipients: u64,
}

/// The numbers of the content-safety check.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SafetyPolicy {
    /// Risk score (0–1) from which the model de-ranks, asks for review, blocks.
    pub risk_derank: f32,
    pub risk_review: f32,
    pub risk_block: f32,
    /// Random human review of messages nothing else holds: probability
    /// `review_sample_base + review_sample_per_risk × risk`.
    pub review_sample_base: f64,
    pub review_sample_per_risk: f64,
    /// Same or near-same content (text SimHash or image hash) sent to more
    /// than this many recipients by one sender within the window needs
    /// secondary verification (0: off).
    pub duplicate_max_recipients: u64,
    pub duplicate_window_minutes: u32,
    /// How long a verification code an admin issues stays valid.
    pub verification_code_minutes: u32,
}

/// How the delivery engine paces, retries and forgets.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeliveryPolicy {
    pub retention_hours: u32,
    pub flash_min_seconds: u32,
    pub flash_max_hours: u32,
    /// Recipients per minute at speed levels 0 (fastest) to 4.
    pub speed_levels_per_minute: Vec<u64>,
    /// Recipients per minute per sender; 0: no limit.
    pub sender_per_minute: u64,
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// How long a node keeps a claimed external batch.
    pub external_lease_seconds: u32,
    /// Recipients per minute per channel name.
    #[serde(default)]
    pub channel_per_minute: BTreeMap<String, u64>,
    /// Channels that need explicit consent before anything is sent on them.
    #[serde(default)]
    pub opt_in_channels: Vec<String>,
}

impl DeliveryPolicy {
    /// Whether `channel` needs the contact's explicit consent.
    pub fn needs_opt_in(&self, channel: crate::contact::Channel) -> bool {
        self.opt_in_channels.iter().any(|c| c == channel.as_str())
    }

    /// The rate of a speed level, recipients per minute.
    pub fn speed_level(&self, level: u8) -> Option<u64> {
        self.speed_levels_per_minute.get(usize::from(level)).copied()
    }

    /// The delay before retry `attempt` (1-based) of a failed delivery:
    /// exponential from `retry_base_ms`, capped at `retry_max_ms`, with
    /// `jitter` in [0, 1) spreading it over its upper half so retries of one
    /// failure do not arrive together.
    pub fn retry_delay_ms(&self, attempt: u32, jitter: f64) -> u64 {
        let exp = self.retry_base_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(30));
        let capped = exp.min(self.retry_max_ms);
        capped / 2 + ((capped / 2) as f64 * jitter.clamp(0.0, 1.0)) as u64
    }
}

/// A policy file that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid policy: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("invalid policy: {0}")]
    Invalid(String),
}

impl Policy {
    /// The built-in defaults.
    ///
    /// # Panics
    /// Never: the default file is checked by a unit test.
    pub fn builtin() -> Self {
        Self::from_toml_str("").expect("the built-in policy parses")
    }

    /// Reads a policy file. Keys it leaves out keep their default values, so a
    /// file may hold only the limits it changes.
    ///
    /// # Errors
    /// Unknown keys, wrong types or inconsistent limits.
    pub fn from_toml_str(overrides: &str) -> Result<Self, PolicyError> {
        let mut base: toml::Table = toml::from_str(DEFAULT_POLICY_TOML)?;
        let over: toml::Table = toml::from_str(overrides)?;
        merge(&mut base, over);
        let policy: Policy = toml::Value::Table(base).try_into()?;
        policy.check()?;
        Ok(policy)
    }

    fn check(&self) -> Result<(), PolicyError> {
        if !(-12..=14).contains(&self.day_utc_offset_hours) {
            return Err(PolicyError::Invalid("day_utc_offset_hours must be within -12..=14".into()));
        }
        let m = &self.measurement;
        if m.read_cap_seconds == 0 || !(m.ab_significance > 0.0 && m.ab_significance < 0.5) {
            return Err(PolicyError::Invalid(
                "measurement.read_cap_seconds must be positive and ab_significance within (0, 0.5)".into(),
            ));
        }
        for (name, tier) in
            [("personal", &self.tiers.personal), ("enterprise", &self.tiers.enterprise), ("api", &self.tiers.api)]
        {
            for t in &tier.content_types {
                if ContentType::parse(t).is_err() {
                    return Err(PolicyError::Invalid(format!("tiers.{name}.content_types: unknown type {t:?}")));
                }
            }
            if tier.text_max_chars == 0 {
                return Err(PolicyError::Invalid(format!("tiers.{name}.text_max_chars must be positive")));
            }
            if let Some(plan) = &tier.default_plan {
                if !tier.plans.contains_key(plan) {
                    return Err(PolicyError::Invalid(format!("tiers.{name}.default_plan {plan:?} is not in plans")));
                }
            }
        }
        let h = &self.health;
        if !(h.suspend_below <= h.sandbox_below && h.sandbox_below <= h.watch_below && h.watch_below <= 100.0) {
            return Err(PolicyError::Invalid("health: suspend_below ≤ sandbox_below ≤ watch_below ≤ 100".into()));
        }
        let sec = &self.security;
        if sec.network_prefix_v4 > 32 || sec.network_prefix_v6 > 128 {
            return Err(PolicyError::Invalid("security: network prefixes are at most 32 (IPv4) and 128 (IPv6)".into()));
        }
        if !(0.0..=1.0).contains(&sec.growth_share) || sec.growth_waves == 0 {
            return Err(PolicyError::Invalid("security: growth_share is 0–1 and growth_waves positive".into()));
        }
        let d = &self.delivery;
        if d.speed_levels_per_minute.len() != 5 || d.speed_levels_per_minute.contains(&0) {
            return Err(PolicyError::Invalid(
                "delivery.speed_levels_per_minute must name 5 positive rates (levels 0–4)".into(),
            ));
        }
        if d.max_attempts == 0 || d.retry_base_ms == 0 || d.retry_max_ms < d.retry_base_ms {
            return Err(PolicyError::Invalid(
                "delivery: max_attempts and retry_base_ms must be positive, retry_max_ms ≥ retry_base_ms".into(),
            ));
        }
        if d.flash_min_seconds == 0 || u64::from(d.flash_max_hours) * 3600 < u64::from(d.flash_min_seconds) {
            return Err(PolicyError::Invalid(
                "delivery: flash_min_seconds must be positive and below flash_max_hours".into(),
            ));
        }
        if d.external_lease_seconds == 0 {
            return Err(PolicyError::Invalid("delivery.external_lease_seconds must be positive".into()));
        }
        if let Some((name, _)) = d.channel_per_minute.iter().find(|(_, v)| **v == 0) {
            return Err(PolicyError::Invalid(format!("delivery.channel_per_minute.{name} must be positive")));
        }
        let console = &self.console;
        if console.session_hours == 0 || console.max_failures == 0 || console.lock_minutes == 0 {
            return Err(PolicyError::Invalid(
                "console: session_hours, max_failures and lock_minutes must be positive".into(),
            ));
        }
        let sch = &self.schedule;
        if sch.max_horizon_days == 0 || sch.min_interval_minutes == 0 || sch.claim_lease_seconds == 0 {
            return Err(PolicyError::Invalid(
                "schedule: max_horizon_days, min_interval_minutes and claim_lease_seconds must be positive".into(),
            ));
        }
        if let Err(e) = crate::schedule::TimeZone::parse(&sch.default_time_zone) {
            return Err(PolicyError::Invalid(format!("schedule.default_time_zone: {}", e.message)));
        }
        Ok(())
    }

    pub fn tier(&self, kind: WorkspaceKind) -> &TierPolicy {
        match kind {
            WorkspaceKind::Personal => &self.tiers.personal,
            WorkspaceKind::Enterprise => &self.tiers.enterprise,
            WorkspaceKind::Api => &self.tiers.api,
        }
    }

    /// The start of the local day that contains `now`, and the start of the next.
    pub fn day_bounds(&self, now: crate::Millis) -> (crate::Millis, crate::Millis) {
        const DAY: i64 = 86_400_000;
        let offset = i64::from(self.day_utc_offset_hours) * 3_600_000;
        let start = (now + offset).div_euclid(DAY) * DAY - offset;
        (start, start + DAY)
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_matches_the_mission() {
        let p = Policy::builtin();
        assert_eq!(p.tiers.personal.max_recipients, Some(200));
        assert_eq!(p.tiers.personal.sends_per_day, Some(5));
        assert_eq!(p.tiers.enterprise.max_recipients, None);
        assert_eq!(p.tiers.enterprise.approval_above(), Some(500));
        assert_eq!(p.tiers.enterprise.approvers_needed(500), 0);
        assert_eq!(p.tiers.enterprise.approvers_needed(501), 1);
        assert_eq!(p.tiers.enterprise.approvers_needed(5_001), 2);
        assert_eq!(p.tiers.personal.new_account_days, 15);
        assert_eq!(p.tiers.personal.recall_seconds, Some(120));
        assert_eq!(p.tiers.enterprise.signature.as_deref(), Some("来自{name}"));
        assert_eq!(p.tiers.api.contact_caps.windows(), [(4, 30, "month")]);
        assert_eq!(p.security.cooldown_hours, 4);
        assert_eq!(p.tiers.api.recipient_limit(None), Some(500));
        assert_eq!(p.tiers.api.recipient_limit(Some("pro")), Some(10_000));
        assert!(!p.tiers.personal.allows_type(ContentType::File));
        assert!(!p.tiers.personal.scheduling && p.tiers.enterprise.scheduling);
        assert_eq!(p.schedule.default_time_zone, "Asia/Shanghai");
        assert!(Policy::from_toml_str("[schedule]\ndefault_time_zone = \"Mars/Olympus\"\n").is_err());
        assert!(Policy::from_toml_str("[schedule]\nmin_interval_minutes = 0\n").is_err());
    }

    #[test]
    fn delivery_defaults_and_retry_delays() {
        let d = Policy::builtin().delivery;
        assert_eq!(d.retention_hours, 72);
        assert_eq!(d.speed_level(0), Some(800_000));
        assert_eq!(d.speed_level(4), Some(100_000));
        assert_eq!(d.speed_level(5), None);
        // Attempt 1 waits 0.5–1 s, attempt 3 2–4 s; the cap holds with any jitter.
        assert_eq!(d.retry_delay_ms(1, 0.0), 500);
        assert_eq!(d.retry_delay_ms(1, 0.999_999), 999);
        assert_eq!(d.retry_delay_ms(3, 0.0), 2_000);
        assert_eq!(d.retry_delay_ms(40, 1.0), 600_000);
        assert!(Policy::from_toml_str("[delivery]\nspeed_levels_per_minute = [1, 2]\n").is_err());
        assert!(Policy::from_toml_str("[delivery.channel_per_minute]\nemail = 0\n").is_err());
        let p = Policy::from_toml_str("[delivery.channel_per_minute]\nemail = 600\n").unwrap();
        assert_eq!(p.delivery.channel_per_minute.get("email"), Some(&600));
    }

    #[test]
    fn overrides_merge_and_are_checked() {
        let p = Policy::from_toml_str("[tiers.personal]\nsends_per_day = 3\n").unwrap();
        assert_eq!(p.tiers.personal.sends_per_day, Some(3));
        assert_eq!(p.tiers.personal.max_recipients, Some(200));
        assert!(Policy::from_toml_str("[tiers.personal]\nsend_per_day = 3\n").is_err());
        assert!(Policy::from_toml_str("[tiers.personal]\ncontent_types = [\"video\"]\n").is_err());
    }

    #[test]
    fn day_bounds_use_the_offset() {
        let p = Policy::builtin();
        // 2026-11-21T15:59:59Z is 23:59:59 in UTC+8; 16:00Z is the next day.
        let t = 1_795_276_799_000;
        let (start, end) = p.day_bounds(t);
        assert_eq!(end - start, 86_400_000);
        assert_eq!(end, t + 1000);
        assert!(start <= t && t < end);
    }
}
