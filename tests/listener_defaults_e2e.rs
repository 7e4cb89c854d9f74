//! Istio's HTTP listener defaults and the meshConfig access log (issue 14 item
//! 5), end to end with real Envoys:
//! - a WebSocket client echoes messages through the ingress gateway and through
//!   a client sidecar's outbound listener, both reaching pod `ws-0` through its
//!   own sidecar's inbound listener (the three HTTP connection manager classes);
//! - access log lines appear in the mesh file's `accessLogFile`, in Istio's
//!   default TEXT format and in a JSON format with custom keys;
//! - `defaultConfig.gatewayTopology.numTrustedProxies` decides which
//!   `X-Forwarded-For` entry the gateway trusts;
//! - a bad `accessLogFormat` is refused by `crossmesh validate` and `serve`
//!   with the operator named, and crossmesh's format rules agree with Envoy's
//!   (each operator crossmesh accepts loads into a real Envoy, each format it
//!   refuses Envoy refuses too).
//!
//! Addresses: the test's own `127.A.B.0/24`: gateway `.1`, pod `ws-0` and its
//! sidecar `.11`, the client sidecar `.21`. Proxies use the plaintext xDS port
//! (no identity: plaintext between them).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::control_plane::{
    bootstrap, bootstrap_gateway, crossmesh_bin, ControlPlane, GatewayProxy, StartOptions,
};
use support::envoy::{envoy_bin, Envoy};
use support::manifests::{self, cluster, Mesh};
use support::net::{free_port, Subnet};
use support::websocket::{self, EchoPod};
use support::{wait_for, CONVERGE};

const NS: &str = "test";
const HOST: &str = "ws.example.com";
const SVC_HOST: &str = "ws.test.svc.cluster.local";

struct Fixture {
    subnet: Subnet,
    _mesh: Mesh,
    svc_port: u16,
    tcp_port: u16,
    gw_port: u16,
    pod: EchoPod,
    log: PathBuf,
    _cp: ControlPlane,
    _envoys: Vec<Envoy>,
}

