//! kube-rs, unmodified, against the fake API server in `tests/support/kube_api.rs`:
//! list with pagination, watch with bookmarks, 410 recovery, restart after stop, and
//! TLS with a bearer token through a real kubeconfig file.

#[path = "support/kube_api.rs"]
mod kube_api;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::Client;
use kube_api::{objects, FakeApiServer, Fault, Options};

async fn client_for(path: &std::path::Path) -> Result<Client, String> {
    let kc = Kubeconfig::read_from(path).map_err(|e| e.to_string())?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    Client::try_from(cfg).map_err(|e| e.to_string())
}

async fn plain_client(s: &FakeApiServer, dir: &tempfile::TempDir) -> Client {
    let path = dir.path().join(format!("{}.kubeconfig", s.name()));
    s.write_kubeconfig(&path, None, None);
    client_for(&path).await.expect("client")
}

/// Poll `f` until it returns true, or panic after `secs`.
async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A store maintained from watcher events exactly as an informer would, counting
/// how often each object was seen so a duplicate or a loss shows.
#[derive(Default)]
struct Mirror {
    pods: BTreeMap<String, String>,
    buffer: Option<BTreeMap<String, String>>,
    inits: usize,
    errors: Vec<String>,
}

impl Mirror {
    fn apply(&mut self, ev: Result<watcher::Event<Pod>, watcher::Error>) {
        let key = |p: &Pod| {
            format!(
                "{}/{}",
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default()
            )
        };
        let ip = |p: &Pod| {
            p.status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_default()
        };
        match ev {
            Ok(watcher::Event::Init) => {
                self.inits += 1;
                self.buffer = Some(BTreeMap::new());
            }
            Ok(watcher::Event::InitApply(p)) => {
                let b = self.buffer.get_or_insert_with(BTreeMap::new);
                assert!(b.insert(key(&p), ip(&p)).is_none(), "duplicate in one list");
            }
            Ok(watcher::Event::InitDone) => self.pods = self.buffer.take().unwrap_or_default(),
            Ok(watcher::Event::Apply(p)) => {
                self.pods.insert(key(&p), ip(&p));
            }
            Ok(watcher::Event::Delete(p)) => {
                assert!(
                    self.pods.remove(&key(&p)).is_some(),
                    "delete of unknown pod"
                );
            }
            Err(e) => self.errors.push(e.to_string()),
        }
    }
}

fn spawn_mirror(client: Client, cfg: watcher::Config) -> std::sync::Arc<std::sync::Mutex<Mirror>> {
    let mirror = std::sync::Arc::new(std::sync::Mutex::new(Mirror::default()));
    let m = mirror.clone();
    tokio::spawn(async move {
        let api: Api<Pod> = Api::all(client);
        let mut s = watcher(api, cfg).boxed();
        while let Some(ev) = s.next().await {
            m.lock().unwrap().apply(ev);
        }
    });
    mirror
}

fn pods(n: usize, prefix: &str) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            objects::pod(
                "ns1",
                &format!("{prefix}-{i}"),
                &format!("10.0.0.{}", i + 1),
                "n1",
                &[("app", "a")],
                true,
            )
        })
        .collect()
}

#[tokio::test]
async fn list_paginates_from_one_snapshot() {
    let s = FakeApiServer::start("c1").await;
    for p in pods(5, "p") {
        s.apply(&p);
    }
    let dir = tempfile::tempdir().unwrap();
    let client = plain_client(&s, &dir).await;
    let api: Api<Pod> = Api::namespaced(client, "ns1");
    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let token = first.metadata.continue_.clone().expect("continue token");
    let rv = first.metadata.resource_version.clone().unwrap();
    // A write between pages must not show up in the rest of this list.
    s.apply(&objects::pod("ns1", "p-00", "10.0.9.9", "n1", &[], true));
    s.delete("", "pods", "ns1", "p-4").unwrap();
    let second = api
        .list(&ListParams::default().limit(10).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(
        second.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    let names: Vec<_> = second
        .items
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["p-2", "p-3", "p-4"]);
    assert!(second.metadata.continue_.is_none());
    // After compaction the old continue token is expired: 410.
    s.compact();
    let err = api
        .list(&ListParams::default().continue_token(&token))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref st) if st.code == 410),
        "{err}"
    );
}

#[tokio::test]
async fn watcher_sees_adds_updates_deletes_and_bookmarks() {
    let s = FakeApiServer::start_with(Options {
        name: "c1".into(),
        bookmark_interval: Duration::from_millis(100),
        ..Options::default()
    })
    .await;
    for p in pods(3, "a") {
        s.apply(&p);
    }
    let dir = tempfile::tempdir().unwrap();
    let client = plain_client(&s, &dir).await;
    let m = spawn_mirror(client.clone(), watcher::Config::default().page_size(2));
    wait_for("initial list", 10, || m.lock().unwrap().pods.len() == 3).await;
    wait_for("watch open", 10, || s.open_watches() == 1).await;
    s.apply(&objects::pod("ns1", "a-0", "10.0.1.1", "n1", &[], true));
    s.apply(&objects::pod("ns1", "b", "10.0.1.2", "n1", &[], true));
    s.delete("", "pods", "ns1", "a-1").unwrap();
    wait_for("events", 10, || {
        let m = m.lock().unwrap();
        m.pods.get("ns1/a-0").map(String::as_str) == Some("10.0.1.1")
            && m.pods.contains_key("ns1/b")
            && !m.pods.contains_key("ns1/a-1")
    })
    .await;

    // Bookmarks arrive and carry the latest resourceVersion: raw watch request.
    let rv = s.resource_version();
    let url = format!(
        "{}/api/v1/pods?watch=true&allowWatchBookmarks=true&resourceVersion={rv}&timeoutSeconds=1",
        s.url()
    );
    s.apply(&objects::node("n1", "r", "z"));
    let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
    let lines: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        !lines.is_empty(),
        "a 1 s watch with 100 ms bookmarks got nothing"
    );
    assert!(lines.iter().all(|l| l["type"] == "BOOKMARK"), "{body}");
    let last = lines.last().unwrap()["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        last,
        s.resource_version().to_string(),
        "bookmark covers the node write"
    );
    assert_eq!(m.lock().unwrap().inits, 1);
}

