//! The Istio config store: validated Gateway, VirtualService, DestinationRule and
//! Sidecar objects from every config source (manifest directories, member
//! clusters), and the immutable `ConfigSnapshot` pushes translate from.
//!
//! Bad input rejects one object, never the source: each rejected object is kept
//! with a reason naming its origin, kind, namespace/name and field, shown on
//! `/debug/configz`, and counted in `pilot_total_rejected_configs{kind}`.
//! Everything else stays in force.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;

use crate::metrics::{metrics, KindLabel};
use crate::model::gateway_api::namespaces::{self, NamespaceLabels};
use crate::model::gateway_api::{self, convert::ObjectStatus, GwKind, GwObject};
use crate::model::istio::authorization_policy;
use crate::model::istio::request_authentication::{FetchedJwks, JwksSource};
use crate::model::istio::validate::validate;
use crate::model::istio::{
    host_intersection, labels_match, parse_object, resolve_gateway_name, ConfigSnapshot,
    Destination, IstioKind, IstioObject, Rejection, MESH_GATEWAY,
};
use crate::model::service::ServiceMap;

/// One YAML/JSON document as a source read it.
#[derive(Debug, Clone, PartialEq)]
pub struct RawDoc {
    /// The file path, or the member cluster name, the document came from.
    pub origin: String,
    pub value: serde_json::Value,
}

/// Parse and validate documents offline (`crossmesh validate`). Returns every
/// problem that would reject an object, including a second definition of the same
/// kind/namespace/name. Empty documents are skipped. Documents outside
/// `networking.istio.io` are reported as unsupported; callers that also accept
/// Kubernetes objects route those elsewhere first.
pub fn validate_docs(docs: &[RawDoc]) -> Vec<Rejection> {
    let mut problems = Vec::new();
    let mut seen: BTreeMap<(IstioKind, String, String), String> = BTreeMap::new();
    let mut gw_seen = BTreeMap::new();
    for doc in docs.iter().filter(|d| !d.value.is_null()) {
        if namespaces::is_namespace(&doc.value) {
            if let Err(e) = namespace_doc(doc) {
                problems.push(e);
            }
            continue;
        }
        if gateway_api::is_gateway_api(&doc.value) {
            match gateway_api::parse_object(&doc.origin, &doc.value) {
                Ok(obj) => problems.extend(gw_duplicate(&mut gw_seen, &obj)),
                Err(mut errs) => problems.append(&mut errs),
            }
            continue;
        }
        match parse_object(&doc.origin, &doc.value) {
            Ok(obj) => {
                if let Some(p) = duplicate(&mut seen, &obj) {
                    problems.push(p);
                }
            }
            Err(mut errs) => {
                authorization_policy::rejected(&doc.origin, &doc.value, &mut errs);
                problems.append(&mut errs)
            }
        }
    }
    problems
}

/// Record `obj`'s key; a rejection if another object already claimed it.
fn duplicate(
    seen: &mut BTreeMap<(IstioKind, String, String), String>,
    obj: &IstioObject,
) -> Option<Rejection> {
    let m = obj.meta();
    let key = (obj.kind(), m.namespace.clone(), m.name.clone());
    match seen.get(&key) {
        Some(first) => Some(Rejection {
            origin: m.origin.clone(),
            kind: obj.kind().to_string(),
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            field: "metadata.name".into(),
            reason: format!(
                "duplicate: {} {} is already defined in {first}",
                obj.kind(),
                m.key()
            ),
        }),
        None => {
            seen.insert(key, m.origin.clone());
            None
        }
    }
}

/// The Gateway API status conditions of documents checked offline
/// (`crossmesh validate`): one line per condition that is not as it should
/// be (a route not accepted, a reference not resolved, a conflicted listener).
/// Services are not known offline, so `BackendNotFound` is not reported.
pub fn gateway_api_status_problems(docs: &[RawDoc], domain_suffix: &str) -> Vec<String> {
    let objects: Vec<GwObject> = docs
        .iter()
        .filter(|d| gateway_api::is_gateway_api(&d.value))
        .filter_map(|d| gateway_api::parse_object(&d.origin, &d.value).ok())
        .collect();
    let mut ns = NamespaceLabels::new();
    for d in docs.iter().filter(|d| namespaces::is_namespace(&d.value)) {
        if let Ok((name, labels)) = namespace_doc(d) {
            ns.entry(name).or_insert(labels);
        }
    }
    gateway_api::convert::convert_with_namespaces(&objects, &ns, domain_suffix, None)
        .status
        .iter()
        .flat_map(ObjectStatus::problems)
        .collect()
}

