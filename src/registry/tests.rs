//! Registry unit tests: merging, target ports, readiness, locality, incremental pushes.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::config::{ClusterSource, MeshConfig, NetworkGateway};
use crate::model::push_request::ContextSource;
use crate::model::Endpoint;

fn cluster(name: &str, network: &str, locality: Option<&str>) -> ClusterConfig {
    ClusterConfig {
        name: name.into(),
        network: network.into(),
        source: ClusterSource::Manifests(PathBuf::from(format!("/m/{name}"))),
        locality: locality.map(str::to_string),
    }
}

fn registry(clusters: Vec<ClusterConfig>) -> (Arc<Registry>, PushQueue) {
    let mesh = MeshConfig {
        clusters,
        ..MeshConfig::default()
    };
    let q = PushQueue::new();
    (Registry::new(Arc::new(mesh), q.clone()), q)
}

fn two_clusters() -> (Arc<Registry>, PushQueue) {
    registry(vec![
        cluster("c1", "vpc-a", Some("r1/z1")),
        cluster("c2", "account-b", None),
    ])
}

fn svc(ns: &str, name: &str, selector: Value, ports: Value) -> KubeObject {
    let v = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": selector, "ports": ports}});
    KubeObject::Service(serde_json::from_value(v).unwrap())
}

fn web_svc() -> KubeObject {
    svc(
        "default",
        "web",
        json!({"app": "web"}),
        json!([{"name": "http", "port": 80, "targetPort": 8080}]),
    )
}

struct PodSpec<'a> {
    ip: Option<&'a str>,
    phase: &'a str,
    ready: bool,
    node: Option<&'a str>,
    labels: Value,
    ports: Value,
}

impl Default for PodSpec<'_> {
    fn default() -> Self {
        PodSpec {
            ip: Some("10.0.0.1"),
            phase: "Running",
            ready: true,
            node: None,
            labels: json!({"app": "web"}),
            ports: json!([]),
        }
    }
}

fn pod(ns: &str, name: &str, p: PodSpec) -> KubeObject {
    let mut status = json!({"phase": p.phase,
        "conditions": [{"type": "Ready", "status": if p.ready {"True"} else {"False"}}]});
    if let Some(ip) = p.ip {
        status["podIP"] = json!(ip);
    }
    let mut spec = json!({"containers": [{"name": "main", "ports": p.ports}]});
    if let Some(n) = p.node {
        spec["nodeName"] = json!(n);
    }
    let v = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": p.labels},
        "spec": spec, "status": status});
    KubeObject::Pod(serde_json::from_value(v).unwrap())
}

fn node(name: &str, labels: Value) -> KubeObject {
    let v =
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}});
    KubeObject::Node(serde_json::from_value(v).unwrap())
}

fn slice(
    ns: &str,
    name: &str,
    service: &str,
    addresses: &[(&str, Option<bool>)],
    ports: Value,
) -> KubeObject {
    let eps: Vec<Value> = addresses
        .iter()
        .map(|(a, r)| match r {
            Some(r) => json!({"addresses": [a], "conditions": {"ready": r}}),
            None => json!({"addresses": [a]}),
        })
        .collect();
    let v = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "endpoints": eps, "ports": ports});
    KubeObject::EndpointSlice(serde_json::from_value(v).unwrap())
}

const WEB: &str = "web.default.svc.cluster.local";

fn eps(r: &Registry, host: &str, port: u16) -> Vec<Endpoint> {
    r.service(host)
        .and_then(|s| s.endpoints.get(&port).cloned())
        .unwrap_or_default()
}

fn addrs(e: &[Endpoint]) -> Vec<String> {
    e.iter()
        .map(|e| format!("{}/{}:{}", e.cluster, e.address, e.port))
        .collect()
}

#[test]
fn same_namespace_and_name_in_two_clusters_is_one_service() {
    let (r, _) = two_clusters();
    r.reset_cluster(
        "c1",
        vec![web_svc(), pod("default", "a", PodSpec::default())],
    )
    .unwrap();
    r.reset_cluster(
        "c2",
        vec![
            web_svc(),
            pod(
                "default",
                "b",
                PodSpec {
                    ip: Some("10.1.0.1"),
                    ..Default::default()
                },
            ),
        ],
    )
    .unwrap();
    // Same name in another namespace is another service.
    r.reset_kind(
        "c2",
        KubeKind::Service,
        vec![
            web_svc(),
            svc("other", "web", json!({"app": "web"}), json!([{"port": 80}])),
        ],
    )
    .unwrap();
    let services = r.services();
    assert_eq!(services.len(), 2);
    let s = &services[WEB];
    assert_eq!(&*s.hostname, WEB);
    assert_eq!(s.clusters, vec![Arc::from("c1"), Arc::from("c2")]);
    assert_eq!(s.ports.len(), 1);
    assert_eq!(s.ports[0].protocol, crate::model::Protocol::Http);
    let e = &s.endpoints[&80];
    assert_eq!(addrs(e), ["c1/10.0.0.1:8080", "c2/10.1.0.1:8080"]);
    assert_eq!(&*e[0].network, "vpc-a");
    assert_eq!(&*e[1].network, "account-b");
    assert_eq!(&*e[0].workload, "default/a");
    // `other/web` selects nothing in its namespace: pods are matched per namespace.
    assert!(services["web.other.svc.cluster.local"].endpoints.is_empty());
}

