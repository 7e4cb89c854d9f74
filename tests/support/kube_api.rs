//! A test Kubernetes API server, in-process, for N fake member clusters on loopback.
//!
//! It reproduces the parts of the API server's list/watch protocol that informers
//! depend on, so kube-rs (or any client-go style client) runs against it unmodified:
//!
//! - one monotonic `resourceVersion` per server, stamped on every write;
//! - LIST with `resourceVersion` / `resourceVersionMatch` (`NotOlderThan`, `Exact`),
//!   `limit` / `continue` pagination served from a consistent snapshot at the first
//!   page's resourceVersion, `labelSelector` and `fieldSelector` (equality forms);
//! - WATCH (`?watch=true`): a chunked stream of newline-delimited JSON
//!   `ADDED`/`MODIFIED`/`DELETED`/`BOOKMARK`/`ERROR` events, replayed from a bounded
//!   event history; a resourceVersion older than the history gets 410 `Expired`,
//!   either as an `ERROR` event in a 200 stream (the watch cache's form, the default)
//!   or as an HTTP 410 `Status` answer to the watch request ([`ExpiredWatch`]); a
//!   watcher that falls behind gets the `ERROR` event; `allowWatchBookmarks=true`
//!   gets a bookmark about every minute (kube-apiserver's cadence; configurable);
//!   `timeoutSeconds` closes the stream server-side, and [`WatchClose`] closes it
//!   cleanly after N events or a duration, as real servers do at random after 5-10
//!   minutes; `sendInitialEvents=true` (streaming lists) ends the synthetic ADDED
//!   events with the `k8s.io/initial-events-end` bookmark;
//! - the Gateway API kinds (`gateway.networking.k8s.io`) with a `status`
//!   subresource as their CRDs declare it: `metadata.generation` starts at 1 and
//!   grows when anything but `metadata` and `status` changes; writes to the object
//!   keep the stored `status`, and `GET`/`PUT`/`PATCH` (JSON merge patch) on
//!   `.../NAME/status` change only `status` (a `metadata.resourceVersion` in the
//!   body must be the stored one, else 409); a write that changes nothing stores
//!   nothing (no new resourceVersion, no watch event);
//! - namespaces: `default`, `kube-system`, `kube-public` and `kube-node-lease` exist
//!   from the start; creating a namespaced object in a namespace that does not exist
//!   answers 404 `namespaces "x" not found`; deleting a Namespace deletes what is in it;
//! - discovery (`/version`, `/api`, `/apis`, `/api/v1`, `/apis/G/V`); the Istio CRDs
//!   (`networking.istio.io`, `security.istio.io`, `telemetry.istio.io`) can be
//!   left uninstalled, and then discovery omits them and their paths answer 404
//!   as on a cluster without Istio;
//! - optional TLS (a generated CA and server certificate), bearer-token auth (with
//!   tokens the server knows but treats as expired), and client-certificate auth
//!   (certificates issued by the server's CA for a user name);
//! - status faults ([`FaultRule`]): 403, 429 with `Retry-After`, 500, 503, ... with
//!   the `Status` bodies kube-apiserver sends, per verb and resource, for the next N
//!   requests or until cleared;
//! - the token controller's part for `kubernetes.io/service-account-token` Secrets;
//! - a service-account token issuer ([`SaToken`], [`FakeApiServer::mint_token`]):
//!   projected ES256 tokens signed with a key made at start, the issuer's JWKS on
//!   `/openid/v1/jwks` and its discovery document on
//!   `/.well-known/openid-configuration`, and `POST
//!   /apis/authentication.k8s.io/v1/tokenreviews` answering as kube-apiserver does
//!   (signature, issuer, expiry, audiences, and the bound ServiceAccount and Pod
//!   still existing with the same uid).
//!
//! Tests drive it through [`FakeApiServer`]: create/update/delete objects, compact
//! the history (forcing 410), inject faults (garbage bodies, watches that close at
//! once, error statuses), stop and restart on the same port (an unreachable
//! cluster), restart having lost the watch history (every older resourceVersion
//! expired), rotate or expire tokens, issue client certificates, and write a real
//! kubeconfig pointing at it.
//!
//! Test helpers versus the HTTP API: [`FakeApiServer::apply`] creates the object's
//! namespace when it is missing (a test seeds objects without ceremony), while
//! [`FakeApiServer::create`] and every `POST` over HTTP are strict, as kube-apiserver is.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State as AxState};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

/// A resource type the server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub group: &'static str,
    pub versions: &'static [&'static str],
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

const ISTIO_NET: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const ISTIO_SEC: &[&str] = &["v1", "v1beta1"];

/// Every served resource type.
pub const KINDS: &[Kind] = &[
    Kind {
        group: "",
        versions: &["v1"],
        plural: "services",
        kind: "Service",
        namespaced: true,
    },
    Kind {
        group: "",
        versions: &["v1"],
        plural: "pods",
        kind: "Pod",
        namespaced: true,
    },
    Kind {
        group: "",
        versions: &["v1"],
        plural: "nodes",
        kind: "Node",
        namespaced: false,
    },
    Kind {
        group: "",
        versions: &["v1"],
        plural: "secrets",
        kind: "Secret",
        namespaced: true,
    },
    Kind {
        group: "",
        versions: &["v1"],
        plural: "configmaps",
        kind: "ConfigMap",
        namespaced: true,
    },
    Kind {
        group: "",
        versions: &["v1"],
        plural: "serviceaccounts",
        kind: "ServiceAccount",
        namespaced: true,
    },
    Kind {
        group: "",
        versions: &["v1"],
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
    },
    Kind {
        group: "admissionregistration.k8s.io",
        versions: &["v1"],
        plural: "mutatingwebhookconfigurations",
        kind: "MutatingWebhookConfiguration",
        namespaced: false,
    },
    Kind {
        group: "discovery.k8s.io",
        versions: &["v1"],
        plural: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
    },
    Kind {
        group: "networking.istio.io",
        versions: ISTIO_NET,
        plural: "gateways",
        kind: "Gateway",
        namespaced: true,
    },
    Kind {
        group: "networking.istio.io",
        versions: ISTIO_NET,
        plural: "virtualservices",
        kind: "VirtualService",
        namespaced: true,
    },
    Kind {
        group: "networking.istio.io",
        versions: ISTIO_NET,
        plural: "destinationrules",
        kind: "DestinationRule",
        namespaced: true,
    },
    Kind {
        group: "networking.istio.io",
        versions: ISTIO_NET,
        plural: "sidecars",
        kind: "Sidecar",
        namespaced: true,
    },
    Kind {
        group: "networking.istio.io",
        versions: ISTIO_NET,
        plural: "serviceentries",
        kind: "ServiceEntry",
        namespaced: true,
    },
    Kind {
        group: "networking.istio.io",
        versions: ISTIO_NET,
        plural: "workloadentries",
        kind: "WorkloadEntry",
        namespaced: true,
    },
    Kind {
        group: "security.istio.io",
        versions: ISTIO_SEC,
        plural: "peerauthentications",
        kind: "PeerAuthentication",
        namespaced: true,
    },
    Kind {
        group: "security.istio.io",
        versions: ISTIO_SEC,
        plural: "authorizationpolicies",
        kind: "AuthorizationPolicy",
        namespaced: true,
    },
    Kind {
        group: "security.istio.io",
        versions: ISTIO_SEC,
        plural: "requestauthentications",
        kind: "RequestAuthentication",
        namespaced: true,
    },
    Kind {
        group: "telemetry.istio.io",
        versions: &["v1", "v1alpha1"],
        plural: "telemetries",
        kind: "Telemetry",
        namespaced: true,
    },
    Kind {
        group: GATEWAY_API,
        versions: &["v1", "v1beta1"],
        plural: "gatewayclasses",
        kind: "GatewayClass",
        namespaced: false,
    },
    Kind {
        group: GATEWAY_API,
        versions: &["v1", "v1beta1"],
        plural: "gateways",
        kind: "Gateway",
        namespaced: true,
    },
    Kind {
        group: GATEWAY_API,
        versions: &["v1", "v1beta1"],
        plural: "httproutes",
        kind: "HTTPRoute",
        namespaced: true,
    },
    Kind {
        group: GATEWAY_API,
        versions: &["v1"],
        plural: "grpcroutes",
        kind: "GRPCRoute",
        namespaced: true,
    },
    Kind {
        group: GATEWAY_API,
        versions: &["v1beta1", "v1"],
        plural: "referencegrants",
        kind: "ReferenceGrant",
        namespaced: true,
    },
    Kind {
        group: GATEWAY_API,
        versions: &["v1alpha2"],
        plural: "tcproutes",
        kind: "TCPRoute",
        namespaced: true,
    },
    Kind {
        group: GATEWAY_API,
        versions: &["v1alpha2"],
        plural: "tlsroutes",
        kind: "TLSRoute",
        namespaced: true,
    },
];

const GATEWAY_API: &str = "gateway.networking.k8s.io";

/// The kind has a `status` subresource (every Gateway API CRD but
/// ReferenceGrant): `status` is written through `.../status` only, and
/// `metadata.generation` counts spec changes.
fn has_status_subresource(kind: &Kind) -> bool {
    kind.group == GATEWAY_API && kind.plural != "referencegrants"
}

fn kind_by_plural(group: &str, plural: &str) -> Option<&'static Kind> {
    KINDS
        .iter()
        .find(|k| k.group == group && k.plural == plural)
}

fn kind_by_api(api_version: &str, kind: &str) -> Option<&'static Kind> {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    KINDS
        .iter()
        .find(|k| k.group == group && k.kind == kind && k.versions.contains(&version))
}

fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// Faults a test can inject into every API response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// Every API request gets `200 OK` with a body that is not JSON.
    Garbage,
    /// LIST works; every WATCH gets `200 OK` and an empty body at once.
    CloseWatches,
    /// Every API request gets this HTTP status with a `Status` body.
    Status(u16),
}

/// The kind of API request a [`FaultRule`] selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    List,
    Watch,
    Get,
    Create,
    /// `PUT` of one object (a replace).
    Update,
    /// `PATCH` of one object (kube-rs `patch`, `patch_status`).
    Patch,
    Delete,
    /// `/version`, `/api`, `/apis` and the group-version resource lists.
    Discovery,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Get => "get",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::Discovery => "get",
        }
    }
}

/// An error status the server answers instead of serving matching requests, with
/// the `Status` body (reason, message, details) kube-apiserver sends for that code:
/// 403 `Forbidden` (an RBAC denial), 429 `TooManyRequests` (priority and fairness,
/// with a `Retry-After` header and `details.retryAfterSeconds`), 500 `InternalError`,
/// 503 `ServiceUnavailable`, 504 `Timeout`. A 403 names the user
/// `system:serviceaccount:crossmesh-system:crossmesh-reader` (the reader that
/// `deploy/rbac.yaml` creates); the server does not map credentials to users.
///
/// ```ignore
/// // The next two watches of pods get 503, then watches work again.
/// s.add_fault(FaultRule::status(503).on(Verb::Watch).of("pods").times(2));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    pub code: u16,
    /// Only this kind of request; `None`: every request, discovery included.
    pub verb: Option<Verb>,
    /// Only this resource (plural, for example `pods`); `None`: every resource.
    pub plural: Option<String>,
    /// Only the next N matching requests; `None`: until cleared.
    pub times: Option<u64>,
    /// `Retry-After` seconds (for 429 and 503); kube-apiserver sends 1 by default
    /// with 429.
    pub retry_after: Option<u32>,
}

