//! The fan-out load harness (issue 6): N simulated Envoys over real gRPC ADS
//! against `crossmesh serve` (a child process fed by manifest files), against the
//! physical floor (a trivial ADS server serving the same pre-encoded bytes, also a
//! child process), or against any ADS server (`--address`).
//!
//! Run: `cargo bench --bench fanout -- [--proxies N] [--services S] [--clusters C]
//! [--pods P] [--rate R] [--duration T] [--sotw] [--gateway] [--conns K]
//! [--changes M] [--floor] [--secure] [--address HOST:PORT]` (see `usage()`).
//!
//! With `--secure` the proxies connect to the authenticated TLS xDS port (Delta
//! only): each presents its own pod-bound service-account token (signed by a
//! `tokenIssuer` key made for the run), subscribes to Istio's SDS secrets
//! `default` and `ROOTCA`, and counts as complete only once it holds a workload
//! certificate whose URI SAN is the identity its token proves; the pods carry
//! `security.istio.io/tlsMode: istio`, so clusters use auto mTLS.
//!
//! Flow (mesh mode):
//! 1. write S services x C clusters x P pods as manifest files, spawn
//!    `crossmesh serve` on free ports and wait for `/ready`;
//! 2. connect N proxies sharing K HTTP/2 connections; each behaves like Envoy:
//!    wildcard CDS and LDS, then EDS for the EDS clusters it got and RDS for the
//!    route names its listeners reference, ACKing every response with its nonce;
//!    "time to first full config" is reached when every proxy holds every resource
//!    it subscribed to;
//! 3. M single pod changes, one at a time (each rewrites one pod file with a new,
//!    never reused IP); a change has converged on a proxy when the proxy ACKs an
//!    EDS assignment holding that IP (or a later IP of the same pod);
//! 4. churn: R pod changes per second for T seconds, then wait until every proxy
//!    has every change;
//! 5. every proxy's final state (per type, name -> content hash) is compared with
//!    what an in-process `Registry` + `Pusher`, loaded from the same final
//!    manifest files, says that proxy should see. Any difference fails the run.
//!
//! With `--floor` the same proxies then connect to the floor server, which serves
//! the bytes proxy 0 received from crossmesh from a `xds::FixedSource`; the same
//! pod changes are applied by the harness editing the pre-encoded assignment and
//! handing it to the floor server, and the ratios crossmesh/floor are printed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{address, Node};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, HttpConnectionManager,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{value::Kind, Any, Struct, Value as PbValue};
use prost::Message;
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;

use crossmesh::xds::{ProxySnapshot, Resource, SnapshotSource, TypeUrl};

#[path = "../tests/support/token_issuer.rs"]
#[allow(dead_code)]
mod token_issuer;
use token_issuer::TokenIssuer;

/// The issuer of the service-account tokens `--secure` proxies present.
const TOKEN_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

const CDS: usize = 0;
const EDS: usize = 1;
const LDS: usize = 2;
const RDS: usize = 3;
const NS: &str = "bench";
const DOMAIN: &str = "cluster.local";
/// Longest wait for any phase before the run fails.
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);

type Err = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, Err>;

fn fail<T>(msg: impl Into<String>) -> Res<T> {
    Err(msg.into().into())
}

// ---------------------------------------------------------------- arguments

#[derive(Debug, Clone)]
struct Args {
    proxies: usize,
    services: usize,
    clusters: usize,
    pods: usize,
    rate: f64,
    duration: f64,
    changes: usize,
    delta: bool,
    gateway: bool,
    conns: usize,
    floor: bool,
    address: Option<SocketAddr>,
    /// Seconds of idle measured after convergence.
    idle: f64,
    /// The authenticated TLS port, tokens and SDS certificates.
    secure: bool,
    /// Restart crossmesh once everything converged; proxies reconnect with
    /// what they hold (Delta `initial_resource_versions`, SotW `version_info`).
    restart: bool,
}

fn usage() -> &'static str {
    "cargo bench --bench fanout -- [options]
  --proxies N      simulated proxies (default 50)
  --services S     services (default 100)
  --clusters C     member clusters, one manifest dir each (default 3)
  --pods P         pods per service per cluster (default 3)
  --changes M      single pod changes measured one at a time (default 5)
  --rate R         churn: pod changes per second (default 20)
  --duration T     churn: seconds (default 5; 0 = no churn)
  --sotw           state-of-the-world ADS (default Delta)
  --gateway        router~ (gateway) node ids (default sidecar~)
  --conns K        HTTP/2 connections shared by the streams (default ceil(N/100))
  --floor          also run the same work against the floor server, print ratios
  --idle SECS      idle CPU measurement after convergence (default 2)
  --secure         TLS xDS port, a service-account token per proxy, SDS
                   certificates (Delta only)
  --address A      measure another ADS server at A (no mesh driving, no checks
                   against a registry)
  --restart        then restart crossmesh on the same ports: every proxy
                   reconnects with what it holds; bytes sent after the restart
                   against the bytes of the first full config"
}

