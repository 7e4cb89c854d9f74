//! Live member clusters (mesh file `clusters[].kubeconfig` + `context`, DESIGN.md
//! §2): kube-rs watchers on Services, Pods, Nodes and EndpointSlices feeding the
//! registry, and on the Istio CRDs of a `config: - cluster: NAME` entry.
//!
//! Flow per cluster: kubeconfig -> `kube::Client` (wrapped in [`WatchPacer`]) ->
//! one `kube::runtime::watcher` per kind (bookmarks on, re-list on 410 Gone,
//! [`WatchBackoff`]: 500 ms doubling to 5 s) -> one task that merges the four streams and writes the
//! registry. Nothing is cached here: objects are slimmed to the fields the registry
//! reads ([`slim`]) and handed over; the registry keeps compact records.
//!
//! - First sync: the four initial lists are buffered (with any watch events that
//!   arrive meanwhile) and handed over as one `Registry::reset_cluster`, which marks
//!   the cluster synced. A later re-list of one kind (410, or a watch resumed too
//!   late) is one `reset_kind`: deletions made meanwhile are applied, nothing is
//!   duplicated, and only services whose endpoints differ are pushed (EDS only).
//! - Losing the API server: the watchers retry with backoff; the cluster is marked
//!   stale (last-known endpoints keep serving) and its error shows on
//!   `/debug/clusterz`. With [`KubeOptions::stale_grace`] set, its endpoints are
//!   dropped after that long and fully re-listed on recovery.
//! - A watch that the server closes at once, again and again, is not retried in a
//!   hot loop: kube-rs re-watches without error on a clean close, so the pacer in
//!   the client delays such watches with exponential backoff.
//! - Credentials: the kubeconfig file is re-read when it changes; a new client is
//!   started beside the old one, and the old one stops only once the new one has
//!   synced (so bad new credentials never drop endpoints).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, SelectAll};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Node, NodeSpec, Pod, PodCondition, PodSpec, PodStatus, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher;
use kube::Client;
use serde_json::Value;
use tokio::sync::{mpsc, watch as tokio_watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::{ClusterConfig, ClusterSource, MeshConfig};
use crate::registry::{Event as RegEvent, KubeKind, KubeObject, Registry};

// The client plumbing (clients, pacer, backoff, errors) lives in `kube_client`,
// shared with `security`; re-exported here for the sources.
pub use crate::kube_client::*;

/// How often a kubeconfig file is checked for changes (besides file events).
pub const KUBECONFIG_POLL: Duration = Duration::from_secs(2);
/// EndpointSlices managed by the endpointslice controller mirror selector-based
/// Services, whose endpoints the registry computes from Pods; they are not watched.
pub const SLICE_SELECTOR: &str =
    "endpointslice.kubernetes.io/managed-by!=endpointslice-controller.k8s.io";

/// Knobs for a live cluster.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// Drop a lost cluster's endpoints after this long; `None` (default) serves the
    /// last-known endpoints, marked stale, until the cluster comes back.
    pub stale_grace: Option<Duration>,
    /// Watcher page size for the initial lists.
    pub page_size: u32,
}

impl KubeOptions {
    /// The options the mesh file chooses (`unreachableClusterEndpoints`).
    pub fn from_mesh(mesh: &MeshConfig) -> KubeOptions {
        KubeOptions {
            stale_grace: mesh.drop_unreachable_after,
            ..KubeOptions::default()
        }
    }
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            stale_grace: None,
            page_size: 500,
        }
    }
}

// ---------------------------------------------------------------------------
// Slimming: keep what the registry reads

fn slim_meta(m: ObjectMeta, keep_labels: bool) -> ObjectMeta {
    ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        labels: if keep_labels { m.labels } else { None },
        deletion_timestamp: m.deletion_timestamp,
        resource_version: m.resource_version,
        ..ObjectMeta::default()
    }
}

