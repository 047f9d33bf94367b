//! Loopback stand-ins for the peers qunfa's channels talk to. Each one binds
//! `127.0.0.1:0`, records what it received, and can be told to misbehave
//! (refuse, drop the connection, hang, answer late, redirect) so tests and
//! benchmarks exercise the real network path.

pub mod http;
pub mod sms;
pub mod smtp;
pub mod wecom;