fn parse_args() -> Res<Args> {
    let mut a = Args {
        proxies: 50,
        services: 100,
        clusters: 3,
        pods: 3,
        rate: 20.0,
        duration: 5.0,
        changes: 5,
        delta: true,
        gateway: false,
        conns: 0,
        floor: false,
        address: None,
        idle: 2.0,
        secure: false,
        restart: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| -> Res<String> {
            it.next()
                .ok_or_else(|| format!("{name} needs a value\n{}", usage()).into())
        };
        match arg.as_str() {
            "--proxies" => a.proxies = val("--proxies")?.parse()?,
            "--services" => a.services = val("--services")?.parse()?,
            "--clusters" => a.clusters = val("--clusters")?.parse()?,
            "--pods" => a.pods = val("--pods")?.parse()?,
            "--changes" => a.changes = val("--changes")?.parse()?,
            "--rate" => a.rate = val("--rate")?.parse()?,
            "--duration" => a.duration = val("--duration")?.parse()?,
            "--idle" => a.idle = val("--idle")?.parse()?,
            "--conns" => a.conns = val("--conns")?.parse()?,
            "--address" => a.address = Some(val("--address")?.parse()?),
            "--sotw" => a.delta = false,
            "--delta" => a.delta = true,
            "--gateway" => a.gateway = true,
            "--floor" => a.floor = true,
            "--secure" => a.secure = true,
            "--restart" => a.restart = true,
            // cargo bench passes --bench to every bench target.
            "--bench" => {}
            "-h" | "--help" => return fail(usage()),
            other => return fail(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    if a.restart && (a.secure || a.floor || a.address.is_some()) {
        return fail("--restart runs alone (not with --secure, --floor or --address)");
    }
    if a.proxies == 0 || a.services == 0 || a.clusters == 0 || a.pods == 0 {
        return fail("--proxies, --services, --clusters and --pods must be at least 1");
    }
    if a.secure && (!a.delta || a.floor || a.address.is_some()) {
        return fail(
            "--secure runs Delta against crossmesh only (no --sotw, --floor or --address)",
        );
    }
    if a.conns == 0 {
        a.conns = a.proxies.div_ceil(100);
    }
    Ok(a)
}

// ---------------------------------------------------------------- helpers

fn hash(b: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

fn free_addr() -> Res<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

fn host(s: usize) -> String {
    format!("svc-{s}.{NS}.svc.{DOMAIN}")
}

/// Namespace, service account and pod name of simulated proxy `i`.
fn workload(i: usize, gateway: bool) -> (&'static str, &'static str, String) {
    if gateway {
        ("istio-system", "gw", format!("gw-{i}"))
    } else {
        (NS, "load", format!("load-{i}"))
    }
}

/// Istio node id and metadata of simulated proxy `i`.
fn node(i: usize, gateway: bool) -> Node {
    let ip = Ipv4Addr::from(0x7f00_0000u32 + 0x0001_0000 + i as u32);
    let (ns, sa, pod) = workload(i, gateway);
    let id = if gateway {
        format!("router~{ip}~{pod}.{ns}~{ns}.svc.{DOMAIN}")
    } else {
        format!("sidecar~{ip}~{pod}.{ns}~{ns}.svc.{DOMAIN}")
    };
    let s = |v: &str| PbValue {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let mut fields = HashMap::new();
    fields.insert("NAMESPACE".to_string(), s(ns));
    fields.insert("CLUSTER_ID".to_string(), s("c0"));
    fields.insert("SERVICE_ACCOUNT".to_string(), s(sa));
    Node {
        id,
        cluster: "load".into(),
        metadata: Some(Struct { fields }),
        ..Default::default()
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// CPU seconds (user + system) and peak / current RSS (MiB) of a process.
fn proc_stats(pid: u32) -> Option<(f64, f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime), counted from `state` (field 3).
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    Some((ticks / 100.0, kb("VmHWM:") / 1024.0, kb("VmRSS:") / 1024.0))
}

/// One HTTP/1.0 GET on the debug address: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|x| x.1.to_string())?;
    Some((code, body))
}

/// Sum of every sample of a Prometheus metric family line starting with `name`
/// (exact name, any labels).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------- decoding (shared caches)

/// Decoded facts about resource contents, by content hash, shared by all proxies
/// so each distinct resource is decoded once.
#[derive(Default)]
struct Decoded {
    eds_names: DashMap<u64, Arc<Vec<Arc<str>>>>,
    rds_names: DashMap<u64, Arc<Vec<Arc<str>>>>,
    ips: DashMap<u64, Arc<HashSet<IpAddr>>>,
    names: DashMap<Arc<str>, ()>,
    /// SotW: the name inside each distinct resource content.
    sotw_names: DashMap<u64, Arc<str>>,
}

impl Decoded {
    fn intern(&self, s: &str) -> Arc<str> {
        if let Some(e) = self.names.get(s) {
            return e.key().clone();
        }
        let a: Arc<str> = s.into();
        self.names.insert(a.clone(), ());
        a
    }

    /// The EDS names a cluster needs (Envoy: `eds_cluster_config.service_name`, or
    /// the cluster name).
    fn eds_of(&self, h: u64, value: &[u8]) -> Res<Arc<Vec<Arc<str>>>> {
        if let Some(v) = self.eds_names.get(&h) {
            return Ok(v.clone());
        }
        let c = Cluster::decode(value)?;
        let mut out = Vec::new();
        if c.cluster_discovery_type
            == Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            ))
        {
            let sn = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(c.name.as_str());
            out.push(self.intern(sn));
        }
        let v = Arc::new(out);
        self.eds_names.insert(h, v.clone());
        Ok(v)
    }

    /// The RDS route names a listener's HTTP connection managers reference.
    fn rds_of(&self, h: u64, value: &[u8]) -> Res<Arc<Vec<Arc<str>>>> {
        if let Some(v) = self.rds_names.get(&h) {
            return Ok(v.clone());
        }
        let l = Listener::decode(value)?;
        let mut out = Vec::new();
        for fc in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
            for f in &fc.filters {
                if let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type {
                    if any.type_url.ends_with("HttpConnectionManager") {
                        let hcm = HttpConnectionManager::decode(any.value.as_slice())?;
                        if let Some(http_connection_manager::RouteSpecifier::Rds(r)) =
                            hcm.route_specifier
                        {
                            out.push(self.intern(&r.route_config_name));
                        }
                    }
                }
            }
        }
        let v = Arc::new(out);
        self.rds_names.insert(h, v.clone());
        Ok(v)
    }

    fn ips_of(&self, h: u64, value: &[u8]) -> Res<Arc<HashSet<IpAddr>>> {
        if let Some(v) = self.ips.get(&h) {
            return Ok(v.clone());
        }
        let cla = ClusterLoadAssignment::decode(value)?;
        let mut out = HashSet::new();
        for le in &cla.endpoints {
            for lb in &le.lb_endpoints {
                if let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &lb.host_identifier {
                    if let Some(address::Address::SocketAddress(sa)) =
                        e.address.as_ref().and_then(|a| a.address.as_ref())
                    {
                        if let Ok(ip) = sa.address.parse() {
                            out.insert(ip);
                        }
                    }
                }
            }
        }
        let v = Arc::new(out);
        self.ips.insert(h, v.clone());
        Ok(v)
    }
}

// ---------------------------------------------------------------- change tracking

struct Change {
    /// The EDS resource name the change shows up in.
    name: Arc<str>,
    ip: IpAddr,
    at: Instant,
    /// Latest credited arrival (nanoseconds after `at`), and how many proxies have it.
    max_ns: AtomicU64,
    got: AtomicUsize,
    all_ns: Mutex<Vec<u64>>,
}

#[derive(Default)]
struct Tracker {
    changes: RwLock<Vec<Arc<Change>>>,
    /// Change indexes per EDS name, in order.
    by_name: RwLock<HashMap<Arc<str>, Vec<usize>>>,
    done: Notify,
}

impl Tracker {
    fn add(&self, c: Change) -> Arc<Change> {
        let c = Arc::new(c);
        let mut changes = self.changes.write().unwrap_or_else(|e| e.into_inner());
        let k = changes.len();
        changes.push(c.clone());
        drop(changes);
        self.by_name
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(c.name.clone())
            .or_default()
            .push(k);
        c
    }

    /// A proxy ACKed assignment `name` holding `ips` at `now`: credit every change
    /// of that name up to the latest one whose IP it holds (a later IP of the same
    /// pod supersedes earlier ones).
    fn credit(
        &self,
        cursor: &mut HashMap<Arc<str>, usize>,
        name: &Arc<str>,
        ips: &HashSet<IpAddr>,
        now: Instant,
    ) {
        let by_name = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        let Some(ks) = by_name.get(name) else { return };
        let from = cursor.get(name).copied().unwrap_or(0);
        if from >= ks.len() {
            return;
        }
        let changes = self.changes.read().unwrap_or_else(|e| e.into_inner());
        let Some(last) = (from..ks.len())
            .rev()
            .find(|&j| ips.contains(&changes[ks[j]].ip))
        else {
            return;
        };
        for &k in &ks[from..=last] {
            let c = &changes[k];
            let ns = now.saturating_duration_since(c.at).as_nanos() as u64;
            c.max_ns.fetch_max(ns, Ordering::Relaxed);
            c.all_ns.lock().unwrap_or_else(|e| e.into_inner()).push(ns);
            c.got.fetch_add(1, Ordering::AcqRel);
        }
        cursor.insert(name.clone(), last + 1);
        self.done.notify_waiters();
    }
}

// ---------------------------------------------------------------- simulated proxy

/// What one proxy holds: per type, name -> content hash (and for proxy 0 the
/// bytes, kept for the floor).
#[derive(Default)]
struct ProxyState {
    res: [HashMap<Arc<str>, u64>; 4],
    eds_sub: BTreeSet<Arc<str>>,
    rds_sub: BTreeSet<Arc<str>>,
    got: [bool; 4],
    complete: bool,
    nacks: usize,
    cursor: HashMap<Arc<str>, usize>,
    /// `--secure`: complete only with both SDS secrets.
    need_secrets: bool,
    got_rootca: bool,
    /// When the proxy first held a valid workload certificate.
    cert_at: Option<Instant>,
    /// `--restart`, Delta: the server's version of each resource held.
    versions: [HashMap<Arc<str>, Arc<str>>; 4],
    /// `--restart`, SotW: last accepted version and nonce per type.
    sotw_vn: [(String, String); 4],
}

struct Shared {
    decoded: Decoded,
    tracker: Tracker,
    bytes: AtomicU64,
    responses: AtomicU64,
    complete: AtomicUsize,
    complete_notify: Notify,
    /// Bytes of every resource proxy 0 holds: (type, name) -> Any value.
    keep: Mutex<BTreeMap<(usize, Arc<str>), Bytes>>,
    errors: Mutex<Vec<String>>,
    stop: AtomicBool,
    /// Streams opened (each proxy's first, then one per reconnect).
    opened: AtomicUsize,
    /// Bytes and responses received per type (CDS, EDS, LDS, RDS).
    type_bytes: [AtomicU64; 4],
    type_responses: [AtomicU64; 4],
}

impl Shared {
    /// Count one response of `len` bytes (of type `t`, when it is one of the four).
    fn count(&self, t: Option<usize>, len: usize) {
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
        self.responses.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = t {
            self.type_bytes[t].fetch_add(len as u64, Ordering::Relaxed);
            self.type_responses[t].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (bytes, responses) per type so far.
    fn per_type(&self) -> [(u64, u64); 4] {
        std::array::from_fn(|t| {
            (
                self.type_bytes[t].load(Ordering::Acquire),
                self.type_responses[t].load(Ordering::Acquire),
            )
        })
    }
}

fn type_index(url: &str) -> Option<usize> {
    match TypeUrl::parse(url)? {
        TypeUrl::Cluster => Some(CDS),
        TypeUrl::Endpoint => Some(EDS),
        TypeUrl::Listener => Some(LDS),
        TypeUrl::Route => Some(RDS),
        TypeUrl::Secret => None,
    }
}

fn url(t: usize) -> String {
    [
        TypeUrl::Cluster,
        TypeUrl::Endpoint,
        TypeUrl::Listener,
        TypeUrl::Route,
    ][t]
        .as_str()
        .to_string()
}

impl ProxyState {
    fn wanted(&self, t: usize, sh: &Shared) -> Res<BTreeSet<Arc<str>>> {
        let (src, f): (usize, fn(&Decoded, u64, &[u8]) -> Res<Arc<Vec<Arc<str>>>>) = match t {
            EDS => (CDS, Decoded::eds_of),
            _ => (LDS, Decoded::rds_of),
        };
        let mut out = BTreeSet::new();
        for h in self.res[src].values() {
            // Decoded on arrival, so the cache always holds it.
            let names = match t {
                EDS => sh.decoded.eds_names.get(h).map(|v| v.clone()),
                _ => sh.decoded.rds_names.get(h).map(|v| v.clone()),
            };
            let names = match names {
                Some(n) => n,
                None => {
                    return fail(format!(
                        "content {h:x} not decoded ({f:p})",
                        f = f as *const ()
                    ))
                }
            };
            out.extend(names.iter().cloned());
        }
        Ok(out)
    }

    fn check_complete(&mut self, sh: &Shared) {
        if self.complete || !self.got[CDS] || !self.got[LDS] {
            return;
        }
        if self.need_secrets && (self.cert_at.is_none() || !self.got_rootca) {
            return;
        }
        let have =
            |t: usize, set: &BTreeSet<Arc<str>>| set.iter().all(|n| self.res[t].contains_key(n));
        if have(EDS, &self.eds_sub) && have(RDS, &self.rds_sub) {
            self.complete = true;
            sh.complete.fetch_add(1, Ordering::AcqRel);
            sh.complete_notify.notify_waiters();
        }
    }
}

/// A received resource: name, hash, value bytes.
struct Got {
    name: Arc<str>,
    h: u64,
    value: Bytes,
}

/// Apply a response's resources; returns the names of a changed EDS / RDS
/// subscription when CDS / LDS changed it.
fn apply(
    st: &mut ProxyState,
    sh: &Shared,
    keep: bool,
    t: usize,
    got: Vec<Got>,
    removed: Vec<Arc<str>>,
    replace: bool,
) -> Res<()> {
    for g in &got {
        match t {
            CDS => {
                sh.decoded.eds_of(g.h, &g.value)?;
            }
            LDS => {
                sh.decoded.rds_of(g.h, &g.value)?;
            }
            _ => {}
        }
    }
    if replace {
        st.res[t].clear();
        if keep {
            sh.keep
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|(tt, _), _| *tt != t);
        }
    }
    for n in removed {
        st.res[t].remove(&n);
        if keep {
            sh.keep
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(t, n));
        }
    }
    for g in got {
        if keep {
            sh.keep
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((t, g.name.clone()), g.value);
        }
        st.res[t].insert(g.name, g.h);
    }
    st.got[t] = true;
    Ok(())
}

fn credit_eds(st: &mut ProxyState, sh: &Shared, names: &[(Arc<str>, u64, Bytes)]) -> Res<()> {
    let now = Instant::now();
    for (n, h, v) in names {
        let ips = sh.decoded.ips_of(*h, v)?;
        sh.tracker.credit(&mut st.cursor, n, &ips, now);
    }
    Ok(())
}

/// Check an SDS response for proxy `i`: `default` must hold a key and a chain
/// whose leaf's URI SAN is the identity of `i`'s token, `ROOTCA` a trust bundle.
fn on_secrets(
    i: usize,
    args: &Args,
    st: &mut ProxyState,
    resources: &[envoy_types::pb::envoy::service::discovery::v3::Resource],
) -> Res<()> {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
    fn bytes(d: &Option<envoy_types::pb::envoy::config::core::v3::DataSource>) -> &[u8] {
        match d.as_ref().and_then(|d| d.specifier.as_ref()) {
            Some(Specifier::InlineBytes(b)) => b,
            Some(Specifier::InlineString(s)) => s.as_bytes(),
            _ => &[],
        }
    }
    for r in resources {
        let Some(any) = &r.resource else { continue };
        let secret = Secret::decode(any.value.as_slice())?;
        match (secret.name.as_str(), &secret.r#type) {
            ("default", Some(secret::Type::TlsCertificate(c))) => {
                if bytes(&c.private_key).is_empty() {
                    return fail(format!("proxy {i}: `default` has no private key"));
                }
                let (_, pem) = x509_parser::pem::parse_x509_pem(bytes(&c.certificate_chain))
                    .map_err(|e| format!("proxy {i}: `default` chain: {e}"))?;
                let cert = pem
                    .parse_x509()
                    .map_err(|e| format!("proxy {i}: `default` leaf: {e}"))?;
                let (ns, sa, _) = workload(i, args.gateway);
                let want = format!("spiffe://{DOMAIN}/ns/{ns}/sa/{sa}");
                let uris: Vec<String> = cert
                    .subject_alternative_name()
                    .ok()
                    .flatten()
                    .map(|san| {
                        san.value
                            .general_names
                            .iter()
                            .filter_map(|g| match g {
                                x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if uris != [want.clone()] {
                    return fail(format!(
                        "proxy {i}: certificate URI SANs {uris:?}, want {want}"
                    ));
                }
                st.cert_at.get_or_insert_with(Instant::now);
            }
            ("ROOTCA", Some(secret::Type::ValidationContext(v)))
                if !bytes(&v.trusted_ca).is_empty() =>
            {
                st.got_rootca = true;
            }
            (name, _) => return fail(format!("proxy {i}: unexpected secret {name:?}")),
        }
    }
    Ok(())
}

async fn run_proxy(
    i: usize,
    chan: tonic::transport::Channel,
    args: Arc<Args>,
    sh: Arc<Shared>,
    state: Arc<Mutex<ProxyState>>,
    token: Option<String>,
) -> Res<()> {
    let mut first = true;
    loop {
        let r = proxy_stream(i, chan.clone(), &args, &sh, &state, &token, first).await;
        if !args.restart || sh.stop.load(Ordering::Acquire) {
            return r;
        }
        // `--restart`: reconnect (the server may still be starting) with
        // what this proxy holds, as Envoy does.
        first = false;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `DiscoveryRequest` already encoded (`sotw_request`), sent through
/// tonic's prost codec as is.
#[derive(Debug, Default, Clone)]
struct RawRequest(Bytes);

impl prost::Message for RawRequest {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        buf.put_slice(&self.0);
    }
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only ever sent; never decoded.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }
    fn encoded_len(&self) -> usize {
        self.0.len()
    }
    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

/// `DiscoveryRequest.resource_names` (field 3) of `names`, in set order.
fn names_field(names: &BTreeSet<Arc<str>>) -> Bytes {
    let mut b = Vec::new();
    for n in names {
        prost::encoding::encode_key(3, prost::encoding::WireType::LengthDelimited, &mut b);
        prost::encoding::encode_varint(n.len() as u64, &mut b);
        b.extend_from_slice(n.as_bytes());
    }
    Bytes::from(b)
}

/// The bytes prost writes for a `DiscoveryRequest` with these fields
/// (`names` from `names_field`), in field order.
fn sotw_request(
    node: Option<&Node>,
    t: usize,
    names: &Bytes,
    version: &str,
    nonce: &str,
) -> RawRequest {
    let type_url = url(t);
    let mut b =
        Vec::with_capacity(names.len() + version.len() + type_url.len() + nonce.len() + 256);
    let string = |tag: u32, v: &str, b: &mut Vec<u8>| {
        if !v.is_empty() {
            prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, b);
            prost::encoding::encode_varint(v.len() as u64, b);
            b.extend_from_slice(v.as_bytes());
        }
    };
    string(1, version, &mut b);
    if let Some(node) = node {
        prost::encoding::message::encode(2, node, &mut b);
    }
    b.extend_from_slice(names);
    string(4, &type_url, &mut b);
    string(5, nonce, &mut b);
    RawRequest(Bytes::from(b))
}

/// One ADS stream of proxy `i`; `first` is false on a reconnect.
async fn proxy_stream(
    i: usize,
    chan: tonic::transport::Channel,
    args: &Arc<Args>,
    sh: &Arc<Shared>,
    state: &Arc<Mutex<ProxyState>>,
    token: &Option<String>,
    first: bool,
) -> Res<()> {
    let (args, sh, state) = (args.clone(), sh.clone(), state.clone());
    let node = node(i, args.gateway);
    let keep = i == 0;
    fn lock(s: &Arc<Mutex<ProxyState>>) -> std::sync::MutexGuard<'_, ProxyState> {
        s.lock().unwrap_or_else(|e| e.into_inner())
    }
    if args.delta {
        let mut client =
            AggregatedDiscoveryServiceClient::new(chan).max_decoding_message_size(1 << 30);
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
        // The node in the stream's first request only, as Envoy sends it with
        // `set_node_on_first_message_only` (crossmesh's and Istio's bootstrap).
        let node_sent = AtomicBool::new(false);
        let node_once = || (!node_sent.swap(true, Ordering::Relaxed)).then(|| node.clone());
        let req =
            |t: usize, sub: Vec<String>, unsub: Vec<String>, nonce: String| DeltaDiscoveryRequest {
                node: node_once(),
                type_url: url(t),
                resource_names_subscribe: sub,
                resource_names_unsubscribe: unsub,
                response_nonce: nonce,
                ..Default::default()
            };
        if first {
            // Envoy opens with wildcard CDS and LDS.
            tx.send(req(CDS, vec![], vec![], String::new())).await?;
            tx.send(req(LDS, vec![], vec![], String::new())).await?;
        } else {
            // Reconnect: every type it holds, with the versions it holds.
            let st = lock(&state);
            for t in [CDS, EDS, LDS, RDS] {
                let sub: Vec<String> = match t {
                    EDS => st.eds_sub.iter().map(|s| s.to_string()).collect(),
                    RDS => st.rds_sub.iter().map(|s| s.to_string()).collect(),
                    _ => vec![],
                };
                if (t == EDS || t == RDS) && sub.is_empty() {
                    continue;
                }
                let mut r = req(t, sub, vec![], String::new());
                r.initial_resource_versions = st.versions[t]
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect();
                tx.try_send(r)?;
            }
        }
        if args.secure {
            // Envoy asks for the secrets its first clusters and listeners name.
            tx.send(DeltaDiscoveryRequest {
                node: node_once(),
                type_url: TypeUrl::Secret.as_str().to_string(),
                resource_names_subscribe: vec!["default".into(), "ROOTCA".into()],
                ..Default::default()
            })
            .await?;
        }
        let mut call = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(t) = &token {
            call.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse()?);
        }
        let mut stream = client.delta_aggregated_resources(call).await?.into_inner();
        sh.opened.fetch_add(1, Ordering::AcqRel);
        while let Some(resp) = stream.message().await? {
            sh.count(type_index(&resp.type_url), resp.encoded_len());
            let Some(t) = type_index(&resp.type_url) else {
                if resp.type_url == TypeUrl::Secret.as_str() {
                    let mut st = lock(&state);
                    on_secrets(i, &args, &mut st, &resp.resources)?;
                    st.check_complete(&sh);
                }
                tx.send(DeltaDiscoveryRequest {
                    type_url: resp.type_url.clone(),
                    response_nonce: resp.nonce.clone(),
                    ..Default::default()
                })
                .await?;
                continue;
            };
            let mut got = Vec::with_capacity(resp.resources.len());
            let mut eds_seen = Vec::new();
            let mut versions = Vec::new();
            for r in resp.resources {
                if args.restart {
                    versions.push((sh.decoded.intern(&r.name), sh.decoded.intern(&r.version)));
                }
                let Some(any) = r.resource else { continue };
                let value = Bytes::from(any.value);
                let h = hash(&value);
                let name = sh.decoded.intern(&r.name);
                if t == EDS {
                    eds_seen.push((name.clone(), h, value.clone()));
                }
                got.push(Got { name, h, value });
            }
            let removed = resp
                .removed_resources
                .iter()
                .map(|n| sh.decoded.intern(n))
                .collect();
            let mut out = Vec::new();
            {
                let mut st = lock(&state);
                if args.restart {
                    for n in &removed {
                        st.versions[t].remove(n);
                    }
                    st.versions[t].extend(versions);
                }
                apply(&mut st, &sh, keep, t, got, removed, false)?;
                // Like Envoy: a CDS (LDS) update first (un)subscribes EDS (RDS),
                // then ACKs.
                if t == CDS || t == LDS {
                    let dep = if t == CDS { EDS } else { RDS };
                    let want = st.wanted(dep, &sh)?;
                    let cur = if dep == EDS { &st.eds_sub } else { &st.rds_sub };
                    let sub: Vec<String> = want.difference(cur).map(|s| s.to_string()).collect();
                    let unsub: Vec<Arc<str>> = cur.difference(&want).cloned().collect();
                    for n in &unsub {
                        st.res[dep].remove(n);
                        st.versions[dep].remove(n);
                    }
                    if !sub.is_empty() || !unsub.is_empty() {
                        out.push(req(
                            dep,
                            sub,
                            unsub.iter().map(|s| s.to_string()).collect(),
                            String::new(),
                        ));
                    }
                    if dep == EDS {
                        st.eds_sub = want;
                    } else {
                        st.rds_sub = want;
                    }
                }
                out.push(req(t, vec![], vec![], resp.nonce.clone()));
            }
            for r in out {
                tx.send(r).await?;
            }
            let mut st = lock(&state);
            if t == EDS {
                credit_eds(&mut st, &sh, &eds_seen)?;
            }
            st.check_complete(&sh);
        }
    } else {
        let (tx, rx) = mpsc::channel::<RawRequest>(16);
        // Requests are encoded from the subscription's names encoded once
        // (`names_field`), as Envoy keeps them: an ACK repeats every name, and
        // building 1,000 `String`s per ACK per proxy cost the harness more
        // than the server. The bytes on the wire are what prost would write;
        // the node goes in the stream's first request only, as Envoy does with
        // the bootstrap's `set_node_on_first_message_only` (crossmesh's and
        // Istio's).
        let mut with_node = Some(node.clone());
        let mut req = |t: usize, names: &Bytes, version: &str, nonce: &str| {
            sotw_request(with_node.take().as_ref(), t, names, version, nonce)
        };
        let empty = Bytes::new();
        // The encoded names of the EDS and RDS subscriptions.
        let mut raw: [Bytes; 4] = Default::default();
        // Last accepted version and nonce per type (for the dependent requests).
        let mut vn: [(String, String); 4] = Default::default();
        if first {
            tx.send(req(CDS, &empty, "", "")).await?;
            tx.send(req(LDS, &empty, "", "")).await?;
        } else {
            // Reconnect: each type with the version last accepted, no nonce.
            let st = lock(&state);
            vn = st.sotw_vn.clone();
            raw[EDS] = names_field(&st.eds_sub);
            raw[RDS] = names_field(&st.rds_sub);
            for t in [CDS, EDS, LDS, RDS] {
                if (t == EDS || t == RDS) && raw[t].is_empty() {
                    continue;
                }
                tx.try_send(req(t, &raw[t], &vn[t].0, ""))?;
            }
            for v in vn.iter_mut() {
                v.1.clear();
            }
        }
        let mut grpc = tonic::client::Grpc::new(chan).max_decoding_message_size(1 << 30);
        grpc.ready().await?;
        let codec = tonic_prost::ProstCodec::<RawRequest, DiscoveryResponse>::default();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
        );
        let mut stream = grpc
            .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, codec)
            .await?
            .into_inner();
        sh.opened.fetch_add(1, Ordering::AcqRel);
        while let Some(resp) = stream.message().await? {
            sh.count(type_index(&resp.type_url), resp.encoded_len());
            let Some(t) = type_index(&resp.type_url) else {
                continue;
            };
            if !first && std::env::var_os("FANOUT_TRACE_RECONNECT").is_some() {
                let st = lock(&state);
                eprintln!(
                    "[reconnect] proxy {i} t{t}: quoted {:?}, got {:?} with {} resources (holds {}, subscribed {})",
                    vn[t].0,
                    resp.version_info,
                    resp.resources.len(),
                    st.res[t].len(),
                    if t == EDS { st.eds_sub.len() } else { st.rds_sub.len() }
                );
            }
            let mut got = Vec::with_capacity(resp.resources.len());
            let mut eds_seen = Vec::new();
            for any in resp.resources {
                let value = Bytes::from(any.value);
                let h = hash(&value);
                // SotW resources carry no name outside the message: decode it,
                // once per distinct content (as the other decoded facts).
                let name = match sh.decoded.sotw_names.get(&h) {
                    Some(n) => n.clone(),
                    None => {
                        let name = match t {
                            CDS => Cluster::decode(value.clone())?.name,
                            EDS => ClusterLoadAssignment::decode(value.clone())?.cluster_name,
                            LDS => Listener::decode(value.clone())?.name,
                            _ => envoy_types::pb::envoy::config::route::v3::RouteConfiguration::decode(
                                value.clone(),
                            )?
                            .name,
                        };
                        let name = sh.decoded.intern(&name);
                        sh.decoded.sotw_names.insert(h, name.clone());
                        name
                    }
                };
                if t == EDS {
                    eds_seen.push((name.clone(), h, value.clone()));
                }
                got.push(Got { name, h, value });
            }
            let mut out = Vec::new();
            {
                let mut st = lock(&state);
                let replace = t == CDS || t == LDS;
                apply(&mut st, &sh, keep, t, got, vec![], replace)?;
                vn[t] = (resp.version_info.clone(), resp.nonce.clone());
                if args.restart {
                    st.sotw_vn[t] = vn[t].clone();
                }
                if t == CDS || t == LDS {
                    let dep = if t == CDS { EDS } else { RDS };
                    let want = st.wanted(dep, &sh)?;
                    let cur = if dep == EDS { &st.eds_sub } else { &st.rds_sub };
                    if &want != cur {
                        let gone: Vec<Arc<str>> = cur.difference(&want).cloned().collect();
                        for n in gone {
                            st.res[dep].remove(&n);
                        }
                        raw[dep] = names_field(&want);
                        out.push(req(dep, &raw[dep], &vn[dep].0, &vn[dep].1));
                        if dep == EDS {
                            st.eds_sub = want;
                        } else {
                            st.rds_sub = want;
                        }
                    }
                }
                let names = if t == EDS || t == RDS {
                    &raw[t]
                } else {
                    &empty
                };
                out.push(req(t, names, &resp.version_info, &resp.nonce));
            }
            for r in out {
                tx.send(r).await?;
            }
            let mut st = lock(&state);
            if t == EDS {
                credit_eds(&mut st, &sh, &eds_seen)?;
            }
            st.check_complete(&sh);
        }
    }
    if sh.stop.load(Ordering::Acquire) {
        Ok(())
    } else {
        fail(format!("proxy {i}: the server ended the stream"))
    }
}

// ---------------------------------------------------------------- the mesh on disk

struct Mesh {
    dir: tempfile::TempDir,
    /// pods[cluster][service][pod] = IP.
    pods: Vec<Vec<Vec<Ipv4Addr>>>,
    next_ip: u32,
    rng: u64,
    /// `--secure`: signs the proxies' tokens; its JWKS is cluster c0's `tokenIssuer`.
    issuer: Option<Arc<TokenIssuer>>,
}

impl Mesh {
    fn new(a: &Args) -> Res<Mesh> {
        let dir = tempfile::tempdir()?;
        let mut m = Mesh {
            dir,
            pods: vec![vec![Vec::new(); a.services]; a.clusters],
            next_ip: 0x0a00_0001,
            rng: 0x9e37_79b9_7f4a_7c15,
            issuer: None,
        };
        if a.secure {
            let jwks = m.dir.path().join("c0-jwks.json");
            m.issuer = Some(Arc::new(TokenIssuer::new(TOKEN_ISSUER, &jwks)));
        }
        for c in 0..a.clusters {
            std::fs::create_dir_all(m.cluster_dir(c))?;
            for s in 0..a.services {
                for _ in 0..a.pods {
                    let ip = m.ip();
                    m.pods[c][s].push(ip);
                }
                m.write(c, s)?;
            }
        }
        let mut clusters: String = (0..a.clusters)
            .map(|c| format!("- name: c{c}\n  manifests: clusters/c{c}\n"))
            .collect();
        let mut security = String::new();
        if a.secure {
            // Every proxy claims cluster c0: its tokens verify with c0's issuer keys.
            clusters = clusters.replacen(
                "manifests: clusters/c0\n",
                &format!(
                    "manifests: clusters/c0\n  tokenIssuer: {{issuer: \"{TOKEN_ISSUER}\", jwks: c0-jwks.json}}\n"
                ),
                1,
            );
            security = "tokenAudiences: [istio-ca]\nca: {stateDir: ca-state}\n".into();
        }
        std::fs::write(
            m.dir.path().join("mesh.yaml"),
            format!(
                "trustDomain: {DOMAIN}\ndomainSuffix: {DOMAIN}\n{security}clusters:\n{clusters}"
            ),
        )?;
        Ok(m)
    }

    fn ip(&mut self) -> Ipv4Addr {
        self.next_ip += 1;
        Ipv4Addr::from(self.next_ip)
    }

    fn cluster_dir(&self, c: usize) -> PathBuf {
        self.dir.path().join("clusters").join(format!("c{c}"))
    }

    fn mesh_file(&self) -> PathBuf {
        self.dir.path().join("mesh.yaml")
    }

    /// Write service `s`'s file in cluster `c` (Service + its pods), atomically.
    fn write(&self, c: usize, s: usize) -> Res<()> {
        // Pods with a sidecar (auto mTLS to them) under `--secure`.
        let tls_mode = if self.issuer.is_some() {
            "\n    security.istio.io/tlsMode: istio"
        } else {
            ""
        };
        let mut y = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{s}\n  namespace: {NS}\nspec:\n  ports:\n  - port: 80\n    name: http\n    targetPort: 8080\n  selector:\n    app: svc-{s}\n"
        );
        for (p, ip) in self.pods[c][s].iter().enumerate() {
            y.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: svc-{s}-{p}\n  namespace: {NS}\n  labels:\n    app: svc-{s}{tls_mode}\nspec:\n  containers:\n  - name: app\n    image: app\n    ports:\n    - containerPort: 8080\n      name: http\nstatus:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n  conditions:\n  - type: Ready\n    status: \"True\"\n"
            ));
        }
        let dir = self.cluster_dir(c);
        let tmp = dir.join(format!(".svc-{s}.yaml.tmp"));
        std::fs::write(&tmp, y)?;
        std::fs::rename(&tmp, dir.join(format!("svc-{s}.yaml")))?;
        Ok(())
    }

    fn pick(&mut self, a: &Args) -> (usize, usize, usize) {
        let mut next = || {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.rng
        };
        let c = (next() % a.clusters as u64) as usize;
        let s = (next() % a.services as u64) as usize;
        let p = (next() % a.pods as u64) as usize;
        (c, s, p)
    }
}

