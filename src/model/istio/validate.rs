//! Istio's validation (`pkg/config/validation`) for the fields crossmesh reads,
//! plus rejection of fields crossmesh does not implement. An error rejects the
//! object; a warning keeps it in force and is shown on `/debug/configz`.

use std::collections::BTreeSet;

use super::common::{Percent, StringMatch, StringMatchKind};
use super::destination_rule::{
    ClientTlsSettings, ConnectionPoolSettings, DestinationRule, LoadBalancerSettings,
    OutlierDetection, TrafficPolicy,
};
use super::duration::IstioDuration;
use super::gateway::{Gateway, ServerProtocol};
use super::peer_authentication::PeerAuthentication;
use super::sidecar::Sidecar;
use super::virtual_service::{grpc_status_code, Headers, HttpRoute, VirtualService};
use super::{IstioObject, MESH_GATEWAY};

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// `spec.http[0].route[1].weight`.
    pub field: String,
    pub reason: String,
    /// A warning keeps the object in force.
    pub warning: bool,
}

#[derive(Default)]
struct Issues(Vec<Issue>);

impl Issues {
    fn err(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Issue {
            field: field.into(),
            reason: reason.into(),
            warning: false,
        });
    }
    fn warn(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Issue {
            field: field.into(),
            reason: reason.into(),
            warning: true,
        });
    }
    fn unsupported<T>(&mut self, field: impl Into<String>, v: &Option<T>, why: &str) {
        if v.is_some() {
            self.err(field, format!("not supported by crossmesh: {why}"));
        }
    }
    fn duration(&mut self, field: impl Into<String>, d: &Option<IstioDuration>) {
        if let Some(d) = d {
            if d.is_negative() {
                self.err(field, format!("duration {d} must not be negative"));
            }
        }
    }
    fn percent(&mut self, field: impl Into<String>, p: &Option<Percent>) {
        if let Some(p) = p {
            if !(0.0..=100.0).contains(&p.value) || p.value.is_nan() {
                self.err(
                    field,
                    format!("percentage {} must be between 0 and 100", p.value),
                );
            }
        }
    }
    fn non_negative(&mut self, field: impl Into<String>, v: i64) {
        if v < 0 {
            self.err(field, format!("{v} must not be negative"));
        }
    }
}

/// Errors and warnings for one parsed object.
pub fn validate(obj: &IstioObject) -> Vec<Issue> {
    let mut out = Issues::default();
    match obj {
        IstioObject::Gateway(c) => gateway(&c.spec, &mut out),
        IstioObject::VirtualService(c) => virtual_service(&c.spec, &mut out),
        IstioObject::DestinationRule(c) => destination_rule(&c.spec, &mut out),
        IstioObject::Sidecar(c) => sidecar(&c.spec, &mut out),
        IstioObject::PeerAuthentication(c) => peer_authentication(&c.spec, &mut out),
        IstioObject::RequestAuthentication(c) => {
            for (field, reason) in c.spec.problems(&c.meta.namespace) {
                out.err(field, reason);
            }
        }
        IstioObject::AuthorizationPolicy(c) => {
            for (field, reason) in c.spec.problems(&c.meta.namespace) {
                out.err(field, reason);
            }
        }
        IstioObject::ServiceEntry(c) => {
            for (field, reason, warning) in c.spec.problems() {
                if warning {
                    out.warn(field, reason);
                } else {
                    out.err(field, reason);
                }
            }
        }
        IstioObject::WorkloadEntry(c) => {
            for (field, reason) in c.spec.problems("spec", false) {
                out.err(field, reason);
            }
        }
    }
    out.0
}