#[test]
fn named_target_port_resolves_per_pod() {
    let (r, _) = two_clusters();
    let s = svc(
        "default",
        "web",
        json!({"app": "web"}),
        json!([{"name": "http", "port": 80, "targetPort": "web"}]),
    );
    let a = pod(
        "default",
        "a",
        PodSpec {
            ports: json!([{"name": "web", "containerPort": 8080}]),
            ..Default::default()
        },
    );
    let b = pod(
        "default",
        "b",
        PodSpec {
            ip: Some("10.0.0.2"),
            ports: json!([{"name": "web", "containerPort": 9090}]),
            ..Default::default()
        },
    );
    // No port of that name: left out of the port's endpoints, as Kubernetes does.
    let c = pod(
        "default",
        "c",
        PodSpec {
            ip: Some("10.0.0.3"),
            ports: json!([{"name": "metrics", "containerPort": 9100}]),
            ..Default::default()
        },
    );
    r.reset_cluster("c1", vec![s, a, b, c]).unwrap();
    assert_eq!(
        addrs(&eps(&r, WEB, 80)),
        ["c1/10.0.0.1:8080", "c1/10.0.0.2:9090"]
    );
}

#[test]
fn readiness_rules() {
    let (r, _) = two_clusters();
    let objs = vec![
        web_svc(),
        pod("default", "ready", PodSpec::default()),
        pod(
            "default",
            "pending",
            PodSpec {
                ip: Some("10.0.0.2"),
                phase: "Pending",
                ..Default::default()
            },
        ),
        pod(
            "default",
            "notready",
            PodSpec {
                ip: Some("10.0.0.3"),
                ready: false,
                ..Default::default()
            },
        ),
        pod(
            "default",
            "noip",
            PodSpec {
                ip: None,
                ..Default::default()
            },
        ),
    ];
    let mut terminating = pod(
        "default",
        "terminating",
        PodSpec {
            ip: Some("10.0.0.4"),
            ..Default::default()
        },
    );
    if let KubeObject::Pod(p) = &mut terminating {
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
    }
    let mut objs = objs;
    objs.push(terminating);
    r.reset_cluster("c1", objs).unwrap();
    let e = eps(&r, WEB, 80);
    let ready: Vec<(String, bool)> = e.iter().map(|e| (e.address.to_string(), e.ready)).collect();
    assert_eq!(
        ready,
        [
            ("10.0.0.1".to_string(), true),
            ("10.0.0.2".to_string(), false),
            ("10.0.0.3".to_string(), false),
            ("10.0.0.4".to_string(), false)
        ]
    );
    // The Pod without an IP is no endpoint, and it is noted.
    let st = r.cluster_status();
    let c1 = st.iter().find(|s| s.name == "c1").unwrap();
    assert!(c1
        .notes
        .iter()
        .any(|n| n.object == "default/noip" && n.reason.contains("podIP")));
    assert_eq!(c1.counts.pods, 5);
}

#[test]
fn locality_from_node_labels_else_cluster_default() {
    let (r, q) = two_clusters();
    let objs = vec![
        web_svc(),
        node(
            "n1",
            json!({"topology.kubernetes.io/region": "us-east", "topology.kubernetes.io/zone": "us-east-1a",
                   "topology.istio.io/subzone": "rack1"}),
        ),
        node("n2", json!({})),
        pod(
            "default",
            "a",
            PodSpec {
                node: Some("n1"),
                ..Default::default()
            },
        ),
        pod(
            "default",
            "b",
            PodSpec {
                ip: Some("10.0.0.2"),
                node: Some("n2"),
                ..Default::default()
            },
        ),
        pod(
            "default",
            "c",
            PodSpec {
                ip: Some("10.0.0.3"),
                node: Some("missing"),
                ..Default::default()
            },
        ),
    ];
    r.reset_cluster("c1", objs).unwrap();
    let e = eps(&r, WEB, 80);
    assert_eq!(e[0].locality.label(), "us-east/us-east-1a/rack1");
    assert_eq!(e[1].locality.label(), "r1/z1");
    assert_eq!(e[2].locality.label(), "r1/z1");
    q.try_take();
    // Relabelling a node moves its pods' endpoints: EDS only.
    r.apply(
        "c1",
        Event::Upsert(node("n2", json!({"topology.kubernetes.io/region": "eu"}))),
    )
    .unwrap();
    assert_eq!(eps(&r, WEB, 80)[1].locality.label(), "eu");
    let req = q.try_take().unwrap();
    assert!(!req.full);
    assert_eq!(req.services, [Arc::from(WEB)].into());
    // A node nobody runs on changes nothing.
    r.apply(
        "c1",
        Event::Upsert(node("n9", json!({"topology.kubernetes.io/region": "x"}))),
    )
    .unwrap();
    assert_eq!(q.try_take(), None);
}

