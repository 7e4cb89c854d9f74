//! The seam between the push engine and the ADS server: a `SnapshotSource` hands
//! each connected proxy a `tokio::sync::watch` channel holding its latest
//! `Update`. A watch channel keeps only the latest value, so a slow proxy skips
//! intermediate states instead of buffering history: memory per connection is
//! bounded whatever the push rate.
//!
//! `push::Pusher` is the production source. `FixedSource` serves one snapshot to
//! every proxy (tests, and the load harness's floor server).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use super::resource::{ProxySnapshot, TypeUrl};
use crate::model::Proxy;

/// Identifies one ADS stream for the lifetime of the process.
pub type ConnId = u64;

/// Names that changed (added, modified or removed) per type between two snapshots.
/// `None` for a type means "unknown: compare everything".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotChanges {
    /// `seq` of the snapshot these changes are relative to. A connection may use
    /// them only if that is the snapshot it last processed; otherwise it diffs.
    pub base_seq: u64,
    pub names: [Option<Arc<BTreeSet<Arc<str>>>>; 5],
}

impl SnapshotChanges {
    /// Nothing known: every type must be compared.
    pub fn unknown(base_seq: u64) -> SnapshotChanges {
        SnapshotChanges {
            base_seq,
            names: Default::default(),
        }
    }

    pub fn get(&self, t: TypeUrl) -> Option<&BTreeSet<Arc<str>>> {
        self.names[t.index()].as_deref()
    }
}

/// What a connection's watch channel holds.
#[derive(Debug, Clone, Default)]
pub struct Update {
    pub snapshot: Arc<ProxySnapshot>,
    /// What changed relative to the proxy's previous snapshot, when known.
    pub changes: Option<Arc<SnapshotChanges>>,
    /// When the first change merged into this push happened (convergence time).
    pub triggered: Option<Instant>,
}

impl Update {
    /// The names of `t` that may differ from the snapshot with seq `last_seq`, or
    /// `None` if the connection must compare everything.
    pub fn changed_since(&self, last_seq: u64, t: TypeUrl) -> Option<&BTreeSet<Arc<str>>> {
        match &self.changes {
            Some(c) if c.base_seq == last_seq => c.get(t),
            _ => None,
        }
    }
}

/// Where the ADS server gets each proxy's resources from.
pub trait SnapshotSource: Send + Sync + 'static {
    /// A proxy connected. The returned channel already holds its current snapshot
    /// (computed from the latest push context if needed), so the first request can
    /// be answered without waiting for the next push.
    fn connect(&self, conn: ConnId, proxy: Arc<Proxy>) -> watch::Receiver<Update>;
    /// The stream `conn` ended.
    fn disconnect(&self, conn: ConnId);
    /// The locality of a proxy whose node carries none (`node.locality` unset),
    /// read once when it connects; `None` if the source does not know it.
    fn proxy_locality(&self, _proxy: &Proxy) -> Option<crate::model::Locality> {
        None
    }
    /// Whether `connect` would answer from a complete view of the mesh. The
    /// server holds a new stream (it answers nothing) until this is true, as
    /// istiod refuses streams until it is ready: a proxy reconnecting to a
    /// restarted control plane must not get a partial config (endpoints of the
    /// clusters loaded so far) and then the full one again.
    fn ready(&self) -> bool {
        true
    }
}

/// Serves one snapshot to every connected proxy; `set` replaces it for all.
#[derive(Debug, Default)]
pub struct FixedSource {
    /// std `Mutex`: held only to clone or swap a few `Arc`s, never across `.await`.
    inner: Mutex<FixedInner>,
}

#[derive(Debug, Default)]
struct FixedInner {
    current: Update,
    conns: HashMap<ConnId, watch::Sender<Update>>,
}

impl FixedSource {
    pub fn new(snapshot: ProxySnapshot) -> FixedSource {
        let s = FixedSource::default();
        s.lock().current.snapshot = Arc::new(snapshot);
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FixedInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replace the snapshot for every proxy. `changes` may describe what differs
    /// from the previous snapshot (relative to its `seq`); `None` makes every
    /// connection compare everything.
    pub fn set(&self, snapshot: ProxySnapshot, changes: Option<SnapshotChanges>) {
        let mut inner = self.lock();
        inner.current = Update {
            snapshot: Arc::new(snapshot),
            changes: changes.map(Arc::new),
            triggered: Some(Instant::now()),
        };
        let update = inner.current.clone();
        for tx in inner.conns.values() {
            tx.send_replace(update.clone());
        }
    }

    pub fn current(&self) -> Arc<ProxySnapshot> {
        self.lock().current.snapshot.clone()
    }

    pub fn connected(&self) -> usize {
        self.lock().conns.len()
    }
}

impl SnapshotSource for FixedSource {
    fn connect(&self, conn: ConnId, _proxy: Arc<Proxy>) -> watch::Receiver<Update> {
        let mut inner = self.lock();
        let first = Update {
            changes: None,
            ..inner.current.clone()
        };
        let (tx, rx) = watch::channel(first);
        inner.conns.insert(conn, tx);
        rx
    }

    fn disconnect(&self, conn: ConnId) {
        self.lock().conns.remove(&conn);
    }
}
