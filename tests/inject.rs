//! Sidecar injection (`agent::inject`) and traffic interception (`crossmesh
//! iptables`), end to end without a cluster:
//!
//! - golden files: each `tests/golden/inject/NAME.yaml` AdmissionReview gets the
//!   response in `NAME.json` (its patch decoded, for reading);
//!   `REFRESH_GOLDEN=1 cargo test --test inject` rewrites them;
//! - the patch applied as the API server does (RFC 6902) gives a Pod with the
//!   init containers, the sidecar, its probes and volumes; the bootstrap init
//!   container, run as the real `crossmesh` binary with exactly its environment,
//!   writes a bootstrap that the real Envoy accepts (`--mode validate`) with the
//!   sidecar container's own arguments;
//! - the `istio-init` container's arguments, run as `crossmesh iptables
//!   --dry-run`, print the rules in `iptables_*.txt`; bad flags fail with a reason;
//! - malformed reviews get an error response, never a crash.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use crossmesh::agent::inject::{self, InjectConfig, Outcome};
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/inject");

fn refresh() -> bool {
    std::env::var_os("REFRESH_GOLDEN").is_some()
}

fn config(native: bool) -> InjectConfig {
    InjectConfig {
        proxy_image: "envoyproxy/envoy:v1.40.0".into(),
        crossmesh_image: "registry.example/crossmesh:0.1.0".into(),
        proxy_init_image: "registry.example/crossmesh-proxy-init:0.1.0".into(),
        xds_address: "crossmesh.hub.example.com:15012".parse().unwrap(),
        cluster_id: "cluster3".into(),
        network: "account-b".into(),
        native_sidecars: native,
        ..InjectConfig::default()
    }
}

/// The fixture's AdmissionReview as the JSON body the API server posts.
fn request_body(name: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(Path::new(DIR).join(format!("{name}.yaml")))
        .unwrap_or_else(|e| panic!("{name}.yaml: {e}"));
    let v: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name}.yaml: {e}"));
    serde_json::to_vec(&v).unwrap()
}

fn decode_patch(resp: &Value) -> Option<Value> {
    let b = resp.get("patch")?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b)
        .expect("patch is base64");
    Some(serde_json::from_slice(&bytes).expect("patch is JSON"))
}

/// Compare with (or, under REFRESH_GOLDEN, write) `file`.
fn golden(file: &str, got: &str) {
    let path = Path::new(DIR).join(file);
    if refresh() {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (REFRESH_GOLDEN=1 writes it)", path.display()));
    if want != got {
        let first = want
            .lines()
            .zip(got.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(got.lines().count()));
        panic!(
            "{file} differs from the output at line {} (REFRESH_GOLDEN=1 rewrites it after review):\n\
             want: {:?}\n got: {:?}\n--- full output ---\n{got}",
            first + 1,
            want.lines().nth(first),
            got.lines().nth(first),
        );
    }
}

/// Review one fixture; check the golden; return the decoded response.
fn review_fixture(name: &str, golden_name: &str, native: bool) -> (Value, Outcome) {
    let reply = inject::review(&config(native), &request_body(name));
    assert_eq!(reply.http_status, 200, "{name}");
    assert_eq!(reply.content_type, "application/json");
    let body: Value = serde_json::from_slice(&reply.body).expect("response is JSON");
    assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(body["kind"], "AdmissionReview");
    let mut shown = body.clone();
    if let Some(p) = decode_patch(&body["response"]) {
        shown["response"]["patch"] = p;
    }
    golden(
        &format!("{golden_name}.json"),
        &(serde_json::to_string_pretty(&shown).unwrap() + "\n"),
    );
    (body["response"].clone(), reply.outcome)
}

fn object_of(name: &str) -> Value {
    let v: Value = serde_json::from_slice(&request_body(name)).unwrap();
    v["request"]["object"].clone()
}

fn uid_of(name: &str) -> String {
    let v: Value = serde_json::from_slice(&request_body(name)).unwrap();
    v["request"]["uid"].as_str().unwrap().to_string()
}

/// Apply the response's JSON Patch to the request's Pod, as the API server does.
fn patched(name: &str, resp: &Value) -> Pod {
    let mut obj = object_of(name);
    let ops: json_patch::Patch =
        serde_json::from_value(decode_patch(resp).expect("a patch")).expect("RFC 6902 operations");
    json_patch::patch(&mut obj, &ops)
        .unwrap_or_else(|e| panic!("{name}: patch does not apply: {e}"));
    serde_json::from_value(obj).expect("the patched object is a Pod")
}

fn find<'a>(cs: &'a [Container], name: &str) -> &'a Container {
    cs.iter().find(|c| c.name == name).unwrap_or_else(|| {
        panic!(
            "container {name} in {:?}",
            cs.iter().map(|c| &c.name).collect::<Vec<_>>()
        )
    })
}

