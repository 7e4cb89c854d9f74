//! The registry: the merged endpoint index across member clusters, and the store of
//! validated Istio config. Sources write here; every write that changes what
//! proxies should see enqueues a `PushRequest`.
//!
//! Layout (Istio's `EndpointShards`, one shard per cluster): each member cluster has
//! a shard of compact records (`endpoints.rs`) with secondary indexes (pods and
//! services by namespace, pods by node, slices by service). A change to one object
//! yields the set of `(namespace, name)` service keys it can affect; only those are
//! recomputed across every shard (namespace sameness: `NAME.NS` in several clusters
//! is one service) and compared with the previous merged value:
//! - a service appearing, vanishing, or changing ports/clusters is a full push
//!   (`PushRequest::full("service")`);
//! - endpoints only is an EDS push for that hostname (`PushRequest::endpoints`);
//! - nothing changed, nothing pushed. Unchanged services keep their `Arc<Service>`,
//!   so the `ServiceMap` handed to a push is a cheap map of shared pointers.
//!
//! Locking: the index is one `std::sync::Mutex` because every operation on it is a
//! short synchronous computation (no IO, never across `.await`), and an update must
//! see shards and merged view consistently. The Istio config store has its own lock:
//! config and endpoints never need to change together.

pub mod config;
pub mod endpoints;
mod external;
mod proxy_locality;
pub mod secrets;
pub mod status;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use crate::config::{ClusterConfig, ClusterSource, ConfigSource, MeshConfig, NetworkGateway};
use crate::metrics::{metrics, ClusterLabel};
use crate::model::service::{Labels, ServiceMap};
use crate::model::{ClusterId, Endpoint, Locality, MeshSettings, Service, ServicePort};
use crate::model::push_request::{PushQueue, PushRequest};

use endpoints::{Interners, NodeRec, ObjKey, PodRec, Record, RecordKey, SliceRec, SvcRec};
pub use endpoints::{Kind, KubeObject, ObjectError};
use status::ClusterState;
pub use status::{ClusterStatus, Counts, ObjectProblem};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("cluster {0:?} is not registered")]
    UnknownCluster(String),
    #[error("cluster name {0:?} is already taken")]
    ClusterExists(String),
}

/// One change a watcher saw.
#[derive(Debug, Clone)]
pub enum Event {
    /// Added or modified.
    Upsert(KubeObject),
    /// Deleted (the last state of the object; only its kind and name are read).
    Delete(KubeObject),
}

/// How a cluster joins the registry.
#[derive(Debug, Clone)]
struct ClusterMeta {
    name: ClusterId,
    source: String,
    network: Arc<str>,
    default_locality: Arc<Locality>,
    added: Instant,
    /// Clusters from the mesh file hold `/ready` back until synced (or timed out);
    /// clusters registered at runtime never do.
    blocks_ready: bool,
}

fn parse_locality(s: Option<&str>) -> Locality {
    let mut parts = s.unwrap_or("").splitn(3, '/').map(str::to_string);
    Locality {
        region: parts.next().unwrap_or_default(),
        zone: parts.next().unwrap_or_default(),
        subzone: parts.next().unwrap_or_default(),
    }
}

fn source_label(src: &ClusterSource) -> String {
    match src {
        ClusterSource::Manifests(d) => format!("manifests:{}", d.display()),
        ClusterSource::Kubeconfig { path, context } => match context {
            Some(c) => format!("kubeconfig:{} (context {c})", path.display()),
            None => format!("kubeconfig:{}", path.display()),
        },
        ClusterSource::InCluster => "in-cluster".to_string(),
        ClusterSource::Agent { .. } => "agent".to_string(),
    }
}

/// The name a config source reports under (`replace_config_source`'s `source`).
pub fn config_source_name(src: &ConfigSource) -> String {
    match src {
        ConfigSource::Manifests(d) => format!("manifests:{}", d.display()),
        ConfigSource::Cluster(c) => format!("cluster:{c}"),
    }
}

/// One member cluster's records and indexes.
#[derive(Debug)]
struct Shard {
    meta: ClusterMeta,
    services: HashMap<ObjKey, SvcRec>,
    pods: HashMap<ObjKey, PodRec>,
    nodes: HashMap<Arc<str>, NodeRec>,
    slices: HashMap<ObjKey, SliceRec>,
    pods_by_node: HashMap<Arc<str>, BTreeSet<ObjKey>>,
    /// `(namespace, service name)` -> slice names.
    slices_by_service: HashMap<ObjKey, BTreeSet<Arc<str>>>,
    /// Pods by each of their labels.
    pods_by_label: LabelIndex,
    /// Services with a selector, by the first pair of their selector: a Pod can
    /// only be selected by the Services indexed under one of its own labels.
    services_by_pair: LabelIndex,
    /// Services without a selector (endpoints from EndpointSlices), per namespace.
    selectorless_by_ns: HashMap<Arc<str>, BTreeSet<Arc<str>>>,
    /// Objects the registry itself rejected (API-server sources), by key.
    rejected: BTreeMap<RecordKey, ObjectProblem>,
    state: ClusterState,
    /// Services labelled `topology.istio.io/network` (network gateways).
    gateway_services: BTreeSet<ObjKey>,
    /// A gateway Service changed since the registry last merged the gateways.
    gateways_changed: bool,
}

/// `namespace -> label key -> label value -> object names`. Matching Pods to
/// Services goes through it, so the cost of a change is proportional to the
/// objects sharing a label with it, not to the size of the namespace: loading
/// 10,000 Services over 100,000 Pods in one namespace is not 10^9 selector
/// checks.
#[derive(Debug, Default)]
struct LabelIndex(HashMap<Arc<str>, HashMap<String, HashMap<String, BTreeSet<Arc<str>>>>>);

impl LabelIndex {
    fn insert(&mut self, ns: &Arc<str>, k: &str, v: &str, name: &Arc<str>) {
        let by_key = self.0.entry(ns.clone()).or_default();
        let by_value = match by_key.get_mut(k) {
            Some(m) => m,
            None => by_key.entry(k.to_string()).or_default(),
        };
        match by_value.get_mut(v) {
            Some(set) => {
                set.insert(name.clone());
            }
            None => {
                by_value.insert(v.to_string(), [name.clone()].into());
            }
        }
    }

