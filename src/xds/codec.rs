//! The wire format of the ADS server: requests (`Requests`) are gRPC messages
//! decoded with prost, except a SotW request's `resource_names`, kept as wire
//! bytes (`SotwRequest`); responses are written field by field (`Frames`) so that
//! each resource's pre-encoded `google.protobuf.Any` bytes (`Resource::any`,
//! encoded once per content and shared by every proxy) go into the HTTP/2 body
//! by reference, never re-encoded or copied per proxy.
//!
//! The hand-written encoders produce exactly the wire format of
//! `envoy.service.discovery.v3.DiscoveryResponse` and `DeltaDiscoveryResponse`
//! (a test decodes them back with prost to prove it).

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message;
use tonic::Status;

use super::resource::{put_str_field, str_field_len, Resource, TypeUrl};

/// A state-of-the-world response (`DiscoveryResponse`) holding shared resources.
#[derive(Debug, Clone)]
pub struct SotwResponse {
    pub version_info: String,
    pub type_url: TypeUrl,
    pub nonce: String,
    pub resources: Vec<Arc<Resource>>,
    /// When `resources` is a whole snapshot map: their elements already
    /// concatenated (`ProxySnapshot::joined`), sent as one shared chunk.
    pub joined: Option<Bytes>,
}

/// An incremental response (`DeltaDiscoveryResponse`) holding shared resources.
#[derive(Debug, Clone)]
pub struct DeltaResponse {
    pub system_version_info: String,
    pub type_url: TypeUrl,
    pub nonce: String,
    pub resources: Vec<Arc<Resource>>,
    pub removed: Vec<Arc<str>>,
    /// As `SotwResponse::joined`.
    pub joined: Option<Bytes>,
}

/// Bytes of resource payload a response carries (`pilot_xds_send_bytes`).
pub trait PayloadLen {
    fn payload_len(&self) -> usize;
}

impl PayloadLen for SotwResponse {
    fn payload_len(&self) -> usize {
        self.resources.iter().map(|r| r.any.len()).sum()
    }
}

impl PayloadLen for DeltaResponse {
    fn payload_len(&self) -> usize {
        self.resources.iter().map(|r| r.any.len()).sum()
    }
}

/// A response as the three parts of its message: fields before the resources
/// (`head`), the resources' shared pre-encoded elements, and fields after them
/// (`tail`). Field order follows the field numbers, as prost writes them.
pub trait EncodeResponse: Send + 'static {
    fn head(&self, buf: &mut impl BufMut);
    /// The resource elements (or the one joined buffer of them).
    fn entries(&self) -> Entries<'_>;
    fn tail(&self, buf: &mut impl BufMut);
    fn head_len(&self) -> usize;
    fn tail_len(&self) -> usize;

    /// Exact encoded length of the message.
    fn encoded_len(&self) -> usize {
        self.head_len() + self.entries().len() + self.tail_len()
    }

    /// The whole message, contiguous (tests and tools; the server uses `Frames`).
    fn encode(&self, buf: &mut impl BufMut) {
        self.head(buf);
        self.entries().for_each(|b| buf.put_slice(b));
        self.tail(buf);
    }
}

/// The resource elements of a response.
pub enum Entries<'a> {
    Joined(&'a Bytes),
    Each(&'a [Arc<Resource>], fn(&Resource) -> &Bytes),
}

impl Entries<'_> {
    fn len(&self) -> usize {
        match self {
            Entries::Joined(b) => b.len(),
            Entries::Each(rs, f) => rs.iter().map(|r| f(r).len()).sum(),
        }
    }

    fn for_each(&self, mut each: impl FnMut(&Bytes)) {
        match self {
            Entries::Joined(b) => each(b),
            Entries::Each(rs, f) => rs.iter().for_each(|r| each(f(r))),
        }
    }
}

impl EncodeResponse for SotwResponse {
    /// version_info (1)
    fn head(&self, buf: &mut impl BufMut) {
        put_str_field(1, &self.version_info, buf);
    }
    /// resources (2)
    fn entries(&self) -> Entries<'_> {
        match &self.joined {
            Some(b) => Entries::Joined(b),
            None => Entries::Each(&self.resources, Resource::sotw_entry),
        }
    }
    /// type_url (4), nonce (5)
    fn tail(&self, buf: &mut impl BufMut) {
        put_str_field(4, self.type_url.as_str(), buf);
        put_str_field(5, &self.nonce, buf);
    }
    fn head_len(&self) -> usize {
        str_field_len(1, &self.version_info)
    }
    fn tail_len(&self) -> usize {
        str_field_len(4, self.type_url.as_str()) + str_field_len(5, &self.nonce)
    }
}

