//! Encoded resources: each distinct content is encoded once into the bytes of a
//! `google.protobuf.Any` and shared (by `Arc`) between every proxy that receives it.

use std::collections::{BTreeMap, BTreeSet};
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
    /// Push order: secrets first (a cluster or listener that names a changed
    /// secret reaches the client after the secret's new content), then CDS
    /// before EDS and LDS before RDS.
    pub const ALL: [TypeUrl; 5] = [
        TypeUrl::Secret,
        TypeUrl::Cluster,
        TypeUrl::Endpoint,
        TypeUrl::Listener,
        TypeUrl::Route,
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

/// A 64-bit hash whose output is fixed by its definition: the first 8 bytes
/// (big-endian) of the SHA-256 (FIPS 180-4) of what was written. Resource and
/// response versions are made from it, so that another process, a restarted
/// one or one built by a later Rust release gives equal content an equal
/// version and a reconnecting proxy is not sent what it holds
/// (`std`'s `DefaultHasher` promises no such stability).
pub struct StableHash(ring::digest::Context);

impl StableHash {
    pub fn new() -> StableHash {
        StableHash(ring::digest::Context::new(&ring::digest::SHA256))
    }

    /// Add raw bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Add a string, prefixed by its length (8 bytes, little-endian), so that
    /// consecutive strings cannot run into each other ("ab","c" vs "a","bc").
    pub fn write_str(&mut self, s: &str) {
        self.0.update(&(s.len() as u64).to_le_bytes());
        self.0.update(s.as_bytes());
    }

    pub fn finish(self) -> u64 {
        let d = self.0.finish();
        let mut first = [0u8; 8];
        first.copy_from_slice(&d.as_ref()[..8]);
        u64::from_be_bytes(first)
    }

    /// `finish` as 16 lowercase hex digits: the form of every version crossmesh sends.
    pub fn hex(self) -> String {
        format!("{:016x}", self.finish())
    }
}

impl Default for StableHash {
    fn default() -> Self {
        StableHash::new()
    }
}

/// One named resource, encoded once, together with its wire form inside a
/// response: `delta` is one complete element of
/// `DeltaDiscoveryResponse.resources` (key, length, `Resource{version, resource,
/// name}`), and `sotw` one element of `DiscoveryResponse.resources` (key, length,
/// `Any`). Both are the same bytes: a state-of-the-world element is exactly the
/// `resource` field inside the Delta element, and `any` is a slice of it too. A
/// response is then the concatenation of shared elements plus a few bytes of
/// its own, and no stream ever copies or re-encodes a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub name: Arc<str>,
    /// A hash of the encoded content; equal content gives an equal version.
    pub version: Arc<str>,
    /// The encoded `google.protobuf.Any` (type_url + value).
    pub any: Bytes,
    /// `StableHash` of name and version: a stream XORs these over what a
    /// client holds to version a SotW EDS/RDS response by the whole set.
    pub digest: u64,
    delta: Bytes,
    sotw: Bytes,
}

impl Resource {
    /// A resource from its encoded `Any`.
    pub fn new(name: Arc<str>, version: Arc<str>, any: &[u8]) -> Resource {
        use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
        let any_field = key_len(2) + encoded_len_varint(any.len() as u64) + any.len();
        let inner = str_field_len(1, &version) + any_field + str_field_len(3, &name);
        let mut buf =
            bytes::BytesMut::with_capacity(key_len(2) + encoded_len_varint(inner as u64) + inner);
        encode_key(2, WireType::LengthDelimited, &mut buf);
        encode_varint(inner as u64, &mut buf);
        put_str_field(1, &version, &mut buf);
        let sotw_start = buf.len();
        encode_key(2, WireType::LengthDelimited, &mut buf);
        encode_varint(any.len() as u64, &mut buf);
        let any_start = buf.len();
        buf.extend_from_slice(any);
        let any_end = buf.len();
        put_str_field(3, &name, &mut buf);
        let delta = buf.freeze();
        let mut h = StableHash::new();
        h.write_str(&name);
        h.write_str(&version);
        Resource {
            digest: h.finish(),
            name,
            version,
            any: delta.slice(any_start..any_end),
            sotw: delta.slice(sotw_start..any_end),
            delta,
        }
    }

    /// Encode `msg` as an `Any` of type `type_url`.
    pub fn encode<M: Message>(type_url: TypeUrl, name: impl Into<Arc<str>>, msg: &M) -> Arc<Self> {
        let any = envoy_types::pb::google::protobuf::Any {
            type_url: type_url.as_str().to_string(),
            value: msg.encode_to_vec(),
        };
        let bytes = any.encode_to_vec();
        let mut h = StableHash::new();
        h.write(&bytes);
        let version: Arc<str> = h.hex().into();
        Arc::new(Resource::new(name.into(), version, &bytes))
    }

    /// This resource as one element of `DeltaDiscoveryResponse.resources`.
    pub fn delta_entry(&self) -> &Bytes {
        &self.delta
    }

    /// This resource as one element of `DiscoveryResponse.resources`.
    pub fn sotw_entry(&self) -> &Bytes {
        &self.sotw
    }
}

/// Length of a string field (omitted when empty, as proto3 does).
pub(super) fn str_field_len(tag: u32, s: &str) -> usize {
    use prost::encoding::{encoded_len_varint, key_len};
    if s.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
    }
}

/// Write a string field (omitted when empty).
pub(super) fn put_str_field(tag: u32, s: &str, buf: &mut impl bytes::BufMut) {
    use prost::encoding::{encode_key, encode_varint, WireType};
    if s.is_empty() {
        return;
    }
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(s.len() as u64, buf);
    buf.put_slice(s.as_bytes());
}

