//! Access logs as Istio's meshConfig sets them (`accessLogFile`,
//! `accessLogEncoding`, `accessLogFormat`; istiod's `FileAccessLogFromMeshConfig`
//! in `pilot/pkg/model/telemetry_logging.go`): Envoy's file access logger on
//! every HTTP connection manager and TCP proxy.
//!
//! A format reaches Envoy only once it passes [`check_format`]
//! (`config::access_log`), the rules of Envoy 1.40's substitution format parser, so a bad `accessLogFormat` is
//! refused when the mesh file is read (naming the operator and why) instead of
//! every listener being NACKed by every proxy.

use envoy_types::pb::envoy::config::accesslog::v3::{
    access_log::ConfigType as AccessLogConfig, access_log_filter::FilterSpecifier,
    AccessLog as AccessLogProto, AccessLogFilter, ResponseFlagFilter,
};
use envoy_types::pb::envoy::config::core::v3::{
    data_source::Specifier, substitution_format_string::Format, DataSource, JsonFormatOptions,
    SubstitutionFormatString, TrafficDirection, TypedExtensionConfig,
};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    file_access_log::AccessLogFormat as FileFormat, FileAccessLog,
};
use envoy_types::pb::envoy::extensions::formatter::req_without_query::v3::ReqWithoutQuery;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use serde_json::Value;

use super::proto::pack;
use crate::config::{AccessLog, AccessLogFormat};
use crate::model::ProxyRole;

/// Envoy's file access logger.
pub const FILE_ACCESS_LOG: &str = "envoy.access_loggers.file";
/// The formatter extension `%REQ_WITHOUT_QUERY(...)%` needs (Istio adds it).
const REQ_WITHOUT_QUERY_FORMATTER: &str = "envoy.formatter.req_without_query";

/// The format grammar is the mesh file's (checked when it is read); translation
/// only writes formats that passed it.
pub use crate::config::access_log::{
    accepted_examples, check_format, istio_json_format, parse_json_format, ISTIO_TEXT_FORMAT,
};

/// Whether `text` uses `%REQ_WITHOUT_QUERY(...)%` (Istio then adds its
/// formatter extension, `accessLogTextFormatters`).
fn needs_req_without_query(text: &str) -> bool {
    text.contains("%REQ_WITHOUT_QUERY")
}

fn json_needs_req_without_query(v: &Value) -> bool {
    match v {
        Value::String(s) => needs_req_without_query(s),
        Value::Object(m) => m.values().any(json_needs_req_without_query),
        Value::Array(a) => a.iter().any(json_needs_req_without_query),
        _ => false,
    }
}

fn req_without_query_formatter() -> TypedExtensionConfig {
    TypedExtensionConfig {
        name: REQ_WITHOUT_QUERY_FORMATTER.into(),
        typed_config: Some(pack(&ReqWithoutQuery {})),
    }
}

/// Envoy's file access logger writing `cfg` (istiod's
/// `FileAccessLogFromMeshConfig`): TEXT as `text_format_source`, JSON as
/// `json_format` with `json_format_options.sort_properties: false`.
pub fn file_access_log(cfg: &AccessLog) -> AccessLogProto {
    let mut fl = FileAccessLog {
        path: cfg.path.clone(),
        access_log_format: None,
    };
    let value = match &cfg.format {
        AccessLogFormat::Text(text) => {
            fl.access_log_format = Some(FileFormat::LogFormat(SubstitutionFormatString {
                format: Some(Format::TextFormatSource(DataSource {
                    specifier: Some(Specifier::InlineString(text.clone())),
                    ..Default::default()
                })),
                formatters: needs_req_without_query(text)
                    .then(req_without_query_formatter)
                    .into_iter()
                    .collect(),
                ..Default::default()
            }));
            fl.encode_to_vec()
        }
        AccessLogFormat::Json(map) => {
            let needs = map.values().any(json_needs_req_without_query);
            fl.access_log_format = Some(FileFormat::LogFormat(SubstitutionFormatString {
                // Istio's `JsonFormatOptions{SortProperties: false}`: present,
                // every field at its default.
                json_format_options: Some(JsonFormatOptions::default()),
                formatters: needs
                    .then(req_without_query_formatter)
                    .into_iter()
                    .collect(),
                ..Default::default()
            }));
            // The `json_format` Struct is a map prost would encode in hash
            // order (a new content version on every push): written here in
            // key order as a second `log_format` (field 5), which protobuf
            // merges into the first.
            let mut buf = fl.encode_to_vec();
            let mut sfs = Vec::new();
            prost::encoding::bytes::encode(2, &encode_struct(map), &mut sfs);
            prost::encoding::bytes::encode(5, &sfs, &mut buf);
            buf
        }
    };
    AccessLogProto {
        name: FILE_ACCESS_LOG.into(),
        filter: None,
        config_type: Some(AccessLogConfig::TypedConfig(Any {
            type_url: format!("type.googleapis.com/{}", FileAccessLog::full_name()),
            value,
        })),
    }
}

