//! Compact records of the Kubernetes objects the registry reads, and the pure
//! computation of a service's endpoints in one cluster from them.
//!
//! Sources hand the registry full k8s-openapi objects; only the fields listed in the
//! records below are kept (no managed fields, annotations, whole specs or statuses;
//! of a Service labelled `topology.istio.io/network`, its gateway addresses), with
//! label maps and recurring strings interned so the thousands of Pods of one
//! Deployment share one label map. Conversion is also the validation step: an object
//! whose fields cannot be used is rejected with a reason (`KubeRejection`) and the
//! rest keeps flowing.

use std::collections::{BTreeMap, HashSet};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, Service, ServiceStatus};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::service::Labels;
use crate::model::{Locality, Protocol};

/// Node label for the region part of a locality.
pub const LABEL_REGION: &str = "topology.kubernetes.io/region";
/// Node label for the zone part of a locality.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// Node label for Istio's subzone.
pub const LABEL_SUBZONE: &str = "topology.istio.io/subzone";
/// EndpointSlice label naming the Service it belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Service label making the Service the east-west gateway of the named network
/// (Istio's `label.TopologyNetwork`).
pub const LABEL_NETWORK: &str = "topology.istio.io/network";
/// Service label overriding the port of a network gateway (Istio's
/// `label.NetworkingGatewayPort`).
pub const LABEL_GATEWAY_PORT: &str = "networking.istio.io/gatewayPort";
/// Istio's `DefaultNetworkGatewayPort`: the east-west gateway's mTLS port.
pub const DEFAULT_GATEWAY_PORT: u16 = 15443;
/// Service annotation selecting the nodes of a NodePort gateway (Istio's
/// `annotation.TrafficNodeSelector`).
pub const ANNOTATION_NODE_SELECTOR: &str = "traffic.istio.io/nodeSelector";

/// Why the registry rejected one Kubernetes object of a member cluster (no origin:
/// `registry::problem` adds it for `/debug/configz` as an `ObjectProblem`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {object}: {reason}")]
pub struct KubeRejection {
    pub kind: KubeKind,
    /// `namespace/name` (or `name` for Nodes; `?` when the object has none).
    pub object: String,
    pub reason: String,
}

/// The four kinds the registry reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum KubeKind {
    Service,
    Pod,
    Node,
    EndpointSlice,
}

impl std::fmt::Display for KubeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KubeKind::Service => "Service",
            KubeKind::Pod => "Pod",
            KubeKind::Node => "Node",
            KubeKind::EndpointSlice => "EndpointSlice",
        })
    }
}

/// One Kubernetes object as a source hands it over (k8s-openapi types at the API
/// boundary, whether it came from a file or an API server).
/// Not boxed: each object is moved in once and converted to a compact record, so
/// the size of the enum never multiplies.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum KubeObject {
    Service(Service),
    Pod(Pod),
    Node(Node),
    EndpointSlice(EndpointSlice),
}

impl KubeObject {
    pub fn kind(&self) -> KubeKind {
        match self {
            KubeObject::Service(_) => KubeKind::Service,
            KubeObject::Pod(_) => KubeKind::Pod,
            KubeObject::Node(_) => KubeKind::Node,
            KubeObject::EndpointSlice(_) => KubeKind::EndpointSlice,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            KubeObject::Service(o) => &o.metadata,
            KubeObject::Pod(o) => &o.metadata,
            KubeObject::Node(o) => &o.metadata,
            KubeObject::EndpointSlice(o) => &o.metadata,
        }
    }

    /// `namespace/name`, or `name` for the cluster-scoped Node.
    pub fn display_name(&self) -> String {
        let m = self.metadata();
        let name = m.name.as_deref().unwrap_or("?");
        match self {
            KubeObject::Node(_) => name.to_string(),
            _ => format!("{}/{}", namespace_of(m), name),
        }
    }

