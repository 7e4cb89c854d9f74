//! VirtualService validation: hosts, gateways, HTTP/TLS/TCP routes, matches,
//! weights, retries, faults, mirrors, redirects and direct responses.

use super::{export_to, re2_repeat_limits, string_match, valid_host, Findings};
use crate::model::istio::virtual_service::{grpc_status_code, Headers, HttpRoute, VirtualService};
use crate::model::istio::MESH_GATEWAY;

fn gateway_list(field: &str, gws: &[String], out: &mut Findings) {
    for (i, g) in gws.iter().enumerate() {
        if g.is_empty() || g.split('/').count() > 2 || g.split('/').any(str::is_empty) {
            out.err(
                format!("{field}[{i}]"),
                format!("{g:?} is not mesh, NAME or NAMESPACE/NAME"),
            );
        }
    }
}

fn headers(field: &str, h: &Option<Headers>, out: &mut Findings) {
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

pub(super) fn virtual_service(vs: &VirtualService, out: &mut Findings) {
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
    out: &mut Findings,
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
fn weights(f: &str, dests: &[(&str, Option<i32>)], out: &mut Findings) {
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

fn http_route(f: &str, r: &HttpRoute, out: &mut Findings) {
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
                .map(crate::model::istio::virtual_service::decode_base64)
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
