//! Sidecar proxies: the `Sidecar` resource in force for the proxy scopes which
//! services it sees (egress) and which ports it serves (ingress); VirtualServices
//! bound to `mesh` give the routes; the visible services give the clusters.
//! Istio's `networking/core/listener.go`, `httproute.go` and `sidecar.go`.
//!
//! Two layouts, by the proxy's `INTERCEPTION_MODE` (DESIGN.md §3):
//! - `REDIRECT` (iptables): virtual outbound `0.0.0.0:15001` and virtual inbound
//!   `0.0.0.0:15006` with original destination; per-port outbound listeners
//!   `0.0.0.0_PORT` that do not bind (`bind_to_port: false`) and receive the
//!   connections 15001 hands over; HTTP routes named by port (`"80"`); TCP proxy
//!   for non-HTTP ports; unknown destinations go to `PassthroughCluster`
//!   (`ALLOW_ANY`) or `BlackHoleCluster` (`REGISTRY_ONLY`). Nothing here reads the
//!   proxy IP, so every REDIRECT sidecar with the same namespace and labels shares
//!   one generation.
//! - `NONE` (no iptables): every egress port is a real listener on `bind` (default
//!   the proxy IP), routing by Host with RDS named `BIND:PORT` (Istio's name for a
//!   bound listener); ingress listeners bind `<proxy ip>:<port>` and forward to
//!   their `defaultEndpoint` through a static cluster `inbound|PORT||`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy},
    Cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    socket_address::PortSpecifier, BindConfig, CidrRange, SocketAddress, TrafficDirection,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint,
    LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{
    listener_filter::ConfigType as ListenerFilterConfig, Filter, FilterChain, FilterChainMatch,
    Listener, ListenerFilter,
};
use envoy_types::pb::envoy::config::route::v3::{
    route::Action, route_action::ClusterSpecifier, DirectResponseAction, Route, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::google::protobuf::Duration;

use super::cluster::{
    apply_inbound_connection_pool, service_clusters, DEFAULT_CONNECT_TIMEOUT_SECS,
};
use super::listener::{
    filter_chain, http_connection_manager, http_connection_manager_inline, l4_proxy, listener,
    tcp_proxy, HttpClass,
};
use super::mtls;
use super::proto::{bool_value, pack, socket_address, u32_value};
use super::route::{
    default_route, http_routes, l4_destinations, referenced_hosts, sort_catch_all_last, RouteScope,
};
use super::Generated;
use crate::model::istio::sidecar::{
    parse_default_endpoint, IstioEgressListener, IstioIngressListener,
};
use crate::model::istio::{
    host_matches, labels_match, Config, MtlsMode, Sidecar, VirtualService, MESH_GATEWAY,
    ROOT_NAMESPACE,
};
use crate::model::{InterceptionMode, MeshSettings, Protocol, Proxy, PushContext, Service};

/// Istio's virtual outbound listener port (iptables redirects outbound here).
pub const VIRTUAL_OUTBOUND_PORT: u32 = 15001;
/// Istio's virtual inbound listener port (iptables redirects inbound here).
pub const VIRTUAL_INBOUND_PORT: u32 = 15006;
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughClusterIpv4";
const WILDCARD: &str = "0.0.0.0";
const ORIGINAL_DST_FILTER: &str = "envoy.filters.listener.original_dst";

/// The `Sidecar` in force for `proxy` (Istio's `SidecarScope` selection): in the
/// proxy's namespace, the oldest one whose `workloadSelector` matches the proxy's
/// labels; else the namespace's one without selector; else the root namespace's
/// one without selector; else none (everything visible).
pub fn select<'a>(proxy: &Proxy, ctx: &'a PushContext) -> Option<&'a Arc<Config<Sidecar>>> {
    let sidecars = &ctx.config.sidecars;
    let no_selector = |ns: &str| {
        sidecars
            .iter()
            .find(|s| s.meta.namespace == ns && s.spec.workload_selector.is_none())
    };
    sidecars
        .iter()
        .find(|s| {
            s.meta.namespace == proxy.namespace
                && s.spec
                    .workload_selector
                    .as_ref()
                    .is_some_and(|w| labels_match(&w.labels, &proxy.labels))
        })
        .or_else(|| no_selector(&proxy.namespace))
        .or_else(|| no_selector(ROOT_NAMESPACE))
}

/// One egress scope: the port (all ports of the visible services when `None`),
/// the bind address, and the `ns/host` filters.
struct Egress {
    port: Option<u32>,
    protocol: Option<Protocol>,
    bind: Option<String>,
    /// (namespace filter, host filter) pairs; namespace `.` is already replaced by
    /// the Sidecar's namespace; `~` matches no namespace.
    hosts: Vec<(String, String)>,
}

impl Egress {
    /// Istio's default egress: every namespace, every host.
    fn everything() -> Egress {
        Egress {
            port: None,
            protocol: None,
            bind: None,
            hosts: vec![("*".into(), "*".into())],
        }
    }

    fn from_spec(e: &IstioEgressListener, sidecar_ns: &str) -> Egress {
        Egress {
            port: e.port.as_ref().map(|p| p.number),
            protocol: e
                .port
                .as_ref()
                .filter(|p| !p.protocol.is_empty())
                .map(|p| Protocol::from_port(&p.protocol, None)),
            bind: e.bind.clone().filter(|b| !b.is_empty()),
            hosts: e
                .hosts
                .iter()
                .map(|h| {
                    let (ns, host) = h.split_once('/').unwrap_or(("*", h.as_str()));
                    let ns = if ns == "." { sidecar_ns } else { ns };
                    (ns.to_string(), host.to_ascii_lowercase())
                })
                .collect(),
        }
    }

    /// Whether config or a service in `ns` named `host` is in scope.
    fn sees(&self, ns: &str, host: &str) -> bool {
        self.hosts.iter().any(|(fns, fhost)| {
            (fns == "*" || fns == ns) && fns != "~" && host_matches(fhost, host)
        })
    }

    fn sees_any(&self, ns: &str, hosts: &[String], ctx: &PushContext) -> bool {
        hosts
            .iter()
            .any(|h| self.sees(ns, &ctx.config.resolve_host(h, ns)))
    }
}

