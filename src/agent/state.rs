//! Where `crossmesh agent` keeps its identity between runs: the client
//! certificate chain, its private key and the mesh's trust bundle, so that a
//! restarted agent needs no enrolment token (DESIGN.md §5: `--state-dir`, and
//! in a cluster by default a Secret in the agent's own namespace).
//!
//! - `--state-dir DIR`: files `cert-chain.pem`, `key.pem` (mode 0600) and
//!   `trust-bundle.pem`, each written to a temporary file and renamed.
//! - Otherwise: the Opaque Secret [`STATE_SECRET`] in the agent's namespace
//!   (`--namespace`, else `POD_NAMESPACE`, else the namespace of its
//!   credentials: the service account's `namespace` file in a Pod), with the
//!   same three keys. It is created at the first enrolment and replaced (PUT
//!   with its resourceVersion) at each renewal. The agent reads that one Secret by name and nothing else:
//!   its RBAC needs `get` and `update` on it (`resourceNames`) and `create` on
//!   Secrets in its namespace (Kubernetes cannot limit `create` by name); never
//!   `list` or `watch`. Two agents racing on the first create: the loser (409
//!   AlreadyExists) replaces the winner's Secret with its own identity, and a
//!   conflicting update (409 Conflict) is retried on the current version.
//!
//! Nothing here logs the key or the Secret's data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::warn;
use zeroize::Zeroizing;

use super::{AgentError, CERT_FILE, KEY_FILE};

/// The Secret holding the agent's state when it runs without `--state-dir`.
pub const STATE_SECRET: &str = "crossmesh-agent-state";
/// The mesh's trust bundle as the hub last returned it (file and Secret key).
pub const BUNDLE_FILE: &str = "trust-bundle.pem";
/// The environment variable naming the agent's namespace (downward API,
/// `metadata.namespace`); without it, the namespace of its credentials.
pub const NAMESPACE_ENV: &str = "POD_NAMESPACE";
/// Attempts at a read-modify-write of the Secret that keeps meeting 409.
const CONFLICT_RETRIES: usize = 5;

/// The identity as kept: certificate chain, private key, trust bundle (PEM).
pub struct Stored {
    pub chain_pem: String,
    pub key_pem: Zeroizing<String>,
    pub bundle_pem: Option<String>,
}

/// A state directory or the state Secret (one per process: the size of the
/// `Api` variant does not matter).
#[allow(clippy::large_enum_variant)]
pub enum StateStore {
    Dir(PathBuf),
    Secret { api: Api<Secret>, namespace: String },
}

