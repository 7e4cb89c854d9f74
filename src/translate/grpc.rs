//! Proxyless gRPC clients (`ProxyRole::Grpc`): what gRPC's own xDS client
//! (`xds:///HOST:PORT` targets) gets, as Istio's `pilot/pkg/networking/grpcgen`
//! builds it, restricted to what gRPC implements so that nothing is NACKed.
//! The reference is gRPC's proposals: A27 (base xDS: LDS API listener -> RDS ->
//! CDS EDS clusters -> EDS with locality weights and priorities), A28 (routing:
//! path, header and runtime-fraction matches, weighted clusters), A31 (timeouts:
//! `max_stream_duration`), A32 (circuit breaking: `max_requests`), A33 (fault
//! injection), A39 (HTTP filters: unknown per-route filter configs are NACKed),
//! A42 (ring hash and its hash policies), A44 (retries). `docs/GRPC.md` lists
//! every field and what happens to it.
//!
//! Resources (the client asks for each by name, LDS and CDS included; the
//! stream sends only what it asked for, `xds::connection`):
//! - LDS: one API listener per visible service host and port, named `HOST:PORT`
//!   for the FQDN and, for services in the client's own namespace, for the short
//!   names Istio serves (`NAME`, `NAME.NS`, `NAME.NS.svc`), each an
//!   `HttpConnectionManager` over RDS `outbound|PORT||HOST` with the fault and
//!   router filters;
//! - RDS: `outbound|PORT||HOST`, one virtual host for the service (every name it
//!   answers to, with and without the port): the `mesh` VirtualService routes
//!   claiming the host (`translate::route`), else the default route, cut down to
//!   what gRPC reads;
//! - CDS: `outbound|PORT|SUBSET|HOST` EDS clusters over ADS, round robin or ring
//!   hash (`consistentHash`), `http2MaxRequests` as `max_requests`;
//! - EDS: the shared assignments (`translate::endpoint`, locality weights and
//!   priorities included), which gRPC reads as they are.
//!
//! Names a client asks for that do not exist get nothing until they appear
//! (the stream remembers them). Generation reads only the proxy class (role,
//! namespace, labels), so clients of one namespace and label set share it.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds,
    cluster::{
        ring_hash_lb_config::HashFunction, ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
        LbConfig, LbPolicy, RingHashLbConfig,
    },
    CircuitBreakers, Cluster,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    retry_policy::RetryBackOff,
    route::Action,
    route_action::{
        hash_policy::{FilterState, Header, PolicySpecifier},
        HashPolicy, MaxStreamDuration,
    },
    RetryPolicy, Route, RouteAction, RouteConfiguration, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter::ConfigType as HttpFilterConfig,
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::UInt64Value;

use super::listener::ROUTER_FILTER;
use super::proto::{ads, cluster_name, pack, u32_value};
use super::route::{default_route, http_routes, sort_catch_all_last, RouteScope, FAULT_FILTER};
use super::Generated;
use crate::model::istio::destination_rule::{ConsistentHashLb, EffectivePolicy};
use crate::model::istio::virtual_service::HttpRetry;
use crate::model::istio::{TrafficPolicy, MESH_GATEWAY};
use crate::model::{Proxy, PushContext, Service};

/// The filter state key gRPC hashes on for "every RPC of this channel to one
/// host" (gRFC A42: `filter_state` with key `io.grpc.channel_id`).
pub const CHANNEL_ID_KEY: &str = "io.grpc.channel_id";

/// gRPC's largest ring (gRFC A42: `minimum_ring_size`/`maximum_ring_size` above
/// 8M are NACKed).
pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

