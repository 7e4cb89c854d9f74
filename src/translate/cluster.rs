//! CDS: one EDS cluster per service port and per DestinationRule subset, named
//! like Istio's (`outbound|PORT|SUBSET|HOST`), with the DestinationRule's traffic
//! policy applied as Istio's `cluster_traffic_policy.go` does.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds,
    cluster::{
        self, ClusterDiscoveryType, CommonLbConfig, DiscoveryType, EdsClusterConfig, LbConfig,
        LbPolicy, LeastRequestLbConfig, MaglevLbConfig, RingHashLbConfig, RoundRobinLbConfig,
        SlowStartConfig,
    },
    CircuitBreakers, Cluster, OutlierDetection as EnvoyOutlier, UpstreamConnectionOptions,
};
use envoy_types::pb::envoy::config::core::v3::{
    Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CoreHttpOptions,
    TcpKeepalive,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{
        explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
        UseDownstreamHttpConfig,
    },
    HttpProtocolOptions,
};
use envoy_types::pb::envoy::r#type::v3::Percent as EnvoyPercent;
use envoy_types::pb::google::protobuf::{Duration, UInt64Value};

use super::mtls;
use super::proto::{ads, cluster_name, pack, u32_value};
use crate::model::istio::destination_rule::{
    ClientTlsSettings, ConnectionPoolSettings, EffectivePolicy, LoadBalancerSettings,
    OutlierDetection,
};
use crate::model::istio::{EffectiveRule, TrafficPolicy};
use crate::model::{Protocol, PushContext, Service, ServicePort};

/// Istio's default `connect_timeout` (mesh `connectTimeout`, 10s).
pub const DEFAULT_CONNECT_TIMEOUT_SECS: i64 = 10;

/// Envoy's extension-protocol-options key for upstream HTTP settings.
const HTTP_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Every outbound cluster of `svc` as seen by a proxy in `proxy_ns`: one per port,
/// plus one per port and subset of the DestinationRule in force. `identity`: the
/// proxy holds a workload certificate, so auto mTLS and ISTIO_MUTUAL apply
/// (`translate::mtls`).
pub fn service_clusters(
    svc: &Service,
    proxy_ns: &str,
    ctx: &PushContext,
    identity: bool,
) -> Vec<Cluster> {
    let rule = ctx
        .config
        .destination_rule(proxy_ns, &svc.hostname, &svc.namespace);
    let mut out = Vec::new();
    // Per cluster: its port, subset and DestinationRule `tls`.
    let mut tls = Vec::new();
    for port in &svc.ports {
        let top = rule.as_ref().and_then(|r| r.traffic_policy.as_ref());
        let policy = TrafficPolicy::effective(top, None, port.port);
        tls.push((port, String::new(), policy.tls.clone()));
        out.push(build(svc, port, "", policy));
        for subset in rule.iter().flat_map(|r: &EffectiveRule| r.subsets.iter()) {
            let policy = TrafficPolicy::effective(top, subset.traffic_policy.as_ref(), port.port);
            tls.push((port, subset.name.clone(), policy.tls.clone()));
            out.push(build(svc, port, &subset.name, policy));
        }
    }
    // Cross-network TLS origination (owned by translate::network).
    super::network::apply_cross_network_tls(&mut out, svc, ctx);
    let se = ctx.config.service_entry_of(svc);
    for (c, (port, subset, settings)) in out.iter_mut().zip(tls) {
        apply_tls(c, svc, port, &subset, settings.as_ref(), identity, ctx);
        // ServiceEntry `resolution` and `location` (owned by translate::service_entry).
        if let Some(se) = se {
            let labels = rule
                .iter()
                .flat_map(|r| r.subsets.iter())
                .find(|s| !subset.is_empty() && s.name == subset)
                .map(|s| &s.labels);
            super::service_entry::apply(c, &se.spec, &svc.hostname, port.port, labels);
        }
    }
    out
}

