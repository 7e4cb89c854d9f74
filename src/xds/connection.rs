//! The xDS protocol state of one ADS stream, as plain synchronous code: what the
//! client subscribed to, what it was sent, what it ACKed or NACKed, and which
//! responses a request or a new snapshot calls for. The gRPC plumbing lives in
//! `server.rs`; this module does no IO.
//!
//! Semantics reproduced (Envoy `api-docs/xds_protocol`):
//! - Each type is its own sub-stream; responses within one push go out in
//!   `TypeUrl::ALL` order (SDS first, CDS before EDS, LDS before RDS).
//! - Nonces are per stream. A request whose `response_nonce` is not the latest
//!   nonce sent for its type is stale: SotW ignores it entirely (no reply); Delta
//!   still applies its subscription changes (they are diffs and would otherwise be
//!   lost) but does not treat it as an ACK or NACK.
//! - ACK vs NACK is decided by `error_detail`. A NACK is recorded with Envoy's
//!   text and the rejected content is not resent: the stream remembers what it
//!   sent, and only content that differs from it goes out, so a NACK waits for a
//!   change instead of looping.
//! - SotW: LDS and CDS responses carry the full set (absence deletes); EDS and RDS
//!   carry only requested resources that changed or are newly requested. Names
//!   requested before they exist are remembered and sent when they appear.
//!   Wildcard: the first request of LDS/CDS with no names, or `*` in the names.
//! - Delta: per-resource versions, `removed_resources`, subscribe/unsubscribe
//!   (`*` for wildcard; an empty first subscribe is wildcard for LDS/CDS), and
//!   `initial_resource_versions` on reconnect so only what differs is sent.
//! - Warming: after a CDS response that adds or changes clusters, the EDS of
//!   those clusters is (re)sent in the same push (EDS resource names are the
//!   cluster names, as crossmesh's translation produces them).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use super::codec::{DeltaResponse, SotwRequest, SotwResponse};
use super::resource::{
    changed_names, merge_by_name, same_content, Resource, ResourceMap, StableHash, TypeUrl,
};
use super::source::Update;

/// Which ADS method the stream uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Sotw,
    Delta,
}

/// The last NACK of one type.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Nack {
    pub nonce: String,
    /// The version that was rejected.
    pub version: String,
    /// Envoy's `error_detail.message`.
    pub error: String,
}

/// Per-type state of one stream.
#[derive(Debug, Default)]
pub struct TypeState {
    /// The client has sent at least one request for this type on this stream.
    pub requested: bool,
    pub wildcard: bool,
    /// Explicitly subscribed names (without `*`).
    pub names: Names,
    /// SotW: digest of the last request's `resource_names` as sent (order and
    /// count included), so that an ACK repeating them, which Envoy sends after
    /// every response with every name, costs one hash instead of a set rebuild.
    pub names_digest: Option<(usize, u64)>,
    /// What the client was last sent and is assumed to hold, by name.
    pub sent: Sent,
    pub sent_version: String,
    pub sent_nonce: String,
    pub acked_version: String,
    pub acked_nonce: String,
    /// The latest nonce sent that the client has answered (ACK or NACK): the
    /// response reached it.
    pub answered_nonce: String,
    pub nack: Option<Nack>,
}

impl TypeState {
    fn in_scope(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// One response about to be sent, before it is given its wire form.
#[derive(Debug)]
pub struct Out {
    pub type_url: TypeUrl,
    pub version: String,
    pub nonce: String,
    pub resources: Vec<Arc<Resource>>,
    pub removed: Vec<Arc<str>>,
    /// `resources` is the whole snapshot map: its elements, joined.
    pub joined: Option<bytes::Bytes>,
}

impl Out {
    pub fn sotw(self) -> SotwResponse {
        SotwResponse {
            version_info: self.version,
            type_url: self.type_url,
            nonce: self.nonce,
            resources: self.resources,
            joined: self.joined,
        }
    }

    pub fn delta(self) -> DeltaResponse {
        DeltaResponse {
            system_version_info: self.version,
            type_url: self.type_url,
            nonce: self.nonce,
            resources: self.resources,
            removed: self.removed,
            joined: self.joined,
        }
    }
}

/// What a request did, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// First request for the type, or a request carrying no nonce.
    Request,
    Ack,
    Nack(String),
    /// The nonce is not the latest one sent for the type.
    Stale,
    /// A type crossmesh does not serve.
    UnknownType(String),
}

/// The protocol state of one stream.
#[derive(Debug)]
pub struct StreamState {
    pub mode: Mode,
    pub types: [TypeState; 5],
    /// The snapshot this stream last processed.
    pub current: Update,
    /// This proxy's own secrets (SDS `default` and `ROOTCA`, authenticated
    /// streams only), laid over the snapshot's shared secrets.
    own_secrets: Option<ResourceMap>,
    /// The snapshot's secrets with `own_secrets` laid over them (own wins);
    /// empty while `own_secrets` is `None`.
    secrets: ResourceMap,
    nonce: u64,
}

/// The version of a response: a hash of the names and versions it carries, so
/// that replicas (and restarts) send equal versions for equal content.
fn set_version(resources: &[Arc<Resource>]) -> String {
    let mut h = StableHash::new();
    for r in resources {
        h.write_str(&r.name);
        h.write_str(&r.version);
    }
    h.hex()
}

/// The version of a SotW EDS/RDS response: the digest of everything the
/// client holds of the type after it (`Sent::digest`).
fn held_version(digest: u64) -> String {
    format!("{digest:016x}")
}

/// What a client holds of one type: a shared snapshot map (`base`) plus this
/// stream's differences from it (`diff`: `Some` = holds that resource, `None` =
/// does not hold the base's entry). Once a proxy holds what the snapshot says,
/// its state is one `Arc` shared with every other proxy of that snapshot, not
/// one entry per resource: with 1,000 services and 2,000 proxies that was
/// 2,000 x 2,000 map entries.
#[derive(Debug, Default)]
pub struct Sent {
    base: Option<ResourceMap>,
    diff: BTreeMap<Arc<str>, Option<Arc<Resource>>>,
    len: usize,
    /// Do not try to rebase again before `diff` grows past this.
    rebase_at: usize,
    /// XOR of `Resource::digest` over everything held: independent of order
    /// and of how `base`/`diff` split it, updated in O(1) per change.
    digest: u64,
}

/// A stream's explicitly subscribed names of one type: the keys of a shared
/// snapshot map (`base`) plus this stream's differences from them (`diff`:
/// `true` = subscribed though not a key of `base`, `false` = a key of `base`
/// not subscribed). An Envoy subscribes to the EDS of every cluster it got, i.e.
/// to the keys of the EDS map its class shares, so once re-expressed against
/// that map (`rebase`) its subscription is one `Arc` shared with every proxy of
/// the snapshot instead of a set of its own (with 1,000 services, ~25 KB of
/// B-tree nodes per stream).
#[derive(Debug, Default)]
pub struct Names {
    base: Option<ResourceMap>,
    diff: BTreeMap<Arc<str>, bool>,
    len: usize,
    /// Do not try to rebase again before `diff` grows past this.
    rebase_at: usize,
}

impl Names {
    fn in_base(&self, name: &str) -> Option<&Arc<str>> {
        self.base.as_ref()?.get_key_value(name).map(|(k, _)| k)
    }

