//! Distributed tracing as istiod's `pilot/pkg/networking/core/tracing.go`
//! configures it, from the mesh file's tracing provider
//! (`config::tracing::Tracing`) under the Telemetry API's `tracing` overrides
//! (`model::istio::telemetry`, istiod's `Telemetries.Tracing`): a CLIENT spec
//! for a gateway's and a sidecar's outbound listeners and a SERVER spec for a
//! sidecar's inbound ones, each with its provider, `disableSpanReporting`,
//! sampling, custom tags and `useRequestIdForTraceSampling`;
//!
//! - every HTTP connection manager of a gateway or sidecar (inbound and
//!   outbound) gets `tracing` with the provider (`envoy.tracers.zipkin`, or
//!   `envoy.tracers.opentelemetry` over gRPC or OTLP/HTTP), Istio's sampling
//!   (`client_sampling` 100 %, `random_sampling` the mesh's percentage,
//!   `overall_sampling` 100 %), Istio's service tags (`istio.canonical_service`,
//!   `istio.canonical_revision`, `istio.namespace`, `istio.mesh_id`) and the
//!   mesh's custom tags; gateways spawn an upstream span (Istio's
//!   `PILOT_SPAWN_UPSTREAM_SPAN_FOR_GATEWAY`, on by default);
//! - routes to one `outbound|PORT|SUBSET|HOST` cluster carry a decorator naming
//!   the span `HOST:PORT/PATH*` (istiod's `getRouteOperation`);
//! - the collector is reached through the mesh service's cluster
//!   `outbound|PORT||SERVICE` when the proxy already has it, else through a
//!   STRICT_DNS cluster of that name resolving `SERVICE`.
//!
//! Trace context: the Zipkin tracer reads and writes B3 (`x-b3-*`) headers,
//! the OpenTelemetry tracer W3C `traceparent`/`tracestate`. Applications must
//! copy them from each request they receive to the requests it causes, as
//! Istio requires.
//!
//! Everything read here is a class field (role, namespace, labels), the mesh
//! or the Istio config.

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType, DnsLookupFamily},
    Cluster,
};
use envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::core::v3::{
    grpc_service::{EnvoyGrpc, TargetSpecifier},
    GrpcService, HttpService, HttpUri,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{filter::ConfigType, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route::Action, route_action::ClusterSpecifier, route_match::PathSpecifier, Decorator,
    RouteConfiguration,
};
use envoy_types::pb::envoy::config::trace::v3::{
    tracing::{http::ConfigType as TracerConfig, Http as TracingHttp},
    zipkin_config::CollectorEndpointVersion,
    OpenTelemetryConfig, ZipkinConfig,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{RouteSpecifier, Tracing as HcmTracing},
    HttpConnectionManager, RequestIdExtension,
};
use envoy_types::pb::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig;
use envoy_types::pb::envoy::r#type::tracing::v3::{custom_tag, CustomTag as EnvoyTag};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::Duration;
use prost::Message;

use super::listener::HCM_FILTER;
use super::proto::{bool_value, cluster_name, pack, socket_address, u32_value};
use super::Generated;
use crate::config::tracing::{CustomTag, Tracing, TracingKind, TracingProvider};
use crate::model::istio::telemetry::{self, WorkloadMode};
use crate::model::{Proxy, ProxyRole, PushContext};

pub const ZIPKIN_TRACER: &str = "envoy.tracers.zipkin";
pub const OTEL_TRACER: &str = "envoy.tracers.opentelemetry";

/// istiod's `TracingSpec`: what one side (CLIENT or SERVER) of a proxy gets.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSpec<'a> {
    /// `None`: no provider named (or the one named is not a tracing provider
    /// of the mesh file): no tracing on this side, as in Istio.
    pub provider: Option<&'a TracingProvider>,
    /// `disableSpanReporting`: no `tracing` on this side's connection managers.
    pub disabled: bool,
    /// Percent: a Telemetry's `randomSamplingPercentage`,
    /// else the mesh's `defaultConfig.tracing.sampling`.
    pub sampling: f64,
    /// A Telemetry's `customTags`; empty: the mesh's
    /// `defaultConfig.tracing.customTags` (istiod's `configureCustomTags`,
    /// so `customTags: {}` also falls back to them).
    pub custom_tags: BTreeMap<String, CustomTag>,
    /// A Telemetry's `useRequestIdForTraceSampling` (Envoy's default, true,
    /// when no Telemetry sets it).
    pub use_request_id_for_trace_sampling: Option<bool>,
}