/// Istio's `ValidatePeerAuthentication`: port-level modes only under a
/// workload selector, port keys in 1..=65535, selector labels well formed. An
/// unknown mode is already refused by the schema (`spec.mtls.mode`).
fn peer_authentication(pa: &PeerAuthentication, out: &mut Issues) {
    if let Some(sel) = &pa.selector {
        for (k, v) in &sel.match_labels {
            if k.is_empty() {
                out.err("spec.selector.matchLabels", "a label key must not be empty");
            }
            if v.contains('*') {
                out.err(
                    format!("spec.selector.matchLabels.{k}"),
                    "wildcards are not allowed in a workload selector",
                );
            }
        }
    }
    if !pa.port_level_mtls.is_empty() && pa.selector_labels().is_none() {
        out.err(
            "spec.portLevelMtls",
            "mesh/namespace peer authentication cannot have port level mTLS (portLevelMtls needs a selector with matchLabels)",
        );
    }
    for port in pa.port_level_mtls.keys() {
        match port.parse::<u32>() {
            Ok(p) if (1..=65535).contains(&p) => {}
            _ => out.err(
                format!("spec.portLevelMtls.{port}"),
                format!("{port:?} is not a port number in 1..65535 (keys are the workload's target ports)"),
            ),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, the form Kubernetes writes.
pub fn is_rfc3339_utc(ts: &str) -> bool {
    let b = ts.as_bytes();
    if b.len() < 20 || b[b.len() - 1] != b'Z' {
        return false;
    }
    let shape = b"dddd-dd-ddTdd:dd:dd";
    let fixed = b[..19].iter().zip(shape).all(|(c, s)| match s {
        b'd' => c.is_ascii_digit(),
        s => c == s,
    });
    let rest = &b[19..b.len() - 1];
    fixed
        && (rest.is_empty()
            || (rest[0] == b'.' && rest.len() > 1 && rest[1..].iter().all(u8::is_ascii_digit)))
}

/// Whether `h` is an acceptable host: `*`, `*.suffix` or DNS labels.
fn valid_host(h: &str, allow_wildcard: bool) -> Result<(), String> {
    if h.is_empty() {
        return Err("empty host".into());
    }
    if h == "*" {
        return if allow_wildcard {
            Ok(())
        } else {
            Err("wildcard host * is not allowed here".into())
        };
    }
    let (first, rest) = match h.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (h, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if first == "*" {
        if !allow_wildcard {
            return Err(format!("wildcard host {h:?} is not allowed here"));
        }
    } else if !label_ok(first) {
        return Err(format!(
            "host {h:?}: label {first:?} is not a DNS-1123 label"
        ));
    }
    if let Some(rest) = rest {
        for l in rest.split('.') {
            if !label_ok(l) {
                return Err(format!("host {h:?}: label {l:?} is not a DNS-1123 label"));
            }
        }
    }
    Ok(())
}

/// A gateway server host whose labels are all `*` (`*.*`). Istio's validation would
/// reject it (only the first label may be a wildcard) but Tencent's mesh quick start
/// uses it; crossmesh accepts it as `*` and says so.
pub fn all_wildcard_host(h: &str) -> bool {
    h.contains('.') && h.split('.').all(|l| l == "*")
}

fn gateway(g: &Gateway, out: &mut Issues) {
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
            let version = |field: &str, v: &Option<String>, out: &mut Issues| -> Option<usize> {
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

/// RE2's repetition limits (Envoy and gRPC use RE2; Rust's `regex` has
/// neither): a count above 1000 in `{m}`, `{m,}` or `{m,n}` is refused, and so
/// is nesting whose counts multiply past 1000 (RE2's `RepetitionWalker`:
/// 1000 divided by each count on the way down, refused when it reaches 0).
/// Called on a pattern `regex` already accepted, so its nesting is bounded.
pub(crate) fn re2_repeat_limits(pattern: &str) -> Result<(), String> {
    use regex_syntax::ast::{Ast, RepetitionKind, RepetitionRange};
    const MAX_REPEAT: u32 = 1000;
    fn walk(ast: &Ast, budget: u32) -> Result<(), String> {
        match ast {
            Ast::Repetition(rep) => {
                let (min, max) = match &rep.op.kind {
                    RepetitionKind::Range(RepetitionRange::Exactly(n)) => (*n, Some(*n)),
                    RepetitionKind::Range(RepetitionRange::AtLeast(n)) => (*n, None),
                    RepetitionKind::Range(RepetitionRange::Bounded(m, n)) => (*m, Some(*n)),
                    _ => return walk(&rep.ast, budget),
                };
                if min > MAX_REPEAT || max.is_some_and(|n| n > MAX_REPEAT) {
                    return Err(format!(
                        "repetition count above {MAX_REPEAT} (RE2, used by Envoy and gRPC, refuses it)"
                    ));
                }
                let m = max.unwrap_or(min);
                let budget = if m > 0 { budget / m } else { budget };
                if budget == 0 {
                    return Err(format!(
                        "nested repetition counts multiply past {MAX_REPEAT} (RE2, used by Envoy and gRPC, refuses it)"
                    ));
                }
                walk(&rep.ast, budget)
            }
            Ast::Group(g) => walk(&g.ast, budget),
            Ast::Alternation(a) => a.asts.iter().try_for_each(|x| walk(x, budget)),
            Ast::Concat(c) => c.asts.iter().try_for_each(|x| walk(x, budget)),
            _ => Ok(()),
        }
    }
    let ast = regex_syntax::ast::parse::Parser::new()
        .parse(pattern)
        .map_err(|e| e.to_string())?;
    walk(&ast, MAX_REPEAT)
}

fn string_match(field: &str, m: &StringMatch, presence_ok: bool, out: &mut Issues) {
    if m.set_count() > 1 {
        out.err(field, "set only one of exact, prefix, regex");
    }
    match m.kind() {
        StringMatchKind::Present if !presence_ok => {
            out.err(field, "set one of exact, prefix, regex")
        }
        StringMatchKind::Regex(r) => {
            if let Err(e) = regex::Regex::new(r) {
                out.err(
                    field,
                    format!(
                        "invalid regex {r:?}: {}",
                        e.to_string().lines().last().unwrap_or("")
                    ),
                );
            } else if let Err(e) = re2_repeat_limits(r) {
                out.err(field, format!("invalid regex {r:?}: {e}"));
            }
        }
        _ => {}
    }
}

/// Istio's `exportTo` entries: `*` (everywhere), `.` (own namespace) or namespace
/// names; `*` cannot be combined with anything else.
fn export_to(field: &str, list: &[String], out: &mut Issues) {
    for (i, e) in list.iter().enumerate() {
        let ok = e == "*" || e == "." || (valid_host(e, false).is_ok() && !e.contains('.'));
        if !ok {
            out.err(
                format!("{field}[{i}]"),
                format!("{e:?} is not *, . or a namespace name"),
            );
        }
    }
    if list.len() > 1 && list.iter().any(|e| e == "*") {
        out.err(
            field,
            "* (everywhere) cannot be combined with other entries",
        );
    }
}

fn gateway_list(field: &str, gws: &[String], out: &mut Issues) {
    for (i, g) in gws.iter().enumerate() {
        if g.is_empty() || g.split('/').count() > 2 || g.split('/').any(str::is_empty) {
            out.err(
                format!("{field}[{i}]"),
                format!("{g:?} is not mesh, NAME or NAMESPACE/NAME"),
            );
        }
    }
}

fn headers(field: &str, h: &Option<Headers>, out: &mut Issues) {
    let Some(h) = h else { return };
    for (side, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else { continue };
        for name in ops
            .set
            .keys()
            .chain(ops.add.keys())
            .chain(ops.remove.iter())
        {
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                out.err(
                    format!("{field}.{side}"),
                    format!("invalid header name {name:?}"),
                );
            }
        }
    }
}

const RETRY_POLICIES: [&str; 16] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

fn virtual_service(vs: &VirtualService, out: &mut Issues) {
    if vs.hosts.is_empty() {
        // Istio accepts a VirtualService without hosts only as a delegate (the
        // target of another one's `delegate`).
        out.err(
            "spec.hosts",
            "a VirtualService needs at least one host (one without hosts is a delegate; delegate VirtualServices are not implemented)",
        );
    }
    let mesh_bound = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == MESH_GATEWAY);
    for (i, h) in vs.hosts.iter().enumerate() {
        if h == "*" && mesh_bound {
            out.err(
                format!("spec.hosts[{i}]"),
                "wildcard host * is not allowed for the mesh gateway",
            );
        } else if let Err(e) = valid_host(h, true) {
            out.err(format!("spec.hosts[{i}]"), e);
        }
    }
    gateway_list("spec.gateways", &vs.gateways, out);
    export_to("spec.exportTo", &vs.export_to, out);
    if vs.http.is_empty() && vs.tcp.is_empty() && vs.tls.is_empty() {
        out.err("spec", "a VirtualService needs http, tcp or tls routes");
    }
    for (i, r) in vs.http.iter().enumerate() {
        http_route(&format!("spec.http[{i}]"), r, out);
    }
    for (i, r) in vs.tcp.iter().enumerate() {
        let f = format!("spec.tcp[{i}]");
        for (j, m) in r.matches.iter().enumerate() {
            let mf = format!("{f}.match[{j}]");
            gateway_list(&format!("{mf}.gateways"), &m.gateways, out);
            out.unsupported(
                format!("{mf}.sourceSubnet"),
                &m.source_subnet,
                "deprecated; not implemented",
            );
            if !m.destination_subnets.is_empty() {
                out.err(
                    format!("{mf}.destinationSubnets"),
                    "not supported by crossmesh yet",
                );
            }
        }
        l4_destinations(
            &f,
            r.route.iter().map(|d| (&d.destination.host, d.weight)),
            out,
        );
    }
    for (i, r) in vs.tls.iter().enumerate() {
        let f = format!("spec.tls[{i}]");
        if r.matches.is_empty() {
            out.err(
                format!("{f}.match"),
                "a TLS route needs at least one match with sniHosts",
            );
        }
        for (j, m) in r.matches.iter().enumerate() {
            let mf = format!("{f}.match[{j}]");
            gateway_list(&format!("{mf}.gateways"), &m.gateways, out);
            if m.sni_hosts.is_empty() {
                out.err(
                    format!("{mf}.sniHosts"),
                    "a TLS match needs at least one SNI host",
                );
            }
            for (k, h) in m.sni_hosts.iter().enumerate() {
                if let Err(e) = valid_host(h, true) {
                    out.err(format!("{mf}.sniHosts[{k}]"), e);
                }
            }
            if !m.destination_subnets.is_empty() {
                out.err(
                    format!("{mf}.destinationSubnets"),
                    "not supported by crossmesh yet",
                );
            }
        }
        l4_destinations(
            &f,
            r.route.iter().map(|d| (&d.destination.host, d.weight)),
            out,
        );
    }
}

fn l4_destinations<'a>(
    f: &str,
    dests: impl Iterator<Item = (&'a String, Option<i32>)>,
    out: &mut Issues,
) {
    let dests: Vec<_> = dests.collect();
    if dests.is_empty() {
        out.err(format!("{f}.route"), "at least one destination is required");
    }
    weights(
        f,
        &dests
            .iter()
            .map(|(h, w)| (h.as_str(), *w))
            .collect::<Vec<_>>(),
        out,
    );
}

/// Istio: every destination needs a host; weights are non-negative; with more than
/// one destination they must add up to 100.
fn weights(f: &str, dests: &[(&str, Option<i32>)], out: &mut Issues) {
    let mut total: i64 = 0;
    for (j, (host, w)) in dests.iter().enumerate() {
        if host.is_empty() {
            out.err(
                format!("{f}.route[{j}].destination.host"),
                "a destination needs a host",
            );
        } else if let Err(e) = valid_host(host, false) {
            out.err(format!("{f}.route[{j}].destination.host"), e);
        }
        let w = w.unwrap_or(0) as i64;
        out.non_negative(format!("{f}.route[{j}].weight"), w);
        total += w;
    }
    if dests.len() > 1 && total != 100 {
        out.err(
            format!("{f}.route"),
            format!("destination weights add up to {total}, not 100"),
        );
    }
}

fn http_route(f: &str, r: &HttpRoute, out: &mut Issues) {
    out.unsupported(
        format!("{f}.delegate"),
        &r.delegate,
        "delegate VirtualServices are not implemented",
    );
    let actions = [
        !r.route.is_empty(),
        r.redirect.is_some(),
        r.direct_response.is_some(),
    ];
    match actions.iter().filter(|a| **a).count() {
        // A delegating route has no action of its own (rejected above).
        0 if r.delegate.is_some() => {}
        0 => out.err(f, "one of route, redirect or directResponse is required"),
        1 => {}
        _ => out.err(f, "set only one of route, redirect and directResponse"),
    }
    if r.rewrite.is_some() && r.redirect.is_some() {
        out.err(
            format!("{f}.rewrite"),
            "rewrite cannot be combined with redirect",
        );
    }
    // Istio's validation: a redirect or direct response is answered by the proxy
    // itself, so there is nothing to rewrite and no fault to inject upstream.
    for (set, action) in [
        (r.redirect.is_some(), "redirect"),
        (r.direct_response.is_some(), "directResponse"),
    ] {
        if !set {
            continue;
        }
        if r.fault.is_some() {
            out.err(
                format!("{f}.fault"),
                format!("fault cannot be combined with {action}"),
            );
        }
        if r.rewrite.is_some() && action == "directResponse" {
            out.err(
                format!("{f}.rewrite"),
                "rewrite cannot be combined with directResponse",
            );
        }
        // Istio accepts these but they only act on a forwarded request (Envoy's
        // RouteAction); say so instead of dropping them silently.
        for (name, present) in [
            ("timeout", r.timeout.is_some()),
            ("retries", r.retries.is_some()),
            ("mirror", r.mirror.is_some()),
            ("mirrors", !r.mirrors.is_empty()),
        ] {
            if present {
                out.warn(
                    format!("{f}.{name}"),
                    format!("has no effect with {action}: only forwarded requests have {name}"),
                );
            }
        }
    }
    for (j, m) in r.matches.iter().enumerate() {
        let mf = format!("{f}.match[{j}]");
        for (name, sm) in [
            ("uri", &m.uri),
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if let Some(sm) = sm {
                string_match(&format!("{mf}.{name}"), sm, false, out);
            }
        }
        for (name, map) in [
            ("headers", &m.headers),
            ("withoutHeaders", &m.without_headers),
            ("queryParams", &m.query_params),
        ] {
            for (k, sm) in map {
                if k.is_empty() {
                    out.err(format!("{mf}.{name}"), "empty name");
                }
                string_match(&format!("{mf}.{name}.{k}"), sm, true, out);
            }
        }
        if let Some(p) = m.port {
            if p == 0 || p > 65535 {
                out.err(format!("{mf}.port"), format!("port {p} is not in 1..65535"));
            }
        }
        gateway_list(&format!("{mf}.gateways"), &m.gateways, out);
    }
    let dests: Vec<(&str, Option<i32>)> = r
        .route
        .iter()
        .map(|d| (d.destination.host.as_str(), d.weight))
        .collect();
    weights(f, &dests, out);
    for (j, d) in r.route.iter().enumerate() {
        headers(&format!("{f}.route[{j}].headers"), &d.headers, out);
    }
    if let Some(rd) = &r.redirect {
        out.unsupported(
            format!("{f}.redirect.prefixRewrite"),
            &rd.prefix_rewrite,
            "redirects with a prefix rewrite are not implemented (use uri)",
        );
        if let Some(code) = rd.redirect_code {
            if ![301, 302, 303, 307, 308].contains(&code) {
                out.err(
                    format!("{f}.redirect.redirectCode"),
                    format!("{code} is not 301, 302, 303, 307 or 308"),
                );
            }
        }
        if let Some(dp) = &rd.derive_port {
            if !["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"].contains(&dp.as_str()) {
                out.err(
                    format!("{f}.redirect.derivePort"),
                    format!("{dp:?} is not FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT"),
                );
            }
            if rd.port.is_some() {
                out.err(
                    format!("{f}.redirect"),
                    "set only one of port and derivePort",
                );
            }
        }
        if let Some(p) = rd.port {
            if p == 0 || p > 65535 {
                out.err(
                    format!("{f}.redirect.port"),
                    format!("port {p} is not in 1..65535"),
                );
            }
        }
    }
    if let Some(dr) = &r.direct_response {
        if !(200..=599).contains(&dr.status) {
            out.err(
                format!("{f}.directResponse.status"),
                format!("{} is not an HTTP status", dr.status),
            );
        }
        if let Some(b) = &dr.body {
            if b.string.is_some() && b.bytes.is_some() {
                out.err(
                    format!("{f}.directResponse.body"),
                    "set only one of string and bytes",
                );
            }
            if let Some(Err(e)) = b
                .bytes
                .as_deref()
                .map(super::virtual_service::decode_base64)
            {
                out.err(
                    format!("{f}.directResponse.body.bytes"),
                    format!("is not base64: {e}"),
                );
            }
        }
    }
    if let Some(rw) = &r.rewrite {
        if let Some(rr) = &rw.uri_regex_rewrite {
            if rw.uri.is_some() {
                out.err(
                    format!("{f}.rewrite"),
                    "set only one of uri and uriRegexRewrite",
                );
            }
            if let Err(e) = regex::Regex::new(&rr.pattern) {
                out.err(
                    format!("{f}.rewrite.uriRegexRewrite.match"),
                    format!(
                        "invalid regex: {}",
                        e.to_string().lines().last().unwrap_or("")
                    ),
                );
            } else if let Err(e) = re2_repeat_limits(&rr.pattern) {
                out.err(
                    format!("{f}.rewrite.uriRegexRewrite.match"),
                    format!("invalid regex: {e}"),
                );
            }
        }
    }
    out.duration(format!("{f}.timeout"), &r.timeout);
    if let Some(rt) = &r.retries {
        out.non_negative(format!("{f}.retries.attempts"), rt.attempts as i64);
        out.duration(format!("{f}.retries.perTryTimeout"), &rt.per_try_timeout);
        out.duration(format!("{f}.retries.backoff"), &rt.backoff);
        if rt.retry_ignore_previous_hosts == Some(false) {
            out.err(
                format!("{f}.retries.retryIgnorePreviousHosts"),
                "not supported by crossmesh: false is not implemented; retries always avoid the hosts already tried (Istio's default, true)",
            );
        }
        if let Some(on) = &rt.retry_on {
            for p in on.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                if !(RETRY_POLICIES.contains(&p)
                    || p.parse::<u32>().is_ok_and(|c| (100..600).contains(&c)))
                {
                    out.err(
                        format!("{f}.retries.retryOn"),
                        format!("{p:?} is not an Envoy retry policy or HTTP status"),
                    );
                }
            }
        }
    }
    if let Some(fault) = &r.fault {
        let ff = format!("{f}.fault");
        if fault.delay.is_none() && fault.abort.is_none() {
            out.err(ff.clone(), "a fault needs delay or abort");
        }
        if let Some(d) = &fault.delay {
            out.unsupported(
                format!("{ff}.delay.exponentialDelay"),
                &d.exponential_delay,
                "Istio does not implement it either",
            );
            match d.fixed_delay {
                None if d.exponential_delay.is_none() => {
                    out.err(format!("{ff}.delay.fixedDelay"), "fixedDelay is required")
                }
                _ => out.duration(format!("{ff}.delay.fixedDelay"), &d.fixed_delay),
            }
            out.percent(format!("{ff}.delay.percentage"), &d.percentage);
            if d.percent.is_some() && d.percentage.is_some() {
                out.warn(
                    format!("{ff}.delay.percent"),
                    "deprecated; ignored because percentage is set",
                );
            }
            if let Some(p) = d.percent {
                if !(0..=100).contains(&p) {
                    out.err(
                        format!("{ff}.delay.percent"),
                        format!("{p} is not in 0..100"),
                    );
                }
            }
        }
        if let Some(a) = &fault.abort {
            out.unsupported(
                format!("{ff}.abort.http2Error"),
                &a.http2_error,
                "not implemented",
            );
            match (a.http_status, &a.grpc_status) {
                (Some(s), None) if !(200..600).contains(&s) => out.err(
                    format!("{ff}.abort.httpStatus"),
                    format!("{s} is not in 200..599"),
                ),
                (Some(_), None) => {}
                (None, Some(g)) => {
                    if grpc_status_code(g).is_none() {
                        out.err(
                            format!("{ff}.abort.grpcStatus"),
                            format!("{g:?} is not a gRPC status"),
                        );
                    }
                }
                (None, None) if a.http2_error.is_none() => out.err(
                    format!("{ff}.abort"),
                    "httpStatus or grpcStatus is required",
                ),
                (None, None) => {}
                (Some(_), Some(_)) => out.err(
                    format!("{ff}.abort"),
                    "set only one of httpStatus and grpcStatus",
                ),
            }
            out.percent(format!("{ff}.abort.percentage"), &a.percentage);
        }
    }
    if r.mirror.is_some() && !r.mirrors.is_empty() {
        out.err(format!("{f}.mirrors"), "set only one of mirror and mirrors");
    }
    if let Some(m) = &r.mirror {
        if let Err(e) = valid_host(&m.host, false) {
            out.err(format!("{f}.mirror.host"), e);
        }
    }
    out.percent(format!("{f}.mirrorPercentage"), &r.mirror_percentage);
    if r.mirror_percent.is_some_and(|p| p > 100) {
        out.err(format!("{f}.mirrorPercent"), "must be at most 100");
    }
    if r.mirror.is_some() && r.mirror_percent.is_some() && r.mirror_percentage.is_some() {
        out.warn(
            format!("{f}.mirrorPercent"),
            "deprecated; ignored because mirrorPercentage is set",
        );
    }
    // Istio: mirrorPercentage/mirrorPercent scale `mirror` only; each `mirrors`
    // entry carries its own percentage.
    if r.mirror.is_none() {
        for (name, set) in [
            ("mirrorPercentage", r.mirror_percentage.is_some()),
            ("mirrorPercent", r.mirror_percent.is_some()),
        ] {
            if set {
                out.warn(
                    format!("{f}.{name}"),
                    if r.mirrors.is_empty() {
                        "has no effect without mirror".to_string()
                    } else {
                        "has no effect on mirrors: set mirrors[].percentage instead".to_string()
                    },
                );
            }
        }
    }
    for (j, m) in r.mirrors.iter().enumerate() {
        out.percent(format!("{f}.mirrors[{j}].percentage"), &m.percentage);
        if let Err(e) = valid_host(&m.destination.host, false) {
            out.err(format!("{f}.mirrors[{j}].destination.host"), e);
        }
    }
    if let Some(c) = &r.cors_policy {
        for (j, o) in c.allow_origins.iter().enumerate() {
            string_match(&format!("{f}.corsPolicy.allowOrigins[{j}]"), o, false, out);
        }
        out.duration(format!("{f}.corsPolicy.maxAge"), &c.max_age);
        if let Some(u) = &c.unmatched_preflights {
            if !["UNSPECIFIED", "FORWARD", "IGNORE"].contains(&u.as_str()) {
                out.err(
                    format!("{f}.corsPolicy.unmatchedPreflights"),
                    format!("{u:?} is not FORWARD or IGNORE"),
                );
            }
        }
    }
    headers(&format!("{f}.headers"), &r.headers, out);
}

fn destination_rule(dr: &DestinationRule, out: &mut Issues) {
    if let Err(e) = valid_host(&dr.host, true) {
        out.err("spec.host", e);
    }
    out.unsupported(
        "spec.workloadSelector",
        &dr.workload_selector,
        "workload-scoped rules are not implemented",
    );
    export_to("spec.exportTo", &dr.export_to, out);
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy("spec.trafficPolicy", tp, out);
    }
    let mut names = BTreeSet::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        let f = format!("spec.subsets[{i}]");
        if s.name.is_empty() {
            out.err(format!("{f}.name"), "a subset needs a name");
        } else if !names.insert(s.name.as_str()) {
            out.err(
                format!("{f}.name"),
                format!("duplicate subset name {:?}", s.name),
            );
        } else if s.name.contains('|') {
            out.err(format!("{f}.name"), "subset names cannot contain '|'");
        }
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(&format!("{f}.trafficPolicy"), tp, out);
        }
    }
}

