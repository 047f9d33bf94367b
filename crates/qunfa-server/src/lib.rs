//! qunfa-server
