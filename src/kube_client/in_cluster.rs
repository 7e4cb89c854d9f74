//! The in-cluster client: the Pod's own service account, found as client-go's
//! `rest.InClusterConfig` finds it (`sources::in_cluster` has the whole story).

use std::path::Path;
use std::time::Duration;

use kube::Client;

use super::{client_from_config, KubeSourceError, WatchHealth};

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
    kube::Config::incluster_env().map_err(|e| InClusterError::Client(super::describe_chain(&e)))
}

/// A client for the cluster crossmesh runs in.
pub fn client() -> Result<(Client, WatchHealth), InClusterError> {
    client_from_config(config()?, "in-cluster service account").map_err(|e| match e {
        KubeSourceError::Kubeconfig { reason, .. } => InClusterError::Client(reason),
        other => InClusterError::Client(other.to_string()),
    })
}
