//! Mutual TLS in the generated config, as Istio builds it:
//!
//! - inbound (`PeerAuthentication`): per workload port, the filter chains of the
//!   mode in force (Istio's `pilot/pkg/networking/core` inbound filter chain match
//!   options and `BuildInboundTLS`): STRICT a TLS chain only, PERMISSIVE an mTLS
//!   chain matched on Istio's ALPN plus plaintext (and, for TCP, plain TLS)
//!   chains, DISABLE plaintext only;
//! - outbound: auto mTLS (`enableAutoMtls`, Istio's default): a cluster without
//!   DestinationRule TLS gets `transport_socket_matches` choosing ISTIO_MUTUAL for
//!   endpoints EDS marks `tlsMode: istio` and plaintext for the rest; DestinationRule
//!   `tls` (DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL) sets the cluster's transport
//!   socket (Istio's `cluster_tls.go`).
//!
//! The workload certificate and the trust bundle are the SDS secrets `default` and
//! `ROOTCA`, fetched over the proxy's ADS stream. Only a proxy with an identity
//! (connected on the authenticated port) gets them, so only such a proxy gets
//! anything here that names them; the others stay plaintext.

use envoy_types::pb::envoy::config::cluster::v3::{cluster::TransportSocketMatch, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    data_source::Specifier, transport_socket::ConfigType, DataSource, TransportSocket,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter::ConfigType as FilterConfig, Filter, FilterChain, FilterChainMatch,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{ForwardClientCertDetails, SetCurrentClientCertDetails},
    HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    subject_alt_name_matcher::SanType,
    tls_parameters::TlsProtocol,
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsCertificate, TlsParameters, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

use super::proto::{ads, bool_value, pack};
use crate::model::istio::destination_rule::ClientTlsSettings;
use crate::model::istio::MtlsMode;
use crate::model::{PushContext, Service};

/// Istio's SDS name of the workload key and certificate chain.
pub const SDS_DEFAULT: &str = "default";
/// Istio's SDS name of the trust bundle.
pub const SDS_ROOT: &str = "ROOTCA";
pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
pub const RAW_BUFFER_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.raw_buffer";
/// Envoy's transport protocols as the TLS inspector reports them.
pub const TRANSPORT_TLS: &str = "tls";
pub const TRANSPORT_RAW_BUFFER: &str = "raw_buffer";
/// The endpoint metadata key `transport_socket_matches` read.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
/// The Pod label saying the pod runs a sidecar (`istio`) or not (`disabled`).
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// Every ALPN an Istio client sidecar sends over mTLS (`allIstioMtlsALPNs`).
const ALL_ISTIO_MTLS_ALPNS: [&str; 5] = [
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];
/// What the server side advertises (`ALPNHttp`, `ALPNDownstreamWithMxc`).
pub(crate) const ALPN_HTTP: [&str; 2] = ["h2", "http/1.1"];
const ALPN_DOWNSTREAM_WITH_MXC: [&str; 3] = ["istio-peer-exchange", "h2", "http/1.1"];
/// What a client sidecar advertises in mesh (`ALPNInMeshWithMxc`, `ALPNInMeshH2WithMxc`).
const ALPN_IN_MESH: [&str; 2] = ["istio-peer-exchange", "istio"];
const ALPN_IN_MESH_H2: [&str; 3] = ["istio-peer-exchange", "istio", "h2"];
/// Istio's server-side cipher suites for sidecars (`SupportedCiphers`).
const SUPPORTED_CIPHERS: [&str; 6] = [
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
];

fn strings<const N: usize>(v: [&str; N]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// An SDS secret fetched over the proxy's ADS stream.
pub fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ads()),
    }
}

