//! Locality load balancing, applied to one ClusterLoadAssignment for one proxy
//! view: Istio's `loadbalancer.ApplyLocalityLoadBalancer` (`distribute` weights,
//! default and region `failover` priorities, label `failoverPriority`), run after
//! the network filter (`network.rs`) and before encoding.
//!
//! The proxy fields EDS reads are gathered in `EdsView`; proxies with equal views
//! get equal assignments, so the push engine computes one EDS variant per
//! distinct view, and only for services whose EDS depends on the proxy
//! (`depends_on_proxy`). Everything else keeps the one global assignment.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::istio::destination_rule::{EffectivePolicy, LocalityLbSetting};
use crate::model::istio::{host_matches, TrafficPolicy};
use crate::model::{Endpoint, Locality, Proxy, PushContext, Service};

/// Istio's endpoint/proxy topology labels, usable in `failoverPriority`.
pub const LABEL_CLUSTER: &str = "topology.istio.io/cluster";
pub const LABEL_NETWORK: &str = "topology.istio.io/network";
pub const LABEL_REGION: &str = "topology.kubernetes.io/region";
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
pub const LABEL_SUBZONE: &str = "topology.istio.io/subzone";

/// The proxy fields per-proxy EDS reads, and nothing else: proxies with equal
/// views share one EDS computation and one map, so a field here that EDS does
/// not read splits views for nothing, and a field EDS starts reading must be
/// added here.
///
/// `namespace` picks the DestinationRule in force; `network` is the
/// multi-network filter's (`network.rs`, which otherwise reads only the
/// endpoint's own network and cluster); `labels` holds only the label keys some
/// `failoverPriority` names (Istio augments proxy labels with the topology
/// labels above, so do we). The proxy's member cluster is read only as the
/// `topology.istio.io/cluster` label, so it is in the view only when some
/// `failoverPriority` names that label; otherwise proxies of every cluster with
/// equal locality share views.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdsView {
    pub namespace: String,
    pub locality: Locality,
    pub network: String,
    pub labels: BTreeMap<String, String>,
}

impl EdsView {
    pub fn of(proxy: &Proxy, ctx: &PushContext) -> EdsView {
        let keys = failover_priority_keys(ctx);
        let mut labels = BTreeMap::new();
        for k in keys {
            if let Some(v) = proxy_label(proxy, &k) {
                labels.insert(k, v);
            }
        }
        EdsView {
            namespace: proxy.namespace.clone(),
            locality: proxy.locality.clone(),
            network: proxy.network.clone(),
            labels,
        }
    }
}

fn proxy_label(proxy: &Proxy, key: &str) -> Option<String> {
    let v = match key {
        LABEL_CLUSTER => proxy.cluster_id.clone(),
        LABEL_NETWORK => proxy.network.clone(),
        LABEL_REGION => proxy.locality.region.clone(),
        LABEL_ZONE => proxy.locality.zone.clone(),
        LABEL_SUBZONE => proxy.locality.subzone.clone(),
        _ => return proxy.labels.get(key).cloned(),
    };
    Some(v)
}

/// An endpoint's label as `failoverPriority` sees it (topology labels included).
pub fn endpoint_label<'a>(ep: &'a Endpoint, key: &str) -> Option<&'a str> {
    match key {
        LABEL_CLUSTER => Some(&ep.cluster),
        LABEL_NETWORK => Some(&ep.network),
        LABEL_REGION => Some(&ep.locality.region),
        LABEL_ZONE => Some(&ep.locality.zone),
        LABEL_SUBZONE => Some(&ep.locality.subzone),
        _ => ep.labels.get(key).map(String::as_str),
    }
}

/// Every label key named by some `failoverPriority` in the config (the `=value`
/// override stripped).
fn failover_priority_keys(ctx: &PushContext) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for dr in &ctx.config.destination_rules {
        let tp = dr.spec.traffic_policy.iter();
        let subsets = dr
            .spec
            .subsets
            .iter()
            .filter_map(|s| s.traffic_policy.as_ref());
        for p in tp.chain(subsets) {
            for s in settings_of(p) {
                for l in &s.failover_priority {
                    out.insert(l.split('=').next().unwrap_or("").to_string());
                }
            }
        }
    }
    out
}

fn settings_of(p: &TrafficPolicy) -> impl Iterator<Item = &LocalityLbSetting> {
    p.load_balancer
        .iter()
        .chain(
            p.port_level_settings
                .iter()
                .filter_map(|l| l.load_balancer.as_ref()),
        )
        .filter_map(|lb| lb.locality_lb_setting.as_ref())
}

