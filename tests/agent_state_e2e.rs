//! Issue 13, the member-cluster agent's state and streams, end to end with the
//! real binary (`crossmesh serve` as the hub, `crossmesh agent` run as if in a
//! Pod of cluster3 against the in-repo fake API server):
//!
//! - without `--state-dir` the agent keeps its certificate, key and trust bundle
//!   in the Secret `crossmesh-agent-state` of its own namespace, created at
//!   enrolment and updated at renewal; restarted without a token it connects with
//!   the kept certificate; it reads that one Secret by name and lists or watches
//!   no Secret at all.

mod support;

#[path = "support/kube_api.rs"]
mod kube_api;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube_api::{objects, FakeApiServer, Options, RequestRecord, Verb};
use serde_json::Value;
use support::control_plane::AgentProc;
use support::control_plane::{crossmesh_bin, ControlPlane, StartOptions};
use support::in_pod::{api_env, in_pod, sa_dir};
use support::net::{free_port, Subnet};
use support::{wait_for, CONVERGE};

/// The agent's namespace (its service account's `namespace` file).
const AGENT_NS: &str = "crossmesh-system";
/// The Secret the agent keeps its state in.
const STATE_SECRET: &str = "crossmesh-agent-state";
/// The namespace of cluster3's workloads (the agent's grant).
const NS: &str = "shop";

/// The hub, cluster3's API server and the agent's service-account directory.
struct Fixture {
    agent: AgentProc,
    _subnet: Subnet,
    dir: tempfile::TempDir,
    sa: tempfile::TempDir,
    api: FakeApiServer,
    agent_addr: SocketAddr,
    cp: ControlPlane,
    started: u32,
}

