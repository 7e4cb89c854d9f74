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
use super::{credentials, Generated};
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
        let (cs, omitted) = clusters(svc, &proxy.namespace, ctx);
        out.clusters.extend(cs);
        out.omitted.extend(omitted);
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
/// subset of the DestinationRule in force, and the clusters left out.
///
/// `tls.mode` as Istio's grpcgen (`applyTLS`): DISABLE or unset is plaintext,
/// ISTIO_MUTUAL is mTLS from the certificate provider (`grpc_server`). SIMPLE
/// and MUTUAL (certificate files or `credentialName`) have no gRPC form we send
/// (A29 reads only certificate provider instances); grpcgen sends such a
/// cluster in plaintext, we leave it out instead (fail closed: RPCs to it fail
/// `UNAVAILABLE`) and say why.
fn clusters(
    svc: &Service,
    proxy_ns: &str,
    ctx: &PushContext,
) -> (Vec<Cluster>, Vec<credentials::Omission>) {
    let rule = ctx
        .config
        .destination_rule(proxy_ns, &svc.hostname, &svc.namespace);
    let top = rule.as_ref().and_then(|r| r.traffic_policy.as_ref());
    let mut out = Vec::new();
    let mut omitted = Vec::new();
    for port in &svc.ports {
        let mut add = |c: Cluster, policy: &EffectivePolicy| {
            let mut c = c;
            match client_tls_mode(policy) {
                None | Some("DISABLE") => out.push(c),
                Some("ISTIO_MUTUAL") => {
                    super::grpc_server::apply_client_tls(&mut c, policy, svc, port.port, ctx);
                    out.push(c);
                }
                Some(mode) => omitted.push(credentials::Omission {
                    what: format!("cluster {}", c.name),
                    reason: format!(
                        "DestinationRule {} tls.mode {mode} is not supported for proxyless gRPC \
                         clients (role grpc): only ISTIO_MUTUAL and DISABLE are; the cluster is \
                         left out rather than sent in plaintext",
                        rule.as_ref()
                            .map(|r| r.sources.join(", "))
                            .unwrap_or_default()
                    ),
                }),
            }
        };
        let policy = TrafficPolicy::effective(top, None, port.port);
        add(
            cluster(&cluster_name(port.port, "", &svc.hostname), &policy),
            &policy,
        );
        for subset in rule.iter().flat_map(|r| r.subsets.iter()) {
            let policy = TrafficPolicy::effective(top, subset.traffic_policy.as_ref(), port.port);
            add(
                cluster(
                    &cluster_name(port.port, &subset.name, &svc.hostname),
                    &policy,
                ),
                &policy,
            );
        }
    }
    (out, omitted)
}

