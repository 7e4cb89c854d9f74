//! The agent's sidecar-injection webhook and the trust it hands on (issue 13
//! item 5, DESIGN.md §5): what `crossmesh agent` serves inside its member
//! cluster so that injection works without the cluster ever reaching the hub.
//!
//! - [`Trust`]: the mesh's trust bundle as the agent knows it: `--root-cert` at
//!   first, then what the hub returned at enrolment and sends on every change
//!   (`HubMessage.trust_bundle`), kept in the agent's state. It verifies the hub
//!   on the next connection, is the webhook configuration's `caBundle` and the
//!   root ConfigMap sidecars mount. When the hub names a signer other than the
//!   one the agent's certificates came from, the agent renews them at once.
//! - [`Webhook`]: the HTTPS server on `--webhook-address` (Istio's 15017)
//!   serving `POST /inject` (AdmissionReview v1, answered by
//!   [`super::inject::review`]). Its serving certificate names the webhook
//!   Service (`<service>.<namespace>.svc`), is signed
//!   by the mesh CA over Enroll/Renew with a key of its own (never the client
//!   key), kept in the agent's state next to the client certificate (so a
//!   restarted agent serves with the hub unreachable) and swapped in without a
//!   restart when renewed.
//! - Upkeep: `webhooks[*].clientConfig.caBundle` of one
//!   MutatingWebhookConfiguration (`--webhook-config`) is kept equal to the
//!   bundle (GET, then PUT when it differs; at start, on every change, and
//!   every [`RESYNC`] against edits by others), and the bundle is published as
//!   the ConfigMap `crossmesh-ca-root-cert` in every namespace
//!   (`security::root_publisher::spawn_cluster_wide`).
//!
//! Bad requests never reach the injector: a method other than POST (405), a
//! path other than `/inject` (404), a content type other than JSON (415), a body
//! over [`MAX_BODY_BYTES`] (413) or not read within [`BODY_TIMEOUT`] (408) get a
//! plain-text reason. TLS handshakes have [`HANDSHAKE_TIMEOUT`], and a
//! connection idle for [`IDLE_TIMEOUT`] is closed.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use super::inject::{self, InjectConfig};
use super::state::StateStore;
use super::AgentError;

/// The webhook's serving certificate chain in the agent's state.
pub const WEBHOOK_CERT_FILE: &str = "webhook-cert-chain.pem";
/// Its private key (mode 0600 in a state directory).
pub const WEBHOOK_KEY_FILE: &str = "webhook-key.pem";
/// Istio's injection path.
pub const INJECT_PATH: &str = "/inject";
/// Largest request body accepted: an AdmissionReview of the largest Pod etcd
/// stores (1.5 MiB by default) with room to spare.
pub const MAX_BODY_BYTES: usize = 4 << 20;
/// The API server waits `timeoutSeconds` (default 10 s) for a webhook: a body not
/// received by then is of no use.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often the webhook configuration's caBundle is compared again.
pub const RESYNC: Duration = Duration::from_secs(30);
/// Kubernetes version from which Envoy runs as a native sidecar.
pub const NATIVE_SIDECARS_FROM: (u32, u32) = (1, 29);

/// `crossmesh agent --webhook-*` options.
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    /// `--webhook-address`.
    pub address: SocketAddr,
    /// `--webhook-service`: the Service the API server calls the webhook by.
    pub service: String,
    /// The agent's namespace (`--namespace`, downward API), the Service's.
    pub namespace: String,
    /// `--webhook-config`: the MutatingWebhookConfiguration whose caBundle the
    /// agent keeps.
    pub config_name: String,
    /// What injection adds; `native_sidecars` is decided from the API server's
    /// version at start.
    pub inject: InjectConfig,
}

impl WebhookOptions {
    /// The serving certificate's DNS name: `<service>.<namespace>.svc`, the name
    /// the API server calls a webhook Service by (a `.svc.<domainSuffix>` name
    /// is left out: an agent flag differing from the hub's `domainSuffix` would
    /// get the whole request refused).
    pub fn dns_names(&self) -> Vec<String> {
        vec![format!("{}.{}.svc", self.service, self.namespace)]
    }
}

