//! `security.istio.io` `PeerAuthentication` (v1 and v1beta1 share one schema):
//! which mutual TLS mode a workload's inbound ports accept, and how the mesh,
//! namespace and workload policies combine (Istio's
//! `pilot/pkg/model/authentication.go` and `pilot/pkg/security/authn`).
//! Types and the composition here; the filter chains live in `translate::mtls`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::common::{labels_match, WorkloadSelector};
use super::Config;

/// `PeerAuthentication.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    /// Absent or empty: the policy covers the whole namespace (the whole mesh in
    /// the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<PeerMtls>,
    /// Keyed by the workload's port (the target port, not the service port).
    /// Validation checks the keys are port numbers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<String, PeerMtls>,
}

/// `PeerAuthentication.MutualTLS`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerMtls {
    #[serde(default)]
    pub mode: MtlsMode,
}

/// `PeerAuthentication.MutualTLS.Mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent scope (PERMISSIVE at the mesh level).
    #[default]
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl PeerAuthentication {
    /// The selector's labels; empty for a namespace- or mesh-wide policy.
    pub fn selector_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.selector
            .as_ref()
            .map(|s| &s.match_labels)
            .filter(|l| !l.is_empty())
    }

    fn mode(&self) -> MtlsMode {
        self.mtls.as_ref().map(|m| m.mode).unwrap_or_default()
    }
}

/// The mode in force for one workload: its default and per-port overrides,
/// every `UNSET` already resolved (never `Unset` here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveMtls {
    pub mode: MtlsMode,
    pub ports: BTreeMap<u32, MtlsMode>,
    /// `ns/name` of the policies that decided, mesh first (for /debug).
    pub sources: Vec<String>,
}

impl EffectiveMtls {
    /// The mode of one workload port.
    pub fn for_port(&self, port: u32) -> MtlsMode {
        self.ports.get(&port).copied().unwrap_or(self.mode)
    }
}

/// Istio's composition for a workload in `namespace` with `labels`, from
/// `policies` in Istio order (oldest first): the oldest mesh-wide policy (no
/// selector, in `root_namespace`), then the oldest namespace-wide policy, then
/// the oldest policy whose selector matches the workload (in its own
/// namespace); each non-`UNSET` mode replaces the one above it, a port-level
/// mode replaces the workload's for that port, and a mesh without a mode is
/// PERMISSIVE.
pub fn effective_mtls(
    policies: &[Arc<Config<PeerAuthentication>>],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> EffectiveMtls {
    let mesh = policies
        .iter()
        .find(|p| p.meta.namespace == root_namespace && p.spec.selector_labels().is_none());
    let ns = (namespace != root_namespace)
        .then(|| {
            policies
                .iter()
                .find(|p| p.meta.namespace == namespace && p.spec.selector_labels().is_none())
        })
        .flatten();
    let workload = policies.iter().find(|p| {
        p.meta.namespace == namespace
            && p.spec
                .selector_labels()
                .is_some_and(|sel| labels_match(sel, labels))
    });
    let mut out = EffectiveMtls {
        mode: MtlsMode::Permissive,
        ports: BTreeMap::new(),
        sources: Vec::new(),
    };
    for p in [mesh, ns, workload].into_iter().flatten() {
        out.sources.push(p.meta.key());
        if p.spec.mode() != MtlsMode::Unset {
            out.mode = p.spec.mode();
        }
    }
    if let Some(w) = workload {
        for (port, m) in &w.spec.port_level_mtls {
            // Validation guarantees numeric keys; an unparsable one cannot be in force.
            if let (Ok(port), false) = (port.parse::<u32>(), m.mode == MtlsMode::Unset) {
                out.ports.insert(port, m.mode);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::istio::{parse_object, IstioObject};

    fn pa(ns: &str, name: &str, ts: &str, spec: &str) -> Arc<Config<PeerAuthentication>> {
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: '{ts}'}}\nspec: {spec}\n"
        );
        let v: serde_json::Value = serde_saphyr::from_str(&yaml).expect("yaml");
        match parse_object("t", &v) {
            Ok(IstioObject::PeerAuthentication(c)) => Arc::new(c),
            other => panic!("{other:?}"),
        }
    }

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn workload_beats_namespace_beats_mesh_and_unset_inherits() {
        let t = "2024-01-01T00:00:00Z";
        let all = vec![
            pa("istio-system", "mesh", t, "{mtls: {mode: STRICT}}"),
            pa("base", "ns", t, "{mtls: {mode: DISABLE}}"),
            pa(
                "base",
                "web",
                t,
                "{selector: {matchLabels: {app: web}}, mtls: {mode: UNSET}, portLevelMtls: {'8080': {mode: STRICT}, '9090': {mode: UNSET}}}",
            ),
        ];
        let web = effective_mtls(&all, "istio-system", "base", &labels(&[("app", "web")]));
        // UNSET at the workload inherits the namespace's DISABLE.
        assert_eq!(web.mode, MtlsMode::Disable);
        assert_eq!(web.for_port(8080), MtlsMode::Strict);
        assert_eq!(web.for_port(9090), MtlsMode::Disable);
        assert_eq!(web.sources, ["istio-system/mesh", "base/ns", "base/web"]);
        let other = effective_mtls(&all, "istio-system", "other", &labels(&[("app", "web")]));
        assert_eq!(other.mode, MtlsMode::Strict);
        assert!(other.ports.is_empty());
        let nothing = effective_mtls(&[], "istio-system", "base", &BTreeMap::new());
        assert_eq!(nothing.mode, MtlsMode::Permissive);
    }

    #[test]
    fn oldest_wins_among_equals_and_selectors_stay_in_their_namespace() {
        let mut all = vec![
            pa(
                "base",
                "young",
                "2024-02-01T00:00:00Z",
                "{mtls: {mode: DISABLE}}",
            ),
            pa(
                "base",
                "old",
                "2024-01-01T00:00:00Z",
                "{mtls: {mode: STRICT}}",
            ),
            pa(
                "istio-system",
                "sel",
                "2024-01-01T00:00:00Z",
                "{selector: {matchLabels: {app: web}}, mtls: {mode: DISABLE}}",
            ),
        ];
        all.sort_by(|a, b| a.meta.istio_order(&b.meta));
        let web = effective_mtls(&all, "istio-system", "base", &labels(&[("app", "web")]));
        assert_eq!(web.mode, MtlsMode::Strict);
        assert_eq!(web.sources, ["base/old"]);
    }
}
