//! Issue 13 item 5, end to end with the real binary: `crossmesh agent` serves the
//! sidecar-injection webhook in its member cluster (a fake API server the hub
//! has no address for) with a serving certificate from the mesh CA, keeps the
//! webhook configuration's caBundle and the root ConfigMaps equal to the trust
//! bundle the hub sends, and keeps serving from its state directory with the
//! hub gone.
//!
//! - the hub refuses webhook requests naming a non-Service DNS name or an IP SAN
//!   (counted on `/debug/clusterz`) before spending the token, which then enrols
//!   the real agent;
//! - an AdmissionReview over HTTPS, verified with the mesh root and the Service's
//!   DNS name, is answered with a patch that adds `istio-proxy`; another name
//!   does not verify;
//! - `webhooks[0].clientConfig.caBundle` and `shop/crossmesh-ca-root-cert`
//!   become the mesh root, and follow Istio's three root-rotation steps on the
//!   hub's plug-in CA (ca.dir, reloaded): both roots, then a new signer (the
//!   agent renews: the webhook presents a certificate of the new intermediate),
//!   then the new root only (the webhook still verifies with it);
//! - a wrong method, content type, path, an oversized or non-JSON body each get
//!   their 4xx and the webhook keeps answering;
//! - the hub stopped and the agent restarted: the webhook answers from the state
//!   directory.

mod support;

#[path = "support/kube_api.rs"]
mod kube_api;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use crossmesh::agent::proto::agent_service_client::AgentServiceClient;
use crossmesh::agent::proto::{EnrollRequest, PROTOCOL_VERSION};
use kube_api::{objects, FakeApiServer};
use serde_json::{json, Value};
use support::control_plane::AgentProc;
use support::control_plane::{crossmesh_bin, ControlPlane, StartOptions};
use support::net::{free_port, Subnet};
use support::{wait_for, CONVERGE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Endpoint;

const SERVICE: &str = "crossmesh-agent";
const AGENT_NS: &str = "crossmesh-system";
const DNS_NAME: &str = "crossmesh-agent.crossmesh-system.svc";
const WEBHOOK_CONFIG: &str = "crossmesh-sidecar-injector";
const APP_NS: &str = "shop";

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
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(30 * 86_400)).into();
    let cert = match parent {
        None => params.self_signed(&key),
        Some(p) => params.signed_by(&key, &rcgen::Issuer::from_params(&p.params, &p.key)),
    }
    .expect("CA certificate");
    TestCa { key, cert, params }
}

/// Replace `dir/file` with `text` atomically, as a Secret volume does.
fn replace(dir: &Path, file: &str, text: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join(file)).expect("rename");
}

/// Istio's `cacerts` layout: `ca` signs, `roots` are trusted.
fn plug_in(dir: &Path, ca: &TestCa, root: &TestCa, roots_pem: &str) {
    std::fs::create_dir_all(dir).expect("mkdir");
    replace(dir, "ca-cert.pem", &ca.cert.pem());
    replace(dir, "ca-key.pem", &ca.key.serialize_pem());
    replace(
        dir,
        "cert-chain.pem",
        &format!("{}{}", ca.cert.pem(), root.cert.pem()),
    );
    replace(dir, "root-cert.pem", roots_pem);
}

struct Setup {
    dir: tempfile::TempDir,
    agent_addr: SocketAddr,
    webhook: SocketAddr,
    root_file: PathBuf,
}