#[test]
fn pod_changes_push_eds_and_service_changes_push_full() {
    let (r, q) = two_clusters();
    r.reset_cluster(
        "c1",
        vec![web_svc(), pod("default", "a", PodSpec::default())],
    )
    .unwrap();
    assert!(q.try_take().unwrap().full, "a new service is a full push");
    let before = r.services();

    // Readiness flip: EDS for that hostname only.
    r.apply(
        "c1",
        Event::Upsert(pod(
            "default",
            "a",
            PodSpec {
                ready: false,
                ..Default::default()
            },
        )),
    )
    .unwrap();
    let req = q.try_take().unwrap();
    assert!(!req.full);
    assert_eq!(req.services, [Arc::from(WEB)].into());
    assert!(!eps(&r, WEB, 80)[0].ready);

    // A pod nobody selects, and one in another namespace: no push.
    r.apply(
        "c1",
        Event::Upsert(pod(
            "default",
            "x",
            PodSpec {
                labels: json!({"app": "db"}),
                ..Default::default()
            },
        )),
    )
    .unwrap();
    r.apply("c1", Event::Upsert(pod("other", "y", PodSpec::default())))
        .unwrap();
    assert_eq!(q.try_take(), None);

    // Same content again: no push.
    r.apply(
        "c1",
        Event::Upsert(pod(
            "default",
            "a",
            PodSpec {
                ready: false,
                ..Default::default()
            },
        )),
    )
    .unwrap();
    assert_eq!(q.try_take(), None);

    // A relabelled pod leaves the service: EDS.
    r.apply(
        "c1",
        Event::Upsert(pod(
            "default",
            "a",
            PodSpec {
                labels: json!({"app": "db"}),
                ..Default::default()
            },
        )),
    )
    .unwrap();
    assert!(!q.try_take().unwrap().full);
    assert!(eps(&r, WEB, 80).is_empty());

    // A new port changes the service's shape: full.
    let two_ports = svc(
        "default",
        "web",
        json!({"app": "web"}),
        json!([{"name": "http", "port": 80, "targetPort": 8080}, {"name": "grpc", "port": 90}]),
    );
    r.apply("c1", Event::Upsert(two_ports)).unwrap();
    assert!(q.try_take().unwrap().full);

    // An unrelated service's Arc is shared between snapshots.
    r.apply(
        "c1",
        Event::Upsert(svc(
            "other",
            "db",
            json!({"app": "db"}),
            json!([{"port": 5432}]),
        )),
    )
    .unwrap();
    q.try_take();
    let after = r.services();
    assert!(Arc::ptr_eq(&after[WEB], &r.services()[WEB]));
    assert!(!Arc::ptr_eq(&before[WEB], &after[WEB]));
    let db = "db.other.svc.cluster.local";
    r.apply("c1", Event::Upsert(pod("default", "z", PodSpec::default())))
        .unwrap();
    assert!(Arc::ptr_eq(&after[db], &r.services()[db]));
}

#[test]
fn reset_cluster_pushes_only_differences() {
    let (r, q) = two_clusters();
    let objs = || {
        vec![
            web_svc(),
            pod("default", "a", PodSpec::default()),
            node("n1", json!({})),
        ]
    };
    r.reset_cluster("c1", objs()).unwrap();
    q.try_take();
    r.reset_cluster("c1", objs()).unwrap();
    assert_eq!(q.try_take(), None, "an identical relist pushes nothing");

    let mut fewer = objs();
    fewer.remove(1);
    r.reset_cluster("c1", fewer).unwrap();
    let req = q.try_take().unwrap();
    assert!(!req.full);
    assert_eq!(req.services, [Arc::from(WEB)].into());
    assert!(eps(&r, WEB, 80).is_empty());

    r.reset_cluster("c1", vec![]).unwrap();
    assert!(q.try_take().unwrap().full);
    assert!(r.services().is_empty());
    let st = r.cluster_status();
    assert_eq!(st[0].counts, Counts::default());
    assert!(st[0].synced);
}

