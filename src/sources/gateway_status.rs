//! Gateway API status written back to the objects of a config cluster
//! (`config: - cluster: NAME` with a kubeconfig or in-cluster client), as Istio's
//! status controller does (`pilot/pkg/config/kube/gateway`, `pilot/pkg/status`).
//!
//! Flow per cluster: the config watch hands every delivered document set to
//! [`StatusWriter::observe`] (cheap: the Gateway API objects' generation,
//! resourceVersion, current `status`, and what status building needs are kept),
//! which wakes the writer task. The task reads the computed status
//! (`Registry::config_status().gateway_api`, the same conditions as
//! `/debug/configz`), builds for each object of this cluster the `status` it
//! should carry, and queues a write only where that differs from what the object
//! carries. Writes are JSON merge patches of the `/status` subresource carrying the
//! observed `metadata.resourceVersion` (a stale one gets 409 and is recomputed from
//! the newer object the watch delivers). The task also recomputes when the merged
//! services change (`BackendNotFound`) and every [`RESYNC`].
//!
//! - **What is written**: GatewayClass `conditions`; Gateway `conditions` and
//!   `listeners` (`addresses` is left alone); route `parents[]`, where only
//!   entries whose `controllerName` is a served controller are managed (the
//!   GatewayClass's controller for a Gateway parent of this cluster, else
//!   `crossmesh.io/gateway-controller`) and other controllers' entries are kept,
//!   first, in their order. Only objects whose computed status says crossmesh
//!   manages them get status (a Gateway of another controller's class gets none).
//! - **Conditions**: `observedGeneration` is the object's `metadata.generation`;
//!   `lastTransitionTime` is kept from the object's condition of the same type
//!   when its `status` did not change (Istio's `kstatus.UpdateConditionIfChanged`).
//!   Hub replicas compute the same status and keep each other's timestamps, so
//!   they converge instead of rewriting each other.
//! - **Bounded**: one pending write per object (a newer computation replaces
//!   it), written one at a time off the config path; failures back off per object
//!   from [`RETRY_MIN`] to [`RETRY_MAX`]; a 403 (RBAC without `*/status` patch)
//!   is logged once per cluster, shown on `/debug/configz`, and probed again every
//!   [`FORBIDDEN_RETRY`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::model::gateway_api::convert::{Condition, ObjectStatus};
use crate::model::gateway_api::{is_service_parent, ParentRef, CONTROLLER_NAMES, GROUP};
use crate::registry::Registry;

/// The controller name crossmesh writes when no GatewayClass names one.
pub const CONTROLLER_NAME: &str = "crossmesh.io/gateway-controller";
/// The field manager of crossmesh's status writes.
pub const FIELD_MANAGER: &str = "crossmesh-gateway-status";
/// A change is computed this long after the first notification of a burst.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// How often the merged services are checked for a change (they decide
/// `BackendNotFound`).
pub const SERVICES_POLL: Duration = Duration::from_secs(2);
/// Recompute at least this often (config of other sources, such as a
/// ReferenceGrant in a manifest directory, changes the status too).
pub const RESYNC: Duration = Duration::from_secs(30);
/// First retry delay of a failed write.
pub const RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest retry delay of a failed write.
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// How often a cluster that refused a status write with 403 is tried again.
pub const FORBIDDEN_RETRY: Duration = Duration::from_secs(60);
/// A status write not answered within this long counts as failed (retried).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// One object of the cluster: kind, namespace (`""` for a GatewayClass), name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjKey {
    fn new(kind: &str, namespace: &str, name: &str) -> ObjKey {
        ObjKey {
            kind: kind.to_string(),
            namespace: if kind == "GatewayClass" {
                String::new()
            } else {
                namespace.to_string()
            },
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for ObjKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// What the watch last delivered of one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    pub generation: i64,
    pub resource_version: String,
    /// `status`, `Null` when absent.
    pub status: Value,
    /// Routes: `spec.parentRefs` as written.
    pub parent_refs: Vec<Value>,
    /// Gateways: `spec.gatewayClassName`; GatewayClasses: `spec.controllerName`.
    pub class: Option<String>,
}

/// The Gateway API objects (kinds with a status) of one delivered document set.
pub fn live_objects(docs: &[Value]) -> BTreeMap<ObjKey, Live> {
    let mut out = BTreeMap::new();
    for d in docs {
        if !crate::model::gateway_api::is_gateway_api(d) {
            continue;
        }
        let kind = d.get("kind").and_then(Value::as_str).unwrap_or("");
        if plural(kind).is_none() {
            continue;
        }
        let meta = &d["metadata"];
        let (Some(name), ns) = (
            meta["name"].as_str(),
            meta["namespace"].as_str().unwrap_or(""),
        ) else {
            continue;
        };
        let spec = &d["spec"];
        let class = match kind {
            "Gateway" => spec["gatewayClassName"].as_str().map(str::to_string),
            "GatewayClass" => spec["controllerName"].as_str().map(str::to_string),
            _ => None,
        };
        out.insert(
            ObjKey::new(kind, ns, name),
            Live {
                generation: meta["generation"].as_i64().unwrap_or(0),
                resource_version: meta["resourceVersion"].as_str().unwrap_or("").to_string(),
                status: d.get("status").cloned().unwrap_or(Value::Null),
                parent_refs: spec["parentRefs"].as_array().cloned().unwrap_or_default(),
                class,
            },
        );
    }
    out
}

/// The resource (plural) of a Gateway API kind that has a status subresource.
fn plural(kind: &str) -> Option<&'static str> {
    super::kube::GATEWAY_API_KINDS
        .iter()
        .find(|(_, k, _)| *k == kind)
        .map(|(_, _, p)| *p)
        .filter(|p| *p != "referencegrants")
}

