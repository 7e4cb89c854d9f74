//! Prometheus metrics, named like Istio's where the meaning is the same, so that
//! existing dashboards work (`pilot_xds_pushes`, `pilot_proxy_convergence_time`, ...).
//!
//! One process-wide set, reached through `metrics()`: metrics are the one piece of
//! state every step writes, and prometheus-client's types are lock-free atomics.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// `cds`, `eds`, `lds`, `rds`, `sds`.
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

pub struct Metrics {
    /// `pilot_xds_pushes{type}`: responses sent per type.
    pub xds_pushes: Family<TypeLabel, Counter>,
    /// `pilot_total_xds_rejects{type}`: NACKs received.
    pub xds_rejects: Family<TypeLabel, Counter>,
    /// `pilot_xds`: connected proxies.
    pub xds_clients: Gauge,
    /// `pilot_proxy_convergence_time`: seconds from the first change of a push to
    /// the push being handed to every connection.
    pub convergence_time: Histogram,
    /// `pilot_xds_push_time`: seconds spent computing a push after the debounce.
    pub push_time: Histogram,
    /// `pilot_push_triggers{reason}`.
    pub push_triggers: Family<ReasonLabel, Counter>,
    /// `pilot_xds_send_bytes`: bytes of encoded resources sent.
    pub send_bytes: Counter,
    /// `crossmesh_encodes`: resources encoded (each distinct content once).
    pub encodes: Counter,
    /// `pilot_total_rejected_configs{kind}`: Istio objects rejected.
    pub rejected_configs: Family<KindLabel, Gauge>,
    /// `crossmesh_source_rejected_objects{cluster}`: Kubernetes objects skipped.
    pub rejected_objects: Family<ClusterLabel, Counter>,
    /// `istiod_managed_clusters`: member clusters.
    pub managed_clusters: Gauge,
    /// `crossmesh_cluster_synced{cluster}`: 1 once a member cluster has synced.
    pub cluster_synced: Family<ClusterLabel, Gauge>,
    /// `pilot_services`: services in the merged registry.
    pub services: Gauge,
    /// `crossmesh_endpoints`: ready endpoints in the merged registry.
    pub endpoints: Gauge,
    /// `citadel_server_success_cert_issuance_count`: workload certificates
    /// issued to authenticated proxies.
    pub certs_issued: Counter,
    /// `citadel_server_authentication_failure_count{reason}`: xDS streams
    /// refused on the TLS port (Istio's name, with the reason as a label).
    pub auth_failures: Family<ReasonLabel, Counter>,
    /// `crossmesh_root_cert_expiry_days`: days until the earliest root in force
    /// expires.
    pub root_expiry_days: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// `citadel_server_root_cert_expiry_timestamp`: when it expires (Unix
    /// seconds).
    pub root_expiry_timestamp: Gauge,
    /// `crossmesh_ca_reloads{result}`: changed plug-in CA files read while
    /// serving, `applied` or `refused`.
    pub ca_reloads: Family<ResultLabel, Counter>,
    /// `crossmesh_ca_reload_refused`: 1 while the plug-in CA files on disk are
    /// refused (the CA in force keeps signing), else 0.
    pub ca_reload_refused: Gauge,
    /// `crossmesh_agent_refusals{reason}`: refusals on the agent port (tokens,
    /// TLS handshakes, certificates, wrong cluster, protocol, objects outside a
    /// grant), also those that name no agent cluster.
    pub agent_refusals: Family<ReasonLabel, Counter>,
    registry: Registry,
}

fn exponential(start: f64, factor: f64, n: u16) -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(start, factor, n)
}

