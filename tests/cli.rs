//! The `crossmesh` command line as users and scripts see it (DESIGN.md §1): the
//! bootstrap it prints is accepted by the real Envoy (`envoy --mode validate`), and
//! bad flags or a bad mesh file exit non-zero with one line on stderr.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::control_plane::crossmesh_bin;
use support::envoy::envoy_bin;

fn crossmesh(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(crossmesh_bin());
    cmd.args(args);
    // A developer's shell must not change what these tests see.
    for (k, _) in std::env::vars() {
        if k.starts_with("CROSSMESH_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(envs.iter().copied());
    cmd.output().expect("run crossmesh")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `crossmesh bootstrap ARGS`, then `envoy --mode validate` on the output.
fn bootstrap_validates(args: &[&str]) -> String {
    let mut full = vec!["bootstrap"];
    full.extend_from_slice(args);
    let out = crossmesh(&full, &[]);
    assert!(
        out.status.success(),
        "crossmesh {} failed: {}",
        full.join(" "),
        stderr(&out)
    );
    let yaml = stdout(&out);
    validate_with_envoy(&yaml);
    yaml
}

fn validate_with_envoy(yaml: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bootstrap.yaml");
    std::fs::write(&file, yaml).expect("write bootstrap");
    let envoy = envoy_bin();
    let out = Command::new(&envoy)
        .args([
            "--mode",
            "validate",
            "--use-dynamic-base-id",
            "-l",
            "warning",
            "-c",
        ])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", envoy.display()));
    assert!(
        out.status.success(),
        "envoy rejected the bootstrap:\n{}\n{}\n--- bootstrap ---\n{yaml}",
        stdout(&out),
        stderr(&out)
    );
}

const GATEWAY: &[&str] = &[
    "--role",
    "gateway",
    "--name",
    "istio-ingressgateway-0",
    "--namespace",
    "istio-system",
    "--ip",
    "127.0.0.1",
    "--labels",
    "app=istio-ingressgateway,istio=ingressgateway",
    "--xds-address",
    "127.0.0.1:15010",
    "--admin-port",
    "15000",
    "--locality",
    "us-east/us-east-1a/rack1",
    "--cluster-id",
    "cluster1",
    "--network",
    "vpc-a",
];

const SIDECAR: &[&str] = &[
    "--role",
    "sidecar",
    "--name",
    "web-0",
    "--namespace",
    "default",
    "--ip",
    "127.0.0.20",
    "--labels",
    "app=web,version=v1",
    "--xds-address",
    "127.0.0.1:15010",
    "--admin-port",
    "15001",
    "--service-account",
    "web",
    "--interception",
    "none",
];

fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(extra).copied().collect()
}

#[test]
fn gateway_delta_bootstrap_is_valid_envoy_config() {
    let yaml = bootstrap_validates(GATEWAY);
    assert!(yaml.contains("DELTA_GRPC"), "{yaml}");
    assert!(
        yaml.contains(
            "router~127.0.0.1~istio-ingressgateway-0.istio-system~istio-system.svc.cluster.local"
        ),
        "{yaml}"
    );
    assert!(yaml.contains("sub_zone: rack1"), "{yaml}");
}

#[test]
fn gateway_sotw_bootstrap_is_valid_envoy_config() {
    let yaml = bootstrap_validates(&with(GATEWAY, &["--sotw"]));
    assert!(yaml.contains("api_type: GRPC"), "{yaml}");
    assert!(!yaml.contains("DELTA_GRPC"), "{yaml}");
}

#[test]
fn sidecar_delta_bootstrap_is_valid_envoy_config() {
    let yaml = bootstrap_validates(SIDECAR);
    assert!(
        yaml.contains("sidecar~127.0.0.20~web-0.default~default.svc.cluster.local"),
        "{yaml}"
    );
    assert!(yaml.contains("INTERCEPTION_MODE: NONE"), "{yaml}");
    assert!(yaml.contains("DELTA_GRPC"), "{yaml}");
}

#[test]
fn sidecar_sotw_bootstrap_with_dns_control_plane_is_valid_envoy_config() {
    let mut args = with(SIDECAR, &["--sotw"]);
    let i = args
        .iter()
        .position(|a| *a == "none")
        .expect("interception");
    args[i] = "redirect";
    let i = args
        .iter()
        .position(|a| *a == "127.0.0.1:15010")
        .expect("xds");
    args[i] = "crossmesh.istio-system.svc:15010";
    let yaml = bootstrap_validates(&args);
    assert!(yaml.contains("STRICT_DNS"), "{yaml}");
    assert!(yaml.contains("INTERCEPTION_MODE: REDIRECT"), "{yaml}");
    assert!(yaml.contains("api_type: GRPC"), "{yaml}");
}

#[test]
fn flags_read_crossmesh_env_vars() {
    let out = crossmesh(
        &["bootstrap"],
        &[
            ("CROSSMESH_ROLE", "gateway"),
            ("CROSSMESH_NAME", "gw-0"),
            ("CROSSMESH_NAMESPACE", "edge"),
            ("CROSSMESH_IP", "127.0.0.9"),
            ("CROSSMESH_ADMIN_PORT", "15099"),
            ("CROSSMESH_SOTW", "true"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let yaml = stdout(&out);
    assert!(
        yaml.contains("router~127.0.0.9~gw-0.edge~edge.svc.cluster.local"),
        "{yaml}"
    );
    assert!(yaml.contains("port_value: 15099"), "{yaml}");
    assert!(yaml.contains("api_type: GRPC"), "{yaml}");
}

fn assert_one_line_failure(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected failure, got success");
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {err}");
    assert!(lines[0].starts_with("crossmesh: "), "{err}");
    assert!(lines[0].contains(needle), "{needle:?} not in: {err}");
    assert!(out.stdout.is_empty(), "nothing on stdout on failure");
}

#[test]
fn bad_flags_exit_nonzero_with_one_line() {
    let mut bad_role = with(&["bootstrap"], GATEWAY);
    bad_role[2] = "mesh";
    assert_one_line_failure(&crossmesh(&bad_role, &[]), "--role");
    let mut bad_labels = GATEWAY.to_vec();
    bad_labels[9] = "app";
    assert_one_line_failure(
        &crossmesh(&with(&["bootstrap"], &bad_labels), &[]),
        "key=value",
    );
    assert_one_line_failure(
        &crossmesh(&["bootstrap", "--role", "gateway"], &[]),
        "required",
    );
    assert_one_line_failure(&crossmesh(&["serve"], &[]), "--mesh");
    assert_one_line_failure(&crossmesh(&["frobnicate"], &[]), "frobnicate");
    assert_one_line_failure(
        &crossmesh(
            &["serve", "--mesh", "m.yaml", "--xds-address", "nowhere"],
            &[],
        ),
        "--xds-address",
    );
}

fn mesh_file(dir: &Path, text: &str) -> String {
    let p = dir.join("mesh.yaml");
    std::fs::write(&p, text).expect("write mesh");
    p.display().to_string()
}

#[test]
fn bad_mesh_file_exits_nonzero_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.yaml").display().to_string();
    assert_one_line_failure(
        &crossmesh(&["serve", "--mesh", &missing], &[]),
        "missing.yaml",
    );

    let typo = mesh_file(dir.path(), "clustrs: []\n");
    assert_one_line_failure(&crossmesh(&["serve", "--mesh", &typo], &[]), "mesh.yaml");

    let broken = mesh_file(dir.path(), "clusters:\n- name: [unclosed\n");
    assert_one_line_failure(&crossmesh(&["serve", "--mesh", &broken], &[]), "mesh.yaml");

    let dup = mesh_file(
        dir.path(),
        "clusters:\n- {name: a, manifests: x}\n- {name: a, manifests: y}\n",
    );
    assert_one_line_failure(&crossmesh(&["serve", "--mesh", &dup], &[]), "used twice");
}

#[test]
fn help_lists_every_command() {
    let out = crossmesh(&["--help"], &[]);
    assert!(out.status.success());
    let text = stdout(&out);
    for c in [
        "serve",
        "bootstrap",
        "demo",
        "validate",
        "create-remote-secret",
    ] {
        assert!(text.contains(c), "{c} missing from help: {text}");
    }
}

/// `crossmesh serve` on port 0: the log line naming the bound addresses.
fn bound_addresses(line: &str) -> Option<(String, String)> {
    if !line.contains("crossmesh serving") {
        return None;
    }
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    };
    Some((field("xds")?, field("debug")?))
}

#[tokio::test]
async fn serve_binds_logs_serves_debug_and_stops_on_sigterm() {
    use std::io::BufRead;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("c1")).expect("mkdir");
    std::fs::create_dir(dir.path().join("istio")).expect("mkdir");
    let mesh = mesh_file(
        dir.path(),
        "clusters:\n- name: c1\n  manifests: c1\nconfig:\n- manifests: istio\n",
    );
    let mut child = Command::new(crossmesh_bin())
        .args(["serve", "--mesh", &mesh])
        .args([
            "--xds-address",
            "127.0.0.1:0",
            "--debug-address",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let (xds, debug) = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("no `crossmesh serving` log line");
        if let Some(a) = bound_addresses(&line) {
            break a;
        }
    };
    assert!(
        !xds.ends_with(":0") && !debug.ends_with(":0"),
        "{xds} {debug}"
    );

    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let base = format!("http://{debug}");
    support::wait_for("/ready", Duration::from_secs(20), || {
        let c = client.clone();
        let url = format!("{base}/ready");
        async move {
            let r = c.get(url).send().await.map_err(|e| e.to_string())?;
            if r.status() == 200 {
                Ok(())
            } else {
                Err(format!("status {}", r.status()))
            }
        }
    })
    .await;
    let clusterz: serde_json::Value = client
        .get(format!("{base}/debug/clusterz"))
        .send()
        .await
        .expect("clusterz")
        .json()
        .await
        .expect("clusterz json");
    assert_eq!(clusterz[0]["name"], "c1", "{clusterz}");
    assert_eq!(clusterz[0]["synced"], true, "{clusterz}");
    let r = client
        .get(format!("{base}/debug/config_dump?proxyID=nobody"))
        .send()
        .await
        .expect("config_dump");
    assert_eq!(r.status(), 404);
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(metrics.contains("istiod_managed_clusters 1"), "{metrics}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit after SIGTERM: {exit}");
}

#[test]
fn serve_on_a_taken_port_fails_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = mesh_file(dir.path(), "clusters: []\n");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = crossmesh(
        &[
            "serve",
            "--mesh",
            &mesh,
            "--xds-address",
            &addr,
            "--debug-address",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_one_line_failure(&out, &format!("cannot listen for xDS on {addr}"));
}
