//! A connected proxy's locality from the registry: the Node its Pod runs on, as
//! istiod reads it for a proxy (`pilot/pkg/serviceregistry/kube/controller`:
//! the pod by the proxy's `POD.NS` id, else by its IP; `getPodLocality` from the
//! node's `topology.kubernetes.io/region`/`zone` and `topology.istio.io/subzone`).
//! Read by the push side (`model::push_request::ContextSource::proxy_locality`) when a proxy
//! connects without `node.locality`.

use std::net::IpAddr;

use super::{ObjKey, Registry, Shard};
use crate::model::Locality;

impl Registry {
    /// The locality of the Pod `namespace/name` of member cluster `cluster`
    /// (or, when no Pod has that name, of the one Pod of that cluster whose
    /// `status.podIP` is `ip`): its Node's topology labels, else the cluster's
    /// default locality from the mesh file, the same locality that Pod's
    /// endpoints carry. An empty `cluster` (a proxy without `CLUSTER_ID`) looks
    /// in every cluster in name order and takes the first that has the Pod, as
    /// istiod's aggregate registry does. `None` when no such Pod is known yet,
    /// or its locality is empty.
    ///
    /// The name lookup is a hash lookup; the IP fallback scans the cluster's Pods
    /// (only for a proxy whose Pod name is not found, once per connect) and
    /// answers only when exactly one Pod has that IP (host-network Pods share
    /// their Node's).
    pub fn pod_locality(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
        ip: Option<IpAddr>,
    ) -> Option<Locality> {
        let idx = self.lock();
        let key: ObjKey = (namespace.into(), name.into());
        let found = |shard: &Shard| -> Option<Locality> {
            let pod = shard.pods.get(&key).or_else(|| {
                let ip = ip?;
                let mut same_ip = shard.pods.values().filter(|p| p.ip == Some(ip));
                let only = same_ip.next()?;
                same_ip.next().is_none().then_some(only)
            })?;
            let l = shard.locality_of(pod.node.as_ref());
            let empty = l.region.is_empty() && l.zone.is_empty() && l.subzone.is_empty();
            (!empty).then(|| (*l).clone())
        };
        if cluster.is_empty() {
            idx.shards.values().find_map(found)
        } else {
            idx.shards.get(cluster).and_then(found)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use serde_json::{json, Value};

    use super::super::{Event, KubeObject};
    use super::*;
    use crate::config::{ClusterConfig, ClusterSource, MeshConfig};
    use crate::model::push_request::PushQueue;

    fn registry() -> Arc<Registry> {
        let cluster = |name: &str, locality: Option<&str>| ClusterConfig {
            name: name.into(),
            network: "n".into(),
            source: ClusterSource::Manifests(PathBuf::from(format!("/m/{name}"))),
            locality: locality.map(str::to_string),
        };
        let mesh = MeshConfig {
            clusters: vec![cluster("c1", None), cluster("c2", Some("dr/dz"))],
            ..MeshConfig::default()
        };
        Registry::new(Arc::new(mesh), PushQueue::new())
    }

    fn pod(name: &str, ip: &str, node: &str) -> KubeObject {
        let v = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"nodeName": node, "containers": [{"name": "main"}]},
            "status": {"phase": "Running", "podIP": ip}});
        KubeObject::Pod(serde_json::from_value(v).unwrap())
    }

    fn node(name: &str, labels: Value) -> KubeObject {
        let v = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels}});
        KubeObject::Node(serde_json::from_value(v).unwrap())
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn label(l: Option<Locality>) -> Option<String> {
        l.map(|l| l.label())
    }

    #[test]
    fn pod_by_name_then_by_unique_ip_in_the_proxys_cluster() {
        let r = registry();
        let east = json!({"topology.kubernetes.io/region": "us-east",
            "topology.kubernetes.io/zone": "us-east-1a", "topology.istio.io/subzone": "rack1"});
        r.reset_cluster(
            "c1",
            vec![
                node("n1", east),
                node("n2", json!({"topology.kubernetes.io/region": "eu"})),
                node("bare", json!({})),
                pod("gw", "10.0.0.1", "n1"),
                pod("other", "10.0.0.2", "n2"),
                pod("shared-a", "10.0.0.9", "n1"),
                pod("shared-b", "10.0.0.9", "n2"),
                pod("unlabelled", "10.0.0.3", "bare"),
            ],
        )
        .unwrap();
        r.reset_cluster(
            "c2",
            vec![node("n1", json!({})), pod("gw", "10.1.0.1", "n1")],
        )
        .unwrap();
        // By name, whatever IP the proxy reports.
        assert_eq!(
            label(r.pod_locality("c1", "ns", "gw", ip("10.0.0.2"))).as_deref(),
            Some("us-east/us-east-1a/rack1")
        );
        // The name wins over the IP; the proxy's cluster, not another's.
        assert_eq!(
            label(r.pod_locality("c2", "ns", "gw", ip("10.0.0.1"))).as_deref(),
            Some("dr/dz"),
            "c2's pod gw runs on an unlabelled node: c2's default locality"
        );
        // Unknown name: the one pod with that IP.
        assert_eq!(
            label(r.pod_locality("c1", "ns", "gone", ip("10.0.0.2"))).as_deref(),
            Some("eu")
        );
        // Two pods share the IP: no answer rather than a guess.
        assert_eq!(r.pod_locality("c1", "ns", "gone", ip("10.0.0.9")), None);
        assert_eq!(r.pod_locality("c1", "ns", "gone", None), None);
        // Unlabelled node in a cluster without a default locality: none.
        assert_eq!(r.pod_locality("c1", "ns", "unlabelled", None), None);
        // Other namespace, unknown cluster: none.
        assert_eq!(r.pod_locality("c1", "other", "gw", None), None);
        assert_eq!(r.pod_locality("c9", "ns", "gw", ip("10.0.0.1")), None);
        // No CLUSTER_ID: the first cluster (by name) that has the pod.
        assert_eq!(
            label(r.pod_locality("", "ns", "gw", None)).as_deref(),
            Some("us-east/us-east-1a/rack1")
        );
    }

    #[test]
    fn follows_pod_arrival_and_node_relabelling() {
        let r = registry();
        r.reset_cluster("c1", vec![]).unwrap();
        assert_eq!(r.pod_locality("c1", "ns", "gw", None), None);
        r.apply("c1", Event::Upsert(pod("gw", "10.0.0.1", "n1")))
            .unwrap();
        // The pod's node is not known yet either.
        assert_eq!(r.pod_locality("c1", "ns", "gw", None), None);
        r.apply(
            "c1",
            Event::Upsert(node(
                "n1",
                json!({"topology.kubernetes.io/region": "r", "topology.kubernetes.io/zone": "z"}),
            )),
        )
        .unwrap();
        assert_eq!(
            label(r.pod_locality("c1", "ns", "gw", None)).as_deref(),
            Some("r/z")
        );
        r.apply(
            "c1",
            Event::Upsert(node("n1", json!({"topology.kubernetes.io/region": "r2"}))),
        )
        .unwrap();
        assert_eq!(
            label(r.pod_locality("c1", "ns", "gw", None)).as_deref(),
            Some("r2")
        );
    }
}
