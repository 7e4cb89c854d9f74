//! deploy/ as an operator applies it (`kubectl apply -k deploy/kubernetes`,
//! `kubectl apply -f deploy/rbac.yaml`, `docker build -f deploy/Dockerfile .`).
//!
//! Every YAML file under deploy/ (except deploy/demo, which the demo tests read)
//! is parsed into its k8s-openapi type, and must serialise back to exactly what
//! was written: a misspelt or misplaced field is lost in that round trip and
//! fails here instead of being dropped by the API server. Then the references
//! between the objects are checked the way Kubernetes resolves them (selectors,
//! named ports, ServiceAccounts, ConfigMap keys, role bindings, `$(VAR)`
//! expansion), each kustomization.yaml against the files it lists, the mesh file
//! inside the ConfigMap with the parser `crossmesh serve` uses, the probe paths
//! against crossmesh's debug router, and the ingress gateway's bootstrap by
//! running its init container's `crossmesh bootstrap` and then Envoy in
//! `--mode validate` with the gateway container's arguments.
//!
//! The checker returns problems instead of panicking, so the negative tests below
//! break one reference at a time in a parsed copy and assert that the checker
//! names it.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Probe, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crossmesh::config::{ClusterSource, MeshConfig};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// One object as written, with the file it came from.
#[derive(Clone, Debug)]
struct Obj<T> {
    file: String,
    obj: T,
}

impl<T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>>
    Obj<T>
{
    fn name(&self) -> &str {
        self.obj.metadata().name.as_deref().unwrap_or("")
    }
    fn ns(&self) -> &str {
        self.obj.metadata().namespace.as_deref().unwrap_or("")
    }
    fn id(&self) -> String {
        let kind = <T as k8s_openapi::Resource>::KIND;
        if self.ns().is_empty() {
            format!("{kind} {} ({})", self.name(), self.file)
        } else {
            format!("{kind} {}/{} ({})", self.ns(), self.name(), self.file)
        }
    }
}

/// Every object of the manifests, by kind.
#[derive(Clone, Debug, Default)]
struct Manifests {
    namespaces: Vec<Obj<Namespace>>,
    service_accounts: Vec<Obj<ServiceAccount>>,
    cluster_roles: Vec<Obj<ClusterRole>>,
    cluster_role_bindings: Vec<Obj<ClusterRoleBinding>>,
    roles: Vec<Obj<Role>>,
    role_bindings: Vec<Obj<RoleBinding>>,
    config_maps: Vec<Obj<ConfigMap>>,
    deployments: Vec<Obj<Deployment>>,
    services: Vec<Obj<Service>>,
    pdbs: Vec<Obj<PodDisruptionBudget>>,
    /// Secrets (deploy/rbac.yaml's token Secret): kept as JSON, nothing refers into them.
    secrets: Vec<(String, Value)>,
    /// deploy/agent's sidecar injector.
    webhooks: Vec<Obj<MutatingWebhookConfiguration>>,
}

/// Objects the operator creates by hand at install (docs/AGENT.md says how),
/// which the manifests may therefore name without defining: (namespace, kind,
/// name, the command docs/AGENT.md must show).
const MADE_AT_INSTALL: [(&str, &str, &str, &str); 2] = [
    (
        "crossmesh-system",
        "ConfigMap",
        "crossmesh-hub-root",
        "kubectl create configmap crossmesh-hub-root",
    ),
    (
        "crossmesh-system",
        "Secret",
        "crossmesh-agent-enrolment",
        "kubectl create secret generic crossmesh-agent-enrolment",
    ),
];

fn made_at_install(ns: &str, kind: &str, name: &str) -> bool {
    MADE_AT_INSTALL
        .iter()
        .any(|(n, k, x, _)| *n == ns && *k == kind && *x == name)
}

/// Where in `a` (as written) something differs from `b` (the typed round trip).
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => diff(&format!("{path}.{k}"), v, w, out),
                    None => out.push(format!(
                        "{path}.{k}: not a field of this kind (lost when parsed)"
                    )),
                }
            }
            for k in y.keys().filter(|k| !x.contains_key(*k)) {
                out.push(format!("{path}.{k}: appeared when parsed"));
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), v, w, out);
            }
        }
        _ if a == b => {}
        _ => out.push(format!("{path}: written {a}, parsed {b}")),
    }
}

/// Parse `doc` as `T` and require the round trip to give back every field.
fn typed<T: DeserializeOwned + serde::Serialize>(
    file: &str,
    doc: &Value,
    problems: &mut Vec<String>,
) -> Option<Obj<T>> {
    let obj: T = match serde_json::from_value(doc.clone()) {
        Ok(o) => o,
        Err(e) => {
            problems.push(format!(
                "{file}: {} {}: {e}",
                doc["kind"], doc["metadata"]["name"]
            ));
            return None;
        }
    };
    let back = serde_json::to_value(&obj).unwrap_or(Value::Null);
    let mut d = Vec::new();
    diff("", doc, &back, &mut d);
    for p in d {
        problems.push(format!(
            "{file}: {} {}: {p}",
            doc["kind"], doc["metadata"]["name"]
        ));
    }
    Some(Obj {
        file: file.to_string(),
        obj,
    })
}

fn rel(p: &Path) -> String {
    p.strip_prefix(ROOT).unwrap_or(p).display().to_string()
}

/// YAML files under `dir`, recursively, sorted; deploy/demo left out.
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if p != Path::new(ROOT).join("deploy/demo") {
                yaml_files(&p, out);
            }
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

fn parse_docs(file: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("{}: not YAML: {e}", rel(file)));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// Every object under deploy/ except kustomization files, and the problems met
/// while parsing them.
fn load() -> (Manifests, Vec<String>) {
    let mut files = Vec::new();
    yaml_files(&Path::new(ROOT).join("deploy"), &mut files);
    let mut m = Manifests::default();
    let mut problems = Vec::new();
    for f in files {
        if f.file_name().is_some_and(|n| n == "kustomization.yaml") {
            continue;
        }
        let file = rel(&f);
        for doc in parse_docs(&f) {
            let api = doc["apiVersion"].as_str().unwrap_or("");
            let kind = doc["kind"].as_str().unwrap_or("");
            let p = &mut problems;
            match (api, kind) {
                ("v1", "Namespace") => m.namespaces.extend(typed(&file, &doc, p)),
                ("v1", "ServiceAccount") => m.service_accounts.extend(typed(&file, &doc, p)),
                ("v1", "ConfigMap") => m.config_maps.extend(typed(&file, &doc, p)),
                ("v1", "Service") => m.services.extend(typed(&file, &doc, p)),
                ("v1", "Secret") => {
                    if typed::<k8s_openapi::api::core::v1::Secret>(&file, &doc, p).is_some() {
                        m.secrets.push((file.clone(), doc.clone()));
                    }
                }
                ("apps/v1", "Deployment") => m.deployments.extend(typed(&file, &doc, p)),
                ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
                    m.webhooks.extend(typed(&file, &doc, p))
                }
                ("policy/v1", "PodDisruptionBudget") => m.pdbs.extend(typed(&file, &doc, p)),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    m.cluster_roles.extend(typed(&file, &doc, p))
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    m.cluster_role_bindings.extend(typed(&file, &doc, p))
                }
                ("rbac.authorization.k8s.io/v1", "Role") => m.roles.extend(typed(&file, &doc, p)),
                ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                    m.role_bindings.extend(typed(&file, &doc, p))
                }
                _ => problems.push(format!(
                    "{file}: {api} {kind}: a kind this test does not know"
                )),
            }
        }
    }
    (m, problems)
}

fn labels(map: &Option<BTreeMap<String, String>>) -> BTreeMap<String, String> {
    map.clone().unwrap_or_default()
}

/// Whether `selector` (matchLabels only) selects `labels`; an empty selector
/// selects nothing here (it would select everything, never what is meant).
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn match_labels(
    s: &LabelSelector,
    what: &str,
    problems: &mut Vec<String>,
) -> BTreeMap<String, String> {
    if s.match_expressions.as_ref().is_some_and(|e| !e.is_empty()) {
        problems.push(format!(
            "{what}: matchExpressions are not checked here; use matchLabels"
        ));
    }
    labels(&s.match_labels)
}

fn pod_labels(d: &Deployment) -> BTreeMap<String, String> {
    labels(
        &d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.clone()),
    )
}

fn pod_spec(d: &Deployment) -> PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .unwrap_or_default()
}

fn containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
}

/// The container port `port` names in `c`: by name or by number.
fn container_port(c: &Container, port: &IntOrString) -> Option<i32> {
    c.ports.iter().flatten().find_map(|p| match port {
        IntOrString::Int(n) => (p.container_port == *n).then_some(p.container_port),
        IntOrString::String(name) => (p.name.as_deref() == Some(name)).then_some(p.container_port),
    })
}

fn probe_port(p: &Probe) -> Option<&IntOrString> {
    p.http_get
        .as_ref()
        .map(|h| &h.port)
        .or(p.tcp_socket.as_ref().map(|t| &t.port))
}

/// The names `$(NAME)` refers to in `s` (Kubernetes' expansion in command/args).
fn var_refs(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("$(") {
        let after = &rest[i + 2..];
        match after.find(')') {
            Some(j) => {
                out.push(after[..j].to_string());
                rest = &after[j + 1..];
            }
            None => break,
        }
    }
    out
}

impl Manifests {
    fn config_map(&self, ns: &str, name: &str) -> Option<&Obj<ConfigMap>> {
        self.config_maps
            .iter()
            .find(|c| c.ns() == ns && c.name() == name)
    }

