//! Authenticated xDS: the TLS port, who a proxy is, and its SDS secrets.
//!
//! - The TLS port (`xdsTlsAddress`) serves the same ADS service as the plaintext
//!   port, behind rustls with a server certificate from the mesh CA
//!   (`Ca::issue_server`), renewed at `renew_at` without a restart: the
//!   certificate resolver swaps it for new handshakes.
//! - A stream opened on the TLS port must carry `authorization: Bearer TOKEN`
//!   (Envoy's `file_based_metadata` call credentials send exactly that, read
//!   from the token file for every stream). The token is checked by the
//!   `Authenticator` against the proxy's own member cluster (node metadata
//!   `CLUSTER_ID`), and the caller it names must be the proxy the node claims to
//!   be: same namespace and service account, and, for a pod-bound token, the
//!   pod of the node id. Anything else ends the stream before it is registered
//!   (`UNAUTHENTICATED` for a missing or invalid token, `PERMISSION_DENIED` for
//!   a mismatch), counted by reason and logged without the token.
//! - An authenticated proxy gets two secrets of its own, with Istio's names:
//!   `default` (its key and certificate chain, for the identity the token
//!   proves, never the one the node claims) and `ROOTCA` (the trust bundle, one
//!   resource shared by every proxy while the bundle is unchanged). They are laid
//!   over the class snapshot's secrets per stream (`StreamState::
//!   set_own_secrets`), so the key material is the only per-proxy cost. The
//!   stream renews its certificate at `renew_at` and pushes the new `default`;
//!   Envoy swaps it in for new handshakes and keeps existing connections.
//! - The CA in force can be replaced while serving (`XdsSecurity::swap_ca`,
//!   driven by `watch_plug_in_ca` polling a plug-in `cacerts` directory). Every
//!   stream follows it (`StreamSecurity`): a new trust bundle is pushed as
//!   `ROOTCA` at once; a new signing certificate makes every stream renew its
//!   `default` at a random point of `ca.reissueWindow`, and the TLS port's own
//!   certificate is re-issued at once.
//! - A stream lives no longer than the token that opened it: when its `exp`
//!   (plus the verifier's clock-skew leeway) passes, the stream ends with
//!   `UNAUTHENTICATED` (counted as `expired`), and Envoy reconnects with the
//!   token its `file_based_metadata` reads from disk again, keeping its config.
//! - Secrets are never sent before they are asked for: Envoy subscribes to a
//!   secret when a cluster or listener that names it arrives, and keeps that
//!   cluster or listener warming until the secret does (SDS over ADS), so
//!   nothing that names a secret is ever used without it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret, TlsCertificate,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::Status;
use tracing::{debug, info, warn};

use super::resource::{Resource, ResourceMap, TypeUrl};
use crate::metrics::{metrics, ReasonLabel};
use crate::model::Proxy;
use crate::security::authn::{AuthError, Authenticator, Caller, LEEWAY};
use crate::security::ca::{renew_at, Ca, CaError, Identity, IssuedCert};

/// Istio's name of the workload key and certificate secret.
pub const DEFAULT_SECRET: &str = "default";
/// Istio's name of the trust bundle secret.
pub const ROOTCA_SECRET: &str = "ROOTCA";

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed renewal, try again this soon.
const RENEW_RETRY: Duration = Duration::from_secs(30);

/// Why a stream on the TLS port was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("authentication failed: {0}")]
    Auth(#[from] AuthError),
    #[error("the token is for namespace {token:?}, the node claims namespace {node:?}")]
    Namespace { token: String, node: String },
    #[error("the token is for service account {token:?}, the node claims {node:?}")]
    ServiceAccount { token: String, node: String },
    #[error("the token is bound to pod {token:?}, the node id names pod {node:?}")]
    Pod { token: String, node: String },
    #[error("the token was verified for cluster {token:?}, the node claims CLUSTER_ID {node:?}")]
    Cluster { token: String, node: String },
}

impl Refusal {
    /// The `reason` label of `citadel_server_authentication_failure_count`.
    pub fn reason_label(&self) -> &'static str {
        match self {
            Refusal::Auth(e) => e.reason_label(),
            Refusal::Namespace { .. } => "namespace_mismatch",
            Refusal::ServiceAccount { .. } => "service_account_mismatch",
            Refusal::Pod { .. } => "pod_mismatch",
            Refusal::Cluster { .. } => "cluster_mismatch",
        }
    }

    /// `UNAUTHENTICATED` when the token proves nothing (missing, invalid,
    /// rejected), `PERMISSION_DENIED` when it proves someone else.
    pub fn status(&self, proxy_id: &str) -> Status {
        let msg = format!("proxy {proxy_id}: {self}");
        match self {
            Refusal::Auth(AuthError::Review(_)) => Status::unavailable(msg),
            Refusal::Auth(_) => Status::unauthenticated(msg),
            _ => Status::permission_denied(msg),
        }
    }
}