fn names(cs: &[Container]) -> Vec<&str> {
    cs.iter().map(|c| c.name.as_str()).collect()
}

/// What the downward API gives the pod once it runs.
struct Running {
    name: &'static str,
    ip: &'static str,
}

/// Run the pod's `crossmesh-bootstrap` init container (the real binary with its
/// arguments and exactly its environment, downward-API values filled in and
/// mounted paths mapped into `dir`), then the `istio-proxy` container's Envoy
/// command in validate mode. Returns the bootstrap written.
fn boot_and_validate(pod: &Pod, run: &Running, dir: &Path) -> Value {
    let spec = pod.spec.as_ref().unwrap();
    let inits = spec.init_containers.as_deref().unwrap_or_default();
    let boot = find(inits, inject::BOOTSTRAP_CONTAINER);
    let proxy = spec
        .containers
        .iter()
        .chain(inits)
        .find(|c| c.name == inject::PROXY_CONTAINER)
        .expect("istio-proxy");
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    // Map a path in `c` to `dir`, through the volume mounted there; returns the
    // local path and the volume.
    let local = |c: &Container, path: &str| -> (PathBuf, k8s_openapi::api::core::v1::Volume) {
        let m = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| path.starts_with(&format!("{}/", m.mount_path)))
            .unwrap_or_else(|| panic!("{} mounts nothing holding {path}", c.name));
        let v = volumes
            .iter()
            .find(|v| v.name == m.name)
            .unwrap_or_else(|| panic!("volume {} mounted by {}", m.name, c.name))
            .clone();
        let rel = &path[m.mount_path.len() + 1..];
        let d = dir.join(&m.name);
        std::fs::create_dir_all(&d).unwrap();
        (d.join(rel), v)
    };

    let mut env = BTreeMap::new();
    for e in boot.env.iter().flatten() {
        let v = match (&e.value, &e.value_from) {
            (Some(v), None) => v.clone(),
            (None, Some(from)) => {
                let f = from.field_ref.as_ref().expect("only fieldRef");
                match f.field_path.as_str() {
                    "metadata.name" => run.name.to_string(),
                    "metadata.namespace" => pod.metadata.namespace.clone().unwrap(),
                    "status.podIP" => run.ip.to_string(),
                    "spec.serviceAccountName" => spec.service_account_name.clone().unwrap(),
                    other => panic!("unexpected fieldRef {other}"),
                }
            }
            _ => panic!("env {} has neither value nor valueFrom", e.name),
        };
        env.insert(e.name.clone(), v);
    }
    // The output: on the emptyDir the init container and Envoy share.
    let out = env["CROSSMESH_OUTPUT"].clone();
    let (out_local, vol) = local(boot, &out);
    assert!(
        vol.empty_dir.as_ref().and_then(|e| e.medium.as_deref()) == Some("Memory"),
        "the bootstrap goes to an in-memory emptyDir"
    );
    let (proxy_out, _) = local(proxy, &out);
    assert_eq!(
        proxy_out, out_local,
        "Envoy mounts the same volume at the same path"
    );
    env.insert("CROSSMESH_OUTPUT".into(), out_local.display().to_string());
    // The root and the token: files Envoy reads from volumes mounted into
    // istio-proxy; stand-ins generated here.
    let (root_local, root_vol) = local(proxy, &env["CROSSMESH_ROOT_CERT"]);
    assert_eq!(
        root_vol.config_map.as_ref().map(|c| c.name.as_str()),
        Some("crossmesh-ca-root-cert"),
        "the root comes from the ConfigMap crossmesh publishes"
    );
    let key = rcgen::KeyPair::generate().unwrap();
    let root = rcgen::CertificateParams::new(vec!["root.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap()
        .pem();
    std::fs::write(&root_local, root).unwrap();
    env.insert(
        "CROSSMESH_ROOT_CERT".into(),
        root_local.display().to_string(),
    );
    let (token_local, token_vol) = local(proxy, &env["CROSSMESH_TOKEN_FILE"]);
    let sat = token_vol
        .projected
        .as_ref()
        .and_then(|p| p.sources.as_ref())
        .and_then(|s| s.iter().find_map(|s| s.service_account_token.clone()))
        .expect("a projected service-account token");
    assert_eq!(sat.audience.as_deref(), Some("istio-ca"));
    assert_eq!(
        token_local.file_name().unwrap().to_str(),
        Some(sat.path.as_str()),
        "the token file is the projected path"
    );
    std::fs::write(&token_local, "token-made-by-the-test").unwrap();
    env.insert(
        "CROSSMESH_TOKEN_FILE".into(),
        token_local.display().to_string(),
    );

    let st = Command::new(support::control_plane::crossmesh_bin())
        .args(
            boot.command
                .iter()
                .flatten()
                .chain(boot.args.iter().flatten()),
        )
        .env_clear()
        .envs(&env)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "crossmesh bootstrap: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let written = std::fs::read_to_string(&out_local).expect("bootstrap written");
    let bootstrap: Value = serde_saphyr::from_str(&written).unwrap();

    let mut args: Vec<String> = proxy
        .command
        .iter()
        .flatten()
        .chain(proxy.args.iter().flatten())
        .cloned()
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("envoy"));
    let c_at = args.iter().position(|a| a == "-c").expect("envoy -c");
    assert_eq!(
        args[c_at + 1],
        out,
        "Envoy reads what the init container wrote"
    );
    args[c_at + 1] = out_local.display().to_string();
    let run = Command::new(support::envoy::envoy_bin())
        .args(&args[1..])
        .args(["--mode", "validate"])
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        run.status.success() && log.contains("OK"),
        "envoy --mode validate {args:?}:\n{log}"
    );
    bootstrap
}

