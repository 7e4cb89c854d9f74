//! PeerAuthentication and auto mTLS with real Envoys and real handshakes: two
//! NONE-mode sidecars authenticated on the TLS xDS port (service-account tokens
//! signed here with a key made at test time, verified with the cluster's
//! `tokenIssuer` JWKS), holding certificates of the mesh CA over SDS.
//!
//! - `web-0` (labelled `security.istio.io/tlsMode: istio`) runs a sidecar whose
//!   ingress ports forward to its app; a workload PeerAuthentication says STRICT,
//!   with one port DISABLE;
//! - `legacy-0` has no sidecar (no label): its app is reached directly;
//! - `client-0`'s sidecar sends both: mTLS to web-0 (auto mTLS, ISTIO_MUTUAL with
//!   web's service account as expected SAN), plaintext to legacy-0.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;

use support::backend::Backend;
use support::control_plane::{bootstrap, ControlPlane};
use support::envoy::Envoy;
use support::http;
use support::manifests::{self, Mesh};
use support::net::{free_port, Subnet};
use support::token_issuer::TokenIssuer;
use support::{wait_for, CONVERGE};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const NS: &str = "shop";
const WEB_HOST: &str = "web.shop.svc.cluster.local";
const LEGACY_HOST: &str = "legacy.shop.svc.cluster.local";

struct Fixture {
    subnet: Subnet,
    mesh: Mesh,
    issuer: TokenIssuer,
    _cp: ControlPlane,
    tls: SocketAddr,
    /// web's sidecar ingress ports: STRICT, and DISABLE by `portLevelMtls`.
    strict_port: u16,
    disable_port: u16,
    web_svc_port: u16,
    legacy_svc_port: u16,
    _apps: Vec<Backend>,
}

fn peer_authentication(spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: web
  namespace: {NS}
spec:
  selector:
    matchLabels: {{app: web}}
{spec}"
    )
}

impl Fixture {
    async fn start() -> Fixture {
        let subnet = Subnet::claim();
        let (mesh, issuer, tls) = Mesh::secure_single_cluster(ISSUER);
        let (web_ip, legacy_ip) = (subnet.ip(11), subnet.ip(12));
        let (strict_port, disable_port, app_port) = (free_port(), free_port(), free_port());
        let (web_svc_port, legacy_svc_port, legacy_port) = (free_port(), free_port(), free_port());
        mesh.write_cluster(
            "cluster1",
            "apps.yaml",
            &[
                manifests::service(NS, "web", web_svc_port, strict_port, &[("app", "web")]),
                manifests::pod(
                    NS,
                    "web-0",
                    &[("app", "web"), ("security.istio.io/tlsMode", "istio")],
                    web_ip,
                    strict_port,
                    true,
                    None,
                ),
                manifests::service(
                    NS,
                    "legacy",
                    legacy_svc_port,
                    legacy_port,
                    &[("app", "legacy")],
                ),
                manifests::pod(
                    NS,
                    "legacy-0",
                    &[("app", "legacy")],
                    legacy_ip,
                    legacy_port,
                    true,
                    None,
                ),
            ]
            .join("\n---\n"),
        );
        // web-0's app listens beside its sidecar; legacy-0's app is the pod.
        let apps = vec![
            Backend::start(web_ip, app_port, "web-0").await,
            Backend::start(legacy_ip, legacy_port, "legacy-0").await,
        ];
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
  - port: {{number: {strict_port}, protocol: HTTP, name: http}}
    defaultEndpoint: {web_ip}:{app_port}
  - port: {{number: {disable_port}, protocol: HTTP, name: http-plain}}
    defaultEndpoint: {web_ip}:{app_port}
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
            "pa.yaml",
            &peer_authentication(&format!(
                "  mtls: {{mode: STRICT}}\n  portLevelMtls:\n    {disable_port}: {{mode: DISABLE}}\n"
            )),
        );
        let cp = ControlPlane::start(&mesh.mesh_file).await;
        Fixture {
            subnet,
            mesh,
            issuer,
            _cp: cp,
            tls,
            strict_port,
            disable_port,
            web_svc_port,
            legacy_svc_port,
            _apps: apps,
        }
    }

    fn root_cert(&self) -> PathBuf {
        self.mesh.root().join("crossmesh-ca").join("root-cert.pem")
    }

    /// A NONE-mode sidecar on the TLS port, authenticated as `shop/default`.
    async fn sidecar(&self, host: u8, pod: &str, app: &str) -> Envoy {
        let token_file = self.mesh.root().join(format!("{pod}.token"));
        std::fs::write(&token_file, self.issuer.token_for(NS, "default")).expect("write token");
        let args: Vec<String> = [
            "bootstrap",
            // ssl.handshake and no_filter_chain_match: not kept by the default
            // (graph) stats matcher.
            "--stats-matcher",
            "all",
            "--role",
            "sidecar",
            "--interception",
            "none",
            "--name",
            pod,
            "--namespace",
            NS,
            "--service-account",
            "default",
            "--ip",
            &self.subnet.ip(host).to_string(),
            "--labels",
            &format!("app={app}"),
            "--xds-address",
            &self.tls.to_string(),
            "--admin-port",
            "0",
            "--cluster-id",
            "cluster1",
            "--root-cert",
            &self.root_cert().display().to_string(),
            "--token-file",
            &token_file.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let envoy = Envoy::start(pod, &bootstrap(&args)).await;
        envoy.wait_ready(CONVERGE).await;
        envoy
    }

    fn web(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.subnet.ip(11), port))
    }

    fn client(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.subnet.ip(21), port))
    }
}

