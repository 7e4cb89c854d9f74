//! `security.istio.io` `RequestAuthentication` (v1 and v1beta1 share one
//! schema): the JSON Web Tokens a workload or gateway accepts. Which policies
//! apply to a proxy (Istio's `getConfigsForWorkload`: the workload's namespace
//! and the root namespace, by `selector` or Gateway API `targetRefs`), the
//! rules' validation (Istio's `ValidateRequestAuthentication`), and the JWKS
//! sources the fetcher (`security::jwks`) must resolve. The Envoy filter is
//! built in `translate::jwt`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::common::{labels_match, WorkloadSelector};
use super::duration::IstioDuration;
use super::Config;

/// The label Istio puts on the pods of a Gateway API `Gateway` it deploys; a
/// `targetRef` to that Gateway selects them.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// The API group of a `targetRef` crossmesh resolves.
pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";

/// `RequestAuthentication.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthentication {
    /// Absent or empty: every workload of the namespace (of the mesh in the
    /// root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Deprecated single form of `targetRefs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
}

/// `istio.type.v1beta1.PolicyTargetReference`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    /// Must be empty or the policy's own namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// `JWTRule`: one issuer's tokens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// The token's `iss`; required.
    #[serde(default)]
    pub issuer: String,
    /// Accepted `aud` values; empty: any audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Where crossmesh fetches the keys (inlined into the filter, as istiod).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jwks_uri: String,
    /// The keys inline (a JWKS document); wins over `jwksUri`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jwks: String,
    /// Empty (with `fromParams` and `fromCookies` empty): Envoy's default,
    /// `Authorization: Bearer <token>` and the `access_token` parameter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    /// Header the verified payload is forwarded in (base64url JSON).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output_payload_to_header: String,
    #[serde(default)]
    pub forward_original_token: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// How long crossmesh waits for `jwksUri` (and OpenID discovery); Istio's
    /// default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<IstioDuration>,
}

/// `JWTHeader`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
}

/// `ClaimToHeader`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    #[serde(default)]
    pub header: String,
    #[serde(default)]
    pub claim: String,
}

/// Istio's default `timeout` for fetching a `jwksUri`.
pub const DEFAULT_JWKS_TIMEOUT_MS: i64 = 5_000;

impl JwtRule {
    /// Where the keys come from when they are not inline: `jwksUri`, or the
    /// issuer's OpenID discovery document (`ISSUER/.well-known/openid-configuration`,
    /// its `jwks_uri`) when neither `jwks` nor `jwksUri` is set, as istiod does.
    pub fn remote_source(&self) -> Option<JwksSource> {
        if !self.jwks.is_empty() {
            return None;
        }
        Some(if self.jwks_uri.is_empty() {
            JwksSource::Discovery(self.issuer.clone())
        } else {
            JwksSource::Uri(self.jwks_uri.clone())
        })
    }

    /// The fetch timeout (`timeout`, default 5s).
    pub fn fetch_timeout(&self) -> std::time::Duration {
        let ms = self
            .timeout
            .map(|t| (t.as_nanos() / 1_000_000) as i64)
            .filter(|ms| *ms > 0)
            .unwrap_or(DEFAULT_JWKS_TIMEOUT_MS);
        std::time::Duration::from_millis(ms as u64)
    }
}

/// Where a rule's remote keys are fetched from (the key of the fetched-keys map).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum JwksSource {
    /// `jwksUri`.
    Uri(String),
    /// OpenID discovery from the issuer.
    Discovery(String),
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::Uri(u) => f.write_str(u),
            JwksSource::Discovery(i) => write!(f, "{i}/.well-known/openid-configuration"),
        }
    }
}

/// Keys fetched from remote JWKS sources, as the JWKS text served (istiod
/// inlines exactly what it fetched). Filled by `security::jwks`.
pub type FetchedJwks = BTreeMap<JwksSource, Arc<str>>;

