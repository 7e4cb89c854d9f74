//! Multi-network EDS (Istio's `EndpointsByNetworkFilter`): a proxy reaches
//! endpoints on its own network directly; endpoints on another network are
//! replaced by that network's east-west gateways (`MeshSettings::networks`: the
//! mesh file's `networks` and Services labelled `topology.istio.io/network`), one
//! gateway endpoint per locality weighted by how many endpoints it stands for;
//! endpoints on a network with no gateway are left out (never sent unreachable)
//! and counted. As in Istio, this only applies once the mesh is multi-network
//! (some network has a gateway); before that, networks are routed to each other.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, Endpoint as EnvoyEndpoint, LbEndpoint,
};

use super::locality::Group;
use super::proto::{socket_address, u32_value};
use crate::model::{Endpoint, PushContext, Service};

/// Istio's `IsSameOrEmpty`: an empty network on either side is "the same".
pub fn same_network(a: &str, b: &str) -> bool {
    a.is_empty() || b.is_empty() || a == b
}

/// The LbEndpoint of one address.
pub fn lb_endpoint(address: &str, port: u32, weight: u32) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(socket_address(address, port)),
            ..Default::default()
        })),
        health_status: HealthStatus::Healthy as i32,
        load_balancing_weight: Some(u32_value(weight)),
        ..Default::default()
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Replace remote-network members of every group by gateway members for a proxy
/// on `proxy_network`. Returns how many endpoints were left out because their
/// network has no gateway.
///
/// Weights follow Istio: with `k` gateways for a network, each gets
/// `remote_count * m / k`, where `m` is the least common multiple of the gateway
/// counts involved, and local endpoints are scaled by `m` so shares stay exact.
pub fn apply<'a>(
    groups: &mut Vec<Group<'a, LbEndpoint>>,
    proxy_network: &str,
    ctx: &PushContext,
) -> usize {
    if !multi_network(ctx) {
        // Istio's `IsMultiNetworkEnabled`: with no east-west gateway anywhere,
        // networks are routed to each other (e.g. VPCs joined by Cloud Connect
        // Network) and every endpoint is reached directly.
        return 0;
    }
    let mut skipped = 0;
    let mut m: u32 = 1;
    // Per group: remote endpoint count per network that has gateways.
    let mut remote: Vec<BTreeMap<&'a str, u32>> = Vec::with_capacity(groups.len());
    for g in groups.iter_mut() {
        let mut per_net: BTreeMap<&'a str, u32> = BTreeMap::new();
        g.members.retain(|(_, w, ep)| {
            let Some(ep) = ep else { return true };
            if same_network(&ep.network, proxy_network) {
                return true;
            }
            match ctx.mesh.networks.get(&*ep.network) {
                Some(gws) if !gws.is_empty() => {
                    *per_net.entry(&*ep.network).or_default() += *w;
                }
                _ => skipped += 1,
            }
            false
        });
        for net in per_net.keys() {
            let k = ctx.mesh.networks[*net].len() as u32;
            m = m / gcd(m, k) * k;
        }
        remote.push(per_net);
    }
    for (g, per_net) in groups.iter_mut().zip(remote) {
        if m > 1 {
            for mem in g.members.iter_mut() {
                mem.1 *= m;
                mem.0.load_balancing_weight = Some(u32_value(mem.1));
            }
        }
        for (net, count) in per_net {
            let gws = &ctx.mesh.networks[net];
            let w = count * m / gws.len() as u32;
            for gw in gws {
                g.members
                    .push((gateway_lb_endpoint(&gw.address, gw.port as u32, w), w, None));
            }
        }
    }
    groups.retain(|g| !g.members.is_empty());
    skipped
}

