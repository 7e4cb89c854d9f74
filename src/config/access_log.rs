//! The grammar of `accessLogFormat` (mesh file): Istio's default TEXT and JSON
//! formats and Envoy 1.40's substitution format rules, checked when the mesh file
//! is read so that a bad format is refused naming the operator and why, instead of
//! every listener being NACKed by every proxy. `translate::access_log` writes the
//! formats that pass into Envoy's file access logger.

use std::collections::BTreeMap;

use serde_json::Value;

/// Istio's default TEXT format (`EnvoyTextLogFormat`, Istio 1.9 onwards).
pub const ISTIO_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% \
    %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% \
    %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \
    \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% \
    %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \
    \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% \
    %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% \
    %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's default JSON keys (`EnvoyJSONLogFormatIstio`).
pub(crate) const ISTIO_JSON_KEYS: &[(&str, &str)] = &[
    ("authority", "%REQ(:AUTHORITY)%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("duration", "%DURATION%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("route_name", "%ROUTE_NAME%"),
    ("start_time", "%START_TIME%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
];

/// Istio's default JSON format.
pub fn istio_json_format() -> BTreeMap<String, Value> {
    ISTIO_JSON_KEYS
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect()
}

/// A JSON `accessLogFormat` (a JSON object, as Istio reads it): every string
/// value must be a valid format; numbers, nested objects and lists are kept
/// (Envoy's `json_format` allows them); booleans and nulls are refused, as
/// Envoy refuses them.
pub fn parse_json_format(text: &str) -> Result<BTreeMap<String, Value>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("is not JSON: {e}"))?;
    let Value::Object(map) = v else {
        return Err("a JSON format must be a JSON object of keys to format strings".into());
    };
    let out: BTreeMap<String, Value> = map.into_iter().collect();
    for (k, v) in &out {
        check_json_value(v).map_err(|e| format!("key {k:?}: {e}"))?;
    }
    Ok(out)
}

fn check_json_value(v: &Value) -> Result<(), String> {
    match v {
        Value::String(s) => check_format(s),
        Value::Number(_) => Ok(()),
        Value::Object(m) => m
            .iter()
            .try_for_each(|(k, v)| check_json_value(v).map_err(|e| format!("key {k:?}: {e}"))),
        Value::Array(a) => a.iter().try_for_each(check_json_value),
        Value::Bool(_) | Value::Null => Err(
            "only strings, numbers, objects and lists are allowed in a JSON access log format"
                .into(),
        ),
    }
}

/// What a command operator accepts (Envoy's `CommandSyntaxChecker` flags as
/// Envoy 1.40 applies them), and how crossmesh checks its parameters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Syntax {
    /// `%OP%` only.
    Bare,
    /// `%OP%` or `%OP(ARG)%`, `ARG` as [`Param`] says; no length.
    Optional(Param),
    /// `%OP(ARG)%`, with `:LENGTH` when `length`.
    Required { param: Param, length: bool },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Param {
    /// Anything on one line (Envoy does not look further).
    Any,
    /// A `strftime` format; Envoy refuses one that would print a newline (`%n`).
    Time,
    /// `HEADER` or `HEADER?ALTERNATIVE`: each empty or a header name.
    Headers,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// `KEY` or `KEY:PLAIN|TYPED` or `KEY:FIELD:NAME` (filter state).
    FilterState,
    /// `NAMESPACE` or `NAMESPACE:KEY:...`, the namespace not empty.
    Metadata,
    /// Not empty.
    NonEmpty,
}