/// Whether `p` makes EDS proxy-dependent: outlier detection (default failover)
/// or any locality setting.
fn policy_is_locality_aware(p: &TrafficPolicy) -> bool {
    p.outlier_detection.is_some()
        || p.port_level_settings
            .iter()
            .any(|l| l.outlier_detection.is_some())
        || settings_of(p).next().is_some()
}

/// Whether the EDS of `svc` differs between proxies: some DestinationRule for
/// its host turns on locality failover or distribution, or it has endpoints on
/// a named network (multi-network: remote endpoints become gateways).
pub fn depends_on_proxy(svc: &Service, ctx: &PushContext) -> bool {
    let networked = svc
        .endpoints
        .values()
        .flatten()
        .any(|e| !e.network.is_empty());
    if networked {
        return true;
    }
    ctx.config.destination_rules.iter().any(|dr| {
        let host = ctx.config.resolve_host(&dr.spec.host, &dr.meta.namespace);
        if !host_matches(&host, &svc.hostname) {
            return false;
        }
        dr.spec.traffic_policy.iter().any(policy_is_locality_aware)
            || dr
                .spec
                .subsets
                .iter()
                .filter_map(|s| s.traffic_policy.as_ref())
                .any(policy_is_locality_aware)
    })
}

/// What locality load balancing does to one cluster, decided from its policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// `enabled: false`: every locality at priority 0 with count weights, and no
    /// locality-weighted LB on the cluster.
    Disabled,
    /// Locality weights only (no failover: Istio applies failover only with
    /// outlier detection, or here also when failover is configured explicitly).
    Weights,
    Distribute(LocalityLbSetting),
    Failover(LocalityLbSetting),
}

/// The mode for a cluster with this effective policy (Istio: `distribute` wins;
/// failover needs outlier detection, since without it Envoy never drops to a
/// lower priority; crossmesh also applies an explicit `failover` or
/// `failoverPriority`).
pub fn mode(policy: &EffectivePolicy) -> Mode {
    let setting = policy
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.locality_lb_setting.clone())
        .unwrap_or_default();
    if setting.enabled == Some(false) {
        return Mode::Disabled;
    }
    if !setting.distribute.is_empty() {
        return Mode::Distribute(setting);
    }
    let explicit = !setting.failover.is_empty() || !setting.failover_priority.is_empty();
    if policy.outlier_detection.is_some() || explicit {
        return Mode::Failover(setting);
    }
    Mode::Weights
}

/// One locality group being assembled: its members carry the endpoint they stand
/// for (labels for `failoverPriority`), or `None` for a network gateway.
#[derive(Debug, Clone)]
pub struct Group<'a, M> {
    pub locality: Locality,
    pub members: Vec<(M, u32, Option<&'a Endpoint>)>,
    /// `None`: the sum of member weights.
    pub weight: Option<u32>,
    pub priority: u32,
}

impl<M> Group<'_, M> {
    pub fn total(&self) -> u32 {
        self.weight
            .unwrap_or_else(|| self.members.iter().fold(0, |s, m| s.saturating_add(m.1)))
    }
}

/// Istio's `LocalityMatch`: `rule` is `region[/zone[/subzone]]`, `*` matches any
/// value, a missing part matches any value.
pub fn locality_match(l: &Locality, rule: &str) -> bool {
    let mut parts = rule.splitn(3, '/');
    let (r, z, s) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    (r == "*" || l.region == r)
        && (z == "*" || z.is_empty() || l.zone == z)
        && (s == "*" || s.is_empty() || l.subzone == s)
}

/// Istio's `LbPriority`: 0 same region/zone/subzone, 1 same region and zone,
/// 2 same region, 3 otherwise.
pub fn lb_priority(proxy: &Locality, ep: &Locality) -> u32 {
    if proxy.region != ep.region {
        3
    } else if proxy.zone != ep.zone {
        2
    } else if proxy.subzone != ep.subzone {
        1
    } else {
        0
    }
}

/// Apply `mode` for `view` to the groups (Istio's `ApplyLocalityLoadBalancer`).
pub fn apply<'a, M: Clone>(groups: &mut Vec<Group<'a, M>>, view: &EdsView, mode: &Mode) {
    match mode {
        Mode::Disabled | Mode::Weights => {}
        Mode::Distribute(s) => apply_distribute(groups, &view.locality, s),
        Mode::Failover(s) => {
            if !s.failover_priority.is_empty() {
                apply_failover_priority(groups, view, &s.failover_priority);
                if !s.failover.is_empty() {
                    apply_failover(groups, &view.locality, s);
                }
            } else {
                apply_failover(groups, &view.locality, s);
            }
        }
    }
}

