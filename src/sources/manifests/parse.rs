//! Manifest files to typed objects: YAML documents (`kind: List` expanded), the
//! Kubernetes kinds a cluster directory holds, per-file results, and the
//! parallel map that reads a directory's files on every core.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;

use crate::registry::endpoints::{self, KubeObject};
use crate::registry::secrets::RawSecret;
use crate::registry::ObjectProblem;

const KINDS_HINT: &str =
    "crossmesh reads Service, Pod, Node, EndpointSlice and TLS Secret from cluster manifests";

/// One YAML document with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub file: PathBuf,
    pub value: Value,
}

/// `kind ns/name` of a raw document, as far as it can be read.
pub fn describe(value: &Value) -> (String, String) {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str);
    let object = match (kind.as_str(), ns) {
        ("Node", _) => name.to_string(),
        (_, Some(ns)) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => format!("default/{name}"),
    };
    (kind, object)
}

/// YAML limits for manifest files. serde-saphyr's defaults (1,024 documents,
/// 250,000 nodes per input) suit one config file, not a `kubectl get -o yaml`
/// dump of a large cluster: those counters are raised so that only the file
/// size bounds them. The limits that stop hostile input (alias expansion,
/// anchors, nesting depth) keep their defaults.
pub fn manifest_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = usize::MAX;
    budget.max_events = usize::MAX;
    budget.max_nodes = usize::MAX;
    budget.max_total_scalar_bytes = usize::MAX;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// Parse one file's text into documents, expanding `kind: List`. A YAML error
/// rejects the whole file (its documents cannot be told apart reliably).
pub fn parse_text(text: &str) -> Result<Vec<Value>, String> {
    // The common shape straight from the parser's events; anything else (and
    // every error) through serde-saphyr, with its message.
    let docs: Vec<Value> = match super::yaml::documents(text) {
        Some(docs) => docs,
        None => serde_saphyr::from_multiple_with_options(text, manifest_options())
            .map_err(|e| format!("YAML error: {e}"))?,
    };
    let mut out = Vec::new();
    for d in docs {
        match d {
            Value::Null => {}
            Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => {
                match m.get("items") {
                    Some(Value::Array(items)) => {
                        out.extend(items.iter().filter(|v| !v.is_null()).cloned())
                    }
                    None | Some(Value::Null) => {}
                    Some(_) => return Err("kind List: items is not a list".into()),
                }
            }
            Value::Object(_) => out.push(d),
            other => return Err(format!("a document is not a mapping: {}", short(&other))),
        }
    }
    Ok(out)
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!(
            "{}...",
            &s[..s.char_indices().nth(60).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}

/// Turn one document of a cluster directory into a typed, checked object.
pub fn kube_object(value: &Value) -> Result<KubeObject, String> {
    let (kind, _) = describe(value);
    let api = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, String> {
        serde_path_to_error::deserialize(v).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                format!("wrong field type: {inner}")
            } else {
                format!("wrong field type at {path}: {inner}")
            }
        })
    }
    let obj = match (api, kind.as_str()) {
        ("v1", "Service") => KubeObject::Service(typed::<Service>(value)?),
        ("v1", "Pod") => KubeObject::Pod(typed::<Pod>(value)?),
        ("v1", "Node") => KubeObject::Node(typed::<Node>(value)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            KubeObject::EndpointSlice(typed::<EndpointSlice>(value)?)
        }
        (_, "Service" | "Pod" | "Node") => {
            return Err(format!(
                "apiVersion {api:?} is not supported for {kind} (v1)"
            ))
        }
        (_, "EndpointSlice") => {
            return Err(format!(
                "apiVersion {api:?} is not supported for EndpointSlice (discovery.k8s.io/v1)"
            ))
        }
        (_, "") => return Err(format!("the document has no kind; {KINDS_HINT}")),
        (_, k) => return Err(format!("kind {k} skipped: {KINDS_HINT}")),
    };
    endpoints::check(&obj).map_err(|e| e.reason)?;
    Ok(obj)
}