    fn service_account(&self, ns: &str, name: &str) -> Option<&Obj<ServiceAccount>> {
        self.service_accounts
            .iter()
            .find(|s| s.ns() == ns && s.name() == name)
    }

    /// The Deployments whose pods `selector` selects in `ns`.
    fn selected(&self, ns: &str, selector: &BTreeMap<String, String>) -> Vec<&Obj<Deployment>> {
        self.deployments
            .iter()
            .filter(|d| d.ns() == ns && selects(selector, &pod_labels(&d.obj)))
            .collect()
    }

    /// Every reference between the objects, as Kubernetes would resolve it.
    fn check(&self) -> Vec<String> {
        let mut p = Vec::new();
        let namespaces: BTreeSet<&str> = self.namespaces.iter().map(|n| n.name()).collect();
        let mut namespaced: Vec<(String, &str)> = Vec::new();
        namespaced.extend(self.service_accounts.iter().map(|o| (o.id(), o.ns())));
        namespaced.extend(self.roles.iter().map(|o| (o.id(), o.ns())));
        namespaced.extend(self.role_bindings.iter().map(|o| (o.id(), o.ns())));
        namespaced.extend(self.config_maps.iter().map(|o| (o.id(), o.ns())));
        namespaced.extend(self.deployments.iter().map(|o| (o.id(), o.ns())));
        namespaced.extend(self.services.iter().map(|o| (o.id(), o.ns())));
        namespaced.extend(self.pdbs.iter().map(|o| (o.id(), o.ns())));
        for (id, ns) in namespaced {
            if ns.is_empty() {
                p.push(format!("{id}: no metadata.namespace"));
            } else if !namespaces.contains(ns) {
                p.push(format!("{id}: namespace {ns} is not created by any file"));
            }
        }
        for d in &self.deployments {
            self.check_deployment(d, &mut p);
        }
        for s in &self.services {
            self.check_service(s, &mut p);
        }
        for b in &self.pdbs {
            let spec = b.obj.spec.clone().unwrap_or_default();
            let sel = match_labels(&spec.selector.unwrap_or_default(), &b.id(), &mut p);
            let targets = self.selected(b.ns(), &sel);
            if targets.len() != 1 {
                p.push(format!(
                    "{}: selector {sel:?} selects {} Deployments",
                    b.id(),
                    targets.len()
                ));
            }
            for d in targets {
                let replicas = d.obj.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                match &spec.min_available {
                    Some(IntOrString::Int(n)) if *n >= replicas => p.push(format!(
                        "{}: minAvailable {n} with {replicas} replicas of {} blocks every drain",
                        b.id(),
                        d.id()
                    )),
                    Some(IntOrString::Int(_)) => {}
                    other => p.push(format!("{}: minAvailable {other:?}: give a number", b.id())),
                }
            }
        }
        for b in &self.role_bindings {
            let r = &b.obj.role_ref;
            let found = match r.kind.as_str() {
                "Role" => self
                    .roles
                    .iter()
                    .any(|x| x.ns() == b.ns() && x.name() == r.name),
                "ClusterRole" => self.cluster_roles.iter().any(|x| x.name() == r.name),
                k => {
                    p.push(format!("{}: roleRef kind {k}", b.id()));
                    true
                }
            };
            if !found {
                p.push(format!(
                    "{}: roleRef {} {} does not exist",
                    b.id(),
                    r.kind,
                    r.name
                ));
            }
            self.check_subjects(&b.id(), b.obj.subjects.iter().flatten(), &mut p);
        }
        for w in &self.webhooks {
            self.check_webhook(w, &mut p);
        }
        for b in &self.cluster_role_bindings {
            let r = &b.obj.role_ref;
            if r.kind != "ClusterRole" || !self.cluster_roles.iter().any(|x| x.name() == r.name) {
                p.push(format!(
                    "{}: roleRef {} {} does not exist",
                    b.id(),
                    r.kind,
                    r.name
                ));
            }
            self.check_subjects(&b.id(), b.obj.subjects.iter().flatten(), &mut p);
        }
        p
    }

    /// Each webhook calls a Service of the manifests on a port it has, at the
    /// path the agent serves, speaking AdmissionReview v1 without side effects.
    fn check_webhook(&self, w: &Obj<MutatingWebhookConfiguration>, p: &mut Vec<String>) {
        let id = w.id();
        let hooks = w.obj.webhooks.clone().unwrap_or_default();
        if hooks.is_empty() {
            p.push(format!("{id}: no webhooks"));
        }
        for h in hooks {
            let hid = format!("{id} webhook {}", h.name);
            if !h.admission_review_versions.iter().any(|v| v == "v1") {
                p.push(format!("{hid}: admissionReviewVersions lacks v1"));
            }
            if h.side_effects != "None" {
                p.push(format!("{hid}: sideEffects {}", h.side_effects));
            }
            let Some(svc) = &h.client_config.service else {
                p.push(format!("{hid}: clientConfig names no Service"));
                continue;
            };
            if svc.path.as_deref() != Some(crossmesh::agent::webhook::INJECT_PATH) {
                p.push(format!(
                    "{hid}: path {:?}, the agent serves {}",
                    svc.path,
                    crossmesh::agent::webhook::INJECT_PATH
                ));
            }
            match self
                .services
                .iter()
                .find(|s| s.ns() == svc.namespace && s.name() == svc.name)
            {
                None => p.push(format!(
                    "{hid}: Service {}/{} does not exist",
                    svc.namespace, svc.name
                )),
                Some(s) => {
                    let port = svc.port.unwrap_or(443);
                    let ports = s.obj.spec.as_ref().and_then(|x| x.ports.clone());
                    if !ports.iter().flatten().any(|x| x.port == port) {
                        p.push(format!("{hid}: {} has no port {port}", s.id()));
                    }
                }
            }
            let pods = h
                .rules
                .iter()
                .flatten()
                .any(|r| r.resources.iter().flatten().any(|x| x == "pods"));
            if !pods {
                p.push(format!("{hid}: no rule for pods"));
            }
        }
    }

