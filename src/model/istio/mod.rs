//! Istio's networking API (`networking.istio.io` v1alpha3, v1beta1 and v1 share
//! one schema) and `security.istio.io` v1 and v1beta1 (`PeerAuthentication`,
//! `RequestAuthentication`, `AuthorizationPolicy`) as plain serde types, plus
//! the validated `ConfigSnapshot` translation reads.
//!
//! Spec types use `deny_unknown_fields`, so an unknown or misspelt field rejects
//! the object with a reason instead of being silently ignored. Fields Istio has but
//! crossmesh does not implement are typed and then rejected by `validate`, with a
//! message naming the field.

pub mod authorization_policy;
pub mod common;
pub mod destination_rule;
pub mod duration;
pub mod gateway;
pub mod peer_authentication;
pub mod request_authentication;
pub mod service_entry;
pub mod sidecar;
pub mod telemetry;
pub mod validate;
pub mod virtual_service;
pub mod workload_entry;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use authorization_policy::AuthorizationPolicy;
pub use common::{labels_match, Destination, Percent, PortSelector, StringMatch, StringMatchKind};
pub use destination_rule::{DestinationRule, Subset, TrafficPolicy};
pub use duration::IstioDuration;
pub use gateway::{Gateway, Server, ServerProtocol};
pub use peer_authentication::{EffectiveMtls, MtlsMode, PeerAuthentication};
pub use request_authentication::RequestAuthentication;
pub use service_entry::ServiceEntry;
pub use sidecar::Sidecar;
pub use telemetry::Telemetry;
pub use virtual_service::VirtualService;
pub use workload_entry::WorkloadEntry;

/// The API group crossmesh reads Istio networking config from.
pub const NETWORKING_GROUP: &str = "networking.istio.io";
/// Versions of the networking group that share the schema below.
pub const NETWORKING_VERSIONS: [&str; 3] = ["v1alpha3", "v1beta1", "v1"];
/// The API group of `PeerAuthentication`.
pub const SECURITY_GROUP: &str = "security.istio.io";
/// Versions of the security group crossmesh reads (one schema).
pub const SECURITY_VERSIONS: [&str; 2] = ["v1beta1", "v1"];
/// The namespace Istio treats as the config root (mesh-wide DestinationRules).
pub const ROOT_NAMESPACE: &str = "istio-system";

/// The Istio kinds crossmesh understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum IstioKind {
    Gateway,
    VirtualService,
    DestinationRule,
    Sidecar,
    PeerAuthentication,
    RequestAuthentication,
    AuthorizationPolicy,
    ServiceEntry,
    WorkloadEntry,
    Telemetry,
}

impl IstioKind {
    pub fn parse(kind: &str) -> Option<IstioKind> {
        Some(match kind {
            "Gateway" => IstioKind::Gateway,
            "VirtualService" => IstioKind::VirtualService,
            "DestinationRule" => IstioKind::DestinationRule,
            "Sidecar" => IstioKind::Sidecar,
            "PeerAuthentication" => IstioKind::PeerAuthentication,
            "RequestAuthentication" => IstioKind::RequestAuthentication,
            "AuthorizationPolicy" => IstioKind::AuthorizationPolicy,
            "ServiceEntry" => IstioKind::ServiceEntry,
            "WorkloadEntry" => IstioKind::WorkloadEntry,
            "Telemetry" => IstioKind::Telemetry,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IstioKind::Gateway => "Gateway",
            IstioKind::VirtualService => "VirtualService",
            IstioKind::DestinationRule => "DestinationRule",
            IstioKind::Sidecar => "Sidecar",
            IstioKind::PeerAuthentication => "PeerAuthentication",
            IstioKind::RequestAuthentication => "RequestAuthentication",
            IstioKind::AuthorizationPolicy => "AuthorizationPolicy",
            IstioKind::ServiceEntry => "ServiceEntry",
            IstioKind::WorkloadEntry => "WorkloadEntry",
            IstioKind::Telemetry => "Telemetry",
        }
    }
}

impl fmt::Display for IstioKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Object metadata crossmesh keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    pub name: String,
    /// `default` when the document has none (as `kubectl apply` does).
    pub namespace: String,
    /// RFC 3339 as written; `None` sorts first (Istio's zero time).
    pub creation_timestamp: Option<String>,
    /// The file path or member cluster the object came from.
    pub origin: String,
    pub api_version: String,
}

