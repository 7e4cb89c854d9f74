//! Gateway proxies (Istio's `router`): the Gateways whose selector matches the
//! proxy's labels give listeners on their server ports; VirtualServices bound to
//! those Gateways give the routes; the services they route to give the clusters.
//! Istio's `networking/core/gateway.go`.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch};
use envoy_types::pb::envoy::config::route::v3::{
    virtual_host::TlsRequirementType, RouteConfiguration, VirtualHost,
};

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    tls_parameters::TlsProtocol,
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, TlsParameters,
};

use super::cluster::service_clusters;
use super::listener::{filter_chain, http_connection_manager, l4_proxy, listener, HttpClass};
use super::proto::{bool_value, http_route_name};
use super::route::{
    http_routes, l4_destinations, referenced_hosts, sort_catch_all_last, virtual_host, RouteScope,
};
use super::Generated;
use super::{credentials, mtls};
use crate::model::istio::gateway::ServerTlsSettings;
use crate::model::istio::validate::all_wildcard_host;
use crate::model::istio::{
    host_intersection, labels_match, resolve_gateway_name, Config, Gateway, Server, ServerProtocol,
    VirtualService,
};
use crate::model::{Proxy, PushContext};

/// Gateways bind every server on the wildcard address.
pub const BIND_ADDRESS: &str = "0.0.0.0";

/// One server of one Gateway selected for the proxy.
struct BoundServer<'a> {
    /// `ns/name` of the Gateway.
    gateway: String,
    gateway_ns: &'a str,
    server: &'a Server,
}

/// The servers of one port: the first server's protocol (by Gateway order) wins,
/// as in Istio's gateway merging; a server with another protocol on the port is
/// left out (and reported by the config store).
struct PortServers<'a> {
    protocol: ServerProtocol,
    passthrough: bool,
    servers: Vec<BoundServer<'a>>,
}

/// Servers of every Gateway that selects `proxy`, grouped by port.
fn servers_by_port<'a>(proxy: &'a Proxy, ctx: &'a PushContext) -> BTreeMap<u32, PortServers<'a>> {
    let mut ports: BTreeMap<u32, PortServers<'a>> = BTreeMap::new();
    let member_of = gateway_services_of(proxy, ctx);
    for gw in ctx
        .config
        .gateways_for(&proxy.namespace, &proxy.labels, &member_of)
    {
        for server in &gw.spec.servers {
            let Some(protocol) = server.protocol() else {
                continue;
            };
            let bound = BoundServer {
                gateway: gw.meta.key(),
                gateway_ns: &gw.meta.namespace,
                server,
            };
            let entry = ports
                .entry(server.port.number)
                .or_insert_with(|| PortServers {
                    protocol,
                    passthrough: server.is_passthrough(),
                    servers: Vec::new(),
                });
            // HTTPS ports may mix PASSTHROUGH and terminated servers (told apart
            // by SNI, as in Istio); TLS ports pass through only (validation).
            let compatible = entry.protocol == protocol
                || (entry.protocol.is_http() && protocol.is_http())
                || (entry.passthrough && server.is_passthrough());
            if compatible {
                entry.servers.push(bound);
            }
        }
    }
    ports
}

/// The hosts of `server` that a VirtualService in `vs_ns` may claim: `ns/host`
/// limits to namespace `ns` (`.` is the Gateway's namespace, `*` any); `*.*` means
/// `*` (see `validate::all_wildcard_host`).
fn server_hosts_for(server: &Server, gateway_ns: &str, vs_ns: &str) -> Vec<String> {
    server
        .hosts
        .iter()
        .filter_map(|h| {
            let (ns, host) = h.split_once('/').unwrap_or(("*", h));
            let ok = ns == "*" || (ns == "." && vs_ns == gateway_ns) || ns == vs_ns;
            let host = if all_wildcard_host(host) { "*" } else { host };
            ok.then(|| host.to_string())
        })
        .collect()
}

/// Istio's host intersection between a server and a VirtualService.
fn intersect(server_hosts: &[String], vs_hosts: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in server_hosts {
        for v in vs_hosts {
            if let Some(h) = host_intersection(s, v) {
                out.insert(h);
            }
        }
    }
    out
}