/// Certificate facts of one proxy, for `/debug/certz`.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct CertInfo {
    pub identity: String,
    pub serial: String,
    /// Seconds since the Unix epoch.
    pub not_before: u64,
    pub not_after: u64,
    /// When the stream will renew it.
    pub renew_at: u64,
    /// Subject of the certificate that signed it (`ca-cert.pem`).
    pub issuer: String,
    /// The token that authenticated the stream: the first 12 hex digits of its
    /// SHA-256 (as in the logs), and its `exp` (Unix seconds; 0 when unknown).
    pub token: String,
    pub token_exp: u64,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl CertInfo {
    fn of(c: &IssuedCert, renew: SystemTime, issuer: String) -> CertInfo {
        CertInfo {
            identity: c.identity.spiffe_uri(),
            serial: c.serial_hex.clone(),
            not_before: unix(c.not_before),
            not_after: unix(c.not_after),
            renew_at: unix(renew),
            issuer,
            token: String::new(),
            token_exp: 0,
        }
    }
}

/// Versions of the CA in force, each bumped by `XdsSecurity::swap_ca` when
/// that part changed: `roots` (the trust bundle, `ROOTCA`) and `signer` (the
/// signing certificate and its chain, `default`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CaVersion {
    pub roots: u64,
    pub signer: u64,
}

/// What a swap of the CA changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaChange {
    pub roots: bool,
    pub signer: bool,
}

struct CurrentCa {
    ca: Arc<Ca>,
    version: CaVersion,
}

/// The CA and the authenticator behind the TLS port, plus the one `ROOTCA`
/// resource every proxy shares.
pub struct XdsSecurity {
    /// The CA in force. A std `RwLock` held only to clone or replace the `Arc`,
    /// never across an `.await`; signing happens on the clone.
    current: RwLock<CurrentCa>,
    /// The version of `current`, for streams and the TLS port to follow.
    versions: watch::Sender<CaVersion>,
    /// `ca.reissueWindow`.
    reissue_window: Duration,
    authn: Arc<Authenticator>,
    trust_domain: String,
    /// The trust bundle PEM and its encoded `ROOTCA` secret.
    rootca: Mutex<Option<(String, Arc<Resource>)>>,
}

impl XdsSecurity {
    pub fn new(
        ca: Arc<Ca>,
        authn: Arc<Authenticator>,
        trust_domain: String,
        reissue_window: Duration,
    ) -> XdsSecurity {
        let s = XdsSecurity {
            current: RwLock::new(CurrentCa {
                ca,
                version: CaVersion::default(),
            }),
            versions: watch::channel(CaVersion::default()).0,
            reissue_window,
            authn,
            trust_domain,
            rootca: Mutex::new(None),
        };
        s.update_root_metrics();
        s
    }

    /// The CA in force.
    pub fn ca(&self) -> Arc<Ca> {
        self.current().0
    }

    fn current(&self) -> (Arc<Ca>, CaVersion) {
        let c = self.current.read().unwrap_or_else(|e| e.into_inner());
        (c.ca.clone(), c.version)
    }

    /// Follow the versions of the CA in force.
    pub fn versions(&self) -> watch::Receiver<CaVersion> {
        self.versions.subscribe()
    }

    /// Make `new` the CA in force. Streams and the TLS port follow through
    /// `versions`: a changed bundle is pushed as `ROOTCA` at once, a changed
    /// signer has every certificate re-issued within `ca.reissueWindow`.
    pub fn swap_ca(&self, new: Ca) -> CaChange {
        let version = {
            let mut c = self.current.write().unwrap_or_else(|e| e.into_inner());
            let change = CaChange {
                roots: c.ca.trust_bundle_pem() != new.trust_bundle_pem(),
                signer: !c.ca.same_signer(&new),
            };
            if change.roots {
                c.version.roots += 1;
            }
            if change.signer {
                c.version.signer += 1;
            }
            c.ca = Arc::new(new);
            (change, c.version)
        };
        let (change, version) = version;
        self.update_root_metrics();
        self.versions.send_replace(version);
        change
    }

    fn update_root_metrics(&self) {
        let not_after = self.ca().root_not_after();
        let left = match not_after.duration_since(SystemTime::now()) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        metrics().root_expiry_days.set(left / 86_400.0);
        metrics()
            .root_expiry_timestamp
            .set(i64::try_from(unix(not_after)).unwrap_or(i64::MAX));
    }

    /// Authenticate `token` for `proxy` and check that the caller is the proxy
    /// the node claims to be. Returns the identity to certify: the token's.
    pub async fn authorize(&self, proxy: &Proxy, token: Option<&str>) -> Result<Identity, Refusal> {
        let token = match token {
            Some(t) if !t.is_empty() => t,
            _ => return Err(AuthError::NoToken.into()),
        };
        let caller = self.authn.authenticate(&proxy.cluster_id, token).await?;
        check_caller(proxy, &caller)?;
        Ok(Identity {
            trust_domain: self.trust_domain.clone(),
            namespace: caller.namespace,
            service_account: caller.service_account,
        })
    }