/// The status subresources crossmesh writes (`<plural>/status` of every
/// watched Gateway API kind that has a status), which deploy/ grants `patch` on.
pub fn status_resources() -> Vec<String> {
    super::kube::GATEWAY_API_KINDS
        .iter()
        .filter_map(|(_, k, _)| plural(k))
        .map(|p| format!("{p}/status"))
        .collect()
}

/// The key `convert` gives a route's parent (`ParentStatus::parent_ref`):
/// `[Service ]namespace/name[/sectionName][:port]`.
fn parent_key(p: &ParentRef, route_ns: &str) -> String {
    let ns = p.namespace.as_deref().unwrap_or(route_ns);
    let mut key = format!("{ns}/{}", p.name);
    if let Some(s) = &p.section_name {
        key.push('/');
        key.push_str(s);
    }
    if let Some(port) = p.port {
        key.push_str(&format!(":{port}"));
    }
    if is_service_parent(p) {
        key.insert_str(0, "Service ");
    }
    key
}

/// `metav1.Condition`s for `computed`, keeping `lastTransitionTime` from
/// `current` (the object's conditions) where the status of a type is unchanged.
fn conditions(computed: &[Condition], current: &Value, generation: i64, now: &str) -> Value {
    let current = current.as_array().map(Vec::as_slice).unwrap_or_default();
    Value::Array(
        computed
            .iter()
            .map(|c| {
                let kept = current
                    .iter()
                    .find(|o| o["type"].as_str() == Some(c.kind))
                    .filter(|o| o["status"].as_str() == Some(c.status))
                    .and_then(|o| o["lastTransitionTime"].as_str())
                    .unwrap_or(now);
                json!({
                    "type": c.kind,
                    "status": c.status,
                    "reason": c.reason,
                    "message": c.message,
                    "observedGeneration": generation,
                    "lastTransitionTime": kept,
                })
            })
            .collect(),
    )
}