/// A `v1` Secret document of a cluster directory, for `credentialName`
/// (`registry::secrets`): `data` base64 as the API serves it, `stringData` as
/// written. `Ok(None)`: a Secret that holds no TLS keys (not kept). A TLS
/// Secret whose certificate or key does not check out is an error naming why
/// (never the key).
pub fn secret_object(value: &Value) -> Result<Option<RawSecret>, String> {
    let api = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    if api != "v1" {
        return Err(format!(
            "apiVersion {api:?} is not supported for Secret (v1)"
        ));
    }
    let s: k8s_openapi::api::core::v1::Secret = serde_path_to_error::deserialize(value)
        .map_err(|e| format!("wrong field type at {}: {}", e.path(), e.inner()))?;
    let raw = RawSecret::from_k8s(&s);
    if raw.name.is_empty() {
        return Err("metadata.name is missing".into());
    }
    match crate::model::credential::parse_secret(&raw.data) {
        Some(Err(reason)) => Err(reason),
        Some(Ok(_)) => Ok(Some(raw)),
        None if raw.r#type == "kubernetes.io/tls" => {
            Err("type kubernetes.io/tls without tls.crt and tls.key".into())
        }
        None => Ok(None),
    }
}

pub(super) fn is_secret(value: &Value) -> bool {
    value.get("kind").and_then(Value::as_str) == Some("Secret")
}

/// Split a cluster directory's documents into objects and problems. The same
/// object in two files: the first file (by path) wins, the other is rejected.
pub fn cluster_objects(docs: &[Doc]) -> (Vec<KubeObject>, Vec<ObjectProblem>, Vec<ObjectProblem>) {
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let mut seen: HashMap<(String, String), &Path> = HashMap::new();
    for d in docs {
        let (kind, object) = describe(&d.value);
        let problem = |reason: String| ObjectProblem {
            origin: d.file.display().to_string(),
            kind: kind.clone(),
            object: object.clone(),
            reason,
        };
        if is_secret(&d.value) {
            if let Err(reason) = secret_object(&d.value) {
                problems.push(problem(reason));
            }
            continue;
        }
        match kube_object(&d.value) {
            Ok(obj) => {
                if let Some(first) = seen.get(&(kind.clone(), object.clone())) {
                    problems.push(problem(format!(
                        "also defined in {}, which wins",
                        first.display()
                    )));
                    continue;
                }
                seen.insert((kind.clone(), object.clone()), &d.file);
                notes.extend(obj.notes().into_iter().map(&problem));
                objects.push(obj);
            }
            Err(reason) => problems.push(problem(reason)),
        }
    }
    (objects, problems, notes)
}

/// `(kind, namespace/name)` of an object in a cluster directory, as `describe`
/// reads it.
pub(super) type ObjId = (String, String);

/// The valid objects of one parsed file, with its problems and notes.
pub(super) struct Parsed {
    pub(super) objects: Vec<(ObjId, KubeObject)>,
    pub(super) problems: Vec<ObjectProblem>,
    pub(super) notes: Vec<ObjectProblem>,
    pub(super) secrets: Vec<RawSecret>,
}

pub(super) fn parse_cluster_file(path: &Path, text: &[u8]) -> Result<Parsed, String> {
    let text = std::str::from_utf8(text).map_err(|e| format!("not UTF-8: {e}"))?;
    let docs = parse_text(text)?;
    let mut out = Parsed {
        objects: Vec::with_capacity(docs.len()),
        problems: Vec::new(),
        notes: Vec::new(),
        secrets: Vec::new(),
    };
    let mut seen: BTreeSet<ObjId> = BTreeSet::new();
    for d in &docs {
        let (kind, object) = describe(d);
        let problem = |reason: String| ObjectProblem {
            origin: path.display().to_string(),
            kind: kind.clone(),
            object: object.clone(),
            reason,
        };
        if is_secret(d) {
            if !seen.insert((kind.clone(), object.clone())) {
                out.problems
                    .push(problem("defined twice in this file; the first wins".into()));
                continue;
            }
            match secret_object(d) {
                Ok(Some(raw)) => out.secrets.push(raw),
                Ok(None) => {}
                // Kept as rejected by the store too, so a Secret that turns bad
                // stops being served (its clusters and servers are left out).
                Err(reason) => {
                    if let Ok(s) =
                        serde_json::from_value::<k8s_openapi::api::core::v1::Secret>(d.clone())
                    {
                        out.secrets.push(RawSecret::from_k8s(&s));
                    }
                    out.problems.push(problem(reason));
                }
            }
            continue;
        }
        match kube_object(d) {
            Ok(obj) => {
                let id = (kind.clone(), object.clone());
                if !seen.insert(id.clone()) {
                    out.problems
                        .push(problem("defined twice in this file; the first wins".into()));
                    continue;
                }
                out.notes.extend(obj.notes().into_iter().map(&problem));
                out.objects.push((id, obj));
            }
            Err(reason) => out.problems.push(problem(reason)),
        }
    }
    Ok(out)
}

