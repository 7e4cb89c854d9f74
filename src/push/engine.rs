//! The push engine: turns debounced `PushRequest`s into per-proxy snapshots.
//!
//! Per push it builds an immutable `PushContext` (seq + 1) from the
//! `ContextSource`, then:
//! - **full push**: CDS/LDS/RDS are generated once per `translate::ProxyClass`
//!   (the proxy fields translation reads) and shared by every proxy of the class;
//!   every service's EDS is recomputed into one global EDS map;
//! - **endpoint push**: only the changed services' ClusterLoadAssignments are
//!   recomputed; every other assignment and every class's CDS/LDS/RDS map is
//!   reused as is (same `Arc`).
//!
//! Every resource is encoded once (`Resource::encode`, counted in
//! `crossmesh_encodes`) and interned by (type, name, version), so identical
//! content is one allocation shared by every class and every push that has it.
//! Each connection gets its snapshot through a `watch` channel (latest value only:
//! bounded memory for slow proxies) together with the names that changed since its
//! previous snapshot, so a stream skips unchanged types without diffing and only
//! streams subscribed to a changed cluster send anything.
//!
//! Entry points: `Pusher::new(source, queue, tunables)`, `Pusher::run()` (the
//! debounce/push loop, run it as a task), `Pusher::push_now(req)` (one push,
//! synchronously), and `Pusher` as the server's `xds::SnapshotSource`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use prost::Message;
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};

use super::{ContextSource, PushQueue, PushRequest};
use crate::config::Tunables;
use crate::metrics::{metrics, ReasonLabel};
use crate::model::{Proxy, PushContext};
use crate::translate::{self, ProxyClass};
use crate::xds::source::{Changes, ConnId, SnapshotSource, Update};
use crate::xds::{ProxySnapshot, Resource, ResourceMap, TypeUrl};

/// The push engine; cheap to clone (one shared state).
#[derive(Clone)]
pub struct Pusher {
    inner: Arc<Inner>,
}

struct Inner {
    source: Arc<dyn ContextSource>,
    queue: PushQueue,
    tunables: Tunables,
    /// std `Mutex`: pushes and proxy connects are serialised through it so a new
    /// connection sees either the state before a push (and then gets that push)
    /// or after it. It is never held across `.await`.
    state: Mutex<State>,
}

type InternKey = (TypeUrl, Arc<str>, Arc<str>);

#[derive(Default)]
struct State {
    ctx: Option<Arc<PushContext>>,
    /// Every ClusterLoadAssignment of the mesh by resource (cluster) name.
    eds: ResourceMap,
    /// The EDS names each service produced, to replace them on endpoint pushes.
    eds_by_service: HashMap<Arc<str>, Vec<Arc<str>>>,
    classes: HashMap<ProxyClass, ClassState>,
    conns: HashMap<ConnId, ConnEntry>,
    /// CDS/LDS/RDS resources of the current push by (type, name, version).
    interned: HashMap<InternKey, Arc<Resource>>,
}

struct ClassState {
    maps: ClassMaps,
    snapshot: Arc<ProxySnapshot>,
    /// Connections of this class; the class is dropped when it reaches zero.
    members: usize,
}

#[derive(Clone, Default)]
struct ClassMaps {
    clusters: ResourceMap,
    listeners: ResourceMap,
    routes: ResourceMap,
}

struct ConnEntry {
    proxy: Arc<Proxy>,
    class: ProxyClass,
    tx: watch::Sender<Update>,
}

/// Outcome of one push, for tests and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSummary {
    pub seq: u64,
    pub full: bool,
    /// Proxy classes generated (full push) or updated (endpoint push).
    pub classes: usize,
    /// Connections handed a new snapshot.
    pub proxies: usize,
    /// EDS resource names that changed.
    pub eds_changed: usize,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Encode one resource (counted) and intern it by (type, name, version): if an
