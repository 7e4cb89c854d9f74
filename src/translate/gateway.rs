//! Gateway proxies (Istio's `router`): the Gateways whose selector matches the
//! proxy's labels give listeners on their server ports; VirtualServices bound to
//! those Gateways give the routes; the services they route to give the clusters.
//! Istio's `networking/core/gateway.go`.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::FilterChain;
use envoy_types::pb::envoy::config::route::v3::{
    virtual_host::TlsRequirementType, RouteConfiguration, VirtualHost,
};

use super::cluster::service_clusters;
use super::listener::{filter_chain, http_connection_manager, l4_proxy, listener};
use super::proto::{bool_value, http_route_name};
use super::route::{
    http_routes, l4_destinations, referenced_hosts, sort_catch_all_last, virtual_host, RouteScope,
};
use super::Generated;
use crate::model::istio::validate::all_wildcard_host;
use crate::model::istio::{
    host_intersection, labels_match, resolve_gateway_name, Config, Gateway, Server, ServerProtocol,
    VirtualService,
};
use crate::model::{Proxy, PushContext};

/// Gateways bind every server on the wildcard address.
pub const BIND_ADDRESS: &str = "0.0.0.0";

/// One server of one Gateway selected for the proxy.
struct BoundServer<'a> {
    /// `ns/name` of the Gateway.
    gateway: String,
    gateway_ns: &'a str,
    server: &'a Server,
}

/// The servers of one port: the first server's protocol (by Gateway order) wins,
/// as in Istio's gateway merging; a server with another protocol on the port is
/// left out (and reported by the config store).
struct PortServers<'a> {
    protocol: ServerProtocol,
    passthrough: bool,
    servers: Vec<BoundServer<'a>>,
}

/// Servers of every Gateway that selects `proxy`, grouped by port.
fn servers_by_port<'a>(proxy: &'a Proxy, ctx: &'a PushContext) -> BTreeMap<u32, PortServers<'a>> {
    let mut ports: BTreeMap<u32, PortServers<'a>> = BTreeMap::new();
    for gw in ctx.config.gateways_for(&proxy.labels) {
        for server in &gw.spec.servers {
            let Some(protocol) = server.protocol() else {
                continue;
            };
            let bound = BoundServer {
                gateway: gw.meta.key(),
                gateway_ns: &gw.meta.namespace,
                server,
            };
            let entry = ports
                .entry(server.port.number)
                .or_insert_with(|| PortServers {
                    protocol,
                    passthrough: server.is_passthrough(),
                    servers: Vec::new(),
                });
            let compatible = entry.protocol == protocol
                || (entry.protocol.is_http() && protocol.is_http())
                || (entry.passthrough && server.is_passthrough());
            if compatible {
                entry.servers.push(bound);
            }
        }
    }
    ports
}

/// The hosts of `server` that a VirtualService in `vs_ns` may claim: `ns/host`
/// limits to namespace `ns` (`.` is the Gateway's namespace, `*` any); `*.*` means
/// `*` (see `validate::all_wildcard_host`).
fn server_hosts_for(server: &Server, gateway_ns: &str, vs_ns: &str) -> Vec<String> {
    server
        .hosts
        .iter()
        .filter_map(|h| {
            let (ns, host) = h.split_once('/').unwrap_or(("*", h));
            let ok = ns == "*" || (ns == "." && vs_ns == gateway_ns) || ns == vs_ns;
            let host = if all_wildcard_host(host) { "*" } else { host };
            ok.then(|| host.to_string())
        })
        .collect()
}

/// Istio's host intersection between a server and a VirtualService.
fn intersect(server_hosts: &[String], vs_hosts: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in server_hosts {
        for v in vs_hosts {
            if let Some(h) = host_intersection(s, v) {
                out.insert(h);
            }
        }
    }
    out
}

