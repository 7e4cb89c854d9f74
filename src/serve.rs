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
//! with a one-line reason.
//!
//! Drain on SIGTERM (or SIGINT), for Kubernetes' rolling updates and scale-downs:
//! `/ready` answers 503 `draining` at once (`/healthz` stays 200); the xDS listener
//! closes (new connections are refused, so a proxy reconnecting lands on another
//! replica); every open ADS stream ends with `UNAVAILABLE` and every HTTP/2
//! connection gets a GOAWAY, so Envoys reconnect at once and keep their last config
//! meanwhile; the source and push tasks stop. The xDS server gets [`DRAIN_TIMEOUT`]
//! to finish (a proxy that does not read its stream cannot hold it longer), then the
//! debug server stops. The process exits within [`EXIT_DEADLINE`] of the signal
//! whatever still runs, well inside Kubernetes' default 30 s grace period; a
//! second signal exits at once. `serve` writes no files, so an exit at any point
//! (also during the first sync) leaves nothing half-written.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
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
use crate::security::authn::KubeClients;
use crate::sources::{in_cluster, kube, manifests, remote_secret};
use crate::xds::secure::XdsSecurity;
use crate::xds::server::AdsServer;
use crate::xds::Connections;

/// How long the xDS server may take to drain after a shutdown signal (streams
/// ended, GOAWAY sent, connections closed) before it is stopped hard.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the debug server gets to finish its requests once xDS has drained.
const DEBUG_STOP_GRACE: Duration = Duration::from_secs(2);
/// The process exits at most this long after the first shutdown signal, even if a
/// task (or a blocking thread) would still hold it.
pub const EXIT_DEADLINE: Duration = Duration::from_secs(15);
/// Retry delay for a config cluster whose kubeconfig cannot be used yet.
const CONFIG_CLIENT_RETRY: Duration = Duration::from_secs(5);

/// Config-source name under which a refused plug-in CA reload is listed on
/// `/debug/configz`.
const CA_RELOAD_SOURCE: &str = "mesh CA";

/// Names of the TLS xDS and agent ports' certificates: crossmesh's Service in
/// its namespace (deploy/kubernetes), in every form a proxy may dial, and the
/// mesh file's `serverNames` (DNS names or IP addresses; the ports' certificate
/// builders put IP addresses into IP SANs).
fn server_dns_names(mesh: &MeshConfig) -> Vec<String> {
    let ns = &mesh.remote_secret_namespace;
    let mut names = vec![
        "crossmesh".into(),
        format!("crossmesh.{ns}"),
        format!("crossmesh.{ns}.svc"),
        format!("crossmesh.{ns}.svc.{}", mesh.domain_suffix),
    ];
    names.extend(mesh.server_names.iter().cloned());
    names
}

/// `DebugState` over the live registry and ADS connections.
struct LiveState {
    registry: Arc<Registry>,
    connections: Arc<Connections>,
    /// Set once on a shutdown signal.
    draining: Arc<AtomicBool>,
    /// The agent port's clusters (`agentAddress`), shown on `/debug/clusterz`.
    agents: Option<Arc<crate::sources::agent::AgentHub>>,
    /// Gateway API status written back to config clusters, on `/debug/configz`.
    gateway_status: crate::sources::gateway_status::StatusWrites,
    /// The live service graph (mesh file `serviceGraph`), on `/debug/graphz`.
    graph: Option<Arc<crate::telemetry::ServiceGraph>>,
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_else(|e| json!({ "error": e.to_string() }))
}

