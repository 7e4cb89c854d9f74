//! Authenticated xDS with real Envoys: the TLS xDS port (`xdsTlsAddress`), proxies
//! authenticating with a service-account token (verified with the cluster's
//! `tokenIssuer` JWKS; the tokens are signed here with a key made at test time),
//! and their certificates delivered over SDS (`default`, `ROOTCA`).
//!
//! Each gateway is bootstrapped by `crossmesh bootstrap --root-cert --token-file`,
//! so these tests also check that Envoy connects over TLS trusting the mesh root
//! and sends the token file's content on every stream.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

use support::backend::Backend;
use support::control_plane::{bootstrap, ControlPlane};
use support::envoy::Envoy;
use support::http;
use support::manifests::{self, cluster, Mesh};
use support::net::{free_port, Subnet};
use support::token_issuer::TokenIssuer;
use support::{wait_for, CONVERGE};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const GW_NS: &str = "istio-system";
const GW_SA: &str = "istio-ingressgateway";
const GW_POD: &str = "istio-ingressgateway-0";
const HOST: &str = "web.example.com";
const SECURE_HOST: &str = "secure.example.com";

/// One cluster read from manifests whose tokens are verified with `Issuer`'s
/// JWKS; service `web` (pod `web-0`) behind the ingress Gateway for
/// `web.example.com`; crossmesh with a TLS xDS port and a generated CA.
struct Fixture {
    subnet: Subnet,
    mesh: Mesh,
    issuer: TokenIssuer,
    cp: ControlPlane,
    tls: SocketAddr,
    gw_port: u16,
    _web: Backend,
    /// `secure-0`'s address: an mTLS server started by `start_upstream`.
    secure_addr: SocketAddr,
}

impl Fixture {
    async fn start(workload_ttl: &str) -> Fixture {
        let subnet = Subnet::claim();
        let mesh = Mesh::new(&[cluster("cluster1", None)]);
        let issuer = TokenIssuer::new(ISSUER, &mesh.root().join("cluster1-jwks.json"));
        let tls = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        std::fs::write(
            &mesh.mesh_file,
            format!(
                "trustDomain: cluster.local
domainSuffix: cluster.local
xdsTlsAddress: {tls}
tokenAudiences: [istio-ca]
ca:
  workloadCertTTL: {workload_ttl}
clusters:
- name: cluster1
  manifests: clusters/cluster1
  tokenIssuer:
    issuer: {ISSUER}
    jwks: cluster1-jwks.json
config:
- manifests: istio
"
            ),
        )
        .expect("mesh file");
        let pod_port = free_port();
        let gw_port = free_port();
        let web_ip = subnet.ip(11);
        mesh.write_cluster(
            "cluster1",
            "web.yaml",
            &format!(
                "{}\n---\n{}",
                manifests::service("shop", "web", 80, pod_port, &[("app", "web")]),
                manifests::pod(
                    "shop",
                    "web-0",
                    &[("app", "web")],
                    web_ip,
                    pod_port,
                    true,
                    None
                )
            ),
        );
        let web = Backend::start(web_ip, pod_port, "web-0").await;
        // `secure`: its DestinationRule asks for ISTIO_MUTUAL, so the gateway's
        // cluster names the SDS secrets and presents its certificate to the pod.
        let secure_addr = SocketAddr::from((subnet.ip(12), free_port()));
        mesh.write_cluster(
            "cluster1",
            "secure.yaml",
            &format!(
                "{}\n---\n{}",
                manifests::service(
                    "shop",
                    "secure",
                    80,
                    secure_addr.port(),
                    &[("app", "secure")]
                ),
                manifests::pod(
                    "shop",
                    "secure-0",
                    &[("app", "secure")],
                    subnet.ip(12),
                    secure_addr.port(),
                    true,
                    None
                )
            ),
        );
        mesh.write_istio(
            "dr.yaml",
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: secure
  namespace: shop
spec:
  host: secure.shop.svc.cluster.local
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
",
        );
        mesh.write_istio(
            "vs-secure.yaml",
            &manifests::virtual_service(
                "shop",
                "secure",
                &["istio-system/ingress"],
                &[SECURE_HOST],
                "secure.shop.svc.cluster.local",
                80,
            ),
        );
        mesh.write_istio(
            "gateway.yaml",
            &manifests::gateway(
                GW_NS,
                "ingress",
                &[("istio", "ingressgateway")],
                gw_port,
                &[HOST, SECURE_HOST],
            ),
        );
        mesh.write_istio(
            "vs.yaml",
            &manifests::virtual_service(
                "shop",
                "web",
                &["istio-system/ingress"],
                &[HOST],
                "web.shop.svc.cluster.local",
                80,
            ),
        );
        let cp = ControlPlane::start(&mesh.mesh_file).await;
        Fixture {
            subnet,
            mesh,
            issuer,
            cp,
            tls,
            gw_port,
            _web: web,
            secure_addr,
        }
    }