/// The status names gRPC retries on (gRFC A44: other `retry_on` values are
/// ignored).
pub const GRPC_RETRY_ON: [&str; 5] = [
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// LDS, RDS and CDS for a proxyless gRPC client. `_identity`: client-side TLS
/// is not sent (`docs/GRPC.md`), so the certificate does not change the config.
pub fn generate(proxy: &Proxy, ctx: &PushContext, _identity: bool) -> Generated {
    let mut out = Generated::default();
    let services: Vec<&Service> = ctx
        .services
        .values()
        .filter(|s| ctx.config.service_visible(s, &proxy.namespace))
        .map(|s| s.as_ref())
        .collect();
    let vs_routes = virtual_service_routes(proxy, ctx);
    for svc in services {
        let names = listener_hosts(svc, &proxy.namespace);
        for port in &svc.ports {
            let p = port.port as u32;
            let route_name = cluster_name(port.port, "", &svc.hostname);
            for host in &names {
                out.listeners
                    .push(api_listener(&format!("{host}:{p}"), &route_name));
            }
            let routes = match vs_routes.get(&(svc.hostname.to_string(), p)) {
                Some(r) => r.clone(),
                None => vec![default_route(
                    &svc.hostname,
                    p,
                    RouteScope {
                        port: p,
                        gateway: MESH_GATEWAY,
                        proxy,
                        ctx,
                    },
                )],
            };
            out.routes.push(RouteConfiguration {
                name: route_name,
                virtual_hosts: vec![VirtualHost {
                    name: format!("{}:{p}", svc.hostname),
                    domains: names
                        .iter()
                        .flat_map(|n| [n.clone(), format!("{n}:{p}")])
                        .collect(),
                    routes: routes.into_iter().map(for_grpc).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        out.clusters.extend(clusters(svc, &proxy.namespace, ctx));
    }
    // A gRPC server's listeners (gRFC A36), for the ports Services select it on.
    out.listeners
        .extend(super::grpc_server::server_listeners(proxy, ctx));
    out
}

/// The names a client may dial a service by (Istio's `tryFindFQDN`): the FQDN,
/// and in the client's own namespace `NAME`, `NAME.NS` and `NAME.NS.svc`.
fn listener_hosts(svc: &Service, proxy_ns: &str) -> Vec<String> {
    let mut names = vec![svc.hostname.to_string()];
    if svc.namespace == proxy_ns {
        names.push(svc.name.clone());
        names.push(format!("{}.{}", svc.name, svc.namespace));
        names.push(format!("{}.{}.svc", svc.name, svc.namespace));
    }
    names
}

/// The `mesh` VirtualService routes per (resolved host, port), oldest
/// VirtualService first, catch-alls last (as a sidecar merges them).
fn virtual_service_routes(proxy: &Proxy, ctx: &PushContext) -> BTreeMap<(String, u32), Vec<Route>> {
    let mut out: BTreeMap<(String, u32), Vec<Route>> = BTreeMap::new();
    let vss: Vec<_> = ctx
        .config
        .virtual_services_for_gateway(MESH_GATEWAY, &proxy.namespace)
        .filter(|vs| !vs.spec.http.is_empty())
        .collect();
    for vs in vss {
        for h in &vs.spec.hosts {
            let host = ctx.config.resolve_host(h, &vs.meta.namespace);
            let Some(svc) = ctx.services.get(host.as_str()) else {
                continue;
            };
            for port in &svc.ports {
                let p = port.port as u32;
                let routes = http_routes(
                    vs,
                    RouteScope {
                        port: p,
                        gateway: MESH_GATEWAY,
                        proxy,
                        ctx,
                    },
                );
                if !routes.is_empty() {
                    out.entry((host.clone(), p)).or_default().extend(routes);
                }
            }
        }
    }
    for routes in out.values_mut() {
        *routes = sort_catch_all_last(std::mem::take(routes));
    }
    out
}

/// An API listener (gRFC A27): the HttpConnectionManager gRPC reads, RDS over
/// ADS and the HTTP filters it implements (fault, then the router, last).
fn api_listener(name: &str, route_name: &str) -> Listener {
    let filter = |name: &str, config| HttpFilter {
        name: name.into(),
        config_type: Some(HttpFilterConfig::TypedConfig(config)),
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_name.into(),
        })),
        http_filters: vec![
            filter(FAULT_FILTER, pack(&HttpFault::default())),
            filter(ROUTER_FILTER, pack(&Router::default())),
        ],
        ..Default::default()
    };
    Listener {
        name: name.into(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack(&hcm)),
        }),
        ..Default::default()
    }
}

/// A route as gRPC reads it (gRFC A28, A31, A33, A42, A44). The match is kept
/// as built (gRPC skips a route with query-parameter matches, as it must: a
/// gRPC request has no query). The action keeps its cluster or weighted
/// clusters; the VirtualService `timeout` becomes `max_stream_duration` (A31:
/// gRPC ignores `timeout`), the retry policy keeps what A44 reads, the hash
/// policies what A42 reads. Per-route filter configs other than the fault
/// filter's are dropped: gRPC NACKs a config for a filter it does not know
/// (A39). Redirects and direct responses stay: gRPC fails RPCs that match them
/// with UNAVAILABLE rather than NACK the route.
fn for_grpc(mut r: Route) -> Route {
    r.typed_per_filter_config
        .retain(|name, _| name.as_str() == FAULT_FILTER);
    r.request_headers_to_add.clear();
    r.request_headers_to_remove.clear();
    r.response_headers_to_add.clear();
    r.response_headers_to_remove.clear();
    if let Some(Action::Route(a)) = &mut r.action {
        *a = grpc_action(std::mem::take(a));
    }
    r
}

fn grpc_action(a: RouteAction) -> RouteAction {
    let timeout = a.timeout.filter(|t| t.seconds > 0 || t.nanos > 0);
    RouteAction {
        cluster_specifier: a.cluster_specifier,
        max_stream_duration: timeout.map(|t| MaxStreamDuration {
            max_stream_duration: Some(t),
            ..Default::default()
        }),
        retry_policy: a.retry_policy.and_then(grpc_retry),
        hash_policy: a.hash_policy.into_iter().filter_map(grpc_hash).collect(),
        ..Default::default()
    }
}

/// Envoy's retry policy as gRPC reads it (A44): the gRPC status names in
/// `retry_on`, `num_retries`, and `retry_back_off` (base interval; gRPC takes
/// 10x the base as the maximum when it is unset). A policy retrying on no
/// status gRPC knows is dropped.
fn grpc_retry(p: RetryPolicy) -> Option<RetryPolicy> {
    let on: Vec<&str> = p
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|s| GRPC_RETRY_ON.contains(s))
        .collect();
    if on.is_empty() {
        return None;
    }
    let back_off = p
        .retry_back_off
        .and_then(|b| b.base_interval)
        .filter(|d| d.seconds > 0 || d.nanos > 0)
        .map(|d| RetryBackOff {
            base_interval: Some(d),
            ..Default::default()
        });
    Some(RetryPolicy {
        retry_on: on.join(","),
        num_retries: p.num_retries,
        retry_back_off: back_off,
        ..Default::default()
    })
}

