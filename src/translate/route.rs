//! RDS: a VirtualService's HTTP routes as Envoy routes (Istio's
//! `route/route.go`), and virtual hosts. Shared by gateways and sidecars: callers
//! pass the listener port and the gateway the routes are built for (`ns/name`, or
//! `mesh` for sidecars).

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    data_source::Specifier, header_value_option::HeaderAppendAction, DataSource, HeaderValue,
    HeaderValueOption, RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier},
    retry_policy::{RetryBackOff, RetryHostPredicate, RetryPriority},
    route::Action,
    route_action::{
        hash_policy::{ConnectionProperties, Cookie, Header, PolicySpecifier, QueryParameter},
        ClusterNotFoundResponseCode, ClusterSpecifier, HashPolicy, HostRewriteSpecifier,
        RequestMirrorPolicy,
    },
    route_match::PathSpecifier,
    weighted_cluster::{cluster_weight, ClusterWeight},
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route,
    RouteAction, RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{fault_delay, FaultDelay};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy as EnvoyCors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    fault_abort, FaultAbort, HttpFault,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatchAndSubstitute, RegexMatcher, StringMatcher,
};
use envoy_types::pb::google::protobuf::{Any, Duration};

use super::proto::{
    bool_value, cluster_name, pack, percent_per_hundred, percent_per_million, u32_value,
};
use crate::model::istio::destination_rule::{ConsistentHashLb, EffectivePolicy};
use crate::model::istio::virtual_service::{decode_base64, grpc_status_code};
use crate::model::istio::virtual_service::{
    CorsPolicy, HeaderOperations, Headers, HttpMatchRequest, HttpRetry, HttpRoute,
};
use crate::model::istio::{
    labels_match, resolve_gateway_name, Config, Destination, StringMatch, StringMatchKind,
    TrafficPolicy, VirtualService,
};
use crate::model::{Proxy, PushContext};

/// HTTP filter names whose per-route configs routes carry.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
pub const CORS_FILTER: &str = "envoy.filters.http.cors";

/// Who the routes are for: the listener port, the gateway (`ns/name` or `mesh`),
/// and the proxy (for `sourceLabels`, `sourceNamespace` and DestinationRule
/// lookup).
#[derive(Clone, Copy)]
pub struct RouteScope<'a> {
    pub port: u32,
    pub gateway: &'a str,
    pub proxy: &'a Proxy,
    pub ctx: &'a PushContext,
}

/// The Envoy routes of one VirtualService, in order. As in Istio, a route without
/// matches is a catch-all and ends the list; a match that does not apply to this
/// port, gateway or proxy is dropped, and a route left without matches is skipped.
pub fn http_routes(vs: &Config<VirtualService>, scope: RouteScope<'_>) -> Vec<Route> {
    let mut out = Vec::new();
    for http in &vs.spec.http {
        if http.matches.is_empty() {
            out.push(build_route(vs, http, None, scope));
            break;
        }
        for m in http
            .matches
            .iter()
            .filter(|m| match_applies(m, &vs.meta.namespace, scope))
        {
            out.push(build_route(vs, http, Some(m), scope));
        }
    }
    out
}

/// Istio's per-match scoping: `gateways`, `port`, `sourceLabels`, `sourceNamespace`.
fn match_applies(m: &HttpMatchRequest, vs_ns: &str, scope: RouteScope<'_>) -> bool {
    if !m.gateways.is_empty()
        && !m
            .gateways
            .iter()
            .any(|g| resolve_gateway_name(g, vs_ns) == scope.gateway)
    {
        return false;
    }
    if m.port.is_some_and(|p| p != scope.port) {
        return false;
    }
    if !labels_match(&m.source_labels, &scope.proxy.labels) {
        return false;
    }
    m.source_namespace
        .as_ref()
        .is_none_or(|ns| *ns == scope.proxy.namespace)
}

