//! Gateway API status written back to a config cluster's objects
//! (`sources::gateway_status`): `crossmesh serve` (the binary users run) reads
//! Gateway API objects from a fake API server through a kubeconfig and writes
//! their conditions through the `/status` subresource; the test reads them back
//! with kube-rs and counts the writes in the server's request log.
//!
//! Also the fake API server's status subresource itself (the contract with
//! kube-rs, as kube-apiserver serves CRDs with a status subresource).

mod support;

#[path = "support/kube_api.rs"]
mod kube_api;

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use kube_api::{objects, FakeApiServer, FaultRule, Verb};
use serde_json::{json, Value};
use support::control_plane::ControlPlane;
use support::net::Subnet;
use support::{wait_for, CONVERGE};

const GROUP: &str = "gateway.networking.k8s.io";
const OURS: &str = "crossmesh.io/gateway-controller";
const OTHER: &str = "example.com/other-controller";

async fn client(s: &FakeApiServer) -> Client {
    let kc = Kubeconfig::from_yaml(&s.kubeconfig_yaml(None, None)).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(cfg).expect("client")
}

fn api(
    c: &Client,
    kind: &str,
    plural: &str,
    version: &str,
    ns: Option<&str>,
) -> Api<DynamicObject> {
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, version, kind), plural);
    match ns {
        Some(ns) => Api::namespaced_with(c.clone(), ns, &ar),
        None => Api::all_with(c.clone(), &ar),
    }
}

fn routes(c: &Client, ns: &str) -> Api<DynamicObject> {
    api(c, "HTTPRoute", "httproutes", "v1", Some(ns))
}

fn gateway_class(name: &str, controller: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": name},
        "spec": {"controllerName": controller}
    })
}

fn gateway(ns: &str, name: &str, class: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"gatewayClassName": class, "listeners": [{
            "name": "http", "port": 8080, "protocol": "HTTP",
            "allowedRoutes": {"namespaces": {"from": "All"}}
        }]}
    })
}

/// An HTTPRoute in `ns` on `parents` (`(namespace, gateway)`), to Service
/// `backend` (`namespace/name`) port 80, for `host`.
fn route(
    ns: &str,
    name: &str,
    parents: &[(&str, &str)],
    backend: (&str, &str),
    host: &str,
) -> Value {
    let parent_refs: Vec<Value> = parents
        .iter()
        .map(|(pns, gw)| json!({"name": gw, "namespace": pns}))
        .collect();
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "parentRefs": parent_refs,
            "hostnames": [host],
            "rules": [{"backendRefs": [{"name": backend.1, "namespace": backend.0, "port": 80}]}]
        }
    })
}

/// A control plane reading `c1`'s objects and Istio/Gateway API config.
struct Fixture {
    api: FakeApiServer,
    cp: ControlPlane,
    kube: Client,
    dir: tempfile::TempDir,
    subnet: Subnet,
}

impl Fixture {
    async fn start() -> Fixture {
        let subnet = Subnet::claim();
        let api = FakeApiServer::start("c1").await;
        api.apply(&objects::node("n1", "r1", "r1-a"));
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("c1.kubeconfig");
        api.write_kubeconfig(&kubeconfig, None, None);
        let mesh = dir.path().join("mesh.yaml");
        std::fs::write(
            &mesh,
            format!(
                "clusters:\n- name: c1\n  network: n1\n  kubeconfig: {}\nconfig:\n- cluster: c1\n",
                kubeconfig.display()
            ),
        )
        .unwrap();
        let cp = ControlPlane::start_at(&mesh, subnet.addr(1, 15010), subnet.addr(1, 15014)).await;
        let kube = client(&api).await;
        Fixture {
            api,
            cp,
            kube,
            dir,
            subnet,
        }
    }

