//! Issue 3, end to end with real Envoy: the seed scenario (shared/seeds/002) with
//! its three member clusters served by three fake Kubernetes API servers
//! (`tests/support/kube_api.rs`), read by `crossmesh serve` through kubeconfig files,
//! and asserted on real HTTP answers through a real Envoy gateway:
//!
//! - the three hosts route to their cluster, with Istio config from cluster1's
//!   CRDs and from a manifests directory;
//! - a pod scaled up (and made Ready) gets traffic; scaled down it stops;
//! - a cluster added through a remote Secret at runtime serves; removed, it stops;
//!   the Secret printed by `crossmesh create-remote-secret` registers a cluster as is;
//! - an API server stopped for a while ([`outage`], default 4 s instead of the
//!   issue's 20 s so the suite stays fast; `CROSSMESH_TEST_OUTAGE_SECS=20` runs the
//!   issue's figure): traffic keeps flowing to the last-known endpoints, and after
//!   the restart a pod deleted meanwhile is gone from Envoy;
//! - with `unreachableClusterEndpoints: {dropAfter: ..}` the lost cluster's
//!   endpoints leave Envoy after the grace period and come back on recovery;
//! - a watch expired with 410 Gone (open, or resumed after an outage) recovers
//!   without losing or duplicating endpoints, and without a CDS/LDS push;
//! - `/ready` stops waiting for a dead cluster after `tunables.readyTimeoutMs`;
//! - `/metrics`: `istiod_managed_clusters` follows clusters added and removed,
//!   `crossmesh_cluster_synced{cluster}` each cluster's sync state.
//!
//! Tests wait on conditions, never on fixed sleeps; the outage itself is held for
//! its duration while requests keep being checked.

mod support;

#[path = "support/kube_api.rs"]
mod kube_api;
#[path = "support/kube_seed.rs"]
mod kube_seed;

use std::time::Duration;

use kube_api::objects;
use kube_seed::{IstioFrom, KubeSeed, Layout, Unserved};
use support::scenario::{host_of, NS};
use support::{http, wait_for, CONVERGE};

/// How long an API server stays down in the outage tests.
fn outage() -> Duration {
    let secs = std::env::var("CROSSMESH_TEST_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(4);
    Duration::from_secs(secs)
}

/// The longest pause of kube-rs's watcher backoff (`DefaultBackoff`: 800 ms
/// doubling to at most 30 s, with jitter). After a long outage (the issue's 20 s)
/// the next attempt may come up to this long after the API server is back.
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Wait until cluster `n` is reachable again (not stale, no error) after its API
/// server restarted: up to one full backoff pause, then convergence.
async fn wait_reconnected(s: &KubeSeed, n: u8) {
    wait_for(
        &format!("{} reconnected", kube_seed::name(n)),
        WATCH_BACKOFF_MAX + CONVERGE,
        || async {
            let c = s.clusterz(n).await?;
            if c["stale"] == false && c["last_error"].is_null() {
                Ok(())
            } else {
                Err(c.to_string())
            }
        },
    )
    .await;
}

/// Envoy's CDS and LDS update counters: unchanged means no full push reached it.
async fn cds_lds(s: &KubeSeed) -> (u64, u64) {
    let stat = |name: &'static str| async move {
        s.envoy
            .stat(name)
            .await
            .unwrap_or_else(|| panic!("Envoy has no stat {name}"))
    };
    let cds = stat("cluster_manager.cds.update_success").await;
    let lds = stat("listener_manager.lds.update_success").await;
    assert!(cds > 0 && lds > 0, "Envoy got no CDS/LDS yet: {cds} {lds}");
    (cds, lds)
}

/// One sample of crossmesh's `/metrics` (Prometheus text), by its exact series
/// (`name` or `name{labels}`); `None` when the series is absent.
async fn metric(s: &KubeSeed, series: &str) -> Result<Option<f64>, String> {
    let (code, body) = s.cp.get("/metrics").await?;
    if code != 200 {
        return Err(format!("/metrics answered {code}"));
    }
    Ok(body.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == series).then(|| v.parse().ok()).flatten()
    }))
}