    pub fn contains(&self, name: &str) -> bool {
        match self.diff.get(name) {
            Some(d) => *d,
            None => self.in_base(name).is_some(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, name: Arc<str>) {
        if self.contains(&name) {
            return;
        }
        self.len += 1;
        if self.in_base(&name).is_some() {
            self.diff.remove(&name);
        } else {
            self.diff.insert(name, true);
        }
    }

    pub fn remove(&mut self, name: &str) {
        if !self.contains(name) {
            return;
        }
        self.len -= 1;
        match self.in_base(name).cloned() {
            Some(k) => {
                self.diff.insert(k, false);
            }
            None => {
                self.diff.remove(name);
            }
        }
    }

    /// Every name, in order.
    pub fn keys(&self) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = Vec::with_capacity(self.len);
        let base = self.base.as_deref().into_iter().flatten();
        merge_by_name(base, self.diff.iter(), |k, b, d| match (b, d) {
            (_, Some(true)) | (Some(_), None) => out.push(k.clone()),
            _ => {}
        });
        out
    }

    /// Exactly `names`, expressed against `map`.
    pub fn set(&mut self, names: BTreeSet<Arc<str>>, map: &ResourceMap) {
        *self = Names {
            len: names.len(),
            diff: names.into_iter().map(|n| (n, true)).collect(),
            ..Names::default()
        };
        self.rebase(map);
    }

    /// Re-express the set against `map`'s keys when that makes `diff`
    /// smaller; gated like `Sent::rebase`.
    pub fn rebase(&mut self, map: &ResourceMap) {
        if self.diff.len() < REBASE_MIN.max(self.rebase_at) {
            return;
        }
        let held = self.keys();
        let mut diff = BTreeMap::new();
        merge_by_name(held.iter().map(|k| (k, ())), map.iter(), |k, h, m| {
            match (h, m) {
                (Some(_), Some(_)) => {}
                (Some(_), None) => {
                    diff.insert(k.clone(), true);
                }
                (None, Some(_)) => {
                    diff.insert(k.clone(), false);
                }
                (None, None) => {}
            }
        });
        if diff.len() < self.diff.len() {
            self.base = Some(map.clone());
            self.diff = diff;
            self.rebase_at = 0;
        } else {
            self.rebase_at = self.diff.len() * 2;
        }
    }
}

/// Responses with fewer resources than this go out one element per chunk; a
/// joined buffer is worth its one-off copy only for large full pushes.
const JOIN_MIN: usize = 16;

/// `diff` sizes below this are never worth a rebase.
const REBASE_MIN: usize = 64;

impl Sent {
    pub fn get(&self, name: &str) -> Option<&Arc<Resource>> {
        match self.diff.get(name) {
            Some(d) => d.as_ref(),
            None => self.base.as_ref()?.get(name),
        }
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn base_get(&self, name: &str) -> Option<(&Arc<str>, &Arc<Resource>)> {
        self.base.as_ref()?.get_key_value(name)
    }

    pub fn insert(&mut self, name: Arc<str>, r: Arc<Resource>) {
        match self.get(&name) {
            Some(old) => self.digest ^= old.digest,
            None => self.len += 1,
        }
        self.digest ^= r.digest;
        if self
            .base_get(&name)
            .is_some_and(|(_, b)| b.version == r.version)
        {
            self.diff.remove(&name);
        } else {
            self.diff.insert(name, Some(r));
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<Arc<Resource>> {
        let old = self.get(name).cloned()?;
        self.len -= 1;
        self.digest ^= old.digest;
        match self.base_get(name).map(|(k, _)| k.clone()) {
            Some(k) => {
                self.diff.insert(k, None);
            }
            None => {
                self.diff.remove(name);
            }
        }
        Some(old)
    }

    /// Every name held, in order.
    pub fn keys(&self) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = Vec::with_capacity(self.len);
        if let Some(b) = &self.base {
            out.extend(
                b.keys()
                    .filter(|k| !matches!(self.diff.get(*k), Some(None)))
                    .cloned(),
            );
        }
        out.extend(
            self.diff
                .iter()
                .filter(|(k, v)| v.is_some() && self.base_get(k).is_none())
                .map(|(k, _)| k.clone()),
        );
        out.sort();
        out
    }

    /// Every resource held, by name.
    pub fn values(&self) -> Vec<Arc<Resource>> {
        self.keys()
            .iter()
            .filter_map(|k| self.get(k).cloned())
            .collect()
    }

    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        for k in self.keys() {
            if !keep(&k) {
                self.remove(&k);
            }
        }
    }

    /// Replace everything with exactly `desired`.
    pub fn set_all(&mut self, desired: &[Arc<Resource>]) {
        *self = Sent::default();
        for r in desired {
            self.insert(r.name.clone(), r.clone());
        }
    }

    /// Re-express the state against `map` when that makes `diff` smaller (the
    /// usual case right after a response: the client now holds the snapshot).
    /// Two merge passes in name order (what is held, then held against `map`),
    /// no lookups.
    pub fn rebase(&mut self, map: &ResourceMap) {
        if self.diff.len() < REBASE_MIN.max(self.rebase_at) {
            return;
        }
        let mut held: Vec<(&Arc<str>, &Arc<Resource>)> = Vec::with_capacity(self.len);
        let base = self.base.as_deref().into_iter().flatten();
        merge_by_name(base, self.diff.iter(), |k, b, d| match (b, d) {
            (_, Some(Some(r))) | (Some(r), None) => held.push((k, r)),
            _ => {}
        });
        let mut diff = BTreeMap::new();
        merge_by_name(held.into_iter(), map.iter(), |k, h, m| match (h, m) {
            (Some(h), Some(m)) if same_content(h, m) => {}
            (Some(h), _) => {
                diff.insert(k.clone(), Some(h.clone()));
            }
            (None, Some(_)) => {
                diff.insert(k.clone(), None);
            }
            (None, None) => {}
        });
        if diff.len() < self.diff.len() {
            self.base = Some(map.clone());
            self.diff = diff;
            self.rebase_at = 0;
        } else {
            self.rebase_at = self.diff.len() * 2;
        }
    }
}

/// `StreamState::map`, on its fields (for callers holding another field).
fn map_of<'a>(
    current: &'a Update,
    own_secrets: bool,
    secrets: &'a ResourceMap,
    t: TypeUrl,
) -> &'a ResourceMap {
    if t == TypeUrl::Secret && own_secrets {
        secrets
    } else {
        current.snapshot.get(t)
    }
}

/// `name` as the snapshot's own `Arc` when the snapshot has it: thousands of
/// proxies subscribing to the same names then share one allocation per name.
fn intern(map: &BTreeMap<Arc<str>, Arc<Resource>>, name: &str) -> Arc<str> {
    match map.get_key_value(name) {
        Some((k, _)) => k.clone(),
        None => Arc::from(name),
    }
}

/// Names to examine for one type.
enum Candidates<'a> {
    /// Everything in scope, plus everything sent (to find removals).
    All,
    /// Only these (from the push's change set), plus forced names.
    Some(&'a BTreeSet<Arc<str>>),
}

impl StreamState {
    pub fn new(mode: Mode, first: Update) -> StreamState {
        StreamState {
            mode,
            types: Default::default(),
            current: first,
            own_secrets: None,
            secrets: Arc::default(),
            nonce: 0,
        }
    }