/// equal resource exists in this push or the previous one, that `Arc` is reused.
fn intern<M: Message>(
    t: TypeUrl,
    name: &str,
    msg: &M,
    new: &mut HashMap<InternKey, Arc<Resource>>,
    old: &HashMap<InternKey, Arc<Resource>>,
) -> Arc<Resource> {
    let r = Resource::encode(t, name, msg);
    metrics().encodes.inc();
    let key = (t, r.name.clone(), r.version.clone());
    if let Some(existing) = new.get(&key) {
        return existing.clone();
    }
    let shared = old.get(&key).cloned().unwrap_or(r);
    new.insert(key, shared.clone());
    shared
}

/// Keep `old` (same `Arc`) when `new` holds the same names and versions, so
/// streams can skip the type by pointer comparison.
fn reuse_if_equal(
    old: Option<&ResourceMap>,
    new: BTreeMap<Arc<str>, Arc<Resource>>,
) -> ResourceMap {
    if let Some(old) = old {
        if old.len() == new.len()
            && old
                .iter()
                .zip(new.iter())
                .all(|((a, x), (b, y))| a == b && x.version == y.version)
        {
            return old.clone();
        }
    }
    Arc::new(new)
}

/// Names added, removed or changed between two maps.
fn diff(old: &ResourceMap, new: &ResourceMap) -> BTreeSet<Arc<str>> {
    let mut out = BTreeSet::new();
    if Arc::ptr_eq(old, new) {
        return out;
    }
    for (name, r) in new.iter() {
        if old.get(name).is_none_or(|o| o.version != r.version) {
            out.insert(name.clone());
        }
    }
    for name in old.keys() {
        if !new.contains_key(name) {
            out.insert(name.clone());
        }
    }
    out
}

fn to_map<'a, M: Message + 'a>(
    t: TypeUrl,
    items: impl IntoIterator<Item = (&'a str, &'a M)>,
    class: &ProxyClass,
    new: &mut HashMap<InternKey, Arc<Resource>>,
    old: &HashMap<InternKey, Arc<Resource>>,
) -> BTreeMap<Arc<str>, Arc<Resource>> {
    let mut map = BTreeMap::new();
    for (name, msg) in items {
        if map.contains_key(name) {
            warn!(
                type_url = t.short(),
                name,
                ?class,
                "translation produced a duplicate name; keeping the first"
            );
            continue;
        }
        let r = intern(t, name, msg, new, old);
        map.insert(r.name.clone(), r);
    }
    map
}

impl State {
    fn empty_map() -> ResourceMap {
        ResourceMap::default()
    }

    /// Generate and encode CDS/LDS/RDS for one class.
    fn build_class(
        proxy: &Proxy,
        ctx: &PushContext,
        class: &ProxyClass,
        previous: Option<&ClassMaps>,
        new: &mut HashMap<InternKey, Arc<Resource>>,
        old: &HashMap<InternKey, Arc<Resource>>,
    ) -> ClassMaps {
        let g = translate::generate(proxy, ctx);
        let clusters = to_map(
            TypeUrl::Cluster,
            g.clusters.iter().map(|c| (c.name.as_str(), c)),
            class,
            new,
            old,
        );
        let listeners = to_map(
            TypeUrl::Listener,
            g.listeners.iter().map(|l| (l.name.as_str(), l)),
            class,
            new,
            old,
        );
        let routes = to_map(
            TypeUrl::Route,
            g.routes.iter().map(|r| (r.name.as_str(), r)),
            class,
            new,
            old,
        );
        ClassMaps {
            clusters: reuse_if_equal(previous.map(|p| &p.clusters), clusters),
            listeners: reuse_if_equal(previous.map(|p| &p.listeners), listeners),
            routes: reuse_if_equal(previous.map(|p| &p.routes), routes),
        }
    }

    fn snapshot(seq: u64, maps: &ClassMaps, eds: &ResourceMap) -> Arc<ProxySnapshot> {
        Arc::new(ProxySnapshot {
            seq,
            resources: [
                maps.clusters.clone(),
                eds.clone(),
                maps.listeners.clone(),
                maps.routes.clone(),
                State::empty_map(),
            ],
        })
    }

