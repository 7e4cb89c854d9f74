//! Proxyless gRPC servers (gRFC A36) with mTLS from gRPC's certificate
//! provider (gRFC A29), end to end with the real client library: a Python
//! grpcio xDS server (`tests/grpc/grpc_server_echo.py`) whose bootstrap is
//! `crossmesh bootstrap --role grpc`, its certificate files kept by
//! `crossmesh workload-certs` (the TLS xDS port, a service-account token made
//! at test time), and callers from `tests/grpc/grpc_server_call.py`.
//!
//! - With no PeerAuthentication the server gets its listener
//!   (`xds.istio.io/grpc/lds/inbound/IP:PORT`) and serves plaintext.
//! - With PeerAuthentication STRICT a caller without a certificate is refused,
//!   and a proxyless client (`xds:///` target, DestinationRule ISTIO_MUTUAL,
//!   its own certificate files) is served; the server sees the client's SPIFFE
//!   ID in its certificate.
//! - An AuthorizationPolicy ALLOW for another identity refuses that client
//!   (PERMISSION_DENIED, gRPC's RBAC filter), one for its own admits it.
//! - No stream records a NACK on `/debug/syncz`.
//!
//! Needs pip `grpcio` in ./.venv (scripts/setup installs it); skips, saying so,
//! without it.

mod support;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;
use support::control_plane::{bootstrap, crossmesh_bin, ControlPlane};
use support::grpc::{python, script};
use support::manifests::Mesh;
use support::net::{free_port, Subnet};
use support::wait_for;

const NS: &str = "test";
const SERVICE_PORT: u16 = 7070;