/// Envoy 1.40's command operators that take no parameter and no length.
const BARE: &[&str] = &[
    "ACCESS_LOG_TYPE",
    "BYTES_RECEIVED",
    "BYTES_RETRANSMITTED",
    "BYTES_SENT",
    "CONNECTION_ID",
    "CONNECTION_TERMINATION_DETAILS",
    "CUSTOM_FLAGS",
    "DOWNSTREAM_CX_RTT",
    "DOWNSTREAM_DECOMPRESSED_HEADER_BYTES_RECEIVED",
    "DOWNSTREAM_DECOMPRESSED_HEADER_BYTES_SENT",
    "DOWNSTREAM_DETECTED_CLOSE_TYPE",
    "DOWNSTREAM_DIRECT_LOCAL_ADDRESS",
    "DOWNSTREAM_DIRECT_LOCAL_ADDRESS_ENDPOINT_ID",
    "DOWNSTREAM_DIRECT_LOCAL_PORT",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS",
    "DOWNSTREAM_DIRECT_REMOTE_PORT",
    "DOWNSTREAM_HANDSHAKE_DURATION",
    "DOWNSTREAM_HEADER_BYTES_RECEIVED",
    "DOWNSTREAM_HEADER_BYTES_SENT",
    "DOWNSTREAM_LOCAL_ADDRESS",
    "DOWNSTREAM_LOCAL_ADDRESS_ENDPOINT_ID",
    "DOWNSTREAM_LOCAL_CLOSE_REASON",
    "DOWNSTREAM_LOCAL_DNS_SAN",
    "DOWNSTREAM_LOCAL_EMAIL_SAN",
    "DOWNSTREAM_LOCAL_IP_SAN",
    "DOWNSTREAM_LOCAL_OTHERNAME_SAN",
    "DOWNSTREAM_LOCAL_PORT",
    "DOWNSTREAM_LOCAL_SUBJECT",
    "DOWNSTREAM_LOCAL_URI_SAN",
    "DOWNSTREAM_PEER_CERT",
    "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_1",
    "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256",
    "DOWNSTREAM_PEER_CHAIN_SERIALS",
    "DOWNSTREAM_PEER_DNS_SAN",
    "DOWNSTREAM_PEER_EMAIL_SAN",
    "DOWNSTREAM_PEER_FINGERPRINT_1",
    "DOWNSTREAM_PEER_FINGERPRINT_256",
    "DOWNSTREAM_PEER_IP_SAN",
    "DOWNSTREAM_PEER_ISSUER",
    "DOWNSTREAM_PEER_ISSUER_FINGERPRINT_256",
    "DOWNSTREAM_PEER_ISSUER_SERIAL",
    "DOWNSTREAM_PEER_OTHERNAME_SAN",
    "DOWNSTREAM_PEER_SERIAL",
    "DOWNSTREAM_PEER_SUBJECT",
    "DOWNSTREAM_PEER_URI_SAN",
    "DOWNSTREAM_REMOTE_ADDRESS",
    "DOWNSTREAM_REMOTE_PORT",
    "DOWNSTREAM_TLS_CIPHER",
    "DOWNSTREAM_TLS_GROUP",
    "DOWNSTREAM_TLS_SESSION_ID",
    "DOWNSTREAM_TLS_VERSION",
    "DOWNSTREAM_TRANSPORT_FAILURE_REASON",
    "DOWNSTREAM_WIRE_BYTES_RECEIVED",
    "DOWNSTREAM_WIRE_BYTES_SENT",
    "DURATION",
    "FILTER_CHAIN_NAME",
    "GRPC_STATUS_NUMBER",
    "HOSTNAME",
    "LISTENER_NAME",
    "LOCAL_REPLY_BODY",
    "PACKETS_RETRANSMITTED",
    "PROTOCOL",
    "REQUEST_DURATION",
    "REQUEST_HEADERS_BYTES",
    "REQUEST_TX_DURATION",
    "RESPONSE_CODE",
    "RESPONSE_DURATION",
    "RESPONSE_FLAGS",
    "RESPONSE_FLAGS_LONG",
    "RESPONSE_HEADERS_BYTES",
    "RESPONSE_TRAILERS_BYTES",
    "RESPONSE_TX_DURATION",
    "ROUTE_NAME",
    "ROUTE_RESOLUTION_COUNT",
    "ROUTE_RESOLUTION_TIME_US",
    "ROUNDTRIP_DURATION",
    "SPAN_ID",
    "STREAM_ID",
    "TLS_JA3_FINGERPRINT",
    "TLS_JA4_FINGERPRINT",
    "TRACE_ID",
    "UNIQUE_ID",
    "UPSTREAM_CLUSTER",
    "UPSTREAM_CLUSTER_RAW",
    "UPSTREAM_CONNECTION_ID",
    "UPSTREAM_CONNECTION_IDS_ATTEMPTED",
    "UPSTREAM_CONNECTION_POOL_READY_DURATION",
    "UPSTREAM_DECOMPRESSED_HEADER_BYTES_RECEIVED",
    "UPSTREAM_DECOMPRESSED_HEADER_BYTES_SENT",
    "UPSTREAM_DETECTED_CLOSE_TYPE",
    "UPSTREAM_HEADER_BYTES_RECEIVED",
    "UPSTREAM_HEADER_BYTES_SENT",
    "UPSTREAM_HOST",
    "UPSTREAM_HOSTS_ATTEMPTED",
    "UPSTREAM_HOSTS_ATTEMPTED_WITHOUT_PORT",
    "UPSTREAM_HOST_NAME",
    "UPSTREAM_HOST_NAMES_ATTEMPTED",
    "UPSTREAM_HOST_NAMES_ATTEMPTED_WITHOUT_PORT",
    "UPSTREAM_HOST_NAME_WITHOUT_PORT",
    "UPSTREAM_LOCAL_ADDRESS",
    "UPSTREAM_LOCAL_CLOSE_REASON",
    "UPSTREAM_LOCAL_DNS_SAN",
    "UPSTREAM_LOCAL_IP_SAN",
    "UPSTREAM_LOCAL_PORT",
    "UPSTREAM_LOCAL_URI_SAN",
    "UPSTREAM_PEER_CERT",
    "UPSTREAM_PEER_DNS_SAN",
    "UPSTREAM_PEER_IP_SAN",
    "UPSTREAM_PEER_ISSUER",
    "UPSTREAM_PEER_SUBJECT",
    "UPSTREAM_PEER_URI_SAN",
    "UPSTREAM_PROTOCOL",
    "UPSTREAM_REMOTE_ADDRESS",
    "UPSTREAM_REMOTE_ADDRESS_ENDPOINT_ID",
    "UPSTREAM_REMOTE_PORT",
    "UPSTREAM_REQUEST_ATTEMPT_COUNT",
    "UPSTREAM_SERVER_NAME",
    "UPSTREAM_TLS_CIPHER",
    "UPSTREAM_TLS_GROUP",
    "UPSTREAM_TLS_SESSION_ID",
    "UPSTREAM_TLS_VERSION",
    "UPSTREAM_TRANSPORT_FAILURE_REASON",
    "UPSTREAM_WIRE_BYTES_RECEIVED",
    "UPSTREAM_WIRE_BYTES_SENT",
    "VIRTUAL_CLUSTER_NAME",
];