/// Name and labels of a `v1` Namespace document, or a rejection naming the field.
fn namespace_doc(doc: &RawDoc) -> Result<(String, BTreeMap<String, String>), Rejection> {
    namespaces::namespace_labels(&doc.value).map_err(|(field, reason)| Rejection {
        origin: doc.origin.clone(),
        kind: "Namespace".into(),
        namespace: String::new(),
        name: doc
            .value
            .pointer("/metadata/name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_string(),
        field,
        reason,
    })
}

/// `gw`'s key recorded; a rejection if another Gateway API object claimed it.
fn gw_duplicate(
    seen: &mut BTreeMap<(GwKind, String, String), String>,
    obj: &GwObject,
) -> Option<Rejection> {
    let m = obj.meta();
    let key = (obj.kind(), m.namespace.clone(), m.name.clone());
    match seen.get(&key) {
        Some(first) => Some(Rejection {
            origin: m.origin.clone(),
            kind: obj.kind().as_str().to_string(),
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            field: "metadata.name".into(),
            reason: format!(
                "duplicate: {} {} is already defined in {first}",
                obj.kind().as_str(),
                m.key()
            ),
        }),
        None => {
            seen.insert(key, m.origin.clone());
            None
        }
    }
}

#[derive(Debug, Default)]
struct SourceState {
    accepted: Vec<IstioObject>,
    /// Gateway API objects, converted into Istio objects at each rebuild.
    gateway_api: Vec<GwObject>,
    /// Labels of the `v1` Namespaces this source holds (`from: Selector`).
    namespaces: NamespaceLabels,
    rejected: Vec<Rejection>,
}

/// Validated Istio config from every source. Owned by the registry behind its own
/// lock; all methods are short and synchronous.
#[derive(Debug)]
pub struct IstioConfigStore {
    domain_suffix: String,
    /// By source name, so rebuilding is deterministic (the first source by name
    /// wins a duplicate).
    sources: BTreeMap<String, SourceState>,
    in_force: Vec<IstioObject>,
    /// Gateway API objects in force (their conversion is part of `in_force`).
    gateway_api: Vec<GwObject>,
    /// Namespace labels of every source (the first source by name wins a name).
    namespaces: NamespaceLabels,
    duplicates: Vec<Rejection>,
    snapshot: Arc<ConfigSnapshot>,
    /// Keys fetched for RequestAuthentication `jwksUri`s (`security::jwks`).
    jwks: Arc<FetchedJwks>,
    /// Why the last fetch of a JWKS source failed (none once it succeeds).
    jwks_errors: BTreeMap<JwksSource, String>,
}

impl Default for IstioConfigStore {
    fn default() -> Self {
        IstioConfigStore::new("cluster.local")
    }
}

impl IstioConfigStore {
    /// `domain_suffix` resolves short host names (`order` in namespace `base` is
    /// `order.base.svc.<domain_suffix>`).
    pub fn new(domain_suffix: &str) -> IstioConfigStore {
        IstioConfigStore {
            domain_suffix: domain_suffix.to_string(),
            sources: BTreeMap::new(),
            in_force: Vec::new(),
            gateway_api: Vec::new(),
            namespaces: NamespaceLabels::new(),
            duplicates: Vec::new(),
            snapshot: Arc::new(ConfigSnapshot::new(domain_suffix, [])),
            jwks: Arc::default(),
            jwks_errors: BTreeMap::new(),
        }
    }

    /// Replace everything `source` contributed with `docs`. Returns true if the
    /// config in force changed (a push is needed). Invalid documents are rejected
    /// one by one; an empty `docs` removes the source's objects.
    pub fn replace_source(&mut self, source: &str, docs: Vec<RawDoc>) -> bool {
        let mut state = SourceState::default();
        for doc in docs.iter().filter(|d| !d.value.is_null()) {
            if namespaces::is_namespace(&doc.value) {
                match namespace_doc(doc) {
                    Ok((name, labels)) => {
                        state.namespaces.insert(name, labels);
                    }
                    Err(e) => state.rejected.push(e),
                }
                continue;
            }
            if gateway_api::is_gateway_api(&doc.value) {
                match gateway_api::parse_object(&doc.origin, &doc.value) {
                    Ok(obj) => state.gateway_api.push(obj),
                    Err(mut errs) => {
                        for e in &errs {
                            tracing::warn!(origin = %e.origin, kind = %e.kind, namespace = %e.namespace,
                                name = %e.name, field = %e.field, reason = %e.reason, "rejected Gateway API config");
                        }
                        state.rejected.append(&mut errs);
                    }
                }
                continue;
            }
            match parse_object(&doc.origin, &doc.value) {
                Ok(obj) => state.accepted.push(obj),
                Err(mut errs) => {
                    // A rejected AuthorizationPolicy leaves a fail-closed stand-in
                    // in force, never an opening.
                    if let Some(c) =
                        authorization_policy::rejected(&doc.origin, &doc.value, &mut errs)
                    {
                        state.accepted.push(IstioObject::AuthorizationPolicy(c));
                    }
                    for e in &errs {
                        tracing::warn!(origin = %e.origin, kind = %e.kind, namespace = %e.namespace,
                            name = %e.name, field = %e.field, reason = %e.reason, "rejected Istio config");
                    }
                    state.rejected.append(&mut errs);
                }
            }
        }
        if docs.is_empty() {
            self.sources.remove(source);
        } else {
            self.sources.insert(source.to_string(), state);
        }
        self.rebuild()
    }

    /// Drop a source entirely. Returns true if the config in force changed.
    pub fn remove_source(&mut self, source: &str) -> bool {
        self.sources.remove(source).is_some() && self.rebuild()
    }

    fn rebuild(&mut self) -> bool {
        let mut seen = BTreeMap::new();
        let mut in_force = Vec::new();
        let mut duplicates = Vec::new();
        let mut gw_seen = BTreeMap::new();
        let mut gw_in_force = Vec::new();
        let mut ns_labels = NamespaceLabels::new();
        for state in self.sources.values() {
            for (name, labels) in &state.namespaces {
                ns_labels
                    .entry(name.clone())
                    .or_insert_with(|| labels.clone());
            }
            for obj in &state.accepted {
                match duplicate(&mut seen, obj) {
                    Some(d) => duplicates.push(d),
                    None => in_force.push(obj.clone()),
                }
            }
            for obj in &state.gateway_api {
                match gw_duplicate(&mut gw_seen, obj) {
                    Some(d) => duplicates.push(d),
                    None => gw_in_force.push(obj.clone()),
                }
            }
        }
        // Gateway API objects serve as the Istio objects they convert to.
        for obj in gateway_api::convert::convert_with_namespaces(
            &gw_in_force,
            &ns_labels,
            &self.domain_suffix,
            None,
        )
        .objects
        {
            match duplicate(&mut seen, &obj) {
                Some(d) => duplicates.push(d),
                None => in_force.push(obj),
            }
        }
        self.gateway_api = gw_in_force;
        self.namespaces = ns_labels;
        in_force.sort_by(|a, b| {
            (a.kind(), &a.meta().namespace, &a.meta().name).cmp(&(
                b.kind(),
                &b.meta().namespace,
                &b.meta().name,
            ))
        });
        self.duplicates = duplicates;
        self.update_metrics();
        if in_force == self.in_force {
            return false;
        }
        let mut snapshot = ConfigSnapshot::new(&self.domain_suffix, in_force.iter().cloned());
        snapshot.jwks = self.jwks.clone();
        self.snapshot = Arc::new(snapshot);
        self.in_force = in_force;
        true
    }

    /// Replace the reasons JWKS sources failed to fetch (shown as warnings on
    /// the RequestAuthentications that use them; no push).
    pub fn set_jwks_errors(&mut self, errors: BTreeMap<JwksSource, String>) {
        self.jwks_errors = errors;
    }

    /// Replace the fetched JWKS keys. Returns true (a push is needed) when they
    /// differ from those in force.
    pub fn set_jwks(&mut self, jwks: FetchedJwks) -> bool {
        if *self.jwks == jwks {
            return false;
        }
        self.jwks = Arc::new(jwks);
        let mut snapshot = (*self.snapshot).clone();
        snapshot.jwks = self.jwks.clone();
        self.snapshot = Arc::new(snapshot);
        true
    }

    fn rejections(&self) -> impl Iterator<Item = &Rejection> {
        self.sources
            .values()
            .flat_map(|s| s.rejected.iter())
            .chain(self.duplicates.iter())
    }

    /// `pilot_total_rejected_configs{kind}`: objects currently rejected, per kind.
    fn update_metrics(&self) {
        let mut counts: BTreeMap<String, i64> = [
            "Gateway",
            "VirtualService",
            "DestinationRule",
            "Sidecar",
            "PeerAuthentication",
            "RequestAuthentication",
            "AuthorizationPolicy",
            "Telemetry",
        ]
        .iter()
        .map(|k| (k.to_string(), 0))
        .collect();
        let mut objects = BTreeSet::new();
        for r in self.rejections() {
            // One object may have several problems; count it once.
            if objects.insert((&r.origin, &r.kind, &r.namespace, &r.name)) {
                *counts.entry(r.kind.clone()).or_default() += 1;
            }
        }
        for (kind, n) in counts {
            metrics()
                .rejected_configs
                .get_or_create(&KindLabel { kind })
                .set(n);
        }
    }

    /// The config in force, for the next push.
    pub fn snapshot(&self) -> Arc<ConfigSnapshot> {
        self.snapshot.clone()
    }

    /// `/debug/configz`: objects in force, rejected objects with reasons, and
    /// warnings that need the services to compute.
    pub fn status(&self, services: &ServiceMap) -> ConfigStatus {
        let mut warnings = Vec::new();
        for obj in &self.in_force {
            for issue in validate(obj).into_iter().filter(|i| i.warning) {
                warnings.push(Warning::about(obj, issue.field, issue.reason));
            }
        }
        cross_object_warnings(&self.snapshot, &self.in_force, services, &mut warnings);
        identity_warnings(&self.in_force, &mut warnings);
        self.jwks_warnings(&mut warnings);
        ConfigStatus {
            in_force: self
                .in_force
                .iter()
                .map(|o| InForce {
                    kind: o.kind(),
                    namespace: o.meta().namespace.clone(),
                    name: o.meta().name.clone(),
                    origin: o.meta().origin.clone(),
                    api_version: o.meta().api_version.clone(),
                    creation_timestamp: o.meta().creation_timestamp.clone(),
                    object: o.clone(),
                })
                .collect(),
            rejected: self.rejections().cloned().collect(),
            warnings,
            gateway_api: gateway_api::convert::convert_with_namespaces(
                &self.gateway_api,
                &self.namespaces,
                &self.domain_suffix,
                Some(services),
            )
            .status,
        }
    }
}

impl IstioConfigStore {
    /// A RequestAuthentication rule whose keys could not be fetched: with the
    /// last good keys still in force, or with none (every token refused).
    fn jwks_warnings(&self, out: &mut Vec<Warning>) {
        for obj in &self.in_force {
            let IstioObject::RequestAuthentication(c) = obj else {
                continue;
            };
            for (i, rule) in c.spec.jwt_rules.iter().enumerate() {
                let Some(src) = rule.remote_source() else {
                    continue;
                };
                let Some(err) = self.jwks_errors.get(&src) else {
                    continue;
                };
                let field = match src {
                    JwksSource::Uri(_) => format!("spec.jwtRules[{i}].jwksUri"),
                    JwksSource::Discovery(_) => format!("spec.jwtRules[{i}].issuer"),
                };
                let effect = if self.jwks.contains_key(&src) {
                    "the last keys fetched stay in force"
                } else {
                    "no keys fetched yet: every token of this issuer is refused"
                };
                out.push(Warning::about(
                    obj,
                    field,
                    format!("fetching the keys from {src} failed ({err}); {effect}"),
                ));
            }
        }
    }
}

/// The `/debug/configz` document.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigStatus {
    pub in_force: Vec<InForce>,
    pub rejected: Vec<Rejection>,
    pub warnings: Vec<Warning>,
    /// Status of the Gateway API objects in force (the conditions Istio writes
    /// to their `status`), computed against the services known now.
    pub gateway_api: Vec<ObjectStatus>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InForce {
    pub kind: IstioKind,
    pub namespace: String,
    pub name: String,
    pub origin: String,
    pub api_version: String,
    pub creation_timestamp: Option<String>,
    pub object: IstioObject,
}

/// Something about an object in force that an operator should know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub origin: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub field: String,
    pub message: String,
}

