//! The seed scenario (shared/seeds/002) with live member clusters: three fake
//! Kubernetes API servers ([`FakeApiServer`], one per cluster), each holding
//! service `clusterN` in namespace `test` with pod `clusterN-pod-a`; `crossmesh
//! serve` reading them through kubeconfig files; the Gateway `istio-system/cluster`
//! for `*.imroc.cc` and VirtualServices `clusterN-imroc-cc` either in a manifests
//! directory or as CRDs in cluster1 (`config: - cluster: cluster1`); a real Envoy
//! gateway in front.
//!
//! Included with `#[path = "support/kube_seed.rs"] mod kube_seed;` next to
//! `mod support;` and `#[path = "support/kube_api.rs"] mod kube_api;`.
//!
//! Addresses: the test's own subnet `127.A.B.0/24`; the gateway proxy is `.1`, pods
//! of cluster N are `.N1`..`.N9`. The fake API servers listen on `127.0.0.1` with
//! kernel-chosen ports.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::kube_api::{objects, Credentials, FakeApiServer, Options};
use crate::support::backend::Backend;
use crate::support::control_plane::{bootstrap_gateway, ControlPlane, GatewayProxy};
use crate::support::envoy::Envoy;
use crate::support::manifests;
use crate::support::net::{free_port, Subnet};
use crate::support::scenario::{
    host_of, outbound_cluster, service_host, CLUSTERS, GW_SELECTOR, NS,
};
use crate::support::{http, wait_for, CONVERGE};

/// Where the Istio config comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IstioFrom {
    /// A watched manifests directory (`config: - manifests: istio`).
    Manifests,
    /// CRDs in cluster1's API server (`config: - cluster: cluster1`).
    Cluster1,
}

/// How to lay out the scenario.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Which of cluster1..3 (1-based) are listed in the mesh file; the others only
    /// have an API server (to be registered through a remote secret).
    pub members: Vec<u8>,
    pub istio: IstioFrom,
    /// Extra top-level mesh file YAML (settings under test).
    pub extra_mesh: String,
    /// Clusters (1-based) whose API server is stopped before crossmesh starts.
    pub dead: Vec<u8>,
    /// How each cluster's API server authenticates crossmesh (cluster1..3 in
    /// order; missing entries are [`Auth::Plain`]).
    pub auth: Vec<Auth>,
}

/// How a fake API server is served and how the kubeconfig crossmesh reads
/// authenticates to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Auth {
    /// Plain HTTP, no credentials.
    #[default]
    Plain,
    /// HTTPS with the server's own CA in the kubeconfig, and a bearer token the
    /// server checks.
    HttpsToken,
    /// HTTPS with the server's own CA, and a client certificate (no token) that
    /// the server requires at the TLS handshake.
    HttpsClientCert,
}

/// The bearer token of cluster `n`'s server under [`Auth::HttpsToken`]
/// (generated per run: nothing secret is kept in the repo).
pub fn token_of(n: u8) -> String {
    use std::hash::BuildHasher;
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let r = KEYS.get_or_init(Default::default).hash_one(n);
    format!("{}-reader-{r:016x}", name(n))
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            members: vec![1, 2, 3],
            istio: IstioFrom::Cluster1,
            extra_mesh: String::new(),
            dead: Vec::new(),
            auth: Vec::new(),
        }
    }
}

pub struct KubeSeed {
    pub subnet: Subnet,
    pub dir: tempfile::TempDir,
    pub mesh_file: PathBuf,
    /// cluster1..3, in order.
    pub servers: Vec<FakeApiServer>,
    pub pod_port: u16,
    pub gw_port: u16,
    pub backends: Vec<Backend>,
    pub cp: ControlPlane,
    /// How long `crossmesh serve` took to answer `/ready` 200.
    pub ready_after: Duration,
    pub envoy: Envoy,
}