/// The resolved host names a VirtualService's HTTP, TCP and TLS routes send to
/// (destinations and mirrors), for deciding which clusters a proxy needs.
pub fn referenced_hosts(vs: &Config<VirtualService>, ctx: &PushContext) -> Vec<String> {
    let ns = &vs.meta.namespace;
    let mut hosts: Vec<String> = vs
        .spec
        .destinations()
        .map(|d| ctx.config.resolve_host(&d.host, ns))
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// Istio's `GetDestinationCluster`: the destination's port, else the service's only
/// port, else the listener port.
pub fn destination_cluster(
    d: &Destination,
    vs_ns: &str,
    listener_port: u32,
    ctx: &PushContext,
) -> String {
    let host = ctx.config.resolve_host(&d.host, vs_ns);
    let port = match d.port.map(|p| p.number).filter(|n| *n != 0) {
        Some(p) => p,
        None => match ctx.services.get(host.as_str()) {
            Some(svc) if svc.ports.len() == 1 => svc.ports[0].port as u32,
            _ => listener_port,
        },
    };
    cluster_name(port as u16, &d.subset, &host)
}

/// The weighted clusters of a TCP or TLS route (Istio drops zero-weight
/// destinations when there are several; an unset weight is 100).
pub fn l4_destinations(
    route: &[crate::model::istio::virtual_service::RouteDestination],
    vs_ns: &str,
    listener_port: u32,
    ctx: &PushContext,
) -> Vec<(String, u32)> {
    let n = route.len();
    route
        .iter()
        .filter(|r| n == 1 || r.weight.unwrap_or(0) > 0)
        .map(|r| {
            (
                destination_cluster(&r.destination, vs_ns, listener_port, ctx),
                r.weight.unwrap_or(100).max(0) as u32,
            )
        })
        .collect()
}

fn build_route(
    vs: &Config<VirtualService>,
    http: &HttpRoute,
    m: Option<&HttpMatchRequest>,
    scope: RouteScope<'_>,
) -> Route {
    let mut route = Route {
        name: match (http.name.as_str(), m.map(|m| m.name.as_str()).unwrap_or("")) {
            ("", "") => String::new(),
            (r, "") => r.to_string(),
            ("", m) => m.to_string(),
            (r, m) => format!("{r}.{m}"),
        },
        r#match: Some(gateway_semantics_match(vs, route_match(m))),
        // Per-route stats under vhost.<vhost>.route.<statPrefix> (Istio).
        stat_prefix: m.and_then(|m| m.stat_prefix.clone()).unwrap_or_default(),
        ..Default::default()
    };
    let mut per_filter: HashMap<String, Any> = HashMap::new();
    if let Some(rd) = &http.redirect {
        route.action = Some(Action::Redirect(RedirectAction {
            host_redirect: rd.authority.clone().unwrap_or_default(),
            port_redirect: match (rd.port, rd.derive_port.as_deref()) {
                (Some(p), _) => p,
                // Istio: the port the request came in on, i.e. the listener's.
                (None, Some("FROM_REQUEST_PORT")) => scope.port,
                _ => 0,
            },
            path_rewrite_specifier: rd.uri.clone().map(PathRewriteSpecifier::PathRedirect),
            scheme_rewrite_specifier: rd
                .scheme
                .clone()
                .map(SchemeRewriteSpecifier::SchemeRedirect),
            response_code: redirect_code(rd.redirect_code.unwrap_or(301)) as i32,
            ..Default::default()
        }));
    } else if let Some(dr) = &http.direct_response {
        route.action = Some(Action::DirectResponse(DirectResponseAction {
            status: dr.status,
            body: dr.body.as_ref().and_then(|b| {
                let spec = match (&b.string, &b.bytes) {
                    (Some(s), _) => Specifier::InlineString(s.clone()),
                    (None, Some(b64)) => Specifier::InlineBytes(decode_base64(b64).ok()?),
                    (None, None) => return None,
                };
                Some(DataSource {
                    specifier: Some(spec),
                    ..Default::default()
                })
            }),
            ..Default::default()
        }));
    } else {
        route.action = Some(Action::Route(route_action(vs, http, scope, &mut route)));
    }
    if let Some(fault) = &http.fault {
        per_filter.insert(FAULT_FILTER.to_string(), pack(&fault_config(fault)));
    }
    if let Some(cors) = &http.cors_policy {
        per_filter.insert(CORS_FILTER.to_string(), pack(&cors_config(cors)));
    }
    route.typed_per_filter_config = per_filter;
    apply_headers(http.headers.as_ref(), &mut HeaderTarget::Route(&mut route));
    route
}

fn route_action(
    vs: &Config<VirtualService>,
    http: &HttpRoute,
    scope: RouteScope<'_>,
    route: &mut Route,
) -> RouteAction {
    let ns = vs.meta.namespace.as_str();
    let ctx = scope.ctx;
    let mut action = RouteAction {
        // Istio disables Envoy's default 15s route timeout unless one is set.
        timeout: Some(http.timeout.map(|t| t.to_proto()).unwrap_or(Duration {
            seconds: 0,
            nanos: 0,
        })),
        ..Default::default()
    };
    // Istio drops zero-weight destinations when there are several.
    let dests: Vec<_> = if http.route.len() > 1 {
        http.route
            .iter()
            .filter(|d| d.weight.unwrap_or(0) > 0)
            .collect()
    } else {
        http.route.iter().collect()
    };
    if let [only] = dests.as_slice() {
        action.cluster_specifier = Some(ClusterSpecifier::Cluster(destination_cluster(
            &only.destination,
            ns,
            scope.port,
            ctx,
        )));
        // A single destination's header operations apply to the route.
        apply_headers(only.headers.as_ref(), &mut HeaderTarget::Route(route));
    } else {
        let clusters = dests
            .iter()
            .map(|d| {
                let mut cw = ClusterWeight {
                    name: destination_cluster(&d.destination, ns, scope.port, ctx),
                    weight: Some(u32_value(d.weight.unwrap_or(0).max(0) as u32)),
                    ..Default::default()
                };
                apply_headers(d.headers.as_ref(), &mut HeaderTarget::Cluster(&mut cw));
                cw
            })
            .collect();
        action.cluster_specifier = Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters,
            ..Default::default()
        }));
    }
    if vs.meta.gateway_semantics() {
        // Gateway API: a backend that did not resolve answers 500 (Istio).
        action.cluster_not_found_response_code =
            ClusterNotFoundResponseCode::InternalServerError as i32;
    }
    if let Some(rw) = &http.rewrite {
        match (&rw.uri, &route.r#match) {
            // Gateway semantics: replacing a path-separated prefix with `/`
            // removes it, keeping one `/` (Istio's regex rewrite).
            (
                Some(uri),
                Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::PathSeparatedPrefix(p)),
                    ..
                }),
            ) if uri == "/" && vs.meta.gateway_semantics() => {
                action.regex_rewrite = Some(RegexMatchAndSubstitute {
                    pattern: Some(regex_matcher(&format!("^{}(/?)(.*)", regex::escape(p)))),
                    substitution: "/\\2".into(),
                });
            }
            (Some(uri), _) => action.prefix_rewrite = uri.clone(),
            _ => {}
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(regex_matcher(&rr.pattern)),
                substitution: rr.rewrite.clone(),
            });
        }
        if let Some(a) = &rw.authority {
            action.host_rewrite_specifier =
                Some(HostRewriteSpecifier::HostRewriteLiteral(a.clone()));
        }
    }
    // `headers.request.set` of `host`/`:authority` is an authority rewrite in Istio.
    if let Some(a) = authority_override(http.headers.as_ref()) {
        action.host_rewrite_specifier = Some(HostRewriteSpecifier::HostRewriteLiteral(a));
    }
    let hash = dests
        .iter()
        .find_map(|d| consistent_hash(&d.destination, ns, scope));
    action.retry_policy = retry_policy(http.retries.as_ref(), hash.is_some());
    if let Some(h) = hash {
        action.hash_policy = vec![hash_policy(&h)];
    }
    let mirror_fraction = |pct: Option<f64>| RuntimeFractionalPercent {
        default_value: Some(match (pct, http.mirror_percent) {
            (Some(p), _) => percent_per_million(p),
            (None, Some(p)) => percent_per_hundred(p),
            (None, None) => percent_per_million(100.0),
        }),
        ..Default::default()
    };
    if let Some(m) = &http.mirror {
        action.request_mirror_policies.push(RequestMirrorPolicy {
            cluster: destination_cluster(m, ns, scope.port, ctx),
            runtime_fraction: Some(mirror_fraction(http.mirror_percentage.map(|p| p.value))),
            ..Default::default()
        });
    }
    for m in &http.mirrors {
        action.request_mirror_policies.push(RequestMirrorPolicy {
            cluster: destination_cluster(&m.destination, ns, scope.port, ctx),
            runtime_fraction: Some(mirror_fraction(Some(
                m.percentage.map(|p| p.value).unwrap_or(100.0),
            ))),
            ..Default::default()
        });
    }
    action
}