impl EncodeResponse for DeltaResponse {
    /// system_version_info (1)
    fn head(&self, buf: &mut impl BufMut) {
        put_str_field(1, &self.system_version_info, buf);
    }
    /// resources (2)
    fn entries(&self) -> Entries<'_> {
        match &self.joined {
            Some(b) => Entries::Joined(b),
            None => Entries::Each(&self.resources, Resource::delta_entry),
        }
    }
    /// type_url (4), nonce (5), removed_resources (6; written even when empty)
    fn tail(&self, buf: &mut impl BufMut) {
        put_str_field(4, self.type_url.as_str(), buf);
        put_str_field(5, &self.nonce, buf);
        for name in &self.removed {
            encode_key(6, WireType::LengthDelimited, buf);
            encode_varint(name.len() as u64, buf);
            buf.put_slice(name.as_bytes());
        }
    }
    fn head_len(&self) -> usize {
        str_field_len(1, &self.system_version_info)
    }
    fn tail_len(&self) -> usize {
        let removed: usize = self
            .removed
            .iter()
            .map(|n| key_len(6) + encoded_len_varint(n.len() as u64) + n.len())
            .sum();
        str_field_len(4, self.type_url.as_str()) + str_field_len(5, &self.nonce) + removed
    }
}

/// One gRPC message as the chunks of an HTTP/2 body: the 5-byte gRPC prefix
/// and the head fields in one small owned chunk, then every resource element
/// as a clone of its shared `Bytes` (a reference count, no copy) or, for a
/// whole snapshot map, the one joined buffer, then the tail fields. A stream
/// therefore never holds its own copy of a response: memory per proxy does not
/// grow with the size of what it is sent.
pub struct Frames;

impl Frames {
    /// The gRPC length-prefixed message (uncompressed) of `resp`.
    pub fn message(resp: &impl EncodeResponse) -> VecDeque<Bytes> {
        let len = resp.encoded_len();
        let mut head = BytesMut::with_capacity(5 + resp.head_len());
        head.put_u8(0);
        head.put_u32(len as u32);
        resp.head(&mut head);
        let mut chunks = VecDeque::new();
        chunks.push_back(head.freeze());
        resp.entries().for_each(|b| {
            if !b.is_empty() {
                chunks.push_back(b.clone());
            }
        });
        let mut tail = BytesMut::with_capacity(resp.tail_len());
        resp.tail(&mut tail);
        if !tail.is_empty() {
            chunks.push_back(tail.freeze());
        }
        chunks
    }
}

/// A request message as the ADS server decodes it from its gRPC frame.
pub trait DecodeRequest: Sized + Send + 'static {
    fn decode_request(msg: Bytes) -> Result<Self, String>;
}

impl DecodeRequest for DeltaDiscoveryRequest {
    fn decode_request(msg: Bytes) -> Result<Self, String> {
        DeltaDiscoveryRequest::decode(msg).map_err(|e| e.to_string())
    }
}

/// A state-of-the-world `DiscoveryRequest` whose `resource_names` are not
/// decoded into one `String` each: Envoy repeats every name it subscribes to
/// in every request, including each ACK (with 1,000 EDS clusters, 1,000 names
/// per ACK per proxy), and the stream only needs to know whether the list
/// changed. `req` holds every other field (its `resource_names` is empty);
/// `names` the names as they came on the wire.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SotwRequest {
    pub req: DiscoveryRequest,
    pub names: RequestNames,
}

impl std::ops::Deref for SotwRequest {
    type Target = DiscoveryRequest;
    fn deref(&self) -> &DiscoveryRequest {
        &self.req
    }
}

impl From<DiscoveryRequest> for SotwRequest {
    /// Tests and tools: the same request as the server would decode it.
    fn from(mut req: DiscoveryRequest) -> SotwRequest {
        let mut raw = BytesMut::new();
        for n in std::mem::take(&mut req.resource_names) {
            prost::encoding::string::encode(3, &n, &mut raw);
        }
        SotwRequest {
            req,
            names: RequestNames::scan(raw.freeze()).unwrap_or_default(),
        }
    }
}

