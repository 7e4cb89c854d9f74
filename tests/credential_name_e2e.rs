//! DestinationRule `tls.credentialName` (issue 11 item 5) with a real sidecar:
//! a NONE-mode client sidecar authenticated on the TLS xDS port in namespace
//! `shop` originates mutual TLS to an upstream TLS server that requires a
//! client certificate, presenting the certificate of the Kubernetes Secret the
//! DestinationRule names (`kubernetes://NAME`, from the sidecar's own
//! namespace and cluster) and verifying the server with the Secret's CA
//! (`kubernetes://NAME-cacert`). The upstream answers with the subject of the
//! client certificate it verified. Every key is made when the test runs.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::control_plane::{bootstrap, ControlPlane};
use support::envoy::Envoy;
use support::http;
use support::manifests::{self, Mesh};
use support::net::{free_port, Subnet};
use support::tls::{self, Ca, Leaf};
use support::{wait_for, CONVERGE};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const NS: &str = "shop";
const HOST: &str = "secure.shop.svc.cluster.local";

/// A TLS server on `addr` that requires a client certificate from `client_ca`
/// and answers one request per connection with `client=<the client
/// certificate's subject>` (so each request is a new handshake).
async fn mtls_upstream(
    addr: SocketAddr,
    server: &Leaf,
    client_ca: &str,
) -> tokio::task::JoinHandle<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(client_ca.as_bytes()) {
        roots.add(c.expect("client CA")).expect("add client CA");
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("client verifier");
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(server.cert_pem.as_bytes())
            .map(|c| c.expect("server PEM"))
            .collect();
    let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).expect("server key");
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind upstream");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let subject = s
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
                    .map(|(_, c)| c.subject().to_string())
                    .unwrap_or_default();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 2048];
                loop {
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let body = format!("client={subject}");
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = s.write_all(resp.as_bytes()).await;
                        let _ = s.shutdown().await;
                        return;
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_originates_mtls_with_the_secret_named_by_credential_name() {
    let subnet = Subnet::claim();
    let (mesh, issuer, tls_addr) = Mesh::secure_single_cluster(ISSUER);
    let server_ca = Ca::new("upstream server CA");
    let client_ca = Ca::new("upstream client CA");
    let server = server_ca.leaf("secure", &["secure.example.com"]);
    let client_cert = client_ca.leaf("shop-client", &["shop-client.example.com"]);
    let (up_ip, up_port, svc_port) = (subnet.ip(11), free_port(), free_port());
    let _upstream =
        mtls_upstream(SocketAddr::from((up_ip, up_port)), &server, &client_ca.pem).await;
    mesh.write_cluster(
        "cluster1",
        "apps.yaml",
        &[
            manifests::service(NS, "secure", svc_port, up_port, &[("app", "secure")]),
            manifests::pod(
                NS,
                "secure-0",
                &[("app", "secure")],
                up_ip,
                up_port,
                true,
                None,
            ),
            // The client certificate and the upstream's CA, in the sidecar's namespace.
            tls::tls_secret(NS, "upstream-client", &client_cert, Some(&server_ca.pem)),
        ]
        .join("\n---\n"),
    );
    mesh.write_istio(
        "config.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client, namespace: {NS}}}
spec:
  workloadSelector: {{labels: {{app: client}}}}
  egress:
  - hosts: [\"./*\"]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: secure, namespace: {NS}}}
spec:
  host: {HOST}
  trafficPolicy:
    tls:
      mode: MUTUAL
      credentialName: upstream-client
      sni: secure.example.com
      subjectAltNames: [secure.example.com]
"
        ),
    );
    let cp = ControlPlane::start(&mesh.mesh_file).await;
    let client_ip = subnet.ip(21);
    let token_file = mesh.root().join("client.token");
    std::fs::write(&token_file, issuer.token_for(NS, "default")).expect("token");
    let root_cert = mesh.root().join("crossmesh-ca").join("root-cert.pem");
    let args: Vec<String> = [
        "bootstrap",
        // Per-cluster ssl stats: not kept by the default (graph) stats matcher.
        "--stats-matcher",
        "all",
        "--role",
        "sidecar",
        "--interception",
        "none",
        "--name",
        "client-0",
        "--namespace",
        NS,
        "--service-account",
        "default",
        "--ip",
        &client_ip.to_string(),
        "--labels",
        "app=client",
        "--xds-address",
        &tls_addr.to_string(),
        "--admin-port",
        "0",
        "--cluster-id",
        "cluster1",
        "--root-cert",
        &root_cert.display().to_string(),
        "--token-file",
        &token_file.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let sidecar = Envoy::start("client-0", &bootstrap(&args)).await;
    sidecar.wait_ready(CONVERGE).await;

    // The upstream verified the Secret's client certificate.
    let egress = SocketAddr::from((client_ip, svc_port));
    let body = wait_for(
        "the upstream answers through the sidecar",
        CONVERGE,
        || async {
            let r = http::get(egress, HOST, "/").await?;
            if r.status == 200 {
                Ok(r.body)
            } else {
                Err(format!("{} {}", r.status, r.body))
            }
        },
    )
    .await;
    assert_eq!(
        body, "client=CN=shop-client",
        "the identity the upstream saw"
    );
    let cluster = format!("cluster.outbound|{svc_port}||{HOST}");
    assert!(
        sidecar
            .stat(&format!("{cluster}.ssl.handshake"))
            .await
            .unwrap_or(0)
            >= 1
    );
    // The secrets it holds are the Secret's, under Istio's names.
    let dump = sidecar.config_dump().await.to_string();
    assert!(
        dump.contains("kubernetes://upstream-client"),
        "no key pair secret"
    );
    assert!(
        dump.contains("kubernetes://upstream-client-cacert"),
        "no CA secret"
    );

    // The Secret's CA does not sign the server (another CA): verification fails
    // and the upstream is not reached with a 200.
    let stranger_ca = Ca::new("not the upstream's CA");
    mesh.write_cluster(
        "cluster1",
        "apps.yaml",
        &[
            manifests::service(NS, "secure", svc_port, up_port, &[("app", "secure")]),
            manifests::pod(
                NS,
                "secure-0",
                &[("app", "secure")],
                up_ip,
                up_port,
                true,
                None,
            ),
            tls::tls_secret(NS, "upstream-client", &client_cert, Some(&stranger_ca.pem)),
        ]
        .join("\n---\n"),
    );
    let failed = sidecar
        .stat(&format!("{cluster}.ssl.fail_verify_error"))
        .await
        .unwrap_or(0);
    wait_for(
        "the server fails verification with the new CA",
        CONVERGE,
        || async {
            let r = http::get(egress, HOST, "/").await?;
            let now = sidecar
                .stat(&format!("{cluster}.ssl.fail_verify_error"))
                .await
                .unwrap_or(0);
            if r.status == 503 && now > failed {
                Ok(())
            } else {
                Err(format!("{} {} (fail_verify_error {now})", r.status, r.body))
            }
        },
    )
    .await;

    // The Secret removed: the cluster is left out (its reason on configz), the
    // route finds no cluster.
    mesh.write_cluster(
        "cluster1",
        "apps.yaml",
        &[
            manifests::service(NS, "secure", svc_port, up_port, &[("app", "secure")]),
            manifests::pod(
                NS,
                "secure-0",
                &[("app", "secure")],
                up_ip,
                up_port,
                true,
                None,
            ),
        ]
        .join("\n---\n"),
    );
    wait_for("the cluster leaves the sidecar", CONVERGE, || async {
        let clusters = sidecar.clusters().await;
        if clusters.contains(&format!("outbound|{svc_port}||{HOST}")) {
            Err("still there".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    let configz = cp.json("/debug/configz").await.expect("configz");
    let warnings = configz["warnings"].to_string();
    assert!(
        warnings.contains("trafficPolicy.tls.credentialName")
            && warnings.contains("upstream-client"),
        "{warnings}"
    );
}
