//! EDS: the `ClusterLoadAssignment`s of one service, one per service port and per
//! DestinationRule subset, holding only ready endpoints from every member cluster,
//! grouped by locality (`region/zone/subzone`), each locality weighted by the sum
//! of its endpoints' weights (its healthy endpoint count when all weigh 1).
//!
//! Two entry points:
//! - `service_assignments`: the one global assignment, for services whose EDS
//!   is the same for every proxy (no locality failover/distribution in force,
//!   no endpoints on a named network);
//! - `service_assignments_for`: the assignment for one `EdsView` (the proxy
//!   fields EDS reads): network filter (`network.rs`), then locality priorities
//!   and weights (`locality.rs`). The push engine computes it once per distinct
//!   view and shares equal encodings.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{Locality as EnvoyLocality, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints,
};

use super::locality::{self, EdsView, Group, Mode};
use super::mtls;
use super::network;
use super::proto::{cluster_name, u32_value};
use crate::model::istio::{labels_match, MtlsMode};
use crate::model::{Endpoint, Locality, PushContext, Service};

/// Every assignment of `svc`: `outbound|PORT||HOST` for each port and
/// `outbound|PORT|SUBSET|HOST` for each subset any DestinationRule defines for the
/// host (a subset holds the endpoints whose labels include the subset's labels).
pub fn service_assignments(svc: &Service, ctx: &PushContext) -> Vec<ClusterLoadAssignment> {
    build(svc, ctx, None)
}

/// The assignments of `svc` as a proxy with `view` sees them.
pub fn service_assignments_for(
    svc: &Service,
    ctx: &PushContext,
    view: &EdsView,
) -> Vec<ClusterLoadAssignment> {
    build(svc, ctx, Some(view))
}

fn build(svc: &Service, ctx: &PushContext, view: Option<&EdsView>) -> Vec<ClusterLoadAssignment> {
    let subsets = ctx.config.all_subsets(&svc.hostname, &svc.namespace);
    let mut out = Vec::with_capacity(svc.ports.len() * (1 + subsets.len()));
    let east_west = network::mesh_has_auto_passthrough(ctx);
    for port in &svc.ports {
        let eps: Vec<&Endpoint> = svc
            .endpoints
            .get(&port.port)
            .map(|v| v.iter().filter(|e| e.ready).collect())
            .unwrap_or_default();
        out.push(assignment(
            svc,
            ctx,
            view,
            port.port,
            "",
            eps.iter().copied(),
        ));
        for s in &subsets {
            let selected = eps
                .iter()
                .copied()
                .filter(|e| labels_match(&s.labels, &e.labels));
            out.push(assignment(svc, ctx, view, port.port, &s.name, selected));
        }
        if east_west {
            // East-west gateways: `outbound_.PORT_.SUBSET_.HOST` with only the
            // endpoints on the gateway's own network, never gateways themselves.
            let local: Vec<&Endpoint> = eps
                .iter()
                .copied()
                .filter(|e| view.is_none_or(|v| network::local_to(e, &v.network)))
                .collect();
            out.push(ClusterLoadAssignment {
                cluster_name: network::sni(port.port, "", &svc.hostname),
                endpoints: to_proto(groups_of(local.iter().copied(), svc, ctx)),
                ..Default::default()
            });
            for s in &subsets {
                let selected = local
                    .iter()
                    .copied()
                    .filter(|e| labels_match(&s.labels, &e.labels));
                out.push(ClusterLoadAssignment {
                    cluster_name: network::sni(port.port, &s.name, &svc.hostname),
                    endpoints: to_proto(groups_of(selected, svc, ctx)),
                    ..Default::default()
                });
            }
        }
    }
    out
}

fn assignment<'a>(
    svc: &Service,
    ctx: &PushContext,
    view: Option<&EdsView>,
    port: u16,
    subset: &str,
    eps: impl Iterator<Item = &'a Endpoint>,
) -> ClusterLoadAssignment {
    let mut groups = groups_of(eps, svc, ctx);
    if let Some(view) = view {
        network::apply(&mut groups, &view.network, ctx);
        let policy = locality::effective_policy(svc, &view.namespace, subset, port, ctx);
        locality::apply(&mut groups, view, &locality::mode(&policy));
    }
    ClusterLoadAssignment {
        cluster_name: cluster_name(port, subset, &svc.hostname),
        endpoints: to_proto(groups),
        ..Default::default()
    }
}

