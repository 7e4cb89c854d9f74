//! Server listeners for proxyless gRPC servers (gRFC A36 "xDS-enabled servers"),
//! as Istio's `grpcgen` builds its inbound listeners.
//!
//! A gRPC server started with xDS (`grpc.server(..., xds=True)` in Python,
//! `XdsServerBuilder` in Java/C++) asks LDS for the name it makes from its
//! bootstrap's `server_listener_resource_name_template`
//! (`xds.istio.io/grpc/lds/inbound/%s`) and its listening address, e.g.
//! `xds.istio.io/grpc/lds/inbound/10.0.0.7:50051`. The answer is a Listener of
//! that name and address with one filter chain (no `filter_chain_match`: gRPC
//! can only match `raw_buffer` transports, so a chain cannot tell mTLS from
//! plaintext) whose HttpConnectionManager carries an inline route config with
//! one route, `/` prefix, action `non_forwarding_action` (the server serves the
//! call itself), and the HTTP filters gRPC servers run: AuthorizationPolicy as
//! RBAC (gRFC A41), then the router.
//!
//! mTLS follows the PeerAuthentication in force for the listening port (Istio's
//! `buildInboundFilterChains`): STRICT is a chain with a DownstreamTlsContext
//! that requires a client certificate; DISABLE is plaintext; PERMISSIVE is
//! plaintext (gRPC cannot serve both on one port) unless the workload is labelled
//! `security.istio.io/tlsMode: istio`, where clients use mTLS and it is STRICT.
//! Certificates come from gRPC's certificate provider plugins (gRFC A29): the
//! context names the bootstrap's `certificate_providers` instance `default`
//! (gRPC's `file_watcher` plugin; `crossmesh bootstrap --role grpc` writes it),
//! certificate `default` for the workload chain and `ROOTCA` for the trust bundle.
//!
//! Istio answers only for a port the workload serves a Service on (its service
//! instance); so does this: any other name does not exist, and a gRPC server
//! without its listener does not serve (A36's "not serving" mode).

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    transport_socket::ConfigType as SocketConfig, TransportSocket,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter::ConfigType as FilterConfig, Filter, FilterChain, Listener,
};
use envoy_types::pb::envoy::config::rbac::v3::{
    permission::Rule as PermRule, principal::Identifier, rbac::Action as RbacAction, Permission,
    Policy, Principal, Rbac as RbacRules,
};
use envoy_types::pb::envoy::config::route::v3::{
    route::Action, route_match::PathSpecifier, NonForwardingAction, Route, RouteConfiguration,
    RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter::ConfigType as HttpFilterConfig,
    HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, CertificateProviderPluginInstance,
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};

use super::authz::{Authz, HTTP_RBAC_FILTER};
use super::listener::{HCM_FILTER, ROUTER_FILTER};
use super::mtls::{TLS_MODE_LABEL, TLS_TRANSPORT_SOCKET};
use super::proto::{bool_value, pack, socket_address};
use crate::model::istio::authorization_policy::{
    Action as PolicyAction, AuthorizationPolicy, ConditionKey,
};
use crate::model::istio::destination_rule::EffectivePolicy;
use crate::model::istio::{Config, MtlsMode};
use crate::model::{Proxy, PushContext, Service};

/// Istio's `server_listener_resource_name_template` without its `%s`
/// (`grpcxds.ServerListenerNamePrefix`).
pub const SERVER_LISTENER_PREFIX: &str = "xds.istio.io/grpc/lds/inbound/";
/// The certificate provider instance the TLS contexts name; the bootstrap's
/// `certificate_providers` must define it (gRPC NACKs an unknown instance).
pub const CERT_PROVIDER_INSTANCE: &str = "default";
/// The `certificate_name`s of the workload chain and the trust bundle, as
/// Istio's `grpcgen` names them (the `file_watcher` plugin ignores them).
pub const CERT_NAME_WORKLOAD: &str = "default";
pub const CERT_NAME_ROOT: &str = "ROOTCA";

