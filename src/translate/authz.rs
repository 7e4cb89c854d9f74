//! `AuthorizationPolicy` as Envoy RBAC filters, as istiod builds them
//! (`pilot/pkg/security/authz/builder` and `model`): one filter per action in
//! Istio's order AUDIT (Envoy `LOG`), DENY, ALLOW (CUSTOM is rejected at
//! validation), each holding one Envoy policy per rule named
//! `ns[NS]-policy[NAME]-rule[I]`; dry-run policies (`istio.io/dry-run`) go to
//! `shadow_rules` with Istio's stat prefixes. HTTP listeners get
//! `envoy.filters.http.rbac`, TCP chains `envoy.filters.network.rbac` (stat
//! prefix `tcp.`), where HTTP-only fields follow Istio's rule: an ALLOW rule that
//! needs one is left out (matches nothing), a DENY or AUDIT rule drops the field
//! (and so matches more).
//!
//! The RBAC `policies` map is encoded sorted by name (`encode_rbac`): prost
//! encodes a `HashMap` in its random order, which would give the same config a
//! new content version at every push.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::{filter::ConfigType as FilterConfig, Filter};
use envoy_types::pb::envoy::config::rbac::v3::{
    permission::{Rule as PermRule, Set as PermSet},
    principal::{Authenticated, Identifier, Set as IdSet},
    rbac::Action as RbacAction,
    Permission, Policy, Principal, Rbac as RbacRules, SourcedMetadata,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, HeaderMatcher,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter::ConfigType as HttpFilterConfig, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    list_matcher, metadata_matcher::path_segment::Segment, metadata_matcher::PathSegment,
    path_matcher, string_matcher::MatchPattern, value_matcher, ListMatcher, MetadataMatcher,
    OrMatcher, PathMatcher, RegexMatcher, StringMatcher, ValueMatcher,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use super::proto::u32_value;
use super::security::{JWT_FILTER, JWT_PAYLOAD_KEY};
use crate::model::istio::authorization_policy::{
    parse_cidr, Action, AuthorizationPolicy, ConditionKey, Rule,
};
use crate::model::istio::Config;

pub const HTTP_RBAC_FILTER: &str = "envoy.filters.http.rbac";
pub const NETWORK_RBAC_FILTER: &str = "envoy.filters.network.rbac";
/// Istio's stat prefix of the network RBAC filter (`RBACTCPFilterStatPrefix`).
pub const TCP_STAT_PREFIX: &str = "tcp.";
/// Istio's `shadow_rules_stat_prefix` of dry-run ALLOW and DENY policies: Envoy
/// counts `<prefix>shadow_allowed` / `<prefix>shadow_denied`.
pub const DRY_RUN_ALLOW_PREFIX: &str = "istio_dry_run_allow_";
pub const DRY_RUN_DENY_PREFIX: &str = "istio_dry_run_deny_";
const SPIFFE_PREFIX: &str = "spiffe://";
/// Istio's stand-in for the local trust domain in policies.
const CLUSTER_LOCAL: &str = "cluster.local";

/// An HTTP-only operation field: its values, its `not` values, and how one
/// value becomes a permission.
type HttpField<'a> = (
    &'a Vec<String>,
    &'a Vec<String>,
    &'a dyn Fn(&str) -> Permission,
);

/// The policies in force for one proxy, grouped for the builder.
pub struct Authz<'a> {
    policies: Vec<&'a Config<AuthorizationPolicy>>,
    trust_domain: &'a str,
}

/// The RBAC rules of one action: enforced and shadow (dry-run) policies.
struct Built {
    action: RbacAction,
    enforce: Option<BTreeMap<String, Policy>>,
    shadow: Option<BTreeMap<String, Policy>>,
}

impl<'a> Authz<'a> {
    pub fn new(policies: Vec<&'a Config<AuthorizationPolicy>>, trust_domain: &'a str) -> Self {
        Authz {
            policies,
            trust_domain,
        }
    }

    /// AUDIT, DENY, ALLOW: the actions with at least one policy.
    fn build(&self, tcp: bool) -> Vec<Built> {
        [
            (Action::Audit, RbacAction::Log),
            (Action::Deny, RbacAction::Deny),
            (Action::Allow, RbacAction::Allow),
        ]
        .into_iter()
        .filter_map(|(action, rbac)| {
            let ps: Vec<_> = self
                .policies
                .iter()
                .filter(|p| p.spec.action == action)
                .collect();
            if ps.is_empty() {
                return None;
            }
            let mut enforce = None;
            let mut shadow = None;
            for p in ps {
                let target = if p.spec.dry_run {
                    shadow.get_or_insert_with(BTreeMap::new)
                } else {
                    enforce.get_or_insert_with(BTreeMap::new)
                };
                let name = |i: usize| {
                    format!("ns[{}]-policy[{}]-rule[{i}]", p.meta.namespace, p.meta.name)
                };
                if p.spec.rules.is_empty() {
                    // Istio's `rbacPolicyMatchNever`: an ALLOW without rules
                    // allows nothing, a DENY without rules denies nothing.
                    target.insert(name(0), match_never());
                }
                for (i, rule) in p.spec.rules.iter().enumerate() {
                    if let Some(policy) = self.rule(rule, &p.meta.namespace, action, tcp) {
                        target.insert(name(i), policy);
                    }
                }
            }
            Some(Built {
                action: rbac,
                enforce,
                shadow,
            })
        })
        .collect()
    }