/// DestinationRule `tls` when set, else auto mTLS for a proxy with an identity
/// (Istio: user TLS settings turn auto mTLS off for the cluster).
fn apply_tls(
    c: &mut Cluster,
    svc: &Service,
    port: &ServicePort,
    subset: &str,
    settings: Option<&ClientTlsSettings>,
    identity: bool,
    ctx: &PushContext,
) {
    let http2 = matches!(port.protocol, Protocol::Http2 | Protocol::Grpc);
    let sni = || mtls::istio_sni(port.port, subset, &svc.hostname);
    let sans = || mtls::service_sans(svc, port.port, ctx);
    match settings {
        Some(s) => match mtls::client_tls(s, identity, sni(), &sans(), http2) {
            mtls::ClientTls::Socket(t) => mtls::set_transport_socket(c, &t),
            // DISABLE, or ISTIO_MUTUAL without a certificate to present: plaintext
            // to every endpoint.
            mtls::ClientTls::Plaintext | mtls::ClientTls::NoIdentity => {
                c.transport_socket_matches.clear()
            }
        },
        None if identity => {
            mtls::apply_auto_mtls(c, mtls::istio_mutual(sni(), &sans(), http2));
        }
        None => {}
    }
}

/// One EDS cluster with Istio's defaults, then the policy applied.
fn build(svc: &Service, port: &ServicePort, subset: &str, policy: EffectivePolicy) -> Cluster {
    let name = cluster_name(port.port, subset, &svc.hostname);
    let mut c = Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name,
        }),
        connect_timeout: Some(Duration {
            seconds: DEFAULT_CONNECT_TIMEOUT_SECS,
            nanos: 0,
        }),
        // Istio's default load balancer.
        lb_policy: LbPolicy::LeastRequest as i32,
        common_lb_config: Some(CommonLbConfig::default()),
        ..Default::default()
    };
    let mut http = HttpOptions::for_port(port.protocol, policy.connection_pool.as_ref());
    apply_connection_pool(&mut c, &mut http, policy.connection_pool.as_ref());
    apply_outlier_detection(&mut c, policy.outlier_detection.as_ref());
    apply_load_balancer(&mut c, policy.load_balancer.as_ref());
    // Locality LB settings (owned by translate::endpoint).
    super::endpoint::apply_locality_lb(&mut c, &policy);
    if let Some(opts) = http.finish() {
        c.typed_extension_protocol_options =
            HashMap::from([(HTTP_OPTIONS_KEY.to_string(), pack(&opts))]);
    }
    c
}

/// An inbound cluster (`inbound|PORT||`, the local workload) with the Sidecar's
/// connection pool for it, as Istio's inbound clusters: Istio's unlimited default
/// thresholds, the pool's circuit breakers, timeouts and HTTP options, and
/// HTTP/2 to the workload on `http2`/`grpc` ports.
pub fn apply_inbound_connection_pool(
    c: &mut Cluster,
    protocol: Protocol,
    pool: Option<&ConnectionPoolSettings>,
) {
    let mut http = HttpOptions::for_port(protocol, pool);
    apply_connection_pool(c, &mut http, pool);
    if let Some(opts) = http.finish() {
        c.typed_extension_protocol_options =
            HashMap::from([(HTTP_OPTIONS_KEY.to_string(), pack(&opts))]);
    }
}

/// The upstream HTTP protocol options being assembled for one cluster.
struct HttpOptions {
    /// `Some(true)`: HTTP/2 upstream; `Some(false)`: HTTP/1.1; `None`: not HTTP.
    http2: Option<bool>,
    use_downstream: bool,
    common: CoreHttpOptions,
    max_concurrent_streams: u32,
}