    fn remove(&mut self, ns: &str, k: &str, v: &str, name: &str) {
        let Some(by_key) = self.0.get_mut(ns) else {
            return;
        };
        if let Some(by_value) = by_key.get_mut(k) {
            if let Some(set) = by_value.get_mut(v) {
                set.remove(name);
                if set.is_empty() {
                    by_value.remove(v);
                }
            }
            if by_value.is_empty() {
                by_key.remove(k);
            }
        }
        if by_key.is_empty() {
            self.0.remove(ns);
        }
    }

    fn get(&self, ns: &str, k: &str, v: &str) -> Option<&BTreeSet<Arc<str>>> {
        self.0.get(ns)?.get(k)?.get(v)
    }

    fn insert_all(&mut self, ns: &Arc<str>, labels: &Labels, name: &Arc<str>) {
        for (k, v) in labels.iter() {
            self.insert(ns, k, v, name);
        }
    }

    fn remove_all(&mut self, ns: &str, labels: &Labels, name: &str) {
        for (k, v) in labels.iter() {
            self.remove(ns, k, v, name);
        }
    }
}

/// Count `n` newly rejected objects of `cluster` (`crossmesh_source_rejected_objects`).
fn count_rejections(cluster: &str, n: usize) {
    if n > 0 {
        metrics()
            .rejected_objects
            .get_or_create(&ClusterLabel {
                cluster: cluster.to_string(),
            })
            .inc_by(n as u64);
    }
}

fn index_insert<K: std::hash::Hash + Eq, V: Ord>(m: &mut HashMap<K, BTreeSet<V>>, k: K, v: V) {
    m.entry(k).or_default().insert(v);
}

fn index_remove<K: std::hash::Hash + Eq, V: Ord>(m: &mut HashMap<K, BTreeSet<V>>, k: &K, v: &V) {
    if let Some(set) = m.get_mut(k) {
        set.remove(v);
        if set.is_empty() {
            m.remove(k);
        }
    }
}

impl Shard {
    fn new(meta: ClusterMeta) -> Shard {
        Shard {
            meta,
            services: HashMap::new(),
            pods: HashMap::new(),
            nodes: HashMap::new(),
            slices: HashMap::new(),
            pods_by_node: HashMap::new(),
            slices_by_service: HashMap::new(),
            pods_by_label: LabelIndex::default(),
            services_by_pair: LabelIndex::default(),
            selectorless_by_ns: HashMap::new(),
            rejected: BTreeMap::new(),
            state: ClusterState::default(),
            gateway_services: BTreeSet::new(),
            gateways_changed: false,
        }
    }

    /// Keep the gateway index in step with the stored Service `key` becoming `new`
    /// (`None`: deleted). Call before storing.
    fn track_gateway(&mut self, key: &ObjKey, new: Option<&SvcRec>) {
        let old = self.services.get(key).and_then(|s| s.gateway.as_ref());
        let new = new.and_then(|s| s.gateway.as_ref());
        if old == new {
            return;
        }
        self.gateways_changed = true;
        if new.is_some() {
            self.gateway_services.insert(key.clone());
        } else {
            self.gateway_services.remove(key);
        }
    }

    fn counts(&self) -> Counts {
        Counts {
            services: self.services.len(),
            pods: self.pods.len(),
            nodes: self.nodes.len(),
            endpointslices: self.slices.len(),
        }
    }

    fn keys(&self) -> BTreeSet<RecordKey> {
        let mut out = BTreeSet::new();
        out.extend(self.services.keys().cloned().map(RecordKey::Service));
        out.extend(self.pods.keys().cloned().map(RecordKey::Pod));
        out.extend(self.nodes.keys().cloned().map(RecordKey::Node));
        out.extend(self.slices.keys().cloned().map(RecordKey::EndpointSlice));
        out
    }

    /// Every service key this shard contributes to (declared or referenced by a slice).
    fn service_keys(&self) -> BTreeSet<ObjKey> {
        let mut out: BTreeSet<ObjKey> = self.services.keys().cloned().collect();
        out.extend(self.slices_by_service.keys().cloned());
        out
    }

    /// Services in `ns` selecting a Pod with these labels, plus the selector-less
    /// ones with slices (their endpoints borrow Pod labels through `targetRef`).
    fn services_for_pod(&self, ns: &Arc<str>, labels: &[&Labels], out: &mut BTreeSet<ObjKey>) {
        for l in labels {
            for (k, v) in l.iter() {
                for name in self.services_by_pair.get(ns, k, v).into_iter().flatten() {
                    let key = (ns.clone(), name.clone());
                    let hit = self
                        .services
                        .get(&key)
                        .and_then(|s| s.selector.as_ref())
                        .is_some_and(|sel| endpoints::selects(sel, l));
                    if hit {
                        out.insert(key);
                    }
                }
            }
        }
        for name in self.selectorless_by_ns.get(ns).into_iter().flatten() {
            let key = (ns.clone(), name.clone());
            if self.slices_by_service.contains_key(&key) {
                out.insert(key);
            }
        }
    }

    /// Keep the selector indexes in step with Service `key` becoming `new`
    /// (`None`: deleted). Call before storing.
    fn index_service(&mut self, key: &ObjKey, new: Option<&SvcRec>) {
        if let Some(old) = self.services.get(key) {
            match old.selector.as_ref().and_then(|s| s.iter().next()) {
                Some((k, v)) => self.services_by_pair.remove(&key.0, k, v, &key.1),
                None => index_remove(&mut self.selectorless_by_ns, &key.0, &key.1),
            }
        }
        if let Some(new) = new {
            match new.selector.as_ref().and_then(|s| s.iter().next()) {
                Some((k, v)) => self.services_by_pair.insert(&key.0, k, v, &key.1),
                None => index_insert(&mut self.selectorless_by_ns, key.0.clone(), key.1.clone()),
            }
        }
    }

