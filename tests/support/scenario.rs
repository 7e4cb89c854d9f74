//! The seed scenario (shared/seeds/002, steps 4-9) as a fixture: three member
//! clusters (cluster3 on network `account-b`), service `clusterN` in namespace `test`
//! in cluster N with pod `clusterN-pod-a`, the Gateway `istio-system/cluster` for
//! `*.imroc.cc`, VirtualServices `clusterN-imroc-cc` routing `clusterN.imroc.cc` to
//! `clusterN.test.svc.cluster.local:80`, a real crossmesh and a real Envoy gateway.
//!
//! Addresses: the test's own subnet `127.A.B.0/24`; the gateway proxy is `.1`, pods
//! of cluster N are `.N1`..`.N9` (cluster1 pod a = `.11`). All pods listen on one
//! free port; the Gateway server port is another free port (Envoy binds it on
//! `0.0.0.0`).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::backend::Backend;
use super::control_plane::{bootstrap_gateway, ControlPlane, GatewayProxy};
use super::envoy::Envoy;
use super::http;
use super::manifests::{self, cluster, Mesh};
use super::net::{free_port, Subnet};
use super::{wait_for, CONVERGE};

pub const NS: &str = "test";
pub const CLUSTERS: [&str; 3] = ["cluster1", "cluster2", "cluster3"];
pub const GW_SELECTOR: [(&str, &str); 2] =
    [("app", "istio-ingressgateway"), ("istio", "ingressgateway")];

pub fn host_of(cluster: &str) -> String {
    format!("{cluster}.imroc.cc")
}

pub fn service_host(cluster: &str) -> String {
    format!("{cluster}.{NS}.svc.cluster.local")
}

/// Istio's cluster name for `clusterN.test.svc.cluster.local:80`.
pub fn outbound_cluster(cluster: &str) -> String {
    format!("outbound|80||{}", service_host(cluster))
}

pub struct Seed {
    pub subnet: Subnet,
    pub mesh: Mesh,
    /// Port every pod listens on (the Services' targetPort).
    pub pod_port: u16,
    /// The Gateway server port (Envoy listens on `0.0.0.0:<gw_port>`).
    pub gw_port: u16,
    pub gw: GatewayProxy,
    pub admin_port: u16,
    pub backends: Vec<Backend>,
    pub cp: ControlPlane,
    pub envoy: Envoy,
}

impl Seed {
    /// Lay out the scenario, start backends, crossmesh and the Envoy gateway, and
    /// wait until Envoy is LIVE (initial xDS done). Delta xDS unless `sotw`.
    pub async fn start(sotw: bool) -> Seed {
        let subnet = Subnet::claim();
        let mesh = Mesh::new(&[
            cluster("cluster1", Some("vpc-a")),
            cluster("cluster2", Some("vpc-a")),
            cluster("cluster3", Some("account-b")),
        ]);
        let pod_port = free_port();
        let gw_port = free_port();
        let mut backends = Vec::new();
        for (i, c) in CLUSTERS.iter().enumerate() {
            let n = i as u8 + 1;
            let node_name = format!("{c}-node-1");
            mesh.write_cluster(
                c,
                "node.yaml",
                &manifests::node(
                    &node_name,
                    &format!("region-{n}"),
                    &format!("zone-{n}a"),
                    None,
                ),
            );
            mesh.write_cluster(
                c,
                "service.yaml",
                &manifests::service(NS, c, 80, pod_port, &[("app", c)]),
            );
            let pod = format!("{c}-pod-a");
            let ip = subnet.ip(n * 10 + 1);
            mesh.write_cluster(
                c,
                "pod-a.yaml",
                &manifests::pod(
                    NS,
                    &pod,
                    &[("app", c), ("version", "v1")],
                    ip,
                    pod_port,
                    true,
                    Some(&node_name),
                ),
            );
            backends.push(Backend::start(ip, pod_port, &pod).await);
        }
        mesh.write_istio(
            "gateway.yaml",
            &manifests::gateway(
                "istio-system",
                "cluster",
                &GW_SELECTOR,
                gw_port,
                &["*.imroc.cc"],
            ),
        );
        for c in CLUSTERS {
            mesh.write_istio(&format!("vs-{c}.yaml"), &vs(c, &host_of(c)));
        }
        let cp = ControlPlane::start(&mesh.mesh_file).await;
        let gw = GatewayProxy::ingress(subnet.ip(1), "cluster1", sotw);
        let admin_port = free_port();
        let yaml = bootstrap_gateway(&gw, cp.xds, admin_port);
        let envoy = Envoy::start(
            if sotw {
                "gateway-sotw"
            } else {
                "gateway-delta"
            },
            &yaml,
        )
        .await;
        envoy.wait_ready(CONVERGE).await;
        Seed {
            subnet,
            mesh,
            pod_port,
            gw_port,
            gw,
            admin_port,
            backends,
            cp,
            envoy,
        }
    }