/// What reading one member-cluster file found.
pub(super) enum FileRead<P> {
    /// Gone (deleted, or never there).
    Missing,
    /// Could not be read.
    Failed(std::io::Error),
    /// Same content hash as the last time it was parsed.
    Unchanged,
    /// New or changed content: its hash and what parsing it gave.
    Read {
        hash: u64,
        parsed: Result<P, String>,
    },
}

/// Read `path`; unless `same(hash)`, parse it with `parse`.
pub(super) fn read_file_with<P>(
    path: &Path,
    same: impl FnOnce(u64) -> bool,
    parse: impl FnOnce(&[u8]) -> Result<P, String>,
) -> FileRead<P> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return FileRead::Missing,
        Err(e) => return FileRead::Failed(e),
    };
    let hash = content_hash(&text);
    if same(hash) {
        return FileRead::Unchanged;
    }
    FileRead::Read {
        hash,
        parsed: parse(&text),
    }
}

/// Fewer items than this are handled on the calling thread: starting threads
/// costs more than a watcher event's few files.
pub(super) const PARALLEL_MIN: usize = 16;

/// `items.iter().map(f)` with the items split into one contiguous run per core
/// (`std::thread::scope`), results in the items' order.
pub(super) fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 || items.len() < PARALLEL_MIN {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(cores);
    let f = &f;
    std::thread::scope(|scope| {
        let runs: Vec<_> = items
            .chunks(chunk)
            .map(|run| scope.spawn(move || run.iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for run in runs {
            match run.join() {
                Ok(v) => out.extend(v),
                // A panic in `f` is a bug: surface it on the calling thread.
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        out
    })
}

/// A file's content hash, the same in every process and release: the first 8
/// bytes of its SHA-256 (`std`'s `DefaultHasher` promises no stability).
fn content_hash(text: &[u8]) -> u64 {
    let d = ring::digest::digest(&ring::digest::SHA256, text);
    let mut first = [0u8; 8];
    first.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_cluster_dump_is_one_file() {
        // More documents and nodes than serde-saphyr's default budget allows.
        let doc = "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: n\n";
        let text = doc.repeat(30_000);
        assert_eq!(parse_text(&text).unwrap().len(), 30_000);
    }

    #[test]
    fn parallel_map_keeps_the_items_order() {
        let items: Vec<usize> = (0..PARALLEL_MIN * 7 + 3).collect();
        let out = parallel_map(&items, |i| i * 2);
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        let few: Vec<usize> = (0..3).collect();
        assert_eq!(parallel_map(&few, |i| i + 1), [1, 2, 3]);
    }

    #[test]
    fn lists_and_empty_documents() {
        let docs = parse_text("---\n---\napiVersion: v1\nkind: List\nitems:\n- {kind: Pod}\n- {kind: Node}\n---\n{kind: Service}\n")
            .unwrap();
        assert_eq!(docs.len(), 3);
        assert!(parse_text("- a\n- b\n")
            .unwrap_err()
            .contains("not a mapping"));
        assert!(parse_text("a: [").unwrap_err().contains("YAML error"));
        let v: Value =
            serde_json::json!({"apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice"});
        assert!(kube_object(&v).unwrap_err().contains("discovery.k8s.io/v1"));
    }
}
