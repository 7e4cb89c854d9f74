//! `networking.istio.io` `ServiceEntry`: services outside the Kubernetes
//! registries (external APIs, VMs) added to the mesh's service view. Each host
//! becomes one `Service` (Istio's `serviceentry/conversion.go`
//! `convertServices`), so DestinationRules and VirtualServices apply to it as to
//! a Kubernetes Service; its endpoints are the inline `endpoints` (STATIC), the
//! Pods and WorkloadEntries its `workloadSelector` selects (the registry does the
//! selecting, `registry::external`), or DNS names Envoy resolves itself (DNS,
//! DNS_ROUND_ROBIN: `translate::service_entry`). Validation is Istio's
//! `ValidateServiceEntry`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::workload_entry::{label_problems, origin_cluster, LabelSelector, WorkloadEntry};
use super::Config;
use crate::model::{Endpoint, Protocol, Service, ServicePort};

/// `ServiceEntry.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntry {
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Virtual IPs or CIDRs of the service.
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServiceEntryPort>,
    #[serde(default)]
    pub location: Location,
    #[serde(default)]
    pub resolution: Resolution,
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<LabelSelector>,
    #[serde(default)]
    pub export_to: Vec<String>,
    /// SANs the server certificate must carry when the client originates
    /// Istio mTLS to this service.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

/// `ServiceEntry.Location`; Istio's default is `MESH_EXTERNAL`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    #[default]
    MeshExternal,
    MeshInternal,
}

/// `ServiceEntry.Resolution`; Istio's default is `NONE`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Connect to the original destination (the address the application dialled).
    #[default]
    None,
    /// The endpoints' IPs, through EDS.
    Static,
    /// Envoy resolves the endpoint (or host) names, every address is a host
    /// (`STRICT_DNS`).
    Dns,
    /// Envoy resolves one name and connects to the first address (`LOGICAL_DNS`).
    DnsRoundRobin,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::None => "NONE",
            Resolution::Static => "STATIC",
            Resolution::Dns => "DNS",
            Resolution::DnsRoundRobin => "DNS_ROUND_ROBIN",
        }
    }

    fn dns(self) -> bool {
        matches!(self, Resolution::Dns | Resolution::DnsRoundRobin)
    }
}

/// `ServiceEntry.ports[]` (`networking.istio.io` `ServicePort`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntryPort {
    pub number: u32,
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// Istio's protocol names (`protocol.Parse`, case-insensitive); `UDP` is known to
/// Istio but not served by crossmesh.
const PROTOCOLS: [&str; 10] = [
    "HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "MYSQL", "REDIS", "TCP", "TLS",
];

impl ServiceEntryPort {
    /// The port's protocol: `protocol`, else the name's prefix (Istio's
    /// sniffing stand-in, treated as TCP by sidecars).
    pub fn protocol(&self) -> Protocol {
        if self.protocol.is_empty() {
            Protocol::from_port(&self.name, None)
        } else {
            Protocol::from_port(&self.protocol, None)
        }
    }

    /// The port endpoints listen on unless they name their own: `targetPort`,
    /// else the service port.
    pub fn default_target(&self) -> u16 {
        self.target_port
            .filter(|p| *p > 0)
            .unwrap_or(self.number)
            .try_into()
            .unwrap_or(0)
    }
}

/// Istio's host check for a ServiceEntry (`validateServiceEntryHost` and
/// `ValidateWildcardDomain`): an IP, or a DNS-1123 name whose first label may be
/// `*`; `*` alone is not a host.
fn host_problem(h: &str) -> Option<String> {
    if h.is_empty() {
        return Some("must not be empty".into());
    }
    if h == "*" {
        return Some("invalid host *: a ServiceEntry cannot cover every host".into());
    }
    if h.parse::<IpAddr>().is_ok() {
        return None;
    }
    let name = h.strip_prefix("*.").unwrap_or(h);
    if name.contains('*') {
        return Some(format!(
            "{h:?} has an invalid wildcard (only a leading `*.`)"
        ));
    }
    if !super::workload_entry::dns1123_subdomain(&name.to_ascii_lowercase()) {
        return Some(format!("{h:?} is not a valid DNS name"));
    }
    None
}

