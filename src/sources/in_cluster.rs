//! The cluster crossmesh runs in, reached with the Pod's own service account
//! (mesh file `clusters[]: {name: c1, inCluster: true}`, usable as a config
//! cluster too: `config: - cluster: c1`).
//!
//! Credentials are found as client-go's `rest.InClusterConfig` finds them, with no
//! override: the API server from `KUBERNETES_SERVICE_HOST` and
//! `KUBERNETES_SERVICE_PORT` (set by the kubelet in every Pod), and the token, CA
//! bundle and namespace that the kubelet mounts under [`SERVICE_ACCOUNT_DIR`].
//! kube-rs (`Config::incluster_env`) builds the client; it re-reads the token file
//! at least once a minute and the CA file about as often, so the kubelet's token
//! rotation (projected tokens are replaced well before they expire) needs nothing
//! from us.
//!
//! What is missing (not in a Pod, `automountServiceAccountToken: false`, a token
//! not mounted yet) is checked here first, so the reason on `/debug/clusterz`
//! names the variable or file; the client is retried every [`RETRY`] until it can
//! be built. From then on the cluster is watched exactly like a kubeconfig cluster
//! (`kube::ClusterWatch`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::task::JoinHandle;
use tracing::{info, info_span, warn, Instrument};

use super::kube::{client_from_config, ClusterWatch, KubeOptions, KubeSourceError, WatchHealth};
use crate::registry::Registry;

/// Where the kubelet mounts a Pod's service-account credentials (fixed in
/// Kubernetes; client-go and kube-rs read the same paths).
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The API server's address, set by the kubelet in every Pod.
pub const HOST_ENV: &str = "KUBERNETES_SERVICE_HOST";
/// The API server's port, set by the kubelet in every Pod.
pub const PORT_ENV: &str = "KUBERNETES_SERVICE_PORT";
/// How long to wait before trying again to build the in-cluster client.
pub const RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum InClusterError {
    #[error("in-cluster credentials: {0} is not set (crossmesh is not running in a Pod)")]
    MissingEnv(&'static str),
    #[error("in-cluster credentials: {var}={value:?} is not a port number")]
    BadPort { var: &'static str, value: String },
    #[error("in-cluster credentials: cannot read {path}: {reason}{hint}")]
    Read {
        path: String,
        reason: String,
        hint: &'static str,
    },
    #[error("in-cluster credentials: {path} is empty")]
    Empty { path: String },
    #[error("in-cluster credentials: {0}")]
    Client(String),
}

/// The in-cluster client configuration, after checking every input kube-rs reads
/// so that a missing one is named.
pub fn config() -> Result<kube::Config, InClusterError> {
    let env = |var: &'static str| match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(InClusterError::MissingEnv(var)),
    };
    env(HOST_ENV)?;
    let port = env(PORT_ENV)?;
    if port.trim().parse::<u16>().is_err() {
        return Err(InClusterError::BadPort {
            var: PORT_ENV,
            value: port,
        });
    }
    let dir = Path::new(SERVICE_ACCOUNT_DIR);
    for file in ["token", "ca.crt", "namespace"] {
        let path = dir.join(file);
        let text = std::fs::read(&path).map_err(|e| InClusterError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
            hint: if e.kind() == std::io::ErrorKind::NotFound {
                " (is automountServiceAccountToken off for this Pod?)"
            } else {
                ""
            },
        })?;
        if text.iter().all(u8::is_ascii_whitespace) {
            return Err(InClusterError::Empty {
                path: path.display().to_string(),
            });
        }
    }
    kube::Config::incluster_env()
        .map_err(|e| InClusterError::Client(super::kube::describe_chain(&e)))
}

/// A client for the cluster crossmesh runs in.
pub fn client() -> Result<(Client, WatchHealth), InClusterError> {
    client_from_config(config()?, "in-cluster service account").map_err(|e| match e {
        KubeSourceError::Kubeconfig { reason, .. } => InClusterError::Client(reason),
        other => InClusterError::Client(other.to_string()),
    })
}

/// A member cluster read with the in-cluster credentials. Dropping it stops
/// everything.
pub struct InClusterSource {
    task: JoinHandle<()>,
}

impl Drop for InClusterSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start watching cluster `name` (already in the registry) through the in-cluster
/// credentials. Must be called within a tokio runtime. Until a client can be
/// built, the reason is the cluster's error on `/debug/clusterz`.
pub fn spawn_cluster(registry: Arc<Registry>, name: &str, opts: KubeOptions) -> InClusterSource {
    let span = info_span!("kube", cluster = %name, source = "in-cluster");
    let name = name.to_string();
    let task = tokio::spawn(
        async move {
            let (client, health) = wait_for_client(&name, |reason| {
                let _ = registry.set_error(&name, Some(reason));
            })
            .await;
            info!("in-cluster client ready");
            let _watch = ClusterWatch::spawn(registry, &name, client, health, opts, None);
            // The watch runs until this task is aborted (dropping `_watch` stops it).
            std::future::pending::<()>().await
        }
        .instrument(span),
    );
    InClusterSource { task }
}

/// Build the in-cluster client, retrying every [`RETRY`]; each failure's reason
/// goes to `report`.
pub async fn wait_for_client(cluster: &str, report: impl Fn(String)) -> (Client, WatchHealth) {
    loop {
        match client() {
            Ok(c) => return c,
            Err(e) => {
                warn!(%cluster, error = %e, "cannot build the in-cluster client; retrying");
                report(e.to_string());
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}
