//! `networking.istio.io` `Sidecar`: which services a sidecar sees and which ports
//! it listens on. Types only here; translation lives in `translate::sidecar`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::Destination;
use super::destination_rule::ConnectionPoolSettings;
use super::gateway::ServerTlsSettings;

/// `Sidecar.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sidecar {
    /// Absent: applies to every workload of the namespace without a more specific
    /// Sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<SidecarWorkloadSelector>,
    #[serde(default)]
    pub ingress: Vec<IstioIngressListener>,
    #[serde(default)]
    pub egress: Vec<IstioEgressListener>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
}

/// Sidecar's own `WorkloadSelector` (`networking.istio.io`), which names its map
/// `labels`. DestinationRule and the security kinds use
/// `istio.type.v1beta1.WorkloadSelector` with `matchLabels` instead; that form is
/// rejected here with a reason saying so (Istio's CRD schema does not accept it
/// for a Sidecar either).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawSidecarSelector")]
pub struct SidecarWorkloadSelector {
    /// Labels the workload must carry (all of them); empty selects every
    /// workload of the namespace.
    pub labels: BTreeMap<String, String>,
}

/// The wire form, which recognises `matchLabels` only to reject it by name.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSidecarSelector {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    match_labels: Option<serde::de::IgnoredAny>,
}

impl TryFrom<RawSidecarSelector> for SidecarWorkloadSelector {
    type Error = String;

    fn try_from(raw: RawSidecarSelector) -> Result<Self, String> {
        if raw.match_labels.is_some() {
            return Err(
                "`matchLabels` is not a field of a Sidecar's workloadSelector: \
                 Sidecar uses `labels` (`workloadSelector: {labels: {app: NAME}}`); \
                 `matchLabels` is the DestinationRule and security.istio.io form"
                    .to_string(),
            );
        }
        Ok(SidecarWorkloadSelector { labels: raw.labels })
    }
}

/// `SidecarPort`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarPort {
    pub number: u32,
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// `IstioIngressListener`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioIngressListener {
    pub port: SidecarPort,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// `DEFAULT`, `IPTABLES`, `NONE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<String>,
    /// `127.0.0.1:PORT`, `0.0.0.0:PORT`, `[::1]:PORT` or `unix://...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint: Option<String>,
    /// Rejected by validation (inbound TLS termination is not implemented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
}

/// `IstioEgressListener`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioEgressListener {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<SidecarPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<String>,
    /// `ns/host`, `*/host`, `./host`, `ns/*`.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// `OutboundTrafficPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    /// `REGISTRY_ONLY` or `ALLOW_ANY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Rejected by validation (egress proxies are not implemented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<Destination>,
}

/// An ingress listener's `defaultEndpoint`: `127.0.0.1:PORT` or `[::1]:PORT` as
/// (address, port); `None` for anything else, which validation rejects.
pub fn parse_default_endpoint(s: &str) -> Option<(String, u32)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u32 = port.parse().ok().filter(|p| (1..=65535).contains(p))?;
    let ip: std::net::IpAddr = host.parse().ok()?;
    ip.is_loopback().then(|| (ip.to_string(), port))
}
