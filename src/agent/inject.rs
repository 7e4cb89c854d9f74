//! Sidecar injection: what the agent's mutating webhook (`agent::webhook`) adds to
//! a Pod. Pure and I/O-free: an AdmissionReview v1 request body in, the
//! AdmissionReview v1 response out ([`review`]), its JSON Patch built from an
//! [`InjectConfig`] and the Pod's own labels and annotations.
//!
//! Which pods, as Istio's `injectRequired` (`pkg/kube/inject/inject.go`): the
//! webhook configuration's namespaceSelector (`istio-injection=enabled`) and
//! objectSelector (`sidecar.istio.io/inject=true`) decide what is sent; of that,
//! a pod is left untouched when it uses the host network, lives in a system
//! namespace (`kube-system`, `kube-public`, `kube-node-lease`,
//! `local-path-storage`), is already injected (`sidecar.istio.io/status` or an
//! `istio-proxy` container), or opts out with `sidecar.istio.io/inject` (the
//! label wins over the annotation; `y`, `yes`, `true`, `on`, `enable`, `enabled`
//! inject, any other non-empty value opts out).
//!
//! What is added, after Istio's injection template
//! (`manifests/charts/istio-control/istio-discovery/files/injection-template.yaml`):
//! - init container `istio-init` (the proxy-init image, root with `NET_ADMIN` and
//!   `NET_RAW`): `crossmesh iptables` with the pod's `traffic.sidecar.istio.io/*`
//!   annotations (REDIRECT mode; none in NONE mode);
//! - init container `crossmesh-bootstrap`: `crossmesh bootstrap --role sidecar`
//!   with the pod's name, namespace, IP and service account from the downward
//!   API, its labels, the cluster, network and TLS xDS address, writing Envoy's
//!   bootstrap into the in-memory emptyDir `crossmesh-envoy`;
//! - container `istio-proxy` (Envoy as UID/GID 1337, as Istio names it): that
//!   bootstrap plus the status listener on 15021 (`/healthz/ready` -> admin
//!   `/ready`) inlined with `--config-yaml`, a readiness probe on it; the mesh
//!   root from the ConfigMap `crossmesh-ca-root-cert`, and a projected
//!   service-account token (audience `istio-ca`) that authenticates it to the
//!   hub. With native sidecars it is the third init container, with
//!   `restartPolicy: Always` and a startup probe, so application containers start
//!   once Envoy is ready; otherwise it is the first of `containers` (no
//!   `holdApplicationUntilProxyStarts`: kubelet starts it first but does not wait);
//! - volumes `crossmesh-envoy`, `crossmesh-ca-root-cert`, `istio-token`;
//! - annotation `sidecar.istio.io/status` (what was added, Istio's format);
//!   labels `security.istio.io/tlsMode: istio` (auto mTLS), and
//!   `service.istio.io/canonical-name` / `-revision` when the pod has none.
//!
//! Errors, as Istio's webhook (`pkg/kube/inject/webhook.go`): an empty body is an
//! HTTP 400; a body that is not an AdmissionReview v1 for a Pod, or a pod whose
//! injection annotations are bad or unimplemented, gets `allowed: false` with a
//! `status.message` naming the pod and the annotation. Unknown `sidecar.istio.io/*`
//! annotations that do not change traffic are ignored with an admission warning.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use crate::bootstrap::XdsAddress;
use crate::iptables::{self, Ports, Ranges};

/// Envoy's container, named as Istio's so `kubectl logs -c istio-proxy` works.
pub const PROXY_CONTAINER: &str = "istio-proxy";
/// The interception init container, named as Istio's.
pub const INIT_CONTAINER: &str = "istio-init";
/// The init container that writes Envoy's bootstrap.
pub const BOOTSTRAP_CONTAINER: &str = "crossmesh-bootstrap";
pub const ENVOY_VOLUME: &str = "crossmesh-envoy";
pub const ROOT_CERT_VOLUME: &str = "crossmesh-ca-root-cert";
pub const TOKEN_VOLUME: &str = "istio-token";
/// Where Envoy's bootstrap is written and read.
pub const BOOTSTRAP_PATH: &str = "/etc/envoy/envoy.yaml";
const ENVOY_DIR: &str = "/etc/envoy";
const ROOT_CERT_DIR: &str = "/etc/crossmesh-ca";
const TOKEN_DIR: &str = "/var/run/secrets/tokens";
/// Envoy's admin port (127.0.0.1 only) and the status port kubelet probes.
pub const ADMIN_PORT: u16 = 15000;
pub const STATUS_PORT: u16 = 15021;

pub const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
pub const INJECT_KEY: &str = "sidecar.istio.io/inject";
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
pub const CANONICAL_NAME_LABEL: &str = "service.istio.io/canonical-name";
pub const CANONICAL_REVISION_LABEL: &str = "service.istio.io/canonical-revision";

const A_INTERCEPTION: &str = "sidecar.istio.io/interceptionMode";
const A_INCLUDE_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
const A_EXCLUDE_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
const A_INCLUDE_INBOUND: &str = "traffic.sidecar.istio.io/includeInboundPorts";
const A_EXCLUDE_INBOUND: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
const A_INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
const A_EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
const A_PROXY_IMAGE: &str = "sidecar.istio.io/proxyImage";
const A_LOG_LEVEL: &str = "sidecar.istio.io/logLevel";
const A_CPU: &str = "sidecar.istio.io/proxyCPU";
const A_MEMORY: &str = "sidecar.istio.io/proxyMemory";
const A_CPU_LIMIT: &str = "sidecar.istio.io/proxyCPULimit";
const A_MEMORY_LIMIT: &str = "sidecar.istio.io/proxyMemoryLimit";