/// Drop every field the registry does not read, so a re-list buffers only what
/// matters (managedFields, annotations, container specs, most of the status).
pub fn slim(obj: KubeObject) -> KubeObject {
    match obj {
        KubeObject::Pod(p) => {
            let spec = p.spec.map(|s| PodSpec {
                node_name: s.node_name,
                service_account_name: s.service_account_name,
                host_network: s.host_network,
                containers: s
                    .containers
                    .into_iter()
                    .map(|c| Container {
                        name: c.name,
                        ports: c.ports.map(|ps| {
                            ps.into_iter()
                                .filter(|p| p.name.is_some())
                                .map(|p| ContainerPort {
                                    name: p.name,
                                    container_port: p.container_port,
                                    protocol: p.protocol,
                                    ..ContainerPort::default()
                                })
                                .collect()
                        }),
                        ..Container::default()
                    })
                    .collect(),
                ..PodSpec::default()
            });
            let status = p.status.map(|s| PodStatus {
                phase: s.phase,
                pod_ip: s.pod_ip,
                conditions: s.conditions.map(|cs| {
                    cs.into_iter()
                        .filter(|c| c.type_ == "Ready")
                        .map(|c| PodCondition {
                            type_: c.type_,
                            status: c.status,
                            ..PodCondition::default()
                        })
                        .collect()
                }),
                ..PodStatus::default()
            });
            KubeObject::Pod(Pod {
                metadata: slim_meta(p.metadata, true),
                spec,
                status,
            })
        }
        KubeObject::Service(s) => {
            // A network gateway Service also keeps its load balancer status.
            let (status, annotations) =
                crate::registry::endpoints::gateway_fields(&s.metadata, s.status);
            let mut metadata = slim_meta(s.metadata, true);
            metadata.annotations = annotations;
            KubeObject::Service(Service {
                metadata,
                spec: s.spec,
                status,
            })
        }
        KubeObject::Node(n) => KubeObject::Node(Node {
            metadata: slim_meta(n.metadata, true),
            spec: n.spec.map(|_| NodeSpec::default()),
            status: None,
        }),
        KubeObject::EndpointSlice(mut e) => {
            e.metadata = slim_meta(e.metadata, true);
            KubeObject::EndpointSlice(e)
        }
    }
}

/// `namespace/name` of an object (`/name` for cluster-scoped kinds).
pub fn object_key(o: &KubeObject) -> String {
    let m = o.metadata();
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or(""),
        m.name.as_deref().unwrap_or("")
    )
}

// ---------------------------------------------------------------------------
// The per-cluster watch

/// One event of [`streams`]: the kind, and the watcher's event of a slimmed object.
pub type KindEvent = (KubeKind, Result<watcher::Event<KubeObject>, watcher::Error>);

fn kind_stream<K>(
    api: Api<K>,
    cfg: watcher::Config,
    kind: KubeKind,
    wrap: fn(K) -> KubeObject,
) -> BoxStream<'static, KindEvent>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    relisting_watcher(api, cfg)
        .map(move |r| {
            let ev = r.map(|e| match e {
                watcher::Event::Apply(o) => watcher::Event::Apply(slim(wrap(o))),
                watcher::Event::Delete(o) => watcher::Event::Delete(slim(wrap(o))),
                watcher::Event::InitApply(o) => watcher::Event::InitApply(slim(wrap(o))),
                watcher::Event::Init => watcher::Event::Init,
                watcher::Event::InitDone => watcher::Event::InitDone,
            });
            (kind, ev)
        })
        .boxed()
}

const KINDS: [KubeKind; 4] = [
    KubeKind::Service,
    KubeKind::Pod,
    KubeKind::Node,
    KubeKind::EndpointSlice,
];

fn plural_kind(plural: &str) -> Option<KubeKind> {
    match plural {
        "services" => Some(KubeKind::Service),
        "pods" => Some(KubeKind::Pod),
        "nodes" => Some(KubeKind::Node),
        "endpointslices" => Some(KubeKind::EndpointSlice),
        _ => None,
    }
}

