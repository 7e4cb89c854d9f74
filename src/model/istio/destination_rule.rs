//! `networking.istio.io` `DestinationRule`: what happens to traffic for a host
//! after routing: subsets, load balancing, connection pools, outlier detection.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::{PortSelector, WorkloadSelector};
use super::duration::IstioDuration;

/// `DestinationRule.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRule {
    /// A service host; short names resolve in the rule's namespace.
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default)]
    pub subsets: Vec<Subset>,
    #[serde(default)]
    pub export_to: Vec<String>,
    /// Rejected by validation (workload-scoped rules are not supported yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
}

/// `TrafficPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// Rejected by validation (not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelSettings>,
    /// Rejected by validation (not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Rejected by validation (not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// `TrafficPolicy.TunnelSettings`. Typed so a misspelt field is still reported;
/// the whole `tunnel` is rejected by validation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelSettings {
    /// `CONNECT` (default) or `POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default)]
    pub target_host: String,
    #[serde(default)]
    pub target_port: u32,
}

/// `TrafficPolicy.ProxyProtocol` (rejected by validation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyProtocol {
    /// `V1` or `V2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `TrafficPolicy.RetryBudget` (rejected by validation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Percent of active requests that may be retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retry_concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_interval: Option<IstioDuration>,
}

/// `TrafficPolicy.PortTrafficPolicy`: overrides for one port; a field set here
/// replaces the same field of the enclosing policy (Istio's merge).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    pub port: PortSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
}

/// `Subset`: endpoints whose labels include `labels`, with an optional policy
/// that overrides the rule's top-level one field by field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// `LoadBalancerSettings`: `simple` or `consistentHash`, not both.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    /// `UNSPECIFIED`, `LEAST_CONN` (deprecated), `RANDOM`, `PASSTHROUGH`,
    /// `ROUND_ROBIN`, `LEAST_REQUEST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Locality-weighted load balancing and failover (applied per proxy in EDS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<LocalityLbSetting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_duration_secs: Option<IstioDuration>,
    /// Rejected by validation (not implemented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_aware_lb_setting: Option<ZoneAwareLbSetting>,
    /// Rejected by validation (not implemented; `warmupDurationSecs` is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<WarmupConfiguration>,
}

/// `ZoneAwareLoadBalancerSetting` (rejected by validation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneAwareLbSetting {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cluster_size: Option<u64>,
}

/// `WarmupConfiguration` (rejected by validation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmupConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<IstioDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggression: Option<f64>,
}

/// `LocalityLoadBalancerSetting`. Localities are `region/zone/subzone` strings;
/// `*` matches any value of a part. Only one of `distribute` and `failover` may be
/// set (Istio's validation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLbSetting {
    /// Per source locality (`from`), the share of traffic (percent, summing to 100)
    /// each destination locality (`to`) gets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<LocalityDistribute>,
    /// Region failover: a proxy in region `from` fails over to region `to` before
    /// any other region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    /// Ordered label keys (optionally `key=value`): endpoints matching the proxy on
    /// more leading labels get a higher priority.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    /// `false` turns locality load balancing off for the host. Unset means on
    /// (Istio's mesh default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityDistribute {
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityFailover {
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
}

/// `ConsistentHashLB`: exactly one hash key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashLb {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_cookie: Option<HttpCookie>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_source_ip: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_query_parameter_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<Maglev>,
    /// Deprecated: use `ringHash.minimumRingSize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

/// `ConsistentHashLB.HTTPCookie`. With a `ttl`, Envoy generates the cookie when
/// the request lacks it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<IstioDuration>,
    /// Extra cookie attributes; rejected by validation (not implemented).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<CookieAttribute>,
}

/// `ConsistentHashLB.HTTPCookie.Attribute`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CookieAttribute {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    #[serde(default)]
    pub minimum_ring_size: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Maglev {
    #[serde(default)]
    pub table_size: u64,
}

/// `ConnectionPoolSettings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSettings>,
}

/// `ConnectionPoolSettings.TCPSettings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    #[serde(default)]
    pub max_connections: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<IstioDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<IstioDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<IstioDuration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    #[serde(default)]
    pub probes: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<IstioDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<IstioDuration>,
}

/// `ConnectionPoolSettings.HTTPSettings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    #[serde(default)]
    pub http1_max_pending_requests: i32,
    #[serde(default)]
    pub http2_max_requests: i32,
    #[serde(default)]
    pub max_requests_per_connection: i32,
    #[serde(default)]
    pub max_retries: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<IstioDuration>,
    /// `DEFAULT`, `DO_NOT_UPGRADE`, `UPGRADE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h2_upgrade_policy: Option<String>,
    #[serde(default)]
    pub use_client_protocol: bool,
    #[serde(default)]
    pub max_concurrent_streams: i32,
    /// HTTP/2 PING keepalive; rejected by validation (not implemented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_keep_alive: Option<ConnectionKeepalive>,
}

/// `ConnectionPoolSettings.HTTPSettings.ConnectionKeepalive`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionKeepalive {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<IstioDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<IstioDuration>,
}

/// `OutlierDetection`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Deprecated. Istio maps it to Envoy's consecutive *gateway* failures
    /// (502/503/504 and connect errors), not to consecutive 5xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_errors: Option<i32>,
    #[serde(default)]
    pub split_external_local_origin_errors: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(
        default,
        rename = "consecutive5xxErrors",
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<IstioDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<IstioDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<i32>,
    /// Rejected by validation (not implemented).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outlier_detection_http_error_codes: Vec<u32>,
}