impl FaultRule {
    /// Answer `code` to every request until cleared (narrow it with the builders).
    pub fn status(code: u16) -> FaultRule {
        FaultRule {
            code,
            verb: None,
            plural: None,
            times: None,
            retry_after: (code == 429).then_some(1),
        }
    }

    pub fn on(mut self, verb: Verb) -> FaultRule {
        self.verb = Some(verb);
        self
    }

    pub fn of(mut self, plural: &str) -> FaultRule {
        self.plural = Some(plural.to_string());
        self
    }

    pub fn times(mut self, n: u64) -> FaultRule {
        self.times = Some(n);
        self
    }

    pub fn retry_after(mut self, secs: u32) -> FaultRule {
        self.retry_after = Some(secs);
        self
    }

    fn matches(&self, verb: Verb, plural: Option<&str>) -> bool {
        self.verb.is_none_or(|v| v == verb)
            && self.plural.as_deref().is_none_or(|p| Some(p) == plural)
    }
}

/// When the server ends a watch stream cleanly (a complete chunked body, no error
/// event), besides `timeoutSeconds`: kube-apiserver does so at a random point 5-10
/// minutes into a watch that did not ask for a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchClose {
    #[default]
    Never,
    /// After sending this many `ADDED`/`MODIFIED`/`DELETED` events (replayed ones
    /// included; bookmarks do not count).
    AfterEvents(u64),
    /// This long after the watch started.
    After(Duration),
}

/// How a watch from an expired resourceVersion is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpiredWatch {
    /// HTTP 200 and one `ERROR` event carrying a 410 `Expired` `Status`, then the end
    /// of the stream: what the watch cache (the default since Kubernetes 1.x) does.
    #[default]
    ErrorEvent,
    /// HTTP 410 with an `Expired` `Status` body as the answer to the watch request
    /// itself: what a server answering a watch straight from etcd, or an older
    /// watch cache, does.
    HttpGone,
}

/// Storage key: kind, namespace ("" for cluster-scoped), name.
type Key = (&'static str, &'static str, String, String);

#[derive(Debug)]
struct StoredEvent {
    rv: u64,
    kind: &'static Kind,
    namespace: String,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    r#type: &'static str,
    object: Arc<Value>,
    /// The object before this event (for MODIFIED and DELETED), to serve
    /// consistent snapshots at an older resourceVersion.
    prev: Option<Arc<Value>>,
}

struct Store {
    rv: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Arc<StoredEvent>>,
    history_limit: usize,
    /// Watches and exact reads from a resourceVersion older than this get 410.
    oldest_rv: u64,
    uid: u64,
}

/// Per-server knobs and counters (shared by every connection).
struct Inner {
    name: String,
    store: Mutex<Store>,
    events: broadcast::Sender<Arc<StoredEvent>>,
    /// Bearer tokens accepted; checked only while `token_auth` is on.
    tokens: Mutex<Vec<String>>,
    /// Tokens the server knows but treats as expired (401, like any bad token).
    expired_tokens: Mutex<Vec<String>>,
    token_auth: AtomicBool,
    /// Why requests were refused 401, in order (what kube-apiserver logs; the
    /// response itself only says `Unauthorized`).
    auth_failures: Mutex<Vec<String>>,
    fault: Mutex<Fault>,
    rules: Mutex<Vec<FaultRule>>,
    faults_served: AtomicU64,
    bookmark_interval: Mutex<Duration>,
    watch_close: Mutex<WatchClose>,
    expired_watch: Mutex<ExpiredWatch>,
    istio_crds: AtomicBool,
    lists: AtomicU64,
    watches: AtomicU64,
    open_watches: AtomicU64,
    tls: Option<TlsMaterial>,
    /// Client certificates this server's CA issued (DER), by user name.
    issued: Mutex<HashMap<Vec<u8>, String>>,
    /// User names of client certificates presented at accepted TLS handshakes.
    cert_logins: Mutex<Vec<String>>,
    /// Why TLS handshakes were refused, in order.
    tls_rejections: Mutex<Vec<String>>,
    /// The service-account token signer (kube-apiserver's
    /// `--service-account-signing-key-file`).
    sa_issuer: SaIssuer,
    /// TokenReviews answered, in order: (reviewed token's subject or `?`,
    /// authenticated).
    token_reviews: Mutex<Vec<(String, bool)>>,
    /// TokenReviews ignore `spec.audiences` and answer without `status.audiences`,
    /// as an audience-unaware authenticator does.
    review_ignores_audiences: AtomicBool,
    /// Every resource request that got past authentication, in order.
    requests: Mutex<Vec<RequestRecord>>,
}

/// One resource request as the server's audit log would show it (the verb RBAC
/// checks, the resource, the namespace and the name, empty when none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub verb: Verb,
    pub plural: String,
    pub namespace: String,
    pub name: String,
    /// `status` for a request to the status subresource, else empty.
    pub subresource: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The CA and server key pair of a TLS fake server.
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca_pem: String,
    server: Arc<rustls::ServerConfig>,
    issuer: Arc<rcgen::Issuer<'static, rcgen::KeyPair>>,
}

/// A client certificate and its private key, PEM (kubeconfig
/// `client-certificate-data` / `client-key-data`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
    der: Vec<u8>,
}

/// A client certificate for `user` (subject CN; `groups` as O, which is how
/// kube-apiserver reads groups) signed by `issuer`.
fn issue_client_cert(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    user: &str,
    groups: &[&str],
) -> ClientCert {
    let key = rcgen::KeyPair::generate().expect("generate client key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("client params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, user);
    for g in groups {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, *g);
    }
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    let cert = params.signed_by(&key, issuer).expect("sign client cert");
    ClientCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

/// A client certificate for `user` from a CA no server knows: refused at the TLS
/// handshake by a server that requires client certificates.
pub fn client_cert_from_other_ca(user: &str) -> ClientCert {
    let (params, key, _) = generate_ca("some-other-client-ca");
    let issuer = rcgen::Issuer::new(params, key);
    issue_client_cert(&issuer, user, &[])
}

impl TlsMaterial {
    fn generate(require_client_cert: bool) -> TlsMaterial {
        let (ca_params, ca_key, ca_pem) = generate_ca("crossmesh-test-ca");
        let ca_der = ca_params
            .self_signed(&ca_key)
            .expect("self-sign CA")
            .der()
            .clone();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().expect("generate server key");
        let mut leaf =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("server cert params");
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver");
        let cert = leaf
            .signed_by(&leaf_key, &issuer)
            .expect("sign server cert");
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("tls versions");
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca_der).expect("CA into root store");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let server = builder
            .with_single_cert(vec![cert.der().clone()], key_der)
            .expect("server cert");
        TlsMaterial {
            ca_pem,
            server: Arc::new(server),
            issuer: Arc::new(issuer),
        }
    }
}

fn generate_ca(cn: &str) -> (rcgen::CertificateParams, rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate().expect("generate CA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("self-sign CA");
    let pem = cert.pem();
    (params, key, pem)
}

/// A PEM CA certificate unrelated to any server (for "wrong CA" tests).
pub fn unrelated_ca_pem() -> String {
    generate_ca("some-other-ca").2
}

/// How to start a [`FakeApiServer`].
#[derive(Debug, Clone)]
pub struct Options {
    pub name: String,
    pub tls: bool,
    /// With `tls`: the TLS handshake requires a client certificate signed by the
    /// server's CA ([`FakeApiServer::issue_client_cert`]); others are refused.
    pub client_certs: bool,
    /// When set, every request needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// How often a watch that asked for bookmarks gets one; kube-apiserver sends
    /// them about every minute.
    pub bookmark_interval: Duration,
    pub history_limit: usize,
    /// Whether the Istio CRDs (`networking.istio.io`, `security.istio.io`,
    /// `telemetry.istio.io`) are installed.
    pub istio_crds: bool,
    pub watch_close: WatchClose,
    pub expired_watch: ExpiredWatch,
    /// Fixed port; 0 picks a free one.
    pub port: u16,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            name: "cluster".into(),
            tls: false,
            client_certs: false,
            token: None,
            bookmark_interval: Duration::from_secs(60),
            history_limit: 10_000,
            istio_crds: true,
            watch_close: WatchClose::Never,
            expired_watch: ExpiredWatch::ErrorEvent,
            port: 0,
        }
    }
}

struct Running {
    task: JoinHandle<()>,
    kill: watch::Sender<bool>,
}

/// One fake member cluster's API server.
pub struct FakeApiServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
    running: Mutex<Option<Running>>,
}

impl FakeApiServer {
    /// A plain-HTTP server without auth, named `name`.
    pub async fn start(name: &str) -> FakeApiServer {
        Self::start_with(Options {
            name: name.into(),
            ..Options::default()
        })
        .await
    }