    /// Issue a workload certificate for `id` (CPU work: run off the async
    /// workers) and build the proxy's own secrets from it.
    pub async fn issue(self: &Arc<Self>, id: Identity) -> Result<Issued, String> {
        let (ca, version) = self.current();
        let issuer = ca.signer_subject();
        let cert = tokio::task::spawn_blocking(move || ca.issue(&id))
            .await
            .map_err(|e| format!("issuing a certificate: {e}"))?
            .map_err(|e: CaError| e.to_string())?;
        metrics().certs_issued.inc();
        self.update_root_metrics();
        let renew = renew_at(&cert);
        let info = CertInfo::of(&cert, renew, issuer);
        let mut m: BTreeMap<Arc<str>, Arc<Resource>> = BTreeMap::new();
        m.insert(Arc::from(DEFAULT_SECRET), default_secret(&cert));
        m.insert(Arc::from(ROOTCA_SECRET), self.rootca());
        Ok(Issued {
            secrets: Arc::new(m),
            renew_at: renew,
            info,
            version,
        })
    }

    /// The shared `ROOTCA` secret for the bundle in force.
    pub fn rootca(&self) -> Arc<Resource> {
        let bundle = self.ca().trust_bundle_pem();
        let mut cached = self.rootca.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((pem, r)) = &*cached {
            if *pem == bundle {
                return r.clone();
            }
        }
        let r = rootca_secret(&bundle);
        *cached = Some((bundle, r.clone()));
        r
    }
}

/// A random point of `[0, window)`.
fn random_within(window: Duration) -> Duration {
    let nanos = window.as_nanos();
    if nanos == 0 {
        return Duration::ZERO;
    }
    let mut b = [0u8; 16];
    // The system RNG failing is not recoverable anywhere; no spread then.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    let n = u128::from_le_bytes(b) % nanos;
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

/// The `exp` of a JWT (Unix seconds), read from its payload without checking
/// the signature: only for a token the authenticator has already accepted.
pub fn token_exp(token: &str) -> Option<u64> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("exp")?.as_u64()
}