    /// What the client should hold of `t` now: the snapshot's map, except for
    /// secrets on a stream with its own, where it is the overlay.
    fn map(&self, t: TypeUrl) -> &ResourceMap {
        map_of(&self.current, self.own_secrets.is_some(), &self.secrets, t)
    }

    fn overlay_secrets(&mut self) {
        let Some(own) = &self.own_secrets else {
            return;
        };
        let mut m: BTreeMap<Arc<str>, Arc<Resource>> =
            (**self.current.snapshot.get(TypeUrl::Secret)).clone();
        for (k, v) in own.iter() {
            m.insert(k.clone(), v.clone());
        }
        self.secrets = Arc::new(m);
    }

    /// Replace this stream's own secrets (a new or renewed certificate); returns
    /// the SDS response due, if the client subscribed to any name that changed.
    pub fn set_own_secrets(&mut self, own: ResourceMap) -> Vec<Out> {
        let before = self.map(TypeUrl::Secret).clone();
        self.own_secrets = Some(own);
        self.overlay_secrets();
        if !self.types[TypeUrl::Secret.index()].requested {
            return Vec::new();
        }
        let changed = changed_names(&before, &self.secrets);
        let none = BTreeSet::new();
        self.compute(TypeUrl::Secret, Candidates::Some(&changed), &none, false)
            .map(|(o, _)| vec![o])
            .unwrap_or_default()
    }

    /// Replace one of this stream's own secrets (a new trust bundle as
    /// `ROOTCA`), keeping the others; returns the SDS response due. Nothing on
    /// a stream without own secrets.
    pub fn replace_own_secret(&mut self, name: &str, r: Arc<Resource>) -> Vec<Out> {
        let Some(own) = &self.own_secrets else {
            return Vec::new();
        };
        let mut m = (**own).clone();
        m.insert(intern(own, name), r);
        self.set_own_secrets(Arc::new(m))
    }

    /// This stream's own secrets, if it has any.
    pub fn own_secrets(&self) -> Option<&ResourceMap> {
        self.own_secrets.as_ref()
    }

    /// Whether the client has answered the latest response of every type, i.e.
    /// nothing this stream sent is still on its way.
    pub fn caught_up(&self) -> bool {
        self.types
            .iter()
            .all(|t| t.sent_nonce.is_empty() || t.answered_nonce == t.sent_nonce)
    }

    pub fn seq(&self) -> u64 {
        self.current.snapshot.seq
    }

    fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        self.nonce.to_string()
    }

    /// Record ACK/NACK for `t` given the request's nonce, version and error.
    fn ack(&mut self, t: TypeUrl, nonce: &str, version: &str, error: Option<String>) -> Ack {
        let ts = &mut self.types[t.index()];
        if nonce.is_empty() || ts.sent_nonce.is_empty() {
            // A first request, a spontaneous Delta request, or a client that
            // reconnected and still quotes a nonce of its previous stream.
            return Ack::Request;
        }
        if nonce != ts.sent_nonce {
            return Ack::Stale;
        }
        ts.answered_nonce = nonce.to_string();
        match error {
            Some(error) => {
                ts.nack = Some(Nack {
                    nonce: nonce.to_string(),
                    version: ts.sent_version.clone(),
                    error: error.clone(),
                });
                Ack::Nack(error)
            }
            None => {
                ts.acked_version = version.to_string();
                ts.acked_nonce = nonce.to_string();
                ts.nack = None;
                Ack::Ack
            }
        }
    }

