//! The kube source against fake API servers, checked at the registry: pods scaled up
//! and down, a cluster lost and regained, 410 recovery, credentials rotated in the
//! kubeconfig file, bad kubeconfigs and misbehaving servers reported on clusterz.

#[path = "support/kube_api.rs"]
mod kube_api;

use std::sync::Arc;
use std::time::Duration;

use crossmesh::config::MeshConfig;
use crossmesh::push::PushQueue;
use crossmesh::registry::{ClusterStatus, Registry};
use crossmesh::sources::kube::{spawn_cluster, KubeCluster, KubeOptions};
use kube_api::{objects, FakeApiServer, Fault, Options};

const HOST: &str = "web.ns1.svc.cluster.local";
/// Watches a member cluster holds open: Services, Pods, Nodes, EndpointSlices,
/// and Secrets (`credentialName`, `sources::secrets`).
const WATCHES: u64 = 5;

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Setup {
    registry: Arc<Registry>,
    _dir: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
    _source: Option<KubeCluster>,
    queue: PushQueue,
}

fn mesh(path: &std::path::Path) -> Arc<MeshConfig> {
    let text = format!(
        "clusters:\n- name: c1\n  network: n1\n  kubeconfig: {}\n",
        path.display()
    );
    Arc::new(MeshConfig::parse(&text, std::path::Path::new("/")).unwrap())
}

async fn setup(s: &FakeApiServer, opts: KubeOptions) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("c1.kubeconfig");
    s.write_kubeconfig(&kubeconfig, None, None);
    let mesh = mesh(&kubeconfig);
    let queue = PushQueue::new();
    let registry = Registry::new(mesh.clone(), queue.clone());
    let source = spawn_cluster(registry.clone(), &mesh.clusters[0], opts).unwrap();
    Setup {
        registry,
        _dir: dir,
        kubeconfig,
        _source: Some(source),
        queue,
    }
}

fn seed(s: &FakeApiServer, pods: usize) {
    s.apply(&objects::node("n1", "us-east1", "us-east1-b"));
    s.apply(&objects::service(
        "ns1",
        "web",
        &[("app", "web")],
        &[("http", 80, 8080)],
    ));
    for i in 0..pods {
        s.apply(&web_pod(i));
    }
}

fn web_pod(i: usize) -> serde_json::Value {
    objects::pod(
        "ns1",
        &format!("web-{i}"),
        &format!("10.1.0.{}", i + 1),
        "n1",
        &[("app", "web")],
        true,
    )
}

/// Ready endpoint addresses of `HOST` port 80, sorted.
fn endpoints(r: &Registry) -> Vec<String> {
    let Some(svc) = r.service(HOST) else {
        return Vec::new();
    };
    let mut v: Vec<String> = svc
        .endpoints
        .get(&80)
        .into_iter()
        .flatten()
        .filter(|e| e.ready)
        .map(|e| format!("{}:{}", e.address, e.port))
        .collect();
    v.sort();
    v
}

fn status(r: &Registry) -> ClusterStatus {
    r.cluster_status()
        .into_iter()
        .find(|c| c.name == "c1")
        .unwrap()
}

fn stale(r: &Registry) -> bool {
    r.service(HOST)
        .and_then(|s| s.endpoints.get(&80).cloned())
        .is_some_and(|e| !e.is_empty() && e.iter().all(|e| e.stale))
}