    /// Start `secure-0`: an mTLS server with a certificate of the mesh CA for
    /// `spiffe://cluster.local/ns/shop/sa/default`, requiring a client
    /// certificate that chains to the mesh root.
    fn start_upstream(&self) -> MtlsUpstream {
        MtlsUpstream::start(self.secure_addr, &self.mesh.root().join("crossmesh-ca"))
    }

    /// The mesh root the CA generated on first start (what a cluster would
    /// mount as root-cert.pem).
    fn root_cert(&self) -> PathBuf {
        self.mesh.root().join("crossmesh-ca").join("root-cert.pem")
    }

    fn token_file(&self, name: &str, token: &str) -> PathBuf {
        let p = self.mesh.root().join(format!("{name}.token"));
        std::fs::write(&p, token).expect("write token");
        p
    }

    /// `crossmesh bootstrap` of a gateway on the TLS port; `claims`: (namespace,
    /// service account, pod) the node claims.
    fn bootstrap(&self, host: u8, claims: (&str, &str, &str), token_file: &Path) -> String {
        self.bootstrap_mode(host, claims, token_file, false)
    }

    /// [`Fixture::bootstrap`], state-of-the-world ADS when `sotw`.
    fn bootstrap_mode(
        &self,
        host: u8,
        claims: (&str, &str, &str),
        token_file: &Path,
        sotw: bool,
    ) -> String {
        let (ns, sa, pod) = claims;
        let mut args: Vec<String> = [
            "bootstrap",
            "--role",
            "gateway",
            "--name",
            pod,
            "--namespace",
            ns,
            "--service-account",
            sa,
            "--ip",
            &self.subnet.ip(host).to_string(),
            "--labels",
            "istio=ingressgateway,app=istio-ingressgateway",
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
        if sotw {
            args.push("--sotw".into());
        }
        bootstrap(&args)
    }

    fn gw_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.gw_port))
    }

    async fn metric(&self, name_and_labels: &str) -> u64 {
        let (_, text) = self.cp.get("/metrics").await.expect("metrics");
        text.lines()
            .find_map(|l| {
                let rest = l.strip_prefix(name_and_labels)?;
                rest.trim().parse::<f64>().ok()
            })
            .map(|v| v as u64)
            .unwrap_or(0)
    }

    async fn certz(&self) -> Vec<Value> {
        match self.cp.json("/debug/certz").await.expect("certz") {
            Value::Array(a) => a,
            other => panic!("certz is not a list: {other}"),
        }
    }
}

fn gw_node_id(ip: Ipv4Addr, pod: &str, ns: &str) -> String {
    format!("router~{ip}~{pod}.{ns}~{ns}.svc.cluster.local")
}

/// A pod that terminates mTLS: answers `secure-0` on every request and closes
/// the connection (so each request is a new handshake), recording the client
/// certificate (URI SAN, serial) of every connection.
struct MtlsUpstream {
    seen: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MtlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MtlsUpstream {
    fn start(addr: SocketAddr, ca_dir: &Path) -> MtlsUpstream {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let read = |f: &str| std::fs::read_to_string(ca_dir.join(f)).expect("read CA file");
        let ca_key = rcgen::KeyPair::from_pem(&read("ca-key.pem")).expect("CA key");
        let issuer = rcgen::Issuer::from_ca_cert_pem(&read("ca-cert.pem"), ca_key).expect("issuer");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://cluster.local/ns/shop/sa/default"
                .try_into()
                .expect("uri"),
        )];
        let cert = params.signed_by(&key, &issuer).expect("sign");
        let mut chain = vec![cert.der().clone()];
        chain.extend(
            CertificateDer::pem_slice_iter(read("cert-chain.pem").as_bytes())
                .map(|c| c.expect("chain")),
        );
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(read("root-cert.pem").as_bytes()) {
            roots.add(c.expect("root")).expect("add root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .expect("verifier");
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                chain,
                PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key"),
            )
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let std_listener = std::net::TcpListener::bind(addr).expect("bind upstream");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, record) = (acceptor.clone(), record.clone());
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let peer = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
                    if let Some(c) = peer {
                        if let Ok((_, x)) = x509_parser::parse_x509_certificate(c.as_ref()) {
                            let uri = x
                                .subject_alternative_name()
                                .ok()
                                .flatten()
                                .and_then(|san| {
                                    san.value.general_names.iter().find_map(|n| match n {
                                        x509_parser::extensions::GeneralName::URI(u) => {
                                            Some(u.to_string())
                                        }
                                        _ => None,
                                    })
                                })
                                .unwrap_or_default();
                            let serial = x.raw_serial_as_string().replace(':', "");
                            record.lock().unwrap().push((uri, serial));
                        }
                    }
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = "secure-0";
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        MtlsUpstream { seen, task }
    }

    /// (URI SAN, serial) of each client certificate seen, in order.
    fn seen(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }
}

