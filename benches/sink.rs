//! What Envoy's metrics sink (`envoy.stat_sinks.metrics_service`, served by
//! `telemetry::sink`) and the live service graph cost crossmesh
//! (BENCHMARKS.md "Metrics sink: cost per proxy", docs/OBSERVABILITY.md).
//!
//! Run: `cargo bench --bench sink -- [options]` (see `usage()`). Two parts,
//! each against its own `crossmesh serve` (a child process fed by manifest
//! files: S Services with one Pod each):
//!
//! 1. **Real Envoys** (`--envoys N`): N real Envoy sidecars (`--concurrency 1`,
//!    NONE interception, one outbound cluster per Service, no traffic),
//!    bootstrapped by `crossmesh bootstrap`, once per bootstrap variant
//!    (`--stats-sink false`, `--stats-matcher all`, the default `graph`
//!    matcher), each variant with a fresh crossmesh. After a warm-up, over
//!    the measured window: crossmesh's CPU (utime + stime from `/proc`), the
//!    Envoys' CPU, and the bytes the Envoys sent to crossmesh
//!    (`cluster.xds-grpc.upstream_cx_tx_bytes_total`, ADS included).
//! 2. **At scale** (`--clients N`): first one real Envoy sidecar (default
//!    matcher) with traffic on two clusters (a pod answering 200 and 503, and
//!    one refusing connections) flushes into a capture sink in this process:
//!    its last message is the shape every simulated client sends (its own
//!    stats, and per busy cluster the families Envoy sent for the busy
//!    clusters, renamed). Then N simulated sidecars (2 per workload) open
//!    `StreamMetrics` streams on the plaintext xDS port, each with `--busy K`
//!    clusters carrying `--requests R` requests per flush (one 5xx), client 0
//!    with `--wide W` busy clusters, flushing every `--flush` seconds at
//!    spread phases. Measured: crossmesh's CPU over the window less its idle
//!    rate before the clients came, its RSS growth, the bytes sent, and one
//!    `/debug/graphz?window=600` rendering.
//!
//! Checks (a failed one fails the run): every proxy shows on `/debug/graphz`
//! connected; under the limits the graph keeps exactly the edges sent and
//! counts exactly the requests sent; beyond them it keeps `maxEdges` in all,
//! at most `maxEdgesPerProxy` per proxy (client 0 exactly that many), and no
//! edge has more than 60 buckets of history. Run without arguments (as
//! `cargo test --all-targets` does) it is a small smoke run of both parts.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use envoy_types::pb::envoy::service::metrics::v3::stream_metrics_message::Identifier;
use envoy_types::pb::envoy::service::metrics::v3::{StreamMetricsMessage, StreamMetricsResponse};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as PbValue};
use envoy_types::pb::io::prometheus::client::MetricFamily;
use prost::Message;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

#[path = "../tests/support/net.rs"]
#[allow(dead_code)]
mod net;

const NS: &str = "bench";
const CLUSTER: &str = "c1";
/// Longest wait for any condition before the run fails.
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);

type Err = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, Err>;

fn fail<T>(msg: impl Into<String>) -> Res<T> {
    Err(msg.into().into())
}

// ---------------------------------------------------------------- arguments

#[derive(Debug, Clone)]
struct Args {
    envoys: usize,
    clients: usize,
    services: usize,
    busy: usize,
    wide: usize,
    requests: u64,
    flush: u64,
    warmup: f64,
    measure: f64,
    idle: f64,
    max_edges_per_proxy: usize,
    max_edges: usize,
}

