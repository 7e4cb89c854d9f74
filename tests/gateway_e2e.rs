//! Issue 2, end to end: the seed scenario (three member clusters from manifest
//! directories, cluster3 on network `account-b`; Gateway `istio-system/cluster` for
//! `*.imroc.cc`; VirtualServices `clusterN-imroc-cc`) served by the real `crossmesh
//! serve` to a real Envoy ingress gateway, asserted on real HTTP responses.
//!
//! Every test waits on conditions (HTTP answers, Envoy's `/clusters`, crossmesh's
//! debug endpoints), never on fixed sleeps. On failure the Envoy and crossmesh logs
//! are printed (see docs/TESTING.md).

mod support;

use support::http;
use support::scenario::{host_of, outbound_cluster, vs, Seed, CLUSTERS};
use support::{wait_for, CONVERGE};

/// Whether `j` holds, anywhere, an object whose `origin` ends with `file` and
/// whose `reason` or `message` mentions `why` (a rejection or warning entry).
fn reports(j: &serde_json::Value, file: &str, why: &str) -> bool {
    match j {
        serde_json::Value::Object(m) => {
            let origin = m.get("origin").and_then(|o| o.as_str()).unwrap_or("");
            let text = ["reason", "message"]
                .iter()
                .filter_map(|k| m.get(*k).and_then(|v| v.as_str()))
                .collect::<Vec<_>>()
                .join(" ");
            (origin.ends_with(file) && text.contains(why))
                || m.values().any(|v| reports(v, file, why))
        }
        serde_json::Value::Array(a) => a.iter().any(|v| reports(v, file, why)),
        _ => false,
    }
}

/// Assert `n` requests for `host` are all answered 200 by `pod`.
async fn assert_all_answered_by(s: &Seed, host: &str, pod: &str, n: usize) {
    let bodies = http::get_many(s.gw_addr(), host, n).await;
    assert!(
        bodies.iter().all(|b| b == pod),
        "every request for {host} should reach {pod}, got {bodies:?}"
    );
}