/// CDS, LDS and RDS for a gateway proxy; `identity`: it holds a workload
/// certificate (auto mTLS and ISTIO_MUTUAL to meshed endpoints).
pub fn generate(proxy: &Proxy, ctx: &PushContext, identity: bool) -> Generated {
    let mut out = Generated::default();
    let mut used: Vec<&Config<VirtualService>> = Vec::new();
    let mut east_west: Vec<Cluster> = Vec::new();
    for (port, ps) in servers_by_port(proxy, ctx) {
        // East-west AUTO_PASSTHROUGH ports (owned by translate::network).
        if let Some((l, cs)) =
            super::network::auto_passthrough(port, ps.servers.iter().map(|b| b.server), ctx)
        {
            out.listeners.push(l);
            east_west.extend(cs);
            continue;
        }
        if ps.protocol.is_http() {
            let route_name = http_route_name(port);
            out.routes.push(http_route_config(
                &route_name,
                port,
                &ps,
                proxy,
                ctx,
                &mut used,
            ));
            let hcm = http_connection_manager(
                &format!("outbound_{BIND_ADDRESS}_{port}"),
                &route_name,
                true,
                super::security::http_filters(proxy, ctx, port),
            );
            out.listeners.push(listener(
                BIND_ADDRESS,
                port,
                TrafficDirection::Outbound,
                vec![filter_chain(Vec::new(), hcm)],
            ));
        } else {
            let chains = l4_filter_chains(port, &ps, proxy, ctx, &mut used);
            if !chains.is_empty() {
                out.listeners.push(listener(
                    BIND_ADDRESS,
                    port,
                    TrafficDirection::Outbound,
                    chains,
                ));
            }
        }
    }
    out.clusters = clusters_for(&used, proxy, ctx, identity);
    if !east_west.is_empty() {
        out.clusters.extend(east_west);
        out.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    }
    out
}

/// Clusters for every service the used VirtualServices route or mirror to.
pub fn clusters_for(
    used: &[&Config<VirtualService>],
    proxy: &Proxy,
    ctx: &PushContext,
    identity: bool,
) -> Vec<Cluster> {
    let hosts: BTreeSet<String> = used
        .iter()
        .flat_map(|vs| referenced_hosts(vs, ctx))
        .collect();
    let mut clusters: Vec<Cluster> = hosts
        .iter()
        .filter_map(|h| ctx.services.get(h.as_str()))
        .flat_map(|svc| service_clusters(svc, &proxy.namespace, ctx, identity))
        .collect();
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    clusters
}

/// Istio's `buildGatewayHTTPRouteConfig`: for each server and each VirtualService
/// bound to its Gateway (oldest first), one virtual host per intersecting host;
/// VirtualServices claiming the same host merge (routes concatenated, catch-alls
/// last). No virtual host at all gives a `*` vhost without routes: Envoy answers
/// 404, as it does for any Host no virtual host matches.
fn http_route_config<'a>(
    name: &str,
    port: u32,
    ps: &PortServers<'a>,
    proxy: &Proxy,
    ctx: &'a PushContext,
    used: &mut Vec<&'a Config<VirtualService>>,
) -> RouteConfiguration {
    let mut vhosts: BTreeMap<String, VirtualHost> = BTreeMap::new();
    for bs in &ps.servers {
        let https_redirect = bs.server.tls.as_ref().is_some_and(|t| t.https_redirect);
        for vs in ctx
            .config
            .virtual_services_for_gateway(&bs.gateway, &proxy.namespace)
        {
            let hosts = intersect(
                &server_hosts_for(bs.server, bs.gateway_ns, &vs.meta.namespace),
                &vs.spec.hosts,
            );
            if hosts.is_empty() || vs.spec.http.is_empty() {
                continue;
            }
            let scope = RouteScope {
                port,
                gateway: &bs.gateway,
                proxy,
                ctx,
            };
            let routes = http_routes(vs, scope);
            if !used.iter().any(|u| std::ptr::eq(*u, vs.as_ref())) {
                used.push(vs);
            }
            for h in hosts {
                let vh = vhosts
                    .entry(h.clone())
                    .or_insert_with(|| virtual_host(&h, port, Vec::new()));
                vh.routes.extend(routes.iter().cloned());
                if https_redirect {
                    vh.require_tls = TlsRequirementType::All as i32;
                }
            }
        }
        if https_redirect {
            for h in &bs.server.hosts {
                let host = h
                    .split_once('/')
                    .map(|(_, h)| h)
                    .unwrap_or(h)
                    .to_ascii_lowercase();
                vhosts
                    .entry(host.clone())
                    .or_insert_with(|| virtual_host(&host, port, Vec::new()))
                    .require_tls = TlsRequirementType::All as i32;
            }
        }
    }
    let mut virtual_hosts: Vec<VirtualHost> = vhosts
        .into_values()
        .map(|mut v| {
            v.routes = sort_catch_all_last(std::mem::take(&mut v.routes));
            v
        })
        .collect();
    if virtual_hosts.is_empty() {
        virtual_hosts.push(VirtualHost {
            name: format!("blackhole:{port}"),
            domains: vec!["*".into()],
            ..Default::default()
        });
    }
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts,
        validate_clusters: Some(bool_value(false)),
        ..Default::default()
    }
}