/// What the proxy sees: its egress scopes and their services and VirtualServices.
struct Scope<'a> {
    egress: Egress,
    services: Vec<&'a Arc<Service>>,
    virtual_services: Vec<&'a Arc<Config<VirtualService>>>,
}

fn scopes<'a>(
    proxy: &Proxy,
    sidecar: Option<&Config<Sidecar>>,
    ctx: &'a PushContext,
) -> Vec<Scope<'a>> {
    let egress: Vec<Egress> = match sidecar {
        Some(sc) if !sc.spec.egress.is_empty() => sc
            .spec
            .egress
            .iter()
            .map(|e| Egress::from_spec(e, &sc.meta.namespace))
            .collect(),
        _ => vec![Egress::everything()],
    };
    egress
        .into_iter()
        .map(|egress| {
            let services = ctx
                .services
                .values()
                .filter(|s| {
                    egress.sees(&s.namespace, &s.hostname)
                        && ctx.config.service_visible(s, &proxy.namespace)
                })
                .collect();
            let mut virtual_services = ctx
                .config
                .virtual_services_for_gateway(MESH_GATEWAY, &proxy.namespace)
                .filter(|vs| egress.sees_any(&vs.meta.namespace, &vs.spec.hosts, ctx))
                .collect();
            // GEP-1426: a consumer route replaces the producer's for its namespace.
            crate::model::gateway_api::convert::consumer_routes_win(
                &mut virtual_services,
                &proxy.namespace,
            );
            Scope {
                egress,
                services,
                virtual_services,
            }
        })
        .collect()
}

/// Istio's outbound traffic policy: the Sidecar's `outboundTrafficPolicy.mode`
/// when it sets one, else the mesh file's (`ALLOW_ANY` by default).
fn registry_only(sidecar: Option<&Config<Sidecar>>, ctx: &PushContext) -> bool {
    match sidecar
        .and_then(|s| s.spec.outbound_traffic_policy.as_ref())
        .and_then(|p| p.mode.as_deref())
    {
        Some(mode) => mode == "REGISTRY_ONLY",
        None => {
            ctx.mesh.outbound_traffic_policy == crate::config::OutboundTrafficPolicy::RegistryOnly
        }
    }
}

/// CDS, LDS and RDS for a sidecar proxy. `identity`: it holds a workload
/// certificate, so the PeerAuthentication in force shapes its inbound chains
/// (`translate::mtls`) and auto mTLS its clusters; without one, everything
/// stays plaintext.
pub fn generate(proxy: &Proxy, ctx: &PushContext, identity: bool) -> Generated {
    let sidecar = select(proxy, ctx).map(Arc::as_ref);
    let peer_auth = identity.then(|| {
        ctx.config
            .peer_authentication(&proxy.namespace, &proxy.labels)
    });
    let redirect = proxy.interception == InterceptionMode::Redirect;
    let registry_only = registry_only(sidecar, ctx);
    let scopes = scopes(proxy, sidecar, ctx);
    let mut out = Generated::default();
    // (bind address, port) already served: an earlier egress listener wins (the
    // Sidecar validation rejects explicit conflicts).
    let mut taken: BTreeSet<(String, u32)> = BTreeSet::new();
    let ingress: &[IstioIngressListener] =
        sidecar.map(|s| s.spec.ingress.as_slice()).unwrap_or(&[]);
    if !redirect {
        // The workload's own ports: an ingress listener owns its address and
        // port, so no egress listener may bind it too (Envoy would reject both).
        for ing in ingress {
            taken.insert((ingress_bind(ing, proxy), ing.port.number));
        }
    }
    let mut visible: BTreeSet<Arc<str>> = BTreeSet::new();
    for scope in &scopes {
        for s in &scope.services {
            visible.insert(s.hostname.clone());
        }
        for vs in &scope.virtual_services {
            for h in referenced_hosts(vs, ctx) {
                if let Some(s) = ctx
                    .services
                    .get(h.as_str())
                    .filter(|s| ctx.config.service_visible(s, &proxy.namespace))
                {
                    visible.insert(s.hostname.clone());
                }
            }
        }
        let bind = match (&scope.egress.bind, redirect) {
            (Some(b), _) => b.clone(),
            (None, true) => WILDCARD.to_string(),
            (None, false) => proxy.ip.to_string(),
        };
        for (port, protocol) in egress_ports(scope) {
            if !taken.insert((bind.clone(), port)) {
                continue;
            }
            let stat = format!("outbound_{bind}_{port}");
            let chains = if protocol.is_http() {
                let route_name = if redirect && scope.egress.bind.is_none() {
                    port.to_string()
                } else {
                    format!("{bind}:{port}")
                };
                out.routes.push(outbound_route_config(
                    &route_name,
                    port,
                    scope,
                    proxy,
                    ctx,
                    redirect,
                    registry_only,
                ));
                vec![filter_chain(
                    Vec::new(),
                    http_connection_manager(
                        &stat,
                        &route_name,
                        HttpClass::SidecarOutbound,
                        Vec::new(),
                        &ctx.mesh,
                    ),
                )]
            } else {
                let mut chains = if matches!(protocol, Protocol::Tls | Protocol::Https) {
                    tls_filter_chains(port, &stat, scope, proxy, ctx)
                } else {
                    Vec::new()
                };
                let dests = tcp_destinations(port, scope, proxy, ctx, redirect, registry_only);
                chains.push(filter_chain(
                    Vec::new(),
                    l4_proxy(&stat, &dests, proxy, ctx),
                ));
                chains
            };
            let mut l = listener(&bind, port, TrafficDirection::Outbound, chains);
            if redirect && scope.egress.bind.is_none() {
                l.bind_to_port = Some(bool_value(false));
            }
            out.listeners.push(l);
        }
    }
    let mut inbound_chains = Vec::new();
    for ing in ingress {
        let port = ing.port.number;
        let Some(target) = ing
            .default_endpoint
            .as_deref()
            .and_then(parse_default_endpoint)
        else {
            continue;
        };
        let cluster = format!("inbound|{port}||");
        let protocol = Protocol::from_port(&ing.port.protocol, None);
        let mut inbound = static_cluster(&cluster, &target.0, target.1);
        // Istio: the listener's own connectionPool, else the Sidecar's
        // inboundConnectionPool.
        let pool = ing
            .connection_pool
            .as_ref()
            .or_else(|| sidecar.and_then(|s| s.spec.inbound_connection_pool.as_ref()));
        apply_inbound_connection_pool(&mut inbound, protocol, pool);
        out.clusters.push(inbound);
        let stat = format!("inbound_{port}");
        let filter = if protocol.is_http() {
            http_connection_manager_inline(
                &stat,
                inbound_route(&cluster),
                super::security::http_filters(proxy, ctx, port),
                &ctx.mesh,
            )
        } else {
            tcp_proxy(&stat, &[(cluster.clone(), 100)], &ctx.mesh)
        };
        // TCP: AuthorizationPolicy's network RBAC filters ahead of the TCP proxy.
        let rbac = if protocol.is_http() {
            Vec::new()
        } else {
            super::security::network_filters(proxy, ctx)
        };
        if redirect {
            let base = FilterChainMatch {
                destination_port: Some(u32_value(port)),
                prefix_ranges: ingress_bind_range(ing).into_iter().collect(),
                ..Default::default()
            };
            let mut chains = match &peer_auth {
                Some(pa) => mtls::inbound_chains(
                    pa.for_port(port),
                    protocol.is_http(),
                    &base,
                    &cluster,
                    &filter,
                ),
                None => {
                    let mut fc = filter_chain(Vec::new(), filter);
                    fc.filter_chain_match = Some(base);
                    fc.name = cluster.clone();
                    vec![fc]
                }
            };
            prepend_filters(&mut chains, &rbac);
            inbound_chains.extend(chains);
        } else {
            let mut chains = match &peer_auth {
                Some(pa) => mtls::inbound_chains(
                    pa.for_port(port),
                    protocol.is_http(),
                    &FilterChainMatch::default(),
                    "",
                    &filter,
                ),
                None => vec![filter_chain(Vec::new(), filter)],
            };
            prepend_filters(&mut chains, &rbac);
            out.listeners.push(listener(
                &ingress_bind(ing, proxy),
                port,
                TrafficDirection::Inbound,
                chains,
            ));
        }
    }
    if redirect {
        out.listeners
            .push(virtual_outbound(registry_only, &ctx.mesh));
        let catch_all = peer_auth.as_ref().map(|pa| pa.mode);
        out.listeners.push(virtual_inbound(
            inbound_chains,
            catch_all,
            &super::security::network_filters(proxy, ctx),
            &ctx.mesh,
        ));
        out.clusters.push(original_dst_cluster(PASSTHROUGH_CLUSTER));
        out.clusters.push(inbound_passthrough_cluster());
        out.clusters.push(blackhole_cluster());
    }
    let mut clusters: Vec<Cluster> = visible
        .iter()
        .filter_map(|h| ctx.services.get(h))
        .flat_map(|svc| service_clusters(svc, &proxy.namespace, ctx, identity))
        .collect();
    out.clusters.append(&mut clusters);
    out.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// In REDIRECT mode an ingress `bind` address cannot be a bound listener (all
/// inbound traffic arrives on 15006); it narrows the ingress chain to
/// connections whose original destination is that address, as a listener bound
/// there would receive. Unset or unspecified (`0.0.0.0`, `::`) means any.
fn ingress_bind_range(ing: &IstioIngressListener) -> Option<CidrRange> {
    let ip: std::net::IpAddr = ing.bind.as_deref()?.parse().ok()?;
    (!ip.is_unspecified()).then(|| CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(u32_value(if ip.is_ipv4() { 32 } else { 128 })),
    })
}