impl RequestAuthentication {
    fn selector_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.selector
            .as_ref()
            .map(|s| &s.match_labels)
            .filter(|l| !l.is_empty())
    }

    fn targets(&self) -> impl Iterator<Item = &PolicyTargetReference> {
        self.target_ref.iter().chain(self.target_refs.iter())
    }

    /// Whether this policy (in `policy_ns`) applies to a proxy in `namespace`
    /// with `labels`. Istio looks in the proxy's namespace and the root
    /// namespace; a policy with `targetRefs` applies to the pods of the named
    /// Gateway API Gateways (label `gateway.networking.k8s.io/gateway-name`) in
    /// the policy's namespace; otherwise its selector (empty: all) must match.
    pub fn applies_to(
        &self,
        policy_ns: &str,
        root_namespace: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        if policy_ns != namespace && policy_ns != root_namespace {
            return false;
        }
        if self.target_ref.is_some() || !self.target_refs.is_empty() {
            return policy_ns == namespace
                && self.targets().any(|t| {
                    t.kind == "Gateway"
                        && t.group == GATEWAY_API_GROUP
                        && labels.get(GATEWAY_NAME_LABEL) == Some(&t.name)
                });
        }
        match self.selector_labels() {
            None => true,
            Some(sel) => labels_match(sel, labels),
        }
    }

    /// Errors (field, reason), Istio's `ValidateRequestAuthentication` plus
    /// what crossmesh cannot resolve.
    pub fn problems(&self, namespace: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut err = |f: String, r: String| out.push((f, r));
        if self.target_ref.is_some() && !self.target_refs.is_empty() {
            err(
                "spec.targetRef".into(),
                "set targetRef or targetRefs, not both".into(),
            );
        }
        if self.selector.is_some() && (self.target_ref.is_some() || !self.target_refs.is_empty()) {
            err(
                "spec.selector".into(),
                "set selector or targetRefs, not both".into(),
            );
        }
        if let Some(sel) = &self.selector {
            for k in sel.match_labels.keys() {
                if k.is_empty() || k.contains(char::is_whitespace) {
                    err(
                        format!("spec.selector.matchLabels[{k}]"),
                        format!("{k:?} is not a label key"),
                    );
                }
            }
        }
        let refs: Vec<(String, &PolicyTargetReference)> = match &self.target_ref {
            Some(t) => vec![("spec.targetRef".to_string(), t)],
            None => self
                .target_refs
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("spec.targetRefs[{i}]"), t))
                .collect(),
        };
        for (f, t) in refs {
            if t.name.is_empty() {
                err(format!("{f}.name"), "a target needs a name".into());
            }
            if !t.namespace.is_empty() && t.namespace != namespace {
                err(
                    format!("{f}.namespace"),
                    format!(
                        "{:?}: a target must be in the policy's namespace {namespace:?}",
                        t.namespace
                    ),
                );
            }
            match (t.group.as_str(), t.kind.as_str()) {
                (GATEWAY_API_GROUP, "Gateway") => {}
                ("", "Service") | ("core", "Service") => err(
                    format!("{f}.kind"),
                    "Service targets apply to waypoint proxies (Istio ambient), which crossmesh \
                     does not serve; use selector"
                        .into(),
                ),
                (g, k) => err(
                    format!("{f}.kind"),
                    format!(
                        "target {g}/{k} is not supported (crossmesh resolves \
                         {GATEWAY_API_GROUP}/Gateway)"
                    ),
                ),
            }
        }
        for (i, r) in self.jwt_rules.iter().enumerate() {
            let f = format!("spec.jwtRules[{i}]");
            jwt_rule_problems(&f, r, &mut err);
        }
        out
    }
}

fn jwt_rule_problems(f: &str, r: &JwtRule, err: &mut impl FnMut(String, String)) {
    if r.issuer.trim().is_empty() {
        err(format!("{f}.issuer"), "issuer must be set".into());
    } else if r.issuer.contains(char::is_whitespace) {
        err(
            format!("{f}.issuer"),
            format!("{:?} contains whitespace", r.issuer),
        );
    }
    for (j, a) in r.audiences.iter().enumerate() {
        if a.trim().is_empty() {
            err(
                format!("{f}.audiences[{j}]"),
                "audience must not be empty".into(),
            );
        }
    }
    if !r.jwks_uri.is_empty() {
        if let Err(why) = check_http_uri(&r.jwks_uri) {
            err(format!("{f}.jwksUri"), why);
        }
    }
    if r.jwks.is_empty() && r.jwks_uri.is_empty() {
        // Keys come from OpenID discovery on the issuer, which must be a URL.
        if !r.issuer.trim().is_empty() {
            if let Err(why) = check_http_uri(&r.issuer) {
                err(
                    format!("{f}.issuer"),
                    format!(
                        "with neither jwks nor jwksUri the keys are found by OpenID discovery \
                         on the issuer, which must then be an http(s) URL: {why}"
                    ),
                );
            }
        }
    }
    if !r.jwks.is_empty() {
        if let Err(why) = check_jwks(&r.jwks) {
            err(format!("{f}.jwks"), why);
        }
    }
    for (j, h) in r.from_headers.iter().enumerate() {
        if !valid_header_name(&h.name) {
            err(
                format!("{f}.fromHeaders[{j}].name"),
                format!("{:?} is not an HTTP header name", h.name),
            );
        }
    }
    for (j, p) in r.from_params.iter().enumerate() {
        if p.is_empty() {
            err(
                format!("{f}.fromParams[{j}]"),
                "parameter name must not be empty".into(),
            );
        }
    }
    for (j, c) in r.from_cookies.iter().enumerate() {
        if c.is_empty() || c.contains(|ch: char| ch.is_whitespace() || ch == ';' || ch == '=') {
            err(
                format!("{f}.fromCookies[{j}]"),
                format!("{c:?} is not a cookie name"),
            );
        }
    }
    if !r.output_payload_to_header.is_empty() && !valid_header_name(&r.output_payload_to_header) {
        err(
            format!("{f}.outputPayloadToHeader"),
            format!(
                "{:?} is not an HTTP header name",
                r.output_payload_to_header
            ),
        );
    }
    for (j, c) in r.output_claim_to_headers.iter().enumerate() {
        if !valid_header_name(&c.header) {
            err(
                format!("{f}.outputClaimToHeaders[{j}].header"),
                format!("{:?} is not an HTTP header name", c.header),
            );
        } else if c.header.starts_with(':') || c.header.eq_ignore_ascii_case("host") {
            err(
                format!("{f}.outputClaimToHeaders[{j}].header"),
                format!("{:?} may not be set from a claim", c.header),
            );
        }
        if c.claim.is_empty() {
            err(
                format!("{f}.outputClaimToHeaders[{j}].claim"),
                "claim must not be empty".into(),
            );
        }
    }
    if let Some(t) = &r.timeout {
        if t.is_negative() || t.as_nanos() == 0 {
            err(
                format!("{f}.timeout"),
                format!("{t} must be longer than zero"),
            );
        }
    }
}

