//! Distributed tracing over OTLP/HTTP through a sidecar chain, end to end:
//! the mesh file names an OpenTelemetry provider whose collector is a mesh
//! service (`otel.base`, an OTLP/HTTP receiver in this test decoding
//! `ExportTraceServiceRequest` protobuf), and the seed's gateway, the
//! frontend's sidecar and an order pod's sidecar (real Envoys) report spans.
//!
//! Traffic: client -> gateway -> frontend sidecar (inbound) -> frontend app
//! -> frontend sidecar (outbound) -> order-v3's sidecar (inbound) -> order app
//! -> order-v3's sidecar (outbound) -> stock-v1. Both apps copy Istio's trace
//! headers (`traceparent`, `x-request-id`, ...) onto the request they cause,
//! as Istio requires of applications.
//!
//! Also the Telemetry API: with the mesh default at 0 %, a namespace-wide
//! `Telemetry` in `base` raising `randomSamplingPercentage` to 100 makes
//! base's sidecars report a trace that starts there, while the gateway (in
//! `istio-system`, still at 0 %) reports nothing.

mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Response;
use prost::Message;
use support::envoy::Envoy;
use support::manifests;
use support::net::free_port;
use support::shop::{fqdn, request, Shop, NS, TRACE_HEADERS};

const COLLECTOR_HOST: u8 = 70;
const ORDER_SIDECAR_HOST: u8 = 71;

/// The OTLP messages this test reads (`opentelemetry/proto/collector/trace/v1`,
/// `trace/v1`, `common/v1`, `resource/v1`), with their field numbers; fields
/// not listed are skipped by prost.
mod otlp {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        /// 2 SERVER, 3 CLIENT.
        #[prost(int32, tag = "6")]
        pub kind: i32,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(string, optional, tag = "1")]
        pub string_value: Option<String>,
    }
}

/// One received span, flattened: the resource's `service.name` and the
/// span's string attributes.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    trace_id: String,
    id: String,
    parent: String,
    name: String,
    kind: &'static str,
    attrs: BTreeMap<String, String>,
}

type Spans = Arc<Mutex<Vec<Span>>>;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn strings(kvs: &[otlp::KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .filter_map(|kv| {
            let v = kv.value.as_ref()?.string_value.clone()?;
            Some((kv.key.clone(), v))
        })
        .collect()
}

/// An OTLP/HTTP receiver: `POST /v1/traces`, protobuf body.
async fn collector(ip: Ipv4Addr, port: u16) -> (Spans, tokio::task::JoinHandle<()>) {
    let spans: Spans = Arc::default();
    let listener = tokio::net::TcpListener::bind((ip, port))
        .await
        .unwrap_or_else(|e| panic!("collector bind {ip}:{port}: {e}"));
    async fn receive(State(s): State<Spans>, body: axum::body::Bytes) -> Response<Body> {
        let Ok(req) = otlp::ExportTraceServiceRequest::decode(body) else {
            let mut r = Response::new(Body::from("not an ExportTraceServiceRequest"));
            *r.status_mut() = axum::http::StatusCode::BAD_REQUEST;
            return r;
        };
        let mut got = s.lock().unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .map(|r| strings(&r.attributes))
                .and_then(|a| a.get("service.name").cloned())
                .unwrap_or_default();
            for sp in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                got.push(Span {
                    service: service.clone(),
                    trace_id: hex(&sp.trace_id),
                    id: hex(&sp.span_id),
                    parent: hex(&sp.parent_span_id),
                    name: sp.name,
                    kind: match sp.kind {
                        2 => "SERVER",
                        3 => "CLIENT",
                        _ => "OTHER",
                    },
                    attrs: strings(&sp.attributes),
                });
            }
        }
        let mut r = Response::new(Body::empty());
        r.headers_mut().insert(
            "content-type",
            axum::http::HeaderValue::from_static("application/x-protobuf"),
        );
        r
    }
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(receive))
        .with_state(spans.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (spans, task)
}

