//! The ADS gRPC server: `StreamAggregatedResources` (state of the world) and
//! `DeltaAggregatedResources` on
//! `/envoy.service.discovery.v3.AggregatedDiscoveryService/...`.
//!
//! Flow per stream: the first request must carry the `Node`; it is parsed with
//! `Proxy::from_node` (a bad node id ends the stream with `INVALID_ARGUMENT` naming
//! it). The stream registers with the `SnapshotSource` (the push engine), whose
//! watch channel already holds the proxy's current snapshot, and in
//! `Connections` (debug endpoints). One task per stream then alternates between
//! requests and new snapshots; `connection::StreamState` decides what to send.
//! Responses go through a one-slot channel: a slow proxy blocks only its own
//! task. A new snapshot is taken only once the proxy has answered (ACK or NACK)
//! every response it was sent, or after `ANSWER_TIMEOUT`; until then the watch
//! channel coalesces snapshots to the latest. A proxy that reads slowly thus
//! gets fewer, merged updates, and nothing queues up per stream.
//!
//! Zero re-encoding, zero copy: the methods are served by a hand-written tower
//! `Service` (`AdsService`). Requests are decoded by `codec::Requests`; each
//! response goes out as an `AdsBody` whose chunks reference the resources'
//! shared pre-encoded `Any` bytes (`codec::Frames`), so a stream holds no copy
//! of what it sends, however large (tonic's own encoder would encode every
//! response into a per-stream buffer that keeps the largest response's size).
//!
//! Entry points for the wiring:
//! - `AdsServer::new(source)`; `AdsServer::connections()` for `/debug/syncz` and
//!   `/debug/config_dump`; `AdsServer::service()` to mount elsewhere;
//! - `serve(listener, ads, shutdown)`: serve on a bound listener until `shutdown`
//!   resolves, then end every stream and return.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tokio::sync::{mpsc, watch};
use tonic::codegen::{http, BoxFuture, Service, StdError};
use tonic::server::NamedService;
use tonic::Status;
use tracing::{debug, info, warn, Instrument};

use super::codec::{
    DecodeRequest, DeltaResponse, EncodeResponse, Frames, PayloadLen, Requests, SotwRequest,
    SotwResponse,
};
use super::connection::{Ack, Mode, Out, StreamState};
use super::secure::XdsSecurity;
use super::source::{SnapshotSource, Update};
use super::status::{Connection, Connections, LocalityOrigin};
use crate::metrics::{metrics, type_label};
use crate::model::proxy::ProxyError;
use crate::model::Proxy;

/// gRPC service name of ADS.
pub const ADS_SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
/// Path of the state-of-the-world method.
pub const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
/// Path of the incremental method.
pub const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// gRPC service name of Envoy's metrics sink.
pub const METRICS_SERVICE: &str = "envoy.service.metrics.v3.MetricsService";
/// Path of its one method.
pub const STREAM_METRICS_PATH: &str = "/envoy.service.metrics.v3.MetricsService/StreamMetrics";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("xDS server on {addr}: {source}")]
    Transport {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("xDS TLS server on {addr}: {reason}")]
    Tls { addr: String, reason: String },
}

impl From<ProxyError> for Status {
    fn from(e: ProxyError) -> Status {
        Status::invalid_argument(e.to_string())
    }
}

struct Shared {
    source: Arc<dyn SnapshotSource>,
    connections: Arc<Connections>,
    /// Push slots (`PUSH_SLOTS`) for streams sending large responses.
    slots: Arc<tokio::sync::Semaphore>,
    /// Set to true once to end every stream.
    shutdown: watch::Sender<bool>,
    /// Envoy's metrics sink on the same ports (`telemetry::ServiceGraph`);
    /// unset, `StreamMetrics` is unimplemented.
    telemetry: std::sync::OnceLock<Arc<dyn MetricsSink>>,
}

/// Envoy's metrics sink (`MetricsService/StreamMetrics`), served on the xDS
/// ports next to ADS and authenticated as ADS is. The wiring hands the server
/// its implementation (`telemetry::ServiceGraph`), so transport does not
/// depend on what reads the stats.
pub trait MetricsSink: Send + Sync + 'static {
    /// Serve one call. `security`: the TLS port's, when the call came in
    /// there; `shutdown` turns true when the server stops.
    fn call(
        self: Arc<Self>,
        security: Option<Arc<XdsSecurity>>,
        shutdown: watch::Receiver<bool>,
        req: http::Request<tonic::body::Body>,
    ) -> BoxFuture<http::Response<tonic::body::Body>, Infallible>;
}

