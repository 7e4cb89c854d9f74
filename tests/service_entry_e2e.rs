//! ServiceEntry, WorkloadEntry and the outbound traffic policy end to end (issue
//! 14 items 2-4), through a real NONE-mode Envoy sidecar (`shop/client` on
//! `.2`; its egress listener `.2:80` routes by Host):
//! - `dns.ext.example`: resolution DNS, its endpoint the name `localhost`
//!   (Envoy resolves it, V4_ONLY) at the port of the `dns-ext` backend on
//!   127.0.0.1;
//! - `static.ext.example`: resolution STATIC, inline endpoint `.21` (`static-0`)
//!   at the port its `ports` names; a VirtualService on this host sends
//!   `/to-dns` to `dns.ext.example`;
//! - `web.shop`: a Kubernetes Service selecting Pod `web-0` (`.11`) and
//!   WorkloadEntry `vm-1` (`.12`, locality `vm-region/vm-zone`);
//! - `bad`: a ServiceEntry with an invalid address, rejected alone.
//!
//! The mesh file says `outboundTrafficPolicy: REGISTRY_ONLY`: an unknown Host
//! gets the `block_all` 502. A Sidecar with `ALLOW_ANY` then overrides it. In
//! NONE mode there is no original destination to pass an unknown host through
//! to (REDIRECT's `PassthroughCluster` needs iptables, which tests cannot set
//! up): under ALLOW_ANY the unknown Host finds no route (Envoy's 404).

#[path = "support/kube_api.rs"]
mod kube_api;
#[path = "support/kube_seed.rs"]
mod kube_seed;
mod support;

use std::net::SocketAddr;

use support::backend::Backend;
use support::control_plane::{bootstrap, crossmesh_bin, ControlPlane};
use support::envoy::Envoy;
use support::http;
use support::manifests::{self, cluster, Mesh};
use support::net::{free_port, Subnet};
use support::{wait_for, CONVERGE};

const ISTIO: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dns-ext, namespace: shop}
spec:
  hosts: [dns.ext.example]
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: DNS_PORT}
  resolution: DNS
  endpoints:
  - address: localhost
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: static-ext, namespace: shop}
spec:
  hosts: [static.ext.example]
  location: MESH_EXTERNAL
  ports:
  - {number: 80, name: http, protocol: HTTP}
  resolution: STATIC
  endpoints:
  - {address: STATIC_IP, ports: {http: STATIC_PORT}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: static-ext, namespace: shop}
spec:
  hosts: [static.ext.example]
  http:
  - match: [{uri: {prefix: /to-dns}}]
    route: [{destination: {host: dns.ext.example}}]
  - route: [{destination: {host: static.ext.example}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: shop}
spec:
  address: VM_IP
  labels: {app: web}
  locality: vm-region/vm-zone
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bad, namespace: shop}
spec:
  hosts: [bad.ext.example]
  addresses: [10.0.0.300]
  ports:
  - {number: 80, name: http, protocol: HTTP}
  resolution: STATIC
  endpoints:
  - address: STATIC_IP
";

