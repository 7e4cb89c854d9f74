//! `crossmesh serve` as a Kubernetes Pod runs it: SIGTERM drains (readiness 503,
//! the xDS listener closed, streams ended with `UNAVAILABLE`, an HTTP/2 GOAWAY on
//! every connection, exit within the bound, also during the first sync and with a
//! proxy that stops reading), liveness, and the in-cluster service-account
//! credentials (`inCluster: true`).
//!
//! The in-cluster tests run the real binary in its own mount namespace
//! (`unshare -r -m`, root or unprivileged user namespaces needed): a tmpfs over
//! `/var/run` and the test's service-account directory bind-mounted at the one path
//! Kubernetes mounts it (`/var/run/secrets/kubernetes.io/serviceaccount`; neither
//! client-go nor kube-rs has an override), with `KUBERNETES_SERVICE_HOST/PORT`
//! pointing at the in-repo API server over HTTPS with its own CA.

mod support;

#[path = "support/kube_api.rs"]
mod kube_api;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use kube_api::{objects, FakeApiServer, Options};
use support::control_plane::{ControlPlane, StartOptions};
use support::in_pod::{api_env, in_pod, write_atomic};
use support::scenario::{host_of, Seed, CLUSTERS};
use support::{http, wait_for, CONVERGE};

/// `serve.rs`: how long the xDS server may drain, and the hard exit bound.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const EXIT_DEADLINE: Duration = Duration::from_secs(15);
const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

fn probe_node(name: &str) -> String {
    format!("router~127.0.0.1~{name}.istio-system~istio-system.svc.cluster.local")
}

async fn wait_connected(cp: &ControlPlane, node: &str) {
    wait_for(&format!("{node} on /debug/syncz"), CONVERGE, || async {
        let j = cp.json("/debug/syncz").await?;
        if j.to_string().contains(node) {
            Ok(())
        } else {
            Err(j.to_string())
        }
    })
    .await
}

/// SIGTERM, then wait for the exit; (status, time from signal to exit).
async fn terminate(cp: &mut ControlPlane) -> (std::process::ExitStatus, Duration) {
    let t0 = Instant::now();
    cp.terminate();
    let st = cp
        .wait_exit(EXIT_DEADLINE + Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("crossmesh still runs {EXIT_DEADLINE:?} + 5 s after SIGTERM"));
    (st, t0.elapsed())
}

// ---------------------------------------------------------------------------
// A hand-written HTTP/2 client: it sees every frame the server sends (GOAWAY
// included) and can refuse to read (flow-control window 0), as a stuck proxy.

#[derive(Debug, Clone)]
struct Frame {
    ty: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK "literal header field without indexing, new name", no Huffman.
fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    assert!(name.len() < 127 && value.len() < 127);
    out.push(0x00);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

struct RawAds {
    frames: Arc<Mutex<Vec<Frame>>>,
    /// Set when the server closed the TCP connection.
    closed: Arc<Mutex<bool>>,
}

impl RawAds {
    /// Open one SotW ADS stream asking for CDS as `node`, with the stream
    /// flow-control window `window` (0: the server can send no response data).
    async fn open(addr: SocketAddr, node: &str, window: u32) -> RawAds {
        let tcp = TcpStream::connect(addr).await.expect("connect xDS");
        let (mut rd, wr) = tcp.into_split();
        let wr = Arc::new(tokio::sync::Mutex::new(wr));
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let mut settings = vec![0x00, 0x04]; // SETTINGS_INITIAL_WINDOW_SIZE
        settings.extend_from_slice(&window.to_be_bytes());
        out.extend(frame(SETTINGS, 0, 0, &settings));
        let mut hdrs = Vec::new();
        literal(&mut hdrs, ":method", "POST");
        literal(&mut hdrs, ":scheme", "http");
        literal(
            &mut hdrs,
            ":path",
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
        );
        literal(&mut hdrs, ":authority", &addr.to_string());
        literal(&mut hdrs, "content-type", "application/grpc");
        literal(&mut hdrs, "te", "trailers");
        out.extend(frame(HEADERS, 0x4, 1, &hdrs)); // END_HEADERS
        let req = DiscoveryRequest {
            node: Some(Node {
                id: node.into(),
                ..Default::default()
            }),
            type_url: CDS.into(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut grpc = vec![0u8];
        grpc.extend_from_slice(&(req.len() as u32).to_be_bytes());
        grpc.extend_from_slice(&req);
        out.extend(frame(DATA, 0, 1, &grpc));
        wr.lock().await.write_all(&out).await.expect("write");

        let frames = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(Mutex::new(false));
        let (f2, c2) = (frames.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let mut head = [0u8; 9];
                if rd.read_exact(&mut head).await.is_err() {
                    break;
                }
                let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
                let mut payload = vec![0u8; len];
                if rd.read_exact(&mut payload).await.is_err() {
                    break;
                }
                let f = Frame {
                    ty: head[3],
                    flags: head[4],
                    stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
                    payload,
                };
                // Acknowledge SETTINGS and PING as any client must.
                let reply = match (f.ty, f.flags & ACK) {
                    (SETTINGS, 0) => Some(frame(SETTINGS, ACK, 0, &[])),
                    (PING, 0) => Some(frame(PING, ACK, 0, &f.payload)),
                    _ => None,
                };
                if let Some(r) = reply {
                    let _ = wr.lock().await.write_all(&r).await;
                }
                f2.lock().unwrap().push(f);
            }
            *c2.lock().unwrap() = true;
        });
        RawAds { frames, closed }
    }