impl Warning {
    fn about(obj: &IstioObject, field: impl Into<String>, message: impl Into<String>) -> Warning {
        let m = obj.meta();
        Warning {
            origin: m.origin.clone(),
            kind: obj.kind().to_string(),
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// PeerAuthentication and DestinationRule `ISTIO_MUTUAL` take effect only on
/// proxies holding a workload certificate (connected on the authenticated xDS
/// port); a proxy on the plaintext port keeps plaintext inbound chains and
/// clusters. Said once per object, so nobody expects mTLS from such a proxy.
fn identity_warnings(objects: &[IstioObject], out: &mut Vec<Warning>) {
    const WHY: &str = "applies only to proxies with an identity (connected on the authenticated xDS port); proxies connected on the plaintext port have no certificate and stay plaintext";
    for obj in objects {
        match obj {
            IstioObject::PeerAuthentication(_) => out.push(Warning::about(obj, "spec", WHY)),
            IstioObject::DestinationRule(dr) => {
                let tp = dr.spec.traffic_policy.iter().chain(
                    dr.spec
                        .subsets
                        .iter()
                        .filter_map(|s| s.traffic_policy.as_ref()),
                );
                let istio_mutual = tp.into_iter().any(|tp| {
                    tp.tls
                        .iter()
                        .chain(tp.port_level_settings.iter().filter_map(|p| p.tls.as_ref()))
                        .any(|t| t.mode.as_deref() == Some("ISTIO_MUTUAL"))
                });
                if istio_mutual {
                    out.push(Warning::about(
                        obj,
                        "tls.mode",
                        format!("ISTIO_MUTUAL {WHY}"),
                    ));
                }
            }
            _ => {}
        }
    }
}

/// Unknown destination hosts and subsets, subsets selecting no endpoint, unknown
/// Gateways, and VirtualServices sharing a host on one Gateway.
fn cross_object_warnings(
    snap: &ConfigSnapshot,
    objects: &[IstioObject],
    services: &ServiceMap,
    out: &mut Vec<Warning>,
) {
    let gateways: BTreeSet<String> = snap.gateways.iter().map(|g| g.meta.key()).collect();
    for obj in objects {
        match obj {
            IstioObject::VirtualService(vs) => {
                let ns = &vs.meta.namespace;
                let mut check = |field: String, d: &Destination| {
                    let host = snap.resolve_host(&d.host, ns);
                    let Some(svc) = services.get(host.as_str()) else {
                        out.push(Warning::about(
                            obj,
                            format!("{field}.host"),
                            format!("host {host:?} is not a known service: requests routed there fail (no cluster)"),
                        ));
                        return;
                    };
                    if let Some(p) = d.port.map(|p| p.number).filter(|n| *n != 0) {
                        if svc.port(p as u16).is_none() {
                            out.push(Warning::about(
                                obj,
                                format!("{field}.port"),
                                format!("service {host} has no port {p}"),
                            ));
                        }
                    }
                    if !d.subset.is_empty()
                        && !snap
                            .all_subsets(&host, &svc.namespace)
                            .iter()
                            .any(|s| s.name == d.subset)
                    {
                        out.push(Warning::about(
                            obj,
                            format!("{field}.subset"),
                            format!(
                                "no DestinationRule defines subset {:?} for {host}",
                                d.subset
                            ),
                        ));
                    }
                };
                for (i, h) in vs.spec.http.iter().enumerate() {
                    for (j, r) in h.route.iter().enumerate() {
                        check(
                            format!("spec.http[{i}].route[{j}].destination"),
                            &r.destination,
                        );
                    }
                    if let Some(m) = &h.mirror {
                        check(format!("spec.http[{i}].mirror"), m);
                    }
                    for (j, m) in h.mirrors.iter().enumerate() {
                        check(
                            format!("spec.http[{i}].mirrors[{j}].destination"),
                            &m.destination,
                        );
                    }
                }
                for (i, t) in vs.spec.tcp.iter().enumerate() {
                    for (j, r) in t.route.iter().enumerate() {
                        check(
                            format!("spec.tcp[{i}].route[{j}].destination"),
                            &r.destination,
                        );
                    }
                }
                for (i, t) in vs.spec.tls.iter().enumerate() {
                    for (j, r) in t.route.iter().enumerate() {
                        check(
                            format!("spec.tls[{i}].route[{j}].destination"),
                            &r.destination,
                        );
                    }
                }
                for (i, g) in vs.spec.gateways.iter().enumerate() {
                    let key = resolve_gateway_name(g, ns);
                    if key != MESH_GATEWAY && !gateways.contains(&key) {
                        out.push(Warning::about(
                            obj,
                            format!("spec.gateways[{i}]"),
                            format!("Gateway {key} does not exist"),
                        ));
                    }
                }
            }
            IstioObject::DestinationRule(dr) => {
                let host = snap.resolve_host(&dr.spec.host, &dr.meta.namespace);
                if host.starts_with('*') {
                    continue;
                }
                let Some(svc) = services.get(host.as_str()) else {
                    out.push(Warning::about(
                        obj,
                        "spec.host",
                        format!("host {host:?} is not a known service"),
                    ));
                    continue;
                };
                for (i, s) in dr.spec.subsets.iter().enumerate() {
                    let any = svc
                        .endpoints
                        .values()
                        .flatten()
                        .any(|e| e.ready && labels_match(&s.labels, &e.labels));
                    if !any {
                        out.push(Warning::about(
                            obj,
                            format!("spec.subsets[{i}].labels"),
                            format!("subset {:?} selects no ready endpoint of {host}", s.name),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    shared_host_warnings(snap, out);
}

/// Istio merges VirtualServices that claim the same host on one Gateway server:
/// oldest first (creationTimestamp, then name, then namespace), routes
/// concatenated, catch-all routes last. Say who comes first.
fn shared_host_warnings(snap: &ConfigSnapshot, out: &mut Vec<Warning>) {
    for gw in &snap.gateways {
        let key = gw.meta.key();
        for (si, server) in gw.spec.servers.iter().enumerate() {
            let mut claims: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut first_vs = BTreeMap::new();
            for vs in snap.virtual_services_for_gateway(&key, &gw.meta.namespace) {
                let mut hosts = BTreeSet::new();
                for sh in &server.hosts {
                    let (ns, h) = sh.split_once('/').unwrap_or(("*", sh));
                    if !(ns == "*"
                        || ns == vs.meta.namespace
                        || (ns == "." && vs.meta.namespace == gw.meta.namespace))
                    {
                        continue;
                    }
                    let h = if crate::model::istio::validate::all_wildcard_host(h) {
                        "*"
                    } else {
                        h
                    };
                    for vh in &vs.spec.hosts {
                        if let Some(x) = host_intersection(h, vh) {
                            hosts.insert(x);
                        }
                    }
                }
                for h in hosts {
                    let label = match &vs.meta.creation_timestamp {
                        Some(ts) => format!("{} (created {ts})", vs.meta.key()),
                        None => format!("{} (no creationTimestamp)", vs.meta.key()),
                    };
                    claims.entry(h.clone()).or_default().push(label);
                    first_vs.entry(h).or_insert_with(|| vs.clone());
                }
            }
            for (host, who) in claims.into_iter().filter(|(_, w)| w.len() > 1) {
                let winner = &first_vs[&host];
                out.push(Warning {
                    origin: winner.meta.origin.clone(),
                    kind: "VirtualService".into(),
                    namespace: winner.meta.namespace.clone(),
                    name: winner.meta.name.clone(),
                    field: "spec.hosts".into(),
                    message: format!(
                        "host {host:?} on Gateway {key} (servers[{si}], port {}) is claimed by {} VirtualServices: {}. \
                         As in Istio their routes merge in that order (oldest first, then by name): {} is matched first \
                         and wins overlapping and catch-all routes",
                        server.port.number,
                        who.len(),
                        who.join(", "),
                        winner.meta.key()
                    ),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::model::service::{Endpoint, Locality, Service, ServicePort};
    use crate::model::Protocol;

    fn docs(origin: &str, yaml: &str) -> Vec<RawDoc> {
        let values: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml).expect("yaml");
        values
            .into_iter()
            .map(|value| RawDoc {
                origin: origin.into(),
                value,
            })
            .collect()
    }

    fn seed004() -> Vec<RawDoc> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/golden/istio/seed004_quickstart.yaml"
        );
        docs(path, &std::fs::read_to_string(path).expect("seed 004 file"))
    }

    #[test]
    fn every_seed004_document_is_accepted_as_written() {
        let d = seed004();
        assert_eq!(d.len(), 19);
        assert_eq!(validate_docs(&d), Vec::<Rejection>::new());
        let mut store = IstioConfigStore::default();
        assert!(store.replace_source("istio", d.clone()));
        let snap = store.snapshot();
        assert_eq!(snap.gateways.len(), 2);
        assert_eq!(snap.virtual_services.len(), 6);
        assert_eq!(snap.destination_rules.len(), 10);
        assert_eq!(snap.authorization_policies.len(), 1);
        // Same content again: nothing changed.
        assert!(!store.replace_source("istio", d));
    }

    const VS_HEAD: &str = "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  namespace: base\n";

    /// One bad object per case: the reason names the field, and the good object
    /// next to it stays in force.
    #[test]
    fn bad_objects_are_rejected_one_by_one() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "weights",
                "  name: weights\nspec:\n  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n      weight: 60\n    - destination: {host: b}\n      weight: 30\n",
                "spec.http[0].route",
            ),
            (
                "regex",
                "  name: regex\nspec:\n  hosts: [a]\n  http:\n  - match:\n    - uri: {regex: '(unclosed'}\n    route:\n    - destination: {host: a}\n",
                "spec.http[0].match[0].uri",
            ),
            (
                "negative",
                "  name: negative\nspec:\n  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n    timeout: -3s\n",
                "spec.http[0].timeout",
            ),
            (
                "wrongtype",
                "  name: wrongtype\nspec:\n  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n      weight: lots\n",
                "spec.http[0].route[0].weight",
            ),
            (
                "unknownfield",
                "  name: unknownfield\nspec:\n  hosts: [a]\n  htttp: []\n",
                "spec.htttp",
            ),
            (
                "badduration",
                "  name: badduration\nspec:\n  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n    timeout: 3 seconds\n",
                "spec.http[0].timeout",
            ),
        ];
        for (name, body, field) in cases {
            let yaml = format!("{VS_HEAD}{body}---\n{VS_HEAD}  name: good\nspec:\n  hosts: [a]\n  http:\n  - route:\n    - destination: {{host: a}}\n");
            let d = docs("istio/bad.yaml", &yaml);
            let problems = validate_docs(&d);
            assert_eq!(problems.len(), 1, "{name}: {problems:#?}");
            let p = &problems[0];
            assert_eq!(
                (p.kind.as_str(), p.namespace.as_str(), p.name.as_str()),
                ("VirtualService", "base", *name)
            );
            assert_eq!(p.field, *field, "{name}: {p}");
            assert_eq!(p.origin, "istio/bad.yaml");
            let mut store = IstioConfigStore::default();
            store.replace_source("istio", d);
            let snap = store.snapshot();
            assert_eq!(snap.virtual_services.len(), 1, "{name}");
            assert_eq!(snap.virtual_services[0].meta.name, "good");
            let status = store.status(&ServiceMap::new());
            assert_eq!(status.rejected.len(), 1);
        }
    }

    #[test]
    fn destination_rule_problems_name_the_field() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: cart, namespace: base}\nspec:\n  host: cart\n  trafficPolicy:\n    loadBalancer:\n      consistentHash:\n        httpHeaderName: UserID\n        useSourceIp: true\n    outlierDetection:\n      interval: -1s\n";
        let problems = validate_docs(&docs("dr.yaml", yaml));
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.trafficPolicy.loadBalancer.consistentHash",
                "spec.trafficPolicy.outlierDetection.interval"
            ]
        );
        assert!(problems[0]
            .reason
            .contains("conflicting hash keys httpHeaderName, useSourceIp"));
        assert!(problems[0]
            .to_string()
            .starts_with("dr.yaml: DestinationRule base/cart: spec.trafficPolicy"));
    }

    #[test]
    fn unknown_kinds_versions_and_duplicates() {
        let yaml = "apiVersion: networking.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: base}\nspec: {}\n---\napiVersion: security.istio.io/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: base}\nspec: {}\n---\napiVersion: networking.istio.io/v1alpha3\nkind: PeerAuthentication\nmetadata: {name: p2, namespace: base}\nspec: {}\n---\napiVersion: networking.istio.io/v1alpha3\nkind: WorkloadGroup\nmetadata: {name: wg}\nspec: {}\n---\napiVersion: networking.istio.io/v1alpha3\nkind: Gateway\nmetadata: {name: gw, namespace: a}\nspec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n---\napiVersion: networking.istio.io/v1alpha3\nkind: Gateway\nmetadata: {name: gw, namespace: a}\nspec:\n  servers:\n  - port: {number: 81, name: http, protocol: HTTP}\n    hosts: ['*']\n";
        let problems = validate_docs(&docs("f.yaml", yaml));
        let summary: Vec<(String, String)> = problems
            .iter()
            .map(|p| (p.kind.clone(), p.field.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                ("AuthorizationPolicy".to_string(), "apiVersion".to_string()),
                ("PeerAuthentication".to_string(), "apiVersion".to_string()),
                ("PeerAuthentication".to_string(), "kind".to_string()),
                ("WorkloadGroup".to_string(), "kind".to_string()),
                ("Gateway".to_string(), "metadata.name".to_string()),
            ]
        );
        assert_eq!(problems[3].namespace, "default");
    }

    #[test]
    fn configz_says_mtls_config_needs_an_identity() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: m, namespace: ns}\nspec: {host: m, subsets: [{name: v1, labels: {v: '1'}, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}]}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: s, namespace: ns}\nspec: {host: s, trafficPolicy: {tls: {mode: SIMPLE}}}\n";
        let mut store = IstioConfigStore::default();
        store.replace_source("f", docs("f.yaml", yaml));
        let st = store.status(&ServiceMap::new());
        let about_identity: Vec<(&str, &str)> = st
            .warnings
            .iter()
            .filter(|w| w.message.contains("only to proxies with an identity"))
            .map(|w| (w.kind.as_str(), w.name.as_str()))
            .collect();
        assert_eq!(
            about_identity,
            [("DestinationRule", "m"), ("PeerAuthentication", "strict")]
        );
    }

    #[test]
    fn peer_authentications_are_rejected_one_by_one_with_reasons() {
        let head = "kind: PeerAuthentication\nmetadata: {namespace: base, ";
        let yaml = format!(
            "apiVersion: security.istio.io/v1\n{head}name: good}}\nspec: {{mtls: {{mode: STRICT}}}}\n---\n\
             apiVersion: security.istio.io/v1beta1\n{head}name: beta}}\nspec: {{selector: {{matchLabels: {{app: web}}}}, portLevelMtls: {{'8080': {{mode: DISABLE}}}}}}\n---\n\
             apiVersion: security.istio.io/v1\n{head}name: mode}}\nspec: {{mtls: {{mode: STRICTEST}}}}\n---\n\
             apiVersion: security.istio.io/v1\n{head}name: ports}}\nspec: {{portLevelMtls: {{'8080': {{mode: DISABLE}}}}}}\n---\n\
             apiVersion: security.istio.io/v1\n{head}name: key}}\nspec: {{selector: {{matchLabels: {{app: web}}}}, portLevelMtls: {{http: {{mode: DISABLE}}}}}}\n---\n\
             apiVersion: security.istio.io/v1\n{head}name: field}}\nspec: {{mtls: {{mode: STRICT}}, action: ALLOW}}\n"
        );
        let mut store = IstioConfigStore::default();
        store.replace_source("f", docs("f.yaml", &yaml));
        let st = store.status(&ServiceMap::new());
        let in_force: Vec<&str> = st.in_force.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(in_force, ["beta", "good"]);
        let why = |name: &str| -> String {
            st.rejected
                .iter()
                .filter(|r| r.name == name)
                .map(|r| format!("{}: {}", r.field, r.reason))
                .collect::<Vec<_>>()
                .join("; ")
        };
        assert!(
            why("mode").starts_with("spec.mtls.mode: unknown variant `STRICTEST`"),
            "{}",
            why("mode")
        );
        assert!(why("ports").contains("spec.portLevelMtls: mesh/namespace peer authentication cannot have port level mTLS"), "{}", why("ports"));
        assert!(
            why("key").contains("spec.portLevelMtls.http: \"http\" is not a port number"),
            "{}",
            why("key")
        );
        assert!(
            why("field").contains("unknown field `action`"),
            "{}",
            why("field")
        );
        assert_eq!(store.snapshot().peer_authentications.len(), 2);
        // The same reasons from `crossmesh validate`.
        let problems = validate_docs(&docs("f.yaml", &yaml));
        let names: BTreeSet<&str> = problems.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, BTreeSet::from(["mode", "ports", "key", "field"]));
    }

    fn service(name: &str, ns: &str, eps: &[(&str, &str)]) -> (Arc<str>, Arc<Service>) {
        let host: Arc<str> = format!("{name}.{ns}.svc.cluster.local").into();
        let endpoints = eps
            .iter()
            .map(|(ip, version)| Endpoint {
                address: ip.parse().unwrap(),
                port: 7000,
                labels: Arc::new(BTreeMap::from([
                    ("app".to_string(), name.to_string()),
                    ("version".to_string(), version.to_string()),
                ])),
                cluster: "c1".into(),
                network: "".into(),
                locality: Arc::new(Locality::default()),
                ready: true,
                workload: "w".into(),
                service_account: "sa".into(),
                stale: false,
                weight: 1,
            })
            .collect();
        let svc = Service {
            hostname: host.clone(),
            namespace: ns.into(),
            name: name.into(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 7000,
                protocol: Protocol::Http,
            }],
            endpoints: BTreeMap::from([(7000, endpoints)]),
            clusters: vec!["c1".into()],
        };
        (host, Arc::new(svc))
    }

