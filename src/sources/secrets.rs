//! TLS Secrets from a member cluster's API server, for `credentialName`
//! (Istio's `pilot/pkg/credentials/kube`): one watcher on `v1` Secrets in every
//! namespace, beside the cluster's endpoint watchers (`kube::ClusterWatch`).
//! Secrets that hold no TLS keys, service-account tokens and Helm releases are
//! dropped as they arrive (`registry::secrets`); the full list replaces the
//! cluster's Secrets after every (re)list, and each event applies one Secret.
//! Key bytes are never logged: events are logged by namespace and name only.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::task::JoinHandle;
use tracing::{info_span, warn, Instrument};

use crate::registry::secrets::RawSecret;
use crate::registry::Registry;

fn key(s: &Secret) -> (String, String) {
    (
        s.metadata.namespace.clone().unwrap_or_default(),
        s.metadata.name.clone().unwrap_or_default(),
    )
}

/// Watch the Secrets of `cluster` with `client` until the task is aborted.
pub fn spawn_secret_watch(
    registry: Arc<Registry>,
    cluster: &str,
    client: Client,
) -> JoinHandle<()> {
    let cluster = cluster.to_string();
    let span = info_span!("kube-secrets", cluster = %cluster);
    let api: Api<Secret> = Api::all(client);
    let mut events = super::kube::relisting_watcher(api, watcher::Config::default());
    tokio::spawn(
        async move {
            let mut listing: Option<BTreeMap<(String, String), RawSecret>> = None;
            while let Some(ev) = events.next().await {
                match ev {
                    Err(e) => {
                        warn!(error = %super::kube::describe_chain(&e), "Secret watch failed; retrying");
                    }
                    Ok(watcher::Event::Init) => listing = Some(BTreeMap::new()),
                    Ok(watcher::Event::InitApply(s)) => {
                        listing
                            .get_or_insert_with(BTreeMap::new)
                            .insert(key(&s), RawSecret::from_k8s(&s));
                    }
                    Ok(watcher::Event::InitDone) => {
                        let all: Vec<RawSecret> =
                            listing.take().unwrap_or_default().into_values().collect();
                        registry.reset_secrets(&cluster, &all);
                    }
                    Ok(watcher::Event::Apply(s)) => {
                        let (ns, name) = key(&s);
                        registry.apply_secret(&cluster, &ns, &name, Some(&RawSecret::from_k8s(&s)));
                    }
                    Ok(watcher::Event::Delete(s)) => {
                        let (ns, name) = key(&s);
                        registry.apply_secret(&cluster, &ns, &name, None);
                    }
                }
            }
        }
        .instrument(span),
    )
}