    fn frames(&self) -> Vec<Frame> {
        self.frames.lock().unwrap().clone()
    }

    fn closed(&self) -> bool {
        *self.closed.lock().unwrap()
    }
}

// ---------------------------------------------------------------------------

/// A real Envoy gateway on the seed scenario; SIGTERM: the process exits well
/// within the bound with status 0, Envoy sees its ADS stream end and keeps serving
/// every route with its last config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_envoy_connected_drains_and_envoy_keeps_its_config() {
    let mut s = Seed::start(false).await;
    s.wait_all_hosts().await;
    wait_connected(&s.cp, &s.gw.node_id()).await;
    let (st, took) = terminate(&mut s.cp).await;
    assert!(st.success(), "exit status {st}; log:\n{}", s.cp.log());
    // Nothing waits for Envoy: its stream ends at once and it reads promptly.
    assert!(took < Duration::from_secs(3), "exit took {took:?}");
    let log = s.cp.log();
    assert!(log.contains("draining") && log.contains("stopped"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    // Envoy noticed that no control plane is connected (Envoy logs an UNAVAILABLE
    // stream end only at debug level; `sigterm_ends_streams_with_unavailable_and_goaway`
    // checks the status) and still routes every host.
    wait_for("envoy disconnected from xDS", CONVERGE, || async {
        match s.envoy.stat("control_plane.connected_state").await {
            Some(0) => Ok(()),
            v => Err(format!("{v:?}")),
        }
    })
    .await;
    for c in CLUSTERS {
        let bodies = http::get_many(s.gw_addr(), &host_of(c), 3).await;
        assert!(
            bodies.iter().all(|b| *b == format!("{c}-pod-a")),
            "{c}: {bodies:?}"
        );
    }
}

/// On SIGTERM an open ADS stream ends with gRPC `UNAVAILABLE` (so Envoy
/// reconnects at once, to another replica) and its HTTP/2 connection gets a
/// GOAWAY with NO_ERROR before the server closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_with_unavailable_and_goaway() {
    let mut s = Seed::start(false).await;
    let addr = s.cp.xds;
    // A tonic client, for the gRPC status.
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: probe_node("tonic-probe"),
            ..Default::default()
        }),
        type_url: CDS.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("open stream")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("first response")
        .expect("a response");
    assert_eq!(first.type_url, CDS);
    // A raw HTTP/2 client, for the frames.
    let raw = RawAds::open(addr, &probe_node("raw-probe"), 65_535).await;
    wait_connected(&s.cp, &probe_node("raw-probe")).await;
    wait_for("raw client got its CDS response", CONVERGE, || async {
        let f = raw.frames();
        if f.iter().any(|f| f.ty == DATA && f.stream == 1) {
            Ok(())
        } else {
            Err(format!("{f:?}"))
        }
    })
    .await;

    let (st, _) = terminate(&mut s.cp).await;
    assert!(st.success(), "exit status {st}");
    let status = match stream.message().await {
        Err(status) => status,
        Ok(m) => panic!("expected the stream to end with a status, got {m:?}"),
    };
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "crossmesh is shutting down");
    drop(tx);

    wait_for("raw connection closed by the server", CONVERGE, || async {
        if raw.closed() {
            Ok(())
        } else {
            Err(format!("{:?}", raw.frames()))
        }
    })
    .await;
    let frames = raw.frames();
    let goaways: Vec<&Frame> = frames.iter().filter(|f| f.ty == GOAWAY).collect();
    assert!(
        !goaways.is_empty(),
        "no GOAWAY before the close: {frames:?}"
    );
    for g in &goaways {
        let code = u32::from_be_bytes([g.payload[4], g.payload[5], g.payload[6], g.payload[7]]);
        assert_eq!(code, 0, "GOAWAY error code (NO_ERROR expected): {g:?}");
    }
    // The stream itself ended (trailers with END_STREAM), not just the connection.
    assert!(
        frames
            .iter()
            .any(|f| f.ty == HEADERS && f.stream == 1 && f.flags & END_STREAM != 0),
        "{frames:?}"
    );
}

