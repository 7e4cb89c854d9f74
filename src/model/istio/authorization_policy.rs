//! `security.istio.io` `AuthorizationPolicy` (v1 and v1beta1 share one schema):
//! who may call a workload or a gateway, as Istio's API reference and
//! "Authorization Policy Conditions" define it. Types, validation, which
//! policies apply to a proxy (Istio's `pilot/pkg/model/authorization.go`), and
//! the fail-closed stand-in for a policy that failed validation. The Envoy RBAC
//! filters are built in `translate::authz`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::common::{labels_match, WorkloadSelector};
use super::{Config, Meta};

/// The annotation that turns a policy into shadow rules (Istio's
/// `istio.io/dry-run`).
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";
/// The label Istio (and crossmesh, DESIGN §5) puts on the proxies of a Gateway
/// API `Gateway`; a `targetRefs` entry of kind `Gateway` selects by it.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// The API group of Gateway API `Gateway`.
pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";

/// `AuthorizationPolicy.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// Absent or empty: every workload of the namespace (of the mesh in the
    /// root namespace). Exclusive with `targetRef`/`targetRefs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<TargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub action: Action,
    /// CUSTOM's ext_authz provider; rejected (no providers in the mesh file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    /// From the `istio.io/dry-run` annotation: the rules are shadow rules.
    #[serde(skip_deserializing, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    /// Not written by anyone: the stand-in crossmesh puts in force for a policy
    /// that failed validation (`fail_closed`).
    #[serde(skip_deserializing, skip_serializing_if = "is_false")]
    pub fail_closed: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `AuthorizationPolicy.ExtensionProvider`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Provider {
    #[serde(default)]
    pub name: String,
}

/// `AuthorizationPolicy.Action`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

/// Istio's checks of a policy's `selector` and `targetRef`/`targetRefs`,
/// shared by the kinds that select workloads that way (AuthorizationPolicy,
/// Telemetry): no empty label key, no wildcard label value, not a selector
/// and targets together, not `targetRef` and `targetRefs` together. Returns
/// every target with its field path, for the kind checks each policy makes.
pub fn selector_and_targets<'a>(
    selector: Option<&WorkloadSelector>,
    target_ref: Option<&'a TargetRef>,
    target_refs: &'a [TargetRef],
    err: &mut dyn FnMut(String, String),
) -> Vec<(String, &'a TargetRef)> {
    if let Some(sel) = selector {
        for (k, v) in &sel.match_labels {
            if k.is_empty() {
                err(
                    "spec.selector.matchLabels".into(),
                    "a label key must not be empty".into(),
                );
            }
            if v.contains('*') {
                err(
                    format!("spec.selector.matchLabels.{k}"),
                    "wildcards are not allowed in a workload selector".into(),
                );
            }
        }
    }
    let has_refs = target_ref.is_some() || !target_refs.is_empty();
    if has_refs && selector.is_some() {
        err(
            "spec.selector".into(),
            "selector and targetRef/targetRefs are mutually exclusive (Istio)".into(),
        );
    }
    if target_ref.is_some() && !target_refs.is_empty() {
        err(
            "spec.targetRef".into(),
            "targetRef and targetRefs cannot both be set (Istio)".into(),
        );
    }
    target_ref
        .map(|r| ("spec.targetRef".to_string(), r))
        .into_iter()
        .chain(
            target_refs
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)),
        )
        .collect()
}

/// `PolicyTargetReference`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// `Rule`: matches when any `from`, any `to` and every `when` match (an
/// absent list matches everything).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<From>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<To>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct From {
    #[serde(default)]
    pub source: Source,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct To {
    #[serde(default)]
    pub operation: Operation,
}

/// `Source`: every list set must match (AND); within a list any value (OR);
/// a `not` list must match none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
}

