//! The TLS Secret store: Kubernetes Secrets from the member clusters (kube
//! watchers, manifest directories), parsed and checked on arrival
//! (`model::credential::parse_secret`) and kept by (cluster, namespace, name).
//! Every change that alters what is served publishes a new frozen
//! `Credentials` for the next push; a Secret that fails its checks is kept as
//! rejected, with the reason, for `/debug/configz`. Key bytes never leave the
//! store except inside the SDS resources translation builds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::warn;

use crate::model::credential::{parse_secret, Credentials, SecretKey, SecretState};

/// Secret types that never hold serving certificates: not kept (Istio's
/// credentials controller skips the same).
const SKIPPED_TYPES: [&str; 2] = ["kubernetes.io/service-account-token", "helm.sh/release.v1"];

/// One Secret as a source read it (`data` base64-decoded).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RawSecret {
    pub namespace: String,
    pub name: String,
    /// `type` (`kubernetes.io/tls`, `Opaque`, ...).
    pub r#type: String,
    pub data: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for RawSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawSecret")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("type", &self.r#type)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RawSecret {
    /// From a Kubernetes Secret object (`data` is already bytes in k8s-openapi;
    /// `stringData` is write-only in the API and read here for manifests).
    pub fn from_k8s(s: &k8s_openapi::api::core::v1::Secret) -> RawSecret {
        let mut data: BTreeMap<String, Vec<u8>> = s
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        for (k, v) in s.string_data.iter().flatten() {
            data.insert(k.clone(), v.as_bytes().to_vec());
        }
        RawSecret {
            namespace: s
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: s.metadata.name.clone().unwrap_or_default(),
            r#type: s.type_.clone().unwrap_or_else(|| "Opaque".into()),
            data,
        }
    }
}

/// What the store holds for one Secret; `None` for a Secret that is no TLS
/// Secret (dropped).
fn state_of(cluster: &str, raw: &RawSecret) -> Option<SecretState> {
    if SKIPPED_TYPES.contains(&raw.r#type.as_str()) {
        return None;
    }
    let parsed = parse_secret(&raw.data);
    if parsed.is_none() && raw.r#type == "kubernetes.io/tls" {
        return Some(Err(
            "type kubernetes.io/tls without tls.crt and tls.key".into()
        ));
    }
    let state = parsed?.map(Arc::new);
    if let Err(reason) = &state {
        warn!(cluster, namespace = %raw.namespace, name = %raw.name, %reason, "TLS Secret rejected");
    }
    Some(state)
}

#[derive(Default)]
struct Inner {
    secrets: BTreeMap<SecretKey, SecretState>,
    snapshot: Arc<Credentials>,
}

impl Inner {
    /// Publish a new snapshot if anything changed; returns whether it did.
    fn publish(&mut self) -> bool {
        if self.snapshot.secrets == self.secrets {
            return false;
        }
        self.snapshot = Arc::new(Credentials {
            secrets: self.secrets.clone(),
        });
        true
    }

    fn set(&mut self, cluster: &str, raw: &RawSecret) {
        let key = SecretKey {
            cluster: cluster.to_string(),
            namespace: raw.namespace.clone(),
            name: raw.name.clone(),
        };
        match state_of(cluster, raw) {
            Some(s) => {
                if self.secrets.get(&key) != Some(&s) {
                    self.secrets.insert(key, s);
                }
            }
            None => {
                self.secrets.remove(&key);
            }
        }
    }
}

/// The store. One mutex: writes come from a few watcher tasks, reads are one
/// `Arc` clone per push.
#[derive(Default)]
pub struct SecretStore {
    inner: Mutex<Inner>,
}

impl SecretStore {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replace every Secret of `cluster` (a full list or a manifest rescan).
    /// Returns whether what is served changed.
    pub fn reset(&self, cluster: &str, secrets: &[RawSecret]) -> bool {
        let mut inner = self.lock();
        inner.secrets.retain(|k, _| k.cluster != cluster);
        for s in secrets {
            inner.set(cluster, s);
        }
        inner.publish()
    }

    /// Added or modified.
    pub fn upsert(&self, cluster: &str, secret: &RawSecret) -> bool {
        let mut inner = self.lock();
        inner.set(cluster, secret);
        inner.publish()
    }

    pub fn delete(&self, cluster: &str, namespace: &str, name: &str) -> bool {
        let mut inner = self.lock();
        inner.secrets.remove(&SecretKey {
            cluster: cluster.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        });
        inner.publish()
    }

    /// Forget a cluster that left the mesh.
    pub fn remove_cluster(&self, cluster: &str) -> bool {
        self.reset(cluster, &[])
    }

    /// The Secrets in force, for a push.
    pub fn snapshot(&self) -> Arc<Credentials> {
        self.lock().snapshot.clone()
    }
}

/// Rejected Secrets for `/debug/configz` (origin `cluster NAME`, kind
/// `Secret`). The reason never holds key bytes (`parse_secret` says which key
/// failed and why, nothing more).
pub fn rejections(c: &Credentials) -> Vec<crate::model::istio::Rejection> {
    c.secrets
        .iter()
        .filter_map(|(k, s)| {
            s.as_ref()
                .err()
                .map(|reason| crate::model::istio::Rejection {
                    origin: format!("cluster {}", k.cluster),
                    kind: "Secret".into(),
                    namespace: k.namespace.clone(),
                    name: k.name.clone(),
                    field: String::new(),
                    reason: reason.clone(),
                })
        })
        .collect()
}

