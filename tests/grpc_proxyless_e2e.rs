//! Proxyless gRPC clients end to end with the real client library: a Python
//! grpcio client (`tests/grpc/xds_client.py`, gRPC's built-in xDS resolver)
//! whose bootstrap is `crossmesh bootstrap --role grpc` calls
//! `xds:///echo.test.svc.cluster.local:7070`; the servers are plain grpcio
//! servers (`tests/grpc/echo_server.py`), one pod in each of two member
//! clusters, whose reply names the pod.
//!
//! - `traffic_management`: both clusters answer; a header-matched route; a
//!   weight split measured over 1,000 calls; a route timeout; an injected
//!   fault; consistentHash on a header as ring hash (each key to one pod);
//!   locality failover priority by cluster, then the local cluster's
//!   endpoints removed and the client fails over to the other cluster; a
//!   name dialled before its Service exists answers once it appears;
//!   `/debug/config_dump` shows the API listener. No stream records a NACK,
//!   and `pilot_total_xds_rejects` counts none.
//! - `nack_is_recorded_and_not_resent`: a header regex RE2 refuses (gRPC
//!   compiles route regexes with RE2; crossmesh's validation accepts it) is
//!   NACKed by the client; `/debug/syncz` shows the NACK with gRPC's text, and
//!   the stream sends no further response (its nonce counter stands still)
//!   until the config changes.
//!
//! grpcio's xDS client speaks state of the world only (its C core has no
//! incremental xDS), so both tests are SotW; the test checks the mode it used.
//!
//! Needs pip `grpcio` in ./.venv (scripts/setup installs it); skips, saying so,
//! without it.

mod support;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use support::control_plane::{bootstrap, ControlPlane};
use support::grpc::{python, script};
use support::manifests::{self, cluster, Mesh};
use support::net::Subnet;
use support::wait_for;

const NS: &str = "test";
const PORT: u16 = 7070;
const HOST: &str = "echo.test.svc.cluster.local";
const CONVERGE: Duration = Duration::from_secs(30);

fn target() -> String {
    format!("xds:///{HOST}:{PORT}")
}

/// A child process killed on drop; its log's tail printed if the test panics.
struct Proc {
    what: String,
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            support::print_log_tail(&self.what, &self.log, 400);
        }
        let _ = self.child.start_kill();
    }
}

/// One echo pod's server, listening once this returns.
async fn echo_server(py: &Path, dir: &Path, name: &str, ip: Ipv4Addr) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let f = std::fs::File::create(&log).unwrap();
    let child = Command::new(py)
        .arg(script("echo_server.py"))
        .args(["--address", &format!("{ip}:{PORT}"), "--name", name])
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .kill_on_drop(true)
        .spawn()
        .expect("start echo_server.py");
    let p = Proc {
        what: name.into(),
        child,
        log: log.clone(),
    };
    wait_for(&format!("{name} listening"), CONVERGE, || {
        let log = log.clone();
        async move {
            let s = std::fs::read_to_string(&log).unwrap_or_default();
            if s.contains("listening") {
                Ok(())
            } else {
                Err(s)
            }
        }
    })
    .await;
    p
}