/// `ip` or `ip/len` with a valid prefix length.
fn cidr_ok(s: &str) -> bool {
    match s.split_once('/') {
        None => s.parse::<IpAddr>().is_ok(),
        Some((ip, len)) => match (ip.parse::<IpAddr>(), len.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(l)) => l <= 32,
            (Ok(IpAddr::V6(_)), Ok(l)) => l <= 128,
            _ => false,
        },
    }
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl ServiceEntry {
    /// Istio's `ValidateServiceEntry` plus the fields crossmesh does not
    /// implement. Each entry: (field, reason, is_warning).
    pub fn problems(&self) -> Vec<(String, String, bool)> {
        let mut out: Vec<(String, String, bool)> = Vec::new();
        let mut err = |f: String, r: String| out.push((f, r, false));
        if self.hosts.is_empty() {
            err("spec.hosts".into(), "at least one host is required".into());
        }
        for (i, h) in self.hosts.iter().enumerate() {
            if let Some(p) = host_problem(h) {
                err(format!("spec.hosts[{i}]"), p);
            }
        }
        let mut cidr = false;
        for (i, a) in self.addresses.iter().enumerate() {
            cidr |= a.contains('/');
            if !cidr_ok(a) {
                err(
                    format!("spec.addresses[{i}]"),
                    format!("{a:?} is not an IP address or CIDR"),
                );
            }
        }
        if cidr && !matches!(self.resolution, Resolution::None | Resolution::Static) {
            err(
                "spec.addresses".into(),
                "CIDR addresses are allowed only for NONE and STATIC resolution".into(),
            );
        }
        if self.ports.is_empty() {
            err("spec.ports".into(), "at least one port is required".into());
        }
        let mut names = BTreeSet::new();
        let mut numbers = BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            let f = format!("spec.ports[{i}]");
            if !dns_label(&p.name) {
                err(
                    format!("{f}.name"),
                    format!("{:?} is not a valid port name (a DNS-1123 label)", p.name),
                );
            } else if !names.insert(p.name.as_str()) {
                err(
                    format!("{f}.name"),
                    format!("port name {:?} is already defined", p.name),
                );
            }
            if p.number == 0 || p.number > 65535 {
                err(
                    format!("{f}.number"),
                    format!("{} must be between 1 and 65535", p.number),
                );
            } else if !numbers.insert(p.number) {
                err(
                    format!("{f}.number"),
                    format!("port {} is already defined", p.number),
                );
            }
            if p.target_port.is_some_and(|t| t == 0 || t > 65535) {
                err(
                    format!("{f}.targetPort"),
                    "must be between 1 and 65535 when set".into(),
                );
            }
            let proto = p.protocol.to_ascii_uppercase();
            if proto == "UDP" {
                err(
                    format!("{f}.protocol"),
                    "not supported by crossmesh: UDP is not proxied".into(),
                );
            } else if !proto.is_empty() && !PROTOCOLS.contains(&proto.as_str()) {
                err(
                    format!("{f}.protocol"),
                    format!("unsupported protocol {:?}", p.protocol),
                );
            }
            // Without VIPs on the sidecars' TCP listeners, addresses tell TCP
            // services apart nowhere; HTTP ports use them as Host names.
            if !self.addresses.is_empty() && !p.protocol().is_http() {
                err(
                    "spec.addresses".into(),
                    format!(
                        "not supported by crossmesh on the non-HTTP port {}: addresses are used as HTTP Host names only (no VIP-based TCP filter chains)",
                        p.number
                    ),
                );
            }
        }
        if self.workload_selector.is_some() && !self.endpoints.is_empty() {
            err(
                "spec.workloadSelector".into(),
                "only one of workloadSelector or endpoints can be set".into(),
            );
        }
        if let Some(sel) = &self.workload_selector {
            if self.resolution != Resolution::Static {
                err(
                    "spec.workloadSelector".into(),
                    format!(
                        "not supported by crossmesh with resolution {}: selected workloads are endpoints of STATIC entries only",
                        self.resolution.as_str()
                    ),
                );
            }
            for (f, r) in label_problems("spec.workloadSelector.labels", &sel.labels) {
                err(f, r);
            }
            for (k, v) in &sel.labels {
                if v.contains('*') || k.contains('*') {
                    err(
                        format!("spec.workloadSelector.labels.{k}"),
                        "wildcard is not supported in selector".into(),
                    );
                }
            }
        }
        let dns = self.resolution.dns();
        for (i, e) in self.endpoints.iter().enumerate() {
            let f = format!("spec.endpoints[{i}]");
            for (f, r) in e.problems(&f, dns) {
                err(f, r);
            }
            for name in e.ports.keys() {
                if !names.contains(name.as_str()) {
                    err(
                        format!("{f}.ports.{name}"),
                        format!("endpoint port {name:?} is not a port of the ServiceEntry"),
                    );
                }
            }
        }
        match self.resolution {
            Resolution::None if !self.endpoints.is_empty() => err(
                "spec.endpoints".into(),
                "no endpoints should be provided for resolution NONE".into(),
            ),
            Resolution::Dns | Resolution::DnsRoundRobin if self.endpoints.is_empty() => {
                for (i, h) in self.hosts.iter().enumerate() {
                    if h.contains('*') {
                        err(
                            format!("spec.hosts[{i}]"),
                            format!(
                                "{h:?}: hosts must be FQDNs (no wildcard) when resolution {} has no endpoints",
                                self.resolution.as_str()
                            ),
                        );
                    }
                }
            }
            _ => {}
        }
        if self.resolution == Resolution::DnsRoundRobin && self.endpoints.len() > 1 {
            err(
                "spec.endpoints".into(),
                "there must be at most one endpoint for resolution DNS_ROUND_ROBIN".into(),
            );
        }
        if self.resolution != Resolution::None && self.hosts.len() > 1 {
            let differentiable = self.ports.iter().all(|p| {
                let proto = p.protocol();
                proto.is_http() || matches!(proto, Protocol::Https | Protocol::Tls)
            });
            if !differentiable {
                err(
                    "spec.hosts".into(),
                    "multiple hosts provided with non-HTTP, non-TLS ports".into(),
                );
            }
        }
        for (i, s) in self.subject_alt_names.iter().enumerate() {
            if s.is_empty() {
                err(
                    format!("spec.subjectAltNames[{i}]"),
                    "must not be empty".into(),
                );
            }
        }
        let mut seen = BTreeSet::new();
        for (i, e) in self.export_to.iter().enumerate() {
            let ok = e == "*" || e == "." || e == "~" || dns_label(e);
            if !ok {
                err(
                    format!("spec.exportTo[{i}]"),
                    format!("{e:?} is not *, ., ~ or a namespace name"),
                );
            }
            if !seen.insert(e.as_str()) {
                err(
                    format!("spec.exportTo[{i}]"),
                    format!("{e:?} is duplicated"),
                );
            }
        }
        if self.resolution == Resolution::Static
            && self.endpoints.is_empty()
            && self.workload_selector.is_none()
        {
            out.push((
                "spec.endpoints".into(),
                "no endpoints and no workloadSelector for resolution STATIC: the service has no endpoints".into(),
                true,
            ));
        }
        out
    }

    /// The hosts as service hostnames (lower case).
    pub fn hostnames(&self) -> impl Iterator<Item = String> + '_ {
        self.hosts.iter().map(|h| h.to_ascii_lowercase())
    }

    /// The service ports (in `ports` order sorted by number, as Kubernetes
    /// services are).
    pub fn service_ports(&self) -> Vec<ServicePort> {
        let mut ports: Vec<ServicePort> = self
            .ports
            .iter()
            .filter_map(|p| {
                Some(ServicePort {
                    name: p.name.clone(),
                    port: u16::try_from(p.number).ok()?,
                    protocol: p.protocol(),
                })
            })
            .collect();
        ports.sort_by_key(|p| p.port);
        ports
    }
}

