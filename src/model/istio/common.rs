//! Types shared by several Istio networking kinds (`networking.istio.io`
//! v1alpha3, v1beta1 and v1 share one schema).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Istio's `StringMatch`: exactly one of `exact`, `prefix`, `regex` (RE2 syntax).
/// All three unset is allowed in header and query-parameter matches, where it means
/// "present".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// The one kind of match a `StringMatch` holds, after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMatchKind<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    Regex(&'a str),
    /// No field set: presence match.
    Present,
}

impl StringMatch {
    /// Which match is set. Validation guarantees at most one.
    pub fn kind(&self) -> StringMatchKind<'_> {
        match (&self.exact, &self.prefix, &self.regex) {
            (Some(e), _, _) => StringMatchKind::Exact(e),
            (_, Some(p), _) => StringMatchKind::Prefix(p),
            (_, _, Some(r)) => StringMatchKind::Regex(r),
            _ => StringMatchKind::Present,
        }
    }

    pub fn set_count(&self) -> usize {
        [
            self.exact.is_some(),
            self.prefix.is_some(),
            self.regex.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }
}

/// Istio's `Percent`: a double in [0, 100].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

/// Istio's `PortSelector`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    #[serde(default)]
    pub number: u32,
}

/// Istio's `Destination`: a service host (short names resolve in the config's
/// namespace), an optional subset of a DestinationRule, and a port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    pub host: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subset: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

/// `istio.type.v1beta1.WorkloadSelector` (DestinationRule's `workloadSelector`;
/// the security kinds' `selector`). Sidecar has its own form with `labels`
/// (`sidecar::SidecarWorkloadSelector`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// Whether every `selector` label is present with the same value in `labels`
/// (Kubernetes equality-based selection; an empty selector selects everything).
pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