/// The operators [`operator`] accepts with a parameter (and perhaps a length).
const WITH_PARAMS: &[&str] = &[
    "REQ",
    "RESP",
    "TRAILER",
    "REQUEST_HEADER",
    "RESPONSE_HEADER",
    "RESPONSE_TRAILER",
    "REQ_WITHOUT_QUERY",
    "START_TIME",
    "START_TIME_LOCAL",
    "EMIT_TIME",
    "EMIT_TIME_LOCAL",
    "DOWNSTREAM_PEER_CERT_V_START",
    "DOWNSTREAM_PEER_CERT_V_END",
    "UPSTREAM_PEER_CERT_V_START",
    "UPSTREAM_PEER_CERT_V_END",
    "DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
    "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
    "RESPONSE_CODE_DETAILS",
    "GRPC_STATUS",
    "REQUESTED_SERVER_NAME",
    "DYNAMIC_METADATA",
    "CLUSTER_METADATA",
    "UPSTREAM_METADATA",
    "FILTER_STATE",
    "UPSTREAM_FILTER_STATE",
    "ENVIRONMENT",
    "QUERY_PARAM",
];

/// One use of every operator crossmesh accepts, in each form it accepts
/// (bare, with each kind of parameter, with a length): what
/// `tests/listener_defaults_e2e.rs` loads into a real Envoy.
pub fn accepted_examples() -> Vec<String> {
    let mut out: Vec<String> = BARE.iter().map(|n| format!("%{n}%")).collect();
    for n in WITH_PARAMS {
        match operator(n) {
            Some(Syntax::Bare) | None => out.push(format!("%{n}%")),
            Some(Syntax::Optional(p)) => {
                out.push(format!("%{n}%"));
                out.extend(param_examples(p).iter().map(|a| format!("%{n}({a})%")));
            }
            Some(Syntax::Required { param, length }) => {
                for a in param_examples(param) {
                    out.push(format!("%{n}({a})%"));
                    if length {
                        out.push(format!("%{n}({a}):7%"));
                    }
                }
            }
        }
    }
    out
}

