//! The ADS server against a real gRPC client on 127.0.0.1, with snapshots fed
//! directly through `xds::FixedSource` (no translation involved). Every negative
//! assertion ("no reply", "not resent") is made by provoking a later, known
//! response and checking that it is the next one received: no fixed sleeps.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crossmesh::xds::server::{serve, AdsServer};
use crossmesh::xds::{FixedSource, ProxySnapshot, Resource, ResourceMap, SnapshotChanges, TypeUrl};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const WAIT: Duration = Duration::from_secs(10);
const NODE: &str = "router~127.0.0.1~gw-1.istio-system~istio-system.svc.cluster.local";

/// Content of a test snapshot: (name, tag) per type; the tag changes the bytes.
#[derive(Clone, Default)]
struct Spec {
    clusters: Vec<(&'static str, &'static str)>,
    endpoints: Vec<(&'static str, &'static str)>,
    listeners: Vec<(&'static str, &'static str)>,
}

fn map(items: Vec<Arc<Resource>>) -> ResourceMap {
    Arc::new(
        items
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn cluster(name: &str, tag: &str) -> Arc<Resource> {
    let c = Cluster {
        name: name.into(),
        alt_stat_name: tag.into(),
        ..Default::default()
    };
    Resource::encode(TypeUrl::Cluster, name, &c)
}

fn snapshot(seq: u64, s: &Spec) -> ProxySnapshot {
    let eds = s
        .endpoints
        .iter()
        .map(|(n, tag)| {
            let cla = ClusterLoadAssignment {
                cluster_name: n.to_string(),
                named_endpoints: [(tag.to_string(), Default::default())].into(),
                ..Default::default()
            };
            Resource::encode(TypeUrl::Endpoint, *n, &cla)
        })
        .collect();
    let lds = s
        .listeners
        .iter()
        .map(|(n, tag)| {
            let l = Listener {
                name: n.to_string(),
                stat_prefix: tag.to_string(),
                ..Default::default()
            };
            Resource::encode(TypeUrl::Listener, *n, &l)
        })
        .collect();
    ProxySnapshot::new(
        seq,
        [
            map(s.clusters.iter().map(|(n, t)| cluster(n, t)).collect()),
            map(eds),
            map(lds),
            map(Vec::new()),
            map(Vec::new()),
        ],
    )
}

struct Server {
    source: Arc<FixedSource>,
    ads: AdsServer,
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn start(initial: ProxySnapshot) -> Server {
    let source = Arc::new(FixedSource::new(initial));
    let ads = AdsServer::new(source.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let a = ads.clone();
    tokio::spawn(async move {
        serve(listener, a, async {
            let _ = stopped.await;
        })
        .await
        .unwrap()
    });
    Server {
        source,
        ads,
        addr,
        _stop: stop,
    }
}

async fn client(addr: SocketAddr) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await {
            Ok(c) => return c.max_decoding_message_size(64 << 20),
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("connect {addr}: {e}"),
        }
    }
}

fn node() -> Option<Node> {
    Some(Node {
        id: NODE.into(),
        ..Default::default()
    })
}

struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn open(addr: SocketAddr) -> Sotw {
        let (tx, rx) = mpsc::channel(16);
        let rx = client(addr)
            .await
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Sotw { tx, rx }
    }

    async fn send(
        &self,
        t: TypeUrl,
        names: &[&str],
        version: &str,
        nonce: &str,
        error: Option<&str>,
    ) {
        let req = DiscoveryRequest {
            node: node(),
            type_url: t.as_str().into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            error_detail: error.map(|e| RpcStatus {
                code: 3,
                message: e.into(),
                details: vec![],
            }),
            ..Default::default()
        };
        self.tx.send(req).await.unwrap();
    }

    async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("timed out waiting for a response")
            .expect("stream error")
            .expect("stream ended")
    }

    /// ACK a response.
    async fn ack(&self, r: &DiscoveryResponse, names: &[&str]) {
        let t = TypeUrl::parse(&r.type_url).unwrap();
        self.send(t, names, &r.version_info, &r.nonce, None).await;
    }
}