    pub async fn start_with(opts: Options) -> FakeApiServer {
        assert!(
            opts.tls || !opts.client_certs,
            "Options::client_certs needs Options::tls"
        );
        let (events, _) = broadcast::channel(4096);
        let inner = Arc::new(Inner {
            name: opts.name.clone(),
            store: Mutex::new(Store {
                rv: 1,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                history_limit: opts.history_limit.max(1),
                oldest_rv: 1,
                uid: 0,
            }),
            events,
            token_auth: AtomicBool::new(opts.token.is_some()),
            tokens: Mutex::new(opts.token.into_iter().collect()),
            expired_tokens: Mutex::new(Vec::new()),
            auth_failures: Mutex::new(Vec::new()),
            fault: Mutex::new(Fault::None),
            rules: Mutex::new(Vec::new()),
            faults_served: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
            bookmark_interval: Mutex::new(opts.bookmark_interval),
            watch_close: Mutex::new(opts.watch_close),
            expired_watch: Mutex::new(opts.expired_watch),
            istio_crds: AtomicBool::new(opts.istio_crds),
            lists: AtomicU64::new(0),
            watches: AtomicU64::new(0),
            open_watches: AtomicU64::new(0),
            tls: opts.tls.then(|| TlsMaterial::generate(opts.client_certs)),
            issued: Mutex::new(HashMap::new()),
            cert_logins: Mutex::new(Vec::new()),
            tls_rejections: Mutex::new(Vec::new()),
            sa_issuer: SaIssuer::generate(),
            token_reviews: Mutex::new(Vec::new()),
            review_ignores_audiences: AtomicBool::new(false),
        });
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            write_object(&inner, obj, WriteMode::Create).expect("seed namespace");
        }
        let listener = TcpListener::bind(("127.0.0.1", opts.port))
            .await
            .expect("bind fake API server");
        let addr = listener.local_addr().expect("local addr");
        let server = FakeApiServer {
            inner,
            addr,
            running: Mutex::new(None),
        };
        server.serve(listener);
        server
    }

    fn serve(&self, listener: TcpListener) {
        let (kill, kill_rx) = watch::channel(false);
        let listener = KillableListener {
            tcp: listener,
            tls: self
                .inner
                .tls
                .as_ref()
                .map(|t| tokio_rustls::TlsAcceptor::from(t.server.clone())),
            kill: kill_rx,
            inner: self.inner.clone(),
        };
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(self.inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        *lock(&self.running) = Some(Running { task, kill });
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        let scheme = if self.inner.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    pub fn ca_pem(&self) -> Option<&str> {
        self.inner.tls.as_ref().map(|t| t.ca_pem.as_str())
    }

    /// Stop serving: the port closes and every open connection (watches included)
    /// is cut, as when a cluster's API server becomes unreachable.
    pub async fn stop(&self) {
        let running = lock(&self.running).take();
        if let Some(r) = running {
            let _ = r.kill.send(true);
            r.task.abort();
            let _ = r.task.await;
        }
    }

    /// Serve again on the same port, with the same objects and history.
    pub async fn restart(&self) {
        self.stop().await;
        let mut last = None;
        for _ in 0..100 {
            match TcpListener::bind(self.addr).await {
                Ok(l) => {
                    self.serve(l);
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("rebind {}: {last:?}", self.addr);
    }

    /// Restart as a kube-apiserver does whose watch cache starts empty (or whose
    /// etcd was compacted while it was down): the objects are kept, with whatever
    /// changes a test made while it was stopped, but every resourceVersion issued
    /// before the restart is expired. Every watch from such a resourceVersion gets
    /// 410 (in the [`ExpiredWatch`] form set on the server), every continue token
    /// from before gets 410, and fresh lists (paginated or not) work.
    pub async fn restart_with_history_lost(&self) {
        self.stop().await;
        {
            let mut s = lock(&self.inner.store);
            s.history.clear();
            s.rv += 1;
            s.oldest_rv = s.rv;
        }
        self.restart().await;
    }

    pub fn is_running(&self) -> bool {
        lock(&self.running).is_some()
    }

    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.inner.fault) = fault;
    }

    /// Answer matching requests with an error status (see [`FaultRule`]). Rules are
    /// tried in the order added; a rule with `times` is dropped once used up.
    pub fn add_fault(&self, rule: FaultRule) {
        lock(&self.inner.rules).push(rule);
    }

    /// Drop every [`FaultRule`].
    pub fn clear_faults(&self) {
        lock(&self.inner.rules).clear();
    }

    /// Requests answered by a [`FaultRule`] so far.
    pub fn faults_served(&self) -> u64 {
        self.inner.faults_served.load(Ordering::SeqCst)
    }

    /// Replace the accepted bearer tokens; an empty list turns token auth off.
    pub fn set_tokens(&self, tokens: &[&str]) {
        *lock(&self.inner.tokens) = tokens.iter().map(|t| t.to_string()).collect();
        self.inner
            .token_auth
            .store(!tokens.is_empty(), Ordering::SeqCst);
    }

    /// Stop accepting one token (revoked); others stay valid, and token auth stays
    /// on even when none is left.
    pub fn revoke_token(&self, token: &str) {
        lock(&self.inner.tokens).retain(|t| t != token);
    }

    /// Treat `token` as known but expired: requests with it get 401 `Unauthorized`
    /// (kube-apiserver never says why in the response) and
    /// [`Self::auth_failures`] records `service account token has expired`.
    pub fn expire_token(&self, token: &str) {
        lock(&self.inner.tokens).retain(|t| t != token);
        lock(&self.inner.expired_tokens).push(token.to_string());
        self.inner.token_auth.store(true, Ordering::SeqCst);
    }

    /// The `iss` of this server's service-account tokens.
    pub fn issuer(&self) -> &str {
        SA_ISSUER
    }

    /// This server's service-account signing keys as a JWKS document (what
    /// `GET /openid/v1/jwks` serves), for a mesh file's `tokenIssuer.jwks`.
    pub fn jwks_json(&self) -> String {
        self.inner.sa_issuer.jwks().to_string()
    }

    /// A service-account token as kube-apiserver's TokenRequest makes it for
    /// `spec` (what kubelet projects into the Pod). As kube-apiserver does, it
    /// refuses (here: panics) unless the ServiceAccount exists and, for a token
    /// bound to a Pod, the Pod exists and runs as that service account; the
    /// token records their uids, so deleting either revokes it.
    pub fn mint_token(&self, spec: &SaToken) -> String {
        let get = |plural: &str, name: &str| self.get("", plural, &spec.namespace, name);
        let sa = get("serviceaccounts", &spec.service_account).unwrap_or_else(|| {
            panic!(
                "serviceaccounts {:?} not found in namespace {:?}",
                spec.service_account, spec.namespace
            )
        });
        let pod = spec.pod.as_ref().map(|name| {
            let pod = get("pods", name)
                .unwrap_or_else(|| panic!("pods {name:?} not found in namespace {:?}", spec.namespace));
            let runs_as = pod["spec"]["serviceAccountName"].as_str().unwrap_or("default");
            assert_eq!(
                runs_as, spec.service_account,
                "cannot bind a token of service account {:?} to pod {name:?}, which runs as {runs_as:?}",
                spec.service_account
            );
            json!({"name": name, "uid": pod["metadata"]["uid"]})
        });
        let now = unix_now();
        let iat = now + spec.issued_in;
        let mut k = json!({
            "namespace": spec.namespace,
            "serviceaccount": {"name": spec.service_account, "uid": sa["metadata"]["uid"]},
        });
        if let Some(p) = pod {
            k["pod"] = p;
        }
        let mut claims = json!({
            "aud": spec.audiences,
            "iat": iat,
            "nbf": iat,
            "iss": SA_ISSUER,
            "jti": format!("{:016x}", ring_random_u64()),
            "kubernetes.io": k,
            "sub": format!("system:serviceaccount:{}:{}", spec.namespace, spec.service_account),
        });
        if let Some(exp) = spec.expires_in {
            claims["exp"] = json!(now + exp);
        }
        self.inner.sa_issuer.sign(&claims)
    }

    /// Make TokenReviews audience-unaware: `spec.audiences` is not checked and
    /// `status.audiences` is left empty (the token is then only valid for the API
    /// server itself; a careful client refuses it).
    pub fn set_review_ignores_audiences(&self, on: bool) {
        self.inner
            .review_ignores_audiences
            .store(on, Ordering::SeqCst);
    }

    /// TokenReviews answered so far: the reviewed subject (`?` when the token did
    /// not verify) and whether it was authenticated.
    pub fn token_reviews(&self) -> Vec<(String, bool)> {
        lock(&self.inner.token_reviews).clone()
    }

    /// Why requests were refused with 401, in order, worded as kube-apiserver logs
    /// it (`invalid bearer token, service account token has expired`,
    /// `invalid bearer token`, `no credentials`).
    pub fn auth_failures(&self) -> Vec<String> {
        lock(&self.inner.auth_failures).clone()
    }

    /// Issue a client certificate for user `user` (CN) in `groups` (O) from this
    /// server's CA. Needs `Options::tls`; accepted at the handshake when
    /// `Options::client_certs` is on.
    pub fn issue_client_cert(&self, user: &str, groups: &[&str]) -> ClientCert {
        let tls = self
            .inner
            .tls
            .as_ref()
            .expect("issue_client_cert needs a TLS server");
        let cert = issue_client_cert(&tls.issuer, user, groups);
        lock(&self.inner.issued).insert(cert.der.clone(), user.to_string());
        cert
    }

    /// The users of the client certificates presented at each accepted TLS
    /// handshake, in order.
    pub fn cert_logins(&self) -> Vec<String> {
        lock(&self.inner.cert_logins).clone()
    }

    /// Why TLS handshakes were refused (rustls' error), in order.
    pub fn tls_rejections(&self) -> Vec<String> {
        lock(&self.inner.tls_rejections).clone()
    }

    pub fn set_bookmark_interval(&self, d: Duration) {
        *lock(&self.inner.bookmark_interval) = d;
    }

    /// Applies to watches started from now on.
    pub fn set_watch_close(&self, close: WatchClose) {
        *lock(&self.inner.watch_close) = close;
    }

    pub fn set_expired_watch(&self, form: ExpiredWatch) {
        *lock(&self.inner.expired_watch) = form;
    }

    /// Install or uninstall the Istio CRDs. Uninstalling deletes every Istio object
    /// (each with a `DELETED` event) and ends the open watches of those kinds, as
    /// deleting a CRD does.
    pub fn set_istio_crds(&self, installed: bool) {
        let was = self.inner.istio_crds.swap(installed, Ordering::SeqCst);
        if was && !installed {
            let mut s = lock(&self.inner.store);
            let keys: Vec<Key> = s
                .objects
                .keys()
                .filter(|k| is_istio_group(k.0))
                .cloned()
                .collect();
            for key in keys {
                if let Some(kind) = kind_by_plural(key.0, key.1) {
                    remove_locked(&self.inner, &mut s, kind, &key.2, &key.3);
                }
            }
            s.rv += 1;
            for kind in KINDS.iter().filter(|k| is_istio_group(k.group)) {
                let ev = Arc::new(StoredEvent {
                    rv: s.rv,
                    kind,
                    namespace: String::new(),
                    r#type: "UNSERVED",
                    object: Arc::new(Value::Null),
                    prev: None,
                });
                let _ = self.inner.events.send(ev);
            }
        }
    }

    /// The resource requests received so far (after authentication, faults
    /// included), oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.inner.requests).clone()
    }

    /// LIST requests served so far.
    pub fn list_count(&self) -> u64 {
        self.inner.lists.load(Ordering::SeqCst)
    }

    /// WATCH requests received so far.
    pub fn watch_count(&self) -> u64 {
        self.inner.watches.load(Ordering::SeqCst)
    }

    /// WATCH streams open now.
    pub fn open_watches(&self) -> u64 {
        self.inner.open_watches.load(Ordering::SeqCst)
    }

    pub fn resource_version(&self) -> u64 {
        lock(&self.inner.store).rv
    }

    /// Drop the whole event history: every watch or exact read from an earlier
    /// resourceVersion now gets 410 Gone, and every open watch is expired with a
    /// 410 `ERROR` event (as etcd compaction does to a lagging watch cache).
    pub fn compact(&self) {
        let mut s = lock(&self.inner.store);
        s.history.clear();
        // Open watches notice through a marker event that matches no kind.
        s.rv += 1;
        let rv = s.rv;
        s.oldest_rv = rv;
        let ev = Arc::new(StoredEvent {
            rv,
            kind: &COMPACTION,
            namespace: String::new(),
            r#type: "COMPACTED",
            object: Arc::new(Value::Null),
            prev: None,
        });
        let _ = self.inner.events.send(ev);
    }

    /// Create or replace an object (k8s-openapi type or JSON with `apiVersion` and
    /// `kind`), creating its namespace first when missing. Returns the new
    /// resourceVersion. Panics on an object the server refuses (a test's mistake).
    pub fn apply<T: serde::Serialize>(&self, obj: &T) -> u64 {
        let v = serde_json::to_value(obj).expect("serialize object");
        self.write(v, WriteMode::Upsert).expect("apply object")
    }

    /// Create an object as a `POST` does: fails if it exists (`... already exists`) or
    /// its namespace does not (`namespaces "x" not found`).
    pub fn create<T: serde::Serialize>(&self, obj: &T) -> Result<u64, String> {
        let v = serde_json::to_value(obj).map_err(|e| e.to_string())?;
        self.write(v, WriteMode::Create)
    }

    /// Delete `plural` (for example `pods`) `namespace/name`; namespace "" for
    /// cluster-scoped kinds. Returns the deletion's resourceVersion.
    pub fn delete(
        &self,
        group: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Result<u64, String> {
        let kind = kind_by_plural(group, plural)
            .ok_or_else(|| format!("unknown kind {group}/{plural}"))?;
        delete_object(&self.inner, kind, namespace, name)
    }

    /// The stored object, if any.
    pub fn get(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let kind = kind_by_plural(group, plural)?;
        let s = lock(&self.inner.store);
        s.objects
            .get(&(
                kind.group,
                kind.plural,
                namespace.to_string(),
                name.to_string(),
            ))
            .map(|v| (**v).clone())
    }

    fn write(&self, v: Value, mode: WriteMode) -> Result<u64, String> {
        write_object(&self.inner, v, mode)
            .map(|(rv, _)| rv)
            .map_err(|e| e.to_string())
    }

    /// A kubeconfig (YAML) for this server: context and cluster named after the
    /// server; `token` overrides the server's first accepted token, `ca_pem` its CA.
    pub fn kubeconfig_yaml(&self, token: Option<&str>, ca_pem: Option<&str>) -> String {
        self.kubeconfig_yaml_with(&Credentials {
            token: token.map(str::to_string),
            ca_pem: ca_pem.map(str::to_string),
            ..Credentials::default()
        })
    }

    /// A kubeconfig (YAML) for this server with `creds`: the token (else the
    /// server's first accepted one, unless `no_token`), the CA (else the server's),
    /// and a client certificate and key (`client-certificate-data`,
    /// `client-key-data`).
    pub fn kubeconfig_yaml_with(&self, creds: &Credentials) -> String {
        let name = &self.inner.name;
        let token = if creds.no_token {
            None
        } else {
            creds
                .token
                .clone()
                .or_else(|| lock(&self.inner.tokens).first().cloned())
        };
        let ca = creds.ca_pem.as_deref().or(self.ca_pem());
        let mut s = String::new();
        s.push_str("apiVersion: v1\nkind: Config\n");
        s.push_str(&format!("current-context: {name}\n"));
        s.push_str("clusters:\n");
        s.push_str(&format!(
            "- name: {name}\n  cluster:\n    server: {}\n",
            self.url()
        ));
        if let Some(ca) = ca {
            s.push_str(&format!(
                "    certificate-authority-data: {}\n",
                base64(ca.as_bytes())
            ));
        }
        s.push_str("users:\n");
        s.push_str(&format!("- name: {name}-user\n  user:\n"));
        let mut empty = true;
        if let Some(t) = token {
            s.push_str(&format!("    token: {t}\n"));
            empty = false;
        }
        if let Some(c) = &creds.client_cert {
            s.push_str(&format!(
                "    client-certificate-data: {}\n    client-key-data: {}\n",
                base64(c.cert_pem.as_bytes()),
                base64(c.key_pem.as_bytes())
            ));
            empty = false;
        }
        if empty {
            s.push_str("    {}\n");
        }
        s.push_str("contexts:\n");
        s.push_str(&format!(
            "- name: {name}\n  context:\n    cluster: {name}\n    user: {name}-user\n"
        ));
        s
    }

    /// Write [`Self::kubeconfig_yaml`] to `path` (atomically, via a rename, so a
    /// file watcher never sees half a file).
    pub fn write_kubeconfig(&self, path: &Path, token: Option<&str>, ca_pem: Option<&str>) {
        write_atomically(path, &self.kubeconfig_yaml(token, ca_pem));
    }

    /// Write [`Self::kubeconfig_yaml_with`] to `path` (atomically).
    pub fn write_kubeconfig_with(&self, path: &Path, creds: &Credentials) {
        write_atomically(path, &self.kubeconfig_yaml_with(creds));
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).expect("write kubeconfig");
    std::fs::rename(&tmp, path).expect("rename kubeconfig");
}

/// The user part of a kubeconfig ([`FakeApiServer::kubeconfig_yaml_with`]).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Bearer token; `None`: the server's first accepted token, if any.
    pub token: Option<String>,
    /// Write no token at all (for a client-certificate-only user).
    pub no_token: bool,
    /// CA to trust; `None`: the server's.
    pub ca_pem: Option<String>,
    pub client_cert: Option<ClientCert>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(r) = lock(&self.running).take() {
            let _ = r.kill.send(true);
            r.task.abort();
        }
    }
}

