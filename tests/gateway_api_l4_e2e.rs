//! Issue 14 item 1, TCPRoute and TLSRoute (experimental channel, v1alpha2) end
//! to end: a Gateway with a TCP listener and a TLS Passthrough listener, served
//! by the real `crossmesh serve` to a real Envoy gateway labelled
//! `gateway.networking.k8s.io/gateway-name: l4-gw`. The TCPRoute splits
//! connections 3:1 between two pods that name themselves; the TLSRoute sends
//! SNI `secure.example.com` to a backend that terminates TLS itself (the
//! client sees the backend's certificate, not one of the gateway's).
//!
//! Every wait has a deadline (docs/TESTING.md).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::backend::Backend;
use support::control_plane::{bootstrap_gateway, ControlPlane, GatewayProxy};
use support::envoy::Envoy;
use support::manifests::{self, cluster, Mesh};
use support::net::{free_port, Subnet};
use support::tls::{client_config, connect, http_get, request, Ca, Leaf};
use support::{wait_for, CONVERGE};

const NS: &str = "edge";

/// A TLS server on `addr` with `leaf` that answers every request with
/// `tls-backend`, one request per connection.
async fn tls_backend(addr: SocketAddr, leaf: &Leaf) -> tokio::task::JoinHandle<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .map(|c| c.expect("server PEM"))
            .collect();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("server key");
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind TLS backend");
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 2048];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = "tls-backend";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    })
}

fn gateway_api(tcp_port: u16, tls_port: u16, svc_port: u16, tls_svc_port: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: crossmesh}}
spec: {{controllerName: crossmesh.io/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: l4-gw, namespace: {NS}}}
spec:
  gatewayClassName: crossmesh
  listeners:
  - {{name: db, port: {tcp_port}, protocol: TCP}}
  - name: passthrough
    port: {tls_port}
    protocol: TLS
    tls: {{mode: Passthrough}}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: db, namespace: {NS}}}
spec:
  parentRefs: [{{name: l4-gw, sectionName: db}}]
  rules:
  - backendRefs:
    - {{name: db-a, port: {svc_port}, weight: 3}}
    - {{name: db-b, port: {svc_port}, weight: 1}}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: secure, namespace: {NS}}}
spec:
  parentRefs: [{{name: l4-gw, sectionName: passthrough}}]
  hostnames: [secure.example.com]
  rules: [{{backendRefs: [{{name: secure, port: {tls_svc_port}}}]}}]
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_route_splits_and_tls_route_passes_through() {
    let subnet = Subnet::claim();
    let mesh = Mesh::new(&[cluster("cluster1", None)]);
    let (pod_port, svc_port, tls_pod_port, tls_svc_port) =
        (free_port(), free_port(), free_port(), free_port());
    let (tcp_port, tls_port) = (free_port(), free_port());
    let mut backends = Vec::new();
    for (svc, host) in [("db-a", 11), ("db-b", 12)] {
        mesh.write_cluster(
            "cluster1",
            &format!("svc-{svc}.yaml"),
            &manifests::service(NS, svc, svc_port, pod_port, &[("app", svc)]),
        );
        let ip = subnet.ip(host);
        mesh.write_cluster(
            "cluster1",
            &format!("pod-{svc}.yaml"),
            &manifests::pod(NS, svc, &[("app", svc)], ip, pod_port, true, None),
        );
        backends.push(Backend::start(ip, pod_port, svc).await);
    }
    let ca = Ca::new("l4 test CA");
    // Valid for other.example.com too, so that a connection with that SNI
    // would succeed if the gateway forwarded it.
    let leaf = ca.leaf(
        "secure.example.com",
        &["secure.example.com", "other.example.com"],
    );
    let tls_ip = subnet.ip(21);
    mesh.write_cluster(
        "cluster1",
        "svc-secure.yaml",
        &manifests::service(
            NS,
            "secure",
            tls_svc_port,
            tls_pod_port,
            &[("app", "secure")],
        ),
    );
    mesh.write_cluster(
        "cluster1",
        "pod-secure.yaml",
        &manifests::pod(
            NS,
            "secure",
            &[("app", "secure")],
            tls_ip,
            tls_pod_port,
            true,
            None,
        ),
    );
    let _tls = tls_backend(SocketAddr::from((tls_ip, tls_pod_port)), &leaf).await;
    mesh.write_istio(
        "gateway-api.yaml",
        &gateway_api(tcp_port, tls_port, svc_port, tls_svc_port),
    );
    let cp = ControlPlane::start(&mesh.mesh_file).await;
    let gw = GatewayProxy {
        name: "l4-gw-0".into(),
        namespace: NS.into(),
        ip: subnet.ip(1),
        labels: vec![(
            "gateway.networking.k8s.io/gateway-name".into(),
            "l4-gw".into(),
        )],
        cluster_id: "cluster1".into(),
        network: None,
        sotw: false,
    };
    let envoy = Envoy::start("gateway-l4", &bootstrap_gateway(&gw, cp.xds, free_port())).await;
    envoy.wait_ready(CONVERGE).await;

    // TCP: each connection goes to one pod, 3:1.
    let tcp = SocketAddr::from((subnet.ip(1), tcp_port));
    wait_for("the TCP listener forwards", CONVERGE, || async {
        let r = http_get(tcp, "db", "/").await?;
        if r.status == 200 && r.body.starts_with("db-") {
            Ok(())
        } else {
            Err(format!("{} {:?}", r.status, r.body))
        }
    })
    .await;
    let (mut a, mut b) = (0, 0);
    for _ in 0..400 {
        let r = http_get(tcp, "db", "/")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        match r.body.as_str() {
            "db-a" => a += 1,
            "db-b" => b += 1,
            other => panic!("answered by {other:?}"),
        }
    }
    eprintln!("TCPRoute 3:1 over 400 connections: db-a {a}, db-b {b}");
    // 25% of 400: mean 100, standard deviation 8.7; 60-140 is over 4 sigma.
    assert!((60..=140).contains(&b), "db-b got {b} of 400 (db-a {a})");

    // TLS passthrough: the backend's own certificate, its own answer.
    let tls = SocketAddr::from((subnet.ip(1), tls_port));
    let cfg = client_config(&ca.pem, None);
    let subject = wait_for("TLS passthrough to the backend", CONVERGE, || {
        let cfg = cfg.clone();
        async move {
            let mut c = connect(tls, "secure.example.com", cfg).await?;
            let r = request(&mut c.stream, "secure.example.com", "/").await?;
            if r.status == 200 && r.body == "tls-backend" {
                Ok(c.peer_subject)
            } else {
                Err(format!("{} {:?}", r.status, r.body))
            }
        }
    })
    .await;
    assert!(
        subject.contains("CN=secure.example.com"),
        "the gateway terminated TLS: {subject}"
    );
    // Another SNI has no route: the handshake fails.
    let other = connect(tls, "other.example.com", cfg.clone()).await;
    assert!(other.is_err(), "SNI other.example.com was forwarded");
    drop(backends);
}