    /// Handle a state-of-the-world request; returns what it did and the response,
    /// if one is due.
    pub fn sotw_request(&mut self, req: &SotwRequest) -> (Ack, Vec<Out>) {
        let Some(t) = TypeUrl::parse(&req.type_url) else {
            return (Ack::UnknownType(req.type_url.clone()), Vec::new());
        };
        let error = req.error_detail.as_ref().map(|s| s.message.clone());
        let ack = self.ack(t, &req.response_nonce, &req.version_info, error);
        if ack == Ack::Stale {
            return (ack, Vec::new());
        }
        let digest = req.names.digest();
        let ts = &mut self.types[t.index()];
        if ts.requested && ts.names_digest == Some(digest) {
            // The same subscription as last time: nothing to (re)send.
            return (ack, Vec::new());
        }
        ts.names_digest = Some(digest);
        let first = !ts.requested;
        ts.requested = true;
        let star = req.names.iter().any(|n| n == "*");
        let was_wildcard = ts.wildcard;
        ts.wildcard = star
            || (req.names.is_empty()
                && t.sotw_implicit_delete()
                && (first || (was_wildcard && ts.names.is_empty())));
        let known = map_of(&self.current, self.own_secrets.is_some(), &self.secrets, t);
        let names: BTreeSet<Arc<str>> = req
            .names
            .iter()
            .filter(|n| *n != "*")
            .map(|n| intern(known, n))
            .collect();
        // "The server must resend any newly requested resources, even if it
        // previously sent those resources" (xds_protocol, resource hints).
        let mut forced: BTreeSet<Arc<str>> = names
            .iter()
            .filter(|n| !ts.names.contains(n))
            .cloned()
            .collect();
        if ts.wildcard && !was_wildcard {
            forced.extend(self.map(t).keys().cloned());
        }
        let map = self.map(t).clone();
        let ts = &mut self.types[t.index()];
        ts.names.set(names, &map);
        // Unsubscribed names: the client dropped them, forget we sent them.
        if !ts.wildcard {
            let names = &ts.names;
            ts.sent.retain(|n| names.contains(n));
        }
        let reconnect = first && req.response_nonce.is_empty() && !req.version_info.is_empty();
        let out = if reconnect && self.holds_already(t, &req.version_info) {
            Vec::new()
        } else if first || !forced.is_empty() {
            self.respond(t, &forced, first && t.sotw_implicit_delete())
        } else {
            Vec::new()
        };
        (ack, out)
    }

    /// SotW reconnect: the first request of a type on a new stream carries the
    /// `version_info` the client last accepted (of this or another process).
    /// When it equals the version of everything the client should now hold of
    /// `t` (versions are content hashes, the same in every process), the
    /// client holds exactly that: it is recorded as sent and nothing is sent,
    /// as go-control-plane's SotW cache answers a request whose version is
    /// current (LDS/CDS versions cover the full set each response carries;
    /// EDS/RDS versions everything held after the response, `held_version`).
    /// Otherwise everything in scope is sent as before.
    fn holds_already(&mut self, t: TypeUrl, version: &str) -> bool {
        let map = self.map(t).clone();
        let ts = &mut self.types[t.index()];
        let held: Vec<Arc<Resource>> = if ts.wildcard {
            map.values().cloned().collect()
        } else {
            ts.names
                .keys()
                .iter()
                .filter_map(|n| map.get(n).cloned())
                .collect()
        };
        let current = if t.sotw_implicit_delete() {
            set_version(&held)
        } else {
            held_version(held.iter().fold(0, |d, r| d ^ r.digest))
        };
        if held.is_empty() || current != version {
            return false;
        }
        ts.sent.set_all(&held);
        ts.sent.rebase(&map);
        ts.sent_version = version.to_string();
        ts.acked_version = version.to_string();
        true
    }

    /// Handle an incremental request.
    pub fn delta_request(&mut self, req: &DeltaDiscoveryRequest) -> (Ack, Vec<Out>) {
        let Some(t) = TypeUrl::parse(&req.type_url) else {
            return (Ack::UnknownType(req.type_url.clone()), Vec::new());
        };
        let error = req.error_detail.as_ref().map(|s| s.message.clone());
        let ack = self.ack(t, &req.response_nonce, "", error);
        let map = self.map(t).clone();
        let ts = &mut self.types[t.index()];
        if matches!(ack, Ack::Ack) {
            ts.acked_version = ts.sent_version.clone();
        }
        let first = !ts.requested;
        ts.requested = true;
        let mut forced: BTreeSet<Arc<str>> = BTreeSet::new();
        if first {
            // An empty first subscribe is wildcard for LDS/CDS (legacy wildcard).
            ts.wildcard = req.resource_names_subscribe.is_empty() && t.sotw_implicit_delete();
            // Reconnect: the client says what it holds; record matching content as
            // sent and anything we do not have as to-be-removed.
            for (name, version) in &req.initial_resource_versions {
                let name: Arc<str> = Arc::from(name.as_str());
                match map.get(&name) {
                    Some(r) if *r.version == **version => {
                        ts.sent.insert(name, r.clone());
                    }
                    Some(_) => {}
                    None => {
                        ts.sent.insert(
                            name.clone(),
                            Arc::new(Resource::new(name, Arc::from(version.as_str()), &[])),
                        );
                    }
                }
            }
        }
        for n in &req.resource_names_subscribe {
            if n == "*" {
                if !ts.wildcard {
                    ts.wildcard = true;
                    forced.extend(map.keys().cloned());
                }
                continue;
            }
            let name = intern(&map, n);
            ts.names.insert(name.clone());
            // "The server must still provide those resources" even if it believes
            // the client has them, except what the client just declared it holds.
            let known = first && req.initial_resource_versions.contains_key(n);
            if !known {
                forced.insert(name);
            }
        }
        for n in &req.resource_names_unsubscribe {
            if n == "*" {
                ts.wildcard = false;
            } else {
                ts.names.remove(n.as_str());
            }
        }
        ts.names.rebase(&map);
        if !req.resource_names_unsubscribe.is_empty() {
            let (wildcard, names) = (ts.wildcard, &ts.names);
            ts.sent.retain(|n| wildcard || names.contains(n));
        }
        let always = first && ts.wildcard;
        let out = if first || !forced.is_empty() {
            self.respond(t, &forced, always)
        } else {
            Vec::new()
        };
        (ack, out)
    }

