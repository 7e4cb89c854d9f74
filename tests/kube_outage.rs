//! A member API server that goes down and comes back having lost its watch
//! history, end to end through a real Envoy gateway (issue 10, item 0).
//!
//! The sequence Istio users report most (istio#38440, #45992): the API server is
//! killed; while it is down a pod is replaced (the old one deleted, a new one
//! created); it comes back with every old resourceVersion expired, so each
//! kind's resumed watch answers 410 Gone and the client re-lists every kind. The
//! replaced pod must end up the only endpoint, and at no moment may the
//! cluster's last-known endpoint set be empty (in crossmesh's registry or in
//! Envoy): during the outage the old pod keeps serving, and the re-list swaps it
//! for the new one without a gap.
//!
//! Both forms a server uses to expire a watch are covered: an HTTP 200 watch
//! with a 410 `ERROR` event (the watch cache), and an HTTP 410 answer to the
//! watch request itself.

mod support;

#[path = "support/kube_api.rs"]
mod kube_api;
#[path = "support/kube_seed.rs"]
mod kube_seed;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube_api::ExpiredWatch;
use kube_seed::{KubeSeed, Layout};
use support::{wait_for, CONVERGE};

/// How long the API server stays down (the "about ten seconds"; long
/// enough for the watchers to back off several times).
const OUTAGE: Duration = Duration::from_secs(10);

/// What a watcher of the cluster's endpoints saw, sampled every 25 ms while the
/// test runs.
#[derive(Default)]
struct Observed {
    samples: usize,
    /// Samples in which the registry held no endpoint of cluster2's service.
    registry_empty: Vec<String>,
    /// Samples in which Envoy held no host for cluster2's service.
    envoy_empty: Vec<String>,
}

async fn outage_with_history_lost(form: ExpiredWatch) {
    let mut s = KubeSeed::start(Layout::default()).await;
    s.server(2).set_expired_watch(form);
    s.wait_hosts(2, &[1]).await;
    s.wait_answer(2, "cluster2-pod-a").await;

    let seed = Arc::new(Mutex::new(Observed::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = std::time::Instant::now();
    let monitor = {
        let seed_obs = seed.clone();
        let stop = stop.clone();
        let cp_debug = s.cp.debug;
        let envoy_admin = s.envoy.admin;
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let reg = registry_count(cp_debug).await;
                let env = envoy_count(envoy_admin).await;
                {
                    let mut o = seed_obs.lock().unwrap();
                    o.samples += 1;
                    if let Ok(0) = reg {
                        o.registry_empty.push(format!("{:?}", t0.elapsed()));
                    }
                    if let Ok(0) = env {
                        o.envoy_empty.push(format!("{:?}", t0.elapsed()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };

    // The API server dies.
    s.server(2).stop().await;
    s.wait_clusterz(2, "cluster2 stale", |c| c["stale"] == true)
        .await;
    // While it is down the pod is replaced.
    s.delete_pod(2, "a");
    let b = s.put_pod(2, 2, "b", true).await;
    // The old pod keeps serving for the whole outage (last-known state).
    let sent = s.keep_answering(2, &["cluster2-pod-a"], OUTAGE).await;
    assert!(sent > 0);

    // It comes back with every old resourceVersion expired.
    let lists = s.server(2).list_count();
    s.server(2).restart_with_history_lost().await;
    // The replaced pod is the only endpoint, in Envoy and in the registry.
    s.wait_hosts(2, &[2]).await;
    s.wait_answer(2, &b).await;
    wait_for("every kind re-listed after the 410s", CONVERGE, || async {
        match s.server(2).list_count() - lists {
            n if n >= 4 => Ok(()),
            n => Err(format!("{n} lists")),
        }
    })
    .await;
    s.wait_clusterz(2, "cluster2 fresh: 1 service, 1 pod", |c| {
        c["stale"] == false
            && c["last_error"].is_null()
            && c["counts"]["services"] == 1
            && c["counts"]["pods"] == 1
    })
    .await;
    let eps = s.registry_endpoints(2).await.expect("registryz");
    assert_eq!(eps.len(), 1, "{eps:?}");
    // ... and stays so ("for good"): a few seconds more of traffic to the new pod,
    // across re-watches.
    let sent = s
        .keep_answering(2, &[b.as_str()], Duration::from_secs(3))
        .await;
    assert!(sent > 0);
    let c = s.clusterz(2).await.expect("clusterz");
    assert_eq!(
        (c["counts"]["services"].clone(), c["counts"]["pods"].clone()),
        (serde_json::json!(1), serde_json::json!(1)),
        "{c}"
    );

    stop.store(true, Ordering::SeqCst);
    monitor.await.expect("monitor");
    let o = seed.lock().unwrap();
    assert!(o.samples > 100, "too few samples: {}", o.samples);
    assert!(
        o.registry_empty.is_empty(),
        "registry held no endpoint for cluster2 at {:?}",
        o.registry_empty
    );
    assert!(
        o.envoy_empty.is_empty(),
        "Envoy held no host for cluster2 at {:?}",
        o.envoy_empty
    );
    // The other clusters were not touched.
    s.wait_answer(1, "cluster1-pod-a").await;
    s.wait_answer(3, "cluster3-pod-a").await;
}

async fn get_json(addr: SocketAddr, path: &str) -> Result<serde_json::Value, String> {
    let r = support::http::get(addr, "localhost", path).await?;
    if r.status != 200 {
        return Err(format!("{path}: HTTP {}", r.status));
    }
    serde_json::from_str(&r.body).map_err(|e| e.to_string())
}

/// Endpoints of cluster2's service from member cluster2 on `/debug/registryz`.
async fn registry_count(debug: SocketAddr) -> Result<usize, String> {
    let j = get_json(debug, "/debug/registryz").await?;
    let svc = j["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["hostname"] == "cluster2.test.svc.cluster.local")
        .ok_or("no service")?;
    Ok(svc["endpoints"]["cluster2"]
        .as_array()
        .map_or(0, |a| a.len()))
}

/// Hosts of `outbound|80||cluster2.test.svc.cluster.local` in Envoy.
async fn envoy_count(admin: SocketAddr) -> Result<usize, String> {
    let j = get_json(admin, "/clusters?format=json").await?;
    let c = j["cluster_statuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "outbound|80||cluster2.test.svc.cluster.local")
        .ok_or("no cluster")?;
    Ok(c["host_statuses"].as_array().map_or(0, |a| a.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lost_outage_with_410_error_events() {
    outage_with_history_lost(ExpiredWatch::ErrorEvent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lost_outage_with_http_410() {
    outage_with_history_lost(ExpiredWatch::HttpGone).await;
}
