//! Proxy token authentication (`security::authn`) against the fake API server's
//! service-account issuer: TokenReview for a cluster reached through a kubeconfig
//! (good, expired, wrong audience, not yet valid, revoked by deleting the bound
//! Pod or the ServiceAccount, legacy token, TokenReview forbidden), and local
//! verification with the cluster's JWKS (`tokenIssuer`), which never calls the API.

#[path = "support/kube_api.rs"]
mod kube_api;

use std::path::Path;

use crossmesh::config::MeshConfig;
use crossmesh::security::authn::{AuthError, Authenticator, Caller, KubeClients};
use kube_api::{objects, FakeApiServer, FaultRule, Options, SaToken, Verb};
use serde_json::json;

/// A TLS fake cluster that wants a bearer token (crossmesh's own credentials),
/// with ServiceAccount `shop/web` and Pod `shop/web-0` running as it.
async fn cluster(name: &str) -> FakeApiServer {
    crossmesh::tls::install_default_provider();
    let s = FakeApiServer::start_with(Options {
        name: name.into(),
        tls: true,
        token: Some(format!("crossmesh-{name}")),
        ..Options::default()
    })
    .await;
    s.apply(&objects::namespace("shop"));
    s.apply(&objects::service_account("shop", "web"));
    let mut pod = objects::pod("shop", "web-0", "10.0.0.5", "n1", &[], true);
    pod["spec"]["serviceAccountName"] = json!("web");
    s.apply(&pod);
    s
}

/// A mesh file with `c1` reached through a kubeconfig for `s`, optionally a
/// `tokenIssuer` for it, and a manifests-only `c2`.
fn mesh(dir: &Path, s: &FakeApiServer, issuer: bool, extra: &str) -> MeshConfig {
    let token = format!("crossmesh-{}", s.name());
    s.write_kubeconfig(&dir.join("c1.kubeconfig"), Some(&token), s.ca_pem());
    std::fs::create_dir_all(dir.join("m")).unwrap();
    std::fs::write(dir.join("c1-jwks.json"), s.jwks_json()).unwrap();
    let issuer = if issuer {
        format!(
            ", tokenIssuer: {{issuer: \"{}\", jwks: c1-jwks.json}}",
            s.issuer()
        )
    } else {
        String::new()
    };
    let text = format!(
        "{extra}clusters:\n- {{name: c1, kubeconfig: c1.kubeconfig{issuer}}}\n- {{name: c2, manifests: m}}\n"
    );
    MeshConfig::parse(&text, dir).unwrap()
}

fn authenticator(mesh: &MeshConfig) -> Authenticator {
    Authenticator::from_mesh(mesh, KubeClients::from_mesh(mesh))
}