/// A proxy that never reads its stream (flow-control window 0) cannot hold the
/// exit: while the xDS server drains, `/ready` is 503 `draining`, `/healthz` 200
/// and the xDS port refuses new connections; the process exits after
/// `DRAIN_TIMEOUT`, within `EXIT_DEADLINE`, with status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_proxy_cannot_hold_the_exit_and_ready_is_503_while_draining() {
    let mut s = Seed::start(false).await;
    let (code, _) = s.cp.get("/healthz").await.unwrap();
    assert_eq!(code, 200);
    let (code, body) = s.cp.get("/ready").await.unwrap();
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    let stuck = RawAds::open(s.cp.xds, &probe_node("stuck"), 0).await;
    wait_connected(&s.cp, &probe_node("stuck")).await;

    let t0 = Instant::now();
    s.cp.terminate();
    wait_for("/ready 503 draining", CONVERGE, || async {
        match s.cp.get("/ready").await? {
            (503, b) if b == "draining\n" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (code, body) = s.cp.get("/healthz").await.unwrap();
    assert_eq!(
        (code, body.as_str()),
        (200, "ok\n"),
        "liveness while draining"
    );
    wait_for("xDS port refuses connections", CONVERGE, || async {
        match TcpStream::connect(s.cp.xds).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Still draining (the stuck stream holds the xDS server) ...
    assert!(s.cp.exited().is_none(), "exited before the drain timeout");
    let st =
        s.cp.wait_exit(EXIT_DEADLINE + Duration::from_secs(5))
            .await
            .expect("crossmesh did not exit");
    let took = t0.elapsed();
    // ... until the drain timeout, and never past the exit bound.
    assert!(st.success(), "exit status {st}; log:\n{}", s.cp.log());
    assert!(took >= DRAIN_TIMEOUT - Duration::from_secs(1), "{took:?}");
    assert!(took <= EXIT_DEADLINE, "{took:?}");
    assert!(
        s.cp.log().contains("did not close in time"),
        "{}",
        s.cp.log()
    );
    assert!(
        !stuck.frames().iter().any(|f| f.ty == DATA),
        "the stuck client was sent data"
    );
}

/// A second signal during the drain (an operator's second Ctrl-C or `kill`)
/// stops at once, with a proxy still stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_stops_without_waiting_for_the_drain() {
    let mut s = Seed::start(false).await;
    let _stuck = RawAds::open(s.cp.xds, &probe_node("stuck"), 0).await;
    wait_connected(&s.cp, &probe_node("stuck")).await;
    s.cp.terminate();
    wait_for("/ready 503 draining", CONVERGE, || async {
        match s.cp.get("/ready").await? {
            (503, b) if b == "draining\n" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (st, took) = terminate(&mut s.cp).await;
    assert!(st.success(), "exit status {st}; log:\n{}", s.cp.log());
    assert!(took < Duration::from_secs(3), "exit took {took:?}");
    assert!(s.cp.log().contains("second signal"), "{}", s.cp.log());
}

/// SIGTERM while the only member cluster is still in its first list (an API
/// server that accepts connections and never answers): a clean, prompt exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_the_first_sync_exits_cleanly() {
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let acc = accepted.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = hole.accept().await {
            acc.lock().unwrap().push(sock); // held open, never answered
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("slow.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: slow\n  cluster:\n    server: http://{hole_addr}\n\
             users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: slow\n  context:\n    cluster: slow\n    user: u\n\
             current-context: slow\n"
        ),
    )
    .unwrap();
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        "clusters:\n- name: slow\n  kubeconfig: slow.kubeconfig\ntunables:\n  readyTimeoutMs: 600000\n",
    )
    .unwrap();
    let mut cp = ControlPlane::start_with(
        &mesh,
        StartOptions {
            no_wait_ready: true,
            ..StartOptions::default()
        },
    )
    .await;
    wait_for("the first list is in flight", CONVERGE, || async {
        let n = accepted.lock().unwrap().len();
        if n > 0 {
            Ok(())
        } else {
            Err("no connection yet".to_string())
        }
    })
    .await;
    wait_for("/healthz 200", CONVERGE, || async {
        match cp.get("/healthz").await? {
            (200, _) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (code, body) = cp.get("/ready").await.unwrap();
    assert_eq!((code, body.as_str()), (503, "not ready\n"));
    let (st, took) = terminate(&mut cp).await;
    assert!(st.success(), "exit status {st}; log:\n{}", cp.log());
    assert!(took < Duration::from_secs(3), "exit took {took:?}");
    let log = cp.log();
    assert!(
        log.contains("stopped") && !log.contains("panicked"),
        "{log}"
    );
}

// ---------------------------------------------------------------------------
// In-cluster credentials

fn in_cluster_mesh(dir: &Path) -> std::path::PathBuf {
    let mesh = dir.join("mesh.yaml");
    std::fs::write(
        &mesh,
        "clusters:\n- name: c1\n  inCluster: true\nconfig:\n- cluster: c1\n",
    )
    .unwrap();
    mesh
}

async fn clusterz(cp: &ControlPlane, name: &str) -> Result<serde_json::Value, String> {
    let j = cp.json("/debug/clusterz").await?;
    j.as_array()
        .or_else(|| j["clusters"].as_array())
        .and_then(|l| l.iter().find(|c| c["name"] == name).cloned())
        .ok_or_else(|| format!("{name} not on clusterz: {j}"))
}

async fn wait_cluster_error(cp: &ControlPlane, want: &[&str]) {
    wait_for(
        &format!("clusterz c1 error with {want:?}"),
        CONVERGE,
        || async {
            let c = clusterz(cp, "c1").await?;
            let err = c["last_error"].as_str().unwrap_or_default().to_string();
            if want.iter().all(|w| err.contains(w)) && c["synced"] == false {
                Ok(())
            } else {
                Err(c.to_string())
            }
        },
    )
    .await
}

/// `inCluster: true` as a member and a config cluster: the API server from
/// `KUBERNETES_SERVICE_HOST/PORT`, HTTPS verified with the mounted `ca.crt`,
/// authenticated with the mounted token; its Services, Pods and Istio config
/// are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_credentials_serve_the_pods_cluster() {
    let api = FakeApiServer::start_with(Options {
        name: "c1".into(),
        tls: true,
        token: Some("sa-token-1".into()),
        ..Options::default()
    })
    .await;
    objects::seed_web(&api, "10.1.0.7");
    api.apply(&serde_json::json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "web-vs", "namespace": "ns1"},
        "spec": {"hosts": ["web.example.com"], "http": [{"route": [{"destination": {
            "host": "web.ns1.svc.cluster.local", "port": {"number": 80}}}]}]}
    }));
    let sa = tempfile::tempdir().unwrap();
    write_atomic(sa.path(), "token", "sa-token-1");
    write_atomic(sa.path(), "ca.crt", api.ca_pem().expect("TLS server"));
    write_atomic(sa.path(), "namespace", "crossmesh-system");
    let dir = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start_with(
        &in_cluster_mesh(dir.path()),
        StartOptions {
            wrapper: in_pod(Some(sa.path())),
            env: api_env(api.addr().port()),
            no_wait_ready: false,
        },
    )
    .await;
    let c = clusterz(&cp, "c1").await.unwrap();
    assert_eq!(c["source"], "in-cluster", "{c}");
    assert_eq!(c["synced"], true, "{c}");
    assert!(c["last_error"].is_null(), "{c}");
    wait_for("web from c1 on registryz", CONVERGE, || async {
        let j = cp.json("/debug/registryz").await?;
        let web = j["services"]
            .as_array()
            .and_then(|l| {
                l.iter()
                    .find(|s| s["hostname"] == "web.ns1.svc.cluster.local")
            })
            .ok_or_else(|| j.to_string())?;
        let eps = web["endpoints"]["c1"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if eps.len() == 1 && eps[0]["address"] == "10.1.0.7" {
            Ok(())
        } else {
            Err(web.to_string())
        }
    })
    .await;
    wait_for("web-vs from c1 in force on configz", CONVERGE, || async {
        let j = cp.json("/debug/configz").await?;
        let found = j["inForce"]
            .as_array()
            .or_else(|| j["in_force"].as_array())
            .is_some_and(|l| {
                l.iter()
                    .any(|o| o["name"] == "web-vs" && o["namespace"] == "ns1")
            });
        if found {
            Ok(())
        } else {
            Err(j.to_string())
        }
    })
    .await;
    assert!(api.auth_failures().is_empty(), "{:?}", api.auth_failures());
    let (st, _) = terminate(&mut cp).await;
    assert!(st.success(), "{st}");
}

/// Outside a Pod, or in a Pod without a mounted service account, the cluster's
/// reason names what is missing; the process keeps running (liveness 200) and
/// stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_errors_name_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = in_cluster_mesh(dir.path());
    // Not in a Pod: the kubelet's variables are missing (empty counts as missing).
    let mut cp = ControlPlane::start_with(
        &mesh,
        StartOptions {
            env: vec![
                ("KUBERNETES_SERVICE_HOST".into(), String::new()),
                ("KUBERNETES_SERVICE_PORT".into(), String::new()),
            ],
            no_wait_ready: true,
            ..StartOptions::default()
        },
    )
    .await;
    wait_cluster_error(&cp, &["KUBERNETES_SERVICE_HOST is not set"]).await;
    wait_for("config source problem on configz", CONVERGE, || async {
        let j = cp.json("/debug/configz").await?;
        if j.to_string().contains("KUBERNETES_SERVICE_HOST is not set") {
            Ok(())
        } else {
            Err(j.to_string())
        }
    })
    .await;
    assert_eq!(cp.get("/healthz").await.unwrap().0, 200);
    assert_eq!(cp.get("/ready").await.unwrap().0, 503);
    let (st, _) = terminate(&mut cp).await;
    assert!(st.success(), "{st}");

    // In a Pod with automountServiceAccountToken: false.
    let api = FakeApiServer::start_with(Options {
        name: "c1".into(),
        tls: true,
        token: Some("t".into()),
        ..Options::default()
    })
    .await;
    let mut cp = ControlPlane::start_with(
        &mesh,
        StartOptions {
            wrapper: in_pod(None),
            env: api_env(api.addr().port()),
            no_wait_ready: true,
        },
    )
    .await;
    wait_cluster_error(
        &cp,
        &[
            "cannot read /var/run/secrets/kubernetes.io/serviceaccount/token",
            "automountServiceAccountToken",
        ],
    )
    .await;
    assert_eq!(cp.get("/healthz").await.unwrap().0, 200);
    let (st, _) = terminate(&mut cp).await;
    assert!(st.success(), "{st}");
    assert!(!cp.log().contains("panicked"), "{}", cp.log());
}

/// The kubelet rotates the projected token; crossmesh must pick up the new file
/// (kube-rs re-reads it at least once a minute). The old token is revoked and
/// every connection cut: the cluster syncs again only with the new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_token_rotation_is_picked_up() {
    let api = FakeApiServer::start_with(Options {
        name: "c1".into(),
        tls: true,
        token: Some("sa-token-1".into()),
        ..Options::default()
    })
    .await;
    objects::seed_web(&api, "10.1.0.7");
    let sa = tempfile::tempdir().unwrap();
    write_atomic(sa.path(), "token", "sa-token-1");
    write_atomic(sa.path(), "ca.crt", api.ca_pem().expect("TLS server"));
    write_atomic(sa.path(), "namespace", "crossmesh-system");
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(&mesh, "clusters:\n- name: c1\n  inCluster: true\n").unwrap();
    let mut cp = ControlPlane::start_with(
        &mesh,
        StartOptions {
            wrapper: in_pod(Some(sa.path())),
            env: api_env(api.addr().port()),
            no_wait_ready: false,
        },
    )
    .await;
    // Rotate: the new token is valid, the old one revoked; cut every watch.
    api.set_tokens(&["sa-token-1", "sa-token-2"]);
    write_atomic(sa.path(), "token", "sa-token-2");
    api.revoke_token("sa-token-1");
    api.restart().await;
    api.apply(&objects::pod(
        "ns1",
        "web-1",
        "10.1.0.8",
        "n1",
        &[("app", "web")],
        true,
    ));
    wait_for(
        "web-1 (added after the rotation) on registryz",
        Duration::from_secs(90),
        || async {
            let j = cp.json("/debug/registryz").await?;
            if j.to_string().contains("10.1.0.8") {
                Ok(())
            } else {
                Err(format!("auth failures so far: {:?}", api.auth_failures()))
            }
        },
    )
    .await;
    let (st, _) = terminate(&mut cp).await;
    assert!(st.success(), "{st}");
}