impl Setup {
    fn start_agent(&self, n: u32, with_token: bool) -> AgentProc {
        let log = self.dir.path().join(format!("agent-{n}.log"));
        let file = std::fs::File::create(&log).expect("agent log");
        let mut cmd = Command::new(crossmesh_bin());
        cmd.arg("agent")
            .args([
                "--hub",
                &self.agent_addr.to_string(),
                "--cluster",
                "cluster3",
            ])
            .arg("--root-cert")
            .arg(&self.root_file)
            .arg("--kubeconfig")
            .arg(self.dir.path().join("cluster3.kubeconfig"))
            .arg("--state-dir")
            .arg(self.dir.path().join("agent-state"))
            .args(["--webhook-service", SERVICE, "--namespace", AGENT_NS])
            .args(["--webhook-address", &self.webhook.to_string()])
            .args([
                "--proxy-xds-address",
                "crossmesh.crossmesh-system.svc:15012",
            ])
            .args(["--network", "account-b"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file);
        if with_token {
            cmd.arg("--token-file")
                .arg(self.dir.path().join("cluster3.token"));
        }
        AgentProc {
            child: Some(cmd.spawn().expect("start crossmesh agent")),
            log,
        }
    }
}

/// A TLS client trusting only `roots` (PEM).
fn tls_client(roots: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut store = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(roots.as_bytes()) {
        store.add(c.expect("root PEM")).expect("root");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(store)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// `https(.., declared)`: send the body chunked.
const CHUNKED: usize = usize::MAX;

/// One HTTP/1.1 request over TLS to `addr`, verified for `server_name` against
/// `roots`: (status, body), or why it failed (handshake included).
#[allow(clippy::too_many_arguments)]
async fn https(
    addr: SocketAddr,
    server_name: &str,
    roots: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
    declared: Option<usize>,
) -> Result<(u16, Vec<u8>), String> {
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let mut tls = tokio_rustls::TlsConnector::from(tls_client(roots))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS to {addr} as {server_name}: {e}"))?;
    // `declared` may claim more than is sent (an oversized body announced), or
    // be [`CHUNKED`]: the body sent as one chunk, its length not announced.
    let framing = match declared {
        Some(CHUNKED) => "transfer-encoding: chunked".to_string(),
        d => format!("content-length: {}", d.unwrap_or(body.len())),
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {server_name}\r\ncontent-type: {content_type}\r\n\
         {framing}\r\nconnection: close\r\n\r\n"
    );
    let io = async {
        tls.write_all(head.as_bytes()).await?;
        if declared == Some(CHUNKED) {
            tls.write_all(format!("{:x}\r\n", body.len()).as_bytes())
                .await?;
            tls.write_all(body).await?;
            tls.write_all(b"\r\n0\r\n\r\n").await?;
        } else {
            tls.write_all(body).await?;
        }
        tls.flush().await?;
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(20), io)
        .await
        .map_err(|_| "no answer within 20 s".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out);
    let (head, _) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("no status: {head:?}"))?;
    let start = head.len() + 4;
    Ok((status, out[start..].to_vec()))
}

/// The issuer (CN) of the certificate `addr` presents for `server_name`,
/// verified against `roots`.
async fn served_issuer(addr: SocketAddr, roots: &str) -> Result<String, String> {
    let name =
        rustls::pki_types::ServerName::try_from(DNS_NAME.to_string()).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(tls_client(roots))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let der = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no certificate")?
        .to_vec();
    let (_, c) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
    Ok(c.issuer().to_string())
}

fn review(uid: &str, pod: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": APP_NS,
            "operation": "CREATE",
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod, "namespace": APP_NS, "labels": {"app": "orders"}},
                "spec": {
                    "serviceAccountName": "orders",
                    "containers": [{"name": "orders", "image": "registry.example/orders:1"}]
                }
            }
        }
    }))
    .expect("json")
}

/// POST a review for `pod` and return the names of the containers (init and
/// regular) its patch adds, after checking the response's uid and `allowed`.
async fn inject(addr: SocketAddr, roots: &str, pod: &str) -> Result<Vec<String>, String> {
    let uid = format!("uid-{pod}");
    let (status, body) = https(
        addr,
        DNS_NAME,
        roots,
        "POST",
        "/inject",
        "application/json",
        &review(&uid, pod),
        None,
    )
    .await?;
    if status != 200 {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let r = &v["response"];
    if r["uid"] != uid.as_str() || r["allowed"] != true || r["patchType"] != "JSONPatch" {
        return Err(format!("unexpected response {v}"));
    }
    let patch = base64::engine::general_purpose::STANDARD
        .decode(r["patch"].as_str().unwrap_or(""))
        .map_err(|e| e.to_string())?;
    let ops: Value = serde_json::from_slice(&patch).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    for op in ops.as_array().into_iter().flatten() {
        let path = op["path"].as_str().unwrap_or("");
        if op["op"] != "add"
            || !(path.starts_with("/spec/containers") || path.starts_with("/spec/initContainers"))
        {
            continue;
        }
        // One container, or the whole array when the pod had none.
        match &op["value"] {
            Value::Array(list) => names.extend(
                list.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string)),
            ),
            c => names.extend(c["name"].as_str().map(str::to_string)),
        }
    }
    Ok(names)
}

fn webhook_configuration() -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIG},
        "webhooks": [{
            "name": "sidecar-injector.crossmesh.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "clientConfig": {
                "service": {"name": SERVICE, "namespace": AGENT_NS, "path": "/inject", "port": 443}
            },
            "rules": [{
                "operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                "resources": ["pods"]
            }],
            "namespaceSelector": {"matchLabels": {"istio-injection": "enabled"}}
        }]
    })
}