    /// The HTTP RBAC filters, in evaluation order.
    pub fn http_filters(&self) -> Vec<HttpFilter> {
        self.build(false)
            .into_iter()
            .map(|b| HttpFilter {
                name: HTTP_RBAC_FILTER.into(),
                config_type: Some(HttpFilterConfig::TypedConfig(filter_any::<HttpRbac>(
                    &b,
                    &[],
                ))),
                ..Default::default()
            })
            .collect()
    }

    /// The network RBAC filters for TCP chains (ahead of the TCP proxy).
    pub fn network_filters(&self) -> Vec<Filter> {
        self.build(true)
            .into_iter()
            .map(|b| Filter {
                name: NETWORK_RBAC_FILTER.into(),
                // NetworkRbac.stat_prefix is field 3.
                config_type: Some(FilterConfig::TypedConfig(filter_any::<NetworkRbac>(
                    &b,
                    &[(3, TCP_STAT_PREFIX)],
                ))),
            })
            .collect()
    }

    /// One rule as an Envoy policy (Istio's `model.New` + `Generate`): any
    /// `to` (each the AND of its fields and the `when` permissions) and any
    /// `from` (each the AND of its fields and the `when` principals). `None`:
    /// an ALLOW rule that needs an HTTP-only field on a TCP chain.
    fn rule(&self, rule: &Rule, ns: &str, action: Action, tcp: bool) -> Option<Policy> {
        let mut when_perms: Vec<Permission> = Vec::new();
        let mut when_ids: Vec<Principal> = Vec::new();
        for c in &rule.when {
            // Validation guarantees a known key; an unknown one cannot be in force.
            let key = ConditionKey::parse(&c.key).ok()?;
            if tcp && key.http_only() {
                if action == Action::Allow {
                    return None;
                }
                continue;
            }
            let perm = |f: &dyn Fn(&str) -> Permission| or_not_perm(&c.values, &c.not_values, f);
            let id = |f: &dyn Fn(&str) -> Principal| or_not_id(&c.values, &c.not_values, f);
            match &key {
                ConditionKey::DestinationIp => {
                    when_perms.extend(perm(&|v| perm_rule(PermRule::DestinationIp(cidr(v)))))
                }
                ConditionKey::DestinationPort => when_perms.extend(perm(&|v| {
                    perm_rule(PermRule::DestinationPort(v.parse().unwrap_or(0)))
                })),
                ConditionKey::ConnectionSni => when_perms.extend(perm(&|v| {
                    perm_rule(PermRule::RequestedServerName(string_matcher(v, false)))
                })),
                ConditionKey::SourceIp => {
                    when_ids.extend(id(&|v| id_rule(Identifier::DirectRemoteIp(cidr(v)))))
                }
                ConditionKey::RemoteIp => {
                    when_ids.extend(id(&|v| id_rule(Identifier::RemoteIp(cidr(v)))))
                }
                ConditionKey::SourceNamespace => when_ids.extend(id(&namespace_id)),
                ConditionKey::SourcePrincipal => when_ids.extend(id(&|v| self.principal_id(v))),
                ConditionKey::RequestPrincipal => when_ids.extend(id(&request_principal_id)),
                ConditionKey::RequestAudiences => {
                    when_ids.extend(claim_ids(&["aud"], &c.values, &c.not_values))
                }
                ConditionKey::RequestPresenter => {
                    when_ids.extend(claim_ids(&["azp"], &c.values, &c.not_values))
                }
                ConditionKey::RequestClaims(path) => {
                    let path: Vec<&str> = path.iter().map(String::as_str).collect();
                    when_ids.extend(claim_ids(&path, &c.values, &c.not_values))
                }
                ConditionKey::RequestHeader(name) => {
                    when_ids.extend(id(&|v| id_rule(Identifier::Header(header_value(name, v)))))
                }
            }
        }
        let mut permissions = Vec::new();
        let tos: Vec<Option<&_>> = if rule.to.is_empty() {
            vec![None]
        } else {
            rule.to.iter().map(|t| Some(&t.operation)).collect()
        };
        'to: for op in tos {
            let mut and = Vec::new();
            if let Some(o) = op {
                let http: [HttpField<'_>; 3] = [
                    (&o.hosts, &o.not_hosts, &|v| {
                        perm_rule(PermRule::Header(header_string(
                            ":authority",
                            string_matcher(v, true),
                            v == "*",
                        )))
                    }),
                    (&o.methods, &o.not_methods, &|v| {
                        perm_rule(PermRule::Header(header_string(
                            ":method",
                            string_matcher(v, false),
                            v == "*",
                        )))
                    }),
                    (&o.paths, &o.not_paths, &|v| {
                        perm_rule(PermRule::UrlPath(PathMatcher {
                            rule: Some(path_matcher::Rule::Path(string_matcher(v, false))),
                        }))
                    }),
                ];
                for (values, not_values, f) in http {
                    if values.is_empty() && not_values.is_empty() {
                        continue;
                    }
                    if tcp {
                        if action == Action::Allow {
                            // Istio: the rule cannot match on TCP; it is left out.
                            permissions.clear();
                            break 'to;
                        }
                        continue;
                    }
                    and.extend(or_not_perm(values, not_values, f));
                }
                and.extend(or_not_perm(&o.ports, &o.not_ports, &|v| {
                    perm_rule(PermRule::DestinationPort(v.parse().unwrap_or(0)))
                }));
            }
            and.extend(when_perms.iter().cloned());
            if and.is_empty() {
                and.push(perm_rule(PermRule::Any(true)));
            }
            permissions.push(perm_rule(PermRule::AndRules(PermSet { rules: and })));
        }
        if permissions.is_empty() {
            return None;
        }
        let mut principals = Vec::new();
        let froms: Vec<Option<&_>> = if rule.from.is_empty() {
            vec![None]
        } else {
            rule.from.iter().map(|f| Some(&f.source)).collect()
        };
        for src in froms {
            let mut and = Vec::new();
            if let Some(s) = src {
                and.extend(or_not_id(&s.principals, &s.not_principals, &|v| {
                    self.principal_id(v)
                }));
                and.extend(or_not_id(
                    &s.service_accounts,
                    &s.not_service_accounts,
                    &|v| service_account_id(ns, v),
                ));
                if !s.request_principals.is_empty() || !s.not_request_principals.is_empty() {
                    if tcp {
                        if action == Action::Allow {
                            return None;
                        }
                    } else {
                        and.extend(or_not_id(
                            &s.request_principals,
                            &s.not_request_principals,
                            &request_principal_id,
                        ));
                    }
                }
                and.extend(or_not_id(&s.namespaces, &s.not_namespaces, &namespace_id));
                and.extend(or_not_id(
                    &s.remote_ip_blocks,
                    &s.not_remote_ip_blocks,
                    &|v| id_rule(Identifier::RemoteIp(cidr(v))),
                ));
                and.extend(or_not_id(&s.ip_blocks, &s.not_ip_blocks, &|v| {
                    id_rule(Identifier::DirectRemoteIp(cidr(v)))
                }));
            }
            and.extend(when_ids.iter().cloned());
            if and.is_empty() {
                and.push(id_rule(Identifier::Any(true)));
            }
            principals.push(id_rule(Identifier::AndIds(IdSet { ids: and })));
        }
        Some(Policy {
            permissions,
            principals,
            ..Default::default()
        })
    }

    /// `principals` / `source.principal`: the peer certificate's URI SAN
    /// (`authenticated.principal_name`), Istio's `StringMatcherWithPrefix(v,
    /// "spiffe://")`, with `cluster.local` read as the mesh's trust domain (as
    /// Istio's trust-domain bundle does; the mesh file has no aliases).
    fn principal_id(&self, v: &str) -> Principal {
        let v = self.local_trust_domain(v);
        let m = if v == "*" {
            regex(".+")
        } else if let Some(suffix) = v.strip_prefix('*') {
            regex(&format!("{SPIFFE_PREFIX}.*{}", regex_escape(suffix)))
        } else if let Some(prefix) = v.strip_suffix('*') {
            pattern(MatchPattern::Prefix(format!("{SPIFFE_PREFIX}{prefix}")))
        } else {
            pattern(MatchPattern::Exact(format!("{SPIFFE_PREFIX}{v}")))
        };
        authenticated(m)
    }

    /// `cluster.local/ns/a/sa/x` → `<trustDomain>/ns/a/sa/x`; other forms as
    /// written (Istio's `ReplaceTrustDomainAliases` with no aliases).
    fn local_trust_domain(&self, v: &str) -> String {
        let parts: Vec<&str> = v.split('/').collect();
        if v.starts_with('*') || parts.len() != 5 || parts[0] != CLUSTER_LOCAL {
            return v.to_string();
        }
        format!("{}/{}", self.trust_domain, parts[1..].join("/"))
    }
}