/// CDS, LDS and RDS for a gateway proxy; `identity`: it holds a workload
/// certificate (auto mTLS and ISTIO_MUTUAL to meshed endpoints).
pub fn generate(proxy: &Proxy, ctx: &PushContext, identity: bool) -> Generated {
    let mut out = Generated::default();
    let mut used: Vec<&Config<VirtualService>> = Vec::new();
    let mut east_west: Vec<Cluster> = Vec::new();
    for (port, ps) in servers_by_port(proxy, ctx) {
        // East-west AUTO_PASSTHROUGH ports (owned by translate::network).
        if let Some((l, cs)) =
            super::network::auto_passthrough(port, ps.servers.iter().map(|b| b.server), ctx)
        {
            out.listeners.push(l);
            east_west.extend(cs);
            continue;
        }
        if ps.protocol == ServerProtocol::Https && ps.servers.iter().any(|b| terminates(b.server)) {
            let mut chains =
                https_filter_chains(port, &ps, proxy, ctx, identity, &mut out.routes, &mut used);
            passthrough_beside(port, &ps, proxy, ctx, &mut used, &mut chains);
            if !chains.is_empty() {
                out.listeners.push(listener(
                    BIND_ADDRESS,
                    port,
                    TrafficDirection::Outbound,
                    chains,
                ));
            }
        } else if ps.protocol.is_http() {
            let route_name = http_route_name(port);
            out.routes.push(http_route_config(
                &route_name,
                port,
                &ps,
                proxy,
                ctx,
                &mut used,
            ));
            let hcm = http_connection_manager(
                &format!("outbound_{BIND_ADDRESS}_{port}"),
                &route_name,
                HttpClass::Gateway,
                super::security::http_filters(proxy, ctx, port),
                &ctx.mesh,
            );
            out.listeners.push(listener(
                BIND_ADDRESS,
                port,
                TrafficDirection::Outbound,
                vec![filter_chain(Vec::new(), hcm)],
            ));
        } else {
            let mut chains = if ps.protocol == ServerProtocol::Tls
                && ps.servers.iter().any(|b| terminates(b.server))
            {
                let mut c = tls_terminated_chains(port, &ps, proxy, ctx, identity, &mut used);
                passthrough_beside(port, &ps, proxy, ctx, &mut used, &mut c);
                c
            } else {
                l4_filter_chains(port, &ps, proxy, ctx, &mut used)
            };
            // AuthorizationPolicy's network RBAC ahead of the TCP proxy, as
            // istiod builds gateway TCP and TLS-passthrough servers.
            let rbac = super::security::network_filters(proxy, ctx);
            for fc in &mut chains {
                fc.filters.splice(0..0, rbac.iter().cloned());
            }
            if !chains.is_empty() {
                out.listeners.push(listener(
                    BIND_ADDRESS,
                    port,
                    TrafficDirection::Outbound,
                    chains,
                ));
            }
        }
    }
    out.clusters = clusters_for(&used, proxy, ctx, identity);
    if !east_west.is_empty() {
        out.clusters.extend(east_west);
        out.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    }
    out
}

/// Clusters for every service the used VirtualServices route or mirror to.
pub fn clusters_for(
    used: &[&Config<VirtualService>],
    proxy: &Proxy,
    ctx: &PushContext,
    identity: bool,
) -> Vec<Cluster> {
    let hosts: BTreeSet<String> = used
        .iter()
        .flat_map(|vs| referenced_hosts(vs, ctx))
        .collect();
    let mut clusters: Vec<Cluster> = hosts
        .iter()
        .filter_map(|h| ctx.services.get(h.as_str()))
        // A ServiceEntry's service only where its `exportTo` admits the gateway.
        .filter(|svc| ctx.config.service_visible(svc, &proxy.namespace))
        .flat_map(|svc| service_clusters(svc, &proxy.namespace, ctx, identity))
        .collect();
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    clusters
}