/// A marker kind for the compaction event; matches no watch.
static COMPACTION: Kind = Kind {
    group: "",
    versions: &[],
    plural: "",
    kind: "",
    namespaced: false,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteMode {
    /// Fails if the object exists or its namespace does not.
    Create,
    /// Creates or replaces; creates a missing namespace first (test helpers only).
    Upsert,
    /// A `PUT`: the object must exist, and a `metadata.resourceVersion` in the
    /// body must be the stored one (optimistic concurrency).
    Update,
}

/// Why a write was refused, with the HTTP status kube-apiserver answers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum WriteError {
    /// 409 `AlreadyExists`.
    AlreadyExists(String),
    /// 409 `Conflict`: an update from a stale resourceVersion.
    Conflict(String),
    /// 404 `NotFound` (the namespace does not exist, or the kind is not served).
    NotFound(String),
    /// 422 `Invalid`.
    Invalid(String),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::AlreadyExists(m)
            | WriteError::Conflict(m)
            | WriteError::NotFound(m)
            | WriteError::Invalid(m) => f.write_str(m),
        }
    }
}

fn is_istio_group(group: &str) -> bool {
    group == "networking.istio.io" || group == "security.istio.io" || group == "telemetry.istio.io"
}

/// The kind is served now (an Istio kind only while its CRDs are installed).
fn served(inner: &Inner, kind: &Kind) -> bool {
    !is_istio_group(kind.group) || inner.istio_crds.load(Ordering::SeqCst)
}

const NOT_FOUND: &str = "the server could not find the requested resource";

/// Store `v`, stamping metadata, record the event and notify watches.
fn write_object(
    inner: &Inner,
    mut v: Value,
    mode: WriteMode,
) -> Result<(u64, Arc<Value>), WriteError> {
    let api = v
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let kname = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let kind = kind_by_api(&api, &kname).ok_or_else(|| {
        WriteError::NotFound(format!(
            "no kind {kname:?} is registered for version {api:?}"
        ))
    })?;
    if !served(inner, kind) {
        return Err(WriteError::NotFound(format!(
            "{NOT_FOUND} ({}.{}: the CRD is not installed)",
            kind.plural, kind.group
        )));
    }
    let meta = v
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| WriteError::Invalid("object has no metadata".into()))?;
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.is_empty() {
        return Err(WriteError::Invalid(format!(
            "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
            kind.kind
        )));
    }
    let namespace = if kind.namespaced {
        let ns = meta
            .get("namespace")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_string();
        meta.insert("namespace".into(), json!(ns));
        ns
    } else {
        meta.remove("namespace");
        String::new()
    };
    if kind.plural == "namespaces" {
        // What the namespace lifecycle gives every new Namespace.
        let obj = v
            .as_object_mut()
            .ok_or_else(|| WriteError::Invalid("not an object".into()))?;
        obj.entry("spec")
            .or_insert(json!({"finalizers": ["kubernetes"]}));
        obj.entry("status").or_insert(json!({"phase": "Active"}));
    }
    let key: Key = (kind.group, kind.plural, namespace.clone(), name);
    let mut s = lock(&inner.store);
    if kind.namespaced && !s.objects.contains_key(&namespace_key(&namespace)) {
        if mode == WriteMode::Create {
            return Err(WriteError::NotFound(format!(
                "namespaces \"{namespace}\" not found"
            )));
        }
        let ns = json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}
        });
        store_locked(
            inner,
            &mut s,
            &NAMESPACE_KIND,
            ns,
            namespace_key(&namespace),
            None,
        );
    }
    let prev = s.objects.get(&key).cloned();
    if mode == WriteMode::Update {
        let Some(p) = &prev else {
            return Err(WriteError::NotFound(format!(
                "{} \"{}\" not found",
                kind.plural, key.3
            )));
        };
        let sent = v["metadata"]["resourceVersion"].as_str().unwrap_or("");
        let stored = p["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if !sent.is_empty() && sent != stored {
            return Err(WriteError::Conflict(format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                kind.plural, key.3
            )));
        }
    }
    if prev.is_some() && mode == WriteMode::Create {
        return Err(WriteError::AlreadyExists(format!(
            "{} \"{}\" already exists",
            kind.plural, key.3
        )));
    }
    if has_status_subresource(kind) {
        write_of_status_kind(&mut v, prev.as_deref());
    }
    Ok(store_locked(inner, &mut s, kind, v, key, prev))
}

/// A write of the object itself (not `/status`) of a kind with a status
/// subresource, as kube-apiserver stores it: the stored `status` is kept (none
/// on create), and `metadata.generation` is 1 on create and grows by one when
/// anything but `metadata` and `status` changed.
fn write_of_status_kind(v: &mut Value, prev: Option<&Value>) {
    let body = |o: &Value| -> Value {
        let mut o = o.clone();
        if let Some(m) = o.as_object_mut() {
            for k in ["metadata", "status", "apiVersion", "kind"] {
                m.remove(k);
            }
        }
        o
    };
    let generation = match prev {
        None => 1,
        Some(p) => {
            let g = p["metadata"]["generation"].as_i64().unwrap_or(1);
            if body(p) == body(v) {
                g
            } else {
                g + 1
            }
        }
    };
    let status = prev.and_then(|p| p.get("status")).cloned();
    if let Some(o) = v.as_object_mut() {
        match status {
            Some(st) => o.insert("status".into(), st),
            None => o.remove("status"),
        };
    }
    v["metadata"]["generation"] = json!(generation);
}

/// `PUT` (`patch: false`, the body is the object) or `PATCH` (a JSON merge patch)
/// of `.../NAME/status`: only `status` changes; a `metadata.resourceVersion` in
/// the body must be the stored one. A write that changes nothing stores nothing.
fn write_status(
    inner: &Inner,
    kind: &'static Kind,
    namespace: &str,
    name: &str,
    body: &Value,
    patch: bool,
) -> Result<Arc<Value>, WriteError> {
    let key: Key = (
        kind.group,
        kind.plural,
        namespace.to_string(),
        name.to_string(),
    );
    let mut s = lock(&inner.store);
    let Some(prev) = s.objects.get(&key).cloned() else {
        return Err(WriteError::NotFound(format!(
            "{} \"{name}\" not found",
            kind.plural
        )));
    };
    let sent = body["metadata"]["resourceVersion"].as_str().unwrap_or("");
    if !sent.is_empty() && Some(sent) != prev["metadata"]["resourceVersion"].as_str() {
        return Err(WriteError::Conflict(format!(
            "Operation cannot be fulfilled on {}.{} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            kind.plural, kind.group
        )));
    }
    let status = if patch {
        let mut whole = (*prev).clone();
        merge_patch(&mut whole, body);
        whole.get("status").cloned()
    } else {
        body.get("status").cloned()
    };
    let mut next = (*prev).clone();
    if let Some(o) = next.as_object_mut() {
        match status.filter(|st| !st.is_null()) {
            Some(st) => o.insert("status".into(), st),
            None => o.remove("status"),
        };
    }
    if next == *prev {
        return Ok(prev);
    }
    Ok(store_locked(inner, &mut s, kind, next, key, Some(prev)).1)
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn namespace_key(ns: &str) -> Key {
    ("", "namespaces", String::new(), ns.to_string())
}

static NAMESPACE_KIND: Kind = Kind {
    group: "",
    versions: &["v1"],
    plural: "namespaces",
    kind: "Namespace",
    namespaced: false,
};

/// Stamp resourceVersion, uid and creationTimestamp on `v`, store it under `key`
/// and record the event.
fn store_locked(
    inner: &Inner,
    s: &mut Store,
    kind: &'static Kind,
    mut v: Value,
    key: Key,
    prev: Option<Arc<Value>>,
) -> (u64, Arc<Value>) {
    s.rv += 1;
    let rv = s.rv;
    let uid = match prev
        .as_ref()
        .and_then(|p| p["metadata"]["uid"].as_str().map(str::to_string))
    {
        Some(u) => u,
        None => {
            s.uid += 1;
            format!("00000000-0000-4000-8000-{:012x}", s.uid)
        }
    };
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.insert("uid".into(), json!(uid));
        meta.entry("creationTimestamp")
            .or_insert(json!("2024-01-01T00:00:00Z"));
    }
    let namespace = key.2.clone();
    let obj = Arc::new(v);
    s.objects.insert(key, obj.clone());
    let ty = if prev.is_some() { "MODIFIED" } else { "ADDED" };
    record(inner, s, kind, namespace, ty, obj.clone(), prev);
    (rv, obj)
}

