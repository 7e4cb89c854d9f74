//! The e-commerce demo of seed 004 (Tencent's mesh quick start) as a fixture for
//! traffic-management tests: namespace `base` with `frontend`, `product` (v1, v2),
//! `user` (two v1 pods), `cart` (3 replicas), `order` (v1, v2) and `stock`, every
//! pod a [`Backend`] on its own `127.A.B.x` naming itself; a real crossmesh; a
//! NONE-mode Envoy sidecar for the frontend on `.2` (egress listeners on every
//! service port, ingress on the frontend port forwarding to a small frontend app
//! on `127.0.0.1`); and one or two Envoy ingress gateways (`.1`, `.3`).
//!
//! The frontend app answers `frontend-v1`, or for `/call/SVC/rest` calls
//! `http://<sidecar>:<SVC port>/rest` with `Host: SVC` through its sidecar (as the
//! demo's frontend calls its backends), copying `cookie` and `userid` headers.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Response;

use super::backend::Backend;
use super::control_plane::{bootstrap, bootstrap_gateway, ControlPlane, GatewayProxy};
use super::envoy::Envoy;
use super::manifests::{self, cluster, Mesh};
use super::net::{free_port, Subnet};
use super::{wait_for, CONVERGE};

pub const NS: &str = "base";

/// (service, [(pod, version, host byte)]).
pub const PODS: [(&str, &[(&str, &str, u8)]); 6] = [
    (
        "product",
        &[("product-v1", "v1", 21), ("product-v2", "v2", 22)],
    ),
    ("user", &[("user-v1-a", "v1", 31), ("user-v1-b", "v1", 32)]),
    (
        "cart",
        &[
            ("cart-0", "v1", 41),
            ("cart-1", "v1", 42),
            ("cart-2", "v1", 43),
        ],
    ),
    ("order", &[("order-v1", "v1", 51), ("order-v2", "v2", 52)]),
    ("stock", &[("stock-v1", "v1", 61)]),
    ("frontend", &[]),
];

pub const SIDECAR_HOST: u8 = 2;

pub fn fqdn(svc: &str) -> String {
    format!("{svc}.{NS}.svc.cluster.local")
}

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub headers: reqwest::header::HeaderMap,
    pub elapsed: Duration,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// `GET http://addr path` with `Host` and extra headers, no connection reuse, no
/// redirects followed.
pub async fn request(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("http://{addr}{path}");
    let mut req = client.get(&url).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let start = Instant::now();
    let r = req
        .send()
        .await
        .map_err(|e| format!("GET {url} (Host {host}): {e}"))?;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.map_err(|e| e.to_string())?;
    Ok(Answer {
        status,
        body,
        headers,
        elapsed: start.elapsed(),
    })
}

#[derive(Clone)]
struct AppState {
    sidecar: Ipv4Addr,
    ports: BTreeMap<String, u16>,
}

async fn frontend_app(State(s): State<AppState>, req: Request) -> Response<Body> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let Some(rest) = path.strip_prefix("/call/") else {
        return Response::new(Body::from("frontend-v1"));
    };
    let (svc, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(port) = s.ports.get(svc) else {
        let mut r = Response::new(Body::from(format!("no service {svc}")));
        *r.status_mut() = axum::http::StatusCode::NOT_FOUND;
        return r;
    };
    // Besides the demo's own headers, the trace context Istio asks every
    // application to copy (the Zipkin tracer's B3, OpenTelemetry's W3C).
    let fwd: Vec<(String, String)> = ["cookie", "userid"]
        .iter()
        .chain(TRACE_HEADERS.iter())
        .filter_map(|h| {
            req.headers()
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .map(|v| (h.to_string(), v.to_string()))
        })
        .collect();
    let fwd: Vec<(&str, &str)> = fwd.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    match request(
        SocketAddr::from((s.sidecar, *port)),
        svc,
        &format!("/{tail}"),
        &fwd,
    )
    .await
    {
        Ok(a) => {
            let mut r = Response::new(Body::from(a.body));
            *r.status_mut() =
                axum::http::StatusCode::from_u16(a.status).unwrap_or(axum::http::StatusCode::OK);
            r
        }
        Err(e) => {
            let mut r = Response::new(Body::from(e));
            *r.status_mut() = axum::http::StatusCode::BAD_GATEWAY;
            r
        }
    }
}