/// Whether `e`'s exportTo admits a proxy in `to_ns` (`~`: nobody).
pub fn visible(se: &Config<ServiceEntry>, to_ns: &str) -> bool {
    !se.spec.export_to.iter().any(|e| e == "~")
        && super::exported_to(&se.spec.export_to, &se.meta.namespace, to_ns)
}

/// A workload a ServiceEntry's `workloadSelector` may select: a Pod or a
/// WorkloadEntry in the ServiceEntry's namespace, with the data of an endpoint
/// except the port.
#[derive(Debug, Clone)]
pub struct SelectedWorkload {
    /// An endpoint as the workload's own (its `port` is replaced per service port).
    pub endpoint: Endpoint,
    /// Named container ports (Pods) or `ports` (WorkloadEntries).
    pub named_ports: BTreeMap<String, u16>,
}

/// The services one ServiceEntry declares, one per host, with their endpoints:
/// inline endpoints (STATIC) or `selected` workloads (those matching
/// `workloadSelector`, supplied by the registry). DNS and NONE services carry
/// no EDS endpoints (Envoy resolves DNS names itself; NONE goes to the original
/// destination). Endpoints are sorted like the Kubernetes services'.
pub fn services(
    se: &Config<ServiceEntry>,
    selected: &[SelectedWorkload],
) -> Vec<(String, Service)> {
    let spec = &se.spec;
    let ports = spec.service_ports();
    let cluster = origin_cluster(&se.meta.origin);
    let mut endpoints: BTreeMap<u16, Vec<Endpoint>> = BTreeMap::new();
    if spec.resolution == Resolution::Static {
        for p in &spec.ports {
            let Ok(number) = u16::try_from(p.number) else {
                continue;
            };
            let list = endpoints.entry(number).or_default();
            for (i, e) in spec.endpoints.iter().enumerate() {
                let workload: Arc<str> =
                    Arc::from(format!("{}/{}[{i}]", se.meta.namespace, se.meta.name));
                if let Some(ep) = e.endpoint(&p.name, p.default_target(), cluster.clone(), workload)
                {
                    list.push(ep);
                }
            }
            for w in selected {
                let mut ep = w.endpoint.clone();
                ep.port = w
                    .named_ports
                    .get(&p.name)
                    .copied()
                    .unwrap_or(p.default_target());
                list.push(ep);
            }
            list.sort_by(|a, b| {
                (&a.cluster, a.address, a.port).cmp(&(&b.cluster, b.address, b.port))
            });
            list.dedup_by(|a, b| {
                a.cluster == b.cluster && a.address == b.address && a.port == b.port
            });
        }
    }
    spec.hostnames()
        .map(|host| {
            (
                host.clone(),
                Service {
                    hostname: Arc::from(host.as_str()),
                    namespace: se.meta.namespace.clone(),
                    name: host,
                    ports: ports.clone(),
                    endpoints: endpoints.clone(),
                    clusters: if cluster.is_empty() {
                        Vec::new()
                    } else {
                        vec![cluster.clone()]
                    },
                },
            )
        })
        .collect()
}