#[test]
fn selectorless_service_reads_endpoint_slices() {
    let (r, q) = two_clusters();
    let s = svc(
        "default",
        "ext",
        json!(null),
        json!([{"name": "http", "port": 80}]),
    );
    r.reset_cluster("c1", vec![s]).unwrap();
    let host = "ext.default.svc.cluster.local";
    assert!(r.service(host).unwrap().endpoints.is_empty());
    let st = r.cluster_status();
    assert!(st[0]
        .notes
        .iter()
        .any(|n| n.object == "default/ext" && n.reason.contains("no selector")));
    q.try_take();
    let sl = slice(
        "default",
        "ext-1",
        "ext",
        &[("10.9.0.1", None), ("10.9.0.2", Some(false))],
        json!([{"name": "http", "port": 8443}]),
    );
    r.apply("c1", Event::Upsert(sl.clone())).unwrap();
    let e = eps(&r, host, 80);
    assert_eq!(addrs(&e), ["c1/10.9.0.1:8443", "c1/10.9.0.2:8443"]);
    assert_eq!((e[0].ready, e[1].ready), (true, false));
    assert_eq!(&*e[0].workload, "default/ext-1");
    assert!(!q.try_take().unwrap().full);
    r.apply("c1", Event::Delete(sl)).unwrap();
    assert!(eps(&r, host, 80).is_empty());
}

#[test]
fn remove_cluster_and_stale() {
    let (r, q) = two_clusters();
    r.reset_cluster(
        "c1",
        vec![web_svc(), pod("default", "a", PodSpec::default())],
    )
    .unwrap();
    r.reset_cluster(
        "c2",
        vec![
            web_svc(),
            pod(
                "default",
                "b",
                PodSpec {
                    ip: Some("10.1.0.1"),
                    ..Default::default()
                },
            ),
        ],
    )
    .unwrap();
    q.try_take();
    r.set_stale("c2", true).unwrap();
    let req = q.try_take().unwrap();
    assert!(!req.full, "losing a cluster pushes EDS only");
    let e = eps(&r, WEB, 80);
    assert_eq!((e[0].stale, e[1].stale), (false, true));
    assert!(r.cluster_status()[1].stale);

    r.remove_cluster("c2").unwrap();
    assert!(q.try_take().unwrap().full, "the service lost a cluster");
    assert_eq!(addrs(&eps(&r, WEB, 80)), ["c1/10.0.0.1:8080"]);
    assert_eq!(r.clusters(), vec![Arc::from("c1")]);
    assert_eq!(
        r.apply("c2", Event::Upsert(web_svc())).unwrap_err(),
        RegistryError::UnknownCluster("c2".into())
    );
    r.add_cluster(&cluster("c2", "", None)).unwrap();
    assert_eq!(
        r.add_cluster(&cluster("c2", "", None)),
        Err(RegistryError::ClusterExists("c2".into()))
    );
}

#[test]
fn bad_objects_are_rejected_one_by_one() {
    let (r, _) = two_clusters();
    let bad_ip = pod(
        "default",
        "bad",
        PodSpec {
            ip: Some("not-an-ip"),
            ..Default::default()
        },
    );
    let external = {
        let v = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "example.com"}});
        KubeObject::Service(serde_json::from_value(v).unwrap())
    };
    let errs = r
        .reset_cluster(
            "c1",
            vec![
                web_svc(),
                pod("default", "a", PodSpec::default()),
                bad_ip.clone(),
                external,
            ],
        )
        .unwrap();
    assert_eq!(errs.len(), 2);
    assert_eq!(addrs(&eps(&r, WEB, 80)), ["c1/10.0.0.1:8080"]);
    let st = r.cluster_status();
    let rej = &st[0].rejected;
    assert!(rej
        .iter()
        .any(|p| p.kind == "Pod" && p.object == "default/bad" && p.reason.contains("not an IP")));
    assert!(rej.iter().any(|p| p.kind == "Service"
        && p.object == "default/x"
        && p.reason.contains("ExternalName")));

    // A good pod turning bad is removed and rejected; fixed, it is back.
    let a_bad = pod(
        "default",
        "a",
        PodSpec {
            ip: Some("10.0.0.300"),
            ..Default::default()
        },
    );
    assert!(r.apply("c1", Event::Upsert(a_bad)).unwrap().is_some());
    assert!(eps(&r, WEB, 80).is_empty());
    assert!(r
        .apply("c1", Event::Upsert(pod("default", "a", PodSpec::default())))
        .unwrap()
        .is_none());
    assert_eq!(eps(&r, WEB, 80).len(), 1);
    assert!(!r.cluster_status()[0]
        .rejected
        .iter()
        .any(|p| p.object == "default/a"));
}