    fn check_subjects<'a>(
        &self,
        id: &str,
        subjects: impl Iterator<Item = &'a k8s_openapi::api::rbac::v1::Subject>,
        p: &mut Vec<String>,
    ) {
        let mut any = false;
        for s in subjects {
            any = true;
            let ns = s.namespace.as_deref().unwrap_or("");
            if s.kind != "ServiceAccount" || self.service_account(ns, &s.name).is_none() {
                p.push(format!(
                    "{id}: subject {} {ns}/{} does not exist",
                    s.kind, s.name
                ));
            }
        }
        if !any {
            p.push(format!("{id}: no subjects"));
        }
    }

    fn check_deployment(&self, d: &Obj<Deployment>, p: &mut Vec<String>) {
        let id = d.id();
        let spec = d.obj.spec.clone().unwrap_or_default();
        let sel = match_labels(&spec.selector, &id, p);
        if !selects(&sel, &pod_labels(&d.obj)) {
            p.push(format!(
                "{id}: selector {sel:?} does not select its own pod template"
            ));
        }
        let pod = pod_spec(&d.obj);
        let sa = pod
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        if self.service_account(d.ns(), &sa).is_none() {
            p.push(format!(
                "{id}: serviceAccountName {sa} does not exist in {}",
                d.ns()
            ));
        }
        let pod_sc = pod.security_context.clone().unwrap_or_default();
        if pod_sc.run_as_non_root != Some(true) {
            p.push(format!(
                "{id}: pod securityContext.runAsNonRoot is not true"
            ));
        }
        let volumes: BTreeMap<String, _> = pod
            .volumes
            .iter()
            .flatten()
            .map(|v| (v.name.clone(), v.clone()))
            .collect();
        for v in volumes.values() {
            if let Some(cm) = &v.config_map {
                match self.config_map(d.ns(), &cm.name) {
                    // Published by crossmesh at run time (ca.rootCertNamespaces).
                    None if cm.name == crossmesh::security::root_publisher::CONFIGMAP
                        && self.root_cert_namespaces().iter().any(|n| n == d.ns()) => {}
                    None if made_at_install(d.ns(), "ConfigMap", &cm.name) => {}
                    None => p.push(format!(
                        "{id}: volume {} mounts ConfigMap {} which does not exist",
                        v.name, cm.name
                    )),
                    Some(c) => {
                        let data = c.obj.data.clone().unwrap_or_default();
                        for item in cm.items.iter().flatten() {
                            if !data.contains_key(&item.key) {
                                p.push(format!(
                                    "{id}: volume {} mounts key {} which {} does not have",
                                    v.name,
                                    item.key,
                                    c.id()
                                ));
                            }
                        }
                    }
                }
            }
        }
        for v in volumes.values() {
            if let Some(sv) = &v.secret {
                let name = sv.secret_name.clone().unwrap_or_default();
                let defined = self.secrets.iter().any(|(_, s)| {
                    s["metadata"]["namespace"] == d.ns() && s["metadata"]["name"] == name.as_str()
                });
                if !defined
                    && !made_at_install(d.ns(), "Secret", &name)
                    && sv.optional != Some(true)
                {
                    p.push(format!(
                        "{id}: volume {} mounts Secret {name}, which nothing creates",
                        v.name
                    ));
                }
            }
        }
        for c in containers(&pod) {
            let cid = format!("{id} container {}", c.name);
            let uid = c
                .security_context
                .as_ref()
                .and_then(|s| s.run_as_user)
                .or(pod_sc.run_as_user);
            if uid.is_none_or(|u| u == 0) {
                p.push(format!("{cid}: no non-zero runAsUser (pod or container)"));
            }
            let sc = c.security_context.clone().unwrap_or_default();
            if sc.allow_privilege_escalation != Some(false)
                || sc.read_only_root_filesystem != Some(true)
            {
                p.push(format!(
                    "{cid}: allowPrivilegeEscalation must be false and readOnlyRootFilesystem true"
                ));
            }
            if c.resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .is_none_or(|r| !r.contains_key("memory"))
                || c.resources
                    .as_ref()
                    .and_then(|r| r.limits.as_ref())
                    .is_none_or(|r| !r.contains_key("memory"))
            {
                p.push(format!("{cid}: needs memory requests and limits"));
            }
            match c.image.as_deref() {
                Some("crossmesh") => {} // set by the kustomization's `images`
                Some(i)
                    if i.rsplit_once(':')
                        .is_some_and(|(_, t)| t != "latest" && !t.contains('/')) => {}
                other => p.push(format!(
                    "{cid}: image {other:?} is neither `crossmesh` nor pinned to a tag"
                )),
            }
            for m in c.volume_mounts.iter().flatten() {
                if !volumes.contains_key(&m.name) {
                    p.push(format!("{cid}: volumeMount {} names no volume", m.name));
                }
            }
            let env: BTreeSet<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
            for e in c.env.iter().flatten() {
                let from = e.value_from.as_ref();
                if let Some(r) = from.and_then(|f| f.config_map_key_ref.as_ref()) {
                    let has = self
                        .config_map(d.ns(), &r.name)
                        .and_then(|c| c.obj.data.as_ref())
                        .is_some_and(|data| data.contains_key(&r.key));
                    if !has && r.optional != Some(true) {
                        p.push(format!(
                            "{cid}: env {} reads ConfigMap {} key {} which does not exist",
                            e.name, r.name, r.key
                        ));
                    }
                }
                if let Some(f) = from.and_then(|f| f.field_ref.as_ref()) {
                    if ![
                        "metadata.name",
                        "metadata.namespace",
                        "status.podIP",
                        "spec.serviceAccountName",
                        "spec.nodeName",
                    ]
                    .contains(&f.field_path.as_str())
                    {
                        p.push(format!(
                            "{cid}: env {} reads field {} (not checked here)",
                            e.name, f.field_path
                        ));
                    }
                }
            }
            for s in c.command.iter().flatten().chain(c.args.iter().flatten()) {
                for v in var_refs(s) {
                    if !env.contains(v.as_str()) {
                        p.push(format!(
                            "{cid}: $({v}) in its arguments is not an env var of the container"
                        ));
                    }
                }
            }
            let is_init = pod
                .init_containers
                .iter()
                .flatten()
                .any(|i| i.name == c.name);
            if !is_init {
                match &c.readiness_probe {
                    None => p.push(format!("{cid}: no readinessProbe")),
                    Some(r) => self.check_probe(&cid, "readinessProbe", c, r, p),
                }
                if let Some(l) = &c.liveness_probe {
                    self.check_probe(&cid, "livenessProbe", c, l, p);
                }
            }
        }
    }

    fn check_probe(
        &self,
        cid: &str,
        what: &str,
        c: &Container,
        probe: &Probe,
        p: &mut Vec<String>,
    ) {
        match probe_port(probe) {
            None => p.push(format!("{cid}: {what} is neither httpGet nor tcpSocket")),
            Some(port) if container_port(c, port).is_none() => p.push(format!(
                "{cid}: {what} port {port:?} is not a port of the container"
            )),
            Some(_) => {}
        }
    }

    fn check_service(&self, s: &Obj<Service>, p: &mut Vec<String>) {
        let id = s.id();
        let spec = s.obj.spec.clone().unwrap_or_default();
        let sel = labels(&spec.selector);
        let targets = self.selected(s.ns(), &sel);
        if targets.len() != 1 {
            p.push(format!(
                "{id}: selector {sel:?} selects {} Deployments",
                targets.len()
            ));
        }
        for d in targets {
            let pod = pod_spec(&d.obj);
            for port in spec.ports.iter().flatten() {
                let target = port
                    .target_port
                    .clone()
                    .unwrap_or(IntOrString::Int(port.port));
                let found = pod
                    .containers
                    .iter()
                    .find_map(|c| container_port(c, &target));
                if found.is_none() {
                    p.push(format!(
                        "{id}: port {} targetPort {target:?} is not a container port of {}",
                        port.name.as_deref().unwrap_or(""),
                        d.id()
                    ));
                }
            }
        }
    }
}

/// deploy/ as it is in the repo.
fn manifests() -> Manifests {
    let (m, problems) = load();
    assert!(
        problems.is_empty(),
        "deploy/ does not parse as written:\n{}",
        problems.join("\n")
    );
    m
}

#[test]
fn every_file_parses_into_its_kubernetes_type_without_losing_a_field() {
    let m = manifests();
    // The parts an operator needs are there.
    assert!(
        m.deployments.len() >= 2,
        "{:?}",
        m.deployments.iter().map(|d| d.id()).collect::<Vec<_>>()
    );
    assert!(!m.pdbs.is_empty() && !m.services.is_empty() && !m.config_maps.is_empty());
}

#[test]
fn the_objects_refer_to_each_other_correctly() {
    let problems = manifests().check();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `f` breaks one reference in a copy of deploy/; the checker must name it.
fn assert_caught(what: &str, expect: &str, f: impl FnOnce(&mut Manifests)) {
    let mut m = manifests();
    f(&mut m);
    let problems = m.check();
    assert!(
        problems.iter().any(|p| p.contains(expect)),
        "{what}: expected a problem containing {expect:?}, got:\n{}",
        problems.join("\n")
    );
}

fn crossmesh_deployment(m: &mut Manifests) -> &mut Deployment {
    &mut m
        .deployments
        .iter_mut()
        .find(|d| d.obj.metadata.name.as_deref() == Some("crossmesh"))
        .expect("Deployment crossmesh")
        .obj
}

fn crossmesh_container(m: &mut Manifests) -> &mut Container {
    let spec = crossmesh_deployment(m)
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap();
    spec.containers
        .iter_mut()
        .find(|c| c.name == "crossmesh")
        .expect("container crossmesh")
}

#[test]
fn the_checker_catches_each_broken_reference() {
    assert_caught(
        "Service targetPort renamed",
        "targetPort String(\"grpc-xdz\")",
        |m| {
            let s = m
                .services
                .iter_mut()
                .find(|s| s.obj.metadata.name.as_deref() == Some("crossmesh"))
                .unwrap();
            s.obj.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].target_port =
                Some(IntOrString::String("grpc-xdz".into()));
        },
    );
    assert_caught("Service selector off", "selects 0 Deployments", |m| {
        let s = m
            .services
            .iter_mut()
            .find(|s| s.obj.metadata.name.as_deref() == Some("crossmesh"))
            .unwrap();
        s.obj.spec.as_mut().unwrap().selector =
            Some([("app".to_string(), "crossmeh".to_string())].into());
    });
    assert_caught(
        "ServiceAccount missing",
        "serviceAccountName crossmesh does not exist",
        |m| {
            m.service_accounts
                .retain(|s| s.obj.metadata.name.as_deref() != Some("crossmesh"));
        },
    );
    assert_caught(
        "RoleBinding subject missing",
        "subject ServiceAccount crossmesh-system/crossmesh does not exist",
        |m| {
            m.service_accounts
                .retain(|s| s.obj.metadata.name.as_deref() != Some("crossmesh"));
        },
    );
    assert_caught("ConfigMap key renamed", "mounts key mesh.yaml", |m| {
        let c = m
            .config_maps
            .iter_mut()
            .find(|c| c.obj.metadata.name.as_deref() == Some("crossmesh-mesh"))
            .unwrap();
        let data = c.obj.data.as_mut().unwrap();
        let v = data.remove("mesh.yaml").unwrap();
        data.insert("mesh.yml".into(), v);
    });
    assert_caught(
        "probe port renamed",
        "readinessProbe port String(\"http-monitorin\")",
        |m| {
            let c = crossmesh_container(m);
            c.readiness_probe
                .as_mut()
                .unwrap()
                .http_get
                .as_mut()
                .unwrap()
                .port = IntOrString::String("http-monitorin".into());
        },
    );
    assert_caught("PDB selector off", "selects 0 Deployments", |m| {
        let b = &mut m.pdbs[0].obj;
        b.spec
            .as_mut()
            .unwrap()
            .selector
            .as_mut()
            .unwrap()
            .match_labels = Some([("app".to_string(), "nothing".to_string())].into());
    });
    assert_caught("PDB blocks drains", "blocks every drain", |m| {
        let b = m
            .pdbs
            .iter_mut()
            .find(|b| b.obj.metadata.name.as_deref() == Some("crossmesh"))
            .unwrap();
        b.obj.spec.as_mut().unwrap().min_available = Some(IntOrString::Int(2));
    });
    assert_caught("$(VAR) without env", "$(STATUS_LISTENER)", |m| {
        let gw = m
            .deployments
            .iter_mut()
            .find(|d| d.obj.metadata.name.as_deref() == Some("istio-ingressgateway"))
            .unwrap();
        let c = &mut gw
            .obj
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0];
        c.env
            .as_mut()
            .unwrap()
            .retain(|e| e.name != "STATUS_LISTENER");
    });
    assert_caught("root user", "no non-zero runAsUser", |m| {
        crossmesh_container(m)
            .security_context
            .as_mut()
            .unwrap()
            .run_as_user = Some(0);
    });
}

