//! Issue 5, end to end: locality-aware EDS served by the real `crossmesh serve` to a
//! real Envoy gateway that carries `node.locality`, asserted on where real HTTP
//! requests land.
//!
//! Layout: member clusters `c1` (zones `region-1/zone-a` and `region-1/zone-b`) and
//! `c2` (`region-2/zone-c`, and `region-3/zone-d` for the region failover test);
//! service `web.test` in both clusters with one pod per zone (`pod-a`...`pod-d`);
//! the Envoy gateway is in `region-1/zone-a`. Each test claims its own
//! `127.A.B.0/24` and waits on conditions, never on fixed sleeps.

#[path = "support/kube_api.rs"]
mod kube_api;
mod support;

use std::net::SocketAddr;

use kube_api::FakeApiServer;

use support::backend::Backend;
use support::control_plane::{bootstrap, ControlPlane};
use support::envoy::Envoy;
use support::http;
use support::manifests::{self, cluster, Mesh};
use support::net::{free_port, Subnet};
use support::token_issuer::TokenIssuer;
use support::{wait_for, CONVERGE};

const NS: &str = "test";
const HOST: &str = "web.example.com";
const SVC: &str = "web.test.svc.cluster.local";
const CLUSTER: &str = "outbound|80||web.test.svc.cluster.local";

/// One pod: (name, member cluster, region, zone, host byte of its IP).
type PodSpec = (&'static str, &'static str, &'static str, &'static str, u8);

const PODS: [PodSpec; 4] = [
    ("pod-a", "c1", "region-1", "zone-a", 11),
    ("pod-b", "c1", "region-1", "zone-b", 21),
    ("pod-c", "c2", "region-2", "zone-c", 31),
    ("pod-d", "c2", "region-3", "zone-d", 41),
];

struct Lab {
    subnet: Subnet,
    mesh: Mesh,
    pod_port: u16,
    gw_port: u16,
    _backends: Vec<Backend>,
    cp: ControlPlane,
    envoy: Envoy,
    node_id: String,
}

fn node_name(p: &PodSpec) -> String {
    format!("node-{}", p.3)
}