/// The status listener inlined with `--config-yaml`: the port and path of the
/// probe reach Envoy's admin `/ready`.
fn check_status_listener(proxy: &Container, probe: &k8s_openapi::api::core::v1::Probe) {
    let args = proxy.args.as_deref().unwrap();
    let at = args.iter().position(|a| a == "--config-yaml").unwrap();
    let status: Value = serde_saphyr::from_str(&args[at + 1]).unwrap();
    let l = &status["static_resources"]["listeners"][0];
    let get = probe.http_get.as_ref().expect("httpGet probe");
    let port = match &get.port {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => *p,
        other => panic!("probe port {other:?}"),
    };
    assert_eq!(l["address"]["socket_address"]["port_value"], json!(port));
    let route = &l["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
        ["virtual_hosts"][0]["routes"][0];
    assert_eq!(route["match"]["path"].as_str(), get.path.as_deref());
    assert_eq!(route["route"]["prefix_rewrite"], "/ready");
    let admin = &status["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
        ["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
    assert_eq!(admin["port_value"], json!(inject::ADMIN_PORT));
}

#[test]
fn seed_pod_gets_a_sidecar_whose_bootstrap_envoy_accepts() {
    let (resp, outcome) = review_fixture("seed_order_v2", "seed_order_v2", false);
    assert_eq!(resp["uid"], uid_of("seed_order_v2"));
    assert_eq!(resp["allowed"], true);
    assert_eq!(resp["patchType"], "JSONPatch");
    assert!(
        matches!(outcome, Outcome::Injected { warnings: 0, .. }),
        "{outcome:?}"
    );
    let pod = patched("seed_order_v2", &resp);
    let spec = pod.spec.as_ref().unwrap();
    let inits = spec.init_containers.as_deref().unwrap();
    assert_eq!(names(inits), ["istio-init", "crossmesh-bootstrap"]);
    // Envoy first, then the app, untouched.
    assert_eq!(names(&spec.containers), ["istio-proxy", "order"]);
    assert_eq!(
        serde_json::to_value(&spec.containers[1]).unwrap(),
        object_of("seed_order_v2")["spec"]["containers"][0]
    );
    let proxy = &spec.containers[0];
    assert_eq!(proxy.image.as_deref(), Some("envoyproxy/envoy:v1.40.0"));
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!((sc.run_as_user, sc.run_as_group), (Some(1337), Some(1337)));
    let init_sc = inits[0].security_context.as_ref().unwrap();
    assert_eq!(init_sc.run_as_user, Some(0));
    let caps = init_sc.capabilities.as_ref().unwrap();
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..])
    );
    let probe = proxy.readiness_probe.as_ref().expect("readiness probe");
    check_status_listener(proxy, probe);
    let vols: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        vols,
        [
            "kube-api-access-7q2xv",
            "crossmesh-envoy",
            "crossmesh-ca-root-cert",
            "istio-token"
        ]
    );
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["security.istio.io/tlsMode"], "istio");
    assert_eq!(labels["service.istio.io/canonical-name"], "order");
    assert_eq!(labels["service.istio.io/canonical-revision"], "v2");
    let status: Value = serde_json::from_str(
        &pod.metadata.annotations.as_ref().unwrap()["sidecar.istio.io/status"],
    )
    .unwrap();
    assert_eq!(status["containers"], json!(["istio-proxy"]));
    assert_eq!(
        status["initContainers"],
        json!(["istio-init", "crossmesh-bootstrap"])
    );

    let dir = tempfile::tempdir().unwrap();
    let b = boot_and_validate(
        &pod,
        &Running {
            name: "order-v2-6d9f7c8b5d-x7k2p",
            ip: "10.8.1.17",
        },
        dir.path(),
    );
    // The identity and labels the hub sees: the pod's, and the injected ones.
    assert_eq!(
        b["node"]["id"],
        "sidecar~10.8.1.17~order-v2-6d9f7c8b5d-x7k2p.base~base.svc.cluster.local"
    );
    let md = &b["node"]["metadata"];
    assert_eq!(md["CLUSTER_ID"], "cluster3");
    assert_eq!(md["NETWORK"], "account-b");
    assert_eq!(md["INTERCEPTION_MODE"], "REDIRECT");
    assert_eq!(md["SERVICE_ACCOUNT"], "default");
    assert_eq!(md["LABELS"]["app"], "order");
    assert_eq!(md["LABELS"]["security.istio.io/tlsMode"], "istio");
    assert_eq!(
        b["dynamic_resources"]["ads_config"]["grpc_services"][0]["google_grpc"]["target_uri"],
        "crossmesh.hub.example.com:15012"
    );

    // The interception it sets up: the default rules.
    let text = iptables_dry_run(&inits[0]);
    golden("iptables_default.txt", &text);
}