/// The agent's trust and, with `opts`, its webhook: the server bound to
/// `--webhook-address` (a bad address fails the start), the caBundle upkeep and
/// the root ConfigMaps running as tasks for the life of the process.
pub async fn start(
    opts: Option<WebhookOptions>,
    store: Arc<StateStore>,
    root_cert: Vec<u8>,
    client: &kube::Client,
) -> Result<Arc<Trust>, AgentError> {
    let Some(opts) = opts else {
        return Ok(Trust::load(store, root_cert, None).await);
    };
    let listener = TcpListener::bind(opts.address)
        .await
        .map_err(|e| AgentError::Tls(format!("--webhook-address {}: {e}", opts.address)))?;
    let config_name = opts.config_name.clone();
    let webhook = Webhook::load(opts, &store, client).await?;
    let trust = Trust::load(store, root_cert, Some(webhook.clone())).await;
    if !webhook.has_certificate() {
        // A kept client certificate from before the webhook was configured:
        // renew now, with a webhook request.
        trust.renew.store(true, Ordering::SeqCst);
    }
    tokio::spawn(async move {
        if let Err(e) = serve(webhook, listener).await {
            tracing::error!(error = %e, "the injection webhook stopped");
        }
    });
    tokio::spawn(keep_ca_bundle(
        client.clone(),
        config_name,
        trust.subscribe(),
    ));
    crate::security::root_publisher::spawn_cluster_wide(client.clone(), trust.subscribe());
    Ok(trust)
}

// ---------------------------------------------------------------------------
// Trust bundle

/// The mesh's trust bundle as this agent knows it, and the signer its
/// certificates came from.
pub struct Trust {
    /// The bundle published (caBundle, root ConfigMaps): the kept one, else
    /// `--root-cert`, then what the hub sends.
    bundle: watch::Sender<String>,
    /// `--root-cert`, also trusted for the hub connection (an operator who
    /// rotated the root while the agent was away points it at the new one).
    root_cert: String,
    /// `signer_sha256` of the last Enroll/Renew answer (empty: unknown).
    signer: Mutex<String>,
    renew: AtomicBool,
    store: Arc<StateStore>,
    webhook: Option<Arc<Webhook>>,
}

impl Trust {
    /// The bundle kept in the agent's state, else `root_cert` (`--root-cert`).
    pub async fn load(
        store: Arc<StateStore>,
        root_cert: Vec<u8>,
        webhook: Option<Arc<Webhook>>,
    ) -> Arc<Trust> {
        let kept = match store.load().await {
            Ok(Some(s)) => s.bundle_pem.filter(|b| has_certificate(b.as_bytes())),
            _ => None,
        };
        let root_cert = String::from_utf8_lossy(&root_cert).into_owned();
        let initial = kept.unwrap_or_else(|| root_cert.clone());
        let signer = store.load_extra(SIGNER_KEY).await.unwrap_or_default();
        Arc::new(Trust {
            bundle: watch::channel(initial).0,
            root_cert,
            signer: Mutex::new(signer),
            renew: AtomicBool::new(false),
            store,
            webhook,
        })
    }

    /// The roots the hub must chain to now (PEM): the bundle and `--root-cert`.
    pub fn roots(&self) -> Vec<u8> {
        union_pem(&self.bundle.borrow(), &self.root_cert).into_bytes()
    }

    /// Follow the bundle (caBundle upkeep, root ConfigMaps).
    pub fn subscribe(&self) -> watch::Receiver<String> {
        self.bundle.subscribe()
    }

    /// The webhook, when `--webhook-service` is set.
    pub fn webhook(&self) -> Option<&Arc<Webhook>> {
        self.webhook.as_ref()
    }

    /// A webhook CSR to send with Enroll or Renew (empty: no webhook).
    pub fn webhook_csr(&self) -> Result<String, AgentError> {
        match &self.webhook {
            Some(w) => w.new_csr(),
            None => Ok(String::new()),
        }
    }