/// Whether `name` is a gRPC server listener name (else an API listener
/// `HOST:PORT` of a client).
pub fn is_server_listener(name: &str) -> bool {
    name.starts_with(SERVER_LISTENER_PREFIX)
}

/// Why a requested server listener is not served. Each names the resource.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServerListenerError {
    #[error("server listener {name:?}: {reason} (expected {SERVER_LISTENER_PREFIX}IP:PORT)")]
    BadName { name: String, reason: String },
    #[error("server listener {name:?}: proxy {proxy} serves no Service on port {port} of {ip} (a gRPC server gets its listener for a port a Service selects it on)")]
    NoServiceInstance {
        name: String,
        proxy: String,
        ip: String,
        port: u16,
    },
}

/// The inbound mTLS mode a gRPC server applies on `port` (never `Unset` or
/// `Permissive`; Istio's `buildInboundFilterChains`).
pub fn server_mtls_mode(proxy: &Proxy, ctx: &PushContext, port: u16) -> MtlsMode {
    let mode = ctx
        .config
        .peer_authentication(&proxy.namespace, &proxy.labels)
        .for_port(u32::from(port));
    match mode {
        MtlsMode::Strict => MtlsMode::Strict,
        MtlsMode::Disable => MtlsMode::Disable,
        // Clients of a workload labelled tlsMode=istio use mTLS (auto mTLS), and
        // gRPC cannot serve plaintext beside it: Istio makes it STRICT.
        MtlsMode::Permissive | MtlsMode::Unset
            if proxy.labels.get(TLS_MODE_LABEL).map(String::as_str) == Some("istio") =>
        {
            MtlsMode::Strict
        }
        MtlsMode::Permissive | MtlsMode::Unset => MtlsMode::Disable,
    }
}

/// The Listener a gRPC server asked for by `name`
/// (`xds.istio.io/grpc/lds/inbound/IP:PORT`), or why it does not exist.
pub fn server_listener(
    proxy: &Proxy,
    ctx: &PushContext,
    name: &str,
) -> Result<Listener, ServerListenerError> {
    let bad = |reason: String| ServerListenerError::BadName {
        name: name.to_string(),
        reason,
    };
    let addr = name
        .strip_prefix(SERVER_LISTENER_PREFIX)
        .ok_or_else(|| bad("lacks the prefix".to_string()))?;
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| bad(format!("{addr:?} is not IP:PORT")))?;
    let port = addr.port();
    if !server_ports(proxy, ctx).contains(&port) {
        return Err(ServerListenerError::NoServiceInstance {
            name: name.to_string(),
            proxy: proxy.id.clone(),
            ip: proxy.ip.to_string(),
            port,
        });
    }
    Ok(build(proxy, ctx, name, addr))
}