/// The consistent-hash settings of the DestinationRule in force for `d` (subset
/// and port-level settings included), as Istio's `GetConsistentHashForVirtualService`.
fn consistent_hash(
    d: &Destination,
    vs_ns: &str,
    scope: RouteScope<'_>,
) -> Option<ConsistentHashLb> {
    let ctx = scope.ctx;
    let host = ctx.config.resolve_host(&d.host, vs_ns);
    let svc = ctx.services.get(host.as_str());
    let svc_ns = svc.map(|s| s.namespace.as_str()).unwrap_or(vs_ns);
    let rule = ctx
        .config
        .destination_rule(&scope.proxy.namespace, &host, svc_ns)?;
    let port = match d.port.map(|p| p.number).filter(|n| *n != 0) {
        Some(p) => p as u16,
        None => match svc {
            Some(s) if s.ports.len() == 1 => s.ports[0].port,
            _ => scope.port as u16,
        },
    };
    let subset = rule
        .subsets
        .iter()
        .find(|s| s.name == d.subset)
        .and_then(|s| s.traffic_policy.as_ref());
    TrafficPolicy::effective(rule.traffic_policy.as_ref(), subset, port)
        .load_balancer?
        .consistent_hash
}

/// The DestinationRule policy in force for `cluster` (an `outbound|PORT|SUBSET|HOST`
/// name) as seen by `proxy`, for TCP proxies, which (unlike HTTP routes) carry
/// no destination of their own. `None` for other cluster names or without a rule.
pub fn cluster_policy(cluster: &str, proxy: &Proxy, ctx: &PushContext) -> Option<EffectivePolicy> {
    let mut parts = cluster.split('|');
    let (Some("outbound"), Some(port), Some(subset), Some(host), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let port: u16 = port.parse().ok()?;
    let svc_ns = ctx
        .services
        .get(host)
        .map(|s| s.namespace.as_str())
        .unwrap_or(&proxy.namespace);
    let rule = ctx
        .config
        .destination_rule(&proxy.namespace, host, svc_ns)?;
    let subset = rule
        .subsets
        .iter()
        .find(|s| s.name == subset)
        .and_then(|s| s.traffic_policy.as_ref());
    Some(TrafficPolicy::effective(
        rule.traffic_policy.as_ref(),
        subset,
        port,
    ))
}

fn hash_policy(ch: &ConsistentHashLb) -> HashPolicy {
    let spec = if let Some(h) = &ch.http_header_name {
        PolicySpecifier::Header(Header {
            header_name: h.clone(),
            ..Default::default()
        })
    } else if let Some(c) = &ch.http_cookie {
        PolicySpecifier::Cookie(Cookie {
            name: c.name.clone(),
            ttl: c.ttl.map(|t| t.to_proto()),
            path: c.path.clone().unwrap_or_default(),
            ..Default::default()
        })
    } else if let Some(q) = &ch.http_query_parameter_name {
        PolicySpecifier::QueryParameter(QueryParameter { name: q.clone() })
    } else {
        PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
    };
    HashPolicy {
        policy_specifier: Some(spec),
        ..Default::default()
    }
}

/// Istio's retry policy (`route/retry`): without `retries`, 2 attempts on connect
/// failure, refused stream, unavailable, cancelled and 503, avoiding the previous
/// host (unless consistent hashing picks the host); `attempts: 0` disables retries;
/// numbers in `retryOn` are retriable status codes.
pub fn retry_policy(r: Option<&HttpRetry>, consistent_hash: bool) -> Option<RetryPolicy> {
    let mut p = RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
            .into(),
        num_retries: Some(u32_value(2)),
        retriable_status_codes: vec![503],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    };
    if !consistent_hash {
        p.retry_host_predicate = vec![RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(envoy_types::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                pack(&PreviousHostsPredicate::default()),
            )),
        }];
    }
    let Some(r) = r else { return Some(p) };
    if r.attempts <= 0 {
        return None;
    }
    p.num_retries = Some(u32_value(r.attempts as u32));
    if let Some(on) = r.retry_on.as_deref().filter(|s| !s.trim().is_empty()) {
        let (codes, policies): (Vec<&str>, Vec<&str>) = on
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .partition(|s| s.parse::<u32>().is_ok());
        let mut policies: Vec<String> = policies.into_iter().map(String::from).collect();
        p.retriable_status_codes = codes.iter().filter_map(|c| c.parse().ok()).collect();
        if !p.retriable_status_codes.is_empty()
            && !policies.iter().any(|s| s == "retriable-status-codes")
        {
            policies.push("retriable-status-codes".into());
        }
        p.retry_on = policies.join(",");
    }
    p.per_try_timeout = r.per_try_timeout.map(|d| d.to_proto());
    if let Some(b) = r.backoff {
        p.retry_back_off = Some(RetryBackOff {
            base_interval: Some(b.to_proto()),
            ..Default::default()
        });
    }
    if r.retry_remote_localities == Some(true) {
        p.retry_priority = Some(RetryPriority {
            name: "envoy.retry_priorities.previous_priorities".into(),
            config_type: Some(envoy_types::pb::envoy::config::route::v3::retry_policy::retry_priority::ConfigType::TypedConfig(
                pack(&PreviousPrioritiesConfig { update_frequency: 2 }),
            )),
        });
    }
    Some(p)
}