// ---------------------------------------------------------------- targets (servers)

/// A server under test: a child process (crossmesh or the floor) or an address.
struct Target {
    xds: SocketAddr,
    debug: Option<SocketAddr>,
    child: Option<Child>,
    /// The floor server's stdin/stdout, for its change commands.
    floor_io: Option<(
        std::process::ChildStdin,
        BufReader<std::process::ChildStdout>,
    )>,
    spawned: Instant,
    /// `--secure`: the TLS xDS port, the root to trust, the token issuer.
    secure: Option<(SocketAddr, PathBuf, Arc<TokenIssuer>)>,
}

impl Target {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
    fn stats(&self) -> Option<(f64, f64, f64)> {
        proc_stats(self.pid()?)
    }
    fn metrics(&self) -> String {
        self.debug
            .and_then(|d| http_get(d, "/metrics"))
            .map(|x| x.1)
            .unwrap_or_default()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The command for a server child process. The environment variable `var`
/// (`FANOUT_WRAP` for crossmesh, `FANOUT_WRAP_FLOOR` for the floor; for example
/// `heaptrack -o /tmp/h`) is put in front of it for profiling; CPU and RSS are
/// then those of the wrapper's process, not the server's.
fn server_command(program: impl AsRef<std::ffi::OsStr>, var: &str) -> Command {
    let wrap = std::env::var(var).unwrap_or_default();
    let mut words = wrap.split_whitespace();
    match words.next() {
        None => Command::new(program),
        Some(first) => {
            let mut c = Command::new(first);
            c.args(words).arg(program);
            c
        }
    }
}

fn spawn_crossmesh(mesh: &Mesh) -> Res<Target> {
    spawn_crossmesh_at(mesh, free_addr()?, free_addr()?)
}

/// `spawn_crossmesh` on given ports (a restart keeps its ports).
fn spawn_crossmesh_at(mesh: &Mesh, xds: SocketAddr, debug: SocketAddr) -> Res<Target> {
    let secure = match &mesh.issuer {
        Some(issuer) => Some((
            free_addr()?,
            mesh.dir.path().join("ca-state").join("root-cert.pem"),
            issuer.clone(),
        )),
        None => None,
    };
    let spawned = Instant::now();
    let mut cmd = server_command(env!("CARGO_BIN_EXE_crossmesh"), "FANOUT_WRAP");
    cmd.args(["serve", "--mesh"]).arg(mesh.mesh_file()).args([
        "--xds-address",
        &xds.to_string(),
        "--debug-address",
        &debug.to_string(),
    ]);
    if let Some((tls, _, _)) = &secure {
        cmd.args(["--xds-tls-address", &tls.to_string()]);
    }
    let child = cmd
        .env(
            "RUST_LOG",
            std::env::var("CROSSMESH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .spawn()?;
    let t = Target {
        xds,
        debug: Some(debug),
        child: Some(child),
        floor_io: None,
        spawned,
        secure,
    };
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        if let Some((200, _)) = http_get(debug, "/ready") {
            return Ok(t);
        }
        if Instant::now() > deadline {
            return fail("crossmesh did not become ready");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Write a snapshot file: per resource, type u8, name len u32, name, value len u32,
/// value (the message bytes, not the Any).
fn write_resources(path: &Path, items: &[(usize, Arc<str>, Bytes)]) -> Res<()> {
    let mut out = Vec::new();
    for (t, n, v) in items {
        out.push(*t as u8);
        out.extend((n.len() as u32).to_le_bytes());
        out.extend(n.as_bytes());
        out.extend((v.len() as u32).to_le_bytes());
        out.extend(v.iter());
    }
    std::fs::write(path, out)?;
    Ok(())
}

fn read_resources(path: &Path) -> Res<Vec<(usize, String, Vec<u8>)>> {
    let b = std::fs::read(path)?;
    let mut i = 0;
    let mut out = Vec::new();
    let take = |i: &mut usize, n: usize| -> Res<Vec<u8>> {
        if *i + n > b.len() {
            return fail(format!("{}: truncated", path.display()));
        }
        let v = b[*i..*i + n].to_vec();
        *i += n;
        Ok(v)
    };
    while i < b.len() {
        let t = take(&mut i, 1)?[0] as usize;
        let nl = u32::from_le_bytes(take(&mut i, 4)?.try_into().map_err(|_| "len")?) as usize;
        let n = String::from_utf8(take(&mut i, nl)?)?;
        let vl = u32::from_le_bytes(take(&mut i, 4)?.try_into().map_err(|_| "len")?) as usize;
        out.push((t, n, take(&mut i, vl)?));
    }
    Ok(out)
}

fn spawn_floor(snapshot: &Path) -> Res<Target> {
    let spawned = Instant::now();
    let mut child = server_command(std::env::current_exe()?, "FANOUT_WRAP_FLOOR")
        .arg("--floor-server")
        .arg(snapshot)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdin = child.stdin.take().ok_or("floor stdin")?;
    let mut stdout = BufReader::new(child.stdout.take().ok_or("floor stdout")?);
    // A profiling wrapper (FANOUT_WRAP_FLOOR) may print its own lines first.
    let mut line = String::new();
    while stdout.read_line(&mut line)? > 0 && !line.starts_with("listening ") {
        line.clear();
    }
    let xds: SocketAddr = line
        .trim()
        .strip_prefix("listening ")
        .ok_or_else(|| format!("floor server said {line:?}"))?
        .parse()?;
    Ok(Target {
        xds,
        debug: None,
        child: Some(child),
        floor_io: Some((stdin, stdout)),
        spawned,
        secure: None,
    })
}

/// The floor server (child process): a `FixedSource` behind crossmesh's own ADS
/// transport, serving pre-encoded bytes. stdin: `load FILE` merges the resources
/// of FILE into the snapshot (changes = their names) and answers `ok`.
fn floor_server(snapshot: &Path) -> Res<()> {
    use crossmesh::xds::{FixedSource, SnapshotChanges};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let to_resource = |t: usize, name: &str, value: Vec<u8>| {
        let any = Any {
            type_url: url(t),
            value,
        }
        .encode_to_vec();
        Arc::new(Resource::new(
            name.into(),
            format!("{:016x}", hash(&any)).into(),
            &any,
        ))
    };
    let mut maps: [BTreeMap<Arc<str>, Arc<Resource>>; 5] = Default::default();
    for (t, n, v) in read_resources(snapshot)? {
        let r = to_resource(t, &n, v);
        maps[t].insert(r.name.clone(), r);
    }
    let mk = |seq: u64, maps: &[BTreeMap<Arc<str>, Arc<Resource>>; 5]| {
        ProxySnapshot::new(seq, maps.clone().map(Arc::new))
    };
    let source = Arc::new(FixedSource::new(mk(1, &maps)));
    let ads = crossmesh::xds::server::AdsServer::new(source.clone());
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    println!("listening {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    rt.spawn(crossmesh::xds::server::serve(
        listener,
        ads,
        std::future::pending(),
    ));
    let mut seq = 1;
    // Each map keeps its Arc until changed, so streams skip unchanged types.
    let mut current = mk(1, &maps);
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let Some(path) = line.strip_prefix("load ") else {
            continue;
        };
        let mut names: [BTreeSet<Arc<str>>; 5] = Default::default();
        for (t, n, v) in read_resources(Path::new(path))? {
            let r = to_resource(t, &n, v);
            names[t].insert(r.name.clone());
            maps[t].insert(r.name.clone(), r);
        }
        seq += 1;
        let mut resources = current.resources.clone();
        for t in 0..5 {
            if !names[t].is_empty() {
                resources[t] = Arc::new(maps[t].clone());
            }
        }
        current = ProxySnapshot::new(seq, resources);
        let changes = SnapshotChanges {
            base_seq: seq - 1,
            names: names.map(|n| Some(Arc::new(n))),
        };
        source.set(current.clone(), Some(changes));
        println!("ok");
        std::io::stdout().flush()?;
    }
    Ok(())
}

// ---------------------------------------------------------------- a run against one target

#[derive(Debug, Default, Clone)]
struct Report {
    label: String,
    ready_s: f64,
    first_full_s: f64,
    one_p50_ms: f64,
    one_p99_ms: f64,
    one_max_ms: f64,
    churn_changes: usize,
    churn_p50_ms: f64,
    churn_p99_ms: f64,
    churn_max_ms: f64,
    churn_cpu_cores: f64,
    push_time_ms: f64,
    pushes: f64,
    encodes_per_push: f64,
    cpu_s: f64,
    idle_cpu_cores: f64,
    peak_rss_mb: f64,
    rss_mb: f64,
    bytes_mb: f64,
    server_bytes_mb: f64,
    responses: u64,
    /// `--secure`: proxies holding a verified workload certificate, and the
    /// time from the first connection until the last got it.
    certs: usize,
    all_certs_s: f64,
    /// `--restart`: MB received by the proxies for their first full config,
    /// after the restart, and the time until all reconnected and it was quiet.
    full_config_mb: f64,
    restart_mb: f64,
    restart_responses: u64,
    restart_s: f64,
}

struct Run {
    args: Arc<Args>,
    sh: Arc<Shared>,
    states: Vec<Arc<Mutex<ProxyState>>>,
    tasks: Vec<tokio::task::JoinHandle<Res<()>>>,
}

/// An HTTP/2 connection to `addr` for the proxies' streams: plaintext, or TLS
/// trusting the root in `root` (the `--secure` TLS xDS port).
async fn channel(addr: SocketAddr, root: Option<&Path>) -> Res<tonic::transport::Channel> {
    // Envoy's defaults are 256 MiB windows; large windows keep flow control
    // from being what is measured.
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .initial_stream_window_size(16 << 20)
        .initial_connection_window_size(64 << 20)
        .tcp_nodelay(true);
    let Some(root) = root else {
        return Ok(ep.connect().await?);
    };
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(root)? {
        roots.add(c?)?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let tls = tls.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let s = tls
                .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
        }
    });
    Ok(ep.connect_with_connector(connector).await?)
}

async fn connect_all(args: &Arc<Args>, target: &Target) -> Res<Run> {
    let sh = Arc::new(Shared {
        decoded: Decoded::default(),
        tracker: Tracker::default(),
        bytes: AtomicU64::new(0),
        responses: AtomicU64::new(0),
        complete: AtomicUsize::new(0),
        complete_notify: Notify::new(),
        keep: Mutex::new(BTreeMap::new()),
        errors: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        opened: AtomicUsize::new(0),
        type_bytes: Default::default(),
        type_responses: Default::default(),
    });
    let (addr, root) = match &target.secure {
        Some((tls, root, _)) => (*tls, Some(root.as_path())),
        None => (target.xds, None),
    };
    let mut chans = Vec::new();
    for _ in 0..args.conns {
        chans.push(channel(addr, root).await?);
    }
    let mut states = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..args.proxies {
        let st = Arc::new(Mutex::new(ProxyState {
            need_secrets: target.secure.is_some(),
            ..Default::default()
        }));
        states.push(st.clone());
        // A projected token bound to the proxy's pod, as the kubelet writes it.
        let token = target.secure.as_ref().map(|(_, _, issuer)| {
            let (ns, sa, pod) = workload(i, args.gateway);
            issuer.token(ns, sa, Some(&pod), token_issuer::AUDIENCE, 3600)
        });
        let (chan, a, s) = (chans[i % chans.len()].clone(), args.clone(), sh.clone());
        tasks.push(tokio::spawn(async move {
            let r = run_proxy(i, chan, a, s.clone(), st, token).await;
            if let Err(e) = &r {
                if !s.stop.load(Ordering::Acquire) {
                    s.errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("proxy {i}: {e}"));
                    s.complete_notify.notify_waiters();
                    s.tracker.done.notify_waiters();
                }
            }
            r
        }));
    }
    Ok(Run {
        args: args.clone(),
        sh,
        states,
        tasks,
    })
}

impl Run {
    fn check_errors(&self) -> Res<()> {
        let e = self.sh.errors.lock().unwrap_or_else(|e| e.into_inner());
        if e.is_empty() {
            Ok(())
        } else {
            fail(format!("{} proxies failed; first: {}", e.len(), e[0]))
        }
    }

