//! Path normalization end to end (issue 12 item 4): the mesh file's
//! `pathNormalization` reaches a real Envoy ingress gateway, which normalizes a
//! request's path before routing and authorization, so a DENY on `/admin/*`
//! holds against the bypasses each mode covers; the pod stand-in echoes the path
//! it received.
//!
//! What each mode does is istiod's mapping onto the HTTP connection manager and
//! Envoy's normalization (Istio's own table in `pilot`'s path-normalization
//! tests): `BASE` (Istio's default) resolves `.`/`..` segments and backslashes
//! but keeps `//` and `%2F`; `MERGE_SLASHES` also merges slashes;
//! `DECODE_AND_MERGE_SLASHES` (crossmesh's default) also decodes `%2F`; `NONE`
//! changes nothing.
//!
//! Requests are written on a raw TCP connection, since HTTP clients normalize
//! paths before sending. Addresses: the test's own `127.A.B.0/24` (gateway `.1`,
//! pod `web-0` `.11`).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::backend::Backend;
use support::control_plane::{bootstrap_gateway, ControlPlane, GatewayProxy};
use support::envoy::Envoy;
use support::manifests::{self, cluster, Mesh};
use support::net::{free_port, Subnet};
use support::{wait_for, CONVERGE};

const HOST: &str = "web.example.com";

const DENY_ADMIN: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-admin
  namespace: istio-system
