//! Debug HTTP (DESIGN.md §4): readiness, sync status, config dumps, registry, config
//! and metrics, served by axum on the debug address. It only reads: the registry,
//! the connections' sent snapshots and the metrics, through the `DebugState` trait,
//! so the handlers do not depend on how those parts store their state.
//!
//! `/debug/config_dump?proxyID=ID` answers with Envoy's own admin `ConfigDump`
//! message (`ClustersConfigDump`, `EndpointsConfigDump`, `ListenersConfigDump`,
//! `RoutesConfigDump`, `SecretsConfigDump`) in proto-JSON with `@type`, holding what
//! the proxy was sent, so it reads like Envoy's `/config_dump?include_eds` and
//! istiod's `/debug/config_dump`.
//!
//! Who may read it (mesh file `debugAuth`, [`DebugAuthn`]): bound to loopback
//! it is open; bound to any other address (or with `required: true`) every path
//! but the probes `/ready` and `/healthz` needs `Authorization: Bearer TOKEN`,
//! the static token of `tokenFile` or a service-account token of one of
//! `serviceAccounts`, verified as xDS clients' tokens are. Nothing it serves
//! holds private key material: secrets in config dumps carry no key, `/debug/certz`
//! shows certificates' metadata only.

pub mod json;
pub mod meshz;
pub mod registryz;
pub mod servicez;
pub mod status;
pub mod ui;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use envoy_types::pb::envoy::admin::v3 as admin;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::xds::{Resource, TypeUrl};

pub use json::JsonError;

/// The resources last sent to one proxy, per type.
pub type SentResources = BTreeMap<TypeUrl, Vec<Arc<Resource>>>;

/// What the debug endpoints read. Implemented in `serve.rs` over the registry and
/// the xDS connections; tests use fakes. Every method is a cheap snapshot: handlers
/// call them on the async runtime and must not block.
pub trait DebugState: Send + Sync + 'static {
    /// `/ready`: every source has done its first sync (a dead cluster stops blocking
    /// after `tunables.ready_timeout`).
    fn ready(&self) -> bool;
    /// The process is shutting down: `/ready` answers 503 `draining` whatever
    /// `ready` says, so a Service stops sending new proxies here.
    fn draining(&self) -> bool;
    /// `/debug/syncz`: per connected proxy, its id and per type URL the last version
    /// and nonce sent, acked or nacked, and the NACK error text.
    fn syncz(&self) -> Value;
    /// Node ids of the connected proxies.
    fn proxies(&self) -> Vec<String>;
    /// What the proxy with this node id was last sent; `None` for an unknown proxy.
    fn sent(&self, proxy_id: &str) -> Option<SentResources>;
    /// Per connected proxy, the names of the clusters last sent to it that
    /// `keep` accepts; proxies with none are left out. A state with many
    /// proxies answers this in one pass (the default asks `sent` per proxy).
    fn sent_clusters(&self, keep: &dyn Fn(&str) -> bool) -> Vec<(String, Vec<Arc<str>>)> {
        self.proxies()
            .into_iter()
            .filter_map(|id| {
                let sent = self.sent(&id)?;
                let names: Vec<Arc<str>> = sent
                    .get(&TypeUrl::Cluster)?
                    .iter()
                    .filter(|r| keep(&r.name))
                    .map(|r| r.name.clone())
                    .collect();
                (!names.is_empty()).then_some((id, names))
            })
            .collect()
    }
    /// `/debug/registryz`: merged services, endpoints per cluster.
    fn registryz(&self) -> Value;
    /// `/debug/configz`: Istio config in force and the rejected objects with reasons.
    fn configz(&self) -> Value;
    /// `/debug/clusterz`: member clusters: source, synced, last error, object counts,
    /// rejected objects (including remote-secret keys refused for a taken name).
    fn clusterz(&self) -> Value;
    /// `/debug/certz`: per proxy authenticated on the TLS xDS port, the identity,
    /// serial, validity and renewal time of the certificate it holds (never a
    /// key). A state without authenticated streams has none.
    fn certz(&self) -> Value {
        json!([])
    }
    /// `/debug/graphz?window=SECONDS`: the live service graph over the last
    /// `window_secs` (docs/OBSERVABILITY.md). A state without one says
    /// `enabled: false`.
    fn graphz(&self, window_secs: u64) -> Value {
        let _ = window_secs;
        json!({ "enabled": false })
    }
    /// The registry's current view (merged services, Istio config in force,
    /// mesh settings with the discovered network gateways), which the
    /// dashboard's pages `/debug/meshz` and `/debug/servicez` are computed
    /// from. A state without one answers those pages 404.
    fn context(&self) -> Option<Arc<dyn crate::model::push_request::ContextSource>> {
        None
    }
}