    async fn wait_complete(&self) -> Res<()> {
        let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
        loop {
            let n = self.sh.complete_notify.notified();
            self.check_errors()?;
            if self.sh.complete.load(Ordering::Acquire) >= self.args.proxies {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, n).await.is_err() {
                return fail(format!(
                    "only {} of {} proxies got a full config",
                    self.sh.complete.load(Ordering::Acquire),
                    self.args.proxies
                ));
            }
        }
    }

    /// Wait until every proxy has every tracked change.
    async fn wait_changes(&self) -> Res<()> {
        let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
        loop {
            let n = self.sh.tracker.done.notified();
            self.check_errors()?;
            let missing = {
                let ch = self
                    .sh
                    .tracker
                    .changes
                    .read()
                    .unwrap_or_else(|e| e.into_inner());
                ch.iter()
                    .filter(|c| c.got.load(Ordering::Acquire) < self.args.proxies)
                    .count()
            };
            if missing == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, n).await.is_err() {
                return fail(format!("{missing} changes never reached every proxy"));
            }
        }
    }

    /// Convergence (ms) of changes `from..`: per change, the last proxy's ACK.
    fn latencies(&self, from: usize) -> Vec<f64> {
        let ch = self
            .sh
            .tracker
            .changes
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<f64> = ch[from..]
            .iter()
            .map(|c| c.max_ns.load(Ordering::Acquire) as f64 / 1e6)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }

    fn stop(self) {
        self.sh.stop.store(true, Ordering::Release);
        for t in self.tasks {
            t.abort();
        }
    }
}

/// How the harness changes a pod on the target.
enum Driver<'a> {
    Mesh(&'a mut Mesh),
    Floor {
        io: &'a mut (
            std::process::ChildStdin,
            BufReader<std::process::ChildStdout>,
        ),
        /// Current assignment bytes per EDS name.
        cla: HashMap<Arc<str>, Bytes>,
        dir: PathBuf,
        n: usize,
    },
}

/// The EDS name of service `s` (`outbound|80||HOST`), looked up in what proxy 0
/// holds so the harness never guesses the server's naming.
fn eds_name(sh: &Shared, s: usize) -> Res<Arc<str>> {
    let suffix = format!("|{}", host(s));
    let keep = sh.keep.lock().unwrap_or_else(|e| e.into_inner());
    keep.keys()
        .find(|(t, n)| *t == EDS && n.ends_with(&suffix) && n.starts_with("outbound|80|"))
        .map(|(_, n)| n.clone())
        .ok_or_else(|| format!("proxy 0 holds no EDS assignment for {}", host(s)).into())
}

impl Driver<'_> {
    /// Change one pod's IP; returns the tracked change (timed from just before
    /// the source is touched).
    fn change(
        &mut self,
        args: &Args,
        sh: &Shared,
        pick: (usize, usize, usize),
        ip: Ipv4Addr,
    ) -> Res<()> {
        let (c, s, p) = pick;
        let name = eds_name(sh, s)?;
        match self {
            Driver::Mesh(m) => {
                let old = m.pods[c][s][p];
                m.pods[c][s][p] = ip;
                sh.tracker.add(Change {
                    name,
                    ip: IpAddr::V4(ip),
                    at: Instant::now(),
                    max_ns: AtomicU64::new(0),
                    got: AtomicUsize::new(0),
                    all_ns: Mutex::new(Vec::new()),
                });
                let _ = old;
                m.write(c, s)?;
            }
            Driver::Floor { io, cla, dir, n } => {
                let _ = args;
                let cur = cla.get(&name).ok_or("no assignment")?;
                let mut msg = ClusterLoadAssignment::decode(cur.clone())?;
                // The floor has no pod identity: replace the (c, p)-th endpoint
                // of the flattened list, the same count of changes per EDS name.
                let mut eps: Vec<&mut envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint> =
                    msg.endpoints
                        .iter_mut()
                        .flat_map(|l| l.lb_endpoints.iter_mut())
                        .collect();
                let k = (c * 1_000_003 + p) % eps.len().max(1);
                if let Some(lb_endpoint::HostIdentifier::Endpoint(e)) =
                    eps.get_mut(k).and_then(|e| e.host_identifier.as_mut())
                {
                    if let Some(address::Address::SocketAddress(sa)) =
                        e.address.as_mut().and_then(|a| a.address.as_mut())
                    {
                        sa.address = ip.to_string();
                    }
                }
                let bytes = Bytes::from(msg.encode_to_vec());
                cla.insert(name.clone(), bytes.clone());
                *n += 1;
                let path = dir.join(format!("change-{n}.bin"));
                write_resources(&path, &[(EDS, name.clone(), bytes)])?;
                sh.tracker.add(Change {
                    name,
                    ip: IpAddr::V4(ip),
                    at: Instant::now(),
                    max_ns: AtomicU64::new(0),
                    got: AtomicUsize::new(0),
                    all_ns: Mutex::new(Vec::new()),
                });
                writeln!(io.0, "load {}", path.display())?;
                io.0.flush()?;
                let mut line = String::new();
                io.1.read_line(&mut line)?;
                if line.trim() != "ok" {
                    return fail(format!("floor server said {line:?}"));
                }
            }
        }
        Ok(())
    }
}