/// The SPIFFE identity of a service account: `spiffe://TD/ns/NS/sa/SA`.
pub fn spiffe_uri(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

fn exact_uri_sans(sans: &[String]) -> Vec<SubjectAltNameMatcher> {
    sans.iter()
        .map(|s| SubjectAltNameMatcher {
            san_type: SanType::Uri as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(s.clone())),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

/// Istio's `ApplyToCommonTLSContext`: the workload certificate `default`, and the
/// trust bundle `ROOTCA` combined with a SAN check (none inbound).
fn istio_common(alpn: Vec<String>, sans: &[String], tls_params: TlsParameters) -> CommonTlsContext {
    CommonTlsContext {
        tls_params: Some(tls_params),
        tls_certificate_sds_secret_configs: vec![sds(SDS_DEFAULT)],
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: exact_uri_sans(sans),
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds(SDS_ROOT)),
                ..Default::default()
            },
        )),
        alpn_protocols: alpn,
        ..Default::default()
    }
}

fn tls_1_2_to_1_3() -> TlsParameters {
    TlsParameters {
        tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
        tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
        ..Default::default()
    }
}

/// Istio's `BuildInboundTLS`: the sidecar's server side of mTLS.
pub fn inbound_tls(http: bool) -> DownstreamTlsContext {
    let alpn = if http {
        strings(ALPN_HTTP)
    } else {
        strings(ALPN_DOWNSTREAM_WITH_MXC)
    };
    let params = TlsParameters {
        cipher_suites: strings(SUPPORTED_CIPHERS),
        ..tls_1_2_to_1_3()
    };
    DownstreamTlsContext {
        common_tls_context: Some(istio_common(alpn, &[], params)),
        require_client_certificate: Some(bool_value(true)),
        ..Default::default()
    }
}

/// `ctx` as the `envoy.transport_sockets.tls` transport socket.
pub(crate) fn tls_socket<M: prost::Message + prost::Name>(ctx: &M) -> TransportSocket {
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.into(),
        config_type: Some(ConfigType::TypedConfig(pack(ctx))),
    }
}

fn raw_buffer_socket() -> TransportSocket {
    TransportSocket {
        name: RAW_BUFFER_TRANSPORT_SOCKET.into(),
        config_type: Some(ConfigType::TypedConfig(pack(&RawBuffer::default()))),
    }
}

/// On a chain terminating mTLS, an HTTP connection manager forwards the peer's
/// identity to the workload as Istio's inbound sidecar does: XFCC
/// `APPEND_FORWARD` with the client certificate's subject, URI and DNS SANs
/// (`URI=spiffe://...`). Plaintext chains keep Envoy's default (sanitize), so a
/// plaintext client cannot hand the workload an identity. Other filters are
/// returned unchanged.
fn with_client_cert_details(filter: &Filter) -> Filter {
    let Some(FilterConfig::TypedConfig(any)) = &filter.config_type else {
        return filter.clone();
    };
    if any.type_url != pack(&HttpConnectionManager::default()).type_url {
        return filter.clone();
    }
    let Ok(mut hcm) = <HttpConnectionManager as prost::Message>::decode(any.value.as_slice())
    else {
        return filter.clone();
    };
    hcm.forward_client_cert_details = ForwardClientCertDetails::AppendForward as i32;
    hcm.set_current_client_cert_details = Some(SetCurrentClientCertDetails {
        subject: Some(bool_value(true)),
        uri: true,
        dns: true,
        ..Default::default()
    });
    Filter {
        name: filter.name.clone(),
        config_type: Some(FilterConfig::TypedConfig(pack(&hcm))),
    }
}

/// One inbound chain: `base` narrowed to a transport protocol (and ALPN), with
/// the mTLS server context when `tls`.
fn chain(
    base: &FilterChainMatch,
    name: &str,
    filter: &Filter,
    transport: &str,
    alpn: &[&str],
    tls: Option<&DownstreamTlsContext>,
) -> FilterChain {
    FilterChain {
        filter_chain_match: Some(FilterChainMatch {
            transport_protocol: transport.to_string(),
            application_protocols: alpn.iter().map(|s| s.to_string()).collect(),
            ..base.clone()
        }),
        filters: vec![match tls {
            Some(_) => with_client_cert_details(filter),
            None => filter.clone(),
        }],
        transport_socket: tls.map(tls_socket),
        name: name.to_string(),
        ..Default::default()
    }
}