/// Istio's list of headers an application propagates for tracing.
pub const TRACE_HEADERS: [&str; 9] = [
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "traceparent",
    "tracestate",
];

pub struct Shop {
    pub subnet: Subnet,
    pub mesh: Mesh,
    pub pod_port: u16,
    /// Service port of each service (the sidecar listens on `.2:<port>`).
    pub ports: BTreeMap<String, u16>,
    pub gw_ports: [u16; 2],
    pub backends: Vec<Backend>,
    pub cp: ControlPlane,
    pub sidecar: Envoy,
    pub gateways: Vec<Envoy>,
    app: tokio::task::JoinHandle<()>,
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.app.abort();
    }
}

/// The quick start's last step, in force in every scenario as in the guide: no
/// service of `base` may be called from namespace `test` (a DENY on the peer's
/// identity; `tests/authz_e2e.rs` checks it with sidecars holding identities).
pub const SEED_DENY: &str = "apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: base-authz
  namespace: base
spec:
  action: DENY
  rules:
    - from:
      - source:
          namespaces:
            - test
";

/// The base Istio config: Gateways `frontend-gw` (port gw_ports[0], selects
/// `istio=ingressgateway`) and `frontend-gw-2` (gw_ports[1], selects
/// `istio=ingressgateway-2`), the frontend VirtualService bound to both, and the
/// frontend's Sidecar (ingress to the app), and the quick start's DENY
/// (`SEED_DENY`). The frontend VirtualService is added
/// unless the test's config has its own `frontend-vs`.
fn base_config(gw_ports: [u16; 2], fe_port: u16, app_port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {{name: frontend-gw, namespace: {NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {p0}, name: http, protocol: HTTP}}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {{name: frontend-gw-2, namespace: {NS}}}
spec:
  selector: {{istio: ingressgateway-2}}
  servers:
  - port: {{number: {p1}, name: http, protocol: HTTP}}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata: {{name: frontend, namespace: {NS}}}
spec:
  workloadSelector: {{labels: {{app: frontend}}}}
  ingress:
  - port: {{number: {fe_port}, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:{app_port}
  egress:
  - hosts: ['./*']
---
{SEED_DENY}",
        p0 = gw_ports[0],
        p1 = gw_ports[1],
    )
}

/// The frontend VirtualService at the gateways (extra `http` fields, e.g. a
/// timeout, go in `route_extra`, indented for the route entry).
pub fn frontend_vs(route_extra: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: frontend-vs, namespace: {NS}}}
spec:
  hosts: ['*']
  gateways: [frontend-gw, frontend-gw-2]
  http:
  - route:
    - destination: {{host: frontend}}
{route_extra}"
    )
}

impl Shop {
    /// Start everything with `istio` (extra Istio YAML, `---`-separated) and wait
    /// until the sidecar and the gateway(s) are LIVE. `gateways`: 1 or 2.
    pub async fn start(sotw: bool, gateways: usize, istio: &str) -> Shop {
        Shop::start_with_mesh(sotw, gateways, istio, "", |_| Vec::new()).await
    }

