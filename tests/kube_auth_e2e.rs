//! Member clusters behind HTTPS API servers, read with every kind of credential a
//! kubeconfig carries, end to end through a real Envoy gateway (issue 10, item 2).
//!
//! CI runs these (like every end-to-end test) against the binary users run:
//! `scripts/test` builds it with `cargo build --release` and sets `CROSSMESH_BIN`.
//! A release build once had no TLS crypto provider and panicked at the first
//! HTTPS *or* HTTP kube client, while every test passed on the test build.
//!
//! - the seed scenario with cluster1 over HTTPS (its own CA in the kubeconfig, a
//!   bearer token) holding the Istio config, cluster2 over HTTPS with a client
//!   certificate, cluster3 registered at run time by a remote Secret in cluster1
//!   whose kubeconfig is HTTPS with a token;
//! - an API server answering 503 or 429 is reported at once (not after
//!   kube-client's minutes of retries) and the cluster recovers;
//! - bad credentials each show their reason on `/debug/clusterz` and never crash
//!   the process or harm the other clusters: a wrong CA, no CA for a self-signed
//!   server ("certificate verify failed"), an expired token, a client certificate
//!   from another CA, an exec credential plugin that is not installed.

mod support;

#[path = "support/kube_api.rs"]
mod kube_api;
#[path = "support/kube_seed.rs"]
mod kube_seed;

use kube_api::{client_cert_from_other_ca, objects, unrelated_ca_pem, Credentials};
use kube_seed::{name, token_of, Auth, IstioFrom, KubeSeed, Layout};
use support::{wait_for, CONVERGE};

/// Wait until cluster `n`'s `last_error` on `/debug/clusterz` contains every one
/// of `parts`; returns the error.
async fn wait_reason(s: &KubeSeed, n: u8, parts: &[&str]) -> String {
    wait_for(
        &format!("{} last_error containing {parts:?}", name(n)),
        CONVERGE,
        || async {
            let c = s.clusterz(n).await?;
            let err = c["last_error"].as_str().unwrap_or_default().to_string();
            if parts.iter().all(|p| err.contains(p)) {
                Ok(err)
            } else {
                Err(c.to_string())
            }
        },
    )
    .await
}

