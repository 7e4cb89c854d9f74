//! ServiceEntries and WorkloadEntries in the merged service view: the Istio
//! config store holds them (they are Istio kinds, read from manifest
//! directories and config clusters), the endpoint index holds the Kubernetes
//! Services and Pods they refer to; `overlay` joins the two into the
//! `ServiceMap` pushes and `/debug/registryz` read.
//!
//! - A WorkloadEntry is an endpoint of each Kubernetes Service in its namespace
//!   whose selector matches its labels, in every cluster that declares the
//!   Service (Istio's kube controller `WorkloadEntry` handler), next to the Pods.
//! - A ServiceEntry adds one service per host (`model::istio::service_entry`);
//!   its `workloadSelector` selects Pods (from every cluster) and
//!   WorkloadEntries of its namespace. A Kubernetes Service with the same
//!   hostname wins; among ServiceEntries the oldest declaring a host wins
//!   (`ConfigSnapshot::service_entry`).
//!
//! A WorkloadEntry or ServiceEntry read from cluster X's config belongs to
//! cluster X (its endpoints carry X, and X's network unless they name one);
//! one from a manifest file belongs to no cluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::endpoints::{self, TargetPort};
use super::Index;
use crate::model::istio::service_entry::{self, SelectedWorkload};
use crate::model::istio::workload_entry::origin_cluster;
use crate::model::istio::{Config, ConfigSnapshot};
use crate::model::service::ServiceMap;
use crate::model::{Endpoint, Service};

impl Index {
    /// The network of a registered cluster (empty when unknown or none).
    fn network_of(&self, cluster: &str) -> Arc<str> {
        self.shards
            .get(cluster)
            .map(|s| s.meta.network.clone())
            .unwrap_or_else(|| Arc::from(""))
    }

    /// `base` with the WorkloadEntries joined to the Kubernetes Services that
    /// select them and the ServiceEntries' services added.
    pub(super) fn overlay(
        &self,
        base: &ServiceMap,
        config: &ConfigSnapshot,
        domain_suffix: &str,
    ) -> ServiceMap {
        let mut out = base.clone();
        // WorkloadEntries as endpoints of selecting Kubernetes Services.
        let mut added: BTreeMap<Arc<str>, Vec<(u16, Endpoint)>> = BTreeMap::new();
        for we in &config.workload_entries {
            let ns = we.meta.namespace.as_str();
            let cluster = origin_cluster(&we.meta.origin);
            let network = if we.spec.network.is_empty() {
                self.network_of(&cluster)
            } else {
                Arc::from(we.spec.network.as_str())
            };
            let workload: Arc<str> = Arc::from(format!("{ns}/{}", we.meta.name));
            // One declaration per hostname (the first cluster by name): the
            // ports and selector of a Service are meant to agree across clusters.
            let mut seen = std::collections::BTreeSet::new();
            for shard in self.shards.values() {
                for (key, svc) in &shard.services {
                    if &*key.0 != ns {
                        continue;
                    }
                    let Some(sel) = &svc.selector else { continue };
                    if !endpoints::selects(sel, &we.spec.labels) {
                        continue;
                    }
                    let host = Self::hostname(domain_suffix, key);
                    if !seen.insert(host.clone()) {
                        continue;
                    }
                    for p in &svc.ports {
                        let target = match we.spec.ports.get(&*p.name) {
                            Some(n) => u16::try_from(*n).ok(),
                            None => match &p.target {
                                TargetPort::Number(n) => Some(*n),
                                TargetPort::Named(n) => {
                                    we.spec.ports.get(&**n).and_then(|n| u16::try_from(*n).ok())
                                }
                            },
                        };
                        let Some(target) = target else { continue };
                        if let Some(mut e) =
                            we.spec
                                .endpoint(&p.name, target, cluster.clone(), workload.clone())
                        {
                            e.network = network.clone();
                            added.entry(host.clone()).or_default().push((p.port, e));
                        }
                    }
                }
            }
        }
        for (host, eps) in added {
            let Some(svc) = out.get_mut(&host) else {
                continue;
            };
            let svc = Arc::make_mut(svc);
            for (port, e) in eps {
                svc.endpoints.entry(port).or_default().push(e);
            }
            sort_endpoints(svc);
        }
        service_entry::add_services(&mut out, config, |se, selector| {
            self.selected_workloads(se, selector, config)
        });
        out
    }

