//! The merged view of one service across every member cluster (Istio's namespace
//! sameness: `NAME.NS` in several clusters is one service).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// A member cluster's unique name (mesh file `clusters[].name`, Istio's `CLUSTER_ID`).
pub type ClusterId = Arc<str>;

/// Labels as an immutable shared map: many endpoints of one pod share one allocation.
pub type Labels = Arc<BTreeMap<String, String>>;

/// Where an endpoint or proxy runs: `topology.kubernetes.io/region`, `.../zone`,
/// `topology.istio.io/subzone`. Empty strings mean "unknown".
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    /// Istio's `region/zone/subzone` form, trailing empty parts dropped.
    pub fn label(&self) -> String {
        let mut s = self.region.clone();
        for part in [&self.zone, &self.subzone] {
            if part.is_empty() {
                break;
            }
            s.push('/');
            s.push_str(part);
        }
        s
    }
}

/// The application protocol of a service port, chosen as Istio does: `appProtocol`
/// first, then the port name prefix (`http-`, `grpc`, `tcp`...). Unknown means Istio's
/// protocol sniffing; crossmesh treats it as TCP for sidecars and rejects it on
/// gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Https,
    Tls,
    Tcp,
    Unknown,
}

impl Protocol {
    /// Istio's protocol selection from a port's `appProtocol` or name.
    pub fn from_port(name: &str, app_protocol: Option<&str>) -> Protocol {
        let pick = |s: &str| {
            let lower = s.to_ascii_lowercase();
            let prefix = lower.split('-').next().unwrap_or("");
            match prefix {
                "http" => Protocol::Http,
                "http2" => Protocol::Http2,
                "grpc" | "grpc-web" => Protocol::Grpc,
                "https" => Protocol::Https,
                "tls" => Protocol::Tls,
                "tcp" | "mongo" | "mysql" | "redis" => Protocol::Tcp,
                _ => Protocol::Unknown,
            }
        };
        match app_protocol.map(pick) {
            Some(p) if p != Protocol::Unknown => p,
            _ => pick(name),
        }
    }

    /// Whether Envoy should use the HTTP connection manager for this port.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }
}

/// One port of a service. `port` is the service port (what clients dial and what
/// cluster names carry); each endpoint carries its own resolved target port.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// One ready-or-not backend of one service port in one cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    pub address: IpAddr,
    /// The resolved target port (numeric `targetPort`, or a named one looked up in
    /// the pod's `containerPorts`).
    pub port: u16,
    pub labels: Labels,
    pub cluster: ClusterId,
    /// Mesh file `clusters[].network`; empty means the one flat network.
    pub network: Arc<str>,
    pub locality: Arc<Locality>,
    pub ready: bool,
    /// `namespace/name` of the pod, or of the EndpointSlice for selector-less services.
    pub workload: Arc<str>,
    pub service_account: Arc<str>,
    /// True while the endpoint's cluster is unreachable and the endpoint is served
    /// from the last-known state.
    pub stale: bool,
    /// Istio's `WorkloadEntry.weight` (also a ServiceEntry inline endpoint's):
    /// Envoy's `LbEndpoint.load_balancing_weight`, and a locality's weight is the
    /// sum over its endpoints; 1 for Pods. 16 bits keep `Endpoint` at 104 bytes
    /// (it shares the padding after `address`, `port` and the two flags; a `u32`
    /// would make it 112), so validation rejects weights above 65535.
    #[serde(skip_serializing_if = "weight_is_one")]
    pub weight: u16,
}

fn weight_is_one(w: &u16) -> bool {
    *w == 1
}

/// A service merged across member clusters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Service {
    /// `NAME.NS.svc.<domainSuffix>`.
    pub hostname: Arc<str>,
    pub namespace: String,
    pub name: String,
    /// Union of the ports declared in each cluster; for a port number declared in
    /// several clusters the first cluster (by name) wins.
    pub ports: Vec<ServicePort>,
    /// Endpoints per service port number, sorted by (cluster, address, port).
    pub endpoints: BTreeMap<u16, Vec<Endpoint>>,
    /// The clusters that declare this service.
    pub clusters: Vec<ClusterId>,
}

impl Service {
    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == number)
    }
}

/// All services of the mesh keyed by hostname, as one immutable snapshot.
pub type ServiceMap = BTreeMap<Arc<str>, Arc<Service>>;