fn names(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|a| match TypeUrl::parse(&a.type_url).unwrap() {
            TypeUrl::Cluster => Cluster::decode(&a.value[..]).unwrap().name,
            TypeUrl::Endpoint => {
                ClusterLoadAssignment::decode(&a.value[..])
                    .unwrap()
                    .cluster_name
            }
            TypeUrl::Listener => Listener::decode(&a.value[..]).unwrap().name,
            t => panic!("unexpected {t:?}"),
        })
        .collect()
}

fn tags(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|a| Cluster::decode(&a.value[..]).unwrap().alt_stat_name)
        .collect()
}

/// Wait until the first stream's status of type `t` satisfies `f`.
async fn wait_type(
    srv: &Server,
    t: TypeUrl,
    f: impl Fn(&crossmesh::xds::status::TypeStatus) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let st = srv.ads.connections().list();
        if let Some(x) = st
            .first()
            .and_then(|s| s.types.iter().find(|x| x.type_url == t.as_str()))
        {
            if f(x) {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition on {t:?} not reached: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Wait until the first stream has taken the snapshot with push sequence `seq`
/// (`/debug/syncz`'s `push_seq`): the server has considered it, whether or not it
/// sent anything. `FixedSource::set` keeps only the latest snapshot per stream, so a
/// test that means to push two snapshots waits for the first before the second.
async fn wait_push_seq(srv: &Server, seq: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let st = srv.ads.connections().list();
        let got = st.first().map(|s| s.push_seq);
        if got == Some(seq) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream did not take snapshot {seq}: push_seq {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Wait until the server has processed a subscription: `n` explicit names of `t`.
async fn wait_subscribed(srv: &Server, t: TypeUrl, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let st = srv.ads.connections().list();
        let got = st
            .first()
            .and_then(|s| s.types.iter().find(|x| x.type_url == t.as_str()))
            .map(|x| x.subscribed);
        if got == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscription to {n} {t:?} names not seen: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn base() -> Spec {
    Spec {
        clusters: vec![("a", "1"), ("b", "1")],
        endpoints: vec![("a", "1"), ("b", "1")],
        listeners: vec![("l1", "1")],
    }
}

#[tokio::test]
async fn sotw_ack_nack_records_error_and_does_not_resend() {
    let srv = start(snapshot(1, &base())).await;
    let mut c = Sotw::open(srv.addr).await;
    c.send(TypeUrl::Cluster, &[], "", "", None).await;
    let r1 = c.recv().await;
    assert_eq!(r1.type_url, TypeUrl::Cluster.as_str());
    assert_eq!(names(&r1), ["a", "b"]);
    c.ack(&r1, &[]).await;
    wait_type(&srv, TypeUrl::Cluster, |t| t.acked_nonce == r1.nonce).await;

    // A change, NACKed.
    let mut s = base();
    s.clusters[0].1 = "bad";
    srv.source.set(snapshot(2, &s), None);
    let r2 = c.recv().await;
    assert_eq!(tags(&r2), ["bad", "1"]);
    c.send(
        TypeUrl::Cluster,
        &[],
        &r1.version_info,
        &r2.nonce,
        Some("cluster a: bad thing"),
    )
    .await;

    // The NACK is recorded with Envoy's text (wait for the condition).
    let conns = srv.ads.connections();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let st = conns.list();
        let nack = st
            .first()
            .and_then(|s| {
                s.types
                    .iter()
                    .find(|t| t.type_url == TypeUrl::Cluster.as_str())
            })
            .and_then(|t| t.nacked.clone());
        if let Some(n) = nack {
            assert_eq!(n.error, "cluster a: bad thing");
            assert_eq!(n.nonce, r2.nonce);
            assert_eq!(st[0].types[0].acked_version, r1.version_info);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "NACK not recorded");
        tokio::task::yield_now().await;
    }

    // The same content again (a new push) is taken by the stream but not
    // resent...
    srv.source.set(snapshot(3, &s), None);
    wait_push_seq(&srv, 3).await;
    // ...but a real change is, and it is the very next response.
    let mut fixed = base();
    fixed.clusters[0].1 = "good";
    srv.source.set(snapshot(4, &fixed), None);
    let r3 = c.recv().await;
    assert_eq!(tags(&r3), ["good", "1"]);
    assert_ne!(r3.nonce, r2.nonce);
}

/// `pilot_total_xds_rejects{type}` counts the NACKs of this process. The counter
/// is process-global, and other tests in this binary NACK too, so this one runs
/// the real `crossmesh serve` (empty mesh) as its own process: one NACK of CDS
/// from this client must read exactly 1 for `cds` and 0 for every other type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_is_counted_once_in_pilot_total_xds_rejects() {
    let dir = tempfile::Builder::new()
        .prefix("crossmesh-xds-nack-")
        .tempdir()
        .expect("tempdir");
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(&mesh, "clusters: []\n").expect("write mesh file");
    let cp = support::control_plane::ControlPlane::start(&mesh).await;
    let rejects = |t: &'static str| {
        let cp = &cp;
        async move {
            let (code, body) = cp.get("/metrics").await?;
            if code != 200 {
                return Err(format!("/metrics answered {code}"));
            }
            let series = format!("pilot_total_xds_rejects{{type=\"{t}\"}}");
            body.lines()
                .find_map(|l| {
                    let (k, v) = l.rsplit_once(' ')?;
                    (k == series).then(|| v.parse::<f64>().ok()).flatten()
                })
                .ok_or_else(|| format!("no series {series} in {body}"))
        }
    };
    const TYPES: [&str; 5] = ["cds", "eds", "lds", "rds", "sds"];
    for t in TYPES {
        assert_eq!(rejects(t).await, Ok(0.0), "{t} before any NACK");
    }

    let mut c = Sotw::open(cp.xds).await;
    c.send(TypeUrl::Cluster, &[], "", "", None).await;
    let r = c.recv().await;
    assert_eq!(r.type_url, TypeUrl::Cluster.as_str());
    c.send(
        TypeUrl::Cluster,
        &[],
        "",
        &r.nonce,
        Some("cluster x: rejected"),
    )
    .await;
    // The NACK reached the server: /debug/syncz shows it for this proxy.
    support::wait_for("syncz shows the NACK", WAIT, || async {
        let j = cp.json("/debug/syncz").await?.to_string();
        if j.contains("cluster x: rejected") && j.contains(NODE) {
            Ok(())
        } else {
            Err(j)
        }
    })
    .await;
    support::wait_for("cds rejects == 1", WAIT, || async {
        match rejects("cds").await? {
            v if v == 1.0 => Ok(()),
            v => Err(format!("{v}")),
        }
    })
    .await;
    for t in TYPES.into_iter().filter(|t| *t != "cds") {
        assert_eq!(rejects(t).await, Ok(0.0), "{t} after a CDS NACK");
    }
}

#[tokio::test]
async fn stale_nonce_gets_no_reply() {
    let srv = start(snapshot(1, &base())).await;
    let mut c = Sotw::open(srv.addr).await;
    c.send(TypeUrl::Endpoint, &["a"], "", "", None).await;
    let e1 = c.recv().await;
    assert_eq!(names(&e1), ["a"]);
    c.ack(&e1, &["a"]).await;
    let mut s = base();
    s.endpoints[0].1 = "2";
    srv.source.set(snapshot(2, &s), None);
    let e2 = c.recv().await;
    assert_eq!(names(&e2), ["a"]);
    // A request quoting the older nonce (with a new name and an error) is stale:
    // no reply and no NACK.
    c.send(
        TypeUrl::Endpoint,
        &["a", "b"],
        &e1.version_info,
        &e1.nonce,
        Some("stale"),
    )
    .await;
    // The current nonce with another new name: the reply carries only that name.
    c.send(
        TypeUrl::Endpoint,
        &["a", "c"],
        &e2.version_info,
        &e2.nonce,
        None,
    )
    .await;
    wait_subscribed(&srv, TypeUrl::Endpoint, 2).await;
    s.endpoints.push(("c", "1"));
    srv.source.set(snapshot(3, &s), None);
    let e3 = c.recv().await;
    assert_eq!(
        names(&e3),
        ["c"],
        "the stale request must not have been answered"
    );
    let st = srv.ads.connections().list();
    let eds = st[0]
        .types
        .iter()
        .find(|t| t.type_url == TypeUrl::Endpoint.as_str())
        .unwrap();
    assert!(eds.nacked.is_none());
}

#[tokio::test]
async fn names_requested_before_they_exist_are_sent_when_they_appear() {
    let srv = start(snapshot(1, &base())).await;
    let mut c = Sotw::open(srv.addr).await;
    c.send(TypeUrl::Endpoint, &["later"], "", "", None).await;
    wait_subscribed(&srv, TypeUrl::Endpoint, 1).await;
    // Nothing exists yet: no response. Then it appears.
    let mut s = base();
    s.endpoints.push(("later", "1"));
    srv.source.set(snapshot(2, &s), None);
    let r = c.recv().await;
    assert_eq!(names(&r), ["later"]);
}

#[tokio::test]
async fn lds_cds_carry_the_full_set_eds_only_what_changed() {
    let srv = start(snapshot(1, &base())).await;
    let mut c = Sotw::open(srv.addr).await;
    c.send(TypeUrl::Cluster, &[], "", "", None).await;
    let cds = c.recv().await;
    c.ack(&cds, &[]).await;
    c.send(TypeUrl::Endpoint, &["a", "b"], "", "", None).await;
    let eds = c.recv().await;
    assert_eq!(names(&eds), ["a", "b"]);
    c.ack(&eds, &["a", "b"]).await;
    c.send(TypeUrl::Listener, &[], "", "", None).await;
    let lds = c.recv().await;
    assert_eq!(names(&lds), ["l1"]);
    c.ack(&lds, &[]).await;

    // Change cluster b and endpoints b, with an exact change set.
    let mut s = base();
    s.clusters[1].1 = "2";
    s.endpoints[1].1 = "2";
    let set = |v: &[&str]| {
        Some(Arc::new(
            v.iter()
                .map(|n| Arc::<str>::from(*n))
                .collect::<BTreeSet<_>>(),
        ))
    };
    srv.source.set(
        snapshot(2, &s),
        Some(SnapshotChanges {
            base_seq: 1,
            names: [set(&["b"]), set(&["b"]), set(&[]), set(&[]), set(&[])],
        }),
    );
    let cds2 = c.recv().await;
    assert_eq!(cds2.type_url, TypeUrl::Cluster.as_str());
    assert_eq!(names(&cds2), ["a", "b"], "CDS carries the full set");
    let eds2 = c.recv().await;
    assert_eq!(eds2.type_url, TypeUrl::Endpoint.as_str());
    assert_eq!(names(&eds2), ["b"], "EDS carries only what changed");
    c.ack(&cds2, &[]).await;
    c.ack(&eds2, &["a", "b"]).await;

    // Removing cluster a: CDS without it (implicit delete); no LDS response since
    // listeners did not change (next response is CDS).
    let mut s3 = s.clone();
    s3.clusters.remove(0);
    srv.source.set(snapshot(3, &s3), None);
    let cds3 = c.recv().await;
    assert_eq!(cds3.type_url, TypeUrl::Cluster.as_str());
    assert_eq!(names(&cds3), ["b"]);
}

#[tokio::test]
async fn eds_is_resent_after_a_cluster_changes() {
    let srv = start(snapshot(1, &base())).await;
    let mut c = Sotw::open(srv.addr).await;
    c.send(TypeUrl::Cluster, &[], "", "", None).await;
    let cds = c.recv().await;
    c.ack(&cds, &[]).await;
    c.send(TypeUrl::Endpoint, &["a", "b"], "", "", None).await;
    let eds = c.recv().await;
    c.ack(&eds, &["a", "b"]).await;

    // Only cluster a's definition changes; its endpoints do not.
    let mut s = base();
    s.clusters[0].1 = "2";
    srv.source.set(snapshot(2, &s), None);
    let cds2 = c.recv().await;
    assert_eq!(cds2.type_url, TypeUrl::Cluster.as_str());
    let eds2 = c.recv().await;
    assert_eq!(eds2.type_url, TypeUrl::Endpoint.as_str());
    assert_eq!(
        names(&eds2),
        ["a"],
        "the re-warming cluster gets its EDS again"
    );
}

#[tokio::test]
async fn reconnect_gets_full_config() {
    let srv = start(snapshot(1, &base())).await;
    {
        let mut c = Sotw::open(srv.addr).await;
        c.send(TypeUrl::Cluster, &[], "", "", None).await;
        let cds = c.recv().await;
        c.ack(&cds, &[]).await;
        c.send(TypeUrl::Endpoint, &["a", "b"], "", "", None).await;
        let eds = c.recv().await;
        c.ack(&eds, &["a", "b"]).await;
    }
    // New stream, as Envoy reconnects: it quotes its last versions and nonces.
    let mut c = Sotw::open(srv.addr).await;
    c.send(TypeUrl::Cluster, &[], "old-version", "7", None)
        .await;
    let cds = c.recv().await;
    assert_eq!(names(&cds), ["a", "b"]);
    c.send(TypeUrl::Endpoint, &["a", "b"], "old", "", None)
        .await;
    let eds = c.recv().await;
    assert_eq!(names(&eds), ["a", "b"]);
}

#[tokio::test]
async fn bad_node_id_is_rejected_naming_it() {
    let srv = start(snapshot(1, &base())).await;
    let (tx, rx) = mpsc::channel(1);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: "envoy-123".into(),
            ..Default::default()
        }),
        type_url: TypeUrl::Cluster.as_str().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut cl = client(srv.addr).await;
    let err = match cl
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
    {
        Err(e) => e,
        Ok(mut s) => s.get_mut().message().await.unwrap_err(),
    };
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("envoy-123"), "{}", err.message());
}