impl HttpOptions {
    /// HTTP/2 for `grpc`/`http2` ports, and for plain `http` ports when
    /// `h2UpgradePolicy: UPGRADE` (Istio's `shouldH2Upgrade` upgrades HTTP ports
    /// only; TCP ports stay raw TCP).
    fn for_port(protocol: Protocol, pool: Option<&ConnectionPoolSettings>) -> HttpOptions {
        let upgrade = pool
            .and_then(|p| p.http.as_ref())
            .and_then(|h| h.h2_upgrade_policy.as_deref());
        let http2 = match upgrade {
            Some("UPGRADE") if protocol == Protocol::Http => Some(true),
            _ if matches!(protocol, Protocol::Http2 | Protocol::Grpc) => Some(true),
            _ if protocol.is_http() => Some(false),
            _ => None,
        };
        HttpOptions {
            http2,
            use_downstream: false,
            common: CoreHttpOptions::default(),
            max_concurrent_streams: 0,
        }
    }

    /// The options to attach, if anything differs from Envoy's HTTP/1.1 default.
    fn finish(self) -> Option<HttpProtocolOptions> {
        let has_common = self.common != CoreHttpOptions::default();
        if self.http2 != Some(true) && !has_common && !self.use_downstream {
            return None;
        }
        let h2 = Http2ProtocolOptions {
            max_concurrent_streams: (self.max_concurrent_streams > 0)
                .then(|| u32_value(self.max_concurrent_streams)),
            ..Default::default()
        };
        let upstream = if self.use_downstream {
            UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
                http_protocol_options: Some(Http1ProtocolOptions::default()),
                http2_protocol_options: Some(h2),
                ..Default::default()
            })
        } else {
            UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(if self.http2 == Some(true) {
                    ProtocolConfig::Http2ProtocolOptions(h2)
                } else {
                    ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default())
                }),
            })
        };
        Some(HttpProtocolOptions {
            common_http_protocol_options: has_common.then_some(self.common),
            upstream_protocol_options: Some(upstream),
            ..Default::default()
        })
    }
}

/// Istio's default thresholds: everything unlimited (`u32::MAX`), tracking
/// remaining, so Envoy's low defaults (1024, 3 retries) never surprise.
fn default_thresholds() -> Thresholds {
    Thresholds {
        max_connections: Some(u32_value(u32::MAX)),
        max_pending_requests: Some(u32_value(u32::MAX)),
        max_requests: Some(u32_value(u32::MAX)),
        max_retries: Some(u32_value(u32::MAX)),
        track_remaining: true,
        ..Default::default()
    }
}

/// `connectionPool` -> circuit breakers, connect timeout, keepalive, and common
/// HTTP options (Istio's `applyConnectionPool`; zero means "unset").
fn apply_connection_pool(
    c: &mut Cluster,
    http: &mut HttpOptions,
    pool: Option<&ConnectionPoolSettings>,
) {
    let mut t = default_thresholds();
    if let Some(h) = pool.and_then(|p| p.http.as_ref()) {
        // Envoy applies max_requests to HTTP/2 and max_pending_requests to HTTP/1.1.
        if h.http2_max_requests > 0 {
            t.max_requests = Some(u32_value(h.http2_max_requests as u32));
        }
        if h.http1_max_pending_requests > 0 {
            t.max_pending_requests = Some(u32_value(h.http1_max_pending_requests as u32));
        }
        if h.max_retries > 0 {
            t.max_retries = Some(u32_value(h.max_retries as u32));
        }
        if let Some(idle) = h.idle_timeout {
            http.common.idle_timeout = Some(idle.to_proto());
        }
        if h.max_requests_per_connection > 0 {
            http.common.max_requests_per_connection =
                Some(u32_value(h.max_requests_per_connection as u32));
        }
        http.max_concurrent_streams = h.max_concurrent_streams.max(0) as u32;
        http.use_downstream = h.use_client_protocol;
    }
    if let Some(tcp) = pool.and_then(|p| p.tcp.as_ref()) {
        if let Some(ct) = tcp.connect_timeout {
            c.connect_timeout = Some(ct.to_proto());
        }
        if tcp.max_connections > 0 {
            t.max_connections = Some(u32_value(tcp.max_connections as u32));
        }
        if let Some(d) = tcp.max_connection_duration {
            http.common.max_connection_duration = Some(d.to_proto());
        }
        if http.common.idle_timeout.is_none() {
            http.common.idle_timeout = tcp.idle_timeout.map(|d| d.to_proto());
        }
        if let Some(k) = &tcp.tcp_keepalive {
            c.upstream_connection_options = Some(UpstreamConnectionOptions {
                tcp_keepalive: Some(TcpKeepalive {
                    keepalive_probes: (k.probes > 0).then(|| u32_value(k.probes)),
                    keepalive_time: k.time.map(|d| u32_value(d.whole_seconds().max(1) as u32)),
                    keepalive_interval: k
                        .interval
                        .map(|d| u32_value(d.whole_seconds().max(1) as u32)),
                }),
                ..Default::default()
            });
        }
    }
    c.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![t],
        ..Default::default()
    });
}

