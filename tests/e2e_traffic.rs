//! Issue 4, end to end: the traffic-management steps of seed 004 (Tencent's mesh
//! quick start) with real Envoy proxies: a NONE-mode frontend sidecar calling the
//! e-commerce services and ingress gateways routing to the frontend, asserted on
//! real HTTP responses from pods that name themselves (`tests/support/shop.rs`).
//! Every test waits on conditions, never on fixed sleeps.

mod support;

use std::time::Duration;

use support::shop::{fqdn, frontend_vs, request, Shop, NS};
use support::{wait_for, CONVERGE};

/// A 1 s fault delay as measured by the client: Envoy's timer may fire a
/// millisecond early relative to our clock (seen: 998.98 ms), so allow 10 ms.
const AT_LEAST_DELAY: Duration = Duration::from_millis(990);

fn order_rules() -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {{name: order, namespace: {NS}}}
spec:
  host: order
  subsets:
    - name: v1
      labels:
        version: v1
    - name: v2
      labels:
        version: v2
  exportTo:
    - '*'
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: order-vs, namespace: {NS}}}
spec:
  hosts:
    - order.base.svc.cluster.local
  http:
    - match:
      - headers:
          cookie:
            exact: vip=false
      route:
        - destination:
            host: order.base.svc.cluster.local
            subset: v1
    - match:
      - headers:
          cookie:
            exact: vip=true
      route:
        - destination:
            host: order.base.svc.cluster.local
            subset: v2
"
    )
}