#[tokio::test]
async fn pods_scaled_up_and_down_reach_the_registry() {
    let s = FakeApiServer::start("c1").await;
    seed(&s, 2);
    let t = setup(&s, KubeOptions::default()).await;
    wait_for("initial sync", 10, || endpoints(&t.registry).len() == 2).await;
    let st = status(&t.registry);
    assert!(st.synced && !st.stale && st.last_error.is_none(), "{st:?}");
    assert_eq!(
        (st.counts.pods, st.counts.services, st.counts.nodes),
        (2, 1, 1)
    );
    assert!(st.last_event_time.is_some());
    let ep = t.registry.service(HOST).unwrap().endpoints[&80][0].clone();
    assert_eq!(ep.locality.region, "us-east1");
    assert_eq!(&*ep.network, "n1");

    // Scale up: a new ready pod; then one more that is not ready yet.
    s.apply(&web_pod(2));
    wait_for("scale up", 10, || endpoints(&t.registry).len() == 3).await;
    t.queue.try_take();
    let mut p = web_pod(3);
    p["status"]["conditions"][0]["status"] = "False".into();
    s.apply(&p);
    s.apply(&web_pod(3));
    wait_for("pod ready", 10, || endpoints(&t.registry).len() == 4).await;
    // A pod update is an endpoint-only push for this one service.
    let req = t.queue.try_take().expect("a push");
    assert!(!req.full, "{req:?}");
    assert!(req.services.iter().any(|h| &**h == HOST));
    // Scale down.
    s.delete("", "pods", "ns1", "web-0").unwrap();
    s.delete("", "pods", "ns1", "web-3").unwrap();
    wait_for("scale down", 10, || {
        endpoints(&t.registry) == ["10.1.0.2:8080", "10.1.0.3:8080"]
    })
    .await;
}

#[tokio::test]
async fn lost_cluster_keeps_stale_endpoints_and_reconciles_on_recovery() {
    let s = FakeApiServer::start("c1").await;
    seed(&s, 3);
    let t = setup(&s, KubeOptions::default()).await;
    wait_for("initial sync", 10, || endpoints(&t.registry).len() == 3).await;
    s.stop().await;
    wait_for("marked stale", 20, || stale(&t.registry)).await;
    let st = status(&t.registry);
    assert!(st.stale, "{st:?}");
    let err = st.last_error.clone().unwrap_or_default();
    assert!(err.contains("connect") || err.contains("watch"), "{err}");
    assert_eq!(
        endpoints(&t.registry).len(),
        3,
        "last-known endpoints are kept"
    );
    // Meanwhile a pod goes away and another appears.
    s.delete("", "pods", "ns1", "web-1").unwrap();
    s.apply(&web_pod(7));
    s.restart().await;
    wait_for("reconciled", 40, || {
        endpoints(&t.registry) == ["10.1.0.1:8080", "10.1.0.3:8080", "10.1.0.8:8080"]
            && !stale(&t.registry)
    })
    .await;
    let st = status(&t.registry);
    assert!(st.last_error.is_none() && !st.stale, "{st:?}");
    assert_eq!(st.counts.pods, 3);
}

#[tokio::test]
async fn quiet_cluster_is_fresh_again_after_restart() {
    let s = FakeApiServer::start("c1").await;
    seed(&s, 1);
    let t = setup(&s, KubeOptions::default()).await;
    wait_for("initial sync", 10, || endpoints(&t.registry).len() == 1).await;
    s.stop().await;
    wait_for("marked stale", 20, || stale(&t.registry)).await;
    s.restart().await;
    // Nothing changed in the cluster: the re-established watches alone clear it.
    wait_for("fresh", 40, || {
        !stale(&t.registry) && status(&t.registry).last_error.is_none()
    })
    .await;
}

#[tokio::test]
async fn grace_period_drops_endpoints_then_relists() {
    let s = FakeApiServer::start("c1").await;
    seed(&s, 2);
    let t = setup(
        &s,
        KubeOptions {
            stale_grace: Some(Duration::from_millis(300)),
            ..KubeOptions::default()
        },
    )
    .await;
    wait_for("initial sync", 10, || endpoints(&t.registry).len() == 2).await;
    s.stop().await;
    wait_for("dropped", 20, || endpoints(&t.registry).is_empty()).await;
    s.delete("", "pods", "ns1", "web-0").unwrap();
    s.restart().await;
    wait_for("relisted", 40, || {
        endpoints(&t.registry) == ["10.1.0.2:8080"]
    })
    .await;
}