/// The order app behind order-v3's sidecar: `/call/SVC/rest` calls
/// `http://<sidecar>:<SVC port>/rest` with `Host: SVC` through its sidecar,
/// copying the trace headers; anything else answers `order-v3`.
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
    let Some(port) = s.ports.get(svc) else {
        return Response::new(Body::from(format!("no service {svc}")));
    };
    let fwd: Vec<(String, String)> = TRACE_HEADERS
        .iter()
        .filter_map(|h| {
            let v = req.headers().get(*h)?.to_str().ok()?;
            Some((h.to_string(), v.to_string()))
        })
        .collect();
    let fwd: Vec<(&str, &str)> = fwd.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let addr = SocketAddr::from((s.sidecar, *port));
    match request(addr, svc, &format!("/{tail}"), &fwd).await {
        Ok(a) => Response::new(Body::from(format!("order-v3>{}", a.body))),
        Err(e) => {
            let mut r = Response::new(Body::from(e));
            *r.status_mut() = axum::http::StatusCode::BAD_GATEWAY;
            r
        }
    }
}

struct Chain {
    shop: Shop,
    spans: Spans,
    _order_sidecar: Envoy,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The shop with the OTLP/HTTP provider as the default at `sampling` %, its
/// collector, and order-v3: an order pod whose sidecar and app continue the
/// chain to stock (a VirtualService sends every request for order to it).
async fn start(sampling: &str) -> Chain {
    let svc_port = free_port();
    let pod_port = free_port();
    let mesh = format!(
        "extensionProviders:
- name: otel
  opentelemetry:
    service: {host}
    port: {svc_port}
    http: {{path: /v1/traces, timeout: 5s}}
defaultProviders: {{tracing: [otel]}}
defaultConfig:
  tracing:
    sampling: {sampling}
",
        host = fqdn("otel")
    );
    let istio = format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: order, namespace: {NS}}}
spec:
  host: order
  subsets:
  - {{name: v3, labels: {{version: v3}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: order, namespace: {NS}}}
spec:
  hosts: [order]
  http:
  - route:
    - destination: {{host: order, subset: v3}}
"
    );
    let mut ip = None;
    let shop = Shop::start_with_mesh(false, 1, &istio, &mesh, |subnet| {
        let addr = subnet.ip(COLLECTOR_HOST);
        ip = Some(addr);
        vec![
            (
                "svc-otel.yaml".into(),
                manifests::service(NS, "otel", svc_port, pod_port, &[("app", "otel")]),
            ),
            (
                "pod-otel.yaml".into(),
                manifests::pod(NS, "otel-0", &[("app", "otel")], addr, pod_port, true, None),
            ),
        ]
    })
    .await;
    let ip = ip.expect("subnet given");
    let (spans, collector_task) = collector(ip, pod_port).await;

    // order-v3: its app on 127.0.0.1, its sidecar on .71 (ingress on the
    // order pods' port, egress on every service port).
    let order_ip = shop.subnet.ip(ORDER_SIDECAR_HOST);
    let app_port = free_port();
    let app_listener = tokio::net::TcpListener::bind(("127.0.0.1", app_port))
        .await
        .expect("bind order app");
    let state = OrderApp {
        sidecar: order_ip,
        ports: shop.ports.clone(),
    };
    let app_task = tokio::spawn(async move {
        let router = axum::Router::new().fallback(order_app).with_state(state);
        let _ = axum::serve(app_listener, router).await;
    });
    let order_sidecar = shop
        .start_order_v3_sidecar(ORDER_SIDECAR_HOST, app_port)
        .await;

    // Every proxy has the collector's endpoint; the frontend's sidecar has
    // order-v3 in the subset's cluster.
    let collector_cluster = format!("outbound|{svc_port}||{}", fqdn("otel"));
    for envoy in [&shop.sidecar, &shop.gateways[0], &order_sidecar] {
        let what = format!("{} has the collector's endpoint", envoy.name);
        support::wait_for(&what, support::CONVERGE, || async {
            let hosts = envoy.cluster_hosts(&collector_cluster).await?;
            if hosts.iter().any(|h| h.ip() == ip) {
                Ok(())
            } else {
                Err(format!("{hosts:?}"))
            }
        })
        .await;
    }
    let v3 = format!("outbound|{}|v3|{}", shop.ports["order"], fqdn("order"));
    shop.wait_hosts(&shop.sidecar, &v3, 1).await;
    Chain {
        shop,
        spans,
        _order_sidecar: order_sidecar,
        _tasks: vec![collector_task, app_task],
    }
}

