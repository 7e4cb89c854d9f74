//! `crossmesh agent`: the member-cluster side of the agent protocol
//! (`proto/crossmesh/agent/v1/agent.proto`, DESIGN.md §5). It runs inside a member
//! cluster, watches the objects the mesh needs there with the kube source's
//! watchers and slimming (`sources::kube::streams`), and streams them to the hub,
//! which never holds a credential for this cluster.
//!
//! Flow:
//! - Identity: the client certificate and key in `--state-dir`
//!   (`cert-chain.pem`, `key.pem`); without them the agent enrols once with the
//!   single-use token of `--token-file` and a CSR of a key it generates (the key
//!   never leaves the agent). At half life it asks the hub for a new certificate
//!   (`Renew`, authenticated by the current one).
//! - Inventory: the watchers keep a map of the slimmed objects (their JSON) per
//!   kind and a set of keys changed since they were last sent. Watches run for
//!   the whole life of the process and resume from resource versions (kube-rs),
//!   whether or not the hub is reachable.
//! - Links: one stream per hub process (`Welcome.session_id`) reachable through
//!   `--hub`: the replicas of a hub behind one load balancer each get the whole
//!   inventory. Probes (further streams through the same address, and through
//!   every address HOST resolves to) find them: a probe's Hello lists the
//!   sessions the agent already has a link to, and such a hub answers with a
//!   bare Welcome and ends the probe; any other hub process takes it as a new
//!   link. Probes run right after a link is established or lost (a few, with
//!   backoff), then every [`PROBE_INTERVAL`] (jittered), and every
//!   [`PROBE_SLOW`] once [`PROBE_KNOWN_STREAK`] probes in a row found only known
//!   processes.
//! - Stream: per link, Hello -> Welcome, then a snapshot of every kind from
//!   the inventory (each ending with its end-of-snapshot marker), then deltas: the
//!   current state of every changed key (coalesced: an object changed ten times
//!   while the window was full is sent once). At most `Welcome.window_messages`
//!   batches and `window_bytes` bytes are unacknowledged at any time; batches stay
//!   under `max_message_bytes`. Each hub process has its own set of changed
//!   keys, window and resume state; the inventory and its watches are shared.
//! - Failure: a lost link (error, or nothing from the hub for three heartbeat
//!   intervals) is looked for again by probes after a jittered backoff (500 ms
//!   doubling to 10 s) and resumes, or starts with a full snapshot again.

pub mod inject;
pub mod istio;
pub mod proto;
pub mod state;
pub mod webhook;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use kube::runtime::watcher;
use prost::Message as _;
use tokio::sync::{mpsc, watch, Notify};
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::registry::{KubeKind, KubeObject};
use crate::sources::agent::{wire_kind, KINDS, MISSED_HEARTBEATS};
use crate::sources::kube::{self as kube_source, object_key};
use proto::agent_service_client::AgentServiceClient;
use proto::Kind as WireKind;
use proto::{
    agent_message, change, hub_message, AgentMessage, Batch, Change, EnrollRequest, Heartbeat,
    Hello, RenewRequest, PROTOCOL_VERSION,
};

/// Certificate chain file in the state directory.
pub const CERT_FILE: &str = "cert-chain.pem";
/// Private key file in the state directory (mode 0600).
pub const KEY_FILE: &str = "key.pem";
/// First reconnect delay; doubles per failure up to [`RECONNECT_MAX`], jittered.
pub const RECONNECT_MIN: Duration = Duration::from_millis(500);
/// Longest reconnect delay.
pub const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// Changes per batch at most (a batch also stays under half the hub's limit).
const MAX_CHANGES_PER_BATCH: usize = 500;
/// How long the hub has to answer Hello.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between probes for hub processes (jittered down by up to 25%).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(20);
/// Interval between probes once [`PROBE_KNOWN_STREAK`] probes in a row found
/// only hub processes the agent already has a link to.
pub const PROBE_SLOW: Duration = Duration::from_secs(60);
/// Probes in a row that found only known hub processes before [`PROBE_SLOW`].
pub const PROBE_KNOWN_STREAK: u32 = 3;
/// Probes with backoff delays (500 ms, 1 s, 2 s) after a link is established or lost.
const QUICK_PROBES: u32 = 3;
/// How long the changes and resume state of a hub process without a link are kept.
const SESSION_KEEP: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("--hub {0:?}: expected HOST:PORT")]
    HubAddress(String),
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("no client certificate in the {state} and no --token-file to enrol with")]
    NoToken { state: String },
    #[error("{0}")]
    State(String),
    #[error("enrolment refused by the hub: {0}")]
    Enrol(String),
    #[error("{0}")]
    Tls(String),
    #[error("member cluster API: {0}")]
    Kube(String),
}

/// `crossmesh agent` options.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The hub's agent port, HOST:PORT.
    pub hub: String,
    pub cluster: String,
    pub token_file: Option<PathBuf>,
    /// PEM roots the hub's certificate must chain to (the mesh root).
    pub root_cert: PathBuf,
    /// `None`: in-cluster credentials.
    pub kubeconfig: Option<PathBuf>,
    /// `None`: the Secret [`state::STATE_SECRET`] in the agent's namespace.
    pub state_dir: Option<PathBuf>,
    /// The injection webhook (`--webhook-service`); `None`: not served.
    pub webhook: Option<webhook::WebhookOptions>,
    /// `--max-inventory-bytes`: the most JSON the agent keeps of its cluster's
    /// objects (0: [`DEFAULT_MAX_INVENTORY_BYTES`]).
    pub max_inventory_bytes: usize,
}