/// GET through the gateway; Ok(body) when answered 200.
async fn get_ok(addr: SocketAddr, host: &str) -> Result<String, String> {
    let r = http::get(addr, host, "/").await?;
    if r.status == 200 {
        Ok(r.body)
    } else {
        Err(format!("{} {}", r.status, r.body))
    }
}

/// The URI SAN and serial of Envoy's `default` certificate, from `/certs`.
async fn envoy_workload_cert(envoy: &Envoy) -> Result<(String, String), String> {
    let (_, body) = envoy.admin_get("/certs").await?;
    let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    for c in v["certificates"].as_array().into_iter().flatten() {
        for chain in c["cert_chain"].as_array().into_iter().flatten() {
            let uri = chain["subject_alt_names"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|s| s["uri"].as_str());
            if let Some(uri) = uri {
                let serial = chain["serial_number"].as_str().unwrap_or("").to_string();
                return Ok((uri.to_string(), serial));
            }
        }
    }
    Err(format!("no workload certificate in /certs: {body}"))
}

/// An authenticated gateway gets its routes over the TLS port (traffic flows),
/// its certificate is issued for the token's identity (`/debug/certz`), and
/// Envoy holds `default` and `ROOTCA` once a cluster names them. Delta ADS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_gateway_gets_routes_and_its_certificate() {
    authenticated_gateway(false).await;
}

/// The same with state-of-the-world ADS (secrets are per-name resources there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_sotw_gateway_gets_routes_and_its_certificate() {
    authenticated_gateway(true).await;
}