/// `crossmesh agent-token create` for cluster3; the printed token.
fn create_token(mesh_file: &Path) -> String {
    let out = Command::new(crossmesh_bin())
        .args(["agent-token", "create", "--mesh"])
        .arg(mesh_file)
        .args(["--cluster", "cluster3", "--ttl", "10m"])
        .output()
        .expect("run agent-token create");
    assert!(
        out.status.success(),
        "agent-token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Fixture {
    /// The hub with cluster3 as an agent cluster (grant: `shop`), `ca_extra`
    /// lines under `ca:` and `mesh_extra` at the end of the mesh file.
    async fn start(ca_extra: &str, mesh_extra: &str) -> Fixture {
        let subnet = Subnet::claim();
        let dir = tempfile::Builder::new()
            .prefix("crossmesh-agent-state-")
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
        api.apply(&objects::pod(
            NS,
            "cluster3-pod-a",
            &subnet.ip(31).to_string(),
            "cluster3-node-1",
            &[("app", "cluster3")],
            true,
        ));
        let sa = tempfile::tempdir().expect("sa dir");
        sa_dir(sa.path(), "sa-token-1", api.ca_pem().expect("ca"), AGENT_NS);
        let agent_addr = subnet.addr(2, free_port());
        let mesh_file = dir.path().join("mesh.yaml");
        std::fs::write(
            &mesh_file,
            format!(
                "trustDomain: cluster.local\n\
                 agentAddress: {agent_addr}\n\
                 ca:\n  stateDir: ca\n{ca_extra}\
                 clusters:\n\
                 - name: cluster3\n  agent:\n    namespaces: [{NS}]\n\
                 tunables:\n  readyTimeoutMs: 3000\n{mesh_extra}"
            ),
        )
        .expect("mesh file");
        let token = create_token(&mesh_file);
        std::fs::write(dir.path().join("cluster3.token"), token).expect("token file");
        let cp = ControlPlane::start_with(
            &mesh_file,
            StartOptions {
                no_wait_ready: true,
                ..StartOptions::default()
            },
        )
        .await;
        let root = dir.path().join("ca").join("root-cert.pem");
        wait_for("the mesh root written by serve", CONVERGE, || async {
            if root.is_file() {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        })
        .await;
        Fixture {
            agent: AgentProc {
                child: None,
                log: PathBuf::new(),
            },
            _subnet: subnet,
            dir,
            sa,
            api,
            agent_addr,
            cp,
            started: 0,
        }
    }

    /// Start `crossmesh agent` for cluster3 in a Pod of cluster3, without
    /// `--state-dir`, with the token file or without.
    fn start_agent(&mut self, with_token: bool, extra_args: &[&str]) {
        self.started += 1;
        let log = self.dir.path().join(format!("agent-{}.log", self.started));
        let file = std::fs::File::create(&log).expect("agent log");
        let wrapper = in_pod(Some(self.sa.path()));
        let mut cmd = Command::new(&wrapper[0]);
        cmd.args(&wrapper[1..])
            .arg(crossmesh_bin())
            .arg("agent")
            .args([
                "--hub",
                &self.agent_addr.to_string(),
                "--cluster",
                "cluster3",
            ])
            .arg("--root-cert")
            .arg(self.dir.path().join("ca").join("root-cert.pem"))
            .args(extra_args)
            .envs(api_env(self.api.addr().port()))
            .env("RUST_LOG", "info")
            .env_remove("CROSSMESH_STATE_DIR")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file);
        if with_token {
            cmd.arg("--token-file")
                .arg(self.dir.path().join("cluster3.token"));
        }
        self.agent = AgentProc {
            child: Some(cmd.spawn().expect("start crossmesh agent")),
            log,
        };
    }

    async fn clusterz(&self) -> Result<Value, String> {
        let j = self.cp.json("/debug/clusterz").await?;
        j.as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "cluster3")
            .cloned()
            .ok_or_else(|| format!("cluster3 not on clusterz: {j}"))
    }

    async fn wait_clusterz(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let check = &check;
        wait_for(what, CONVERGE, || async move {
            let c = self.clusterz().await?;
            if check(&c) {
                Ok(c)
            } else {
                Err(c.to_string())
            }
        })
        .await
    }

    /// The state Secret's data, decoded, if it exists.
    fn state_secret(&self) -> Option<(Value, std::collections::BTreeMap<String, String>)> {
        let s = self.api.get("", "secrets", AGENT_NS, STATE_SECRET)?;
        let mut data = std::collections::BTreeMap::new();
        for (k, v) in s["data"].as_object().into_iter().flatten() {
            let b = base64_decode(v.as_str().unwrap_or_default());
            data.insert(k.clone(), String::from_utf8(b).expect("utf-8 data"));
        }
        Some((s, data))
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64 data")
}

/// Serial of the first certificate of a PEM chain, as `/debug/clusterz` shows
/// it (x509-parser's colon-separated hex).
fn serial_of(chain_pem: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("PEM");
    let (_, c) = x509_parser::parse_x509_certificate(&der).expect("certificate");
    c.raw_serial_as_string()
}

/// URI SANs of the first certificate of a PEM chain.
fn uris_of(chain_pem: &str) -> Vec<String> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("PEM");
    let (_, c) = x509_parser::parse_x509_certificate(&der).expect("certificate");
    c.subject_alternative_name()
        .ok()
        .flatten()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn secret_requests(api: &FakeApiServer) -> Vec<RequestRecord> {
    api.requests()
        .into_iter()
        .filter(|r| r.plural == "secrets")
        .collect()
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_keeps_its_identity_in_a_secret_and_restarts_without_a_token() {
    // 30 s certificates: renewed 15 s after issue, so the update path runs too.
    let mut f = Fixture::start("  workloadCertTTL: 30s\n", "").await;
    f.start_agent(true, &[]);
    let first = f
        .wait_clusterz("cluster3 synced through the agent", |c| {
            c["agent"]["synced"] == true && c["counts"]["pods"] == 1
        })
        .await;
    let serial = first["agent"]["certificate_serial"]
        .as_str()
        .expect("serial")
        .to_string();
    // Created at enrolment in the agent's namespace: the certificate the
    // stream presents, its key, the trust bundle.
    let (secret, data) = f.state_secret().expect("the state Secret");
    assert_eq!(secret["type"], "Opaque", "{secret}");
    for k in ["cert-chain.pem", "key.pem", "trust-bundle.pem"] {
        assert!(data.contains_key(k), "{k} kept: {:?}", data.keys());
    }
    assert_eq!(serial_of(&data["cert-chain.pem"]), serial);
    assert_eq!(
        uris_of(&data["cert-chain.pem"]),
        ["spiffe://cluster.local/crossmesh/cluster/cluster3"]
    );
    assert!(data["key.pem"].contains("PRIVATE KEY"));
    let root = std::fs::read_to_string(f.dir.path().join("ca").join("root-cert.pem")).unwrap();
    assert_eq!(data["trust-bundle.pem"].trim(), root.trim());

    // Renewed at half life: the Secret is updated with the new certificate.
    let renewed = wait_for(
        "the Secret updated with a renewed certificate",
        CONVERGE + Duration::from_secs(20),
        || async {
            let (_, d) = f.state_secret().ok_or("no Secret")?;
            let s = serial_of(&d["cert-chain.pem"]);
            if s != serial {
                Ok(s)
            } else {
                Err(format!("still {s}"))
            }
        },
    )
    .await;
    assert!(
        secret_requests(&f.api)
            .iter()
            .any(|r| r.verb == Verb::Update && r.name == STATE_SECRET),
        "renewal replaced the Secret: {:?}",
        secret_requests(&f.api)
    );

    // Restarted without a token (and its file gone): it connects with the
    // certificate kept in the Secret.
    f.agent.kill();
    std::fs::remove_file(f.dir.path().join("cluster3.token")).unwrap();
    let streams = first["agent"]["streams"].as_u64().unwrap_or(0);
    let before = f.clusterz().await.expect("clusterz")["agent"]["streams"]
        .as_u64()
        .unwrap_or(0);
    assert!(before >= streams);
    f.start_agent(false, &[]);
    let again = f
        .wait_clusterz("a new stream from the restarted agent", |c| {
            c["agent"]["streams"].as_u64().unwrap_or(0) > before
                && c["agent"]["connected"] == true
                && c["agent"]["synced"] == true
        })
        .await;
    let (_, d) = f.state_secret().expect("the state Secret");
    assert_eq!(
        again["agent"]["certificate_serial"].as_str(),
        Some(serial_of(&d["cert-chain.pem"]).as_str()),
        "the restarted agent presents the kept certificate: {again}"
    );
    assert_ne!(serial_of(&d["cert-chain.pem"]), serial, "{renewed}");
    assert!(
        again["agent"]["refusals"]
            .as_object()
            .is_none_or(|m| m.is_empty()),
        "{again}"
    );

    // Least privilege: the one Secret, by name, in the agent's namespace; no
    // list or watch of Secrets, no other Secret read.
    let reqs = secret_requests(&f.api);
    assert!(!reqs.is_empty());
    for r in &reqs {
        assert_eq!(r.namespace, AGENT_NS, "{r:?}");
        match r.verb {
            Verb::Get | Verb::Update => assert_eq!(r.name, STATE_SECRET, "{r:?}"),
            Verb::Create => assert_eq!(r.name, "", "{r:?}"),
            _ => panic!("the agent may only get, update and create its Secret: {r:?}"),
        }
    }
    assert_eq!(
        reqs.iter().filter(|r| r.verb == Verb::Create).count(),
        1,
        "created once: {reqs:?}"
    );
}

/// A VirtualService for `cluster3.shop.svc.cluster.local` named `name` in `ns`.
fn virtual_service(ns: &str, name: &str) -> Value {
    serde_json::json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "hosts": ["cluster3.shop.svc.cluster.local"],
            "http": [{"route": [{"destination": {
                "host": "cluster3.shop.svc.cluster.local", "port": {"number": 80}
            }}]}]
        }
    })
}