#[test]
fn ready_waits_for_sync_or_timeout() {
    let (r, _) = two_clusters();
    let t0 = Instant::now();
    assert!(!r.ready_at(t0));
    r.reset_cluster("c1", vec![]).unwrap();
    assert!(!r.ready_at(t0), "c2 has not synced");
    assert!(
        r.ready_at(t0 + Duration::from_secs(31)),
        "a dead cluster stops blocking after ready_timeout"
    );
    r.set_synced("c2", true).unwrap();
    assert!(r.ready());
    r.set_synced("c2", false).unwrap();
    assert!(r.ready(), "once ready, stays ready");
}

#[test]
fn context_source_serves_settings_and_services() {
    let (r, _) = two_clusters();
    r.reset_cluster("c1", vec![web_svc()]).unwrap();
    let ctx: &dyn ContextSource = &*r;
    assert_eq!(ctx.mesh().domain_suffix, "cluster.local");
    assert_eq!(
        ctx.services()
            .keys()
            .map(|k| k.to_string())
            .collect::<Vec<_>>(),
        [WEB]
    );
    let st = serde_json::to_value(r.cluster_status()).unwrap();
    assert_eq!(st[0]["source"], "manifests:/m/c1");
    assert_eq!(st[0]["network"], "vpc-a");
    assert!(st[0]["last_event_time"].as_str().unwrap().ends_with('Z'));
}

// ---------------------------------------------------------------------------
// Network gateways discovered from Services labelled `topology.istio.io/network`.

const EW: &str = "istio-eastwestgateway";

/// The east-west gateway Service of `network` in istio-system: `extra_labels`
/// merged into its labels, `spec`/`status` merged into a selector + tls port.
fn gw_svc(network: &str, extra_labels: Value, spec: Value, status: Value) -> KubeObject {
    let mut labels = json!({"topology.istio.io/network": network, "istio": "eastwestgateway"});
    if let (Some(l), Some(x)) = (labels.as_object_mut(), extra_labels.as_object()) {
        l.extend(x.clone());
    }
    let mut s = json!({"selector": {"istio": "eastwestgateway"},
        "ports": [{"name": "tls", "port": 15443}]});
    if let (Some(m), Some(x)) = (s.as_object_mut(), spec.as_object()) {
        m.extend(x.clone());
    }
    let v = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": EW, "namespace": "istio-system", "labels": labels},
        "spec": s, "status": status});
    KubeObject::Service(serde_json::from_value(v).unwrap())
}

fn lb(ips: &[&str]) -> (Value, Value) {
    let ingress: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    (
        json!({"type": "LoadBalancer"}),
        json!({"loadBalancer": {"ingress": ingress}}),
    )
}

fn gws(r: &Registry, network: &str) -> Vec<String> {
    ContextSource::mesh(r)
        .networks
        .get(network)
        .map(|g| {
            g.iter()
                .map(|g| format!("{}:{}", g.address, g.port))
                .collect()
        })
        .unwrap_or_default()
}

fn gw_notes(r: &Registry, cluster: &str) -> Vec<String> {
    r.cluster_status()
        .into_iter()
        .filter(|c| c.name == cluster)
        .flat_map(|c| c.notes)
        .filter(|n| n.object == format!("istio-system/{EW}"))
        .map(|n| n.reason)
        .collect()
}

fn with_file_gateway(network: &str, address: &str, port: u16) -> (Arc<Registry>, PushQueue) {
    let mut mesh = MeshConfig {
        clusters: vec![
            cluster("c1", "vpc-a", Some("r1/z1")),
            cluster("c2", "account-b", None),
        ],
        ..MeshConfig::default()
    };
    mesh.networks.insert(
        network.into(),
        vec![NetworkGateway {
            address: address.into(),
            port,
            cluster: None,
        }],
    );
    let q = PushQueue::new();
    (Registry::new(Arc::new(mesh), q.clone()), q)
}