    /// Store one record; returns the service keys whose endpoints may have changed.
    fn upsert(&mut self, rec: Record, out: &mut BTreeSet<ObjKey>) {
        match rec {
            Record::Service(key, svc) => {
                if self.services.get(&key) == Some(&svc) {
                    return;
                }
                self.track_gateway(&key, Some(&svc));
                self.index_service(&key, Some(&svc));
                self.services.insert(key.clone(), svc);
                out.insert(key);
            }
            Record::Pod(key, pod) => {
                let old = self.pods.get(&key);
                if old == Some(&pod) {
                    return;
                }
                let mut labels = vec![&pod.labels];
                if let Some(o) = old {
                    labels.push(&o.labels);
                }
                self.services_for_pod(&key.0, &labels, out);
                if let Some(o) = old {
                    let old_labels = o.labels.clone();
                    self.pods_by_label.remove_all(&key.0, &old_labels, &key.1);
                }
                self.pods_by_label.insert_all(&key.0, &pod.labels, &key.1);
                if let Some(node) = self.pods.get(&key).and_then(|o| o.node.clone()) {
                    index_remove(&mut self.pods_by_node, &node, &key);
                }
                if let Some(node) = &pod.node {
                    index_insert(&mut self.pods_by_node, node.clone(), key.clone());
                }
                self.pods.insert(key, pod);
            }
            Record::Node(name, node) => {
                if self.nodes.get(&name) == Some(&node) {
                    return;
                }
                self.nodes.insert(name.clone(), node);
                self.services_on_node(&name, out);
            }
            Record::EndpointSlice(key, slice) => {
                let old = self.slices.get(&key);
                if old == Some(&slice) {
                    return;
                }
                if let Some(o) = old {
                    let svc = (key.0.clone(), o.service.clone());
                    index_remove(&mut self.slices_by_service, &svc, &key.1);
                    out.insert(svc);
                }
                let svc = (key.0.clone(), slice.service.clone());
                index_insert(&mut self.slices_by_service, svc.clone(), key.1.clone());
                out.insert(svc);
                self.slices.insert(key, slice);
            }
        }
    }

    fn services_on_node(&self, node: &Arc<str>, out: &mut BTreeSet<ObjKey>) {
        for key in self.pods_by_node.get(node).into_iter().flatten() {
            if let Some(p) = self.pods.get(key) {
                self.services_for_pod(&key.0, &[&p.labels], out);
            }
        }
        // Slice endpoints name their node too.
        for (key, slice) in &self.slices {
            if slice
                .endpoints
                .iter()
                .any(|e| e.node.as_ref() == Some(node))
            {
                out.insert((key.0.clone(), slice.service.clone()));
            }
        }
    }

    fn delete(&mut self, key: &RecordKey, out: &mut BTreeSet<ObjKey>) {
        match key {
            RecordKey::Service(k) => {
                if self.services.contains_key(k) {
                    self.track_gateway(k, None);
                    self.index_service(k, None);
                    self.services.remove(k);
                    out.insert(k.clone());
                }
            }
            RecordKey::Pod(k) => {
                if let Some(old) = self.pods.get(k) {
                    self.services_for_pod(&k.0, &[&old.labels], out);
                    let labels = old.labels.clone();
                    self.pods_by_label.remove_all(&k.0, &labels, &k.1);
                    let Some(old) = self.pods.get(k) else {
                        return;
                    };
                    if let Some(node) = old.node.clone() {
                        index_remove(&mut self.pods_by_node, &node, k);
                    }
                    self.pods.remove(k);
                }
            }
            RecordKey::Node(n) => {
                if self.nodes.remove(n).is_some() {
                    self.services_on_node(n, out);
                }
            }
            RecordKey::EndpointSlice(k) => {
                if let Some(old) = self.slices.remove(k) {
                    let svc = (k.0.clone(), old.service.clone());
                    index_remove(&mut self.slices_by_service, &svc, &k.1);
                    out.insert(svc);
                }
            }
        }
        self.rejected.remove(key);
    }

    fn locality_of(&self, node: Option<&Arc<str>>) -> Arc<Locality> {
        node.and_then(|n| self.nodes.get(n))
            .and_then(|n| n.locality.clone())
            .unwrap_or_else(|| self.meta.default_locality.clone())
    }

    /// This cluster's endpoints of one service, per service port number.
    ///
    /// A Service with a selector takes its endpoints from the Pods it selects in
    /// its namespace (EndpointSlices the control plane generated for it add
    /// nothing); a Service without one takes them from the EndpointSlices labelled
    /// `kubernetes.io/service-name`, matching slice ports to Service ports by name
    /// as Kubernetes does.
    fn endpoints_of(&self, key: &ObjKey, svc: &SvcRec, out: &mut BTreeMap<u16, Vec<Endpoint>>) {
        let stale = self.state.stale;
        let endpoint =
            |address, port, labels: Labels, locality, ready, workload: Arc<str>, sa: Arc<str>| {
                Endpoint {
                    address,
                    port,
                    labels,
                    cluster: self.meta.name.clone(),
                    network: self.meta.network.clone(),
                    locality,
                    ready,
                    workload,
                    service_account: sa,
                    stale,
                    weight: 1,
                }
            };
        match &svc.selector {
            Some(sel) => {
                // Only Pods carrying the selector's first pair can match (a
                // selector is never empty: `SvcRec::selector` is `None` then).
                let candidates = sel
                    .iter()
                    .next()
                    .and_then(|(k, v)| self.pods_by_label.get(&key.0, k, v));
                for name in candidates.into_iter().flatten() {
                    let Some(pod) = self.pods.get(&(key.0.clone(), name.clone())) else {
                        continue;
                    };
                    let Some(ip) = pod.ip else { continue };
                    if !endpoints::selects(sel, &pod.labels) {
                        continue;
                    }
                    let locality = self.locality_of(pod.node.as_ref());
                    let workload: Arc<str> = Arc::from(format!("{}/{}", key.0, name));
                    for p in &svc.ports {
                        let Some(target) = endpoints::resolve_target(&p.target, pod) else {
                            continue;
                        };
                        out.entry(p.port).or_default().push(endpoint(
                            ip,
                            target,
                            pod.labels.clone(),
                            locality.clone(),
                            pod.ready,
                            workload.clone(),
                            pod.service_account.clone(),
                        ));
                    }
                }
            }
            None => {
                let empty: Labels = Arc::default();
                for slice_name in self.slices_by_service.get(key).into_iter().flatten() {
                    let Some(slice) = self.slices.get(&(key.0.clone(), slice_name.clone())) else {
                        continue;
                    };
                    let workload: Arc<str> = Arc::from(format!("{}/{}", key.0, slice_name));
                    for (port_name, number) in &slice.ports {
                        // EndpointSlice ports carry the Service port's name.
                        let Some(sp) = svc.ports.iter().find(|p| &p.name == port_name) else {
                            continue;
                        };
                        for e in &slice.endpoints {
                            let pod = e
                                .pod
                                .as_ref()
                                .and_then(|p| self.pods.get(&(key.0.clone(), p.clone())));
                            let locality =
                                match (e.node.as_ref().and_then(|n| self.nodes.get(n)), &e.zone) {
                                    (Some(NodeRec { locality: Some(l) }), _) => l.clone(),
                                    (_, Some(zone)) => Arc::new(Locality {
                                        zone: zone.to_string(),
                                        subzone: String::new(),
                                        ..(*self.meta.default_locality).clone()
                                    }),
                                    _ => self.meta.default_locality.clone(),
                                };
                            out.entry(sp.port).or_default().push(endpoint(
                                e.address,
                                *number,
                                pod.map(|p| p.labels.clone())
                                    .unwrap_or_else(|| empty.clone()),
                                locality,
                                e.ready,
                                workload.clone(),
                                pod.map(|p| p.service_account.clone())
                                    .unwrap_or_else(|| Arc::from("")),
                            ));
                        }
                    }
                }
            }
        }
    }
}

