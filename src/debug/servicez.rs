//! `/debug/servicez`: the dashboard's Services view in one request, computed from
//! the registry's current view (the same `ServiceMap` and `ConfigSnapshot` a push
//! freezes) and the connections' sent clusters.
//!
//! - `?host=HOST[&from=NAMESPACE]`: one service: its registry entry (as on
//!   `/debug/registryz`), the VirtualServices and DestinationRules whose hosts
//!   name it, with Istio's host matching as translation applies it, and the
//!   connected proxies that were sent a cluster of it.
//! - no `host`: the service list, `?filter=TEXT` (hostname substring) and
//!   `?limit=N` (default [`DEFAULT_LIMIT`]), with per service its clusters and
//!   endpoint counts, not the endpoints.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::model::istio::{
    exported_to, host_matches, labels_match, resolve_gateway_name, ConfigSnapshot, MESH_GATEWAY,
};
use crate::model::service::{Service, ServiceMap};

/// Services listed without `limit`: enough for a page, little enough to render.
pub const DEFAULT_LIMIT: usize = 500;

/// The service list: `{"total", "matched", "services": [{hostname, namespace,
/// clusters, endpoints, ready}]}`, by hostname, at most `limit` of those whose
/// hostname contains `filter`.
pub fn list(services: &ServiceMap, filter: &str, limit: usize) -> Value {
    let filter = filter.to_ascii_lowercase();
    let matched: Vec<&Arc<Service>> = services
        .values()
        .filter(|s| s.hostname.contains(filter.as_str()))
        .collect();
    let shown: Vec<Value> = matched
        .iter()
        .take(limit)
        .map(|s| {
            let eps = s.endpoints.values().flatten();
            let (mut n, mut ready) = (0usize, 0usize);
            for e in eps {
                n += 1;
                ready += usize::from(e.ready && !e.stale);
            }
            json!({
                "hostname": s.hostname,
                "namespace": s.namespace,
                "clusters": s.clusters,
                "endpoints": n,
                "ready": ready,
            })
        })
        .collect();
    json!({ "total": services.len(), "matched": matched.len(), "services": shown })
}

/// Where a VirtualService applies to `host`, as translation decides it: on
/// sidecars (`mesh`) when one of its hosts, resolved in its namespace (short
/// names are services of that namespace), is exactly `host`
/// (`translate::sidecar` keys routes by resolved host; a wildcard host is a
/// virtual host of its own, which a service's own, more specific one wins
/// over); on a gateway when a resolved host and `host` intersect, wildcards
/// included (`translate::gateway`). Each entry: the gateway (`mesh` or
/// `ns/name`) and the VirtualService host that matched.
fn vs_applies(
    config: &ConfigSnapshot,
    vs: &crate::model::istio::Config<crate::model::istio::VirtualService>,
    host: &str,
) -> Vec<(String, String)> {
    let gateways: Vec<String> = if vs.spec.gateways.is_empty() {
        vec![MESH_GATEWAY.to_string()]
    } else {
        vs.spec
            .gateways
            .iter()
            .map(|g| resolve_gateway_name(g, &vs.meta.namespace))
            .collect()
    };
    let mut out = Vec::new();
    for g in gateways {
        for h in &vs.spec.hosts {
            let resolved = config.resolve_host(h, &vs.meta.namespace);
            let hit = if g == MESH_GATEWAY {
                resolved == host
            } else {
                host_matches(&resolved, host) || host_matches(host, &resolved)
            };
            if hit {
                out.push((g.clone(), resolved));
                break;
            }
        }
    }
    out
}

/// The VirtualServices naming `host` in their hosts or sending to it (a route,
/// mirror, TCP or TLS destination resolved in their namespace, as
/// `translate::route::referenced_hosts` reads them), in Istio order, each with
/// where it applies, whether it routes to `host`, and whether a proxy in
/// `from` sees it (`exportTo`).
fn virtual_services(config: &ConfigSnapshot, host: &str, from: &str) -> Vec<Value> {
    config
        .virtual_services
        .iter()
        .filter_map(|vs| {
            let applies = vs_applies(config, vs, host);
            let routes_to = vs
                .spec
                .destinations()
                .any(|d| config.resolve_host(&d.host, &vs.meta.namespace) == host);
            if applies.is_empty() && !routes_to {
                return None;
            }
            Some(json!({
                "namespace": vs.meta.namespace,
                "name": vs.meta.name,
                "origin": vs.meta.origin,
                "appliesTo": applies.iter().map(|(g, h)| json!({"gateway": g, "host": h})).collect::<Vec<_>>(),
                "routesTo": routes_to,
                "exportTo": vs.spec.export_to,
                "visible": exported_to(&vs.spec.export_to, &vs.meta.namespace, from),
            }))
        })
        .collect()
}