/// The `status` fields crossmesh manages on this object, as they should be.
/// `lives` (this cluster's objects) names the GatewayClass controller of a
/// Gateway parent. `None` for an object crossmesh does not manage.
pub fn desired(
    st: &ObjectStatus,
    live: &Live,
    lives: &BTreeMap<ObjKey, Live>,
    now: &str,
) -> Option<Map<String, Value>> {
    if st.not_managed.is_some() {
        return None;
    }
    let cur = &live.status;
    let gen = live.generation;
    let mut out = Map::new();
    match st.kind {
        "GatewayClass" => {
            out.insert(
                "conditions".into(),
                conditions(&st.conditions, &cur["conditions"], gen, now),
            );
        }
        "Gateway" => {
            out.insert(
                "conditions".into(),
                conditions(&st.conditions, &cur["conditions"], gen, now),
            );
            let cur_listeners = cur["listeners"].as_array().cloned().unwrap_or_default();
            let listeners: Vec<Value> = st
                .listeners
                .iter()
                .map(|l| {
                    let old = cur_listeners
                        .iter()
                        .find(|o| o["name"].as_str() == Some(l.name.as_str()))
                        .map(|o| o["conditions"].clone())
                        .unwrap_or(Value::Null);
                    json!({
                        "name": l.name,
                        "supportedKinds": l.supported_kinds.iter()
                            .map(|k| json!({"group": GROUP, "kind": k}))
                            .collect::<Vec<_>>(),
                        "attachedRoutes": l.attached_routes,
                        "conditions": conditions(&l.conditions, &old, gen, now),
                    })
                })
                .collect();
            out.insert("listeners".into(), Value::Array(listeners));
        }
        _ => {
            let route_ns = st.namespace.as_str();
            let cur_parents = cur["parents"].as_array().cloned().unwrap_or_default();
            let ours = |p: &Value| {
                p["controllerName"]
                    .as_str()
                    .is_some_and(|c| CONTROLLER_NAMES.contains(&c))
            };
            // Other controllers' entries first, as they are.
            let mut parents: Vec<Value> =
                cur_parents.iter().filter(|p| !ours(p)).cloned().collect();
            let refs: Vec<(String, &Value, Option<ParentRef>)> = live
                .parent_refs
                .iter()
                .map(|raw| {
                    let parsed = serde_json::from_value::<ParentRef>(raw.clone()).ok();
                    let key = parsed
                        .as_ref()
                        .map(|p| parent_key(p, route_ns))
                        .unwrap_or_default();
                    (key, raw, parsed)
                })
                .collect();
            for ps in &st.parents {
                let Some((_, raw, parsed)) = refs.iter().find(|(k, _, _)| *k == ps.parent_ref)
                else {
                    continue;
                };
                let controller = parsed
                    .as_ref()
                    .filter(|p| !is_service_parent(p))
                    .and_then(|p| {
                        let ns = p.namespace.as_deref().unwrap_or(route_ns);
                        let gw = lives.get(&ObjKey::new("Gateway", ns, &p.name))?;
                        let class =
                            lives.get(&ObjKey::new("GatewayClass", "", gw.class.as_deref()?))?;
                        class
                            .class
                            .as_deref()
                            .filter(|c| CONTROLLER_NAMES.contains(c))
                    })
                    .unwrap_or(CONTROLLER_NAME);
                let old = cur_parents
                    .iter()
                    .find(|o| ours(o) && o["parentRef"] == **raw)
                    .map(|o| o["conditions"].clone())
                    .unwrap_or(Value::Null);
                parents.push(json!({
                    "parentRef": raw,
                    "controllerName": controller,
                    "conditions": conditions(&ps.conditions, &old, gen, now),
                }));
            }
            out.insert("parents".into(), Value::Array(parents));
        }
    }
    Some(out)
}

/// Whether `current` (the object's `status`) already carries every field of
/// `want` as it is.
pub fn carries(current: &Value, want: &Map<String, Value>) -> bool {
    want.iter().all(|(k, v)| {
        let cur = current.get(k).unwrap_or(&Value::Null);
        // An empty list and an absent one are the same status.
        cur == v || cur.is_null() && v.as_array().is_some_and(Vec::is_empty)
    })
}

/// Now as Kubernetes writes `metav1.Time` (RFC 3339, seconds, UTC).
fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// One write that failed, as `/debug/configz` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteError {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub error: String,
    pub attempts: u32,
}

/// One cluster's status writes, for `/debug/configz` (`gatewayApiStatusWrites`).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterReport {
    pub cluster: String,
    /// Status writes that succeeded.
    pub writes: u64,
    /// Objects whose status differs from what crossmesh computed and awaits a write.
    pub pending: usize,
    /// Set while the cluster refuses status writes with 403 (its RBAC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forbidden: Option<String>,
    /// Writes failing now, with the reason.
    pub errors: Vec<WriteError>,
}

/// Every cluster's writer reports; shared with the debug endpoint.
#[derive(Debug, Clone, Default)]
pub struct StatusWrites {
    reports: Arc<Mutex<BTreeMap<String, ClusterReport>>>,
}

impl StatusWrites {
    pub fn new() -> StatusWrites {
        StatusWrites::default()
    }