/// Istio's `rbacPolicyMatchNever`: `not any` for both.
fn match_never() -> Policy {
    Policy {
        permissions: vec![perm_rule(PermRule::NotRule(Box::new(perm_rule(
            PermRule::Any(true),
        ))))],
        principals: vec![id_rule(Identifier::NotId(Box::new(id_rule(
            Identifier::Any(true),
        ))))],
        ..Default::default()
    }
}

fn perm_rule(r: PermRule) -> Permission {
    Permission { rule: Some(r) }
}

fn id_rule(i: Identifier) -> Principal {
    Principal {
        identifier: Some(i),
    }
}

/// `values` as one OR, `not_values` as NOT(OR); each only when non-empty.
fn or_not_perm(
    values: &[String],
    not_values: &[String],
    f: &dyn Fn(&str) -> Permission,
) -> Vec<Permission> {
    let mut out = Vec::new();
    if !values.is_empty() {
        out.push(perm_rule(PermRule::OrRules(PermSet {
            rules: values.iter().map(|v| f(v)).collect(),
        })));
    }
    if !not_values.is_empty() {
        out.push(perm_rule(PermRule::NotRule(Box::new(perm_rule(
            PermRule::OrRules(PermSet {
                rules: not_values.iter().map(|v| f(v)).collect(),
            }),
        )))));
    }
    out
}

