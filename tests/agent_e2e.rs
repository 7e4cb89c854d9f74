//! Issue 13, end to end with the real binary and a real Envoy gateway: the seed's
//! three-cluster scenario with `cluster3` behind `crossmesh agent`. The agent reads
//! cluster3's fake API server (`tests/support/kube_api.rs`); the hub's mesh file has
//! no address for it (`clusters[].agent`), only `agentAddress`.
//!
//! - traffic for `cluster3.imroc.cc` reaches cluster3's pods (which pod answered),
//!   and follows a pod added and deleted in cluster3;
//! - the agent killed for 20 s (`CROSSMESH_TEST_AGENT_OUTAGE_SECS`): the hub keeps
//!   serving cluster3's last endpoints, marked stale, other clusters unaffected; a
//!   pod replaced meanwhile is the only endpoint once the agent is back (restarted
//!   from its state directory, without a token);
//! - the hub restarted: the agent reconnects and the merged registry equals what
//!   it was;
//! - a Gateway and an HTTPRoute in cluster3 (a config source through its agent)
//!   route a real Envoy labelled with the Gateway's name to cluster3's pod;
//! - a namespace-wide Telemetry in cluster3, streamed by its agent, sets the
//!   tracing sampling of a gateway in that namespace (and its delete resets it);
//! - a raw protocol client (cluster `cluster4`): nothing is deleted before every
//!   kind's end-of-snapshot marker; objects outside the namespace grant, a used or
//!   expired token, a certificate from another CA, and publishing under another
//!   cluster's name are refused with their reason and counted on
//!   `/debug/clusterz`; a revoked cluster's stream closes and its certificate is
//!   refused until it enrols again; a `resumed` first batch is refused while the
//!   hub holds no state of the cluster and accepted from the stream the next
//!   Welcome names (with its last applied batch);
//! - bad input on the agent port (garbage, an oversized message, an unknown
//!   protocol version, missing heartbeats) ends only that stream, with a reason.

mod support;

#[path = "support/kube_api.rs"]
mod kube_api;
#[path = "support/kube_seed.rs"]
mod kube_seed;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crossmesh::agent::proto::agent_service_client::AgentServiceClient;
use crossmesh::agent::proto::{
    agent_message, change, hub_message, AgentMessage, Batch, Change, EnrollRequest, Hello,
    HubMessage, Kind as WireKind, PROTOCOL_VERSION,
};
use kube_api::{objects, FakeApiServer};
use kube_seed::{gateway_object, name, pod_object};
use serde_json::{json, Value};
use support::backend::Backend;
use support::control_plane::AgentProc;
use support::control_plane::{
    bootstrap_gateway, crossmesh_bin, ControlPlane, GatewayProxy, StartOptions,
};
use support::envoy::Envoy;
use support::net::{free_port, Subnet};
use support::scenario::{host_of, outbound_cluster, service_host, CLUSTERS, NS};
use support::{http, wait_for, CONVERGE};