#[tokio::test]
async fn expired_watch_relists_without_losing_or_duplicating() {
    let s = FakeApiServer::start("c1").await;
    for p in pods(4, "a") {
        s.apply(&p);
    }
    let dir = tempfile::tempdir().unwrap();
    let client = plain_client(&s, &dir).await;
    let m = spawn_mirror(client, watcher::Config::default());
    wait_for("initial list", 10, || m.lock().unwrap().pods.len() == 4).await;
    wait_for("watch open", 10, || s.open_watches() == 1).await;
    s.compact();
    s.delete("", "pods", "ns1", "a-0").unwrap();
    s.apply(&objects::pod("ns1", "z", "10.0.3.1", "n1", &[], true));
    wait_for("relist after 410", 10, || {
        let m = m.lock().unwrap();
        m.inits >= 2
            && m.pods.len() == 4
            && m.pods.contains_key("ns1/z")
            && !m.pods.contains_key("ns1/a-0")
    })
    .await;
    let m = m.lock().unwrap();
    assert!(
        m.errors
            .iter()
            .any(|e| e.contains("410") || e.contains("too old")),
        "{:?}",
        m.errors
    );

    // A raw watch from a compacted resourceVersion gets one 410 ERROR event.
    let body = reqwest::get(format!("{}/api/v1/pods?watch=1&resourceVersion=2", s.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ev: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["code"], 410);
    // And an exact list at it gets HTTP 410.
    let r = reqwest::get(format!(
        "{}/api/v1/pods?resourceVersion=2&resourceVersionMatch=Exact",
        s.url()
    ))
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 410);
}

#[tokio::test]
async fn watcher_recovers_after_server_restart() {
    let s = FakeApiServer::start("c1").await;
    for p in pods(2, "a") {
        s.apply(&p);
    }
    let dir = tempfile::tempdir().unwrap();
    let client = plain_client(&s, &dir).await;
    let m = spawn_mirror(client, watcher::Config::default());
    wait_for("initial list", 10, || m.lock().unwrap().pods.len() == 2).await;
    s.stop().await;
    wait_for("watch cut", 10, || s.open_watches() == 0).await;
    wait_for("error seen", 10, || !m.lock().unwrap().errors.is_empty()).await;
    // Changes while "unreachable" (made directly in the store).
    s.delete("", "pods", "ns1", "a-1").unwrap();
    s.apply(&objects::pod("ns1", "c", "10.0.4.1", "n1", &[], true));
    s.restart().await;
    wait_for("resync after restart", 30, || {
        let m = m.lock().unwrap();
        m.pods.len() == 2 && m.pods.contains_key("ns1/c") && !m.pods.contains_key("ns1/a-1")
    })
    .await;
}

#[tokio::test]
async fn tls_and_token_through_a_kubeconfig() {
    let s = FakeApiServer::start_with(Options {
        name: "secure".into(),
        tls: true,
        token: Some("s3cret".into()),
        ..Options::default()
    })
    .await;
    s.apply(&objects::pod("ns1", "p", "10.1.0.1", "n1", &[], true));
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    s.write_kubeconfig(&good, None, None);
    let api: Api<Pod> = Api::all(client_for(&good).await.unwrap());
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );

    let bad_token = dir.path().join("bad-token");
    s.write_kubeconfig(&bad_token, Some("expired"), None);
    let api: Api<Pod> = Api::all(client_for(&bad_token).await.unwrap());
    let err = api.list(&ListParams::default()).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref st) if st.code == 401),
        "{err}"
    );

    let bad_ca = dir.path().join("bad-ca");
    s.write_kubeconfig(&bad_ca, None, Some(&kube_api::unrelated_ca_pem()));
    let api: Api<Pod> = Api::all(client_for(&bad_ca).await.unwrap());
    let err = api.list(&ListParams::default()).await.unwrap_err();
    let text = format!("{err:?}");
    assert!(
        text.contains("UnknownIssuer") || text.contains("certificate"),
        "{text}"
    );
}

#[tokio::test]
async fn faults_garbage_and_closing_watches() {
    let s = FakeApiServer::start("c1").await;
    let dir = tempfile::tempdir().unwrap();
    let client = plain_client(&s, &dir).await;
    let api: Api<Pod> = Api::all(client);
    s.set_fault(Fault::Garbage);
    let err = api.list(&ListParams::default()).await.unwrap_err();
    assert!(matches!(err, kube::Error::SerdeError(_)), "{err:?}");
    s.set_fault(Fault::CloseWatches);
    let before = s.watch_count();
    let r = reqwest::get(format!(
        "{}/api/v1/pods?watch=true&resourceVersion=1",
        s.url()
    ))
    .await
    .unwrap();
    assert_eq!(r.text().await.unwrap(), "");
    assert_eq!(s.watch_count(), before + 1);
    s.set_fault(Fault::None);
    // timeoutSeconds closes the stream on the server side.
    let t0 = std::time::Instant::now();
    let r = reqwest::get(format!(
        "{}/api/v1/pods?watch=true&timeoutSeconds=1",
        s.url()
    ))
    .await
    .unwrap();
    let _ = r.text().await.unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(900) && t0.elapsed() < Duration::from_secs(5));
}
