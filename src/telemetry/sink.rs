//! Envoy's metrics sink, served on the xDS ports: the gRPC method
//! `envoy.service.metrics.v3.MetricsService/StreamMetrics` that Envoy's
//! `envoy.stat_sinks.metrics_service` pushes its stats to every
//! `stats_flush_interval` (the bootstrap `crossmesh bootstrap` writes).
//!
//! One stream per proxy. Its first message carries the proxy's `Node`
//! (`identifier.node`; Envoy sends it only once per stream), parsed with
//! `Proxy::from_node` as on ADS. On the TLS port the stream must present the
//! proxy's service-account token like its ADS stream does, and the token must
//! prove the identity the node claims (`XdsSecurity::authorize`): a proxy
//! reports only as itself (the `identifier` of later messages is not read).
//! In a mesh that serves the TLS port, the plaintext port's sink refuses
//! every report (`PERMISSION_DENIED`): nothing there proves who sends it, and
//! it could write into any workload's edges. Each message is read into per-cluster
//! [`Report`]s outside the graph's lock, then added to the graph.
//!
//! The stats read are Envoy's untagged names (`emit_tags_as_labels: false`),
//! counters as deltas (`report_counters_as_deltas: true`) and histograms as
//! Envoy sends them, over the flush interval:
//! `cluster.<NAME>.upstream_rq_total`, `cluster.<NAME>.upstream_rq_5xx`,
//! `cluster.<NAME>.upstream_cx_connect_fail` and the histogram
//! `cluster.<NAME>.upstream_rq_time`. Everything else in a message is skipped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use envoy_types::pb::envoy::service::metrics::v3::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use envoy_types::pb::envoy::service::metrics::v3::{StreamMetricsMessage, StreamMetricsResponse};
use envoy_types::pb::io::prometheus::client::MetricFamily;
use tokio::sync::watch;
use tonic::codegen::{http, BoxFuture, Service, StdError};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use super::graph::{unix_now, Report, ServiceGraph, Source};
use crate::model::Proxy;
use crate::xds::secure::XdsSecurity;

/// Largest message accepted: one flush of a proxy with thousands of used
/// clusters (tonic's default of 4 MiB is too small for that).
const MAX_MESSAGE_BYTES: usize = 32 << 20;

// The per-cluster stats the graph reads are defined with the bootstrap's stats
// matcher (`--stats-matcher graph` keeps exactly these).
use crate::bootstrap::graph_stats::{
    CONNECT_FAIL, ERRORS_5XX, REQUESTS, SUFFIXES as GRAPH_STAT_SUFFIXES,
};