#[tokio::test]
async fn slow_consumer_coalesces_to_the_latest_snapshot() {
    // ~256 KiB per CDS response, 200 pushes (~50 MiB) while the client reads
    // nothing: the server must coalesce, not queue every response.
    let big: &'static str = Box::leak("x".repeat(256 << 10).into_boxed_str());
    let srv = start(snapshot(1, &base())).await;
    let mut c = Sotw::open(srv.addr).await;
    c.send(TypeUrl::Cluster, &[], "", "", None).await;
    let first = c.recv().await;
    c.ack(&first, &[]).await;
    let pushes = 200u64;
    for i in 0..pushes {
        let tag: &'static str = Box::leak(format!("{i}{big}").into_boxed_str());
        let s = Spec {
            clusters: vec![("a", tag)],
            ..base()
        };
        srv.source.set(snapshot(2 + i, &s), None);
    }
    let last_tag = format!("{}{big}", pushes - 1);
    let mut received = 0;
    loop {
        let r = c.recv().await;
        received += 1;
        if tags(&r)[0] == last_tag {
            break;
        }
    }
    assert!(
        received < pushes / 2,
        "received {received} of {pushes} pushes: no coalescing"
    );
}

// ---- Delta ----

struct DeltaClient {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl DeltaClient {
    async fn open(addr: SocketAddr) -> DeltaClient {
        let (tx, rx) = mpsc::channel(16);
        let rx = client(addr)
            .await
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        DeltaClient { tx, rx }
    }