/// The DestinationRules whose host (resolved in the rule's namespace, exact or
/// wildcard) covers `host`, each with whether it is in force for a proxy in
/// `from` (`ConfigSnapshot::destination_rule`: exact host over wildcard, then
/// the proxy's namespace, the service's, the root namespace; `exportTo`), and
/// the subsets of the rule in force with how many of `svc`'s endpoints each
/// selects.
fn destination_rules(
    config: &ConfigSnapshot,
    host: &str,
    service_ns: &str,
    from: &str,
    svc: Option<&Service>,
) -> Value {
    let effective = config.destination_rule(from, host, service_ns);
    let in_force: Vec<String> = effective
        .as_ref()
        .map(|e| e.sources.clone())
        .unwrap_or_default();
    let rules: Vec<Value> = config
        .destination_rules
        .iter()
        .filter_map(|dr| {
            let resolved = config.resolve_host(&dr.spec.host, &dr.meta.namespace);
            if !host_matches(&resolved, host) {
                return None;
            }
            let key = dr.meta.key();
            Some(json!({
                "namespace": dr.meta.namespace,
                "name": dr.meta.name,
                "origin": dr.meta.origin,
                "host": resolved,
                "exportTo": dr.spec.export_to,
                "visible": exported_to(&dr.spec.export_to, &dr.meta.namespace, from),
                "inForce": in_force.contains(&key),
                "subsets": dr.spec.subsets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            }))
        })
        .collect();
    let subsets: Vec<Value> = effective
        .as_ref()
        .map(|e| {
            e.subsets
                .iter()
                .map(|s| {
                    let mut per_cluster: BTreeMap<&str, usize> = BTreeMap::new();
                    for ep in svc.iter().flat_map(|s| s.endpoints.values().flatten()) {
                        if labels_match(&s.labels, &ep.labels) {
                            *per_cluster.entry(&ep.cluster).or_default() += 1;
                        }
                    }
                    json!({ "name": s.name, "labels": s.labels, "endpoints": per_cluster })
                })
                .collect()
        })
        .unwrap_or_default();
    json!({ "inForce": in_force, "rules": rules, "subsets": subsets })
}

/// Which of `proxies` were sent a cluster of `host` (Istio's
/// `outbound|PORT|SUBSET|HOST` and `inbound|PORT||HOST`), with those names.
pub fn receivers(host: &str, state: &dyn super::DebugState) -> Vec<Value> {
    let of_host = |n: &str| n.rsplit('|').next() == Some(host);
    state
        .sent_clusters(&of_host)
        .into_iter()
        .map(|(id, clusters)| json!({ "proxy_id": id, "clusters": clusters }))
        .collect()
}

