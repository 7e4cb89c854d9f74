//! The wire format of the ADS server: requests (`Requests`) are gRPC messages
//! decoded with prost; responses are written field by field (`Frames`) so that
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

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use tonic::Status;

use super::resource::{Resource, TypeUrl};

/// A state-of-the-world response (`DiscoveryResponse`) holding shared resources.
#[derive(Debug, Clone)]
pub struct SotwResponse {
    pub version_info: String,
    pub type_url: TypeUrl,
    pub nonce: String,
    pub resources: Vec<Arc<Resource>>,
}

/// An incremental response (`DeltaDiscoveryResponse`) holding shared resources.
#[derive(Debug, Clone)]
pub struct DeltaResponse {
    pub system_version_info: String,
    pub type_url: TypeUrl,
    pub nonce: String,
    pub resources: Vec<Arc<Resource>>,
    pub removed: Vec<Arc<str>>,
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

fn str_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
    }
}

/// A length-delimited field whose payload is `len` bytes; `always` writes it even
/// when empty (repeated elements must be written even if empty).
fn put_bytes(tag: u32, bytes: &[u8], always: bool, buf: &mut impl BufMut) {
    if bytes.is_empty() && !always {
        return;
    }
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

/// Where a response is written: any `BufMut` (copying), or `Frames`, which keeps
/// each shared resource payload as a reference instead of copying it.
pub trait Sink: BufMut {
    fn put_shared(&mut self, bytes: &Bytes) {
        self.put_slice(bytes);
    }
}

impl Sink for Vec<u8> {}

/// A shared payload field: key, length, then the payload itself by reference.
fn put_shared(tag: u32, bytes: &Bytes, buf: &mut impl Sink) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.put_shared(bytes);
}

/// Payloads shorter than this are copied into the framing chunk: a separate
/// chunk would cost more than the copy.
const INLINE_MAX: usize = 512;

/// One gRPC message as a list of chunks for the HTTP/2 body: small framing
/// bytes gathered into owned chunks, and every resource payload of
/// `INLINE_MAX` bytes or more as a clone of its shared `Bytes` (a reference
/// count, no copy). A stream therefore never holds its own copy of a response:
/// memory per proxy does not grow with the size of what it is sent.
#[derive(Debug, Default)]
pub struct Frames {
    small: BytesMut,
    chunks: VecDeque<Bytes>,
}

impl Frames {
    /// The gRPC length-prefixed message (uncompressed) of `resp`.
    pub fn message(resp: &impl EncodeResponse) -> VecDeque<Bytes> {
        let len = resp.encoded_len();
        let mut f = Frames {
            small: BytesMut::with_capacity(256),
            chunks: VecDeque::new(),
        };
        f.small.put_u8(0);
        f.small.put_u32(len as u32);
        resp.encode_frames(&mut f);
        if !f.small.is_empty() {
            let last = f.small.split().freeze();
            f.chunks.push_back(last);
        }
        f.chunks
    }
}

// SAFETY: every method delegates to the inner `BytesMut`, which upholds
// `BufMut`'s contract.
unsafe impl BufMut for Frames {
    fn remaining_mut(&self) -> usize {
        self.small.remaining_mut()
    }
    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller's guarantee is passed on unchanged.
        unsafe { self.small.advance_mut(cnt) }
    }
    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        self.small.chunk_mut()
    }
}

impl Sink for Frames {
    fn put_shared(&mut self, bytes: &Bytes) {
        if bytes.len() < INLINE_MAX {
            self.small.put_slice(bytes);
            return;
        }
        if !self.small.is_empty() {
            let head = self.small.split().freeze();
            self.chunks.push_back(head);
        }
        self.chunks.push_back(bytes.clone());
    }
}

impl SotwResponse {
    /// Exact encoded length (for buffer reservation).
    pub fn encoded_len(&self) -> usize {
        let mut n = str_len(1, &self.version_info);
        for r in &self.resources {
            n += key_len(2) + encoded_len_varint(r.any.len() as u64) + r.any.len();
        }
        n + str_len(4, self.type_url.as_str()) + str_len(5, &self.nonce)
    }

    /// Write the `DiscoveryResponse` fields in field-number order: version_info (1),
    /// resources (2, each the shared `Any` bytes), type_url (4), nonce (5).
    pub fn encode(&self, buf: &mut impl Sink) {
        put_bytes(1, self.version_info.as_bytes(), false, buf);
        for r in &self.resources {
            put_shared(2, &r.any, buf);
        }
        put_bytes(4, self.type_url.as_str().as_bytes(), false, buf);
        put_bytes(5, self.nonce.as_bytes(), false, buf);
    }
}

