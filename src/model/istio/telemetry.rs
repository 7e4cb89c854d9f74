//! `telemetry.istio.io` `Telemetry` (v1 and v1alpha1 share one schema): the
//! `tracing` part, selected per proxy as istiod's
//! `pilot/pkg/model/telemetry.go` (`applicableTelemetries`) does. Types,
//! validation and selection here; what a proxy's connection managers get is
//! `translate::tracing`.
//!
//! `metrics` (Istio's stats extension, which upstream Envoy does not have) and
//! `accessLogging` are rejected by name: see [`Telemetry::problems`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::authorization_policy::{TargetRef, GATEWAY_NAME_LABEL};
use super::common::{labels_match, WorkloadSelector};
use super::Config;

/// The API group of `Telemetry`.
pub const GROUP: &str = "telemetry.istio.io";
/// Versions of the group crossmesh reads (one schema).
pub const VERSIONS: [&str; 2] = ["v1alpha1", "v1"];

/// `Telemetry.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Telemetry {
    /// Absent or empty: namespace-wide (mesh-wide in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<TargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<Tracing>,
    /// Rejected by name (see [`Telemetry::problems`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<serde_json::Value>,
    /// Rejected by name (see [`Telemetry::problems`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_logging: Option<serde_json::Value>,
}

/// `Tracing`: one override, applied over the ones before it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<TracingSelector>,
    /// `ProviderRef`s: names of the mesh file's `extensionProviders`; only
    /// the first is used (Envoy has one tracer per connection manager).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// `google.protobuf.DoubleValue`, 0-100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_sampling_percentage: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_span_reporting: Option<bool>,
    /// Replaces the mesh's `defaultConfig.tracing.customTags` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_tags: Option<BTreeMap<String, CustomTag>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_request_id_for_trace_sampling: Option<bool>,
    /// Rejected by name (not implemented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_istio_tags: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingSelector {
    #[serde(default)]
    pub mode: WorkloadMode,
}

/// `WorkloadMode`: which side of a proxy an override applies to. A gateway
/// and a sidecar's outbound listeners are CLIENT, a sidecar's inbound
/// listeners SERVER (istiod's `workloadMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadMode {
    #[default]
    ClientAndServer,
    Client,
    Server,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderRef {
    #[serde(default)]
    pub name: String,
}

/// `Tracing.CustomTag`: exactly one of the three.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomTag {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<Literal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Named>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<Named>,
    /// Istio's `formatter` (an access-log command as the tag's value): rejected by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formatter: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Literal {
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Named {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub default_value: String,
}

impl Telemetry {
    /// The selector's labels; `None` when it selects no workload in particular.
    pub fn selector_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.selector
            .as_ref()
            .map(|s| &s.match_labels)
            .filter(|l| !l.is_empty())
    }

    fn all_target_refs(&self) -> impl Iterator<Item = &TargetRef> {
        self.target_ref.iter().chain(self.target_refs.iter())
    }

    /// Namespace-wide (mesh-wide in the root namespace): no selector, no target.
    pub fn namespace_wide(&self) -> bool {
        self.selector_labels().is_none() && self.all_target_refs().next().is_none()
    }

    /// Every reason the object cannot be honoured, as (field, reason, warning):
    /// Istio's `ValidateTelemetry` plus what crossmesh does not implement.
    pub fn problems(&self, namespace: &str) -> Vec<(String, String, bool)> {
        let mut out = Vec::new();
        let mut err = |f: String, r: String| out.push((f, r, false));
        let refs = super::authorization_policy::selector_and_targets(
            self.selector.as_ref(),
            self.target_ref.as_ref(),
            &self.target_refs,
            &mut err,
        );
        for (f, r) in refs {
            match (r.group.as_str(), r.kind.as_str()) {
                ("gateway.networking.k8s.io", "Gateway") => {}
                ("" | "core", "Service") | ("networking.istio.io", "ServiceEntry") => err(
                    format!("{f}.kind"),
                    format!(
                        "{} targets apply to waypoint proxies (ambient mode), which crossmesh \
                         does not run; use a selector",
                        r.kind
                    ),
                ),
                (g, k) => err(
                    format!("{f}.kind"),
                    format!(
                        "unsupported target {g}/{k} (crossmesh supports gateway.networking.k8s.io \
                         Gateway targets)"
                    ),
                ),
            }
            if r.name.is_empty() {
                err(format!("{f}.name"), "a target needs a name".into());
            }
            if !r.namespace.is_empty() && r.namespace != namespace {
                err(
                    format!("{f}.namespace"),
                    format!("a target must be in the Telemetry's namespace {namespace:?} (Istio)"),
                );
            }
        }
        if self.metrics.is_some() {
            err(
                "spec.metrics".into(),
                "metrics overrides are not supported: they configure Istio's stats extension, \
                 which upstream Envoy does not have (crossmesh's service graph reads Envoy's own \
                 cluster stats, docs/OBSERVABILITY.md)"
                    .into(),
            );
        }
        if self.access_logging.is_some() {
            err(
                "spec.accessLogging".into(),
                "access logging through the Telemetry API is not supported yet: use the mesh \
                 file's accessLogFile, accessLogEncoding and accessLogFormat"
                    .into(),
            );
        }
        for (i, t) in self.tracing.iter().enumerate() {
            let at = format!("spec.tracing[{i}]");
            if let Some(p) = t.random_sampling_percentage {
                if !(0.0..=100.0).contains(&p) || p.is_nan() {
                    err(
                        format!("{at}.randomSamplingPercentage"),
                        format!("{p} is not a percentage between 0 and 100"),
                    );
                }
            }
            for (j, p) in t.providers.iter().enumerate() {
                if p.name.is_empty() {
                    err(
                        format!("{at}.providers[{j}].name"),
                        "a provider needs a name".into(),
                    );
                }
            }
            if t.enable_istio_tags.is_some() {
                err(
                    format!("{at}.enableIstioTags"),
                    "not supported: crossmesh always adds Istio's tags (istio.canonical_service, \
                     istio.canonical_revision, istio.namespace, istio.mesh_id)"
                        .into(),
                );
            }
            for (tag, ct) in t.custom_tags.iter().flatten() {
                let f = format!("{at}.customTags.{tag}");
                if tag.is_empty() {
                    err(f.clone(), "a tag needs a name".into());
                }
                if ct.formatter.is_some() {
                    err(
                        format!("{f}.formatter"),
                        "formatter tags are not supported (use literal, environment or header)"
                            .into(),
                    );
                    continue;
                }
                let set = [
                    ct.literal.is_some(),
                    ct.environment.is_some(),
                    ct.header.is_some(),
                ];
                if set.iter().filter(|s| **s).count() != 1 {
                    err(
                        f.clone(),
                        "exactly one of literal, environment, header must be set".into(),
                    );
                }
                for (kind, n) in [("environment", &ct.environment), ("header", &ct.header)] {
                    if n.as_ref().is_some_and(|n| n.name.is_empty()) {
                        err(format!("{f}.{kind}.name"), "a name is required".into());
                    }
                }
            }
        }
        for (i, t) in self.tracing.iter().enumerate() {
            if t.providers.len() > 1 {
                out.push((
                    format!("spec.tracing[{i}].providers"),
                    "more than one provider: only the first is used (Envoy has one tracer per \
                     connection manager; Istio does the same)"
                        .into(),
                    true,
                ));
            }
        }
        out
    }
}