    /// Start the writer of `cluster`'s objects. Must run inside the runtime.
    pub fn spawn(&self, registry: Arc<Registry>, cluster: &str, client: Client) -> StatusWriter {
        let shared = Arc::new(Shared {
            live: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
        });
        let task = Task {
            registry,
            cluster: cluster.to_string(),
            origin: format!("cluster {cluster}"),
            client,
            shared: shared.clone(),
            reports: self.reports.clone(),
            pending: BTreeMap::new(),
            writes: 0,
            forbidden: None,
            forbidden_until: None,
        };
        let span = info_span!("gateway-status", cluster = %cluster);
        StatusWriter {
            shared,
            task: tokio::spawn(task.run().instrument(span)),
            reports: self.reports.clone(),
            cluster: cluster.to_string(),
        }
    }

    /// The `/debug/configz` entry: one report per config cluster.
    pub fn debug(&self) -> Value {
        let reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::to_value(reports.values().collect::<Vec<_>>()).unwrap_or(Value::Null)
    }
}

struct Shared {
    /// This cluster's objects as last delivered; replaced whole by `observe`.
    live: Mutex<BTreeMap<ObjKey, Live>>,
    wake: Notify,
}

/// The writer of one cluster; stops when dropped.
pub struct StatusWriter {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    reports: Arc<Mutex<BTreeMap<String, ClusterReport>>>,
    cluster: String,
}

impl StatusWriter {
    /// The config watch delivered `docs` (the cluster's full config set).
    /// Never blocks on IO: records the objects and wakes the writer.
    pub fn observe(&self, docs: &[Value]) {
        let live = live_objects(docs);
        *self.shared.live.lock().unwrap_or_else(|e| e.into_inner()) = live;
        self.shared.wake.notify_one();
    }
}

impl Drop for StatusWriter {
    fn drop(&mut self) {
        self.task.abort();
        self.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.cluster);
    }
}

/// One object's write, coalesced: a newer computation replaces `status`.
struct Pending {
    status: Map<String, Value>,
    resource_version: String,
    attempts: u32,
    not_before: Instant,
    error: Option<String>,
}

struct Task {
    registry: Arc<Registry>,
    cluster: String,
    origin: String,
    client: Client,
    shared: Arc<Shared>,
    reports: Arc<Mutex<BTreeMap<String, ClusterReport>>>,
    pending: BTreeMap<ObjKey, Pending>,
    writes: u64,
    /// The 403 message while the cluster refuses status writes.
    forbidden: Option<String>,
    /// No write before this while `forbidden` (one probe per FORBIDDEN_RETRY).
    forbidden_until: Option<Instant>,
}

/// Retry delay after `attempts` failed writes.
pub fn retry_delay(attempts: u32) -> Duration {
    RETRY_MIN
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
        .min(RETRY_MAX)
}

enum Outcome {
    Written(Box<DynamicObject>),
    Gone,
    Conflict,
    Forbidden(String),
    Failed(String),
}

impl Task {
    async fn run(mut self) {
        let mut services = self.registry.services();
        let mut last_compute = Instant::now();
        let mut dirty = false;
        loop {
            let poll = Instant::now() + SERVICES_POLL;
            let wake_at = self
                .pending
                .values()
                .map(|p| p.not_before)
                .min()
                .map_or(poll, |t| t.min(poll));
            tokio::select! {
                _ = self.shared.wake.notified() => {
                    dirty = true;
                    // Let a burst of deliveries settle.
                    tokio::time::sleep(DEBOUNCE).await;
                }
                _ = tokio::time::sleep_until(wake_at.into()) => {}
            }
            let now_services = self.registry.services();
            if !Arc::ptr_eq(&now_services, &services) {
                services = now_services;
                dirty = true;
            }
            if last_compute.elapsed() >= RESYNC {
                dirty = true;
            }
            if dirty {
                dirty = false;
                last_compute = Instant::now();
                self.compute();
            }
            self.write_due().await;
            self.publish();
        }
    }