/// Where a NONE-mode ingress listener binds: `bind`, else the proxy IP.
fn ingress_bind(ing: &IstioIngressListener, proxy: &Proxy) -> String {
    ing.bind
        .clone()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| proxy.ip.to_string())
}

/// The ports of one egress scope with their protocol: the egress port alone, or
/// every port of every visible service (the first service by hostname decides a
/// port's protocol, as Istio's port merging does).
fn egress_ports(scope: &Scope<'_>) -> Vec<(u32, Protocol)> {
    let mut ports: BTreeMap<u32, Protocol> = BTreeMap::new();
    for s in &scope.services {
        for p in &s.ports {
            if scope.egress.port.is_none_or(|want| want == p.port as u32) {
                ports.entry(p.port as u32).or_insert(p.protocol);
            }
        }
    }
    if let Some(p) = scope.egress.port {
        let proto = scope
            .egress
            .protocol
            .or_else(|| ports.get(&p).copied())
            .unwrap_or(Protocol::Http);
        return vec![(p, proto)];
    }
    ports.into_iter().collect()
}

/// Istio's sidecar domains for a service: `NAME` (same namespace only, where the
/// short name resolves), `NAME.NS`, `NAME.NS.svc`, the FQDN; each with and
/// without `:PORT`.
fn service_domains(svc: &Service, proxy_ns: &str, port: u32) -> Vec<String> {
    let mut names = Vec::new();
    if svc.namespace == proxy_ns {
        names.push(svc.name.clone());
    }
    names.push(format!("{}.{}", svc.name, svc.namespace));
    names.push(format!("{}.{}.svc", svc.name, svc.namespace));
    names.push(svc.hostname.to_string());
    names
        .into_iter()
        .flat_map(|n| [format!("{n}:{port}"), n])
        .collect()
}