#[tokio::test]
async fn expired_watches_relist_without_loss_or_duplicates() {
    let s = FakeApiServer::start("c1").await;
    seed(&s, 3);
    let t = setup(&s, KubeOptions::default()).await;
    wait_for("initial sync", 10, || endpoints(&t.registry).len() == 3).await;
    wait_for("watches open", 10, || s.open_watches() == WATCHES).await;
    let lists = s.list_count();
    s.compact();
    s.delete("", "pods", "ns1", "web-2").unwrap();
    s.apply(&web_pod(5));
    wait_for("relisted", 20, || {
        endpoints(&t.registry) == ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.6:8080"]
    })
    .await;
    wait_for("every kind relisted", 20, || {
        s.list_count() >= lists + WATCHES
    })
    .await;
    let st = status(&t.registry);
    assert_eq!(st.counts.pods, 3);
    assert!(!st.stale && st.last_error.is_none(), "{st:?}");
}

#[tokio::test]
async fn watches_closing_at_once_are_paced_not_hot_looped() {
    let s = FakeApiServer::start("c1").await;
    seed(&s, 1);
    let t = setup(&s, KubeOptions::default()).await;
    wait_for("initial sync", 10, || endpoints(&t.registry).len() == 1).await;
    s.set_fault(Fault::CloseWatches);
    let before = s.watch_count();
    // Close the open watches so that the fault applies.
    s.stop().await;
    s.restart().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let n = s.watch_count() - before;
    eprintln!("watch requests while closing at once: {n}");
    // 5 kinds; pacing doubles from 200 ms: about 5 attempts each in 4 s at most.
    assert!(n <= WATCHES * 8, "{n} watch requests in 4 s: hot loop");
    s.set_fault(Fault::None);
    s.apply(&web_pod(1));
    wait_for("recovered", 60, || endpoints(&t.registry).len() == 2).await;
}

#[tokio::test]
async fn garbage_from_the_api_server_is_reported() {
    let s = FakeApiServer::start("c1").await;
    seed(&s, 1);
    s.set_fault(Fault::Garbage);
    let t = setup(&s, KubeOptions::default()).await;
    wait_for("error shown", 20, || {
        status(&t.registry)
            .last_error
            .is_some_and(|e| e.contains("not Kubernetes JSON"))
    })
    .await;
    assert!(!status(&t.registry).synced);
    s.set_fault(Fault::None);
    wait_for("synced after the fault", 60, || {
        endpoints(&t.registry).len() == 1
    })
    .await;
}

#[tokio::test]
async fn bad_kubeconfigs_are_reported_with_a_reason() {
    let s = FakeApiServer::start_with(Options {
        name: "c1".into(),
        tls: true,
        token: Some("good".into()),
        ..Options::default()
    })
    .await;
    seed(&s, 1);
    let t = setup(&s, KubeOptions::default()).await;
    wait_for("initial sync", 10, || endpoints(&t.registry).len() == 1).await;

    // Garbage in the file: the old client keeps serving, the reason is shown.
    std::fs::write(&t.kubeconfig, "clusters: [ this is not a kubeconfig").unwrap();
    wait_for("invalid kubeconfig reported", 20, || {
        status(&t.registry)
            .last_error
            .is_some_and(|e| e.contains("not a valid kubeconfig"))
    })
    .await;
    assert_eq!(endpoints(&t.registry).len(), 1);

    // A wrong CA: the new client never syncs, so the old one keeps serving.
    s.write_kubeconfig(&t.kubeconfig, None, Some(&kube_api::unrelated_ca_pem()));
    wait_for("wrong CA reported", 30, || {
        status(&t.registry)
            .last_error
            .is_some_and(|e| e.contains("wrong CA"))
    })
    .await;
    s.apply(&web_pod(1));
    wait_for("old client still works", 10, || {
        endpoints(&t.registry).len() == 2
    })
    .await;

    // The token expires: reported as such.
    s.set_tokens(&["rotated"]);
    s.stop().await;
    s.restart().await;
    wait_for("expired token reported", 30, || {
        status(&t.registry)
            .last_error
            .is_some_and(|e| e.contains("401"))
    })
    .await;
    // Rotating the token in the file recovers, without dropping endpoints.
    s.write_kubeconfig(&t.kubeconfig, Some("rotated"), None);
    s.delete("", "pods", "ns1", "web-0").unwrap();
    wait_for("new credentials synced", 40, || {
        endpoints(&t.registry) == ["10.1.0.2:8080"] && status(&t.registry).last_error.is_none()
    })
    .await;
}