/// `Operation`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// `Condition` (`when`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// A `when` key, parsed (Istio's "Authorization Policy Conditions").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionKey {
    /// `request.headers[NAME]`.
    RequestHeader(String),
    SourceIp,
    RemoteIp,
    SourceNamespace,
    SourcePrincipal,
    RequestPrincipal,
    RequestAudiences,
    RequestPresenter,
    /// `request.auth.claims[a][b]`: the claim path.
    RequestClaims(Vec<String>),
    DestinationIp,
    DestinationPort,
    ConnectionSni,
}

impl ConditionKey {
    /// Parse a key; `Err` says why it is not one crossmesh supports.
    pub fn parse(key: &str) -> Result<ConditionKey, String> {
        Ok(match key {
            "source.ip" => ConditionKey::SourceIp,
            "remote.ip" => ConditionKey::RemoteIp,
            "source.namespace" => ConditionKey::SourceNamespace,
            "source.principal" => ConditionKey::SourcePrincipal,
            "request.auth.principal" => ConditionKey::RequestPrincipal,
            "request.auth.audiences" => ConditionKey::RequestAudiences,
            "request.auth.presenter" => ConditionKey::RequestPresenter,
            "destination.ip" => ConditionKey::DestinationIp,
            "destination.port" => ConditionKey::DestinationPort,
            "connection.sni" => ConditionKey::ConnectionSni,
            k if k.starts_with("request.headers") => {
                let name = bracketed(&k["request.headers".len()..])
                    .filter(|n| n.len() == 1 && header_name_ok(&n[0]))
                    .ok_or_else(|| {
                        format!("{k:?}: expected request.headers[NAME] with an HTTP header name")
                    })?;
                ConditionKey::RequestHeader(name[0].clone())
            }
            k if k.starts_with("request.auth.claims") => {
                let path = bracketed(&k["request.auth.claims".len()..])
                    .filter(|n| !n.is_empty() && n.iter().all(|c| !c.is_empty()))
                    .ok_or_else(|| {
                        format!("{k:?}: expected request.auth.claims[NAME] or nested [a][b]")
                    })?;
                ConditionKey::RequestClaims(path)
            }
            k if k.starts_with("experimental.envoy.filters.") => {
                return Err(format!(
                    "{k:?}: experimental.envoy.filters.* conditions (raw Envoy metadata) are not supported by crossmesh"
                ))
            }
            k => {
                return Err(format!(
                    "unknown condition key {k:?} (supported: source.ip, remote.ip, source.namespace, source.principal, request.headers[NAME], request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[NAME], destination.ip, destination.port, connection.sni)"
                ))
            }
        })
    }

    /// Keys only an HTTP request has (Istio skips them on TCP chains).
    pub fn http_only(&self) -> bool {
        matches!(
            self,
            ConditionKey::RequestHeader(_)
                | ConditionKey::RequestPrincipal
                | ConditionKey::RequestAudiences
                | ConditionKey::RequestPresenter
                | ConditionKey::RequestClaims(_)
        )
    }
}

/// An HTTP header name (RFC 7230 token), or a pseudo-header (`:authority`),
/// as Envoy's header matcher accepts.
fn header_name_ok(n: &str) -> bool {
    let token = n.strip_prefix(':').unwrap_or(n);
    !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `[a][b]...` as `["a", "b"]`; `None` when the shape is wrong.
fn bracketed(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        let name = &inner[..end];
        if name.contains('[') {
            return None;
        }
        out.push(name.to_string());
        rest = &inner[end + 1..];
    }
    (!out.is_empty()).then_some(out)
}

/// An IP or CIDR (`10.0.0.1`, `10.0.0.0/16`, IPv6 too) as (address, prefix
/// length); `None` when it is neither.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u32)> {
    match s.split_once('/') {
        Some((ip, len)) => {
            let ip: IpAddr = ip.parse().ok()?;
            let len: u32 = len.parse().ok()?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            (len <= max).then_some((ip, len))
        }
        None => {
            let ip: IpAddr = s.parse().ok()?;
            Some((ip, if ip.is_ipv4() { 32 } else { 128 }))
        }
    }
}