impl Lab {
    /// Start the pods in `pods`, crossmesh with `istio` (extra Istio YAML) and the
    /// gateway in `region-1/zone-a`. `networks` is appended to the mesh file.
    async fn start(pods: &[PodSpec], istio: &str, networks: Option<(&str, &str)>) -> Lab {
        let subnet = Subnet::claim();
        let mesh = Mesh::new(&[
            cluster("c1", networks.map(|n| n.0)),
            cluster("c2", networks.map(|n| n.1)),
        ]);
        let pod_port = free_port();
        let gw_port = free_port();
        let mut backends = Vec::new();
        for c in ["c1", "c2"] {
            mesh.write_cluster(
                c,
                "service.yaml",
                &manifests::service(NS, "web", 80, pod_port, &[("app", "web")]),
            );
        }
        for p in pods {
            mesh.write_cluster(
                p.1,
                &format!("{}.yaml", node_name(p)),
                &manifests::node(&node_name(p), p.2, p.3, None),
            );
            let ip = subnet.ip(p.4);
            mesh.write_cluster(
                p.1,
                &format!("{}.yaml", p.0),
                &pod_yaml(p, &subnet, pod_port, true),
            );
            backends.push(Backend::start(ip, pod_port, p.0).await);
        }
        mesh.write_istio(
            "gateway.yaml",
            &manifests::gateway(
                "istio-system",
                "gw",
                &[("istio", "ingressgateway")],
                gw_port,
                &[HOST],
            ),
        );
        mesh.write_istio(
            "vs.yaml",
            &manifests::virtual_service(NS, "web", &["istio-system/gw"], &[HOST], SVC, 80),
        );
        if !istio.is_empty() {
            mesh.write_istio("dr.yaml", istio);
        }
        let cp = ControlPlane::start(&mesh.mesh_file).await;
        let admin_port = free_port();
        let ip = subnet.ip(1);
        let mut args: Vec<String> = [
            "bootstrap",
            // Listener stats: not kept by the default (graph) stats matcher.
            "--stats-matcher",
            "all",
            "--role",
            "gateway",
            "--name",
            "gw-0",
            "--namespace",
            "istio-system",
            "--labels",
            "istio=ingressgateway",
            "--cluster-id",
            "c1",
            "--locality",
            "region-1/zone-a",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend([
            "--ip".into(),
            ip.to_string(),
            "--xds-address".into(),
            cp.xds.to_string(),
            "--admin-port".into(),
            admin_port.to_string(),
        ]);
        if let Some((n1, _)) = networks {
            args.extend(["--network".into(), n1.to_string()]);
        }
        let yaml = bootstrap(&args);
        let envoy = Envoy::start("locality-gw", &yaml).await;
        envoy.wait_ready(CONVERGE).await;
        Lab {
            node_id: format!("router~{ip}~gw-0.istio-system~istio-system.svc.cluster.local"),
            subnet,
            mesh,
            pod_port,
            gw_port,
            _backends: backends,
            cp,
            envoy,
        }
    }

    fn gw_addr(&self) -> SocketAddr {
        SocketAddr::from((self.subnet.ip(1), self.gw_port))
    }

    fn set_ready(&self, pod: &str, ready: bool) {
        let p = PODS.iter().find(|p| p.0 == pod).expect("known pod");
        self.mesh.write_cluster(
            p.1,
            &format!("{}.yaml", p.0),
            &pod_yaml(p, &self.subnet, self.pod_port, ready),
        );
    }

    /// Wait until Envoy has exactly the hosts of `pods` for the service.
    async fn wait_hosts(&self, pods: &[&str]) {
        let mut want: Vec<SocketAddr> = PODS
            .iter()
            .filter(|p| pods.contains(&p.0))
            .map(|p| SocketAddr::from((self.subnet.ip(p.4), self.pod_port)))
            .collect();
        want.sort();
        let envoy = &self.envoy;
        let want = &want;
        wait_for(&format!("envoy hosts {want:?}"), CONVERGE, || async move {
            let mut got = envoy.cluster_hosts(CLUSTER).await?;
            got.sort();
            if &got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        })
        .await
    }

    /// Send `n` requests; count answers per pod.
    async fn spread(&self, n: usize) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        for b in http::get_many(self.gw_addr(), HOST, n).await {
            *out.entry(b).or_default() += 1;
        }
        out
    }

    /// Wait until `n` requests in a row are all answered by `pod`.
    async fn wait_all_to(&self, pod: &str, n: usize) {
        wait_for(
            &format!("{n} requests all answered by {pod}"),
            CONVERGE,
            || async {
                let s = self.spread(n).await;
                if s.get(pod) == Some(&n) {
                    Ok(())
                } else {
                    Err(format!("{s:?}"))
                }
            },
        )
        .await
    }
}

fn pod_yaml(p: &PodSpec, subnet: &Subnet, port: u16, ready: bool) -> String {
    manifests::pod(
        NS,
        p.0,
        &[("app", "web")],
        subnet.ip(p.4),
        port,
        ready,
        Some(&node_name(p)),
    )
}

fn dr(traffic_policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: web
  namespace: {NS}
spec:
  host: web
  trafficPolicy:
{traffic_policy}"
    )
}

