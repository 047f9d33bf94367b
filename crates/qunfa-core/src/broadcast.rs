//! The broadcast state machine.

use crate::Code;

/// Where a broadcast is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BroadcastState {
    /// Being composed; preflight may run any number of times.
    Draft,
    /// Submitted, waiting for a reviewer's approval.
    PendingApproval,
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
            "sending" => Self::Sending,
            "paused" => Self::Paused,
            "completed" => Self::Completed,
            "cancelled" => Self::Cancelled,
            _ => return Err(Code::Internal),
        })
    }
    /// Whether a send (submit) may start from this state.
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
