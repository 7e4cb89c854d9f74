//! Health of each member cluster as sources report it, in the shape
//! `/debug/clusterz` serves (DESIGN.md §4): source, synced, stale, last error, last
//! event time, object counts, and the objects rejected or worth a note.
//!
//! Besides what the cluster's own source reports, a cluster's `rejected` list holds
//! the claims on its name that were refused: a remote Secret key naming a cluster
//! that the mesh file or another Secret already registered
//! ([`Registry::set_refused_claims`], from `sources::remote_secret`). They are
//! listed under the cluster that holds the name, since the refused key has no
//! cluster of its own; [`Registry::clusterz`] is the full page.

use std::time::SystemTime;

use serde::Serialize;

use super::{Registry, RegistryError};

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
    /// Claims on this cluster's name that were not applied (remote Secret keys).
    pub refused_claims: Vec<ObjectProblem>,
}

impl Registry {
    /// Replace the refused claims on cluster `cluster`'s name: remote Secret keys
    /// naming it while it is held by the mesh file or by another Secret. They show
    /// in its `rejected` list on `/debug/clusterz` ([`Registry::clusterz`]).
    pub fn set_refused_claims(
        &self,
        cluster: &str,
        claims: Vec<ObjectProblem>,
    ) -> Result<(), RegistryError> {
        self.with_shard(cluster, |s, _, _| s.state.refused_claims = claims)
    }

    /// `/debug/clusterz`: [`Registry::cluster_status`], whose `rejected` lists
    /// end with the refused claims on each cluster's name.
    pub fn clusterz(&self) -> Vec<ClusterStatus> {
        self.cluster_status()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::{ClusterConfig, ClusterSource, MeshConfig};
    use crate::model::push_request::PushQueue;

    fn claim(secret: &str) -> ObjectProblem {
        ObjectProblem {
            origin: "remote secret".into(),
            kind: "Secret".into(),
            object: secret.into(),
            reason: "key c1 not applied: the cluster name is already taken".into(),
        }
    }

    #[test]
    fn refused_claims_follow_the_rejected_objects_of_the_holder() {
        let mesh = MeshConfig {
            clusters: ["c1", "c2"]
                .map(|n| ClusterConfig {
                    name: n.into(),
                    network: String::new(),
                    source: ClusterSource::Manifests("/nonexistent".into()),
                    locality: None,
                })
                .into(),
            ..MeshConfig::default()
        };
        let r = Registry::new(Arc::new(mesh), PushQueue::new());
        let file = ObjectProblem {
            origin: "a.yaml".into(),
            kind: "Service".into(),
            object: "ns/web".into(),
            reason: "bad".into(),
        };
        r.set_source_problems("c1", vec![file.clone()]).unwrap();
        r.set_refused_claims("c1", vec![claim("ns/s-a")]).unwrap();
        let page = r.clusterz();
        assert_eq!(page[0].rejected, [file.clone(), claim("ns/s-a")]);
        assert!(page[1].rejected.is_empty());
        // The source replacing its own list leaves the claims alone, and back.
        r.set_source_problems("c1", Vec::new()).unwrap();
        assert_eq!(r.clusterz()[0].rejected, [claim("ns/s-a")]);
        r.set_refused_claims("c1", Vec::new()).unwrap();
        assert!(r.clusterz()[0].rejected.is_empty());
        assert!(matches!(
            r.set_refused_claims("nope", vec![claim("ns/s")]),
            Err(RegistryError::UnknownCluster(_))
        ));
    }
}