    async fn wait_service(&self, host: &str) {
        wait_for(
            &format!("service {host} in the registry"),
            CONVERGE,
            || async {
                let r = self.cp.json("/debug/registryz").await?;
                let known = r["services"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["hostname"] == host));
                if known {
                    Ok(())
                } else {
                    Err(r.to_string())
                }
            },
        )
        .await;
    }

    /// Status writes (PATCH of `/status`) of one object so far.
    fn writes(&self, plural: &str, ns: &str, name: &str) -> usize {
        self.api
            .requests()
            .iter()
            .filter(|r| {
                r.verb == Verb::Patch
                    && r.subresource == "status"
                    && r.plural == plural
                    && r.namespace == ns
                    && r.name == name
            })
            .count()
    }

    fn object(&self, plural: &str, ns: &str, name: &str) -> Value {
        self.api
            .get(GROUP, plural, ns, name)
            .unwrap_or_else(|| panic!("{plural} {ns}/{name} is gone"))
    }
}

/// The condition `ty` of `conds`.
fn cond<'a>(conds: &'a Value, ty: &str) -> Option<&'a Value> {
    conds.as_array()?.iter().find(|c| c["type"] == ty)
}

/// Our parents[] entry for Gateway `ns/name` of a route object.
fn our_parent<'a>(route: &'a Value, ns: &str, gw: &str) -> Option<&'a Value> {
    route["status"]["parents"].as_array()?.iter().find(|p| {
        p["controllerName"] == OURS
            && p["parentRef"]["name"] == gw
            && p["parentRef"]["namespace"] == ns
    })
}

/// Wait until the route's entry for `ns/gw` has condition `ty` = `status`
/// with `reason`, observed at the route's current generation.
async fn wait_route_condition(
    f: &Fixture,
    route_ns: &str,
    name: &str,
    gw: (&str, &str),
    ty: &str,
    status: &str,
    reason: &str,
) -> Value {
    wait_for(
        &format!("HTTPRoute {route_ns}/{name} {ty}={status} {reason}"),
        CONVERGE,
        || async {
            let r = f.object("httproutes", route_ns, name);
            let gen = r["metadata"]["generation"].clone();
            let p = our_parent(&r, gw.0, gw.1)
                .ok_or_else(|| format!("no entry of ours: {}", r["status"]))?;
            let c = cond(&p["conditions"], ty).ok_or_else(|| format!("no {ty}: {p}"))?;
            if c["status"] == status && c["reason"] == reason && c["observedGeneration"] == gen {
                Ok(r)
            } else {
                Err(format!("generation {gen}: {c}"))
            }
        },
    )
    .await
}

// ---------------------------------------------------------------------------
// The fake API server's status subresource.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_api_server_serves_the_status_subresource_as_kube_apiserver() {
    let s = FakeApiServer::start("c1").await;
    s.apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}));
    let c = client(&s).await;
    let routes = routes(&c, "shop");
    // Create: a status in the body is dropped, generation starts at 1.
    let mut body = route(
        "shop",
        "r",
        &[("infra", "gw")],
        ("shop", "web"),
        "a.example.com",
    );
    body["status"] = json!({"parents": []});
    let obj: DynamicObject = serde_json::from_value(body).unwrap();
    let created = routes.create(&PostParams::default(), &obj).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.data.get("status").is_none(), "{:?}", created.data);
    let rv1 = created.metadata.resource_version.clone().unwrap();

    // A status write changes status only (a spec in the patch is ignored),
    // bumps the resourceVersion and keeps the generation.
    let status = json!({"parents": [{"parentRef": {"name": "gw"}, "controllerName": OTHER, "conditions": []}]});
    let patched = routes
        .patch_status(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"hostnames": ["evil.example.com"]}, "status": status})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data["status"], status);
    assert_eq!(patched.data["spec"]["hostnames"], json!(["a.example.com"]));
    assert_eq!(patched.metadata.generation, Some(1));
    let rv2 = patched.metadata.resource_version.clone().unwrap();
    assert_ne!(rv1, rv2);

    // The same status again stores nothing.
    let again = routes
        .patch_status(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version.as_deref(),
        Some(rv2.as_str())
    );

    // A stale resourceVersion is a conflict.
    let stale = routes
        .patch_status(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": rv1}, "status": {"parents": []}})),
        )
        .await;
    assert!(
        matches!(&stale, Err(kube::Error::Api(e)) if e.code == 409),
        "{stale:?}"
    );

    // A write of the object keeps the stored status; a spec change counts a generation.
    let mut next = route(
        "shop",
        "r",
        &[("infra", "gw")],
        ("shop", "web"),
        "b.example.com",
    );
    next["status"] = json!({"parents": []});
    next["metadata"]["resourceVersion"] = json!(rv2);
    let obj: DynamicObject = serde_json::from_value(next).unwrap();
    let replaced = routes
        .replace("r", &PostParams::default(), &obj)
        .await
        .unwrap();
    assert_eq!(replaced.data["status"], status);
    assert_eq!(replaced.metadata.generation, Some(2));

    // Kinds without a status subresource have no /status path.
    let grants = api(
        &c,
        "ReferenceGrant",
        "referencegrants",
        "v1beta1",
        Some("shop"),
    );
    let none = grants
        .patch_status(
            "x",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {}})),
        )
        .await;
    assert!(
        matches!(&none, Err(kube::Error::Api(e)) if e.code == 404),
        "{none:?}"
    );

    let log = s.requests();
    let status_patches = log
        .iter()
        .filter(|r| r.verb == Verb::Patch && r.subresource == "status" && r.plural == "httproutes")
        .count();
    assert_eq!(status_patches, 3, "{log:?}");
}