/// The DestinationRule `tls.mode` in force for a cluster, if any.
fn client_tls_mode(policy: &EffectivePolicy) -> Option<&str> {
    policy.tls.as_ref().and_then(|t| t.mode.as_deref())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ProxyRole;
    use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
    use prost::Message;
    use std::path::Path;

    /// A golden input served to a proxyless gRPC client in the same namespace.
    fn grpc(fixture: &str) -> (Generated, PushContext) {
        let (ctx, mut proxy) = super::super::golden::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{fixture}.yaml")),
        );
        proxy.role = ProxyRole::Grpc;
        (super::super::generate(&proxy, &ctx), ctx)
    }

    fn route_config<'a>(g: &'a Generated, name: &str) -> &'a RouteConfiguration {
        g.routes
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no route config {name}"))
    }

    fn action(r: &Route) -> &RouteAction {
        match &r.action {
            Some(Action::Route(a)) => a,
            other => panic!("not a route action: {other:?}"),
        }
    }

    /// DestinationRule `tls` for a gRPC client: ISTIO_MUTUAL gets mTLS,
    /// DISABLE plaintext, SIMPLE and MUTUAL are left out (never plaintext),
    /// with a reason naming the DestinationRule and the role.
    #[test]
    fn simple_and_mutual_tls_fail_closed() {
        let (g, _) = grpc("dr_tls");
        let by_name = |n: &str| g.clusters.iter().find(|c| c.name == n);
        let v2 = by_name("outbound|7000|v2|order.base.svc.cluster.local").expect("v2 sent");
        assert!(
            v2.transport_socket.is_some(),
            "ISTIO_MUTUAL subset without TLS"
        );
        let stock = by_name("outbound|9000||stock.base.svc.cluster.local").expect("stock sent");
        assert!(stock.transport_socket.is_some());
        let admin = by_name("outbound|7001||order.base.svc.cluster.local").expect("DISABLE sent");
        assert!(admin.transport_socket.is_none());
        for (name, mode) in [
            ("outbound|7000||order.base.svc.cluster.local", "SIMPLE"),
            ("outbound|7000|v1|order.base.svc.cluster.local", "MUTUAL"),
            ("outbound|7000|v3|order.base.svc.cluster.local", "SIMPLE"),
        ] {
            assert!(by_name(name).is_none(), "{name} sent despite tls {mode}");
            let o = g
                .omitted
                .iter()
                .find(|o| o.what == format!("cluster {name}"))
                .unwrap_or_else(|| panic!("{name} not reported: {:?}", g.omitted));
            for part in [
                "DestinationRule base/order",
                &format!("tls.mode {mode}"),
                "role grpc",
            ] {
                assert!(o.reason.contains(part), "{part:?} not in {:?}", o.reason);
            }
        }
    }

    #[test]
    fn api_listeners_for_fqdn_and_short_names_over_rds() {
        let (g, _) = grpc("vs_retries_timeouts");
        let names = listener_names(&g);
        for n in [
            "payments.shop.svc.cluster.local:8080",
            "payments:8080",
            "payments.shop:8080",
            "payments.shop.svc:8080",
        ] {
            assert!(names.contains(n), "{n} missing from {names:?}");
        }
        let l = g
            .listeners
            .iter()
            .find(|l| l.name == "payments:8080")
            .unwrap();
        assert!(l.address.is_none() && l.filter_chains.is_empty());
        let any = l
            .api_listener
            .as_ref()
            .unwrap()
            .api_listener
            .as_ref()
            .unwrap();
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
        match &hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => {
                assert_eq!(
                    rds.route_config_name,
                    "outbound|8080||payments.shop.svc.cluster.local"
                )
            }
            other => panic!("{other:?}"),
        }
        let filters: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(filters, [FAULT_FILTER, ROUTER_FILTER]);
        let rc = route_config(&g, "outbound|8080||payments.shop.svc.cluster.local");
        assert_eq!(rc.virtual_hosts.len(), 1);
        assert!(rc.virtual_hosts[0]
            .domains
            .contains(&"payments:8080".to_string()));
        // Clusters are the EDS clusters the routes name, round robin.
        let c = g
            .clusters
            .iter()
            .find(|c| c.name == "outbound|8080||payments.shop.svc.cluster.local")
            .unwrap();
        assert_eq!(c.lb_policy, LbPolicy::RoundRobin as i32);
        assert_eq!(c.eds_cluster_config.as_ref().unwrap().service_name, c.name);
    }

    #[test]
    fn timeouts_are_max_stream_duration_and_retries_what_a44_reads() {
        let (g, _) = grpc("vs_retries_timeouts");
        let rc = route_config(&g, "outbound|8080||payments.shop.svc.cluster.local");
        let routes = &rc.virtual_hosts[0].routes;
        let charge = action(&routes[0]);
        assert!(charge.timeout.is_none(), "gRPC ignores `timeout`");
        let msd = charge.max_stream_duration.as_ref().unwrap();
        assert_eq!(msd.max_stream_duration.as_ref().unwrap().seconds, 5);
        // gateway-error, connect-failure, refused-stream and 409 name no gRPC
        // status: gRPC would retry on nothing, so no policy is sent.
        assert!(charge.retry_policy.is_none(), "{:?}", charge.retry_policy);
        // `attempts: 0`: no retries.
        assert!(action(&routes[1]).retry_policy.is_none());
        // Istio's default policy keeps its gRPC statuses.
        let default = action(&routes[2]).retry_policy.as_ref().unwrap();
        assert_eq!(default.retry_on, "unavailable,cancelled");
        assert_eq!(default.num_retries, Some(u32_value(2)));
        assert!(action(&routes[2]).max_stream_duration.is_none());
    }

    #[test]
    fn grpc_retry_keeps_only_grpc_statuses() {
        let p = super::super::route::retry_policy(None, false).unwrap();
        assert!(p.retry_on.contains("connect-failure"));
        let g = grpc_retry(p).unwrap();
        assert_eq!(g.retry_on, "unavailable,cancelled");
        let none = RetryPolicy {
            retry_on: "5xx,gateway-error".into(),
            ..Default::default()
        };
        assert!(grpc_retry(none).is_none());
        let r = HttpRetry {
            attempts: 4,
            retry_on: Some("unavailable,5xx,deadline-exceeded".into()),
            backoff: Some(crate::model::istio::IstioDuration::from_millis(250)),
            per_try_timeout: Some(crate::model::istio::IstioDuration::from_millis(900)),
            ..Default::default()
        };
        let p = retry_for(Some(&r)).unwrap();
        assert_eq!(p.retry_on, "unavailable,deadline-exceeded");
        assert_eq!(p.num_retries, Some(u32_value(4)));
        assert!(p.per_try_timeout.is_none() && p.retry_host_predicate.is_empty());
        let base = p.retry_back_off.unwrap().base_interval.unwrap();
        assert_eq!((base.seconds, base.nanos), (0, 250_000_000));
    }

    #[test]
    fn per_route_configs_other_than_fault_are_dropped() {
        let (g, _) = grpc("vs_headers_cors");
        for rc in &g.routes {
            for r in rc.virtual_hosts.iter().flat_map(|v| &v.routes) {
                assert!(
                    r.typed_per_filter_config.keys().all(|k| k == FAULT_FILTER),
                    "{:?}",
                    r.typed_per_filter_config.keys()
                );
                assert!(r.request_headers_to_add.is_empty());
            }
        }
        let (g, _) = grpc("vs_fault");
        assert!(g
            .routes
            .iter()
            .flat_map(|rc| rc.virtual_hosts.iter().flat_map(|v| &v.routes))
            .any(|r| r.typed_per_filter_config.contains_key(FAULT_FILTER)));
    }

    #[test]
    fn consistent_hash_is_ring_hash_with_the_hash_policies_grpc_reads() {
        let (g, _) = grpc("dr_load_balancer");
        let ring: Vec<&Cluster> = g
            .clusters
            .iter()
            .filter(|c| c.lb_policy == LbPolicy::RingHash as i32)
            .collect();
        assert!(!ring.is_empty(), "consistentHash gives ring hash clusters");
        for c in &ring {
            match &c.lb_config {
                Some(LbConfig::RingHashLbConfig(r)) => {
                    let n = r.minimum_ring_size.as_ref().map_or(1024, |v| v.value);
                    assert!(n <= MAX_RING_SIZE, "{}: {n}", c.name);
                }
                other => panic!("{}: {other:?}", c.name),
            }
        }
        // No lb policy gRPC lacks (maglev, least request, random) reaches it.
        assert!(g.clusters.iter().all(|c| [
            LbPolicy::RoundRobin as i32,
            LbPolicy::RingHash as i32
        ]
        .contains(&c.lb_policy)));
        // Hash policies: only header and channel id.
        for r in g
            .routes
            .iter()
            .flat_map(|rc| rc.virtual_hosts.iter().flat_map(|v| &v.routes))
        {
            if let Some(Action::Route(a)) = &r.action {
                for h in &a.hash_policy {
                    assert!(
                        matches!(
                            h.policy_specifier,
                            Some(PolicySpecifier::Header(_))
                                | Some(PolicySpecifier::FilterState(_))
                        ),
                        "{h:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn source_ip_hash_is_the_channel_id() {
        let h = HashPolicy {
            policy_specifier: Some(PolicySpecifier::ConnectionProperties(
                envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::ConnectionProperties {
                    source_ip: true,
                },
            )),
            ..Default::default()
        };
        match grpc_hash(h).unwrap().policy_specifier {
            Some(PolicySpecifier::FilterState(f)) => assert_eq!(f.key, CHANNEL_ID_KEY),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn weighted_subsets_keep_their_weights() {
        let (g, _) = grpc("vs_dr_features");
        let weighted = g
            .routes
            .iter()
            .flat_map(|rc| rc.virtual_hosts.iter().flat_map(|v| &v.routes))
            .filter_map(|r| match &r.action {
                Some(Action::Route(a)) => match &a.cluster_specifier {
                    Some(ClusterSpecifier::WeightedClusters(w)) => Some(w.clone()),
                    _ => None,
                },
                _ => None,
            })
            .next();
        if let Some(w) = weighted {
            let total: u32 = w
                .clusters
                .iter()
                .map(|c| c.weight.as_ref().map_or(0, |v| v.value))
                .sum();
            assert!(total > 0, "gRPC NACKs weighted clusters summing to 0");
            for c in &w.clusters {
                assert!(
                    g.clusters.iter().any(|k| k.name == c.name),
                    "{} has a cluster",
                    c.name
                );
            }
        }
    }
}