/// How long the agent stays away in the outage test (the issue's 20 s).
fn outage() -> Duration {
    let secs = std::env::var("CROSSMESH_TEST_AGENT_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(20);
    Duration::from_secs(secs)
}

/// The hub's heartbeat interval (`sources::agent::DEFAULT_HEARTBEAT`) times the
/// intervals it waits before closing a silent stream.
const SILENCE: Duration = Duration::from_secs(15);

struct Fixture {
    /// First, so it is dropped (and its log printed) before `dir` goes.
    agent: AgentProc,
    subnet: Subnet,
    dir: tempfile::TempDir,
    mesh_file: PathBuf,
    servers: Vec<FakeApiServer>,
    pod_port: u16,
    gw_port: u16,
    backends: Vec<Backend>,
    agent_addr: SocketAddr,
    cp: ControlPlane,
    envoy: Envoy,
    agents_started: u32,
}

fn ca_root(dir: &Path) -> PathBuf {
    dir.join("ca").join("root-cert.pem")
}

/// `crossmesh agent-token create` for `cluster`; the printed token.
fn create_token(mesh_file: &Path, cluster: &str, ttl: &str) -> Result<String, String> {
    let out = Command::new(crossmesh_bin())
        .args(["agent-token", "create", "--mesh"])
        .arg(mesh_file)
        .args(["--cluster", cluster, "--ttl", ttl])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Fixture {
    async fn start() -> Fixture {
        Fixture::start_with("").await
    }

    /// With extra `ca:` settings (indented lines under `ca:`).
    async fn start_with(ca_extra: &str) -> Fixture {
        Fixture::start_full(ca_extra, "").await
    }

    /// With extra `ca:` settings and extra top-level mesh file settings.
    async fn start_full(ca_extra: &str, top_extra: &str) -> Fixture {
        let subnet = Subnet::claim();
        let dir = tempfile::Builder::new()
            .prefix("crossmesh-agent-e2e-")
            .tempdir()
            .expect("tempdir");
        let pod_port = free_port();
        let gw_port = free_port();
        let mut servers = Vec::new();
        let mut backends = Vec::new();
        for n in 1..=3u8 {
            let c = name(n);
            let s = FakeApiServer::start(c).await;
            s.apply(&objects::node(
                &format!("{c}-node-1"),
                &format!("region-{n}"),
                &format!("zone-{n}a"),
            ));
            s.apply(&objects::service(
                NS,
                c,
                &[("app", c)],
                &[("http", 80, pod_port)],
            ));
            let pod = format!("{c}-pod-a");
            let ip = subnet.ip(n * 10 + 1);
            s.apply(&pod_object(n, &pod, ip, true));
            backends.push(Backend::start(ip, pod_port, &pod).await);
            s.write_kubeconfig(&dir.path().join(format!("{c}.kubeconfig")), None, None);
            servers.push(s);
        }
        // Istio config in cluster1's CRDs, as the seed.
        servers[0].apply(&gateway_object(gw_port));
        for c in CLUSTERS {
            servers[0].apply(&kube_seed::virtual_service_object(c));
        }
        let agent_addr = subnet.addr(2, free_port());
        let yaml = format!(
            "trustDomain: cluster.local\n\
             agentAddress: {agent_addr}\n\
             ca:\n  stateDir: ca\n{ca_extra}\
             {top_extra}\
             clusters:\n\
             - name: cluster1\n  network: vpc-a\n  kubeconfig: cluster1.kubeconfig\n\
             - name: cluster2\n  network: vpc-a\n  kubeconfig: cluster2.kubeconfig\n\
             - name: cluster3\n  network: account-b\n  agent:\n    namespaces: [{NS}]\n\
             - name: cluster4\n  network: account-b\n  agent:\n    namespaces: [{NS}]\n\
             config:\n- cluster: cluster1\n- cluster: cluster3\n\
             tunables:\n  readyTimeoutMs: 3000\n"
        );
        let mesh_file = dir.path().join("mesh.yaml");
        std::fs::write(&mesh_file, yaml).expect("write mesh file");
        let token = create_token(&mesh_file, "cluster3", "10m").expect("agent-token create");
        std::fs::write(dir.path().join("cluster3.token"), &token).expect("write token");
        // cluster4 (a raw protocol client in some tests) never syncs unless a
        // test makes it: /ready is not awaited here (and stops waiting for it
        // after readyTimeoutMs, for restarts).
        let cp = ControlPlane::start_with(
            &mesh_file,
            StartOptions {
                no_wait_ready: true,
                ..StartOptions::default()
            },
        )
        .await;
        let root = ca_root(dir.path());
        wait_for("the mesh root written by serve", CONVERGE, || async {
            if root.is_file() {
                Ok(())
            } else {
                Err("not yet".into())
            }
        })
        .await;
        let gw = GatewayProxy::ingress(subnet.ip(1), "cluster1", false);
        let admin_port = free_port();
        let envoy =
            Envoy::start("gateway-agent", &bootstrap_gateway(&gw, cp.xds, admin_port)).await;
        let mut f = Fixture {
            subnet,
            dir,
            mesh_file,
            servers,
            pod_port,
            gw_port,
            backends,
            agent_addr,
            cp,
            envoy,
            agent: AgentProc {
                child: None,
                log: PathBuf::new(),
            },
            agents_started: 0,
        };
        f.start_agent(true);
        f.envoy.wait_ready(CONVERGE).await;
        f
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("agent-state")
    }

    /// Start `crossmesh agent` for cluster3 (with the token file or without).
    fn start_agent(&mut self, with_token: bool) {
        self.agents_started += 1;
        let log = self
            .dir
            .path()
            .join(format!("agent-{}.log", self.agents_started));
        let file = std::fs::File::create(&log).expect("agent log");
        let mut cmd = Command::new(crossmesh_bin());
        cmd.arg("agent")
            .args([
                "--hub",
                &self.agent_addr.to_string(),
                "--cluster",
                "cluster3",
            ])
            .arg("--root-cert")
            .arg(ca_root(self.dir.path()))
            .arg("--kubeconfig")
            .arg(self.dir.path().join("cluster3.kubeconfig"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file);
        if with_token {
            cmd.arg("--token-file")
                .arg(self.dir.path().join("cluster3.token"));
        }
        let child = cmd.spawn().expect("start crossmesh agent");
        self.agent = AgentProc {
            child: Some(child),
            log,
        };
    }

    fn gw_addr(&self) -> SocketAddr {
        SocketAddr::from((self.subnet.ip(1), self.gw_port))
    }

    fn pod_ip(&self, n: u8, idx: u8) -> Ipv4Addr {
        self.subnet.ip(n * 10 + idx)
    }

    async fn put_pod(&mut self, n: u8, idx: u8, suffix: &str) -> String {
        let pod = format!("{}-pod-{suffix}", name(n));
        let ip = self.pod_ip(n, idx);
        self.servers[n as usize - 1].apply(&pod_object(n, &pod, ip, true));
        if !self.backends.iter().any(|b| b.name == pod) {
            self.backends
                .push(Backend::start(ip, self.pod_port, &pod).await);
        }
        pod
    }

    fn delete_pod(&self, n: u8, suffix: &str) {
        let pod = format!("{}-pod-{suffix}", name(n));
        self.servers[n as usize - 1]
            .delete("", "pods", NS, &pod)
            .unwrap_or_else(|e| panic!("delete pod {pod}: {e}"));
    }

    /// Wait until `clusterN.imroc.cc` is answered 200 by `pod`.
    async fn wait_answer(&self, n: u8, pod: &str) {
        let addr = self.gw_addr();
        let host = host_of(name(n));
        wait_for(&format!("{host} answered by {pod}"), CONVERGE, || {
            let host = host.clone();
            async move {
                let r = http::get(addr, &host, "/").await?;
                if r.status == 200 && r.body == pod {
                    Ok(())
                } else {
                    Err(format!("{} {:?}", r.status, r.body))
                }
            }
        })
        .await
    }

    /// Envoy's hosts of cluster `n`'s service, sorted.
    async fn envoy_hosts(&self, n: u8) -> Result<Vec<SocketAddr>, String> {
        let cluster = outbound_cluster(name(n));
        let (_, body) = self.envoy.admin_get("/clusters?format=json").await?;
        let j: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for c in j["cluster_statuses"].as_array().into_iter().flatten() {
            if c["name"] != cluster.as_str() {
                continue;
            }
            for h in c["host_statuses"].as_array().into_iter().flatten() {
                let a = &h["address"]["socket_address"];
                let ip: Ipv4Addr = a["address"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("bad host {h}"))?;
                out.push(SocketAddr::from((
                    ip,
                    a["port_value"].as_u64().unwrap_or(0) as u16,
                )));
            }
        }
        out.sort();
        Ok(out)
    }

    async fn wait_hosts(&self, n: u8, idx: &[u8]) {
        let mut want: Vec<SocketAddr> = idx
            .iter()
            .map(|i| SocketAddr::from((self.pod_ip(n, *i), self.pod_port)))
            .collect();
        want.sort();
        let want = &want;
        wait_for(
            &format!("envoy hosts of cluster{n} == {want:?}"),
            CONVERGE,
            || async move {
                let got = self.envoy_hosts(n).await?;
                if &got == want {
                    Ok(())
                } else {
                    Err(format!("{got:?}"))
                }
            },
        )
        .await
    }

    async fn clusterz(&self, cluster: &str) -> Result<Value, String> {
        let j = self.cp.json("/debug/clusterz").await?;
        j.as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == cluster)
            .cloned()
            .ok_or_else(|| format!("{cluster} not on clusterz: {j}"))
    }

    async fn wait_clusterz(
        &self,
        cluster: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let check = &check;
        wait_for(what, CONVERGE, || async move {
            let c = self.clusterz(cluster).await?;
            if check(&c) {
                Ok(c)
            } else {
                Err(c.to_string())
            }
        })
        .await
    }

    /// Endpoints of `clusterN.test.svc.cluster.local` from member `cluster` on
    /// `/debug/registryz`.
    async fn registry_endpoints(&self, service: &str, cluster: &str) -> Result<Vec<Value>, String> {
        let j = self.cp.json("/debug/registryz").await?;
        let host = service_host(service);
        let svc = j["services"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["hostname"] == host.as_str())
            .cloned();
        Ok(svc
            .and_then(|s| s["endpoints"][cluster].as_array().cloned())
            .unwrap_or_default())
    }

    /// Send requests for `clusterN.imroc.cc` for `d`, each answered 200 by one of `pods`.
    async fn keep_answering(&self, n: u8, pods: &[&str], d: Duration) -> usize {
        let host = host_of(name(n));
        let t0 = Instant::now();
        let mut sent = 0;
        while t0.elapsed() < d {
            let r = http::get(self.gw_addr(), &host, "/")
                .await
                .unwrap_or_else(|e| panic!("request {sent} for {host}: {e}"));
            assert!(
                r.status == 200 && pods.contains(&r.body.as_str()),
                "request {sent} for {host} after {:?}: {} {:?}, expected one of {pods:?}",
                t0.elapsed(),
                r.status,
                r.body
            );
            sent += 1;
        }
        sent
    }

    fn root_pem(&self) -> String {
        std::fs::read_to_string(ca_root(self.dir.path())).expect("root cert")
    }
}

// ---------------------------------------------------------------------------
// A raw protocol client

/// A fresh key and CSR (PEM).
fn csr() -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (csr, key.serialize_pem())
}

/// Enrol `cluster` with `token`: the certificate chain and key, or the refusal.
async fn enrol(f: &Fixture, cluster: &str, token: &str) -> Result<(String, String), tonic::Status> {
    let ch = support::tls::grpc_channel(f.agent_addr, &f.root_pem(), None)
        .await
        .map_err(tonic::Status::unavailable)?;
    let (csr, key) = csr();
    let r = AgentServiceClient::new(ch)
        .enroll(EnrollRequest {
            protocol_version: PROTOCOL_VERSION,
            cluster: cluster.into(),
            token: token.into(),
            csr_pem: csr,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok((r.cert_chain_pem, key))
}

/// An open Sync stream of a raw client.
struct RawStream {
    out: tokio::sync::mpsc::Sender<AgentMessage>,
    inbound: tonic::Streaming<HubMessage>,
    seq: u64,
}

impl RawStream {
    async fn open(
        f: &Fixture,
        cert: &(String, String),
        hello: Hello,
    ) -> Result<RawStream, tonic::Status> {
        let ch = support::tls::grpc_channel(f.agent_addr, &f.root_pem(), Some((&cert.0, &cert.1)))
            .await
            .map_err(tonic::Status::unavailable)?;
        let (out, rx) = tokio::sync::mpsc::channel(16);
        out.send(AgentMessage {
            message: Some(agent_message::Message::Hello(hello)),
        })
        .await
        .expect("send hello");
        let inbound = AgentServiceClient::new(ch)
            .max_encoding_message_size(64 << 20)
            .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(RawStream {
            out,
            inbound,
            seq: 0,
        })
    }

    /// The next message that is not a heartbeat, or the stream's end status.
    async fn next(&mut self, within: Duration) -> Result<hub_message::Message, tonic::Status> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.inbound.message()).await {
                Err(_) => {
                    return Err(tonic::Status::deadline_exceeded(
                        "test: nothing from the hub",
                    ))
                }
                Ok(Err(s)) => return Err(s),
                Ok(Ok(None)) => return Err(tonic::Status::ok("closed")),
                Ok(Ok(Some(HubMessage {
                    message: Some(hub_message::Message::Heartbeat(_)),
                }))) => {}
                Ok(Ok(Some(HubMessage { message: Some(m) }))) => return Ok(m),
                Ok(Ok(Some(HubMessage { message: None }))) => {
                    return Err(tonic::Status::internal("empty hub message"))
                }
            }
        }
    }

    /// Send a batch and wait for its ack.
    async fn batch(
        &mut self,
        kind: WireKind,
        snapshot: bool,
        end: bool,
        changes: Vec<Change>,
    ) -> Result<(), tonic::Status> {
        self.seq += 1;
        let seq = self.seq;
        self.out
            .send(AgentMessage {
                message: Some(agent_message::Message::Batch(Batch {
                    seq,
                    kind: kind as i32,
                    snapshot,
                    changes,
                    end_of_snapshot: end,
                    resumed: false,
                })),
            })
            .await
            .map_err(|_| tonic::Status::cancelled("test: stream closed"))?;
        match self.next(Duration::from_secs(10)).await? {
            hub_message::Message::Ack(a) if a.seq == seq => Ok(()),
            other => Err(tonic::Status::internal(format!(
                "expected ack {seq}, got {other:?}"
            ))),
        }
    }
}

