//! Health of each member cluster as sources report it, in the shape
//! `/debug/clusterz` serves (DESIGN.md §4): source, synced, stale, last error, last
//! event time, object counts, and the objects rejected or worth a note.

use std::time::SystemTime;

use serde::Serialize;

/// One object a source or the registry rejected, or one worth a note.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ObjectProblem {
    /// Where it came from: a file path, or `cluster NAME` for an API server.
    pub origin: String,
    /// `Service`, `Pod`, ...; empty when the file could not be read far enough.
    pub kind: String,
    /// `namespace/name` (`name` for Nodes); empty when unknown.
    pub object: String,
    pub reason: String,
}

impl std::fmt::Display for ObjectProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.origin)?;
        if !self.kind.is_empty() || !self.object.is_empty() {
            write!(f, ": {} {}", self.kind, self.object)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Objects held per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub services: usize,
    pub pods: usize,
    pub nodes: usize,
    pub endpointslices: usize,
}

/// One member cluster on `/debug/clusterz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    pub name: String,
    /// `manifests:DIR`, `kubeconfig:FILE` or what a runtime registration named.
    pub source: String,
    /// Empty means the one flat network.
    pub network: String,
    /// The source has delivered a complete view at least once.
    pub synced: bool,
    /// The source lost its connection; endpoints are served from the last-known state.
    pub stale: bool,
    pub last_error: Option<String>,
    /// RFC 3339, UTC.
    pub last_event_time: Option<String>,
    pub counts: Counts,
    /// Objects not served, with the reason.
    pub rejected: Vec<ObjectProblem>,
    /// Served objects an operator may want to know about (no selector, no pod IP).
    pub notes: Vec<ObjectProblem>,
}

/// RFC 3339 rendering of a wall-clock time.
pub fn rfc3339(t: SystemTime) -> Option<String> {
    k8s_openapi::jiff::Timestamp::try_from(t)
        .ok()
        .map(|ts| ts.to_string())
}

/// Mutable per-cluster state behind the status, owned by the cluster's shard.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClusterState {
    pub synced: bool,
    pub stale: bool,
    pub last_error: Option<String>,
    pub last_event: Option<SystemTime>,
    /// Rejections the source found before handing objects over (with file names).
    pub source_rejected: Vec<ObjectProblem>,
}