/// `DiscoveryRequest.resource_names` (field 3) as wire bytes: every element
/// with its key and length, UTF-8 checked once, read as `&str` slices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestNames {
    raw: Bytes,
    count: usize,
}

impl RequestNames {
    /// `raw` holds only field-3 elements; checks each is well-formed UTF-8.
    fn scan(raw: Bytes) -> Result<RequestNames, String> {
        let mut count = 0;
        let mut rest = &raw[..];
        while !rest.is_empty() {
            let (_, _, after) = next_field(rest)?;
            count += 1;
            rest = after;
        }
        RequestNames::checked(raw, count)
    }

    /// `raw` holds `count` well-framed field-3 elements; checks that every
    /// name is UTF-8. When every byte is ASCII (Envoy's resource names, and
    /// lengths under 128) that is one vectorised pass over the run; otherwise
    /// each name is checked on its own.
    fn checked(raw: Bytes, count: usize) -> Result<RequestNames, String> {
        if !raw.is_ascii() {
            let mut rest = &raw[..];
            while !rest.is_empty() {
                let (_, name, after) = next_field(rest)?;
                std::str::from_utf8(name)
                    .map_err(|_| "resource_names: a name is not UTF-8".to_string())?;
                rest = after;
            }
        }
        Ok(RequestNames { raw, count })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The names in request order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        let mut rest = &self.raw[..];
        std::iter::from_fn(move || {
            let (_, name, after) = next_field(rest).ok()?;
            rest = after;
            // Checked in `scan`.
            std::str::from_utf8(name).ok()
        })
    }

    /// A digest of the list as sent (order and count included): its wire
    /// bytes, hashed in one pass. It only tells a stream whether a request
    /// repeats its previous list (an Envoy ACK repeats every name), so it is
    /// a fast non-cryptographic hash (foldhash, ~10 GB/s) with a per-process
    /// random seed, not `StableHash`: SHA-256 over the 50 KB of names of each
    /// ACK was a quarter of the server's CPU in a SotW push to 2,000 proxies.
    pub fn digest(&self) -> (usize, u64) {
        use std::hash::{BuildHasher, Hasher};
        static SEED: std::sync::OnceLock<foldhash::fast::FixedState> = std::sync::OnceLock::new();
        let mut h = SEED
            .get_or_init(|| foldhash::fast::FixedState::with_seed(fastrand::u64(..)))
            .build_hasher();
        h.write(&self.raw);
        (self.count, h.finish())
    }
}

/// One length-delimited field at the start of `b`: (field number, payload,
/// the bytes after it). Errors on any other wire type.
fn next_field(b: &[u8]) -> Result<(u32, &[u8], &[u8]), String> {
    let mut buf = b;
    let key = prost::encoding::decode_varint(&mut buf).map_err(|e| e.to_string())?;
    if key & 7 != WireType::LengthDelimited as u64 {
        return Err("not a length-delimited field".to_string());
    }
    let len = prost::encoding::decode_varint(&mut buf).map_err(|e| e.to_string())?;
    if len > buf.len() as u64 {
        return Err("buffer underflow".to_string());
    }
    let (payload, after) = buf.split_at(len as usize);
    Ok(((key >> 3) as u32, payload, after))
}