/// Delete one object; deleting a Namespace first deletes every object in it (what
/// the namespace controller does before the Namespace itself goes).
fn delete_object(
    inner: &Inner,
    kind: &'static Kind,
    namespace: &str,
    name: &str,
) -> Result<u64, String> {
    let mut s = lock(&inner.store);
    let key: Key = (
        kind.group,
        kind.plural,
        namespace.to_string(),
        name.to_string(),
    );
    if !s.objects.contains_key(&key) {
        return Err(format!("{} \"{name}\" not found", kind.plural));
    }
    if kind.plural == "namespaces" && kind.group.is_empty() {
        let inside: Vec<Key> = s.objects.keys().filter(|k| k.2 == name).cloned().collect();
        for k in inside {
            if let Some(kk) = kind_by_plural(k.0, k.1) {
                remove_locked(inner, &mut s, kk, &k.2, &k.3);
            }
        }
    }
    remove_locked(inner, &mut s, kind, namespace, name)
        .ok_or_else(|| format!("{} \"{name}\" not found", kind.plural))
}

/// Remove one object and record its `DELETED` event; `None` if absent.
fn remove_locked(
    inner: &Inner,
    s: &mut Store,
    kind: &'static Kind,
    namespace: &str,
    name: &str,
) -> Option<u64> {
    let key: Key = (
        kind.group,
        kind.plural,
        namespace.to_string(),
        name.to_string(),
    );
    let prev = s.objects.remove(&key)?;
    s.rv += 1;
    let rv = s.rv;
    let mut gone = (*prev).clone();
    gone["metadata"]["resourceVersion"] = json!(rv.to_string());
    record(
        inner,
        s,
        kind,
        namespace.to_string(),
        "DELETED",
        Arc::new(gone),
        Some(prev),
    );
    Some(rv)
}

fn record(
    inner: &Inner,
    s: &mut Store,
    kind: &'static Kind,
    namespace: String,
    ty: &'static str,
    object: Arc<Value>,
    prev: Option<Arc<Value>>,
) {
    let ev = Arc::new(StoredEvent {
        rv: s.rv,
        kind,
        namespace,
        r#type: ty,
        object,
        prev,
    });
    s.history.push_back(ev.clone());
    while s.history.len() > s.history_limit {
        if let Some(old) = s.history.pop_front() {
            s.oldest_rv = old.rv;
        }
    }
    // Sent under the store lock so a watch that subscribes under the same lock sees
    // exactly the events after its starting point.
    let _ = inner.events.send(ev);
}

/// Objects of `kind` as they were at `rv` (which must be >= `oldest_rv`).
fn snapshot_at(s: &Store, kind: &Kind, rv: u64) -> BTreeMap<(String, String), Arc<Value>> {
    let mut out: BTreeMap<(String, String), Arc<Value>> = s
        .objects
        .range((kind.group, kind.plural, String::new(), String::new())..)
        .take_while(|(k, _)| k.0 == kind.group && k.1 == kind.plural)
        .map(|(k, v)| ((k.2.clone(), k.3.clone()), v.clone()))
        .collect();
    for ev in s.history.iter().rev() {
        if ev.rv <= rv {
            break;
        }
        if ev.kind.group != kind.group || ev.kind.plural != kind.plural {
            continue;
        }
        let name = ev.object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let key = (ev.namespace.clone(), name);
        match &ev.prev {
            Some(p) => {
                out.insert(key, p.clone());
            }
            None => {
                out.remove(&key);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// HTTP

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn json_response(code: u16, v: &Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    json_response(code, &status_body(code, reason, message))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(c) => {
                        out.push(c);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// An equality-based selector (`a=b`, `a==b`, `a!=b`, `a`, `!a`, comma-separated).
#[derive(Debug, Default)]
struct Selector(Vec<(String, Op)>);

#[derive(Debug)]
enum Op {
    Eq(String),
    Ne(String),
    Exists,
    NotExists,
}

impl Selector {
    fn parse(s: &str) -> Result<Selector, String> {
        let mut out = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if term.contains(" in ") || term.contains(" notin ") || term.contains('(') {
                return Err(format!("unsupported set-based selector {term:?}"));
            }
            if let Some((k, v)) = term.split_once("!=") {
                out.push((k.trim().into(), Op::Ne(v.trim().into())));
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                out.push((k.trim().into(), Op::Eq(v.trim().into())));
            } else if let Some(k) = term.strip_prefix('!') {
                out.push((k.trim().into(), Op::NotExists));
            } else {
                out.push((term.into(), Op::Exists));
            }
        }
        Ok(Selector(out))
    }

    fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|(k, op)| {
            let v = get(k);
            match op {
                Op::Eq(want) => v.as_deref() == Some(want.as_str()),
                Op::Ne(want) => v.as_deref() != Some(want.as_str()),
                Op::Exists => v.is_some(),
                Op::NotExists => v.is_none(),
            }
        })
    }
}

/// What a LIST or WATCH selects.
struct Filter {
    kind: &'static Kind,
    namespace: Option<String>,
    labels: Selector,
    fields: Selector,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        if let Some(ns) = &self.namespace {
            if meta["namespace"].as_str() != Some(ns.as_str()) {
                return false;
            }
        }
        self.labels
            .matches(|k| meta["labels"][k].as_str().map(str::to_string))
            && self.fields.matches(|k| match k {
                "metadata.name" => meta["name"].as_str().map(str::to_string),
                "metadata.namespace" => meta["namespace"].as_str().map(str::to_string),
                _ => None,
            })
    }
}

/// Present the stored object at the requested API version.
fn at_version(obj: &Value, kind: &Kind, version: &str) -> Value {
    let mut o = obj.clone();
    o["apiVersion"] = json!(api_version(kind.group, version));
    o["kind"] = json!(kind.kind);
    o
}

/// The bearer-token check: `Err(reason)` (as kube-apiserver logs it) when token
/// auth is on and the request's token is missing, unknown or expired.
fn authenticate(inner: &Inner, req: &Request) -> Result<(), String> {
    if !inner.token_auth.load(Ordering::SeqCst) {
        return Ok(());
    }
    let Some(token) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
    else {
        return Err("no credentials".into());
    };
    if lock(&inner.tokens).iter().any(|t| t == token) {
        Ok(())
    } else if lock(&inner.expired_tokens).iter().any(|t| t == token) {
        Err("invalid bearer token, service account token has expired".into())
    } else {
        Err("invalid bearer token".into())
    }
}

/// The answer to a request a [`FaultRule`] matches: the `Status` kube-apiserver
/// sends for that code.
fn fault_response(
    rule: &FaultRule,
    verb: Verb,
    kind: Option<&Kind>,
    namespace: Option<&str>,
) -> Response {
    let code = rule.code;
    let resource = kind.map(|k| {
        if k.group.is_empty() {
            k.plural.to_string()
        } else {
            format!("{}.{}", k.plural, k.group)
        }
    });
    let (reason, message) = match code {
        403 => {
            let scope = match namespace {
                Some(ns) => format!("in the namespace \"{ns}\""),
                None => "at the cluster scope".to_string(),
            };
            let what = resource.clone().unwrap_or_else(|| "the requested resource".into());
            (
                "Forbidden",
                format!(
                    "{what} is forbidden: User \"system:serviceaccount:crossmesh-system:crossmesh-reader\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
                    verb.as_str(),
                    kind.map_or("", |k| k.plural),
                    kind.map_or("", |k| k.group),
                ),
            )
        }
        429 => (
            "TooManyRequests",
            "Too many requests, please try again later.".to_string(),
        ),
        500 => (
            "InternalError",
            "Internal error occurred: injected fault".to_string(),
        ),
        503 => (
            "ServiceUnavailable",
            "the server is currently unable to handle the request".to_string(),
        ),
        504 => (
            "Timeout",
            "the server was unable to return a response in the time allotted, but may still be processing the request".to_string(),
        ),
        _ => ("Unknown", format!("the server responded with the status code {code} but did not return more information")),
    };
    let mut body = status_body(code, reason, &message);
    let mut details = serde_json::Map::new();
    if let Some(k) = kind {
        details.insert("group".into(), json!(k.group));
        details.insert("kind".into(), json!(k.plural));
    }
    if let Some(secs) = rule.retry_after {
        details.insert("retryAfterSeconds".into(), json!(secs));
    }
    if !details.is_empty() {
        body["details"] = Value::Object(details);
    }
    let mut r = json_response(code, &body);
    if let Some(secs) = rule.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// The first [`FaultRule`] matching this request, used once.
fn take_fault(inner: &Inner, verb: Verb, plural: Option<&str>) -> Option<FaultRule> {
    let mut rules = lock(&inner.rules);
    let i = rules.iter().position(|r| r.matches(verb, plural))?;
    let rule = rules[i].clone();
    if let Some(n) = rules[i].times.as_mut() {
        *n = n.saturating_sub(1);
        if *n == 0 {
            rules.remove(i);
        }
    }
    inner.faults_served.fetch_add(1, Ordering::SeqCst);
    Some(rule)
}

async fn handle(AxState(inner): AxState<Arc<Inner>>, req: Request) -> Response {
    if let Err(why) = authenticate(&inner, &req) {
        lock(&inner.auth_failures).push(why);
        return status(401, "Unauthorized", "Unauthorized");
    }
    let fault = lock(&inner.fault).clone();
    match fault {
        Fault::Garbage => {
            return Response::new(Body::from(
                "<html><body>502 Bad Gateway from a proxy</body></html>",
            ));
        }
        Fault::Status(code) => {
            return fault_response(&FaultRule::status(code), Verb::Discovery, None, None);
        }
        Fault::None | Fault::CloseWatches => {}
    }
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query());
    let method = req.method().clone();
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match (&method, segs.as_slice()) {
        (&Method::POST, ["apis", "authentication.k8s.io", "v1", "tokenreviews"]) => {
            if let Some(rule) = take_fault(&inner, Verb::Create, Some("tokenreviews")) {
                return fault_response(&rule, Verb::Create, None, None);
            }
            let body = match axum::body::to_bytes(req.into_body(), 1 << 20).await {
                Ok(b) => b,
                Err(e) => return status(400, "BadRequest", &e.to_string()),
            };
            return token_review(&inner, &body);
        }
        (&Method::GET, ["openid", "v1", "jwks"]) => {
            return json_response(200, &inner.sa_issuer.jwks());
        }
        (&Method::GET, [".well-known", "openid-configuration"]) => {
            return json_response(200, &inner.sa_issuer.discovery(&inner_url_hint(&req)));
        }
        _ => {}
    }
    let is_discovery = matches!(segs.as_slice(), ["version"] | ["api"] | ["apis"])
        || matches!(segs.as_slice(), ["api", _] | ["apis", _, _]);
    if is_discovery {
        if let Some(rule) = take_fault(&inner, Verb::Discovery, None) {
            return fault_response(&rule, Verb::Discovery, None, None);
        }
    }
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => {
            return json_response(
                200,
                &json!({
                    "major": "1", "minor": "33", "gitVersion": "v1.33.0-crossmesh-fake",
                    "platform": "linux/amd64"
                }),
            )
        }
        ["api"] => {
            return json_response(
                200,
                &json!({
                    "kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]
                }),
            )
        }
        ["apis"] => return json_response(200, &api_group_list(&inner)),
        ["api", v, rest @ ..] => ("", *v, rest.to_vec()),
        ["apis", g, v, rest @ ..] => (*g, *v, rest.to_vec()),
        _ => return status(404, "NotFound", NOT_FOUND),
    };
    if rest.is_empty() {
        return api_resource_list(&inner, group, version);
    }
    let (namespace, plural, name, status_sub) = match rest.as_slice() {
        [plural] => (None, *plural, None, false),
        [plural, name] => (None, *plural, Some(*name), false),
        [plural, name, "status"] => (None, *plural, Some(*name), true),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None, false),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name), false),
        ["namespaces", ns, plural, name, "status"] => (Some(*ns), *plural, Some(*name), true),
        _ => return status(404, "NotFound", NOT_FOUND),
    };
    let Some(kind) = kind_by_plural(group, plural)
        .filter(|k| k.versions.contains(&version) && served(&inner, k))
    else {
        // A group whose CRDs are not installed is unknown to the server.
        return status(404, "NotFound", NOT_FOUND);
    };
    if namespace.is_some() && !kind.namespaced || status_sub && !has_status_subresource(kind) {
        return status(404, "NotFound", NOT_FOUND);
    }
    let is_watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (&method, name) {
        (&Method::GET, Some(_)) => Some(Verb::Get),
        (&Method::GET, None) if is_watch => Some(Verb::Watch),
        (&Method::GET, None) => Some(Verb::List),
        (&Method::POST, None) => Some(Verb::Create),
        (&Method::PUT, Some(_)) => Some(Verb::Update),
        (&Method::PATCH, Some(_)) => Some(Verb::Patch),
        (&Method::DELETE, Some(_)) => Some(Verb::Delete),
        _ => None,
    };
    if let Some(verb) = verb {
        lock(&inner.requests).push(RequestRecord {
            verb,
            plural: kind.plural.to_string(),
            namespace: namespace.unwrap_or("").to_string(),
            name: name.unwrap_or("").to_string(),
            subresource: if status_sub {
                "status".into()
            } else {
                String::new()
            },
        });
        if let Some(rule) = take_fault(&inner, verb, Some(kind.plural)) {
            return fault_response(&rule, verb, Some(kind), namespace);
        }
    }
    if status_sub {
        let name = name.unwrap_or("");
        let ns = namespace.unwrap_or("");
        return match method {
            Method::GET => get_one(&inner, kind, version, ns, name),
            Method::PUT | Method::PATCH => {
                let patch = method == Method::PATCH;
                let ctype = req
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                if patch && !ctype.starts_with("application/merge-patch+json") {
                    return status(
                        415,
                        "UnsupportedMediaType",
                        &format!(
                            "the fake API server takes JSON merge patches only, not {ctype:?}"
                        ),
                    );
                }
                let body = match axum::body::to_bytes(req.into_body(), 16 << 20).await {
                    Ok(b) => b,
                    Err(e) => return status(400, "BadRequest", &e.to_string()),
                };
                let v: Value = match serde_json::from_slice(&body) {
                    Ok(v) => v,
                    Err(e) => return status(400, "BadRequest", &format!("invalid JSON: {e}")),
                };
                match write_status(&inner, kind, ns, name, &v, patch) {
                    Ok(obj) => json_response(200, &at_version(&obj, kind, version)),
                    Err(WriteError::Conflict(m)) => status(409, "Conflict", &m),
                    Err(WriteError::AlreadyExists(m)) => status(409, "AlreadyExists", &m),
                    Err(WriteError::NotFound(m)) => status(404, "NotFound", &m),
                    Err(WriteError::Invalid(m)) => status(422, "Invalid", &m),
                }
            }
            _ => status(
                405,
                "MethodNotAllowed",
                "method not supported on the status subresource",
            ),
        };
    }
    match (method, name) {
        (Method::GET, Some(name)) => get_one(&inner, kind, version, namespace.unwrap_or(""), name),
        (Method::GET, None) => {
            let labels =
                match Selector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))
                {
                    Ok(s) => s,
                    Err(e) => return status(400, "BadRequest", &e),
                };
            let fields =
                match Selector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or(""))
                {
                    Ok(s) => s,
                    Err(e) => return status(400, "BadRequest", &e),
                };
            if fields
                .0
                .iter()
                .any(|(k, _)| k != "metadata.name" && k != "metadata.namespace")
            {
                return status(400, "BadRequest", "field label not supported");
            }
            let filter = Filter {
                kind,
                namespace: namespace.map(str::to_string),
                labels,
                fields,
            };
            if is_watch {
                watch(inner, filter, version, &query)
            } else {
                list(&inner, &filter, version, &query)
            }
        }
        (Method::POST, None) => {
            let body = match axum::body::to_bytes(req.into_body(), 16 << 20).await {
                Ok(b) => b,
                Err(e) => return status(400, "BadRequest", &e.to_string()),
            };
            create(&inner, kind, version, namespace, &body)
        }
        (Method::PUT, Some(name)) => {
            let body = match axum::body::to_bytes(req.into_body(), 16 << 20).await {
                Ok(b) => b,
                Err(e) => return status(400, "BadRequest", &e.to_string()),
            };
            update(&inner, kind, version, namespace, name, &body)
        }
        (Method::DELETE, Some(name)) => {
            match delete_object(&inner, kind, namespace.unwrap_or(""), name) {
                Ok(_) => json_response(
                    200,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                ),
                Err(e) => status(404, "NotFound", &e),
            }
        }
        _ => status(
            405,
            "MethodNotAllowed",
            "method not supported by the fake API server",
        ),
    }
}