async fn authenticated_gateway(sotw: bool) {
    let f = Fixture::start("24h").await;
    let token = f.issuer.token(GW_NS, GW_SA, Some(GW_POD), "istio-ca", 3600);
    let token_file = f.token_file("gw", &token);
    let envoy = Envoy::start(
        if sotw { "gw-tls-sotw" } else { "gw-tls" },
        &f.bootstrap_mode(1, (GW_NS, GW_SA, GW_POD), &token_file, sotw),
    )
    .await;
    envoy.wait_ready(CONVERGE).await;

    // Routes arrived over the TLS port: the pod answers through the gateway.
    let reply = wait_for("web-0 answers through the gateway", CONVERGE, || async {
        let r = http::get(f.gw_addr(), HOST, "/").await?;
        if r.status == 200 && r.body.contains("web-0") {
            Ok(r)
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    })
    .await;
    assert!(reply.body.contains("web-0"));

    // The certificate is for the token's identity.
    let want = format!("spiffe://cluster.local/ns/{GW_NS}/sa/{GW_SA}");
    let certz = f.certz().await;
    assert_eq!(certz.len(), 1, "{certz:?}");
    assert_eq!(certz[0]["identity"], want.as_str());
    assert_eq!(
        certz[0]["proxy_id"],
        gw_node_id(f.subnet.ip(1), GW_POD, GW_NS).as_str()
    );
    assert!(f.metric("citadel_server_success_cert_issuance_count").await >= 1);

    // Envoy asked for and holds both secrets; its certificate's URI SAN is the
    // token's identity and its serial the one crossmesh reports.
    let (uri, serial) = wait_for("Envoy holds its workload certificate", CONVERGE, || {
        envoy_workload_cert(&envoy)
    })
    .await;
    assert_eq!(uri, want);
    assert_eq!(
        serial.to_lowercase().trim_start_matches('0'),
        certz[0]["serial"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .trim_start_matches('0')
    );
    // A real mTLS handshake: the pod sees the gateway's certificate, for the
    // token's identity, with the serial crossmesh issued.
    let upstream = f.start_upstream();
    let body = wait_for("secure-0 answers over mTLS", CONVERGE, || {
        get_ok(f.gw_addr(), SECURE_HOST)
    })
    .await;
    assert_eq!(body, "secure-0");
    let seen = upstream.seen();
    assert!(!seen.is_empty());
    for (uri, serial) in &seen {
        assert_eq!(uri, &want);
        assert_eq!(
            serial.trim_start_matches('0'),
            certz[0]["serial"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .trim_start_matches('0')
        );
    }
    let (_, dump) = envoy
        .admin_get("/config_dump?resource=dynamic_active_secrets")
        .await
        .expect("secrets dump");
    let dump: Value = serde_json::from_str(&dump).expect("json");
    let mut names: Vec<&str> = dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["ROOTCA", "default"], "{dump}");

    // crossmesh's own dump shows the secrets without the private key.
    let id = gw_node_id(f.subnet.ip(1), GW_POD, GW_NS);
    let (status, text) =
        f.cp.get(&format!("/debug/config_dump?proxyID={id}"))
            .await
            .expect("config_dump");
    assert_eq!(status, 200, "{text}");
    let dump: Value = serde_json::from_str(&text).expect("json");
    let secrets: Vec<&Value> = dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["dynamic_active_secrets"].as_array().into_iter().flatten())
        .collect();
    let default = secrets
        .iter()
        .find(|s| s["name"] == "default")
        .unwrap_or_else(|| panic!("no default secret in {text}"));
    let tls = &default["secret"]["tls_certificate"];
    // Envoy's admin form: the sensitive bytes become the bytes of "[redacted]".
    assert_eq!(
        tls["private_key"]["inline_bytes"],
        base64::engine::general_purpose::STANDARD.encode("[redacted]"),
        "{text}"
    );
    assert!(tls["certificate_chain"]["inline_bytes"].is_string());
    // The PEM key's first 21 bytes, base64: nowhere in the dump.
    let key_prefix = base64::engine::general_purpose::STANDARD.encode("-----BEGIN PRIVATE KE");
    assert!(
        !text.contains(&key_prefix),
        "a private key is shown: {text}"
    );
}

/// (case, what the node claims (namespace, service account, pod), token, metric
/// reason, text of the refusal).
type Case<'a> = (
    &'a str,
    (&'a str, &'a str, &'a str),
    String,
    &'a str,
    &'a str,
);

/// Proxies whose token does not prove what their node claims, or whose token
/// is missing, expired or for another audience, are refused with the reason;
/// none of them gets a certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_or_invalid_tokens_are_refused_with_their_reason() {
    let f = Fixture::start("24h").await;
    let good = |f: &Fixture| f.issuer.token(GW_NS, GW_SA, Some(GW_POD), "istio-ca", 3600);
    // (case, node claims, token, metric reason, log text)
    let cases: Vec<Case> =
        vec![
        (
            "namespace",
            ("shop", GW_SA, GW_POD),
            good(&f),
            "namespace_mismatch",
            "the token is for namespace \"istio-system\", the node claims namespace \"shop\"",
        ),
        (
            "service-account",
            (GW_NS, "other", GW_POD),
            good(&f),
            "service_account_mismatch",
            "the token is for service account \"istio-ingressgateway\", the node claims \"other\"",
        ),
        (
            "pod",
            (GW_NS, GW_SA, "istio-ingressgateway-9"),
            good(&f),
            "pod_mismatch",
            "the token is bound to pod \"istio-ingressgateway-0\"",
        ),
        (
            "expired",
            (GW_NS, GW_SA, GW_POD),
            f.issuer
                .token(GW_NS, GW_SA, Some(GW_POD), "istio-ca", -3600),
            "expired",
            "",
        ),
        (
            "audience",
            (GW_NS, GW_SA, GW_POD),
            f.issuer
                .token(GW_NS, GW_SA, Some(GW_POD), "not-istio", 3600),
            "wrong_audience",
            "",
        ),
        ("no-token", (GW_NS, GW_SA, GW_POD), String::new(), "no_token", ""),
    ];
    let mut envoys = Vec::new();
    for (i, (case, claims, token, reason, text)) in cases.iter().enumerate() {
        let label = format!("citadel_server_authentication_failure_count{{reason=\"{reason}\"}}");
        let before = f.metric(&label).await;
        let token_file = f.token_file(case, token);
        let envoy = Envoy::start(
            &format!("refused-{case}"),
            &f.bootstrap(10 + i as u8, *claims, &token_file),
        )
        .await;
        wait_for(&format!("{case}: refusal counted"), CONVERGE, || async {
            let now = f.metric(&label).await;
            if now > before {
                Ok(())
            } else {
                Err(format!("{label} = {now}"))
            }
        })
        .await;
        // Envoy saw the stream end with the gRPC status (7 PERMISSION_DENIED,
        // 16 UNAUTHENTICATED) and the reason.
        let code = if reason.ends_with("_mismatch") { 7 } else { 16 };
        wait_for(
            &format!("{case}: Envoy logs status {code}"),
            CONVERGE,
            || async {
                let log = envoy.log();
                let hit = log.lines().any(|l| {
                    l.contains("AggregatedResources gRPC config stream")
                        && l.contains(&format!(": {code}, "))
                        && l.contains(text)
                });
                if hit {
                    Ok(())
                } else {
                    Err("not yet".into())
                }
            },
        )
        .await;
        let log = f.cp.log();
        assert!(
            log.contains("xDS stream refused") && log.contains(reason),
            "{case}: crossmesh logs the refusal with its reason"
        );
        if !token.is_empty() {
            assert!(
                !log.contains(token.as_str()),
                "{case}: the token was logged"
            );
        }
        // Never connected, never certified, never configured.
        assert!(
            f.certz().await.is_empty(),
            "{case}: a certificate was issued"
        );
        assert!(
            envoy.listener_names().await.is_empty(),
            "{case}: the refused proxy got listeners"
        );
        envoys.push(envoy);
    }
    assert_eq!(
        f.metric("citadel_server_success_cert_issuance_count").await,
        0
    );
}