#[tokio::test]
async fn rotated_credentials_sync_before_the_old_client_stops() {
    let s = FakeApiServer::start_with(Options {
        name: "c1".into(),
        token: Some("old".into()),
        ..Options::default()
    })
    .await;
    seed(&s, 2);
    let t = setup(&s, KubeOptions::default()).await;
    wait_for("initial sync", 10, || endpoints(&t.registry).len() == 2).await;
    s.set_tokens(&["old", "new"]);
    let lists = s.list_count();
    t.queue.try_take();
    s.write_kubeconfig(&t.kubeconfig, Some("new"), None);
    wait_for("new client listed", 20, || {
        s.list_count() >= lists + WATCHES
    })
    .await;
    wait_for("old watches closed", 20, || s.open_watches() == WATCHES).await;
    // Same objects: the swap itself pushes nothing for the service.
    assert_eq!(endpoints(&t.registry).len(), 2);
    if let Some(req) = t.queue.try_take() {
        assert!(!req.services.iter().any(|h| &**h == HOST), "{req:?}");
    }
    s.set_tokens(&["new"]);
    s.apply(&web_pod(4));
    wait_for("events through the new client", 10, || {
        endpoints(&t.registry).len() == 3
    })
    .await;
}

/// Ready endpoint addresses of `host` port `port`, sorted.
fn ready_at(r: &Registry, host: &str, port: u16) -> Vec<String> {
    let mut v: Vec<String> = r
        .service(host)
        .and_then(|s| s.endpoints.get(&port).cloned())
        .into_iter()
        .flatten()
        .filter(|e| e.ready)
        .map(|e| format!("{}:{}", e.address, e.port))
        .collect();
    v.sort();
    v
}

fn slice(name: &str, service: &str, managed_by: &str, ips: &[&str]) -> serde_json::Value {
    let eps: Vec<serde_json::Value> = ips
        .iter()
        .map(|ip| serde_json::json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "ns1", "labels": {
            "kubernetes.io/service-name": service,
            "endpointslice.kubernetes.io/managed-by": managed_by
        }},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": "tcp", "port": 5432, "protocol": "TCP"}]
    })
}

/// Issue 3 item 1: a Service without a selector is served from its EndpointSlices,
/// live; slices of the endpointslice controller (which mirror selector-based
/// Services, computed from Pods) are not watched.
#[tokio::test]
async fn selectorless_service_is_served_from_its_endpointslices() {
    const DB: &str = "db.ns1.svc.cluster.local";
    let s = FakeApiServer::start("c1").await;
    seed(&s, 1);
    s.apply(&objects::service("ns1", "db", &[], &[("tcp", 5432, 5432)]));
    s.apply(&slice(
        "db-1",
        "db",
        "endpointslicemirroring-controller.k8s.io",
        &["10.9.0.1"],
    ));
    // The controller's mirror of `web`: if it were read, `web` would not change
    // (selector-based), but the slice count would.
    s.apply(&slice(
        "web-abcde",
        "web",
        "endpointslice-controller.k8s.io",
        &["10.1.0.1"],
    ));
    let t = setup(&s, KubeOptions::default()).await;
    wait_for("initial sync", 10, || {
        ready_at(&t.registry, DB, 5432) == ["10.9.0.1:5432"] && endpoints(&t.registry).len() == 1
    })
    .await;
    let st = status(&t.registry);
    assert_eq!(st.counts.endpointslices, 1, "{st:?}");
    assert!(st.rejected.is_empty(), "{st:?}");

    // Live: a second address, a second slice, then slices deleted.
    s.apply(&slice(
        "db-1",
        "db",
        "endpointslicemirroring-controller.k8s.io",
        &["10.9.0.1", "10.9.0.2"],
    ));
    s.apply(&slice("db-2", "db", "my-controller", &["10.9.1.1"]));
    wait_for("slice updates", 10, || {
        ready_at(&t.registry, DB, 5432) == ["10.9.0.1:5432", "10.9.0.2:5432", "10.9.1.1:5432"]
    })
    .await;
    s.delete("discovery.k8s.io", "endpointslices", "ns1", "db-1")
        .unwrap();
    wait_for("slice deleted", 10, || {
        ready_at(&t.registry, DB, 5432) == ["10.9.1.1:5432"]
    })
    .await;
    assert_eq!(status(&t.registry).counts.endpointslices, 1);
}