/// Parameters of each kind that [`check_param`] accepts.
fn param_examples(p: Param) -> Vec<&'static str> {
    match p {
        Param::Any => vec!["x", "ALLOW_WHITESPACES"],
        Param::Time => vec!["%Y-%m-%dT%H:%M:%S.%3f%z", "%s.%6f"],
        Param::Headers => vec![":AUTHORITY", "X-A?:PATH", "?x-b", "x-c?"],
        Param::OneOf(words) => words.to_vec(),
        Param::FilterState => vec!["k", "k.a:PLAIN", "k:TYPED", "k:FIELD:f"],
        Param::Metadata => vec!["ns", "ns:a:b"],
        Param::NonEmpty => vec!["q"],
    }
}

/// Envoy 1.40's command operators that crossmesh accepts, with their syntax.
/// Each is loaded into a real Envoy by `tests/listener_defaults_e2e.rs`.
fn operator(name: &str) -> Option<Syntax> {
    use Param::*;
    use Syntax::*;
    if BARE.contains(&name) {
        return Some(Bare);
    }
    let headers = Required {
        param: Headers,
        length: true,
    };
    Some(match name {
        "REQ" | "RESP" | "TRAILER" | "REQUEST_HEADER" | "RESPONSE_HEADER" | "RESPONSE_TRAILER"
        | "REQ_WITHOUT_QUERY" => headers,
        "START_TIME"
        | "START_TIME_LOCAL"
        | "EMIT_TIME"
        | "EMIT_TIME_LOCAL"
        | "DOWNSTREAM_PEER_CERT_V_START"
        | "DOWNSTREAM_PEER_CERT_V_END"
        | "UPSTREAM_PEER_CERT_V_START"
        | "UPSTREAM_PEER_CERT_V_END" => Optional(Time),
        "DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT"
        | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT"
        | "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT"
        | "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"
        | "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT"
        | "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"
        | "RESPONSE_CODE_DETAILS" => Optional(Any),
        "GRPC_STATUS" => Optional(OneOf(&["CAMEL_STRING", "SNAKE_STRING", "NUMBER"])),
        "REQUESTED_SERVER_NAME" => Optional(OneOf(&["SNI_ONLY", "SNI_FIRST", "HOST_FIRST"])),
        "DYNAMIC_METADATA" => Required {
            param: Metadata,
            length: true,
        },
        "CLUSTER_METADATA" | "UPSTREAM_METADATA" => Required {
            param: Metadata,
            length: false,
        },
        "FILTER_STATE" | "UPSTREAM_FILTER_STATE" => Required {
            param: FilterState,
            length: true,
        },
        "ENVIRONMENT" | "QUERY_PARAM" => Required {
            param: NonEmpty,
            length: true,
        },
        _ => return None,
    })
}

/// Operators Envoy has whose parameters crossmesh does not check (an
/// expression language, a JSON document, sub-options): refused by name rather
/// than passed to Envoy unchecked.
const UNCHECKED: &[&str] = &[
    "CEL",
    "COALESCE",
    "COMMON_DURATION",
    "METADATA",
    "PATH",
    "QUERY_PARAMS",
    "STREAM_INFO_REQ",
];

/// `name` as an HTTP header name Envoy accepts: RFC 7230 token characters,
/// with one leading `:` for a pseudo-header; empty is allowed (`?` forms).
fn header_name_ok(name: &str) -> bool {
    let rest = name.strip_prefix(':').unwrap_or(name);
    rest.chars()
        .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
        && !(name.starts_with(':') && rest.is_empty())
}

