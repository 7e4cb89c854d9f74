//! LDS building blocks: listeners, the HTTP connection manager over RDS, and TCP
//! proxy filter chains. Shared by gateways and sidecars.

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{
    filter::ConfigType as FilterConfig, listener_filter::ConfigType as ListenerFilterConfig,
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{
        CodecType, ForwardClientCertDetails, PathWithEscapedSlashesAction, RouteSpecifier,
        SetCurrentClientCertDetails, UpgradeConfig,
    },
    http_filter::ConfigType as HttpFilterConfig,
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy::{weighted_cluster::ClusterWeight, ClusterSpecifier, WeightedCluster},
    TcpProxy,
};

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::r#type::v3::{
    hash_policy::{PolicySpecifier, SourceIp},
    HashPolicy,
};

use super::proto::{ads, bool_value, pack, socket_address};
use super::route::{cluster_policy, CORS_FILTER, FAULT_FILTER};
use crate::config::{ForwardClientCert, PathNormalization};
use crate::model::istio::destination_rule::EffectivePolicy;
use crate::model::{MeshSettings, Proxy, PushContext};

pub const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
pub const TCP_PROXY_FILTER: &str = "envoy.filters.network.tcp_proxy";
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";
pub const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";

/// A listener named Istio's way (`ADDRESS_PORT`) binding `address:port`.
pub fn listener(
    address: &str,
    port: u32,
    direction: TrafficDirection,
    filter_chains: Vec<FilterChain>,
) -> Listener {
    // SNI, transport protocol and ALPN matches are what the TLS inspector reads.
    let needs_tls_inspector = filter_chains.iter().any(|fc| {
        fc.filter_chain_match.as_ref().is_some_and(|m| {
            !m.server_names.is_empty()
                || !m.transport_protocol.is_empty()
                || !m.application_protocols.is_empty()
        })
    });
    Listener {
        name: format!("{address}_{port}"),
        address: Some(socket_address(address, port)),
        filter_chains,
        traffic_direction: direction as i32,
        listener_filters: if needs_tls_inspector {
            vec![ListenerFilter {
                name: TLS_INSPECTOR.into(),
                config_type: Some(ListenerFilterConfig::TypedConfig(pack(
                    &TlsInspector::default(),
                ))),
                ..Default::default()
            }]
        } else {
            Vec::new()
        },
        ..Default::default()
    }
}

fn http_filter(name: &str, config: envoy_types::pb::google::protobuf::Any) -> HttpFilter {
    HttpFilter {
        name: name.into(),
        config_type: Some(HttpFilterConfig::TypedConfig(config)),
        ..Default::default()
    }
}

/// Which of istiod's listener classes an HTTP connection manager serves; the
/// defaults differ by class (`ListenerClass` in Istio's networking code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpClass {
    /// A gateway's server port (`buildGatewayConnectionManager`).
    Gateway,
    /// A sidecar's inbound port (`buildSidecarInboundHTTPOpts`).
    SidecarInbound,
    /// A sidecar's outbound port (`buildSidecarOutboundHTTPListenerOpts`).
    SidecarOutbound,
}

/// The `server` header Istio's proxies send (`EnvoyServerName`); sidecars'
/// outbound listeners keep Envoy's default (`envoy`), as Istio's do.
pub const ISTIO_SERVER_NAME: &str = "istio-envoy";

/// The HTTP connection manager fetching route config `route_name` over ADS, with
/// `security` (request authentication, then authorization: see
/// `translate::security`) ahead of Istio's HTTP filters that VirtualService
/// features need: CORS and fault (configured per route), then the router.
/// Istio's defaults for `class` apply (see [`istio_hcm`]).
pub fn http_connection_manager(
    stat_prefix: &str,
    route_name: &str,
    class: HttpClass,
    security: Vec<HttpFilter>,
    mesh: &MeshSettings,
) -> Filter {
    let route = RouteSpecifier::Rds(Rds {
        config_source: Some(ads()),
        route_config_name: route_name.to_string(),
    });
    let hcm = istio_hcm(class, stat_prefix, route, security, mesh);
    Filter {
        name: HCM_FILTER.into(),
        config_type: Some(FilterConfig::TypedConfig(pack(&hcm))),
    }
}

