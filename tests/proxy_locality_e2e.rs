//! A proxy bootstrapped without `node.locality` (injected sidecars, the deploy/
//! gateway) takes its locality from its Pod's Node in the registry, as istiod's
//! `setTopologyLabels` does, and locality-aware EDS follows it: real HTTP
//! requests through a real Envoy gateway land in its Pod's zone and fail over.
//!
//! Layout: clusters `c1` (nodes in `region-1/zone-a` and `region-1/zone-b`) and
//! `c2` (`region-2/zone-c`), one `web.test` pod per zone; the gateway's Pod
//! `gw-0.istio-system` of `c1` runs on the `zone-b` node. Each test claims its own
//! `127.A.B.0/24` (`Subnet::claim`) and waits on conditions, never on fixed sleeps.

mod support;

use std::net::SocketAddr;

use support::backend::Backend;
use support::control_plane::{bootstrap, ControlPlane};
use support::envoy::Envoy;
use support::http;
use support::manifests::{self, cluster, Mesh};
use support::net::{free_port, Subnet};
use support::{wait_for, CONVERGE};

const NS: &str = "test";
const HOST: &str = "web.example.com";
const CLUSTER: &str = "outbound|80||web.test.svc.cluster.local";
const SVC: &str = "web.test.svc.cluster.local";

/// One pod: (name, member cluster, region, zone, host byte of its IP).
type PodSpec = (&'static str, &'static str, &'static str, &'static str, u8);

const PODS: [PodSpec; 3] = [
    ("pod-a", "c1", "region-1", "zone-a", 11),
    ("pod-b", "c1", "region-1", "zone-b", 21),
    ("pod-c", "c2", "region-2", "zone-c", 31),
];

/// The gateway's own Pod (never an endpoint of `web`): on the zone-b node of c1.
const GW_HOST: u8 = 1;
const GW_NODE: &str = "node-zone-b";

const DR: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: web
  namespace: test
spec:
  host: web
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 3
      interval: 1s
      baseEjectionTime: 30s
";

struct Lab {
    subnet: Subnet,
    mesh: Mesh,
    pod_port: u16,
    gw_port: u16,
    _backends: Vec<Backend>,
    cp: ControlPlane,
    bootstrap: String,
    node_id: String,
}

fn pod_yaml(p: &PodSpec, subnet: &Subnet, port: u16, ready: bool) -> String {
    manifests::pod(
        NS,
        p.0,
        &[("app", "web")],
        subnet.ip(p.4),
        port,
        ready,
        Some(&format!("node-{}", p.3)),
    )
}

