//! The merge: every shard's view of a `(namespace, name)` service key merged into
//! one `Service` (namespace sameness), compared with the previous merged value to
//! say what to push, and the network gateways discovered from Services merged
//! with the mesh file's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::endpoints::{Interners, ObjKey};
use super::shard::Shard;
use crate::config::NetworkGateway;
use crate::model::push_request::PushRequest;
use crate::model::service::ServiceMap;
use crate::model::{ClusterId, Endpoint, MeshSettings, Service, ServicePort};

/// Everything behind the registry's lock.
#[derive(Debug, Default)]
pub(super) struct Index {
    pub(super) shards: BTreeMap<ClusterId, Shard>,
    pub(super) merged: ServiceMap,
    /// The merged view as handed out; `None` after a change until asked for.
    pub(super) snapshot: Option<Arc<ServiceMap>>,
    /// The merged view with ServiceEntries and WorkloadEntries overlaid
    /// (`external.rs`), for the config snapshot and merged view it was built
    /// from; dropped on every change to the shards.
    pub(super) overlaid: Option<(
        Arc<crate::model::istio::ConfigSnapshot>,
        Arc<ServiceMap>,
        Arc<ServiceMap>,
    )>,
    pub(super) ready_endpoints: usize,
    pub(super) interners: Interners,
    /// The mesh settings handed to pushes: the mesh file's, with the network
    /// gateways discovered from Services merged in (`refresh_gateways`).
    pub(super) settings: Arc<MeshSettings>,
}

pub(super) fn ready_count(s: &Service) -> usize {
    s.endpoints.values().flatten().filter(|e| e.ready).count()
}

impl Index {
    pub(super) fn hostname(domain_suffix: &str, key: &ObjKey) -> Arc<str> {
        Arc::from(format!("{}.{}.svc.{domain_suffix}", key.1, key.0))
    }

    /// The service `key` merged across every shard, or `None` if no cluster declares it.
    pub(super) fn compute(&self, domain_suffix: &str, key: &ObjKey) -> Option<Service> {
        let mut ports: Vec<ServicePort> = Vec::new();
        let mut clusters = Vec::new();
        let mut endpoints: BTreeMap<u16, Vec<Endpoint>> = BTreeMap::new();
        for shard in self.shards.values() {
            let Some(svc) = shard.services.get(key) else {
                continue;
            };
            clusters.push(shard.meta.name.clone());
            for p in &svc.ports {
                if !ports.iter().any(|x| x.port == p.port) {
                    ports.push(ServicePort {
                        name: p.name.to_string(),
                        port: p.port,
                        protocol: p.protocol,
                    });
                }
            }
            shard.endpoints_of(key, svc, &mut endpoints);
        }
        if clusters.is_empty() {
            return None;
        }
        for eps in endpoints.values_mut() {
            eps.sort_by(|a, b| {
                (&a.cluster, a.address, a.port).cmp(&(&b.cluster, b.address, b.port))
            });
            // Overlapping slices may list one address twice; keep one, ready first.
            eps.dedup_by(|later, earlier| {
                let same = later.cluster == earlier.cluster
                    && later.address == earlier.address
                    && later.port == earlier.port;
                if same && later.ready {
                    earlier.ready = true;
                }
                same
            });
        }
        ports.sort_by_key(|p| p.port);
        Some(Service {
            hostname: Self::hostname(domain_suffix, key),
            namespace: key.0.to_string(),
            name: key.1.to_string(),
            ports,
            endpoints,
            clusters,
        })
    }

    /// Merge the mesh file's network gateways (`file`) with those discovered from
    /// Services labelled `topology.istio.io/network` in every shard, as Istio's
    /// `NetworkManager` merges MeshNetworks and registry gateways into one set:
    /// per network, the mesh file's first (in its order), then each cluster's (by
    /// cluster name, then Service namespace/name, then address order), an address
    /// and port already listed being skipped. Replaces `settings` and returns
    /// whether the gateways changed (then every proxy needs a full push: the
    /// network filter of every service's EDS reads them).
    pub(super) fn refresh_gateways(&mut self, file: &MeshSettings) -> bool {
        let mut networks = file.networks.clone();
        for shard in self.shards.values_mut() {
            shard.gateways_changed = false;
            for key in &shard.gateway_services {
                let Some(gw) = shard.services.get(key).and_then(|s| s.gateway.as_ref()) else {
                    continue;
                };
                let list = networks.entry(gw.network.to_string()).or_default();
                for a in &gw.addresses {
                    if !list.iter().any(|g| same_gateway(g, *a, gw.port)) {
                        list.push(NetworkGateway {
                            address: a.to_string(),
                            port: gw.port,
                            cluster: Some(shard.meta.name.to_string()),
                        });
                    }
                }
            }
        }
        // A network whose only gateway Services have no address has no gateway.
        networks.retain(|name, gws| !gws.is_empty() || file.networks.contains_key(name));
        if networks == self.settings.networks {
            return false;
        }
        self.settings = Arc::new(MeshSettings {
            networks,
            ..(*self.settings).clone()
        });
        true
    }

    /// Recompute `keys`, store what changed and say what to push.
    pub(super) fn commit(
        &mut self,
        domain_suffix: &str,
        keys: BTreeSet<ObjKey>,
    ) -> Option<PushRequest> {
        let mut full = false;
        let mut eds: Vec<Arc<str>> = Vec::new();
        for key in keys {
            let hostname = Self::hostname(domain_suffix, &key);
            let new = self.compute(domain_suffix, &key);
            let old = self.merged.get(&hostname);
            match (old, new) {
                (None, None) => continue,
                (Some(o), Some(n)) if **o == n => continue,
                (Some(o), Some(n)) => {
                    if o.ports != n.ports || o.clusters != n.clusters {
                        full = true;
                    } else {
                        eds.push(hostname.clone());
                    }
                    self.ready_endpoints = self.ready_endpoints - ready_count(o) + ready_count(&n);
                    self.merged.insert(hostname, Arc::new(n));
                }
                (None, Some(n)) => {
                    full = true;
                    self.ready_endpoints += ready_count(&n);
                    self.merged.insert(hostname, Arc::new(n));
                }
                (Some(o), None) => {
                    full = true;
                    self.ready_endpoints -= ready_count(o);
                    self.merged.remove(&hostname);
                }
            }
            self.snapshot = None;
        }
        let mut req = if eds.is_empty() {
            None
        } else {
            Some(PushRequest::endpoints(eds))
        };
        if full {
            let f = PushRequest::full("service");
            match req.as_mut() {
                Some(r) => r.merge(f),
                None => req = Some(f),
            }
        }
        req
    }
}

/// Whether a gateway entry is `addr:port` (mesh-file addresses compared as IPs
/// when they parse, so `::1` and `0::1` are one gateway).
pub(super) fn same_gateway(g: &NetworkGateway, addr: std::net::IpAddr, port: u16) -> bool {
    g.port == port
        && match g.address.parse::<std::net::IpAddr>() {
            Ok(a) => a == addr,
            Err(_) => g.address == addr.to_string(),
        }
}

/// Add a full push for changed network gateways to `req`.
pub(super) fn with_networks_push(req: Option<PushRequest>) -> Option<PushRequest> {
    let f = PushRequest::full("networks");
    Some(match req {
        Some(mut r) => {
            r.merge(f);
            r
        }
        None => f,
    })
}
