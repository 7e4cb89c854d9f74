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
//!   event history; a resourceVersion older than the history gets an `ERROR` event
//!   carrying a `Status` with code 410 (`Expired`), as does a watcher that falls
//!   behind; `allowWatchBookmarks=true` gets periodic bookmarks; `timeoutSeconds`
//!   closes the stream server-side; `sendInitialEvents=true` (streaming lists) ends
//!   the synthetic ADDED events with the `k8s.io/initial-events-end` bookmark;
//! - discovery (`/version`, `/api`, `/apis`, `/api/v1`, `/apis/G/V`);
//! - optional TLS (a generated CA and server certificate) and bearer-token auth;
//! - the token controller's part for `kubernetes.io/service-account-token` Secrets.
//!
//! Tests drive it through [`FakeApiServer`]: create/update/delete objects, compact
//! the history (forcing 410), inject faults (garbage bodies, watches that close at
//! once, error statuses), stop and restart on the same port (an unreachable
//! cluster), rotate the token, and write a real kubeconfig pointing at it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
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
];

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
    tokens: Mutex<Vec<String>>,
    fault: Mutex<Fault>,
    bookmark_interval: Mutex<Duration>,
    lists: AtomicU64,
    watches: AtomicU64,
    open_watches: AtomicU64,
    tls: Option<TlsMaterial>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The CA and server key pair of a TLS fake server.
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl TlsMaterial {
    fn generate() -> TlsMaterial {
        let (ca_params, ca_key, ca_pem) = generate_ca("crossmesh-test-ca");
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
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
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key_der)
            .expect("server cert");
        TlsMaterial {
            ca_pem,
            server: Arc::new(server),
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
    /// When set, every request needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    pub bookmark_interval: Duration,
    pub history_limit: usize,
    /// Fixed port; 0 picks a free one.
    pub port: u16,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            name: "cluster".into(),
            tls: false,
            token: None,
            bookmark_interval: Duration::from_secs(1),
            history_limit: 10_000,
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
            tokens: Mutex::new(opts.token.into_iter().collect()),
            fault: Mutex::new(Fault::None),
            bookmark_interval: Mutex::new(opts.bookmark_interval),
            lists: AtomicU64::new(0),
            watches: AtomicU64::new(0),
            open_watches: AtomicU64::new(0),
            tls: opts.tls.then(TlsMaterial::generate),
        });
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

    pub fn is_running(&self) -> bool {
        lock(&self.running).is_some()
    }

    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.inner.fault) = fault;
    }

    /// Replace the accepted bearer tokens (an empty list turns auth off): a rotated
    /// or expired token is one no longer in this list.
    pub fn set_tokens(&self, tokens: &[&str]) {
        *lock(&self.inner.tokens) = tokens.iter().map(|t| t.to_string()).collect();
    }

    /// Stop accepting one token (revoked or expired); others stay valid.
    pub fn revoke_token(&self, token: &str) {
        lock(&self.inner.tokens).retain(|t| t != token);
    }

    pub fn set_bookmark_interval(&self, d: Duration) {
        *lock(&self.inner.bookmark_interval) = d;
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
    /// `kind`). Returns the new resourceVersion.
    pub fn apply<T: serde::Serialize>(&self, obj: &T) -> u64 {
        let v = serde_json::to_value(obj).expect("serialize object");
        self.write(v, WriteMode::Upsert).expect("apply object")
    }

    /// Create an object; fails if it exists.
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
        write_object(&self.inner, v, mode).map(|(rv, _)| rv)
    }

    /// A kubeconfig (YAML) for this server: context and cluster named after the
    /// server; `token` overrides the server's first accepted token, `ca_pem` its CA.
    pub fn kubeconfig_yaml(&self, token: Option<&str>, ca_pem: Option<&str>) -> String {
        let name = &self.inner.name;
        let token = token
            .map(str::to_string)
            .or_else(|| lock(&self.inner.tokens).first().cloned());
        let ca = ca_pem.or(self.ca_pem());
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
        match token {
            Some(t) => s.push_str(&format!("    token: {t}\n")),
            None => s.push_str("    {}\n"),
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
        let tmp = path.with_extension("tmp-write");
        std::fs::write(&tmp, self.kubeconfig_yaml(token, ca_pem)).expect("write kubeconfig");
        std::fs::rename(&tmp, path).expect("rename kubeconfig");
    }
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
    Create,
    Upsert,
}

/// Store `v`, stamping metadata, record the event and notify watches.
fn write_object(inner: &Inner, mut v: Value, mode: WriteMode) -> Result<(u64, Arc<Value>), String> {
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
    let kind = kind_by_api(&api, &kname).ok_or_else(|| format!("unknown kind {api}/{kname}"))?;
    let meta = v
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or("object has no metadata")?;
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.is_empty() {
        return Err("metadata.name is required".into());
    }
    let namespace = if kind.namespaced {
        let ns = meta
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        meta.insert("namespace".into(), json!(ns));
        ns
    } else {
        meta.remove("namespace");
        String::new()
    };
    let key: Key = (kind.group, kind.plural, namespace.clone(), name);
    let mut s = lock(&inner.store);
    let prev = s.objects.get(&key).cloned();
    if prev.is_some() && mode == WriteMode::Create {
        return Err("AlreadyExists".into());
    }
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
    meta.insert("resourceVersion".into(), json!(rv.to_string()));
    meta.insert("uid".into(), json!(uid));
    meta.entry("creationTimestamp")
        .or_insert(json!("2024-01-01T00:00:00Z"));
    let obj = Arc::new(v);
    s.objects.insert(key, obj.clone());
    let ty = if prev.is_some() { "MODIFIED" } else { "ADDED" };
    record(inner, &mut s, kind, namespace, ty, obj.clone(), prev);
    Ok((rv, obj))
}

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
    let prev = s
        .objects
        .remove(&key)
        .ok_or_else(|| format!("{} {namespace}/{name} not found", kind.plural))?;
    s.rv += 1;
    let rv = s.rv;
    let mut gone = (*prev).clone();
    gone["metadata"]["resourceVersion"] = json!(rv.to_string());
    record(
        inner,
        &mut s,
        kind,
        namespace.to_string(),
        "DELETED",
        Arc::new(gone),
        Some(prev),
    );
    Ok(rv)
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