/// The caBundle of the webhook configuration's first webhook (PEM).
fn ca_bundle(s: &FakeApiServer) -> Result<String, String> {
    let cfg = s
        .get(
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            "",
            WEBHOOK_CONFIG,
        )
        .ok_or("no webhook configuration")?;
    let b64 = cfg["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .ok_or_else(|| format!("no caBundle yet: {cfg}"))?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&pem).into_owned())
}

/// `ns/crossmesh-ca-root-cert`'s `root-cert.pem`.
fn root_configmap(s: &FakeApiServer, ns: &str) -> Result<String, String> {
    let cm = s
        .get("", "configmaps", ns, "crossmesh-ca-root-cert")
        .ok_or_else(|| format!("no ConfigMap in {ns}"))?;
    cm["data"]["root-cert.pem"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no root-cert.pem: {cm}"))
}

/// Wait until the caBundle, the root ConfigMap and the agent's kept bundle all
/// equal `want`.
async fn wait_bundle(s: &FakeApiServer, state_dir: &Path, want: &str, what: &str) {
    wait_for(what, CONVERGE, || async {
        let got = ca_bundle(s)?;
        if got != want {
            return Err(format!("caBundle is {got:?}"));
        }
        let cm = root_configmap(s, APP_NS)?;
        if cm != want {
            return Err(format!("{APP_NS}'s root ConfigMap is {cm:?}"));
        }
        let kept = std::fs::read_to_string(state_dir.join("trust-bundle.pem")).unwrap_or_default();
        if kept != want {
            return Err(format!("the agent keeps {kept:?}"));
        }
        Ok(())
    })
    .await
}

/// A webhook CSR naming `sans` (PEM).
fn webhook_csr(sans: Vec<rcgen::SanType>) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = sans;
    p.serialize_request(&key).expect("csr").pem().expect("pem")
}

fn agent_csr() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem")
}

