//! `/debug/registryz` (DESIGN.md §4): the merged services as the registry hands
//! them to a push, each with its endpoints grouped by member cluster (locality,
//! labels, readiness, and the service port each endpoint serves).

use serde_json::{json, Map, Value};

use crate::model::service::ServiceMap;

/// The page: `{"services": [{hostname, namespace, name, ports, clusters,
/// endpoints: {CLUSTER: [endpoint + service_port]}}]}`, services by hostname.
pub fn page(services: &ServiceMap) -> Value {
    let list: Vec<Value> = services
        .values()
        .map(|svc| {
            let mut by_cluster = Map::new();
            for (port, eps) in &svc.endpoints {
                for ep in eps {
                    let mut e = to_json(ep);
                    e["service_port"] = json!(port);
                    let entry = by_cluster
                        .entry(ep.cluster.to_string())
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(a) = entry {
                        a.push(e);
                    }
                }
            }
            json!({
                "hostname": svc.hostname,
                "namespace": svc.namespace,
                "name": svc.name,
                "ports": svc.ports,
                "clusters": svc.clusters,
                "endpoints": by_cluster,
            })
        })
        .collect();
    json!({ "services": list })
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_else(|e| json!({ "error": e.to_string() }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::service::{Endpoint, Locality, Protocol, Service, ServicePort};

    fn ep(ip: &str, cluster: &str, port: u16) -> Endpoint {
        Endpoint {
            address: ip.parse().unwrap(),
            port,
            labels: Arc::default(),
            cluster: cluster.into(),
            network: "".into(),
            locality: Arc::new(Locality::default()),
            ready: true,
            workload: "ns/pod".into(),
            service_account: "default".into(),
            stale: false,
            weight: 1,
        }
    }

    /// Endpoints are grouped under their own cluster, each naming the service port
    /// it serves (not its target port).
    #[test]
    fn endpoints_grouped_by_cluster_with_service_port() {
        let svc = Service {
            hostname: "web.ns.svc.cluster.local".into(),
            namespace: "ns".into(),
            name: "web".into(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
                protocol: Protocol::Http,
            }],
            endpoints: [(
                80,
                vec![
                    ep("10.0.0.1", "cluster1", 8080),
                    ep("10.0.1.1", "cluster2", 8080),
                    ep("10.0.0.2", "cluster1", 8080),
                ],
            )]
            .into(),
            clusters: vec!["cluster1".into(), "cluster2".into()],
        };
        let services: ServiceMap = [(svc.hostname.clone(), Arc::new(svc))].into();
        let page = page(&services);
        let s = &page["services"][0];
        assert_eq!(s["hostname"], "web.ns.svc.cluster.local");
        let addrs = |c: &str| -> Vec<String> {
            s["endpoints"][c]
                .as_array()
                .map(|a| a.iter().map(|e| e["address"].to_string()).collect())
                .unwrap_or_default()
        };
        assert_eq!(addrs("cluster1"), ["\"10.0.0.1\"", "\"10.0.0.2\""]);
        assert_eq!(addrs("cluster2"), ["\"10.0.1.1\""]);
        assert_eq!(s["endpoints"]["cluster2"][0]["service_port"], 80);
        assert_eq!(s["endpoints"]["cluster2"][0]["port"], 8080);
    }
}