    /// Recompute what each object of this cluster should carry; queue the writes.
    fn compute(&mut self) {
        let lives = self
            .shared
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if lives.is_empty() {
            self.pending.clear();
            return;
        }
        let computed = self.registry.config_status().gateway_api;
        let now = now_rfc3339();
        let mut want: BTreeMap<ObjKey, (Map<String, Value>, String)> = BTreeMap::new();
        for st in computed.iter().filter(|s| s.origin == self.origin) {
            let key = ObjKey::new(st.kind, &st.namespace, &st.name);
            let Some(live) = lives.get(&key) else {
                continue;
            };
            let Some(status) = desired(st, live, &lives, &now) else {
                continue;
            };
            if !carries(&live.status, &status) {
                want.insert(key, (status, live.resource_version.clone()));
            }
        }
        self.pending.retain(|k, _| want.contains_key(k));
        for (key, (status, rv)) in want {
            match self.pending.get_mut(&key) {
                Some(p) => {
                    p.status = status;
                    p.resource_version = rv;
                }
                None => {
                    self.pending.insert(
                        key,
                        Pending {
                            status,
                            resource_version: rv,
                            attempts: 0,
                            not_before: self.forbidden_until.unwrap_or_else(Instant::now),
                            error: None,
                        },
                    );
                }
            }
        }
    }