    /// A new snapshot arrived: the responses it calls for, in push order, with
    /// the EDS of added or changed clusters resent after CDS (warming).
    pub fn update(&mut self, update: Update) -> Vec<Out> {
        let last = self.seq();
        let previous = std::mem::replace(&mut self.current, update).snapshot;
        let previous_secrets = self.secrets.clone();
        let (was, now) = (
            previous.get(TypeUrl::Secret),
            self.current.snapshot.get(TypeUrl::Secret),
        );
        // Rebuild the overlay only when the shared secrets changed: a push that
        // touches no secret costs an authenticated stream no allocation.
        if !(Arc::ptr_eq(was, now) || (was.is_empty() && now.is_empty())) {
            self.overlay_secrets();
        }
        let current = self.current.clone();
        let mut out = Vec::new();
        let mut eds_forced = BTreeSet::new();
        for t in TypeUrl::ALL {
            if !self.types[t.index()].requested {
                continue;
            }
            if t == TypeUrl::Secret && self.own_secrets.is_some() {
                let changed = changed_names(&previous_secrets, &self.secrets);
                let none = BTreeSet::new();
                if let Some((o, _)) = self.compute(t, Candidates::Some(&changed), &none, false) {
                    out.push(o);
                }
                continue;
            }
            // The push's own change set when this stream processed the push
            // before it; otherwise (it skipped snapshots while it had responses
            // unanswered) the difference from the snapshot it last processed.
            // Names outside either are unchanged, so the client already holds
            // what it should of them.
            let diffed;
            let cands = match current.changed_since(last, t) {
                Some(names) => Candidates::Some(names),
                None => {
                    diffed = changed_names(previous.get(t), current.snapshot.get(t));
                    Candidates::Some(&diffed)
                }
            };
            let forced = if t == TypeUrl::Endpoint {
                std::mem::take(&mut eds_forced)
            } else {
                BTreeSet::new()
            };
            if let Some((o, changed)) = self.compute(t, cands, &forced, false) {
                if t == TypeUrl::Cluster {
                    eds_forced = self.eds_to_rewarm(changed);
                }
                out.push(o);
            }
        }
        out
    }

    /// Respond for one type and, after a CDS response that added or changed
    /// clusters, with those clusters' EDS.
    fn respond(&mut self, t: TypeUrl, forced: &BTreeSet<Arc<str>>, always: bool) -> Vec<Out> {
        let mut out = Vec::new();
        if let Some((o, changed)) = self.compute(t, Candidates::All, forced, always) {
            out.push(o);
            if t == TypeUrl::Cluster {
                let eds = self.eds_to_rewarm(changed);
                if !eds.is_empty() {
                    let none = BTreeSet::new();
                    if let Some((o, _)) =
                        self.compute(TypeUrl::Endpoint, Candidates::Some(&none), &eds, false)
                    {
                        out.push(o);
                    }
                }
            }
        }
        out
    }

    /// The EDS names to resend because their clusters were just added or changed:
    /// a changed cluster is warmed again and needs its ClusterLoadAssignment.
    fn eds_to_rewarm(&self, clusters: BTreeSet<Arc<str>>) -> BTreeSet<Arc<str>> {
        let eds = &self.types[TypeUrl::Endpoint.index()];
        if !eds.requested {
            return BTreeSet::new();
        }
        clusters.into_iter().filter(|n| eds.in_scope(n)).collect()
    }

