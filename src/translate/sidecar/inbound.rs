//! Inbound: Sidecar ingress listeners (bound in NONE mode, chains of
//! `virtualInbound` in REDIRECT mode) and the `virtualInbound` listener.

use envoy_types::pb::envoy::config::core::v3::{CidrRange, TrafficDirection};
use envoy_types::pb::envoy::config::listener::v3::{
    listener_filter::ConfigType as ListenerFilterConfig, Filter, FilterChain, FilterChainMatch,
    Listener, ListenerFilter,
};
use envoy_types::pb::envoy::config::route::v3::{
    route::Action, route_action::ClusterSpecifier, Route, RouteAction, RouteConfiguration,
    VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::google::protobuf::Duration;

use super::outbound::*;
use super::{INBOUND_PASSTHROUGH_CLUSTER, ORIGINAL_DST_FILTER, VIRTUAL_INBOUND_PORT, WILDCARD};
use crate::model::istio::sidecar::IstioIngressListener;
use crate::model::istio::MtlsMode;
use crate::model::{MeshSettings, Proxy};
use crate::translate::listener::{filter_chain, listener, tcp_proxy};
use crate::translate::mtls;
use crate::translate::proto::{bool_value, pack, u32_value};

/// In REDIRECT mode an ingress `bind` address cannot be a bound listener (all
/// inbound traffic arrives on 15006); it narrows the ingress chain to
/// connections whose original destination is that address, as a listener bound
/// there would receive. Unset or unspecified (`0.0.0.0`, `::`) means any.
pub(super) fn ingress_bind_range(ing: &IstioIngressListener) -> Option<CidrRange> {
    let ip: std::net::IpAddr = ing.bind.as_deref()?.parse().ok()?;
    (!ip.is_unspecified()).then(|| CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(u32_value(if ip.is_ipv4() { 32 } else { 128 })),
    })
}

/// Where a NONE-mode ingress listener binds: `bind`, else the proxy IP.
pub(super) fn ingress_bind(ing: &IstioIngressListener, proxy: &Proxy) -> String {
    ing.bind
        .clone()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| proxy.ip.to_string())
}

pub(super) fn inbound_route(cluster: &str) -> RouteConfiguration {
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

/// Put `filters` (network RBAC) ahead of each chain's own filters.
pub(super) fn prepend_filters(chains: &mut [FilterChain], filters: &[Filter]) {
    for fc in chains {
        fc.filters.splice(0..0, filters.iter().cloned());
    }
}

/// `virtualInbound` on 15006: the original destination port picks the Sidecar
/// ingress chain; other inbound traffic passes through to the original
/// destination, under the workload's PeerAuthentication mode when the proxy
/// has an identity (`mtls`; as Istio's passthrough chains: STRICT refuses
/// plaintext to any port).
pub(super) fn virtual_inbound(
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