#[test]
fn gateway_discovered_from_a_labelled_load_balancer_service() {
    let (r, q) = two_clusters();
    assert!(ContextSource::mesh(&*r).networks.is_empty());
    let (spec, mut status) = lb(&["198.51.100.7"]);
    status["loadBalancer"]["ingress"]
        .as_array_mut()
        .unwrap()
        .push(json!({"hostname": "ew.elb.example.com"}));
    let mut spec = spec;
    spec["externalIPs"] = json!(["198.51.100.8", "198.51.100.7"]);
    r.reset_cluster("c2", vec![gw_svc("account-b", json!({}), spec, status)])
        .unwrap();
    let req = q.try_take().unwrap();
    assert!(req.full && req.reasons.contains("networks"), "{req:?}");
    // Istio's order: load balancer IPs, then external IPs; default port 15443;
    // the hostname entry is not resolved, and says so.
    assert_eq!(
        gws(&r, "account-b"),
        ["198.51.100.7:15443", "198.51.100.8:15443"]
    );
    let notes = gw_notes(&r, "c2");
    assert!(
        notes.iter().any(|n| n
            == "east-west gateway of network account-b: 198.51.100.7:15443, 198.51.100.8:15443"),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("ew.elb.example.com") && n.contains("does not resolve")),
        "{notes:?}"
    );
    // The Service is still an ordinary service too.
    assert!(r
        .service("istio-eastwestgateway.istio-system.svc.cluster.local")
        .is_some());

    // The network filter of translation sees the discovered gateway.
    let ctx = crate::model::PushContext {
        mesh: ContextSource::mesh(&*r),
        services: r.services(),
        ..Default::default()
    };
    assert!(crate::translate::network::multi_network(&ctx));

    // Nothing gateway-related changed: the settings are shared, no network push.
    let before = ContextSource::mesh(&*r);
    r.reset_cluster(
        "c2",
        vec![
            gw_svc(
                "account-b",
                json!({}),
                {
                    let (mut s, _) = lb(&[]);
                    s["externalIPs"] = json!(["198.51.100.8", "198.51.100.7"]);
                    s
                },
                status_with_hostname(),
            ),
            web_svc(),
        ],
    )
    .unwrap();
    let req = q.try_take().unwrap();
    assert!(!req.reasons.contains("networks"), "{req:?}");
    assert!(Arc::ptr_eq(&before, &ContextSource::mesh(&*r)));
}

fn status_with_hostname() -> Value {
    json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}, {"hostname": "ew.elb.example.com"}]}})
}

#[test]
fn discovered_gateways_merge_with_the_mesh_file_without_duplicates() {
    let (r, q) = with_file_gateway("account-b", "198.51.100.7", 15443);
    assert_eq!(gws(&r, "account-b"), ["198.51.100.7:15443"]);
    let (spec, status) = lb(&["198.51.100.7", "198.51.100.9"]);
    r.reset_cluster("c2", vec![gw_svc("account-b", json!({}), spec, status)])
        .unwrap();
    assert!(q.try_take().unwrap().reasons.contains("networks"));
    assert_eq!(
        gws(&r, "account-b"),
        ["198.51.100.7:15443", "198.51.100.9:15443"],
        "mesh file first, the shared address once"
    );
    // The same gateway Service in another cluster adds nothing twice; a second
    // network appears alongside.
    let (spec, status) = lb(&["198.51.100.9"]);
    let (spec3, status3) = lb(&["203.0.113.1"]);
    let other = {
        let mut o = gw_svc("vpc-a", json!({}), spec3, status3);
        if let KubeObject::Service(s) = &mut o {
            s.metadata.name = Some("ew-vpc-a".into());
        }
        o
    };
    r.reset_cluster(
        "c1",
        vec![gw_svc("account-b", json!({}), spec, status), other],
    )
    .unwrap();
    assert_eq!(
        gws(&r, "account-b"),
        ["198.51.100.7:15443", "198.51.100.9:15443"]
    );
    assert_eq!(gws(&r, "vpc-a"), ["203.0.113.1:15443"]);
    // Discovered gateways name their cluster (remote endpoints prefer their own
    // cluster's gateways); the mesh file's belong to none, and win a tie.
    let clusters: Vec<Option<String>> = ContextSource::mesh(&*r).networks["account-b"]
        .iter()
        .map(|g| g.cluster.clone())
        .collect();
    assert_eq!(clusters, [None, Some("c1".to_string())]);

    // Removing a cluster removes what only it discovered; the file's stay.
    q.try_take();
    r.remove_cluster("c2").unwrap();
    r.remove_cluster("c1").unwrap();
    assert!(q.try_take().unwrap().reasons.contains("networks"));
    assert_eq!(gws(&r, "account-b"), ["198.51.100.7:15443"]);
    assert!(gws(&r, "vpc-a").is_empty());
    assert!(!ContextSource::mesh(&*r).networks.contains_key("vpc-a"));
}