impl Metrics {
    fn new() -> Self {
        let m = Metrics {
            xds_pushes: Family::default(),
            xds_rejects: Family::default(),
            xds_clients: Gauge::default(),
            convergence_time: Histogram::new(exponential(0.001, 2.0, 16)),
            push_time: Histogram::new(exponential(0.0001, 2.0, 18)),
            push_triggers: Family::default(),
            send_bytes: Counter::default(),
            encodes: Counter::default(),
            rejected_configs: Family::default(),
            rejected_objects: Family::default(),
            managed_clusters: Gauge::default(),
            cluster_synced: Family::default(),
            services: Gauge::default(),
            endpoints: Gauge::default(),
            certs_issued: Counter::default(),
            auth_failures: Family::default(),
            root_expiry_days: Gauge::default(),
            root_expiry_timestamp: Gauge::default(),
            ca_reloads: Family::default(),
            ca_reload_refused: Gauge::default(),
            agent_refusals: Family::default(),
            registry: Registry::default(),
        };
        let mut r = Registry::default();
        r.register(
            "pilot_xds_pushes",
            "xDS responses sent, by type",
            m.xds_pushes.clone(),
        );
        r.register(
            "pilot_total_xds_rejects",
            "NACKs received from proxies, by type",
            m.xds_rejects.clone(),
        );
        r.register("pilot_xds", "Connected xDS clients", m.xds_clients.clone());
        r.register(
            "pilot_proxy_convergence_time",
            "Seconds from the first change of a push until every connection has it",
            m.convergence_time.clone(),
        );
        r.register(
            "pilot_xds_push_time",
            "Seconds computing a push after the debounce",
            m.push_time.clone(),
        );
        r.register(
            "pilot_push_triggers",
            "Push triggers by reason",
            m.push_triggers.clone(),
        );
        r.register(
            "pilot_xds_send_bytes",
            "Bytes of xDS resources sent",
            m.send_bytes.clone(),
        );
        r.register(
            "crossmesh_encodes",
            "Resources encoded (once per distinct content)",
            m.encodes.clone(),
        );
        r.register(
            "pilot_total_rejected_configs",
            "Istio config objects rejected",
            m.rejected_configs.clone(),
        );
        r.register(
            "crossmesh_source_rejected_objects",
            "Kubernetes objects skipped by a source, by cluster",
            m.rejected_objects.clone(),
        );
        r.register(
            "istiod_managed_clusters",
            "Member clusters",
            m.managed_clusters.clone(),
        );
        r.register(
            "crossmesh_cluster_synced",
            "1 once a member cluster has synced",
            m.cluster_synced.clone(),
        );
        r.register(
            "pilot_services",
            "Services in the merged registry",
            m.services.clone(),
        );
        r.register(
            "crossmesh_endpoints",
            "Ready endpoints in the merged registry",
            m.endpoints.clone(),
        );
        r.register(
            "citadel_server_success_cert_issuance_count",
            "Workload certificates issued to authenticated proxies",
            m.certs_issued.clone(),
        );
        r.register(
            "crossmesh_agent_refusals",
            "Refusals on the member-cluster agent port, by reason",
            m.agent_refusals.clone(),
        );
        r.register(
            "citadel_server_authentication_failure_count",
            "xDS streams refused on the TLS port, by reason",
            m.auth_failures.clone(),
        );
        r.register(
            "crossmesh_root_cert_expiry_days",
            "Days until the earliest-expiring root of the mesh CA expires",
            m.root_expiry_days.clone(),
        );
        r.register(
            "citadel_server_root_cert_expiry_timestamp",
            "When the earliest-expiring root of the mesh CA expires (Unix seconds)",
            m.root_expiry_timestamp.clone(),
        );
        r.register(
            "crossmesh_ca_reloads",
            "Changed plug-in CA files read while serving, by result (applied, refused)",
            m.ca_reloads.clone(),
        );
        r.register(
            "crossmesh_ca_reload_refused",
            "1 while the plug-in CA files on disk are refused and the previous CA keeps signing",
            m.ca_reload_refused.clone(),
        );
        // Every xDS type shows from the start (at zero), so a dashboard can tell
        // "no NACKs" from "no data".
        for t in XDS_TYPES {
            let _ = m.xds_pushes.get_or_create(&type_label(t));
            let _ = m.xds_rejects.get_or_create(&type_label(t));
        }
        Metrics { registry: r, ..m }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        to_prometheus_text(&out)
    }
}

/// prometheus-client writes OpenMetrics: counter samples get a `_total` suffix and
/// the text ends with `# EOF`. Istio's dashboards query the bare names
/// (`pilot_xds_pushes`, `pilot_total_xds_rejects`), and we serve the Prometheus 0.0.4
/// text format, where neither is required: drop both so the names are Istio's.
fn to_prometheus_text(open_metrics: &str) -> String {
    let mut counters: Vec<&str> = Vec::new();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.push(name);
            }
        }
        let renamed = counters.iter().find_map(|name| {
            let tail = line.strip_prefix(name)?.strip_prefix("_total")?;
            (tail.starts_with('{') || tail.starts_with(' ')).then(|| format!("{name}{tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// The `type` label values of the xDS metrics, as Istio labels them: the
/// `xds::TypeUrl::short` name of every type crossmesh serves, in push order (a unit
/// test keeps the two lists equal; metrics sit below xds and do not import it).
pub const XDS_TYPES: [&str; 5] = ["sds", "cds", "eds", "lds", "rds"];

/// Label helper: `type_label(TypeUrl::Cluster.short())`.
pub fn type_label(short: &str) -> TypeLabel {
    TypeLabel {
        r#type: short.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xds_types_are_the_served_types() {
        let served = crate::xds::TypeUrl::ALL.map(|t| t.short());
        assert_eq!(XDS_TYPES, served);
    }

    #[test]
    fn counters_keep_istio_names() {
        let m = Metrics::new();
        m.xds_pushes
            .get_or_create(&TypeLabel {
                r#type: "cds".into(),
            })
            .inc();
        m.send_bytes.inc_by(7);
        let text = m.encode();
        assert!(
            text.contains("pilot_xds_pushes{type=\"cds\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("pilot_xds_send_bytes 7\n"), "{text}");
        assert!(text.contains("# TYPE pilot_xds_pushes counter"), "{text}");
        assert!(
            !text.contains("_total{") && !text.contains("# EOF"),
            "{text}"
        );
        // A name that itself contains "total" is untouched; every type starts at 0.
        assert!(
            text.contains("# TYPE pilot_total_xds_rejects counter"),
            "{text}"
        );
        assert!(
            text.contains("pilot_total_xds_rejects{type=\"eds\"} 0\n"),
            "{text}"
        );
    }
}
