//! The live service graph end to end: real Envoys (the seed's ingress gateway,
//! the frontend's sidecar and an order pod's sidecar, bootstrapped by
//! `crossmesh bootstrap`, so with its metrics sink) push their stats to
//! crossmesh, and `/debug/graphz` shows the traffic just sent as edges with the
//! right request counts within seconds; a backend answering 503 raises its
//! edge's error rate, on every hop the 503 travels back through.
//!
//! Traffic: client -> gateway -> frontend sidecar (inbound) -> frontend app ->
//! frontend sidecar (outbound) -> order-v3's sidecar (inbound) -> order app
//! -> order-v3's sidecar (outbound) -> stock-v1. Retries are off on every hop
//! (`retries: {attempts: 0}`), so every request is one upstream request per
//! hop and the counts are exact.

mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Response, StatusCode};
use serde_json::Value;
use support::envoy::Envoy;
use support::net::free_port;
use support::shop::{fqdn, frontend_vs, request, Shop, NS, SIDECAR_HOST};

const GATEWAY_NODE: &str = "workload:cluster1/istio-system/istio-ingressgateway";
const FRONTEND_NODE: &str = "workload:cluster1/base/frontend";
const ORDER_NODE: &str = "workload:cluster1/base/order";
/// order-v3's sidecar (and pod) address in the shop's subnet.
const ORDER_SIDECAR_HOST: u8 = 72;

fn config() -> String {
    format!(
        "{}---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: stock, namespace: {NS}}}
spec:
  hosts: [stock]
  http:
  - route:
    - destination: {{host: stock}}
    retries: {{attempts: 0}}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {{name: order, namespace: {NS}}}
spec:
  host: order
  subsets:
  - {{name: v3, labels: {{version: v3}}}}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: order, namespace: {NS}}}
spec:
  hosts: [order]
  http:
  - route:
    - destination: {{host: order, subset: v3}}
    retries: {{attempts: 0}}
",
        frontend_vs("    retries: {attempts: 0}\n")
    )
}

/// The order app behind order-v3's sidecar: `/call/SVC/rest` calls
/// `http://<sidecar>:<SVC port>/rest` with `Host: SVC` through its own
/// sidecar and answers with the callee's status and body; anything else
/// answers `order-v3`.
#[derive(Clone)]
struct OrderApp {
    sidecar: Ipv4Addr,
    ports: BTreeMap<String, u16>,
}

async fn order_app(State(s): State<OrderApp>, req: Request) -> Response<Body> {
    let path = req.uri().path().to_string();
    let Some((svc, tail)) = path
        .strip_prefix("/call/")
        .map(|r| r.split_once('/').unwrap_or((r, "")))
    else {
        return Response::new(Body::from("order-v3"));
    };
    let (status, body) = match s.ports.get(svc) {
        None => (StatusCode::NOT_FOUND, format!("no service {svc}")),
        Some(port) => {
            let addr = SocketAddr::from((s.sidecar, *port));
            match request(addr, svc, &format!("/{tail}"), &[]).await {
                Ok(a) => (
                    StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK),
                    a.body,
                ),
                Err(e) => (StatusCode::BAD_GATEWAY, e),
            }
        }
    };
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r
}

/// order-v3: a pod of `order` on `.72` whose sidecar (a real Envoy, default
/// stats matcher) hands inbound requests to [`order_app`], which calls on
/// through the same sidecar. Returns the sidecar and the app's task.
async fn start_order_v3(shop: &Shop) -> (Envoy, tokio::task::JoinHandle<()>) {
    let ip = shop.subnet.ip(ORDER_SIDECAR_HOST);
    let app_port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", app_port))
        .await
        .expect("bind the order app");
    let state = OrderApp {
        sidecar: ip,
        ports: shop.ports.clone(),
    };
    let app = tokio::spawn(async move {
        let router = axum::Router::new().fallback(order_app).with_state(state);
        let _ = axum::serve(listener, router).await;
    });
    let sidecar = shop
        .start_order_v3_sidecar(ORDER_SIDECAR_HOST, app_port)
        .await;
    let v3 = format!("outbound|{}|v3|{}", shop.ports["order"], fqdn("order"));
    shop.wait_hosts(&shop.sidecar, &v3, 1).await;
    (sidecar, app)
}

/// The edge `source` -> service `svc` on `/debug/graphz` (whole history).
async fn edge(shop: &Shop, source: &str, svc: &str) -> Result<Value, String> {
    let g = shop.cp.json("/debug/graphz?window=600").await?;
    let dest = format!("service:{}", fqdn(svc));
    g["edges"]
        .as_array()
        .and_then(|edges| {
            edges
                .iter()
                .find(|e| e["source"] == source && e["destination"] == dest)
                .cloned()
        })
        .ok_or_else(|| format!("no edge {source} -> {dest} in {g}"))
}