/// The inbound filter chains of one workload port under `mode` (never `Unset`),
/// each narrowing `base` (destination port, address), all running `filter`
/// (`http`: an HTTP connection manager, else a TCP proxy). Istio's match options:
/// - STRICT: transport `tls`, mTLS terminated; a plaintext client matches no
///   chain and is disconnected;
/// - PERMISSIVE: transport `tls` with Istio's mTLS ALPNs (terminated), then for
///   TCP plain TLS passed through, then `raw_buffer` plaintext;
/// - DISABLE: `raw_buffer` plaintext only.
pub fn inbound_chains(
    mode: MtlsMode,
    http: bool,
    base: &FilterChainMatch,
    name: &str,
    filter: &Filter,
) -> Vec<FilterChain> {
    let tls = inbound_tls(http);
    match mode {
        MtlsMode::Strict => vec![chain(base, name, filter, TRANSPORT_TLS, &[], Some(&tls))],
        MtlsMode::Permissive => {
            let mut out = vec![chain(
                base,
                name,
                filter,
                TRANSPORT_TLS,
                &ALL_ISTIO_MTLS_ALPNS,
                Some(&tls),
            )];
            if !http {
                out.push(chain(base, name, filter, TRANSPORT_TLS, &[], None));
            }
            out.push(chain(base, name, filter, TRANSPORT_RAW_BUFFER, &[], None));
            out
        }
        MtlsMode::Disable | MtlsMode::Unset => {
            vec![chain(base, name, filter, TRANSPORT_RAW_BUFFER, &[], None)]
        }
    }
}

/// Istio's SNI for in-mesh mTLS: `outbound_.PORT_.SUBSET_.HOST`.
pub fn istio_sni(port: u16, subset: &str, host: &str) -> String {
    format!("outbound_.{port}_.{subset}_.{host}")
}

/// The service accounts behind `svc`'s `port` as SPIFFE URIs, sorted: the SANs
/// a client expects from the server (Istio's `ServiceAccounts` of the service).
pub fn service_sans(svc: &Service, port: u16, ctx: &PushContext) -> Vec<String> {
    let mut out: Vec<String> = svc
        .endpoints
        .get(&port)
        .into_iter()
        .flatten()
        .filter(|e| !e.service_account.is_empty())
        .map(|e| spiffe_uri(&ctx.mesh.trust_domain, &svc.namespace, &e.service_account))
        .collect();
    // A ServiceEntry's `subjectAltNames` join them (Istio's ServiceEntry
    // `ServiceAccounts`).
    if let Some(se) = ctx.config.service_entry_of(svc) {
        out.extend(se.spec.subject_alt_names.iter().cloned());
    }
    out.sort();
    out.dedup();
    out
}

/// ISTIO_MUTUAL client side: `default` and `ROOTCA`, the server's expected SANs,
/// Istio's in-mesh ALPN (with `h2` for HTTP/2 clusters).
pub fn istio_mutual(sni: String, sans: &[String], http2: bool) -> UpstreamTlsContext {
    let alpn = if http2 {
        strings(ALPN_IN_MESH_H2)
    } else {
        strings(ALPN_IN_MESH)
    };
    UpstreamTlsContext {
        common_tls_context: Some(istio_common(alpn, sans, tls_1_2_to_1_3())),
        sni,
        ..Default::default()
    }
}

fn tls_mode_istio() -> Struct {
    Struct {
        fields: [(
            "tlsMode".to_string(),
            Value {
                kind: Some(Kind::StringValue("istio".into())),
            },
        )]
        .into(),
    }
}

