//! `crossmesh validate FILE...` (DESIGN.md §1): check Kubernetes and Istio YAML
//! offline with the same rules `serve` applies, and print one line per problem
//! naming file, object (kind namespace/name) and reason.
//!
//! Documents whose apiVersion group is an Istio one (`*.istio.io`) go to the config
//! store's validation (`registry::config::validate_docs`); every other document is
//! checked as a member-cluster object (Service, Pod, Node, EndpointSlice), as a
//! manifest directory would read it. A file holding one document with neither
//! `apiVersion` nor `kind` is a mesh file and is checked as `serve --mesh` reads
//! it. A directory argument is read recursively (`.yaml`/`.yml` files), like a
//! watched manifest directory.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::registry::config::{validate_docs, RawDoc};
use crate::registry::ObjectProblem;
use crate::sources::manifests::{cluster_objects, parse_text, yaml_files, Doc};

/// Whether a document belongs to Istio's APIs or the Kubernetes Gateway API
/// (both go to the config store) rather than Kubernetes core. A `v1`
/// Namespace goes to the config store too (its labels decide Gateway API
/// `allowedRoutes.namespaces.from: Selector`).
fn is_istio(v: &Value) -> bool {
    let api = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    api.split_once('/')
        .is_some_and(|(group, _)| group.ends_with(".istio.io"))
        || crate::model::gateway_api::is_gateway_api(v)
        || crate::model::gateway_api::namespaces::is_namespace(v)
}

fn expand(paths: &[PathBuf], problems: &mut Vec<String>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            match yaml_files(p) {
                Ok(f) => files.extend(f),
                Err(e) => problems.push(format!("{}: cannot read directory: {e}", p.display())),
            }
        } else {
            files.push(p.clone());
        }
    }
    files
}

/// Check every file; returns one line per problem (empty when all is well).
pub fn validate_paths(paths: &[PathBuf]) -> Vec<String> {
    validate_paths_with_warnings(paths).0
}

/// Problems, as `validate_paths`, and warnings: one line per accepted Istio
/// object field that has no effect or is deprecated (they do not fail
/// validation; `/debug/configz` shows the same).
pub fn validate_paths_with_warnings(paths: &[PathBuf]) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut istio = Vec::new();
    for file in expand(paths, &mut problems) {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{}: cannot read: {e}", file.display()));
                continue;
            }
        };
        problems.extend(validate_text(&file, &text, &mut istio));
    }
    problems.extend(validate_docs(&istio).iter().map(ToString::to_string));
    let mut warnings: Vec<String> = istio
        .iter()
        .filter(|d| !crate::model::gateway_api::is_gateway_api(&d.value))
        .filter_map(|d| crate::model::istio::parse_object(&d.origin, &d.value).ok())
        .flat_map(|o| crate::model::istio::object_warnings(&o))
        .map(|w| w.to_string())
        .collect();
    // Gateway API status conditions that are not as they should be (a route
    // not accepted, a reference not resolved), as serve would report them.
    warnings.extend(crate::registry::config::gateway_api_status_problems(
        &istio,
        "cluster.local",
    ));
    (problems, warnings)
}

/// Check one file's text: Kubernetes documents now, Istio ones collected into
/// `istio` (validated together, so duplicates across files are found).
fn validate_text(file: &Path, text: &str, istio: &mut Vec<RawDoc>) -> Vec<String> {
    let docs = match parse_text(text) {
        Ok(d) => d,
        Err(reason) => return vec![format!("{}: {reason}", file.display())],
    };
    if let [doc] = docs.as_slice() {
        if is_mesh_file(doc) {
            return validate_mesh_file(file, text);
        }
    }
    let mut kube = Vec::new();
    for value in docs {
        if is_istio(&value) {
            istio.push(RawDoc {
                origin: file.display().to_string(),
                value,
            });
        } else {
            kube.push(Doc {
                file: file.to_owned(),
                value,
            });
        }
    }
    let (_, rejected, _) = cluster_objects(&kube);
    rejected.iter().map(ObjectProblem::to_string).collect()
}

/// A document with neither `apiVersion` nor `kind` is not a Kubernetes object;
/// read it as a mesh file (DESIGN.md §2), which has neither.
fn is_mesh_file(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|m| !m.contains_key("apiVersion") && !m.contains_key("kind"))
}