/// All resources of one type that a proxy (or class of proxies) should see.
pub type ResourceMap = Arc<BTreeMap<Arc<str>, Arc<Resource>>>;

/// Walk two name-ordered sequences together, calling `each` once per name
/// present in either, with its value on each side. Names are compared by
/// pointer first: maps of successive pushes share their unchanged names.
pub fn merge_by_name<'a, A, B>(
    a: impl Iterator<Item = (&'a Arc<str>, A)>,
    b: impl Iterator<Item = (&'a Arc<str>, B)>,
    mut each: impl FnMut(&'a Arc<str>, Option<A>, Option<B>),
) {
    use std::cmp::Ordering;
    let (mut a, mut b) = (a.peekable(), b.peekable());
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => return,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ka, _)), Some((kb, _))) if Arc::ptr_eq(ka, kb) => Ordering::Equal,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
        };
        match order {
            Ordering::Less => {
                if let Some((k, va)) = a.next() {
                    each(k, Some(va), None);
                }
            }
            Ordering::Greater => {
                if let Some((k, vb)) = b.next() {
                    each(k, None, Some(vb));
                }
            }
            Ordering::Equal => {
                if let (Some((k, va)), Some((_, vb))) = (a.next(), b.next()) {
                    each(k, Some(va), Some(vb));
                }
            }
        }
    }
}

/// Whether two resources have the same content (same allocation, or same
/// version).
pub fn same_content(a: &Arc<Resource>, b: &Arc<Resource>) -> bool {
    Arc::ptr_eq(a, b) || a.version == b.version
}

/// Names added, removed or changed (by version) between two maps: one pass over
/// both in name order.
pub fn changed_names(old: &ResourceMap, new: &ResourceMap) -> BTreeSet<Arc<str>> {
    let mut out = BTreeSet::new();
    if Arc::ptr_eq(old, new) {
        return out;
    }
    merge_by_name(old.iter(), new.iter(), |k, a, b| match (a, b) {
        (Some(a), Some(b)) if same_content(a, b) => {}
        _ => {
            out.insert(k.clone());
        }
    });
    out
}

/// What one proxy should see right now, per type. Connections compare snapshots by
/// `Arc` pointer and by resource version, so sharing a snapshot between proxies of
/// one class costs nothing per proxy.
#[derive(Debug, Clone, Default)]
pub struct ProxySnapshot {
    /// Push sequence number that produced this snapshot.
    pub seq: u64,
    /// Indexed by `TypeUrl::index()`.
    pub resources: [ResourceMap; 5],
    /// Per type, every element of the map concatenated (Delta, SotW), made the
    /// first time a stream sends a whole map: a full push is then one shared
    /// buffer instead of one chunk per resource, for every proxy of the snapshot.
    joined: [[std::sync::OnceLock<Bytes>; 2]; 5],
}

impl ProxySnapshot {
    pub fn new(seq: u64, resources: [ResourceMap; 5]) -> ProxySnapshot {
        ProxySnapshot {
            seq,
            resources,
            joined: Default::default(),
        }
    }

    pub fn get(&self, t: TypeUrl) -> &ResourceMap {
        &self.resources[t.index()]
    }

    /// The elements of every resource of `t`, in map order, as one buffer
    /// (`Resource::delta_entry` when `delta`, else `Resource::sotw_entry`).
    pub fn joined(&self, t: TypeUrl, delta: bool) -> Bytes {
        self.joined[t.index()][usize::from(delta)]
            .get_or_init(|| {
                let entry = if delta {
                    Resource::delta_entry
                } else {
                    Resource::sotw_entry
                };
                let map = self.get(t);
                let len = map.values().map(|r| entry(r).len()).sum();
                let mut buf = bytes::BytesMut::with_capacity(len);
                for r in map.values() {
                    buf.extend_from_slice(entry(r));
                }
                buf.freeze()
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(items: &[(&str, u8)]) -> ResourceMap {
        Arc::new(
            items
                .iter()
                .map(|(n, v)| {
                    let r = Resource::new(Arc::from(*n), Arc::from(v.to_string().as_str()), &[*v]);
                    (r.name.clone(), Arc::new(r))
                })
                .collect(),
        )
    }

    /// Versions must not change between processes or releases (a restarted or
    /// upgraded control plane would otherwise resend everything): this pins the
    /// version of one fixed resource.
    #[test]
    fn resource_version_is_pinned() {
        use envoy_types::pb::envoy::config::cluster::v3::Cluster;
        let c = Cluster {
            name: "outbound|80||a.default.svc.cluster.local".into(),
            ..Default::default()
        };
        let r = Resource::encode(TypeUrl::Cluster, c.name.clone(), &c);
        assert_eq!(&*r.version, "baf9fce71156166b");
        let mut h = StableHash::new();
        h.write_str("a");
        h.write_str("b");
        assert_eq!(h.hex(), "cf6ab613e3942391");
    }

    #[test]
    fn changed_names_finds_added_removed_and_changed() {
        let old = map(&[("a", 1), ("b", 1), ("c", 1), ("e", 1)]);
        let new = map(&[("b", 1), ("c", 2), ("d", 1), ("e", 1), ("f", 1)]);
        let changed = changed_names(&old, &new);
        let got: Vec<&str> = changed.iter().map(|n| &**n).collect();
        assert_eq!(got, ["a", "c", "d", "f"]);
        assert!(changed_names(&old, &old).is_empty());
        assert!(changed_names(&old, &map(&[("a", 1), ("b", 1), ("c", 1), ("e", 1)])).is_empty());
        let all: Vec<String> = changed_names(&old, &Arc::default())
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(all, ["a", "b", "c", "e"]);
    }
}