/// How logs and `/debug/certz` name a token: the first 12 hex digits of its
/// SHA-256.
pub fn token_id(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// What an authenticated stream must do next (`StreamSecurity::next`).
pub enum StreamEvent {
    /// Issue a new certificate now (half life reached, or the signer changed).
    Renew,
    /// The trust bundle changed: push this `ROOTCA`.
    Roots(Arc<Resource>),
    /// The token that opened the stream has expired: end it.
    TokenExpired(Status),
}

/// The security side of one authenticated stream: when to renew its
/// certificate, which CA version its secrets come from, and when its token
/// runs out.
pub struct StreamSecurity {
    security: Arc<XdsSecurity>,
    versions: watch::Receiver<CaVersion>,
    /// The CA version the stream's secrets come from (`signer`: also when a
    /// re-issue is already scheduled for a newer one).
    held: CaVersion,
    renew: SystemTime,
    /// `exp` plus the verifier's leeway: the authenticator would refuse the
    /// token from then on.
    token_deadline: Option<SystemTime>,
    token: String,
    token_exp: u64,
    proxy_id: String,
}

impl StreamSecurity {
    /// For a stream authenticated with `token` whose first certificate is
    /// `issued`.
    pub fn new(
        security: Arc<XdsSecurity>,
        proxy_id: &str,
        token: Option<&str>,
        issued: &Issued,
    ) -> StreamSecurity {
        let exp = token.and_then(token_exp);
        StreamSecurity {
            versions: security.versions(),
            security,
            held: issued.version,
            renew: issued.renew_at,
            token_deadline: exp.map(|e| SystemTime::UNIX_EPOCH + Duration::from_secs(e) + LEEWAY),
            token: token.map(token_id).unwrap_or_default(),
            token_exp: exp.unwrap_or(0),
            proxy_id: proxy_id.to_string(),
        }
    }

    pub fn security(&self) -> &Arc<XdsSecurity> {
        &self.security
    }

    /// `info` with the stream's token facts, for `/debug/certz`.
    pub fn describe(&self, mut info: CertInfo) -> CertInfo {
        info.token = self.token.clone();
        info.token_exp = self.token_exp;
        info
    }

    /// A new certificate is in force on the stream.
    pub fn renewed(&mut self, issued: &Issued) {
        self.renew = issued.renew_at;
        self.held.signer = self.held.signer.max(issued.version.signer);
    }

    /// Renewal failed: try again after `retry`.
    pub fn retry_in(&mut self, retry: Duration) {
        self.renew = SystemTime::now() + retry;
    }

    /// Wait for what the stream must do next. Cancel-safe: state changes only
    /// after an event is decided.
    pub async fn next(&mut self) -> StreamEvent {
        loop {
            let now_version = *self.versions.borrow_and_update();
            if now_version.signer > self.held.signer {
                // Every certificate of the old signer is replaced within the
                // window, spread so that proxies do not all ask at once.
                self.held.signer = now_version.signer;
                let at = SystemTime::now() + random_within(self.security.reissue_window);
                self.renew = self.renew.min(at);
                debug!(
                    renew_at = unix(self.renew),
                    "signing certificate changed: certificate re-issue scheduled"
                );
            }
            if now_version.roots > self.held.roots {
                self.held.roots = now_version.roots;
                return StreamEvent::Roots(self.security.rootca());
            }
            tokio::select! {
                _ = sleep_until_system(Some(self.renew)) => return StreamEvent::Renew,
                _ = sleep_until_system(self.token_deadline) => {
                    let r = Refusal::Auth(AuthError::Expired);
                    metrics()
                        .auth_failures
                        .get_or_create(&ReasonLabel { reason: r.reason_label().to_string() })
                        .inc();
                    warn!(proxy = %self.proxy_id, token = %self.token, reason = r.reason_label(),
                        "the token of an xDS stream expired: stream ended, the proxy reconnects with its current token");
                    let msg = format!(
                        "proxy {}: the service-account token of this stream expired; reconnect with a current token",
                        self.proxy_id
                    );
                    return StreamEvent::TokenExpired(Status::unauthenticated(msg));
                }
                changed = self.versions.changed() => {
                    if changed.is_err() {
                        // The security context is gone with the process.
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }
}

/// Sleep until the wall-clock time `at`, or forever without one. Re-armed on
/// every call, so a clock step is noticed at the next call at the latest.
async fn sleep_until_system(at: Option<SystemTime>) {
    match at {
        Some(t) => {
            let wait = t
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait).await
        }
        None => std::future::pending().await,
    }
}

/// Poll the plug-in `cacerts` directory of the CA in force every `interval`
/// and swap in a changed set of files once it is complete and valid. A set is
/// read only once its digest has stayed the same for one interval (files
/// written one by one are not read half-way); a refused set is reported once
/// per content through `report` (with `None` when the files on disk are in
/// force again), logged and counted, and the CA in force keeps signing.
pub async fn watch_plug_in_ca(
    security: Arc<XdsSecurity>,
    interval: Duration,
    report: impl Fn(Option<&CaError>) + Send + 'static,
) {
    let ca = security.ca();
    let (dir, generated) = ca.source();
    if generated {
        return;
    }
    let dir = dir.to_owned();
    let digest_of = |dir: PathBuf| async move {
        tokio::task::spawn_blocking(move || Ca::files_digest(&dir))
            .await
            .ok()
    };
    let Some(mut in_force) = digest_of(dir.clone()).await else {
        return;
    };
    let mut last_seen = in_force;
    let mut refused: Option<[u8; 32]> = None;
    info!(dir = %dir.display(), ?interval, "watching the plug-in CA directory");
    loop {
        tokio::time::sleep(interval).await;
        let Some(seen) = digest_of(dir.clone()).await else {
            continue;
        };
        let settled = seen == last_seen;
        last_seen = seen;
        if seen == in_force {
            if refused.take().is_some() {
                metrics().ca_reload_refused.set(0);
                report(None);
            }
            continue;
        }
        if !settled || refused == Some(seen) {
            continue;
        }
        let current = security.ca();
        let loaded = tokio::task::spawn_blocking(move || current.reload()).await;
        match loaded {
            Ok(Ok(new)) => {
                let signer = new.signer_subject();
                let change = security.swap_ca(new);
                in_force = seen;
                refused = None;
                metrics()
                    .ca_reloads
                    .get_or_create(&crate::metrics::ResultLabel {
                        result: "applied".into(),
                    })
                    .inc();
                metrics().ca_reload_refused.set(0);
                report(None);
                info!(dir = %dir.display(), roots_changed = change.roots, signer_changed = change.signer,
                    %signer, "plug-in CA reloaded");
            }
            Ok(Err(e)) => {
                refused = Some(seen);
                metrics()
                    .ca_reloads
                    .get_or_create(&crate::metrics::ResultLabel {
                        result: "refused".into(),
                    })
                    .inc();
                metrics().ca_reload_refused.set(1);
                warn!(error = %e, "changed plug-in CA files refused; the CA in force keeps signing");
                report(Some(&e));
            }
            Err(e) => warn!(error = %e, "reading the plug-in CA failed"),
        }
    }
}

/// One issuance: the proxy's own secrets and when to renew them.
pub struct Issued {
    pub secrets: ResourceMap,
    pub renew_at: SystemTime,
    pub info: CertInfo,
    /// The version of the CA that issued it.
    pub version: CaVersion,
}

/// The caller a token proves must be the proxy its node claims.
pub fn check_caller(proxy: &Proxy, caller: &Caller) -> Result<(), Refusal> {
    if caller.cluster != proxy.cluster_id {
        return Err(Refusal::Cluster {
            token: caller.cluster.clone(),
            node: proxy.cluster_id.clone(),
        });
    }
    if caller.namespace != proxy.namespace {
        return Err(Refusal::Namespace {
            token: caller.namespace.clone(),
            node: proxy.namespace.clone(),
        });
    }
    if caller.service_account != proxy.service_account {
        return Err(Refusal::ServiceAccount {
            token: caller.service_account.clone(),
            node: proxy.service_account.clone(),
        });
    }
    if let Some(pod) = &caller.pod_name {
        if *pod != proxy.pod_name {
            return Err(Refusal::Pod {
                token: pod.clone(),
                node: proxy.pod_name.clone(),
            });
        }
    }
    Ok(())
}

/// Count and log a refusal (never the token).
pub fn record_refusal(proxy: &Proxy, r: &Refusal) {
    metrics()
        .auth_failures
        .get_or_create(&ReasonLabel {
            reason: r.reason_label().to_string(),
        })
        .inc();
    warn!(proxy = %proxy.id, reason = r.reason_label(), error = %r, "xDS stream refused");
}

fn inline(bytes: &[u8]) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(bytes.to_vec())),
        ..Default::default()
    })
}

