//! The dashboard at scale (issue 17, BENCHMARKS.md "Dashboard at 2,000 proxies /
//! 1,000 services"): what each JSON endpoint the `/ui` views read costs, and how
//! long each view takes to load and render in headless Chromium, with N
//! simulated proxies connected to a mesh of S services x C clusters x P pods.
//!
//! Run: `cargo bench --bench dashboard -- [--proxies N] [--services S]
//! [--clusters C] [--pods P] [--repeat R] [--no-browser]`. Without `--bench`
//! (as `cargo test --all-targets` runs it) it is a small smoke run: 20 proxies,
//! 20 services, 2 clusters, 2 pods, no browser.
//!
//! Flow:
//! 1. write the mesh as manifest files: per service a Service and P Pods in
//!    every cluster, a VirtualService and a DestinationRule (one subset) per
//!    service in a config directory; the last cluster on network `net-b` with
//!    an east-west gateway Service labelled `topology.istio.io/network`, the
//!    others on `net-a` with a mesh-file gateway; spawn `crossmesh serve`
//!    (`CROSSMESH_BIN`, else the one Cargo built) and wait for `/ready`;
//! 2. connect N proxies over Delta ADS on N/100 HTTP/2 connections, each as
//!    Envoy does: wildcard CDS and LDS, then EDS for its EDS clusters and RDS
//!    for its listeners' routes, ACKing everything; wait until every proxy
//!    has ACKed all four types;
//! 3. fetch every endpoint the views read R times each: bytes, the gzip size
//!    (the debug server does not compress; `gzip -6` of the body says what it
//!    would save), the wall time per request (loopback, body read) and
//!    crossmesh's CPU per request (utime + stime from `/proc`);
//! 4. with `/usr/bin/chromium` and `/usr/bin/chromedriver` present (and no
//!    `--no-browser`), open each view in a fresh page and read the time from
//!    navigation start to the view's first render (`performance.timeOrigin`
//!    to `body.dataset.loaded`), then the time one refresh takes (the page's
//!    own `updated · N ms`).
//!
//! Checks (a failed one fails the run): `/debug/meshz` counts every proxy,
//! service and endpoint and lists both networks' gateways; the service list
//! holds at most its limit; one service's page names its VirtualService,
//! DestinationRule and every proxy as a receiver; each view renders.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, HttpConnectionManager,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as PbValue};
use prost::Message;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crossmesh::xds::TypeUrl;

#[path = "../tests/support/net.rs"]
#[allow(dead_code)]
mod net;

const NS: &str = "bench";
const DOMAIN: &str = "cluster.local";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Longest wait for any phase before the run fails.
const PHASE_TIMEOUT: Duration = Duration::from_secs(600);
/// The four xDS types a simulated proxy holds, in the order it asks for them.
const TYPES: [TypeUrl; 4] = [
    TypeUrl::Cluster,
    TypeUrl::Listener,
    TypeUrl::Endpoint,
    TypeUrl::Route,
];

type Err = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, Err>;

fn fail<T>(msg: impl Into<String>) -> Res<T> {
    Err(msg.into().into())
}

#[derive(Debug, Clone)]
struct Args {
    proxies: usize,
    services: usize,
    clusters: usize,
    pods: usize,
    repeat: usize,
    browser: bool,
}

fn usage() -> &'static str {
    "cargo bench --bench dashboard -- [options]
  --proxies N     simulated proxies (default 2000)
  --services S    services (default 1000)
  --clusters C    member clusters (default 3; the last on network net-b)
  --pods P        pods per service per cluster (default 10)
  --repeat R      requests per endpoint (default 5)
  --no-browser    skip the Chromium view timings"
}