/// Ok(body) when answered 200.
async fn get_ok(addr: SocketAddr, host: &str) -> Result<String, String> {
    let r = http::get(addr, host, "/").await?;
    if r.status == 200 {
        Ok(r.body)
    } else {
        Err(format!("{} {}", r.status, r.body))
    }
}

/// Envoy's count of connections a listener closed for want of a matching
/// filter chain (a plaintext client under STRICT).
async fn no_chain_match(envoy: &Envoy, addr: SocketAddr) -> u64 {
    envoy
        .stat(&format!("listener.{addr}.no_filter_chain_match").replace(':', "_"))
        .await
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_refuses_plaintext_permissive_accepts_both_auto_mtls_per_endpoint() {
    let f = Fixture::start().await;
    let web = f.sidecar(11, "web-0", "web").await;
    let client = f.sidecar(21, "client-0", "client").await;

    // Through the client's sidecar: mTLS to the meshed pod (its sidecar takes
    // nothing else on this port), plaintext to the pod without a sidecar.
    let body = wait_for(
        "web-0 answers the client sidecar over mTLS",
        CONVERGE,
        || get_ok(f.client(f.web_svc_port), WEB_HOST),
    )
    .await;
    assert!(body.contains("web-0"), "{body}");
    let body = wait_for(
        "legacy-0 answers the client sidecar in plaintext",
        CONVERGE,
        || get_ok(f.client(f.legacy_svc_port), LEGACY_HOST),
    )
    .await;
    assert!(body.contains("legacy-0"), "{body}");
    // The client's sidecar made TLS handshakes to web only.
    let web_cluster = format!("cluster.outbound|{}||{WEB_HOST}", f.web_svc_port);
    let legacy_cluster = format!("cluster.outbound|{}||{LEGACY_HOST}", f.legacy_svc_port);
    assert!(
        client
            .stat(&format!("{web_cluster}.ssl.handshake"))
            .await
            .unwrap_or(0)
            >= 1
    );
    assert_eq!(
        client
            .stat(&format!("{legacy_cluster}.ssl.handshake"))
            .await
            .unwrap_or(0),
        0
    );

    // STRICT: a plaintext client is disconnected by web's sidecar (no chain
    // matches), on the STRICT port; the DISABLE port answers it.
    let strict = f.web(f.strict_port);
    let before = no_chain_match(&web, strict).await;
    let plain = http::get(strict, WEB_HOST, "/").await;
    assert!(plain.is_err(), "plaintext answered under STRICT: {plain:?}");
    assert!(no_chain_match(&web, strict).await > before);
    let body = get_ok(f.web(f.disable_port), WEB_HOST)
        .await
        .expect("plaintext on the DISABLE port");
    assert!(body.contains("web-0"), "{body}");

    // PERMISSIVE: plaintext and mTLS both answered.
    f.mesh.write_istio(
        "pa.yaml",
        &peer_authentication("  mtls: {mode: PERMISSIVE}\n"),
    );
    let body = wait_for("plaintext answered under PERMISSIVE", CONVERGE, || {
        get_ok(strict, WEB_HOST)
    })
    .await;
    assert!(body.contains("web-0"), "{body}");
    let handshakes = client
        .stat(&format!("{web_cluster}.ssl.handshake"))
        .await
        .unwrap_or(0);
    for _ in 0..3 {
        let body = get_ok(f.client(f.web_svc_port), WEB_HOST)
            .await
            .expect("mTLS under PERMISSIVE");
        assert!(body.contains("web-0"), "{body}");
    }
    // Still mTLS from the sidecar (new connections may reuse the pooled one).
    assert!(
        client
            .stat(&format!("{web_cluster}.ssl.handshake"))
            .await
            .unwrap_or(0)
            >= handshakes
    );
}