    /// [`Shop::start`] with `mesh_extra` appended to the mesh file and the
    /// `cluster_files` ((file name, YAML), given the shop's subnet) written to
    /// cluster1 before crossmesh starts. Hosts `.70`-`.79` of the subnet are
    /// free for the test's own pods.
    pub async fn start_with_mesh(
        sotw: bool,
        gateways: usize,
        istio: &str,
        mesh_extra: &str,
        cluster_files: impl FnOnce(&Subnet) -> Vec<(String, String)>,
    ) -> Shop {
        let subnet = Subnet::claim();
        let mesh = Mesh::new(&[cluster("cluster1", None)]);
        if !mesh_extra.is_empty() {
            let mut text = std::fs::read_to_string(&mesh.mesh_file).expect("read mesh file");
            text.push('\n');
            text.push_str(mesh_extra);
            std::fs::write(&mesh.mesh_file, text).expect("write mesh file");
        }
        for (file, yaml) in cluster_files(&subnet) {
            mesh.write_cluster("cluster1", &file, &yaml);
        }
        let pod_port = free_port();
        let gw_ports = [free_port(), free_port()];
        let fe_port = free_port();
        let app_port = free_port();
        let mut ports = BTreeMap::new();
        let mut backends = Vec::new();
        for (svc, pods) in PODS {
            let port = if svc == "frontend" {
                fe_port
            } else {
                free_port()
            };
            ports.insert(svc.to_string(), port);
            let target = if svc == "frontend" { fe_port } else { pod_port };
            mesh.write_cluster(
                "cluster1",
                &format!("svc-{svc}.yaml"),
                &manifests::service(NS, svc, port, target, &[("app", svc)]),
            );
            for (pod, version, host) in pods.iter() {
                let ip = subnet.ip(*host);
                mesh.write_cluster(
                    "cluster1",
                    &format!("pod-{pod}.yaml"),
                    &manifests::pod(
                        NS,
                        pod,
                        &[("app", svc), ("version", version)],
                        ip,
                        pod_port,
                        true,
                        None,
                    ),
                );
                backends.push(Backend::start(ip, pod_port, pod).await);
            }
        }
        // The frontend pod is the sidecar's address; its app runs on 127.0.0.1.
        mesh.write_cluster(
            "cluster1",
            "pod-frontend-v1.yaml",
            &manifests::pod(
                NS,
                "frontend-v1",
                &[("app", "frontend"), ("version", "v1")],
                subnet.ip(SIDECAR_HOST),
                fe_port,
                true,
                None,
            ),
        );
        let app_listener = tokio::net::TcpListener::bind(("127.0.0.1", app_port))
            .await
            .expect("bind frontend app");
        let state = AppState {
            sidecar: subnet.ip(SIDECAR_HOST),
            ports: ports.clone(),
        };
        let app = tokio::spawn(async move {
            let router = axum::Router::new().fallback(frontend_app).with_state(state);
            let _ = axum::serve(app_listener, router).await;
        });
        let mut base = base_config(gw_ports, fe_port, app_port);
        if !istio.contains("name: frontend-vs") {
            base.push_str("---\n");
            base.push_str(&frontend_vs(""));
        }
        mesh.write_istio("base.yaml", &base);
        if !istio.trim().is_empty() {
            mesh.write_istio("test.yaml", istio);
        }
        let cp = ControlPlane::start(&mesh.mesh_file).await;
        let sidecar_yaml = bootstrap(
            &[
                "bootstrap".into(),
                // Outlier-detection stats (e2e_traffic): not kept by the
                // default (graph) stats matcher.
                "--stats-matcher".into(),
                "all".into(),
                "--role".into(),
                "sidecar".into(),
                "--name".into(),
                "frontend-v1".into(),
                "--namespace".into(),
                NS.into(),
                "--ip".into(),
                subnet.ip(SIDECAR_HOST).to_string(),
                "--labels".into(),
                "app=frontend,version=v1".into(),
                "--xds-address".into(),
                cp.xds.to_string(),
                "--admin-port".into(),
                free_port().to_string(),
                "--cluster-id".into(),
                "cluster1".into(),
                "--interception".into(),
                "none".into(),
            ]
            .into_iter()
            .chain(sotw.then(|| "--sotw".to_string()))
            .collect::<Vec<String>>(),
        );
        let sidecar = Envoy::start("frontend-sidecar", &sidecar_yaml).await;
        let mut gws = Vec::new();
        for i in 0..gateways {
            let mut gw =
                GatewayProxy::ingress(subnet.ip(if i == 0 { 1 } else { 3 }), "cluster1", sotw);
            if i == 1 {
                gw.name = "istio-ingressgateway-2-0".into();
                gw.labels = vec![
                    ("app".into(), "istio-ingressgateway-2".into()),
                    ("istio".into(), "ingressgateway-2".into()),
                ];
            }
            let yaml = bootstrap_gateway(&gw, cp.xds, free_port());
            gws.push(Envoy::start(&format!("gateway-{i}"), &yaml).await);
        }
        sidecar.wait_ready(CONVERGE).await;
        for g in &gws {
            g.wait_ready(CONVERGE).await;
        }
        Shop {
            subnet,
            mesh,
            pod_port,
            ports,
            gw_ports,
            backends,
            cp,
            sidecar,
            gateways: gws,
            app,
        }
    }