impl Meta {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Generated from a Kubernetes Gateway API object (`model::gateway_api`):
    /// Istio's "gateway semantics" (`model.UseGatewaySemantics`) apply.
    pub fn gateway_semantics(&self) -> bool {
        self.api_version
            .starts_with(crate::model::gateway_api::GROUP)
    }

    /// Istio's order for merging config (`sortConfigByCreationTime`): oldest
    /// first, then by name, then by namespace.
    pub fn istio_order(&self, other: &Meta) -> std::cmp::Ordering {
        let ts = |m: &Meta| {
            m.creation_timestamp
                .as_deref()
                .map(timestamp_key)
                .unwrap_or_default()
        };
        ts(self)
            .cmp(&ts(other))
            .then_with(|| self.name.cmp(&other.name))
            .then_with(|| self.namespace.cmp(&other.namespace))
    }
}

/// A sortable key for an RFC 3339 timestamp: the digits of date and time, with the
/// fraction padded, so `2024-03-25T10:10:52Z` < `2024-03-25T10:10:52.5Z`.
/// Validation guarantees the `YYYY-MM-DDTHH:MM:SS[.frac]Z` shape.
fn timestamp_key(ts: &str) -> String {
    let (main, frac) = match ts.trim_end_matches('Z').split_once('.') {
        Some((m, f)) => (m.to_string(), f.to_string()),
        None => (ts.trim_end_matches('Z').to_string(), String::new()),
    };
    format!("{main}.{frac:0<9}")
}

/// One validated object of kind `T`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config<T> {
    pub meta: Meta,
    pub spec: T,
}

/// Any supported Istio object.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind")]
pub enum IstioObject {
    Gateway(Config<Gateway>),
    VirtualService(Config<VirtualService>),
    DestinationRule(Config<DestinationRule>),
    Sidecar(Config<Sidecar>),
    PeerAuthentication(Config<PeerAuthentication>),
    RequestAuthentication(Config<RequestAuthentication>),
    AuthorizationPolicy(Config<AuthorizationPolicy>),
    ServiceEntry(Config<ServiceEntry>),
    WorkloadEntry(Config<WorkloadEntry>),
    Telemetry(Config<Telemetry>),
}

impl IstioObject {
    pub fn meta(&self) -> &Meta {
        match self {
            IstioObject::Gateway(c) => &c.meta,
            IstioObject::VirtualService(c) => &c.meta,
            IstioObject::DestinationRule(c) => &c.meta,
            IstioObject::Sidecar(c) => &c.meta,
            IstioObject::PeerAuthentication(c) => &c.meta,
            IstioObject::RequestAuthentication(c) => &c.meta,
            IstioObject::AuthorizationPolicy(c) => &c.meta,
            IstioObject::ServiceEntry(c) => &c.meta,
            IstioObject::WorkloadEntry(c) => &c.meta,
            IstioObject::Telemetry(c) => &c.meta,
        }
    }

    pub fn kind(&self) -> IstioKind {
        match self {
            IstioObject::Gateway(_) => IstioKind::Gateway,
            IstioObject::VirtualService(_) => IstioKind::VirtualService,
            IstioObject::DestinationRule(_) => IstioKind::DestinationRule,
            IstioObject::Sidecar(_) => IstioKind::Sidecar,
            IstioObject::PeerAuthentication(_) => IstioKind::PeerAuthentication,
            IstioObject::RequestAuthentication(_) => IstioKind::RequestAuthentication,
            IstioObject::AuthorizationPolicy(_) => IstioKind::AuthorizationPolicy,
            IstioObject::ServiceEntry(_) => IstioKind::ServiceEntry,
            IstioObject::WorkloadEntry(_) => IstioKind::WorkloadEntry,
            IstioObject::Telemetry(_) => IstioKind::Telemetry,
        }
    }
}

/// Why one object was rejected: enough for an operator to find and fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{origin}: {kind} {namespace}/{name}: {}{reason}", field_prefix(.field))]
pub struct Rejection {
    pub origin: String,
    /// The kind as written (may be one crossmesh does not know).
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Path of the offending field (`spec.http[0].route[1].weight`), empty when
    /// the whole object is at fault.
    pub field: String,
    pub reason: String,
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    creation_timestamp: Option<String>,
}

