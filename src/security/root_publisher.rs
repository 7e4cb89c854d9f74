//! The mesh's trust bundle published as a ConfigMap (`crossmesh-ca-root-cert`,
//! key `root-cert.pem`) in the namespaces named by `ca.rootCertNamespaces` of
//! the cluster `serve` runs in, as istiod publishes `istio-ca-root-cert`. Proxies
//! mount it and hand it to `crossmesh bootstrap --root-cert`, so they trust the
//! TLS xDS port without ever seeing a key.
//!
//! The bundle is checked every [`RESYNC`] and written only when it differs (a
//! root rotation reaches the ConfigMaps within that time); a ConfigMap deleted
//! by someone is written again. Failures are logged with the namespace and the
//! reason and retried at the next round.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::sources::in_cluster;

/// The ConfigMap's name in every namespace it is published to.
pub const CONFIGMAP: &str = "crossmesh-ca-root-cert";
/// Its one key: the trust bundle, PEM, every root in force.
pub const KEY: &str = "root-cert.pem";
/// How often the published bundle is compared with the one in force.
pub const RESYNC: Duration = Duration::from_secs(30);

/// Start publishing `bundle()` to `namespaces` (nothing when empty). Runs until
/// the handle is aborted.
pub fn spawn(
    namespaces: Vec<String>,
    bundle: Arc<dyn Fn() -> String + Send + Sync>,
) -> Option<JoinHandle<()>> {
    if namespaces.is_empty() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut client = None;
        loop {
            if client.is_none() {
                match in_cluster::client() {
                    Ok((c, _)) => client = Some(c),
                    Err(e) => warn!(reason = %e, "ca.rootCertNamespaces: no in-cluster client"),
                }
            }
            if let Some(c) = &client {
                let pem = bundle();
                for ns in &namespaces {
                    if let Err(reason) = publish(c.clone(), ns, &pem).await {
                        warn!(namespace = %ns, configmap = CONFIGMAP, %reason, "cannot publish the mesh root certificate");
                    }
                }
            }
            tokio::time::sleep(RESYNC).await;
        }
    }))
}

/// Make `ns/crossmesh-ca-root-cert` hold `pem`.
async fn publish(client: kube::Client, ns: &str, pem: &str) -> Result<(), String> {
    let api: Api<ConfigMap> = Api::namespaced(client, ns);
    let want = BTreeMap::from([(KEY.to_string(), pem.to_string())]);
    let reason = |e: kube::Error| match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => crate::sources::kube::describe_chain(&other),
    };
    match api.get_opt(CONFIGMAP).await.map_err(reason)? {
        Some(cm) if cm.data.as_ref() == Some(&want) => Ok(()),
        Some(mut cm) => {
            cm.data = Some(want);
            api.replace(CONFIGMAP, &PostParams::default(), &cm)
                .await
                .map_err(reason)?;
            info!(namespace = %ns, configmap = CONFIGMAP, "mesh root certificate updated");
            Ok(())
        }
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(CONFIGMAP.into()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/managed-by".to_string(),
                        "crossmesh".to_string(),
                    )])),
                    ..Default::default()
                },
                data: Some(want),
                ..Default::default()
            };
            api.create(&PostParams::default(), &cm)
                .await
                .map_err(reason)?;
            info!(namespace = %ns, configmap = CONFIGMAP, "mesh root certificate published");
            Ok(())
        }
    }
}