/// The ADS server: a snapshot source plus the registry of live streams.
#[derive(Clone)]
pub struct AdsServer {
    shared: Arc<Shared>,
}

impl AdsServer {
    pub fn new(source: Arc<dyn SnapshotSource>) -> AdsServer {
        AdsServer {
            shared: Arc::new(Shared {
                source,
                connections: Arc::new(Connections::new()),
                slots: Arc::new(tokio::sync::Semaphore::new(PUSH_SLOTS)),
                shutdown: watch::channel(false).0,
                telemetry: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Serve Envoy's metrics sink (`MetricsService/StreamMetrics`) on every
    /// port of this server with `sink`; the first sink set stays.
    pub fn serve_telemetry(&self, sink: Arc<dyn MetricsSink>) {
        let _ = self.shared.telemetry.set(sink);
    }

    /// Live streams, for the debug endpoints.
    pub fn connections(&self) -> Arc<Connections> {
        self.shared.connections.clone()
    }

    /// The tower service serving both ADS methods (mount on any tonic router).
    pub fn service(&self) -> AdsService {
        AdsService {
            shared: self.shared.clone(),
            secure: None,
        }
    }

    /// The same service for the TLS port: every stream must authenticate, and
    /// authenticated proxies get their certificate over SDS.
    pub fn secure(&self, security: Arc<XdsSecurity>) -> AdsService {
        AdsService {
            shared: self.shared.clone(),
            secure: Some(security),
        }
    }

    /// End every open stream (each gets `UNAVAILABLE`, so clients reconnect).
    pub fn close_all(&self) {
        self.shared.shutdown.send_replace(true);
    }
}

/// Serve ADS on `listener` until `shutdown` resolves; then end every stream and
/// return once the transport has stopped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ads: AdsServer,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    info!(%addr, "xDS server listening");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let service = ads.service();
    serve_incoming(incoming, ads, service, shutdown)
        .await
        .map_err(|source| ServeError::Transport { addr, source })
}

/// Serve `service` on the connections of `incoming` until `shutdown`; then end
/// every stream of `ads` and return.
pub(crate) async fn serve_incoming<I, IO, IE>(
    incoming: I,
    ads: AdsServer,
    service: AdsService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error>
where
    I: tokio_stream::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let closer = ads;
    let signal = async move {
        shutdown.await;
        // Streams never end by themselves; without this, graceful shutdown would
        // wait for every proxy to disconnect.
        closer.close_all();
    };
    tonic::transport::Server::builder()
        .add_service(service.clone())
        .add_service(MetricsSinkRoute(service))
        .serve_with_incoming_shutdown(incoming, signal)
        .await
}

/// The tower service for both ADS methods.
#[derive(Clone)]
pub struct AdsService {
    shared: Arc<Shared>,
    /// Set on the TLS port: streams authenticate and get SDS secrets.
    secure: Option<Arc<XdsSecurity>>,
}

impl NamedService for AdsService {
    const NAME: &'static str = ADS_SERVICE;
}

/// The same service under the metrics sink's gRPC name, so that tonic's router
/// hands it `MetricsService/StreamMetrics` calls (it routes by service name).
#[derive(Clone)]
struct MetricsSinkRoute(AdsService);

impl NamedService for MetricsSinkRoute {
    const NAME: &'static str = METRICS_SERVICE;
}

impl<B> Service<http::Request<B>> for MetricsSinkRoute
where
    B: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.0.call(req)
    }
}

impl<B> Service<http::Request<B>> for AdsService
where
    B: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        let secure = self.secure.clone();
        match req.uri().path() {
            SOTW_PATH => Box::pin(async move { Ok(stream::<Sotw, B>(shared, secure, req)) }),
            DELTA_PATH => Box::pin(async move { Ok(stream::<Delta, B>(shared, secure, req)) }),
            // Envoy's metrics sink on the same ports, authenticated as ADS is.
            STREAM_METRICS_PATH => match shared.telemetry.get() {
                Some(sink) => sink.clone().call(
                    secure,
                    shared.shutdown.subscribe(),
                    req.map(tonic::body::Body::new),
                ),
                None => {
                    let status = Status::unimplemented(
                        "the metrics sink is off in this crossmesh (mesh file serviceGraph.enabled)",
                    );
                    Box::pin(async move { Ok(status.into_http()) })
                }
            },
            other => {
                let status =
                    Status::unimplemented(format!("crossmesh serves only ADS, not {other}"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// How many streams may have a large push on its way at once (Istio's
/// `PILOT_PUSH_THROTTLE`, also 100). Envoy grants huge HTTP/2 windows, so h2
/// queues whatever a stream hands it; without a bound, a full push to thousands
/// of proxies would sit in memory at once, frame by frame, waiting for the
/// sockets. A stream takes a slot before sending a batch of `THROTTLE_MIN_BYTES`
/// or more, keeps it while it sends further responses (CDS then EDS: it never
/// waits for a second slot, so slots cannot deadlock), and gives it back once the
/// client has answered every response it was sent, or after `ANSWER_TIMEOUT`.
const PUSH_SLOTS: usize = 100;
/// Batches smaller than this never wait for a slot: endpoint updates under
/// churn (tens of assignments per push) must not queue behind full pushes.
const THROTTLE_MIN_BYTES: usize = 256 << 10;
/// A client that does not answer its responses within this long gives its push
/// slot back and receives new snapshots again without waiting for answers.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Largest request accepted (a Delta reconnect lists every resource it holds in
/// `initial_resource_versions`; tonic's default of 4 MiB is too small for big
/// meshes).
const MAX_REQUEST_BYTES: usize = 64 << 20;

/// One ADS call: requests decoded by `codec::Requests`; the
/// response is an `AdsBody`, not tonic's encoder, so no stream ever holds an
/// encoded copy of what it sends.
fn stream<F: Flavor, B>(
    shared: Arc<Shared>,
    secure: Option<Arc<XdsSecurity>>,
    req: http::Request<B>,
) -> http::Response<tonic::body::Body>
where
    B: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    // Only the TLS port looks at credentials; the token is never logged.
    let auth = secure.map(|s| (s, super::secure::bearer_token(req.headers())));
    let requests = Requests::new(tonic::body::Body::new(req.into_body()), MAX_REQUEST_BYTES);
    let rx = open::<F>(shared, auth, requests);
    let mut resp = http::Response::new(tonic::body::Body::new(AdsBody {
        rx,
        chunks: VecDeque::new(),
        done: false,
    }));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    resp
}

/// The HTTP/2 response body of one ADS stream: each response becomes the chunks
/// of `codec::Frames` (framing bytes, plus the shared resource payloads by
/// reference), handed to hyper one at a time as flow control allows; the end of
/// the stream becomes the `grpc-status` trailers.
struct AdsBody<R> {
    rx: mpsc::Receiver<Slot<R>>,
    chunks: VecDeque<bytes::Bytes>,
    done: bool,
}

impl<R: EncodeResponse> http_body::Body for AdsBody<R> {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            if let Some(c) = this.chunks.pop_front() {
                if this.chunks.is_empty() {
                    // Do not keep a large response's chunk list per idle stream.
                    this.chunks = VecDeque::new();
                }
                return Poll::Ready(Some(Ok(http_body::Frame::data(c))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let status = match std::task::ready!(this.rx.poll_recv(cx)).map(|s| *s) {
                Some(Ok(resp)) => {
                    this.chunks = Frames::message(&resp);
                    continue;
                }
                Some(Err(status)) => status,
                None => Status::ok(""),
            };
            this.done = true;
            let mut trailers = http::HeaderMap::new();
            if let Err(e) = status.add_header(&mut trailers) {
                warn!(status = %e, "cannot encode the stream's final status");
            }
            return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.chunks.is_empty()
    }
}

/// What a stream's task hands its `AdsBody`: boxed, because a tokio channel
/// allocates its slots 32 at a time whatever its capacity, and a response with
/// a `Status` beside it is ~140 bytes (4.4 KB per stream, 44 MB at 10,000).
type Slot<R> = Box<Result<R, Status>>;

/// The two ADS variants, as far as the stream loop cares.
trait Flavor: Send + 'static {
    const MODE: Mode;
    type Req: DecodeRequest;
    type Resp: PayloadLen + EncodeResponse + Send + 'static;
    fn node(req: &Self::Req) -> Option<&envoy_types::pb::envoy::config::core::v3::Node>;
    fn handle(st: &mut StreamState, req: &Self::Req) -> (Ack, Vec<Out>);
    fn wire(out: Out) -> Self::Resp;
    fn type_url(req: &Self::Req) -> &str;
}

struct Sotw;
struct Delta;

impl Flavor for Sotw {
    const MODE: Mode = Mode::Sotw;
    type Req = SotwRequest;
    type Resp = SotwResponse;
    fn node(req: &SotwRequest) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        req.node.as_ref()
    }
    fn handle(st: &mut StreamState, req: &SotwRequest) -> (Ack, Vec<Out>) {
        st.sotw_request(req)
    }
    fn wire(out: Out) -> SotwResponse {
        out.sotw()
    }
    fn type_url(req: &SotwRequest) -> &str {
        &req.type_url
    }
}

impl Flavor for Delta {
    const MODE: Mode = Mode::Delta;
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaResponse;
    fn node(
        req: &DeltaDiscoveryRequest,
    ) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        req.node.as_ref()
    }
    fn handle(st: &mut StreamState, req: &DeltaDiscoveryRequest) -> (Ack, Vec<Out>) {
        st.delta_request(req)
    }
    fn wire(out: Out) -> DeltaResponse {
        out.delta()
    }
    fn type_url(req: &DeltaDiscoveryRequest) -> &str {
        &req.type_url
    }
}

/// Start the stream task and hand back its response channel at once: response
/// headers must not wait for the first request (some clients send it only once
/// the call is established).
/// The security context of a stream on the TLS port, with the bearer token it
/// presented.
type Auth = (Arc<XdsSecurity>, Option<zeroize::Zeroizing<String>>);

fn open<F: Flavor>(
    shared: Arc<Shared>,
    auth: Option<Auth>,
    requests: Requests<F::Req>,
) -> mpsc::Receiver<Slot<F::Resp>> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut shutdown = shared.shutdown.subscribe();
        let handshake = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => Err(Status::unavailable("crossmesh is shutting down")),
            r = handshake::<F>(shared.clone(), auth, requests) => r,
        };
        match handshake {
            Ok((guard, first, requests, updates)) => {
                let span =
                    tracing::info_span!("ads", proxy = %guard.conn.proxy.id, conn = guard.conn.id);
                run::<F>(guard, first, requests, updates, tx)
                    .instrument(span)
                    .await
            }
            Err(status) => {
                let _ = tx.send(Box::new(Err(status))).await;
            }
        }
    });
    rx
}