/// Istio's string forms: `*` alone, a `*` prefix (`*.html`: suffix match) or a
/// `*` suffix (`/api/*`: prefix match); no other `*`.
pub fn wildcard_ok(v: &str) -> bool {
    if v == "*" {
        return true;
    }
    let inner = v
        .strip_prefix('*')
        .or_else(|| v.strip_suffix('*'))
        .unwrap_or(v);
    // `*x*` and `**` keep a `*` here: not one of Istio's forms.
    !inner.contains('*')
}

impl AuthorizationPolicy {
    /// The selector's labels; `None` for a namespace- or mesh-wide policy.
    pub fn selector_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.selector
            .as_ref()
            .map(|s| &s.match_labels)
            .filter(|l| !l.is_empty())
    }

    /// `targetRef` and `targetRefs` together.
    pub fn all_target_refs(&self) -> impl Iterator<Item = &TargetRef> {
        self.target_ref.iter().chain(self.target_refs.iter())
    }

    /// Every reason the policy cannot be honoured, as (field, reason); empty
    /// when it is valid. Istio's `ValidateAuthorizationPolicy` plus what
    /// crossmesh does not implement.
    pub fn problems(&self, namespace: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut err = |f: String, r: String| out.push((f, r));
        let refs = super::authorization_policy::selector_and_targets(
            self.selector.as_ref(),
            self.target_ref.as_ref(),
            &self.target_refs,
            &mut err,
        );
        for (f, r) in refs {
            match (r.group.as_str(), r.kind.as_str()) {
                (GATEWAY_API_GROUP, "Gateway") => {}
                (GATEWAY_API_GROUP, "GatewayClass") => err(
                    format!("{f}.kind"),
                    "GatewayClass targets are not supported by crossmesh (use a Gateway target or a selector)".into(),
                ),
                ("" | "core", "Service") | ("networking.istio.io", "ServiceEntry") => err(
                    format!("{f}.kind"),
                    format!("{} targets apply to waypoint proxies (ambient mode), which crossmesh does not run; use a selector", r.kind),
                ),
                (g, k) => err(
                    format!("{f}.kind"),
                    format!("unsupported target {g}/{k} (Istio supports gateway.networking.k8s.io Gateway and GatewayClass, Service and ServiceEntry for waypoints)"),
                ),
            }
            if r.name.is_empty() {
                err(format!("{f}.name"), "a target needs a name".into());
            }
            if !r.namespace.is_empty() && r.namespace != namespace {
                err(
                    format!("{f}.namespace"),
                    format!("a target must be in the policy's namespace {namespace:?} (Istio)"),
                );
            }
        }
        match self.action {
            Action::Custom => err(
                "spec.action".into(),
                "CUSTOM (ext_authz) is not supported by crossmesh: the mesh file has no extension providers".into(),
            ),
            _ if self.provider.is_some() => err(
                "spec.provider".into(),
                "provider is only for action CUSTOM (Istio)".into(),
            ),
            _ => {}
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("spec.rules[{i}]");
            for (j, from) in rule.from.iter().enumerate() {
                let f = format!("{at}.from[{j}].source");
                let s = &from.source;
                let lists: [(&str, &Vec<String>); 12] = [
                    ("principals", &s.principals),
                    ("notPrincipals", &s.not_principals),
                    ("requestPrincipals", &s.request_principals),
                    ("notRequestPrincipals", &s.not_request_principals),
                    ("namespaces", &s.namespaces),
                    ("notNamespaces", &s.not_namespaces),
                    ("serviceAccounts", &s.service_accounts),
                    ("notServiceAccounts", &s.not_service_accounts),
                    ("ipBlocks", &s.ip_blocks),
                    ("notIpBlocks", &s.not_ip_blocks),
                    ("remoteIpBlocks", &s.remote_ip_blocks),
                    ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
                ];
                if lists.iter().all(|(_, l)| l.is_empty()) {
                    err(
                        f.clone(),
                        "a source must set at least one field (Istio)".into(),
                    );
                }
                for (name, l) in &lists[..8] {
                    for (k, v) in l.iter().enumerate() {
                        if v.is_empty() {
                            err(format!("{f}.{name}[{k}]"), "empty value".into());
                        } else if !wildcard_ok(v) {
                            err(
                                format!("{f}.{name}[{k}]"),
                                format!(
                                    "{v:?}: `*` is allowed only alone, as a prefix or as a suffix"
                                ),
                            );
                        }
                    }
                }
                if (!s.service_accounts.is_empty() || !s.not_service_accounts.is_empty())
                    && (!s.principals.is_empty() || !s.not_principals.is_empty())
                {
                    err(
                        format!("{f}.serviceAccounts"),
                        "cannot be set with principals or notPrincipals (Istio)".into(),
                    );
                }
                for (name, l) in [
                    ("serviceAccounts", &s.service_accounts),
                    ("notServiceAccounts", &s.not_service_accounts),
                ] {
                    for (k, v) in l.iter().enumerate() {
                        if v.contains('*') || v.matches('/').count() > 1 {
                            err(format!("{f}.{name}[{k}]"), format!("{v:?}: expected NAME or NAMESPACE/NAME without wildcards (Istio)"));
                        }
                    }
                }
                for (name, l) in &lists[8..] {
                    for (k, v) in l.iter().enumerate() {
                        if parse_cidr(v).is_none() {
                            err(
                                format!("{f}.{name}[{k}]"),
                                format!("{v:?} is not an IP address or CIDR block"),
                            );
                        }
                    }
                }
            }
            for (j, to) in rule.to.iter().enumerate() {
                let f = format!("{at}.to[{j}].operation");
                let o = &to.operation;
                let lists: [(&str, &Vec<String>); 8] = [
                    ("hosts", &o.hosts),
                    ("notHosts", &o.not_hosts),
                    ("methods", &o.methods),
                    ("notMethods", &o.not_methods),
                    ("paths", &o.paths),
                    ("notPaths", &o.not_paths),
                    ("ports", &o.ports),
                    ("notPorts", &o.not_ports),
                ];
                if lists.iter().all(|(_, l)| l.is_empty()) {
                    err(
                        f.clone(),
                        "an operation must set at least one field (Istio)".into(),
                    );
                }
                for (name, l) in &lists[..6] {
                    for (k, v) in l.iter().enumerate() {
                        let field = format!("{f}.{name}[{k}]");
                        if v.is_empty() {
                            err(field, "empty value".into());
                        } else if name.ends_with("aths") && (v.contains('{') || v.contains('}')) {
                            err(field, format!("{v:?}: path templates ({{*}}, {{**}}) are not supported by crossmesh"));
                        } else if !wildcard_ok(v) {
                            err(
                                field,
                                format!(
                                    "{v:?}: `*` is allowed only alone, as a prefix or as a suffix"
                                ),
                            );
                        }
                    }
                }
                for (name, l) in &lists[6..] {
                    for (k, v) in l.iter().enumerate() {
                        if !port_ok(v) {
                            err(
                                format!("{f}.{name}[{k}]"),
                                format!("{v:?} is not a port in 0..65535"),
                            );
                        }
                    }
                }
            }
            for (j, c) in rule.when.iter().enumerate() {
                let f = format!("{at}.when[{j}]");
                let key = match ConditionKey::parse(&c.key) {
                    Ok(k) => k,
                    Err(e) => {
                        err(format!("{f}.key"), e);
                        continue;
                    }
                };
                if c.values.is_empty() && c.not_values.is_empty() {
                    err(
                        f.clone(),
                        "a condition needs values or notValues (Istio)".into(),
                    );
                }
                for (name, l) in [("values", &c.values), ("notValues", &c.not_values)] {
                    for (k, v) in l.iter().enumerate() {
                        let field = format!("{f}.{name}[{k}]");
                        let bad = match &key {
                            ConditionKey::SourceIp
                            | ConditionKey::RemoteIp
                            | ConditionKey::DestinationIp => parse_cidr(v)
                                .is_none()
                                .then(|| format!("{v:?} is not an IP address or CIDR block")),
                            ConditionKey::DestinationPort => {
                                (!port_ok(v)).then(|| format!("{v:?} is not a port in 0..65535"))
                            }
                            _ => (!wildcard_ok(v)).then(|| {
                                format!(
                                    "{v:?}: `*` is allowed only alone, as a prefix or as a suffix"
                                )
                            }),
                        };
                        if let Some(b) = bad {
                            err(field, b);
                        }
                    }
                }
            }
        }
        out
    }
}