/// Endpoints of `svc` (ready, any port) on a network that has no east-west
/// gateway (neither in the mesh file nor discovered), per network: proxies on
/// other networks cannot reach them, so they are left out of those proxies' EDS.
pub fn unreachable(svc: &Service, ctx: &PushContext) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    if !multi_network(ctx) {
        return out;
    }
    for e in svc.endpoints.values().flatten().filter(|e| e.ready) {
        if !e.network.is_empty() && ctx.mesh.networks.get(&*e.network).is_none_or(Vec::is_empty) {
            *out.entry(e.network.to_string()).or_default() += 1;
        }
    }
    out
}

/// Whether the mesh is multi-network in Istio's sense: some network has an
/// east-west gateway. Without one, network names are labels only.
pub fn multi_network(ctx: &PushContext) -> bool {
    ctx.mesh.networks.values().any(|g| !g.is_empty())
}

/// Whether `ep` is served directly to a proxy on `network`.
pub fn local_to(ep: &Endpoint, network: &str) -> bool {
    same_network(&ep.network, network)
}

// ---------------------------------------------------------------------------
// East-west gateways (Istio's `AUTO_PASSTHROUGH` / `sni-dnat`).

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, TransportSocketMatch},
    Cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    transport_socket::ConfigType, Metadata, TrafficDirection, TransportSocket,
};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use envoy_types::pb::google::protobuf::{value::Kind, Duration, Struct, Value};

use super::proto::{ads, pack};
use crate::model::istio::{host_matches, Server};

/// The endpoint metadata key Envoy's `transport_socket_matches` read.
const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

fn tls_mode_istio() -> Struct {
    Struct {
        fields: [(
            "tlsMode".to_string(),
            Value {
                kind: Some(Kind::StringValue("istio".into())),
            },
        )]
        .into(),
    }
}

/// Istio's SNI for a service port (and subset) behind an east-west gateway:
/// `outbound_.PORT_.SUBSET_.HOST`, i.e. `outbound_.PORT_._.HOST` for no subset.
pub fn sni(port: u16, subset: &str, host: &str) -> String {
    format!("outbound_.{port}_.{subset}_.{host}")
}

/// A gateway endpoint standing for remote endpoints: marked `tlsMode: istio` so
/// the client cluster's transport socket match originates TLS with the SNI.
pub fn gateway_lb_endpoint(address: &str, port: u32, weight: u32) -> LbEndpoint {
    let mut lb = lb_endpoint(address, port, weight);
    lb.metadata = Some(Metadata {
        filter_metadata: [(TRANSPORT_SOCKET_MATCH.to_string(), tls_mode_istio())].into(),
        ..Default::default()
    });
    lb
}

/// Whether a Gateway server is an east-west `AUTO_PASSTHROUGH` server.
pub fn is_auto_passthrough(server: &Server) -> bool {
    server
        .tls
        .as_ref()
        .and_then(|t| t.mode.as_deref())
        .is_some_and(|m| m.eq_ignore_ascii_case("AUTO_PASSTHROUGH"))
}

/// Whether any Gateway in force has an `AUTO_PASSTHROUGH` server (then EDS also
/// carries the `outbound_.` SNI assignments east-west gateways read).
pub fn mesh_has_auto_passthrough(ctx: &PushContext) -> bool {
    ctx.config
        .gateways
        .iter()
        .any(|g| g.spec.servers.iter().any(is_auto_passthrough))
}

