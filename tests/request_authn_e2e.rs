//! RequestAuthentication end to end (issue 12 item 2): the real `crossmesh serve`
//! fetches a JWKS from a local HTTP server (the `jwksUri`), inlines it into a real
//! Envoy ingress gateway's `jwt_authn` filter, and the gateway answers: a valid
//! token passes (and its claims reach the pod as headers), a bad signature, a
//! wrong issuer or an expired token gets 401, a request with no
//! token passes (a token for another audience: Envoy's 403). The JWKS server then rotates its key: new tokens keep working,
//! old ones are refused; it then fails, and the last good keys stay in force.
//!
//! Keys are ES256, made at test time. Addresses: the test's own `127.A.B.0/24`
//! (gateway `.1`, pod `web-0` `.11`, JWKS server `.50`).

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;

use support::backend::Backend;
use support::control_plane::{bootstrap_gateway, ControlPlane, GatewayProxy};
use support::envoy::Envoy;
use support::manifests::{self, cluster, Mesh};
use support::net::{free_port, Subnet};
use support::{wait_for, CONVERGE};

const ISSUER: &str = "https://issuer.crossmesh.test";
const AUDIENCE: &str = "web.example.com";
const HOST: &str = "web.example.com";

/// An ES256 signing key with its key id.
struct Key {
    kid: String,
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Key {
    fn new(kid: &str) -> Key {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("generate key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("key");
        Key {
            kid: kid.into(),
            pair,
            rng,
        }
    }

    fn jwk(&self) -> serde_json::Value {
        let p = self.pair.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..65])})
    }

    /// A JWT with `claims`, signed by this key (header `kid` = `kid`).
    fn sign_as(&self, kid: &str, claims: &serde_json::Value) -> String {
        let header = json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self.pair.sign(&self.rng, input.as_bytes()).expect("sign");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn sign(&self, claims: &serde_json::Value) -> String {
        self.sign_as(&self.kid, claims)
    }
}

