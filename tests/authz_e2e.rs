//! AuthorizationPolicy with real Envoys: NONE-mode sidecars authenticated on the
//! TLS xDS port (service-account tokens signed here with a key made at test
//! time), so each client's identity is the SPIFFE ID of its own certificate,
//! and an ingress gateway on the plaintext port.
//!
//! - `user-0` (namespace `base`, the quick start's production namespace) runs a
//!   sidecar with an HTTP and a TCP ingress port in front of its app; its
//!   PeerAuthentication is the default (PERMISSIVE), so sidecars reach it over
//!   mTLS (auto mTLS) and the gateway, which has no identity, in plaintext;
//! - client sidecars in `test`, `default` and `a` (service accounts `x`, `y`)
//!   call it through their outbound listeners;
//! - the gateway routes `*` on its HTTP server to `user`.
//!
//! Every assertion names who answered (`user-0` in the body) or Envoy's RBAC
//! answer (403 `RBAC: access denied`, a TCP connection closed with the
//! sidecar's `tcp.rbac.denied` counted).

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use support::backend::Backend;
use support::control_plane::{
    bootstrap, bootstrap_gateway_with, crossmesh_bin, ControlPlane, GatewayProxy,
};
use support::envoy::Envoy;
use support::manifests::{self, Mesh};
use support::net::{free_port, Subnet};
use support::shop::{request, Shop, SEED_DENY};
use support::token_issuer::TokenIssuer;
use support::{wait_for, CONVERGE};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const BASE: &str = "base";
const USER_HOST: &str = "user.base.svc.cluster.local";
const DENIED_BODY: &str = "RBAC: access denied";

struct Fixture {
    subnet: Subnet,
    mesh: Mesh,
    issuer: TokenIssuer,
    cp: ControlPlane,
    tls: SocketAddr,
    http_svc_port: u16,
    tcp_svc_port: u16,
    gw_port: u16,
    _app: Backend,
}

/// What a call got: the status and body, or the connection's error.
#[derive(Debug)]
enum Outcome {
    Answered(u16, String),
    /// The error, printed when an assertion fails.
    Failed(#[allow(dead_code)] String),
}

impl Outcome {
    fn is_user_0(&self) -> bool {
        matches!(self, Outcome::Answered(200, b) if b == "user-0")
    }
    fn is_rbac_denied(&self) -> bool {
        matches!(self, Outcome::Answered(403, b) if b == DENIED_BODY)
    }
}

/// `METHOD http://addr/path` with `Host`, extra headers, and (optionally) the
/// source address the connection binds.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    from: Option<Ipv4Addr>,
) -> Outcome {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5));
    if let Some(ip) = from {
        b = b.local_address(IpAddr::V4(ip));
    }
    let client = b.build().expect("client");
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client
        .request(method, format!("http://{addr}{path}"))
        .header("host", USER_HOST);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            Outcome::Answered(status, r.text().await.unwrap_or_default())
        }
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// The sum of the Envoy counters whose name ends with `suffix`.
async fn counter(envoy: &Envoy, suffix: &str) -> u64 {
    let (_, text) = envoy.admin_get("/stats").await.unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.ends_with(suffix))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

fn policy(name: &str, ns: &str, annotations: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: {ns}
{annotations}spec:
{spec}"
    )
}