fn traffic_policy(f: &str, tp: &TrafficPolicy, out: &mut Issues) {
    out.unsupported(format!("{f}.tunnel"), &tp.tunnel, "not implemented");
    out.unsupported(
        format!("{f}.proxyProtocol"),
        &tp.proxy_protocol,
        "not implemented",
    );
    out.unsupported(
        format!("{f}.retryBudget"),
        &tp.retry_budget,
        "retry budgets are not implemented",
    );
    policy_parts(
        f,
        &tp.load_balancer,
        &tp.connection_pool,
        &tp.outlier_detection,
        &tp.tls,
        out,
    );
    let mut ports = BTreeSet::new();
    for (i, p) in tp.port_level_settings.iter().enumerate() {
        let pf = format!("{f}.portLevelSettings[{i}]");
        if p.port.number == 0 || p.port.number > 65535 {
            out.err(
                format!("{pf}.port.number"),
                format!("port {} is not in 1..65535", p.port.number),
            );
        } else if !ports.insert(p.port.number) {
            out.err(
                format!("{pf}.port.number"),
                format!("port {} appears twice", p.port.number),
            );
        }
        policy_parts(
            &pf,
            &p.load_balancer,
            &p.connection_pool,
            &p.outlier_detection,
            &p.tls,
            out,
        );
    }
}