/// Run the agent until the process is stopped. Returns only on a failure that
/// retrying cannot fix (bad flags, refused enrolment, unreadable files).
pub async fn run(opts: AgentOptions) -> Result<(), AgentError> {
    let (host, _) = split_host(&opts.hub)?;
    let roots = std::fs::read(&opts.root_cert).map_err(|e| AgentError::File {
        path: opts.root_cert.clone(),
        reason: e.to_string(),
    })?;
    let client = match &opts.kubeconfig {
        Some(path) => kube_source::client_from_file(path, None)
            .await
            .map(|(c, _)| c)
            .map_err(|e| AgentError::Kube(e.to_string()))?,
        None => crate::sources::in_cluster::client()
            .map(|(c, _)| c)
            .map_err(|e| AgentError::Kube(e.to_string()))?,
    };
    let store = Arc::new(state::StateStore::new(
        opts.state_dir.as_deref(),
        opts.webhook.as_ref().map(|w| w.namespace.as_str()),
        &client,
    ));
    // The trust bundle (kept, else --root-cert), the webhook and its upkeep.
    let trust = webhook::start(opts.webhook.clone(), store.clone(), roots, &client).await?;
    let ident = load_or_enrol(&opts, &store, &host, &trust, false).await?;
    let inv = Arc::new(Shared::default());
    inv.lock().max_bytes = opts.max_inventory_bytes;
    *inv.client.lock().unwrap_or_else(|e| e.into_inner()) = Some(client.clone());
    let watch = tokio::spawn(watch_cluster(client, inv.clone()));
    let mut ident = Arc::new(ident);
    let mut links: HashMap<String, Link> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, u64, Outcome)>();
    let mut next_link = 0u64;
    // Probes in a row that reached no hub; links in a row that ended unsynced.
    let mut failures = 0u32;
    let mut link_failures = 0u32;
    // Probes in a row that found only known hub processes.
    let mut known_streak = 0u32;
    // Probes left at backoff delays (after a link was established or lost).
    let mut quick = 0u32;
    let mut next_probe = tokio::time::Instant::now();
    let mut turn = 0usize;
    // Hub processes without a link, since when.
    let mut unlinked: HashMap<String, tokio::time::Instant> = HashMap::new();
    loop {
        if watch.is_finished() {
            return Err(AgentError::Kube("the watchers stopped".into()));
        }
        if SystemTime::now() >= ident.renew_at || trust.renew_requested() {
            match renew(&opts, &store, &host, &trust, &ident).await {
                Ok(i) => ident = Arc::new(i),
                Err(e) => warn!(error = %e, "certificate renewal failed; retrying"),
            }
        }
        let renew_in = ident
            .renew_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1));
        let mut refused = false;
        tokio::select! {
            Some((session, id, outcome)) = done_rx.recv() => {
                if links.get(&session).is_none_or(|l| l.id != id) {
                    continue;
                }
                let l = links.remove(&session);
                unlinked.insert(session.clone(), tokio::time::Instant::now());
                warn!(session = %session, peer = %l.map(|l| l.peer).unwrap_or_default(),
                    reason = %outcome.reason, links = links.len(), "link to a hub process ended");
                if outcome.synced {
                    link_failures = 0;
                }
                refused = outcome.refused;
                if !refused {
                    known_streak = 0;
                    quick = QUICK_PROBES;
                    next_probe = next_probe.min(tokio::time::Instant::now() + backoff(link_failures));
                    link_failures = link_failures.saturating_add(1);
                }
            }
            _ = tokio::time::sleep_until(next_probe) => {
                let now = tokio::time::Instant::now();
                unlinked.retain(|s, since| {
                    let keep = now.duration_since(*since) < SESSION_KEEP;
                    if !keep {
                        inv.forget_session(s);
                    }
                    keep
                });
                let addrs = hub_addresses(&opts.hub).await;
                let addr = addrs[turn % addrs.len()].clone();
                turn = turn.wrapping_add(1);
                let known: Vec<String> = links.keys().filter(|s| !s.is_empty()).cloned().collect();
                match dial(&opts, &host, &addr, &trust, &ident, known, &mut refused).await {
                    Err(reason) => {
                        warn!(peer = %addr, %reason, links = links.len(), "cannot reach the hub");
                        failures = failures.saturating_add(1);
                    }
                    Ok(d) if d.welcome.stream_id == 0 && links.contains_key(&d.welcome.session_id) => {
                        failures = 0;
                        known_streak = known_streak.saturating_add(1);
                        debug!(session = %d.welcome.session_id, peer = %addr, "probe reached a hub process this agent has a link to");
                    }
                    Ok(d) => {
                        failures = 0;
                        let session = d.welcome.session_id.clone();
                        if let Some(old) = links.remove(&session) {
                            // A hub that does not know Hello.known_sessions
                            // replaced that link's stream with this one.
                            old.stop.notify_one();
                            let _ = old.task.await;
                            known_streak = known_streak.saturating_add(1);
                        } else {
                            known_streak = 0;
                            quick = QUICK_PROBES;
                        }
                        unlinked.remove(&session);
                        next_link += 1;
                        let stop = Arc::new(Notify::new());
                        let done = done_tx.clone();
                        let (id, s) = (next_link, session.clone());
                        let task = tokio::spawn(link(d, trust.clone(), ident.clone(), inv.clone(), stop.clone()));
                        let task = tokio::spawn(async move {
                            let outcome = task.await.unwrap_or_else(|e| Outcome {
                                synced: false,
                                refused: false,
                                reason: format!("the link's task failed: {e}"),
                            });
                            let _ = done.send((s, id, outcome));
                        });
                        info!(session = %session, peer = %addr, links = links.len() + 1, "link to a hub process established");
                        links.insert(session, Link { id, task, stop, peer: addr });
                    }
                }
                let delay = if links.is_empty() {
                    backoff(failures.max(link_failures))
                } else if quick > 0 {
                    quick -= 1;
                    backoff(QUICK_PROBES - 1 - quick)
                } else if known_streak >= PROBE_KNOWN_STREAK {
                    jitter(PROBE_SLOW)
                } else {
                    jitter(PROBE_INTERVAL)
                };
                next_probe = tokio::time::Instant::now() + delay;
            }
            _ = tokio::time::sleep(renew_in) => {}
        }
        if refused && opts.token_file.is_some() {
            // The hub refuses this certificate (revoked): every link ends, and
            // the agent enrols again with the token file's token, retried
            // (re-reading the file) until it works.
            warn!("the hub refuses this agent's certificate; enrolling again with --token-file");
            for (_, l) in links.drain() {
                l.stop.notify_one();
                let _ = l.task.await;
            }
            let mut attempt = 0u32;
            ident = loop {
                match load_or_enrol(&opts, &store, &host, &trust, true).await {
                    Ok(i) => break Arc::new(i),
                    Err(e) => {
                        warn!(error = %e, "enrolment refused; retrying with the token file's current token");
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt = attempt.saturating_add(1);
                    }
                }
            };
            next_probe = tokio::time::Instant::now();
        }
    }
}

/// A link's task, by hub session.
struct Link {
    id: u64,
    task: tokio::task::JoinHandle<()>,
    stop: Arc<Notify>,
    peer: String,
}

/// `d` less up to 25%, at random.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    let frac = (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
    d.mul_f64(1.0 - 0.25 * frac)
}

fn backoff(failures: u32) -> Duration {
    jitter(
        RECONNECT_MIN
            .saturating_mul(1u32 << failures.min(16))
            .min(RECONNECT_MAX),
    )
}

/// `HOST:PORT` -> (host without brackets, port).
fn split_host(hub: &str) -> Result<(String, u16), AgentError> {
    let bad = || AgentError::HubAddress(hub.to_string());
    let (h, p) = hub.rsplit_once(':').ok_or_else(bad)?;
    let port = p.parse::<u16>().map_err(|_| bad())?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    if h.is_empty() {
        return Err(bad());
    }
    Ok((h.to_string(), port))
}

// ---------------------------------------------------------------------------
// Identity

/// The agent's client certificate and key.
struct Ident {
    chain_pem: String,
    key_pem: Zeroizing<String>,
    renew_at: SystemTime,
}

fn write_private(path: &Path, text: &str, private: bool) -> Result<(), AgentError> {
    let fail = |e: std::io::Error| AgentError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(if private { 0o600 } else { 0o644 });
        }
        let mut f = o.open(&tmp).map_err(fail)?;
        f.write_all(text.as_bytes()).map_err(fail)?;
        f.sync_all().map_err(fail)?;
    }
    std::fs::rename(&tmp, path).map_err(fail)
}