    /// Notes about a valid object that an operator may want to know about: it is
    /// served, but perhaps not as they expect.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        match self {
            KubeObject::Service(s) => {
                let selector = s.spec.as_ref().and_then(|s| s.selector.as_ref());
                if selector.is_none_or(|s| s.is_empty()) {
                    notes.push(
                        "has no selector: its endpoints come only from EndpointSlices labelled \
                         kubernetes.io/service-name"
                            .to_string(),
                    );
                }
                for p in s.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
                    let proto = p.protocol.as_deref().unwrap_or("TCP");
                    if proto != "TCP" {
                        notes.push(format!(
                            "port {}/{proto} is ignored: crossmesh serves TCP ports only",
                            p.port
                        ));
                    }
                }
                if let Some(gw) = gateway_rec(s, &mut Interners::default()) {
                    notes.extend(gw.problems());
                }
            }
            KubeObject::Pod(p)
                if p.status
                    .as_ref()
                    .and_then(|s| s.pod_ip.as_deref())
                    .is_none_or(str::is_empty) =>
            {
                notes.push("has no status.podIP: it is not an endpoint".to_string());
            }
            _ => {}
        }
        notes
    }
}

fn namespace_of(m: &ObjectMeta) -> &str {
    m.namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
}

/// `(namespace, name)` of a namespaced object.
pub type ObjKey = (Arc<str>, Arc<str>);

/// Interns immutable values so equal ones share one allocation. Entries nobody
/// else holds are dropped by `gc`, so churn does not grow memory.
#[derive(Debug)]
pub struct Interner<T: ?Sized + Eq + Hash> {
    set: HashSet<Arc<T>>,
    size_at_gc: usize,
}

impl<T: ?Sized + Eq + Hash> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            set: HashSet::new(),
            size_at_gc: 0,
        }
    }
}

impl<T: ?Sized + Eq + Hash> Interner<T> {
    fn get(&self, value: &T) -> Option<Arc<T>> {
        self.set.get(value).cloned()
    }

    fn insert(&mut self, v: Arc<T>) -> Arc<T> {
        self.set.insert(v.clone());
        if self.set.len() > 2 * self.size_at_gc.max(512) {
            self.gc();
        }
        v
    }

    /// Drop values only the interner holds. O(entries).
    pub fn gc(&mut self) {
        self.set.retain(|v| Arc::strong_count(v) > 1);
        self.size_at_gc = self.set.len();
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// The interners of one registry.
#[derive(Debug, Default)]
pub struct Interners {
    pub strings: Interner<str>,
    pub labels: Interner<BTreeMap<String, String>>,
    pub localities: Interner<Locality>,
}

impl Interners {
    pub fn str(&mut self, s: &str) -> Arc<str> {
        match self.strings.get(s) {
            Some(v) => v,
            None => self.strings.insert(Arc::from(s)),
        }
    }

    pub fn labels(&mut self, l: BTreeMap<String, String>) -> Labels {
        match self.labels.get(&l) {
            Some(v) => v,
            None => self.labels.insert(Arc::new(l)),
        }
    }

    pub fn locality(&mut self, l: Locality) -> Arc<Locality> {
        match self.localities.get(&l) {
            Some(v) => v,
            None => self.localities.insert(Arc::new(l)),
        }
    }

    pub fn gc(&mut self) {
        self.strings.gc();
        self.labels.gc();
        self.localities.gc();
    }
}

/// Where a service port sends traffic on a backend (`spec.ports[].targetPort`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A container port name, resolved per Pod through its `containerPorts`.
    Named(Arc<str>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvcPortRec {
    pub name: Arc<str>,
    pub port: u16,
    pub target: TargetPort,
    pub protocol: Protocol,
}

/// What the registry keeps of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvcRec {
    /// `spec.selector`; `None` when absent or empty (endpoints managed elsewhere,
    /// read from EndpointSlices).
    pub selector: Option<Labels>,
    /// TCP ports only (UDP and SCTP are not served).
    pub ports: Vec<SvcPortRec>,
    /// Set when the Service is labelled `topology.istio.io/network`.
    pub gateway: Option<GatewayRec>,
}

/// The east-west gateway a Service labelled `topology.istio.io/network` stands
/// for (Istio's label-based network gateway, `extractGatewaysFromService`): every
/// address below at `port` reaches the network `network`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRec {
    /// Label `topology.istio.io/network`.
    pub network: Arc<str>,
    /// Label `networking.istio.io/gatewayPort`, else 15443. As in Istio, the
    /// port is not checked against `spec.ports`.
    pub port: u16,
    /// Istio's `ClusterExternalAddresses`, in its order: for a `LoadBalancer`
    /// Service each `status.loadBalancer.ingress[]` entry's `ip`, then
    /// `spec.externalIPs` (any type). Deduplicated.
    pub addresses: Vec<IpAddr>,
    /// Parts of the Service that could not be used, one sentence each (notes on
    /// `/debug/clusterz`; the Service itself is still served).
    pub unused: Vec<String>,
}

impl GatewayRec {
    /// Every note worth an operator's attention: the unused parts, and the lack of
    /// any usable address.
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.unused.clone();
        if self.addresses.is_empty() {
            out.push(format!(
                "labelled {LABEL_NETWORK}={} but has no usable address (an IP in \
                 status.loadBalancer.ingress of a LoadBalancer Service, or spec.externalIPs): \
                 it is no east-west gateway",
                self.network
            ));
        }
        out
    }
}