/// Enroll on the agent port with `webhook_csr`: the refusal's message, if any.
async fn enrol_with(
    addr: SocketAddr,
    roots: &str,
    token: &str,
    webhook_csr: String,
) -> Result<(), tonic::Status> {
    let cfg = {
        let mut c = (*tls_client(roots)).clone();
        c.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(c)
    };
    let ip = addr.ip();
    let ch = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_| {
            let cfg = cfg.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let tls = tokio_rustls::TlsConnector::from(cfg)
                    .connect(rustls::pki_types::ServerName::IpAddress(ip.into()), tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    AgentServiceClient::new(ch)
        .enroll(EnrollRequest {
            protocol_version: PROTOCOL_VERSION,
            cluster: "cluster3".into(),
            token: token.into(),
            csr_pem: agent_csr(),
            webhook_csr_pem: webhook_csr,
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_serves_injection_with_mesh_certificate_and_follows_root_rotation() {
    let subnet = Subnet::claim();
    let dir = tempfile::Builder::new()
        .prefix("crossmesh-agent-webhook-")
        .tempdir()
        .expect("tempdir");
    let old_root = test_ca("old root", None);
    let new_root = test_ca("new root", None);
    let old_ca = test_ca("hub old intermediate", Some(&old_root));
    let new_ca = test_ca("hub new intermediate", Some(&new_root));
    let (old_pem, new_pem) = (old_root.cert.pem(), new_root.cert.pem());
    let cacerts = dir.path().join("cacerts");
    plug_in(&cacerts, &old_ca, &old_root, &old_pem);
    let root_file = dir.path().join("root-cert.pem");
    std::fs::write(&root_file, &old_pem).expect("write root");

    // cluster3's API server: an application namespace, a system one, and the
    // webhook configuration as deploy/ would create it (caBundle empty).
    let api = FakeApiServer::start("cluster3").await;
    api.apply(&objects::namespace(APP_NS));
    api.apply(&objects::namespace(AGENT_NS));
    api.apply(&webhook_configuration());
    api.write_kubeconfig(&dir.path().join("cluster3.kubeconfig"), None, None);

    let agent_addr = subnet.addr(2, free_port());
    let tls_addr = subnet.addr(2, free_port());
    let webhook = subnet.addr(5, free_port());
    // The hub: the plug-in CA reloaded every 200 ms (xdsTlsAddress is what
    // follows reloads), cluster3 behind an agent.
    let mesh_file = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh_file,
        format!(
            "trustDomain: cluster.local\n\
             agentAddress: {agent_addr}\n\
             xdsTlsAddress: {tls_addr}\n\
             ca:\n  dir: cacerts\n  reloadInterval: 200ms\n\
             clusters:\n\
             - name: cluster3\n  network: account-b\n  agent: {{}}\n\
             tunables:\n  readyTimeoutMs: 3000\n"
        ),
    )
    .expect("mesh file");
    let token = {
        let out = Command::new(crossmesh_bin())
            .args(["agent-token", "create", "--mesh"])
            .arg(&mesh_file)
            .args(["--cluster", "cluster3", "--ttl", "10m"])
            .output()
            .expect("agent-token create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    std::fs::write(dir.path().join("cluster3.token"), &token).expect("token file");
    let mut cp = ControlPlane::start_with(
        &mesh_file,
        StartOptions {
            no_wait_ready: true,
            ..StartOptions::default()
        },
    )
    .await;
    let setup = Setup {
        dir,
        agent_addr,
        webhook,
        root_file,
    };
    let state_dir = setup.dir.path().join("agent-state");

    // Webhook requests the hub must refuse, each before the token is spent.
    let dns = |n: &str| rcgen::SanType::DnsName(n.try_into().expect("dns"));
    let refused = [
        (vec![dns("hub.example.com")], "hub.example.com"),
        (
            vec![
                dns(DNS_NAME),
                rcgen::SanType::IpAddress([10, 0, 0, 1].into()),
            ],
            "10.0.0.1",
        ),
        (
            vec![
                dns(DNS_NAME),
                rcgen::SanType::URI(
                    "spiffe://cluster.local/ns/shop/sa/orders"
                        .try_into()
                        .expect("uri"),
                ),
            ],
            "spiffe://cluster.local/ns/shop/sa/orders",
        ),
    ];
    for (sans, name) in refused {
        let s = wait_for("the agent port answers Enroll", CONVERGE, || {
            let sans = sans.clone();
            let token = token.clone();
            let roots = old_pem.clone();
            async move {
                match enrol_with(agent_addr, &roots, &token, webhook_csr(sans)).await {
                    Err(s) if s.code() == tonic::Code::Unavailable => Err(s.message().to_string()),
                    other => Ok(other),
                }
            }
        })
        .await
        .expect_err("a webhook CSR outside <svc>.<ns>.svc is refused");
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
        assert!(
            s.message().contains(name),
            "{name} named in {:?}",
            s.message()
        );
    }
    let refusals = cp.json("/debug/clusterz").await.expect("clusterz");
    let c3 = refusals
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "cluster3")
        .cloned()
        .expect("cluster3 on clusterz");
    assert_eq!(c3["agent"]["refusals"]["bad_webhook_csr"], 3, "{c3}");

    // The agent enrols with that same token and serves the webhook.
    let mut agent = setup.start_agent(1, true);
    let added = wait_for(
        "the webhook injects over HTTPS verified by the mesh root",
        CONVERGE,
        || inject(webhook, &old_pem, "orders-1"),
    )
    .await;
    assert!(added.iter().any(|n| n == "istio-proxy"), "{added:?}");
    assert!(added.iter().any(|n| n == "istio-init"), "{added:?}");
    // The certificate names the Service, nothing else.
    let other = https(
        webhook,
        "other.crossmesh-system.svc",
        &old_pem,
        "POST",
        "/inject",
        "application/json",
        b"{}",
        None,
    )
    .await;
    assert!(
        other.as_ref().is_err_and(|e| e.contains("TLS")),
        "a name the certificate lacks must not verify: {other:?}"
    );
    assert_eq!(
        served_issuer(webhook, &old_pem).await.expect("issuer"),
        "CN=hub old intermediate"
    );
    let first_serial = wait_for("cluster3's agent connected", CONVERGE, || async {
        let j = cp.json("/debug/clusterz").await?;
        j.as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "cluster3" && c["agent"]["synced"] == true)
            .and_then(|c| {
                c["agent"]["certificate_serial"]
                    .as_str()
                    .map(str::to_string)
            })
            .ok_or_else(|| j.to_string())
    })
    .await;
    wait_bundle(
        &api,
        &state_dir,
        &old_pem,
        "caBundle, root ConfigMap and kept bundle are the mesh root",
    )
    .await;
    assert!(
        root_configmap(&api, "kube-system").is_err(),
        "no root ConfigMap in kube-system (Istio's ignored namespaces)"
    );

    // Bad requests: each its 4xx with a reason, and the webhook keeps serving.
    // Oversized: 5 MiB announced (only the start sent), and 4 MiB + 64 KiB
    // sent chunked (the limit found while reading).
    let big = vec![b' '; (4 << 20) + (64 << 10)];
    for (method, path, ctype, body, declared, want) in [
        ("GET", "/inject", "application/json", &b""[..], None, 405),
        ("POST", "/inject", "text/plain", &b"{}"[..], None, 415),
        ("POST", "/mutate", "application/json", &b"{}"[..], None, 404),
        (
            "POST",
            "/inject",
            "application/json",
            &b"\x00\xffgarbage{"[..],
            None,
            400,
        ),
        (
            "POST",
            "/inject",
            "application/json",
            &b"{\"apiVersion\""[..],
            Some(5 << 20),
            413,
        ),
        (
            "POST",
            "/inject",
            "application/json",
            &big[..],
            Some(CHUNKED),
            413,
        ),
    ] {
        let (status, text) = https(
            webhook, DNS_NAME, &old_pem, method, path, ctype, body, declared,
        )
        .await
        .unwrap_or_else(|e| panic!("{method} {path} {ctype}: {e}"));
        let text = String::from_utf8_lossy(&text);
        assert_eq!(
            status,
            want,
            "{method} {path} {ctype} ({} bytes): {text}",
            body.len()
        );
        assert!(!text.trim().is_empty(), "a reason for {want}");
    }
    let added = inject(webhook, &old_pem, "orders-2")
        .await
        .expect("still serving");
    assert!(added.iter().any(|n| n == "istio-proxy"), "{added:?}");

    // Root rotation, step 1: both roots.
    let both = format!("{old_pem}{new_pem}");
    let t = std::time::Instant::now();
    replace(&cacerts, "root-cert.pem", &both);
    wait_bundle(
        &api,
        &state_dir,
        &both,
        "the bundle holds both roots everywhere",
    )
    .await;
    eprintln!(
        "step 1: caBundle, root ConfigMap and kept bundle hold both roots after {:?}",
        t.elapsed()
    );

    // Step 2: the hub signs with an intermediate of the new root: the agent
    // renews, and the webhook presents a certificate of the new intermediate.
    let t = std::time::Instant::now();
    replace(&cacerts, "ca-cert.pem", &new_ca.cert.pem());
    replace(&cacerts, "ca-key.pem", &new_ca.key.serialize_pem());
    replace(
        &cacerts,
        "cert-chain.pem",
        &format!("{}{new_pem}", new_ca.cert.pem()),
    );
    wait_for(
        "the webhook certificate comes from the new intermediate",
        CONVERGE,
        || async {
            let issuer = served_issuer(webhook, &both).await?;
            if issuer == "CN=hub new intermediate" {
                Ok(())
            } else {
                Err(issuer)
            }
        },
    )
    .await;
    eprintln!(
        "step 2: the webhook serves a certificate of the new signer after {:?}",
        t.elapsed()
    );

    // Step 3: the new root only. The agent still reaches the hub (its client
    // certificate came from the new signer) and the webhook verifies with it.
    let t = std::time::Instant::now();
    replace(&cacerts, "root-cert.pem", &new_pem);
    wait_bundle(
        &api,
        &state_dir,
        &new_pem,
        "the bundle is the new root everywhere",
    )
    .await;
    eprintln!(
        "step 3: the new root alone everywhere after {:?}",
        t.elapsed()
    );
    let added = inject(webhook, &new_pem, "orders-3")
        .await
        .expect("verified by the new root alone");
    assert!(added.iter().any(|n| n == "istio-proxy"), "{added:?}");
    wait_for(
        "cluster3's agent streams with a certificate of the new signer",
        CONVERGE,
        || async {
            let j = cp.json("/debug/clusterz").await?;
            let a = j
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["name"] == "cluster3")
                .map(|c| c["agent"].clone())
                .unwrap_or_default();
            let serial = a["certificate_serial"].as_str().unwrap_or("").to_string();
            if a["connected"] == true && a["synced"] == true && serial != first_serial {
                Ok(())
            } else {
                Err(a.to_string())
            }
        },
    )
    .await;

    // The hub goes away; a restarted agent (no token) serves from its state.
    cp.kill();
    agent.kill();
    let agent2 = setup.start_agent(2, false);
    let t = std::time::Instant::now();
    let added = wait_for(
        "the restarted agent injects with the hub down",
        CONVERGE,
        || inject(webhook, &new_pem, "orders-4"),
    )
    .await;
    eprintln!(
        "restarted agent, hub down: injecting after {:?}",
        t.elapsed()
    );
    assert!(added.iter().any(|n| n == "istio-proxy"), "{added:?}");
    assert!(
        agent2
            .log()
            .contains("webhook serving certificate loaded from the agent's state"),
        "{}",
        agent2.log()
    );
}