/// What istiod's `buildHTTPConnectionManager` (and the per-class builders
/// before it) set on every HTTP connection manager, for `class`:
/// - `upgrade_configs: [websocket]`: WebSocket upgrades allowed everywhere
///   (Istio sets no route-level `upgrade_configs` and no CONNECT outside
///   ambient/HBONE);
/// - `stream_idle_timeout: 0s`: Envoy's 5-minute stream idle timeout off (a
///   quiet WebSocket or long poll stays open);
/// - `proxy_100_continue: true` (`ENABLE_100_CONTINUE_HEADERS`, default on);
/// - `server_name: istio-envoy` on gateways and inbound (outbound keeps
///   Envoy's `envoy`);
/// - `use_remote_address: true` on gateways only (the edge; sidecars'
///   `PILOT_SIDECAR_USE_REMOTE_ADDRESS` defaults to false);
/// - gateways: `xff_num_trusted_hops` from `gatewayTopology.numTrustedProxies`
///   and `forward_client_cert_details` from
///   `gatewayTopology.forwardClientCertDetails` (default `SANITIZE_SET`), with
///   `set_current_client_cert_details` {subject, cert, dns, uri} when it is
///   `SANITIZE_SET` or `APPEND_FORWARD`;
/// - the mesh file's access log (`setHTTPAccessLog`) and path normalization.
///
/// Not set, as Istio leaves them unset by default: `common_http_protocol_options`
/// (`idle_timeout` only from a proxy's `IDLE_TIMEOUT` metadata: Envoy's 1h
/// default stands) and `http2_protocol_options` (Envoy's defaults).
fn istio_hcm(
    class: HttpClass,
    stat_prefix: &str,
    route: RouteSpecifier,
    security: Vec<HttpFilter>,
    mesh: &MeshSettings,
) -> HttpConnectionManager {
    let mut hcm = HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(route),
        http_filters: http_filters(security),
        upgrade_configs: vec![UpgradeConfig {
            upgrade_type: "websocket".into(),
            ..Default::default()
        }],
        stream_idle_timeout: Some(Default::default()),
        proxy_100_continue: true,
        access_log: mesh
            .access_log
            .iter()
            .map(super::access_log::file_access_log)
            .collect(),
        ..Default::default()
    };
    if class != HttpClass::SidecarOutbound {
        hcm.server_name = ISTIO_SERVER_NAME.into();
    }
    if class == HttpClass::Gateway {
        let topology = &mesh.gateway_topology;
        hcm.use_remote_address = Some(bool_value(true));
        hcm.xff_num_trusted_hops = topology.num_trusted_proxies;
        let xfcc = match topology
            .forward_client_cert_details
            .unwrap_or(ForwardClientCert::SanitizeSet)
        {
            ForwardClientCert::Sanitize => ForwardClientCertDetails::Sanitize,
            ForwardClientCert::ForwardOnly => ForwardClientCertDetails::ForwardOnly,
            ForwardClientCert::AppendForward => ForwardClientCertDetails::AppendForward,
            ForwardClientCert::SanitizeSet => ForwardClientCertDetails::SanitizeSet,
            ForwardClientCert::AlwaysForwardOnly => ForwardClientCertDetails::AlwaysForwardOnly,
        };
        hcm.forward_client_cert_details = xfcc as i32;
        if matches!(
            xfcc,
            ForwardClientCertDetails::SanitizeSet | ForwardClientCertDetails::AppendForward
        ) {
            hcm.set_current_client_cert_details = Some(SetCurrentClientCertDetails {
                subject: Some(bool_value(true)),
                cert: true,
                dns: true,
                uri: true,
                ..Default::default()
            });
        }
    }
    with_path_normalization(hcm, mesh.path_normalization)
}

/// `security` first (a request is authenticated and authorized before anything
/// acts on it, as in Istio's chains), then Istio's HTTP filters: CORS and fault
/// (configured per route), then the router.
fn http_filters(security: Vec<HttpFilter>) -> Vec<HttpFilter> {
    let mut out = security;
    out.extend([
        http_filter(CORS_FILTER, pack(&Cors::default())),
        http_filter(FAULT_FILTER, pack(&HttpFault::default())),
        http_filter(ROUTER_FILTER, pack(&Router::default())),
    ]);
    out
}

/// An HTTP connection manager with an inline route config (Istio's inbound
/// listeners: `inbound|PORT||` routes everything to the local workload), with
/// `security` ahead of the default filters.
pub fn http_connection_manager_inline(
    stat_prefix: &str,
    route: RouteConfiguration,
    security: Vec<HttpFilter>,
    mesh: &MeshSettings,
) -> Filter {
    let hcm = istio_hcm(
        HttpClass::SidecarInbound,
        stat_prefix,
        RouteSpecifier::RouteConfig(route),
        security,
        mesh,
    );
    Filter {
        name: HCM_FILTER.into(),
        config_type: Some(FilterConfig::TypedConfig(pack(&hcm))),
    }
}

