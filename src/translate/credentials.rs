//! Kubernetes TLS Secrets in the generated config (Istio's `credentialName`):
//! SDS resource names as Istio's (`kubernetes://NAME` for a key and certificate,
//! `kubernetes://NAME-cacert` for a CA), and the pass that turns the names the
//! clusters and listeners use into Secret resources for one proxy.
//!
//! Which Secrets a proxy may get (Istio's SDS authorization of `kubernetes://`
//! resources, `pilot/pkg/xds/sds.go`): those of its own namespace in its own
//! member cluster, and only when it holds a workload identity (it connected on
//! the authenticated xDS port; the plaintext port never hands out key material,
//! docs/SECURITY.md). A cluster or filter chain naming a Secret the proxy cannot
//! get (missing, malformed, another namespace, no identity) is left out, so
//! Envoy never waits on a secret that will not come; the rest is served.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    data_source::Specifier, transport_socket::ConfigType, DataSource, TransportSocket,
};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, secret, CertificateValidationContext,
    CommonTlsContext, DownstreamTlsContext, Secret, TlsCertificate, UpstreamTlsContext,
};
use prost::Message;

use crate::model::credential::{CA_SUFFIX, KUBERNETES_PREFIX};
use crate::model::{Proxy, PushContext};

/// SDS name of the key and certificate of Secret `name`.
pub fn key_pair_secret_name(name: &str) -> String {
    format!("{KUBERNETES_PREFIX}{name}")
}

/// SDS name of the CA of Secret `name` (Secret `NAME-cacert`, else `NAME`'s CA).
pub fn ca_secret_name(name: &str) -> String {
    format!("{KUBERNETES_PREFIX}{name}{CA_SUFFIX}")
}

/// What an SDS name asks for.
enum Wanted<'a> {
    KeyPair(&'a str),
    Ca(&'a str),
}

fn wanted(sds_name: &str) -> Option<Wanted<'_>> {
    let rest = sds_name.strip_prefix(KUBERNETES_PREFIX)?;
    Some(match rest.strip_suffix(CA_SUFFIX) {
        Some(n) => Wanted::Ca(n),
        None => Wanted::KeyPair(rest),
    })
}

fn inline(s: &str) -> DataSource {
    DataSource {
        specifier: Some(Specifier::InlineString(s.to_string())),
        ..Default::default()
    }
}

/// The Secret resource for `sds_name` as `proxy` may get it, or why not.
pub fn secret_for(sds_name: &str, proxy: &Proxy, ctx: &PushContext) -> Result<Secret, String> {
    let Some(w) = wanted(sds_name) else {
        return Err(format!("{sds_name} is not a kubernetes:// secret"));
    };
    if !super::has_identity(proxy) {
        return Err(format!(
            "{sds_name}: the proxy connected on the plaintext xDS port, which never hands out \
             key material; connect it on the authenticated port (xdsTlsAddress)"
        ));
    }
    let (cluster, ns) = (proxy.cluster_id.as_str(), proxy.namespace.as_str());
    let r#type = match w {
        Wanted::KeyPair(n) => {
            let c = ctx.credentials.key_pair(cluster, ns, n)?;
            let Some((chain, key)) = &c.key_pair else {
                return Err(format!("Secret {ns}/{n} holds no certificate and key"));
            };
            secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline(chain)),
                private_key: Some(inline(key)),
                ..Default::default()
            })
        }
        Wanted::Ca(n) => {
            let c = ctx.credentials.ca(cluster, ns, n)?;
            secret::Type::ValidationContext(CertificateValidationContext {
                trusted_ca: c.ca.as_deref().map(inline),
                crl: c.crl.as_deref().map(inline),
                ..Default::default()
            })
        }
    };
    Ok(Secret {
        name: sds_name.to_string(),
        r#type: Some(r#type),
    })
}

/// The `kubernetes://` SDS names a TLS context refers to.
fn common_names(c: &CommonTlsContext, out: &mut Vec<String>) {
    for s in &c.tls_certificate_sds_secret_configs {
        out.push(s.name.clone());
    }
    match &c.validation_context_type {
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
            out.push(s.name.clone())
        }
        Some(ValidationContextType::CombinedValidationContext(cv)) => {
            if let Some(s) = &cv.validation_context_sds_secret_config {
                out.push(s.name.clone());
            }
        }
        _ => {}
    }
    out.retain(|n| n.starts_with(KUBERNETES_PREFIX));
}

fn socket_names<M: Message + Default>(
    ts: &Option<TransportSocket>,
    common: impl Fn(&M) -> Option<&CommonTlsContext>,
    out: &mut Vec<String>,
) {
    if let Some(TransportSocket {
        config_type: Some(ConfigType::TypedConfig(any)),
        ..
    }) = ts
    {
        if let Ok(m) = M::decode(any.value.as_slice()) {
            if let Some(c) = common(&m) {
                common_names(c, out);
            }
        }
    }
}

/// The `kubernetes://` names a cluster's transport socket(s) use.
fn cluster_names(c: &Cluster) -> Vec<String> {
    let mut out = Vec::new();
    let sockets = std::iter::once(&c.transport_socket).chain(
        c.transport_socket_matches
            .iter()
            .map(|m| &m.transport_socket),
    );
    for ts in sockets {
        socket_names::<UpstreamTlsContext>(ts, |m| m.common_tls_context.as_ref(), &mut out);
    }
    out
}

