//! qunfa-store