/// Wait until the edge has counted `requests`, then return it.
async fn wait_edge(shop: &Shop, source: &str, svc: &str, requests: u64) -> Value {
    let what = format!("{source} -> {svc} with {requests} requests on /debug/graphz");
    support::wait_for(&what, Duration::from_secs(15), || async move {
        let e = edge(shop, source, svc).await?;
        if e["requests"].as_u64() >= Some(requests) {
            Ok(e)
        } else {
            Err(format!("{e}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_through_gateway_and_sidecar_chain_becomes_edges() {
    // Flush every second so the graph follows within seconds (the bootstrap
    // command reads CROSSMESH_STATS_FLUSH_INTERVAL).
    std::env::set_var("CROSSMESH_STATS_FLUSH_INTERVAL", "1");
    let shop = Shop::start(false, 1, &config()).await;
    let (order_sidecar, _order_app) = start_order_v3(&shop).await;
    let gw = shop.gateway(0);

    // 20 requests the frontend passes on to order (order-v3's app), all 200.
    for i in 0..20 {
        let a = request(gw, "shop.example.com", "/call/order/x", &[])
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(
            (a.status, a.body.as_str()),
            (200, "order-v3"),
            "request {i}"
        );
    }
    let sent = Instant::now();
    let order = wait_edge(&shop, FRONTEND_NODE, "order", 20).await;
    let lag = sent.elapsed();
    let front = wait_edge(&shop, GATEWAY_NODE, "frontend", 20).await;
    assert_eq!(order["requests"], 20, "{order}");
    assert_eq!(order["errors"], 0, "{order}");
    assert_eq!(order["errorRate"], 0.0, "{order}");
    assert_eq!(
        order["envoyCluster"],
        format!("outbound|{}|v3|{}", shop.ports["order"], fqdn("order"))
    );
    assert_eq!(order["subset"], "v3", "{order}");
    assert_eq!(order["latencyMs"]["samples"], 20, "{order}");
    assert!(order["latencyMs"]["p50"].as_f64().is_some(), "{order}");
    assert_eq!(front["requests"], 20, "{front}");
    assert_eq!(front["errors"], 0, "{front}");
    println!("edges shown {lag:?} after the last request");
    assert!(lag < Duration::from_secs(10), "{lag:?}");

    // 10 requests along the chain to stock, the first 4 answered 503 by the
    // stock pod; each hop passes the 503 back.
    shop.backend("stock-v1").fail_next(4, 503);
    let mut failed = 0;
    for i in 0..10 {
        let a = request(gw, "shop.example.com", "/call/order/call/stock/x", &[])
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        if a.status == 503 {
            failed += 1;
        } else {
            assert_eq!((a.status, a.body.as_str()), (200, "stock-v1"));
        }
    }
    assert_eq!(failed, 4, "the stock pod's 503s reach the client");
    // The sidecar hop: order's own proxy -> stock.
    let stock = wait_edge(&shop, ORDER_NODE, "stock", 10).await;
    assert_eq!(stock["requests"], 10, "{stock}");
    assert_eq!(stock["errors"], 4, "{stock}");
    assert_eq!(stock["errorRate"], 0.4, "{stock}");
    assert_eq!(
        stock["envoyCluster"],
        format!("outbound|{}||{}", shop.ports["stock"], fqdn("stock"))
    );
    // The frontend's proxy -> order carried all 30, the 4 failures included.
    let order = wait_edge(&shop, FRONTEND_NODE, "order", 30).await;
    assert_eq!(order["requests"], 30, "{order}");
    assert_eq!(order["errors"], 4, "{order}");
    assert_eq!(order["errorRate"], 0.133, "{order}");
    let front = wait_edge(&shop, GATEWAY_NODE, "frontend", 30).await;
    assert_eq!(front["requests"], 30, "{front}");
    assert_eq!(front["errors"], 4, "{front}");
    // Nobody else called stock.
    assert!(edge(&shop, FRONTEND_NODE, "stock").await.is_err());

    // Nodes carry the grouping fields; each edge's source is the workload of
    // the proxy that reported it.
    let g = shop.cp.json("/debug/graphz").await.unwrap();
    let nodes = g["nodes"].as_array().unwrap();
    let node = |id: &str| {
        nodes
            .iter()
            .find(|n| n["id"] == id)
            .unwrap_or_else(|| panic!("no node {id} in {g}"))
    };
    assert_eq!(node(GATEWAY_NODE)["role"], "gateway");
    assert_eq!(node(FRONTEND_NODE)["cluster"], "cluster1");
    assert_eq!(node(FRONTEND_NODE)["role"], "sidecar");
    assert_eq!(node(ORDER_NODE)["role"], "sidecar");
    assert_eq!(node(ORDER_NODE)["workload"], "order");
    let stock_node = node(&format!("service:{}", fqdn("stock")));
    assert_eq!(stock_node["namespace"], NS);
    assert_eq!(stock_node["clusters"], serde_json::json!(["cluster1"]));
    let proxies = g["proxies"].as_array().unwrap();
    let reporter = |id: String| {
        proxies
            .iter()
            .find(|p| p["id"] == id.as_str())
            .unwrap_or_else(|| panic!("no proxy {id} in {g}"))
    };
    let frontend_proxy = reporter(format!(
        "sidecar~{}~frontend-v1.{NS}~{NS}.svc.cluster.local",
        shop.subnet.ip(SIDECAR_HOST)
    ));
    assert_eq!(frontend_proxy["node"], FRONTEND_NODE, "{g}");
    let order_proxy = reporter(format!(
        "sidecar~{}~order-v3.{NS}~{NS}.svc.cluster.local",
        shop.subnet.ip(ORDER_SIDECAR_HOST)
    ));
    assert_eq!(order_proxy["node"], ORDER_NODE, "{g}");
    assert_eq!(proxies.len(), 3, "{g}");
    assert!(proxies.iter().all(|p| p["connected"] == true), "{g}");
    drop(order_sidecar);

    // A bad window is refused with a reason.
    let (status, body) = shop.cp.get("/debug/graphz?window=5").await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("window"), "{body}");
}
