//! `RequestAuthentication` to Envoy's `envoy.filters.http.jwt_authn`, as
//! istiod's `convertToEnvoyJwtConfig` (`pilot/pkg/security/authn`): one
//! provider `origins-N` per JWT rule in force (sorted by issuer), keys inline
//! (`jwks`, or what `security::jwks` fetched for `jwksUri`), and a requirement
//! that rejects an invalid token (401) but lets a request without one pass;
//! requiring a token is AuthorizationPolicy's job (`requestPrincipals`).
//!
//! Every provider writes the verified payload to dynamic metadata under this
//! filter's name, key [`JWT_PAYLOAD_KEY`], where the RBAC filter matches
//! `requestPrincipals` (`iss/sub`) and `request.auth.claims[...]`. (Istio keys it
//! by issuer and has its own `istio_authn` filter derive the principal; crossmesh
//! has no such filter, so every provider shares one key.)

use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use envoy_types::pb::envoy::config::route::v3::{route_match::PathSpecifier, RouteMatch};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    jwt_provider::JwksSourceSpecifier, jwt_requirement::RequiresType,
    requirement_rule::RequirementType, JwtAuthentication, JwtClaimToHeader, JwtHeader, JwtProvider,
    JwtRequirement, JwtRequirementAndList, JwtRequirementOrList, RequirementRule,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter::ConfigType as HttpFilterConfig, HttpFilter,
};
use envoy_types::pb::google::protobuf::{Any, Empty};
use prost::{Message, Name};

use super::security::{JWT_FILTER, JWT_PAYLOAD_KEY};
use crate::model::istio::request_authentication::{rules_for, FetchedJwks, JwtRule};
use crate::model::istio::ROOT_NAMESPACE;
use crate::model::{Proxy, PushContext};

/// The `jwt_authn` filter for `proxy`, or `None` when no RequestAuthentication
/// with rules applies to it (Istio adds no filter then).
pub fn filter(proxy: &Proxy, ctx: &PushContext) -> Option<HttpFilter> {
    let rules = rules_for(
        &ctx.config.request_authentications,
        ROOT_NAMESPACE,
        &proxy.namespace,
        &proxy.labels,
    );
    let config = jwt_authentication(&rules, &ctx.config.jwks)?;
    Some(HttpFilter {
        name: JWT_FILTER.into(),
        config_type: Some(HttpFilterConfig::TypedConfig(encode_sorted(config))),
        ..Default::default()
    })
}

/// `config` packed with its `providers` map (field 1) encoded sorted by name:
/// prost encodes a `HashMap` in its random order, which would give the same
/// config a new content version at every push.
fn encode_sorted(mut config: JwtAuthentication) -> Any {
    let providers: std::collections::BTreeMap<String, JwtProvider> =
        std::mem::take(&mut config.providers).into_iter().collect();
    let mut value = config.encode_to_vec();
    for (name, provider) in &providers {
        let mut entry = Vec::new();
        prost::encoding::string::encode(1, name, &mut entry);
        prost::encoding::message::encode(2, provider, &mut entry);
        prost::encoding::bytes::encode(1, &entry, &mut value);
    }
    Any {
        type_url: JwtAuthentication::type_url(),
        value,
    }
}

/// The key inlined for a rule whose remote keys were never fetched, so that a
/// request with a token is refused (401) rather than let through unverified,
/// while requests without one pass (istiod's `CreateFakeJwks` behaviour).
/// istiod's own fake key (an RSA key whose `n` is the base64 of a message) is
/// refused by Envoy 1.40 ("Jwks RSA [n] or [e] field is missing or has a parse
/// error"), which would NACK the whole listener; this one is a well-formed
/// P-256 point whose discrete logarithm no one knows: its `x` is the first
/// SHA-256 of `"crossmesh fake JWKS: no one holds a key for this point N"`
/// (N = 0, 1, ...; N = 0 is) that lies on the curve, and
/// `y = (x^3 - 3x + b)^((p+1)/4) mod p`.
pub const UNFETCHED_JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","alg":"ES256","use":"sig","kid":"crossmesh-jwks-not-fetched","x":"2nOanhywElHBOUqtlW5XAOnd5tHnoWyFi7sZ69repRc","y":"j3BqfuGECSJ71A8NsbemnKJWiCzqs5lPqEEv49V4-Xk"}]}"#;

fn provider_name(i: usize) -> String {
    format!("origins-{i}")
}