/// Istio's `buildGatewayHTTPRouteConfig`: for each server and each VirtualService
/// bound to its Gateway (oldest first), one virtual host per intersecting host;
/// VirtualServices claiming the same host merge (routes concatenated, catch-alls
/// last). No virtual host at all gives a `*` vhost without routes: Envoy answers
/// 404, as it does for any Host no virtual host matches.
fn http_route_config<'a>(
    name: &str,
    port: u32,
    ps: &PortServers<'a>,
    proxy: &Proxy,
    ctx: &'a PushContext,
    used: &mut Vec<&'a Config<VirtualService>>,
) -> RouteConfiguration {
    let mut vhosts: BTreeMap<String, VirtualHost> = BTreeMap::new();
    for bs in &ps.servers {
        let https_redirect = bs.server.tls.as_ref().is_some_and(|t| t.https_redirect);
        for vs in ctx
            .config
            .virtual_services_for_gateway(&bs.gateway, &proxy.namespace)
        {
            let hosts = intersect(
                &server_hosts_for(bs.server, bs.gateway_ns, &vs.meta.namespace),
                &vs.spec.hosts,
            );
            if hosts.is_empty() || vs.spec.http.is_empty() {
                continue;
            }
            let scope = RouteScope {
                port,
                gateway: &bs.gateway,
                proxy,
                ctx,
            };
            let routes = http_routes(vs, scope);
            if !used.iter().any(|u| std::ptr::eq(*u, vs.as_ref())) {
                used.push(vs);
            }
            for h in hosts {
                let vh = vhosts
                    .entry(h.clone())
                    .or_insert_with(|| virtual_host(&h, port, Vec::new()));
                vh.routes.extend(routes.iter().cloned());
                if https_redirect {
                    vh.require_tls = TlsRequirementType::All as i32;
                }
            }
        }
        if https_redirect {
            for h in &bs.server.hosts {
                let host = h
                    .split_once('/')
                    .map(|(_, h)| h)
                    .unwrap_or(h)
                    .to_ascii_lowercase();
                vhosts
                    .entry(host.clone())
                    .or_insert_with(|| virtual_host(&host, port, Vec::new()))
                    .require_tls = TlsRequirementType::All as i32;
            }
        }
    }
    let mut virtual_hosts: Vec<VirtualHost> = vhosts
        .into_values()
        .map(|mut v| {
            v.routes = sort_catch_all_last(std::mem::take(&mut v.routes));
            v
        })
        .collect();
    if virtual_hosts.is_empty() {
        virtual_hosts.push(VirtualHost {
            name: format!("blackhole:{port}"),
            domains: vec!["*".into()],
            ..Default::default()
        });
    }
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts,
        validate_clusters: Some(bool_value(false)),
        ..Default::default()
    }
}

/// Istio's RDS name of a terminated HTTPS server (`gatewayRDSRouteName`):
/// `https.PORT.PORTNAME.GATEWAY.NAMESPACE`.
fn https_route_name(port: u32, bs: &BoundServer<'_>) -> String {
    let gw_name = bs
        .gateway
        .rsplit_once('/')
        .map_or(bs.gateway.as_str(), |(_, n)| n);
    format!(
        "https.{port}.{}.{gw_name}.{}",
        bs.server.port.name, bs.gateway_ns
    )
}

/// The SNI names of a server (`filter_chain_match.server_names`): its hosts
/// without the namespace part; none (match any SNI) when a host is `*`.
fn server_sni(server: &Server) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for h in &server.hosts {
        let host = h.split_once('/').map_or(h.as_str(), |(_, h)| h);
        if host == "*" || all_wildcard_host(host) {
            return Vec::new();
        }
        let host = host.to_ascii_lowercase();
        if !names.contains(&host) {
            names.push(host);
        }
    }
    names
}

/// Istio's `TLSProtocol` names as Envoy's `TlsParameters.TlsProtocol`.
fn tls_protocol(v: Option<&str>, default: TlsProtocol) -> TlsProtocol {
    match v.map(str::to_ascii_uppercase).as_deref() {
        Some("TLS_AUTO") => TlsProtocol::TlsAuto,
        Some("TLSV1_0") => TlsProtocol::TlSv10,
        Some("TLSV1_1") => TlsProtocol::TlSv11,
        Some("TLSV1_2") => TlsProtocol::TlSv12,
        Some("TLSV1_3") => TlsProtocol::TlSv13,
        _ => default,
    }
}

