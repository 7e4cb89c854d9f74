//! The real Envoy binary as a test fixture: started from a bootstrap, polled through
//! its admin API, killed on drop, its log printed when the test fails.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{print_log_tail, wait_for};

/// Find Envoy: `$ENVOY_BIN`, else `./.venv/bin/envoy` (repo root), else `envoy` on
/// PATH. Panics with the fix when there is none.
pub fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "ENVOY_BIN={} does not exist; run scripts/setup",
            p.display()
        );
        return p;
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy");
    if venv.exists() {
        return venv;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("envoy");
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("no Envoy binary: set ENVOY_BIN, or run scripts/setup to install ./.venv/bin/envoy");
}

/// A running Envoy. Dropping it kills the process; if the thread is panicking the
/// tail of Envoy's log is printed first.
pub struct Envoy {
    pub name: String,
    child: Child,
    /// The admin listener, read from `--admin-address-path`, so any admin port in the
    /// bootstrap (including 0) works.
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl Envoy {
    /// Start Envoy with `bootstrap_yaml` and wait until its admin API answers.
    /// Uses `--use-dynamic-base-id` so parallel instances never share shared memory,
    /// `--concurrency 1` to keep CPU use low on small CI machines.
    pub async fn start(name: &str, bootstrap_yaml: &str) -> Envoy {
        Self::start_with_args(name, bootstrap_yaml, &[]).await
    }

    pub async fn start_with_args(name: &str, bootstrap_yaml: &str, extra: &[&str]) -> Envoy {
        let dir = tempfile::Builder::new()
            .prefix(&format!("envoy-{name}-"))
            .tempdir()
            .expect("tempdir");
        let config = dir.path().join("bootstrap.yaml");
        std::fs::write(&config, bootstrap_yaml).expect("write bootstrap");
        let admin_path = dir.path().join("admin-address");
        let log = dir.path().join("envoy.log");
        let log_file = std::fs::File::create(&log).expect("create envoy log");
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config)
            .arg("--use-dynamic-base-id")
            .args([
                "--concurrency",
                "1",
                "--log-level",
                "info",
                "--drain-time-s",
                "1",
            ])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "spawn envoy {}: {e}; run scripts/setup",
                    envoy_bin().display()
                )
            });
        let mut envoy = Envoy {
            name: name.to_string(),
            child,
            admin: "127.0.0.1:0".parse().unwrap(),
            dir,
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("reqwest client"),
        };
        let admin_path2 = admin_path.clone();
        let admin: SocketAddr = {
            let e = &mut envoy;
            wait_for("envoy admin address file", Duration::from_secs(20), || {
                let exited = e.exited();
                let text = std::fs::read_to_string(&admin_path2).ok();
                async move {
                    if let Some(status) = exited {
                        return Err(format!("envoy exited early with {status}"));
                    }
                    match text.as_deref().map(str::trim) {
                        Some(t) if !t.is_empty() => {
                            t.parse().map_err(|err| format!("{t:?}: {err}"))
                        }
                        _ => Err("not written yet".into()),
                    }
                }
            })
            .await
        };
        envoy.admin = admin;
        envoy
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(s)) => Some(s.to_string()),
            _ => None,
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("envoy.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// GET an admin path (`/ready`, `/config_dump`, `/clusters`, `/stats?...`);
    /// returns (status, body).
    pub async fn admin_get(&self, path: &str) -> Result<(u16, String), String> {
        let url = format!("http://{}{}", self.admin, path);
        let r = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = r.status().as_u16();
        let body = r.text().await.map_err(|e| format!("GET {url} body: {e}"))?;
        Ok((status, body))
    }

    /// Wait until `/ready` says LIVE: Envoy finished initialization, which for an
    /// xDS-configured Envoy means its initial CDS/LDS (and their warming) completed.
    pub async fn wait_ready(&self, timeout: Duration) {
        let what = format!("envoy {} /ready", self.name);
        let this = self;
        wait_for(&what, timeout, || async move {
            let (status, body) = this.admin_get("/ready").await?;
            if status == 200 {
                Ok(())
            } else {
                Err(format!("{status} {}", body.trim()))
            }
        })
        .await;
    }

    /// `/config_dump` as JSON (`include_eds` so endpoints are visible too).
    pub async fn config_dump(&self) -> serde_json::Value {
        let (status, body) = self
            .admin_get("/config_dump?include_eds")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, 200, "config_dump: {body}");
        serde_json::from_str(&body).expect("config_dump is JSON")
    }

    /// `/clusters` in text form: `cluster::host:port::health_flags::healthy` lines.
    pub async fn clusters(&self) -> String {
        let (_, body) = self
            .admin_get("/clusters")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        body
    }

    /// The host addresses Envoy currently has for `cluster` (from `/clusters`).
    pub async fn cluster_hosts(&self, cluster: &str) -> Result<Vec<SocketAddr>, String> {
        let (_, body) = self.admin_get("/clusters").await?;
        Ok(parse_cluster_hosts(&body, cluster))
    }

    /// A counter or gauge from `/stats`, if present.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let (_, body) = self
            .admin_get(&format!("/stats?filter=^{}$", regex_escape(name)))
            .await
            .ok()?;
        body.lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
    }

    /// Wait until a listener of this Envoy is bound to `ip:port` (admin
    /// `/listeners` prints `NAME::ADDRESS` per listener). Envoy reports ready
    /// once its first config is in; a listener of a later push comes after.
    pub async fn wait_listener_at(&self, ip: std::net::IpAddr, port: u16) {
        let addr = format!("::{ip}:{port}");
        let what = format!("{} has a listener on {ip}:{port}", self.name);
        super::wait_for(&what, super::CONVERGE, || async {
            let (_, text) = self.admin_get("/listeners").await?;
            if text.lines().any(|l| l.ends_with(&addr)) {
                Ok(())
            } else {
                Err(text)
            }
        })
        .await
    }

    /// Names of the dynamic listeners Envoy has active.
    pub async fn listener_names(&self) -> Vec<String> {
        let (_, body) = self.admin_get("/listeners").await.unwrap_or_default();
        body.lines()
            .filter_map(|l| l.split("::").next())
            .map(str::to_string)
            .collect()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if "\\.+*?()|[]{}^$".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Parse `/clusters` text output: lines `NAME::ADDR:PORT::cx_active::0`.
pub fn parse_cluster_hosts(text: &str, cluster: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line
            .strip_prefix(cluster)
            .and_then(|r| r.strip_prefix("::"))
        else {
            continue;
        };
        let mut parts = rest.split("::");
        let (Some(addr), Some(_field)) = (parts.next(), parts.next()) else {
            continue;
        };
        if let Ok(a) = addr.parse::<SocketAddr>() {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            print_log_tail(&format!("envoy {}", self.name), &self.log_path(), 200);
        }
    }
}