// ---------------------------------------------------------------------------
// crossmesh's status writes.

/// A Gateway and an HTTPRoute applied to the cluster get `Accepted`,
/// `Programmed` and `ResolvedRefs` written with the object's generation; a spec
/// change is observed again with `lastTransitionTime` kept; an object whose
/// status is already right is not written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_route_get_conditions_at_their_generation_and_are_not_rewritten() {
    let f = Fixture::start().await;
    f.api.apply(&objects::service(
        "shop",
        "web",
        &[("app", "web")],
        &[("http", 80, 8080)],
    ));
    // The Service is known before the route (else a first BackendNotFound
    // would be written too).
    f.wait_service("web.shop.svc.cluster.local").await;
    f.api.apply(&gateway_class("crossmesh", OURS));
    f.api.apply(&gateway("infra", "gw", "crossmesh"));
    f.api.apply(&route(
        "shop",
        "r1",
        &[("infra", "gw")],
        ("shop", "web"),
        "a.example.com",
    ));

    let r1 = wait_route_condition(
        &f,
        "shop",
        "r1",
        ("infra", "gw"),
        "Accepted",
        "True",
        "Accepted",
    )
    .await;
    let p = our_parent(&r1, "infra", "gw").unwrap();
    let resolved = cond(&p["conditions"], "ResolvedRefs").expect("ResolvedRefs");
    assert_eq!(resolved["status"], "True", "{p}");
    assert_eq!(resolved["observedGeneration"], 1, "{p}");
    assert_eq!(p["parentRef"], json!({"name": "gw", "namespace": "infra"}));
    let accepted_at = cond(&p["conditions"], "Accepted").unwrap()["lastTransitionTime"].clone();
    assert!(
        accepted_at.as_str().is_some_and(|t| t.ends_with('Z')),
        "{accepted_at}"
    );

    let gw = wait_for(
        "Gateway infra/gw Programmed with one route",
        CONVERGE,
        || async {
            let g = f.object("gateways", "infra", "gw");
            let st = &g["status"];
            let ok = cond(&st["conditions"], "Accepted")
                .is_some_and(|c| c["status"] == "True" && c["observedGeneration"] == 1)
                && cond(&st["conditions"], "Programmed").is_some_and(|c| c["status"] == "True")
                && st["listeners"][0]["attachedRoutes"] == 1;
            if ok {
                Ok(g)
            } else {
                Err(st.to_string())
            }
        },
    )
    .await;
    let l = &gw["status"]["listeners"][0];
    assert_eq!(l["name"], "http");
    assert_eq!(
        l["supportedKinds"],
        json!([{"group": GROUP, "kind": "HTTPRoute"}, {"group": GROUP, "kind": "GRPCRoute"}])
    );
    assert_eq!(
        cond(&l["conditions"], "Programmed").unwrap()["status"],
        "True",
        "{l}"
    );
    wait_for("GatewayClass crossmesh Accepted", CONVERGE, || async {
        let c = f.object("gatewayclasses", "", "crossmesh");
        match cond(&c["status"]["conditions"], "Accepted") {
            Some(a) if a["status"] == "True" && a["observedGeneration"] == 1 => Ok(()),
            _ => Err(c["status"].to_string()),
        }
    })
    .await;

    // A spec change: generation 2 observed, the unchanged status keeps its time.
    f.api.apply(&route(
        "shop",
        "r1",
        &[("infra", "gw")],
        ("shop", "web"),
        "b.example.com",
    ));
    let r1 = wait_route_condition(
        &f,
        "shop",
        "r1",
        ("infra", "gw"),
        "Accepted",
        "True",
        "Accepted",
    )
    .await;
    assert_eq!(r1["metadata"]["generation"], 2);
    let p = our_parent(&r1, "infra", "gw").unwrap();
    assert_eq!(
        cond(&p["conditions"], "Accepted").unwrap()["lastTransitionTime"],
        accepted_at
    );
    assert_eq!(
        cond(&p["conditions"], "ResolvedRefs").unwrap()["observedGeneration"],
        2
    );

    // No write storm: another route makes crossmesh recompute (and rewrite the
    // Gateway, whose attachedRoutes changes), but r1 and the GatewayClass,
    // whose status is right, are not written again.
    let r1_writes = f.writes("httproutes", "shop", "r1");
    let class_writes = f.writes("gatewayclasses", "", "crossmesh");
    assert_eq!(
        r1_writes,
        2,
        "one write per generation: {:?}",
        f.api.requests()
    );
    assert_eq!(class_writes, 1, "{:?}", f.api.requests());
    f.api.apply(&route(
        "shop",
        "r2",
        &[("infra", "gw")],
        ("shop", "web"),
        "c.example.com",
    ));
    wait_route_condition(
        &f,
        "shop",
        "r2",
        ("infra", "gw"),
        "Accepted",
        "True",
        "Accepted",
    )
    .await;
    wait_for("Gateway infra/gw with two routes", CONVERGE, || async {
        let g = f.object("gateways", "infra", "gw");
        if g["status"]["listeners"][0]["attachedRoutes"] == 2 {
            Ok(())
        } else {
            Err(g["status"].to_string())
        }
    })
    .await;
    // A Service change (the writer recomputes on those too), then a third route
    // to know that recomputation ran.
    f.api.apply(&objects::service(
        "shop",
        "other",
        &[("app", "other")],
        &[("http", 80, 8080)],
    ));
    f.api.apply(&route(
        "shop",
        "r3",
        &[("infra", "gw")],
        ("shop", "other"),
        "d.example.com",
    ));
    wait_route_condition(
        &f,
        "shop",
        "r3",
        ("infra", "gw"),
        "ResolvedRefs",
        "True",
        "ResolvedRefs",
    )
    .await;
    assert_eq!(
        f.writes("httproutes", "shop", "r1"),
        r1_writes,
        "r1 was rewritten: {:?}",
        f.api.requests()
    );
    assert_eq!(f.writes("gatewayclasses", "", "crossmesh"), class_writes);
    assert_eq!(f.writes("httproutes", "shop", "r2"), 1);
    let configz = f.cp.json("/debug/configz").await.unwrap();
    let report = &configz["gatewayApiStatusWrites"][0];
    assert_eq!(report["cluster"], "c1", "{report}");
    assert_eq!(report["errors"], json!([]), "{report}");
}