/// `(kind, namespace/name)` of the Istio objects in force on `/debug/configz`
/// that came from cluster3's agent.
async fn in_force_from_agent(cp: &ControlPlane) -> Result<Vec<(String, String)>, String> {
    let j = cp.json("/debug/configz").await?;
    let mut out: Vec<(String, String)> = j["inForce"]
        .as_array()
        .or_else(|| j["in_force"].as_array())
        .ok_or_else(|| format!("no inForce on configz: {j}"))?
        .iter()
        .filter(|o| o["origin"].as_str().unwrap_or("").contains("cluster3"))
        .map(|o| {
            (
                o["kind"].as_str().unwrap_or("").to_string(),
                format!(
                    "{}/{}",
                    o["namespace"].as_str().unwrap_or(""),
                    o["name"].as_str().unwrap_or("")
                ),
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_config_reaches_the_config_store_through_the_agent() {
    let mut f = Fixture::start("", "config:\n- cluster: cluster3\n").await;
    f.api.apply(&virtual_service(NS, "vs-shop"));
    // Outside the grant: never watched, never sent.
    f.api.apply(&virtual_service("other", "vs-other"));
    // Rejected by the config store's validation, with its name and reason.
    let mut bad = virtual_service(NS, "vs-bad");
    bad["spec"]["http"][0]["noSuchField"] = serde_json::json!(true);
    f.api.apply(&bad);
    // The agent may not read Sidecars (403): reported, the other kinds flow.
    f.api
        .add_fault(kube_api::FaultRule::status(403).of("sidecars"));
    f.start_agent(true, &[]);
    f.wait_clusterz("cluster3 synced through the agent", |c| {
        c["agent"]["synced"] == true
    })
    .await;
    let want = vec![("VirtualService".to_string(), format!("{NS}/vs-shop"))];
    wait_for("vs-shop in force, from cluster3", CONVERGE, || async {
        let got = in_force_from_agent(&f.cp).await?;
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    let configz = f.cp.json("/debug/configz").await.expect("configz");
    let rejected = configz["rejected"].to_string();
    assert!(
        rejected.contains("vs-bad") && rejected.contains("noSuchField"),
        "vs-bad rejected by name: {rejected}"
    );
    let c = f
        .wait_clusterz("Sidecars reported unavailable", |c| {
            c["agent"]["unavailable"]["SIDECAR"]
                .as_str()
                .is_some_and(|r| r.contains("403"))
        })
        .await;
    assert!(
        c["agent"]["unavailable"]["VIRTUAL_SERVICE"].is_null(),
        "{c}"
    );

    // Deltas: a DestinationRule added, the VirtualService deleted.
    f.api.apply(&serde_json::json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "dr-shop", "namespace": NS},
        "spec": {"host": "cluster3.shop.svc.cluster.local",
                 "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}}
    }));
    f.api
        .delete("networking.istio.io", "virtualservices", NS, "vs-shop")
        .expect("delete vs-shop");
    let want = vec![("DestinationRule".to_string(), format!("{NS}/dr-shop"))];
    wait_for("dr-shop in force, vs-shop gone", CONVERGE, || async {
        let got = in_force_from_agent(&f.cp).await?;
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    // Only the grant's namespace was read for Istio config.
    for r in f.api.requests() {
        if r.plural == "virtualservices" || r.plural == "destinationrules" {
            assert_eq!(r.namespace, NS, "{r:?}");
        }
    }
}

/// A TCP relay between the agent and the hub's agent port that the test can
/// take down (open connections cut, new ones closed at once) and bring back:
/// a short network outage with both processes running.
struct Relay {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Relay {
        // The hub's certificate names 127.0.0.1 and localhost.
        let l = tokio::net::TcpListener::bind(("127.0.0.1", free_port()))
            .await
            .expect("bind relay");
        let addr = l.local_addr().expect("relay addr");
        let down = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (d, c) = (down.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                if d.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let t = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c.lock().unwrap().push(t);
            }
        });
        Relay {
            addr,
            down,
            conns,
            accept,
        }
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

fn c3_pod(name: &str, i: u32) -> Value {
    objects::pod(
        NS,
        name,
        &std::net::Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8).to_string(),
        "cluster3-node-1",
        &[("app", "cluster3")],
        true,
    )
}

/// Endpoint addresses of `cluster3.shop.svc.cluster.local` from cluster3 on
/// `/debug/registryz`, sorted.
async fn c3_endpoints(cp: &ControlPlane) -> Result<Vec<String>, String> {
    let j = cp.json("/debug/registryz").await?;
    let svc = j["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["hostname"] == "cluster3.shop.svc.cluster.local")
        .cloned()
        .ok_or_else(|| "no cluster3 service".to_string())?;
    let mut ips: Vec<String> = svc["endpoints"]["cluster3"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["address"].as_str().unwrap_or("").to_string())
        .collect();
    ips.sort();
    Ok(ips)
}

/// cluster3 grown to `n` more Pods; a cut of `outage` during which one Pod is
/// deleted and one added; the resumed stream; then the hub restarted. Returns
/// (bytes of the first full snapshot stream, of the resumed stream, of the
/// stream after the hub's restart).
async fn resume_run(n: u32, outage: Duration) -> (u64, u64, u64) {
    let mut f = Fixture::start("", "").await;
    let relay = Relay::start(f.agent_addr).await;
    let hub = format!("127.0.0.1:{}", relay.addr.port());
    // Through the relay instead of the hub's address.
    f.agent_addr = hub.parse().expect("relay address");
    f.start_agent(true, &[]);
    for i in 0..n {
        f.api.apply(&c3_pod(&format!("cluster3-pod-m{i}"), i));
    }
    let all = u64::from(n) + 1;
    let first = wait_for(
        "every pod held by the hub",
        Duration::from_secs(300),
        || async {
            let c = f.clusterz().await?;
            if c["agent"]["synced"] == true && c["counts"]["pods"].as_u64() == Some(all) {
                Ok(c)
            } else {
                Err(c.to_string())
            }
        },
    )
    .await;
    assert_eq!(first["agent"]["resumed"], false, "{first}");
    // The stream that carried them: bytes of its snapshot plus deltas.
    let full = first["agent"]["stream_bytes"].as_u64().unwrap_or(0);
    let streams = first["agent"]["streams"].as_u64().unwrap_or(0);

    // A short outage with both sides up; a pod replaced meanwhile.
    relay.cut();
    f.wait_clusterz("the hub saw the stream end", |c| {
        c["agent"]["connected"] == false
    })
    .await;
    f.api
        .delete("", "pods", NS, "cluster3-pod-m0")
        .expect("delete m0");
    f.api.apply(&c3_pod("cluster3-pod-x", n + 7));
    tokio::time::sleep(outage).await; // the outage itself, not a wait for a condition
    relay.restore();
    let resumed = f
        .wait_clusterz("a resumed stream", |c| {
            c["agent"]["streams"].as_u64().unwrap_or(0) > streams
                && c["agent"]["connected"] == true
                && c["agent"]["synced"] == true
        })
        .await;
    assert_eq!(
        resumed["agent"]["resumed"], true,
        "the agent resumed instead of sending a snapshot: {resumed}"
    );
    assert_eq!(resumed["stale"], false, "{resumed}");
    let gone = std::net::Ipv4Addr::new(10, 0, 0, 0).to_string();
    let added = std::net::Ipv4Addr::new(
        10,
        ((n + 7) >> 16) as u8,
        ((n + 7) >> 8) as u8,
        (n + 7) as u8,
    )
    .to_string();
    wait_for("m0 gone and x added after the resume", CONVERGE, || async {
        let ips = c3_endpoints(&f.cp).await?;
        if !ips.contains(&gone) && ips.contains(&added) && ips.len() as u64 == all {
            Ok(())
        } else {
            Err(format!("{} endpoints", ips.len()))
        }
    })
    .await;
    let resumed_bytes = f.clusterz().await.expect("clusterz")["agent"]["stream_bytes"]
        .as_u64()
        .unwrap_or(0);

    // A restarted hub (a new session) gets the whole snapshot again.
    f.cp.restart().await;
    let after = f
        .wait_clusterz("a snapshot to the restarted hub", |c| {
            c["agent"]["connected"] == true
                && c["agent"]["synced"] == true
                && c["counts"]["pods"].as_u64() == Some(all)
        })
        .await;
    assert_eq!(after["agent"]["resumed"], false, "{after}");
    let restarted = after["agent"]["stream_bytes"].as_u64().unwrap_or(0);
    drop(relay);
    (full, resumed_bytes, restarted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_disconnect_resumes_without_a_snapshot_and_a_restarted_hub_gets_one() {
    let (full, resumed, restarted) = resume_run(200, Duration::from_secs(2)).await;
    // The resumed stream carried the two changes, not the 201 pods.
    assert!(
        resumed * 10 < restarted,
        "resumed stream {resumed} bytes, full snapshot after the hub's restart {restarted}"
    );
    assert!(full > 0 && restarted > 0);
}

/// A measurement, not an assertion: bytes the agent sends on reconnecting with
/// cluster3 at `CROSSMESH_TEST_AGENT_PODS` (default 10,000) Pods, resumed after
/// a short outage versus the full snapshot a restarted hub gets:
///
/// ```text
/// cargo test --test agent_state_e2e resume_bytes -- --ignored --nocapture
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn resume_bytes_with_many_pods() {
    let n: u32 = std::env::var("CROSSMESH_TEST_AGENT_PODS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let (full, resumed, restarted) = resume_run(n, Duration::from_secs(2)).await;
    eprintln!(
        "resume_bytes: {} pods; binary {}; first stream {full} bytes; resumed stream after a 2 s \
         outage (1 pod deleted, 1 added) {resumed} bytes; full snapshot to a restarted hub \
         {restarted} bytes ({:.1} bytes per pod)",
        n + 1,
        crossmesh_bin(),
        restarted as f64 / f64::from(n + 1),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_over_the_hubs_limit_is_refused_with_its_reason() {
    // 100 Pods are about 38 kB of objects (BENCHMARKS.md: 380 bytes per Pod).
    let mut f = Fixture::start("", "  agentMaxSnapshotBytes: 20000\n").await;
    for i in 0..100 {
        f.api.apply(&c3_pod(&format!("cluster3-pod-m{i}"), i));
    }
    f.start_agent(true, &[]);
    let c = f
        .wait_clusterz("the oversized snapshot refused", |c| {
            c["agent"]["refusals"]["snapshot_too_large"]
                .as_u64()
                .is_some_and(|n| n >= 1)
        })
        .await;
    let why = c["agent"]["last_disconnect"].as_str().unwrap_or("");
    assert!(
        why.contains("exceeds the hub's limit of 20000 bytes"),
        "the reason names the limit: {c}"
    );
    // Nothing of the partial snapshot was applied.
    assert_eq!(c["agent"]["synced"], false, "{c}");
    assert_eq!(c["counts"]["pods"].as_u64().unwrap_or(0), 0, "{c}");
    // The agent keeps retrying (with backoff), refused each time.
    f.wait_clusterz("a second refusal", |c| {
        c["agent"]["refusals"]["snapshot_too_large"]
            .as_u64()
            .is_some_and(|n| n >= 2)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_agent_inventory_leaves_objects_out_and_says_so() {
    let mut f = Fixture::start("", "").await;
    for i in 0..100 {
        f.api.apply(&c3_pod(&format!("cluster3-pod-m{i}"), i));
    }
    f.start_agent(true, &["--max-inventory-bytes", "20000"]);
    let c = f
        .wait_clusterz("Pods reported left out", |c| {
            c["agent"]["synced"] == true
                && c["agent"]["unavailable"]["POD"]
                    .as_str()
                    .is_some_and(|r| r.contains("inventory is full"))
        })
        .await;
    let pods = c["counts"]["pods"].as_u64().unwrap_or(0);
    assert!(
        pods > 0 && pods < 101,
        "only what fits in 20000 bytes is published: {c}"
    );
    let why = c["agent"]["unavailable"]["POD"].as_str().unwrap_or("");
    assert!(
        why.contains("--max-inventory-bytes 20000") && why.contains("left out"),
        "{why}"
    );
}
