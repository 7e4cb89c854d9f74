//! The dashboard (`/ui`) and `crossmesh status` end to end, over the seed's
//! three live member clusters (cluster1 and cluster2 on network `vpc-a`,
//! cluster3 on `account-b`), a real crossmesh and a real Envoy gateway.
//!
//! Checked without a browser: the assets' content types, cache headers and CSP;
//! `crossmesh status` prints one row per connected proxy with its states (all
//! SYNCED, then LDS NACKED with Envoy's error) and fails naming the address when
//! nothing answers.
//!
//! Checked in headless Chromium (Debian's `chromium` and `chromium-driver`,
//! installed with apt-get when running as root and missing; otherwise the
//! browser part is skipped, saying so), driven through chromedriver's WebDriver
//! HTTP protocol: the Mesh view shows three clusters on two networks, and
//! each network's east-west gateway (vpc-a's from the mesh file, account-b's
//! from a Service labelled `topology.istio.io/network` in cluster3, also
//! checked on `/debug/meshz` without a browser); the
//! Topology view shows the requests just sent through the gateway as an edge;
//! a second Envoy appears in the Proxies view when it connects; a NACK provoked
//! on purpose (a Gateway server on a port the test holds, so Envoy cannot bind
//! the listener) shows as NACKED with Envoy's error text; a rejected
//! VirtualService shows its reason in the Config view; stopping cluster3's API
//! server marks it STALE. Screenshots of each view go to
//! `target/ui-screenshots/`.

mod support;

#[path = "support/kube_api.rs"]
mod kube_api;
#[path = "support/kube_seed.rs"]
mod kube_seed;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use kube_seed::{IstioFrom, KubeSeed, Layout};
use serde_json::{json, Value};
use support::control_plane::{bootstrap_gateway, crossmesh_bin, ControlPlane, GatewayProxy};
use support::envoy::Envoy;
use support::manifests;
use support::net::{free_port, Subnet};
use support::scenario::{host_of, service_host, GW_SELECTOR};
use support::{http, wait_for, CONVERGE};

/// The east-west gateways (documentation addresses: nothing is sent to them):
/// vpc-a's from the mesh file, account-b's from a Service in cluster3.
const MESH_FILE_GATEWAY: &str = "192.0.2.10";
const SERVICE_GATEWAY: &str = "192.0.2.20";

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// `crossmesh status` against `addr`: (exit success, stdout, stderr).
async fn status(addr: SocketAddr) -> (bool, String, String) {
    let out = tokio::process::Command::new(crossmesh_bin())
        .args(["status", "--debug-address", &addr.to_string()])
        .env_remove("CROSSMESH_DEBUG_ADDRESS")
        .env_remove("CROSSMESH_TOKEN_FILE")
        .output()
        .await
        .expect("run crossmesh status");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The row of `status` output whose NAME is `name`, split into columns.
fn row(table: &str, name: &str) -> Option<Vec<String>> {
    table
        .lines()
        .take_while(|l| !l.is_empty())
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(|l| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn status_fails_naming_the_address_when_nothing_answers() {
    let subnet = Subnet::claim();
    let addr = subnet.addr(1, free_port());
    let (ok, out, err) = status(addr).await;
    assert!(!ok, "crossmesh status succeeded against {addr}: {out}");
    assert!(
        err.starts_with("crossmesh: ")
            && err.contains(&addr.to_string())
            && err.contains("does not answer"),
        "stderr: {err}"
    );
}

/// GET on the debug address: (status, headers, body).
async fn raw_get(
    cp: &ControlPlane,
    path: &str,
    etag: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = reqwest::Client::new().get(format!("http://{}{path}", cp.debug));
    if let Some(t) = etag {
        req = req.header("If-None-Match", t);
    }
    let r = req.send().await.expect("GET debug");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap_or_default())
}

async fn check_assets(cp: &ControlPlane) {
    let (st, h, body) = raw_get(cp, "/ui/", None).await;
    assert_eq!(st, 200);
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["cache-control"], "no-cache");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert!(body.contains("/ui/app.js"));
    let tag = h["etag"].to_str().unwrap().to_string();
    let (st, _, body) = raw_get(cp, "/ui/", Some(&tag)).await;
    assert_eq!((st, body.as_str()), (304, ""));
    let (st, h, js) = raw_get(cp, "/ui/app.js", None).await;
    assert_eq!(st, 200);
    assert_eq!(h["content-type"], "text/javascript; charset=utf-8");
    // No address but the debug address's own (XML namespace names are not fetched).
    let other = js
        .replace("http://www.w3.org/2000/svg", "")
        .replace("http://www.w3.org/1999/xhtml", "");
    assert!(
        js.contains("/debug/syncz") && !other.contains("http://") && !other.contains("https://")
    );
    let (st, h, _) = raw_get(cp, "/ui/app.css", None).await;
    assert_eq!(
        (st, h["content-type"].to_str().unwrap()),
        (200, "text/css; charset=utf-8")
    );
}

/// Chromium and chromedriver, installed when missing and this is root.
fn browser_available() -> Result<(), String> {
    let present =
        || std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists();
    if present() {
        return Ok(());
    }
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        return Err(format!("{CHROMIUM} or {CHROMEDRIVER} missing and not root to apt-get install chromium chromium-driver"));
    }
    let st = std::process::Command::new("apt-get")
        .args([
            "install",
            "-y",
            "--no-install-recommends",
            "chromium",
            "chromium-driver",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status();
    match st {
        Ok(s) if s.success() && present() => Ok(()),
        other => Err(format!(
            "apt-get install chromium chromium-driver failed: {other:?}"
        )),
    }
}

/// One chromedriver and one headless Chromium session.
struct Browser {
    driver: tokio::process::Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Result<Browser, String> {
        let port = free_port();
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("start chromedriver: {e}"))?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1500,1000",
                     format!("--user-data-dir={}", profile.path().display())]
        }}}});
        let session = wait_for("chromedriver session", Duration::from_secs(30), || {
            let (http, base, caps) = (http.clone(), base.clone(), caps.clone());
            async move {
                let r = http
                    .post(format!("{base}/session"))
                    .json(&caps)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let v: Value = r.json().await.map_err(|e| e.to_string())?;
                v["value"]["sessionId"]
                    .as_str()
                    .map(String::from)
                    .ok_or_else(|| v.to_string())
            }
        })
        .await;
        Ok(Browser {
            driver,
            base,
            session,
            http,
            _profile: profile,
        })
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .expect("webdriver json");
        v["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn js(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// Wait until `script` (returning a string, empty when satisfied) says yes.
    async fn wait(&self, what: &str, script: &str) {
        wait_for(what, CONVERGE, || async {
            match self.js(script).await {
                Value::String(s) if s.is_empty() => Ok(()),
                v => Err(v.to_string()),
            }
        })
        .await
    }

    async fn screenshot(&self, name: &str) {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("screenshot base64");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }

    async fn close(mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = self.http.delete(url).send().await;
        let _ = self.driver.kill().await;
    }
}