/// notBefore/notAfter of the first certificate of a PEM chain.
fn validity(chain_pem: &str) -> Option<(SystemTime, SystemTime)> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()?
        .ok()?;
    let (_, c) = x509_parser::parse_x509_certificate(&der).ok()?;
    let t = |x: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(x.timestamp().max(0) as u64)
    };
    Some((t(c.validity().not_before), t(c.validity().not_after)))
}

fn ident(chain_pem: String, key_pem: Zeroizing<String>) -> Option<Ident> {
    let (nb, na) = validity(&chain_pem)?;
    if na <= SystemTime::now() {
        return None;
    }
    // Issued `AGENT_CERT_BACKDATE` after its notBefore; renewed at half of the
    // lifetime from then.
    let issued = (nb + crate::security::ca::AGENT_CERT_BACKDATE).min(na);
    let life = na.duration_since(issued).unwrap_or_default();
    Some(Ident {
        chain_pem,
        key_pem,
        renew_at: issued + life / 2,
    })
}

fn new_csr() -> Result<(String, Zeroizing<String>), AgentError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| AgentError::Tls(format!("generate a key: {e}")))?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|p| p.serialize_request(&key))
        .and_then(|r| r.pem())
        .map_err(|e| AgentError::Tls(format!("certificate request: {e}")))?;
    Ok((csr, Zeroizing::new(key.serialize_pem())))
}

