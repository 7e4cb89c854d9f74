//! Distributed tracing end to end: the mesh file names a Zipkin provider
//! (`extensionProviders` + `defaultProviders.tracing`) whose collector is a
//! mesh service (`zipkin.base`, a Zipkin v2 JSON receiver in this test), and
//! the seed's gateway and the frontend's sidecar (real Envoys) report spans.
//!
//! Traffic: client -> gateway -> frontend sidecar (inbound) -> frontend app
//! (copies Istio's trace headers, as Istio requires of applications) ->
//! frontend sidecar (outbound) -> order pod. At 100 % sampling one trace holds
//! the gateway's server span, its upstream (client) span, the sidecar's
//! inbound span and its outbound span to order, each the child of the one
//! before; at 0 % the collector receives nothing.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use serde_json::Value;
use support::manifests;
use support::net::free_port;
use support::shop::{fqdn, request, Shop, NS};

const COLLECTOR_HOST: u8 = 70;

type Spans = Arc<Mutex<Vec<Value>>>;

/// A Zipkin v2 receiver: `POST /api/v2/spans` with a JSON array of spans.
async fn collector(ip: std::net::Ipv4Addr, port: u16) -> (Spans, tokio::task::JoinHandle<()>) {
    let spans: Spans = Arc::default();
    let listener = tokio::net::TcpListener::bind((ip, port))
        .await
        .unwrap_or_else(|e| panic!("collector bind {ip}:{port}: {e}"));
    async fn receive(State(s): State<Spans>, body: axum::body::Bytes) -> &'static str {
        if let Ok(Value::Array(batch)) = serde_json::from_slice::<Value>(&body) {
            s.lock().unwrap().extend(batch);
        }
        ""
    }
    let app = axum::Router::new()
        .route("/api/v2/spans", axum::routing::post(receive))
        .with_state(spans.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (spans, task)
}

/// The shop with the Zipkin provider at `sampling` %, and its collector.
async fn start(sampling: &str) -> (Shop, Spans, tokio::task::JoinHandle<()>, String) {
    let svc_port = free_port();
    let pod_port = free_port();
    let mesh = format!(
        "extensionProviders:
- name: zipkin
  zipkin: {{service: {host}, port: {svc_port}}}
defaultProviders: {{tracing: [zipkin]}}
defaultConfig:
  tracing:
    sampling: {sampling}
    customTags:
      tenant: {{header: {{name: x-tenant, defaultValue: none}}}}
",
        host = fqdn("zipkin")
    );
    let mut ip = None;
    let shop = Shop::start_with_mesh(false, 1, "", &mesh, |subnet| {
        let addr = subnet.ip(COLLECTOR_HOST);
        ip = Some(addr);
        vec![
            (
                "svc-zipkin.yaml".into(),
                manifests::service(NS, "zipkin", svc_port, pod_port, &[("app", "zipkin")]),
            ),
            (
                "pod-zipkin.yaml".into(),
                manifests::pod(
                    NS,
                    "zipkin-0",
                    &[("app", "zipkin")],
                    addr,
                    pod_port,
                    true,
                    None,
                ),
            ),
        ]
    })
    .await;
    let ip = ip.expect("subnet given");
    let (spans, task) = collector(ip, pod_port).await;
    let cluster = format!("outbound|{svc_port}||{}", fqdn("zipkin"));
    // Spans go to the collector's mesh cluster: wait until both proxies have
    // its endpoint.
    for envoy in std::iter::once(&shop.sidecar).chain(shop.gateways.iter()) {
        let what = format!("{} has the collector's endpoint in {cluster}", envoy.name);
        support::wait_for(&what, support::CONVERGE, || async {
            let hosts = envoy.cluster_hosts(&cluster).await?;
            if hosts.iter().any(|h| h.ip() == ip) {
                Ok(())
            } else {
                Err(format!("{hosts:?}"))
            }
        })
        .await;
    }
    (shop, spans, task, cluster)
}