/// The hash policies gRPC reads (A42): a header, or the channel id, which is
/// what Istio's `useSourceIp` becomes for a proxyless client (every RPC of one
/// client channel to one host). Cookies and query parameters do not exist for
/// gRPC and are dropped (`docs/GRPC.md`).
fn grpc_hash(h: HashPolicy) -> Option<HashPolicy> {
    let spec = match h.policy_specifier? {
        PolicySpecifier::Header(hd) => PolicySpecifier::Header(Header {
            header_name: hd.header_name,
            ..Default::default()
        }),
        PolicySpecifier::ConnectionProperties(c) if c.source_ip => {
            PolicySpecifier::FilterState(FilterState {
                key: CHANNEL_ID_KEY.into(),
            })
        }
        _ => return None,
    };
    Some(HashPolicy {
        policy_specifier: Some(spec),
        ..Default::default()
    })
}

/// The clusters of `svc` a client in `proxy_ns` uses: one per port and per
/// subset of the DestinationRule in force.
fn clusters(svc: &Service, proxy_ns: &str, ctx: &PushContext) -> Vec<Cluster> {
    let rule = ctx
        .config
        .destination_rule(proxy_ns, &svc.hostname, &svc.namespace);
    let top = rule.as_ref().and_then(|r| r.traffic_policy.as_ref());
    let mut out = Vec::new();
    for port in &svc.ports {
        let policy = TrafficPolicy::effective(top, None, port.port);
        // ISTIO_MUTUAL: mTLS from the certificate provider (`grpc_server`).
        let tls = |mut c: Cluster, policy: &EffectivePolicy| {
            super::grpc_server::apply_client_tls(&mut c, policy, svc, port.port, ctx);
            c
        };
        out.push(tls(
            cluster(&cluster_name(port.port, "", &svc.hostname), &policy),
            &policy,
        ));
        for subset in rule.iter().flat_map(|r| r.subsets.iter()) {
            let policy = TrafficPolicy::effective(top, subset.traffic_policy.as_ref(), port.port);
            out.push(tls(
                cluster(
                    &cluster_name(port.port, &subset.name, &svc.hostname),
                    &policy,
                ),
                &policy,
            ));
        }
    }
    out
}

/// An EDS cluster over ADS with what gRPC reads of the policy: ring hash for
/// `consistentHash` (A42; `maglev` too, gRPC has no maglev), round robin
/// otherwise (gRPC's default; Istio's grpcgen leaves the simple policies to
/// it), and `http2MaxRequests` as `circuit_breakers.thresholds[0].max_requests`
/// (A32, the only threshold gRPC reads).
fn cluster(name: &str, policy: &EffectivePolicy) -> Cluster {
    let mut c = Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.into(),
        }),
        lb_policy: LbPolicy::RoundRobin as i32,
        ..Default::default()
    };
    if let Some(ch) = policy
        .load_balancer
        .as_ref()
        .and_then(|l| l.consistent_hash.as_ref())
    {
        c.lb_policy = LbPolicy::RingHash as i32;
        c.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
            minimum_ring_size: ring_size(ch).map(|value| UInt64Value { value }),
            hash_function: HashFunction::XxHash as i32,
            ..Default::default()
        }));
    }
    if let Some(n) = policy
        .connection_pool
        .as_ref()
        .and_then(|p| p.http.as_ref())
        .map(|h| h.http2_max_requests)
        .filter(|n| *n > 0)
    {
        c.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                max_requests: Some(u32_value(n as u32)),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    c
}

/// Istio's ring size (`ringHash.minimumRingSize`, deprecated `minimumRingSize`,
/// default 1024), capped at gRPC's maximum.
fn ring_size(ch: &ConsistentHashLb) -> Option<u64> {
    let n = match (&ch.ring_hash, ch.minimum_ring_size) {
        (Some(r), _) if r.minimum_ring_size != 0 => r.minimum_ring_size,
        (Some(_), _) => return None,
        (None, Some(n)) if n != 0 => n,
        (None, _) => 1024,
    };
    Some(n.min(MAX_RING_SIZE))
}

/// Retries for a route gRPC clients take from `retries` (for unit tests and
/// `docs/GRPC.md`): Istio's policy, then what A44 reads of it.
pub fn retry_for(r: Option<&HttpRetry>) -> Option<RetryPolicy> {
    super::route::retry_policy(r, false).and_then(grpc_retry)
}

/// The names of every API listener in `g` (for tests and debug output).
pub fn listener_names(g: &Generated) -> BTreeSet<String> {
    g.listeners.iter().map(|l| l.name.clone()).collect()
}
