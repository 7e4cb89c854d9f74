//! `crossmesh bootstrap`: the Envoy bootstrap that connects a proxy to crossmesh over
//! ADS, carrying the node identity istio-proxy would send (DESIGN.md §3), so the
//! xDS server can tell gateways from sidecars and translate for each.
//!
//! Pure: options in, a `serde_json::Value` (the `envoy.config.bootstrap.v3.Bootstrap`
//! in its JSON/YAML mapping) out, printed as YAML by `bootstrap_yaml`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde_json::{json, Map, Value};

use crate::model::{InterceptionMode, Locality, ProxyRole};

/// The Istio release whose xDS conventions crossmesh follows; sent as node metadata
/// `ISTIO_VERSION`, which istiod uses to gate features per proxy.
pub const ISTIO_VERSION: &str = "1.27.0";

/// Name of the static cluster that reaches the control plane, as in Istio's bootstrap.
pub const XDS_CLUSTER: &str = "xds-grpc";

/// Envoy's per-cluster stats the service graph reads (`telemetry::sink`),
/// suffixes of `cluster.<NAME>.`; `--stats-matcher graph` keeps them.
pub mod graph_stats {
    pub const REQUESTS: &str = "upstream_rq_total";
    pub const ERRORS_5XX: &str = "upstream_rq_5xx";
    pub const CONNECT_FAIL: &str = "upstream_cx_connect_fail";
    pub const LATENCY: &str = "upstream_rq_time";
    /// All four, as the bootstrap's `stats_matcher` inclusion list names them.
    pub const SUFFIXES: [&str; 4] = [REQUESTS, ERRORS_5XX, CONNECT_FAIL, LATENCY];
}

/// Where the proxy dials the control plane: an IP (a STATIC cluster) or a DNS name
/// (a STRICT_DNS cluster, like Istio's `istiod.istio-system.svc:15012`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsAddress {
    pub host: String,
    pub port: u16,
}

impl XdsAddress {
    fn is_ip(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }
}

impl fmt::Display for XdsAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for XdsAddress {
    type Err = String;

    /// `IP:PORT`, `[IPv6]:PORT` or `HOSTNAME:PORT`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(XdsAddress {
                host: sa.ip().to_string(),
                port: sa.port(),
            });
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?}: port {port:?} is not a number 1-65535"))?;
        if port == 0 {
            return Err(format!("{s:?}: port 0 cannot be dialed"));
        }
        let valid_dns = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !valid_dns {
            return Err(format!("{s:?}: {host:?} is neither an IP nor a DNS name"));
        }
        Ok(XdsAddress {
            host: host.to_string(),
            port,
        })
    }
}

/// Everything `crossmesh bootstrap` needs, already validated by the parsers below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapOptions {
    pub role: ProxyRole,
    /// Pod name.
    pub name: String,
    pub namespace: String,
    pub ip: IpAddr,
    pub labels: BTreeMap<String, String>,
    pub xds_address: XdsAddress,
    pub admin_port: u16,
    pub locality: Locality,
    /// Istio's `CLUSTER_ID`: the member cluster the proxy runs in.
    pub cluster_id: String,
    /// Istio's `NETWORK`; empty means the one flat network.
    pub network: String,
    pub service_account: String,
    pub interception: InterceptionMode,
    /// State-of-the-world ADS (`GRPC`) instead of Delta (`DELTA_GRPC`).
    pub sotw: bool,
    /// `<domainSuffix>` in the node id's last part (`NS.svc.<domainSuffix>`).
    pub domain_suffix: String,
    /// Authenticated xDS: connect over TLS trusting these roots and send the
    /// token; `None` is the plaintext port.
    pub secure: Option<SecureXds>,
    /// Envoy's stats pushed to crossmesh's metrics sink (the live service graph).
    pub stats_sink: StatsSink,
}

/// Envoy's `envoy.stat_sinks.metrics_service` to crossmesh (`telemetry::sink`),
/// over the same gRPC service as ADS (so with the same token on the TLS port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSink {
    /// Write the sink into the bootstrap (`--stats-sink`, default true).
    pub enabled: bool,
    /// The bootstrap's `stats_flush_interval` (Envoy's default is 5 s).
    pub flush_interval_secs: u32,
    /// Which stats Envoy keeps at all (`stats_config.stats_matcher`).
    pub matcher: StatsMatcher,
}