/// Bad input: Pods and Services with odd fields are rejected one by one, named
/// (kind, namespace/name) with the reason on clusterz; the cluster stays synced
/// and every other object is served, at the first list and from watch events.
#[tokio::test]
async fn odd_pods_and_services_are_rejected_by_name_others_served() {
    let s = FakeApiServer::start("c1").await;
    seed(&s, 2);
    // A pod IP that is not an IP, and fields crossmesh does not know (ignored by
    // the API types, so harmless).
    let mut bad_ip = web_pod(5);
    bad_ip["metadata"]["name"] = "bad-ip".into();
    bad_ip["status"]["podIP"] = "10.1.0.999".into();
    bad_ip["spec"]["someFutureField"] = serde_json::json!({"x": [1, 2]});
    s.apply(&bad_ip);
    let mut odd = web_pod(6);
    odd["metadata"]["name"] = "odd-but-fine".into();
    odd["spec"]["someFutureField"] = serde_json::json!({"x": [1, 2]});
    odd["status"]["conditions"] = serde_json::json!([
        {"type": "Ready", "status": "True"},
        {"type": "example.com/Gate", "status": "Unknown"}
    ]);
    s.apply(&odd);
    let mut ext = objects::service("ns1", "ext", &[], &[("http", 80, 80)]);
    ext["spec"]["type"] = "ExternalName".into();
    ext["spec"]["externalName"] = "example.com".into();
    s.apply(&ext);
    let mut two = objects::service("ns1", "two", &[("app", "web")], &[]);
    two["spec"]["ports"] = serde_json::json!([{"port": 80}, {"port": 81}]);
    s.apply(&two);

    let t = setup(&s, KubeOptions::default()).await;
    let rejected = |r: &Registry, kind: &str, obj: &str, why: &str| {
        status(r)
            .rejected
            .iter()
            .any(|p| p.kind == kind && p.object == obj && p.reason.contains(why))
    };
    wait_for("synced with the good objects", 10, || {
        status(&t.registry).synced
            && endpoints(&t.registry) == ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.7:8080"]
    })
    .await;
    let st = status(&t.registry);
    assert!(st.last_error.is_none(), "{st:?}");
    assert!(
        rejected(&t.registry, "Pod", "ns1/bad-ip", "not an IP address"),
        "{st:?}"
    );
    assert!(
        rejected(&t.registry, "Service", "ns1/ext", "ExternalName"),
        "{st:?}"
    );
    assert!(
        rejected(&t.registry, "Service", "ns1/two", "needs a name"),
        "{st:?}"
    );
    assert_eq!(st.rejected.len(), 3, "{st:?}");
    assert!(t.registry.service("ext.ns1.svc.cluster.local").is_none());

    // From a watch event: a good pod turns bad, then is fixed.
    let mut p = web_pod(1);
    p["status"]["podIP"] = "garbage".into();
    s.apply(&p);
    wait_for("web-1 rejected from an event", 10, || {
        rejected(&t.registry, "Pod", "ns1/web-1", "not an IP address")
            && endpoints(&t.registry) == ["10.1.0.1:8080", "10.1.0.7:8080"]
    })
    .await;
    s.apply(&web_pod(1));
    wait_for("web-1 served again", 10, || {
        !rejected(&t.registry, "Pod", "ns1/web-1", "")
            && endpoints(&t.registry) == ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.7:8080"]
    })
    .await;
    assert!(status(&t.registry).synced);
}