/// Istio's `buildGatewayListenerTLSContext` for a terminating server:
/// - SIMPLE: the key and certificate of Secret `credentialName`
///   (`kubernetes://NAME`);
/// - MUTUAL / OPTIONAL_MUTUAL: also the CA (`kubernetes://NAME-cacert`) with
///   `subjectAltNames`, `verifyCertificateSpki` and `verifyCertificateHash`
///   checks; a client certificate is required for MUTUAL only;
/// - ISTIO_MUTUAL: the gateway's workload certificate (`default`) and the mesh
///   trust bundle (`ROOTCA`), client certificate required.
///
/// `minProtocolVersion` defaults to TLS 1.2 and `maxProtocolVersion` to TLS 1.3
/// (Istio's gateway defaults); `cipherSuites` as given. ALPN `h2,http/1.1` for
/// HTTPS (`http`), none for TLS servers. `None`: nothing to terminate with
/// (ISTIO_MUTUAL without identity, or a mode that does not terminate).
fn server_tls_context(
    tls: &ServerTlsSettings,
    identity: bool,
    http: bool,
) -> Option<DownstreamTlsContext> {
    let mode = tls.mode.as_deref().unwrap_or("").to_ascii_uppercase();
    let params = TlsParameters {
        tls_minimum_protocol_version: tls_protocol(
            tls.min_protocol_version.as_deref(),
            TlsProtocol::TlSv12,
        ) as i32,
        tls_maximum_protocol_version: tls_protocol(
            tls.max_protocol_version.as_deref(),
            TlsProtocol::TlSv13,
        ) as i32,
        cipher_suites: tls.cipher_suites.clone(),
        ..Default::default()
    };
    let validation = CertificateValidationContext {
        match_typed_subject_alt_names: mtls::exact_uri_or_dns_sans(&tls.subject_alt_names),
        verify_certificate_spki: tls.verify_certificate_spki.clone(),
        verify_certificate_hash: tls.verify_certificate_hash.clone(),
        ..Default::default()
    };
    let combined = |ca: String| {
        ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
            default_validation_context: Some(validation.clone()),
            validation_context_sds_secret_config: Some(mtls::sds(&ca)),
            ..Default::default()
        })
    };
    let credential = tls.credential_name.clone().unwrap_or_default();
    let (cert, validation, require) = match mode.as_str() {
        "SIMPLE" => (credentials::key_pair_secret_name(&credential), None, false),
        "MUTUAL" | "OPTIONAL_MUTUAL" => (
            credentials::key_pair_secret_name(&credential),
            Some(combined(credentials::ca_secret_name(&credential))),
            mode == "MUTUAL",
        ),
        "ISTIO_MUTUAL" if identity => (
            mtls::SDS_DEFAULT.to_string(),
            Some(combined(mtls::SDS_ROOT.to_string())),
            true,
        ),
        _ => return None,
    };
    Some(DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(params),
            tls_certificate_sds_secret_configs: vec![mtls::sds(&cert)],
            validation_context_type: validation,
            alpn_protocols: if http {
                mtls::ALPN_HTTP.iter().map(|s| s.to_string()).collect()
            } else {
                Vec::new()
            },
            ..Default::default()
        }),
        require_client_certificate: require.then(|| bool_value(true)),
        ..Default::default()
    })
}