impl TracingSpec<'_> {
    fn enabled(&self) -> bool {
        self.provider.is_some() && !self.disabled
    }
}

/// istiod's `Telemetries.Tracing`: the mesh default, then each Telemetry
/// override in force for the proxy (root namespace, namespace, workload) on
/// the sides its `match.mode` names. Returns (CLIENT, SERVER).
pub fn specs<'a>(
    t: &'a Tracing,
    overrides: &[&telemetry::Tracing],
) -> (TracingSpec<'a>, TracingSpec<'a>) {
    let base = TracingSpec {
        provider: t.provider.as_ref(),
        disabled: false,
        sampling: t.sampling_percent(),
        custom_tags: BTreeMap::new(),
        use_request_id_for_trace_sampling: None,
    };
    let (mut client, mut server) = (base.clone(), base);
    for o in overrides {
        let mode = o.match_.as_ref().map(|m| m.mode).unwrap_or_default();
        let sides: Vec<&mut TracingSpec<'a>> = match mode {
            WorkloadMode::ClientAndServer => vec![&mut client, &mut server],
            WorkloadMode::Client => vec![&mut client],
            WorkloadMode::Server => vec![&mut server],
        };
        for spec in sides {
            if let Some(first) = o.providers.first() {
                // An unknown name leaves the side without a provider (Istio's
                // `fetchProvider` returns nil).
                spec.provider = t.providers.get(&first.name);
            }
            if let Some(d) = o.disable_span_reporting {
                spec.disabled = d;
            }
            if let Some(tags) = &o.custom_tags {
                spec.custom_tags = tags
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), tag(v)?)))
                    .collect();
            }
            if let Some(p) = o.random_sampling_percentage {
                spec.sampling = p;
            }
            if let Some(u) = o.use_request_id_for_trace_sampling {
                spec.use_request_id_for_trace_sampling = Some(u);
            }
        }
    }
    (client, server)
}

/// A validated Telemetry custom tag (exactly one kind set).
fn tag(t: &telemetry::CustomTag) -> Option<CustomTag> {
    match (&t.literal, &t.environment, &t.header) {
        (Some(l), None, None) => Some(CustomTag::Literal(l.value.clone())),
        (None, Some(e), None) => Some(CustomTag::Environment {
            name: e.name.clone(),
            default: e.default_value.clone(),
        }),
        (None, None, Some(h)) => Some(CustomTag::Header {
            name: h.name.clone(),
            default: h.default_value.clone(),
        }),
        _ => None,
    }
}

/// Apply the mesh's tracing, under the Telemetry objects in force for the
/// proxy, to a gateway's or sidecar's generated config.
pub fn apply(g: &mut Generated, proxy: &Proxy, ctx: &PushContext) {
    let Some(t) = &ctx.mesh.tracing else {
        return;
    };
    let (role, namespace, labels) = (proxy.role, proxy.namespace.as_str(), &proxy.labels);
    let overrides = ctx.config.tracing_telemetry(namespace, labels);
    let (client, server) = specs(t, &overrides);
    if !client.enabled() && !server.enabled() {
        return;
    }
    let canonical = canonical_service(labels);
    // Istio's service cluster of a proxy: `CANONICAL.NAMESPACE`.
    let service_name = format!("{canonical}.{namespace}");
    let mut built: Vec<Option<(HcmTracing, Option<RequestIdExtension>)>> = Vec::new();
    for spec in [&client, &server] {
        let Some(p) = spec.provider.filter(|_| spec.enabled()) else {
            built.push(None);
            continue;
        };
        let collector = collector_cluster(g, p, proxy, ctx);
        let tags = if spec.custom_tags.is_empty() {
            &t.custom_tags
        } else {
            &spec.custom_tags
        };
        let tracing = hcm_tracing(
            p,
            spec.sampling,
            tags,
            t.max_path_tag_length,
            &collector,
            &service_name,
            role,
            namespace,
            labels,
            ctx,
        );
        let rid = spec
            .use_request_id_for_trace_sampling
            .map(|u| RequestIdExtension {
                typed_config: Some(pack(&UuidRequestIdConfig {
                    pack_trace_reason: None,
                    use_request_id_for_trace_sampling: Some(bool_value(u)),
                })),
            });
        built.push(Some((tracing, rid)));
    }
    for l in &mut g.listeners {
        // istiod: a sidecar's inbound listeners get the SERVER spec, a
        // gateway's and a sidecar's outbound listeners the CLIENT spec.
        let inbound =
            role != ProxyRole::Gateway && l.traffic_direction == TrafficDirection::Inbound as i32;
        if let Some((tracing, rid)) = &built[usize::from(inbound)] {
            set_listener_tracing(l, tracing, rid.as_ref());
        }
    }
    for r in &mut g.routes {
        decorate_routes(r);
    }
}