    /// An Enroll or Renew answer arrived: keep its bundle, signer and webhook
    /// certificate.
    pub async fn issued(&self, bundle: &str, signer: &str, webhook_chain: &str) {
        if !signer.is_empty() {
            *self.signer.lock().unwrap_or_else(|e| e.into_inner()) = signer.to_string();
            self.store.save_extra(&[(SIGNER_KEY, signer, false)]).await;
        }
        self.renew.store(false, Ordering::SeqCst);
        self.set_bundle(bundle).await;
        if let Some(w) = &self.webhook {
            if webhook_chain.is_empty() {
                warn!("the hub returned no webhook certificate (a hub that predates it?); the webhook keeps its current one");
            } else if let Err(e) = w.install_pending(webhook_chain, &self.store).await {
                warn!(error = %e, "the hub's webhook certificate is unusable");
            }
        }
    }

    /// `HubMessage.trust_bundle`: keep the bundle; true when the signer is not the
    /// one this agent's certificates came from (renew them now).
    pub async fn from_hub(&self, bundle: &str, signer: &str) -> bool {
        self.set_bundle(bundle).await;
        let ours = self
            .signer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let renew = !signer.is_empty() && !ours.is_empty() && ours != signer;
        if renew {
            info!("the hub signs with another CA now; renewing this agent's certificates");
            self.renew.store(true, Ordering::SeqCst);
        }
        renew
    }

    /// Whether the certificates should be renewed before their half life.
    pub fn renew_requested(&self) -> bool {
        self.renew.load(Ordering::SeqCst)
    }

    async fn set_bundle(&self, pem: &str) {
        if !has_certificate(pem.as_bytes()) {
            return;
        }
        let changed = self.bundle.send_if_modified(|b| {
            if b != pem {
                *b = pem.to_string();
                true
            } else {
                false
            }
        });
        if changed {
            info!(
                roots = count_certificates(pem.as_bytes()),
                "mesh trust bundle updated from the hub"
            );
            self.store
                .save_extra(&[(super::state::BUNDLE_FILE, pem, false)])
                .await;
        }
    }
}

/// The certificates of `a`, then those of `b` that `a` lacks (PEM blocks,
/// compared without whitespace).
fn union_pem(a: &str, b: &str) -> String {
    const END: &str = "-----END CERTIFICATE-----";
    let blocks = |t: &str| -> Vec<String> {
        t.split_inclusive(END)
            .filter_map(|chunk| {
                let start = chunk.find("-----BEGIN CERTIFICATE-----")?;
                chunk.ends_with(END).then(|| chunk[start..].to_string())
            })
            .collect()
    };
    let norm = |s: &str| s.split_whitespace().collect::<String>();
    let mut out = blocks(a);
    let seen: Vec<String> = out.iter().map(|b| norm(b)).collect();
    for blk in blocks(b) {
        if !seen.contains(&norm(&blk)) {
            out.push(blk);
        }
    }
    out.iter().map(|b| format!("{b}\n")).collect()
}

/// Key of the signer's SHA-256 in the agent's state.
const SIGNER_KEY: &str = "signer-sha256";

fn has_certificate(pem: &[u8]) -> bool {
    count_certificates(pem) > 0
}

fn count_certificates(pem: &[u8]) -> usize {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .filter(|c| c.is_ok())
        .count()
}

// ---------------------------------------------------------------------------
// Webhook serving certificate

