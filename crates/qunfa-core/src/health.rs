//! Account health: the six dimensions of a sender account (login devices,
//! network changes, forward ratio, contact deletions, reports, payment
//! behaviour) plus violations, scored into healthy / watch / sandbox /
//! suspended. Pure: the store gathers the numbers, this decides.

use crate::policy::HealthPolicy;

/// The health state of a sender account, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HealthState {
    Healthy,
    Watch,
    Sandbox,
    Suspended,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Watch => "watch",
            Self::Sandbox => "sandbox",
            Self::Suspended => "suspended",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "healthy" => Some(Self::Healthy),
            "watch" => Some(Self::Watch),
            "sandbox" => Some(Self::Sandbox),
            "suspended" => Some(Self::Suspended),
            _ => None,
        }
    }

    pub fn zh(self) -> &'static str {
        match self {
            Self::Healthy => "健康",
            Self::Watch => "观察",
            Self::Sandbox => "沙盒监控",
            Self::Suspended => "暂停群发",
        }
    }
}

/// What the store measured over the policy's window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthInputs {
    /// Distinct devices the member's requests came from.
    pub devices: u32,
    /// Logins from a network the member had not used before (after the first).
    pub network_changes: u32,
    /// Recipients reached by the member's broadcasts.
    pub recipients: u64,
    pub forwards: u64,
    /// Recipients who blocked the member or unsubscribed after one of its messages.
    pub deletions: u64,
    pub reports: u64,
    /// The latest payment signal: risk 0 (good) to 1 (fraud), if any.
    pub payment_risk: Option<f64>,
    /// Violations: sends refused for blocked content, content reviews rejected.
    pub violations: u32,
}

/// One dimension that cost points.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthReason {
    /// `devices`, `network_changes`, `forward_ratio`, `deletion_rate`,
    /// `report_rate`, `payment`, `violations`.
    pub dimension: &'static str,
    pub value: f64,
    pub limit: f64,
    pub penalty: f64,
    pub message: String,
    pub message_zh: String,
}

/// A score with its state and reasons.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthScore {
    pub score: f64,
    pub state: HealthState,
    pub reasons: Vec<HealthReason>,
}

/// Scores `inputs`: 100 minus the penalty of every dimension over its limit
/// (a rate's penalty grows with how far over it is, up to twice the base).
pub fn score(p: &HealthPolicy, i: &HealthInputs) -> HealthScore {
    let mut reasons = Vec::new();
    // How far over the limit, as a factor 1–2 of the base penalty.
    let over = |value: f64, limit: f64| if limit <= 0.0 { 2.0 } else { (value / limit).clamp(1.0, 2.0) };
    if i.devices > p.devices_max {
        let extra = f64::from(i.devices - p.devices_max);
        reasons.push(HealthReason {
            dimension: "devices",
            value: f64::from(i.devices),
            limit: f64::from(p.devices_max),
            penalty: p.device_penalty * extra,
            message: format!("{} login devices in {} days (more than {}).", i.devices, p.window_days, p.devices_max),
            message_zh: format!("{} 天内登录设备 {} 台（超过 {} 台）。", p.window_days, i.devices, p.devices_max),
        });
    }
    if i.network_changes > p.network_changes_max {
        let extra = f64::from(i.network_changes - p.network_changes_max);
        reasons.push(HealthReason {
            dimension: "network_changes",
            value: f64::from(i.network_changes),
            limit: f64::from(p.network_changes_max),
            penalty: p.network_change_penalty * extra,
            message: format!(
                "Logins from {} new networks in {} days (more than {}).",
                i.network_changes, p.window_days, p.network_changes_max
            ),
            message_zh: format!(
                "{} 天内 IP 变动 {} 次（超过 {} 次）。",
                p.window_days, i.network_changes, p.network_changes_max
            ),
        });
    }
    if i.recipients >= p.min_recipients && i.recipients > 0 {
        let n = i.recipients as f64;
        let rates = [
            ("forward_ratio", i.forwards, p.forward_ratio_max, p.forward_penalty, "forwarded", "转发比率"),
            (
                "deletion_rate",
                i.deletions,
                p.deletion_rate_max,
                p.deletion_penalty,
                "blocked or unsubscribed",
                "删除/屏蔽率",
            ),
            ("report_rate", i.reports, p.report_rate_max, p.report_penalty, "reported", "举报率"),
        ];
        for (dimension, count, limit, base, what, what_zh) in rates {
            let rate = count as f64 / n;
            if rate > limit {
                reasons.push(HealthReason {
                    dimension,
                    value: rate,
                    limit,
                    penalty: base * over(rate, limit),
                    message: format!(
                        "{count} of {} recipients {what} ({:.2}%, limit {:.2}%).",
                        i.recipients,
                        rate * 100.0,
                        limit * 100.0
                    ),
                    message_zh: format!(
                        "{what_zh} {:.2}%（{count}/{}，上限 {:.2}%）。",
                        rate * 100.0,
                        i.recipients,
                        limit * 100.0
                    ),
                });
            }
        }
    }
    if let Some(risk) = i.payment_risk.filter(|r| *r > 0.0) {
        let risk = risk.clamp(0.0, 1.0);
        reasons.push(HealthReason {
            dimension: "payment",
            value: risk,
            limit: 0.0,
            penalty: p.payment_penalty * risk,
            message: format!("Payment behaviour flagged with risk {risk:.2}."),
            message_zh: format!("支付行为异常（风险 {risk:.2}）。"),
        });
    }
    if i.violations > 0 {
        reasons.push(HealthReason {
            dimension: "violations",
            value: f64::from(i.violations),
            limit: 0.0,
            penalty: p.violation_penalty * f64::from(i.violations),
            message: format!(
                "{} violation(s) in {} days (blocked content, rejected reviews).",
                i.violations, p.window_days
            ),
            message_zh: format!("{} 天内违规 {} 次（违禁内容、审核驳回）。", p.window_days, i.violations),
        });
    }
    let score = (100.0 - reasons.iter().map(|r| r.penalty).sum::<f64>()).clamp(0.0, 100.0);
    HealthScore { score, state: state_of(p, score), reasons }
}