impl DecodeRequest for SotwRequest {
    /// Finds the `resource_names` elements without copying them; prost decodes
    /// the rest. Envoy (like prost) writes fields in number order, so the
    /// names are one run and the rest is the bytes before and after it; a
    /// request with names interleaved with other fields is decoded by copying
    /// the other fields apart (correct, only slower).
    fn decode_request(msg: Bytes) -> Result<Self, String> {
        fn decode(b: impl Buf) -> Result<DiscoveryRequest, String> {
            DiscoveryRequest::decode(b).map_err(|e| e.to_string())
        }
        // (start, end) of each run of consecutive field-3 elements.
        let mut runs: Vec<(usize, usize)> = Vec::new();
        let mut count = 0;
        let mut pos = 0;
        while pos < msg.len() {
            let mut buf = &msg[pos..];
            let key = prost::encoding::decode_varint(&mut buf).map_err(|e| e.to_string())?;
            let wire = WireType::try_from(key & 7)
                .map_err(|_| format!("invalid wire type value: {}", key & 7))?;
            let field = key >> 3;
            let header = msg.len() - pos - buf.len();
            let body = match wire {
                WireType::LengthDelimited => {
                    let len =
                        prost::encoding::decode_varint(&mut buf).map_err(|e| e.to_string())?;
                    if len > buf.len() as u64 {
                        return Err("buffer underflow".to_string());
                    }
                    (msg.len() - pos - buf.len() - header) + len as usize
                }
                WireType::Varint => {
                    prost::encoding::decode_varint(&mut buf).map_err(|e| e.to_string())?;
                    msg.len() - pos - buf.len() - header
                }
                WireType::SixtyFourBit => 8,
                WireType::ThirtyTwoBit => 4,
                WireType::StartGroup | WireType::EndGroup => {
                    return Err("groups are not supported".to_string())
                }
            };
            let end = pos + header + body;
            if end > msg.len() {
                return Err("buffer underflow".to_string());
            }
            if field == 3 && wire == WireType::LengthDelimited {
                count += 1;
                match runs.last_mut() {
                    Some(run) if run.1 == pos => run.1 = end,
                    _ => runs.push((pos, end)),
                }
            }
            pos = end;
        }
        let (req, raw) = match runs.as_slice() {
            [] => (decode(msg)?, Bytes::new()),
            [(start, end)] => {
                let rest = msg.slice(..*start).chain(msg.slice(*end..));
                (decode(rest)?, msg.slice(*start..*end))
            }
            _ => {
                let (mut rest, mut names) = (BytesMut::new(), BytesMut::new());
                let mut at = 0;
                for (start, end) in &runs {
                    rest.extend_from_slice(&msg[at..*start]);
                    names.extend_from_slice(&msg[*start..*end]);
                    at = *end;
                }
                rest.extend_from_slice(&msg[at..]);
                (decode(rest)?, names.freeze())
            }
        };
        Ok(SotwRequest {
            req,
            names: RequestNames::checked(raw, count)?,
        })
    }
}

/// The request half of an ADS stream: gRPC length-prefixed messages read from
/// the HTTP/2 body and decoded (`DecodeRequest`). Unlike tonic's `Streaming`, whose
/// buffer keeps the capacity of the largest request seen (an EDS subscription
/// listing every cluster), the buffer is released whenever it runs empty, so
/// an idle stream holds no request bytes.
pub struct Requests<Req> {
    body: tonic::body::Body,
    buf: BytesMut,
    max: usize,
    _req: PhantomData<fn() -> Req>,
}

impl<Req: DecodeRequest> Requests<Req> {
    pub fn new(body: tonic::body::Body, max: usize) -> Self {
        Requests {
            body,
            buf: BytesMut::new(),
            max,
            _req: PhantomData,
        }
    }