/// Wait until `series` reads `want` (`None`: absent) on `/metrics`.
async fn wait_metric(s: &KubeSeed, series: &str, want: Option<f64>) {
    wait_for(&format!("{series} == {want:?}"), CONVERGE, || async {
        match metric(s, series).await? {
            v if v == want => Ok(()),
            v => Err(format!("{v:?}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clusters_from_api_servers_with_istio_crds() {
    let mut s = KubeSeed::start(Layout::default()).await;
    for n in 1..=3u8 {
        s.wait_answer(n, &format!("{}-pod-a", kube_seed::name(n)))
            .await;
        s.wait_hosts(n, &[1]).await;
        s.wait_clusterz(n, "cluster synced without error", |c| {
            c["synced"] == true && c["stale"] == false && c["last_error"].is_null()
        })
        .await;
    }
    let bodies = http::get_many(s.gw_addr(), &host_of("cluster2"), 5).await;
    assert!(bodies.iter().all(|b| b == "cluster2-pod-a"), "{bodies:?}");

    // A VirtualService deleted from cluster1's CRDs stops routing its host.
    s.server(1)
        .delete(
            "networking.istio.io",
            "virtualservices",
            NS,
            "cluster3-imroc-cc",
        )
        .unwrap();
    s.wait_not_served(3, Unserved::NoRoute).await;
    s.server(1)
        .apply(&kube_seed::virtual_service_object("cluster3"));
    s.wait_answer(3, "cluster3-pod-a").await;

    // A pod added not Ready is not routed; once Ready it gets traffic.
    let b = s.put_pod(2, 2, "b", false).await;
    wait_for(
        "pod-b listed, not ready, on registryz",
        CONVERGE,
        || async {
            let eps = s.registry_endpoints(2).await?;
            if eps.len() == 2 && eps.iter().filter(|e| e["ready"] == true).count() == 1 {
                Ok(())
            } else {
                Err(format!("{eps:?}"))
            }
        },
    )
    .await;
    s.wait_hosts(2, &[1]).await;
    s.put_pod(2, 2, "b", true).await;
    s.wait_hosts(2, &[1, 2]).await;
    s.wait_answer(2, &b).await;
    // Both pods get traffic.
    if let Err(bodies) = http::until_each_answers(
        s.gw_addr(),
        &host_of("cluster2"),
        &["cluster2-pod-a", &b],
        64,
    )
    .await
    {
        panic!("not both pods answered: {bodies:?}");
    }

    // Scaled down: pod-b deleted, no more traffic to it.
    s.delete_pod(2, "b");
    s.wait_hosts(2, &[1]).await;
    let before = s.backend(&b).requests();
    let bodies = http::get_many(s.gw_addr(), &host_of("cluster2"), 6).await;
    assert!(bodies.iter().all(|x| x == "cluster2-pod-a"), "{bodies:?}");
    assert_eq!(s.backend(&b).requests(), before, "deleted pod got traffic");
    // Other clusters untouched.
    s.wait_hosts(1, &[1]).await;
    s.wait_hosts(3, &[1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clusters_from_api_servers_with_istio_manifests() {
    let mut s = KubeSeed::start(Layout {
        istio: IstioFrom::Manifests,
        ..Layout::default()
    })
    .await;
    for n in 1..=3u8 {
        s.wait_answer(n, &format!("{}-pod-a", kube_seed::name(n)))
            .await;
    }
    // Scale cluster3 up to two pods and back.
    let b = s.put_pod(3, 2, "b", true).await;
    s.wait_hosts(3, &[1, 2]).await;
    s.wait_answer(3, &b).await;
    s.delete_pod(3, "b");
    s.wait_hosts(3, &[1]).await;
    s.wait_answer(3, "cluster3-pod-a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_added_by_remote_secret_serves_and_removed_stops() {
    // cluster3 is not in the mesh file; its Secret lives in a namespace chosen by
    // the mesh file.
    let ns = "mesh-secrets";
    let s = KubeSeed::start(Layout {
        members: vec![1, 2],
        extra_mesh: format!("remoteSecretNamespace: {ns}\n"),
        ..Layout::default()
    })
    .await;
    s.wait_answer(1, "cluster1-pod-a").await;
    s.wait_answer(2, "cluster2-pod-a").await;
    s.wait_not_served(3, Unserved::NoCluster).await;
    wait_metric(&s, "istiod_managed_clusters", Some(2.0)).await;
    wait_metric(&s, r#"crossmesh_cluster_synced{cluster="cluster3"}"#, None).await;

    let kubeconfig = s.server(3).kubeconfig_yaml(None, None);
    s.server(1).apply(&objects::remote_secret(
        ns,
        "istio-remote-secret-cluster3",
        ("istio/multiCluster", "true"),
        &[("cluster3", &kubeconfig)],
    ));
    s.wait_answer(3, "cluster3-pod-a").await;
    s.wait_hosts(3, &[1]).await;
    s.wait_clusterz(3, "cluster3 registered and synced", |c| {
        c["synced"] == true && c["last_error"].is_null()
    })
    .await;
    wait_metric(&s, "istiod_managed_clusters", Some(3.0)).await;
    wait_metric(
        &s,
        r#"crossmesh_cluster_synced{cluster="cluster3"}"#,
        Some(1.0),
    )
    .await;
    // It is a live member: its pods scale.
    let mut s = s;
    let b = s.put_pod(3, 2, "b", true).await;
    s.wait_hosts(3, &[1, 2]).await;
    s.wait_answer(3, &b).await;

    // Removing the Secret removes the cluster and its endpoints.
    s.server(1)
        .delete("", "secrets", ns, "istio-remote-secret-cluster3")
        .unwrap();
    s.wait_hosts(3, &[]).await;
    s.wait_not_served(3, Unserved::NoCluster).await;
    wait_for("cluster3 gone from clusterz", CONVERGE, || async {
        match s.clusterz(3).await {
            Err(e) if e.contains("not on clusterz") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Its watches were closed: the member API server has no open watch left.
    wait_for("no open watch on cluster3", CONVERGE, || async {
        match s.server(3).open_watches() {
            0 => Ok(()),
            n => Err(format!("{n} open")),
        }
    })
    .await;
    wait_metric(&s, "istiod_managed_clusters", Some(2.0)).await;
    wait_metric(&s, r#"crossmesh_cluster_synced{cluster="cluster3"}"#, None).await;
    s.wait_answer(1, "cluster1-pod-a").await;
    s.wait_answer(2, "cluster2-pod-a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_cluster_keeps_serving_and_reconciles_after_restart() {
    let mut s = KubeSeed::start(Layout::default()).await;
    let b = s.put_pod(2, 2, "b", true).await;
    s.wait_hosts(2, &[1, 2]).await;
    s.wait_answer(2, &b).await;
    let pushes = cds_lds(&s).await;

    s.server(2).stop().await;
    s.wait_clusterz(2, "cluster2 stale with an error", |c| {
        c["stale"] == true && !c["last_error"].is_null()
    })
    .await;
    wait_for("cluster2 endpoints marked stale", CONVERGE, || async {
        let eps = s.registry_endpoints(2).await?;
        if eps.len() == 2 && eps.iter().all(|e| e["stale"] == true) {
            Ok(())
        } else {
            Err(format!("{eps:?}"))
        }
    })
    .await;
    // Meanwhile pod-b is deleted in the (unreachable) cluster.
    s.delete_pod(2, "b");
    // For the whole outage traffic keeps flowing to the last-known endpoints.
    let sent = s.keep_answering(2, &["cluster2-pod-a", &b], outage()).await;
    assert!(sent > 0);
    s.wait_hosts(2, &[1, 2]).await;
    s.wait_answer(1, "cluster1-pod-a").await;

    s.server(2).restart().await;
    wait_reconnected(&s, 2).await;
    // The deletion made during the outage reaches Envoy; nothing is duplicated.
    s.wait_hosts(2, &[1]).await;
    s.wait_clusterz(2, "cluster2 recovered", |c| {
        c["stale"] == false && c["last_error"].is_null() && c["synced"] == true
    })
    .await;
    wait_for("one fresh endpoint for cluster2", CONVERGE, || async {
        let eps = s.registry_endpoints(2).await?;
        if eps.len() == 1 && eps[0]["stale"] == false {
            Ok(())
        } else {
            Err(format!("{eps:?}"))
        }
    })
    .await;
    let bodies = http::get_many(s.gw_addr(), &host_of("cluster2"), 4).await;
    assert!(bodies.iter().all(|x| x == "cluster2-pod-a"), "{bodies:?}");
    // Losing and regaining the cluster pushed endpoints only.
    assert_eq!(cds_lds(&s).await, pushes, "(CDS, LDS) updates changed");
    // The cluster is live again.
    let c = s.put_pod(2, 3, "c", true).await;
    s.wait_hosts(2, &[1, 3]).await;
    s.wait_answer(2, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_cluster_endpoints_dropped_after_grace_when_configured() {
    let s = KubeSeed::start(Layout {
        extra_mesh: "unreachableClusterEndpoints:\n  dropAfter: 1500ms\n".into(),
        ..Layout::default()
    })
    .await;
    s.wait_answer(2, "cluster2-pod-a").await;
    s.server(2).stop().await;
    // The lost cluster's endpoints and its Service go: Envoy drops the cluster.
    s.wait_hosts(2, &[]).await;
    s.wait_not_served(2, Unserved::NoCluster).await;
    s.wait_clusterz(2, "cluster2 lost, with an error", |c| {
        !c["last_error"].is_null()
    })
    .await;
    // Other clusters are not affected.
    s.wait_answer(1, "cluster1-pod-a").await;
    s.wait_answer(3, "cluster3-pod-a").await;
    s.server(2).restart().await;
    s.wait_hosts(2, &[1]).await;
    s.wait_answer(2, "cluster2-pod-a").await;
    s.wait_clusterz(2, "cluster2 synced again", |c| {
        c["synced"] == true && c["stale"] == false && c["last_error"].is_null()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_expired_with_410_recovers_without_losing_or_duplicating() {
    let mut s = KubeSeed::start(Layout::default()).await;
    let b = s.put_pod(2, 2, "b", true).await;
    s.wait_hosts(2, &[1, 2]).await;
    s.wait_answer(2, &b).await;
    let pushes = cds_lds(&s).await;

    // 1. Open watches expire (etcd compaction): every watcher gets a 410 ERROR
    //    event and re-lists.
    let lists = s.server(2).list_count();
    s.server(2).compact();
    wait_for("cluster2 re-listed after 410", CONVERGE, || async {
        let n = s.server(2).list_count();
        if n >= lists + 4 {
            Ok(())
        } else {
            Err(format!("{} lists since", n - lists))
        }
    })
    .await;
    // Changes after the re-list are seen (the new watch works) ...
    let c = s.put_pod(2, 3, "c", true).await;
    s.wait_hosts(2, &[1, 2, 3]).await;
    s.wait_answer(2, &c).await;
    // ... and each endpoint is there once, in crossmesh and in Envoy.
    let eps = s.registry_endpoints(2).await.unwrap();
    assert_eq!(eps.len(), 3, "{eps:?}");

    // 2. A watch resumed after an outage, from a resourceVersion the server no
    //    longer has: 410 on resume, re-list, and the changes made meanwhile (a
    //    delete and an add) are applied exactly.
    s.server(2).stop().await;
    s.wait_clusterz(2, "cluster2 stale", |c| c["stale"] == true)
        .await;
    s.delete_pod(2, "a");
    let d = s.put_pod(2, 4, "d", true).await;
    s.server(2).compact();
    s.server(2).restart().await;
    s.wait_hosts(2, &[2, 3, 4]).await;
    s.wait_answer(2, &d).await;
    s.wait_clusterz(2, "cluster2 recovered", |c| {
        c["stale"] == false && c["last_error"].is_null()
    })
    .await;
    let eps = s.registry_endpoints(2).await.unwrap();
    assert_eq!(eps.len(), 3, "{eps:?}");
    assert!(eps.iter().all(|e| e["stale"] == false), "{eps:?}");
    assert_eq!(cds_lds(&s).await, pushes, "(CDS, LDS) updates changed");
    // Other clusters kept their endpoints throughout.
    s.wait_hosts(1, &[1]).await;
    s.wait_hosts(3, &[1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_stops_waiting_for_a_dead_cluster_after_the_timeout() {
    const TIMEOUT_MS: u64 = 3000;
    let s = KubeSeed::start(Layout {
        dead: vec![3],
        extra_mesh: format!("tunables:\n  readyTimeoutMs: {TIMEOUT_MS}\n"),
        ..Layout::default()
    })
    .await;
    // `/ready` held back for the dead cluster, but not for the default 30 s.
    assert!(
        s.ready_after >= Duration::from_millis(TIMEOUT_MS),
        "/ready after {:?}, before the timeout",
        s.ready_after
    );
    assert!(
        s.ready_after < Duration::from_secs(25),
        "/ready after {:?}: the mesh file's readyTimeoutMs was not used",
        s.ready_after
    );
    let c = s.clusterz(3).await.unwrap();
    assert_eq!(c["synced"], false, "{c}");
    let err = c["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("connection refused"), "{c}");
    // Metrics: three managed clusters, the dead one not synced.
    wait_metric(&s, "istiod_managed_clusters", Some(3.0)).await;
    wait_metric(
        &s,
        r#"crossmesh_cluster_synced{cluster="cluster1"}"#,
        Some(1.0),
    )
    .await;
    wait_metric(
        &s,
        r#"crossmesh_cluster_synced{cluster="cluster3"}"#,
        Some(0.0),
    )
    .await;
    s.wait_answer(1, "cluster1-pod-a").await;
    s.wait_answer(2, "cluster2-pod-a").await;
    // The cluster comes up later and starts serving.
    s.server(3).restart().await;
    s.wait_answer(3, "cluster3-pod-a").await;
    s.wait_clusterz(3, "cluster3 synced", |c| c["synced"] == true)
        .await;
    wait_metric(
        &s,
        r#"crossmesh_cluster_synced{cluster="cluster3"}"#,
        Some(1.0),
    )
    .await;
}

/// Issue 3 item 3 end to end: the Secret printed by the `crossmesh
/// create-remote-secret` command, applied as is to the config cluster (cluster1)
/// in crossmesh's default namespace, registers the member, which then serves
/// through Envoy with the dedicated ServiceAccount's token. cluster3's API server
/// checks bearer tokens: the admin token that ran the command is revoked before
/// the Secret is applied, so only the ServiceAccount's token can work; the same
/// Secret with a wrong token is refused with HTTP 401 and serves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_printed_by_create_remote_secret_registers_the_cluster() {
    const ADMIN: &str = "cluster3-admin-token";
    let s = KubeSeed::start(Layout {
        members: vec![1, 2],
        ..Layout::default()
    })
    .await;
    s.wait_answer(1, "cluster1-pod-a").await;
    s.wait_not_served(3, Unserved::NoCluster).await;

    // The operator made crossmesh's namespace in the member (deploy/rbac.yaml)
    // and runs the command with an admin token: auth on.
    s.server(3).apply(&serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "crossmesh-system"}
    }));
    s.server(3).set_tokens(&[ADMIN]);
    let admin_kubeconfig = s.dir.path().join("cluster3.kubeconfig");
    s.server(3).write_kubeconfig(&admin_kubeconfig, None, None);
    let out = tokio::process::Command::new(support::control_plane::crossmesh_bin())
        .args(["create-remote-secret", "--name", "cluster3", "--kubeconfig"])
        .arg(&admin_kubeconfig)
        .output()
        .await
        .expect("run crossmesh create-remote-secret");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "create-remote-secret failed: {stderr}"
    );
    let yaml = String::from_utf8(out.stdout).expect("UTF-8 output");
    let secret: serde_json::Value = serde_saphyr::from_str(&yaml).expect("a YAML Secret");
    assert_eq!(secret["kind"], "Secret", "{yaml}");
    assert_eq!(
        secret["metadata"]["namespace"], "crossmesh-system",
        "{yaml}"
    );
    assert_eq!(
        secret["metadata"]["labels"]["crossmesh.io/multi-cluster"], "true",
        "{yaml}"
    );
    // It made the read-only ServiceAccount in the member cluster.
    assert!(
        s.server(3)
            .get(
                "",
                "serviceaccounts",
                "crossmesh-system",
                "crossmesh-reader"
            )
            .is_some(),
        "no crossmesh-reader ServiceAccount in cluster3"
    );
    // The kubeconfig inside carries the ServiceAccount's token (issued by the
    // API server's token controller), not the admin token.
    let data = |v: &serde_json::Value, key: &str| -> String {
        let sec: k8s_openapi::api::core::v1::Secret =
            serde_json::from_value(v.clone()).expect("a Secret");
        let bytes = sec
            .data
            .and_then(|d| d.get(key).map(|b| b.0.clone()))
            .unwrap_or_else(|| panic!("no data key {key} in {v}"));
        String::from_utf8(bytes).expect("UTF-8 data")
    };
    let token_secret = s
        .server(3)
        .get("", "secrets", "crossmesh-system", "crossmesh-reader-token")
        .expect("the ServiceAccount's token Secret");
    let sa_token = data(&token_secret, "token");
    let kubeconfig = data(&secret, "cluster3");
    assert!(kubeconfig.contains(&sa_token), "{kubeconfig}");
    assert!(!kubeconfig.contains(ADMIN), "{kubeconfig}");
    s.server(3).revoke_token(ADMIN);

    // The same Secret with a token the API server does not accept: the cluster
    // is registered, refused with 401, and serves nothing.
    let mut wrong = secret.clone();
    wrong["data"]["cluster3"] = serde_json::json!(kube_api::base64(
        kubeconfig
            .replace(&sa_token, "not-a-valid-token")
            .as_bytes()
    ));
    s.server(1).apply(&wrong);
    s.wait_clusterz(3, "cluster3 refused with 401", |c| {
        c["synced"] == false
            && c["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("HTTP 401"))
    })
    .await;
    s.wait_not_served(3, Unserved::NoCluster).await;
    assert_eq!(s.envoy_hosts(3).await, Ok(vec![]));

    // The printed Secret as is: the ServiceAccount's token works.
    s.server(1).apply(&secret);
    s.wait_answer(3, "cluster3-pod-a").await;
    s.wait_hosts(3, &[1]).await;
    s.wait_clusterz(3, "cluster3 registered from the printed Secret", |c| {
        c["synced"] == true && c["last_error"].is_null()
    })
    .await;
    s.wait_answer(1, "cluster1-pod-a").await;
    s.wait_answer(2, "cluster2-pod-a").await;
}
