//! Multi-network EDS (Istio's `EndpointsByNetworkFilter`): a proxy reaches
//! endpoints on its own network directly; endpoints on another network are
//! replaced by that network's east-west gateways (mesh file `networks`), one
//! gateway endpoint per locality weighted by how many endpoints it stands for;
//! endpoints on a network with no gateway are left out (never sent unreachable)
//! and counted.

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
                    .push((lb_endpoint(&gw.address, gw.port as u32, w), w, None));
            }
        }
    }
    groups.retain(|g| !g.members.is_empty());
    skipped
}

/// Endpoints of `svc` (ready, any port) on a network that has no east-west
/// gateway in the mesh file, per network: proxies on other networks cannot reach
/// them, so they are left out of those proxies' EDS.
pub fn unreachable(svc: &Service, ctx: &PushContext) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in svc.endpoints.values().flatten().filter(|e| e.ready) {
        if !e.network.is_empty() && ctx.mesh.networks.get(&*e.network).is_none_or(Vec::is_empty) {
            *out.entry(e.network.to_string()).or_default() += 1;
        }
    }
    out
}

/// Whether `ep` is served directly to a proxy on `network`.
pub fn local_to(ep: &Endpoint, network: &str) -> bool {
    same_network(&ep.network, network)
}
