//! The registry of live ADS streams, read by the debug endpoints: `/debug/syncz`
//! (`Connections::list`) and `/debug/config_dump` (`Connections::sent`).
//!
//! Each stream's protocol state lives here, behind its own std `Mutex`: the stream's
//! task locks it for the few microseconds it takes to process one request or one
//! snapshot (never across `.await`), and debug readers lock it to copy a status.
//! A `DashMap` holds the streams because many tasks insert and remove them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use dashmap::DashMap;

use super::connection::{Mode, Nack, StreamState};
use super::resource::{Resource, TypeUrl};
use super::secure::CertInfo;
use super::source::ConnId;
use crate::model::Proxy;

/// One live stream.
#[derive(Debug)]
pub struct Connection {
    pub id: ConnId,
    pub proxy: Arc<Proxy>,
    pub connected_at: SystemTime,
    pub mode: Mode,
    /// Where `proxy.locality` came from.
    pub locality_from: LocalityOrigin,
    state: Mutex<StreamState>,
    /// The workload certificate in force (authenticated streams only).
    cert: Mutex<Option<CertInfo>>,
}

impl Connection {
    pub(crate) fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_cert(&self, cert: Option<CertInfo>) {
        *self.cert.lock().unwrap_or_else(|e| e.into_inner()) = cert;
    }

    pub fn cert(&self) -> Option<CertInfo> {
        self.cert.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Where a connected proxy's locality came from (`/debug/syncz`
/// `locality_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalityOrigin {
    /// `node.locality` of the proxy's bootstrap.
    Node,
    /// The node had none: its Pod's Node in the registry (or the cluster's
    /// default locality), looked up when it connected.
    Registry,
    /// Neither: the proxy has no locality.
    None,
}

/// `/debug/certz` entry: one authenticated stream's certificate.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct CertStatus {
    pub proxy_id: String,
    pub connection: ConnId,
    #[serde(flatten)]
    pub cert: CertInfo,
}

/// `/debug/syncz` entry for one type URL.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct TypeStatus {
    pub type_url: &'static str,
    pub sent_version: String,
    pub sent_nonce: String,
    pub acked_version: String,
    pub acked_nonce: String,
    /// The last NACK since the last ACK, with Envoy's error text.
    pub nacked: Option<Nack>,
    pub wildcard: bool,
    pub subscribed: usize,
    pub resources_sent: usize,
}

/// `/debug/syncz` entry for one stream.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct ConnectionStatus {
    pub proxy_id: String,
    pub connection: ConnId,
    pub mode: Mode,
    /// Seconds since the Unix epoch.
    pub connected_at: u64,
    /// Push sequence number of the snapshot the stream last processed.
    pub push_seq: u64,
    /// The proxy's locality in force (`region/zone/subzone`, empty if none).
    pub locality: String,
    pub locality_from: LocalityOrigin,
    /// The member cluster the proxy runs in (its node's `CLUSTER_ID`).
    pub cluster_id: String,
    /// Per type the client requested, in push order.
    pub types: Vec<TypeStatus>,
}

/// All live streams.
#[derive(Debug, Default)]
pub struct Connections {
    map: DashMap<ConnId, Arc<Connection>>,
    next_id: AtomicU64,
}

impl Connections {
    pub fn new() -> Connections {
        Connections::default()
    }

    pub(crate) fn next_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn insert(
        &self,
        id: ConnId,
        proxy: Arc<Proxy>,
        mode: Mode,
        locality_from: LocalityOrigin,
        state: StreamState,
    ) -> Arc<Connection> {
        let c = Arc::new(Connection {
            id,
            proxy,
            connected_at: SystemTime::now(),
            mode,
            locality_from,
            state: Mutex::new(state),
            cert: Mutex::new(None),
        });
        self.map.insert(id, c.clone());
        c
    }

