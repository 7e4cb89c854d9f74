//! `ca.kubernetesSecret`: a generated root kept in a Kubernetes Secret of the
//! namespace `serve` runs in, so that replicas share one root and a replaced Pod
//! (an empty `stateDir`) finds it again. Runs the real binary "in a Pod" (see
//! `support::in_pod`) against the fake API server.

#[path = "support/kube_api.rs"]
mod kube_api;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use kube_api::{objects, FakeApiServer, Options};
use support::control_plane::{ControlPlane, StartOptions};
use support::in_pod::{api_env, in_pod, sa_dir};

const NS: &str = "crossmesh-system";
const SECRET: &str = "crossmesh-ca";
const FILES: [&str; 4] = [
    "ca-cert.pem",
    "ca-key.pem",
    "root-cert.pem",
    "cert-chain.pem",
];

async fn api() -> FakeApiServer {
    let api = FakeApiServer::start_with(Options {
        name: "c1".into(),
        tls: true,
        token: Some("sa-token-1".into()),
        ..Options::default()
    })
    .await;
    api.apply(&objects::namespace(NS));
    api.apply(&objects::namespace("istio-system"));
    api
}

/// The root published for proxies' bootstraps in `istio-system`.
fn published_root(api: &FakeApiServer) -> Option<String> {
    let cm = api.get("", "configmaps", "istio-system", "crossmesh-ca-root-cert")?;
    cm["data"]["root-cert.pem"].as_str().map(str::to_string)
}

/// A mesh file for one replica: the CA's local copy in `state`, kept in the Secret.
fn mesh(dir: &Path, state: &Path) -> PathBuf {
    let f = dir.join("mesh.yaml");
    std::fs::write(
        &f,
        format!(
            "clusters:\n- name: c1\n  inCluster: true\nca:\n  kubernetesSecret: {SECRET}\n  stateDir: {}\n  rootCertNamespaces: [istio-system]\n",
            state.display()
        ),
    )
    .unwrap();
    f
}

fn opts(api: &FakeApiServer, sa: &Path, wait_ready: bool) -> StartOptions {
    StartOptions {
        wrapper: in_pod(Some(sa)),
        env: api_env(api.addr().port()),
        no_wait_ready: !wait_ready,
    }
}

/// The Secret's data, decoded, by key.
fn secret_files(api: &FakeApiServer) -> Option<Vec<(String, String)>> {
    let s = api.get("", "secrets", NS, SECRET)?;
    let data = s["data"].as_object()?;
    Some(
        data.iter()
            .map(|(k, v)| {
                let b = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap_or_default())
                    .unwrap_or_default();
                (k.clone(), String::from_utf8_lossy(&b).into_owned())
            })
            .collect(),
    )
}

fn read(state: &Path, file: &str) -> String {
    std::fs::read_to_string(state.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", state.join(file).display()))
}

/// Two replicas start at once with empty state: one creates the Secret, the other
/// takes its root; both sign with the Secret's root. A replica replaced with an
/// empty `stateDir` gets the same root back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_root_kept_in_the_secret() {
    let api = api().await;
    let sa = tempfile::tempdir().unwrap();
    sa_dir(sa.path(), "sa-token-1", api.ca_pem().unwrap(), NS);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (state_a, state_b) = (a.path().join("state/ca"), b.path().join("state/ca"));
    let (mesh_a, mesh_b) = (mesh(a.path(), &state_a), mesh(b.path(), &state_b));
    let (mut cp_a, cp_b) = tokio::join!(
        ControlPlane::start_with(&mesh_a, opts(&api, sa.path(), true)),
        ControlPlane::start_with(&mesh_b, opts(&api, sa.path(), true)),
    );
    let kept = secret_files(&api).expect("the Secret was created");
    let keys: Vec<&str> = kept.iter().map(|(k, _)| k.as_str()).collect();
    let mut want = FILES.to_vec();
    want.sort();
    assert_eq!(keys, want, "the Secret holds the cacerts layout");
    let root = &kept.iter().find(|(k, _)| k == "root-cert.pem").unwrap().1;
    assert!(root.contains("BEGIN CERTIFICATE"), "{root}");
    assert_eq!(&read(&state_a, "root-cert.pem"), root, "replica a's root");
    assert_eq!(&read(&state_b, "root-cert.pem"), root, "replica b's root");
    assert_eq!(
        read(&state_a, "ca-key.pem"),
        read(&state_b, "ca-key.pem"),
        "both replicas sign with one key"
    );
    for (cp, state) in [(&cp_a, &state_a), (&cp_b, &state_b)] {
        assert!(
            !cp.log().contains("PRIVATE KEY"),
            "the log of {} shows key material",
            state.display()
        );
    }
    // The trust bundle, and only it, is published for the proxies' bootstraps.
    let published = support::wait_for("the root ConfigMap", support::CONVERGE, || async {
        published_root(&api).ok_or_else(|| "not published".to_string())
    })
    .await;
    assert_eq!(&published, root, "istio-system/crossmesh-ca-root-cert");
    drop(cp_b);

    // Someone edits the published root: it is put back.
    api.apply(&serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "crossmesh-ca-root-cert", "namespace": "istio-system"},
        "data": {"root-cert.pem": "tampered"},
    }));

    // Replica a's Pod is replaced: its stateDir (an emptyDir) is gone.
    cp_a.kill();
    std::fs::remove_dir_all(a.path().join("state")).unwrap();
    let cp_a = ControlPlane::start_with(&mesh_a, opts(&api, sa.path(), true)).await;
    assert_eq!(&read(&state_a, "root-cert.pem"), root, "the root came back");
    assert_eq!(secret_files(&api).unwrap(), kept, "the Secret is unchanged");
    support::wait_for("the root ConfigMap restored", support::CONVERGE, || async {
        match published_root(&api) {
            Some(p) if &p == root => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    drop(cp_a);
}

/// A Secret that lacks a file stops `serve` with the Secret and the key named,
/// before any port opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_missing_a_file_is_named() {
    let api = api().await;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    api.apply(&serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": NS},
        "type": "Opaque",
        "data": {"root-cert.pem": b64("x"), "ca-cert.pem": b64("x"), "cert-chain.pem": b64("")},
    }));
    let sa = tempfile::tempdir().unwrap();
    sa_dir(sa.path(), "sa-token-1", api.ca_pem().unwrap(), NS);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("ca");
    let mut cp =
        ControlPlane::start_with(&mesh(dir.path(), &state), opts(&api, sa.path(), false)).await;
    let status = cp
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("serve exits");
    assert!(!status.success());
    let log = cp.log();
    assert!(
        log.contains(&format!("Secret {NS}/{SECRET} has no key \"ca-key.pem\"")),
        "{log}"
    );
    assert!(!state.exists(), "nothing was written to the stateDir");
}