/// Whether `e` takes mTLS (Istio's EDS `tlsMode` metadata): its pod runs a
/// sidecar (label `security.istio.io/tlsMode: istio`) and the PeerAuthentication
/// in force for it on its target port is not DISABLE (Istio's `mtlsChecker`).
fn meshed(e: &Endpoint, svc: &Service, ctx: &PushContext) -> bool {
    e.labels.get(mtls::TLS_MODE_LABEL).map(String::as_str) == Some("istio")
        && ctx
            .config
            .peer_authentication(&svc.namespace, &e.labels)
            .for_port(e.port as u32)
            != MtlsMode::Disable
}

/// One group per locality, sorted by locality; each endpoint with its weight
/// (`Endpoint::weight`: 1 for Pods, a WorkloadEntry's `weight`), marked
/// `tlsMode: istio` in `envoy.transport_socket_match` metadata when `meshed`.
fn groups_of<'a>(
    eps: impl Iterator<Item = &'a Endpoint>,
    svc: &Service,
    ctx: &PushContext,
) -> Vec<Group<'a, LbEndpoint>> {
    let mut by: BTreeMap<&Locality, Vec<(LbEndpoint, u32, Option<&'a Endpoint>)>> = BTreeMap::new();
    for e in eps {
        let weight = u32::from(e.weight.max(1));
        let mut lb = network::lb_endpoint(&e.address.to_string(), e.port as u32, weight);
        if meshed(e, svc, ctx) {
            lb.metadata = Some(Metadata {
                filter_metadata: [(
                    mtls::TRANSPORT_SOCKET_MATCH.to_string(),
                    network::tls_mode_istio(),
                )]
                .into(),
                ..Default::default()
            });
        }
        by.entry(&e.locality)
            .or_default()
            .push((lb, weight, Some(e)));
    }
    by.into_iter()
        .map(|(l, members)| Group {
            locality: l.clone(),
            members,
            weight: None,
            priority: 0,
        })
        .collect()
}

/// Envoy form, ordered by (priority, locality). A group's weight is its
/// explicit weight (`distribute`) or the sum of its members' weights (the
/// healthy endpoint count when every weight is 1, Istio's default).
fn to_proto(mut groups: Vec<Group<'_, LbEndpoint>>) -> Vec<LocalityLbEndpoints> {
    groups.sort_by(|a, b| (a.priority, &a.locality).cmp(&(b.priority, &b.locality)));
    groups
        .into_iter()
        .filter(|g| !g.members.is_empty())
        .map(|g| {
            let weight = g.total();
            LocalityLbEndpoints {
                locality: Some(EnvoyLocality {
                    region: g.locality.region.clone(),
                    zone: g.locality.zone.clone(),
                    sub_zone: g.locality.subzone.clone(),
                    ..Default::default()
                }),
                load_balancing_weight: Some(u32_value(weight.max(1))),
                priority: g.priority,
                lb_endpoints: g.members.into_iter().map(|m| m.0).collect(),
                ..Default::default()
            }
        })
        .collect()
}

/// Enable Envoy's locality-weighted load balancing
/// (`common_lb_config.locality_weighted_lb_config`) on a cluster whose policy has
/// a `distribute` rule in force: there the locality weights are the user's
/// percentages and Envoy ignores them without it. Elsewhere a locality's weight
/// is its endpoint count, which host-level balancing within a priority already
/// gives, so the cluster is left as is.
pub fn apply_locality_lb(
    c: &mut envoy_types::pb::envoy::config::cluster::v3::Cluster,
    policy: &crate::model::istio::destination_rule::EffectivePolicy,
) {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        common_lb_config::{LocalityConfigSpecifier, LocalityWeightedLbConfig},
        CommonLbConfig,
    };
    if let Mode::Distribute(_) = locality::mode(policy) {
        c.common_lb_config
            .get_or_insert_with(CommonLbConfig::default)
            .locality_config_specifier = Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(
            LocalityWeightedLbConfig {},
        ));
    }
}