impl Fixture {
    /// Pod `ws-0` (its sidecar's inbound port `ws` routes to the echo pod), the
    /// gateway for `ws.example.com`, a client sidecar; `mesh_extra` is appended
    /// to the mesh file (`{log}` stands for the access log path).
    async fn start(mesh_extra: &str) -> Fixture {
        let subnet = Subnet::claim();
        let mesh = Mesh::new(&[cluster("cluster1", None)]);
        let log = mesh.root().join("access.log");
        let mut text = std::fs::read_to_string(&mesh.mesh_file).expect("mesh file");
        text.push_str(&mesh_extra.replace("{log}", &log.display().to_string()));
        std::fs::write(&mesh.mesh_file, text).expect("mesh file");
        let (svc_port, inbound_port, app_port, gw_port, tcp_port) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let pod_ip = subnet.ip(11);
        mesh.write_cluster(
            "cluster1",
            "ws.yaml",
            &[
                manifests::service(NS, "ws", svc_port, inbound_port, &[("app", "ws")]),
                manifests::pod(
                    NS,
                    "ws-0",
                    &[("app", "ws")],
                    pod_ip,
                    inbound_port,
                    true,
                    None,
                ),
                // The echo pod's own port as a plain TCP service (no sidecar
                // in between): clients' sidecars TCP-proxy to it.
                format!(
                    "apiVersion: v1
kind: Service
metadata: {{name: tcp-echo, namespace: {NS}}}
spec:
  selector: {{app: ws}}
  ports:
  - {{name: tcp, port: {tcp_port}, targetPort: {app_port}}}
"
                ),
            ]
            .join("\n---\n"),
        );
        let pod = EchoPod::start(pod_ip, app_port, "ws-0").await;
        mesh.write_istio(
            "istio.yaml",
            &[
                manifests::gateway(
                    "istio-system",
                    "edge",
                    &[("istio", "ingressgateway")],
                    gw_port,
                    &[HOST],
                ),
                manifests::virtual_service(
                    NS,
                    "ws",
                    &["istio-system/edge"],
                    &[HOST],
                    SVC_HOST,
                    svc_port,
                ),
                format!(
                    "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: ws, namespace: {NS}}}
spec:
  workloadSelector: {{labels: {{app: ws}}}}
  ingress:
  - port: {{number: {inbound_port}, protocol: HTTP, name: ws}}
    defaultEndpoint: {pod_ip}:{app_port}
"
                ),
            ]
            .join("\n---\n"),
        );
        let cp = ControlPlane::start(&mesh.mesh_file).await;
        let sidecar = |name: &str, host: u8, app: &str| {
            bootstrap(
                &[
                    "bootstrap",
                    "--role",
                    "sidecar",
                    "--interception",
                    "none",
                    "--name",
                    name,
                    "--namespace",
                    NS,
                    "--ip",
                    &subnet.ip(host).to_string(),
                    "--labels",
                    &format!("app={app}"),
                    "--xds-address",
                    &cp.xds.to_string(),
                    "--admin-port",
                    "0",
                    "--cluster-id",
                    "cluster1",
                ]
                .map(String::from),
            )
        };
        let ws_sidecar = Envoy::start("ws-0", &sidecar("ws-0", 11, "ws")).await;
        let client = Envoy::start("client-0", &sidecar("client-0", 21, "client")).await;
        let gw = GatewayProxy::ingress(subnet.ip(1), "cluster1", false);
        let gateway = Envoy::start("gateway", &bootstrap_gateway(&gw, cp.xds, free_port())).await;
        for e in [&ws_sidecar, &client, &gateway] {
            e.wait_ready(CONVERGE).await;
        }
        let f = Fixture {
            subnet,
            _mesh: mesh,
            svc_port,
            tcp_port,
            gw_port,
            pod,
            log,
            _cp: cp,
            _envoys: vec![ws_sidecar, client, gateway],
        };
        wait_for(
            "ws-0 answers through the gateway and the client sidecar",
            CONVERGE,
            || async {
                for (addr, host) in [(f.gw(), HOST), (f.client(), SVC_HOST)] {
                    let (status, head, _) = websocket::get(addr, host, "/ready", &[]).await?;
                    if status != 200 || websocket::header(&head, "x-pod") != Some("ws-0") {
                        return Err(format!("{addr}: {status} {head:?}"));
                    }
                }
                Ok(())
            },
        )
        .await;
        f
    }

    fn gw(&self) -> SocketAddr {
        SocketAddr::from((self.subnet.ip(1), self.gw_port))
    }

    /// The client sidecar's outbound listener for the `ws` service.
    fn client(&self) -> SocketAddr {
        SocketAddr::from((self.subnet.ip(21), self.svc_port))
    }

    /// Lines of the access log holding `needle` (all proxies write the file).
    fn log_lines(&self, needle: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// Wait until `n` lines hold `needle`; returns them.
    async fn wait_log(&self, needle: &str, n: usize) -> Vec<String> {
        wait_for(
            &format!("{n} access log lines with {needle}"),
            CONVERGE,
            || async {
                let lines = self.log_lines(needle);
                if lines.len() >= n {
                    Ok(lines)
                } else {
                    Err(format!("{lines:?} in {}", self.log.display()))
                }
            },
        )
        .await
    }
}

/// Messages sent over one WebSocket through `addr` come back unchanged, and
/// the upgrade was answered by `ws-0`.
async fn echo_through(addr: SocketAddr, host: &str, what: &str) {
    let mut ws = websocket::Client::connect(addr, host, "/chat")
        .await
        .unwrap_or_else(|e| panic!("WebSocket upgrade through {what}: {e}"));
    assert_eq!(
        websocket::header(&ws.response_head, "x-pod"),
        Some("ws-0"),
        "{what}: the upgrade reached ws-0: {}",
        ws.response_head
    );
    for msg in ["hello", "second message", &"x".repeat(300)] {
        let got = ws.echo(msg).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got, msg, "{what}: echoed payload");
    }
    ws.close().await;
}

