//! The agent's watch of Istio config and the Kubernetes Gateway API in its
//! member cluster, for a hub whose mesh file lists the cluster as a config
//! source (`config: - cluster: NAME`): the kinds the kube source watches for
//! such a cluster (`sources::kube::ISTIO_KINDS` and `GATEWAY_API_KINDS`, at the
//! versions of `sources::kube::config_kind_version`), only in the namespaces of the
//! cluster's grant (`Welcome.namespaces`; none: every namespace), one watcher
//! per kind and namespace. Objects go into the agent's inventory as whole
//! documents (apiVersion, kind, metadata without managedFields, spec), keyed
//! `ns/name`, and are streamed like any other kind.
//!
//! A kind the agent may not read (HTTP 403: its RBAC does not grant it) or whose
//! CRD is not installed (404) is not an error of the agent: the kind counts as
//! listed (empty) and unavailable, with the reason, which the hub shows on
//! `/debug/clusterz`; its watcher keeps retrying with backoff and the kind
//! becomes available once a list succeeds.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::stream::SelectAll;
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher;
use serde_json::Value;
use tracing::{debug, info, warn};

use super::{Entry, Shared};
use crate::sources::kube::{config_kind_version, relisting_watcher};

pub use crate::sources::agent_proto::{group_kind, kinds, KINDS};

use super::proto::Kind as WireKind;

/// Why a watcher error makes a kind unavailable (403, 404), if it does.
fn unavailable(e: &watcher::Error) -> Option<String> {
    let st = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(st))
        | watcher::Error::WatchStartFailed(kube::Error::Api(st)) => st,
        _ => return None,
    };
    match st.code {
        403 => Some(format!(
            "forbidden (HTTP 403): the agent's RBAC does not grant list/watch: {}",
            st.message
        )),
        404 => Some(format!(
            "not served (HTTP 404): the CRD is not installed: {}",
            st.message
        )),
        _ => None,
    }
}

/// The document streamed for an Istio object.
fn entry(o: DynamicObject, ar: &ApiResource) -> Option<(String, Entry)> {
    let ns = o.metadata.namespace.clone().unwrap_or_default();
    let name = o.metadata.name.clone()?;
    let rv = o.metadata.resource_version.clone().unwrap_or_default();
    let mut v = serde_json::to_value(&o).ok()?;
    v["apiVersion"] = Value::String(ar.api_version.clone());
    v["kind"] = Value::String(ar.kind.clone());
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    let json = serde_json::to_vec(&v).ok()?;
    Some((
        format!("{ns}/{name}"),
        Entry {
            namespace: ns,
            name,
            resource_version: rv,
            json: Arc::new(json),
        },
    ))
}

/// Per watcher (kind, namespace) state.
#[derive(Default, Clone)]
struct One {
    listed: bool,
    unavailable: Option<String>,
    buffer: Option<BTreeMap<String, Entry>>,
}

