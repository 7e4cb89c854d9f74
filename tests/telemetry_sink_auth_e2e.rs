//! The metrics sink's identity check (docs/OBSERVABILITY.md, docs/SECURITY.md):
//! in a mesh that serves the TLS xDS port, a stats report counts only for the
//! proxy its token proves. `crossmesh serve` (the real binary) with a TLS xDS
//! port and a `tokenIssuer` whose key is made here; a raw gRPC client plays
//! Envoy's `envoy.stat_sinks.metrics_service`.
//!
//! - On the TLS port, proxy A's token with a node claiming proxy B (another
//!   service account, or another pod of A's) is refused with
//!   `PERMISSION_DENIED` and counted; nothing about B reaches the graph.
//! - A's stream is recorded as A, with A's proven SPIFFE identity, even when a
//!   later message of that stream carries an `identifier` naming B.
//! - On the plaintext port of that mesh a report is refused, whoever it
//!   claims to be: nothing there proves who sends it.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use envoy_types::pb::envoy::service::metrics::v3::stream_metrics_message::Identifier;
use envoy_types::pb::envoy::service::metrics::v3::StreamMetricsMessage;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as PbValue};
use envoy_types::pb::io::prometheus::client::{Counter, Metric, MetricFamily, MetricType};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use support::control_plane::ControlPlane;
use support::manifests::Mesh;
use support::token_issuer::{TokenIssuer, AUDIENCE};
use support::wait_for;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const NS: &str = "shop";
const ORDER: &str = "outbound|8080||order.shop.svc.cluster.local";
const STOCK: &str = "outbound|8080||stock.shop.svc.cluster.local";

fn s(v: &str) -> PbValue {
    PbValue {
        kind: Some(Kind::StringValue(v.into())),
    }
}

/// Istio's node of sidecar `pod` (workload `app`, service account `sa`) in
/// cluster1.
fn node(pod: &str, app: &str, sa: &str, ip: &str) -> Node {
    let labels = HashMap::from([("app".to_string(), s(app))]);
    let fields = HashMap::from([
        ("NAMESPACE".to_string(), s(NS)),
        ("SERVICE_ACCOUNT".to_string(), s(sa)),
        ("CLUSTER_ID".to_string(), s("cluster1")),
        (
            "LABELS".to_string(),
            PbValue {
                kind: Some(Kind::StructValue(Struct { fields: labels })),
            },
        ),
    ]);
    Node {
        id: format!("sidecar~{ip}~{pod}.{NS}~{NS}.svc.cluster.local"),
        cluster: format!("{app}.{NS}"),
        metadata: Some(Struct { fields }),
        ..Default::default()
    }
}

fn a_node() -> Node {
    node("a-0", "a", "a", "10.1.0.1")
}