    /// Where clients reach the gateway listener.
    pub fn gw_addr(&self) -> SocketAddr {
        SocketAddr::from((self.subnet.ip(1), self.gw_port))
    }

    /// IP of pod `idx` (1-based) of cluster `n` (1-based): `.N<idx>`.
    pub fn pod_ip(&self, n: u8, idx: u8) -> Ipv4Addr {
        self.subnet.ip(n * 10 + idx)
    }

    /// Write a pod file for cluster `n` (1-based) and, if not yet running, start
    /// its backend. Returns the pod name (also the backend's answer).
    pub async fn put_pod(&mut self, n: u8, idx: u8, suffix: &str, ready: bool) -> String {
        let c = CLUSTERS[n as usize - 1];
        let name = format!("{c}-pod-{suffix}");
        let ip = self.pod_ip(n, idx);
        self.mesh.write_cluster(
            c,
            &format!("pod-{suffix}.yaml"),
            &manifests::pod(
                NS,
                &name,
                &[("app", c), ("version", "v1")],
                ip,
                self.pod_port,
                ready,
                Some(&format!("{c}-node-1")),
            ),
        );
        if !self.backends.iter().any(|b| b.name == name) {
            self.backends
                .push(Backend::start(ip, self.pod_port, &name).await);
        }
        name
    }

    pub fn backend(&self, name: &str) -> &Backend {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name}"))
    }

    /// Wait until a request for `host` is answered 200 by `pod`.
    pub async fn wait_answer(&self, host: &str, pod: &str, timeout: Duration) {
        let addr = self.gw_addr();
        let what = format!("Host {host} answered by {pod}");
        wait_for(&what, timeout, || async move {
            let r = http::get(addr, host, "/").await?;
            if r.status == 200 && r.body == pod {
                Ok(())
            } else {
                Err(format!("{} {:?}", r.status, r.body))
            }
        })
        .await
    }

    /// Wait until a request for `host` gets `status`.
    pub async fn wait_status(&self, host: &str, status: u16, timeout: Duration) {
        let addr = self.gw_addr();
        let what = format!("Host {host} answered with {status}");
        wait_for(&what, timeout, || async move {
            let r = http::get(addr, host, "/").await?;
            if r.status == status {
                Ok(())
            } else {
                Err(format!("{} {:?}", r.status, r.body))
            }
        })
        .await
    }

    /// Wait until Envoy's cluster for service `clusterN` has exactly `want` hosts.
    pub async fn wait_hosts(&self, c: &str, want: &[Ipv4Addr]) {
        let cluster = outbound_cluster(c);
        let mut want: Vec<SocketAddr> = want
            .iter()
            .map(|ip| SocketAddr::from((*ip, self.pod_port)))
            .collect();
        want.sort();
        let what = format!("envoy hosts of {cluster} == {want:?}");
        let envoy = &self.envoy;
        let want = &want;
        let cluster = &cluster;
        wait_for(&what, CONVERGE, || async move {
            let mut got = envoy.cluster_hosts(cluster).await?;
            got.sort();
            if &got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        })
        .await
    }

    /// All three hosts answered by their pod `-a`.
    pub async fn wait_all_hosts(&self) {
        for c in CLUSTERS {
            self.wait_answer(&host_of(c), &format!("{c}-pod-a"), CONVERGE)
                .await;
        }
    }
}

/// The seed's VirtualService `clusterN-imroc-cc` with `hosts: [host]`.
pub fn vs(cluster: &str, host: &str) -> String {
    manifests::virtual_service(
        NS,
        &format!("{cluster}-imroc-cc"),
        &["istio-system/cluster"],
        &[host],
        &service_host(cluster),
        80,
    )
}
