//! EDS: the `ClusterLoadAssignment`s of one service, one per service port and per
//! DestinationRule subset, holding only ready endpoints from every member cluster,
//! grouped by locality.
//!
//! EDS is the same for every proxy (it does not depend on the proxy), so it is
//! computed once per service change. Locality priorities and failover will extend
//! `group_by_locality` (they depend on the proxy's locality and are a later step).

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality as EnvoyLocality};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint,
    LocalityLbEndpoints,
};

use super::proto::{cluster_name, socket_address, u32_value};
use crate::model::istio::labels_match;
use crate::model::{Endpoint, Locality, PushContext, Service};

/// Every assignment of `svc`: `outbound|PORT||HOST` for each port and
/// `outbound|PORT|SUBSET|HOST` for each subset any DestinationRule defines for the
/// host (a subset holds the endpoints whose labels include the subset's labels).
pub fn service_assignments(svc: &Service, ctx: &PushContext) -> Vec<ClusterLoadAssignment> {
    let subsets = ctx.config.all_subsets(&svc.hostname, &svc.namespace);
    let mut out = Vec::with_capacity(svc.ports.len() * (1 + subsets.len()));
    for port in &svc.ports {
        let eps: Vec<&Endpoint> = svc
            .endpoints
            .get(&port.port)
            .map(|v| v.iter().filter(|e| e.ready).collect())
            .unwrap_or_default();
        out.push(assignment(
            cluster_name(port.port, "", &svc.hostname),
            eps.iter().copied(),
        ));
        for s in &subsets {
            let selected = eps
                .iter()
                .copied()
                .filter(|e| labels_match(&s.labels, &e.labels));
            out.push(assignment(
                cluster_name(port.port, &s.name, &svc.hostname),
                selected,
            ));
        }
    }
    out
}

fn assignment<'a>(name: String, eps: impl Iterator<Item = &'a Endpoint>) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name,
        endpoints: group_by_locality(eps),
        ..Default::default()
    }
}

/// One `LocalityLbEndpoints` per locality, sorted by locality; each endpoint weight
/// 1 and the locality weight the endpoint count (Istio's default weighting).
pub fn group_by_locality<'a>(eps: impl Iterator<Item = &'a Endpoint>) -> Vec<LocalityLbEndpoints> {
    let mut groups: BTreeMap<&Locality, Vec<LbEndpoint>> = BTreeMap::new();
    for e in eps {
        groups.entry(&e.locality).or_default().push(LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                address: Some(socket_address(&e.address.to_string(), e.port as u32)),
                ..Default::default()
            })),
            health_status: HealthStatus::Healthy as i32,
            load_balancing_weight: Some(u32_value(1)),
            ..Default::default()
        });
    }
    groups
        .into_iter()
        .map(|(loc, lb_endpoints)| LocalityLbEndpoints {
            locality: Some(EnvoyLocality {
                region: loc.region.clone(),
                zone: loc.zone.clone(),
                sub_zone: loc.subzone.clone(),
                ..Default::default()
            }),
            load_balancing_weight: Some(u32_value(lb_endpoints.len() as u32)),
            lb_endpoints,
            ..Default::default()
        })
        .collect()
}