/// The injection annotations crossmesh implements (besides `inject` and `status`).
pub const SUPPORTED_ANNOTATIONS: [&str; 13] = [
    A_INTERCEPTION,
    A_INCLUDE_RANGES,
    A_EXCLUDE_RANGES,
    A_INCLUDE_INBOUND,
    A_EXCLUDE_INBOUND,
    A_INCLUDE_OUTBOUND_PORTS,
    A_EXCLUDE_OUTBOUND_PORTS,
    A_PROXY_IMAGE,
    A_LOG_LEVEL,
    A_CPU,
    A_MEMORY,
    A_CPU_LIMIT,
    A_MEMORY_LIMIT,
];

/// Annotation prefixes whose unknown keys are refused: they change what traffic is
/// captured or how the proxy is configured, so ignoring one would silently give
/// the pod something else than it asked for.
const REFUSED_PREFIXES: [&str; 2] = ["traffic.sidecar.istio.io/", "proxy.istio.io/"];
/// Annotation prefixes whose unknown keys are ignored with an admission warning.
const WARNED_PREFIXES: [&str; 3] = [
    "sidecar.istio.io/",
    "status.sidecar.istio.io/",
    "readiness.status.sidecar.istio.io/",
];

/// Istio's `IgnoredNamespaces`: never injected.
const IGNORED_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];

/// What the injector adds, set by the agent (its flags) and the API server's
/// version (`native_sidecars`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectConfig {
    /// Envoy's image (Istio's `global.proxy.image`).
    pub proxy_image: String,
    /// The crossmesh image, whose `crossmesh bootstrap` writes Envoy's bootstrap.
    pub crossmesh_image: String,
    /// The proxy-init image (deploy/Dockerfile target `proxy-init`): crossmesh
    /// with iptables, for `crossmesh iptables`.
    pub proxy_init_image: String,
    pub image_pull_policy: String,
    /// The hub's TLS xDS address (`xdsTlsAddress`) as the pods reach it.
    pub xds_address: XdsAddress,
    /// This cluster's name in the hub's mesh file (Istio's `CLUSTER_ID`).
    pub cluster_id: String,
    /// This cluster's network (Istio's `NETWORK`); empty: the one flat network.
    pub network: String,
    /// The mesh's `domainSuffix` (node ids end in `NS.svc.<domainSuffix>`).
    pub domain_suffix: String,
    /// Envoy as a native sidecar (an init container with `restartPolicy:
    /// Always`): Kubernetes 1.29 and later.
    pub native_sidecars: bool,
    /// Envoy's UID and GID; `crossmesh iptables` leaves their traffic alone.
    pub proxy_uid: i64,
    pub proxy_gid: i64,
    /// The ConfigMap holding the mesh root (`security::root_publisher`).
    pub root_cert_config_map: String,
    /// The projected token's audience (the hub's `tokenAudiences`).
    pub token_audience: String,
    pub token_expiration_seconds: i64,
    /// Envoy's worker threads (Istio's `proxy.concurrency` default, 2).
    pub concurrency: u32,
    /// Also capture IPv6 (`crossmesh iptables --ipv6`).
    pub ipv6: bool,
    /// Mesh-wide capture defaults, replaced by the pod's annotations as in
    /// Istio's template (`global.proxy.includeIPRanges`, `excludeIPRanges`,
    /// `excludeInboundPorts`, `excludeOutboundPorts`).
    pub include_outbound_ip_ranges: String,
    pub exclude_outbound_ip_ranges: String,
    pub exclude_inbound_ports: String,
    pub exclude_outbound_ports: String,
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            proxy_image: "envoyproxy/envoy:v1.40.0".into(),
            crossmesh_image: "crossmesh".into(),
            proxy_init_image: "crossmesh-proxy-init".into(),
            image_pull_policy: "IfNotPresent".into(),
            xds_address: XdsAddress {
                host: "crossmesh.crossmesh-system.svc".into(),
                port: 15012,
            },
            cluster_id: "Kubernetes".into(),
            network: String::new(),
            domain_suffix: "cluster.local".into(),
            native_sidecars: false,
            proxy_uid: 1337,
            proxy_gid: 1337,
            root_cert_config_map: crate::security::root_publisher::CONFIGMAP.into(),
            token_audience: "istio-ca".into(),
            token_expiration_seconds: 3600,
            concurrency: 2,
            ipv6: false,
            include_outbound_ip_ranges: "*".into(),
            exclude_outbound_ip_ranges: String::new(),
            exclude_inbound_ports: String::new(),
            exclude_outbound_ports: String::new(),
        }
    }
}

/// What became of one review, for the webhook's logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Patched; `warnings` annotations were ignored (listed in the response).
    Injected { pod: String, warnings: usize },
    /// Allowed without a patch.
    Skipped { pod: String, reason: String },
    /// `allowed: false` with this message.
    Refused { reason: String },
    /// Not answered with an AdmissionReview (HTTP 400).
    BadRequest { reason: String },
}

/// The HTTP answer to one webhook call.
#[derive(Debug, Clone)]
pub struct Reply {
    pub http_status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub outcome: Outcome,
}