/// Watch the config kinds `wanted` in `grant` (`None`: all namespaces) into
/// `shared`'s inventory until aborted.
pub(super) async fn watch_config(
    client: kube::Client,
    wanted: Vec<WireKind>,
    grant: Option<Vec<String>>,
    shared: Arc<Shared>,
) {
    let kinds: Vec<_> = kinds()
        .into_iter()
        .filter(|(w, ..)| wanted.contains(w))
        .collect();
    let scopes: Vec<Option<String>> = match &grant {
        None => vec![None],
        Some(ns) => ns.iter().cloned().map(Some).collect(),
    };
    let mut all = SelectAll::new();
    for (ki, (_, group, kind, plural)) in kinds.iter().enumerate() {
        let gvk = GroupVersionKind::gvk(group, config_kind_version(group, kind), kind);
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        for (si, scope) in scopes.iter().enumerate() {
            let api: Api<DynamicObject> = match scope {
                None => Api::all_with(client.clone(), &ar),
                Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            };
            let ar2 = ar.clone();
            all.push(
                relisting_watcher(api, watcher::Config::default())
                    .map(move |r| (ki, si, ar2.clone(), r))
                    .boxed(),
            );
        }
    }
    let mut state = vec![vec![One::default(); scopes.len()]; kinds.len()];
    while let Some((ki, si, ar, ev)) = all.next().await {
        let kind = kinds[ki].0;
        let scope = scopes[si].clone();
        let in_scope = move |key: &str| match &scope {
            None => true,
            Some(ns) => key.split_once('/').is_some_and(|(n, _)| n == ns),
        };
        let one = &mut state[ki][si];
        let mut inv = shared.lock();
        match ev {
            Err(e) => match unavailable(&e) {
                Some(reason) => {
                    if one.unavailable.as_ref() != Some(&reason) {
                        info!(kind = %ar.kind, api_version = %ar.api_version, namespace = ?scopes[si], %reason, "config kind unavailable");
                    }
                    // Nothing of it can be read: empty, and listed as such.
                    one.unavailable = Some(reason);
                    one.buffer = None;
                    if !one.listed {
                        one.listed = true;
                        inv.replace_entries(kind, in_scope, BTreeMap::new());
                    }
                }
                None => {
                    debug!(kind = %ar.kind, api_version = %ar.api_version, error = %e, "config watch failed; retrying");
                    continue;
                }
            },
            Ok(watcher::Event::Init) => {
                one.buffer = Some(BTreeMap::new());
                continue;
            }
            Ok(watcher::Event::InitApply(o)) => {
                if let Some((k, e)) = entry(o, &ar) {
                    one.buffer.get_or_insert_with(BTreeMap::new).insert(k, e);
                }
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                let listed = one.buffer.take().unwrap_or_default();
                one.listed = true;
                one.unavailable = None;
                inv.replace_entries(kind, in_scope, listed);
            }
            Ok(watcher::Event::Apply(o)) => {
                if let Some((k, e)) = entry(o, &ar) {
                    inv.put(kind, k, e);
                }
            }
            Ok(watcher::Event::Delete(o)) => {
                let key = format!(
                    "{}/{}",
                    o.metadata.namespace.as_deref().unwrap_or(""),
                    o.metadata.name.as_deref().unwrap_or("")
                );
                inv.take(kind, &key);
            }
        }
        // The kind's state over its namespaces.
        let states = &state[ki];
        if states.iter().all(|o| o.listed) {
            inv.listed.insert(kind);
        }
        let reason: Vec<String> = states
            .iter()
            .zip(&scopes)
            .filter_map(|(o, s)| {
                o.unavailable.as_ref().map(|r| match s {
                    Some(ns) => format!("namespace {ns}: {r}"),
                    None => r.clone(),
                })
            })
            .collect();
        let now = (!reason.is_empty()).then(|| reason.join("; "));
        if inv.unavailable.get(&kind) != now.as_ref() {
            match now {
                Some(r) => {
                    warn!(kind = %ar.kind, api_version = %ar.api_version, reason = %r, "config kind unavailable to the agent");
                    inv.unavailable.insert(kind, r);
                }
                None => {
                    inv.unavailable.remove(&kind);
                }
            }
            inv.status_dirty.insert(kind);
        }
        drop(inv);
        shared.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_the_kube_source_watches_has_a_wire_kind() {
        let ours: Vec<(&str, &str, &str)> = KINDS.iter().map(|(_, g, k, p)| (*g, *k, *p)).collect();
        let kube: Vec<(&str, &str, &str)> = crate::sources::kube::ISTIO_KINDS
            .iter()
            .chain(crate::sources::kube::GATEWAY_API_KINDS)
            .copied()
            .collect();
        assert_eq!(ours, kube);
        // Istio's Gateway and the Gateway API's are two wire kinds.
        assert_eq!(
            group_kind(WireKind::K8sGateway),
            Some(("gateway.networking.k8s.io", "Gateway"))
        );
        assert_eq!(
            group_kind(WireKind::Gateway),
            Some(("networking.istio.io", "Gateway"))
        );
        assert_eq!(
            group_kind(WireKind::ServiceEntry),
            Some(("networking.istio.io", "ServiceEntry"))
        );
        assert_eq!(group_kind(WireKind::Pod), None);
    }
}
