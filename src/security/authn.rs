//! Who is calling: a proxy's Kubernetes service-account token, verified.
//!
//! A proxy opening the authenticated xDS stream presents the projected
//! service-account token of its Pod (audience from mesh `tokenAudiences`, default
//! `[istio-ca]` as Istio's `TOKEN_AUDIENCES`). The token is verified against the
//! member cluster the proxy says it belongs to, in one of two ways:
//!
//! - `clusters[].tokenIssuer` set: locally, as the cluster's API server would. The
//!   JWT's signature (RS256 or ES256) with the key named by its `kid` in the
//!   issuer's JWKS file, `iss` equal to the configured issuer, `aud` sharing one
//!   audience with `tokenAudiences`, `exp`/`nbf` with [`LEEWAY`], and the
//!   `kubernetes.io` claim (namespace, service account, bound pod).
//! - otherwise, a cluster crossmesh reaches over its API (kubeconfig, `inCluster`,
//!   or a client handed over with [`KubeClients::insert`]): a `TokenReview` (`authentication.k8s.io/v1`,
//!   `spec.audiences` = `tokenAudiences`) against that cluster's API server; the
//!   reviewed user must be `system:serviceaccount:NS:SA`, and the bound pod comes
//!   from `status.user.extra["authentication.kubernetes.io/pod-name"]` / `pod-uid`.
//!
//! A cluster read from manifests without a `tokenIssuer` cannot verify tokens:
//! every token claiming it is refused ([`AuthError::UnknownCluster`]).
//!
//! Legacy secret-based tokens (no `exp`, no audience) are refused in both ways:
//! they never expire and are not bound to an audience, so anyone who ever read the
//! Secret could obtain the identity forever (Istio accepts them only with
//! `JWT_POLICY=first-party-jwt`, which is not offered here).
//!
//! Positive results are cached by the SHA-256 of (cluster, token) until the
//! earlier of the token's `exp` and [`CACHE_TTL`]; failures are never cached. A
//! token is never logged: only [`token_id`], a hash prefix.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use serde::Deserialize;
use tracing::{debug, warn};

use crate::config::{ClusterSource, MeshConfig, TokenIssuer};

/// Clock skew tolerated on `exp` and `nbf` (kube-apiserver's JWT validation uses
/// the same one minute).
pub const LEEWAY: Duration = Duration::from_secs(60);
/// Longest a positive result is reused without verifying the token again (a
/// revoked token, e.g. of a deleted pod, is accepted for at most this long).
pub const CACHE_TTL: Duration = Duration::from_secs(300);
/// Cached results kept at most; beyond it expired ones are dropped, then all.
const CACHE_MAX: usize = 20_000;
/// Tokens longer than this are refused unread (a projected token is ~1 KiB).
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The authenticated caller: a service account of a member cluster, and the pod
/// the token is bound to when it is (projected tokens are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub cluster: String,
    pub namespace: String,
    pub service_account: String,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
}

/// Why a token was refused. The messages name the reason and never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no service-account token presented")]
    NoToken,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token signature does not verify with the issuer's key")]
    BadSignature,
    /// The token's `kid` is not in the issuer's JWKS (a rotated key, or a token
    /// of another cluster).
    #[error("token signed with key {0:?}, which is not in the issuer's JWKS")]
    UnknownKey(String),
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf in the future)")]
    NotYetValid,
    #[error("token audiences {got:?} include none of the accepted audiences {want:?} (mesh tokenAudiences)")]
    WrongAudience { got: Vec<String>, want: Vec<String> },
    #[error("token issuer {got:?} is not the cluster's issuer {want:?}")]
    WrongIssuer { got: String, want: String },
    #[error("cluster {0:?} cannot verify service-account tokens: it is not a mesh-file cluster reached over its API (kubeconfig, inCluster) and has no tokenIssuer")]
    UnknownCluster(String),
    /// The verification itself failed (API server unreachable, TokenReview not
    /// allowed, JWKS file unreadable): the token may be fine.
    #[error("cannot verify the token: {0}")]
    Review(String),
    /// The cluster's API server reviewed the token and refused it, or it is not
    /// a service account's token.
    #[error("token refused: {0}")]
    Denied(String),
}

impl AuthError {
    /// The `reason` label of the authentication-failure metric.
    pub fn reason_label(&self) -> &'static str {
        match self {
            AuthError::NoToken => "no_token",
            AuthError::Malformed(_) => "malformed",
            AuthError::BadSignature => "bad_signature",
            AuthError::UnknownKey(_) => "unknown_key",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongAudience { .. } => "wrong_audience",
            AuthError::WrongIssuer { .. } => "wrong_issuer",
            AuthError::UnknownCluster(_) => "unknown_cluster",
            AuthError::Review(_) => "review_failed",
            AuthError::Denied(_) => "denied",
        }
    }
}