/// Answer one AdmissionReview v1 request body (`POST /inject`). Never panics.
pub fn review(cfg: &InjectConfig, body: &[u8]) -> Reply {
    if body.iter().all(u8::is_ascii_whitespace) {
        let reason = "no body found".to_string();
        return Reply {
            http_status: 400,
            content_type: "text/plain; charset=utf-8",
            body: reason.clone().into_bytes(),
            outcome: Outcome::BadRequest { reason },
        };
    }
    let (uid, result) = match serde_json::from_slice::<Value>(body) {
        Err(e) => (String::new(), Err(format!("could not decode body: {e}"))),
        Ok(v) => {
            let uid = v
                .pointer("/request/uid")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            (uid, decide(cfg, &v))
        }
    };
    let mut response = json!({ "uid": uid, "allowed": true });
    let outcome = match result {
        Err(reason) => {
            response["allowed"] = json!(false);
            response["status"] = json!({ "message": reason });
            Outcome::Refused { reason }
        }
        Ok(Decision::Skip { pod, reason }) => Outcome::Skipped { pod, reason },
        Ok(Decision::Inject {
            pod,
            patch,
            warnings,
        }) => {
            let patch = serde_json::to_vec(&patch).unwrap_or_default();
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
            if !warnings.is_empty() {
                response["warnings"] = json!(warnings);
            }
            Outcome::Injected {
                pod,
                warnings: warnings.len(),
            }
        }
    };
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    });
    Reply {
        http_status: 200,
        content_type: "application/json",
        body: serde_json::to_vec(&review).unwrap_or_default(),
        outcome,
    }
}

enum Decision {
    Skip {
        pod: String,
        reason: String,
    },
    Inject {
        pod: String,
        patch: Vec<Value>,
        warnings: Vec<String>,
    },
}

/// The pod's display name: `ns/name`, or `ns/<generateName>*` before the API
/// server has named it (Istio's `potentialPodName`).
fn pod_display(pod: &Pod, ns: &str) -> String {
    match (&pod.metadata.name, &pod.metadata.generate_name) {
        (Some(n), _) if !n.is_empty() => format!("{ns}/{n}"),
        (_, Some(g)) if !g.is_empty() => format!("{ns}/{g}*"),
        _ => format!("{ns}/<unnamed>"),
    }
}

fn decide(cfg: &InjectConfig, v: &Value) -> Result<Decision, String> {
    let api_version = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
    if api_version != "admission.k8s.io/v1" || kind != "AdmissionReview" {
        return Err(format!(
            "expected an admission.k8s.io/v1 AdmissionReview (admissionReviewVersions: [v1]), \
             got apiVersion {api_version:?} kind {kind:?}"
        ));
    }
    let req = v
        .get("request")
        .filter(|r| r.is_object())
        .ok_or("the AdmissionReview has no request")?;
    if req
        .get("uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        return Err("the AdmissionReview request has no uid".into());
    }
    let group = req.pointer("/kind/group").and_then(Value::as_str);
    let rkind = req.pointer("/kind/kind").and_then(Value::as_str);
    if group != Some("") || rkind != Some("Pod") {
        return Err(format!(
            "the request is for {}/{}, not a core/v1 Pod",
            group.unwrap_or("?"),
            rkind.unwrap_or("?")
        ));
    }
    let object = req
        .get("object")
        .filter(|o| o.is_object())
        .ok_or("the AdmissionReview request has no object")?;
    let pod: Pod = serde_json::from_value(object.clone())
        .map_err(|e| format!("could not unmarshal the Pod: {e}"))?;
    let ns = pod
        .metadata
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            req.get("namespace")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .unwrap_or_default();
    let name = pod_display(&pod, &ns);
    let skip = |reason: String| {
        Ok(Decision::Skip {
            pod: name.clone(),
            reason,
        })
    };
    match req.get("operation").and_then(Value::as_str) {
        Some("CREATE") => {}
        op => return skip(format!("operation {op:?} is not CREATE")),
    }
    let Some(spec) = &pod.spec else {
        return Err(format!("pod {name}: no spec"));
    };
    if spec.host_network == Some(true) {
        return skip("hostNetwork pod".into());
    }
    if IGNORED_NAMESPACES.contains(&ns.as_str()) {
        return skip(format!("namespace {ns} is never injected"));
    }
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    if annotations.contains_key(STATUS_ANNOTATION) {
        return skip(format!("already injected ({STATUS_ANNOTATION} is set)"));
    }
    let has_proxy = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == PROXY_CONTAINER);
    if has_proxy {
        return skip(format!(
            "already injected (it has a {PROXY_CONTAINER} container)"
        ));
    }
    let opt = labels
        .get(INJECT_KEY)
        .map(|v| ("label", v))
        .or_else(|| annotations.get(INJECT_KEY).map(|v| ("annotation", v)));
    if let Some((what, value)) = opt {
        let on = matches!(
            value.to_ascii_lowercase().as_str(),
            "y" | "yes" | "true" | "on" | "enable" | "enabled"
        );
        if !on && !value.is_empty() {
            return skip(format!("opted out by {what} {INJECT_KEY}={value}"));
        }
    }

    let plan = Plan::read(cfg, &annotations)
        .map_err(|errs| format!("pod {name}: sidecar injection refused: {}", errs.join("; ")))?;
    for (k, v) in &labels {
        let bad = |s: &str| s.contains([',', '=']) || s.chars().any(char::is_whitespace);
        if bad(k) || bad(v) {
            return Err(format!(
                "pod {name}: label {k:?}={v:?} is not a valid Kubernetes label"
            ));
        }
    }
    let ours_init = [INIT_CONTAINER, BOOTSTRAP_CONTAINER, PROXY_CONTAINER];
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        if ours_init.contains(&c.name.as_str()) {
            return Err(format!(
                "pod {name}: it already has a container named {} that injection adds",
                c.name
            ));
        }
    }
    for vol in spec.volumes.iter().flatten() {
        if [ENVOY_VOLUME, ROOT_CERT_VOLUME, TOKEN_VOLUME].contains(&vol.name.as_str()) {
            return Err(format!(
                "pod {name}: it already has a volume named {} that injection adds",
                vol.name
            ));
        }
    }

    let patch = build_patch(cfg, &plan, &pod, object, &labels, &annotations);
    let mut warnings = plan.warnings.clone();
    if let Some(capture) = &plan.capture {
        warnings.extend(probe_warnings(spec, capture));
    }
    Ok(Decision::Inject {
        pod: name,
        patch,
        warnings,
    })
}