fn hello(cluster: &str) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        cluster: cluster.into(),
        kinds: vec![
            WireKind::Service as i32,
            WireKind::Pod as i32,
            WireKind::Node as i32,
            WireKind::EndpointSlice as i32,
        ],
        agent_version: "test".into(),
        ..Default::default()
    }
}

fn upsert(v: &Value) -> Change {
    Change {
        op: change::Op::Upsert as i32,
        namespace: v["metadata"]["namespace"].as_str().unwrap_or("").into(),
        name: v["metadata"]["name"].as_str().unwrap_or("").into(),
        resource_version: "1".into(),
        object: serde_json::to_vec(v).expect("json"),
    }
}

/// cluster4's objects: service `cluster4` in `ns` with one pod at `ip`.
fn c4_service(ns: &str, port: u16) -> Value {
    let mut s = serde_json::to_value(objects::service(
        ns,
        "cluster4",
        &[("app", "cluster4")],
        &[("http", 80, port)],
    ))
    .expect("service json");
    s["metadata"]["namespace"] = json!(ns);
    s
}

fn c4_pod(pod: &str, ip: Ipv4Addr) -> Value {
    serde_json::to_value(objects::pod(
        NS,
        pod,
        &ip.to_string(),
        "cluster4-node-1",
        &[("app", "cluster4")],
        true,
    ))
    .expect("pod json")
}

/// Enrol cluster4 and send it a full snapshot with `pods`.
async fn cluster4_synced(f: &Fixture, pods: &[(&str, Ipv4Addr)]) -> ((String, String), RawStream) {
    let token = create_token(&f.mesh_file, "cluster4", "10m").expect("token");
    let cert = enrol(f, "cluster4", &token).await.expect("enrol cluster4");
    let mut s = RawStream::open(f, &cert, hello("cluster4"))
        .await
        .expect("open");
    match s.next(Duration::from_secs(10)).await {
        Ok(hub_message::Message::Welcome(w)) => assert_eq!(w.cluster, "cluster4"),
        other => panic!("expected Welcome, got {other:?}"),
    }
    s.batch(
        WireKind::Service,
        true,
        true,
        vec![upsert(&c4_service(NS, f.pod_port))],
    )
    .await
    .expect("services");
    let pods: Vec<Change> = pods.iter().map(|(n, ip)| upsert(&c4_pod(n, *ip))).collect();
    s.batch(WireKind::Pod, true, true, pods)
        .await
        .expect("pods");
    s.batch(WireKind::Node, true, true, vec![])
        .await
        .expect("nodes");
    s.batch(WireKind::EndpointSlice, true, true, vec![])
        .await
        .expect("slices");
    (cert, s)
}