/// Serve one `StreamMetrics` call. `security`: the TLS port's, when the
/// call came in there; `shutdown` turns true when the server stops.
pub fn call<B>(
    graph: Arc<ServiceGraph>,
    security: Option<Arc<XdsSecurity>>,
    shutdown: watch::Receiver<bool>,
    req: http::Request<B>,
) -> BoxFuture<http::Response<tonic::body::Body>, Infallible>
where
    B: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    let mut server = MetricsServiceServer::new(Sink {
        graph,
        security,
        shutdown,
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    server.call(req)
}

struct Sink {
    graph: Arc<ServiceGraph>,
    security: Option<Arc<XdsSecurity>>,
    shutdown: watch::Receiver<bool>,
}

/// Ends the proxy's stream in the graph however the call ends.
struct Connected {
    graph: Arc<ServiceGraph>,
    proxy_id: String,
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.graph.disconnect(&self.proxy_id);
        debug!(proxy = %self.proxy_id, "metrics stream ended");
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn stream_metrics(
        &self,
        request: Request<Streaming<StreamMetricsMessage>>,
    ) -> Result<Response<StreamMetricsResponse>, Status> {
        // Only the TLS port looks at credentials; the token is never logged.
        let token = self.security.as_ref().and_then(|_| {
            crate::xds::secure::bearer_token(&request.metadata().clone().into_headers())
        });
        let mut shutdown = self.shutdown.clone();
        let mut messages = request.into_inner();
        let first = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => return Err(Status::unavailable("crossmesh is shutting down")),
            m = messages.message() => m?,
        };
        let first = first.ok_or_else(|| {
            Status::invalid_argument("metrics stream closed before its first message")
        })?;
        let node = first
            .identifier
            .as_ref()
            .and_then(|i| i.node.as_ref())
            .ok_or_else(|| {
                Status::invalid_argument(
                    "the first StreamMetricsMessage carries no identifier.node",
                )
            })?;
        let mut proxy =
            Proxy::from_node(node).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if self.security.is_none() && self.graph.requires_authentication() {
            debug!(proxy = %proxy.id, "plaintext metrics stream refused");
            return Err(plaintext_refused(&proxy.id));
        }
        if let Some(security) = &self.security {
            let identity = security
                .authorize(&proxy, token.as_deref().map(|t| t.as_str()))
                .await
                .map_err(|refusal| {
                    crate::xds::secure::record_refusal(&proxy, &refusal);
                    refusal.status(&proxy.id)
                })?;
            proxy.identity = Some(identity);
        }
        let source = Source::of(&proxy);
        let proxy_id = source.proxy_id.clone();
        info!(proxy = %proxy_id, "metrics stream opened");
        self.graph.connect(source, unix_now());
        let _connected = Connected {
            graph: self.graph.clone(),
            proxy_id: proxy_id.clone(),
        };
        self.graph
            .record(&proxy_id, &reports(&first.envoy_metrics), unix_now());
        drop(first);
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => return Err(Status::unavailable("crossmesh is shutting down")),
                m = messages.message() => m?,
            };
            let Some(m) = next else {
                return Ok(Response::new(StreamMetricsResponse {}));
            };
            self.graph
                .record(&proxy_id, &reports(&m.envoy_metrics), unix_now());
        }
    }
}

/// The answer to a report on the plaintext port of a mesh that authenticates
/// its proxies: nothing there proves which proxy is reporting.
fn plaintext_refused(proxy_id: &str) -> Status {
    Status::permission_denied(format!(
        "proxy {proxy_id}: this mesh authenticates its proxies (xdsTlsAddress), so the \
         metrics sink takes no reports on the plaintext xDS port; report on the TLS xDS port"
    ))
}

/// Split Envoy's full stat name `cluster.<NAME>.<STAT>` for the stats the graph
/// reads. `NAME` may contain dots (hostnames); every stat read is one segment.
fn cluster_stat(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix("cluster.")?;
    let (cluster, stat) = rest.rsplit_once('.')?;
    (!cluster.is_empty() && GRAPH_STAT_SUFFIXES.contains(&stat)).then_some((cluster, stat))
}

/// A counter's value as a count: Envoy sends whole non-negative numbers.
fn count(v: Option<f64>) -> u64 {
    match v {
        Some(v) if v.is_finite() && v > 0.0 => v.min(u64::MAX as f64) as u64,
        _ => 0,
    }
}