fn pod_uid(s: &FakeApiServer) -> String {
    s.get("", "pods", "shop", "web-0").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn token_review_accepts_a_bound_token_and_names_the_pod() {
    let s = cluster("c1").await;
    let dir = tempfile::tempdir().unwrap();
    let a = authenticator(&mesh(dir.path(), &s, false, ""));
    let token = s.mint_token(&SaToken::new("shop", "web").pod("web-0"));
    let caller = a.authenticate("c1", &token).await.unwrap();
    assert_eq!(
        caller,
        Caller {
            cluster: "c1".into(),
            namespace: "shop".into(),
            service_account: "web".into(),
            pod_name: Some("web-0".into()),
            pod_uid: Some(pod_uid(&s)),
        }
    );
    assert_eq!(
        s.token_reviews(),
        vec![("system:serviceaccount:shop:web".to_string(), true)]
    );
    // A token not bound to a pod names none.
    let token = s.mint_token(&SaToken::new("shop", "web"));
    let caller = a.authenticate("c1", &token).await.unwrap();
    assert_eq!((caller.pod_name, caller.pod_uid), (None, None));
    // The same token is not reviewed again while cached.
    let n = s.token_reviews().len();
    a.authenticate("c1", &token).await.unwrap();
    assert_eq!(s.token_reviews().len(), n);
}

#[tokio::test]
async fn token_review_refusals_carry_their_reason() {
    let s = cluster("c1").await;
    let dir = tempfile::tempdir().unwrap();
    let a = authenticator(&mesh(dir.path(), &s, false, ""));
    let expired = s.mint_token(&SaToken::new("shop", "web").pod("web-0").issued(7200, 3600));
    assert_eq!(
        a.authenticate("c1", &expired).await,
        Err(AuthError::Expired)
    );
    let vault = s.mint_token(&SaToken::new("shop", "web").audiences(&["vault"]));
    assert_eq!(
        a.authenticate("c1", &vault).await,
        Err(AuthError::WrongAudience {
            got: vec!["vault".into()],
            want: vec!["istio-ca".into()]
        })
    );
    let later = s.mint_token(&SaToken::new("shop", "web").not_before(600));
    assert_eq!(
        a.authenticate("c1", &later).await,
        Err(AuthError::NotYetValid)
    );
    // An audience-unaware API server authenticates any audience and says
    // nothing about it: refused, since the token is only good for that server.
    s.set_review_ignores_audiences(true);
    let e = a.authenticate("c1", &vault).await.unwrap_err();
    assert_eq!(e.reason_label(), "wrong_audience", "{e}");
    s.set_review_ignores_audiences(false);
    // Another cluster's token: its signature is not this cluster's.
    let other = cluster("other").await;
    let foreign = other.mint_token(&SaToken::new("shop", "web"));
    let e = a.authenticate("c1", &foreign).await.unwrap_err();
    assert!(
        matches!(&e, AuthError::Denied(m) if m.contains("invalid bearer token")),
        "{e}"
    );
    assert_eq!(a.authenticate("c1", "").await, Err(AuthError::NoToken));
    // Each refusal was the API server's answer, and none was cached.
    let reviews = s.token_reviews();
    assert_eq!(reviews.len(), 5, "{reviews:?}");
    let refused: Vec<bool> = reviews.iter().map(|(_, ok)| *ok).collect();
    assert_eq!(refused, [false, false, false, true, false], "{reviews:?}");
    assert_eq!(
        a.authenticate("c1", &expired).await,
        Err(AuthError::Expired)
    );
    assert_eq!(s.token_reviews().len(), 6);
}

#[tokio::test]
async fn deleting_the_bound_pod_or_the_service_account_revokes_the_token() {
    let s = cluster("c1").await;
    let dir = tempfile::tempdir().unwrap();
    let mesh = mesh(
        dir.path(),
        &s,
        false,
        "tokenAudiences: [istio-ca, crossmesh]\n",
    );
    let bound = s.mint_token(
        &SaToken::new("shop", "web")
            .pod("web-0")
            .audiences(&["crossmesh"]),
    );
    let unbound = s.mint_token(&SaToken::new("shop", "web").audiences(&["crossmesh"]));
    let a = authenticator(&mesh);
    a.authenticate("c1", &bound).await.unwrap();
    s.delete("", "pods", "shop", "web-0").unwrap();
    // Cached for at most CACHE_TTL: the authenticator that saw it still accepts
    // it; a fresh one asks the API server, which refuses it.
    a.authenticate("c1", &bound).await.unwrap();
    let fresh = authenticator(&mesh);
    let e = fresh.authenticate("c1", &bound).await.unwrap_err();
    assert!(
        matches!(&e, AuthError::Denied(m) if m.contains("invalidated")),
        "{e}"
    );
    fresh.authenticate("c1", &unbound).await.unwrap();
    s.delete("", "serviceaccounts", "shop", "web").unwrap();
    let e = authenticator(&mesh)
        .authenticate("c1", &unbound)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, AuthError::Denied(m) if m.contains("invalidated")),
        "{e}"
    );
}