/// Everything behind the registry's lock.
#[derive(Debug, Default)]
struct Index {
    shards: BTreeMap<ClusterId, Shard>,
    merged: ServiceMap,
    /// The merged view as handed out; `None` after a change until asked for.
    snapshot: Option<Arc<ServiceMap>>,
    /// The merged view with ServiceEntries and WorkloadEntries overlaid
    /// (`external.rs`), for the config snapshot and merged view it was built
    /// from; dropped on every change to the shards.
    overlaid: Option<(
        Arc<crate::model::istio::ConfigSnapshot>,
        Arc<ServiceMap>,
        Arc<ServiceMap>,
    )>,
    ready_endpoints: usize,
    interners: Interners,
    /// The mesh settings handed to pushes: the mesh file's, with the network
    /// gateways discovered from Services merged in (`refresh_gateways`).
    settings: Arc<MeshSettings>,
}

fn ready_count(s: &Service) -> usize {
    s.endpoints.values().flatten().filter(|e| e.ready).count()
}

impl Index {
    fn hostname(domain_suffix: &str, key: &ObjKey) -> Arc<str> {
        Arc::from(format!("{}.{}.svc.{domain_suffix}", key.1, key.0))
    }

    /// The service `key` merged across every shard, or `None` if no cluster declares it.
    fn compute(&self, domain_suffix: &str, key: &ObjKey) -> Option<Service> {
        let mut ports: Vec<ServicePort> = Vec::new();
        let mut clusters = Vec::new();
        let mut endpoints: BTreeMap<u16, Vec<Endpoint>> = BTreeMap::new();
        for shard in self.shards.values() {
            let Some(svc) = shard.services.get(key) else {
                continue;
            };
            clusters.push(shard.meta.name.clone());
            for p in &svc.ports {
                if !ports.iter().any(|x| x.port == p.port) {
                    ports.push(ServicePort {
                        name: p.name.to_string(),
                        port: p.port,
                        protocol: p.protocol,
                    });
                }
            }
            shard.endpoints_of(key, svc, &mut endpoints);
        }
        if clusters.is_empty() {
            return None;
        }
        for eps in endpoints.values_mut() {
            eps.sort_by(|a, b| {
                (&a.cluster, a.address, a.port).cmp(&(&b.cluster, b.address, b.port))
            });
            // Overlapping slices may list one address twice; keep one, ready first.
            eps.dedup_by(|later, earlier| {
                let same = later.cluster == earlier.cluster
                    && later.address == earlier.address
                    && later.port == earlier.port;
                if same && later.ready {
                    earlier.ready = true;
                }
                same
            });
        }
        ports.sort_by_key(|p| p.port);
        Some(Service {
            hostname: Self::hostname(domain_suffix, key),
            namespace: key.0.to_string(),
            name: key.1.to_string(),
            ports,
            endpoints,
            clusters,
        })
    }

    /// Merge the mesh file's network gateways (`file`) with those discovered from
    /// Services labelled `topology.istio.io/network` in every shard, as Istio's
    /// `NetworkManager` merges MeshNetworks and registry gateways into one set:
    /// per network, the mesh file's first (in its order), then each cluster's (by
    /// cluster name, then Service namespace/name, then address order), an address
    /// and port already listed being skipped. Replaces `settings` and returns
    /// whether the gateways changed (then every proxy needs a full push: the
    /// network filter of every service's EDS reads them).
    fn refresh_gateways(&mut self, file: &MeshSettings) -> bool {
        let mut networks = file.networks.clone();
        for shard in self.shards.values_mut() {
            shard.gateways_changed = false;
            for key in &shard.gateway_services {
                let Some(gw) = shard.services.get(key).and_then(|s| s.gateway.as_ref()) else {
                    continue;
                };
                let list = networks.entry(gw.network.to_string()).or_default();
                for a in &gw.addresses {
                    if !list.iter().any(|g| same_gateway(g, *a, gw.port)) {
                        list.push(NetworkGateway {
                            address: a.to_string(),
                            port: gw.port,
                            cluster: Some(shard.meta.name.to_string()),
                        });
                    }
                }
            }
        }
        // A network whose only gateway Services have no address has no gateway.
        networks.retain(|name, gws| !gws.is_empty() || file.networks.contains_key(name));
        if networks == self.settings.networks {
            return false;
        }
        self.settings = Arc::new(MeshSettings {
            networks,
            ..(*self.settings).clone()
        });
        true
    }

