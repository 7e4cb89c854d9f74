//! The live service graph: what each proxy's metrics sink stream reports
//! (`telemetry::sink`), kept as edges from the reporting workload to the
//! service, subset or cluster its Envoy cluster names, with a short rolling
//! history of fixed buckets. Pure and synchronous apart from one mutex; the
//! sink parses a message into [`Report`]s outside the lock.
//!
//! Memory is bounded: at most [`Limits::max_edges_per_proxy`] edges per proxy
//! and [`Limits::max_edges`] in total (new edges beyond either are dropped and
//! counted), and at most [`HISTORY_BUCKETS`] buckets per edge. An edge without
//! traffic for the whole history is removed; a proxy whose stream ended is
//! removed once its last report is older than the history.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::model::Proxy;

/// Width of one history bucket.
pub const BUCKET_SECS: u64 = 10;
/// Buckets kept per edge: 10 minutes.
pub const HISTORY_BUCKETS: usize = 60;
/// `/debug/graphz`'s window when none is asked for.
pub const DEFAULT_WINDOW_SECS: u64 = 60;

/// Upper bounds (ms) of Envoy's default histogram buckets
/// (`Stats::HistogramSettingsImpl::defaultBuckets`), the buckets of
/// `cluster.<name>.upstream_rq_time`; a last slot counts what is above them.
pub const LATENCY_BOUNDS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
const LATENCY_SLOTS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// Bounds on the graph's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Destinations kept per reporting proxy.
    pub max_edges_per_proxy: usize,
    /// Edges kept over all proxies.
    pub max_edges: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from(&crate::config::ServiceGraphConfig::default())
    }
}

impl From<&crate::config::ServiceGraphConfig> for Limits {
    fn from(c: &crate::config::ServiceGraphConfig) -> Self {
        Limits {
            max_edges_per_proxy: c.max_edges_per_proxy,
            max_edges: c.max_edges,
        }
    }
}

/// Where an Envoy cluster sends requests, parsed from Istio's cluster name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// `outbound|PORT|SUBSET|HOST` (Istio's `model.BuildSubsetKey`): a service
    /// port, and a DestinationRule subset when `SUBSET` is not empty.
    Service {
        host: String,
        port: u16,
        subset: String,
    },
    /// Any other cluster a proxy sends requests through (`PassthroughCluster`,
    /// `BlackHoleCluster`, a bootstrap's static cluster).
    Cluster { name: String },
}

impl Destination {
    /// `None` for clusters that are not traffic to somewhere else: the
    /// proxy's own inbound clusters, and the control plane's.
    pub fn parse(envoy_cluster: &str) -> Option<Destination> {
        if envoy_cluster.starts_with("inbound|")
            || envoy_cluster.starts_with("InboundPassthroughCluster")
            || envoy_cluster == crate::bootstrap::XDS_CLUSTER
        {
            return None;
        }
        if let Some(rest) = envoy_cluster.strip_prefix("outbound|") {
            let mut parts = rest.splitn(3, '|');
            let port = parts.next()?.parse::<u16>().ok()?;
            let subset = parts.next()?.to_string();
            let host = parts.next()?.to_string();
            if host.is_empty() {
                return None;
            }
            return Some(Destination::Service { host, port, subset });
        }
        if envoy_cluster.is_empty() {
            return None;
        }
        Some(Destination::Cluster {
            name: envoy_cluster.to_string(),
        })
    }

    /// The graph node this destination belongs to (subsets and ports of one
    /// service share a node; the edge keeps them apart).
    fn node_id(&self) -> String {
        match self {
            Destination::Service { host, .. } => format!("service:{host}"),
            Destination::Cluster { name } => format!("cluster:{name}"),
        }
    }
}

/// The reporting proxy, as its node identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub proxy_id: String,
    /// `gateway`, `sidecar` or `grpc`.
    pub role: &'static str,
    /// The workload's canonical name: label `service.istio.io/canonical-name`,
    /// `app.kubernetes.io/name` or `app`, else the pod name (Istio's
    /// `canonical_service`).
    pub workload: String,
    pub namespace: String,
    pub cluster: String,
    pub network: String,
    /// The SPIFFE identity the TLS port proved; `None` on the plaintext port.
    pub identity: Option<String>,
    pub service_account: String,
}