/// A route whose backend is in another namespace: `ResolvedRefs=False
/// RefNotPermitted` without a ReferenceGrant, `True` once the grant exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_namespace_backend_is_refused_until_a_reference_grant() {
    let f = Fixture::start().await;
    f.api.apply(&objects::service(
        "billing",
        "pay",
        &[("app", "pay")],
        &[("http", 80, 8080)],
    ));
    f.api.apply(&gateway_class("crossmesh", OURS));
    f.api.apply(&gateway("infra", "gw", "crossmesh"));
    f.api.apply(&route(
        "shop",
        "r",
        &[("infra", "gw")],
        ("billing", "pay"),
        "pay.example.com",
    ));
    wait_route_condition(
        &f,
        "shop",
        "r",
        ("infra", "gw"),
        "ResolvedRefs",
        "False",
        "RefNotPermitted",
    )
    .await;

    f.api.apply(&json!({
        "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": "shop-routes", "namespace": "billing"},
        "spec": {
            "from": [{"group": GROUP, "kind": "HTTPRoute", "namespace": "shop"}],
            "to": [{"group": "", "kind": "Service"}]
        }
    }));
    let after = wait_route_condition(
        &f,
        "shop",
        "r",
        ("infra", "gw"),
        "ResolvedRefs",
        "True",
        "ResolvedRefs",
    )
    .await;
    let p = our_parent(&after, "infra", "gw").unwrap();
    assert_eq!(
        cond(&p["conditions"], "Accepted").unwrap()["status"],
        "True",
        "{p}"
    );
    // The generation did not change (a status-only transition).
    assert_eq!(
        cond(&p["conditions"], "ResolvedRefs").unwrap()["observedGeneration"],
        1
    );
}