fn check_param(op: &str, param: Param, arg: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("%{op}({arg})%: {why}"));
    match param {
        Param::Any => Ok(()),
        Param::Time => {
            // Envoy refuses a time format that prints a newline (`%n`, also
            // with flags and width: `%-5n`, `%En`).
            let b = arg.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' {
                    let mut j = i + 1;
                    while j < b.len() && b"-_0^#".contains(&b[j]) {
                        j += 1;
                    }
                    while j < b.len() && b[j].is_ascii_digit() && b[j] != b'0' {
                        j += 1;
                    }
                    if j < b.len() && (b[j] == b'E' || b[j] == b'O') {
                        j += 1;
                    }
                    if j < b.len() && b[j] == b'n' {
                        return bad("a time format must not contain a newline (%n)");
                    }
                }
                i += 1;
            }
            Ok(())
        }
        Param::Headers => {
            let parts: Vec<&str> = arg.split('?').collect();
            if parts.len() > 2 {
                return bad("at most one alternative header (HEADER?ALTERNATIVE)");
            }
            match parts.iter().find(|h| !header_name_ok(h)) {
                Some(h) => bad(&format!("{h:?} is not an HTTP header name")),
                None => Ok(()),
            }
        }
        Param::OneOf(words) => {
            if words.contains(&arg) {
                Ok(())
            } else {
                bad(&format!(
                    "the parameter must be one of {}",
                    words.join(", ")
                ))
            }
        }
        Param::FilterState => {
            let mut parts = arg.splitn(3, ':');
            let key = parts.next().unwrap_or_default();
            if key.is_empty() {
                return bad("the filter state key is empty");
            }
            match (parts.next(), parts.next()) {
                (None, _) | (Some("PLAIN" | "TYPED"), None) => Ok(()),
                (Some("FIELD"), Some(f)) if !f.is_empty() && !f.contains(':') => Ok(()),
                _ => bad("use KEY, KEY:PLAIN, KEY:TYPED or KEY:FIELD:NAME"),
            }
        }
        Param::Metadata => {
            if arg.split(':').next().unwrap_or_default().is_empty() {
                bad("the metadata namespace is empty (NAMESPACE:KEY...)")
            } else {
                Ok(())
            }
        }
        Param::NonEmpty => Ok(()),
    }
}

/// Check one format string against Envoy 1.40's substitution format rules:
/// `%%` is a literal `%`; every other `%` starts a command operator
/// `%NAME%`, `%NAME(PARAM)%` or `%NAME(PARAM):LENGTH%` (`NAME` of `A-Z`, `0-9`,
/// `_`; `PARAM` on one line, ending at the first `)` followed by `%` or
/// `:LENGTH%`); the operator must exist and take what it is given.
pub fn check_format(format: &str) -> Result<(), String> {
    let b = format.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            i += 1;
            continue;
        }
        if b.get(i + 1) == Some(&b'%') {
            i += 2;
            continue;
        }
        let (end, name, param, length) = command_at(format, i).ok_or_else(|| {
            format!(
                "no command operator at byte {i} of {format:?} (operators are %NAME%, \
                 %NAME(PARAM)% or %NAME(PARAM):LENGTH%; a literal % is written %%)"
            )
        })?;
        check_command(name, param, length)?;
        i = end;
    }
    Ok(())
}

/// The command at byte `start` (a `%`): (index after it, name, param, length).
fn command_at(f: &str, start: usize) -> Option<(usize, &str, Option<&str>, Option<&str>)> {
    let b = f.as_bytes();
    let mut j = start + 1;
    while j < b.len() && (b[j].is_ascii_uppercase() || b[j].is_ascii_digit() || b[j] == b'_') {
        j += 1;
    }
    if j == start + 1 {
        return None;
    }
    let name = &f[start + 1..j];
    // `:LENGTH%` or `%` from `k`: (index after, length).
    let tail = |k: usize| -> Option<(usize, Option<&str>)> {
        match b.get(k) {
            Some(b'%') => Some((k + 1, None)),
            Some(b':') => {
                let mut m = k + 1;
                while m < b.len() && b[m].is_ascii_digit() {
                    m += 1;
                }
                (m > k + 1 && b.get(m) == Some(&b'%')).then(|| (m + 1, Some(&f[k + 1..m])))
            }
            _ => None,
        }
    };
    if b.get(j) == Some(&b'(') {
        // The shortest parameter whose `)` is followed by `%` or `:LENGTH%`.
        let mut k = j + 1;
        while k < b.len() && b[k] != b'\n' {
            if b[k] == b')' {
                if let Some((end, len)) = tail(k + 1) {
                    return Some((end, name, Some(&f[j + 1..k]), len));
                }
            }
            k += 1;
        }
        return None;
    }
    tail(j).map(|(end, len)| (end, name, None, len))
}