fn redirect_code(code: u32) -> RedirectResponseCode {
    match code {
        302 => RedirectResponseCode::Found,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        _ => RedirectResponseCode::MovedPermanently,
    }
}

fn regex_matcher(re: &str) -> RegexMatcher {
    RegexMatcher {
        regex: re.to_string(),
        ..Default::default()
    }
}

/// Istio `StringMatch` -> Envoy `StringMatcher` (`None` for a presence match).
pub fn string_matcher(m: &StringMatch) -> Option<StringMatcher> {
    let pattern = match m.kind() {
        StringMatchKind::Exact(s) => MatchPattern::Exact(s.to_string()),
        StringMatchKind::Prefix(s) => MatchPattern::Prefix(s.to_string()),
        StringMatchKind::Regex(s) => MatchPattern::SafeRegex(regex_matcher(s)),
        StringMatchKind::Present => return None,
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    })
}

fn header_matcher(name: &str, m: &StringMatch, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_ascii_lowercase(),
        header_match_specifier: Some(match string_matcher(m) {
            Some(sm) => HeaderMatchSpecifier::StringMatch(sm),
            None => HeaderMatchSpecifier::PresentMatch(true),
        }),
        invert_match: invert,
        ..Default::default()
    }
}

/// Istio's gateway semantics (`model.UseGatewaySemantics`, VirtualServices
/// generated from Gateway API routes): a prefix other than `/` matches whole
/// path segments (`path_separated_prefix`, without a trailing `/`), as the
/// Gateway API's `PathPrefix` requires.
fn gateway_semantics_match(vs: &Config<VirtualService>, mut m: RouteMatch) -> RouteMatch {
    if vs.meta.gateway_semantics() {
        if let Some(PathSpecifier::Prefix(p)) = &m.path_specifier {
            if p != "/" {
                m.path_specifier = Some(PathSpecifier::PathSeparatedPrefix(
                    p.trim_end_matches('/').to_string(),
                ));
            }
        }
    }
    m
}