/// WebSocket upgrades pass the gateway, the client sidecar's outbound and
/// ws-0's sidecar inbound (Istio's `upgrade_configs: [websocket]` on every
/// HTTP connection manager); without them Envoy answers the upgrade 403/404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echoes_through_the_gateway_and_a_sidecar() {
    let f = Fixture::start("").await;
    let before = f.pod.echoed();
    echo_through(f.gw(), HOST, "the gateway").await;
    echo_through(f.client(), SVC_HOST, "the client sidecar").await;
    assert_eq!(f.pod.echoed() - before, 6, "ws-0 echoed every message");
    assert!(
        f.log_lines("").is_empty(),
        "no accessLogFile, no access log (Istio's default)"
    );
}

/// `accessLogFile` with the default encoding writes Istio's TEXT format: one
/// line per request at each proxy it passed (gateway, ws-0's sidecar), with
/// method, path, protocol, status, user agent, authority and upstream cluster
/// where Istio's format puts them. `numTrustedProxies: 1` makes the gateway
/// trust the last `X-Forwarded-For` entry as the client address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_in_istio_text_format_and_trusted_hops() {
    let f = Fixture::start(
        "accessLogFile: {log}\ndefaultConfig:\n  gatewayTopology:\n    numTrustedProxies: 1\n",
    )
    .await;
    let (status, _, body) = websocket::get(
        f.gw(),
        HOST,
        "/text-line?q=1",
        &[
            ("user-agent", "ua-text-1"),
            ("x-forwarded-for", "203.0.113.7"),
        ],
    )
    .await
    .expect("GET through the gateway");
    assert_eq!(status, 200);
    // The gateway (use_remote_address, one trusted hop) took 203.0.113.7 as
    // the client and told the upstream.
    assert_eq!(
        websocket::header(&format!("x\r\n{body}"), "x-envoy-external-address"),
        Some("203.0.113.7"),
        "the request head ws-0 saw: {body}"
    );
    let lines = f.wait_log("\"GET /text-line?q=1 HTTP/1.1\" 200", 2).await;
    let gw_line = lines
        .iter()
        .find(|l| l.contains("outbound|"))
        .unwrap_or_else(|| panic!("the gateway's line (to outbound|...): {lines:?}"));
    let inbound_line = lines
        .iter()
        .find(|l| l.contains("inbound|"))
        .unwrap_or_else(|| panic!("ws-0 sidecar's line (to inbound|...): {lines:?}"));
    // `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"
    // %RESPONSE_CODE% %RESPONSE_FLAGS% ... "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%"
    // "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% ...`
    assert!(gw_line.starts_with('['), "{gw_line}");
    assert!(
        gw_line.contains("\"GET /text-line?q=1 HTTP/1.1\" 200 - via_upstream"),
        "{gw_line}"
    );
    assert!(gw_line.contains("\"ua-text-1\""), "{gw_line}");
    assert!(gw_line.contains(&format!("\"{HOST}\"")), "{gw_line}");
    assert!(
        gw_line.contains(&format!(
            "\"{}\" outbound|{}||{SVC_HOST}",
            f.subnet.addr(11, 0).ip(),
            f.svc_port
        )) || gw_line.contains(&format!(" outbound|{}||{SVC_HOST} ", f.svc_port)),
        "{gw_line}"
    );
    assert!(inbound_line.contains("\"ua-text-1\""), "{inbound_line}");
}

