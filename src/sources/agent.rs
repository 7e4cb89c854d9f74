//! Member clusters fed by `crossmesh agent` (mesh file `clusters[].agent`,
//! `agentAddress`; DESIGN.md §5): the hub side of `crossmesh.agent.v1`
//! (`proto/crossmesh/agent/v1/agent.proto` documents the message flow).
//!
//! The agent port is gRPC over TLS with the mesh CA: the hub presents a server
//! certificate from the mesh CA and verifies client certificates against the mesh's
//! roots. `Enroll` alone is served without a client certificate (it redeems a
//! single-use token, `security::agent_tokens`); `Sync` and `Renew` take the
//! cluster's name from the client certificate's URI SAN
//! (`spiffe://<td>/crossmesh/cluster/<name>`), never from a message.
//!
//! Registry semantics are the kube source's (`sources::kube`):
//! - a stream's snapshot is buffered until every kind's end-of-snapshot marker,
//!   then handed over as one `Registry::reset_cluster` (first sync, or the sweep
//!   of objects deleted while the agent was away); deltas are `Registry::apply`;
//! - a lost stream (closed, reset, heartbeats missing) marks the cluster stale:
//!   its last endpoints keep serving until the next snapshot completes, or until
//!   `unreachableClusterEndpoints.dropAfter` drops them;
//! - objects outside the cluster's namespace grant are refused one by one (listed
//!   on `/debug/clusterz` with the reason, counted in
//!   `crossmesh_source_rejected_objects`); protocol violations end the stream with
//!   a gRPC status naming the reason. Nothing an agent sends touches another
//!   cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use super::agent_proto::agent_service_server::{AgentService, AgentServiceServer};
use super::agent_proto::{
    agent_message, change, hub_message, Ack, AgentMessage, Batch, EnrollRequest, EnrollResponse,
    Heartbeat, HubMessage, Kind as WireKind, RenewRequest, TrustBundle, Welcome, PROTOCOL_VERSION,
};
use crate::config::{ClusterSource, MeshConfig};
use crate::registry::{Event, KubeKind, KubeObject, ObjectProblem, Registry};
use crate::security::agent_tokens;
use crate::security::ca::{agent_uri, webhook_request, AGENT_CERT_BACKDATE, AGENT_ID_PATH};
use crate::security::Ca;

/// Default interval of heartbeats (`Welcome.heartbeat_interval_ms`); a stream
/// silent for [`MISSED_HEARTBEATS`] intervals is closed.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// Intervals without any message after which a side gives the stream up.
pub const MISSED_HEARTBEATS: u32 = 3;
/// Default flow-control window: unacknowledged batches.
pub const DEFAULT_WINDOW_MESSAGES: u32 = 16;
/// Default flow-control window: unacknowledged encoded bytes.
pub const DEFAULT_WINDOW_BYTES: u64 = 16 << 20;
/// Largest message the hub decodes (and `Welcome.max_message_bytes`).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 << 20;
/// In the message of the PERMISSION_DENIED status that refuses a revoked
/// cluster's certificate; an agent that sees it enrols again (`--token-file`).
pub const REVOKED: &str = "was revoked";
/// A TLS handshake must finish within this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Refusals kept per cluster for `/debug/clusterz`.
const KEEP_REFUSALS: usize = 20;

/// Knobs of the agent port.
#[derive(Debug, Clone)]
pub struct AgentHubOptions {
    pub heartbeat: Duration,
    pub window_messages: u32,
    pub window_bytes: u64,
    pub max_message_bytes: usize,
    /// `unreachableClusterEndpoints.dropAfter`.
    pub stale_grace: Option<Duration>,
    /// Most object bytes buffered for one snapshot (`Welcome.max_snapshot_bytes`).
    pub max_snapshot_bytes: u64,
}

impl AgentHubOptions {
    pub fn from_mesh(mesh: &MeshConfig) -> AgentHubOptions {
        AgentHubOptions {
            stale_grace: mesh.drop_unreachable_after,
            max_snapshot_bytes: mesh.tunables.agent_max_snapshot_bytes,
            ..AgentHubOptions::default()
        }
    }
}

impl Default for AgentHubOptions {
    fn default() -> Self {
        AgentHubOptions {
            heartbeat: DEFAULT_HEARTBEAT,
            window_messages: DEFAULT_WINDOW_MESSAGES,
            window_bytes: DEFAULT_WINDOW_BYTES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            stale_grace: None,
            max_snapshot_bytes: crate::config::Tunables::default().agent_max_snapshot_bytes,
        }
    }
}

/// One agent cluster on `/debug/clusterz` (the `agent` field of its entry).
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentStatus {
    /// A Sync stream is open.
    pub connected: bool,
    /// The current (or last) stream delivered its whole snapshot.
    pub synced: bool,
    /// Remote address of the current (or last) stream.
    pub peer: Option<String>,
    pub agent_version: Option<String>,
    /// RFC 3339 of the last message (any message counts as a heartbeat).
    pub last_heartbeat: Option<String>,
    /// notAfter of the client certificate of the current (or last) stream.
    pub certificate_expiry: Option<String>,
    pub certificate_serial: Option<String>,
    /// Streams accepted since start.
    pub streams: u64,
    /// Batches and object changes received since start.
    pub batches: u64,
    pub changes: u64,
    /// Why the last stream ended.
    pub last_disconnect: Option<String>,
    /// Refusals by reason since start (tokens, wrong cluster, version, protocol,
    /// objects outside the grant).
    pub refusals: BTreeMap<String, u64>,
    /// The latest refusals, newest last.
    pub recent_refusals: Vec<String>,
    /// Kinds the agent cannot read or keep in full (`KindStatus`), with why.
    pub unavailable: BTreeMap<String, String>,
    /// The current (or last) stream resumed instead of sending a snapshot.
    pub resumed: bool,
    /// Streams that resumed, since start.
    pub resumed_streams: u64,
    /// Encoded bytes of the batches of the current (or last) stream.
    pub stream_bytes: u64,
}

/// The agent clusters of the mesh file and their streams.
pub struct AgentHub {
    registry: Arc<Registry>,
    ca: Arc<dyn Fn() -> Arc<Ca> + Send + Sync>,
    trust_domain: String,
    /// `domainSuffix`: webhook certificates may name `<svc>.<ns>.svc.<suffix>`.
    domain_suffix: String,
    /// Enrolment tokens and revocations (files, or a Secret shared by replicas).
    tokens: Arc<agent_tokens::TokenStore>,
    grants: BTreeMap<String, Option<BTreeSet<String>>>,
    /// Agent clusters the mesh file lists as config sources (`config: - cluster`).
    config_clusters: BTreeSet<String>,
    /// This process's session (`Welcome.session_id`): random at start, so an
    /// agent can tell a restarted hub (which needs a snapshot) from this one.
    session_id: String,
    opts: AgentHubOptions,
    state: Mutex<BTreeMap<String, ClusterAgent>>,
}

#[derive(Default)]
struct ClusterAgent {
    status: AgentStatus,
    /// Bumped by every accepted stream; a stream only acts while it is current.
    /// It is also the stream's id (`Welcome.stream_id`).
    generation: u64,
    /// Tells the current stream to end (a newer one replaced it).
    superseded: Option<watch::Sender<bool>>,
    /// Highest batch seq applied (acknowledged) from stream `generation`.
    applied_seq: u64,
    /// The registry holds a snapshot of this cluster from this process (not
    /// dropped after the grace period): a stream may resume from it.
    resumable: bool,
    /// Objects refused (outside the grant, malformed), kept across resumed streams.
    problems: BTreeMap<String, ObjectProblem>,
    /// The cluster's Istio config (config clusters only), by `Kind/ns/name`.
    config: BTreeMap<String, Value>,
}