fn parse_args() -> Res<Args> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; `cargo test --all-targets` passes nothing.
    let mut a = if argv.iter().any(|x| x == "--bench") {
        Args {
            proxies: 2000,
            services: 1000,
            clusters: 3,
            pods: 10,
            repeat: 5,
            browser: true,
        }
    } else {
        Args {
            proxies: 20,
            services: 20,
            clusters: 2,
            pods: 2,
            repeat: 1,
            browser: false,
        }
    };
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        let mut val = |name: &str| -> Res<usize> {
            let v = it
                .next()
                .ok_or_else(|| format!("{name} needs a value\n{}", usage()))?;
            Ok(v.parse()?)
        };
        match arg.as_str() {
            "--proxies" => a.proxies = val("--proxies")?,
            "--services" => a.services = val("--services")?,
            "--clusters" => a.clusters = val("--clusters")?,
            "--pods" => a.pods = val("--pods")?,
            "--repeat" => a.repeat = val("--repeat")?,
            "--no-browser" => a.browser = false,
            "--browser" => a.browser = true,
            "--bench" => {}
            "-h" | "--help" => return fail(usage()),
            other => return fail(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    if a.proxies == 0 || a.services == 0 || a.clusters < 2 || a.pods == 0 || a.repeat == 0 {
        return fail("--proxies, --services, --pods, --repeat at least 1, --clusters at least 2");
    }
    Ok(a)
}

// ---------------------------------------------------------------- the mesh

/// The mesh's files in a temporary directory.
struct Mesh {
    dir: tempfile::TempDir,
    /// The mesh-file gateway of `net-a` and the discovered one of `net-b`.
    gateways: [Ipv4Addr; 2],
}

fn host(s: usize) -> String {
    format!("svc-{s}.{NS}.svc.{DOMAIN}")
}

impl Mesh {
    fn write(a: &Args) -> Res<Mesh> {
        let dir = tempfile::tempdir()?;
        let gateways = [Ipv4Addr::new(192, 0, 2, 10), Ipv4Addr::new(192, 0, 2, 20)];
        let mut ip: u32 = 0x0a00_0001;
        let last = a.clusters - 1;
        let mut clusters = String::new();
        for c in 0..a.clusters {
            let cdir = dir.path().join("clusters").join(format!("c{c}"));
            std::fs::create_dir_all(&cdir)?;
            let net = if c == last { "net-b" } else { "net-a" };
            clusters.push_str(&format!(
                "- name: c{c}\n  network: {net}\n  manifests: clusters/c{c}\n"
            ));
            for s in 0..a.services {
                let mut y = format!(
                    "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{s}\n  namespace: {NS}\n\
                     spec:\n  ports:\n  - port: 80\n    name: http\n    targetPort: 8080\n  selector:\n    app: svc-{s}\n"
                );
                for p in 0..a.pods {
                    ip += 1;
                    let addr = Ipv4Addr::from(ip);
                    y.push_str(&format!(
                        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: svc-{s}-{p}\n  namespace: {NS}\n  labels:\n    app: svc-{s}\n    version: v1\n\
                         spec:\n  containers:\n  - name: app\n    image: app\n    ports:\n    - containerPort: 8080\n      name: http\n\
                         status:\n  phase: Running\n  podIP: {addr}\n  podIPs:\n  - ip: {addr}\n  conditions:\n  - type: Ready\n    status: \"True\"\n"
                    ));
                }
                std::fs::write(cdir.join(format!("svc-{s}.yaml")), y)?;
            }
            if c == last {
                std::fs::write(
                    cdir.join("eastwest.yaml"),
                    format!(
                        "apiVersion: v1\nkind: Service\nmetadata:\n  name: istio-eastwestgateway\n  namespace: istio-system\n  \
                         labels:\n    topology.istio.io/network: net-b\n    istio: eastwestgateway\n\
                         spec:\n  type: LoadBalancer\n  selector:\n    istio: eastwestgateway\n  ports:\n  - name: tls\n    port: 15443\n\
                         status:\n  loadBalancer:\n    ingress:\n    - ip: {}\n",
                        gateways[1]
                    ),
                )?;
            }
        }
        let istio = dir.path().join("istio");
        std::fs::create_dir_all(&istio)?;
        for s in 0..a.services {
            std::fs::write(
                istio.join(format!("svc-{s}.yaml")),
                format!(
                    "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: svc-{s}\n  namespace: {NS}\n\
                     spec:\n  hosts: [svc-{s}]\n  http:\n  - route:\n    - destination:\n        host: svc-{s}\n        subset: v1\n\
                     ---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: svc-{s}\n  namespace: {NS}\n\
                     spec:\n  host: svc-{s}\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n"
                ),
            )?;
        }
        std::fs::write(
            dir.path().join("mesh.yaml"),
            format!(
                "trustDomain: {DOMAIN}\ndomainSuffix: {DOMAIN}\nclusters:\n{clusters}config:\n- manifests: istio\n\
                 networks:\n  net-a:\n    gateways:\n    - address: {}\n      port: 15443\n",
                gateways[0]
            ),
        )?;
        Ok(Mesh { dir, gateways })
    }
}

// ---------------------------------------------------------------- crossmesh

struct Crossmesh {
    child: Child,
    xds: SocketAddr,
    debug: SocketAddr,
}

impl Drop for Crossmesh {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn crossmesh_bin() -> PathBuf {
    std::env::var_os("CROSSMESH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_crossmesh")))
}