/// The listener `name` for `addr` (a port the workload serves).
fn build(proxy: &Proxy, ctx: &PushContext, name: &str, addr: SocketAddr) -> Listener {
    let port = addr.port();
    let tls = match server_mtls_mode(proxy, ctx, port) {
        MtlsMode::Strict => Some(downstream_tls()),
        _ => None,
    };
    let chain_name = if tls.is_some() { "mtls" } else { "plaintext" };
    let hcm = HttpConnectionManager {
        stat_prefix: format!("inbound_{port}"),
        route_specifier: Some(RouteSpecifier::RouteConfig(inbound_route())),
        http_filters: http_filters(proxy, ctx),
        ..Default::default()
    };
    Listener {
        name: name.to_string(),
        address: Some(socket_address(&addr.ip().to_string(), u32::from(port))),
        filter_chains: vec![FilterChain {
            name: format!("inbound-{chain_name}"),
            filters: vec![Filter {
                name: HCM_FILTER.into(),
                config_type: Some(FilterConfig::TypedConfig(pack(&hcm))),
            }],
            transport_socket: tls.map(|t| TransportSocket {
                name: TLS_TRANSPORT_SOCKET.into(),
                config_type: Some(SocketConfig::TypedConfig(pack(&t))),
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Every server listener `proxy` may ask for: for each port a Service selects
/// it on, the names of its own IP and of the wildcard addresses (`0.0.0.0`,
/// `[::]`), the listening addresses a server in a Pod uses. Generated ahead,
/// like every resource; the stream sends only the names the server asks for.
pub fn server_listeners(proxy: &Proxy, ctx: &PushContext) -> Vec<Listener> {
    let ports = server_ports(proxy, ctx);
    let hosts: [std::net::IpAddr; 3] = [
        proxy.ip,
        std::net::Ipv4Addr::UNSPECIFIED.into(),
        std::net::Ipv6Addr::UNSPECIFIED.into(),
    ];
    let mut out = Vec::new();
    for port in ports {
        let mut seen = std::collections::BTreeSet::new();
        for host in hosts {
            let name = format!("{SERVER_LISTENER_PREFIX}{}", SocketAddr::new(host, port));
            if seen.insert(name.clone()) {
                out.push(build(proxy, ctx, &name, SocketAddr::new(host, port)));
            }
        }
    }
    out
}

/// The target ports of the Services that select `proxy` (endpoints at its IP,
/// in its cluster), sorted: Istio's service instances of a workload.
pub fn server_ports(proxy: &Proxy, ctx: &PushContext) -> std::collections::BTreeSet<u16> {
    ctx.services
        .values()
        .flat_map(|svc| svc.endpoints.values().flatten())
        .filter(|e| {
            e.address == proxy.ip
                && (proxy.cluster_id.is_empty() || *e.cluster == *proxy.cluster_id)
        })
        .map(|e| e.port)
        .collect()
}

/// One virtual host for every authority, one route for every path: the server
/// handles the call itself (`non_forwarding_action`, gRFC A36).
fn inbound_route() -> RouteConfiguration {
    RouteConfiguration {
        name: "inbound".into(),
        virtual_hosts: vec![VirtualHost {
            name: "inbound".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(Action::NonForwardingAction(NonForwardingAction {})),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The server's HTTP filters: the AuthorizationPolicies in force as RBAC
/// (gRFC A41: ALLOW and DENY enforced, AUDIT's `LOG` ignored by gRPC as by
/// Envoy's enforcement), then the router, which gRPC requires last.
fn http_filters(proxy: &Proxy, ctx: &PushContext) -> Vec<HttpFilter> {
    let policies: Vec<&Config<AuthorizationPolicy>> = ctx
        .config
        .authorization_policies_for(&proxy.namespace, &proxy.labels)
        .into_iter()
        .map(|p| p.as_ref())
        .collect();
    // A policy that decides (not AUDIT, not dry-run) and cannot be enforced
    // denies everything; one that never decides is left out.
    let decides =
        |p: &Config<AuthorizationPolicy>| !p.spec.dry_run && p.spec.action != PolicyAction::Audit;
    let unsupported: Vec<String> = policies
        .iter()
        .filter(|p| decides(p))
        .filter_map(|p| {
            unsupported_on_grpc(&p.spec).map(|why| {
                format!(
                    "ns[{}]-policy[{}]: {why}; denying every request",
                    p.meta.namespace, p.meta.name
                )
            })
        })
        .collect();
    let policies: Vec<_> = policies
        .into_iter()
        .filter(|p| unsupported_on_grpc(&p.spec).is_none())
        .collect();
    let mut out = if unsupported.is_empty() {
        Authz::new(policies, &ctx.mesh.trust_domain).http_filters()
    } else {
        vec![deny_all(&unsupported)]
    };
    out.push(HttpFilter {
        name: ROUTER_FILTER.into(),
        config_type: Some(HttpFilterConfig::TypedConfig(pack(&Router::default()))),
        ..Default::default()
    });
    out
}

/// What a gRPC server cannot enforce in `policy`, if anything: gRPC runs no
/// JWT authentication (so `requestPrincipals` and `request.auth.*` would match
/// nothing, and a DENY would let everything through), and gRFC A41 refuses
/// header matchers on `grpc-*` headers and `:scheme` (the listener would be
/// NACKed).
pub fn unsupported_on_grpc(policy: &AuthorizationPolicy) -> Option<String> {
    for rule in &policy.rules {
        for f in &rule.from {
            if !f.source.request_principals.is_empty()
                || !f.source.not_request_principals.is_empty()
            {
                return Some(
                    "from.source.requestPrincipals needs JWT authentication, which gRPC servers do not run"
                        .into(),
                );
            }
        }
        for c in &rule.when {
            match ConditionKey::parse(&c.key) {
                Ok(
                    ConditionKey::RequestPrincipal
                    | ConditionKey::RequestAudiences
                    | ConditionKey::RequestPresenter
                    | ConditionKey::RequestClaims(_),
                ) => {
                    return Some(format!(
                        "when {}: needs JWT authentication, which gRPC servers do not run",
                        c.key
                    ))
                }
                Ok(ConditionKey::RequestHeader(h))
                    if h.to_ascii_lowercase().starts_with("grpc-")
                        || h.eq_ignore_ascii_case(":scheme") =>
                {
                    return Some(format!(
                        "when {}: gRPC refuses RBAC header matchers on grpc-* and :scheme (gRFC A41)",
                        c.key
                    ))
                }
                _ => {}
            }
        }
    }
    None
}

/// A DENY filter whose one policy matches every request, named for what
/// could not be enforced (shown in `/debug/config_dump`): fail closed.
fn deny_all(reasons: &[String]) -> HttpFilter {
    let any_perm = Permission {
        rule: Some(PermRule::Any(true)),
    };
    let any_id = Principal {
        identifier: Some(Identifier::Any(true)),
    };
    // One policy (a protobuf map of several would be encoded in random order).
    let rules = RbacRules {
        action: RbacAction::Deny as i32,
        policies: [(
            reasons.join(" | "),
            Policy {
                permissions: vec![any_perm],
                principals: vec![any_id],
                ..Default::default()
            },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    HttpFilter {
        name: HTTP_RBAC_FILTER.into(),
        config_type: Some(HttpFilterConfig::TypedConfig(pack(&HttpRbac {
            rules: Some(rules),
            ..Default::default()
        }))),
        ..Default::default()
    }
}

fn provider(certificate_name: &str) -> CertificateProviderPluginInstance {
    CertificateProviderPluginInstance {
        instance_name: CERT_PROVIDER_INSTANCE.into(),
        certificate_name: certificate_name.into(),
    }
}

/// The workload certificate from the provider, peers checked against the
/// provider's trust bundle (`validation_context.ca_certificate_provider_instance`),
/// SAN matchers only where given (gRPC servers refuse them).
fn common_tls(sans: &[String]) -> CommonTlsContext {
    #[allow(deprecated)]
    let validation = CertificateValidationContext {
        ca_certificate_provider_instance: Some(provider(CERT_NAME_ROOT)),
        match_subject_alt_names: sans
            .iter()
            .map(|s| StringMatcher {
                match_pattern: Some(MatchPattern::Exact(s.clone())),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    CommonTlsContext {
        tls_certificate_provider_instance: Some(provider(CERT_NAME_WORKLOAD)),
        validation_context_type: Some(ValidationContextType::ValidationContext(validation)),
        ..Default::default()
    }
}

/// The server side of STRICT mTLS: workload certificate and trust bundle from
/// the certificate provider, a client certificate required.
pub fn downstream_tls() -> DownstreamTlsContext {
    DownstreamTlsContext {
        common_tls_context: Some(common_tls(&[])),
        require_client_certificate: Some(bool_value(true)),
        ..Default::default()
    }
}

/// The client side of ISTIO_MUTUAL for a proxyless gRPC client's cluster
/// (gRFC A29): the workload certificate and trust bundle from the certificate
/// provider, the server's certificate matched on its SPIFFE IDs `sans` (the
/// service's service accounts, `mtls::service_sans`; any URI/DNS SAN equal to
/// one of them). gRPC ignores SNI and ALPN here, so none are set.
pub fn upstream_tls(sans: &[String]) -> UpstreamTlsContext {
    UpstreamTlsContext {
        common_tls_context: Some(common_tls(sans)),
        ..Default::default()
    }
}

/// A proxyless client's cluster under DestinationRule `tls.mode: ISTIO_MUTUAL`
/// gets [`upstream_tls`] for the service accounts behind the service's `port`
/// (Istio's `grpcgen` `applyTLS`: gRPC clients use mTLS only when a
/// DestinationRule says so, since gRPC cannot fall back to plaintext per
/// endpoint as Envoy's auto mTLS does). Other modes change nothing here.
pub fn apply_client_tls(
    c: &mut Cluster,
    policy: &EffectivePolicy,
    svc: &Service,
    port: u16,
    ctx: &PushContext,
) {
    let istio_mutual = policy
        .tls
        .as_ref()
        .and_then(|t| t.mode.as_deref())
        .is_some_and(|m| m == "ISTIO_MUTUAL");
    if !istio_mutual {
        return;
    }
    let sans = super::mtls::service_sans(svc, port, ctx);
    c.transport_socket = Some(TransportSocket {
        name: TLS_TRANSPORT_SOCKET.into(),
        config_type: Some(SocketConfig::TypedConfig(pack(&upstream_tls(&sans)))),
    });
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use prost::Message;

    use super::*;
    use crate::model::ProxyRole;

    /// A gRPC server `echo-0` (10.0.0.7, labels `labels`) behind Service
    /// `echo` (port 7070 -> 17070), with the Istio objects `istio`.
    fn load(labels: &str, istio: &str) -> (PushContext, Proxy) {
        let yaml = format!(
            "kind: GoldenFixture
proxy:
  role: sidecar
  namespace: test
  labels: {labels}
  ip: 10.0.0.7
services:
- name: echo
  namespace: test
  ports: [{{name: grpc, port: 7070}}]
  endpoints:
  - {{address: 10.0.0.7, port: 17070, cluster: cluster1, ready: true, serviceAccount: echo}}
{istio}"
        );
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), yaml).unwrap();
        let (ctx, mut proxy) = crate::translate::golden::load(f.path());
        proxy.role = ProxyRole::Grpc;
        (ctx, proxy)
    }

    const NAME: &str = "xds.istio.io/grpc/lds/inbound/10.0.0.7:17070";

    fn hcm(l: &Listener) -> HttpConnectionManager {
        let Some(FilterConfig::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type
        else {
            panic!("no HCM")
        };
        HttpConnectionManager::decode(any.value.as_slice()).unwrap()
    }

    fn tls(l: &Listener) -> Option<DownstreamTlsContext> {
        let ts = l.filter_chains[0].transport_socket.as_ref()?;
        assert_eq!(ts.name, TLS_TRANSPORT_SOCKET);
        let Some(SocketConfig::TypedConfig(any)) = &ts.config_type else {
            panic!("no typed config")
        };
        Some(DownstreamTlsContext::decode(any.value.as_slice()).unwrap())
    }

    #[test]
    fn a_served_port_gets_a_plaintext_listener_for_each_listening_address() {
        let (ctx, proxy) = load("{app: echo}", "");
        let names: Vec<String> = server_listeners(&proxy, &ctx)
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(
            names,
            [
                NAME,
                "xds.istio.io/grpc/lds/inbound/0.0.0.0:17070",
                "xds.istio.io/grpc/lds/inbound/[::]:17070"
            ]
        );
        let l = server_listener(&proxy, &ctx, NAME).unwrap();
        assert_eq!(l.address, Some(socket_address("10.0.0.7", 17070)));
        assert_eq!(l.filter_chains.len(), 1);
        assert!(l.filter_chains[0].filter_chain_match.is_none());
        assert!(tls(&l).is_none(), "no PeerAuthentication: plaintext");
        let h = hcm(&l);
        let Some(RouteSpecifier::RouteConfig(rc)) = h.route_specifier else {
            panic!("inline route config")
        };
        let route = &rc.virtual_hosts[0].routes[0];
        assert_eq!(
            route.action,
            Some(Action::NonForwardingAction(NonForwardingAction {}))
        );
        let filters: Vec<&str> = h.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(filters, [ROUTER_FILTER]);
    }

    #[test]
    fn other_names_do_not_exist() {
        let (ctx, proxy) = load("{app: echo}", "");
        assert!(matches!(
            server_listener(&proxy, &ctx, "xds.istio.io/grpc/lds/inbound/10.0.0.7:9999"),
            Err(ServerListenerError::NoServiceInstance { port: 9999, .. })
        ));
        let e = server_listener(&proxy, &ctx, "xds.istio.io/grpc/lds/inbound/echo:1").unwrap_err();
        assert!(e.to_string().contains("is not IP:PORT"), "{e}");
    }

    #[test]
    fn strict_requires_a_client_certificate_from_the_provider_and_port_level_wins() {
        let pa = |port_mode: &str| {
            format!(
                "---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: echo, namespace: test}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  mtls: {{mode: STRICT}}
{port_mode}"
            )
        };
        let (ctx, proxy) = load("{app: echo}", &pa(""));
        let t = tls(&server_listener(&proxy, &ctx, NAME).unwrap()).expect("STRICT: TLS");
        assert_eq!(t.require_client_certificate, Some(bool_value(true)));
        let c = t.common_tls_context.unwrap();
        assert_eq!(
            c.tls_certificate_provider_instance,
            Some(provider(CERT_NAME_WORKLOAD))
        );
        let Some(ValidationContextType::ValidationContext(v)) = c.validation_context_type else {
            panic!("validation context")
        };
        assert_eq!(
            v.ca_certificate_provider_instance,
            Some(provider(CERT_NAME_ROOT))
        );
        #[allow(deprecated)]
        let sans = v.match_subject_alt_names;
        assert!(sans.is_empty(), "gRPC servers refuse SAN matchers");

        let (ctx, proxy) = load(
            "{app: echo}",
            &pa("  portLevelMtls: {'17070': {mode: DISABLE}}\n"),
        );
        assert!(tls(&server_listener(&proxy, &ctx, NAME).unwrap()).is_none());
    }

    #[test]
    fn permissive_is_plaintext_unless_the_workload_is_labelled_for_mtls() {
        let (ctx, proxy) = load("{app: echo}", "");
        assert_eq!(server_mtls_mode(&proxy, &ctx, 17070), MtlsMode::Disable);
        let (ctx, proxy) = load("{app: echo, security.istio.io/tlsMode: istio}", "");
        assert_eq!(server_mtls_mode(&proxy, &ctx, 17070), MtlsMode::Strict);
        assert!(tls(&server_listener(&proxy, &ctx, NAME).unwrap()).is_some());
    }

    #[test]
    fn authorization_policies_become_rbac_and_jwt_ones_deny_everything() {
        let allow = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-client, namespace: test}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/test/sa/client]}}]
    to: [{operation: {paths: [/crossmesh.test.Echo/Hello]}}]
";
        let (ctx, proxy) = load("{app: echo}", allow);
        let h = hcm(&server_listener(&proxy, &ctx, NAME).unwrap());
        let filters: Vec<&str> = h.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(filters, [HTTP_RBAC_FILTER, ROUTER_FILTER]);

        let jwt = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-bob, namespace: test}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - from: [{source: {requestPrincipals: [https://idp/bob]}}]
";
        let (ctx, proxy) = load("{app: echo}", &format!("{allow}{jwt}"));
        let h = hcm(&server_listener(&proxy, &ctx, NAME).unwrap());
        assert_eq!(h.http_filters.len(), 2);
        let Some(HttpFilterConfig::TypedConfig(any)) = &h.http_filters[0].config_type else {
            panic!("typed config")
        };
        let rbac = HttpRbac::decode(any.value.as_slice())
            .unwrap()
            .rules
            .unwrap();
        assert_eq!(rbac.action, RbacAction::Deny as i32);
        let names: Vec<&String> = rbac.policies.keys().collect();
        assert_eq!(names.len(), 1);
        assert!(
            names[0].starts_with("ns[test]-policy[no-bob]: from.source.requestPrincipals"),
            "{names:?}"
        );
        let p = &rbac.policies[names[0]];
        assert_eq!(p.permissions[0].rule, Some(PermRule::Any(true)));
        assert_eq!(p.principals[0].identifier, Some(Identifier::Any(true)));
    }
}