/// The webhook: its certificate (hot-swapped) and what injection adds.
pub struct Webhook {
    opts: WebhookOptions,
    /// The certificate served now.
    current: RwLock<Option<Arc<rustls::sign::CertifiedKey>>>,
    /// The key of the CSR sent with the Enroll/Renew in flight.
    pending: Mutex<Option<Zeroizing<String>>>,
    /// `native_sidecars` and the rest, fixed at start.
    inject: InjectConfig,
    served: AtomicU64,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("service", &self.opts.service)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// The webhook with the certificate kept in the agent's state (if any) and
    /// `native_sidecars` from the API server's version.
    pub async fn load(
        opts: WebhookOptions,
        store: &StateStore,
        client: &kube::Client,
    ) -> Result<Arc<Webhook>, AgentError> {
        for n in opts.dns_names() {
            crate::security::ca::service_dns_name(&n, &opts.inject.domain_suffix)
                .map_err(|e| AgentError::Tls(format!("--webhook-service/--namespace: {e}")))?;
        }
        let mut inject = opts.inject.clone();
        inject.native_sidecars = match client.apiserver_version().await {
            Ok(v) => {
                let native = native_sidecars(&v.major, &v.minor);
                info!(version = %v.git_version, native_sidecars = native, "member cluster API server");
                native
            }
            Err(e) => {
                warn!(error = %crate::sources::kube::describe_chain(&e),
                    "cannot read the API server's version; injecting Envoy as a regular container");
                false
            }
        };
        let w = Arc::new(Webhook {
            opts,
            current: RwLock::new(None),
            pending: Mutex::new(None),
            inject,
            served: AtomicU64::new(0),
        });
        let chain = store.load_extra(WEBHOOK_CERT_FILE).await;
        let key = store.load_extra(WEBHOOK_KEY_FILE).await.map(Zeroizing::new);
        if let (Some(chain), Some(key)) = (chain, key) {
            match certified_key(&chain, &key) {
                Ok(ck) => {
                    info!("webhook serving certificate loaded from the agent's state");
                    *w.current.write().unwrap_or_else(|e| e.into_inner()) = Some(ck);
                }
                Err(e) => {
                    warn!(error = %e, "the webhook certificate in the agent's state is unusable")
                }
            }
        }
        Ok(w)
    }