/// The spans of the trace holding a span whose `http.url` contains `marker`,
/// once there are at least `n`.
async fn trace_of(spans: &Spans, marker: &str, n: usize) -> Vec<Span> {
    let what = format!("the trace of {marker} with {n} spans at the collector");
    support::wait_for(&what, Duration::from_secs(30), || async {
        let all = spans.lock().unwrap().clone();
        let Some(one) = all
            .iter()
            .find(|s| s.attrs.get("http.url").is_some_and(|u| u.contains(marker)))
        else {
            return Err(format!("no span of the request in {all:#?}"));
        };
        let id = one.trace_id.clone();
        let trace: Vec<Span> = all.into_iter().filter(|s| s.trace_id == id).collect();
        if trace.len() >= n {
            Ok(trace)
        } else {
            Err(format!("{} spans so far: {trace:#?}", trace.len()))
        }
    })
    .await
}

fn find<'a>(trace: &'a [Span], service: &str, kind: &str) -> &'a Span {
    let all: Vec<&Span> = trace
        .iter()
        .filter(|s| s.service == service && s.kind == kind)
        .collect();
    assert_eq!(all.len(), 1, "one {kind} span of {service} in {trace:#?}");
    all[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_trace_covers_gateway_and_every_sidecar_hop() {
    let c = start("100").await;
    let shop = &c.shop;
    let a = request(
        shop.gateway(0),
        "shop.example.com",
        "/call/order/call/stock/chain",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body, "order-v3>stock-v1",
        "the chain ran through order-v3 to stock"
    );

    let trace = trace_of(&c.spans, "/call/order/call/stock/chain", 6).await;
    assert_eq!(trace.len(), 6, "{trace:#?}");
    let gw_server = find(&trace, "istio-ingressgateway.istio-system", "SERVER");
    let gw_client = find(&trace, "istio-ingressgateway.istio-system", "CLIENT");
    let fe_in = find(&trace, "frontend.base", "SERVER");
    let fe_out = find(&trace, "frontend.base", "CLIENT");
    let order_in = find(&trace, "order.base", "SERVER");
    let order_out = find(&trace, "order.base", "CLIENT");
    // Parent links: one root, each span the child of the hop before.
    assert_eq!(gw_server.parent, "", "{trace:#?}");
    assert_eq!(gw_client.parent, gw_server.id, "{trace:#?}");
    assert_eq!(fe_in.parent, gw_client.id, "{trace:#?}");
    assert_eq!(fe_out.parent, fe_in.id, "{trace:#?}");
    assert_eq!(order_in.parent, fe_out.id, "{trace:#?}");
    assert_eq!(order_out.parent, order_in.id, "{trace:#?}");
    // Each client span names the cluster of its hop.
    let cluster =
        |svc: &str, subset: &str| format!("outbound|{}|{subset}|{}", shop.ports[svc], fqdn(svc));
    let upstream = |s: &Span| s.attrs.get("upstream_cluster").cloned().unwrap_or_default();
    assert_eq!(upstream(gw_client), cluster("frontend", ""), "{trace:#?}");
    assert_eq!(upstream(fe_out), cluster("order", "v3"), "{trace:#?}");
    assert_eq!(upstream(order_out), cluster("stock", ""), "{trace:#?}");
    // Span names: Istio's route decorators (HOST:PORT/*), the inbound spans
    // taking the caller's.
    let op = |svc: &str| format!("{}:{}/*", fqdn(svc), shop.ports[svc]);
    assert_eq!(gw_server.name, op("frontend"), "{trace:#?}");
    assert_eq!(fe_out.name, op("order"), "{trace:#?}");
    assert_eq!(order_in.name, op("order"), "{trace:#?}");
    assert_eq!(order_out.name, op("stock"), "{trace:#?}");
    // Istio's tags.
    let tag = |s: &Span, k: &str| s.attrs.get(k).cloned().unwrap_or_default();
    assert_eq!(
        tag(order_in, "istio.canonical_service"),
        "order",
        "{trace:#?}"
    );
    assert_eq!(
        tag(order_in, "istio.canonical_revision"),
        "v3",
        "{trace:#?}"
    );
    assert_eq!(
        tag(gw_server, "istio.namespace"),
        "istio-system",
        "{trace:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_raises_sampling_for_one_namespace() {
    let c = start("0").await;
    let shop = &c.shop;
    let frontend_inbound = SocketAddr::from((shop.subnet.ip(2), shop.ports["frontend"]));
    let send = |path: String| async move {
        let via_gw = request(
            shop.gateway(0),
            "shop.example.com",
            &format!("/call/order/call/stock/gw-{path}"),
            &[],
        )
        .await
        .unwrap();
        assert_eq!(via_gw.body, "order-v3>stock-v1");
        // Straight to the frontend's sidecar: the trace starts in `base`.
        let direct = request(
            frontend_inbound,
            "frontend",
            &format!("/call/order/call/stock/direct-{path}"),
            &[],
        )
        .await
        .unwrap();
        assert_eq!(direct.body, "order-v3>stock-v1");
    };
    // At the mesh default of 0 %: nothing, from any proxy.
    for i in 0..3 {
        send(format!("zero-{i}")).await;
    }
    // Envoy's OpenTelemetry tracer flushes every 5 s.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let got = c.spans.lock().unwrap().clone();
    assert!(got.is_empty(), "spans at 0 %: {got:#?}");

    shop.mesh.write_istio(
        "telemetry.yaml",
        &format!(
            "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: tracing, namespace: {NS}}}
spec:
  tracing:
  - randomSamplingPercentage: 100
    customTags:
      team: {{literal: {{value: shop}}}}
"
        ),
    );
    // Until the sidecars have the Telemetry's sampling, requests are not
    // traced: retry until a direct request's trace arrives.
    let mut n = 0;
    let trace = support::wait_for(
        "a trace of a direct request",
        Duration::from_secs(60),
        || {
            n += 1;
            let path = format!("telemetry-{n}");
            let spans = c.spans.clone();
            let send = send.clone();
            async move {
                send(path.clone()).await;
                tokio::time::sleep(Duration::from_secs(6)).await;
                let all = spans.lock().unwrap().clone();
                let marker = format!("direct-{path}");
                let Some(one) = all
                    .iter()
                    .find(|s| s.attrs.get("http.url").is_some_and(|u| u.contains(&marker)))
                else {
                    return Err(format!("no span of {marker} in {all:#?}"));
                };
                let id = one.trace_id.clone();
                let t: Vec<Span> = all.into_iter().filter(|s| s.trace_id == id).collect();
                if t.len() >= 4 {
                    Ok(t)
                } else {
                    Err(format!("{t:#?}"))
                }
            }
        },
    )
    .await;
    // The trace started at the frontend's inbound: base's two sidecars, four spans.
    assert_eq!(trace.len(), 4, "{trace:#?}");
    let fe_in = find(&trace, "frontend.base", "SERVER");
    let fe_out = find(&trace, "frontend.base", "CLIENT");
    let order_in = find(&trace, "order.base", "SERVER");
    let order_out = find(&trace, "order.base", "CLIENT");
    assert_eq!(fe_in.parent, "", "{trace:#?}");
    assert_eq!(fe_out.parent, fe_in.id);
    assert_eq!(order_in.parent, fe_out.id);
    assert_eq!(order_out.parent, order_in.id);
    // The Telemetry's custom tag replaced the mesh's (none here).
    assert_eq!(
        fe_in.attrs.get("team").map(String::as_str),
        Some("shop"),
        "{trace:#?}"
    );
    // The gateway, in istio-system, stays at the mesh's 0 %: none of its spans.
    let all = c.spans.lock().unwrap().clone();
    let gw: Vec<&Span> = all
        .iter()
        .filter(|s| s.service == "istio-ingressgateway.istio-system")
        .collect();
    assert!(gw.is_empty(), "gateway spans: {gw:#?}");
    // Nor did base's sidecars trace the requests through the gateway: its
    // trace context said "not sampled", and sampling follows the trace.
    let via_gw: Vec<&Span> = all
        .iter()
        .filter(|s| s.attrs.get("http.url").is_some_and(|u| u.contains("/gw-")))
        .collect();
    assert!(
        via_gw.is_empty(),
        "spans of requests via the gateway: {via_gw:#?}"
    );
}