/// Short-lived certificates (20 s) are renewed at about half life and pushed
/// over SDS; Envoy uses each new one for new handshakes while a steady request
/// loop through the gateway to an mTLS pod sees no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_rotate_under_load_without_failures() {
    let f = Fixture::start("20s").await;
    let token = f.issuer.token(GW_NS, GW_SA, Some(GW_POD), "istio-ca", 3600);
    let token_file = f.token_file("gw", &token);
    let envoy = Envoy::start(
        "gw-rotate",
        &f.bootstrap(1, (GW_NS, GW_SA, GW_POD), &token_file),
    )
    .await;
    envoy.wait_ready(CONVERGE).await;
    let upstream = f.start_upstream();
    wait_for("secure-0 answers over mTLS", CONVERGE, || {
        get_ok(f.gw_addr(), SECURE_HOST)
    })
    .await;
    let first: Vec<String> = upstream.seen().into_iter().map(|(_, s)| s).collect();
    let start = std::time::Instant::now();
    let (mut ok, mut failed) = (0u32, Vec::new());
    let distinct = |seen: &[(String, String)]| {
        let mut serials: Vec<&str> = seen.iter().map(|(_, s)| s.as_str()).collect();
        serials.dedup();
        serials.len()
    };
    // The initial certificate and at least two renewals, each used by Envoy.
    while distinct(&upstream.seen()) < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "fewer than two rotations in 60 s: {:?}",
            upstream.seen()
        );
        match get_ok(f.gw_addr(), SECURE_HOST).await {
            Ok(b) if b == "secure-0" => ok += 1,
            Ok(b) => failed.push(b),
            Err(e) => failed.push(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    let seen = upstream.seen();
    assert!(seen
        .iter()
        .all(|(uri, _)| uri == &format!("spiffe://cluster.local/ns/{GW_NS}/sa/{GW_SA}")));
    assert!(!first.is_empty() && seen.last().map(|(_, s)| s) != first.first());
    // crossmesh reports the certificate in force: the one Envoy uses now.
    let certz = f.certz().await;
    assert_eq!(certz.len(), 1, "{certz:?}");
    let (_, serial) = envoy_workload_cert(&envoy).await.expect("envoy cert");
    assert_eq!(
        serial.to_lowercase().trim_start_matches('0'),
        certz[0]["serial"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .trim_start_matches('0')
    );
    assert!(f.metric("citadel_server_success_cert_issuance_count").await >= 3);
    eprintln!(
        "rotation under load: {ok} requests, 0 failed, serials {:?}",
        {
            let mut s: Vec<String> = seen.into_iter().map(|(_, s)| s).collect();
            s.dedup();
            s
        }
    );
}

/// The token is rotated on disk while the cluster's issuer rotates its key (the
/// old token no longer verifies), then crossmesh restarts: Envoy reconnects
/// with the new token read from the file, and traffic never fails meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_rotated_on_disk_is_used_on_reconnect() {
    let mut f = Fixture::start("24h").await;
    let old = f.issuer.token(GW_NS, GW_SA, Some(GW_POD), "istio-ca", 3600);
    let token_file = f.token_file("gw", &old);
    let envoy = Envoy::start(
        "gw-token",
        &f.bootstrap(1, (GW_NS, GW_SA, GW_POD), &token_file),
    )
    .await;
    envoy.wait_ready(CONVERGE).await;
    let _upstream = f.start_upstream();
    wait_for("secure-0 answers over mTLS", CONVERGE, || {
        get_ok(f.gw_addr(), SECURE_HOST)
    })
    .await;

    // Rotate: a new issuer key (the old token is now refused) and a new token
    // in the file, replaced atomically as the kubelet does.
    f.issuer = TokenIssuer::with_kid(ISSUER, &f.mesh.root().join("cluster1-jwks.json"), "k2");
    let new = f.issuer.token(GW_NS, GW_SA, Some(GW_POD), "istio-ca", 3600);
    let tmp = f.mesh.root().join("gw.token.tmp");
    std::fs::write(&tmp, &new).expect("write");
    std::fs::rename(&tmp, &token_file).expect("rename");

    let addr = f.gw_addr();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match get_ok(addr, HOST).await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        })
    };
    f.cp.restart().await;
    let new_id = {
        let d = ring::digest::digest(&ring::digest::SHA256, new.as_bytes());
        d.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    wait_for("Envoy reconnects with the new token", CONVERGE, || async {
        let certz = f.certz().await;
        let log = f.cp.log();
        if certz.len() == 1 && log.contains(&format!("token={new_id}")) {
            Ok(())
        } else {
            Err(format!("certz {certz:?}"))
        }
    })
    .await;
    // The reconnected stream is configured again: mTLS still works.
    wait_for("secure-0 answers after the reconnect", CONVERGE, || {
        get_ok(f.gw_addr(), SECURE_HOST)
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = load.await.expect("load");
    assert!(ok > 0);
    assert!(
        failed.is_empty(),
        "requests failed across the restart: {failed:?}"
    );
    let log = f.cp.log();
    assert!(
        !log.contains("xDS stream refused"),
        "the old token was presented after the restart:\n{log}"
    );
}

/// A steady request loop through the gateway, alternating the plain route
/// (`web.example.com`) and the mTLS one (`secure.example.com`, the gateway's
/// own certificate presented to `secure-0`); returns (answered, failures).
fn request_loop(
    addr: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    ok: Arc<std::sync::atomic::AtomicU64>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut failed = Vec::new();
        let mut i = 0u64;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let (host, want) = if i.is_multiple_of(2) {
                (HOST, "web-0")
            } else {
                (SECURE_HOST, "secure-0")
            };
            i += 1;
            match get_ok(addr, host).await {
                Ok(b) if b == want => {
                    ok.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                Ok(b) => failed.push(format!("{host}: answered by {b}")),
                Err(e) => failed.push(format!("{host}: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        failed
    })
}

/// Wait until `ok` has grown by `n`.
async fn answered_more(ok: &std::sync::atomic::AtomicU64, n: u64, what: &str) {
    let from = ok.load(std::sync::atomic::Ordering::SeqCst);
    wait_for(what, CONVERGE, || async {
        let now = ok.load(std::sync::atomic::Ordering::SeqCst);
        if now >= from + n {
            Ok(())
        } else {
            Err(format!("{} more answered", now - from))
        }
    })
    .await;
}

/// `token_id` as crossmesh prints it: the first 12 hex digits of the SHA-256.
fn token_id(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// A stream outlives no token: the gateway connects with a token whose `exp`
/// is a few seconds from running out (inside the verifier's one-minute
/// leeway), the kubelet-style rotation puts a fresh token in the file, and
/// when the first token runs out crossmesh ends the stream with
/// UNAUTHENTICATED (counted as `expired`); Envoy reconnects with the file's new
/// token and keeps its config meanwhile: no request of a steady loop fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_token_expires_is_ended_and_envoy_reconnects_with_the_rotated_token() {
    let f = Fixture::start("24h").await;
    // `exp` 50 s ago: accepted for another 10 s (one minute of leeway).
    let old = f.issuer.token(GW_NS, GW_SA, Some(GW_POD), "istio-ca", -50);
    let token_file = f.token_file("gw", &old);
    let envoy = Envoy::start(
        "gw-expiry",
        &f.bootstrap(1, (GW_NS, GW_SA, GW_POD), &token_file),
    )
    .await;
    envoy.wait_ready(CONVERGE).await;
    let _upstream = f.start_upstream();
    wait_for("secure-0 answers over mTLS", CONVERGE, || {
        get_ok(f.gw_addr(), SECURE_HOST)
    })
    .await;
    let first = f.certz().await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["token"], token_id(&old).as_str());
    let first_conn = first[0]["connection"].clone();
    let expired_before = f
        .metric("citadel_server_authentication_failure_count{reason=\"expired\"}")
        .await;

    // The kubelet writes a fresh token (atomically) well before the old one expires.
    let new = f.issuer.token(GW_NS, GW_SA, Some(GW_POD), "istio-ca", 3600);
    let tmp = f.mesh.root().join("gw.token.tmp");
    std::fs::write(&tmp, &new).expect("write");
    std::fs::rename(&tmp, &token_file).expect("rename");

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let load = request_loop(f.gw_addr(), stop.clone(), ok.clone());
    let second = wait_for(
        "a new stream authenticated with the rotated token",
        CONVERGE + Duration::from_secs(15),
        || async {
            let certz = f.certz().await;
            match certz.as_slice() {
                [c] if c["connection"] != first_conn => Ok(c.clone()),
                _ => Err(format!("{certz:?}")),
            }
        },
    )
    .await;
    assert_eq!(second["token"], token_id(&new).as_str());
    answered_more(&ok, 25, "requests after the reconnect").await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = load.await.expect("load");
    let answered = ok.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        answered as usize + failed.len()
    );
    assert_eq!(
        f.metric("citadel_server_authentication_failure_count{reason=\"expired\"}")
            .await,
        expired_before + 1,
        "the expiry is counted once"
    );
    let log = f.cp.log();
    assert!(
        log.contains("the token of an xDS stream expired"),
        "no expiry logged:\n{log}"
    );
    assert!(
        !log.contains("xDS stream refused"),
        "the expired token was presented again:\n{log}"
    );
    eprintln!(
        "token expiry: {answered} requests answered, 0 failed, reconnected with the rotated token"
    );
}

/// `crossmesh serve` killed (SIGKILL) and started again on the same state dir
/// while a request loop runs through an authenticated gateway (plain and mTLS
/// routes): no request fails; afterwards the gateway is connected again
/// (`pilot_xds`, `/debug/syncz` with every type acknowledged), authenticated,
/// and uses a new certificate from the same root (`/debug/certz` serial equals
/// Envoy's `/certs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_restart_under_load_reconnects_and_reissues() {
    let mut f = Fixture::start("24h").await;
    let token = f.issuer.token(GW_NS, GW_SA, Some(GW_POD), "istio-ca", 3600);
    let token_file = f.token_file("gw", &token);
    let envoy = Envoy::start(
        "gw-restart",
        &f.bootstrap(1, (GW_NS, GW_SA, GW_POD), &token_file),
    )
    .await;
    envoy.wait_ready(CONVERGE).await;
    let _upstream = f.start_upstream();
    wait_for("secure-0 answers over mTLS", CONVERGE, || {
        get_ok(f.gw_addr(), SECURE_HOST)
    })
    .await;
    let before = f.certz().await;
    assert_eq!(before.len(), 1, "{before:?}");
    let root = std::fs::read_to_string(f.root_cert()).expect("root");

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let load = request_loop(f.gw_addr(), stop.clone(), ok.clone());
    answered_more(&ok, 10, "requests before the restart").await;
    f.cp.restart().await;
    let node = gw_node_id(f.subnet.ip(1), GW_POD, GW_NS);
    let after = wait_for(
        "the gateway reconnected, authenticated and up to date",
        CONVERGE,
        || async {
            let certz = f.certz().await;
            let syncz = f.cp.json("/debug/syncz").await?;
            let streams = syncz.as_array().cloned().unwrap_or_default();
            let synced = streams.len() == 1
                && streams[0]["proxy_id"] == node.as_str()
                && !streams[0]["types"].as_array().is_none_or(|t| t.is_empty())
                && streams[0]["types"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .all(|t| t["acked_version"] == t["sent_version"] && t["nacked"].is_null());
            let (_, serial) = envoy_workload_cert(&envoy).await?;
            match certz.as_slice() {
                [c] if synced
                    && c["serial"] != before[0]["serial"]
                    && c["serial"].as_str().map(|s| s.trim_start_matches('0'))
                        == Some(serial.to_lowercase().trim_start_matches('0')) =>
                {
                    Ok(c.clone())
                }
                _ => Err(format!(
                    "certz {certz:?} syncz {syncz} envoy serial {serial}"
                )),
            }
        },
    )
    .await;
    assert_eq!(after["proxy_id"], node.as_str());
    assert_eq!(
        after["identity"],
        format!("spiffe://cluster.local/ns/{GW_NS}/sa/{GW_SA}").as_str()
    );
    assert_eq!(f.metric("pilot_xds").await, 1);
    assert_eq!(
        std::fs::read_to_string(f.root_cert()).expect("root"),
        root,
        "the restart kept the root"
    );
    // New mTLS connections after the restart use the new certificate and work.
    answered_more(&ok, 25, "requests after the restart").await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = load.await.expect("load");
    let answered = ok.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the restart: {failed:?}",
        failed.len(),
        answered as usize + failed.len()
    );
    eprintln!("restart under load: {answered} requests answered, 0 failed");
}

/// The plaintext port keeps working as before and never hands out a
/// certificate: a gateway there gets its clusters (the ISTIO_MUTUAL one too, as
/// Istio sends it to a proxy without an identity: no SDS reference) and holds no
/// secret, even with the CA running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_port_never_hands_out_a_certificate() {
    let f = Fixture::start("24h").await;
    let args: Vec<String> = [
        "bootstrap",
        "--role",
        "gateway",
        "--name",
        GW_POD,
        "--namespace",
        GW_NS,
        "--service-account",
        GW_SA,
        "--ip",
        &f.subnet.ip(1).to_string(),
        "--labels",
        "istio=ingressgateway,app=istio-ingressgateway",
        "--xds-address",
        &f.cp.xds.to_string(),
        "--admin-port",
        "0",
        "--cluster-id",
        "cluster1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let envoy = Envoy::start("gw-plaintext", &bootstrap(&args)).await;
    envoy.wait_ready(CONVERGE).await;
    wait_for("web-0 answers through the gateway", CONVERGE, || {
        get_ok(f.gw_addr(), HOST)
    })
    .await;
    let secure_cluster = "outbound|80||secure.shop.svc.cluster.local";
    wait_for("the secure cluster is active", CONVERGE, || async {
        let (_, dump) = envoy
            .admin_get("/config_dump?resource=dynamic_active_clusters")
            .await?;
        if dump.contains(secure_cluster) {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .await;
    let (_, warming) = envoy
        .admin_get("/config_dump?resource=dynamic_warming_clusters")
        .await
        .expect("dump");
    assert!(!warming.contains(secure_cluster), "{warming}");
    // Nothing names an SDS secret, so Envoy asks for none.
    let (_, clusters) = envoy
        .admin_get("/config_dump?resource=dynamic_active_clusters")
        .await
        .expect("dump");
    assert!(!clusters.contains("sds_secret_config"), "{clusters}");
    let (_, warming_secrets) = envoy
        .admin_get("/config_dump?resource=dynamic_warming_secrets")
        .await
        .expect("dump");
    let v: Value = serde_json::from_str(&warming_secrets).expect("json");
    assert!(
        v["configs"].as_array().is_none_or(|a| a.is_empty()),
        "{warming_secrets}"
    );
    let (_, secrets) = envoy
        .admin_get("/config_dump?resource=dynamic_active_secrets")
        .await
        .expect("dump");
    let v: Value = serde_json::from_str(&secrets).expect("json");
    assert!(
        v["configs"].as_array().is_none_or(|a| a.is_empty()),
        "{secrets}"
    );
    assert!(envoy_workload_cert(&envoy).await.is_err());
    assert!(f.certz().await.is_empty());
    assert_eq!(
        f.metric("citadel_server_success_cert_issuance_count").await,
        0
    );
}
