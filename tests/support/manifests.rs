//! A mesh on disk: a mesh file, one manifest directory per member cluster and one
//! Istio config directory, plus writers for the Kubernetes and Istio objects tests
//! need (shaped like `kubectl get -o yaml`). Writes are atomic (write elsewhere, then
//! rename into the watched directory) so a watcher never sees a half-written file
//! unless a test writes one on purpose ([`Mesh::write_raw_in_place`]).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// A member cluster of a test mesh.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub name: String,
    pub network: Option<String>,
}

pub fn cluster(name: &str, network: Option<&str>) -> ClusterSpec {
    ClusterSpec {
        name: name.into(),
        network: network.map(Into::into),
    }
}

pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub mesh_file: PathBuf,
    pub clusters: Vec<ClusterSpec>,
}

impl Mesh {
    /// Create `mesh.yaml`, `clusters/<name>/` for each cluster and `istio/`.
    pub fn new(clusters: &[ClusterSpec]) -> Mesh {
        let dir = tempfile::Builder::new()
            .prefix("crossmesh-mesh-")
            .tempdir()
            .expect("tempdir");
        let mut yaml =
            String::from("trustDomain: cluster.local\ndomainSuffix: cluster.local\nclusters:\n");
        for c in clusters {
            std::fs::create_dir_all(dir.path().join("clusters").join(&c.name)).unwrap();
            yaml.push_str(&format!("- name: {}\n", c.name));
            if let Some(n) = &c.network {
                yaml.push_str(&format!("  network: {n}\n"));
            }
            yaml.push_str(&format!("  manifests: clusters/{}\n", c.name));
        }
        yaml.push_str("config:\n- manifests: istio\n");
        std::fs::create_dir_all(dir.path().join("istio")).unwrap();
        std::fs::create_dir_all(dir.path().join(".staging")).unwrap();
        let mesh_file = dir.path().join("mesh.yaml");
        std::fs::write(&mesh_file, yaml).unwrap();
        Mesh {
            dir,
            mesh_file,
            clusters: clusters.to_vec(),
        }
    }

    /// A mesh of one cluster, `cluster1` (Istio config from `istio/`), with the
    /// TLS xDS port on a free loopback port; proxies authenticate there with
    /// tokens of the returned issuer (cluster1's `tokenIssuer`, issuer `iss`,
    /// its JWKS beside the mesh file).
    pub fn secure_single_cluster(
        iss: &str,
    ) -> (Mesh, super::token_issuer::TokenIssuer, std::net::SocketAddr) {
        let mesh = Mesh::new(&[cluster("cluster1", None)]);
        let issuer =
            super::token_issuer::TokenIssuer::new(iss, &mesh.root().join("cluster1-jwks.json"));
        let tls = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, super::net::free_port()));
        std::fs::write(
            &mesh.mesh_file,
            format!(
                "trustDomain: cluster.local
domainSuffix: cluster.local
xdsTlsAddress: {tls}
tokenAudiences: [istio-ca]
clusters:
- name: cluster1
  manifests: clusters/cluster1
  tokenIssuer:
    issuer: {iss}
    jwks: cluster1-jwks.json
config:
- manifests: istio
"
            ),
        )
        .expect("mesh file");
        (mesh, issuer, tls)
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn cluster_dir(&self, cluster: &str) -> PathBuf {
        self.root().join("clusters").join(cluster)
    }

    pub fn istio_dir(&self) -> PathBuf {
        self.root().join("istio")
    }

    /// Atomically write `contents` to `path` (inside the mesh dir).
    pub fn write_atomic(&self, path: &Path, contents: &str) {
        let staging = self.root().join(".staging").join(format!(
            "{}-{}",
            std::process::id(),
            path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
        ));
        std::fs::write(&staging, contents)
            .unwrap_or_else(|e| panic!("write {}: {e}", staging.display()));
        std::fs::rename(&staging, path)
            .unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
    }

    /// Write a manifest file into a cluster's directory.
    pub fn write_cluster(&self, cluster: &str, file: &str, yaml: &str) {
        self.write_atomic(&self.cluster_dir(cluster).join(file), yaml);
    }

    /// Write an Istio config file.
    pub fn write_istio(&self, file: &str, yaml: &str) {
        self.write_atomic(&self.istio_dir().join(file), yaml);
    }

    /// Write without the atomic rename (for "malformed file" tests).
    pub fn write_raw_in_place(&self, path: &Path, contents: &str) {
        std::fs::write(path, contents).unwrap();
    }

    pub fn remove_cluster_file(&self, cluster: &str, file: &str) {
        std::fs::remove_file(self.cluster_dir(cluster).join(file)).unwrap();
    }

    pub fn remove_istio_file(&self, file: &str) {
        std::fs::remove_file(self.istio_dir().join(file)).unwrap();
    }
}

