//! A connected Envoy as it identifies itself, following Istio's node conventions
//! (`router~IP~POD.NS~NS.svc.cluster.local`, metadata `LABELS`, `NAMESPACE`, ...).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::service::Locality;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum ProxyRole {
    /// Istio's `router`: an ingress or east-west gateway.
    Gateway,
    Sidecar,
    /// A proxyless gRPC application (gRPC's own xDS client, `xds:///` targets):
    /// Istio's `sidecar` node type with metadata `GENERATOR: grpc`, as Istio's
    /// proxyless bootstrap (`pkg/istio-agent/grpcxds`) and
    /// `crossmesh bootstrap --role grpc` set it. It asks for resources by name
    /// (API listeners `HOST:PORT`, server listeners
    /// `xds.istio.io/grpc/lds/inbound/IP:PORT`) and NACKs what gRPC does not
    /// implement, so it gets a generator of its own (`translate::grpc`).
    Grpc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum InterceptionMode {
    /// iptables redirect: virtual listeners on 15001/15006.
    Redirect,
    /// No interception: listeners bind to real addresses (Istio `Sidecar` resource).
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Proxy {
    /// The full node id as sent.
    pub id: String,
    pub role: ProxyRole,
    pub ip: IpAddr,
    pub pod_name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub cluster_id: String,
    pub network: String,
    pub interception: InterceptionMode,
    pub service_account: String,
    pub istio_version: String,
    pub locality: Locality,
    /// The identity its service-account token proved, set only for proxies
    /// authenticated on the TLS xDS port (never taken from the node metadata).
    /// `None`: no certificate, and nothing may name its SDS secrets.
    #[serde(serialize_with = "spiffe_uri")]
    pub identity: Option<super::identity::Identity>,
}

fn spiffe_uri<S: serde::Serializer>(
    id: &Option<super::identity::Identity>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.serialize_some(&id.spiffe_uri()),
        None => s.serialize_none(),
    }
}

/// Why a node identity was rejected. Every message names the node id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("node id {id:?}: {reason} (expected Istio's TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN with TYPE router or sidecar)")]
    BadId { id: String, reason: String },
    #[error("node id {id:?}: metadata {key}: {reason}")]
    BadMetadata {
        id: String,
        key: &'static str,
        reason: String,
    },
}

use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

fn kind_name(v: &Value) -> &'static str {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => "null",
        Some(Kind::NumberValue(_)) => "a number",
        Some(Kind::StringValue(_)) => "a string",
        Some(Kind::BoolValue(_)) => "a bool",
        Some(Kind::StructValue(_)) => "a map",
        Some(Kind::ListValue(_)) => "a list",
    }
}

impl Proxy {
    /// Identify a connected Envoy by Istio's node conventions (DESIGN.md §3):
    ///
    /// - `node.id` is `router~IP~POD.NS~NS.svc.<domainSuffix>` (gateway) or
    ///   `sidecar~IP~POD.NS~NS.svc.<domainSuffix>` (sidecar), as istio-proxy sends it;
    /// - metadata `LABELS` (map of strings), `NAMESPACE` (must agree with the id),
    ///   `CLUSTER_ID`, `NETWORK`, `INTERCEPTION_MODE` (`REDIRECT`, the default, or
    ///   `NONE`; Istio's `TPROXY` is rejected as unsupported), `SERVICE_ACCOUNT`,
    ///   `ISTIO_VERSION`; other metadata keys (istio-proxy sends many) are not read;
    /// - `node.locality` region/zone/sub_zone;
    /// - metadata `GENERATOR`: `grpc` on a `sidecar` id makes it a proxyless gRPC
    ///   client (`ProxyRole::Grpc`, Istio's `grpcgen`); any other value is
    ///   rejected (Istio's other generators are not served).
    pub fn from_node(
        node: &envoy_types::pb::envoy::config::core::v3::Node,
    ) -> Result<Proxy, ProxyError> {
        let id = node.id.as_str();
        let bad = |reason: &str| ProxyError::BadId {
            id: id.to_string(),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = id.split('~').collect();
        if parts.len() != 4 {
            return Err(bad(&format!(
                "has {} '~'-separated parts, not 4",
                parts.len()
            )));
        }
        let role = match parts[0] {
            "router" => ProxyRole::Gateway,
            "sidecar" => ProxyRole::Sidecar,
            other => return Err(bad(&format!("unknown proxy type {other:?}"))),
        };
        let ip: IpAddr = parts[1]
            .parse()
            .map_err(|_| bad(&format!("{:?} is not an IP address", parts[1])))?;
        let mut domain = parts[3].split('.');
        let ns = match (domain.next(), domain.next()) {
            (Some(ns), Some("svc")) if !ns.is_empty() => ns,
            _ => {
                return Err(bad(&format!(
                    "domain {:?} is not NAMESPACE.svc.DOMAIN",
                    parts[3]
                )))
            }
        };
        let pod_name = match parts[2].strip_suffix(&format!(".{ns}")) {
            Some(pod) if !pod.is_empty() => pod,
            _ => {
                return Err(bad(&format!(
                    "{:?} is not POD.{ns} (the namespace of the domain part)",
                    parts[2]
                )))
            }
        };

        let empty = Struct::default();
        let meta = node.metadata.as_ref().unwrap_or(&empty);
        let meta_err = |key: &'static str, reason: String| ProxyError::BadMetadata {
            id: id.to_string(),
            key,
            reason,
        };
        let string = |key: &'static str| -> Result<Option<String>, ProxyError> {
            match meta.fields.get(key) {
                None => Ok(None),
                Some(Value {
                    kind: Some(Kind::StringValue(s)),
                }) => Ok(Some(s.clone())),
                Some(v) => Err(meta_err(
                    key,
                    format!("must be a string, got {}", kind_name(v)),
                )),
            }
        };

