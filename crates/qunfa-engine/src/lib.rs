//! qunfa-engine