fn port_ok(v: &str) -> bool {
    v.parse::<u32>().is_ok_and(|p| p <= 65535)
}

/// Istio's `strconv.ParseBool` forms of the dry-run annotation.
pub fn parse_dry_run(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The `istio.io/dry-run` annotation of a document: `Err((field, reason))` for
/// a value that is not a boolean (Istio logs and ignores it; crossmesh rejects
/// the policy so nobody believes a policy is a dry run when it is not).
pub fn dry_run(value: &serde_json::Value) -> Result<bool, (String, String)> {
    let Some(v) = value
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(DRY_RUN_ANNOTATION))
    else {
        return Ok(false);
    };
    v.as_str().and_then(parse_dry_run).ok_or_else(|| {
        (
            format!("metadata.annotations.{DRY_RUN_ANNOTATION}"),
            format!("{v} is not a boolean (true or false)"),
        )
    })
}

/// What a proxy is, for policy selection: its namespace and labels.
#[derive(Debug, Clone, Copy)]
pub struct Workload<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// Whether `p` applies to `w`, as Istio's `ListAuthorizationPolicies`: policies
/// of the root namespace and of the workload's namespace; with `targetRefs`,
/// the Gateway API gateways named (in the policy's namespace); else the
/// selector (none: all), where a root-namespace selector selects matching
/// workloads of every namespace.
pub fn applies_to(p: &Config<AuthorizationPolicy>, root_namespace: &str, w: Workload<'_>) -> bool {
    let ns = p.meta.namespace.as_str();
    if ns != root_namespace && ns != w.namespace {
        return false;
    }
    let mut refs = p.spec.all_target_refs().peekable();
    if refs.peek().is_some() {
        return ns == w.namespace
            && refs
                .any(|r| r.kind == "Gateway" && w.labels.get(GATEWAY_NAME_LABEL) == Some(&r.name));
    }
    p.spec
        .selector_labels()
        .is_none_or(|sel| labels_match(sel, w.labels))
}