const OUTLIER: &str = "    outlierDetection:
      consecutive5xxErrors: 3
      interval: 1s
      baseEjectionTime: 30s
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_then_region_failover_and_back() {
    let lab = Lab::start(&PODS[..3], &dr(OUTLIER), None).await;
    lab.wait_hosts(&["pod-a", "pod-b", "pod-c"]).await;
    let s = lab.spread(500).await;
    let a = s.get("pod-a").copied().unwrap_or(0);
    assert!(
        a * 100 >= 99 * 500,
        "zone-a should get >= 99% of 500: {s:?}"
    );

    // Zone A scaled to 0: same region (zone-b) before region-2.
    lab.set_ready("pod-a", false);
    lab.wait_hosts(&["pod-b", "pod-c"]).await;
    lab.wait_all_to("pod-b", 50).await;
    let s = lab.spread(200).await;
    assert_eq!(s.get("pod-b"), Some(&200), "zone-b takes all: {s:?}");

    // Zone B gone too: region-2.
    lab.set_ready("pod-b", false);
    lab.wait_hosts(&["pod-c"]).await;
    lab.wait_all_to("pod-c", 50).await;

    // Restore zone A: traffic comes back.
    lab.set_ready("pod-a", true);
    lab.set_ready("pod-b", true);
    lab.wait_hosts(&["pod-a", "pod-b", "pod-c"]).await;
    lab.wait_all_to("pod-a", 50).await;
    let s = lab.spread(300).await;
    assert!(
        s.get("pod-a").copied().unwrap_or(0) * 100 >= 99 * 300,
        "{s:?}"
    );

    // crossmesh's own dump of what the gateway was sent shows the priorities.
    let dump = lab
        .cp
        .json(&format!("/debug/config_dump?proxyID={}", lab.node_id))
        .await
        .unwrap()
        .to_string();
    assert!(
        dump.contains("\"priority\":2") || dump.contains("\"priority\": 2"),
        "{dump}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_outlier_detection_means_no_failover_priorities() {
    // Without outlierDetection (and no explicit failover) Istio applies no
    // priorities: localities are weighted by endpoint count only.
    let lab = Lab::start(&PODS[..2], "", None).await;
    lab.wait_hosts(&["pod-a", "pod-b"]).await;
    let s = lab.spread(200).await;
    assert!(
        s.get("pod-b").copied().unwrap_or(0) > 40,
        "both zones share traffic: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribute_80_20() {
    let policy = "    loadBalancer:
      localityLbSetting:
        distribute:
        - from: region-1/zone-a/*
          to:
            \"region-1/zone-a/*\": 80
            \"region-1/zone-b/*\": 20
";
    let lab = Lab::start(&PODS[..3], &dr(policy), None).await;
    lab.wait_hosts(&["pod-a", "pod-b"]).await;
    let s = lab.spread(500).await;
    let a = s.get("pod-a").copied().unwrap_or(0);
    assert!(
        (350..=450).contains(&a),
        "zone-a should get 70-90% of 500: {s:?}"
    );
    assert_eq!(s.get("pod-c"), None, "region-2 is not in `to`: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_failover_rule_is_respected() {
    let policy = format!(
        "{OUTLIER}    loadBalancer:
      localityLbSetting:
        failover:
        - from: region-1
          to: region-3
"
    );
    let pods = [PODS[0], PODS[2], PODS[3]];
    let lab = Lab::start(&pods, &dr(&policy), None).await;
    lab.wait_hosts(&["pod-a", "pod-c", "pod-d"]).await;
    lab.wait_all_to("pod-a", 50).await;
    lab.set_ready("pod-a", false);
    lab.wait_hosts(&["pod-c", "pod-d"]).await;
    // region-3 (the failover target) before region-2.
    lab.wait_all_to("pod-d", 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_locality_settings_are_rejected_with_reasons() {
    let bad = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: bad-parts
  namespace: test
spec:
  host: other
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        distribute:
        - from: a/b/c/d
          to:
            \"region-1\": 100
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: bad-sum
  namespace: test
spec:
  host: other2
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        distribute:
        - from: region-1
          to:
            \"region-1\": 70
            \"region-2\": 20
";
    let lab = Lab::start(&PODS[..2], bad, None).await;
    // The good config still works.
    lab.wait_hosts(&["pod-a", "pod-b"]).await;
    wait_for("configz lists both rejections", CONVERGE, || async {
        let j = lab.cp.json("/debug/configz").await?.to_string();
        if j.contains("bad-parts")
            && j.contains("4 parts")
            && j.contains("bad-sum")
            && j.contains("sum to 90")
        {
            Ok(())
        } else {
            Err(j)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_network_endpoints_become_the_gateway_address() {
    // c2 is on network-2 with an east-west gateway address; the client (network-1)
    // must get that address, never network-2's pod address.
    let pods = [PODS[2]];
    let subnet_probe = Subnet::claim();
    let ew = subnet_probe.ip(200);
    let ew_port = free_port();
    let lab = {
        let lab = Lab::start(&pods, "", Some(("network-1", "network-2"))).await;
        lab
    };
    // Networks are declared in the mesh file; append and restart crossmesh so it
    // reads them.
    let mut text = std::fs::read_to_string(&lab.mesh.mesh_file).unwrap();
    text.push_str(&format!(
        "networks:\n  network-2:\n    gateways:\n    - address: {ew}\n      port: {ew_port}\n"
    ));
    std::fs::write(&lab.mesh.mesh_file, text).unwrap();
    let mut lab = lab;
    lab.cp.restart().await;
    let pod_ip = lab.subnet.ip(PODS[2].4).to_string();
    let node = lab.node_id.clone();
    let cp = &lab.cp;
    wait_for(
        "client EDS holds the gateway, not the pod",
        CONVERGE,
        || async {
            let dump = cp
                .json(&format!("/debug/config_dump?proxyID={node}"))
                .await?
                .to_string();
            if dump.contains(&ew.to_string()) && !dump.contains(&pod_ip) {
                Ok(())
            } else {
                Err(dump)
            }
        },
    )
    .await;
    // Envoy holds exactly one host for the service: network-2's gateway (the
    // pod's address never, and not an empty set).
    let want = vec![SocketAddr::from((ew, ew_port))];
    let envoy = &lab.envoy;
    let want = &want;
    wait_for(
        &format!("envoy hosts of {CLUSTER} == {want:?}"),
        CONVERGE,
        || async move {
            let hosts = envoy.cluster_hosts(CLUSTER).await?;
            if &hosts == want {
                Ok(())
            } else {
                Err(format!("{hosts:?}"))
            }
        },
    )
    .await;
}

/// Bootstrap of a proxy authenticated on crossmesh's TLS xDS port with a
/// token of `issuer` for `ns/sa` (written next to the mesh file): a NONE-mode
/// sidecar (`labels` its pod's) or, with `role` `gateway`, a gateway.
#[allow(clippy::too_many_arguments)]
fn mesh_proxy_bootstrap(
    dir: &std::path::Path,
    issuer: &TokenIssuer,
    tls: SocketAddr,
    role: &str,
    (name, ns, sa): (&str, &str, &str),
    ip: std::net::Ipv4Addr,
    labels: &str,
    (cluster, network, locality): (&str, &str, &str),
) -> String {
    let token_file = dir.join(format!("{name}.token"));
    std::fs::write(&token_file, issuer.token_for(ns, sa)).expect("write token");
    let mut args: Vec<String> = [
        "bootstrap",
        // Listener stats: not kept by the default (graph) stats matcher.
        "--stats-matcher",
        "all",
        "--role",
        role,
        "--name",
        name,
        "--namespace",
        ns,
        "--service-account",
        sa,
        "--labels",
        labels,
        "--cluster-id",
        cluster,
        "--network",
        network,
        "--locality",
        locality,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if role == "sidecar" {
        args.extend(["--interception".to_string(), "none".to_string()]);
    }
    args.extend([
        "--ip".to_string(),
        ip.to_string(),
        "--xds-address".into(),
        tls.to_string(),
        "--admin-port".into(),
        "0".into(),
        "--root-cert".into(),
        dir.join("crossmesh-ca")
            .join("root-cert.pem")
            .display()
            .to_string(),
        "--token-file".into(),
        token_file.display().to_string(),
    ]);
    bootstrap(&args)
}

/// How crossmesh learns network-2's east-west gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EastWest {
    /// `networks.network-2.gateways` in the mesh file.
    MeshFile,
    /// A LoadBalancer Service in c2 labelled `topology.istio.io/network:
    /// network-2` and `networking.istio.io/gatewayPort`, its address in
    /// `status.loadBalancer.ingress` (Istio's label-based network gateway).
    LabelledService,
    /// The same Service, served by the API server of a third member cluster `c3`
    /// (network-2, kubeconfig source) that holds nothing else.
    ApiServer,
}

/// The manifest file holding the east-west gateway's Service in c2.
const EW_SERVICE_FILE: &str = "eastwest-service.yaml";

/// The east-west gateway's Service as an API server serves it.
fn east_west_service_json(ip: std::net::Ipv4Addr, port: u16) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "istio-eastwestgateway", "namespace": "istio-system",
            "labels": {"istio": "eastwestgateway",
                "topology.istio.io/network": "network-2",
                "networking.istio.io/gatewayPort": port.to_string()}},
        "spec": {"type": "LoadBalancer", "selector": {"istio": "eastwestgateway"},
            "ports": [{"name": "tls", "port": port, "targetPort": port}]},
        "status": {"loadBalancer": {"ingress": [{"ip": ip.to_string()}]}}
    })
}

fn east_west_service_yaml(ip: std::net::Ipv4Addr, port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: istio-eastwestgateway
  namespace: istio-system
  labels:
    istio: eastwestgateway
    topology.istio.io/network: network-2
    networking.istio.io/gatewayPort: \"{port}\"
spec:
  type: LoadBalancer
  selector:
    istio: eastwestgateway
  ports:
  - name: tls
    port: {port}
    targetPort: {port}
status:
  loadBalancer:
    ingress:
    - ip: {ip}
"
    )
}

/// Clusters c1 (network-1) and c2 (network-2), both verifying their proxies'
/// tokens (`tokenIssuer`); `web.test` only in c2, where pod-c runs its own
/// sidecar (NONE mode, `security.istio.io/tlsMode: istio`) terminating mTLS
/// with its certificate of the mesh CA in front of its app; a real east-west
/// Envoy for network-2 (`AUTO_PASSTHROUGH`); the client's real sidecar on
/// network-1. Every proxy is authenticated on the TLS xDS port.
struct CrossNetwork {
    mesh: Mesh,
    /// `c3`'s API server (`EastWest::ApiServer` only).
    api: Option<FakeApiServer>,
    cp: ControlPlane,
    _app: Backend,
    _web: Envoy,
    ew: Envoy,
    client: Envoy,
    pod_ip: std::net::Ipv4Addr,
    ew_ip: std::net::Ipv4Addr,
    ew_port: u16,
    client_ip: std::net::Ipv4Addr,
    svc_port: u16,
}

/// The client sidecar's identity, as the destination sidecar forwards it.
const CLIENT_SPIFFE: &str = "spiffe://cluster.local/ns/test/sa/sleep";

impl CrossNetwork {
    async fn start(east_west: EastWest) -> CrossNetwork {
        let subnet = Subnet::claim();
        let mesh = Mesh::new(&[
            cluster("c1", Some("network-1")),
            cluster("c2", Some("network-2")),
        ]);
        let (svc_port, pod_port, app_port, ew_port) =
            (free_port(), free_port(), free_port(), free_port());
        let tls = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, free_port()));
        let issuers: Vec<TokenIssuer> = ["c1", "c2"]
            .iter()
            .map(|c| {
                TokenIssuer::new(
                    &format!("https://{c}.example"),
                    &mesh.root().join(format!("{c}-jwks.json")),
                )
            })
            .collect();
        let mut text = std::fs::read_to_string(&mesh.mesh_file).unwrap();
        text = format!("xdsTlsAddress: {tls}\ntokenAudiences: [istio-ca]\n{text}");
        for c in ["c1", "c2"] {
            text = text.replace(
                &format!("  manifests: clusters/{c}\n"),
                &format!(
                    "  manifests: clusters/{c}\n  tokenIssuer:\n    issuer: https://{c}.example\n    jwks: {c}-jwks.json\n"
                ),
            );
        }
        std::fs::write(&mesh.mesh_file, text).unwrap();
        let ew_ip = subnet.ip(200);
        let mut api = None;
        match east_west {
            EastWest::MeshFile => {
                let mut text = std::fs::read_to_string(&mesh.mesh_file).unwrap();
                text.push_str(&format!(
                    "networks:\n  network-2:\n    gateways:\n    - address: {ew_ip}\n      port: {ew_port}\n"
                ));
                std::fs::write(&mesh.mesh_file, text).unwrap();
            }
            EastWest::LabelledService => {
                mesh.write_cluster(
                    "c2",
                    EW_SERVICE_FILE,
                    &east_west_service_yaml(ew_ip, ew_port),
                );
            }
            EastWest::ApiServer => {
                let server = FakeApiServer::start("c3").await;
                server.apply(&east_west_service_json(ew_ip, ew_port));
                let kubeconfig = mesh.root().join("c3.kubeconfig");
                server.write_kubeconfig(&kubeconfig, None, None);
                let text = std::fs::read_to_string(&mesh.mesh_file).unwrap().replace(
                    "config:\n",
                    &format!(
                        "- name: c3\n  network: network-2\n  kubeconfig: {}\nconfig:\n",
                        kubeconfig.display()
                    ),
                );
                std::fs::write(&mesh.mesh_file, text).unwrap();
                api = Some(server);
            }
        }

        // The service exists only in c2 (network-2); pod-c runs a sidecar.
        let p = PODS[2];
        let pod_ip = subnet.ip(p.4);
        mesh.write_cluster(
            "c2",
            "node.yaml",
            &manifests::node(&node_name(&p), p.2, p.3, None),
        );
        mesh.write_cluster(
            "c2",
            "service.yaml",
            &manifests::service(NS, "web", svc_port, pod_port, &[("app", "web")]),
        );
        mesh.write_cluster(
            "c2",
            "pod.yaml",
            &manifests::pod(
                NS,
                p.0,
                &[("app", "web"), ("security.istio.io/tlsMode", "istio")],
                pod_ip,
                pod_port,
                true,
                Some(&node_name(&p)),
            ),
        );
        let app = Backend::start(pod_ip, app_port, p.0).await;

        mesh.write_istio(
            "sidecars.yaml",
            &format!(
                "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: web, namespace: {NS}}}
spec:
  workloadSelector: {{labels: {{app: web}}}}
  egress:
  - hosts: [\"istio-system/*\"]
  ingress:
  - port: {{number: {pod_port}, protocol: HTTP, name: http}}
    defaultEndpoint: {pod_ip}:{app_port}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client, namespace: {NS}}}
spec:
  workloadSelector: {{labels: {{app: client}}}}
  egress:
  - hosts: [\"./*\"]
"
            ),
        );
        mesh.write_istio(
            "eastwest.yaml",
            &format!(
                "apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: cross-network-gateway
  namespace: istio-system
spec:
  selector:
    istio: eastwestgateway
  servers:
  - port:
      number: {ew_port}
      name: tls
      protocol: TLS
    tls:
      mode: AUTO_PASSTHROUGH
    hosts:
    - \"*.local\"
"
            ),
        );
        let cp = ControlPlane::start(&mesh.mesh_file).await;
        let (c1, c2) = (&issuers[0], &issuers[1]);
        let ew = Envoy::start(
            "eastwest",
            &mesh_proxy_bootstrap(
                mesh.root(),
                c2,
                tls,
                "gateway",
                ("ew-0", "istio-system", "istio-eastwestgateway"),
                ew_ip,
                "istio=eastwestgateway",
                ("c2", "network-2", "region-2/zone-c"),
            ),
        )
        .await;
        ew.wait_ready(CONVERGE).await;
        let web = Envoy::start(
            "web-sidecar",
            &mesh_proxy_bootstrap(
                mesh.root(),
                c2,
                tls,
                "sidecar",
                (p.0, NS, "default"),
                pod_ip,
                "app=web",
                ("c2", "network-2", "region-2/zone-c"),
            ),
        )
        .await;
        web.wait_ready(CONVERGE).await;
        let client_ip = subnet.ip(1);
        let client = Envoy::start(
            "client-sidecar",
            &mesh_proxy_bootstrap(
                mesh.root(),
                c1,
                tls,
                "sidecar",
                ("client-0", NS, "sleep"),
                client_ip,
                "app=client",
                ("c1", "network-1", "region-1/zone-a"),
            ),
        )
        .await;
        client.wait_ready(CONVERGE).await;
        CrossNetwork {
            mesh,
            api,
            cp,
            _app: app,
            _web: web,
            ew,
            client,
            pod_ip,
            ew_ip,
            ew_port,
            client_ip,
            svc_port,
        }
    }

    /// The client sidecar's outbound cluster of `web.test`.
    fn cluster(&self) -> String {
        format!("outbound|{}||{SVC}", self.svc_port)
    }

    fn client_id(&self) -> String {
        format!(
            "sidecar~{}~client-0.{NS}~{NS}.svc.cluster.local",
            self.client_ip
        )
    }

    /// Wait until the client gets the pod directly and not the gateway: with no
    /// gateway left in any network the mesh is, as in Istio, one routed network.
    async fn wait_client_gets_the_pod_directly(&self, what: &str) {
        let (pod_ip, ew_ip) = (self.pod_ip.to_string(), self.ew_ip.to_string());
        wait_for(what, CONVERGE, || async {
            let dump = self.client_dump().await?;
            if dump.contains(&pod_ip) && !dump.contains(&ew_ip) {
                Ok(())
            } else {
                Err(dump)
            }
        })
        .await;
        wait_for("client Envoy's hosts follow", CONVERGE, || async {
            let hosts = self.client.cluster_hosts(&self.cluster()).await?;
            if !hosts.is_empty()
                && hosts
                    .iter()
                    .all(|h| h.ip() == std::net::IpAddr::V4(self.pod_ip))
            {
                Ok(())
            } else {
                Err(format!("{hosts:?}"))
            }
        })
        .await;
    }

    /// What crossmesh serves the client gateway (`/debug/config_dump`).
    async fn client_dump(&self) -> Result<String, String> {
        let id = self.client_id();
        Ok(self
            .cp
            .json(&format!("/debug/config_dump?proxyID={id}"))
            .await?
            .to_string())
    }

    /// Real traffic goes client sidecar (network-1) -> mTLS with Istio's SNI ->
    /// east-west Envoy (passthrough) -> pod-c's sidecar, which terminates it and
    /// forwards the client's identity to the app; the client's EDS never holds
    /// network-2's pod address.
    async fn assert_through_the_east_west_gateway(&self) {
        let addr = SocketAddr::from((self.client_ip, self.svc_port));
        let want = vec![SocketAddr::from((self.ew_ip, self.ew_port))];
        wait_for(
            "the client sidecar's only host is network-2's gateway",
            CONVERGE,
            || async {
                let hosts = self.client.cluster_hosts(&self.cluster()).await?;
                if hosts == want {
                    Ok(())
                } else {
                    Err(format!("{hosts:?}"))
                }
            },
        )
        .await;
        let passed = format!("listener.0.0.0.0_{}.downstream_cx_total", self.ew_port);
        let passed_before = self.ew.stat(&passed).await.unwrap_or(0);
        let reply = wait_for(
            "client reaches pod-c through the east-west gateway",
            CONVERGE,
            || async {
                let r = http::get(addr, SVC, "/").await?;
                if r.status == 200 && r.body == "pod-c" {
                    Ok(r)
                } else {
                    Err(format!("{} {:?}", r.status, r.body))
                }
            },
        )
        .await;
        let xfcc = reply
            .header("x-echo-x-forwarded-client-cert")
            .unwrap_or_default()
            .to_string();
        assert!(
            xfcc.split(';')
                .any(|kv| kv == format!("URI={CLIENT_SPIFFE}")),
            "pod-c's sidecar did not terminate the client's mTLS: XFCC {xfcc:?}"
        );
        let bodies = http::get_many(addr, SVC, 20).await;
        assert!(bodies.iter().all(|b| b == "pod-c"), "{bodies:?}");
        let passed_now = self.ew.stat(&passed).await.unwrap_or(0);
        assert!(
            passed_now > passed_before,
            "no connection through the east-west gateway ({passed} {passed_before} -> {passed_now})"
        );

        let (pod_ip, ew_ip) = (self.pod_ip, self.ew_ip);
        let dump = self.client_dump().await.unwrap();
        assert!(
            !dump.contains(&pod_ip.to_string()),
            "client dump holds {pod_ip}: {dump}"
        );
        assert!(
            dump.contains(&ew_ip.to_string()),
            "client dump lacks the gateway {ew_ip}"
        );
        assert!(
            dump.contains(&format!("outbound_.{}_._.{SVC}", self.svc_port)),
            "SNI in client CDS: {dump}"
        );
        let hosts = self.client.cluster_hosts(&self.cluster()).await.unwrap();
        assert_eq!(hosts, vec![SocketAddr::from((ew_ip, self.ew_port))]);
        let ew_id = format!("router~{ew_ip}~ew-0.istio-system~istio-system.svc.cluster.local");
        let ew_dump = self
            .cp
            .json(&format!("/debug/config_dump?proxyID={ew_id}"))
            .await
            .unwrap()
            .to_string();
        assert!(
            ew_dump.contains(&pod_ip.to_string()),
            "east-west EDS has the local pod"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_network_through_a_real_east_west_gateway() {
    let lab = CrossNetwork::start(EastWest::MeshFile).await;
    lab.assert_through_the_east_west_gateway().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_network_through_an_east_west_gateway_discovered_from_its_service() {
    let lab = CrossNetwork::start(EastWest::LabelledService).await;
    lab.assert_through_the_east_west_gateway().await;

    // /debug/clusterz names the discovered gateway.
    let gw = SocketAddr::from((lab.ew_ip, lab.ew_port));
    let clusterz = lab.cp.json("/debug/clusterz").await.unwrap().to_string();
    assert!(
        clusterz.contains(&format!("east-west gateway of network network-2: {gw}")),
        "{clusterz}"
    );

    // The gateway Service goes: no network has a gateway any more, so (as in
    // Istio) the mesh is one routed network and the client gets the pod directly.
    lab.mesh.remove_cluster_file("c2", EW_SERVICE_FILE);
    lab.wait_client_gets_the_pod_directly(
        "client EDS holds the pod once the gateway Service is gone",
    )
    .await;
    let ew_ip = lab.ew_ip.to_string();

    // Back, with a hostname-only load balancer status: noted, not a gateway.
    lab.mesh.write_cluster(
        "c2",
        EW_SERVICE_FILE,
        &east_west_service_yaml(lab.ew_ip, lab.ew_port).replace(
            &format!("- ip: {}", lab.ew_ip),
            "- hostname: ew.elb.example.com",
        ),
    );
    wait_for("clusterz notes the unusable gateway", CONVERGE, || async {
        let clusterz = lab.cp.json("/debug/clusterz").await?.to_string();
        if clusterz.contains("has no usable address") && clusterz.contains("ew.elb.example.com") {
            Ok(())
        } else {
            Err(clusterz)
        }
    })
    .await;
    assert!(!lab.client_dump().await.unwrap().contains(&ew_ip));

    // And with its IP again: the client goes through the gateway again.
    lab.mesh.write_cluster(
        "c2",
        EW_SERVICE_FILE,
        &east_west_service_yaml(lab.ew_ip, lab.ew_port),
    );
    lab.assert_through_the_east_west_gateway().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_network_through_an_east_west_gateway_discovered_from_an_api_server() {
    let lab = CrossNetwork::start(EastWest::ApiServer).await;
    lab.assert_through_the_east_west_gateway().await;
    let gw = SocketAddr::from((lab.ew_ip, lab.ew_port));
    let clusterz = lab.cp.json("/debug/clusterz").await.unwrap().to_string();
    assert!(
        clusterz.contains(&format!("east-west gateway of network network-2: {gw}")),
        "{clusterz}"
    );

    // Deleted on the API server: the watch event removes the gateway.
    let api = lab.api.as_ref().expect("api server");
    api.delete("", "services", "istio-system", "istio-eastwestgateway")
        .unwrap();
    lab.wait_client_gets_the_pod_directly(
        "client EDS holds the pod once the watch deletes the gateway",
    )
    .await;

    // Re-created: back through the gateway.
    api.apply(&east_west_service_json(lab.ew_ip, lab.ew_port));
    lab.assert_through_the_east_west_gateway().await;
}