fn or_not_id(
    values: &[String],
    not_values: &[String],
    f: &dyn Fn(&str) -> Principal,
) -> Vec<Principal> {
    let mut out = Vec::new();
    if !values.is_empty() {
        out.push(id_rule(Identifier::OrIds(IdSet {
            ids: values.iter().map(|v| f(v)).collect(),
        })));
    }
    if !not_values.is_empty() {
        out.push(id_rule(Identifier::NotId(Box::new(id_rule(
            Identifier::OrIds(IdSet {
                ids: not_values.iter().map(|v| f(v)).collect(),
            }),
        )))));
    }
    out
}

fn pattern(p: MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(p),
        ..Default::default()
    }
}

fn regex(re: &str) -> StringMatcher {
    pattern(MatchPattern::SafeRegex(RegexMatcher {
        regex: re.to_string(),
        ..Default::default()
    }))
}

/// Istio's `StringMatcher`: `*` any non-empty value, `*x` suffix, `x*` prefix,
/// else exact.
fn string_matcher(v: &str, ignore_case: bool) -> StringMatcher {
    let mut m = if v == "*" {
        regex(".+")
    } else if let Some(s) = v.strip_prefix('*') {
        pattern(MatchPattern::Suffix(s.to_string()))
    } else if let Some(p) = v.strip_suffix('*') {
        pattern(MatchPattern::Prefix(p.to_string()))
    } else {
        pattern(MatchPattern::Exact(v.to_string()))
    };
    m.ignore_case = ignore_case;
    m
}

/// A header matcher on `name`: present for `*`, else `m`.
fn header_string(name: &str, m: StringMatcher, present: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(if present {
            HeaderMatchSpecifier::PresentMatch(true)
        } else {
            HeaderMatchSpecifier::StringMatch(m)
        }),
        ..Default::default()
    }
}

/// `request.headers[NAME]`: Istio's `HeaderMatcher`, a regex that also finds the
/// value among comma-joined values of a repeated header; `*` is presence.
fn header_value(name: &str, v: &str) -> HeaderMatcher {
    if v == "*" {
        return header_string(name, StringMatcher::default(), true);
    }
    let one = if let Some(s) = v.strip_prefix('*') {
        format!(".*{}", regex_escape(s))
    } else if let Some(p) = v.strip_suffix('*') {
        format!("{}.*", regex_escape(p))
    } else {
        regex_escape(v)
    };
    let re = format!("^{one}$|^{one},.*|.*,{one},.*|.*,{one}$");
    header_string(name, regex(&re), false)
}

/// RE2 metacharacters escaped (Go's `regexp.QuoteMeta`).
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn authenticated(m: StringMatcher) -> Principal {
    id_rule(Identifier::Authenticated(Authenticated {
        principal_name: Some(m),
    }))
}

/// `namespaces` / `source.namespace`: Istio's principal regex `.*/ns/NS/.*`
/// (`*` within the value matches anything).
fn namespace_id(v: &str) -> Principal {
    // Escaped first, so a value can never make the regex invalid (Envoy would
    // reject the whole listener).
    let ns = regex_escape(v).replace("\\*", ".*");
    authenticated(regex(&format!(".*/ns/{ns}/.*")))
}

/// `serviceAccounts`: `NAME` (in the policy's namespace) or `NS/NAME`, Istio's
/// `serviceAccountRegex`.
fn service_account_id(policy_ns: &str, v: &str) -> Principal {
    let (ns, sa) = v.split_once('/').unwrap_or((policy_ns, v));
    authenticated(regex(&format!(
        "spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?",
        regex_escape(ns),
        regex_escape(sa)
    )))
}

fn cidr(v: &str) -> CidrRange {
    // Validation guarantees a CIDR; an unparsable one matches nothing useful.
    let (ip, len) = parse_cidr(v).unwrap_or(("0.0.0.0".parse().expect("literal"), 32));
    CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(u32_value(len)),
    }
}

