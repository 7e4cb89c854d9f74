//! `crossmesh demo --keep` as a user runs it: after its answers it prints the
//! commands to try and keeps the mesh up; the printed gateway command reaches the
//! pod of the cluster its Host names, the printed debug endpoint answers; SIGINT
//! (Ctrl-C) stops the demo with exit status 0, and the control plane and the
//! gateway go with it. Uses the demo's fixed addresses (gateway port 8080, pods on
//! 127.0.N0.1:9080), under the same machine-wide lock as tests/e2e_demo.rs.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Kills the demo if the test ends early.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `http://IP:PORT` in a printed command line, and the Host header if any.
fn parse_curl(line: &str) -> (SocketAddr, Option<String>, String) {
    let url = line
        .split_whitespace()
        .map(|w| w.trim_matches('\''))
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"));
    let rest = &url["http://".len()..];
    let (addr, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = line
        .split("-H 'Host: ")
        .nth(1)
        .and_then(|h| h.split('\'').next())
        .map(str::to_string);
    (addr.parse().unwrap(), host, path.to_string())
}

fn answers(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_keep_serves_until_ctrl_c() {
    let _lock = support::net::MachineLock::acquire("demo", Duration::from_secs(300));
    let mut demo = Demo(
        Command::new(support::control_plane::crossmesh_bin())
            .args(["demo", "--keep"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run crossmesh demo --keep"),
    );
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = demo.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = demo.0.stderr.take().unwrap();
    let err_log = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
            .join("\n")
    });

    // Read until the last printed command (Envoy's admin config_dump).
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !out
        .iter()
        .any(|l: &String| l.contains("/config_dump") && !l.contains("proxyID"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => out.push(l),
            Err(_) => panic!(
                "no commands to try within 120 s; stdout so far:\n{}",
                out.join("\n")
            ),
        }
    }
    let text = out.join("\n");
    assert!(text.contains("ok: all 3 hosts"), "{text}");
    assert!(text.contains("keeps running until Ctrl-C"), "{text}");

    // The printed gateway command for cluster3 reaches cluster3's pod.
    let line = out
        .iter()
        .find(|l| l.trim_start().starts_with("curl") && l.contains("Host: cluster3.imroc.cc"))
        .unwrap_or_else(|| panic!("no curl for cluster3.imroc.cc in:\n{text}"));
    let (gw, host, path) = parse_curl(line);
    let r = support::http::get(gw, host.as_deref().unwrap(), &path)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{line}: {}", r.body);
    assert_eq!(r.body.trim(), "cluster3", "{line}");
    let pod = r
        .headers
        .get("x-demo-pod")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        pod.starts_with("test/cluster3-"),
        "{line}: answered by {pod:?}"
    );

    // The printed registryz command answers with the three clusters' pods.
    let line = out
        .iter()
        .find(|l| l.contains("/debug/registryz"))
        .unwrap_or_else(|| panic!("no registryz command in:\n{text}"));
    let (debug, _, path) = parse_curl(line);
    let r = support::http::get(debug, "localhost", &path).await.unwrap();
    assert_eq!(r.status, 200, "{line}");
    for c in ["cluster1", "cluster2", "cluster3"] {
        assert!(
            r.body.contains(&format!("\"{c}\"")),
            "{line}: no {c} in {}",
            r.body
        );
    }
    let admin_line = out.iter().find(|l| l.contains("/clusters")).unwrap();
    let (admin, _, _) = parse_curl(admin_line);

    // Still serving a while later: the demo did not exit after its answers.
    let r = support::http::get(gw, "cluster1.imroc.cc", "/")
        .await
        .unwrap();
    assert_eq!(r.body.trim(), "cluster1");

    // Ctrl-C: SIGINT to the demo process only, as the terminal sends it to the
    // foreground process group whose leader the demo is.
    let st = Command::new("kill")
        .args(["-INT", &demo.0.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = demo.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "demo still running 20 s after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut rest: Vec<String> = rx.try_iter().collect();
    out.append(&mut rest);
    let stderr = err_log.join().unwrap();
    assert_eq!(status.code(), Some(0), "{}\n{stderr}", out.join("\n"));
    assert!(
        out.iter().any(|l| l.contains("stopping")),
        "{}",
        out.join("\n")
    );
    // The control plane, the gateway and the pods went with it.
    for (what, addr) in [
        ("crossmesh debug", debug),
        ("envoy admin", admin),
        ("gateway", gw),
    ] {
        assert!(
            !answers(addr),
            "{what} {addr} still answers after the demo exited"
        );
    }
}

/// Ctrl-C while the demo is still starting (the control plane is up, the gateway
/// is starting) stops the demo and everything it started: nothing is left
/// listening, and the status is 130 (interrupted) or, if the answers were
/// already printed, theirs.
#[test]
fn ctrl_c_during_start_leaves_nothing_running() {
    let _lock = support::net::MachineLock::acquire("demo", Duration::from_secs(300));
    let mut demo = Demo(
        Command::new(support::control_plane::crossmesh_bin())
            .args(["demo", "--keep"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run crossmesh demo --keep"),
    );
    let mut lines = BufReader::new(demo.0.stdout.take().unwrap()).lines();
    // `  crossmesh   xDS 127.0.0.1:P, debug http://127.0.0.1:Q/debug/configz ...`
    let debug: SocketAddr = loop {
        let line = lines
            .next()
            .expect("demo output ended before the control plane started")
            .unwrap();
        if let Some(rest) = line.split("debug http://").nth(1) {
            break rest.split('/').next().unwrap().parse().unwrap();
        }
    };
    let st = Command::new("kill")
        .args(["-INT", &demo.0.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = demo.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "demo still running 20 s after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        matches!(status.code(), Some(130) | Some(0)),
        "{status}: {}",
        rest.join("\n")
    );
    assert!(
        !answers(debug),
        "crossmesh serve {debug} outlived the interrupted demo"
    );
    assert!(
        !answers("127.0.0.1:8080".parse().unwrap()),
        "the gateway outlived the interrupted demo"
    );
}
