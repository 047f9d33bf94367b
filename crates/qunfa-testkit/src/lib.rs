//! Loopback stand-ins for the peers qunfa's channels talk to (and a
//! WebDriver client for the console's browser tests). Each one binds
//! `127.0.0.1:0`, records what it received, and can be told to misbehave
//! (refuse, drop the connection, hang, answer late, redirect) so tests and
//! benchmarks exercise the real network path.

pub mod http;
pub mod sms;
pub mod smtp;
pub mod webdriver;
pub mod wecom;

use std::sync::{Mutex, MutexGuard};

/// A lock that survives a panicked holder (a failed test must not hide the
/// recordings from the next assertion).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A stand-in's server task: stopped when its owner is dropped.
pub(crate) struct Serving(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves `app` on `127.0.0.1:0`: its address, and the task (stopped on drop).
pub(crate) async fn serve_loopback(app: axum::Router) -> (std::net::SocketAddr, Serving) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    (
        addr,
        Serving(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        })),
    )
}