#[test]
fn a_misspelt_field_fails_the_round_trip() {
    let doc: Value = serde_saphyr::from_str(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  ports:\n  - port: 80\n    tragetPort: http\n",
    )
    .unwrap();
    let mut problems = Vec::new();
    typed::<Service>("x.yaml", &doc, &mut problems);
    assert!(
        problems
            .iter()
            .any(|p| p.contains(".spec.ports[0].tragetPort: not a field")),
        "{problems:?}"
    );
}

// ---- kustomize ----

#[derive(serde::Deserialize, Debug)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Kustomization {
    api_version: String,
    kind: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    images: Vec<KustomizeImage>,
}

#[derive(serde::Deserialize, Debug)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KustomizeImage {
    name: String,
    new_name: Option<String>,
    new_tag: Option<String>,
}

/// Each kustomization lists files and directories that exist, every YAML file
/// beside it is listed (nothing is silently left out of `kubectl apply -k`), and
/// every file under deploy/kubernetes is reached from the top kustomization.
#[test]
fn kustomizations_list_exactly_their_files() {
    let tops = [
        Path::new(ROOT).join("deploy/kubernetes"),
        Path::new(ROOT).join("deploy/agent"),
    ];
    let mut reached = BTreeSet::new();
    let mut images = Vec::new();
    let mut todo = tops.to_vec();
    while let Some(dir) = todo.pop() {
        let kfile = dir.join("kustomization.yaml");
        let k: Kustomization = serde_saphyr::from_str(&std::fs::read_to_string(&kfile).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", rel(&kfile)));
        assert_eq!(
            (k.api_version.as_str(), k.kind.as_str()),
            ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
            "{}",
            rel(&kfile)
        );
        images.extend(k.images);
        for r in &k.resources {
            let p = dir.join(r);
            assert!(
                !r.contains("..") && !r.starts_with('/'),
                "{}: {r} is outside the kustomization (kustomize refuses it)",
                rel(&kfile)
            );
            if p.is_dir() {
                assert!(
                    p.join("kustomization.yaml").is_file(),
                    "{}: {r} has no kustomization.yaml",
                    rel(&kfile)
                );
                todo.push(p);
            } else {
                assert!(
                    p.is_file(),
                    "{}: lists {r}, which does not exist",
                    rel(&kfile)
                );
                reached.insert(p);
            }
        }
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if p.is_file() && name.ends_with(".yaml") && name != "kustomization.yaml" {
                assert!(
                    k.resources.contains(&name),
                    "{}: does not list {name}",
                    rel(&kfile)
                );
            }
            if p.is_dir() {
                assert!(
                    k.resources.contains(&name),
                    "{}: does not list directory {name}",
                    rel(&kfile)
                );
            }
        }
    }
    let mut all = Vec::new();
    for top in &tops {
        yaml_files(top, &mut all);
    }
    for f in all {
        if f.file_name().is_some_and(|n| n != "kustomization.yaml") {
            assert!(
                reached.contains(&f),
                "{} is not reached from deploy/kubernetes or deploy/agent's kustomization.yaml",
                rel(&f)
            );
        }
    }
    // The image name the manifests use is the one the kustomization sets, at the
    // crate's version.
    let m = manifests();
    let uses_crossmesh = m
        .deployments
        .iter()
        .flat_map(|d| {
            containers(&pod_spec(&d.obj))
                .filter_map(|c| c.image.clone())
                .collect::<Vec<_>>()
        })
        .filter(|i| i == "crossmesh")
        .count();
    assert!(
        uses_crossmesh >= 2,
        "the control plane and the gateway's init container run image `crossmesh`"
    );
    let ours: Vec<_> = images.iter().filter(|i| i.name == "crossmesh").collect();
    assert_eq!(
        ours.len(),
        tops.len(),
        "each kustomization sets image crossmesh"
    );
    for img in ours {
        assert!(img.new_name.is_some());
        assert_eq!(img.new_tag.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    }
}

// ---- RBAC ----

fn grants(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        r.api_groups.iter().flatten().any(|g| g == group)
            && r.resources.iter().flatten().any(|x| x == resource)
            && r.verbs.iter().any(|v| v == verb)
    })
}

/// The hub's ServiceAccount can list and watch every kind crossmesh's kube
/// source watches (TLS Secrets among them, for `credentialName`), Secrets in the
/// remote-secret namespace, create TokenReviews, and patch the status
/// subresources of the Gateway API kinds it serves; with `agentAddress`, create the agent enrolment Secret and
/// get/update it by name in serve's namespace; nothing else, no wildcard, no
/// other write.
#[test]
fn rbac_is_least_privilege_and_enough() {
    use crossmesh::sources::kube::ISTIO_KINDS;
    let m = manifests();
    let mesh = mesh_config(&m);
    let d = m
        .deployments
        .iter()
        .find(|d| d.name() == "crossmesh")
        .unwrap();
    let sa = pod_spec(&d.obj)
        .service_account_name
        .expect("serviceAccountName");
    let ns = "crossmesh-system";
    let bound = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == Some(ns)
        })
    };
    // Every rule of every role in deploy/: read verbs only, no wildcards; the
    // writes are `create` on TokenReviews (authenticated xDS verifies tokens),
    // and, through Roles in one namespace each, creating the mesh CA's Secret
    // and publishing its root ConfigMap.
    let token_review = |r: &PolicyRule| {
        r.api_groups.as_deref() == Some(&["authentication.k8s.io".to_string()][..])
            && r.resources.as_deref() == Some(&["tokenreviews".to_string()][..])
            && r.verbs == ["create"]
    };
    // Gateway API status: merge patches of the status subresources only.
    let status_resources = crossmesh::sources::gateway_status::status_resources();
    let status_write = |r: &PolicyRule| {
        r.api_groups.as_deref() == Some(&[crossmesh::model::gateway_api::GROUP.to_string()][..])
            && r.resources.as_deref() == Some(&status_resources[..])
            && r.verbs == ["patch"]
    };
    let core = |r: &PolicyRule, res: &str| {
        r.api_groups.as_deref() == Some(&["".to_string()][..])
            && r.resources.as_deref() == Some(&[res.to_string()][..])
    };
    let enrolment_secret = || {
        Some(vec![
            crossmesh::security::agent_tokens::ENROLMENT_SECRET.to_string()
        ])
    };
    let ca_write = |id: &str, r: &PolicyRule| {
        let in_ns = |ns: &str| id.starts_with(&format!("Role {ns}/"));
        (in_ns(ns) && core(r, "secrets") && r.verbs == ["create"])
            // The agents' enrolment Secret: updated by name only.
            || (in_ns(ns)
                && core(r, "secrets")
                && r.verbs == ["get", "update"]
                && r.resource_names == enrolment_secret())
            || (mesh.ca.root_cert_namespaces.iter().any(|n| in_ns(n))
                && core(r, "configmaps")
                && (r.verbs == ["create"]
                    || (r.verbs == ["get", "update"]
                        && r.resource_names.as_deref()
                            == Some(
                                &[crossmesh::security::root_publisher::CONFIGMAP.to_string()][..],
                            ))))
    };
    // deploy/agent runs in member clusters as its own ServiceAccount and is
    // checked by agent_rbac_is_exactly_what_the_agent_does.
    let hub_side = |file: &str| !file.starts_with("deploy/agent/");
    let all_rules = m
        .cluster_roles
        .iter()
        .filter(|r| hub_side(&r.file))
        .map(|r| (r.id(), r.obj.rules.clone().unwrap_or_default()))
        .chain(
            m.roles
                .iter()
                .filter(|r| hub_side(&r.file))
                .map(|r| (r.id(), r.obj.rules.clone().unwrap_or_default())),
        );
    for (id, rules) in all_rules {
        for r in rules {
            for v in &r.verbs {
                assert!(
                    ["get", "list", "watch"].contains(&v.as_str())
                        || token_review(&r)
                        || status_write(&r)
                        || ca_write(&id, &r),
                    "{id} grants {v}"
                );
            }
            for x in r
                .resources
                .iter()
                .flatten()
                .chain(r.api_groups.iter().flatten())
            {
                assert!(!x.contains('*'), "{id} grants a wildcard {x:?}");
            }
        }
    }
    let cluster_rules: Vec<PolicyRule> = m
        .cluster_role_bindings
        .iter()
        .filter(|b| bound(&b.obj.subjects))
        .flat_map(|b| {
            m.cluster_roles
                .iter()
                .filter(|r| r.name() == b.obj.role_ref.name)
                .flat_map(|r| r.obj.rules.clone().unwrap_or_default())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut watched = vec![
        ("", "services"),
        ("", "pods"),
        ("", "nodes"),
        ("discovery.k8s.io", "endpointslices"),
        // TLS Secrets for credentialName (sources::secrets).
        ("", "secrets"),
    ];
    watched.extend(ISTIO_KINDS.iter().map(|(g, _, p)| (*g, *p)));
    watched.extend(
        crossmesh::sources::kube::GATEWAY_API_KINDS
            .iter()
            .map(|(g, _, p)| (*g, *p)),
    );
    watched.extend(
        crossmesh::sources::kube::NAMESPACE_KINDS
            .iter()
            .map(|(g, _, p)| (*g, *p)),
    );
    for (g, r) in &watched {
        for v in ["get", "list", "watch"] {
            assert!(grants(&cluster_rules, g, r, v), "{sa} cannot {v} {g}/{r}");
        }
    }
    assert!(
        grants(
            &cluster_rules,
            "authentication.k8s.io",
            "tokenreviews",
            "create"
        ),
        "{sa} cannot create TokenReviews (authenticated xDS)"
    );
    for r in &status_resources {
        assert!(
            grants(
                &cluster_rules,
                crossmesh::model::gateway_api::GROUP,
                r,
                "patch"
            ),
            "{sa} cannot patch {r} (Gateway API status)"
        );
    }
    for rule in cluster_rules
        .iter()
        .filter(|r| !token_review(r) && !status_write(r))
    {
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                assert!(
                    watched.contains(&(g.as_str(), r.as_str())),
                    "cluster-wide grant of {g}/{r}, which crossmesh does not watch"
                );
            }
        }
    }
    // Secrets: read in the remote-secret namespace through a Role bound to the SA.
    let secret_roles: Vec<&Obj<Role>> = m
        .role_bindings
        .iter()
        .filter(|b| bound(&b.obj.subjects) && b.obj.role_ref.kind == "Role")
        .flat_map(|b| {
            m.roles
                .iter()
                .filter(move |r| r.ns() == b.ns() && r.name() == b.obj.role_ref.name)
        })
        .collect();
    assert!(
        secret_roles
            .iter()
            .any(|r| r.ns() == mesh.remote_secret_namespace
                && ["list", "watch"].iter().all(|v| grants(
                    r.obj.rules.as_deref().unwrap_or(&[]),
                    "",
                    "secrets",
                    v
                ))),
        "no Role lets {sa} list and watch Secrets in {}",
        mesh.remote_secret_namespace
    );
    // The mesh CA: the Secret that keeps a generated root is created in serve's
    // namespace; the root ConfigMap is published in each rootCertNamespaces.
    let ns_grants = |in_ns: &str, res: &str, verb: &str| {
        secret_roles.iter().any(|r| {
            r.ns() == in_ns && grants(r.obj.rules.as_deref().unwrap_or(&[]), "", res, verb)
        })
    };
    if mesh.ca.kubernetes_secret.is_some() {
        assert!(
            ns_grants(ns, "secrets", "create"),
            "{sa} cannot create the CA Secret in {ns}"
        );
    }
    // Agents (agentAddress) with ca.kubernetesSecret: the enrolment Secret is
    // created in serve's namespace, then read and updated by name.
    if mesh.agent_address.is_some() && mesh.ca.kubernetes_secret.is_some() {
        assert!(
            ns_grants(ns, "secrets", "create"),
            "{sa} cannot create the agent enrolment Secret in {ns}"
        );
        let by_name = |rule: &PolicyRule| {
            core(rule, "secrets")
                && ["get", "update"]
                    .iter()
                    .all(|v| rule.verbs.iter().any(|x| x == v))
                && rule.resource_names == enrolment_secret()
        };
        assert!(
            secret_roles
                .iter()
                .any(|r| r.ns() == ns && r.obj.rules.iter().flatten().any(by_name)),
            "{sa} cannot get and update the Secret {ns}/{} by name",
            crossmesh::security::agent_tokens::ENROLMENT_SECRET
        );
    }
    for n in &mesh.ca.root_cert_namespaces {
        for v in ["create", "get", "update"] {
            assert!(
                ns_grants(n, "configmaps", v),
                "{sa} cannot {v} the root ConfigMap in {n}"
            );
        }
    }
    // deploy/rbac.yaml (applied in member clusters, which may include the hub)
    // and the hub's base agree where they define the same object.
    for a in &m.roles {
        for b in m
            .roles
            .iter()
            .filter(|b| b.file != a.file && b.name() == a.name() && b.ns() == a.ns())
        {
            assert_eq!(a.obj.rules, b.obj.rules, "{} and {} differ", a.id(), b.id());
        }
    }
}

