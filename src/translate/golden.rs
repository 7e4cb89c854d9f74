//! Golden tests: each `tests/golden/NAME.yaml` holds a fixture document
//! (`kind: GoldenFixture`) followed by Istio objects; the expected Envoy config
//! is `tests/golden/NAME.json`, in Envoy's proto-JSON (via `debug::json`).
//! `REFRESH_GOLDEN=1` rewrites the JSON.
//!
//! The fixture document:
//!
//! ```yaml
//! kind: GoldenFixture
//! proxy:
//!   role: sidecar            # or gateway
//!   namespace: base
//!   labels: {app: frontend}
//!   interception: NONE       # sidecars: REDIRECT (default) or NONE
//!   ip: 10.0.0.1             # default 10.0.0.1; NONE-mode listeners bind it
//!   cluster: cluster1        # the proxy's member cluster (default cluster1)
//!   network: net1            # default: none
//!   locality: gz/gz-1/rack-1 # region/zone/subzone, default: none
//!   identity:                # the proxy holds a workload certificate (default:
//!     serviceAccount: web    # none, as on the plaintext xDS port)
//! networks:                  # the mesh's east-west gateways per network
//!   net2:
//!     gateways: [{address: 192.0.2.20, port: 15443, cluster: c2}]
//! pathNormalization: MERGE_SLASHES  # the mesh file's pathNormalization (default here BASE, Istio's)
//! meshConfig: |              # mesh-file text for the proxy defaults it sets
//!   accessLogFile: /dev/stdout
//!   defaultConfig: {gatewayTopology: {numTrustedProxies: 2}}
//! fetchedJwks:               # keys the JWKS fetcher holds, by jwksUri, or
//!   https://idp.example.com/jwks: '{"keys": [...]}'   # `discovery:ISSUER`
//! services:
//! - name: order
//!   namespace: base
//!   ports: [{name: http, port: 7000}]
//!   endpoints:
//!   - {address: 10.1.2.1, labels: {version: v1}, cluster: c1, network: net1,
//!      locality: gz/gz-1, ready: true, port: 7001, serviceAccount: order}
//! ```
//!
//! `endpoints` in the rendered JSON is what this proxy receives: the one global
//! assignment of each service, or, for services whose EDS depends on the proxy
//! (locality load balancing, networks), the assignment for the proxy's view, as
//! the push engine sends it.
//!
//! `supported_fields_have_goldens` keeps `docs/ISTIO_SUPPORT.md` honest: every
//! field it marks supported or partial is set in some fixture.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Name;
use serde::Deserialize;

use crate::config::NetworkGateway;
use crate::debug::json::message_to_json;
use crate::model::istio::ConfigSnapshot;
use crate::model::{
    Endpoint, InterceptionMode, Locality, MeshSettings, Protocol, Proxy, ProxyRole, PushContext,
    Service, ServicePort,
};
use crate::registry::config::{IstioConfigStore, RawDoc};
use crate::security::ca::Identity;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    #[allow(dead_code)]
    kind: String,
    proxy: FixtureProxy,
    #[serde(default)]
    networks: BTreeMap<String, FixtureNetwork>,
    #[serde(default)]
    services: Vec<FixtureService>,
    /// The mesh file's `pathNormalization.normalization`. Default BASE, Istio's
    /// default, so fixtures read like istiod's output; crossmesh's own default,
    /// DECODE_AND_MERGE_SLASHES, has its golden (`path_decode_and_merge_slashes`).
    #[serde(default, rename = "pathNormalization")]
    path_normalization: Option<String>,
    /// Keys the JWKS fetcher holds, by `jwksUri` (or `ISSUER` for OpenID
    /// discovery, written `discovery:ISSUER`).
    #[serde(default, rename = "fetchedJwks")]
    fetched_jwks: BTreeMap<String, String>,
    #[serde(default)]
    secrets: Vec<FixtureSecret>,
    /// Mesh-file text whose proxy defaults apply (`accessLogFile`,
    /// `accessLogEncoding`, `accessLogFormat`, `defaultConfig`), read as
    /// `serve --mesh` reads a mesh file.
    #[serde(default, rename = "meshConfig")]
    mesh_config: Option<String>,
}