/// Whether some cluster serves Secret `name` in `namespace` (any namespace
/// when `None`) with what `usable` asks.
fn served(
    c: &Credentials,
    namespace: Option<&str>,
    name: &str,
    usable: impl Fn(&crate::model::credential::TlsCredential) -> bool,
) -> bool {
    c.secrets.iter().any(|(k, s)| {
        k.name == name
            && namespace.is_none_or(|n| n == k.namespace)
            && s.as_ref().is_ok_and(|t| usable(t))
    })
}

/// `credentialName`s no cluster can serve, as warnings on `/debug/configz`: a
/// Gateway server whose Secret (and, for MUTUAL, CA) is in no cluster's copy
/// of the Gateway's namespace is left out of every gateway proxy of that
/// namespace; a DestinationRule whose Secret exists in no namespace leaves its
/// clusters out of every proxy. The exact omission is per proxy (its cluster
/// and namespace, `translate::credentials`).
pub fn unresolved(
    c: &Credentials,
    config: &crate::model::istio::ConfigSnapshot,
) -> Vec<super::config::Warning> {
    use crate::model::credential::CA_SUFFIX;
    let mut out = Vec::new();
    for gw in &config.gateways {
        let ns = gw.meta.namespace.as_str();
        for (i, server) in gw.spec.servers.iter().enumerate() {
            let Some(tls) = &server.tls else { continue };
            let Some(name) = tls.credential_name.as_deref() else {
                continue;
            };
            let mode = tls.mode.as_deref().unwrap_or("").to_ascii_uppercase();
            let mut missing = Vec::new();
            if !served(c, Some(ns), name, |t| t.key_pair.is_some()) {
                missing.push(format!("Secret {ns}/{name} with a certificate and key"));
            }
            if matches!(mode.as_str(), "MUTUAL" | "OPTIONAL_MUTUAL")
                && !served(c, Some(ns), &format!("{name}{CA_SUFFIX}"), |t| {
                    t.ca.is_some()
                })
                && !served(c, Some(ns), name, |t| t.ca.is_some())
            {
                missing.push(format!(
                    "a CA (ca.crt or cacert) in Secret {ns}/{name}{CA_SUFFIX} or {ns}/{name}"
                ));
            }
            if !missing.is_empty() {
                out.push(super::config::Warning {
                    origin: gw.meta.origin.clone(),
                    kind: "Gateway".into(),
                    namespace: ns.to_string(),
                    name: gw.meta.name.clone(),
                    field: format!("spec.servers[{i}].tls.credentialName"),
                    message: format!(
                        "no cluster holds {} (valid); this server is left out of the gateways that lack it",
                        missing.join(" nor ")
                    ),
                });
            }
        }
    }
    for dr in &config.destination_rules {
        let mut names: Vec<(String, String)> = Vec::new();
        let mut policy = |f: String, p: &crate::model::istio::destination_rule::TrafficPolicy| {
            if let Some(n) = p.tls.as_ref().and_then(|t| t.credential_name.as_deref()) {
                names.push((format!("{f}.tls.credentialName"), n.to_string()));
            }
            for (j, pl) in p.port_level_settings.iter().enumerate() {
                if let Some(n) = pl.tls.as_ref().and_then(|t| t.credential_name.as_deref()) {
                    names.push((
                        format!("{f}.portLevelSettings[{j}].tls.credentialName"),
                        n.to_string(),
                    ));
                }
            }
        };
        if let Some(p) = &dr.spec.traffic_policy {
            policy("spec.trafficPolicy".into(), p);
        }
        for (i, sub) in dr.spec.subsets.iter().enumerate() {
            if let Some(p) = &sub.traffic_policy {
                policy(format!("spec.subsets[{i}].trafficPolicy"), p);
            }
        }
        for (field, name) in names {
            if !served(c, None, &name, |_| true) {
                out.push(super::config::Warning {
                    origin: dr.meta.origin.clone(),
                    kind: "DestinationRule".into(),
                    namespace: dr.meta.namespace.clone(),
                    name: dr.meta.name.clone(),
                    field,
                    message: format!(
                        "no cluster holds a valid Secret {name} in any namespace; the clusters \
                         using it are left out (a proxy reads it from its own namespace)"
                    ),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(name: &str, data: &[(&str, String)]) -> RawSecret {
        RawSecret {
            namespace: "ns".into(),
            name: name.into(),
            r#type: "kubernetes.io/tls".into(),
            data: data
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn changes_publish_and_equal_content_does_not() {
        let k = rcgen::generate_simple_self_signed(vec!["a.example.com".into()]).unwrap();
        let good = raw(
            "gw",
            &[
                ("tls.crt", k.cert.pem()),
                ("tls.key", k.signing_key.serialize_pem()),
            ],
        );
        let store = SecretStore::default();
        assert!(store.upsert("c1", &good));
        assert!(!store.upsert("c1", &good), "same content: no new snapshot");
        assert!(store.snapshot().key_pair("c1", "ns", "gw").is_ok());
        let bad = raw("gw", &[("tls.crt", "x".into()), ("tls.key", "y".into())]);
        assert!(store.upsert("c1", &bad));
        let e = store.snapshot().key_pair("c1", "ns", "gw").unwrap_err();
        assert!(e.contains("rejected") && e.contains("tls.crt"), "{e}");
        assert!(store.reset("c1", &[]));
        assert!(store.snapshot().secrets.is_empty());
        let empty_tls = raw("e", &[]);
        assert!(
            store.upsert("c1", &empty_tls),
            "a TLS Secret without keys is rejected"
        );
        let opaque = RawSecret {
            r#type: "Opaque".into(),
            ..raw("o", &[("password", "p".into())])
        };
        assert!(!store.upsert("c1", &opaque), "not a TLS Secret: not kept");
    }
}