/// `accessLogEncoding: JSON` with a custom `accessLogFormat` writes one JSON
/// object per request with exactly those keys; a WebSocket session is logged
/// with status 101 once it closes; TCP proxies log too (the virtual outbound
/// passthrough is a TCP proxy, and its log is the same file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_json_with_custom_keys() {
    let f = Fixture::start(
        "accessLogFile: {log}\naccessLogEncoding: JSON\naccessLogFormat: '{\"m\": \"%REQ(:METHOD)%\", \"p\": \"%REQ(:PATH)%\", \"code\": \"%RESPONSE_CODE%\", \"up\": \"%UPSTREAM_CLUSTER_RAW%\", \"n\": {\"ua\": \"%REQ(USER-AGENT)%\"}}'\n",
    )
    .await;
    let (status, _, _) = websocket::get(f.gw(), HOST, "/json-line", &[("user-agent", "ua-json")])
        .await
        .expect("GET");
    assert_eq!(status, 200);
    echo_through(f.gw(), HOST, "the gateway").await;
    let lines = f.wait_log("/json-line", 2).await;
    let objs: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let gw = objs
        .iter()
        .find(|o| o["up"].as_str().is_some_and(|u| u.starts_with("outbound|")))
        .unwrap_or_else(|| panic!("the gateway's line: {lines:?}"));
    assert_eq!(
        gw,
        &serde_json::json!({
            "m": "GET",
            "p": "/json-line",
            // Envoy 1.40 writes numeric operators as JSON numbers.
            "code": 200,
            "up": format!("outbound|{}||{SVC_HOST}", f.svc_port),
            "n": {"ua": "ua-json"},
        })
    );
    // The client sidecar's TCP proxy to tcp-echo logs the connection (no
    // HTTP fields: Envoy 1.40 writes them as JSON null).
    let tcp = SocketAddr::from((f.subnet.ip(21), f.tcp_port));
    let (status, head, _) = websocket::get(tcp, "tcp-echo", "/over-tcp", &[])
        .await
        .expect("GET over the TCP proxy");
    assert_eq!(
        (status, websocket::header(&head, "x-pod")),
        (200, Some("ws-0"))
    );
    let tcp_cluster = format!("outbound|{}||tcp-echo.{NS}.svc.cluster.local", f.tcp_port);
    let tcp_lines = f.wait_log(&tcp_cluster, 1).await;
    let o: serde_json::Value = serde_json::from_str(&tcp_lines[0]).expect("JSON line");
    assert_eq!(
        (&o["m"], &o["up"]),
        (&serde_json::Value::Null, &serde_json::json!(tcp_cluster))
    );
    let ws_lines = f.wait_log("\"/chat\"", 2).await;
    let upgraded = ws_lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|o| o["code"] == 101 && o["m"] == "GET")
        .count();
    assert_eq!(
        upgraded, 2,
        "the WebSocket session logged with 101 at the gateway and ws-0's sidecar: {ws_lines:?}"
    );
}

/// A mesh file whose `accessLogFormat` names an operator Envoy does not have:
/// `crossmesh validate` and `crossmesh serve` refuse it, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_access_log_format_is_refused_by_validate_and_serve() {
    let mesh = Mesh::new(&[cluster("cluster1", None)]);
    let mut text = std::fs::read_to_string(&mesh.mesh_file).expect("mesh file");
    text.push_str(
        "accessLogFile: /dev/stdout\naccessLogFormat: \"%START_TIME% %UPSTREAM_HOSTNAME%\"\n",
    );
    std::fs::write(&mesh.mesh_file, &text).expect("mesh file");
    let out = Command::new(crossmesh_bin())
        .arg("validate")
        .arg(&mesh.mesh_file)
        .output()
        .expect("run crossmesh validate");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "validate accepted it: {said}");
    assert!(
        said.contains(
            "accessLogFormat: %UPSTREAM_HOSTNAME% is not an Envoy access log command operator"
        ),
        "{said}"
    );
    let mut cp = ControlPlane::start_with(
        &mesh.mesh_file,
        StartOptions {
            no_wait_ready: true,
            ..Default::default()
        },
    )
    .await;
    let status = cp
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("serve exits");
    assert!(!status.success());
    assert!(cp.log().contains("%UPSTREAM_HOSTNAME%"), "{}", cp.log());
}

