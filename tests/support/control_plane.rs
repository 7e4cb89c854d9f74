//! The real `crossmesh` binary as a test fixture: `crossmesh serve` on loopback ports
//! of our choosing, `/ready` polling, debug HTTP helpers, restart, and
//! `crossmesh bootstrap` for gateway bootstraps.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::net::free_port;
use super::{print_log_tail, wait_for};

/// The `crossmesh` binary the tests run: `$CROSSMESH_BIN` when set (CI sets it to
/// the artifact of `cargo build --release`, the binary users run; see
/// `scripts/test`), else the one Cargo built for this test run. The two can
/// differ: a test build unifies features with the dev-dependencies.
pub fn crossmesh_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| match std::env::var("CROSSMESH_BIN") {
        Ok(b) if !b.is_empty() => {
            assert!(
                Path::new(&b).is_file(),
                "CROSSMESH_BIN={b} is not a file (build it with `cargo build --release`)"
            );
            b
        }
        _ => {
            // CI must test the shipped artifact, never silently the test build.
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but CROSSMESH_BIN is not: CI runs the end-to-end tests \
                 against the release binary (scripts/test sets it)"
            );
            env!("CARGO_BIN_EXE_crossmesh").to_string()
        }
    })
}

/// A running `crossmesh serve`. Dropping it kills the process; if the thread is
/// panicking the tail of its log is printed first.
pub struct ControlPlane {
    child: Option<Child>,
    pub mesh_file: PathBuf,
    pub xds: SocketAddr,
    pub debug: SocketAddr,
    logdir: tempfile::TempDir,
    starts: u32,
    client: reqwest::Client,
    opts: StartOptions,
}

/// How [`ControlPlane::start_with`] runs `crossmesh serve`.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// A program (and its arguments) that runs `crossmesh serve`: it gets the
    /// binary and its arguments appended and must `exec` them, so the process
    /// is crossmesh itself (e.g. `unshare ... sh -c '...; exec "$0" "$@"'`).
    pub wrapper: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Return as soon as the process runs, without waiting for `/ready`.
    pub no_wait_ready: bool,
}

impl ControlPlane {
    /// Start `crossmesh serve --mesh FILE` on free loopback ports and wait for
    /// `/ready`.
    pub async fn start(mesh_file: &Path) -> ControlPlane {
        ControlPlane::start_with(mesh_file, StartOptions::default()).await
    }

    /// [`ControlPlane::start`] on the given xDS and debug addresses (e.g. ones a
    /// proxy's bootstrap already lists).
    pub async fn start_at(mesh_file: &Path, xds: SocketAddr, debug: SocketAddr) -> ControlPlane {
        let mut cp = ControlPlane::new(mesh_file, xds, debug, StartOptions::default());
        cp.spawn();
        cp.wait_ready().await;
        cp
    }

    /// [`ControlPlane::start`] with [`StartOptions`].
    pub async fn start_with(mesh_file: &Path, opts: StartOptions) -> ControlPlane {
        let mut cp = ControlPlane::new(
            mesh_file,
            SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
            SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
            opts,
        );
        cp.spawn();
        if !cp.opts.no_wait_ready {
            cp.wait_ready().await;
        }
        cp
    }

    fn new(
        mesh_file: &Path,
        xds: SocketAddr,
        debug: SocketAddr,
        opts: StartOptions,
    ) -> ControlPlane {
        ControlPlane {
            child: None,
            mesh_file: mesh_file.to_owned(),
            xds,
            debug,
            logdir: tempfile::Builder::new()
                .prefix("crossmesh-cp-")
                .tempdir()
                .expect("tempdir"),
            starts: 0,
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("client"),
            opts,
        }
    }

    /// Process id of the running `crossmesh serve`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Send SIGTERM (as the kubelet does when a Pod is deleted).
    pub fn terminate(&self) {
        let pid = self.pid().expect("crossmesh serve is not running");
        let st = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM {pid}: {st}");
    }

