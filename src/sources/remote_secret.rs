//! Runtime registration of member clusters, as Istio's remote secrets work.
//!
//! crossmesh watches Secrets in one namespace of the config cluster (mesh file
//! `remoteSecretNamespace`, default [`DEFAULT_NAMESPACE`]). A Secret labelled `crossmesh.io/multi-cluster=true` or
//! `istio/multiCluster=true` carries one data key per member cluster: the key is the
//! cluster name, the value a kubeconfig. Each change of that set is reconciled:
//!
//! - a new key registers the cluster (`Registry::add_cluster`) and starts its
//!   watchers ([`super::kube::ClusterWatch`]);
//! - a removed key, or a removed Secret, stops the watchers (their memory is freed)
//!   and removes the cluster, whose endpoints leave every proxy;
//! - a changed kubeconfig starts a new client beside the old one; the old one stops
//!   only once the new one has synced, so endpoints never drop;
//! - a cluster name already taken (by the mesh file, or by another Secret that
//!   registered it first) is not applied. It is reported once in the log, by
//!   [`RemoteSecrets::conflicts`], and on `/debug/clusterz` as a `rejected` entry
//!   of the cluster that holds the name (`Registry::set_refused_claims`), naming
//!   the Secret, the key and why; that cluster is otherwise untouched.
//!
//! [`create_remote_secret`] prints such a Secret for a cluster, with the token of a
//! dedicated read-only ServiceAccount (RBAC in `deploy/rbac.yaml`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::config::Kubeconfig;
use kube::runtime::watcher;
use kube::Client;
use tokio::task::JoinHandle;
use tracing::{debug, info, info_span, warn, Instrument};

use super::kube::{client_from_kubeconfig, explain, ClusterWatch, KubeOptions};
use crate::config::{ClusterConfig, ClusterSource};
use crate::registry::{ObjectProblem, Registry};
use crate::security::authn::KubeClients;

/// Where crossmesh looks for remote secrets unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = crate::config::DEFAULT_REMOTE_SECRET_NAMESPACE;
/// Labels that mark a remote secret (either one, value `true`).
pub const SECRET_LABELS: [&str; 2] = ["crossmesh.io/multi-cluster", "istio/multiCluster"];
/// Optional Secret label naming the network of its clusters (Istio's label).
pub const NETWORK_LABEL: &str = "topology.istio.io/network";
/// The ServiceAccount whose token a remote secret carries (`deploy/rbac.yaml`).
pub const READER_SERVICE_ACCOUNT: &str = "crossmesh-reader";
/// The long-lived token Secret of that ServiceAccount.
pub const READER_TOKEN_SECRET: &str = "crossmesh-reader-token";

#[derive(Debug, thiserror::Error)]
pub enum RemoteSecretError {
    #[error("invalid cluster name {0:?}: use letters, digits, '-', '_' or '.' (it becomes a Secret data key)")]
    InvalidName(String),
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
    #[error("{0}")]
    Client(#[from] super::kube::KubeSourceError),
    #[error("cluster API: {what}: {reason}")]
    Api { what: String, reason: String },
    #[error("ServiceAccount {namespace}/{name}: no token after {waited:?}; is the token controller running?")]
    NoToken {
        namespace: String,
        name: String,
        waited: Duration,
    },
}

/// A Secret's claim that was not applied.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Conflict {
    /// `namespace/name` of the Secret.
    pub secret: String,
    /// The data key: the cluster name claimed.
    pub cluster: String,
    pub reason: String,
}

impl Conflict {
    /// The entry under the cluster holding the name on `/debug/clusterz`.
    pub fn problem(&self) -> ObjectProblem {
        ObjectProblem {
            origin: "remote secret".to_string(),
            kind: "Secret".to_string(),
            object: self.secret.clone(),
            reason: format!("key {} not applied: {}", self.cluster, self.reason),
        }
    }
}

/// One remote secret as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SecretEntry {
    network: String,
    /// Cluster name -> kubeconfig text (or why it cannot be read).
    clusters: BTreeMap<String, Result<String, String>>,
}

struct Running {
    secret: String,
    kubeconfig: String,
    watch: Option<ClusterWatch>,
}

/// The running remote-secret controller. Dropping it (or `shutdown`) stops the
/// Secret watch and every cluster it registered, and removes those clusters.
pub struct RemoteSecrets {
    task: JoinHandle<()>,
    conflicts: Arc<Mutex<Vec<Conflict>>>,
}