/// The WorkloadEntries of `ns` whose labels include `selector`, as workloads
/// a ServiceEntry selects (network as written; the registry fills in the
/// origin cluster's network when empty).
pub fn selected_entries(
    config: &super::ConfigSnapshot,
    ns: &str,
    selector: &BTreeMap<String, String>,
) -> Vec<SelectedWorkload> {
    config
        .workload_entries
        .iter()
        .filter(|we| we.meta.namespace == ns && super::labels_match(selector, &we.spec.labels))
        .filter_map(|we| {
            let endpoint = we.spec.endpoint(
                "",
                0,
                origin_cluster(&we.meta.origin),
                Arc::from(format!("{}/{}", we.meta.namespace, we.meta.name)),
            )?;
            Some(SelectedWorkload {
                endpoint,
                named_ports: we
                    .spec
                    .ports
                    .iter()
                    .filter_map(|(n, p)| Some((n.clone(), u16::try_from(*p).ok()?)))
                    .collect(),
            })
        })
        .collect()
}

/// Add the services of every ServiceEntry in `config` to `map`: the oldest
/// ServiceEntry declaring a host wins, and a service already in `map` (a
/// Kubernetes Service of that hostname) is kept. `selected(se, selector)`
/// gives the workloads a `workloadSelector` picks.
pub fn add_services(
    map: &mut crate::model::service::ServiceMap,
    config: &super::ConfigSnapshot,
    mut selected: impl FnMut(&Config<ServiceEntry>, &BTreeMap<String, String>) -> Vec<SelectedWorkload>,
) {
    for se in &config.service_entries {
        let workloads = match &se.spec.workload_selector {
            Some(sel) => selected(se, &sel.labels),
            None => Vec::new(),
        };
        for (host, svc) in services(se, &workloads) {
            let owner = config
                .service_entry(&host)
                .is_some_and(|o| Arc::ptr_eq(o, se));
            if owner && !map.contains_key(host.as_str()) {
                map.insert(Arc::from(host.as_str()), Arc::new(svc));
            }
        }
    }
}