/// Length of one `envoy.service.discovery.v3.Resource` message body: name (3),
/// version (1), resource (2, the shared `Any` bytes).
fn delta_resource_len(r: &Resource) -> usize {
    str_len(3, &r.name)
        + str_len(1, &r.version)
        + key_len(2)
        + encoded_len_varint(r.any.len() as u64)
        + r.any.len()
}

impl DeltaResponse {
    pub fn encoded_len(&self) -> usize {
        let mut n = str_len(1, &self.system_version_info);
        for r in &self.resources {
            let len = delta_resource_len(r);
            n += key_len(2) + encoded_len_varint(len as u64) + len;
        }
        n += str_len(4, self.type_url.as_str()) + str_len(5, &self.nonce);
        for name in &self.removed {
            n += key_len(6) + encoded_len_varint(name.len() as u64) + name.len();
        }
        n
    }

    /// Write the `DeltaDiscoveryResponse` fields: system_version_info (1),
    /// resources (2: `Resource{version=1, resource=2, name=3}`), type_url (4),
    /// nonce (5), removed_resources (6).
    pub fn encode(&self, buf: &mut impl Sink) {
        put_bytes(1, self.system_version_info.as_bytes(), false, buf);
        for r in &self.resources {
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(delta_resource_len(r) as u64, buf);
            put_bytes(1, r.version.as_bytes(), false, buf);
            put_shared(2, &r.any, buf);
            put_bytes(3, r.name.as_bytes(), false, buf);
        }
        put_bytes(4, self.type_url.as_str().as_bytes(), false, buf);
        put_bytes(5, self.nonce.as_bytes(), false, buf);
        for name in &self.removed {
            put_bytes(6, name.as_bytes(), true, buf);
        }
    }
}

/// Something the codec can write.
pub trait EncodeResponse: Send + 'static {
    fn encoded_len(&self) -> usize;
    fn encode_frames(&self, frames: &mut Frames);
}

impl EncodeResponse for SotwResponse {
    fn encoded_len(&self) -> usize {
        SotwResponse::encoded_len(self)
    }
    fn encode_frames(&self, frames: &mut Frames) {
        self.encode(frames)
    }
}

impl EncodeResponse for DeltaResponse {
    fn encoded_len(&self) -> usize {
        DeltaResponse::encoded_len(self)
    }
    fn encode_frames(&self, frames: &mut Frames) {
        self.encode(frames)
    }
}

/// The request half of an ADS stream: gRPC length-prefixed messages read from
/// the HTTP/2 body and decoded with prost. Unlike tonic's `Streaming`, whose
/// buffer keeps the capacity of the largest request seen (an EDS subscription
/// listing every cluster), the buffer is released whenever it runs empty, so
/// an idle stream holds no request bytes.
pub struct Requests<Req> {
    body: tonic::body::Body,
    buf: BytesMut,
    max: usize,
    _req: PhantomData<fn() -> Req>,
}

impl<Req: prost::Message + Default> Requests<Req> {
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
        let msg = self.buf.split_to(5 + len);
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        Req::decode(&msg[5..])
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
    use prost::Message;

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

    #[test]
    fn sotw_bytes_decode_as_discovery_response() {
        let r = SotwResponse {
            version_info: "v1".into(),
            type_url: TypeUrl::Cluster,
            nonce: "7".into(),
            resources: vec![res("a"), res("b")],
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
    fn frames_are_the_contiguous_message_with_payloads_shared() {
        let big = Resource::encode(
            TypeUrl::Cluster,
            "big",
            &Cluster {
                name: "x".repeat(2 * INLINE_MAX),
                ..Default::default()
            },
        );
        let r = DeltaResponse {
            system_version_info: "3".into(),
            type_url: TypeUrl::Cluster,
            nonce: "n".into(),
            resources: vec![res("a"), big.clone(), res("b")],
            removed: vec!["gone".into()],
        };
        let mut contiguous = vec![0u8];
        contiguous.extend((r.encoded_len() as u32).to_be_bytes());
        r.encode(&mut contiguous);
        let chunks = Frames::message(&r);
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(joined, contiguous);
        // The large payload is the shared allocation itself, not a copy.
        assert!(chunks.iter().any(|c| c.as_ptr() == big.any.as_ptr()));
        assert_eq!(chunks.len(), 3, "head, shared payload, tail");
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