/// Seed 004 "cookie-based multi-version routing", through the frontend sidecar.
async fn cookie_routes_order_versions(sotw: bool) {
    let shop = Shop::start(sotw, 1, &order_rules()).await;
    shop.wait_body("order", &[("cookie", "vip=true")], "order-v2")
        .await;
    for _ in 0..10 {
        let a = shop.call("order", "/", &[("cookie", "vip=true")]).await;
        assert_eq!((a.status, a.body.as_str()), (200, "order-v2"));
        let a = shop.call("order", "/", &[("cookie", "vip=false")]).await;
        assert_eq!((a.status, a.body.as_str()), (200, "order-v1"));
    }
    // The FQDN and NAME.NS also reach the service (sidecar domains).
    for host in [fqdn("order"), format!("order.{NS}")] {
        let a = request(shop.egress("order"), &host, "/", &[("cookie", "vip=true")])
            .await
            .unwrap();
        assert_eq!(
            (a.status, a.body.as_str()),
            (200, "order-v2"),
            "Host {host}"
        );
    }
    // No cookie: no route matches (the seed's VirtualService has no default).
    let a = shop.call("order", "/", &[]).await;
    assert_eq!(a.status, 404, "{a:?}");
    // Services without a VirtualService get the default route (all pods).
    let a = shop.call("stock", "/", &[]).await;
    assert_eq!((a.status, a.body.as_str()), (200, "stock-v1"));
    // The gateway reaches the frontend through its sidecar's ingress listener,
    // and the frontend app reaches order through the sidecar's egress.
    let gw = shop.gateway(0);
    wait_for("gateway answers frontend-v1", CONVERGE, || async move {
        let a = request(gw, "shop.example.com", "/", &[]).await?;
        (a.status == 200 && a.body == "frontend-v1")
            .then_some(())
            .ok_or(format!("{} {:?}", a.status, a.body))
    })
    .await;
    let a = request(
        gw,
        "shop.example.com",
        "/call/order/",
        &[("cookie", "vip=true")],
    )
    .await
    .unwrap();
    assert_eq!((a.status, a.body.as_str()), (200, "order-v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_routes_order_versions_delta() {
    cookie_routes_order_versions(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_routes_order_versions_sotw() {
    cookie_routes_order_versions(true).await;
}

fn product_weights(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {{name: product, namespace: {NS}}}
spec:
  host: product
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v2
    labels: {{version: v2}}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: product-vs, namespace: {NS}}}
spec:
  hosts: [product]
  http:
  - route:
    - destination: {{host: product, subset: v1}}
      weight: {v1}
    - destination: {{host: product, subset: v2}}
      weight: {v2}
"
    )
}

/// Seed 004 canary: 50/50 gives 40-60% of 1,000 requests to v2; then 0/100.
async fn canary_weights(sotw: bool) {
    let shop = Shop::start(sotw, 1, &product_weights(50, 50)).await;
    shop.wait_body("product", &[], "product-v2").await;
    let mut v2 = 0;
    for _ in 0..1000 {
        let a = shop.call("product", "/", &[]).await;
        assert_eq!(a.status, 200, "{a:?}");
        if a.body == "product-v2" {
            v2 += 1;
        } else {
            assert_eq!(a.body, "product-v1");
        }
    }
    assert!((400..=600).contains(&v2), "v2 got {v2} of 1000");
    shop.mesh.write_istio("test.yaml", &product_weights(0, 100));
    // Wait until v1 is gone from 20 answers in a row, then check 200 more.
    wait_for("product 0/100 in force", CONVERGE, || async {
        for _ in 0..20 {
            let a = shop.call("product", "/", &[]).await;
            if a.body != "product-v2" {
                return Err(a.body);
            }
        }
        Ok(())
    })
    .await;
    for _ in 0..200 {
        assert_eq!(shop.call("product", "/", &[]).await.body, "product-v2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_weights_delta() {
    canary_weights(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_weights_sotw() {
    canary_weights(true).await;
}

/// Seed 004 fault injection and timeout, with short times: the frontend's
/// sidecar delays calls to user by 1 s (`fixedDelay`), so a call takes at least
/// 1 s; the gateway's frontend route has `timeout: 300ms`, so the same call
/// through the gateway gets 504 after about 300 ms. Then an abort at 50%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_delay_timeout_and_abort() {
    let user_fault = |fault: &str| {
        format!(
            "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: user-vs, namespace: {NS}}}
spec:
  hosts: [user]
  http:
  - fault:
{fault}    route:
    - destination: {{host: user}}
---
{}",
            frontend_vs("    timeout: 300ms\n")
        )
    };
    let delay = "      delay:\n        fixedDelay: 1s\n        percentage: {value: 100}\n";
    let shop = Shop::start(false, 1, &user_fault(delay)).await;
    wait_for("user delayed by the fault", CONVERGE, || async {
        let a = shop.call("user", "/", &[]).await;
        (a.status == 200 && a.elapsed >= AT_LEAST_DELAY)
            .then_some(())
            .ok_or(format!("{} after {:?}", a.status, a.elapsed))
    })
    .await;
    let a = shop.call("user", "/", &[]).await;
    assert!(a.body.starts_with("user-v1"), "{a:?}");
    assert!(a.elapsed >= AT_LEAST_DELAY, "{:?}", a.elapsed);
    // Through the gateway (timeout 300ms) -> frontend -> sidecar (delay 1s).
    let gw = shop.gateway(0);
    let a = wait_for("gateway times out with 504", CONVERGE, || async move {
        let a = request(gw, "shop.example.com", "/call/user/", &[]).await?;
        (a.status == 504)
            .then_some(a.clone())
            .ok_or(format!("{} {:?} after {:?}", a.status, a.body, a.elapsed))
    })
    .await;
    assert!(
        a.elapsed >= Duration::from_millis(280) && a.elapsed < Duration::from_millis(950),
        "504 after {:?}",
        a.elapsed
    );
    // Abort 503 for 50% of requests.
    let abort = "      abort:\n        httpStatus: 503\n        percentage: {value: 50}\n";
    shop.mesh.write_istio("test.yaml", &user_fault(abort));
    wait_for("abort in force", CONVERGE, || async {
        let a = shop.call("user", "/", &[]).await;
        (a.status == 503 && a.elapsed < Duration::from_millis(900))
            .then_some(())
            .ok_or(format!("{} after {:?}", a.status, a.elapsed))
    })
    .await;
    let mut aborted = 0;
    for _ in 0..400 {
        let a = shop.call("user", "/", &[]).await;
        match a.status {
            503 => {
                aborted += 1;
                assert_eq!(a.body, "fault filter abort");
            }
            200 => assert!(a.body.starts_with("user-v1")),
            s => panic!("unexpected {s}"),
        }
    }
    assert!((140..=260).contains(&aborted), "aborted {aborted} of 400");
}

/// Seed 004 session affinity: consistent hash on the `UserID` header keeps one
/// user on one cart pod; different users spread over the pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_userid() {
    let dr = format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {{name: cart, namespace: {NS}}}
spec:
  host: cart
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpHeaderName: UserID
"
    );
    let shop = Shop::start(false, 1, &dr).await;
    shop.wait_hosts(
        &shop.sidecar,
        &format!("outbound|{}||{}", shop.ports["cart"], fqdn("cart")),
        3,
    )
    .await;
    // Wait for the ring-hash cluster to be in force: one user sticks.
    wait_for("cart sticky for user 1", CONVERGE, || async {
        let first = shop.call("cart", "/", &[("UserID", "1")]).await.body;
        for _ in 0..10 {
            let b = shop.call("cart", "/", &[("UserID", "1")]).await.body;
            if b != first {
                return Err(format!("{first} then {b}"));
            }
        }
        Ok(())
    })
    .await;
    let mut pods = std::collections::BTreeSet::new();
    for user in 1..=20 {
        let id = user.to_string();
        let first = shop.call("cart", "/", &[("UserID", &id)]).await.body;
        assert!(first.starts_with("cart-"), "{first}");
        for _ in 0..(if user == 1 { 50 } else { 5 }) {
            assert_eq!(
                shop.call("cart", "/", &[("UserID", &id)]).await.body,
                first,
                "user {id}"
            );
        }
        pods.insert(first);
    }
    assert!(pods.len() >= 2, "20 users all on {pods:?}");
}

/// Seed 004 connection-pool limits of 1: concurrent requests overflow with 503
/// and `x-envoy-overloaded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_pool_limits_overflow() {
    let dr = format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {{name: stock, namespace: {NS}}}
spec:
  host: stock
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 1
      http:
        http1MaxPendingRequests: 1
        maxRequestsPerConnection: 1
"
    );
    let shop = Shop::start(false, 1, &dr).await;
    shop.wait_body("stock", &[], "stock-v1").await;
    shop.backend("stock-v1")
        .set_delay(Duration::from_millis(500));
    let addr = shop.egress("stock");
    let answers = futures_join(
        (0..8)
            .map(|_| async move { request(addr, "stock", "/", &[]).await.unwrap() })
            .collect(),
    )
    .await;
    let overflow: Vec<_> = answers
        .iter()
        .filter(|a| a.status == 503 && a.header("x-envoy-overloaded") == Some("true"))
        .collect();
    let ok = answers.iter().filter(|a| a.status == 200).count();
    assert!(ok >= 1, "{answers:?}");
    assert!(!overflow.is_empty(), "no overflow among {answers:?}");
}