impl RemoteSecrets {
    /// Claims not applied, with the reason.
    pub fn conflicts(&self) -> Vec<Conflict> {
        self.conflicts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stop watching Secrets and stop every cluster registered through them.
    pub fn shutdown(self) {
        self.task.abort();
    }
}

impl Drop for RemoteSecrets {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watch remote secrets in `namespace` of the config cluster reached by `client`.
/// Must be called within a tokio runtime.
pub fn spawn(
    registry: Arc<Registry>,
    client: Client,
    namespace: &str,
    opts: KubeOptions,
    clients: KubeClients,
) -> RemoteSecrets {
    let conflicts = Arc::new(Mutex::new(Vec::new()));
    let ctl = Controller {
        registry,
        clients,
        namespace: namespace.to_string(),
        opts,
        secrets: BTreeMap::new(),
        running: BTreeMap::new(),
        conflicts: conflicts.clone(),
        reported: BTreeSet::new(),
        refused_on: BTreeSet::new(),
    };
    let span = info_span!("remote-secrets", namespace = %namespace);
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let task = tokio::spawn(ctl.run(api).instrument(span));
    RemoteSecrets { task, conflicts }
}

fn entry_of(s: &Secret) -> Option<(String, SecretEntry)> {
    let labels = s.metadata.labels.as_ref()?;
    if !SECRET_LABELS
        .iter()
        .any(|l| labels.get(*l).map(String::as_str) == Some("true"))
    {
        return None;
    }
    let name = s.metadata.name.clone()?;
    let clusters = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| {
            let text = String::from_utf8(v.0.clone())
                .map_err(|_| "the kubeconfig is not UTF-8 text".to_string());
            (k.clone(), text)
        })
        .collect();
    Some((
        name,
        SecretEntry {
            network: labels.get(NETWORK_LABEL).cloned().unwrap_or_default(),
            clusters,
        },
    ))
}

struct Controller {
    registry: Arc<Registry>,
    /// The clients TokenReview uses: a registered cluster's proxies authenticate
    /// against its own API server.
    clients: KubeClients,
    namespace: String,
    opts: KubeOptions,
    secrets: BTreeMap<String, SecretEntry>,
    running: BTreeMap<String, Running>,
    conflicts: Arc<Mutex<Vec<Conflict>>>,
    /// Conflicts already logged (log each once).
    reported: BTreeSet<Conflict>,
    /// Clusters whose refused claims this controller last set in the registry.
    refused_on: BTreeSet<String>,
}

impl Drop for Controller {
    /// Runs when the controller task ends or is aborted: the clusters it
    /// registered leave the registry, their watchers stop with their handles.
    fn drop(&mut self) {
        for cluster in std::mem::take(&mut self.running).into_keys() {
            self.clients.remove(&cluster);
            let _ = self.registry.remove_cluster(&cluster);
        }
        // Claims refused on clusters that stay (the mesh file's) lapse with it.
        for cluster in std::mem::take(&mut self.refused_on) {
            let _ = self.registry.set_refused_claims(&cluster, Vec::new());
        }
    }
}

impl Controller {
    async fn run(mut self, api: Api<Secret>) {
        let mut s = super::kube::relisting_watcher(api, watcher::Config::default());
        let mut buffer: Option<BTreeMap<String, SecretEntry>> = None;
        while let Some(ev) = s.next().await {
            match ev {
                Err(e) => {
                    warn!(error = %e, "remote secret watch failed; retrying with backoff");
                    continue;
                }
                Ok(watcher::Event::Init) => buffer = Some(BTreeMap::new()),
                Ok(watcher::Event::InitApply(sec)) => {
                    if let Some((n, e)) = entry_of(&sec) {
                        buffer.get_or_insert_with(BTreeMap::new).insert(n, e);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    self.secrets = buffer.take().unwrap_or_default();
                    self.reconcile().await;
                }
                Ok(watcher::Event::Apply(sec)) => {
                    let name = sec.metadata.name.clone().unwrap_or_default();
                    match entry_of(&sec) {
                        Some((n, e)) => {
                            if self.secrets.get(&n) == Some(&e) {
                                continue;
                            }
                            self.secrets.insert(n, e);
                        }
                        // Label removed: no longer a remote secret.
                        None => {
                            if self.secrets.remove(&name).is_none() {
                                continue;
                            }
                        }
                    }
                    self.reconcile().await;
                }
                Ok(watcher::Event::Delete(sec)) => {
                    let name = sec.metadata.name.clone().unwrap_or_default();
                    if self.secrets.remove(&name).is_some() {
                        self.reconcile().await;
                    }
                }
            }
        }
    }

    fn secret_id(&self, name: &str) -> String {
        format!("{}/{name}", self.namespace)
    }

    async fn reconcile(&mut self) {
        let static_names: BTreeSet<&str> = self
            .registry
            .mesh_config()
            .clusters
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        // Who gets each cluster name: the current owner while it still claims it,
        // then Secrets in name order.
        let mut desired: BTreeMap<String, (String, String, Result<String, String>)> =
            BTreeMap::new();
        for (cluster, r) in &self.running {
            if let Some(e) = self.secrets.get(&r.secret) {
                if let Some(k) = e.clusters.get(cluster) {
                    desired.insert(
                        cluster.clone(),
                        (r.secret.clone(), e.network.clone(), k.clone()),
                    );
                }
            }
        }
        let mut conflicts = Vec::new();
        for (secret, e) in &self.secrets {
            for (cluster, k) in &e.clusters {
                let reason = if static_names.contains(cluster.as_str()) {
                    Some("the cluster name is already taken by the mesh file".to_string())
                } else {
                    match desired.get(cluster) {
                        Some((owner, _, _)) if owner != secret => Some(format!(
                            "the cluster name is already taken by Secret {}",
                            self.secret_id(owner)
                        )),
                        Some(_) => None,
                        None => {
                            desired.insert(
                                cluster.clone(),
                                (secret.clone(), e.network.clone(), k.clone()),
                            );
                            None
                        }
                    }
                };
                if let Some(reason) = reason {
                    conflicts.push(Conflict {
                        secret: self.secret_id(secret),
                        cluster: cluster.clone(),
                        reason,
                    });
                }
            }
        }
        for c in &conflicts {
            if self.reported.insert(c.clone()) {
                warn!(secret = %c.secret, cluster = %c.cluster, reason = %c.reason, "remote secret not applied");
                crate::metrics::metrics()
                    .rejected_objects
                    .get_or_create(&crate::metrics::ClusterLabel {
                        cluster: c.cluster.clone(),
                    })
                    .inc();
            }
        }
        self.reported.retain(|c| conflicts.contains(c));
        *self.conflicts.lock().unwrap_or_else(|e| e.into_inner()) = conflicts.clone();

        // Removed clusters (or moved to another Secret: removed, then added below).
        let gone: Vec<String> = self
            .running
            .iter()
            .filter(|(c, r)| desired.get(*c).is_none_or(|(s, _, _)| *s != r.secret))
            .map(|(c, _)| c.clone())
            .collect();
        for cluster in gone {
            if let Some(r) = self.running.remove(&cluster) {
                self.clients.remove(&cluster);
                if let Some(w) = r.watch {
                    w.stop().await;
                }
                match self.registry.remove_cluster(&cluster) {
                    Ok(()) => info!(%cluster, secret = %r.secret, "cluster removed"),
                    Err(e) => warn!(%cluster, error = %e, "removing cluster"),
                }
            }
        }
        for (cluster, (secret, network, kubeconfig)) in desired {
            let origin = format!("Secret {} key {cluster}", self.secret_id(&secret));
            let text = match &kubeconfig {
                Ok(t) => t.clone(),
                Err(reason) => format!("\0invalid: {reason}"),
            };
            if let Some(r) = self.running.get(&cluster) {
                if r.kubeconfig == text {
                    continue;
                }
            } else {
                let cfg = ClusterConfig {
                    name: cluster.clone(),
                    network,
                    source: ClusterSource::Kubeconfig {
                        path: PathBuf::from(format!("secret/{}", self.secret_id(&secret))),
                        context: None,
                    },
                    locality: None,
                };
                if let Err(e) = self.registry.add_cluster(&cfg) {
                    warn!(%cluster, error = %e, "cannot register cluster");
                    continue;
                }
                info!(%cluster, secret = %secret, "cluster registered");
                self.running.insert(
                    cluster.clone(),
                    Running {
                        secret: secret.clone(),
                        kubeconfig: String::new(),
                        watch: None,
                    },
                );
            }
            let client = match &kubeconfig {
                Err(reason) => Err(format!("{origin}: {reason}")),
                Ok(t) => client_from_kubeconfig(t, None, &origin)
                    .await
                    .map_err(|e| e.to_string()),
            };
            let Some(r) = self.running.get_mut(&cluster) else {
                continue;
            };
            r.kubeconfig = text;
            match client {
                Err(reason) => {
                    // A bad new kubeconfig keeps the old client (if any) running.
                    warn!(%cluster, %reason, "kubeconfig rejected");
                    let _ = self.registry.set_error(&cluster, Some(reason));
                }
                Ok((client, health)) => {
                    self.clients.insert(&cluster, client.clone());
                    let old = r.watch.take();
                    r.watch = Some(ClusterWatch::spawn(
                        self.registry.clone(),
                        &cluster,
                        client,
                        health,
                        self.opts.clone(),
                        old,
                    ));
                }
            }
        }
        self.publish_refused(&conflicts);
    }

    /// Show each refused claim under the cluster holding the name, and clear the
    /// clusters that no longer have any. Runs after clusters were added and
    /// removed, so a cluster re-registered just now gets its list too.
    fn publish_refused(&mut self, conflicts: &[Conflict]) {
        let mut by_cluster: BTreeMap<String, Vec<ObjectProblem>> = self
            .refused_on
            .iter()
            .map(|c| (c.clone(), Vec::new()))
            .collect();
        for c in conflicts {
            by_cluster
                .entry(c.cluster.clone())
                .or_default()
                .push(c.problem());
        }
        self.refused_on.clear();
        for (cluster, problems) in by_cluster {
            let any = !problems.is_empty();
            match self.registry.set_refused_claims(&cluster, problems) {
                Ok(()) if any => {
                    self.refused_on.insert(cluster);
                }
                Ok(()) => {}
                // The holder is not registered (its own registration failed,
                // logged above): the conflict is in the log only.
                Err(e) => debug!(%cluster, error = %e, "refused claims not shown"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// create-remote-secret

fn valid_key(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

fn b64(bytes: &[u8]) -> String {
    // k8s-openapi's ByteString serializes as standard base64.
    match serde_json::to_value(ByteString(bytes.to_vec())) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Print (as YAML) a remote secret for the cluster reached by `kubeconfig_path`
/// (and `context`), registering it as `name`: ensures the ServiceAccount
/// [`READER_SERVICE_ACCOUNT`] and its token Secret exist in [`DEFAULT_NAMESPACE`]
/// of that cluster (the ClusterRole and binding come from `deploy/rbac.yaml`), waits
/// for the token, and embeds it with the cluster's server and CA in a kubeconfig.
pub async fn create_remote_secret(
    name: &str,
    kubeconfig_path: &Path,
    context: Option<&str>,
) -> Result<String, RemoteSecretError> {
    if !valid_key(name) {
        return Err(RemoteSecretError::InvalidName(name.to_string()));
    }
    let bad = |reason: String| RemoteSecretError::Kubeconfig {
        path: kubeconfig_path.to_owned(),
        reason,
    };
    let text =
        std::fs::read_to_string(kubeconfig_path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let kc =
        Kubeconfig::from_yaml(&text).map_err(|e| bad(format!("not a valid kubeconfig: {e}")))?;
    let ctx_name = context
        .map(str::to_string)
        .or_else(|| kc.current_context.clone())
        .ok_or_else(|| bad("no context given and no current-context".into()))?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| bad(format!("context {ctx_name:?} is not defined")))?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| bad(format!("cluster {:?} is not defined", ctx.cluster)))?;
    let server = cluster
        .server
        .clone()
        .ok_or_else(|| bad(format!("cluster {:?} has no server", ctx.cluster)))?;
    let mut ca_data = cluster.certificate_authority_data.clone();
    if ca_data.is_none() {
        if let Some(f) = &cluster.certificate_authority {
            let base = kubeconfig_path.parent().unwrap_or(Path::new("."));
            let pem = std::fs::read(base.join(f))
                .map_err(|e| bad(format!("certificate-authority {f}: {e}")))?;
            ca_data = Some(b64(&pem));
        }
    }

    let (client, _) = client_from_kubeconfig(
        &text,
        Some(&ctx_name),
        &kubeconfig_path.display().to_string(),
    )
    .await?;
    let api_err = |what: &str, e: kube::Error| {
        let mut reason = explain(&e);
        if matches!(&e, kube::Error::Api(st) if st.code == 404 && st.message.contains("namespaces"))
        {
            reason.push_str(&format!(
                " (create the namespace {DEFAULT_NAMESPACE} in the member cluster first: \
                 kubectl apply -f deploy/rbac.yaml)"
            ));
        }
        RemoteSecretError::Api {
            what: what.to_string(),
            reason,
        }
    };
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), DEFAULT_NAMESPACE);
    if sas
        .get_opt(READER_SERVICE_ACCOUNT)
        .await
        .map_err(|e| api_err("get ServiceAccount", e))?
        .is_none()
    {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(READER_SERVICE_ACCOUNT.into()),
                namespace: Some(DEFAULT_NAMESPACE.into()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        sas.create(&PostParams::default(), &sa)
            .await
            .map_err(|e| api_err("create ServiceAccount", e))?;
    }
    let secrets: Api<Secret> = Api::namespaced(client, DEFAULT_NAMESPACE);
    if secrets
        .get_opt(READER_TOKEN_SECRET)
        .await
        .map_err(|e| api_err("get token Secret", e))?
        .is_none()
    {
        let s = Secret {
            metadata: ObjectMeta {
                name: Some(READER_TOKEN_SECRET.into()),
                namespace: Some(DEFAULT_NAMESPACE.into()),
                annotations: Some(
                    [(
                        "kubernetes.io/service-account.name".to_string(),
                        READER_SERVICE_ACCOUNT.to_string(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/service-account-token".into()),
            ..Secret::default()
        };
        secrets
            .create(&PostParams::default(), &s)
            .await
            .map_err(|e| api_err("create token Secret", e))?;
    }
    // The token controller fills the token in asynchronously.
    let waited = Duration::from_secs(30);
    let deadline = tokio::time::Instant::now() + waited;
    let (token, ca_crt) = loop {
        let s = secrets
            .get(READER_TOKEN_SECRET)
            .await
            .map_err(|e| api_err("get token Secret", e))?;
        let data = s.data.unwrap_or_default();
        if let Some(t) = data.get("token").filter(|t| !t.0.is_empty()) {
            let token = String::from_utf8(t.0.clone()).map_err(|_| RemoteSecretError::Api {
                what: "token Secret".into(),
                reason: "the token is not UTF-8".into(),
            })?;
            break (token, data.get("ca.crt").map(|c| c.0.clone()));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(RemoteSecretError::NoToken {
                namespace: DEFAULT_NAMESPACE.into(),
                name: READER_SERVICE_ACCOUNT.into(),
                waited,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if ca_data.is_none() {
        ca_data = ca_crt.map(|c| b64(&c));
    }

    let mut out_cluster = format!("    server: {}\n", yaml_str(&server));
    if let Some(ca) = &ca_data {
        out_cluster.push_str(&format!("    certificate-authority-data: {ca}\n"));
    }
    if let Some(n) = &cluster.tls_server_name {
        out_cluster.push_str(&format!("    tls-server-name: {}\n", yaml_str(n)));
    }
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: {n}\nclusters:\n- name: {n}\n  cluster:\n{out_cluster}\
         contexts:\n- name: {n}\n  context:\n    cluster: {n}\n    user: {n}\nusers:\n- name: {n}\n  user:\n    token: {t}\n",
        n = yaml_str(name),
        t = yaml_str(&token),
    );
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(format!(
                "crossmesh-remote-secret-{}",
                name.to_ascii_lowercase().replace('_', "-")
            )),
            namespace: Some(DEFAULT_NAMESPACE.into()),
            labels: Some([(SECRET_LABELS[0].to_string(), "true".to_string())].into()),
            annotations: Some([("crossmesh.io/cluster".to_string(), name.to_string())].into()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some([(name.to_string(), ByteString(kubeconfig.into_bytes()))].into()),
        ..Secret::default()
    };
    serde_saphyr::to_string(&secret).map_err(|e| RemoteSecretError::Api {
        what: "render Secret".into(),
        reason: e.to_string(),
    })
}

/// A YAML scalar, double-quoted (JSON strings are valid YAML).
fn yaml_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_entries_need_a_label_and_read_every_key() {
        let mk = |labels: serde_json::Value| -> Secret {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "s", "namespace": "ns", "labels": labels},
                "data": {"c2": b64(b"kubeconfig-2"), "c3": b64(&[0xff, 0xfe])}
            }))
            .unwrap()
        };
        assert!(entry_of(&mk(serde_json::json!({"other": "true"}))).is_none());
        assert!(entry_of(&mk(serde_json::json!({"istio/multiCluster": "false"}))).is_none());
        let (n, e) = entry_of(&mk(serde_json::json!({
            "istio/multiCluster": "true", "topology.istio.io/network": "net-b"
        })))
        .unwrap();
        assert_eq!(n, "s");
        assert_eq!(e.network, "net-b");
        assert_eq!(e.clusters["c2"].as_deref(), Ok("kubeconfig-2"));
        assert!(e.clusters["c3"].is_err());
        assert!(entry_of(&mk(
            serde_json::json!({"crossmesh.io/multi-cluster": "true"})
        ))
        .is_some());
    }

    #[test]
    fn names_must_be_data_keys() {
        assert!(valid_key("cluster-1.east_a"));
        assert!(!valid_key(""));
        assert!(!valid_key("a/b"));
        assert!(!valid_key("a b"));
    }
}