/// `outlierDetection` as Istio's `applyOutlierDetection`: success-rate ejection
/// off; deprecated `consecutiveErrors` means consecutive *gateway* failures (Istio
/// API PR 617: enforcing_consecutive_gateway_failure 100, enforcing_consecutive_5xx
/// 0), which `consecutive5xxErrors`/`consecutiveGatewayErrors` then override;
/// `minHealthPercent` becomes the healthy panic threshold.
fn apply_outlier_detection(c: &mut Cluster, od: Option<&OutlierDetection>) {
    let Some(od) = od else { return };
    let mut out = EnvoyOutlier {
        enforcing_success_rate: Some(u32_value(0)),
        ..Default::default()
    };
    if let Some(n) = od.consecutive_errors.filter(|n| *n > 0) {
        out.consecutive_gateway_failure = Some(u32_value(n as u32));
        out.enforcing_consecutive_gateway_failure = Some(u32_value(100));
        out.enforcing_consecutive_5xx = Some(u32_value(0));
    }
    if let Some(n) = od.consecutive_5xx_errors {
        out.consecutive_5xx = Some(u32_value(n));
        out.enforcing_consecutive_5xx = Some(u32_value(if n > 0 { 100 } else { 0 }));
    }
    if let Some(n) = od.consecutive_gateway_errors {
        out.consecutive_gateway_failure = Some(u32_value(n));
        out.enforcing_consecutive_gateway_failure = Some(u32_value(if n > 0 { 100 } else { 0 }));
    }
    out.interval = od.interval.map(|d| d.to_proto());
    out.base_ejection_time = od.base_ejection_time.map(|d| d.to_proto());
    if let Some(p) = od.max_ejection_percent.filter(|p| *p > 0) {
        out.max_ejection_percent = Some(u32_value(p as u32));
    }
    if od.split_external_local_origin_errors {
        out.split_external_local_origin_errors = true;
        if let Some(n) = od.consecutive_local_origin_failures.filter(|n| *n > 0) {
            out.consecutive_local_origin_failure = Some(u32_value(n));
            out.enforcing_consecutive_local_origin_failure = Some(u32_value(100));
        }
        out.enforcing_local_origin_success_rate = Some(u32_value(0));
    }
    c.outlier_detection = Some(out);
    // Istio sets the panic threshold whenever outlier detection is on (0 when
    // minHealthPercent is unset: panic mode disabled).
    let lb = c.common_lb_config.get_or_insert_with(Default::default);
    lb.healthy_panic_threshold = Some(EnvoyPercent {
        value: od.min_health_percent.unwrap_or(0).max(0) as f64,
    });
}

