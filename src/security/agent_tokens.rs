//! Enrolment tokens of member-cluster agents (`crossmesh agent-token create`,
//! DESIGN.md §5): single-use, expiring secrets that let a new agent obtain its
//! client certificate once (`sources::agent`, the `Enroll` call).
//!
//! Where they live: `<ca.stateDir>.agent-tokens/` (beside the directory `serve`'s
//! mesh CA keeps its state in, e.g. `crossmesh-ca.agent-tokens` next to the mesh
//! file by default; beside, not inside, so that tokens can be created before the
//! first `serve` generates the root there). The command and the server find the
//! same directory from the same mesh file. Each token is one file named after the
//! SHA-256 of the token, holding only the cluster it was made for and its expiry;
//! the token itself is printed once and never stored.
//!
//! Single use: redeeming renames `<hash>.json` to `<hash>.used` before anything
//! else. `rename` is atomic, so of two redemptions racing (or two replicas sharing
//! the directory) exactly one wins; the loser, and every later attempt, is told the
//! token was already used. An expired or wrong-cluster token is consumed too, and
//! refused.
//!
//! In a cluster (`ca.kubernetesSecret` set) the same records live in one Secret
//! of `serve`'s namespace instead, [`ENROLMENT_SECRET`], shared by every replica
//! and by `crossmesh agent-token` run in a hub Pod ([`TokenStore`]): a key
//! `token.<sha256>` per token (cluster, expiry, when it was used) and
//! `revoked.<sha256 of the cluster>` per revocation. Every write is a
//! read-modify-update carrying the resourceVersion read, so the API server's
//! optimistic concurrency (409 Conflict, then read again and re-check) makes a
//! token single-use across replicas. Replicas read the revocations when a
//! stream is opened or a certificate renewed, and every [`REVOCATION_REFRESH`]
//! for the streams already open.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// Suffix of the token directory, after `ca.stateDir`'s own name.
pub const TOKEN_DIR_SUFFIX: &str = ".agent-tokens";
/// Prefix of every enrolment token (protocol v1), so a token is recognisable in
/// logs and secret scanners and cannot be confused with a service-account JWT.
pub const TOKEN_PREFIX: &str = "cmat1.";
/// Default `--ttl` of `crossmesh agent-token create`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Random bytes in a token (256 bits).
const TOKEN_BYTES: usize = 32;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TokenError {
    #[error("not an enrolment token (expected {TOKEN_PREFIX}... as printed by `crossmesh agent-token create`)")]
    Malformed,
    #[error("unknown enrolment token (never created here, or its record was removed)")]
    Unknown,
    #[error("enrolment token already used: a token is good for one enrolment; create a new one")]
    Used,
    #[error("enrolment token expired at {0}; create a new one")]
    Expired(String),
    #[error("enrolment token was created for cluster {made_for:?}, not {claimed:?}")]
    WrongCluster { made_for: String, claimed: String },
    #[error("agent token store {path}: {reason}")]
    Store { path: PathBuf, reason: String },
}

impl TokenError {
    /// A short label for the refusal metric.
    pub fn label(&self) -> &'static str {
        match self {
            TokenError::Malformed => "token_malformed",
            TokenError::Unknown => "token_unknown",
            TokenError::Used => "token_used",
            TokenError::Expired(_) => "token_expired",
            TokenError::WrongCluster { .. } => "token_wrong_cluster",
            TokenError::Store { .. } => "token_store",
        }
    }
}

/// What is kept per token (never the token).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Record {
    cluster: String,
    created_unix: u64,
    expires_unix: u64,
}

/// The token directory of a mesh CA state directory: `<ca.stateDir>.agent-tokens`.
pub fn token_dir(ca_state_dir: &Path) -> PathBuf {
    let mut name = ca_state_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "crossmesh-ca".into());
    name.push(TOKEN_DIR_SUFFIX);
    ca_state_dir.with_file_name(name)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hash_hex(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `token` has the shape of a token this build creates.
fn well_formed(token: &str) -> bool {
    token.strip_prefix(TOKEN_PREFIX).is_some_and(|rest| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(rest)
            .is_ok_and(|b| b.len() == TOKEN_BYTES)
    })
}