/// The four watchers of a member cluster (Services, Pods, Nodes, EndpointSlices of
/// selector-less Services), merged; objects slimmed. Also used by `crossmesh agent`.
pub fn streams(client: &Client, opts: &KubeOptions) -> SelectAll<BoxStream<'static, KindEvent>> {
    let cfg = watcher::Config::default().page_size(opts.page_size);
    let mut all = SelectAll::new();
    all.push(kind_stream(
        Api::<Service>::all(client.clone()),
        cfg.clone(),
        KubeKind::Service,
        KubeObject::Service,
    ));
    all.push(kind_stream(
        Api::<Pod>::all(client.clone()),
        cfg.clone(),
        KubeKind::Pod,
        KubeObject::Pod,
    ));
    all.push(kind_stream(
        Api::<Node>::all(client.clone()),
        cfg.clone(),
        KubeKind::Node,
        KubeObject::Node,
    ));
    all.push(kind_stream(
        Api::<EndpointSlice>::all(client.clone()),
        cfg.labels(SLICE_SELECTOR),
        KubeKind::EndpointSlice,
        KubeObject::EndpointSlice,
    ));
    all
}

/// One running set of watchers for one cluster and one client. Dropping it stops
/// the watchers; [`ClusterWatch::stop`] also waits until they have stopped.
pub struct ClusterWatch {
    task: Option<JoinHandle<()>>,
    synced: tokio_watch::Receiver<bool>,
    /// The cluster's TLS Secrets (`sources::secrets`), watched with the same client.
    secrets: Option<JoinHandle<()>>,
}

impl ClusterWatch {
    /// Start watching `cluster` (already registered in `registry`) with `client`.
    /// With `takeover`, the old watch keeps feeding the registry until this one
    /// has listed everything; then the old one is stopped and this one's full view
    /// replaces the cluster's state in one reset.
    pub fn spawn(
        registry: Arc<Registry>,
        cluster: &str,
        client: Client,
        health: WatchHealth,
        opts: KubeOptions,
        takeover: Option<ClusterWatch>,
    ) -> ClusterWatch {
        let (tx, rx) = tokio_watch::channel(false);
        let span = info_span!("kube", cluster = %cluster);
        let secrets = super::secrets::spawn_secret_watch(registry.clone(), cluster, client.clone());
        let run = ClusterRun {
            registry,
            cluster: cluster.to_string(),
            client,
            health,
            opts,
            takeover,
            synced_tx: tx,
        };
        ClusterWatch {
            task: Some(tokio::spawn(run.run().instrument(span))),
            synced: rx,
            secrets: Some(secrets),
        }
    }

    /// Becomes true once the first full view was handed to the registry.
    pub fn synced(&self) -> tokio_watch::Receiver<bool> {
        self.synced.clone()
    }

