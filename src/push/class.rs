//! Class building: the CDS/LDS/RDS (and `credentialName` SDS) maps one
//! `translate::ProxyClass` gets, generated once and shared by every proxy of the
//! class. Every resource is encoded once (`Resource::encode`, counted in
//! `crossmesh_encodes`) and interned by (type, name, version), so identical
//! content is one allocation shared by every class and every push that has it; a
//! map equal to the class's previous one is kept as the same `Arc`, so streams
//! skip the type by pointer comparison.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use prost::Message;
use tracing::warn;

use crate::metrics::metrics;
use crate::model::{Proxy, PushContext};
use crate::translate::{self, ProxyClass};
use crate::xds::{ProxySnapshot, Resource, ResourceMap, TypeUrl};

pub(super) type InternKey = (TypeUrl, Arc<str>, Arc<str>);

#[derive(Clone, Default)]
pub(super) struct ClassMaps {
    pub(super) clusters: ResourceMap,
    pub(super) listeners: ResourceMap,
    pub(super) routes: ResourceMap,
    /// `credentialName` secrets (`translate::credentials`).
    pub(super) secrets: ResourceMap,
}

/// Encode one resource (counted) and intern it by (type, name, version): if an
/// equal resource exists in this push or the previous one, that `Arc` is reused.
fn intern<M: Message>(
    t: TypeUrl,
    name: &str,
    msg: &M,
    new: &mut HashMap<InternKey, Arc<Resource>>,
    old: &HashMap<InternKey, Arc<Resource>>,
) -> Arc<Resource> {
    let r = Resource::encode(t, name, msg);
    metrics().encodes.inc();
    let key = (t, r.name.clone(), r.version.clone());
    if let Some(existing) = new.get(&key) {
        return existing.clone();
    }
    let shared = old.get(&key).cloned().unwrap_or(r);
    new.insert(key, shared.clone());
    shared
}

/// Keep `old` (same `Arc`) when `new` holds the same names with entries that
/// `same` calls equal, so streams can skip the type by pointer comparison.
pub(super) fn reuse_when(
    old: Option<&ResourceMap>,
    new: BTreeMap<Arc<str>, Arc<Resource>>,
    same: impl Fn(&Arc<Resource>, &Arc<Resource>) -> bool,
) -> ResourceMap {
    if let Some(old) = old {
        if old.len() == new.len()
            && old
                .iter()
                .zip(new.iter())
                .all(|((a, x), (b, y))| a == b && same(x, y))
        {
            return old.clone();
        }
    }
    Arc::new(new)
}

/// `reuse_when` equal by names and versions (CDS, LDS, RDS).
fn reuse_if_equal(
    old: Option<&ResourceMap>,
    new: BTreeMap<Arc<str>, Arc<Resource>>,
) -> ResourceMap {
    reuse_when(old, new, |x, y| x.version == y.version)
}

fn to_map<'a, M: Message + 'a>(
    t: TypeUrl,
    items: impl IntoIterator<Item = (&'a str, &'a M)>,
    class: &ProxyClass,
    new: &mut HashMap<InternKey, Arc<Resource>>,
    old: &HashMap<InternKey, Arc<Resource>>,
) -> BTreeMap<Arc<str>, Arc<Resource>> {
    let mut map = BTreeMap::new();
    for (name, msg) in items {
        if map.contains_key(name) {
            warn!(
                type_url = t.short(),
                name,
                ?class,
                "translation produced a duplicate name; keeping the first"
            );
            continue;
        }
        let r = intern(t, name, msg, new, old);
        map.insert(r.name.clone(), r);
    }
    map
}

pub(super) fn build_class(
    proxy: &Proxy,
    ctx: &PushContext,
    class: &ProxyClass,
    previous: Option<&ClassMaps>,
    new: &mut HashMap<InternKey, Arc<Resource>>,
    old: &HashMap<InternKey, Arc<Resource>>,
) -> ClassMaps {
    let g = translate::generate(proxy, ctx);
    let clusters = to_map(
        TypeUrl::Cluster,
        g.clusters.iter().map(|c| (c.name.as_str(), c)),
        class,
        new,
        old,
    );
    let listeners = to_map(
        TypeUrl::Listener,
        g.listeners.iter().map(|l| (l.name.as_str(), l)),
        class,
        new,
        old,
    );
    let routes = to_map(
        TypeUrl::Route,
        g.routes.iter().map(|r| (r.name.as_str(), r)),
        class,
        new,
        old,
    );
    let secrets = to_map(
        TypeUrl::Secret,
        g.secrets.iter().map(|s| (s.name.as_str(), s)),
        class,
        new,
        old,
    );
    let maps = ClassMaps {
        clusters: reuse_if_equal(previous.map(|p| &p.clusters), clusters),
        listeners: reuse_if_equal(previous.map(|p| &p.listeners), listeners),
        routes: reuse_if_equal(previous.map(|p| &p.routes), routes),
        secrets: reuse_if_equal(previous.map(|p| &p.secrets), secrets),
    };
    // Said once per change of what the class gets, not on every push.
    let changed = previous.is_none_or(|p| {
        !Arc::ptr_eq(&p.clusters, &maps.clusters) || !Arc::ptr_eq(&p.listeners, &maps.listeners)
    });
    if changed {
        for o in &g.omitted {
            warn!(
                proxy = %proxy.id,
                cluster = %proxy.cluster_id,
                namespace = %proxy.namespace,
                left_out = %o.what,
                reason = %o.reason,
                "left out of the proxy's config (a credentialName Secret it cannot get, or TLS its role cannot do)"
            );
        }
    }
    maps
}

pub(super) fn snapshot(seq: u64, maps: &ClassMaps, eds: &ResourceMap) -> Arc<ProxySnapshot> {
    Arc::new(ProxySnapshot::new(
        seq,
        [
            maps.clusters.clone(),
            eds.clone(),
            maps.listeners.clone(),
            maps.routes.clone(),
            maps.secrets.clone(),
        ],
    ))
}