/// A fresh token (256 random bits after [`TOKEN_PREFIX`]).
fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system random number generator failed".to_string())?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// Create a token for `cluster` valid for `ttl` from `now`; returns the token
/// (print it; it is not stored).
pub fn create(
    dir: &Path,
    cluster: &str,
    ttl: Duration,
    now: SystemTime,
) -> Result<String, TokenError> {
    let store = |reason: String| TokenError::Store {
        path: dir.to_owned(),
        reason,
    };
    let token = new_token().map_err(store)?;
    std::fs::create_dir_all(dir).map_err(|e| store(format!("cannot create: {e}")))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let record = Record {
        cluster: cluster.to_string(),
        created_unix: unix(now),
        expires_unix: unix(now + ttl),
    };
    let text = serde_json::to_string(&record).map_err(|e| store(e.to_string()))?;
    let path = dir.join(format!("{}.json", hash_hex(&token)));
    std::fs::write(&path, text)
        .map_err(|e| store(format!("cannot write {}: {e}", path.display())))?;
    Ok(token)
}

/// Redeem `token` for `cluster` at `now`: consumed whatever the outcome, `Ok` only
/// when it was made for `cluster`, unused and unexpired.
pub fn redeem(dir: &Path, cluster: &str, token: &str, now: SystemTime) -> Result<(), TokenError> {
    if !well_formed(token) {
        return Err(TokenError::Malformed);
    }
    let hash = hash_hex(token);
    let fresh = dir.join(format!("{hash}.json"));
    let used = dir.join(format!("{hash}.used"));
    if let Err(e) = std::fs::rename(&fresh, &used) {
        if e.kind() == std::io::ErrorKind::NotFound {
            return Err(if used.exists() {
                TokenError::Used
            } else {
                TokenError::Unknown
            });
        }
        return Err(TokenError::Store {
            path: fresh,
            reason: e.to_string(),
        });
    }
    let text = std::fs::read_to_string(&used).map_err(|e| TokenError::Store {
        path: used.clone(),
        reason: e.to_string(),
    })?;
    let record: Record = serde_json::from_str(&text).map_err(|e| TokenError::Store {
        path: used.clone(),
        reason: format!("not a token record: {e}"),
    })?;
    check(&record, cluster, now)
}

/// A consumed token's record accepted for `cluster` at `now`: unexpired and
/// made for that cluster.
fn check(record: &Record, cluster: &str, now: SystemTime) -> Result<(), TokenError> {
    if unix(now) >= record.expires_unix {
        let at = k8s_openapi::jiff::Timestamp::from_second(record.expires_unix as i64)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| record.expires_unix.to_string());
        return Err(TokenError::Expired(at));
    }
    if record.cluster != cluster {
        return Err(TokenError::WrongCluster {
            made_for: record.cluster.clone(),
            claimed: cluster.to_string(),
        });
    }
    Ok(())
}

/// What `crossmesh agent-token revoke` keeps per cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Revocation {
    cluster: String,
    revoked_unix: u64,
}

fn revocation_path(dir: &Path, cluster: &str) -> PathBuf {
    dir.join(format!("revoked-{}.json", hash_hex(cluster)))
}

/// Revoke `cluster` at `now`: every certificate issued to its agent until now is
/// refused from then on (the hub closes its stream within a heartbeat interval),
/// and its unused tokens are deleted. A new token enrols it again.
/// Returns how many unused tokens were deleted.
pub fn revoke(dir: &Path, cluster: &str, now: SystemTime) -> Result<usize, TokenError> {
    let store = |reason: String| TokenError::Store {
        path: dir.to_owned(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| store(format!("cannot create: {e}")))?;
    let rec = Revocation {
        cluster: cluster.to_string(),
        revoked_unix: unix(now),
    };
    let text = serde_json::to_string(&rec).map_err(|e| store(e.to_string()))?;
    let path = revocation_path(dir, cluster);
    std::fs::write(&path, text)
        .map_err(|e| store(format!("cannot write {}: {e}", path.display())))?;
    let mut deleted = 0;
    for e in std::fs::read_dir(dir)
        .map_err(|e| store(e.to_string()))?
        .flatten()
    {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") || p == path {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        if let Ok(r) = serde_json::from_str::<Record>(&text) {
            if r.cluster == cluster && std::fs::remove_file(&p).is_ok() {
                deleted += 1;
            }
        }
    }
    Ok(deleted)
}

