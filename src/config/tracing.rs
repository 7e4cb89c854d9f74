//! Istio's meshConfig tracing settings: `extensionProviders` (the tracing
//! kinds `opentelemetry` and `zipkin`), `defaultProviders.tracing`,
//! `enableTracing` and `defaultConfig.tracing` (`sampling`, `customTags`,
//! `maxPathTagLength`), read into a [`Tracing`] the translation applies to
//! every gateway's and sidecar's HTTP connection managers
//! (`translate::tracing`), under the Telemetry API's overrides
//! (`model::istio::telemetry`), which name providers of [`Tracing::providers`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// `extensionProviders[]` as written. Kinds other than the two tracing ones
/// are rejected by name (crossmesh reads no other provider).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExtensionProviderFile {
    name: String,
    opentelemetry: Option<OpenTelemetryFile>,
    zipkin: Option<ZipkinFile>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OpenTelemetryFile {
    service: String,
    port: u32,
    http: Option<OtelHttpFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OtelHttpFile {
    path: Option<String>,
    timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ZipkinFile {
    service: String,
    port: u32,
    #[serde(rename = "enable64bitTraceId")]
    enable_64bit_trace_id: Option<bool>,
    path: Option<String>,
}

/// `defaultProviders:` as written; only `tracing` is read.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DefaultProvidersFile {
    #[serde(default)]
    tracing: Vec<String>,
}

/// `defaultConfig.tracing:` as written (ProxyConfig's `Tracing`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ProxyTracingFile {
    sampling: Option<f64>,
    #[serde(default, alias = "custom_tags")]
    custom_tags: BTreeMap<String, CustomTagFile>,
    max_path_tag_length: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CustomTagFile {
    literal: Option<LiteralFile>,
    environment: Option<NamedFile>,
    header: Option<NamedFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LiteralFile {
    value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NamedFile {
    name: String,
    default_value: Option<String>,
}

/// The mesh's tracing: the default every gateway and sidecar HTTP connection
/// manager carries, and the providers a Telemetry may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracing {
    /// `defaultProviders.tracing`; `None` when it names none or
    /// `enableTracing` is false: only a Telemetry then turns tracing on.
    pub provider: Option<TracingProvider>,
    /// Every tracing provider of `extensionProviders`, by name.
    pub providers: BTreeMap<String, TracingProvider>,
    /// `defaultConfig.tracing.sampling` in hundredths of a percent (Istio's
    /// precision is 0.01 %): 0..=10000; Istio's default is 1 % (100).
    pub sampling_centi_percent: u32,
    pub custom_tags: BTreeMap<String, CustomTag>,
    /// `defaultConfig.tracing.maxPathTagLength` (Envoy's default 256 when unset).
    pub max_path_tag_length: Option<u32>,
}

impl Tracing {
    /// The sampling percentage as Envoy's `Percent` value.
    pub fn sampling_percent(&self) -> f64 {
        f64::from(self.sampling_centi_percent) / 100.0
    }
}

/// One `extensionProviders[]` entry of a tracing kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracingProvider {
    pub name: String,
    /// The collector's host: a mesh service's hostname, or a DNS name.
    pub service: String,
    pub port: u16,
    pub kind: TracingKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TracingKind {
    /// OTLP over gRPC (no `http`), or over HTTP to `path` (default
    /// `/v1/traces`) with `timeout` (Istio's default 3 s... Envoy's HttpUri
    /// requires one).
    OpenTelemetry { http: Option<(String, Duration)> },
    /// Zipkin v2 JSON to `path` (default `/api/v2/spans`), B3 propagation.
    Zipkin { trace_id_128bit: bool, path: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomTag {
    Literal(String),
    Environment { name: String, default: String },
    Header { name: String, default: String },
}

/// Istio's default `defaultConfig.tracing.sampling` (`PILOT_TRACE_SAMPLING`): 1 %.
pub const DEFAULT_SAMPLING_CENTI_PERCENT: u32 = 100;

/// The tracing the mesh file asks for, checked; `Ok(None)` when
/// `extensionProviders` has no tracing provider (nothing to trace to).
pub(crate) fn tracing(
    enable: Option<bool>,
    providers: Vec<ExtensionProviderFile>,
    defaults: Option<DefaultProvidersFile>,
    proxy: Option<ProxyTracingFile>,
) -> Result<Option<Tracing>, String> {
    let mut by_name: BTreeMap<String, TracingProvider> = BTreeMap::new();
    let mut names = std::collections::BTreeSet::new();
    for p in providers {
        if !names.insert(p.name.clone()) {
            return Err(format!("extensionProviders: name {:?} twice", p.name));
        }
        if let Some(k) = p.other.keys().next() {
            return Err(format!(
                "extensionProviders[{:?}]: kind {k:?} is not supported (only opentelemetry and \
                 zipkin tracing providers are)",
                p.name
            ));
        }
        let provider = match (p.opentelemetry, p.zipkin) {
            (Some(o), None) => TracingProvider {
                service: o.service,
                port: port(&p.name, o.port)?,
                kind: TracingKind::OpenTelemetry {
                    http: match o.http {
                        None => None,
                        Some(h) => {
                            let path = h.path.unwrap_or_else(|| "/v1/traces".into());
                            let timeout = match h.timeout.as_deref() {
                                None => Duration::from_secs(3),
                                Some(t) => super::parse_duration(t).map_err(|e| {
                                    format!(
                                        "extensionProviders[{:?}].opentelemetry.http.timeout: {e}",
                                        p.name
                                    )
                                })?,
                            };
                            Some((abs_path(&p.name, path)?, timeout))
                        }
                    },
                },
                name: p.name.clone(),
            },
            (None, Some(z)) => TracingProvider {
                service: z.service,
                port: port(&p.name, z.port)?,
                kind: TracingKind::Zipkin {
                    // Istio's `enable64bitTraceId` defaults to false: 128-bit ids.
                    trace_id_128bit: !z.enable_64bit_trace_id.unwrap_or(false),
                    path: abs_path(&p.name, z.path.unwrap_or_else(|| "/api/v2/spans".into()))?,
                },
                name: p.name.clone(),
            },
            _ => {
                return Err(format!(
                    "extensionProviders[{:?}]: exactly one of opentelemetry, zipkin must be set",
                    p.name
                ))
            }
        };
        if provider.service.is_empty() || provider.service.contains(['/', ' ', ':']) {
            return Err(format!(
                "extensionProviders[{:?}]: service {:?} is not a hostname",
                p.name, provider.service
            ));
        }
        by_name.insert(p.name, provider);
    }
    let proxy = proxy.unwrap_or_default();
    let sampling = match proxy.sampling {
        None => DEFAULT_SAMPLING_CENTI_PERCENT,
        Some(s) if (0.0..=100.0).contains(&s) => (s * 100.0).round() as u32,
        Some(s) => {
            return Err(format!(
                "defaultConfig.tracing.sampling {s} is not a percentage between 0 and 100"
            ))
        }
    };
    let mut custom_tags = BTreeMap::new();
    for (tag, t) in proxy.custom_tags {
        let why = || format!("defaultConfig.tracing.customTags[{tag:?}]");
        let v = match (t.literal, t.environment, t.header) {
            (Some(l), None, None) => CustomTag::Literal(l.value),
            (None, Some(e), None) if !e.name.is_empty() => CustomTag::Environment {
                name: e.name,
                default: e.default_value.unwrap_or_default(),
            },
            (None, None, Some(h)) if !h.name.is_empty() => CustomTag::Header {
                name: h.name,
                default: h.default_value.unwrap_or_default(),
            },
            _ => {
                return Err(format!(
                    "{}: exactly one of literal, environment, header (with a name) must be set",
                    why()
                ))
            }
        };
        custom_tags.insert(tag, v);
    }
    let wanted = defaults.map(|d| d.tracing).unwrap_or_default();
    let provider = match wanted.as_slice() {
        [] => None,
        [one] => Some(by_name.get(one).cloned().ok_or_else(|| {
            format!(
                "defaultProviders.tracing: {one:?} is not a tracing provider in extensionProviders"
            )
        })?),
        _ => {
            return Err(
                "defaultProviders.tracing: more than one provider (Envoy has one tracer per \
                 connection manager; Istio uses the first and warns)"
                    .into(),
            )
        }
    };
    if by_name.is_empty() {
        return Ok(None);
    }
    Ok(Some(Tracing {
        provider: provider.filter(|_| enable != Some(false)),
        providers: by_name,
        sampling_centi_percent: sampling,
        custom_tags,
        max_path_tag_length: proxy.max_path_tag_length,
    }))
}

fn port(name: &str, p: u32) -> Result<u16, String> {
    match u16::try_from(p) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!(
            "extensionProviders[{name:?}]: port {p} is not 1-65535"
        )),
    }
}

fn abs_path(name: &str, p: String) -> Result<String, String> {
    if p.starts_with('/') {
        Ok(p)
    } else {
        Err(format!(
            "extensionProviders[{name:?}]: path {p:?} must start with /"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Option<Tracing>, String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct F {
            enable_tracing: Option<bool>,
            #[serde(default)]
            extension_providers: Vec<ExtensionProviderFile>,
            default_providers: Option<DefaultProvidersFile>,
            tracing: Option<ProxyTracingFile>,
        }
        let f: F = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        tracing(
            f.enable_tracing,
            f.extension_providers,
            f.default_providers,
            f.tracing,
        )
    }

    #[test]
    fn providers_sampling_and_tags() {
        let t = parse(
            "extensionProviders:
- {name: z, zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}}
- {name: o, opentelemetry: {service: otel.obs, port: 4318, http: {path: /v1/traces, timeout: 2s}}}
defaultProviders: {tracing: [o]}
tracing:
  sampling: 12.345
  customTags:
    env: {literal: {value: prod}}
    pod: {environment: {name: POD_NAME, defaultValue: x}}
    user: {header: {name: x-user}}
",
        )
        .unwrap()
        .unwrap();
        let p = t.provider.as_ref().unwrap();
        assert_eq!(p.name, "o");
        assert_eq!(t.providers["z"].port, 9411);
        assert_eq!(
            p.kind,
            TracingKind::OpenTelemetry {
                http: Some(("/v1/traces".into(), Duration::from_secs(2)))
            }
        );
        assert_eq!(t.sampling_centi_percent, 1235);
        assert_eq!(t.custom_tags["env"], CustomTag::Literal("prod".into()));
        assert_eq!(
            t.custom_tags["user"],
            CustomTag::Header {
                name: "x-user".into(),
                default: String::new()
            }
        );
        let z = parse(
            "extensionProviders: [{name: z, zipkin: {service: zipkin, port: 9411}}]
defaultProviders: {tracing: [z]}",
        )
        .unwrap()
        .unwrap();
        assert_eq!(z.sampling_centi_percent, DEFAULT_SAMPLING_CENTI_PERCENT);
        assert_eq!(
            z.provider.unwrap().kind,
            TracingKind::Zipkin {
                trace_id_128bit: true,
                path: "/api/v2/spans".into()
            }
        );
        // Named but off, or not named: no default (a Telemetry may name it).
        let off = parse("enableTracing: false\nextensionProviders: [{name: z, zipkin: {service: zipkin, port: 9411}}]\ndefaultProviders: {tracing: [z]}").unwrap().unwrap();
        assert_eq!((off.provider, off.providers.len()), (None, 1));
        let unnamed =
            parse("extensionProviders: [{name: z, zipkin: {service: zipkin, port: 9411}}]")
                .unwrap()
                .unwrap();
        assert_eq!(unnamed.provider, None);
        // No tracing provider at all: nothing.
        assert_eq!(parse("tracing: {sampling: 5}").unwrap(), None);
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        for (yaml, want) in [
            ("defaultProviders: {tracing: [nope]}", "\"nope\" is not a tracing provider"),
            (
                "extensionProviders: [{name: a, envoyExtAuthzHttp: {service: x, port: 1}}]",
                "kind \"envoyExtAuthzHttp\" is not supported",
            ),
            (
                "extensionProviders: [{name: z, zipkin: {service: z, port: 70000}}]",
                "port 70000",
            ),
            (
                "extensionProviders: [{name: z, zipkin: {service: z, port: 1}}]\ndefaultProviders: {tracing: [z]}\ntracing: {sampling: 101}",
                "sampling 101",
            ),
            (
                "tracing: {customTags: {a: {literal: {value: x}, header: {name: y}}}}",
                "customTags[\"a\"]",
            ),
            (
                "extensionProviders: [{name: o, opentelemetry: {service: o, port: 1, dynatraceSampler: {}}}]",
                "dynatraceSampler",
            ),
        ] {
            let e = parse(yaml).unwrap_err();
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }
}
