//! The Kubernetes Gateway API (`gateway.networking.k8s.io`): `GatewayClass`,
//! `Gateway`, `HTTPRoute`, `GRPCRoute` (v1, standard channel), `ReferenceGrant`
//! (v1beta1 and v1), `TCPRoute` and `TLSRoute` (v1alpha2, experimental channel)
//! as plain serde types, their per-object validation, and
//! (`convert`) their conversion into the Istio Gateway and VirtualService objects
//! translation already serves, with the standard status conditions computed on
//! the way, as Istio's `pilot/pkg/config/kube/gateway` does.
//!
//! Spec types use `deny_unknown_fields`: a misspelt field rejects the object.
//! Fields of the API crossmesh does not implement are typed and rejected by
//! `validate` with a message naming the field (docs/GATEWAY_API.md lists them).

pub mod convert;
pub mod namespaces;

use crate::model::istio::deserialize_spec;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::istio::duration::IstioDuration;
use crate::model::istio::{validate::is_rfc3339_utc, Meta, Rejection};

/// The API group.
pub const GROUP: &str = "gateway.networking.k8s.io";
/// GatewayClass controller names crossmesh serves (DESIGN.md §5).
pub const CONTROLLER_NAMES: [&str; 2] = [
    "istio.io/gateway-controller",
    "crossmesh.io/gateway-controller",
];
/// The label by which a Gateway picks its proxies in its namespace (DESIGN.md §5).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// The kinds crossmesh reads, with the versions it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum GwKind {
    GatewayClass,
    Gateway,
    HTTPRoute,
    ReferenceGrant,
    GRPCRoute,
    /// Experimental channel (`v1alpha2`).
    TCPRoute,
    /// Experimental channel (`v1alpha2`).
    TLSRoute,
}

impl GwKind {
    pub fn parse(kind: &str) -> Option<GwKind> {
        Some(match kind {
            "GatewayClass" => GwKind::GatewayClass,
            "Gateway" => GwKind::Gateway,
            "HTTPRoute" => GwKind::HTTPRoute,
            "ReferenceGrant" => GwKind::ReferenceGrant,
            "GRPCRoute" => GwKind::GRPCRoute,
            "TCPRoute" => GwKind::TCPRoute,
            "TLSRoute" => GwKind::TLSRoute,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GwKind::GatewayClass => "GatewayClass",
            GwKind::Gateway => "Gateway",
            GwKind::HTTPRoute => "HTTPRoute",
            GwKind::ReferenceGrant => "ReferenceGrant",
            GwKind::GRPCRoute => "GRPCRoute",
            GwKind::TCPRoute => "TCPRoute",
            GwKind::TLSRoute => "TLSRoute",
        }
    }

    /// Versions of the group crossmesh reads for this kind (their schemas agree
    /// on every field crossmesh reads).
    pub fn versions(self) -> &'static [&'static str] {
        match self {
            GwKind::ReferenceGrant => &["v1beta1", "v1"],
            GwKind::TCPRoute | GwKind::TLSRoute => &["v1alpha2"],
            GwKind::GRPCRoute => &["v1"],
            _ => &["v1", "v1beta1"],
        }
    }
}

/// Whether a document belongs to the Gateway API group.
pub fn is_gateway_api(value: &serde_json::Value) -> bool {
    value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .and_then(|a| a.split_once('/'))
        .is_some_and(|(g, _)| g == GROUP)
}

/// One validated object.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind")]
pub enum GwObject {
    GatewayClass(GwConfig<GatewayClass>),
    Gateway(GwConfig<K8sGateway>),
    HTTPRoute(GwConfig<HttpRoute>),
    ReferenceGrant(GwConfig<ReferenceGrant>),
    GRPCRoute(GwConfig<GrpcRoute>),
    TCPRoute(GwConfig<TcpRoute>),
    TLSRoute(GwConfig<TlsRoute>),
}

/// Metadata and spec of one object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GwConfig<T> {
    pub meta: Meta,
    pub spec: T,
}

impl GwObject {
    pub fn meta(&self) -> &Meta {
        match self {
            GwObject::GatewayClass(c) => &c.meta,
            GwObject::Gateway(c) => &c.meta,
            GwObject::HTTPRoute(c) => &c.meta,
            GwObject::ReferenceGrant(c) => &c.meta,
            GwObject::GRPCRoute(c) => &c.meta,
            GwObject::TCPRoute(c) => &c.meta,
            GwObject::TLSRoute(c) => &c.meta,
        }
    }

    pub fn kind(&self) -> GwKind {
        match self {
            GwObject::GatewayClass(_) => GwKind::GatewayClass,
            GwObject::Gateway(_) => GwKind::Gateway,
            GwObject::HTTPRoute(_) => GwKind::HTTPRoute,
            GwObject::ReferenceGrant(_) => GwKind::ReferenceGrant,
            GwObject::GRPCRoute(_) => GwKind::GRPCRoute,
            GwObject::TCPRoute(_) => GwKind::TCPRoute,
            GwObject::TLSRoute(_) => GwKind::TLSRoute,
        }
    }
}

// ---------------------------------------------------------------------------
// Types (gateway-api v1 reference)

