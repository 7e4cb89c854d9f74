//! Manifest directories (DESIGN.md §2): a member cluster, or Istio config, as a
//! directory of multi-doc YAML files shaped like `kubectl get -o yaml` (`kind: List`
//! included), watched for changes.
//!
//! Flow: file events (notify, recursive) -> debounce (`DEBOUNCE`, 10 ms quiet,
//! at most `DEBOUNCE_MAX`) -> rescan. A member cluster's rescan reads only the
//! files the events named and sends the registry one `Event` per object of those
//! files (`Registry::reset_cluster` only on the first sync); an Istio config
//! directory is re-read whole (hash-compared per file) into
//! `Registry::replace_config_source`. The registry diffs and pushes only what
//! changed. A slow periodic full rescan (`RESCAN`) catches events the watcher
//! missed (network filesystems, a directory created later).
//!
//! Bad input rejects one file or one document, never the directory: a file that does
//! not parse keeps serving its last good content (an editor half-way through a
//! save), a document with a wrong field type or an unknown kind is skipped, and each
//! problem is logged and shown on `/debug/clusterz` naming file, kind,
//! namespace/name and reason. Deleting a file removes only its objects.
//!
//! Two halves: `parse` turns file bytes into typed objects (documents, per-file
//! results, the parallel map over files); `dir` keeps what each directory holds
//! (`DirState`, `ClusterDir`, `ConfigDir`) and `watch` drives them from file
//! events (the notify watcher, the debounce, the periodic rescan).

mod dir;
mod parse;
mod watch;
mod yaml;

pub use dir::{yaml_files, ClusterDir, ConfigDir, DirState, Scan};
pub use parse::{
    cluster_objects, describe, kube_object, manifest_options, parse_text, secret_object, Doc,
};
pub use watch::{
    spawn_cluster, spawn_config, ManifestChanges, ManifestWatch, SourceError, DEBOUNCE,
    DEBOUNCE_MAX, RESCAN,
};

/// Fixtures shared by the unit tests of `dir` and `watch`.
#[cfg(test)]
mod test_util {
    use std::path::Path;
    use std::sync::Arc;

    use crate::config::{ClusterConfig, ClusterSource, MeshConfig};
    use crate::push::PushQueue;
    use crate::registry::{ObjectProblem, Registry};

    pub(super) const SVC_AND_POD: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: default, labels: {app: web}}
spec: {containers: [{name: main}]}
status:
  podIP: 10.0.0.1
  phase: Running
  conditions: [{type: Ready, status: "True"}]
"#;

    pub(super) fn pod_yaml(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: web}}}}\n\
             spec: {{containers: [{{name: main}}]}}\n\
             status: {{podIP: {ip}, phase: Running, conditions: [{{type: Ready, status: \"True\"}}]}}\n"
        )
    }

    pub(super) fn setup(dir: &Path) -> (Arc<Registry>, PushQueue, ClusterConfig) {
        let c = ClusterConfig {
            name: "c1".into(),
            network: String::new(),
            source: ClusterSource::Manifests(dir.to_owned()),
            locality: None,
        };
        let mesh = MeshConfig {
            clusters: vec![c.clone()],
            ..MeshConfig::default()
        };
        let q = PushQueue::new();
        (Registry::new(Arc::new(mesh), q.clone()), q, c)
    }

    pub(super) const WEB: &str = "web.default.svc.cluster.local";

    pub(super) fn endpoints(r: &Registry) -> Vec<String> {
        r.service(WEB)
            .map(|s| {
                s.endpoints
                    .values()
                    .flatten()
                    .map(|e| e.address.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(super) fn rejected(r: &Registry) -> Vec<ObjectProblem> {
        r.cluster_status()[0].rejected.clone()
    }
}