/// The collector's cluster `outbound|PORT||SERVICE`, added to `g` when the
/// proxy does not have it yet.
fn collector_cluster(
    g: &mut Generated,
    p: &TracingProvider,
    proxy: &Proxy,
    ctx: &PushContext,
) -> String {
    let namespace = proxy.namespace.as_str();
    let collector = cluster_name(p.port, "", &p.service);
    if !g.clusters.iter().any(|c| c.name == collector) {
        // A mesh service outside the proxy's scope: its own (EDS) cluster.
        let mesh = ctx
            .services
            .get(p.service.as_str())
            .filter(|svc| svc.port(p.port).is_some())
            .filter(|svc| ctx.config.service_visible(svc, namespace))
            .and_then(|svc| {
                super::cluster::service_clusters(svc, namespace, ctx, super::has_identity(proxy))
                    .into_iter()
                    .find(|c| c.name == collector)
            });
        g.clusters.push(mesh.unwrap_or_else(|| {
            let grpc = matches!(p.kind, TracingKind::OpenTelemetry { http: None });
            dns_cluster(&collector, &p.service, p.port, grpc)
        }));
    }
    collector
}

/// Istio's canonical service of a workload: `service.istio.io/canonical-name`,
/// else `app.kubernetes.io/name`, else `app`, else `unknown` (no pod name in a
/// class).
fn canonical_service(labels: &std::collections::BTreeMap<String, String>) -> String {
    [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ]
    .iter()
    .find_map(|k| labels.get(*k).cloned())
    .unwrap_or_else(|| "unknown".into())
}

fn canonical_revision(labels: &std::collections::BTreeMap<String, String>) -> String {
    [
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ]
    .iter()
    .find_map(|k| labels.get(*k).cloned())
    .unwrap_or_else(|| "latest".into())
}

fn literal(tag: &str, value: String) -> EnvoyTag {
    EnvoyTag {
        tag: tag.into(),
        r#type: Some(custom_tag::Type::Literal(custom_tag::Literal { value })),
    }
}

