//! Gateway validation: servers, ports, hosts, TLS settings.

use super::{valid_host, Findings};
use crate::model::istio::gateway::{Gateway, ServerProtocol};

/// A gateway server host whose labels are all `*` (`*.*`). Istio's validation would
/// reject it (only the first label may be a wildcard) but Tencent's mesh quick start
/// uses it; crossmesh accepts it as `*` and says so.
pub fn all_wildcard_host(h: &str) -> bool {
    h.contains('.') && h.split('.').all(|l| l == "*")
}

pub(super) fn gateway(g: &Gateway, out: &mut Findings) {
    if g.servers.is_empty() {
        out.err("spec.servers", "a Gateway needs at least one server");
    }
    let mut port_protocols: Vec<(u32, ServerProtocol, usize)> = Vec::new();
    for (i, s) in g.servers.iter().enumerate() {
        let f = format!("spec.servers[{i}]");
        if s.port.number == 0 || s.port.number > 65535 {
            out.err(
                format!("{f}.port.number"),
                format!("port {} is not in 1..65535", s.port.number),
            );
        }
        let proto = ServerProtocol::parse(&s.port.protocol);
        match proto {
            None => out.err(
                format!("{f}.port.protocol"),
                format!(
                    "unknown protocol {:?} (HTTP, HTTPS, GRPC, HTTP2, TCP, TLS, MONGO, MYSQL, REDIS)",
                    s.port.protocol
                ),
            ),
            Some(p) => {
                if let Some((_, other, j)) =
                    port_protocols.iter().find(|(n, _, _)| *n == s.port.number)
                {
                    let both_tls = matches!(p, ServerProtocol::Https | ServerProtocol::Tls)
                        && matches!(other, ServerProtocol::Https | ServerProtocol::Tls);
                    if !(both_tls || p == *other && p.is_http()) {
                        out.err(
                            format!("{f}.port"),
                            format!(
                                "port {} is already used by servers[{j}] with protocol {other:?}",
                                s.port.number
                            ),
                        );
                    }
                }
                port_protocols.push((s.port.number, p, i));
            }
        }
        out.unsupported(
            format!("{f}.bind"),
            &s.bind,
            "gateway listeners bind 0.0.0.0",
        );
        out.unsupported(
            format!("{f}.defaultEndpoint"),
            &s.default_endpoint,
            "only sidecars have default endpoints",
        );
        out.unsupported(
            format!("{f}.port.targetPort"),
            &s.port.target_port,
            "listeners bind the server port",
        );
        if s.hosts.is_empty() {
            out.err(format!("{f}.hosts"), "a server needs at least one host");
        }
        for (j, h) in s.hosts.iter().enumerate() {
            let (ns, host) = match h.split_once('/') {
                Some((ns, host)) => (Some(ns), host),
                None => (None, h.as_str()),
            };
            if let Some(ns) = ns {
                if !(ns == "*" || ns == "." || valid_host(ns, false).is_ok() && !ns.contains('.')) {
                    out.err(
                        format!("{f}.hosts[{j}]"),
                        format!("namespace {ns:?} in {h:?} is not *, . or a namespace name"),
                    );
                }
            }
            if all_wildcard_host(host) {
                out.warn(
                    format!("{f}.hosts[{j}]"),
                    format!("{host:?} is not a valid Istio wildcard (only the first label may be *); treated as \"*\""),
                );
            } else if let Err(e) = valid_host(host, true) {
                out.err(format!("{f}.hosts[{j}]"), e);
            }
        }
        if let Some(tls) = &s.tls {
            let tf = format!("{f}.tls");
            let mode = tls.mode.as_deref().map(str::to_ascii_uppercase);
            let terminating = matches!(
                mode.as_deref(),
                Some("SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL" | "ISTIO_MUTUAL")
            );
            match (proto, mode.as_deref()) {
                (Some(ServerProtocol::Https | ServerProtocol::Tls), Some("PASSTHROUGH")) => {}
                // East-west gateways (translate::network): SNI routing, no termination.
                (Some(ServerProtocol::Tls), Some("AUTO_PASSTHROUGH")) => {}
                // Termination (translate::gateway): HTTPS servers route HTTP, TLS
                // servers route TCP after termination.
                (Some(ServerProtocol::Https | ServerProtocol::Tls), Some(_)) if terminating => {}
                (Some(ServerProtocol::Https | ServerProtocol::Tls), m) => out.err(
                    format!("{tf}.mode"),
                    format!(
                        "mode {} is not supported (PASSTHROUGH, SIMPLE, MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL, or AUTO_PASSTHROUGH for TLS)",
                        m.unwrap_or("<unset>")
                    ),
                ),
                (_, None) => {}
                (_, Some(m)) => out.err(format!("{tf}.mode"), format!("mode {m} needs protocol HTTPS or TLS")),
            }
            // Certificates come from Kubernetes Secrets only (`credentialName`).
            let files: Vec<&str> = [
                ("serverCertificate", tls.server_certificate.is_some()),
                ("privateKey", tls.private_key.is_some()),
                ("caCertificates", tls.ca_certificates.is_some()),
                ("caCrl", tls.ca_crl.is_some()),
                ("credentialNames", !tls.credential_names.is_empty()),
                (
                    "caCertCredentialName",
                    tls.ca_cert_credential_name.is_some(),
                ),
                ("tlsCertificates", !tls.tls_certificates.is_empty()),
                ("insecureSkipVerify", tls.insecure_skip_verify.is_some()),
            ]
            .into_iter()
            .filter_map(|(n, set)| set.then_some(n))
            .collect();
            if !files.is_empty() {
                out.err(
                    tf.clone(),
                    format!(
                        "not supported by crossmesh: {} (certificates, CA and CRL come from the Kubernetes Secret named by credentialName: tls.crt, tls.key, ca.crt, ca.crl, or NAME-cacert)",
                        files.join(", ")
                    ),
                );
            }
            let m = mode.as_deref().unwrap_or("");
            let client_checks: Vec<&str> = [
                ("subjectAltNames", !tls.subject_alt_names.is_empty()),
                (
                    "verifyCertificateSpki",
                    !tls.verify_certificate_spki.is_empty(),
                ),
                (
                    "verifyCertificateHash",
                    !tls.verify_certificate_hash.is_empty(),
                ),
            ]
            .into_iter()
            .filter_map(|(n, set)| set.then_some(n))
            .collect();
            let tls_settings: Vec<&str> = [
                ("credentialName", tls.credential_name.is_some()),
                ("minProtocolVersion", tls.min_protocol_version.is_some()),
                ("maxProtocolVersion", tls.max_protocol_version.is_some()),
                ("cipherSuites", !tls.cipher_suites.is_empty()),
            ]
            .into_iter()
            .filter_map(|(n, set)| set.then_some(n))
            .chain(client_checks.iter().copied())
            .collect();
            match m {
                "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL" => {
                    if tls.credential_name.as_deref().unwrap_or("").is_empty() && files.is_empty() {
                        out.err(
                            format!("{tf}.credentialName"),
                            format!("required with mode {m}: the Kubernetes Secret (in the gateway's namespace) holding the server certificate and key"),
                        );
                    }
                    if m == "SIMPLE" && !client_checks.is_empty() {
                        out.err(
                            tf.clone(),
                            format!("{} check client certificates: they need mode MUTUAL or OPTIONAL_MUTUAL", client_checks.join(", ")),
                        );
                    }
                }
                "ISTIO_MUTUAL" => {
                    if tls.credential_name.is_some() {
                        out.err(
                            format!("{tf}.credentialName"),
                            "cannot be set with mode ISTIO_MUTUAL (the gateway's workload certificate is used)",
                        );
                    }
                }
                _ => {
                    if !tls_settings.is_empty() {
                        out.err(
                            tf.clone(),
                            format!("{} apply to TLS termination only (mode SIMPLE, MUTUAL, OPTIONAL_MUTUAL or ISTIO_MUTUAL)", tls_settings.join(", ")),
                        );
                    }
                }
            }
            let version = |field: &str, v: &Option<String>, out: &mut Findings| -> Option<usize> {
                const VERSIONS: [&str; 5] =
                    ["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"];
                let v = v.as_deref()?;
                let i = VERSIONS.iter().position(|x| x.eq_ignore_ascii_case(v));
                if i.is_none() {
                    out.err(
                        format!("{tf}.{field}"),
                        format!("unknown TLS version {v:?} (TLS_AUTO, TLSV1_0, TLSV1_1, TLSV1_2 or TLSV1_3)"),
                    );
                }
                i
            };
            let min = version("minProtocolVersion", &tls.min_protocol_version, out);
            let max = version("maxProtocolVersion", &tls.max_protocol_version, out);
            if let (Some(min), Some(max)) = (min, max) {
                if min > 0 && max > 0 && max < min {
                    out.err(
                        format!("{tf}.maxProtocolVersion"),
                        "must not be lower than minProtocolVersion",
                    );
                }
            }
            for (i, c) in tls.cipher_suites.iter().enumerate() {
                if c.trim().is_empty() {
                    out.err(format!("{tf}.cipherSuites[{i}]"), "must not be empty");
                }
            }
            if tls.https_redirect && !proto.is_some_and(ServerProtocol::is_http) {
                out.err(
                    format!("{tf}.httpsRedirect"),
                    "httpsRedirect applies to HTTP servers only",
                );
            }
        } else if matches!(proto, Some(ServerProtocol::Https | ServerProtocol::Tls)) {
            out.err(
                format!("{f}.tls"),
                "HTTPS and TLS servers need tls settings (crossmesh supports mode PASSTHROUGH)",
            );
        }
    }
}