async fn c4_endpoint_ips(f: &Fixture) -> Result<Vec<String>, String> {
    let mut ips: Vec<String> = f
        .registry_endpoints("cluster4", "cluster4")
        .await?
        .iter()
        .map(|e| e["address"].as_str().unwrap_or("").to_string())
        .collect();
    ips.sort();
    Ok(ips)
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster3_behind_an_agent_serves_traffic_and_follows_changes() {
    let mut f = Fixture::start().await;
    for n in 1..=3u8 {
        f.wait_answer(n, &format!("{}-pod-a", name(n))).await;
    }
    f.wait_hosts(3, &[1]).await;
    let c = f
        .wait_clusterz("cluster3", "cluster3's agent connected and synced", |c| {
            c["agent"]["connected"] == true && c["agent"]["synced"] == true && c["synced"] == true
        })
        .await;
    assert_eq!(c["source"], "agent", "{c}");
    assert!(c["agent"]["certificate_expiry"].is_string(), "{c}");
    assert!(c["agent"]["last_heartbeat"].is_string(), "{c}");
    // The agent enrolled once: the state directory holds its certificate and key.
    assert!(f.state_dir().join("cert-chain.pem").is_file());
    assert!(f.state_dir().join("key.pem").is_file());

    // A pod added in cluster3 gets traffic (a delta), deleted it stops.
    let b = f.put_pod(3, 2, "b").await;
    f.wait_hosts(3, &[1, 2]).await;
    f.wait_answer(3, &b).await;
    f.delete_pod(3, "a");
    f.wait_hosts(3, &[2]).await;
    let bodies = http::get_many(f.gw_addr(), &host_of("cluster3"), 5).await;
    assert!(bodies.iter().all(|x| x == &b), "{bodies:?}");
    // Other clusters untouched.
    f.wait_answer(1, "cluster1-pod-a").await;
    f.wait_answer(2, "cluster2-pod-a").await;
}

/// Gateway API objects of an agent cluster route: a Gateway and an HTTPRoute in
/// cluster3's namespace, streamed by its agent (cluster3 is a config source),
/// served to a real Envoy labelled with the Gateway's name: `/agent` on
/// `web.example.com` reaches cluster3's pod, another path is not routed. The
/// GatewayClass is cluster1's (cluster-scoped: not streamed under cluster3's
/// namespace grant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_objects_of_an_agent_cluster_route() {
    let f = Fixture::start().await;
    f.wait_clusterz("cluster3", "cluster3's agent synced", |c| {
        c["agent"]["synced"] == true
    })
    .await;
    let port = free_port();
    f.servers[0].apply(&json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "crossmesh"},
        "spec": {"controllerName": "crossmesh.io/gateway-controller"},
    }));
    f.servers[2].apply(&json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"gatewayClassName": "crossmesh",
                 "listeners": [{"name": "http", "port": port, "protocol": "HTTP"}]},
    }));
    f.servers[2].apply(&json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"parentRefs": [{"name": "web"}], "hostnames": ["web.example.com"],
                 "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/agent"}}],
                            "backendRefs": [{"name": "cluster3", "port": 80}]}]},
    }));
    let gw = GatewayProxy {
        name: "web-0".into(),
        namespace: NS.into(),
        ip: f.subnet.ip(3),
        labels: vec![(
            "gateway.networking.k8s.io/gateway-name".into(),
            "web".into(),
        )],
        cluster_id: "cluster1".into(),
        network: None,
        sotw: false,
    };
    let envoy = Envoy::start(
        "gateway-api-agent",
        &bootstrap_gateway(&gw, f.cp.xds, free_port()),
    )
    .await;
    envoy.wait_ready(CONVERGE).await;
    let addr = SocketAddr::from((f.subnet.ip(3), port));
    wait_for(
        "web.example.com/agent answered by cluster3-pod-a",
        CONVERGE,
        || async {
            let r = http::get(addr, "web.example.com", "/agent/x").await?;
            if (r.status, r.body.as_str()) == (200, "cluster3-pod-a") {
                Ok(())
            } else {
                Err(format!("{} {:?}", r.status, r.body))
            }
        },
    )
    .await;
    let r = http::get(addr, "web.example.com", "/other")
        .await
        .expect("/other");
    assert_eq!(
        r.status, 404,
        "only the HTTPRoute's /agent is routed: {}",
        r.body
    );
    // The route is the agent's: shown in force from cluster3's agent.
    let j = f.cp.json("/debug/configz").await.expect("configz");
    let route = j["gatewayApi"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["kind"] == "HTTPRoute" && s["name"] == "web")
        .unwrap_or_else(|| panic!("no status of HTTPRoute web: {j}"));
    assert_eq!(route["namespace"], NS, "{route}");
}