type Handshake<F> = (
    Registered,
    <F as Flavor>::Req,
    Requests<<F as Flavor>::Req>,
    watch::Receiver<Update>,
);

/// Read the first request, identify the proxy from its node and register the
/// stream with the snapshot source and the connection registry.
async fn handshake<F: Flavor>(
    shared: Arc<Shared>,
    auth: Option<Auth>,
    mut requests: Requests<F::Req>,
) -> Result<Handshake<F>, Status> {
    let first = requests
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("ADS stream closed before its first request"))?;
    let node = F::node(&first).ok_or_else(|| {
        Status::invalid_argument(format!(
            "the first ADS request (type {}) carries no node",
            F::type_url(&first)
        ))
    })?;
    let mut proxy = match Proxy::from_node(node) {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "rejected ADS stream");
            return Err(e.into());
        }
    };
    // TLS port: the token must prove the identity the node claims; the
    // certificate is for the token's identity.
    let mut secure: Option<(super::secure::StreamSecurity, super::secure::Issued)> = None;
    if let Some((security, token)) = auth {
        let identity = match security
            .authorize(&proxy, token.as_deref().map(|t| t.as_str()))
            .await
        {
            Ok(id) => id,
            Err(refusal) => {
                super::secure::record_refusal(&proxy, &refusal);
                return Err(refusal.status(&proxy.id));
            }
        };
        let issued = security.issue(identity.clone()).await.map_err(|e| {
            warn!(proxy = %proxy.id, error = %e, "cannot issue a workload certificate");
            Status::unavailable(format!("proxy {}: {e}", proxy.id))
        })?;
        info!(proxy = %proxy.id, identity = %issued.info.identity, serial = %issued.info.serial, "workload certificate issued");
        proxy.identity = Some(identity);
        let stream_security = super::secure::StreamSecurity::new(
            security,
            &proxy.id,
            token.as_deref().map(|t| t.as_str()),
            &issued,
        );
        secure = Some((stream_security, issued));
    }
    // A node without a locality (injected sidecars, gateways bootstrapped
    // without --locality) takes its Pod's from the registry, as istiod's
    // `setTopologyLabels` does; read once, at connect.
    let locality_from = if proxy.locality != Default::default() {
        LocalityOrigin::Node
    } else if let Some(l) = shared.source.proxy_locality(&proxy) {
        info!(proxy = %proxy.id, locality = %l.label(), "locality from the proxy's pod");
        proxy.locality = l;
        LocalityOrigin::Registry
    } else {
        LocalityOrigin::None
    };
    let proxy = Arc::new(proxy);
    wait_until_ready(&*shared.source, &proxy.id).await;
    let id = shared.connections.next_id();
    // The source may generate this proxy's config (CPU work, and it waits for a
    // push in progress): keep it off the async workers.
    let source = shared.source.clone();
    let p = proxy.clone();
    let mut updates = tokio::task::spawn_blocking(move || source.connect(id, p))
        .await
        .map_err(|e| {
            Status::internal(format!("computing the first snapshot of {}: {e}", proxy.id))
        })?;
    let current = updates.borrow_and_update().clone();
    let mut state = StreamState::new(F::MODE, current);
    let mut security = None;
    let mut cert = None;
    if let Some((s, issued)) = secure {
        // Nothing is subscribed yet: this sends nothing.
        state.set_own_secrets(issued.secrets);
        cert = Some(s.describe(issued.info));
        security = Some(s);
    }
    let conn = shared
        .connections
        .insert(id, proxy.clone(), F::MODE, locality_from, state);
    conn.set_cert(cert);
    metrics().xds_clients.inc();
    info!(proxy = %proxy.id, conn = id, mode = ?F::MODE, "proxy connected");
    let guard = Registered {
        shared,
        conn,
        security,
    };
    Ok((guard, first, requests, updates))
}

