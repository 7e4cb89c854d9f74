//! Telemetry that comes in from the proxies: Envoy's metrics sink
//! (`sink.rs`, served on the xDS ports) feeds the live service graph
//! (`graph.rs`), shown on `/debug/graphz` (docs/OBSERVABILITY.md).

pub mod graph;
pub mod sink;

pub use graph::{Limits, ServiceGraph};

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::codegen::{http, BoxFuture};

use crate::xds::secure::XdsSecurity;

/// The graph is the xDS server's metrics sink (`xds::server::MetricsSink`),
/// handed to it by `serve.rs`.
impl crate::xds::server::MetricsSink for ServiceGraph {
    fn call(
        self: Arc<Self>,
        security: Option<Arc<XdsSecurity>>,
        shutdown: watch::Receiver<bool>,
        req: http::Request<tonic::body::Body>,
    ) -> BoxFuture<http::Response<tonic::body::Body>, Infallible> {
        sink::call(self, security, shutdown, req)
    }
}

/// Drop what has aged out of the graph every bucket, so that proxies that
/// went away free their memory even when no one reads `/debug/graphz`. Ends
/// when the graph is dropped.
pub fn spawn_expiry(graph: &Arc<ServiceGraph>) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(graph);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(graph::BUCKET_SECS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(g) = weak.upgrade() else { return };
            g.expire(graph::unix_now());
        }
    })
}