fn jwks(keys: &[&Key]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Claims valid for an hour.
fn claims(iss: &str, sub: &str, aud: &str, exp_in: i64) -> serde_json::Value {
    json!({"iss": iss, "sub": sub, "aud": aud, "iat": now() - 60, "exp": now() + exp_in,
        "group": "dev"})
}

/// The `jwksUri` server: serves `body` (or `status` when not 200) and counts
/// requests.
struct JwksServer {
    addr: SocketAddr,
    body: Arc<Mutex<String>>,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(ip: Ipv4Addr, body: String) -> JwksServer {
        let body = Arc::new(Mutex::new(body));
        let status = Arc::new(AtomicU16::new(200));
        let hits = Arc::new(AtomicU64::new(0));
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (b, s, h) = (body.clone(), status.clone(), hits.clone());
        // OpenID discovery for issuer `http://ADDR`: its keys are at /jwks.
        let discovery = serde_json::json!({
            "issuer": format!("http://{addr}"),
            "jwks_uri": format!("http://{addr}/jwks"),
        })
        .to_string();
        let app = axum::Router::new()
            .route(
                "/moved",
                axum::routing::get(|| async {
                    (
                        axum::http::StatusCode::FOUND,
                        [(axum::http::header::LOCATION, "/jwks")],
                    )
                }),
            )
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || {
                    let d = discovery.clone();
                    async move { d }
                }),
            )
            .route(
                "/jwks",
                axum::routing::get(move || {
                    let (b, s, h) = (b.clone(), s.clone(), h.clone());
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        let code = axum::http::StatusCode::from_u16(s.load(Ordering::SeqCst))
                            .expect("status");
                        (code, b.lock().expect("lock").clone())
                    }
                }),
            );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JwksServer {
            addr,
            body,
            status,
            hits,
            task,
        }
    }

    fn uri(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One cluster with service `web` (pod `web-0`), an ingress gateway for
/// `web.example.com`, and a real crossmesh and Envoy.
struct Fixture {
    subnet: Subnet,
    mesh: Mesh,
    gw_port: u16,
    backend: Backend,
    cp: ControlPlane,
    _envoy: Envoy,
}

impl Fixture {
    async fn start(subnet: Subnet, mesh_extra: &str) -> Fixture {
        Fixture::start_env(subnet, mesh_extra, Vec::new()).await
    }

    /// [`Fixture::start`] with extra environment for `crossmesh serve`.
    async fn start_env(subnet: Subnet, mesh_extra: &str, env: Vec<(String, String)>) -> Fixture {
        let mesh = Mesh::new(&[cluster("cluster1", None)]);
        let mut text = std::fs::read_to_string(&mesh.mesh_file).expect("mesh file");
        text.push_str(mesh_extra);
        std::fs::write(&mesh.mesh_file, text).expect("mesh file");
        let pod_port = free_port();
        let gw_port = free_port();
        let ip = subnet.ip(11);
        mesh.write_cluster(
            "cluster1",
            "service.yaml",
            &manifests::service("test", "web", 80, pod_port, &[("app", "web")]),
        );
        mesh.write_cluster(
            "cluster1",
            "pod.yaml",
            &manifests::pod("test", "web-0", &[("app", "web")], ip, pod_port, true, None),
        );
        let backend = Backend::start(ip, pod_port, "web-0").await;
        mesh.write_istio(
            "gateway.yaml",
            &manifests::gateway(
                "istio-system",
                "edge",
                &[("istio", "ingressgateway")],
                gw_port,
                &[HOST],
            ),
        );
        mesh.write_istio(
            "vs.yaml",
            &manifests::virtual_service(
                "test",
                "web",
                &["istio-system/edge"],
                &[HOST],
                "web.test.svc.cluster.local",
                80,
            ),
        );
        let cp = ControlPlane::start_with(
            &mesh.mesh_file,
            support::control_plane::StartOptions {
                env,
                ..Default::default()
            },
        )
        .await;
        let gw = GatewayProxy::ingress(subnet.ip(1), "cluster1", false);
        let admin_port = free_port();
        let envoy = Envoy::start("gateway-jwt", &bootstrap_gateway(&gw, cp.xds, admin_port)).await;
        envoy.wait_ready(CONVERGE).await;
        let f = Fixture {
            subnet,
            mesh,
            gw_port,
            backend,
            cp,
            _envoy: envoy,
        };
        f.wait_status(None, 200).await;
        f
    }

    fn gw_addr(&self) -> SocketAddr {
        SocketAddr::from((self.subnet.ip(1), self.gw_port))
    }

    /// GET `path` with extra headers; (status, body, response headers).
    async fn get(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String, reqwest::header::HeaderMap) {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let mut req = client
            .get(format!("http://{}{path}", self.gw_addr()))
            .header("host", HOST);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let h = r.headers().clone();
                (status, r.text().await.unwrap_or_default(), h)
            }
            Err(e) => (0, format!("error: {e}"), Default::default()),
        }
    }

    async fn status(&self, token: Option<&str>) -> (u16, String) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let (s, b, _) = self.get("/", &headers).await;
        (s, b)
    }

    async fn wait_status(&self, token: Option<&str>, want: u16) {
        wait_for(
            &format!("status {want} for token {:?}", token.map(|_| "<token>")),
            CONVERGE,
            || async {
                let (s, b) = self.status(token).await;
                if s == want {
                    Ok(())
                } else {
                    Err(format!("{s} {b:?}"))
                }
            },
        )
        .await
    }

    fn put_policy(&self, yaml: &str) {
        self.mesh.write_istio("request-authn.yaml", yaml);
    }
}