/// What the registry keeps of a Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRec {
    pub labels: Labels,
    /// `status.podIP`; a Pod without one is no endpoint at all.
    pub ip: Option<IpAddr>,
    /// `status.phase == Running`, condition `Ready` is `True`, and not terminating.
    pub ready: bool,
    pub node: Option<Arc<str>>,
    /// Named TCP container ports (`spec.containers[].ports[]`), first name wins.
    pub named_ports: Vec<(Arc<str>, u16)>,
    pub service_account: Arc<str>,
}

/// What the registry keeps of a Node: its locality labels, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRec {
    pub locality: Option<Arc<Locality>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpointRec {
    pub address: IpAddr,
    /// `conditions.ready`; unset means ready (Kubernetes: "consumers should
    /// interpret this unknown state as ready").
    pub ready: bool,
    pub node: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    /// `targetRef` name when it is a Pod in the slice's namespace.
    pub pod: Option<Arc<str>>,
}

/// What the registry keeps of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceRec {
    /// Label `kubernetes.io/service-name`.
    pub service: Arc<str>,
    /// `(port name, number)`; the name matches the Service port's name.
    pub ports: Vec<(Arc<str>, u16)>,
    pub endpoints: Vec<SliceEndpointRec>,
}

fn port_u16(v: i32, what: &str) -> Result<u16, String> {
    u16::try_from(v)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{what} {v} is not a port number (1-65535)"))
}

fn name_of(m: &ObjectMeta) -> Result<&str, String> {
    m.name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| "metadata.name is missing".to_string())
}

fn err(obj: &KubeObject, reason: String) -> KubeRejection {
    KubeRejection {
        kind: obj.kind(),
        object: obj.display_name(),
        reason,
    }
}

/// A converted object, ready to store.
#[derive(Debug, Clone)]
pub enum Record {
    Service(ObjKey, SvcRec),
    Pod(ObjKey, PodRec),
    Node(Arc<str>, NodeRec),
    EndpointSlice(ObjKey, SliceRec),
}

/// The storage key of an object, without converting it (for deletes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKey {
    Service(ObjKey),
    Pod(ObjKey),
    Node(Arc<str>),
    EndpointSlice(ObjKey),
}

impl RecordKey {
    pub fn of(obj: &KubeObject, i: &mut Interners) -> Result<RecordKey, KubeRejection> {
        let m = obj.metadata();
        let name = name_of(m).map_err(|r| err(obj, r))?;
        let mut key = || (i.str(namespace_of(m)), i.str(name));
        Ok(match obj {
            KubeObject::Service(_) => RecordKey::Service(key()),
            KubeObject::Pod(_) => RecordKey::Pod(key()),
            KubeObject::EndpointSlice(_) => RecordKey::EndpointSlice(key()),
            KubeObject::Node(_) => RecordKey::Node(i.str(name)),
        })
    }

    pub fn kind(&self) -> KubeKind {
        match self {
            RecordKey::Service(_) => KubeKind::Service,
            RecordKey::Pod(_) => KubeKind::Pod,
            RecordKey::Node(_) => KubeKind::Node,
            RecordKey::EndpointSlice(_) => KubeKind::EndpointSlice,
        }
    }

    pub fn display(&self) -> String {
        match self {
            RecordKey::Service((ns, n))
            | RecordKey::Pod((ns, n))
            | RecordKey::EndpointSlice((ns, n)) => {
                format!("{ns}/{n}")
            }
            RecordKey::Node(n) => n.to_string(),
        }
    }
}