async fn futures_join<F: std::future::Future + Send + 'static>(fs: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

/// Seed 004 outlier detection (deprecated `consecutiveErrors`, mapped to gateway
/// errors as Istio does): a user pod answering 503 is ejected and traffic moves
/// to the other pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_failing_pod() {
    let rules = format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {{name: user, namespace: {NS}}}
spec:
  host: user
  trafficPolicy:
    outlierDetection:
      consecutiveErrors: 2
      interval: 1s
      baseEjectionTime: 60s
      maxEjectionPercent: 100
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: user-vs, namespace: {NS}}}
spec:
  hosts: [user]
  http:
  - route:
    - destination: {{host: user}}
    retries:
      attempts: 0
"
    );
    let shop = Shop::start(false, 1, &rules).await;
    shop.wait_body("user", &[], "user-v1-b").await;
    shop.backend("user-v1-a").fail_next(1_000_000, 503);
    // Failures are seen until user-v1-a is ejected; then every answer is b.
    wait_for("user-v1-a ejected", CONVERGE, || async {
        for _ in 0..20 {
            let a = shop.call("user", "/", &[]).await;
            if a.status != 200 || a.body != "user-v1-b" {
                return Err(format!("{} {}", a.status, a.body));
            }
        }
        Ok(())
    })
    .await;
    let failed = shop.backend("user-v1-a").requests();
    assert!(failed >= 2, "user-v1-a saw {failed} requests");
    let ejected = shop
        .sidecar
        .stat(&format!(
            "cluster.outbound|{}||{}.outlier_detection.ejections_enforced_total",
            shop.ports["user"],
            fqdn("user")
        ))
        .await;
    assert!(ejected.unwrap_or(0) >= 1, "ejections: {ejected:?}");
}

/// Retries recover from a pod that fails once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_recover_from_one_failure() {
    let rules = format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: stock-vs, namespace: {NS}}}
spec:
  hosts: [stock]
  http:
  - route:
    - destination: {{host: stock}}
    retries:
      attempts: 2
      perTryTimeout: 2s
      retryOn: 5xx
"
    );
    let shop = Shop::start(false, 1, &rules).await;
    shop.wait_body("stock", &[], "stock-v1").await;
    let before = shop.backend("stock-v1").requests();
    shop.backend("stock-v1").fail_next(1, 500);
    let a = shop.call("stock", "/", &[]).await;
    assert_eq!((a.status, a.body.as_str()), (200, "stock-v1"));
    assert_eq!(
        shop.backend("stock-v1").requests() - before,
        2,
        "one failure, one retry"
    );
}

/// Redirect, rewrite and header manipulation are visible in responses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_rewrite_and_headers() {
    let rules = format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: product-vs, namespace: {NS}}}
spec:
  hosts: [product]
  http:
  - match:
    - uri: {{prefix: /old}}
    redirect:
      uri: /new
      authority: shop.example.com
  - match:
    - uri: {{prefix: /api/v1/}}
    rewrite:
      uri: /items/
      authority: product-internal
    route:
    - destination: {{host: product, subset: v2}}
  - route:
    - destination: {{host: product, subset: v1}}
    headers:
      request:
        set: {{x-mesh: crossmesh}}
        remove: [x-secret]
      response:
        add: {{x-served-by: product}}
        remove: [x-echo-x-secret]
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {{name: product, namespace: {NS}}}
spec:
  host: product
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v2
    labels: {{version: v2}}