// ---- the mesh file and the crossmesh Deployment ----

/// The text of the file at `path` inside `container`, through its volume mounts
/// and ConfigMap volumes.
fn mounted_file(m: &Manifests, d: &Obj<Deployment>, c: &Container, path: &str) -> String {
    let pod = pod_spec(&d.obj);
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| path.starts_with(&format!("{}/", v.mount_path)))
        .unwrap_or_else(|| panic!("{}: nothing mounted at {path}", d.id()));
    let rest = &path[mount.mount_path.len() + 1..];
    let vol = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("volume");
    let cm = vol
        .config_map
        .as_ref()
        .unwrap_or_else(|| panic!("{path}: volume {} is not a ConfigMap", vol.name));
    let key = match &cm.items {
        Some(items) => items.iter().find(|i| i.path == rest).map(|i| i.key.clone()),
        None => Some(rest.to_string()),
    }
    .unwrap_or_else(|| {
        panic!(
            "{path}: ConfigMap volume {} has no item at {rest}",
            vol.name
        )
    });
    m.config_map(d.ns(), &cm.name)
        .and_then(|c| c.obj.data.as_ref()?.get(&key).cloned())
        .unwrap_or_else(|| panic!("{path}: ConfigMap {} has no key {key}", cm.name))
}

impl Manifests {
    /// `ca.rootCertNamespaces` of the mesh file in the crossmesh ConfigMap (empty
    /// if it cannot be read: the checks that need it then fail).
    fn root_cert_namespaces(&self) -> Vec<String> {
        self.config_map("crossmesh-system", "crossmesh-mesh")
            .and_then(|c| c.obj.data.as_ref()?.get("mesh.yaml").cloned())
            .and_then(|text| serde_saphyr::from_str::<Value>(&text).ok())
            .and_then(|v| {
                v["ca"]["rootCertNamespaces"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_str().map(str::to_string))
                        .collect()
                })
            })
            .unwrap_or_default()
    }
}

/// The crossmesh container's `serve --mesh` file, read through its mounts and
/// loaded with `MeshConfig::load`, the function `crossmesh serve` loads it with.
fn mesh_config(m: &Manifests) -> MeshConfig {
    let mut copy = m.clone();
    let c = crossmesh_container(&mut copy).clone();
    let d = m
        .deployments
        .iter()
        .find(|d| d.name() == "crossmesh")
        .unwrap();
    let args: Vec<String> = c
        .command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .cloned()
        .collect();
    let cli = parse_cli(&args);
    let serve = match cli.command {
        crossmesh::cli::Command::Serve(s) => s,
        other => panic!("the crossmesh container runs {other:?}, not serve"),
    };
    let mesh_path = serve.mesh.to_string_lossy().to_string();
    let text = mounted_file(m, d, &c, &mesh_path);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, text).unwrap();
    // `crossmesh validate` checks it as an operator would before applying.
    let out = Command::new(support::control_plane::crossmesh_bin())
        .arg("validate")
        .arg(&file)
        .output()
        .expect("run crossmesh validate");
    assert!(
        out.status.success(),
        "crossmesh validate {mesh_path} (the ConfigMap's mesh file): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    MeshConfig::load(&file).unwrap_or_else(|e| panic!("{mesh_path} in the ConfigMap: {e}"))
}

/// `crossmesh ARGS` as the binary parses them.
fn parse_cli(args: &[String]) -> crossmesh::cli::Cli {
    use clap::Parser;
    crossmesh::cli::Cli::try_parse_from(
        std::iter::once("crossmesh".to_string()).chain(args.iter().cloned()),
    )
    .unwrap_or_else(|e| panic!("crossmesh {args:?}: {e}"))
}

