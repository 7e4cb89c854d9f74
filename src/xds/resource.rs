//! Encoded resources: each distinct content is encoded once into the bytes of a
//! `google.protobuf.Any` and shared (by `Arc`) between every proxy that receives it.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

/// The xDS resource types crossmesh serves, in the order a push sends them
/// (CDS before EDS, LDS before RDS: Envoy's warming rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum TypeUrl {
    Cluster,
    Endpoint,
    Listener,
    Route,
    Secret,
}

impl TypeUrl {
    /// Push order.
    pub const ALL: [TypeUrl; 5] = [
        TypeUrl::Cluster,
        TypeUrl::Endpoint,
        TypeUrl::Listener,
        TypeUrl::Route,
        TypeUrl::Secret,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            TypeUrl::Endpoint => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            TypeUrl::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            TypeUrl::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            TypeUrl::Secret => {
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
            }
        }
    }

    pub fn parse(s: &str) -> Option<TypeUrl> {
        TypeUrl::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Short name used in metrics (`cds`, `eds`, ...), as Istio labels them.
    pub fn short(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "cds",
            TypeUrl::Endpoint => "eds",
            TypeUrl::Listener => "lds",
            TypeUrl::Route => "rds",
            TypeUrl::Secret => "sds",
        }
    }

    /// In state-of-the-world, a response for these types carries the full set and
    /// resources missing from it are deleted (xDS protocol: LDS and CDS only).
    pub fn sotw_implicit_delete(self) -> bool {
        matches!(self, TypeUrl::Cluster | TypeUrl::Listener)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One named resource, encoded once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub name: Arc<str>,
    /// A hash of the encoded content; equal content gives an equal version.
    pub version: Arc<str>,
    /// The encoded `google.protobuf.Any` (type_url + value).
    pub any: Bytes,
}

impl Resource {
    /// Encode `msg` as an `Any` of type `type_url`.
    pub fn encode<M: Message>(type_url: TypeUrl, name: impl Into<Arc<str>>, msg: &M) -> Arc<Self> {
        let any = envoy_types::pb::google::protobuf::Any {
            type_url: type_url.as_str().to_string(),
            value: msg.encode_to_vec(),
        };
        let bytes = any.encode_to_vec();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        Arc::new(Resource {
            name: name.into(),
            version: format!("{:016x}", h.finish()).into(),
            any: Bytes::from(bytes),
        })
    }
}

/// All resources of one type that a proxy (or class of proxies) should see.
pub type ResourceMap = Arc<BTreeMap<Arc<str>, Arc<Resource>>>;

/// What one proxy should see right now, per type. Connections compare snapshots by
/// `Arc` pointer and by resource version, so sharing a snapshot between proxies of
/// one class costs nothing per proxy.
#[derive(Debug, Clone, Default)]
pub struct ProxySnapshot {
    /// Push sequence number that produced this snapshot.
    pub seq: u64,
    /// Indexed by `TypeUrl::index()`.
    pub resources: [ResourceMap; 5],
}

impl ProxySnapshot {
    pub fn get(&self, t: TypeUrl) -> &ResourceMap {
        &self.resources[t.index()]
    }
}
