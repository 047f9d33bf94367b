//! Domain types and pure rules of qunfa.
//!
//! Everything here is deterministic and does no I/O: typed values that are parsed
//! once at the edge (`TagPath`, `MessageText`, `EmailAddress`, …), the policy that
//! holds every limit, the preflight rule check that turns a proposed send into a
//! list of verdicts with stable codes, message templates, import parsing and the
//! audit hash chain. Storage, HTTP and time all live in other crates; the current
//! time is always passed in.

pub mod abtest;
pub mod audit;
pub mod broadcast;
pub mod channel;
pub mod codes;
pub mod contact;
pub mod health;
pub mod import;
pub mod message;
pub mod policy;
pub mod preflight;
pub mod schedule;
pub mod sign;
pub mod stats;
pub mod tag;
pub mod template;
pub mod workspace;

pub use codes::Code;
pub use policy::Policy;

/// Milliseconds since the Unix epoch. Every timestamp in qunfa is one of these.
pub type Millis = i64;

/// Dense per-workspace contact id, the key of every audience bitmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContactIdx(pub u32);
