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
//! **Per-proxy EDS** (locality failover, `distribute`, multi-network): EDS of a
//! service whose assignment depends on the proxy (`translate::locality::
//! depends_on_proxy`) is computed once per distinct `EdsView` (the proxy fields
//! EDS reads) among connected proxies, and every other service keeps its one
//! global assignment. A view's EDS map is the global map with the dependent
//! services overlaid. Every EDS encoding goes through one table kept across
//! pushes (`State::eds_intern`, by name and content version), on connect, full
//! and endpoint pushes alike, so equal assignments are one allocation whichever
//! view, push or connect produced them; an entry leaves the table once no map
//! references it. Snapshots are per (class, view); endpoint pushes recompute only
//! the changed services, per view only when the service is view-dependent.
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

use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};

use super::class::{self, ClassMaps, InternKey};
use super::eds::{self, EdsIntern};
use super::{ContextSource, PushQueue, PushRequest};
use crate::config::Tunables;
use crate::metrics::{metrics, ReasonLabel};
use crate::model::{Proxy, PushContext};
use crate::translate::locality::EdsView;
use crate::translate::{self, ProxyClass};
use crate::xds::source::{ConnId, SnapshotChanges, SnapshotSource, Update};
use crate::xds::{changed_names, ProxySnapshot, Resource, ResourceMap, TypeUrl};

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

/// What a connection's snapshot is shared by: its CDS/LDS/RDS class and its EDS
/// view.
type Key = (ProxyClass, EdsView);

struct ViewState {
    /// Global EDS with the view-dependent services overlaid.
    eds: ResourceMap,
    members: usize,
}

