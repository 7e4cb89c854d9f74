//! Issue 14, Gateway API TLS listeners in Terminate mode end to end: a Gateway
//! `tls-gw` with two TLS listeners on one port, each terminating with its own
//! certificate from a Kubernetes TLS Secret generated at test time
//! (`certificateRefs`, served over SDS on the TLS xDS port), served by the real
//! `crossmesh serve` to a real Envoy gateway labelled
//! `gateway.networking.k8s.io/gateway-name: tls-gw` that holds a workload
//! identity. The TCPRoute of listener `db` (hostname `db.example.com`) sends
//! the decrypted stream to `db-a`, the TCPRoute of listener `any` (no
//! hostname) every other SNI to `db-b`; the client sees which certificate the
//! gateway presented and which pod answered.
//!
//! The same Gateway naming the Service `tls-gw` in `addresses` (Istio's manual
//! deployment) instead applies to a gateway proxy without the name label once
//! the proxy's pod is an endpoint of that Service.
//!
//! Every wait has a deadline (docs/TESTING.md).

mod support;

use std::net::SocketAddr;

use support::backend::Backend;
use support::control_plane::{bootstrap, ControlPlane};
use support::envoy::Envoy;
use support::manifests::{self, Mesh};
use support::net::{free_port, Subnet};
use support::tls::{self, Ca};
use support::{wait_for, CONVERGE};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const NS: &str = "edge";

fn gateway_api(port: u16, svc_port: u16, addresses: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: crossmesh}}
spec: {{controllerName: crossmesh.io/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: tls-gw, namespace: {NS}}}
spec:
  gatewayClassName: crossmesh
  addresses: [{addresses}]
  listeners:
  - name: db
    port: {port}
    protocol: TLS
    hostname: db.example.com
    tls: {{mode: Terminate, certificateRefs: [{{name: db-cert}}]}}
  - name: any
    port: {port}
    protocol: TLS
    tls: {{mode: Terminate, certificateRefs: [{{name: any-cert}}]}}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: db, namespace: {NS}}}
