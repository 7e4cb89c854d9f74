//! Issue 14 item 1, end to end: Kubernetes Gateway API objects (GatewayClass,
//! Gateway, HTTPRoute, ReferenceGrant) in the Istio config directory, served by
//! the real `crossmesh serve` to a real Envoy gateway labelled
//! `gateway.networking.k8s.io/gateway-name: web-gw` in namespace `shop`, with
//! backends in two member clusters that answer with their pod's name.
//!
//! Every wait has a deadline; on failure the Envoy and crossmesh logs are printed
//! (docs/TESTING.md).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::backend::Backend;
use support::control_plane::{bootstrap_gateway, crossmesh_bin, ControlPlane, GatewayProxy};
use support::envoy::Envoy;
use support::manifests::{self, cluster, Mesh};
use support::net::{free_port, Subnet};
use support::{wait_for, CONVERGE};

const NS: &str = "shop";

struct Env {
    subnet: Subnet,
    mesh: Mesh,
    gw_port: u16,
    _backends: Vec<Backend>,
    cp: ControlPlane,
    _envoy: Envoy,
}

/// A reply without following redirects.
struct Reply {
    status: u16,
    body: String,
    headers: reqwest::header::HeaderMap,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let mut req = client
        .get(format!("http://{addr}{path}"))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req
        .send()
        .await
        .map_err(|e| format!("GET {path} (Host: {host}): {e}"))?;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.map_err(|e| e.to_string())?;
    Ok(Reply {
        status,
        body,
        headers,
    })
}

const GATEWAY_API: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: crossmesh}
spec:
  controllerName: crossmesh.io/gateway-controller
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web-gw, namespace: shop}
spec:
  gatewayClassName: crossmesh
  listeners:
  - name: http
    port: GW_PORT
    protocol: HTTP
    hostname: \"*.example.com\"
";

const WEB_ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{name: web-gw}]
  hostnames: [shop.example.com]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /}
      headers: [{name: x-version, value: v2}]
    backendRefs: [{name: web-v2, port: 80}]
  - matches:
    - path: {type: Exact, value: /v1}
    backendRefs: [{name: web-v1, port: 80}]
  - matches:
    - path: {type: PathPrefix, value: /split}
    backendRefs:
    - {name: web-v1, port: 80, weight: 90}
    - {name: web-v2, port: 80, weight: 10}
  - matches:
    - path: {type: Exact, value: /old}
    filters:
    - type: RequestRedirect
      requestRedirect:
        scheme: https
        hostname: secure.example.com
        statusCode: 301
        path: {type: ReplaceFullPath, replaceFullPath: /new}
  - matches:
    - path: {type: PathPrefix, value: /api}
    filters:
    - type: URLRewrite
      urlRewrite:
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-route, value: api}]
        remove: [x-drop-me]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        add: [{name: x-served-by, value: crossmesh-gateway-api}]
    backendRefs: [{name: web-v1, port: 80}]
";

/// A route in the Gateway's namespace sending to a Service in namespace `base`.
const CART_ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cart, namespace: shop}
spec:
  parentRefs: [{name: web-gw}]
  hostnames: [cart.example.com]
  rules:
  - backendRefs: [{name: cart, namespace: base, port: 80}]
";

const CART_GRANT: &str = "apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: shop-routes, namespace: base}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]
  to: [{group: \"\", kind: Service}]
";

/// A route in another namespace than the Gateway's, whose listener allows
/// routes from its own namespace only (the default).
const FOREIGN_ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: direct, namespace: base}
spec:
  parentRefs: [{name: web-gw, namespace: shop}]
  hostnames: [direct.example.com]
  rules:
  - backendRefs: [{name: cart, port: 80}]
";

/// Invalid: an unknown path match type. Rejected alone.
const BAD_ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad, namespace: shop}
spec:
  parentRefs: [{name: web-gw}]
  hostnames: [bad.example.com]
  rules:
  - matches:
    - path: {type: Fuzzy, value: /x}
    backendRefs: [{name: web-v1, port: 80}]
";