impl Default for StatsSink {
    fn default() -> Self {
        StatsSink {
            enabled: true,
            flush_interval_secs: 5,
            matcher: StatsMatcher::Graph,
        }
    }
}

/// Envoy has one stats matcher for everything (the admin `/stats` and
/// `/stats/prometheus` pages and every sink; a per-sink matcher does not exist,
/// envoyproxy/envoy#26030), so limiting what the sink sends limits what
/// Prometheus can scrape too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsMatcher {
    /// No matcher: every stat, as Envoy's default (`--stats-matcher all`).
    All,
    /// The default, as Istio keeps only an inclusion list by default:
    /// Istio's default inclusion prefixes (`cluster_manager`,
    /// `listener_manager`, `server`, `cluster.xds-grpc`) plus
    /// `control_plane` and the per-cluster stats the graph reads.
    Graph,
}

/// The bootstrap's `stats_sinks`, `stats_flush_interval` and `stats_config`
/// for `o.stats_sink`, as fields to merge into the bootstrap's top level.
fn stats_sink_fields(o: &BootstrapOptions) -> Map<String, Value> {
    let mut out = Map::new();
    let sink = &o.stats_sink;
    if sink.enabled {
        out.insert(
            "stats_sinks".into(),
            json!([{
                "name": "envoy.stat_sinks.metrics_service",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig",
                    "transport_api_version": "V3",
                    "grpc_service": grpc_service(o),
                    // Counters as deltas per flush and untagged full names
                    // (`cluster.<NAME>.<STAT>`): what `telemetry::sink` reads.
                    "report_counters_as_deltas": true,
                    "emit_tags_as_labels": false,
                    "histogram_emit_mode": "HISTOGRAM",
                }
            }]),
        );
        out.insert(
            "stats_flush_interval".into(),
            json!(format!("{}s", sink.flush_interval_secs)),
        );
    }
    if sink.matcher == StatsMatcher::Graph {
        let mut patterns: Vec<Value> = [
            "cluster_manager.",
            "listener_manager.",
            "server.",
            "control_plane.",
        ]
        .iter()
        .map(|p| json!({ "prefix": p }))
        .collect();
        patterns.push(json!({ "prefix": format!("cluster.{XDS_CLUSTER}.") }));
        for stat in graph_stats::SUFFIXES {
            patterns.push(json!({ "safe_regex": { "regex": format!(r"^cluster\..+\.{stat}$") } }));
        }
        out.insert(
            "stats_config".into(),
            json!({ "stats_matcher": { "inclusion_list": { "patterns": patterns } } }),
        );
    }
    out
}

/// How a proxy reaches crossmesh's TLS xDS port (`xdsTlsAddress`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecureXds {
    /// PEM roots the server certificate must chain to (the mesh's trust bundle,
    /// Istio's `root-cert.pem`).
    pub root_cert: std::path::PathBuf,
    /// The service-account token (a projected token with the mesh's audience).
    /// Envoy reads it again for every new ADS stream, so a token rotated on disk
    /// is used from the next reconnect on.
    pub token_file: std::path::PathBuf,
}

/// The ADS gRPC service: Envoy's own gRPC client to the static cluster
/// (plaintext), or, for the TLS port, the Google gRPC client with TLS channel
/// credentials and the `file_based_metadata` call credentials, which read the
/// token file on every call (stream) and send it as `authorization: Bearer ...`.
/// Envoy's own client could only send a static `initial_metadata`, read once at
/// start (the failure of kuma#4121: an expired token sent for ever).
fn grpc_service(o: &BootstrapOptions) -> Value {
    let Some(secure) = &o.secure else {
        return json!({ "envoy_grpc": { "cluster_name": XDS_CLUSTER } });
    };
    json!({
        "google_grpc": {
            "target_uri": o.xds_address.to_string(),
            "stat_prefix": XDS_CLUSTER,
            "channel_credentials": {
                "ssl_credentials": {
                    "root_certs": { "filename": secure.root_cert.display().to_string() }
                }
            },
            "call_credentials": [{
                "from_plugin": {
                    "name": "envoy.grpc_credentials.file_based_metadata",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.config.grpc_credential.v3.FileBasedMetadataConfig",
                        "secret_data": { "filename": secure.token_file.display().to_string() },
                        "header_key": "authorization",
                        "header_prefix": "Bearer ",
                    }
                }
            }],
            "credentials_factory_name": "envoy.grpc_credentials.file_based_metadata",
            // HTTP/2 PINGs, as the plaintext cluster's keepalive.
            "channel_args": {
                "args": {
                    "grpc.keepalive_time_ms": { "int_value": "30000" },
                    "grpc.keepalive_timeout_ms": { "int_value": "10000" },
                }
            },
        }
    })
}