#[test]
fn gateway_port_label_and_changes_push_full() {
    let (r, q) = two_clusters();
    let (spec, status) = lb(&["198.51.100.7"]);
    let labelled = |port: &str| {
        gw_svc(
            "account-b",
            json!({"networking.istio.io/gatewayPort": port}),
            spec.clone(),
            status.clone(),
        )
    };
    // Watch events (the API-server path) go through the same conversion.
    r.apply("c2", Event::Upsert(labelled("15444"))).unwrap();
    assert!(q.try_take().unwrap().reasons.contains("networks"));
    assert_eq!(gws(&r, "account-b"), ["198.51.100.7:15444"]);

    // An unparsable port falls back to 15443, as in Istio, with a note.
    r.apply("c2", Event::Upsert(labelled("tls"))).unwrap();
    assert!(q.try_take().unwrap().reasons.contains("networks"));
    assert_eq!(gws(&r, "account-b"), ["198.51.100.7:15443"]);
    assert!(gw_notes(&r, "c2")
        .iter()
        .any(|n| n.contains("\"tls\" is not a port number")));

    // A new load balancer IP: full push, new gateway.
    let (_, status2) = lb(&["198.51.100.70"]);
    r.apply(
        "c2",
        Event::Upsert(gw_svc("account-b", json!({}), spec.clone(), status2)),
    )
    .unwrap();
    assert!(q.try_take().unwrap().reasons.contains("networks"));
    assert_eq!(gws(&r, "account-b"), ["198.51.100.70:15443"]);

    // The label removed: no longer a gateway.
    let plain = {
        let mut o = gw_svc("account-b", json!({}), spec.clone(), status.clone());
        if let KubeObject::Service(s) = &mut o {
            s.metadata
                .labels
                .as_mut()
                .unwrap()
                .remove("topology.istio.io/network");
        }
        o
    };
    r.apply("c2", Event::Upsert(plain.clone())).unwrap();
    assert!(q.try_take().unwrap().reasons.contains("networks"));
    assert!(ContextSource::mesh(&*r).networks.is_empty());
    assert!(gw_notes(&r, "c2").is_empty());

    // Labelled again, then deleted.
    r.apply("c2", Event::Upsert(labelled("15443"))).unwrap();
    assert_eq!(gws(&r, "account-b"), ["198.51.100.7:15443"]);
    q.try_take();
    r.apply("c2", Event::Delete(plain)).unwrap();
    let req = q.try_take().unwrap();
    assert!(req.full && req.reasons.contains("networks"), "{req:?}");
    assert!(ContextSource::mesh(&*r).networks.is_empty());
}

#[test]
fn labelled_service_without_usable_address_is_noted_not_a_gateway() {
    let (r, q) = two_clusters();
    // ClusterIP with a load balancer status (read for LoadBalancer only), and a
    // LoadBalancer not yet provisioned.
    let (_, status) = lb(&["198.51.100.7"]);
    let cluster_ip = gw_svc("account-b", json!({}), json!({}), status);
    r.reset_cluster("c2", vec![cluster_ip]).unwrap();
    let req = q.try_take().unwrap();
    assert!(!req.reasons.contains("networks"), "{req:?}");
    assert!(ContextSource::mesh(&*r).networks.is_empty());
    let notes = gw_notes(&r, "c2");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("has no usable address") && n.contains("account-b")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("read for type LoadBalancer only (type is ClusterIP)")),
        "{notes:?}"
    );

    let pending = gw_svc(
        "account-b",
        json!({}),
        json!({"type": "LoadBalancer", "externalIPs": ["not-an-ip"]}),
        json!({}),
    );
    r.reset_cluster("c2", vec![pending.clone()]).unwrap();
    assert!(ContextSource::mesh(&*r).networks.is_empty());
    let notes = gw_notes(&r, "c2");
    assert!(notes
        .iter()
        .any(|n| n.contains("\"not-an-ip\" is not an IP address")));
    assert!(notes.iter().any(|n| n.contains("has no usable address")));
    // The file source logs the same notes (naming the file).
    assert!(pending
        .notes()
        .iter()
        .any(|n| n.contains("has no usable address")));

    // NodePort gateways on node addresses are not discovered, and say so.
    let node_port = {
        let mut o = gw_svc(
            "account-b",
            json!({}),
            json!({"type": "NodePort", "externalIPs": ["198.51.100.7"]}),
            json!({}),
        );
        if let KubeObject::Service(s) = &mut o {
            s.metadata.annotations = Some(
                [(
                    "traffic.istio.io/nodeSelector".to_string(),
                    "{}".to_string(),
                )]
                .into(),
            );
        }
        o
    };
    r.reset_cluster("c2", vec![node_port]).unwrap();
    assert!(ContextSource::mesh(&*r).networks.is_empty());
    assert!(gw_notes(&r, "c2")
        .iter()
        .any(|n| n.contains("traffic.istio.io/nodeSelector is not supported")));
}