    /// Write every pending status that is due, one at a time.
    async fn write_due(&mut self) {
        let due: Vec<ObjKey> = self
            .pending
            .iter()
            .filter(|(_, p)| p.not_before <= Instant::now())
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let Some(p) = self.pending.get(&key) else {
                continue;
            };
            let body = json!({
                "metadata": {"resourceVersion": p.resource_version},
                "status": p.status,
            });
            match self.patch(&key, &body).await {
                Outcome::Written(obj) => {
                    self.writes += 1;
                    self.pending.remove(&key);
                    debug!(object = %key, "status written");
                    self.forbidden_until = None;
                    if self.forbidden.take().is_some() {
                        info!("status writes are allowed again");
                    }
                    // Until the watch delivers it, the answer is the object's
                    // state: no second write for the same status.
                    let mut live = self.shared.live.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(l) = live.get_mut(&key) {
                        l.resource_version =
                            obj.metadata.resource_version.clone().unwrap_or_default();
                        l.status = obj.data.get("status").cloned().unwrap_or(Value::Null);
                    }
                }
                Outcome::Gone => {
                    self.pending.remove(&key);
                }
                Outcome::Conflict => {
                    // A newer object exists: recompute against it once the watch
                    // delivers it (or at the next poll).
                    debug!(object = %key, "status write conflicted; recomputing");
                    self.pending.remove(&key);
                    self.shared.wake.notify_one();
                }
                Outcome::Forbidden(msg) => {
                    if self.forbidden.is_none() {
                        warn!(object = %key, error = %msg,
                            "the cluster refuses Gateway API status writes (RBAC: grant patch on \
                             gateway.networking.k8s.io */status); retrying every {}s",
                            FORBIDDEN_RETRY.as_secs());
                    }
                    self.forbidden = Some(msg);
                    // Probe with one write per FORBIDDEN_RETRY, whatever the object.
                    let at = Instant::now() + FORBIDDEN_RETRY;
                    self.forbidden_until = Some(at);
                    for p in self.pending.values_mut() {
                        p.not_before = p.not_before.max(at);
                    }
                    break;
                }
                Outcome::Failed(msg) => {
                    if let Some(p) = self.pending.get_mut(&key) {
                        p.attempts += 1;
                        p.not_before = Instant::now() + retry_delay(p.attempts);
                        if p.error.as_deref() != Some(msg.as_str()) {
                            warn!(object = %key, error = %msg, attempts = p.attempts,
                                "Gateway API status write failed; retrying");
                        }
                        p.error = Some(msg);
                    }
                }
            }
        }
    }

    async fn patch(&self, key: &ObjKey, body: &Value) -> Outcome {
        let Some(plural) = plural(&key.kind) else {
            return Outcome::Gone;
        };
        let gvk = GroupVersionKind::gvk(
            GROUP,
            super::kube::config_kind_version(GROUP, &key.kind),
            &key.kind,
        );
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> = if key.namespace.is_empty() {
            Api::all_with(self.client.clone(), &ar)
        } else {
            Api::namespaced_with(self.client.clone(), &key.namespace, &ar)
        };
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        let patch = Patch::Merge(body);
        let write = api.patch_status(&key.name, &params, &patch);
        let Ok(answer) = tokio::time::timeout(WRITE_TIMEOUT, write).await else {
            return Outcome::Failed(format!("no answer within {}s", WRITE_TIMEOUT.as_secs()));
        };
        match answer {
            Ok(obj) => Outcome::Written(Box::new(obj)),
            Err(kube::Error::Api(st)) if st.code == 404 => Outcome::Gone,
            Err(kube::Error::Api(st)) if st.code == 409 => Outcome::Conflict,
            Err(kube::Error::Api(st)) if st.code == 403 => Outcome::Forbidden(st.message.clone()),
            Err(e) => Outcome::Failed(super::kube::explain(&e)),
        }
    }

    fn publish(&self) {
        let report = ClusterReport {
            cluster: self.cluster.clone(),
            writes: self.writes,
            pending: self.pending.len(),
            forbidden: self.forbidden.clone(),
            errors: self
                .pending
                .iter()
                .filter_map(|(k, p)| {
                    Some(WriteError {
                        kind: k.kind.clone(),
                        namespace: k.namespace.clone(),
                        name: k.name.clone(),
                        error: p.error.clone()?,
                        attempts: p.attempts,
                    })
                })
                .collect(),
        };
        self.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.cluster.clone(), report);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gateway_api::{convert::convert, parse_object};

    const ORIGIN: &str = "cluster c1";

    fn docs() -> Vec<Value> {
        vec![
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                   "metadata": {"name": "cm", "generation": 1, "resourceVersion": "1"},
                   "spec": {"controllerName": "istio.io/gateway-controller"}}),
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                   "metadata": {"name": "other", "generation": 1, "resourceVersion": "2"},
                   "spec": {"controllerName": "example.com/other"}}),
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                   "metadata": {"name": "gw", "namespace": "infra", "generation": 3, "resourceVersion": "3"},
                   "spec": {"gatewayClassName": "cm", "listeners": [
                       {"name": "http", "port": 8080, "protocol": "HTTP",
                        "allowedRoutes": {"namespaces": {"from": "All"}}}]}}),
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                   "metadata": {"name": "theirs", "namespace": "infra", "generation": 1, "resourceVersion": "4"},
                   "spec": {"gatewayClassName": "other", "listeners": [
                       {"name": "http", "port": 8080, "protocol": "HTTP"}]}}),
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "shop", "generation": 2, "resourceVersion": "5"},
            "spec": {
                "parentRefs": [
                    {"name": "gw", "namespace": "infra", "sectionName": "http", "port": 8080},
                    {"name": "theirs", "namespace": "infra"},
                    {"name": "missing", "namespace": "infra"},
                    {"group": "", "kind": "Service", "name": "web", "port": 80}
                ],
                "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]
            },
            "status": {"parents": [
                {"parentRef": {"name": "theirs", "namespace": "infra"},
                 "controllerName": "example.com/other",
                 "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                 "message": "", "observedGeneration": 1,
                                 "lastTransitionTime": "2020-01-01T00:00:00Z"}]},
                {"parentRef": {"name": "gw", "namespace": "infra", "sectionName": "http", "port": 8080},
                 "controllerName": "istio.io/gateway-controller",
                 "conditions": [
                     {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                      "observedGeneration": 1, "lastTransitionTime": "2021-01-01T00:00:00Z"},
                     {"type": "ResolvedRefs", "status": "False", "reason": "RefNotPermitted", "message": "no grant",
                      "observedGeneration": 1, "lastTransitionTime": "2021-01-01T00:00:00Z"}]}
            ]}}),
        ]
    }

    fn statuses(docs: &[Value]) -> Vec<ObjectStatus> {
        let objs: Vec<_> = docs
            .iter()
            .map(|d| parse_object(ORIGIN, d).expect("valid"))
            .collect();
        convert(&objs, "cluster.local", None).status
    }

    fn find<'a>(sts: &'a [ObjectStatus], kind: &str, name: &str) -> &'a ObjectStatus {
        sts.iter()
            .find(|s| s.kind == kind && s.name == name)
            .expect("status")
    }

    /// Every parent status `convert` computes maps back to the spec parentRef it
    /// came from (the keys are built the same way).
    #[test]
    fn every_computed_parent_finds_its_parent_ref() {
        let docs = docs();
        let sts = statuses(&docs);
        let st = find(&sts, "HTTPRoute", "r");
        assert_eq!(st.parents.len(), 3, "{:?}", st.parents);
        let lives = live_objects(&docs);
        let live = &lives[&ObjKey::new("HTTPRoute", "shop", "r")];
        let keys: Vec<String> = live
            .parent_refs
            .iter()
            .map(|r| parent_key(&serde_json::from_value(r.clone()).unwrap(), "shop"))
            .collect();
        for p in &st.parents {
            assert!(
                keys.contains(&p.parent_ref),
                "{} not in {keys:?}",
                p.parent_ref
            );
        }
    }

    #[test]
    fn route_status_keeps_others_entries_and_unchanged_transition_times() {
        let docs = docs();
        let sts = statuses(&docs);
        let lives = live_objects(&docs);
        let live = &lives[&ObjKey::new("HTTPRoute", "shop", "r")];
        let want = desired(
            find(&sts, "HTTPRoute", "r"),
            live,
            &lives,
            "2030-01-01T00:00:00Z",
        )
        .expect("managed");
        let parents = want["parents"].as_array().unwrap();
        // Theirs first, as it was; then ours for gw, missing and the Service.
        assert_eq!(parents[0], live.status["parents"][0]);
        assert_eq!(parents.len(), 4, "{parents:?}");
        let gw = &parents[1];
        assert_eq!(gw["parentRef"], live.parent_refs[0]);
        // The Gateway's class names Istio's controller.
        assert_eq!(gw["controllerName"], "istio.io/gateway-controller");
        let accepted = cond(gw, "Accepted");
        assert_eq!(accepted["status"], "True");
        assert_eq!(accepted["observedGeneration"], 2);
        assert_eq!(accepted["lastTransitionTime"], "2021-01-01T00:00:00Z");
        // ResolvedRefs turned True: a new time.
        let resolved = cond(gw, "ResolvedRefs");
        assert_eq!(resolved["status"], "True", "{gw}");
        assert_eq!(resolved["lastTransitionTime"], "2030-01-01T00:00:00Z");
        let missing = &parents[2];
        assert_eq!(missing["controllerName"], CONTROLLER_NAME);
        assert_eq!(cond(missing, "Accepted")["reason"], "NoMatchingParent");
        assert!(!carries(&live.status, &want));
        // Once written, the same computation is carried: no second write.
        let mut written = live.clone();
        written.status = json!({ "parents": want["parents"].clone() });
        let again = desired(
            find(&sts, "HTTPRoute", "r"),
            &written,
            &lives,
            "2031-01-01T00:00:00Z",
        )
        .expect("managed");
        assert!(carries(&written.status, &again));
    }

    fn cond<'a>(entry: &'a Value, ty: &str) -> &'a Value {
        entry["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == ty))
            .unwrap_or_else(|| panic!("no {ty} in {entry}"))
    }

    #[test]
    fn gateways_of_other_classes_get_no_status() {
        let docs = docs();
        let sts = statuses(&docs);
        let lives = live_objects(&docs);
        let theirs = &lives[&ObjKey::new("Gateway", "infra", "theirs")];
        assert!(desired(find(&sts, "Gateway", "theirs"), theirs, &lives, "t").is_none());
        assert!(desired(
            find(&sts, "GatewayClass", "other"),
            &lives[&ObjKey::new("GatewayClass", "", "other")],
            &lives,
            "t"
        )
        .is_none());
        let gw = &lives[&ObjKey::new("Gateway", "infra", "gw")];
        let want = desired(find(&sts, "Gateway", "gw"), gw, &lives, "t").expect("ours");
        assert_eq!(want["conditions"][0]["observedGeneration"], 3);
        assert_eq!(want["listeners"][0]["name"], "http");
        assert_eq!(
            want["listeners"][0]["supportedKinds"][0],
            json!({"group": GROUP, "kind": "HTTPRoute"})
        );
    }

    #[test]
    fn retry_delay_doubles_to_the_cap() {
        assert_eq!(retry_delay(1), RETRY_MIN);
        assert_eq!(retry_delay(2), RETRY_MIN * 2);
        assert_eq!(retry_delay(40), RETRY_MAX);
    }

    #[test]
    fn status_resources_are_the_watched_kinds_with_a_status() {
        assert_eq!(
            status_resources(),
            [
                "gatewayclasses/status",
                "gateways/status",
                "httproutes/status",
                "grpcroutes/status",
                "tcproutes/status",
                "tlsroutes/status"
            ]
        );
    }
}