/// The state a score puts an account in.
pub fn state_of(p: &HealthPolicy, score: f64) -> HealthState {
    if score < p.suspend_below {
        HealthState::Suspended
    } else if score < p.sandbox_below {
        HealthState::Sandbox
    } else if score < p.watch_below {
        HealthState::Watch
    } else {
        HealthState::Healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;

    #[test]
    fn clean_account_is_healthy() {
        let p = Policy::builtin().health;
        let s = score(&p, &HealthInputs { devices: 2, recipients: 10_000, forwards: 100, ..Default::default() });
        assert_eq!((s.score, s.state), (100.0, HealthState::Healthy));
        assert!(s.reasons.is_empty());
    }

    #[test]
    fn each_dimension_costs_by_the_policy() {
        let p = Policy::builtin().health;
        // 5 devices: 2 over × 10 = 20 → 80, still healthy (watch is below 80).
        let s = score(&p, &HealthInputs { devices: 5, ..Default::default() });
        assert_eq!((s.score, s.state), (80.0, HealthState::Healthy));
        // Reports 0.4% of 1,000 = twice the 0.2% limit → 2 × 30 = 60 → 40: sandbox.
        let s = score(&p, &HealthInputs { recipients: 1000, reports: 4, ..Default::default() });
        assert_eq!(s.reasons[0].dimension, "report_rate");
        assert!((s.score - 40.0).abs() < 1e-9);
        assert_eq!(s.state, HealthState::Sandbox);
        // Below min_recipients, rates do not count.
        let s = score(&p, &HealthInputs { recipients: 50, reports: 40, ..Default::default() });
        assert_eq!(s.state, HealthState::Healthy);
        // Deletions 3% (limit 2%) → 25 × 1.5 = 37.5; payment 0.5 → 20: 42.5 → sandbox.
        let s =
            score(&p, &HealthInputs { recipients: 1000, deletions: 30, payment_risk: Some(0.5), ..Default::default() });
        assert!((s.score - 42.5).abs() < 1e-9, "{}", s.score);
        // Five violations: 75 points → 25: suspended.
        let s = score(&p, &HealthInputs { violations: 5, ..Default::default() });
        assert_eq!((s.score, s.state), (25.0, HealthState::Suspended));
        // One violation: 85, healthy; two: 70, watch.
        assert_eq!(score(&p, &HealthInputs { violations: 2, ..Default::default() }).state, HealthState::Watch);
    }
}