    /// Compute the response for `t`, if one is due, and record it as sent.
    /// Returns it with the names whose content the client did not have yet.
    fn compute(
        &mut self,
        t: TypeUrl,
        cands: Candidates<'_>,
        forced: &BTreeSet<Arc<str>>,
        always: bool,
    ) -> Option<(Out, BTreeSet<Arc<str>>)> {
        let map = self.map(t).clone();
        let mode = self.mode;
        let ts = &mut self.types[t.index()];
        let mut changed = BTreeSet::new();

        if mode == Mode::Sotw && t.sotw_implicit_delete() {
            // Full set: LDS/CDS in state of the world.
            if let Candidates::Some(set) = cands {
                let relevant = set
                    .iter()
                    .any(|n| ts.in_scope(n) || ts.sent.contains_key(n));
                if !relevant && forced.is_empty() && !always {
                    return None;
                }
            }
            let desired: Vec<Arc<Resource>> = if ts.wildcard {
                map.values().cloned().collect()
            } else {
                ts.names
                    .keys()
                    .iter()
                    .filter_map(|n| map.get(n).cloned())
                    .collect()
            };
            let version = set_version(&desired);
            if version == ts.sent_version && forced.is_empty() && !always {
                return None;
            }
            for r in &desired {
                if ts.sent.get(&r.name).is_none_or(|s| s.version != r.version) {
                    changed.insert(r.name.clone());
                }
            }
            ts.sent.set_all(&desired);
            ts.sent.rebase(&map);
            ts.sent_version = version.clone();
            let nonce = self.next_nonce();
            self.types[t.index()].sent_nonce = nonce.clone();
            let joined = self.joined(t, &desired);
            let out = Out {
                type_url: t,
                version,
                nonce,
                resources: desired,
                removed: Vec::new(),
                joined,
            };
            return Some((out, changed));
        }

        // Per resource: SotW EDS/RDS and every Delta type.
        let mut names: BTreeSet<Arc<str>> = BTreeSet::new();
        match cands {
            Candidates::All => {
                if ts.wildcard {
                    names.extend(map.keys().cloned());
                } else {
                    names.extend(ts.names.keys());
                }
                names.extend(ts.sent.keys());
            }
            Candidates::Some(set) => {
                names.extend(
                    set.iter()
                        .filter(|n| ts.in_scope(n) || ts.sent.contains_key(*n))
                        .cloned(),
                );
            }
        }
        names.extend(forced.iter().cloned());
        let mut send = Vec::new();
        let mut removed = Vec::new();
        for name in names {
            let in_scope = ts.in_scope(&name);
            match map.get(&name) {
                Some(r) if in_scope => {
                    let differs = ts.sent.get(&name).is_none_or(|s| s.version != r.version);
                    if differs || forced.contains(&name) {
                        send.push(r.clone());
                        ts.sent.insert(name.clone(), r.clone());
                        if differs {
                            changed.insert(name);
                        }
                    }
                }
                Some(_) => {
                    ts.sent.remove(&name);
                }
                None => {
                    // Gone. Delta says so; SotW EDS/RDS cannot (parents drop them).
                    if ts.sent.remove(&name).is_some() && in_scope && mode == Mode::Delta {
                        removed.push(name);
                    }
                }
            }
        }
        ts.sent.rebase(&map);
        if send.is_empty() && removed.is_empty() && !always {
            return None;
        }
        // Derived from content, not from the push number, so replicas and
        // restarts send equal versions for equal content: for Delta, what
        // the response holds; for SotW EDS/RDS, everything the client holds
        // after it, so that the version_info it quotes on reconnect names
        // its whole state (`holds_already`).
        let version = match mode {
            Mode::Sotw => held_version(ts.sent.digest),
            Mode::Delta => set_version(&send),
        };
        ts.sent_version = version.clone();
        let nonce = self.next_nonce();
        self.types[t.index()].sent_nonce = nonce.clone();
        let joined = self.joined(t, &send);
        let out = Out {
            type_url: t,
            version,
            nonce,
            resources: send,
            removed,
            joined,
        };
        Some((out, changed))
    }