async fn handle(AxState(inner): AxState<Arc<Inner>>, req: Request) -> Response {
    let tokens = lock(&inner.tokens).clone();
    if !tokens.is_empty() {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .is_some_and(|t| tokens.iter().any(|x| x == t));
        if !ok {
            return status(401, "Unauthorized", "Unauthorized");
        }
    }
    let fault = lock(&inner.fault).clone();
    match fault {
        Fault::Garbage => {
            return Response::new(Body::from(
                "<html><body>502 Bad Gateway from a proxy</body></html>",
            ));
        }
        Fault::Status(code) => {
            return status(code, "InternalError", &format!("injected HTTP {code}"));
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
        ["apis"] => return json_response(200, &api_group_list()),
        ["api", v, rest @ ..] => ("", *v, rest.to_vec()),
        ["apis", g, v, rest @ ..] => (*g, *v, rest.to_vec()),
        _ => {
            return status(
                404,
                "NotFound",
                &format!("the server could not find the requested resource {path}"),
            )
        }
    };
    if rest.is_empty() {
        return api_resource_list(group, version);
    }
    let (namespace, plural, name) = match rest.as_slice() {
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        _ => {
            return status(
                404,
                "NotFound",
                &format!("the server could not find the requested resource {path}"),
            )
        }
    };
    let Some(kind) = kind_by_plural(group, plural).filter(|k| k.versions.contains(&version)) else {
        return status(
            404,
            "NotFound",
            &format!("the server could not find the requested resource {path}"),
        );
    };
    if namespace.is_some() && !kind.namespaced {
        return status(
            404,
            "NotFound",
            &format!("{} is cluster-scoped", kind.plural),
        );
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
            let is_watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
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
        let mut tokens = lock(&inner.tokens);
        if !tokens.is_empty() {
            tokens.push(token);
        }
    }
    match write_object(inner, v, WriteMode::Create) {
        Ok((_, obj)) => json_response(201, &at_version(&obj, kind, version)),
        Err(e) if e == "AlreadyExists" => status(
            409,
            "AlreadyExists",
            &format!("{} already exists", kind.plural),
        ),
        Err(e) => status(422, "Invalid", &e),
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
    let mut initial: Vec<Bytes> = Vec::new();
    let (sub, start_rv) = {
        let s = lock(&inner.store);
        let start_rv = match want_rv.as_str() {
            "" | "0" => {
                for o in snapshot_at(&s, kind, s.rv)
                    .values()
                    .filter(|o| filter.matches(o))
                {
                    initial.push(event_line("ADDED", &at_version(o, kind, &version)));
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
                        initial.push(event_line("BOOKMARK", &bm));
                    }
                }
                s.rv
            }
            w => {
                let Ok(w) = w.parse::<u64>() else {
                    return status(400, "BadRequest", &format!("invalid resourceVersion {w:?}"));
                };
                if w < s.oldest_rv {
                    let st = status_body(
                        410,
                        "Expired",
                        &format!("too old resource version: {w} ({})", s.oldest_rv),
                    );
                    let _ = tx.try_send(event_line("ERROR", &st));
                    drop(tx);
                    return stream_response(rx);
                }
                for ev in s.history.iter().filter(|e| e.rv > w) {
                    if let Some((ty, obj)) = shape_event(&filter, ev) {
                        initial.push(event_line(ty, &at_version(obj, kind, &version)));
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
    tokio::spawn(async move {
        let _guard = guard;
        let mut sub = sub;
        let mut last_rv = start_rv;
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
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
                        if let Some((ty, obj)) = shape_event(&filter, &ev) {
                            if tx.send(event_line(ty, &at_version(obj, kind, &version))).await.is_err() {
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

fn api_group_list() -> Value {
    let mut groups: Vec<(&str, &[&str])> = Vec::new();
    for k in KINDS.iter().filter(|k| !k.group.is_empty()) {
        if !groups.iter().any(|(g, _)| *g == k.group) {
            groups.push((k.group, k.versions));
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

fn api_resource_list(group: &str, version: &str) -> Response {
    let resources: Vec<Value> = KINDS
        .iter()
        .filter(|k| k.group == group && k.versions.contains(&version))
        .map(|k| {
            json!({
                "name": k.plural, "singularName": k.kind.to_lowercase(), "namespaced": k.namespaced,
                "kind": k.kind, "verbs": ["get", "list", "watch", "create", "delete"]
            })
        })
        .collect();
    if resources.is_empty() {
        return status(404, "NotFound", "no such group version");
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
                        Ok(Ok(s)) => Box::new(s),
                        // A client that rejects our certificate, or speaks plain HTTP.
                        _ => continue,
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
