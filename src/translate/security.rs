//! The HTTP filters that authenticate and authorize a request on a proxy's
//! server side (a sidecar's inbound ports, a gateway's HTTP servers) before any
//! other filter acts on it, in Istio's order: request authentication
//! (`RequestAuthentication`, Envoy's `envoy.filters.http.jwt_authn`), then
//! authorization (`AuthorizationPolicy`, `envoy.filters.http.rbac`, shadow rules
//! first). Outbound listeners carry none of them.

use envoy_types::pb::envoy::config::listener::v3::Filter;
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
    out.extend(authz(proxy, ctx).http_filters());
    out
}

/// The AuthorizationPolicies in force for `proxy` (a sidecar's workload or a
/// gateway, by namespace and labels; root-namespace policies included).
fn authz<'a>(proxy: &Proxy, ctx: &'a PushContext) -> super::authz::Authz<'a> {
    let policies = ctx
        .config
        .authorization_policies_for(&proxy.namespace, &proxy.labels)
        .into_iter()
        .map(|p| p.as_ref())
        .collect();
    super::authz::Authz::new(policies, &ctx.mesh.trust_domain)
}

/// The network filters that authorize a TCP connection to `proxy` (Envoy's
/// `envoy.filters.network.rbac`, Istio's order), to run ahead of the TCP proxy
/// on its inbound TCP chains.
pub fn network_filters(proxy: &Proxy, ctx: &PushContext) -> Vec<Filter> {
    authz(proxy, ctx).network_filters()
}