/// Check one object without storing it (used by sources to name the file of a bad
/// object, and by `crossmesh validate`).
pub fn check(obj: &KubeObject) -> Result<(), KubeRejection> {
    Record::from_object(obj, &mut Interners::default()).map(|_| ())
}

impl Record {
    /// Convert and validate. Fields crossmesh cannot serve are rejected with a
    /// reason rather than silently ignored.
    pub fn from_object(obj: &KubeObject, i: &mut Interners) -> Result<Record, KubeRejection> {
        let key = RecordKey::of(obj, i)?;
        let rec = match (obj, key) {
            (KubeObject::Service(s), RecordKey::Service(k)) => {
                Record::Service(k, svc_rec(s, i).map_err(|r| err(obj, r))?)
            }
            (KubeObject::Pod(p), RecordKey::Pod(k)) => {
                Record::Pod(k, pod_rec(p, i).map_err(|r| err(obj, r))?)
            }
            (KubeObject::Node(n), RecordKey::Node(k)) => Record::Node(k, node_rec(n, i)),
            (KubeObject::EndpointSlice(s), RecordKey::EndpointSlice(k)) => {
                Record::EndpointSlice(k, slice_rec(s, i).map_err(|r| err(obj, r))?)
            }
            _ => return Err(err(obj, "internal: kind and key disagree".into())),
        };
        Ok(rec)
    }
}

fn svc_rec(s: &Service, i: &mut Interners) -> Result<SvcRec, String> {
    let spec = s.spec.as_ref().ok_or("spec is missing")?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err(
            "type ExternalName is not supported (crossmesh serves Services backed by Pods or \
                    EndpointSlices)"
                .into(),
        );
    }
    let selector = spec
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
        .map(|s| i.labels(s.clone()));
    let mut ports = Vec::new();
    let declared = spec.ports.as_deref().unwrap_or_default();
    for (n, p) in declared.iter().enumerate() {
        let port = port_u16(p.port, &format!("spec.ports[{n}].port"))?;
        if p.protocol.as_deref().unwrap_or("TCP") != "TCP" {
            continue; // noted by KubeObject::notes: only TCP is served
        }
        if declared.len() > 1 && p.name.as_deref().is_none_or(str::is_empty) {
            return Err(format!(
                "spec.ports[{n}] (port {port}) needs a name when a Service has several ports"
            ));
        }
        let target = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(t)) => {
                TargetPort::Number(port_u16(*t, &format!("spec.ports[{n}].targetPort"))?)
            }
            Some(IntOrString::String(t)) if t.is_empty() => TargetPort::Number(port),
            Some(IntOrString::String(t)) => TargetPort::Named(i.str(t)),
        };
        let name = p.name.as_deref().unwrap_or("");
        if ports.iter().any(|x: &SvcPortRec| x.port == port) {
            return Err(format!("spec.ports[{n}]: port {port} is declared twice"));
        }
        ports.push(SvcPortRec {
            name: i.str(name),
            port,
            target,
            protocol: Protocol::from_port(name, p.app_protocol.as_deref()),
        });
    }
    Ok(SvcRec {
        selector,
        ports,
        gateway: gateway_rec(s, i),
    })
}

/// What a Service must keep, beyond name, labels and spec, for `gateway_rec` to
/// read it: for a Service labelled `topology.istio.io/network`, its load balancer
/// status and the `traffic.istio.io/nodeSelector` annotation; nothing for any
/// other Service. Sources that slim objects (the kube source) call this so a
/// gateway discovered from an API server matches one read from a manifest.
pub fn gateway_fields(
    metadata: &ObjectMeta,
    status: Option<ServiceStatus>,
) -> (Option<ServiceStatus>, Option<BTreeMap<String, String>>) {
    let labelled = metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_NETWORK))
        .is_some_and(|n| !n.is_empty());
    if !labelled {
        return (None, None);
    }
    let status = status.map(|s| ServiceStatus {
        load_balancer: s.load_balancer,
        ..ServiceStatus::default()
    });
    let annotations = metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get_key_value(ANNOTATION_NODE_SELECTOR))
        .map(|(k, v)| [(k.clone(), v.clone())].into());
    (status, annotations)
}