fn usage() -> &'static str {
    "cargo bench --bench sink -- [options]   (no options: a small smoke run)
  --envoys N        part 1: real Envoy sidecars per bootstrap variant (default 1; 0 skips)
  --clients N       part 2: simulated sink clients (default 20; 0 skips)
  --services S      Services, one Pod each (default 20)
  --busy K          part 2: clusters with traffic per client (default 3)
  --wide W          part 2: client 0's clusters with traffic (default 0: K)
  --requests R      part 2: requests per busy cluster per flush (default 10)
  --flush SECS      stats_flush_interval (default 1; Envoy's default is 5)
  --warmup SECS     part 1: after every Envoy reports, before measuring (default 1)
  --measure SECS    measured window of each part (default 2)
  --idle SECS       part 2: crossmesh's idle CPU rate, before the clients (default 1)
  --max-edges-per-proxy N, --max-edges N   the mesh file's serviceGraph limits
                    (default crossmesh's: 256, 20000)"
}

fn parse_args() -> Res<Args> {
    let mut a = Args {
        envoys: 1,
        clients: 20,
        services: 20,
        busy: 3,
        wide: 0,
        requests: 10,
        flush: 1,
        warmup: 1.0,
        measure: 2.0,
        idle: 1.0,
        max_edges_per_proxy: 256,
        max_edges: 20_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| -> Res<String> {
            it.next()
                .ok_or_else(|| format!("{name} needs a value\n{}", usage()).into())
        };
        match arg.as_str() {
            "--envoys" => a.envoys = val("--envoys")?.parse()?,
            "--clients" => a.clients = val("--clients")?.parse()?,
            "--services" => a.services = val("--services")?.parse()?,
            "--busy" => a.busy = val("--busy")?.parse()?,
            "--wide" => a.wide = val("--wide")?.parse()?,
            "--requests" => a.requests = val("--requests")?.parse()?,
            "--flush" => a.flush = val("--flush")?.parse()?,
            "--warmup" => a.warmup = val("--warmup")?.parse()?,
            "--measure" => a.measure = val("--measure")?.parse()?,
            "--idle" => a.idle = val("--idle")?.parse()?,
            "--max-edges-per-proxy" => {
                a.max_edges_per_proxy = val("--max-edges-per-proxy")?.parse()?
            }
            "--max-edges" => a.max_edges = val("--max-edges")?.parse()?,
            // cargo bench passes --bench to every bench target.
            "--bench" => {}
            "-h" | "--help" => return fail(usage()),
            other => return fail(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    if a.wide == 0 {
        a.wide = a.busy;
    }
    if a.services < 2 || a.busy == 0 || a.flush == 0 || a.requests == 0 {
        return fail("--services must be at least 2; --busy, --flush and --requests at least 1");
    }
    if a.busy > a.services || a.wide > a.services {
        return fail("--busy and --wide name distinct Services: at most --services");
    }
    if a.envoys > 200 {
        return fail("--envoys: at most 200 (one loopback address each)");
    }
    Ok(a)
}

// ---------------------------------------------------------------- processes

/// CPU seconds (user + system) and current RSS (MiB) of a process.
fn proc_stats(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime), counted from `state` (field 3).
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())?;
    Some((ticks / 100.0, rss_kb / 1024.0))
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One HTTP/1.1 GET with `Connection: close` (Envoy's admin refuses HTTP/1.0):
/// (status, body), a chunked body decoded.
fn http_get(addr: SocketAddr, path: &str) -> Res<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let buf = String::from_utf8_lossy(&buf);
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            format!(
                "GET {path}: no status in {:?}",
                &head[..head.len().min(200)]
            )
        })?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    if !chunked {
        return Ok((code, body.to_string()));
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].strip_prefix("\r\n").unwrap_or(&tail[n..]);
    }
    Ok((code, out))
}

fn get_json(addr: SocketAddr, path: &str) -> Res<Value> {
    let (code, body) = http_get(addr, path)?;
    if code != 200 {
        return fail(format!("GET {path}: {code} {body}"));
    }
    Ok(serde_json::from_str(&body)?)
}