/// A child process killed on drop, its log's tail printed if the test panics.
struct Proc {
    what: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(what: &str, cmd: &mut Command, log: PathBuf) -> Proc {
        let f = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdout(f.try_clone().expect("log"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        Proc {
            what: what.into(),
            child,
            log,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            support::print_log_tail(&self.what, &self.log, 60);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Pod with a service account, Ready, at `ip`.
fn pod(name: &str, sa: &str, app: &str, ip: Ipv4Addr, port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {NS}
  labels:
    app: {app}
spec:
  serviceAccountName: {sa}
  containers:
  - name: app
    image: echo
    ports:
    - containerPort: {port}
      name: grpc
status:
  phase: Running
  podIP: {ip}
  podIPs:
  - ip: {ip}
  conditions:
  - type: Ready
    status: \"True\"
"
    )
}

fn service(port: u16, target: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: {NS}
spec:
  ports:
  - name: grpc
    port: {port}
    targetPort: {target}
  selector:
    app: echo
"
    )
}

/// One call; the script's JSON line.
async fn call(py: &Path, bootstrap: Option<&Path>, target: &str, creds: &str) -> Value {
    let mut cmd = tokio::process::Command::new(py);
    cmd.arg(script("grpc_server_call.py")).args([
        "--target",
        target,
        "--creds",
        creds,
        "--timeout",
        "3",
    ]);
    if let Some(b) = bootstrap {
        cmd.env("GRPC_XDS_BOOTSTRAP", b);
    }
    let out = cmd.output().await.expect("run grpc_server_call.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|_| {
        panic!(
            "grpc_server_call.py printed no JSON: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Every NACK any stream recorded, as `proxy type: text`.
async fn nacks(cp: &ControlPlane) -> Vec<String> {
    let streams = cp.json("/debug/syncz").await.expect("syncz");
    let mut out = Vec::new();
    for s in streams.as_array().into_iter().flatten() {
        for t in s["types"].as_array().into_iter().flatten() {
            if !t["nacked"].is_null() {
                out.push(format!(
                    "{} {}: {}",
                    s["proxy_id"], t["type_url"], t["nacked"]
                ));
            }
        }
    }
    out
}

struct Workload {
    certs: PathBuf,
    bootstrap: PathBuf,
    _certs_proc: Proc,
}

/// A proxyless workload's files: its token, certificate files kept by
/// `crossmesh workload-certs`, and its gRPC bootstrap.
#[allow(clippy::too_many_arguments)]
async fn workload(
    dir: &Path,
    name: &str,
    sa: &str,
    ip: Ipv4Addr,
    labels: &str,
    cp: &ControlPlane,
    tls: std::net::SocketAddr,
    root: &Path,
    token: &str,
) -> Workload {
    let token_file = dir.join(format!("{name}.token"));
    std::fs::write(&token_file, token).unwrap();
    let certs = dir.join(format!("{name}-certs"));
    let certs_proc = Proc::spawn(
        &format!("crossmesh workload-certs {name}"),
        Command::new(crossmesh_bin()).args([
            "workload-certs",
            "--xds-address",
            &tls.to_string(),
            "--root-cert",
            root.to_str().unwrap(),
            "--token-file",
            token_file.to_str().unwrap(),
            "--name",
            name,
            "--namespace",
            NS,
            "--ip",
            &ip.to_string(),
            "--service-account",
            sa,
            "--cluster-id",
            "cluster1",
            "--cert-dir",
            certs.to_str().unwrap(),
        ]),
        dir.join(format!("{name}-certs.log")),
    );
    let chain = certs.join("cert-chain.pem");
    wait_for(
        &format!("{name}'s certificate files"),
        Duration::from_secs(30),
        || {
            let chain = chain.clone();
            let certs = certs.clone();
            async move {
                let ok = chain.is_file()
                    && certs.join("key.pem").is_file()
                    && certs.join("root-cert.pem").is_file();
                ok.then_some(()).ok_or_else(|| "not yet".to_string())
            }
        },
    )
    .await;
    let json = bootstrap(&[
        "bootstrap".into(),
        "--role".into(),
        "grpc".into(),
        "--name".into(),
        name.into(),
        "--namespace".into(),
        NS.into(),
        "--ip".into(),
        ip.to_string(),
        "--labels".into(),
        labels.into(),
        "--service-account".into(),
        sa.into(),
        "--cluster-id".into(),
        "cluster1".into(),
        "--xds-address".into(),
        cp.xds.to_string(),
        "--cert-dir".into(),
        certs.to_str().unwrap().into(),
    ]);
    let path = dir.join(format!("{name}-bootstrap.json"));
    std::fs::write(&path, json).unwrap();
    Workload {
        certs,
        bootstrap: path,
        _certs_proc: certs_proc,
    }
}

/// The SPIFFE ID in the first certificate of a PEM file: the URI SAN, found in
/// the DER as its `[6]` IA5String (`0x86`, a one-byte length, `spiffe://...`).
fn spiffe_id_in(pem_file: &Path) -> String {
    let pem = std::fs::read_to_string(pem_file).unwrap();
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("PEM");
    let at = der
        .windows(9)
        .position(|w| w == b"spiffe://")
        .expect("a spiffe:// URI SAN");
    assert_eq!(der[at - 2], 0x86, "a URI SAN");
    let len = der[at - 1] as usize;
    String::from_utf8(der[at..at + len].to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_server_gets_its_listener_then_strict_mtls_and_rbac_admit_only_the_mesh_identity() {
    let Some(py) = python() else {
        eprintln!("SKIP grpc_server_e2e: no grpcio in ./.venv (run scripts/setup)");
        return;
    };
    let net = Subnet::claim();
    let server_ip = net.ip(10);
    let client_ip = net.ip(20);
    let port = free_port();
    let (mesh, issuer, tls) = Mesh::secure_single_cluster("https://cluster1.example");
    mesh.write_cluster(
        "cluster1",
        "echo.yaml",
        &format!(
            "{}---\n{}---\n{}",
            service(SERVICE_PORT, port),
            pod("echo-0", "echo", "echo", server_ip, port),
            pod("client-0", "client", "client", client_ip, 9999),
        ),
    );
    let cp = ControlPlane::start(&mesh.mesh_file).await;
    let dir = mesh.root().to_path_buf();

    // The root the TLS xDS port's certificate chains to: the generated CA's;
    // the port opens once the CA is up.
    let root = dir.join("crossmesh-ca").join("root-cert.pem");
    wait_for("the TLS xDS port", Duration::from_secs(20), || {
        let root = root.clone();
        async move {
            let up = tokio::net::TcpStream::connect(tls).await.is_ok();
            (up && root.is_file()).then_some(()).ok_or_else(|| {
                format!(
                    "port open: {up}, {} present: {}",
                    root.display(),
                    root.is_file()
                )
            })
        }
    })
    .await;

    let server = workload(
        &dir,
        "echo-0",
        "echo",
        server_ip,
        "app=echo",
        &cp,
        tls,
        &root,
        &issuer.token_for(NS, "echo"),
    )
    .await;
    assert_eq!(
        spiffe_id_in(&server.certs.join("cert-chain.pem")),
        "spiffe://cluster.local/ns/test/sa/echo",
        "the server's certificate is for its service account"
    );
    let client = workload(
        &dir,
        "client-0",
        "client",
        client_ip,
        "app=client",
        &cp,
        tls,
        &root,
        &issuer.token_for(NS, "client"),
    )
    .await;

    let address = format!("{server_ip}:{port}");
    let _server = Proc::spawn(
        "grpc_server_echo.py",
        Command::new(&py)
            .arg(script("grpc_server_echo.py"))
            .args(["--address", &address, "--name", "echo-0"])
            .env("GRPC_XDS_BOOTSTRAP", &server.bootstrap),
        dir.join("server.log"),
    );

    // 1. No PeerAuthentication: the listener arrives and the server serves plaintext.
    let reply = wait_for(
        "a plaintext answer from the xDS server",
        Duration::from_secs(30),
        || {
            let (py, address) = (py.clone(), address.clone());
            async move {
                let r = call(&py, None, &address, "insecure").await;
                if r["ok"] == true {
                    Ok(r)
                } else {
                    Err(r.to_string())
                }
            }
        },
    )
    .await;
    assert_eq!(reply["reply"]["server"], "echo-0", "{reply}");
    assert_eq!(
        reply["reply"]["peer"]["transport"],
        serde_json::json!(["insecure"]),
        "plaintext while no PeerAuthentication is STRICT: {reply}"
    );

    // 2. STRICT for the server, ISTIO_MUTUAL for its clients.
    mesh.write_istio(
        "strict.yaml",
        &format!(
            "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: echo-strict
  namespace: {NS}
spec:
  selector:
    matchLabels:
      app: echo
  mtls:
    mode: STRICT
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: echo
  namespace: {NS}
spec:
  host: echo.{NS}.svc.cluster.local
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
"
        ),
    );
    // A caller without a certificate is refused once the server has the
    // STRICT listener.
    let refused = wait_for(
        "the plaintext caller refused",
        Duration::from_secs(30),
        || {
            let (py, address) = (py.clone(), address.clone());
            async move {
                let r = call(&py, None, &address, "insecure").await;
                if r["ok"] == false {
                    Ok(r)
                } else {
                    Err(r.to_string())
                }
            }
        },
    )
    .await;
    assert_eq!(refused["code"], "UNAVAILABLE", "{refused}");

    // The proxyless client with its mesh certificate is served, and the server
    // sees the client's SPIFFE ID.
    let target = format!("xds:///echo.{NS}.svc.cluster.local:{SERVICE_PORT}");
    let reply = wait_for(
        "an mTLS answer to the proxyless client",
        Duration::from_secs(30),
        || {
            let (py, target, b) = (py.clone(), target.clone(), client.bootstrap.clone());
            async move {
                let r = call(&py, Some(&b), &target, "xds").await;
                if r["ok"] == true {
                    Ok(r)
                } else {
                    Err(r.to_string())
                }
            }
        },
    )
    .await;
    assert_eq!(reply["reply"]["server"], "echo-0", "{reply}");
    assert_eq!(
        reply["reply"]["peer"]["spiffe_id"],
        serde_json::json!(["spiffe://cluster.local/ns/test/sa/client"]),
        "the server sees the client's identity: {reply}"
    );
    assert_eq!(
        reply["reply"]["peer"]["transport"],
        serde_json::json!(["tls"]),
        "{reply}"
    );

    // The same client without xDS credentials (plaintext) is still refused.
    let r = call(&py, Some(&client.bootstrap), &target, "insecure").await;
    assert_eq!(r["ok"], false, "plaintext through xDS must be refused: {r}");

    // 3. AuthorizationPolicy through gRPC's RBAC filter (gRFC A41): an ALLOW
    // for another identity refuses the client, one for its own admits it.
    let allow = |sa: &str| {
        format!(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: echo-allow
  namespace: {NS}
spec:
  selector:
    matchLabels:
      app: echo
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/{NS}/sa/{sa}]
    to:
    - operation:
        paths: [/crossmesh.test.Echo/Hello]
"
        )
    };
    for (sa, expect_ok) in [("other", false), ("client", true)] {
        mesh.write_istio("authz.yaml", &allow(sa));
        let r = wait_for(
            &format!("the client's call under an ALLOW for {sa}"),
            Duration::from_secs(30),
            || {
                let (py, target, b) = (py.clone(), target.clone(), client.bootstrap.clone());
                async move {
                    let r = call(&py, Some(&b), &target, "xds").await;
                    let done = if expect_ok {
                        r["ok"] == true
                    } else {
                        r["code"] == "PERMISSION_DENIED"
                    };
                    if done {
                        Ok(r)
                    } else {
                        Err(r.to_string())
                    }
                }
            },
        )
        .await;
        if expect_ok {
            assert_eq!(r["reply"]["server"], "echo-0", "{r}");
        }
    }

    let n = nacks(&cp).await;
    assert!(n.is_empty(), "NACKs recorded: {n:?}");
    let streams = cp.json("/debug/syncz").await.unwrap();
    let server_id = format!("sidecar~{server_ip}~echo-0.{NS}~{NS}.svc.cluster.local");
    // The server's own stream (workload-certs has one of the same id, for
    // secrets only) acknowledged its listener.
    let lds_acked = streams.as_array().unwrap().iter().any(|s| {
        s["proxy_id"] == server_id.as_str()
            && s["types"].as_array().into_iter().flatten().any(|t| {
                t["type_url"] == "type.googleapis.com/envoy.config.listener.v3.Listener"
                    && t["acked_version"].as_str().is_some_and(|v| !v.is_empty())
                    && t["acked_version"] == t["sent_version"]
                    && t["nacked"].is_null()
            })
    });
    assert!(
        lds_acked,
        "the server's stream acknowledged its listener on /debug/syncz: {streams}"
    );
}
