//! The debug endpoint's authentication (issue 12 item 5, mesh file `debugAuth`)
//! against the real `crossmesh serve`.
//!
//! Off loopback the endpoint always requires a token; tests bind loopback
//! only, so they turn the same code path on with `debugAuth.required: true`
//! (documented in docs/SECURITY.md as the way to require a token on any
//! address). The refusal of `required: false` off loopback happens before any
//! port is bound, so that test binds nothing.
//!
//! Also: nothing any debug path serves holds private key material, checked
//! after a real Envoy gateway authenticated on the TLS xDS port and got its
//! certificate. Tokens and keys are made at test time.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use ring::rand::SecureRandom;

use support::control_plane::{bootstrap, crossmesh_bin, ControlPlane};
use support::envoy::Envoy;
use support::manifests::{self, cluster, Mesh};
use support::net::free_port;
use support::token_issuer::TokenIssuer;
use support::{wait_for, CONVERGE};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Every path the debug endpoint serves (`config_dump` needs a proxy id).
const PATHS: [&str; 7] = [
    "/debug/syncz",
    "/debug/registryz",
    "/debug/configz",
    "/debug/clusterz",
    "/debug/certz",
    "/metrics",
    "/debug/config_dump?proxyID=x",
];

/// Whether `body` holds a PEM private key, as text or inside a base64 string
/// (proto-JSON prints `inline_bytes` in base64).
fn holds_private_key(body: &str) -> bool {
    fn walk(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => {
                s.contains("PRIVATE KEY")
                    || base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .is_ok_and(|b| String::from_utf8_lossy(&b).contains("PRIVATE KEY"))
            }
            serde_json::Value::Array(a) => a.iter().any(walk),
            serde_json::Value::Object(m) => m.values().any(walk),
            _ => false,
        }
    }
    body.contains("PRIVATE KEY")
        || serde_json::from_str::<serde_json::Value>(body).is_ok_and(|v| walk(&v))
}

fn random_token() -> String {
    let mut b = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("random");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn get(cp: &ControlPlane, path: &str, bearer: Option<&str>) -> (u16, String, Option<String>) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut req = client.get(format!("http://{}{path}", cp.debug));
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = req.send().await.expect("debug request");
    let status = r.status().as_u16();
    let www = r
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, r.text().await.unwrap_or_default(), www)
}