impl Lab {
    /// The mesh, crossmesh and the gateway's bootstrap (no `--locality`); the
    /// gateway's Pod is written only if `gw_pod`.
    async fn start(gw_pod: bool) -> Lab {
        let subnet = Subnet::claim();
        let mesh = Mesh::new(&[cluster("c1", None), cluster("c2", None)]);
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
        for p in &PODS {
            let node = format!("node-{}", p.3);
            mesh.write_cluster(
                p.1,
                &format!("{node}.yaml"),
                &manifests::node(&node, p.2, p.3, None),
            );
            mesh.write_cluster(
                p.1,
                &format!("{}.yaml", p.0),
                &pod_yaml(p, &subnet, pod_port, true),
            );
            backends.push(Backend::start(subnet.ip(p.4), pod_port, p.0).await);
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
        mesh.write_istio("dr.yaml", DR);
        let lab_subnet_ip = subnet.ip(GW_HOST);
        if gw_pod {
            write_gw_pod(&mesh, &subnet);
        }
        let cp = ControlPlane::start(&mesh.mesh_file).await;
        let admin_port = free_port();
        let args: Vec<String> = [
            "bootstrap",
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
            "--ip",
            &lab_subnet_ip.to_string(),
            "--xds-address",
            &cp.xds.to_string(),
            "--admin-port",
            &admin_port.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let yaml = bootstrap(&args);
        assert!(
            !yaml.contains("locality"),
            "the gateway must be bootstrapped without a locality:\n{yaml}"
        );
        Lab {
            node_id: format!(
                "router~{lab_subnet_ip}~gw-0.istio-system~istio-system.svc.cluster.local"
            ),
            subnet,
            mesh,
            pod_port,
            gw_port,
            _backends: backends,
            cp,
            bootstrap: yaml,
        }
    }

    async fn envoy(&self) -> Envoy {
        let envoy = Envoy::start("proxy-locality-gw", &self.bootstrap).await;
        envoy.wait_ready(CONVERGE).await;
        envoy
    }

    fn gw_addr(&self) -> SocketAddr {
        SocketAddr::from((self.subnet.ip(GW_HOST), self.gw_port))
    }

    fn set_ready(&self, pod: &str, ready: bool) {
        let p = PODS.iter().find(|p| p.0 == pod).expect("known pod");
        self.mesh.write_cluster(
            p.1,
            &format!("{}.yaml", p.0),
            &pod_yaml(p, &self.subnet, self.pod_port, ready),
        );
    }

    /// The gateway's (newest) stream on `/debug/syncz`: (locality, locality_from).
    async fn syncz_locality(&self) -> Result<(String, String), String> {
        let v = self.cp.json("/debug/syncz").await?;
        let conns: Vec<&serde_json::Value> = v
            .as_array()
            .ok_or_else(|| format!("syncz is not a list: {v}"))?
            .iter()
            .filter(|c| c["proxy_id"] == self.node_id.as_str())
            .collect();
        let c = conns
            .last()
            .ok_or_else(|| format!("{} not connected: {v}", self.node_id))?;
        Ok((
            c["locality"].as_str().unwrap_or("?").to_string(),
            c["locality_from"].as_str().unwrap_or("?").to_string(),
        ))
    }

    async fn wait_syncz_locality(&self, locality: &str, from: &str) {
        let want = (locality.to_string(), from.to_string());
        wait_for(
            &format!("syncz shows the gateway in {want:?}"),
            CONVERGE,
            || async {
                let got = self.syncz_locality().await?;
                if got == want {
                    Ok(())
                } else {
                    Err(format!("{got:?}"))
                }
            },
        )
        .await
    }

    /// Wait until Envoy has exactly the hosts of `pods` for the service.
    async fn wait_hosts(&self, envoy: &Envoy, pods: &[&str]) {
        let mut want: Vec<SocketAddr> = PODS
            .iter()
            .filter(|p| pods.contains(&p.0))
            .map(|p| SocketAddr::from((self.subnet.ip(p.4), self.pod_port)))
            .collect();
        want.sort();
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

fn write_gw_pod(mesh: &Mesh, subnet: &Subnet) {
    mesh.write_cluster(
        "c1",
        "gw-0.yaml",
        &manifests::pod(
            "istio-system",
            "gw-0",
            &[("istio", "ingressgateway")],
            subnet.ip(GW_HOST),
            15021,
            true,
            Some(GW_NODE),
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_without_locality_prefers_its_pods_zone_and_fails_over() {
    let lab = Lab::start(true).await;
    let envoy = lab.envoy().await;
    lab.wait_hosts(&envoy, &["pod-a", "pod-b", "pod-c"]).await;
    // Its Pod's Node is in zone-b: pod-b takes everything (priority 0), though
    // pod-a sorts first and the gateway's bootstrap names no zone.
    let s = lab.spread(300).await;
    assert_eq!(s.get("pod-b"), Some(&300), "zone-b takes all: {s:?}");
    lab.wait_syncz_locality("region-1/zone-b", "registry").await;

    // Zone B gone: the same region's zone-a before region-2.
    lab.set_ready("pod-b", false);
    lab.wait_hosts(&envoy, &["pod-a", "pod-c"]).await;
    lab.wait_all_to("pod-a", 50).await;
    let s = lab.spread(200).await;
    assert_eq!(s.get("pod-a"), Some(&200), "zone-a takes all: {s:?}");

    // Region 1 gone: region-2.
    lab.set_ready("pod-a", false);
    lab.wait_hosts(&envoy, &["pod-c"]).await;
    lab.wait_all_to("pod-c", 50).await;

    // Zone B back: traffic returns to it.
    lab.set_ready("pod-a", true);
    lab.set_ready("pod-b", true);
    lab.wait_hosts(&envoy, &["pod-a", "pod-b", "pod-c"]).await;
    lab.wait_all_to("pod-b", 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_unknown_at_connect_gives_its_locality_on_reconnect() {
    // The gateway connects before its Pod reaches the registry (a sidecar
    // starting before the watch delivers its pod): no locality, and with it no
    // preference among zones.
    let lab = Lab::start(false).await;
    let envoy = lab.envoy().await;
    lab.wait_syncz_locality("", "none").await;
    lab.wait_hosts(&envoy, &["pod-a", "pod-b", "pod-c"]).await;
    let s = lab.spread(300).await;
    assert!(
        s.len() == 3 && s.values().all(|n| *n >= 30),
        "no locality: every zone shares traffic: {s:?}"
    );

    // The Pod arrives; the connected proxy keeps what it connected with (istiod
    // re-reads a proxy's labels only on a proxy update), and its next stream
    // reads the Pod's Node.
    write_gw_pod(&lab.mesh, &lab.subnet);
    wait_for("the registry holds gw-0", CONVERGE, || async {
        let v = lab.cp.json("/debug/clusterz").await?;
        let c1 = v
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == "c1"))
            .ok_or_else(|| format!("no c1: {v}"))?;
        // pod-a, pod-b and gw-0.
        if c1["counts"]["pods"] == 3 {
            Ok(())
        } else {
            Err(format!("{}", c1["counts"]))
        }
    })
    .await;
    drop(envoy);
    let envoy = lab.envoy().await;
    lab.wait_hosts(&envoy, &["pod-a", "pod-b", "pod-c"]).await;
    let s = lab.spread(300).await;
    assert_eq!(s.get("pod-b"), Some(&300), "zone-b takes all: {s:?}");
    lab.wait_syncz_locality("region-1/zone-b", "registry").await;
}
