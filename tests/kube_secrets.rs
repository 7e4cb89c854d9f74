//! TLS Secrets from a member cluster's API server (`sources::secrets`), checked
//! at the registry against the fake API server: a `kubernetes.io/tls` Secret
//! arrives, is replaced in place, is rejected when its key stops matching (with
//! its reason on configz), and leaves when deleted; Secrets without TLS keys
//! and service-account tokens are not kept.

#[path = "support/kube_api.rs"]
mod kube_api;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use crossmesh::config::MeshConfig;
use crossmesh::push::{ContextSource, PushQueue};
use crossmesh::registry::Registry;
use crossmesh::sources::kube::{spawn_cluster, KubeOptions};
use kube_api::FakeApiServer;
use serde_json::json;

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn secret(name: &str, ty: &str, data: &[(&str, &str)]) -> serde_json::Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    let data: serde_json::Map<String, serde_json::Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), json!(b64.encode(v))))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "istio-system"},
        "type": ty,
        "data": data,
    })
}

fn pair(cn: &str) -> (String, String) {
    let k = rcgen::generate_simple_self_signed(vec![cn.to_string()]).expect("cert");
    (k.cert.pem(), k.signing_key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_secrets_follow_the_api_server() {
    let s = FakeApiServer::start("c1").await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("c1.kubeconfig");
    s.write_kubeconfig(&kubeconfig, None, None);
    let mesh = Arc::new(
        MeshConfig::parse(
            &format!(
                "clusters:\n- name: c1\n  kubeconfig: {}\n",
                kubeconfig.display()
            ),
            std::path::Path::new("/"),
        )
        .unwrap(),
    );
    let registry = Registry::new(mesh.clone(), PushQueue::new());
    let (c1, k1) = pair("gw-v1.example.com");
    s.apply(&secret(
        "gw-cert",
        "kubernetes.io/tls",
        &[("tls.crt", &c1), ("tls.key", &k1)],
    ));
    s.apply(&secret("plain", "Opaque", &[("password", "x")]));
    s.apply(&secret(
        "token",
        "kubernetes.io/service-account-token",
        &[("token", "x"), ("ca.crt", &c1)],
    ));
    let _source =
        spawn_cluster(registry.clone(), &mesh.clusters[0], KubeOptions::default()).unwrap();
    let subject = |r: &Registry| {
        r.credentials()
            .key_pair("c1", "istio-system", "gw-cert")
            .map(|c| {
                c.key_pair
                    .as_ref()
                    .map(|(chain, _)| chain.clone())
                    .unwrap_or_default()
            })
    };
    wait_for("the listed Secret", || subject(&registry).is_ok()).await;
    assert_eq!(subject(&registry).unwrap(), c1);
    // Only the TLS Secret is kept.
    assert_eq!(
        registry.credentials().secrets.len(),
        1,
        "{:?}",
        registry.credentials()
    );

    // Replaced in place.
    let (c2, k2) = pair("gw-v2.example.com");
    s.apply(&secret(
        "gw-cert",
        "kubernetes.io/tls",
        &[("tls.crt", &c2), ("tls.key", &k2)],
    ));
    wait_for("the updated Secret", || {
        subject(&registry).is_ok_and(|s| s == c2)
    })
    .await;

    // A key that does not match: rejected, with the reason on configz.
    s.apply(&secret(
        "gw-cert",
        "kubernetes.io/tls",
        &[("tls.crt", &c2), ("tls.key", &k1)],
    ));
    wait_for("the rejected Secret", || {
        subject(&registry).is_err_and(|e| e.contains("rejected"))
    })
    .await;
    let status = registry.config_status();
    let rejected = serde_json::to_value(&status.rejected).unwrap();
    assert!(
        rejected
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "Secret"
                && r["origin"] == "cluster c1"
                && r["name"] == "gw-cert"
                && r["reason"].as_str().unwrap().contains("does not match")),
        "{rejected}"
    );
    assert!(!rejected.to_string().contains("PRIVATE KEY"));

    // Deleted: gone.
    s.delete("", "secrets", "istio-system", "gw-cert").unwrap();
    wait_for("the deleted Secret", || {
        registry.credentials().secrets.is_empty()
    })
    .await;
}