fn now_rfc3339() -> Option<String> {
    crate::registry::status::rfc3339(SystemTime::now())
}

impl AgentHub {
    /// The hub for every `agent:` cluster of `mesh`; `ca` returns the CA in force,
    /// `tokens` keeps enrolment tokens and revocations.
    pub fn new(
        registry: Arc<Registry>,
        mesh: &MeshConfig,
        ca: Arc<dyn Fn() -> Arc<Ca> + Send + Sync>,
        tokens: Arc<agent_tokens::TokenStore>,
        opts: AgentHubOptions,
    ) -> Arc<AgentHub> {
        let grants: BTreeMap<_, _> = mesh
            .clusters
            .iter()
            .filter_map(|c| match &c.source {
                ClusterSource::Agent { namespaces } => Some((
                    c.name.clone(),
                    namespaces.as_ref().map(|n| n.iter().cloned().collect()),
                )),
                _ => None,
            })
            .collect();
        let state = grants
            .keys()
            .map(|k| (k.clone(), ClusterAgent::default()))
            .collect();
        let config_clusters = mesh
            .config
            .iter()
            .filter_map(|c| match c {
                crate::config::ConfigSource::Cluster(n) if grants.contains_key(n) => {
                    Some(n.clone())
                }
                _ => None,
            })
            .collect();
        let mut id = [0u8; 16];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id);
        let session_id = id.iter().map(|b| format!("{b:02x}")).collect();
        Arc::new(AgentHub {
            registry,
            ca,
            trust_domain: mesh.trust_domain.clone(),
            domain_suffix: mesh.domain_suffix.clone(),
            tokens,
            grants,
            config_clusters,
            session_id,
            opts,
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ClusterAgent>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count a refusal under `cluster` (when it is an agent cluster) and log it.
    fn refuse(&self, cluster: Option<&str>, label: &str, reason: &str) {
        warn!(cluster = cluster.unwrap_or("?"), reason = %reason, "agent refused");
        crate::metrics::metrics()
            .agent_refusals
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: label.to_string(),
            })
            .inc();
        // One that names no agent cluster is on the metric and in the log only.
        let mut st = self.lock();
        if let Some(a) = cluster.and_then(|c| st.get_mut(c)) {
            *a.status.refusals.entry(label.to_string()).or_default() += 1;
            a.status.recent_refusals.push(format!("{label}: {reason}"));
            let n = a.status.recent_refusals.len();
            if n > KEEP_REFUSALS {
                a.status.recent_refusals.drain(..n - KEEP_REFUSALS);
            }
        }
    }

    /// Status of each agent cluster.
    pub fn status(&self) -> BTreeMap<String, AgentStatus> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.status.clone()))
            .collect()
    }

    /// Add an `agent` field to each agent cluster's entry of a `/debug/clusterz`
    /// page (`Registry::clusterz` as JSON).
    pub fn annotate_clusterz(&self, page: &mut Value) {
        let status = self.status();
        if let Value::Array(list) = page {
            for entry in list.iter_mut() {
                let name = entry
                    .get("name")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                if let Some(s) = name.and_then(|n| status.get(&n)) {
                    entry["agent"] = serde_json::to_value(s).unwrap_or(Value::Null);
                }
            }
        }
    }

    /// The agent cluster named by a verified client certificate (leaf DER).
    fn cluster_of(&self, leaf: &[u8]) -> Result<String, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| format!("client certificate does not parse: {e}"))?;
        let prefix = format!("spiffe://{}{AGENT_ID_PATH}", self.trust_domain);
        let san = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|s| s.value.general_names.clone())
            .unwrap_or_default();
        for n in san {
            if let x509_parser::extensions::GeneralName::URI(u) = n {
                if let Some(name) = u.strip_prefix(&prefix) {
                    return Ok(name.to_string());
                }
            }
        }
        Err(format!(
            "client certificate names no agent identity ({prefix}<cluster>)"
        ))
    }

    /// The caller's cluster from its client certificate, refused unless it is an
    /// agent cluster of the mesh file.
    fn caller<T>(&self, req: &Request<T>) -> Result<(String, ConnInfo), Status> {
        let info = req
            .extensions()
            .get::<ConnInfo>()
            .cloned()
            .unwrap_or_default();
        let Some(leaf) = info.client_cert.as_deref() else {
            let reason = "no client certificate: enrol first (Enroll with a token)";
            self.refuse(None, "no_client_certificate", reason);
            return Err(Status::unauthenticated(reason));
        };
        let cluster = self.cluster_of(leaf).map_err(|reason| {
            self.refuse(None, "bad_client_certificate", &reason);
            Status::unauthenticated(reason)
        })?;
        if !self.grants.contains_key(&cluster) {
            let reason = format!(
                "cluster {cluster:?} is not an agent cluster of the mesh file (clusters[].agent)"
            );
            self.refuse(None, "unknown_cluster", &reason);
            return Err(Status::permission_denied(reason));
        }
        if let Some(reason) = self.revocation(&cluster, leaf) {
            self.refuse(Some(&cluster), "revoked", &reason);
            return Err(Status::permission_denied(reason));
        }
        Ok((cluster, info))
    }

    /// Why `leaf` of `cluster` is no longer accepted: the cluster was revoked
    /// (`crossmesh agent-token revoke`) after the certificate was issued.
    fn revocation(&self, cluster: &str, leaf: &[u8]) -> Option<String> {
        let at = self.tokens.revoked_at(cluster)?;
        let issued = x509_parser::parse_x509_certificate(leaf)
            .map(|(_, c)| {
                c.validity().not_before.timestamp() + AGENT_CERT_BACKDATE.as_secs() as i64
            })
            .unwrap_or(i64::MIN);
        (issued <= at as i64).then(|| {
            let when = k8s_openapi::jiff::Timestamp::from_second(at as i64)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| at.to_string());
            format!(
                "cluster {cluster:?} {REVOKED} at {when}; its certificate was issued before: \
                 enrol it again with a new token"
            )
        })
    }
}

// ---------------------------------------------------------------------------
// TLS transport

/// What tonic hands each request about its connection.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    pub peer: Option<SocketAddr>,
    /// The verified client certificate (leaf, DER), if one was presented.
    pub client_cert: Option<Arc<Vec<u8>>>,
}

/// A TLS connection accepted on the agent port.
type AgentIo = crate::tls::ServerTlsIo<ConnInfo>;

/// The server certificate, re-issued from the CA in force at half life.
struct ServerCert {
    ca: Arc<dyn Fn() -> Arc<Ca> + Send + Sync>,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    /// The certificate, when to renew it, and the CA that issued it (a reloaded
    /// plug-in CA with another signer or roots has it re-issued at once).
    current: RwLock<Option<IssuedServerCert>>,
}

/// The agent port's certificate, when to renew it, and the CA that issued it.
type IssuedServerCert = (Arc<rustls::sign::CertifiedKey>, SystemTime, Arc<Ca>);

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCert").finish_non_exhaustive()
    }
}

impl ServerCert {
    fn refresh(&self) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let ca = (self.ca)();
        let issued = ca
            .issue_server(&self.dns, &self.ips)
            .map_err(|e| e.to_string())?;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(issued.cert_chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("server certificate chain: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
            .map_err(|e| format!("server key: {e}"))?;
        let signer = crate::tls::provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| format!("server key: {e}"))?;
        let ck = Arc::new(rustls::sign::CertifiedKey::new(chain, signer));
        let renew = crate::security::renew_at(&issued);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some((ck.clone(), renew, ca));
        Ok(ck)
    }
}