/// Istio's node id: `TYPE~IP~POD.NS~NS.svc.<domainSuffix>`, `TYPE` being `router`
/// for gateways and `sidecar` for sidecars.
pub fn node_id(o: &BootstrapOptions) -> String {
    let kind = match o.role {
        ProxyRole::Gateway => "router",
        // Istio's proxyless gRPC node: a sidecar id, `GENERATOR: grpc`.
        ProxyRole::Sidecar | ProxyRole::Grpc => "sidecar",
    };
    format!(
        "{kind}~{}~{}.{}~{}.svc.{}",
        o.ip, o.name, o.namespace, o.namespace, o.domain_suffix
    )
}

/// Istio's service cluster (`node.cluster`): the workload's canonical name, taken
/// from the `service.istio.io/canonical-name`, `app.kubernetes.io/name` or `app`
/// label, else the pod name, then `.NAMESPACE`.
pub fn node_cluster(o: &BootstrapOptions) -> String {
    let app = [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ]
    .iter()
    .find_map(|k| o.labels.get(*k))
    .unwrap_or(&o.name);
    format!("{app}.{}", o.namespace)
}

/// The bootstrap as the JSON mapping of `envoy.config.bootstrap.v3.Bootstrap`.
pub fn bootstrap_json(o: &BootstrapOptions) -> Value {
    let interception = match o.interception {
        InterceptionMode::Redirect => "REDIRECT",
        InterceptionMode::None => "NONE",
    };
    let mut locality = Map::new();
    for (k, v) in [
        ("region", &o.locality.region),
        ("zone", &o.locality.zone),
        ("sub_zone", &o.locality.subzone),
    ] {
        if !v.is_empty() {
            locality.insert(k.into(), Value::String(v.clone()));
        }
    }
    let mut node = json!({
        "id": node_id(o),
        "cluster": node_cluster(o),
        "metadata": {
            "NAME": o.name,
            "NAMESPACE": o.namespace,
            "LABELS": o.labels,
            "CLUSTER_ID": o.cluster_id,
            "NETWORK": o.network,
            "INTERCEPTION_MODE": interception,
            "SERVICE_ACCOUNT": o.service_account,
            "ISTIO_VERSION": ISTIO_VERSION,
        },
    });
    if !locality.is_empty() {
        node["locality"] = Value::Object(locality);
    }
    // Each config source waits for its first response without a deadline
    // (`initial_fetch_timeout: 0s`), as in Istio's bootstrap: a proxy starts serving
    // only once it has its real config.
    let ads_source = json!({
        "ads": {},
        "initial_fetch_timeout": "0s",
        "resource_api_version": "V3",
    });
    let (cluster_type, dns) = if o.xds_address.is_ip() {
        ("STATIC", None)
    } else {
        ("STRICT_DNS", Some("V4_PREFERRED"))
    };
    let mut xds_cluster = json!({
        "name": XDS_CLUSTER,
        "type": cluster_type,
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [{
                "lb_endpoints": [{
                    "endpoint": {
                        "address": {
                            "socket_address": {
                                "address": o.xds_address.host,
                                "port_value": o.xds_address.port,
                            }
                        }
                    }
                }]
            }]
        },
        // gRPC needs HTTP/2; HTTP/2 PINGs detect a dead control plane that TCP
        // would only notice much later.
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": { "interval": "30s", "timeout": "10s" }
                    }
                }
            }
        },
        "upstream_connection_options": {
            "tcp_keepalive": {
                "keepalive_time": 300,
                "keepalive_interval": 30,
                "keepalive_probes": 3,
            }
        },
    });
    if let Some(family) = dns {
        xds_cluster["dns_lookup_family"] = json!(family);
    }
    let static_clusters = if o.secure.is_some() {
        // The Google gRPC client dials `target_uri` itself.
        json!([])
    } else {
        json!([xds_cluster])
    };
    let mut bootstrap = json!({
        "node": node,
        "admin": {
            "address": {
                "socket_address": { "address": "127.0.0.1", "port_value": o.admin_port }
            }
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": if o.sotw { "GRPC" } else { "DELTA_GRPC" },
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [grpc_service(o)],
            },
            "cds_config": ads_source.clone(),
            "lds_config": ads_source,
        },
        "static_resources": { "clusters": static_clusters },
        "layered_runtime": layered_runtime(),
    });
    if let Some(top) = bootstrap.as_object_mut() {
        top.extend(stats_sink_fields(o));
    }
    bootstrap
}