/// `GatewayClass.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayClass {
    pub controller_name: String,
    /// Rejected: crossmesh has no class parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters_ref: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `Gateway.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct K8sGateway {
    pub gateway_class_name: String,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Istio's manual deployment: a `Hostname` names a Service in the Gateway's
    /// namespace whose pods the Gateway applies to (besides the proxies
    /// labelled with its name); `IPAddress` addresses are reported in status
    /// and not used (crossmesh assigns no address), as Istio does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayAddress>,
    /// Rejected (crossmesh deploys no gateway infrastructure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infrastructure: Option<serde_json::Value>,
    /// Rejected (experimental channel).
    #[serde(
        default,
        rename = "backendTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_tls: Option<serde_json::Value>,
}

/// `GatewaySpecAddress`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayAddress {
    /// `IPAddress` (default) or `Hostname`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub value: String,
}

/// `Gateway.spec.listeners[]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub port: u32,
    /// `HTTP`, `HTTPS`, `TLS`, `TCP`.
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_routes: Option<AllowedRoutes>,
}

/// `GatewayTLSConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerTls {
    /// `Terminate` (default) or `Passthrough`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default)]
    pub certificate_refs: Vec<ObjectRef>,
    /// Rejected: client certificate validation is not implemented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend_validation: Option<serde_json::Value>,
    /// Rejected: no implementation-specific TLS options.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// `SecretObjectReference` / `BackendObjectReference` / `ParentReference`
/// fields in one shape; which ones a reference may carry is checked per use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
}

/// `AllowedRoutes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowedRoutes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<RouteNamespaces>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<RouteGroupKind>,
}

/// `RouteNamespaces`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteNamespaces {
    /// `Same` (default), `All`, `Selector` (namespaces whose labels match
    /// `selector`, see `namespaces`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<serde_json::Value>,
}

/// `RouteGroupKind`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteGroupKind {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: String,
}

/// `HTTPRoute.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

/// `ParentReference`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
}

/// `HTTPRouteRule`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<HttpRouteTimeouts>,
    /// Rejected: experimental channel only (`HTTPRouteRetry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<serde_json::Value>,
    /// Rejected: experimental channel only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_persistence: Option<serde_json::Value>,
}

/// `HTTPRouteMatch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathMatch>,
    #[serde(default)]
    pub headers: Vec<NameMatch>,
    #[serde(default)]
    pub query_params: Vec<NameMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// `HTTPPathMatch`: `Exact`, `PathPrefix` (default), `RegularExpression`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPathMatch {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `HTTPHeaderMatch` / `HTTPQueryParamMatch`: `Exact` (default) or
/// `RegularExpression`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NameMatch {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    pub value: String,
}

/// `HTTPRouteFilter`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteFilter {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RedirectFilter>,
    #[serde(
        default,
        rename = "urlRewrite",
        skip_serializing_if = "Option::is_none"
    )]
    pub url_rewrite: Option<RewriteFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<MirrorFilter>,
    /// Rejected: no extension filters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_ref: Option<serde_json::Value>,
    /// Rejected: experimental channel (`HTTPCORSFilter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<serde_json::Value>,
}

/// `HTTPHeaderFilter`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderFilter {
    #[serde(default)]
    pub set: Vec<HeaderValue>,
    #[serde(default)]
    pub add: Vec<HeaderValue>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `HTTPHeader`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderValue {
    pub name: String,
    pub value: String,
}

/// `HTTPRequestRedirectFilter`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedirectFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// 301 (default) or 302.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u32>,
}

/// `HTTPURLRewriteFilter`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RewriteFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// `HTTPPathModifier`: `ReplaceFullPath` or `ReplacePrefixMatch`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathModifier {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

/// `HTTPRequestMirrorFilter`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorFilter {
    pub backend_ref: ObjectRef,
    /// Percentage of requests mirrored (0-100); default all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<Fraction>,
}

/// `Fraction`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fraction {
    pub numerator: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator: Option<u32>,
}

/// `HTTPBackendRef`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBackendRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    /// Rejected: per-backend filters are not implemented.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<serde_json::Value>,
}

/// `HTTPRouteTimeouts`: Gateway API durations (GEP-2257).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteTimeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<IstioDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<IstioDuration>,
}

/// `GRPCRoute.spec` (v1).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRoute {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<GrpcRouteRule>,
}

/// `GRPCRouteRule`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<GrpcRouteMatch>,
    /// `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestMirror`
    /// (the HTTPRoute filter shapes); `ExtensionRef` rejected.
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
    /// Rejected: experimental channel only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_persistence: Option<serde_json::Value>,
}

/// `GRPCRouteMatch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<GrpcMethodMatch>,
    #[serde(default)]
    pub headers: Vec<NameMatch>,
}

/// `GRPCMethodMatch`: `Exact` (default) or `RegularExpression` on `service`
/// and `method`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcMethodMatch {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