/// `loadBalancer` as Istio's `applyLoadBalancer`: simple policies, slow start,
/// and for `consistentHash` a ring-hash (default, 1024 entries) or maglev cluster.
/// The hash key itself is a route-level `hash_policy` (see `route.rs`).
fn apply_load_balancer(c: &mut Cluster, lb: Option<&LoadBalancerSettings>) {
    let slow_start = lb
        .and_then(|l| l.warmup_duration_secs)
        .map(|d| SlowStartConfig {
            slow_start_window: Some(d.to_proto()),
            ..Default::default()
        });
    match lb.and_then(|l| l.simple.as_deref()) {
        Some("ROUND_ROBIN") => {
            c.lb_policy = LbPolicy::RoundRobin as i32;
            c.lb_config = slow_start.map(|s| {
                LbConfig::RoundRobinLbConfig(RoundRobinLbConfig {
                    slow_start_config: Some(s),
                    ..Default::default()
                })
            });
        }
        Some("RANDOM") => c.lb_policy = LbPolicy::Random as i32,
        Some("PASSTHROUGH") => {
            c.lb_policy = LbPolicy::ClusterProvided as i32;
            c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(
                DiscoveryType::OriginalDst as i32,
            ));
            c.eds_cluster_config = None;
        }
        // LEAST_REQUEST, deprecated LEAST_CONN, UNSPECIFIED and unset.
        _ => {
            c.lb_policy = LbPolicy::LeastRequest as i32;
            c.lb_config = slow_start.map(|s| {
                LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                    slow_start_config: Some(s),
                    ..Default::default()
                })
            });
        }
    }
    let Some(ch) = lb.and_then(|l| l.consistent_hash.as_ref()) else {
        return;
    };
    if let Some(m) = &ch.maglev {
        c.lb_policy = LbPolicy::Maglev as i32;
        c.lb_config = (m.table_size != 0).then(|| {
            LbConfig::MaglevLbConfig(MaglevLbConfig {
                table_size: Some(UInt64Value {
                    value: m.table_size,
                }),
            })
        });
    } else {
        let size = match (&ch.ring_hash, ch.minimum_ring_size) {
            (Some(r), _) if r.minimum_ring_size != 0 => Some(r.minimum_ring_size),
            (Some(_), _) => None,
            (None, Some(n)) if n != 0 => Some(n),
            (None, _) => Some(1024),
        };
        c.lb_policy = LbPolicy::RingHash as i32;
        c.lb_config = size.map(|n| {
            LbConfig::RingHashLbConfig(RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value { value: n }),
                hash_function: cluster::ring_hash_lb_config::HashFunction::XxHash as i32,
                ..Default::default()
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::istio::destination_rule::{ConsistentHashLb, HttpSettings};
    use crate::model::istio::IstioDuration;

    fn port(protocol: Protocol) -> ServicePort {
        ServicePort {
            name: "http".into(),
            port: 7000,
            protocol,
        }
    }

    fn svc() -> Service {
        Service {
            hostname: "user.base.svc.cluster.local".into(),
            namespace: "base".into(),
            name: "user".into(),
            ports: vec![port(Protocol::Http)],
            endpoints: Default::default(),
            clusters: vec![],
        }
    }

    #[test]
    fn consecutive_errors_maps_to_gateway_failures() {
        let mut c = Cluster::default();
        let od = OutlierDetection {
            consecutive_errors: Some(5),
            interval: Some(IstioDuration::from_millis(10_000)),
            base_ejection_time: Some(IstioDuration::from_millis(30_000)),
            max_ejection_percent: Some(10),
            min_health_percent: Some(50),
            ..Default::default()
        };
        apply_outlier_detection(&mut c, Some(&od));
        let o = c.outlier_detection.unwrap();
        assert_eq!(o.consecutive_gateway_failure, Some(u32_value(5)));
        assert_eq!(
            o.enforcing_consecutive_gateway_failure,
            Some(u32_value(100))
        );
        assert_eq!(o.enforcing_consecutive_5xx, Some(u32_value(0)));
        assert_eq!(o.consecutive_5xx, None);
        assert_eq!(o.interval.unwrap().seconds, 10);
        assert_eq!(o.max_ejection_percent, Some(u32_value(10)));
        assert_eq!(
            c.common_lb_config
                .unwrap()
                .healthy_panic_threshold
                .unwrap()
                .value,
            50.0
        );
    }

    #[test]
    fn connection_pool_limits_become_circuit_breakers() {
        let pool = ConnectionPoolSettings {
            http: Some(HttpSettings {
                http1_max_pending_requests: 1,
                http2_max_requests: 1,
                max_requests_per_connection: 1,
                ..Default::default()
            }),
            tcp: None,
        };
        let policy = EffectivePolicy {
            connection_pool: Some(pool),
            ..Default::default()
        };
        let c = build(&svc(), &port(Protocol::Http), "", policy);
        let t = &c.circuit_breakers.unwrap().thresholds[0];
        assert_eq!(t.max_pending_requests, Some(u32_value(1)));
        assert_eq!(t.max_requests, Some(u32_value(1)));
        assert_eq!(t.max_connections, Some(u32_value(u32::MAX)));
        let opts = c
            .typed_extension_protocol_options
            .get(HTTP_OPTIONS_KEY)
            .expect("http options");
        let opts: HttpProtocolOptions = prost::Message::decode(opts.value.as_slice()).unwrap();
        assert_eq!(
            opts.common_http_protocol_options
                .unwrap()
                .max_requests_per_connection,
            Some(u32_value(1))
        );
    }

    #[test]
    fn consistent_hash_defaults_to_ring_hash_1024() {
        let lb = LoadBalancerSettings {
            consistent_hash: Some(ConsistentHashLb {
                http_header_name: Some("UserID".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut c = Cluster::default();
        apply_load_balancer(&mut c, Some(&lb));
        assert_eq!(c.lb_policy, LbPolicy::RingHash as i32);
        match c.lb_config {
            Some(LbConfig::RingHashLbConfig(r)) => {
                assert_eq!(r.minimum_ring_size.unwrap().value, 1024)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn h2_upgrade_applies_to_http_ports_only() {
        let policy = || EffectivePolicy {
            connection_pool: Some(ConnectionPoolSettings {
                http: Some(HttpSettings {
                    h2_upgrade_policy: Some("UPGRADE".into()),
                    ..Default::default()
                }),
                tcp: None,
            }),
            ..Default::default()
        };
        let http = build(&svc(), &port(Protocol::Http), "", policy());
        let opts = http
            .typed_extension_protocol_options
            .get(HTTP_OPTIONS_KEY)
            .expect("http2 options");
        let opts: HttpProtocolOptions = prost::Message::decode(opts.value.as_slice()).unwrap();
        assert!(matches!(
            opts.upstream_protocol_options,
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(_))
                }
            ))
        ));
        let tcp = build(&svc(), &port(Protocol::Tcp), "", policy());
        assert!(tcp.typed_extension_protocol_options.is_empty());
    }

    #[test]
    fn grpc_ports_get_http2() {
        let c = build(
            &svc(),
            &port(Protocol::Grpc),
            "",
            EffectivePolicy::default(),
        );
        let opts = c
            .typed_extension_protocol_options
            .get(HTTP_OPTIONS_KEY)
            .expect("http2 options");
        let opts: HttpProtocolOptions = prost::Message::decode(opts.value.as_slice()).unwrap();
        match opts.upstream_protocol_options {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => {
                assert!(matches!(
                    e.protocol_config,
                    Some(ProtocolConfig::Http2ProtocolOptions(_))
                ))
            }
            other => panic!("unexpected {other:?}"),
        }
        let plain = build(
            &svc(),
            &port(Protocol::Http),
            "",
            EffectivePolicy::default(),
        );
        assert!(plain.typed_extension_protocol_options.is_empty());
    }
}