/// The HCM `tracing` block (istiod's `configureTracingFromTelemetry`).
#[allow(clippy::too_many_arguments)]
pub fn hcm_tracing(
    p: &TracingProvider,
    sampling_percent: f64,
    tags: &BTreeMap<String, CustomTag>,
    max_path_tag_length: Option<u32>,
    collector: &str,
    service_name: &str,
    role: ProxyRole,
    namespace: &str,
    labels: &std::collections::BTreeMap<String, String>,
    ctx: &PushContext,
) -> HcmTracing {
    let provider = match &p.kind {
        TracingKind::Zipkin {
            trace_id_128bit,
            path,
        } => TracingHttp {
            name: ZIPKIN_TRACER.into(),
            config_type: Some(TracerConfig::TypedConfig(pack(&ZipkinConfig {
                collector_cluster: collector.into(),
                collector_endpoint: path.clone(),
                collector_endpoint_version: CollectorEndpointVersion::HttpJson as i32,
                collector_hostname: p.service.clone(),
                trace_id_128bit: *trace_id_128bit,
                // Istio: each proxy reports its own server and client spans.
                shared_span_context: Some(bool_value(false)),
                ..Default::default()
            }))),
        },
        TracingKind::OpenTelemetry { http } => {
            let mut cfg = OpenTelemetryConfig {
                service_name: service_name.into(),
                ..Default::default()
            };
            match http {
                None => {
                    cfg.grpc_service = Some(GrpcService {
                        target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                            cluster_name: collector.into(),
                            authority: p.service.clone(),
                            ..Default::default()
                        })),
                        ..Default::default()
                    })
                }
                Some((path, timeout)) => {
                    cfg.http_service = Some(HttpService {
                        http_uri: Some(HttpUri {
                            uri: format!("http://{}:{}{}", p.service, p.port, path),
                            timeout: Some(duration(*timeout)),
                            http_upstream_type: Some(HttpUpstreamType::Cluster(collector.into())),
                        }),
                        ..Default::default()
                    })
                }
            }
            TracingHttp {
                name: OTEL_TRACER.into(),
                config_type: Some(TracerConfig::TypedConfig(pack(&cfg))),
            }
        }
    };
    let mut custom_tags = vec![
        literal("istio.canonical_revision", canonical_revision(labels)),
        literal("istio.canonical_service", canonical_service(labels)),
        literal("istio.mesh_id", ctx.mesh.trust_domain.clone()),
        literal("istio.namespace", namespace.into()),
    ];
    for (tag, v) in tags {
        let ty = match v {
            CustomTag::Literal(value) => custom_tag::Type::Literal(custom_tag::Literal {
                value: value.clone(),
            }),
            CustomTag::Environment { name, default } => {
                custom_tag::Type::Environment(custom_tag::Environment {
                    name: name.clone(),
                    default_value: default.clone(),
                })
            }
            CustomTag::Header { name, default } => {
                custom_tag::Type::RequestHeader(custom_tag::Header {
                    name: name.clone(),
                    default_value: default.clone(),
                })
            }
        };
        custom_tags.push(EnvoyTag {
            tag: tag.clone(),
            r#type: Some(ty),
        });
    }
    let hundred = || Some(Percent { value: 100.0 });
    HcmTracing {
        client_sampling: hundred(),
        random_sampling: Some(Percent {
            value: sampling_percent,
        }),
        overall_sampling: hundred(),
        custom_tags,
        max_path_tag_length: max_path_tag_length.map(u32_value),
        provider: Some(provider),
        spawn_upstream_span: (role == ProxyRole::Gateway).then(|| bool_value(true)),
        ..Default::default()
    }
}

fn duration(d: StdDuration) -> Duration {
    Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// The collector's cluster when the proxy has no mesh cluster of that name:
/// STRICT_DNS on `service:port`; HTTP/2 for an OTLP/gRPC collector.
fn dns_cluster(name: &str, service: &str, port: u16, grpc: bool) -> Cluster {
    use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
        http_protocol_options::{
            explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
        },
        HttpProtocolOptions,
    };
    let typed_extension_protocol_options = if grpc {
        let opts = HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    )),
                },
            )),
            ..Default::default()
        };
        std::collections::HashMap::from([(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            pack(&opts),
        )])
    } else {
        Default::default()
    };
    Cluster {
        typed_extension_protocol_options,
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32)),
        dns_lookup_family: DnsLookupFamily::V4Only as i32,
        connect_timeout: Some(Duration {
            seconds: 10,
            nanos: 0,
        }),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket_address(service, u32::from(port))),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Set `tracing` on every HTTP connection manager of the listener (and the
/// decorators of its inline routes).
fn set_listener_tracing(l: &mut Listener, tracing: &HcmTracing, rid: Option<&RequestIdExtension>) {
    let chains = l
        .filter_chains
        .iter_mut()
        .chain(l.default_filter_chain.iter_mut());
    for chain in chains {
        for f in &mut chain.filters {
            if f.name != HCM_FILTER {
                continue;
            }
            let Some(ConfigType::TypedConfig(any)) = &mut f.config_type else {
                continue;
            };
            let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
                continue;
            };
            hcm.tracing = Some(tracing.clone());
            if let Some(rid) = rid {
                hcm.request_id_extension = Some(rid.clone());
            }
            if let Some(RouteSpecifier::RouteConfig(rc)) = &mut hcm.route_specifier {
                decorate_routes(rc);
            }
            *any = pack(&hcm);
        }
    }
}