/// Istio `HTTPMatchRequest` -> Envoy `RouteMatch`; no match is a `/` prefix.
fn route_match(m: Option<&HttpMatchRequest>) -> RouteMatch {
    let mut out = RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix("/".into())),
        ..Default::default()
    };
    let Some(m) = m else { return out };
    if let Some(uri) = &m.uri {
        out.path_specifier = Some(match uri.kind() {
            StringMatchKind::Exact(p) => PathSpecifier::Path(p.to_string()),
            StringMatchKind::Prefix(p) => PathSpecifier::Prefix(p.to_string()),
            // Envoy ignores `case_sensitive` for regexes: RE2's `(?i)` flag does it.
            StringMatchKind::Regex(r) if m.ignore_uri_case => {
                PathSpecifier::SafeRegex(regex_matcher(&format!("(?i){r}")))
            }
            StringMatchKind::Regex(r) => PathSpecifier::SafeRegex(regex_matcher(r)),
            StringMatchKind::Present => PathSpecifier::Prefix("/".into()),
        });
    }
    if m.ignore_uri_case {
        out.case_sensitive = Some(bool_value(false));
    }
    for (name, sm) in [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ] {
        if let Some(sm) = sm {
            out.headers.push(header_matcher(name, sm, false));
        }
    }
    for (name, sm) in &m.headers {
        out.headers.push(header_matcher(name, sm, false));
    }
    for (name, sm) in &m.without_headers {
        out.headers.push(header_matcher(name, sm, true));
    }
    for (name, sm) in &m.query_params {
        out.query_parameters.push(QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: Some(match string_matcher(sm) {
                Some(s) => QueryParameterMatchSpecifier::StringMatch(s),
                None => QueryParameterMatchSpecifier::PresentMatch(true),
            }),
        });
    }
    out
}

