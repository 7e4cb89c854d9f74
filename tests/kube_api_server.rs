//! kube-rs, unmodified, against the fake API server in `tests/support/kube_api.rs`:
//! list with pagination, watch with bookmarks, 410 recovery, restart after stop,
//! restart with the watch history lost (both 410 forms), status faults (403, 429,
//! 500, 503), watches closed cleanly after events, optional Istio CRDs, namespaces
//! that must exist, and TLS with a bearer token, an expired token or a client
//! certificate through a real kubeconfig file.

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
use kube_api::{
    objects, Credentials, ExpiredWatch, FakeApiServer, Fault, FaultRule, Options, Verb, WatchClose,
};

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
            Err(e) => self.errors.push(describe(&e)),
        }
    }
}

/// A watcher error as `Variant code` (for example `WatchStartFailed 410`), or the
/// variant and the client error's text when there is no HTTP status.
fn describe(e: &watcher::Error) -> String {
    let code = |e: &kube::Error| match e {
        kube::Error::Api(st) => st.code.to_string(),
        other => other.to_string(),
    };
    match e {
        watcher::Error::InitialListFailed(e) => format!("InitialListFailed {}", code(e)),
        watcher::Error::WatchStartFailed(e) => format!("WatchStartFailed {}", code(e)),
        watcher::Error::WatchError(st) => format!("WatchError {}", st.code),
        watcher::Error::WatchFailed(e) => format!("WatchFailed {}", code(e)),
        other => other.to_string(),
    }
}