/// Another controller's `parents[]` entry survives crossmesh's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_controllers_parent_entry_survives() {
    let f = Fixture::start().await;
    f.api.apply(&objects::service(
        "shop",
        "web",
        &[("app", "web")],
        &[("http", 80, 8080)],
    ));
    f.api.apply(&gateway_class("crossmesh", OURS));
    f.api.apply(&gateway_class("other", OTHER));
    f.api.apply(&gateway("infra", "gw", "crossmesh"));
    f.api.apply(&gateway("infra", "theirs", "other"));
    f.api.apply(&route(
        "shop",
        "r",
        &[("infra", "gw"), ("infra", "theirs")],
        ("shop", "web"),
        "a.example.com",
    ));
    let r = wait_route_condition(
        &f,
        "shop",
        "r",
        ("infra", "gw"),
        "Accepted",
        "True",
        "Accepted",
    )
    .await;
    // crossmesh reports on its own Gateway only.
    assert_eq!(
        r["status"]["parents"].as_array().map(Vec::len),
        Some(1),
        "{}",
        r["status"]
    );

    // The other controller adds its entry, keeping ours (as a controller should).
    let theirs = json!({
        "parentRef": {"name": "theirs", "namespace": "infra"},
        "controllerName": OTHER,
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "observedGeneration": 1, "lastTransitionTime": "2024-01-01T00:00:00Z"}]
    });
    let mut parents = r["status"]["parents"].as_array().cloned().unwrap();
    parents.push(theirs.clone());
    routes(&f.kube, "shop")
        .patch_status(
            "r",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"resourceVersion": r["metadata"]["resourceVersion"]},
                                 "status": {"parents": parents}}),
            ),
        )
        .await
        .expect("the other controller's write");

    // A spec change makes crossmesh rewrite its entry (generation 2).
    f.api.apply(&route(
        "shop",
        "r",
        &[("infra", "gw"), ("infra", "theirs")],
        ("shop", "web"),
        "b.example.com",
    ));
    let r = wait_route_condition(
        &f,
        "shop",
        "r",
        ("infra", "gw"),
        "Accepted",
        "True",
        "Accepted",
    )
    .await;
    assert_eq!(r["metadata"]["generation"], 2);
    let all = r["status"]["parents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(all.len(), 2, "{}", r["status"]);
    assert!(
        all.contains(&theirs),
        "the other controller's entry is gone: {}",
        r["status"]
    );
    // And its Gateway gets no status from crossmesh.
    assert!(f.object("gateways", "infra", "theirs")["status"].is_null());
    assert!(f.writes("httproutes", "shop", "r") >= 2);
}