spec:
  selector:
    matchLabels:
      istio: ingressgateway
  action: DENY
  rules:
  - to:
    - operation:
        paths: [/admin/*]
";

struct Fixture {
    subnet: Subnet,
    _mesh: Mesh,
    gw_port: u16,
    backend: Backend,
    _cp: ControlPlane,
    _envoy: Envoy,
}

impl Fixture {
    /// The gateway for `web.example.com` with DENY `/admin/*`, under
    /// `pathNormalization` `mode` (`None`: not set, the default).
    async fn start(mode: Option<&str>) -> Fixture {
        let subnet = Subnet::claim();
        let mesh = Mesh::new(&[cluster("cluster1", None)]);
        if let Some(m) = mode {
            let mut text = std::fs::read_to_string(&mesh.mesh_file).expect("mesh file");
            text.push_str(&format!("pathNormalization: {{normalization: {m}}}\n"));
            std::fs::write(&mesh.mesh_file, text).expect("mesh file");
        }
        let pod_port = free_port();
        let gw_port = free_port();
        let ip = subnet.ip(11);
        mesh.write_cluster(
            "cluster1",
            "service.yaml",
            &manifests::service("test", "web", 80, pod_port, &[("app", "web")]),
        );
        mesh.write_cluster(
            "cluster1",
            "pod.yaml",
            &manifests::pod("test", "web-0", &[("app", "web")], ip, pod_port, true, None),
        );
        let backend = Backend::start(ip, pod_port, "web-0").await;
        mesh.write_istio(
            "gateway.yaml",
            &manifests::gateway(
                "istio-system",
                "edge",
                &[("istio", "ingressgateway")],
                gw_port,
                &[HOST],
            ),
        );
        mesh.write_istio(
            "vs.yaml",
            &manifests::virtual_service(
                "test",
                "web",
                &["istio-system/edge"],
                &[HOST],
                "web.test.svc.cluster.local",
                80,
            ),
        );
        mesh.write_istio("deny-admin.yaml", DENY_ADMIN);
        let cp = ControlPlane::start(&mesh.mesh_file).await;
        let gw = GatewayProxy::ingress(subnet.ip(1), "cluster1", false);
        let admin_port = free_port();
        let envoy =
            Envoy::start("gateway-paths", &bootstrap_gateway(&gw, cp.xds, admin_port)).await;
        envoy.wait_ready(CONVERGE).await;
        let f = Fixture {
            subnet,
            _mesh: mesh,
            gw_port,
            backend,
            _cp: cp,
            _envoy: envoy,
        };
        // Routed, and the DENY in force.
        wait_for("/public/x 200 and /admin/x 403", CONVERGE, || async {
            let a = f.get("/public/x").await?;
            let b = f.get("/admin/x").await?;
            if a.0 == 200 && b.0 == 403 {
                Ok(())
            } else {
                Err(format!("{a:?} {b:?}"))
            }
        })
        .await;
        f
    }

    fn gw_addr(&self) -> SocketAddr {
        SocketAddr::from((self.subnet.ip(1), self.gw_port))
    }

    /// `GET path` written as is; (status, path the pod saw if it answered).
    async fn get(&self, path: &str) -> Result<(u16, Option<String>), String> {
        let io = async {
            let mut s = tokio::net::TcpStream::connect(self.gw_addr())
                .await
                .map_err(|e| e.to_string())?;
            let req = format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(String::from_utf8_lossy(&out).into_owned())
        };
        let text = tokio::time::timeout(Duration::from_secs(5), io)
            .await
            .map_err(|_| format!("GET {path}: timed out"))??;
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("GET {path}: no status in {text:?}"))?;
        let echoed = text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-echo-path")
                .then(|| v.trim().to_string())
        });
        Ok((status, echoed))
    }

    /// `path` is answered `status`; when 200, the pod saw `seen`.
    async fn expect(&self, path: &str, status: u16, seen: Option<&str>) {
        let before = self.backend.requests();
        let got = self.get(path).await.expect("request");
        assert_eq!(
            got,
            (status, seen.map(str::to_string)),
            "GET {path}: (status, path at the pod)"
        );
        if status == 403 {
            assert_eq!(
                self.backend.requests(),
                before,
                "GET {path}: denied, the pod must not see it"
            );
        }
    }
}

/// With no `pathNormalization` in the mesh file, every bypass of the issue is
/// denied: `..`, `//` and `%2F`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_denies_every_bypass() {
    let f = Fixture::start(None).await;
    f.expect("/public/../admin/x", 403, None).await;
    f.expect("//admin/x", 403, None).await;
    f.expect("/admin%2Fx", 403, None).await;
    f.expect("/public\\..\\admin\\x", 403, None).await;
    f.expect("/public//b", 200, Some("/public/b")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_resolves_dot_segments_before_the_deny() {
    let f = Fixture::start(Some("BASE")).await;
    f.expect("/public/../admin/x", 403, None).await;
    f.expect("/public/./a/../b", 200, Some("/public/b")).await;
    f.expect("/public/%2E%2E/admin/x", 403, None).await;
    f.expect("/public\\..\\admin\\x", 403, None).await;
    // BASE keeps `//` and `%2F` (as Istio's default, BASE, does): the DENY on
    // `/admin/*` does not match them and the pod gets them as sent.
    f.expect("//admin/x", 200, Some("//admin/x")).await;
    f.expect("/admin%2Fx", 200, Some("/admin%2Fx")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_slashes_denies_double_slash() {
    let f = Fixture::start(Some("MERGE_SLASHES")).await;
    f.expect("/public/../admin/x", 403, None).await;
    f.expect("//admin/x", 403, None).await;
    f.expect("/public//b", 200, Some("/public/b")).await;
    f.expect("/admin%2Fx", 200, Some("/admin%2Fx")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decode_and_merge_slashes_denies_every_bypass() {
    let f = Fixture::start(Some("DECODE_AND_MERGE_SLASHES")).await;
    f.expect("/public/../admin/x", 403, None).await;
    f.expect("//admin/x", 403, None).await;
    f.expect("/admin%2Fx", 403, None).await;
    f.expect("/admin%2fx", 403, None).await;
    f.expect("/public%2Fb", 200, Some("/public/b")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_leaves_paths_alone() {
    let f = Fixture::start(Some("NONE")).await;
    f.expect("/public/../admin/x", 200, Some("/public/../admin/x"))
        .await;
}
