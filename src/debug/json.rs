//! Envoy's proto-JSON mapping for debug output: encoded resources (`Resource::any`,
//! a `google.protobuf.Any`) become JSON objects with `@type`, exactly as Envoy's own
//! admin `/config_dump` prints them (proto field names, 64-bit integers as strings).
//!
//! The descriptors come from the envoy-types crate's `types.bin`, copied to `OUT_DIR`
//! by `build.rs` and decoded once into a `DescriptorPool`. prost-reflect resolves the
//! type of every `Any`, nested ones included, from that pool.
//!
//! Fields Envoy marks `(udpa.annotations.sensitive) = true` (private keys, passwords,
//! generic secrets, session ticket keys) are replaced with `"[redacted]"`, as Envoy's
//! admin does, at any depth and inside nested `Any`s.

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, MessageDescriptor,
    ReflectMessage, SerializeOptions, Value,
};

/// The Envoy, xDS, udpa and google.protobuf descriptors shipped by envoy-types.
static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_types.bin"));

/// What Envoy writes in place of a sensitive value.
pub const REDACTED: &str = "[redacted]";

#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("the embedded Envoy descriptor set does not decode: {0}")]
    Descriptors(String),
    #[error("unknown protobuf message type {0:?}")]
    UnknownType(String),
    #[error("cannot decode a {type_name}: {source}")]
    Decode {
        type_name: String,
        source: prost::DecodeError,
    },
    #[error("cannot print a {type_name} as JSON: {source}")]
    Serialize {
        type_name: String,
        source: serde_json::Error,
    },
}

struct Pool {
    pool: DescriptorPool,
    /// `udpa.annotations.sensitive`, when the descriptor set carries it.
    sensitive: Option<ExtensionDescriptor>,
}

fn pool() -> Result<&'static Pool, JsonError> {
    static POOL: OnceLock<Result<Pool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        let pool = DescriptorPool::decode(DESCRIPTORS).map_err(|e| e.to_string())?;
        let sensitive = pool.get_extension_by_name("udpa.annotations.sensitive");
        Ok(Pool { pool, sensitive })
    })
    .as_ref()
    .map_err(|e| JsonError::Descriptors(e.clone()))
}

/// The descriptor pool of every Envoy API message.
pub fn descriptors() -> Result<&'static DescriptorPool, JsonError> {
    pool().map(|p| &p.pool)
}

fn message_descriptor(full_name: &str) -> Result<MessageDescriptor, JsonError> {
    descriptors()?
        .get_message_by_name(full_name)
        .ok_or_else(|| JsonError::UnknownType(full_name.to_string()))
}

/// An encoded `google.protobuf.Any` (as held in `xds::Resource::any`) as proto-JSON:
/// `{"@type": "type.googleapis.com/...", ...fields}`.
pub fn any_to_json(any: &[u8]) -> Result<serde_json::Value, JsonError> {
    message_bytes_to_json("google.protobuf.Any", any)
}

/// Any prost message of the Envoy API (`full_name` like
/// `envoy.admin.v3.ConfigDump`) as proto-JSON.
pub fn message_to_json<M: Message>(
    full_name: &str,
    msg: &M,
) -> Result<serde_json::Value, JsonError> {
    message_bytes_to_json(full_name, &msg.encode_to_vec())
}

fn message_bytes_to_json(full_name: &str, bytes: &[u8]) -> Result<serde_json::Value, JsonError> {
    let p = pool()?;
    let desc = message_descriptor(full_name)?;
    let mut msg = DynamicMessage::decode(desc, bytes).map_err(|source| JsonError::Decode {
        type_name: full_name.to_string(),
        source,
    })?;
    if let Some(ext) = &p.sensitive {
        redact(&mut msg, &p.pool, ext);
    }
    // Envoy's admin prints proto field names (`dynamic_active_clusters`, not
    // `dynamicActiveClusters`); the rest is the canonical proto3 JSON mapping.
    let opts = SerializeOptions::new().use_proto_field_name(true);
    msg.serialize_with_options(serde_json::value::Serializer, &opts)
        .map_err(|source| JsonError::Serialize {
            type_name: full_name.to_string(),
            source,
        })
}

fn is_sensitive(field: &FieldDescriptor, ext: &ExtensionDescriptor) -> bool {
    matches!(
        field.options().get_extension(ext).as_ref(),
        Value::Bool(true)
    )
}

/// Replace sensitive fields with `"[redacted]"`, recursing into messages, lists, maps
/// and `Any`s. An `Any` whose type is unknown to the pool is left as is (it prints
/// as base64 bytes and cannot hold an annotated field we know of).
fn redact(msg: &mut DynamicMessage, pool: &DescriptorPool, ext: &ExtensionDescriptor) {
    if msg.descriptor().full_name() == "google.protobuf.Any" {
        redact_any(msg, pool, ext);
        return;
    }
    for (field, value) in msg.fields_mut() {
        if is_sensitive(&field, ext) {
            redact_all(value);
        } else {
            redact_value(value, pool, ext);
        }
    }
}

