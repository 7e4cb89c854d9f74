//! Gateway TLS (issue 12 item 3) with a real gateway Envoy authenticated on the
//! TLS xDS port, its certificates from Kubernetes TLS Secrets in its own
//! namespace (`credentialName`, SDS `kubernetes://NAME`), read from the member
//! cluster's manifest directory. Every key is made when the test runs.
//!
//! One HTTPS port carries four servers told apart by SNI:
//! - `a.example.com` SIMPLE with Secret `a-cert` (`kubernetes.io/tls`);
//! - `b.example.com` MUTUAL with Secret `b-cert` (generic `cert`/`key`/`cacert`);
//! - `c.example.com` naming a Secret that does not exist;
//! - `d.example.com` naming a Secret whose key does not match its certificate.
//!
//! One HTTP port redirects `a.example.com` to HTTPS (`httpsRedirect`), and one
//! TLS-protocol port terminates with `a-cert` before a TCP route.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use support::backend::Backend;
use support::control_plane::{bootstrap, ControlPlane};
use support::envoy::Envoy;
use support::manifests::{self, Mesh};
use support::net::{free_port, Subnet};
use support::tls::{self, Ca, Leaf};
use support::{wait_for, CONVERGE};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const GW_NS: &str = "istio-system";

struct Fixture {
    subnet: Subnet,
    mesh: Mesh,
    cp: ControlPlane,
    gw: Envoy,
    https_port: u16,
    http_port: u16,
    /// A TLS-protocol server terminating with a-cert, then TCP to web.
    tls_port: u16,
    server_ca: Ca,
    client_ca: Ca,
    _web: Backend,
}

fn secrets_yaml(a: &Leaf, b: &Leaf, client_ca: &str, bad: &Leaf, other: &Leaf) -> String {
    [
        tls::tls_secret(GW_NS, "a-cert", a, None),
        tls::secret(
            GW_NS,
            "b-cert",
            "Opaque",
            &[
                ("cert", &b.cert_pem),
                ("key", &b.key_pem),
                ("cacert", client_ca),
            ],
        ),
        // d-cert: another certificate's key.
        tls::secret(
            GW_NS,
            "d-cert",
            "kubernetes.io/tls",
            &[("tls.crt", &bad.cert_pem), ("tls.key", &other.key_pem)],
        ),
    ]
    .join("---\n")
}