/// Istio's listener access log (`setListenerAccessLog`): the same logger,
/// only for connections no filter chain matched (response flag `NR`), which
/// the HTTP connection managers and TCP proxies never see.
pub fn listener_access_log(cfg: &AccessLog) -> AccessLogProto {
    AccessLogProto {
        filter: Some(AccessLogFilter {
            filter_specifier: Some(FilterSpecifier::ResponseFlagFilter(ResponseFlagFilter {
                flags: vec!["NR".into()],
            })),
        }),
        ..file_access_log(cfg)
    }
}

/// [`listener_access_log`] on the listeners Istio gives one: every listener
/// of a gateway (`buildGatewayListener`), and a sidecar's inbound listeners
/// and `virtualOutbound` (`buildVirtualOutboundListener`, the inbound
/// builders); a sidecar's per-port outbound listeners get none.
pub fn set_listener_access_logs(listeners: &mut [Listener], role: ProxyRole, cfg: &AccessLog) {
    let log = listener_access_log(cfg);
    for l in listeners {
        let inbound = l.traffic_direction == TrafficDirection::Inbound as i32;
        if role == ProxyRole::Gateway || inbound || l.name == "virtualOutbound" {
            l.access_log = vec![log.clone()];
        }
    }
}

/// `google.protobuf.Struct` bytes with the fields in key order.
fn encode_struct<'a>(fields: impl IntoIterator<Item = (&'a String, &'a Value)>) -> Vec<u8> {
    let mut sorted: Vec<(&String, &Value)> = fields.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::new();
    for (k, v) in sorted {
        let mut entry = Vec::new();
        prost::encoding::string::encode(1, k, &mut entry);
        prost::encoding::bytes::encode(2, &encode_value(v), &mut entry);
        prost::encoding::bytes::encode(1, &entry, &mut out);
    }
    out
}

/// `google.protobuf.Value` bytes (`null_value` 1, `number_value` 2,
/// `string_value` 3, `bool_value` 4, `struct_value` 5, `list_value` 6).
fn encode_value(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    match v {
        Value::Null => prost::encoding::int32::encode(1, &0, &mut out),
        Value::Number(n) => {
            prost::encoding::double::encode(2, &n.as_f64().unwrap_or_default(), &mut out)
        }
        Value::String(s) => prost::encoding::string::encode(3, s, &mut out),
        Value::Bool(b) => prost::encoding::bool::encode(4, b, &mut out),
        Value::Object(m) => prost::encoding::bytes::encode(5, &encode_struct(m), &mut out),
        Value::Array(a) => {
            let mut list = Vec::new();
            for item in a {
                prost::encoding::bytes::encode(1, &encode_value(item), &mut list);
            }
            prost::encoding::bytes::encode(6, &list, &mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON format's Struct is encoded in key order: the same config
    /// encodes to the same bytes every time, and decodes to the same map.
    #[test]
    fn json_struct_encoding_is_deterministic_and_decodes() {
        let cfg = AccessLog {
            path: "/dev/stdout".into(),
            format: AccessLogFormat::Json(istio_json_format()),
        };
        let a = file_access_log(&cfg).encode_to_vec();
        for _ in 0..20 {
            assert_eq!(file_access_log(&cfg).encode_to_vec(), a);
        }
        let Some(AccessLogConfig::TypedConfig(any)) = file_access_log(&cfg).config_type else {
            panic!("typed config");
        };
        let fl = FileAccessLog::decode(any.value.as_slice()).unwrap();
        let Some(FileFormat::LogFormat(sfs)) = fl.access_log_format else {
            panic!("log_format");
        };
        let Some(Format::JsonFormat(s)) = sfs.format else {
            panic!("json_format");
        };
        assert_eq!(
            s.fields.len(),
            crate::config::access_log::ISTIO_JSON_KEYS.len()
        );
        assert_eq!(sfs.json_format_options, Some(JsonFormatOptions::default()));
    }
}