/// Check a mesh file with the rules `serve` applies at start (relative paths
/// resolve against the file's directory, as `serve --mesh` does).
fn validate_mesh_file(file: &Path, text: &str) -> Vec<String> {
    let base = file.parent().unwrap_or(Path::new("."));
    match crate::config::MeshConfig::parse(text, base) {
        Ok(_) => Vec::new(),
        Err(e) => vec![format!(
            "{}: mesh file (a document without apiVersion and kind): {e}",
            file.display()
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_files_are_checked_as_serve_reads_them() {
        let tmp = tempfile::tempdir().unwrap();
        let good = tmp.path().join("mesh.yaml");
        std::fs::write(
            &good,
            "trustDomain: cluster.local\nclusters:\n- {name: hub, inCluster: true}\nconfig:\n- cluster: hub\n",
        )
        .unwrap();
        assert_eq!(
            validate_paths(std::slice::from_ref(&good)),
            Vec::<String>::new()
        );
        let bad = tmp.path().join("bad-mesh.yaml");
        std::fs::write(&bad, "clusters:\n- {name: hub, inClustr: true}\n").unwrap();
        let out = validate_paths(std::slice::from_ref(&bad));
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].starts_with(&bad.display().to_string())
                && out[0].contains("mesh file")
                && out[0].contains("inClustr"),
            "{out:?}"
        );
    }

    /// Namespace documents beside a Gateway with `from: Selector`: the route of
    /// the labelled namespace is accepted, the others are reported.
    #[test]
    fn namespace_labels_decide_selector_attachment_offline() {
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/golden/gateway_api_ns_selector.yaml"
        );
        let text = std::fs::read_to_string(fixture).unwrap();
        // Without the GoldenFixture document.
        let (_, objects) = text.split_once("\n---\n").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("config.yaml");
        std::fs::write(&file, objects).unwrap();
        let (problems, warnings) = validate_paths_with_warnings(std::slice::from_ref(&file));
        assert_eq!(problems, Vec::<String>::new());
        let not_allowed = |route: &str| {
            warnings.iter().any(|w| {
                w.contains(&format!("HTTPRoute {route}:"))
                    && w.contains("Accepted=False NotAllowedByListeners")
            })
        };
        assert!(!not_allowed("team-a/a"), "{warnings:#?}");
        assert!(not_allowed("team-b/b"), "{warnings:#?}");
        assert!(not_allowed("infra/own"), "{warnings:#?}");
    }

    #[test]
    fn reports_each_problem_with_file_object_and_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let good = tmp.path().join("good.yaml");
        std::fs::write(
            &good,
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
             spec: {selector: {app: web}, ports: [{name: http, port: 80}]}\n",
        )
        .unwrap();
        assert_eq!(
            validate_paths(std::slice::from_ref(&good)),
            Vec::<String>::new()
        );

        let bad = tmp.path().join("bad.yaml");
        std::fs::write(
            &bad,
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop}\n\
             spec: {containers: [{name: c, ports: [{containerPort: http}]}]}\n\
             ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
             metadata: {name: vs, namespace: shop}\nspec: {hosts: 7}\n\
             ---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: shop}\n",
        )
        .unwrap();
        let broken = tmp.path().join("broken.yml");
        std::fs::write(&broken, "kind: [").unwrap();
        let out = validate_paths(&[tmp.path().to_owned()]);
        assert_eq!(out.len(), 4, "{out:#?}");
        let b = bad.display().to_string();
        assert!(out
            .iter()
            .any(|l| l.starts_with(&b) && l.contains("Pod shop/p") && l.contains("containerPort")));
        assert!(out.iter().any(|l| l.starts_with(&b)
            && l.contains("Deployment shop/d")
            && l.contains("skipped")));
        assert!(out
            .iter()
            .any(|l| l.starts_with(&b) && l.contains("VirtualService shop/vs")));
        assert!(out
            .iter()
            .any(|l| l.starts_with(&broken.display().to_string()) && l.contains("YAML error")));

        // Warnings name file, object and field, and do not count as problems.
        let warned = tmp.path().join("warned");
        std::fs::create_dir(&warned).unwrap();
        std::fs::write(
            warned.join("dr.yaml"),
            "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\n\
             metadata: {name: order, namespace: base}\n\
             spec: {host: order, trafficPolicy: {outlierDetection: {consecutiveErrors: 5}}}\n",
        )
        .unwrap();
        let (problems, warnings) = validate_paths_with_warnings(&[warned]);
        assert!(problems.is_empty(), "{problems:#?}");
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("DestinationRule base/order")
                    && w.contains("spec.trafficPolicy.outlierDetection.consecutiveErrors")
                    && w.contains("deprecated")),
            "{warnings:#?}"
        );

        let missing = tmp.path().join("missing.yaml");
        assert!(validate_paths(&[missing])
            .first()
            .is_some_and(|l| l.contains("cannot read")));
    }
}