    /// The Pods (every cluster) and WorkloadEntries in `se`'s namespace whose
    /// labels include `selector`.
    fn selected_workloads(
        &self,
        se: &Config<crate::model::istio::ServiceEntry>,
        selector: &BTreeMap<String, String>,
        config: &ConfigSnapshot,
    ) -> Vec<SelectedWorkload> {
        let ns = se.meta.namespace.as_str();
        let mut out = Vec::new();
        for shard in self.shards.values() {
            for (key, pod) in &shard.pods {
                if &*key.0 != ns || !endpoints::selects(selector, &pod.labels) {
                    continue;
                }
                let Some(ip) = pod.ip else { continue };
                out.push(SelectedWorkload {
                    endpoint: Endpoint {
                        address: ip,
                        port: 0,
                        labels: pod.labels.clone(),
                        cluster: shard.meta.name.clone(),
                        network: shard.meta.network.clone(),
                        locality: shard.locality_of(pod.node.as_ref()),
                        ready: pod.ready,
                        workload: Arc::from(format!("{}/{}", key.0, key.1)),
                        service_account: pod.service_account.clone(),
                        stale: shard.state.stale,
                        weight: 1,
                    },
                    named_ports: pod
                        .named_ports
                        .iter()
                        .map(|(n, p)| (n.to_string(), *p))
                        .collect(),
                });
            }
        }
        for mut w in service_entry::selected_entries(config, ns, selector) {
            if w.endpoint.network.is_empty() {
                w.endpoint.network = self.network_of(&w.endpoint.cluster);
            }
            out.push(w);
        }
        out
    }
}

/// The registry's endpoint order: (cluster, address, port), one entry each.
fn sort_endpoints(svc: &mut Service) {
    for eps in svc.endpoints.values_mut() {
        eps.sort_by(|a, b| (&a.cluster, a.address, a.port).cmp(&(&b.cluster, b.address, b.port)));
        eps.dedup_by(|a, b| a.cluster == b.cluster && a.address == b.address && a.port == b.port);
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::super::config::RawDoc;
    use super::super::{Event, KubeObject, Registry};
    use crate::config::{ClusterConfig, ClusterSource, MeshConfig};
    use crate::model::push_request::PushQueue;
    use crate::model::service::ServiceMap;
    use std::sync::Arc;

    fn registry() -> (Arc<Registry>, PushQueue) {
        let cluster = |name: &str, network: &str| ClusterConfig {
            name: name.into(),
            network: network.into(),
            source: ClusterSource::Manifests(PathBuf::from(format!("/m/{name}"))),
            locality: None,
        };
        let mesh = MeshConfig {
            clusters: vec![cluster("c1", "net1"), cluster("c2", "net2")],
            ..MeshConfig::default()
        };
        let q = PushQueue::new();
        (Registry::new(Arc::new(mesh), q.clone()), q)
    }

    fn obj(v: serde_json::Value) -> KubeObject {
        match v["kind"].as_str() {
            Some("Service") => KubeObject::Service(serde_json::from_value(v).unwrap()),
            _ => KubeObject::Pod(serde_json::from_value(v).unwrap()),
        }
    }

    fn pod(name: &str, ip: &str, labels: serde_json::Value) -> KubeObject {
        obj(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "labels": labels},
            "spec": {"containers": [{"name": "main", "ports": [{"name": "http", "containerPort": 9090}]}]},
            "status": {"phase": "Running", "podIP": ip,
                "conditions": [{"type": "Ready", "status": "True"}]}}))
    }

    fn config(r: &Registry, source: &str, origin: &str, yaml: &str) {
        let docs = yaml
            .split("\n---\n")
            .map(|d| RawDoc {
                origin: origin.into(),
                value: serde_saphyr::from_str(d).unwrap(),
            })
            .collect();
        r.replace_config_source(source, docs);
    }

    /// (cluster, network, address, port, locality) of `host`'s endpoints on `port`.
    fn eps(s: &ServiceMap, host: &str, port: u16) -> Vec<(String, String, String, u16, String)> {
        s.get(host)
            .and_then(|s| s.endpoints.get(&port))
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e.cluster.to_string(),
                    e.network.to_string(),
                    e.address.to_string(),
                    e.port,
                    e.locality.label(),
                )
            })
            .collect()
    }

    const WE: &str = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: shop}