/// istiod's mapping of meshConfig `pathNormalization` onto the HTTP connection
/// manager (`buildHTTPConnectionManager`): escaped slashes are kept unless
/// `DECODE_AND_MERGE_SLASHES` decodes them; every mode but `NONE` sets
/// `normalize_path`; the two `MERGE_SLASHES` modes merge slashes.
pub fn with_path_normalization(
    mut hcm: HttpConnectionManager,
    mode: PathNormalization,
) -> HttpConnectionManager {
    let (normalize, merge, escaped) = match mode {
        PathNormalization::None => (false, false, PathWithEscapedSlashesAction::KeepUnchanged),
        PathNormalization::Base => (true, false, PathWithEscapedSlashesAction::KeepUnchanged),
        PathNormalization::MergeSlashes => {
            (true, true, PathWithEscapedSlashesAction::KeepUnchanged)
        }
        PathNormalization::DecodeAndMergeSlashes => {
            (true, true, PathWithEscapedSlashesAction::UnescapeAndForward)
        }
    };
    hcm.normalize_path = Some(bool_value(normalize));
    hcm.merge_slashes = merge;
    hcm.path_with_escaped_slashes_action = escaped as i32;
    hcm
}

/// A TCP proxy to one cluster, or weighted clusters, writing the mesh file's
/// access log (Istio logs TCP connections too: `setTCPAccessLog`).
pub fn tcp_proxy(stat_prefix: &str, clusters: &[(String, u32)], mesh: &MeshSettings) -> Filter {
    Filter {
        name: TCP_PROXY_FILTER.into(),
        config_type: Some(FilterConfig::TypedConfig(pack(&tcp_proxy_config(
            stat_prefix,
            clusters,
            mesh,
        )))),
    }
}

fn tcp_proxy_config(
    stat_prefix: &str,
    clusters: &[(String, u32)],
    mesh: &MeshSettings,
) -> TcpProxy {
    let spec = match clusters {
        [(only, _)] => ClusterSpecifier::Cluster(only.clone()),
        many => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: many
                .iter()
                .map(|(name, weight)| ClusterWeight {
                    name: name.clone(),
                    weight: *weight,
                    ..Default::default()
                })
                .collect(),
        }),
    };
    TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(spec),
        access_log: mesh
            .access_log
            .iter()
            .map(super::access_log::file_access_log)
            .collect(),
        ..Default::default()
    }
}

/// A TCP proxy to `dests` with what the destinations' DestinationRules ask of
/// it (Istio's `buildOutboundNetworkFilters`): a source-IP hash key for a single
/// destination whose rule has `consistentHash.useSourceIp`, and the
/// `connectionPool.tcp` `idleTimeout` (`idle_timeout`) and
/// `maxConnectionDuration` (`max_downstream_connection_duration`) when every
/// destination's rule agrees on them (one TCP proxy cannot have two).
pub fn l4_proxy(stat: &str, dests: &[(String, u32)], proxy: &Proxy, ctx: &PushContext) -> Filter {
    let policies: Vec<Option<EffectivePolicy>> = dests
        .iter()
        .map(|(c, _)| cluster_policy(c, proxy, ctx))
        .collect();
    let hash_source_ip = matches!(policies.as_slice(), [Some(p)] if p
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.consistent_hash.as_ref())
        .is_some_and(|ch| ch.use_source_ip == Some(true)));
    let tcp = |p: &Option<EffectivePolicy>| {
        p.as_ref()
            .and_then(|p| p.connection_pool.as_ref())
            .and_then(|c| c.tcp.as_ref())
            .map(|t| (t.idle_timeout, t.max_connection_duration))
            .unwrap_or_default()
    };
    let (idle, max_duration) = match policies.split_first() {
        Some((first, rest)) if rest.iter().all(|p| tcp(p) == tcp(first)) => tcp(first),
        _ => (None, None),
    };
    let mut tp = tcp_proxy_config(stat, dests, &ctx.mesh);
    if hash_source_ip {
        tp.hash_policy = vec![HashPolicy {
            policy_specifier: Some(PolicySpecifier::SourceIp(SourceIp {})),
        }];
    }
    tp.idle_timeout = idle.map(|d| d.to_proto());
    tp.max_downstream_connection_duration = max_duration.map(|d| d.to_proto());
    Filter {
        name: TCP_PROXY_FILTER.into(),
        config_type: Some(FilterConfig::TypedConfig(pack(&tp))),
    }
}

/// A filter chain holding `filter`, matched on SNI names when given.
pub fn filter_chain(server_names: Vec<String>, filter: Filter) -> FilterChain {
    FilterChain {
        filter_chain_match: (!server_names.is_empty()).then(|| FilterChainMatch {
            server_names,
            ..Default::default()
        }),
        filters: vec![filter],
        ..Default::default()
    }
}
