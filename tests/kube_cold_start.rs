//! Cold start from the kube source (issue 16): from starting the kube sources
//! of a mesh held in fake API servers until every cluster is synced and the
//! merged service view holds every endpoint. Measurement, not an assertion on
//! time; ignored by default. Run (release build):
//!
//! ```text
//! cargo test --release --test kube_cold_start -- --ignored --nocapture
//! ```
//!
//! The mesh is the manifest cold-start row's (BENCHMARKS.md): 10,000 Services
//! x 2 clusters x 5 Pods, 100,000 endpoints, one fake API server per cluster in
//! this process (it shares the 2 cores with crossmesh, and the lists it serves
//! are built from JSON on every request). Printed: time to every cluster
//! synced (the registry then answers `/ready`), time until the merged view of
//! every Service is built (what the first push reads), and the process's CPU
//! time over both (server and crossmesh together).
//!
//! [`small_mesh_syncs_every_endpoint`] (not ignored; no timing) runs the same
//! set-up at 20 Services x 2 clusters x 3 Pods and checks that every Service
//! ends up with exactly its pods' addresses from both clusters.

#[path = "support/kube_api.rs"]
mod kube_api;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossmesh::config::MeshConfig;
use crossmesh::push::PushQueue;
use crossmesh::registry::Registry;
use crossmesh::sources::kube::{spawn_cluster, KubeOptions};
use kube_api::{objects, FakeApiServer};

const NS: &str = "bench";

fn pod_ip(cluster: usize, svc: usize, pod: usize) -> String {
    let i = svc * 8 + pod;
    format!(
        "10.{}.{}.{}",
        16 * cluster + (i >> 16),
        (i >> 8) & 255,
        i & 255
    )
}

fn host(svc: usize) -> String {
    format!("svc-{svc}.{NS}.svc.cluster.local")
}

/// One fake API server per cluster, each with `services` Services of `pods`
/// Ready Pods.
async fn mesh(
    services: usize,
    clusters: usize,
    pods: usize,
) -> (Vec<FakeApiServer>, tempfile::TempDir, Arc<MeshConfig>) {
    let dir = tempfile::tempdir().unwrap();
    let mut servers = Vec::new();
    let mut yaml = String::from("clusters:\n");
    for c in 0..clusters {
        let name = format!("c{}", c + 1);
        let s = FakeApiServer::start(&name).await;
        s.apply(&objects::node("n1", "r", "z"));
        for svc in 0..services {
            let app = format!("svc-{svc}");
            s.apply(&objects::service(
                NS,
                &app,
                &[("app", &app)],
                &[("http", 80, 8080)],
            ));
            for p in 0..pods {
                s.apply(&objects::pod(
                    NS,
                    &format!("svc-{svc}-{p}"),
                    &pod_ip(c, svc, p),
                    "n1",
                    &[("app", &app)],
                    true,
                ));
            }
        }
        let kc = dir.path().join(&name);
        s.write_kubeconfig(&kc, None, None);
        yaml += &format!("- name: {name}\n  kubeconfig: {}\n", kc.display());
        servers.push(s);
    }
    let mesh = Arc::new(MeshConfig::parse(&yaml, std::path::Path::new("/")).unwrap());
    (servers, dir, mesh)
}

/// CPU time of this process (user + system), from `/proc/self/stat`.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

struct ColdStart {
    synced: Duration,
    merged: Duration,
    cpu: Duration,
}

/// Start every cluster's kube source and wait until each is synced with
/// `services * pods` Pods, then build the merged view.
async fn cold_start(
    registry: &Arc<Registry>,
    mesh: &MeshConfig,
    services: usize,
    pods: usize,
) -> (ColdStart, Vec<crossmesh::sources::kube::KubeCluster>) {
    let cpu0 = cpu();
    let t0 = Instant::now();
    let sources: Vec<_> = mesh
        .clusters
        .iter()
        .map(|c| spawn_cluster(registry.clone(), c, KubeOptions::default()).unwrap())
        .collect();
    loop {
        let st = registry.cluster_status();
        if st
            .iter()
            .all(|c| c.synced && c.counts.pods == services * pods && c.last_error.is_none())
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "not synced: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let synced = t0.elapsed();
    let merged_services = registry.services();
    let merged = t0.elapsed();
    assert!(merged_services.len() >= services);
    (
        ColdStart {
            synced,
            merged,
            cpu: cpu() - cpu0,
        },
        sources,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; prints the time to a synced registry on 100,000 endpoints"]
async fn cold_start_on_ten_thousand_services() {
    let (services, clusters, pods) = (10_000, 2, 5);
    let t = Instant::now();
    let (_servers, _dir, mesh) = mesh(services, clusters, pods).await;
    println!("fake API servers populated in {:?}", t.elapsed());
    let registry = Registry::new(mesh.clone(), PushQueue::new());
    let (m, _sources) = cold_start(&registry, &mesh, services, pods).await;
    let eps: usize = (0..services)
        .filter_map(|s| registry.service(&host(s)))
        .map(|s| s.endpoints.values().map(Vec::len).sum::<usize>())
        .sum();
    println!(
        "kube cold start: {services} services x {clusters} clusters x {pods} pods ({eps} endpoints): \
         synced {:.2} s, merged view {:.2} s, process CPU {:.2} s",
        m.synced.as_secs_f64(),
        m.merged.as_secs_f64(),
        m.cpu.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_mesh_syncs_every_endpoint() {
    let (services, clusters, pods) = (20, 2, 3);
    let (_servers, _dir, mesh) = mesh(services, clusters, pods).await;
    let registry = Registry::new(mesh.clone(), PushQueue::new());
    let (_, _sources) = cold_start(&registry, &mesh, services, pods).await;
    for s in 0..services {
        let svc = registry
            .service(&host(s))
            .unwrap_or_else(|| panic!("{} missing", host(s)));
        let mut got: Vec<String> = svc
            .endpoints
            .values()
            .flatten()
            .map(|e| e.address.to_string())
            .collect();
        got.sort();
        let mut want: Vec<String> = (0..clusters)
            .flat_map(|c| (0..pods).map(move |p| pod_ip(c, s, p)))
            .collect();
        want.sort();
        assert_eq!(got, want, "{}", host(s));
    }
}