/// Connect, measure first full config, single changes, churn, idle.
async fn measure(
    label: &str,
    args: &Arc<Args>,
    target: &Target,
    driver: &mut Option<Driver<'_>>,
    picks: &[(usize, usize, usize)],
    ips: &[Ipv4Addr],
) -> Res<(Report, Run)> {
    let mut r = Report {
        label: label.to_string(),
        ..Default::default()
    };
    r.ready_s = target.spawned.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let run = connect_all(args, target).await?;
    run.wait_complete().await?;
    r.first_full_s = t0.elapsed().as_secs_f64();
    r.full_config_mb = run.sh.bytes.load(Ordering::Relaxed) as f64 / 1e6;
    if target.secure.is_some() {
        let last = run
            .states
            .iter()
            .filter_map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).cert_at)
            .max();
        r.certs = run.states.len();
        r.all_certs_s = last.map_or(f64::NAN, |t| (t - t0).as_secs_f64());
        eprintln!(
            "[{label}] {} proxies hold their certificate after {:.2}s",
            r.certs, r.all_certs_s
        );
    }
    eprintln!(
        "[{label}] {} proxies have full config after {:.2}s (+{:.2}s to ready)",
        args.proxies, r.first_full_s, r.ready_s
    );

    let m0 = target.metrics();
    let Some(driver) = driver.as_mut() else {
        return Ok((r, run));
    };
    // Single changes, one at a time, each after the previous fully converged.
    let singles = args.changes.min(picks.len());
    for k in 0..singles {
        driver.change(args, &run.sh, picks[k], ips[k])?;
        run.wait_changes().await?;
        // Let the manifest debounce and push settle apart.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let l = run.latencies(0);
    r.one_p50_ms = pct(&l, 0.5);
    r.one_p99_ms = pct(&l, 0.99);
    r.one_max_ms = pct(&l, 1.0);
    eprintln!(
        "[{label}] {singles} single changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        r.one_p50_ms, r.one_p99_ms, r.one_max_ms
    );

    // Churn at a fixed rate.
    if args.duration > 0.0 && args.rate > 0.0 {
        let cpu0 = target.stats().map(|s| s.0);
        let from = singles;
        let n = ((args.rate * args.duration) as usize).min(picks.len() - singles);
        let period = Duration::from_secs_f64(1.0 / args.rate);
        let start = tokio::time::Instant::now();
        for k in 0..n {
            tokio::time::sleep_until(start + period * k as u32).await;
            driver.change(args, &run.sh, picks[from + k], ips[from + k])?;
        }
        let sent = start.elapsed();
        run.wait_changes().await?;
        let cpu1 = target.stats().map(|s| s.0);
        let l = run.latencies(from);
        r.churn_changes = n;
        r.churn_p50_ms = pct(&l, 0.5);
        r.churn_p99_ms = pct(&l, 0.99);
        r.churn_max_ms = pct(&l, 1.0);
        if let (Some(a), Some(b)) = (cpu0, cpu1) {
            r.churn_cpu_cores = (b - a) / start.elapsed().as_secs_f64();
        }
        eprintln!(
            "[{label}] churn {n} changes in {:.1}s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {:.2} cores",
            sent.as_secs_f64(), r.churn_p50_ms, r.churn_p99_ms, r.churn_max_ms, r.churn_cpu_cores
        );
    }
    let m1 = target.metrics();
    let pushes =
        metric(&m1, "pilot_xds_push_time_count") - metric(&m0, "pilot_xds_push_time_count");
    r.pushes = pushes;
    if pushes > 0.0 {
        r.push_time_ms = (metric(&m1, "pilot_xds_push_time_sum")
            - metric(&m0, "pilot_xds_push_time_sum"))
            / pushes
            * 1e3;
        r.encodes_per_push =
            (metric(&m1, "crossmesh_encodes") - metric(&m0, "crossmesh_encodes")) / pushes;
    }
    r.server_bytes_mb = metric(&m1, "pilot_xds_send_bytes") / 1e6;
    Ok((r, run))
}