/// Auto mTLS: ISTIO_MUTUAL for endpoints marked `tlsMode: istio`, plaintext for
/// the others (Istio's `tlsMode-istio` / `tlsMode-disabled` matches). Replaces
/// any earlier match (the cross-network TLS origination of proxies without an
/// identity).
pub fn apply_auto_mtls(c: &mut Cluster, tls: UpstreamTlsContext) {
    c.transport_socket_matches = vec![
        TransportSocketMatch {
            name: "tlsMode-istio".into(),
            r#match: Some(tls_mode_istio()),
            transport_socket: Some(tls_socket(&tls)),
        },
        TransportSocketMatch {
            name: "tlsMode-disabled".into(),
            r#match: Some(Struct::default()),
            transport_socket: Some(raw_buffer_socket()),
        },
    ];
}

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(Specifier::Filename(path.to_string())),
        ..Default::default()
    }
}

/// What a cluster's DestinationRule `tls` becomes.
pub enum ClientTls {
    /// No transport socket: plaintext (mode DISABLE).
    Plaintext,
    /// Set the cluster's transport socket.
    Socket(Box<UpstreamTlsContext>),
    /// ISTIO_MUTUAL for a proxy without an identity: nothing to present, so the
    /// cluster stays plaintext (reported on /debug/configz).
    NoIdentity,
}

/// Istio's `buildUpstreamClusterTLSContext` for one cluster: `default_sni` is the
/// cluster's `outbound_.` SNI (ISTIO_MUTUAL without `sni`), `sans` the
/// destination's service accounts (ISTIO_MUTUAL without `subjectAltNames`).
/// Validation has accepted the mode; file paths are read by Envoy.
pub fn client_tls(
    tls: &ClientTlsSettings,
    identity: bool,
    default_sni: String,
    sans: &[String],
    http2: bool,
) -> ClientTls {
    let mode = tls.mode.as_deref().unwrap_or("DISABLE");
    let sni = tls.sni.clone().unwrap_or_default();
    match mode {
        "ISTIO_MUTUAL" if !identity => ClientTls::NoIdentity,
        "ISTIO_MUTUAL" => {
            let sans = if tls.subject_alt_names.is_empty() {
                sans.to_vec()
            } else {
                tls.subject_alt_names.clone()
            };
            let sni = if sni.is_empty() { default_sni } else { sni };
            ClientTls::Socket(Box::new(istio_mutual(sni, &sans, http2)))
        }
        "SIMPLE" | "MUTUAL" => {
            let skip = tls.insecure_skip_verify == Some(true);
            let credential = tls.credential_name.as_deref().filter(|n| !n.is_empty());
            let default_validation = CertificateValidationContext {
                match_typed_subject_alt_names: exact_uri_or_dns_sans(&tls.subject_alt_names),
                ..Default::default()
            };
            // `credentialName`: the CA from SDS `kubernetes://NAME-cacert`, combined
            // with the SAN check (Istio's `cluster_tls.go`); else the files, with
            // `caCrl` as the validation context's `crl`.
            let validation = (!skip).then(|| match credential {
                Some(name) => ValidationContextType::CombinedValidationContext(
                    CombinedCertificateValidationContext {
                        default_validation_context: Some(default_validation),
                        validation_context_sds_secret_config: Some(sds(
                            &super::credentials::ca_secret_name(name),
                        )),
                        ..Default::default()
                    },
                ),
                None => ValidationContextType::ValidationContext(CertificateValidationContext {
                    trusted_ca: tls.ca_certificates.as_deref().map(file),
                    crl: tls.ca_crl.as_deref().map(file),
                    ..default_validation
                }),
            });
            let mut common = CommonTlsContext {
                tls_params: Some(tls_1_2_to_1_3()),
                validation_context_type: validation,
                alpn_protocols: if http2 { vec!["h2".into()] } else { Vec::new() },
                ..Default::default()
            };
            if mode == "MUTUAL" {
                match credential {
                    Some(name) => {
                        common.tls_certificate_sds_secret_configs =
                            vec![sds(&super::credentials::key_pair_secret_name(name))]
                    }
                    None => {
                        common.tls_certificates = vec![TlsCertificate {
                            certificate_chain: tls.client_certificate.as_deref().map(file),
                            private_key: tls.private_key.as_deref().map(file),
                            ..Default::default()
                        }]
                    }
                }
            }
            ClientTls::Socket(Box::new(UpstreamTlsContext {
                common_tls_context: Some(common),
                sni,
                ..Default::default()
            }))
        }
        _ => ClientTls::Plaintext,
    }
}

