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

use std::sync::Arc;

use kube::Client;
use tokio::task::JoinHandle;
use tracing::{info, info_span, warn, Instrument};

use super::kube::{ClusterWatch, KubeOptions, WatchHealth};
pub use crate::kube_client::in_cluster::*;
use crate::registry::Registry;

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