/// `distribute`: the first rule whose `from` matches the proxy sets each matched
/// destination locality's weight to `to`'s percent, split over the localities a
/// wildcard matches in proportion to their weights (rounded up); localities no
/// `to` entry matches get no traffic (their endpoints are removed).
fn apply_distribute<M>(groups: &mut Vec<Group<'_, M>>, proxy: &Locality, s: &LocalityLbSetting) {
    let Some(rule) = s.distribute.iter().find(|d| locality_match(proxy, &d.from)) else {
        return;
    };
    let mut unmatched: BTreeSet<usize> = (0..groups.len()).collect();
    for (to, weight) in &rule.to {
        let idx: Vec<usize> = unmatched
            .iter()
            .copied()
            .filter(|i| locality_match(&groups[*i].locality, to))
            .collect();
        let total: u64 = idx.iter().map(|i| groups[*i].total() as u64).sum();
        for i in &idx {
            unmatched.remove(i);
            if total == 0 {
                continue;
            }
            let w = (groups[*i].total() as u64 * *weight as u64).div_ceil(total);
            if w > 0 {
                groups[*i].weight = Some(w as u32);
            }
        }
    }
    let keep: Vec<bool> = (0..groups.len()).map(|i| !unmatched.contains(&i)).collect();
    let mut k = keep.iter();
    groups.retain(|_| *k.next().unwrap_or(&true));
}

/// Default and region failover: priority by `lb_priority`, 4 for a foreign
/// region that is not the `failover` target of the proxy's region; combined with
/// existing priorities as `old * 5 + p`, then compacted to 0..N.
fn apply_failover<M>(groups: &mut [Group<'_, M>], proxy: &Locality, s: &LocalityLbSetting) {
    for g in groups.iter_mut() {
        let mut p = lb_priority(proxy, &g.locality);
        if p == 3 {
            if let Some(f) = s.failover.iter().find(|f| f.from == proxy.region) {
                if g.locality.region != f.to {
                    p = 4;
                }
            }
        }
        g.priority = g.priority * 5 + p;
    }
    compact(groups);
}

/// `failoverPriority`: split each locality group by how many leading labels the
/// endpoint shares with the proxy (all: priority 0; first mismatch at label j of
/// n: priority n - j), then compact.
fn apply_failover_priority<'a, M: Clone>(
    groups: &mut Vec<Group<'a, M>>,
    view: &EdsView,
    labels: &[String],
) {
    let n = labels.len() as u32;
    let rules: Vec<(&str, Option<&str>)> = labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (l.as_str(), None),
        })
        .collect();
    let mut out = Vec::new();
    for g in groups.drain(..) {
        let mut by_prio: BTreeMap<u32, Vec<(M, u32, Option<&'a Endpoint>)>> = BTreeMap::new();
        for m in g.members {
            let mut prio = 0;
            for (j, (key, fixed)) in rules.iter().enumerate() {
                let want = match fixed {
                    Some(v) => Some(*v),
                    None => view.labels.get(*key).map(String::as_str),
                };
                // Gateway members stand for remote endpoints: they never match.
                let have = m.2.and_then(|e| endpoint_label(e, key));
                if want.is_none() || want != have {
                    prio = n - j as u32;
                    break;
                }
            }
            by_prio.entry(prio).or_default().push(m);
        }
        for (priority, members) in by_prio {
            out.push(Group {
                locality: g.locality.clone(),
                members,
                weight: None,
                priority,
            });
        }
    }
    *groups = out;
    compact(groups);
}

