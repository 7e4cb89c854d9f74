//! Validation unit tests: YAML documents in, findings out.

use super::*;
use crate::model::istio::gateway::ServerProtocol;
use crate::model::istio::parse_object;

/// Every issue of one YAML document: the rejections when the object is
/// rejected, else its warnings.
fn issues(yaml: &str) -> Vec<Finding> {
    let v: serde_json::Value = serde_saphyr::from_str(yaml).expect("yaml");
    match parse_object("t.yaml", &v) {
        Ok(obj) => validate(&obj),
        Err(rejections) => rejections
            .into_iter()
            .map(|r| Finding {
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

fn has(issues: &[Finding], field: &str, warning: bool, text: &str) -> bool {
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