/// Terminated HTTPS servers of one port (Istio's gateway HTTPS filter chains):
/// one filter chain per server, matched on the server's hosts as SNI, with the
/// server's certificate, and an HTTP connection manager whose route config
/// (`https.PORT.PORTNAME.GATEWAY.NS`) holds the virtual hosts of that server's
/// hosts only. A later server whose SNI names repeat an earlier one's is left
/// out (Envoy refuses equal filter chain matches), as is a server with
/// nothing to terminate with. A chain whose Secret the proxy cannot get is
/// removed afterwards (`credentials::resolve`).
fn https_filter_chains<'a>(
    port: u32,
    ps: &PortServers<'a>,
    proxy: &Proxy,
    ctx: &'a PushContext,
    identity: bool,
    routes: &mut Vec<RouteConfiguration>,
    used: &mut Vec<&'a Config<VirtualService>>,
) -> Vec<FilterChain> {
    let mut chains = Vec::new();
    let mut seen: BTreeSet<Vec<String>> = BTreeSet::new();
    for bs in &ps.servers {
        let Some(tls) = bs.server.tls.as_ref() else {
            continue;
        };
        let Some(context) = server_tls_context(tls, identity, true) else {
            continue;
        };
        let mut sni = server_sni(bs.server);
        sni.sort();
        if !seen.insert(sni.clone()) {
            continue;
        }
        // Two servers sharing a port name would share a route config name:
        // the later gets its position appended, so each keeps its own hosts.
        let mut route_name = https_route_name(port, bs);
        if routes.iter().any(|r| r.name == route_name) {
            route_name = format!("{route_name}.{}", chains.len());
        }
        let one = PortServers {
            protocol: ps.protocol,
            passthrough: false,
            servers: vec![BoundServer {
                gateway: bs.gateway.clone(),
                gateway_ns: bs.gateway_ns,
                server: bs.server,
            }],
        };
        routes.push(http_route_config(&route_name, port, &one, proxy, ctx, used));
        let hcm = http_connection_manager(
            &format!("outbound_{BIND_ADDRESS}_{port}"),
            &route_name,
            HttpClass::Gateway,
            super::security::http_filters(proxy, ctx, port),
            &ctx.mesh,
        );
        let mut fc = filter_chain(sni, hcm);
        fc.name = route_name;
        fc.transport_socket = Some(mtls::tls_socket(&context));
        chains.push(fc);
    }
    chains
}

/// Whether a server terminates TLS (modes SIMPLE, MUTUAL, OPTIONAL_MUTUAL,
/// ISTIO_MUTUAL).
fn terminates(server: &Server) -> bool {
    server
        .tls
        .as_ref()
        .and_then(|t| t.mode.as_deref())
        .is_some_and(|m| {
            ["SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL", "ISTIO_MUTUAL"]
                .iter()
                .any(|x| m.eq_ignore_ascii_case(x))
        })
}

/// The PASSTHROUGH servers of a port that also terminates TLS: their SNI
/// chains, minus the names a terminated server already claims (Envoy refuses
/// two chains matching one name), appended to `chains`.
fn passthrough_beside<'a>(
    port: u32,
    ps: &PortServers<'a>,
    proxy: &Proxy,
    ctx: &'a PushContext,
    used: &mut Vec<&'a Config<VirtualService>>,
    chains: &mut Vec<FilterChain>,
) {
    let pass = PortServers {
        protocol: ps.protocol,
        passthrough: true,
        servers: ps
            .servers
            .iter()
            .filter(|b| b.server.is_passthrough())
            .map(|b| BoundServer {
                gateway: b.gateway.clone(),
                gateway_ns: b.gateway_ns,
                server: b.server,
            })
            .collect(),
    };
    if pass.servers.is_empty() {
        return;
    }
    let claimed: BTreeSet<String> = chains
        .iter()
        .flat_map(|fc| {
            fc.filter_chain_match
                .iter()
                .flat_map(|m| m.server_names.clone())
        })
        .collect();
    for mut fc in l4_filter_chains(port, &pass, proxy, ctx, used) {
        if let Some(m) = fc.filter_chain_match.as_mut() {
            m.server_names.retain(|n| !claimed.contains(n));
            if m.server_names.is_empty() {
                continue;
            }
        }
        chains.push(fc);
    }
}