    async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx
            .send(DeltaDiscoveryRequest {
                node: node(),
                ..req
            })
            .await
            .unwrap();
    }

    async fn sub(&self, t: TypeUrl, sub: &[&str], unsub: &[&str], nonce: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: t.as_str().into(),
            resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        })
        .await
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("timed out waiting for a response")
            .expect("stream error")
            .expect("stream ended")
    }
}

fn dnames(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|x| x.name.as_str()).collect()
}

#[tokio::test]
async fn delta_subscribe_unsubscribe_and_removed_resources() {
    let srv = start(snapshot(1, &base())).await;
    let mut c = DeltaClient::open(srv.addr).await;
    c.sub(TypeUrl::Cluster, &[], &[], "").await;
    let cds = c.recv().await;
    assert_eq!(dnames(&cds), ["a", "b"]);
    let cur = srv.source.current();
    assert_eq!(
        cds.resources[0].version,
        &*cur.get(TypeUrl::Cluster)[&Arc::<str>::from("a")].version
    );
    c.sub(TypeUrl::Cluster, &[], &[], &cds.nonce).await;

    c.sub(TypeUrl::Endpoint, &["a", "missing"], &[], "").await;
    let eds = c.recv().await;
    assert_eq!(dnames(&eds), ["a"]);
    c.sub(TypeUrl::Endpoint, &[], &[], &eds.nonce).await;

    // Unsubscribe a; then change a, b and remove cluster b, and add "missing".
    c.sub(TypeUrl::Endpoint, &[], &["a"], "").await;
    wait_subscribed(&srv, TypeUrl::Endpoint, 1).await;
    let mut s = base();
    s.endpoints[0].1 = "2";
    s.endpoints.push(("missing", "1"));
    s.clusters.remove(1);
    srv.source.set(snapshot(2, &s), None);
    let cds2 = c.recv().await;
    assert_eq!(cds2.type_url, TypeUrl::Cluster.as_str());
    assert!(cds2.resources.is_empty(), "cluster a did not change");
    assert_eq!(cds2.removed_resources, ["b"]);
    let eds2 = c.recv().await;
    assert_eq!(eds2.type_url, TypeUrl::Endpoint.as_str());
    assert_eq!(
        dnames(&eds2),
        ["missing"],
        "a was unsubscribed; missing appeared"
    );
    assert!(eds2.removed_resources.is_empty());
}