/// Parse and validate one document. `Err` holds every problem found (at least one).
pub fn parse_object(
    origin: &str,
    value: &serde_json::Value,
) -> Result<IstioObject, Vec<Rejection>> {
    let str_field = |k: &str| {
        value
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let kind_str = str_field("kind");
    let api_version = str_field("apiVersion");
    let raw_meta: Option<RawMeta> = value
        .get("metadata")
        .and_then(|m| serde_json::from_value(m.clone()).ok());
    let name = raw_meta
        .as_ref()
        .and_then(|m| m.name.clone())
        .unwrap_or_default();
    let namespace = raw_meta
        .as_ref()
        .and_then(|m| m.namespace.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let reject = |field: &str, reason: String| {
        vec![Rejection {
            origin: origin.to_string(),
            kind: if kind_str.is_empty() {
                "<no kind>".into()
            } else {
                kind_str.clone()
            },
            namespace: namespace.clone(),
            name: if name.is_empty() {
                "<no name>".into()
            } else {
                name.clone()
            },
            field: field.to_string(),
            reason,
        }]
    };
    if !value.is_object() {
        return Err(reject("", "document is not a mapping".into()));
    }
    let (group, version) = api_version
        .split_once('/')
        .unwrap_or(("", api_version.as_str()));
    let security = group == SECURITY_GROUP && SECURITY_VERSIONS.contains(&version);
    let telemetry_group = group == telemetry::GROUP && telemetry::VERSIONS.contains(&version);
    if telemetry_group && kind_str != "Telemetry" {
        return Err(reject(
            "kind",
            format!(
                "kind {kind_str:?} of {} is not supported (supported: Telemetry)",
                telemetry::GROUP
            ),
        ));
    }
    if !security
        && !telemetry_group
        && (group != NETWORKING_GROUP || !NETWORKING_VERSIONS.contains(&version))
    {
        return Err(reject(
            "apiVersion",
            format!(
                "unsupported apiVersion {api_version:?} (crossmesh reads {NETWORKING_GROUP}/v1alpha3, v1beta1 and v1, {SECURITY_GROUP}/v1beta1 and v1, and {}/v1alpha1 and v1)", telemetry::GROUP
            ),
        ));
    }
    let kind = match (IstioKind::parse(&kind_str), security) {
        _ if telemetry_group => IstioKind::Telemetry,
        (Some(IstioKind::Telemetry), _) => {
            return Err(reject(
                "apiVersion",
                format!("Telemetry belongs to {}/v1 or v1alpha1, not {api_version:?}", telemetry::GROUP),
            ))
        }
        (Some(IstioKind::AuthorizationPolicy), true) => IstioKind::AuthorizationPolicy,
        (Some(IstioKind::AuthorizationPolicy), false) => {
            return Err(reject(
                "apiVersion",
                format!("AuthorizationPolicy belongs to {SECURITY_GROUP} (v1 or v1beta1), not {api_version:?}"),
            ))
        }
        (Some(IstioKind::PeerAuthentication), true) => IstioKind::PeerAuthentication,
        (Some(IstioKind::RequestAuthentication), true) => IstioKind::RequestAuthentication,
        (Some(k), false) if k != IstioKind::PeerAuthentication && k != IstioKind::RequestAuthentication => {
            k
        }
        _ if security => {
            return Err(reject(
                "kind",
                format!("kind {kind_str:?} of {SECURITY_GROUP} is not supported (supported: PeerAuthentication, RequestAuthentication, AuthorizationPolicy)"),
            ))
        }
        _ => {
            return Err(reject(
                "kind",
                format!("unknown kind {kind_str:?} of {NETWORKING_GROUP} (supported: Gateway, VirtualService, DestinationRule, Sidecar, ServiceEntry, WorkloadEntry)"),
            ))
        }
    };
    let Some(raw_meta) = raw_meta else {
        return Err(reject("metadata", "missing or malformed metadata".into()));
    };
    if name.is_empty() {
        return Err(reject("metadata.name", "missing name".into()));
    }
    if let Some(ts) = &raw_meta.creation_timestamp {
        if !validate::is_rfc3339_utc(ts) {
            return Err(reject(
                "metadata.creationTimestamp",
                format!("{ts:?} is not an RFC 3339 UTC time (YYYY-MM-DDTHH:MM:SSZ)"),
            ));
        }
    }
    let meta = Meta {
        name: name.clone(),
        namespace: namespace.clone(),
        creation_timestamp: raw_meta.creation_timestamp,
        origin: origin.to_string(),
        api_version: api_version.clone(),
    };
    let spec = value
        .get("spec")
        .cloned()
        .unwrap_or(serde_json::Value::Object(Default::default()));
    let obj =
        match kind {
            IstioKind::Gateway => {
                deserialize_spec(spec).map(|spec| IstioObject::Gateway(Config { meta, spec }))
            }
            IstioKind::VirtualService => deserialize_spec(spec)
                .map(|spec| IstioObject::VirtualService(Config { meta, spec })),
            IstioKind::DestinationRule => deserialize_spec(spec)
                .map(|spec| IstioObject::DestinationRule(Config { meta, spec })),
            IstioKind::Sidecar => {
                deserialize_spec(spec).map(|spec| IstioObject::Sidecar(Config { meta, spec }))
            }
            IstioKind::PeerAuthentication => deserialize_spec(spec)
                .map(|spec| IstioObject::PeerAuthentication(Config { meta, spec })),
            IstioKind::RequestAuthentication => deserialize_spec(spec)
                .map(|spec| IstioObject::RequestAuthentication(Config { meta, spec })),
            IstioKind::ServiceEntry => {
                deserialize_spec(spec).map(|spec| IstioObject::ServiceEntry(Config { meta, spec }))
            }
            IstioKind::WorkloadEntry => {
                deserialize_spec(spec).map(|spec| IstioObject::WorkloadEntry(Config { meta, spec }))
            }
            IstioKind::Telemetry => {
                deserialize_spec(spec).map(|spec| IstioObject::Telemetry(Config { meta, spec }))
            }
            IstioKind::AuthorizationPolicy => {
                authorization_policy::dry_run(value).and_then(|dry_run| {
                    deserialize_spec(spec).map(|spec| {
                        IstioObject::AuthorizationPolicy(Config {
                            meta,
                            spec: AuthorizationPolicy { dry_run, ..spec },
                        })
                    })
                })
            }
        };
    let obj = obj.map_err(|(field, reason)| reject(&field, reason))?;
    // Warnings keep the object in force; they are reported by the config store.
    let errors: Vec<_> = validate::validate(&obj)
        .into_iter()
        .filter(|i| !i.warning)
        .collect();
    if errors.is_empty() {
        Ok(obj)
    } else {
        Err(errors
            .into_iter()
            .flat_map(|p| reject(&p.field, p.reason))
            .collect())
    }
}

/// The warnings of one accepted object (fields that stay in force but have no
/// effect, deprecated forms), in the form of a `Rejection` so callers print them
/// with file, kind, name and field; `crossmesh validate` prints them without
/// failing, `/debug/configz` shows them through the config store.
pub fn object_warnings(obj: &IstioObject) -> Vec<Rejection> {
    let m = obj.meta();
    validate::validate(obj)
        .into_iter()
        .filter(|i| i.warning)
        .map(|i| Rejection {
            origin: m.origin.clone(),
            kind: obj.kind().to_string(),
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            field: i.field,
            reason: i.reason,
        })
        .collect()
}

/// Istio's short-name resolution: a host without a dot is a service in `namespace`
/// (`order` in `base` is `order.base.svc.<suffix>`); anything else is taken as
/// written, lower-cased.
pub fn resolve_host(host: &str, namespace: &str, domain_suffix: &str) -> String {
    if host.contains('.') || host.starts_with('*') {
        host.to_ascii_lowercase()
    } else {
        format!(
            "{}.{namespace}.svc.{domain_suffix}",
            host.to_ascii_lowercase()
        )
    }
}

/// The `ns/name` key a VirtualService's `gateways` entry means: `mesh`, `ns/name`,
/// a bare name in the VirtualService's namespace, or an FQDN `name.ns.svc...`.
pub fn resolve_gateway_name(gateway: &str, vs_namespace: &str) -> String {
    if gateway == MESH_GATEWAY || gateway.contains('/') {
        return gateway.to_string();
    }
    match gateway.split_once('.') {
        Some((name, rest)) => {
            let ns = rest.split('.').next().unwrap_or(vs_namespace);
            format!("{ns}/{name}")
        }
        None => format!("{vs_namespace}/{gateway}"),
    }
}

/// The reserved gateway name meaning "every sidecar".
pub const MESH_GATEWAY: &str = "mesh";

/// Whether a config with `export_to` in `own_ns` is visible to `to_ns`
/// (empty list: everywhere, Istio's default).
pub fn exported_to(export_to: &[String], own_ns: &str, to_ns: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || (e == "." && own_ns == to_ns) || e == to_ns)
}

/// The Istio config in force for one push, indexed for translation. Immutable;
/// rebuilt by the config store on change.
#[derive(Debug, Clone, Default)]
pub struct ConfigSnapshot {
    pub domain_suffix: String,
    /// In Istio order (creation time, name, namespace).
    pub gateways: Vec<Arc<Config<Gateway>>>,
    pub virtual_services: Vec<Arc<Config<VirtualService>>>,
    pub destination_rules: Vec<Arc<Config<DestinationRule>>>,
    pub sidecars: Vec<Arc<Config<Sidecar>>>,
    pub peer_authentications: Vec<Arc<Config<PeerAuthentication>>>,
    pub request_authentications: Vec<Arc<Config<RequestAuthentication>>>,
    /// Including the fail-closed stand-ins of rejected policies
    /// (`authorization_policy::stand_in`).
    pub authorization_policies: Vec<Arc<Config<AuthorizationPolicy>>>,
    pub service_entries: Vec<Arc<Config<ServiceEntry>>>,
    pub workload_entries: Vec<Arc<Config<WorkloadEntry>>>,
    /// `telemetry.istio.io` Telemetry (tracing), in Istio order.
    pub telemetries: Vec<Arc<Config<Telemetry>>>,
    /// Keys fetched for `jwksUri` (and OpenID discovery) by `security::jwks`,
    /// set by the config store; a rule whose keys are not here yet gets a key
    /// no token verifies against (`translate::jwt::UNFETCHED_JWKS`).
    pub jwks: Arc<request_authentication::FetchedJwks>,
    /// Gateway key (`ns/name` or `mesh`) -> indexes into `virtual_services`.
    vs_by_gateway: HashMap<String, Vec<usize>>,
    /// Resolved host -> indexes into `destination_rules`.
    dr_by_host: HashMap<String, Vec<usize>>,
    /// Service hostname -> index into `service_entries` of the oldest
    /// ServiceEntry declaring it (a later one for the same host is shadowed).
    se_by_host: HashMap<String, usize>,
}

/// The DestinationRule that applies to one (proxy namespace, host): Istio picks the
/// rules of the proxy's namespace, else of the service's namespace, else of the
/// root namespace; several rules for one host in that namespace merge, oldest
/// first: the first top-level policy wins and subsets are concatenated (a later
/// duplicate subset name is dropped).
#[derive(Debug, Clone, PartialEq)]
pub struct EffectiveRule {
    pub traffic_policy: Option<TrafficPolicy>,
    pub subsets: Vec<Subset>,
    /// `ns/name` of each merged rule, first one first.
    pub sources: Vec<String>,
}

impl ConfigSnapshot {
    /// Build from validated objects; `domain_suffix` resolves short host names.
    pub fn new(
        domain_suffix: &str,
        objects: impl IntoIterator<Item = IstioObject>,
    ) -> ConfigSnapshot {
        let mut s = ConfigSnapshot {
            domain_suffix: domain_suffix.to_string(),
            ..Default::default()
        };
        for o in objects {
            match o {
                IstioObject::Gateway(c) => s.gateways.push(Arc::new(c)),
                IstioObject::VirtualService(c) => s.virtual_services.push(Arc::new(c)),
                IstioObject::DestinationRule(c) => s.destination_rules.push(Arc::new(c)),
                IstioObject::Sidecar(c) => s.sidecars.push(Arc::new(c)),
                IstioObject::PeerAuthentication(c) => s.peer_authentications.push(Arc::new(c)),
                IstioObject::RequestAuthentication(c) => {
                    s.request_authentications.push(Arc::new(c))
                }
                IstioObject::AuthorizationPolicy(c) => s.authorization_policies.push(Arc::new(c)),
                IstioObject::ServiceEntry(c) => s.service_entries.push(Arc::new(c)),
                IstioObject::WorkloadEntry(c) => s.workload_entries.push(Arc::new(c)),
                IstioObject::Telemetry(c) => s.telemetries.push(Arc::new(c)),
            }
        }
        s.gateways.sort_by(|a, b| a.meta.istio_order(&b.meta));
        s.virtual_services
            .sort_by(|a, b| a.meta.istio_order(&b.meta));
        s.destination_rules
            .sort_by(|a, b| a.meta.istio_order(&b.meta));
        s.sidecars.sort_by(|a, b| a.meta.istio_order(&b.meta));
        s.peer_authentications
            .sort_by(|a, b| a.meta.istio_order(&b.meta));
        s.request_authentications
            .sort_by(|a, b| a.meta.istio_order(&b.meta));
        s.authorization_policies
            .sort_by(|a, b| a.meta.istio_order(&b.meta));
        s.service_entries
            .sort_by(|a, b| a.meta.istio_order(&b.meta));
        s.workload_entries
            .sort_by(|a, b| a.meta.istio_order(&b.meta));
        s.telemetries.sort_by(|a, b| a.meta.istio_order(&b.meta));
        for (i, se) in s.service_entries.iter().enumerate() {
            for h in se.spec.hostnames() {
                s.se_by_host.entry(h).or_insert(i);
            }
        }
        for (i, vs) in s.virtual_services.iter().enumerate() {
            let mut keys: Vec<String> = if vs.spec.gateways.is_empty() {
                vec![MESH_GATEWAY.to_string()]
            } else {
                vs.spec
                    .gateways
                    .iter()
                    .map(|g| resolve_gateway_name(g, &vs.meta.namespace))
                    .collect()
            };
            keys.sort();
            keys.dedup();
            for k in keys {
                s.vs_by_gateway.entry(k).or_default().push(i);
            }
        }
        for (i, dr) in s.destination_rules.iter().enumerate() {
            let host = resolve_host(&dr.spec.host, &dr.meta.namespace, domain_suffix);
            s.dr_by_host.entry(host).or_default().push(i);
        }
        s
    }

    pub fn resolve_host(&self, host: &str, namespace: &str) -> String {
        resolve_host(host, namespace, &self.domain_suffix)
    }

    /// The ServiceEntry a service hostname comes from, if any (the oldest one
    /// declaring it).
    pub fn service_entry(&self, hostname: &str) -> Option<&Arc<Config<ServiceEntry>>> {
        self.se_by_host
            .get(hostname)
            .map(|i| &self.service_entries[*i])
    }

    /// The ServiceEntry `svc` was made from, if it is a ServiceEntry's service
    /// (its name is its hostname, never so for a Kubernetes Service, which wins
    /// a hostname both declare).
    pub fn service_entry_of(
        &self,
        svc: &crate::model::Service,
    ) -> Option<&Arc<Config<ServiceEntry>>> {
        if svc.name != *svc.hostname {
            return None;
        }
        self.service_entry(&svc.hostname)
    }

    /// Whether a proxy in `proxy_ns` sees `svc`: a ServiceEntry's service only
    /// where its `exportTo` admits it; every Kubernetes Service everywhere.
    pub fn service_visible(&self, svc: &crate::model::Service, proxy_ns: &str) -> bool {
        self.service_entry_of(svc)
            .is_none_or(|se| service_entry::visible(se, proxy_ns))
    }

    /// The PeerAuthentication mode in force for a workload in `namespace` with
    /// `labels` (mesh-wide policies live in `ROOT_NAMESPACE`).
    pub fn peer_authentication(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> EffectiveMtls {
        peer_authentication::effective_mtls(
            &self.peer_authentications,
            ROOT_NAMESPACE,
            namespace,
            labels,
        )
    }

    /// The Telemetry `tracing` overrides for a proxy in `namespace` with
    /// `labels`, in the order they apply (`telemetry::tracing_for`).
    pub fn tracing_telemetry(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<&telemetry::Tracing> {
        telemetry::tracing_for(&self.telemetries, ROOT_NAMESPACE, namespace, labels).0
    }

    /// The AuthorizationPolicies that apply to a workload or gateway in
    /// `namespace` with `labels` (root-namespace policies included), in Istio
    /// order.
    pub fn authorization_policies_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<&Arc<Config<AuthorizationPolicy>>> {
        authorization_policy::for_workload(
            &self.authorization_policies,
            ROOT_NAMESPACE,
            authorization_policy::Workload { namespace, labels },
        )
    }

    /// Gateways whose selector matches `labels` of a proxy in `namespace`, or
    /// that name a Service in `member_of` (the Services the proxy is a pod of;
    /// Gateway API `addresses` of type Hostname), in Istio order. As in Istio,
    /// an empty selector selects every gateway proxy; a Gateway API Gateway
    /// applies in its own namespace only (DESIGN.md §5).
    pub fn gateways_for<'a, 'b>(
        &'a self,
        namespace: &'b str,
        labels: &'b BTreeMap<String, String>,
        member_of: &'b [String],
    ) -> impl Iterator<Item = &'a Arc<Config<Gateway>>> + 'b
    where
        'a: 'b,
    {
        self.gateways.iter().filter(move |g| {
            (labels_match(&g.spec.selector, labels)
                || g.spec
                    .gateway_services
                    .iter()
                    .any(|h| member_of.contains(h)))
                && (!g.meta.gateway_semantics() || g.meta.namespace == namespace)
        })
    }

    /// Every Service a Gateway names in `gateway_services`.
    pub fn gateway_service_hosts(&self) -> impl Iterator<Item = &str> {
        self.gateways
            .iter()
            .flat_map(|g| g.spec.gateway_services.iter().map(String::as_str))
    }

    /// VirtualServices bound to `gateway` (`ns/name` or `mesh`) and visible to
    /// `proxy_ns`, in Istio order.
    pub fn virtual_services_for_gateway<'a>(
        &'a self,
        gateway: &str,
        proxy_ns: &str,
    ) -> impl Iterator<Item = &'a Arc<Config<VirtualService>>> + 'a {
        let idx = self
            .vs_by_gateway
            .get(gateway)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let proxy_ns = proxy_ns.to_string();
        idx.iter()
            .map(|i| &self.virtual_services[*i])
            .filter(move |vs| exported_to(&vs.spec.export_to, &vs.meta.namespace, &proxy_ns))
    }

    /// Every DestinationRule for exactly `host` (resolved), in Istio order.
    pub fn destination_rules_for_host<'a>(
        &'a self,
        host: &str,
    ) -> impl Iterator<Item = &'a Arc<Config<DestinationRule>>> + 'a {
        let idx = self.dr_by_host.get(host).map(Vec::as_slice).unwrap_or(&[]);
        idx.iter().map(|i| &self.destination_rules[*i])
    }

    /// The rule in force for traffic from a proxy in `proxy_ns` to `host` (a
    /// service in `service_ns`). An exact host wins over a wildcard host
    /// (`*.ns.svc.cluster.local`); among wildcards the longest suffix wins.
    pub fn destination_rule(
        &self,
        proxy_ns: &str,
        host: &str,
        service_ns: &str,
    ) -> Option<EffectiveRule> {
        let mut candidates: Vec<&str> = Vec::new();
        if self.dr_by_host.contains_key(host) {
            candidates.push(host);
        }
        let mut wildcards: Vec<&str> = self
            .dr_by_host
            .keys()
            .map(String::as_str)
            .filter(|h| h.starts_with('*') && host_matches(h, host))
            .collect();
        wildcards.sort_by_key(|h| std::cmp::Reverse(h.len()));
        candidates.extend(wildcards);
        for h in candidates {
            let visible: Vec<&Arc<Config<DestinationRule>>> = self
                .destination_rules_for_host(h)
                .filter(|dr| exported_to(&dr.spec.export_to, &dr.meta.namespace, proxy_ns))
                .collect();
            for ns in [proxy_ns, service_ns, ROOT_NAMESPACE] {
                let rules: Vec<_> = visible
                    .iter()
                    .filter(|dr| dr.meta.namespace == ns)
                    .collect();
                if rules.is_empty() {
                    continue;
                }
                let mut out = EffectiveRule {
                    traffic_policy: None,
                    subsets: Vec::new(),
                    sources: Vec::new(),
                };
                for dr in rules {
                    if out.traffic_policy.is_none() {
                        out.traffic_policy = dr.spec.traffic_policy.clone();
                    }
                    for s in &dr.spec.subsets {
                        if !out.subsets.iter().any(|o| o.name == s.name) {
                            out.subsets.push(s.clone());
                        }
                    }
                    out.sources.push(dr.meta.key());
                }
                return Some(out);
            }
        }
        None
    }

    /// Every subset any rule defines for `host` (resolved), with its labels: the
    /// union over namespaces, rules of `service_ns` first, then Istio order. EDS is
    /// shared by all proxies, so it carries every subset any proxy may route to.
    pub fn all_subsets(&self, host: &str, service_ns: &str) -> Vec<Subset> {
        let mut rules: Vec<&Arc<Config<DestinationRule>>> =
            self.destination_rules_for_host(host).collect();
        rules.sort_by_key(|dr| dr.meta.namespace != service_ns);
        let mut out: Vec<Subset> = Vec::new();
        for dr in rules {
            for s in &dr.spec.subsets {
                if !out.iter().any(|o| o.name == s.name) {
                    out.push(s.clone());
                }
            }
        }
        out
    }
}

/// Istio host matching: `*` matches everything, `*.suffix` matches names ending in
/// `.suffix` (and a narrower wildcard), otherwise equality (case-insensitive).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    let host = host.to_ascii_lowercase();
    if pattern == "*" {
        return true;
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return host.ends_with(suffix) && host.len() > suffix.len() || host == pattern;
    }
    pattern == host
}