/// One flush: `requests` to the Envoy cluster `cluster`.
fn flush(identifier: Option<Node>, cluster: &str, requests: f64) -> StreamMetricsMessage {
    StreamMetricsMessage {
        identifier: identifier.map(|n| Identifier { node: Some(n) }),
        envoy_metrics: vec![MetricFamily {
            name: Some(format!("cluster.{cluster}.upstream_rq_total")),
            r#type: Some(MetricType::Counter as i32),
            metric: vec![Metric {
                counter: Some(Counter {
                    value: Some(requests),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// An open `StreamMetrics` call: send flushes on `tx`; `done` is the call's end.
struct Stream {
    tx: mpsc::Sender<StreamMetricsMessage>,
    done: tokio::task::JoinHandle<Result<(), tonic::Status>>,
}

fn open(ch: tonic::transport::Channel, token: Option<&str>) -> Stream {
    let (tx, rx) = mpsc::channel(4);
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header value"),
        );
    }
    let done = tokio::spawn(async move {
        MetricsServiceClient::new(ch)
            .stream_metrics(req)
            .await
            .map(|_| ())
    });
    Stream { tx, done }
}

/// Send `first` on a new stream and return how the call ended (a refused
/// stream ends without the client closing it).
async fn refused(
    ch: tonic::transport::Channel,
    token: Option<&str>,
    first: StreamMetricsMessage,
) -> tonic::Status {
    let st = open(ch, token);
    st.tx.send(first).await.expect("send the first flush");
    let r = tokio::time::timeout(Duration::from_secs(10), st.done)
        .await
        .expect("the refused stream ends within 10 s")
        .expect("call task");
    drop(st.tx);
    r.expect_err("the report is refused")
}

async fn graph(cp: &ControlPlane) -> Value {
    cp.json("/debug/graphz?window=600").await.unwrap()
}

fn proxy_ids(g: &Value) -> Vec<String> {
    g["proxies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["id"].as_str().map(str::to_string))
        .collect()
}

/// The requests counted on the edge from workload `app` to `cluster`, if any.
fn edge_requests(g: &Value, app: &str, cluster: &str) -> Option<u64> {
    let source = format!("workload:cluster1/{NS}/{app}");
    g["edges"]
        .as_array()?
        .iter()
        .find(|e| e["source"] == source.as_str() && e["envoyCluster"] == cluster)?["requests"]
        .as_u64()
}

async fn refusals(cp: &ControlPlane, reason: &str) -> u64 {
    let (_, text) = cp.get("/metrics").await.unwrap();
    let name = format!("citadel_server_authentication_failure_count{{reason=\"{reason}\"}}");
    text.lines()
        .find_map(|l| {
            l.strip_prefix(&name)
                .map(|v| v.trim().parse::<f64>().unwrap_or(0.0) as u64)
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_reports_only_as_itself() {
    let (mesh, issuer, tls): (Mesh, TokenIssuer, _) = Mesh::secure_single_cluster(ISSUER);
    let cp = ControlPlane::start(&mesh.mesh_file).await;
    let root = mesh.root().join("crossmesh-ca").join("root-cert.pem");
    let root_pem = wait_for(
        "the TLS xDS port and its root",
        Duration::from_secs(20),
        || {
            let root = root.clone();
            async move {
                let up = tokio::net::TcpStream::connect(tls).await.is_ok();
                match std::fs::read_to_string(&root) {
                    Ok(pem) if up => Ok(pem),
                    r => Err(format!("port open: {up}, root: {:?}", r.err())),
                }
            }
        },
    )
    .await;
    let ch = support::tls::grpc_channel(tls, &root_pem, None)
        .await
        .expect("TLS channel to the xDS port");
    // Proxy A's token: service account `a`, bound to pod `a-0`.
    let token_a = issuer.token(NS, "a", Some("a-0"), AUDIENCE, 3600);

    // A's token, B's node (service account `b`): refused, counted.
    let before = refusals(&cp, "service_account_mismatch").await;
    let b = node("b-0", "b", "b", "10.1.0.2");
    let st = refused(
        ch.clone(),
        Some(&token_a),
        flush(Some(b.clone()), ORDER, 9.0),
    )
    .await;
    assert_eq!(st.code(), tonic::Code::PermissionDenied, "{st:?}");
    assert!(st.message().contains("service account"), "{st:?}");
    assert_eq!(refusals(&cp, "service_account_mismatch").await, before + 1);
    // A's token, another pod of A's workload and service account: refused.
    let st = refused(
        ch.clone(),
        Some(&token_a),
        flush(Some(node("a-1", "a", "a", "10.1.0.3")), ORDER, 9.0),
    )
    .await;
    assert_eq!(st.code(), tonic::Code::PermissionDenied, "{st:?}");
    assert!(st.message().contains("pod"), "{st:?}");
    // No token at all.
    let st = refused(ch.clone(), None, flush(Some(b.clone()), ORDER, 9.0)).await;
    assert_eq!(st.code(), tonic::Code::Unauthenticated, "{st:?}");
    let g = graph(&cp).await;
    assert_eq!(proxy_ids(&g), Vec::<String>::new(), "{g}");

    // A's token and A's node: recorded as A, with A's proven identity. A later
    // message naming B in its identifier is still A's report.
    let st = open(ch.clone(), Some(&token_a));
    st.tx.send(flush(Some(a_node()), ORDER, 7.0)).await.unwrap();
    st.tx
        .send(flush(Some(b.clone()), STOCK, 5.0))
        .await
        .unwrap();
    let g = wait_for(
        "A's two flushes on /debug/graphz",
        Duration::from_secs(10),
        || async {
            let g = graph(&cp).await;
            if edge_requests(&g, "a", STOCK) == Some(5) {
                Ok(g)
            } else {
                Err(format!("{g}"))
            }
        },
    )
    .await;
    assert_eq!(edge_requests(&g, "a", ORDER), Some(7), "{g}");
    assert_eq!(edge_requests(&g, "b", STOCK), None, "{g}");
    assert_eq!(proxy_ids(&g), vec![a_node().id], "{g}");
    let workload_a = g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == format!("workload:cluster1/{NS}/a"))
        .cloned()
        .unwrap_or_else(|| panic!("no workload node a in {g}"));
    assert_eq!(
        workload_a["identity"], "spiffe://cluster.local/ns/shop/sa/a",
        "{g}"
    );
    assert_eq!(workload_a["serviceAccount"], "a", "{g}");
    assert!(
        !g["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == format!("workload:cluster1/{NS}/b")),
        "{g}"
    );

    // The plaintext port of this mesh takes no report, not even one naming A
    // while A reports on the TLS port, and not one naming a proxy never seen.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", cp.xds))
        .unwrap()
        .connect()
        .await
        .expect("plaintext channel");
    for claimed in [a_node(), b.clone()] {
        let st = refused(plain.clone(), None, flush(Some(claimed), ORDER, 100.0)).await;
        assert_eq!(st.code(), tonic::Code::PermissionDenied, "{st:?}");
        assert!(st.message().contains("TLS xDS port"), "{st:?}");
    }
    let g = graph(&cp).await;
    assert_eq!(edge_requests(&g, "a", ORDER), Some(7), "{g}");
    assert_eq!(proxy_ids(&g), vec![a_node().id], "{g}");
    let a = &g["proxies"][0];
    assert_eq!(
        (a["connected"].as_bool(), a["reports"].as_u64()),
        (Some(true), Some(2)),
        "{g}"
    );

    drop(st.tx);
    let end = tokio::time::timeout(Duration::from_secs(10), st.done)
        .await
        .expect("A's stream ends")
        .expect("call task");
    assert!(end.is_ok(), "{end:?}");
}