    /// Stop the watchers and wait until they no longer touch the registry.
    pub async fn stop(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
        if let Some(t) = self.secrets.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for ClusterWatch {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Some(t) = self.secrets.take() {
            t.abort();
        }
    }
}

struct ClusterRun {
    registry: Arc<Registry>,
    cluster: String,
    client: Client,
    health: WatchHealth,
    opts: KubeOptions,
    takeover: Option<ClusterWatch>,
    synced_tx: tokio_watch::Sender<bool>,
}

/// Per-kind progress of one watcher.
#[derive(Default)]
struct KindState {
    /// Objects of the list in progress (between `Init` and `InitDone`).
    buffer: Option<BTreeMap<String, KubeObject>>,
    /// Before the cluster's first full sync: the current view of this kind.
    pending: Option<BTreeMap<String, KubeObject>>,
    error: Option<String>,
}

impl ClusterRun {
    async fn run(mut self) {
        let mut health = self.health.subscribe();
        // Each pass is one set of watchers; a pass ends only when a lost cluster's
        // endpoints were dropped (stale_grace) and it must be fully re-listed.
        loop {
            let mut s = streams(&self.client, &self.opts);
            let mut kinds: HashMap<KubeKind, KindState> =
                KINDS.iter().map(|k| (*k, KindState::default())).collect();
            let mut synced = false;
            let mut lost_since: Option<tokio::time::Instant> = None;
            let mut dropped = false;
            loop {
                let grace = match (self.opts.stale_grace, lost_since, dropped) {
                    (Some(g), Some(t), false) if synced => Some(t + g),
                    _ => None,
                };
                let ev = tokio::select! {
                    ev = s.next() => ev,
                    Some(plural) = health.recv() => {
                        if let Some(kind) = plural_kind(&plural) {
                            self.recovered(&mut kinds, kind, synced, &mut lost_since);
                        }
                        if dropped && lost_since.is_none() {
                            break;
                        }
                        continue;
                    }
                    _ = async { tokio::time::sleep_until(grace.unwrap_or_else(tokio::time::Instant::now)).await }, if grace.is_some() => {
                        warn!(cluster = %self.cluster, "cluster lost for longer than the grace period: dropping its endpoints");
                        let _ = self.registry.reset_cluster(&self.cluster, Vec::new());
                        let _ = self.registry.set_synced(&self.cluster, false);
                        dropped = true;
                        continue;
                    }
                };
                let Some((kind, ev)) = ev else { return };
                match ev {
                    Err(e) => {
                        let (reason, lost) = explain_watcher(&e);
                        let reason = self.health.hints.refine(reason);
                        if !lost {
                            debug!(cluster = %self.cluster, %kind, %reason);
                            continue;
                        }
                        warn!(cluster = %self.cluster, %kind, error = %reason, "watch failed; retrying with backoff");
                        let st = kinds.entry(kind).or_default();
                        st.error = Some(reason.clone());
                        let _ = self
                            .registry
                            .set_error(&self.cluster, Some(format!("{kind}: {reason}")));
                        if synced && lost_since.is_none() {
                            lost_since = Some(tokio::time::Instant::now());
                            let _ = self.registry.set_stale(&self.cluster, true);
                        }
                    }
                    Ok(ev) => {
                        self.recovered(&mut kinds, kind, synced, &mut lost_since);
                        if dropped && lost_since.is_none() {
                            break;
                        }
                        let st = kinds.entry(kind).or_default();
                        match ev {
                            watcher::Event::Init => st.buffer = Some(BTreeMap::new()),
                            watcher::Event::InitApply(o) => {
                                st.buffer
                                    .get_or_insert_with(BTreeMap::new)
                                    .insert(object_key(&o), o);
                            }
                            watcher::Event::InitDone => {
                                let listed = st.buffer.take().unwrap_or_default();
                                if synced {
                                    let objs: Vec<KubeObject> = listed.into_values().collect();
                                    match self.registry.reset_kind(&self.cluster, kind, objs) {
                                        Ok(rejected) => self.log_rejected(&rejected),
                                        Err(e) => warn!(cluster = %self.cluster, error = %e),
                                    }
                                } else {
                                    st.pending = Some(listed);
                                    if kinds.values().all(|k| k.pending.is_some()) {
                                        self.first_sync(&mut kinds).await;
                                        synced = true;
                                    }
                                }
                            }
                            watcher::Event::Apply(o) => {
                                if synced {
                                    self.apply(RegEvent::Upsert(o));
                                } else if let Some(p) = st.pending.as_mut() {
                                    p.insert(object_key(&o), o);
                                }
                            }
                            watcher::Event::Delete(o) => {
                                if synced {
                                    self.apply(RegEvent::Delete(o));
                                } else if let Some(p) = st.pending.as_mut() {
                                    p.remove(&object_key(&o));
                                }
                            }
                        }
                    }
                }
            }
            info!(cluster = %self.cluster, "cluster reachable again; re-listing everything");
        }
    }

    /// A kind's watcher works again: clear its error, and the cluster's once no
    /// kind is failing.
    fn recovered(
        &self,
        kinds: &mut HashMap<KubeKind, KindState>,
        kind: KubeKind,
        synced: bool,
        lost_since: &mut Option<tokio::time::Instant>,
    ) {
        let st = kinds.entry(kind).or_default();
        if st.error.take().is_none() {
            return;
        }
        if kinds.values().all(|k| k.error.is_none()) {
            info!(cluster = %self.cluster, "cluster reachable again");
            let _ = self.registry.set_error(&self.cluster, None);
            if synced && lost_since.take().is_some() {
                let _ = self.registry.set_stale(&self.cluster, false);
            }
        } else if let Some(other) = kinds
            .iter()
            .find_map(|(k, s)| s.error.as_ref().map(|e| (k, e)))
        {
            let _ = self
                .registry
                .set_error(&self.cluster, Some(format!("{}: {}", other.0, other.1)));
        }
    }