/// Istio's host intersection (`host.Names.Intersection`): the more specific of two
/// hosts when one covers the other, else none.
pub fn host_intersection(a: &str, b: &str) -> Option<String> {
    if host_matches(a, b) {
        Some(b.to_ascii_lowercase())
    } else if host_matches(b, a) {
        Some(a.to_ascii_lowercase())
    } else {
        None
    }
}

/// An object's `spec` as `T`; on failure, the field (`spec.a.b`) and the reason.
pub(crate) fn deserialize_spec<T: serde::de::DeserializeOwned>(
    spec: serde_json::Value,
) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "spec".to_string()
        } else {
            format!("spec.{path}")
        };
        (field, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_rules() {
        assert!(host_matches("*", "a.b"));
        assert!(host_matches("*.imroc.cc", "cluster1.imroc.cc"));
        assert!(!host_matches("*.imroc.cc", "imroc.cc"));
        assert!(host_matches("*.imroc.cc", "*.a.imroc.cc"));
        assert_eq!(
            host_intersection("*.imroc.cc", "cluster1.imroc.cc").as_deref(),
            Some("cluster1.imroc.cc")
        );
        assert_eq!(host_intersection("*", "*").as_deref(), Some("*"));
        assert_eq!(host_intersection("a.com", "b.com"), None);
        assert_eq!(
            resolve_host("order", "base", "cluster.local"),
            "order.base.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("order.base.svc.cluster.local", "x", "cluster.local"),
            "order.base.svc.cluster.local"
        );
    }

    #[test]
    fn gateway_names() {
        assert_eq!(
            resolve_gateway_name("istio-system/cluster", "test"),
            "istio-system/cluster"
        );
        assert_eq!(
            resolve_gateway_name("frontend-gw", "base"),
            "base/frontend-gw"
        );
        assert_eq!(
            resolve_gateway_name("gw.ns.svc.cluster.local", "x"),
            "ns/gw"
        );
        assert_eq!(resolve_gateway_name("mesh", "x"), "mesh");
    }

    #[test]
    fn export_rules() {
        assert!(exported_to(&[], "a", "b"));
        assert!(exported_to(&["*".into()], "a", "b"));
        assert!(exported_to(&[".".into()], "a", "a"));
        assert!(!exported_to(&[".".into()], "a", "b"));
        assert!(exported_to(&["b".into()], "a", "b"));
    }

    #[test]
    fn istio_order_by_time_then_name() {
        let m = |name: &str, ts: Option<&str>| Meta {
            name: name.into(),
            namespace: "ns".into(),
            creation_timestamp: ts.map(Into::into),
            origin: String::new(),
            api_version: String::new(),
        };
        let old = m("zzz", Some("2024-01-01T00:00:00Z"));
        let new = m("aaa", Some("2024-01-02T00:00:00Z"));
        assert_eq!(old.istio_order(&new), std::cmp::Ordering::Less);
        assert_eq!(
            m("a", None).istio_order(&m("b", None)),
            std::cmp::Ordering::Less
        );
        assert_eq!(m("b", None).istio_order(&old), std::cmp::Ordering::Less);
    }
}
