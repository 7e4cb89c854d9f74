//! `/debug/meshz`: the dashboard's Mesh view in one small page: the counts of
//! clusters, services, endpoints and proxies, and per network its member
//! clusters and east-west gateways. The gateways are the ones EDS uses
//! (`MeshSettings::networks` as the registry hands it to a push: the mesh
//! file's `networks` merged with the Services labelled
//! `topology.istio.io/network` discovered in member clusters), so the page
//! shows what `translate::network` routes through.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::model::service::ServiceMap;
use crate::model::MeshSettings;

/// The label of the one flat network (clusters without `network`).
pub const DEFAULT_NETWORK: &str = "";

/// One connected proxy as the page needs it: node id and member cluster.
pub struct ProxyRef<'a> {
    pub id: &'a str,
    pub cluster: &'a str,
}

/// `{"counts": {clusters, services, endpoints, readyEndpoints, proxies},
/// "multiNetwork", "networks": [{name, clusters, endpoints, gateways:
/// [{address, port, cluster, from}], routers}]}`. `clusters` maps each member
/// cluster to its network (from `/debug/clusterz`); `routers` are the connected
/// gateway (`router~`) proxies of the network's clusters.
pub fn page(
    services: &ServiceMap,
    settings: &MeshSettings,
    clusters: &BTreeMap<String, String>,
    proxies: &[ProxyRef<'_>],
) -> Value {
    let (mut endpoints, mut ready) = (0usize, 0usize);
    let mut per_network: BTreeMap<&str, usize> = BTreeMap::new();
    for svc in services.values() {
        for e in svc.endpoints.values().flatten() {
            endpoints += 1;
            ready += usize::from(e.ready && !e.stale);
            *per_network.entry(&e.network).or_default() += 1;
        }
    }
    let mut names: BTreeSet<&str> = clusters.values().map(String::as_str).collect();
    names.extend(settings.networks.keys().map(String::as_str));
    let networks: Vec<Value> = names
        .into_iter()
        .map(|net| {
            let members: Vec<&str> = clusters
                .iter()
                .filter(|(_, n)| n.as_str() == net)
                .map(|(c, _)| c.as_str())
                .collect();
            let gateways: Vec<Value> = settings
                .networks
                .get(net)
                .into_iter()
                .flatten()
                .map(|g| {
                    json!({
                        "address": g.address,
                        "port": g.port,
                        "cluster": g.cluster,
                        "from": if g.cluster.is_some() { "service" } else { "meshFile" },
                    })
                })
                .collect();
            let routers: Vec<&str> = proxies
                .iter()
                .filter(|p| p.id.starts_with("router~") && members.contains(&p.cluster))
                .map(|p| p.id)
                .collect();
            json!({
                "name": net,
                "clusters": members,
                "endpoints": per_network.get(net).copied().unwrap_or(0),
                "gateways": gateways,
                "routers": routers,
            })
        })
        .collect();
    json!({
        "counts": {
            "clusters": clusters.len(),
            "services": services.len(),
            "endpoints": endpoints,
            "readyEndpoints": ready,
            "proxies": proxies.len(),
        },
        // Istio's `IsMultiNetworkEnabled`: some network has a gateway.
        "multiNetwork": settings.networks.values().any(|g| !g.is_empty()),
        "networks": networks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NetworkGateway;

    /// Mesh-file and discovered gateways are listed under their network with
    /// where they come from; a network with clusters and no gateway is listed
    /// with none; routers count for their cluster's network only.
    #[test]
    fn networks_list_their_clusters_and_gateways() {
        let settings = MeshSettings {
            networks: [
                (
                    "vpc-a".to_string(),
                    vec![NetworkGateway {
                        address: "192.0.2.10".into(),
                        port: 15443,
                        cluster: None,
                    }],
                ),
                (
                    "account-b".to_string(),
                    vec![NetworkGateway {
                        address: "198.51.100.7".into(),
                        port: 15443,
                        cluster: Some("cluster3".into()),
                    }],
                ),
            ]
            .into(),
            ..MeshSettings::default()
        };
        let clusters: BTreeMap<String, String> = [
            ("cluster1".into(), "vpc-a".into()),
            ("cluster2".into(), "vpc-a".into()),
            ("cluster3".into(), "account-b".into()),
            ("cluster4".into(), "onprem".into()),
        ]
        .into();
        let proxies = [
            ProxyRef {
                id: "router~10.0.0.1~gw-0.istio-system~istio-system.svc.cluster.local",
                cluster: "cluster2",
            },
            ProxyRef {
                id: "sidecar~10.0.0.2~web-0.shop~shop.svc.cluster.local",
                cluster: "cluster1",
            },
        ];
        let p = page(&ServiceMap::new(), &settings, &clusters, &proxies);
        assert_eq!(p["counts"]["proxies"], 2);
        assert_eq!(p["multiNetwork"], true);
        let net = |n: &str| {
            p["networks"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["name"] == n))
                .cloned()
                .unwrap_or(Value::Null)
        };
        assert_eq!(
            net("account-b")["gateways"],
            json!([{"address": "198.51.100.7", "port": 15443, "cluster": "cluster3", "from": "service"}])
        );
        assert_eq!(net("account-b")["clusters"], json!(["cluster3"]));
        assert_eq!(
            net("vpc-a")["gateways"],
            json!([{"address": "192.0.2.10", "port": 15443, "cluster": null, "from": "meshFile"}])
        );
        assert_eq!(net("vpc-a")["routers"].as_array().map(Vec::len), Some(1));
        assert_eq!(net("onprem")["gateways"], json!([]));
        assert_eq!(net("account-b")["routers"], json!([]));
    }
}