/// The network gateway a Service makes of itself, with Istio's semantics: network
/// from label `topology.istio.io/network` (none: not a gateway), port from label
/// `networking.istio.io/gatewayPort` (absent or unparsable: 15443, as Istio falls
/// back with a warning), addresses from the load balancer status (LoadBalancer
/// Services only; `ip` entries) and `spec.externalIPs`.
///
/// Not reproduced, each noted instead: `hostname` load balancer entries (Istio
/// resolves them in the control plane when `RESOLVE_HOSTNAME_GATEWAYS` is on;
/// crossmesh does no DNS, so such a gateway belongs in the mesh file with its IP),
/// and NodePort gateways using node addresses (`traffic.istio.io/nodeSelector`).
pub fn gateway_rec(s: &Service, i: &mut Interners) -> Option<GatewayRec> {
    let labels = s.metadata.labels.as_ref()?;
    let network = labels.get(LABEL_NETWORK).filter(|n| !n.is_empty())?;
    let mut unused = Vec::new();
    let port = match labels.get(LABEL_GATEWAY_PORT).filter(|p| !p.is_empty()) {
        None => DEFAULT_GATEWAY_PORT,
        Some(p) => match p.parse::<u16>().ok().filter(|p| *p != 0) {
            Some(p) => p,
            None => {
                unused.push(format!(
                    "label {LABEL_GATEWAY_PORT}={p:?} is not a port number (1-65535): the \
                     gateway port is {DEFAULT_GATEWAY_PORT}, as in Istio"
                ));
                DEFAULT_GATEWAY_PORT
            }
        },
    };
    let type_ = s
        .spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("ClusterIP");
    let mut addresses: Vec<IpAddr> = Vec::new();
    let mut add = |a: IpAddr| {
        if !addresses.contains(&a) {
            addresses.push(a);
        }
    };
    let ingress = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    if type_ == "LoadBalancer" {
        for (n, ing) in ingress.iter().enumerate() {
            let ip = ing.ip.as_deref().filter(|ip| !ip.is_empty());
            let host = ing.hostname.as_deref().filter(|h| !h.is_empty());
            match (ip, host) {
                (Some(ip), _) => match ip.parse::<IpAddr>() {
                    Ok(a) => add(a),
                    Err(_) => unused.push(format!(
                        "status.loadBalancer.ingress[{n}].ip {ip:?} is not an IP address"
                    )),
                },
                (None, Some(h)) => unused.push(format!(
                    "status.loadBalancer.ingress[{n}].hostname {h:?} is not used: crossmesh \
                     does not resolve gateway hostnames (give the gateway's IP in the mesh \
                     file networks.{network}.gateways)"
                )),
                (None, None) => {}
            }
        }
    } else if !ingress.is_empty() {
        unused.push(format!(
            "status.loadBalancer.ingress is not used: it is read for type LoadBalancer only \
             (type is {type_})"
        ));
    }
    if type_ == "NodePort"
        && s.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(ANNOTATION_NODE_SELECTOR))
    {
        // Istio then reaches every address (external IPs included) on the node
        // port, through node addresses crossmesh does not discover: use none
        // rather than a wrong port.
        unused.push(format!(
            "annotation {ANNOTATION_NODE_SELECTOR} is not supported: NodePort gateways on \
             node addresses are not discovered (use a LoadBalancer, spec.externalIPs without \
             the annotation, or the mesh file)"
        ));
        return Some(GatewayRec {
            network: i.str(network),
            port,
            addresses: Vec::new(),
            unused,
        });
    }
    for (n, ip) in s
        .spec
        .iter()
        .flat_map(|s| s.external_ips.iter().flatten())
        .enumerate()
    {
        match ip.parse::<IpAddr>() {
            Ok(a) => add(a),
            Err(_) => unused.push(format!("spec.externalIPs[{n}] {ip:?} is not an IP address")),
        }
    }
    Some(GatewayRec {
        network: i.str(network),
        port,
        addresses,
        unused,
    })
}