/// When `cluster` was last revoked (seconds since the Unix epoch), if ever.
pub fn revoked_at(dir: &Path, cluster: &str) -> Option<u64> {
    let text = std::fs::read_to_string(revocation_path(dir, cluster)).ok()?;
    let r: Revocation = serde_json::from_str(&text).ok()?;
    (r.cluster == cluster).then_some(r.revoked_unix)
}

// ---------------------------------------------------------------------------
// The store in force: local files, or a Secret shared by every replica

/// The Secret that keeps enrolment tokens and revocations when the hub runs in a
/// cluster (`ca.kubernetesSecret` set): in `serve`'s namespace, beside the CA's.
pub const ENROLMENT_SECRET: &str = "crossmesh-agent-enrolment";
/// How often a replica re-reads the revocations kept in [`ENROLMENT_SECRET`]; an
/// open stream of a cluster revoked through another replica closes within this
/// plus one heartbeat interval (`sources::agent`).
pub const REVOCATION_REFRESH: Duration = Duration::from_secs(5);
/// Token records expired this long ago are dropped from the Secret at its next
/// write (a Secret holds at most 1 MiB); such a token is then refused as unknown.
pub const PRUNE_EXPIRED_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
/// Key prefix of a token record in the Secret: `token.<sha256 of the token>`.
const TOKEN_KEY: &str = "token.";
/// Key prefix of a revocation in the Secret: `revoked.<sha256 of the cluster>`.
const REVOKED_KEY: &str = "revoked.";
/// Read-modify-write attempts on 409 Conflict before giving up.
const CONFLICT_RETRIES: usize = 16;

/// A token record as kept in the Secret: the local [`Record`] plus when it was
/// redeemed (the Secret's counterpart of the `.used` rename).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KeptRecord {
    cluster: String,
    created_unix: u64,
    expires_unix: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    used_unix: Option<u64>,
}

/// Where enrolment tokens and revocations live, chosen from the mesh file:
/// the Secret [`ENROLMENT_SECRET`] when `ca.kubernetesSecret` is set (every
/// replica, and `crossmesh agent-token` run in a hub Pod, share it), else
/// `<ca.stateDir>.agent-tokens/` ([`token_dir`]).
pub struct TokenStore {
    backend: Backend,
}

enum Backend {
    Local(PathBuf),
    Kube(KubeStore),
}

struct KubeStore {
    api: kube::Api<k8s_openapi::api::core::v1::Secret>,
    namespace: String,
    /// Revocations (cluster → seconds since the epoch) as last read; replaced
    /// by every successful read, kept when a read fails.
    revoked: std::sync::RwLock<std::collections::BTreeMap<String, u64>>,
}

impl TokenStore {
    /// Tokens in local files under `dir`.
    pub fn local(dir: PathBuf) -> TokenStore {
        TokenStore {
            backend: Backend::Local(dir),
        }
    }

    /// Tokens in [`ENROLMENT_SECRET`] of `namespace`, through `client`.
    pub fn kube(client: kube::Client, namespace: &str) -> TokenStore {
        TokenStore {
            backend: Backend::Kube(KubeStore {
                api: kube::Api::namespaced(client, namespace),
                namespace: namespace.to_string(),
                revoked: Default::default(),
            }),
        }
    }

    /// The store of `mesh`: the Secret with `ca.kubernetesSecret` (through the
    /// Pod's service account, in its namespace), else the local directory.
    pub fn from_mesh(mesh: &crate::config::MeshConfig) -> Result<TokenStore, TokenError> {
        if mesh.ca.kubernetes_secret.is_none() {
            return Ok(TokenStore::local(token_dir(&mesh.ca.state_dir)));
        }
        let (client, _) =
            crate::kube_client::in_cluster::client().map_err(|e| TokenError::Store {
                path: PathBuf::from(format!("Secret {ENROLMENT_SECRET}")),
                reason: format!(
                    "{e}; with ca.kubernetesSecret the tokens are kept in this Secret of the \
                 hub's namespace: run the command in a hub Pod (kubectl exec, docs/DEPLOY.md)"
                ),
            })?;
        let ns = client.default_namespace().to_string();
        Ok(TokenStore::kube(client, &ns))
    }