    /// Encode the assignments of one service into `map`; returns their names.
    fn service_eds(
        svc: &crate::model::Service,
        ctx: &PushContext,
        old_eds: &ResourceMap,
        map: &mut BTreeMap<Arc<str>, Arc<Resource>>,
    ) -> Vec<Arc<str>> {
        let mut names = Vec::new();
        for cla in translate::endpoints(svc, ctx) {
            let r = Resource::encode(TypeUrl::Endpoint, cla.cluster_name.as_str(), &cla);
            metrics().encodes.inc();
            let r = match old_eds.get(&r.name) {
                Some(o) if o.version == r.version => o.clone(),
                _ => r,
            };
            if map.insert(r.name.clone(), r.clone()).is_some() {
                warn!(name = %r.name, service = %svc.hostname, "two services produced one EDS name; the later wins");
            }
            names.push(r.name.clone());
        }
        names
    }

    /// Hand each connection of `class` its new snapshot. The class's change set
    /// applies only to connections whose current snapshot is the class's previous
    /// one; others (new to the class, or lagging) get `None` and diff.
    fn publish(
        conns: &HashMap<ConnId, ConnEntry>,
        members: &[ConnId],
        prev: Option<&Arc<ProxySnapshot>>,
        snapshot: &Arc<ProxySnapshot>,
        changes: &Arc<Changes>,
        triggered: Option<Instant>,
    ) -> usize {
        let mut n = 0;
        for id in members {
            let Some(c) = conns.get(id) else { continue };
            let applies = prev.is_some_and(|p| Arc::ptr_eq(&c.tx.borrow().snapshot, p));
            c.tx.send_replace(Update {
                snapshot: snapshot.clone(),
                changes: applies.then(|| changes.clone()),
                triggered,
            });
            n += 1;
        }
        n
    }
}