/// Every `tracing.random_sampling.value` of the HTTP connection managers on
/// the listener bound to `port` in Envoy's config dump.
fn sampling_on_port(dump: &Value, port: u16) -> Vec<f64> {
    fn walk(v: &Value, out: &mut Vec<f64>) {
        match v {
            Value::Object(m) => {
                if m.get("@type").and_then(Value::as_str).is_some_and(|t| {
                    t.ends_with("http_connection_manager.v3.HttpConnectionManager")
                }) {
                    out.push(
                        m.get("tracing")
                            .and_then(|t| t.get("random_sampling"))
                            .and_then(|r| r.get("value"))
                            .and_then(Value::as_f64)
                            .unwrap_or(-1.0),
                    );
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for l in dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["dynamic_listeners"].as_array().into_iter().flatten())
    {
        let listener = &l["active_state"]["listener"];
        if listener["address"]["socket_address"]["port_value"].as_u64() == Some(port as u64) {
            walk(listener, &mut out);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_of_an_agent_cluster_reaches_the_proxies_of_its_namespace() {
    let f = Fixture::start_full(
        "",
        "extensionProviders:\n- name: zipkin\n  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}\n\
         defaultProviders: {tracing: [zipkin]}\n\
         defaultConfig:\n  tracing: {sampling: 1}\n",
    )
    .await;
    f.wait_clusterz("cluster3", "cluster3's agent synced", |c| {
        c["agent"]["synced"] == true
    })
    .await;
    // A gateway in the agent's granted namespace, its Gateway from cluster1.
    let port = free_port();
    f.servers[0].apply(&json!({
        "apiVersion": "networking.istio.io/v1", "kind": "Gateway",
        "metadata": {"name": "tele", "namespace": NS},
        "spec": {"selector": {"app": "tele-gw"}, "servers": [{
            "port": {"number": port, "name": "http", "protocol": "HTTP"},
            "hosts": ["*.example.com"]
        }]}
    }));
    let gw = GatewayProxy {
        name: "tele-gw-0".into(),
        namespace: NS.into(),
        ip: f.subnet.ip(4),
        labels: vec![("app".into(), "tele-gw".into())],
        cluster_id: "cluster1".into(),
        network: None,
        sotw: false,
    };
    let envoy = Envoy::start(
        "gateway-telemetry-agent",
        &bootstrap_gateway(&gw, f.cp.xds, free_port()),
    )
    .await;
    envoy.wait_ready(CONVERGE).await;
    let wait_sampling = |want: f64, what: &'static str| {
        let envoy = &envoy;
        async move {
            wait_for(what, CONVERGE, || async {
                let got = sampling_on_port(&envoy.config_dump().await, port);
                if !got.is_empty() && got.iter().all(|s| *s == want) {
                    Ok(())
                } else {
                    Err(format!("random_sampling on port {port}: {got:?}"))
                }
            })
            .await
        }
    };
    wait_sampling(1.0, "the gateway at the mesh default of 1 %").await;
    // A namespace-wide Telemetry in cluster3, streamed by its agent.
    f.servers[2].apply(&json!({
        "apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
        "metadata": {"name": "ns-tracing", "namespace": NS},
        "spec": {"tracing": [{"randomSamplingPercentage": 42}]}
    }));
    wait_sampling(42.0, "cluster3's Telemetry (through the agent) at 42 %").await;
    f.servers[2]
        .delete("telemetry.istio.io", "telemetries", NS, "ns-tracing")
        .expect("delete the Telemetry");
    wait_sampling(
        1.0,
        "the mesh default back after the agent's Telemetry went",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_cut_keeps_last_endpoints_and_replaced_pod_is_the_only_one_after() {
    let mut f = Fixture::start().await;
    f.wait_answer(3, "cluster3-pod-a").await;
    f.wait_clusterz("cluster3", "cluster3 synced", |c| {
        c["agent"]["synced"] == true
    })
    .await;

    f.agent.kill();
    f.wait_clusterz("cluster3", "cluster3 stale, agent disconnected", |c| {
        c["stale"] == true && c["agent"]["connected"] == false && !c["last_error"].is_null()
    })
    .await;
    wait_for(
        "cluster3's endpoint kept, marked stale",
        CONVERGE,
        || async {
            let eps = f.registry_endpoints("cluster3", "cluster3").await?;
            if eps.len() == 1 && eps[0]["stale"] == true {
                Ok(())
            } else {
                Err(format!("{eps:?}"))
            }
        },
    )
    .await;
    // Meanwhile pod-a is replaced by pod-c in cluster3.
    f.delete_pod(3, "a");
    let c = f.put_pod(3, 3, "c").await;
    // For the whole cut, cluster3's last endpoint keeps answering, and the other
    // clusters too.
    let sent = f.keep_answering(3, &["cluster3-pod-a"], outage()).await;
    assert!(sent > 0);
    f.wait_answer(1, "cluster1-pod-a").await;
    f.wait_answer(2, "cluster2-pod-a").await;

    // Back without a token: the state directory's certificate is enough.
    let token_file = f.dir.path().join("cluster3.token");
    std::fs::remove_file(&token_file).expect("remove token file");
    f.start_agent(false);
    f.wait_hosts(3, &[3]).await;
    f.wait_answer(3, &c).await;
    f.wait_clusterz("cluster3", "cluster3 fresh again", |c| {
        c["stale"] == false && c["last_error"].is_null() && c["agent"]["connected"] == true
    })
    .await;
    let eps = f.registry_endpoints("cluster3", "cluster3").await.unwrap();
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert_eq!(eps[0]["address"], f.pod_ip(3, 3).to_string(), "{eps:?}");
    assert_eq!(eps[0]["stale"], false, "{eps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_restarted_agent_reconnects_and_the_merged_registry_is_the_same() {
    let mut f = Fixture::start().await;
    for n in 1..=3u8 {
        f.wait_answer(n, &format!("{}-pod-a", name(n))).await;
    }
    let b = f.put_pod(3, 2, "b").await;
    f.wait_hosts(3, &[1, 2]).await;
    f.wait_answer(3, &b).await;
    let before = f.cp.json("/debug/registryz").await.unwrap();
    let eps = f.registry_endpoints("cluster3", "cluster3").await.unwrap();
    assert_eq!(eps.len(), 2, "{eps:?}");

    f.cp.restart().await;
    // The agent's backoff is at most 10 s; then its snapshot rebuilds cluster3.
    wait_for(
        "the merged registry as before the restart",
        CONVERGE + Duration::from_secs(10),
        || async {
            let now = f.cp.json("/debug/registryz").await?;
            if now == before {
                Ok(())
            } else {
                Err(format!("{now}"))
            }
        },
    )
    .await;
    let c = f
        .wait_clusterz("cluster3", "cluster3's agent back on the new hub", |c| {
            c["agent"]["connected"] == true && c["synced"] == true && c["stale"] == false
        })
        .await;
    assert_eq!(c["agent"]["streams"], 1, "{c}");
    f.wait_hosts(3, &[1, 2]).await;
    f.wait_answer(1, "cluster1-pod-a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_renews_its_certificate_at_half_life_and_keeps_serving() {
    // 20 s certificates: renewed 10 s after issue.
    let f = Fixture::start_with("  workloadCertTTL: 20s\n").await;
    f.wait_answer(3, "cluster3-pod-a").await;
    let first = f
        .wait_clusterz("cluster3", "cluster3 synced", |c| {
            c["agent"]["synced"] == true
        })
        .await;
    let serial = first["agent"]["certificate_serial"].clone();
    assert!(serial.is_string(), "{first}");
    let on_disk = std::fs::read_to_string(f.state_dir().join("cert-chain.pem")).unwrap();
    let c = wait_for(
        "a stream with a renewed certificate",
        CONVERGE + Duration::from_secs(10),
        || async {
            let c = f.clusterz("cluster3").await?;
            if c["agent"]["connected"] == true
                && c["agent"]["synced"] == true
                && c["agent"]["certificate_serial"] != serial
            {
                Ok(c)
            } else {
                Err(c.to_string())
            }
        },
    )
    .await;
    // Renewed with the old certificate (no token involved: none is left).
    assert_ne!(
        std::fs::read_to_string(f.state_dir().join("cert-chain.pem")).unwrap(),
        on_disk
    );
    assert_eq!(c["agent"]["refusals"], json!({}), "{c}");
    f.wait_answer(3, "cluster3-pod-a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_sweeps_deleted_objects_only_after_every_end_marker() {
    let f = Fixture::start().await;
    let (ip1, ip2) = (f.pod_ip(4, 1), f.pod_ip(4, 2));
    let (cert, s) = cluster4_synced(&f, &[("cluster4-pod-a", ip1), ("cluster4-pod-b", ip2)]).await;
    wait_for("cluster4's two endpoints", CONVERGE, || async {
        let ips = c4_endpoint_ips(&f).await?;
        if ips == [ip1.to_string(), ip2.to_string()] {
            Ok(())
        } else {
            Err(format!("{ips:?}"))
        }
    })
    .await;
    drop(s);
    f.wait_clusterz("cluster4", "cluster4 stale after its stream ended", |c| {
        c["stale"] == true && c["agent"]["connected"] == false
    })
    .await;

    // A new stream whose snapshot no longer has pod-b: until the last kind's end
    // marker, pod-b is still served.
    let mut s = RawStream::open(&f, &cert, hello("cluster4"))
        .await
        .expect("reopen");
    assert!(matches!(
        s.next(Duration::from_secs(10)).await,
        Ok(hub_message::Message::Welcome(_))
    ));
    s.batch(
        WireKind::Service,
        true,
        true,
        vec![upsert(&c4_service(NS, f.pod_port))],
    )
    .await
    .unwrap();
    s.batch(
        WireKind::Pod,
        true,
        true,
        vec![upsert(&c4_pod("cluster4-pod-a", ip1))],
    )
    .await
    .unwrap();
    s.batch(WireKind::Node, true, true, vec![]).await.unwrap();
    // Every batch so far is acknowledged (applied or buffered): the registry
    // still holds both endpoints.
    let ips = c4_endpoint_ips(&f).await.unwrap();
    assert_eq!(
        ips,
        [ip1.to_string(), ip2.to_string()],
        "swept before the end marker"
    );
    s.batch(WireKind::EndpointSlice, true, true, vec![])
        .await
        .unwrap();
    wait_for(
        "pod-b swept after the last end marker",
        CONVERGE,
        || async {
            let ips = c4_endpoint_ips(&f).await?;
            if ips == [ip1.to_string()] {
                Ok(())
            } else {
                Err(format!("{ips:?}"))
            }
        },
    )
    .await;
    f.wait_clusterz("cluster4", "cluster4 fresh", |c| c["stale"] == false)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_named_and_counted() {
    let f = Fixture::start().await;
    f.wait_answer(3, "cluster3-pod-a").await;

    // A used token.
    let token = create_token(&f.mesh_file, "cluster4", "10m").unwrap();
    let cert = enrol(&f, "cluster4", &token).await.expect("first use");
    let e = enrol(&f, "cluster4", &token).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("already used"), "{e:?}");

    // An expired token.
    let t0 = Instant::now();
    let expired = create_token(&f.mesh_file, "cluster4", "1s").unwrap();
    tokio::time::sleep_until((t0 + Duration::from_millis(2100)).into()).await;
    let e = enrol(&f, "cluster4", &expired).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("expired"), "{e:?}");

    // A token of one cluster presented for another.
    let t3 = create_token(&f.mesh_file, "cluster4", "10m").unwrap();
    let e = enrol(&f, "cluster3", &t3).await.unwrap_err();
    assert!(
        e.message().contains("created for cluster \"cluster4\""),
        "{e:?}"
    );

    // A certificate from another CA: refused at the handshake.
    let other = kube_api::client_cert_from_other_ca("cluster4");
    match RawStream::open(
        &f,
        &(other.cert_pem.clone(), other.key_pem.clone()),
        hello("cluster4"),
    )
    .await
    {
        Ok(mut s) => {
            let e = s.next(Duration::from_secs(5)).await.unwrap_err();
            assert_ne!(e.code(), tonic::Code::Ok, "{e:?}");
        }
        Err(e) => assert_ne!(e.code(), tonic::Code::Ok, "{e:?}"),
    }
    // Counted by reason on /metrics (it names no agent cluster).
    wait_for("tls_handshake refusal counted", CONVERGE, || async {
        let (_, body) = f.cp.get("/metrics").await?;
        let line = body
            .lines()
            .find(|l| l.starts_with(r#"crossmesh_agent_refusals{reason="tls_handshake"}"#))
            .ok_or("no tls_handshake series")?;
        match line.rsplit_once(' ').map(|(_, v)| v.parse::<f64>()) {
            Some(Ok(v)) if v >= 1.0 => Ok(()),
            _ => Err(line.to_string()),
        }
    })
    .await;

    // cluster4's certificate publishing as cluster3.
    let mut s = RawStream::open(&f, &cert, hello("cluster3"))
        .await
        .expect("open");
    let e = s.next(Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(
        e.message()
            .contains("certificate is for cluster \"cluster4\"")
            && e.message().contains("\"cluster3\""),
        "{e:?}"
    );

    // An object outside cluster4's namespace grant is refused on its own.
    let mut s = RawStream::open(&f, &cert, hello("cluster4"))
        .await
        .expect("open");
    assert!(matches!(
        s.next(Duration::from_secs(10)).await,
        Ok(hub_message::Message::Welcome(_))
    ));
    s.batch(
        WireKind::Service,
        true,
        true,
        vec![
            upsert(&c4_service(NS, f.pod_port)),
            upsert(&c4_service("kube-system", f.pod_port)),
        ],
    )
    .await
    .unwrap();
    s.batch(
        WireKind::Pod,
        true,
        true,
        vec![upsert(&c4_pod("cluster4-pod-a", f.pod_ip(4, 1)))],
    )
    .await
    .unwrap();
    s.batch(WireKind::Node, true, true, vec![]).await.unwrap();
    s.batch(WireKind::EndpointSlice, true, true, vec![])
        .await
        .unwrap();
    let c = f
        .wait_clusterz("cluster4", "cluster4 synced with one refusal", |c| {
            c["synced"] == true && c["rejected"].as_array().is_some_and(|r| !r.is_empty())
        })
        .await;
    let rejected = c["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{c}");
    assert_eq!(rejected[0]["object"], "kube-system/cluster4", "{c}");
    assert!(
        rejected[0]["reason"]
            .as_str()
            .unwrap()
            .contains("outside this cluster's agent grant"),
        "{c}"
    );
    assert_eq!(c["counts"]["services"], 1, "{c}");

    let c = f.clusterz("cluster4").await.unwrap();
    let r = &c["agent"]["refusals"];
    assert_eq!(r["token_used"], 1, "{c}");
    assert_eq!(r["token_expired"], 1, "{c}");
    assert_eq!(r["wrong_cluster"], 1, "{c}");
    assert_eq!(r["object"], 1, "{c}");
    // cluster3 was never touched.
    let c3 = f.clusterz("cluster3").await.unwrap();
    assert_eq!(c3["agent"]["connected"], true, "{c3}");
    // (The token presented for cluster3 counts there: the claim named it.)
    assert_eq!(
        c3["agent"]["refusals"],
        json!({"token_wrong_cluster": 1}),
        "{c3}"
    );
    assert_eq!(c3["stale"], false, "{c3}");
    f.wait_answer(3, "cluster3-pod-a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_cluster_stream_closes_and_its_certificate_is_refused() {
    let f = Fixture::start().await;
    f.wait_answer(3, "cluster3-pod-a").await;
    let (cert, mut s) = cluster4_synced(&f, &[("cluster4-pod-a", f.pod_ip(4, 1))]).await;
    f.wait_clusterz("cluster4", "cluster4 synced", |c| c["synced"] == true)
        .await;

    let t0 = Instant::now();
    let out = Command::new(crossmesh_bin())
        .args(["agent-token", "revoke", "--mesh"])
        .arg(&f.mesh_file)
        .args(["--cluster", "cluster4"])
        .output()
        .expect("agent-token revoke");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The open stream ends within a heartbeat interval, with the reason.
    let e = s.next(Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("was revoked"), "{e:?}");
    // Reconnecting with the same certificate is refused.
    let e = match RawStream::open(&f, &cert, hello("cluster4")).await {
        Err(e) => e,
        Ok(mut s) => s.next(Duration::from_secs(10)).await.unwrap_err(),
    };
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("was revoked"), "{e:?}");
    let c = f
        .wait_clusterz("cluster4", "cluster4 revoked, stale", |c| {
            c["agent"]["connected"] == false && c["stale"] == true
        })
        .await;
    assert_eq!(c["agent"]["refusals"]["revoked"], 2, "{c}");
    // A new token enrols it again (a certificate issued after the revocation;
    // certificates carry whole seconds).
    tokio::time::sleep_until((t0 + Duration::from_millis(1100)).into()).await;
    let token = create_token(&f.mesh_file, "cluster4", "10m").unwrap();
    let cert = enrol(&f, "cluster4", &token).await.expect("enrol again");
    let mut s = RawStream::open(&f, &cert, hello("cluster4"))
        .await
        .expect("open");
    assert!(matches!(
        s.next(Duration::from_secs(10)).await,
        Ok(hub_message::Message::Welcome(_))
    ));
    // cluster3 was not touched.
    let c3 = f.clusterz("cluster3").await.unwrap();
    assert_eq!(c3["agent"]["connected"], true, "{c3}");
    f.wait_answer(3, "cluster3-pod-a").await;
    let serial = c3["agent"]["certificate_serial"].clone();

    // The real agent of cluster3 revoked: its stream closes, it drops its
    // certificate and tries its token file, whose token is spent; given a new
    // token it enrols again. Meanwhile cluster3 is stale and keeps serving.
    let t1 = Instant::now();
    let out = Command::new(crossmesh_bin())
        .args(["agent-token", "revoke", "--mesh"])
        .arg(&f.mesh_file)
        .args(["--cluster", "cluster3"])
        .output()
        .expect("agent-token revoke");
    assert!(out.status.success());
    f.wait_clusterz("cluster3", "cluster3 revoked and stale", |c| {
        c["agent"]["connected"] == false
            && c["stale"] == true
            && c["agent"]["refusals"]["token_used"].as_u64() >= Some(1)
    })
    .await;
    f.wait_answer(3, "cluster3-pod-a").await;
    tokio::time::sleep_until((t1 + Duration::from_millis(1100)).into()).await;
    let token = create_token(&f.mesh_file, "cluster3", "10m").unwrap();
    std::fs::write(f.dir.path().join("cluster3.token"), token).unwrap();
    let c3 = f
        .wait_clusterz("cluster3", "cluster3 enrolled again", |c| {
            c["agent"]["connected"] == true
                && c["stale"] == false
                && c["agent"]["certificate_serial"] != serial
        })
        .await;
    assert_eq!(c3["agent"]["refusals"]["revoked"], 1, "{c3}");
    f.wait_answer(3, "cluster3-pod-a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_ends_only_that_stream_with_a_reason() {
    let f = Fixture::start().await;
    f.wait_answer(3, "cluster3-pod-a").await;
    let token = create_token(&f.mesh_file, "cluster4", "10m").unwrap();
    let cert = enrol(&f, "cluster4", &token).await.expect("enrol");

    // Garbage on the agent port.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(f.agent_addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01garbage")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        // The hub answers with a TLS alert or closes; either way the read ends.
        let r = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await;
        assert!(r.is_ok(), "the hub kept a garbage connection open");
    }

    // An unknown protocol version.
    let mut h = hello("cluster4");
    h.protocol_version = 99;
    let mut s = RawStream::open(&f, &cert, h).await.expect("open");
    let e = s.next(Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("version 99") && e.message().contains("speaks 1"),
        "{e:?}"
    );

    // An oversized message (the hub decodes at most 4 MiB).
    let mut s = RawStream::open(&f, &cert, hello("cluster4"))
        .await
        .expect("open");
    assert!(matches!(
        s.next(Duration::from_secs(10)).await,
        Ok(hub_message::Message::Welcome(_))
    ));
    let mut big = c4_service(NS, f.pod_port);
    big["metadata"]["annotations"] = json!({"padding": "x".repeat(5 << 20)});
    let e = s
        .batch(WireKind::Service, true, true, vec![upsert(&big)])
        .await
        .unwrap_err();
    assert_ne!(e.code(), tonic::Code::Ok, "{e:?}");

    // Missing heartbeats: Hello, Welcome, then silence.
    let mut s = RawStream::open(&f, &cert, hello("cluster4"))
        .await
        .expect("open");
    assert!(matches!(
        s.next(Duration::from_secs(10)).await,
        Ok(hub_message::Message::Welcome(_))
    ));
    let e = s.next(SILENCE + Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().contains("no message from the agent"), "{e:?}");

    let c = f.clusterz("cluster4").await.unwrap();
    let r = &c["agent"]["refusals"];
    assert_eq!(r["protocol_version"], 1, "{c}");
    assert_eq!(r["oversized_message"], 1, "{c}");
    assert_eq!(r["missed_heartbeats"], 1, "{c}");
    // Nothing of this reached cluster3 or the other clusters.
    let c3 = f.clusterz("cluster3").await.unwrap();
    assert_eq!(c3["agent"]["connected"], true, "{c3}");
    assert_eq!(c3["stale"], false, "{c3}");
    for n in 1..=3u8 {
        f.wait_answer(n, &format!("{}-pod-a", name(n))).await;
    }
}

/// Send the first batch of a stream marked `resumed` (no changes); the hub's
/// answer (its ack, or the status that ended the stream).
async fn send_resumed(s: &mut RawStream) -> Result<hub_message::Message, tonic::Status> {
    s.seq += 1;
    s.out
        .send(AgentMessage {
            message: Some(agent_message::Message::Batch(Batch {
                seq: s.seq,
                kind: WireKind::Service as i32,
                snapshot: false,
                changes: vec![],
                end_of_snapshot: false,
                resumed: true,
            })),
        })
        .await
        .map_err(|_| tonic::Status::cancelled("test: stream closed"))?;
    s.next(Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_is_accepted_only_from_the_stream_the_hub_named() {
    let f = Fixture::start().await;
    // No state of cluster4 yet: Welcome names no previous stream, and a
    // resumed batch is refused with its reason.
    let token = create_token(&f.mesh_file, "cluster4", "10m").expect("token");
    let cert = enrol(&f, "cluster4", &token).await.expect("enrol cluster4");
    let mut s = RawStream::open(&f, &cert, hello("cluster4"))
        .await
        .expect("open");
    let w = match s.next(Duration::from_secs(10)).await {
        Ok(hub_message::Message::Welcome(w)) => w,
        other => panic!("expected Welcome, got {other:?}"),
    };
    assert!(!w.session_id.is_empty(), "{w:?}");
    assert_eq!((w.previous_stream_id, w.previous_applied_seq), (0, 0));
    match send_resumed(&mut s).await {
        Err(st) => {
            assert_eq!(st.code(), tonic::Code::FailedPrecondition, "{st:?}");
            assert!(st.message().contains("resume refused"), "{st:?}");
        }
        other => panic!("a resume without state must be refused: {other:?}"),
    }
    f.wait_clusterz("cluster4", "resume_refused counted", |c| {
        c["agent"]["refusals"]["resume_refused"] == 1
    })
    .await;

    // A stream that delivered its snapshot (four batches) and ended: the next
    // Welcome names it and its last applied batch, and a resume is accepted.
    let ip = f.pod_ip(4, 1);
    let (cert, s) = cluster4_synced(&f, &[("cluster4-pod-a", ip)]).await;
    drop(s);
    f.wait_clusterz("cluster4", "cluster4 stale after its stream ended", |c| {
        c["stale"] == true && c["agent"]["connected"] == false
    })
    .await;
    let mut s = RawStream::open(&f, &cert, hello("cluster4"))
        .await
        .expect("reopen");
    let w2 = match s.next(Duration::from_secs(10)).await {
        Ok(hub_message::Message::Welcome(w)) => w,
        other => panic!("expected Welcome, got {other:?}"),
    };
    assert_eq!(w2.session_id, w.session_id, "the same hub process");
    assert_eq!(w2.previous_stream_id + 1, w2.stream_id, "{w2:?}");
    assert_eq!(w2.previous_applied_seq, 4, "{w2:?}");
    match send_resumed(&mut s).await {
        Ok(hub_message::Message::Ack(a)) => assert_eq!(a.seq, 1),
        other => panic!("the resume must be acknowledged: {other:?}"),
    }
    let c = f
        .wait_clusterz("cluster4", "cluster4 resumed, not stale", |c: &Value| {
            c["agent"]["resumed"] == true && c["stale"] == false && c["agent"]["synced"] == true
        })
        .await;
    assert_eq!(c["counts"]["pods"], 1, "the state it resumed from: {c}");
    assert_eq!(
        c4_endpoint_ips(&f).await.expect("endpoints"),
        [ip.to_string()]
    );
}

/// Resident set of process `pid` in bytes (`VmRSS`).
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// A measurement, not an assertion: the agent's and the hub's resident set with
/// cluster3 grown to `CROSSMESH_TEST_AGENT_PODS` (default 10,000) Pods streamed by
/// the agent. Run with the binary under test (release: `CROSSMESH_BIN`):
///
/// ```text
/// cargo test --test agent_e2e agent_memory -- --ignored --nocapture
/// ```
///
/// The correctness of the same path is checked by the tests above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn agent_memory_with_many_pods() {
    let n: u32 = std::env::var("CROSSMESH_TEST_AGENT_PODS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let f = Fixture::start().await;
    f.wait_answer(3, "cluster3-pod-a").await;
    let agent_pid = f.agent.child.as_ref().expect("agent").id();
    let hub_pid = f.cp.pid().expect("hub");
    let (agent0, hub0) = (rss(agent_pid), rss(hub_pid));
    let t0 = Instant::now();
    for i in 0..n {
        // 127.A.B.x addresses are not needed: these pods are never dialled.
        let ip = Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8);
        f.servers[2].apply(&pod_object(3, &format!("cluster3-pod-m{i}"), ip, true));
    }
    wait_for(
        "every pod in the hub's registry",
        Duration::from_secs(300),
        || async {
            let c = f.clusterz("cluster3").await?;
            if c["counts"]["pods"].as_u64() == Some(u64::from(n) + 1) {
                Ok(())
            } else {
                Err(c["counts"].to_string())
            }
        },
    )
    .await;
    let took = t0.elapsed();
    let (agent1, hub1) = (rss(agent_pid), rss(hub_pid));
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let per_k = |a: u64, b: u64| (b as f64 - a as f64) / (1 << 20) as f64 / (f64::from(n) / 1000.0);
    eprintln!(
        "agent_memory: {n} pods in {took:?}; binary {}; agent RSS {:.1} -> {:.1} MiB ({:.2} MiB per 1,000 pods); \
         hub RSS {:.1} -> {:.1} MiB ({:.2} MiB per 1,000 agent-fed pods)",
        crossmesh_bin(),
        mib(agent0),
        mib(agent1),
        per_k(agent0, agent1),
        mib(hub0),
        mib(hub1),
        per_k(hub0, hub1),
    );
}