/// An `http://` or `https://` URL with a host (what crossmesh can fetch).
pub fn check_http_uri(uri: &str) -> Result<(), String> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))
        .ok_or_else(|| format!("{uri:?} is not an http:// or https:// URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("{uri:?} has no host"));
    }
    if uri.contains(char::is_whitespace) {
        return Err(format!("{uri:?} contains whitespace"));
    }
    Ok(())
}

/// A JWKS document as Envoy reads it: a JSON object with a non-empty `keys`
/// array whose entries name their `kty`.
pub fn check_jwks(text: &str) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let keys = v
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("not a JWKS document: no \"keys\" array")?;
    if keys.is_empty() {
        return Err("the JWKS has no keys".into());
    }
    for (i, k) in keys.iter().enumerate() {
        if k.get("kty").and_then(|t| t.as_str()).is_none() {
            return Err(format!("keys[{i}] has no \"kty\""));
        }
    }
    Ok(())
}

/// An HTTP header name (RFC 7230 token), lower- or upper-case.
fn valid_header_name(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The rules in force for a proxy in `namespace` with `labels`: every
/// applying policy's rules, sorted by issuer (Istio's `NewPolicyApplier`,
/// stable so same-issuer rules keep policy order).
pub fn rules_for<'a>(
    policies: &'a [Arc<Config<RequestAuthentication>>],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a JwtRule> {
    let mut rules: Vec<&JwtRule> = policies
        .iter()
        .filter(|p| {
            p.spec
                .applies_to(&p.meta.namespace, root_namespace, namespace, labels)
        })
        .flat_map(|p| p.spec.jwt_rules.iter())
        .collect();
    rules.sort_by(|a, b| a.issuer.cmp(&b.issuer));
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> JwtRule {
        serde_saphyr::from_str(yaml).expect("rule")
    }

    #[test]
    fn bad_rules_are_named() {
        let ra = RequestAuthentication {
            jwt_rules: vec![
                rule("issuer: ''\njwks: '{\"keys\":[{\"kty\":\"EC\"}]}'"),
                rule("issuer: https://a\njwksUri: ftp://x/keys"),
                rule("issuer: not-a-url"),
                rule("issuer: https://b\njwks: '{}'"),
                rule("issuer: https://c\njwksUri: https://c/k\nfromHeaders: [{name: 'a b'}]"),
            ],
            ..Default::default()
        };
        let p = ra.problems("ns");
        let fields: Vec<&str> = p.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.jwtRules[0].issuer",
                "spec.jwtRules[1].jwksUri",
                "spec.jwtRules[2].issuer",
                "spec.jwtRules[3].jwks",
                "spec.jwtRules[4].fromHeaders[0].name",
            ],
            "{p:?}"
        );
    }

    #[test]
    fn scope_selector_root_and_target_refs() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let gw: BTreeMap<String, String> =
            [(GATEWAY_NAME_LABEL.to_string(), "edge".to_string())].into();
        let ns_wide = RequestAuthentication::default();
        assert!(ns_wide.applies_to("a", "istio-system", "a", &labels));
        assert!(!ns_wide.applies_to("b", "istio-system", "a", &labels));
        assert!(ns_wide.applies_to("istio-system", "istio-system", "a", &labels));
        let sel: RequestAuthentication =
            serde_saphyr::from_str("selector: {matchLabels: {app: api}}").expect("ra");
        assert!(!sel.applies_to("a", "istio-system", "a", &labels));
        let tr: RequestAuthentication = serde_saphyr::from_str(
            "targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: edge}]",
        )
        .expect("ra");
        assert!(tr.applies_to("a", "istio-system", "a", &gw));
        assert!(!tr.applies_to("a", "istio-system", "a", &labels));
        assert!(tr.problems("a").is_empty());
        let svc: RequestAuthentication =
            serde_saphyr::from_str("targetRef: {kind: Service, name: web}").expect("ra");
        assert_eq!(svc.problems("a")[0].0, "spec.targetRef.kind");
    }
}