    /// The sidecar's egress listener for `svc`.
    pub fn egress(&self, svc: &str) -> SocketAddr {
        SocketAddr::from((self.subnet.ip(SIDECAR_HOST), self.ports[svc]))
    }

    /// Gateway `i`'s listener.
    pub fn gateway(&self, i: usize) -> SocketAddr {
        SocketAddr::from((self.subnet.ip(if i == 0 { 1 } else { 3 }), self.gw_ports[i]))
    }

    /// A request through the frontend's sidecar to `svc` (Host: `svc`).
    pub async fn call(&self, svc: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        request(self.egress(svc), svc, path, headers)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn backend(&self, name: &str) -> &Backend {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name}"))
    }

    /// Wait until `svc` through the sidecar answers with `want` (body) given
    /// `headers`.
    pub async fn wait_body(&self, svc: &str, headers: &[(&str, &str)], want: &str) {
        let what = format!("{svc} via the frontend sidecar answered by {want}");
        wait_for(&what, CONVERGE, || async move {
            let a = request(self.egress(svc), svc, "/", headers).await?;
            if a.status == 200 && a.body == want {
                Ok(())
            } else {
                Err(format!("{} {:?}", a.status, a.body))
            }
        })
        .await
    }

    /// Wait until Envoy `e` has `n` hosts in `cluster`.
    /// order-v3: a pod of `order` (labels `app: order, version: v3`) on
    /// `.HOST` of the shop's subnet, with its own sidecar (a real Envoy, NONE
    /// interception, `crossmesh bootstrap`'s defaults) whose Sidecar ingress
    /// hands inbound requests to an app on `127.0.0.1:app_port` and whose
    /// egress reaches every service of the namespace. Returns once the
    /// sidecar's inbound listener is up.
    pub async fn start_order_v3_sidecar(&self, host: u8, app_port: u16) -> Envoy {
        let ip = self.subnet.ip(host);
        self.mesh.write_istio(
            "order-v3-sidecar.yaml",
            &format!(
                "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: order-v3, namespace: {NS}}}
spec:
  workloadSelector: {{labels: {{app: order, version: v3}}}}
  ingress:
  - port: {{number: {port}, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:{app_port}
  egress:
  - hosts: ['./*']
",
                port = self.pod_port
            ),
        );
        self.mesh.write_cluster(
            "cluster1",
            "pod-order-v3.yaml",
            &manifests::pod(
                NS,
                "order-v3",
                &[("app", "order"), ("version", "v3")],
                ip,
                self.pod_port,
                true,
                None,
            ),
        );
        let yaml = bootstrap(
            &[
                "bootstrap",
                "--role",
                "sidecar",
                "--name",
                "order-v3",
                "--namespace",
                NS,
                "--ip",
                &ip.to_string(),
                "--labels",
                "app=order,version=v3",
                "--xds-address",
                &self.cp.xds.to_string(),
                "--admin-port",
                &free_port().to_string(),
                "--cluster-id",
                "cluster1",
                "--interception",
                "none",
            ]
            .map(String::from),
        );
        let sidecar = Envoy::start("order-v3-sidecar", &yaml).await;
        sidecar.wait_ready(CONVERGE).await;
        // Envoy is ready once its first config is in; the inbound listener of
        // the Sidecar's ingress may come with a later push (the Sidecar file
        // and the pod are read by separate watchers).
        sidecar.wait_listener_at(ip.into(), self.pod_port).await;
        sidecar
    }

    pub async fn wait_hosts(&self, e: &Envoy, cluster: &str, n: usize) {
        let what = format!("{} has {n} hosts in {cluster}", e.name);
        wait_for(&what, CONVERGE, || async move {
            let h = e.cluster_hosts(cluster).await?;
            if h.len() == n {
                Ok(())
            } else {
                Err(format!("{h:?}"))
            }
        })
        .await
    }
}
