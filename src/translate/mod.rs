//! Translation: pure functions from the `PushContext` and a `Proxy` to Envoy
//! resources. No IO, no async, no locks.
//!
//! One file per xDS type plus one per proxy role:
//! - `cluster.rs` (CDS) — `outbound|PORT|SUBSET|HOST` EDS clusters with the
//!   DestinationRule traffic policy;
//! - `endpoint.rs` (EDS) — ready endpoints per port and subset, by locality;
//! - `route.rs` (RDS) — VirtualService HTTP routes and virtual hosts;
//! - `listener.rs` (LDS) — listeners, HTTP connection manager, TCP proxy;
//! - `gateway.rs` — puts them together for gateway proxies;
//! - `sidecar.rs` — the same builders for sidecar proxies (REDIRECT and NONE);
//! - `grpc.rs` — proxyless gRPC clients (API listeners, what gRPC implements);
//! - `grpc_server.rs` — proxyless gRPC servers: gRFC A36 server listeners
//!   with PeerAuthentication mTLS from gRPC's certificate provider and
//!   AuthorizationPolicy as gRPC's RBAC;
//! - `mtls.rs` — PeerAuthentication inbound chains, auto mTLS and
//!   DestinationRule `tls` (only for proxies with an identity where the
//!   workload certificate is needed);
//! - `security.rs` — the filters that authenticate and authorize inbound and
//!   gateway traffic: `jwt.rs` (RequestAuthentication) and `authz.rs`
//!   (AuthorizationPolicy as Envoy RBAC).
//! `proto.rs` holds the small Envoy builders everything shares.

pub mod access_log;
pub mod authz;
pub mod cluster;
pub mod credentials;
pub mod endpoint;
pub mod gateway;
pub mod grpc;
pub mod grpc_server;
pub mod jwt;
pub mod listener;
pub mod locality;
pub mod mtls;
pub mod network;
pub mod proto;
pub mod route;
pub mod security;
pub mod service_entry;
pub mod sidecar;
pub mod tracing;

#[cfg(test)]
mod golden;

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;

use std::net::IpAddr;

use crate::model::{InterceptionMode, Proxy, ProxyRole, PushContext, Service};

/// Everything one proxy (class) gets except endpoints.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generated {
    pub clusters: Vec<Cluster>,
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    /// SDS secrets from Kubernetes Secrets (`credentialName`) the clusters and
    /// listeners name (`credentials::resolve`); the workload's own `default`
    /// and `ROOTCA` are per proxy and not here.
    pub secrets: Vec<Secret>,
    /// Clusters and filter chains left out because the proxy cannot get the
    /// Secret they name, with why (logged by the push engine).
    pub omitted: Vec<credentials::Omission>,
}

/// The endpoints of one EDS cluster (`outbound|PORT|SUBSET|HOST`).
pub type Assignment = ClusterLoadAssignment;

/// The proxy fields translation reads, and nothing else: proxies with equal classes
/// get identical CDS/LDS/RDS, so a push generates and encodes once per class.
///
/// Gateways read their role, namespace (DestinationRule and `exportTo` visibility,
/// `sourceNamespace`) and labels (Gateway `selector`, `sourceLabels`); never the pod
/// name, IP or id. Sidecars also read their interception mode; only `NONE` mode
/// sidecars read their IP (their listeners bind it), so REDIRECT sidecars of one
/// namespace and label set share one generation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProxyClass {
    pub role: ProxyRole,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Sidecars only.
    pub interception: Option<InterceptionMode>,
    /// NONE-mode sidecars only.
    pub ip: Option<IpAddr>,
    /// The proxy holds a workload certificate (`has_identity`): mTLS applies.
    pub identity: bool,
    /// The proxy's member cluster, read only by proxies with an identity whose
    /// namespace holds TLS Secrets (`credentialName` resolves per cluster and
    /// namespace); `None` otherwise, so classes stay shared across clusters.
    pub secrets_cluster: Option<String>,
    /// Proxyless gRPC servers only (gRPC proxies a Service selects): their IP
    /// and cluster, which name and shape their server listeners
    /// (`grpc_server::server_listeners`).
    pub grpc_server: Option<(IpAddr, String)>,
    /// Gateways only: the Services named by Gateway API `addresses` that have
    /// the proxy as an endpoint (`gateway::gateway_services_of`).
    pub gateway_services: Vec<String>,
}

impl ProxyClass {
    pub fn of(proxy: &Proxy, ctx: &PushContext) -> ProxyClass {
        let sidecar = proxy.role == ProxyRole::Sidecar;
        let identity = has_identity(proxy);
        ProxyClass {
            role: proxy.role,
            namespace: proxy.namespace.clone(),
            labels: proxy.labels.clone(),
            interception: sidecar.then_some(proxy.interception),
            ip: (sidecar && proxy.interception == InterceptionMode::None).then_some(proxy.ip),
            identity,
            secrets_cluster: (identity && ctx.credentials.has_namespace(&proxy.namespace))
                .then(|| proxy.cluster_id.clone()),
            grpc_server: (proxy.role == ProxyRole::Grpc
                && !grpc_server::server_ports(proxy, ctx).is_empty())
            .then(|| (proxy.ip, proxy.cluster_id.clone())),
            gateway_services: if proxy.role == ProxyRole::Gateway {
                gateway::gateway_services_of(proxy, ctx)
            } else {
                Vec::new()
            },
        }
    }
}

/// Whether `proxy` holds a workload certificate (SDS `default` and `ROOTCA`):
/// only such a proxy gets config naming them. A proxy connected on the
/// plaintext xDS port never does.
pub fn has_identity(proxy: &Proxy) -> bool {
    proxy.identity.is_some()
}

/// CDS, LDS and RDS for one proxy.
pub fn generate(proxy: &Proxy, ctx: &PushContext) -> Generated {
    let identity = has_identity(proxy);
    let mut g = match proxy.role {
        ProxyRole::Gateway => gateway::generate(proxy, ctx, identity),
        ProxyRole::Sidecar => sidecar::generate(proxy, ctx, identity),
        // Proxyless gRPC: no `credentialName` secrets and no access logs (gRPC
        // reads neither).
        ProxyRole::Grpc => return grpc::generate(proxy, ctx, identity),
    };
    let (secrets, omitted) = credentials::resolve(&mut g.clusters, &mut g.listeners, proxy, ctx);
    g.secrets = secrets;
    g.omitted = omitted;
    if let Some(log) = &ctx.mesh.access_log {
        access_log::set_listener_access_logs(&mut g.listeners, proxy.role, log);
    }
    tracing::apply(&mut g, proxy, ctx);
    g
}

/// Every ClusterLoadAssignment of one service: one per port and subset.
pub fn endpoints(svc: &Service, ctx: &PushContext) -> Vec<Assignment> {
    endpoint::service_assignments(svc, ctx)
}