/// Holds a new stream, answering nothing, until the source is ready. istiod
/// refuses streams with `Unavailable` until then, which sends Envoy into its
/// reconnect backoff (up to seconds); a held stream is answered the moment the
/// registry is complete. The registry is ready at the latest after the mesh's
/// `readyTimeout`, so the wait is bounded.
async fn wait_until_ready(source: &dyn SnapshotSource, proxy: &str) {
    if source.ready() {
        return;
    }
    info!(proxy, "holding the stream until every cluster has synced");
    let started = tokio::time::Instant::now();
    while !source.ready() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    debug!(
        proxy,
        held_ms = started.elapsed().as_millis() as u64,
        "stream released"
    );
}

/// Unregisters the stream however its task ends.
struct Registered {
    shared: Arc<Shared>,
    conn: Arc<Connection>,
    /// TLS port: the CA, when to renew this proxy's certificate, when its
    /// token expires.
    security: Option<super::secure::StreamSecurity>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.source.disconnect(self.conn.id);
        self.shared.connections.remove(self.conn.id);
        metrics().xds_clients.dec();
        info!(proxy = %self.conn.proxy.id, conn = self.conn.id, "proxy disconnected");
    }
}

enum Step<R> {
    Request(R),
    Update(Update),
    Renew,
    /// A new trust bundle (`ROOTCA`) to push.
    Roots(Arc<super::Resource>),
    End(Option<Status>),
}