/// A metadata matcher on the verified JWT payload `jwt_authn` leaves in dynamic
/// metadata (`payload_in_metadata: payload`), at claim `path`.
fn jwt_claim(path: &[&str], value: ValueMatcher) -> Principal {
    // `sourced_metadata` (dynamic metadata, the default source) replaces the
    // deprecated `Principal.metadata`.
    id_rule(Identifier::SourcedMetadata(SourcedMetadata {
        metadata_matcher: Some(MetadataMatcher {
            filter: JWT_FILTER.to_string(),
            path: std::iter::once(JWT_PAYLOAD_KEY)
                .chain(path.iter().copied())
                .map(|k| PathSegment {
                    segment: Some(Segment::Key(k.to_string())),
                })
                .collect(),
            value: Some(value),
            ..Default::default()
        }),
        ..Default::default()
    }))
}

fn string_value(m: StringMatcher) -> ValueMatcher {
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::StringMatch(m)),
    }
}

/// `requestPrincipals` / `request.auth.principal`: `ISS/SUB` split at the
/// last `/`, matched on the payload's `iss` and `sub` (Istio's
/// `requestPrincipalGenerator`, wildcards included).
fn request_principal_id(v: &str) -> Principal {
    let any = || regex(".+");
    let exact = |s: &str| pattern(MatchPattern::Exact(s.to_string()));
    let (iss, sub, found) = match v.rfind('/') {
        Some(i) => (&v[..i], &v[i + 1..], true),
        None => (v, "", false),
    };
    let (m_iss, m_sub) = if v == "*" {
        (any(), any())
    } else if v.starts_with('*') {
        if found {
            let mi = if iss == "*" {
                any()
            } else {
                pattern(MatchPattern::Suffix(
                    iss.trim_start_matches('*').to_string(),
                ))
            };
            (mi, exact(sub))
        } else {
            (
                any(),
                pattern(MatchPattern::Suffix(v.trim_start_matches('*').to_string())),
            )
        }
    } else if v.ends_with('*') {
        if found {
            let ms = if sub == "*" {
                any()
            } else {
                pattern(MatchPattern::Prefix(sub.trim_end_matches('*').to_string()))
            };
            (exact(iss), ms)
        } else {
            (
                pattern(MatchPattern::Prefix(v.trim_end_matches('*').to_string())),
                any(),
            )
        }
    } else {
        (exact(iss), exact(sub))
    };
    id_rule(Identifier::AndIds(IdSet {
        ids: vec![
            jwt_claim(&["iss"], string_value(m_iss)),
            jwt_claim(&["sub"], string_value(m_sub)),
        ],
    }))
}

/// A claim that may be a string or a list of strings, matching any of
/// `values` (Istio's `MetadataListValueMatcherForJWTClaims` with extended JWT
/// matching: the claim equals one, or its list contains one).
fn claim_value(values: &[String]) -> ValueMatcher {
    let any_of = if values.len() == 1 {
        string_value(string_matcher(&values[0], false))
    } else {
        ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::OrMatch(OrMatcher {
                value_matchers: values
                    .iter()
                    .map(|v| string_value(string_matcher(v, false)))
                    .collect(),
            })),
        }
    };
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::OrMatch(OrMatcher {
            value_matchers: vec![
                ValueMatcher {
                    match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(
                        ListMatcher {
                            match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(
                                any_of.clone(),
                            ))),
                        },
                    ))),
                },
                any_of,
            ],
        })),
    }
}

/// `request.auth.claims[..]`, `audiences` (`aud`), `presenter` (`azp`): all
/// values in one matcher, negated for `notValues`.
fn claim_ids(path: &[&str], values: &[String], not_values: &[String]) -> Vec<Principal> {
    let mut out = Vec::new();
    if !values.is_empty() {
        out.push(jwt_claim(path, claim_value(values)));
    }
    if !not_values.is_empty() {
        out.push(id_rule(Identifier::NotId(Box::new(jwt_claim(
            path,
            claim_value(not_values),
        )))));
    }
    out
}

/// `config.rbac.v3.RBAC` encoded with its `policies` map in name order (field
/// 2, one length-delimited map entry per policy: key 1, value 2).
fn encode_rbac(action: RbacAction, policies: &BTreeMap<String, Policy>) -> Vec<u8> {
    let mut buf = RbacRules {
        action: action as i32,
        ..Default::default()
    }
    .encode_to_vec();
    for (name, policy) in policies {
        let mut entry = Vec::new();
        prost::encoding::string::encode(1, name, &mut entry);
        prost::encoding::message::encode(2, policy, &mut entry);
        prost::encoding::bytes::encode(2, &entry, &mut buf);
    }
    buf
}