fn tag<'a>(span: &'a Value, key: &str) -> &'a str {
    span["tags"][key].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_covers_gateway_and_sidecar_hops() {
    let (shop, spans, _task, _) = start("100").await;
    let gw = shop.gateway(0);
    let a = request(
        gw,
        "shop.example.com",
        "/call/order/traced",
        &[("x-tenant", "t1")],
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.starts_with("order-v"), "{}", a.body);

    let order_op = format!("{}:{}/*", fqdn("order"), shop.ports["order"]);
    let frontend_op = format!("{}:{}/*", fqdn("frontend"), shop.ports["frontend"]);
    // The trace of this request: the gateway's server span names the path.
    let trace = support::wait_for(
        "the request's trace with 4 spans at the collector",
        Duration::from_secs(30),
        || async {
            let all = spans.lock().unwrap().clone();
            let root = all
                .iter()
                .find(|s| tag(s, "http.url").contains("/call/order/traced"))
                .ok_or_else(|| format!("no span of the request in {all:?}"))?;
            let id = root["traceId"].clone();
            let trace: Vec<Value> = all.into_iter().filter(|s| s["traceId"] == id).collect();
            if trace.len() >= 4 {
                Ok(trace)
            } else {
                Err(format!("{} spans so far: {trace:?}", trace.len()))
            }
        },
    )
    .await;
    let dump = serde_json::to_string_pretty(&trace).unwrap();
    assert_eq!(trace.len(), 4, "{dump}");
    let find = |service: &str, kind: &str| {
        trace
            .iter()
            .find(|s| tag(s, "istio.canonical_service") == service && s["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} span of {service} in {dump}"))
    };
    let gw_server = find("istio-ingressgateway", "SERVER");
    let gw_client = find("istio-ingressgateway", "CLIENT");
    let fe_inbound = find("frontend", "SERVER");
    let fe_outbound = find("frontend", "CLIENT");
    // Parent links: gateway server -> gateway upstream -> sidecar inbound ->
    // sidecar outbound, one root.
    assert!(gw_server.get("parentId").is_none(), "{dump}");
    assert_eq!(gw_client["parentId"], gw_server["id"], "{dump}");
    assert_eq!(fe_inbound["parentId"], gw_client["id"], "{dump}");
    assert_eq!(fe_outbound["parentId"], fe_inbound["id"], "{dump}");
    // Span names as Istio's route decorators: HOST:PORT/*.
    assert_eq!(gw_server["name"], frontend_op, "{dump}");
    assert_eq!(fe_outbound["name"], order_op, "{dump}");
    // Tags: Istio's service tags and the mesh's custom tag from a header.
    assert_eq!(tag(gw_server, "istio.namespace"), "istio-system", "{dump}");
    assert_eq!(tag(fe_outbound, "istio.namespace"), NS, "{dump}");
    assert_eq!(tag(fe_inbound, "tenant"), "t1", "{dump}");
    // The app does not copy x-tenant: the outbound span has the tag's default.
    assert_eq!(tag(fe_outbound, "tenant"), "none", "{dump}");
    // The gateway's upstream span is Envoy's router span to the frontend's
    // cluster; the sidecar's inbound span takes the gateway's operation name
    // (`x-envoy-decorator-operation`).
    assert_eq!(fe_inbound["name"], frontend_op, "{dump}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_percent_sampling_reports_nothing() {
    let (shop, spans, _task, cluster) = start("0").await;
    let gw = shop.gateway(0);
    for i in 0..5 {
        let a = request(gw, "shop.example.com", "/call/order/untraced", &[])
            .await
            .unwrap();
        assert_eq!(a.status, 200, "request {i}: {}", a.body);
    }
    // Envoy's Zipkin tracer flushes every 5 s; a sampled span would have
    // arrived within 8 s (the 100 % test sees its spans in that time).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let got = spans.lock().unwrap().clone();
    assert!(got.is_empty(), "spans at 0 % sampling: {got:?}");
    // The collector was reachable all along (the absence is the sampling's).
    assert!(!shop.gateways[0]
        .cluster_hosts(&cluster)
        .await
        .unwrap()
        .is_empty());
}