/// One service: `{"host", "from", "service" (the `/debug/registryz` entry, or
/// null), "virtualServices", "destinationRules": {inForce, rules, subsets}}`.
/// `from` is the client namespace visibility is judged for (default: the
/// service's own namespace, else the host's second label).
pub fn one(
    services: &ServiceMap,
    config: &ConfigSnapshot,
    host: &str,
    from: Option<&str>,
) -> Value {
    let host = host.to_ascii_lowercase();
    let svc = services.get(host.as_str());
    let service_ns = svc
        .map(|s| s.namespace.clone())
        .or_else(|| host.split('.').nth(1).map(String::from))
        .unwrap_or_default();
    let from = from
        .filter(|f| !f.is_empty())
        .map(String::from)
        .unwrap_or_else(|| service_ns.clone());
    let entry = svc.map(|s| {
        let one: ServiceMap = [(s.hostname.clone(), s.clone())].into();
        super::registryz::page(&one)["services"][0].clone()
    });
    json!({
        "host": host,
        "from": from,
        "service": entry,
        "virtualServices": virtual_services(config, &host, &from),
        "destinationRules": destination_rules(config, &host, &service_ns, &from, svc.map(|s| &**s)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::istio::parse_object;
    use crate::model::service::{Endpoint, Locality, Protocol, ServicePort};

    fn snapshot(docs: &[Value]) -> ConfigSnapshot {
        ConfigSnapshot::new(
            "cluster.local",
            docs.iter()
                .map(|d| parse_object("test.yaml", d).expect("valid object")),
        )
    }

    fn vs(ns: &str, name: &str, hosts: &[&str], extra: Value) -> Value {
        let mut spec = json!({"hosts": hosts, "http": [{"route": [{"destination": {"host": "backend.shop.svc.cluster.local"}}]}]});
        if let (Some(s), Some(x)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(x.clone());
        }
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": ns}, "spec": spec})
    }

    fn dr(ns: &str, name: &str, host: &str, extra: Value) -> Value {
        let mut spec = json!({"host": host});
        if let (Some(s), Some(x)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(x.clone());
        }
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": ns}, "spec": spec})
    }

    fn ep(ip: &str, cluster: &str, version: &str) -> Endpoint {
        Endpoint {
            address: ip.parse().unwrap(),
            port: 8080,
            labels: Arc::new([("version".to_string(), version.to_string())].into()),
            cluster: cluster.into(),
            network: "".into(),
            locality: Arc::new(Locality::default()),
            ready: true,
            workload: "web/pod".into(),
            service_account: "default".into(),
            stale: false,
            weight: 1,
        }
    }

    fn services() -> ServiceMap {
        let svc = Service {
            hostname: "web.shop.svc.cluster.local".into(),
            namespace: "shop".into(),
            name: "web".into(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
                protocol: Protocol::Http,
            }],
            endpoints: [(
                80,
                vec![
                    ep("10.0.0.1", "cluster1", "v1"),
                    ep("10.0.1.1", "cluster2", "v2"),
                    ep("10.0.1.2", "cluster2", "v2"),
                ],
            )]
            .into(),
            clusters: vec!["cluster1".into(), "cluster2".into()],
        };
        [(svc.hostname.clone(), Arc::new(svc))].into()
    }

    fn names(list: &Value) -> Vec<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["namespace"].as_str().unwrap(),
                    o["name"].as_str().unwrap()
                )
            })
            .collect()
    }

    /// A short host resolves in the VirtualService's own namespace: `web` in
    /// `shop` names this service, `web` in `other` names `web.other`, though
    /// both objects' text contains "web"; an FQDN from another namespace does
    /// apply, and its `exportTo: ["."]` hides it from `shop`.
    #[test]
    fn virtual_services_match_hosts_as_translation_resolves_them() {
        let config = snapshot(&[
            vs("shop", "short-here", &["web"], json!({})),
            vs("other", "short-elsewhere", &["web"], json!({})),
            vs(
                "other",
                "fqdn-private",
                &["web.shop.svc.cluster.local"],
                json!({"exportTo": ["."]}),
            ),
            vs("shop", "unrelated", &["webshop"], json!({})),
            vs(
                "istio-system",
                "edge",
                &["*.shop.svc.cluster.local"],
                json!({"gateways": ["ingress"]}),
            ),
            vs(
                "istio-system",
                "public",
                &["shop.example.com"],
                json!({"gateways": ["ingress"],
                    "http": [{"route": [{"destination": {"host": "web.shop.svc.cluster.local"}}]}]}),
            ),
            vs(
                "other",
                "to-short",
                &["api.example.com"],
                json!({"gateways": ["ingress"],
                    "http": [{"route": [{"destination": {"host": "web"}}]}]}),
            ),
            vs(
                "shop",
                "mesh-wildcard",
                &["*.shop.svc.cluster.local"],
                json!({}),
            ),
        ]);
        let page = one(&services(), &config, "web.shop.svc.cluster.local", None);
        assert_eq!(page["from"], "shop");
        let got = &page["virtualServices"];
        // Istio order: creation time, then name. `to-short` routes to
        // `web.other`, `public` to this service by FQDN.
        assert_eq!(
            names(got),
            [
                "istio-system/edge",
                "other/fqdn-private",
                "istio-system/public",
                "shop/short-here"
            ]
        );
        assert_eq!(got[2]["appliesTo"], json!([]));
        assert_eq!(
            (got[2]["routesTo"].as_bool(), got[0]["routesTo"].as_bool()),
            (Some(true), Some(false))
        );
        let got = &json!([got[0], got[1], got[3]]);
        assert_eq!(
            got[2]["appliesTo"],
            json!([{"gateway": "mesh", "host": "web.shop.svc.cluster.local"}])
        );
        assert_eq!(
            (got[2]["visible"].as_bool(), got[1]["visible"].as_bool()),
            (Some(true), Some(false))
        );
        assert_eq!(
            got[0]["appliesTo"],
            json!([{"gateway": "istio-system/ingress", "host": "*.shop.svc.cluster.local"}])
        );
        // Seen from `other`, the private FQDN rule is visible.
        let page = one(
            &services(),
            &config,
            "web.shop.svc.cluster.local",
            Some("other"),
        );
        assert_eq!(page["virtualServices"][1]["visible"], true);
    }

    /// A wildcard rule covers the service; an exact rule wins over it, and a
    /// rule in the client's namespace over the service's; the subsets of the
    /// rule in force count the endpoints they select per cluster.
    #[test]
    fn destination_rules_follow_wildcards_namespaces_and_subsets() {
        let subsets = json!({"subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}}]});
        let wildcard = dr(
            "shop",
            "all-shop",
            "*.shop.svc.cluster.local",
            subsets.clone(),
        );
        let config = snapshot(&[
            wildcard.clone(),
            dr(
                "shop",
                "elsewhere",
                "web.other.svc.cluster.local",
                json!({}),
            ),
        ]);
        let page = one(&services(), &config, "web.shop.svc.cluster.local", None);
        let d = &page["destinationRules"];
        assert_eq!(names(&d["rules"]), ["shop/all-shop"]);
        assert_eq!(d["inForce"], json!(["shop/all-shop"]));
        assert_eq!(d["rules"][0]["host"], "*.shop.svc.cluster.local");
        assert_eq!(d["subsets"][0]["endpoints"], json!({"cluster1": 1}));
        assert_eq!(d["subsets"][1]["endpoints"], json!({"cluster2": 2}));

        // An exact short-name rule in the service's namespace wins over the wildcard.
        let config = snapshot(&[wildcard.clone(), dr("shop", "exact", "web", json!({}))]);
        let page = one(&services(), &config, "web.shop.svc.cluster.local", None);
        let d = &page["destinationRules"];
        assert_eq!(names(&d["rules"]), ["shop/all-shop", "shop/exact"]);
        assert_eq!(d["inForce"], json!(["shop/exact"]));
        assert_eq!(d["rules"][0]["inForce"], false);
        assert_eq!(d["subsets"], json!([]));

        // A client namespace's own rule wins for its proxies.
        let config = snapshot(&[
            wildcard,
            dr(
                "client",
                "mine",
                "web.shop.svc.cluster.local",
                json!({"exportTo": ["."]}),
            ),
        ]);
        let from_client = one(
            &services(),
            &config,
            "web.shop.svc.cluster.local",
            Some("client"),
        );
        assert_eq!(
            from_client["destinationRules"]["inForce"],
            json!(["client/mine"])
        );
        let from_shop = one(&services(), &config, "web.shop.svc.cluster.local", None);
        assert_eq!(
            from_shop["destinationRules"]["inForce"],
            json!(["shop/all-shop"])
        );
        assert_eq!(from_shop["destinationRules"]["rules"][1]["visible"], false);
    }

    #[test]
    fn list_filters_limits_and_counts() {
        let page = list(&services(), "WEB", 10);
        assert_eq!(
            (page["total"].as_u64(), page["matched"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(page["services"][0]["endpoints"], 3);
        assert_eq!(
            page["services"][0]["clusters"],
            json!(["cluster1", "cluster2"])
        );
        let page = list(&services(), "nope", 10);
        assert_eq!(
            (
                page["matched"].as_u64(),
                page["services"].as_array().map(Vec::len)
            ),
            (Some(0), Some(0))
        );
        let page = list(&services(), "", 0);
        assert_eq!(
            (
                page["matched"].as_u64(),
                page["services"].as_array().map(Vec::len)
            ),
            (Some(1), Some(0))
        );
    }
}