/// The pod's injection annotations, read and checked.
struct Plan {
    /// `None`: NONE interception (no `istio-init`).
    capture: Option<iptables::CaptureConfig>,
    proxy_image: Option<String>,
    log_level: String,
    requests: BTreeMap<&'static str, String>,
    limits: BTreeMap<&'static str, String>,
    warnings: Vec<String>,
}

fn is_quantity(s: &str) -> bool {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(
            r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$",
        )
        .expect("static regex")
    })
    .is_match(s)
}

impl Plan {
    fn read(cfg: &InjectConfig, a: &BTreeMap<String, String>) -> Result<Plan, Vec<String>> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        for k in a.keys() {
            let known = k == INJECT_KEY
                || k == STATUS_ANNOTATION
                || SUPPORTED_ANNOTATIONS.contains(&k.as_str());
            if known {
                continue;
            }
            if REFUSED_PREFIXES.iter().any(|p| k.starts_with(p)) {
                errors.push(format!(
                    "annotation {k} is not implemented by crossmesh (it would change traffic \
                     capture or proxy config)"
                ));
            } else if WARNED_PREFIXES.iter().any(|p| k.starts_with(p)) {
                warnings.push(format!(
                    "annotation {k} is not implemented by crossmesh and was ignored"
                ));
            }
        }
        let get = |k: &str, default: &str| a.get(k).cloned().unwrap_or_else(|| default.into());
        let mut capture = None;
        match a.get(A_INTERCEPTION).map(String::as_str) {
            None | Some("REDIRECT") => {
                let mut c = iptables::CaptureConfig {
                    proxy_uid: u32::try_from(cfg.proxy_uid).unwrap_or(1337),
                    proxy_gid: u32::try_from(cfg.proxy_gid).unwrap_or(1337),
                    ipv6: cfg.ipv6,
                    ..Default::default()
                };
                let mut check = |r: Result<(), iptables::IptablesError>| {
                    if let Err(e) = r {
                        errors.push(format!("annotation {e}"));
                    }
                };
                check(
                    iptables::parse_ports(A_INCLUDE_INBOUND, &get(A_INCLUDE_INBOUND, "*"))
                        .map(|p| c.inbound_ports = p),
                );
                check(
                    iptables::parse_port_list(
                        A_EXCLUDE_INBOUND,
                        &get(A_EXCLUDE_INBOUND, &cfg.exclude_inbound_ports),
                    )
                    .map(|p| {
                        for port in p {
                            if !c.exclude_inbound_ports.contains(&port) {
                                c.exclude_inbound_ports.push(port);
                            }
                        }
                    }),
                );
                check(
                    iptables::parse_port_list(
                        A_INCLUDE_OUTBOUND_PORTS,
                        &get(A_INCLUDE_OUTBOUND_PORTS, ""),
                    )
                    .map(|p| c.include_outbound_ports = p),
                );
                check(
                    iptables::parse_port_list(
                        A_EXCLUDE_OUTBOUND_PORTS,
                        &get(A_EXCLUDE_OUTBOUND_PORTS, &cfg.exclude_outbound_ports),
                    )
                    .map(|p| c.exclude_outbound_ports = p),
                );
                check(
                    iptables::parse_ranges(
                        A_INCLUDE_RANGES,
                        &get(A_INCLUDE_RANGES, &cfg.include_outbound_ip_ranges),
                    )
                    .map(|r| c.include_outbound_ranges = r),
                );
                check(
                    iptables::parse_cidr_list(
                        A_EXCLUDE_RANGES,
                        &get(A_EXCLUDE_RANGES, &cfg.exclude_outbound_ip_ranges),
                    )
                    .map(|r| c.exclude_outbound_ranges = r),
                );
                capture = Some(c);
            }
            Some("NONE") => {}
            Some(other) => errors.push(format!(
                "annotation {A_INTERCEPTION}: {other:?} is not implemented (REDIRECT or NONE)"
            )),
        }
        let log_level = get(A_LOG_LEVEL, "warning");
        if !matches!(
            log_level.as_str(),
            "trace" | "debug" | "info" | "warning" | "warn" | "error" | "critical" | "off"
        ) {
            errors.push(format!(
                "annotation {A_LOG_LEVEL}: {log_level:?} is not an Envoy log level \
                 (trace, debug, info, warning, error, critical, off)"
            ));
        }
        let proxy_image = a.get(A_PROXY_IMAGE).cloned();
        if proxy_image.as_deref().is_some_and(|i| i.trim().is_empty()) {
            errors.push(format!("annotation {A_PROXY_IMAGE}: empty image"));
        }
        let mut requests =
            BTreeMap::from([("cpu", "100m".to_string()), ("memory", "128Mi".into())]);
        let mut limits =
            BTreeMap::from([("cpu", "2000m".to_string()), ("memory", "1024Mi".into())]);
        for (key, limit, res) in [
            (A_CPU, false, "cpu"),
            (A_MEMORY, false, "memory"),
            (A_CPU_LIMIT, true, "cpu"),
            (A_MEMORY_LIMIT, true, "memory"),
        ] {
            if let Some(q) = a.get(key) {
                if !is_quantity(q) {
                    errors.push(format!(
                        "annotation {key}: {q:?} is not a resource quantity"
                    ));
                } else if limit {
                    limits.insert(res, q.clone());
                } else {
                    requests.insert(res, q.clone());
                }
            }
        }
        if errors.is_empty() {
            Ok(Plan {
                capture,
                proxy_image,
                log_level,
                requests,
                limits,
                warnings,
            })
        } else {
            Err(errors)
        }
    }
}