/// Istio's outbound HTTP route config for one port: one virtual host per visible
/// service with that port (VirtualService routes when a `mesh` VirtualService
/// claims its host, else the default route), one per other VirtualService host,
/// and the catch-all: `allow_any` to `PassthroughCluster` or `block_all` (502)
/// under `REGISTRY_ONLY`. A domain claimed twice stays with the first virtual
/// host (Envoy rejects duplicate domains).
fn outbound_route_config(
    name: &str,
    port: u32,
    scope: &Scope<'_>,
    proxy: &Proxy,
    ctx: &PushContext,
    redirect: bool,
    registry_only: bool,
) -> RouteConfiguration {
    let rs = RouteScope {
        port,
        gateway: MESH_GATEWAY,
        proxy,
        ctx,
    };
    // Resolved host -> routes from every VirtualService claiming it, oldest first.
    let mut vs_routes: BTreeMap<String, Vec<Route>> = BTreeMap::new();
    for vs in &scope.virtual_services {
        if vs.spec.http.is_empty() {
            continue;
        }
        let routes = http_routes(vs, rs);
        if routes.is_empty() {
            continue;
        }
        for h in &vs.spec.hosts {
            let h = ctx.config.resolve_host(h, &vs.meta.namespace);
            if scope.egress.sees(&vs.meta.namespace, &h) {
                vs_routes
                    .entry(h)
                    .or_default()
                    .extend(routes.iter().cloned());
            }
        }
    }
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut vhosts = Vec::new();
    let mut push = |name: String, domains: Vec<String>, routes: Vec<Route>| {
        let domains: Vec<String> = domains
            .into_iter()
            .filter(|d| seen.insert(d.clone()))
            .collect();
        if !domains.is_empty() {
            vhosts.push(VirtualHost {
                name,
                domains,
                routes,
                ..Default::default()
            });
        }
    };
    for svc in &scope.services {
        if svc.port(port as u16).is_none() {
            continue;
        }
        let routes = match vs_routes.remove(svc.hostname.as_ref()) {
            Some(r) => sort_catch_all_last(r),
            None => vec![default_route(&svc.hostname, port, rs)],
        };
        let domains = match ctx.config.service_entry_of(svc) {
            Some(se) => super::service_entry::domains(&se.spec, &svc.hostname, port),
            None => service_domains(svc, &proxy.namespace, port),
        };
        push(format!("{}:{port}", svc.hostname), domains, routes);
    }
    for (host, routes) in vs_routes {
        push(
            format!("{host}:{port}"),
            vec![host.clone(), format!("{host}:{port}")],
            sort_catch_all_last(routes),
        );
    }
    if registry_only {
        push(
            "block_all".into(),
            vec!["*".into()],
            vec![Route {
                name: "block_all".into(),
                r#match: Some(prefix_all()),
                action: Some(Action::DirectResponse(DirectResponseAction {
                    status: 502,
                    ..Default::default()
                })),
                ..Default::default()
            }],
        );
    } else if redirect {
        push(
            "allow_any".into(),
            vec!["*".into()],
            vec![Route {
                name: "allow_any".into(),
                r#match: Some(prefix_all()),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(PASSTHROUGH_CLUSTER.into())),
                    timeout: Some(Duration::default()),
                    ..Default::default()
                })),
                ..Default::default()
            }],
        );
    }
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vhosts,
        validate_clusters: Some(bool_value(false)),
        ..Default::default()
    }
}

fn prefix_all() -> RouteMatch {
    RouteMatch {
        path_specifier: Some(
            envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier::Prefix(
                "/".into(),
            ),
        ),
        ..Default::default()
    }
}

/// TLS routes of `mesh` VirtualServices on a TLS/HTTPS port (Istio's
/// `buildSidecarOutboundTLSFilterChainOpts`): for VirtualServices whose hosts
/// include a visible service with this port, one filter chain per applicable
/// match, on its `sniHosts` (the listener adds the TLS inspector), proxying to the
/// route's destinations. An SNI name already claimed by an earlier match (oldest
/// VirtualService first) stays with it, so Envoy never sees duplicate chain
/// matches. Connections without a matching SNI fall to the TCP chain after these.
fn tls_filter_chains(
    port: u32,
    stat: &str,
    scope: &Scope<'_>,
    proxy: &Proxy,
    ctx: &PushContext,
) -> Vec<FilterChain> {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut chains = Vec::new();
    // Only VirtualServices for a service that has this port (as TCP routes).
    let on_port: BTreeSet<&str> = scope
        .services
        .iter()
        .filter(|s| s.port(port as u16).is_some())
        .map(|s| s.hostname.as_ref())
        .collect();
    for vs in &scope.virtual_services {
        let ns = &vs.meta.namespace;
        if !vs
            .spec
            .hosts
            .iter()
            .any(|h| on_port.contains(ctx.config.resolve_host(h, ns).as_str()))
        {
            continue;
        }
        for tls in &vs.spec.tls {
            for m in &tls.matches {
                let applies = (m.gateways.is_empty()
                    || m.gateways.iter().any(|g| g == MESH_GATEWAY))
                    && m.port.is_none_or(|p| p == port)
                    && labels_match(&m.source_labels, &proxy.labels)
                    && m.source_namespace
                        .as_ref()
                        .is_none_or(|s| *s == proxy.namespace);
                if !applies {
                    continue;
                }
                let sni: Vec<String> = m
                    .sni_hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .filter(|h| seen.insert(h.clone()))
                    .collect();
                if sni.is_empty() {
                    continue;
                }
                let dests = l4_destinations(&tls.route, ns, port, ctx);
                if dests.is_empty() {
                    continue;
                }
                chains.push(filter_chain(sni, l4_proxy(stat, &dests, proxy, ctx)));
            }
        }
    }
    chains
}

/// A TCP port: the first applicable TCP route of a `mesh` VirtualService for the
/// one service on the port (a match applies when its `gateways`, `port`,
/// `sourceLabels` and `sourceNamespace` all admit this proxy); else that service's cluster. With several services
/// on one TCP port and no VIPs to tell them apart, the destination is unknown:
/// passthrough (REDIRECT, `ALLOW_ANY`) or the black hole.
fn tcp_destinations(
    port: u32,
    scope: &Scope<'_>,
    proxy: &Proxy,
    ctx: &PushContext,
    redirect: bool,
    registry_only: bool,
) -> Vec<(String, u32)> {
    let on_port: Vec<&&Arc<Service>> = scope
        .services
        .iter()
        .filter(|s| s.port(port as u16).is_some())
        .collect();
    let fallback = || {
        vec![(
            if redirect && !registry_only {
                PASSTHROUGH_CLUSTER
            } else {
                BLACKHOLE_CLUSTER
            }
            .to_string(),
            100,
        )]
    };
    let [svc] = on_port.as_slice() else {
        return fallback();
    };
    for vs in &scope.virtual_services {
        let ns = &vs.meta.namespace;
        if !vs
            .spec
            .hosts
            .iter()
            .any(|h| ctx.config.resolve_host(h, ns) == svc.hostname.as_ref())
        {
            continue;
        }
        let route = vs.spec.tcp.iter().find(|t| {
            t.matches.is_empty()
                || t.matches.iter().any(|m| {
                    (m.gateways.is_empty() || m.gateways.iter().any(|g| g == MESH_GATEWAY))
                        && m.port.is_none_or(|p| p == port)
                        && labels_match(&m.source_labels, &proxy.labels)
                        && m.source_namespace
                            .as_ref()
                            .is_none_or(|ns| *ns == proxy.namespace)
                })
        });
        if let Some(t) = route {
            return l4_destinations(&t.route, ns, port, ctx);
        }
    }
    vec![(
        super::proto::cluster_name(port as u16, "", &svc.hostname),
        100,
    )]
}