impl GrpcRoute {
    /// The equivalent HTTPRoute, as Istio converts GRPCRoutes: a method match
    /// is a path match on `/SERVICE/METHOD` (Exact with both, a prefix
    /// `/SERVICE` with the service only, a regular expression otherwise).
    pub fn to_http(&self) -> HttpRoute {
        HttpRoute {
            parent_refs: self.parent_refs.clone(),
            hostnames: self.hostnames.clone(),
            rules: self
                .rules
                .iter()
                .map(|r| HttpRouteRule {
                    name: r.name.clone(),
                    matches: r
                        .matches
                        .iter()
                        .map(|m| HttpRouteMatch {
                            path: m.method.as_ref().map(grpc_path),
                            headers: m.headers.clone(),
                            ..Default::default()
                        })
                        .collect(),
                    filters: r.filters.clone(),
                    backend_refs: r.backend_refs.clone(),
                    ..Default::default()
                })
                .collect(),
        }
    }
}

/// The path match of a `GRPCMethodMatch` (Istio's `createGRPCURIMatch`).
fn grpc_path(m: &GrpcMethodMatch) -> HttpPathMatch {
    let (kind, value) = match (m.kind.as_deref().unwrap_or("Exact"), &m.service, &m.method) {
        ("Exact", Some(s), Some(me)) => ("Exact", format!("/{s}/{me}")),
        ("Exact", Some(s), None) => ("PathPrefix", format!("/{s}")),
        ("Exact", None, Some(me)) => ("RegularExpression", format!("/[^/]+/{}", regex::escape(me))),
        ("Exact", None, None) => ("PathPrefix", "/".to_string()),
        (_, s, me) => (
            "RegularExpression",
            format!(
                "/{}/{}",
                s.as_deref().unwrap_or("[^/]+"),
                me.as_deref().unwrap_or("[^/]+")
            ),
        ),
    };
    HttpPathMatch {
        kind: Some(kind.into()),
        value: Some(value),
    }
}

/// `TCPRoute.spec` (experimental channel, v1alpha2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub rules: Vec<L4RouteRule>,
}

/// `TLSRoute.spec` (experimental channel, v1alpha2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRoute {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// SNI host names the route matches (none: any).
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<L4RouteRule>,
}

/// `TCPRouteRule` / `TLSRouteRule`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4RouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub backend_refs: Vec<L4BackendRef>,
}

/// `BackendRef` (no filters).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4BackendRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
}

/// `ReferenceGrant.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReferenceGrant {
    pub from: Vec<GrantFrom>,
    pub to: Vec<GrantTo>,
}

/// `ReferenceGrantFrom`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantFrom {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

/// `ReferenceGrantTo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantTo {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

// ---------------------------------------------------------------------------
// Parsing and per-object validation

/// Parse and validate one document of the Gateway API group. `Err` holds every
/// problem found.
pub fn parse_object(origin: &str, value: &serde_json::Value) -> Result<GwObject, Vec<Rejection>> {
    let s = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).unwrap_or("").to_string();
    let kind_str = s(value.get("kind"));
    let api_version = s(value.get("apiVersion"));
    let meta_v = value.get("metadata");
    let name = s(meta_v.and_then(|m| m.get("name")));
    let namespace = Some(s(meta_v.and_then(|m| m.get("namespace"))))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    let reject = |field: &str, reason: String| Rejection {
        origin: origin.to_string(),
        kind: if kind_str.is_empty() {
            "<no kind>".into()
        } else {
            kind_str.clone()
        },
        namespace: namespace.clone(),
        name: if name.is_empty() {
            "<no name>".into()
        } else {
            name.clone()
        },
        field: field.to_string(),
        reason,
    };
    let Some(kind) = GwKind::parse(&kind_str) else {
        return Err(vec![reject(
            "kind",
            format!("kind {kind_str:?} of {GROUP} is not supported (supported: GatewayClass, Gateway, HTTPRoute, ReferenceGrant, TCPRoute, TLSRoute)"),
        )]);
    };
    let version = api_version.split_once('/').map(|(_, v)| v).unwrap_or("");
    if !api_version.starts_with(&format!("{GROUP}/")) || !kind.versions().contains(&version) {
        return Err(vec![reject(
            "apiVersion",
            format!("unsupported apiVersion {api_version:?} for {kind_str} (crossmesh reads {GROUP}/{})", kind.versions().join(", ")),
        )]);
    }
    if name.is_empty() {
        return Err(vec![reject("metadata.name", "missing name".into())]);
    }
    let creation_timestamp = meta_v
        .and_then(|m| m.get("creationTimestamp"))
        .and_then(|t| t.as_str())
        .map(str::to_string);
    if let Some(ts) = &creation_timestamp {
        if !is_rfc3339_utc(ts) {
            return Err(vec![reject(
                "metadata.creationTimestamp",
                format!("{ts:?} is not an RFC 3339 UTC time (YYYY-MM-DDTHH:MM:SSZ)"),
            )]);
        }
    }
    let meta = Meta {
        name: name.clone(),
        namespace: namespace.clone(),
        creation_timestamp,
        origin: origin.to_string(),
        api_version: api_version.clone(),
    };
    let spec = value
        .get("spec")
        .cloned()
        .unwrap_or(serde_json::Value::Object(Default::default()));
    let obj = match kind {
        GwKind::GatewayClass => {
            deserialize_spec(spec).map(|spec| GwObject::GatewayClass(GwConfig { meta, spec }))
        }
        GwKind::Gateway => {
            deserialize_spec(spec).map(|spec| GwObject::Gateway(GwConfig { meta, spec }))
        }
        GwKind::HTTPRoute => {
            deserialize_spec(spec).map(|spec| GwObject::HTTPRoute(GwConfig { meta, spec }))
        }
        GwKind::ReferenceGrant => {
            deserialize_spec(spec).map(|spec| GwObject::ReferenceGrant(GwConfig { meta, spec }))
        }
        GwKind::GRPCRoute => {
            deserialize_spec(spec).map(|spec| GwObject::GRPCRoute(GwConfig { meta, spec }))
        }
        GwKind::TCPRoute => {
            deserialize_spec(spec).map(|spec| GwObject::TCPRoute(GwConfig { meta, spec }))
        }
        GwKind::TLSRoute => {
            deserialize_spec(spec).map(|spec| GwObject::TLSRoute(GwConfig { meta, spec }))
        }
    }
    .map_err(|(f, r)| vec![reject(&f, r)])?;
    let issues = validate(&obj);
    if issues.is_empty() {
        Ok(obj)
    } else {
        Err(issues.into_iter().map(|(f, r)| reject(&f, r)).collect())
    }
}