/// The mesh file validates; crossmesh listens where the container ports and the
/// probes expect it; its config cluster is the cluster it runs in; the gateway
/// names a cluster of the mesh file and dials the Service in front of crossmesh.
#[test]
fn mesh_file_in_the_configmap_is_valid_and_matches_the_deployment() {
    let m = manifests();
    let mesh = mesh_config(&m);
    let mut copy = m.clone();
    let c = crossmesh_container(&mut copy).clone();
    let tls = mesh
        .xds_tls_address
        .expect("xdsTlsAddress: the gateway uses the TLS port");
    let agent = mesh
        .agent_address
        .expect("agentAddress: member-cluster agents connect to the hub");
    for (what, addr) in [
        ("xdsAddress", mesh.xds_address),
        ("xdsTlsAddress", tls),
        ("debugAddress", mesh.debug_address),
        ("agentAddress", agent),
    ] {
        assert!(
            addr.ip().is_unspecified(),
            "{what} {addr}: kubelet and the Service reach the Pod IP, not loopback"
        );
        assert!(
            container_port(&c, &IntOrString::Int(i32::from(addr.port()))).is_some(),
            "{what} port {} is not a containerPort",
            addr.port()
        );
    }
    for (what, probe) in [
        ("readiness", &c.readiness_probe),
        ("liveness", &c.liveness_probe),
    ] {
        let port = probe
            .as_ref()
            .and_then(probe_port)
            .unwrap_or_else(|| panic!("no {what} probe"));
        assert_eq!(
            container_port(&c, port),
            Some(i32::from(mesh.debug_address.port())),
            "{what} probe must hit the debug address"
        );
    }
    // The config cluster is read with the Pod's ServiceAccount.
    let in_cluster: Vec<&str> = mesh
        .clusters
        .iter()
        .filter(|c| c.source == ClusterSource::InCluster)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(in_cluster.len(), 1, "{:?}", mesh.clusters);
    let d = m
        .deployments
        .iter()
        .find(|d| d.name() == "crossmesh")
        .unwrap();
    let pod = pod_spec(&d.obj);
    let sa = m
        .service_account(d.ns(), pod.service_account_name.as_deref().unwrap())
        .unwrap();
    assert_ne!(
        pod.automount_service_account_token,
        Some(false),
        "inCluster needs the token"
    );
    assert_ne!(
        sa.obj.automount_service_account_token,
        Some(false),
        "inCluster needs the token"
    );
    assert!(
        mesh.config
            .contains(&crossmesh::config::ConfigSource::Cluster(
                in_cluster[0].to_string()
            )),
        "Istio config comes from the config cluster: {:?}",
        mesh.config
    );
    // The gateway: its cluster ID is a mesh cluster, its xDS address is the
    // crossmesh Service's xDS port.
    let gw_env = gateway_init_env(&m, "10.1.2.3");
    let cluster_id = &gw_env["CROSSMESH_CLUSTER_ID"];
    assert!(
        mesh.clusters.iter().any(|c| &c.name == cluster_id),
        "gateway cluster ID {cluster_id} is not in the mesh file"
    );
    let xds = &gw_env["CROSSMESH_XDS_ADDRESS"];
    let (host, port) = xds.rsplit_once(':').expect("HOST:PORT");
    let port: i32 = port.parse().unwrap();
    let mut parts = host.split('.');
    let (svc, ns) = (parts.next().unwrap(), parts.next().unwrap_or(""));
    assert_eq!(parts.next(), Some("svc"), "{xds}: use NAME.NAMESPACE.svc");
    let s = m
        .services
        .iter()
        .find(|s| s.name() == svc && s.ns() == ns)
        .unwrap_or_else(|| panic!("{xds}: no Service {ns}/{svc}"));
    let sp = s
        .obj
        .spec
        .as_ref()
        .unwrap()
        .ports
        .iter()
        .flatten()
        .find(|p| p.port == port)
        .unwrap_or_else(|| panic!("{xds}: Service has no port {port}"));
    assert!(m
        .selected(ns, &labels(&s.obj.spec.as_ref().unwrap().selector))
        .iter()
        .any(|x| x.name() == "crossmesh"));
    assert_eq!(
        container_port(&c, sp.target_port.as_ref().unwrap()),
        Some(i32::from(tls.port())),
        "{xds} reaches crossmesh's TLS xDS port"
    );
    // Agents reach the agent port through the same Service.
    let agent_port = s
        .obj
        .spec
        .as_ref()
        .unwrap()
        .ports
        .iter()
        .flatten()
        .find(|p| p.port == i32::from(agent.port()))
        .unwrap_or_else(|| panic!("Service {ns}/{svc} has no port {}", agent.port()));
    assert_eq!(
        container_port(&c, agent_port.target_port.as_ref().unwrap()),
        Some(i32::from(agent.port())),
        "Service port {} reaches crossmesh's agentAddress",
        agent.port()
    );
    // The gateway trusts the root crossmesh publishes in its namespace and
    // presents a token with an audience crossmesh accepts.
    assert!(
        gw_env.contains_key("CROSSMESH_ROOT_CERT") && gw_env.contains_key("CROSSMESH_TOKEN_FILE"),
        "the gateway's bootstrap authenticates: {gw_env:?}"
    );
    let gw = gateway(&m);
    assert!(
        mesh.ca.root_cert_namespaces.iter().any(|n| n == gw.ns()),
        "the root is not published in the gateway's namespace {}",
        gw.ns()
    );
    let audiences: Vec<String> = pod_spec(&gw.obj)
        .volumes
        .iter()
        .flatten()
        .flat_map(|v| v.projected.iter().flat_map(|p| p.sources.iter().flatten()))
        .filter_map(|s| s.service_account_token.as_ref()?.audience.clone())
        .collect();
    assert!(
        audiences.iter().any(|a| mesh.token_audiences.contains(a)),
        "the gateway's projected token audiences {audiences:?} are not in tokenAudiences {:?}",
        mesh.token_audiences
    );
}