/// The debug routes over `state`, open to anyone who can connect.
pub fn router(state: Arc<dyn DebugState>) -> Router {
    routes(state).merge(ui::router())
}

/// The debug routes over `state`, behind `auth` when given.
pub fn router_with_auth(state: Arc<dyn DebugState>, auth: Option<Arc<DebugAuthn>>) -> Router {
    match auth {
        None => routes(state).merge(ui::router()),
        Some(auth) => {
            // The dashboard's assets hold no data: the page asks for the token and
            // sends it with its requests to the routes above.
            routes(state)
                .layer(axum::middleware::from_fn_with_state(auth, require_token))
                .merge(ui::router())
        }
    }
}

fn routes(state: Arc<dyn DebugState>) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/healthz", get(healthz))
        .route(
            "/debug/syncz",
            get(|s: St| async move { json_ok(&s.syncz()) }),
        )
        .route("/debug/config_dump", get(config_dump))
        .route(
            "/debug/registryz",
            get(|s: St| async move { json_ok(&s.registryz()) }),
        )
        .route(
            "/debug/configz",
            get(|s: St| async move { json_ok(&s.configz()) }),
        )
        .route(
            "/debug/clusterz",
            get(|s: St| async move { json_ok(&s.clusterz()) }),
        )
        .route(
            "/debug/certz",
            get(|s: St| async move { json_ok(&s.certz()) }),
        )
        .route("/debug/graphz", get(graphz))
        .route("/debug/servicez", get(ui::servicez))
        .route("/debug/meshz", get(ui::meshz))
        .route("/metrics", get(prometheus))
        .with_state(state)
}

/// Serve the debug routes on an already bound listener until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<dyn DebugState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_auth(listener, state, None, shutdown).await
}

/// [`serve`], with every path but the probes behind `auth` when given.
pub async fn serve_with_auth(
    listener: tokio::net::TcpListener,
    state: Arc<dyn DebugState>,
    auth: Option<Arc<DebugAuthn>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::debug!(?addr, authenticated = auth.is_some(), "debug HTTP serving");
    axum::serve(listener, router_with_auth(state, auth))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The probes: open whatever `debugAuth` says (kubelet's HTTP probes send no
/// token), and they answer one word, nothing about the mesh.
const OPEN_PATHS: [&str; 2] = ["/ready", "/healthz"];

/// The credentials the debug endpoint accepts (mesh file `debugAuth`).
pub struct DebugAuthn {
    token_file: Option<std::path::PathBuf>,
    accounts: Vec<crate::config::DebugServiceAccount>,
    authn: Option<Arc<crate::security::authn::Authenticator>>,
}

impl DebugAuthn {
    /// `authn` verifies the tokens of `auth.service_accounts` (needed when
    /// there are any).
    pub fn new(
        auth: &crate::config::DebugAuth,
        authn: Option<Arc<crate::security::authn::Authenticator>>,
    ) -> DebugAuthn {
        DebugAuthn {
            token_file: auth.token_file.clone(),
            accounts: auth.service_accounts.clone(),
            authn,
        }
    }

    /// Whether any credential can pass (else every guarded path is refused).
    pub fn accepts_any(&self) -> bool {
        self.token_file.is_some() || (!self.accounts.is_empty() && self.authn.is_some())
    }

    /// Check the bearer token of one request. The error says why without the
    /// token.
    pub async fn check(&self, bearer: Option<&str>) -> Result<(), String> {
        let Some(token) = bearer
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
        else {
            return Err("an Authorization: Bearer token is required".into());
        };
        if let Some(path) = &self.token_file {
            // Read per request: a rotated file takes effect at once, and the
            // endpoint sees little traffic.
            match std::fs::read_to_string(path) {
                Ok(want) => {
                    let want = want.trim();
                    let digest =
                        |t: &str| ring::digest::digest(&ring::digest::SHA256, t.as_bytes());
                    if !want.is_empty() && digest(want).as_ref() == digest(token).as_ref() {
                        return Ok(());
                    }
                }
                Err(e) => tracing::warn!(file = %path.display(), error = %e,
                    "debugAuth.tokenFile cannot be read"),
            }
        }
        let mut refused = "the bearer token is not accepted".to_string();
        if let Some(authn) = &self.authn {
            let mut clusters: Vec<&str> =
                self.accounts.iter().map(|a| a.cluster.as_str()).collect();
            clusters.sort();
            clusters.dedup();
            for cluster in clusters {
                let Ok(caller) = authn.authenticate(cluster, token).await else {
                    continue;
                };
                if self.accounts.iter().any(|a| {
                    a.cluster == cluster
                        && a.namespace == caller.namespace
                        && a.name == caller.service_account
                }) {
                    return Ok(());
                }
                refused = format!(
                    "service account {}/{} of cluster {cluster} is not in debugAuth.serviceAccounts",
                    caller.namespace, caller.service_account
                );
            }
        }
        Err(refused)
    }
}

async fn require_token(
    State(auth): State<Arc<DebugAuthn>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if OPEN_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match auth.check(bearer).await {
        Ok(()) => next.run(req).await,
        Err(why) => {
            tracing::debug!(path = %req.uri().path(), reason = %why, "debug request refused");
            let mut r = json_error(StatusCode::UNAUTHORIZED, why);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            r
        }
    }
}

type St = State<Arc<dyn DebugState>>;

fn json_response(status: StatusCode, body: &Value) -> Response {
    // Serialising a `serde_json::Value` cannot fail.
    let text = serde_json::to_string_pretty(body).unwrap_or_default();
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        text + "\n",
    )
        .into_response()
}

fn json_ok(body: &Value) -> Response {
    json_response(StatusCode::OK, body)
}

fn json_error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    json_response(status, &json!({ "error": msg.to_string() }))
}