const ALLOW_ANY: &str = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: shop}
spec:
  outboundTrafficPolicy: {mode: ALLOW_ANY}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_entries_workload_entries_and_registry_only_through_a_sidecar() {
    let subnet = Subnet::claim();
    let mesh = Mesh::new(&[cluster("cluster1", None)]);
    let mut text = std::fs::read_to_string(&mesh.mesh_file).expect("mesh file");
    text.push_str("outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n");
    std::fs::write(&mesh.mesh_file, text).expect("mesh file");

    let web_port = free_port();
    let dns = Backend::start("127.0.0.1".parse().unwrap(), 0, "dns-ext").await;
    let statik = Backend::start(subnet.ip(21), 0, "static-0").await;
    let _web = Backend::start(subnet.ip(11), web_port, "web-0").await;
    let _vm = Backend::start(subnet.ip(12), web_port, "vm-1").await;
    mesh.write_cluster(
        "cluster1",
        "web.yaml",
        &format!(
            "{}\n---\n{}",
            manifests::service("shop", "web", 80, web_port, &[("app", "web")]),
            manifests::pod(
                "shop",
                "web-0",
                &[("app", "web")],
                subnet.ip(11),
                web_port,
                true,
                None
            )
        ),
    );
    let istio = ISTIO
        .replace("DNS_PORT", &dns.addr.port().to_string())
        .replace("STATIC_IP", &subnet.ip(21).to_string())
        .replace("STATIC_PORT", &statik.addr.port().to_string())
        .replace("VM_IP", &subnet.ip(12).to_string());
    mesh.write_istio("entries.yaml", &istio);
    let cp = ControlPlane::start(&mesh.mesh_file).await;
    let yaml = bootstrap(&[
        "bootstrap".into(),
        "--role".into(),
        "sidecar".into(),
        "--name".into(),
        "client-0".into(),
        "--namespace".into(),
        "shop".into(),
        "--ip".into(),
        subnet.ip(2).to_string(),
        "--labels".into(),
        "app=client".into(),
        "--xds-address".into(),
        cp.xds.to_string(),
        "--admin-port".into(),
        free_port().to_string(),
        "--cluster-id".into(),
        "cluster1".into(),
        "--interception".into(),
        "none".into(),
    ]);
    let sidecar = Envoy::start("client-sidecar", &yaml).await;
    sidecar.wait_ready(CONVERGE).await;
    let egress = SocketAddr::from((subnet.ip(2), 80));

    // Who answers each host through the sidecar.
    let answer = |host: &'static str, want: &'static str| async move {
        wait_for(&format!("{host} answered by {want}"), CONVERGE, || async {
            let r = http::get(egress, host, "/").await?;
            if r.status == 200 && r.body.contains(want) {
                Ok(())
            } else {
                Err(format!("{} {}", r.status, r.body))
            }
        })
        .await
    };
    answer("dns.ext.example", "dns-ext").await;
    answer("static.ext.example", "static-0").await;
    assert!(statik.requests() > 0 && dns.requests() > 0);
    // A VirtualService on a ServiceEntry host routes as on a Kubernetes one.
    let r = http::get(egress, "static.ext.example", "/to-dns/x")
        .await
        .expect("/to-dns");
    assert_eq!((r.status, r.body.as_str()), (200, "dns-ext"));
    // The WorkloadEntry serves next to the Pod.
    answer("web.shop.svc.cluster.local", "web-0").await;
    answer("web.shop.svc.cluster.local", "vm-1").await;

    // On /debug/registryz: vm-1 in web's endpoints with its locality.
    let reg = cp.json("/debug/registryz").await.expect("registryz");
    let web = reg["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["hostname"] == "web.shop.svc.cluster.local")
        .expect("web on registryz")
        .clone();
    let eps: Vec<&serde_json::Value> = web["endpoints"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .flat_map(|v| v.as_array().into_iter().flatten())
        .collect();
    let vm = eps
        .iter()
        .find(|e| e["workload"] == "shop/vm-1")
        .unwrap_or_else(|| panic!("vm-1 among web's endpoints: {web}"));
    assert_eq!(vm["address"], subnet.ip(12).to_string());
    assert_eq!(vm["locality"]["region"], "vm-region");
    assert_eq!(vm["locality"]["zone"], "vm-zone");
    assert!(
        eps.iter().any(|e| e["workload"] == "shop/web-0"),
        "web-0 still there: {web}"
    );

    // The invalid ServiceEntry alone is rejected, with its field and reason.
    let configz = cp.json("/debug/configz").await.expect("configz");
    let rejected: Vec<&serde_json::Value> = configz["rejected"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["kind"] == "ServiceEntry")
        .collect();
    assert_eq!(rejected.len(), 1, "{configz}");
    assert_eq!(rejected[0]["name"], "bad");
    assert_eq!(rejected[0]["field"], "spec.addresses[0]");
    assert!(
        rejected[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("10.0.0.300")),
        "{}",
        rejected[0]
    );
    // `crossmesh validate` on the same directory names it, and only it.
    let out = std::process::Command::new(crossmesh_bin())
        .arg("validate")
        .arg(mesh.istio_dir())
        .output()
        .expect("run crossmesh validate");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "validate passed: {text}");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ServiceEntry"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].contains("shop/bad") && lines[0].contains("spec.addresses[0]"),
        "{text}"
    );
    let bad = http::get(egress, "bad.ext.example", "/")
        .await
        .expect("bad");
    assert_eq!(bad.status, 502, "a rejected ServiceEntry is no service");

    // REGISTRY_ONLY from the mesh file: an unknown host is blocked.
    let blocked = http::get(egress, "unknown.example.org", "/")
        .await
        .expect("unknown");
    assert_eq!(blocked.status, 502, "{}", blocked.body);

    // A Sidecar's ALLOW_ANY overrides the mesh: no block_all any more (NONE
    // mode has nothing to pass through to: no route, 404).
    mesh.write_istio("sidecar.yaml", ALLOW_ANY);
    wait_for("unknown host no longer blocked", CONVERGE, || async {
        let r = http::get(egress, "unknown.example.org", "/").await?;
        if r.status == 404 {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    })
    .await;
    answer("static.ext.example", "static-0").await;
}

/// A WorkloadEntry read from config cluster cluster1's API server joins
/// `cluster2.test` (selected by its Service in cluster2) as cluster1's
/// endpoint, shown under cluster1 on `/debug/registryz`, and answers through
/// the gateway next to cluster2's Pod; deleted, it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_entry_from_a_config_cluster_belongs_to_that_cluster() {
    use support::scenario::{host_of, service_host, NS};
    let s = kube_seed::KubeSeed::start(kube_seed::Layout::default()).await;
    s.wait_answer(2, "cluster2-pod-a").await;
    let vm_ip = s.subnet.ip(99);
    let _vm = Backend::start(vm_ip, s.pod_port, "cluster2-vm-1").await;
    s.server(1).apply(&serde_json::json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": "cluster2-vm-1", "namespace": NS},
        "spec": {"address": vm_ip.to_string(), "labels": {"app": "cluster2"},
                 "locality": "vm-region/vm-zone"},
    }));
    let host = service_host("cluster2");
    let vm_on_registryz = || async {
        let j = s.cp.json("/debug/registryz").await?;
        let svc = j["services"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["hostname"] == host.as_str())
            .cloned()
            .ok_or_else(|| format!("{host} not on registryz"))?;
        Ok::<_, String>(
            svc["endpoints"]["cluster1"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| {
                    e["address"] == vm_ip.to_string() && e["locality"]["region"] == "vm-region"
                }),
        )
    };
    wait_for(
        "the WorkloadEntry under cluster1 on registryz",
        CONVERGE,
        || async {
            match vm_on_registryz().await? {
                true => Ok(()),
                false => Err("not yet".to_string()),
            }
        },
    )
    .await;
    let vm_addr = std::net::SocketAddr::from((vm_ip, s.pod_port));
    wait_for(
        "the gateway's Envoy holds the WorkloadEntry",
        CONVERGE,
        || async {
            let hosts = s.envoy_hosts(2).await?;
            if hosts.contains(&vm_addr) && hosts.len() == 2 {
                Ok(())
            } else {
                Err(format!("{hosts:?}"))
            }
        },
    )
    .await;
    if let Err(bodies) = http::until_each_answers(
        s.gw_addr(),
        &host_of("cluster2"),
        &["cluster2-pod-a", "cluster2-vm-1"],
        64,
    )
    .await
    {
        panic!("not both the Pod and the WorkloadEntry answered: {bodies:?}");
    }
    s.server(1)
        .delete(
            "networking.istio.io",
            "workloadentries",
            NS,
            "cluster2-vm-1",
        )
        .unwrap();
    wait_for("the WorkloadEntry gone", CONVERGE, || async {
        match vm_on_registryz().await? {
            false => Ok(()),
            true => Err("still there".to_string()),
        }
    })
    .await;
}