impl Source {
    pub fn of(p: &Proxy) -> Source {
        let workload = [
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ]
        .iter()
        .find_map(|k| p.labels.get(*k))
        .cloned()
        .unwrap_or_else(|| p.pod_name.clone());
        Source {
            proxy_id: p.id.clone(),
            role: match p.role {
                crate::model::ProxyRole::Gateway => "gateway",
                crate::model::ProxyRole::Sidecar => "sidecar",
                crate::model::ProxyRole::Grpc => "grpc",
            },
            workload,
            namespace: p.namespace.clone(),
            cluster: p.cluster_id.clone(),
            network: p.network.clone(),
            identity: p.identity.as_ref().map(|i| i.spiffe_uri()),
            service_account: p.service_account.clone(),
        }
    }

    fn node_id(&self) -> String {
        format!(
            "workload:{}/{}/{}",
            self.cluster, self.namespace, self.workload
        )
    }
}

/// What one flush said about one Envoy cluster (counters as deltas).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// `upstream_rq_total`.
    pub requests: u64,
    /// `upstream_rq_5xx`: answers 500-599, including the 503 Envoy itself
    /// answers when it cannot connect or finds no healthy host.
    pub errors_5xx: u64,
    /// `upstream_cx_connect_fail`.
    pub connect_failures: u64,
    /// `upstream_rq_time` over the flush interval, per slot of
    /// [`LATENCY_BOUNDS_MS`] (not cumulative).
    pub latency: Option<[u64; LATENCY_SLOTS]>,
}

impl Report {
    fn is_empty(&self) -> bool {
        self.requests == 0
            && self.errors_5xx == 0
            && self.connect_failures == 0
            && self
                .latency
                .as_ref()
                .is_none_or(|l| l.iter().all(|c| *c == 0))
    }

    /// Fold Envoy's interval histogram buckets (`(upper_bound, cumulative
    /// count)`, ascending; the total last) into [`LATENCY_BOUNDS_MS`] slots. A
    /// bound that is not one of Envoy's defaults lands in the first slot at or
    /// above it.
    pub fn latency_from_buckets(buckets: &[(f64, u64)], total: u64) -> [u64; LATENCY_SLOTS] {
        let mut slots = [0u64; LATENCY_SLOTS];
        let mut below = 0u64;
        for &(bound, cumulative) in buckets {
            let n = cumulative.saturating_sub(below);
            below = below.max(cumulative);
            let i = LATENCY_BOUNDS_MS
                .iter()
                .position(|b| *b >= bound)
                .unwrap_or(LATENCY_SLOTS - 1);
            slots[i] = slots[i].saturating_add(n);
        }
        slots[LATENCY_SLOTS - 1] =
            slots[LATENCY_SLOTS - 1].saturating_add(total.saturating_sub(below));
        slots
    }
}

#[derive(Debug, Clone)]
struct Bucket {
    /// Seconds since the epoch / [`BUCKET_SECS`].
    slot: u64,
    requests: u64,
    errors_5xx: u64,
    connect_failures: u64,
    /// Counts per latency slot; `u32` saturating (4 G requests per 10 s).
    latency: [u32; LATENCY_SLOTS],
}

impl Bucket {
    fn new(slot: u64) -> Bucket {
        Bucket {
            slot,
            requests: 0,
            errors_5xx: 0,
            connect_failures: 0,
            latency: [0; LATENCY_SLOTS],
        }
    }
}

#[derive(Debug)]
struct Edge {
    destination: Destination,
    /// Ascending slots, at most [`HISTORY_BUCKETS`].
    buckets: VecDeque<Bucket>,
}

impl Edge {
    fn add(&mut self, slot: u64, r: &Report) {
        if self.buckets.back().is_none_or(|b| b.slot < slot) {
            self.buckets.push_back(Bucket::new(slot));
        }
        // A report for a slot already closed (clock step back) goes into the
        // newest bucket.
        let Some(b) = self.buckets.back_mut() else {
            return;
        };
        b.requests = b.requests.saturating_add(r.requests);
        b.errors_5xx = b.errors_5xx.saturating_add(r.errors_5xx);
        b.connect_failures = b.connect_failures.saturating_add(r.connect_failures);
        if let Some(l) = &r.latency {
            for (acc, n) in b.latency.iter_mut().zip(l) {
                *acc = acc.saturating_add(u32::try_from(*n).unwrap_or(u32::MAX));
            }
        }
        self.expire(slot);
    }

    /// Drop buckets older than the history.
    fn expire(&mut self, now_slot: u64) {
        let oldest = now_slot.saturating_sub(HISTORY_BUCKETS as u64 - 1);
        while self.buckets.front().is_some_and(|b| b.slot < oldest) {
            self.buckets.pop_front();
        }
    }
}