    /// Recompute `keys`, store what changed and say what to push.
    fn commit(&mut self, domain_suffix: &str, keys: BTreeSet<ObjKey>) -> Option<PushRequest> {
        let mut full = false;
        let mut eds: Vec<Arc<str>> = Vec::new();
        for key in keys {
            let hostname = Self::hostname(domain_suffix, &key);
            let new = self.compute(domain_suffix, &key);
            let old = self.merged.get(&hostname);
            match (old, new) {
                (None, None) => continue,
                (Some(o), Some(n)) if **o == n => continue,
                (Some(o), Some(n)) => {
                    if o.ports != n.ports || o.clusters != n.clusters {
                        full = true;
                    } else {
                        eds.push(hostname.clone());
                    }
                    self.ready_endpoints = self.ready_endpoints - ready_count(o) + ready_count(&n);
                    self.merged.insert(hostname, Arc::new(n));
                }
                (None, Some(n)) => {
                    full = true;
                    self.ready_endpoints += ready_count(&n);
                    self.merged.insert(hostname, Arc::new(n));
                }
                (Some(o), None) => {
                    full = true;
                    self.ready_endpoints -= ready_count(o);
                    self.merged.remove(&hostname);
                }
            }
            self.snapshot = None;
        }
        let mut req = if eds.is_empty() {
            None
        } else {
            Some(PushRequest::endpoints(eds))
        };
        if full {
            let f = PushRequest::full("service");
            match req.as_mut() {
                Some(r) => r.merge(f),
                None => req = Some(f),
            }
        }
        req
    }
}

/// Whether a gateway entry is `addr:port` (mesh-file addresses compared as IPs
/// when they parse, so `::1` and `0::1` are one gateway).
fn same_gateway(g: &NetworkGateway, addr: std::net::IpAddr, port: u16) -> bool {
    g.port == port
        && match g.address.parse::<std::net::IpAddr>() {
            Ok(a) => a == addr,
            Err(_) => g.address == addr.to_string(),
        }
}

/// Add a full push for changed network gateways to `req`.
fn with_networks_push(req: Option<PushRequest>) -> Option<PushRequest> {
    let f = PushRequest::full("networks");
    Some(match req {
        Some(mut r) => {
            r.merge(f);
            r
        }
        None => f,
    })
}

/// The merged endpoint index and config store, shared as `Arc<Registry>` between
/// sources (writers), the push loop and the debug server (readers).
pub struct Registry {
    mesh: Arc<MeshConfig>,
    /// The mesh file's settings; what pushes get is `Index::settings`.
    settings: Arc<MeshSettings>,
    queue: PushQueue,
    started: Instant,
    ready_latched: AtomicBool,
    index: Mutex<Index>,
    /// Config sources that hold `/ready` back: name -> delivered once.
    config_synced: Mutex<BTreeMap<String, bool>>,
    /// Istio config; its own lock, never taken while `index` is held.
    config: Mutex<config::ConfigStore>,
    /// File-level problems of config sources (unparsable files), by source.
    config_file_problems: Mutex<BTreeMap<String, Vec<ObjectProblem>>>,
    /// TLS Secrets for `credentialName`, by cluster.
    secrets: secrets::SecretStore,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// A registry with every cluster of the mesh file registered (empty, not synced).
    pub fn new(mesh: Arc<MeshConfig>, queue: PushQueue) -> Arc<Registry> {
        let now = Instant::now();
        let settings = Arc::new(MeshSettings {
            trust_domain: mesh.trust_domain.clone(),
            domain_suffix: mesh.domain_suffix.clone(),
            networks: mesh.networks.clone(),
            path_normalization: mesh.path_normalization,
            outbound_traffic_policy: mesh.outbound_traffic_policy,
            access_log: mesh.access_log.clone(),
            gateway_topology: mesh.gateway_topology.clone(),
            tracing: mesh.tracing.clone(),
        });
        let reg = Registry {
            settings: settings.clone(),
            queue,
            started: now,
            ready_latched: AtomicBool::new(false),
            index: Mutex::new(Index::default()),
            config_synced: Mutex::new(
                mesh.config
                    .iter()
                    .map(|c| (config_source_name(c), false))
                    .collect(),
            ),
            config: Mutex::new(config::ConfigStore::new(&mesh.domain_suffix)),
            config_file_problems: Mutex::default(),
            secrets: secrets::SecretStore::default(),
            mesh: mesh.clone(),
        };
        {
            let mut idx = reg.lock();
            idx.settings = settings;
            for c in &mesh.clusters {
                let meta = reg.meta(c, true);
                metrics()
                    .cluster_synced
                    .get_or_create(&ClusterLabel {
                        cluster: c.name.clone(),
                    })
                    .set(0);
                idx.shards.insert(meta.name.clone(), Shard::new(meta));
            }
            metrics().managed_clusters.set(idx.shards.len() as i64);
        }
        Arc::new(reg)
    }

    pub fn mesh_config(&self) -> &Arc<MeshConfig> {
        &self.mesh
    }