async fn run<F: Flavor>(
    mut guard: Registered,
    first: F::Req,
    mut requests: Requests<F::Req>,
    mut updates: watch::Receiver<Update>,
    tx: mpsc::Sender<Slot<F::Resp>>,
) {
    let conn = guard.conn.clone();
    let mut security = guard.security.take();
    let mut shutdown = guard.shared.shutdown.subscribe();
    let mut pending = Some(first);
    let mut slot: Option<tokio::sync::OwnedSemaphorePermit> = None;
    // Since when the client has had a response it has not answered (ACK or
    // NACK) yet. Meanwhile new snapshots wait in the watch channel, which keeps
    // only the latest: a proxy that reads slowly gets fewer, merged updates
    // instead of a growing backlog (one response in flight per stream, as
    // go-control-plane's state-of-the-world server has one per type). Requests
    // are always served at once, so cluster warming (CDS is ACKed only after the
    // EDS it asks for arrives) cannot deadlock.
    let mut unanswered_since: Option<tokio::time::Instant> = None;
    loop {
        let answer_deadline = unanswered_since.map(|t| t + ANSWER_TIMEOUT);
        let step = match pending.take() {
            Some(req) => Step::Request(req),
            None => tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => Step::End(Some(Status::unavailable("crossmesh is shutting down"))),
                msg = requests.message() => match msg {
                    Ok(Some(req)) => Step::Request(req),
                    Ok(None) => Step::End(None),
                    Err(status) => {
                        debug!(%status, "ADS stream error");
                        Step::End(None)
                    }
                },
                changed = updates.changed(), if unanswered_since.is_none() => match changed {
                    Ok(()) => Step::Update(updates.borrow_and_update().clone()),
                    Err(_) => Step::End(Some(Status::unavailable("the push engine dropped this stream"))),
                },
                ev = security_event(security.as_mut()) => match ev {
                    super::secure::StreamEvent::Renew => Step::Renew,
                    super::secure::StreamEvent::Roots(r) => Step::Roots(r),
                    super::secure::StreamEvent::TokenExpired(status) => Step::End(Some(status)),
                },
                _ = sleep_until_opt(answer_deadline) => {
                    debug!("the client did not answer in time: push slot released, updates resume");
                    slot = None;
                    unanswered_since = None;
                    continue;
                }
            },
        };
        let outs = match step {
            Step::Request(req) => {
                let (ack, outs) = F::handle(&mut conn.lock(), &req);
                match &ack {
                    Ack::Nack(error) => {
                        if let Some(t) = super::TypeUrl::parse(F::type_url(&req)) {
                            metrics()
                                .xds_rejects
                                .get_or_create(&type_label(t.short()))
                                .inc();
                        }
                        warn!(type_url = F::type_url(&req), %error, "NACK");
                    }
                    Ack::Stale => debug!(type_url = F::type_url(&req), "stale nonce, ignored"),
                    Ack::UnknownType(t) => {
                        debug!(type_url = %t, "request for a type crossmesh does not serve")
                    }
                    Ack::Ack | Ack::Request => {}
                }
                outs
            }
            Step::Update(u) => conn.lock().update(u),
            Step::Renew => {
                let Some(sec) = security.as_mut() else {
                    continue;
                };
                let id = conn.proxy.identity.clone();
                let Some(id) = id else {
                    security = None;
                    continue;
                };
                match sec.security().clone().issue(id).await {
                    Ok(issued) => {
                        info!(identity = %issued.info.identity, serial = %issued.info.serial, issuer = %issued.info.issuer, "workload certificate renewed");
                        sec.renewed(&issued);
                        conn.set_cert(Some(sec.describe(issued.info)));
                        conn.lock().set_own_secrets(issued.secrets)
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot renew the workload certificate; retrying");
                        sec.retry_in(RENEW_RETRY);
                        continue;
                    }
                }
            }
            Step::Roots(r) => {
                info!("trust bundle changed: ROOTCA pushed");
                conn.lock()
                    .replace_own_secret(super::secure::ROOTCA_SECRET, r)
            }
            Step::End(status) => {
                if let Some(s) = status {
                    let _ = tx.send(Box::new(Err(s))).await;
                }
                break;
            }
        };
        let resps: Vec<(super::TypeUrl, F::Resp)> =
            outs.into_iter().map(|o| (o.type_url, F::wire(o))).collect();
        let total: usize = resps.iter().map(|(_, r)| r.payload_len()).sum();
        if total >= THROTTLE_MIN_BYTES && slot.is_none() {
            let acquire = guard.shared.slots.clone().acquire_owned();
            let permit = tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => None,
                permit = acquire => permit.ok(), // the semaphore is never closed
            };
            match permit {
                Some(p) => slot = Some(p),
                None => {
                    let _ = tx
                        .send(Box::new(Err(Status::unavailable(
                            "crossmesh is shutting down",
                        ))))
                        .await;
                    break;
                }
            }
        }
        for (t, resp) in resps {
            let bytes = resp.payload_len();
            if tx.send(Box::new(Ok(resp))).await.is_err() {
                return; // the client went away
            }
            metrics()
                .xds_pushes
                .get_or_create(&type_label(t.short()))
                .inc();
            metrics().send_bytes.inc_by(bytes as u64);
        }
        if conn.lock().caught_up() {
            slot = None;
            unanswered_since = None;
        } else if unanswered_since.is_none() {
            unanswered_since = Some(tokio::time::Instant::now());
        }
    }
    drop(guard);
}

/// The next thing an authenticated stream must do (renew, push a new
/// `ROOTCA`, end on token expiry); never for a stream without security.
async fn security_event(
    security: Option<&mut super::secure::StreamSecurity>,
) -> super::secure::StreamEvent {
    match security {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// After a failed certificate renewal, try again this soon.
const RENEW_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// Sleep until `deadline`, or forever without one.
async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