#[derive(Debug)]
struct ProxyEntry {
    source: Arc<Source>,
    /// By Envoy cluster name.
    edges: HashMap<String, Edge>,
    /// Open sink streams of this proxy id.
    streams: u32,
    /// Seconds since the epoch of the last report.
    last_report: u64,
    reports: u64,
}

#[derive(Debug, Default)]
struct Inner {
    proxies: HashMap<String, ProxyEntry>,
    edges: usize,
    dropped_edges: u64,
}

impl Inner {
    /// Remove expired buckets, edges without any, and disconnected proxies
    /// whose last report is older than the history.
    fn expire(&mut self, now_slot: u64) {
        let horizon = now_slot.saturating_sub(HISTORY_BUCKETS as u64 - 1) * BUCKET_SECS;
        let mut removed = 0;
        self.proxies.retain(|_, p| {
            p.edges.retain(|_, e| {
                e.expire(now_slot);
                let keep = !e.buckets.is_empty();
                if !keep {
                    removed += 1;
                }
                keep
            });
            let keep = p.streams > 0 || p.last_report >= horizon;
            if !keep {
                removed += p.edges.len();
            }
            keep
        });
        self.edges = self.edges.saturating_sub(removed);
    }
}

/// The graph; shared by the sink streams and `/debug/graphz`.
#[derive(Debug)]
pub struct ServiceGraph {
    limits: Limits,
    /// The mesh authenticates its proxies (it serves the TLS xDS port): the
    /// sink takes reports only from streams that proved who they are.
    authenticated_only: bool,
    /// Held only for in-memory updates of one message or one rendering.
    inner: Mutex<Inner>,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ServiceGraph {
    pub fn new(limits: Limits) -> ServiceGraph {
        ServiceGraph {
            limits,
            authenticated_only: false,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Take reports only from authenticated streams (the TLS xDS port): in a
    /// mesh that serves that port, a report on the plaintext port proves
    /// nothing and could speak for any workload, so the sink refuses it.
    pub fn authenticated_only(mut self, yes: bool) -> ServiceGraph {
        self.authenticated_only = yes;
        self
    }

    /// See [`ServiceGraph::authenticated_only`].
    pub fn requires_authentication(&self) -> bool {
        self.authenticated_only
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A sink stream of `source` opened; its newer identity replaces the one
    /// kept for that proxy id.
    pub fn connect(&self, source: Source, now: u64) {
        let mut g = self.lock();
        let e = g
            .proxies
            .entry(source.proxy_id.clone())
            .or_insert_with(|| ProxyEntry {
                source: Arc::new(source.clone()),
                edges: HashMap::new(),
                streams: 0,
                last_report: now,
                reports: 0,
            });
        e.source = Arc::new(source);
        e.streams += 1;
    }

    /// A sink stream of `proxy_id` ended; its edges age out with the history.
    pub fn disconnect(&self, proxy_id: &str) {
        let mut g = self.lock();
        if let Some(p) = g.proxies.get_mut(proxy_id) {
            p.streams = p.streams.saturating_sub(1);
        }
    }

    /// Add one flush of `proxy_id` (connected first), per Envoy cluster.
    pub fn record(&self, proxy_id: &str, reports: &[(String, Report)], now: u64) {
        let slot = now / BUCKET_SECS;
        let limits = self.limits;
        let mut g = self.lock();
        let Inner {
            proxies,
            edges: total,
            dropped_edges,
        } = &mut *g;
        let Some(p) = proxies.get_mut(proxy_id) else {
            return;
        };
        p.last_report = now;
        p.reports += 1;
        for (cluster, r) in reports {
            if let Some(e) = p.edges.get_mut(cluster) {
                e.add(slot, r);
                continue;
            }
            // A cluster that never carried traffic is not an edge.
            if r.is_empty() {
                continue;
            }
            let Some(destination) = Destination::parse(cluster) else {
                continue;
            };
            if p.edges.len() >= limits.max_edges_per_proxy || *total >= limits.max_edges {
                *dropped_edges += 1;
                continue;
            }
            let mut e = Edge {
                destination,
                buckets: VecDeque::new(),
            };
            e.add(slot, r);
            p.edges.insert(cluster.clone(), e);
            *total += 1;
        }
    }

    /// Drop what is older than the history (called periodically and before
    /// rendering).
    pub fn expire(&self, now: u64) {
        self.lock().expire(now / BUCKET_SECS);
    }

    /// Edges kept now, over all proxies.
    pub fn edge_count(&self) -> usize {
        self.lock().edges
    }

    /// `/debug/graphz` (docs/OBSERVABILITY.md): nodes, edges aggregated per
    /// (source workload, Envoy cluster) over the last `window_secs`, and the
    /// reporting proxies. `describe` adds fields to a service node (the
    /// clusters and networks its endpoints are in).
    pub fn render(
        &self,
        window_secs: u64,
        now: u64,
        describe: &dyn Fn(&str) -> Option<Value>,
    ) -> Value {
        let window_secs = window_secs.clamp(BUCKET_SECS, HISTORY_BUCKETS as u64 * BUCKET_SECS);
        let now_slot = now / BUCKET_SECS;
        // The current, partial bucket counts as part of the window.
        let first_slot = (now_slot + 1).saturating_sub((window_secs / BUCKET_SECS).max(1));
        let history_first = (now_slot + 1).saturating_sub(HISTORY_BUCKETS as u64);
        let mut g = self.lock();
        g.expire(now_slot);

        #[derive(Default)]
        struct Agg {
            requests: u64,
            errors_5xx: u64,
            connect_failures: u64,
            latency: [u64; LATENCY_SLOTS],
            proxies: usize,
            history: BTreeMap<u64, (u64, u64)>,
        }
        let mut nodes: BTreeMap<String, Value> = BTreeMap::new();
        let mut edges: BTreeMap<(String, String), (Destination, Agg)> = BTreeMap::new();
        let mut proxies = Vec::new();
        for p in g.proxies.values() {
            let s = &p.source;
            let source_id = s.node_id();
            nodes.entry(source_id.clone()).or_insert_with(|| {
                json!({
                    "id": source_id,
                    "kind": "workload",
                    "workload": s.workload,
                    "namespace": s.namespace,
                    "cluster": s.cluster,
                    "network": s.network,
                    "role": s.role,
                    "serviceAccount": s.service_account,
                    "identity": s.identity,
                })
            });
            proxies.push(json!({
                "id": s.proxy_id,
                "node": source_id,
                "connected": p.streams > 0,
                "lastReport": p.last_report,
                "reports": p.reports,
                "edges": p.edges.len(),
            }));
            for (cluster, e) in &p.edges {
                let (_, a) = edges
                    .entry((source_id.clone(), cluster.clone()))
                    .or_insert_with(|| (e.destination.clone(), Agg::default()));
                a.proxies += 1;
                for b in &e.buckets {
                    if b.slot >= history_first {
                        let h = a.history.entry(b.slot).or_default();
                        h.0 += b.requests;
                        h.1 += b.errors_5xx;
                    }
                    if b.slot < first_slot {
                        continue;
                    }
                    a.requests += b.requests;
                    a.errors_5xx += b.errors_5xx;
                    a.connect_failures += b.connect_failures;
                    for (acc, n) in a.latency.iter_mut().zip(&b.latency) {
                        *acc += u64::from(*n);
                    }
                }
            }
        }
        let dropped = g.dropped_edges;
        let total = g.edges;
        drop(g);

        let mut out_edges = Vec::with_capacity(edges.len());
        for ((source_id, cluster), (d, a)) in edges {
            let dest_id = d.node_id();
            if !nodes.contains_key(&dest_id) {
                let node = match &d {
                    Destination::Service { host, .. } => {
                        let mut n = json!({
                            "id": dest_id,
                            "kind": "service",
                            "service": host,
                            "namespace": service_namespace(host),
                        });
                        if let (Some(Value::Object(extra)), Some(obj)) =
                            (describe(host), n.as_object_mut())
                        {
                            obj.extend(extra);
                        }
                        n
                    }
                    Destination::Cluster { name } => json!({
                        "id": dest_id,
                        "kind": "cluster",
                        "cluster": name,
                    }),
                };
                nodes.insert(dest_id.clone(), node);
            }
            let (port, subset) = match &d {
                Destination::Service { port, subset, .. } => (Some(*port), subset.clone()),
                Destination::Cluster { .. } => (None, String::new()),
            };
            let latency_total: u64 = a.latency.iter().sum();
            let error_rate = if a.requests == 0 {
                0.0
            } else {
                a.errors_5xx as f64 / a.requests as f64
            };
            out_edges.push(json!({
                "source": source_id,
                "destination": dest_id,
                "envoyCluster": cluster,
                "port": port,
                "subset": subset,
                "proxies": a.proxies,
                "requests": a.requests,
                "errors": a.errors_5xx,
                "connectFailures": a.connect_failures,
                "rps": round3(a.requests as f64 / window_secs as f64),
                "errorRate": round3(error_rate),
                "latencyMs": {
                    "samples": latency_total,
                    "p50": quantile(&a.latency, 0.5),
                    "p99": quantile(&a.latency, 0.99),
                },
                "history": a.history.iter().map(|(slot, (r, e))| json!({
                    "start": slot * BUCKET_SECS,
                    "requests": r,
                    "errors": e,
                })).collect::<Vec<_>>(),
            }));
        }
        proxies.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        json!({
            "enabled": true,
            "now": now,
            "windowSeconds": window_secs,
            "bucketSeconds": BUCKET_SECS,
            "historyBuckets": HISTORY_BUCKETS,
            "limits": {
                "maxEdgesPerProxy": self.limits.max_edges_per_proxy,
                "maxEdges": self.limits.max_edges,
            },
            "edgesKept": total,
            "edgesDropped": dropped,
            "nodes": nodes.into_values().collect::<Vec<_>>(),
            "edges": out_edges,
            "proxies": proxies,
        })
    }
}

/// `NAME.NAMESPACE.svc...` -> `NAMESPACE`; other hosts (ServiceEntry hosts)
/// have none.
fn service_namespace(host: &str) -> Option<&str> {
    let mut parts = host.split('.');
    let _name = parts.next()?;
    let ns = parts.next()?;
    (parts.next() == Some("svc")).then_some(ns)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The `q` quantile (ms) of slot counts, interpolated linearly inside the
/// bucket as Prometheus' `histogram_quantile` does; `None` without samples.
/// Above the last bound it is the last bound.
pub fn quantile(slots: &[u64; LATENCY_SLOTS], q: f64) -> Option<f64> {
    let total: u64 = slots.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, n) in slots.iter().enumerate() {
        if *n == 0 {
            continue;
        }
        if (below + n) as f64 >= rank {
            let Some(upper) = LATENCY_BOUNDS_MS.get(i) else {
                return LATENCY_BOUNDS_MS.last().copied();
            };
            let lower = if i == 0 {
                0.0
            } else {
                LATENCY_BOUNDS_MS[i - 1]
            };
            let frac = ((rank - below as f64) / *n as f64).clamp(0.0, 1.0);
            return Some(round3(lower + (upper - lower) * frac));
        }
        below += n;
    }
    LATENCY_BOUNDS_MS.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(id: &str, workload: &str) -> Source {
        Source {
            proxy_id: id.into(),
            role: "sidecar",
            workload: workload.into(),
            namespace: "shop".into(),
            cluster: "cluster1".into(),
            network: "net1".into(),
            identity: None,
            service_account: "default".into(),
        }
    }

    fn rq(requests: u64, errors_5xx: u64) -> Report {
        Report {
            requests,
            errors_5xx,
            ..Default::default()
        }
    }

    const ORDER: &str = "outbound|8080||order.shop.svc.cluster.local";

    #[test]
    fn cluster_names_parse_as_istio_builds_them() {
        assert_eq!(
            Destination::parse("outbound|9080|v2|reviews.default.svc.cluster.local"),
            Some(Destination::Service {
                host: "reviews.default.svc.cluster.local".into(),
                port: 9080,
                subset: "v2".into(),
            })
        );
        assert_eq!(
            Destination::parse(ORDER),
            Some(Destination::Service {
                host: "order.shop.svc.cluster.local".into(),
                port: 8080,
                subset: String::new(),
            })
        );
        assert_eq!(Destination::parse("inbound|8080||"), None);
        assert_eq!(Destination::parse("xds-grpc"), None);
        assert_eq!(Destination::parse("outbound|x||a"), None);
        assert_eq!(Destination::parse("outbound|80||"), None);
        assert_eq!(
            Destination::parse("PassthroughCluster"),
            Some(Destination::Cluster {
                name: "PassthroughCluster".into()
            })
        );
    }

    #[test]
    fn edges_sum_proxies_of_one_workload_within_the_window() {
        let g = ServiceGraph::new(Limits::default());
        let now = 1_000_000;
        g.connect(source("a", "frontend"), now);
        g.connect(source("b", "frontend"), now);
        // Outside a 60 s window, inside the history.
        g.record("a", &[(ORDER.into(), rq(100, 0))], now - 300);
        g.record("a", &[(ORDER.into(), rq(10, 2))], now);
        g.record("b", &[(ORDER.into(), rq(5, 0))], now + 1);
        let v = g.render(60, now + 1, &|_| None);
        let edges = v["edges"].as_array().unwrap();
        assert_eq!(edges.len(), 1, "{v}");
        let e = &edges[0];
        assert_eq!(e["source"], "workload:cluster1/shop/frontend");
        assert_eq!(e["destination"], "service:order.shop.svc.cluster.local");
        assert_eq!(e["requests"], 15);
        assert_eq!(e["errors"], 2);
        assert_eq!(e["proxies"], 2);
        assert_eq!(e["errorRate"], 0.133);
        let all = g.render(600, now + 1, &|_| None);
        assert_eq!(all["edges"][0]["requests"], 115);
        assert_eq!(all["edges"][0]["history"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn idle_clusters_are_not_edges_and_limits_hold() {
        let g = ServiceGraph::new(Limits {
            max_edges_per_proxy: 2,
            max_edges: 3,
        });
        let now = 1_000_000;
        g.connect(source("a", "frontend"), now);
        g.connect(source("b", "order"), now);
        let many: Vec<(String, Report)> = (0..5)
            .map(|i| {
                (
                    format!("outbound|80||s{i}.shop.svc.cluster.local"),
                    rq(1, 0),
                )
            })
            .collect();
        g.record(
            "a",
            &[("outbound|80||idle.shop.svc.cluster.local".into(), rq(0, 0))],
            now,
        );
        assert_eq!(g.edge_count(), 0);
        g.record("a", &many, now);
        assert_eq!(g.edge_count(), 2);
        g.record("b", &many, now);
        assert_eq!(g.edge_count(), 3);
        let v = g.render(60, now, &|_| None);
        assert_eq!(v["edgesDropped"], 3 + 4);
    }

    #[test]
    fn a_disconnected_proxy_ages_out_with_the_history() {
        let g = ServiceGraph::new(Limits::default());
        let now = 1_000_000;
        g.connect(source("a", "frontend"), now);
        g.record("a", &[(ORDER.into(), rq(1, 0))], now);
        g.disconnect("a");
        g.expire(now + 300);
        assert_eq!(g.edge_count(), 1, "kept while in the history");
        g.expire(now + HISTORY_BUCKETS as u64 * BUCKET_SECS + BUCKET_SECS);
        assert_eq!(g.edge_count(), 0);
        let v = g.render(60, now + 700, &|_| None);
        assert_eq!(v["proxies"].as_array().unwrap().len(), 0, "{v}");
    }

    #[test]
    fn a_connected_proxy_keeps_its_entry_but_old_edges_expire() {
        let g = ServiceGraph::new(Limits::default());
        let now = 1_000_000;
        g.connect(source("a", "frontend"), now);
        g.record("a", &[(ORDER.into(), rq(1, 0))], now);
        g.expire(now + 700);
        assert_eq!(g.edge_count(), 0);
        let v = g.render(60, now + 700, &|_| None);
        assert_eq!(v["proxies"][0]["connected"], true);
    }

    #[test]
    fn latency_quantiles_from_envoy_buckets() {
        // 100 samples: 50 at or below 5 ms, 49 in (5, 10], 1 in (100, 250].
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_MS
            .iter()
            .map(|b| {
                let c = match *b {
                    b if b < 5.0 => 0,
                    b if b < 10.0 => 50,
                    b if b < 250.0 => 99,
                    _ => 100,
                };
                (*b, c)
            })
            .collect();
        let slots = Report::latency_from_buckets(&buckets, 100);
        assert_eq!(slots.iter().sum::<u64>(), 100);
        assert_eq!(slots[2], 50);
        assert_eq!(quantile(&slots, 0.5), Some(5.0));
        let p99 = quantile(&slots, 0.99).unwrap();
        assert!(p99 > 5.0 && p99 <= 10.0, "{p99}");
        assert_eq!(quantile(&[0; LATENCY_SLOTS], 0.5), None);
        // Samples above every bound.
        let over = Report::latency_from_buckets(&[(0.5, 0)], 3);
        assert_eq!(over[LATENCY_SLOTS - 1], 3);
        assert_eq!(quantile(&over, 0.5), Some(3600000.0));
    }
}
