//! DestinationRule validation: traffic policies (load balancer, connection pool,
//! outlier detection, TLS), port-level policies and subsets.

use std::collections::BTreeSet;

use super::{export_to, valid_host, Findings};
use crate::model::istio::destination_rule::{
    ClientTlsSettings, ConnectionPoolSettings, DestinationRule, LoadBalancerSettings,
    OutlierDetection, TrafficPolicy,
};

pub(super) fn destination_rule(dr: &DestinationRule, out: &mut Findings) {
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

fn traffic_policy(f: &str, tp: &TrafficPolicy, out: &mut Findings) {
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
    out: &mut Findings,
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

fn load_balancer(f: &str, lb: &LoadBalancerSettings, out: &mut Findings) {
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
        for (field, reason) in crate::model::istio::destination_rule::validate_locality_setting(l) {
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

pub(super) fn connection_pool(f: &str, cp: &ConnectionPoolSettings, out: &mut Findings) {
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

fn outlier(f: &str, od: &OutlierDetection, out: &mut Findings) {
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