/// A backendRef of a kind crossmesh does not know: the route stays, that
/// backend answers 500, and ResolvedRefs says InvalidKind.
const BUCKET_ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bucket, namespace: shop}
spec:
  parentRefs: [{name: web-gw}]
  hostnames: [bucket.example.com]
  rules:
  - backendRefs: [{group: storage.example.com, kind: Bucket, name: assets}]
";

impl Env {
    async fn start() -> Env {
        let subnet = Subnet::claim();
        let mesh = Mesh::new(&[
            cluster("cluster1", Some("vpc-a")),
            cluster("cluster2", Some("vpc-a")),
        ]);
        let pod_port = free_port();
        let gw_port = free_port();
        let mut backends = Vec::new();
        // (cluster, namespace, service, pod, ip host byte)
        let pods = [
            ("cluster1", NS, "web-v1", "web-v1-cluster1", 11),
            ("cluster2", NS, "web-v2", "web-v2-cluster2", 21),
            ("cluster1", "base", "cart", "cart-cluster1", 12),
        ];
        for (c, ns, svc, pod, host) in pods {
            mesh.write_cluster(
                c,
                &format!("svc-{ns}-{svc}.yaml"),
                &manifests::service(ns, svc, 80, pod_port, &[("app", svc)]),
            );
            let ip = subnet.ip(host);
            mesh.write_cluster(
                c,
                &format!("pod-{pod}.yaml"),
                &manifests::pod(ns, pod, &[("app", svc)], ip, pod_port, true, None),
            );
            backends.push(Backend::start(ip, pod_port, pod).await);
        }
        mesh.write_istio(
            "gateway-api.yaml",
            &GATEWAY_API.replace("GW_PORT", &gw_port.to_string()),
        );
        mesh.write_istio("route-web.yaml", WEB_ROUTE);
        mesh.write_istio("route-cart.yaml", CART_ROUTE);
        mesh.write_istio("route-direct.yaml", FOREIGN_ROUTE);
        mesh.write_istio("route-bad.yaml", BAD_ROUTE);
        mesh.write_istio("route-bucket.yaml", BUCKET_ROUTE);
        let cp = ControlPlane::start(&mesh.mesh_file).await;
        let gw = GatewayProxy {
            name: "web-gw-0".into(),
            namespace: NS.into(),
            ip: subnet.ip(1),
            labels: vec![(
                "gateway.networking.k8s.io/gateway-name".into(),
                "web-gw".into(),
            )],
            cluster_id: "cluster1".into(),
            network: None,
            sotw: false,
        };
        let admin_port = free_port();
        let envoy = Envoy::start("gateway-api", &bootstrap_gateway(&gw, cp.xds, admin_port)).await;
        envoy.wait_ready(CONVERGE).await;
        Env {
            subnet,
            mesh,
            gw_port,
            _backends: backends,
            cp,
            _envoy: envoy,
        }
    }

    fn gw(&self) -> SocketAddr {
        SocketAddr::from((self.subnet.ip(1), self.gw_port))
    }

    /// Wait until `path` on `host` gets `status` with `body` (any body if None).
    async fn wait_answer(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        status: u16,
        body: Option<&str>,
    ) -> Reply {
        let addr = self.gw();
        wait_for(
            &format!("{host}{path} answered {status} {body:?}"),
            CONVERGE,
            || async move {
                let r = get(addr, host, path, headers).await?;
                if r.status == status && body.is_none_or(|b| r.body == b) {
                    Ok(r)
                } else {
                    Err(format!("{} {:?}", r.status, r.body))
                }
            },
        )
        .await
    }