/// Terminated TLS servers (protocol TLS; Istio's gateway TCP-after-TLS
/// servers): per server, a filter chain on its hosts as SNI with its TLS
/// context (no ALPN) and the TCP proxy of the first TCP route that applies to
/// it (as for a TCP server). A server without such a route, or repeating an
/// earlier server's SNI names, gets no chain.
fn tls_terminated_chains<'a>(
    port: u32,
    ps: &PortServers<'a>,
    proxy: &Proxy,
    ctx: &'a PushContext,
    identity: bool,
    used: &mut Vec<&'a Config<VirtualService>>,
) -> Vec<FilterChain> {
    let mut chains = Vec::new();
    let mut seen: BTreeSet<Vec<String>> = BTreeSet::new();
    for bs in ps.servers.iter().filter(|b| terminates(b.server)) {
        let Some(context) = bs
            .server
            .tls
            .as_ref()
            .and_then(|t| server_tls_context(t, identity, false))
        else {
            continue;
        };
        let mut sni = server_sni(bs.server);
        sni.sort();
        if !seen.insert(sni.clone()) {
            continue;
        }
        let one = PortServers {
            protocol: ps.protocol,
            passthrough: false,
            servers: vec![BoundServer {
                gateway: bs.gateway.clone(),
                gateway_ns: bs.gateway_ns,
                server: bs.server,
            }],
        };
        let Some(mut fc) = l4_filter_chains(port, &one, proxy, ctx, used)
            .into_iter()
            .next()
        else {
            continue;
        };
        fc.filter_chain_match = (!sni.is_empty()).then(|| FilterChainMatch {
            server_names: sni,
            ..Default::default()
        });
        fc.name = format!(
            "tls.{port}.{}.{}.{}",
            bs.server.port.name,
            bs.gateway
                .rsplit_once('/')
                .map_or(bs.gateway.as_str(), |(_, n)| n),
            bs.gateway_ns
        );
        fc.transport_socket = Some(mtls::tls_socket(&context));
        chains.push(fc);
    }
    chains
}

/// TCP servers: the first TCP route (oldest VirtualService first) whose match
/// applies proxies the port. TLS passthrough servers: one filter chain per TLS
/// route match, on the SNI names that intersect the server's hosts.
fn l4_filter_chains<'a>(
    port: u32,
    ps: &PortServers<'a>,
    proxy: &Proxy,
    ctx: &'a PushContext,
    used: &mut Vec<&'a Config<VirtualService>>,
) -> Vec<FilterChain> {
    let mut chains: Vec<FilterChain> = Vec::new();
    let mut seen_sni: BTreeSet<String> = BTreeSet::new();
    let stat = format!("outbound_{BIND_ADDRESS}_{port}");
    for bs in &ps.servers {
        for vs in ctx
            .config
            .virtual_services_for_gateway(&bs.gateway, &proxy.namespace)
        {
            let ns = &vs.meta.namespace;
            let server_hosts = server_hosts_for(bs.server, bs.gateway_ns, ns);
            if intersect(&server_hosts, &vs.spec.hosts).is_empty() {
                continue;
            }
            let applies = |gws: &[String],
                           p: Option<u32>,
                           labels: &BTreeMap<String, String>,
                           sns: &Option<String>| {
                (gws.is_empty()
                    || gws
                        .iter()
                        .any(|g| resolve_gateway_name(g, ns) == bs.gateway))
                    && p.is_none_or(|p| p == port)
                    && labels_match(labels, &proxy.labels)
                    && sns.as_ref().is_none_or(|s| *s == proxy.namespace)
            };
            if ps.passthrough {
                for tls in &vs.spec.tls {
                    for m in tls.matches.iter().filter(|m| {
                        applies(&m.gateways, m.port, &m.source_labels, &m.source_namespace)
                    }) {
                        let mut sni: Vec<String> = intersect(&server_hosts, &m.sni_hosts)
                            .into_iter()
                            .filter(|h| seen_sni.insert(h.clone()))
                            .collect();
                        if sni.is_empty() {
                            continue;
                        }
                        // Envoy refuses `*` in `server_names` ("partial wildcards are not
                        // supported"): any SNI is a chain without `server_names`, which
                        // Envoy tries after every chain naming a server.
                        if sni.iter().any(|h| h == "*") {
                            sni.clear();
                        }
                        let dests = l4_destinations(&tls.route, ns, port, ctx);
                        chains.push(filter_chain(sni, l4_proxy(&stat, &dests, proxy, ctx)));
                        if !used.iter().any(|u| std::ptr::eq(*u, vs.as_ref())) {
                            used.push(vs);
                        }
                    }
                }
            } else if chains.is_empty() {
                let route = vs.spec.tcp.iter().find(|t| {
                    t.matches.is_empty()
                        || t.matches.iter().any(|m| {
                            applies(&m.gateways, m.port, &m.source_labels, &m.source_namespace)
                        })
                });
                if let Some(t) = route {
                    let dests = l4_destinations(&t.route, ns, port, ctx);
                    chains.push(filter_chain(
                        Vec::new(),
                        l4_proxy(&stat, &dests, proxy, ctx),
                    ));
                    used.push(vs);
                }
            }
        }
    }
    chains
}