    #[test]
    fn status_warns_about_hosts_subsets_and_shared_hosts() {
        let yaml = r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*.example.com"]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: zz-old, namespace: base, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  hosts: [shop.example.com]
  gateways: [istio-system/gw, istio-system/missing]
  http:
  - route:
    - destination: {host: order, subset: v3}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: aa-new, namespace: base, creationTimestamp: "2024-02-01T00:00:00Z"}
spec:
  hosts: [shop.example.com]
  gateways: [istio-system/gw]
  http:
  - route:
    - destination: {host: nowhere.base.svc.cluster.local}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: order, namespace: base}
spec:
  host: order
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;
        let mut store = IstioConfigStore::default();
        store.replace_source("istio", docs("istio/x.yaml", yaml));
        let services: ServiceMap = [service("order", "base", &[("10.0.0.1", "v1")])]
            .into_iter()
            .collect();
        let status = store.status(&services);
        let messages: Vec<String> = status
            .warnings
            .iter()
            .map(|w| format!("{}/{} {}: {}", w.namespace, w.name, w.field, w.message))
            .collect();
        let has = |needle: &str| messages.iter().any(|m| m.contains(needle));
        assert!(has("base/zz-old spec.http[0].route[0].destination.subset: no DestinationRule defines subset \"v3\""), "{messages:#?}");
        assert!(has("base/aa-new spec.http[0].route[0].destination.host: host \"nowhere.base.svc.cluster.local\" is not a known service"));
        assert!(has(
            "base/zz-old spec.gateways[1]: Gateway istio-system/missing does not exist"
        ));
        assert!(has(
            "base/order spec.subsets[1].labels: subset \"v2\" selects no ready endpoint"
        ));
        // The older VirtualService wins even though its name sorts last.
        assert!(
            has("base/zz-old spec.hosts: host \"shop.example.com\" on Gateway istio-system/gw"),
            "{messages:#?}"
        );
        assert!(has("base/zz-old (created 2024-01-01T00:00:00Z), base/aa-new (created 2024-02-01T00:00:00Z)"));
        assert!(serde_json::to_value(&status).is_ok());
    }

    #[test]
    fn sources_replace_independently_and_metrics_count_rejections() {
        let good = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a, namespace: ns}\nspec: {host: a}\n";
        let bad = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: b, namespace: ns}\nspec: {host: b, subsets: [{name: x}, {name: x}]}\n";
        let mut store = IstioConfigStore::default();
        assert!(store.replace_source("one", docs("one.yaml", good)));
        assert!(!store.replace_source("two", docs("two.yaml", bad)));
        assert_eq!(store.snapshot().destination_rules.len(), 1);
        assert_eq!(
            store.status(&ServiceMap::new()).rejected[0].field,
            "spec.subsets[1].name"
        );
        let gauge = metrics()
            .rejected_configs
            .get_or_create(&KindLabel {
                kind: "DestinationRule".into(),
            })
            .get();
        assert!(gauge >= 1);
        assert!(store.replace_source("one", Vec::new()));
        assert!(store.snapshot().destination_rules.is_empty());
    }

    /// A Namespace label change from any source re-evaluates route attachment
    /// (a push); a bad selector rejects that Gateway alone, naming the field.
    #[test]
    fn namespace_labels_decide_selector_attachment() {
        let gw = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: c}\nspec: {controllerName: crossmesh.io/gateway-controller}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: infra}\nspec:\n  gatewayClassName: c\n  listeners:\n  - name: http\n    port: 80\n    protocol: HTTP\n    allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {access: \"yes\"}}}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: team}\nspec:\n  parentRefs: [{name: gw, namespace: infra}]\n  rules: [{backendRefs: [{name: app, port: 80}]}]\n";
        let ns = |access: &str| {
            format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: team, labels: {{access: \"{access}\"}}}}\n")
        };
        let mut store = IstioConfigStore::default();
        store.replace_source("config", docs("gw.yaml", gw));
        let routed = |s: &IstioConfigStore| {
            s.snapshot()
                .virtual_services
                .iter()
                .any(|v| v.meta.name == "r-istio-autogenerated-k8s-gateway")
        };
        assert!(!routed(&store), "team has no labels yet");
        assert!(store.replace_source("cluster-ns", docs("ns.yaml", &ns("yes"))));
        assert!(routed(&store));
        assert!(store.replace_source("cluster-ns", docs("ns.yaml", &ns("no"))));
        assert!(!routed(&store));
        let bad = gw.replace(
            "matchLabels: {access: \"yes\"}",
            "matchExpressions: [{key: access, operator: In}]",
        );
        store.replace_source("config", docs("gw.yaml", &bad));
        let rejected = store.status(&ServiceMap::new()).rejected;
        assert_eq!(rejected.len(), 1, "{rejected:#?}");
        assert_eq!(rejected[0].kind, "Gateway");
        assert_eq!(
            rejected[0].field,
            "spec.listeners[0].allowedRoutes.namespaces.selector.matchExpressions[0].values"
        );
        assert_eq!(validate_docs(&docs("gw.yaml", &bad)).len(), 1);
    }
}