/// `ClientTLSSettings`: modes DISABLE, SIMPLE, MUTUAL (certificate files Envoy
/// reads, or the Kubernetes Secret of `credentialName` over SDS) and
/// ISTIO_MUTUAL (the workload certificate over SDS); `caCrl` is a file Envoy
/// reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
}

impl TrafficPolicy {
    /// The policy for `port` and, if given, a subset: Istio's
    /// `MergeTrafficPolicy`: a subset's policy replaces the top-level one field by
    /// field, and a layer's `portLevelSettings` entry for the port replaces the
    /// result wholesale.
    pub fn effective(
        top: Option<&TrafficPolicy>,
        subset: Option<&TrafficPolicy>,
        port: u16,
    ) -> EffectivePolicy {
        let mut out = EffectivePolicy::default();
        for layer in [top, subset].into_iter().flatten() {
            // A layer's own fields override what came before...
            if layer.load_balancer.is_some() {
                out.load_balancer = layer.load_balancer.clone();
            }
            if layer.connection_pool.is_some() {
                out.connection_pool = layer.connection_pool.clone();
            }
            if layer.outlier_detection.is_some() {
                out.outlier_detection = layer.outlier_detection.clone();
            }
            if layer.tls.is_some() {
                out.tls = layer.tls.clone();
            }
            // Istio: a matching port-level entry replaces all of connectionPool,
            // outlierDetection and loadBalancer ("port level policies do not
            // inherit"), even the ones it leaves unset.
            if let Some(p) = layer
                .port_level_settings
                .iter()
                .find(|p| p.port.number == port as u32)
            {
                out.load_balancer = p.load_balancer.clone();
                out.connection_pool = p.connection_pool.clone();
                out.outlier_detection = p.outlier_detection.clone();
                out.tls = p.tls.clone();
            }
        }
        out
    }
}

/// The policy in force for one cluster after subset and port merging.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EffectivePolicy {
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTlsSettings>,
}

/// Istio's checks on `localityLbSetting` (`validation.go` `validateLocalityLbSetting`), as (field suffix, reason) pairs.
pub fn validate_locality_setting(s: &LocalityLbSetting) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if !s.distribute.is_empty() && !s.failover.is_empty() {
        out.push((
            String::new(),
            "set only one of distribute and failover".to_string(),
        ));
    }
    if !s.distribute.is_empty() && !s.failover_priority.is_empty() {
        out.push((
            String::new(),
            "set only one of distribute and failoverPriority".to_string(),
        ));
    }
    for (i, d) in s.distribute.iter().enumerate() {
        let f = format!(".distribute[{i}]");
        if let Err(e) = validate_locality_rule(&d.from) {
            out.push((format!("{f}.from"), e));
        }
        let mut sum: u64 = 0;
        for (to, w) in &d.to {
            if let Err(e) = validate_locality_rule(to) {
                out.push((format!("{f}.to[{to:?}]"), e));
            }
            if *w == 0 || *w > 100 {
                out.push((
                    format!("{f}.to[{to:?}]"),
                    format!("weight {w} is not in 1..100"),
                ));
            }
            sum += *w as u64;
        }
        if sum != 100 {
            out.push((format!("{f}.to"), format!("weights sum to {sum}, not 100")));
        }
    }
    for (i, fo) in s.failover.iter().enumerate() {
        let f = format!(".failover[{i}]");
        for (name, v) in [("from", &fo.from), ("to", &fo.to)] {
            if v.is_empty() {
                out.push((format!("{f}.{name}"), "must name a region".to_string()));
            } else if v.contains('/') || v.contains('*') {
                out.push((
                    format!("{f}.{name}"),
                    format!("{v:?} must be a region (no '/' or '*')"),
                ));
            }
        }
        if fo.from == fo.to && !fo.from.is_empty() {
            out.push((f, format!("from and to are both {:?}", fo.from)));
        }
    }
    for (i, l) in s.failover_priority.iter().enumerate() {
        let key = l.split('=').next().unwrap_or("");
        if key.is_empty() || l.matches('=').count() > 1 {
            out.push((
                format!(".failoverPriority[{i}]"),
                format!("{l:?} is not LABEL or LABEL=VALUE"),
            ));
        }
    }
    out
}

/// A `region[/zone[/subzone]]` rule: at most three parts, none empty, `*` only as
/// a whole part and only as the last part.
pub fn validate_locality_rule(rule: &str) -> Result<(), String> {
    let parts: Vec<&str> = rule.split('/').collect();
    if rule.is_empty() {
        return Err("locality is empty".into());
    }
    if parts.len() > 3 {
        return Err(format!(
            "locality {rule:?} has {} parts, more than region/zone/subzone",
            parts.len()
        ));
    }
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() {
            return Err(format!("locality {rule:?} has an empty part"));
        }
        if p.contains('*') && (*p != "*" || i != parts.len() - 1) {
            return Err(format!(
                "locality {rule:?}: '*' must be a whole part and the last one"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_reasons() {
        assert!(validate_locality_rule("a/b/c/d")
            .unwrap_err()
            .contains("4 parts"));
        assert!(validate_locality_rule("a/*/c").is_err());
        assert!(validate_locality_rule("a/b/*").is_ok());
        let s = LocalityLbSetting {
            distribute: vec![LocalityDistribute {
                from: "r1/z1".into(),
                to: [("r1/z1".to_string(), 70), ("r1/z2".to_string(), 20)].into(),
            }],
            ..Default::default()
        };
        let e = validate_locality_setting(&s);
        assert!(e.iter().any(|(_, r)| r.contains("sum to 90")), "{e:?}");
        let s = LocalityLbSetting {
            failover: vec![LocalityFailover {
                from: "r1".into(),
                to: "r1".into(),
            }],
            ..Default::default()
        };
        assert!(!validate_locality_setting(&s).is_empty());
    }
}