impl Pusher {
    pub fn new(source: Arc<dyn ContextSource>, queue: PushQueue, tunables: Tunables) -> Pusher {
        Pusher {
            inner: Arc::new(Inner {
                source,
                queue,
                tunables,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The queue this engine consumes.
    pub fn queue(&self) -> &PushQueue {
        &self.inner.queue
    }

    /// The latest push context, if any push happened.
    pub fn context(&self) -> Option<Arc<PushContext>> {
        lock(&self.inner.state).ctx.clone()
    }

    /// Debounce and push forever. Each push runs on the blocking pool: it is CPU
    /// work (translation and encoding) that must not stall the streams.
    pub async fn run(self) {
        loop {
            let (req, started) = super::debounce::debounce(&self.inner.queue, &self.inner.tunables)
                .instrument(tracing::debug_span!("debounce"))
                .await;
            let this = self.clone();
            let triggered = Instant::now() - started.elapsed();
            let res = tokio::task::spawn_blocking(move || this.push_at(req, Some(triggered))).await;
            if let Err(e) = res {
                // A panic in translation must not stop future pushes.
                warn!(error = %e, "push failed");
            }
        }
    }

    /// Run one push now (no debounce).
    pub fn push_now(&self, req: PushRequest) -> PushSummary {
        self.push_at(req, Some(Instant::now()))
    }

    fn new_context(&self, seq: u64) -> Arc<PushContext> {
        let s = &self.inner.source;
        Arc::new(PushContext {
            seq,
            mesh: s.mesh(),
            services: s.services(),
            config: s.config(),
        })
    }

    fn push_at(&self, req: PushRequest, triggered: Option<Instant>) -> PushSummary {
        let t0 = Instant::now();
        for reason in &req.reasons {
            metrics()
                .push_triggers
                .get_or_create(&ReasonLabel {
                    reason: reason.to_string(),
                })
                .inc();
        }
        let mut st = lock(&self.inner.state);
        let summary = if req.full || st.ctx.is_none() {
            self.full_push(&mut st, triggered).0
        } else {
            self.endpoint_push(&mut st, &req.services, triggered)
        };
        drop(st);
        let elapsed = t0.elapsed();
        metrics().push_time.observe(elapsed.as_secs_f64());
        if let Some(t) = triggered {
            metrics()
                .convergence_time
                .observe(t.elapsed().as_secs_f64());
        }
        info!(
            seq = summary.seq,
            full = summary.full,
            classes = summary.classes,
            proxies = summary.proxies,
            eds_changed = summary.eds_changed,
            reasons = ?req.reasons,
            ms = elapsed.as_millis() as u64,
            "push"
        );
        summary
    }

    fn full_push(
        &self,
        st: &mut State,
        triggered: Option<Instant>,
    ) -> (PushSummary, Arc<PushContext>) {
        let seq = st.ctx.as_ref().map_or(0, |c| c.seq) + 1;
        let ctx = self.new_context(seq);

        // EDS: every service.
        let mut eds = BTreeMap::new();
        let mut by_service = HashMap::new();
        for (host, svc) in ctx.services.iter() {
            let names = State::service_eds(svc, &ctx, &st.eds, &mut eds);
            by_service.insert(host.clone(), names);
        }
        let eds = reuse_if_equal(Some(&st.eds), eds);
        let eds_changed = Arc::new(diff(&st.eds, &eds));

        // Group connections by class under the new context.
        let mut groups: HashMap<ProxyClass, Vec<ConnId>> = HashMap::new();
        for (id, c) in st.conns.iter() {
            groups
                .entry(ProxyClass::of(&c.proxy, &ctx))
                .or_default()
                .push(*id);
        }
        let old_interned = std::mem::take(&mut st.interned);
        let mut interned = HashMap::new();
        let mut classes = HashMap::new();
        let mut proxies = 0;
        for (class, members) in groups {
            let Some(rep) = members.first().and_then(|id| st.conns.get(id)) else {
                continue;
            };
            let previous = st.classes.get(&class);
            let maps = State::build_class(
                &rep.proxy,
                &ctx,
                &class,
                previous.map(|p| &p.maps),
                &mut interned,
                &old_interned,
            );
            let snapshot = State::snapshot(seq, &maps, &eds);
            let changes = Arc::new(match previous {
                Some(p) => Changes {
                    base_seq: p.snapshot.seq,
                    names: [
                        Some(Arc::new(diff(&p.maps.clusters, &maps.clusters))),
                        Some(eds_changed.clone()),
                        Some(Arc::new(diff(&p.maps.listeners, &maps.listeners))),
                        Some(Arc::new(diff(&p.maps.routes, &maps.routes))),
                        Some(Arc::default()),
                    ],
                },
                None => Changes::unknown(0),
            });
            proxies += State::publish(
                &st.conns,
                &members,
                previous.map(|p| &p.snapshot),
                &snapshot,
                &changes,
                triggered,
            );
            for id in &members {
                if let Some(c) = st.conns.get_mut(id) {
                    c.class = class.clone();
                }
            }
            let members = members.len();
            classes.insert(
                class,
                ClassState {
                    maps,
                    snapshot,
                    members,
                },
            );
        }
        let summary = PushSummary {
            seq,
            full: true,
            classes: classes.len(),
            proxies,
            eds_changed: eds_changed.len(),
        };
        st.ctx = Some(ctx.clone());
        st.eds = eds;
        st.eds_by_service = by_service;
        st.classes = classes;
        st.interned = interned;
        (summary, ctx)
    }

    fn endpoint_push(
        &self,
        st: &mut State,
        services: &BTreeSet<Arc<str>>,
        triggered: Option<Instant>,
    ) -> PushSummary {
        let seq = st.ctx.as_ref().map_or(0, |c| c.seq) + 1;
        let ctx = self.new_context(seq);
        // Recompute only the changed services; everything else keeps its Arc.
        let mut fresh = BTreeMap::new();
        let mut dropped: Vec<Arc<str>> = Vec::new();
        for host in services {
            if let Some(old) = st.eds_by_service.remove(host) {
                dropped.extend(old);
            }
            if let Some(svc) = ctx.services.get(host) {
                let names = State::service_eds(svc, &ctx, &st.eds, &mut fresh);
                st.eds_by_service.insert(host.clone(), names);
            }
        }
        let mut changed = BTreeSet::new();
        for name in &dropped {
            if !fresh.contains_key(name) {
                changed.insert(name.clone());
            }
        }
        for (name, r) in &fresh {
            if st.eds.get(name).is_none_or(|o| o.version != r.version) {
                changed.insert(name.clone());
            }
        }
        st.ctx = Some(ctx);
        if changed.is_empty() {
            debug!(seq, "endpoint push changed nothing");
            return PushSummary {
                seq,
                full: false,
                classes: 0,
                proxies: 0,
                eds_changed: 0,
            };
        }
        // One map copy per push (pointer copies), never per proxy.
        let mut eds = (*st.eds).clone();
        for name in &dropped {
            eds.remove(name);
        }
        eds.extend(fresh);
        let eds: ResourceMap = Arc::new(eds);
        let changed = Arc::new(changed);

        let mut members: HashMap<ProxyClass, Vec<ConnId>> = HashMap::new();
        for (id, c) in st.conns.iter() {
            members.entry(c.class.clone()).or_default().push(*id);
        }
        let mut proxies = 0;
        let mut classes = 0;
        for (class, cs) in st.classes.iter_mut() {
            let snapshot = State::snapshot(seq, &cs.maps, &eds);
            let none: Option<Arc<std::collections::BTreeSet<Arc<str>>>> = Some(Arc::default());
            let changes = Arc::new(Changes {
                base_seq: cs.snapshot.seq,
                names: [
                    none.clone(),
                    Some(changed.clone()),
                    none.clone(),
                    none.clone(),
                    none,
                ],
            });
            let ids = members.get(class).map(Vec::as_slice).unwrap_or(&[]);
            proxies += State::publish(
                &st.conns,
                ids,
                Some(&cs.snapshot),
                &snapshot,
                &changes,
                triggered,
            );
            cs.snapshot = snapshot;
            classes += 1;
        }
        st.eds = eds;
        PushSummary {
            seq,
            full: false,
            classes,
            proxies,
            eds_changed: changed.len(),
        }
    }
}

impl SnapshotSource for Pusher {
    /// Register the proxy and give it its snapshot from the latest push context:
    /// the class's shared snapshot if the class exists, else generated now.
    fn connect(&self, conn: ConnId, proxy: Arc<Proxy>) -> watch::Receiver<Update> {
        let mut st = lock(&self.inner.state);
        let ctx = match st.ctx.clone() {
            Some(ctx) => ctx,
            None => self.full_push(&mut st, None).1,
        };
        let class = ProxyClass::of(&proxy, &ctx);
        let snapshot = match st.classes.get_mut(&class) {
            Some(cs) => {
                cs.members += 1;
                cs.snapshot.clone()
            }
            None => {
                let mut interned = std::mem::take(&mut st.interned);
                let old = HashMap::new();
                let maps = State::build_class(&proxy, &ctx, &class, None, &mut interned, &old);
                st.interned = interned;
                let snapshot = State::snapshot(ctx.seq, &maps, &st.eds);
                st.classes.insert(
                    class.clone(),
                    ClassState {
                        maps,
                        snapshot: snapshot.clone(),
                        members: 1,
                    },
                );
                snapshot
            }
        };
        let (tx, rx) = watch::channel(Update {
            snapshot,
            changes: None,
            triggered: None,
        });
        st.conns.insert(conn, ConnEntry { proxy, class, tx });
        rx
    }

    fn disconnect(&self, conn: ConnId) {
        let mut st = lock(&self.inner.state);
        if let Some(c) = st.conns.remove(&conn) {
            if let Some(cs) = st.classes.get_mut(&c.class) {
                cs.members = cs.members.saturating_sub(1);
                if cs.members == 0 {
                    st.classes.remove(&c.class);
                }
            }
        }
    }
}