fn fault_config(f: &crate::model::istio::virtual_service::HttpFaultInjection) -> HttpFault {
    let pct = |p: Option<f64>, legacy: Option<i32>| match (p, legacy) {
        (Some(p), _) => percent_per_million(p),
        (None, Some(l)) => percent_per_hundred(l.max(0) as u32),
        (None, None) => percent_per_million(100.0),
    };
    HttpFault {
        delay: f.delay.as_ref().map(|d| FaultDelay {
            fault_delay_secifier: d
                .fixed_delay
                .map(|fd| fault_delay::FaultDelaySecifier::FixedDelay(fd.to_proto())),
            percentage: Some(pct(d.percentage.map(|p| p.value), d.percent)),
            ..Default::default()
        }),
        abort: f.abort.as_ref().map(|a| FaultAbort {
            error_type: match (
                a.http_status,
                a.grpc_status.as_deref().and_then(grpc_status_code),
            ) {
                (Some(s), _) => Some(fault_abort::ErrorType::HttpStatus(s as u32)),
                (None, Some(g)) => Some(fault_abort::ErrorType::GrpcStatus(g)),
                (None, None) => None,
            },
            percentage: Some(pct(a.percentage.map(|p| p.value), None)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn cors_config(c: &CorsPolicy) -> EnvoyCors {
    let mut origins: Vec<StringMatcher> = c
        .allow_origin
        .iter()
        .map(|o| StringMatcher {
            match_pattern: Some(MatchPattern::Exact(o.clone())),
            ignore_case: false,
        })
        .collect();
    origins.extend(c.allow_origins.iter().filter_map(string_matcher));
    EnvoyCors {
        allow_origin_string_match: origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .map(|d| d.whole_seconds().to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials.map(bool_value),
        forward_not_matching_preflights: match c.unmatched_preflights.as_deref() {
            Some("FORWARD") => Some(bool_value(true)),
            Some("IGNORE") => Some(bool_value(false)),
            _ => None,
        },
        ..Default::default()
    }
}

/// Where header operations land: the route, or one weighted cluster.
enum HeaderTarget<'a> {
    Route(&'a mut Route),
    Cluster(&'a mut ClusterWeight),
}

fn is_authority(h: &str) -> bool {
    h.eq_ignore_ascii_case(":authority") || h.eq_ignore_ascii_case("host")
}

fn authority_override(h: Option<&Headers>) -> Option<String> {
    h?.request
        .as_ref()?
        .set
        .iter()
        .find(|(k, _)| is_authority(k))
        .map(|(_, v)| v.clone())
}

fn header_options(ops: &HeaderOperations, skip_authority: bool) -> Vec<HeaderValueOption> {
    let opt = |k: &String, v: &String, action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: k.clone(),
            value: v.clone(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    let mut out: Vec<HeaderValueOption> = ops
        .set
        .iter()
        .filter(|(k, _)| !(skip_authority && is_authority(k)))
        .map(|(k, v)| opt(k, v, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .collect();
    out.extend(
        ops.add
            .iter()
            .map(|(k, v)| opt(k, v, HeaderAppendAction::AppendIfExistsOrAdd)),
    );
    out
}

/// Istio `Headers`: `set` overwrites, `add` appends, `remove` removes; a request
/// `set` of the authority is a host rewrite instead (done by the caller).
fn apply_headers(h: Option<&Headers>, target: &mut HeaderTarget<'_>) {
    let Some(h) = h else { return };
    let req = h.request.as_ref();
    let resp = h.response.as_ref();
    let req_add = req.map(|o| header_options(o, true)).unwrap_or_default();
    let req_rm = req.map(|o| o.remove.clone()).unwrap_or_default();
    let resp_add = resp.map(|o| header_options(o, false)).unwrap_or_default();
    let resp_rm = resp.map(|o| o.remove.clone()).unwrap_or_default();
    match target {
        HeaderTarget::Route(r) => {
            r.request_headers_to_add.extend(req_add);
            r.request_headers_to_remove.extend(req_rm);
            r.response_headers_to_add.extend(resp_add);
            r.response_headers_to_remove.extend(resp_rm);
        }
        HeaderTarget::Cluster(c) => {
            c.request_headers_to_add.extend(req_add);
            c.request_headers_to_remove.extend(req_rm);
            c.response_headers_to_add.extend(resp_add);
            c.response_headers_to_remove.extend(resp_rm);
            if let Some(a) = authority_override(Some(h)) {
                c.host_rewrite_specifier =
                    Some(cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(a));
            }
        }
    }
}

/// The route a sidecar gives a service no VirtualService claims (Istio's
/// `BuildDefaultHTTPOutboundRoute`): everything to `outbound|PORT||HOST`, route
/// timeout disabled, Istio's default retries, and the DestinationRule's
/// consistent-hash key when it has one.
pub fn default_route(host: &str, port: u32, scope: RouteScope<'_>) -> Route {
    let d = Destination {
        host: host.to_string(),
        subset: String::new(),
        port: Some(crate::model::istio::PortSelector { number: port }),
    };
    let hash = consistent_hash(&d, "", scope);
    Route {
        name: "default".into(),
        r#match: Some(route_match(None)),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster_name(
                port as u16,
                "",
                host,
            ))),
            timeout: Some(Duration {
                seconds: 0,
                nanos: 0,
            }),
            retry_policy: retry_policy(None, hash.is_some()),
            hash_policy: hash.iter().map(hash_policy).collect(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Istio's catch-all test: prefix `/` (or regex `*`) with no header or query
/// conditions.
fn is_catch_all(r: &Route) -> bool {
    let Some(m) = &r.r#match else { return false };
    let catch_path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => p == "/",
        Some(PathSpecifier::SafeRegex(re)) => re.regex == "*" || re.regex == ".*",
        _ => false,
    };
    catch_path && m.headers.is_empty() && m.query_parameters.is_empty()
}

/// Istio's `SortVHostRoutes`: catch-all routes move to the end, keeping the
/// relative order of everything else. Used when several VirtualServices merge
/// into one virtual host (their routes concatenated oldest first).
pub fn sort_catch_all_last(routes: Vec<Route>) -> Vec<Route> {
    let (catch_all, rest): (Vec<Route>, Vec<Route>) = routes.into_iter().partition(is_catch_all);
    rest.into_iter().chain(catch_all).collect()
}

/// A virtual host named `host:port` answering for `host` with and without
/// `:port` (just `*` for the wildcard host).
pub fn virtual_host(host: &str, port: u32, routes: Vec<Route>) -> VirtualHost {
    let domains = if host == "*" {
        vec!["*".to_string()]
    } else {
        vec![host.to_string(), format!("{host}:{port}")]
    };
    VirtualHost {
        name: format!("{host}:{port}"),
        domains,
        routes,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::istio::virtual_service::HttpRetry;
    use crate::model::istio::IstioDuration;

    #[test]
    fn default_retry_policy_is_istios() {
        let p = retry_policy(None, false).unwrap();
        assert_eq!(p.num_retries, Some(u32_value(2)));
        assert_eq!(p.retriable_status_codes, vec![503]);
        assert_eq!(p.retry_host_predicate.len(), 1);
        assert!(retry_policy(None, true)
            .unwrap()
            .retry_host_predicate
            .is_empty());
        let off = HttpRetry {
            attempts: 0,
            ..Default::default()
        };
        assert!(retry_policy(Some(&off), false).is_none());
    }

    #[test]
    fn retry_on_numbers_become_status_codes() {
        let r = HttpRetry {
            attempts: 3,
            per_try_timeout: Some(IstioDuration::from_millis(500)),
            retry_on: Some("5xx,502,connect-failure".into()),
            ..Default::default()
        };
        let p = retry_policy(Some(&r), false).unwrap();
        assert_eq!(p.retry_on, "5xx,connect-failure,retriable-status-codes");
        assert_eq!(p.retriable_status_codes, vec![502]);
        assert_eq!(p.num_retries, Some(u32_value(3)));
        assert_eq!(p.per_try_timeout.unwrap().nanos, 500_000_000);
    }

    #[test]
    fn catch_all_moves_last() {
        let r = |prefix: &str, name: &str| Route {
            name: name.into(),
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix(prefix.into())),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sorted = sort_catch_all_last(vec![
            r("/", "a-all"),
            r("/x", "a-x"),
            r("/", "b-all"),
            r("/y", "b-y"),
        ]);
        let names: Vec<_> = sorted.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a-x", "b-y", "a-all", "b-all"]);
    }

    #[test]
    fn ignore_uri_case_reaches_regexes() {
        let m = |uri: StringMatch| HttpMatchRequest {
            uri: Some(uri),
            ignore_uri_case: true,
            ..Default::default()
        };
        let re = route_match(Some(&m(StringMatch {
            regex: Some("/api/v[0-9]+".into()),
            ..Default::default()
        })));
        match re.path_specifier {
            Some(PathSpecifier::SafeRegex(r)) => assert_eq!(r.regex, "(?i)/api/v[0-9]+"),
            other => panic!("{other:?}"),
        }
        let prefix = route_match(Some(&m(StringMatch {
            prefix: Some("/API".into()),
            ..Default::default()
        })));
        assert_eq!(prefix.case_sensitive, Some(bool_value(false)));
        assert_eq!(
            prefix.path_specifier,
            Some(PathSpecifier::Prefix("/API".into()))
        );
    }

    #[test]
    fn domains_with_and_without_port() {
        let v = virtual_host("cluster1.imroc.cc", 80, vec![]);
        assert_eq!(v.domains, ["cluster1.imroc.cc", "cluster1.imroc.cc:80"]);
        assert_eq!(virtual_host("*", 80, vec![]).domains, ["*"]);
    }
}