/// Why Envoy does not serve a host, told by its local reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unserved {
    /// No virtual host or route matches the request: 404, empty body (`NR`).
    NoRoute,
    /// The route's cluster is not in Envoy's configuration: 503, empty body (`NC`).
    NoCluster,
    /// The cluster exists but has no healthy host: 503 `no healthy upstream` (`UH`).
    NoHealthyUpstream,
}

impl Unserved {
    /// Envoy's status and body for this reason.
    pub fn reply(self) -> (u16, &'static str) {
        match self {
            Unserved::NoRoute => (404, ""),
            Unserved::NoCluster => (503, ""),
            Unserved::NoHealthyUpstream => (503, "no healthy upstream"),
        }
    }
}

/// `clusterN` (1-based).
pub fn name(n: u8) -> &'static str {
    CLUSTERS[n as usize - 1]
}

/// The seed's Gateway `istio-system/cluster` as a CRD object.
pub fn gateway_object(port: u16) -> Value {
    let selector: serde_json::Map<String, Value> = GW_SELECTOR
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "Gateway",
        "metadata": {"name": "cluster", "namespace": "istio-system"},
        "spec": {"selector": selector, "servers": [{
            "port": {"number": port, "name": format!("HTTP-{port}"), "protocol": "HTTP"},
            "hosts": ["*.imroc.cc"]
        }]}
    })
}

/// The seed's VirtualService `clusterN-imroc-cc` as a CRD object.
pub fn virtual_service_object(cluster: &str) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": format!("{cluster}-imroc-cc"), "namespace": NS},
        "spec": {
            "gateways": ["istio-system/cluster"],
            "hosts": [host_of(cluster)],
            "http": [{"route": [{"destination": {
                "host": service_host(cluster), "port": {"number": 80}
            }}]}]
        }
    })
}