impl DebugState for LiveState {
    fn ready(&self) -> bool {
        self.registry.ready()
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
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

    fn sent_clusters(&self, keep: &dyn Fn(&str) -> bool) -> Vec<(String, Vec<Arc<str>>)> {
        self.connections
            .sent_names(crate::xds::TypeUrl::Cluster, keep)
    }

    fn certz(&self) -> Value {
        to_json(&self.connections.certz())
    }

    fn registryz(&self) -> Value {
        crate::debug::registryz::page(&self.registry.services())
    }

    fn context(&self) -> Option<Arc<dyn crate::model::push_request::ContextSource>> {
        Some(self.registry.clone())
    }

    fn configz(&self) -> Value {
        let mut page = to_json(&self.registry.config_status());
        page["gatewayApiStatusWrites"] = self.gateway_status.debug();
        page
    }

    /// Service nodes carry the member clusters and networks of their endpoints.
    fn graphz(&self, window_secs: u64) -> Value {
        let Some(graph) = &self.graph else {
            return json!({ "enabled": false });
        };
        let services = self.registry.services();
        let describe = |host: &str| {
            let svc = services.get(host)?;
            let networks: BTreeSet<&str> = svc
                .endpoints
                .values()
                .flatten()
                .map(|e| &*e.network)
                .collect();
            Some(json!({ "clusters": svc.clusters, "networks": networks }))
        };
        graph.render(window_secs, crate::telemetry::graph::unix_now(), &describe)
    }

    fn clusterz(&self) -> Value {
        let mut page = to_json(&self.registry.clusterz());
        if let Some(agents) = &self.agents {
            agents.annotate_clusterz(&mut page);
        }
        page
    }
}

/// Handles that stop their source when dropped.
#[derive(Default)]
struct Sources {
    manifests: Vec<manifests::ManifestWatch>,
    kube: Vec<kube::KubeCluster>,
    in_cluster: Vec<in_cluster::InClusterSource>,
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
/// `debugAuth.required: false` with a debug address that is not loopback.
fn refuse_open_debug(mesh: &MeshConfig) -> anyhow::Result<()> {
    let addr = mesh.debug_address;
    if !addr.ip().is_loopback() && mesh.debug_auth.required == Some(false) {
        anyhow::bail!(
            "debugAuth.required: false, but the debug address {addr} is not a loopback address: \
             off loopback every debug path but /ready and /healthz needs a token"
        );
    }
    Ok(())
}

/// Who may read the debug endpoint on `addr` (mesh file `debugAuth`): `None`
/// when it is open (loopback, not `required`). With no credential configured,
/// every guarded path answers 401 (logged at start).
fn debug_authn(
    mesh: &MeshConfig,
    addr: std::net::SocketAddr,
    kube_clients: &KubeClients,
) -> anyhow::Result<Option<Arc<crate::debug::DebugAuthn>>> {
    let auth = &mesh.debug_auth;
    if !auth.required_on(&addr) {
        return Ok(None);
    }
    let authn = (!auth.service_accounts.is_empty()).then(|| {
        Arc::new(crate::security::authn::Authenticator::from_mesh(
            mesh,
            kube_clients.clone(),
        ))
    });
    let d = crate::debug::DebugAuthn::new(auth, authn);
    if d.accepts_any() {
        info!(%addr, "debug endpoint requires a bearer token");
    } else {
        tracing::warn!(%addr, "debug endpoint requires a bearer token and debugAuth names none \
            (tokenFile, serviceAccounts): every path but /ready and /healthz answers 401");
    }
    Ok(Some(Arc::new(d)))
}

fn start_sources(
    mesh: &MeshConfig,
    registry: &Arc<Registry>,
    kube_clients: &KubeClients,
    gateway_status: &crate::sources::gateway_status::StatusWrites,
) -> anyhow::Result<Sources> {
    for c in &mesh.config {
        if let ConfigSource::Cluster(name) = c {
            match mesh.clusters.iter().find(|k| &k.name == name) {
                Some(k) if client_source(&k.source).is_some() => {}
                // Its agent streams the Istio config (`sources::agent`).
                Some(k) if matches!(k.source, ClusterSource::Agent { .. }) => {}
                Some(_) => bail!(
                    "mesh file: config source `cluster: {name}` needs a kubeconfig, \
                     inCluster or agent cluster; for a manifests cluster list its Istio \
                     YAML as `- manifests: DIR`"
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
            ClusterSource::InCluster => {
                info!(cluster = %c.name, "watching the API server of this Pod's cluster");
                s.in_cluster.push(in_cluster::spawn_cluster(
                    registry.clone(),
                    &c.name,
                    kube::KubeOptions::from_mesh(mesh),
                ));
            }
            // Fed by its agent's streams on the agent port (`sources::agent`).
            ClusterSource::Agent { .. } => {}
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
                let Some(from) = mesh
                    .clusters
                    .iter()
                    .find(|k| &k.name == name)
                    .and_then(|k| client_source(&k.source))
                else {
                    continue; // checked above
                };
                info!(cluster = %name, "watching Istio config CRDs");
                let task = config_cluster(
                    registry.clone(),
                    name.clone(),
                    from,
                    kube_clients.clone(),
                    gateway_status.clone(),
                );
                s.tasks.push(tokio::spawn(
                    task.instrument(info_span!("config-cluster", cluster = %name)),
                ));
            }
        }
    }
    Ok(s)
}

/// How a config cluster's client is built.
#[derive(Debug, Clone)]
enum ClientSource {
    Kubeconfig {
        path: std::path::PathBuf,
        context: Option<String>,
    },
    InCluster,
}

/// The client source of a cluster that can be a config cluster (`None`: manifests).
fn client_source(source: &ClusterSource) -> Option<ClientSource> {
    match source {
        ClusterSource::Manifests(_) => None,
        ClusterSource::Kubeconfig { path, context } => Some(ClientSource::Kubeconfig {
            path: path.clone(),
            context: context.clone(),
        }),
        ClusterSource::InCluster => Some(ClientSource::InCluster),
        ClusterSource::Agent { .. } => None,
    }
}

/// Istio CRDs of a kubeconfig or in-cluster cluster (`config: - cluster: NAME`):
/// build a client (retrying while it cannot be built, with the reason on
/// `/debug/configz`) and feed every change of the full set to the config store.
/// The same cluster's remote secrets (mesh file `remoteSecretNamespace`) register
/// further member clusters for as long as this task runs.
async fn config_cluster(
    registry: Arc<Registry>,
    cluster: String,
    from: ClientSource,
    kube_clients: KubeClients,
    gateway_status: crate::sources::gateway_status::StatusWrites,
) {
    let source = config_source_name(&ConfigSource::Cluster(cluster.clone()));
    let client = loop {
        let (origin, built) = match &from {
            ClientSource::Kubeconfig { path, context } => (
                path.display().to_string(),
                kube::client_from_file(path, context.as_deref())
                    .await
                    .map_err(|e| e.to_string()),
            ),
            ClientSource::InCluster => (
                in_cluster::SERVICE_ACCOUNT_DIR.to_string(),
                in_cluster::client().map_err(|e| e.to_string()),
            ),
        };
        match built {
            Ok((client, _health)) => break client,
            Err(reason) => {
                warn!(error = %reason, "cannot build a client for Istio config; retrying");
                registry.set_config_file_problems(
                    &source,
                    vec![ObjectProblem {
                        origin,
                        kind: String::new(),
                        object: String::new(),
                        reason,
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
        kube_clients,
    );
    let origin = format!("cluster {cluster}");
    let reg = registry.clone();
    // Gateway API status is written back to this cluster's objects.
    let status_writer = gateway_status.spawn(registry.clone(), &cluster, client.clone());
    let sink: kube::ConfigSink = Arc::new(move |source: &str, values: Vec<Value>| {
        status_writer.observe(&values);
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

/// SIGINT and SIGTERM, listened for from creation on (a signal that arrives
/// while the sources start is not lost, nor does it kill the process unhandled).
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let term = match signal(SignalKind::terminate()) {
                Ok(t) => Some(t),
                Err(e) => {
                    warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops crossmesh");
                    None
                }
            };
            Signals { term }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Resolves on the next SIGINT or SIGTERM.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        if let Some(term) = self.term.as_mut() {
            return tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
        }
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// Exit the process `EXIT_DEADLINE` from now unless it has exited by then (a
/// thread, so that neither a stuck task nor the runtime's wait for blocking
/// threads can hold the exit).
fn exit_deadline(signal: &'static str) {
    let spawned = std::thread::Builder::new()
        .name("exit-deadline".into())
        .spawn(move || {
            std::thread::sleep(EXIT_DEADLINE);
            eprintln!(
                "crossmesh: still running {EXIT_DEADLINE:?} after {signal}; exiting without \
                 waiting further"
            );
            std::process::exit(1);
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the exit deadline thread");
    }
}

fn stopped(rx: watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut rx = rx;
    async move {
        // An error means the sender is gone: stop as well.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Run the control plane until SIGINT or SIGTERM, then drain (module docs).
pub async fn serve(mesh: MeshConfig) -> anyhow::Result<()> {
    // Before any port opens: the debug endpoint is never served open off loopback.
    refuse_open_debug(&mesh)?;
    let mut signals = Signals::new();
    let mesh = Arc::new(mesh);
    // A generated root kept in a Kubernetes Secret: fetched into (or created
    // from) `ca.stateDir` before the CA reads it there.
    if mesh.ca.configured || mesh.xds_tls_address.is_some() || mesh.agent_address.is_some() {
        crate::security::ca_store::sync_state_dir(&mesh)
            .await
            .context("mesh CA")?;
    }
    // The mesh CA before any port opens: a plug-in CA that cannot be used stops
    // the start with the file and the reason.
    let mesh_ca = if mesh.ca.configured {
        let ca = crate::security::Ca::from_mesh(&mesh).context("mesh CA")?;
        let (dir, generated) = ca.source();
        info!(
            dir = %dir.display(),
            generated,
            root_expires_in_days = ca
                .root_not_after()
                .duration_since(std::time::SystemTime::now())
                .map(|d| d.as_secs() / 86_400)
                .unwrap_or(0),
            workload_cert_ttl = ?ca.workload_ttl(),
            "mesh CA loaded"
        );
        Some(Arc::new(ca))
    } else {
        None
    };
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
    // The TLS, authenticated xDS port: proxies prove who they are with their
    // service-account token and get their certificate over SDS. It needs the
    // mesh CA, made (or loaded) here if `ca:` is not configured.
    // The API clients TokenReview uses: the mesh file's clusters, and the ones
    // remote secrets register at run time (`remote_secret` adds and removes them).
    let kube_clients = KubeClients::from_mesh(&mesh);
    let xds_tls = match mesh.xds_tls_address {
        None => None,
        Some(addr) => {
            let ca = match &mesh_ca {
                Some(ca) => ca.clone(),
                None => Arc::new(
                    crate::security::Ca::from_mesh(&mesh)
                        .context("mesh CA (needed by xdsTlsAddress)")?,
                ),
            };
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for TLS xDS on {addr}"))?;
            let authn =
                crate::security::authn::Authenticator::from_mesh(&mesh, kube_clients.clone());
            let security = Arc::new(XdsSecurity::new(
                ca,
                Arc::new(authn),
                mesh.trust_domain.clone(),
                mesh.ca.reissue_window,
            ));
            Some((listener, security))
        }
    };
    // Member-cluster agents (`agentAddress`): mutual TLS with the mesh CA in force.
    let agent_port = match mesh.agent_address {
        None => None,
        Some(addr) => {
            type CaFn = Arc<dyn Fn() -> Arc<crate::security::Ca> + Send + Sync>;
            let ca: CaFn = match (&xds_tls, &mesh_ca) {
                (Some((_, security)), _) => {
                    let security = security.clone();
                    Arc::new(move || security.ca())
                }
                (None, Some(ca)) => {
                    let ca = ca.clone();
                    Arc::new(move || ca.clone())
                }
                (None, None) => {
                    let ca = Arc::new(
                        crate::security::Ca::from_mesh(&mesh)
                            .context("mesh CA (needed by agentAddress)")?,
                    );
                    Arc::new(move || ca.clone())
                }
            };
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for agents on {addr}"))?;
            // Enrolment tokens and revocations: a Secret shared by the replicas
            // with `ca.kubernetesSecret`, else files beside `ca.stateDir`.
            let tokens = crate::security::agent_tokens::TokenStore::from_mesh(&mesh)
                .context("agent enrolment tokens")?;
            tokens.refresh().await.context("agent enrolment tokens")?;
            Some((listener, ca, Arc::new(tokens)))
        }
    };

    let queue = PushQueue::new();
    let registry = Registry::new(mesh.clone(), queue.clone());
    let pusher = Pusher::new(registry.clone(), queue, mesh.tunables.clone());
    let ads = AdsServer::new(Arc::new(pusher.clone()));
    // Envoy's metrics sink on the xDS ports feeds the service graph.
    let graph = mesh.service_graph.enabled.then(|| {
        let g = Arc::new(
            crate::telemetry::ServiceGraph::new((&mesh.service_graph).into())
                // With the TLS port, reports must prove who sends them.
                .authenticated_only(mesh.xds_tls_address.is_some()),
        );
        ads.serve_telemetry(g.clone());
        g
    });
    let _graph_expiry = graph.as_ref().map(crate::telemetry::spawn_expiry);
    let draining = Arc::new(AtomicBool::new(false));
    let agents = agent_port.as_ref().map(|(_, ca, tokens)| {
        crate::sources::agent::AgentHub::new(
            registry.clone(),
            &mesh,
            ca.clone(),
            tokens.clone(),
            crate::sources::agent::AgentHubOptions::from_mesh(&mesh),
        )
    });
    let gateway_status = crate::sources::gateway_status::StatusWrites::new();
    let state = Arc::new(LiveState {
        registry: registry.clone(),
        connections: ads.connections(),
        draining: draining.clone(),
        agents: agents.clone(),
        gateway_status: gateway_status.clone(),
        graph,
    });

    // A plug-in CA is read again when its files change (`ca.reloadInterval`);
    // a refused set shows on `/debug/configz` until the files are good again.
    let ca_watch = xds_tls.as_ref().map(|(_, security)| {
        let registry = registry.clone();
        let report = move |e: Option<&crate::security::ca::CaError>| {
            let problems = e
                .map(|e| ObjectProblem {
                    origin: e
                        .path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    kind: "PlugInCA".into(),
                    object: String::new(),
                    reason: format!("not loaded, the CA in force keeps signing: {e}"),
                })
                .into_iter()
                .collect();
            registry.set_config_file_problems(CA_RELOAD_SOURCE, problems);
        };
        tokio::spawn(
            crate::xds::secure::watch_plug_in_ca(security.clone(), mesh.ca.reload_interval, report)
                .instrument(info_span!("ca_reload")),
        )
    });
    let sources = start_sources(&mesh, &registry, &kube_clients, &gateway_status)?;
    let push_task = tokio::spawn(pusher.run().instrument(info_span!("push")));
    // The keys of RequestAuthentication `jwksUri`s, fetched beside translation;
    // a change is a full push.
    let jwks_task = {
        let (read, write, report) = (registry.clone(), registry.clone(), registry.clone());
        tokio::spawn(
            crate::security::jwks::run(
                move || crate::push::ContextSource::config(&*read),
                move |keys| write.set_jwks(keys),
                move |errors| report.set_jwks_errors(errors),
                mesh.tunables.jwks_refresh,
            )
            .instrument(info_span!("jwks")),
        )
    };
    let debug_auth = debug_authn(&mesh, debug_addr, &kube_clients)?;
    // The trust bundle in force (a plug-in CA may be reloaded) published for
    // proxies' bootstraps (`ca.rootCertNamespaces`).
    let bundle: Option<Arc<dyn Fn() -> String + Send + Sync>> =
        match (xds_tls.as_ref(), mesh_ca.as_ref()) {
            (Some((_, security)), _) => {
                let security = security.clone();
                Some(Arc::new(move || security.ca().trust_bundle_pem()))
            }
            (None, Some(ca)) => {
                let ca = ca.clone();
                Some(Arc::new(move || ca.trust_bundle_pem()))
            }
            (None, None) => None,
        };
    // Ends with the runtime when `serve` returns.
    let _root_publisher = bundle.and_then(|b| {
        crate::security::root_publisher::spawn(mesh.ca.root_cert_namespaces.clone(), b)
    });

    let (xds_stop, xds_stop_rx) = watch::channel(false);
    let (debug_stop, debug_stop_rx) = watch::channel(false);
    // Without a TLS port, a task that only waits for the stop, so that the
    // select and the drain below treat both ports alike.
    let mut xds_tls_task = match xds_tls {
        Some((listener, security)) => tokio::spawn(
            crate::xds::secure::serve_tls(
                listener,
                ads.clone(),
                security,
                server_dns_names(&mesh),
                stopped(xds_stop_rx.clone()),
            )
            .instrument(info_span!("xds_tls")),
        ),
        None => {
            let stop = stopped(xds_stop_rx.clone());
            tokio::spawn(async move {
                stop.await;
                Ok(())
            })
        }
    };
    // The agent port stops with the xDS ports; a failure is logged (agent
    // clusters then stay stale), the rest keeps serving.
    let agent_task = match (agent_port, agents) {
        (Some((listener, _, _)), Some(hub)) => {
            let serve = crate::sources::agent::serve(
                listener,
                hub,
                server_dns_names(&mesh),
                stopped(xds_stop_rx.clone()),
            );
            Some(tokio::spawn(
                async move {
                    if let Err(e) = serve.await {
                        tracing::error!(error = %e, "the agent port stopped");
                    }
                }
                .instrument(info_span!("agents")),
            ))
        }
        _ => None,
    };
    let mut xds_task = tokio::spawn(
        crate::xds::server::serve(xds_listener, ads, stopped(xds_stop_rx))
            .instrument(info_span!("xds")),
    );
    let mut debug_task = tokio::spawn(
        crate::debug::serve_with_auth(debug_listener, state, debug_auth, stopped(debug_stop_rx))
            .instrument(info_span!("debug")),
    );
    info!(
        xds = %xds_addr,
        debug = %debug_addr,
        clusters = mesh.clusters.len(),
        config_sources = mesh.config.len(),
        mesh_ca = mesh_ca.is_some(),
        "crossmesh serving"
    );

    // Run until a signal, or until a server fails on its own.
    let failure: Option<anyhow::Error> = tokio::select! {
        sig = signals.recv() => {
            info!(signal = sig, drain_timeout = ?DRAIN_TIMEOUT, "draining");
            exit_deadline(sig);
            None
        }
        r = &mut xds_task => Some(match r {
            Ok(Ok(())) => anyhow::anyhow!("the xDS server stopped unexpectedly"),
            Ok(Err(e)) => e.into(),
            Err(e) => anyhow::anyhow!("the xDS server task failed: {e}"),
        }),
        r = &mut xds_tls_task => Some(match r {
            Ok(Ok(())) => anyhow::anyhow!("the TLS xDS server stopped unexpectedly"),
            Ok(Err(e)) => e.into(),
            Err(e) => anyhow::anyhow!("the TLS xDS server task failed: {e}"),
        }),
        r = &mut debug_task => Some(match r {
            Ok(Ok(())) => anyhow::anyhow!("the debug HTTP server stopped unexpectedly"),
            Ok(Err(e)) => anyhow::Error::new(e).context(format!("debug HTTP on {debug_addr}")),
            Err(e) => anyhow::anyhow!("the debug HTTP server task failed: {e}"),
        }),
    };

    // Readiness first, so the Service stops sending new connections here; then
    // xDS: listener closed, streams ended, GOAWAY on every connection.
    draining.store(true, Ordering::Relaxed);
    if let Some(t) = &ca_watch {
        t.abort();
    }
    let _ = xds_stop.send(true);
    drop(sources);
    if let Some(t) = &agent_task {
        t.abort();
    }
    push_task.abort();
    jwks_task.abort();
    if !xds_task.is_finished() || !xds_tls_task.is_finished() {
        let both = async {
            let _ = (&mut xds_task).await;
            let _ = (&mut xds_tls_task).await;
        };
        tokio::select! {
            r = tokio::time::timeout(DRAIN_TIMEOUT, both) => {
                if r.is_err() {
                    warn!(timeout = ?DRAIN_TIMEOUT, "xDS connections did not close in time; closing them");
                }
            }
            sig = signals.recv() => warn!(signal = sig, "second signal; stopping without draining"),
        }
        xds_task.abort();
        xds_tls_task.abort();
    }
    info!("xDS drained");
    let _ = debug_stop.send(true);
    if !debug_task.is_finished()
        && tokio::time::timeout(DEBUG_STOP_GRACE, &mut debug_task)
            .await
            .is_err()
    {
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