/// Envoy's runtime as Istio's bootstrap sets it (`pkg/bootstrap/config.go`
/// `extractRuntimeFlags`): RE2 programs up to 32,768 (Envoy's default error
/// level is 100, so a route regex of a few alternations is NACKed), no global
/// downstream connection limit (Envoy warns without one), and an admin layer.
fn layered_runtime() -> Value {
    json!({
        "layers": [
            {
                "name": "global config",
                "static_layer": {
                    "re2.max_program_size.error_level": 32768,
                    "overload.global_downstream_max_connections": 2147483647u64,
                }
            },
            { "name": "admin", "admin_layer": {} },
        ]
    })
}

/// Istio's name template of the server listeners a proxyless gRPC server asks
/// for (`pkg/istio-agent/grpcxds`: `%s` is the listening `IP:PORT`).
pub const GRPC_SERVER_LISTENER_TEMPLATE: &str = "xds.istio.io/grpc/lds/inbound/%s";

/// Why `crossmesh bootstrap --role grpc` refuses its options.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrpcBootstrapError {
    #[error("--role grpc: --root-cert/--token-file (the TLS xDS port) are not supported for proxyless gRPC; use the plaintext xDS address")]
    SecureXds,
}

/// The gRPC xDS bootstrap (`GRPC_XDS_BOOTSTRAP`, gRFC A27) of a proxyless gRPC
/// application, as Istio's agent writes it (`pkg/istio-agent/grpcxds`): one xDS
/// server over plaintext with `xds_v3` in `server_features`, the node as
/// crossmesh reads it (`model::Proxy::from_node`: Istio's `sidecar~...` id,
/// metadata `GENERATOR: grpc` and the usual `NAMESPACE`, `LABELS`, ...,
/// `node.locality`), and Istio's `server_listener_resource_name_template`.
pub fn grpc_bootstrap_json(o: &BootstrapOptions) -> Result<Value, GrpcBootstrapError> {
    if o.secure.is_some() {
        return Err(GrpcBootstrapError::SecureXds);
    }
    let mut node = json!({
        "id": node_id(o),
        "cluster": node_cluster(o),
        "metadata": {
            "GENERATOR": "grpc",
            "NAME": o.name,
            "NAMESPACE": o.namespace,
            "LABELS": o.labels,
            "CLUSTER_ID": o.cluster_id,
            "NETWORK": o.network,
            "SERVICE_ACCOUNT": o.service_account,
            "ISTIO_VERSION": ISTIO_VERSION,
            "INSTANCE_IPS": o.ip.to_string(),
        },
    });
    let mut locality = Map::new();
    for (k, v) in [
        ("region", &o.locality.region),
        ("zone", &o.locality.zone),
        ("sub_zone", &o.locality.subzone),
    ] {
        if !v.is_empty() {
            locality.insert(k.into(), Value::String(v.clone()));
        }
    }
    if !locality.is_empty() {
        node["locality"] = Value::Object(locality);
    }
    Ok(json!({
        "xds_servers": [{
            "server_uri": o.xds_address.to_string(),
            "channel_creds": [{ "type": "insecure" }],
            "server_features": ["xds_v3"],
        }],
        "node": node,
        "server_listener_resource_name_template": GRPC_SERVER_LISTENER_TEMPLATE,
    }))
}

/// Where a proxyless gRPC workload's certificate files are by default: Istio's
/// (its agent's output certificates for proxyless pods).
pub const GRPC_CERT_DIR: &str = "/var/lib/istio/data";

/// The gRPC bootstrap's `certificate_providers` (gRFC A29): the instance
/// `default` that crossmesh's TLS contexts name (`translate::grpc_server`),
/// gRPC's `file_watcher` plugin over `dir`'s `cert-chain.pem`, `key.pem` and
/// `root-cert.pem` (the layout `crossmesh workload-certs` writes), re-read
/// every 60 s.
pub fn grpc_certificate_providers(dir: &std::path::Path) -> Value {
    use crate::workload_certs::{CERT_CHAIN_FILE, KEY_FILE, ROOT_CERT_FILE};
    let file = |name: &str| dir.join(name).display().to_string();
    json!({
        crate::translate::grpc_server::CERT_PROVIDER_INSTANCE: {
            "plugin_name": "file_watcher",
            "config": {
                "certificate_file": file(CERT_CHAIN_FILE),
                "private_key_file": file(KEY_FILE),
                "ca_certificate_file": file(ROOT_CERT_FILE),
                "refresh_interval": "60s",
            }
        }
    })
}