    /// Where the tokens are, for messages: a directory or `Secret ns/name`.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Local(dir) => dir.display().to_string(),
            Backend::Kube(k) => k.describe(),
        }
    }

    /// Whether the store is shared through the API server (and so needs
    /// [`TokenStore::refresh`] to see other replicas' revocations).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Kube(_))
    }

    /// Create a token for `cluster` valid for `ttl` from `now` (see [`create`]).
    pub async fn create(
        &self,
        cluster: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<String, TokenError> {
        match &self.backend {
            Backend::Local(dir) => create(dir, cluster, ttl, now),
            Backend::Kube(k) => {
                let token = new_token().map_err(|r| k.err(r))?;
                let rec = KeptRecord {
                    cluster: cluster.to_string(),
                    created_unix: unix(now),
                    expires_unix: unix(now + ttl),
                    used_unix: None,
                };
                let value = serde_json::to_vec(&rec).map_err(|e| k.err(e.to_string()))?;
                let key = format!("{TOKEN_KEY}{}", hash_hex(&token));
                k.modify(now, |data| {
                    data.insert(key.clone(), value.clone());
                    Ok(())
                })
                .await?;
                Ok(token)
            }
        }
    }

    /// Redeem `token` for `cluster` at `now`: consumed whatever the outcome,
    /// `Ok` only when it was made for `cluster`, unused and unexpired. In the
    /// Secret the token is marked used by an update that carries the
    /// resourceVersion it was read at: of two replicas redeeming it at once, the
    /// API server accepts one update and answers the other 409 Conflict; that one
    /// reads again, finds the mark, and refuses the token as used.
    pub async fn redeem(
        &self,
        cluster: &str,
        token: &str,
        now: SystemTime,
    ) -> Result<(), TokenError> {
        let k = match &self.backend {
            Backend::Local(dir) => return redeem(dir, cluster, token, now),
            Backend::Kube(k) => k,
        };
        if !well_formed(token) {
            return Err(TokenError::Malformed);
        }
        let key = format!("{TOKEN_KEY}{}", hash_hex(token));
        let mut found: Option<KeptRecord> = None;
        k.modify(now, |data| {
            let Some(bytes) = data.get(&key) else {
                return Err(TokenError::Unknown);
            };
            let mut rec: KeptRecord = serde_json::from_slice(bytes)
                .map_err(|e| k.err(format!("key {key}: not a token record: {e}")))?;
            if rec.used_unix.is_some() {
                return Err(TokenError::Used);
            }
            rec.used_unix = Some(unix(now));
            data.insert(
                key.clone(),
                serde_json::to_vec(&rec).map_err(|e| k.err(e.to_string()))?,
            );
            found = Some(rec);
            Ok(())
        })
        .await?;
        let rec = found.ok_or_else(|| k.err("the token record vanished".into()))?;
        check(
            &Record {
                cluster: rec.cluster,
                created_unix: rec.created_unix,
                expires_unix: rec.expires_unix,
            },
            cluster,
            now,
        )
    }

    /// Revoke `cluster` at `now` (see [`revoke`]); returns how many unused tokens
    /// were deleted.
    pub async fn revoke(&self, cluster: &str, now: SystemTime) -> Result<usize, TokenError> {
        let k = match &self.backend {
            Backend::Local(dir) => return revoke(dir, cluster, now),
            Backend::Kube(k) => k,
        };
        let rec = Revocation {
            cluster: cluster.to_string(),
            revoked_unix: unix(now),
        };
        let value = serde_json::to_vec(&rec).map_err(|e| k.err(e.to_string()))?;
        let rkey = format!("{REVOKED_KEY}{}", hash_hex(cluster));
        let mut deleted = 0;
        k.modify(now, |data| {
            data.insert(rkey.clone(), value.clone());
            let before = data.len();
            data.retain(|key, v| {
                !(key.starts_with(TOKEN_KEY)
                    && serde_json::from_slice::<KeptRecord>(v)
                        .is_ok_and(|r| r.cluster == cluster && r.used_unix.is_none()))
            });
            deleted = before - data.len();
            Ok(())
        })
        .await?;
        k.set_revoked(cluster, unix(now));
        Ok(deleted)
    }

    /// When `cluster` was last revoked (seconds since the Unix epoch), if ever:
    /// from the files, or from the Secret as last read ([`TokenStore::refresh`]).
    pub fn revoked_at(&self, cluster: &str) -> Option<u64> {
        match &self.backend {
            Backend::Local(dir) => revoked_at(dir, cluster),
            Backend::Kube(k) => k
                .revoked
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(cluster)
                .copied(),
        }
    }

    /// Read the revocations again from the Secret (nothing to do for files,
    /// which are read at each check). On failure the last revocations read stay
    /// in force.
    pub async fn refresh(&self) -> Result<(), TokenError> {
        let Backend::Kube(k) = &self.backend else {
            return Ok(());
        };
        let secret = k
            .api
            .get_opt(ENROLMENT_SECRET)
            .await
            .map_err(|e| k.api_err(e))?;
        let mut revoked = std::collections::BTreeMap::new();
        for (key, v) in secret.and_then(|s| s.data).unwrap_or_default() {
            if !key.starts_with(REVOKED_KEY) {
                continue;
            }
            match serde_json::from_slice::<Revocation>(&v.0) {
                Ok(r) => {
                    revoked.insert(r.cluster, r.revoked_unix);
                }
                Err(e) => tracing::warn!(
                    secret = %k.describe(), key, error = %e,
                    "agent enrolment: a revocation that does not parse is skipped"
                ),
            }
        }
        *k.revoked.write().unwrap_or_else(|e| e.into_inner()) = revoked;
        Ok(())
    }

    /// Re-read the revocations every `every` until dropped (a no-op for files).
    pub async fn refresh_every(self: std::sync::Arc<Self>, every: Duration) {
        if !self.is_shared() {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "agent enrolment: cannot re-read revocations; the last ones read stay in force");
            }
        }
    }
}