fn provider(rule: &JwtRule, fetched: &FetchedJwks) -> JwtProvider {
    let keys = match rule.remote_source() {
        None => rule.jwks.clone(),
        Some(src) => match fetched.get(&src) {
            Some(k) => k.to_string(),
            None => UNFETCHED_JWKS.to_string(),
        },
    };
    JwtProvider {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        forward: rule.forward_original_token,
        forward_payload_header: rule.output_payload_to_header.clone(),
        payload_in_metadata: JWT_PAYLOAD_KEY.into(),
        from_headers: rule
            .from_headers
            .iter()
            .map(|h| JwtHeader {
                name: h.name.clone(),
                value_prefix: h.prefix.clone(),
            })
            .collect(),
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|c| JwtClaimToHeader {
                header_name: c.header.clone(),
                claim_name: c.claim.clone(),
                ..Default::default()
            })
            .collect(),
        jwks_source_specifier: Some(JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(Specifier::InlineString(keys)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn name_req(name: String) -> JwtRequirement {
    JwtRequirement {
        requires_type: Some(RequiresType::ProviderName(name)),
    }
}

fn any_of(requirements: Vec<JwtRequirement>) -> JwtRequirement {
    JwtRequirement {
        requires_type: Some(RequiresType::RequiresAny(JwtRequirementOrList {
            requirements,
        })),
    }
}

/// istiod's requirement: one provider: `provider OR allow_missing`; several:
/// `P1 OR P2 ... OR AND(P1 OR allow_missing, P2 OR allow_missing, ...)`, so a
/// token present must verify with some provider and a request without any
/// token passes.
pub fn jwt_authentication(rules: &[&JwtRule], fetched: &FetchedJwks) -> Option<JwtAuthentication> {
    if rules.is_empty() {
        return None;
    }
    let mut providers = std::collections::HashMap::new();
    let mut inner_and = Vec::new();
    let mut outer_or = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        providers.insert(provider_name(i), provider(rule, fetched));
        inner_and.push(any_of(vec![
            name_req(provider_name(i)),
            JwtRequirement {
                requires_type: Some(RequiresType::AllowMissing(Empty {})),
            },
        ]));
        outer_or.push(name_req(provider_name(i)));
    }
    let requires = if inner_and.len() == 1 {
        inner_and.remove(0)
    } else {
        outer_or.push(JwtRequirement {
            requires_type: Some(RequiresType::RequiresAll(JwtRequirementAndList {
                requirements: inner_and,
            })),
        });
        any_of(outer_or)
    };
    Some(JwtAuthentication {
        providers,
        rules: vec![RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            requirement_type: Some(RequirementType::Requires(requires)),
        }],
        bypass_cors_preflight: true,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::istio::request_authentication::JwksSource;

    fn rule(yaml: &str) -> JwtRule {
        serde_saphyr::from_str(yaml).expect("rule")
    }

    #[test]
    fn one_rule_allows_missing_and_inlines_keys() {
        let r = rule("issuer: https://a\njwks: '{\"keys\":[{\"kty\":\"EC\"}]}'\nfromHeaders: [{name: x-jwt, prefix: 'Bearer '}]\nforwardOriginalToken: true\noutputPayloadToHeader: x-payload\noutputClaimToHeaders: [{header: x-sub, claim: sub}]\nfromCookies: [session]");
        let a = jwt_authentication(&[&r], &FetchedJwks::new()).expect("filter");
        let p = &a.providers["origins-0"];
        assert_eq!(p.issuer, "https://a");
        assert!(p.forward);
        assert_eq!(p.payload_in_metadata, "payload");
        assert_eq!(p.from_headers[0].value_prefix, "Bearer ");
        assert_eq!(p.from_cookies, ["session"]);
        assert_eq!(p.claim_to_headers[0].header_name, "x-sub");
        let Some(JwksSourceSpecifier::LocalJwks(ds)) = &p.jwks_source_specifier else {
            panic!("local jwks")
        };
        assert_eq!(ds.specifier, Some(Specifier::InlineString(r.jwks.clone())));
        let Some(RequirementType::Requires(req)) = &a.rules[0].requirement_type else {
            panic!("requires")
        };
        let Some(RequiresType::RequiresAny(or)) = &req.requires_type else {
            panic!("any")
        };
        assert_eq!(or.requirements.len(), 2);
        assert_eq!(
            or.requirements[1].requires_type,
            Some(RequiresType::AllowMissing(Empty {}))
        );
    }

    #[test]
    fn unfetched_uri_gets_the_fake_key_and_fetched_keys_are_inlined() {
        let r = rule("issuer: https://a\njwksUri: http://127.0.0.1:1/keys");
        let keys = |a: &JwtAuthentication| match &a.providers["origins-0"].jwks_source_specifier {
            Some(JwksSourceSpecifier::LocalJwks(DataSource {
                specifier: Some(Specifier::InlineString(s)),
                ..
            })) => s.clone(),
            other => panic!("{other:?}"),
        };
        let none = jwt_authentication(&[&r], &FetchedJwks::new()).expect("filter");
        assert_eq!(keys(&none), UNFETCHED_JWKS);
        let mut f = FetchedJwks::new();
        f.insert(
            JwksSource::Uri("http://127.0.0.1:1/keys".into()),
            Arc::from("{\"keys\":[]}"),
        );
        let got = jwt_authentication(&[&r], &f).expect("filter");
        assert_eq!(keys(&got), "{\"keys\":[]}");
    }

    #[test]
    fn providers_encode_sorted_and_decode_back() {
        let rules: Vec<JwtRule> = (0..12)
            .map(|i| rule(&format!("issuer: https://i{i:02}\njwks: '{{}}'")))
            .collect();
        let refs: Vec<&JwtRule> = rules.iter().collect();
        let a = jwt_authentication(&refs, &FetchedJwks::new()).expect("filter");
        let once = encode_sorted(a.clone());
        for _ in 0..8 {
            let again = jwt_authentication(&refs, &FetchedJwks::new()).expect("filter");
            assert_eq!(encode_sorted(again).value, once.value);
        }
        assert_eq!(
            JwtAuthentication::decode(once.value.as_slice()).expect("decode"),
            a
        );
    }

    #[test]
    fn two_rules_or_each_and_all_allow_missing() {
        let a = rule("issuer: https://a\njwks: '{}'");
        let b = rule("issuer: https://b\njwks: '{}'");
        let j = jwt_authentication(&[&a, &b], &FetchedJwks::new()).expect("filter");
        let Some(RequirementType::Requires(req)) = &j.rules[0].requirement_type else {
            panic!()
        };
        let Some(RequiresType::RequiresAny(or)) = &req.requires_type else {
            panic!()
        };
        assert_eq!(or.requirements.len(), 3);
        assert!(matches!(
            &or.requirements[2].requires_type,
            Some(RequiresType::RequiresAll(all)) if all.requirements.len() == 2
        ));
    }
}