/// istiod's `getRouteOperation`: a route to one `outbound|PORT|SUBSET|HOST`
/// cluster names its span `HOST:PORT` + the match's path (`PREFIX*`, the exact
/// path or the regex; `/*` without one). Routes to weighted clusters or other
/// clusters keep Envoy's default span name.
fn decorate_routes(rc: &mut RouteConfiguration) {
    for vh in &mut rc.virtual_hosts {
        for r in &mut vh.routes {
            if r.decorator.is_some() {
                continue;
            }
            let Some(Action::Route(action)) = &r.action else {
                continue;
            };
            let Some(ClusterSpecifier::Cluster(c)) = &action.cluster_specifier else {
                continue;
            };
            let mut parts = c.splitn(4, '|');
            let (Some("outbound"), Some(port), Some(_subset), Some(host)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let path = match r.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()) {
                Some(PathSpecifier::Prefix(p)) => format!("{p}*"),
                Some(PathSpecifier::Path(p)) => p.clone(),
                Some(PathSpecifier::SafeRegex(re)) => re.regex.clone(),
                _ => "/*".into(),
            };
            r.decorator = Some(Decorator {
                operation: format!("{host}:{port}{path}"),
                ..Default::default()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::istio::telemetry::{ProviderRef, TracingSelector};

    fn mesh() -> Tracing {
        let p = |name: &str| TracingProvider {
            name: name.into(),
            service: format!("{name}.obs"),
            port: 9411,
            kind: TracingKind::Zipkin {
                trace_id_128bit: true,
                path: "/api/v2/spans".into(),
            },
        };
        Tracing {
            provider: Some(p("zipkin")),
            providers: BTreeMap::from([
                ("zipkin".into(), p("zipkin")),
                ("other".into(), p("other")),
            ]),
            sampling_centi_percent: 100,
            custom_tags: BTreeMap::from([("env".into(), CustomTag::Literal("prod".into()))]),
            max_path_tag_length: None,
        }
    }

    fn over(mode: WorkloadMode, provider: Option<&str>) -> telemetry::Tracing {
        telemetry::Tracing {
            match_: Some(TracingSelector { mode }),
            providers: provider
                .map(|n| vec![ProviderRef { name: n.into() }])
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    #[test]
    fn overrides_apply_in_order_to_the_sides_their_mode_names() {
        let t = mesh();
        // No Telemetry: the mesh default on both sides.
        let (c, s) = specs(&t, &[]);
        assert_eq!(
            (c.provider.map(|p| p.name.as_str()), c.sampling),
            (Some("zipkin"), 1.0)
        );
        assert_eq!(c, s);
        // CLIENT only: the server side keeps the default.
        let mut a = over(WorkloadMode::Client, Some("other"));
        a.random_sampling_percentage = Some(30.0);
        let (c, s) = specs(&t, &[&a]);
        assert_eq!(
            (c.provider.unwrap().name.as_str(), c.sampling),
            ("other", 30.0)
        );
        assert_eq!(
            (s.provider.unwrap().name.as_str(), s.sampling),
            ("zipkin", 1.0)
        );
        // A later SERVER override disables span reporting there only.
        let mut b = over(WorkloadMode::Server, None);
        b.disable_span_reporting = Some(true);
        let (c, s) = specs(&t, &[&a, &b]);
        assert!(c.enabled() && !s.enabled());
        // Custom tags replace the mesh's.
        let mut d = over(WorkloadMode::ClientAndServer, None);
        d.custom_tags = Some(BTreeMap::from([(
            "team".to_string(),
            telemetry::CustomTag {
                literal: Some(telemetry::Literal {
                    value: "shop".into(),
                }),
                ..Default::default()
            },
        )]));
        let (c, _) = specs(&t, &[&d]);
        assert_eq!(
            c.custom_tags,
            BTreeMap::from([("team".into(), CustomTag::Literal("shop".into()))])
        );
        // A provider name that is not a tracing provider: no tracing on that side.
        let e = over(WorkloadMode::ClientAndServer, Some("nope"));
        let (c, s) = specs(&t, &[&e]);
        assert!(!c.enabled() && !s.enabled());
    }
}