fn chain_names(fc: &FilterChain) -> Vec<String> {
    let mut out = Vec::new();
    socket_names::<DownstreamTlsContext>(
        &fc.transport_socket,
        |m| m.common_tls_context.as_ref(),
        &mut out,
    );
    out
}

/// Why one cluster or filter chain was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Omission {
    /// `cluster NAME` or `listener NAME filter chain N (server names)`.
    pub what: String,
    pub reason: String,
}

/// Resolve every `kubernetes://` name the clusters and listeners use for
/// `proxy`: each that resolves becomes a Secret in the returned list; a cluster
/// or filter chain naming one that does not is removed (a listener left without
/// chains too), and why is returned.
pub fn resolve(
    clusters: &mut Vec<Cluster>,
    listeners: &mut Vec<Listener>,
    proxy: &Proxy,
    ctx: &PushContext,
) -> (Vec<Secret>, Vec<Omission>) {
    let mut secrets: BTreeMap<String, Result<Secret, String>> = BTreeMap::new();
    let mut omitted = Vec::new();
    let mut check = |names: Vec<String>| -> Result<(), String> {
        for n in names {
            let r = secrets
                .entry(n.clone())
                .or_insert_with(|| secret_for(&n, proxy, ctx));
            if let Err(e) = r {
                return Err(e.clone());
            }
        }
        Ok(())
    };
    clusters.retain(|c| match check(cluster_names(c)) {
        Ok(()) => true,
        Err(reason) => {
            omitted.push(Omission {
                what: format!("cluster {}", c.name),
                reason,
            });
            false
        }
    });
    for l in listeners.iter_mut() {
        let name = l.name.clone();
        l.filter_chains.retain(|fc| match check(chain_names(fc)) {
            Ok(()) => true,
            Err(reason) => {
                let sni = fc
                    .filter_chain_match
                    .as_ref()
                    .map(|m| m.server_names.join(","))
                    .unwrap_or_default();
                omitted.push(Omission {
                    what: format!(
                        "listener {name} filter chain {:?} (server names {sni})",
                        fc.name
                    ),
                    reason,
                });
                false
            }
        });
    }
    listeners.retain(|l| !l.filter_chains.is_empty());
    let secrets = secrets.into_values().filter_map(Result::ok).collect();
    (secrets, omitted)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::translate::generate;

    fn load(name: &str) -> (PushContext, Proxy) {
        crate::translate::golden::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{name}.yaml")),
        )
    }

    fn chains(listeners: &[Listener], name: &str) -> Vec<String> {
        listeners
            .iter()
            .filter(|l| l.name == name)
            .flat_map(|l| l.filter_chains.iter().map(|fc| fc.name.clone()))
            .collect()
    }

    /// The gateway of `gateway_tls_termination` with its identity gets its
    /// namespace's Secrets; the same gateway on the plaintext xDS port gets no
    /// key and none of the terminating servers, and in another cluster (no
    /// Secrets there) none of the Secret-backed servers.
    #[test]
    fn secrets_go_to_authenticated_proxies_of_their_namespace_and_cluster_only() {
        let (ctx, proxy) = load("gateway_tls_termination");
        let g = generate(&proxy, &ctx);
        let names: Vec<&str> = g.secrets.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"kubernetes://a-cert"), "{names:?}");
        assert!(
            !names.contains(&"kubernetes://e-cert"),
            "another namespace's Secret"
        );
        // a, b, c terminated and the PASSTHROUGH chain (d and e left out).
        assert_eq!(chains(&g.listeners, "0.0.0.0_443").len(), 4);

        let plaintext = Proxy {
            identity: None,
            ..proxy.clone()
        };
        let g = generate(&plaintext, &ctx);
        assert!(
            g.secrets.is_empty(),
            "a plaintext-port proxy got key material"
        );
        // Only the PASSTHROUGH chain (unnamed) needs no key.
        assert_eq!(chains(&g.listeners, "0.0.0.0_443"), [""]);
        assert!(chains(&g.listeners, "0.0.0.0_8443").is_empty());
        assert_eq!(
            chains(&g.listeners, "0.0.0.0_80").len(),
            1,
            "HTTP still served"
        );
        let mut clusters = g.clusters.clone();
        let mut listeners = g.listeners.clone();
        let (_, omitted) = resolve(&mut clusters, &mut listeners, &plaintext, &ctx);
        assert!(omitted.is_empty(), "nothing left to omit after generate");

        let elsewhere = Proxy {
            cluster_id: "cluster2".into(),
            ..proxy
        };
        let g = generate(&elsewhere, &ctx);
        assert!(g.secrets.is_empty(), "{:?}", g.secrets);
        assert_eq!(chains(&g.listeners, "0.0.0.0_443"), [""]);
        assert_eq!(
            chains(&g.listeners, "0.0.0.0_8443").len(),
            1,
            "ISTIO_MUTUAL needs no Secret"
        );
    }

    #[test]
    fn an_omission_says_which_chain_and_why() {
        let (ctx, proxy) = load("gateway_tls_termination");
        let plaintext = Proxy {
            identity: None,
            ..proxy
        };
        let mut g = crate::translate::gateway::generate(&plaintext, &ctx, true);
        let (secrets, omitted) = resolve(&mut g.clusters, &mut g.listeners, &plaintext, &ctx);
        assert!(secrets.is_empty());
        assert!(
            omitted
                .iter()
                .any(|o| o.what.contains("https.443.https-a")
                    && o.reason.contains("plaintext xDS port")),
            "{omitted:?}"
        );
    }
}