fn pod_rec(p: &Pod, i: &mut Interners) -> Result<PodRec, String> {
    let status = p.status.as_ref();
    let ip = match status
        .and_then(|s| s.pod_ip.as_deref())
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(s) => Some(
            s.parse::<IpAddr>()
                .map_err(|_| format!("status.podIP {s:?} is not an IP address"))?,
        ),
    };
    let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
    let ready_cond = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let terminating = p.metadata.deletion_timestamp.is_some();
    let spec = p.spec.as_ref();
    let mut named_ports: Vec<(Arc<str>, u16)> = Vec::new();
    for c in spec.iter().flat_map(|s| s.containers.iter()) {
        for cp in c.ports.iter().flatten() {
            let Some(name) = cp.name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            if cp.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                continue;
            }
            let port = port_u16(
                cp.container_port,
                &format!("container {:?} port {name:?}", c.name),
            )?;
            if !named_ports.iter().any(|(n, _)| &**n == name) {
                named_ports.push((i.str(name), port));
            }
        }
    }
    Ok(PodRec {
        labels: i.labels(p.metadata.labels.clone().unwrap_or_default()),
        ip,
        ready: ip.is_some() && running && ready_cond && !terminating,
        node: spec
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
            .map(|n| i.str(n)),
        named_ports,
        service_account: i.str(
            spec.and_then(|s| s.service_account_name.as_deref())
                .filter(|s| !s.is_empty())
                .unwrap_or("default"),
        ),
    })
}

fn node_rec(n: &Node, i: &mut Interners) -> NodeRec {
    let labels = n.metadata.labels.as_ref();
    let get = |k: &str| labels.and_then(|l| l.get(k)).cloned().unwrap_or_default();
    let loc = Locality {
        region: get(LABEL_REGION),
        zone: get(LABEL_ZONE),
        subzone: get(LABEL_SUBZONE),
    };
    let any = !(loc.region.is_empty() && loc.zone.is_empty() && loc.subzone.is_empty());
    NodeRec {
        locality: any.then(|| i.locality(loc)),
    }
}

fn slice_rec(s: &EndpointSlice, i: &mut Interners) -> Result<SliceRec, String> {
    match s.address_type.as_str() {
        "IPv4" | "IPv6" => {}
        other => {
            return Err(format!(
                "addressType {other:?} is not supported (IPv4 or IPv6)"
            ))
        }
    }
    let service = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SERVICE_NAME))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            format!("label {LABEL_SERVICE_NAME} is missing: the slice belongs to no Service")
        })?;
    let mut ports = Vec::new();
    for (n, p) in s.ports.iter().flatten().enumerate() {
        if p.protocol.as_deref().unwrap_or("TCP") != "TCP" {
            continue;
        }
        let Some(num) = p.port else {
            return Err(format!("ports[{n}].port is missing"));
        };
        ports.push((
            i.str(p.name.as_deref().unwrap_or("")),
            port_u16(num, &format!("ports[{n}].port"))?,
        ));
    }
    let ns = namespace_of(&s.metadata);
    let mut endpoints = Vec::new();
    for (n, e) in s.endpoints.iter().enumerate() {
        // Kubernetes: all addresses of one endpoint are fungible; consumers use the first.
        let Some(a) = e.addresses.first() else {
            return Err(format!("endpoints[{n}].addresses is empty"));
        };
        let address = a
            .parse::<IpAddr>()
            .map_err(|_| format!("endpoints[{n}].addresses[0] {a:?} is not an IP address"))?;
        let pod = e
            .target_ref
            .as_ref()
            .filter(|r| {
                r.kind.as_deref() == Some("Pod") && r.namespace.as_deref().is_none_or(|x| x == ns)
            })
            .and_then(|r| r.name.as_deref())
            .map(|n| i.str(n));
        endpoints.push(SliceEndpointRec {
            address,
            ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            node: e.node_name.as_deref().map(|n| i.str(n)),
            zone: e.zone.as_deref().map(|n| i.str(n)),
            pod,
        });
    }
    Ok(SliceRec {
        service: i.str(service),
        ports,
        endpoints,
    })
}

/// Whether a Service's selector matches a Pod's labels (every selector pair present).
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Resolve a service port's target on one Pod: a number as is, a name through the
/// Pod's named container ports. `None` when the Pod does not expose that name
/// (Kubernetes then leaves the Pod out of that port's endpoints).
pub fn resolve_target(target: &TargetPort, pod: &PodRec) -> Option<u16> {
    match target {
        TargetPort::Number(n) => Some(*n),
        TargetPort::Named(name) => pod
            .named_ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p),
    }
}