/// The long-lived client process and its command pipe.
struct Client {
    _proc: Proc,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

/// What a batch of calls did.
#[derive(Debug)]
struct Batch {
    pods: Vec<(String, u64)>,
    codes: Vec<(String, u64)>,
    max_seconds: f64,
    details: Vec<String>,
}

impl Batch {
    fn pod(&self, name: &str) -> u64 {
        self.pods
            .iter()
            .find(|(p, _)| p == name)
            .map_or(0, |(_, n)| *n)
    }
    fn code(&self, name: &str) -> u64 {
        self.codes
            .iter()
            .find(|(c, _)| c == name)
            .map_or(0, |(_, n)| *n)
    }
}

impl Client {
    async fn start(py: &Path, dir: &Path, bootstrap_file: &Path) -> Client {
        let log = dir.join("client.log");
        let f = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(py)
            .arg(script("xds_client.py"))
            .env("GRPC_XDS_BOOTSTRAP", bootstrap_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(f)
            .kill_on_drop(true)
            .spawn()
            .expect("start xds_client.py");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(CONVERGE, stdout.next_line())
            .await
            .expect("xds_client.py ready in time")
            .expect("read xds_client.py")
            .expect("xds_client.py exited");
        assert!(first.contains("ready"), "{first}");
        Client {
            _proc: Proc {
                what: "xds_client.py".into(),
                child,
                log,
            },
            stdin,
            stdout,
        }
    }

    async fn calls(&mut self, n: u32, metadata: &[(&str, &str)], timeout: f64) -> Batch {
        self.calls_to(&target(), n, metadata, timeout).await
    }

    async fn calls_to(
        &mut self,
        target: &str,
        n: u32,
        metadata: &[(&str, &str)],
        timeout: f64,
    ) -> Batch {
        let cmd = json!({
            "target": target,
            "calls": n,
            "metadata": metadata.iter().map(|(k, v)| [k, v]).collect::<Vec<_>>(),
            "timeout": timeout,
        });
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .expect("write to xds_client.py");
        let line = tokio::time::timeout(Duration::from_secs(600), self.stdout.next_line())
            .await
            .expect("xds_client.py answers")
            .expect("read xds_client.py")
            .expect("xds_client.py exited");
        let v: Value = serde_json::from_str(&line).expect("xds_client.py prints JSON");
        let counts = |k: &str| -> Vec<(String, u64)> {
            v[k].as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default()
        };
        Batch {
            pods: counts("pods"),
            codes: counts("codes"),
            max_seconds: v["max_seconds"].as_f64().unwrap_or(0.0),
            details: v["details"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d.as_str().map(String::from))
                .collect(),
        }
    }

    /// Batches of `n` calls until one satisfies `ok`; returns it.
    async fn until(
        &mut self,
        what: &str,
        n: u32,
        metadata: &[(&str, &str)],
        timeout: f64,
        ok: impl Fn(&Batch) -> bool,
    ) -> Batch {
        let start = Instant::now();
        loop {
            let b = self.calls(n, metadata, timeout).await;
            if ok(&b) {
                return b;
            }
            assert!(
                start.elapsed() < CONVERGE,
                "timed out after {CONVERGE:?} waiting for {what}; last batch: {b:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Every NACK any stream recorded on `/debug/syncz`, as `proxy type: nack`.
async fn nacks(cp: &ControlPlane) -> Vec<String> {
    let streams = cp.json("/debug/syncz").await.expect("syncz");
    let mut out = Vec::new();
    for s in streams.as_array().into_iter().flatten() {
        for t in s["types"].as_array().into_iter().flatten() {
            if !t["nacked"].is_null() {
                out.push(format!(
                    "{} {}: {}",
                    s["proxy_id"], t["type_url"], t["nacked"]
                ));
            }
        }
    }
    out
}

/// `pilot_total_xds_rejects` summed over types (NACKs this process received).
async fn rejects(cp: &ControlPlane) -> u64 {
    let (_, text) = cp.get("/metrics").await.expect("metrics");
    text.lines()
        .filter(|l| l.starts_with("pilot_total_xds_rejects"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The gRPC client's stream on `/debug/syncz`.
async fn client_stream(cp: &ControlPlane, pod: &str) -> Result<Value, String> {
    let streams = cp.json("/debug/syncz").await?;
    streams
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| {
            s["proxy_id"]
                .as_str()
                .is_some_and(|id| id.contains(&format!("~{pod}.{NS}~")))
        })
        .cloned()
        .ok_or_else(|| format!("no stream of {pod}: {streams}"))
}

/// The largest nonce the stream sent: crossmesh numbers a stream's responses
/// 1, 2, 3, ..., so this counts the responses it sent.
fn responses_sent(stream: &Value) -> u64 {
    stream["types"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["sent_nonce"].as_str()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

struct World {
    _subnet: Subnet,
    mesh: Mesh,
    cp: ControlPlane,
    client: Client,
    _servers: Vec<Proc>,
    _dir: tempfile::TempDir,
}

/// Two clusters, `echo` in each with one pod (`echo-c1` version v1 in
/// cluster1, region r1; `echo-c2` version v2 in cluster2, region r2), its
/// server running; crossmesh serving them; the client (pod `client-0` of
/// cluster1, region r1) started.
async fn world(py: &Path) -> World {
    let subnet = Subnet::claim();
    let dir = tempfile::Builder::new()
        .prefix("crossmesh-grpc-")
        .tempdir()
        .unwrap();
    let mesh = Mesh::new(&[cluster("cluster1", None), cluster("cluster2", None)]);
    for (c, n, region) in [("cluster1", 1u8, "r1"), ("cluster2", 2u8, "r2")] {
        let pod = format!("echo-c{n}");
        let version = format!("v{n}");
        mesh.write_cluster(
            c,
            "echo.yaml",
            &format!(
                "{}---\n{}---\n{}",
                manifests::service(NS, "echo", PORT, PORT, &[("app", "echo")]),
                manifests::node(&format!("node-{c}"), region, &format!("{region}a"), None),
                manifests::pod(
                    NS,
                    &pod,
                    &[("app", "echo"), ("version", &version)],
                    subnet.ip(10 + n),
                    PORT,
                    true,
                    Some(&format!("node-{c}")),
                )
            ),
        );
    }
    let mut servers = Vec::new();
    for n in [1u8, 2] {
        servers.push(echo_server(py, dir.path(), &format!("echo-c{n}"), subnet.ip(10 + n)).await);
    }
    let cp = ControlPlane::start(&mesh.mesh_file).await;
    let b = bootstrap(
        &[
            "bootstrap",
            "--role",
            "grpc",
            "--name",
            "client-0",
            "--namespace",
            NS,
            "--ip",
            &subnet.ip(2).to_string(),
            "--xds-address",
            &cp.xds.to_string(),
            "--cluster-id",
            "cluster1",
            "--locality",
            "r1/r1a",
            "--labels",
            "app=client",
        ]
        .map(String::from),
    );
    let file = dir.path().join("bootstrap.json");
    std::fs::write(&file, b).unwrap();
    let client = Client::start(py, dir.path(), &file).await;
    World {
        _subnet: subnet,
        mesh,
        cp,
        client,
        _servers: servers,
        _dir: dir,
    }
}

const SUBSETS: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: echo
  namespace: test
spec:
  host: echo.test.svc.cluster.local
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
";

fn vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: echo
  namespace: test
spec:
  hosts: [echo.test.svc.cluster.local]
  http:
{http}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_management() {
    let Some(py) = python() else {
        eprintln!("SKIPPED traffic_management: ./.venv has no grpcio (run scripts/setup)");
        return;
    };
    let mut w = world(&py).await;

    // Both clusters answer (round robin over the two endpoints).
    let b = w
        .client
        .until("answers from both clusters", 20, &[], 5.0, |b| {
            b.pod("echo-c1") > 0 && b.pod("echo-c2") > 0
        })
        .await;
    assert_eq!(b.code("OK"), 20, "{b:?}");
    let stream = client_stream(&w.cp, "client-0").await.unwrap();
    assert_eq!(stream["mode"], "sotw", "grpcio's xDS client: {stream}");
    // /debug/config_dump shows what the client holds, as for Envoy: the API
    // listener it asked for, with its HttpConnectionManager decoded.
    let id = stream["proxy_id"].as_str().unwrap().to_string();
    let dump =
        w.cp.json(&format!("/debug/config_dump?proxyID={id}"))
            .await
            .unwrap()
            .to_string();
    for want in [
        "\"echo.test.svc.cluster.local:7070\"",
        "api_listener",
        "HttpConnectionManager",
        "outbound|7070||echo.test.svc.cluster.local",
    ] {
        assert!(dump.contains(want), "config_dump lacks {want}: {dump}");
    }

    // A header-matched route: x-pod: c2 -> subset v2, the rest -> v1.
    w.mesh.write_istio("dr.yaml", SUBSETS);
    w.mesh.write_istio(
        "vs.yaml",
        &vs("  - match:
    - headers:
        x-pod: {exact: c2}
    route:
    - destination: {host: echo.test.svc.cluster.local, subset: v2}
  - route:
    - destination: {host: echo.test.svc.cluster.local, subset: v1}
"),
    );
    w.client
        .until("the default route to v1 only", 20, &[], 5.0, |b| {
            b.pod("echo-c1") == 20
        })
        .await;
    let with = w.client.calls(50, &[("x-pod", "c2")], 5.0).await;
    assert_eq!(with.pod("echo-c2"), 50, "header x-pod: c2 -> v2: {with:?}");
    let without = w.client.calls(50, &[("x-pod", "c1")], 5.0).await;
    assert_eq!(
        without.pod("echo-c1"),
        50,
        "other header -> v1: {without:?}"
    );

    // A weight split, 80/20, measured over 1,000 calls.
    w.mesh.write_istio(
        "vs.yaml",
        &vs("  - route:
    - destination: {host: echo.test.svc.cluster.local, subset: v1}
      weight: 80
    - destination: {host: echo.test.svc.cluster.local, subset: v2}
      weight: 20
"),
    );
    w.client
        .until(
            "the 80/20 split in force",
            50,
            &[("x-pod", "c2")],
            5.0,
            |b| b.pod("echo-c1") > 0,
        )
        .await;
    let b = w.client.calls(1000, &[], 5.0).await;
    assert_eq!(b.code("OK"), 1000, "{b:?}");
    let share = b.pod("echo-c1") as f64 / 1000.0;
    eprintln!("weight split 80/20: v1 answered {share:.3} of 1,000 calls");
    assert!(
        (0.75..=0.85).contains(&share),
        "v1 share {share} outside 0.80 +- 0.05: {b:?}"
    );

    // A route timeout: 3 s, against a server that takes 8 s (the call's own
    // deadline is 20 s). grpcio applies a service-config timeout up to ~1 s
    // early (grpc/grpc#34547, #40633), so the route timeout here is long
    // enough for calls that do not sleep to pass, and the expiry is checked
    // against the server's 8 s, not to the millisecond.
    w.mesh.write_istio(
        "vs.yaml",
        &vs("  - timeout: 3s
    route:
    - destination: {host: echo.test.svc.cluster.local, subset: v1}
"),
    );
    let b = w
        .client
        .until(
            "the 3 s route timeout",
            1,
            &[("sleep-ms", "8000")],
            20.0,
            |b| b.code("DEADLINE_EXCEEDED") == 1,
        )
        .await;
    eprintln!(
        "route timeout 3 s: DEADLINE_EXCEEDED after {:.2} s",
        b.max_seconds
    );
    assert!(
        b.max_seconds < 5.0,
        "DEADLINE_EXCEEDED after {} s: the call's 20 s deadline, not the route's 3 s",
        b.max_seconds
    );
    let fast = w.client.calls(10, &[], 20.0).await;
    assert_eq!(
        fast.pod("echo-c1"),
        10,
        "fast calls still answered: {fast:?}"
    );

    // An injected fault: abort every call with DATA_LOSS.
    w.mesh.write_istio(
        "vs.yaml",
        &vs("  - fault:
      abort:
        grpcStatus: DATA_LOSS
        percentage: {value: 100}
    route:
    - destination: {host: echo.test.svc.cluster.local, subset: v1}
"),
    );
    let b = w
        .client
        .until("the injected fault", 20, &[], 5.0, |b| {
            b.code("DATA_LOSS") == 20
        })
        .await;
    assert!(b.pods.is_empty(), "no call reached a server: {b:?}");
    eprintln!("injected fault: DATA_LOSS, details {:?}", b.details);

    // consistentHash on a header: ring hash (gRFC A42), each key's calls to
    // one pod (round robin would alternate between the two).
    w.mesh.remove_istio_file("vs.yaml");
    w.mesh.write_istio(
        "dr.yaml",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: echo
  namespace: test
spec:
  host: echo.test.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
",
    );
    w.client
        .until("ring hash on x-user", 30, &[("x-user", "a")], 5.0, |b| {
            b.pods.len() == 1 && b.code("OK") == 30
        })
        .await;
    let mut seen = std::collections::BTreeSet::new();
    for user in ["a", "b", "c", "d", "e", "f"] {
        let b = w.client.calls(30, &[("x-user", user)], 5.0).await;
        assert_eq!(
            b.pods.len(),
            1,
            "x-user {user}: one pod for every call: {b:?}"
        );
        assert_eq!(b.code("OK"), 30, "{b:?}");
        seen.insert(b.pods[0].0.clone());
    }
    eprintln!("ring hash: 6 keys on pods {seen:?}");

    // Locality failover by cluster: the client's own cluster first.
    w.mesh.write_istio(
        "dr.yaml",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: echo
  namespace: test
spec:
  host: echo.test.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        failoverPriority: [topology.istio.io/cluster]
",
    );
    w.client
        .until("cluster1's endpoint first", 20, &[], 5.0, |b| {
            b.pod("echo-c1") == 20
        })
        .await;
    let b = w.client.calls(100, &[], 5.0).await;
    assert_eq!(b.pod("echo-c1"), 100, "priority 0 is cluster1's: {b:?}");
    // cluster1's endpoints removed: the client fails over to cluster2.
    w.mesh.write_cluster(
        "cluster1",
        "echo.yaml",
        &format!(
            "{}---\n{}",
            manifests::service(NS, "echo", PORT, PORT, &[("app", "echo")]),
            manifests::node("node-cluster1", "r1", "r1a", None)
        ),
    );
    w.client
        .until("failover to cluster2", 20, &[], 5.0, |b| {
            b.pod("echo-c2") == 20
        })
        .await;
    let b = w.client.calls(100, &[], 5.0).await;
    assert_eq!(b.pod("echo-c2"), 100, "{b:?}");

    // A name asked for before it exists is sent when it appears: the client
    // dials `late` first (no such Service: the call fails), then the Service
    // is created (in cluster2, selecting echo-c2) and the same channel works.
    let late = format!("xds:///late.{NS}.svc.cluster.local:{PORT}");
    let b = w.client.calls_to(&late, 1, &[], 3.0).await;
    assert!(
        b.pods.is_empty() && b.code("OK") == 0,
        "no Service late yet: {b:?}"
    );
    w.mesh.write_cluster(
        "cluster2",
        "late.yaml",
        &manifests::service(NS, "late", PORT, PORT, &[("app", "echo")]),
    );
    let start = Instant::now();
    loop {
        let b = w.client.calls_to(&late, 1, &[], 3.0).await;
        if b.pod("echo-c2") == 1 {
            break;
        }
        assert!(
            start.elapsed() < CONVERGE,
            "late never answered after its Service appeared: {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // No NACK at any point.
    assert_eq!(nacks(&w.cp).await, Vec::<String>::new());
    assert_eq!(rejects(&w.cp).await, 0, "pilot_total_xds_rejects");
    let stream = client_stream(&w.cp, "client-0").await.unwrap();
    for t in stream["types"].as_array().unwrap() {
        assert_eq!(
            t["sent_nonce"], t["acked_nonce"],
            "every response ACKed: {t}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_is_recorded_and_not_resent() {
    let Some(py) = python() else {
        eprintln!(
            "SKIPPED nack_is_recorded_and_not_resent: ./.venv has no grpcio (run scripts/setup)"
        );
        return;
    };
    let mut w = world(&py).await;
    w.client
        .until("answers", 10, &[], 5.0, |b| b.code("OK") == 10)
        .await;

    // `(?R)` (CRLF mode) is a flag of Rust's regex syntax, which crossmesh's
    // validation parses, and not of RE2's (gRPC's engine: flags `imsU` only),
    // so the VirtualService is accepted and the client refuses the route.
    w.mesh.write_istio(
        "vs.yaml",
        &vs("  - match:
    - headers:
        x-key: {regex: '(?R)x'}
    route:
    - destination: {host: echo.test.svc.cluster.local}
"),
    );
    let nack = wait_for("the client's NACK on /debug/syncz", CONVERGE, || async {
        match nacks(&w.cp).await.pop() {
            Some(n) => Ok(n),
            None => Err("no NACK yet".to_string()),
        }
    })
    .await;
    eprintln!("NACK recorded: {nack}");
    assert!(nack.contains("RouteConfiguration"), "{nack}");
    assert!(nack.to_lowercase().contains("regex"), "gRPC's text: {nack}");
    assert!(rejects(&w.cp).await >= 1, "pilot_total_xds_rejects");

    // The same content is not resent: the stream's response count stands
    // still for 5 s while the client keeps calling.
    let before = responses_sent(&client_stream(&w.cp, "client-0").await.unwrap());
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        w.client.calls(5, &[], 2.0).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = responses_sent(&client_stream(&w.cp, "client-0").await.unwrap());
    assert_eq!(before, after, "responses sent after the NACK");

    // A change is sent, ACKed, and clears the NACK.
    w.mesh.write_istio(
        "vs.yaml",
        &vs("  - route:
    - destination: {host: echo.test.svc.cluster.local}
"),
    );
    wait_for("the NACK cleared by an ACK", CONVERGE, || async {
        let n = nacks(&w.cp).await;
        if n.is_empty() {
            Ok(())
        } else {
            Err(format!("{n:?}"))
        }
    })
    .await;
    let after_fix = responses_sent(&client_stream(&w.cp, "client-0").await.unwrap());
    assert!(after_fix > after, "the changed config was sent");
    w.client
        .until("answers after the fix", 10, &[], 5.0, |b| {
            b.code("OK") == 10
        })
        .await;
}
