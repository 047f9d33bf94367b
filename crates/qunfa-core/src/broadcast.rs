//! The broadcast state machine.

use crate::{contact::Channel, Code};

/// Where a broadcast is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BroadcastState {
    /// Being composed; preflight may run any number of times.
    Draft,
    /// Submitted, waiting for a reviewer's approval.
    PendingApproval,
    /// Waiting for its time (one run), or running on a cron (a recurring
    /// parent, which makes a broadcast per run and never sends itself).
    Scheduled,
    /// A scheduled run refused at its time: the verdicts that blocked it are recorded.
    Blocked,
    /// Audience frozen, batches queued or in flight.
    Sending,
    /// Sending stopped by an operator; its batches wait until it is resumed.
    Paused,
    /// Every batch is done: each recipient has its delivery record.
    Completed,
    /// Stopped before dispatch (rejected or cancelled).
    Cancelled,
}

impl BroadcastState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::PendingApproval => "pending_approval",
            Self::Scheduled => "scheduled",
            Self::Blocked => "blocked",
            Self::Sending => "sending",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Result<Self, Code> {
        Ok(match s {
            "draft" => Self::Draft,
            "pending_approval" => Self::PendingApproval,
            "scheduled" => Self::Scheduled,
            "blocked" => Self::Blocked,
            "sending" => Self::Sending,
            "paused" => Self::Paused,
            "completed" => Self::Completed,
            "cancelled" => Self::Cancelled,
            _ => return Err(Code::Internal),
        })
    }
    /// Whether a member may send it (submit) from this state. A scheduled
    /// broadcast is submitted by the scheduler; cancel the schedule to send it now.
    pub fn may_submit(self) -> bool {
        self == Self::Draft
    }
    /// Whether the content and audience may still change.
    pub fn is_editable(self) -> bool {
        self == Self::Draft
    }
}

/// Priority classes of the delivery queue: lower runs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Transactional = 0,
    Chat = 1,
    Broadcast = 2,
}

impl Priority {
    pub fn parse(s: &str) -> Result<Self, Code> {
        match s {
            "transactional" => Ok(Self::Transactional),
            "chat" => Ok(Self::Chat),
            "broadcast" => Ok(Self::Broadcast),
            _ => Err(Code::BadRequest),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transactional => "transactional",
            Self::Chat => "chat",
            Self::Broadcast => "broadcast",
        }
    }
    pub fn from_i64(v: i64) -> Self {
        match v {
            0 => Self::Transactional,
            1 => Self::Chat,
            _ => Self::Broadcast,
        }
    }
}

/// When a fallback step sends: on the previous channel's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackWhen {
    /// The inbox message was not read (in time): "email if no inbox read within N hours".
    Unread,
    /// The previous channel failed or was filtered (no address, no consent,
    /// bounced): "SMS if the email bounces".
    Failed,
}

impl FallbackWhen {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unread => "unread",
            Self::Failed => "failed",
        }
    }
}

/// One step of a fallback order: after the previous channel has had
/// `after_seconds`, send on `channel` to the recipients for whom `when` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FallbackStep {
    pub channel: Channel,
    pub when: FallbackWhen,
    pub after_seconds: u32,
}

impl FallbackStep {
    /// The job condition of this step, with the wait after the previous
    /// channel finished the batch: `unread:inbox:7200000`, `failed:email:600000`.
    pub fn condition(&self, previous: Channel) -> String {
        format!("{}:{}:{}", self.when.as_str(), previous.as_str(), u64::from(self.after_seconds) * 1000)
    }
}

/// Most fallback steps in one broadcast.
pub const MAX_FALLBACK_STEPS: usize = 3;

/// Checks a fallback order against the broadcast's channels: each step names a
/// channel not used before; `unread` follows the inbox (the only channel with
/// reads); waits are 60 s to 7 days. The chain starts from the last of
/// `channels`.
///
/// # Errors
/// `QF-INVALID-FALLBACK` with what is wrong.
pub fn check_fallback(
    channels: &[Channel],
    steps: &[(String, String, u32)],
) -> Result<Vec<FallbackStep>, (Code, String)> {
    let bad = |m: String| (Code::InvalidFallback, m);
    if steps.len() > MAX_FALLBACK_STEPS {
        return Err(bad(format!("at most {MAX_FALLBACK_STEPS} fallback steps")));
    }
    let Some(mut previous) = channels.last().copied() else {
        return Err(bad("a fallback needs a channel to fall back from".into()));
    };
    let mut used: Vec<Channel> = channels.to_vec();
    let mut out = Vec::with_capacity(steps.len());
    for (i, (channel, when, after_seconds)) in steps.iter().enumerate() {
        let channel =
            Channel::parse(channel).map_err(|_| bad(format!("step {}: unknown channel {channel:?}", i + 1)))?;
        if channel == Channel::Inbox {
            return Err(bad(format!("step {}: the inbox is never a fallback; name it in channels", i + 1)));
        }
        if used.contains(&channel) {
            return Err(bad(format!("step {}: the {} channel is already used", i + 1, channel.as_str())));
        }
        let when = match when.as_str() {
            "unread" if previous == Channel::Inbox => FallbackWhen::Unread,
            "unread" => {
                return Err(bad(format!(
                    "step {}: `unread` needs the inbox before it (only the inbox has reads), not {}",
                    i + 1,
                    previous.as_str()
                )))
            }
            "failed" => FallbackWhen::Failed,
            other => return Err(bad(format!("step {}: `when` must be unread or failed, not {other:?}", i + 1))),
        };
        if !(60..=604_800).contains(after_seconds) {
            return Err(bad(format!("step {}: after_seconds must be between 60 and 604800", i + 1)));
        }
        out.push(FallbackStep { channel, when, after_seconds: *after_seconds });
        used.push(channel);
        previous = channel;
    }
    Ok(out)
}