/// The Services named by Gateways' `gateway_services` (Gateway API
/// `addresses` of type Hostname, Istio's manual deployment) that have `proxy`
/// as an endpoint (its IP, in its cluster): the Gateways it serves beside
/// those its labels select. Sorted; empty when no Gateway names a Service.
pub fn gateway_services_of(proxy: &Proxy, ctx: &PushContext) -> Vec<String> {
    let mut out: Vec<String> = ctx
        .config
        .gateway_service_hosts()
        .filter(|h| {
            ctx.services.get(*h).is_some_and(|svc| {
                svc.endpoints.values().flatten().any(|e| {
                    e.address == proxy.ip
                        && (proxy.cluster_id.is_empty() || *e.cluster == *proxy.cluster_id)
                })
            })
        })
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether a Gateway's selector picks `proxy` (for callers deciding which proxies
/// a Gateway change concerns).
pub fn selects(gw: &Config<Gateway>, proxy: &Proxy) -> bool {
    labels_match(&gw.spec.selector, &proxy.labels)
}

#[cfg(test)]
mod tests {
    use crate::translate::generate;

    /// Two terminated servers on one port with the same port name keep their
    /// own route configs (their own hosts), matched by their own SNI.
    #[test]
    fn servers_sharing_a_port_name_keep_their_own_routes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gw.yaml");
        std::fs::write(
            &path,
            "kind: GoldenFixture
proxy: {role: gateway, namespace: gw, labels: {app: gw}, identity: {serviceAccount: gw}}
services:
- {name: a, namespace: gw, ports: [{name: http, port: 80}]}
- {name: b, namespace: gw, ports: [{name: http, port: 80}]}
secrets:
- {name: a, namespace: gw, parts: [keyPair]}
- {name: b, namespace: gw, parts: [keyPair]}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: g, namespace: gw}
spec:
  selector: {app: gw}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [a.example.com]
    tls: {mode: SIMPLE, credentialName: a}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [b.example.com]
    tls: {mode: SIMPLE, credentialName: b}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: gw}
spec:
  hosts: [a.example.com]
  gateways: [g]
  http: [{route: [{destination: {host: a}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b, namespace: gw}
spec:
  hosts: [b.example.com]
  gateways: [g]
  http: [{route: [{destination: {host: b}}]}]
",
        )
        .expect("write fixture");
        let (ctx, proxy) = crate::translate::golden::load(&path);
        let g = generate(&proxy, &ctx);
        let domains = |name: &str| -> Vec<String> {
            g.routes
                .iter()
                .find(|r| r.name == name)
                .map(|r| {
                    r.virtual_hosts
                        .iter()
                        .flat_map(|v| v.domains.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        let a = domains("https.443.https.g.gw");
        let b = domains("https.443.https.g.gw.1");
        assert!(
            a.contains(&"a.example.com".to_string()) && !a.contains(&"b.example.com".to_string()),
            "{a:?}"
        );
        assert!(
            b.contains(&"b.example.com".to_string()) && !b.contains(&"a.example.com".to_string()),
            "{b:?}"
        );
        let l = g
            .listeners
            .iter()
            .find(|l| l.name == "0.0.0.0_443")
            .expect("listener");
        let names: Vec<(Vec<String>, String)> = l
            .filter_chains
            .iter()
            .map(|fc| {
                (
                    fc.filter_chain_match
                        .as_ref()
                        .map(|m| m.server_names.clone())
                        .unwrap_or_default(),
                    fc.name.clone(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                (
                    vec!["a.example.com".to_string()],
                    "https.443.https.g.gw".to_string()
                ),
                (
                    vec!["b.example.com".to_string()],
                    "https.443.https.g.gw.1".to_string()
                )
            ]
        );
    }
}
