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
