//! `networking.istio.io` `WorkloadEntry`: one non-Pod workload (a VM, a bare
//! metal host) with an address, labels, locality, network and service account.
//! It is an endpoint of every Kubernetes Service in its namespace whose selector
//! matches its labels (Istio's `serviceregistry/kube/controller` workload entry
//! handler) and of every ServiceEntry whose `workloadSelector` does
//! (`serviceregistry/serviceentry`). The same type is a ServiceEntry's inline
//! `endpoints[]` entry. Types, validation and the conversion to an `Endpoint`;
//! the registry does the selecting (`registry::external`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{ClusterId, Endpoint, Locality};

/// The largest `weight` accepted: `Endpoint::weight` is 16 bits.
pub const MAX_WEIGHT: u32 = u16::MAX as u32;

/// `WorkloadEntry.spec` (also `ServiceEntry.spec.endpoints[]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntry {
    /// An IP address (or, for a DNS ServiceEntry's inline endpoint, a host name).
    #[serde(default)]
    pub address: String,
    /// Port name (of the Service or ServiceEntry port) -> the workload's port.
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The network the workload is on (mesh file `networks`); empty: the
    /// cluster's network.
    #[serde(default)]
    pub network: String,
    /// `region/zone/subzone`.
    #[serde(default)]
    pub locality: String,
    /// The endpoint's load-balancing weight (`LbEndpoint.load_balancing_weight`;
    /// its locality weighs the sum); unset or 0 means 1, as Istio's
    /// `GetLoadBalancingWeight`. Above 65535 rejected (`Endpoint::weight`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default)]
    pub service_account: String,
}

/// `networking.istio.io` `WorkloadSelector` as ServiceEntry uses it (`labels`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Kubernetes' qualified-name check for a label key (`[prefix/]name`).
pub fn valid_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    name_ok && prefix.is_none_or(dns1123_subdomain)
}

/// Kubernetes' label value check (empty allowed).
pub fn valid_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// Kubernetes' `IsDNS1123Subdomain`.
pub fn dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Label problems, as Istio's `labels.Instance.Validate`.
pub fn label_problems(field: &str, labels: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in labels {
        if !valid_label_key(k) {
            out.push((
                format!("{field}.{k}"),
                format!("{k:?} is not a valid label key"),
            ));
        }
        if !valid_label_value(v) {
            out.push((
                format!("{field}.{k}"),
                format!("{v:?} is not a valid label value"),
            ));
        }
    }
    out
}

/// Parse `region/zone/subzone` (trailing parts optional).
pub fn parse_locality(s: &str) -> Locality {
    let mut parts = s.splitn(3, '/').map(str::to_string);
    Locality {
        region: parts.next().unwrap_or_default(),
        zone: parts.next().unwrap_or_default(),
        subzone: parts.next().unwrap_or_default(),
    }
}

impl WorkloadEntry {
    /// Istio's `validateWorkloadEntry`, with the address required to be an IP
    /// unless `hostname_ok` (a DNS ServiceEntry's inline endpoint). `field` is
    /// the path of this entry (`spec`, `spec.endpoints[0]`).
    pub fn problems(&self, field: &str, hostname_ok: bool) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let addr = &self.address;
        if addr.is_empty() {
            out.push((format!("{field}.address"), "address is required".into()));
        } else if addr.starts_with("unix://") {
            out.push((
                format!("{field}.address"),
                format!("{addr:?}: unix domain socket endpoints are not supported by crossmesh"),
            ));
        } else if addr.parse::<IpAddr>().is_err() {
            if !hostname_ok {
                out.push((
                    format!("{field}.address"),
                    format!(
                        "{addr:?} is not an IP address (a host name is only valid for an endpoint of a ServiceEntry with resolution DNS or DNS_ROUND_ROBIN)"
                    ),
                ));
            } else if addr.contains('*') || !dns1123_subdomain(&addr.to_ascii_lowercase()) {
                out.push((
                    format!("{field}.address"),
                    format!("{addr:?} is not a valid FQDN or an IP address"),
                ));
            }
        }
        for (name, port) in &self.ports {
            if name.is_empty() {
                out.push((format!("{field}.ports"), "contains an empty name".into()));
            }
            if *port == 0 || *port > 65535 {
                out.push((
                    format!("{field}.ports.{name}"),
                    format!("port {port} must be between 1 and 65535"),
                ));
            }
        }
        out.extend(label_problems(&format!("{field}.labels"), &self.labels));
        if !self.locality.is_empty() {
            let parts: Vec<&str> = self.locality.split('/').collect();
            if parts.len() > 3 {
                out.push((
                    format!("{field}.locality"),
                    format!("{:?} must use the region/zone/subzone form", self.locality),
                ));
            } else if parts.iter().any(|p| p.is_empty()) {
                out.push((
                    format!("{field}.locality"),
                    format!("{:?} must not contain empty segments", self.locality),
                ));
            }
        }
        if !self.service_account.is_empty() && !dns1123_subdomain(&self.service_account) {
            out.push((
                format!("{field}.serviceAccount"),
                format!(
                    "{:?} is not a valid service account name",
                    self.service_account
                ),
            ));
        }
        if let Some(w) = self.weight.filter(|w| *w > MAX_WEIGHT) {
            out.push((
                format!("{field}.weight"),
                format!("{w} is above {MAX_WEIGHT}, the largest endpoint weight crossmesh keeps"),
            ));
        }
        out
    }

    /// The endpoint this workload gives a service port: the port named after
    /// the service port in `ports`, else `default_port` (the port's
    /// `targetPort`, else its number, as Istio). `None` when the address is not
    /// an IP (validation admits that only for DNS ServiceEntries).
    pub fn endpoint(
        &self,
        port_name: &str,
        default_port: u16,
        cluster: ClusterId,
        workload: Arc<str>,
    ) -> Option<Endpoint> {
        let address: IpAddr = self.address.parse().ok()?;
        let port = match self.ports.get(port_name) {
            Some(p) => u16::try_from(*p).ok()?,
            None => default_port,
        };
        Some(Endpoint {
            address,
            port,
            labels: Arc::new(self.labels.clone()),
            cluster,
            network: Arc::from(self.network.as_str()),
            locality: Arc::new(parse_locality(&self.locality)),
            ready: true,
            workload,
            service_account: Arc::from(self.service_account.as_str()),
            stale: false,
            weight: self.lb_weight(),
        })
    }

    /// The weight Envoy gets: unset or 0 is 1 (Istio's
    /// `IstioEndpoint.GetLoadBalancingWeight`); validation keeps it in 16 bits.
    pub fn lb_weight(&self) -> u16 {
        match self.weight {
            None | Some(0) => 1,
            Some(w) => u16::try_from(w).unwrap_or(u16::MAX),
        }
    }
}

