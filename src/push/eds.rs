//! EDS interning: one table of ClusterLoadAssignment encodings kept across
//! pushes, by (name, content version), through which every EDS encoding goes (on
//! connect, full and endpoint pushes alike), so equal assignments are one
//! allocation whichever `EdsView`, push or connect produced them; an entry leaves
//! the table once no map references it. A view's EDS map is the global map with
//! the view-dependent services (`translate::locality::depends_on_proxy`) overlaid.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tracing::warn;

use super::class::reuse_when;
use crate::metrics::metrics;
use crate::model::PushContext;
use crate::translate::{self, locality::EdsView};
use crate::xds::{Resource, ResourceMap, TypeUrl};

/// Every EDS encoding held by the global map or a view's map, by (name,
/// version): the one allocation of that content. Kept across pushes and used by
/// `connect` too, so equal assignments are shared whichever view, push or
/// connect computed them. Bounded by `prune`: an entry no map
/// references any more is dropped after each push and when a view goes away.
pub(super) type EdsIntern = HashMap<(Arc<str>, Arc<str>), Arc<Resource>>;

/// The shared allocation of `r`'s content: the interned one if any, else `r`,
/// interned.
fn share_eds(intern: &mut EdsIntern, r: Arc<Resource>) -> Arc<Resource> {
    let key = (r.name.clone(), r.version.clone());
    intern.entry(key).or_insert(r).clone()
}

/// `reuse_when` equal by allocations. For EDS maps, whose entries all come
/// from the table: a map equal by version but holding other
/// allocations is replaced, so copies made before sharing never outlive the
/// next push.
pub(super) fn reuse_if_same(
    old: Option<&ResourceMap>,
    new: BTreeMap<Arc<str>, Arc<Resource>>,
) -> ResourceMap {
    reuse_when(old, new, Arc::ptr_eq)
}

/// table; returns their names.
pub(super) fn service_eds(
    svc: &crate::model::Service,
    ctx: &PushContext,
    interned: &mut EdsIntern,
    map: &mut BTreeMap<Arc<str>, Arc<Resource>>,
) -> Vec<Arc<str>> {
    let mut names = Vec::new();
    for cla in translate::endpoints(svc, ctx) {
        let r = Resource::encode(TypeUrl::Endpoint, cla.cluster_name.as_str(), &cla);
        metrics().encodes.inc();
        let r = share_eds(interned, r);
        if map.insert(r.name.clone(), r.clone()).is_some() {
            warn!(name = %r.name, service = %svc.hostname, "two services produced one EDS name; the later wins");
        }
        names.push(r.name.clone());
    }
    names
}

/// Encode one service's assignments for `view` into `map`, sharing equal
/// encodings with every other map through `interned`.
pub(super) fn view_service_eds(
    svc: &crate::model::Service,
    ctx: &PushContext,
    view: &EdsView,
    interned: &mut EdsIntern,
    map: &mut BTreeMap<Arc<str>, Arc<Resource>>,
) {
    for cla in translate::endpoint::service_assignments_for(svc, ctx, view) {
        let r = Resource::encode(TypeUrl::Endpoint, cla.cluster_name.as_str(), &cla);
        metrics().encodes.inc();
        let r = share_eds(interned, r);
        map.insert(r.name.clone(), r);
    }
}

/// Drop the EDS encodings only the table still references (no global or
/// view map, no snapshot a stream still holds): keeps the table as large
/// as the distinct encodings in use. Linear in the table, no hashing.
pub(super) fn prune(intern: &mut EdsIntern) {
    intern.retain(|_, r| Arc::strong_count(r) > 1);
}

/// The EDS map of one view: `base` itself when no service is view-dependent,
/// else `base` with the dependent services overlaid; `old` (the view's
/// previous map) is kept when it holds the very same allocations.
pub(super) fn build_view(
    ctx: &PushContext,
    view: &EdsView,
    base: &ResourceMap,
    dependent: &BTreeSet<Arc<str>>,
    old: Option<&ResourceMap>,
    interned: &mut EdsIntern,
) -> ResourceMap {
    if dependent.is_empty() {
        return base.clone();
    }
    let mut map = (**base).clone();
    for host in dependent {
        if let Some(svc) = ctx.services.get(host) {
            view_service_eds(svc, ctx, view, interned, &mut map);
        }
    }
    reuse_if_same(old, map)
}