/// `subjectAltNames` of SIMPLE/MUTUAL: Istio matches each against DNS and URI
/// SANs alike (`StringToExactMatch`); a `spiffe://` name is a URI, else a DNS name.
pub(crate) fn exact_uri_or_dns_sans(sans: &[String]) -> Vec<SubjectAltNameMatcher> {
    sans.iter()
        .map(|s| SubjectAltNameMatcher {
            san_type: if s.contains("://") {
                SanType::Uri as i32
            } else {
                SanType::Dns as i32
            },
            matcher: Some(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(s.clone())),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

/// Set `tls` as `c`'s transport socket (no socket matches).
pub fn set_transport_socket(c: &mut Cluster, tls: &UpstreamTlsContext) {
    c.transport_socket_matches.clear();
    c.transport_socket = Some(tls_socket(tls));
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use prost::Message;

    use super::*;
    use crate::model::Proxy;
    use crate::translate::{endpoints, generate, Generated};

    fn load(name: &str) -> (PushContext, Proxy) {
        crate::translate::golden::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{name}.yaml")),
        )
    }

    fn downstream(fc: &FilterChain) -> Option<DownstreamTlsContext> {
        let ts = fc.transport_socket.as_ref()?;
        let Some(ConfigType::TypedConfig(any)) = &ts.config_type else {
            return None;
        };
        DownstreamTlsContext::decode(any.value.as_slice()).ok()
    }

    /// (transport protocol, terminates mTLS requiring a client certificate) of
    /// every chain for `port` (0: the catch-all).
    fn chains(l: &Listener, port: u32) -> Vec<(String, bool)> {
        l.filter_chains
            .iter()
            .filter(|fc| {
                fc.filter_chain_match
                    .as_ref()
                    .and_then(|m| m.destination_port.as_ref())
                    .map_or(0, |p| p.value)
                    == port
            })
            .map(|fc| {
                let m = fc.filter_chain_match.clone().unwrap_or_default();
                let mtls = downstream(fc).is_some_and(|t| {
                    t.require_client_certificate.is_some_and(|b| b.value)
                        && t.common_tls_context.is_some_and(|c| {
                            c.tls_certificate_sds_secret_configs
                                .iter()
                                .any(|s| s.name == SDS_DEFAULT)
                        })
                });
                (m.transport_protocol, mtls)
            })
            .collect()
    }

    fn virtual_inbound(g: &Generated) -> &Listener {
        g.listeners
            .iter()
            .find(|l| l.name == "virtualInbound")
            .expect("virtualInbound")
    }

    fn tls(mtls: bool) -> (String, bool) {
        (TRANSPORT_TLS.to_string(), mtls)
    }

    fn plain() -> (String, bool) {
        (TRANSPORT_RAW_BUFFER.to_string(), false)
    }

    #[test]
    fn strict_has_only_mtls_chains_and_the_tls_inspector() {
        let (ctx, proxy) = load("mtls_strict");
        let g = generate(&proxy, &ctx);
        let l = virtual_inbound(&g);
        assert_eq!(chains(l, 8080), [tls(true)]);
        assert_eq!(chains(l, 9090), [tls(true)]);
        assert_eq!(chains(l, 0), [tls(true)]);
        assert!(l
            .listener_filters
            .iter()
            .any(|f| f.name == super::super::listener::TLS_INSPECTOR));
    }

    #[test]
    fn port_level_mode_replaces_the_workload_mode_for_that_port_only() {
        let (ctx, proxy) = load("mtls_port_level");
        let g = generate(&proxy, &ctx);
        let l = virtual_inbound(&g);
        // Workload STRICT over namespace DISABLE; 9090 DISABLE; 7070 UNSET inherits.
        assert_eq!(chains(l, 8080), [tls(true)]);
        assert_eq!(chains(l, 9090), [plain()]);
        assert_eq!(chains(l, 7070), [tls(true)]);
        assert_eq!(chains(l, 0), [tls(true)]);
    }

    /// The XFCC settings of a chain's HTTP connection manager.
    fn xfcc(fc: &FilterChain) -> (i32, Option<SetCurrentClientCertDetails>) {
        let Some(FilterConfig::TypedConfig(any)) = &fc.filters[0].config_type else {
            panic!("no typed config");
        };
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("HCM");
        (
            hcm.forward_client_cert_details,
            hcm.set_current_client_cert_details,
        )
    }

    #[test]
    fn mtls_chains_forward_the_client_identity_plaintext_chains_sanitize() {
        let (ctx, proxy) = load("mtls_permissive_none");
        let g = generate(&proxy, &ctx);
        let l = g
            .listeners
            .iter()
            .find(|l| l.name == "127.0.0.21_8080")
            .expect("ingress listener");
        assert_eq!(chains(l, 0), [tls(true), plain()]);
        let (forward, details) = xfcc(&l.filter_chains[0]);
        assert_eq!(forward, ForwardClientCertDetails::AppendForward as i32);
        let details = details.expect("set_current_client_cert_details");
        assert!(details.uri && details.dns && details.subject.is_some_and(|b| b.value));
        assert_eq!(
            xfcc(&l.filter_chains[1]),
            (ForwardClientCertDetails::Sanitize as i32, None)
        );
    }

    #[test]
    fn permissive_accepts_mtls_and_plaintext() {
        let (ctx, proxy) = load("mtls_permissive_none");
        let g = generate(&proxy, &ctx);
        let listener = |port: u32| {
            g.listeners
                .iter()
                .find(|l| l.name == format!("127.0.0.21_{port}"))
                .expect("ingress listener")
        };
        assert_eq!(chains(listener(8080), 0), [tls(true), plain()]);
        // TCP: plain TLS from a client without a sidecar passes through.
        assert_eq!(chains(listener(9090), 0), [tls(true), tls(false), plain()]);
        let alpn = &listener(8080).filter_chains[0]
            .filter_chain_match
            .as_ref()
            .expect("match")
            .application_protocols;
        assert!(alpn.contains(&"istio".to_string()) && alpn.contains(&"istio-h2".to_string()));
    }

    #[test]
    fn a_proxy_without_identity_gets_no_secret_and_stays_plaintext() {
        let (ctx, mut proxy) = load("mtls_strict");
        let with = generate(&proxy, &ctx);
        proxy.identity = None;
        let without = generate(&proxy, &ctx);
        let names_sds = |g: &Generated| {
            g.listeners
                .iter()
                .map(|l| l.encode_to_vec())
                .chain(g.clusters.iter().map(|c| c.encode_to_vec()))
                .any(|bytes| bytes.windows(6).any(|w| w == b"ROOTCA"))
        };
        assert!(names_sds(&with));
        assert!(!names_sds(&without));
        let l = virtual_inbound(&without);
        assert!(l
            .filter_chains
            .iter()
            .all(|fc| fc.transport_socket.is_none()
                && fc
                    .filter_chain_match
                    .as_ref()
                    .is_none_or(|m| m.transport_protocol.is_empty())));
        assert!(without
            .clusters
            .iter()
            .all(|c| c.transport_socket.is_none() && c.transport_socket_matches.is_empty()));
    }

    /// The endpoints of `cluster` marked `tlsMode: istio`, by address.
    fn marked(ctx: &PushContext, cluster: &str) -> Vec<(String, bool)> {
        let cla = ctx
            .services
            .values()
            .flat_map(|s| endpoints(s, ctx))
            .find(|c| c.cluster_name == cluster)
            .expect("assignment");
        cla.endpoints
            .iter()
            .flat_map(|l| l.lb_endpoints.iter())
            .map(|e| {
                let addr = match &e.host_identifier {
                    Some(envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(ep)) => {
                        match ep.address.as_ref().and_then(|a| a.address.as_ref()) {
                            Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s)) => s.address.clone(),
                            _ => String::new(),
                        }
                    }
                    _ => String::new(),
                };
                let istio = e
                    .metadata
                    .as_ref()
                    .and_then(|m| m.filter_metadata.get(TRANSPORT_SOCKET_MATCH))
                    .is_some_and(|s| *s == tls_mode_istio());
                (addr, istio)
            })
            .collect()
    }

    #[test]
    fn auto_mtls_to_meshed_endpoints_plaintext_to_the_others() {
        let (ctx, proxy) = load("mtls_strict");
        assert_eq!(
            marked(&ctx, "outbound|7000||order.base.svc.cluster.local"),
            [
                ("10.1.2.1".to_string(), true),
                ("10.1.2.2".to_string(), false)
            ]
        );
        let g = generate(&proxy, &ctx);
        let c = g
            .clusters
            .iter()
            .find(|c| c.name == "outbound|7000||order.base.svc.cluster.local")
            .expect("order cluster");
        let names: Vec<&str> = c
            .transport_socket_matches
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(names, ["tlsMode-istio", "tlsMode-disabled"]);
        let m = &c.transport_socket_matches[0];
        assert_eq!(m.r#match, Some(tls_mode_istio()));
        let Some(ConfigType::TypedConfig(any)) = m
            .transport_socket
            .as_ref()
            .and_then(|t| t.config_type.clone())
        else {
            panic!("no tls socket")
        };
        let up = UpstreamTlsContext::decode(any.value.as_slice()).expect("UpstreamTlsContext");
        assert_eq!(up.sni, "outbound_.7000_._.order.base.svc.cluster.local");
        let common = up.common_tls_context.expect("common");
        let Some(ValidationContextType::CombinedValidationContext(v)) =
            common.validation_context_type
        else {
            panic!("no combined validation context")
        };
        let sans: Vec<String> = v
            .default_validation_context
            .expect("default validation")
            .match_typed_subject_alt_names
            .iter()
            .filter_map(|m| match m.matcher.as_ref()?.match_pattern.as_ref()? {
                MatchPattern::Exact(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            sans,
            [
                "spiffe://cluster.local/ns/base/sa/order",
                "spiffe://cluster.local/ns/base/sa/order-legacy"
            ]
        );
        assert_eq!(
            v.validation_context_sds_secret_config.map(|s| s.name),
            Some(SDS_ROOT.to_string())
        );
    }

    #[test]
    fn disable_at_the_destination_turns_auto_mtls_off_there() {
        let (ctx, _) = load("mtls_port_level");
        assert_eq!(
            marked(&ctx, "outbound|7000||legacy.legacy.svc.cluster.local"),
            [("10.1.6.1".to_string(), false)]
        );
        // base is DISABLE namespace-wide too (only frontend's selector says STRICT).
        assert_eq!(
            marked(&ctx, "outbound|7000||order.base.svc.cluster.local"),
            [("10.1.2.1".to_string(), false)]
        );
        // The same pods under the mesh default (PERMISSIVE) take mTLS.
        let (ctx, _) = load("mtls_strict");
        assert_eq!(
            marked(&ctx, "outbound|7000||order.base.svc.cluster.local")[0],
            ("10.1.2.1".to_string(), true)
        );
    }
}
