//! The live service graph end to end: real Envoys (the seed's ingress gateway
//! and the frontend's sidecar, bootstrapped by `crossmesh bootstrap`, so with
//! its metrics sink) push their stats to crossmesh, and `/debug/graphz` shows
//! the traffic just sent as edges with the right request counts within
//! seconds; a backend answering 503 raises its edge's error rate.
//!
//! Traffic: client -> gateway -> frontend sidecar (inbound) -> frontend app ->
//! frontend sidecar (outbound) -> order / stock pods. Retries are off on both
//! hops (`retries: {attempts: 0}`), so every request is one upstream request
//! per hop and the counts are exact.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::shop::{fqdn, frontend_vs, request, Shop, NS};

const GATEWAY_NODE: &str = "workload:cluster1/istio-system/istio-ingressgateway";
const FRONTEND_NODE: &str = "workload:cluster1/base/frontend";

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
kind: VirtualService
metadata: {{name: order, namespace: {NS}}}
spec:
  hosts: [order]
  http:
  - route:
    - destination: {{host: order}}
    retries: {{attempts: 0}}
",
        frontend_vs("    retries: {attempts: 0}\n")
    )
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
async fn traffic_through_gateway_and_sidecar_becomes_edges() {
    // Flush every second so the graph follows within seconds (the bootstrap
    // command reads CROSSMESH_STATS_FLUSH_INTERVAL).
    std::env::set_var("CROSSMESH_STATS_FLUSH_INTERVAL", "1");
    let shop = Shop::start(false, 1, &config()).await;
    let gw = shop.gateway(0);

    // 20 requests the frontend passes on to order, all answered 200.
    for i in 0..20 {
        let a = request(gw, "shop.example.com", "/call/order/x", &[])
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(a.status, 200, "request {i}: {}", a.body);
        assert!(a.body.starts_with("order-v"), "{}", a.body);
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
        format!("outbound|{}||{}", shop.ports["order"], fqdn("order"))
    );
    assert_eq!(order["latencyMs"]["samples"], 20, "{order}");
    assert!(order["latencyMs"]["p50"].as_f64().is_some(), "{order}");
    assert_eq!(front["requests"], 20, "{front}");
    assert_eq!(front["errors"], 0, "{front}");
    println!("edges shown {lag:?} after the last request");
    assert!(lag < Duration::from_secs(10), "{lag:?}");

    // 10 requests to stock, the first 4 answered 503 by the stock pod.
    shop.backend("stock-v1").fail_next(4, 503);
    let mut failed = 0;
    for i in 0..10 {
        let a = request(gw, "shop.example.com", "/call/stock/x", &[])
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        if a.status == 503 {
            failed += 1;
        } else {
            assert_eq!((a.status, a.body.as_str()), (200, "stock-v1"));
        }
    }
    assert_eq!(failed, 4, "the stock pod's 503s reach the client");
    let stock = wait_edge(&shop, FRONTEND_NODE, "stock", 10).await;
    assert_eq!(stock["requests"], 10, "{stock}");
    assert_eq!(stock["errors"], 4, "{stock}");
    assert_eq!(stock["errorRate"], 0.4, "{stock}");
    // The frontend passes the 503 on: the gateway's edge sees it too.
    let front = wait_edge(&shop, GATEWAY_NODE, "frontend", 30).await;
    assert_eq!(front["requests"], 30, "{front}");
    assert_eq!(front["errors"], 4, "{front}");
    // The order edge did not change.
    let order = edge(&shop, FRONTEND_NODE, "order").await.unwrap();
    assert_eq!(
        (order["requests"].as_u64(), order["errors"].as_u64()),
        (Some(20), Some(0))
    );

    // Nodes carry the grouping fields, proxies are listed as connected.
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
    let stock_node = node(&format!("service:{}", fqdn("stock")));
    assert_eq!(stock_node["namespace"], NS);
    assert_eq!(stock_node["clusters"], serde_json::json!(["cluster1"]));
    let proxies = g["proxies"].as_array().unwrap();
    assert_eq!(proxies.len(), 2, "{g}");
    assert!(proxies.iter().all(|p| p["connected"] == true), "{g}");

    // A bad window is refused with a reason.
    let (status, body) = shop.cp.get("/debug/graphz?window=5").await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("window"), "{body}");
}
