//! The agent protocol (`proto/crossmesh/agent/v1/agent.proto`, package
//! `crossmesh.agent.v1`) as both ends speak it: the generated messages, the tonic
//! client used by `crossmesh agent` and the server trait the hub implements
//! (`sources::agent`), and the Istio kinds an agent streams. It lives with the hub's
//! source so that sources never import the agent command; the agent re-exports it
//! (`agent::proto`, `agent::istio::KINDS`). The message flow is documented in the
//! `.proto`.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("crossmesh.agent.v1");

/// The message-flow revision this build speaks (`Hello.protocol_version`).
pub const PROTOCOL_VERSION: u32 = 1;

use Kind as WireKind;

/// The config kinds an agent streams: those the kube source watches for a
/// config cluster (`sources::kube::ISTIO_KINDS`, then `GATEWAY_API_KINDS`,
/// checked by a test), as (wire kind, API group, kind, plural).
pub const KINDS: [(WireKind, &str, &str, &str); 17] = [
    (
        WireKind::Gateway,
        "networking.istio.io",
        "Gateway",
        "gateways",
    ),
    (
        WireKind::VirtualService,
        "networking.istio.io",
        "VirtualService",
        "virtualservices",
    ),
    (
        WireKind::DestinationRule,
        "networking.istio.io",
        "DestinationRule",
        "destinationrules",
    ),
    (
        WireKind::Sidecar,
        "networking.istio.io",
        "Sidecar",
        "sidecars",
    ),
    (
        WireKind::ServiceEntry,
        "networking.istio.io",
        "ServiceEntry",
        "serviceentries",
    ),
    (
        WireKind::WorkloadEntry,
        "networking.istio.io",
        "WorkloadEntry",
        "workloadentries",
    ),
    (
        WireKind::PeerAuthentication,
        "security.istio.io",
        "PeerAuthentication",
        "peerauthentications",
    ),
    (
        WireKind::RequestAuthentication,
        "security.istio.io",
        "RequestAuthentication",
        "requestauthentications",
    ),
    (
        WireKind::AuthorizationPolicy,
        "security.istio.io",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    (
        WireKind::Telemetry,
        "telemetry.istio.io",
        "Telemetry",
        "telemetries",
    ),
    (
        WireKind::GatewayClass,
        "gateway.networking.k8s.io",
        "GatewayClass",
        "gatewayclasses",
    ),
    (
        WireKind::K8sGateway,
        "gateway.networking.k8s.io",
        "Gateway",
        "gateways",
    ),
    (
        WireKind::HttpRoute,
        "gateway.networking.k8s.io",
        "HTTPRoute",
        "httproutes",
    ),
    (
        WireKind::ReferenceGrant,
        "gateway.networking.k8s.io",
        "ReferenceGrant",
        "referencegrants",
    ),
    (
        WireKind::GrpcRoute,
        "gateway.networking.k8s.io",
        "GRPCRoute",
        "grpcroutes",
    ),
    (
        WireKind::TcpRoute,
        "gateway.networking.k8s.io",
        "TCPRoute",
        "tcproutes",
    ),
    (
        WireKind::TlsRoute,
        "gateway.networking.k8s.io",
        "TLSRoute",
        "tlsroutes",
    ),
];

/// [`KINDS`] as a list.
pub fn kinds() -> Vec<(WireKind, &'static str, &'static str, &'static str)> {
    KINDS.to_vec()
}

/// Whether a config kind is cluster-scoped (GatewayClass): it belongs to no
/// namespace, so an agent whose cluster has a namespace grant does not stream
/// it (the hub leaves it out of `Welcome.istio_kinds`).
pub fn cluster_scoped(k: WireKind) -> bool {
    k == WireKind::GatewayClass
}

/// `(group, kind)` of a config (Istio or Gateway API) wire kind.
pub fn group_kind(k: WireKind) -> Option<(&'static str, &'static str)> {
    kinds()
        .into_iter()
        .find(|(w, ..)| *w == k)
        .map(|(_, g, n, _)| (g, n))
}