impl KubeSeed {
    pub async fn start(layout: Layout) -> KubeSeed {
        let subnet = Subnet::claim();
        let dir = tempfile::Builder::new()
            .prefix("crossmesh-kube-e2e-")
            .tempdir()
            .expect("tempdir");
        let pod_port = free_port();
        let gw_port = free_port();
        let mut servers = Vec::new();
        let mut backends = Vec::new();
        for n in 1..=3u8 {
            let c = name(n);
            let auth = layout.auth.get(n as usize - 1).copied().unwrap_or_default();
            let token = token_of(n);
            let s = FakeApiServer::start_with(Options {
                name: c.into(),
                tls: auth != Auth::Plain,
                client_certs: auth == Auth::HttpsClientCert,
                token: (auth == Auth::HttpsToken).then(|| token.clone()),
                ..Options::default()
            })
            .await;
            let node = format!("{c}-node-1");
            s.apply(&objects::node(
                &node,
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
            let creds = match auth {
                Auth::Plain => Credentials::default(),
                Auth::HttpsToken => Credentials {
                    token: Some(token),
                    ..Credentials::default()
                },
                Auth::HttpsClientCert => Credentials {
                    no_token: true,
                    client_cert: Some(s.issue_client_cert("crossmesh-reader", &[])),
                    ..Credentials::default()
                },
            };
            s.write_kubeconfig_with(&dir.path().join(format!("{c}.kubeconfig")), &creds);
            servers.push(s);
        }
        let mut yaml = String::from("trustDomain: cluster.local\nclusters:\n");
        for n in &layout.members {
            let c = name(*n);
            let network = if *n == 3 { "account-b" } else { "vpc-a" };
            yaml.push_str(&format!(
                "- name: {c}\n  network: {network}\n  kubeconfig: {c}.kubeconfig\n"
            ));
        }
        match layout.istio {
            IstioFrom::Cluster1 => {
                assert!(layout.members.contains(&1), "Istio CRDs live in cluster1");
                servers[0].apply(&gateway_object(gw_port));
                for c in CLUSTERS {
                    servers[0].apply(&virtual_service_object(c));
                }
                yaml.push_str("config:\n- cluster: cluster1\n");
            }
            IstioFrom::Manifests => {
                let istio = dir.path().join("istio");
                std::fs::create_dir_all(&istio).expect("istio dir");
                std::fs::write(
                    istio.join("gateway.yaml"),
                    manifests::gateway(
                        "istio-system",
                        "cluster",
                        &GW_SELECTOR,
                        gw_port,
                        &["*.imroc.cc"],
                    ),
                )
                .expect("write gateway");
                for c in CLUSTERS {
                    std::fs::write(
                        istio.join(format!("vs-{c}.yaml")),
                        crate::support::scenario::vs(c, &host_of(c)),
                    )
                    .expect("write vs");
                }
                yaml.push_str("config:\n- manifests: istio\n");
            }
        }
        yaml.push_str(&layout.extra_mesh);
        let mesh_file = dir.path().join("mesh.yaml");
        std::fs::write(&mesh_file, yaml).expect("write mesh file");
        for n in &layout.dead {
            servers[*n as usize - 1].stop().await;
        }
        let t0 = std::time::Instant::now();
        let cp = ControlPlane::start(&mesh_file).await;
        let ready_after = t0.elapsed();
        let gw = GatewayProxy::ingress(subnet.ip(1), "cluster1", false);
        let admin_port = free_port();
        let envoy = Envoy::start("gateway-kube", &bootstrap_gateway(&gw, cp.xds, admin_port)).await;
        envoy.wait_ready(CONVERGE).await;
        KubeSeed {
            subnet,
            dir,
            mesh_file,
            servers,
            pod_port,
            gw_port,
            backends,
            cp,
            ready_after,
            envoy,
        }
    }

    pub fn server(&self, n: u8) -> &FakeApiServer {
        &self.servers[n as usize - 1]
    }

    pub fn gw_addr(&self) -> SocketAddr {
        SocketAddr::from((self.subnet.ip(1), self.gw_port))
    }

    /// IP of pod `idx` (1-based) of cluster `n`: `.N<idx>`.
    pub fn pod_ip(&self, n: u8, idx: u8) -> Ipv4Addr {
        self.subnet.ip(n * 10 + idx)
    }

    /// Create or update pod `clusterN-pod-<suffix>` at `.N<idx>` in cluster `n`'s
    /// API server, starting its backend if needed. Returns the pod name.
    pub async fn put_pod(&mut self, n: u8, idx: u8, suffix: &str, ready: bool) -> String {
        let pod = format!("{}-pod-{suffix}", name(n));
        let ip = self.pod_ip(n, idx);
        self.server(n).apply(&pod_object(n, &pod, ip, ready));
        if !self.backends.iter().any(|b| b.name == pod) {
            self.backends
                .push(Backend::start(ip, self.pod_port, &pod).await);
        }
        pod
    }

    pub fn delete_pod(&self, n: u8, suffix: &str) {
        let pod = format!("{}-pod-{suffix}", name(n));
        self.server(n)
            .delete("", "pods", NS, &pod)
            .unwrap_or_else(|e| panic!("delete pod {pod}: {e}"));
    }

    pub fn backend(&self, pod: &str) -> &Backend {
        self.backends
            .iter()
            .find(|b| b.name == pod)
            .unwrap_or_else(|| panic!("no backend {pod}"))
    }

    /// Wait until a request for `clusterN.imroc.cc` is answered 200 by `pod`.
    pub async fn wait_answer(&self, n: u8, pod: &str) {
        let addr = self.gw_addr();
        let host = host_of(name(n));
        let what = format!("Host {host} answered by {pod}");
        wait_for(&what, CONVERGE, || {
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

    /// Wait until a request for `clusterN.imroc.cc` gets Envoy's local reply for
    /// `why` (status and body; for [`Unserved::NoCluster`] also: Envoy holds no
    /// cluster for the service).
    pub async fn wait_not_served(&self, n: u8, why: Unserved) {
        let addr = self.gw_addr();
        let host = host_of(name(n));
        let cluster = outbound_cluster(name(n));
        let (status, body) = why.reply();
        let what = format!("Host {host} answered {status} {body:?} ({why:?})");
        wait_for(&what, CONVERGE, || {
            let host = host.clone();
            let cluster = cluster.clone();
            async move {
                let r = http::get(addr, &host, "/").await?;
                if (r.status, r.body.as_str()) != (status, body) {
                    return Err(format!("{} {:?}", r.status, r.body));
                }
                if why == Unserved::NoCluster {
                    let (_, clusters) = self.envoy.admin_get("/clusters").await?;
                    if clusters.contains(&format!("{cluster}::")) {
                        return Err(format!("503 but Envoy still has {cluster}"));
                    }
                }
                Ok(())
            }
        })
        .await
    }

    /// Envoy's hosts of `outbound|80||clusterN.test.svc.cluster.local`, each entry
    /// as listed (duplicates kept), sorted.
    pub async fn envoy_hosts(&self, n: u8) -> Result<Vec<SocketAddr>, String> {
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
                let port = a["port_value"].as_u64().unwrap_or(0) as u16;
                out.push(SocketAddr::from((ip, port)));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Wait until Envoy holds exactly the pods `idx` (of cluster `n`), once each.
    pub async fn wait_hosts(&self, n: u8, idx: &[u8]) {
        let mut want: Vec<SocketAddr> = idx
            .iter()
            .map(|i| SocketAddr::from((self.pod_ip(n, *i), self.pod_port)))
            .collect();
        want.sort();
        let what = format!("envoy hosts of {} == {want:?}", outbound_cluster(name(n)));
        let want = &want;
        wait_for(&what, CONVERGE, || async move {
            let got = self.envoy_hosts(n).await?;
            if &got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        })
        .await
    }

    /// This cluster's entry on `/debug/clusterz`.
    pub async fn clusterz(&self, n: u8) -> Result<Value, String> {
        let j = self.cp.json("/debug/clusterz").await?;
        let list = j
            .as_array()
            .or_else(|| j["clusters"].as_array())
            .cloned()
            .unwrap_or_default();
        list.into_iter()
            .find(|c| c["name"] == name(n))
            .ok_or_else(|| format!("{} not on clusterz: {j}", name(n)))
    }

    /// The endpoints of `clusterN.test.svc.cluster.local` from member cluster `n`
    /// on `/debug/registryz`.
    pub async fn registry_endpoints(&self, n: u8) -> Result<Vec<Value>, String> {
        let j = self.cp.json("/debug/registryz").await?;
        let host = service_host(name(n));
        let svc = j["services"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["hostname"] == host.as_str())
            .cloned();
        Ok(svc
            .and_then(|s| s["endpoints"][name(n)].as_array().cloned())
            .unwrap_or_default())
    }

    /// Wait until `/debug/clusterz` shows cluster `n` matching `check`.
    pub async fn wait_clusterz(&self, n: u8, what: &str, check: impl Fn(&Value) -> bool) {
        let check = &check;
        wait_for(what, CONVERGE, || async move {
            let c = self.clusterz(n).await?;
            if check(&c) {
                Ok(())
            } else {
                Err(c.to_string())
            }
        })
        .await
    }

    /// Send requests for `clusterN.imroc.cc` for `d`, asserting each one is answered
    /// 200 by one of `pods`. Returns how many were sent.
    pub async fn keep_answering(&self, n: u8, pods: &[&str], d: Duration) -> usize {
        let host = host_of(name(n));
        let t0 = std::time::Instant::now();
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
}

/// Pod `name` of cluster `n` at `ip`, labels `app=clusterN,version=v1`.
pub fn pod_object(n: u8, pod: &str, ip: Ipv4Addr, ready: bool) -> Value {
    let c = name(n);
    objects::pod(
        NS,
        pod,
        &ip.to_string(),
        &format!("{c}-node-1"),
        &[("app", c), ("version", "v1")],
        ready,
    )
}
