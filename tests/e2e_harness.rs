//! Self-tests of the shared harness (tests/support), independent of crossmesh's
//! control plane: a real Envoy with a static bootstrap routes by Host to the fake
//! pod backends, the admin helpers see it, and the backend modes behave.

mod support;

use std::time::Duration;

use support::backend::Backend;
use support::envoy::Envoy;
use support::net::{free_port, Subnet};
use support::{http, wait_for};

fn static_bootstrap(
    listen: std::net::SocketAddr,
    a: std::net::SocketAddr,
    b: std::net::SocketAddr,
) -> String {
    let cluster = |name: &str, addr: std::net::SocketAddr| {
        format!(
            "  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {ip}, port_value: {port} }}
",
            ip = addr.ip(),
            port = addr.port()
        )
    };
    format!(
        "admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 0 }}
static_resources:
  listeners:
  - name: http
    address:
      socket_address: {{ address: {lip}, port_value: {lport} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            virtual_hosts:
            - name: a
              domains: [a.example, 'a.example:*']
              routes:
              - match: {{ prefix: / }}
                route: {{ cluster: backend_a }}
            - name: b
              domains: [b.example]
              routes:
              - match: {{ prefix: / }}
                route: {{ cluster: backend_b, retry_policy: {{ retry_on: 5xx, num_retries: 3 }} }}
  clusters:
{ca}{cb}",
        lip = listen.ip(),
        lport = listen.port(),
        ca = cluster("backend_a", a),
        cb = cluster("backend_b", b),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_envoy_routes_by_host_to_fake_pods() {
    let net = Subnet::claim();
    let a = Backend::start(net.ip(11), 0, "pod-a").await;
    let b = Backend::start(net.ip(12), 0, "pod-b").await;
    let listen = net.addr(1, free_port());
    let envoy = Envoy::start("static", &static_bootstrap(listen, a.addr, b.addr)).await;
    envoy.wait_ready(Duration::from_secs(20)).await;

    let r = wait_for("listener up", Duration::from_secs(10), || {
        http::get(listen, "a.example", "/hello?x=1")
    })
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "pod-a"));
    assert_eq!(r.header("x-echo-host"), Some("a.example"));
    assert_eq!(r.header("x-echo-path"), Some("/hello?x=1"));
    assert_eq!(r.header("x-backend"), Some("pod-a"));
    assert_eq!(
        a.seen(),
        vec![("a.example".to_string(), "/hello?x=1".to_string())]
    );

    let r = http::get(listen, "b.example", "/").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "pod-b"));
    assert_eq!(a.requests(), 1);
    assert_eq!(b.requests(), 1);

    // Unknown Host: no virtual host matches, Envoy answers 404 itself.
    let r = http::get(listen, "nope.example", "/").await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(a.requests() + b.requests(), 2);

    // Admin helpers see the static config and endpoints.
    let dump = envoy.config_dump().await;
    let text = dump.to_string();
    assert!(
        text.contains("backend_a") && text.contains("b.example"),
        "{text}"
    );
    assert_eq!(
        envoy.cluster_hosts("backend_a").await.unwrap(),
        vec![a.addr]
    );
    assert_eq!(
        envoy.cluster_hosts("backend_b").await.unwrap(),
        vec![b.addr]
    );
    assert!(
        envoy
            .stat("cluster.backend_a.upstream_rq_total")
            .await
            .unwrap_or(0)
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_fail_and_delay_modes() {
    let net = Subnet::claim();
    let b = Backend::start(net.ip(21), 0, "pod-x").await;
    let listen = net.addr(1, free_port());
    let envoy = Envoy::start("static-modes", &static_bootstrap(listen, b.addr, b.addr)).await;
    envoy.wait_ready(Duration::from_secs(20)).await;

    // Directly: two failures, then success.
    b.fail_next(2, 503);
    let direct = |b: &Backend| http::get(b.addr, "x", "/");
    assert_eq!(direct(&b).await.unwrap().status, 503);
    assert_eq!(direct(&b).await.unwrap().status, 503);
    assert_eq!(direct(&b).await.unwrap().status, 200);

    // Through Envoy's retry policy on b.example: the two 503s are retried away.
    wait_for("listener up", Duration::from_secs(10), || {
        http::get(listen, "a.example", "/")
    })
    .await;
    let before = b.requests();
    b.fail_next(2, 503);
    let r = http::get(listen, "b.example", "/").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "pod-x"));
    assert_eq!(
        b.requests() - before,
        3,
        "two failed attempts and one retry that succeeded"
    );

    // Delay mode.
    b.set_delay(Duration::from_millis(300));
    let t = std::time::Instant::now();
    assert_eq!(direct(&b).await.unwrap().status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[test]
fn subnets_are_distinct_and_released() {
    let a = Subnet::claim();
    let b = Subnet::claim();
    assert_ne!(a.ip(1), b.ip(1));
    let ip = a.ip(1);
    assert!(ip.is_loopback());
    drop(a);
    let c = Subnet::claim();
    assert!(c.ip(1).is_loopback());
}

#[test]
fn parses_envoy_clusters_text() {
    let text = "outbound|80||a.ns.svc.cluster.local::observability_name::outbound|80||a.ns.svc.cluster.local\n\
outbound|80||a.ns.svc.cluster.local::127.0.0.1:8080::cx_active::0\n\
outbound|80||a.ns.svc.cluster.local::127.0.0.1:8080::health_flags::healthy\n\
outbound|80||a.ns.svc.cluster.local::127.0.0.2:8080::cx_active::0\n\
outbound|80||b.ns.svc.cluster.local::127.0.0.3:8080::cx_active::0\n";
    let hosts = support::envoy::parse_cluster_hosts(text, "outbound|80||a.ns.svc.cluster.local");
    assert_eq!(
        hosts,
        vec![
            "127.0.0.1:8080".parse().unwrap(),
            "127.0.0.2:8080".parse().unwrap()
        ]
    );
}