    /// A new key and a CSR naming the Service's DNS names.
    fn new_csr(&self) -> Result<String, AgentError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| AgentError::Tls(format!("generate the webhook key: {e}")))?;
        let csr = rcgen::CertificateParams::new(self.opts.dns_names())
            .and_then(|p| p.serialize_request(&key))
            .and_then(|r| r.pem())
            .map_err(|e| AgentError::Tls(format!("webhook certificate request: {e}")))?;
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Zeroizing::new(key.serialize_pem()));
        Ok(csr)
    }

    /// Serve `chain` (signed for the pending CSR) from now on and keep it.
    async fn install_pending(&self, chain: &str, store: &StateStore) -> Result<(), String> {
        let key = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or("no webhook certificate request is pending")?;
        let ck = certified_key(chain, &key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(ck);
        store
            .save_extra(&[
                (WEBHOOK_KEY_FILE, &key, true),
                (WEBHOOK_CERT_FILE, chain, false),
            ])
            .await;
        info!(dns_names = ?self.opts.dns_names(), "webhook serving certificate installed");
        Ok(())
    }

    /// Whether a certificate is there to serve with.
    pub fn has_certificate(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

impl rustls::server::ResolvesServerCert for Webhook {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn certified_key(
    chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("webhook certificate: {e}"))?;
    if chain.is_empty() {
        return Err("webhook certificate: no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("webhook key: {e}"))?;
    let signer = crate::tls::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("webhook key: {e}"))?;
    let ck = rustls::sign::CertifiedKey::new(chain, signer);
    ck.keys_match()
        .map_err(|e| format!("webhook key does not match its certificate: {e}"))?;
    Ok(Arc::new(ck))
}

/// Kubernetes `major`/`minor` (the minor may carry a `+`, as managed clusters
/// report) at least [`NATIVE_SIDECARS_FROM`].
pub fn native_sidecars(major: &str, minor: &str) -> bool {
    let num = |s: &str| {
        s.trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse::<u32>()
            .ok()
    };
    match (num(major), num(minor)) {
        (Some(ma), Some(mi)) => (ma, mi) >= NATIVE_SIDECARS_FROM,
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// HTTPS server

/// Serve the webhook on `listener` until the process ends. Connections are
/// refused (TLS alert) until a certificate is there.
pub async fn serve(webhook: Arc<Webhook>, listener: TcpListener) -> Result<(), AgentError> {
    let addr = webhook.opts.address;
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(webhook.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    info!(%addr, path = INJECT_PATH, "injection webhook listening");
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(webhook.clone());
    axum::serve(TlsListener::spawn(listener, acceptor), app)
        .await
        .map_err(|e| AgentError::Tls(format!("--webhook-address {addr}: {e}")))
}

async fn handle(State(w): State<Arc<Webhook>>, req: Request) -> Response {
    let plain = |code: StatusCode, text: String| {
        debug!(status = code.as_u16(), reason = %text, "webhook request refused");
        (
            code,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            text + "\n",
        )
            .into_response()
    };
    if req.uri().path() != INJECT_PATH {
        return plain(
            StatusCode::NOT_FOUND,
            format!(
                "no such path {:?}: the injection webhook is POST {INJECT_PATH}",
                req.uri().path()
            ),
        );
    }
    if req.method() != Method::POST {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "method {} not allowed: POST an AdmissionReview to {INJECT_PATH}",
                req.method()
            ),
        );
    }
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Istio's webhook accepts `application/json` only (with parameters).
    if ctype.split(';').next().map(str::trim) != Some("application/json") {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type {ctype:?}: expected application/json"),
        );
    }
    // An announced body over the limit is refused before any of it is read.
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        );
    }
    let body = req.into_body();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY_BYTES))
        .await
    {
        Err(_) => {
            return plain(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body was not received within {}s",
                    BODY_TIMEOUT.as_secs()
                ),
            )
        }
        Ok(Err(e)) => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_BODY_BYTES} bytes or broken: {e}"),
            )
        }
        Ok(Ok(b)) => b,
    };
    // Istio's webhook answers an undecodable body with an AdmissionReview
    // refusing it; a body that is not JSON at all cannot be from an API server,
    // so it gets a 400 here instead (the API server applies its failurePolicy
    // either way). JSON that is no AdmissionReview is the injector's to refuse.
    if !bytes.iter().all(u8::is_ascii_whitespace) {
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
            return plain(
                StatusCode::BAD_REQUEST,
                format!("the body is not JSON: {e}"),
            );
        }
    }
    let reply = inject::review(&w.inject, &bytes);
    w.served.fetch_add(1, Ordering::Relaxed);
    match &reply.outcome {
        inject::Outcome::Injected { pod, warnings } => info!(%pod, warnings, "sidecar injected"),
        inject::Outcome::Skipped { pod, reason } => debug!(%pod, %reason, "not injected"),
        inject::Outcome::Refused { reason } => warn!(%reason, "admission refused"),
        inject::Outcome::BadRequest { reason } => warn!(%reason, "bad admission request"),
    }
    let code = StatusCode::from_u16(reply.http_status).unwrap_or(StatusCode::BAD_REQUEST);
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, reply.content_type)
        .body(Body::from(reply.body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// TLS connections handed to axum; each handshake runs in its own task (with
/// [`HANDSHAKE_TIMEOUT`]) so a slow client holds up no other.
struct TlsListener {
    rx: mpsc::Receiver<(Idle<tokio_rustls::server::TlsStream<TcpStream>>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn spawn(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor) -> TlsListener {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        debug!(error = %e, "accept on the webhook port failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send((Idle::new(s), peer)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "webhook TLS handshake failed"),
                        Err(_) => debug!(%peer, "webhook TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { rx, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Idle<tokio_rustls::server::TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task never ends while the receiver lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// A connection that fails with `TimedOut` once nothing was read or written for
/// [`IDLE_TIMEOUT`] while a read was waiting.
pub struct Idle<S> {
    inner: S,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<S> Idle<S> {
    fn new(inner: S) -> Idle<S> {
        Idle {
            inner,
            deadline: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)),
        }
    }

    fn touch(&mut self) {
        self.deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Idle<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                self.touch();
                Poll::Ready(r)
            }
            Poll::Pending => match std::future::Future::poll(self.deadline.as_mut(), cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "webhook connection idle",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Idle<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if r.is_ready() {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------
// caBundle upkeep

/// Keep `webhooks[*].clientConfig.caBundle` of the MutatingWebhookConfiguration
/// `name` equal to the bundle: at start, on every change, and every [`RESYNC`];
/// failures are retried with the agent's backoff. Runs until the process ends.
pub async fn keep_ca_bundle(
    client: kube::Client,
    name: String,
    mut bundle: watch::Receiver<String>,
) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let mut failures = 0u32;
    loop {
        let pem = bundle.borrow_and_update().clone();
        let wait = match sync_ca_bundle(&api, &name, &pem).await {
            Ok(()) => {
                failures = 0;
                RESYNC
            }
            Err(reason) => {
                warn!(webhook_configuration = %name, %reason, "cannot keep the webhook configuration's caBundle; retrying");
                failures = failures.saturating_add(1);
                super::backoff(failures)
            }
        };
        tokio::select! {
            _ = bundle.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// GET the configuration and PUT it back (with its resourceVersion) when a
/// webhook's caBundle differs from `pem`.
async fn sync_ca_bundle(
    api: &Api<MutatingWebhookConfiguration>,
    name: &str,
    pem: &str,
) -> Result<(), String> {
    let reason = |e: kube::Error| match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => crate::sources::kube::describe_chain(&other),
    };
    let mut cfg = api.get(name).await.map_err(reason)?;
    let want = ByteString(pem.as_bytes().to_vec());
    let mut changed = 0usize;
    for w in cfg.webhooks.iter_mut().flatten() {
        if w.client_config.ca_bundle.as_ref() != Some(&want) {
            w.client_config.ca_bundle = Some(want.clone());
            changed += 1;
        }
    }
    if changed == 0 {
        return Ok(());
    }
    api.replace(name, &PostParams::default(), &cfg)
        .await
        .map_err(reason)?;
    info!(webhook_configuration = %name, webhooks = changed, "caBundle set to the mesh trust bundle");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test(start_paused = true)]
    async fn idle_connection_times_out_and_traffic_keeps_it_open() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = Idle::new(server);
        // A read waiting just under the limit, then answered: each exchange
        // restarts the clock (three limits pass in all).
        for _ in 0..3 {
            let read = tokio::spawn(async move {
                let mut buf = [0u8; 8];
                let r = server.read(&mut buf).await;
                (server, r)
            });
            tokio::time::advance(IDLE_TIMEOUT - Duration::from_secs(1)).await;
            client.write_all(b"x").await.unwrap();
            let (s, r) = read.await.unwrap();
            assert_eq!(r.unwrap(), 1);
            server = s;
        }
        // Silence for the limit: the waiting read fails.
        let read = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            server.read(&mut buf).await
        });
        tokio::time::advance(IDLE_TIMEOUT + Duration::from_millis(1)).await;
        let err = read.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    }

    #[test]
    fn start_bundle_is_the_kept_one_plus_root_cert() {
        let cert =
            |n: u8| format!("-----BEGIN CERTIFICATE-----\nAAA{n}\n-----END CERTIFICATE-----\n");
        let kept = format!("{}{}", cert(1), cert(2));
        // --root-cert repeats one (other line endings) and adds one.
        let flag = format!("{}{}", cert(2).replace('\n', "\r\n"), cert(3));
        assert_eq!(
            union_pem(&kept, &flag),
            format!("{}{}{}", cert(1), cert(2), cert(3))
        );
        assert_eq!(union_pem("", &cert(3)), cert(3));
        assert_eq!(union_pem(&cert(1), "garbage"), cert(1));
    }

    #[test]
    fn native_sidecars_from_1_29() {
        assert!(native_sidecars("1", "29"));
        assert!(native_sidecars("1", "33+"));
        assert!(native_sidecars("2", "0"));
        assert!(!native_sidecars("1", "28"));
        assert!(!native_sidecars("1", "28+"));
        assert!(!native_sidecars("", "x"));
    }
}