/// The member cluster a config object belongs to, from its `Meta::origin`:
/// `cluster NAME` for objects read from a config cluster's API server,
/// `cluster NAME (agent)` for those its member-cluster agent sends; none
/// (empty) for manifest files.
pub fn origin_cluster(origin: &str) -> ClusterId {
    Arc::from(
        origin
            .strip_prefix("cluster ")
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or(""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_each_bad_field() {
        let we = WorkloadEntry {
            address: "10.0.0.1".into(),
            ports: [("http".to_string(), 70000)].into(),
            labels: [("app".to_string(), "-bad".to_string())].into(),
            locality: "r//z".into(),
            weight: Some(65536),
            ..Default::default()
        };
        let fields: Vec<String> = we
            .problems("spec", false)
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(
            fields,
            vec![
                "spec.ports.http",
                "spec.labels.app",
                "spec.locality",
                "spec.weight"
            ]
        );
        let host = WorkloadEntry {
            address: "vm.example.com".into(),
            ..Default::default()
        };
        assert_eq!(host.problems("spec", false).len(), 1);
        assert!(host.problems("spec", true).is_empty());
    }

    #[test]
    fn weight_is_the_endpoints_and_unset_or_zero_is_one() {
        let mut we = WorkloadEntry {
            address: "10.0.0.1".into(),
            weight: Some(65535),
            ..Default::default()
        };
        assert!(we.problems("spec", false).is_empty());
        let ep = |we: &WorkloadEntry| {
            we.endpoint("http", 80, Arc::from("c1"), Arc::from("ns/vm"))
                .map(|e| e.weight)
        };
        assert_eq!(ep(&we), Some(65535));
        we.weight = Some(3);
        assert_eq!(ep(&we), Some(3));
        we.weight = Some(0);
        assert_eq!(ep(&we), Some(1));
        we.weight = None;
        assert_eq!(ep(&we), Some(1));
    }

    /// `Endpoint` keeps its size for the weight (BENCHMARKS.md counts bytes
    /// per endpoint).
    #[test]
    fn endpoint_size_is_unchanged_by_the_weight() {
        assert_eq!(std::mem::size_of::<Endpoint>(), 104);
    }

    #[test]
    fn endpoint_port_by_name_else_default() {
        let we = WorkloadEntry {
            address: "10.0.0.9".into(),
            ports: [("http".to_string(), 8080)].into(),
            locality: "r1/z1".into(),
            ..Default::default()
        };
        let e = we
            .endpoint("http", 80, Arc::from("c1"), Arc::from("ns/vm"))
            .unwrap();
        assert_eq!((e.port, e.locality.label()), (8080, "r1/z1".to_string()));
        let e = we
            .endpoint("grpc", 9000, Arc::from("c1"), Arc::from("ns/vm"))
            .unwrap();
        assert_eq!(e.port, 9000);
        assert_eq!(&*origin_cluster("cluster c2"), "c2");
        assert_eq!(&*origin_cluster("cluster c3 (agent)"), "c3");
        assert_eq!(&*origin_cluster("istio/x.yaml"), "");
    }
}