fn policy(rule: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: jwt
  namespace: istio-system
spec:
  selector:
    matchLabels:
      istio: ingressgateway
  jwtRules:
  - issuer: {ISSUER}
{rule}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_uri_tokens_checked_rotated_and_kept_on_failure() {
    let subnet = Subnet::claim();
    let k1 = Key::new("k1");
    let server = JwksServer::start(subnet.ip(50), jwks(&[&k1])).await;
    let f = Fixture::start(subnet, "tunables: {jwksRefreshMs: 300}\n").await;
    f.put_policy(&policy(&format!(
        "    audiences: [{AUDIENCE}]
    jwksUri: {uri}
    outputClaimToHeaders:
    - header: x-jwt-sub
      claim: sub
    outputPayloadToHeader: x-jwt-payload
",
        uri = server.uri()
    )));
    let good = k1.sign(&claims(ISSUER, "alice", AUDIENCE, 3600));
    // The filter is in place once a good token's claim reaches the pod.
    wait_for("a valid token's sub reaches web-0", CONVERGE, || async {
        let auth = format!("Bearer {good}");
        let (s, b, h) = f.get("/", &[("authorization", &auth)]).await;
        let sub = h.get("x-echo-x-jwt-sub").and_then(|v| v.to_str().ok());
        if s == 200 && b == "web-0" && sub == Some("alice") {
            Ok(())
        } else {
            Err(format!("{s} {b:?} sub {sub:?}"))
        }
    })
    .await;
    // The verified payload is forwarded too (base64url JSON).
    let auth = format!("Bearer {good}");
    let (_, _, h) = f.get("/", &[("authorization", &auth)]).await;
    let payload = h
        .get("x-echo-x-jwt-payload")
        .and_then(|v| v.to_str().ok())
        .expect("payload header");
    let decoded: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .expect("base64url"),
    )
    .expect("json");
    assert_eq!(decoded["sub"], "alice");

    // No token: passes (requiring one is AuthorizationPolicy's job).
    assert_eq!(f.status(None).await, (200, "web-0".into()));
    // Invalid tokens: 401, the pod never sees them. A token for another
    // audience is Envoy's 403 ("Audiences in Jwt are not allowed"), as in Istio.
    let other = Key::new("k1");
    let cases = [
        (
            "bad signature",
            other.sign(&claims(ISSUER, "alice", AUDIENCE, 3600)),
            401,
        ),
        (
            "wrong issuer",
            k1.sign(&claims("https://other.test", "alice", AUDIENCE, 3600)),
            401,
        ),
        (
            "expired",
            k1.sign(&claims(ISSUER, "alice", AUDIENCE, -600)),
            401,
        ),
        (
            "wrong audience",
            k1.sign(&claims(ISSUER, "alice", "other.example.com", 3600)),
            403,
        ),
    ];
    let seen_before = f.backend.requests();
    for (what, token, want) in &cases {
        let (s, b) = f.status(Some(token)).await;
        assert_eq!(s, *want, "{what}: {b:?}");
    }
    assert_eq!(
        f.backend.requests(),
        seen_before,
        "no refused request reaches the pod"
    );

    // The issuer rotates to k2 (only k2 served): crossmesh refetches, pushes,
    // and new tokens work while k1's are refused.
    let k2 = Key::new("k2");
    *server.body.lock().unwrap() = jwks(&[&k2]);
    let new = k2.sign(&claims(ISSUER, "bob", AUDIENCE, 3600));
    let rotated = std::time::Instant::now();
    f.wait_status(Some(&new), 200).await;
    // A figure, not an assertion: refresh interval 300 ms, then a push.
    eprintln!(
        "rotated key in force at the gateway after {:?}",
        rotated.elapsed()
    );
    f.wait_status(Some(&good), 401).await;

    // The server fails: several failed fetches later the last good keys (k2)
    // are still in force.
    server.status.store(500, Ordering::SeqCst);
    let before = server.hits();
    wait_for("three more JWKS fetches", CONVERGE, || async {
        let n = server.hits() - before;
        if n >= 3 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    })
    .await;
    assert_eq!(f.status(Some(&new)).await, (200, "web-0".into()));
    assert!(
        f.cp.log().contains("JWKS fetch failed"),
        "the failed fetch is logged"
    );
    // /debug/configz warns on the rule, saying the last keys stay in force.
    wait_for(
        "configz warns about the failing jwksUri",
        CONVERGE,
        || async {
            let j = f.cp.json("/debug/configz").await?;
            let hit = j["warnings"].as_array().is_some_and(|w| {
                w.iter().any(|w| {
                    w["name"] == "jwt"
                        && w["field"] == "spec.jwtRules[0].jwksUri"
                        && w["message"].as_str().is_some_and(|m| {
                            m.contains("HTTP status 500")
                                && m.contains("last keys fetched stay in force")
                        })
                })
            });
            if hit {
                Ok(())
            } else {
                Err(j["warnings"].to_string())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_jwks_token_locations_and_forwarding() {
    let subnet = Subnet::claim();
    let k = Key::new("inline");
    let f = Fixture::start(subnet, "").await;
    // fromHeaders with a prefix and fromParams: the Authorization header is not
    // a token location any more; forwardOriginalToken keeps the token.
    f.put_policy(&policy(&format!(
        "    jwks: '{}'
    fromHeaders:
    - name: x-token
      prefix: 'Token '
    fromParams: [tok]
    forwardOriginalToken: true
",
        jwks(&[&k])
    )));
    let good = k.sign(&claims(ISSUER, "carol", AUDIENCE, 3600));
    let bad = Key::new("inline").sign(&claims(ISSUER, "carol", AUDIENCE, 3600));
    let header = format!("Token {bad}");
    wait_for("a bad token in x-token is refused", CONVERGE, || async {
        let (s, b, _) = f.get("/", &[("x-token", &header)]).await;
        if s == 401 {
            Ok(())
        } else {
            Err(format!("{s} {b:?}"))
        }
    })
    .await;
    let header = format!("Token {good}");
    let (s, b, h) = f.get("/", &[("x-token", &header)]).await;
    assert_eq!((s, b.as_str()), (200, "web-0"));
    assert_eq!(
        h.get("x-echo-x-token").and_then(|v| v.to_str().ok()),
        Some(header.as_str()),
        "forwardOriginalToken: the pod gets the token"
    );
    let (s, _, _) = f.get(&format!("/?tok={good}"), &[]).await;
    assert_eq!(s, 200, "token in the tok parameter");
    let (s, _, _) = f.get(&format!("/?tok={bad}"), &[]).await;
    assert_eq!(s, 401, "bad token in the tok parameter");
    // A bad token where the rule does not look is not a token at all.
    let auth = format!("Bearer {bad}");
    let (s, _, _) = f.get("/", &[("authorization", &auth)]).await;
    assert_eq!(s, 200, "Authorization is not a location of this rule");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfetched_keys_refuse_tokens_and_bad_policies_are_rejected_alone() {
    let subnet = Subnet::claim();
    let k = Key::new("k1");
    let f = Fixture::start(subnet, "tunables: {jwksRefreshMs: 300}\n").await;
    // Nothing listens at this jwksUri: Istio's fake key is inlined, so a token
    // (even a well-signed one) is refused and no token still passes.
    let dead = SocketAddr::from((f.subnet.ip(51), free_port()));
    let yaml = format!(
        "{}---
apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata:
  name: broken
  namespace: test
spec:
  jwtRules:
  - issuer: https://broken.test
    jwksUri: ftp://keys.example.com/jwks
",
        policy(&format!("    jwksUri: http://{dead}/jwks\n"))
    );
    f.put_policy(&yaml);
    let good = k.sign(&claims(ISSUER, "dave", AUDIENCE, 3600));
    f.wait_status(Some(&good), 401).await;
    assert_eq!(f.status(None).await, (200, "web-0".into()));
    // The rule with no keys is a warning on /debug/configz, saying so.
    wait_for(
        "configz warns that no keys were fetched",
        CONVERGE,
        || async {
            let j = f.cp.json("/debug/configz").await?;
            let hit = j["warnings"].as_array().is_some_and(|w| {
                w.iter().any(|w| {
                    w["name"] == "jwt"
                        && w["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("no keys fetched yet"))
                })
            });
            if hit {
                Ok(())
            } else {
                Err(j["warnings"].to_string())
            }
        },
    )
    .await;
    // The bad policy is rejected alone, naming the field and why.
    wait_for("configz rejects test/broken", CONVERGE, || async {
        let j = f.cp.json("/debug/configz").await?.to_string();
        if j.contains("broken") && j.contains("spec.jwtRules[0].jwksUri") && j.contains("ftp://") {
            Ok(())
        } else {
            Err(j)
        }
    })
    .await;
    // And `crossmesh validate` says the same and fails.
    let out = std::process::Command::new(support::control_plane::crossmesh_bin())
        .arg("validate")
        .arg(f.mesh.istio_dir().join("request-authn.yaml"))
        .output()
        .expect("run crossmesh validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("broken") && text.contains("jwksUri"),
        "validate names the object and field: {text}"
    );
}

/// With AuthorizationPolicy: `requestPrincipals` makes a token required (no
/// token: 403), only the listed principal passes, and a claim condition is
/// enforced; the principal is `iss/sub` of the token jwt_authn verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_principals_and_claims_with_authorization_policy() {
    let subnet = Subnet::claim();
    let k = Key::new("k1");
    let f = Fixture::start(subnet, "").await;
    f.put_policy(&format!(
        "{}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: require-jwt
  namespace: istio-system
spec:
  selector:
    matchLabels:
      istio: ingressgateway
  action: ALLOW
  rules:
  - from:
    - source:
        requestPrincipals: [\"{ISSUER}/alice\", \"{ISSUER}/bob\"]
    when:
    - key: request.auth.claims[group]
      values: [dev]
",
        policy(&format!("    jwks: '{}'\n", jwks(&[&k])))
    ));
    let alice = k.sign(&claims(ISSUER, "alice", AUDIENCE, 3600));
    f.wait_status(None, 403).await;
    assert_eq!(f.status(Some(&alice)).await, (200, "web-0".into()));
    // A verified token of another subject: not a listed principal.
    let carol = k.sign(&claims(ISSUER, "carol", AUDIENCE, 3600));
    assert_eq!(f.status(Some(&carol)).await.0, 403, "carol is not listed");
    // A listed principal whose claim fails the condition.
    let mut c = claims(ISSUER, "bob", AUDIENCE, 3600);
    c["group"] = json!("ops");
    let bob_ops = k.sign(&c);
    assert_eq!(f.status(Some(&bob_ops)).await.0, 403, "group ops");
    c["group"] = json!("dev");
    assert_eq!(f.status(Some(&k.sign(&c))).await.0, 200, "group dev");
    // An invalid token is still jwt_authn's 401, before RBAC.
    let forged = Key::new("k1").sign(&claims(ISSUER, "alice", AUDIENCE, 3600));
    assert_eq!(f.status(Some(&forged)).await.0, 401);
}

/// A TLS server answering every request with `body` (a JWKS), its certificate
/// for `ip` signed by a CA made here; returns its address and the CA (PEM).
async fn https_jwks_server(
    ip: Ipv4Addr,
    body: String,
) -> (SocketAddr, String, tokio::task::JoinHandle<()>) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "jwks-test-ca");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = ca.self_signed(&ca_key).expect("self-sign").pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("server key");
    let cert = rcgen::CertificateParams::new(vec![ip.to_string()])
        .expect("server params")
        .signed_by(&key, &issuer)
        .expect("sign");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, ca_pem, task)
}

/// `https` jwksUri verified against the CA bundle crossmesh trusts
/// (`SSL_CERT_FILE` here, the system bundle otherwise): a server whose CA is
/// trusted serves keys that work; one whose CA is not is never trusted (its
/// issuer's tokens stay refused, the TLS failure logged). And OpenID discovery:
/// a rule with neither jwks nor jwksUri gets the keys of the issuer's
/// `jwks_uri`; a redirecting jwksUri is followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_jwks_uri_verified_and_openid_discovery() {
    let subnet = Subnet::claim();
    let k = Key::new("k1");
    let (good, good_ca, _t1) = https_jwks_server(subnet.ip(52), jwks(&[&k])).await;
    let (bad, _other_ca, _t2) = https_jwks_server(subnet.ip(53), jwks(&[&k])).await;
    let plain = JwksServer::start(subnet.ip(50), jwks(&[&k])).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("ca.pem");
    std::fs::write(&bundle, &good_ca).expect("CA bundle");
    let f = Fixture::start_env(
        subnet,
        "tunables: {jwksRefreshMs: 300}\n",
        vec![("SSL_CERT_FILE".into(), bundle.display().to_string())],
    )
    .await;
    let discovery_issuer = format!("http://{}", plain.addr);
    f.put_policy(&format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: jwt
  namespace: istio-system
spec:
  selector:
    matchLabels:
      istio: ingressgateway
  jwtRules:
  - issuer: https://trusted.test
    jwksUri: https://{good}/jwks
  - issuer: https://untrusted.test
    jwksUri: https://{bad}/jwks
  - issuer: {discovery_issuer}
  - issuer: https://moved.test
    jwksUri: http://{plain_addr}/moved
",
        plain_addr = plain.addr
    ));
    let trusted = k.sign(&claims("https://trusted.test", "a", AUDIENCE, 3600));
    let untrusted = k.sign(&claims("https://untrusted.test", "a", AUDIENCE, 3600));
    let discovered = k.sign(&claims(&discovery_issuer, "a", AUDIENCE, 3600));
    // The filter is in place once the untrusted issuer's token is refused
    // (before the policy, every request passed).
    f.wait_status(Some(&untrusted), 401).await;
    f.wait_status(Some(&trusted), 200).await;
    f.wait_status(Some(&discovered), 200).await;
    // A jwksUri that redirects (302 to /jwks) is followed.
    let moved = k.sign(&claims("https://moved.test", "a", AUDIENCE, 3600));
    f.wait_status(Some(&moved), 200).await;
    wait_for(
        "the untrusted server's TLS failure is logged",
        CONVERGE,
        || async {
            let log = f.cp.log();
            match log
                .lines()
                .find(|l| l.contains("JWKS fetch failed") && l.contains(&bad.to_string()))
            {
                Some(l) if l.contains("TLS") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(f.status(Some(&untrusted)).await.0, 401);
    assert_eq!(f.status(None).await, (200, "web-0".into()));
}

/// A sidecar's inbound HTTP port (NONE-mode sidecar, Sidecar `ingress` to its
/// app): a namespace-wide RequestAuthentication refuses an invalid token (401)
/// and lets a valid one and none through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_inbound_checks_tokens() {
    let subnet = Subnet::claim();
    let k = Key::new("k1");
    let mesh = Mesh::new(&[cluster("cluster1", None)]);
    let (web_ip, app_port, inbound) = (subnet.ip(11), free_port(), free_port());
    mesh.write_cluster(
        "cluster1",
        "web.yaml",
        &format!(
            "{}\n---\n{}",
            manifests::service("shop", "web", 80, inbound, &[("app", "web")]),
            manifests::pod(
                "shop",
                "web-0",
                &[("app", "web")],
                web_ip,
                inbound,
                true,
                None
            )
        ),
    );
    let app = Backend::start(web_ip, app_port, "web-0").await;
    mesh.write_istio(
        "sidecar.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: web, namespace: shop}}
spec:
  workloadSelector: {{labels: {{app: web}}}}
  ingress:
  - port: {{number: {inbound}, protocol: HTTP, name: http}}
    defaultEndpoint: {web_ip}:{app_port}
"
        ),
    );
    let cp = ControlPlane::start(&mesh.mesh_file).await;
    let args: Vec<String> = [
        "bootstrap",
        "--role",
        "sidecar",
        "--interception",
        "none",
        "--name",
        "web-0",
        "--namespace",
        "shop",
        "--ip",
        &web_ip.to_string(),
        "--labels",
        "app=web",
        "--xds-address",
        &cp.xds.to_string(),
        "--admin-port",
        "0",
        "--cluster-id",
        "cluster1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let envoy = Envoy::start("web-0-sidecar", &support::control_plane::bootstrap(&args)).await;
    envoy.wait_ready(CONVERGE).await;
    let addr = SocketAddr::from((web_ip, inbound));
    let status = |token: Option<String>| async move {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let mut req = client.get(format!("http://{addr}/")).header("host", "web");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        match req.send().await {
            Ok(r) => Ok::<_, String>(r.status().as_u16()),
            Err(e) => Err(e.to_string()),
        }
    };
    wait_for("the sidecar's inbound port answers", CONVERGE, || async {
        match status(None).await? {
            200 => Ok(()),
            s => Err(s.to_string()),
        }
    })
    .await;
    let forged = Key::new("k1").sign(&claims(ISSUER, "a", AUDIENCE, 3600));
    assert_eq!(status(Some(forged.clone())).await, Ok(200), "no policy yet");
    mesh.write_istio(
        "request-authn.yaml",
        &format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: shop-wide, namespace: shop}}
spec:
  jwtRules:
  - issuer: {ISSUER}
    jwks: '{keys}'
",
            keys = jwks(&[&k])
        ),
    );
    wait_for(
        "the forged token is refused at the inbound port",
        CONVERGE,
        || async {
            match status(Some(forged.clone())).await? {
                401 => Ok(()),
                s => Err(s.to_string()),
            }
        },
    )
    .await;
    let good = k.sign(&claims(ISSUER, "a", AUDIENCE, 3600));
    assert_eq!(status(Some(good)).await, Ok(200));
    assert_eq!(status(None).await, Ok(200));
    assert!(app.requests() > 0);
}
