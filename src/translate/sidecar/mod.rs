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
//!
//! Files: `scope.rs` (the Sidecar in force and its egress scopes: which services
//! and VirtualServices a proxy sees), `outbound.rs` (outbound routes, TLS and TCP
//! chains, `virtualOutbound`), `inbound.rs` (ingress listeners and
//! `virtualInbound`), `clusters.rs` (the inbound, passthrough and black-hole
//! clusters); [`generate`] here puts them together.

mod clusters;
mod inbound;
mod outbound;
mod scope;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::FilterChainMatch;

use super::cluster::{apply_inbound_connection_pool, service_clusters};
use super::listener::{
    filter_chain, http_connection_manager, http_connection_manager_inline, l4_proxy, listener,
    tcp_proxy, HttpClass,
};
use super::mtls;
use super::proto::{bool_value, u32_value};
use super::route::referenced_hosts;
use super::Generated;
use crate::model::istio::sidecar::{parse_default_endpoint, IstioIngressListener};
use crate::model::{InterceptionMode, Protocol, Proxy, PushContext};
use clusters::*;
use inbound::*;
use outbound::*;
use scope::*;

pub use clusters::INBOUND_PASSTHROUGH_BIND;
pub use scope::select;

/// Istio's virtual outbound listener port (iptables redirects outbound here).
pub const VIRTUAL_OUTBOUND_PORT: u32 = 15001;
/// Istio's virtual inbound listener port (iptables redirects inbound here).
pub const VIRTUAL_INBOUND_PORT: u32 = 15006;
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughClusterIpv4";
const WILDCARD: &str = "0.0.0.0";
const ORIGINAL_DST_FILTER: &str = "envoy.filters.listener.original_dst";

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
                crate::translate::security::http_filters(proxy, ctx, port),
                &ctx.mesh,
            )
        } else {
            tcp_proxy(&stat, &[(cluster.clone(), 100)], &ctx.mesh)
        };
        // TCP: AuthorizationPolicy's network RBAC filters ahead of the TCP proxy.
        let rbac = if protocol.is_http() {
            Vec::new()
        } else {
            crate::translate::security::network_filters(proxy, ctx)
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
            &crate::translate::security::network_filters(proxy, ctx),
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