/// The bootstrap as YAML, ready for `envoy -c`.
pub fn bootstrap_yaml(o: &BootstrapOptions) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(&bootstrap_json(o))
}

// ---- flag value parsers (used by the CLI; each error is one line) ----

/// `k=v,k=v` into a map; empty input is no labels. Keys and values follow
/// Kubernetes label syntax loosely: keys non-empty, no `,` or `=` inside either.
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("label {pair:?} is not key=value"))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            return Err(format!("label {pair:?} has an empty key"));
        }
        if v.contains('=') {
            return Err(format!("label {pair:?} has more than one '='"));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("label key {k:?} is given twice"));
        }
    }
    Ok(out)
}

/// `REGION[/ZONE[/SUBZONE]]`, Istio's locality form.
pub fn parse_locality(s: &str) -> Result<Locality, String> {
    let parts: Vec<&str> = s.split('/').collect();
    if parts.len() > 3 {
        return Err(format!("locality {s:?} has more than REGION/ZONE/SUBZONE"));
    }
    let get = |i: usize| parts.get(i).map(|p| p.to_string()).unwrap_or_default();
    let l = Locality {
        region: get(0),
        zone: get(1),
        subzone: get(2),
    };
    if (l.region.is_empty() && !s.is_empty()) || (l.zone.is_empty() && !l.subzone.is_empty()) {
        return Err(format!("locality {s:?} has an empty part"));
    }
    Ok(l)
}

/// A Kubernetes object name (RFC 1123 subdomain): pod names.
pub fn parse_pod_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a Kubernetes name (lowercase letters, digits, '-' and '.')"
        ))
    }
}

/// A Kubernetes namespace (RFC 1123 label).
pub fn parse_namespace(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a Kubernetes namespace (at most 63 lowercase letters, digits and '-')"
        ))
    }
}