/// A cluster whose RBAC forbids status writes is reported on
/// `/debug/configz` and in the log once, and not hammered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_status_writes_are_reported_once() {
    let f = Fixture::start().await;
    f.api.add_fault(FaultRule::status(403).on(Verb::Patch));
    f.api.apply(&objects::service(
        "shop",
        "web",
        &[("app", "web")],
        &[("http", 80, 8080)],
    ));
    f.api.apply(&gateway_class("crossmesh", OURS));
    f.api.apply(&gateway("infra", "gw", "crossmesh"));
    f.api.apply(&route(
        "shop",
        "r1",
        &[("infra", "gw")],
        ("shop", "web"),
        "a.example.com",
    ));
    let report = wait_for("status writes reported forbidden", CONVERGE, || async {
        let c = f.cp.json("/debug/configz").await?;
        let r = c["gatewayApiStatusWrites"][0].clone();
        if r["forbidden"]
            .as_str()
            .is_some_and(|m| m.contains("forbidden"))
        {
            Ok(r)
        } else {
            Err(r.to_string())
        }
    })
    .await;
    assert!(report["pending"].as_u64().unwrap_or(0) >= 1, "{report}");
    // More changes while forbidden: each is computed (pending grows) but not
    // written, and the refusal is logged once.
    f.api.apply(&route(
        "shop",
        "r2",
        &[("infra", "gw")],
        ("shop", "web"),
        "b.example.com",
    ));
    f.api.apply(&route(
        "shop",
        "r3",
        &[("infra", "gw")],
        ("shop", "web"),
        "c.example.com",
    ));
    let pending_before = report["pending"].as_u64().unwrap();
    wait_for("new routes queued", CONVERGE, || async {
        let c = f.cp.json("/debug/configz").await?;
        let r = &c["gatewayApiStatusWrites"][0];
        if r["pending"].as_u64().unwrap_or(0) >= pending_before + 2 {
            Ok(())
        } else {
            Err(r.to_string())
        }
    })
    .await;
    let patches = f
        .api
        .requests()
        .iter()
        .filter(|r| r.verb == Verb::Patch && r.subresource == "status")
        .count();
    assert_eq!(patches, 1, "one probe per {}s", 60);
    let log = f.cp.log();
    assert_eq!(
        log.matches("the cluster refuses Gateway API status writes")
            .count(),
        1,
        "{log}"
    );
    assert!(f.object("httproutes", "shop", "r1")["status"].is_null());
}