/// Poll `check` every 100 ms until it returns `Ok`, or fail after `timeout`.
fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Res<T>) -> Res<T> {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= timeout => {
                return fail(format!(
                    "timed out after {timeout:?} waiting for {what}: {e}"
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A child process, killed on drop.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The crossmesh binary: `$CROSSMESH_BIN` (scripts/test sets it to the
/// release build) or the one Cargo built for this target.
fn crossmesh_bin() -> String {
    match std::env::var("CROSSMESH_BIN") {
        Ok(b) if !b.is_empty() => b,
        _ => env!("CARGO_BIN_EXE_crossmesh").to_string(),
    }
}

/// `$ENVOY_BIN`, `./.venv/bin/envoy`, or `envoy` on PATH.
fn envoy_bin() -> Res<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy");
    if venv.exists() {
        return Ok(venv);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if dir.join("envoy").is_file() {
            return Ok(dir.join("envoy"));
        }
    }
    fail("no Envoy binary: set ENVOY_BIN, or run scripts/setup to install ./.venv/bin/envoy")
}

fn free_addr() -> Res<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

// ---------------------------------------------------------------- the mesh

/// A mesh on disk: one cluster of Services `svc-<s>` (all on `svc_port`),
/// one Pod each.
struct Mesh {
    dir: tempfile::TempDir,
    svc_port: u16,
    pod_port: u16,
}

impl Mesh {
    /// Pods of `svc-0` and `svc-1` on `live[0]` and `live[1]` (the capture's
    /// traffic goes there), every other Pod on a 10.0.0.0/8 address nothing
    /// ever dials.
    fn new(a: &Args, live: [Ipv4Addr; 2], pod_port: u16) -> Res<Mesh> {
        let dir = tempfile::Builder::new()
            .prefix("crossmesh-sink-bench-")
            .tempdir()?;
        let svc_port = net::free_port();
        std::fs::create_dir_all(dir.path().join("clusters").join(CLUSTER))?;
        std::fs::create_dir_all(dir.path().join("istio"))?;
        std::fs::write(
            dir.path().join("mesh.yaml"),
            format!(
                "trustDomain: cluster.local\ndomainSuffix: cluster.local\nclusters:\n- name: {CLUSTER}\n  manifests: clusters/{CLUSTER}\nconfig:\n- manifests: istio\nserviceGraph:\n  maxEdgesPerProxy: {}\n  maxEdges: {}\n",
                a.max_edges_per_proxy, a.max_edges
            ),
        )?;
        let mut y = String::new();
        for s in 0..a.services {
            let ip = match s {
                0 | 1 => live[s],
                _ => Ipv4Addr::from(0x0a00_0000u32 + s as u32),
            };
            y.push_str(&format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{s}\n  namespace: {NS}\nspec:\n  ports:\n  - port: {svc_port}\n    name: http\n    targetPort: {pod_port}\n  selector:\n    app: svc-{s}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: svc-{s}-0\n  namespace: {NS}\n  labels:\n    app: svc-{s}\nspec:\n  containers:\n  - name: app\n    image: app\n    ports:\n    - containerPort: {pod_port}\n      name: http\nstatus:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n  conditions:\n  - type: Ready\n    status: \"True\"\n---\n"
            ));
        }
        std::fs::write(
            dir.path()
                .join("clusters")
                .join(CLUSTER)
                .join("services.yaml"),
            y,
        )?;
        Ok(Mesh {
            dir,
            svc_port,
            pod_port,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Istio's cluster name of `svc-<s>`.
    fn cluster_name(&self, s: usize) -> String {
        format!("outbound|{}||svc-{s}.{NS}.svc.cluster.local", self.svc_port)
    }
}

/// A running `crossmesh serve`.
struct Crossmesh {
    proc: Proc,
    xds: SocketAddr,
    debug: SocketAddr,
}

impl Crossmesh {
    fn start(mesh: &Mesh, run: &str) -> Res<Crossmesh> {
        let xds = free_addr()?;
        let debug = free_addr()?;
        let log = std::fs::File::create(mesh.path(&format!("crossmesh-{run}.log")))?;
        let child = Command::new(crossmesh_bin())
            .arg("serve")
            .arg("--mesh")
            .arg(mesh.path("mesh.yaml"))
            .args(["--xds-address", &xds.to_string()])
            .args(["--debug-address", &debug.to_string()])
            .env(
                "RUST_LOG",
                std::env::var("CROSSMESH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let cm = Crossmesh {
            proc: Proc(child),
            xds,
            debug,
        };
        wait_until("crossmesh /ready", PHASE_TIMEOUT, || {
            match http_get(debug, "/ready")? {
                (200, _) => Ok(()),
                (c, b) => fail(format!("{c} {b}")),
            }
        })?;
        Ok(cm)
    }

    fn stats(&self) -> Res<(f64, f64)> {
        proc_stats(self.proc.pid()).ok_or_else(|| "crossmesh exited".into())
    }

    fn graph(&self) -> Res<Value> {
        get_json(self.debug, "/debug/graphz?window=600")
    }

    /// Wait until `/debug/graphz` lists `n` connected proxies.
    fn wait_connected(&self, n: usize) -> Res<Value> {
        wait_until(
            &format!("{n} connected proxies on /debug/graphz"),
            PHASE_TIMEOUT,
            || {
                let g = self.graph()?;
                let connected = g["proxies"]
                    .as_array()
                    .map(|p| p.iter().filter(|p| p["connected"] == true).count())
                    .unwrap_or(0);
                if connected == n {
                    Ok(g)
                } else {
                    fail(format!("{connected} connected"))
                }
            },
        )
    }
}

// ---------------------------------------------------------------- real Envoys

/// A running Envoy, killed on drop.
struct Envoy {
    proc: Proc,
    admin: SocketAddr,
}

impl Envoy {
    fn start(dir: &Path, name: &str, bootstrap: &str) -> Res<Envoy> {
        let cfg = dir.join(format!("{name}.json"));
        std::fs::write(&cfg, bootstrap)?;
        let admin_path = dir.join(format!("{name}.admin"));
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let child = Command::new(envoy_bin()?)
            .arg("-c")
            .arg(&cfg)
            .args([
                "--use-dynamic-base-id",
                "--concurrency",
                "1",
                "--log-level",
                "warn",
            ])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut proc = Proc(child);
        let admin = wait_until(
            &format!("envoy {name} admin address"),
            Duration::from_secs(30),
            || {
                if let Ok(Some(st)) = proc.0.try_wait() {
                    return fail(format!(
                        "envoy {name} exited with {st}: see {}",
                        dir.display()
                    ));
                }
                let t = std::fs::read_to_string(&admin_path).unwrap_or_default();
                Ok(t.trim().parse::<SocketAddr>()?)
            },
        )?;
        let e = Envoy { proc, admin };
        wait_until(
            &format!("envoy {name} /ready"),
            PHASE_TIMEOUT,
            || match http_get(admin, "/ready")? {
                (200, _) => Ok(()),
                (c, b) => fail(format!("{c} {}", b.trim())),
            },
        )?;
        Ok(e)
    }

    fn stat(&self, name: &str) -> Res<u64> {
        let (_, body) = http_get(
            self.admin,
            &format!("/stats?filter=^{}$", name.replace('.', "\\.")),
        )?;
        body.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(": ")?;
                (k == name).then(|| v.trim().parse().ok()).flatten()
            })
            .ok_or_else(|| format!("no stat {name} in {body:?}").into())
    }

    /// Stats Envoy keeps (lines of `/stats`).
    fn stat_count(&self) -> Res<usize> {
        Ok(http_get(self.admin, "/stats")?.1.lines().count())
    }
}

/// `crossmesh bootstrap` for sidecar `name` at `ip`, plus `extra` flags.
fn bootstrap(
    cm: &Crossmesh,
    name: &str,
    app: &str,
    ip: Ipv4Addr,
    flush: u64,
    extra: &[&str],
) -> Res<String> {
    let out = Command::new(crossmesh_bin())
        .args([
            "bootstrap",
            "--role",
            "sidecar",
            "--name",
            name,
            "--namespace",
            NS,
        ])
        .args(["--ip", &ip.to_string(), "--labels", &format!("app={app}")])
        .args(["--xds-address", &cm.xds.to_string()])
        .args([
            "--admin-port",
            "0",
            "--cluster-id",
            CLUSTER,
            "--interception",
            "none",
        ])
        .args(["--stats-flush-interval", &flush.to_string()])
        .args(extra)
        .output()?;
    if !out.status.success() {
        return fail(format!(
            "crossmesh bootstrap: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // Envoy reads JSON as YAML; parse once to fail early on a bad bootstrap.
    let v: Value = serde_saphyr::from_str(&String::from_utf8(out.stdout)?)?;
    Ok(v.to_string())
}

struct EnvoyRow {
    variant: &'static str,
    stats: usize,
    bytes_per_proxy_s: f64,
    cm_cpu_ms_per_proxy_s: f64,
    envoy_cpu_s: f64,
    rss_mb: f64,
    window_s: f64,
    load: String,
}

/// Part 1: one variant.
fn envoy_variant(
    a: &Args,
    mesh: &Mesh,
    subnet: &net::Subnet,
    variant: &'static str,
    flags: &[&str],
) -> Res<EnvoyRow> {
    let cm = Crossmesh::start(mesh, variant)?;
    let mut envoys = Vec::new();
    for i in 0..a.envoys {
        let name = format!("sidecar-{i}");
        let b = bootstrap(
            &cm,
            &name,
            "client",
            subnet.ip(20 + i as u8),
            a.flush,
            flags,
        )?;
        envoys.push(Envoy::start(
            mesh.dir.path(),
            &format!("{variant}-{name}"),
            &b,
        )?);
    }
    let sink = !flags.contains(&"false");
    cm.wait_connected(if sink { a.envoys } else { 0 })?;
    std::thread::sleep(Duration::from_secs_f64(a.warmup));
    let sample = |envoys: &[Envoy]| -> Res<(Instant, f64, f64, u64)> {
        let (cpu, _) = cm.stats()?;
        let mut ecpu = 0.0;
        let mut bytes = 0;
        for e in envoys {
            ecpu += proc_stats(e.proc.pid()).ok_or("envoy exited")?.0;
            bytes += e.stat("cluster.xds-grpc.upstream_cx_tx_bytes_total")?;
        }
        Ok((Instant::now(), cpu, ecpu, bytes))
    };
    let l = load();
    let (t0, c0, e0, b0) = sample(&envoys)?;
    std::thread::sleep(Duration::from_secs_f64(a.measure));
    let (t1, c1, e1, b1) = sample(&envoys)?;
    let window = (t1 - t0).as_secs_f64();
    let n = a.envoys.max(1) as f64;
    // Still every proxy there, reporting (or none, sink off).
    let g = cm.wait_connected(if sink { a.envoys } else { 0 })?;
    if sink {
        let reports: u64 = g["proxies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["reports"].as_u64())
            .sum();
        if reports < a.envoys as u64 {
            return fail(format!(
                "{variant}: {reports} reports from {} Envoys",
                a.envoys
            ));
        }
    }
    Ok(EnvoyRow {
        variant,
        stats: envoys
            .first()
            .map(Envoy::stat_count)
            .transpose()?
            .unwrap_or(0),
        bytes_per_proxy_s: (b1 - b0) as f64 / n / window,
        cm_cpu_ms_per_proxy_s: (c1 - c0) * 1000.0 / n / window,
        envoy_cpu_s: e1 - e0,
        rss_mb: cm.stats()?.1,
        window_s: window,
        load: l,
    })
}

fn real_envoys(a: &Args) -> Res<()> {
    let subnet = net::Subnet::claim();
    let mesh = Mesh::new(a, [subnet.ip(10), subnet.ip(11)], net::free_port())?;
    let variants: [(&'static str, &[&str]); 3] = [
        ("`--stats-sink false`", &["--stats-sink", "false"]),
        ("`--stats-matcher all`", &["--stats-matcher", "all"]),
        ("default (`--stats-matcher graph`)", &[]),
    ];
    let mut rows = Vec::new();
    for (name, flags) in variants {
        eprintln!("sink: {} Envoys, {name}", a.envoys);
        rows.push(envoy_variant(a, &mesh, &subnet, name, flags)?);
    }
    println!(
        "\n{} real Envoy sidecars, {} Services (one outbound cluster each, no traffic), flush every {} s\n",
        a.envoys, a.services, a.flush
    );
    println!("| bootstrap | stats per Envoy | bytes/s per proxy to crossmesh | crossmesh CPU per proxy | Envoy CPU ({} Envoys) | crossmesh RSS | load |", a.envoys);
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} B/s | {:.3} ms/s | {:.2} s / {:.0} s | {:.1} MiB | {} |",
            r.variant,
            r.stats,
            r.bytes_per_proxy_s,
            r.cm_cpu_ms_per_proxy_s,
            r.envoy_cpu_s,
            r.window_s,
            r.rss_mb,
            r.load
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- the capture

/// A metrics sink in this process that keeps every message it gets.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<StreamMetricsMessage>>>);

#[tonic::async_trait]
impl MetricsService for Capture {
    async fn stream_metrics(
        &self,
        request: tonic::Request<tonic::Streaming<StreamMetricsMessage>>,
    ) -> Result<tonic::Response<StreamMetricsResponse>, tonic::Status> {
        let mut s = request.into_inner();
        while let Some(m) = s.message().await? {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(m);
        }
        Ok(tonic::Response::new(StreamMetricsResponse {}))
    }
}

/// A pod answering every 5th request 503, the others 200 (HTTP/1.1, kept alive).
async fn pod(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let n = Arc::new(AtomicU64::new(0));
    while let Ok((mut s, _)) = listener.accept().await {
        let n = n.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
                let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
                buf.drain(..end);
                let status = if n.fetch_add(1, Ordering::Relaxed) % 5 == 4 {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let r = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\nok");
                if s.write_all(r.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// One request through the capture Envoy's egress listener; its status.
fn request(addr: SocketAddr, host: &str) -> Res<u16> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

/// What a real sidecar sends per flush: its own stats (`base`) and, per
/// cluster with traffic, the families of one (`per_cluster`, names relative
/// to `cluster.<NAME>.`).
struct Shape {
    base: Vec<MetricFamily>,
    per_cluster: Vec<MetricFamily>,
    /// Encoded size of the captured message.
    captured_bytes: usize,
}

/// Run one real Envoy sidecar against `cm` with its sink turned to a capture
/// server here, send traffic to `svc-0` (200 and 503) and `svc-1` (refused),
/// and take the shape of its last flush.
fn capture(
    rt: &tokio::runtime::Runtime,
    a: &Args,
    mesh: &Mesh,
    cm: &Crossmesh,
    subnet: &net::Subnet,
) -> Res<Shape> {
    let cap = Capture::default();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let cap_addr = listener.local_addr()?;
    let server = {
        let cap = cap.clone();
        rt.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(MetricsServiceServer::new(cap))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
        })
    };
    let pod_listener = rt.block_on(tokio::net::TcpListener::bind((
        subnet.ip(10),
        mesh.pod_port,
    )))?;
    let pod_task = rt.spawn(pod(pod_listener));
    let ip = subnet.ip(1);
    let b = bootstrap(cm, "capture-0", "capture", ip, a.flush, &[])?;
    let mut v: Value = serde_json::from_str(&b)?;
    v["stats_sinks"][0]["typed_config"]["grpc_service"] =
        json!({"envoy_grpc": {"cluster_name": "sink-capture"}});
    let clusters = v["static_resources"]["clusters"]
        .as_array_mut()
        .ok_or("no static clusters")?;
    clusters.push(json!({
        "name": "sink-capture",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "sink-capture", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": cap_addr.port()}}}}]}]},
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
    }));
    let envoy = Envoy::start(mesh.dir.path(), "capture", &v.to_string())?;
    let egress = SocketAddr::from((ip, mesh.svc_port));
    let (c0, c1) = (mesh.cluster_name(0), mesh.cluster_name(1));
    wait_until(
        "the capture Envoy routing to svc-0",
        PHASE_TIMEOUT,
        || match request(egress, "svc-0")? {
            200 | 503 => Ok(()),
            c => fail(format!("status {c}")),
        },
    )?;
    for _ in 0..20 {
        request(egress, "svc-0")?;
    }
    for _ in 0..3 {
        request(egress, "svc-1")?;
    }
    let has = |m: &StreamMetricsMessage, c: &str, stat: &str| {
        let name = format!("cluster.{c}.{stat}");
        m.envoy_metrics
            .iter()
            .any(|f| f.name.as_deref() == Some(name.as_str()))
    };
    // The families stay in every flush once used; wait for one that has both.
    let start = cap.0.lock().unwrap_or_else(|e| e.into_inner()).len();
    let last = wait_until(
        "a captured flush with both clusters' stats",
        PHASE_TIMEOUT,
        || {
            let msgs = cap.0.lock().unwrap_or_else(|e| e.into_inner());
            match msgs.last() {
                Some(m)
                    if msgs.len() > start + 1
                        && has(m, &c0, "upstream_rq_total")
                        && has(m, &c1, "upstream_cx_connect_fail") =>
                {
                    Ok(m.clone())
                }
                _ => fail(format!("{} messages", msgs.len())),
            }
        },
    )?;
    drop(envoy);
    server.abort();
    pod_task.abort();
    let mut base = Vec::new();
    let mut per: HashMap<String, MetricFamily> = HashMap::new();
    for f in &last.envoy_metrics {
        let name = f.name.clone().unwrap_or_default();
        let rel = [&c0, &c1].iter().find_map(|c| {
            name.strip_prefix(&format!("cluster.{c}."))
                .map(str::to_string)
        });
        if let Some(rel) = rel {
            per.entry(rel.clone()).or_insert_with(|| MetricFamily {
                name: Some(rel),
                ..f.clone()
            });
        } else if name.starts_with("cluster.outbound|") {
            return fail(format!(
                "the capture Envoy reported another busy cluster: {name}"
            ));
        } else if !name.starts_with("cluster.sink-capture.") {
            base.push(f.clone());
        }
    }
    let mut per_cluster: Vec<MetricFamily> = per.into_values().collect();
    per_cluster.sort_by(|x, y| x.name.cmp(&y.name));
    Ok(Shape {
        base,
        per_cluster,
        captured_bytes: last.encoded_len(),
    })
}

// ---------------------------------------------------------------- simulated clients

fn pb_str(v: &str) -> PbValue {
    PbValue {
        kind: Some(Kind::StringValue(v.to_string())),
    }
}

/// Istio's node of simulated sidecar `i`, a pod of workload `svc-<w>`.
fn node(i: usize, w: usize) -> Node {
    let ip = Ipv4Addr::from(0x0a80_0000u32 + i as u32);
    let mut labels = HashMap::new();
    labels.insert("app".to_string(), pb_str(&format!("svc-{w}")));
    let mut fields = HashMap::new();
    fields.insert("NAMESPACE".to_string(), pb_str(NS));
    fields.insert("CLUSTER_ID".to_string(), pb_str(CLUSTER));
    fields.insert("SERVICE_ACCOUNT".to_string(), pb_str("default"));
    fields.insert(
        "LABELS".to_string(),
        PbValue {
            kind: Some(Kind::StructValue(Struct { fields: labels })),
        },
    );
    Node {
        id: format!("sidecar~{ip}~svc-{w}-p{i}.{NS}~{NS}.svc.cluster.local"),
        cluster: format!("svc-{w}.{NS}"),
        metadata: Some(Struct { fields }),
        ..Default::default()
    }
}

/// One flush of a sidecar with traffic on `busy` clusters: the captured shape,
/// with the graph's counters set to `requests` requests and one 5xx each.
fn flush_families(shape: &Shape, mesh: &Mesh, busy: &[usize], requests: u64) -> Vec<MetricFamily> {
    let mut out = shape.base.clone();
    for s in busy {
        let c = mesh.cluster_name(*s);
        for f in &shape.per_cluster {
            let rel = f.name.as_deref().unwrap_or_default();
            let mut f = f.clone();
            let set = match rel {
                "upstream_rq_total" => Some(requests as f64),
                "upstream_rq_5xx" => Some(1.0),
                "upstream_cx_connect_fail" => Some(0.0),
                _ => None,
            };
            if let Some(v) = set {
                for m in &mut f.metric {
                    if let Some(counter) = m.counter.as_mut() {
                        counter.value = Some(v);
                    }
                }
            }
            f.name = Some(format!("cluster.{c}.{rel}"));
            out.push(f);
        }
    }
    out
}

#[derive(Default)]
struct Sent {
    messages: AtomicU64,
    bytes: AtomicU64,
    requests: AtomicU64,
    failed: AtomicU64,
}

/// One simulated sidecar: the first flush with its node at once, then one
/// every `flush` from `phase` on, until `stop`.
#[allow(clippy::too_many_arguments)]
async fn client(
    ch: tonic::transport::Channel,
    first: StreamMetricsMessage,
    later: Arc<StreamMetricsMessage>,
    requests_per_flush: u64,
    flush: Duration,
    phase: Duration,
    mut stop: watch::Receiver<bool>,
    sent: Arc<Sent>,
) {
    let (tx, rx) = mpsc::channel::<StreamMetricsMessage>(2);
    let mut c = MetricsServiceClient::new(ch).max_encoding_message_size(64 << 20);
    let call = tokio::spawn(async move { c.stream_metrics(ReceiverStream::new(rx)).await });
    let count = |m: &StreamMetricsMessage| {
        sent.messages.fetch_add(1, Ordering::Relaxed);
        sent.bytes
            .fetch_add(m.encoded_len() as u64, Ordering::Relaxed);
        sent.requests
            .fetch_add(requests_per_flush, Ordering::Relaxed);
    };
    count(&first);
    if tx.send(first).await.is_err() {
        sent.failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, flush);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                let m = (*later).clone();
                count(&m);
                if tx.send(m).await.is_err() {
                    sent.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
    drop(tx);
    if !matches!(call.await, Ok(Ok(_))) {
        sent.failed.fetch_add(1, Ordering::Relaxed);
    }
}

fn at_scale(a: &Args) -> Res<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let subnet = net::Subnet::claim();
    let mesh = Mesh::new(a, [subnet.ip(10), subnet.ip(11)], net::free_port())?;
    let cm = Crossmesh::start(&mesh, "scale")?;
    let shape = capture(&rt, a, &mesh, &cm, &subnet)?;
    eprintln!(
        "sink: captured flush {} B: {} own families, {} per busy cluster",
        shape.captured_bytes,
        shape.base.len(),
        shape.per_cluster.len()
    );
    // The capture Envoy is gone; let crossmesh settle, then its idle rate.
    wait_until(
        "the capture proxy's ADS stream gone",
        PHASE_TIMEOUT,
        || match get_json(cm.debug, "/debug/syncz")? {
            Value::Array(v) if v.is_empty() => Ok(()),
            v => fail(format!("{v}")),
        },
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let (i0, rss0) = cm.stats()?;
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(a.idle));
    let idle_rate = (cm.stats()?.0 - i0) / t.elapsed().as_secs_f64();

    // Clients: 2 per workload; client 0 (connected first) is the wide one.
    let workloads = a.services;
    let conns: Vec<tonic::transport::Channel> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..a.clients.div_ceil(100) {
            v.push(
                tonic::transport::Endpoint::from_shared(format!("http://{}", cm.xds))?
                    .connect()
                    .await?,
            );
        }
        Ok::<_, Err>(v)
    })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let sent = Arc::new(Sent::default());
    let flush = Duration::from_secs(a.flush);
    let mut tasks = Vec::new();
    let mut unique_edges = 0usize;
    let mut candidate_kept = 0usize;
    let mut first_bytes = 0usize;
    for i in 0..a.clients {
        let w = (i / 2) % workloads;
        let k = if i == 0 { a.wide } else { a.busy };
        let busy: Vec<usize> = (0..k).map(|j| (i * a.busy + j) % a.services).collect();
        unique_edges += k;
        candidate_kept += k.min(a.max_edges_per_proxy);
        let families = flush_families(&shape, &mesh, &busy, a.requests);
        let later = StreamMetricsMessage {
            identifier: None,
            envoy_metrics: families,
        };
        let first = StreamMetricsMessage {
            identifier: Some(Identifier {
                node: Some(node(i, w)),
            }),
            envoy_metrics: later.envoy_metrics.clone(),
        };
        if i == 1 {
            first_bytes = later.encoded_len();
        }
        let phase = flush.mul_f64(((i * 7919) % 1000) as f64 / 1000.0);
        tasks.push(rt.spawn(client(
            conns[i % conns.len()].clone(),
            first,
            Arc::new(later),
            a.requests * k as u64,
            flush,
            phase,
            stop_rx.clone(),
            sent.clone(),
        )));
        if i == 0 {
            // The wide client's edges first, so that the per-proxy limit (not
            // the total) is what caps it.
            cm.wait_connected(1)?;
            wait_until("client 0's edges", PHASE_TIMEOUT, || {
                match cm.graph()?["edgesKept"].as_u64() {
                    Some(n) if n > 0 => Ok(()),
                    n => fail(format!("{n:?}")),
                }
            })?;
        }
    }
    let connected_at = Instant::now();
    cm.wait_connected(a.clients)?;
    let connect_s = connected_at.elapsed().as_secs_f64();
    // One full flush interval with everyone reporting, then measure.
    std::thread::sleep(flush);
    let l = load();
    let (c0, _) = cm.stats()?;
    let b0 = sent.bytes.load(Ordering::Relaxed);
    let m0 = sent.messages.load(Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(a.measure));
    let (c1, rss1) = cm.stats()?;
    let window = t0.elapsed().as_secs_f64();
    let b1 = sent.bytes.load(Ordering::Relaxed);
    let m1 = sent.messages.load(Ordering::Relaxed);
    let n = a.clients as f64;
    let cpu_ms_per_proxy_s = ((c1 - c0) - idle_rate * window).max(0.0) * 1000.0 / n / window;

    // Stop the clients, so that the graph holds exactly what they sent.
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = rt.block_on(t);
    }
    let failed = sent.failed.load(Ordering::Relaxed);
    if failed > 0 {
        return fail(format!("{failed} client streams failed"));
    }
    let total_requests = sent.requests.load(Ordering::Relaxed);
    let drops = candidate_kept > a.max_edges || a.wide > a.max_edges_per_proxy;
    let g = if drops {
        cm.graph()?
    } else {
        wait_until(
            "every request sent counted on /debug/graphz",
            Duration::from_secs(30),
            || {
                let g = cm.graph()?;
                let counted: u64 = g["edges"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e["requests"].as_u64())
                    .sum();
                if counted == total_requests {
                    Ok(g)
                } else {
                    fail(format!("{counted} of {total_requests}"))
                }
            },
        )?
    };
    let t = Instant::now();
    let (code, body) = http_get(cm.debug, "/debug/graphz?window=600")?;
    let render_ms = t.elapsed().as_secs_f64() * 1000.0;
    if code != 200 {
        return fail(format!("/debug/graphz: {code}"));
    }

    // The bounds.
    let kept = g["edgesKept"].as_u64().unwrap_or(0) as usize;
    let dropped = g["edgesDropped"].as_u64().unwrap_or(0);
    let proxies = g["proxies"].as_array().cloned().unwrap_or_default();
    if proxies.len() != a.clients {
        return fail(format!(
            "{} proxies on /debug/graphz, {} clients",
            proxies.len(),
            a.clients
        ));
    }
    let want_kept = candidate_kept.min(a.max_edges);
    if kept != want_kept {
        return fail(format!(
            "edgesKept {kept}, expected {want_kept} ({unique_edges} sent, limits {}/{})",
            a.max_edges_per_proxy, a.max_edges
        ));
    }
    if !drops && dropped != 0 {
        return fail(format!("{dropped} edges dropped under the limits"));
    }
    let per_proxy_max = proxies
        .iter()
        .filter_map(|p| p["edges"].as_u64())
        .max()
        .unwrap_or(0) as usize;
    if per_proxy_max > a.max_edges_per_proxy {
        return fail(format!(
            "a proxy keeps {per_proxy_max} edges, limit {}",
            a.max_edges_per_proxy
        ));
    }
    let id0 = node(0, 0).id;
    let wide_kept = proxies
        .iter()
        .find(|p| p["id"] == id0.as_str())
        .and_then(|p| p["edges"].as_u64())
        .unwrap_or(0) as usize;
    if wide_kept != a.wide.min(a.max_edges_per_proxy) {
        return fail(format!(
            "client 0 keeps {wide_kept} edges of {}, limit {}",
            a.wide, a.max_edges_per_proxy
        ));
    }
    let max_history = g["edges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["history"].as_array().map(Vec::len))
        .max()
        .unwrap_or(0);
    if max_history > 60 {
        return fail(format!("an edge has {max_history} history buckets"));
    }

    println!(
        "\n{} simulated sidecars ({} busy clusters each, client 0 {}; {} requests per busy cluster per flush), {} Services, flush every {} s, measured {:.0} s; the flush of a real sidecar with the default matcher and two busy clusters: {} B ({} own families, {} per busy cluster)\n",
        a.clients, a.busy, a.wide, a.requests, a.services, a.flush, window, shape.captured_bytes, shape.base.len(), shape.per_cluster.len()
    );
    println!("| proxies | bytes per flush per proxy | bytes/s per proxy | crossmesh CPU per proxy (less idle {:.1} ms/s) | RSS before / after | RSS per proxy | edges kept / dropped | largest per proxy | /debug/graphz?window=600 | all connected in | load |", idle_rate * 1000.0);
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} B | {:.0} B/s | {:.3} ms/s | {:.1} / {:.1} MiB | {:.1} KiB | {} / {} | {} | {:.1} MB in {:.0} ms | {:.1} s | {} |",
        a.clients,
        first_bytes,
        (b1 - b0) as f64 / n / window,
        cpu_ms_per_proxy_s,
        rss0,
        rss1,
        (rss1 - rss0) * 1024.0 / n,
        kept,
        dropped,
        per_proxy_max,
        body.len() as f64 / 1e6,
        render_ms,
        connect_s,
        l
    );
    eprintln!("sink: {} messages in the window", m1 - m0);
    drop(conns);
    Ok(())
}

fn main() {
    let code = match parse_args().and_then(|a| {
        eprintln!("sink: {a:?}, load {}", load());
        if a.envoys > 0 {
            real_envoys(&a)?;
        }
        if a.clients > 0 {
            at_scale(&a)?;
        }
        Ok(())
    }) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("sink: FAILED: {e}");
            1
        }
    };
    std::process::exit(code);
}
