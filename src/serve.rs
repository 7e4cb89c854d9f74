//! `crossmesh serve`: the wiring. Builds the flow of DESIGN.md §5 and runs it until
//! SIGINT or SIGTERM:
//!
//! ```text
//! sources (one task per manifest dir / kube cluster / config source)
//!    -> Registry (Arc, shared)            enqueues PushRequests on the PushQueue
//!    -> Pusher::run (one task)            debounce, translate, encode, hand snapshots
//!    -> AdsServer (tonic, xDS address)    one task per stream
//! debug HTTP (axum, debug address)        reads Registry and Connections
//! ```
//!
//! Both listeners are bound before anything starts, so a taken port fails at once
//! with a one-line reason. On a signal the servers stop accepting, every ADS stream
//! ends (proxies reconnect elsewhere), and the source and push tasks are dropped.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, info_span, warn, Instrument};

use crate::config::{ClusterSource, ConfigSource, MeshConfig};
use crate::debug::{DebugState, SentResources};
use crate::push::{PushQueue, Pusher};
use crate::registry::config::RawDoc;
use crate::registry::{config_source_name, ObjectProblem, Registry};
use crate::sources::{kube, manifests, remote_secret};
use crate::xds::server::AdsServer;
use crate::xds::Connections;

/// How long to wait for the servers to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Retry delay for a config cluster whose kubeconfig cannot be used yet.
const CONFIG_CLIENT_RETRY: Duration = Duration::from_secs(5);

/// `DebugState` over the live registry and ADS connections.
struct LiveState {
    registry: Arc<Registry>,
    connections: Arc<Connections>,
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_else(|e| json!({ "error": e.to_string() }))
}

impl DebugState for LiveState {
    fn ready(&self) -> bool {
        self.registry.ready()
    }

    fn syncz(&self) -> Value {
        to_json(&self.connections.list())
    }

    fn proxies(&self) -> Vec<String> {
        let ids: BTreeSet<String> = self
            .connections
            .list()
            .into_iter()
            .map(|c| c.proxy_id)
            .collect();
        ids.into_iter().collect()
    }

    fn sent(&self, proxy_id: &str) -> Option<SentResources> {
        self.connections.sent(proxy_id)
    }

    /// Each merged service with its endpoints grouped by member cluster; each
    /// endpoint names the service port it serves.
    fn registryz(&self) -> Value {
        let services = self.registry.services();
        let list: Vec<Value> = services
            .values()
            .map(|svc| {
                let mut by_cluster = serde_json::Map::new();
                for (port, eps) in &svc.endpoints {
                    for ep in eps {
                        let mut e = to_json(ep);
                        e["service_port"] = json!(port);
                        let entry = by_cluster
                            .entry(ep.cluster.to_string())
                            .or_insert_with(|| Value::Array(Vec::new()));
                        if let Value::Array(a) = entry {
                            a.push(e);
                        }
                    }
                }
                json!({
                    "hostname": svc.hostname,
                    "namespace": svc.namespace,
                    "name": svc.name,
                    "ports": svc.ports,
                    "clusters": svc.clusters,
                    "endpoints": by_cluster,
                })
            })
            .collect();
        json!({ "services": list })
    }

    fn configz(&self) -> Value {
        to_json(&self.registry.config_status())
    }

    fn clusterz(&self) -> Value {
        to_json(&self.registry.clusterz())
    }
}

