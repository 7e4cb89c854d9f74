//! What a manifest directory holds: `DirState` (an Istio config directory's
//! files and their last good documents), `ClusterDir` (a member cluster's
//! files, synced incrementally into the registry as watch events) and
//! `ConfigDir` (the config directory fed to the config store).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;
use tracing::warn;

use super::parse::{
    parallel_map, parse_cluster_file, parse_text, read_file_with, Doc, FileRead, ObjId, Parsed,
};
use super::watch::ManifestChanges;
use crate::registry::endpoints::KubeObject;
use crate::registry::secrets::RawSecret;
use crate::registry::{Event, ObjectProblem, Registry};

/// The valid objects of one file parsed in this rescan, taken out one by one
/// by identity (a file defines each object once: `parse_cluster_file` drops a
/// second definition).
struct FileObjects {
    objects: Vec<(ObjId, KubeObject)>,
    /// Position of each object, built on the first take from a file of more
    /// than `INDEXED` objects (a whole cluster in one file), so that taking
    /// all of them costs linear time, not quadratic; a small file is searched.
    index: Option<HashMap<ObjId, usize>>,
}

const INDEXED: usize = 32;

impl FileObjects {
    fn new(objects: Vec<(ObjId, KubeObject)>) -> FileObjects {
        FileObjects {
            objects,
            index: None,
        }
    }

    fn take(&mut self, id: &ObjId) -> Option<KubeObject> {
        if self.objects.len() <= INDEXED && self.index.is_none() {
            let i = self.objects.iter().position(|(x, _)| x == id)?;
            return Some(self.objects.swap_remove(i).1);
        }
        let index = self.index.get_or_insert_with(|| {
            let objects = &self.objects;
            objects
                .iter()
                .enumerate()
                .map(|(i, (x, _))| (x.clone(), i))
                .collect()
        });
        let i = index.remove(id)?;
        let (_, obj) = self.objects.swap_remove(i);
        // The last object moved into `i`.
        if let Some((moved, _)) = self.objects.get(i) {
            index.insert(moved.clone(), i);
        }
        Some(obj)
    }
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
/// Read, hash and (when the content changed since `known`) parse one file.
fn read_cluster_file(path: &Path, known: &BTreeMap<PathBuf, ClusterFile>) -> FileRead<Parsed> {
    read_file_with(
        path,
        |h| known.get(path).is_some_and(|f| f.hash == h),
        |text| parse_cluster_file(path, text),
    )
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
        let mut parsed: HashMap<PathBuf, FileObjects> = HashMap::new();
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
                    parsed.insert(path, FileObjects::new(objects));
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
        parsed: &mut HashMap<PathBuf, FileObjects>,
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
        parsed: &mut HashMap<PathBuf, FileObjects>,
        w: &Path,
        id: &ObjId,
    ) -> Option<KubeObject> {
        if !parsed.contains_key(w) {
            let text = std::fs::read(w).ok()?;
            let p = parse_cluster_file(w, &text).ok()?;
            parsed.insert(w.to_owned(), FileObjects::new(p.objects));
        }
        let obj = parsed.get_mut(w)?.take(id)?;
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

#[cfg(test)]
mod tests {
    use super::super::parse::{describe, PARALLEL_MIN};
    use super::super::test_util::*;
    use super::*;

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

    /// A whole cluster in one file (a `kubectl get -o yaml` dump): every object
    /// reaches the registry, and a later edit of that file applies exactly what
    /// changed, with the objects of the other file untouched.
    #[test]
    fn one_file_holding_a_whole_cluster_syncs_every_object() {
        let tmp = tempfile::tempdir().unwrap();
        let (r, _, c) = setup(tmp.path());
        let n = 2_000;
        let pods = |moved: usize| -> String {
            (0..n)
                .map(|i| {
                    let ip = if i == moved {
                        "10.9.0.1".to_string()
                    } else {
                        format!("10.1.{}.{}", i / 250, i % 250 + 1)
                    };
                    format!("---\n{}", pod_yaml(&format!("web-p{i}"), &ip))
                })
                .collect()
        };
        let dump = tmp.path().join("dump.yaml");
        std::fs::write(tmp.path().join("a-svc.yaml"), SVC_AND_POD).unwrap();
        std::fs::write(&dump, pods(usize::MAX)).unwrap();
        let mut d = ClusterDir::new(&c.name, tmp.path().to_owned());
        assert!(d.sync_changes(&r, &ManifestChanges::full()));
        let got = endpoints(&r);
        assert_eq!(got.len(), n + 1, "every pod of the dump and a-svc.yaml's");
        assert!(got.contains(&"10.1.7.250".to_string()), "web-p1999");
        assert!(rejected(&r).is_empty(), "{:?}", rejected(&r));

        // The dump changes one pod's address and drops the last pod.
        let edited = pods(17).replace(&format!("---\n{}", pod_yaml("web-p1999", "10.1.7.250")), "");
        std::fs::write(&dump, edited).unwrap();
        let changed = ManifestChanges {
            full: false,
            paths: [dump.clone()].into(),
        };
        assert!(d.sync_changes(&r, &changed));
        let got = endpoints(&r);
        assert_eq!(got.len(), n);
        assert!(got.contains(&"10.9.0.1".to_string()), "web-p17 moved");
        assert!(
            !got.contains(&"10.1.0.18".to_string()),
            "web-p17's old address"
        );
        assert!(
            !got.contains(&"10.1.7.250".to_string()),
            "web-p1999 removed"
        );
        assert!(got.contains(&"10.0.0.1".to_string()), "a-svc.yaml's pod");
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
}
