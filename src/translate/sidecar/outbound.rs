//! Outbound: HTTP route configurations per port, TLS and TCP chains, and the
//! `virtualOutbound` listener.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route::Action, route_action::ClusterSpecifier, DirectResponseAction, Route, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::google::protobuf::Duration;

use super::scope::*;
use super::{BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER, VIRTUAL_OUTBOUND_PORT, WILDCARD};
use crate::model::istio::{labels_match, MESH_GATEWAY};
use crate::model::{MeshSettings, Proxy, PushContext, Service};
use crate::translate::listener::{filter_chain, l4_proxy, listener, tcp_proxy};
use crate::translate::proto::bool_value;
use crate::translate::route::{
    default_route, http_routes, l4_destinations, sort_catch_all_last, RouteScope,
};

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
pub(super) fn outbound_route_config(
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
            Some(se) => crate::translate::service_entry::domains(&se.spec, &svc.hostname, port),
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

pub(super) fn prefix_all() -> RouteMatch {
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
pub(super) fn tls_filter_chains(
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
pub(super) fn tcp_destinations(
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
        crate::translate::proto::cluster_name(port as u16, "", &svc.hostname),
        100,
    )]
}

/// `virtualOutbound` on 15001: `use_original_dst` hands each connection to the
/// listener of its original destination port; what no listener takes is passed
/// through (`ALLOW_ANY`) or dropped (`REGISTRY_ONLY`).
pub(super) fn virtual_outbound(registry_only: bool, mesh: &MeshSettings) -> Listener {
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