/// `envoy --mode validate` on a bootstrap whose listener logs with `format`:
/// Ok, or Envoy's reason.
fn envoy_validates(dir: &Path, format: &str) -> Result<(), String> {
    let bootstrap = serde_json::json!({
        "static_resources": {
            "listeners": [{
                "name": "l",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": "x",
                        "cluster": "c",
                        "access_log": [{
                            "name": "envoy.access_loggers.file",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                                "path": "/dev/null",
                                "log_format": {
                                    "text_format_source": {"inline_string": format},
                                    // As crossmesh adds it for %REQ_WITHOUT_QUERY%.
                                    "formatters": [{
                                        "name": "envoy.formatter.req_without_query",
                                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery"}
                                    }]
                                }
                            }
                        }]
                    }
                }]}]
            }],
            "clusters": [{"name": "c", "type": "STATIC", "load_assignment": {"cluster_name": "c"}}]
        }
    });
    let file = dir.join("validate.json");
    std::fs::write(&file, bootstrap.to_string()).expect("write bootstrap");
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "--log-level", "error", "-c"])
        .arg(&file)
        .output()
        .expect("run envoy --mode validate");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr))
    }
}

/// crossmesh's format check agrees with Envoy 1.40: every operator crossmesh
/// accepts (in each form it accepts) loads into a real Envoy, and every
/// format crossmesh refuses, Envoy refuses too.
#[test]
fn format_rules_agree_with_envoy() {
    use crossmesh::translate::access_log::{accepted_examples, check_format, ISTIO_TEXT_FORMAT};
    let dir = tempfile::tempdir().expect("tempdir");
    let accepted = [
        ISTIO_TEXT_FORMAT,
        "%REQ(:PATH)% %REQ(a?b):10% %RESP(x-y)% %TRAILER(grpc-status):3% %REQUEST_HEADER(?b)% \
         %RESPONSE_HEADER(a?)% %RESPONSE_TRAILER(t)% %REQ(%)%",
        "%START_TIME% %START_TIME(%s.%3f)% %START_TIME_LOCAL(%Y-%m-%d)% %EMIT_TIME% \
         %EMIT_TIME_LOCAL()% %DOWNSTREAM_PEER_CERT_V_START(%s)% %DOWNSTREAM_PEER_CERT_V_END% \
         %UPSTREAM_PEER_CERT_V_START% %UPSTREAM_PEER_CERT_V_END(%H)%",
        "%DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT(x)% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT% \
         %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% \
         %UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% %UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% \
         %RESPONSE_CODE_DETAILS(ALLOW_WHITESPACES)% %GRPC_STATUS% %GRPC_STATUS(NUMBER)% \
         %REQUESTED_SERVER_NAME(SNI_FIRST)% %REQUESTED_SERVER_NAME%",
        "%DYNAMIC_METADATA(ns:a:b):5% %CLUSTER_METADATA(ns)% %UPSTREAM_METADATA(ns:k)% \
         %FILTER_STATE(k)% %FILTER_STATE(k:PLAIN):4% %UPSTREAM_FILTER_STATE(k:TYPED)% \
         %FILTER_STATE(k:FIELD:f)% %ENVIRONMENT(HOME):3% %QUERY_PARAM(q)%",
        "100%% a%%b %RESPONSE_FLAGS%%% %START_TIME(a)b)%",
    ];
    // Every operator crossmesh accepts, in every form it accepts, in one format.
    let every = accepted_examples().join(" ");
    for f in accepted.into_iter().chain([every.as_str()]) {
        assert_eq!(check_format(f), Ok(()), "crossmesh refuses {f:?}");
        if let Err(e) = envoy_validates(dir.path(), f) {
            panic!("crossmesh accepts {f:?}, Envoy refuses it: {e}");
        }
    }
    let refused = [
        "100%",
        "% x",
        "%REQ(x)",
        "%REQ(x):%",
        "%REQ(a)x%",
        "%FOO%",
        "%req(x)%",
        "%REQ(a?b?c)%",
        "%REQ(a b)%",
        "%REQ(a:b)%",
        "%REQ(::a)%",
        "%REQ()%",
        "%REQ%",
        "%START_TIME:5%",
        "%START_TIME(%n)%",
        "%PROTOCOL(x)%",
        "%PROTOCOL:3%",
        "%CLUSTER_METADATA(ns):3%",
        "%DYNAMIC_METADATA()%",
        "%FILTER_STATE(k:BAD)%",
        "%GRPC_STATUS(x)%",
        "%RESPONSE_CODE_DETAILS(x):4%",
        "%REQUESTED_SERVER_NAME(x)%",
        "%REQ(a):18446744073709551616%",
        "%%%",
        "%REQ(x)%%",
    ];
    for f in refused {
        let ours = check_format(f);
        assert!(ours.is_err(), "crossmesh accepts {f:?}");
        if envoy_validates(dir.path(), f).is_ok() {
            panic!("crossmesh refuses {f:?} ({ours:?}), Envoy accepts it");
        }
    }
}