#[test]
fn api_server_objects_keep_what_gateway_discovery_reads() {
    // The kube source slims objects before they reach the registry; a gateway
    // Service must come out as the same record as from a manifest file.
    let (spec, status) = lb(&["198.51.100.7"]);
    let mut full = gw_svc("account-b", json!({}), spec, status);
    if let KubeObject::Service(s) = &mut full {
        s.metadata.annotations = Some(
            [
                ("big".to_string(), "x".repeat(100)),
                (
                    "traffic.istio.io/nodeSelector".to_string(),
                    "{}".to_string(),
                ),
            ]
            .into(),
        );
        s.spec.as_mut().unwrap().type_ = Some("NodePort".into());
    }
    let slim = crate::sources::kube::slim(full.clone());
    let KubeObject::Service(ss) = &slim else {
        panic!("kind changed")
    };
    assert_eq!(ss.metadata.annotations.as_ref().map(|a| a.len()), Some(1));
    let mut i = Interners::default();
    let (Ok(Record::Service(_, a)), Ok(Record::Service(_, b))) = (
        Record::from_object(&full, &mut i),
        Record::from_object(&slim, &mut i),
    ) else {
        panic!("not services")
    };
    assert_eq!(a, b);
    assert!(a.gateway.is_some());

    // As a LoadBalancer, the status survives slimming and gives the gateway.
    let (spec, status) = lb(&["198.51.100.7"]);
    let full = gw_svc("account-b", json!({}), spec, status);
    let slim = crate::sources::kube::slim(full.clone());
    let (r, _) = two_clusters();
    r.apply("c2", Event::Upsert(slim)).unwrap();
    assert_eq!(gws(&r, "account-b"), ["198.51.100.7:15443"]);

    // Any other Service keeps neither status nor annotations.
    let (spec, status) = lb(&["198.51.100.7"]);
    let mut plain = gw_svc("account-b", json!({}), spec, status);
    if let KubeObject::Service(s) = &mut plain {
        s.metadata.labels = None;
        s.metadata.annotations = Some([("a".to_string(), "b".to_string())].into());
    }
    let KubeObject::Service(ps) = crate::sources::kube::slim(plain) else {
        panic!("kind changed")
    };
    assert!(ps.status.is_none() && ps.metadata.annotations.is_none());
}

#[test]
fn mesh_file_gateways_cannot_claim_a_cluster() {
    let base = "clusters:\n- name: c1\n  manifests: /m/c1\nnetworks:\n  n2:\n    gateways:\n    - address: 192.0.2.1\n      port: 15443\n";
    let m = MeshConfig::parse(base, std::path::Path::new("/")).unwrap();
    assert_eq!(m.networks["n2"][0].cluster, None);
    let with_cluster = format!("{base}      cluster: c1\n");
    let e = MeshConfig::parse(&with_cluster, std::path::Path::new("/")).unwrap_err();
    assert!(e.to_string().contains("cluster"), "{e}");
}

#[test]
fn selectors_follow_label_and_selector_changes() {
    let (r, _) = two_clusters();
    let up = |o: KubeObject| r.apply("c1", Event::Upsert(o)).unwrap();
    let ports = || json!([{"name": "http", "port": 80, "targetPort": 8080}]);
    up(svc("default", "a", json!({"app": "a"}), ports()));
    up(svc(
        "default",
        "b",
        json!({"app": "b", "tier": "x"}),
        ports(),
    ));
    let p = |name: &str, ip: &'static str, labels: Value| {
        pod(
            "default",
            name,
            PodSpec {
                ip: Some(ip),
                labels,
                ..Default::default()
            },
        )
    };
    up(p("p1", "10.0.0.1", json!({"app": "a"})));
    up(p("p2", "10.0.0.2", json!({"app": "b"})));
    up(p("p3", "10.0.0.3", json!({"app": "b", "tier": "x"})));
    let a = "a.default.svc.cluster.local";
    let b = "b.default.svc.cluster.local";
    assert_eq!(addrs(&eps(&r, a, 80)), ["c1/10.0.0.1:8080"]);
    assert_eq!(
        addrs(&eps(&r, b, 80)),
        ["c1/10.0.0.3:8080"],
        "every selector pair must match"
    );

    // A pod relabelled moves between services.
    up(p("p1", "10.0.0.1", json!({"app": "b", "tier": "x"})));
    assert!(eps(&r, a, 80).is_empty());
    assert_eq!(
        addrs(&eps(&r, b, 80)),
        ["c1/10.0.0.1:8080", "c1/10.0.0.3:8080"]
    );

    // A selector change picks its pods anew.
    up(svc("default", "a", json!({"tier": "x"}), ports()));
    assert_eq!(
        addrs(&eps(&r, a, 80)),
        ["c1/10.0.0.1:8080", "c1/10.0.0.3:8080"]
    );

    // Deleted pods leave; a service in another namespace sees nothing.
    r.apply("c1", Event::Delete(p("p3", "10.0.0.3", json!({}))))
        .unwrap();
    assert_eq!(addrs(&eps(&r, a, 80)), ["c1/10.0.0.1:8080"]);
    up(svc("other", "a", json!({"tier": "x"}), ports()));
    assert!(eps(&r, "a.other.svc.cluster.local", 80).is_empty());
}
