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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use notify::Watcher;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info_span, warn, Instrument};

use crate::config::ClusterConfig;
use crate::registry::endpoints::{self, KubeObject};
use crate::registry::secrets::RawSecret;
use crate::registry::{Event, ObjectProblem, Registry};

/// Quiet period after the last file event before a rescan.
pub const DEBOUNCE: Duration = Duration::from_millis(10);
/// Longest a stream of events may delay a rescan.
pub const DEBOUNCE_MAX: Duration = Duration::from_millis(100);
/// Fallback rescan period when no event arrives.
pub const RESCAN: Duration = Duration::from_secs(30);

const KINDS_HINT: &str =
    "crossmesh reads Service, Pod, Node, EndpointSlice and TLS Secret from cluster manifests";

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cluster {0:?} is not read from a manifest directory")]
    NotManifests(String),
}

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
    let docs: Vec<Value> = serde_saphyr::from_multiple_with_options(text, manifest_options())
        .map_err(|e| format!("YAML error: {e}"))?;
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

fn is_secret(value: &Value) -> bool {
    value.get("kind").and_then(Value::as_str) == Some("Secret")
}

/// The files of a directory tree that hold manifests, sorted.
pub fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            // A subdirectory deleted mid-scan is simply gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && d != dir => continue,
            Err(e) => return Err(e),
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue; // editor swap files; a ConfigMap mount's `..data` is reached through its symlinks
            }
            let Ok(ft) = std::fs::metadata(&path).map(|m| m.file_type()) else {
                continue;
            };
            if ft.is_dir() {
                stack.push(path);
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[derive(Debug)]
struct FileEntry {
    hash: u64,
    /// Documents of the last successful parse.
    docs: Vec<Value>,
    /// The current content does not parse (the last good `docs` are served).
    error: Option<String>,
}

/// A directory's files and their last good documents. Pure apart from reading files,
/// so tests drive it without a watcher.
#[derive(Debug)]
pub struct DirState {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileEntry>,
}

/// The outcome of a scan.
#[derive(Debug, Default)]
pub struct Scan {
    pub docs: Vec<Doc>,
    /// File-level problems (unreadable, unparsable).
    pub problems: Vec<ObjectProblem>,
    /// The directory itself could not be read; nothing changed.
    pub dir_error: Option<String>,
    /// Whether any file was added, removed or changed since the last scan.
    pub changed: bool,
}

impl DirState {
    pub fn new(dir: PathBuf) -> DirState {
        DirState {
            dir,
            files: BTreeMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn scan(&mut self) -> Scan {
        let mut scan = Scan::default();
        let paths = match yaml_files(&self.dir) {
            Ok(p) => p,
            Err(e) => {
                scan.dir_error = Some(format!("directory {}: {e}", self.dir.display()));
                return scan;
            }
        };
        let present: BTreeSet<&PathBuf> = paths.iter().collect();
        let before = self.files.len();
        self.files.retain(|p, _| present.contains(p));
        scan.changed |= self.files.len() != before;
        // Read, hash and parse on every core; apply in path order.
        let files = &self.files;
        let read = parallel_map(&paths, |path| {
            read_file_with(
                path,
                |h| files.get(path).is_some_and(|f| f.hash == h),
                |text| match std::str::from_utf8(text) {
                    Ok(t) => parse_text(t),
                    Err(e) => Err(format!("not UTF-8: {e}")),
                },
            )
        });
        for (path, outcome) in paths.iter().zip(read) {
            let (hash, parsed) = match outcome {
                // Deleted between listing and reading: it is gone.
                FileRead::Missing => {
                    scan.changed |= self.files.remove(path).is_some();
                    continue;
                }
                FileRead::Failed(e) => {
                    scan.changed = true;
                    scan.problems.push(file_problem(
                        path,
                        format!("cannot read: {e}"),
                        self.files.get(path),
                    ));
                    continue;
                }
                FileRead::Unchanged => {
                    if let Some(f) = self.files.get(path) {
                        if let Some(e) = &f.error {
                            scan.problems.push(file_problem(path, e.clone(), Some(f)));
                        }
                    }
                    continue;
                }
                FileRead::Read { hash, parsed } => (hash, parsed),
            };
            scan.changed = true;
            match parsed {
                Ok(docs) => {
                    self.files.insert(
                        path.clone(),
                        FileEntry {
                            hash,
                            docs,
                            error: None,
                        },
                    );
                }
                Err(reason) => {
                    let entry = self.files.entry(path.clone()).or_insert(FileEntry {
                        hash,
                        docs: Vec::new(),
                        error: None,
                    });
                    entry.hash = hash;
                    entry.error = Some(reason.clone());
                    scan.problems.push(file_problem(path, reason, Some(entry)));
                }
            }
        }
        for (path, f) in &self.files {
            scan.docs.extend(f.docs.iter().map(|v| Doc {
                file: path.clone(),
                value: v.clone(),
            }));
        }
        scan
    }
}

fn file_problem(path: &Path, reason: String, entry: Option<&FileEntry>) -> ObjectProblem {
    let reason = match entry {
        Some(e) if !e.docs.is_empty() => format!("{reason}; serving the file's last good content"),
        _ => reason,
    };
    ObjectProblem {
        origin: path.display().to_string(),
        kind: String::new(),
        object: String::new(),
        reason,
    }
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

/// Logs each problem once, while it persists, rather than on every rescan.
#[derive(Debug, Default)]
struct Reported(BTreeSet<ObjectProblem>);

impl Reported {
    fn update(&mut self, problems: &[ObjectProblem], notes: &[ObjectProblem]) {
        let now: BTreeSet<ObjectProblem> = problems.iter().chain(notes).cloned().collect();
        for p in problems.iter().filter(|p| !self.0.contains(*p)) {
            warn!(file = %p.origin, kind = %p.kind, object = %p.object, reason = %p.reason, "manifest rejected");
        }
        for p in notes.iter().filter(|p| !self.0.contains(*p)) {
            warn!(file = %p.origin, kind = %p.kind, object = %p.object, note = %p.reason, "manifest note");
        }
        self.0 = now;
    }
}

/// `(kind, namespace/name)` of an object in a cluster directory, as `describe`
/// reads it.
type ObjId = (String, String);

/// What a cluster directory holds of one file: only the identities of its
/// objects and its problems, never the documents (memory stays proportional to
/// what the registry keeps, not to the YAML).
#[derive(Debug, Default)]
struct ClusterFile {
    hash: u64,
    /// Valid objects of the last good parse, in document order.
    objects: Vec<ObjId>,
    /// Document-level problems and notes of the last good parse.
    problems: Vec<ObjectProblem>,
    notes: Vec<ObjectProblem>,
    /// The current content cannot be used; its last good objects are served.
    error: Option<String>,
    /// TLS Secrets of the last good parse (`registry::secrets`, replaced as a
    /// whole per cluster on every change).
    secrets: Vec<RawSecret>,
}

/// Which files changed since the last rescan, as the watcher saw them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ManifestChanges {
    /// Rescan every file: the watcher lost events or saw something other than
    /// a manifest file change (a directory, a ConfigMap mount's `..data` swap).
    pub full: bool,
    /// Manifest files created, modified or deleted.
    pub paths: BTreeSet<PathBuf>,
}

impl ManifestChanges {
    pub fn full() -> ManifestChanges {
        ManifestChanges {
            full: true,
            paths: BTreeSet::new(),
        }
    }

    /// Fold one watcher event in. Returns false if the event changes nothing.
    fn note(&mut self, res: &notify::Result<notify::Event>) -> bool {
        let ev = match res {
            Ok(ev) => ev,
            Err(_) => {
                self.full = true;
                return true;
            }
        };
        if matches!(ev.kind, notify::EventKind::Access(_)) {
            return false;
        }
        if ev.need_rescan() || ev.paths.is_empty() {
            self.full = true;
            return true;
        }
        let mut any = false;
        for p in &ev.paths {
            match p.file_name().and_then(|n| n.to_str()) {
                // Kubernetes ConfigMap/Secret mounts swap a `..data` symlink.
                Some(n) if n.starts_with("..") => self.full = true,
                // Editor swap files and atomic-write staging files: the rename
                // onto the real name comes as its own event.
                Some(n) if n.starts_with('.') => continue,
                Some(n) if n.ends_with(".yaml") || n.ends_with(".yml") => {
                    self.paths.insert(p.clone());
                }
                // A directory (created, removed, renamed) or an unreadable name.
                _ => self.full = true,
            }
            any = true;
        }
        any
    }
}

/// A member cluster's directory, synced incrementally: a rescan reads only the
/// files that changed (all files, hash-compared, on a full rescan), and only
/// the objects of changed files go to the registry, as watch events. A change
/// to one pod file of a 100,000-pod mesh costs that file, not the mesh.
#[derive(Debug)]
pub struct ClusterDir {
    cluster: String,
    dir: PathBuf,
    files: BTreeMap<PathBuf, ClusterFile>,
    /// The files defining each object; the first by path wins.
    owners: HashMap<ObjId, BTreeSet<PathBuf>>,
    /// Objects defined in more than one file.
    dups: BTreeSet<ObjId>,
    /// The file whose version of each object the registry holds.
    applied: HashMap<ObjId, PathBuf>,
    synced: bool,
    reported: Reported,
}

/// The valid objects of one parsed file, with its problems and notes.
struct Parsed {
    objects: Vec<(ObjId, KubeObject)>,
    problems: Vec<ObjectProblem>,
    notes: Vec<ObjectProblem>,
    secrets: Vec<RawSecret>,
}

fn parse_cluster_file(path: &Path, text: &[u8]) -> Result<Parsed, String> {
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
enum FileRead<P> {
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

/// Read, hash and (when the content changed since `known`) parse one file.
fn read_cluster_file(path: &Path, known: &BTreeMap<PathBuf, ClusterFile>) -> FileRead<Parsed> {
    read_file_with(
        path,
        |h| known.get(path).is_some_and(|f| f.hash == h),
        |text| parse_cluster_file(path, text),
    )
}

/// Read `path`; unless `same(hash)`, parse it with `parse`.
fn read_file_with<P>(
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
const PARALLEL_MIN: usize = 16;

/// `items.iter().map(f)` with the items split into one contiguous run per core
/// (`std::thread::scope`), results in the items' order.
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
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

/// A stand-in carrying only kind and name, for `Event::Delete`.
fn tombstone((kind, object): &ObjId) -> Option<KubeObject> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let (ns, name) = match object.split_once('/') {
        Some((ns, name)) => (Some(ns.to_string()), name.to_string()),
        None => (None, object.clone()),
    };
    let metadata = ObjectMeta {
        name: Some(name),
        namespace: ns,
        ..Default::default()
    };
    Some(match kind.as_str() {
        "Service" => KubeObject::Service(Service {
            metadata,
            ..Default::default()
        }),
        "Pod" => KubeObject::Pod(Pod {
            metadata,
            ..Default::default()
        }),
        "Node" => KubeObject::Node(Node {
            metadata,
            ..Default::default()
        }),
        "EndpointSlice" => KubeObject::EndpointSlice(EndpointSlice {
            metadata,
            ..Default::default()
        }),
        _ => return None,
    })
}

impl ClusterDir {
    pub fn new(cluster: &str, dir: PathBuf) -> ClusterDir {
        ClusterDir {
            cluster: cluster.to_string(),
            dir,
            files: BTreeMap::new(),
            owners: HashMap::new(),
            dups: BTreeSet::new(),
            applied: HashMap::new(),
            synced: false,
            reported: Reported::default(),
        }
    }

    /// Rescan every file and hand what changed to the registry. `force` is kept
    /// for callers that want a full rescan; every rescan through this entry point
    /// is full. Returns false when the directory could not be read; the last good
    /// state then stays in force.
    pub fn sync(&mut self, registry: &Registry, _force: bool) -> bool {
        self.sync_changes(registry, &ManifestChanges::full())
    }

    /// Rescan the files `changes` names (all of them before the first sync or
    /// when `changes.full`), then send the registry one event per object whose
    /// winning version changed: the first sync replaces the cluster's state.
    pub fn sync_changes(&mut self, registry: &Registry, changes: &ManifestChanges) -> bool {
        let full = changes.full || !self.synced;
        let paths: Vec<PathBuf> = if full {
            match yaml_files(&self.dir) {
                Ok(listed) => {
                    let listed_set: BTreeSet<&PathBuf> = listed.iter().collect();
                    let gone: Vec<PathBuf> = self
                        .files
                        .keys()
                        .filter(|p| !listed_set.contains(p))
                        .cloned()
                        .collect();
                    listed.into_iter().chain(gone).collect()
                }
                Err(e) => return self.dir_failed(registry, &e),
            }
        } else {
            changes.paths.iter().cloned().collect()
        };
        let mut parsed: HashMap<PathBuf, Vec<(ObjId, KubeObject)>> = HashMap::new();
        let mut affected: BTreeSet<ObjId> = BTreeSet::new();
        // Whether any file's problems may have changed.
        let mut dirty = !self.synced;
        // Reading, hashing and parsing touch no shared state: they run on every
        // core; the results are applied below in path order, one at a time.
        let files = &self.files;
        let read = parallel_map(&paths, |path| read_cluster_file(path, files));
        for (path, outcome) in paths.into_iter().zip(read) {
            let text = match outcome {
                FileRead::Unchanged => continue,
                FileRead::Failed(e) => {
                    let f = self.files.entry(path.clone()).or_default();
                    f.hash = 0;
                    f.error = Some(format!("cannot read: {e}"));
                    dirty = true;
                    continue;
                }
                FileRead::Missing => None,
                FileRead::Read { hash, parsed: file } => Some((hash, file)),
            };
            let Some((hash, file)) = text else {
                if !full && !self.dir.is_dir() {
                    // The directory itself went away: keep the last good state.
                    let e = std::io::Error::from(std::io::ErrorKind::NotFound);
                    return self.dir_failed(registry, &e);
                }
                if let Some(old) = self.files.remove(&path) {
                    self.replace_objects(&path, &old.objects, &[], &mut affected);
                    dirty = true;
                }
                continue;
            };
            dirty = true;
            match file {
                Ok(Parsed {
                    objects,
                    problems,
                    notes,
                    secrets,
                }) => {
                    let old = self.files.remove(&path).unwrap_or_default();
                    let ids: Vec<ObjId> = objects.iter().map(|(id, _)| id.clone()).collect();
                    self.replace_objects(&path, &old.objects, &ids, &mut affected);
                    self.files.insert(
                        path.clone(),
                        ClusterFile {
                            hash,
                            objects: ids,
                            problems,
                            notes,
                            error: None,
                            secrets,
                        },
                    );
                    parsed.insert(path, objects);
                }
                Err(reason) => {
                    let f = self.files.entry(path).or_default();
                    f.hash = hash;
                    f.error = Some(reason);
                }
            }
        }
        let _ = registry.set_error(&self.cluster, None);
        if !self.synced {
            let objects = self.winners_from(&mut parsed, self.owners.keys().cloned().collect());
            if let Err(e) = registry.reset_cluster(&self.cluster, objects) {
                warn!(error = %e, "registry refused the cluster");
                return false;
            }
            self.synced = true;
        } else if !affected.is_empty() {
            for id in &affected {
                let winner = self.owners.get(id).and_then(|o| o.first()).cloned();
                let event = match winner {
                    None => {
                        self.applied.remove(id);
                        tombstone(id).map(Event::Delete)
                    }
                    Some(w) => {
                        let fresh = parsed.contains_key(&w);
                        if !fresh && self.applied.get(id) == Some(&w) {
                            continue; // a losing duplicate changed; the winner did not
                        }
                        self.take_object(&mut parsed, &w, id).map(Event::Upsert)
                    }
                };
                if let Some(ev) = event {
                    if let Err(e) = registry.apply(&self.cluster, ev) {
                        warn!(error = %e, "registry refused the cluster");
                        return false;
                    }
                }
            }
        }
        if dirty {
            self.publish_problems(registry);
            self.publish_secrets(registry);
        }
        true
    }

    /// Every file's TLS Secrets to the registry (the first file by path wins
    /// for a Secret defined twice); the store pushes only on a change.
    fn publish_secrets(&self, registry: &Registry) {
        let mut seen = BTreeSet::new();
        let all: Vec<RawSecret> = self
            .files
            .values()
            .flat_map(|f| f.secrets.iter())
            .filter(|s| seen.insert((s.namespace.clone(), s.name.clone())))
            .cloned()
            .collect();
        registry.reset_secrets(&self.cluster, &all);
    }

    fn dir_failed(&mut self, registry: &Registry, e: &std::io::Error) -> bool {
        let e = format!("directory {}: {e}", self.dir.display());
        warn!(error = %e, "cannot scan manifest directory; keeping the last good state");
        let _ = registry.set_error(&self.cluster, Some(e));
        false
    }

    /// Move `path`'s ownership from the `old` objects to the `new` ones.
    fn replace_objects(
        &mut self,
        path: &Path,
        old: &[ObjId],
        new: &[ObjId],
        affected: &mut BTreeSet<ObjId>,
    ) {
        for id in old {
            if let Some(o) = self.owners.get_mut(id) {
                o.remove(path);
                match o.len() {
                    0 => {
                        self.owners.remove(id);
                    }
                    1 => {
                        self.dups.remove(id);
                    }
                    _ => {}
                }
            }
            affected.insert(id.clone());
        }
        for id in new {
            let o = self.owners.entry(id.clone()).or_default();
            o.insert(path.to_owned());
            if o.len() > 1 {
                self.dups.insert(id.clone());
            }
            affected.insert(id.clone());
        }
    }

    /// The winning version of each of `ids`, for a reset.
    fn winners_from(
        &mut self,
        parsed: &mut HashMap<PathBuf, Vec<(ObjId, KubeObject)>>,
        ids: Vec<ObjId>,
    ) -> Vec<KubeObject> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(w) = self.owners.get(&id).and_then(|o| o.first()).cloned() else {
                continue;
            };
            if let Some(obj) = self.take_object(parsed, &w, &id) {
                out.push(obj);
            }
        }
        out
    }

    /// `id` as defined in file `w` (parsed in this rescan, or read again: a
    /// duplicate's other file became the winner), recorded as applied.
    fn take_object(
        &mut self,
        parsed: &mut HashMap<PathBuf, Vec<(ObjId, KubeObject)>>,
        w: &Path,
        id: &ObjId,
    ) -> Option<KubeObject> {
        if !parsed.contains_key(w) {
            let text = std::fs::read(w).ok()?;
            let p = parse_cluster_file(w, &text).ok()?;
            parsed.insert(w.to_owned(), p.objects);
        }
        let objects = parsed.get_mut(w)?;
        let i = objects.iter().position(|(x, _)| x == id)?;
        let (_, obj) = objects.swap_remove(i);
        self.applied.insert(id.clone(), w.to_owned());
        Some(obj)
    }

    fn publish_problems(&mut self, registry: &Registry) {
        let mut problems = Vec::new();
        let mut notes = Vec::new();
        for (path, f) in &self.files {
            if let Some(e) = &f.error {
                let reason = if f.objects.is_empty() {
                    e.clone()
                } else {
                    format!("{e}; serving the file's last good content")
                };
                problems.push(ObjectProblem {
                    origin: path.display().to_string(),
                    kind: String::new(),
                    object: String::new(),
                    reason,
                });
            }
            problems.extend(f.problems.iter().cloned());
            notes.extend(f.notes.iter().cloned());
        }
        for id in &self.dups {
            let Some(o) = self.owners.get(id) else {
                continue;
            };
            let mut it = o.iter();
            let Some(first) = it.next() else { continue };
            for other in it {
                problems.push(ObjectProblem {
                    origin: other.display().to_string(),
                    kind: id.0.clone(),
                    object: id.1.clone(),
                    reason: format!("also defined in {}, which wins", first.display()),
                });
            }
        }
        self.reported.update(&problems, &notes);
        let _ = registry.set_source_problems(&self.cluster, problems);
    }
}

/// A running directory watch. Dropping it stops the watch.
#[derive(Debug)]
pub struct ManifestWatch {
    task: JoinHandle<()>,
}

impl ManifestWatch {
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Drop for ManifestWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watch a member cluster's manifest directory. Must be called within a tokio runtime.
pub fn spawn_cluster(
    registry: Arc<Registry>,
    cluster: &ClusterConfig,
) -> Result<ManifestWatch, SourceError> {
    let crate::config::ClusterSource::Manifests(dir) = &cluster.source else {
        return Err(SourceError::NotManifests(cluster.name.clone()));
    };
    let span = info_span!("manifests", cluster = %cluster.name, dir = %dir.display());
    let mut state = ClusterDir::new(&cluster.name, dir.clone());
    let task = tokio::spawn(
        watch_loop(dir.clone(), move |_, changes| {
            state.sync_changes(&registry, &changes)
        })
        .instrument(span),
    );
    Ok(ManifestWatch { task })
}

/// The Istio config directory: every document goes to the config store, which
/// validates each one.
#[derive(Debug)]
pub struct ConfigDir {
    source: String,
    state: DirState,
    reported: Reported,
    /// The last scan failed: the next good one reports even if no file changed.
    failed: bool,
}

impl ConfigDir {
    pub fn new(dir: PathBuf) -> ConfigDir {
        ConfigDir {
            source: crate::registry::config_source_name(&crate::config::ConfigSource::Manifests(
                dir.clone(),
            )),
            state: DirState::new(dir),
            reported: Reported::default(),
            failed: false,
        }
    }

    /// The source name the registry knows this directory by (`manifests:DIR`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Rescan and hand every document to the registry (see `ClusterDir::sync`).
    pub fn sync(&mut self, registry: &Registry, force: bool) -> bool {
        let scan = self.state.scan();
        if let Some(e) = scan.dir_error {
            warn!(error = %e, "cannot scan config directory; keeping the last good config");
            registry.set_config_file_problems(
                &self.source,
                vec![ObjectProblem {
                    origin: self.state.dir().display().to_string(),
                    kind: String::new(),
                    object: String::new(),
                    reason: e,
                }],
            );
            self.failed = true;
            return false;
        }
        if !scan.changed && !force && !self.failed {
            return true;
        }
        self.failed = false;
        let docs = scan
            .docs
            .into_iter()
            .map(|d| crate::registry::config::RawDoc {
                origin: d.file.display().to_string(),
                value: d.value,
            })
            .collect();
        registry.replace_config_source(&self.source, docs);
        self.reported.update(&scan.problems, &[]);
        registry.set_config_file_problems(&self.source, scan.problems);
        true
    }
}

/// Watch an Istio config directory. Must be called within a tokio runtime.
pub fn spawn_config(registry: Arc<Registry>, dir: PathBuf) -> ManifestWatch {
    let span = info_span!("manifests", config = %dir.display());
    let mut state = ConfigDir::new(dir.clone());
    let task = tokio::spawn(
        watch_loop(dir, move |first, _| state.sync(&registry, first)).instrument(span),
    );
    ManifestWatch { task }
}

/// Drive `rescan(first, changes)` from file events, debounced, plus the periodic
/// fallback (a full rescan). `first` holds until a rescan succeeds; `changes`
/// names the files the watcher saw change. `rescan` returns false when the
/// directory could not be read (the watch is then re-established and the next
/// rescan is full).
async fn watch_loop(
    dir: PathBuf,
    mut rescan: impl FnMut(bool, ManifestChanges) -> bool + Send + 'static,
) {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let pending = Arc::new(std::sync::Mutex::new(ManifestChanges::default()));
    let mut watcher: Option<notify::RecommendedWatcher> = None;
    let mut first = true;
    let mut next = ManifestChanges::full();
    loop {
        if watcher.is_none() {
            watcher = start_watcher(&dir, tx.clone(), pending.clone());
        }
        let ok = rescan(first, std::mem::take(&mut next));
        first = first && !ok;
        if !ok {
            watcher = None;
        }
        // Wait for an event or the periodic rescan.
        let period = if ok { RESCAN } else { Duration::from_secs(2) };
        match tokio::time::timeout(period, rx.recv()).await {
            Ok(None) => return,
            Ok(Some(())) => {
                debounce(&mut rx).await;
                next = std::mem::take(&mut *pending.lock().unwrap_or_else(|e| e.into_inner()));
            }
            Err(_) => next = ManifestChanges::full(),
        }
        next.full |= !ok;
    }
}

/// A file's content hash, the same in every process and release: the first 8
/// bytes of its SHA-256 (`std`'s `DefaultHasher` promises no stability).
fn content_hash(text: &[u8]) -> u64 {
    let d = ring::digest::digest(&ring::digest::SHA256, text);
    let mut first = [0u8; 8];
    first.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// Wait until `DEBOUNCE` passes without an event (at most `DEBOUNCE_MAX`), with
/// the push queue's quiet-period loop (`push::debounce::settle`). No fast path
/// here: an editor writes a file in several steps.
async fn debounce(rx: &mut mpsc::Receiver<()>) {
    let window = crate::debounce::Window {
        quiet: DEBOUNCE,
        max: DEBOUNCE_MAX,
    };
    crate::debounce::settle(tokio::time::Instant::now(), window, rx).await;
}

fn start_watcher(
    dir: &Path,
    tx: mpsc::Sender<()>,
    pending: Arc<std::sync::Mutex<ManifestChanges>>,
) -> Option<notify::RecommendedWatcher> {
    let handler = move |res: notify::Result<notify::Event>| {
        let relevant = pending.lock().unwrap_or_else(|e| e.into_inner()).note(&res);
        if relevant {
            // Full channel: a rescan is already pending, which will see this change.
            let _ = tx.try_send(());
        }
    };
    let mut w = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "cannot create a file watcher; relying on periodic rescans");
            return None;
        }
    };
    match w.watch(dir, notify::RecursiveMode::Recursive) {
        Ok(()) => Some(w),
        Err(e) => {
            warn!(error = %e, "cannot watch the directory; relying on periodic rescans");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClusterSource, MeshConfig};
    use crate::push::PushQueue;

    #[test]
    fn a_large_cluster_dump_is_one_file() {
        // More documents and nodes than serde-saphyr's default budget allows.
        let doc = "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: n\n";
        let text = doc.repeat(30_000);
        assert_eq!(parse_text(&text).unwrap().len(), 30_000);
    }

    const SVC_AND_POD: &str = r#"
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

    fn pod_yaml(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: web}}}}\n\
             spec: {{containers: [{{name: main}}]}}\n\
             status: {{podIP: {ip}, phase: Running, conditions: [{{type: Ready, status: \"True\"}}]}}\n"
        )
    }

    fn setup(dir: &Path) -> (Arc<Registry>, PushQueue, ClusterConfig) {
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

    const WEB: &str = "web.default.svc.cluster.local";

    fn endpoints(r: &Registry) -> Vec<String> {
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

    fn rejected(r: &Registry) -> Vec<ObjectProblem> {
        r.cluster_status()[0].rejected.clone()
    }

    #[test]
    fn a_rescan_reads_only_the_files_the_watcher_named() {
        let tmp = tempfile::tempdir().unwrap();
        let (r, q, c) = setup(tmp.path());
        let (a, b) = (tmp.path().join("a.yaml"), tmp.path().join("b.yaml"));
        std::fs::write(&a, SVC_AND_POD).unwrap();
        std::fs::write(&b, pod_yaml("web-2", "10.0.0.2")).unwrap();
        let mut d = ClusterDir::new(&c.name, tmp.path().to_owned());
        assert!(
            d.sync_changes(&r, &ManifestChanges::default()),
            "first sync is full"
        );
        assert_eq!(endpoints(&r), ["10.0.0.1", "10.0.0.2"]);
        q.try_take();

        // b changes but the watcher names only a (unchanged): nothing is read anew.
        std::fs::write(&b, pod_yaml("web-2", "10.0.0.3")).unwrap();
        let only_a = ManifestChanges {
            full: false,
            paths: [a.clone()].into(),
        };
        assert!(d.sync_changes(&r, &only_a));
        assert_eq!(endpoints(&r), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(q.try_take(), None);

        // Named: read, and only an EDS push follows.
        let only_b = ManifestChanges {
            full: false,
            paths: [b.clone()].into(),
        };
        assert!(d.sync_changes(&r, &only_b));
        assert_eq!(endpoints(&r), ["10.0.0.1", "10.0.0.3"]);
        assert!(!q.try_take().unwrap().full);

        // A deleted file named by the watcher removes its objects.
        std::fs::remove_file(&b).unwrap();
        assert!(d.sync_changes(&r, &only_b));
        assert_eq!(endpoints(&r), ["10.0.0.1"]);
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
    fn many_files_parse_in_parallel_with_the_same_outcome() {
        let tmp = tempfile::tempdir().unwrap();
        let (r, _q, c) = setup(tmp.path());
        std::fs::write(tmp.path().join("a-svc.yaml"), SVC_AND_POD).unwrap();
        let n = PARALLEL_MIN * 3;
        for i in 0..n {
            let ip = format!("10.0.1.{}", i + 10);
            std::fs::write(
                tmp.path().join(format!("p{i:03}.yaml")),
                pod_yaml(&format!("web-p{i}"), &ip),
            )
            .unwrap();
        }
        // The same pod in a later file loses to the first path; a broken file
        // is named.
        std::fs::write(
            tmp.path().join("z-dup.yaml"),
            pod_yaml("web-p0", "10.0.9.9"),
        )
        .unwrap();
        std::fs::write(tmp.path().join("p-broken.yaml"), "kind: [").unwrap();
        let mut d = ClusterDir::new(&c.name, tmp.path().to_owned());
        assert!(d.sync_changes(&r, &ManifestChanges::full()));
        let mut want: Vec<String> = (0..n).map(|i| format!("10.0.1.{}", i + 10)).collect();
        want.push("10.0.0.1".into());
        want.sort();
        assert_eq!(endpoints(&r), want);
        let mut named: Vec<String> = rejected(&r)
            .iter()
            .map(|p| p.origin.rsplit('/').next().unwrap_or_default().to_string())
            .collect();
        named.sort();
        assert_eq!(named, ["p-broken.yaml", "z-dup.yaml"]);

        // A full rescan with one file changed applies exactly that change.
        std::fs::write(tmp.path().join("p005.yaml"), pod_yaml("web-p5", "10.0.2.5")).unwrap();
        assert!(d.sync_changes(&r, &ManifestChanges::full()));
        let got = endpoints(&r);
        assert!(got.contains(&"10.0.2.5".to_string()), "{got:?}");
        assert!(!got.contains(&"10.0.1.15".to_string()), "{got:?}");
        assert_eq!(got.len(), n + 1);
    }

    #[test]
    fn a_config_directory_of_many_files_scans_in_parallel_with_the_same_outcome() {
        let tmp = tempfile::tempdir().unwrap();
        let n = PARALLEL_MIN * 3;
        for i in 0..n {
            std::fs::write(
                tmp.path().join(format!("c{i:03}.yaml")),
                format!("kind: ConfigMap\nmetadata: {{name: m{i}, namespace: default}}\n"),
            )
            .unwrap();
        }
        std::fs::write(tmp.path().join("c-broken.yaml"), "kind: [").unwrap();
        let mut d = DirState::new(tmp.path().to_owned());
        let scan = d.scan();
        assert!(scan.changed);
        let names: Vec<String> = scan.docs.iter().map(|doc| describe(&doc.value).1).collect();
        let want: Vec<String> = (0..n).map(|i| format!("default/m{i}")).collect();
        assert_eq!(names, want, "documents in path order");
        let broken = |scan: &Scan| -> Vec<String> {
            scan.problems
                .iter()
                .map(|p| p.origin.rsplit('/').next().unwrap_or_default().to_string())
                .collect()
        };
        assert_eq!(broken(&scan), ["c-broken.yaml"]);

        // Unchanged: nothing changed, the broken file is still named.
        let again = d.scan();
        assert!(!again.changed);
        assert_eq!(again.docs.len(), n);
        assert_eq!(broken(&again), ["c-broken.yaml"]);

        // One file changed: its new content is read.
        std::fs::write(
            tmp.path().join("c007.yaml"),
            "kind: ConfigMap\nmetadata: {name: renamed, namespace: default}\n",
        )
        .unwrap();
        let changed = d.scan();
        assert!(changed.changed);
        let names: Vec<String> = changed
            .docs
            .iter()
            .map(|doc| describe(&doc.value).1)
            .collect();
        assert_eq!(names[7], "default/renamed");
    }

    #[test]
    fn a_duplicate_takes_over_when_the_winner_drops_the_object() {
        let tmp = tempfile::tempdir().unwrap();
        let (r, _, c) = setup(tmp.path());
        let (a, b) = (tmp.path().join("a.yaml"), tmp.path().join("b.yaml"));
        std::fs::write(&a, SVC_AND_POD).unwrap();
        std::fs::write(&b, pod_yaml("web-1", "10.0.0.9")).unwrap();
        let mut d = ClusterDir::new(&c.name, tmp.path().to_owned());
        d.sync(&r, true);
        assert_eq!(endpoints(&r), ["10.0.0.1"], "a.yaml wins");
        assert_eq!(rejected(&r).len(), 1);

        // a.yaml keeps only the Service: b.yaml's pod is now the one.
        let svc_only = SVC_AND_POD.split("---").next().unwrap();
        std::fs::write(&a, svc_only).unwrap();
        let changed = ManifestChanges {
            full: false,
            paths: [a.clone()].into(),
        };
        assert!(d.sync_changes(&r, &changed));
        assert_eq!(endpoints(&r), ["10.0.0.9"]);
        assert!(rejected(&r).is_empty(), "{:?}", rejected(&r));
    }

    #[test]
    fn watcher_events_name_files_or_ask_for_a_full_rescan() {
        use notify::event::{CreateKind, EventKind, ModifyKind, RenameMode};
        let ev = |kind, paths: &[&str]| {
            Ok(notify::Event {
                kind,
                paths: paths.iter().map(PathBuf::from).collect(),
                attrs: Default::default(),
            })
        };
        let mut c = ManifestChanges::default();
        assert!(!c.note(&ev(
            EventKind::Create(CreateKind::File),
            &["/d/.svc-1.yaml.tmp"]
        )));
        assert!(c.note(&ev(
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            &["/d/.svc-1.yaml.tmp", "/d/svc-1.yaml"]
        )));
        assert_eq!(c.paths, [PathBuf::from("/d/svc-1.yaml")].into());
        assert!(!c.full);
        c.note(&ev(EventKind::Create(CreateKind::Folder), &["/d/sub"]));
        assert!(c.full, "a directory means a full rescan");
        let mut c = ManifestChanges::default();
        c.note(&ev(EventKind::Create(CreateKind::Any), &["/d/..data"]));
        assert!(c.full, "a ConfigMap mount swap means a full rescan");
        let mut c = ManifestChanges::default();
        c.note(&Err(notify::Error::generic("overflow")));
        assert!(c.full);
    }

    #[test]
    fn bad_documents_are_rejected_while_the_rest_is_served() {
        let tmp = tempfile::tempdir().unwrap();
        let (r, _, c) = setup(tmp.path());
        std::fs::write(tmp.path().join("a.yaml"), SVC_AND_POD).unwrap();
        let bad = format!(
            "{}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cfg, namespace: default}}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: broken, namespace: default}}\n\
             spec: {{ports: [{{port: eighty}}]}}\n\
             ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: noip, namespace: default}}\n\
             spec: {{containers: [{{name: main}}]}}\n",
            pod_yaml("web-2", "10.0.0.2")
        );
        std::fs::create_dir(tmp.path().join("more")).unwrap();
        std::fs::write(tmp.path().join("more/b.yml"), bad).unwrap();
        std::fs::write(tmp.path().join("notes.txt"), "not yaml: [").unwrap();
        let mut d = ClusterDir::new(&c.name, tmp.path().to_owned());
        assert!(d.sync(&r, true));
        assert_eq!(endpoints(&r), ["10.0.0.1", "10.0.0.2"]);
        let rej = rejected(&r);
        let b = tmp.path().join("more/b.yml").display().to_string();
        assert!(
            rej.iter().any(|p| p.origin == b
                && p.kind == "ConfigMap"
                && p.object == "default/cfg"
                && p.reason
                    .contains("crossmesh reads Service, Pod, Node, EndpointSlice and TLS Secret")),
            "{rej:?}"
        );
        assert!(
            rej.iter().any(|p| p.origin == b
                && p.kind == "Service"
                && p.object == "default/broken"
                && p.reason.contains("spec.ports[0].port")),
            "{rej:?}"
        );
        assert_eq!(rej.len(), 2);
        let st = &r.cluster_status()[0];
        assert!(st.notes.iter().any(|n| n.object == "default/noip"));
        assert_eq!(st.counts.pods, 3);
    }

    #[test]
    fn a_half_written_file_keeps_its_last_good_content_and_deletion_removes_only_its_objects() {
        let tmp = tempfile::tempdir().unwrap();
        let (r, q, c) = setup(tmp.path());
        let a = tmp.path().join("a.yaml");
        let b = tmp.path().join("b.yaml");
        std::fs::write(&a, SVC_AND_POD).unwrap();
        std::fs::write(&b, pod_yaml("web-2", "10.0.0.2")).unwrap();
        let mut d = ClusterDir::new(&c.name, tmp.path().to_owned());
        d.sync(&r, true);
        assert_eq!(endpoints(&r), ["10.0.0.1", "10.0.0.2"]);
        q.try_take();

        // Half-written: the YAML breaks mid-document.
        std::fs::write(
            &b,
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web-2, namespace: [",
        )
        .unwrap();
        d.sync(&r, false);
        assert_eq!(endpoints(&r), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(q.try_take(), None, "nothing served changed");
        let rej = rejected(&r);
        assert_eq!(rej.len(), 1);
        assert_eq!(rej[0].origin, b.display().to_string());
        assert!(
            rej[0].reason.contains("YAML error") && rej[0].reason.contains("last good"),
            "{rej:?}"
        );

        // Fixed with new content: served, problem gone, EDS push only.
        std::fs::write(&b, pod_yaml("web-2", "10.0.0.3")).unwrap();
        d.sync(&r, false);
        assert_eq!(endpoints(&r), ["10.0.0.1", "10.0.0.3"]);
        assert!(rejected(&r).is_empty());
        let req = q.try_take().unwrap();
        assert!(!req.full);

        // Deleted: only its pod leaves.
        std::fs::remove_file(&b).unwrap();
        d.sync(&r, false);
        assert_eq!(endpoints(&r), ["10.0.0.1"]);

        // The same object in two files: the first path wins, the second is named.
        std::fs::write(&b, SVC_AND_POD.replace("10.0.0.1", "10.0.0.9")).unwrap();
        d.sync(&r, false);
        assert_eq!(endpoints(&r), ["10.0.0.1"]);
        let rej = rejected(&r);
        assert_eq!(rej.len(), 2);
        assert!(rej
            .iter()
            .all(|p| p.reason.contains("a.yaml") && p.origin.ends_with("b.yaml")));

        // The directory vanishing keeps the last good state and reports the error.
        drop(tmp);
        assert!(!d.sync(&r, false));
        assert_eq!(endpoints(&r), ["10.0.0.1"]);
        assert!(r.cluster_status()[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("directory"));
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

    #[test]
    fn config_directory_feeds_the_config_store() {
        let tmp = tempfile::tempdir().unwrap();
        let (r, q, _) = setup(Path::new("/nonexistent"));
        let gw = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: default}\n\
                  spec:\n  selector: {istio: ingressgateway}\n  servers:\n  \
                  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n";
        std::fs::write(tmp.path().join("gw.yaml"), gw).unwrap();
        std::fs::write(tmp.path().join("bad.yaml"), "kind: [").unwrap();
        let mut d = ConfigDir::new(tmp.path().to_owned());
        assert_eq!(d.source(), format!("manifests:{}", tmp.path().display()));
        assert!(d.sync(&r, true));
        assert!(q
            .try_take()
            .is_some_and(|r| r.full && r.reasons.contains("config")));
        let st = r.config_status();
        assert_eq!(st.in_force.len(), 1);
        assert_eq!(st.rejected.len(), 1);
        assert!(
            st.rejected[0].origin.ends_with("bad.yaml")
                && st.rejected[0].reason.contains("YAML error")
        );
        // No change, no push.
        assert!(d.sync(&r, false));
        assert_eq!(q.try_take(), None);
        std::fs::remove_file(tmp.path().join("gw.yaml")).unwrap();
        std::fs::remove_file(tmp.path().join("bad.yaml")).unwrap();
        d.sync(&r, false);
        assert!(q.try_take().is_some_and(|r| r.full));
        let st = r.config_status();
        assert!(st.in_force.is_empty() && st.rejected.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn debounce_waits_for_quiet_but_not_forever() {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let t0 = tokio::time::Instant::now();
        debounce(&mut rx).await;
        assert_eq!(t0.elapsed(), DEBOUNCE);

        // Events closer than DEBOUNCE never leave a quiet period: capped at DEBOUNCE_MAX.
        let writer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(DEBOUNCE / 2).await;
                let _ = tx.try_send(());
            }
        });
        let t1 = tokio::time::Instant::now();
        debounce(&mut rx).await;
        assert_eq!(t1.elapsed(), DEBOUNCE_MAX);
        writer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn periodic_rescan_without_events() {
        let tmp = tempfile::tempdir().unwrap();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = count.clone();
        let task = tokio::spawn(watch_loop(tmp.path().to_owned(), move |_, _| {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            true
        }));
        tokio::time::sleep(RESCAN / 2).await;
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
        tokio::time::sleep(RESCAN).await;
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
        task.abort();
    }

    /// The watcher: a written file reaches the registry, a deleted one leaves it.
    /// Waits on the condition with a deadline, never a fixed sleep.
    #[tokio::test]
    async fn watched_directory_follows_file_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let (r, _, c) = setup(tmp.path());
        let _watch = spawn_cluster(r.clone(), &c).unwrap();
        let wait = |want: Vec<&'static str>| {
            let r = r.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                loop {
                    if endpoints(&r) == want {
                        return;
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "still {:?}, want {want:?}",
                        endpoints(&r)
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !r.cluster_status()[0].synced {
            assert!(tokio::time::Instant::now() < deadline, "never synced");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::fs::write(tmp.path().join("a.yaml"), SVC_AND_POD).unwrap();
        wait(vec!["10.0.0.1"]).await;
        std::fs::write(tmp.path().join("b.yaml"), pod_yaml("web-2", "10.0.0.2")).unwrap();
        wait(vec!["10.0.0.1", "10.0.0.2"]).await;
        std::fs::remove_file(tmp.path().join("b.yaml")).unwrap();
        wait(vec!["10.0.0.1"]).await;
    }
}