/// A gateway terminating MUTUAL TLS (Secret `xfcc-cert` through
/// `credentialName`, the gateway on the TLS xDS port) forwards the client
/// certificate to the pod as Istio's gateways do (`forward_client_cert_details:
/// SANITIZE_SET`, `set_current_client_cert_details` subject, cert, DNS, URI):
/// the pod sees `X-Forwarded-Client-Cert` with the client's subject, DNS SAN and
/// certificate, and a client's own `X-Forwarded-Client-Cert` is replaced. A
/// connection no filter chain matches is written by the listener's access log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_gateway_sets_xfcc_and_logs_unmatched_connections() {
    use support::tls::{self, Ca};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const GW_NS: &str = "istio-system";
    let subnet = Subnet::claim();
    let (mesh, issuer, tls_addr) =
        Mesh::secure_single_cluster("https://kubernetes.default.svc.cluster.local");
    let (pod_port, https_port) = (free_port(), free_port());
    let pod_ip = subnet.ip(11);
    let pod = EchoPod::start(pod_ip, pod_port, "web-0").await;
    let log = mesh.root().join("gw-access.log");
    let mut text = std::fs::read_to_string(&mesh.mesh_file).expect("mesh file");
    text.push_str(&format!("accessLogFile: {}\n", log.display()));
    std::fs::write(&mesh.mesh_file, text).expect("mesh file");
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let server = server_ca.leaf("gw", &["mtls.example.com"]);
    let client = client_ca.leaf("xfcc-client", &["client.example.com"]);
    mesh.write_cluster(
        "cluster1",
        "apps.yaml",
        &[
            manifests::service(NS, "web", 8080, pod_port, &[("app", "web")]),
            manifests::pod(NS, "web-0", &[("app", "web")], pod_ip, pod_port, true, None),
            tls::secret(
                GW_NS,
                "xfcc-cert",
                "Opaque",
                &[
                    ("cert", &server.cert_pem),
                    ("key", &server.key_pem),
                    ("cacert", &client_ca.pem),
                ],
            ),
        ]
        .join("\n---\n"),
    );
    mesh.write_istio(
        "gateway.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: {GW_NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {https_port}, name: https, protocol: HTTPS}}
    hosts: [mtls.example.com]
    tls: {{mode: MUTUAL, credentialName: xfcc-cert}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: {NS}}}
spec:
  hosts: [mtls.example.com]
  gateways: [{GW_NS}/edge]
  http:
  - route:
    - destination: {{host: web.{NS}.svc.cluster.local, port: {{number: 8080}}}}
