//! qunfa-audience