async fn three_hosts_route_to_their_cluster(sotw: bool) {
    let s = Seed::start(sotw).await;
    s.wait_all_hosts().await;
    for c in CLUSTERS {
        assert_all_answered_by(&s, &host_of(c), &format!("{c}-pod-a"), 5).await;
    }
    // Host with the listener port also matches (Istio adds `host:port` domains).
    let with_port = format!("cluster3.imroc.cc:{}", s.gw_port);
    let r = http::get(s.gw_addr(), &with_port, "/path?q=1")
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "cluster3-pod-a"),
        "Host {with_port}"
    );
    // The pod saw the client's Host and path.
    let seen = s.backend("cluster3-pod-a").seen();
    assert!(
        seen.contains(&(with_port.clone(), "/path?q=1".to_string())),
        "{seen:?}"
    );
    // Each pod was reached only through its own host.
    for c in CLUSTERS {
        let seen = s.backend(&format!("{c}-pod-a")).seen();
        assert!(
            seen.iter().all(|(h, _)| h.starts_with(&host_of(c))),
            "{c}-pod-a saw {seen:?}"
        );
    }

    // Envoy holds Istio-named clusters fed by EDS, one endpoint each.
    for (i, c) in CLUSTERS.iter().enumerate() {
        s.wait_hosts(c, &[s.pod_ip(i as u8 + 1, 1)]).await;
    }
    // It really used the ADS flavour we asked for.
    let dump = s.envoy.config_dump().await.to_string();
    let api = if sotw {
        "\"api_type\":\"GRPC\""
    } else {
        "\"api_type\":\"DELTA_GRPC\""
    };
    assert!(dump.contains(api), "bootstrap should use {api}");
    assert!(
        dump.contains(&outbound_cluster("cluster2")),
        "CDS has {}",
        outbound_cluster("cluster2")
    );
    // crossmesh lists the connected gateway.
    let id = s.gw.node_id();
    wait_for(
        "crossmesh /debug/syncz lists the gateway",
        CONVERGE,
        || async {
            let j = s.cp.json("/debug/syncz").await?.to_string();
            if j.contains(&id) {
                Ok(())
            } else {
                Err(j)
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_route_to_their_cluster_delta() {
    three_hosts_route_to_their_cluster(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_route_to_their_cluster_sotw() {
    three_hosts_route_to_their_cluster(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_gets_404() {
    let s = Seed::start(false).await;
    s.wait_all_hosts().await;
    let before: u64 = s.backends.iter().map(|b| b.requests()).sum();
    // Outside the Gateway's `*.imroc.cc`, and inside it but claimed by no
    // VirtualService: both are answered 404 by Envoy, reaching no pod.
    for host in ["example.com", "cluster9.imroc.cc", "imroc.cc"] {
        let r = http::get(s.gw_addr(), host, "/").await.unwrap();
        assert_eq!(r.status, 404, "Host {host}: {r:?}");
    }
    let after: u64 = s.backends.iter().map(|b| b.requests()).sum();
    assert_eq!(before, after, "no pod may see requests for unknown hosts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_pod_gets_traffic_and_deleted_pod_stops() {
    let mut s = Seed::start(false).await;
    s.wait_all_hosts().await;
    let host = host_of("cluster1");

    // Add a Pod file: the new pod receives traffic.
    let b = s.put_pod(1, 2, "b", true).await;
    s.wait_hosts("cluster1", &[s.pod_ip(1, 1), s.pod_ip(1, 2)])
        .await;
    s.wait_answer(&host, &b, CONVERGE).await;
    // Both pods get traffic, and nothing else answers.
    let bodies = http::until_each_answers(s.gw_addr(), &host, &["cluster1-pod-a", &b], 64)
        .await
        .unwrap_or_else(|bodies| panic!("not both pods answered: {bodies:?}"));
    assert!(
        bodies.iter().all(|x| x == "cluster1-pod-a" || x == &b),
        "{bodies:?}"
    );

    // Delete it: traffic to it stops.
    s.mesh.remove_cluster_file("cluster1", "pod-b.yaml");
    s.wait_hosts("cluster1", &[s.pod_ip(1, 1)]).await;
    let before = s.backend(&b).requests();
    assert_all_answered_by(&s, &host, "cluster1-pod-a", 20).await;
    assert_eq!(
        s.backend(&b).requests(),
        before,
        "a deleted pod gets no requests"
    );
    // Other hosts were not disturbed.
    assert_all_answered_by(&s, &host_of("cluster2"), "cluster2-pod-a", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unready_pod_stops_receiving_traffic() {
    let mut s = Seed::start(true).await;
    s.wait_all_hosts().await;
    let host = host_of("cluster3");

    let b = s.put_pod(3, 2, "b", true).await;
    s.wait_answer(&host, &b, CONVERGE).await;

    // Same Pod, Ready condition now False: it leaves the endpoints.
    s.put_pod(3, 2, "b", false).await;
    s.wait_hosts("cluster3", &[s.pod_ip(3, 1)]).await;
    let before = s.backend(&b).requests();
    assert_all_answered_by(&s, &host, "cluster3-pod-a", 20).await;
    assert_eq!(
        s.backend(&b).requests(),
        before,
        "an unready pod gets no requests"
    );

    // Ready again: it serves again.
    s.put_pod(3, 2, "b", true).await;
    s.wait_answer(&host, &b, CONVERGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_a_virtual_service_host_moves_routing() {
    let s = Seed::start(false).await;
    s.wait_all_hosts().await;

    s.mesh
        .write_istio("vs-cluster2.yaml", &vs("cluster2", "moved.imroc.cc"));
    s.wait_answer("moved.imroc.cc", "cluster2-pod-a", CONVERGE)
        .await;
    s.wait_status(&host_of("cluster2"), 404, CONVERGE).await;
    assert_all_answered_by(&s, &host_of("cluster1"), "cluster1-pod-a", 3).await;
    assert_all_answered_by(&s, &host_of("cluster3"), "cluster3-pod-a", 3).await;

    // Point a VirtualService at another cluster's service: routing follows.
    s.mesh.write_istio(
        "vs-cluster1.yaml",
        &support::manifests::virtual_service(
            "test",
            "cluster1-imroc-cc",
            &["istio-system/cluster"],
            &["cluster1.imroc.cc"],
            "cluster3.test.svc.cluster.local",
            80,
        ),
    );
    s.wait_answer(&host_of("cluster1"), "cluster3-pod-a", CONVERGE)
        .await;
}

async fn reconnect_gets_full_config(sotw: bool) {
    let mut s = Seed::start(sotw).await;
    s.wait_all_hosts().await;

    s.cp.kill();
    // Envoy keeps serving its last config while the control plane is away.
    assert_all_answered_by(&s, &host_of("cluster1"), "cluster1-pod-a", 3).await;

    // Change things while crossmesh is down: only a fresh, full push can deliver them.
    s.mesh
        .write_istio("vs-cluster3.yaml", &vs("cluster3", "c3.imroc.cc"));
    let b = s.put_pod(2, 2, "b", true).await;

    s.cp.restart().await;
    s.wait_answer("c3.imroc.cc", "cluster3-pod-a", CONVERGE)
        .await;
    s.wait_hosts("cluster2", &[s.pod_ip(2, 1), s.pod_ip(2, 2)])
        .await;
    s.wait_answer(&host_of("cluster2"), &b, CONVERGE).await;
    s.wait_status(&host_of("cluster3"), 404, CONVERGE).await;
    assert_all_answered_by(&s, &host_of("cluster1"), "cluster1-pod-a", 3).await;
    // Everything Envoy holds came from the new instance, which tracks the proxy.
    let id = s.gw.node_id();
    wait_for(
        "new crossmesh lists the reconnected gateway",
        CONVERGE,
        || async {
            let j = s.cp.json("/debug/syncz").await?.to_string();
            if j.contains(&id) {
                Ok(())
            } else {
                Err(j)
            }
        },
    )
    .await;
    // Envoy reports its xDS stream to the new instance as up.
    let ok = s.envoy.stat("control_plane.connected_state").await;
    assert_eq!(
        ok,
        Some(1),
        "envoy reports it is connected to the control plane"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_proxy_gets_full_config_back_delta() {
    reconnect_gets_full_config(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_proxy_gets_full_config_back_sotw() {
    reconnect_gets_full_config(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_reported_and_other_hosts_keep_working() {
    let s = Seed::start(false).await;
    s.wait_all_hosts().await;

    // A malformed YAML file, an unknown kind, a VirtualService whose destination host
    // the registry does not know, and a malformed manifest in a member cluster.
    s.mesh.write_istio(
        "broken.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: [unclosed\n",
    );
    s.mesh.write_istio(
        "unknown-kind.yaml",
        "apiVersion: networking.istio.io/v1\nkind: FooBar\nmetadata:\n  name: foo\n  namespace: test\nspec: {}\n",
    );
    s.mesh.write_istio(
        "vs-ghost.yaml",
        &support::manifests::virtual_service(
            "test",
            "ghost-imroc-cc",
            &["istio-system/cluster"],
            &["ghost.imroc.cc"],
            "ghost.test.svc.cluster.local",
            80,
        ),
    );
    s.mesh.write_cluster(
        "cluster2",
        "broken-pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: [\n",
    );

    // Each is reported with its file, object and reason: on /debug/configz for
    // Istio config, on /debug/clusterz for the member cluster's manifest.
    wait_for(
        "configz reports the bad Istio files and objects",
        CONVERGE,
        || async {
            let j = s.cp.json("/debug/configz").await?;
            let checks = [
                ("broken.yaml", "unclosed"),
                ("unknown-kind.yaml", "FooBar"),
                ("vs-ghost.yaml", "ghost.test.svc.cluster.local"),
            ];
            let missing: Vec<_> = checks
                .iter()
                .filter(|(file, why)| !reports(&j, file, why))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("no report for {missing:?} in {j}"))
            }
        },
    )
    .await;
    wait_for(
        "clusterz reports the bad cluster2 manifest",
        CONVERGE,
        || async {
            let j = s.cp.json("/debug/clusterz").await?;
            if reports(&j, "cluster2/broken-pod.yaml", "unclosed") {
                Ok(())
            } else {
                Err(j.to_string())
            }
        },
    )
    .await;

    // The ghost host's route is in force but names a service that does not
    // exist: as in Istio, the route points at a cluster Envoy does not have, and
    // Envoy answers 503 with an empty body (response flag NC), not a pod and not
    // 404. Every good host keeps working.
    let gw = s.gw_addr();
    wait_for(
        "ghost.imroc.cc answered 503 (no cluster)",
        CONVERGE,
        || async move {
            let r = http::get(gw, "ghost.imroc.cc", "/").await?;
            if r.status == 503 && r.body.is_empty() {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        },
    )
    .await;
    for c in CLUSTERS {
        assert_all_answered_by(&s, &host_of(c), &format!("{c}-pod-a"), 3).await;
    }
    // crossmesh is still alive and still applies good changes.
    assert!(s.cp.json("/debug/configz").await.is_ok());
    s.mesh.write_istio(
        "broken.yaml",
        &support::manifests::virtual_service(
            "test",
            "fixed-imroc-cc",
            &["istio-system/cluster"],
            &["fixed.imroc.cc"],
            "cluster1.test.svc.cluster.local",
            80,
        ),
    );
    s.wait_answer("fixed.imroc.cc", "cluster1-pod-a", CONVERGE)
        .await;
}

/// Envoy refuses an RE2 program larger than its runtime's
/// `re2.max_program_size.error_level` (100 by default); `crossmesh bootstrap`
/// raises it to Istio's 32,768, so a route regex of a few hundred alternations
/// (program size about 5,400) is accepted and routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_route_regex_loads_as_under_istio() {
    let s = Seed::start(false).await;
    s.wait_all_hosts().await;
    let alternatives: Vec<String> = (0..300).map(|i| format!("p{i}[a-z]+x{{3,9}}")).collect();
    let regex = format!("^/({})$", alternatives.join("|"));
    s.mesh.write_istio(
        "vs-regex.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: regex, namespace: test}}
spec:
  hosts: [regex.imroc.cc]
  gateways: [istio-system/cluster]
  http:
  - match:
    - uri: {{regex: '{regex}'}}
    route:
    - destination: {{host: cluster2.test.svc.cluster.local, port: {{number: 80}}}}
"
        ),
    );
    let addr = s.gw_addr();
    wait_for("the large regex route answers", CONVERGE, || async move {
        let r = http::get(addr, "regex.imroc.cc", "/p299abcxxxx").await?;
        if r.status == 200 && r.body == "cluster2-pod-a" {
            Ok(())
        } else {
            Err(format!("{} {:?}", r.status, r.body))
        }
    })
    .await;
    let miss = http::get(addr, "regex.imroc.cc", "/p299abc")
        .await
        .expect("answer");
    assert_eq!(miss.status, 404, "a path the regex does not match");
}