spec:
  address: 10.9.0.1
  labels: {app: web}
  locality: r9/z9";

    #[test]
    fn a_workload_entry_joins_the_services_selecting_it_in_its_cluster() {
        let (r, _q) = registry();
        let web = obj(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}));
        r.reset_cluster(
            "c1",
            vec![web, pod("web-0", "10.0.0.1", json!({"app": "web"}))],
        )
        .unwrap();
        // Read from cluster c2's config: it belongs to c2 and c2's network.
        config(&r, "cluster:c2", "cluster c2", WE);
        let s = r.services();
        let host = "web.shop.svc.cluster.local";
        assert_eq!(
            eps(&s, host, 80),
            vec![
                (
                    "c1".into(),
                    "net1".into(),
                    "10.0.0.1".into(),
                    8080,
                    String::new()
                ),
                (
                    "c2".into(),
                    "net2".into(),
                    "10.9.0.1".into(),
                    8080,
                    "r9/z9".into()
                ),
            ]
        );
        // Not selected any more: gone.
        config(
            &r,
            "cluster:c2",
            "cluster c2",
            &WE.replace("app: web", "app: db"),
        );
        assert_eq!(eps(&r.services(), host, 80).len(), 1);
    }

    #[test]
    fn a_service_entry_selects_pods_and_workload_entries_and_follows_pod_changes() {
        let (r, q) = registry();
        let se = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web-ext, namespace: shop}
spec:
  hosts: [web.example]
  location: MESH_INTERNAL
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: 8000}
  resolution: STATIC
  workloadSelector:
    labels: {app: web}";
        config(
            &r,
            "manifests:istio",
            "istio/se.yaml",
            &format!("{se}\n---\n{WE}"),
        );
        r.reset_cluster("c1", vec![pod("web-0", "10.0.0.1", json!({"app": "web"}))])
            .unwrap();
        while q.try_take().is_some() {}
        // The Pod at its container port named after the service port; the
        // WorkloadEntry (from a manifest file: no cluster) at targetPort.
        assert_eq!(
            eps(&r.services(), "web.example", 80),
            vec![
                (
                    String::new(),
                    String::new(),
                    "10.9.0.1".into(),
                    8000,
                    "r9/z9".into()
                ),
                (
                    "c1".into(),
                    "net1".into(),
                    "10.0.0.1".into(),
                    9090,
                    String::new()
                ),
            ]
        );
        // A new Pod no Kubernetes Service selects still changes the entry's
        // endpoints: an EDS push for its host, and a fresh view.
        r.apply(
            "c1",
            Event::Upsert(pod("web-1", "10.0.0.2", json!({"app": "web"}))),
        )
        .unwrap();
        let req = q.try_take().expect("a push");
        assert!(!req.full);
        assert!(req.services.contains("web.example"), "{req:?}");
        assert_eq!(eps(&r.services(), "web.example", 80).len(), 3);
        // A Pod of another namespace pushes nothing for it.
        let mut other = pod("db-0", "10.0.0.9", json!({"app": "web"}));
        if let KubeObject::Pod(p) = &mut other {
            p.metadata.namespace = Some("other".into());
        }
        r.apply("c1", Event::Upsert(other)).unwrap();
        assert_eq!(q.try_take(), None);
    }

    #[test]
    fn a_kubernetes_service_keeps_its_hostname_and_the_oldest_entry_wins() {
        let (r, _q) = registry();
        let web = obj(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}}));
        r.reset_cluster("c1", vec![web]).unwrap();
        let entry = |name: &str, ts: &str, host: &str, ip: &str| {
            format!(
                "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: shop, creationTimestamp: '{ts}'}}
spec:
  hosts: [{host}]
  ports:
  - {{number: 80, name: http}}
  resolution: STATIC
  endpoints:
  - {{address: {ip}}}"
            )
        };
        let yaml = [
            entry("new", "2024-01-02T00:00:00Z", "a.example", "10.0.0.2"),
            entry("old", "2024-01-01T00:00:00Z", "a.example", "10.0.0.1"),
            entry(
                "k8s",
                "2024-01-01T00:00:00Z",
                "web.shop.svc.cluster.local",
                "10.0.0.3",
            ),
        ]
        .join("\n---\n");
        config(&r, "manifests:istio", "istio/se.yaml", &yaml);
        let s = r.services();
        assert_eq!(eps(&s, "a.example", 80)[0].2, "10.0.0.1");
        assert!(eps(&s, "web.shop.svc.cluster.local", 80).is_empty());
        // Translation does not take the Kubernetes Service for the entry's.
        let config = r.config_store().snapshot();
        let k8s = &s["web.shop.svc.cluster.local"];
        assert!(config.service_entry(&k8s.hostname).is_some());
        assert!(config.service_entry_of(k8s).is_none());
        assert!(config.service_entry_of(&s["a.example"]).is_some());
    }
}