fn check_command(name: &str, param: Option<&str>, length: Option<&str>) -> Result<(), String> {
    if UNCHECKED.contains(&name) {
        return Err(format!(
            "%{name}%: crossmesh does not check this operator's parameters before a proxy \
             loads them, so it is not accepted"
        ));
    }
    let Some(syntax) = operator(name) else {
        return Err(format!(
            "%{name}% is not an Envoy access log command operator"
        ));
    };
    if let Some(l) = length {
        if l.parse::<u64>().is_err() {
            return Err(format!("%{name}%: length {l} is too large"));
        }
    }
    match (syntax, param, length) {
        (Syntax::Bare, None, None) => Ok(()),
        (Syntax::Bare, _, _) => Err(format!("%{name}% takes no parameter and no length")),
        (Syntax::Optional(_), _, Some(_)) => Err(format!("%{name}% takes no length")),
        (Syntax::Optional(_), None, None) => Ok(()),
        (Syntax::Optional(p), Some(a), None) => {
            if a.is_empty() {
                Ok(())
            } else {
                check_param(name, p, a)
            }
        }
        (Syntax::Required { .. }, None, _) => {
            Err(format!("%{name}% needs a parameter: %{name}(...)%"))
        }
        (Syntax::Required { length: false, .. }, Some(_), Some(_)) => {
            Err(format!("%{name}% takes no length"))
        }
        (Syntax::Required { param, .. }, Some(a), _) => {
            if a.is_empty() {
                Err(format!("%{name}% needs a parameter: %{name}(...)%"))
            } else {
                check_param(name, param, a)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_defaults_pass_the_check() {
        check_format(ISTIO_TEXT_FORMAT).unwrap();
        for v in istio_json_format().values() {
            check_json_value(v).unwrap();
        }
    }

    #[test]
    fn format_rules_match_envoy() {
        for ok in [
            "%%",
            "a%%b",
            "%REQ(x):5%",
            "%REQ(:METHOD)%",
            "%REQ(?b)%",
            "%START_TIME(%s.%3f)% %REQ(b)%",
            "%START_TIME()%",
            "%RESPONSE_CODE_DETAILS(x)%",
            "%FILTER_STATE(k:PLAIN):4%",
            "%FILTER_STATE(k:FIELD:f)%",
            "%DYNAMIC_METADATA(ns:a:b):4%",
            "%GRPC_STATUS(SNAKE_STRING)%",
            "%RESPONSE_FLAGS%%%",
        ] {
            assert_eq!(check_format(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("100%", "no command operator at byte 3"),
            ("% x", "no command operator at byte 0"),
            ("%REQ(x)", "no command operator"),
            ("%REQ(x):%", "no command operator"),
            ("%REQ(a)x%", "no command operator"),
            ("%FOO%", "%FOO% is not an Envoy access log command operator"),
            ("%req(x)%", "no command operator"),
            ("%REQ(a?b?c)%", "at most one alternative"),
            ("%REQ(a b)%", "is not an HTTP header name"),
            ("%REQ(a:b)%", "is not an HTTP header name"),
            ("%REQ()%", "needs a parameter"),
            ("%REQ%", "needs a parameter"),
            ("%START_TIME:5%", "takes no length"),
            ("%START_TIME(%n)%", "newline"),
            ("%PROTOCOL(x)%", "takes no parameter"),
            ("%PROTOCOL:3%", "takes no parameter"),
            ("%CLUSTER_METADATA(ns):3%", "takes no length"),
            ("%FILTER_STATE(k:BAD)%", "KEY:PLAIN"),
            ("%GRPC_STATUS(x)%", "one of CAMEL_STRING"),
            ("%CEL(request.path)%", "does not check"),
            ("%REQ(a):18446744073709551616%", "too large"),
        ] {
            let e = check_format(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    /// Every name in the tables is an operator, and every example passes.
    #[test]
    fn examples_pass_the_check() {
        for n in BARE.iter().chain(WITH_PARAMS) {
            assert!(operator(n).is_some(), "{n}");
        }
        let ex = accepted_examples();
        assert!(ex.len() > BARE.len() + WITH_PARAMS.len(), "{}", ex.len());
        for e in ex {
            assert_eq!(check_format(&e), Ok(()), "{e}");
        }
    }

    #[test]
    fn json_formats() {
        let m = parse_json_format(r#"{"a": "%DURATION%", "n": {"b": ["%PROTOCOL%", 1]}}"#).unwrap();
        assert_eq!(m.len(), 2);
        let e = parse_json_format(r#"{"a": true}"#).unwrap_err();
        assert!(e.contains("key \"a\""), "{e}");
        let e = parse_json_format(r#"{"a": {"b": "%NOPE%"}}"#).unwrap_err();
        assert!(e.contains("%NOPE%"), "{e}");
        assert!(parse_json_format("[1]").is_err());
        assert!(parse_json_format("{").is_err());
    }
}