/// Endpoint weights: a STATIC ServiceEntry's inline endpoints weighted 3 and 1,
/// and a Service whose Pod (weight 1) shares it with a WorkloadEntry weighted 3,
/// split 3:1 through a real NONE-mode sidecar (each counted over 800 requests:
/// 0.75 +- 0.06 is 3.9 standard deviations of a random 3:1 pick; Envoy's
/// weighted round robin is closer still). With weights ignored the split would
/// be 1:1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_weights_split_three_to_one() {
    let subnet = Subnet::claim();
    let mesh = Mesh::new(&[cluster("cluster1", None)]);
    let port = free_port();
    let mut backends = Vec::new();
    for (host, name) in [
        (31, "heavy-0"),
        (32, "light-0"),
        (41, "pod-0"),
        (42, "vm-0"),
    ] {
        backends.push(Backend::start(subnet.ip(host), port, name).await);
    }
    mesh.write_cluster(
        "cluster1",
        "api.yaml",
        &format!(
            "{}\n---\n{}",
            manifests::service("shop", "api", 80, port, &[("app", "api")]),
            manifests::pod(
                "shop",
                "pod-0",
                &[("app", "api")],
                subnet.ip(41),
                port,
                true,
                None
            )
        ),
    );
    mesh.write_istio(
        "weights.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: weighted, namespace: shop}}
spec:
  hosts: [weighted.ext.example]
  ports:
  - {{number: 80, name: http, protocol: HTTP, targetPort: {port}}}
  resolution: STATIC
  endpoints:
  - {{address: {heavy}, weight: 3}}
  - {{address: {light}, weight: 1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: vm-0, namespace: shop}}
spec:
  address: {vm}
  labels: {{app: api}}
  weight: 3
",
            heavy = subnet.ip(31),
            light = subnet.ip(32),
            vm = subnet.ip(42),
        ),
    );
    let cp = ControlPlane::start(&mesh.mesh_file).await;
    let yaml = bootstrap(&[
        "bootstrap".into(),
        "--role".into(),
        "sidecar".into(),
        "--name".into(),
        "client-0".into(),
        "--namespace".into(),
        "shop".into(),
        "--ip".into(),
        subnet.ip(2).to_string(),
        "--labels".into(),
        "app=client".into(),
        "--xds-address".into(),
        cp.xds.to_string(),
        "--admin-port".into(),
        free_port().to_string(),
        "--cluster-id".into(),
        "cluster1".into(),
        "--interception".into(),
        "none".into(),
    ]);
    let sidecar = Envoy::start("client-sidecar", &yaml).await;
    sidecar.wait_ready(CONVERGE).await;
    let egress = SocketAddr::from((subnet.ip(2), 80));
    for (cluster, n) in [
        ("outbound|80||weighted.ext.example", 2),
        ("outbound|80||api.shop.svc.cluster.local", 2),
    ] {
        wait_for(&format!("{cluster} has {n} hosts"), CONVERGE, || async {
            let h = sidecar.cluster_hosts(cluster).await?;
            if h.len() == n {
                Ok(())
            } else {
                Err(format!("{h:?}"))
            }
        })
        .await;
    }
    for (host, heavy, light) in [
        ("weighted.ext.example", "heavy-0", "light-0"),
        ("api.shop.svc.cluster.local", "vm-0", "pod-0"),
    ] {
        let (mut h, mut l) = (0u32, 0u32);
        for _ in 0..800 {
            let r = http::get(egress, host, "/").await.expect(host);
            match (r.status, r.body.as_str()) {
                (200, b) if b == heavy => h += 1,
                (200, b) if b == light => l += 1,
                other => panic!("{host} answered {other:?}"),
            }
        }
        let share = f64::from(h) / 800.0;
        eprintln!("{host}: {heavy} (weight 3) {h}, {light} (weight 1) {l}");
        assert!(
            (0.69..=0.81).contains(&share),
            "{host}: {heavy} (weight 3) took {h} of 800, {light} (weight 1) {l}"
        );
    }
}