/// A short, non-reversible name for a token in logs: the first 12 hex digits of
/// its SHA-256.
pub fn token_id(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------
// How to reach member clusters' API servers

/// How a cluster's client is obtained.
#[derive(Clone)]
enum Origin {
    /// Handed over ready (by `serve`, or for a cluster added from a remote secret).
    Given,
    /// Built from the kubeconfig file on first use, rebuilt after a failure.
    Kubeconfig {
        path: PathBuf,
        context: Option<String>,
    },
    /// The in-cluster service account, built on first use.
    InCluster,
}

struct Slot {
    origin: Origin,
    client: Option<kube::Client>,
}

/// The member clusters whose API servers can review tokens, by cluster name.
///
/// Cheap to clone (one shared table). [`KubeClients::from_mesh`] registers the
/// mesh file's kubeconfig and `inCluster` clusters, built on first use;
/// [`KubeClients::insert`] adds a ready client (a cluster from a remote secret, or
/// one `serve` already built) and [`KubeClients::remove`] drops it.
#[derive(Clone, Default)]
pub struct KubeClients {
    /// Read on every authentication, written when clusters come and go; never
    /// held across `.await`.
    slots: Arc<RwLock<HashMap<String, Slot>>>,
}

impl KubeClients {
    /// No cluster.
    pub fn new() -> KubeClients {
        KubeClients::default()
    }

    /// The mesh file's clusters reached over their API (kubeconfig, `inCluster`).
    pub fn from_mesh(mesh: &MeshConfig) -> KubeClients {
        let k = KubeClients::new();
        {
            let mut slots = k.write();
            for c in &mesh.clusters {
                let origin = match &c.source {
                    ClusterSource::Manifests(_) => continue,
                    // The hub cannot call an agent cluster's API server (no
                    // TokenReview there): its proxies need `tokenIssuer`.
                    ClusterSource::Agent { .. } => continue,
                    ClusterSource::Kubeconfig { path, context } => Origin::Kubeconfig {
                        path: path.clone(),
                        context: context.clone(),
                    },
                    ClusterSource::InCluster => Origin::InCluster,
                };
                slots.insert(
                    c.name.clone(),
                    Slot {
                        origin,
                        client: None,
                    },
                );
            }
        }
        k
    }

    /// Use `client` for `cluster` from now on.
    pub fn insert(&self, cluster: &str, client: kube::Client) {
        self.write().insert(
            cluster.to_string(),
            Slot {
                origin: Origin::Given,
                client: Some(client),
            },
        );
    }

    /// `cluster` is gone (its remote secret was deleted).
    pub fn remove(&self, cluster: &str) {
        self.write().remove(cluster);
    }

    /// Whether `cluster` is reached over its API.
    pub fn contains(&self, cluster: &str) -> bool {
        self.read().contains_key(cluster)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Slot>> {
        self.slots.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Slot>> {
        self.slots.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The client of `cluster`: `Ok(None)` when it is not reached over its API.
    async fn client(&self, cluster: &str) -> Result<Option<kube::Client>, String> {
        let origin = match self.read().get(cluster) {
            None => return Ok(None),
            Some(Slot {
                client: Some(c), ..
            }) => return Ok(Some(c.clone())),
            Some(s) => s.origin.clone(),
        };
        let built = match &origin {
            Origin::Given => return Err("the cluster's client is not available".into()),
            Origin::Kubeconfig { path, context } => {
                crate::kube_client::client_from_file(path, context.as_deref())
                    .await
                    .map(|(c, _)| c)
                    .map_err(|e| e.to_string())?
            }
            Origin::InCluster => crate::kube_client::in_cluster::client()
                .map(|(c, _)| c)
                .map_err(|e| e.to_string())?,
        };
        if let Some(s) = self.write().get_mut(cluster) {
            s.client = Some(built.clone());
        }
        Ok(Some(built))
    }

    /// Build `cluster`'s client again on next use (its credentials may have
    /// been rotated); a client handed over with [`Self::insert`] is kept.
    /// Returns whether it will be rebuilt.
    fn rebuild_later(&self, cluster: &str) -> bool {
        match self.write().get_mut(cluster) {
            Some(s) if !matches!(s.origin, Origin::Given) => {
                s.client = None;
                true
            }
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------
// The authenticator

struct CacheEntry {
    caller: Caller,
    until: Instant,
}

/// Verifies proxies' service-account tokens (see the module doc). Shared as
/// `Arc<Authenticator>`.
pub struct Authenticator {
    audiences: Vec<String>,
    issuers: HashMap<String, IssuerKeys>,
    kube: KubeClients,
    /// Positive results by SHA-256 of (cluster, token). A std mutex: held for a
    /// lookup or an insert only, never across `.await`.
    cache: Mutex<HashMap<[u8; 32], CacheEntry>>,
}

impl Authenticator {
    /// The mesh file's `tokenAudiences` and `clusters[].tokenIssuer`, and `kube`
    /// for the clusters verified by TokenReview. A JWKS file that cannot be read
    /// is logged now and read again at each authentication until it can be.
    pub fn from_mesh(mesh: &MeshConfig, kube: KubeClients) -> Authenticator {
        let issuers = mesh
            .token_issuers
            .iter()
            .map(|(cluster, t)| {
                let keys = IssuerKeys::new(t.clone());
                if let Err(e) = keys.current() {
                    warn!(%cluster, error = %e, "tokenIssuer: JWKS not usable yet");
                }
                (cluster.clone(), keys)
            })
            .collect();
        Authenticator {
            audiences: mesh.token_audiences.clone(),
            issuers,
            kube,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The audiences a token must carry one of.
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// Verify `bearer_token` as a service-account token of member cluster
    /// `cluster` (see the module doc for the two ways).
    pub async fn authenticate(
        &self,
        cluster: &str,
        bearer_token: &str,
    ) -> Result<Caller, AuthError> {
        let token = bearer_token.trim();
        let token = token
            .strip_prefix("Bearer ")
            .map(str::trim)
            .unwrap_or(token);
        if token.is_empty() {
            return Err(AuthError::NoToken);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed(format!(
                "{} bytes, more than the {MAX_TOKEN_LEN} accepted",
                token.len()
            )));
        }
        let key = cache_key(cluster, token);
        if let Some(c) = self.cached(&key) {
            return Ok(c);
        }
        let now = SystemTime::now();
        let result = if let Some(issuer) = self.issuers.get(cluster) {
            let jwks = issuer.current().map_err(AuthError::Review)?;
            verify_jwt(
                token,
                &issuer.config.issuer,
                &jwks,
                &self.audiences,
                unix(now),
            )
            .map(|v| (v.caller(cluster), v.exp))
        } else if self.kube.contains(cluster) {
            self.review(cluster, token).await
        } else {
            Err(AuthError::UnknownCluster(cluster.to_string()))
        };
        match result {
            Ok((caller, exp)) => {
                let left = Duration::from_secs(exp.saturating_sub(unix(now)));
                self.remember(key, caller.clone(), left.min(CACHE_TTL));
                debug!(%cluster, token = %token_id(token), namespace = %caller.namespace,
                    service_account = %caller.service_account, "token authenticated");
                Ok(caller)
            }
            Err(e) => {
                debug!(%cluster, token = %token_id(token), reason = e.reason_label(), error = %e,
                    "token refused");
                Err(e)
            }
        }
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Caller> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match cache.get(key) {
            Some(e) if e.until > Instant::now() => Some(e.caller.clone()),
            Some(_) => {
                cache.remove(key);
                None
            }
            None => None,
        }
    }

    fn remember(&self, key: [u8; 32], caller: Caller, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, e| e.until > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(
            key,
            CacheEntry {
                caller,
                until: now + ttl,
            },
        );
    }

    /// TokenReview against `cluster`'s API server. Returns the caller and the
    /// token's `exp` (from its unverified payload, for the cache only; at most
    /// [`CACHE_TTL`] when it has none).
    async fn review(&self, cluster: &str, token: &str) -> Result<(Caller, u64), AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                audiences: Some(self.audiences.clone()),
                token: Some(token.to_string()),
            },
            ..TokenReview::default()
        };
        // A 401 means crossmesh's own credentials for the cluster were rotated
        // (kubeconfig rewritten): rebuild the client from the file and try once more.
        let mut attempt = 0;
        let answer = loop {
            attempt += 1;
            let client = match self.kube.client(cluster).await {
                Ok(Some(c)) => c,
                Ok(None) => return Err(AuthError::UnknownCluster(cluster.to_string())),
                Err(e) => {
                    return Err(AuthError::Review(format!(
                        "cluster {cluster:?}: no API client: {e}"
                    )))
                }
            };
            let api: kube::Api<TokenReview> = kube::Api::all(client);
            let e = match api.create(&kube::api::PostParams::default(), &review).await {
                Ok(a) => break a,
                Err(e) => e,
            };
            let reason = match &e {
                kube::Error::Api(s) if s.code == 403 => format!(
                    "forbidden (HTTP 403): crossmesh's credentials for this cluster need \
                     `create` on tokenreviews.authentication.k8s.io (as istiod's): {}",
                    s.message
                ),
                kube::Error::Api(s) if s.code == 401 => {
                    if self.kube.rebuild_later(cluster) && attempt == 1 {
                        continue;
                    }
                    crate::kube_client::explain(&e)
                }
                _ => {
                    self.kube.rebuild_later(cluster);
                    crate::kube_client::explain(&e)
                }
            };
            return Err(AuthError::Review(format!(
                "TokenReview in cluster {cluster:?}: {reason}"
            )));
        };
        let unverified = unverified_claims(token);
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let text = status.error.unwrap_or_default();
            return Err(review_refusal(&text, unverified.as_ref(), &self.audiences));
        }
        let got = status.audiences.unwrap_or_default();
        if !got.iter().any(|a| self.audiences.contains(a)) {
            return Err(AuthError::WrongAudience {
                got,
                want: self.audiences.clone(),
            });
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let Some((namespace, service_account)) = service_account_of(&username) else {
            return Err(AuthError::Denied(format!(
                "user {username:?} is not a service account (system:serviceaccount:NS:SA)"
            )));
        };
        let extra = user.extra.unwrap_or_default();
        let one = |k: &str| -> Option<String> {
            extra
                .get(k)
                .and_then(|v| v.first())
                .filter(|s| !s.is_empty())
                .cloned()
        };
        let exp = match unverified.as_ref().and_then(|c| c.exp) {
            Some(exp) => exp,
            // A token the API server accepts without `exp` is a legacy one.
            None => {
                return Err(AuthError::Denied(
                    "the token has no expiry (a legacy secret-based token); mount a \
                     projected service-account token"
                        .into(),
                ))
            }
        };
        Ok((
            Caller {
                cluster: cluster.to_string(),
                namespace,
                service_account,
                pod_name: one("authentication.kubernetes.io/pod-name"),
                pod_uid: one("authentication.kubernetes.io/pod-uid"),
            },
            exp,
        ))
    }
}

fn cache_key(cluster: &str, token: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(cluster.as_bytes());
    ctx.update(&[0]);
    ctx.update(token.as_bytes());
    let mut k = [0u8; 32];
    k.copy_from_slice(ctx.finish().as_ref());
    k
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `system:serviceaccount:NS:SA` -> (NS, SA).
fn service_account_of(username: &str) -> Option<(String, String)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, sa) = rest.split_once(':')?;
    if ns.is_empty() || sa.is_empty() || sa.contains(':') {
        return None;
    }
    Some((ns.to_string(), sa.to_string()))
}

/// The reason of a TokenReview that came back unauthenticated. kube-apiserver
/// puts the authenticators' errors in `status.error`; expiry and audience are
/// told apart so they are counted under their own reason.
fn review_refusal(text: &str, unverified: Option<&Claims>, want: &[String]) -> AuthError {
    let lower = text.to_ascii_lowercase();
    if lower.contains("expired") {
        AuthError::Expired
    } else if lower.contains("audience") {
        AuthError::WrongAudience {
            got: unverified.map(|c| c.aud.0.clone()).unwrap_or_default(),
            want: want.to_vec(),
        }
    } else if lower.contains("not valid yet")
        || lower.contains("not yet valid")
        || lower.contains("in the future")
    {
        AuthError::NotYetValid
    } else if text.is_empty() {
        AuthError::Denied("the API server did not authenticate the token".into())
    } else {
        AuthError::Denied(format!(
            "the API server did not authenticate the token: {text}"
        ))
    }
}

// ---------------------------------------------------------------------------
// Local JWT verification (tokenIssuer)

/// A tokenIssuer's JWKS file, re-read when its modification time changes (the
/// issuer's keys rotate).
struct IssuerKeys {
    config: TokenIssuer,
    loaded: Mutex<Option<(Option<SystemTime>, Arc<Jwks>)>>,
}

impl IssuerKeys {
    fn new(config: TokenIssuer) -> IssuerKeys {
        IssuerKeys {
            config,
            loaded: Mutex::new(None),
        }
    }

    fn current(&self) -> Result<Arc<Jwks>, String> {
        let path = &self.config.jwks;
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        {
            let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((t, jwks)) = loaded.as_ref() {
                if mtime.is_some() && *t == mtime {
                    return Ok(jwks.clone());
                }
            }
        }
        let read = std::fs::read_to_string(path)
            .map_err(|e| format!("JWKS file {}: {e}", path.display()))
            .and_then(|text| {
                Jwks::parse(&text).map_err(|e| format!("JWKS file {}: {e}", path.display()))
            });
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        match read {
            Ok(jwks) => {
                let jwks = Arc::new(jwks);
                *loaded = Some((mtime, jwks.clone()));
                Ok(jwks)
            }
            // Keep verifying with the last good keys while the file is being
            // replaced or is broken; say why when there never were any.
            Err(e) => match loaded.as_ref() {
                Some((_, jwks)) => {
                    warn!(error = %e, "tokenIssuer: keeping the previous keys");
                    Ok(jwks.clone())
                }
                None => Err(e),
            },
        }
    }
}

/// A verification key of a JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PublicKey {
    /// RSA modulus and exponent, big-endian, without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// P-256 point, uncompressed (`04 || x || y`).
    P256(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Jwk {
    kid: Option<String>,
    alg: Option<String>,
    key: PublicKey,
}

/// The keys of a JSON Web Key Set (RFC 7517), as served on a Kubernetes API
/// server's `/openid/v1/jwks`. Keys of other types (or not for signatures) are
/// skipped; a set with no usable key is an error.
#[derive(Debug, Clone)]
pub struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct JwksFile {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct JwkFile {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

fn b64(field: &str, v: Option<&str>) -> Result<Vec<u8>, String> {
    let v = v.ok_or_else(|| format!("missing {field:?}"))?;
    URL_SAFE_NO_PAD
        .decode(v.trim_end_matches('='))
        .map_err(|e| format!("{field:?} is not base64url: {e}"))
}

impl Jwks {
    /// Parse a JWKS document.
    pub fn parse(text: &str) -> Result<Jwks, String> {
        let file: JwksFile =
            serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, v) in file.keys.into_iter().enumerate() {
            let k: JwkFile = match serde_json::from_value(v) {
                Ok(k) => k,
                Err(e) => {
                    skipped.push(format!("keys[{i}]: {e}"));
                    continue;
                }
            };
            if k.use_.as_deref().is_some_and(|u| u != "sig") {
                continue;
            }
            let key = match k.kty.as_str() {
                "RSA" => b64("n", k.n.as_deref()).and_then(|n| {
                    let e = b64("e", k.e.as_deref())?;
                    let strip = |v: Vec<u8>| -> Vec<u8> {
                        let z = v.iter().take_while(|b| **b == 0).count();
                        v[z..].to_vec()
                    };
                    Ok(PublicKey::Rsa {
                        n: strip(n),
                        e: strip(e),
                    })
                }),
                "EC" if k.crv.as_deref() == Some("P-256") => {
                    b64("x", k.x.as_deref()).and_then(|x| {
                        let y = b64("y", k.y.as_deref())?;
                        if x.len() != 32 || y.len() != 32 {
                            return Err("P-256 coordinates must be 32 bytes".into());
                        }
                        let mut p = Vec::with_capacity(65);
                        p.push(4);
                        p.extend_from_slice(&x);
                        p.extend_from_slice(&y);
                        Ok(PublicKey::P256(p))
                    })
                }
                other => Err(format!(
                    "key type {other:?} (curve {:?}) is not supported (RSA, EC P-256)",
                    k.crv
                )),
            };
            match key {
                Ok(key) => keys.push(Jwk {
                    kid: k.kid,
                    alg: k.alg,
                    key,
                }),
                Err(e) => skipped.push(format!("keys[{i}]: {e}")),
            }
        }
        if keys.is_empty() {
            return Err(if skipped.is_empty() {
                "no signing key".into()
            } else {
                format!("no usable signing key ({})", skipped.join("; "))
            });
        }
        Ok(Jwks { keys })
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

/// `aud`: one string or a list (RFC 7519 §4.1.3).
#[derive(Debug, Clone, Default)]
struct Audiences(Vec<String>);

impl<'de> Deserialize<'de> for Audiences {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum A {
            One(String),
            Many(Vec<String>),
        }
        Ok(match A::deserialize(d)? {
            A::One(s) => Audiences(vec![s]),
            A::Many(v) => Audiences(v),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Named {
    name: String,
    uid: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct KubeClaim {
    namespace: String,
    serviceaccount: Named,
    pod: Option<Named>,
}

#[derive(Debug, Clone, Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    #[serde(default)]
    aud: Audiences,
    exp: Option<u64>,
    nbf: Option<u64>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubeClaim>,
}

/// The payload of a JWT, not verified (for messages and the cache lifetime).
fn unverified_claims(token: &str) -> Option<Claims> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A verified service-account token.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verified {
    namespace: String,
    service_account: String,
    pod_name: Option<String>,
    pod_uid: Option<String>,
    exp: u64,
}

impl Verified {
    fn caller(&self, cluster: &str) -> Caller {
        Caller {
            cluster: cluster.to_string(),
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
            pod_name: self.pod_name.clone(),
            pod_uid: self.pod_uid.clone(),
        }
    }
}

/// Verify a service-account JWT as the API server of `issuer` would, at `now`
/// (seconds since the epoch): signature, then `iss`, `exp`, `nbf`, `aud`, then
/// the `kubernetes.io` claim.
fn verify_jwt(
    token: &str,
    issuer: &str,
    jwks: &Jwks,
    audiences: &[String],
    now: u64,
) -> Result<Verified, AuthError> {
    let malformed = |s: &str| AuthError::Malformed(s.to_string());
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("not a JWT (expected three dot-separated parts)"));
    };
    let header_bytes = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| malformed("JWT header is not base64url"))?;
    let header: Header = serde_json::from_slice(&header_bytes)
        .map_err(|e| AuthError::Malformed(format!("JWT header: {e}")))?;
    if header.crit.is_some() {
        return Err(malformed(
            "JWT header has critical extensions (crit), none is supported",
        ));
    }
    let alg = header.alg.as_str();
    if !matches!(alg, "RS256" | "ES256") {
        return Err(AuthError::Malformed(format!(
            "JWT algorithm {alg:?} is refused (RS256 and ES256 are accepted)"
        )));
    }
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| malformed("JWT signature is not base64url"))?;
    let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
    let candidates: Vec<&Jwk> = match &header.kid {
        Some(kid) => {
            let c: Vec<&Jwk> = jwks
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
                .collect();
            if c.is_empty() {
                return Err(AuthError::UnknownKey(kid.clone()));
            }
            c
        }
        None => jwks.keys.iter().collect(),
    };
    let verifies = candidates.iter().any(|k| {
        if k.alg.as_deref().is_some_and(|a| a != alg) {
            return false;
        }
        match (&k.key, alg) {
            (PublicKey::Rsa { n, e }, "RS256") => ring::signature::RsaPublicKeyComponents { n, e }
                .verify(&ring::signature::RSA_PKCS1_2048_8192_SHA256, signed, &sig)
                .is_ok(),
            (PublicKey::P256(point), "ES256") => ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_FIXED,
                point,
            )
            .verify(signed, &sig)
            .is_ok(),
            _ => false,
        }
    });
    if !verifies {
        return Err(AuthError::BadSignature);
    }
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| malformed("JWT payload is not base64url"))?;
    let claims: Claims = serde_json::from_slice(&payload)
        .map_err(|e| AuthError::Malformed(format!("JWT claims: {e}")))?;
    let iss = claims.iss.clone().unwrap_or_default();
    if iss != issuer {
        return Err(AuthError::WrongIssuer {
            got: iss,
            want: issuer.to_string(),
        });
    }
    let leeway = LEEWAY.as_secs();
    let Some(exp) = claims.exp else {
        return Err(malformed(
            "the token has no expiry (a legacy secret-based token); mount a projected \
             service-account token",
        ));
    };
    if now >= exp.saturating_add(leeway) {
        return Err(AuthError::Expired);
    }
    if claims
        .nbf
        .is_some_and(|nbf| now.saturating_add(leeway) < nbf)
    {
        return Err(AuthError::NotYetValid);
    }
    if !claims.aud.0.iter().any(|a| audiences.contains(a)) {
        return Err(AuthError::WrongAudience {
            got: claims.aud.0,
            want: audiences.to_vec(),
        });
    }
    let Some(k) = claims.kubernetes else {
        return Err(malformed(
            "no kubernetes.io claim: not a Kubernetes service-account token",
        ));
    };
    if k.namespace.is_empty() || k.serviceaccount.name.is_empty() {
        return Err(malformed(
            "kubernetes.io claim has an empty namespace or service account",
        ));
    }
    let sub = format!(
        "system:serviceaccount:{}:{}",
        k.namespace, k.serviceaccount.name
    );
    if claims.sub.as_deref().is_some_and(|s| s != sub) {
        return Err(malformed("sub does not match the kubernetes.io claim"));
    }
    Ok(Verified {
        namespace: k.namespace,
        service_account: k.serviceaccount.name,
        pod_name: k.pod.as_ref().map(|p| p.name.clone()),
        pod_uid: k.pod.and_then(|p| p.uid),
        exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair};
    use serde_json::json;

    const ISS: &str = "https://kubernetes.default.svc.cluster.local";
    const NOW: u64 = 1_800_000_000;

    enum Signer {
        Es(EcdsaKeyPair),
        Rs(RsaKeyPair),
    }

    /// A signing key made now, and its JWK.
    struct TestKey {
        kid: String,
        signer: Signer,
    }

    impl TestKey {
        fn es256(kid: &str) -> TestKey {
            let rng = SystemRandom::new();
            let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
            let kp = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
            TestKey {
                kid: kid.into(),
                signer: Signer::Es(kp),
            }
        }

        /// ring cannot generate RSA keys: `openssl genpkey` makes one.
        fn rs256(kid: &str) -> TestKey {
            let out = std::process::Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                ])
                .output()
                .expect("openssl is needed to generate an RSA test key");
            assert!(out.status.success(), "openssl genpkey failed");
            let pem = String::from_utf8(out.stdout).unwrap();
            let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            let der = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            TestKey {
                kid: kid.into(),
                signer: Signer::Rs(RsaKeyPair::from_pkcs8(&der).unwrap()),
            }
        }

        fn alg(&self) -> &'static str {
            match self.signer {
                Signer::Es(_) => "ES256",
                Signer::Rs(_) => "RS256",
            }
        }

        fn jwk(&self) -> serde_json::Value {
            let enc = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
            match &self.signer {
                Signer::Es(kp) => {
                    let p = kp.public_key().as_ref();
                    json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig",
                           "alg": "ES256", "x": enc(&p[1..33]), "y": enc(&p[33..65])})
                }
                Signer::Rs(kp) => {
                    let c = ring::signature::RsaPublicKeyComponents::<Vec<u8>>::from(kp.public());
                    json!({"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
                           "n": enc(&c.n), "e": enc(&c.e)})
                }
            }
        }

        fn sign_with_header(
            &self,
            header: &serde_json::Value,
            claims: &serde_json::Value,
        ) -> String {
            let enc =
                |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
            let input = format!("{}.{}", enc(header), enc(claims));
            let rng = SystemRandom::new();
            let sig = match &self.signer {
                Signer::Es(kp) => kp.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
                Signer::Rs(kp) => {
                    let mut sig = vec![0; kp.public().modulus_len()];
                    kp.sign(
                        &ring::signature::RSA_PKCS1_SHA256,
                        &rng,
                        input.as_bytes(),
                        &mut sig,
                    )
                    .unwrap();
                    sig
                }
            };
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
        }

        fn sign(&self, claims: &serde_json::Value) -> String {
            self.sign_with_header(&json!({"alg": self.alg(), "kid": self.kid}), claims)
        }
    }

    /// A projected token's claims as kube-apiserver writes them.
    fn claims() -> serde_json::Value {
        json!({
            "iss": ISS,
            "sub": "system:serviceaccount:shop:web",
            "aud": ["istio-ca"],
            "iat": NOW - 100,
            "nbf": NOW - 100,
            "exp": NOW + 3500,
            "kubernetes.io": {
                "namespace": "shop",
                "serviceaccount": {"name": "web", "uid": "sa-uid"},
                "pod": {"name": "web-0", "uid": "pod-uid"}
            }
        })
    }

    fn jwks(keys: &[&TestKey]) -> Jwks {
        let doc = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
        Jwks::parse(&doc.to_string()).unwrap()
    }

    fn verify(token: &str, set: &Jwks) -> Result<Verified, AuthError> {
        verify_jwt(token, ISS, set, &["istio-ca".to_string()], NOW)
    }

    fn with(mut c: serde_json::Value, key: &str, v: serde_json::Value) -> serde_json::Value {
        c[key] = v;
        c
    }

    #[test]
    fn good_tokens_name_namespace_account_and_pod() {
        for key in [TestKey::es256("ec-1"), TestKey::rs256("rsa-1")] {
            let other = TestKey::es256("other");
            let set = jwks(&[&other, &key]);
            let v =
                verify(&key.sign(&claims()), &set).unwrap_or_else(|e| panic!("{}: {e}", key.alg()));
            assert_eq!(
                v,
                Verified {
                    namespace: "shop".into(),
                    service_account: "web".into(),
                    pod_name: Some("web-0".into()),
                    pod_uid: Some("pod-uid".into()),
                    exp: NOW + 3500,
                }
            );
            // `aud` as one string; a token not bound to a pod.
            let mut c = with(claims(), "aud", json!("istio-ca"));
            c["kubernetes.io"].as_object_mut().unwrap().remove("pod");
            let v = verify(&key.sign(&c), &set).unwrap();
            assert_eq!((v.pod_name, v.pod_uid), (None, None));
        }
    }

    #[test]
    fn expiry_and_not_before_with_leeway() {
        let key = TestKey::es256("k");
        let set = jwks(&[&key]);
        let exp = |d: i64| with(claims(), "exp", json!((NOW as i64 + d) as u64));
        assert_eq!(verify(&key.sign(&exp(-61)), &set), Err(AuthError::Expired));
        assert!(
            verify(&key.sign(&exp(-30)), &set).is_ok(),
            "within the leeway"
        );
        let nbf = |d: u64| with(claims(), "nbf", json!(NOW + d));
        assert_eq!(
            verify(&key.sign(&nbf(120)), &set),
            Err(AuthError::NotYetValid)
        );
        assert!(
            verify(&key.sign(&nbf(30)), &set).is_ok(),
            "within the leeway"
        );
        // A legacy secret-based token: no exp.
        let mut legacy = claims();
        legacy.as_object_mut().unwrap().remove("exp");
        let e = verify(&key.sign(&legacy), &set).unwrap_err();
        assert!(
            matches!(&e, AuthError::Malformed(m) if m.contains("no expiry")),
            "{e}"
        );
    }

    #[test]
    fn wrong_audience_and_issuer() {
        let key = TestKey::rs256("k");
        let set = jwks(&[&key]);
        let t = key.sign(&with(
            claims(),
            "aud",
            json!(["https://kubernetes.default.svc", "vault"]),
        ));
        assert_eq!(
            verify(&t, &set),
            Err(AuthError::WrongAudience {
                got: vec!["https://kubernetes.default.svc".into(), "vault".into()],
                want: vec!["istio-ca".into()],
            })
        );
        // Any one of several accepted audiences is enough.
        assert!(verify_jwt(&t, ISS, &set, &["x".into(), "vault".into()], NOW).is_ok());
        let t = key.sign(&with(claims(), "iss", json!("https://other.example")));
        assert_eq!(
            verify(&t, &set),
            Err(AuthError::WrongIssuer {
                got: "https://other.example".into(),
                want: ISS.into()
            })
        );
    }

    #[test]
    fn bad_signature_unknown_kid_and_alg_none() {
        let key = TestKey::es256("k");
        let impostor = TestKey::es256("k");
        let set = jwks(&[&key]);
        // Same kid, another key.
        assert_eq!(
            verify(&impostor.sign(&claims()), &set),
            Err(AuthError::BadSignature)
        );
        // A payload changed after signing.
        let good = key.sign(&claims());
        let parts: Vec<&str> = good.split('.').collect();
        let forged = with(
            claims(),
            "kubernetes.io",
            json!({"namespace": "kube-system", "serviceaccount": {"name": "admin"}}),
        );
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap()),
            parts[2]
        );
        assert_eq!(verify(&forged, &set), Err(AuthError::BadSignature));
        // An RSA key cannot verify an ES256 token that names it, and vice versa.
        let rsa = TestKey::rs256("r");
        let t = key.sign_with_header(&json!({"alg": "RS256", "kid": "k"}), &claims());
        assert_eq!(
            verify(&t, &jwks(&[&key, &rsa])),
            Err(AuthError::BadSignature)
        );
        // Unknown kid.
        let t = TestKey::es256("rotated-away").sign(&claims());
        assert_eq!(
            verify(&t, &set),
            Err(AuthError::UnknownKey("rotated-away".into()))
        );
        // No kid: every key is tried.
        let t = key.sign_with_header(&json!({"alg": "ES256"}), &claims());
        assert!(verify(&t, &jwks(&[&rsa, &key])).is_ok());
        // alg none (an unsigned token), and algorithms not offered.
        let enc = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        for alg in ["none", "HS256", "RS512"] {
            let t = format!(
                "{}.{}.",
                enc(&json!({"alg": alg, "kid": "k"})),
                enc(&claims())
            );
            let e = verify(&t, &set).unwrap_err();
            assert!(
                matches!(&e, AuthError::Malformed(m) if m.contains(alg)),
                "{alg}: {e}"
            );
        }
    }

    #[test]
    fn malformed_tokens_are_refused_with_a_reason() {
        let key = TestKey::es256("k");
        let set = jwks(&[&key]);
        let enc = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        let sig = key.sign(&claims()).rsplit('.').next().unwrap().to_string();
        for (t, why) in [
            ("garbage".to_string(), "three dot-separated parts"),
            ("a.b.c.d".to_string(), "three dot-separated parts"),
            (
                format!("%%%.{}.{sig}", enc(&claims())),
                "header is not base64url",
            ),
            (
                format!("{}.{}.{sig}", enc(&json!("x")), enc(&claims())),
                "JWT header",
            ),
            (
                format!(
                    "{}.{}.{sig}",
                    enc(&json!({"alg": "ES256", "crit": ["b64"]})),
                    enc(&claims())
                ),
                "crit",
            ),
            (
                format!("{}.{}.!!", enc(&json!({"alg": "ES256"})), enc(&claims())),
                "signature is not base64url",
            ),
        ] {
            let e = verify(&t, &set).unwrap_err();
            assert!(
                matches!(&e, AuthError::Malformed(m) if m.contains(why)),
                "{t}: {e}"
            );
        }
        // Signed, but not a service-account token, or inconsistent.
        let mut c = claims();
        c.as_object_mut().unwrap().remove("kubernetes.io");
        let e = verify(&key.sign(&c), &set).unwrap_err();
        assert!(
            matches!(&e, AuthError::Malformed(m) if m.contains("kubernetes.io")),
            "{e}"
        );
        let c = with(
            claims(),
            "sub",
            json!("system:serviceaccount:kube-system:admin"),
        );
        let e = verify(&key.sign(&c), &set).unwrap_err();
        assert!(
            matches!(&e, AuthError::Malformed(m) if m.contains("sub")),
            "{e}"
        );
        let c = with(claims(), "kubernetes.io", json!({"namespace": 7}));
        let e = verify(&key.sign(&c), &set).unwrap_err();
        assert!(
            matches!(&e, AuthError::Malformed(m) if m.contains("claims")),
            "{e}"
        );
    }

    #[test]
    fn jwks_documents() {
        let key = TestKey::es256("k");
        assert!(Jwks::parse("not json").unwrap_err().contains("not a JWKS"));
        assert!(Jwks::parse(r#"{"keys": []}"#)
            .unwrap_err()
            .contains("no signing key"));
        let e = Jwks::parse(r#"{"keys": [{"kty": "oct", "k": "AAAA"}]}"#).unwrap_err();
        assert!(e.contains("\"oct\""), "{e}");
        let e =
            Jwks::parse(r#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}]}"#)
                .unwrap_err();
        assert!(e.contains("32 bytes"), "{e}");
        // An encryption key beside a signing key is skipped.
        let mut enc_key = key.jwk();
        enc_key["use"] = json!("enc");
        enc_key["kid"] = json!("e");
        let set = Jwks::parse(&json!({"keys": [enc_key, key.jwk()]}).to_string()).unwrap();
        assert_eq!(set.keys.len(), 1);
    }

    #[test]
    fn reason_labels() {
        let cases = [
            (AuthError::NoToken, "no_token"),
            (AuthError::Malformed("x".into()), "malformed"),
            (AuthError::BadSignature, "bad_signature"),
            (AuthError::UnknownKey("k".into()), "unknown_key"),
            (AuthError::Expired, "expired"),
            (AuthError::NotYetValid, "not_yet_valid"),
            (
                AuthError::WrongAudience {
                    got: vec![],
                    want: vec![],
                },
                "wrong_audience",
            ),
            (
                AuthError::WrongIssuer {
                    got: String::new(),
                    want: String::new(),
                },
                "wrong_issuer",
            ),
            (AuthError::UnknownCluster("c".into()), "unknown_cluster"),
            (AuthError::Review("r".into()), "review_failed"),
            (AuthError::Denied("d".into()), "denied"),
        ];
        let labels: std::collections::BTreeSet<_> =
            cases.iter().map(|(e, _)| e.reason_label()).collect();
        assert_eq!(labels.len(), cases.len(), "labels are distinct");
        for (e, label) in cases {
            assert_eq!(e.reason_label(), label, "{e}");
        }
    }

    fn mesh_with_issuer(dir: &std::path::Path, set: &[&TestKey]) -> MeshConfig {
        let path = dir.join("c1-jwks.json");
        std::fs::write(
            &path,
            json!({"keys": set.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string(),
        )
        .unwrap();
        let mut mesh = MeshConfig::parse(
            "clusters:\n- {name: c1, manifests: m, tokenIssuer: {issuer: \"https://kubernetes.default.svc.cluster.local\", jwks: c1-jwks.json}}\n- {name: c2, manifests: m}\n",
            dir,
        )
        .unwrap();
        mesh.token_audiences = vec!["istio-ca".into()];
        mesh
    }

    fn now_claims(exp_in: i64) -> serde_json::Value {
        let now = unix(SystemTime::now()) as i64;
        let c = with(claims(), "nbf", json!(now - 10));
        let c = with(c, "iat", json!(now - 10));
        with(c, "exp", json!(now + exp_in))
    }

    #[tokio::test]
    async fn authenticate_by_cluster_with_cache() {
        let dir = tempfile::tempdir().unwrap();
        let key = TestKey::es256("k");
        let mesh = mesh_with_issuer(dir.path(), &[&key]);
        let a = Authenticator::from_mesh(&mesh, KubeClients::from_mesh(&mesh));
        let token = key.sign(&now_claims(3600));
        let caller = a.authenticate("c1", &token).await.unwrap();
        assert_eq!(
            caller,
            Caller {
                cluster: "c1".into(),
                namespace: "shop".into(),
                service_account: "web".into(),
                pod_name: Some("web-0".into()),
                pod_uid: Some("pod-uid".into()),
            }
        );
        assert_eq!(
            a.authenticate("c1", &format!("Bearer {token}"))
                .await
                .unwrap(),
            caller
        );
        assert_eq!(a.authenticate("c1", "  ").await, Err(AuthError::NoToken));
        // A manifests cluster without tokenIssuer, and a cluster not in the mesh.
        for c in ["c2", "nowhere"] {
            assert_eq!(
                a.authenticate(c, &token).await,
                Err(AuthError::UnknownCluster(c.into()))
            );
        }
        // The cached result is used without the keys: drop the key from the JWKS
        // file, and the cached token still passes while a new one is refused.
        let other = TestKey::es256("o");
        std::fs::write(
            dir.path().join("c1-jwks.json"),
            json!({"keys": [other.jwk()]}).to_string(),
        )
        .unwrap();
        // Make sure the modification time moves even on coarse clocks.
        let f = std::fs::File::options()
            .write(true)
            .open(dir.path().join("c1-jwks.json"))
            .unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        assert_eq!(a.authenticate("c1", &token).await.unwrap(), caller);
        let fresh = key.sign(&now_claims(3599));
        assert_eq!(
            a.authenticate("c1", &fresh).await,
            Err(AuthError::UnknownKey("k".into()))
        );
        // Rotated keys are read: a token of the new key passes.
        assert!(a
            .authenticate("c1", &other.sign(&now_claims(3600)))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn failures_and_short_lived_tokens_are_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let key = TestKey::es256("k");
        let mesh = mesh_with_issuer(dir.path(), &[&key]);
        let a = Authenticator::from_mesh(&mesh, KubeClients::new());
        // Expired beyond the leeway: refused every time.
        let t = key.sign(&now_claims(-120));
        assert_eq!(a.authenticate("c1", &t).await, Err(AuthError::Expired));
        assert_eq!(a.authenticate("c1", &t).await, Err(AuthError::Expired));
        // The cache entry of a token lives until its exp, not CACHE_TTL.
        let t = key.sign(&now_claims(2));
        a.authenticate("c1", &t).await.unwrap();
        let k = cache_key("c1", &t);
        let until = a.cache.lock().unwrap().get(&k).map(|e| e.until).unwrap();
        assert!(
            until <= Instant::now() + Duration::from_secs(3),
            "cached past exp"
        );
        // A missing JWKS file is a verification failure naming the file.
        std::fs::remove_file(dir.path().join("c1-jwks.json")).unwrap();
        let fresh = Authenticator::from_mesh(&mesh, KubeClients::new());
        let e = fresh
            .authenticate("c1", &key.sign(&now_claims(600)))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, AuthError::Review(m) if m.contains("c1-jwks.json")),
            "{e}"
        );
    }

    #[test]
    fn token_ids_are_short_hashes() {
        let id = token_id("secret.token.value");
        assert_eq!(id.len(), 12);
        assert!(!id.contains("secret"));
        assert_ne!(id, token_id("secret.token.valuf"));
    }
}