fn redact_value(value: &mut Value, pool: &DescriptorPool, ext: &ExtensionDescriptor) {
    match value {
        Value::Message(m) => redact(m, pool, ext),
        Value::List(items) => items.iter_mut().for_each(|v| redact_value(v, pool, ext)),
        Value::Map(map) => map.values_mut().for_each(|v| redact_value(v, pool, ext)),
        _ => {}
    }
}

fn redact_any(any: &mut DynamicMessage, pool: &DescriptorPool, ext: &ExtensionDescriptor) {
    let type_url = match any.get_field_by_name("type_url").as_deref() {
        Some(Value::String(s)) => s.clone(),
        _ => return,
    };
    let bytes = match any.get_field_by_name("value").as_deref() {
        Some(Value::Bytes(b)) => b.clone(),
        _ => return,
    };
    let name = type_url.rsplit('/').next().unwrap_or_default();
    let Some(desc) = pool.get_message_by_name(name) else {
        return;
    };
    let Ok(mut inner) = DynamicMessage::decode(desc, bytes) else {
        return;
    };
    redact(&mut inner, pool, ext);
    any.set_field_by_name("value", Value::Bytes(inner.encode_to_vec().into()));
}

/// A sensitive field: every string and bytes leaf becomes `"[redacted]"` and every
/// other scalar is cleared to its default, as Envoy's `MessageUtil::redact` does.
fn redact_all(value: &mut Value) {
    match value {
        Value::String(s) => *s = REDACTED.to_string(),
        Value::Bytes(b) => *b = REDACTED.as_bytes().to_vec().into(),
        Value::Message(m) => {
            for (_, v) in m.fields_mut() {
                redact_all(v);
            }
        }
        Value::List(items) => items.iter_mut().for_each(redact_all),
        Value::Map(map) => map.values_mut().for_each(redact_all),
        Value::Bool(b) => *b = false,
        Value::I32(n) | Value::EnumNumber(n) => *n = 0,
        Value::I64(n) => *n = 0,
        Value::U32(n) => *n = 0,
        Value::U64(n) => *n = 0,
        Value::F32(n) => *n = 0.0,
        Value::F64(n) => *n = 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::{Resource, TypeUrl};
    use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
    use envoy_types::pb::envoy::config::core::v3::{
        address, data_source, socket_address, Address, DataSource, SocketAddress,
    };
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        secret, Secret, TlsCertificate,
    };
    use envoy_types::pb::google::protobuf::Duration;

    #[test]
    fn cluster_round_trips_with_type() {
        let c = Cluster {
            name: "outbound|80||web.ns.svc.cluster.local".into(),
            connect_timeout: Some(Duration {
                seconds: 10,
                nanos: 0,
            }),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            ..Default::default()
        };
        let r = Resource::encode(TypeUrl::Cluster, c.name.clone(), &c);
        let j = any_to_json(&r.any).unwrap();
        assert_eq!(j["@type"], TypeUrl::Cluster.as_str());
        assert_eq!(j["name"], "outbound|80||web.ns.svc.cluster.local");
        assert_eq!(j["type"], "EDS");
        assert_eq!(j["connect_timeout"], "10s");
    }

    #[test]
    fn listener_round_trips_with_type() {
        let l = Listener {
            name: "0.0.0.0_8080".into(),
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: "0.0.0.0".into(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(8080)),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        };
        let r = Resource::encode(TypeUrl::Listener, l.name.clone(), &l);
        let j = any_to_json(&r.any).unwrap();
        assert_eq!(j["@type"], TypeUrl::Listener.as_str());
        assert_eq!(j["name"], "0.0.0.0_8080");
        assert_eq!(j["address"]["socket_address"]["address"], "0.0.0.0");
        assert_eq!(j["address"]["socket_address"]["port_value"], 8080);
    }

    #[test]
    fn private_keys_are_redacted() {
        let s = Secret {
            name: "default".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineString("CERT".into())),
                    ..Default::default()
                }),
                private_key: Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineString("KEY".into())),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        let r = Resource::encode(TypeUrl::Secret, "default", &s);
        let j = any_to_json(&r.any).unwrap();
        let text = j.to_string();
        assert!(!text.contains("KEY"), "{text}");
        assert_eq!(
            j["tls_certificate"]["private_key"]["inline_string"],
            REDACTED
        );
        assert_eq!(
            j["tls_certificate"]["certificate_chain"]["inline_string"],
            "CERT"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(
            any_to_json(&[0xff, 0xff, 0xff]),
            Err(JsonError::Decode { .. })
        ));
    }
}