/// The kept identity (unless `fresh`: the hub refused it), or a new one from
/// enrolling with the token file's token.
async fn load_or_enrol(
    opts: &AgentOptions,
    store: &state::StateStore,
    host: &str,
    trust: &webhook::Trust,
    fresh: bool,
) -> Result<Ident, AgentError> {
    let kept = if fresh {
        None
    } else {
        // The API server may come up after the agent: retried for a while.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut attempt = 0u32;
        loop {
            match store.load().await {
                Ok(k) => break k,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    warn!(error = %e, "cannot read the kept client certificate; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
                Err(e) => return Err(e),
            }
        }
    };
    if let Some(k) = kept {
        if let Some(i) = ident(k.chain_pem, k.key_pem) {
            info!(state = %store.describe(), "using the kept client certificate");
            return Ok(i);
        }
        warn!(state = %store.describe(), "the kept certificate is expired or unreadable; enrolling again");
    }
    let Some(token_file) = &opts.token_file else {
        return Err(AgentError::NoToken {
            state: store.describe(),
        });
    };
    let token = Zeroizing::new(
        std::fs::read_to_string(token_file)
            .map_err(|e| AgentError::File {
                path: token_file.clone(),
                reason: e.to_string(),
            })?
            .trim()
            .to_string(),
    );
    let (csr, key) = new_csr()?;
    let webhook_csr = trust.webhook_csr()?;
    let tls = client_tls(&trust.roots(), None)?;
    let mut attempt = 0u32;
    let resp = loop {
        let r = async {
            let ch = channel(&opts.hub, host, tls.clone()).await?;
            AgentServiceClient::new(ch)
                .enroll(EnrollRequest {
                    protocol_version: PROTOCOL_VERSION,
                    cluster: opts.cluster.clone(),
                    token: token.to_string(),
                    csr_pem: csr.clone(),
                    webhook_csr_pem: webhook_csr.clone(),
                })
                .await
                .map_err(|s| {
                    // A refusal is final (the token is spent); transport errors are retried.
                    if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Unknown {
                        AgentError::Tls(s.message().to_string())
                    } else {
                        AgentError::Enrol(s.message().to_string())
                    }
                })
        }
        .await;
        match r {
            Ok(r) => break r.into_inner(),
            Err(e @ AgentError::Enrol(_)) => return Err(e),
            Err(e) => {
                warn!(error = %e, "cannot reach the hub to enrol; retrying");
                tokio::time::sleep(backoff(attempt)).await;
                attempt = attempt.saturating_add(1);
            }
        }
    };
    store
        .save_retrying(&resp.cert_chain_pem, &key, &resp.trust_bundle_pem)
        .await?;
    trust
        .issued(
            &resp.trust_bundle_pem,
            &resp.signer_sha256,
            &resp.webhook_cert_chain_pem,
        )
        .await;
    info!(identity = %resp.identity, state = %store.describe(), "enrolled");
    ident(resp.cert_chain_pem, key)
        .ok_or_else(|| AgentError::Enrol("the hub returned an unusable certificate".into()))
}

async fn renew(
    opts: &AgentOptions,
    store: &state::StateStore,
    host: &str,
    trust: &webhook::Trust,
    cur: &Ident,
) -> Result<Ident, AgentError> {
    let (csr, key) = new_csr()?;
    let webhook_csr = trust.webhook_csr()?;
    let tls = client_tls(&trust.roots(), Some(cur))?;
    let ch = channel(&opts.hub, host, tls).await?;
    let resp = AgentServiceClient::new(ch)
        .renew(RenewRequest {
            csr_pem: csr,
            webhook_csr_pem: webhook_csr,
        })
        .await
        .map_err(|s| AgentError::Enrol(s.message().to_string()))?
        .into_inner();
    store
        .save_retrying(&resp.cert_chain_pem, &key, &resp.trust_bundle_pem)
        .await?;
    trust
        .issued(
            &resp.trust_bundle_pem,
            &resp.signer_sha256,
            &resp.webhook_cert_chain_pem,
        )
        .await;
    info!(identity = %resp.identity, "client certificate renewed");
    ident(resp.cert_chain_pem, key)
        .ok_or_else(|| AgentError::Enrol("the hub returned an unusable certificate".into()))
}

// ---------------------------------------------------------------------------
// Transport

fn client_tls(
    roots: &[u8],
    ident: Option<&Ident>,
) -> Result<Arc<rustls::ClientConfig>, AgentError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut store = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(roots) {
        let der = der.map_err(|e| AgentError::Tls(format!("--root-cert: {e}")))?;
        store
            .add(der)
            .map_err(|e| AgentError::Tls(format!("--root-cert: {e}")))?;
    }
    if store.is_empty() {
        return Err(AgentError::Tls("--root-cert holds no certificate".into()));
    }
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Tls(e.to_string()))?
        .with_root_certificates(store);
    let mut cfg = match ident {
        None => builder.with_no_client_auth(),
        Some(i) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(i.chain_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| AgentError::Tls(format!("client certificate: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(i.key_pem.as_bytes())
                .map_err(|e| AgentError::Tls(format!("client key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| AgentError::Tls(format!("client certificate: {e}")))?
        }
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

async fn channel(
    hub: &str,
    host: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Channel, AgentError> {
    channel_to(hub, hub, host, tls).await
}

/// A channel to `hub` dialled at `addr` (one of its addresses), the server
/// name checked being `host`.
async fn channel_to(
    hub: &str,
    addr: &str,
    host: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Channel, AgentError> {
    let ep = Endpoint::from_shared(format!("http://{hub}"))
        .map_err(|e| AgentError::HubAddress(format!("{hub}: {e}")))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30));
    ep.connect_with_connector(crate::tls::TlsConnector {
        addr: addr.to_string(),
        host: host.to_string(),
        tls,
    })
    .await
    .map_err(|e| AgentError::Tls(format!("connect to {addr}: {}", error_chain(&e))))
}

/// The addresses to dial for `--hub` HOST:PORT: every address HOST resolves to
/// (a headless Service gives each replica's), else HOST:PORT itself.
async fn hub_addresses(hub: &str) -> Vec<String> {
    let mut v: Vec<String> = match tokio::net::lookup_host(hub).await {
        Ok(a) => a.map(|a| a.to_string()).collect(),
        Err(e) => {
            debug!(hub, error = %e, "cannot resolve the hub's address");
            Vec::new()
        }
    };
    v.sort();
    v.dedup();
    if v.is_empty() {
        v.push(hub.to_string());
    }
    v
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

// ---------------------------------------------------------------------------
// Inventory

/// One object as it will be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    namespace: String,
    name: String,
    resource_version: String,
    json: Arc<Vec<u8>>,
}

/// A set per hub process (by session id): what each one has not been sent yet.
/// `insert` marks an item for every hub process known.
struct Marks<T: Ord + Clone>(BTreeMap<String, BTreeSet<T>>);

impl<T: Ord + Clone> Default for Marks<T> {
    fn default() -> Self {
        Marks(BTreeMap::new())
    }
}

impl<T: Ord + Clone> Marks<T> {
    fn insert(&mut self, t: T) {
        for set in self.0.values_mut() {
            set.insert(t.clone());
        }
    }

    fn retain(&mut self, f: impl Fn(&T) -> bool) {
        for set in self.0.values_mut() {
            set.retain(&f);
        }
    }

    /// The set of one hub process (created empty).
    fn of(&mut self, session: &str) -> &mut BTreeSet<T> {
        self.0.entry(session.to_string()).or_default()
    }

    fn forget(&mut self, session: &str) {
        self.0.remove(session);
    }
}

/// The slimmed objects of the member cluster, by wire kind and `ns/name` key.
#[derive(Default)]
struct Inventory {
    objects: HashMap<WireKind, BTreeMap<String, Entry>>,
    listed: BTreeSet<WireKind>,
    /// Keys changed since they were last sent to each hub process (or since its
    /// last snapshot).
    dirty: Marks<(WireKind, String)>,
    /// Istio kinds the agent cannot read, with the reason (HTTP 403 or 404).
    unavailable: BTreeMap<WireKind, String>,
    /// Kinds whose availability each hub process has not been told yet.
    status_dirty: Marks<WireKind>,
    /// Sum of the objects' JSON bytes, at most `max_bytes`.
    bytes: usize,
    /// `--max-inventory-bytes`; 0: [`DEFAULT_MAX_INVENTORY_BYTES`].
    max_bytes: usize,
    /// Objects left out because the inventory was full, by kind.
    left_out: BTreeMap<WireKind, BTreeSet<String>>,
}

/// Default `--max-inventory-bytes`: the JSON of a 10,000-Pod cluster is about
/// 3.8 MB (380 bytes per slimmed Pod, BENCHMARKS.md), so this keeps some
/// 700,000 Pods, far above Kubernetes' 150,000 per cluster.
pub const DEFAULT_MAX_INVENTORY_BYTES: usize = 256 << 20;

/// The Istio config watch: its kinds, the namespaces it covers (`None`: all),
/// its task.
type ConfigWatch = (
    Vec<WireKind>,
    Option<Vec<String>>,
    tokio::task::JoinHandle<()>,
);

/// Wakes every link when the inventory changed (a counter each link watches,
/// so a change while a link was busy sending is not missed).
struct Changed(watch::Sender<u64>);

impl Default for Changed {
    fn default() -> Self {
        Changed(watch::channel(0).0)
    }
}

impl Changed {
    fn notify_one(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

#[derive(Default)]
struct Shared {
    inv: Mutex<Inventory>,
    changed: Changed,
    config: Mutex<Option<ConfigWatch>>,
    /// The member cluster's client (for the Istio config watch).
    client: Mutex<Option<kube::Client>>,
    /// What the last stream to each hub process left for a resume.
    resume: Mutex<HashMap<String, ResumeState>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inventory> {
        self.inv.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drop what is kept for a hub process no link reached for a while.
    fn forget_session(&self, session: &str) {
        let mut inv = self.lock();
        inv.dirty.forget(session);
        inv.status_dirty.forget(session);
        drop(inv);
        self.resume
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(session);
    }

    /// Watch the Istio kinds `want` in `grant` (`None`: every namespace),
    /// restarting the watch when either changed; none wanted: stop it.
    fn ensure_config(self: &Arc<Self>, want: Vec<WireKind>, grant: Option<Vec<String>>) {
        let mut cur = self.config.lock().unwrap_or_else(|e| e.into_inner());
        if cur
            .as_ref()
            .is_some_and(|(k, g, _)| *k == want && *g == grant)
        {
            return;
        }
        if want.is_empty() && cur.is_none() {
            return;
        }
        if let Some((_, _, task)) = cur.take() {
            task.abort();
        }
        self.lock().forget_istio();
        if !want.is_empty() {
            let client = self
                .client
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(client) = client {
                info!(kinds = ?want, namespaces = ?grant, "watching Istio config");
                let task = tokio::spawn(istio::watch_config(
                    client,
                    want.clone(),
                    grant.clone(),
                    self.clone(),
                ));
                *cur = Some((want, grant, task));
            }
        }
    }
}

fn entry(o: &KubeObject) -> Option<Entry> {
    let m = o.metadata();
    let json = match o {
        KubeObject::Service(x) => serde_json::to_vec(x),
        KubeObject::Pod(x) => serde_json::to_vec(x),
        KubeObject::Node(x) => serde_json::to_vec(x),
        KubeObject::EndpointSlice(x) => serde_json::to_vec(x),
    }
    .ok()?;
    Some(Entry {
        namespace: m.namespace.clone().unwrap_or_default(),
        name: m.name.clone()?,
        resource_version: m.resource_version.clone().unwrap_or_default(),
        json: Arc::new(json),
    })
}

impl Inventory {
    fn limit(&self) -> usize {
        if self.max_bytes == 0 {
            DEFAULT_MAX_INVENTORY_BYTES
        } else {
            self.max_bytes
        }
    }

    /// Insert or replace one entry unless the inventory would exceed its byte
    /// limit (then the object is left out, counted and logged).
    fn put(&mut self, kind: WireKind, key: String, e: Entry) {
        let limit = self.limit();
        let map = self.objects.entry(kind).or_default();
        let old_len = map.get(&key).map(|o| o.json.len()).unwrap_or(0);
        if map.get(&key).map(|old| &old.json) == Some(&e.json) {
            return;
        }
        if self.bytes - old_len + e.json.len() > limit {
            let n = self.left_out.entry(kind).or_default();
            if n.insert(key.clone()) {
                warn!(kind = ?kind, object = %key, limit,
                    "inventory byte limit (--max-inventory-bytes) reached: object left out");
                self.status_dirty.insert(kind);
            }
            return;
        }
        self.bytes = self.bytes - old_len + e.json.len();
        self.objects.entry(kind).or_default().insert(key.clone(), e);
        if self.left_out.get_mut(&kind).is_some_and(|s| s.remove(&key)) {
            self.status_dirty.insert(kind);
        }
        self.dirty.insert((kind, key));
    }

    fn take(&mut self, kind: WireKind, key: &str) {
        if self.left_out.get_mut(&kind).is_some_and(|s| s.remove(key)) {
            self.status_dirty.insert(kind);
        }
        if let Some(old) = self.objects.entry(kind).or_default().remove(key) {
            self.bytes -= old.json.len();
            self.dirty.insert((kind, key.to_string()));
        }
    }

    fn upsert(&mut self, kind: KubeKind, o: &KubeObject) {
        let Some(e) = entry(o) else { return };
        self.put(wire_kind(kind), object_key(o), e);
    }

    fn remove(&mut self, kind: KubeKind, o: &KubeObject) {
        self.take(wire_kind(kind), &object_key(o));
    }

    /// A fresh list of the keys of `kind` that `scope` selects: what differs is
    /// dirty, what the list lacks is removed.
    fn replace_entries(
        &mut self,
        kind: WireKind,
        scope: impl Fn(&str) -> bool,
        new: BTreeMap<String, Entry>,
    ) {
        let gone: Vec<String> = self
            .objects
            .get(&kind)
            .map(|m| {
                m.keys()
                    .filter(|k| scope(k) && !new.contains_key(*k))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for k in gone {
            self.take(kind, &k);
        }
        if let Some(s) = self.left_out.get_mut(&kind) {
            let before = s.len();
            s.retain(|k| !scope(k));
            if s.len() != before {
                self.status_dirty.insert(kind);
            }
        }
        for (k, e) in new {
            self.put(kind, k, e);
        }
    }

    /// A fresh list of `kind` (first list, or a re-list): what differs is dirty.
    fn replace(&mut self, kind: KubeKind, listed: BTreeMap<String, KubeObject>) {
        let new = listed
            .iter()
            .filter_map(|(k, o)| Some((k.clone(), entry(o)?)))
            .collect();
        self.replace_entries(wire_kind(kind), |_| true, new);
        self.listed.insert(wire_kind(kind));
    }

    /// Drop every Istio object and state (the config watch stops or restarts).
    fn forget_istio(&mut self) {
        for k in istio::kinds().into_iter().map(|(k, ..)| k) {
            if let Some(m) = self.objects.remove(&k) {
                self.bytes -= m.values().map(|e| e.json.len()).sum::<usize>();
            }
            self.listed.remove(&k);
            self.unavailable.remove(&k);
            self.left_out.remove(&k);
            self.dirty.retain(|(d, _)| *d != k);
        }
    }

    /// The reason the hub is given for `kind` (`KindStatus.unavailable`).
    fn status_of(&self, kind: WireKind) -> String {
        let mut parts = Vec::new();
        if let Some(r) = self.unavailable.get(&kind) {
            parts.push(r.clone());
        }
        if let Some(n) = self.left_out.get(&kind).filter(|s| !s.is_empty()) {
            parts.push(format!(
                "the agent's inventory is full (--max-inventory-bytes {}): {} object(s) left out",
                self.limit(),
                n.len()
            ));
        }
        parts.join("; ")
    }
}

/// Keep the inventory current from the member cluster's API server.
async fn watch_cluster(client: kube::Client, shared: Arc<Shared>) {
    let mut s = kube_source::streams(&client, &kube_source::KubeOptions::default());
    let mut buffers: HashMap<KubeKind, BTreeMap<String, KubeObject>> = HashMap::new();
    while let Some((kind, ev)) = s.next().await {
        match ev {
            Err(e) => warn!(%kind, error = %e, "watch failed; retrying with backoff"),
            Ok(watcher::Event::Init) => {
                buffers.insert(kind, BTreeMap::new());
            }
            Ok(watcher::Event::InitApply(o)) => {
                buffers.entry(kind).or_default().insert(object_key(&o), o);
            }
            Ok(watcher::Event::InitDone) => {
                let listed = buffers.remove(&kind).unwrap_or_default();
                debug!(%kind, objects = listed.len(), "listed");
                shared.lock().replace(kind, listed);
                shared.changed.notify_one();
            }
            Ok(watcher::Event::Apply(o)) => {
                shared.lock().upsert(kind, &o);
                shared.changed.notify_one();
            }
            Ok(watcher::Event::Delete(o)) => {
                shared.lock().remove(kind, &o);
                shared.changed.notify_one();
            }
        }
    }
}

// ---------------------------------------------------------------------------
// One stream

struct Outcome {
    /// The stream got as far as deltas (its snapshot was sent).
    synced: bool,
    /// The hub refused this agent's certificate as revoked.
    refused: bool,
    reason: String,
}

enum Phase {
    /// Waiting for every kind's first list.
    Listing,
    /// Keys of each kind still to send in the snapshot.
    Snapshot(VecDeque<(WireKind, VecDeque<String>)>),
    /// Resuming: the first batch, marked `resumed`, goes out next.
    Resumed,
    Deltas,
}

/// What a stream leaves for the next one to resume from (`Welcome` of the same
/// hub session naming this stream as the previous one).
#[derive(Default)]
struct ResumeState {
    session_id: String,
    stream_id: u64,
    /// The hub's state of this cluster matches this agent's up to the
    /// unacknowledged batches: the snapshot's last batch was acknowledged (or
    /// the stream itself resumed from such a state).
    base_acked: bool,
    /// Keys of the delta batches not acknowledged, by seq.
    unacked: Vec<(u64, Vec<(WireKind, String)>)>,
}

/// An unacknowledged batch: seq, encoded length, keys of its delta changes.
type Unacked = (u64, usize, Vec<(WireKind, String)>);

/// Flow-control state of a stream.
struct Window {
    out: mpsc::Sender<AgentMessage>,
    unacked: VecDeque<Unacked>,
    unacked_bytes: u64,
    next_seq: u64,
    max_messages: usize,
    max_bytes: u64,
    /// Highest seq acknowledged.
    acked_seq: u64,
    /// The seq whose acknowledgement makes the hub's state this agent's base
    /// (the snapshot's last batch; 0 on a resumed stream), once known.
    base_seq: Option<u64>,
    /// Encoded bytes of the batches sent on this stream.
    sent_bytes: u64,
}

impl Window {
    fn open(&self) -> bool {
        self.unacked.len() < self.max_messages && self.unacked_bytes < self.max_bytes
    }

    /// Send `b` with the next seq; `keys` are its delta changes (kept until
    /// acknowledged, for a resume).
    async fn send(&mut self, mut b: Batch, keys: Vec<(WireKind, String)>) -> Result<(), String> {
        b.seq = self.next_seq;
        self.next_seq += 1;
        let m = AgentMessage {
            message: Some(agent_message::Message::Batch(b)),
        };
        let len = m.encoded_len();
        self.unacked.push_back((self.next_seq - 1, len, keys));
        self.unacked_bytes += len as u64;
        self.sent_bytes += len as u64;
        self.out
            .send(m)
            .await
            .map_err(|_| "the stream to the hub closed".to_string())
    }

    fn acked(&mut self, seq: u64) {
        self.acked_seq = self.acked_seq.max(seq);
        while let Some((s, len, _)) = self.unacked.front() {
            if *s > seq {
                break;
            }
            self.unacked_bytes = self.unacked_bytes.saturating_sub(*len as u64);
            self.unacked.pop_front();
        }
    }

    /// What this stream leaves for a resume.
    fn resume_state(&mut self, session_id: String, stream_id: u64) -> ResumeState {
        ResumeState {
            session_id,
            stream_id,
            base_acked: self.base_seq.is_some_and(|s| self.acked_seq >= s),
            unacked: self.unacked.drain(..).map(|(s, _, k)| (s, k)).collect(),
        }
    }
}

fn change_of(kind: WireKind, key: &str, e: Option<&Entry>) -> Change {
    match e {
        Some(e) => Change {
            op: change::Op::Upsert as i32,
            namespace: if kind == WireKind::Node {
                String::new()
            } else {
                e.namespace.clone()
            },
            name: e.name.clone(),
            resource_version: e.resource_version.clone(),
            object: e.json.to_vec(),
        },
        None => {
            let (ns, name) = key.split_once('/').unwrap_or(("", key));
            Change {
                op: change::Op::Delete as i32,
                namespace: ns.to_string(),
                name: name.to_string(),
                resource_version: String::new(),
                object: Vec::new(),
            }
        }
    }
}

/// Only a revocation makes the agent give up its certificate; other refusals
/// (a hub whose mesh file lost the cluster) are retried with it.
fn is_refusal(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::PermissionDenied
        && s.message().contains(crate::sources::agent::REVOKED)
}

/// A stream to one hub process, past Welcome.
struct Dialed {
    out: mpsc::Sender<AgentMessage>,
    inbound: tonic::Streaming<proto::HubMessage>,
    welcome: proto::Welcome,
    /// The address dialled.
    peer: String,
}

/// Open a stream through `addr` (an address of `--hub`) and read Welcome.
/// `known`: the sessions this agent has a link to (a hub process among them
/// answers with a bare Welcome, `stream_id` 0, and ends the stream).
#[allow(clippy::too_many_arguments)]
async fn dial(
    opts: &AgentOptions,
    host: &str,
    addr: &str,
    trust: &webhook::Trust,
    ident: &Ident,
    known: Vec<String>,
    refused: &mut bool,
) -> Result<Dialed, String> {
    let tls = client_tls(&trust.roots(), Some(ident)).map_err(|e| e.to_string())?;
    let ch = channel_to(&opts.hub, addr, host, tls)
        .await
        .map_err(|e| e.to_string())?;
    let mut client = AgentServiceClient::new(ch)
        .max_decoding_message_size(crate::sources::agent::DEFAULT_MAX_MESSAGE_BYTES);
    let (out, rx) = mpsc::channel::<AgentMessage>(4);
    let hello = AgentMessage {
        message: Some(agent_message::Message::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            cluster: opts.cluster.clone(),
            kinds: KINDS.iter().map(|k| wire_kind(*k) as i32).collect(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            accepts_trust_bundle: true,
            istio_kinds: istio::kinds().iter().map(|(k, ..)| *k as i32).collect(),
            known_sessions: known,
        })),
    };
    let _ = out.send(hello).await;
    let mut inbound = client
        .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| {
            *refused = is_refusal(&s);
            format!("Sync refused: {}", s.message())
        })?
        .into_inner();
    let welcome = match tokio::time::timeout(WELCOME_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(proto::HubMessage {
            message: Some(hub_message::Message::Welcome(w)),
        }))) => w,
        Ok(Ok(Some(_))) => return Err("the hub's first message was not Welcome".into()),
        Ok(Ok(None)) => return Err("the hub closed the stream before Welcome".into()),
        Ok(Err(s)) => {
            *refused = is_refusal(&s);
            return Err(format!("refused by the hub: {}", s.message()));
        }
        Err(_) => return Err("no Welcome from the hub".into()),
    };
    Ok(Dialed {
        out,
        inbound,
        welcome,
        peer: addr.to_string(),
    })
}

/// One link: a stream to one hub process after its Welcome, until it ends
/// (or `stop`: another stream to the same process replaced it).
async fn link(
    d: Dialed,
    trust: Arc<webhook::Trust>,
    ident: Arc<Ident>,
    shared: Arc<Shared>,
    stop: Arc<Notify>,
) -> Outcome {
    let mut synced = false;
    let mut refused = false;
    let Dialed {
        out,
        mut inbound,
        welcome,
        peer,
    } = d;
    let session = welcome.session_id.clone();
    info!(cluster = %welcome.cluster, session = %session, peer = %peer, heartbeat_ms = welcome.heartbeat_interval_ms, "connected to the hub");
    let heartbeat = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(100)));
    let max_batch_bytes = (welcome.max_message_bytes as usize / 2).max(1024);
    let mut win = Window {
        out,
        unacked: VecDeque::new(),
        unacked_bytes: 0,
        next_seq: 1,
        max_messages: welcome.window_messages.max(1) as usize,
        max_bytes: welcome.window_bytes.max(1),
        acked_seq: 0,
        base_seq: None,
        sent_bytes: 0,
    };
    // Istio config when the hub asks for it, in the namespaces of the grant.
    let grant = (!welcome.namespaces.is_empty()).then(|| welcome.namespaces.clone());
    // Those of the kinds it asked for that this agent offered.
    let istio_kinds: Vec<WireKind> = welcome
        .istio_kinds
        .iter()
        .filter_map(|k| WireKind::try_from(*k).ok())
        .filter(|k| istio::group_kind(*k).is_some())
        .collect();
    shared.ensure_config(istio_kinds.clone(), grant);
    let mut snapshot_kinds: Vec<WireKind> = KINDS.iter().map(|k| wire_kind(*k)).collect();
    snapshot_kinds.extend(istio_kinds);
    // A hub that sets a session knows KindStatus and resume.
    let knows_status = !welcome.session_id.is_empty();
    let prev = shared
        .resume
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&session)
        .unwrap_or_default();
    let resume = knows_status
        && welcome.previous_stream_id != 0
        && prev.session_id == welcome.session_id
        && prev.stream_id == welcome.previous_stream_id
        && prev.base_acked;
    {
        let mut inv = shared.lock();
        // This hub process's changed keys start here (a snapshot clears them).
        inv.dirty.of(&session);
        if resume {
            // Changes the hub did not apply are sent again (with whatever
            // changed since: the dirty set kept growing while away).
            for (seq, keys) in prev.unacked {
                if seq > welcome.previous_applied_seq {
                    inv.dirty.of(&session).extend(keys);
                }
            }
        }
        // The hub learns each kind's state afresh on every stream.
        let with_status: Vec<WireKind> = snapshot_kinds
            .iter()
            .copied()
            .filter(|k| !inv.status_of(*k).is_empty())
            .collect();
        inv.status_dirty.of(&session).extend(with_status);
    }
    let reason = run_stream(
        &mut win,
        &mut inbound,
        &trust,
        &shared,
        &session,
        &stop,
        &snapshot_kinds,
        knows_status,
        if resume {
            Phase::Resumed
        } else {
            Phase::Listing
        },
        heartbeat,
        max_batch_bytes,
        &ident,
        &mut synced,
        &mut refused,
    )
    .await;
    info!(
        session = %session,
        resumed = resume,
        bytes = win.sent_bytes,
        "stream ended after sending its batches"
    );
    shared
        .resume
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            session.clone(),
            win.resume_state(welcome.session_id.clone(), welcome.stream_id),
        );
    Outcome {
        synced,
        refused,
        reason: match reason {
            Ok(r) => r,
            Err(e) => e.to_string(),
        },
    }
}

/// The stream after Welcome: snapshot or resume, then deltas, until it ends.
#[allow(clippy::too_many_arguments)]
async fn run_stream(
    win: &mut Window,
    inbound: &mut tonic::Streaming<proto::HubMessage>,
    trust: &webhook::Trust,
    shared: &Arc<Shared>,
    session: &str,
    stop: &Notify,
    snapshot_kinds: &[WireKind],
    knows_status: bool,
    mut phase: Phase,
    heartbeat: Duration,
    max_batch_bytes: usize,
    ident: &Ident,
    synced: &mut bool,
    refused: &mut bool,
) -> Result<String, AgentError> {
    let mut changed = shared.changed.subscribe();
    let silence = heartbeat * MISSED_HEARTBEATS;
    let mut ticker = tokio::time::interval(heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = tokio::time::Instant::now();
    let renew_at = tokio::time::Instant::now()
        + ident
            .renew_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
    loop {
        // Kinds whose availability changed (not batches: outside the window).
        if knows_status {
            let statuses: Vec<(WireKind, String)> = {
                let mut inv = shared.lock();
                let kinds = std::mem::take(inv.status_dirty.of(session));
                kinds
                    .into_iter()
                    .filter(|k| snapshot_kinds.contains(k))
                    .map(|k| (k, inv.status_of(k)))
                    .collect()
            };
            for (kind, unavailable) in statuses {
                let m = AgentMessage {
                    message: Some(agent_message::Message::KindStatus(proto::KindStatus {
                        kind: kind as i32,
                        unavailable,
                    })),
                };
                if win.out.send(m).await.is_err() {
                    return Ok("the stream to the hub closed".into());
                }
            }
        }
        // Send while the window is open and there is something to send.
        while win.open() {
            let mut keys_sent = Vec::new();
            let batch = match &mut phase {
                Phase::Listing => {
                    let mut inv = shared.lock();
                    if snapshot_kinds.iter().all(|k| inv.listed.contains(k)) {
                        inv.dirty.of(session).clear();
                        let plan = snapshot_kinds
                            .iter()
                            .map(|k| {
                                let keys = inv
                                    .objects
                                    .get(k)
                                    .map(|m| m.keys().cloned().collect())
                                    .unwrap_or_default();
                                (*k, keys)
                            })
                            .collect();
                        phase = Phase::Snapshot(plan);
                        continue;
                    }
                    break;
                }
                Phase::Resumed => {
                    phase = Phase::Deltas;
                    win.base_seq = Some(0);
                    *synced = true;
                    info!("resumed: streaming the changes since the last acknowledged batch");
                    Batch {
                        seq: 0,
                        kind: WireKind::Service as i32,
                        snapshot: false,
                        changes: Vec::new(),
                        end_of_snapshot: false,
                        resumed: true,
                    }
                }
                Phase::Snapshot(plan) => {
                    let Some((kind, keys)) = plan.front_mut() else {
                        phase = Phase::Deltas;
                        win.base_seq = Some(win.next_seq - 1);
                        *synced = true;
                        info!("snapshot sent; streaming changes");
                        continue;
                    };
                    let kind = *kind;
                    let inv = shared.lock();
                    let mut b = Batch {
                        seq: 0,
                        kind: kind as i32,
                        snapshot: true,
                        changes: Vec::new(),
                        end_of_snapshot: false,
                        resumed: false,
                    };
                    let mut bytes = 0usize;
                    while let Some(k) = keys.front() {
                        if b.changes.len() >= MAX_CHANGES_PER_BATCH {
                            break;
                        }
                        // Deleted since the snapshot began: left out (the hub
                        // sweeps it at the end marker).
                        if let Some(e) = inv.objects.get(&kind).and_then(|m| m.get(k)) {
                            let c = change_of(kind, k, Some(e));
                            let len = c.encoded_len();
                            if len > max_batch_bytes {
                                warn!(kind = ?kind, object = %k, bytes = len, "object larger than the hub accepts; not sent");
                                keys.pop_front();
                                continue;
                            }
                            if bytes + len > max_batch_bytes && !b.changes.is_empty() {
                                break;
                            }
                            bytes += len;
                            b.changes.push(c);
                        }
                        keys.pop_front();
                    }
                    if keys.is_empty() {
                        b.end_of_snapshot = true;
                        plan.pop_front();
                    }
                    b
                }
                Phase::Deltas => {
                    let mut guard = shared.lock();
                    let inv = &mut *guard;
                    let Some(kind) = inv.dirty.of(session).first().map(|(k, _)| *k) else {
                        break;
                    };
                    let mut b = Batch {
                        seq: 0,
                        kind: kind as i32,
                        snapshot: false,
                        changes: Vec::new(),
                        end_of_snapshot: false,
                        resumed: false,
                    };
                    let mut bytes = 0usize;
                    while let Some((k, key)) = inv.dirty.of(session).first().cloned() {
                        if k != kind || b.changes.len() >= MAX_CHANGES_PER_BATCH {
                            break;
                        }
                        let c =
                            change_of(kind, &key, inv.objects.get(&kind).and_then(|m| m.get(&key)));
                        let len = c.encoded_len();
                        if bytes + len > max_batch_bytes && !b.changes.is_empty() {
                            break;
                        }
                        inv.dirty.of(session).pop_first();
                        if len > max_batch_bytes {
                            warn!(kind = ?kind, object = %key, bytes = len, "object larger than the hub accepts; not sent");
                            continue;
                        }
                        bytes += len;
                        b.changes.push(c);
                        keys_sent.push((kind, key));
                    }
                    if b.changes.is_empty() {
                        continue;
                    }
                    b
                }
            };
            if let Err(e) = win.send(batch, keys_sent).await {
                return Ok(e);
            }
        }
        let wants_data = matches!(phase, Phase::Listing | Phase::Deltas) && win.open();
        tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(m)) => {
                    last_heard = tokio::time::Instant::now();
                    match m.message {
                        Some(hub_message::Message::Ack(a)) => win.acked(a.seq),
                        Some(hub_message::Message::Heartbeat(_)) => {}
                        Some(hub_message::Message::TrustBundle(b)) => {
                            if trust.from_hub(&b.pem, &b.signer_sha256).await {
                                return Ok("the hub's CA signs with another certificate: renewing".into());
                            }
                        }
                        Some(hub_message::Message::Welcome(_)) | None => {
                            return Ok("unexpected message from the hub".into());
                        }
                    }
                }
                Ok(None) => return Ok("the hub closed the stream".into()),
                Err(s) => {
                    *refused = is_refusal(&s);
                    return Ok(format!("the hub ended the stream: {:?}: {}", s.code(), s.message()));
                }
            },
            _ = ticker.tick() => {
                if last_heard.elapsed() > silence {
                    return Ok(format!("no message from the hub for {}s", silence.as_secs()));
                }
                let hb = AgentMessage {
                    message: Some(agent_message::Message::Heartbeat(Heartbeat {
                        sent_unix_ms: SystemTime::now()
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .map(|d| d.as_millis() as u64)
                            .unwrap_or(0),
                    })),
                };
                if win.out.send(hb).await.is_err() {
                    return Ok("the stream to the hub closed".into());
                }
            }
            _ = changed.changed(), if wants_data => {}
            _ = stop.notified() => {
                return Ok("another stream to the same hub process replaced this one".into());
            }
            _ = tokio::time::sleep_until(renew_at) => {
                return Ok("client certificate due for renewal".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_address() {
        assert_eq!(
            split_host("hub.example:15011").unwrap(),
            ("hub.example".into(), 15011)
        );
        assert_eq!(split_host("[::1]:15011").unwrap(), ("::1".into(), 15011));
        assert!(split_host("hub.example").is_err());
        assert!(split_host(":15011").is_err());
    }

    #[tokio::test]
    async fn hub_addresses_are_every_resolved_address_or_the_flag_itself() {
        assert_eq!(
            hub_addresses("127.0.0.7:15011").await,
            vec!["127.0.0.7:15011".to_string()]
        );
        // localhost resolves (to 127.0.0.1, and ::1 where configured): each is
        // dialled with the port, none is the name itself.
        let v = hub_addresses("localhost:15011").await;
        assert!(v.contains(&"127.0.0.1:15011".to_string()), "{v:?}");
        assert!(v.iter().all(|a| a != "localhost:15011"), "{v:?}");
        // A name that does not resolve: dialled as given (the dial reports why).
        assert_eq!(
            hub_addresses("hub.invalid:15011").await,
            vec!["hub.invalid:15011".to_string()]
        );
    }

    #[tokio::test]
    async fn window_closes_at_its_limits_and_reopens_on_acks() {
        let (out, mut rx) = mpsc::channel(16);
        let mut w = Window {
            out,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            next_seq: 1,
            max_messages: 2,
            max_bytes: 1 << 20,
            acked_seq: 0,
            base_seq: None,
            sent_bytes: 0,
        };
        let batch = |n: usize| Batch {
            seq: 0,
            kind: proto::Kind::Pod as i32,
            snapshot: false,
            changes: vec![change_of(WireKind::Pod, &format!("ns/p{n}"), None)],
            end_of_snapshot: false,
            resumed: false,
        };
        assert!(w.open());
        w.send(batch(1), vec![]).await.unwrap();
        w.send(batch(2), vec![]).await.unwrap();
        assert!(!w.open(), "two unacked batches fill a window of two");
        // Sequence numbers 1, 2 on the wire.
        for want in [1, 2] {
            match rx.recv().await.unwrap().message {
                Some(agent_message::Message::Batch(b)) => assert_eq!(b.seq, want),
                other => panic!("{other:?}"),
            }
        }
        w.acked(1);
        assert!(w.open());
        assert_eq!(w.unacked.len(), 1);
        w.acked(2);
        assert_eq!((w.unacked.len(), w.unacked_bytes), (0, 0));
        // The byte limit closes it too.
        w.max_bytes = 1;
        w.send(batch(3), vec![]).await.unwrap();
        assert!(!w.open());
        // A delete names its namespace and name, no object.
        let c = change_of(WireKind::Pod, "ns/p1", None);
        assert_eq!((c.namespace.as_str(), c.name.as_str()), ("ns", "p1"));
        assert_eq!(c.op, change::Op::Delete as i32);
        let n = change_of(WireKind::Node, "/n1", None);
        assert_eq!((n.namespace.as_str(), n.name.as_str()), ("", "n1"));
    }

    #[test]
    fn inventory_keeps_to_its_byte_limit_and_reports_what_it_left_out() {
        let mut inv = Inventory {
            max_bytes: 100,
            ..Inventory::default()
        };
        // Two hub processes: each gets every mark.
        inv.dirty.of("a");
        inv.dirty.of("b");
        inv.status_dirty.of("a");
        inv.status_dirty.of("b");
        let e = |n: usize| Entry {
            namespace: "ns".into(),
            name: format!("p{n}"),
            resource_version: "1".into(),
            json: Arc::new(vec![b'x'; 40]),
        };
        inv.put(WireKind::Pod, "ns/p1".into(), e(1));
        inv.put(WireKind::Pod, "ns/p2".into(), e(2));
        // 120 bytes would exceed 100: left out, counted, reported.
        inv.put(WireKind::Pod, "ns/p3".into(), e(3));
        assert_eq!(inv.bytes, 80);
        assert!(!inv.objects[&WireKind::Pod].contains_key("ns/p3"));
        assert!(
            inv.status_of(WireKind::Pod)
                .contains("1 object(s) left out"),
            "{}",
            inv.status_of(WireKind::Pod)
        );
        assert!(inv.status_dirty.of("a").contains(&WireKind::Pod));
        inv.status_dirty.of("a").clear();
        // A re-list after p1 went: p3 fits now, and the report clears.
        inv.replace_entries(
            WireKind::Pod,
            |_| true,
            BTreeMap::from([("ns/p2".to_string(), e(2)), ("ns/p3".to_string(), e(3))]),
        );
        assert_eq!(inv.bytes, 80);
        assert!(inv.objects[&WireKind::Pod].contains_key("ns/p3"));
        assert_eq!(inv.status_of(WireKind::Pod), "");
        assert!(inv.status_dirty.of("a").contains(&WireKind::Pod));
        for s in ["a", "b"] {
            assert!(inv
                .dirty
                .of(s)
                .contains(&(WireKind::Pod, "ns/p1".to_string())));
        }
        // Sent to one, still due to the other.
        inv.dirty.of("a").clear();
        inv.take(WireKind::Pod, "ns/p2");
        assert_eq!(inv.dirty.of("a").len(), 1);
        assert!(inv
            .dirty
            .of("b")
            .contains(&(WireKind::Pod, "ns/p1".to_string())));
    }

    #[test]
    fn backoff_is_capped_and_jittered_down() {
        for f in 0..40 {
            let d = backoff(f);
            let base = RECONNECT_MIN
                .saturating_mul(1u32 << f.min(16))
                .min(RECONNECT_MAX);
            assert!(d <= base && d >= base.mul_f64(0.75), "{f}: {d:?}");
        }
    }
}