/// Problems of one object on its own: `(field, reason)`.
pub fn validate(obj: &GwObject) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut err = |f: String, r: String| out.push((f, r));
    match obj {
        GwObject::GatewayClass(c) => {
            if c.spec.controller_name.is_empty() {
                err("spec.controllerName".into(), "required".into());
            }
            if c.spec.parameters_ref.is_some() {
                err(
                    "spec.parametersRef".into(),
                    "not supported by crossmesh: GatewayClass parameters are not read".into(),
                );
            }
        }
        GwObject::Gateway(c) => gateway(&c.spec, &c.meta.namespace, &mut err),
        GwObject::HTTPRoute(c) => http_route(&c.spec, &mut err),
        GwObject::GRPCRoute(c) => grpc_route(&c.spec, &mut err),
        GwObject::TCPRoute(c) => l4_route(&c.spec.parent_refs, &[], &c.spec.rules, &mut err),
        GwObject::TLSRoute(c) => l4_route(
            &c.spec.parent_refs,
            &c.spec.hostnames,
            &c.spec.rules,
            &mut err,
        ),
        GwObject::ReferenceGrant(c) => {
            if c.spec.from.is_empty() {
                err("spec.from".into(), "at least one entry is required".into());
            }
            if c.spec.to.is_empty() {
                err("spec.to".into(), "at least one entry is required".into());
            }
            for (i, f) in c.spec.from.iter().enumerate() {
                if f.namespace.is_empty() {
                    err(format!("spec.from[{i}].namespace"), "required".into());
                }
            }
        }
    }
    out
}