fn policy_parts(
    f: &str,
    lb: &Option<LoadBalancerSettings>,
    cp: &Option<ConnectionPoolSettings>,
    od: &Option<OutlierDetection>,
    tls: &Option<ClientTlsSettings>,
    out: &mut Issues,
) {
    if let Some(lb) = lb {
        load_balancer(&format!("{f}.loadBalancer"), lb, out);
    }
    if let Some(cp) = cp {
        connection_pool(&format!("{f}.connectionPool"), cp, out);
    }
    if let Some(od) = od {
        outlier(&format!("{f}.outlierDetection"), od, out);
    }
    if let Some(tls) = tls {
        // Istio's default mode is DISABLE (the enum's zero value).
        match Some(tls.mode.as_deref().unwrap_or("DISABLE")) {
            Some("DISABLE") => {
                let extra: Vec<&str> = [
                    ("clientCertificate", tls.client_certificate.is_some()),
                    ("privateKey", tls.private_key.is_some()),
                    ("caCertificates", tls.ca_certificates.is_some()),
                    ("credentialName", tls.credential_name.is_some()),
                    ("subjectAltNames", !tls.subject_alt_names.is_empty()),
                    ("sni", tls.sni.is_some()),
                    ("insecureSkipVerify", tls.insecure_skip_verify.is_some()),
                    ("caCrl", tls.ca_crl.is_some()),
                ]
                .into_iter()
                .filter_map(|(n, set)| set.then_some(n))
                .collect();
                if !extra.is_empty() {
                    out.warn(
                        format!("{f}.tls"),
                        format!("{} have no effect with mode DISABLE", extra.join(", ")),
                    );
                }
            }
            Some(m @ ("SIMPLE" | "MUTUAL" | "ISTIO_MUTUAL")) => {
                if tls.credential_name.is_some() {
                    // Istio's `validateTLS`: a Secret replaces every file.
                    let files: Vec<&str> = [
                        ("clientCertificate", tls.client_certificate.is_some()),
                        ("privateKey", tls.private_key.is_some()),
                        ("caCertificates", tls.ca_certificates.is_some()),
                        ("caCrl", tls.ca_crl.is_some()),
                    ]
                    .into_iter()
                    .filter_map(|(n, set)| set.then_some(n))
                    .collect();
                    if m == "ISTIO_MUTUAL" {
                        out.err(
                            format!("{f}.tls.credentialName"),
                            "cannot be set with mode ISTIO_MUTUAL (the workload certificate is used)",
                        );
                    } else if !files.is_empty() {
                        out.err(
                            format!("{f}.tls"),
                            format!("cannot specify {} if credentialName is set (the Secret holds the certificate, key, CA and CRL)", files.join(", ")),
                        );
                    }
                }
                if m == "ISTIO_MUTUAL" {
                    // Istio: the workload certificate is used, never files.
                    let files: Vec<&str> = [
                        ("clientCertificate", tls.client_certificate.is_some()),
                        ("privateKey", tls.private_key.is_some()),
                        ("caCertificates", tls.ca_certificates.is_some()),
                        ("caCrl", tls.ca_crl.is_some()),
                    ]
                    .into_iter()
                    .filter_map(|(n, set)| set.then_some(n))
                    .collect();
                    if !files.is_empty() {
                        out.err(
                            format!("{f}.tls"),
                            format!("cannot specify {} with mode ISTIO_MUTUAL (the workload certificate and the mesh trust bundle are used)", files.join(", ")),
                        );
                    }
                } else if m == "MUTUAL" && tls.credential_name.is_none() {
                    if tls.client_certificate.as_deref().unwrap_or("").is_empty() {
                        out.err(
                            format!("{f}.tls.clientCertificate"),
                            "client certificate required for mutual tls",
                        );
                    }
                    if tls.private_key.as_deref().unwrap_or("").is_empty() {
                        out.err(
                            format!("{f}.tls.privateKey"),
                            "private key required for mutual tls",
                        );
                    }
                }
                if m != "ISTIO_MUTUAL"
                    && tls.ca_crl.is_some()
                    && tls.ca_certificates.is_none()
                    && tls.credential_name.is_none()
                {
                    out.err(
                        format!("{f}.tls.caCrl"),
                        "a CRL needs the CA it revokes for: set caCertificates",
                    );
                }
                if m == "ISTIO_MUTUAL" && tls.insecure_skip_verify == Some(true) {
                    out.err(
                        format!("{f}.tls.insecureSkipVerify"),
                        "cannot be set with mode ISTIO_MUTUAL (the peer is always verified against the mesh root)",
                    );
                }
                for (i, san) in tls.subject_alt_names.iter().enumerate() {
                    if san.is_empty() {
                        out.err(format!("{f}.tls.subjectAltNames[{i}]"), "must not be empty");
                    }
                }
            }
            m => out.err(
                format!("{f}.tls.mode"),
                format!(
                    "unknown mode {} (DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL)",
                    m.map(|m| format!("{m:?}"))
                        .unwrap_or_else(|| "<unset>".into())
                ),
            ),
        }
    }
}