/// One message's metric families as per-cluster reports, in a stable order.
pub fn reports(families: &[MetricFamily]) -> Vec<(String, Report)> {
    let mut by_cluster: HashMap<&str, Report> = HashMap::new();
    // Clusters named by a stat Envoy keeps only at the cluster's top level.
    // `upstream_rq_5xx` and `upstream_rq_time` also come per request class and
    // per zone (`cluster.<NAME>.external.upstream_rq_time`,
    // `cluster.<NAME>.zone.<FROM>.<TO>.upstream_rq_5xx`), which would read as
    // clusters named `<NAME>.external` or `<NAME>.zone.<FROM>.<TO>`.
    let mut top_level: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for f in families {
        let Some((cluster, stat)) = f.name.as_deref().and_then(cluster_stat) else {
            continue;
        };
        if stat == REQUESTS || stat == CONNECT_FAIL {
            top_level.insert(cluster);
        }
        let r = by_cluster.entry(cluster).or_default();
        for m in &f.metric {
            match stat {
                REQUESTS => {
                    r.requests += count(m.counter.as_ref().and_then(|c| c.value));
                }
                ERRORS_5XX => {
                    r.errors_5xx += count(m.counter.as_ref().and_then(|c| c.value));
                }
                CONNECT_FAIL => {
                    r.connect_failures += count(m.counter.as_ref().and_then(|c| c.value));
                }
                _ => {
                    let Some(h) = &m.histogram else {
                        continue;
                    };
                    let buckets: Vec<(f64, u64)> = h
                        .bucket
                        .iter()
                        .filter_map(|b| Some((b.upper_bound?, b.cumulative_count?)))
                        .filter(|(bound, _)| bound.is_finite())
                        .collect();
                    let slots =
                        Report::latency_from_buckets(&buckets, h.sample_count.unwrap_or_default());
                    let acc = r
                        .latency
                        .get_or_insert([0; super::graph::LATENCY_BOUNDS_MS.len() + 1]);
                    for (a, n) in acc.iter_mut().zip(slots) {
                        *a = a.saturating_add(n);
                    }
                }
            }
        }
    }
    let mut out: Vec<(String, Report)> = by_cluster
        .into_iter()
        .filter(|(c, _)| top_level.contains(c))
        .map(|(c, r)| (c.to_string(), r))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::io::prometheus::client::{Bucket, Counter, Histogram, Metric, MetricType};

    fn counter(name: &str, v: f64) -> MetricFamily {
        MetricFamily {
            name: Some(name.into()),
            r#type: Some(MetricType::Counter as i32),
            metric: vec![Metric {
                counter: Some(Counter {
                    value: Some(v),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn reads_the_graph_stats_of_outbound_clusters() {
        let c = "outbound|8080||order.shop.svc.cluster.local";
        let families = vec![
            counter(&format!("cluster.{c}.upstream_rq_total"), 7.0),
            counter(&format!("cluster.{c}.upstream_rq_5xx"), 2.0),
            counter(&format!("cluster.{c}.upstream_rq_503"), 2.0),
            counter(&format!("cluster.{c}.upstream_cx_connect_fail"), 1.0),
            counter("cluster.xds-grpc.upstream_rq_total", 1.0),
            counter("http.inbound_0.0.0.0_8080.downstream_rq_total", 9.0),
            counter("cluster.upstream_rq_total", 3.0),
            // Per request class and per zone: the same requests again, not
            // clusters of their own.
            counter(&format!("cluster.{c}.external.upstream_rq_5xx"), 2.0),
            counter(&format!("cluster.{c}.zone.z1.z2.upstream_rq_5xx"), 2.0),
            counter(&format!("cluster.{c}.upstream_rq_total"), f64::NAN),
            MetricFamily {
                name: Some(format!("cluster.{c}.upstream_rq_time")),
                r#type: Some(MetricType::Histogram as i32),
                metric: vec![Metric {
                    histogram: Some(Histogram {
                        sample_count: Some(7),
                        bucket: vec![
                            Bucket {
                                upper_bound: Some(1.0),
                                cumulative_count: Some(3),
                                ..Default::default()
                            },
                            Bucket {
                                upper_bound: Some(5.0),
                                cumulative_count: Some(7),
                                ..Default::default()
                            },
                        ],
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ];
        let r = reports(&families);
        let names: Vec<&str> = r.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(names, vec![c, "xds-grpc"]);
        let order = &r[0].1;
        assert_eq!(order.requests, 7);
        assert_eq!(order.errors_5xx, 2);
        assert_eq!(order.connect_failures, 1);
        let l = order.latency.unwrap();
        assert_eq!((l[1], l[2], l.iter().sum::<u64>()), (3, 4, 7));
    }
}