/// The control plane still answers, and clusters `others` still route to their
/// first pod.
async fn still_serving(s: &KubeSeed, others: &[u8]) {
    let (code, _) = s.cp.get("/ready").await.expect("crossmesh is alive");
    assert_eq!(code, 200, "crossmesh /ready");
    for n in others {
        s.wait_answer(*n, &format!("{}-pod-a", name(*n))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_token_client_cert_and_remote_secret_clusters_serve_the_seed() {
    let ns = "mesh-secrets";
    let s = KubeSeed::start(Layout {
        members: vec![1, 2],
        istio: IstioFrom::Cluster1,
        extra_mesh: format!("remoteSecretNamespace: {ns}\n"),
        auth: vec![Auth::HttpsToken, Auth::HttpsClientCert, Auth::HttpsToken],
        ..Layout::default()
    })
    .await;
    // Istio config came from cluster1 over HTTPS with its token; both clusters'
    // endpoints are served.
    s.wait_answer(1, "cluster1-pod-a").await;
    s.wait_answer(2, "cluster2-pod-a").await;
    for n in [1, 2] {
        s.wait_clusterz(n, "synced without error", |c| {
            c["synced"] == true && c["last_error"].is_null()
        })
        .await;
    }
    // The servers authenticated crossmesh as configured: cluster2 by its client
    // certificate (the subject the test issued), cluster1 by the token alone.
    assert!(
        s.server(2)
            .cert_logins()
            .iter()
            .any(|u| u == "crossmesh-reader"),
        "cluster2 saw no client-certificate login: {:?}",
        s.server(2).cert_logins()
    );
    assert!(
        s.server(1).auth_failures().is_empty(),
        "cluster1 refused requests: {:?}",
        s.server(1).auth_failures()
    );

    // cluster3 joins through a remote Secret in cluster1: an HTTPS kubeconfig
    // with cluster3's CA and token.
    s.wait_not_served(3, kube_seed::Unserved::NoCluster).await;
    let kubeconfig = s.server(3).kubeconfig_yaml_with(&Credentials {
        token: Some(token_of(3)),
        ..Credentials::default()
    });
    assert!(kubeconfig.contains("https://"), "{kubeconfig}");
    s.server(1).apply(&objects::remote_secret(
        ns,
        "istio-remote-secret-cluster3",
        ("istio/multiCluster", "true"),
        &[("cluster3", &kubeconfig)],
    ));
    s.wait_answer(3, "cluster3-pod-a").await;
    s.wait_clusterz(3, "cluster3 registered and synced", |c| {
        c["synced"] == true && c["last_error"].is_null()
    })
    .await;
    assert!(
        s.server(3).auth_failures().is_empty(),
        "cluster3 refused requests: {:?}",
        s.server(3).auth_failures()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_explained_and_never_crash() {
    let s = KubeSeed::start(Layout {
        auth: vec![Auth::Plain, Auth::HttpsToken, Auth::HttpsClientCert],
        ..Layout::default()
    })
    .await;
    for n in [1, 2, 3] {
        s.wait_answer(n, &format!("{}-pod-a", name(n))).await;
    }
    let kc = |n: u8| s.dir.path().join(format!("{}.kubeconfig", name(n)));

    // A kubeconfig whose CA did not sign the server's certificate. The running
    // client keeps serving until a new one has synced, so traffic goes on.
    s.server(2).write_kubeconfig_with(
        &kc(2),
        &Credentials {
            token: Some(token_of(2)),
            ca_pem: Some(unrelated_ca_pem()),
            ..Credentials::default()
        },
    );
    let e = wait_reason(
        &s,
        2,
        &["certificate verify failed", "certificate-authority"],
    )
    .await;
    assert!(e.contains("TLS"), "{e}");
    still_serving(&s, &[1, 2, 3]).await;

    // No CA at all for a server with a self-signed CA: the system roots do not
    // know it.
    let no_ca: String = s
        .server(2)
        .kubeconfig_yaml_with(&Credentials {
            token: Some(token_of(2)),
            ..Credentials::default()
        })
        .lines()
        .filter(|l| !l.contains("certificate-authority-data"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&kc(2), no_ca).expect("write kubeconfig");
    let e = wait_reason(
        &s,
        2,
        &["certificate verify failed", "no certificate-authority"],
    )
    .await;
    assert!(e.contains("TLS"), "{e}");
    still_serving(&s, &[1, 2, 3]).await;

    // An exec credential plugin that is not installed.
    let exec: String = s
        .server(2)
        .kubeconfig_yaml_with(&Credentials {
            no_token: true,
            ..Credentials::default()
        })
        .replace(
            "  user:\n    {}\n",
            "  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: crossmesh-test-no-such-credential-plugin\n      interactiveMode: Never\n",
        );
    assert!(
        exec.contains("crossmesh-test-no-such-credential-plugin"),
        "{exec}"
    );
    std::fs::write(&kc(2), exec).expect("write kubeconfig");
    let e = wait_reason(&s, 2, &["crossmesh-test-no-such-credential-plugin"]).await;
    assert!(e.contains("credential plugin"), "{e}");
    still_serving(&s, &[1, 2, 3]).await;

    // A client certificate from another CA: the server refuses the handshake.
    s.server(3).write_kubeconfig_with(
        &kc(3),
        &Credentials {
            no_token: true,
            client_cert: Some(client_cert_from_other_ca("crossmesh-reader")),
            ..Credentials::default()
        },
    );
    let e = wait_reason(&s, 3, &["client certificate"]).await;
    assert!(e.contains("refused"), "{e}");
    still_serving(&s, &[1, 2, 3]).await;

    // Good credentials again: a new client syncs and replaces every earlier one.
    s.server(2).write_kubeconfig_with(
        &kc(2),
        &Credentials {
            token: Some(token_of(2)),
            ..Credentials::default()
        },
    );
    s.wait_clusterz(2, "cluster2 healthy again", |c| {
        c["last_error"].is_null() && c["stale"] == false
    })
    .await;

    // The token expires while the API server restarts (established watches are
    // not re-authenticated; new requests are): the cluster goes stale
    // (last-known endpoints keep serving) and says why.
    s.server(2).expire_token(&token_of(2));
    s.server(2).restart().await;
    let e = wait_reason(&s, 2, &["401", "expired"]).await;
    assert!(e.contains("unauthorized"), "{e}");
    s.wait_clusterz(2, "cluster2 stale", |c| c["stale"] == true)
        .await;
    still_serving(&s, &[1, 2, 3]).await;
    assert!(
        s.server(2)
            .auth_failures()
            .iter()
            .any(|f| f.contains("expired")),
        "{:?}",
        s.server(2).auth_failures()
    );
}

/// An API server that answers 503 (overloaded, or its etcd is down) or 429
/// (throttling) is reported within one watch backoff, not after the minutes a
/// client's own retry ladder would take, while the last-known endpoints keep
/// serving; once it answers again the cluster is fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_api_server_is_reported_promptly_and_recovers() {
    let mut s = KubeSeed::start(Layout::default()).await;
    s.wait_answer(2, "cluster2-pod-a").await;
    for (code, words) in [(503, "HTTP 503"), (429, "HTTP 429")] {
        // Every request fails from now on; a restart makes the watches re-open.
        s.server(2)
            .add_fault(kube_api::FaultRule::status(code).retry_after(1));
        s.server(2).restart().await;
        // Within the usual deadline: kube-client's own retries would hide the
        // failure for minutes.
        wait_reason(&s, 2, &[words, "retrying with backoff"]).await;
        s.wait_clusterz(2, "cluster2 stale", |c| c["stale"] == true)
            .await;
        still_serving(&s, &[1, 2, 3]).await;
        s.server(2).clear_faults();
        s.wait_clusterz(2, "cluster2 fresh again", |c| {
            c["stale"] == false && c["last_error"].is_null()
        })
        .await;
    }
    // It is live: a new pod is served.
    s.put_pod(2, 2, "b", true).await;
    s.wait_hosts(2, &[1, 2]).await;
}