/// Bad input never harms another cluster: c1's API server answers garbage, c2's
/// kubeconfig has the wrong CA, c3 is fine and syncs and serves regardless.
#[tokio::test]
async fn a_broken_cluster_does_not_harm_the_others() {
    let c1 = FakeApiServer::start("c1").await;
    let c2 = FakeApiServer::start_with(Options {
        name: "c2".into(),
        tls: true,
        token: Some("t".into()),
        ..Options::default()
    })
    .await;
    let c3 = FakeApiServer::start("c3").await;
    for (s, ip) in [(&c1, "10.1.0.1"), (&c2, "10.2.0.1"), (&c3, "10.3.0.1")] {
        objects::seed_web(s, ip);
    }
    c1.set_fault(Fault::Garbage);
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2, k3) = (
        dir.path().join("c1"),
        dir.path().join("c2"),
        dir.path().join("c3"),
    );
    c1.write_kubeconfig(&k1, None, None);
    c2.write_kubeconfig(&k2, None, Some(&kube_api::unrelated_ca_pem()));
    c3.write_kubeconfig(&k3, None, None);
    let text = format!(
        "clusters:\n- name: c1\n  kubeconfig: {}\n- name: c2\n  kubeconfig: {}\n- name: c3\n  kubeconfig: {}\n",
        k1.display(),
        k2.display(),
        k3.display()
    );
    let mesh = Arc::new(MeshConfig::parse(&text, std::path::Path::new("/")).unwrap());
    let registry = Registry::new(mesh.clone(), PushQueue::new());
    let _sources: Vec<KubeCluster> = mesh
        .clusters
        .iter()
        .map(|c| spawn_cluster(registry.clone(), c, KubeOptions::default()).unwrap())
        .collect();
    let st = |name: &str| {
        registry
            .cluster_status()
            .into_iter()
            .find(|c| c.name == name)
            .unwrap()
    };
    let clusters_of_web = || {
        let mut v: Vec<String> = registry
            .service(HOST)
            .and_then(|s| s.endpoints.get(&80).cloned())
            .into_iter()
            .flatten()
            .map(|e| format!("{}/{}", e.cluster, e.address))
            .collect();
        v.sort();
        v
    };
    wait_for("c3 serves, c1 and c2 report why not", 30, || {
        st("c3").synced
            && st("c3").last_error.is_none()
            && clusters_of_web() == ["c3/10.3.0.1"]
            && st("c1")
                .last_error
                .is_some_and(|e| e.contains("not Kubernetes JSON"))
            && st("c2").last_error.is_some_and(|e| e.contains("wrong CA"))
    })
    .await;
    assert!(!st("c1").synced && !st("c2").synced);
    // c3 stays live while the others fail.
    c3.apply(&objects::pod(
        "ns1",
        "web-1",
        "10.3.0.2",
        "n1",
        &[("app", "web")],
        true,
    ));
    wait_for("c3 live", 10, || {
        clusters_of_web() == ["c3/10.3.0.1", "c3/10.3.0.2"]
    })
    .await;
    // Fixing c1 and c2 brings them in without touching c3.
    c1.set_fault(Fault::None);
    c2.write_kubeconfig(&k2, Some("t"), None);
    wait_for("all three serve", 60, || {
        clusters_of_web() == ["c1/10.1.0.1", "c2/10.2.0.1", "c3/10.3.0.1", "c3/10.3.0.2"]
            && st("c1").last_error.is_none()
            && st("c2").last_error.is_none()
    })
    .await;
}