/// `default`: the workload's key and chain (an Envoy `tls_certificate`).
fn default_secret(c: &IssuedCert) -> Arc<Resource> {
    let s = Secret {
        name: DEFAULT_SECRET.into(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(c.cert_chain_pem.as_bytes()),
            private_key: inline(c.key_pem.as_bytes()),
            ..Default::default()
        })),
    };
    Resource::encode(TypeUrl::Secret, DEFAULT_SECRET, &s)
}

/// `ROOTCA`: the trust bundle (an Envoy `validation_context`).
fn rootca_secret(bundle_pem: &str) -> Arc<Resource> {
    let s = Secret {
        name: ROOTCA_SECRET.into(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: inline(bundle_pem.as_bytes()),
                ..Default::default()
            },
        )),
    };
    Resource::encode(TypeUrl::Secret, ROOTCA_SECRET, &s)
}

/// The bearer token of a request, from `authorization: Bearer TOKEN`.
pub fn bearer_token(
    headers: &tonic::codegen::http::HeaderMap,
) -> Option<zeroize::Zeroizing<String>> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    Some(zeroize::Zeroizing::new(token.trim().to_string()))
}

// ---- the TLS listener ----

/// The server certificate of the TLS port, swapped in place when renewed.
#[derive(Debug)]
struct ServerCert {
    current: RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl rustls::server::ResolvesServerCert for ServerCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn certified_key(c: &IssuedCert) -> Result<rustls::sign::CertifiedKey, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(c.cert_chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("server certificate chain: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())
        .map_err(|e| format!("server key: {e}"))?;
    let signer = crate::tls::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("server key: {e}"))?;
    Ok(rustls::sign::CertifiedKey::new(chain, signer))
}

pub use crate::security::ca::server_names;

/// A TLS connection accepted on the xDS TLS port, as tonic serves it.
pub type TlsIo = crate::tls::ServerTlsIo<tonic::transport::server::TcpConnectInfo>;

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serve ADS over TLS on `listener` until `shutdown` resolves. `names`: extra
/// DNS names for the server certificate.
pub async fn serve_tls(
    listener: TcpListener,
    ads: super::server::AdsServer,
    security: Arc<XdsSecurity>,
    names: Vec<String>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), super::server::ServeError> {
    let local = listener.local_addr();
    let addr = local
        .as_ref()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let listen_ip = local
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let (dns, ips) = server_names(Some(listen_ip), &names);
    let tls_err = |reason: String| super::server::ServeError::Tls {
        addr: addr.clone(),
        reason,
    };
    let mut versions = security.versions();
    let first = security
        .ca()
        .issue_server(&dns, &ips)
        .map_err(|e| tls_err(e.to_string()))?;
    let resolver = Arc::new(ServerCert {
        current: RwLock::new(Arc::new(certified_key(&first).map_err(&tls_err)?)),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    // Renew the server certificate at half life, and at once when the signing
    // certificate changes (new handshakes then get one from the new signer).
    let renewer = {
        let security = security.clone();
        let resolver = resolver.clone();
        let mut next = renew_at(&first);
        let mut signer = versions.borrow_and_update().signer;
        AbortOnDrop(tokio::spawn(async move {
            loop {
                let wait = next
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    changed = versions.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let now = versions.borrow_and_update().signer;
                        if now == signer {
                            continue;
                        }
                        signer = now;
                    }
                }
                // Days until the root expires keep counting down while idle.
                security.update_root_metrics();
                let (ca, dns, ips) = (security.ca(), dns.clone(), ips.clone());
                let issued = tokio::task::spawn_blocking(move || ca.issue_server(&dns, &ips))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
                    .and_then(|c| certified_key(&c).map(|k| (c, k)));
                match issued {
                    Ok((c, k)) => {
                        *resolver.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(k);
                        next = renew_at(&c);
                        info!(serial = %c.serial_hex, "xDS TLS server certificate renewed");
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot renew the xDS TLS server certificate; retrying");
                        next = SystemTime::now() + RENEW_RETRY;
                    }
                }
            }
        }))
    };

    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<TlsIo>>(64);
    let accept = AbortOnDrop(tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    debug!(error = %e, "accept on the xDS TLS port failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => {
                        let info = tonic::transport::server::Connected::connect_info(s.get_ref().0);
                        let _ = tx.send(Ok(TlsIo::new(s, info))).await;
                    }
                    Ok(Err(e)) => {
                        metrics()
                            .auth_failures
                            .get_or_create(&ReasonLabel {
                                reason: "tls_handshake".into(),
                            })
                            .inc();
                        info!(%peer, error = %e, "TLS handshake on the xDS TLS port failed");
                    }
                    Err(_) => debug!(%peer, "TLS handshake on the xDS TLS port timed out"),
                }
            });
        }
    }));
    info!(%addr, "xDS TLS server listening");
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
    let r = super::server::serve_incoming(incoming, ads.clone(), ads.secure(security), shutdown)
        .await
        .map_err(|source| super::server::ServeError::Transport { addr, source });
    drop(accept);
    drop(renewer);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::Node;
    use prost::Message;

    #[test]
    fn server_names_put_ip_addresses_into_ip_sans() {
        let names = [
            "crossmesh".to_string(),
            "10.1.2.3".into(),
            "hub.example".into(),
        ];
        let (dns, ips) = server_names(Some("0.0.0.0".parse().unwrap()), &names);
        assert_eq!(dns, ["crossmesh", "hub.example", "localhost"]);
        let ips: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, ["127.0.0.1", "::1", "10.1.2.3"]);
        let (_, ips) = server_names(Some("127.0.0.9".parse().unwrap()), &[]);
        assert_eq!(ips.len(), 3, "the listen address when it is not a wildcard");
    }

    fn proxy() -> Proxy {
        let node = Node {
            id: "sidecar~10.0.0.1~web-0.shop~shop.svc.cluster.local".into(),
            ..Default::default()
        };
        let mut p = Proxy::from_node(&node).expect("node");
        p.service_account = "web".into();
        p.cluster_id = "c1".into();
        p
    }

    fn caller() -> Caller {
        Caller {
            cluster: "c1".into(),
            namespace: "shop".into(),
            service_account: "web".into(),
            pod_name: Some("web-0".into()),
            pod_uid: None,
        }
    }

    #[test]
    fn the_caller_must_be_the_proxy_it_claims() {
        assert!(check_caller(&proxy(), &caller()).is_ok());
        // A token not bound to a pod is checked on namespace and account only.
        let unbound = Caller {
            pod_name: None,
            ..caller()
        };
        assert!(check_caller(&proxy(), &unbound).is_ok());
        let cases: [(Caller, &str); 4] = [
            (
                Caller {
                    namespace: "other".into(),
                    ..caller()
                },
                "namespace_mismatch",
            ),
            (
                Caller {
                    service_account: "admin".into(),
                    ..caller()
                },
                "service_account_mismatch",
            ),
            (
                Caller {
                    pod_name: Some("web-1".into()),
                    ..caller()
                },
                "pod_mismatch",
            ),
            (
                Caller {
                    cluster: "c2".into(),
                    ..caller()
                },
                "cluster_mismatch",
            ),
        ];
        for (c, label) in cases {
            let r = check_caller(&proxy(), &c).expect_err(label);
            assert_eq!(r.reason_label(), label);
            assert_eq!(
                r.status(&proxy().id).code(),
                tonic::Code::PermissionDenied,
                "{label}"
            );
        }
        let none = Refusal::Auth(AuthError::NoToken);
        assert_eq!(none.status("p").code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn bearer_token_from_the_authorization_header() {
        let mut h = tonic::codegen::http::HeaderMap::new();
        assert!(bearer_token(&h).is_none());
        h.insert("authorization", "Bearer abc.def.ghi".parse().unwrap());
        assert_eq!(
            bearer_token(&h).as_deref().map(|s| s.as_str()),
            Some("abc.def.ghi")
        );
        h.insert("authorization", "bearer xyz".parse().unwrap());
        assert_eq!(bearer_token(&h).as_deref().map(|s| s.as_str()), Some("xyz"));
        h.insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
        assert!(bearer_token(&h).is_none());
    }

    /// A self-signed CA certificate `cn` and its key (PEM).
    fn test_root(cn: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let cert = p.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// `cacerts` signing with `signer`, trusting `roots`.
    fn write_cacerts(
        dir: &std::path::Path,
        signer: &(String, String),
        roots: &[&(String, String)],
    ) {
        use crate::security::ca::{CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE};
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(CA_CERT_FILE), &signer.0).unwrap();
        std::fs::write(dir.join(CA_KEY_FILE), &signer.1).unwrap();
        let bundle: String = roots.iter().map(|r| r.0.as_str()).collect();
        std::fs::write(dir.join(ROOT_CERT_FILE), bundle).unwrap();
        std::fs::write(dir.join(CERT_CHAIN_FILE), "").unwrap();
    }

    fn security_over(dir: &std::path::Path, window: Duration) -> Arc<XdsSecurity> {
        crate::tls::install_default_provider();
        let mut mesh = crate::config::MeshConfig::default();
        mesh.ca.configured = true;
        mesh.ca.dir = Some(dir.to_owned());
        let ca = Arc::new(Ca::from_mesh(&mesh).expect("ca"));
        let authn = Arc::new(Authenticator::from_mesh(
            &mesh,
            crate::security::authn::KubeClients::new(),
        ));
        Arc::new(XdsSecurity::new(ca, authn, "cluster.local".into(), window))
    }

    fn web() -> Identity {
        Identity {
            trust_domain: "cluster.local".into(),
            namespace: "shop".into(),
            service_account: "web".into(),
        }
    }

    fn bundle_of(r: &Resource) -> String {
        let any = envoy_types::pb::google::protobuf::Any::decode(r.any.as_ref()).unwrap();
        match Secret::decode(any.value.as_slice()).unwrap().r#type {
            Some(secret::Type::ValidationContext(v)) => match v.trusted_ca.unwrap().specifier {
                Some(Specifier::InlineBytes(b)) => String::from_utf8(b).unwrap(),
                other => panic!("{other:?}"),
            },
            other => panic!("not a validation context: {other:?}"),
        }
    }

    async fn next_within(s: &mut StreamSecurity, d: Duration) -> Option<StreamEvent> {
        tokio::time::timeout(d, s.next()).await.ok()
    }

    /// The three rotation steps on a stream: adding a root pushes `ROOTCA` at
    /// once and re-issues nothing; a new signer re-issues within the window
    /// (not at half life); dropping the old root pushes `ROOTCA` again.
    #[tokio::test]
    async fn a_swapped_ca_pushes_the_bundle_and_reissues_within_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (test_root("Old Root"), test_root("New Root"));
        write_cacerts(dir.path(), &old, &[&old]);
        let sec = security_over(dir.path(), Duration::from_millis(300));
        let first = sec.issue(web()).await.unwrap();
        assert!(
            first.info.issuer.contains("Old Root"),
            "{}",
            first.info.issuer
        );
        let mut stream = StreamSecurity::new(sec.clone(), "p", None, &first);
        assert!(next_within(&mut stream, Duration::from_millis(100))
            .await
            .is_none());

        // 1. Add the new root.
        write_cacerts(dir.path(), &old, &[&old, &new]);
        let change = sec.swap_ca(sec.ca().reload().unwrap());
        assert_eq!(
            change,
            CaChange {
                roots: true,
                signer: false
            }
        );
        match next_within(&mut stream, Duration::from_secs(1)).await {
            Some(StreamEvent::Roots(r)) => {
                let b = bundle_of(&r);
                assert!(b.contains(&old.0) && b.contains(&new.0), "{b}");
            }
            _ => panic!("no ROOTCA push after adding a root"),
        }
        assert!(
            next_within(&mut stream, Duration::from_millis(600))
                .await
                .is_none(),
            "a new root alone re-issued a certificate"
        );

        // 2. Sign with the new root: a re-issue within the 300 ms window.
        write_cacerts(dir.path(), &new, &[&old, &new]);
        let change = sec.swap_ca(sec.ca().reload().unwrap());
        assert_eq!(
            change,
            CaChange {
                roots: false,
                signer: true
            }
        );
        let t = std::time::Instant::now();
        match next_within(&mut stream, Duration::from_secs(2)).await {
            Some(StreamEvent::Renew) => {}
            _ => panic!("no re-issue after the signer changed"),
        }
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        let second = sec.issue(web()).await.unwrap();
        assert!(
            second.info.issuer.contains("New Root"),
            "{}",
            second.info.issuer
        );
        stream.renewed(&second);
        assert!(next_within(&mut stream, Duration::from_millis(600))
            .await
            .is_none());

        // 3. Drop the old root.
        write_cacerts(dir.path(), &new, &[&new]);
        sec.swap_ca(sec.ca().reload().unwrap());
        match next_within(&mut stream, Duration::from_secs(1)).await {
            Some(StreamEvent::Roots(r)) => {
                let b = bundle_of(&r);
                assert!(b.contains(&new.0) && !b.contains(&old.0), "{b}");
            }
            _ => panic!("no ROOTCA push after dropping a root"),
        }
        // A stream opened from now on gets the new bundle with its certificate.
        let third = sec.issue(web()).await.unwrap();
        assert!(!bundle_of(&third.secrets[ROOTCA_SECRET]).contains(&old.0));
    }

    /// The watcher swaps in a good new set, refuses a bad one naming the file
    /// (the CA in force keeps signing), and clears the refusal once the files
    /// are good again.
    #[tokio::test]
    async fn the_plug_in_directory_is_watched() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (test_root("Root A"), test_root("Root B"));
        write_cacerts(dir.path(), &a, &[&a]);
        let sec = security_over(dir.path(), Duration::from_secs(1));
        let reports: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let seen = reports.clone();
        let task = tokio::spawn(watch_plug_in_ca(
            sec.clone(),
            Duration::from_millis(20),
            move |e| seen.lock().unwrap().push(e.map(|e| e.to_string())),
        ));
        let mut versions = sec.versions();
        tokio::time::sleep(Duration::from_millis(60)).await;
        write_cacerts(dir.path(), &b, &[&a, &b]);
        tokio::time::timeout(Duration::from_secs(5), versions.changed())
            .await
            .expect("the new set is swapped in")
            .unwrap();
        assert!(sec.ca().signer_subject().contains("Root B"));

        // The key of another certificate: refused, Root B keeps signing.
        std::fs::write(dir.path().join(crate::security::ca::CA_KEY_FILE), &a.1).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let refusal = loop {
            let r = reports.lock().unwrap().iter().flatten().last().cloned();
            if let Some(r) = r {
                break r;
            }
            assert!(std::time::Instant::now() < deadline, "no refusal reported");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            refusal.contains("ca-key.pem") && refusal.contains("does not match"),
            "{refusal}"
        );
        assert!(sec.ca().signer_subject().contains("Root B"));
        assert!(sec
            .issue(web())
            .await
            .unwrap()
            .info
            .issuer
            .contains("Root B"));

        // Good again: the refusal is withdrawn.
        std::fs::write(dir.path().join(crate::security::ca::CA_KEY_FILE), &b.1).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while reports.lock().unwrap().last() != Some(&None) {
            assert!(
                std::time::Instant::now() < deadline,
                "refusal not withdrawn"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        task.abort();
    }

    /// A stream ends with UNAUTHENTICATED once its token's `exp` plus the
    /// leeway passes, counted as `expired`.
    #[tokio::test]
    async fn a_stream_ends_when_its_token_expires() {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let a = test_root("Root A");
        write_cacerts(dir.path(), &a, &[&a]);
        let sec = security_over(dir.path(), Duration::from_secs(1));
        let issued = sec.issue(web()).await.unwrap();
        let exp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - LEEWAY.as_secs()
            + 1;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let token = format!(
            "{}.{}.c2ln",
            b64(serde_json::json!({"alg": "ES256"})),
            b64(serde_json::json!({"exp": exp}))
        );
        assert_eq!(token_exp(&token), Some(exp));
        let label = ReasonLabel {
            reason: "expired".into(),
        };
        let before = metrics().auth_failures.get_or_create(&label).get();
        let mut stream = StreamSecurity::new(sec.clone(), "p", Some(&token), &issued);
        let info = stream.describe(issued.info.clone());
        assert_eq!((info.token.len(), info.token_exp), (12, exp));
        match next_within(&mut stream, Duration::from_secs(4)).await {
            Some(StreamEvent::TokenExpired(status)) => {
                assert_eq!(status.code(), tonic::Code::Unauthenticated);
                assert!(status.message().contains("expired"), "{status:?}");
            }
            _ => panic!("the stream outlived its token"),
        }
        assert_eq!(
            metrics().auth_failures.get_or_create(&label).get(),
            before + 1
        );
        // Without a token deadline nothing ends the stream.
        let mut open = StreamSecurity::new(sec, "p", None, &issued);
        assert!(next_within(&mut open, Duration::from_millis(300))
            .await
            .is_none());
    }

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// The per-proxy cost of SDS: issue 2,000 workload certificates (key, chain,
    /// `default` resource) as 2,000 authenticated streams would, and report the
    /// time and the memory they hold. A measurement: `cargo test --lib
    /// xds::secure -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn issue_2000_certificates() {
        crate::tls::install_default_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut mesh = crate::config::MeshConfig::default();
        mesh.ca.configured = true;
        mesh.ca.state_dir = dir.path().join("ca");
        let ca = Arc::new(Ca::from_mesh(&mesh).expect("ca"));
        let authn = Arc::new(Authenticator::from_mesh(
            &mesh,
            crate::security::authn::KubeClients::new(),
        ));
        let sec = Arc::new(XdsSecurity::new(
            ca,
            authn,
            "cluster.local".into(),
            Duration::from_secs(30),
        ));
        let before = rss_kib();
        let start = std::time::Instant::now();
        let mut held = Vec::with_capacity(2000);
        for i in 0..2000 {
            let id = Identity {
                trust_domain: "cluster.local".into(),
                namespace: format!("ns{}", i % 50),
                service_account: format!("sa{i}"),
            };
            held.push(sec.issue(id).await.expect("issue"));
        }
        let took = start.elapsed();
        let after = rss_kib();
        let default_bytes: usize = held
            .iter()
            .map(|i| i.secrets[DEFAULT_SECRET].any.len())
            .sum();
        let roots: std::collections::HashSet<*const Resource> = held
            .iter()
            .map(|i| Arc::as_ptr(&i.secrets[ROOTCA_SECRET]))
            .collect();
        assert_eq!(roots.len(), 1, "ROOTCA is shared");
        let any = envoy_types::pb::google::protobuf::Any::decode(
            held[0].secrets[DEFAULT_SECRET].any.as_ref(),
        )
        .expect("any");
        let s = Secret::decode(any.value.as_slice()).expect("secret");
        assert_eq!(s.name, DEFAULT_SECRET);
        eprintln!(
            "2,000 certificates: {:.2} s ({:.2} ms each); `default` resources {} B/proxy; RSS +{} KiB ({} B/proxy)",
            took.as_secs_f64(),
            took.as_secs_f64() * 1000.0 / 2000.0,
            default_bytes / 2000,
            after.saturating_sub(before),
            after.saturating_sub(before) * 1024 / 2000
        );
    }
}