    async fn first_sync(&mut self, kinds: &mut HashMap<KubeKind, KindState>) {
        if let Some(old) = self.takeover.take() {
            old.stop().await;
            info!(cluster = %self.cluster, "new credentials synced; old client stopped");
        }
        let mut all = Vec::new();
        for st in kinds.values_mut() {
            all.extend(st.pending.take().unwrap_or_default().into_values());
        }
        let n = all.len();
        match self.registry.reset_cluster(&self.cluster, all) {
            Ok(rejected) => self.log_rejected(&rejected),
            Err(e) => warn!(cluster = %self.cluster, error = %e),
        }
        let _ = self.registry.set_stale(&self.cluster, false);
        if kinds.values().all(|k| k.error.is_none()) {
            let _ = self.registry.set_error(&self.cluster, None);
        }
        info!(cluster = %self.cluster, objects = n, "cluster synced");
        let _ = self.synced_tx.send(true);
    }

    fn apply(&self, ev: RegEvent) {
        match self.registry.apply(&self.cluster, ev) {
            Ok(Some(rejected)) => self.log_rejected(&[rejected]),
            Ok(None) => {}
            Err(e) => warn!(cluster = %self.cluster, error = %e),
        }
    }

    fn log_rejected(&self, rejected: &[crate::registry::KubeRejection]) {
        for r in rejected {
            warn!(cluster = %self.cluster, kind = %r.kind, object = %r.object, reason = %r.reason, "object rejected");
        }
    }
}

// ---------------------------------------------------------------------------
// A mesh-file cluster: kubeconfig file, re-read on change

/// A member cluster from the mesh file, read through a kubeconfig file that is
/// re-read when it changes. Dropping it stops everything.
pub struct KubeCluster {
    task: JoinHandle<()>,
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start a mesh-file cluster (`clusters[]` with `kubeconfig`). Must be called within
/// a tokio runtime. Errors (unreadable or invalid kubeconfig) are reported on
/// `/debug/clusterz` and retried when the file changes; they never stop the task.
pub fn spawn_cluster(
    registry: Arc<Registry>,
    cluster: &ClusterConfig,
    opts: KubeOptions,
) -> Result<KubeCluster, KubeSourceError> {
    let ClusterSource::Kubeconfig { path, context } = &cluster.source else {
        return Err(KubeSourceError::NotKubeconfig(cluster.name.clone()));
    };
    let span = info_span!("kube", cluster = %cluster.name, kubeconfig = %path.display());
    let task = tokio::spawn(
        file_loop(
            registry,
            cluster.name.clone(),
            path.clone(),
            context.clone(),
            opts,
        )
        .instrument(span),
    );
    Ok(KubeCluster { task })
}

async fn file_loop(
    registry: Arc<Registry>,
    cluster: String,
    path: PathBuf,
    context: Option<String>,
    opts: KubeOptions,
) {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    // Watch the directory: editors and secret mounts replace the file by rename.
    let _watcher = path.parent().and_then(|dir| {
        let name = path.file_name().map(|n| n.to_os_string());
        let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let relevant = match &res {
                Ok(ev) => ev.paths.iter().any(|p| {
                    p.file_name().map(|n| n.to_os_string()) == name || p.ends_with("..data")
                }),
                Err(_) => true,
            };
            if relevant {
                let _ = tx.try_send(());
            }
        })
        .ok()?;
        notify::Watcher::watch(&mut w, dir, notify::RecursiveMode::NonRecursive).ok()?;
        Some(w)
    });
    let mut current: Option<(String, ClusterWatch)> = None;
    loop {
        match std::fs::read_to_string(&path) {
            Err(e) => {
                let reason = format!("kubeconfig {}: cannot read: {e}", path.display());
                warn!(%reason);
                let _ = registry.set_error(&cluster, Some(reason));
            }
            Ok(text) if current.as_ref().is_some_and(|(t, _)| *t == text) => {}
            Ok(text) => {
                let origin = path.display().to_string();
                match client_from_kubeconfig(&text, context.as_deref(), &origin).await {
                    Err(e) => {
                        warn!(error = %e, "kubeconfig rejected; keeping the previous client if any");
                        let _ = registry.set_error(&cluster, Some(e.to_string()));
                    }
                    Ok((client, health)) => {
                        if current.is_some() {
                            info!("kubeconfig changed; starting the new client beside the old one");
                        }
                        let old = current.take().map(|(_, w)| w);
                        let w = ClusterWatch::spawn(
                            registry.clone(),
                            &cluster,
                            client,
                            health,
                            opts.clone(),
                            old,
                        );
                        current = Some((text, w));
                    }
                }
            }
        }
        let _ = tokio::time::timeout(KUBECONFIG_POLL, rx.recv()).await;
        // Let a burst of file events settle.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while rx.try_recv().is_ok() {}
    }
}

