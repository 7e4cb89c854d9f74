//! Several `crossmesh serve` replicas on one mesh file, as a Deployment with
//! `replicas: 2` runs them: one real Envoy gateway whose xDS cluster lists both,
//! a steady request loop, SIGTERM to the replica Envoy is connected to. Envoy
//! reconnects to the other replica without losing a request, and afterwards holds
//! resources of exactly the versions the first replica had sent: versions are
//! derived from content, not from a replica's own push history.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::backend::Backend;
use support::control_plane::{bootstrap_gateway, ControlPlane, GatewayProxy};
use support::envoy::Envoy;
use support::manifests::{self, cluster, Mesh};
use support::net::{free_port, Subnet};
use support::scenario::{host_of, outbound_cluster, vs, CLUSTERS, GW_SELECTOR, NS};
use support::{http, wait_for, CONVERGE};

/// The request loop's bounds: it stops after this many requests or this long,
/// whichever comes first (the move must be over well before).
const LOOP_MAX_REQUESTS: usize = 20_000;
const LOOP_MAX_TIME: Duration = Duration::from_secs(60);

/// The seed's three clusters (one pod each), the Gateway and VirtualServices.
async fn layout(subnet: &Subnet, pod_port: u16, gw_port: u16) -> (Mesh, Vec<Backend>) {
    let mesh = Mesh::new(&[
        cluster("cluster1", Some("vpc-a")),
        cluster("cluster2", Some("vpc-a")),
        cluster("cluster3", Some("account-b")),
    ]);
    let mut backends = Vec::new();
    for (i, c) in CLUSTERS.iter().enumerate() {
        let n = i as u8 + 1;
        let node = format!("{c}-node-1");
        mesh.write_cluster(
            c,
            "node.yaml",
            &manifests::node(&node, &format!("region-{n}"), &format!("zone-{n}a"), None),
        );
        mesh.write_cluster(
            c,
            "service.yaml",
            &manifests::service(NS, c, 80, pod_port, &[("app", c)]),
        );
        let pod = format!("{c}-pod-a");
        let ip = subnet.ip(n * 10 + 1);
        mesh.write_cluster(
            c,
            "pod-a.yaml",
            &manifests::pod(NS, &pod, &[("app", c)], ip, pod_port, true, Some(&node)),
        );
        backends.push(Backend::start(ip, pod_port, &pod).await);
    }
    mesh.write_istio(
        "gateway.yaml",
        &manifests::gateway(
            "istio-system",
            "cluster",
            &GW_SELECTOR,
            gw_port,
            &["*.imroc.cc"],
        ),
    );
    for c in CLUSTERS {
        mesh.write_istio(&format!("vs-{c}.yaml"), &vs(c, &host_of(c)));
    }
    (mesh, backends)
}

/// A gateway bootstrap whose xDS cluster lists every address in `xds` (round
/// robin; Envoy moves to another on a refused or ended stream).
fn bootstrap_with_replicas(gw: &GatewayProxy, xds: &[SocketAddr], admin_port: u16) -> String {
    let yaml = bootstrap_gateway(gw, xds[0], admin_port);
    let mut b: Value = serde_saphyr::from_str(&yaml).expect("bootstrap YAML");
    let endpoints = &mut b["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
        ["lb_endpoints"];
    let first = endpoints[0].clone();
    assert_eq!(
        first["endpoint"]["address"]["socket_address"]["port_value"],
        json!(xds[0].port()),
        "unexpected bootstrap shape: {b}"
    );
    *endpoints = Value::Array(
        xds.iter()
            .map(|a| {
                let mut e = first.clone();
                e["endpoint"]["address"]["socket_address"] =
                    json!({"address": a.ip().to_string(), "port_value": a.port()});
                e
            })
            .collect(),
    );
    b.to_string() // JSON is YAML
}

/// Every dynamic resource in Envoy's config dump with the version it came with:
/// `(section, name) -> version_info`.
fn versions(dump: &Value) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for cfg in dump["configs"].as_array().into_iter().flatten() {
        let ty = cfg["@type"].as_str().unwrap_or_default();
        let mut put = |section: &str, name: &Value, version: &Value| {
            out.insert(
                (
                    section.to_string(),
                    name.as_str().unwrap_or_default().to_string(),
                ),
                version.as_str().unwrap_or_default().to_string(),
            );
        };
        let list = |k: &str| cfg[k].as_array().cloned().unwrap_or_default();
        if ty.ends_with("ClustersConfigDump") {
            for c in list("dynamic_active_clusters") {
                put("cluster", &c["cluster"]["name"], &c["version_info"]);
            }
        } else if ty.ends_with("ListenersConfigDump") {
            for l in list("dynamic_listeners") {
                put("listener", &l["name"], &l["active_state"]["version_info"]);
            }
        } else if ty.ends_with("RoutesConfigDump") {
            for r in list("dynamic_route_configs") {
                put("route", &r["route_config"]["name"], &r["version_info"]);
            }
        } else if ty.ends_with("EndpointsConfigDump") {
            for e in list("dynamic_endpoint_configs") {
                put(
                    "endpoint",
                    &e["endpoint_config"]["cluster_name"],
                    &e["version_info"],
                );
            }
        }
    }
    out
}