/// One DNS name a DNS or DNS_ROUND_ROBIN cluster resolves, with the port to
/// connect to and what EDS would carry for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsTarget {
    pub address: String,
    pub port: u16,
    pub labels: BTreeMap<String, String>,
    pub locality: String,
    /// The endpoint's `weight` (1 when unset or 0).
    pub weight: u16,
}

/// The DNS targets of `host`'s `port` (Istio's `convertEndpoints` for DNS): the
/// inline endpoints (their addresses are names or IPs), else the host itself.
pub fn dns_targets(se: &ServiceEntry, host: &str, port: &ServiceEntryPort) -> Vec<DnsTarget> {
    if se.endpoints.is_empty() {
        return vec![DnsTarget {
            address: host.to_string(),
            port: port.default_target(),
            labels: BTreeMap::new(),
            locality: String::new(),
            weight: 1,
        }];
    }
    se.endpoints
        .iter()
        .map(|e| DnsTarget {
            address: e.address.clone(),
            port: e
                .ports
                .get(&port.name)
                .and_then(|p| u16::try_from(*p).ok())
                .unwrap_or(port.default_target()),
            labels: e.labels.clone(),
            locality: e.locality.clone(),
            weight: e.lb_weight(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn se(yaml: &str) -> ServiceEntry {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn errors(s: &ServiceEntry) -> Vec<String> {
        s.problems()
            .into_iter()
            .filter(|p| !p.2)
            .map(|p| format!("{}: {}", p.0, p.1))
            .collect()
    }

    #[test]
    fn istio_validation_rules() {
        let ok = se("{hosts: [api.example.com], ports: [{number: 443, name: https, protocol: HTTPS}], resolution: DNS}");
        assert!(errors(&ok).is_empty(), "{:?}", errors(&ok));
        let bad_addr = se("{hosts: [a.example.com], addresses: [10.0.0.300], ports: [{number: 80, name: http, protocol: HTTP}], resolution: STATIC, endpoints: [{address: 10.1.1.1}]}");
        assert_eq!(
            errors(&bad_addr),
            vec!["spec.addresses[0]: \"10.0.0.300\" is not an IP address or CIDR"]
        );
        let wildcard_dns =
            se("{hosts: ['*.example.com'], ports: [{number: 80, name: http}], resolution: DNS}");
        assert!(errors(&wildcard_dns)[0].starts_with("spec.hosts[0]"));
        let static_hostname = se("{hosts: [a.b], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: vm.b}]}");
        assert!(errors(&static_hostname)[0].starts_with("spec.endpoints[0].address"));
        let none_with_eps = se(
            "{hosts: [a.b], ports: [{number: 80, name: http}], endpoints: [{address: 1.2.3.4}]}",
        );
        assert_eq!(errors(&none_with_eps).len(), 1);
        let both = se("{hosts: [a.b], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: 1.2.3.4}], workloadSelector: {labels: {app: x}}}");
        assert_eq!(
            errors(&both),
            vec!["spec.workloadSelector: only one of workloadSelector or endpoints can be set"]
        );
        let dup = se("{hosts: [a.b, c.d], ports: [{number: 80, name: tcp, protocol: TCP}, {number: 80, name: tcp}], resolution: DNS}");
        let e = errors(&dup);
        assert!(e.iter().any(|e| e.contains("already defined")), "{e:?}");
        assert!(e.iter().any(|e| e.contains("multiple hosts")), "{e:?}");
        let star = se("{hosts: ['*'], ports: [{number: 80, name: http}]}");
        assert!(errors(&star)[0].contains("invalid host *"));
        let cidr_dns = se("{hosts: [a.b], addresses: [10.0.0.0/8], ports: [{number: 80, name: http}], resolution: DNS}");
        assert!(errors(&cidr_dns).iter().any(|e| e.contains("CIDR")));
        let rr = se("{hosts: [a.b], ports: [{number: 80, name: http}], resolution: DNS_ROUND_ROBIN, endpoints: [{address: x.b}, {address: y.b}]}");
        assert_eq!(errors(&rr).len(), 1);
        let undeclared = se("{hosts: [a.b], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: 1.2.3.4, ports: {grpc: 90}}]}");
        assert!(errors(&undeclared)[0].contains("not a port of the ServiceEntry"));
        let dns_selector = se("{hosts: [a.b], ports: [{number: 80, name: http}], resolution: DNS, workloadSelector: {labels: {app: x}}}");
        assert!(errors(&dns_selector)[0].starts_with("spec.workloadSelector: not supported"));
        let empty_static =
            se("{hosts: [a.b], ports: [{number: 80, name: http}], resolution: STATIC}");
        assert!(errors(&empty_static).is_empty());
        assert!(empty_static.problems()[0].2, "a warning");
    }

    #[test]
    fn static_endpoints_take_named_port_else_target_port() {
        let cfg = Config {
            meta: super::super::Meta {
                name: "ext".into(),
                namespace: "ns".into(),
                creation_timestamp: None,
                origin: "cluster c1".into(),
                api_version: "networking.istio.io/v1".into(),
            },
            spec: se("{hosts: [a.example, b.example], ports: [{number: 80, name: http, targetPort: 8080}], resolution: STATIC, endpoints: [{address: 10.0.0.2, ports: {http: 9090}, locality: r/z}, {address: 10.0.0.1}]}"),
        };
        let svcs = services(&cfg, &[]);
        assert_eq!(svcs.len(), 2);
        let eps: Vec<(String, u16, String)> = svcs[0].1.endpoints[&80]
            .iter()
            .map(|e| (e.address.to_string(), e.port, e.locality.label()))
            .collect();
        assert_eq!(
            eps,
            vec![
                ("10.0.0.1".to_string(), 8080, String::new()),
                ("10.0.0.2".to_string(), 9090, "r/z".to_string())
            ]
        );
        assert_eq!(&*svcs[1].1.clusters[0], "c1");
    }
}