        if let Some(meta_ns) = string("NAMESPACE")? {
            if meta_ns != ns {
                return Err(meta_err(
                    "NAMESPACE",
                    format!("{meta_ns:?} disagrees with namespace {ns:?} of the node id"),
                ));
            }
        }
        let mut labels = BTreeMap::new();
        match meta.fields.get("LABELS") {
            None => {}
            Some(Value {
                kind: Some(Kind::StructValue(s)),
            }) => {
                for (k, v) in &s.fields {
                    match &v.kind {
                        Some(Kind::StringValue(s)) => {
                            labels.insert(k.clone(), s.clone());
                        }
                        _ => {
                            return Err(meta_err(
                                "LABELS",
                                format!("label {k:?} must be a string, got {}", kind_name(v)),
                            ))
                        }
                    }
                }
            }
            Some(v) => {
                return Err(meta_err(
                    "LABELS",
                    format!("must be a map, got {}", kind_name(v)),
                ))
            }
        }
        let role = match (role, string("GENERATOR")?.as_deref()) {
            (role, None | Some("")) => role,
            (ProxyRole::Sidecar, Some("grpc")) => ProxyRole::Grpc,
            (_, Some("grpc")) => {
                return Err(meta_err(
                    "GENERATOR",
                    "\"grpc\" needs the node type sidecar (Istio's proxyless gRPC node id)"
                        .to_string(),
                ))
            }
            (_, Some(other)) => {
                return Err(meta_err(
                    "GENERATOR",
                    format!(
                        "{other:?} is not supported (grpc for proxyless gRPC, unset for Envoy)"
                    ),
                ))
            }
        };
        let interception = match string("INTERCEPTION_MODE")?.as_deref() {
            None | Some("") | Some("REDIRECT") => InterceptionMode::Redirect,
            Some("NONE") => InterceptionMode::None,
            Some(other) => {
                return Err(meta_err(
                    "INTERCEPTION_MODE",
                    format!("{other:?} is not supported (use REDIRECT or NONE)"),
                ))
            }
        };
        let locality = node
            .locality
            .as_ref()
            .map(|l| Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                subzone: l.sub_zone.clone(),
            })
            .unwrap_or_default();
        Ok(Proxy {
            id: id.to_string(),
            role,
            ip,
            pod_name: pod_name.to_string(),
            namespace: ns.to_string(),
            labels,
            cluster_id: string("CLUSTER_ID")?.unwrap_or_default(),
            network: string("NETWORK")?.unwrap_or_default(),
            interception,
            service_account: string("SERVICE_ACCOUNT")?.unwrap_or_default(),
            istio_version: string("ISTIO_VERSION")?.unwrap_or_default(),
            locality,
            identity: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{Locality as PbLocality, Node};

    fn s(v: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(v.into())),
        }
    }

    fn node(id: &str, fields: Vec<(&str, Value)>) -> Node {
        Node {
            id: id.into(),
            metadata: Some(Struct {
                fields: fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn parses_gateway_node_with_metadata() {
        let labels = Value {
            kind: Some(Kind::StructValue(Struct {
                fields: [("istio".to_string(), s("ingressgateway"))].into(),
            })),
        };
        let mut n = node(
            "router~10.0.0.1~gw-abc.istio-system~istio-system.svc.cluster.local",
            vec![
                ("LABELS", labels),
                ("NAMESPACE", s("istio-system")),
                ("CLUSTER_ID", s("cluster1")),
                ("NETWORK", s("vpc-a")),
                ("SERVICE_ACCOUNT", s("gw")),
                ("ISTIO_VERSION", s("1.24.0")),
                ("PROXY_CONFIG", Value::default()),
            ],
        );
        n.locality = Some(PbLocality {
            region: "r".into(),
            zone: "z".into(),
            sub_zone: "s".into(),
        });
        let p = Proxy::from_node(&n).unwrap();
        assert_eq!(p.role, ProxyRole::Gateway);
        assert_eq!(p.ip.to_string(), "10.0.0.1");
        assert_eq!(p.pod_name, "gw-abc");
        assert_eq!(p.namespace, "istio-system");
        assert_eq!(p.labels["istio"], "ingressgateway");
        assert_eq!(p.cluster_id, "cluster1");
        assert_eq!(p.network, "vpc-a");
        assert_eq!(p.service_account, "gw");
        assert_eq!(p.istio_version, "1.24.0");
        assert_eq!(p.interception, InterceptionMode::Redirect);
        assert_eq!(p.locality.label(), "r/z/s");
    }

    #[test]
    fn sidecar_with_interception_none_and_dotted_pod_name() {
        let n = node(
            "sidecar~127.0.0.5~web.v1.default~default.svc.cluster.local",
            vec![("INTERCEPTION_MODE", s("NONE"))],
        );
        let p = Proxy::from_node(&n).unwrap();
        assert_eq!(p.role, ProxyRole::Sidecar);
        assert_eq!(p.pod_name, "web.v1");
        assert_eq!(p.interception, InterceptionMode::None);
        assert!(p.labels.is_empty());
    }

    #[test]
    fn rejects_bad_ids_and_metadata_naming_the_id() {
        for (id, want) in [
            ("envoy-1", "parts"),
            (
                "gateway~1.2.3.4~a.ns~ns.svc.cluster.local",
                "unknown proxy type",
            ),
            ("router~nope~a.ns~ns.svc.cluster.local", "not an IP"),
            ("router~1.2.3.4~a.ns~cluster.local", "NAMESPACE.svc.DOMAIN"),
            ("router~1.2.3.4~a.other~ns.svc.cluster.local", "POD.ns"),
        ] {
            let e = Proxy::from_node(&node(id, vec![])).unwrap_err().to_string();
            assert!(e.contains(id) && e.contains(want), "{id}: {e}");
        }
        let id = "sidecar~1.2.3.4~a.ns~ns.svc.cluster.local";
        let e = Proxy::from_node(&node(id, vec![("INTERCEPTION_MODE", s("TPROXY"))])).unwrap_err();
        assert!(e.to_string().contains("TPROXY") && e.to_string().contains(id));
        let e = Proxy::from_node(&node(id, vec![("NAMESPACE", s("other"))])).unwrap_err();
        assert!(e.to_string().contains("disagrees"));
        let e = Proxy::from_node(&node(id, vec![("LABELS", s("app=x"))])).unwrap_err();
        assert!(e.to_string().contains("must be a map"));
        let e = Proxy::from_node(&node(id, vec![("GENERATOR", s("api"))])).unwrap_err();
        assert!(e.to_string().contains("\"api\" is not supported"), "{e}");
        let gw = "router~1.2.3.4~a.ns~ns.svc.cluster.local";
        let e = Proxy::from_node(&node(gw, vec![("GENERATOR", s("grpc"))])).unwrap_err();
        assert!(e.to_string().contains("node type sidecar"), "{e}");
    }

    #[test]
    fn grpc_generator_makes_a_proxyless_grpc_client() {
        // Istio's proxyless bootstrap (pilot/pkg/networking/grpcgen/testdata).
        let n = node(
            "sidecar~127.0.1.1~echo.test~test.svc.cluster.local",
            vec![("GENERATOR", s("grpc")), ("NAMESPACE", s("test"))],
        );
        let p = Proxy::from_node(&n).unwrap();
        assert_eq!(p.role, ProxyRole::Grpc);
        assert_eq!(p.pod_name, "echo");
        assert_eq!(p.namespace, "test");
    }
}