/// JS: "" when the view `view` has rendered and its text contains every one of
/// `texts`, else what is missing.
fn page_has(view: &str, texts: &[&str]) -> String {
    format!(
        "const t = document.getElementById('view').innerText;\
         if (document.body.dataset.view !== {view:?}) return 'view ' + document.body.dataset.view;\
         const want = {texts}; const miss = want.filter(w => !t.includes(w));\
         return miss.length ? 'missing ' + JSON.stringify(miss) : '';",
        texts = serde_json::to_string(texts).unwrap()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_and_status_follow_the_mesh() {
    let mut s = KubeSeed::start(Layout {
        istio: IstioFrom::Manifests,
        extra_mesh: format!(
            "networks:\n  vpc-a:\n    gateways:\n    - address: {MESH_FILE_GATEWAY}\n      port: 15443\n"
        ),
        ..Layout::default()
    })
    .await;
    // account-b's east-west gateway: a Service labelled with its network in cluster3.
    s.server(3).apply(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "istio-eastwestgateway", "namespace": "istio-system",
            "labels": {"topology.istio.io/network": "account-b", "istio": "eastwestgateway"}},
        "spec": {"type": "LoadBalancer", "selector": {"istio": "eastwestgateway"},
            "ports": [{"name": "tls", "port": 15443}]},
        "status": {"loadBalancer": {"ingress": [{"ip": SERVICE_GATEWAY}]}}
    }));
    let cp = &s.cp;
    check_assets(cp).await;
    // /debug/meshz lists both networks' gateways, each with where it comes from.
    wait_for("meshz lists both east-west gateways", CONVERGE, || async {
        let m = cp.json("/debug/meshz").await?;
        let gws = |net: &str| {
            m["networks"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|n| n["name"] == net)
                .map(|n| n["gateways"].clone())
                .unwrap_or(Value::Null)
        };
        let want_a = json!([{"address": MESH_FILE_GATEWAY, "port": 15443, "cluster": null, "from": "meshFile"}]);
        let want_b = json!([{"address": SERVICE_GATEWAY, "port": 15443, "cluster": "cluster3", "from": "service"}]);
        (gws("vpc-a") == want_a && gws("account-b") == want_b && m["multiNetwork"] == true)
            .then_some(())
            .ok_or_else(|| m.to_string())
    })
    .await;
    let gw_name = "istio-ingressgateway-0.istio-system";

    // `crossmesh status`: the gateway synced on every type it asked for.
    let table = wait_for("status shows the gateway synced", CONVERGE, || async {
        let (ok, out, err) = status(cp.debug).await;
        let r = row(&out, gw_name).ok_or(format!("no row: {out}{err}"))?;
        (ok && r[1] == "cluster1"
            && r[2] == "SYNCED"
            && r[3] == "SYNCED"
            && r[4] == "SYNCED"
            && r[5] == "SYNCED")
            .then_some(out.clone())
            .ok_or(out)
    })
    .await;
    assert!(table.starts_with("NAME"), "{table}");
    assert_eq!(table.lines().count(), 2, "one row per proxy: {table}");

    let browser = match browser_available() {
        Ok(()) => match Browser::start().await {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("SKIPPING the browser checks of ui_e2e: {e}");
                None
            }
        },
        Err(e) => {
            eprintln!("SKIPPING the browser checks of ui_e2e: {e}");
            None
        }
    };
    let ui = format!("http://{}/ui/", cp.debug);

    // Mesh: three clusters on two networks.
    if let Some(b) = &browser {
        b.open(&format!("{ui}#/mesh")).await;
        b.wait(
            "mesh view: three clusters on two networks",
            "const n = [...document.querySelectorAll('[data-network]')];\
             const of = net => { const e = n.find(x => x.dataset.network === net); return e ? [...e.querySelectorAll('[data-cluster]')].map(c => c.dataset.cluster).join(',') : 'none'; };\
             const got = n.length + ' ' + of('vpc-a') + ' ' + of('account-b');\
             return got === '2 cluster1,cluster2 cluster3' ? '' : got;",
        )
        .await;
        b.wait(
            "mesh view: each network's east-west gateway",
            &format!(
                "const g = net => {{ const e = document.querySelector('[data-network=\"' + net + '\"]');\
                   return e ? [...e.querySelectorAll('[data-gateway]')].map(x => x.dataset.gateway + '@' + x.dataset.gatewayCluster).join(',') : 'none'; }};\
                 const got = g('vpc-a') + ' ' + g('account-b');\
                 return got === '{MESH_FILE_GATEWAY}:15443@ {SERVICE_GATEWAY}:15443@cluster3' ? '' : got;"
            ),
        )
        .await;
        b.screenshot("mesh").await;
    }

    // Topology: requests through the gateway to cluster1's service.
    for _ in 0..20 {
        let r = http::get(s.gw_addr(), &host_of("cluster1"), "/").await;
        assert_eq!(r.map(|r| r.status).ok(), Some(200));
    }
    let svc = service_host("cluster1");
    let graph = cp.json("/debug/graphz?window=60").await.expect("graphz");
    if graph["enabled"] == true {
        let edge = wait_for("graphz edge gateway -> cluster1", CONVERGE, || async {
            let g = cp.json("/debug/graphz?window=60").await?;
            g["edges"]
                .as_array()
                .and_then(|es| {
                    es.iter()
                        .find(|e| {
                            e["destination"].as_str().is_some_and(|d| d.contains(&svc))
                                && e["requests"].as_u64() >= Some(20)
                        })
                        .cloned()
                })
                .ok_or_else(|| g["edges"].to_string())
        })
        .await;
        if let Some(b) = &browser {
            b.open(&format!("{ui}#/topology")).await;
            let dest = edge["destination"].as_str().unwrap();
            b.wait(
                "topology edge to cluster1's service with its request count",
                &format!(
                    "const l = [...document.querySelectorAll('text.edge-label')].find(e => e.dataset.destination === {dest:?});\
                     if (!l) return 'no edge label';\
                     const n = parseInt(l.textContent.split(' · ')[1]); return n >= 20 ? '' : l.textContent;"
                ),
            )
            .await;
            b.screenshot("topology").await;
        }
    } else {
        eprintln!("the service graph is off: topology checked as absent");
        if let Some(b) = &browser {
            b.open(&format!("{ui}#/topology")).await;
            b.wait(
                "graph-off notice",
                "return document.getElementById('graph-off') ? '' : 'no notice';",
            )
            .await;
        }
    }

    // A second Envoy connects (labels no Gateway selects: no listener to bind).
    let mut gw2 = GatewayProxy::ingress(s.subnet.ip(2), "cluster2", false);
    gw2.name = "edge-proxy-0".into();
    gw2.labels = vec![("app".into(), "edge".into())];
    let envoy2 = Envoy::start("ui-second", &bootstrap_gateway(&gw2, cp.xds, free_port())).await;
    envoy2.wait_ready(CONVERGE).await;
    let table = wait_for("status shows two proxies", CONVERGE, || async {
        let (_, out, _) = status(cp.debug).await;
        match row(&out, "edge-proxy-0.istio-system") {
            Some(r) if r[1] == "cluster2" && r[2] == "SYNCED" => Ok(out),
            _ => Err(out),
        }
    })
    .await;
    assert_eq!(table.lines().count(), 3, "{table}");
    if let Some(b) = &browser {
        b.open(&format!("{ui}#/proxies")).await;
        b.wait(
            "proxies view lists the new Envoy",
            &page_has("proxies", &["edge-proxy-0.istio-system", gw_name]),
        )
        .await;
    }

    // A NACK on purpose: a Gateway server on a port this test holds.
    let busy = std::net::TcpListener::bind(s.subnet.addr(1, 0)).expect("hold a port");
    let busy_port = busy.local_addr().unwrap().port();
    let istio = s.dir.path().join("istio");
    std::fs::write(
        istio.join("gateway-busy.yaml"),
        manifests::gateway(
            "istio-system",
            "busy",
            &GW_SELECTOR,
            busy_port,
            &["busy.example"],
        ),
    )
    .unwrap();
    let gw_id = GatewayProxy::ingress(s.subnet.ip(1), "cluster1", false).node_id();
    let error = wait_for("the gateway NACKs LDS", CONVERGE, || async {
        let sync = cp.json("/debug/syncz").await?;
        sync.as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["proxy_id"] == gw_id.as_str())
            .flat_map(|p| p["types"].as_array().cloned().unwrap_or_default())
            .find(|t| {
                t["type_url"]
                    .as_str()
                    .is_some_and(|u| u.ends_with("Listener"))
                    && !t["nacked"].is_null()
            })
            .and_then(|t| t["nacked"]["error"].as_str().map(String::from))
            .ok_or_else(|| sync.to_string())
    })
    .await;
    assert!(
        error.contains(&busy_port.to_string()),
        "NACK not about the held port: {error}"
    );
    let (_, out, _) = status(cp.debug).await;
    let r = row(&out, gw_name).expect("gateway row");
    assert_eq!(r[3], "NACKED", "{out}");
    let first_line: String = error.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        out.contains(&format!("{gw_name} LDS: {first_line}")),
        "{out}"
    );
    if let Some(b) = &browser {
        b.open(&format!("{ui}#/proxies")).await;
        let snippet: String = first_line.chars().take(60).collect();
        b.wait(
            "proxies view shows the NACK with its error",
            &page_has("proxies", &["NACKED", &snippet]),
        )
        .await;
        b.screenshot("proxies").await;
    }
    drop(busy);

    // A rejected VirtualService.
    std::fs::write(
        istio.join("vs-bad.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: bad-vs\n  namespace: test\n\
         spec:\n  hosts: []\n  http:\n  - route:\n    - destination:\n        host: cluster1.test.svc.cluster.local\n",
    )
    .unwrap();
    let reason = wait_for("bad-vs rejected", CONVERGE, || async {
        let c = cp.json("/debug/configz").await?;
        c["rejected"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["name"] == "bad-vs")
            .and_then(|r| r["reason"].as_str().map(String::from))
            .ok_or_else(|| c["rejected"].to_string())
    })
    .await;
    if let Some(b) = &browser {
        b.open(&format!("{ui}#/config")).await;
        b.wait(
            "config view shows bad-vs's reason",
            &page_has("config", &["test/bad-vs", &reason]),
        )
        .await;
        b.screenshot("config").await;
        b.open(&format!("{ui}#/service/{svc}")).await;
        let ip = s.pod_ip(1, 1).to_string();
        b.wait(
            "service view: cluster1's endpoint, sent to the gateway",
            &page_has("service", &[&ip, "HEALTHY", "cluster1-imroc-cc", gw_name]),
        )
        .await;
        b.screenshot("service").await;
    }

    // Taking cluster3 away marks it stale.
    s.server(3).stop().await;
    s.wait_clusterz(3, "cluster3 stale", |c| c["stale"] == true)
        .await;
    let (_, out, _) = status(cp.debug).await;
    assert!(row(&out, gw_name).is_some(), "{out}");
    if let Some(b) = &browser {
        b.open(&format!("{ui}#/mesh")).await;
        b.wait(
            "mesh view: cluster3 stale, cluster1 live",
            "const st = n => { const e = document.querySelector('[data-stale=\"' + n + '\"]'); return e ? e.textContent : 'none'; };\
             const got = st('cluster3') + ' ' + st('cluster1'); return got === 'STALE live' ? '' : got;",
        )
        .await;
        b.screenshot("mesh-stale").await;
    }
    if let Some(b) = browser {
        b.close().await;
    }
    drop(envoy2);
    let _ = &mut s;
}