impl KubeStore {
    fn describe(&self) -> String {
        format!("Secret {}/{ENROLMENT_SECRET}", self.namespace)
    }

    fn err(&self, reason: String) -> TokenError {
        TokenError::Store {
            path: PathBuf::from(self.describe()),
            reason,
        }
    }

    fn api_err(&self, e: kube::Error) -> TokenError {
        self.err(match &e {
            kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
            other => crate::kube_client::describe_chain(other),
        })
    }

    fn set_revoked(&self, cluster: &str, at: u64) {
        self.revoked
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cluster.to_string(), at);
    }

    /// Apply `change` to the Secret's data and write it back (creating the
    /// Secret if there is none), with optimistic concurrency: the update carries
    /// the resourceVersion read, and a 409 (Conflict on update, AlreadyExists on
    /// create) means another writer came first, so the Secret is read again and
    /// `change` re-run on what it holds now. `change` may refuse (its error is
    /// returned, nothing written). Token records expired for
    /// [`PRUNE_EXPIRED_AFTER`] are dropped on the way.
    async fn modify(
        &self,
        now: SystemTime,
        mut change: impl FnMut(
            &mut std::collections::BTreeMap<String, Vec<u8>>,
        ) -> Result<(), TokenError>,
    ) -> Result<(), TokenError> {
        use k8s_openapi::api::core::v1::Secret;
        use k8s_openapi::ByteString;
        use kube::api::{ObjectMeta, PostParams};
        let prune_before = unix(now).saturating_sub(PRUNE_EXPIRED_AFTER.as_secs());
        for _ in 0..CONFLICT_RETRIES {
            let current = self
                .api
                .get_opt(ENROLMENT_SECRET)
                .await
                .map_err(|e| self.api_err(e))?;
            let mut data: std::collections::BTreeMap<String, Vec<u8>> = current
                .as_ref()
                .and_then(|s| s.data.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            change(&mut data)?;
            data.retain(|key, v| {
                !(key.starts_with(TOKEN_KEY)
                    && serde_json::from_slice::<KeptRecord>(v)
                        .is_ok_and(|r| r.expires_unix < prune_before))
            });
            let data = data.into_iter().map(|(k, v)| (k, ByteString(v))).collect();
            let written = match current {
                Some(mut s) => {
                    // Carries the resourceVersion read: a stale update gets 409.
                    s.data = Some(data);
                    s.string_data = None;
                    self.api
                        .replace(ENROLMENT_SECRET, &PostParams::default(), &s)
                        .await
                }
                None => {
                    let s = Secret {
                        metadata: ObjectMeta {
                            name: Some(ENROLMENT_SECRET.to_string()),
                            labels: Some(std::collections::BTreeMap::from([(
                                "app.kubernetes.io/managed-by".to_string(),
                                "crossmesh".to_string(),
                            )])),
                            ..Default::default()
                        },
                        type_: Some("Opaque".into()),
                        data: Some(data),
                        ..Default::default()
                    };
                    self.api.create(&PostParams::default(), &s).await
                }
            };
            match written {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    tracing::debug!(secret = %self.describe(), reason = %s.reason, "agent enrolment: another writer came first; reading again");
                    continue;
                }
                Err(e) => return Err(self.api_err(e)),
            }
        }
        Err(self.err(format!(
            "still conflicting with other writers after {CONFLICT_RETRIES} attempts; try again"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_use_expiring_and_bound_to_a_cluster() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = token_dir(&tmp.path().join("ca"));
        assert_eq!(dir, tmp.path().join("ca.agent-tokens"));
        let now = SystemTime::now();
        let t = create(&dir, "c3", Duration::from_secs(60), now).unwrap();
        assert!(t.starts_with(TOKEN_PREFIX));
        // Only the hash is on disk.
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let text = std::fs::read_to_string(e.path()).unwrap();
            assert!(!text.contains(&t[TOKEN_PREFIX.len()..]));
            assert!(!e
                .file_name()
                .to_string_lossy()
                .contains(&t[TOKEN_PREFIX.len()..]));
        }
        assert_eq!(redeem(&dir, "c3", &t, now), Ok(()));
        assert_eq!(redeem(&dir, "c3", &t, now), Err(TokenError::Used));

        let expired = create(&dir, "c3", Duration::from_secs(60), now).unwrap();
        let later = now + Duration::from_secs(61);
        assert!(matches!(
            redeem(&dir, "c3", &expired, later),
            Err(TokenError::Expired(_))
        ));

        let other = create(&dir, "c3", Duration::from_secs(60), now).unwrap();
        assert_eq!(
            redeem(&dir, "c4", &other, now),
            Err(TokenError::WrongCluster {
                made_for: "c3".into(),
                claimed: "c4".into()
            })
        );
        // Consumed by the refused attempt.
        assert_eq!(redeem(&dir, "c3", &other, now), Err(TokenError::Used));

        let unknown = format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; TOKEN_BYTES])
        );
        assert_eq!(redeem(&dir, "c3", &unknown, now), Err(TokenError::Unknown));
        assert_eq!(
            redeem(&dir, "c3", "../../etc/passwd", now),
            Err(TokenError::Malformed)
        );

        // Revoking deletes the cluster's unused tokens, not other clusters'.
        let unused = create(&dir, "c3", Duration::from_secs(60), now).unwrap();
        let c4 = create(&dir, "c4", Duration::from_secs(60), now).unwrap();
        assert_eq!(revoked_at(&dir, "c3"), None);
        assert_eq!(revoke(&dir, "c3", now).unwrap(), 1);
        assert_eq!(revoked_at(&dir, "c3"), Some(unix(now)));
        assert_eq!(revoked_at(&dir, "c4"), None);
        assert_eq!(redeem(&dir, "c3", &unused, now), Err(TokenError::Unknown));
        assert_eq!(redeem(&dir, "c4", &c4, now), Ok(()));
    }
}