/// The listener and clusters of an `AUTO_PASSTHROUGH` port on an east-west
/// gateway (Istio's `sni-dnat`): TLS inspector, one filter chain per service
/// port (and DestinationRule subset) matched by SNI `outbound_.PORT_.SUBSET_.HOST`,
/// TCP-proxied unterminated to an EDS cluster of that name, whose assignment holds
/// the endpoints on the gateway's own network. Services are those the servers'
/// `hosts` (`ns/host` or `host`) match. `None` if no server on the port is
/// `AUTO_PASSTHROUGH`.
pub fn auto_passthrough<'s>(
    port: u32,
    servers: impl IntoIterator<Item = &'s Server>,
    ctx: &PushContext,
) -> Option<(Listener, Vec<Cluster>)> {
    let servers: Vec<&Server> = servers
        .into_iter()
        .filter(|s| is_auto_passthrough(s))
        .collect();
    if servers.is_empty() {
        return None;
    }
    let mut chains: Vec<FilterChain> = Vec::new();
    let mut clusters = Vec::new();
    for svc in ctx.services.values() {
        let selected = servers.iter().any(|s| {
            s.hosts.iter().any(|h| {
                let (ns, host) = h.split_once('/').unwrap_or(("*", h));
                (ns == "*" || ns == svc.namespace) && host_matches(host, &svc.hostname)
            })
        });
        if !selected {
            continue;
        }
        let subsets = ctx.config.all_subsets(&svc.hostname, &svc.namespace);
        for p in &svc.ports {
            let names =
                std::iter::once(String::new()).chain(subsets.iter().map(|s| s.name.clone()));
            for subset in names {
                let name = sni(p.port, &subset, &svc.hostname);
                chains.push(super::listener::filter_chain(
                    vec![name.clone()],
                    super::listener::tcp_proxy(&name, &[(name.clone(), 1)]),
                ));
                clusters.push(Cluster {
                    name: name.clone(),
                    cluster_discovery_type: Some(ClusterDiscoveryType::Type(
                        DiscoveryType::Eds as i32,
                    )),
                    eds_cluster_config: Some(EdsClusterConfig {
                        eds_config: Some(ads()),
                        service_name: name,
                    }),
                    connect_timeout: Some(Duration {
                        seconds: super::cluster::DEFAULT_CONNECT_TIMEOUT_SECS,
                        nanos: 0,
                    }),
                    ..Default::default()
                });
            }
        }
    }
    if chains.is_empty() {
        return None;
    }
    let l = super::listener::listener(
        super::gateway::BIND_ADDRESS,
        port,
        TrafficDirection::Outbound,
        chains,
    );
    Some((l, clusters))
}

/// Client side of cross-network traffic: a cluster of a service that has
/// endpoints behind an east-west gateway gets a transport socket match for
/// endpoints marked `tlsMode: istio` (the gateway endpoints EDS sends) that
/// originates TLS with SNI `outbound_.PORT_.SUBSET_.HOST`; direct endpoints
/// stay plaintext.
///
/// Not yet mutual TLS: no client certificate and no server validation (the
/// security issue brings the workload certificates). The east-west gateway
/// never terminates the TLS, so the destination must (a sidecar, or in tests a
/// TLS-terminating Envoy in front of the pod).
pub fn apply_cross_network_tls(clusters: &mut [Cluster], svc: &Service, ctx: &PushContext) {
    let behind_gateway = svc.endpoints.values().flatten().any(|e| {
        !e.network.is_empty()
            && ctx
                .mesh
                .networks
                .get(&*e.network)
                .is_some_and(|g| !g.is_empty())
    });
    if !behind_gateway {
        return;
    }
    for c in clusters.iter_mut() {
        // `outbound|PORT|SUBSET|HOST`
        let mut parts = c.name.splitn(4, '|');
        let (Some("outbound"), Some(port), Some(subset), Some(host)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        let tls = UpstreamTlsContext {
            sni: sni(port, subset, host),
            ..Default::default()
        };
        c.transport_socket_matches.push(TransportSocketMatch {
            name: "tlsMode-istio".into(),
            r#match: Some(tls_mode_istio()),
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(ConfigType::TypedConfig(pack(&tls))),
            }),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_follows_istio_subset_key() {
        assert_eq!(
            sni(80, "", "web.test.svc.cluster.local"),
            "outbound_.80_._.web.test.svc.cluster.local"
        );
        assert_eq!(
            sni(9080, "v1", "r.ns.svc.cluster.local"),
            "outbound_.9080_.v1_.r.ns.svc.cluster.local"
        );
    }

    #[test]
    fn no_gateway_anywhere_means_one_routed_network() {
        let ctx = PushContext::default();
        assert!(!multi_network(&ctx));
    }
}