/// Issue 3 item 3: `deploy/rbac.yaml` grants the reader ServiceAccount that remote
/// secrets carry exactly read access (get, list, watch) to every kind the kube
/// source watches, and crossmesh itself read access to Secrets; the only writes
/// are creating TokenReviews and patching Gateway API status.
#[test]
fn deploy_rbac_is_read_only_and_covers_every_watched_kind() {
    use crossmesh::sources::kube::ISTIO_KINDS;
    use crossmesh::sources::remote_secret::{DEFAULT_NAMESPACE, READER_SERVICE_ACCOUNT};
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rbac.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<serde_json::Value> = text
        .split("\n---\n")
        .map(|d| serde_saphyr::from_str(d).unwrap_or_else(|e| panic!("{path}: {e}\n{d}")))
        .collect();
    let find = |kind: &str| -> Vec<&serde_json::Value> {
        docs.iter().filter(|d| d["kind"] == kind).collect()
    };
    let strs = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect()
    };
    // The one write: TokenReviews, to verify proxies' tokens (authenticated xDS).
    let token_review = |rule: &serde_json::Value| {
        strs(&rule["apiGroups"]) == ["authentication.k8s.io"]
            && strs(&rule["resources"]) == ["tokenreviews"]
            && strs(&rule["verbs"]) == ["create"]
    };
    // Gateway API status (`sources::gateway_status`): patches of exactly the
    // status subresources crossmesh writes.
    let status_write = |rule: &serde_json::Value| {
        strs(&rule["apiGroups"]) == [crossmesh::model::gateway_api::GROUP]
            && strs(&rule["resources"]) == crossmesh::sources::gateway_status::status_resources()
            && strs(&rule["verbs"]) == ["patch"]
    };
    for role in find("ClusterRole").into_iter().chain(find("Role")) {
        for rule in role["rules"].as_array().unwrap() {
            let verbs = strs(&rule["verbs"]);
            assert!(
                !verbs.is_empty()
                    && (token_review(rule)
                        || status_write(rule)
                        || verbs
                            .iter()
                            .all(|v| ["get", "list", "watch"].contains(&v.as_str()))),
                "{} grants {verbs:?}",
                role["metadata"]["name"]
            );
        }
    }
    let reader = find("ClusterRole")
        .into_iter()
        .find(|r| r["metadata"]["name"] == READER_SERVICE_ACCOUNT)
        .expect("ClusterRole crossmesh-reader");
    let grants = |group: &str, plural: &str| {
        reader["rules"].as_array().unwrap().iter().any(|r| {
            strs(&r["apiGroups"]).iter().any(|g| g == group)
                && strs(&r["resources"])
                    .iter()
                    .any(|x| x == plural || x == "*")
                && ["list", "watch"]
                    .iter()
                    .all(|v| strs(&r["verbs"]).iter().any(|x| x == v))
        })
    };
    let mut watched = vec![
        ("", "services"),
        ("", "pods"),
        ("", "nodes"),
        ("discovery.k8s.io", "endpointslices"),
    ];
    watched.extend(ISTIO_KINDS.iter().map(|(g, _, p)| (*g, *p)));
    watched.extend(
        crossmesh::sources::kube::GATEWAY_API_KINDS
            .iter()
            .chain(crossmesh::sources::kube::NAMESPACE_KINDS)
            .map(|(g, _, p)| (*g, *p)),
    );
    for (group, plural) in watched {
        assert!(grants(group, plural), "no list/watch on {group}/{plural}");
    }
    assert!(
        reader["rules"].as_array().unwrap().iter().any(token_review),
        "the reader cannot create TokenReviews"
    );
    assert!(
        reader["rules"].as_array().unwrap().iter().any(status_write),
        "the reader cannot patch Gateway API status"
    );
    let binding = find("ClusterRoleBinding")
        .into_iter()
        .find(|b| b["roleRef"]["name"] == READER_SERVICE_ACCOUNT)
        .expect("a ClusterRoleBinding of crossmesh-reader");
    assert!(
        binding["subjects"].as_array().unwrap().iter().any(|s| {
            s["kind"] == "ServiceAccount"
                && s["name"] == READER_SERVICE_ACCOUNT
                && s["namespace"] == DEFAULT_NAMESPACE
        }),
        "{binding}"
    );
    let secrets = find("Role")
        .into_iter()
        .find(|r| {
            r["metadata"]["namespace"] == DEFAULT_NAMESPACE
                && r["rules"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| strs(&x["resources"]).iter().any(|p| p == "secrets"))
        })
        .expect("a Role reading Secrets in crossmesh's namespace");
    assert!(!secrets["metadata"]["name"].is_null());
}