#[derive(Default)]
struct State {
    ctx: Option<Arc<PushContext>>,
    /// The source was ready (`ContextSource::ready`) before `ctx` was read
    /// from it, so `ctx` holds every cluster's first complete state.
    ctx_ready: bool,
    /// Every ClusterLoadAssignment of the mesh by resource (cluster) name.
    eds: ResourceMap,
    /// The EDS names each service produced, to replace them on endpoint pushes.
    eds_by_service: HashMap<Arc<str>, Vec<Arc<str>>>,
    /// Services whose EDS differs per `EdsView`.
    dependent: BTreeSet<Arc<str>>,
    /// Every allocation in `eds` and the views' maps (and possibly a few that
    /// only older snapshots still hold), by (name, version).
    eds_intern: EdsIntern,
    views: HashMap<EdsView, ViewState>,
    classes: HashMap<Key, ClassState>,
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

struct ConnEntry {
    proxy: Arc<Proxy>,
    class: Key,
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

impl State {
    /// Hand each connection of `class` its new snapshot. The class's change set
    /// applies only to connections whose current snapshot is the class's previous
    /// one; others (new to the class, or lagging) get `None` and diff.
    fn publish(
        conns: &HashMap<ConnId, ConnEntry>,
        members: &[ConnId],
        prev: Option<&Arc<ProxySnapshot>>,
        snapshot: &Arc<ProxySnapshot>,
        changes: &Arc<SnapshotChanges>,
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

    /// Every EDS map the engine holds: the global map first, then one per
    /// connected `EdsView`. For `benches/locality.rs`, which measures how many
    /// distinct encodings and bytes per-view EDS keeps.
    #[doc(hidden)]
    pub fn eds_maps(&self) -> Vec<ResourceMap> {
        let st = lock(&self.inner.state);
        std::iter::once(st.eds.clone())
            .chain(st.views.values().map(|v| v.eds.clone()))
            .collect()
    }

    /// Debounce (`Debouncer`: the first change after a quiet period at once) and
    /// push forever. Each push runs on the blocking pool: it is CPU
    /// work (translation and encoding) that must not stall the streams.
    pub async fn run(self) {
        let window = super::debounce::Window::push(&self.inner.tunables);
        let mut debouncer = super::debounce::Debouncer::new(window);
        loop {
            let (req, started) = debouncer
                .next(&self.inner.queue)
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

    /// The context of push `seq`, and whether the source was ready before it
    /// was read (then nothing the context lacks is still loading).
    fn new_context(&self, seq: u64) -> (Arc<PushContext>, bool) {
        let s = &self.inner.source;
        let ready = s.ready();
        let ctx = Arc::new(PushContext {
            seq,
            mesh: s.mesh(),
            services: s.services(),
            config: s.config(),
            credentials: s.credentials(),
        });
        (ctx, ready)
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
        // A Service a Gateway names in `addresses` picks gateway proxies by its
        // endpoints (`ProxyClass::gateway_services`): its endpoints changing
        // changes which Gateways those proxies serve, a full push.
        let gateway_service = st.ctx.as_ref().is_some_and(|c| {
            c.config
                .gateway_service_hosts()
                .any(|h| req.services.iter().any(|s| **s == *h))
        });
        let summary = if req.full || st.ctx.is_none() || gateway_service {
            self.full_push(&mut st, triggered).0
        } else {
            self.endpoint_push(&mut st, &req.services, triggered)
        };
        // Every map and snapshot the push replaced is gone now (connections
        // were handed the new ones): drop the encodings only they referenced.
        eds::prune(&mut st.eds_intern);
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
        let (ctx, ready) = self.new_context(seq);

        // EDS: every service, globally; then one overlay per distinct view.
        let mut eds = BTreeMap::new();
        let mut by_service = HashMap::new();
        let mut dependent = BTreeSet::new();
        for (host, svc) in ctx.services.iter() {
            let names = eds::service_eds(svc, &ctx, &mut st.eds_intern, &mut eds);
            by_service.insert(host.clone(), names);
            if translate::locality::depends_on_proxy(svc, &ctx) {
                dependent.insert(host.clone());
            }
        }
        let eds = eds::reuse_if_same(Some(&st.eds), eds);

        // Group connections by (class, view) under the new context.
        let mut groups: HashMap<Key, Vec<ConnId>> = HashMap::new();
        for (id, c) in st.conns.iter() {
            let key = (ProxyClass::of(&c.proxy, &ctx), EdsView::of(&c.proxy, &ctx));
            groups.entry(key).or_default().push(*id);
        }
        let mut views: HashMap<EdsView, ViewState> = HashMap::new();
        for ((_, view), members) in groups.iter() {
            if let Some(v) = views.get_mut(view) {
                v.members += members.len();
                continue;
            }
            let old = st.views.get(view).map(|v| &v.eds);
            let map = eds::build_view(&ctx, view, &eds, &dependent, old, &mut st.eds_intern);
            views.insert(
                view.clone(),
                ViewState {
                    eds: map,
                    members: members.len(),
                },
            );
        }
        let old_interned = std::mem::take(&mut st.interned);
        let mut interned = HashMap::new();
        let mut built: HashMap<ProxyClass, ClassMaps> = HashMap::new();
        let mut classes = HashMap::new();
        let mut proxies = 0;
        let mut eds_changed_names = BTreeSet::new();
        for (key, members) in groups {
            let Some(rep) = members.first().and_then(|id| st.conns.get(id)) else {
                continue;
            };
            let previous = st.classes.get(&key);
            let maps = match built.get(&key.0) {
                Some(m) => m.clone(),
                None => {
                    let m = class::build_class(
                        &rep.proxy,
                        &ctx,
                        &key.0,
                        previous.map(|p| &p.maps),
                        &mut interned,
                        &old_interned,
                    );
                    built.insert(key.0.clone(), m.clone());
                    m
                }
            };
            let view_eds = views
                .get(&key.1)
                .map(|v| v.eds.clone())
                .unwrap_or_else(|| eds.clone());
            let snapshot = class::snapshot(seq, &maps, &view_eds);
            let changes = Arc::new(match previous {
                Some(p) => {
                    let eds_diff = changed_names(p.snapshot.get(TypeUrl::Endpoint), &view_eds);
                    eds_changed_names.extend(eds_diff.iter().cloned());
                    SnapshotChanges {
                        base_seq: p.snapshot.seq,
                        names: [
                            Some(Arc::new(changed_names(&p.maps.clusters, &maps.clusters))),
                            Some(Arc::new(eds_diff)),
                            Some(Arc::new(changed_names(&p.maps.listeners, &maps.listeners))),
                            Some(Arc::new(changed_names(&p.maps.routes, &maps.routes))),
                            Some(Arc::default()),
                        ],
                    }
                }
                None => SnapshotChanges::unknown(0),
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
                    c.class = key.clone();
                }
            }
            let members = members.len();
            classes.insert(
                key,
                ClassState {
                    maps,
                    snapshot,
                    members,
                },
            );
        }
        let eds_changed = changed_names(&st.eds, &eds)
            .len()
            .max(eds_changed_names.len());
        let summary = PushSummary {
            seq,
            full: true,
            classes: classes.len(),
            proxies,
            eds_changed,
        };
        st.ctx = Some(ctx.clone());
        st.ctx_ready = ready;
        st.eds = eds;
        st.eds_by_service = by_service;
        st.dependent = dependent;
        st.views = views;
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
        let (ctx, ready) = self.new_context(seq);
        // Recompute only the changed services; everything else keeps its Arc.
        let mut fresh = BTreeMap::new();
        let mut dropped: Vec<Arc<str>> = Vec::new();
        for host in services {
            if let Some(old) = st.eds_by_service.remove(host) {
                dropped.extend(old);
            }
            st.dependent.remove(host);
            if let Some(svc) = ctx.services.get(host) {
                let names = eds::service_eds(svc, &ctx, &mut st.eds_intern, &mut fresh);
                st.eds_by_service.insert(host.clone(), names);
                if translate::locality::depends_on_proxy(svc, &ctx) {
                    st.dependent.insert(host.clone());
                }
            }
        }
        // One map copy per push (pointer copies), never per proxy.
        let mut eds = (*st.eds).clone();
        for name in &dropped {
            eds.remove(name);
        }
        eds.extend(fresh.iter().map(|(k, v)| (k.clone(), v.clone())));
        let eds: ResourceMap = eds::reuse_if_same(Some(&st.eds), eds);

        // Each view: the changed services, per view only where view-dependent.
        let mut view_changes: HashMap<EdsView, Arc<BTreeSet<Arc<str>>>> = HashMap::new();
        let mut total_changed = BTreeSet::new();
        let old_base = st.eds.clone();
        let none_dependent = services.iter().all(|h| !st.dependent.contains(h));
        for (view, vs) in st.views.iter_mut() {
            if none_dependent && Arc::ptr_eq(&vs.eds, &old_base) {
                // The view overlays nothing: it is the global map.
                let changed = changed_names(&vs.eds, &eds);
                total_changed.extend(changed.iter().cloned());
                vs.eds = eds.clone();
                view_changes.insert(view.clone(), Arc::new(changed));
                continue;
            }
            let mut map = (*vs.eds).clone();
            for name in &dropped {
                map.remove(name);
            }
            for host in services {
                let Some(svc) = ctx.services.get(host) else {
                    continue;
                };
                if st.dependent.contains(host) {
                    eds::view_service_eds(svc, &ctx, view, &mut st.eds_intern, &mut map);
                } else if let Some(names) = st.eds_by_service.get(host) {
                    for n in names {
                        if let Some(r) = eds.get(n) {
                            map.insert(n.clone(), r.clone());
                        }
                    }
                }
            }
            let map = eds::reuse_if_same(Some(&vs.eds), map);
            let changed = changed_names(&vs.eds, &map);
            total_changed.extend(changed.iter().cloned());
            vs.eds = map;
            view_changes.insert(view.clone(), Arc::new(changed));
        }
        st.ctx = Some(ctx);
        st.ctx_ready |= ready;
        let base_changed = changed_names(&st.eds, &eds);
        st.eds = eds;
        total_changed.extend(base_changed);
        if total_changed.is_empty() {
            debug!(seq, "endpoint push changed nothing");
            return PushSummary {
                seq,
                full: false,
                classes: 0,
                proxies: 0,
                eds_changed: 0,
            };
        }

        let mut members: HashMap<Key, Vec<ConnId>> = HashMap::new();
        for (id, c) in st.conns.iter() {
            members.entry(c.class.clone()).or_default().push(*id);
        }
        let mut proxies = 0;
        let mut classes = 0;
        for (key, cs) in st.classes.iter_mut() {
            let Some(changed) = view_changes.get(&key.1) else {
                continue;
            };
            if changed.is_empty() {
                // Nothing this view sees changed: its proxies get nothing.
                continue;
            }
            let Some(vs) = st.views.get(&key.1) else {
                continue;
            };
            let snapshot = class::snapshot(seq, &cs.maps, &vs.eds);
            let none: Option<Arc<BTreeSet<Arc<str>>>> = Some(Arc::default());
            let changes = Arc::new(SnapshotChanges {
                base_seq: cs.snapshot.seq,
                names: [
                    none.clone(),
                    Some(changed.clone()),
                    none.clone(),
                    none.clone(),
                    none,
                ],
            });
            let ids = members.get(key).map(Vec::as_slice).unwrap_or(&[]);
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
        PushSummary {
            seq,
            full: false,
            classes,
            proxies,
            eds_changed: total_changed.len(),
        }
    }
}

impl SnapshotSource for Pusher {
    /// From the registry (`ContextSource::proxy_locality`).
    fn proxy_locality(&self, proxy: &Proxy) -> Option<crate::model::Locality> {
        self.inner.source.proxy_locality(proxy)
    }

    fn ready(&self) -> bool {
        self.inner.source.ready()
    }

    /// Register the proxy and give it its snapshot from the latest push context:
    /// the class's shared snapshot if the class exists, else generated now.
    fn connect(&self, conn: ConnId, proxy: Arc<Proxy>) -> watch::Receiver<Update> {
        let mut guard = lock(&self.inner.state);
        let st = &mut *guard;
        // A context read before the source was ready may lack whole clusters;
        // once it is ready, the first proxy to connect rebuilds it rather than
        // get the partial one and then everything again from the next push.
        let ctx = match st.ctx.clone() {
            Some(ctx) if st.ctx_ready || !self.inner.source.ready() => ctx,
            _ => self.full_push(st, None).1,
        };
        let key: Key = (ProxyClass::of(&proxy, &ctx), EdsView::of(&proxy, &ctx));
        // The view's EDS: shared if another proxy has the view, else built now.
        let view_eds = match st.views.get_mut(&key.1) {
            Some(v) => {
                v.members += 1;
                v.eds.clone()
            }
            None => {
                // Computed once per view; assignments equal to another view's
                // (or the global map's) share its allocation.
                let map = eds::build_view(
                    &ctx,
                    &key.1,
                    &st.eds,
                    &st.dependent,
                    None,
                    &mut st.eds_intern,
                );
                st.views.insert(
                    key.1.clone(),
                    ViewState {
                        eds: map.clone(),
                        members: 1,
                    },
                );
                map
            }
        };
        let snapshot = match st.classes.get_mut(&key) {
            Some(cs) => {
                cs.members += 1;
                cs.snapshot.clone()
            }
            None => {
                // CDS/LDS/RDS of the class may exist under another view.
                let existing = st
                    .classes
                    .iter()
                    .find(|(k, _)| k.0 == key.0)
                    .map(|(_, cs)| cs.maps.clone());
                let maps = match existing {
                    Some(m) => m,
                    None => {
                        let mut interned = std::mem::take(&mut st.interned);
                        let old = HashMap::new();
                        let m = class::build_class(&proxy, &ctx, &key.0, None, &mut interned, &old);
                        st.interned = interned;
                        m
                    }
                };
                let snapshot = class::snapshot(ctx.seq, &maps, &view_eds);
                st.classes.insert(
                    key.clone(),
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
        st.conns.insert(
            conn,
            ConnEntry {
                proxy,
                class: key,
                tx,
            },
        );
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
            if let Some(v) = st.views.get_mut(&c.class.1) {
                v.members = v.members.saturating_sub(1);
                if v.members == 0 {
                    st.views.remove(&c.class.1);
                    // Its own variants are referenced by no map in force any
                    // more; a snapshot a stream still holds keeps them until a
                    // later prune.
                    drop(c);
                    eds::prune(&mut st.eds_intern);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::istio::ConfigSnapshot;
    use crate::model::service::{Endpoint, Locality, Protocol, Service, ServiceMap, ServicePort};
    use crate::model::{InterceptionMode, MeshSettings, ProxyRole};
    use prost::Message;

    #[derive(Default)]
    struct FakeSource {
        services: Mutex<Arc<ServiceMap>>,
        config: Mutex<Arc<ConfigSnapshot>>,
        /// Still loading: `ready()` is false while this is set.
        loading: std::sync::atomic::AtomicBool,
    }

    impl ContextSource for FakeSource {
        fn mesh(&self) -> Arc<MeshSettings> {
            Arc::new(MeshSettings {
                trust_domain: "cluster.local".into(),
                domain_suffix: "cluster.local".into(),
                ..Default::default()
            })
        }
        fn services(&self) -> Arc<ServiceMap> {
            self.services.lock().unwrap().clone()
        }
        fn config(&self) -> Arc<ConfigSnapshot> {
            self.config.lock().unwrap().clone()
        }
        fn ready(&self) -> bool {
            !self.loading.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    fn service(name: &str, ips: &[&str]) -> Arc<Service> {
        let hostname: Arc<str> = format!("{name}.default.svc.cluster.local").into();
        let eps = ips
            .iter()
            .map(|ip| Endpoint {
                address: ip.parse().unwrap(),
                port: 8080,
                labels: Arc::default(),
                cluster: "c1".into(),
                network: "".into(),
                locality: Arc::new(Locality::default()),
                ready: true,
                workload: format!("default/{name}").into(),
                service_account: "".into(),
                stale: false,
                weight: 1,
            })
            .collect();
        Arc::new(Service {
            hostname,
            namespace: "default".into(),
            name: name.into(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
                protocol: Protocol::Http,
            }],
            endpoints: [(80, eps)].into(),
            clusters: vec!["c1".into()],
        })
    }

    fn set(src: &FakeSource, svcs: &[Arc<Service>]) {
        *src.services.lock().unwrap() = Arc::new(
            svcs.iter()
                .map(|s| (s.hostname.clone(), s.clone()))
                .collect(),
        );
    }

    fn sidecar(pod: &str) -> Arc<Proxy> {
        Arc::new(Proxy {
            id: format!("sidecar~127.0.0.2~{pod}.default~default.svc.cluster.local"),
            role: ProxyRole::Sidecar,
            ip: "127.0.0.2".parse().unwrap(),
            pod_name: pod.into(),
            namespace: "default".into(),
            labels: Default::default(),
            cluster_id: "c1".into(),
            network: "".into(),
            interception: InterceptionMode::None,
            service_account: "".into(),
            istio_version: "".into(),
            locality: Locality::default(),
            identity: None,
        })
    }

    fn setup() -> (Arc<FakeSource>, Pusher) {
        let src = Arc::new(FakeSource::default());
        set(
            &src,
            &[service("a", &["10.0.0.1"]), service("b", &["10.0.0.2"])],
        );
        let pusher = Pusher::new(src.clone(), PushQueue::new(), Tunables::default());
        (src, pusher)
    }

    /// A restarted control plane: a push ran while clusters were still
    /// loading. The first proxy to connect once the source is ready must get
    /// the complete mesh, not that partial context (it would get everything a
    /// second time from the next push).
    #[test]
    fn a_proxy_connecting_once_ready_never_sees_a_context_read_while_loading() {
        let src = Arc::new(FakeSource::default());
        src.loading
            .store(true, std::sync::atomic::Ordering::Relaxed);
        set(&src, &[service("a", &["10.0.0.1"])]);
        let pusher = Pusher::new(src.clone(), PushQueue::new(), Tunables::default());
        pusher.push_now(PushRequest::full("config"));
        // The second cluster's endpoints arrive; the source becomes ready
        // before the push for them has run.
        set(
            &src,
            &[service("a", &["10.0.0.1"]), service("b", &["10.0.0.2"])],
        );
        src.loading
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let rx = pusher.connect(1, sidecar("p1"));
        let eds = rx.borrow().snapshot.get(TypeUrl::Endpoint).clone();
        let names: Vec<&str> = eds.keys().map(|k| &**k).collect();
        assert!(
            names
                .iter()
                .any(|n| n.contains("b.default.svc.cluster.local")),
            "EDS of the first proxy after ready: {names:?}"
        );
    }

    #[test]
    fn proxies_of_one_class_share_one_snapshot_from_the_latest_context() {
        let (_src, pusher) = setup();
        pusher.push_now(PushRequest::full("test"));
        // Connecting needs no push: the snapshot comes from the latest context.
        let r1 = pusher.connect(1, sidecar("p1"));
        let r2 = pusher.connect(2, sidecar("p2"));
        let s1 = r1.borrow().snapshot.clone();
        let s2 = r2.borrow().snapshot.clone();
        assert_eq!(s1.seq, 1);
        assert!(Arc::ptr_eq(&s1, &s2), "same class, same snapshot");
        assert_eq!(
            s1.get(TypeUrl::Cluster).len(),
            2,
            "{:?}",
            s1.get(TypeUrl::Cluster).keys()
        );
        assert!(s1
            .get(TypeUrl::Endpoint)
            .contains_key("outbound|80||a.default.svc.cluster.local"));
    }

    #[test]
    fn endpoint_push_recomputes_only_the_changed_service() {
        let (src, pusher) = setup();
        let mut rx = pusher.connect(1, sidecar("p1"));
        let before = rx.borrow_and_update().snapshot.clone();
        let a = "outbound|80||a.default.svc.cluster.local";
        let b = "outbound|80||b.default.svc.cluster.local";

        set(
            &src,
            &[
                service("a", &["10.0.0.1", "10.0.0.9"]),
                service("b", &["10.0.0.2"]),
            ],
        );
        let sum = pusher.push_now(PushRequest::endpoints([
            "a.default.svc.cluster.local".into()
        ]));
        assert!(!sum.full);
        assert_eq!((sum.eds_changed, sum.proxies), (1, 1));
        assert!(rx.has_changed().unwrap());
        let u = rx.borrow_and_update().clone();
        let after = &u.snapshot;
        assert_eq!(after.seq, before.seq + 1);
        // CDS/LDS/RDS maps are reused as is; b's assignment keeps its Arc.
        assert!(Arc::ptr_eq(
            after.get(TypeUrl::Cluster),
            before.get(TypeUrl::Cluster)
        ));
        assert!(Arc::ptr_eq(
            &after.get(TypeUrl::Endpoint)[b],
            &before.get(TypeUrl::Endpoint)[b]
        ));
        assert_ne!(
            after.get(TypeUrl::Endpoint)[a].version,
            before.get(TypeUrl::Endpoint)[a].version
        );
        // The connection learns exactly what changed relative to its snapshot.
        let eds = u.changed_since(before.seq, TypeUrl::Endpoint).unwrap();
        assert_eq!(eds.iter().map(|n| &**n).collect::<Vec<_>>(), [a]);
        assert!(u
            .changed_since(before.seq, TypeUrl::Cluster)
            .unwrap()
            .is_empty());
        assert!(
            u.changed_since(before.seq - 1, TypeUrl::Endpoint).is_none(),
            "lagging streams diff"
        );

        // An endpoint push that changes nothing sends nothing.
        let sum = pusher.push_now(PushRequest::endpoints([
            "b.default.svc.cluster.local".into()
        ]));
        assert_eq!((sum.eds_changed, sum.proxies), (0, 0));
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn full_push_without_changes_reuses_every_resource() {
        let (src, pusher) = setup();
        let mut rx = pusher.connect(1, sidecar("p1"));
        let before = rx.borrow_and_update().snapshot.clone();
        pusher.push_now(PushRequest::full("config"));
        let u = rx.borrow_and_update().clone();
        for t in [
            TypeUrl::Cluster,
            TypeUrl::Endpoint,
            TypeUrl::Listener,
            TypeUrl::Route,
        ] {
            assert!(
                Arc::ptr_eq(u.snapshot.get(t), before.get(t)),
                "{t:?} map rebuilt"
            );
            assert!(u.changed_since(before.seq, t).unwrap().is_empty());
        }
        // A service removed: its cluster and assignment are reported changed.
        set(&src, &[service("a", &["10.0.0.1"])]);
        pusher.push_now(PushRequest::full("service"));
        let u2 = rx.borrow_and_update().clone();
        let gone = "outbound|80||b.default.svc.cluster.local";
        assert!(u2
            .changed_since(u.snapshot.seq, TypeUrl::Cluster)
            .unwrap()
            .contains(gone));
        assert!(u2
            .changed_since(u.snapshot.seq, TypeUrl::Endpoint)
            .unwrap()
            .contains(gone));
        assert!(!u2.snapshot.get(TypeUrl::Cluster).contains_key(gone));
    }

    #[test]
    fn disconnect_drops_an_unused_class() {
        let (_src, pusher) = setup();
        let _rx = pusher.connect(7, sidecar("p1"));
        assert_eq!(lock(&pusher.inner.state).classes.len(), 1);
        pusher.disconnect(7);
        assert!(lock(&pusher.inner.state).classes.is_empty());
        assert!(lock(&pusher.inner.state).conns.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn run_debounces_then_pushes() {
        let (_src, pusher) = setup();
        let mut rx = pusher.connect(1, sidecar("p1"));
        rx.borrow_and_update();
        let seq0 = pusher.context().unwrap().seq;
        let task = tokio::spawn(pusher.clone().run());
        pusher.queue().push(PushRequest::full("a"));
        pusher.queue().push(PushRequest::full("b"));
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            pusher.context().unwrap().seq,
            seq0 + 1,
            "two requests, one push"
        );
        task.abort();
    }

    fn zoned(name: &str, eps: &[(&str, &str)]) -> Arc<Service> {
        let mut svc = (*service(name, &[])).clone();
        let list = eps
            .iter()
            .map(|(ip, l)| {
                let mut p = l.split('/');
                Endpoint {
                    address: ip.parse().unwrap(),
                    port: 8080,
                    labels: Arc::default(),
                    cluster: "c1".into(),
                    network: "".into(),
                    locality: Arc::new(Locality {
                        region: p.next().unwrap().into(),
                        zone: p.next().unwrap().into(),
                        subzone: String::new(),
                    }),
                    ready: true,
                    workload: format!("default/{name}").into(),
                    service_account: "".into(),
                    stale: false,
                    weight: 1,
                }
            })
            .collect();
        svc.endpoints = [(80, list)].into();
        Arc::new(svc)
    }

    fn in_zone(pod: &str, l: &str) -> Arc<Proxy> {
        let mut p = (*sidecar(pod)).clone();
        let mut it = l.split('/');
        p.locality = Locality {
            region: it.next().unwrap().into(),
            zone: it.next().unwrap().into(),
            subzone: String::new(),
        };
        Arc::new(p)
    }

    fn priorities(snap: &ProxySnapshot, name: &str) -> Vec<(String, u32)> {
        use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
        let r = &snap.get(TypeUrl::Endpoint)[name];
        let any = envoy_types::pb::google::protobuf::Any::decode(r.any.clone()).unwrap();
        let cla = ClusterLoadAssignment::decode(any.value.as_slice()).unwrap();
        cla.endpoints
            .iter()
            .map(|l| (l.locality.as_ref().unwrap().zone.clone(), l.priority))
            .collect()
    }

    #[test]
    fn locality_failover_eds_is_per_view_and_shared_within_a_view() {
        let eps = [
            ("10.0.0.1", "r1/z1"),
            ("10.0.0.2", "r1/z2"),
            ("10.0.0.3", "r2/z3"),
        ];
        let src = with_rule(
            &[zoned("a", &eps), zoned("b", &eps)],
            r#"{"host": "a", "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 1}}}"#,
        );
        let pusher = Pusher::new(src.clone(), PushQueue::new(), Tunables::default());
        pusher.push_now(PushRequest::full("test"));
        let mut r1 = pusher.connect(1, in_zone("p1", "r1/z1"));
        let r2 = pusher.connect(2, in_zone("p2", "r1/z1"));
        let mut r3 = pusher.connect(3, in_zone("p3", "r1/z2"));
        let (s1, s2, s3) = (
            r1.borrow_and_update().snapshot.clone(),
            r2.borrow().snapshot.clone(),
            r3.borrow_and_update().snapshot.clone(),
        );
        let a = "outbound|80||a.default.svc.cluster.local";
        let b = "outbound|80||b.default.svc.cluster.local";
        assert!(Arc::ptr_eq(&s1, &s2), "same zone, same snapshot");
        assert_eq!(
            priorities(&s1, a),
            [("z1".into(), 0), ("z2".into(), 1), ("z3".into(), 2)]
        );
        assert_eq!(
            priorities(&s3, a),
            [("z2".into(), 0), ("z1".into(), 1), ("z3".into(), 2)]
        );
        // b has no DestinationRule: one global assignment, same bytes for all.
        assert_eq!(priorities(&s1, b).iter().map(|p| p.1).max(), Some(0));
        assert!(Arc::ptr_eq(
            &s1.get(TypeUrl::Endpoint)[b],
            &s3.get(TypeUrl::Endpoint)[b]
        ));
        // CDS is per class, not per view.
        assert!(Arc::ptr_eq(
            s1.get(TypeUrl::Cluster),
            s3.get(TypeUrl::Cluster)
        ));

        // Zone z1 scaled to zero: both views get a new a; b is untouched by the
        // change of a.
        set(&src, &[zoned("a", &eps[1..]), zoned("b", &eps)]);
        let sum = pusher.push_now(PushRequest::endpoints([
            "a.default.svc.cluster.local".into()
        ]));
        assert_eq!(sum.proxies, 3);
        let u1 = r1.borrow_and_update().clone();
        assert_eq!(
            priorities(&u1.snapshot, a),
            [("z2".into(), 0), ("z3".into(), 1)]
        );
        let ch = u1.changed_since(s1.seq, TypeUrl::Endpoint).unwrap();
        assert_eq!(ch.iter().map(|n| &**n).collect::<Vec<_>>(), [a]);
        let u3 = r3.borrow_and_update().clone();
        assert_eq!(
            priorities(&u3.snapshot, a),
            [("z2".into(), 0), ("z3".into(), 1)]
        );
        // Equal priorities across views: one shared encoding.
        assert!(Arc::ptr_eq(
            &u1.snapshot.get(TypeUrl::Endpoint)[a],
            &u3.snapshot.get(TypeUrl::Endpoint)[a]
        ));
        pusher.disconnect(1);
        pusher.disconnect(2);
        assert_eq!(lock(&pusher.inner.state).views.len(), 1);
    }

    /// A source with services `svcs` and one DestinationRule for host `a`.
    fn with_rule(svcs: &[Arc<Service>], rule: &str) -> Arc<FakeSource> {
        use crate::model::istio::{Config, DestinationRule, IstioObject, Meta};
        let src = Arc::new(FakeSource::default());
        set(&src, svcs);
        let dr: DestinationRule = serde_json::from_str(rule).unwrap();
        *src.config.lock().unwrap() = Arc::new(ConfigSnapshot::new(
            "cluster.local",
            [IstioObject::DestinationRule(Config {
                meta: Meta {
                    name: "a".into(),
                    namespace: "default".into(),
                    creation_timestamp: None,
                    origin: "test".into(),
                    api_version: "networking.istio.io/v1".into(),
                },
                spec: dr,
            })],
        ));
        src
    }

    /// The engine's EDS table holds exactly the allocations of the maps in force.
    fn assert_intern_matches_maps(pusher: &Pusher) {
        let maps = pusher.eds_maps();
        let held: BTreeSet<usize> = maps
            .iter()
            .flat_map(|m| m.values())
            .map(|r| Arc::as_ptr(r) as usize)
            .collect();
        let st = lock(&pusher.inner.state);
        let interned: BTreeSet<usize> = st
            .eds_intern
            .values()
            .map(|r| Arc::as_ptr(r) as usize)
            .collect();
        assert_eq!(held, interned, "EDS table vs maps in force");
    }

    fn in_subzone(pod: &str, l: &str, subzone: &str) -> Arc<Proxy> {
        let mut p = (*in_zone(pod, l)).clone();
        p.locality.subzone = subzone.into();
        Arc::new(p)
    }

    #[test]
    fn equal_eds_is_shared_across_views_from_connect_on_and_stays_shared() {
        let eps = [
            ("10.0.0.1", "r1/z1"),
            ("10.0.0.2", "r1/z2"),
            ("10.0.0.3", "r2/z3"),
        ];
        let src = with_rule(
            &[zoned("a", &eps), zoned("b", &eps)],
            r#"{"host": "a", "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 1}}}"#,
        );
        let pusher = Pusher::new(src.clone(), PushQueue::new(), Tunables::default());
        pusher.push_now(PushRequest::full("test"));
        // Two views (the subzone differs) whose priorities come out equal (no
        // endpoint has a subzone), and a third with other priorities.
        let mut r1 = pusher.connect(1, in_subzone("p1", "r1/z1", ""));
        let mut r2 = pusher.connect(2, in_subzone("p2", "r1/z1", "sz"));
        let mut r3 = pusher.connect(3, in_zone("p3", "r1/z2"));
        assert_eq!(lock(&pusher.inner.state).views.len(), 3);
        let a = "outbound|80||a.default.svc.cluster.local";
        let snaps = |r1: &mut watch::Receiver<Update>,
                     r2: &mut watch::Receiver<Update>,
                     r3: &mut watch::Receiver<Update>| {
            (
                r1.borrow_and_update().snapshot.clone(),
                r2.borrow_and_update().snapshot.clone(),
                r3.borrow_and_update().snapshot.clone(),
            )
        };
        let (s1, s2, s3) = snaps(&mut r1, &mut r2, &mut r3);
        assert_eq!(priorities(&s1, a), priorities(&s2, a));
        assert_ne!(priorities(&s1, a), priorities(&s3, a));
        // Shared at connect time, not only after a full push.
        assert!(Arc::ptr_eq(
            &s1.get(TypeUrl::Endpoint)[a],
            &s2.get(TypeUrl::Endpoint)[a]
        ));
        assert_intern_matches_maps(&pusher);
        let encodings = |p: &Pusher| {
            p.eds_maps()
                .iter()
                .flat_map(|m| m.values().map(|r| Arc::as_ptr(r) as usize))
                .collect::<BTreeSet<_>>()
                .len()
        };
        // Global a and b, a for z1 (both views) and a for z2.
        assert_eq!(encodings(&pusher), 4);

        // A full push without changes keeps every view's map (same Arc).
        pusher.push_now(PushRequest::full("config"));
        let (t1, t2, t3) = snaps(&mut r1, &mut r2, &mut r3);
        for (s, t) in [(&s1, &t1), (&s2, &t2), (&s3, &t3)] {
            assert!(Arc::ptr_eq(
                s.get(TypeUrl::Endpoint),
                t.get(TypeUrl::Endpoint)
            ));
        }
        assert_eq!(encodings(&pusher), 4);
        assert_intern_matches_maps(&pusher);

        // An endpoint push replaces a; the replaced encodings leave the table.
        drop((s1, s2, s3, t1, t2, t3));
        set(&src, &[zoned("a", &eps[1..]), zoned("b", &eps)]);
        pusher.push_now(PushRequest::endpoints([
            "a.default.svc.cluster.local".into()
        ]));
        let (u1, u2, _) = snaps(&mut r1, &mut r2, &mut r3);
        assert!(Arc::ptr_eq(
            &u1.get(TypeUrl::Endpoint)[a],
            &u2.get(TypeUrl::Endpoint)[a]
        ));
        assert_intern_matches_maps(&pusher);

        // The z2 view goes away with its proxy, and its own encodings with it.
        drop(r3);
        pusher.disconnect(3);
        assert_eq!(lock(&pusher.inner.state).views.len(), 2);
        assert_intern_matches_maps(&pusher);
    }

    fn in_cluster(pod: &str, l: &str, cluster: &str) -> Arc<Proxy> {
        let mut p = (*in_zone(pod, l)).clone();
        p.cluster_id = cluster.into();
        Arc::new(p)
    }

    #[test]
    fn proxies_of_other_clusters_share_views_unless_failover_priority_names_the_cluster() {
        let mut svc = (*zoned("a", &[("10.0.0.1", "r1/z1"), ("10.0.0.2", "r1/z1")])).clone();
        for (ep, c) in svc
            .endpoints
            .get_mut(&80)
            .unwrap()
            .iter_mut()
            .zip(["c1", "c2"])
        {
            ep.cluster = c.into();
        }
        svc.clusters = vec!["c1".into(), "c2".into()];
        let svcs = [Arc::new(svc)];
        let a = "outbound|80||a.default.svc.cluster.local";

        // Default failover reads the locality only: one view for both clusters.
        let src = with_rule(
            &svcs,
            r#"{"host": "a", "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 1}}}"#,
        );
        let pusher = Pusher::new(src, PushQueue::new(), Tunables::default());
        let r1 = pusher.connect(1, in_cluster("p1", "r1/z1", "c1"));
        let r2 = pusher.connect(2, in_cluster("p2", "r1/z1", "c2"));
        assert_eq!(lock(&pusher.inner.state).views.len(), 1);
        assert!(Arc::ptr_eq(&r1.borrow().snapshot, &r2.borrow().snapshot));

        // failoverPriority on the cluster label: the proxy's cluster decides.
        let src = with_rule(
            &svcs,
            r#"{"host": "a", "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 1},
                "loadBalancer": {"localityLbSetting": {"failoverPriority": ["topology.istio.io/cluster"]}}}}"#,
        );
        let pusher = Pusher::new(src, PushQueue::new(), Tunables::default());
        let r1 = pusher.connect(1, in_cluster("p1", "r1/z1", "c1"));
        let r2 = pusher.connect(2, in_cluster("p2", "r1/z1", "c2"));
        assert_eq!(lock(&pusher.inner.state).views.len(), 2);
        let first = |r: &watch::Receiver<Update>| {
            use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
            let snap = r.borrow().snapshot.clone();
            let any = envoy_types::pb::google::protobuf::Any::decode(
                snap.get(TypeUrl::Endpoint)[a].any.clone(),
            )
            .unwrap();
            let cla = ClusterLoadAssignment::decode(any.value.as_slice()).unwrap();
            let top = cla.endpoints.iter().find(|l| l.priority == 0).unwrap();
            let lb = &top.lb_endpoints[0];
            format!("{:?}", lb.host_identifier)
        };
        assert!(first(&r1).contains("10.0.0.1"), "{}", first(&r1));
        assert!(first(&r2).contains("10.0.0.2"), "{}", first(&r2));
    }
}