"
    );
    let shop = Shop::start(false, 1, &rules).await;
    shop.wait_body("product", &[], "product-v1").await;
    let a = shop.call("product", "/old/x", &[]).await;
    assert_eq!(a.status, 301, "{a:?}");
    assert_eq!(a.header("location"), Some("http://shop.example.com/new"));
    let a = shop.call("product", "/api/v1/42", &[]).await;
    assert_eq!((a.status, a.body.as_str()), (200, "product-v2"));
    assert_eq!(a.header("x-echo-path"), Some("/items/42"));
    assert_eq!(a.header("x-echo-host"), Some("product-internal"));
    let a = shop.call("product", "/", &[("x-secret", "s3cret")]).await;
    assert_eq!((a.status, a.body.as_str()), (200, "product-v1"));
    assert_eq!(a.header("x-echo-x-mesh"), Some("crossmesh"));
    assert_eq!(a.header("x-served-by"), Some("product"));
    assert_eq!(a.header("x-echo-x-secret"), None);
}

/// Seed 004 "just-in-time access": a second gateway with other labels gets only
/// its own Gateway, and the frontend VirtualService bound to both serves through
/// both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_route_to_the_frontend() {
    let shop = Shop::start(true, 2, "").await;
    for i in 0..2 {
        let gw = shop.gateway(i);
        wait_for(
            &format!("gateway {i} answers frontend-v1"),
            CONVERGE,
            || async move {
                let a = request(gw, "shop.example.com", "/", &[]).await?;
                (a.status == 200 && a.body == "frontend-v1")
                    .then_some(())
                    .ok_or(format!("{} {:?}", a.status, a.body))
            },
        )
        .await;
    }
    // Each gateway listens only on its own Gateway's port.
    for (i, g) in shop.gateways.iter().enumerate() {
        let names = g.listener_names().await;
        let own = format!("0.0.0.0_{}", shop.gw_ports[i]);
        let other = format!("0.0.0.0_{}", shop.gw_ports[1 - i]);
        assert!(
            names.contains(&own) && !names.contains(&other),
            "gateway {i}: {names:?}"
        );
    }
}

/// The NACK path with a real Envoy: a regex RE2 accepts and crossmesh's
/// validation accepts, but whose compiled program exceeds Envoy's default
/// `re2.max_program_size.error_level` (32,768 as Istio sets it), so Envoy rejects the route config. `/debug/syncz`
/// shows Envoy's error text and `pilot_total_xds_rejects` counts it; the
/// sidecar keeps serving its last good config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_nack_is_reported() {
    let shop = Shop::start(false, 1, &order_rules()).await;
    shop.wait_body("order", &[("cookie", "vip=true")], "order-v2")
        .await;
    // Above the 32,768 that `crossmesh bootstrap` allows (Istio's runtime),
    // with every count within RE2's repetition limit that validation checks.
    let big = "[a-z]{0,900}".repeat(40);
    let bad = order_rules().replace("exact: vip=true", &format!("regex: \"{big}\""));
    shop.mesh.write_istio("test.yaml", &bad);
    let cp = &shop.cp;
    let text = wait_for("syncz shows a NACK", CONVERGE, || async move {
        let j = cp.json("/debug/syncz").await?.to_string();
        if j.contains("program size") {
            Ok(j)
        } else {
            Err(j)
        }
    })
    .await;
    assert!(text.contains("sidecar~"), "{text}");
    let (_, metrics) = cp.get("/metrics").await.unwrap();
    // The route configuration was rejected: RDS NACKs are counted (this
    // test's crossmesh process is its own, so nothing else adds to it).
    let rds_rejects = metrics
        .lines()
        .find_map(|l| {
            let v = l.strip_prefix("pilot_total_xds_rejects{type=\"rds\"} ")?;
            v.parse::<f64>().ok()
        })
        .unwrap_or_else(|| panic!("no RDS reject series: {metrics}"));
    assert!(rds_rejects >= 1.0, "{metrics}");
    // Last good config still in force, checked on the route the bad config
    // changed: applied, `vip=true` would match no route (404); the last good
    // config still sends it to v2. The unchanged `vip=false` route stays on v1.
    for _ in 0..3 {
        let a = shop.call("order", "/", &[("cookie", "vip=true")]).await;
        assert_eq!((a.status, a.body.as_str()), (200, "order-v2"), "{a:?}");
        let a = shop.call("order", "/", &[("cookie", "vip=false")]).await;
        assert_eq!((a.status, a.body.as_str()), (200, "order-v1"), "{a:?}");
    }
}
