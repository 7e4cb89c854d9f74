//! Memory per 1,000 Pods watched (an upper bound: resident-set growth of the whole
//! process while the kube source lists and keeps N Pods, the fake API server's own
//! copies excluded by populating it first). Run:
//! `cargo test --release --test kube_memory -- --ignored --nocapture`

#[path = "support/kube_api.rs"]
mod kube_api;

use std::sync::Arc;
use std::time::Duration;

use crossmesh::config::MeshConfig;
use crossmesh::push::PushQueue;
use crossmesh::registry::Registry;
use crossmesh::sources::kube::{spawn_cluster, KubeOptions};
use kube_api::{objects, FakeApiServer};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; prints bytes per 1,000 Pods"]
async fn memory_per_thousand_pods() {
    const N: usize = 20_000;
    let s = FakeApiServer::start("c1").await;
    s.apply(&objects::node("n1", "r", "z"));
    for svc in 0..100 {
        s.apply(&objects::service(
            "ns1",
            &format!("svc-{svc}"),
            &[("app", &format!("a{svc}"))],
            &[("http", 80, 8080)],
        ));
    }
    for i in 0..N {
        let mut p = objects::pod(
            "ns1",
            &format!("pod-{i}"),
            &format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
            "n1",
            &[
                ("app", &format!("a{}", i % 100)),
                ("pod-template-hash", "5d4f8c7b9"),
            ],
            true,
        );
        p["metadata"]["annotations"] =
            serde_json::json!({"kubectl.kubernetes.io/restartedAt": "2024-01-01T00:00:00Z"});
        s.apply(&p);
    }
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("c1");
    s.write_kubeconfig(&kc, None, None);
    let mesh = Arc::new(
        MeshConfig::parse(
            &format!("clusters:\n- name: c1\n  kubeconfig: {}\n", kc.display()),
            std::path::Path::new("/"),
        )
        .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_bytes();
    let registry = Registry::new(mesh.clone(), PushQueue::new());
    let _src = spawn_cluster(registry.clone(), &mesh.clusters[0], KubeOptions::default()).unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let st = registry.cluster_status();
        if st[0].synced && st[0].counts.pods == N {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "sync too slow");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let synced = t0.elapsed();
    let _ = registry.services();
    let after = rss_bytes();
    let per_k = (after.saturating_sub(before)) as f64 / (N as f64 / 1000.0);
    println!(
        "pods={N} sync={synced:?} rss_before={before} rss_after={after} bytes_per_1000_pods<={per_k:.0} ({:.0} B/pod)",
        per_k / 1000.0
    );
}