/// Kills the child on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The probe paths exist on crossmesh's debug address and behave as Kubernetes
/// needs, on the real binary: with a member cluster that cannot be reached,
/// readiness answers 503 until that cluster stops blocking (the mesh file's
/// `readyTimeoutMs`) and 200 after; liveness answers 200 throughout.
#[tokio::test]
async fn probe_paths_answer_as_kubernetes_expects() {
    let mut m = manifests();
    let c = crossmesh_container(&mut m).clone();
    let path = |p: &Option<Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
            .expect("httpGet path")
    };
    let (ready, live) = (path(&c.readiness_probe), path(&c.liveness_probe));
    let dir = tempfile::tempdir().unwrap();
    // An API server address nothing listens on.
    let dead = support::net::free_port();
    std::fs::write(
        dir.path().join("dead.kubeconfig"),
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: dead\nclusters:\n- name: dead\n  cluster: {{server: \"http://127.0.0.1:{dead}\"}}\ncontexts:\n- name: dead\n  context: {{cluster: dead, user: dead}}\nusers:\n- name: dead\n  user: {{token: t}}\n"
        ),
    )
    .unwrap();
    let debug = format!("127.0.0.1:{}", support::net::free_port());
    let xds = format!("127.0.0.1:{}", support::net::free_port());
    std::fs::write(
        dir.path().join("mesh.yaml"),
        format!("xdsAddress: {xds}\ndebugAddress: {debug}\ntunables: {{readyTimeoutMs: 8000}}\nclusters:\n- name: dead\n  kubeconfig: dead.kubeconfig\n"),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let _cp = Killed(
        Command::new(support::control_plane::crossmesh_bin())
            .args(["serve", "--mesh"])
            .arg(dir.path().join("mesh.yaml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let started = std::time::Instant::now();
    let status = |p: &str| {
        let url = format!("http://{debug}{p}");
        async move {
            match reqwest::get(&url).await {
                Ok(r) => Ok(r.status().as_u16()),
                Err(e) => Err(format!("{url}: {e}")),
            }
        }
    };
    support::wait_for(
        "liveness answers",
        std::time::Duration::from_secs(10),
        || async {
            match status(&live).await? {
                200 => Ok(()),
                s => Err(format!("{live}: {s}")),
            }
        },
    )
    .await;
    let before = status(&ready).await.unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "the machine is too slow to see the first sync pending"
    );
    assert_eq!(before, 503, "{ready} while a member cluster has not synced");
    support::wait_for(
        "readiness after readyTimeoutMs",
        std::time::Duration::from_secs(30),
        || async {
            match status(&ready).await? {
                200 => Ok(()),
                s => Err(format!("{ready}: {s}")),
            }
        },
    )
    .await;
    assert_eq!(status(&live).await.unwrap(), 200, "{live} once ready");
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}

// ---- the ingress gateway ----

fn gateway(m: &Manifests) -> &Obj<Deployment> {
    m.deployments
        .iter()
        .find(|d| {
            pod_spec(&d.obj).init_containers.iter().flatten().any(|c| {
                c.args
                    .as_ref()
                    .is_some_and(|a| a.first().map(String::as_str) == Some("bootstrap"))
            })
        })
        .expect("a Deployment whose init container runs `crossmesh bootstrap`")
}

/// The init container's environment as the kubelet would give it, with the pod
/// name and IP of an example pod.
fn gateway_init_env(m: &Manifests, pod_ip: &str) -> BTreeMap<String, String> {
    let d = gateway(m);
    let pod = pod_spec(&d.obj);
    let init = pod.init_containers.iter().flatten().next().unwrap();
    init.env
        .iter()
        .flatten()
        .map(|e| {
            let v = match (
                &e.value,
                e.value_from.as_ref().and_then(|f| f.field_ref.as_ref()),
            ) {
                (Some(v), _) => v.clone(),
                (None, Some(f)) => match f.field_path.as_str() {
                    "metadata.name" => format!("{}-7d4f8b9c5-x2k7q", d.name()),
                    "metadata.namespace" => d.ns().to_string(),
                    "status.podIP" => pod_ip.to_string(),
                    "spec.serviceAccountName" => {
                        pod.service_account_name.clone().unwrap_or_default()
                    }
                    other => panic!("field {other}"),
                },
                (None, None) => panic!("env {} has no value", e.name),
            };
            (e.name.clone(), v)
        })
        .collect()
}

/// Run the gateway's init container (`crossmesh bootstrap`, the binary, with the
/// container's arguments and environment) and then Envoy in validate mode with
/// the gateway container's arguments: the bootstrap lands where Envoy reads it,
/// carries the pod's identity and labels, and Envoy accepts it together with the
/// status listener. Its listener port and route are the ones the readiness probe
/// and the Service use.
#[test]
fn gateway_bootstrap_is_written_where_envoy_reads_it_and_envoy_accepts_it() {
    let m = manifests();
    let d = gateway(&m);
    let pod = pod_spec(&d.obj);
    let init = pod.init_containers.iter().flatten().next().unwrap();
    let envoy = pod
        .containers
        .iter()
        .find(|c| c.name == "envoy")
        .expect("container envoy");
    let mut env = gateway_init_env(&m, "10.1.2.3");

    // Where the bootstrap goes: an emptyDir both containers mount at one path.
    let out = env
        .get("CROSSMESH_OUTPUT")
        .cloned()
        .expect("CROSSMESH_OUTPUT (or --output)");
    let mount = init
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| out.starts_with(&format!("{}/", v.mount_path)))
        .expect("output on a mount");
    let vol = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    assert!(
        vol.empty_dir.is_some(),
        "volume {} is an emptyDir",
        vol.name
    );
    assert!(
        envoy
            .volume_mounts
            .iter()
            .flatten()
            .any(|v| v.name == mount.name && v.mount_path == mount.mount_path),
        "envoy mounts {} at {}",
        mount.name,
        mount.mount_path
    );
    let dir = tempfile::tempdir().unwrap();
    let local = |p: &str| p.replacen(&mount.mount_path, &dir.path().display().to_string(), 1);
    env.insert("CROSSMESH_OUTPUT".into(), local(&out));
    // The root and the token Envoy reads: mounted into the envoy container, and
    // stand-ins made here for Envoy's validation.
    for var in ["CROSSMESH_ROOT_CERT", "CROSSMESH_TOKEN_FILE"] {
        let path = env.get(var).cloned().unwrap_or_else(|| panic!("{var}"));
        let m = envoy
            .volume_mounts
            .iter()
            .flatten()
            .find(|v| path.starts_with(&format!("{}/", v.mount_path)))
            .unwrap_or_else(|| panic!("envoy does not mount {path} ({var})"));
        assert!(
            pod.volumes.iter().flatten().any(|v| v.name == m.name),
            "volume {}",
            m.name
        );
        let stand_in = dir.path().join(var);
        let text = if var == "CROSSMESH_ROOT_CERT" {
            let key = rcgen::KeyPair::generate().unwrap();
            rcgen::CertificateParams::new(vec!["root.test".to_string()])
                .unwrap()
                .self_signed(&key)
                .unwrap()
                .pem()
        } else {
            "token-made-by-the-test".to_string()
        };
        std::fs::write(&stand_in, text).unwrap();
        env.insert(var.into(), stand_in.display().to_string());
    }

    let st = Command::new(support::control_plane::crossmesh_bin())
        .args(
            init.command
                .iter()
                .flatten()
                .chain(init.args.iter().flatten()),
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
    let written = std::fs::read_to_string(local(&out)).unwrap_or_else(|e| panic!("{out}: {e}"));
    let b: Value = serde_saphyr::from_str(&written).unwrap();
    let pod_name = &env["CROSSMESH_NAME"];
    assert_eq!(
        b["node"]["id"],
        format!(
            "router~10.1.2.3~{pod_name}.{ns}~{ns}.svc.cluster.local",
            ns = d.ns()
        )
    );
    let want_labels: Value = serde_json::to_value(pod_labels(&d.obj)).unwrap();
    assert_eq!(
        b["node"]["metadata"]["LABELS"], want_labels,
        "the labels Gateway selectors see are the pod's"
    );

    // Envoy's arguments, `$(VAR)` expanded from the container's env.
    let envoy_env: BTreeMap<String, String> = envoy
        .env
        .iter()
        .flatten()
        .map(|e| {
            let v = e.value.clone().unwrap_or_else(|| {
                let r = e
                    .value_from
                    .as_ref()
                    .and_then(|f| f.config_map_key_ref.as_ref())
                    .expect("value or configMapKeyRef");
                m.config_map(d.ns(), &r.name)
                    .and_then(|c| c.obj.data.as_ref()?.get(&r.key).cloned())
                    .expect("ConfigMap key")
            });
            (e.name.clone(), v)
        })
        .collect();
    let mut args: Vec<String> = envoy
        .command
        .iter()
        .flatten()
        .chain(envoy.args.iter().flatten())
        .cloned()
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("envoy"));
    for a in args.iter_mut() {
        for v in var_refs(a) {
            *a = a.replace(&format!("$({v})"), &envoy_env[&v]);
        }
    }
    let c_at = args.iter().position(|a| a == "-c").expect("envoy -c");
    assert_eq!(
        args[c_at + 1],
        out,
        "envoy reads the file the init container writes"
    );
    args[c_at + 1] = local(&out);
    let extra_at = args
        .iter()
        .position(|a| a == "--config-yaml")
        .expect("--config-yaml");
    let status: Value = serde_saphyr::from_str(&args[extra_at + 1]).unwrap();
    let listener = &status["static_resources"]["listeners"][0];
    let status_port = listener["address"]["socket_address"]["port_value"]
        .as_i64()
        .unwrap() as i32;
    let probe = envoy
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("readiness httpGet");
    assert_eq!(
        container_port(envoy, &probe.port),
        Some(status_port),
        "the probe hits the status listener"
    );
    let routes = &listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
        ["virtual_hosts"][0]["routes"];
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["match"]["path"].as_str() == probe.path.as_deref()),
        "the status listener routes the probe path {:?}",
        probe.path
    );
    let admin_port = env["CROSSMESH_ADMIN_PORT"].parse::<i64>().unwrap();
    let admin_cluster = &status["static_resources"]["clusters"][0]["load_assignment"]["endpoints"]
        [0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
    assert_eq!(
        admin_cluster["port_value"].as_i64(),
        Some(admin_port),
        "the probe reaches Envoy's admin /ready"
    );

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

    // The Service: LoadBalancer, on the ports Istio's istio-ingressgateway uses.
    let svc = m
        .services
        .iter()
        .find(|s| {
            s.ns() == d.ns()
                && selects(
                    &labels(&s.obj.spec.as_ref().unwrap().selector),
                    &pod_labels(&d.obj),
                )
        })
        .expect("gateway Service");
    let spec = svc.obj.spec.as_ref().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    let ports: BTreeSet<i32> = spec.ports.iter().flatten().map(|p| p.port).collect();
    assert_eq!(ports, BTreeSet::from([80, 443, 15021]));
    let labels = pod_labels(&d.obj);
    assert_eq!(
        labels.get("app").map(String::as_str),
        Some("istio-ingressgateway")
    );
    assert_eq!(
        labels.get("istio").map(String::as_str),
        Some("ingressgateway")
    );
}

// ---- the image ----

/// What can be checked without a container engine: two stages, the release build
/// with the lock file, a non-root numeric USER that the Deployments run as, an
/// exec-form ENTRYPOINT on the copied binary, no RUN in the runtime stage (no
/// shell needed), and a build context that holds everything the builder copies.
#[test]
fn dockerfile_builds_the_release_binary_into_a_non_root_image_without_a_shell() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("deploy/Dockerfile")).unwrap();
    // Logical lines (continuations joined), comments dropped.
    let mut lines = Vec::new();
    let mut cur = String::new();
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        if let Some(x) = t.strip_suffix('\\') {
            cur.push_str(x);
            cur.push(' ');
        } else {
            cur.push_str(t);
            lines.push(std::mem::take(&mut cur));
        }
    }
    let stages: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("FROM "))
        .map(|(i, _)| i)
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let builder = &lines[stages[0]];
    assert!(
        builder.contains("rust:") && builder.ends_with(" AS builder"),
        "{builder}"
    );
    let build_stage = &lines[stages[0]..stages[stages.len() - 1]];
    assert!(
        build_stage
            .iter()
            .any(|l| l.starts_with("RUN ") && l.contains("cargo build --release --locked")),
        "the builder runs cargo build --release --locked"
    );
    let runtime = &lines[stages[stages.len() - 1]..];
    assert!(
        !runtime.iter().any(|l| l.starts_with("RUN ")),
        "the runtime stage needs no shell: {runtime:?}"
    );
    let user = runtime
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER in the runtime stage");
    let uid: i64 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("USER {user} is not numeric"));
    assert_ne!(uid, 0, "USER is not root");
    let entry = runtime
        .iter()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(entry)
        .unwrap_or_else(|_| panic!("ENTRYPOINT {entry} is not exec form"));
    let copied = runtime
        .iter()
        .filter_map(|l| l.strip_prefix("COPY --from=builder "))
        .filter_map(|l| l.split_whitespace().last())
        .collect::<Vec<_>>();
    assert_eq!(
        copied,
        [entry[0].as_str()],
        "the runtime stage holds the binary only, and runs it"
    );
    // The pods run as the image's user.
    let m = manifests();
    let d = m
        .deployments
        .iter()
        .find(|d| d.name() == "crossmesh")
        .unwrap();
    assert_eq!(
        pod_spec(&d.obj).security_context.unwrap().run_as_user,
        Some(uid)
    );
    // The builder's Rust is at least the crate's rust-version.
    let cargo_toml = std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).unwrap();
    let want = cargo_toml
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    let have = lines
        .iter()
        .find_map(|l| l.strip_prefix("ARG RUST_VERSION="))
        .expect("ARG RUST_VERSION");
    let v = |s: &str| {
        s.split('.')
            .map(|x| x.parse::<u32>().unwrap())
            .collect::<Vec<_>>()
    };
    assert!(v(have) >= v(want), "rust {have} < rust-version {want}");
    // Every source the builder copies is in the build context.
    let ignore =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/Dockerfile.dockerignore")).unwrap();
    for l in build_stage.iter().filter_map(|l| l.strip_prefix("COPY ")) {
        let parts: Vec<&str> = l.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(
                Path::new(ROOT).join(src).exists(),
                "COPY {src}: no such path"
            );
            let allowed = ignore.lines().any(|i| {
                i.strip_prefix('!')
                    .is_some_and(|i| i.trim_end_matches('/') == src.trim_end_matches('/'))
            });
            assert!(
                allowed,
                "COPY {src}: excluded by deploy/Dockerfile.dockerignore"
            );
        }
    }
}

// ---- deploy/agent: the member-cluster agent ----

fn agent_deployment(m: &Manifests) -> &Obj<Deployment> {
    m.deployments
        .iter()
        .find(|d| d.name() == "crossmesh-agent")
        .expect("Deployment crossmesh-agent (deploy/agent)")
}