/// `--restart`: kill crossmesh, start it again on the same ports, wait until
/// every proxy has reconnected and nothing has been received for 3 s, and
/// count what the proxies received meanwhile.
async fn restart(r: &mut Report, run: &Run, target: &mut Target, mesh: &Mesh) -> Res<()> {
    let (xds, debug) = (target.xds, target.debug.ok_or("no debug address")?);
    let bytes0 = run.sh.bytes.load(Ordering::Acquire);
    let responses0 = run.sh.responses.load(Ordering::Acquire);
    let opened0 = run.sh.opened.load(Ordering::Acquire);
    let types0 = run.sh.per_type();
    let t0 = Instant::now();
    if let Some(mut c) = target.child.take() {
        c.kill()?;
        c.wait()?;
    }
    *target = spawn_crossmesh_at(mesh, xds, debug)?;
    let deadline = Instant::now() + PHASE_TIMEOUT;
    let (mut last, mut since) = (run.sh.bytes.load(Ordering::Acquire), Instant::now());
    loop {
        run.check_errors()?;
        let opened = run.sh.opened.load(Ordering::Acquire) - opened0;
        let bytes = run.sh.bytes.load(Ordering::Acquire);
        if bytes != last {
            (last, since) = (bytes, Instant::now());
        }
        if opened >= run.args.proxies && since.elapsed() >= Duration::from_secs(3) {
            break;
        }
        if Instant::now() > deadline {
            return fail(format!(
                "after the restart only {opened} of {} proxies reconnected",
                run.args.proxies
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r.restart_mb = (last - bytes0) as f64 / 1e6;
    r.restart_responses = run.sh.responses.load(Ordering::Acquire) - responses0;
    r.restart_s = (since - t0).as_secs_f64();
    eprintln!(
        "[restart] {} proxies reconnected; received {:.3} MB in {} responses (first full config: {:.1} MB), quiet {:.2}s after the kill",
        run.args.proxies, r.restart_mb, r.restart_responses, r.full_config_mb, r.restart_s
    );
    let types = run.sh.per_type();
    let per_type: Vec<String> = ["CDS", "EDS", "LDS", "RDS"]
        .iter()
        .enumerate()
        .map(|(t, name)| {
            format!(
                "{name} {:.3} MB in {}",
                (types[t].0 - types0[t].0) as f64 / 1e6,
                types[t].1 - types0[t].1
            )
        })
        .collect();
    eprintln!("[restart] by type: {}", per_type.join(", "));
    Ok(())
}

async fn finish(r: &mut Report, run: &Run, target: &Target, idle: f64) {
    if let Some((c0, _, _)) = target.stats() {
        tokio::time::sleep(Duration::from_secs_f64(idle)).await;
        if let Some((c1, hwm, rss)) = target.stats() {
            r.idle_cpu_cores = (c1 - c0) / idle;
            r.cpu_s = c1;
            r.peak_rss_mb = hwm;
            r.rss_mb = rss;
        }
    }
    r.bytes_mb = run.sh.bytes.load(Ordering::Relaxed) as f64 / 1e6;
    r.responses = run.sh.responses.load(Ordering::Relaxed);
}

// ---------------------------------------------------------------- final state check

/// Compare every proxy's state with what an in-process registry, loaded from the
/// same final manifests, says it should see.
fn verify(mesh: &Mesh, args: &Args, run: &Run) -> Res<()> {
    use crossmesh::push::{PushQueue, PushRequest, Pusher};
    use crossmesh::registry::Registry;
    let cfg = crossmesh::config::MeshConfig::load(&mesh.mesh_file())?;
    let queue = PushQueue::new();
    let registry = Registry::new(Arc::new(cfg.clone()), queue.clone());
    for c in &cfg.clusters {
        if let crossmesh::config::ClusterSource::Manifests(dir) = &c.source {
            crossmesh::sources::manifests::ClusterDir::new(&c.name, dir.clone())
                .sync(&registry, true);
        }
    }
    let pusher = Pusher::new(registry.clone(), queue, cfg.tunables.clone());
    pusher.push_now(PushRequest::full("bench-verify"));
    let mut expected_cache: HashMap<usize, [HashMap<String, u64>; 4]> = HashMap::new();
    let mut bad = Vec::new();
    for (i, st) in run.states.iter().enumerate() {
        let mut proxy = crossmesh::model::Proxy::from_node(&node(i, args.gateway))?;
        if args.secure {
            let (ns, sa, _) = workload(i, args.gateway);
            proxy.identity = Some(crossmesh::security::Identity {
                trust_domain: DOMAIN.into(),
                namespace: ns.into(),
                service_account: sa.into(),
            });
        }
        let rx = pusher.connect(1_000_000 + i as u64, Arc::new(proxy));
        let snap = rx.borrow().snapshot.clone();
        pusher.disconnect(1_000_000 + i as u64);
        let key = Arc::as_ptr(&snap) as usize;
        let exp = expected_cache.entry(key).or_insert_with(|| {
            let mut out: [HashMap<String, u64>; 4] = Default::default();
            for (t, o) in out.iter_mut().enumerate() {
                for (n, r) in snap.resources[t].iter() {
                    let v = Any::decode(r.any.clone())
                        .map(|a| hash(&a.value))
                        .unwrap_or(0);
                    o.insert(n.to_string(), v);
                }
            }
            out
        });
        let st = st.lock().unwrap_or_else(|e| e.into_inner());
        for t in 0..4 {
            let have: BTreeMap<&str, u64> = st.res[t].iter().map(|(n, h)| (&**n, *h)).collect();
            // EDS and RDS: what the proxy subscribed to (derived from its CDS/LDS,
            // themselves checked in full).
            let want: BTreeMap<&str, u64> = match t {
                EDS | RDS => {
                    let sub = if t == EDS { &st.eds_sub } else { &st.rds_sub };
                    sub.iter()
                        .map(|n| (&**n, exp[t].get(&**n).copied().unwrap_or(u64::MAX)))
                        .collect()
                }
                _ => exp[t].iter().map(|(n, h)| (n.as_str(), *h)).collect(),
            };
            if have != want {
                let diff: Vec<&str> = want
                    .iter()
                    .filter(|(n, h)| have.get(*n) != Some(*h))
                    .map(|(n, _)| *n)
                    .chain(have.keys().filter(|n| !want.contains_key(*n)).copied())
                    .take(3)
                    .collect();
                bad.push(format!(
                    "proxy {i} {}: {} held, {} expected, differing e.g. {diff:?}",
                    ["CDS", "EDS", "LDS", "RDS"][t],
                    have.len(),
                    want.len()
                ));
            }
        }
        if st.nacks > 0 {
            bad.push(format!("proxy {i}: {} NACKs", st.nacks));
        }
    }
    if bad.is_empty() {
        eprintln!(
            "final state: all {} proxies hold exactly what the registry says",
            run.states.len()
        );
        Ok(())
    } else {
        fail(format!(
            "{} mismatches; first: {}",
            bad.len(),
            bad[..bad.len().min(5)].join("; ")
        ))
    }
}

// ---------------------------------------------------------------- main

fn print_table(rows: &[Report]) {
    println!(
        "\n| metric | {} |",
        rows.iter()
            .map(|r| r.label.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---|".repeat(rows.len()));
    let line = |name: &str, f: &dyn Fn(&Report) -> String| {
        println!(
            "| {name} | {} |",
            rows.iter().map(f).collect::<Vec<_>>().join(" | ")
        );
    };
    line("spawn to ready (s)", &|r| format!("{:.2}", r.ready_s));
    if rows.iter().any(|r| r.certs > 0) {
        line(
            "certificates: proxies / all issued and received (s)",
            &|r| format!("{} / {:.2}", r.certs, r.all_certs_s),
        );
    }
    line("first full config, all proxies (s)", &|r| {
        format!("{:.2}", r.first_full_s)
    });
    line("one change: p50 / p99 / max (ms)", &|r| {
        format!(
            "{:.1} / {:.1} / {:.1}",
            r.one_p50_ms, r.one_p99_ms, r.one_max_ms
        )
    });
    line("churn: changes", &|r| r.churn_changes.to_string());
    line("churn: p50 / p99 / max (ms)", &|r| {
        format!(
            "{:.1} / {:.1} / {:.1}",
            r.churn_p50_ms, r.churn_p99_ms, r.churn_max_ms
        )
    });
    line("churn: CPU (cores)", &|r| {
        format!("{:.2}", r.churn_cpu_cores)
    });
    line("pushes / mean push time (ms)", &|r| {
        format!("{} / {:.2}", r.pushes, r.push_time_ms)
    });
    line("encodes per push", &|r| {
        format!("{:.1}", r.encodes_per_push)
    });
    line("server CPU total (s)", &|r| format!("{:.2}", r.cpu_s));
    line("idle CPU (cores)", &|r| format!("{:.3}", r.idle_cpu_cores));
    line("peak RSS / RSS (MiB)", &|r| {
        format!("{:.0} / {:.0}", r.peak_rss_mb, r.rss_mb)
    });
    if rows.iter().any(|r| r.restart_s > 0.0) {
        line("restart: MB received after it / first full config", &|r| {
            format!("{:.3} / {:.1}", r.restart_mb, r.full_config_mb)
        });
        line("restart: responses, quiet after (s)", &|r| {
            format!("{} / {:.2}", r.restart_responses, r.restart_s)
        });
    }
    line("bytes received by proxies (MB)", &|r| {
        format!("{:.1}", r.bytes_mb)
    });
    line("responses received", &|r| r.responses.to_string());
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--floor-server") {
        if let Err(e) = argv
            .get(2)
            .ok_or_else(|| "--floor-server FILE".into())
            .and_then(|p: &String| floor_server(Path::new(p)))
        {
            eprintln!("floor server: {e}");
            std::process::exit(1);
        }
        return;
    }
    let code = match main_inner() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("fanout: FAILED: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn main_inner() -> Res<()> {
    let args = Arc::new(parse_args()?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    eprintln!(
        "fanout: {:?}, load {}",
        args,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    rt.block_on(async move {
        if let Some(addr) = args.address {
            let target = Target {
                xds: addr,
                debug: None,
                child: None,
                floor_io: None,
                spawned: Instant::now(),
                secure: None,
            };
            let (mut r, run) = measure(&addr.to_string(), &args, &target, &mut None, &[], &[]).await?;
            finish(&mut r, &run, &target, args.idle).await;
            print_table(&[r]);
            run.stop();
            return Ok(());
        }
        let mut mesh = Mesh::new(&args)?;
        let total = args.changes + (args.rate * args.duration) as usize;
        let picks: Vec<_> = (0..total).map(|_| mesh.pick(&args)).collect();
        let ips: Vec<_> = (0..total).map(|_| mesh.ip()).collect();
        let mut target = spawn_crossmesh(&mesh)?;
        let mut driver = Some(Driver::Mesh(&mut mesh));
        let (mut r, run) = measure("crossmesh", &args, &target, &mut driver, &picks, &ips).await?;
        drop(driver);
        finish(&mut r, &run, &target, args.idle).await;
        if args.restart {
            restart(&mut r, &run, &mut target, &mesh).await?;
        }
        verify(&mesh, &args, &run)?;
        let keep: Vec<(usize, Arc<str>, Bytes)> = run
            .sh
            .keep
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((t, n), v)| (*t, n.clone(), v.clone()))
            .collect();
        run.stop();
        drop(target);
        let mut rows = vec![r];
        if args.floor {
            // The floor serves what proxy 0 received from crossmesh (its final
            // state) to every proxy, and applies the same changes.
            let snap = mesh.dir.path().join("floor-snapshot.bin");
            write_resources(&snap, &keep)?;
            let mut target = spawn_floor(&snap)?;
            let cla = keep.iter().filter(|(t, _, _)| *t == EDS).map(|(_, n, v)| (n.clone(), v.clone())).collect();
            let mut io = target.floor_io.take().ok_or("floor io")?;
            let fips: Vec<_> = (0..total).map(|_| mesh.ip()).collect();
            let mut driver = Some(Driver::Floor { io: &mut io, cla, dir: mesh.dir.path().to_owned(), n: 0 });
            let (mut f, run) = measure("floor", &args, &target, &mut driver, &picks, &fips).await?;
            drop(driver);
            finish(&mut f, &run, &target, args.idle).await;
            run.stop();
            let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
            let x = &rows[0];
            println!(
                "\ncrossmesh/floor: first full config {:.2}x, one change p50 {:.2}x, p99 {:.2}x (an isolated change is pushed without the push debounce; the 10 ms file debounce remains), churn p99 {:.2}x, CPU {:.2}x, peak RSS {:.2}x",
                ratio(x.first_full_s, f.first_full_s),
                ratio(x.one_p50_ms, f.one_p50_ms),
                ratio(x.one_p99_ms, f.one_p99_ms),
                ratio(x.churn_p99_ms, f.churn_p99_ms),
                ratio(x.cpu_s, f.cpu_s),
                ratio(x.peak_rss_mb, f.peak_rss_mb),
            );
            rows.push(f);
            drop(io);
        }
        print_table(&rows);
        Ok(())
    })
}