/// Kubelet probes of application ports that the sidecar captures. Istio rewrites
/// them to go through its agent (`sidecar.istio.io/rewriteAppHTTPProbers`,
/// default on); crossmesh does not, so such a probe reaches the app through
/// Envoy's inbound listener, which works in PERMISSIVE mode but is refused under
/// STRICT mTLS (kubelet speaks plaintext). One warning per probe.
fn probe_warnings(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    c: &iptables::CaptureConfig,
) -> Vec<String> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let captured = |port: u16| match &c.inbound_ports {
        Ports::All => !c.exclude_inbound_ports.contains(&port),
        Ports::List(l) => l.contains(&port),
    };
    let mut out = Vec::new();
    for ct in &spec.containers {
        for (kind, probe) in [
            ("livenessProbe", &ct.liveness_probe),
            ("readinessProbe", &ct.readiness_probe),
            ("startupProbe", &ct.startup_probe),
        ] {
            let Some(p) = probe else { continue };
            let port = p
                .http_get
                .as_ref()
                .map(|h| &h.port)
                .or(p.tcp_socket.as_ref().map(|t| &t.port))
                .cloned()
                .or(p.grpc.as_ref().map(|g| IntOrString::Int(g.port)));
            let number = match &port {
                Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
                Some(IntOrString::String(name)) => ct
                    .ports
                    .iter()
                    .flatten()
                    .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                    .and_then(|cp| u16::try_from(cp.container_port).ok()),
                None => None,
            };
            if let Some(n) = number.filter(|n| captured(*n)) {
                out.push(format!(
                    "container {}: its {kind} on port {n} passes through the sidecar \
                     (crossmesh does not rewrite probes); under STRICT mTLS it fails: \
                     exclude the port with {A_EXCLUDE_INBOUND}",
                    ct.name
                ));
            }
        }
    }
    out
}

/// RFC 6901: `~` is `~0`, `/` is `~1`.
fn pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn join_ports(p: &[u16]) -> String {
    p.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

fn ranges_arg(r: &Ranges) -> String {
    match r {
        Ranges::All => "*".into(),
        Ranges::List(l) => l
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// `crossmesh iptables` arguments for the pod (every flag spelled out).
fn iptables_args(c: &iptables::CaptureConfig) -> Vec<String> {
    let inbound = match &c.inbound_ports {
        Ports::All => "*".to_string(),
        Ports::List(l) => join_ports(l),
    };
    let mut args: Vec<String> = vec![
        "iptables".into(),
        "--proxy-port".into(),
        c.proxy_port.to_string(),
        "--inbound-capture-port".into(),
        c.inbound_capture_port.to_string(),
        "--proxy-uid".into(),
        c.proxy_uid.to_string(),
        "--proxy-gid".into(),
        c.proxy_gid.to_string(),
        "--inbound-ports".into(),
        inbound,
        "--exclude-inbound-ports".into(),
        join_ports(&c.exclude_inbound_ports),
        "--include-outbound-ports".into(),
        join_ports(&c.include_outbound_ports),
        "--exclude-outbound-ports".into(),
        join_ports(&c.exclude_outbound_ports),
        "--include-outbound-ip-ranges".into(),
        ranges_arg(&c.include_outbound_ranges),
        "--exclude-outbound-ip-ranges".into(),
        ranges_arg(&Ranges::List(c.exclude_outbound_ranges.clone())),
    ];
    if c.ipv6 {
        args.push("--ipv6".into());
    }
    args
}

/// The status listener Envoy gets with `--config-yaml` (merged into the
/// bootstrap): `GET :15021/healthz/ready` answers with the admin `/ready`, 200
/// once Envoy has its first clusters and listeners. Only that admin path is
/// reachable from outside the pod.
pub fn status_listener() -> Value {
    json!({
        "static_resources": {
            "listeners": [{
                "name": "status",
                "address": { "socket_address": { "address": "0.0.0.0", "port_value": STATUS_PORT } },
                "filter_chains": [{
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "status",
                            "route_config": {
                                "name": "status",
                                "virtual_hosts": [{
                                    "name": "status",
                                    "domains": ["*"],
                                    "routes": [{
                                        "match": { "path": "/healthz/ready" },
                                        "route": { "cluster": "envoy_admin", "prefix_rewrite": "/ready" }
                                    }]
                                }]
                            },
                            "http_filters": [{
                                "name": "envoy.filters.http.router",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                                }
                            }]
                        }
                    }]
                }]
            }],
            "clusters": [{
                "name": "envoy_admin",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": "envoy_admin",
                    "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                        "socket_address": { "address": "127.0.0.1", "port_value": ADMIN_PORT }
                    } } }] }]
                }
            }]
        }
    })
}