    /// The next request; `Ok(None)` when the client half-closed. Cancel-safe:
    /// bytes read before a cancellation stay buffered for the next call.
    pub async fn message(&mut self) -> Result<Option<Req>, Status> {
        loop {
            if let Some(req) = self.decode()? {
                return Ok(Some(req));
            }
            let frame = std::future::poll_fn(|cx| {
                http_body::Body::poll_frame(std::pin::Pin::new(&mut self.body), cx)
            })
            .await;
            match frame {
                None if self.buf.is_empty() => return Ok(None),
                None => {
                    return Err(Status::invalid_argument(
                        "the ADS request stream ended inside a message",
                    ))
                }
                Some(Err(status)) => return Err(status),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    fn decode(&mut self) -> Result<Option<Req>, Status> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            return Err(Status::unimplemented(
                "compressed xDS requests are not supported",
            ));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max {
            return Err(Status::resource_exhausted(format!(
                "xDS request of {len} bytes exceeds the limit of {} bytes",
                self.max
            )));
        }
        if self.buf.len() < 5 + len {
            self.buf.reserve(5 + len - self.buf.len());
            return Ok(None);
        }
        let mut msg = self.buf.split_to(5 + len).freeze();
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        msg.advance(5);
        Req::decode_request(msg)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed xDS request: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse,
    };

    fn res(name: &str) -> Arc<Resource> {
        Resource::encode(
            TypeUrl::Cluster,
            name,
            &Cluster {
                name: name.into(),
                ..Default::default()
            },
        )
    }

    fn request(names: &[&str]) -> DiscoveryRequest {
        use envoy_types::pb::envoy::config::core::v3::Node;
        DiscoveryRequest {
            version_info: "v7".into(),
            node: Some(Node {
                id: "sidecar~10.0.0.1~p.ns~ns.svc.cluster.local".into(),
                ..Default::default()
            }),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            type_url: TypeUrl::Endpoint.as_str().into(),
            response_nonce: "12".into(),
            error_detail: Some(envoy_types::pb::google::rpc::Status {
                code: 13,
                message: "rejected".into(),
                details: vec![],
            }),
            resource_locators: vec![Default::default()],
        }
    }

    /// A SotW request decodes to every field prost would give, with the names
    /// kept as slices of the request bytes; a list that differs in order,
    /// count or content has another digest.
    #[test]
    fn sotw_request_names_are_slices_of_the_wire_bytes() {
        let want = request(&["outbound|80||a.ns.svc.cluster.local", "b", "", "é"]);
        let bytes = Bytes::from(want.encode_to_vec());
        let got = SotwRequest::decode_request(bytes.clone()).unwrap();
        let names: Vec<&str> = got.names.iter().collect();
        assert_eq!(names, want.resource_names);
        assert_eq!(got.names.len(), 4);
        let first = names[0].as_ptr() as usize;
        let range = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
        assert!(range.contains(&first), "not copied out of the request");
        let mut rest = want.clone();
        rest.resource_names.clear();
        assert_eq!(got.req, rest);
        assert_eq!(got, SotwRequest::from(want.clone()));

        let digest = |names: &[&str]| SotwRequest::from(request(names)).names.digest();
        assert_eq!(digest(&["a", "b"]), digest(&["a", "b"]));
        assert_ne!(digest(&["a", "b"]), digest(&["b", "a"]));
        assert_ne!(digest(&["a", "b"]), digest(&["ab"]));
        assert_ne!(digest(&["a"]), digest(&["a", ""]));
        assert_eq!(digest(&[]).0, 0);
    }

    /// Names interleaved with other fields (valid protobuf, though neither
    /// Envoy nor prost writes it) decode the same; malformed input is an
    /// error, not a panic.
    #[test]
    fn sotw_request_interleaved_and_malformed() {
        let mut buf = Vec::new();
        prost::encoding::string::encode(3, &"a".to_string(), &mut buf);
        prost::encoding::string::encode(4, &TypeUrl::Cluster.as_str().to_string(), &mut buf);
        prost::encoding::string::encode(3, &"b".to_string(), &mut buf);
        prost::encoding::string::encode(1, &"v".to_string(), &mut buf);
        let got = SotwRequest::decode_request(Bytes::from(buf.clone())).unwrap();
        let names: Vec<&str> = got.names.iter().collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(got.type_url, TypeUrl::Cluster.as_str());
        assert_eq!(got.version_info, "v");
        assert_eq!(
            got.names.digest(),
            SotwRequest::from(DiscoveryRequest {
                resource_names: vec!["a".into(), "b".into()],
                ..Default::default()
            })
            .names
            .digest()
        );

        let whole = request(&["a", "bb"]).encode_to_vec();
        for cut in 0..whole.len() {
            // Every truncation either decodes (a prefix that ends between
            // fields) or fails; none panics.
            let _ = SotwRequest::decode_request(Bytes::copy_from_slice(&whole[..cut]));
        }
        let mut bad = Vec::new();
        bad.extend([0x1a, 0x02, 0xff, 0xfe]); // field 3, not UTF-8
        let err = SotwRequest::decode_request(Bytes::from(bad)).unwrap_err();
        assert!(err.contains("UTF-8"), "{err}");
        let err = SotwRequest::decode_request(Bytes::from_static(&[0x1a, 0x09, b'a'])).unwrap_err();
        assert!(err.contains("underflow"), "{err}");
    }

    /// Names of 128 bytes or more have a non-ASCII length byte, so the run is
    /// checked name by name: a long valid name decodes, and a bad name after
    /// it is still refused (the one-pass ASCII check does not let it through).
    #[test]
    fn sotw_request_long_names_are_checked_one_by_one() {
        let long = "x".repeat(200);
        let got = SotwRequest::decode_request(Bytes::from(request(&[&long, "b"]).encode_to_vec()))
            .unwrap();
        let names: Vec<&str> = got.names.iter().collect();
        assert_eq!(names, [long.as_str(), "b"]);
        assert_eq!(got.names.len(), 2);
        let mut bad = Vec::new();
        prost::encoding::string::encode(3, &long, &mut bad);
        bad.extend([0x1a, 0x02, 0xc3, 0x28]); // field 3, invalid UTF-8
        let err = SotwRequest::decode_request(Bytes::from(bad)).unwrap_err();
        assert!(err.contains("UTF-8"), "{err}");
    }

    #[test]
    fn sotw_bytes_decode_as_discovery_response() {
        let r = SotwResponse {
            version_info: "v1".into(),
            type_url: TypeUrl::Cluster,
            nonce: "7".into(),
            resources: vec![res("a"), res("b")],
            joined: None,
        };
        let mut buf = Vec::new();
        r.encode(&mut buf);
        assert_eq!(buf.len(), r.encoded_len());
        let d = DiscoveryResponse::decode(&buf[..]).unwrap();
        assert_eq!(d.version_info, "v1");
        assert_eq!(d.nonce, "7");
        assert_eq!(d.type_url, TypeUrl::Cluster.as_str());
        assert_eq!(d.resources.len(), 2);
        let c = Cluster::decode(&d.resources[1].value[..]).unwrap();
        assert_eq!(c.name, "b");
        assert_eq!(d.resources[0].type_url, TypeUrl::Cluster.as_str());
        // Identical to what prost would have produced.
        assert_eq!(d.encode_to_vec(), buf);
    }

    #[test]
    fn frames_are_the_contiguous_message_with_elements_shared() {
        let (a, b) = (res("a"), res("b"));
        let r = DeltaResponse {
            system_version_info: "3".into(),
            type_url: TypeUrl::Cluster,
            nonce: "n".into(),
            resources: vec![a.clone(), b.clone()],
            removed: vec!["gone".into()],
            joined: None,
        };
        let mut contiguous = vec![0u8];
        contiguous.extend((r.encoded_len() as u32).to_be_bytes());
        r.encode(&mut contiguous);
        let chunks = Frames::message(&r);
        let flat: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(flat, contiguous);
        // Each element is the resource's own allocation, not a copy.
        assert_eq!(chunks.len(), 4, "head, a, b, tail");
        assert_eq!(chunks[1].as_ptr(), a.delta_entry().as_ptr());
        assert_eq!(chunks[2].as_ptr(), b.delta_entry().as_ptr());
        // The same response from a joined buffer: one chunk for all elements,
        // the same bytes on the wire.
        let snapshot = crate::xds::ProxySnapshot::new(
            1,
            [
                Arc::new([("a".into(), a), ("b".into(), b)].into_iter().collect()),
                Default::default(),
                Default::default(),
                Default::default(),
                Default::default(),
            ],
        );
        let joined = snapshot.joined(TypeUrl::Cluster, true);
        let j = DeltaResponse {
            joined: Some(joined.clone()),
            ..r
        };
        let chunks = Frames::message(&j);
        assert_eq!(chunks.len(), 3, "head, joined, tail");
        assert_eq!(chunks[1].as_ptr(), joined.as_ptr());
        let flat: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(flat, contiguous);
        // SotW elements joined decode as the same resources.
        let s = SotwResponse {
            version_info: "v".into(),
            type_url: TypeUrl::Cluster,
            nonce: "1".into(),
            resources: j.resources.clone(),
            joined: Some(snapshot.joined(TypeUrl::Cluster, false)),
        };
        let mut buf = Vec::new();
        s.encode(&mut buf);
        assert_eq!(buf.len(), s.encoded_len());
        let d = DiscoveryResponse::decode(&buf[..]).unwrap();
        let names: Vec<String> = d
            .resources
            .iter()
            .map(|a| Cluster::decode(&a.value[..]).unwrap().name)
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn delta_bytes_decode_as_delta_discovery_response() {
        let a = res("a");
        let r = DeltaResponse {
            system_version_info: "3".into(),
            type_url: TypeUrl::Cluster,
            nonce: "n".into(),
            resources: vec![a.clone()],
            removed: vec!["gone".into(), "".into()],
            joined: None,
        };
        let mut buf = Vec::new();
        r.encode(&mut buf);
        assert_eq!(buf.len(), r.encoded_len());
        let d = DeltaDiscoveryResponse::decode(&buf[..]).unwrap();
        assert_eq!(d.system_version_info, "3");
        assert_eq!(d.nonce, "n");
        assert_eq!(d.removed_resources, vec!["gone".to_string(), String::new()]);
        assert_eq!(d.resources.len(), 1);
        assert_eq!(d.resources[0].name, "a");
        assert_eq!(d.resources[0].version, &*a.version);
        let any = d.resources[0].resource.as_ref().unwrap();
        assert_eq!(Cluster::decode(&any.value[..]).unwrap().name, "a");
    }
}