    /// Wait up to `timeout` for the process to exit; its exit status, or `None`
    /// if it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        loop {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Some(st);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_path(&self) -> PathBuf {
        self.logdir
            .path()
            .join(format!("crossmesh-{}.log", self.starts))
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).expect("create log");
        let mut cmd = match self.opts.wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(crossmesh_bin());
                c
            }
            None => Command::new(crossmesh_bin()),
        };
        cmd.envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .arg("serve")
            .arg("--mesh")
            .arg(&self.mesh_file)
            .arg("--xds-address")
            .arg(self.xds.to_string())
            .arg("--debug-address")
            .arg(self.debug.to_string())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,crossmesh=debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn crossmesh serve");
        self.child = Some(child);
    }

    /// Wait until `/ready` answers 200 (fails fast if the process exits).
    pub async fn wait_ready(&mut self) {
        let url = format!("http://{}/ready", self.debug);
        let client = self.client.clone();
        let this = &mut *self;
        wait_for("crossmesh /ready", Duration::from_secs(30), || {
            let exited = this.exited();
            let client = client.clone();
            let url = url.clone();
            async move {
                if let Some(s) = exited {
                    return Err(format!("crossmesh serve exited with {s}"));
                }
                let r = client.get(&url).send().await.map_err(|e| e.to_string())?;
                if r.status().as_u16() == 200 {
                    Ok(())
                } else {
                    Err(format!("{}", r.status()))
                }
            }
        })
        .await;
    }

    pub fn exited(&mut self) -> Option<String> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(s))) => Some(s.to_string()),
            None => Some("not running".into()),
            _ => None,
        }
    }

    /// Kill the process (SIGKILL: the xDS streams drop without a goodbye).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill and start again on the same ports, then wait for `/ready`.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }

    /// GET a debug path; (status, body).
    pub async fn get(&self, path: &str) -> Result<(u16, String), String> {
        let url = format!("http://{}{}", self.debug, path);
        let r = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = r.status().as_u16();
        Ok((status, r.text().await.map_err(|e| e.to_string())?))
    }

    /// GET a debug path that returns JSON.
    pub async fn json(&self, path: &str) -> Result<serde_json::Value, String> {
        let (status, body) = self.get(path).await?;
        if status != 200 {
            return Err(format!("GET {path}: {status} {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("GET {path}: not JSON ({e}): {body}"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            for i in 1..=self.starts {
                let p = self.logdir.path().join(format!("crossmesh-{i}.log"));
                print_log_tail(&format!("crossmesh serve (start {i})"), &p, 200);
            }
        }
    }
}

/// Identity and options of a gateway proxy for `crossmesh bootstrap`.
#[derive(Debug, Clone)]
pub struct GatewayProxy {
    pub name: String,
    pub namespace: String,
    pub ip: Ipv4Addr,
    pub labels: Vec<(String, String)>,
    pub cluster_id: String,
    pub network: Option<String>,
    pub sotw: bool,
}

impl GatewayProxy {
    /// The seed's ingress gateway: `istio-system`, labels
    /// `app=istio-ingressgateway,istio=ingressgateway`.
    pub fn ingress(ip: Ipv4Addr, cluster_id: &str, sotw: bool) -> GatewayProxy {
        GatewayProxy {
            name: "istio-ingressgateway-0".into(),
            namespace: "istio-system".into(),
            ip,
            labels: vec![
                ("app".into(), "istio-ingressgateway".into()),
                ("istio".into(), "ingressgateway".into()),
            ],
            cluster_id: cluster_id.into(),
            network: None,
            sotw,
        }
    }

    /// Istio's node id for this gateway.
    pub fn node_id(&self) -> String {
        format!(
            "router~{}~{}.{}~{}.svc.cluster.local",
            self.ip, self.name, self.namespace, self.namespace
        )
    }
}

/// Run `crossmesh bootstrap --role gateway ...` (DESIGN.md §1) and return the YAML.
pub fn bootstrap_gateway(gw: &GatewayProxy, xds: SocketAddr, admin_port: u16) -> String {
    bootstrap_gateway_with(gw, xds, admin_port, &[])
}

/// [`bootstrap_gateway`] with `extra` arguments appended (for example
/// `--stats-matcher all` for a test that reads stats the default matcher drops).
pub fn bootstrap_gateway_with(
    gw: &GatewayProxy,
    xds: SocketAddr,
    admin_port: u16,
    extra: &[&str],
) -> String {
    let labels = gw
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut args: Vec<String> = vec![
        "bootstrap".into(),
        "--role".into(),
        "gateway".into(),
        "--name".into(),
        gw.name.clone(),
        "--namespace".into(),
        gw.namespace.clone(),
        "--ip".into(),
        gw.ip.to_string(),
        "--labels".into(),
        labels,
        "--xds-address".into(),
        xds.to_string(),
        "--admin-port".into(),
        admin_port.to_string(),
        "--cluster-id".into(),
        gw.cluster_id.clone(),
    ];
    if let Some(n) = &gw.network {
        args.push("--network".into());
        args.push(n.clone());
    }
    if gw.sotw {
        args.push("--sotw".into());
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    bootstrap(&args)
}

/// Run `crossmesh <args>` (a bootstrap command) and return stdout; panics with
/// stderr on failure.
pub fn bootstrap(args: &[String]) -> String {
    let out = Command::new(crossmesh_bin())
        .args(args)
        .output()
        .expect("run crossmesh bootstrap");
    assert!(
        out.status.success(),
        "crossmesh {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("bootstrap is UTF-8")
}

/// A running `crossmesh agent`; killed on drop, its log's tail printed if the
/// test is panicking.
pub struct AgentProc {
    pub child: Option<std::process::Child>,
    pub log: std::path::PathBuf,
}

impl AgentProc {
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            super::print_log_tail("crossmesh agent", &self.log, 80);
        }
        self.kill();
    }
}
