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
use crate::config::NetworkGateway;
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

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Istio's `selectNetworkGateways`: the gateways of `network` discovered in the
/// endpoint's own `cluster` if there are any (no extra hop between clusters of
/// one network), else every gateway of the network (mesh-file gateways belong to
/// no cluster). The key names the choice: `(network, cluster or "")`.
fn select_gateways<'c>(
    ctx: &'c PushContext,
    network: &'c str,
    cluster: &'c str,
) -> ((&'c str, &'c str), Vec<&'c NetworkGateway>) {
    let all = ctx
        .mesh
        .networks
        .get(network)
        .map_or(&[][..], Vec::as_slice);
    let own: Vec<&NetworkGateway> = all
        .iter()
        .filter(|g| g.cluster.as_deref() == Some(cluster))
        .collect();
    if own.is_empty() {
        ((network, ""), all.iter().collect())
    } else {
        ((network, cluster), own)
    }
}

/// Replace remote-network members of every group by gateway members for a proxy
/// on `proxy_network`. Returns how many endpoints were left out because their
/// network has no gateway.
///
/// Weights follow Istio: with `k` gateways chosen for a remote endpoint (see
/// `select_gateways`), each gets `m / k` of its weight, where `m` is the least
/// common multiple of the gateway counts involved, and local endpoints are scaled
/// by `m` so shares stay exact; a gateway chosen for several endpoints is one
/// member carrying their summed weight. Envoy refuses a locality whose weights
/// sum past `u32::MAX`, so `m` is capped to keep every locality below that;
/// past the cap, gateway shares are rounded down (each gateway keeps at least 1).
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
    // The gateway choice per (network, cluster) of remote endpoints, made once.
    type Choice<'c> = ((&'c str, &'c str), Vec<&'c NetworkGateway>);
    let mut chosen: BTreeMap<(&str, &str), Choice<'_>> = BTreeMap::new();
    // Per group: remote endpoint weight per gateway choice.
    let mut remote: Vec<BTreeMap<(&str, &str), u32>> = Vec::with_capacity(groups.len());
    for g in groups.iter_mut() {
        let mut per_choice: BTreeMap<(&str, &str), u32> = BTreeMap::new();
        g.members.retain(|(_, w, ep)| {
            let Some(ep) = ep else { return true };
            if same_network(&ep.network, proxy_network) {
                return true;
            }
            let (key, gws) = chosen
                .entry((&ep.network, &ep.cluster))
                .or_insert_with(|| select_gateways(ctx, &ep.network, &ep.cluster));
            if gws.is_empty() {
                skipped += 1;
            } else {
                let sum = per_choice.entry(*key).or_default();
                *sum = sum.saturating_add(*w);
            }
            false
        });
        remote.push(per_choice);
    }
    let gateways_of = |key: &(&str, &str)| -> &[&NetworkGateway] {
        chosen
            .values()
            .find(|(k, _)| k == key)
            .map_or(&[][..], |(_, g)| g.as_slice())
    };
    let mut lcm: u64 = 1;
    for key in remote.iter().flat_map(BTreeMap::keys) {
        let k = gateways_of(key).len() as u64;
        lcm = (lcm / gcd(lcm, k)).saturating_mul(k);
    }
    // A locality's sum after scaling is at most (its weight) * m plus one per
    // gateway member (a share rounded down to 0 is sent as 1).
    let cap = groups
        .iter()
        .zip(&remote)
        .map(|(g, per_choice)| {
            let weight = g.members.iter().map(|x| u64::from(x.1)).sum::<u64>()
                + per_choice.values().map(|&c| u64::from(c)).sum::<u64>();
            let gateways: u64 = per_choice.keys().map(|k| gateways_of(k).len() as u64).sum();
            u64::from(u32::MAX).saturating_sub(gateways) / weight.max(1)
        })
        .min()
        .unwrap_or(1);
    let m = lcm.min(cap).max(1);
    let to_u32 = |w: u64| u32::try_from(w).unwrap_or(u32::MAX);
    for (g, per_choice) in groups.iter_mut().zip(remote) {
        if m > 1 {
            for mem in g.members.iter_mut() {
                mem.1 = to_u32(u64::from(mem.1) * m);
                mem.0.load_balancing_weight = Some(u32_value(mem.1));
            }
        }
        let mut weights: Vec<(&NetworkGateway, u32)> = Vec::new();
        for (key, count) in per_choice {
            let gws = gateways_of(&key);
            let w = to_u32((u64::from(count) * m / gws.len() as u64).max(1));
            for gw in gws {
                match weights
                    .iter_mut()
                    .find(|(x, _)| x.address == gw.address && x.port == gw.port)
                {
                    Some((_, total)) => *total = total.saturating_add(w),
                    None => weights.push((gw, w)),
                }
            }
        }
        for (gw, w) in weights {
            g.members
                .push((gateway_lb_endpoint(&gw.address, gw.port as u32, w), w, None));
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

use super::mtls::TRANSPORT_SOCKET_MATCH;

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

/// `{tlsMode: istio}`: the endpoint runs a sidecar (auto mTLS matches it).
pub fn tls_mode_istio() -> Struct {
    Struct {
        fields: [("tlsMode".to_string(), string_value("istio"))].into(),
    }
}

/// `{tlsMode: istio, eastWestGateway: "true"}`: an east-west gateway standing
/// for remote endpoints. Proxies without an identity originate plain TLS to
/// these only (never to a meshed pod reached directly).
fn east_west_gateway_match() -> Struct {
    let mut s = tls_mode_istio();
    s.fields
        .insert("eastWestGateway".to_string(), string_value("true"));
    s
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
        filter_metadata: [(
            TRANSPORT_SOCKET_MATCH.to_string(),
            east_west_gateway_match(),
        )]
        .into(),
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
                    super::listener::tcp_proxy(&name, &[(name.clone(), 1)], &ctx.mesh),
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

/// Client side of cross-network traffic for a proxy without an identity: a
/// cluster of a service that has endpoints behind an east-west gateway gets a
/// transport socket match for the gateway endpoints EDS sends (`tlsMode:
/// istio`, `eastWestGateway`) that originates TLS with SNI
/// `outbound_.PORT_.SUBSET_.HOST`; direct endpoints stay plaintext.
///
/// Not mutual TLS: such a proxy has no certificate to present. The east-west
/// gateway never terminates the TLS, so the destination must. A proxy with an
/// identity replaces this match with auto mTLS (`mtls::apply_auto_mtls`),
/// which covers the gateway endpoints too.
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
            r#match: Some(east_west_gateway_match()),
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(ConfigType::TypedConfig(pack(&tls))),
            }),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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

    fn ep(ip: &str, network: &str, cluster: &str) -> Endpoint {
        Endpoint {
            address: ip.parse().unwrap(),
            port: 8080,
            labels: Default::default(),
            cluster: cluster.into(),
            network: network.into(),
            locality: Default::default(),
            ready: true,
            workload: "test/pod".into(),
            service_account: "default".into(),
            stale: false,
            weight: 1,
        }
    }

    fn gw(address: &str, cluster: Option<&str>) -> NetworkGateway {
        NetworkGateway {
            address: address.into(),
            port: 15443,
            cluster: cluster.map(str::to_string),
        }
    }

    fn members(ctx: &PushContext, eps: &[Endpoint]) -> (Vec<(String, u32)>, usize) {
        let mut groups = vec![Group {
            locality: Default::default(),
            members: eps
                .iter()
                .map(|e| (lb_endpoint(&e.address.to_string(), 8080, 1), 1, Some(e)))
                .collect(),
            weight: None,
            priority: 0,
        }];
        let skipped = apply(&mut groups, "network-1", ctx);
        let out = groups
            .iter()
            .flat_map(|g| g.members.iter())
            .map(|(lb, w, _)| {
                let Some(HostIdentifier::Endpoint(e)) = &lb.host_identifier else {
                    panic!("no endpoint")
                };
                let a = e.address.as_ref().unwrap().address.as_ref().unwrap();
                let envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(sa) =
                    a
                else {
                    panic!("not a socket address")
                };
                assert_eq!(lb.load_balancing_weight.as_ref().unwrap().value, *w);
                (sa.address.clone(), *w)
            })
            .collect();
        (out, skipped)
    }

    #[test]
    fn remote_endpoints_prefer_gateways_of_their_own_cluster() {
        // network-2: a mesh-file gateway F (no cluster), A discovered in c2 and B
        // in c3. c2's endpoint goes through A, c3's through B, c4's (no gateway
        // of its own) through all three: m = lcm(1, 1, 3) = 3.
        let mut ctx = PushContext::default();
        let mesh = Arc::make_mut(&mut ctx.mesh);
        mesh.networks.insert(
            "network-2".into(),
            vec![
                gw("192.0.2.1", None),
                gw("192.0.2.2", Some("c2")),
                gw("192.0.2.3", Some("c3")),
            ],
        );
        let eps = [
            ep("10.1.0.1", "network-1", "c1"),
            ep("10.2.0.1", "network-2", "c2"),
            ep("10.3.0.1", "network-2", "c3"),
            ep("10.4.0.1", "network-2", "c4"),
        ];
        let (got, skipped) = members(&ctx, &eps);
        assert_eq!(skipped, 0);
        assert_eq!(
            got,
            [
                ("10.1.0.1".to_string(), 3),
                ("192.0.2.1".to_string(), 1),
                ("192.0.2.2".to_string(), 4),
                ("192.0.2.3".to_string(), 4),
            ]
        );
    }

    #[test]
    fn mesh_file_gateways_serve_every_cluster_of_their_network() {
        let mut ctx = PushContext::default();
        Arc::make_mut(&mut ctx.mesh).networks.insert(
            "network-2".into(),
            vec![gw("192.0.2.1", None), gw("192.0.2.9", None)],
        );
        let eps = [
            ep("10.1.0.1", "network-1", "c1"),
            ep("10.2.0.1", "network-2", "c2"),
            ep("10.3.0.1", "network-2", "c3"),
            ep("10.5.0.1", "network-3", "c5"),
        ];
        let (got, skipped) = members(&ctx, &eps);
        assert_eq!(skipped, 1, "network-3 has no gateway");
        assert_eq!(
            got,
            [
                ("10.1.0.1".to_string(), 2),
                ("192.0.2.1".to_string(), 2),
                ("192.0.2.9".to_string(), 2),
            ]
        );
    }

    /// The least common multiple of many gateway counts (here 16 x 17 x 19 x 23
    /// x 25 x 27 x 29 x 31, past `u32::MAX`) and heavy endpoint weights must
    /// neither overflow nor send Envoy a locality whose weights sum past
    /// `u32::MAX` (it refuses one); every gateway keeps a weight of at least 1.
    #[test]
    fn huge_gateway_multiples_stay_within_envoy_weight_limits() {
        let mut ctx = PushContext::default();
        let mesh = Arc::make_mut(&mut ctx.mesh);
        let counts = [16u32, 17, 19, 23, 25, 27, 29, 31];
        for (n, count) in counts.iter().enumerate() {
            mesh.networks.insert(
                format!("network-{}", n + 2),
                (0..*count)
                    .map(|i| gw(&format!("192.0.{}.{}", n + 2, i + 1), None))
                    .collect(),
            );
        }
        let mut eps = vec![ep("10.1.0.1", "network-1", "c1")];
        for n in 0..counts.len() {
            eps.push(ep(
                &format!("10.{}.0.1", n + 2),
                &format!("network-{}", n + 2),
                "c",
            ));
        }
        let mut groups = vec![Group {
            locality: Default::default(),
            members: eps
                .iter()
                .map(|e| {
                    let w = 60_000;
                    (lb_endpoint(&e.address.to_string(), 8080, w), w, Some(e))
                })
                .collect(),
            weight: None,
            priority: 0,
        }];
        assert_eq!(apply(&mut groups, "network-1", &ctx), 0);
        let members = &groups[0].members;
        assert_eq!(members.len(), 1 + counts.iter().sum::<u32>() as usize);
        let sum: u64 = members.iter().map(|m| u64::from(m.1)).sum();
        assert!(sum <= u64::from(u32::MAX), "locality weight sum {sum}");
        for (lb, w, _) in members {
            assert!(*w >= 1);
            assert_eq!(lb.load_balancing_weight.as_ref().unwrap().value, *w);
        }
        // The local endpoint is scaled as far as the cap allows: shares stay
        // close to Istio's (local endpoint = each remote network's endpoint).
        let local = u64::from(members[0].1);
        let network_2: u64 = members
            .iter()
            .filter(|m| m.2.is_none())
            .take(16)
            .map(|m| u64::from(m.1))
            .sum();
        assert!(
            local > 1 && network_2 <= local && network_2 * 100 >= local * 99,
            "{local} vs {network_2}"
        );
    }

    #[test]
    fn no_gateway_anywhere_means_one_routed_network() {
        let ctx = PushContext::default();
        assert!(!multi_network(&ctx));
    }
}