async fn ready(State(s): St) -> Response {
    if s.draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if s.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// Liveness (`/healthz`): 200 whenever the runtime answers at all, also before
/// the first sync and while draining. It reads no state: a control plane that is
/// slow to sync or drains must not be restarted for it.
async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn prometheus() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::metrics().encode(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct GraphQuery {
    window: Option<String>,
}

/// `window`: seconds, 10 to 600 (the graph's history); default 60.
async fn graphz(State(s): St, Query(q): Query<GraphQuery>) -> Response {
    let window = match q.window.as_deref() {
        None | Some("") => crate::telemetry::graph::DEFAULT_WINDOW_SECS,
        Some(w) => match w.trim_end_matches('s').parse::<u64>() {
            Ok(n) if (10..=600).contains(&n) => n,
            _ => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    format!("window {w:?} is not a number of seconds from 10 to 600"),
                )
            }
        },
    };
    json_ok(&s.graphz(window))
}

#[derive(Debug, Deserialize)]
struct DumpQuery {
    #[serde(rename = "proxyID")]
    proxy_id: Option<String>,
}

async fn config_dump(State(s): St, Query(q): Query<DumpQuery>) -> Response {
    let Some(id) = q.proxy_id.filter(|id| !id.is_empty()) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "query parameter proxyID is required",
        );
    };
    let Some((id, sent)) = find_proxy(s.as_ref(), &id) else {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("proxy {id:?} is not connected"),
        );
    };
    match config_dump_json(&sent) {
        Ok(v) => json_ok(&v),
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("config dump of proxy {id:?}: {e}"),
        ),
    }
}

/// Look a proxy up by full node id, or, like istiod, by `POD.NS` (the third
/// `~`-separated part of an Istio node id) when that names exactly one proxy.
fn find_proxy(s: &dyn DebugState, query: &str) -> Option<(String, SentResources)> {
    if let Some(sent) = s.sent(query) {
        return Some((query.to_string(), sent));
    }
    if query.contains('~') {
        return None;
    }
    let mut matches = s
        .proxies()
        .into_iter()
        .filter(|id| id.split('~').nth(2) == Some(query));
    let id = matches.next()?;
    if matches.next().is_some() {
        return None;
    }
    let sent = s.sent(&id)?;
    Some((id, sent))
}

fn pack<M: Message + Name>(msg: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}