/// The filter config `M` (HTTP or network `RBAC`; both have `rules` = 1 and
/// `shadow_rules` = 2) with `b`'s rules, the shadow stat prefix (HTTP field 3,
/// network field 5) and `strings` (extra string fields by number).
fn filter_any<M: Name>(b: &Built, strings: &[(u32, &str)]) -> Any {
    let mut value = Vec::new();
    if let Some(p) = &b.enforce {
        prost::encoding::bytes::encode(1, &encode_rbac(b.action, p), &mut value);
    }
    if let Some(p) = &b.shadow {
        prost::encoding::bytes::encode(2, &encode_rbac(b.action, p), &mut value);
        let prefix = match b.action {
            RbacAction::Allow => DRY_RUN_ALLOW_PREFIX,
            RbacAction::Deny => DRY_RUN_DENY_PREFIX,
            _ => "",
        };
        let field = if M::full_name() == NetworkRbac::full_name() {
            5
        } else {
            3
        };
        if !prefix.is_empty() {
            prost::encoding::string::encode(field, &prefix.to_string(), &mut value);
        }
    }
    for (field, s) in strings {
        prost::encoding::string::encode(*field, &s.to_string(), &mut value);
    }
    Any {
        type_url: M::type_url(),
        value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::istio::{parse_object, IstioObject};

    fn policy(yaml_spec: &str, annotations: &str) -> Config<AuthorizationPolicy> {
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: base{annotations}}}\nspec: {yaml_spec}\n"
        );
        let v: serde_json::Value = serde_saphyr::from_str(&yaml).expect("yaml");
        match parse_object("t", &v) {
            Ok(IstioObject::AuthorizationPolicy(c)) => c,
            other => panic!("{other:?}"),
        }
    }

    fn http(p: &[&Config<AuthorizationPolicy>]) -> Vec<HttpRbac> {
        Authz::new(p.to_vec(), "example.org")
            .http_filters()
            .into_iter()
            .map(|f| match f.config_type {
                Some(HttpFilterConfig::TypedConfig(a)) => {
                    HttpRbac::decode(a.value.as_slice()).expect("decode")
                }
                _ => panic!("no config"),
            })
            .collect()
    }

    fn tcp(p: &[&Config<AuthorizationPolicy>]) -> Vec<NetworkRbac> {
        Authz::new(p.to_vec(), "example.org")
            .network_filters()
            .into_iter()
            .map(|f| match f.config_type {
                Some(FilterConfig::TypedConfig(a)) => {
                    NetworkRbac::decode(a.value.as_slice()).expect("decode")
                }
                _ => panic!("no config"),
            })
            .collect()
    }

    #[test]
    fn actions_come_audit_deny_allow_and_dry_run_is_shadow() {
        let allow = policy("{rules: [{to: [{operation: {methods: [GET]}}]}]}", "");
        let deny = policy(
            "{action: DENY, rules: [{from: [{source: {namespaces: [test]}}]}]}",
            "",
        );
        let audit = policy("{action: AUDIT, rules: [{}]}", "");
        let dry = policy(
            "{action: DENY, rules: [{}]}",
            ", annotations: {istio.io/dry-run: 'true'}",
        );
        let f = http(&[&allow, &deny, &audit, &dry]);
        let actions: Vec<i32> = f
            .iter()
            .map(|r| r.rules.as_ref().map_or(-1, |r| r.action))
            .collect();
        assert_eq!(
            actions,
            [
                RbacAction::Log as i32,
                RbacAction::Deny as i32,
                RbacAction::Allow as i32
            ]
        );
        // Both DENY policies share one name: the dry run renames nothing, it is shadow.
        assert_eq!(f[1].rules.as_ref().map(|r| r.policies.len()), Some(1));
        assert_eq!(
            f[1].shadow_rules.as_ref().map(|r| r.policies.len()),
            Some(1)
        );
        assert_eq!(f[1].shadow_rules_stat_prefix, DRY_RUN_DENY_PREFIX);
        assert_eq!(f[2].shadow_rules_stat_prefix, "");
        let only_dry = http(&[&dry]);
        assert!(only_dry[0].rules.is_none(), "a dry run enforces nothing");
    }

    #[test]
    fn empty_allow_matches_never_and_empty_rule_matches_all() {
        let none = policy("{}", "");
        let f = http(&[&none]);
        let p = &f[0].rules.as_ref().expect("rules").policies["ns[base]-policy[p]-rule[0]"];
        assert_eq!(*p, match_never());
        let all = policy("{rules: [{}]}", "");
        let f = http(&[&all]);
        let p = &f[0].rules.as_ref().expect("rules").policies["ns[base]-policy[p]-rule[0]"];
        assert_eq!(
            p.permissions,
            vec![perm_rule(PermRule::AndRules(PermSet {
                rules: vec![perm_rule(PermRule::Any(true))]
            }))]
        );
        assert_eq!(
            p.principals,
            vec![id_rule(Identifier::AndIds(IdSet {
                ids: vec![id_rule(Identifier::Any(true))]
            }))]
        );
    }

    #[test]
    fn http_only_fields_on_tcp_drop_allow_rules_and_widen_deny_rules() {
        let allow = policy("{rules: [{to: [{operation: {methods: [GET], ports: ['80']}}]}, {to: [{operation: {ports: ['81']}}]}]}", "");
        let f = tcp(&[&allow]);
        let pol = &f[0].rules.as_ref().expect("rules").policies;
        assert_eq!(
            pol.keys().collect::<Vec<_>>(),
            ["ns[base]-policy[p]-rule[1]"],
            "the ALLOW rule with methods is left out"
        );
        assert_eq!(f[0].stat_prefix, TCP_STAT_PREFIX);
        let deny = policy("{action: DENY, rules: [{to: [{operation: {methods: [POST], ports: ['80']}}], when: [{key: 'request.headers[x]', values: [a]}]}]}", "");
        let f = tcp(&[&deny]);
        let p = &f[0].rules.as_ref().expect("rules").policies["ns[base]-policy[p]-rule[0]"];
        // Only the port is left: the DENY matches every method on port 80.
        assert_eq!(
            p.permissions,
            vec![perm_rule(PermRule::AndRules(PermSet {
                rules: vec![perm_rule(PermRule::OrRules(PermSet {
                    rules: vec![perm_rule(PermRule::DestinationPort(80))]
                }))]
            }))]
        );
        assert_eq!(
            p.principals,
            vec![id_rule(Identifier::AndIds(IdSet {
                ids: vec![id_rule(Identifier::Any(true))]
            }))]
        );
        // On HTTP both stay.
        let f = http(&[&deny]);
        let p = &f[0].rules.as_ref().expect("rules").policies["ns[base]-policy[p]-rule[0]"];
        let PermRule::AndRules(set) = p.permissions[0].rule.clone().expect("rule") else {
            panic!()
        };
        assert_eq!(set.rules.len(), 2);
    }

    #[test]
    fn principals_map_to_spiffe_with_the_mesh_trust_domain() {
        let a = Authz::new(Vec::new(), "example.org");
        let exact = |s: &str| authenticated(pattern(MatchPattern::Exact(s.into())));
        assert_eq!(
            a.principal_id("cluster.local/ns/a/sa/x"),
            exact("spiffe://example.org/ns/a/sa/x")
        );
        assert_eq!(
            a.principal_id("other.td/ns/a/sa/x"),
            exact("spiffe://other.td/ns/a/sa/x")
        );
        assert_eq!(
            a.principal_id("*/sa/x"),
            authenticated(regex("spiffe://.*/sa/x"))
        );
        assert_eq!(a.principal_id("*"), authenticated(regex(".+")));
        assert_eq!(namespace_id("test"), authenticated(regex(".*/ns/test/.*")));
        assert_eq!(
            namespace_id("team-*"),
            authenticated(regex(".*/ns/team-.*/.*"))
        );
        assert_eq!(namespace_id("a(b"), authenticated(regex(r".*/ns/a\(b/.*")));
        assert_eq!(
            header_value("x", "a.b"),
            header_string("x", regex(r"^a\.b$|^a\.b,.*|.*,a\.b,.*|.*,a\.b$"), false)
        );
    }

    #[test]
    fn request_principals_split_issuer_and_subject_at_the_last_slash() {
        let ids = |p: Principal| match p.identifier {
            Some(Identifier::AndIds(s)) => s.ids,
            _ => panic!(),
        };
        let got = ids(request_principal_id("https://issuer.example/path/alice"));
        assert_eq!(
            got[0],
            jwt_claim(
                &["iss"],
                string_value(pattern(MatchPattern::Exact(
                    "https://issuer.example/path".into()
                )))
            )
        );
        assert_eq!(
            got[1],
            jwt_claim(
                &["sub"],
                string_value(pattern(MatchPattern::Exact("alice".into())))
            )
        );
        let got = ids(request_principal_id("iss/*"));
        assert_eq!(got[1], jwt_claim(&["sub"], string_value(regex(".+"))));
        let Some(Identifier::SourcedMetadata(SourcedMetadata {
            metadata_matcher: Some(m),
            ..
        })) = &got[0].identifier
        else {
            panic!()
        };
        assert_eq!(m.filter, JWT_FILTER);
        assert_eq!(m.path.len(), 2);
    }

    #[test]
    fn encoding_is_sorted_and_stable() {
        let p = policy(
            "{rules: [{to: [{operation: {paths: ['/a']}}]}, {to: [{operation: {paths: ['/b']}}]}, {to: [{operation: {paths: ['/c']}}]}, {to: [{operation: {paths: ['/d']}}]}]}",
            "",
        );
        let a = Authz::new(vec![&p], "cluster.local").http_filters();
        for _ in 0..8 {
            assert_eq!(Authz::new(vec![&p], "cluster.local").http_filters(), a);
        }
        let Some(HttpFilterConfig::TypedConfig(any)) = &a[0].config_type else {
            panic!()
        };
        let decoded = HttpRbac::decode(any.value.as_slice()).expect("decode");
        assert_eq!(decoded.rules.map(|r| r.policies.len()), Some(4));
    }
    #[test]
    fn rejected_policies_fail_closed() {
        use crate::registry::config::{IstioConfigStore, RawDoc};
        const DOCS: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: broken-deny, namespace: base}