/// Whether `t` (a Telemetry with a selector or targets, in the proxy's
/// namespace) selects the workload with `labels`.
fn selects(t: &Telemetry, labels: &BTreeMap<String, String>) -> bool {
    let mut refs = t.all_target_refs().peekable();
    if refs.peek().is_some() {
        return refs
            .any(|r| r.kind == "Gateway" && labels.get(GATEWAY_NAME_LABEL) == Some(&r.name));
    }
    t.selector_labels()
        .is_some_and(|sel| labels_match(sel, labels))
}

/// The `tracing` overrides in force for a proxy in `namespace` with `labels`,
/// in the order they apply (each over the ones before), as istiod's
/// `applicableTelemetries`: the oldest namespace-wide Telemetry of the root
/// namespace, then the oldest namespace-wide one of the proxy's namespace
/// (when that is not the root), then the oldest Telemetry of the proxy's
/// namespace whose selector or targets select it. `telemetries` is in Istio
/// order (creation time, name, namespace). Also returns the `ns/name` of each
/// Telemetry used.
pub fn tracing_for<'a>(
    telemetries: &'a [Arc<Config<Telemetry>>],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> (Vec<&'a Tracing>, Vec<String>) {
    let mut out = Vec::new();
    let mut used = Vec::new();
    let mut take = |c: &'a Arc<Config<Telemetry>>| {
        out.extend(c.spec.tracing.iter());
        used.push(c.meta.key());
    };
    let ns_wide = |ns: &str| {
        telemetries
            .iter()
            .find(|c| c.meta.namespace == ns && c.spec.namespace_wide())
    };
    if let Some(c) = ns_wide(root_namespace) {
        take(c);
    }
    if namespace != root_namespace {
        if let Some(c) = ns_wide(namespace) {
            take(c);
        }
    }
    if let Some(c) = telemetries.iter().find(|c| {
        c.meta.namespace == namespace && !c.spec.namespace_wide() && selects(&c.spec, labels)
    }) {
        take(c);
    }
    (out, used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::istio::{parse_object, IstioObject};

    fn telemetry(yaml: &str) -> Result<Arc<Config<Telemetry>>, String> {
        let v: serde_json::Value = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        match parse_object("t.yaml", &v) {
            Ok(IstioObject::Telemetry(c)) => Ok(Arc::new(c)),
            Ok(o) => Err(format!("parsed as {}", o.kind())),
            Err(e) => Err(e
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("; ")),
        }
    }

    fn doc(version: &str, ns: &str, name: &str, spec: &str) -> String {
        format!(
            "apiVersion: telemetry.istio.io/{version}\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
        )
    }

    #[test]
    fn root_then_namespace_then_workload() {
        let all = vec![
            telemetry(&doc("v1", "istio-system", "mesh", "{tracing: [{randomSamplingPercentage: 1}]}")).unwrap(),
            telemetry(&doc("v1alpha1", "istio-system", "mesh2", "{tracing: [{randomSamplingPercentage: 2}]}")).unwrap(),
            telemetry(&doc("v1", "base", "ns", "{tracing: [{randomSamplingPercentage: 10}]}")).unwrap(),
            telemetry(&doc("v1", "base", "order", "{selector: {matchLabels: {app: order}}, tracing: [{randomSamplingPercentage: 100}]}")).unwrap(),
            telemetry(&doc("v1", "base", "order2", "{selector: {matchLabels: {app: order}}, tracing: [{randomSamplingPercentage: 50}]}")).unwrap(),
            telemetry(&doc("v1", "other", "x", "{tracing: [{randomSamplingPercentage: 7}]}")).unwrap(),
        ];
        let pct = |ns: &str, app: &str| {
            let labels = BTreeMap::from([("app".to_string(), app.to_string())]);
            let (t, used) = tracing_for(&all, "istio-system", ns, &labels);
            (
                t.iter()
                    .map(|t| t.random_sampling_percentage.unwrap())
                    .collect::<Vec<_>>(),
                used,
            )
        };
        // Oldest of each level only (same creation time: by name).
        assert_eq!(
            pct("base", "order"),
            (
                vec![1.0, 10.0, 100.0],
                vec![
                    "istio-system/mesh".into(),
                    "base/ns".into(),
                    "base/order".into()
                ]
            )
        );
        assert_eq!(pct("base", "stock").0, vec![1.0, 10.0]);
        assert_eq!(pct("test", "order").0, vec![1.0]);
        assert_eq!(pct("istio-system", "gw").0, vec![1.0]);
    }

    #[test]
    fn gateway_target_refs_select_by_gateway_name_label() {
        let all = vec![telemetry(&doc(
            "v1",
            "edge",
            "gw",
            "{targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: web}], tracing: [{disableSpanReporting: true}]}",
        ))
        .unwrap()];
        let web = BTreeMap::from([(GATEWAY_NAME_LABEL.to_string(), "web".to_string())]);
        let other = BTreeMap::from([(GATEWAY_NAME_LABEL.to_string(), "api".to_string())]);
        assert_eq!(tracing_for(&all, "istio-system", "edge", &web).0.len(), 1);
        assert!(tracing_for(&all, "istio-system", "edge", &other)
            .0
            .is_empty());
    }

    #[test]
    fn bad_objects_are_refused_by_field() {
        for (spec, want) in [
            ("{tracing: [{randomSamplingPercentage: 101}]}", "spec.tracing[0].randomSamplingPercentage: 101 is not a percentage"),
            ("{metrics: [{providers: [{name: prometheus}]}]}", "spec.metrics: metrics overrides are not supported"),
            ("{accessLogging: [{providers: [{name: envoy}]}]}", "spec.accessLogging: access logging through the Telemetry API"),
            ("{tracing: [{customTags: {a: {literal: {value: v}, header: {name: x-user}}}}]}", "spec.tracing[0].customTags.a: exactly one of"),
            ("{tracing: [{customTags: {a: {header: {}}}}]}", "spec.tracing[0].customTags.a.header.name"),
            ("{tracing: [{customTags: {a: {formatter: {value: '%REQ(:PATH)%'}}}}]}", "formatter tags are not supported"),
            ("{tracing: [{match: {mode: BOTH}}]}", "spec.tracing[0].match.mode"),
            ("{tracing: [{sampling: 3}]}", "spec.tracing[0].sampling: unknown field `sampling`"),
            ("{tracing: [{enableIstioTags: false}]}", "spec.tracing[0].enableIstioTags"),
            ("{selector: {matchLabels: {app: web}}, targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: edge}]}", "mutually exclusive"),
            ("{targetRefs: [{kind: Service, name: s}]}", "waypoint"),
        ] {
            let e = telemetry(&doc("v1", "base", "t", spec)).unwrap_err();
            assert!(e.contains(want), "{spec}: {e}");
            assert!(e.contains("Telemetry base/t"), "{e}");
        }
        let e = telemetry(&doc("v1beta1", "base", "t", "{}")).unwrap_err();
        assert!(e.contains("apiVersion"), "{e}");
        // Valid: every tracing field.
        let t = telemetry(&doc(
            "v1",
            "base",
            "t",
            "{tracing: [{match: {mode: SERVER}, providers: [{name: otel}], randomSamplingPercentage: 12.5, disableSpanReporting: false, useRequestIdForTraceSampling: false, customTags: {e: {environment: {name: POD, defaultValue: x}}}}]}",
        ))
        .unwrap();
        assert_eq!(
            t.spec.tracing[0].match_.as_ref().unwrap().mode,
            WorkloadMode::Server
        );
    }
}