    pub(crate) fn remove(&self, id: ConnId) {
        self.map.remove(&id);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Status of every live stream, sorted by proxy id then stream.
    pub fn list(&self) -> Vec<ConnectionStatus> {
        let conns: Vec<Arc<Connection>> = self.map.iter().map(|e| e.value().clone()).collect();
        let mut out: Vec<ConnectionStatus> = conns.iter().map(|c| status(c)).collect();
        out.sort_by(|a, b| (&a.proxy_id, a.connection).cmp(&(&b.proxy_id, b.connection)));
        out
    }

    /// The certificate of every authenticated stream, sorted by proxy id then
    /// stream.
    pub fn certz(&self) -> Vec<CertStatus> {
        let mut out: Vec<CertStatus> = self
            .map
            .iter()
            .filter_map(|e| {
                let c = e.value();
                Some(CertStatus {
                    proxy_id: c.proxy.id.clone(),
                    connection: c.id,
                    cert: c.cert()?,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.proxy_id, a.connection).cmp(&(&b.proxy_id, b.connection)));
        out
    }

    /// The newest live stream of `proxy_id`.
    fn newest(&self, proxy_id: &str) -> Option<Arc<Connection>> {
        self.map
            .iter()
            .filter(|e| e.value().proxy.id == proxy_id)
            .max_by_key(|e| *e.key())
            .map(|e| e.value().clone())
    }

    /// The resources last sent to `proxy_id` (its newest stream), per type, in
    /// push order; `None` if the proxy is not connected.
    pub fn sent(&self, proxy_id: &str) -> Option<BTreeMap<TypeUrl, Vec<Arc<Resource>>>> {
        let c = self.newest(proxy_id)?;
        let st = c.lock();
        let mut out = BTreeMap::new();
        for t in TypeUrl::ALL {
            let ts = &st.types[t.index()];
            if ts.requested {
                // Entries with empty bytes stand for content a reconnecting Delta
                // client declared and crossmesh does not have: nothing to show.
                let v = ts
                    .sent
                    .values()
                    .into_iter()
                    .filter(|r| !r.any.is_empty())
                    .collect();
                out.insert(t, v);
            }
        }
        Some(out)
    }

    /// Per connected proxy (its newest stream), the names of type `t` last
    /// sent to it that `keep` accepts, in name order; proxies with none are
    /// left out. One pass over the connections (`sent` per proxy finds the
    /// newest stream by a scan and copies every type: quadratic in proxies).
    pub fn sent_names(
        &self,
        t: TypeUrl,
        keep: &dyn Fn(&str) -> bool,
    ) -> Vec<(String, Vec<Arc<str>>)> {
        let mut newest: std::collections::HashMap<String, (ConnId, Arc<Connection>)> =
            std::collections::HashMap::new();
        for e in self.map.iter() {
            let (id, c) = (*e.key(), e.value());
            match newest.get(&c.proxy.id) {
                Some((old, _)) if *old > id => {}
                _ => {
                    newest.insert(c.proxy.id.clone(), (id, c.clone()));
                }
            }
        }
        let mut out: Vec<(String, Vec<Arc<str>>)> = newest
            .into_iter()
            .filter_map(|(proxy, (_, c))| {
                let st = c.lock();
                let ts = &st.types[t.index()];
                if !ts.requested {
                    return None;
                }
                let names: Vec<Arc<str>> = ts
                    .sent
                    .keys()
                    .into_iter()
                    .filter(|k| keep(k) && ts.sent.get(k).is_some_and(|r| !r.any.is_empty()))
                    .collect();
                (!names.is_empty()).then_some((proxy, names))
            })
            .collect();
        out.sort();
        out
    }

    /// The proxy model of `proxy_id`'s newest stream.
    pub fn proxy(&self, proxy_id: &str) -> Option<Arc<Proxy>> {
        self.newest(proxy_id).map(|c| c.proxy.clone())
    }
}

fn status(c: &Connection) -> ConnectionStatus {
    let st = c.lock();
    let types = TypeUrl::ALL
        .into_iter()
        .filter(|t| st.types[t.index()].requested)
        .map(|t| {
            let ts = &st.types[t.index()];
            TypeStatus {
                type_url: t.as_str(),
                sent_version: ts.sent_version.clone(),
                sent_nonce: ts.sent_nonce.clone(),
                acked_version: ts.acked_version.clone(),
                acked_nonce: ts.acked_nonce.clone(),
                nacked: ts.nack.clone(),
                wildcard: ts.wildcard,
                subscribed: ts.names.len(),
                resources_sent: ts.sent.len(),
            }
        })
        .collect();
    ConnectionStatus {
        proxy_id: c.proxy.id.clone(),
        connection: c.id,
        mode: c.mode,
        connected_at: c
            .connected_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        push_seq: st.seq(),
        locality: c.proxy.locality.label(),
        locality_from: c.locality_from,
        cluster_id: c.proxy.cluster_id.clone(),
        types,
    }
}