/// The policies in `policies` that apply to `w`, in their order.
pub fn for_workload<'a>(
    policies: &'a [Arc<Config<AuthorizationPolicy>>],
    root_namespace: &str,
    w: Workload<'_>,
) -> Vec<&'a Arc<Config<AuthorizationPolicy>>> {
    policies
        .iter()
        .filter(|p| applies_to(p, root_namespace, w))
        .collect()
}

/// The reason appended to a rejected policy's problems, saying what crossmesh
/// enforces instead (see `fail_closed`).
pub fn fail_closed_note(stand_in: &AuthorizationPolicy) -> &'static str {
    match stand_in.action {
        Action::Allow => "until it is fixed, it allows nothing: the workloads it selects accept only what other ALLOW policies allow (fail closed)",
        _ => "until it is fixed, the workloads it selects are denied all requests (fail closed)",
    }
}

/// `fail_closed` for a raw document from `origin`, with the metadata read as
/// `parse_object` reads it (namespace `default` when absent).
pub fn stand_in(origin: &str, value: &serde_json::Value) -> Option<Config<AuthorizationPolicy>> {
    let text = |k: &str| {
        value
            .get("metadata")
            .and_then(|m| m.get(k))
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let meta = Meta {
        name: text("name").unwrap_or_else(|| "<no name>".into()),
        namespace: text("namespace").unwrap_or_else(|| "default".into()),
        creation_timestamp: None,
        origin: origin.to_string(),
        api_version: value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string(),
    };
    fail_closed(meta, value)
}

/// For a rejected document: the stand-in to put in force (`fail_closed`), with
/// what it does appended to every reason in `errs` so `/debug/configz` and
/// `crossmesh validate` say it. `None` (and `errs` untouched) for documents
/// that need none.
pub fn rejected(
    origin: &str,
    value: &serde_json::Value,
    errs: &mut [super::Rejection],
) -> Option<Config<AuthorizationPolicy>> {
    let stand_in = stand_in(origin, value)?;
    let note = fail_closed_note(&stand_in.spec);
    for e in errs.iter_mut() {
        e.reason = format!("{}; {note}", e.reason);
    }
    Some(stand_in)
}

/// The policy crossmesh enforces in place of an `AuthorizationPolicy` document
/// that failed validation, so that rejecting it never opens traffic the
/// author meant to close (issue 12; docs/SECURITY.md "Authorization"):
///
/// - a rejected DENY, CUSTOM (ext_authz cannot be honoured) or a policy whose
///   action cannot be read: DENY everything to the workloads it selects;
/// - a rejected ALLOW: an ALLOW that matches nothing for those workloads (as
///   Istio treats an ALLOW rule it cannot build): they accept only what other
///   ALLOW policies allow, and nothing if there are none;
/// - AUDIT, or a policy marked dry-run: nothing (neither ever decides).
///
/// The scope is read from the raw document as far as it can be: a well-formed
/// `selector.matchLabels` or Gateway `targetRefs` keep it narrow; anything
/// unreadable widens it to the whole namespace (the mesh, in the root
/// namespace), denying more rather than less. `None` for other kinds.
pub fn fail_closed(meta: Meta, value: &serde_json::Value) -> Option<Config<AuthorizationPolicy>> {
    let group = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .and_then(|v| v.split_once('/'))
        .map(|(g, _)| g);
    if value.get("kind").and_then(|k| k.as_str()) != Some("AuthorizationPolicy")
        || group != Some(super::SECURITY_GROUP)
    {
        return None;
    }
    let dry_run = value
        .pointer(&format!(
            "/metadata/annotations/{}",
            DRY_RUN_ANNOTATION.replace('/', "~1")
        ))
        .and_then(|v| v.as_str())
        .and_then(parse_dry_run)
        .unwrap_or(false);
    let spec = value.get("spec");
    let action = match spec.and_then(|s| s.get("action")) {
        None => Action::Allow,
        Some(a) => serde_json::from_value(a.clone()).unwrap_or(Action::Deny),
    };
    if dry_run || action == Action::Audit {
        return None;
    }
    let selector: Option<WorkloadSelector> = spec
        .and_then(|s| s.get("selector"))
        .and_then(|s| s.get("matchLabels"))
        .and_then(|m| serde_json::from_value::<BTreeMap<String, String>>(m.clone()).ok())
        .filter(|m| m.iter().all(|(k, v)| !k.is_empty() && !v.contains('*')))
        .map(|match_labels| WorkloadSelector { match_labels });
    let refs: Vec<TargetRef> = spec
        .into_iter()
        .flat_map(|s| {
            let one = s.get("targetRef").cloned().into_iter();
            let many = s
                .get("targetRefs")
                .and_then(|r| r.as_array().cloned())
                .unwrap_or_default();
            one.chain(many)
        })
        .filter_map(|r| serde_json::from_value::<TargetRef>(r).ok())
        .filter(|r| r.group == GATEWAY_API_GROUP && r.kind == "Gateway" && !r.name.is_empty())
        .collect();
    let any_refs =
        spec.is_some_and(|s| s.get("targetRef").is_some() || s.get("targetRefs").is_some());
    let has_selector = spec.is_some_and(|s| s.get("selector").is_some());
    let (selector, target_refs) = match (any_refs, has_selector) {
        // Both written (invalid): which one was meant is unknown; the whole
        // namespace covers either.
        (true, true) => (None, Vec::new()),
        // No readable Gateway target: the whole namespace.
        (true, false) => (None, refs),
        (false, _) => (selector, Vec::new()),
    };
    let (action, rules) = match action {
        // One empty rule matches every request: deny all.
        Action::Deny | Action::Custom => (Action::Deny, vec![Rule::default()]),
        // No rules: an ALLOW that matches nothing.
        _ => (Action::Allow, Vec::new()),
    };
    Some(Config {
        meta,
        spec: AuthorizationPolicy {
            selector,
            target_refs,
            action,
            rules,
            fail_closed: true,
            ..Default::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_keys() {
        assert_eq!(
            ConditionKey::parse("request.headers[x-user]"),
            Ok(ConditionKey::RequestHeader("x-user".into()))
        );
        assert_eq!(
            ConditionKey::parse("request.auth.claims[groups][admin]"),
            Ok(ConditionKey::RequestClaims(vec![
                "groups".into(),
                "admin".into()
            ]))
        );
        assert!(ConditionKey::parse("request.headers[]").is_err());
        assert!(ConditionKey::parse("request.headers[bad name]").is_err());
        assert!(ConditionKey::parse("request.headers").is_err());
        assert!(ConditionKey::parse("request.auth.claims[a]b").is_err());
        assert!(ConditionKey::parse("experimental.envoy.filters.a.b[c]")
            .unwrap_err()
            .contains("experimental"));
        assert!(ConditionKey::parse("source.user").is_err());
    }

    #[test]
    fn dry_run_annotation_is_read_and_a_bad_value_rejects() {
        use crate::model::istio::{parse_object, IstioObject};
        let doc = |ann: &str| -> serde_json::Value {
            serde_saphyr::from_str(&format!(
                "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: base{ann}}}\nspec: {{action: DENY, rules: [{{}}]}}\n"
            ))
            .expect("yaml")
        };
        let dry = |ann: &str| match parse_object("t", &doc(ann)) {
            Ok(IstioObject::AuthorizationPolicy(c)) => Ok(c.spec.dry_run),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e[0].field.clone()),
        };
        assert_eq!(dry(""), Ok(false));
        assert_eq!(dry(", annotations: {istio.io/dry-run: 'true'}"), Ok(true));
        assert_eq!(dry(", annotations: {istio.io/dry-run: 'False'}"), Ok(false));
        assert_eq!(
            dry(", annotations: {istio.io/dry-run: 'yes'}"),
            Err("metadata.annotations.istio.io/dry-run".to_string())
        );
    }

    #[test]
    fn wildcards_and_cidrs() {
        for ok in ["*", "/api/*", "*.html", "/exact"] {
            assert!(wildcard_ok(ok), "{ok}");
        }
        for bad in ["/a/*/b", "**", "*a*", "/a*b"] {
            assert!(!wildcard_ok(bad), "{bad}");
        }
        assert_eq!(parse_cidr("10.0.0.0/8").map(|c| c.1), Some(8));
        assert_eq!(parse_cidr("10.1.2.3").map(|c| c.1), Some(32));
        assert_eq!(parse_cidr("::1").map(|c| c.1), Some(128));
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("10.0.0").is_none());
    }

    fn meta(ns: &str) -> Meta {
        Meta {
            name: "p".into(),
            namespace: ns.into(),
            creation_timestamp: None,
            origin: "t".into(),
            api_version: "security.istio.io/v1".into(),
        }
    }

    #[test]
    fn a_rejected_deny_denies_its_scope_and_a_rejected_allow_allows_nothing() {
        let deny: serde_json::Value = serde_json::json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "spec": {"action": "DENY", "selector": {"matchLabels": {"app": "web"}}, "rules": [{"bogus": 1}]}});
        let c = fail_closed(meta("base"), &deny).expect("stand-in");
        assert_eq!(c.spec.action, Action::Deny);
        assert_eq!(c.spec.rules, vec![Rule::default()]);
        assert_eq!(
            c.spec.selector_labels().map(|l| l.len()),
            Some(1),
            "the readable selector keeps the scope"
        );
        let allow = serde_json::json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "spec": {"selector": {"matchLabels": "nonsense"}, "rules": [{"to": [{"operation": {"paths": ["/a/*/b"]}}]}]}});
        let c = fail_closed(meta("base"), &allow).expect("stand-in");
        assert_eq!(c.spec.action, Action::Allow);
        assert!(c.spec.rules.is_empty());
        assert!(
            c.spec.selector.is_none(),
            "an unreadable selector widens to the namespace"
        );
        let both = serde_json::json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "spec": {"action": "DENY", "selector": {"matchLabels": {"app": "web"}},
                     "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"}]}});
        let c = fail_closed(meta("base"), &both).expect("stand-in");
        assert!(
            c.spec.selector.is_none() && c.spec.target_refs.is_empty(),
            "both scopes: the namespace"
        );
        let unknown = serde_json::json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "spec": {"action": "REJECT"}});
        assert_eq!(
            fail_closed(meta("base"), &unknown).map(|c| c.spec.action),
            Some(Action::Deny)
        );
        let audit = serde_json::json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "spec": {"action": "AUDIT", "rules": 3}});
        assert!(fail_closed(meta("base"), &audit).is_none());
        let dry = serde_json::json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"annotations": {"istio.io/dry-run": "true"}}, "spec": {"action": "DENY", "rules": 3}});
        assert!(fail_closed(meta("base"), &dry).is_none());
        let other = serde_json::json!({"kind": "PeerAuthentication", "spec": {}});
        assert!(fail_closed(meta("base"), &other).is_none());
    }

    #[test]
    fn selection_by_namespace_selector_root_and_gateway_target() {
        let mk = |ns: &str, spec: AuthorizationPolicy| Config {
            meta: meta(ns),
            spec,
        };
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let gw_labels: BTreeMap<String, String> =
            [(GATEWAY_NAME_LABEL.to_string(), "edge".to_string())].into();
        let w = Workload {
            namespace: "base",
            labels: &labels,
        };
        let sel = |v: &str| {
            Some(WorkloadSelector {
                match_labels: [("app".to_string(), v.to_string())].into(),
            })
        };
        assert!(applies_to(
            &mk("base", AuthorizationPolicy::default()),
            "istio-system",
            w
        ));
        assert!(!applies_to(
            &mk("other", AuthorizationPolicy::default()),
            "istio-system",
            w
        ));
        assert!(applies_to(
            &mk("istio-system", AuthorizationPolicy::default()),
            "istio-system",
            w
        ));
        assert!(applies_to(
            &mk(
                "istio-system",
                AuthorizationPolicy {
                    selector: sel("web"),
                    ..Default::default()
                }
            ),
            "istio-system",
            w
        ));
        assert!(!applies_to(
            &mk(
                "base",
                AuthorizationPolicy {
                    selector: sel("db"),
                    ..Default::default()
                }
            ),
            "istio-system",
            w
        ));
        let target = AuthorizationPolicy {
            target_refs: vec![TargetRef {
                group: GATEWAY_API_GROUP.into(),
                kind: "Gateway".into(),
                name: "edge".into(),
                namespace: String::new(),
            }],
            ..Default::default()
        };
        assert!(
            !applies_to(&mk("base", target.clone()), "istio-system", w),
            "a targeted policy ignores sidecars"
        );
        let gw = Workload {
            namespace: "base",
            labels: &gw_labels,
        };
        assert!(applies_to(&mk("base", target.clone()), "istio-system", gw));
        assert!(
            !applies_to(&mk("istio-system", target), "istio-system", gw),
            "targets stay in the policy's namespace"
        );
    }
}