fn get_one(inner: &Inner, kind: &Kind, version: &str, namespace: &str, name: &str) -> Response {
    let s = lock(&inner.store);
    match s.objects.get(&(
        kind.group,
        kind.plural,
        namespace.to_string(),
        name.to_string(),
    )) {
        Some(o) => json_response(200, &at_version(o, kind, version)),
        None => status(
            404,
            "NotFound",
            &format!("{} \"{name}\" not found", kind.plural),
        ),
    }
}

fn create(
    inner: &Inner,
    kind: &'static Kind,
    version: &str,
    namespace: Option<&str>,
    body: &Bytes,
) -> Response {
    let mut v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return status(400, "BadRequest", &format!("invalid JSON: {e}")),
    };
    v["apiVersion"] = json!(api_version(kind.group, version));
    v["kind"] = json!(kind.kind);
    if let Some(ns) = namespace {
        v["metadata"]["namespace"] = json!(ns);
    }
    // The token controller: a service-account-token Secret gets a token at creation,
    // and that token is accepted from then on.
    if kind.plural == "secrets" && v["type"].as_str() == Some("kubernetes.io/service-account-token")
    {
        let token = format!("sa-token-{}-{}", inner.name, lock(&inner.store).rv);
        v["data"]["token"] = json!(base64(token.as_bytes()));
        if let Some(t) = &inner.tls {
            v["data"]["ca.crt"] = json!(base64(t.ca_pem.as_bytes()));
        }
        if inner.token_auth.load(Ordering::SeqCst) {
            lock(&inner.tokens).push(token);
        }
    }
    match write_object(inner, v, WriteMode::Create) {
        Ok((_, obj)) => json_response(201, &at_version(&obj, kind, version)),
        Err(WriteError::AlreadyExists(m)) => status(409, "AlreadyExists", &m),
        Err(WriteError::Conflict(m)) => status(409, "Conflict", &m),
        Err(WriteError::NotFound(m)) => {
            let mut body = status_body(404, "NotFound", &m);
            if let Some(ns) = m
                .strip_prefix("namespaces \"")
                .and_then(|r| r.strip_suffix("\" not found"))
            {
                body["details"] = json!({"name": ns, "kind": "namespaces"});
            }
            json_response(404, &body)
        }
        Err(WriteError::Invalid(m)) => status(422, "Invalid", &m),
    }
}

/// `PUT /.../NAME`: replace an existing object, as kube-apiserver's update.
fn update(
    inner: &Inner,
    kind: &'static Kind,
    version: &str,
    namespace: Option<&str>,
    name: &str,
    body: &Bytes,
) -> Response {
    let mut v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return status(400, "BadRequest", &format!("invalid JSON: {e}")),
    };
    if v["metadata"]["name"].as_str() != Some(name) {
        return status(
            400,
            "BadRequest",
            "the name of the object does not match the name on the URL",
        );
    }
    v["apiVersion"] = json!(api_version(kind.group, version));
    v["kind"] = json!(kind.kind);
    if let Some(ns) = namespace {
        v["metadata"]["namespace"] = json!(ns);
    }
    match write_object(inner, v, WriteMode::Update) {
        Ok((_, obj)) => json_response(200, &at_version(&obj, kind, version)),
        Err(WriteError::Conflict(m)) => status(409, "Conflict", &m),
        Err(WriteError::AlreadyExists(m)) => status(409, "AlreadyExists", &m),
        Err(WriteError::NotFound(m)) => status(404, "NotFound", &m),
        Err(WriteError::Invalid(m)) => status(422, "Invalid", &m),
    }
}