#[test]
fn native_sidecar_is_an_init_container_that_starts_before_the_app() {
    let (resp, _) = review_fixture("seed_order_v2", "seed_order_v2_native", true);
    let pod = patched("seed_order_v2", &resp);
    let spec = pod.spec.as_ref().unwrap();
    let inits = spec.init_containers.as_deref().unwrap();
    assert_eq!(
        names(inits),
        ["istio-init", "crossmesh-bootstrap", "istio-proxy"]
    );
    assert_eq!(names(&spec.containers), ["order"]);
    let proxy = &inits[2];
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    let startup = proxy.startup_probe.as_ref().expect("startup probe");
    check_status_listener(proxy, startup);
    check_status_listener(proxy, proxy.readiness_probe.as_ref().unwrap());
    let dir = tempfile::tempdir().unwrap();
    boot_and_validate(
        &pod,
        &Running {
            name: "order-v2-6d9f7c8b5d-x7k2p",
            ip: "10.8.1.17",
        },
        dir.path(),
    );
}

#[test]
fn annotations_shape_capture_resources_and_log_level() {
    let (resp, outcome) = review_fixture("annotated", "annotated", false);
    assert_eq!(resp["allowed"], true);
    assert!(
        matches!(outcome, Outcome::Injected { warnings: 2, .. }),
        "{outcome:?}"
    );
    assert_eq!(
        resp["warnings"],
        json!([
            "annotation sidecar.istio.io/rewriteAppHTTPProbers is not implemented by crossmesh and was ignored",
            "container ledger: its readinessProbe on port 8080 passes through the sidecar (crossmesh does not \
             rewrite probes); under STRICT mTLS it fails: exclude the port with \
             traffic.sidecar.istio.io/excludeInboundPorts"
        ])
    );
    let pod = patched("annotated", &resp);
    let spec = pod.spec.as_ref().unwrap();
    let inits = spec.init_containers.as_deref().unwrap();
    // Ours first, the pod's own init container after them.
    assert_eq!(
        names(inits),
        ["istio-init", "crossmesh-bootstrap", "migrate"]
    );
    let proxy = find(&spec.containers, "istio-proxy");
    let res = proxy.resources.as_ref().unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "250m");
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "128Mi");
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "512Mi");
    let args = proxy.args.as_deref().unwrap();
    let at = args.iter().position(|a| a == "--log-level").unwrap();
    assert_eq!(args[at + 1], "info");
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["service.istio.io/canonical-name"], "ledger");
    assert_eq!(labels["service.istio.io/canonical-revision"], "2.4");
    // The pod's own annotations stay.
    assert_eq!(
        pod.metadata.annotations.as_ref().unwrap()["prometheus.io/scrape"],
        "true"
    );
    let dir = tempfile::tempdir().unwrap();
    let b = boot_and_validate(
        &pod,
        &Running {
            name: "ledger-0",
            ip: "10.8.2.5",
        },
        dir.path(),
    );
    assert_eq!(b["node"]["metadata"]["SERVICE_ACCOUNT"], "ledger");

    let text = iptables_dry_run(&inits[0]);
    golden("iptables_annotated.txt", &text);
    // What the annotations say, in the rules.
    for line in [
        "-A ISTIO_INBOUND -p tcp --dport 9090 -j RETURN",
        "-A ISTIO_OUTPUT -p tcp --dport 3306 -j RETURN",
        "-A ISTIO_OUTPUT -p tcp --dport 5432 -j RETURN",
        "-A ISTIO_OUTPUT -d 10.96.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -p tcp --dport 8443 -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT -d 172.16.0.0/12 -j ISTIO_REDIRECT",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    assert!(
        !text
            .lines()
            .any(|l| l == "-A ISTIO_OUTPUT -j ISTIO_REDIRECT"),
        "only the listed ranges are captured:\n{text}"
    );
}