/// Two hub replicas reading one cluster converge on one status: each object
/// is written about once per change, not back and forth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_converge_without_rewriting_each_other() {
    let f = Fixture::start().await;
    let mesh = f.dir.path().join("mesh.yaml");
    let second =
        ControlPlane::start_at(&mesh, f.subnet.addr(2, 15010), f.subnet.addr(2, 15014)).await;
    f.api.apply(&objects::service(
        "shop",
        "web",
        &[("app", "web")],
        &[("http", 80, 8080)],
    ));
    f.wait_service("web.shop.svc.cluster.local").await;
    f.api.apply(&gateway_class("crossmesh", OURS));
    f.api.apply(&gateway("infra", "gw", "crossmesh"));
    f.api.apply(&route(
        "shop",
        "r1",
        &[("infra", "gw")],
        ("shop", "web"),
        "a.example.com",
    ));
    wait_route_condition(
        &f,
        "shop",
        "r1",
        ("infra", "gw"),
        "Accepted",
        "True",
        "Accepted",
    )
    .await;
    // A later change both replicas compute: when both report nothing pending,
    // they agree with what the objects carry.
    f.api.apply(&route(
        "shop",
        "r2",
        &[("infra", "gw")],
        ("shop", "web"),
        "b.example.com",
    ));
    wait_route_condition(
        &f,
        "shop",
        "r2",
        ("infra", "gw"),
        "Accepted",
        "True",
        "Accepted",
    )
    .await;
    for cp in [&f.cp, &second] {
        wait_for("replica has nothing pending", CONVERGE, || async {
            let c = cp.json("/debug/configz").await?;
            let r = &c["gatewayApiStatusWrites"][0];
            if r["pending"] == 0 && r["errors"] == json!([]) {
                Ok(())
            } else {
                Err(r.to_string())
            }
        })
        .await;
    }
    let writes = |f: &Fixture| {
        [
            f.writes("httproutes", "shop", "r1"),
            f.writes("httproutes", "shop", "r2"),
            f.writes("gatewayclasses", "", "crossmesh"),
        ]
    };
    let settled = writes(&f);
    // Each object's status was written by one replica (the other's write, from
    // the same resourceVersion, conflicted or found it done).
    let status_writes_ok = |n: usize| (1..=2).contains(&n);
    assert!(
        settled.iter().all(|n| status_writes_ok(*n)),
        "{settled:?}: {:?}",
        f.api.requests()
    );
    // A third route, computed by both, leaves the others alone.
    f.api.apply(&route(
        "shop",
        "r3",
        &[("infra", "gw")],
        ("shop", "web"),
        "c.example.com",
    ));
    wait_route_condition(
        &f,
        "shop",
        "r3",
        ("infra", "gw"),
        "Accepted",
        "True",
        "Accepted",
    )
    .await;
    for cp in [&f.cp, &second] {
        wait_for("replica has nothing pending", CONVERGE, || async {
            let c = cp.json("/debug/configz").await?;
            if c["gatewayApiStatusWrites"][0]["pending"] == 0 {
                Ok(())
            } else {
                Err(c["gatewayApiStatusWrites"].to_string())
            }
        })
        .await;
    }
    assert_eq!(writes(&f), settled, "{:?}", f.api.requests());
    let r1 = f.object("httproutes", "shop", "r1");
    assert_eq!(
        r1["status"]["parents"].as_array().map(Vec::len),
        Some(1),
        "{}",
        r1["status"]
    );
}

/// A failing status write (500) is shown on `/debug/configz` with the object
/// named and retried with backoff until it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_status_writes_are_shown_and_retried() {
    let f = Fixture::start().await;
    f.api.add_fault(
        FaultRule::status(500)
            .on(Verb::Patch)
            .of("gatewayclasses")
            .times(3),
    );
    f.api.apply(&gateway_class("crossmesh", OURS));
    let report = wait_for("the failing write on /debug/configz", CONVERGE, || async {
        let c = f.cp.json("/debug/configz").await?;
        let r = c["gatewayApiStatusWrites"][0].clone();
        match r["errors"].as_array().and_then(|e| e.first()) {
            Some(e) if e["kind"] == "GatewayClass" && e["name"] == "crossmesh" => Ok(e.clone()),
            _ => Err(r.to_string()),
        }
    })
    .await;
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("500") || e.contains("Internal error")),
        "{report}"
    );
    wait_for(
        "GatewayClass crossmesh Accepted after retries",
        CONVERGE,
        || async {
            let c = f.object("gatewayclasses", "", "crossmesh");
            match cond(&c["status"]["conditions"], "Accepted") {
                Some(a) if a["status"] == "True" => Ok(()),
                _ => Err(c["status"].to_string()),
            }
        },
    )
    .await;
    // Three refused, the fourth written; then nothing more.
    assert_eq!(f.writes("gatewayclasses", "", "crossmesh"), 4);
    wait_for("the error cleared", CONVERGE, || async {
        let c = f.cp.json("/debug/configz").await?;
        let r = &c["gatewayApiStatusWrites"][0];
        if r["errors"] == json!([]) && r["pending"] == 0 && r["writes"] == 1 {
            Ok(())
        } else {
            Err(r.to_string())
        }
    })
    .await;
}