impl rustls::server::ResolvesServerCert for ServerCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let current = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match current {
            Some((ck, renew, by))
                if SystemTime::now() < renew && Arc::ptr_eq(&by, &(self.ca)()) =>
            {
                Some(ck)
            }
            old => match self.refresh() {
                Ok(ck) => Some(ck),
                Err(e) => {
                    warn!(error = %e, "cannot renew the agent port's server certificate");
                    old.map(|(ck, _, _)| ck)
                }
            },
        }
    }
}

/// Errors starting the agent port.
#[derive(Debug, thiserror::Error)]
pub enum AgentPortError {
    #[error("agent port {addr}: {reason}")]
    Tls { addr: String, reason: String },
    #[error("agent port {addr}: {source}")]
    Transport {
        addr: String,
        source: tonic::transport::Error,
    },
}

/// Serve the agent port on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    hub: Arc<AgentHub>,
    dns_names: Vec<String>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), AgentPortError> {
    let local = listener.local_addr().ok();
    let addr = local.map(|a| a.to_string()).unwrap_or_else(|| "?".into());
    let tls_err = |reason: String| AgentPortError::Tls {
        addr: addr.clone(),
        reason,
    };
    let (dns, ips) = crate::security::ca::server_names(local.map(|a| a.ip()), &dns_names);
    let resolver = Arc::new(ServerCert {
        ca: hub.ca.clone(),
        dns,
        ips,
        current: RwLock::new(None),
    });
    resolver.refresh().map_err(&tls_err)?;
    // Client certificates are verified against the trust bundle in force: the
    // acceptor is rebuilt when a plug-in CA reload changes it, so agents whose
    // certificates chain to a newly added root are accepted, and those of a
    // dropped root refused, from the next handshake on.
    let bundle = (hub.ca)().trust_bundle_pem();
    let acceptor = agent_acceptor(&bundle, resolver.clone()).map_err(&tls_err)?;
    let acceptors = Arc::new(Mutex::new((bundle, acceptor)));

    let (tx, rx) = mpsc::channel::<std::io::Result<AgentIo>>(64);
    let accept_hub = hub.clone();
    let accept = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    debug!(error = %e, "accept on the agent port failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = {
                let bundle = (accept_hub.ca)().trust_bundle_pem();
                let mut cur = acceptors.lock().unwrap_or_else(|e| e.into_inner());
                if cur.0 != bundle {
                    match agent_acceptor(&bundle, resolver.clone()) {
                        Ok(a) => {
                            info!("agent port: client certificates verified against the reloaded trust bundle");
                            *cur = (bundle, a);
                        }
                        Err(e) => {
                            warn!(error = %e, "agent port: the reloaded trust bundle is unusable; keeping the previous one")
                        }
                    }
                }
                cur.1.clone()
            };
            let tx = tx.clone();
            let hub = accept_hub.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => {
                        let client_cert = s
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| Arc::new(c.as_ref().to_vec()));
                        let info = ConnInfo {
                            peer: Some(peer),
                            client_cert,
                        };
                        let _ = tx.send(Ok(AgentIo::new(s, info))).await;
                    }
                    Ok(Err(e)) => {
                        hub.refuse(None, "tls_handshake", &format!("{peer}: {e}"));
                    }
                    Err(_) => hub.refuse(None, "tls_handshake", &format!("{peer}: timed out")),
                }
            });
        }
    });
    // Revocations made through another replica (a shared store) are read
    // periodically; each stream checks them at every heartbeat.
    let refresh = tokio::spawn(
        hub.tokens
            .clone()
            .refresh_every(agent_tokens::REVOCATION_REFRESH),
    );
    info!(%addr, agents = hub.grants.len(), tokens = %hub.tokens.describe(), "agent port listening");
    let max = hub.opts.max_message_bytes;
    let svc = AgentServiceServer::new(HubService(hub))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
    let r = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|source| AgentPortError::Transport { addr, source });
    accept.abort();
    refresh.abort();
    r
}