    fn meta(&self, c: &ClusterConfig, blocks_ready: bool) -> ClusterMeta {
        ClusterMeta {
            name: Arc::from(c.name.as_str()),
            source: source_label(&c.source),
            network: Arc::from(c.network.as_str()),
            default_locality: Arc::new(parse_locality(c.locality.as_deref())),
            added: Instant::now(),
            blocks_ready,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, req: Option<PushRequest>, idx: &mut Index) {
        // Pods a ServiceEntry selects may have changed without any merged
        // Kubernetes service changing.
        idx.overlaid = None;
        let m = metrics();
        m.services.set(idx.merged.len() as i64);
        m.endpoints.set(idx.ready_endpoints as i64);
        m.managed_clusters.set(idx.shards.len() as i64);
        if let Some(r) = req {
            self.queue.push(r);
        }
    }

    /// Run `f` on one shard, then recompute the service keys it returns and push.
    fn with_shard<T>(
        &self,
        cluster: &str,
        f: impl FnOnce(&mut Shard, &mut Interners, &mut BTreeSet<ObjKey>) -> T,
    ) -> Result<T, RegistryError> {
        let mut idx = self.lock();
        let idx = &mut *idx;
        let shard = idx
            .shards
            .get_mut(cluster)
            .ok_or_else(|| RegistryError::UnknownCluster(cluster.to_string()))?;
        let mut keys = BTreeSet::new();
        let out = f(shard, &mut idx.interners, &mut keys);
        let gateways_changed = shard.gateways_changed;
        let mut req = idx.commit(&self.mesh.domain_suffix, keys);
        if gateways_changed && idx.refresh_gateways(&self.settings) {
            req = with_networks_push(req);
        }
        self.publish(req, idx);
        Ok(out)
    }

    /// Register a cluster at runtime (e.g. from a remote secret). It does not hold
    /// `/ready` back.
    pub fn add_cluster(&self, config: &ClusterConfig) -> Result<(), RegistryError> {
        let mut idx = self.lock();
        if idx.shards.contains_key(config.name.as_str()) {
            return Err(RegistryError::ClusterExists(config.name.clone()));
        }
        let meta = self.meta(config, false);
        idx.shards.insert(meta.name.clone(), Shard::new(meta));
        metrics()
            .cluster_synced
            .get_or_create(&ClusterLabel {
                cluster: config.name.clone(),
            })
            .set(0);
        self.publish(None, &mut idx);
        Ok(())
    }

    /// Drop a cluster and everything it contributed; its endpoints leave every proxy.
    pub fn remove_cluster(&self, cluster: &str) -> Result<(), RegistryError> {
        let mut idx = self.lock();
        let shard = idx
            .shards
            .remove(cluster)
            .ok_or_else(|| RegistryError::UnknownCluster(cluster.to_string()))?;
        let keys = shard.service_keys();
        let had_gateways = !shard.gateway_services.is_empty();
        drop(shard);
        let mut req = idx.commit(&self.mesh.domain_suffix, keys);
        if had_gateways && idx.refresh_gateways(&self.settings) {
            req = with_networks_push(req);
        }
        idx.interners.gc();
        metrics().cluster_synced.remove(&ClusterLabel {
            cluster: cluster.to_string(),
        });
        self.publish(req, &mut idx);
        drop(idx);
        self.reset_secrets(cluster, &[]);
        Ok(())
    }

    /// Replace the cluster's whole state with `objects` (after a relist or a rescan)
    /// and push only what differs. Objects that cannot be served are left out and
    /// returned (they also show on `/debug/clusterz`). Marks the cluster synced.
    pub fn reset_cluster(
        &self,
        cluster: &str,
        objects: Vec<KubeObject>,
    ) -> Result<Vec<ObjectError>, RegistryError> {
        self.reset(cluster, None, objects)
    }

    /// Like `reset_cluster` for one kind only (a watcher of that kind relisted).
    /// Does not change the synced flag.
    pub fn reset_kind(
        &self,
        cluster: &str,
        kind: Kind,
        objects: Vec<KubeObject>,
    ) -> Result<Vec<ObjectError>, RegistryError> {
        self.reset(cluster, Some(kind), objects)
    }

    fn reset(
        &self,
        cluster: &str,
        kind: Option<Kind>,
        objects: Vec<KubeObject>,
    ) -> Result<Vec<ObjectError>, RegistryError> {
        let origin = format!("cluster {cluster}");
        let res = self.with_shard(cluster, |shard, interners, keys| {
            let mut errors = Vec::new();
            let mut records = Vec::new();
            let mut seen = BTreeSet::new();
            let mut rejected = BTreeMap::new();
            for obj in objects
                .iter()
                .filter(|o| kind.is_none_or(|k| o.kind() == k))
            {
                match Record::from_object(obj, interners) {
                    Ok(rec) => {
                        let key = match &rec {
                            Record::Service(k, _) => RecordKey::Service(k.clone()),
                            Record::Pod(k, _) => RecordKey::Pod(k.clone()),
                            Record::Node(k, _) => RecordKey::Node(k.clone()),
                            Record::EndpointSlice(k, _) => RecordKey::EndpointSlice(k.clone()),
                        };
                        seen.insert(key);
                        records.push(rec);
                    }
                    Err(e) => {
                        if let Ok(k) = RecordKey::of(obj, interners) {
                            rejected.insert(k, problem(&origin, &e));
                        }
                        errors.push(e);
                    }
                }
            }
            for old in shard.keys() {
                if kind.is_none_or(|k| old.kind() == k) && !seen.contains(&old) {
                    shard.delete(&old, keys);
                }
            }
            for rec in records {
                shard.upsert(rec, keys);
            }
            let new_rejections = rejected
                .keys()
                .filter(|k| !shard.rejected.contains_key(*k))
                .count();
            shard
                .rejected
                .retain(|k, _| kind.is_some_and(|kd| k.kind() != kd));
            shard.rejected.extend(rejected);
            count_rejections(cluster, new_rejections);
            shard.state.last_event = Some(SystemTime::now());
            if kind.is_none() {
                shard.state.synced = true;
            }
            errors
        })?;
        if kind.is_none() {
            metrics()
                .cluster_synced
                .get_or_create(&ClusterLabel {
                    cluster: cluster.to_string(),
                })
                .set(1);
        }
        self.lock().interners.gc();
        Ok(res)
    }

    /// Apply one watch event. An object that cannot be served is removed (its last
    /// state is no longer the truth) and its rejection returned and recorded.
    pub fn apply(&self, cluster: &str, event: Event) -> Result<Option<ObjectError>, RegistryError> {
        let origin = format!("cluster {cluster}");
        let (kind, namespace) = match &event {
            Event::Upsert(o) | Event::Delete(o) => (o.kind(), o.metadata().namespace.clone()),
        };
        let res = self.with_shard(cluster, |shard, interners, keys| {
            shard.state.last_event = Some(SystemTime::now());
            let (obj, delete) = match &event {
                Event::Upsert(o) => (o, false),
                Event::Delete(o) => (o, true),
            };
            let key = match RecordKey::of(obj, interners) {
                Ok(k) => k,
                Err(e) => return Some(e),
            };
            if delete {
                shard.delete(&key, keys);
                return None;
            }
            match Record::from_object(obj, interners) {
                Ok(rec) => {
                    shard.rejected.remove(&key);
                    shard.upsert(rec, keys);
                    None
                }
                Err(e) => {
                    shard.delete(&key, keys);
                    count_rejections(cluster, 1);
                    shard.rejected.insert(key, problem(&origin, &e));
                    Some(e)
                }
            }
        });
        if matches!(kind, Kind::Pod | Kind::Node) {
            // The endpoints of ServiceEntries whose workloadSelector may pick
            // this Pod (those of its namespace) or the Pods on this Node (any
            // namespace) are recomputed.
            let config = self.config_store().snapshot();
            let hosts: Vec<Arc<str>> = config
                .service_entries
                .iter()
                .filter(|se| {
                    se.spec.workload_selector.is_some()
                        && (kind == Kind::Node
                            || namespace.as_deref() == Some(se.meta.namespace.as_str()))
                })
                .flat_map(|se| se.spec.hostnames())
                .map(|h| Arc::from(h.as_str()))
                .collect();
            if !hosts.is_empty() {
                self.queue.push(PushRequest::endpoints(hosts));
            }
        }
        res
    }

    /// The source delivered (or lost) a complete view.
    pub fn set_synced(&self, cluster: &str, synced: bool) -> Result<(), RegistryError> {
        self.with_shard(cluster, |s, _, _| s.state.synced = synced)?;
        metrics()
            .cluster_synced
            .get_or_create(&ClusterLabel {
                cluster: cluster.to_string(),
            })
            .set(synced as i64);
        Ok(())
    }

    /// Record the source's last error (`None` clears it once healthy again).
    pub fn set_error(&self, cluster: &str, error: Option<String>) -> Result<(), RegistryError> {
        self.with_shard(cluster, |s, _, _| s.state.last_error = error)
    }

    /// Mark the cluster's endpoints as served from last-known state (or fresh again).
    /// Pushes EDS for its services only.
    pub fn set_stale(&self, cluster: &str, stale: bool) -> Result<(), RegistryError> {
        self.with_shard(cluster, |s, _, keys| {
            if s.state.stale != stale {
                s.state.stale = stale;
                keys.extend(s.service_keys());
            }
        })
    }

    /// Rejections a source found before handing objects over (naming files);
    /// replaces the previous list. Newly seen ones count in
    /// `crossmesh_source_rejected_objects`.
    pub fn set_source_problems(
        &self,
        cluster: &str,
        problems: Vec<ObjectProblem>,
    ) -> Result<(), RegistryError> {
        self.with_shard(cluster, |s, _, _| {
            let new = problems
                .iter()
                .filter(|p| !s.state.source_rejected.contains(p))
                .count();
            count_rejections(cluster, new);
            s.state.source_rejected = problems;
        })
    }

    /// The merged view, cheaply: unchanged services share their `Arc`.
    /// ServiceEntries' services and WorkloadEntries' endpoints included
    /// (`external.rs`).
    pub fn services(&self) -> Arc<ServiceMap> {
        // The config lock is never taken while the index is held.
        let config = self.config_store().snapshot();
        let mut idx = self.lock();
        let base = match &idx.snapshot {
            Some(s) => s.clone(),
            None => {
                let s = Arc::new(idx.merged.clone());
                idx.snapshot = Some(s.clone());
                s
            }
        };
        if config.service_entries.is_empty() && config.workload_entries.is_empty() {
            return base;
        }
        if let Some((c, b, out)) = &idx.overlaid {
            if Arc::ptr_eq(c, &config) && Arc::ptr_eq(b, &base) {
                return out.clone();
            }
        }
        let out = Arc::new(idx.overlay(&base, &config, &self.mesh.domain_suffix));
        idx.overlaid = Some((config, base, out.clone()));
        out
    }

    /// One merged service by hostname.
    pub fn service(&self, hostname: &str) -> Option<Arc<Service>> {
        self.lock().merged.get(hostname).cloned()
    }

    /// Names of the registered clusters.
    pub fn clusters(&self) -> Vec<ClusterId> {
        self.lock().shards.keys().cloned().collect()
    }

    /// `/debug/clusterz`.
    pub fn cluster_status(&self) -> Vec<ClusterStatus> {
        let idx = self.lock();
        idx.shards
            .values()
            .map(|s| {
                let origin = format!("cluster {}", s.meta.name);
                let mut rejected = s.state.source_rejected.clone();
                rejected.extend(s.rejected.values().cloned());
                // Remote Secrets refused because they claim this cluster's name.
                rejected.extend(s.state.refused_claims.iter().cloned());
                ClusterStatus {
                    name: s.meta.name.to_string(),
                    source: s.meta.source.clone(),
                    network: s.meta.network.to_string(),
                    synced: s.state.synced,
                    stale: s.state.stale,
                    last_error: s.state.last_error.clone(),
                    last_event_time: s.state.last_event.and_then(status::rfc3339),
                    counts: s.counts(),
                    rejected,
                    notes: notes(s, &origin),
                }
            })
            .collect()
    }

    /// `/ready`: every source has synced once, or stopped blocking after
    /// `Tunables::ready_timeout`. Once ready, stays ready.
    pub fn ready(&self) -> bool {
        if self.ready_latched.load(Ordering::Relaxed) {
            return true;
        }
        let r = self.ready_at(Instant::now());
        if r {
            self.ready_latched.store(true, Ordering::Relaxed);
        }
        r
    }

    fn ready_at(&self, now: Instant) -> bool {
        let timeout = self.mesh.tunables.ready_timeout;
        let clusters_ok = self.lock().shards.values().all(|s| {
            !s.meta.blocks_ready
                || s.state.synced
                || now.saturating_duration_since(s.meta.added) >= timeout
        });
        let config_ok = self
            .config_synced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .all(|synced| *synced || now.saturating_duration_since(self.started) >= timeout);
        clusters_ok && config_ok
    }

    fn config_store(&self) -> MutexGuard<'_, config::ConfigStore> {
        self.config.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replace the Istio config from one source (`config_source_name`, e.g.
    /// `manifests:DIR`) with `docs`; invalid documents are rejected one by one.
    /// Pushes a full push when the config in force changed, and marks the source
    /// synced. Returns whether it changed.
    pub fn replace_config_source(&self, source: &str, docs: Vec<config::RawDoc>) -> bool {
        let changed = self.config_store().replace_source(source, docs);
        self.set_config_synced(source);
        if changed {
            self.queue.push(PushRequest::full("config"));
        }
        changed
    }

    /// Replace the keys fetched for RequestAuthentication `jwksUri`s
    /// (`security::jwks`); a change is a full push, as istiod's JWKS resolver
    /// pushes when a key rotates.
    pub fn set_jwks(&self, jwks: crate::model::istio::request_authentication::FetchedJwks) -> bool {
        let changed = self.config_store().set_jwks(jwks);
        if changed {
            self.queue.push(PushRequest::full("jwks"));
        }
        changed
    }

    /// Replace every TLS Secret of `cluster` (a full list or a rescan); a change
    /// is a full push (classes read Secrets through `credentialName`).
    pub fn reset_secrets(&self, cluster: &str, list: &[secrets::RawSecret]) -> bool {
        let changed = self.secrets.reset(cluster, list);
        if changed {
            self.queue.push(PushRequest::full("secret"));
        }
        changed
    }

    /// One TLS Secret added, modified (`Some`) or deleted (`None`).
    pub fn apply_secret(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
        secret: Option<&secrets::RawSecret>,
    ) -> bool {
        let changed = match secret {
            Some(s) => self.secrets.upsert(cluster, s),
            None => self.secrets.delete(cluster, namespace, name),
        };
        if changed {
            self.queue.push(PushRequest::full("secret"));
        }
        changed
    }

    /// Why JWKS sources failed to fetch (warnings on `/debug/configz`).
    pub fn set_jwks_errors(
        &self,
        errors: std::collections::BTreeMap<
            crate::model::istio::request_authentication::JwksSource,
            String,
        >,
    ) {
        self.config_store().set_jwks_errors(errors);
    }

    /// Drop everything a config source contributed (e.g. its cluster left).
    pub fn remove_config_source(&self, source: &str) -> bool {
        let changed = self.config_store().remove_source(source);
        if changed {
            self.queue.push(PushRequest::full("config"));
        }
        changed
    }

    /// `/debug/configz`: config in force, rejected objects, warnings against the
    /// current services.
    pub fn config_status(&self) -> config::ConfigStatus {
        let services = self.services();
        let mut status = self.config_store().status(&services);
        let files = self
            .config_file_problems
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        status.rejected.extend(
            files
                .values()
                .flatten()
                .map(|p| crate::model::istio::Rejection {
                    origin: p.origin.clone(),
                    kind: p.kind.clone(),
                    namespace: String::new(),
                    name: p.object.clone(),
                    field: String::new(),
                    reason: p.reason.clone(),
                }),
        );
        let credentials = self.secrets.snapshot();
        status.rejected.extend(secrets::rejections(&credentials));
        status.warnings.extend(secrets::unresolved(
            &credentials,
            &self.config_store().snapshot(),
        ));
        status
    }

    /// Problems a config source found with whole files (a YAML error, an
    /// unreadable file); replaces the source's previous list. Shown with the
    /// rejected objects on `/debug/configz`.
    pub fn set_config_file_problems(&self, source: &str, problems: Vec<ObjectProblem>) {
        let mut m = self
            .config_file_problems
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if problems.is_empty() {
            m.remove(source);
        } else {
            m.insert(source.to_string(), problems);
        }
        let n: usize = m.values().map(Vec::len).sum();
        metrics()
            .rejected_configs
            .get_or_create(&crate::metrics::KindLabel {
                kind: "YAMLFile".into(),
            })
            .set(n as i64);
    }

    /// Mark a config source (`config_source_name`) as having delivered its first view.
    pub fn set_config_synced(&self, source: &str) {
        let mut m = self.config_synced.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = m.get_mut(source) {
            *v = true;
        }
    }
}

fn problem(origin: &str, e: &ObjectError) -> ObjectProblem {
    ObjectProblem {
        origin: origin.to_string(),
        kind: e.kind.to_string(),
        object: e.object.clone(),
        reason: e.reason.clone(),
    }
}

/// Served objects worth a note: selector-less Services without slices, Pods without
/// IP, and network gateway Services (the gateways they stand for, or why none).
fn notes(s: &Shard, origin: &str) -> Vec<ObjectProblem> {
    let mut out = Vec::new();
    for key in &s.gateway_services {
        let Some(gw) = s.services.get(key).and_then(|svc| svc.gateway.as_ref()) else {
            continue;
        };
        let note = |reason: String| ObjectProblem {
            origin: origin.to_string(),
            kind: "Service".into(),
            object: format!("{}/{}", key.0, key.1),
            reason,
        };
        if !gw.addresses.is_empty() {
            let addrs: Vec<String> = gw
                .addresses
                .iter()
                .map(|a| std::net::SocketAddr::new(*a, gw.port).to_string())
                .collect();
            out.push(note(format!(
                "east-west gateway of network {}: {}",
                gw.network,
                addrs.join(", ")
            )));
        }
        out.extend(gw.problems().into_iter().map(note));
    }
    for (key, svc) in &s.services {
        if svc.selector.is_none() && !s.slices_by_service.contains_key(key) {
            out.push(ObjectProblem {
                origin: origin.to_string(),
                kind: "Service".into(),
                object: format!("{}/{}", key.0, key.1),
                reason: "has no selector and no EndpointSlice labelled kubernetes.io/service-name: it has no endpoints"
                    .into(),
            });
        }
    }
    for (key, pod) in &s.pods {
        if pod.ip.is_none() {
            out.push(ObjectProblem {
                origin: origin.to_string(),
                kind: "Pod".into(),
                object: format!("{}/{}", key.0, key.1),
                reason: "has no status.podIP: it is not an endpoint".into(),
            });
        }
    }
    out.sort();
    out
}

impl crate::model::push_request::ContextSource for Registry {
    /// The mesh file's settings with the discovered network gateways merged in;
    /// recomputed only when a gateway Service changes, shared otherwise.
    fn mesh(&self) -> Arc<MeshSettings> {
        self.lock().settings.clone()
    }

    fn services(&self) -> Arc<ServiceMap> {
        Registry::services(self)
    }

    fn config(&self) -> Arc<crate::model::istio::ConfigSnapshot> {
        self.config_store().snapshot()
    }

    fn credentials(&self) -> Arc<crate::model::credential::Credentials> {
        self.secrets.snapshot()
    }

    fn proxy_locality(&self, proxy: &crate::model::Proxy) -> Option<Locality> {
        self.pod_locality(
            &proxy.cluster_id,
            &proxy.namespace,
            &proxy.pod_name,
            Some(proxy.ip),
        )
    }
}

#[cfg(test)]
mod tests;
