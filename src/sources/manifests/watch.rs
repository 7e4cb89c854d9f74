//! Watching a manifest directory: file events (notify, recursive) folded into
//! `ManifestChanges`, debounced, then a rescan of `dir::ClusterDir` or
//! `dir::ConfigDir`; a periodic full rescan catches what the watcher missed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::Watcher;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info_span, warn, Instrument};

use super::dir::{ClusterDir, ConfigDir};
use crate::config::ClusterConfig;
use crate::registry::Registry;

/// Quiet period after the last file event before a rescan.
pub const DEBOUNCE: Duration = Duration::from_millis(10);
/// Longest a stream of events may delay a rescan.
pub const DEBOUNCE_MAX: Duration = Duration::from_millis(100);
/// Fallback rescan period when no event arrives.
pub const RESCAN: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cluster {0:?} is not read from a manifest directory")]
    NotManifests(String),
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
    use super::super::test_util::*;
    use super::*;

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
