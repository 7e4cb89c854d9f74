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

use crate::kube_client::in_cluster;

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

/// Namespaces the bundle is not published to, as istiod's namespace controller
/// leaves Istio's `IgnoredNamespaces` alone.
pub const IGNORED_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];

/// Publish `bundle` to every namespace of the cluster `client` reaches (but
/// [`IGNORED_NAMESPACES`] and namespaces being deleted), as istiod publishes
/// `istio-ca-root-cert`: to a namespace when it appears, to all of them when the
/// bundle changes, and every [`RESYNC`] (a ConfigMap deleted or edited by
/// someone is written again). `crossmesh agent` runs it in its member cluster
/// for the sidecars it injects. Runs until the handle is aborted.
pub fn spawn_cluster_wide(
    client: kube::Client,
    mut bundle: tokio::sync::watch::Receiver<String>,
) -> JoinHandle<()> {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Namespace;
    use kube::runtime::watcher;
    tokio::spawn(async move {
        let api: Api<Namespace> = Api::all(client.clone());
        let mut events =
            crate::kube_client::relisting_watcher(api, watcher::Config::default()).boxed();
        let mut namespaces = std::collections::BTreeSet::new();
        let mut listing = std::collections::BTreeSet::new();
        let mut resync = tokio::time::interval(RESYNC);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let wanted = |n: &Namespace| {
            let name = n.metadata.name.clone()?;
            (n.metadata.deletion_timestamp.is_none()
                && !IGNORED_NAMESPACES.contains(&name.as_str()))
            .then_some(name)
        };
        loop {
            // The namespaces to write to this round.
            let mut to: Vec<String> = Vec::new();
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(watcher::Event::Init)) => listing.clear(),
                    Some(Ok(watcher::Event::InitApply(n))) => {
                        listing.extend(wanted(&n));
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        namespaces = std::mem::take(&mut listing);
                        to.extend(namespaces.iter().cloned());
                    }
                    Some(Ok(watcher::Event::Apply(n))) => {
                        if let Some(name) = wanted(&n) {
                            if namespaces.insert(name.clone()) {
                                to.push(name);
                            }
                        } else if let Some(name) = &n.metadata.name {
                            namespaces.remove(name);
                        }
                    }
                    Some(Ok(watcher::Event::Delete(n))) => {
                        if let Some(name) = &n.metadata.name {
                            namespaces.remove(name);
                        }
                    }
                    Some(Err(e)) => {
                        warn!(reason = %e, "cannot watch Namespaces to publish the mesh root certificate; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    None => return,
                },
                r = bundle.changed() => {
                    if r.is_err() {
                        return;
                    }
                    to.extend(namespaces.iter().cloned());
                }
                _ = resync.tick() => to.extend(namespaces.iter().cloned()),
            }
            if to.is_empty() {
                continue;
            }
            let pem = bundle.borrow_and_update().clone();
            for ns in to {
                if let Err(reason) = publish(client.clone(), &ns, &pem).await {
                    warn!(namespace = %ns, configmap = CONFIGMAP, %reason, "cannot publish the mesh root certificate");
                }
            }
        }
    })
}

/// Make `ns/crossmesh-ca-root-cert` hold `pem`.
async fn publish(client: kube::Client, ns: &str, pem: &str) -> Result<(), String> {
    let api: Api<ConfigMap> = Api::namespaced(client, ns);
    let want = BTreeMap::from([(KEY.to_string(), pem.to_string())]);
    let reason = |e: kube::Error| match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => crate::kube_client::describe_chain(&other),
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
