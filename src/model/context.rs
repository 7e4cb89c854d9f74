//! The immutable snapshot a push translates from (Istio's `PushContext`).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::istio::ConfigSnapshot;
use super::service::ServiceMap;
use crate::config::NetworkGateway;

/// Mesh-wide settings translation needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshSettings {
    pub trust_domain: String,
    pub domain_suffix: String,
    /// East-west gateways per network name: the mesh file's `networks`, merged
    /// (deduplicated) with those the registry discovered from Services labelled
    /// `topology.istio.io/network`, as of this push.
    pub networks: BTreeMap<String, Vec<NetworkGateway>>,
    /// Mesh file `pathNormalization`, for every HTTP connection manager.
    pub path_normalization: crate::config::PathNormalization,
    /// Mesh file `outboundTrafficPolicy.mode`, for sidecars without a
    /// `Sidecar` that sets its own.
    pub outbound_traffic_policy: crate::config::OutboundTrafficPolicy,
    /// Mesh file `accessLogFile`/`accessLogEncoding`/`accessLogFormat`, for
    /// every HTTP connection manager, TCP proxy and listener.
    pub access_log: Option<crate::config::AccessLog>,
    /// Mesh file `defaultConfig.gatewayTopology`, for gateways' HTTP
    /// connection managers.
    pub gateway_topology: crate::config::GatewayTopology,
    /// Mesh file tracing (`extensionProviders`, `defaultProviders.tracing`,
    /// `defaultConfig.tracing`), for gateways' and sidecars' HTTP connection
    /// managers (`translate::tracing`).
    pub tracing: Option<crate::config::tracing::Tracing>,
}

/// Everything translation reads, frozen for one push.
#[derive(Debug, Clone, Default)]
pub struct PushContext {
    /// Push sequence number.
    pub seq: u64,
    pub mesh: Arc<MeshSettings>,
    pub services: Arc<ServiceMap>,
    pub config: Arc<ConfigSnapshot>,
    /// TLS Secrets by (cluster, namespace, name), for `credentialName`.
    pub credentials: Arc<super::credential::Credentials>,
}