/// TCP servers: the first TCP route (oldest VirtualService first) whose match
/// applies proxies the port. TLS passthrough servers: one filter chain per TLS
/// route match, on the SNI names that intersect the server's hosts.
fn l4_filter_chains<'a>(
    port: u32,
    ps: &PortServers<'a>,
    proxy: &Proxy,
    ctx: &'a PushContext,
    used: &mut Vec<&'a Config<VirtualService>>,
) -> Vec<FilterChain> {
    let mut chains: Vec<FilterChain> = Vec::new();
    let mut seen_sni: BTreeSet<String> = BTreeSet::new();
    let stat = format!("outbound_{BIND_ADDRESS}_{port}");
    for bs in &ps.servers {
        for vs in ctx
            .config
            .virtual_services_for_gateway(&bs.gateway, &proxy.namespace)
        {
            let ns = &vs.meta.namespace;
            let server_hosts = server_hosts_for(bs.server, bs.gateway_ns, ns);
            if intersect(&server_hosts, &vs.spec.hosts).is_empty() {
                continue;
            }
            let applies = |gws: &[String],
                           p: Option<u32>,
                           labels: &BTreeMap<String, String>,
                           sns: &Option<String>| {
                (gws.is_empty()
                    || gws
                        .iter()
                        .any(|g| resolve_gateway_name(g, ns) == bs.gateway))
                    && p.is_none_or(|p| p == port)
                    && labels_match(labels, &proxy.labels)
                    && sns.as_ref().is_none_or(|s| *s == proxy.namespace)
            };
            if ps.passthrough {
                for tls in &vs.spec.tls {
                    for m in tls.matches.iter().filter(|m| {
                        applies(&m.gateways, m.port, &m.source_labels, &m.source_namespace)
                    }) {
                        let sni: Vec<String> = intersect(&server_hosts, &m.sni_hosts)
                            .into_iter()
                            .filter(|h| seen_sni.insert(h.clone()))
                            .collect();
                        if sni.is_empty() {
                            continue;
                        }
                        let dests = l4_destinations(&tls.route, ns, port, ctx);
                        chains.push(filter_chain(sni, l4_proxy(&stat, &dests, proxy, ctx)));
                        if !used.iter().any(|u| std::ptr::eq(*u, vs.as_ref())) {
                            used.push(vs);
                        }
                    }
                }
            } else if chains.is_empty() {
                let route = vs.spec.tcp.iter().find(|t| {
                    t.matches.is_empty()
                        || t.matches.iter().any(|m| {
                            applies(&m.gateways, m.port, &m.source_labels, &m.source_namespace)
                        })
                });
                if let Some(t) = route {
                    let dests = l4_destinations(&t.route, ns, port, ctx);
                    chains.push(filter_chain(
                        Vec::new(),
                        l4_proxy(&stat, &dests, proxy, ctx),
                    ));
                    used.push(vs);
                }
            }
        }
    }
    chains
}

/// Whether a Gateway's selector picks `proxy` (for callers deciding which proxies
/// a Gateway change concerns).
pub fn selects(gw: &Config<Gateway>, proxy: &Proxy) -> bool {
    labels_match(&gw.spec.selector, &proxy.labels)
}