/// The workload a pod belongs to, as Istio's `GetDeployMetaFromPod`: a
/// ReplicaSet owner minus its `pod-template-hash` suffix (the Deployment), else
/// the controller's name, else the pod's name (or generateName).
fn workload_name(pod: &Pod, labels: &BTreeMap<String, String>) -> String {
    let owners = pod.metadata.owner_references.iter().flatten();
    let controller = owners
        .clone()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.clone().next());
    if let Some(o) = controller {
        if o.kind == "ReplicaSet" {
            if let Some(hash) = labels.get("pod-template-hash") {
                if let Some(d) = o.name.strip_suffix(&format!("-{hash}")) {
                    return d.to_string();
                }
            }
        }
        return o.name.clone();
    }
    match (&pod.metadata.name, &pod.metadata.generate_name) {
        (Some(n), _) if !n.is_empty() => n.clone(),
        (_, Some(g)) => g.trim_end_matches('-').to_string(),
        _ => String::new(),
    }
}

fn env_value(name: &str, value: &str) -> Value {
    json!({ "name": name, "value": value })
}

fn env_field(name: &str, path: &str) -> Value {
    json!({ "name": name, "valueFrom": { "fieldRef": { "apiVersion": "v1", "fieldPath": path } } })
}

fn build_patch(
    cfg: &InjectConfig,
    plan: &Plan,
    pod: &Pod,
    object: &Value,
    labels: &BTreeMap<String, String>,
    _annotations: &BTreeMap<String, String>,
) -> Vec<Value> {
    let mut ops = Vec::new();
    let absent = |ptr: &str| object.pointer(ptr).is_none_or(Value::is_null);

    // Labels: tlsMode for auto mTLS; canonical service name and revision.
    let mut added: BTreeMap<String, String> = BTreeMap::new();
    if !labels.contains_key(TLS_MODE_LABEL) {
        added.insert(TLS_MODE_LABEL.into(), "istio".into());
    }
    if !labels.contains_key(CANONICAL_NAME_LABEL) {
        let name = ["app.kubernetes.io/name", "app"]
            .iter()
            .find_map(|k| labels.get(*k).cloned())
            .unwrap_or_else(|| workload_name(pod, labels));
        if !name.is_empty() {
            added.insert(CANONICAL_NAME_LABEL.into(), name);
        }
    }
    if !labels.contains_key(CANONICAL_REVISION_LABEL) {
        let rev = ["app.kubernetes.io/version", "version"]
            .iter()
            .find_map(|k| labels.get(*k).cloned())
            .unwrap_or_else(|| "latest".into());
        added.insert(CANONICAL_REVISION_LABEL.into(), rev);
    }
    if absent("/metadata/labels") {
        ops.push(json!({ "op": "add", "path": "/metadata/labels", "value": added }));
    } else {
        for (k, v) in &added {
            ops.push(json!({
                "op": "add",
                "path": format!("/metadata/labels/{}", pointer_escape(k)),
                "value": v,
            }));
        }
    }
    let mut all_labels = labels.clone();
    all_labels.extend(added);
    let labels_arg = all_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");

    let uid = cfg.proxy_uid;
    let gid = cfg.proxy_gid;
    let restricted = json!({
        "runAsUser": uid,
        "runAsGroup": gid,
        "runAsNonRoot": true,
        "allowPrivilegeEscalation": false,
        "privileged": false,
        "readOnlyRootFilesystem": true,
        "capabilities": { "drop": ["ALL"] },
    });

    let mut init = Vec::new();
    if let Some(capture) = &plan.capture {
        init.push(json!({
            "name": INIT_CONTAINER,
            "image": cfg.proxy_init_image,
            "imagePullPolicy": cfg.image_pull_policy,
            "args": iptables_args(capture),
            "resources": {
                "requests": { "cpu": "10m", "memory": "10Mi" },
                "limits": { "cpu": "2000m", "memory": "1024Mi" },
            },
            // As Istio's istio-init: root with the two capabilities iptables needs
            // in the pod's network namespace, nothing else.
            "securityContext": {
                "runAsUser": 0,
                "runAsGroup": 0,
                "runAsNonRoot": false,
                "allowPrivilegeEscalation": false,
                "privileged": false,
                "readOnlyRootFilesystem": false,
                "capabilities": { "add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"] },
            },
        }));
    }
    let interception = if plan.capture.is_some() {
        "redirect"
    } else {
        "none"
    };
    init.push(json!({
        "name": BOOTSTRAP_CONTAINER,
        "image": cfg.crossmesh_image,
        "imagePullPolicy": cfg.image_pull_policy,
        "args": ["bootstrap"],
        // Every `crossmesh bootstrap` flag reads CROSSMESH_<FLAG>.
        "env": [
            env_value("CROSSMESH_ROLE", "sidecar"),
            env_field("CROSSMESH_NAME", "metadata.name"),
            env_field("CROSSMESH_NAMESPACE", "metadata.namespace"),
            env_field("CROSSMESH_IP", "status.podIP"),
            env_field("CROSSMESH_SERVICE_ACCOUNT", "spec.serviceAccountName"),
            env_value("CROSSMESH_LABELS", &labels_arg),
            env_value("CROSSMESH_CLUSTER_ID", &cfg.cluster_id),
            env_value("CROSSMESH_NETWORK", &cfg.network),
            env_value("CROSSMESH_DOMAIN_SUFFIX", &cfg.domain_suffix),
            env_value("CROSSMESH_INTERCEPTION", interception),
            env_value("CROSSMESH_XDS_ADDRESS", &cfg.xds_address.to_string()),
            env_value("CROSSMESH_ROOT_CERT", &format!("{ROOT_CERT_DIR}/{}", crate::security::root_publisher::KEY)),
            env_value("CROSSMESH_TOKEN_FILE", &format!("{TOKEN_DIR}/{TOKEN_VOLUME}")),
            env_value("CROSSMESH_ADMIN_PORT", &ADMIN_PORT.to_string()),
            env_value("CROSSMESH_OUTPUT", BOOTSTRAP_PATH),
        ],
        "resources": {
            "requests": { "cpu": "10m", "memory": "16Mi" },
            "limits": { "memory": "64Mi" },
        },
        "securityContext": restricted,
        "volumeMounts": [{ "name": ENVOY_VOLUME, "mountPath": ENVOY_DIR }],
    }));

    let status_yaml = serde_json::to_string(&status_listener()).unwrap_or_default();
    let mut proxy = json!({
        "name": PROXY_CONTAINER,
        "image": plan.proxy_image.clone().unwrap_or_else(|| cfg.proxy_image.clone()),
        "imagePullPolicy": cfg.image_pull_policy,
        "command": ["envoy"],
        "args": [
            "-c", BOOTSTRAP_PATH,
            "--config-yaml", status_yaml,
            "--disable-hot-restart",
            "--concurrency", cfg.concurrency.to_string(),
            "--log-level", plan.log_level,
        ],
        "ports": [{ "name": "status-port", "containerPort": STATUS_PORT, "protocol": "TCP" }],
        "resources": { "requests": plan.requests, "limits": plan.limits },
        "securityContext": restricted,
        "volumeMounts": [
            { "name": ENVOY_VOLUME, "mountPath": ENVOY_DIR, "readOnly": true },
            { "name": ROOT_CERT_VOLUME, "mountPath": ROOT_CERT_DIR, "readOnly": true },
            { "name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true },
        ],
    });
    let probe = |period: u32, failures: u32| {
        json!({
            "httpGet": { "path": "/healthz/ready", "port": STATUS_PORT },
            "periodSeconds": period,
            "timeoutSeconds": 3,
            "failureThreshold": failures,
        })
    };
    if cfg.native_sidecars {
        // Kubelet starts the next init container, and then the app, only once
        // the startup probe passed: Envoy has its config before the app runs.
        proxy["restartPolicy"] = json!("Always");
        proxy["startupProbe"] = probe(1, 600);
        proxy["readinessProbe"] = probe(15, 4);
    } else {
        let mut p = probe(2, 30);
        p["initialDelaySeconds"] = json!(1);
        proxy["readinessProbe"] = p;
    }

    let mut status = json!({
        "initContainers": init.iter().map(|c| c["name"].clone()).collect::<Vec<_>>(),
        "containers": [],
        "volumes": [ENVOY_VOLUME, ROOT_CERT_VOLUME, TOKEN_VOLUME],
        "imagePullSecrets": null,
        "revision": "default",
    });
    let app_proxy = if cfg.native_sidecars {
        init.push(proxy);
        status["initContainers"] =
            json!(init.iter().map(|c| c["name"].clone()).collect::<Vec<_>>());
        None
    } else {
        status["containers"] = json!([PROXY_CONTAINER]);
        Some(proxy)
    };

    let status_text = serde_json::to_string(&status).unwrap_or_default();
    if absent("/metadata/annotations") {
        ops.push(json!({
            "op": "add",
            "path": "/metadata/annotations",
            "value": { STATUS_ANNOTATION: status_text },
        }));
    } else {
        ops.push(json!({
            "op": "add",
            "path": format!("/metadata/annotations/{}", pointer_escape(STATUS_ANNOTATION)),
            "value": status_text,
        }));
    }

    // Ours run before the pod's own init containers, as Istio's do.
    if absent("/spec/initContainers") {
        ops.push(json!({ "op": "add", "path": "/spec/initContainers", "value": init }));
    } else {
        for (i, c) in init.into_iter().enumerate() {
            ops.push(
                json!({ "op": "add", "path": format!("/spec/initContainers/{i}"), "value": c }),
            );
        }
    }
    if let Some(proxy) = app_proxy {
        ops.push(json!({ "op": "add", "path": "/spec/containers/0", "value": proxy }));
    }

    let volumes = vec![
        json!({ "name": ENVOY_VOLUME, "emptyDir": { "medium": "Memory", "sizeLimit": "1Mi" } }),
        json!({ "name": ROOT_CERT_VOLUME, "configMap": { "name": cfg.root_cert_config_map } }),
        json!({ "name": TOKEN_VOLUME, "projected": { "sources": [{ "serviceAccountToken": {
            "audience": cfg.token_audience,
            "expirationSeconds": cfg.token_expiration_seconds,
            "path": TOKEN_VOLUME,
        } }] } }),
    ];
    if absent("/spec/volumes") {
        ops.push(json!({ "op": "add", "path": "/spec/volumes", "value": volumes }));
    } else {
        for v in volumes {
            ops.push(json!({ "op": "add", "path": "/spec/volumes/-", "value": v }));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review_of(pod: Value) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": { "group": "", "version": "v1", "kind": "Pod" },
                "resource": { "group": "", "version": "v1", "resource": "pods" },
                "namespace": "shop",
                "operation": "CREATE",
                "object": pod,
            }
        })
    }

    fn answer(cfg: &InjectConfig, v: &Value) -> (Reply, Value) {
        let r = review(cfg, &serde_json::to_vec(v).unwrap());
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        (r, body["response"].clone())
    }

    fn patch_of(resp: &Value) -> Vec<Value> {
        let b = base64::engine::general_purpose::STANDARD
            .decode(resp["patch"].as_str().unwrap())
            .unwrap();
        serde_json::from_slice(&b).unwrap()
    }

    fn minimal() -> Value {
        json!({ "metadata": { "generateName": "web-" }, "spec": { "containers": [{ "name": "app", "image": "app" }] } })
    }

    #[test]
    fn absent_maps_and_arrays_are_added_whole() {
        let (_, resp) = answer(&InjectConfig::default(), &review_of(minimal()));
        let ops = patch_of(&resp);
        let paths: Vec<&str> = ops.iter().map(|o| o["path"].as_str().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "/metadata/labels",
                "/metadata/annotations",
                "/spec/initContainers",
                "/spec/containers/0",
                "/spec/volumes"
            ]
        );
        assert_eq!(ops[0]["value"][TLS_MODE_LABEL], "istio");
        assert_eq!(ops[0]["value"][CANONICAL_NAME_LABEL], "web");
    }

    #[test]
    fn present_maps_get_escaped_keys() {
        let mut pod = minimal();
        pod["metadata"]["labels"] = json!({ "app": "web" });
        pod["metadata"]["annotations"] = json!({ "a": "b" });
        let (_, resp) = answer(&InjectConfig::default(), &review_of(pod));
        let ops = patch_of(&resp);
        assert!(ops
            .iter()
            .any(|o| o["path"] == "/metadata/labels/security.istio.io~1tlsMode"));
        assert!(ops
            .iter()
            .any(|o| o["path"] == "/metadata/annotations/sidecar.istio.io~1status"));
    }

    #[test]
    fn none_interception_has_no_istio_init() {
        let mut pod = minimal();
        pod["metadata"]["annotations"] = json!({ A_INTERCEPTION: "NONE" });
        let (_, resp) = answer(&InjectConfig::default(), &review_of(pod));
        let ops = patch_of(&resp);
        let init = ops
            .iter()
            .find(|o| o["path"] == "/spec/initContainers")
            .unwrap();
        assert_eq!(init["value"].as_array().unwrap().len(), 1);
        assert_eq!(init["value"][0]["name"], BOOTSTRAP_CONTAINER);
        let env = init["value"][0]["env"].as_array().unwrap();
        assert!(env.contains(&env_value("CROSSMESH_INTERCEPTION", "none")));
    }

    #[test]
    fn tproxy_and_unknown_traffic_annotations_are_refused_by_name() {
        let mut pod = minimal();
        pod["metadata"]["annotations"] = json!({
            A_INTERCEPTION: "TPROXY",
            "traffic.sidecar.istio.io/kubevirtInterfaces": "net1",
            "sidecar.istio.io/rewriteAppHTTPProbers": "true",
        });
        let (r, resp) = answer(&InjectConfig::default(), &review_of(pod));
        assert_eq!(resp["allowed"], false);
        let msg = resp["status"]["message"].as_str().unwrap();
        assert!(msg.contains("shop/web-*"), "{msg}");
        assert!(msg.contains("\"TPROXY\""), "{msg}");
        assert!(
            msg.contains("traffic.sidecar.istio.io/kubevirtInterfaces"),
            "{msg}"
        );
        assert!(!msg.contains("rewriteAppHTTPProbers"), "{msg}");
        assert!(matches!(r.outcome, Outcome::Refused { .. }));
    }

    #[test]
    fn the_label_wins_over_the_annotation_and_system_namespaces_are_skipped() {
        let cfg = InjectConfig::default();
        let mut pod = minimal();
        pod["metadata"]["labels"] = json!({ INJECT_KEY: "true" });
        pod["metadata"]["annotations"] = json!({ INJECT_KEY: "false" });
        let (r, _) = answer(&cfg, &review_of(pod.clone()));
        assert!(
            matches!(r.outcome, Outcome::Injected { .. }),
            "{:?}",
            r.outcome
        );
        pod["metadata"]["labels"] = json!({ INJECT_KEY: "disabled" });
        pod["metadata"]["annotations"] = json!({ INJECT_KEY: "true" });
        let (r, _) = answer(&cfg, &review_of(pod.clone()));
        assert_eq!(
            r.outcome,
            Outcome::Skipped {
                pod: "shop/web-*".into(),
                reason: "opted out by label sidecar.istio.io/inject=disabled".into()
            }
        );
        let mut v = review_of(minimal());
        v["request"]["namespace"] = json!("kube-system");
        let (r, resp) = answer(&cfg, &v);
        assert!(
            matches!(r.outcome, Outcome::Skipped { .. }),
            "{:?}",
            r.outcome
        );
        assert!(resp.get("patch").is_none());
        let mut v = review_of(minimal());
        v["request"]["operation"] = json!("UPDATE");
        let (r, _) = answer(&cfg, &v);
        assert!(
            matches!(r.outcome, Outcome::Skipped { .. }),
            "{:?}",
            r.outcome
        );
    }

    #[test]
    fn a_volume_named_like_ours_is_refused() {
        let mut pod = minimal();
        pod["spec"]["volumes"] = json!([{ "name": TOKEN_VOLUME, "emptyDir": {} }]);
        let (_, resp) = answer(&InjectConfig::default(), &review_of(pod));
        assert_eq!(resp["allowed"], false);
        assert!(resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains("a volume named istio-token"));
    }

    #[test]
    fn quantities_are_checked() {
        assert!(is_quantity("100m"));
        assert!(is_quantity("1.5Gi"));
        assert!(is_quantity("2"));
        assert!(!is_quantity("-1"));
        assert!(!is_quantity("lots"));
        assert!(!is_quantity("1 Gi"));
    }

    #[test]
    fn empty_body_is_a_bad_request() {
        let r = review(&InjectConfig::default(), b"");
        assert_eq!(r.http_status, 400);
        assert!(matches!(r.outcome, Outcome::BadRequest { .. }));
    }
}