fn spawn_mirror(client: Client, cfg: watcher::Config) -> std::sync::Arc<std::sync::Mutex<Mirror>> {
    let mirror = std::sync::Arc::new(std::sync::Mutex::new(Mirror::default()));
    let m = mirror.clone();
    tokio::spawn(async move {
        let api: Api<Pod> = Api::all(client);
        let mut s = watcher(api, cfg).boxed();
        while let Some(ev) = s.next().await {
            let failed = ev.is_err();
            m.lock().unwrap().apply(ev);
            if failed {
                // A short pause, as a backoff would, so a retry loop does not spin.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
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
    let errs = errors(&m);
    assert!(
        errs.iter()
            .any(|e| e.contains("410") || e.contains("too old")),
        "{errs:?}"
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

/// The error and its sources, joined by `: `.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// The `Status` of an API error, or a panic naming what came back instead.
fn api_status(err: kube::Error) -> kube::core::Status {
    match err {
        kube::Error::Api(st) => *st,
        other => panic!("expected an API status, got {other:?}"),
    }
}

fn errors(m: &std::sync::Arc<std::sync::Mutex<Mirror>>) -> Vec<String> {
    m.lock().unwrap().errors.clone()
}

#[tokio::test]
async fn next_two_pod_watches_get_503_then_the_watch_recovers() {
    let s = FakeApiServer::start("c1").await;
    for p in pods(2, "a") {
        s.apply(&p);
    }
    s.add_fault(FaultRule::status(503).on(Verb::Watch).of("pods").times(2));
    let dir = tempfile::tempdir().unwrap();
    let client = plain_client(&s, &dir).await;
    // Another resource is not affected: its watch opens at once.
    let svc: Api<k8s_openapi::api::core::v1::Service> = Api::all(client.clone());
    let before = s.watch_count();
    let mut w = svc
        .watch(&kube::api::WatchParams::default().timeout(1), "0")
        .await
        .expect("service watch is not faulted")
        .boxed();
    while w.next().await.is_some() {}
    assert_eq!(s.faults_served(), 0, "a services watch used a pods rule");
    assert_eq!(s.watch_count(), before + 1);

    let m = spawn_mirror(client, watcher::Config::default());
    wait_for("initial list", 10, || m.lock().unwrap().pods.len() == 2).await;
    wait_for("watch open after two 503s", 20, || s.open_watches() == 1).await;
    assert_eq!(s.faults_served(), 2, "exactly the next two watches failed");
    // kube-rs' client retries 503 itself (RetryPolicy: 429, 503, 504), so the
    // watcher sees no error and does not re-list.
    assert!(errors(&m).is_empty(), "{:?}", errors(&m));
    s.apply(&objects::pod("ns1", "b", "10.0.1.9", "n1", &[], true));
    wait_for("event through the recovered watch", 10, || {
        m.lock().unwrap().pods.contains_key("ns1/b")
    })
    .await;
    assert_eq!(m.lock().unwrap().inits, 1);
}

#[tokio::test]
async fn pod_watch_500_reaches_the_watcher_and_it_resumes() {
    let s = FakeApiServer::start("c1").await;
    for p in pods(2, "a") {
        s.apply(&p);
    }
    s.add_fault(FaultRule::status(500).on(Verb::Watch).of("pods").times(1));
    let dir = tempfile::tempdir().unwrap();
    let m = spawn_mirror(plain_client(&s, &dir).await, watcher::Config::default());
    wait_for("watch open after a 500", 20, || s.open_watches() == 1).await;
    assert_eq!(errors(&m), ["WatchStartFailed 500"]);
    s.apply(&objects::pod("ns1", "b", "10.0.1.9", "n1", &[], true));
    wait_for("event through the resumed watch", 10, || {
        m.lock().unwrap().pods.contains_key("ns1/b")
    })
    .await;
    assert_eq!(
        m.lock().unwrap().inits,
        1,
        "a 500 at watch start is no re-list"
    );
}

#[tokio::test]
async fn pods_list_forbidden_until_the_fault_is_cleared() {
    let s = FakeApiServer::start("c1").await;
    for p in pods(2, "a") {
        s.apply(&p);
    }
    s.add_fault(FaultRule::status(403).on(Verb::List).of("pods"));
    let dir = tempfile::tempdir().unwrap();
    let client = plain_client(&s, &dir).await;
    let st = api_status(
        Api::<Pod>::all(client.clone())
            .list(&ListParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!((st.code, st.reason.as_str()), (403, "Forbidden"));
    assert!(
        st.message.starts_with("pods is forbidden: User ")
            && st
                .message
                .ends_with("cannot list resource \"pods\" in API group \"\" at the cluster scope"),
        "{}",
        st.message
    );
    let st = api_status(
        Api::<Pod>::namespaced(client.clone(), "ns1")
            .list(&ListParams::default())
            .await
            .unwrap_err(),
    );
    assert!(
        st.message.ends_with("in the namespace \"ns1\""),
        "{}",
        st.message
    );
    // Other resources and other verbs on pods still work.
    Api::<k8s_openapi::api::core::v1::Service>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("services are not forbidden");
    Api::<Pod>::namespaced(client.clone(), "ns1")
        .get("a-0")
        .await
        .expect("get is not forbidden");

    let m = spawn_mirror(client, watcher::Config::default());
    wait_for("forbidden lists retried", 10, || errors(&m).len() >= 2).await;
    assert!(
        errors(&m).iter().all(|e| e == "InitialListFailed 403"),
        "{:?}",
        errors(&m)
    );
    assert!(m.lock().unwrap().pods.is_empty());
    s.clear_faults();
    wait_for("listed once allowed", 10, || {
        m.lock().unwrap().pods.len() == 2
    })
    .await;
}

#[tokio::test]
async fn too_many_requests_carries_retry_after_and_kube_waits_for_it() {
    let s = FakeApiServer::start("c1").await;
    s.apply(&objects::pod("ns1", "p", "10.1.0.1", "n1", &[], true));
    // The raw answer: status, header and body as kube-apiserver's priority and
    // fairness sends them.
    s.add_fault(
        FaultRule::status(429)
            .on(Verb::List)
            .of("pods")
            .times(1)
            .retry_after(2),
    );
    let r = reqwest::get(format!("{}/api/v1/pods", s.url()))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["retry-after"], "2");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "TooManyRequests");
    assert_eq!(body["details"]["retryAfterSeconds"], 2);
    assert_eq!(s.faults_served(), 1);
    // Used up: the next list works.
    assert_eq!(
        reqwest::get(format!("{}/api/v1/pods", s.url()))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );

    // kube-rs' client honours Retry-After before retrying.
    s.add_fault(
        FaultRule::status(429)
            .on(Verb::List)
            .of("pods")
            .times(1)
            .retry_after(2),
    );
    let dir = tempfile::tempdir().unwrap();
    let api: Api<Pod> = Api::all(plain_client(&s, &dir).await);
    let t0 = std::time::Instant::now();
    let list = api
        .list(&ListParams::default())
        .await
        .expect("retried list");
    assert_eq!(list.items.len(), 1);
    assert_eq!(s.faults_served(), 2);
    assert!(
        t0.elapsed() >= Duration::from_millis(1900),
        "retried after {:?}, not the 2 s Retry-After",
        t0.elapsed()
    );
}

#[tokio::test]
async fn watch_closed_cleanly_after_events_resumes_without_relisting() {
    let s = FakeApiServer::start_with(Options {
        name: "c1".into(),
        watch_close: WatchClose::AfterEvents(2),
        ..Options::default()
    })
    .await;
    for p in pods(2, "a") {
        s.apply(&p);
    }
    let dir = tempfile::tempdir().unwrap();
    let m = spawn_mirror(plain_client(&s, &dir).await, watcher::Config::default());
    wait_for("initial list", 10, || m.lock().unwrap().pods.len() == 2).await;
    wait_for("watch open", 10, || s.open_watches() == 1).await;
    let watches = s.watch_count();
    for p in pods(5, "b") {
        s.apply(&p);
    }
    wait_for("every event, across closed watches", 10, || {
        m.lock().unwrap().pods.len() == 7
    })
    .await;
    // Five events at two per watch: three watches, each resumed from the last
    // resourceVersion seen, no error and no re-list.
    assert!(
        s.watch_count() >= watches + 2,
        "{} watches",
        s.watch_count()
    );
    assert_eq!(m.lock().unwrap().inits, 1);
    assert!(errors(&m).is_empty(), "{:?}", errors(&m));

    // The raw stream: exactly two events, then a clean end (no ERROR).
    let body = reqwest::get(format!(
        "{}/api/v1/pods?watch=true&resourceVersion=0",
        s.url()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let types: Vec<String> = body
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["type"].to_string())
        .collect();
    assert_eq!(types, ["\"ADDED\"", "\"ADDED\""], "{body}");

    // After a duration.
    s.set_watch_close(WatchClose::After(Duration::from_millis(300)));
    let t0 = std::time::Instant::now();
    let body = reqwest::get(format!(
        "{}/api/v1/pods?watch=true&resourceVersion={}",
        s.url(),
        s.resource_version()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert_eq!(body, "");
    assert!(t0.elapsed() >= Duration::from_millis(250) && t0.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn bookmarks_come_about_every_minute_unless_set() {
    assert_eq!(
        Options::default().bookmark_interval,
        Duration::from_secs(60)
    );
    let s = FakeApiServer::start("c1").await;
    let watch2s = |s: &FakeApiServer| {
        format!(
            "{}/api/v1/pods?watch=true&allowWatchBookmarks=true&resourceVersion={}&timeoutSeconds=2",
            s.url(),
            s.resource_version()
        )
    };
    let body = reqwest::get(watch2s(&s))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        body, "",
        "a 2 s watch got a bookmark with the default interval"
    );
    s.set_bookmark_interval(Duration::from_millis(200));
    let body = reqwest::get(watch2s(&s))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let n = body.lines().filter(|l| l.contains("\"BOOKMARK\"")).count();
    assert!(
        (5..=11).contains(&n),
        "{n} bookmarks in 2 s at 200 ms: {body}"
    );
}

#[tokio::test]
async fn without_istio_crds_discovery_omits_them_and_their_paths_are_404() {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let s = FakeApiServer::start_with(Options {
        name: "c1".into(),
        istio_crds: false,
        ..Options::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = plain_client(&s, &dir).await;
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    assert!(discovery.has_group("discovery.k8s.io"));
    assert!(!discovery.has_group("networking.istio.io"));
    assert!(!discovery.has_group("security.istio.io"));
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService"),
        "virtualservices",
    );
    let vs: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let st = api_status(vs.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((st.code, st.reason.as_str()), (404, "NotFound"));
    assert_eq!(
        st.message,
        "the server could not find the requested resource"
    );
    let r = reqwest::get(format!(
        "{}/apis/security.istio.io/v1/authorizationpolicies?watch=true",
        s.url()
    ))
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // Installed: listed by discovery, and a watch of VirtualServices sees one.
    s.set_istio_crds(true);
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    assert!(discovery.has_group("networking.istio.io"));
    s.apply(&serde_json::json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "v", "namespace": "ns1"}, "spec": {"hosts": ["web"]}
    }));
    assert_eq!(
        vs.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    let mut w = vs
        .watch(&kube::api::WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    assert!(matches!(
        w.next().await,
        Some(Ok(kube::api::WatchEvent::Added(_)))
    ));
    // Uninstalled again: the object goes (DELETED), the watch ends, paths are 404.
    s.set_istio_crds(false);
    assert!(matches!(
        w.next().await,
        Some(Ok(kube::api::WatchEvent::Deleted(_)))
    ));
    assert!(w.next().await.is_none(), "the watch of a deleted CRD ends");
    let st = api_status(vs.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(st.code, 404);
}

#[tokio::test]
async fn creating_in_a_missing_namespace_is_404_until_the_namespace_exists() {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{DeleteParams, PostParams};
    let s = FakeApiServer::start("c1").await;
    let dir = tempfile::tempdir().unwrap();
    let client = plain_client(&s, &dir).await;
    let pod: Pod =
        serde_json::from_value(objects::pod("apps", "p", "10.2.0.1", "n1", &[], true)).unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "apps");
    let st = api_status(pods.create(&PostParams::default(), &pod).await.unwrap_err());
    assert_eq!((st.code, st.reason.as_str()), (404, "NotFound"));
    assert_eq!(st.message, "namespaces \"apps\" not found");
    assert_eq!(st.details.map(|d| d.kind), Some("namespaces".to_string()));
    // The helper `create` is as strict; `apply` creates the namespace.
    let err = s
        .create(&objects::pod("other", "p", "10.2.0.2", "n1", &[], true))
        .unwrap_err();
    assert_eq!(err, "namespaces \"other\" not found");
    assert!(s.get("", "namespaces", "", "other").is_none());
    s.apply(&objects::pod("other", "p", "10.2.0.2", "n1", &[], true));
    assert!(s.get("", "namespaces", "", "other").is_some());
    // The default namespaces exist from the start.
    Api::<Pod>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .expect("create in default");

    let nss: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(objects::namespace("apps")).unwrap();
    let created = nss.create(&PostParams::default(), &ns).await.unwrap();
    assert_eq!(
        created.status.and_then(|s| s.phase).as_deref(),
        Some("Active")
    );
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create once the namespace exists");
    let st = api_status(pods.create(&PostParams::default(), &pod).await.unwrap_err());
    assert_eq!((st.code, st.reason.as_str()), (409, "AlreadyExists"));
    // Deleting the namespace deletes what is in it.
    nss.delete("apps", &DeleteParams::default()).await.unwrap();
    assert!(s.get("", "pods", "apps", "p").is_none());
    assert!(s.get("", "pods", "default", "p").is_some());
}

/// A list of pods with `limit=1` whose continue token is still to be used.
async fn continue_token(api: &Api<Pod>) -> String {
    let page = api.list(&ListParams::default().limit(1)).await.unwrap();
    page.metadata.continue_.expect("a continue token")
}

#[tokio::test]
async fn restart_with_history_lost_error_event_makes_kube_rs_relist() {
    let s = FakeApiServer::start("c1").await;
    for p in pods(3, "a") {
        s.apply(&p);
    }
    let dir = tempfile::tempdir().unwrap();
    let client = plain_client(&s, &dir).await;
    let m = spawn_mirror(client.clone(), watcher::Config::default().page_size(500));
    wait_for("initial list", 10, || m.lock().unwrap().pods.len() == 3).await;
    wait_for("watch open", 10, || s.open_watches() == 1).await;
    let api: Api<Pod> = Api::all(client);
    let token = continue_token(&api).await;
    let old_rv = s.resource_version();

    s.stop().await;
    wait_for("watch cut", 10, || s.open_watches() == 0).await;
    s.delete("", "pods", "ns1", "a-1").unwrap();
    s.apply(&objects::pod("ns1", "c", "10.0.4.1", "n1", &[], true));
    let lists = s.list_count();
    s.restart_with_history_lost().await;

    wait_for("re-listed after 410", 20, || {
        let m = m.lock().unwrap();
        m.inits == 2
            && m.pods.len() == 3
            && m.pods.contains_key("ns1/c")
            && !m.pods.contains_key("ns1/a-1")
    })
    .await;
    assert!(s.list_count() > lists);
    assert!(
        errors(&m).iter().any(|e| e == "WatchError 410"),
        "{:?}",
        errors(&m)
    );
    // Every watch from before the restart is expired (the watch-cache form)...
    let body = reqwest::get(format!(
        "{}/api/v1/services?watch=true&resourceVersion={old_rv}",
        s.url()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let ev: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(
        (ev["type"].as_str(), ev["object"]["code"].as_u64()),
        (Some("ERROR"), Some(410))
    );
    // ...so is a continue token from before, and a fresh paginated list works.
    let st = api_status(
        api.list(&ListParams::default().continue_token(&token))
            .await
            .unwrap_err(),
    );
    assert_eq!((st.code, st.reason.as_str()), (410, "Expired"));
    let fresh = api.list(&ListParams::default().limit(500)).await.unwrap();
    assert_eq!(fresh.items.len(), 3);
}

/// kube-runtime 5's watcher treats an HTTP 410 answer to the watch request itself
/// (`WatchStartFailed`) like any failed watch start: it keeps retrying from the
/// same resourceVersion and never re-lists, so its store stays at what it had
/// before the restart. Only the `ERROR`-event form makes it re-list. This pins
/// that behaviour: a consumer must restart the watcher itself on this error.
#[tokio::test]
async fn http_410_at_watch_start_leaves_kube_rs_retrying_the_same_version() {
    let s = FakeApiServer::start_with(Options {
        name: "c1".into(),
        expired_watch: ExpiredWatch::HttpGone,
        ..Options::default()
    })
    .await;
    for p in pods(3, "a") {
        s.apply(&p);
    }
    let dir = tempfile::tempdir().unwrap();
    let client = plain_client(&s, &dir).await;
    let m = spawn_mirror(client.clone(), watcher::Config::default().page_size(500));
    wait_for("initial list", 10, || m.lock().unwrap().pods.len() == 3).await;
    wait_for("watch open", 10, || s.open_watches() == 1).await;
    let old_rv = s.resource_version();

    s.stop().await;
    wait_for("watch cut", 10, || s.open_watches() == 0).await;
    s.delete("", "pods", "ns1", "a-1").unwrap();
    s.apply(&objects::pod("ns1", "c", "10.0.4.1", "n1", &[], true));
    let lists = s.list_count();
    s.restart_with_history_lost().await;
    let watches = s.watch_count();
    wait_for("five watch retries", 20, || s.watch_count() >= watches + 5).await;

    {
        let m = m.lock().unwrap();
        assert_eq!(m.inits, 1, "kube-rs re-listed after an HTTP 410");
        assert_eq!(s.list_count(), lists, "kube-rs re-listed after an HTTP 410");
        assert!(m.pods.contains_key("ns1/a-1") && !m.pods.contains_key("ns1/c"));
        let after_restart: Vec<&String> = m
            .errors
            .iter()
            .skip_while(|e| *e != "WatchStartFailed 410")
            .collect();
        assert!(after_restart.len() >= 5, "{:?}", m.errors);
        assert!(
            after_restart.iter().all(|e| *e == "WatchStartFailed 410"),
            "{:?}",
            m.errors
        );
    }

    // The raw answer, and a fresh watcher (a new list) that works.
    let r = reqwest::get(format!(
        "{}/api/v1/pods?watch=true&resourceVersion={old_rv}",
        s.url()
    ))
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 410);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "Expired");
    let fresh = spawn_mirror(client, watcher::Config::default().page_size(500));
    wait_for("a new watcher lists the current pods", 10, || {
        let f = fresh.lock().unwrap();
        f.pods.len() == 3 && f.pods.contains_key("ns1/c") && !f.pods.contains_key("ns1/a-1")
    })
    .await;
}

#[tokio::test]
async fn client_certificate_from_the_server_ca_authenticates_another_ca_is_refused() {
    let s = FakeApiServer::start_with(Options {
        name: "mtls".into(),
        tls: true,
        client_certs: true,
        ..Options::default()
    })
    .await;
    s.apply(&objects::pod("ns1", "p", "10.1.0.1", "n1", &[], true));
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let creds = Credentials {
        client_cert: Some(s.issue_client_cert("alice", &["readers"])),
        ..Credentials::default()
    };
    s.write_kubeconfig_with(&good, &creds);
    let text = std::fs::read_to_string(&good).unwrap();
    assert!(
        text.contains("client-certificate-data: ") && text.contains("client-key-data: "),
        "{text}"
    );
    let api: Api<Pod> = Api::all(client_for(&good).await.unwrap());
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    assert_eq!(s.cert_logins(), ["alice"]);
    assert!(s.tls_rejections().is_empty(), "{:?}", s.tls_rejections());

    // A certificate from another CA: refused at the handshake, no HTTP status.
    let other = dir.path().join("other-ca");
    s.write_kubeconfig_with(
        &other,
        &Credentials {
            client_cert: Some(kube_api::client_cert_from_other_ca("mallory")),
            ..Credentials::default()
        },
    );
    let api: Api<Pod> = Api::all(client_for(&other).await.unwrap());
    let err = api.list(&ListParams::default()).await.unwrap_err();
    let chain = error_chain(&err);
    assert!(
        chain.contains("received fatal alert: UnknownCA"),
        "not refused at the handshake: {chain}"
    );
    wait_for("rejection recorded", 5, || !s.tls_rejections().is_empty()).await;
    let why = s.tls_rejections().remove(0);
    assert!(why.contains("UnknownIssuer"), "{why}");

    // No certificate at all: refused too.
    let none = dir.path().join("none");
    s.write_kubeconfig(&none, None, None);
    let api: Api<Pod> = Api::all(client_for(&none).await.unwrap());
    let err = api.list(&ListParams::default()).await.unwrap_err();
    let chain = error_chain(&err);
    assert!(
        chain.contains("received fatal alert: CertificateRequired"),
        "not refused at the handshake: {chain}"
    );
    wait_for("second rejection", 5, || s.tls_rejections().len() == 2).await;
    assert_eq!(
        s.tls_rejections(),
        [
            "invalid peer certificate: UnknownIssuer",
            "peer sent no certificates"
        ]
    );
    assert_eq!(s.cert_logins(), ["alice"]);
}

#[tokio::test]
async fn expired_token_is_401_like_an_unknown_one_but_recorded_as_expired() {
    let s = FakeApiServer::start_with(Options {
        name: "secure".into(),
        tls: true,
        token: Some("t1".into()),
        ..Options::default()
    })
    .await;
    s.set_tokens(&["t1", "t2"]);
    s.expire_token("t1");
    let dir = tempfile::tempdir().unwrap();
    let list_with = |token: &'static str| {
        let path = dir.path().join(token);
        s.write_kubeconfig(&path, Some(token), None);
        async move {
            let api: Api<Pod> = Api::all(client_for(&path).await.unwrap());
            api.list(&ListParams::default()).await
        }
    };
    let st = api_status(list_with("t1").await.unwrap_err());
    assert_eq!(
        (st.code, st.reason.as_str(), st.message.as_str()),
        (401, "Unauthorized", "Unauthorized")
    );
    assert_eq!(
        s.auth_failures(),
        ["invalid bearer token, service account token has expired"]
    );
    let st = api_status(list_with("nobody").await.unwrap_err());
    assert_eq!(st.code, 401);
    assert_eq!(s.auth_failures()[1], "invalid bearer token");
    list_with("t2").await.expect("the other token still works");
    assert_eq!(s.auth_failures().len(), 2);
    // Revoking the last valid token keeps auth on: nothing gets in.
    s.revoke_token("t2");
    assert_eq!(api_status(list_with("t2").await.unwrap_err()).code, 401);
}

#[tokio::test]
async fn version_endpoint_answers_kube_rs() {
    let s = FakeApiServer::start("c1").await;
    let dir = tempfile::tempdir().unwrap();
    let client = plain_client(&s, &dir).await;
    let v = client.apiserver_version().await.unwrap();
    assert_eq!((v.major.as_str(), v.minor.as_str()), ("1", "33"));
    s.add_fault(FaultRule::status(500).on(Verb::Discovery).times(1));
    let st = api_status(client.apiserver_version().await.unwrap_err());
    assert_eq!((st.code, st.reason.as_str()), (500, "InternalError"));
}