/// A mesh file with `extra` appended (one manifests cluster, `tokenIssuer`
/// JWKS written by `issuer`).
fn mesh_with(extra: &str) -> (Mesh, TokenIssuer) {
    let mesh = Mesh::new(&[cluster("cluster1", None)]);
    let issuer = TokenIssuer::new(ISSUER, &mesh.root().join("cluster1-jwks.json"));
    std::fs::write(
        &mesh.mesh_file,
        format!(
            "clusters:
- name: cluster1
  manifests: clusters/cluster1
  tokenIssuer:
    issuer: {ISSUER}
    jwks: cluster1-jwks.json
config:
- manifests: istio
{extra}"
        ),
    )
    .expect("mesh file");
    (mesh, issuer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_auth_accepts_the_token_file_and_listed_service_accounts_only() {
    let token = random_token();
    let (mesh, issuer) = mesh_with(
        "debugAuth:
  required: true
  tokenFile: debug-token
  serviceAccounts: [cluster1/istio-system/ops]
",
    );
    let token_file = mesh.root().join("debug-token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    let cp = ControlPlane::start(&mesh.mesh_file).await;

    // The probes stay open (kubelet sends no token) and say one word.
    for p in ["/ready", "/healthz"] {
        let (s, body, _) = get(&cp, p, None).await;
        assert_eq!(s, 200, "{p} without a token: {body}");
    }
    for p in PATHS {
        let (s, body, www) = get(&cp, p, None).await;
        assert_eq!(s, 401, "{p} without a token: {body}");
        assert_eq!(www.as_deref(), Some("Bearer"), "{p}: WWW-Authenticate");
        let (s, body, _) = get(&cp, p, Some("not-the-token")).await;
        assert_eq!(s, 401, "{p} with a wrong token: {body}");
        let (s, body, _) = get(&cp, p, Some(&token)).await;
        assert_ne!(s, 401, "{p} with the token file's token: {body}");
    }
    let (s, body, _) = get(&cp, "/debug/configz", Some(&token)).await;
    assert_eq!(s, 200, "{body}");

    // A service-account token of the listed account passes; another account's
    // (same cluster, valid signature) does not, and says which account.
    let ops = issuer.token_for("istio-system", "ops");
    assert_eq!(get(&cp, "/debug/syncz", Some(&ops)).await.0, 200);
    let other = issuer.token_for("istio-system", "istio-ingressgateway");
    let (s, body, _) = get(&cp, "/debug/syncz", Some(&other)).await;
    assert_eq!(s, 401, "{body}");
    assert!(body.contains("istio-system/istio-ingressgateway"), "{body}");

    // The token file is re-read: a rotated token works at once, the old one not.
    let rotated = random_token();
    std::fs::write(&token_file, &rotated).expect("rotate token");
    assert_eq!(get(&cp, "/debug/configz", Some(&rotated)).await.0, 200);
    assert_eq!(get(&cp, "/debug/configz", Some(&token)).await.0, 401);

    // No token is ever logged.
    let log = cp.log();
    for t in [&token, &rotated, &ops, &other] {
        assert!(!log.contains(t.as_str()), "a token is in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_is_open_and_required_without_credentials_refuses_everything() {
    let (open, _i) = mesh_with("");
    let cp = ControlPlane::start(&open.mesh_file).await;
    assert_eq!(
        get(&cp, "/debug/configz", None).await.0,
        200,
        "loopback default"
    );
    drop(cp);

    let (closed, _i) = mesh_with("debugAuth: {required: true}\n");
    let cp = ControlPlane::start(&closed.mesh_file).await;
    assert_eq!(get(&cp, "/ready", None).await.0, 200);
    let (s, body, _) = get(&cp, "/debug/configz", Some("anything")).await;
    assert_eq!(s, 401, "{body}");
    assert!(
        cp.log().contains("debugAuth names none"),
        "the start warns that nothing can pass"
    );
}

#[test]
fn required_false_off_loopback_is_refused_before_binding() {
    let (mesh, _i) = mesh_with("debugAddress: 0.0.0.0:0\ndebugAuth: {required: false}\n");
    let out = std::process::Command::new(crossmesh_bin())
        .args(["serve", "--mesh"])
        .arg(&mesh.mesh_file)
        .args(["--xds-address", "127.0.0.1:0"])
        .output()
        .expect("run crossmesh serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("debugAuth.required: false") && err.contains("0.0.0.0"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_debug_path_serves_private_key_material() {
    let tls = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let (mesh, issuer) = mesh_with(&format!("xdsTlsAddress: {tls}\nca: {{}}\n"));
    // A service whose DestinationRule asks for ISTIO_MUTUAL: the gateway's
    // cluster names SDS `default`, so the gateway is sent its key.
    mesh.write_cluster(
        "cluster1",
        "secure.yaml",
        &format!(
            "{}\n---\n{}",
            manifests::service("shop", "secure", 80, 8443, &[("app", "secure")]),
            manifests::pod(
                "shop",
                "secure-0",
                &[("app", "secure")],
                Ipv4Addr::new(127, 0, 0, 1),
                8443,
                true,
                None
            )
        ),
    );
    mesh.write_istio(
        "dr.yaml",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: secure, namespace: shop}
spec:
  host: secure.shop.svc.cluster.local
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
",
    );
    let gw_port = free_port();
    mesh.write_istio(
        "gateway.yaml",
        &manifests::gateway(
            "istio-system",
            "ingress",
            &[("istio", "ingressgateway")],
            gw_port,
            &["secure.example.com"],
        ),
    );
    mesh.write_istio(
        "vs.yaml",
        &manifests::virtual_service(
            "shop",
            "secure",
            &["istio-system/ingress"],
            &["secure.example.com"],
            "secure.shop.svc.cluster.local",
            80,
        ),
    );
    let cp = ControlPlane::start(&mesh.mesh_file).await;
    let token_file = mesh.root().join("gw.token");
    std::fs::write(
        &token_file,
        issuer.token(
            "istio-system",
            "istio-ingressgateway",
            Some("istio-ingressgateway-0"),
            "istio-ca",
            3600,
        ),
    )
    .expect("token");
    let root = mesh.root().join("crossmesh-ca").join("root-cert.pem");
    let yaml = bootstrap(
        &[
            "bootstrap",
            "--role",
            "gateway",
            "--name",
            "istio-ingressgateway-0",
            "--namespace",
            "istio-system",
            "--service-account",
            "istio-ingressgateway",
            "--ip",
            "127.0.0.1",
            "--labels",
            "istio=ingressgateway",
            "--xds-address",
            &tls.to_string(),
            "--admin-port",
            "0",
            "--cluster-id",
            "cluster1",
            "--root-cert",
            &root.display().to_string(),
            "--token-file",
            &token_file.display().to_string(),
        ]
        .map(String::from),
    );
    let envoy = Envoy::start("gateway-debug-keys", &yaml).await;
    // The gateway holds its certificate: crossmesh lists it on /debug/certz.
    let id = wait_for(
        "the gateway's certificate on /debug/certz",
        CONVERGE,
        || async {
            let j = cp.json("/debug/certz").await?;
            j.as_array()
                .and_then(|a| a.first())
                .and_then(|c| c.get("proxy_id"))
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .filter(|_| {
                    j.to_string()
                        .contains("spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway")
                })
                .ok_or_else(|| j.to_string())
        },
    )
    .await;
    // Envoy really got its key from us (else the scan proves nothing).
    wait_for("Envoy holds SDS secret default", CONVERGE, || async {
        let dump = envoy.admin_get("/config_dump?include_eds").await?.1;
        if dump.contains("\"name\": \"default\"") && dump.contains("dynamic_active_secrets") {
            Ok(())
        } else {
            Err("no secret default yet".to_string())
        }
    })
    .await;

    let dump_path = format!("/debug/config_dump?proxyID={id}");
    let mut paths: Vec<&str> = PATHS.to_vec();
    paths.push(&dump_path);
    paths.extend(["/ready", "/healthz"]);
    for p in paths {
        let (s, body, _) = get(&cp, p, None).await;
        assert!(s == 200 || p.ends_with("=x"), "{p}: {s} {body}");
        assert!(!holds_private_key(&body), "{p} serves private key material");
    }
    let (_, dump_body, _) = get(&cp, &dump_path, None).await;
    assert!(
        // "[redacted]" in base64, as proto-JSON prints `inline_bytes`.
        dump_body.contains("SecretsConfigDump") && dump_body.contains("\"W3JlZGFjdGVkXQ==\""),
        "the config dump lists the proxy's secret `default`, its key redacted: {dump_body}"
    );
}
