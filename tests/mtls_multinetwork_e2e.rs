//! mTLS across networks with real sidecars on both sides (Istio's multi-network
//! model): the client's sidecar originates mTLS with Istio's SNI to the
//! east-west gateway of the destination's network, which passes it through
//! (`AUTO_PASSTHROUGH`) to the destination pod's own sidecar, which terminates
//! it with its own certificate of the mesh CA.
//!
//! - `cluster1` on network `vpc-a`: `client-0`'s sidecar (NONE mode,
//!   authenticated as `shop/sleep` on the TLS xDS port);
//! - `cluster3` on network `account-b`: `web-0` (labelled
//!   `security.istio.io/tlsMode: istio`), its sidecar (NONE mode, authenticated
//!   as `shop/default`, STRICT by a workload PeerAuthentication) in front of its
//!   app, and the east-west gateway Envoy (authenticated as
//!   `istio-system/istio-eastwestgateway`) found from its Service labelled
//!   `topology.istio.io/network: account-b`.
//!
//! A second test runs one control plane per account, each signing with its own
//! intermediate under one plugged-in root made here.
//!
//! Each cluster's service-account tokens are signed here with a key made at test
//! time and verified with that cluster's `tokenIssuer` JWKS.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use support::backend::Backend;
use support::control_plane::{bootstrap, ControlPlane};
use support::envoy::Envoy;
use support::http;
use support::manifests::{self, cluster, Mesh};
use support::net::{free_port, Subnet};
use support::token_issuer::TokenIssuer;
use support::{wait_for, CONVERGE};

const NS: &str = "shop";
const HOST: &str = "web.shop.svc.cluster.local";
const CLIENT_SA: &str = "sleep";
const WEB_SA: &str = "default";