    /// When `send` is the whole current map of `t` (a full push: first
    /// subscription, reconnect, wildcard), the snapshot's joined elements, so
    /// the response goes out as one shared buffer. `send` is in name order like
    /// the map and holds only map entries, so equal lengths mean equal lists.
    fn joined(&self, t: TypeUrl, send: &[Arc<Resource>]) -> Option<bytes::Bytes> {
        let snapshot = &self.current.snapshot;
        let map = snapshot.get(t);
        if (t == TypeUrl::Secret && self.own_secrets.is_some())
            || send.len() < JOIN_MIN
            || send.len() != map.len()
        {
            return None;
        }
        debug_assert!(send
            .iter()
            .zip(map.values())
            .all(|(a, b)| Arc::ptr_eq(a, b)));
        Some(snapshot.joined(t, self.mode == Mode::Delta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(name: &str, version: u32) -> Arc<Resource> {
        Arc::new(Resource::new(
            Arc::from(name),
            Arc::from(version.to_string().as_str()),
            &[version as u8],
        ))
    }

    /// `Sent` behaves exactly like a plain map whatever its base, through a long
    /// pseudo-random sequence of inserts, removes, retains and rebases.
    #[test]
    fn sent_matches_a_plain_map() {
        let mut model: BTreeMap<Arc<str>, Arc<Resource>> = BTreeMap::new();
        let mut sent = Sent::default();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let names: Vec<String> = (0..300).map(|i| format!("r{i}")).collect();
        let mut snapshot: ResourceMap = Arc::default();
        for step in 0..20_000u32 {
            let name = &names[(next() % names.len() as u64) as usize];
            match next() % 10 {
                0..=4 => {
                    let r = res(name, (next() % 3) as u32);
                    model.insert(r.name.clone(), r.clone());
                    sent.insert(r.name.clone(), r);
                }
                5..=6 => {
                    assert_eq!(
                        sent.remove(name).map(|r| r.version.clone()),
                        model.remove(name.as_str()).map(|r| r.version.clone())
                    );
                }
                7 => {
                    let m = (next() % 5) as usize;
                    let keep = |n: &str| n.len() % 5 != m;
                    model.retain(|n, _| keep(n));
                    sent.retain(keep);
                }
                8 => {
                    // A new snapshot close to what the client holds.
                    let mut map = BTreeMap::new();
                    for (k, v) in &model {
                        if next() % 8 != 0 {
                            map.insert(k.clone(), v.clone());
                        }
                    }
                    snapshot = Arc::new(map);
                    sent.rebase(&snapshot);
                }
                _ => sent.rebase(&snapshot),
            }
            assert_eq!(sent.len(), model.len(), "step {step}");
            let digest = model.values().fold(0, |d, r| d ^ r.digest);
            assert_eq!(sent.digest, digest, "step {step}");
            if step % 97 == 0 {
                let keys: Vec<Arc<str>> = model.keys().cloned().collect();
                assert_eq!(sent.keys(), keys, "step {step}");
                for (k, v) in &model {
                    assert_eq!(sent.get(k).map(|r| &r.version), Some(&v.version));
                }
            }
        }
    }

    /// `Names` behaves exactly like a plain set whatever its base, through a
    /// long pseudo-random sequence of inserts, removes, replacements and
    /// rebases onto maps close to it.
    #[test]
    fn names_match_a_plain_set() {
        let mut model: BTreeSet<Arc<str>> = BTreeSet::new();
        let mut names = Names::default();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let all: Vec<Arc<str>> = (0..300).map(|i| Arc::from(format!("c{i}"))).collect();
        let mut snapshot: ResourceMap = Arc::default();
        for step in 0..20_000u32 {
            let name = &all[(next() % all.len() as u64) as usize];
            match next() % 12 {
                0..=4 => {
                    model.insert(name.clone());
                    names.insert(name.clone());
                }
                5..=7 => {
                    model.remove(name);
                    names.remove(name);
                }
                8 => {
                    // A map close to the set (as a class's EDS map is to
                    // an Envoy's EDS subscription).
                    let mut map = BTreeMap::new();
                    for n in all.iter() {
                        if model.contains(n) != (next() % 16 == 0) {
                            map.insert(n.clone(), res(n, 1));
                        }
                    }
                    snapshot = Arc::new(map);
                    names.rebase(&snapshot);
                }
                9 if step % 50 == 0 => {
                    let set: BTreeSet<Arc<str>> =
                        all.iter().filter(|_| next() % 3 == 0).cloned().collect();
                    model = set.clone();
                    names.set(set, &snapshot);
                }
                _ => names.rebase(&snapshot),
            }
            assert_eq!(names.len(), model.len(), "step {step}");
            assert_eq!(names.contains(name), model.contains(name), "step {step}");
            if step % 97 == 0 {
                let keys: Vec<Arc<str>> = model.iter().cloned().collect();
                assert_eq!(names.keys(), keys, "step {step}");
            }
        }
    }

    /// An Envoy subscribing to the EDS of every cluster its snapshot has
    /// holds no set of its own: its subscription is the snapshot's EDS map.
    #[test]
    fn a_delta_eds_subscription_to_the_whole_map_shares_the_snapshot() {
        let eds: BTreeMap<Arc<str>, Arc<Resource>> = (0..200)
            .map(|i| {
                let r = res(&format!("outbound|80||s{i}.default.svc.cluster.local"), 1);
                (r.name.clone(), r)
            })
            .collect();
        let mut resources: [ResourceMap; 5] = Default::default();
        resources[TypeUrl::Endpoint.index()] = Arc::new(eds);
        let snapshot = Arc::new(super::super::ProxySnapshot::new(1, resources));
        let mut st = StreamState::new(
            Mode::Delta,
            Update {
                snapshot: snapshot.clone(),
                changes: None,
                triggered: None,
            },
        );
        let map = snapshot.get(TypeUrl::Endpoint).clone();
        let (_, out) = st.delta_request(&DeltaDiscoveryRequest {
            type_url: TypeUrl::Endpoint.as_str().to_string(),
            resource_names_subscribe: map.keys().map(|k| k.to_string()).collect(),
            ..Default::default()
        });
        assert_eq!(out[0].resources.len(), 200);
        let names = &st.types[TypeUrl::Endpoint.index()].names;
        assert_eq!(names.len(), 200);
        assert!(names.base.as_ref().is_some_and(|b| Arc::ptr_eq(b, &map)));
        assert!(
            names.diff.is_empty(),
            "{} names of its own",
            names.diff.len()
        );
        // One unsubscribe is one entry of its own, not a copy of the set.
        let first = map.keys().next().map(|k| k.to_string()).unwrap_or_default();
        st.delta_request(&DeltaDiscoveryRequest {
            type_url: TypeUrl::Endpoint.as_str().to_string(),
            resource_names_unsubscribe: vec![first.clone()],
            response_nonce: out[0].nonce.clone(),
            ..Default::default()
        });
        let names = &st.types[TypeUrl::Endpoint.index()].names;
        assert_eq!(names.len(), 199);
        assert!(!names.contains(&first));
        assert_eq!(names.diff.len(), 1);
    }

    fn secret_request(names: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: TypeUrl::Secret.as_str().to_string(),
            resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.to_string(),
            ..Default::default()
        }
    }

    fn own(default_version: u32) -> ResourceMap {
        let mut m = BTreeMap::new();
        m.insert(Arc::from("default"), res("default", default_version));
        m.insert(Arc::from("ROOTCA"), res("ROOTCA", 7));
        Arc::new(m)
    }

    /// A stream's own secrets are served by name on top of the shared snapshot,
    /// a renewal sends only the renewed secret, and a snapshot change leaves them
    /// alone.
    #[test]
    fn own_secrets_overlay_the_snapshot() {
        let mut shared = BTreeMap::new();
        shared.insert(
            Arc::from("kubernetes://tls-a"),
            res("kubernetes://tls-a", 1),
        );
        let mut maps: [ResourceMap; 5] = Default::default();
        maps[TypeUrl::Secret.index()] = Arc::new(shared);
        let first = Update {
            snapshot: Arc::new(super::super::ProxySnapshot::new(1, maps.clone())),
            ..Default::default()
        };
        let mut st = StreamState::new(Mode::Delta, first);
        assert!(
            st.set_own_secrets(own(1)).is_empty(),
            "nothing subscribed yet"
        );
        let (_, out) = st.delta_request(&secret_request(&["default", "ROOTCA"], ""));
        let names: Vec<&str> = out[0].resources.iter().map(|r| &*r.name).collect();
        assert_eq!(names, ["ROOTCA", "default"]);
        let nonce = out[0].nonce.clone();
        st.delta_request(&secret_request(&[], &nonce));
        // Renewal: only `default`, with the new content.
        let out = st.set_own_secrets(own(2));
        assert_eq!(out.len(), 1);
        let names: Vec<(&str, &str)> = out[0]
            .resources
            .iter()
            .map(|r| (&*r.name, &*r.version))
            .collect();
        assert_eq!(names, [("default", "2")]);
        // A new snapshot without secret changes sends no secret.
        let next = Update {
            snapshot: Arc::new(super::super::ProxySnapshot::new(2, maps)),
            ..Default::default()
        };
        assert!(st
            .update(next)
            .iter()
            .all(|o| o.type_url != TypeUrl::Secret));
        // The shared secret is still reachable by name.
        let (_, out) = st.delta_request(&secret_request(&["kubernetes://tls-a"], ""));
        assert_eq!(&*out[0].resources[0].name, "kubernetes://tls-a");
        let nonce = out[0].nonce.clone();
        st.delta_request(&secret_request(&[], &nonce));
        // A change of the shared secret reaches the stream; its own stay.
        let mut shared = BTreeMap::new();
        shared.insert(
            Arc::from("kubernetes://tls-a"),
            res("kubernetes://tls-a", 2),
        );
        let mut maps: [ResourceMap; 5] = Default::default();
        maps[TypeUrl::Secret.index()] = Arc::new(shared);
        let out = st.update(Update {
            snapshot: Arc::new(super::super::ProxySnapshot::new(3, maps)),
            ..Default::default()
        });
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].type_url, TypeUrl::Secret);
        let sent: Vec<(&str, &str)> = out[0]
            .resources
            .iter()
            .map(|r| (&*r.name, &*r.version))
            .collect();
        assert_eq!(sent, [("kubernetes://tls-a", "2")]);
        assert!(out[0].removed.is_empty());
        assert_eq!(st.own_secrets().map(|m| m.len()), Some(2));
    }

