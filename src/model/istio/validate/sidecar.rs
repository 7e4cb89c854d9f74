//! Sidecar validation: egress hosts and listeners, ingress listeners and their
//! default endpoints, the outbound traffic policy.

use super::destination_rule::connection_pool;
use super::{valid_host, Findings};
use crate::model::istio::gateway::ServerProtocol;
use crate::model::istio::sidecar::{Sidecar, SidecarPort};

fn sidecar_port(f: &str, p: &SidecarPort, out: &mut Findings) {
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

fn capture_mode(f: &str, m: &Option<String>, out: &mut Findings) {
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
pub(super) fn sidecar(s: &Sidecar, out: &mut Findings) {
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
            Some(d) if crate::model::istio::sidecar::parse_default_endpoint(d).is_none() => out.err(
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