fn inbound_route(cluster: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: cluster.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: format!("{cluster}:*"),
            domains: vec!["*".into()],
            routes: vec![Route {
                name: "default".into(),
                r#match: Some(prefix_all()),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_string())),
                    timeout: Some(Duration::default()),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        validate_clusters: Some(bool_value(false)),
        ..Default::default()
    }
}

fn connect_timeout() -> Option<Duration> {
    Some(Duration {
        seconds: DEFAULT_CONNECT_TIMEOUT_SECS,
        nanos: 0,
    })
}

/// `inbound|PORT||`: the local workload at its default endpoint.
fn static_cluster(name: &str, ip: &str, port: u32) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: connect_timeout(),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                        address: Some(socket_address(ip, port)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Istio's `PassthroughCluster` / `InboundPassthroughClusterIpv4`: connect to the
/// connection's original destination.
fn original_dst_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: LbPolicy::ClusterProvided as i32,
        connect_timeout: connect_timeout(),
        ..Default::default()
    }
}

/// Source address of inbound passthrough connections (Istio's
/// `InboundPassthroughBindIpv4`): interception returns Envoy's own traffic to the
/// pod's address to the virtual inbound listener unless it comes from here, so
/// without it an inbound connection would loop back into Envoy.
pub const INBOUND_PASSTHROUGH_BIND: &str = "127.0.0.6";