// ---------------------------------------------------------------------------
// Istio CRDs in a member cluster (`config: - cluster: NAME`)

/// The Istio kinds watched for a config cluster, at their `v1` versions.
pub const ISTIO_KINDS: &[(&str, &str, &str)] = &[
    ("networking.istio.io", "Gateway", "gateways"),
    ("networking.istio.io", "VirtualService", "virtualservices"),
    ("networking.istio.io", "DestinationRule", "destinationrules"),
    ("networking.istio.io", "Sidecar", "sidecars"),
    ("networking.istio.io", "ServiceEntry", "serviceentries"),
    ("networking.istio.io", "WorkloadEntry", "workloadentries"),
    (
        "security.istio.io",
        "PeerAuthentication",
        "peerauthentications",
    ),
    (
        "security.istio.io",
        "RequestAuthentication",
        "requestauthentications",
    ),
    (
        "security.istio.io",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    ("telemetry.istio.io", "Telemetry", "telemetries"),
];

/// Whether a config kind may be missing from a config cluster without holding
/// back the others: the Gateway API kinds, the Telemetry CRD (a cluster
/// without it, or with only `v1alpha1` of it, Istio before 1.22) and the
/// Namespaces. Such a kind whose list fails with 404 or 403 counts as listed
/// and empty, is logged once, and is still retried.
pub fn optional_config_kind(group: &str) -> bool {
    group != "networking.istio.io" && group != "security.istio.io"
}

/// The Kubernetes Gateway API kinds watched for a config cluster beside
/// [`ISTIO_KINDS`] (a member-cluster agent streams the same kinds:
/// `sources::agent_proto::KINDS`).
pub const GATEWAY_API_KINDS: &[(&str, &str, &str)] = &[
    (
        "gateway.networking.k8s.io",
        "GatewayClass",
        "gatewayclasses",
    ),
    ("gateway.networking.k8s.io", "Gateway", "gateways"),
    ("gateway.networking.k8s.io", "HTTPRoute", "httproutes"),
    (
        "gateway.networking.k8s.io",
        "ReferenceGrant",
        "referencegrants",
    ),
    ("gateway.networking.k8s.io", "GRPCRoute", "grpcroutes"),
    ("gateway.networking.k8s.io", "TCPRoute", "tcproutes"),
    ("gateway.networking.k8s.io", "TLSRoute", "tlsroutes"),
];

/// Namespaces, watched beside the config kinds for their labels only
/// (Gateway API `allowedRoutes.namespaces.from: Selector`).
pub const NAMESPACE_KINDS: &[(&str, &str, &str)] = &[("", "Namespace", "namespaces")];

/// The version a config kind is watched at: `v1`, but ReferenceGrant's
/// `v1beta1` (the version every Gateway API release serves it at).
pub fn config_kind_version(group: &str, kind: &str) -> &'static str {
    if group == crate::model::gateway_api::GROUP && kind == "ReferenceGrant" {
        "v1beta1"
    } else if group == crate::model::gateway_api::GROUP
        && (kind == "TCPRoute" || kind == "TLSRoute")
    {
        // Experimental channel only.
        "v1alpha2"
    } else {
        "v1"
    }
}

