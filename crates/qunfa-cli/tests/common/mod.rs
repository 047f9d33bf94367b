//! What the end-to-end tests of the `qunfa` binary share: running it with a
//! clean environment, a server process on a free port that is killed when the
//! test ends, and the text of an answer.
#![allow(dead_code)] // each test file uses a part

use std::{
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// The binary, in `dir`, with no `QUNFA_*` setting of the caller's environment.
pub fn qunfa(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qunfa"));
    c.args(args).current_dir(dir).env("QUNFA_LOG", "warn");
    for (k, _) in std::env::vars() {
        if k.starts_with("QUNFA_") && k != "QUNFA_LOG" {
            c.env_remove(k);
        }
    }
    c
}

pub fn run(dir: &Path, args: &[&str]) -> Output {
    qunfa(dir, args).output().expect("run qunfa")
}

/// stdout and stderr together.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A server process, killed when dropped.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something listens on `listen`.
pub fn wait_listening(listen: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(listen).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `qunfa serve` in `dir` (data in `dir/data`) with `policy` (TOML, written
/// to `dir/policy.toml`) on a free port; returns the server and its URL.
pub fn serve(dir: &Path, admin_token: &str, policy: &str) -> (Server, String) {
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let args =
        ["serve", "--listen", &listen, "--data-dir", "data", "--admin-token", admin_token, "--policy", "policy.toml"];
    let server = Server(qunfa(dir, &args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    wait_listening(&listen);
    (server, format!("http://{listen}"))
}
