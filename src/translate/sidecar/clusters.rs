//! The sidecar's own clusters: `inbound|PORT||` to the workload, the passthrough
//! clusters and the black hole.

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy},
    Cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    socket_address::PortSpecifier, BindConfig, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint,
    LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::Duration;

use super::{BLACKHOLE_CLUSTER, INBOUND_PASSTHROUGH_CLUSTER};
use crate::translate::cluster::DEFAULT_CONNECT_TIMEOUT_SECS;
use crate::translate::proto::socket_address;

fn connect_timeout() -> Option<Duration> {
    Some(Duration {
        seconds: DEFAULT_CONNECT_TIMEOUT_SECS,
        nanos: 0,
    })
}

/// `inbound|PORT||`: the local workload at its default endpoint.
pub(super) fn static_cluster(name: &str, ip: &str, port: u32) -> Cluster {
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
pub(super) fn original_dst_cluster(name: &str) -> Cluster {
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
pub(super) fn inbound_passthrough_cluster() -> Cluster {
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
pub(super) fn blackhole_cluster() -> Cluster {
    Cluster {
        name: BLACKHOLE_CLUSTER.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: connect_timeout(),
        ..Default::default()
    }
}