/// The east-west gateway's Service in cluster3 (Istio's label-based network
/// gateway), its address in the load balancer status.
fn east_west_service(ip: Ipv4Addr, port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: istio-eastwestgateway
  namespace: istio-system
  labels:
    istio: eastwestgateway
    topology.istio.io/network: account-b
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

/// A mesh file at `path`: `clusters` are (name, network) pairs, each with its
/// own `tokenIssuer`; `extra` is appended.
fn mesh_file(path: &Path, tls: SocketAddr, clusters: &[(&str, &str)], extra: &str) {
    let mut text = format!(
        "trustDomain: cluster.local
domainSuffix: cluster.local
xdsTlsAddress: {tls}
tokenAudiences: [istio-ca]
clusters:
"
    );
    for (name, network) in clusters {
        text.push_str(&format!(
            "- name: {name}
  network: {network}
  manifests: clusters/{name}
  tokenIssuer:
    issuer: https://{name}.example
    jwks: {name}-jwks.json
"
        ));
    }
    text.push_str("config:\n- manifests: istio\n");
    text.push_str(extra);
    std::fs::write(path, text).expect("mesh file");
}

/// What the destination side needs in cluster3 and in the Istio config: web-0,
/// its Service, its sidecar's ingress and a STRICT PeerAuthentication.
fn write_destination(
    mesh: &Mesh,
    web_ip: Ipv4Addr,
    svc_port: u16,
    sidecar_port: u16,
    app_port: u16,
) {
    mesh.write_cluster(
        "cluster3",
        "web.yaml",
        &[
            manifests::service(NS, "web", svc_port, sidecar_port, &[("app", "web")]),
            manifests::pod(
                NS,
                "web-0",
                &[("app", "web"), ("security.istio.io/tlsMode", "istio")],
                web_ip,
                sidecar_port,
                true,
                None,
            ),
        ]
        .join("\n---\n"),
    );
    mesh.write_istio(
        "web.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: web, namespace: {NS}}}
spec:
  workloadSelector: {{labels: {{app: web}}}}
  egress:
  - hosts: [\"istio-system/*\"]
  ingress:
  - port: {{number: {sidecar_port}, protocol: HTTP, name: http}}
    defaultEndpoint: {web_ip}:{app_port}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: web
  namespace: {NS}
spec:
  selector:
    matchLabels: {{app: web}}
  mtls: {{mode: STRICT}}
"
        ),
    );
}

/// account-b's east-west gateway: its labelled Service in cluster3 and its
/// `AUTO_PASSTHROUGH` Gateway; and the client's Sidecar.
fn write_east_west(mesh: &Mesh, ew_ip: Ipv4Addr, ew_port: u16) {
    mesh.write_cluster(
        "cluster3",
        "eastwest.yaml",
        &east_west_service(ew_ip, ew_port),
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
}

/// A NONE-mode sidecar on `tls`, authenticated with a token of `issuer`.
#[allow(clippy::too_many_arguments)]
async fn sidecar(
    dir: &Path,
    issuer: &TokenIssuer,
    tls: SocketAddr,
    root_cert: &Path,
    ip: Ipv4Addr,
    pod: &str,
    app: &str,
    sa: &str,
    cluster_id: &str,
    network: &str,
) -> Envoy {
    let token_file = dir.join(format!("{pod}.token"));
    std::fs::write(&token_file, issuer.token_for(NS, sa)).expect("write token");
    let args: Vec<String> = [
        "bootstrap",
        // ssl.* stats: not kept by the default (graph) stats matcher.
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
        sa,
        "--ip",
        &ip.to_string(),
        "--labels",
        &format!("app={app}"),
        "--xds-address",
        &tls.to_string(),
        "--admin-port",
        "0",
        "--cluster-id",
        cluster_id,
        "--network",
        network,
        "--root-cert",
        &root_cert.display().to_string(),
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

fn root_cert(mesh: &Mesh) -> PathBuf {
    mesh.root().join("crossmesh-ca").join("root-cert.pem")
}

/// The east-west gateway of account-b, authenticated as
/// `istio-system/istio-eastwestgateway` as Istio's is: holding a certificate of
/// its own, it must still pass the sidecars' mTLS through unterminated.
async fn east_west_gateway(
    dir: &Path,
    issuer: &TokenIssuer,
    tls: SocketAddr,
    root_cert: &Path,
    ip: Ipv4Addr,
) -> Envoy {
    let token_file = dir.join("ew-0.token");
    std::fs::write(
        &token_file,
        issuer.token_for("istio-system", "istio-eastwestgateway"),
    )
    .expect("write token");
    let args: Vec<String> = [
        "bootstrap",
        // ssl.* stats: not kept by the default (graph) stats matcher.
        "--stats-matcher",
        "all",
        "--role",
        "gateway",
        "--name",
        "ew-0",
        "--namespace",
        "istio-system",
        "--service-account",
        "istio-eastwestgateway",
        "--labels",
        "istio=eastwestgateway",
        "--cluster-id",
        "cluster3",
        "--network",
        "account-b",
        "--ip",
        &ip.to_string(),
        "--xds-address",
        &tls.to_string(),
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
    let envoy = Envoy::start("ew-0", &bootstrap(&args)).await;
    envoy.wait_ready(CONVERGE).await;
    envoy
}

/// A field of the `x-forwarded-client-cert` the destination sidecar sent its
/// app (`By=<the destination's identity>;Hash=...;URI=<the client's identity>`),
/// as the app echoed it.
fn xfcc(reply: &http::Reply, key: &str) -> String {
    let xfcc = reply
        .header("x-echo-x-forwarded-client-cert")
        .unwrap_or_else(|| panic!("no XFCC reached the app: {:?}", reply.headers));
    xfcc.split(';')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in XFCC {xfcc}"))
        .to_string()
}

/// A counter of `envoy`, 0 when absent.
async fn counter(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat(name).await.unwrap_or(0)
}

fn listener_stat(addr: SocketAddr, stat: &str) -> String {
    format!("listener.{addr}.{stat}").replace(':', "_")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sidecar_to_destination_sidecar_through_the_east_west_gateway() {
    let subnet = Subnet::claim();
    let mesh = Mesh::new(&[
        cluster("cluster1", Some("vpc-a")),
        cluster("cluster3", Some("account-b")),
    ]);
    let tls = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    mesh_file(
        &mesh.mesh_file,
        tls,
        &[("cluster1", "vpc-a"), ("cluster3", "account-b")],
        "",
    );
    let issuer1 = TokenIssuer::new(
        "https://cluster1.example",
        &mesh.root().join("cluster1-jwks.json"),
    );
    let issuer3 = TokenIssuer::new(
        "https://cluster3.example",
        &mesh.root().join("cluster3-jwks.json"),
    );

    let (client_ip, web_ip, ew_ip) = (subnet.ip(1), subnet.ip(31), subnet.ip(200));
    let (svc_port, sidecar_port, app_port, ew_port) =
        (free_port(), free_port(), free_port(), free_port());
    write_destination(&mesh, web_ip, svc_port, sidecar_port, app_port);
    write_east_west(&mesh, ew_ip, ew_port);
    let app = Backend::start(web_ip, app_port, "web-0").await;
    let cp = ControlPlane::start(&mesh.mesh_file).await;
    let _ew = east_west_gateway(mesh.root(), &issuer3, tls, &root_cert(&mesh), ew_ip).await;
    let mut web = sidecar(
        mesh.root(),
        &issuer3,
        tls,
        &root_cert(&mesh),
        web_ip,
        "web-0",
        "web",
        WEB_SA,
        "cluster3",
        "account-b",
    )
    .await;
    let client = sidecar(
        mesh.root(),
        &issuer1,
        tls,
        &root_cert(&mesh),
        client_ip,
        "client-0",
        "client",
        CLIENT_SA,
        "cluster1",
        "vpc-a",
    )
    .await;

    // Answered by web-0, through the gateway, the destination sidecar having
    // seen the client's identity.
    let out = SocketAddr::from((client_ip, svc_port));
    let inbound = SocketAddr::from((web_ip, sidecar_port));
    let handshakes = counter(&web, &listener_stat(inbound, "ssl.handshake")).await;
    let reply = wait_for("web-0 answers the client sidecar", CONVERGE, || async {
        let r = http::get(out, HOST, "/").await?;
        if r.status == 200 {
            Ok(r)
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    })
    .await;
    assert_eq!(reply.body, "web-0");
    let client_id = format!("spiffe://cluster.local/ns/{NS}/sa/{CLIENT_SA}");
    let web_id = format!("spiffe://cluster.local/ns/{NS}/sa/{WEB_SA}");
    assert_eq!(xfcc(&reply, "URI"), client_id);
    assert_eq!(xfcc(&reply, "By"), web_id);
    assert!(
        counter(&web, &listener_stat(inbound, "ssl.handshake")).await > handshakes,
        "web-0's sidecar terminated no TLS on {inbound}"
    );
    let web_cluster = format!("cluster.outbound|{svc_port}||{HOST}");
    assert!(counter(&client, &format!("{web_cluster}.ssl.handshake")).await >= 1);

    // The client's EDS holds account-b's gateway, never the pod.
    let client_node = format!("sidecar~{client_ip}~client-0.{NS}~{NS}.svc.cluster.local");
    let dump = cp
        .json(&format!("/debug/config_dump?proxyID={client_node}"))
        .await
        .expect("client config dump")
        .to_string();
    assert!(dump.contains(&ew_ip.to_string()), "no gateway in {dump}");
    assert!(!dump.contains(&web_ip.to_string()), "pod address in {dump}");
    assert_eq!(
        client
            .cluster_hosts(&format!("outbound|{svc_port}||{HOST}"))
            .await
            .expect("client hosts"),
        vec![SocketAddr::from((ew_ip, ew_port))]
    );

    // The gateway that passed the connection through holds an identity of its own.
    let ew_node = format!("router~{ew_ip}~ew-0.istio-system~istio-system.svc.cluster.local");
    let certz = cp.json("/debug/certz").await.expect("certz").to_string();
    let ew_cert = serde_json::from_str::<Vec<serde_json::Value>>(&certz)
        .expect("certz is a list")
        .into_iter()
        .find(|c| c["proxy_id"] == ew_node.as_str())
        .unwrap_or_else(|| panic!("no certificate for {ew_node}: {certz}"));
    assert_eq!(
        ew_cert["identity"],
        "spiffe://cluster.local/ns/istio-system/sa/istio-eastwestgateway"
    );

    // STRICT: plaintext straight to web-0's sidecar is refused.
    let before = counter(&web, &listener_stat(inbound, "no_filter_chain_match")).await;
    let plain = http::get(inbound, HOST, "/").await;
    assert!(plain.is_err(), "plaintext answered under STRICT: {plain:?}");
    assert!(counter(&web, &listener_stat(inbound, "no_filter_chain_match")).await > before);

    // A destination sidecar of another mesh (another crossmesh, its own
    // generated root) at the same address: the client refuses its certificate.
    web.kill();
    let other = Mesh::new(&[cluster("cluster3", Some("account-b"))]);
    let other_tls = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    mesh_file(
        &other.mesh_file,
        other_tls,
        &[("cluster3", "account-b")],
        "",
    );
    issuer3.write_jwks(&other.root().join("cluster3-jwks.json"));
    write_destination(&other, web_ip, svc_port, sidecar_port, app_port);
    let other_cp = ControlPlane::start(&other.mesh_file).await;
    let other_root = std::fs::read_to_string(root_cert(&other)).expect("other root");
    assert_ne!(
        other_root,
        std::fs::read_to_string(root_cert(&mesh)).expect("root"),
        "the second mesh has a root of its own"
    );
    let _stranger = sidecar(
        other.root(),
        &issuer3,
        other_tls,
        &root_cert(&other),
        web_ip,
        "web-0",
        "web",
        WEB_SA,
        "cluster3",
        "account-b",
    )
    .await;
    let requests = app.requests();
    let verify = format!("{web_cluster}.ssl.fail_verify_error");
    let failed = counter(&client, &verify).await;
    let status = wait_for(
        "the client refuses the other mesh's certificate",
        CONVERGE,
        || async {
            let r = http::get(out, HOST, "/").await;
            let now = counter(&client, &verify).await;
            match r {
                Ok(r) if r.status != 200 && now > failed => Ok(r.status),
                Ok(r) => Err(format!("{} {} ({verify} {now})", r.status, r.body)),
                Err(e) => Err(e),
            }
        },
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(app.requests(), requests, "web-0's app was reached");
    drop(other_cp);
}

/// A CA certificate and its key, made at test time.
struct TestCa {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
    params: rcgen::CertificateParams,
}

fn test_ca(cn: &str, parent: Option<&TestCa>) -> TestCa {
    use rcgen::{BasicConstraints, DnType, IsCa, KeyUsagePurpose};
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(3600)).into();
    params.not_after = (now + std::time::Duration::from_secs(30 * 86_400)).into();
    let cert = match parent {
        None => params.self_signed(&key),
        Some(p) => params.signed_by(&key, &rcgen::Issuer::from_params(&p.params, &p.key)),
    }
    .expect("CA certificate");
    TestCa { key, cert, params }
}

/// Istio's `cacerts` layout for an intermediate under `root`.
fn plug_in(dir: &Path, ca: &TestCa, root: &TestCa) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join("ca-cert.pem"), ca.cert.pem()).expect("write");
    std::fs::write(dir.join("ca-key.pem"), ca.key.serialize_pem()).expect("write");
    std::fs::write(dir.join("root-cert.pem"), root.cert.pem()).expect("write");
    std::fs::write(
        dir.join("cert-chain.pem"),
        format!("{}{}", ca.cert.pem(), root.cert.pem()),
    )
    .expect("write");
}

/// The identities `cp` holds certificates for (`/debug/certz`).
async fn identities(cp: &ControlPlane) -> Vec<String> {
    let certz = cp.json("/debug/certz").await.expect("certz");
    let mut out: Vec<String> = certz
        .as_array()
        .expect("certz is a list")
        .iter()
        .filter_map(|c| c["identity"].as_str().map(str::to_string))
        .collect();
    out.sort();
    out
}

/// One control plane per account, each signing with its own intermediate under
/// one plugged-in root (Istio's multi-primary with a shared root): the client
/// sidecar holds account-a's certificate, the destination sidecar and the
/// east-west gateway account-b's, and mTLS through the gateway succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_sharing_a_plugged_in_root() {
    let subnet = Subnet::claim();
    let mesh = Mesh::new(&[
        cluster("cluster1", Some("vpc-a")),
        cluster("cluster3", Some("account-b")),
    ]);
    let root = test_ca("mesh root", None);
    plug_in(
        &mesh.root().join("cacerts-a"),
        &test_ca("account-a", Some(&root)),
        &root,
    );
    plug_in(
        &mesh.root().join("cacerts-b"),
        &test_ca("account-b", Some(&root)),
        &root,
    );
    let root_file = mesh.root().join("shared-root.pem");
    std::fs::write(&root_file, root.cert.pem()).expect("write root");
    let both = [("cluster1", "vpc-a"), ("cluster3", "account-b")];
    let (tls_a, tls_b) = (
        SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
        SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
    );
    mesh_file(&mesh.mesh_file, tls_a, &both, "ca:\n  dir: cacerts-a\n");
    let mesh_b = mesh.root().join("mesh-b.yaml");
    mesh_file(&mesh_b, tls_b, &both, "ca:\n  dir: cacerts-b\n");
    let issuer1 = TokenIssuer::new(
        "https://cluster1.example",
        &mesh.root().join("cluster1-jwks.json"),
    );
    let issuer3 = TokenIssuer::new(
        "https://cluster3.example",
        &mesh.root().join("cluster3-jwks.json"),
    );

    let (client_ip, web_ip, ew_ip) = (subnet.ip(1), subnet.ip(31), subnet.ip(200));
    let (svc_port, sidecar_port, app_port, ew_port) =
        (free_port(), free_port(), free_port(), free_port());
    write_destination(&mesh, web_ip, svc_port, sidecar_port, app_port);
    write_east_west(&mesh, ew_ip, ew_port);
    let _app = Backend::start(web_ip, app_port, "web-0").await;
    let cp_a = ControlPlane::start(&mesh.mesh_file).await;
    let cp_b = ControlPlane::start(&mesh_b).await;
    let _ew = east_west_gateway(mesh.root(), &issuer3, tls_b, &root_file, ew_ip).await;
    let _web = sidecar(
        mesh.root(),
        &issuer3,
        tls_b,
        &root_file,
        web_ip,
        "web-0",
        "web",
        WEB_SA,
        "cluster3",
        "account-b",
    )
    .await;
    let _client = sidecar(
        mesh.root(),
        &issuer1,
        tls_a,
        &root_file,
        client_ip,
        "client-0",
        "client",
        CLIENT_SA,
        "cluster1",
        "vpc-a",
    )
    .await;

    let client_id = format!("spiffe://cluster.local/ns/{NS}/sa/{CLIENT_SA}");
    let web_id = format!("spiffe://cluster.local/ns/{NS}/sa/{WEB_SA}");
    assert_eq!(identities(&cp_a).await, std::slice::from_ref(&client_id));
    assert_eq!(
        identities(&cp_b).await,
        [
            "spiffe://cluster.local/ns/istio-system/sa/istio-eastwestgateway".to_string(),
            web_id.clone(),
        ]
    );
    let out = SocketAddr::from((client_ip, svc_port));
    let reply = wait_for("web-0 answers across control planes", CONVERGE, || async {
        let r = http::get(out, HOST, "/").await?;
        if r.status == 200 {
            Ok(r)
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    })
    .await;
    assert_eq!(reply.body, "web-0");
    assert_eq!(xfcc(&reply, "URI"), client_id);
    assert_eq!(xfcc(&reply, "By"), web_id);
}

/// A CA certificate with a known subject, for the rotation test: `cn`.
fn rotation_ca(cn: &str, parent: Option<&TestCa>) -> TestCa {
    test_ca(cn, parent)
}

/// Replace `dir/file` with `text` atomically (write, then rename), as a
/// Kubernetes Secret volume or an operator's `mv` does.
fn replace(dir: &Path, file: &str, text: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join(file)).expect("rename");
}

/// The PEM of the `ROOTCA` secret `envoy` holds, from its config dump.
async fn envoy_rootca(envoy: &Envoy) -> Option<String> {
    use base64::Engine as _;
    let dump = envoy.config_dump().await;
    for c in dump["configs"].as_array()? {
        for s in c["dynamic_active_secrets"].as_array().into_iter().flatten() {
            if s["name"] == "ROOTCA" {
                let b64 =
                    s["secret"]["validation_context"]["trusted_ca"]["inline_bytes"].as_str()?;
                let pem = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
                return String::from_utf8(pem).ok();
            }
        }
    }
    None
}

/// The serial (lower-case hex, no leading zeros) of the workload certificate
/// `envoy` uses, from its admin `/certs`.
async fn envoy_serial(envoy: &Envoy) -> Result<String, String> {
    let (_, body) = envoy.admin_get("/certs").await?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    for c in v["certificates"].as_array().into_iter().flatten() {
        for chain in c["cert_chain"].as_array().into_iter().flatten() {
            let has_uri = chain["subject_alt_names"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["uri"].is_string());
            if has_uri {
                let serial = chain["serial_number"].as_str().unwrap_or("");
                return Ok(serial.to_lowercase().trim_start_matches('0').to_string());
            }
        }
    }
    Err(format!("no workload certificate in /certs: {body}"))
}

/// `cp`'s `/debug/certz` entry for `proxy_id`.
async fn certz_entry(cp: &ControlPlane, proxy_id: &str) -> Result<serde_json::Value, String> {
    let certz = cp.json("/debug/certz").await?;
    certz
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["proxy_id"] == proxy_id)
        .cloned()
        .ok_or_else(|| format!("no certificate for {proxy_id}: {certz}"))
}

/// Whether `envoy` (node `proxy_id` of `cp`) uses a certificate signed by the
/// intermediate `issuer_cn`: the serial Envoy presents is the one `cp` issued
/// with that issuer.
async fn uses_cert_from(
    envoy: &Envoy,
    cp: &ControlPlane,
    proxy_id: &str,
    issuer_cn: &str,
) -> Result<String, String> {
    let entry = certz_entry(cp, proxy_id).await?;
    let issuer = entry["issuer"].as_str().unwrap_or("");
    let serial = entry["serial"]
        .as_str()
        .unwrap_or("")
        .to_lowercase()
        .trim_start_matches('0')
        .to_string();
    let in_envoy = envoy_serial(envoy).await?;
    if issuer == format!("CN={issuer_cn}") && serial == in_envoy {
        Ok(serial)
    } else {
        Err(format!(
            "{proxy_id}: crossmesh issued {serial} from {issuer:?}, Envoy uses {in_envoy}"
        ))
    }
}

/// The issuer of the certificate crossmesh's TLS xDS port at `addr` presents
/// to a new handshake (`openssl s_client`, first certificate).
async fn xds_server_issuer(addr: SocketAddr) -> Result<String, String> {
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-alpn", "h2"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("openssl s_client: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find(|l| l.trim_start().starts_with("i:"))
        .map(|l| l.trim().to_string())
        .ok_or_else(|| format!("no issuer in: {text}"))
}

/// A value of `cp`'s `/metrics`, 0 when absent.
async fn cp_metric(cp: &ControlPlane, name_and_labels: &str) -> f64 {
    let (_, text) = cp.get("/metrics").await.expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Istio's three documented steps of a root rotation, done on the plug-in
/// files of both control planes while a request loop runs through the
/// east-west gateway, without restarting anything (each crossmesh reloads its
/// `cacerts` directory): (1) add the new root to `root-cert.pem`, (2) sign with
/// an intermediate under the new root, (3) drop the old root. Every request of
/// the loop is answered by web-0 (each on a new mTLS connection:
/// `maxRequestsPerConnection: 1`); after step 2 both sidecars use certificates
/// of the new intermediates; after step 3 neither trusts the old root. A
/// broken set of files written afterwards is refused, shown on
/// `/debug/configz`, and the CA in force keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_rotation_under_cross_network_load() {
    let subnet = Subnet::claim();
    let mesh = Mesh::new(&[
        cluster("cluster1", Some("vpc-a")),
        cluster("cluster3", Some("account-b")),
    ]);
    let old_root = rotation_ca("old root", None);
    let new_root = rotation_ca("new root", None);
    let (old_a, old_b) = (
        rotation_ca("account-a old", Some(&old_root)),
        rotation_ca("account-b old", Some(&old_root)),
    );
    let (new_a, new_b) = (
        rotation_ca("account-a new", Some(&new_root)),
        rotation_ca("account-b new", Some(&new_root)),
    );
    let (dir_a, dir_b) = (mesh.root().join("cacerts-a"), mesh.root().join("cacerts-b"));
    plug_in(&dir_a, &old_a, &old_root);
    plug_in(&dir_b, &old_b, &old_root);
    // What the proxies' bootstraps trust for the xDS connection (Istio's
    // `istio-ca-root-cert` ConfigMap); updated with each step as well.
    let root_file = mesh.root().join("shared-root.pem");
    std::fs::write(&root_file, old_root.cert.pem()).expect("write root");
    let both = [("cluster1", "vpc-a"), ("cluster3", "account-b")];
    let (tls_a, tls_b) = (
        SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
        SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
    );
    let ca =
        |dir: &str| format!("ca:\n  dir: {dir}\n  reloadInterval: 200ms\n  reissueWindow: 3s\n");
    mesh_file(&mesh.mesh_file, tls_a, &both, &ca("cacerts-a"));
    let mesh_b = mesh.root().join("mesh-b.yaml");
    mesh_file(&mesh_b, tls_b, &both, &ca("cacerts-b"));
    let issuer1 = TokenIssuer::new(
        "https://cluster1.example",
        &mesh.root().join("cluster1-jwks.json"),
    );
    let issuer3 = TokenIssuer::new(
        "https://cluster3.example",
        &mesh.root().join("cluster3-jwks.json"),
    );

    let (client_ip, web_ip, ew_ip) = (subnet.ip(1), subnet.ip(31), subnet.ip(200));
    let (svc_port, sidecar_port, app_port, ew_port) =
        (free_port(), free_port(), free_port(), free_port());
    write_destination(&mesh, web_ip, svc_port, sidecar_port, app_port);
    write_east_west(&mesh, ew_ip, ew_port);
    // A new upstream connection, hence a new mTLS handshake, for every request.
    mesh.write_istio(
        "dr-web.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: {NS}}}
spec:
  host: {HOST}
  trafficPolicy:
    connectionPool:
      http: {{maxRequestsPerConnection: 1}}
"
        ),
    );
    let _app = Backend::start(web_ip, app_port, "web-0").await;
    let cp_a = ControlPlane::start(&mesh.mesh_file).await;
    let cp_b = ControlPlane::start(&mesh_b).await;
    let _ew = east_west_gateway(mesh.root(), &issuer3, tls_b, &root_file, ew_ip).await;
    let web = sidecar(
        mesh.root(),
        &issuer3,
        tls_b,
        &root_file,
        web_ip,
        "web-0",
        "web",
        WEB_SA,
        "cluster3",
        "account-b",
    )
    .await;
    let client = sidecar(
        mesh.root(),
        &issuer1,
        tls_a,
        &root_file,
        client_ip,
        "client-0",
        "client",
        CLIENT_SA,
        "cluster1",
        "vpc-a",
    )
    .await;
    let client_node = format!("sidecar~{client_ip}~client-0.{NS}~{NS}.svc.cluster.local");
    let web_node = format!("sidecar~{web_ip}~web-0.{NS}~{NS}.svc.cluster.local");
    let out = SocketAddr::from((client_ip, svc_port));
    wait_for("web-0 answers before the rotation", CONVERGE, || async {
        let r = http::get(out, HOST, "/").await?;
        if r.status == 200 && r.body == "web-0" {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    })
    .await;
    uses_cert_from(&client, &cp_a, &client_node, "account-a old")
        .await
        .expect("client's first certificate");
    uses_cert_from(&web, &cp_b, &web_node, "account-b old")
        .await
        .expect("web's first certificate");
    let web_cluster = format!("cluster.outbound|{svc_port}||{HOST}");
    let handshakes_before = counter(&client, &format!("{web_cluster}.ssl.handshake")).await;

    // The load: one request at a time, each answer recorded.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let load = {
        let (stop, ok) = (stop.clone(), ok.clone());
        tokio::spawn(async move {
            let mut failed = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match http::get(out, HOST, "/").await {
                    Ok(r) if r.status == 200 && r.body == "web-0" => {
                        ok.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(r) => failed.push(format!("{} {}", r.status, r.body)),
                    Err(e) => failed.push(e),
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            failed
        })
    };
    // Some requests of the loop answered after each step.
    let more_answers = |what: &'static str| {
        let ok = ok.clone();
        async move {
            let from = ok.load(std::sync::atomic::Ordering::SeqCst);
            wait_for(what, CONVERGE, || async {
                let n = ok.load(std::sync::atomic::Ordering::SeqCst);
                if n >= from + 25 {
                    Ok(())
                } else {
                    Err(format!("{} answered", n - from))
                }
            })
            .await
        }
    };
    more_answers("requests before step 1").await;

    // Step 1: add the new root on both control planes.
    let bundle = format!("{}{}", old_root.cert.pem(), new_root.cert.pem());
    for dir in [&dir_a, &dir_b] {
        replace(dir, "root-cert.pem", &bundle);
    }
    replace(mesh.root(), "shared-root.pem", &bundle);
    for (name, envoy) in [("client", &client), ("web", &web)] {
        wait_for(
            &format!("{name}'s ROOTCA holds both roots"),
            CONVERGE,
            || async {
                let pem = envoy_rootca(envoy).await.unwrap_or_default();
                if pem.contains(&new_root.cert.pem()) && pem.contains(&old_root.cert.pem()) {
                    Ok(())
                } else {
                    Err(pem)
                }
            },
        )
        .await;
    }
    // Only the bundle changed: the certificates are the old signers' still.
    uses_cert_from(&client, &cp_a, &client_node, "account-a old")
        .await
        .expect("step 1 re-issued nothing");
    more_answers("requests after step 1").await;

    // Step 2: sign with intermediates under the new root (file by file).
    for (dir, ca) in [(&dir_a, &new_a), (&dir_b, &new_b)] {
        replace(dir, "ca-cert.pem", &ca.cert.pem());
        replace(dir, "ca-key.pem", &ca.key.serialize_pem());
        replace(
            dir,
            "cert-chain.pem",
            &format!("{}{}", ca.cert.pem(), new_root.cert.pem()),
        );
    }
    let client_new = wait_for(
        "the client sidecar uses a certificate of account-a's new intermediate",
        CONVERGE,
        || uses_cert_from(&client, &cp_a, &client_node, "account-a new"),
    )
    .await;
    let web_new = wait_for(
        "the destination sidecar uses a certificate of account-b's new intermediate",
        CONVERGE,
        || uses_cert_from(&web, &cp_b, &web_node, "account-b new"),
    )
    .await;
    more_answers("requests after step 2").await;
    // The TLS xDS ports present certificates of the new signers to new handshakes.
    for (tls, cn) in [(tls_a, "account-a new"), (tls_b, "account-b new")] {
        wait_for(
            &format!("the xDS TLS port {tls} presents a certificate of {cn}"),
            CONVERGE,
            || async move {
                let issuer = xds_server_issuer(tls).await?;
                if issuer.contains(&format!("CN = {cn}")) || issuer.contains(&format!("CN={cn}")) {
                    Ok(())
                } else {
                    Err(issuer)
                }
            },
        )
        .await;
    }

    // Step 3: drop the old root.
    for dir in [&dir_a, &dir_b] {
        replace(dir, "root-cert.pem", &new_root.cert.pem());
    }
    replace(mesh.root(), "shared-root.pem", &new_root.cert.pem());
    for (name, envoy) in [("client", &client), ("web", &web)] {
        wait_for(
            &format!("{name}'s ROOTCA holds the new root only"),
            CONVERGE,
            || async {
                let pem = envoy_rootca(envoy).await.unwrap_or_default();
                if pem.contains(&new_root.cert.pem()) && !pem.contains(&old_root.cert.pem()) {
                    Ok(())
                } else {
                    Err(pem)
                }
            },
        )
        .await;
    }
    more_answers("requests after step 3").await;
    // No further certificate was needed for step 3.
    assert_eq!(
        uses_cert_from(&client, &cp_a, &client_node, "account-a new").await,
        Ok(client_new)
    );
    assert_eq!(
        uses_cert_from(&web, &cp_b, &web_node, "account-b new").await,
        Ok(web_new)
    );

    // A broken set (the key of another certificate) is refused and shown; the
    // CA in force keeps serving.
    replace(&dir_a, "ca-key.pem", &old_a.key.serialize_pem());
    wait_for("the refused set on /debug/configz", CONVERGE, || async {
        let configz = cp_a.json("/debug/configz").await?.to_string();
        if configz.contains("ca-key.pem") && configz.contains("does not match") {
            Ok(())
        } else {
            Err(configz)
        }
    })
    .await;
    assert_eq!(cp_metric(&cp_a, "crossmesh_ca_reload_refused").await, 1.0);
    assert!(cp_metric(&cp_a, "crossmesh_ca_reloads{result=\"refused\"}").await >= 1.0);
    more_answers("requests while a broken set is on disk").await;

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = load.await.expect("load");
    let answered = ok.load(std::sync::atomic::Ordering::SeqCst);
    let handshakes = counter(&client, &format!("{web_cluster}.ssl.handshake")).await;
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rotation: {failed:?}",
        failed.len(),
        answered as usize + failed.len()
    );
    assert!(
        handshakes - handshakes_before >= answered,
        "{answered} requests on {} new mTLS connections",
        handshakes - handshakes_before
    );
    eprintln!(
        "root rotation: {answered} requests answered by web-0, 0 failed, {} client handshakes",
        handshakes - handshakes_before
    );
}