#[tokio::test]
async fn delta_reconnect_sends_only_what_differs() {
    let srv = start(snapshot(1, &base())).await;
    let cur = srv.source.current();
    let version = |t: TypeUrl, n: &str| cur.get(t)[&Arc::<str>::from(n)].version.to_string();
    let mut c = DeltaClient::open(srv.addr).await;
    c.send(DeltaDiscoveryRequest {
        type_url: TypeUrl::Cluster.as_str().into(),
        initial_resource_versions: [
            ("a".to_string(), version(TypeUrl::Cluster, "a")),
            ("b".to_string(), "outdated".to_string()),
            ("zombie".to_string(), "1".to_string()),
        ]
        .into(),
        ..Default::default()
    })
    .await;
    let cds = c.recv().await;
    assert_eq!(dnames(&cds), ["b"]);
    assert_eq!(cds.removed_resources, ["zombie"]);

    c.send(DeltaDiscoveryRequest {
        type_url: TypeUrl::Endpoint.as_str().into(),
        resource_names_subscribe: vec!["a".into(), "b".into()],
        initial_resource_versions: [("a".to_string(), version(TypeUrl::Endpoint, "a"))].into(),
        ..Default::default()
    })
    .await;
    let eds = c.recv().await;
    assert_eq!(dnames(&eds), ["b"]);
}

#[tokio::test]
async fn delta_nack_is_not_resent() {
    let srv = start(snapshot(1, &base())).await;
    let mut c = DeltaClient::open(srv.addr).await;
    c.sub(TypeUrl::Cluster, &[], &[], "").await;
    let cds = c.recv().await;
    c.send(DeltaDiscoveryRequest {
        type_url: TypeUrl::Cluster.as_str().into(),
        response_nonce: cds.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "nope".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await;
    wait_type(&srv, TypeUrl::Cluster, |t| t.nacked.is_some()).await;
    // Same content pushed again, and taken by the stream: nothing is sent. Then b
    // changes: only b is sent, and it is the very next response.
    srv.source.set(snapshot(2, &base()), None);
    wait_push_seq(&srv, 2).await;
    let mut s = base();
    s.clusters[1].1 = "2";
    srv.source.set(snapshot(3, &s), None);
    let cds2 = c.recv().await;
    assert_eq!(dnames(&cds2), ["b"]);
    let st = srv.ads.connections().list();
    assert_eq!(
        st[0].types[0].nacked.as_ref().map(|n| n.error.as_str()),
        Some("nope")
    );
}
