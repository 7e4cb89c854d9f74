//! Shards: one member cluster's records (`endpoints.rs`) and the secondary
//! indexes over them (pods and services by namespace, pods by node and by label,
//! slices by service). A change to one record yields the `(namespace, name)`
//! service keys it can affect; `merge.rs` recomputes those across every shard.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use super::endpoints::{self, NodeRec, ObjKey, PodRec, Record, RecordKey, SliceRec, SvcRec};
use super::label_index::{index_insert, index_remove, LabelIndex};
use super::status::{ClusterState, Counts, ObjectProblem};
use crate::model::service::Labels;
use crate::model::{ClusterId, Endpoint, Locality};

/// How a cluster joins the registry.
#[derive(Debug, Clone)]
pub(super) struct ClusterMeta {
    pub(super) name: ClusterId,
    pub(super) source: String,
    pub(super) network: Arc<str>,
    pub(super) default_locality: Arc<Locality>,
    pub(super) added: Instant,
    /// Clusters from the mesh file hold `/ready` back until synced (or timed out);
    /// clusters registered at runtime never do.
    pub(super) blocks_ready: bool,
}

/// One member cluster's records and indexes.
#[derive(Debug)]
pub(super) struct Shard {
    pub(super) meta: ClusterMeta,
    pub(super) services: HashMap<ObjKey, SvcRec>,
    pub(super) pods: HashMap<ObjKey, PodRec>,
    pub(super) nodes: HashMap<Arc<str>, NodeRec>,
    pub(super) slices: HashMap<ObjKey, SliceRec>,
    pub(super) pods_by_node: HashMap<Arc<str>, BTreeSet<ObjKey>>,
    /// `(namespace, service name)` -> slice names.
    pub(super) slices_by_service: HashMap<ObjKey, BTreeSet<Arc<str>>>,
    /// Pods by each of their labels.
    pub(super) pods_by_label: LabelIndex,
    /// Services with a selector, by the first pair of their selector: a Pod can
    /// only be selected by the Services indexed under one of its own labels.
    pub(super) services_by_pair: LabelIndex,
    /// Services without a selector (endpoints from EndpointSlices), per namespace.
    pub(super) selectorless_by_ns: HashMap<Arc<str>, BTreeSet<Arc<str>>>,
    /// Objects the registry itself rejected (API-server sources), by key.
    pub(super) rejected: BTreeMap<RecordKey, ObjectProblem>,
    pub(super) state: ClusterState,
    /// Services labelled `topology.istio.io/network` (network gateways).
    pub(super) gateway_services: BTreeSet<ObjKey>,
    /// A gateway Service changed since the registry last merged the gateways.
    pub(super) gateways_changed: bool,
}

impl Shard {
    pub(super) fn new(meta: ClusterMeta) -> Shard {
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
    pub(super) fn track_gateway(&mut self, key: &ObjKey, new: Option<&SvcRec>) {
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

    pub(super) fn counts(&self) -> Counts {
        Counts {
            services: self.services.len(),
            pods: self.pods.len(),
            nodes: self.nodes.len(),
            endpointslices: self.slices.len(),
        }
    }

    pub(super) fn keys(&self) -> BTreeSet<RecordKey> {
        let mut out = BTreeSet::new();
        out.extend(self.services.keys().cloned().map(RecordKey::Service));
        out.extend(self.pods.keys().cloned().map(RecordKey::Pod));
        out.extend(self.nodes.keys().cloned().map(RecordKey::Node));
        out.extend(self.slices.keys().cloned().map(RecordKey::EndpointSlice));
        out
    }

    /// Every service key this shard contributes to (declared or referenced by a slice).
    pub(super) fn service_keys(&self) -> BTreeSet<ObjKey> {
        let mut out: BTreeSet<ObjKey> = self.services.keys().cloned().collect();
        out.extend(self.slices_by_service.keys().cloned());
        out
    }

    /// Services in `ns` selecting a Pod with these labels, plus the selector-less
    /// ones with slices (their endpoints borrow Pod labels through `targetRef`).
    pub(super) fn services_for_pod(
        &self,
        ns: &Arc<str>,
        labels: &[&Labels],
        out: &mut BTreeSet<ObjKey>,
    ) {
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
    pub(super) fn index_service(&mut self, key: &ObjKey, new: Option<&SvcRec>) {
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
    pub(super) fn upsert(&mut self, rec: Record, out: &mut BTreeSet<ObjKey>) {
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

    pub(super) fn services_on_node(&self, node: &Arc<str>, out: &mut BTreeSet<ObjKey>) {
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

    pub(super) fn delete(&mut self, key: &RecordKey, out: &mut BTreeSet<ObjKey>) {
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

    pub(super) fn locality_of(&self, node: Option<&Arc<str>>) -> Arc<Locality> {
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
    pub(super) fn endpoints_of(
        &self,
        key: &ObjKey,
        svc: &SvcRec,
        out: &mut BTreeMap<u16, Vec<Endpoint>>,
    ) {
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