fn load_balancer(f: &str, lb: &LoadBalancerSettings, out: &mut Issues) {
    if let Some(s) = &lb.simple {
        if ![
            "UNSPECIFIED",
            "LEAST_CONN",
            "RANDOM",
            "PASSTHROUGH",
            "ROUND_ROBIN",
            "LEAST_REQUEST",
        ]
        .contains(&s.as_str())
        {
            out.err(
                format!("{f}.simple"),
                format!("{s:?} is not ROUND_ROBIN, LEAST_REQUEST, RANDOM or PASSTHROUGH"),
            );
        }
        if lb.consistent_hash.is_some() {
            out.err(f, "set only one of simple and consistentHash");
        }
    }
    if let Some(l) = &lb.locality_lb_setting {
        for (field, reason) in super::destination_rule::validate_locality_setting(l) {
            out.err(format!("{f}.localityLbSetting{field}"), reason);
        }
    }
    out.unsupported(
        format!("{f}.zoneAwareLbSetting"),
        &lb.zone_aware_lb_setting,
        "zone-aware load balancing is not implemented (localityLbSetting is)",
    );
    out.unsupported(
        format!("{f}.warmup"),
        &lb.warmup,
        "warmup (duration, minimumPercent, aggression) is not implemented; warmupDurationSecs is",
    );
    out.duration(format!("{f}.warmupDurationSecs"), &lb.warmup_duration_secs);
    if lb.warmup_duration_secs.is_some() {
        // Envoy's slow start exists only for round robin and least request.
        let other = match (lb.simple.as_deref(), &lb.consistent_hash) {
            (_, Some(_)) => Some("consistentHash"),
            (Some(s @ ("RANDOM" | "PASSTHROUGH")), _) => Some(s),
            _ => None,
        };
        if let Some(other) = other {
            out.warn(
                format!("{f}.warmupDurationSecs"),
                format!("has no effect with {other}: slow start applies to ROUND_ROBIN and LEAST_REQUEST only"),
            );
        }
    }
    if let Some(ch) = &lb.consistent_hash {
        let keys: Vec<&str> = [
            ch.http_header_name.as_ref().map(|_| "httpHeaderName"),
            ch.http_cookie.as_ref().map(|_| "httpCookie"),
            ch.use_source_ip.filter(|b| *b).map(|_| "useSourceIp"),
            ch.http_query_parameter_name
                .as_ref()
                .map(|_| "httpQueryParameterName"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let cf = format!("{f}.consistentHash");
        match keys.len() {
            0 => out.err(
                cf.clone(),
                "set one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
            ),
            1 => {}
            _ => out.err(
                cf.clone(),
                format!("conflicting hash keys {}: set only one", keys.join(", ")),
            ),
        }
        if let Some(m) = &ch.maglev {
            // Envoy rejects (NACKs) any other size (Istio API: "must be prime
            // number limited to 5000011").
            let n = m.table_size;
            let prime = n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0);
            if n != 0 && !(prime && n <= 5_000_011) {
                out.err(
                    format!("{cf}.maglev.tableSize"),
                    format!("{n} is not a prime number up to 5000011"),
                );
            }
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            out.err(cf.clone(), "set only one of ringHash and maglev");
        }
        if ch.minimum_ring_size.is_some() && (ch.ring_hash.is_some() || ch.maglev.is_some()) {
            out.err(
                format!("{cf}.minimumRingSize"),
                "deprecated field; use ringHash.minimumRingSize alone",
            );
        }
        if let Some(c) = &ch.http_cookie {
            if c.name.is_empty() {
                out.err(format!("{cf}.httpCookie.name"), "a cookie name is required");
            }
            out.duration(format!("{cf}.httpCookie.ttl"), &c.ttl);
            if !c.attributes.is_empty() {
                out.err(
                    format!("{cf}.httpCookie.attributes"),
                    "not supported by crossmesh: cookie attributes are not implemented",
                );
            }
        }
        if ch.http_header_name.as_deref() == Some("") {
            out.err(format!("{cf}.httpHeaderName"), "empty header name");
        }
        if ch.http_query_parameter_name.as_deref() == Some("") {
            out.err(
                format!("{cf}.httpQueryParameterName"),
                "empty parameter name",
            );
        }
    }
}

fn connection_pool(f: &str, cp: &ConnectionPoolSettings, out: &mut Issues) {
    if cp.tcp.is_none() && cp.http.is_none() {
        out.err(f, "connection pool must have tcp or http settings");
    }
    if let Some(t) = &cp.tcp {
        out.non_negative(format!("{f}.tcp.maxConnections"), t.max_connections as i64);
        out.duration(format!("{f}.tcp.connectTimeout"), &t.connect_timeout);
        if t.connect_timeout
            .is_some_and(|d| d.as_nanos() < 1_000_000 && !d.is_negative())
        {
            out.err(format!("{f}.tcp.connectTimeout"), "must be at least 1ms");
        }
        out.duration(
            format!("{f}.tcp.maxConnectionDuration"),
            &t.max_connection_duration,
        );
        out.duration(format!("{f}.tcp.idleTimeout"), &t.idle_timeout);
        if let Some(k) = &t.tcp_keepalive {
            out.duration(format!("{f}.tcp.tcpKeepalive.time"), &k.time);
            out.duration(format!("{f}.tcp.tcpKeepalive.interval"), &k.interval);
        }
    }
    if let Some(h) = &cp.http {
        for (name, v) in [
            ("http1MaxPendingRequests", h.http1_max_pending_requests),
            ("http2MaxRequests", h.http2_max_requests),
            ("maxRequestsPerConnection", h.max_requests_per_connection),
            ("maxRetries", h.max_retries),
            ("maxConcurrentStreams", h.max_concurrent_streams),
        ] {
            out.non_negative(format!("{f}.http.{name}"), v as i64);
        }
        out.duration(format!("{f}.http.idleTimeout"), &h.idle_timeout);
        out.unsupported(
            format!("{f}.http.http2KeepAlive"),
            &h.http2_keep_alive,
            "HTTP/2 keepalive pings are not implemented",
        );
        if let Some(p) = &h.h2_upgrade_policy {
            if !["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"].contains(&p.as_str()) {
                out.err(
                    format!("{f}.http.h2UpgradePolicy"),
                    format!("{p:?} is not DEFAULT, DO_NOT_UPGRADE or UPGRADE"),
                );
            }
        }
    }
}

fn outlier(f: &str, od: &OutlierDetection, out: &mut Issues) {
    if let Some(e) = od.consecutive_errors {
        out.non_negative(format!("{f}.consecutiveErrors"), e as i64);
        out.warn(
            format!("{f}.consecutiveErrors"),
            "deprecated: mapped as Istio maps it, to consecutive gateway errors (502, 503, 504); use consecutive5xxErrors or consecutiveGatewayErrors",
        );
    }
    if od.consecutive_local_origin_failures.is_some() && !od.split_external_local_origin_errors {
        out.warn(
            format!("{f}.consecutiveLocalOriginFailures"),
            "has no effect unless splitExternalLocalOriginErrors is true (as in Istio)",
        );
    }
    if !od.outlier_detection_http_error_codes.is_empty() {
        out.err(
            format!("{f}.outlierDetectionHttpErrorCodes"),
            "not supported by crossmesh: custom outlier error codes are not implemented",
        );
    }
    out.duration(format!("{f}.interval"), &od.interval);
    out.duration(format!("{f}.baseEjectionTime"), &od.base_ejection_time);
    for (name, v) in [
        ("maxEjectionPercent", od.max_ejection_percent),
        ("minHealthPercent", od.min_health_percent),
    ] {
        if let Some(v) = v {
            if !(0..=100).contains(&v) {
                out.err(format!("{f}.{name}"), format!("{v} is not in 0..100"));
            }
        }
    }
}

fn sidecar_port(f: &str, p: &super::sidecar::SidecarPort, out: &mut Issues) {
    if p.number == 0 || p.number > 65535 {
        out.err(
            format!("{f}.number"),
            format!("port {} is not in 1..65535", p.number),
        );
    }
    if !p.protocol.is_empty() && ServerProtocol::parse(&p.protocol).is_none() {
        out.err(
            format!("{f}.protocol"),
            format!(
                "unknown protocol {:?} (HTTP, HTTP2, GRPC, HTTPS, TCP, TLS, MONGO, MYSQL, REDIS)",
                p.protocol
            ),
        );
    }
    out.unsupported(
        format!("{f}.targetPort"),
        &p.target_port,
        "sidecar listeners bind the port number itself",
    );
}

fn capture_mode(f: &str, m: &Option<String>, out: &mut Issues) {
    match m.as_deref() {
        None | Some("DEFAULT") => {}
        Some(m @ ("IPTABLES" | "NONE")) => out.err(
            f,
            format!("not supported by crossmesh: captureMode {m} per listener; the proxy's INTERCEPTION_MODE (REDIRECT or NONE) decides"),
        ),
        Some(m) => out.err(f, format!("{m:?} is not DEFAULT, IPTABLES or NONE")),
    }
}

/// Istio's Sidecar validation (`ValidateSidecar`) for the fields crossmesh reads:
/// egress hosts are `namespace/host`; one egress listener per (bind, port), and
/// at most one without a port, which must come last; ingress listeners need a
/// port, unique, and a loopback `defaultEndpoint`.
fn sidecar(s: &Sidecar, out: &mut Issues) {
    if let Some(cp) = &s.inbound_connection_pool {
        connection_pool("spec.inboundConnectionPool", cp, out);
    }
    if let Some(p) = &s.outbound_traffic_policy {
        match p.mode.as_deref() {
            None | Some("REGISTRY_ONLY") | Some("ALLOW_ANY") => {}
            Some(m) => out.err(
                "spec.outboundTrafficPolicy.mode",
                format!("{m:?} is not REGISTRY_ONLY or ALLOW_ANY"),
            ),
        }
        out.unsupported(
            "spec.outboundTrafficPolicy.egressProxy",
            &p.egress_proxy,
            "egress proxies are not implemented",
        );
    }
    let mut ports: Vec<(String, u32, usize)> = Vec::new();
    let mut catch_all: Option<usize> = None;
    for (i, e) in s.egress.iter().enumerate() {
        let f = format!("spec.egress[{i}]");
        capture_mode(&format!("{f}.captureMode"), &e.capture_mode, out);
        let bind = e.bind.clone().unwrap_or_default();
        if !bind.is_empty() && bind.parse::<std::net::IpAddr>().is_err() {
            out.err(
                format!("{f}.bind"),
                format!("{bind:?} is not an IP address"),
            );
        }
        match &e.port {
            Some(p) => {
                sidecar_port(&format!("{f}.port"), p, out);
                if let Some((_, _, j)) = ports.iter().find(|(b, n, _)| *b == bind && *n == p.number)
                {
                    out.err(
                        format!("{f}.port"),
                        format!(
                            "port {} is already in use by egress[{j}]{}",
                            p.number,
                            if bind.is_empty() {
                                String::new()
                            } else {
                                format!(" on {bind}")
                            }
                        ),
                    );
                }
                ports.push((bind, p.number, i));
            }
            None => {
                if let Some(j) = catch_all {
                    out.err(
                        format!("{f}.port"),
                        format!("egress[{j}] is already the egress listener without a port (only one allowed)"),
                    );
                }
                catch_all.get_or_insert(i);
            }
        }
        if e.hosts.is_empty() {
            out.err(
                format!("{f}.hosts"),
                "an egress listener needs at least one host",
            );
        }
        for (j, h) in e.hosts.iter().enumerate() {
            let Some((ns, host)) = h.split_once('/') else {
                out.err(
                    format!("{f}.hosts[{j}]"),
                    format!("{h:?} is not NAMESPACE/HOST (use */{h} for any namespace)"),
                );
                continue;
            };
            // Istio excludes hosts named after `~` (`~ns/host`, and `~/host` in
            // every namespace) from the imported ones; `~/*` alone imports nothing.
            if ns.starts_with('~') && (ns.len() > 1 || host != "*") {
                out.err(
                    format!("{f}.hosts[{j}]"),
                    format!("not supported by crossmesh: host exclusions ({h:?}: `~` before a namespace) are not implemented"),
                );
                continue;
            }
            if !(ns == "*"
                || ns == "."
                || ns == "~"
                || valid_host(ns, false).is_ok() && !ns.contains('.'))
            {
                out.err(
                    format!("{f}.hosts[{j}]"),
                    format!("namespace {ns:?} in {h:?} is not *, ., ~ or a namespace name"),
                );
            }
            if let Err(e) = valid_host(host, true) {
                out.err(format!("{f}.hosts[{j}]"), e);
            }
        }
    }
    if let Some(j) = catch_all {
        if j + 1 != s.egress.len() {
            out.err(
                format!("spec.egress[{j}]"),
                "the egress listener without a port must be the last one",
            );
        }
    }
    let mut in_ports: Vec<(u32, usize)> = Vec::new();
    for (i, ing) in s.ingress.iter().enumerate() {
        let f = format!("spec.ingress[{i}]");
        sidecar_port(&format!("{f}.port"), &ing.port, out);
        if let Some((_, j)) = in_ports.iter().find(|(n, _)| *n == ing.port.number) {
            out.err(
                format!("{f}.port"),
                format!("port {} is already in use by ingress[{j}]", ing.port.number),
            );
        }
        in_ports.push((ing.port.number, i));
        capture_mode(&format!("{f}.captureMode"), &ing.capture_mode, out);
        if let Some(b) = ing.bind.as_deref().filter(|b| !b.is_empty()) {
            if b.parse::<std::net::IpAddr>().is_err() {
                out.err(format!("{f}.bind"), format!("{b:?} is not an IP address"));
            }
        }
        match ing.default_endpoint.as_deref() {
            None | Some("") => out.err(
                format!("{f}.defaultEndpoint"),
                "crossmesh needs defaultEndpoint (127.0.0.1:PORT) to know where the workload listens",
            ),
            Some(d) if super::sidecar::parse_default_endpoint(d).is_none() => out.err(
                format!("{f}.defaultEndpoint"),
                format!("{d:?} is not supported: use 127.0.0.1:PORT or [::1]:PORT (unix sockets and 0.0.0.0 are not implemented)"),
            ),
            Some(_) => {}
        }
        out.unsupported(
            format!("{f}.tls"),
            &ing.tls,
            "inbound TLS termination is not implemented",
        );
        if let Some(cp) = &ing.connection_pool {
            connection_pool(&format!("{f}.connectionPool"), cp, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::istio::parse_object;

    /// Every issue of one YAML document: the rejections when the object is
    /// rejected, else its warnings.
    fn issues(yaml: &str) -> Vec<Issue> {
        let v: serde_json::Value = serde_saphyr::from_str(yaml).expect("yaml");
        match parse_object("t.yaml", &v) {
            Ok(obj) => validate(&obj),
            Err(rejections) => rejections
                .into_iter()
                .map(|r| Issue {
                    field: r.field,
                    reason: r.reason,
                    warning: false,
                })
                .collect(),
        }
    }

    fn vs(http: &str) -> String {
        format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v, namespace: base}}\nspec:\n  hosts: [order]\n  http:\n{http}")
    }

    fn dr(policy: &str) -> String {
        format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: d, namespace: base}}\nspec:\n  host: order\n  trafficPolicy:\n{policy}")
    }

    fn has(issues: &[Issue], field: &str, warning: bool, text: &str) -> bool {
        issues
            .iter()
            .any(|i| i.field == field && i.warning == warning && i.reason.contains(text))
    }

    /// RE2's repetition limits, which Rust's `regex` does not have: a count
    /// above 1000, or nested counts multiplying past 1000, reject the
    /// VirtualService naming the field; 1000 and 10 x 100 pass.
    #[test]
    fn regex_repetition_past_re2_limits_is_rejected() {
        let route = |m: &str| {
            vs(&format!(
                "  - match:\n    - {m}\n    route:\n    - destination: {{host: order}}\n"
            ))
        };
        for (m, field, text) in [
            (
                "headers: {x-key: {regex: 'x{1001}'}}",
                "spec.http[0].match[0].headers.x-key",
                "above 1000",
            ),
            (
                "uri: {regex: '/a{2,1001}'}",
                "spec.http[0].match[0].uri",
                "above 1000",
            ),
            (
                "uri: {regex: '/a{1001,}'}",
                "spec.http[0].match[0].uri",
                "above 1000",
            ),
            (
                "uri: {regex: '/(?:a{10}){101}'}",
                "spec.http[0].match[0].uri",
                "multiply past 1000",
            ),
            (
                "uri: {regex: '/(a|(b{2}){501})'}",
                "spec.http[0].match[0].uri",
                "multiply past 1000",
            ),
        ] {
            let i = issues(&route(m));
            assert!(has(&i, field, false, text), "{m}: {i:?}");
        }
        for m in [
            "uri: {regex: '/a{1000}'}",
            "uri: {regex: '/(?:a{10}){100}b*'}",
            "uri: {regex: '/[0-9]{1,1000}'}",
        ] {
            let i = issues(&route(m));
            assert!(i.is_empty(), "{m}: {i:?}");
        }
        let i = issues(&vs("  - rewrite: {uriRegexRewrite: {match: 'a{5000}', rewrite: b}}\n    route:\n    - destination: {host: order}\n"));
        assert!(
            has(
                &i,
                "spec.http[0].rewrite.uriRegexRewrite.match",
                false,
                "above 1000"
            ),
            "{i:?}"
        );
    }

    /// `directResponse.body.bytes` that is not base64 rejects the VirtualService
    /// naming the field, instead of a route served without its body.
    #[test]
    fn direct_response_bytes_must_be_base64() {
        let i = issues(&vs(
            "  - directResponse: {status: 200, body: {bytes: 'no base64!'}}\n",
        ));
        assert!(
            has(
                &i,
                "spec.http[0].directResponse.body.bytes",
                false,
                "is not base64"
            ),
            "{i:?}"
        );
        let i = issues(&vs(
            "  - directResponse: {status: 200, body: {bytes: aGVsbG8=}}\n",
        ));
        assert!(i.is_empty(), "{i:?}");
    }

    #[test]
    fn redirect_and_direct_response_conflicts() {
        let i = issues(&vs("  - redirect: {uri: /x}\n    fault: {abort: {httpStatus: 500}}\n    timeout: 1s\n    retries: {attempts: 2}\n"));
        assert!(
            has(
                &i,
                "spec.http[0].fault",
                false,
                "cannot be combined with redirect"
            ),
            "{i:?}"
        );
        let i = issues(&vs(
            "  - redirect: {uri: /x}\n    timeout: 1s\n    mirror: {host: cart}\n",
        ));
        assert!(
            has(&i, "spec.http[0].timeout", true, "no effect with redirect"),
            "{i:?}"
        );
        assert!(
            has(&i, "spec.http[0].mirror", true, "no effect with redirect"),
            "{i:?}"
        );
        let i = issues(&vs(
            "  - directResponse: {status: 200}\n    rewrite: {uri: /y}\n",
        ));
        assert!(
            has(&i, "spec.http[0].rewrite", false, "directResponse"),
            "{i:?}"
        );
        // A plain route keeps its timeout without a word.
        assert!(issues(&vs(
            "  - route: [{destination: {host: order}}]\n    timeout: 1s\n"
        ))
        .is_empty());
    }

    #[test]
    fn derive_port() {
        let ok = vs("  - redirect: {scheme: https, derivePort: FROM_REQUEST_PORT}\n");
        assert!(issues(&ok).is_empty(), "{:?}", issues(&ok));
        let both = issues(&vs(
            "  - redirect: {port: 8443, derivePort: FROM_REQUEST_PORT}\n",
        ));
        assert!(
            has(
                &both,
                "spec.http[0].redirect",
                false,
                "only one of port and derivePort"
            ),
            "{both:?}"
        );
        let bad = issues(&vs("  - redirect: {derivePort: FROM_MOON}\n"));
        assert!(
            has(&bad, "spec.http[0].redirect.derivePort", false, "FROM_MOON"),
            "{bad:?}"
        );
    }

    #[test]
    fn mirror_percentage_needs_mirror() {
        let i = issues(&vs("  - route: [{destination: {host: order}}]\n    mirrors: [{destination: {host: cart}}]\n    mirrorPercentage: {value: 5}\n"));
        assert!(
            has(
                &i,
                "spec.http[0].mirrorPercentage",
                true,
                "mirrors[].percentage"
            ),
            "{i:?}"
        );
        let i = issues(&vs(
            "  - route: [{destination: {host: order}}]\n    mirrorPercent: 5\n",
        ));
        assert!(
            has(&i, "spec.http[0].mirrorPercent", true, "without mirror"),
            "{i:?}"
        );
        let ok = vs("  - route: [{destination: {host: order}}]\n    mirror: {host: cart}\n    mirrorPercentage: {value: 5}\n");
        let both = issues(&vs("  - route: [{destination: {host: order}}]\n    mirror: {host: cart}\n    mirrorPercentage: {value: 5}\n    mirrorPercent: 7\n"));
        assert!(
            has(
                &both,
                "spec.http[0].mirrorPercent",
                true,
                "ignored because mirrorPercentage"
            ),
            "{both:?}"
        );
        let fault = issues(&vs("  - route: [{destination: {host: order}}]\n    fault: {delay: {fixedDelay: 1s, percent: 5, percentage: {value: 7}}}\n"));
        assert!(
            has(
                &fault,
                "spec.http[0].fault.delay.percent",
                true,
                "ignored because percentage"
            ),
            "{fault:?}"
        );
        assert!(issues(&ok).is_empty());
    }

    #[test]
    fn export_to_entries() {
        let bad = format!(
            "{}  exportTo: [\"*\", base]\n",
            vs("  - route: [{destination: {host: order}}]\n")
        );
        assert!(has(
            &issues(&bad),
            "spec.exportTo",
            false,
            "cannot be combined"
        ));
        let bad = dr("    loadBalancer: {simple: RANDOM}\n").replace(
            "  trafficPolicy:",
            "  exportTo: [\"Not_A_Namespace\"]\n  trafficPolicy:",
        );
        assert!(
            has(
                &issues(&bad),
                "spec.exportTo[0]",
                false,
                "not *, . or a namespace"
            ),
            "{:?}",
            issues(&bad)
        );
        let ok = format!(
            "{}  exportTo: [\".\", istio-system]\n",
            vs("  - route: [{destination: {host: order}}]\n")
        );
        assert!(issues(&ok).is_empty(), "{:?}", issues(&ok));
    }

    #[test]
    fn warmup_only_for_round_robin_and_least_request() {
        let i = issues(&dr(
            "    loadBalancer: {simple: RANDOM, warmupDurationSecs: 30s}\n",
        ));
        assert!(
            has(
                &i,
                "spec.trafficPolicy.loadBalancer.warmupDurationSecs",
                true,
                "RANDOM"
            ),
            "{i:?}"
        );
        let i = issues(&dr(
            "    loadBalancer: {consistentHash: {httpHeaderName: x}, warmupDurationSecs: 30s}\n",
        ));
        assert!(
            has(
                &i,
                "spec.trafficPolicy.loadBalancer.warmupDurationSecs",
                true,
                "consistentHash"
            ),
            "{i:?}"
        );
        assert!(issues(&dr(
            "    loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 30s}\n"
        ))
        .is_empty());
    }

    #[test]
    fn maglev_table_size_is_prime() {
        let d = |n: u64| {
            dr(&format!("    loadBalancer: {{consistentHash: {{httpHeaderName: x, maglev: {{tableSize: {n}}}}}}}\n"))
        };
        assert!(issues(&d(65537)).is_empty());
        for bad in [65536, 1, 5_000_012] {
            let i = issues(&d(bad));
            assert!(
                has(
                    &i,
                    "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
                    false,
                    "prime"
                ),
                "{bad}: {i:?}"
            );
        }
    }

    #[test]
    fn local_origin_failures_need_split() {
        let i = issues(&dr(
            "    outlierDetection: {consecutiveLocalOriginFailures: 3}\n",
        ));
        assert!(
            has(
                &i,
                "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
                true,
                "splitExternalLocalOriginErrors"
            ),
            "{i:?}"
        );
        assert!(issues(&dr("    outlierDetection: {consecutiveLocalOriginFailures: 3, splitExternalLocalOriginErrors: true}\n")).is_empty());
    }

    #[test]
    fn tls_disable_with_settings_warns() {
        let i = issues(&dr("    tls: {mode: DISABLE, sni: x.example.com}\n"));
        assert!(
            has(&i, "spec.trafficPolicy.tls", true, "sni have no effect"),
            "{i:?}"
        );
        assert!(issues(&dr("    tls: {mode: SIMPLE}\n")).is_empty());
        let i = issues(&dr("    tls: {mode: SIMPLEX}\n"));
        assert!(
            has(
                &i,
                "spec.trafficPolicy.tls.mode",
                false,
                "unknown mode \"SIMPLEX\""
            ),
            "{i:?}"
        );
    }

    #[test]
    fn client_tls_modes_follow_istio_validation() {
        assert!(issues(&dr("    tls: {mode: ISTIO_MUTUAL, sni: a.example.com, subjectAltNames: [spiffe://td/ns/a/sa/b]}\n")).is_empty());
        assert!(issues(&dr("    tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem}\n")).is_empty());
        let i = issues(&dr("    tls: {mode: MUTUAL, caCertificates: /ca.pem}\n"));
        assert!(
            has(
                &i,
                "spec.trafficPolicy.tls.clientCertificate",
                false,
                "client certificate required"
            ),
            "{i:?}"
        );
        assert!(
            has(
                &i,
                "spec.trafficPolicy.tls.privateKey",
                false,
                "private key required"
            ),
            "{i:?}"
        );
        let i = issues(&dr(
            "    tls: {mode: ISTIO_MUTUAL, caCertificates: /ca.pem}\n",
        ));
        assert!(
            has(
                &i,
                "spec.trafficPolicy.tls",
                false,
                "caCertificates with mode ISTIO_MUTUAL"
            ),
            "{i:?}"
        );
        assert!(issues(&dr("    tls: {mode: SIMPLE, credentialName: web-tls}\n")).is_empty());
        assert!(issues(&dr("    tls: {mode: MUTUAL, credentialName: web-tls}\n")).is_empty());
        let i = issues(&dr(
            "    tls: {mode: MUTUAL, credentialName: web-tls, caCertificates: /ca.pem}\n",
        ));
        assert!(
            has(
                &i,
                "spec.trafficPolicy.tls",
                false,
                "caCertificates if credentialName"
            ),
            "{i:?}"
        );
        let i = issues(&dr(
            "    tls: {mode: ISTIO_MUTUAL, credentialName: web-tls}\n",
        ));
        assert!(
            has(
                &i,
                "spec.trafficPolicy.tls.credentialName",
                false,
                "ISTIO_MUTUAL"
            ),
            "{i:?}"
        );
        assert!(issues(&dr(
            "    tls: {mode: SIMPLE, caCertificates: /ca.pem, caCrl: /crl.pem}\n"
        ))
        .is_empty());
        let i = issues(&dr("    tls: {mode: SIMPLE, caCrl: /crl.pem}\n"));
        assert!(
            has(
                &i,
                "spec.trafficPolicy.tls.caCrl",
                false,
                "set caCertificates"
            ),
            "{i:?}"
        );
    }

    #[test]
    fn unknown_fields_are_rejected_by_name() {
        let i = issues(&vs(
            "  - route: [{destination: {host: order}}]\n    retryPolicy: {}\n",
        ));
        assert!(
            i.iter()
                .any(|i| !i.warning && i.reason.contains("retryPolicy")),
            "{i:?}"
        );
    }

    #[test]
    fn sidecar_selector_uses_labels() {
        let sidecar = |sel: &str| {
            format!("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: s, namespace: bookinfo}}\nspec:\n  workloadSelector: {sel}\n  egress:\n  - hosts: ['./*']\n")
        };
        let v: serde_json::Value =
            serde_saphyr::from_str(&sidecar("{labels: {app: ratings}}")).expect("yaml");
        match parse_object("t.yaml", &v) {
            Ok(IstioObject::Sidecar(c)) => assert_eq!(
                c.spec.workload_selector.map(|w| w.labels),
                Some([("app".to_string(), "ratings".to_string())].into())
            ),
            other => panic!("{other:?}"),
        }
        let i = issues(&sidecar("{matchLabels: {app: ratings}}"));
        assert!(
            has(&i, "spec.workloadSelector", false, "Sidecar uses `labels`")
                && has(&i, "spec.workloadSelector", false, "`matchLabels`"),
            "{i:?}"
        );
        // DestinationRule keeps `istio.type.v1beta1.WorkloadSelector`.
        let i = issues("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: base}\nspec:\n  host: order\n  workloadSelector: {labels: {app: a}}\n");
        assert!(
            has(
                &i,
                "spec.workloadSelector.labels",
                false,
                "unknown field `labels`"
            ),
            "{i:?}"
        );
    }

    #[test]
    fn mysql_and_redis_ports_are_tcp() {
        // Istio's Sidecar example: an egress listener for a MySQL port.
        let i = issues("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s, namespace: prod}\nspec:\n  egress:\n  - port: {number: 3306, protocol: MYSQL, name: egressmysql}\n    hosts: ['*/mysql.foo.com']\n  - port: {number: 6379, protocol: redis, name: redis}\n    hosts: ['*/redis.foo.com']\n");
        assert!(i.is_empty(), "{i:?}");
        for p in ["MYSQL", "Redis"] {
            assert_eq!(ServerProtocol::parse(p), Some(ServerProtocol::Tcp), "{p}");
        }
        let i = issues("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s, namespace: prod}\nspec:\n  egress:\n  - port: {number: 53, protocol: UDP, name: dns}\n    hosts: ['*/*']\n");
        assert!(
            has(
                &i,
                "spec.egress[0].port.protocol",
                false,
                "unknown protocol \"UDP\""
            ),
            "{i:?}"
        );
    }
}