spec:
  parentRefs: [{{name: tls-gw, sectionName: db}}]
  rules: [{{backendRefs: [{{name: db-a, port: {svc_port}}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: fallback, namespace: {NS}}}
spec:
  parentRefs: [{{name: tls-gw, sectionName: any}}]
  rules: [{{backendRefs: [{{name: db-b, port: {svc_port}}}]}}]
"
    )
}

fn cn(subject: &str) -> &str {
    subject
        .split(", ")
        .find_map(|p| p.strip_prefix("CN="))
        .unwrap_or(subject)
}

struct Fixture {
    subnet: Subnet,
    mesh: Mesh,
    cp: ControlPlane,
    gw: Envoy,
    port: u16,
    ca: Ca,
    _backends: Vec<Backend>,
}

/// The apps, the Secrets, the Gateway API objects (the Gateway with
/// `addresses`) and a gateway proxy on `.2` in namespace edge with `labels`.
async fn start(addresses: &str, labels: &str) -> Fixture {
    let subnet = Subnet::claim();
    let (mesh, issuer, xds_tls) = Mesh::secure_single_cluster(ISSUER);
    let (pod_port, svc_port, port) = (free_port(), free_port(), free_port());
    let mut backends = Vec::new();
    let mut apps = Vec::new();
    for (svc, host) in [("db-a", 11), ("db-b", 12)] {
        let ip = subnet.ip(host);
        apps.push(manifests::service(
            NS,
            svc,
            svc_port,
            pod_port,
            &[("app", svc)],
        ));
        apps.push(manifests::pod(
            NS,
            svc,
            &[("app", svc)],
            ip,
            pod_port,
            true,
            None,
        ));
        backends.push(Backend::start(ip, pod_port, svc).await);
    }
    mesh.write_cluster("cluster1", "apps.yaml", &apps.join("\n---\n"));
    let ca = Ca::new("gateway api tls CA");
    let db = ca.leaf("db-v1", &["db.example.com"]);
    let any = ca.leaf("any-v1", &["other.example.com"]);
    mesh.write_cluster(
        "cluster1",
        "secrets.yaml",
        &[
            tls::tls_secret(NS, "db-cert", &db, None),
            tls::tls_secret(NS, "any-cert", &any, None),
        ]
        .join("---\n"),
    );
    mesh.write_istio("gateway-api.yaml", &gateway_api(port, svc_port, addresses));
    let cp = ControlPlane::start(&mesh.mesh_file).await;
    let gw_ip = subnet.ip(2);
    let token_file = mesh.root().join("gw.token");
    std::fs::write(&token_file, issuer.token_for(NS, "tls-gw")).expect("token");
    let root_cert = mesh.root().join("crossmesh-ca").join("root-cert.pem");
    let args: Vec<String> = [
        "bootstrap",
        "--role",
        "gateway",
        "--name",
        "tls-gw-0",
        "--namespace",
        NS,
        "--service-account",
        "tls-gw",
        "--labels",
        labels,
        "--cluster-id",
        "cluster1",
        "--ip",
        &gw_ip.to_string(),
        "--xds-address",
        &xds_tls.to_string(),
        "--admin-port",
        "0",
        "--root-cert",
        &root_cert.display().to_string(),
        "--token-file",
        &token_file.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let gw = Envoy::start("gateway-api-tls", &bootstrap(&args)).await;
    gw.wait_ready(CONVERGE).await;
    Fixture {
        subnet,
        mesh,
        cp,
        gw,
        port,
        ca,
        _backends: backends,
    }
}

/// SNI `sni` answered by `pod` with `cert`'s certificate, as soon as the
/// gateway serves it and 20 times after.
async fn answered(f: &Fixture, sni: &str, cert: &str, pod: &str) {
    let addr = SocketAddr::from((f.subnet.ip(2), f.port));
    let cfg = tls::client_config(&f.ca.pem, None);
    let (r, subject) = wait_for(&format!("{sni} answered"), CONVERGE, || {
        let cfg = cfg.clone();
        async move {
            let (r, subject) = tls::https_get(addr, sni, "/", cfg).await?;
            if r.status == 200 {
                Ok((r, subject))
            } else {
                Err(format!("{} {:?}", r.status, r.body))
            }
        }
    })
    .await;
    assert_eq!(
        (cn(&subject), r.body.as_str()),
        (cert, pod),
        "SNI {sni}: {subject} {r:?}"
    );
    // The decrypted stream is proxied as TCP: the pod's own HTTP answer, no
    // HTTP connection manager in between.
    assert!(r.header("server").is_none(), "went through HTTP: {r:?}");
    for _ in 0..20 {
        let (r, subject) = tls::https_get(addr, sni, "/", cfg.clone())
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!((cn(&subject), r.body.as_str()), (cert, pod), "SNI {sni}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listeners_terminate_with_their_certificate_and_route_tcp() {
    let f = start("", "gateway.networking.k8s.io/gateway-name=tls-gw").await;
    // (SNI, the certificate the gateway must present, the pod that must answer).
    for (sni, cert, pod) in [
        ("db.example.com", "db-v1", "db-a"),
        ("other.example.com", "any-v1", "db-b"),
    ] {
        answered(&f, sni, cert, pod).await;
    }

    // Status: both listeners programmed, one TCPRoute each.
    let j = f.cp.json("/debug/configz").await.expect("configz");
    let gw_status = j["gatewayApi"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|s| s["kind"] == "Gateway" && s["name"] == "tls-gw")
        })
        .cloned()
        .unwrap_or_else(|| panic!("no status for tls-gw: {j}"));
    for l in ["db", "any"] {
        let ls = gw_status["listeners"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == l))
            .unwrap_or_else(|| panic!("no listener {l}: {gw_status}"));
        assert_eq!(ls["attachedRoutes"], 1, "{ls}");
        assert_eq!(
            ls["supportedKinds"],
            serde_json::json!(["TCPRoute"]),
            "{ls}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_addresses_name_the_service_of_unlabelled_proxies() {
    let f = start("{type: Hostname, value: tls-gw}", "app=tls-gw").await;
    // The proxy is no pod of Service tls-gw yet: no Gateway applies to it.
    let addr = SocketAddr::from((f.subnet.ip(2), f.port));
    let cfg = tls::client_config(&f.ca.pem, None);
    assert!(
        tls::https_get(addr, "db.example.com", "/", cfg)
            .await
            .is_err(),
        "served before its pod joined the Service"
    );
    // The Service first, selecting no pod yet; the Gateway is programmed once
    // crossmesh knows it (no AddressNotAssigned).
    let svc_port = free_port();
    let svc = manifests::service(NS, "tls-gw", svc_port, f.port, &[("app", "tls-gw")]);
    f.mesh.write_cluster("cluster1", "gateway-svc.yaml", &svc);
    wait_for("Gateway tls-gw programmed", CONVERGE, || async {
        let j = f.cp.json("/debug/configz").await?;
        let st = j["gatewayApi"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|s| s["kind"] == "Gateway" && s["name"] == "tls-gw")
            })
            .cloned()
            .ok_or("no status")?;
        let programmed = st["conditions"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["type"] == "Programmed"))
            .cloned()
            .unwrap_or_default();
        if programmed["status"] == "True" {
            Ok(())
        } else {
            Err(programmed.to_string())
        }
    })
    .await;
    // Then the proxy's pod joins the Service: an endpoint change only.
    f.mesh.write_cluster(
        "cluster1",
        "gateway-pod.yaml",
        &manifests::pod(
            NS,
            "tls-gw-0",
            &[("app", "tls-gw")],
            f.subnet.ip(2),
            f.port,
            true,
            None,
        ),
    );
    answered(&f, "db.example.com", "db-v1", "db-a").await;
    let _ = &f.gw;
}