/// Renumber priorities to 0..N keeping their order (Envoy needs no gaps).
fn compact<M>(groups: &mut [Group<'_, M>]) {
    let used: BTreeSet<u32> = groups.iter().map(|g| g.priority).collect();
    let rank: BTreeMap<u32, u32> = used.into_iter().zip(0..).collect();
    for g in groups.iter_mut() {
        g.priority = rank[&g.priority];
    }
}

/// The effective policy for one cluster of `svc` as seen from `namespace`.
pub fn effective_policy(
    svc: &Service,
    namespace: &str,
    subset: &str,
    port: u16,
    ctx: &PushContext,
) -> EffectivePolicy {
    let rule = ctx
        .config
        .destination_rule(namespace, &svc.hostname, &svc.namespace);
    let top = rule.as_ref().and_then(|r| r.traffic_policy.as_ref());
    let sub = rule.as_ref().and_then(|r| {
        r.subsets
            .iter()
            .find(|s| s.name == subset && !subset.is_empty())
            .and_then(|s| s.traffic_policy.as_ref())
    });
    TrafficPolicy::effective(top, sub, port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::istio::destination_rule::{LocalityDistribute, LocalityFailover};

    fn loc(s: &str) -> Locality {
        let mut p = s.split('/');
        Locality {
            region: p.next().unwrap_or("").into(),
            zone: p.next().unwrap_or("").into(),
            subzone: p.next().unwrap_or("").into(),
        }
    }

    fn groups(spec: &[(&str, u32)]) -> Vec<Group<'static, ()>> {
        spec.iter()
            .map(|(l, n)| Group {
                locality: loc(l),
                members: (0..*n).map(|_| ((), 1, None)).collect(),
                weight: None,
                priority: 0,
            })
            .collect()
    }

    fn view(l: &str) -> EdsView {
        EdsView {
            locality: loc(l),
            ..Default::default()
        }
    }

    fn prios(g: &[Group<'_, ()>]) -> Vec<(String, u32)> {
        g.iter().map(|g| (g.locality.label(), g.priority)).collect()
    }

    #[test]
    fn default_failover_orders_zone_region_other_and_compacts() {
        let mut g = groups(&[("r1/z1", 2), ("r1/z2", 1), ("r2/z3", 3)]);
        apply(
            &mut g,
            &view("r1/z1"),
            &Mode::Failover(LocalityLbSetting::default()),
        );
        // 0 (same zone), 2 (same region) and 3 (other) compact to 0, 1, 2.
        assert_eq!(
            prios(&g),
            [
                ("r1/z1".into(), 0),
                ("r1/z2".into(), 1),
                ("r2/z3".into(), 2)
            ]
        );
    }

    #[test]
    fn region_failover_demotes_non_target_regions() {
        let mut g = groups(&[("r1/z1", 1), ("r2/z1", 1), ("r3/z1", 1)]);
        let s = LocalityLbSetting {
            failover: vec![LocalityFailover {
                from: "r1".into(),
                to: "r3".into(),
            }],
            ..Default::default()
        };
        apply(&mut g, &view("r1/z1"), &Mode::Failover(s));
        assert_eq!(
            prios(&g),
            [
                ("r1/z1".into(), 0),
                ("r2/z1".into(), 2),
                ("r3/z1".into(), 1)
            ]
        );
    }

    #[test]
    fn distribute_sets_percent_weights_and_drops_unmatched() {
        let mut g = groups(&[("r1/z1", 2), ("r1/z2", 1), ("r1/z3", 1), ("r2/z9", 1)]);
        let s = LocalityLbSetting {
            distribute: vec![LocalityDistribute {
                from: "r1/z1/*".into(),
                to: [("r1/z1".to_string(), 80), ("r1/*".to_string(), 20)].into(),
            }],
            ..Default::default()
        };
        apply(&mut g, &view("r1/z1"), &Mode::Distribute(s));
        let w: Vec<(String, u32)> = g.iter().map(|g| (g.locality.label(), g.total())).collect();
        // BTreeMap order: "r1/*" is applied first and takes r1/z1 too, as Istio's
        // map iteration may; weights are shares of the matched total, rounded up.
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(!w.iter().any(|(l, _)| l == "r2/z9"));
    }

    #[test]
    fn failover_priority_splits_by_leading_label_matches() {
        let e = |cluster: &str, net: &str| Endpoint {
            address: "10.0.0.1".parse().unwrap(),
            port: 80,
            labels: Default::default(),
            cluster: cluster.into(),
            network: net.into(),
            locality: Default::default(),
            ready: true,
            workload: "".into(),
            service_account: "".into(),
            stale: false,
            weight: 1,
        };
        let (a, b, c) = (e("c1", "n1"), e("c2", "n1"), e("c3", "n2"));
        let mut g = vec![Group {
            locality: loc("r1/z1"),
            members: vec![(1, 1, Some(&a)), (2, 1, Some(&b)), (3, 1, Some(&c))],
            weight: None,
            priority: 0,
        }];
        let mut v = view("r1/z1");
        v.labels.insert(LABEL_NETWORK.into(), "n1".into());
        v.labels.insert(LABEL_CLUSTER.into(), "c1".into());
        let s = LocalityLbSetting {
            failover_priority: vec![LABEL_NETWORK.into(), LABEL_CLUSTER.into()],
            ..Default::default()
        };
        apply(&mut g, &v, &Mode::Failover(s));
        let got: Vec<(Vec<i32>, u32)> = g
            .iter()
            .map(|g| (g.members.iter().map(|m| m.0).collect(), g.priority))
            .collect();
        assert_eq!(got, [(vec![1], 0), (vec![2], 1), (vec![3], 2)]);
    }
}