#[tokio::test]
async fn legacy_tokens_forbidden_reviews_and_clusters_that_cannot_verify() {
    let s = cluster("c1").await;
    let dir = tempfile::tempdir().unwrap();
    let mesh = mesh(dir.path(), &s, false, "");
    let a = authenticator(&mesh);
    let mut legacy = SaToken::new("shop", "web");
    legacy.expires_in = None;
    let legacy = s.mint_token(&legacy);
    let e = a.authenticate("c1", &legacy).await.unwrap_err();
    assert_eq!(e.reason_label(), "denied", "{e}");
    // No `create` on tokenreviews: the reason says what is missing.
    s.add_fault(
        FaultRule::status(403)
            .on(Verb::Create)
            .of("tokenreviews")
            .times(1),
    );
    let token = s.mint_token(&SaToken::new("shop", "web"));
    let e = a.authenticate("c1", &token).await.unwrap_err();
    assert!(
        matches!(&e, AuthError::Review(m) if m.contains("tokenreviews") && m.contains("403")),
        "{e}"
    );
    assert_eq!(e.reason_label(), "review_failed");
    // The API server unreachable: a review failure too, then recovery.
    s.stop().await;
    let e = a.authenticate("c1", &token).await.unwrap_err();
    assert_eq!(e.reason_label(), "review_failed", "{e}");
    s.restart().await;
    a.authenticate("c1", &token).await.unwrap();
    // A manifests-only cluster without tokenIssuer, a cluster not in the mesh.
    for c in ["c2", "c9"] {
        assert_eq!(
            a.authenticate(c, &token).await,
            Err(AuthError::UnknownCluster(c.into()))
        );
    }
}

#[tokio::test]
async fn token_issuer_verifies_locally_without_the_api_server() {
    let s = cluster("c1").await;
    let dir = tempfile::tempdir().unwrap();
    let mesh = mesh(dir.path(), &s, true, "");
    let a = authenticator(&mesh);
    s.stop().await;
    let token = s.mint_token(&SaToken::new("shop", "web").pod("web-0"));
    let caller = a.authenticate("c1", &token).await.unwrap();
    assert_eq!(
        (caller.namespace.as_str(), caller.service_account.as_str()),
        ("shop", "web")
    );
    assert_eq!(caller.pod_uid, Some(pod_uid(&s)));
    let expired = s.mint_token(&SaToken::new("shop", "web").issued(7200, 3600));
    assert_eq!(
        a.authenticate("c1", &expired).await,
        Err(AuthError::Expired)
    );
    let other = cluster("other").await;
    let foreign = other.mint_token(&SaToken::new("shop", "web"));
    assert!(matches!(
        a.authenticate("c1", &foreign).await,
        Err(AuthError::UnknownKey(_))
    ));
    assert!(s.token_reviews().is_empty(), "no TokenReview was made");
    // The JWKS document is what the API server serves.
    s.restart().await;
    let (client, _) =
        crossmesh::sources::kube::client_from_file(&dir.path().join("c1.kubeconfig"), None)
            .await
            .unwrap();
    let req = axum::http::Request::get("/openid/v1/jwks")
        .body(Vec::new())
        .unwrap();
    let served: serde_json::Value =
        serde_json::from_str(&client.request_text(req).await.unwrap()).unwrap();
    assert_eq!(served.to_string(), s.jwks_json());
}

#[tokio::test]
async fn crossmesh_credentials_rotated_in_the_kubeconfig_are_picked_up() {
    let s = cluster("c1").await;
    let dir = tempfile::tempdir().unwrap();
    let a = authenticator(&mesh(dir.path(), &s, false, ""));
    a.authenticate("c1", &s.mint_token(&SaToken::new("shop", "web")))
        .await
        .unwrap();
    // The old credentials stop working; the kubeconfig file has the new ones.
    s.set_tokens(&["rotated"]);
    s.write_kubeconfig(
        &dir.path().join("c1.kubeconfig"),
        Some("rotated"),
        s.ca_pem(),
    );
    let caller = a
        .authenticate(
            "c1",
            &s.mint_token(&SaToken::new("shop", "web").pod("web-0")),
        )
        .await
        .unwrap();
    assert_eq!(caller.pod_name.as_deref(), Some("web-0"));
    assert_eq!(s.auth_failures(), vec!["invalid bearer token".to_string()]);
}