/// Run `crossmesh iptables` with the init container's arguments and `--dry-run`.
fn iptables_dry_run(init: &Container) -> String {
    assert_eq!(init.name, "istio-init");
    let args = init.args.as_deref().unwrap();
    assert_eq!(args[0], "iptables");
    let out = Command::new(support::control_plane::crossmesh_bin())
        .args(args)
        .arg("--dry-run")
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "crossmesh {args:?} --dry-run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn iptables_bad_flags_exit_with_a_reason() {
    for (args, want) in [
        (
            vec!["--exclude-inbound-ports", "80,abc"],
            "--exclude-inbound-ports: \"abc\" is not a port 1-65535",
        ),
        (
            vec!["--include-outbound-ip-ranges", "10.0.0.0/40"],
            "--include-outbound-ip-ranges: \"10.0.0.0/40\" is not a CIDR",
        ),
        (
            vec!["--exclude-outbound-ip-ranges", "*"],
            "--exclude-outbound-ip-ranges: '*' cannot be excluded",
        ),
    ] {
        let out = Command::new(support::control_plane::crossmesh_bin())
            .arg("iptables")
            .args(&args)
            .arg("--dry-run")
            .env_clear()
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?} printed rules");
        assert!(
            err.starts_with("crossmesh: ") && err.contains(want),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn opted_out_host_network_and_injected_pods_are_allowed_untouched() {
    for (name, reason) in [
        (
            "opted_out",
            "opted out by label sidecar.istio.io/inject=false",
        ),
        ("host_network", "hostNetwork pod"),
        (
            "already_injected",
            "already injected (sidecar.istio.io/status is set)",
        ),
    ] {
        let (resp, outcome) = review_fixture(name, name, false);
        assert_eq!(resp["uid"], uid_of(name), "{name}");
        assert_eq!(resp["allowed"], true, "{name}");
        assert!(resp.get("patch").is_none(), "{name} got a patch");
        assert!(resp.get("patchType").is_none(), "{name}");
        match outcome {
            Outcome::Skipped { reason: r, .. } => assert_eq!(r, reason, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn bad_annotation_is_refused_naming_it() {
    let (resp, _) = review_fixture("bad_annotation", "bad_annotation", false);
    assert_eq!(resp["uid"], uid_of("bad_annotation"));
    assert_eq!(resp["allowed"], false);
    assert_eq!(
        resp["status"]["message"],
        "pod base/user-v1-5b6c7d8e9f-*: sidecar injection refused: annotation \
         traffic.sidecar.istio.io/excludeInboundPorts: \"abc\" is not a port 1-65535"
    );
}

#[test]
fn malformed_reviews_get_an_error_response() {
    let cfg = config(false);
    let empty = inject::review(&cfg, b"");
    assert_eq!(empty.http_status, 400);
    let pod_review = |f: &dyn Fn(&mut Value)| {
        let mut v: Value = serde_json::from_slice(&request_body("seed_order_v2")).unwrap();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not JSON",
            b"{\"apiVersion\": ".to_vec(),
            "could not decode body",
        ),
        (
            "a JSON array",
            b"[1,2]".to_vec(),
            "expected an admission.k8s.io/v1 AdmissionReview",
        ),
        (
            "v1beta1",
            pod_review(&|v| v["apiVersion"] = json!("admission.k8s.io/v1beta1")),
            "got apiVersion \"admission.k8s.io/v1beta1\"",
        ),
        (
            "no request",
            pod_review(&|v| {
                v.as_object_mut().unwrap().remove("request");
            }),
            "has no request",
        ),
        (
            "a Service",
            pod_review(&|v| v["request"]["kind"]["kind"] = json!("Service")),
            "not a core/v1 Pod",
        ),
        (
            "no object",
            pod_review(&|v| v["request"]["object"] = Value::Null),
            "has no object",
        ),
        (
            "containers not a list",
            pod_review(&|v| v["request"]["object"]["spec"]["containers"] = json!("order")),
            "could not unmarshal the Pod",
        ),
    ];
    for (what, body, want) in cases {
        let r = inject::review(&cfg, &body);
        assert_eq!(r.http_status, 200, "{what}");
        let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(v["kind"], "AdmissionReview", "{what}");
        assert_eq!(v["response"]["allowed"], false, "{what}");
        let msg = v["response"]["status"]["message"].as_str().unwrap_or("");
        assert!(msg.contains(want), "{what}: {msg}");
        assert!(v["response"].get("patch").is_none(), "{what}");
    }
}

#[test]
fn inbound_port_list_and_proxy_overrides() {
    let (resp, _) = review_fixture("inbound_ports", "inbound_ports", false);
    assert_eq!(resp["allowed"], true);
    // The startup probe names the captured port; the liveness probe's port is
    // not captured.
    assert_eq!(
        resp["warnings"],
        json!([
            "container cart: its startupProbe on port 8080 passes through the sidecar (crossmesh does not \
             rewrite probes); under STRICT mTLS it fails: exclude the port with \
             traffic.sidecar.istio.io/excludeInboundPorts"
        ])
    );
    let pod = patched("inbound_ports", &resp);
    let spec = pod.spec.as_ref().unwrap();
    let proxy = find(&spec.containers, "istio-proxy");
    assert_eq!(
        proxy.image.as_deref(),
        Some("registry.example/envoy:v1.40.0-debug")
    );
    let res = proxy.resources.as_ref().unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "256Mi");
    assert_eq!(res.limits.as_ref().unwrap()["cpu"].0, "1");
    assert_eq!(
        pod.metadata.labels.as_ref().unwrap()["service.istio.io/canonical-name"],
        "cart"
    );
    let inits = spec.init_containers.as_deref().unwrap();
    let text = iptables_dry_run(&inits[0]);
    golden("iptables_inbound_ports.txt", &text);
    let inbound: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("-A ISTIO_INBOUND") || l.starts_with("-A PREROUTING"))
        .collect();
    assert_eq!(
        inbound,
        [
            "-A PREROUTING -p tcp -j ISTIO_INBOUND",
            "-A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_IN_REDIRECT"
        ]
    );
}

/// docs/INJECTION.md's annotation table and the code agree: every annotation it
/// marks supported or partial is one the injector reads, and is set in some
/// fixture here; every annotation the injector reads is in the table.
#[test]
fn documented_annotations_are_the_implemented_ones_and_have_fixtures() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/INJECTION.md"))
            .unwrap();
    let section = doc.split("## Annotations").nth(1).expect("## Annotations");
    let mut documented = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let status = cells[2];
        if !(status == "supported" || status == "partial") {
            continue;
        }
        let mut prefix = "";
        for name in cells[1].split('`').skip(1).step_by(2) {
            let full = if let Some((p, _)) = name.rsplit_once('/') {
                prefix = p;
                name.to_string()
            } else {
                format!("{prefix}/{name}")
            };
            documented.push(full);
        }
    }
    let mut implemented: Vec<String> = inject::SUPPORTED_ANNOTATIONS
        .iter()
        .map(|s| s.to_string())
        .collect();
    implemented.push(inject::INJECT_KEY.into());
    implemented.push(inject::STATUS_ANNOTATION.into());
    let (mut d, mut i) = (documented.clone(), implemented);
    d.sort();
    i.sort();
    assert_eq!(d, i, "docs/INJECTION.md annotations vs the injector's");
    let fixtures: String = std::fs::read_dir(DIR)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    for a in &documented {
        assert!(
            fixtures.contains(&format!("{a}:")),
            "{a} is documented as supported but no tests/golden/inject fixture sets it"
        );
    }
}

// ---- the rules in a real kernel ----

/// Set in the environment of a helper process: the test binary re-run inside a
/// network namespace (and as another user) to listen or connect there.
const HELPER_ENV: &str = "CROSSMESH_TEST_NETNS_HELPER";

/// The child side of `interception_redirects_real_traffic`: with
/// `CROSSMESH_TEST_NETNS_HELPER=listen:P,P,..` it answers every connection on
/// each port with the port number; with `connect:IP:PORT[:SOURCE]` it prints
/// which listener answered. Without the variable (a normal test run) it has
/// nothing to do.
#[test]
fn netns_helper_process() {
    let Ok(mode) = std::env::var(HELPER_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if let Some(ports) = mode.strip_prefix("listen:") {
            let mut tasks = Vec::new();
            for p in ports.split(',') {
                let l = tokio::net::TcpListener::bind(("0.0.0.0", p.parse::<u16>().unwrap()))
                    .await
                    .unwrap_or_else(|e| panic!("bind {p}: {e}"));
                let name = p.to_string();
                tasks.push(tokio::spawn(async move {
                    loop {
                        let (mut c, _) = l.accept().await.unwrap();
                        let _ = c.write_all(name.as_bytes()).await;
                    }
                }));
            }
            println!("\nhelper-ready");
            futures::future::join_all(tasks).await;
        } else if let Some(rest) = mode.strip_prefix("connect:") {
            let parts: Vec<&str> = rest.split(':').collect();
            let target: std::net::SocketAddr =
                format!("{}:{}", parts[0], parts[1]).parse().unwrap();
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            if let Some(src) = parts.get(2) {
                sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
            }
            let answer = async {
                let mut c = sock.connect(target).await.map_err(|e| e.to_string())?;
                let mut buf = String::new();
                c.read_to_string(&mut buf)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(buf)
            };
            match tokio::time::timeout(std::time::Duration::from_secs(3), answer).await {
                Ok(Ok(a)) => println!("\nanswered-by {a}"),
                Ok(Err(e)) => println!("\nfailed {e}"),
                Err(_) => println!("\nfailed timeout"),
            }
        }
    });
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two network namespaces joined by a veth pair: the pod (10.250.0.2) and a
/// client outside it (10.250.0.1). Private to this test: no address of the
/// machine's own namespaces is used. Deleted on drop.
struct NetnsPair {
    pod: String,
    client: String,
    children: Vec<std::process::Child>,
}

impl NetnsPair {
    fn new(tag: &str) -> NetnsPair {
        let id = format!("{}{tag}", std::process::id() % 100000);
        let pod = format!("cm-pod-{id}");
        let client = format!("cm-cli-{id}");
        let (va, vb) = (format!("cmp{id}"), format!("cmc{id}"));
        let pair = NetnsPair {
            pod: pod.clone(),
            client: client.clone(),
            children: Vec::new(),
        };
        sh(&["ip", "netns", "add", &pod]);
        sh(&["ip", "netns", "add", &client]);
        sh(&[
            "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
        ]);
        sh(&["ip", "link", "set", &va, "netns", &pod]);
        sh(&["ip", "link", "set", &vb, "netns", &client]);
        for (ns, dev, ip) in [
            (&pod, &va, "10.250.0.2/24"),
            (&client, &vb, "10.250.0.1/24"),
        ] {
            sh(&["ip", "-n", ns, "addr", "add", ip, "dev", dev]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// The test binary as a helper in `ns`, as `uid` (0: root).
    fn helper(&self, ns: &str, uid: u32, mode: &str) -> Command {
        let exe = std::env::current_exe().unwrap();
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]);
        if uid != 0 {
            let id = uid.to_string();
            c.args(["setpriv", "--reuid", &id, "--regid", &id, "--clear-groups"]);
        }
        c.arg(exe)
            .args([
                "--exact",
                "netns_helper_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HELPER_ENV, mode);
        c
    }

    fn listen(&mut self, ns: &str, ports: &str) {
        use std::io::BufRead;
        let mut child = self
            .helper(ns, 0, &format!("listen:{ports}"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if line.ends_with("helper-ready") {
                    let _ = tx.send(());
                }
            }
        });
        self.children.push(child);
        rx.recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("listeners {ports} in {ns} not ready"));
    }

    /// Which listener answers a connection from `ns` as `uid` to `target`.
    fn who_answers(&self, ns: &str, uid: u32, target: &str, source: Option<&str>) -> String {
        let mode = match source {
            Some(s) => format!("connect:{target}:{s}"),
            None => format!("connect:{target}"),
        };
        let out = self.helper(ns, uid, &mode).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| {
                l.strip_prefix("answered-by ")
                    .or_else(|| l.strip_prefix("failed ").map(|_| l))
            })
            .map(str::to_string)
            .unwrap_or_else(|| format!("no answer: {text}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.pod, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The `istio-init` arguments the webhook gives a fixture's pod.
fn init_args(name: &str) -> Vec<String> {
    let reply = inject::review(&config(false), &request_body(name));
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    let pod = patched(name, &body["response"]);
    let init = pod.spec.unwrap().init_containers.unwrap().remove(0);
    assert_eq!(init.name, "istio-init");
    init.args.unwrap()
}

/// The rules the injected `istio-init` loads, in a real kernel (a private network
/// namespace, `iptables-restore` as the proxy-init image runs it), with real
/// connections: inbound goes to 15006 but the status port; an app's outbound to
/// 15001; Envoy's own (UID 1337) is not captured, except to its pod's own address
/// over loopback (to inbound), unless from the inbound passthrough's 127.0.0.6;
/// loopback and own-address app traffic are left alone. Then the annotated pod's
/// rules: an excluded port and an excluded range are not captured. Needs root,
/// iproute2, iptables and setpriv; without them it says so and checks nothing.
#[test]
fn interception_redirects_real_traffic() {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let missing: Vec<&str> = ["ip", "iptables-restore", "setpriv"]
        .into_iter()
        .filter(|c| !on_path(c))
        .collect();
    if !root || !missing.is_empty() {
        eprintln!(
            "SKIPPED interception_redirects_real_traffic: needs root (uid 0: {root}) and {missing:?} on PATH"
        );
        return;
    }
    // Root in a container may still lack the capabilities network namespaces
    // need: say so instead of failing on the first `ip netns add`.
    let probe = format!("cm-probe-{}", std::process::id());
    let made = Command::new("ip").args(["netns", "add", &probe]).output();
    match made {
        Ok(o) if o.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).output();
        }
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => e.to_string(),
            };
            eprintln!(
                "SKIPPED interception_redirects_real_traffic: cannot create a network namespace: {why}"
            );
            return;
        }
    }
    let bin = support::control_plane::crossmesh_bin();

    let mut n = NetnsPair::new("a");
    let (pod, cli) = (n.pod.clone(), n.client.clone());
    // With --ipv6 as well: ip6tables-restore takes the IPv6 rules.
    let out = Command::new("ip")
        .args(["netns", "exec", &pod, bin])
        .args(init_args("seed_order_v2"))
        .arg("--ipv6")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "crossmesh iptables in {pod}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v6 = Command::new("ip")
        .args(["netns", "exec", &pod, "ip6tables-save", "-t", "nat"])
        .output()
        .unwrap();
    let v6 = String::from_utf8_lossy(&v6.stdout);
    assert!(
        v6.contains("-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN")
            && v6.contains("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT"),
        "IPv6 rules loaded:\n{v6}"
    );
    n.listen(&pod, "15001,15006,8080,15021");
    n.listen(&cli, "9999,3306");
    for (what, ns, uid, target, source, want) in [
        (
            "inbound to the app port",
            &cli,
            0,
            "10.250.0.2:8080",
            None,
            "15006",
        ),
        (
            "inbound to the status port",
            &cli,
            0,
            "10.250.0.2:15021",
            None,
            "15021",
        ),
        (
            "the app's outbound",
            &pod,
            1000,
            "10.250.0.1:9999",
            None,
            "15001",
        ),
        (
            "Envoy's outbound",
            &pod,
            1337,
            "10.250.0.1:9999",
            None,
            "9999",
        ),
        (
            "the app to localhost",
            &pod,
            1000,
            "127.0.0.1:8080",
            None,
            "8080",
        ),
        (
            "the app to its own address",
            &pod,
            1000,
            "10.250.0.2:8080",
            None,
            "8080",
        ),
        (
            "Envoy to its pod's address",
            &pod,
            1337,
            "10.250.0.2:8080",
            None,
            "15006",
        ),
        (
            "Envoy's inbound passthrough (source 127.0.0.6)",
            &pod,
            1337,
            "10.250.0.2:8080",
            Some("127.0.0.6"),
            "8080",
        ),
    ] {
        assert_eq!(n.who_answers(ns, uid, target, source), want, "{what}");
    }
    drop(n);

    let mut n = NetnsPair::new("b");
    let (pod, cli) = (n.pod.clone(), n.client.clone());
    let mut args = init_args("annotated");
    // The annotated pod captures 10.0.0.0/8 but not 10.96.0.1/32; make the
    // client's address the excluded one for the range check below.
    let at = args
        .iter()
        .position(|a| a == "--exclude-outbound-ip-ranges")
        .unwrap();
    assert_eq!(args[at + 1], "10.96.0.1/32");
    args[at + 1] = "10.250.0.1/32".into();
    let out = Command::new("ip")
        .args(["netns", "exec", &pod, bin])
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    n.listen(&pod, "15001,15006,8080,9090,15021");
    n.listen(&cli, "9999,3306");
    assert_eq!(
        n.who_answers(&cli, 0, "10.250.0.2:9090", None),
        "9090",
        "excludeInboundPorts 9090"
    );
    assert_eq!(
        n.who_answers(&cli, 0, "10.250.0.2:8080", None),
        "15006",
        "inbound 8080"
    );
    assert_eq!(
        n.who_answers(&pod, 1000, "10.250.0.1:9999", None),
        "9999",
        "excludeOutboundIPRanges"
    );
    drop(n);

    let mut n = NetnsPair::new("c");
    let (pod, cli) = (n.pod.clone(), n.client.clone());
    let out = Command::new("ip")
        .args(["netns", "exec", &pod, bin])
        .args(init_args("annotated"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    n.listen(&pod, "15001,15006");
    n.listen(&cli, "9999,3306");
    assert_eq!(
        n.who_answers(&pod, 1000, "10.250.0.1:3306", None),
        "3306",
        "excludeOutboundPorts 3306"
    );
    assert_eq!(
        n.who_answers(&pod, 1000, "10.250.0.1:9999", None),
        "15001",
        "includeOutboundIPRanges 10.0.0.0/8"
    );
}

/// Measurement, not a check: the cost of one review of the seed's pod (parse,
/// decide, patch, encode), as the webhook pays it per Pod creation. Prints only.
/// `cargo test --release --test inject review_cost -- --ignored --nocapture`
#[test]
#[ignore]
fn review_cost() {
    let cfg = config(false);
    let body = request_body("seed_order_v2");
    let n = 20_000;
    let t = std::time::Instant::now();
    let mut bytes = 0;
    for _ in 0..n {
        bytes += inject::review(&cfg, &body).body.len();
    }
    let per = t.elapsed() / n;
    println!(
        "review of a {}-byte AdmissionReview: {per:?} per call, {} bytes of response",
        body.len(),
        bytes / n as usize
    );
}
