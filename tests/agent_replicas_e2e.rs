//! Issue 13, an agent and a hub of several replicas, end to end with the real
//! binary: two `crossmesh serve` processes (one mesh CA directory and token
//! store between them, as replicas of one hub) behind a test TCP load balancer
//! that sends each new connection to the next backend in turn. The agent of
//! cluster3 (reading the in-repo fake API server) dials the balancer only:
//!
//! - it ends up with a link to each hub process, and both hubs' registries
//!   hold cluster3's pods; a pod added in cluster3 reaches both;
//! - one hub restarted (a new session) gets a full snapshot again while the
//!   link to the other keeps its stream and streams deltas.

mod support;

#[path = "support/kube_api.rs"]
mod kube_api;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kube_api::{objects, FakeApiServer, Options};
use serde_json::Value;
use support::control_plane::AgentProc;
use support::control_plane::{crossmesh_bin, ControlPlane};
use support::in_pod::{api_env, in_pod, sa_dir};
use support::net::{free_port, Subnet};
use support::{wait_for, CONVERGE};

/// The agent's namespace (its service account's `namespace` file).
const AGENT_NS: &str = "crossmesh-system";
/// The namespace of cluster3's workloads (the agent's grant).
const NS: &str = "shop";

/// A TCP load balancer on 127.0.0.1 (the hubs' certificates name it) that
/// sends each new connection to the next backend in turn.
struct RoundRobin {
    addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl RoundRobin {
    async fn start(backends: Vec<SocketAddr>) -> RoundRobin {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", free_port()))
            .await
            .expect("bind balancer");
        let addr = l.local_addr().expect("balancer addr");
        let next = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                let i = next.fetch_add(1, Ordering::SeqCst) % backends.len();
                let to = backends[i];
                tokio::spawn(async move {
                    // A backend that is down: the connection closes at once.
                    if let Ok(mut out) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        RoundRobin { addr, accept }
    }
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Write a hub's mesh file (`name`.yaml in `dir`, the CA state in `dir/ca`).
fn mesh_file(dir: &Path, name: &str, agent_addr: SocketAddr) -> PathBuf {
    let f = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &f,
        format!(
            "trustDomain: cluster.local\n\
             agentAddress: {agent_addr}\n\
             ca:\n  stateDir: ca\n\
             clusters:\n\
             - name: cluster3\n  agent:\n    namespaces: [{NS}]\n\
             tunables:\n  readyTimeoutMs: 3000\n"
        ),
    )
    .expect("mesh file");
    f
}

fn c3_pod(name: &str, ip: &str) -> Value {
    objects::pod(
        NS,
        name,
        ip,
        "cluster3-node-1",
        &[("app", "cluster3")],
        true,
    )
}

/// cluster3 on a hub's `/debug/clusterz`.
async fn clusterz(cp: &ControlPlane) -> Result<Value, String> {
    let j = cp.json("/debug/clusterz").await?;
    j.as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "cluster3")
        .cloned()
        .ok_or_else(|| format!("cluster3 not on clusterz: {j}"))
}

/// Pods (`workload` names) behind cluster3's endpoints of
/// `cluster3.shop.svc.cluster.local` on a hub's `/debug/registryz`, sorted.
async fn c3_pods(cp: &ControlPlane) -> Result<Vec<String>, String> {
    let j = cp.json("/debug/registryz").await?;
    let svc = j["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["hostname"] == "cluster3.shop.svc.cluster.local")
        .cloned()
        .ok_or_else(|| "no cluster3 service".to_string())?;
    let mut names: Vec<String> = svc["endpoints"]["cluster3"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["workload"].as_str())
        .filter_map(|w| w.strip_prefix("shop/"))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Wait until a hub's registry holds exactly `want` of cluster3's pods.
async fn wait_pods(which: &str, cp: &ControlPlane, want: &[&str]) {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    let want = &want;
    wait_for(
        &format!("cluster3's pods {want:?} on {which}"),
        CONVERGE,
        || async move {
            let got = c3_pods(cp).await?;
            if got == *want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_streams_to_every_hub_replica_behind_one_address() {
    let subnet = Subnet::claim();
    let dir = tempfile::Builder::new()
        .prefix("crossmesh-agent-replicas-")
        .tempdir()
        .expect("tempdir");
    let api = FakeApiServer::start_with(Options {
        name: "cluster3".into(),
        tls: true,
        token: Some("sa-token-1".into()),
        ..Options::default()
    })
    .await;
    api.apply(&objects::namespace(AGENT_NS));
    api.apply(&objects::node("cluster3-node-1", "region-3", "zone-3a"));
    api.apply(&objects::service(
        NS,
        "cluster3",
        &[("app", "cluster3")],
        &[("http", 80, 8080)],
    ));
    api.apply(&c3_pod("cluster3-pod-a", &subnet.ip(31).to_string()));
    let sa = tempfile::tempdir().expect("sa dir");
    sa_dir(sa.path(), "sa-token-1", api.ca_pem().expect("ca"), AGENT_NS);

    // Hub A first: it creates the mesh CA in dir/ca; hub B then uses the same.
    let addr_a = subnet.addr(2, free_port());
    let addr_b = subnet.addr(3, free_port());
    let mesh_a = mesh_file(dir.path(), "hub-a", addr_a);
    let mesh_b = mesh_file(dir.path(), "hub-b", addr_b);
    let mut hub_a = ControlPlane::start(&mesh_a).await;
    let root = dir.path().join("ca").join("root-cert.pem");
    assert!(root.is_file(), "hub A wrote the mesh root");
    let hub_b = ControlPlane::start(&mesh_b).await;
    let out = Command::new(crossmesh_bin())
        .args(["agent-token", "create", "--mesh"])
        .arg(&mesh_a)
        .args(["--cluster", "cluster3", "--ttl", "10m"])
        .output()
        .expect("run agent-token create");
    assert!(
        out.status.success(),
        "agent-token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token_file = dir.path().join("cluster3.token");
    std::fs::write(&token_file, String::from_utf8_lossy(&out.stdout).trim()).expect("token");

    let lb = RoundRobin::start(vec![addr_a, addr_b]).await;
    let log = dir.path().join("agent.log");
    let file = std::fs::File::create(&log).expect("agent log");
    let wrapper = in_pod(Some(sa.path()));
    let mut cmd = Command::new(&wrapper[0]);
    cmd.args(&wrapper[1..])
        .arg(crossmesh_bin())
        .arg("agent")
        .args(["--hub", &lb.addr.to_string(), "--cluster", "cluster3"])
        .arg("--root-cert")
        .arg(&root)
        .arg("--token-file")
        .arg(&token_file)
        .arg("--state-dir")
        .arg(dir.path().join("agent-state"))
        .envs(api_env(api.addr().port()))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log"))
        .stderr(file);
    let _agent = AgentProc {
        child: Some(cmd.spawn().expect("start crossmesh agent")),
        log: log.clone(),
    };

    // Both hubs hold cluster3's pods, each from its own stream.
    wait_pods("hub A", &hub_a, &["cluster3-pod-a"]).await;
    wait_pods("hub B", &hub_b, &["cluster3-pod-a"]).await;
    for (which, cp) in [("hub A", &hub_a), ("hub B", &hub_b)] {
        let c = clusterz(cp).await.expect("clusterz");
        assert_eq!(c["agent"]["connected"], true, "{which}: {c}");
        assert_eq!(c["agent"]["synced"], true, "{which}: {c}");
    }
    // Two distinct sessions: each hub's Welcome named its own.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let links: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.contains("link to a hub process established"))
        .filter_map(|l| l.split("session=").nth(1))
        .filter_map(|s| s.split_whitespace().next())
        .collect();
    assert_eq!(links.len(), 2, "a link per hub process: {links:?}");

    // A pod added in cluster3 reaches both.
    api.apply(&c3_pod("cluster3-pod-b", &subnet.ip(32).to_string()));
    wait_pods("hub A", &hub_a, &["cluster3-pod-a", "cluster3-pod-b"]).await;
    wait_pods("hub B", &hub_b, &["cluster3-pod-a", "cluster3-pod-b"]).await;

    // Hub A restarted: a new session, so a full snapshot; the link to hub B
    // keeps its stream and gets the next change as a delta.
    let b_before = clusterz(&hub_b).await.expect("clusterz B");
    let b_streams = b_before["agent"]["streams"].as_u64().unwrap_or(0);
    assert!(b_streams >= 1, "{b_before}");
    hub_a.restart().await;
    api.apply(&c3_pod("cluster3-pod-c", &subnet.ip(33).to_string()));
    let all = ["cluster3-pod-a", "cluster3-pod-b", "cluster3-pod-c"];
    wait_pods("hub A after its restart", &hub_a, &all).await;
    wait_pods("hub B", &hub_b, &all).await;
    let a = clusterz(&hub_a).await.expect("clusterz A");
    assert_eq!(a["agent"]["resumed"], false, "a full snapshot: {a}");
    assert_eq!(a["agent"]["synced"], true, "{a}");
    assert_eq!(a["counts"]["pods"], 3, "{a}");
    let b = clusterz(&hub_b).await.expect("clusterz B");
    assert_eq!(
        b["agent"]["streams"].as_u64().unwrap_or(0),
        b_streams,
        "hub B's stream was left alone by the probes: {b}"
    );
    assert_eq!(b["agent"]["connected"], true, "{b}");
    assert_eq!(b["stale"], false, "{b}");
}