/// A value that ends up inside the `~`-separated node id or in metadata: no `~`,
/// no whitespace.
pub fn parse_token(s: &str) -> Result<String, String> {
    if s.contains('~') || s.chars().any(char::is_whitespace) {
        Err(format!("{s:?} must not contain '~' or whitespace"))
    } else {
        Ok(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> BootstrapOptions {
        BootstrapOptions {
            role: ProxyRole::Gateway,
            name: "istio-ingressgateway-1".into(),
            namespace: "istio-system".into(),
            ip: "127.0.0.10".parse().unwrap(),
            labels: parse_labels("istio=ingressgateway,app=istio-ingressgateway,v=true").unwrap(),
            xds_address: "127.0.0.1:15010".parse().unwrap(),
            admin_port: 15000,
            locality: parse_locality("us-east/us-east-1a").unwrap(),
            cluster_id: "cluster1".into(),
            network: "vpc-a".into(),
            service_account: "default".into(),
            interception: InterceptionMode::Redirect,
            sotw: false,
            domain_suffix: "cluster.local".into(),
            secure: None,
            stats_sink: StatsSink::default(),
        }
    }

    #[test]
    fn stats_sink_points_at_the_xds_service() {
        let b = bootstrap_json(&opts());
        let sink = &b["stats_sinks"][0];
        assert_eq!(sink["name"], "envoy.stat_sinks.metrics_service");
        let c = &sink["typed_config"];
        assert_eq!(c["grpc_service"]["envoy_grpc"]["cluster_name"], XDS_CLUSTER);
        assert_eq!(c["report_counters_as_deltas"], true);
        assert_eq!(c["emit_tags_as_labels"], false);
        assert_eq!(b["stats_flush_interval"], "5s");
        let patterns = b["stats_config"]["stats_matcher"]["inclusion_list"]["patterns"]
            .as_array()
            .expect("Istio's inclusion list plus the graph's stats by default");
        assert!(patterns.contains(&json!({ "prefix": "server." })));
        // The TLS port: the same Google gRPC service, token and all.
        let mut o = opts();
        o.secure = Some(SecureXds {
            root_cert: "/r.pem".into(),
            token_file: "/t".into(),
        });
        let b = bootstrap_json(&o);
        assert_eq!(
            b["stats_sinks"][0]["typed_config"]["grpc_service"],
            b["dynamic_resources"]["ads_config"]["grpc_services"][0]
        );
        // `all`: no matcher.
        let mut o = opts();
        o.stats_sink.matcher = StatsMatcher::All;
        assert!(bootstrap_json(&o).get("stats_config").is_none());
        // Off, and the graph's matcher.
        let mut o = opts();
        o.stats_sink.enabled = false;
        let b = bootstrap_json(&o);
        assert!(b.get("stats_sinks").is_none() && b.get("stats_flush_interval").is_none());
        let patterns = b["stats_config"]["stats_matcher"]["inclusion_list"]["patterns"]
            .as_array()
            .unwrap();
        assert!(patterns.contains(&json!({ "prefix": "cluster.xds-grpc." })));
        assert!(patterns
            .contains(&json!({ "safe_regex": { "regex": r"^cluster\..+\.upstream_rq_total$" } })));
    }

    #[test]
    fn secure_xds_uses_tls_and_a_token_read_per_stream() {
        let mut o = opts();
        o.xds_address = "crossmesh.istio-system.svc:15012".parse().unwrap();
        o.secure = Some(SecureXds {
            root_cert: "/etc/crossmesh/root-cert.pem".into(),
            token_file: "/var/run/secrets/tokens/istio-token".into(),
        });
        let b = bootstrap_json(&o);
        let g = &b["dynamic_resources"]["ads_config"]["grpc_services"][0]["google_grpc"];
        assert_eq!(g["target_uri"], "crossmesh.istio-system.svc:15012");
        assert_eq!(
            g["channel_credentials"]["ssl_credentials"]["root_certs"]["filename"],
            "/etc/crossmesh/root-cert.pem"
        );
        let plugin = &g["call_credentials"][0]["from_plugin"];
        assert_eq!(plugin["name"], "envoy.grpc_credentials.file_based_metadata");
        assert_eq!(
            plugin["typed_config"]["secret_data"]["filename"],
            "/var/run/secrets/tokens/istio-token"
        );
        assert_eq!(plugin["typed_config"]["header_prefix"], "Bearer ");
        assert!(b["dynamic_resources"]["ads_config"]["grpc_services"][0]
            .get("envoy_grpc")
            .is_none());
        assert_eq!(b["static_resources"]["clusters"], json!([]));
        // Plaintext stays on Envoy's own client.
        let plain = bootstrap_json(&opts());
        assert_eq!(
            plain["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]
                ["cluster_name"],
            XDS_CLUSTER
        );
    }

    #[test]
    fn node_follows_istio_conventions() {
        let mut o = opts();
        let b = bootstrap_json(&o);
        assert_eq!(
            b["node"]["id"],
            "router~127.0.0.10~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local"
        );
        assert_eq!(b["node"]["cluster"], "istio-ingressgateway.istio-system");
        let md = &b["node"]["metadata"];
        assert_eq!(md["LABELS"]["istio"], "ingressgateway");
        assert_eq!(md["NAMESPACE"], "istio-system");
        assert_eq!(md["CLUSTER_ID"], "cluster1");
        assert_eq!(md["NETWORK"], "vpc-a");
        assert_eq!(md["INTERCEPTION_MODE"], "REDIRECT");
        assert_eq!(md["SERVICE_ACCOUNT"], "default");
        assert_eq!(md["ISTIO_VERSION"], ISTIO_VERSION);
        assert_eq!(
            b["node"]["locality"],
            json!({"region": "us-east", "zone": "us-east-1a"})
        );
        assert_eq!(
            b["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
        assert_eq!(b["admin"]["address"]["socket_address"]["port_value"], 15000);

        o.role = ProxyRole::Sidecar;
        o.interception = InterceptionMode::None;
        o.sotw = true;
        o.labels.clear();
        let b = bootstrap_json(&o);
        assert!(b["node"]["id"]
            .as_str()
            .unwrap()
            .starts_with("sidecar~127.0.0.10~"));
        assert_eq!(b["node"]["cluster"], "istio-ingressgateway-1.istio-system");
        assert_eq!(b["node"]["metadata"]["INTERCEPTION_MODE"], "NONE");
        assert_eq!(b["dynamic_resources"]["ads_config"]["api_type"], "GRPC");
    }

    #[test]
    fn grpc_bootstrap_is_istios_proxyless_form_and_parses_as_a_grpc_node() {
        let mut o = opts();
        o.role = ProxyRole::Grpc;
        o.name = "client-0".into();
        o.namespace = "test".into();
        let b = grpc_bootstrap_json(&o).unwrap();
        let server = &b["xds_servers"][0];
        assert_eq!(server["server_uri"], "127.0.0.1:15010");
        assert_eq!(server["channel_creds"], json!([{"type": "insecure"}]));
        assert_eq!(server["server_features"], json!(["xds_v3"]));
        assert_eq!(
            b["server_listener_resource_name_template"],
            "xds.istio.io/grpc/lds/inbound/%s"
        );
        assert_eq!(
            b["node"]["id"],
            "sidecar~127.0.0.10~client-0.test~test.svc.cluster.local"
        );
        assert_eq!(
            b["node"]["locality"],
            json!({"region": "us-east", "zone": "us-east-1a"})
        );
        // What crossmesh makes of the node it describes.
        let node = envoy_types::pb::envoy::config::core::v3::Node {
            id: b["node"]["id"].as_str().unwrap().to_string(),
            metadata: Some(to_struct(&b["node"]["metadata"])),
            ..Default::default()
        };
        let p = crate::model::Proxy::from_node(&node).unwrap();
        assert_eq!(p.role, ProxyRole::Grpc);
        assert_eq!(p.labels["istio"], "ingressgateway");
        assert_eq!(p.cluster_id, "cluster1");

        o.secure = Some(SecureXds {
            root_cert: "/r.pem".into(),
            token_file: "/t".into(),
        });
        assert_eq!(
            grpc_bootstrap_json(&o).unwrap_err(),
            GrpcBootstrapError::SecureXds
        );
    }

    fn to_struct(v: &Value) -> envoy_types::pb::google::protobuf::Struct {
        use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as PbValue};
        fn conv(v: &Value) -> PbValue {
            let kind = match v {
                Value::String(s) => Kind::StringValue(s.clone()),
                Value::Object(m) => Kind::StructValue(Struct {
                    fields: m.iter().map(|(k, v)| (k.clone(), conv(v))).collect(),
                }),
                other => Kind::StringValue(other.to_string()),
            };
            PbValue { kind: Some(kind) }
        }
        match conv(v).kind {
            Some(Kind::StructValue(s)) => s,
            _ => Struct::default(),
        }
    }

    #[test]
    fn yaml_round_trips_with_string_types_kept() {
        let o = opts();
        let yaml = bootstrap_yaml(&o).unwrap();
        let back: Value = serde_saphyr::from_str(&yaml).unwrap();
        // `v: "true"` must stay a string label, `@type` a key.
        assert_eq!(back, bootstrap_json(&o), "{yaml}");
    }

    #[test]
    fn dns_control_plane_uses_strict_dns() {
        let mut o = opts();
        o.xds_address = "crossmesh.istio-system.svc:15010".parse().unwrap();
        let b = bootstrap_json(&o);
        let c = &b["static_resources"]["clusters"][0];
        assert_eq!(c["type"], "STRICT_DNS");
        assert_eq!(
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["address"],
            "crossmesh.istio-system.svc"
        );
        let ip = bootstrap_json(&opts());
        assert_eq!(ip["static_resources"]["clusters"][0]["type"], "STATIC");
    }

    #[test]
    fn flag_parsers_reject_with_reason() {
        assert!(parse_labels("a=b,a=c").unwrap_err().contains("twice"));
        assert!(parse_labels("novalue").unwrap_err().contains("key=value"));
        assert!(parse_labels("").unwrap().is_empty());
        assert!(parse_locality("a/b/c/d").is_err());
        assert!(parse_locality("a//c").is_err());
        assert_eq!(parse_locality("r").unwrap().region, "r");
        assert!(parse_pod_name("Bad_Name").is_err());
        assert!(parse_namespace("a.b").is_err());
        assert!(parse_token("a~b").is_err());
        assert!("nohost".parse::<XdsAddress>().is_err());
        assert!("host:99999".parse::<XdsAddress>().is_err());
        assert!("bad host:1".parse::<XdsAddress>().is_err());
        let v6: XdsAddress = "[::1]:15010".parse().unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "[::1]:15010");
    }
}