impl StateStore {
    /// `--state-dir`, or the Secret in the agent's namespace reached with
    /// `client`: `namespace` (the webhook's `--namespace`) if given, else
    /// `POD_NAMESPACE`, else the client's (in a Pod: the service account's).
    pub fn new(
        state_dir: Option<&Path>,
        namespace: Option<&str>,
        client: &kube::Client,
    ) -> StateStore {
        match state_dir {
            Some(d) => StateStore::Dir(d.to_owned()),
            None => {
                let namespace = namespace
                    .map(str::to_string)
                    .or_else(|| std::env::var(NAMESPACE_ENV).ok())
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| client.default_namespace().to_string());
                StateStore::Secret {
                    api: Api::namespaced(client.clone(), &namespace),
                    namespace,
                }
            }
        }
    }

    /// Where the state lives, for messages.
    pub fn describe(&self) -> String {
        match self {
            StateStore::Dir(d) => format!("state directory {}", d.display()),
            StateStore::Secret { namespace, .. } => format!("Secret {namespace}/{STATE_SECRET}"),
        }
    }

    /// The kept identity, if there is a complete one.
    pub async fn load(&self) -> Result<Option<Stored>, AgentError> {
        match self {
            StateStore::Dir(d) => {
                let chain = std::fs::read_to_string(d.join(CERT_FILE));
                let key = std::fs::read_to_string(d.join(KEY_FILE)).map(Zeroizing::new);
                Ok(match (chain, key) {
                    (Ok(chain_pem), Ok(key_pem)) => Some(Stored {
                        chain_pem,
                        key_pem,
                        bundle_pem: std::fs::read_to_string(d.join(BUNDLE_FILE)).ok(),
                    }),
                    _ => None,
                })
            }
            StateStore::Secret { api, .. } => {
                let Some(s) = api
                    .get_opt(STATE_SECRET)
                    .await
                    .map_err(|e| self.api_error("get", &e))?
                else {
                    return Ok(None);
                };
                let data = s.data.unwrap_or_default();
                let text = |k: &str| {
                    data.get(k)
                        .and_then(|b| String::from_utf8(b.0.clone()).ok())
                        .filter(|t| !t.trim().is_empty())
                };
                Ok(match (text(CERT_FILE), text(KEY_FILE)) {
                    (Some(chain_pem), Some(key)) => Some(Stored {
                        chain_pem,
                        key_pem: Zeroizing::new(key),
                        bundle_pem: text(BUNDLE_FILE),
                    }),
                    _ => None,
                })
            }
        }
    }

    /// Keep `chain`, `key` and `bundle` (replacing what was kept).
    pub async fn save(&self, chain: &str, key: &str, bundle: &str) -> Result<(), AgentError> {
        match self {
            StateStore::Dir(d) => {
                std::fs::create_dir_all(d).map_err(|e| AgentError::File {
                    path: d.clone(),
                    reason: e.to_string(),
                })?;
                super::write_private(&d.join(KEY_FILE), key, true)?;
                super::write_private(&d.join(CERT_FILE), chain, false)?;
                if !bundle.is_empty() {
                    super::write_private(&d.join(BUNDLE_FILE), bundle, false)?;
                }
                Ok(())
            }
            StateStore::Secret { api, .. } => {
                let mut data = BTreeMap::from([
                    (CERT_FILE.to_string(), ByteString(chain.as_bytes().to_vec())),
                    (KEY_FILE.to_string(), ByteString(key.as_bytes().to_vec())),
                ]);
                if !bundle.is_empty() {
                    data.insert(
                        BUNDLE_FILE.to_string(),
                        ByteString(bundle.as_bytes().to_vec()),
                    );
                }
                let pp = PostParams::default();
                for _ in 0..CONFLICT_RETRIES {
                    match api
                        .get_opt(STATE_SECRET)
                        .await
                        .map_err(|e| self.api_error("get", &e))?
                    {
                        Some(mut s) => {
                            // Merged: other entries (the webhook's, `save_extra`) stay.
                            s.data
                                .get_or_insert_with(Default::default)
                                .extend(data.clone());
                            s.string_data = None;
                            match api.replace(STATE_SECRET, &pp, &s).await {
                                Ok(_) => return Ok(()),
                                // Changed since the read: read it again.
                                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                                Err(e) => return Err(self.api_error("update", &e)),
                            }
                        }
                        None => {
                            let s = Secret {
                                metadata: ObjectMeta {
                                    name: Some(STATE_SECRET.to_string()),
                                    labels: Some(BTreeMap::from([(
                                        "app.kubernetes.io/managed-by".to_string(),
                                        "crossmesh".to_string(),
                                    )])),
                                    ..Default::default()
                                },
                                type_: Some("Opaque".into()),
                                data: Some(data.clone()),
                                ..Default::default()
                            };
                            match api.create(&pp, &s).await {
                                Ok(_) => return Ok(()),
                                // Created meanwhile: replace it.
                                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                                Err(e) => return Err(self.api_error("create", &e)),
                            }
                        }
                    }
                }
                Err(AgentError::State(format!(
                    "{}: still conflicting after {CONFLICT_RETRIES} attempts",
                    self.describe()
                )))
            }
        }
    }

    /// One more entry kept beside the identity (the webhook's certificate and
    /// key, the signer: `agent::webhook`); `None` when absent or unreadable.
    pub async fn load_extra(&self, key: &str) -> Option<String> {
        match self {
            StateStore::Dir(d) => std::fs::read_to_string(d.join(key)).ok(),
            StateStore::Secret { api, .. } => api
                .get_opt(STATE_SECRET)
                .await
                .ok()
                .flatten()?
                .data?
                .get(key)
                .and_then(|b| String::from_utf8(b.0.clone()).ok()),
        }
        .filter(|t| !t.trim().is_empty())
    }

    /// Keep `entries` (key, text, private) beside the identity, leaving the
    /// other entries as they are. Failures are logged: what was not kept is
    /// still used from memory.
    pub async fn save_extra(&self, entries: &[(&str, &str, bool)]) {
        let r = match self {
            StateStore::Dir(d) => std::fs::create_dir_all(d)
                .map_err(|e| AgentError::File {
                    path: d.clone(),
                    reason: e.to_string(),
                })
                .and_then(|()| {
                    entries.iter().try_for_each(|(k, text, private)| {
                        super::write_private(&d.join(k), text, *private)
                    })
                }),
            StateStore::Secret { api, .. } => {
                let mut r = Err(AgentError::State(format!(
                    "{}: still conflicting after {CONFLICT_RETRIES} attempts",
                    self.describe()
                )));
                for _ in 0..CONFLICT_RETRIES {
                    let mut s = match api.get_opt(STATE_SECRET).await {
                        Ok(Some(s)) => s,
                        Ok(None) => {
                            r = Err(AgentError::State(format!(
                                "{}: not created yet (the agent has not enrolled)",
                                self.describe()
                            )));
                            break;
                        }
                        Err(e) => {
                            r = Err(self.api_error("get", &e));
                            break;
                        }
                    };
                    let data = s.data.get_or_insert_with(Default::default);
                    for (k, text, _) in entries {
                        data.insert(k.to_string(), ByteString(text.as_bytes().to_vec()));
                    }
                    match api.replace(STATE_SECRET, &PostParams::default(), &s).await {
                        Ok(_) => {
                            r = Ok(());
                            break;
                        }
                        Err(kube::Error::Api(e)) if e.code == 409 => continue,
                        Err(e) => {
                            r = Err(self.api_error("update", &e));
                            break;
                        }
                    }
                }
                r
            }
        };
        if let Err(e) = r {
            let keys: Vec<&str> = entries.iter().map(|(k, _, _)| *k).collect();
            warn!(error = %e, ?keys, "cannot keep agent state; using it from memory");
        }
    }

    fn api_error(&self, verb: &str, e: &kube::Error) -> AgentError {
        let why = match e {
            kube::Error::Api(s) if s.code == 403 => format!(
                "{verb} forbidden (HTTP 403): the agent's RBAC must allow get and update on \
                 this Secret (resourceNames: [{STATE_SECRET}]) and create on Secrets in its \
                 namespace: {}",
                s.message
            ),
            kube::Error::Api(s) => format!("{verb}: HTTP {} {}: {}", s.code, s.reason, s.message),
            other => format!("{verb}: {}", crate::sources::kube::describe_chain(other)),
        };
        AgentError::State(format!("{}: {why}", self.describe()))
    }

    /// Like [`StateStore::save`], retried with backoff for a while; failing
    /// that, the identity is used from memory only (logged: a restart would
    /// need a new token).
    /// A state directory that cannot be written is an error at once.
    pub async fn save_retrying(
        &self,
        chain: &str,
        key: &str,
        bundle: &str,
    ) -> Result<(), AgentError> {
        if let StateStore::Dir(_) = self {
            return self.save(chain, key, bundle).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut attempt = 0u32;
        loop {
            match self.save(chain, key, bundle).await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    warn!(error = %e, "cannot keep the client certificate; retrying");
                    tokio::time::sleep(super::backoff(attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
                Err(e) => {
                    warn!(error = %e, "cannot keep the client certificate: using it from memory; \
                        a restarted agent will need a new enrolment token");
                    return Ok(());
                }
            }
        }
    }
}