/// `InboundPassthroughClusterIpv4`: the original destination (the pod's own
/// address), connected from [`INBOUND_PASSTHROUGH_BIND`] as Istio's
/// `buildInboundPassthroughCluster` does.
fn inbound_passthrough_cluster() -> Cluster {
    let mut c = original_dst_cluster(INBOUND_PASSTHROUGH_CLUSTER);
    c.upstream_bind_config = Some(BindConfig {
        source_address: Some(SocketAddress {
            address: INBOUND_PASSTHROUGH_BIND.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(0)),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

/// Istio's `BlackHoleCluster`: a static cluster without endpoints.
fn blackhole_cluster() -> Cluster {
    Cluster {
        name: BLACKHOLE_CLUSTER.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: connect_timeout(),
        ..Default::default()
    }
}

/// `virtualOutbound` on 15001: `use_original_dst` hands each connection to the
/// listener of its original destination port; what no listener takes is passed
/// through (`ALLOW_ANY`) or dropped (`REGISTRY_ONLY`).
fn virtual_outbound(registry_only: bool, mesh: &MeshSettings) -> Listener {
    let cluster = if registry_only {
        BLACKHOLE_CLUSTER
    } else {
        PASSTHROUGH_CLUSTER
    };
    let mut l = listener(
        WILDCARD,
        VIRTUAL_OUTBOUND_PORT,
        TrafficDirection::Outbound,
        vec![filter_chain(
            Vec::new(),
            tcp_proxy(cluster, &[(cluster.to_string(), 100)], mesh),
        )],
    );
    l.name = "virtualOutbound".into();
    l.use_original_dst = Some(bool_value(true));
    l
}

/// Put `filters` (network RBAC) ahead of each chain's own filters.
fn prepend_filters(chains: &mut [FilterChain], filters: &[Filter]) {
    for fc in chains {
        fc.filters.splice(0..0, filters.iter().cloned());
    }
}

/// `virtualInbound` on 15006: the original destination port picks the Sidecar
/// ingress chain; other inbound traffic passes through to the original
/// destination, under the workload's PeerAuthentication mode when the proxy
/// has an identity (`mtls`; as Istio's passthrough chains: STRICT refuses
/// plaintext to any port).
fn virtual_inbound(
    mut chains: Vec<FilterChain>,
    mtls_mode: Option<MtlsMode>,
    rbac: &[Filter],
    mesh: &MeshSettings,
) -> Listener {
    let filter = tcp_proxy(
        INBOUND_PASSTHROUGH_CLUSTER,
        &[(INBOUND_PASSTHROUGH_CLUSTER.to_string(), 100)],
        mesh,
    );
    let mut catch_all = match mtls_mode {
        Some(mode) => mtls::inbound_chains(
            mode,
            false,
            &FilterChainMatch::default(),
            "virtualInbound-catchall",
            &filter,
        ),
        None => {
            let mut passthrough = filter_chain(Vec::new(), filter);
            passthrough.name = "virtualInbound-catchall".into();
            vec![passthrough]
        }
    };
    // Istio authorizes passthrough traffic too (TCP rules: `rbac`).
    prepend_filters(&mut catch_all, rbac);
    chains.extend(catch_all);
    let mut l = listener(
        WILDCARD,
        VIRTUAL_INBOUND_PORT,
        TrafficDirection::Inbound,
        chains,
    );
    l.name = "virtualInbound".into();
    l.listener_filters.insert(
        0,
        ListenerFilter {
            name: ORIGINAL_DST_FILTER.into(),
            config_type: Some(ListenerFilterConfig::TypedConfig(pack(
                &OriginalDst::default(),
            ))),
            ..Default::default()
        },
    );
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::istio::{parse_object, IstioObject};
    use crate::model::{Endpoint, Locality, ServicePort};
    use prost::Message;
    use std::path::Path;

    fn golden() -> (PushContext, Proxy) {
        super::super::golden::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/sidecar_redirect.yaml"),
        )
    }

    fn sidecar_obj(yaml: &str) -> Arc<Config<Sidecar>> {
        let v: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
        match parse_object("test", &v) {
            Ok(IstioObject::Sidecar(c)) => Arc::new(c),
            other => panic!("{other:?}"),
        }
    }

    fn with_sidecars(ctx: &PushContext, extra: Vec<Arc<Config<Sidecar>>>) -> PushContext {
        let mut cfg = (*ctx.config).clone();
        cfg.sidecars.extend(extra);
        cfg.sidecars.sort_by(|a, b| a.meta.istio_order(&b.meta));
        PushContext {
            config: Arc::new(cfg),
            ..ctx.clone()
        }
    }

    fn names<T>(v: &[T], f: impl Fn(&T) -> &str) -> Vec<String> {
        v.iter().map(|x| f(x).to_string()).collect()
    }

    #[test]
    fn none_mode_binds_the_proxy_ip() {
        let (ctx, mut proxy) = golden();
        proxy.interception = InterceptionMode::None;
        proxy.ip = "127.0.0.5".parse().unwrap();
        let g = generate(&proxy, &ctx, false);
        let ls = names(&g.listeners, |l| &l.name);
        assert_eq!(ls, ["127.0.0.5_7000", "127.0.0.5_9000", "127.0.0.5_8080"]);
        assert!(g.listeners.iter().all(|l| l.bind_to_port.is_none()));
        assert_eq!(names(&g.routes, |r| &r.name), ["127.0.0.5:7000"]);
        // ALLOW_ANY has no original destination to pass through to in NONE mode.
        let vhosts = names(&g.routes[0].virtual_hosts, |v| &v.name);
        assert!(!vhosts.iter().any(|v| v == "allow_any"), "{vhosts:?}");
        assert!(!g.clusters.iter().any(|c| c.name == PASSTHROUGH_CLUSTER));
        assert!(g.clusters.iter().any(|c| c.name == "inbound|8080||"));
    }

    #[test]
    fn selector_beats_namespace_wide_beats_root() {
        let (ctx, proxy) = golden();
        let specific = sidecar_obj(
            "apiVersion: networking.istio.io/v1alpha3\nkind: Sidecar\nmetadata: {name: frontend, namespace: base}\nspec:\n  workloadSelector: {labels: {app: frontend}}\n  egress:\n  - hosts: [\"./user.base.svc.cluster.local\"]\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
        );
        let ctx2 = with_sidecars(&ctx, vec![specific.clone()]);
        assert_eq!(select(&proxy, &ctx2).unwrap().meta.name, "frontend");
        let g = generate(&proxy, &ctx2, false);
        let clusters = names(&g.clusters, |c| &c.name);
        assert!(clusters.contains(&"outbound|7000||user.base.svc.cluster.local".into()));
        assert!(
            !clusters.iter().any(|c| c.contains("order")),
            "{clusters:?}"
        );
        let last = g.routes[0].virtual_hosts.last().unwrap();
        assert_eq!(last.name, "block_all");
        // Another workload of the namespace gets the namespace-wide one.
        let mut other = proxy.clone();
        other.labels = [("app".to_string(), "cart".to_string())].into();
        assert_eq!(select(&other, &ctx2).unwrap().meta.name, "default");
        // Another namespace falls back to the root namespace's.
        let root = sidecar_obj(
            "apiVersion: networking.istio.io/v1alpha3\nkind: Sidecar\nmetadata: {name: default, namespace: istio-system}\nspec:\n  egress:\n  - hosts: [\"./*\"]\n",
        );
        let ctx3 = with_sidecars(&ctx, vec![root]);
        other.namespace = "finance".into();
        assert_eq!(
            select(&other, &ctx3).unwrap().meta.namespace,
            "istio-system"
        );
        let g = generate(&other, &ctx3, false);
        // `./*` in the root Sidecar means istio-system: nothing visible here.
        assert!(!g.clusters.iter().any(|c| c.name.starts_with("outbound")));
    }

    #[test]
    fn egress_port_conflict_is_rejected_with_reason() {
        let v: serde_json::Value = serde_saphyr::from_str(
            "apiVersion: networking.istio.io/v1alpha3\nkind: Sidecar\nmetadata: {name: dup, namespace: base}\nspec:\n  egress:\n  - port: {number: 7000, protocol: HTTP, name: a}\n    hosts: [\"./*\"]\n  - port: {number: 7000, protocol: HTTP, name: b}\n    hosts: [\"*/*\"]\n  - hosts: [\"istio-system/*\"]\n",
        )
        .unwrap();
        let errs = parse_object("f.yaml", &v).unwrap_err();
        let text = errs
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            text.contains("Sidecar base/dup")
                && text.contains("spec.egress[1].port")
                && text.contains("already in use by egress[0]"),
            "{text}"
        );
        for (bad, want) in [
            ("  egress:\n  - hosts: [\"user\"]\n", "is not NAMESPACE/HOST"),
            (
                "  ingress:\n  - port: {number: 80, protocol: HTTP, name: h}\n    defaultEndpoint: unix:///x.sock\n",
                "unix sockets",
            ),
            ("  egress:\n  - hosts: [\"*/*\"]\n  - port: {number: 80, protocol: HTTP, name: h}\n    hosts: [\"*/*\"]\n", "must be the last"),
        ] {
            let yaml = format!("apiVersion: networking.istio.io/v1alpha3\nkind: Sidecar\nmetadata: {{name: bad}}\nspec:\n{bad}");
            let v: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
            let e = format!("{:?}", parse_object("f.yaml", &v).unwrap_err());
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    /// TLS routes become SNI filter chains on TLS ports, and L4 matches are scoped
    /// by `sourceLabels`/`sourceNamespace`/`port` (tests/golden/sidecar_l4_routes).
    #[test]
    fn l4_routes_follow_sni_and_source_scoping() {
        use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
        use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
            tcp_proxy::ClusterSpecifier as Tcp, TcpProxy,
        };
        let (ctx, mut proxy) = super::super::golden::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/sidecar_l4_routes.yaml"),
        );
        let chains = |g: &Generated, name: &str| -> Vec<(Vec<String>, String)> {
            let l = g.listeners.iter().find(|l| l.name == name).expect(name);
            l.filter_chains
                .iter()
                .map(|fc| {
                    let sni = fc
                        .filter_chain_match
                        .as_ref()
                        .map(|m| m.server_names.clone())
                        .unwrap_or_default();
                    let Some(ConfigType::TypedConfig(any)) = &fc.filters[0].config_type else {
                        panic!("typed config")
                    };
                    let tp = TcpProxy::decode(any.value.as_slice()).expect("tcp proxy");
                    let dest = match tp.cluster_specifier {
                        Some(Tcp::Cluster(c)) => c,
                        Some(Tcp::WeightedClusters(w)) => w
                            .clusters
                            .iter()
                            .map(|c| format!("{}={}", c.name, c.weight))
                            .collect::<Vec<_>>()
                            .join(","),
                        None => String::new(),
                    };
                    (sni, dest)
                })
                .collect()
        };
        let g = generate(&proxy, &ctx, false);
        // The web redirect: derivePort FROM_REQUEST_PORT and statPrefix.
        let web = g
            .routes
            .iter()
            .find(|r| r.name == "8080")
            .and_then(|r| r.virtual_hosts.iter().find(|v| v.name.starts_with("web.")))
            .expect("web vhost");
        assert_eq!(web.routes[0].stat_prefix, "login");
        match &web.routes[0].action {
            Some(Action::Redirect(r)) => assert_eq!(r.port_redirect, 8080),
            other => panic!("{other:?}"),
        }
        // useSourceIp on db: its TCP proxy hashes on the source address.
        let db = g
            .listeners
            .iter()
            .find(|l| l.name == "0.0.0.0_5432")
            .unwrap();
        let Some(ConfigType::TypedConfig(any)) = &db.filter_chains[0].filters[0].config_type else {
            panic!("typed config")
        };
        let db_proxy = TcpProxy::decode(any.value.as_slice()).unwrap();
        assert_eq!(db_proxy.hash_policy.len(), 1);
        assert_eq!(db_proxy.idle_timeout.map(|d| d.seconds), Some(1800));
        assert_eq!(
            db_proxy
                .max_downstream_connection_duration
                .map(|d| d.seconds),
            Some(7200)
        );
        let tls = chains(&g, "0.0.0.0_9443");
        assert!(g
            .listeners
            .iter()
            .filter(|l| l.name == "0.0.0.0_9443")
            .all(
                |l| l.filter_chains.iter().all(|fc| fc.filters.iter().all(|f| {
                    match &f.config_type {
                        Some(ConfigType::TypedConfig(a)) => TcpProxy::decode(a.value.as_slice())
                            .unwrap()
                            .hash_policy
                            .is_empty(),
                        _ => true,
                    }
                }))
            ));
        assert_eq!(
            tls,
            [
                (
                    vec!["a.secure.example.com".to_string()],
                    "outbound|9443|v1|secure.base.svc.cluster.local".to_string()
                ),
                (
                    vec!["*.secure.example.com".to_string()],
                    "outbound|9443|v1|secure.base.svc.cluster.local=80,outbound|9443|v2|secure.base.svc.cluster.local=20".to_string()
                ),
                (
                    vec![],
                    "outbound|9443||secure.base.svc.cluster.local".to_string()
                ),
            ]
        );
        assert_eq!(
            chains(&g, "0.0.0.0_5432"),
            [(
                vec![],
                "outbound|5432|v1|db.base.svc.cluster.local".to_string()
            )]
        );
        // Another TLS port gets no chains from a VirtualService for another host.
        assert_eq!(
            chains(&g, "0.0.0.0_8443"),
            [(
                vec![],
                "outbound|8443||vault.base.svc.cluster.local".to_string()
            )]
        );
        // The admin workload matches the first TLS and TCP matches scoped to it.
        proxy.labels = [("app".to_string(), "admin".to_string())].into();
        let g = generate(&proxy, &ctx, false);
        let tls = chains(&g, "0.0.0.0_9443");
        assert!(tls.contains(&(
            vec!["admin.secure.example.com".to_string()],
            "outbound|9443|v2|secure.base.svc.cluster.local".to_string()
        )));
        assert!(!tls
            .iter()
            .any(|(s, _)| s.iter().any(|h| h.starts_with("other-port"))));
        assert_eq!(
            chains(&g, "0.0.0.0_5432"),
            [(
                vec![],
                "outbound|5432|v2|db.base.svc.cluster.local".to_string()
            )]
        );
        // So does any workload of namespace ops (sourceNamespace).
        proxy.labels = [("app".to_string(), "frontend".to_string())].into();
        proxy.namespace = "ops".into();
        let g = generate(&proxy, &ctx, false);
        assert_eq!(
            chains(&g, "0.0.0.0_5432"),
            [(
                vec![],
                "outbound|5432|v2|db.base.svc.cluster.local".to_string()
            )]
        );
    }

    #[test]
    fn redirect_ingress_bind_narrows_the_inbound_chain() {
        let (ctx, proxy) = golden();
        let bound = sidecar_obj(
            "apiVersion: networking.istio.io/v1alpha3\nkind: Sidecar\nmetadata: {name: frontend, namespace: base}\nspec:\n  workloadSelector: {labels: {app: frontend}}\n  ingress:\n  - port: {number: 8080, protocol: HTTP, name: http}\n    bind: 10.0.0.1\n    defaultEndpoint: 127.0.0.1:8080\n  - port: {number: 9090, protocol: TCP, name: tcp}\n    bind: 0.0.0.0\n    defaultEndpoint: 127.0.0.1:9090\n",
        );
        let g = generate(&proxy, &with_sidecars(&ctx, vec![bound]), false);
        let inbound = g
            .listeners
            .iter()
            .find(|l| l.name == "virtualInbound")
            .expect("virtualInbound");
        let m = |name: &str| {
            inbound
                .filter_chains
                .iter()
                .find(|fc| fc.name == name)
                .and_then(|fc| fc.filter_chain_match.clone())
                .expect(name)
        };
        let bound = m("inbound|8080||");
        assert_eq!(bound.prefix_ranges.len(), 1);
        assert_eq!(bound.prefix_ranges[0].address_prefix, "10.0.0.1");
        assert_eq!(bound.prefix_ranges[0].prefix_len, Some(u32_value(32)));
        assert!(m("inbound|9090||").prefix_ranges.is_empty());
    }

    #[test]
    fn inbound_connection_pools_become_circuit_breakers() {
        let (ctx, proxy) = golden();
        let sc = sidecar_obj(
            "apiVersion: networking.istio.io/v1alpha3\nkind: Sidecar\nmetadata: {name: frontend, namespace: base}\nspec:\n  workloadSelector: {labels: {app: frontend}}\n  inboundConnectionPool:\n    tcp: {maxConnections: 5}\n  ingress:\n  - port: {number: 8080, protocol: HTTP, name: http}\n    defaultEndpoint: 127.0.0.1:8080\n  - port: {number: 9090, protocol: GRPC, name: grpc}\n    defaultEndpoint: 127.0.0.1:9090\n    connectionPool:\n      http: {http2MaxRequests: 2}\n",
        );
        let g = generate(&proxy, &with_sidecars(&ctx, vec![sc]), false);
        let thresholds = |name: &str| {
            g.clusters
                .iter()
                .find(|c| c.name == name)
                .and_then(|c| c.circuit_breakers.clone())
                .map(|cb| cb.thresholds[0].clone())
                .expect(name)
        };
        // The Sidecar-wide pool, and Istio's unlimited defaults elsewhere.
        let http = thresholds("inbound|8080||");
        assert_eq!(http.max_connections, Some(u32_value(5)));
        assert_eq!(http.max_requests, Some(u32_value(u32::MAX)));
        // The listener's own pool replaces the Sidecar-wide one.
        let grpc = thresholds("inbound|9090||");
        assert_eq!(grpc.max_requests, Some(u32_value(2)));
        assert_eq!(grpc.max_connections, Some(u32_value(u32::MAX)));
        // gRPC reaches the workload over HTTP/2.
        assert!(g
            .clusters
            .iter()
            .find(|c| c.name == "inbound|9090||")
            .is_some_and(|c| !c.typed_extension_protocol_options.is_empty()));
    }

    #[test]
    fn redirect_sidecars_share_a_class_none_mode_does_not() {
        let (ctx, mut a) = golden();
        let mut b = a.clone();
        b.ip = "10.9.9.9".parse().unwrap();
        b.id = "sidecar~10.9.9.9~x.base~base.svc.cluster.local".into();
        assert_eq!(
            super::super::ProxyClass::of(&a, &ctx),
            super::super::ProxyClass::of(&b, &ctx)
        );
        a.interception = InterceptionMode::None;
        b.interception = InterceptionMode::None;
        assert_ne!(
            super::super::ProxyClass::of(&a, &ctx),
            super::super::ProxyClass::of(&b, &ctx)
        );
    }

    /// The config-size effect of a namespace-wide Sidecar: 20 namespaces of 10
    /// services with 2 ports each; the sidecar sees everything without a Sidecar,
    /// and only its own namespace with `egress: ./*`. Printed for the report
    /// (`cargo test --lib translate::sidecar -- --nocapture`).
    #[test]
    fn namespace_sidecar_keeps_config_small() {
        let (ctx, proxy) = golden();
        let mut services = crate::model::service::ServiceMap::new();
        for n in 0..20 {
            let ns = if n == 0 {
                "base".to_string()
            } else {
                format!("ns{n}")
            };
            for i in 0..10 {
                let hostname: Arc<str> = format!("svc{i}.{ns}.svc.cluster.local").into();
                let ep = |port: u16| Endpoint {
                    address: format!("10.{n}.{i}.1").parse().unwrap(),
                    port,
                    labels: Default::default(),
                    cluster: "c1".into(),
                    network: "".into(),
                    locality: Arc::new(Locality::default()),
                    ready: true,
                    workload: "w".into(),
                    service_account: "sa".into(),
                    stale: false,
                    weight: 1,
                };
                services.insert(
                    hostname.clone(),
                    Arc::new(Service {
                        hostname,
                        namespace: ns.clone(),
                        name: format!("svc{i}"),
                        ports: vec![
                            ServicePort {
                                name: "http".into(),
                                port: 8000 + i,
                                protocol: Protocol::Http,
                            },
                            ServicePort {
                                name: "tcp".into(),
                                port: 9100 + i,
                                protocol: Protocol::Tcp,
                            },
                        ],
                        endpoints: [
                            (8000 + i, vec![ep(8000 + i)]),
                            (9100 + i, vec![ep(9100 + i)]),
                        ]
                        .into(),
                        clusters: vec!["c1".into()],
                    }),
                );
            }
        }
        let mut cfg = (*ctx.config).clone();
        cfg.sidecars.clear();
        let open = PushContext {
            services: Arc::new(services),
            config: Arc::new(cfg),
            ..ctx.clone()
        };
        let scoped = with_sidecars(
            &open,
            vec![sidecar_obj(
                "apiVersion: networking.istio.io/v1alpha3\nkind: Sidecar\nmetadata: {name: default, namespace: base}\nspec:\n  egress:\n  - hosts: [\"./*\"]\n",
            )],
        );
        let size = |g: &Generated| -> usize {
            g.clusters.iter().map(|c| c.encoded_len()).sum::<usize>()
                + g.listeners.iter().map(|l| l.encoded_len()).sum::<usize>()
                + g.routes.iter().map(|r| r.encoded_len()).sum::<usize>()
        };
        let (a, b) = (
            generate(&proxy, &open, false),
            generate(&proxy, &scoped, false),
        );
        eprintln!(
            "sidecar config without Sidecar: {} clusters, {} listeners, {} bytes; with namespace-wide Sidecar (./*): {} clusters, {} listeners, {} bytes",
            a.clusters.len(),
            a.listeners.len(),
            size(&a),
            b.clusters.len(),
            b.listeners.len(),
            size(&b)
        );
        assert_eq!(a.clusters.len(), 3 + 200 * 2 + 0);
        assert_eq!(b.clusters.len(), 3 + 10 * 2);
        assert!(size(&b) * 5 < size(&a));
    }
}