/// Envoy's admin `ConfigDump` (clusters, endpoints, listeners, routes, secrets, in
/// Envoy's order) holding `sent`, as proto-JSON. Secrets' private keys and passwords
/// are redacted by `json`.
pub fn config_dump_json(sent: &SentResources) -> Result<Value, JsonError> {
    let resources = |t: TypeUrl| -> Result<Vec<(Arc<Resource>, Any)>, JsonError> {
        sent.get(&t)
            .into_iter()
            .flatten()
            .map(|r| {
                let any = Any::decode(r.any.as_ref()).map_err(|source| JsonError::Decode {
                    type_name: format!("google.protobuf.Any ({} {})", t.short(), r.name),
                    source,
                })?;
                Ok((r.clone(), any))
            })
            .collect()
    };
    let clusters = admin::ClustersConfigDump {
        dynamic_active_clusters: resources(TypeUrl::Cluster)?
            .into_iter()
            .map(|(r, any)| admin::clusters_config_dump::DynamicCluster {
                version_info: r.version.to_string(),
                cluster: Some(any),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let endpoints = admin::EndpointsConfigDump {
        dynamic_endpoint_configs: resources(TypeUrl::Endpoint)?
            .into_iter()
            .map(
                |(r, any)| admin::endpoints_config_dump::DynamicEndpointConfig {
                    version_info: r.version.to_string(),
                    endpoint_config: Some(any),
                    ..Default::default()
                },
            )
            .collect(),
        ..Default::default()
    };
    let listeners = admin::ListenersConfigDump {
        dynamic_listeners: resources(TypeUrl::Listener)?
            .into_iter()
            .map(|(r, any)| admin::listeners_config_dump::DynamicListener {
                name: r.name.to_string(),
                active_state: Some(admin::listeners_config_dump::DynamicListenerState {
                    version_info: r.version.to_string(),
                    listener: Some(any),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let routes = admin::RoutesConfigDump {
        dynamic_route_configs: resources(TypeUrl::Route)?
            .into_iter()
            .map(|(r, any)| admin::routes_config_dump::DynamicRouteConfig {
                version_info: r.version.to_string(),
                route_config: Some(any),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let secrets = admin::SecretsConfigDump {
        dynamic_active_secrets: resources(TypeUrl::Secret)?
            .into_iter()
            .map(|(r, any)| admin::secrets_config_dump::DynamicSecret {
                name: r.name.to_string(),
                version_info: r.version.to_string(),
                secret: Some(any),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let dump = admin::ConfigDump {
        configs: vec![
            pack(&clusters),
            pack(&endpoints),
            pack(&listeners),
            pack(&routes),
            pack(&secrets),
        ],
    };
    json::message_to_json(&admin::ConfigDump::full_name(), &dump)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        secret, Secret, TlsCertificate,
    };
    use std::sync::atomic::{AtomicBool, Ordering};

    const GW: &str = "router~10.0.0.1~gw-1.istio-system~istio-system.svc.cluster.local";

    struct Fake {
        ready: AtomicBool,
        draining: AtomicBool,
        sent: BTreeMap<String, SentResources>,
    }

    impl DebugState for Fake {
        fn ready(&self) -> bool {
            self.ready.load(Ordering::SeqCst)
        }
        fn draining(&self) -> bool {
            self.draining.load(Ordering::SeqCst)
        }
        fn syncz(&self) -> Value {
            json!([{ "proxy": GW }])
        }
        fn proxies(&self) -> Vec<String> {
            self.sent.keys().cloned().collect()
        }
        fn sent(&self, proxy_id: &str) -> Option<SentResources> {
            self.sent.get(proxy_id).cloned()
        }
        fn registryz(&self) -> Value {
            json!({ "services": ["web.ns.svc.cluster.local"] })
        }
        fn configz(&self) -> Value {
            json!({ "rejected": [] })
        }
        fn clusterz(&self) -> Value {
            json!([{ "name": "cluster1", "synced": true }])
        }
    }

    fn fake() -> Arc<Fake> {
        let cluster = Cluster {
            name: "outbound|80||web.ns.svc.cluster.local".into(),
            ..Default::default()
        };
        let cla = ClusterLoadAssignment {
            cluster_name: cluster.name.clone(),
            ..Default::default()
        };
        let listener = Listener {
            name: "0.0.0.0_80".into(),
            ..Default::default()
        };
        let route = RouteConfiguration {
            name: "http.80".into(),
            ..Default::default()
        };
        let secret = Secret {
            name: "default".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                private_key: Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineBytes(
                        b"SUPERSECRETKEY".to_vec(),
                    )),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        let mut sent = SentResources::new();
        sent.insert(
            TypeUrl::Cluster,
            vec![Resource::encode(
                TypeUrl::Cluster,
                cluster.name.clone(),
                &cluster,
            )],
        );
        sent.insert(
            TypeUrl::Endpoint,
            vec![Resource::encode(
                TypeUrl::Endpoint,
                cla.cluster_name.clone(),
                &cla,
            )],
        );
        sent.insert(
            TypeUrl::Listener,
            vec![Resource::encode(
                TypeUrl::Listener,
                listener.name.clone(),
                &listener,
            )],
        );
        sent.insert(
            TypeUrl::Route,
            vec![Resource::encode(TypeUrl::Route, route.name.clone(), &route)],
        );
        sent.insert(
            TypeUrl::Secret,
            vec![Resource::encode(TypeUrl::Secret, "default", &secret)],
        );
        Arc::new(Fake {
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            sent: [(GW.to_string(), sent)].into(),
        })
    }

    async fn start(state: Arc<Fake>) -> (String, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, state, async {
            let _ = rx.await;
        }));
        (base, tx)
    }

    #[tokio::test]
    async fn ready_follows_state() {
        let state = fake();
        let (base, _stop) = start(state.clone()).await;
        let r = reqwest::get(format!("{base}/ready")).await.unwrap();
        assert_eq!(r.status(), 503);
        state.ready.store(true, Ordering::SeqCst);
        let r = reqwest::get(format!("{base}/ready")).await.unwrap();
        assert_eq!(r.status(), 200);
        state.draining.store(true, Ordering::SeqCst);
        let r = reqwest::get(format!("{base}/ready")).await.unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(r.text().await.unwrap(), "draining\n");
    }

    #[tokio::test]
    async fn healthz_answers_in_every_state() {
        let state = fake();
        let (base, _stop) = start(state.clone()).await;
        for (ready, draining) in [(false, false), (true, false), (true, true), (false, true)] {
            state.ready.store(ready, Ordering::SeqCst);
            state.draining.store(draining, Ordering::SeqCst);
            let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
            assert_eq!(r.status(), 200, "ready={ready} draining={draining}");
            assert_eq!(r.text().await.unwrap(), "ok\n");
        }
    }

    #[tokio::test]
    async fn config_dump_is_envoy_proto_json() {
        let (base, _stop) = start(fake()).await;
        let url = format!("{base}/debug/config_dump?proxyID={}", GW);
        let r = reqwest::get(url).await.unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(!text.contains("SUPERSECRETKEY"));
        // base64 of the key must not leak either.
        assert!(!text.contains("U1VQRVJTRUNSRVRLRVk"));
        let v: Value = serde_json::from_str(&text).unwrap();
        let configs = v["configs"].as_array().unwrap();
        let types: Vec<&str> = configs
            .iter()
            .map(|c| c["@type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
                "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
                "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
            ]
        );
        let cluster = &configs[0]["dynamic_active_clusters"][0]["cluster"];
        assert_eq!(cluster["@type"], TypeUrl::Cluster.as_str());
        assert_eq!(cluster["name"], "outbound|80||web.ns.svc.cluster.local");
        let cla = &configs[1]["dynamic_endpoint_configs"][0]["endpoint_config"];
        assert_eq!(cla["@type"], TypeUrl::Endpoint.as_str());
        let l = &configs[2]["dynamic_listeners"][0];
        assert_eq!(l["name"], "0.0.0.0_80");
        assert_eq!(
            l["active_state"]["listener"]["@type"],
            TypeUrl::Listener.as_str()
        );
        let rc = &configs[3]["dynamic_route_configs"][0]["route_config"];
        assert_eq!(rc["name"], "http.80");
        let key = &configs[4]["dynamic_active_secrets"][0]["secret"]["tls_certificate"]
            ["private_key"]["inline_bytes"];
        // proto-JSON prints bytes as base64: "[redacted]".
        assert_eq!(key, "W3JlZGFjdGVkXQ==");
    }

    #[tokio::test]
    async fn config_dump_by_pod_name_and_unknown_proxy() {
        let (base, _stop) = start(fake()).await;
        let r = reqwest::get(format!(
            "{base}/debug/config_dump?proxyID=gw-1.istio-system"
        ))
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
        let r = reqwest::get(format!("{base}/debug/config_dump?proxyID=nope"))
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains("nope"));
        let r = reqwest::get(format!("{base}/debug/config_dump"))
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    }

    #[tokio::test]
    async fn json_pages_and_metrics() {
        let (base, _stop) = start(fake()).await;
        for (path, want) in [
            ("/debug/syncz", json!([{ "proxy": GW }])),
            (
                "/debug/registryz",
                json!({ "services": ["web.ns.svc.cluster.local"] }),
            ),
            ("/debug/configz", json!({ "rejected": [] })),
            (
                "/debug/clusterz",
                json!([{ "name": "cluster1", "synced": true }]),
            ),
        ] {
            let r = reqwest::get(format!("{base}{path}")).await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            assert_eq!(r.headers()["content-type"], "application/json", "{path}");
            assert_eq!(r.json::<Value>().await.unwrap(), want, "{path}");
        }
        let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        let text = r.text().await.unwrap();
        // Other tests in this process move the values; the names are what is fixed.
        for name in [
            "pilot_xds gauge",
            "pilot_xds_send_bytes counter",
            "pilot_proxy_convergence_time histogram",
        ] {
            assert!(text.contains(&format!("# TYPE {name}")), "{name} in {text}");
        }
    }
}
