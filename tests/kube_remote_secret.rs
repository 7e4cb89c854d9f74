//! Runtime registration through remote secrets, against fake API servers: a
//! cluster added through a Secret starts serving, a removed key or Secret stops it,
//! a taken name is reported and not applied, a changed kubeconfig swaps clients
//! without dropping endpoints; and `create_remote_secret` output works as is.

#[path = "support/kube_api.rs"]
mod kube_api;

use std::sync::Arc;
use std::time::Duration;

use crossmesh::config::MeshConfig;
use crossmesh::push::PushQueue;
use crossmesh::registry::Registry;
use crossmesh::sources::kube::{client_from_kubeconfig, spawn_cluster, KubeOptions};
use crossmesh::sources::remote_secret::{self, create_remote_secret, DEFAULT_NAMESPACE};
use kube_api::{objects, FakeApiServer, Options};

const HOST: &str = "web.ns1.svc.cluster.local";

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A member cluster with `web` backed by one pod at `ip`.
async fn member(name: &str, token: &str, ip: &str) -> FakeApiServer {
    let s = FakeApiServer::start_with(Options {
        name: name.into(),
        token: Some(token.into()),
        ..Options::default()
    })
    .await;
    objects::seed_web(&s, ip);
    s
}

/// `(cluster, address)` of every endpoint of `HOST` port 80, sorted.
fn endpoints(r: &Registry) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = r
        .service(HOST)
        .map(|s| {
            s.endpoints
                .get(&80)
                .into_iter()
                .flatten()
                .map(|e| (e.cluster.to_string(), e.address.to_string()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn pair(c: &str, a: &str) -> (String, String) {
    (c.to_string(), a.to_string())
}

/// The refused remote-secret keys listed under `cluster` on `/debug/clusterz`
/// (`Registry::clusterz`, as JSON), as `(Secret, reason)`.
fn refused_on(r: &Registry, cluster: &str) -> Vec<(String, String)> {
    let page = serde_json::to_value(r.clusterz()).unwrap();
    let entry = page
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == cluster)
        .cloned()
        .unwrap_or_default();
    entry["rejected"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["kind"] == "Secret")
        .map(|p| {
            (
                p["object"].as_str().unwrap_or_default().to_string(),
                p["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn clusters_join_and_leave_through_secrets() {
    let config = FakeApiServer::start("config").await;
    let c1 = member("c1", "t1", "10.1.0.1").await;
    let c2 = member("c2", "t2", "10.2.0.1").await;
    let c3 = member("c3", "t3", "10.3.0.1").await;
    let dir = tempfile::tempdir().unwrap();
    let k1 = dir.path().join("c1");
    c1.write_kubeconfig(&k1, None, None);
    let mesh = Arc::new(
        MeshConfig::parse(
            &format!("clusters:\n- name: c1\n  kubeconfig: {}\n", k1.display()),
            std::path::Path::new("/"),
        )
        .unwrap(),
    );
    let registry = Registry::new(mesh.clone(), PushQueue::new());
    let _c1 = spawn_cluster(registry.clone(), &mesh.clusters[0], KubeOptions::default()).unwrap();
    let (client, _) = client_from_kubeconfig(&config.kubeconfig_yaml(None, None), None, "config")
        .await
        .unwrap();
    let ctl = remote_secret::spawn(
        registry.clone(),
        client,
        DEFAULT_NAMESPACE,
        KubeOptions::default(),
        crossmesh::security::authn::KubeClients::new(),
    );
    wait_for("c1", 10, || {
        endpoints(&registry) == [pair("c1", "10.1.0.1")]
    })
    .await;

    // A Secret adds c2, and claims c1, which the mesh file owns.
    let kc2 = c2.kubeconfig_yaml(None, None);
    let kc3 = c3.kubeconfig_yaml(None, None);
    config.apply(&objects::remote_secret(
        DEFAULT_NAMESPACE,
        "s-a",
        ("crossmesh.io/multi-cluster", "true"),
        &[("c2", &kc2), ("c1", &kc3)],
    ));
    wait_for("c2 joined", 20, || {
        endpoints(&registry) == [pair("c1", "10.1.0.1"), pair("c2", "10.2.0.1")]
    })
    .await;
    let conflicts = ctl.conflicts();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].cluster, "c1");
    assert!(conflicts[0].reason.contains("mesh file"));
    // /debug/clusterz lists the refused key under c1, the cluster holding the name,
    // naming the Secret, the key and why; c1 itself is unharmed.
    let s_a = format!("{DEFAULT_NAMESPACE}/s-a");
    let s_b = format!("{DEFAULT_NAMESPACE}/s-b");
    wait_for("c1's refused claim on clusterz", 10, || {
        refused_on(&registry, "c1").len() == 1
    })
    .await;
    let refused = refused_on(&registry, "c1");
    assert_eq!(refused[0].0, s_a, "{refused:?}");
    assert!(
        refused[0].1.contains("key c1") && refused[0].1.contains("mesh file"),
        "{refused:?}"
    );
    let c1 = registry
        .clusterz()
        .into_iter()
        .find(|c| c.name == "c1")
        .unwrap();
    assert!(c1.synced && c1.last_error.is_none(), "{c1:?}");
    assert!(refused_on(&registry, "c2").is_empty());

    // An Istio-labelled Secret adds c3; a second Secret claiming c2 is reported.
    config.apply(&objects::remote_secret(
        DEFAULT_NAMESPACE,
        "s-b",
        ("istio/multiCluster", "true"),
        &[("c3", &kc3), ("c2", &kc3)],
    ));
    wait_for("c3 joined", 20, || endpoints(&registry).len() == 3).await;
    assert!(ctl
        .conflicts()
        .iter()
        .any(|c| c.cluster == "c2" && c.reason.contains("s-a")));
    assert_eq!(endpoints(&registry)[1], pair("c2", "10.2.0.1"));
    wait_for("c2's refused claim on clusterz", 10, || {
        refused_on(&registry, "c2")
            .iter()
            .any(|(s, why)| *s == s_b && why.contains("key c2") && why.contains(&s_a))
    })
    .await;
    assert_eq!(refused_on(&registry, "c1").len(), 1);
    assert!(refused_on(&registry, "c3").is_empty());
    // Unlabelled Secrets are ignored.
    config.apply(&objects::remote_secret(
        DEFAULT_NAMESPACE,
        "s-c",
        ("unrelated", "true"),
        &[("c9", &kc3)],
    ));

    // Removing the key removes c2: endpoints leave, watchers stop.
    let c2_watches = || c2.open_watches();
    // Services, Pods, Nodes, EndpointSlices, and Secrets (credentialName).
    wait_for("c2 watching", 10, || c2_watches() == 5).await;
    config.apply(&objects::remote_secret(
        DEFAULT_NAMESPACE,
        "s-a",
        ("crossmesh.io/multi-cluster", "true"),
        &[("c1", &kc3)],
    ));
    // s-b's claim on c2 is now free and s-b takes it (with c3's kubeconfig).
    wait_for("c2 re-registered from s-b", 20, || {
        endpoints(&registry)
            == [
                pair("c1", "10.1.0.1"),
                pair("c2", "10.3.0.1"),
                pair("c3", "10.3.0.1"),
            ]
    })
    .await;
    wait_for("old c2 watchers stopped", 10, || c2_watches() == 0).await;
    // s-b's key c2 is applied now: no longer listed as refused.
    assert!(refused_on(&registry, "c2").is_empty());
    assert_eq!(refused_on(&registry, "c1").len(), 1);

    // Changing a kubeconfig swaps the client without dropping endpoints.
    c3.set_tokens(&["t3", "t3-new"]);
    let kc3_new = c3.kubeconfig_yaml(Some("t3-new"), None);
    let lists = c3.list_count();
    config.apply(&objects::remote_secret(
        DEFAULT_NAMESPACE,
        "s-b",
        ("istio/multiCluster", "true"),
        &[("c3", &kc3_new), ("c2", &kc3)],
    ));
    wait_for("new client listed", 20, || c3.list_count() >= lists + 4).await;
    assert_eq!(endpoints(&registry).len(), 3);

    // Deleting the Secret removes its clusters.
    config
        .delete("", "secrets", DEFAULT_NAMESPACE, "s-b")
        .unwrap();
    wait_for("s-b clusters removed", 20, || {
        endpoints(&registry) == [pair("c1", "10.1.0.1")]
            && registry
                .clusters()
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                == ["c1"]
    })
    .await;
    wait_for("c3 watchers stopped", 10, || c3.open_watches() == 0).await;
    // Stopping the controller removes what it registered (nothing left) and
    // leaves the mesh-file cluster alone.
    ctl.shutdown();
    // ... and its refused claims leave c1's entry.
    wait_for("refused claims cleared", 10, || {
        refused_on(&registry, "c1").is_empty()
    })
    .await;
    assert_eq!(endpoints(&registry), [pair("c1", "10.1.0.1")]);
}

#[tokio::test]
async fn bad_kubeconfig_in_a_secret_is_reported_on_the_cluster() {
    let config = FakeApiServer::start("config").await;
    let registry = Registry::new(Arc::new(MeshConfig::default()), PushQueue::new());
    let (client, _) = client_from_kubeconfig(&config.kubeconfig_yaml(None, None), None, "config")
        .await
        .unwrap();
    let _ctl = remote_secret::spawn(
        registry.clone(),
        client,
        DEFAULT_NAMESPACE,
        KubeOptions::default(),
        crossmesh::security::authn::KubeClients::new(),
    );
    config.apply(&objects::remote_secret(
        DEFAULT_NAMESPACE,
        "s",
        ("crossmesh.io/multi-cluster", "true"),
        &[("broken", "not: [a kubeconfig")],
    ));
    wait_for("error shown", 20, || {
        registry.cluster_status().iter().any(|c| {
            c.name == "broken"
                && c.last_error.as_deref().is_some_and(|e| {
                    e.contains("s key broken") && e.contains("not a valid kubeconfig")
                })
        })
    })
    .await;
}

#[tokio::test]
async fn created_remote_secret_registers_the_cluster() {
    let target = FakeApiServer::start_with(Options {
        name: "east".into(),
        tls: true,
        token: Some("admin".into()),
        ..Options::default()
    })
    .await;
    target.apply(&objects::service(
        "ns1",
        "web",
        &[("app", "web")],
        &[("http", 80, 8080)],
    ));
    target.apply(&objects::pod(
        "ns1",
        "web-0",
        "10.9.0.1",
        "n1",
        &[("app", "web")],
        true,
    ));
    let dir = tempfile::tempdir().unwrap();
    let admin = dir.path().join("admin.kubeconfig");
    target.write_kubeconfig(&admin, None, None);
    // Without crossmesh's namespace in the member the command says what to do.
    let e = create_remote_secret("east", &admin, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("namespaces \"crossmesh-system\" not found") && e.contains("deploy/rbac.yaml"),
        "{e}"
    );
    // The operator applied crossmesh's namespace in the member (deploy/rbac.yaml).
    target.apply(&objects::namespace(DEFAULT_NAMESPACE));
    let yaml = create_remote_secret("east", &admin, None).await.unwrap();
    assert!(yaml.contains("crossmesh.io/multi-cluster"), "{yaml}");
    let parsed: k8s_openapi::api::core::v1::Secret = serde_saphyr::from_str(&yaml).unwrap();
    let kc = String::from_utf8(parsed.data.unwrap()["east"].0.clone()).unwrap();
    assert!(kc.contains("token: \"sa-token-east-"), "{kc}");
    assert!(kc.contains("certificate-authority-data:"), "{kc}");
    assert!(!kc.contains("admin"), "the admin token must not leak: {kc}");
    // Idempotent: a second run reuses the ServiceAccount and its token.
    let again = create_remote_secret("east", &admin, None).await.unwrap();
    assert_eq!(yaml, again);
    assert!(create_remote_secret("a/b", &admin, None).await.is_err());

    // Apply the printed Secret to a config cluster: "east" joins over TLS with the
    // ServiceAccount token.
    // The admin credentials go away: the secret carries its own token.
    target.revoke_token("admin");
    let config = FakeApiServer::start("config").await;
    let secret: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
    config.apply(&secret);
    let registry = Registry::new(Arc::new(MeshConfig::default()), PushQueue::new());
    let (client, _) = client_from_kubeconfig(&config.kubeconfig_yaml(None, None), None, "config")
        .await
        .unwrap();
    let _ctl = remote_secret::spawn(
        registry.clone(),
        client,
        DEFAULT_NAMESPACE,
        KubeOptions::default(),
        crossmesh::security::authn::KubeClients::new(),
    );
    wait_for("east serving", 20, || {
        endpoints(&registry) == [pair("east", "10.9.0.1")]
    })
    .await;
}

/// A cluster registered by a remote Secret can authenticate its proxies: the
/// controller hands its client to the TokenReview clients, so a token minted in
/// that member is reviewed by that member's API server; once the Secret is gone
/// the cluster is unknown again.
#[tokio::test]
async fn proxies_of_a_remote_secret_cluster_are_authenticated_by_its_api_server() {
    use crossmesh::security::authn::{AuthError, Authenticator, KubeClients};
    crossmesh::tls::install_default_provider();
    let config = FakeApiServer::start("config").await;
    let east = FakeApiServer::start_with(Options {
        name: "east".into(),
        tls: true,
        token: Some("crossmesh-east".into()),
        ..Options::default()
    })
    .await;
    east.apply(&objects::namespace("shop"));
    east.apply(&objects::service_account("shop", "web"));
    let mesh = Arc::new(MeshConfig::parse("clusters: []\n", std::path::Path::new("/")).unwrap());
    let registry = Registry::new(mesh.clone(), PushQueue::new());
    let clients = KubeClients::new();
    let authn = Authenticator::from_mesh(&mesh, clients.clone());
    let token = east.mint_token(&kube_api::SaToken::new("shop", "web"));
    // Before any Secret, "east" is not a cluster crossmesh can ask.
    assert!(matches!(
        authn.authenticate("east", &token).await,
        Err(AuthError::UnknownCluster(_))
    ));

    let (client, _) = client_from_kubeconfig(&config.kubeconfig_yaml(None, None), None, "config")
        .await
        .unwrap();
    let _ctl = remote_secret::spawn(
        registry.clone(),
        client,
        DEFAULT_NAMESPACE,
        KubeOptions::default(),
        clients.clone(),
    );
    let kubeconfig = east.kubeconfig_yaml(Some("crossmesh-east"), None);
    config.apply(&objects::remote_secret(
        DEFAULT_NAMESPACE,
        "east",
        ("crossmesh.io/multi-cluster", "true"),
        &[("east", &kubeconfig)],
    ));
    wait_for("east's client handed to TokenReview", 20, || {
        clients.contains("east")
    })
    .await;
    let caller = authn.authenticate("east", &token).await.unwrap();
    assert_eq!(
        (
            caller.cluster.as_str(),
            caller.namespace.as_str(),
            caller.service_account.as_str()
        ),
        ("east", "shop", "web")
    );
    assert!(
        !east.token_reviews().is_empty(),
        "east's API server reviewed no token"
    );

    config
        .delete("", "secrets", DEFAULT_NAMESPACE, "east")
        .unwrap();
    wait_for("east gone from TokenReview", 20, || {
        !clients.contains("east")
    })
    .await;
}