/// RFC 1123 hostname with an optional leading `*.` label (`Hostname` in the API).
fn valid_hostname(h: &str) -> bool {
    let rest = h.strip_prefix("*.").unwrap_or(h);
    !rest.is_empty()
        && h.len() <= 253
        && rest.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn gateway(g: &K8sGateway, namespace: &str, err: &mut impl FnMut(String, String)) {
    if g.gateway_class_name.is_empty() {
        err("spec.gatewayClassName".into(), "required".into());
    }
    for (i, a) in g.addresses.iter().enumerate() {
        let f = format!("spec.addresses[{i}]");
        match a.kind.as_deref().unwrap_or("IPAddress") {
            "IPAddress" => {
                if a.value.parse::<std::net::IpAddr>().is_err() {
                    err(
                        format!("{f}.value"),
                        format!("{:?} is not an IP address", a.value),
                    );
                }
            }
            "Hostname" => {
                // Istio's manual deployment: a Service, by short name or
                // `NAME.NAMESPACE.svc.DOMAIN`, in the Gateway's namespace.
                let labels: Vec<&str> = a.value.split('.').collect();
                let ok = valid_hostname(&a.value)
                    && !a.value.starts_with('*')
                    && (labels.len() == 1
                        || labels.len() >= 4 && labels[1] == namespace && labels[2] == "svc");
                if !ok {
                    err(
                        format!("{f}.value"),
                        format!("{:?} does not name a Service in namespace {namespace} (NAME or NAME.{namespace}.svc.DOMAIN): crossmesh applies a Gateway to the pods of a Service of its own namespace", a.value),
                    );
                }
            }
            t => err(
                format!("{f}.type"),
                format!("{t:?} is not supported by crossmesh (IPAddress, Hostname)"),
            ),
        }
    }
    if g.infrastructure.is_some() {
        err(
            "spec.infrastructure".into(),
            "not supported by crossmesh: it deploys no gateway infrastructure".into(),
        );
    }
    if g.backend_tls.is_some() {
        err(
            "spec.backendTLS".into(),
            "not supported by crossmesh (experimental channel)".into(),
        );
    }
    if g.listeners.is_empty() {
        err(
            "spec.listeners".into(),
            "at least one listener is required".into(),
        );
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, l) in g.listeners.iter().enumerate() {
        let f = format!("spec.listeners[{i}]");
        if l.name.is_empty() {
            err(format!("{f}.name"), "required".into());
        } else if !names.insert(l.name.as_str()) {
            err(
                format!("{f}.name"),
                format!("listener name {:?} is used twice", l.name),
            );
        }
        if l.port == 0 || l.port > 65535 {
            err(
                format!("{f}.port"),
                format!("{} is not a port (1-65535)", l.port),
            );
        }
        if let Some(h) = &l.hostname {
            if !valid_hostname(h) {
                err(format!("{f}.hostname"), format!("{h:?} is not a hostname (lower-case RFC 1123, optionally starting with *.)"));
            }
        }
        match l.protocol.as_str() {
            "HTTP" | "TCP" => {
                if l.tls.is_some() {
                    err(
                        format!("{f}.tls"),
                        format!("must not be set for protocol {}", l.protocol),
                    );
                }
            }
            "HTTPS" | "TLS" => {
                match &l.tls {
                    None => err(
                        format!("{f}.tls"),
                        format!("required for protocol {}", l.protocol),
                    ),
                    Some(t) => {
                        let mode = t.mode.as_deref().unwrap_or("Terminate");
                        match (l.protocol.as_str(), mode) {
                            ("HTTPS" | "TLS", "Terminate") | ("TLS", "Passthrough") => {}
                            ("HTTPS", "Passthrough") => err(
                                format!("{f}.tls.mode"),
                                "Passthrough is only valid on TLS listeners".into(),
                            ),
                            (_, m) => err(
                                format!("{f}.tls.mode"),
                                format!("{m:?} is not a TLS mode (Terminate, Passthrough)"),
                            ),
                        }
                        if mode == "Terminate" && t.certificate_refs.is_empty() {
                            err(
                                format!("{f}.tls.certificateRefs"),
                                "required in Terminate mode".into(),
                            );
                        }
                        if mode == "Passthrough" && !t.certificate_refs.is_empty() {
                            err(
                                format!("{f}.tls.certificateRefs"),
                                "must be empty in Passthrough mode".into(),
                            );
                        }
                        if t.frontend_validation.is_some() {
                            err(format!("{f}.tls.frontendValidation"), "not supported by crossmesh: client certificates are not validated on Gateway API listeners".into());
                        }
                        if !t.options.is_empty() {
                            err(format!("{f}.tls.options"), "not supported by crossmesh: no implementation-specific TLS options".into());
                        }
                    }
                }
            }
            "UDP" => err(
                format!("{f}.protocol"),
                "not supported by crossmesh: UDP listeners (UDPRoute) are not implemented".into(),
            ),
            p => err(
                format!("{f}.protocol"),
                format!("{p:?} is not a supported protocol (HTTP, HTTPS, TLS, TCP)"),
            ),
        }
        if let Some(ar) = &l.allowed_routes {
            if let Some(ns) = &ar.namespaces {
                match ns.from.as_deref().unwrap_or("Same") {
                    "Same" | "All" => {}
                    "Selector" => match &ns.selector {
                        None => err(
                            format!("{f}.allowedRoutes.namespaces.selector"),
                            "required with from: Selector".into(),
                        ),
                        Some(sel) => {
                            if let Err((sf, reason)) = namespaces::LabelSelector::parse(sel) {
                                let sf = if sf.is_empty() {
                                    String::new()
                                } else {
                                    format!(".{sf}")
                                };
                                err(format!("{f}.allowedRoutes.namespaces.selector{sf}"), reason);
                            }
                        }
                    },
                    o => err(
                        format!("{f}.allowedRoutes.namespaces.from"),
                        format!("{o:?} is not one of All, Same, Selector"),
                    ),
                }
                if ns.selector.is_some() && ns.from.as_deref() != Some("Selector") {
                    err(
                        format!("{f}.allowedRoutes.namespaces.selector"),
                        "only meaningful with from: Selector".into(),
                    );
                }
            }
        }
    }
}

fn http_route(r: &HttpRoute, err: &mut impl FnMut(String, String)) {
    if r.parent_refs.is_empty() {
        err(
            "spec.parentRefs".into(),
            "at least one parent is required".into(),
        );
    }
    for (i, p) in r.parent_refs.iter().enumerate() {
        let f = format!("spec.parentRefs[{i}]");
        let group = p.group.as_deref().unwrap_or(GROUP);
        let kind = p.kind.as_deref().unwrap_or("Gateway");
        if is_service_parent(p) {
            // GAMMA (GEP-1426): the route applies to mesh traffic to the Service,
            // restricted to `port` when set.
            if p.section_name.is_some() {
                err(
                    format!("{f}.sectionName"),
                    "not supported by crossmesh for a Service parent; restrict the route with port"
                        .into(),
                );
            }
            if p.port.is_some_and(|x| x == 0 || x > 65535) {
                err(format!("{f}.port"), "must be 1-65535".into());
            }
        } else if (group, kind) != (GROUP, "Gateway") {
            err(
                format!("{f}.kind"),
                format!("parent {group}/{kind} is not supported by crossmesh: only Gateways and core Services (GAMMA)"),
            );
        }
        if p.name.is_empty() {
            err(format!("{f}.name"), "required".into());
        }
    }
    for (i, h) in r.hostnames.iter().enumerate() {
        if !valid_hostname(h) {
            err(
                format!("spec.hostnames[{i}]"),
                format!(
                    "{h:?} is not a hostname (lower-case RFC 1123, optionally starting with *.)"
                ),
            );
        }
    }
    for (i, rule) in r.rules.iter().enumerate() {
        let f = format!("spec.rules[{i}]");
        if rule.retry.is_some() {
            err(
                format!("{f}.retry"),
                "not supported by crossmesh: HTTPRouteRetry is experimental-channel only".into(),
            );
        }
        if rule.session_persistence.is_some() {
            err(
                format!("{f}.sessionPersistence"),
                "not supported by crossmesh (experimental channel)".into(),
            );
        }
        for (j, m) in rule.matches.iter().enumerate() {
            let mf = format!("{f}.matches[{j}]");
            if let Some(p) = &m.path {
                let v = p.value.as_deref().unwrap_or("/");
                match p.kind.as_deref().unwrap_or("PathPrefix") {
                    "Exact" | "PathPrefix" => {
                        if !v.starts_with('/') {
                            err(
                                format!("{mf}.path.value"),
                                format!("{v:?} must start with /"),
                            );
                        }
                        if v.contains("//")
                            || v.contains("/./")
                            || v.contains("/../")
                            || v.contains('?')
                            || v.contains('#')
                        {
                            err(
                                format!("{mf}.path.value"),
                                format!("{v:?} must not contain //, /./, /../, ? or #"),
                            );
                        }
                    }
                    "RegularExpression" => {
                        if let Err(e) = regex::Regex::new(v) {
                            err(
                                format!("{mf}.path.value"),
                                format!("invalid regular expression: {e}"),
                            );
                        }
                    }
                    t => err(
                        format!("{mf}.path.type"),
                        format!("{t:?} is not one of Exact, PathPrefix, RegularExpression"),
                    ),
                }
            }
            for (kind, list) in [("headers", &m.headers), ("queryParams", &m.query_params)] {
                let mut seen = std::collections::BTreeSet::new();
                for (k, h) in list.iter().enumerate() {
                    let hf = format!("{mf}.{kind}[{k}]");
                    if h.name.is_empty() {
                        err(format!("{hf}.name"), "required".into());
                    }
                    let key = if kind == "headers" {
                        h.name.to_ascii_lowercase()
                    } else {
                        h.name.clone()
                    };
                    if !seen.insert(key) {
                        err(
                            format!("{hf}.name"),
                            format!("{:?} is matched twice", h.name),
                        );
                    }
                    match h.kind.as_deref().unwrap_or("Exact") {
                        "Exact" => {}
                        "RegularExpression" => {
                            if let Err(e) = regex::Regex::new(&h.value) {
                                err(
                                    format!("{hf}.value"),
                                    format!("invalid regular expression: {e}"),
                                );
                            }
                        }
                        t => err(
                            format!("{hf}.type"),
                            format!("{t:?} is not one of Exact, RegularExpression"),
                        ),
                    }
                }
            }
            if let Some(me) = &m.method {
                const METHODS: [&str; 9] = [
                    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
                ];
                if !METHODS.contains(&me.as_str()) {
                    err(
                        format!("{mf}.method"),
                        format!("{me:?} is not an HTTP method"),
                    );
                }
            }
        }
        let mut seen_types = std::collections::BTreeSet::new();
        for (j, flt) in rule.filters.iter().enumerate() {
            let ff = format!("{f}.filters[{j}]");
            let set = [
                (
                    "RequestHeaderModifier",
                    flt.request_header_modifier.is_some(),
                ),
                (
                    "ResponseHeaderModifier",
                    flt.response_header_modifier.is_some(),
                ),
                ("RequestRedirect", flt.request_redirect.is_some()),
                ("URLRewrite", flt.url_rewrite.is_some()),
                ("RequestMirror", flt.request_mirror.is_some()),
                ("ExtensionRef", flt.extension_ref.is_some()),
                ("CORS", flt.cors.is_some()),
            ];
            match flt.kind.as_str() {
                "ExtensionRef" => {
                    err(
                        format!("{ff}.type"),
                        "ExtensionRef is not supported by crossmesh: no extension filters".into(),
                    );
                    continue;
                }
                "CORS" => {
                    err(
                        format!("{ff}.type"),
                        "CORS is not supported by crossmesh (experimental channel)".into(),
                    );
                    continue;
                }
                t if !set.iter().any(|(n, _)| *n == t) => {
                    err(format!("{ff}.type"), format!("{t:?} is not a filter type (RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite, RequestMirror)"));
                    continue;
                }
                t => {
                    for (n, present) in set {
                        if present != (n == t) {
                            err(
                                ff.clone(),
                                format!(
                                    "type {t} must set exactly the field of that type ({})",
                                    if present {
                                        format!("{n} is set")
                                    } else {
                                        format!("{n} is missing")
                                    }
                                ),
                            );
                        }
                    }
                    if t != "RequestMirror" && !seen_types.insert(t.to_string()) {
                        err(
                            format!("{ff}.type"),
                            format!("{t} may appear only once per rule"),
                        );
                    }
                }
            }
            for (hn, h) in [
                ("requestHeaderModifier", &flt.request_header_modifier),
                ("responseHeaderModifier", &flt.response_header_modifier),
            ] {
                if let Some(h) = h {
                    for (k, hv) in h.set.iter().chain(h.add.iter()).enumerate() {
                        if hv.name.is_empty()
                            || hv
                                .value
                                .bytes()
                                .any(|b| b < 0x20 && b != b'\t' || b == 0x7f)
                        {
                            err(format!("{ff}.{hn}"), format!("header #{k} has an empty name or a control character in its value"));
                        }
                    }
                }
            }
            if let Some(rd) = &flt.request_redirect {
                if let Some(s) = &rd.scheme {
                    if s != "http" && s != "https" {
                        err(
                            format!("{ff}.requestRedirect.scheme"),
                            format!("{s:?} is not http or https"),
                        );
                    }
                }
                if let Some(c) = rd.status_code {
                    if c != 301 && c != 302 {
                        err(
                            format!("{ff}.requestRedirect.statusCode"),
                            format!("{c} is not 301 or 302"),
                        );
                    }
                }
                if let Some(p) = &rd.path {
                    path_modifier(p, &format!("{ff}.requestRedirect.path"), err);
                    if p.kind == "ReplacePrefixMatch" {
                        err(
                            format!("{ff}.requestRedirect.path.type"),
                            "ReplacePrefixMatch in a redirect is not supported by crossmesh (Envoy's prefix_rewrite redirect is not wired); use ReplaceFullPath".into(),
                        );
                    }
                }
            }
            if let Some(rw) = &flt.url_rewrite {
                if let Some(p) = &rw.path {
                    path_modifier(p, &format!("{ff}.urlRewrite.path"), err);
                    if p.kind == "ReplacePrefixMatch" {
                        let prefix_only = !rule.matches.is_empty()
                            && rule.matches.iter().all(|m| {
                                m.path.as_ref().is_none_or(|p| {
                                    p.kind.as_deref().unwrap_or("PathPrefix") == "PathPrefix"
                                })
                            });
                        if !prefix_only && !rule.matches.is_empty() {
                            err(
                                format!("{ff}.urlRewrite.path"),
                                "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match".into(),
                            );
                        }
                    }
                }
            }
            if let Some(m) = &flt.request_mirror {
                if m.percent.is_some() && m.fraction.is_some() {
                    err(
                        format!("{ff}.requestMirror"),
                        "percent and fraction are exclusive".into(),
                    );
                }
                if m.percent.is_some_and(|p| p > 100) {
                    err(
                        format!("{ff}.requestMirror.percent"),
                        "must be 0-100".into(),
                    );
                }
                if let Some(fr) = &m.fraction {
                    let d = fr.denominator.unwrap_or(100);
                    if d == 0 || fr.numerator > d {
                        err(
                            format!("{ff}.requestMirror.fraction"),
                            "numerator must not exceed a non-zero denominator".into(),
                        );
                    }
                }
                if m.backend_ref.port.is_none()
                    && backend_is_service(
                        m.backend_ref.group.as_deref(),
                        m.backend_ref.kind.as_deref(),
                    )
                {
                    err(
                        format!("{ff}.requestMirror.backendRef.port"),
                        "required for a Service".into(),
                    );
                }
            }
        }
        if seen_types.contains("RequestRedirect") && seen_types.contains("URLRewrite") {
            err(
                format!("{f}.filters"),
                "RequestRedirect and URLRewrite cannot both be set".into(),
            );
        }
        if seen_types.contains("RequestRedirect") && !rule.backend_refs.is_empty() {
            err(
                format!("{f}.backendRefs"),
                "a rule with a RequestRedirect filter takes no backendRefs".into(),
            );
        }
        for (j, b) in rule.backend_refs.iter().enumerate() {
            let bf = format!("{f}.backendRefs[{j}]");
            if !b.filters.is_empty() {
                err(format!("{bf}.filters"), "not supported by crossmesh: per-backend filters are not implemented; put filters on the rule".into());
            }
            if b.weight.is_some_and(|w| !(0..=1_000_000).contains(&w)) {
                err(
                    format!("{bf}.weight"),
                    "must be between 0 and 1000000".into(),
                );
            }
            if b.port.is_none() && backend_is_service(b.group.as_deref(), b.kind.as_deref()) {
                err(
                    format!("{bf}.port"),
                    "required for a Service backend".into(),
                );
            }
        }
        if let Some(t) = &rule.timeouts {
            for (n, d) in [
                ("request", &t.request),
                ("backendRequest", &t.backend_request),
            ] {
                if d.is_some_and(|d| d.is_negative()) {
                    err(format!("{f}.timeouts.{n}"), "must not be negative".into());
                }
            }
            if let (Some(r), Some(b)) = (t.request, t.backend_request) {
                if r != IstioDuration::ZERO && b > r {
                    err(
                        format!("{f}.timeouts.backendRequest"),
                        format!("{b} exceeds the request timeout {r}"),
                    );
                }
            }
        }
    }
}

/// GRPCRoute: its method matches and filter types, then the rest as the
/// equivalent HTTPRoute (parents included: a Service parent is GAMMA for gRPC,
/// as for HTTPRoute).
fn grpc_route(g: &GrpcRoute, err: &mut impl FnMut(String, String)) {
    for (i, rule) in g.rules.iter().enumerate() {
        let f = format!("spec.rules[{i}]");
        if rule.session_persistence.is_some() {
            err(
                format!("{f}.sessionPersistence"),
                "not supported by crossmesh (experimental channel)".into(),
            );
        }
        for (j, m) in rule.matches.iter().enumerate() {
            if let Some(me) = &m.method {
                let mf = format!("{f}.matches[{j}].method");
                match me.kind.as_deref().unwrap_or("Exact") {
                    "Exact" => {
                        for (n, v) in [("service", &me.service), ("method", &me.method)] {
                            if v.as_deref()
                                .is_some_and(|v| v.is_empty() || v.contains('/'))
                            {
                                err(
                                    format!("{mf}.{n}"),
                                    "must be non-empty and contain no /".into(),
                                );
                            }
                        }
                    }
                    "RegularExpression" => {
                        for (n, v) in [("service", &me.service), ("method", &me.method)] {
                            if let Some(Err(e)) = v.as_deref().map(regex::Regex::new) {
                                err(
                                    format!("{mf}.{n}"),
                                    format!("invalid regular expression: {e}"),
                                );
                            }
                        }
                    }
                    t => err(
                        format!("{mf}.type"),
                        format!("{t:?} is not one of Exact, RegularExpression"),
                    ),
                }
                if me.service.is_none() && me.method.is_none() {
                    err(mf, "service or method is required".into());
                }
            }
        }
        for (j, flt) in rule.filters.iter().enumerate() {
            if !matches!(
                flt.kind.as_str(),
                "RequestHeaderModifier"
                    | "ResponseHeaderModifier"
                    | "RequestMirror"
                    | "ExtensionRef"
            ) {
                err(
                    format!("{f}.filters[{j}].type"),
                    format!("{:?} is not a GRPCRoute filter type (RequestHeaderModifier, ResponseHeaderModifier, RequestMirror)", flt.kind),
                );
            }
        }
    }
    http_route(&g.to_http(), err);
}

/// TCPRoute and TLSRoute: Gateway parents only, one rule (rules have no
/// matches, so a second rule would never apply), Service backends with a port.
fn l4_route(
    parents: &[ParentRef],
    hostnames: &[String],
    rules: &[L4RouteRule],
    err: &mut impl FnMut(String, String),
) {
    if parents.is_empty() {
        err(
            "spec.parentRefs".into(),
            "at least one parent is required".into(),
        );
    }
    for (i, p) in parents.iter().enumerate() {
        let group = p.group.as_deref().unwrap_or(GROUP);
        let kind = p.kind.as_deref().unwrap_or("Gateway");
        if (group, kind) != (GROUP, "Gateway") {
            err(
                format!("spec.parentRefs[{i}].kind"),
                format!("parent {group}/{kind} is not supported by crossmesh: TCPRoute and TLSRoute attach to Gateways only"),
            );
        }
        if p.name.is_empty() {
            err(format!("spec.parentRefs[{i}].name"), "required".into());
        }
    }
    for (i, h) in hostnames.iter().enumerate() {
        if !valid_hostname(h) {
            err(
                format!("spec.hostnames[{i}]"),
                format!(
                    "{h:?} is not a hostname (lower-case RFC 1123, optionally starting with *.)"
                ),
            );
        }
    }
    match rules.len() {
        0 => err("spec.rules".into(), "one rule is required".into()),
        1 => {}
        n => err(
            "spec.rules".into(),
            format!("{n} rules: crossmesh serves one rule per route (rules have no matches, so only the first could apply)"),
        ),
    }
    for (i, rule) in rules.iter().enumerate() {
        for (j, b) in rule.backend_refs.iter().enumerate() {
            let bf = format!("spec.rules[{i}].backendRefs[{j}]");
            if b.weight.is_some_and(|w| !(0..=1_000_000).contains(&w)) {
                err(
                    format!("{bf}.weight"),
                    "must be between 0 and 1000000".into(),
                );
            }
            if b.port.is_none() && backend_is_service(b.group.as_deref(), b.kind.as_deref()) {
                err(
                    format!("{bf}.port"),
                    "required for a Service backend".into(),
                );
            }
        }
    }
}

fn path_modifier(p: &PathModifier, f: &str, err: &mut impl FnMut(String, String)) {
    let (want, other) = match p.kind.as_str() {
        "ReplaceFullPath" => (&p.replace_full_path, &p.replace_prefix_match),
        "ReplacePrefixMatch" => (&p.replace_prefix_match, &p.replace_full_path),
        t => {
            err(
                format!("{f}.type"),
                format!("{t:?} is not one of ReplaceFullPath, ReplacePrefixMatch"),
            );
            return;
        }
    };
    match want {
        None => err(
            f.to_string(),
            format!("type {} needs its value set", p.kind),
        ),
        Some(v) if !v.starts_with('/') => err(f.to_string(), format!("{v:?} must start with /")),
        _ => {}
    }
    if other.is_some() {
        err(
            f.to_string(),
            format!("only the value of type {} may be set", p.kind),
        );
    }
}

/// A parent reference to a core `Service` (GAMMA, GEP-1426): group `""`, kind
/// `Service`.
pub fn is_service_parent(p: &ParentRef) -> bool {
    p.group.as_deref() == Some("") && p.kind.as_deref() == Some("Service")
}

/// A backend reference to a core `Service` (the default group and kind).
pub fn backend_is_service(group: Option<&str>, kind: Option<&str>) -> bool {
    group.unwrap_or("").is_empty() && kind.unwrap_or("Service") == "Service"
}