    fn update(cds: &[(&str, u32)], eds: &[(&str, u32)]) -> Update {
        let map = |items: &[(&str, u32)]| -> ResourceMap {
            Arc::new(
                items
                    .iter()
                    .map(|(n, v)| (Arc::from(*n), res(n, *v)))
                    .collect(),
            )
        };
        Update {
            snapshot: Arc::new(crate::xds::ProxySnapshot::new(
                1,
                [
                    map(cds),
                    map(eds),
                    Arc::default(),
                    Arc::default(),
                    Arc::default(),
                ],
            )),
            changes: None,
            triggered: None,
        }
    }

    fn sotw(t: TypeUrl, names: &[&str], version: &str, nonce: &str) -> SotwRequest {
        SotwRequest::from(
            envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest {
                type_url: t.as_str().into(),
                resource_names: names.iter().map(|n| n.to_string()).collect(),
                version_info: version.into(),
                response_nonce: nonce.into(),
                ..Default::default()
            },
        )
    }

    /// A SotW client reconnecting (to a restarted control plane) with the
    /// version of what it holds gets nothing while that is still current, and
    /// then only what changes; a client quoting another version gets all.
    #[test]
    fn sotw_reconnect_with_the_current_version_gets_nothing() {
        let cds = [("a", 1), ("b", 1)];
        let eds = [("a", 1), ("b", 1)];
        // The first stream: what a proxy holds and the versions it accepted.
        let mut first = StreamState::new(Mode::Sotw, update(&cds, &eds));
        let (_, out) = first.sotw_request(&sotw(TypeUrl::Cluster, &[], "", ""));
        let cds_version = out[0].version.clone();
        let (_, out) = first.sotw_request(&sotw(TypeUrl::Endpoint, &["a", "b"], "", ""));
        assert_eq!(out[0].resources.len(), 2);
        let eds_version = out[0].version.clone();

        // A new process, the same content: nothing to send for either type.
        let mut again = StreamState::new(Mode::Sotw, update(&cds, &eds));
        let (ack, out) = again.sotw_request(&sotw(TypeUrl::Cluster, &[], &cds_version, ""));
        assert_eq!(ack, Ack::Request);
        assert!(out.is_empty(), "{out:?}");
        let (_, out) = again.sotw_request(&sotw(TypeUrl::Endpoint, &["a", "b"], &eds_version, ""));
        assert!(out.is_empty(), "{out:?}");
        // A later change goes out alone, as on the first stream.
        let out = again.update(update(&cds, &[("a", 1), ("b", 2)]));
        assert_eq!(out.len(), 1);
        let names: Vec<&str> = out[0].resources.iter().map(|r| &*r.name).collect();
        assert_eq!(names, ["b"]);
        // Its version names everything held after it (a and b), so a client
        // reconnecting after that one-resource response needs nothing either.
        let after_change = out[0].version.clone();
        let mut third = StreamState::new(Mode::Sotw, update(&cds, &[("a", 1), ("b", 2)]));
        let (_, out) = third.sotw_request(&sotw(TypeUrl::Endpoint, &["a", "b"], &after_change, ""));
        assert!(out.is_empty(), "{out:?}");

        // A client holding other content (an older version) gets everything.
        let mut stale = StreamState::new(Mode::Sotw, update(&cds, &[("a", 1), ("b", 2)]));
        let (_, out) = stale.sotw_request(&sotw(TypeUrl::Cluster, &[], &cds_version, ""));
        assert!(out.is_empty(), "CDS unchanged");
        let (_, out) = stale.sotw_request(&sotw(TypeUrl::Endpoint, &["a", "b"], &eds_version, ""));
        assert_eq!(out.len(), 1);
        let names: Vec<&str> = out[0].resources.iter().map(|r| &*r.name).collect();
        assert_eq!(names, ["a", "b"]);
        let mut other = StreamState::new(Mode::Sotw, update(&[("a", 1), ("c", 1)], &eds));
        let (_, out) = other.sotw_request(&sotw(TypeUrl::Cluster, &[], &cds_version, ""));
        assert_eq!(out[0].resources.len(), 2, "CDS changed: the full set");
    }

    #[test]
    fn holding_the_snapshot_costs_no_entries() {
        let map: ResourceMap = Arc::new(
            (0..1000)
                .map(|i| {
                    let r = res(&format!("c{i}"), 1);
                    (r.name.clone(), r)
                })
                .collect(),
        );
        let mut sent = Sent::default();
        for r in map.values() {
            sent.insert(r.name.clone(), r.clone());
        }
        sent.rebase(&map);
        assert_eq!(sent.len(), 1000);
        assert!(sent.diff.is_empty());
        // One change: one entry.
        sent.insert(Arc::from("c7"), res("c7", 2));
        assert_eq!(sent.diff.len(), 1);
        assert_eq!(sent.get("c7").unwrap().version.as_ref(), "2");
    }
}