fn labels_yaml(labels: &[(&str, &str)], indent: &str) -> String {
    if labels.is_empty() {
        return " {}\n".into();
    }
    let mut s = String::from("\n");
    for (k, v) in labels {
        s.push_str(&format!("{indent}{k}: \"{v}\"\n"));
    }
    s
}

/// A `v1` Service with one TCP port named `http`.
pub fn service(
    ns: &str,
    name: &str,
    port: u16,
    target_port: u16,
    selector: &[(&str, &str)],
) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {ns}
  labels:
    app: {name}
spec:
  type: ClusterIP
  ports:
  - port: {port}
    name: http
    protocol: TCP
    targetPort: {target_port}
  selector:{sel}",
        sel = labels_yaml(selector, "    ")
    )
}

/// A `v1` Pod; `ready` sets phase Running and the Ready condition True (else
/// Ready False). `node` sets `spec.nodeName`.
pub fn pod(
    ns: &str,
    name: &str,
    labels: &[(&str, &str)],
    ip: Ipv4Addr,
    container_port: u16,
    ready: bool,
    node: Option<&str>,
) -> String {
    let node_line = node
        .map(|n| format!("  nodeName: {n}\n"))
        .unwrap_or_default();
    let ready = if ready { "True" } else { "False" };
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels:{labels}spec:
{node_line}  containers:
  - name: app
    image: stoplight/prism:4
    ports:
    - containerPort: {container_port}
      name: http
      protocol: TCP
status:
  phase: Running
  hostIP: {ip}
  podIP: {ip}
  podIPs:
  - ip: {ip}
  conditions:
  - type: Initialized
    status: \"True\"
  - type: ContainersReady
    status: \"{ready}\"
  - type: Ready
    status: \"{ready}\"
",
        labels = labels_yaml(labels, "    ")
    )
}

/// A `v1` Node with topology labels.
pub fn node(name: &str, region: &str, zone: &str, subzone: Option<&str>) -> String {
    let sub = subzone
        .map(|s| format!("    topology.istio.io/subzone: {s}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1
kind: Node
metadata:
  name: {name}
  labels:
    kubernetes.io/hostname: {name}
    topology.kubernetes.io/region: {region}
    topology.kubernetes.io/zone: {zone}
{sub}"
    )
}

/// An Istio `Gateway` with one HTTP server.
pub fn gateway(
    ns: &str,
    name: &str,
    selector: &[(&str, &str)],
    port: u16,
    hosts: &[&str],
) -> String {
    let hosts: String = hosts.iter().map(|h| format!("    - \"{h}\"\n")).collect();
    format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: {name}
  namespace: {ns}
spec:
  selector:{sel}  servers:
  - port:
      number: {port}
      name: HTTP-{port}
      protocol: HTTP
    hosts:
{hosts}",
        sel = labels_yaml(selector, "    ")
    )
}

/// An Istio `VirtualService` bound to `gateways`, routing `hosts` to `dest:port`.
pub fn virtual_service(
    ns: &str,
    name: &str,
    gateways: &[&str],
    hosts: &[&str],
    dest: &str,
    port: u16,
) -> String {
    let gws: String = gateways.iter().map(|g| format!("  - {g}\n")).collect();
    let hosts: String = hosts.iter().map(|h| format!("  - '{h}'\n")).collect();
    format!(
        "apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: {name}
  namespace: {ns}
spec:
  gateways:
{gws}  hosts:
{hosts}  http:
  - route:
    - destination:
        host: {dest}
        port:
          number: {port}
"
    )
}