"
        ),
    );
    let _cp = ControlPlane::start(&mesh.mesh_file).await;
    let token_file = mesh.root().join("gw.token");
    std::fs::write(&token_file, issuer.token_for(GW_NS, "ingressgateway")).expect("token");
    let root_cert = mesh.root().join("crossmesh-ca").join("root-cert.pem");
    let gw = Envoy::start(
        "ingressgateway-xfcc",
        &bootstrap(
            &[
                "bootstrap",
                "--role",
                "gateway",
                "--name",
                "ingressgateway-0",
                "--namespace",
                GW_NS,
                "--service-account",
                "ingressgateway",
                "--labels",
                "istio=ingressgateway",
                "--cluster-id",
                "cluster1",
                "--ip",
                &subnet.ip(1).to_string(),
                "--xds-address",
                &tls_addr.to_string(),
                "--admin-port",
                "0",
                "--root-cert",
                &root_cert.display().to_string(),
                "--token-file",
                &token_file.display().to_string(),
            ]
            .map(String::from),
        ),
    )
    .await;
    gw.wait_ready(CONVERGE).await;
    let cfg = tls::client_config(&server_ca.pem, Some(&client));
    let addr = SocketAddr::from((subnet.ip(1), https_port));
    // The request head the pod received, through the gateway over mTLS, with
    // a forged XFCC from the client.
    let head = wait_for("web-0 answers over mTLS", CONVERGE, || {
        let cfg = cfg.clone();
        async move {
            let mut c = tls::connect(addr, "mtls.example.com", cfg).await?;
            let req = "GET /xfcc HTTP/1.1\r\nHost: mtls.example.com\r\nConnection: close\r\n\
                       x-forwarded-client-cert: By=spiffe://evil/forged\r\n\r\n";
            c.stream
                .write_all(req.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), c.stream.read_to_end(&mut out))
                .await
                .map_err(|_| "read timed out".to_string())?;
            let text = String::from_utf8_lossy(&out).into_owned();
            let (resp, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            if resp.starts_with("HTTP/1.1 200") && websocket::header(resp, "x-pod") == Some("web-0")
            {
                Ok(body.to_string())
            } else {
                Err(text)
            }
        }
    })
    .await;
    let xfcc = websocket::header(&format!("x\r\n{head}"), "x-forwarded-client-cert")
        .unwrap_or_else(|| panic!("no XFCC at the pod: {head}"))
        .to_string();
    assert!(!xfcc.contains("evil"), "the client's XFCC replaced: {xfcc}");
    assert!(xfcc.starts_with("Hash="), "{xfcc}");
    assert!(
        xfcc.contains(";Cert=\"-----BEGIN%20CERTIFICATE-----"),
        "{xfcc}"
    );
    assert!(xfcc.contains(";Subject=\"CN=xfcc-client\""), "{xfcc}");
    assert!(xfcc.contains(";DNS=client.example.com"), "{xfcc}");
    assert_eq!(pod.echoed(), 0);

    // A TLS client whose SNI no server has matches no filter chain: the
    // listener's access log (Istio's, response flag NR only) records it.
    let other = tls::connect(addr, "nomatch.example.com", cfg.clone()).await;
    assert!(other.is_err(), "no chain for nomatch.example.com");
    let line = wait_for(
        "the listener logs the unmatched connection",
        CONVERGE,
        || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines()
                .find(|l| l.contains(" NR filter_chain_not_found "))
                .map(str::to_string)
                .ok_or(text)
        },
    )
    .await;
    assert!(
        line.contains(&format!("{}:{https_port}", subnet.ip(1)))
            || line.contains(&format!(":{https_port} ")),
        "the gateway's listener address in {line}"
    );
    let requests = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        requests.contains("\"GET /xfcc HTTP/1.1\" 200"),
        "the HTTP connection manager's line: {requests}"
    );
}