/// The agent container's `crossmesh agent` arguments as the binary sees them:
/// its args, plus each `CROSSMESH_<FLAG>` env var as `--flag VALUE`, the value
/// taken from the ConfigMap or downward-API field it names. Also returns the
/// container and its env.
fn agent_cli(
    m: &Manifests,
) -> (
    crossmesh::cli::AgentArgs,
    Container,
    BTreeMap<String, String>,
) {
    let d = agent_deployment(m);
    let pod = pod_spec(&d.obj);
    let c = pod
        .containers
        .iter()
        .find(|c| c.name == "agent")
        .expect("container agent")
        .clone();
    let mut env = BTreeMap::new();
    for e in c.env.iter().flatten() {
        let from = e.value_from.as_ref();
        let value = if let Some(v) = &e.value {
            v.clone()
        } else if let Some(r) = from.and_then(|f| f.config_map_key_ref.as_ref()) {
            m.config_map(d.ns(), &r.name)
                .and_then(|c| c.obj.data.as_ref()?.get(&r.key).cloned())
                .unwrap_or_else(|| panic!("env {}: ConfigMap {} key {}", e.name, r.name, r.key))
        } else if let Some(f) = from.and_then(|f| f.field_ref.as_ref()) {
            match f.field_path.as_str() {
                "metadata.namespace" => d.ns().to_string(),
                other => panic!("env {}: field {other}", e.name),
            }
        } else {
            panic!("env {}: no value", e.name)
        };
        env.insert(e.name.clone(), value);
    }
    let mut args: Vec<String> = c.args.clone().unwrap_or_default();
    for (k, v) in &env {
        if let Some(flag) = k.strip_prefix("CROSSMESH_") {
            args.push(format!("--{}", flag.to_lowercase().replace('_', "-")));
            args.push(v.clone());
        }
    }
    let a = match parse_cli(&args).command {
        crossmesh::cli::Command::Agent(a) => a,
        other => panic!("the agent container runs {other:?}"),
    };
    (*a, c, env)
}

/// The agent's flags agree with the objects around it: the Service the API
/// server calls and the webhook configuration it keeps, the port, its
/// namespace, the mounted root and enrolment token, the state kept in a Secret;
/// and docs/AGENT.md shows how to create what the operator makes by hand.
#[test]
fn agent_flags_match_its_service_webhook_and_mounts() {
    let m = manifests();
    let d = agent_deployment(&m);
    let (a, c, env) = agent_cli(&m);
    assert!(a
        .hub
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()));
    assert!(
        a.webhook.proxy_xds_address.is_some(),
        "injected sidecars need the hub's TLS xDS address"
    );
    assert_eq!(
        a.state_dir, None,
        "in a cluster the agent keeps its state in a Secret"
    );
    assert_eq!(
        env.get(crossmesh::agent::state::NAMESPACE_ENV)
            .map(String::as_str),
        Some(d.ns()),
        "the agent finds its namespace (state Secret, webhook Service) in {}",
        crossmesh::agent::state::NAMESPACE_ENV
    );
    // The webhook: the Service it names selects this pod and forwards to the
    // port the agent listens on; the configuration it keeps exists and calls it.
    let svc_name = a
        .webhook
        .webhook_service
        .clone()
        .expect("--webhook-service");
    let svc = m
        .services
        .iter()
        .find(|s| s.ns() == d.ns() && s.name() == svc_name)
        .unwrap_or_else(|| panic!("Service {svc_name} in {}", d.ns()));
    let spec = svc.obj.spec.clone().unwrap();
    let sel = spec.selector.clone().unwrap_or_default();
    assert!(selects(&sel, &pod_labels(&d.obj)));
    let listen = a.webhook.webhook_address.port() as i32;
    let wh = m
        .webhooks
        .iter()
        .find(|w| w.name() == a.webhook.webhook_config)
        .unwrap_or_else(|| panic!("MutatingWebhookConfiguration {}", a.webhook.webhook_config));
    for h in wh.obj.webhooks.iter().flatten() {
        let s = h.client_config.service.as_ref().unwrap();
        assert_eq!(
            (s.namespace.as_str(), s.name.as_str()),
            (d.ns(), svc_name.as_str())
        );
        let port = spec
            .ports
            .iter()
            .flatten()
            .find(|p| p.port == s.port.unwrap_or(443))
            .expect("the Service port the webhook calls");
        let target = port.target_port.clone().expect("targetPort");
        assert_eq!(
            container_port(&c, &target),
            Some(listen),
            "{} -> {target:?}",
            h.name
        );
        // Injection must never be asked of the agent itself.
        assert_eq!(
            pod_labels(&d.obj)
                .get(crossmesh::agent::inject::INJECT_KEY)
                .map(String::as_str),
            Some("false")
        );
    }
    // Mounted files: the hub root from the operator's ConfigMap, the token from
    // the optional enrolment Secret.
    let mount_source = |path: &str| -> (String, String) {
        let pod = pod_spec(&d.obj);
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|v| path.starts_with(&format!("{}/", v.mount_path)))
            .unwrap_or_else(|| panic!("nothing mounted at {path}"));
        let v = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .unwrap();
        if let Some(cm) = &v.config_map {
            ("ConfigMap".into(), cm.name.clone())
        } else if let Some(s) = &v.secret {
            ("Secret".into(), s.secret_name.clone().unwrap_or_default())
        } else {
            panic!("{path}: neither ConfigMap nor Secret")
        }
    };
    let root = mount_source(&a.root_cert.to_string_lossy());
    assert_eq!(root, ("ConfigMap".into(), "crossmesh-hub-root".into()));
    let token = mount_source(
        &a.token_file
            .clone()
            .expect("--token-file")
            .to_string_lossy(),
    );
    assert_eq!(token, ("Secret".into(), "crossmesh-agent-enrolment".into()));
    let doc = std::fs::read_to_string(Path::new(ROOT).join("docs/AGENT.md")).unwrap();
    for (_, _, _, cmd) in MADE_AT_INSTALL {
        assert!(doc.contains(cmd), "docs/AGENT.md does not show `{cmd}`");
    }
}

/// The agent's RBAC is exactly what the agent does: it reads its inventory,
/// the Istio kinds it streams and Namespaces (root ConfigMap); it writes the
/// root ConfigMap, its one webhook configuration and its one state Secret,
/// nothing else; it never lists or watches Secrets.
#[test]
fn agent_rbac_is_exactly_what_the_agent_does() {
    let m = manifests();
    let d = agent_deployment(&m);
    let (a, _, _) = agent_cli(&m);
    let sa = pod_spec(&d.obj)
        .service_account_name
        .expect("serviceAccountName");
    let bound = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == Some(d.ns())
        })
    };
    // (namespace or "" for cluster-wide, group, resource, verb, resourceName or "").
    type Grant = (String, String, String, String, String);
    let mut granted: BTreeSet<Grant> = BTreeSet::new();
    let mut add = |ns: &str, rules: &[PolicyRule]| {
        for r in rules {
            let names: Vec<String> = match &r.resource_names {
                Some(n) if !n.is_empty() => n.clone(),
                _ => vec![String::new()],
            };
            for g in r.api_groups.iter().flatten() {
                for res in r.resources.iter().flatten() {
                    for v in &r.verbs {
                        for n in &names {
                            granted.insert((
                                ns.into(),
                                g.clone(),
                                res.clone(),
                                v.clone(),
                                n.clone(),
                            ));
                        }
                    }
                }
            }
        }
    };
    for b in m
        .cluster_role_bindings
        .iter()
        .filter(|b| bound(&b.obj.subjects))
    {
        for r in m
            .cluster_roles
            .iter()
            .filter(|r| r.name() == b.obj.role_ref.name)
        {
            add("", r.obj.rules.as_deref().unwrap_or(&[]));
        }
    }
    for b in m.role_bindings.iter().filter(|b| bound(&b.obj.subjects)) {
        for r in m
            .roles
            .iter()
            .filter(|r| r.ns() == b.ns() && r.name() == b.obj.role_ref.name)
        {
            add(b.ns(), r.obj.rules.as_deref().unwrap_or(&[]));
        }
    }
    let g = |ns: &str, group: &str, res: &str, verb: &str, name: &str| -> Grant {
        (
            ns.into(),
            group.into(),
            res.into(),
            verb.into(),
            name.into(),
        )
    };
    let mut needed: BTreeSet<Grant> = BTreeSet::new();
    let mut reads = vec![
        ("", "services"),
        ("", "pods"),
        ("", "nodes"),
        ("discovery.k8s.io", "endpointslices"),
        // The root ConfigMap goes to every namespace.
        ("", "namespaces"),
    ];
    reads.extend(
        crossmesh::agent::istio::KINDS
            .iter()
            .map(|(_, grp, _, p)| (*grp, *p)),
    );
    for (grp, res) in &reads {
        for v in ["get", "list", "watch"] {
            needed.insert(g("", grp, res, v, ""));
        }
    }
    let cm = crossmesh::security::root_publisher::CONFIGMAP;
    needed.insert(g("", "", "configmaps", "create", ""));
    needed.insert(g("", "", "configmaps", "get", cm));
    needed.insert(g("", "", "configmaps", "update", cm));
    for v in ["get", "update"] {
        needed.insert(g(
            "",
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            v,
            &a.webhook.webhook_config,
        ));
    }
    let state = crossmesh::agent::state::STATE_SECRET;
    needed.insert(g(d.ns(), "", "secrets", "create", ""));
    needed.insert(g(d.ns(), "", "secrets", "get", state));
    needed.insert(g(d.ns(), "", "secrets", "update", state));
    let extra: Vec<_> = granted.difference(&needed).collect();
    let missing: Vec<_> = needed.difference(&granted).collect();
    assert!(extra.is_empty(), "granted but not needed: {extra:?}");
    assert!(missing.is_empty(), "needed but not granted: {missing:?}");
    assert!(
        !granted
            .iter()
            .any(|(_, _, res, v, _)| res == "secrets" && (v == "list" || v == "watch")),
        "the agent must not list or watch Secrets"
    );
}