spec:
  selector:
    matchLabels: {app: frontend}
  action: DENY
  rules:
  - to:
    - operation:
        paths: [/admin/*/secret]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: broken-allow, namespace: base}
spec:
  selector:
    matchLabels: {app: frontend}
  rules:
  - to:
    - operation:
        path: [/typo]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ok-allow, namespace: base}
spec:
  selector:
    matchLabels: {app: frontend}
  rules:
  - to:
    - operation:
        methods: [GET]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: custom, namespace: base}
spec:
  action: CUSTOM
  provider: {name: opa}
  rules:
  - {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: broken-dry-run
  namespace: base
  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules:
  - when:
    - key: source.user
      values: [x]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: broken-audit, namespace: base}
spec:
  action: AUDIT
  rules:
  - from:
    - source:
        ipBlocks: [not-an-ip]
"#;
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(DOCS).expect("yaml");
        let mut store = IstioConfigStore::default();
        store.replace_source(
            "f",
            docs.into_iter()
                .map(|value| RawDoc {
                    origin: "f.yaml".into(),
                    value,
                })
                .collect(),
        );
        let status = store.status(&Default::default());
        // The stand-ins are listed in force, marked.
        let stand_ins: Vec<String> = status
            .in_force
            .iter()
            .filter(|o| {
                serde_json::to_value(&o.object).is_ok_and(|v| v["spec"]["failClosed"] == true)
            })
            .map(|o| o.name.clone())
            .collect();
        assert_eq!(stand_ins, ["broken-allow", "broken-deny", "custom"]);
        // Each rejected alone, naming the field and why, and saying whether it
        // fails closed.
        let rejected: std::collections::BTreeSet<(&str, &str, &str, bool)> = status
            .rejected
            .iter()
            .map(|r| {
                let why = [
                    "unknown field `path`",
                    "is allowed only alone, as a prefix or as a suffix",
                    "unknown condition key \"source.user\"",
                    "is not an IP address or CIDR block",
                    "CUSTOM (ext_authz) is not supported",
                ]
                .into_iter()
                .find(|w| r.reason.contains(w))
                .unwrap_or("?");
                (
                    r.name.as_str(),
                    r.field.as_str(),
                    why,
                    r.reason.contains("fail closed"),
                )
            })
            .collect();
        assert_eq!(
            rejected,
            [
                (
                    "broken-allow",
                    "spec.rules[0].to[0].operation.path",
                    "unknown field `path`",
                    true
                ),
                (
                    "broken-audit",
                    "spec.rules[0].from[0].source.ipBlocks[0]",
                    "is not an IP address or CIDR block",
                    false
                ),
                (
                    "broken-deny",
                    "spec.rules[0].to[0].operation.paths[0]",
                    "is allowed only alone, as a prefix or as a suffix",
                    true
                ),
                (
                    "broken-dry-run",
                    "spec.rules[0].when[0].key",
                    "unknown condition key \"source.user\"",
                    false
                ),
                (
                    "custom",
                    "spec.action",
                    "CUSTOM (ext_authz) is not supported",
                    true
                )
            ]
            .into()
        );
        let snap = store.snapshot();
        let labels: BTreeMap<String, String> = [("app".to_string(), "frontend".to_string())].into();
        let policies: Vec<&Config<AuthorizationPolicy>> = snap
            .authorization_policies_for("base", &labels)
            .into_iter()
            .map(|p| p.as_ref())
            .collect();
        let f = http(&policies);
        let deny = f[0].rules.as_ref().expect("deny rules");
        assert_eq!(deny.action, RbacAction::Deny as i32);
        let any = Policy {
            permissions: vec![perm_rule(PermRule::AndRules(PermSet {
                rules: vec![perm_rule(PermRule::Any(true))],
            }))],
            principals: vec![id_rule(Identifier::AndIds(IdSet {
                ids: vec![id_rule(Identifier::Any(true))],
            }))],
            ..Default::default()
        };
        let mut keys: Vec<&str> = deny.policies.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "ns[base]-policy[broken-deny]-rule[0]",
                "ns[base]-policy[custom]-rule[0]"
            ]
        );
        assert!(
            deny.policies.values().all(|p| *p == any),
            "each stand-in denies everything"
        );
        let allow = f[1].rules.as_ref().expect("allow rules");
        assert_eq!(
            allow.policies["ns[base]-policy[broken-allow]-rule[0]"],
            match_never()
        );
        assert!(allow
            .policies
            .contains_key("ns[base]-policy[ok-allow]-rule[0]"));
        // Another workload of the namespace: only the namespace-wide CUSTOM stand-in.
        let other: BTreeMap<String, String> = [("app".to_string(), "db".to_string())].into();
        let names: Vec<&str> = snap
            .authorization_policies_for("base", &other)
            .iter()
            .map(|p| p.meta.name.as_str())
            .collect();
        assert_eq!(names, ["custom"]);
    }
}