impl Fixture {
    async fn start() -> Fixture {
        let subnet = Subnet::claim();
        let (mesh, issuer, tls) = Mesh::secure_single_cluster(ISSUER);
        let user_ip = subnet.ip(11);
        let (http_port, tcp_port, app_port) = (free_port(), free_port(), free_port());
        let (http_svc_port, tcp_svc_port, gw_port) = (free_port(), free_port(), free_port());
        mesh.write_cluster(
            "cluster1",
            "apps.yaml",
            &[
                format!(
                    "apiVersion: v1
kind: Service
metadata: {{name: user, namespace: {BASE}}}
spec:
  selector: {{app: user}}
  ports:
  - {{name: http, port: {http_svc_port}, targetPort: {http_port}}}
  - {{name: tcp, port: {tcp_svc_port}, targetPort: {tcp_port}}}
"
                ),
                manifests::pod(
                    BASE,
                    "user-0",
                    &[("app", "user"), ("security.istio.io/tlsMode", "istio")],
                    user_ip,
                    http_port,
                    true,
                    None,
                ),
            ]
            .join("\n---\n"),
        );
        let app = Backend::start(user_ip, app_port, "user-0").await;
        let client_sidecar = |ns: &str| {
            format!(
                "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client, namespace: {ns}}}
spec:
  workloadSelector: {{labels: {{app: client}}}}
  egress:
  - hosts: [\"{BASE}/*\"]
"
            )
        };
        mesh.write_istio(
            "sidecars.yaml",
            &[
                format!(
                    "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: user, namespace: {BASE}}}
spec:
  workloadSelector: {{labels: {{app: user}}}}
  egress:
  - hosts: [\"istio-system/*\"]
  ingress:
  - port: {{number: {http_port}, protocol: HTTP, name: http}}
    defaultEndpoint: {user_ip}:{app_port}
  - port: {{number: {tcp_port}, protocol: TCP, name: tcp}}
    defaultEndpoint: {user_ip}:{app_port}
"
                ),
                client_sidecar("test"),
                client_sidecar("default"),
                client_sidecar("a"),
            ]
            .join("---\n"),
        );
        mesh.write_istio(
            "gateway.yaml",
            &format!(
                "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gw_port}, name: http, protocol: HTTP}}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: user, namespace: {BASE}}}
spec:
  hosts: ['*']
  gateways: [istio-system/edge]
  http:
  - route:
    - destination: {{host: user, port: {{number: {http_svc_port}}}}}
"
            ),
        );
        let cp = ControlPlane::start(&mesh.mesh_file).await;
        Fixture {
            subnet,
            mesh,
            issuer,
            cp,
            tls,
            http_svc_port,
            tcp_svc_port,
            gw_port,
            _app: app,
        }
    }

    fn root_cert(&self) -> PathBuf {
        self.mesh.root().join("crossmesh-ca").join("root-cert.pem")
    }

    /// A NONE-mode sidecar on the TLS port, authenticated as `ns/sa`.
    async fn sidecar(&self, host: u8, ns: &str, sa: &str, app: &str) -> Envoy {
        let pod = format!("{app}-{ns}-{sa}");
        let token_file = self.mesh.root().join(format!("{pod}.token"));
        std::fs::write(&token_file, self.issuer.token_for(ns, sa)).expect("write token");
        let args: Vec<String> = [
            "bootstrap",
            // RBAC filter stats: not kept by the default (graph) stats matcher.
            "--stats-matcher",
            "all",
            "--role",
            "sidecar",
            "--interception",
            "none",
            "--name",
            &pod,
            "--namespace",
            ns,
            "--service-account",
            sa,
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
        let envoy = Envoy::start(&pod, &bootstrap(&args)).await;
        envoy.wait_ready(CONVERGE).await;
        envoy
    }

    /// The ingress gateway (plaintext xDS port, no identity), at host `.1`.
    async fn gateway(&self) -> Envoy {
        let gw = GatewayProxy::ingress(self.subnet.ip(1), "cluster1", false);
        // RBAC shadow stats: not kept by the default (graph) stats matcher.
        let yaml =
            bootstrap_gateway_with(&gw, self.cp.xds, free_port(), &["--stats-matcher", "all"]);
        let envoy = Envoy::start("gateway", &yaml).await;
        envoy.wait_ready(CONVERGE).await;
        envoy
    }

    /// The HTTP and TCP outbound listeners of the client sidecar at `host`.
    fn http_via(&self, host: u8) -> SocketAddr {
        SocketAddr::from((self.subnet.ip(host), self.http_svc_port))
    }

    fn tcp_via(&self, host: u8) -> SocketAddr {
        SocketAddr::from((self.subnet.ip(host), self.tcp_svc_port))
    }

    fn gw(&self) -> SocketAddr {
        SocketAddr::from((self.subnet.ip(1), self.gw_port))
    }

    fn set_policies(&self, yaml: &str) {
        self.mesh.write_istio("authz.yaml", yaml);
    }
}

/// Wait until `check` holds for the outcome of `f` (policies are config: they
/// reach Envoy with the next push).
async fn until(
    what: &str,
    f: impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>,
    check: fn(&Outcome) -> bool,
) -> Outcome {
    wait_for(what, CONVERGE, || {
        let fut = f();
        async move {
            let o = fut.await;
            if check(&o) {
                Ok(o)
            } else {
                Err(format!("{o:?}"))
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_policies_decide_by_namespace_method_path_and_principal() {
    let f = Fixture::start().await;
    let user = f.sidecar(11, BASE, "default", "user").await;
    let _test = f.sidecar(21, "test", "default", "client").await;
    let _default = f.sidecar(22, "default", "default", "client").await;
    let _x = f.sidecar(23, "a", "x", "client").await;
    let _y = f.sidecar(24, "a", "y", "client").await;
    let (test, default, x, y) = (21, 22, 23, 24);

    // No policy: everyone gets user-0, over HTTP and TCP.
    for host in [test, default] {
        let http = f.http_via(host);
        until(
            "user-0 answers over HTTP with no policy",
            move || Box::pin(call(http, "GET", "/", &[], None)),
            Outcome::is_user_0,
        )
        .await;
        let tcp = f.tcp_via(host);
        until(
            "user-0 answers over TCP with no policy",
            move || Box::pin(call(tcp, "GET", "/", &[], None)),
            Outcome::is_user_0,
        )
        .await;
    }

    // The quick start's DENY from namespace test: test gets 403 over HTTP and a
    // closed connection over TCP; default still gets user-0.
    f.set_policies(SEED_DENY);
    let from_test = f.http_via(test);
    until(
        "the seed's DENY answers test's sidecar 403",
        move || Box::pin(call(from_test, "GET", "/", &[], None)),
        Outcome::is_rbac_denied,
    )
    .await;
    let denied_before = counter(&user, "tcp.rbac.denied").await;
    let tcp = call(f.tcp_via(test), "GET", "/", &[], None).await;
    assert!(
        matches!(tcp, Outcome::Failed(_)),
        "TCP from test must be closed: {tcp:?}"
    );
    assert!(
        counter(&user, "tcp.rbac.denied").await > denied_before,
        "user's sidecar counted the TCP denial"
    );
    for o in [
        call(f.http_via(default), "GET", "/", &[], None).await,
        call(f.tcp_via(default), "GET", "/", &[], None).await,
    ] {
        assert!(o.is_user_0(), "default is not denied: {o:?}");
    }

    // ALLOW GET on /api/*: POST is 403, GET /api/x is user-0, GET /other 403.
    f.set_policies(&policy(
        "api-get",
        BASE,
        "",
        "  selector: {matchLabels: {app: user}}\n  action: ALLOW\n  rules:\n  - to:\n    - operation:\n        methods: [GET]\n        paths: [\"/api/*\"]\n",
    ));
    let from_default = f.http_via(default);
    until(
        "ALLOW GET /api/* answers GET /other with 403",
        move || Box::pin(call(from_default, "GET", "/other", &[], None)),
        Outcome::is_rbac_denied,
    )
    .await;
    let get_api = call(from_default, "GET", "/api/x", &[], None).await;
    assert!(get_api.is_user_0(), "GET /api/x: {get_api:?}");
    let post_api = call(from_default, "POST", "/api/x", &[], None).await;
    assert!(post_api.is_rbac_denied(), "POST /api/x: {post_api:?}");
    // The rule needs HTTP fields: on the TCP port it matches nothing (Istio),
    // so the ALLOW policy denies every TCP connection.
    let tcp = call(f.tcp_via(default), "GET", "/api/x", &[], None).await;
    assert!(
        matches!(tcp, Outcome::Failed(_)),
        "TCP under an HTTP-only ALLOW: {tcp:?}"
    );

    // An ALLOW with no rules denies everything.
    f.set_policies(&policy(
        "allow-nothing",
        BASE,
        "",
        "  selector: {matchLabels: {app: user}}\n  action: ALLOW\n",
    ));
    until(
        "an empty ALLOW denies GET /api/x",
        move || Box::pin(call(from_default, "GET", "/api/x", &[], None)),
        Outcome::is_rbac_denied,
    )
    .await;

    // Only cluster.local/ns/a/sa/x: x gets user-0, y in the same namespace 403.
    f.set_policies(&policy(
        "only-x",
        BASE,
        "",
        "  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [cluster.local/ns/a/sa/x]\n",
    ));
    let from_x = f.http_via(x);
    until(
        "only-x answers x with user-0",
        move || Box::pin(call(from_x, "GET", "/", &[], None)),
        Outcome::is_user_0,
    )
    .await;
    let from_y = call(f.http_via(y), "GET", "/", &[], None).await;
    assert!(from_y.is_rbac_denied(), "sa y: {from_y:?}");
    let from_default_now = call(from_default, "GET", "/", &[], None).await;
    assert!(
        from_default_now.is_rbac_denied(),
        "default: {from_default_now:?}"
    );
    let tcp_x = call(f.tcp_via(x), "GET", "/", &[], None).await;
    assert!(tcp_x.is_user_0(), "principals work on TCP too: {tcp_x:?}");

    // A dry-run DENY of everything changes nothing but counts shadow denials.
    f.set_policies(&policy(
        "try-deny-all",
        BASE,
        "  annotations: {istio.io/dry-run: \"true\"}\n",
        "  action: DENY\n  rules:\n  - {}\n",
    ));
    let shadow = "rbac.istio_dry_run_deny_.shadow_denied";
    let before = counter(&user, shadow).await;
    until(
        "the dry-run DENY lets default through",
        move || Box::pin(call(from_default, "GET", "/", &[], None)),
        Outcome::is_user_0,
    )
    .await;
    wait_for(
        "the dry-run DENY shows in the shadow stats",
        CONVERGE,
        || async {
            let o = call(from_default, "GET", "/", &[], None).await;
            if !o.is_user_0() {
                return Err(format!("dry run denied: {o:?}"));
            }
            let now = counter(&user, shadow).await;
            if now > before {
                Ok(now)
            } else {
                Err(format!("{shadow} still {now}"))
            }
        },
    )
    .await;
    let tcp = call(f.tcp_via(test), "GET", "/", &[], None).await;
    assert!(tcp.is_user_0(), "dry run over TCP: {tcp:?}");

    // A DENY policy that fails validation (a bad path pattern) is not dropped:
    // the workloads it selects are denied everything until it is fixed.
    f.set_policies(&policy(
        "broken-deny",
        BASE,
        "",
        "  selector: {matchLabels: {app: user}}\n  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: [\"/admin/*/x\"]\n",
    ));
    until(
        "a rejected DENY fails closed",
        move || Box::pin(call(from_default, "GET", "/", &[], None)),
        Outcome::is_rbac_denied,
    )
    .await;
    let configz = f.cp.json("/debug/configz").await.expect("configz");
    let rejected = configz["rejected"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .find(|r| r["name"] == "broken-deny")
        .expect("broken-deny on /debug/configz");
    let reason = rejected["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("/admin/*/x") && reason.contains("fail closed"),
        "{reason}"
    );
    let tcp = call(f.tcp_via(x), "GET", "/", &[], None).await;
    assert!(
        matches!(tcp, Outcome::Failed(_)),
        "TCP under the stand-in: {tcp:?}"
    );
    // crossmesh validate says the same.
    let out = std::process::Command::new(crossmesh_bin())
        .arg("validate")
        .arg(f.mesh.istio_dir().join("authz.yaml"))
        .output()
        .expect("crossmesh validate");
    let stdout =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "validate accepts the broken policy: {stdout}"
    );
    assert!(
        stdout.contains("broken-deny") && stdout.contains("fail closed"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_policies_decide_by_method_path_and_remote_address() {
    let f = Fixture::start().await;
    let _user = f.sidecar(11, BASE, "default", "user").await;
    let gw = f.gateway().await;
    let gw_addr = f.gw();
    // Clients of the gateway connect from two loopback addresses of the subnet.
    let (office, outside) = (f.subnet.ip(31), f.subnet.ip(32));
    until(
        "the gateway routes to user-0",
        move || Box::pin(call(gw_addr, "GET", "/", &[], Some(outside))),
        Outcome::is_user_0,
    )
    .await;

    // ALLOW GET on /api/* at the gateway (selected by its labels).
    f.set_policies(&policy(
        "api-get",
        "istio-system",
        "",
        "  selector: {matchLabels: {istio: ingressgateway}}\n  rules:\n  - to:\n    - operation:\n        methods: [GET]\n        paths: [\"/api/*\"]\n",
    ));
    until(
        "the gateway answers GET /other with 403",
        move || Box::pin(call(gw_addr, "GET", "/other", &[], Some(outside))),
        Outcome::is_rbac_denied,
    )
    .await;
    let get_api = call(gw_addr, "GET", "/api/x", &[], Some(outside)).await;
    assert!(get_api.is_user_0(), "GET /api/x: {get_api:?}");
    let post_api = call(gw_addr, "POST", "/api/x", &[], Some(outside)).await;
    assert!(post_api.is_rbac_denied(), "POST /api/x: {post_api:?}");

    // An empty ALLOW at the gateway denies everything.
    f.set_policies(&policy(
        "allow-nothing",
        "istio-system",
        "",
        "  selector: {matchLabels: {istio: ingressgateway}}\n",
    ));
    until(
        "an empty ALLOW at the gateway denies GET /api/x",
        move || Box::pin(call(gw_addr, "GET", "/api/x", &[], Some(outside))),
        Outcome::is_rbac_denied,
    )
    .await;

    // remoteIpBlocks: only the office's address. The gateway is the edge
    // (use_remote_address, no trusted X-Forwarded-For hops), so the remote
    // address is the connection's peer: an X-Forwarded-For naming the office
    // does not let the outside in, nor does one naming the outside keep the
    // office out.
    let office_block = format!("{office}/32");
    f.set_policies(&policy(
        "office-only",
        "istio-system",
        "",
        &format!(
            "  selector: {{matchLabels: {{istio: ingressgateway}}}}\n  rules:\n  - from:\n    - source:\n        remoteIpBlocks: [\"{office_block}\"]\n"
        ),
    ));
    until(
        "the office gets user-0 through the gateway",
        move || Box::pin(call(gw_addr, "GET", "/", &[], Some(office))),
        Outcome::is_user_0,
    )
    .await;
    let office_ip = office.to_string();
    let outside_ip = outside.to_string();
    let o = call(gw_addr, "GET", "/", &[], Some(outside)).await;
    assert!(o.is_rbac_denied(), "outside: {o:?}");
    let o = call(
        gw_addr,
        "GET",
        "/",
        &[("x-forwarded-for", &office_ip)],
        Some(outside),
    )
    .await;
    assert!(
        o.is_rbac_denied(),
        "outside claiming the office in XFF: {o:?}"
    );
    let o = call(
        gw_addr,
        "GET",
        "/",
        &[("x-forwarded-for", &outside_ip)],
        Some(office),
    )
    .await;
    assert!(o.is_user_0(), "office with an outside XFF: {o:?}");

    // The same as a DENY of the outside's block: the outside is denied.
    f.set_policies(&policy(
        "block-outside",
        "istio-system",
        "",
        &format!(
            "  selector: {{matchLabels: {{istio: ingressgateway}}}}\n  action: DENY\n  rules:\n  - from:\n    - source:\n        remoteIpBlocks: [\"{outside}/32\"]\n"
        ),
    ));
    until(
        "the outside is denied by remoteIpBlocks",
        move || Box::pin(call(gw_addr, "GET", "/", &[], Some(outside))),
        Outcome::is_rbac_denied,
    )
    .await;
    let o = call(gw_addr, "GET", "/", &[], Some(office)).await;
    assert!(o.is_user_0(), "office under the outside's DENY: {o:?}");

    // A dry-run DENY at the gateway: nothing denied, the shadow stat counts.
    f.set_policies(&policy(
        "try-block-all",
        "istio-system",
        "  annotations: {istio.io/dry-run: \"true\"}\n",
        "  selector: {matchLabels: {istio: ingressgateway}}\n  action: DENY\n  rules:\n  - {}\n",
    ));
    let shadow = "rbac.istio_dry_run_deny_.shadow_denied";
    let before = counter(&gw, shadow).await;
    until(
        "the dry-run DENY lets the outside through",
        move || Box::pin(call(gw_addr, "GET", "/", &[], Some(outside))),
        Outcome::is_user_0,
    )
    .await;
    wait_for("the gateway counts the shadow denial", CONVERGE, || async {
        let o = call(gw_addr, "GET", "/", &[], Some(outside)).await;
        if !o.is_user_0() {
            return Err(format!("dry run denied: {o:?}"));
        }
        let now = counter(&gw, shadow).await;
        if now > before {
            Ok(now)
        } else {
            Err(format!("{shadow} still {now}"))
        }
    })
    .await;
}

/// The quick start scenario (seed 004's shop, `tests/support/shop.rs`) runs with
/// the guide's DENY from namespace `test` in force: the frontend's inbound
/// connection manager carries it, and the shop keeps answering through the
/// gateway and the frontend's sidecar (no caller there is in `test`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_scenario_serves_with_the_seed_deny_in_force() {
    let shop = Shop::start(false, 1, "").await;
    let gw = shop.gateway(0);
    wait_for("the gateway answers frontend-v1", CONVERGE, || async move {
        let a = request(gw, "shop.example.com", "/", &[]).await?;
        (a.status == 200 && a.body == "frontend-v1")
            .then_some(())
            .ok_or(format!("{} {:?}", a.status, a.body))
    })
    .await;
    let dump = shop.sidecar.config_dump().await.to_string();
    assert!(
        dump.contains("envoy.filters.http.rbac")
            && dump.contains("ns[base]-policy[base-authz]-rule[0]"),
        "the frontend's sidecar has no RBAC filter with the seed's policy"
    );
    // Through the gateway, the frontend app and its sidecar to user.
    let a = request(gw, "shop.example.com", "/call/user/profile", &[])
        .await
        .expect("call user");
    assert!(
        a.status == 200 && (a.body == "user-v1-a" || a.body == "user-v1-b"),
        "{} {:?}",
        a.status,
        a.body
    );
}
