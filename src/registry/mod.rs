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
mod label_index;
mod merge;
mod proxy_locality;
pub mod secrets;
mod shard;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use crate::config::{ClusterConfig, ClusterSource, ConfigSource, MeshConfig};
use crate::metrics::{metrics, ClusterLabel};
use crate::model::push_request::{PushQueue, PushRequest};
use crate::model::service::ServiceMap;
use crate::model::{ClusterId, Locality, MeshSettings, Service};

use endpoints::{Interners, ObjKey, Record, RecordKey};
pub use endpoints::{KubeKind, KubeObject, KubeRejection};
use merge::{with_networks_push, Index};
use shard::{ClusterMeta, Shard};
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
    config: Mutex<config::IstioConfigStore>,
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
            config: Mutex::new(config::IstioConfigStore::new(&mesh.domain_suffix)),
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
    ) -> Result<Vec<KubeRejection>, RegistryError> {
        self.reset(cluster, None, objects)
    }

    /// Like `reset_cluster` for one kind only (a watcher of that kind relisted).
    /// Does not change the synced flag.
    pub fn reset_kind(
        &self,
        cluster: &str,
        kind: KubeKind,
        objects: Vec<KubeObject>,
    ) -> Result<Vec<KubeRejection>, RegistryError> {
        self.reset(cluster, Some(kind), objects)
    }

    fn reset(
        &self,
        cluster: &str,
        kind: Option<KubeKind>,
        objects: Vec<KubeObject>,
    ) -> Result<Vec<KubeRejection>, RegistryError> {
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
    pub fn apply(
        &self,
        cluster: &str,
        event: Event,
    ) -> Result<Option<KubeRejection>, RegistryError> {
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
        if matches!(kind, KubeKind::Pod | KubeKind::Node) {
            // The endpoints of ServiceEntries whose workloadSelector may pick
            // this Pod (those of its namespace) or the Pods on this Node (any
            // namespace) are recomputed.
            let config = self.config_store().snapshot();
            let hosts: Vec<Arc<str>> = config
                .service_entries
                .iter()
                .filter(|se| {
                    se.spec.workload_selector.is_some()
                        && (kind == KubeKind::Node
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

    fn config_store(&self) -> MutexGuard<'_, config::IstioConfigStore> {
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

fn problem(origin: &str, e: &KubeRejection) -> ObjectProblem {
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
    fn ready(&self) -> bool {
        Registry::ready(self)
    }

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