/// The `version_info` of the last response per type that `cp` sent `node`
/// (`/debug/syncz`).
async fn wire_versions(cp: &ControlPlane, node: &str) -> BTreeMap<String, String> {
    let j = cp.json("/debug/syncz").await.unwrap();
    let conn = j
        .as_array()
        .and_then(|l| l.iter().find(|c| c["proxy_id"] == node))
        .unwrap_or_else(|| panic!("{node} not connected: {j}"));
    conn["types"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["type_url"].as_str().unwrap_or_default().to_string(),
                t["sent_version"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The proxy on `cp`'s `/debug/syncz` subscribes to the four types and has
/// ACKed everything it was sent.
async fn synced_on(cp: &ControlPlane, node: &str) -> Result<(), String> {
    let j = cp.json("/debug/syncz").await?;
    let conn = j
        .as_array()
        .and_then(|l| l.iter().find(|c| c["proxy_id"] == node))
        .ok_or_else(|| format!("{node} not connected: {j}"))?;
    let types = conn["types"].as_array().cloned().unwrap_or_default();
    let all_acked = types.len() >= 4
        && types.iter().all(|t| {
            // Nothing sent is fine: a Delta client that already holds every
            // resource at its version is sent nothing for that type.
            t["sent_nonce"] == t["acked_nonce"] && t["nacked"].is_null()
        });
    if all_acked {
        Ok(())
    } else {
        Err(conn.to_string())
    }
}

async fn wait_hosts(envoy: &Envoy, c: &str, want: &[SocketAddr]) {
    let cluster = outbound_cluster(c);
    let mut want = want.to_vec();
    want.sort();
    wait_for(
        &format!("envoy hosts of {cluster} == {want:?}"),
        CONVERGE,
        || async {
            let mut got = envoy.cluster_hosts(&cluster).await?;
            got.sort();
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await
}

#[derive(Default)]
struct LoopResult {
    sent: usize,
    /// (request number, host, what went wrong)
    failures: Vec<(usize, String, String)>,
    bounded_out: bool,
}

/// Requests round robin over the three hosts until `stop`, each expected to be
/// answered 200 by that host's pod; `count` follows the number sent.
fn request_loop(
    gw: SocketAddr,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<LoopResult> {
    tokio::spawn(async move {
        let mut r = LoopResult::default();
        let t0 = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            if r.sent >= LOOP_MAX_REQUESTS || t0.elapsed() >= LOOP_MAX_TIME {
                r.bounded_out = true;
                break;
            }
            let c = CLUSTERS[r.sent % CLUSTERS.len()];
            let host = host_of(c);
            let want = format!("{c}-pod-a");
            match http::get(gw, &host, "/").await {
                Ok(rep) if rep.status == 200 && rep.body == want => {}
                Ok(rep) => {
                    r.failures
                        .push((r.sent, host, format!("{} {:?}", rep.status, rep.body)))
                }
                Err(e) => r.failures.push((r.sent, host, e)),
            }
            r.sent += 1;
            count.store(r.sent, Ordering::SeqCst);
        }
        r
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_envoy_moves_between_replicas_without_losing_a_request_or_a_version() {
    move_between_replicas(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_envoy_moves_between_replicas_without_losing_a_request_or_a_version() {
    move_between_replicas(true).await
}

/// Add, then remove, a Service (with a pod) that no route of the gateway uses:
/// pushes on every replica that watches the mesh, none of them for the gateway.
async fn unrelated_churn(mesh: &Mesh, subnet: &Subnet, pod_port: u16, replicas: &[&ControlPlane]) {
    let host = "unrelated.elsewhere.svc.cluster.local";
    let on_all = |want: bool| async move {
        for cp in replicas {
            wait_for(
                &format!("{host} listed={want} on {}", cp.debug),
                CONVERGE,
                || async {
                    let listed = cp
                        .json("/debug/registryz")
                        .await?
                        .to_string()
                        .contains(host);
                    if listed == want {
                        Ok(())
                    } else {
                        Err(format!("listed={listed}"))
                    }
                },
            )
            .await;
        }
    };
    mesh.write_cluster(
        "cluster2",
        "unrelated.yaml",
        &(manifests::service(
            "elsewhere",
            "unrelated",
            80,
            pod_port,
            &[("app", "unrelated")],
        ) + "---\n"
            + &manifests::pod(
                "elsewhere",
                "unrelated-0",
                &[("app", "unrelated")],
                subnet.ip(29),
                pod_port,
                true,
                Some("cluster2-node-1"),
            )),
    );
    on_all(true).await;
    mesh.remove_cluster_file("cluster2", "unrelated.yaml");
    on_all(false).await;
}

/// One Envoy gateway (SotW or Delta) whose bootstrap lists replicas A and B;
/// A serves it first and has a push history of its own; SIGTERM to A.
async fn move_between_replicas(sotw: bool) {
    let subnet = Subnet::claim();
    let pod_port = free_port();
    let gw_port = free_port();
    let (mesh, _backends) = layout(&subnet, pod_port, gw_port).await;
    let pod = |n: u8, i: u8| SocketAddr::from((subnet.ip(n * 10 + i), pod_port));

    // Replica A alone first, so it has a push history B will not have.
    let mut a = ControlPlane::start(&mesh.mesh_file).await;
    let b_xds = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let b_debug = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gw = GatewayProxy::ingress(subnet.ip(1), "cluster1", sotw);
    let node = gw.node_id();
    let admin_port = free_port();
    let envoy = Envoy::start(
        if sotw {
            "gateway-replicas-sotw"
        } else {
            "gateway-replicas-delta"
        },
        &bootstrap_with_replicas(&gw, &[a.xds, b_xds], admin_port),
    )
    .await;
    envoy.wait_ready(CONVERGE).await;
    wait_for("gateway on replica A", CONVERGE, || synced_on(&a, &node)).await;
    // History on A: a pod comes and goes (an EDS push each way). Not for SotW:
    // there the versions Envoy keeps are those of the responses that delivered
    // each resource, so a resource resent on its own (the pod going) keeps a
    // version of its own, while the replica Envoy moves to sends all endpoints in
    // one response (the protocol's doing, not a replica's).
    let ip_b = subnet.ip(12);
    let _pod_b = Backend::start(ip_b, pod_port, "cluster1-pod-b").await;
    if !sotw {
        mesh.write_cluster(
            "cluster1",
            "pod-b.yaml",
            &manifests::pod(
                NS,
                "cluster1-pod-b",
                &[("app", "cluster1")],
                ip_b,
                pod_port,
                true,
                Some("cluster1-node-1"),
            ),
        );
        wait_hosts(&envoy, "cluster1", &[pod(1, 1), pod(1, 2)]).await;
        mesh.remove_cluster_file("cluster1", "pod-b.yaml");
        wait_hosts(&envoy, "cluster1", &[pod(1, 1)]).await;
    }
    wait_for("gateway synced on A", CONVERGE, || synced_on(&a, &node)).await;

    // Replica B, fresh, on the addresses Envoy already lists.
    let b = ControlPlane::start_at(&mesh.mesh_file, b_xds, b_debug).await;
    let dump_path = format!("/debug/config_dump?proxyID={node}");
    let sent_by_a = a.json(&dump_path).await.unwrap();
    let before = versions(&envoy.config_dump().await);
    assert!(
        before.keys().any(|(s, _)| s == "endpoint") && before.keys().any(|(s, _)| s == "route"),
        "expected clusters, endpoints, listeners and routes: {before:?}"
    );
    assert!(b
        .json("/debug/syncz")
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .is_empty());
    // Pushes on both replicas that do not concern the gateway: B's push count
    // moves past the one A served the gateway at.
    unrelated_churn(&mesh, &subnet, pod_port, &[&a, &b]).await;
    assert_eq!(versions(&envoy.config_dump().await), before);

    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let requests = request_loop(
        SocketAddr::from((subnet.ip(1), gw_port)),
        stop.clone(),
        count.clone(),
    );
    let at_least = |n: usize| {
        let count = count.clone();
        move || {
            let sent = count.load(Ordering::SeqCst);
            async move {
                if sent >= n {
                    Ok(())
                } else {
                    Err(format!("{sent} sent"))
                }
            }
        }
    };
    wait_for("20 requests before SIGTERM", CONVERGE, at_least(20)).await;
    let a_wire = wire_versions(&a, &node).await;
    let t0 = Instant::now();
    a.terminate();
    let st = a
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("replica A did not exit");
    assert!(st.success(), "replica A: {st}");
    wait_for(
        "gateway reconnected and synced on replica B",
        CONVERGE,
        || synced_on(&b, &node),
    )
    .await;
    let moved_after = t0.elapsed();
    // Keep the loop running a little past the move.
    let moved_at = count.load(Ordering::SeqCst);
    wait_for(
        "20 more requests after the move",
        CONVERGE,
        at_least(moved_at + 20),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let r = requests.await.unwrap();
    assert!(
        !r.bounded_out,
        "the loop hit its bound before the move ended"
    );
    assert!(r.sent >= 40, "only {} requests", r.sent);
    assert!(
        r.failures.is_empty(),
        "{} of {} requests failed during the move: {:?}",
        r.failures.len(),
        r.sent,
        &r.failures[..r.failures.len().min(10)]
    );
    eprintln!(
        "replica move: {} requests, 0 failed; reconnected and synced {moved_after:?} after SIGTERM",
        r.sent
    );

    // B holds for this proxy exactly what A had sent: the same resources, at the
    // same versions.
    let sent_by_b = b.json(&dump_path).await.unwrap();
    assert_eq!(
        versions(&sent_by_a),
        versions(&sent_by_b),
        "per-resource versions differ between the replicas"
    );
    assert_eq!(sent_by_a, sent_by_b, "the replicas' resources differ");
    // ... and, over Delta, did not send any of it again: Envoy told B
    // (`initial_resource_versions`) what it held, and every version matched.
    // (A SotW stream always starts with every resource.)
    let metrics = b.get("/metrics").await.unwrap().1;
    let sent_bytes: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("pilot_xds_send_bytes"))
        .collect();
    if sotw {
        // The responses B sent on the new stream carry, per type, the version
        // of A's last response: derived from the content, not from B's own push
        // count (which the unrelated churn moved past A's).
        assert_eq!(
            a_wire,
            wire_versions(&b, &node).await,
            "SotW response versions differ between the replicas"
        );
    } else {
        assert_eq!(
            sent_bytes,
            ["pilot_xds_send_bytes 0"],
            "replica B resent resources"
        );
    }

    let after = versions(&envoy.config_dump().await);
    assert_eq!(
        before, after,
        "Envoy's resource versions changed when it moved to replica B"
    );
    // Envoy is connected (to B, the only one left).
    assert_eq!(envoy.stat("control_plane.connected_state").await, Some(1));
}