fn spawn(mesh: &Mesh, subnet: &net::Subnet) -> Res<Crossmesh> {
    let xds = subnet.addr(1, net::free_port());
    let debug = subnet.addr(1, net::free_port());
    let child = Command::new(crossmesh_bin())
        .args(["serve", "--mesh"])
        .arg(mesh.dir.path().join("mesh.yaml"))
        .args(["--xds-address", &xds.to_string()])
        .args(["--debug-address", &debug.to_string()])
        .env(
            "RUST_LOG",
            std::env::var("CROSSMESH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .spawn()?;
    let cm = Crossmesh { child, xds, debug };
    let deadline = Instant::now() + PHASE_TIMEOUT;
    while !matches!(http_get(debug, "/ready"), Ok((200, _))) {
        if Instant::now() > deadline {
            return fail("crossmesh did not become ready");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(cm)
}

/// One HTTP/1.0 GET: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> Res<(u16, Vec<u8>)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no status")?;
    Ok((code, buf[split + 4..].to_vec()))
}

fn get_json(addr: SocketAddr, path: &str) -> Res<Value> {
    match http_get(addr, path)? {
        (200, body) => Ok(serde_json::from_slice(&body)?),
        (code, body) => fail(format!(
            "{path} answered {code}: {}",
            String::from_utf8_lossy(&body)
        )),
    }
}

/// CPU seconds (utime + stime) of a process.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (n(11) + n(12)) / 100.0
}

fn gzip_len(body: &[u8]) -> Option<usize> {
    let mut c = Command::new("gzip")
        .arg("-6c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let mut stdin = c.stdin.take()?;
    let body = body.to_vec();
    let w = std::thread::spawn(move || stdin.write_all(&body));
    let mut out = Vec::new();
    c.stdout.take()?.read_to_end(&mut out).ok()?;
    let _ = w.join();
    c.wait().ok()?.success().then_some(out.len())
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------- proxies

/// Per resource (name, version): the names it makes a proxy subscribe to (a
/// cluster's EDS name, a listener's RDS route names), decoded once for all
/// proxies.
#[derive(Default)]
struct Decoded(Mutex<HashMap<(String, String), Arc<Vec<String>>>>);

impl Decoded {
    fn names(&self, t: TypeUrl, name: &str, version: &str, value: &[u8]) -> Res<Arc<Vec<String>>> {
        let key = (name.to_string(), version.to_string());
        if let Some(v) = self.0.lock().map_err(|_| "poisoned")?.get(&key) {
            return Ok(v.clone());
        }
        let mut out = Vec::new();
        match t {
            TypeUrl::Cluster => {
                let c = Cluster::decode(value)?;
                if c.cluster_discovery_type
                    == Some(cluster::ClusterDiscoveryType::Type(
                        cluster::DiscoveryType::Eds as i32,
                    ))
                {
                    let sn = c
                        .eds_cluster_config
                        .as_ref()
                        .map(|e| e.service_name.clone())
                        .filter(|s| !s.is_empty())
                        .unwrap_or(c.name);
                    out.push(sn);
                }
            }
            TypeUrl::Listener => {
                let l = Listener::decode(value)?;
                for fc in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
                    for f in &fc.filters {
                        if let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type {
                            if any.type_url.ends_with("HttpConnectionManager") {
                                let hcm = HttpConnectionManager::decode(any.value.as_slice())?;
                                if let Some(http_connection_manager::RouteSpecifier::Rds(r)) =
                                    hcm.route_specifier
                                {
                                    out.push(r.route_config_name);
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        let v = Arc::new(out);
        self.0
            .lock()
            .map_err(|_| "poisoned")?
            .insert(key, v.clone());
        Ok(v)
    }
}

fn node(i: usize) -> Node {
    let ip = Ipv4Addr::from(0x0b00_0000u32 + i as u32);
    let s = |v: &str| PbValue {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let cluster = format!("c{}", i % 2);
    Node {
        id: format!("sidecar~{ip}~load-{i}.{NS}~{NS}.svc.{DOMAIN}"),
        cluster: "load".into(),
        metadata: Some(Struct {
            fields: [
                ("NAMESPACE".to_string(), s(NS)),
                ("CLUSTER_ID".to_string(), s(&cluster)),
                ("SERVICE_ACCOUNT".to_string(), s("load")),
            ]
            .into(),
        }),
        ..Default::default()
    }
}

/// One simulated Envoy on Delta ADS; bumps `synced` once it has ACKed a
/// response of each of the four types. Runs until the stream ends.
async fn proxy(
    i: usize,
    chan: tonic::transport::Channel,
    decoded: Arc<Decoded>,
    synced: Arc<AtomicUsize>,
) -> Res<()> {
    let node = node(i);
    let mut client = AggregatedDiscoveryServiceClient::new(chan).max_decoding_message_size(1 << 30);
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    let req = |t: TypeUrl, sub: Vec<String>, nonce: String| DeltaDiscoveryRequest {
        node: Some(node.clone()),
        type_url: t.as_str().to_string(),
        resource_names_subscribe: sub,
        response_nonce: nonce,
        ..Default::default()
    };
    tx.send(req(TypeUrl::Cluster, vec![], String::new()))
        .await?;
    tx.send(req(TypeUrl::Listener, vec![], String::new()))
        .await?;
    let mut stream = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut acked = [false; 4];
    let mut subscribed: [std::collections::HashSet<String>; 2] = Default::default();
    let mut counted = false;
    while let Some(resp) = stream.message().await? {
        let Some(t) = TYPES.iter().position(|t| t.as_str() == resp.type_url) else {
            tx.send(req(TypeUrl::Secret, vec![], resp.nonce)).await?;
            continue;
        };
        let mut more = Vec::new();
        if matches!(TYPES[t], TypeUrl::Cluster | TypeUrl::Listener) {
            for r in &resp.resources {
                let Some(any) = &r.resource else { continue };
                for n in decoded
                    .names(TYPES[t], &r.name, &r.version, &any.value)?
                    .iter()
                {
                    if subscribed[t].insert(n.clone()) {
                        more.push(n.clone());
                    }
                }
            }
        }
        let mut ack = req(TYPES[t], vec![], resp.nonce);
        ack.node = None;
        tx.send(ack).await?;
        acked[t] = true;
        if !more.is_empty() {
            let follow = if TYPES[t] == TypeUrl::Cluster {
                TypeUrl::Endpoint
            } else {
                TypeUrl::Route
            };
            tx.send(req(follow, more, String::new())).await?;
        }
        if !counted && acked.iter().all(|a| *a) {
            counted = true;
            synced.fetch_add(1, Ordering::AcqRel);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- browser

/// chromedriver and one headless Chromium session, over WebDriver's HTTP API.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Res<Browser> {
        let port = net::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let profile = tempfile::tempdir()?;
        let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--disable-dev-shm-usage", "--window-size=1500,1000",
                     format!("--user-data-dir={}", profile.path().display())]
        }}}});
        let deadline = Instant::now() + Duration::from_secs(30);
        let session = loop {
            let r = http
                .post(format!("{base}/session"))
                .json(&caps)
                .send()
                .await;
            if let Ok(r) = r {
                let v: Value = r.json().await?;
                if let Some(s) = v["value"]["sessionId"].as_str() {
                    break s.to_string();
                }
            }
            if Instant::now() > deadline {
                return fail("no chromedriver session");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        Ok(Browser {
            driver,
            base,
            session,
            http,
            _profile: profile,
        })
    }

    async fn cmd(&self, path: &str, body: Value) -> Res<Value> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let v: Value = self.http.post(url).json(&body).send().await?.json().await?;
        Ok(v["value"].clone())
    }

    async fn js(&self, script: &str) -> Res<Value> {
        self.cmd("/execute/sync", json!({ "script": script, "args": [] }))
            .await
    }

    /// Open `url` in a fresh document; milliseconds from navigation start to
    /// the first render of `view`, then of one later refresh (the page's own
    /// render time, and whether it found the data unchanged).
    async fn time_view(&self, url: &str, view: &str) -> Res<(f64, String)> {
        self.cmd("/url", json!({ "url": "about:blank" })).await?;
        self.cmd("/url", json!({ "url": url })).await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let first = loop {
            let v = self
                .js(&format!(
                    "return document.body && document.body.dataset.view === {view:?} && document.body.dataset.loaded \
                     ? Number(document.body.dataset.loaded) - performance.timeOrigin : null;"
                ))
                .await?;
            if let Some(ms) = v.as_f64() {
                break ms;
            }
            if Instant::now() > deadline {
                return fail(format!("view {view} did not render"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let loaded = self.js("return document.body.dataset.loaded;").await?;
        // One refresh (every 3 s) later: its render time as the page reports it.
        loop {
            let v = self.js("return document.body.dataset.loaded;").await?;
            if v != loaded {
                break;
            }
            if Instant::now() > deadline {
                return fail(format!("view {view} did not refresh"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let refresh = self
            .js("return document.getElementById('refresh').textContent;")
            .await?;
        let refresh = refresh
            .as_str()
            .and_then(|t| t.split_once(" · "))
            .map(|x| x.1.to_string())
            .unwrap_or_default();
        Ok((first, refresh))
    }

    async fn close(mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = self.http.delete(url).send().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

// ---------------------------------------------------------------- run

fn main() {
    let code = match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("dashboard: FAILED: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn run() -> Res<()> {
    let a = parse_args()?;
    eprintln!("dashboard: {a:?}, load {}", load());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let subnet = net::Subnet::claim();
    let mesh = Mesh::write(&a)?;
    let t0 = Instant::now();
    let cm = spawn(&mesh, &subnet)?;
    eprintln!("crossmesh ready in {:.1} s", t0.elapsed().as_secs_f64());
    rt.block_on(async {
        // Connect the proxies, N/100 per HTTP/2 connection.
        let decoded = Arc::new(Decoded::default());
        let synced = Arc::new(AtomicUsize::new(0));
        let mut chans = Vec::new();
        for _ in 0..a.proxies.div_ceil(100) {
            let ep = tonic::transport::Endpoint::from_shared(format!("http://{}", cm.xds))?
                .initial_stream_window_size(16 << 20)
                .initial_connection_window_size(64 << 20);
            chans.push(ep.connect().await?);
        }
        let t1 = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..a.proxies {
            let (c, d, s) = (chans[i % chans.len()].clone(), decoded.clone(), synced.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = proxy(i, c, d, s).await {
                    eprintln!("proxy {i}: {e}");
                }
            }));
        }
        while synced.load(Ordering::Acquire) < a.proxies {
            if t1.elapsed() > PHASE_TIMEOUT {
                return fail(format!(
                    "{} of {} proxies synced",
                    synced.load(Ordering::Acquire),
                    a.proxies
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "{} proxies synced in {:.1} s, load {}",
            a.proxies,
            t1.elapsed().as_secs_f64(),
            load()
        );
        let debug = cm.debug;
        let pid = cm.child.id();
        let probe = host(0);
        let checks = tokio::task::spawn_blocking({
            let a = a.clone();
            let probe = probe.clone();
            let gws = mesh.gateways;
            move || check(debug, &a, &probe, gws)
        });
        checks.await??;

        // The endpoints, each as the views read it.
        let paths = [
            ("Mesh", "/debug/meshz".to_string()),
            ("Mesh, Config", "/debug/clusterz".to_string()),
            ("Services", "/debug/servicez?limit=500&filter=".to_string()),
            ("Service", format!("/debug/servicez?host={probe}")),
            ("Proxies", "/debug/syncz".to_string()),
            ("Config", "/debug/configz".to_string()),
            ("Topology", "/debug/graphz?window=60".to_string()),
            ("(none)", "/debug/registryz".to_string()),
        ];
        let repeat = a.repeat;
        let rows = tokio::task::spawn_blocking(move || -> Res<Vec<String>> {
            let mut rows = Vec::new();
            for (view, path) in paths {
                let mut times = Vec::new();
                let cpu0 = cpu_seconds(pid);
                let mut body = Vec::new();
                for _ in 0..repeat {
                    let t = Instant::now();
                    let (code, b) = http_get(debug, &path)?;
                    times.push(t.elapsed().as_secs_f64() * 1000.0);
                    if code != 200 {
                        return fail(format!("{path} answered {code}"));
                    }
                    body = b;
                }
                let cpu = (cpu_seconds(pid) - cpu0) * 1000.0 / repeat as f64;
                times.sort_by(f64::total_cmp);
                let gz = gzip_len(&body).map_or("-".into(), |n| format!("{:.1}", n as f64 / 1024.0));
                rows.push(format!(
                    "| {view} | `{path}` | {:.1} | {gz} | {:.1} | {:.1} | {cpu:.0} |",
                    body.len() as f64 / 1024.0,
                    times[times.len() / 2],
                    times[times.len() - 1],
                ));
            }
            Ok(rows)
        })
        .await??;
        println!(
            "\n{} proxies, {} services x {} clusters x {} pods, {} requests each, load {}",
            a.proxies,
            a.services,
            a.clusters,
            a.pods,
            a.repeat,
            load()
        );
        println!("| view | endpoint | KiB | gzip KiB (not served) | p50 ms | max ms | crossmesh CPU ms/request |");
        println!("|---|---|---|---|---|---|---|");
        for r in rows {
            println!("{r}");
        }

        if a.browser {
            if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
                let b = Browser::start().await?;
                let ui = format!("http://{debug}/ui/");
                println!("\nviews in headless Chromium, load {}", load());
                println!("| view | first render ms (navigation start to drawn) | one refresh later |");
                println!("|---|---|---|");
                for (name, hash) in [
                    ("topology", "#/topology".to_string()),
                    ("mesh", "#/mesh".to_string()),
                    ("service", "#/service".to_string()),
                    ("service", format!("#/service/{probe}")),
                    ("proxies", "#/proxies".to_string()),
                    ("config", "#/config".to_string()),
                ] {
                    let (first, refresh) = b.time_view(&format!("{ui}{hash}"), name).await?;
                    println!("| `{hash}` | {first:.0} | {refresh} |");
                }
                b.close().await;
            } else {
                println!("\nno {CHROMIUM} / {CHROMEDRIVER}: view timings skipped");
            }
        }
        for t in tasks {
            t.abort();
        }
        Ok(())
    })?;
    drop(cm);
    Ok(())
}

/// What the views rely on, checked against the mesh written.
fn check(debug: SocketAddr, a: &Args, probe: &str, gws: [Ipv4Addr; 2]) -> Res<()> {
    let mesh = get_json(debug, "/debug/meshz")?;
    let c = &mesh["counts"];
    let want = json!({
        "clusters": a.clusters, "services": a.services,
        "endpoints": a.services * a.clusters * a.pods,
        "readyEndpoints": a.services * a.clusters * a.pods,
        "proxies": a.proxies,
    });
    // The east-west gateway Service is a service without endpoints.
    let mut c = c.clone();
    if c["services"] == json!(a.services + 1) {
        c["services"] = json!(a.services);
    }
    if c != want {
        return fail(format!("meshz counts {c}, want {want}"));
    }
    let gw = |net: &str| -> Vec<String> {
        mesh["networks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["name"] == net)
            .flat_map(|n| n["gateways"].as_array().cloned().unwrap_or_default())
            .map(|g| {
                format!(
                    "{}:{} {}",
                    g["address"].as_str().unwrap_or(""),
                    g["port"],
                    g["from"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    if gw("net-a") != [format!("{}:15443 meshFile", gws[0])]
        || gw("net-b") != [format!("{}:15443 service", gws[1])]
    {
        return fail(format!("meshz gateways: {}", mesh["networks"]));
    }
    let list = get_json(debug, "/debug/servicez?limit=500&filter=")?;
    let shown = list["services"].as_array().map_or(0, Vec::len);
    let total = list["total"].as_u64().unwrap_or(0) as usize;
    if total != c["services"].as_u64().unwrap_or(0) as usize + 1 || shown != total.min(500) {
        return fail(format!("servicez list shows {shown} of {total}"));
    }
    let one = get_json(debug, &format!("/debug/servicez?host={probe}"))?;
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["namespace"].as_str().unwrap_or(""),
                    o["name"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    if names(&one["virtualServices"]) != [format!("{NS}/svc-0")]
        || names(&one["destinationRules"]["rules"]) != [format!("{NS}/svc-0")]
        || one["proxies"].as_array().map_or(0, Vec::len) != a.proxies
    {
        return fail(format!(
            "servicez of {probe}: vs {:?}, dr {:?}, {} receivers",
            names(&one["virtualServices"]),
            names(&one["destinationRules"]["rules"]),
            one["proxies"].as_array().map_or(0, Vec::len)
        ));
    }
    Ok(())
}