/// Handles that stop their source when dropped.
#[derive(Default)]
struct Sources {
    manifests: Vec<manifests::ManifestWatch>,
    kube: Vec<kube::KubeCluster>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Sources {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// Start one source per member cluster and per config entry. Must run inside the
/// runtime. Fails only on a mesh file that names something that cannot be a
/// source (checked before anything is started).
fn start_sources(mesh: &MeshConfig, registry: &Arc<Registry>) -> anyhow::Result<Sources> {
    for c in &mesh.config {
        if let ConfigSource::Cluster(name) = c {
            match mesh.clusters.iter().find(|k| &k.name == name) {
                Some(k) if matches!(k.source, ClusterSource::Kubeconfig { .. }) => {}
                Some(_) => bail!(
                    "mesh file: config source `cluster: {name}` needs a kubeconfig cluster; \
                     for a manifests cluster list its Istio YAML as `- manifests: DIR`"
                ),
                None => bail!("mesh file: config source `cluster: {name}` is not in clusters[]"),
            }
        }
    }
    let mut s = Sources::default();
    for c in &mesh.clusters {
        match &c.source {
            ClusterSource::Manifests(dir) => {
                info!(cluster = %c.name, dir = %dir.display(), "watching manifests");
                s.manifests.push(
                    manifests::spawn_cluster(registry.clone(), c)
                        .with_context(|| format!("cluster {}", c.name))?,
                );
            }
            ClusterSource::Kubeconfig { path, .. } => {
                info!(cluster = %c.name, kubeconfig = %path.display(), "watching API server");
                s.kube.push(
                    kube::spawn_cluster(registry.clone(), c, kube::KubeOptions::from_mesh(mesh))
                        .with_context(|| format!("cluster {}", c.name))?,
                );
            }
        }
    }
    for src in &mesh.config {
        match src {
            ConfigSource::Manifests(dir) => {
                info!(dir = %dir.display(), "watching Istio config manifests");
                s.manifests
                    .push(manifests::spawn_config(registry.clone(), dir.clone()));
            }
            ConfigSource::Cluster(name) => {
                let Some(ClusterSource::Kubeconfig { path, context }) = mesh
                    .clusters
                    .iter()
                    .find(|k| &k.name == name)
                    .map(|k| k.source.clone())
                else {
                    continue; // checked above
                };
                info!(cluster = %name, "watching Istio config CRDs");
                let task = config_cluster(registry.clone(), name.clone(), path, context);
                s.tasks.push(tokio::spawn(
                    task.instrument(info_span!("config-cluster", cluster = %name)),
                ));
            }
        }
    }
    Ok(s)
}

/// Istio CRDs of a kubeconfig cluster (`config: - cluster: NAME`): build a client
/// (retrying while the kubeconfig is unusable, with the reason on `/debug/configz`)
/// and feed every change of the full set to the config store. The same cluster's
/// remote secrets (mesh file `remoteSecretNamespace`) register further member
/// clusters for as long as this task runs.
async fn config_cluster(
    registry: Arc<Registry>,
    cluster: String,
    path: std::path::PathBuf,
    context: Option<String>,
) {
    let source = config_source_name(&ConfigSource::Cluster(cluster.clone()));
    let client = loop {
        match kube::client_from_file(&path, context.as_deref()).await {
            Ok((client, _health)) => break client,
            Err(e) => {
                warn!(error = %e, "cannot build a client for Istio config; retrying");
                registry.set_config_file_problems(
                    &source,
                    vec![ObjectProblem {
                        origin: path.display().to_string(),
                        kind: String::new(),
                        object: String::new(),
                        reason: e.to_string(),
                    }],
                );
                tokio::time::sleep(CONFIG_CLIENT_RETRY).await;
            }
        }
    };
    registry.set_config_file_problems(&source, Vec::new());
    // The config cluster also carries the remote secrets that register more member
    // clusters at runtime (Istio's multi-cluster secrets), in the mesh file's
    // `remoteSecretNamespace`. The controller runs for as long as this task holds
    // it; names it refuses (already taken) show on `/debug/clusterz` under the
    // cluster holding the name, through the registry (`Registry::clusterz`).
    let mesh = registry.mesh_config().clone();
    let _remote_secrets = remote_secret::spawn(
        registry.clone(),
        client.clone(),
        &mesh.remote_secret_namespace,
        kube::KubeOptions::from_mesh(&mesh),
    );
    let origin = format!("cluster {cluster}");
    let reg = registry.clone();
    let sink: kube::ConfigSink = Arc::new(move |source: &str, values: Vec<Value>| {
        let docs = values
            .into_iter()
            .map(|value| RawDoc {
                origin: origin.clone(),
                value,
            })
            .collect();
        reg.replace_config_source(source, docs);
    });
    let watch = kube::spawn_config_watch(&cluster, client, sink);
    // Aborting this task (shutdown) must stop the watch too.
    struct AbortOnDrop(JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut watch = AbortOnDrop(watch);
    if let Err(e) = (&mut watch.0).await {
        if !e.is_cancelled() {
            warn!(error = %e, "Istio config watch ended");
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops crossmesh");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

fn stopped(rx: watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut rx = rx;
    async move {
        // An error means the sender is gone: stop as well.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Run the control plane until SIGINT or SIGTERM.
pub async fn serve(mesh: MeshConfig) -> anyhow::Result<()> {
    let mesh = Arc::new(mesh);
    let xds_listener = TcpListener::bind(mesh.xds_address)
        .await
        .with_context(|| format!("cannot listen for xDS on {}", mesh.xds_address))?;
    let debug_listener = TcpListener::bind(mesh.debug_address)
        .await
        .with_context(|| format!("cannot listen for debug HTTP on {}", mesh.debug_address))?;
    let xds_addr = xds_listener.local_addr().context("xDS listener address")?;
    let debug_addr = debug_listener
        .local_addr()
        .context("debug listener address")?;

    let queue = PushQueue::new();
    let registry = Registry::new(mesh.clone(), queue.clone());
    let pusher = Pusher::new(registry.clone(), queue, mesh.tunables.clone());
    let ads = AdsServer::new(Arc::new(pusher.clone()));
    let state = Arc::new(LiveState {
        registry: registry.clone(),
        connections: ads.connections(),
    });

    let sources = start_sources(&mesh, &registry)?;
    let push_task = tokio::spawn(pusher.run().instrument(info_span!("push")));

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut xds_task = tokio::spawn(
        crate::xds::server::serve(xds_listener, ads, stopped(stop_rx.clone()))
            .instrument(info_span!("xds")),
    );
    let mut debug_task = tokio::spawn(
        crate::debug::serve(debug_listener, state, stopped(stop_rx))
            .instrument(info_span!("debug")),
    );
    info!(
        xds = %xds_addr,
        debug = %debug_addr,
        clusters = mesh.clusters.len(),
        config_sources = mesh.config.len(),
        "crossmesh serving"
    );

    // Run until a signal, or until a server fails on its own.
    let failure: Option<anyhow::Error> = tokio::select! {
        sig = shutdown_signal() => {
            info!(signal = sig, "shutting down");
            None
        }
        r = &mut xds_task => Some(match r {
            Ok(Ok(())) => anyhow::anyhow!("the xDS server stopped unexpectedly"),
            Ok(Err(e)) => e.into(),
            Err(e) => anyhow::anyhow!("the xDS server task failed: {e}"),
        }),
        r = &mut debug_task => Some(match r {
            Ok(Ok(())) => anyhow::anyhow!("the debug HTTP server stopped unexpectedly"),
            Ok(Err(e)) => anyhow::Error::new(e).context(format!("debug HTTP on {debug_addr}")),
            Err(e) => anyhow::anyhow!("the debug HTTP server task failed: {e}"),
        }),
    };

    let _ = stop_tx.send(true);
    drop(sources);
    push_task.abort();
    let finish = async {
        if !xds_task.is_finished() {
            let _ = (&mut xds_task).await;
        }
        if !debug_task.is_finished() {
            let _ = (&mut debug_task).await;
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, finish).await.is_err() {
        warn!(grace = ?SHUTDOWN_GRACE, "servers did not stop in time; exiting anyway");
        xds_task.abort();
        debug_task.abort();
    }
    match failure {
        Some(e) => Err(e),
        None => {
            info!("stopped");
            Ok(())
        }
    }
}
