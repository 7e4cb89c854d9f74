//! A connected Envoy as it identifies itself, following Istio's node conventions
//! (`router~IP~POD.NS~NS.svc.cluster.local`, metadata `LABELS`, `NAMESPACE`, ...).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::service::Locality;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum ProxyRole {
    /// Istio's `router`: an ingress or east-west gateway.
    Gateway,
    Sidecar,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum InterceptionMode {
    /// iptables redirect: virtual listeners on 15001/15006.
    Redirect,
    /// No interception: listeners bind to real addresses (Istio `Sidecar` resource).
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Proxy {
    /// The full node id as sent.
    pub id: String,
    pub role: ProxyRole,
    pub ip: IpAddr,
    pub pod_name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub cluster_id: String,
    pub network: String,
    pub interception: InterceptionMode,
    pub service_account: String,
    pub istio_version: String,
    pub locality: Locality,
}