/// A TLS Secret for `credentialName` (the contents are placeholders: goldens
/// show which Secret is used where, the Envoy check loads test certificates).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FixtureSecret {
    name: String,
    namespace: String,
    /// Default cluster1.
    #[serde(default)]
    cluster: Option<String>,
    /// Which parts it holds: `keyPair`, `ca`, `crl`.
    parts: Vec<String>,
    /// Rejected on arrival with this reason.
    #[serde(default)]
    rejected: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureNetwork {
    gateways: Vec<FixtureGateway>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureGateway {
    address: String,
    port: u16,
    /// The member cluster the gateway was discovered in (none: a mesh-file gateway).
    #[serde(default)]
    cluster: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureProxy {
    /// `gateway` or `sidecar`.
    role: String,
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// `REDIRECT` (default) or `NONE`; sidecars only.
    #[serde(default)]
    interception: Option<String>,
    #[serde(default)]
    ip: Option<IpAddr>,
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    network: String,
    /// `region/zone/subzone`.
    #[serde(default)]
    locality: String,
    #[serde(default)]
    identity: Option<FixtureIdentity>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FixtureIdentity {
    service_account: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureService {
    name: String,
    namespace: String,
    ports: Vec<FixturePort>,
    #[serde(default)]
    endpoints: Vec<FixtureEndpoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FixturePort {
    name: String,
    port: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FixtureEndpoint {
    address: IpAddr,
    /// Target port; the service port's number when absent.
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    cluster: String,
    #[serde(default)]
    network: String,
    /// `region/zone/subzone`.
    #[serde(default)]
    locality: String,
    #[serde(default = "yes")]
    ready: bool,
    /// The pod's service account (default `default`).
    #[serde(default)]
    service_account: Option<String>,
}

fn yes() -> bool {
    true
}

fn locality(text: &str) -> Locality {
    let mut parts = text.split('/').map(String::from);
    Locality {
        region: parts.next().unwrap_or_default(),
        zone: parts.next().unwrap_or_default(),
        subzone: parts.next().unwrap_or_default(),
    }
}

/// A golden input: the push context and the proxy.
pub(crate) type Loaded = (PushContext, Proxy);

/// Parse a golden input: the fixture, the push context and the proxy; fails if
/// any Istio object is rejected (goldens hold valid config).
pub(crate) fn load(path: &Path) -> Loaded {
    from_docs(&read_docs(path), path).unwrap_or_else(|e| panic!("{e}"))
}

/// The YAML documents of a golden input, as JSON values.
fn read_docs(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The push context and proxy of a golden input's documents; `Err` names the
/// rejected Istio objects.
fn from_docs(docs: &[serde_json::Value], path: &Path) -> Result<Loaded, String> {
    let (first, rest) = docs.split_first().expect("a fixture document");
    let fx: Fixture = serde_json::from_value(first.clone()).expect("GoldenFixture document");
    let origin = path.display().to_string();
    let raw: Vec<RawDoc> = rest
        .iter()
        .map(|v| RawDoc {
            origin: origin.clone(),
            value: v.clone(),
        })
        .collect();
    let problems = crate::registry::config::validate_docs(&raw);
    if !problems.is_empty() {
        return Err(format!(
            "{}: rejected objects: {problems:#?}",
            path.display()
        ));
    }
    let mut store = IstioConfigStore::new("cluster.local");
    store.replace_source("golden", raw);
    store.set_jwks(
        fx.fetched_jwks
            .iter()
            .map(|(k, v)| {
                use crate::model::istio::request_authentication::JwksSource;
                let src = match k.strip_prefix("discovery:") {
                    Some(issuer) => JwksSource::Discovery(issuer.to_string()),
                    None => JwksSource::Uri(k.clone()),
                };
                (src, Arc::from(v.as_str()))
            })
            .collect(),
    );
    let config: Arc<ConfigSnapshot> = store.snapshot();
    let mut services = BTreeMap::new();
    for s in fx.services {
        let hostname: Arc<str> = format!("{}.{}.svc.cluster.local", s.name, s.namespace).into();
        let ports: Vec<ServicePort> = s
            .ports
            .iter()
            .map(|p| ServicePort {
                name: p.name.clone(),
                port: p.port,
                protocol: Protocol::from_port(&p.name, None),
            })
            .collect();
        let mut endpoints: BTreeMap<u16, Vec<Endpoint>> = BTreeMap::new();
        for p in &ports {
            let eps = s
                .endpoints
                .iter()
                .map(|e| Endpoint {
                    address: e.address,
                    port: e.port.unwrap_or(p.port),
                    labels: Arc::new(e.labels.clone()),
                    cluster: e.cluster.as_str().into(),
                    network: e.network.as_str().into(),
                    locality: Arc::new(locality(&e.locality)),
                    ready: e.ready,
                    workload: format!("{}/{}", s.namespace, e.address).into(),
                    service_account: e.service_account.as_deref().unwrap_or("default").into(),
                    stale: false,
                    weight: 1,
                })
                .collect();
            endpoints.insert(p.port, eps);
        }
        let mut clusters: Vec<Arc<str>> = s
            .endpoints
            .iter()
            .map(|e| Arc::from(e.cluster.as_str()))
            .collect();
        clusters.sort();
        clusters.dedup();
        services.insert(
            hostname.clone(),
            Arc::new(Service {
                hostname,
                namespace: s.namespace,
                name: s.name,
                ports,
                endpoints,
                clusters,
            }),
        );
    }
    // ServiceEntries' services; a workloadSelector picks WorkloadEntries.
    crate::model::istio::service_entry::add_services(&mut services, &config, |se, selector| {
        crate::model::istio::service_entry::selected_entries(&config, &se.meta.namespace, selector)
    });
    let networks = fx
        .networks
        .into_iter()
        .map(|(name, n)| {
            let gws = n
                .gateways
                .into_iter()
                .map(|g| NetworkGateway {
                    address: g.address,
                    port: g.port,
                    cluster: g.cluster,
                })
                .collect();
            (name, gws)
        })
        .collect();
    let mut credentials = crate::model::credential::Credentials::default();
    for sec in fx.secrets {
        let key = crate::model::credential::SecretKey {
            cluster: sec.cluster.unwrap_or_else(|| "cluster1".into()),
            namespace: sec.namespace,
            name: sec.name,
        };
        let has = |p: &str| sec.parts.iter().any(|x| x == p);
        let id = format!("{}/{}", key.namespace, key.name);
        let state = match sec.rejected {
            Some(reason) => Err(reason),
            None => Ok(Arc::new(crate::model::credential::TlsCredential {
                key_pair: has("keyPair").then(|| {
                    (
                        format!("certificate chain of {id}"),
                        zeroize::Zeroizing::new(format!("private key of {id}")),
                    )
                }),
                ca: has("ca").then(|| format!("CA of {id}")),
                crl: has("crl").then(|| format!("CRL of {id}")),
                subject: format!("CN={}", key.name),
            })),
        };
        credentials.secrets.insert(key, state);
    }
    let mesh_file = match &fx.mesh_config {
        Some(text) => crate::config::MeshConfig::parse(text, Path::new("."))
            .unwrap_or_else(|e| panic!("{}: meshConfig: {e}", path.display())),
        None => crate::config::MeshConfig::default(),
    };
    let ctx = PushContext {
        seq: 1,
        mesh: Arc::new(MeshSettings {
            trust_domain: "cluster.local".into(),
            domain_suffix: "cluster.local".into(),
            networks,
            path_normalization: match fx.path_normalization.as_deref() {
                None | Some("BASE") => crate::config::PathNormalization::Base,
                Some("NONE") => crate::config::PathNormalization::None,
                Some("MERGE_SLASHES") => crate::config::PathNormalization::MergeSlashes,
                Some("DECODE_AND_MERGE_SLASHES") => {
                    crate::config::PathNormalization::DecodeAndMergeSlashes
                }
                Some(other) => panic!("{}: pathNormalization {other:?}", path.display()),
            },
            access_log: mesh_file.access_log,
            gateway_topology: mesh_file.gateway_topology,
            outbound_traffic_policy: mesh_file.outbound_traffic_policy,
            tracing: mesh_file.tracing,
        }),
        services: Arc::new(services),
        config,
        credentials: Arc::new(credentials),
    };
    let p = fx.proxy;
    let (role, kind) = match p.role.as_str() {
        "gateway" => (ProxyRole::Gateway, "router"),
        "sidecar" => (ProxyRole::Sidecar, "sidecar"),
        other => panic!(
            "{}: proxy.role {other:?}: expected gateway or sidecar",
            path.display()
        ),
    };
    let interception = match p.interception.as_deref() {
        None | Some("REDIRECT") => InterceptionMode::Redirect,
        Some("NONE") if role == ProxyRole::Sidecar => InterceptionMode::None,
        Some(other) => panic!(
            "{}: proxy.interception {other:?}: expected REDIRECT or NONE (NONE for sidecars only)",
            path.display()
        ),
    };
    let ip: IpAddr = p.ip.unwrap_or_else(|| "10.0.0.1".parse().expect("ip"));
    let pod_name = if role == ProxyRole::Gateway {
        "gw-0"
    } else {
        "app-0"
    };
    let proxy = Proxy {
        id: format!(
            "{kind}~{ip}~{pod_name}.{0}~{0}.svc.cluster.local",
            p.namespace
        ),
        role,
        ip,
        pod_name: pod_name.into(),
        namespace: p.namespace.clone(),
        labels: p.labels,
        cluster_id: p.cluster.unwrap_or_else(|| "cluster1".into()),
        network: p.network,
        interception,
        service_account: p
            .identity
            .as_ref()
            .map_or_else(|| "default".to_string(), |i| i.service_account.clone()),
        istio_version: String::new(),
        locality: locality(&p.locality),
        identity: p.identity.map(|i| Identity {
            trust_domain: "cluster.local".into(),
            namespace: p.namespace.clone(),
            service_account: i.service_account,
        }),
    };
    Ok((ctx, proxy))
}

fn to_json<M: prost::Message + Name>(msgs: &[M]) -> serde_json::Value {
    serde_json::Value::Array(
        msgs.iter()
            .map(|m| message_to_json(&M::full_name(), m).expect("proto-JSON"))
            .collect(),
    )
}

/// The Envoy config `generate` and `endpoints` give for a golden input.
pub(crate) fn render(ctx: &PushContext, proxy: &Proxy) -> serde_json::Value {
    let g = super::generate(proxy, ctx);
    let view = super::locality::EdsView::of(proxy, ctx);
    let mut cla: Vec<_> = ctx
        .services
        .values()
        .flat_map(|s| {
            if super::locality::depends_on_proxy(s, ctx) {
                super::endpoint::service_assignments_for(s, ctx, &view)
            } else {
                super::endpoints(s, ctx)
            }
        })
        .collect();
    cla.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    let mut out = serde_json::json!({
        "listeners": to_json(&g.listeners),
        "routes": to_json(&g.routes),
        "clusters": to_json(&g.clusters),
        "endpoints": to_json(&cla),
    });
    // `credentialName` secrets, when the config names any.
    if !g.secrets.is_empty() {
        out["secrets"] = to_json(&g.secrets);
    }
    out
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn goldens_match() {
    let refresh = std::env::var_os("REFRESH_GOLDEN").is_some();
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("tests/golden")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no golden inputs");
    let mut failures = Vec::new();
    for input in inputs {
        let (ctx, proxy) = load(&input);
        let got = serde_json::to_string_pretty(&render(&ctx, &proxy)).expect("json") + "\n";
        let expected_path = input.with_extension("json");
        if refresh {
            std::fs::write(&expected_path, &got).expect("write golden");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != got {
            failures.push(format!(
                "{} differs from {} (REFRESH_GOLDEN=1 rewrites it)",
                input.display(),
                expected_path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// `$ENVOY_BIN`, else `.venv/bin/envoy`, else `envoy` on PATH (CONTRIBUTING.md).
fn envoy_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return Some(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy");
    if venv.exists() {
        return Some(venv);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("envoy"))
        .find(|p| p.exists())
}

/// The golden config as a static Envoy bootstrap: RDS inlined, EDS clusters made
/// STATIC with their assignment, listener ports moved out of the privileged range.
fn static_bootstrap(golden: &serde_json::Value) -> serde_json::Value {
    use serde_json::{json, Value};
    let by_name = |list: &str, key: &str| -> BTreeMap<String, Value> {
        golden[list]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| (v[key].as_str().unwrap_or_default().to_string(), v.clone()))
            .collect()
    };
    let routes = by_name("routes", "name");
    let cla = by_name("endpoints", "cluster_name");
    let mut listeners = golden["listeners"].clone();
    for l in listeners.as_array_mut().into_iter().flatten() {
        let port = l["address"]["socket_address"]["port_value"]
            .as_u64()
            .unwrap_or(0);
        l["address"]["socket_address"]["port_value"] = json!(port + 20000);
        for fc in l["filter_chains"].as_array_mut().into_iter().flatten() {
            for f in fc["filters"].as_array_mut().into_iter().flatten() {
                let tc = f["typed_config"].as_object_mut().expect("typed_config");
                if let Some(rds) = tc.remove("rds") {
                    let name = rds["route_config_name"].as_str().unwrap_or_default();
                    tc.insert("route_config".into(), routes[name].clone());
                }
            }
        }
    }
    let mut clusters = golden["clusters"].clone();
    for c in clusters.as_array_mut().into_iter().flatten() {
        let c = c.as_object_mut().expect("cluster");
        if c.get("type") == Some(&json!("EDS")) {
            let eds = c.remove("eds_cluster_config").unwrap_or_default();
            c.insert("type".into(), json!("STATIC"));
            let name = eds["service_name"].as_str().unwrap_or_default();
            c.insert("load_assignment".into(), cla[name].clone());
        }
    }
    // SDS secrets (`default`, `ROOTCA`) come over the proxy's ADS stream;
    // validate mode has none, so they become static secrets of the same names
    // (made of the test certificates under /etc/certs/).
    let mut boot = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    });
    if golden.to_string().contains("\"sds_config\"") {
        strip_sds_config(&mut boot);
        boot["static_resources"]["secrets"] = json!([
            {"name": "default", "tls_certificate": {
                "certificate_chain": {"filename": "/etc/certs/client.pem"},
                "private_key": {"filename": "/etc/certs/client-key.pem"}}},
            {"name": "ROOTCA", "validation_context": {
                "trusted_ca": {"filename": "/etc/certs/ca.pem"}}},
        ]);
        // `kubernetes://` secrets: their placeholders become the test files.
        for sec in golden["secrets"].as_array().into_iter().flatten() {
            let mut v = json!({"name": sec["name"]});
            if sec.get("tls_certificate").is_some() {
                v["tls_certificate"] = json!({
                    "certificate_chain": {"filename": "/etc/certs/client.pem"},
                    "private_key": {"filename": "/etc/certs/client-key.pem"}});
            }
            if let Some(vc) = sec.get("validation_context") {
                v["validation_context"] = json!({"trusted_ca": {"filename": "/etc/certs/ca.pem"}});
                if vc.get("crl").is_some() {
                    v["validation_context"]["crl"] = json!({"filename": "/etc/certs/crl.pem"});
                }
            }
            boot["static_resources"]["secrets"]
                .as_array_mut()
                .expect("secrets")
                .push(v);
        }
    }
    boot
}

/// Drop `sds_config` from every SDS secret reference: the name then refers to a
/// static secret.
fn strip_sds_config(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("sds_config");
            m.values_mut().for_each(strip_sds_config);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_sds_config),
        _ => {}
    }
}

/// Every golden JSON (`tests/golden/NAME.json`, which `goldens_match` keeps
/// equal to what translation gives) is accepted by a real Envoy
/// (`--mode validate` on it as a static bootstrap). Without an Envoy binary the
/// test says so loudly and passes; `$ENVOY_BIN` naming a missing file fails.
#[test]
fn goldens_are_valid_envoy_config() {
    let Some(envoy) = envoy_bin() else {
        eprintln!(
            "SKIPPED goldens_are_valid_envoy_config: no Envoy binary ($ENVOY_BIN, \
             .venv/bin/envoy, PATH); run scripts/setup to install one"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // DestinationRule SIMPLE/MUTUAL goldens name certificate files under
    // /etc/certs/ (Envoy loads them): made here, and the paths pointed at them.
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).expect("certs dir");
    let ca =
        rcgen::generate_simple_self_signed(vec!["golden-ca.example".to_string()]).expect("test CA");
    let crl = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2025, 1, 1),
        next_update: rcgen::date_time_ymd(2099, 1, 1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(
        &rcgen::Issuer::from_ca_cert_pem(&ca.cert.pem(), &ca.signing_key).expect("CA issuer"),
    )
    .expect("test CRL")
    .pem()
    .expect("CRL PEM");
    let client = rcgen::generate_simple_self_signed(vec!["golden-client.example".to_string()])
        .expect("test client certificate");
    for (name, pem) in [
        ("ca.pem", ca.cert.pem()),
        ("client.pem", client.cert.pem()),
        ("client-key.pem", client.signing_key.serialize_pem()),
        ("crl.pem", crl),
    ] {
        std::fs::write(certs.join(name), pem).expect("write test certificate");
    }
    let mut rejected = Vec::new();
    let inputs = golden_inputs();
    assert!(!inputs.is_empty(), "no golden inputs");
    for (input, _) in inputs {
        let path = input.with_extension("json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (REFRESH_GOLDEN=1 writes it)", path.display()));
        let golden: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Goldens print private keys as Envoy's config dump does (`[redacted]`,
        // file names too); the one key file goldens name is the client key.
        let boot = serde_json::to_string(&static_bootstrap(&golden))
            .expect("json")
            .replace(
                &format!("\"filename\":\"{}\"", crate::debug::json::REDACTED),
                "\"filename\":\"/etc/certs/client-key.pem\"",
            )
            .replace("/etc/certs/", &format!("{}/", certs.display()));
        let file = dir.path().join("bootstrap.json");
        std::fs::write(&file, boot).expect("write bootstrap");
        let out = std::process::Command::new(&envoy)
            .args(["--mode", "validate", "-l", "error", "-c"])
            .arg(&file)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", envoy.display()));
        if !out.status.success() {
            rejected.push(format!(
                "{}: Envoy rejects the config:\n{}{}",
                path.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(rejected.is_empty(), "{}", rejected.join("\n"));
}

/// The YAML key paths of one value (list items add no segment), each path as its
/// keys in order.
fn key_paths(v: &serde_json::Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                prefix.push(k.clone());
                out.push(prefix.clone());
                key_paths(v, prefix, out);
                prefix.pop();
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                key_paths(v, prefix, out);
            }
        }
        _ => {}
    }
}

/// `text` without its parenthesised parts (notes and example values).
fn without_parens(text: &str) -> String {
    let mut depth = 0usize;
    text.chars()
        .filter(|c| match c {
            '(' => {
                depth += 1;
                false
            }
            ')' => {
                depth = depth.saturating_sub(1);
                false
            }
            _ => depth == 0,
        })
        .collect()
}

/// The field paths one Field cell of ISTIO_SUPPORT.md names (see its "How to
/// read it"): backticked names, parenthesised notes skipped; in a
/// comma-separated group, names after the first replace the first one's last key.
fn field_paths(cell: &str) -> Vec<Vec<String>> {
    let split = |t: &str| -> Vec<String> {
        t.replace("[]", "")
            .split('.')
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    for group in without_parens(cell).split(',') {
        let names: Vec<&str> = group.split('`').skip(1).step_by(2).collect();
        let Some((first, rest)) = names.split_first() else {
            continue;
        };
        let first = split(first);
        let parent = &first[..first.len() - 1];
        for n in rest {
            let mut p = parent.to_vec();
            p.extend(split(n));
            out.push(p);
        }
        out.push(first);
    }
    out
}

/// Splits a Markdown table row into cells (`\|` is not a separator).
fn table_cells(row: &str) -> Vec<String> {
    let mut cells = vec![String::new()];
    let mut chars = row.trim().trim_matches('|').chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cells.last_mut().expect("cell").push('|');
                chars.next();
            }
            '|' => cells.push(String::new()),
            _ => cells.last_mut().expect("cell").push(c),
        }
    }
    cells.iter().map(|c| c.trim().to_string()).collect()
}

/// One supported or partial row of `docs/ISTIO_SUPPORT.md`.
struct DocRow {
    /// The table's Istio kind.
    kind: &'static str,
    field: String,
    status: String,
    /// The key paths the Field cell names (`field_paths`).
    paths: Vec<Vec<String>>,
}

const KINDS: [&str; 10] = [
    "VirtualService",
    "DestinationRule",
    "Gateway",
    "Sidecar",
    "PeerAuthentication",
    "RequestAuthentication",
    "AuthorizationPolicy",
    "ServiceEntry",
    "WorkloadEntry",
    "Telemetry",
];

/// Every row of `docs/ISTIO_SUPPORT.md` whose status is supported or partial.
fn supported_rows() -> Vec<DocRow> {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ISTIO_SUPPORT.md");
    let doc = std::fs::read_to_string(&doc_path).expect("docs/ISTIO_SUPPORT.md");
    let mut kind = None;
    let mut rows = Vec::new();
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            kind = KINDS.iter().find(|k| **k == h.trim()).copied();
            continue;
        }
        let Some(kind) = kind else { continue };
        if !line.starts_with('|') {
            continue;
        }
        let cells = table_cells(line);
        if cells.len() < 3 || cells[0] == "Field" || cells[0].starts_with("---") {
            continue;
        }
        let status = cells[1].to_lowercase();
        if !(status.starts_with("supported") || status.starts_with("partial")) {
            continue;
        }
        let paths = field_paths(&cells[0]);
        assert!(
            !paths.is_empty(),
            "{}: {kind} row {:?} is {status} but names no `field`",
            doc_path.display(),
            cells[0]
        );
        rows.push(DocRow {
            kind,
            field: cells[0].clone(),
            status,
            paths,
        });
    }
    // The parse found every table (a reformatted document must not pass empty).
    for k in KINDS {
        let n = rows.iter().filter(|r| r.kind == k).count();
        let least = if k == "PeerAuthentication" { 3 } else { 5 };
        assert!(
            n >= least,
            "{}: found {n} supported {k} rows; was the table reformatted?",
            doc_path.display()
        );
    }
    rows
}

/// Every golden input: its path and documents.
fn golden_inputs() -> Vec<(PathBuf, Vec<serde_json::Value>)> {
    let mut out: Vec<_> = std::fs::read_dir(golden_dir())
        .expect("tests/golden")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            let docs = read_docs(&p);
            (p, docs)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Whether the keys `path` (list items skipped) hold `field` as consecutive keys.
fn names_field(path: &[String], field: &[String]) -> bool {
    path.windows(field.len()).any(|w| w == field)
}

/// Every field `docs/ISTIO_SUPPORT.md` marks supported or partial is set in at
/// least one golden fixture, on an object of the table's kind: the row's key
/// path occurs as consecutive keys of some path under that object's `spec`.
#[test]
fn supported_fields_have_goldens() {
    let mut set: BTreeMap<&str, Vec<Vec<String>>> = BTreeMap::new();
    for (_, docs) in golden_inputs() {
        for d in docs.iter().skip(1) {
            let Some(kind) = KINDS.iter().find(|k| d["kind"] == **k) else {
                continue;
            };
            key_paths(&d["spec"], &mut Vec::new(), set.entry(kind).or_default());
        }
    }
    let mut missing = Vec::new();
    for row in supported_rows() {
        let have = set.get(row.kind).map_or(&[][..], Vec::as_slice);
        for f in &row.paths {
            if !have.iter().any(|p| names_field(p, f)) {
                missing.push(format!(
                    "{} `{}` (row {:?})",
                    row.kind,
                    f.join("."),
                    row.field
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "fields marked supported/partial in docs/ISTIO_SUPPORT.md that no tests/golden/*.yaml sets:\n{}",
        missing.join("\n")
    );
}

/// Every mesh-file field the "Mesh file" section of `docs/ISTIO_SUPPORT.md`
/// marks supported is set in some fixture's `meshConfig`.
#[test]
fn supported_mesh_file_fields_have_goldens() {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ISTIO_SUPPORT.md");
    let doc = std::fs::read_to_string(&doc_path).expect("docs/ISTIO_SUPPORT.md");
    let mut in_section = false;
    let mut rows = Vec::new();
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            in_section = h.starts_with("Mesh file");
            continue;
        }
        if !in_section || !line.starts_with('|') {
            continue;
        }
        let cells = table_cells(line);
        if cells.len() >= 3 && cells[1].to_lowercase().starts_with("supported") {
            rows.extend(field_paths(&cells[0]));
        }
    }
    assert!(
        rows.len() >= 5,
        "the Mesh file table was not found: {rows:?}"
    );
    let mut set = Vec::new();
    for (p, docs) in golden_inputs() {
        if let Some(text) = docs[0]["meshConfig"].as_str() {
            let v: serde_json::Value = serde_saphyr::from_str(text)
                .unwrap_or_else(|e| panic!("{}: meshConfig: {e}", p.display()));
            key_paths(&v, &mut Vec::new(), &mut set);
        }
    }
    let missing: Vec<String> = rows
        .iter()
        .filter(|f| !set.iter().any(|p| p == *f))
        .map(|f| f.join("."))
        .collect();
    assert!(
        missing.is_empty(),
        "mesh-file fields marked supported that no tests/golden/*.yaml meshConfig sets: {missing:?}"
    );
}

/// Removes the key at `path` (object keys and list indices) from `v`.
fn remove_at(v: &mut serde_json::Value, path: &[serde_json::Value]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for step in parents {
        cur = match step {
            serde_json::Value::String(k) => &mut cur[k.as_str()],
            serde_json::Value::Number(i) => &mut cur[i.as_u64().unwrap_or(0) as usize],
            _ => return,
        };
    }
    if let (Some(m), Some(k)) = (cur.as_object_mut(), last.as_str()) {
        m.remove(k);
    }
}

/// Every key of `v` as its concrete location (keys and list indices) and its
/// key names alone.
fn locations(
    v: &serde_json::Value,
    at: &mut Vec<serde_json::Value>,
    out: &mut Vec<(Vec<serde_json::Value>, Vec<String>)>,
) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, child) in m {
                at.push(k.clone().into());
                let names = at
                    .iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect();
                out.push((at.clone(), names));
                locations(child, at, out);
                at.pop();
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                at.push(i.into());
                locations(child, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

/// The value at `path` (object keys and list indices) in `v`.
fn pointer<'v>(v: &'v serde_json::Value, path: &[serde_json::Value]) -> &'v serde_json::Value {
    path.iter().fold(v, |cur, step| match step {
        serde_json::Value::String(k) => &cur[k.as_str()],
        serde_json::Value::Number(i) => &cur[i.as_u64().unwrap_or(0) as usize],
        _ => &serde_json::Value::Null,
    })
}

/// Whether `v` is what an absent field means (0, false, empty): removing it
/// cannot change anything.
fn is_zero(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => true,
        serde_json::Value::Bool(b) => !b,
        serde_json::Value::Number(n) => n.as_f64() == Some(0.0),
        serde_json::Value::String(s) => s.is_empty(),
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(m) => m.is_empty(),
    }
}

/// Rows whose fields have no effect on the Envoy config by design, and why.
const NO_EFFECT: [(&str, &str, &str); 2] = [
    (
        "VirtualService",
        "retries.retryIgnorePreviousHosts",
        "true, the only value accepted, is Istio's default and what crossmesh does without it",
    ),
    (
        "Sidecar",
        "captureMode",
        "DEFAULT, the only mode accepted, is what the proxy does without it",
    ),
];

/// Every field `docs/ISTIO_SUPPORT.md` marks supported or partial shows in some
/// golden's Envoy config: removing it from a fixture that sets it (one
/// occurrence at a time) changes what that fixture renders. Rows documented as
/// having no traffic effect, and those in `NO_EFFECT`, are left out. Required
/// fields, whose removal only ever gets their object rejected, cannot be checked
/// this way and pass.
#[test]
fn supported_fields_show_in_goldens() {
    let inputs: Vec<_> = golden_inputs()
        .into_iter()
        .map(|(path, docs)| {
            let (ctx, proxy) = from_docs(&docs, &path).unwrap_or_else(|e| panic!("{e}"));
            let base = render(&ctx, &proxy);
            (path, docs, base)
        })
        .collect();
    let mut silent = Vec::new();
    for row in supported_rows() {
        if row.status.contains("no traffic effect") {
            continue;
        }
        for f in &row.paths {
            let name = f.join(".");
            if NO_EFFECT
                .iter()
                .any(|(k, n, _)| *k == row.kind && name.ends_with(n))
            {
                continue;
            }
            // Removals that rendered the same config, and that were rejected.
            let (mut same, mut rejected) = (0, 0);
            let shown = inputs.iter().any(|(path, docs, base)| {
                (1..docs.len())
                    .filter(|i| docs[*i]["kind"] == row.kind)
                    .any(|i| {
                        let mut locs = Vec::new();
                        locations(&docs[i]["spec"], &mut Vec::new(), &mut locs);
                        locs.iter()
                            .filter(|(at, names)| {
                                names.ends_with(f) && !is_zero(pointer(&docs[i]["spec"], at))
                            })
                            .any(|(at, _)| {
                                let mut changed = docs.clone();
                                remove_at(&mut changed[i]["spec"], at);
                                match from_docs(&changed, path) {
                                    Ok((ctx, proxy)) if render(&ctx, &proxy) != *base => true,
                                    Ok(_) => {
                                        same += 1;
                                        false
                                    }
                                    Err(_) => {
                                        rejected += 1;
                                        false
                                    }
                                }
                            })
                    })
            });
            if !shown && same > 0 {
                silent.push(format!(
                    "{} `{name}` (row {:?}): removed {same} times without a change ({rejected} removals rejected)",
                    row.kind, row.field
                ));
            }
        }
    }
    assert!(
        silent.is_empty(),
        "fields marked supported/partial in docs/ISTIO_SUPPORT.md whose removal changes no golden:\n{}",
        silent.join("\n")
    );
}