/// Where a config cluster's Istio objects go: the full current set, as JSON
/// documents, on each change (wired to the registry's config store).
pub type ConfigSink = Arc<dyn Fn(&str, Vec<Value>) + Send + Sync>;

/// Watch the Istio CRDs of cluster `cluster` and hand the full set to `sink`
/// under the source name `cluster:NAME` after the first complete list and on each
/// change. A kind whose CRD is not installed (404) is retried with backoff and
/// reported, without holding back the others.
pub fn spawn_config_watch(cluster: &str, client: Client, sink: ConfigSink) -> JoinHandle<()> {
    let source = format!("cluster:{cluster}");
    let span = info_span!("kube-config", cluster = %cluster);
    let mut all = SelectAll::new();
    let kinds: Vec<_> = ISTIO_KINDS
        .iter()
        .chain(GATEWAY_API_KINDS)
        .chain(NAMESPACE_KINDS)
        .collect();
    let n_kinds = kinds.len();
    let optional: Vec<bool> = kinds
        .iter()
        .map(|(g, ..)| optional_config_kind(g))
        .collect();
    for (i, (group, kind, plural)) in kinds.into_iter().enumerate() {
        let gvk = GroupVersionKind::gvk(group, config_kind_version(group, kind), kind);
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let ar2 = ar.clone();
        all.push(
            relisting_watcher(api, watcher::Config::default())
                .map(move |r| (i, ar2.clone(), r))
                .boxed(),
        );
    }
    tokio::spawn(
        async move {
            let mut current: Vec<BTreeMap<String, Value>> =
                vec![BTreeMap::new(); n_kinds];
            let mut buffers: Vec<Option<BTreeMap<String, Value>>> = vec![None; n_kinds];
            let mut listed = vec![false; n_kinds];
            let mut delivered = false;
            while let Some((i, ar, ev)) = all.next().await {
                let key = |o: &DynamicObject| {
                    format!(
                        "{}/{}",
                        o.metadata.namespace.as_deref().unwrap_or(""),
                        o.metadata.name.as_deref().unwrap_or("")
                    )
                };
                let doc = |o: DynamicObject| {
                    let mut v = serde_json::to_value(&o).unwrap_or(Value::Null);
                    v["apiVersion"] = Value::String(ar.api_version.clone());
                    v["kind"] = Value::String(ar.kind.clone());
                    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove("managedFields");
                    }
                    if ar.kind == "Namespace" {
                        // Only the name and labels are read: keep nothing else.
                        let meta = v.get("metadata");
                        v = serde_json::json!({
                            "apiVersion": "v1",
                            "kind": "Namespace",
                            "metadata": {
                                "name": meta.and_then(|m| m.get("name")).cloned().unwrap_or(Value::Null),
                                "labels": meta.and_then(|m| m.get("labels")).cloned().unwrap_or(Value::Null),
                            },
                        });
                    }
                    v
                };
                let changed = match ev {
                    Err(e) => {
                        let (reason, _) = explain_watcher(&e);
                        // An optional kind (Gateway API, Telemetry) whose CRD is
                        // not installed (404) or that RBAC does not grant (403)
                        // counts as listed and empty: it must not hold back the
                        // Istio kinds. It is logged once, still retried, and
                        // applies once it lists.
                        let absent = matches!(&e, watcher::Error::InitialListFailed(kube::Error::Api(st))
                            if st.code == 404 || st.code == 403);
                        if optional[i] && absent {
                            if !listed[i] {
                                info!(kind = %ar.kind, api_version = %ar.api_version, error = %reason, "config kind not served by this cluster; skipped until it lists");
                                listed[i] = true;
                                true
                            } else {
                                debug!(kind = %ar.kind, error = %reason, "optional config kind still absent");
                                false
                            }
                        } else {
                            warn!(kind = %ar.kind, error = %reason, "Istio config watch failed");
                            false
                        }
                    }
                    Ok(watcher::Event::Init) => {
                        buffers[i] = Some(BTreeMap::new());
                        false
                    }
                    Ok(watcher::Event::InitApply(o)) => {
                        buffers[i]
                            .get_or_insert_with(BTreeMap::new)
                            .insert(key(&o), doc(o));
                        false
                    }
                    Ok(watcher::Event::InitDone) => {
                        current[i] = buffers[i].take().unwrap_or_default();
                        listed[i] = true;
                        true
                    }
                    Ok(watcher::Event::Apply(o)) => {
                        current[i].insert(key(&o), doc(o));
                        true
                    }
                    Ok(watcher::Event::Delete(o)) => current[i].remove(&key(&o)).is_some(),
                };
                // Deliver once every kind has listed, then on each change.
                if changed && (delivered || listed.iter().all(|l| *l)) {
                    delivered = true;
                    let docs: Vec<Value> =
                        current.iter().flat_map(|m| m.values().cloned()).collect();
                    sink(&source, docs);
                }
            }
        }
        .instrument(span),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slim_keeps_what_the_registry_reads() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "a"},
                          "annotations": {"big": "x".repeat(1000)},
                          "managedFields": [{"manager": "kubelet"}]},
            "spec": {"nodeName": "n1", "serviceAccountName": "sa",
                     "containers": [{"name": "c", "image": "img", "env": [{"name": "A", "value": "B"}],
                                     "ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 9}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "hostIP": "1.2.3.4",
                       "conditions": [{"type": "Ready", "status": "True"}, {"type": "Initialized", "status": "True"}]}
        }))
        .unwrap();
        let KubeObject::Pod(s) = slim(KubeObject::Pod(pod.clone())) else {
            panic!("kind changed")
        };
        assert!(s.metadata.annotations.is_none() && s.metadata.managed_fields.is_none());
        let c = &s.spec.as_ref().unwrap().containers[0];
        assert!(c.image.is_none() && c.env.is_none());
        assert_eq!(c.ports.as_ref().unwrap().len(), 1);
        assert_eq!(
            s.status
                .as_ref()
                .unwrap()
                .conditions
                .as_ref()
                .unwrap()
                .len(),
            1
        );
        assert!(s.status.as_ref().unwrap().host_ip.is_none());
        // The registry sees the same record either way.
        let mut i = crate::registry::endpoints::Interners::default();
        let a =
            crate::registry::endpoints::Record::from_object(&KubeObject::Pod(pod), &mut i).unwrap();
        let b =
            crate::registry::endpoints::Record::from_object(&KubeObject::Pod(s), &mut i).unwrap();
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    #[test]
    fn watch_backoff_is_exponential_jittered_capped_and_resets() {
        use kube::runtime::utils::Backoff;
        let mut b = watch_backoff();
        let delays: Vec<Duration> = (0..10).map(|_| b.next().unwrap()).collect();
        // Each delay lies within the jitter band below its exponential base.
        let bases = [500, 1000, 2000, 4000, 5000, 5000, 5000, 5000, 5000, 5000];
        for (d, base) in delays.iter().zip(bases) {
            let base = Duration::from_millis(base);
            assert!(*d <= base && *d >= base.mul_f64(0.75), "{d:?} vs {base:?}");
        }
        // Never above the cap, never a hot loop.
        assert!(delays.iter().all(|d| *d <= WATCH_BACKOFF_MAX));
        assert!(delays.iter().all(|d| *d >= Duration::from_millis(375)));
        // Jittered: not all capped delays are equal.
        let capped = &delays[5..];
        assert!(capped.iter().any(|d| *d != capped[0]), "{capped:?}");
        // A healthy event (StreamBackoff calls reset) starts again from the minimum.
        b.reset();
        assert!(b.next().unwrap() <= WATCH_BACKOFF_MIN);
    }
}