/// The agent port's TLS acceptor: server certificate from `resolver`, client
/// certificates verified against `bundle` (PEM roots), optional at the TLS
/// layer so that `Enroll` can be served; every other call requires one
/// (`AgentHub::caller`).
fn agent_acceptor(
    bundle: &str,
    resolver: Arc<ServerCert>,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        let der = der.map_err(|e| format!("mesh roots: {e}"))?;
        roots.add(der).map_err(|e| format!("mesh roots: {e}"))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        crate::tls::provider(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| e.to_string())?;
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

// ---------------------------------------------------------------------------
// The service

fn kind_of(k: i32) -> Option<KubeKind> {
    match WireKind::try_from(k).ok()? {
        WireKind::Service => Some(KubeKind::Service),
        WireKind::Pod => Some(KubeKind::Pod),
        WireKind::Node => Some(KubeKind::Node),
        WireKind::EndpointSlice => Some(KubeKind::EndpointSlice),
        _ => None,
    }
}

/// The wire kind of a registry kind.
pub fn wire_kind(k: KubeKind) -> WireKind {
    match k {
        KubeKind::Service => WireKind::Service,
        KubeKind::Pod => WireKind::Pod,
        KubeKind::Node => WireKind::Node,
        KubeKind::EndpointSlice => WireKind::EndpointSlice,
    }
}

/// Every kind a v1 snapshot carries.
pub const KINDS: [KubeKind; 4] = [
    KubeKind::Service,
    KubeKind::Pod,
    KubeKind::Node,
    KubeKind::EndpointSlice,
];

fn unix_time(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

type SyncStream = Pin<Box<dyn futures::Stream<Item = Result<HubMessage, Status>> + Send>>;

/// The tonic service: the hub behind an `Arc`, so each Sync stream's task owns
/// a handle of it.
struct HubService(Arc<AgentHub>);

#[tonic::async_trait]
impl AgentService for HubService {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        self.0.enroll(request.into_inner()).await
    }

    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        self.0.read_revocations().await?;
        let (cluster, _) = self.0.caller(&request)?;
        let r = request.get_ref();
        self.0
            .issue(&cluster, &r.csr_pem, &r.webhook_csr_pem, "renewed")
    }

    type SyncStream = SyncStream;

    async fn sync(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<SyncStream>, Status> {
        self.0.read_revocations().await?;
        let (cluster, info) = self.0.caller(&request)?;
        let expiry = info.client_cert.as_deref().and_then(|der| {
            let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
            Some((
                c.validity().not_after.to_datetime().unix_timestamp(),
                c.raw_serial_as_string(),
            ))
        });
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(self.0.opts.window_messages as usize + 8);
        let session = Session {
            hub: self.0.clone(),
            cluster,
            leaf: info.client_cert.clone(),
            peer: info.peer,
            expiry,
            tx,
            bundle_sent: Mutex::new(None),
        };
        tokio::spawn(session.run(inbound));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

impl AgentHub {
    /// Read the revocations afresh before a stream is opened or a certificate
    /// renewed; a store that cannot be read refuses the call (fail closed).
    async fn read_revocations(&self) -> Result<(), Status> {
        self.tokens.refresh().await.map_err(|e| {
            let reason = format!("cannot check revocations: {e}");
            self.refuse(None, e.label(), &reason);
            Status::unavailable(reason)
        })
    }

    async fn enroll(&self, req: EnrollRequest) -> Result<Response<EnrollResponse>, Status> {
        let cluster = req.cluster.clone();
        let known = self.grants.contains_key(&cluster);
        let attributed = known.then_some(cluster.as_str());
        if req.protocol_version != PROTOCOL_VERSION {
            let reason = format!(
                "unsupported agent protocol version {}: this hub speaks {PROTOCOL_VERSION}",
                req.protocol_version
            );
            self.refuse(attributed, "protocol_version", &reason);
            return Err(Status::failed_precondition(reason));
        }
        if !known {
            let reason = format!(
                "cluster {cluster:?} is not an agent cluster of the mesh file (clusters[].agent)"
            );
            self.refuse(None, "unknown_cluster", &reason);
            return Err(Status::permission_denied(reason));
        }
        // A webhook request the hub would refuse is refused before the token is
        // spent, so the agent can enrol again with a corrected one.
        if !req.webhook_csr_pem.is_empty() {
            if let Err(e) = webhook_request(&req.webhook_csr_pem, &self.domain_suffix) {
                let reason = e.to_string();
                self.refuse(attributed, "bad_webhook_csr", &reason);
                return Err(Status::invalid_argument(reason));
            }
        }
        let now = SystemTime::now();
        if let Err(e) = self.tokens.redeem(&cluster, &req.token, now).await {
            let reason = e.to_string();
            self.refuse(attributed, e.label(), &reason);
            return Err(match e {
                agent_tokens::TokenError::Store { .. } => Status::internal(reason),
                _ => Status::unauthenticated(reason),
            });
        }
        self.issue(&cluster, &req.csr_pem, &req.webhook_csr_pem, "enrolled")
    }
}

impl AgentHub {
    fn issue(
        &self,
        cluster: &str,
        csr_pem: &str,
        webhook_csr_pem: &str,
        what: &str,
    ) -> Result<Response<EnrollResponse>, Status> {
        let ca = (self.ca)();
        // The injection webhook's serving certificate, when asked for: DNS names
        // of one Service only (`Ca::sign_webhook_csr`, docs/SECURITY.md).
        let webhook_cert_chain_pem = if webhook_csr_pem.is_empty() {
            String::new()
        } else {
            match ca.sign_webhook_csr(webhook_csr_pem, &self.domain_suffix) {
                Ok(w) => {
                    info!(cluster, serial = %w.serial_hex, dns_names = ?w.dns_names, "agent webhook certificate {what}");
                    w.cert_chain_pem
                }
                Err(e) => {
                    let reason = e.to_string();
                    self.refuse(Some(cluster), "bad_webhook_csr", &reason);
                    return Err(Status::invalid_argument(reason));
                }
            }
        };
        match ca.sign_agent_csr(cluster, csr_pem) {
            Ok(c) => {
                info!(cluster, serial = %c.serial_hex, "agent {what}");
                Ok(Response::new(EnrollResponse {
                    cert_chain_pem: c.cert_chain_pem,
                    trust_bundle_pem: ca.trust_bundle_pem(),
                    identity: c.uri,
                    not_after_unix: unix_time(c.not_after),
                    webhook_cert_chain_pem,
                    signer_sha256: ca.signer_sha256(),
                }))
            }
            Err(e) => {
                let reason = e.to_string();
                self.refuse(Some(cluster), "bad_csr", &reason);
                Err(Status::invalid_argument(reason))
            }
        }
    }
}

/// One Sync stream.
struct Session {
    hub: Arc<AgentHub>,
    cluster: String,
    /// The client certificate (leaf DER), checked against revocations.
    leaf: Option<Arc<Vec<u8>>>,
    peer: Option<SocketAddr>,
    expiry: Option<(i64, String)>,
    tx: mpsc::Sender<Result<HubMessage, Status>>,
    /// The trust bundle and signer last sent (`HubMessage.trust_bundle`); `None`
    /// until Hello asks for them (`accepts_trust_bundle`).
    bundle_sent: Mutex<Option<(String, String)>>,
}

/// Why a stream ended: its status for the agent, and a label for the count.
struct End {
    status: Status,
    label: Option<&'static str>,
}

impl End {
    fn refused(label: &'static str, status: Status) -> End {
        End {
            status,
            label: Some(label),
        }
    }
}

impl Session {
    /// Send the trust bundle and signer in force if the agent asked for them and
    /// they differ from what it was last sent (on the first heartbeat tick, right
    /// after Welcome, then within a heartbeat interval of a plug-in CA reload).
    async fn send_trust_bundle(&self) -> Result<(), End> {
        let ca = (self.hub.ca)();
        let now = (ca.trust_bundle_pem(), ca.signer_sha256());
        {
            let mut sent = self.bundle_sent.lock().unwrap_or_else(|e| e.into_inner());
            match sent.as_mut() {
                Some(s) if *s != now => *s = now.clone(),
                _ => return Ok(()),
            }
        }
        debug!(cluster = %self.cluster, "trust bundle sent");
        self.send(hub_message::Message::TrustBundle(TrustBundle {
            pem: now.0,
            signer_sha256: now.1,
        }))
        .await
    }

    async fn send(&self, m: hub_message::Message) -> Result<(), End> {
        self.tx
            .send(Ok(HubMessage { message: Some(m) }))
            .await
            .map_err(|_| End {
                status: Status::cancelled("the agent went away"),
                label: None,
            })
    }

    async fn run(self, mut inbound: Streaming<AgentMessage>) {
        let silence = self.hub.opts.heartbeat * MISSED_HEARTBEATS;
        // Hello first.
        let hello = match tokio::time::timeout(silence, inbound.message()).await {
            Ok(Ok(Some(AgentMessage {
                message: Some(agent_message::Message::Hello(h)),
            }))) => h,
            Ok(Ok(Some(_))) => {
                return self.close_unregistered(End::refused(
                    "protocol",
                    Status::invalid_argument("the first message of a Sync stream must be Hello"),
                ));
            }
            Ok(Ok(None)) => return,
            Ok(Err(s)) => {
                return self.close_unregistered(End::refused(
                    "protocol",
                    Status::invalid_argument(format!("reading Hello: {}", s.message())),
                ));
            }
            Err(_) => {
                return self.close_unregistered(End::refused(
                    "missed_heartbeats",
                    Status::deadline_exceeded(format!("no Hello within {}s", silence.as_secs())),
                ));
            }
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            return self.close_unregistered(End::refused(
                "protocol_version",
                Status::failed_precondition(format!(
                    "unsupported agent protocol version {}: this hub speaks {PROTOCOL_VERSION}",
                    hello.protocol_version
                )),
            ));
        }
        if hello.cluster != self.cluster {
            return self.close_unregistered(End::refused(
                "wrong_cluster",
                Status::permission_denied(format!(
                    "this agent's certificate is for cluster {:?}; it may not publish as {:?}",
                    self.cluster, hello.cluster
                )),
            ));
        }
        let kinds: BTreeSet<KubeKind> = hello.kinds.iter().filter_map(|k| kind_of(*k)).collect();
        if kinds.len() != KINDS.len() {
            return self.close_unregistered(End::refused(
                "protocol",
                Status::invalid_argument(
                    "Hello.kinds must list SERVICE, POD, NODE and ENDPOINT_SLICE (protocol v1)",
                ),
            ));
        }
        // The agent already streams to this process (it probes for the other
        // replicas behind its address): say who we are and end, leaving the
        // cluster's current stream alone.
        if hello.known_sessions.contains(&self.hub.session_id) {
            debug!(cluster = %self.cluster, peer = ?self.peer, "agent probe reached a hub process it already streams to");
            let _ = self
                .send(hub_message::Message::Welcome(Welcome {
                    protocol_version: PROTOCOL_VERSION,
                    cluster: self.cluster.clone(),
                    session_id: self.hub.session_id.clone(),
                    ..Default::default()
                }))
                .await;
            return;
        }
        if hello.accepts_trust_bundle {
            *self.bundle_sent.lock().unwrap_or_else(|e| e.into_inner()) = Some(Default::default());
        }
        // This stream is now the cluster's; an older one ends.
        let (sup_tx, mut sup_rx) = watch::channel(false);
        let (generation, previous) = {
            let mut st = self.hub.lock();
            let Some(a) = st.get_mut(&self.cluster) else {
                return;
            };
            if let Some(old) = a.superseded.replace(sup_tx) {
                let _ = old.send(true);
            }
            // What a resume would start from: the previous stream and the last
            // batch applied from it, while the registry holds this session's
            // snapshot of the cluster.
            let previous = if a.resumable {
                (a.generation, a.applied_seq)
            } else {
                (0, 0)
            };
            a.generation += 1;
            a.applied_seq = 0;
            a.status.connected = true;
            a.status.synced = false;
            a.status.resumed = false;
            a.status.stream_bytes = 0;
            a.status.unavailable.clear();
            a.status.streams += 1;
            a.status.peer = self.peer.map(|p| p.to_string());
            a.status.agent_version = Some(hello.agent_version.clone());
            a.status.last_heartbeat = now_rfc3339();
            if let Some((t, serial)) = &self.expiry {
                a.status.certificate_expiry = k8s_openapi::jiff::Timestamp::from_second(*t)
                    .ok()
                    .map(|t| t.to_string());
                a.status.certificate_serial = Some(serial.clone());
            }
            (a.generation, previous)
        };
        let config_cluster = self.hub.config_clusters.contains(&self.cluster);
        // The Istio kinds both sides know, for a config cluster.
        let istio_kinds: BTreeSet<WireKind> = if config_cluster {
            hello
                .istio_kinds
                .iter()
                .filter_map(|k| WireKind::try_from(*k).ok())
                .filter(|k| super::agent_proto::group_kind(*k).is_some())
                .collect()
        } else {
            BTreeSet::new()
        };
        if config_cluster && istio_kinds.len() < super::agent_proto::kinds().len() {
            warn!(cluster = %self.cluster, offered = ?istio_kinds, "the mesh file lists this agent cluster as a config source, but its agent does not offer every Istio kind (an older agent): only those offered are read");
        }
        let namespaces: Vec<String> = self
            .hub
            .grants
            .get(&self.cluster)
            .cloned()
            .flatten()
            .map(|g| g.into_iter().collect())
            .unwrap_or_default();
        // A cluster-scoped kind (GatewayClass) is in no namespace a grant names.
        let mut istio_kinds = istio_kinds;
        if !namespaces.is_empty() {
            istio_kinds.retain(|k| !super::agent_proto::cluster_scoped(*k));
        }
        info!(cluster = %self.cluster, peer = ?self.peer, version = %hello.agent_version, "agent connected");
        let welcome = hub_message::Message::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            cluster: self.cluster.clone(),
            heartbeat_interval_ms: self.hub.opts.heartbeat.as_millis() as u32,
            window_messages: self.hub.opts.window_messages,
            window_bytes: self.hub.opts.window_bytes,
            max_message_bytes: self.hub.opts.max_message_bytes as u32,
            namespaces,
            istio_kinds: istio_kinds.iter().map(|k| *k as i32).collect(),
            session_id: self.hub.session_id.clone(),
            stream_id: generation,
            previous_stream_id: previous.0,
            previous_applied_seq: previous.1,
            max_snapshot_bytes: self.hub.opts.max_snapshot_bytes,
        });
        let end = match self.send(welcome).await {
            Err(e) => e,
            Ok(()) => {
                self.stream(
                    &mut inbound,
                    &mut sup_rx,
                    generation,
                    &istio_kinds,
                    previous.0 != 0,
                )
                .await
            }
        };
        self.disconnected(generation, end);
    }

    /// The stream after Welcome: snapshot, then deltas, until it ends.
    ///
    /// `istio_kinds`: the Istio kinds that are part of the snapshot (Welcome
    /// asked for them); `offered_resume`: Welcome named a previous stream to resume.
    async fn stream(
        &self,
        inbound: &mut Streaming<AgentMessage>,
        superseded: &mut watch::Receiver<bool>,
        generation: u64,
        istio_kinds: &BTreeSet<WireKind>,
        offered_resume: bool,
    ) -> End {
        let silence = self.hub.opts.heartbeat * MISSED_HEARTBEATS;
        let mut ticker = tokio::time::interval(self.hub.opts.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_seq = 0u64;
        let mut snapshot: HashMap<KubeKind, BTreeMap<String, KubeObject>> = HashMap::new();
        // The Istio config of the snapshot, by `Kind/ns/name`.
        let mut config_snapshot: BTreeMap<String, Value> = BTreeMap::new();
        let mut snapshot_bytes = 0u64;
        let mut ended: BTreeSet<WireKind> = BTreeSet::new();
        let want_ended = KINDS.len() + istio_kinds.len();
        let mut synced = false;
        let mut refused: BTreeMap<String, ObjectProblem> = BTreeMap::new();
        // Any message from the agent counts as a heartbeat; the deadline is not
        // restarted by our own heartbeats.
        let mut last_heard = tokio::time::Instant::now();
        loop {
            let msg = tokio::select! {
                m = tokio::time::timeout_at(last_heard + silence, inbound.message()) => m,
                _ = ticker.tick() => {
                    if let Some(reason) = self.leaf.as_deref().and_then(|l| self.hub.revocation(&self.cluster, l)) {
                        return End::refused("revoked", Status::permission_denied(reason));
                    }
                    if let Err(e) = self.send_trust_bundle().await {
                        return e;
                    }
                    let hb = hub_message::Message::Heartbeat(Heartbeat { sent_unix_ms: unix_ms() });
                    if let Err(e) = self.send(hb).await {
                        return e;
                    }
                    continue;
                }
                _ = superseded.changed() => {
                    return End {
                        status: Status::aborted("a newer stream from the same cluster replaced this one"),
                        label: None,
                    };
                }
            };
            let msg = match msg {
                Err(_) => {
                    return End::refused(
                        "missed_heartbeats",
                        Status::deadline_exceeded(format!(
                            "no message from the agent for {}s ({} heartbeat intervals)",
                            silence.as_secs(),
                            MISSED_HEARTBEATS
                        )),
                    )
                }
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => {
                    return End {
                        status: Status::ok("the agent closed the stream"),
                        label: None,
                    }
                }
                Ok(Err(s)) => {
                    let label = if s.code() == tonic::Code::OutOfRange
                        || s.message().contains("message length too large")
                    {
                        Some("oversized_message")
                    } else {
                        None
                    };
                    return End {
                        status: Status::new(s.code(), format!("stream failed: {}", s.message())),
                        label,
                    };
                }
            };
            last_heard = tokio::time::Instant::now();
            self.heard();
            let batch = match msg.message {
                Some(agent_message::Message::Heartbeat(_)) => continue,
                Some(agent_message::Message::KindStatus(k)) => {
                    let name = WireKind::try_from(k.kind)
                        .ok()
                        .filter(|w| *w != WireKind::Unspecified)
                        .map(|w| w.as_str_name().to_string());
                    let Some(name) = name else {
                        return End::refused(
                            "protocol",
                            Status::invalid_argument(format!(
                                "KindStatus of unknown kind {}",
                                k.kind
                            )),
                        );
                    };
                    if !k.unavailable.is_empty() {
                        warn!(cluster = %self.cluster, kind = %name, reason = %k.unavailable, "the agent reports a kind unavailable");
                    }
                    if let Some(a) = self.hub.lock().get_mut(&self.cluster) {
                        if k.unavailable.is_empty() {
                            a.status.unavailable.remove(&name);
                        } else {
                            a.status.unavailable.insert(name, k.unavailable);
                        }
                    }
                    continue;
                }
                Some(agent_message::Message::Hello(_)) => {
                    return End::refused(
                        "protocol",
                        Status::invalid_argument("Hello sent twice on one stream"),
                    )
                }
                None => {
                    return End::refused("protocol", Status::invalid_argument("empty AgentMessage"))
                }
                Some(agent_message::Message::Batch(b)) => b,
            };
            if batch.seq != last_seq + 1 {
                return End::refused(
                    "protocol",
                    Status::invalid_argument(format!(
                        "batch sequence {} after {last_seq}: batches are numbered 1, 2, 3, ...",
                        batch.seq
                    )),
                );
            }
            last_seq = batch.seq;
            let wire = WireKind::try_from(batch.kind).ok();
            let istio_kind = wire.filter(|w| super::agent_proto::group_kind(*w).is_some());
            let kind = kind_of(batch.kind);
            let (Some(wire), true) = (wire, kind.is_some() || istio_kind.is_some()) else {
                return End::refused(
                    "protocol",
                    Status::invalid_argument(format!(
                        "batch {}: unknown kind {}",
                        batch.seq, batch.kind
                    )),
                );
            };
            if istio_kind.is_some_and(|k| !istio_kinds.contains(&k)) {
                return End::refused(
                    "protocol",
                    Status::invalid_argument(format!(
                        "batch {}: Istio config ({}) that Welcome did not ask for",
                        batch.seq,
                        wire.as_str_name()
                    )),
                );
            }
            let name = wire.as_str_name();
            self.count(&batch);
            if batch.resumed {
                if batch.seq != 1 || batch.snapshot {
                    return End::refused(
                        "protocol",
                        Status::invalid_argument(format!(
                            "batch {}: only the first batch of a stream may be marked resumed, \
                             and it carries deltas",
                            batch.seq
                        )),
                    );
                }
                // The registry must still hold this session's snapshot of the
                // cluster (not dropped after the grace period).
                let kept = {
                    let mut st = self.hub.lock();
                    match st.get_mut(&self.cluster) {
                        Some(a) if offered_resume && a.resumable && a.generation == generation => {
                            a.status.synced = true;
                            a.status.resumed = true;
                            a.status.resumed_streams += 1;
                            Some(a.problems.clone())
                        }
                        _ => None,
                    }
                };
                let Some(kept) = kept else {
                    return End::refused(
                        "resume_refused",
                        Status::failed_precondition(
                            "resume refused: this hub holds no state of the cluster from the \
                             stream it named; send a snapshot",
                        ),
                    );
                };
                refused = kept;
                synced = true;
                let reg = &self.hub.registry;
                let _ = reg.set_stale(&self.cluster, false);
                let _ = reg.set_error(&self.cluster, None);
                info!(cluster = %self.cluster, "agent stream resumed: no snapshot");
            }
            if batch.snapshot {
                if synced || ended.contains(&wire) {
                    return End::refused(
                        "protocol",
                        Status::invalid_argument(format!(
                            "batch {}: a second snapshot of {name} on one stream",
                            batch.seq
                        )),
                    );
                }
                snapshot_bytes += batch
                    .changes
                    .iter()
                    .map(|c| c.object.len() as u64)
                    .sum::<u64>();
                if snapshot_bytes > self.hub.opts.max_snapshot_bytes {
                    return End::refused(
                        "snapshot_too_large",
                        Status::resource_exhausted(format!(
                            "the snapshot exceeds the hub's limit of {} bytes of objects \
                             (Welcome.max_snapshot_bytes) at batch {}: the cluster keeps its \
                             last state",
                            self.hub.opts.max_snapshot_bytes, batch.seq
                        )),
                    );
                }
                match kind {
                    Some(kind) => {
                        let objs = snapshot.entry(kind).or_default();
                        for ch in &batch.changes {
                            match self.decode(kind, ch) {
                                Ok(Some(o)) => {
                                    objs.insert(key(ch), o);
                                }
                                Ok(None) => {}
                                Err(p) => {
                                    refused.insert(format!("{kind} {}", key(ch)), p);
                                }
                            }
                        }
                    }
                    None => {
                        for ch in &batch.changes {
                            let id = format!("{name} {}", key(ch));
                            match self.decode_config(wire, ch) {
                                Ok(Some(v)) => {
                                    config_snapshot.insert(id, v);
                                }
                                Ok(None) => {}
                                Err(p) => {
                                    refused.insert(id, p);
                                }
                            }
                        }
                    }
                }
                if batch.end_of_snapshot {
                    ended.insert(wire);
                }
                if ended.len() == want_ended {
                    if !self.is_current(generation) {
                        return End {
                            status: Status::aborted(
                                "a newer stream from the same cluster replaced this one",
                            ),
                            label: None,
                        };
                    }
                    let all: Vec<KubeObject> = std::mem::take(&mut snapshot)
                        .into_values()
                        .flat_map(BTreeMap::into_values)
                        .collect();
                    let n = all.len();
                    let reg = &self.hub.registry;
                    match reg.reset_cluster(&self.cluster, all) {
                        Ok(rejected) => {
                            for r in rejected {
                                warn!(cluster = %self.cluster, kind = %r.kind, object = %r.object, reason = %r.reason, "object rejected");
                            }
                        }
                        Err(e) => warn!(cluster = %self.cluster, error = %e),
                    }
                    if !istio_kinds.is_empty() {
                        let config = std::mem::take(&mut config_snapshot);
                        self.push_config(&config);
                        if let Some(a) = self.hub.lock().get_mut(&self.cluster) {
                            a.config = config;
                        }
                    }
                    self.set_problems(&refused);
                    let _ = reg.set_stale(&self.cluster, false);
                    let _ = reg.set_error(&self.cluster, None);
                    synced = true;
                    if let Some(a) = self.hub.lock().get_mut(&self.cluster) {
                        a.status.synced = true;
                        a.resumable = true;
                    }
                    info!(cluster = %self.cluster, objects = n, "agent snapshot complete");
                }
            } else {
                if !synced {
                    return End::refused(
                        "protocol",
                        Status::invalid_argument(format!(
                            "batch {}: deltas before the snapshot's end-of-snapshot markers",
                            batch.seq
                        )),
                    );
                }
                if !self.is_current(generation) {
                    return End {
                        status: Status::aborted(
                            "a newer stream from the same cluster replaced this one",
                        ),
                        label: None,
                    };
                }
                let before = refused.clone();
                match kind {
                    Some(kind) => {
                        for ch in &batch.changes {
                            let id = format!("{kind} {}", key(ch));
                            match self.decode(kind, ch) {
                                Ok(Some(o)) => {
                                    refused.remove(&id);
                                    self.apply(Event::Upsert(o));
                                }
                                Ok(None) => {
                                    refused.remove(&id);
                                    self.apply(Event::Delete(deleted(kind, ch)));
                                }
                                Err(p) => {
                                    refused.insert(id, p);
                                }
                            }
                        }
                    }
                    None if !batch.changes.is_empty() => {
                        // Decoded first: a refusal takes the hub's lock.
                        let decoded: Vec<(String, Result<Option<Value>, ObjectProblem>)> = batch
                            .changes
                            .iter()
                            .map(|ch| (format!("{name} {}", key(ch)), self.decode_config(wire, ch)))
                            .collect();
                        let config = {
                            let mut st = self.hub.lock();
                            let Some(a) = st.get_mut(&self.cluster) else {
                                continue;
                            };
                            for (id, d) in decoded {
                                match d {
                                    Ok(Some(v)) => {
                                        refused.remove(&id);
                                        a.config.insert(id, v);
                                    }
                                    Ok(None) => {
                                        refused.remove(&id);
                                        a.config.remove(&id);
                                    }
                                    Err(p) => {
                                        refused.insert(id, p);
                                    }
                                }
                            }
                            a.config.clone()
                        };
                        self.push_config(&config);
                    }
                    None => {}
                }
                if refused != before {
                    self.set_problems(&refused);
                }
            }
            if let Some(a) = self.hub.lock().get_mut(&self.cluster) {
                if a.generation == generation {
                    a.applied_seq = batch.seq;
                }
            }
            if let Err(e) = self
                .send(hub_message::Message::Ack(Ack { seq: batch.seq }))
                .await
            {
                return e;
            }
        }
    }

    /// Hand the cluster's Istio config to the config store (as the kube source
    /// does for a kubeconfig config cluster: the whole set, validated there).
    fn push_config(&self, config: &BTreeMap<String, Value>) {
        let source = crate::registry::config_source_name(&crate::config::ConfigSource::Cluster(
            self.cluster.clone(),
        ));
        let origin = format!("cluster {} (agent)", self.cluster);
        let docs = config
            .values()
            .map(|v| crate::registry::config::RawDoc {
                origin: origin.clone(),
                value: v.clone(),
            })
            .collect();
        self.hub.registry.replace_config_source(&source, docs);
    }

    /// The refused objects on `/debug/clusterz` (and kept for a resumed stream).
    fn set_problems(&self, refused: &BTreeMap<String, ObjectProblem>) {
        let _ = self
            .hub
            .registry
            .set_source_problems(&self.cluster, refused.values().cloned().collect());
        if let Some(a) = self.hub.lock().get_mut(&self.cluster) {
            a.problems = refused.clone();
        }
    }

    /// An Istio config change's document (`Ok(Some)`), a DELETE (`Ok(None)`), or
    /// a refusal: outside the grant, not JSON, another kind, or metadata that
    /// differs from the change's.
    fn decode_config(
        &self,
        kind: WireKind,
        ch: &super::agent_proto::Change,
    ) -> Result<Option<Value>, ObjectProblem> {
        let (group, kind_name) = super::agent_proto::group_kind(kind).unwrap_or(("", ""));
        let refuse = |reason: String| {
            let p = ObjectProblem {
                origin: format!("agent of cluster {}", self.cluster),
                kind: kind_name.to_string(),
                object: key(ch),
                reason,
            };
            self.hub
                .refuse(Some(&self.cluster), "object", &p.to_string());
            p
        };
        if let Some(Some(grant)) = self.hub.grants.get(&self.cluster) {
            if !grant.contains(&ch.namespace) {
                return Err(refuse(format!(
                    "namespace {:?} is outside this cluster's agent grant (clusters[].agent.namespaces: {:?})",
                    ch.namespace,
                    grant.iter().collect::<Vec<_>>()
                )));
            }
        }
        if ch.op == change::Op::Delete as i32 {
            return Ok(None);
        }
        if ch.op != change::Op::Upsert as i32 {
            return Err(refuse(format!("unknown change op {}", ch.op)));
        }
        let v: Value = serde_json::from_slice(&ch.object)
            .map_err(|e| refuse(format!("not a JSON document: {e}")))?;
        if v["kind"].as_str() != Some(kind_name)
            || !v["apiVersion"]
                .as_str()
                .is_some_and(|a| a.starts_with(&format!("{group}/")))
        {
            return Err(refuse(format!(
                "apiVersion/kind {:?}/{:?} is not the batch's {group} {kind_name}",
                v["apiVersion"], v["kind"]
            )));
        }
        if v["metadata"]["name"].as_str() != Some(ch.name.as_str())
            || v["metadata"]["namespace"].as_str().unwrap_or("") != ch.namespace
        {
            return Err(refuse(
                "the object's metadata.namespace/name differ from the change's".into(),
            ));
        }
        Ok(Some(v))
    }

    fn apply(&self, ev: Event) {
        match self.hub.registry.apply(&self.cluster, ev) {
            Ok(Some(r)) => {
                warn!(cluster = %self.cluster, kind = %r.kind, object = %r.object, reason = %r.reason, "object rejected")
            }
            Ok(None) => {}
            Err(e) => warn!(cluster = %self.cluster, error = %e),
        }
    }

    /// An UPSERT's object (`Ok(Some)`), a DELETE (`Ok(None)`), or a refusal.
    fn decode(
        &self,
        kind: KubeKind,
        ch: &super::agent_proto::Change,
    ) -> Result<Option<KubeObject>, ObjectProblem> {
        let refuse = |reason: String| {
            let p = ObjectProblem {
                origin: format!("agent of cluster {}", self.cluster),
                kind: kind.to_string(),
                object: key(ch),
                reason,
            };
            self.hub
                .refuse(Some(&self.cluster), "object", &p.to_string());
            p
        };
        if kind != KubeKind::Node {
            if let Some(Some(grant)) = self.hub.grants.get(&self.cluster) {
                if !grant.contains(&ch.namespace) {
                    return Err(refuse(format!(
                        "namespace {:?} is outside this cluster's agent grant (clusters[].agent.namespaces: {:?})",
                        ch.namespace,
                        grant.iter().collect::<Vec<_>>()
                    )));
                }
            }
        }
        if ch.op == change::Op::Delete as i32 {
            return Ok(None);
        }
        if ch.op != change::Op::Upsert as i32 {
            return Err(refuse(format!("unknown change op {}", ch.op)));
        }
        let obj = match kind {
            KubeKind::Service => {
                serde_json::from_slice::<Service>(&ch.object).map(KubeObject::Service)
            }
            KubeKind::Pod => serde_json::from_slice::<Pod>(&ch.object).map(KubeObject::Pod),
            KubeKind::Node => serde_json::from_slice::<Node>(&ch.object).map(KubeObject::Node),
            KubeKind::EndpointSlice => {
                serde_json::from_slice::<EndpointSlice>(&ch.object).map(KubeObject::EndpointSlice)
            }
        }
        .map_err(|e| refuse(format!("not a {kind} object: {e}")))?;
        let m = obj.metadata();
        let ns = if kind == KubeKind::Node {
            ""
        } else {
            ch.namespace.as_str()
        };
        if m.name.as_deref() != Some(ch.name.as_str()) || m.namespace.as_deref().unwrap_or("") != ns
        {
            return Err(refuse(
                "the object's metadata.namespace/name differ from the change's".into(),
            ));
        }
        // The hub keeps only what the registry reads, whatever the agent sent.
        Ok(Some(super::kube::slim(obj)))
    }

    fn heard(&self) {
        if let Some(a) = self.hub.lock().get_mut(&self.cluster) {
            a.status.last_heartbeat = now_rfc3339();
        }
    }

    fn count(&self, b: &Batch) {
        if let Some(a) = self.hub.lock().get_mut(&self.cluster) {
            a.status.batches += 1;
            a.status.changes += b.changes.len() as u64;
            a.status.stream_bytes += prost::Message::encoded_len(b) as u64;
        }
    }

    fn is_current(&self, generation: u64) -> bool {
        self.hub
            .lock()
            .get(&self.cluster)
            .is_some_and(|a| a.generation == generation)
    }

    /// A refusal before the stream became the cluster's: nothing changes in the
    /// registry.
    fn close_unregistered(&self, end: End) {
        if let Some(l) = end.label {
            self.hub
                .refuse(Some(&self.cluster), l, end.status.message());
        }
        let _ = self.tx.try_send(Err(end.status));
    }

    /// The stream ended: unless a newer one took over, the cluster goes stale
    /// (and is dropped after the grace period, if one is set).
    fn disconnected(self, generation: u64, end: End) {
        if let Some(l) = end.label {
            self.hub
                .refuse(Some(&self.cluster), l, end.status.message());
        }
        let reason = format!("agent disconnected: {}", end.status.message());
        let current = {
            let mut st = self.hub.lock();
            match st.get_mut(&self.cluster) {
                Some(a) if a.generation == generation => {
                    a.status.connected = false;
                    a.status.last_disconnect = Some(reason.clone());
                    a.superseded = None;
                    true
                }
                _ => false,
            }
        };
        if end.status.code() != tonic::Code::Ok {
            let _ = self.tx.try_send(Err(end.status));
        }
        if !current {
            return;
        }
        info!(cluster = %self.cluster, %reason, "agent stream ended; serving its last state, marked stale");
        let reg = &self.hub.registry;
        let _ = reg.set_stale(&self.cluster, true);
        let _ = reg.set_error(&self.cluster, Some(reason));
        if let Some(grace) = self.hub.opts.stale_grace {
            let hub = self.hub.clone();
            let cluster = self.cluster.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                let still = hub
                    .lock()
                    .get(&cluster)
                    .is_some_and(|a| a.generation == generation && !a.status.connected);
                if still {
                    warn!(cluster = %cluster, "agent away for longer than the grace period: dropping its endpoints");
                    if let Some(a) = hub.lock().get_mut(&cluster) {
                        a.resumable = false;
                    }
                    let _ = hub.registry.reset_cluster(&cluster, Vec::new());
                    let _ = hub.registry.set_synced(&cluster, false);
                }
            });
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn key(ch: &super::agent_proto::Change) -> String {
    if ch.namespace.is_empty() {
        ch.name.clone()
    } else {
        format!("{}/{}", ch.namespace, ch.name)
    }
}

/// The object a DELETE names (the registry reads only its kind and name).
fn deleted(kind: KubeKind, ch: &super::agent_proto::Change) -> KubeObject {
    let metadata = ObjectMeta {
        name: Some(ch.name.clone()),
        namespace: (!ch.namespace.is_empty()).then(|| ch.namespace.clone()),
        ..ObjectMeta::default()
    };
    match kind {
        KubeKind::Service => KubeObject::Service(Service {
            metadata,
            ..Service::default()
        }),
        KubeKind::Pod => KubeObject::Pod(Pod {
            metadata,
            ..Pod::default()
        }),
        KubeKind::Node => KubeObject::Node(Node {
            metadata,
            ..Node::default()
        }),
        KubeKind::EndpointSlice => KubeObject::EndpointSlice(EndpointSlice {
            metadata,
            ..EndpointSlice::default()
        }),
    }
}

/// The identity an agent certificate for `cluster` carries (for docs and tests).
pub fn identity(trust_domain: &str, cluster: &str) -> String {
    agent_uri(trust_domain, cluster)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(dir: &std::path::Path) -> (Arc<AgentHub>, Arc<Ca>) {
        let mut mesh = MeshConfig::parse(
            "clusters:\n- {name: c3, agent: {namespaces: [shop]}}\n- {name: c1, manifests: m}\n",
            dir,
        )
        .expect("mesh");
        mesh.ca.state_dir = dir.join("ca");
        let ca = Arc::new(Ca::from_mesh(&mesh).expect("ca"));
        let registry = Registry::new(Arc::new(mesh.clone()), crate::push::PushQueue::new());
        let c = ca.clone();
        let hub = AgentHub::new(
            registry,
            &mesh,
            Arc::new(move || c.clone()),
            Arc::new(agent_tokens::TokenStore::local(agent_tokens::token_dir(
                &mesh.ca.state_dir,
            ))),
            AgentHubOptions::default(),
        );
        (hub, ca)
    }

    #[test]
    fn agent_certificate_names_the_cluster_and_only_the_csr_key() {
        let tmp = tempfile::tempdir().unwrap();
        let (hub, ca) = hub(tmp.path());
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://cluster.local/crossmesh/cluster/c1"
                .try_into()
                .unwrap(),
        ));
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let cert = ca.sign_agent_csr("c3", &csr).expect("signed");
        assert_eq!(cert.uri, "spiffe://cluster.local/crossmesh/cluster/c3");
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::pem_slice_iter(cert.cert_chain_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        // The requested SANs are ignored: only the hub's URI SAN.
        let sans: Vec<String> = x
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(sans, ["URI(spiffe://cluster.local/crossmesh/cluster/c3)"]);
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert_eq!(
            x.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        // The hub reads the cluster back from it.
        assert_eq!(hub.cluster_of(&der).unwrap(), "c3");
        // A workload certificate names no agent.
        let w = ca
            .issue(&crate::security::Identity {
                trust_domain: "cluster.local".into(),
                namespace: "crossmesh".into(),
                service_account: "cluster".into(),
            })
            .unwrap();
        let wder = rustls::pki_types::CertificateDer::pem_slice_iter(w.cert_chain_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert!(hub.cluster_of(&wder).is_err());
        // Garbage instead of a CSR, and a name that cannot be a SPIFFE segment.
        assert!(ca.sign_agent_csr("c3", "not a csr").is_err());
        assert!(ca.sign_agent_csr("c3/../c1", &csr).is_err());
    }

    #[test]
    fn istio_config_changes_are_checked_against_grant_kind_and_metadata() {
        let tmp = tempfile::tempdir().unwrap();
        let (hub, _) = hub(tmp.path());
        let (tx, _rx) = mpsc::channel(4);
        let session = Session {
            hub: hub.clone(),
            cluster: "c3".into(),
            leaf: None,
            peer: None,
            expiry: None,
            tx,
            bundle_sent: Mutex::new(None),
        };
        let vs = |ns: &str, name: &str, kind: &str| crate::sources::agent_proto::Change {
            op: change::Op::Upsert as i32,
            namespace: ns.into(),
            name: name.into(),
            resource_version: "1".into(),
            object: serde_json::to_vec(&serde_json::json!({
                "apiVersion": "networking.istio.io/v1", "kind": kind,
                "metadata": {"name": "vs", "namespace": "shop"},
                "spec": {"hosts": ["a"]}
            }))
            .unwrap(),
        };
        let ok = session
            .decode_config(
                WireKind::VirtualService,
                &vs("shop", "vs", "VirtualService"),
            )
            .expect("in the grant");
        assert_eq!(ok.unwrap()["spec"]["hosts"][0], "a");
        // Outside the grant: refused and counted like any object.
        let e = session
            .decode_config(
                WireKind::VirtualService,
                &vs("other", "vs", "VirtualService"),
            )
            .unwrap_err();
        assert!(
            e.reason.contains("outside this cluster's agent grant"),
            "{e}"
        );
        // A document of another kind than the batch's, and metadata that differs.
        let e = session
            .decode_config(
                WireKind::VirtualService,
                &vs("shop", "vs", "DestinationRule"),
            )
            .unwrap_err();
        assert!(e.reason.contains("is not the batch's"), "{e}");
        let e = session
            .decode_config(
                WireKind::VirtualService,
                &vs("shop", "other", "VirtualService"),
            )
            .unwrap_err();
        assert!(e.reason.contains("differ from the change's"), "{e}");
        assert_eq!(hub.status()["c3"].refusals["object"], 3);
    }

    #[test]
    fn clusterz_gets_an_agent_field_for_agent_clusters_only() {
        let tmp = tempfile::tempdir().unwrap();
        let (hub, _) = hub(tmp.path());
        hub.refuse(Some("c3"), "token_used", "enrolment token already used");
        let mut page = serde_json::json!([{"name": "c3"}, {"name": "c1"}]);
        hub.annotate_clusterz(&mut page);
        assert_eq!(page[0]["agent"]["refusals"]["token_used"], 1);
        assert_eq!(page[0]["agent"]["connected"], false);
        assert!(page[1].get("agent").is_none());
    }
}