fn list(inner: &Inner, filter: &Filter, version: &str, q: &HashMap<String, String>) -> Response {
    inner.lists.fetch_add(1, Ordering::SeqCst);
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
    let s = lock(&inner.store);
    // Which resourceVersion to serve, and from where to start.
    let (rv, after): (u64, Option<(String, String)>) = match q
        .get("continue")
        .filter(|c| !c.is_empty())
    {
        Some(tok) => {
            let mut parts = tok.splitn(3, '|');
            let (Some(rv), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                return status(400, "BadRequest", "invalid continue token");
            };
            let Ok(rv) = rv.parse::<u64>() else {
                return status(400, "BadRequest", "invalid continue token");
            };
            if rv < s.oldest_rv {
                return status(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                );
            }
            (rv, Some((ns.to_string(), name.to_string())))
        }
        None => {
            let want = q.get("resourceVersion").map(String::as_str).unwrap_or("");
            let exact = q.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
            match want {
                "" | "0" if !exact => (s.rv, None),
                w => {
                    let Ok(w) = w.parse::<u64>() else {
                        return status(
                            400,
                            "BadRequest",
                            &format!("invalid resourceVersion {w:?}"),
                        );
                    };
                    if w > s.rv {
                        return status(
                            504,
                            "Timeout",
                            &format!("Too large resource version: {w}, current: {}", s.rv),
                        );
                    }
                    if exact {
                        if w < s.oldest_rv {
                            return status(
                                410,
                                "Expired",
                                &format!("too old resource version: {w} ({})", s.oldest_rv),
                            );
                        }
                        (w, None)
                    } else {
                        (s.rv, None)
                    }
                }
            }
        }
    };
    let snap = snapshot_at(&s, filter.kind, rv);
    drop(s);
    let mut items = Vec::new();
    let mut next = None;
    let start = match &after {
        Some(k) => std::ops::Bound::Excluded(k.clone()),
        None => std::ops::Bound::Unbounded,
    };
    let mut iter = snap
        .range((start, std::ops::Bound::Unbounded))
        .filter(|(_, o)| filter.matches(o));
    for (k, o) in iter.by_ref() {
        items.push(at_version(o, filter.kind, version));
        if limit > 0 && items.len() == limit {
            next = Some(k.clone());
            break;
        }
    }
    let mut meta = json!({ "resourceVersion": rv.to_string() });
    if let Some((ns, name)) = next {
        let remaining = iter.count();
        if remaining > 0 {
            meta["continue"] = json!(format!("{rv}|{ns}|{name}"));
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    json_response(
        200,
        &json!({
            "kind": format!("{}List", filter.kind.kind),
            "apiVersion": api_version(filter.kind.group, version),
            "metadata": meta,
            "items": items,
        }),
    )
}

fn event_line(ty: &str, obj: &Value) -> Bytes {
    let mut s = json!({ "type": ty, "object": obj }).to_string();
    s.push('\n');
    Bytes::from(s)
}

struct OpenWatch(Arc<Inner>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

fn watch(
    inner: Arc<Inner>,
    filter: Filter,
    version: &str,
    q: &HashMap<String, String>,
) -> Response {
    inner.watches.fetch_add(1, Ordering::SeqCst);
    let stream_response = |rx: mpsc::Receiver<Bytes>| {
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx).map_ok());
        let mut r = Response::new(body);
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    if *lock(&inner.fault) == Fault::CloseWatches {
        drop(tx);
        return stream_response(rx);
    }
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let initial_events = q.get("sendInitialEvents").map(String::as_str) == Some("true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let want_rv = q.get("resourceVersion").cloned().unwrap_or_default();
    let version = version.to_string();
    let kind = filter.kind;

    // Under the store lock: decide the starting point, collect what to replay, and
    // subscribe, so no event is missed or sent twice.
    // (is an object event, line)
    let mut initial: Vec<(bool, Bytes)> = Vec::new();
    let (sub, start_rv) = {
        let s = lock(&inner.store);
        let start_rv = match want_rv.as_str() {
            "" | "0" => {
                for o in snapshot_at(&s, kind, s.rv)
                    .values()
                    .filter(|o| filter.matches(o))
                {
                    initial.push((true, event_line("ADDED", &at_version(o, kind, &version))));
                }
                if initial_events {
                    let mut bm = json!({
                        "kind": kind.kind, "apiVersion": api_version(kind.group, &version),
                        "metadata": {"resourceVersion": s.rv.to_string(),
                                     "annotations": {"k8s.io/initial-events-end": "true"}}
                    });
                    if !bookmarks {
                        bm = Value::Null;
                    }
                    if !bm.is_null() {
                        initial.push((false, event_line("BOOKMARK", &bm)));
                    }
                }
                s.rv
            }
            w => {
                let Ok(w) = w.parse::<u64>() else {
                    return status(400, "BadRequest", &format!("invalid resourceVersion {w:?}"));
                };
                if w < s.oldest_rv {
                    let message = format!("too old resource version: {w} ({})", s.oldest_rv);
                    if *lock(&inner.expired_watch) == ExpiredWatch::HttpGone {
                        return status(410, "Expired", &message);
                    }
                    let st = status_body(410, "Expired", &message);
                    let _ = tx.try_send(event_line("ERROR", &st));
                    drop(tx);
                    return stream_response(rx);
                }
                for ev in s.history.iter().filter(|e| e.rv > w) {
                    if let Some((ty, obj)) = shape_event(&filter, ev) {
                        initial.push((true, event_line(ty, &at_version(obj, kind, &version))));
                    }
                }
                s.rv
            }
        };
        (inner.events.subscribe(), start_rv)
    };

    inner.open_watches.fetch_add(1, Ordering::SeqCst);
    let guard = OpenWatch(inner.clone());
    let interval = *lock(&inner.bookmark_interval);
    let close = *lock(&inner.watch_close);
    let (max_events, timeout) = match close {
        WatchClose::Never => (u64::MAX, timeout),
        WatchClose::AfterEvents(n) => (n, timeout),
        WatchClose::After(d) => (u64::MAX, timeout.min(d)),
    };
    tokio::spawn(async move {
        let _guard = guard;
        let mut sub = sub;
        let mut last_rv = start_rv;
        // Object events sent; at `max_events` the stream ends cleanly.
        let mut sent: u64 = 0;
        for (is_object, line) in initial {
            if sent >= max_events {
                return;
            }
            if tx.send(line).await.is_err() {
                return;
            }
            sent += u64::from(is_object);
        }
        if sent >= max_events {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if bookmarks => {
                    let bm = json!({
                        "kind": kind.kind, "apiVersion": api_version(kind.group, &version),
                        "metadata": {"resourceVersion": last_rv.to_string()}
                    });
                    if tx.send(event_line("BOOKMARK", &bm)).await.is_err() {
                        return;
                    }
                }
                ev = sub.recv() => match ev {
                    Ok(ev) => {
                        last_rv = ev.rv;
                        if ev.r#type == "COMPACTED" {
                            let st = status_body(410, "Expired", "too old resource version (history compacted)");
                            let _ = tx.send(event_line("ERROR", &st)).await;
                            return;
                        }
                        if ev.r#type == "UNSERVED" {
                            // The CRD was deleted: its watches end.
                            if ev.kind.group == kind.group && ev.kind.plural == kind.plural {
                                return;
                            }
                            continue;
                        }
                        if let Some((ty, obj)) = shape_event(&filter, &ev) {
                            if tx.send(event_line(ty, &at_version(obj, kind, &version))).await.is_err() {
                                return;
                            }
                            sent += 1;
                            if sent >= max_events {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let st = status_body(410, "Expired", "watch fell behind; too old resource version");
                        let _ = tx.send(event_line("ERROR", &st)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
    stream_response(rx)
}

/// The event a watch with `filter` sees for `ev`: selector changes turn a
/// MODIFIED into ADDED or DELETED, as the API server does.
fn shape_event<'a>(filter: &Filter, ev: &'a StoredEvent) -> Option<(&'static str, &'a Value)> {
    if ev.kind.group != filter.kind.group || ev.kind.plural != filter.kind.plural {
        return None;
    }
    let now = filter.matches(&ev.object);
    match ev.r#type {
        "MODIFIED" => {
            let before = ev.prev.as_deref().is_some_and(|p| filter.matches(p));
            match (before, now) {
                (true, true) => Some(("MODIFIED", &ev.object)),
                (false, true) => Some(("ADDED", &ev.object)),
                (true, false) => Some(("DELETED", &ev.object)),
                (false, false) => None,
            }
        }
        ty => now.then_some((ty, &*ev.object)),
    }
}

trait MapOk {
    type Out;
    fn map_ok(self) -> Self::Out;
}

impl MapOk for tokio_stream::wrappers::ReceiverStream<Bytes> {
    type Out = futures::stream::Map<Self, fn(Bytes) -> Result<Bytes, io::Error>>;
    fn map_ok(self) -> Self::Out {
        use futures::StreamExt;
        self.map(Ok as fn(Bytes) -> Result<Bytes, io::Error>)
    }
}

fn api_group_list(inner: &Inner) -> Value {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for k in KINDS
        .iter()
        .filter(|k| !k.group.is_empty() && served(inner, k))
    {
        match groups.iter_mut().find(|(g, _)| *g == k.group) {
            Some((_, vs)) => {
                for v in k.versions {
                    if !vs.contains(v) {
                        vs.push(v);
                    }
                }
            }
            None => groups.push((k.group, k.versions.to_vec())),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0].clone()})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn api_resource_list(inner: &Inner, group: &str, version: &str) -> Response {
    let resources: Vec<Value> = KINDS
        .iter()
        .filter(|k| k.group == group && k.versions.contains(&version) && served(inner, k))
        .map(|k| {
            json!({
                "name": k.plural, "singularName": k.kind.to_lowercase(), "namespaced": k.namespaced,
                "kind": k.kind, "verbs": ["get", "list", "watch", "create", "delete"]
            })
        })
        .collect();
    if resources.is_empty() {
        return status(404, "NotFound", NOT_FOUND);
    }
    json_response(
        200,
        &json!({
            "kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": api_version(group, version), "resources": resources
        }),
    )
}

// ---------------------------------------------------------------------------
// Connections that die when the server stops.

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

struct KillableListener {
    tcp: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    kill: watch::Receiver<bool>,
    inner: Arc<Inner>,
}

impl axum::serve::Listener for KillableListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        loop {
            let (tcp, peer): (TcpStream, SocketAddr) = match self.tcp.accept().await {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> = match &self.tls {
                None => Box::new(tcp),
                Some(acc) => {
                    match tokio::time::timeout(Duration::from_secs(5), acc.accept(tcp)).await {
                        Ok(Ok(s)) => {
                            let user = s
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|c| lock(&self.inner.issued).get(c.as_ref()).cloned());
                            if let Some(user) = user {
                                lock(&self.inner.cert_logins).push(user);
                            }
                            Box::new(s)
                        }
                        // A client that rejects our certificate, presents none or one
                        // from another CA, or speaks plain HTTP.
                        Ok(Err(e)) => {
                            lock(&self.inner.tls_rejections).push(e.to_string());
                            continue;
                        }
                        Err(_) => {
                            lock(&self.inner.tls_rejections).push("handshake timed out".into());
                            continue;
                        }
                    }
                }
            };
            let mut rx = self.kill.clone();
            let kill = Box::pin(async move {
                let _ = rx.wait_for(|k| *k).await;
            });
            return (
                Conn {
                    io,
                    kill,
                    killed: false,
                },
                peer,
            );
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// A connection that fails every read and write once its server is stopped, so a
/// stopped server leaves no keep-alive connection or watch stream behind.
struct Conn {
    io: Box<dyn Io>,
    /// Resolves once the server is stopped. Polled only until it has resolved: an
    /// `async` block must not be polled again after completion.
    kill: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// `kill` has resolved.
    killed: bool,
}

impl Conn {
    /// The server was stopped (registers `cx` for the stop while it was not).
    fn is_killed(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.killed && self.kill.as_mut().poll(cx).is_ready() {
            self.killed = true;
        }
        self.killed
    }
}

fn killed() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "fake API server stopped")
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_killed(cx) {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_killed(cx) {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_killed(cx) {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------
// Service-account tokens: issuer, signer and TokenReview

/// kube-apiserver's default `--service-account-issuer` on most installers.
pub const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// What [`FakeApiServer::mint_token`] makes: a projected service-account token
/// (kubelet's `serviceAccountToken` volume source).
#[derive(Debug, Clone)]
pub struct SaToken {
    pub namespace: String,
    pub service_account: String,
    /// Bound to this Pod (by name; its uid is read from the store).
    pub pod: Option<String>,
    pub audiences: Vec<String>,
    /// Seconds from now to `iat`/`nbf` (negative: issued in the past).
    pub issued_in: i64,
    /// Seconds from now to `exp` (negative: already expired); `None` makes a
    /// token without expiry, as the legacy Secret-based tokens are.
    pub expires_in: Option<i64>,
}

impl SaToken {
    /// A one-hour token of `ns/sa` for audience `istio-ca`, not bound to a pod.
    pub fn new(ns: &str, sa: &str) -> SaToken {
        SaToken {
            namespace: ns.into(),
            service_account: sa.into(),
            pod: None,
            audiences: vec!["istio-ca".into()],
            issued_in: 0,
            expires_in: Some(3600),
        }
    }

    pub fn pod(mut self, name: &str) -> SaToken {
        self.pod = Some(name.into());
        self
    }

    pub fn audiences(mut self, auds: &[&str]) -> SaToken {
        self.audiences = auds.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Issued `ago` seconds ago, valid for `ttl` seconds.
    pub fn issued(mut self, ago: i64, ttl: i64) -> SaToken {
        self.issued_in = -ago;
        self.expires_in = Some(ttl - ago);
        self
    }

    /// Not valid before `secs` from now.
    pub fn not_before(mut self, secs: i64) -> SaToken {
        self.issued_in = secs;
        self
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn ring_random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system randomness");
    u64::from_be_bytes(b)
}

fn b64url(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

/// The signing key of a fake cluster's service-account tokens (ES256, P-256),
/// made when the server starts; its `kid` is derived from the public key as
/// kube-apiserver derives it (a hash of the key).
struct SaIssuer {
    key: ring::signature::EcdsaKeyPair,
    kid: String,
}

impl SaIssuer {
    fn generate() -> SaIssuer {
        let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("P-256 key");
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
            .expect("P-256 key");
        use ring::signature::KeyPair as _;
        let kid =
            b64url(ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref()).as_ref());
        SaIssuer { key, kid }
    }

    fn point(&self) -> &[u8] {
        use ring::signature::KeyPair as _;
        self.key.public_key().as_ref()
    }

    fn jwks(&self) -> Value {
        let p = self.point();
        json!({"keys": [{
            "use": "sig", "kty": "EC", "kid": self.kid, "crv": "P-256", "alg": "ES256",
            "x": b64url(&p[1..33]), "y": b64url(&p[33..65]),
        }]})
    }

    fn discovery(&self, base: &str) -> Value {
        json!({
            "issuer": SA_ISSUER,
            "jwks_uri": format!("{base}/openid/v1/jwks"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
            .expect("sign");
        format!("{input}.{}", b64url(sig.as_ref()))
    }

    /// The token's claims when its signature is this issuer's; `Err` as
    /// kube-apiserver's authenticator words it.
    fn verify(&self, token: &str) -> Result<Value, String> {
        let invalid = || "invalid bearer token".to_string();
        let parts: Vec<&str> = token.split('.').collect();
        let [h, p, sig] = parts.as_slice() else {
            return Err(invalid());
        };
        let header: Value = b64url_decode(h)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(invalid)?;
        if header["alg"] != "ES256" || header["kid"].as_str() != Some(self.kid.as_str()) {
            return Err(invalid());
        }
        let sig = b64url_decode(sig).ok_or_else(invalid)?;
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            self.point(),
        )
        .verify(&token.as_bytes()[..h.len() + 1 + p.len()], &sig)
        .map_err(|_| invalid())?;
        b64url_decode(p)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(invalid)
    }
}

/// The discovery document's base URL as the client addressed the server.
fn inner_url_hint(req: &Request) -> String {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("https://{host}")
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`, as kube-apiserver's
/// service-account authenticator answers it: the token must be signed by this
/// server, carry its issuer, be inside `nbf`..`exp` (one minute of leeway),
/// share an audience with `spec.audiences` (the API server's own audience, the
/// issuer, when the list is empty), and the ServiceAccount and bound Pod it
/// names must still exist with the same uids. Refusals answer 201 with
/// `authenticated: false` and the reason in `status.error`.
fn token_review(inner: &Inner, body: &Bytes) -> Response {
    let review: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return status(400, "BadRequest", &format!("invalid JSON: {e}")),
    };
    if review["kind"] != "TokenReview" {
        return status(400, "BadRequest", "the body is not a TokenReview");
    }
    let token = review["spec"]["token"].as_str().unwrap_or("");
    let wanted: Vec<String> = match review["spec"]["audiences"].as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => vec![SA_ISSUER.to_string()],
    };
    let outcome = review_token(inner, token, &wanted);
    let mut answer = json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": review["spec"],
    });
    let subject = match outcome {
        Ok((claims, audiences)) => {
            let k = &claims["kubernetes.io"];
            let ns = k["namespace"].as_str().unwrap_or("");
            let sa = k["serviceaccount"]["name"].as_str().unwrap_or("");
            let mut extra = json!({
                "authentication.kubernetes.io/credential-id": [format!("JTI={}", claims["jti"].as_str().unwrap_or(""))],
            });
            if let Some(pod) = k.get("pod") {
                extra["authentication.kubernetes.io/pod-name"] = json!([pod["name"]]);
                extra["authentication.kubernetes.io/pod-uid"] = json!([pod["uid"]]);
            }
            answer["status"] = json!({
                "authenticated": true,
                "user": {
                    "username": format!("system:serviceaccount:{ns}:{sa}"),
                    "uid": k["serviceaccount"]["uid"],
                    "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
                    "extra": extra,
                },
                "audiences": audiences,
            });
            (format!("system:serviceaccount:{ns}:{sa}"), true)
        }
        Err((subject, why)) => {
            // A token this server did not sign is just an invalid bearer token; a
            // token it signed but refuses says why.
            let error = if why == "invalid bearer token" {
                why
            } else {
                format!("[invalid bearer token, {why}]")
            };
            answer["status"] = json!({"user": {}, "error": error});
            (subject, false)
        }
    };
    lock(&inner.token_reviews).push(subject);
    json_response(201, &answer)
}

/// `Ok((claims, matched audiences))` or `Err((subject or "?", reason))`.
fn review_token(
    inner: &Inner,
    token: &str,
    wanted: &[String],
) -> Result<(Value, Vec<String>), (String, String)> {
    let claims = inner
        .sa_issuer
        .verify(token)
        .map_err(|e| ("?".to_string(), e))?;
    let subject = claims["sub"].as_str().unwrap_or("?").to_string();
    let fail = |why: &str| Err((subject.clone(), why.to_string()));
    if claims["iss"] != SA_ISSUER {
        return fail("token issuer is not trusted");
    }
    let now = unix_now();
    match claims["exp"].as_i64() {
        Some(exp) if now >= exp + 60 => return fail("service account token has expired"),
        Some(_) => {}
        // Legacy Secret-based tokens have no exp, and kube-apiserver accepts
        // them (unless their Secret is gone): refusing them is the client's call.
        None => {}
    }
    if claims["nbf"].as_i64().is_some_and(|nbf| now + 60 < nbf) {
        return fail("service account token is not valid yet");
    }
    let auds: Vec<String> = match &claims["aud"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let unaware = inner.review_ignores_audiences.load(Ordering::SeqCst);
    let matched: Vec<String> = wanted
        .iter()
        .filter(|w| !unaware && auds.contains(w))
        .cloned()
        .collect();
    if matched.is_empty() && !unaware {
        return Err((
            subject,
            format!("token audiences {auds:?} is invalid for the target audiences {wanted:?}"),
        ));
    }
    let k = &claims["kubernetes.io"];
    let ns = k["namespace"].as_str().unwrap_or("");
    let store = lock(&inner.store);
    let uid_of = |plural: &'static str, name: &str| {
        store
            .objects
            .get(&("", plural, ns.to_string(), name.to_string()))
            .map(|o| o["metadata"]["uid"].clone())
    };
    let sa = &k["serviceaccount"];
    if uid_of("serviceaccounts", sa["name"].as_str().unwrap_or("")) != Some(sa["uid"].clone()) {
        return fail("service account token has been invalidated");
    }
    if let Some(pod) = k.get("pod") {
        if uid_of("pods", pod["name"].as_str().unwrap_or("")) != Some(pod["uid"].clone()) {
            return fail("service account token has been invalidated");
        }
    }
    drop(store);
    Ok((claims, matched))
}

/// Standard base64 with padding (kubeconfig `*-data` fields, Secret data).
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Object builders for tests (JSON shaped like `kubectl get -o json`).

pub mod objects {
    use serde_json::{json, Value};

    /// Node `n1` (region `r`, zone `z`), Service `ns1/web` (80 -> 8080) and its
    /// one ready Pod `web-0` at `ip` on `n1`: the smallest serving cluster.
    pub fn seed_web(s: &super::FakeApiServer, ip: &str) {
        s.apply(&node("n1", "r", "z"));
        s.apply(&service(
            "ns1",
            "web",
            &[("app", "web")],
            &[("http", 80, 8080)],
        ));
        s.apply(&pod("ns1", "web-0", ip, "n1", &[("app", "web")], true));
    }

    /// A Namespace (what `kubectl create namespace NAME` posts).
    pub fn namespace(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    }

    pub fn labels(pairs: &[(&str, &str)]) -> Value {
        Value::Object(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect(),
        )
    }

    /// A Service with a selector and one port per `(name, port, targetPort)`.
    pub fn service(
        ns: &str,
        name: &str,
        selector: &[(&str, &str)],
        ports: &[(&str, u16, u16)],
    ) -> Value {
        let ports: Vec<Value> = ports
            .iter()
            .map(|(n, p, t)| json!({"name": n, "port": p, "targetPort": t, "protocol": "TCP"}))
            .collect();
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": labels(selector), "ports": ports, "type": "ClusterIP"}
        })
    }

    /// A Pod on `node`; Running and Ready when `ready`.
    pub fn pod(
        ns: &str,
        name: &str,
        ip: &str,
        node: &str,
        pod_labels: &[(&str, &str)],
        ready: bool,
    ) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels(pod_labels)},
            "spec": {"nodeName": node, "serviceAccountName": "default",
                     "containers": [{"name": "app", "image": "app:1"}]},
            "status": {
                "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
            }
        })
    }

    /// A ServiceAccount.
    pub fn service_account(ns: &str, name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": name, "namespace": ns}})
    }

    /// A Node with topology labels.
    pub fn node(name: &str, region: &str, zone: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                "topology.kubernetes.io/region": region,
                "topology.kubernetes.io/zone": zone
            }}
        })
    }

    /// A remote-secret: each `(cluster, kubeconfig)` is one data key.
    pub fn remote_secret(
        ns: &str,
        name: &str,
        label: (&str, &str),
        clusters: &[(&str, &str)],
    ) -> Value {
        let data: serde_json::Map<String, Value> = clusters
            .iter()
            .map(|(c, k)| (c.to_string(), json!(super::base64(k.as_bytes()))))
            .collect();
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": ns, "labels": labels(&[label])},
            "type": "Opaque",
            "data": data
        })
    }
}