    /// The `/debug/configz` status entry of one Gateway API object.
    async fn status_of(
        &self,
        kind: &str,
        ns: &str,
        name: &str,
    ) -> Result<serde_json::Value, String> {
        let j = self.cp.json("/debug/configz").await?;
        j["gatewayApi"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|s| s["kind"] == kind && s["namespace"] == ns && s["name"] == name)
                    .cloned()
            })
            .ok_or_else(|| format!("no status for {kind} {ns}/{name}: {j}"))
    }

    /// Wait until the route's first parent has condition `cond` = `status` with `reason`.
    async fn wait_condition(
        &self,
        route_ns: &str,
        route: &str,
        cond: &str,
        status: &str,
        reason: &str,
    ) -> serde_json::Value {
        wait_for(
            &format!("HTTPRoute {route_ns}/{route} {cond}={status} {reason}"),
            CONVERGE,
            || async {
                let s = self.status_of("HTTPRoute", route_ns, route).await?;
                let c = s["parents"][0]["conditions"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["type"] == cond).cloned())
                    .ok_or_else(|| format!("no {cond} condition: {s}"))?;
                if c["status"] == status && c["reason"] == reason {
                    Ok(c)
                } else {
                    Err(c.to_string())
                }
            },
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_matches_splits_and_filters_across_two_clusters() {
    let env = Env::start().await;
    let addr = env.gw();
    // Path and header: /v1 to cluster1's pod, the header x-version: v2 to cluster2's.
    env.wait_answer("shop.example.com", "/v1", &[], 200, Some("web-v1-cluster1"))
        .await;
    let r = get(addr, "shop.example.com", "/other", &[("x-version", "v2")])
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "web-v2-cluster2"),
        "the header match"
    );
    let r = get(addr, "shop.example.com", "/other", &[]).await.unwrap();
    assert_eq!(r.status, 404, "no header, no match: {:?}", r.body);
    // Gateway API precedence: an Exact path match wins over a prefix match
    // with a header match.
    let r = get(addr, "shop.example.com", "/v1", &[("x-version", "v2")])
        .await
        .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "web-v1-cluster1"));
    // Exact means exact: /v1/x matches nothing else on this route (404).
    let r = get(addr, "shop.example.com", "/v1/x", &[]).await.unwrap();
    assert_eq!(r.status, 404, "{:?}", r.body);
    // PathPrefix matches whole segments: /splitting is not under /split.
    let r = get(addr, "shop.example.com", "/splitting", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 404, "/splitting: {:?}", r.body);

    // 90/10 over 1,000 requests.
    let (mut v1, mut v2, mut other) = (0u32, 0u32, Vec::new());
    for _ in 0..1000 {
        let r = get(addr, "shop.example.com", "/split/x", &[])
            .await
            .unwrap();
        match (r.status, r.body.as_str()) {
            (200, "web-v1-cluster1") => v1 += 1,
            (200, "web-v2-cluster2") => v2 += 1,
            (s, b) => other.push(format!("{s} {b}")),
        }
    }
    eprintln!("90/10 split over 1000 requests: web-v1 {v1}, web-v2 {v2}");
    assert!(other.is_empty(), "unexpected answers: {other:?}");
    // Binomial(1000, 0.1): mean 100, sd 9.5; 70..=130 is more than 3 sd.
    assert!(
        (70..=130).contains(&v2),
        "web-v2 got {v2} of 1000 (want about 100)"
    );

    // Redirect: 301 to https://secure.example.com/new.
    let r = get(addr, "shop.example.com", "/old", &[]).await.unwrap();
    assert_eq!(r.status, 301, "{:?}", r.body);
    assert_eq!(r.header("location"), Some("https://secure.example.com/new"));

    // Rewrite and header modifiers: /api/items reaches the pod as /v2/items with
    // x-route set and x-drop-me removed; the response carries x-served-by.
    let r = get(
        addr,
        "shop.example.com",
        "/api/items?q=1",
        &[("x-drop-me", "1"), ("x-route", "client")],
    )
    .await
    .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "web-v1-cluster1"));
    assert_eq!(r.header("x-echo-path"), Some("/v2/items?q=1"));
    assert_eq!(r.header("x-echo-x-route"), Some("api"));
    assert_eq!(r.header("x-echo-x-drop-me"), None);
    assert_eq!(r.header("x-served-by"), Some("crossmesh-gateway-api"));

    // Status: the route is accepted and its references resolved.
    let s = env.status_of("HTTPRoute", NS, "web").await.unwrap();
    let conds = s["parents"][0]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for want in ["Accepted", "ResolvedRefs"] {
        assert!(
            conds
                .iter()
                .any(|c| c["type"] == want && c["status"] == "True" && c["reason"] == want),
            "{want}: {conds:?}"
        );
    }
    let g = env.status_of("Gateway", NS, "web-gw").await.unwrap();
    assert_eq!(
        g["listeners"][0]["attachedRoutes"], 3,
        "web, cart and bucket attach: {g}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_namespace_backend_needs_a_reference_grant() {
    let env = Env::start().await;
    // Without a grant: refused, 500 for the unresolved backend, status says why.
    env.wait_answer("cart.example.com", "/", &[], 500, None)
        .await;
    let c = env
        .wait_condition(NS, "cart", "ResolvedRefs", "False", "RefNotPermitted")
        .await;
    assert!(
        c["message"].as_str().unwrap_or("").contains("base/cart"),
        "{c}"
    );
    // With one: the pod in namespace base answers, ResolvedRefs is True.
    env.mesh.write_istio("grant.yaml", CART_GRANT);
    env.wait_answer("cart.example.com", "/", &[], 200, Some("cart-cluster1"))
        .await;
    env.wait_condition(NS, "cart", "ResolvedRefs", "True", "ResolvedRefs")
        .await;
    // Removing it refuses again.
    env.mesh.remove_istio_file("grant.yaml");
    env.wait_answer("cart.example.com", "/", &[], 500, None)
        .await;

    // A route in namespace base is not allowed on a listener that takes routes
    // from its own namespace only.
    env.wait_condition(
        "base",
        "direct",
        "Accepted",
        "False",
        "NotAllowedByListeners",
    )
    .await;
    let r = get(env.gw(), "direct.example.com", "/", &[]).await.unwrap();
    assert_eq!(r.status, 404, "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_routes_and_unknown_backend_kinds_are_rejected_alone() {
    let env = Env::start().await;
    // The others keep serving.
    env.wait_answer("shop.example.com", "/v1", &[], 200, Some("web-v1-cluster1"))
        .await;
    // The invalid route is rejected by name, with its field and reason.
    let j = env.cp.json("/debug/configz").await.unwrap();
    let rejected = j["rejected"].as_array().cloned().unwrap_or_default();
    let bad: Vec<_> = rejected
        .iter()
        .filter(|r| r["kind"] == "HTTPRoute" && r["name"] == "bad")
        .collect();
    assert_eq!(bad.len(), 1, "{rejected:?}");
    assert_eq!(bad[0]["field"], "spec.rules[0].matches[0].path.type");
    assert!(
        bad[0]["reason"].as_str().unwrap_or("").contains("Fuzzy"),
        "{:?}",
        bad[0]
    );
    assert!(
        rejected.iter().all(|r| r["name"] == "bad"),
        "only the bad route is rejected: {rejected:?}"
    );
    let r = get(env.gw(), "bad.example.com", "/x", &[]).await.unwrap();
    assert_eq!(r.status, 404);
    // The unknown backend kind: the route stands, that backend answers 500.
    env.wait_answer("bucket.example.com", "/", &[], 500, None)
        .await;
    let c = env
        .wait_condition(NS, "bucket", "ResolvedRefs", "False", "InvalidKind")
        .await;
    assert!(
        c["message"].as_str().unwrap_or("").contains("Bucket"),
        "{c}"
    );

    // crossmesh validate names the same problems and nothing about the rest.
    let out = std::process::Command::new(crossmesh_bin())
        .arg("validate")
        .arg(env.mesh.istio_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}{stderr}");
    assert!(
        !out.status.success(),
        "validate must fail on the bad route: {all}"
    );
    let problems: Vec<&str> = all
        .lines()
        .filter(|l| !l.starts_with("warning:"))
        .filter(|l| l.contains("HTTPRoute"))
        .collect();
    assert_eq!(problems.len(), 1, "{all}");
    assert!(
        problems[0].contains("HTTPRoute shop/bad")
            && problems[0].contains("spec.rules[0].matches[0].path.type"),
        "{all}"
    );
    assert!(
        all.contains("HTTPRoute shop/bucket") && all.contains("InvalidKind"),
        "{all}"
    );
    assert!(
        all.contains("HTTPRoute shop/cart") && all.contains("RefNotPermitted"),
        "{all}"
    );
    assert!(
        all.contains("HTTPRoute base/direct") && all.contains("NotAllowedByListeners"),
        "{all}"
    );
    assert!(!all.contains("HTTPRoute shop/web"), "{all}");
}