impl Fixture {
    async fn start() -> Fixture {
        let subnet = Subnet::claim();
        let (mesh, issuer, tls_addr) = Mesh::secure_single_cluster(ISSUER);
        let web_ip = subnet.ip(11);
        let web_port = free_port();
        let web = Backend::start(web_ip, web_port, "web-0").await;
        mesh.write_cluster(
            "cluster1",
            "apps.yaml",
            &[
                manifests::service("edge", "web", 8080, web_port, &[("app", "web")]),
                manifests::pod(
                    "edge",
                    "web-0",
                    &[("app", "web")],
                    web_ip,
                    web_port,
                    true,
                    None,
                ),
            ]
            .join("\n---\n"),
        );
        let server_ca = Ca::new("server CA");
        let client_ca = Ca::new("client CA");
        let a = server_ca.leaf("a-v1", &["a.example.com"]);
        let b = server_ca.leaf("b-v1", &["b.example.com"]);
        let d = server_ca.leaf("d-v1", &["d.example.com"]);
        let other = server_ca.leaf("other", &["other.example.com"]);
        mesh.write_cluster(
            "cluster1",
            "secrets.yaml",
            &secrets_yaml(&a, &b, &client_ca.pem, &d, &other),
        );
        let (https_port, http_port, tls_port) = (free_port(), free_port(), free_port());
        mesh.write_istio(
            "gateway.yaml",
            &format!(
                "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: {GW_NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {http_port}, name: http, protocol: HTTP}}
    hosts: [\"edge/a.example.com\"]
    tls: {{httpsRedirect: true}}
  - port: {{number: {https_port}, name: https-a, protocol: HTTPS}}
    hosts: [\"edge/a.example.com\"]
    tls: {{mode: SIMPLE, credentialName: a-cert, minProtocolVersion: TLSV1_2}}
  - port: {{number: {https_port}, name: https-b, protocol: HTTPS}}
    hosts: [\"edge/b.example.com\"]
    tls: {{mode: MUTUAL, credentialName: b-cert}}
  - port: {{number: {https_port}, name: https-c, protocol: HTTPS}}
    hosts: [\"edge/c.example.com\"]
    tls: {{mode: SIMPLE, credentialName: c-cert}}
  - port: {{number: {https_port}, name: https-d, protocol: HTTPS}}
    hosts: [\"edge/d.example.com\"]
    tls: {{mode: SIMPLE, credentialName: d-cert}}
  - port: {{number: {tls_port}, name: tls-a, protocol: TLS}}
    hosts: [\"edge/a.example.com\"]
    tls: {{mode: SIMPLE, credentialName: a-cert}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: edge}}
spec:
  hosts: [a.example.com, b.example.com, c.example.com, d.example.com]
  gateways: [{GW_NS}/edge]
  http:
  - route:
    - destination: {{host: web.edge.svc.cluster.local, port: {{number: 8080}}}}
  tcp:
  - match:
    - port: {tls_port}
    route:
    - destination: {{host: web.edge.svc.cluster.local, port: {{number: 8080}}}}
"
            ),
        );
        let cp = ControlPlane::start(&mesh.mesh_file).await;
        let gw_ip = subnet.ip(2);
        let token_file = mesh.root().join("gw.token");
        std::fs::write(&token_file, issuer.token_for(GW_NS, "ingressgateway")).expect("token");
        let root_cert = mesh.root().join("crossmesh-ca").join("root-cert.pem");
        let args: Vec<String> = [
            "bootstrap",
            "--role",
            "gateway",
            "--name",
            "ingressgateway-0",
            "--namespace",
            GW_NS,
            "--service-account",
            "ingressgateway",
            "--labels",
            "istio=ingressgateway",
            "--cluster-id",
            "cluster1",
            "--ip",
            &gw_ip.to_string(),
            "--xds-address",
            &tls_addr.to_string(),
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
        let gw = Envoy::start("ingressgateway-0", &bootstrap(&args)).await;
        gw.wait_ready(CONVERGE).await;
        Fixture {
            subnet,
            mesh,
            cp,
            gw,
            https_port,
            http_port,
            tls_port,
            server_ca,
            client_ca,
            _web: web,
        }
    }

    fn https(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.https_port))
    }

    fn http(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.http_port))
    }

    fn client(&self, cert: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
        tls::client_config(&self.server_ca.pem, cert)
    }

    /// GET `/` for `sni` until answered 200; the body and the served subject.
    async fn answered(&self, sni: &str, cert: Option<&Leaf>) -> (String, String) {
        let cfg = self.client(cert);
        wait_for(&format!("{sni} answered over HTTPS"), CONVERGE, || {
            let cfg = cfg.clone();
            async move {
                let (r, subject) = tls::https_get(self.https(), sni, "/", cfg).await?;
                if r.status == 200 {
                    Ok((r.body, subject))
                } else {
                    Err(format!("{} {}", r.status, r.body))
                }
            }
        })
        .await
    }
}

async fn listener_modified(e: &Envoy) -> u64 {
    e.stat("listener_manager.listener_modified")
        .await
        .unwrap_or(0)
}

fn cn(subject: &str) -> &str {
    subject
        .split(", ")
        .find_map(|p| p.strip_prefix("CN="))
        .unwrap_or(subject)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_mutual_sni_redirect_and_bad_secrets_leave_only_their_server_out() {
    let f = Fixture::start().await;
    let _ = &f.subnet;

    // SIMPLE: a.example.com is served with a-cert, answered by web-0.
    let (body, subject) = f.answered("a.example.com", None).await;
    assert_eq!(body, "web-0");
    assert_eq!(cn(&subject), "a-v1", "{subject}");

    // A TLS server terminates with a-cert too, then proxies TCP to web-0 (the
    // HTTP inside is web-0's own answer).
    let cfg = f.client(None);
    let (r, subject) = wait_for("the TLS server answers", CONVERGE, || {
        let cfg = cfg.clone();
        async move {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, f.tls_port));
            tls::https_get(addr, "a.example.com", "/", cfg).await
        }
    })
    .await;
    assert_eq!(
        (r.status, r.body.as_str(), cn(&subject)),
        (200, "web-0", "a-v1")
    );
    assert!(
        r.header("server").is_none(),
        "went through an HTTP connection manager: {r:?}"
    );

    // MUTUAL: b.example.com with a client certificate from the client CA is
    // answered, with b-cert: SNI picked the certificate.
    let client = f.client_ca.leaf("client", &["client.example.com"]);
    let (body, subject) = f.answered("b.example.com", Some(&client)).await;
    assert_eq!(body, "web-0");
    assert_eq!(cn(&subject), "b-v1", "{subject}");
    // Without a client certificate the gateway refuses it.
    let no_cert = tls::https_get(f.https(), "b.example.com", "/", f.client(None)).await;
    assert!(
        no_cert.is_err(),
        "answered without a client certificate: {no_cert:?}"
    );
    // A certificate from another CA is refused too.
    let stranger = f.server_ca.leaf("stranger", &["client.example.com"]);
    let wrong_ca = tls::https_get(f.https(), "b.example.com", "/", f.client(Some(&stranger))).await;
    assert!(
        wrong_ca.is_err(),
        "answered a client of another CA: {wrong_ca:?}"
    );
    // The missing (c-cert) and malformed (d-cert) Secrets leave their servers
    // out: no filter chain for those names, the handshake fails.
    for sni in ["c.example.com", "d.example.com"] {
        let r = tls::https_get(f.https(), sni, "/", f.client(None)).await;
        assert!(r.is_err(), "{sni} answered: {r:?}");
    }
    // ... while a.example.com keeps being served.
    let (body, _) = f.answered("a.example.com", None).await;
    assert_eq!(body, "web-0");
    // Both reasons are on /debug/configz, naming the Secret.
    let configz = f.cp.json("/debug/configz").await.expect("configz");
    let rejected = configz["rejected"].as_array().cloned().unwrap_or_default();
    assert!(
        rejected.iter().any(|r| r["kind"] == "Secret"
            && r["name"] == "d-cert"
            && r["namespace"] == GW_NS
            && r["reason"]
                .as_str()
                .unwrap_or("")
                .contains("does not match")),
        "{rejected:?}"
    );
    let warnings = configz["warnings"].as_array().cloned().unwrap_or_default();
    for secret in ["c-cert", "d-cert"] {
        assert!(
            warnings.iter().any(|w| w["kind"] == "Gateway"
                && w["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains(&format!("Secret {GW_NS}/{secret}"))),
            "{secret}: {warnings:?}"
        );
    }
    // The control plane's log says, for this gateway, which chain was left out
    // and why.
    let log = f.cp.log();
    assert!(
        log.lines().any(|l| l.contains("left out")
            && l.contains(&format!("https.{}.https-c.edge", f.https_port))
            && l.contains("Secret istio-system/c-cert not found in cluster cluster1")),
        "no omission logged for c.example.com"
    );
    assert!(!log.contains("PRIVATE KEY"), "a private key in the log");
    // No private key in the config dump crossmesh serves for the gateway.
    let dump = f
        .cp
        .get(&format!(
            "/debug/config_dump?proxyID=router~{}~ingressgateway-0.{GW_NS}~{GW_NS}.svc.cluster.local",
            f.subnet.ip(2)
        ))
        .await
        .expect("config_dump")
        .1;
    assert!(dump.contains("kubernetes://a-cert"), "{dump}");
    assert!(
        !dump.contains("PRIVATE KEY"),
        "a private key in config_dump"
    );

    // httpsRedirect: plain HTTP gets 301 to https on the same host and path.
    let r = wait_for("HTTP redirected", CONVERGE, || async {
        let r = tls::http_get(f.http(), "a.example.com", "/x?y=1").await?;
        if r.status == 301 {
            Ok(r)
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    })
    .await;
    assert_eq!(r.header("location"), Some("https://a.example.com/x?y=1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_secret_is_served_in_place_with_no_failed_request() {
    let f = Fixture::start().await;
    let (_, subject) = f.answered("a.example.com", None).await;
    assert_eq!(cn(&subject), "a-v1");
    // A connection opened before the rotation stays usable after it.
    let mut held = tls::connect(f.https(), "a.example.com", f.client(None))
        .await
        .expect("held connection");
    let r = tls::request(&mut held.stream, "a.example.com", "/")
        .await
        .expect("first request on the held connection");
    assert_eq!((r.status, r.body.as_str()), (200, "web-0"));
    let listeners_modified = listener_modified(&f.gw).await;

    // A request loop on new connections, each checking the served certificate.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let rotated_seen = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let looper = {
        let (stop, ok, failed, seen, errors) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            rotated_seen.clone(),
            errors.clone(),
        );
        let (addr, cfg) = (f.https(), f.client(None));
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match tls::https_get(addr, "a.example.com", "/", cfg.clone()).await {
                    Ok((r, subject)) if r.status == 200 && r.body == "web-0" => {
                        ok.fetch_add(1, Ordering::SeqCst);
                        if cn(&subject) == "a-v2" {
                            seen.store(true, Ordering::SeqCst);
                        }
                    }
                    Ok((r, _)) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("{} {}", r.status, r.body));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        errors.lock().unwrap().push(e);
                    }
                }
            }
        })
    };
    wait_for("the loop is running", CONVERGE, || async {
        if ok.load(Ordering::SeqCst) >= 20 {
            Ok(())
        } else {
            Err("fewer than 20 requests".to_string())
        }
    })
    .await;

    // Rotate: a-cert gets a new certificate and key.
    let a2 = f.server_ca.leaf("a-v2", &["a.example.com"]);
    let b = f.server_ca.leaf("b-v1", &["b.example.com"]);
    let d = f.server_ca.leaf("d-v1", &["d.example.com"]);
    let other = f.server_ca.leaf("other", &["other.example.com"]);
    f.mesh.write_cluster(
        "cluster1",
        "secrets.yaml",
        &secrets_yaml(&a2, &b, &f.client_ca.pem, &d, &other),
    );
    let written = std::time::Instant::now();
    wait_for("the rotated certificate is served", CONVERGE, || async {
        if rotated_seen.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(format!(
                "{} requests, still a-v1",
                ok.load(Ordering::SeqCst)
            ))
        }
    })
    .await;
    // A figure, not an assertion (TESTING.md): Secret file written -> served.
    eprintln!(
        "rotated certificate served {:?} after the Secret was written",
        written.elapsed()
    );
    // Keep the loop going a little past the switch.
    let after = ok.load(Ordering::SeqCst);
    wait_for("requests after the rotation", CONVERGE, || async {
        if ok.load(Ordering::SeqCst) >= after + 50 {
            Ok(())
        } else {
            Err("fewer than 50 requests after the rotation".to_string())
        }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    looper.await.expect("loop");
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!("{ok} requests during the rotation, {failed} failed");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the rotation: {:?}",
        ok + failed,
        errors.lock().unwrap()
    );
    // Pushed in place: an SDS update, no listener change, the held connection
    // still answers.
    assert_eq!(
        listener_modified(&f.gw).await,
        listeners_modified,
        "a listener was modified"
    );
    let r = tls::request(&mut held.stream, "a.example.com", "/")
        .await
        .expect("the held connection survives the rotation");
    assert_eq!((r.status, r.body.as_str()), (200, "web-0"));
    let (_, subject) = f.answered("a.example.com", None).await;
    assert_eq!(cn(&subject), "a-v2");
}
