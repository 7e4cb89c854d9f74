//! Fakes and harness shared by the integration tests (`mod support;` in each test
//! file): the real Envoy binary, the real `crossmesh` binary, tiny HTTP backends that
//! stand in for pods, manifest writers, and condition polling.
//!
//! Parallel tests never share addresses: each claims its own `127.A.B.0/24` subnet
//! ([`net::Subnet`]) and its own free ports ([`net::free_port`]).
#![allow(dead_code)]

pub mod backend;
pub mod control_plane;
pub mod envoy;
pub mod grpc;
pub mod http;
pub mod in_pod;
pub mod manifests;
pub mod net;
pub mod scenario;
pub mod shop;
pub mod tls;
pub mod token_issuer;
pub mod websocket;

use std::future::Future;
use std::time::{Duration, Instant};

/// Default deadline for conditions that depend on a push reaching Envoy.
pub const CONVERGE: Duration = Duration::from_secs(20);

/// Poll `check` every 50 ms until it returns `Ok`, or panic after `timeout` with
/// `what` and the last error. Integration tests wait on conditions with this, never on
/// fixed sleeps.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let last = match check().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Print the tail of a log file on stderr, under a header naming it. Used by process
/// guards when a test panics so the failing run shows Envoy's or crossmesh's view.
pub fn print_log_tail(what: &str, path: &std::path::Path, max_lines: usize) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read log: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(max_lines);
    eprintln!(
        "----- {what}: last {} of {} lines of {} -----",
        lines.len() - from,
        lines.len(),
        path.display()
    );
    for l in &lines[from..] {
        eprintln!("{l}");
    }
    eprintln!("----- end of {what} -----");
}
