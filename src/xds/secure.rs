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
//! - Secrets are never sent before they are asked for: Envoy subscribes to a
//!   secret when a cluster or listener that names it arrives, and keeps that
//!   cluster or listener warming until the secret does (SDS over ADS), so
//!   nothing that names a secret is ever used without it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret, TlsCertificate,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::Status;
use tracing::{debug, info, warn};

use super::resource::{Resource, ResourceMap, TypeUrl};
use crate::metrics::{metrics, ReasonLabel};
use crate::model::Proxy;
use crate::security::authn::{AuthError, Authenticator, Caller};
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
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl CertInfo {
    fn of(c: &IssuedCert, renew: SystemTime) -> CertInfo {
        CertInfo {
            identity: c.identity.spiffe_uri(),
            serial: c.serial_hex.clone(),
            not_before: unix(c.not_before),
            not_after: unix(c.not_after),
            renew_at: unix(renew),
        }
    }
}

/// The CA and the authenticator behind the TLS port, plus the one `ROOTCA`
/// resource every proxy shares.
pub struct XdsSecurity {
    ca: Arc<Ca>,
    authn: Arc<Authenticator>,
    trust_domain: String,
    /// The trust bundle PEM and its encoded `ROOTCA` secret.
    rootca: Mutex<Option<(String, Arc<Resource>)>>,
}

impl XdsSecurity {
    pub fn new(ca: Arc<Ca>, authn: Arc<Authenticator>, trust_domain: String) -> XdsSecurity {
        let s = XdsSecurity {
            ca,
            authn,
            trust_domain,
            rootca: Mutex::new(None),
        };
        s.update_root_metrics();
        s
    }

    pub fn ca(&self) -> &Arc<Ca> {
        &self.ca
    }

    fn update_root_metrics(&self) {
        let not_after = self.ca.root_not_after();
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
        let me = self.clone();
        let cert = tokio::task::spawn_blocking(move || me.ca.issue(&id))
            .await
            .map_err(|e| format!("issuing a certificate: {e}"))?
            .map_err(|e: CaError| e.to_string())?;
        metrics().certs_issued.inc();
        self.update_root_metrics();
        let renew = renew_at(&cert);
        let info = CertInfo::of(&cert, renew);
        let mut m: BTreeMap<Arc<str>, Arc<Resource>> = BTreeMap::new();
        m.insert(Arc::from(DEFAULT_SECRET), default_secret(&cert));
        m.insert(Arc::from(ROOTCA_SECRET), self.rootca());
        Ok(Issued {
            secrets: Arc::new(m),
            renew_at: renew,
            info,
        })
    }

    /// The shared `ROOTCA` secret for the bundle in force.
    fn rootca(&self) -> Arc<Resource> {
        let bundle = self.ca.trust_bundle_pem();
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

/// One issuance: the proxy's own secrets and when to renew them.
pub struct Issued {
    pub secrets: ResourceMap,
    pub renew_at: SystemTime,
    pub info: CertInfo,
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

/// The names the server certificate covers: the listen IP (unless a wildcard),
/// loopback, and `names` (DNS names proxies dial).
fn server_names(listen: IpAddr, names: &[String]) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns: Vec<String> = vec!["localhost".into()];
    dns.extend(names.iter().cloned());
    dns.sort();
    dns.dedup();
    let mut ips: Vec<IpAddr> = vec![
        IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    ];
    if !listen.is_unspecified() && !ips.contains(&listen) {
        ips.push(listen);
    }
    (dns, ips)
}

/// A TLS connection accepted on the xDS TLS port, as tonic serves it.
pub struct TlsIo(tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

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
    let (dns, ips) = server_names(listen_ip, &names);
    let tls_err = |reason: String| super::server::ServeError::Tls {
        addr: addr.clone(),
        reason,
    };
    let first = security
        .ca
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

    // Renew the server certificate at half life.
    let renewer = {
        let security = security.clone();
        let resolver = resolver.clone();
        let mut next = renew_at(&first);
        AbortOnDrop(tokio::spawn(async move {
            loop {
                let wait = next
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tokio::time::sleep(wait).await;
                // Days until the root expires keep counting down while idle.
                security.update_root_metrics();
                let (ca, dns, ips) = (security.ca.clone(), dns.clone(), ips.clone());
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
                        let _ = tx.send(Ok(TlsIo(s))).await;
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
        let sec = Arc::new(XdsSecurity::new(ca, authn, "cluster.local".into()));
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
