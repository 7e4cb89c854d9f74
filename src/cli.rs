//! The command line (DESIGN.md §1): parse flags once into typed options and hand
//! them to the subcommand. Every flag also reads `CROSSMESH_<FLAG>` from the
//! environment. Any failure exits non-zero with one line on stderr:
//! `crossmesh: <reason>`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::bootstrap::{self, BootstrapOptions, XdsAddress};
use crate::config::MeshConfig;
use crate::model::{InterceptionMode, Locality, ProxyRole};

#[derive(Debug, Parser)]
#[command(
    name = "crossmesh",
    version,
    about = "An Envoy-compatible xDS control plane for meshes that span several Kubernetes clusters"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane: watch the member clusters and Istio config of the
    /// mesh file and serve xDS and debug HTTP.
    Serve(ServeArgs),
    /// Print an Envoy bootstrap (YAML) that connects to crossmesh over ADS.
    Bootstrap(Box<BootstrapArgs>),
    /// Run the three-cluster ingress scenario end to end on this machine.
    Demo(DemoArgs),
    /// Check Istio and Kubernetes YAML files offline; exit 1 on any problem.
    Validate(ValidateArgs),
    /// Print a Secret that lets crossmesh watch a member cluster's API server.
    CreateRemoteSecret(RemoteSecretArgs),
    /// Run in a member cluster: watch it and stream what the mesh needs to the
    /// hub's agent port (mesh file `clusters[].agent`).
    Agent(Box<AgentArgs>),
    /// Enrolment tokens of member-cluster agents.
    #[command(subcommand)]
    AgentToken(AgentTokenCommand),
    /// Set up a sidecar's traffic interception in the pod's network namespace
    /// (`iptables-restore --noflush`), as Istio's istio-iptables does in REDIRECT
    /// mode; run by the injected `istio-init` container.
    Iptables(IptablesArgs),
    /// Keep a proxyless gRPC workload's certificate files (cert-chain.pem,
    /// key.pem, root-cert.pem) current, fetched from the TLS xDS port with its
    /// service-account token: what gRPC's `file_watcher` certificate provider
    /// reads (`crossmesh bootstrap --role grpc --cert-dir`).
    WorkloadCerts(Box<WorkloadCertsArgs>),
    /// Print the sync state of every connected proxy, per xDS type (SYNCED,
    /// NOT SENT, STALE, NACKED with Envoy's error), read from a running
    /// control plane's `/debug/syncz`, like `istioctl proxy-status`.
    Status(StatusArgs),
}

/// `crossmesh status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The control plane's debug address.
    #[arg(
        long,
        env = "CROSSMESH_DEBUG_ADDRESS",
        value_name = "ADDR",
        default_value = "127.0.0.1:15014"
    )]
    pub debug_address: SocketAddr,
    /// A file holding the bearer token the debug address asks for off loopback
    /// (mesh file `debugAuth`).
    #[arg(long, env = "CROSSMESH_TOKEN_FILE", value_name = "F")]
    pub token_file: Option<PathBuf>,
}

/// `crossmesh workload-certs` (`workload_certs`).
#[derive(Debug, Args)]
pub struct WorkloadCertsArgs {
    /// The TLS xDS port (mesh file `xdsTlsAddress`), HOST:PORT; HOST is the
    /// name checked in its certificate.
    #[arg(long, env = "CROSSMESH_XDS_ADDRESS", value_name = "HOST:PORT")]
    pub xds_address: String,
    /// The mesh's root certificate(s) (PEM) the xDS port's certificate must chain to.
    #[arg(long, env = "CROSSMESH_ROOT_CERT", value_name = "F")]
    pub root_cert: PathBuf,
    /// The workload's service-account token (audience `istio-ca`), read at every connection.
    #[arg(long, env = "CROSSMESH_TOKEN_FILE", value_name = "F")]
    pub token_file: PathBuf,
    /// Pod name.
    #[arg(long, env = "CROSSMESH_NAME", value_name = "POD")]
    pub name: String,
    #[arg(long, env = "CROSSMESH_NAMESPACE", value_name = "NS")]
    pub namespace: String,
    /// The Pod's IP (part of its node id).
    #[arg(long, env = "CROSSMESH_IP", value_name = "IP")]
    pub ip: std::net::IpAddr,
    /// The Pod's service account: the identity the token must prove.
    #[arg(
        long,
        env = "CROSSMESH_SERVICE_ACCOUNT",
        value_name = "SA",
        default_value = "default"
    )]
    pub service_account: String,
    /// The member cluster the Pod runs in (Istio's CLUSTER_ID).
    #[arg(
        long,
        env = "CROSSMESH_CLUSTER_ID",
        value_name = "C",
        default_value = "Kubernetes"
    )]
    pub cluster_id: String,
    /// The mesh's domain suffix (the node id's `NS.svc.<suffix>`).
    #[arg(
        long,
        env = "CROSSMESH_DOMAIN_SUFFIX",
        value_name = "SUFFIX",
        default_value = "cluster.local"
    )]
    pub domain_suffix: String,
    /// Where the files are written.
    #[arg(long, env = "CROSSMESH_CERT_DIR", value_name = "DIR")]
    pub cert_dir: PathBuf,
}

/// `crossmesh iptables`; each flag matches a `traffic.sidecar.istio.io/*` annotation.
#[derive(Debug, Args)]
pub struct IptablesArgs {
    /// Envoy's outbound capture port (its virtual outbound listener).
    #[arg(long, env = "CROSSMESH_PROXY_PORT", value_name = "PORT", default_value_t = crate::iptables::DEFAULT_PROXY_PORT)]
    pub proxy_port: u16,
    /// Envoy's inbound capture port (its virtual inbound listener).
    #[arg(long, env = "CROSSMESH_INBOUND_CAPTURE_PORT", value_name = "PORT",
          default_value_t = crate::iptables::DEFAULT_INBOUND_CAPTURE_PORT)]
    pub inbound_capture_port: u16,
    /// Envoy's UID: its traffic is never captured.
    #[arg(long, env = "CROSSMESH_PROXY_UID", value_name = "UID", default_value_t = crate::iptables::DEFAULT_PROXY_UID)]
    pub proxy_uid: u32,
    /// Envoy's GID: its traffic is never captured.
    #[arg(long, env = "CROSSMESH_PROXY_GID", value_name = "GID", default_value_t = crate::iptables::DEFAULT_PROXY_UID)]
    pub proxy_gid: u32,
    /// Inbound ports captured: `*` or a comma-separated list (empty: none).
    #[arg(
        long,
        env = "CROSSMESH_INBOUND_PORTS",
        value_name = "PORTS",
        default_value = "*"
    )]
    pub inbound_ports: String,
    /// Inbound ports not captured when --inbound-ports is `*`.
    #[arg(
        long,
        env = "CROSSMESH_EXCLUDE_INBOUND_PORTS",
        value_name = "PORTS",
        default_value = "15090,15021,15020"
    )]
    pub exclude_inbound_ports: String,
    /// Outbound ports always captured.
    #[arg(
        long,
        env = "CROSSMESH_INCLUDE_OUTBOUND_PORTS",
        value_name = "PORTS",
        default_value = ""
    )]
    pub include_outbound_ports: String,
    /// Outbound ports never captured.
    #[arg(
        long,
        env = "CROSSMESH_EXCLUDE_OUTBOUND_PORTS",
        value_name = "PORTS",
        default_value = ""
    )]
    pub exclude_outbound_ports: String,
    /// Outbound destinations captured: `*` or comma-separated CIDRs (empty: none).
    #[arg(
        long,
        env = "CROSSMESH_INCLUDE_OUTBOUND_IP_RANGES",
        value_name = "CIDRS",
        default_value = "*"
    )]
    pub include_outbound_ip_ranges: String,
    /// Outbound destinations never captured (CIDRs).
    #[arg(
        long,
        env = "CROSSMESH_EXCLUDE_OUTBOUND_IP_RANGES",
        value_name = "CIDRS",
        default_value = ""
    )]
    pub exclude_outbound_ip_ranges: String,
    /// Also program IPv6 (`ip6tables-restore`).
    #[arg(long, env = "CROSSMESH_IPV6")]
    pub ipv6: bool,
    /// Print the `iptables-restore` input instead of loading it.
    #[arg(long, env = "CROSSMESH_DRY_RUN")]
    pub dry_run: bool,
}

impl IptablesArgs {
    /// The capture configuration; an error names the flag and the bad value.
    pub fn capture(
        &self,
    ) -> Result<crate::iptables::CaptureConfig, crate::iptables::IptablesError> {
        use crate::iptables as ipt;
        Ok(ipt::CaptureConfig {
            proxy_port: self.proxy_port,
            inbound_capture_port: self.inbound_capture_port,
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            inbound_ports: ipt::parse_ports("--inbound-ports", &self.inbound_ports)?,
            exclude_inbound_ports: ipt::parse_port_list(
                "--exclude-inbound-ports",
                &self.exclude_inbound_ports,
            )?,
            include_outbound_ports: ipt::parse_port_list(
                "--include-outbound-ports",
                &self.include_outbound_ports,
            )?,
            exclude_outbound_ports: ipt::parse_port_list(
                "--exclude-outbound-ports",
                &self.exclude_outbound_ports,
            )?,
            include_outbound_ranges: ipt::parse_ranges(
                "--include-outbound-ip-ranges",
                &self.include_outbound_ip_ranges,
            )?,
            exclude_outbound_ranges: ipt::parse_cidr_list(
                "--exclude-outbound-ip-ranges",
                &self.exclude_outbound_ip_ranges,
            )?,
            ipv6: self.ipv6,
        })
    }
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The hub's agent port (its mesh file's `agentAddress`), HOST:PORT.
    #[arg(long, env = "CROSSMESH_HUB", value_name = "HOST:PORT")]
    pub hub: String,
    /// This cluster's name in the hub's mesh file.
    #[arg(long, env = "CROSSMESH_CLUSTER", value_name = "NAME")]
    pub cluster: String,
    /// The enrolment token (`crossmesh agent-token create`), used once when
    /// --state-dir holds no certificate yet.
    #[arg(long, env = "CROSSMESH_TOKEN_FILE", value_name = "F")]
    pub token_file: Option<PathBuf>,
    /// The mesh's root certificate(s) (PEM): the hub's certificate must chain to one.
    #[arg(long, env = "CROSSMESH_ROOT_CERT", value_name = "F")]
    pub root_cert: PathBuf,
    /// Kubeconfig of this cluster's API server; default: in-cluster credentials.
    #[arg(long, env = "CROSSMESH_KUBECONFIG", value_name = "F")]
    pub kubeconfig: Option<PathBuf>,
    /// Where the issued client certificate, its key and the trust bundle are
    /// kept; default: the Secret `crossmesh-agent-state` in the agent's namespace
    /// (`POD_NAMESPACE`, else its service account's).
    #[arg(long, env = "CROSSMESH_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The most JSON (bytes) the agent keeps of its cluster's slimmed objects;
    /// objects beyond it are left out and reported to the hub (`/debug/clusterz`).
    #[arg(
        long,
        env = "CROSSMESH_MAX_INVENTORY_BYTES",
        value_name = "BYTES",
        default_value_t = crate::agent::DEFAULT_MAX_INVENTORY_BYTES
    )]
    pub max_inventory_bytes: usize,
    #[command(flatten)]
    pub webhook: AgentWebhookArgs,
}

/// `crossmesh agent`'s sidecar-injection webhook (`agent::webhook`); served only
/// with --webhook-service.
#[derive(Debug, Args)]
pub struct AgentWebhookArgs {
    /// The Service the API server reaches the webhook by (in --namespace); its
    /// serving certificate names `<NAME>.<namespace>.svc`. Without it the agent
    /// serves no webhook.
    #[arg(long, env = "CROSSMESH_WEBHOOK_SERVICE", value_name = "NAME")]
    pub webhook_service: Option<String>,
    /// HTTPS listen address of the webhook (Istio's 15017).
    #[arg(
        long,
        env = "CROSSMESH_WEBHOOK_ADDRESS",
        value_name = "ADDR",
        default_value = "0.0.0.0:15017"
    )]
    pub webhook_address: SocketAddr,
    /// The MutatingWebhookConfiguration whose caBundle the agent keeps equal to
    /// the mesh trust bundle.
    #[arg(
        long,
        env = "CROSSMESH_WEBHOOK_CONFIG",
        value_name = "NAME",
        default_value = "crossmesh-sidecar-injector"
    )]
    pub webhook_config: String,
    /// The agent's namespace (the webhook Service's); default: `POD_NAMESPACE`,
    /// else the service account's namespace file.
    #[arg(long, env = "CROSSMESH_NAMESPACE", value_name = "NS")]
    pub namespace: Option<String>,
    /// The hub's TLS xDS address as injected sidecars reach it (its
    /// `xdsTlsAddress`), HOST:PORT; needed with --webhook-service.
    #[arg(long, env = "CROSSMESH_PROXY_XDS_ADDRESS", value_name = "HOST:PORT")]
    pub proxy_xds_address: Option<crate::bootstrap::XdsAddress>,
    /// This cluster's network in the hub's mesh file (Istio's NETWORK); empty:
    /// the one flat network.
    #[arg(
        long,
        env = "CROSSMESH_NETWORK",
        value_name = "NAME",
        default_value = ""
    )]
    pub network: String,
    /// The mesh's domainSuffix.
    #[arg(
        long,
        env = "CROSSMESH_DOMAIN_SUFFIX",
        value_name = "SUFFIX",
        default_value = "cluster.local"
    )]
    pub domain_suffix: String,
    /// Envoy's image in injected pods.
    #[arg(long, env = "CROSSMESH_PROXY_IMAGE", value_name = "IMAGE")]
    pub proxy_image: Option<String>,
    /// The crossmesh image (`crossmesh bootstrap`) in injected pods.
    #[arg(long, env = "CROSSMESH_CROSSMESH_IMAGE", value_name = "IMAGE")]
    pub crossmesh_image: Option<String>,
    /// The proxy-init image (`crossmesh iptables`) in injected pods.
    #[arg(long, env = "CROSSMESH_PROXY_INIT_IMAGE", value_name = "IMAGE")]
    pub proxy_init_image: Option<String>,
}

impl AgentWebhookArgs {
    /// The webhook's options (`None` without --webhook-service).
    pub fn options(
        &self,
        cluster: &str,
    ) -> anyhow::Result<Option<crate::agent::webhook::WebhookOptions>> {
        let Some(service) = self.webhook_service.clone() else {
            return Ok(None);
        };
        let namespace = match &self.namespace {
            Some(n) => n.clone(),
            None => std::env::var(crate::agent::state::NAMESPACE_ENV)
                .ok()
                .or_else(|| {
                    std::fs::read_to_string(
                        "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
                    )
                    .ok()
                })
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .context("--webhook-service needs the agent's namespace: --namespace")?,
        };
        let xds = self.proxy_xds_address.clone().context(
            "--webhook-service needs --proxy-xds-address: the hub's TLS xDS address for sidecars",
        )?;
        let mut inject = crate::agent::inject::InjectConfig {
            xds_address: xds,
            cluster_id: cluster.to_string(),
            network: self.network.clone(),
            domain_suffix: self.domain_suffix.clone(),
            ..Default::default()
        };
        if let Some(i) = &self.proxy_image {
            inject.proxy_image = i.clone();
        }
        if let Some(i) = &self.crossmesh_image {
            inject.crossmesh_image = i.clone();
        }
        if let Some(i) = &self.proxy_init_image {
            inject.proxy_init_image = i.clone();
        }
        Ok(Some(crate::agent::webhook::WebhookOptions {
            address: self.webhook_address,
            service,
            namespace,
            config_name: self.webhook_config.clone(),
            inject,
        }))
    }
}

#[derive(Debug, Subcommand)]
pub enum AgentTokenCommand {
    /// Print a single-use enrolment token for an agent cluster of the mesh file
    /// (kept, hashed, in `<ca.stateDir>.agent-tokens`, where `serve` reads it).
    Create(AgentTokenCreateArgs),
    /// Revoke an agent cluster: certificates issued to it until now are refused
    /// (an open stream closes within seconds) and its unused tokens deleted; a
    /// new token enrols it again.
    Revoke(AgentTokenRevokeArgs),
}

#[derive(Debug, Args)]
pub struct AgentTokenRevokeArgs {
    /// The hub's mesh file.
    #[arg(long, env = "CROSSMESH_MESH", value_name = "FILE")]
    pub mesh: PathBuf,
    /// The agent cluster (`clusters[].agent`) to revoke.
    #[arg(long, env = "CROSSMESH_CLUSTER", value_name = "NAME")]
    pub cluster: String,
}

#[derive(Debug, Args)]
pub struct AgentTokenCreateArgs {
    /// The hub's mesh file.
    #[arg(long, env = "CROSSMESH_MESH", value_name = "FILE")]
    pub mesh: PathBuf,
    /// The agent cluster (`clusters[].agent`) the token enrols.
    #[arg(long, env = "CROSSMESH_CLUSTER", value_name = "NAME")]
    pub cluster: String,
    /// How long the token can be used, e.g. `30m`, `1h`.
    #[arg(long, env = "CROSSMESH_TTL", value_name = "DURATION", default_value = "1h",
          value_parser = crate::config::parse_duration)]
    pub ttl: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The mesh file (YAML): member clusters, config sources, addresses.
    #[arg(long, env = "CROSSMESH_MESH", value_name = "FILE")]
    pub mesh: PathBuf,
    /// xDS gRPC listen address; overrides the mesh file's `xdsAddress`
    /// [mesh file default: 127.0.0.1:15010].
    #[arg(long, env = "CROSSMESH_XDS_ADDRESS", value_name = "ADDR")]
    pub xds_address: Option<SocketAddr>,
    /// TLS, authenticated xDS listen address (istiod uses 15012); overrides the
    /// mesh file's `xdsTlsAddress` [mesh file default: none, no TLS port].
    #[arg(long, env = "CROSSMESH_XDS_TLS_ADDRESS", value_name = "ADDR")]
    pub xds_tls_address: Option<SocketAddr>,
    /// Listen address for member-cluster agents (mutual TLS); overrides the mesh
    /// file's `agentAddress` [mesh file default: none, no agent port].
    #[arg(long, env = "CROSSMESH_AGENT_ADDRESS", value_name = "ADDR")]
    pub agent_address: Option<SocketAddr>,
    /// Debug HTTP listen address; overrides the mesh file's `debugAddress`
    /// [mesh file default: 127.0.0.1:15014].
    #[arg(long, env = "CROSSMESH_DEBUG_ADDRESS", value_name = "ADDR")]
    pub debug_address: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// An ingress or east-west gateway (Istio's `router`).
    Gateway,
    Sidecar,
    /// A proxyless gRPC application: prints the gRPC xDS bootstrap (JSON, for
    /// `GRPC_XDS_BOOTSTRAP`) instead of Envoy's.
    Grpc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Interception {
    /// iptables redirect: virtual listeners on 15001 and 15006.
    Redirect,
    /// No iptables: listeners bind real addresses, as the `Sidecar` resource says.
    None,
}

#[derive(Debug, Args)]
pub struct BootstrapArgs {
    #[arg(long, env = "CROSSMESH_ROLE", value_enum)]
    pub role: Role,
    /// Pod name.
    #[arg(long, env = "CROSSMESH_NAME", value_name = "POD", value_parser = bootstrap::parse_pod_name)]
    pub name: String,
    #[arg(long, env = "CROSSMESH_NAMESPACE", value_name = "NS", value_parser = bootstrap::parse_namespace)]
    pub namespace: String,
    /// The proxy's IP: part of its node id, and where `NONE`-mode listeners bind.
    #[arg(long, env = "CROSSMESH_IP")]
    pub ip: IpAddr,
    /// Pod labels, `k=v,k=v` (Gateway selectors match these).
    #[arg(long, env = "CROSSMESH_LABELS", value_name = "K=V,...", default_value = "",
          value_parser = bootstrap::parse_labels)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Where the proxy dials crossmesh: IP:PORT or HOST:PORT.
    #[arg(long, env = "CROSSMESH_XDS_ADDRESS", value_name = "ADDR",
          default_value = crate::config::DEFAULT_XDS_ADDRESS)]
    pub xds_address: XdsAddress,
    /// Envoy admin port, bound on 127.0.0.1 (gateway and sidecar roles).
    #[arg(long, env = "CROSSMESH_ADMIN_PORT", value_name = "N",
          required_if_eq_any = [("role", "gateway"), ("role", "sidecar")])]
    pub admin_port: Option<u16>,
    /// REGION/ZONE/SUBZONE.
    #[arg(long, env = "CROSSMESH_LOCALITY", value_name = "REGION/ZONE/SUBZONE",
          value_parser = bootstrap::parse_locality)]
    pub locality: Option<Locality>,
    /// The member cluster the proxy runs in (Istio's CLUSTER_ID).
    #[arg(long, env = "CROSSMESH_CLUSTER_ID", value_name = "C", default_value = "Kubernetes",
          value_parser = bootstrap::parse_token)]
    pub cluster_id: String,
    /// The proxy's network (Istio's NETWORK); empty is the one flat network.
    #[arg(long, env = "CROSSMESH_NETWORK", value_name = "N", default_value = "",
          value_parser = bootstrap::parse_token)]
    pub network: String,
    #[arg(long, env = "CROSSMESH_SERVICE_ACCOUNT", value_name = "SA", default_value = "default",
          value_parser = bootstrap::parse_token)]
    pub service_account: String,
    #[arg(
        long,
        env = "CROSSMESH_INTERCEPTION",
        value_enum,
        default_value = "redirect"
    )]
    pub interception: Interception,
    /// Use state-of-the-world ADS instead of Delta.
    #[arg(long, env = "CROSSMESH_SOTW")]
    pub sotw: bool,
    /// The mesh's domain suffix, the last part of the node id `NS.svc.<suffix>`.
    #[arg(long, env = "CROSSMESH_DOMAIN_SUFFIX", value_name = "SUFFIX",
          default_value = "cluster.local", value_parser = bootstrap::parse_token)]
    pub domain_suffix: String,
    /// Write the bootstrap to FILE (replaced atomically) instead of stdout, e.g.
    /// from an init container whose image has no shell to redirect with.
    #[arg(long, env = "CROSSMESH_OUTPUT", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// `--role grpc`: the directory of the workload's certificate files
    /// (cert-chain.pem, key.pem, root-cert.pem; `crossmesh workload-certs`
    /// writes them), read by gRPC's `file_watcher` certificate provider.
    #[arg(long, env = "CROSSMESH_CERT_DIR", value_name = "DIR",
          default_value = crate::bootstrap::GRPC_CERT_DIR)]
    pub cert_dir: PathBuf,
    /// Connect over TLS (crossmesh's `xdsTlsAddress`), trusting the PEM roots in
    /// FILE (the mesh's root-cert.pem). Needs --token-file.
    #[arg(
        long,
        env = "CROSSMESH_ROOT_CERT",
        value_name = "FILE",
        requires = "token_file"
    )]
    pub root_cert: Option<PathBuf>,
    /// Authenticate with the service-account token in FILE, read again by Envoy
    /// on every reconnect (rotated tokens are picked up). Needs --root-cert.
    #[arg(
        long,
        env = "CROSSMESH_TOKEN_FILE",
        value_name = "FILE",
        requires = "root_cert"
    )]
    pub token_file: Option<PathBuf>,
    /// Push Envoy's stats to crossmesh's metrics sink (the live service graph,
    /// `/debug/graphz`); `false` leaves the sink out.
    #[arg(long, env = "CROSSMESH_STATS_SINK", value_name = "BOOL", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub stats_sink: bool,
    /// Envoy's `stats_flush_interval`: how often the sink reports, in seconds.
    #[arg(long, env = "CROSSMESH_STATS_FLUSH_INTERVAL", value_name = "SECONDS",
          default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub stats_flush_interval: u32,
    /// `graph` (default) keeps Istio's default inclusion prefixes plus the
    /// graph's per-cluster stats, for every consumer (Envoy has one matcher:
    /// admin /stats, Prometheus and the sink); `all` keeps every Envoy stat.
    #[arg(
        long,
        env = "CROSSMESH_STATS_MATCHER",
        value_enum,
        default_value = "graph"
    )]
    pub stats_matcher: StatsMatcherArg,
}

/// `--stats-matcher`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatsMatcherArg {
    All,
    Graph,
}

impl From<BootstrapArgs> for BootstrapOptions {
    fn from(a: BootstrapArgs) -> Self {
        BootstrapOptions {
            role: match a.role {
                Role::Gateway => ProxyRole::Gateway,
                Role::Sidecar => ProxyRole::Sidecar,
                Role::Grpc => ProxyRole::Grpc,
            },
            name: a.name,
            namespace: a.namespace,
            ip: a.ip,
            labels: a.labels,
            xds_address: a.xds_address,
            admin_port: a.admin_port.unwrap_or_default(),
            locality: a.locality.unwrap_or_default(),
            cluster_id: a.cluster_id,
            network: a.network,
            service_account: a.service_account,
            interception: match a.interception {
                Interception::Redirect => InterceptionMode::Redirect,
                Interception::None => InterceptionMode::None,
            },
            sotw: a.sotw,
            domain_suffix: a.domain_suffix,
            secure: match (a.root_cert, a.token_file) {
                (Some(root_cert), Some(token_file)) => Some(bootstrap::SecureXds {
                    root_cert: absolute(root_cert),
                    token_file: absolute(token_file),
                }),
                _ => None,
            },
            stats_sink: bootstrap::StatsSink {
                enabled: a.stats_sink,
                flush_interval_secs: a.stats_flush_interval,
                matcher: match a.stats_matcher {
                    StatsMatcherArg::All => bootstrap::StatsMatcher::All,
                    StatsMatcherArg::Graph => bootstrap::StatsMatcher::Graph,
                },
            },
        }
    }
}

/// `p` made absolute against the current directory: Envoy resolves relative
/// paths against its own, which may differ.
fn absolute(p: PathBuf) -> PathBuf {
    std::path::absolute(&p).unwrap_or(p)
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// After printing the answers, keep the mesh running until Ctrl-C (or
    /// SIGTERM) and print commands to try against it.
    #[arg(long, env = "CROSSMESH_KEEP")]
    pub keep: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// YAML files (multi-document) to check.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RemoteSecretArgs {
    /// The member cluster's name in the mesh.
    #[arg(long, env = "CROSSMESH_NAME", value_name = "NAME")]
    pub name: String,
    /// Kubeconfig of the member cluster.
    #[arg(long, env = "CROSSMESH_KUBECONFIG", value_name = "F")]
    pub kubeconfig: PathBuf,
    /// Context in the kubeconfig; default its current context.
    #[arg(long, env = "CROSSMESH_CONTEXT", value_name = "C")]
    pub context: Option<String>,
}

/// Process entry point: parse, set up logging, run, map failure to one line.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if matches!(
                e.kind(),
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            eprintln!("crossmesh: {}", clap_reason(&e));
            return ExitCode::from(2);
        }
    };
    init_tracing();
    crate::tls::install_default_provider();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crossmesh: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Clap's message up to its first blank line (the reason, plus the list of missing
/// arguments when there is one) on one line, without the `error: ` prefix.
fn clap_reason(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let reason: Vec<&str> = text
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let reason = reason.join(" ");
    let reason = reason.trim_start_matches("error: ");
    if reason.is_empty() {
        "bad arguments; see --help".to_string()
    } else {
        reason.to_string()
    }
}

/// An error and its causes on one line: each cause's first line (YAML parser
/// errors go on to quote a multi-line snippet), skipping causes whose text an outer
/// message already includes (`thiserror` messages often embed their source).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let first = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("");
        if first.is_empty() || out.contains(first) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(first);
    }
    out
}

/// Logs go to stderr (stdout carries `bootstrap` YAML), filtered by `RUST_LOG`
/// directives, default `info`.
fn init_tracing() {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter};
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// The mesh file with the command line's overrides applied.
pub fn load_mesh(args: &ServeArgs) -> anyhow::Result<MeshConfig> {
    let mut mesh = MeshConfig::load(&args.mesh)?;
    if let Some(a) = args.xds_address {
        mesh.xds_address = a;
    }
    if let Some(a) = args.debug_address {
        mesh.debug_address = a;
    }
    if let Some(a) = args.xds_tls_address {
        mesh.xds_tls_address = Some(a);
    }
    if let Some(a) = args.agent_address {
        mesh.agent_address = Some(a);
    }
    Ok(mesh)
}

/// The token store of the mesh file (its CA's directory, or with
/// `ca.kubernetesSecret` the Secret of the Pod's namespace), once `cluster` is
/// known to be one of its agent clusters.
fn agent_token_store(
    mesh_file: &std::path::Path,
    cluster: &str,
) -> anyhow::Result<crate::security::agent_tokens::TokenStore> {
    let mesh = MeshConfig::load(mesh_file)?;
    let is_agent = mesh.clusters.iter().any(|c| {
        c.name == cluster && matches!(c.source, crate::config::ClusterSource::Agent { .. })
    });
    if !is_agent {
        anyhow::bail!(
            "cluster {cluster:?} is not an agent cluster of {} (clusters[] with agent:)",
            mesh_file.display()
        );
    }
    Ok(crate::security::agent_tokens::TokenStore::from_mesh(&mesh)?)
}

/// Write `text` to `path` through a temporary file in the same directory and a
/// rename, so a reader (Envoy starting next) never sees half a file.
fn write_replacing(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("--output {}: not a file path", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Run one parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let mesh = load_mesh(&args)?;
            runtime()?.block_on(crate::serve::serve(mesh))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bootstrap(args) => {
            let output = args.output.clone();
            let cert_dir = absolute(args.cert_dir.clone());
            let opts: BootstrapOptions = (*args).into();
            let yaml = if opts.role == ProxyRole::Grpc {
                let mut json = bootstrap::grpc_bootstrap_json(&opts)?;
                json["certificate_providers"] = bootstrap::grpc_certificate_providers(&cert_dir);
                serde_json::to_string_pretty(&json)? + "\n"
            } else {
                bootstrap::bootstrap_yaml(&opts).context("cannot print the bootstrap as YAML")?
            };
            match output {
                None => print!("{yaml}"),
                Some(path) => write_replacing(&path, &yaml)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => runtime()?.block_on(crate::demo::run(args.keep)),
        Command::Status(args) => {
            let token = match &args.token_file {
                None => None,
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("cannot read --token-file {}", f.display()))?
                        .trim()
                        .to_string(),
                ),
            };
            let table = runtime()?.block_on(crate::debug::status::run(
                args.debug_address,
                token.as_deref(),
            ))?;
            print!("{table}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate(args) => {
            let (problems, warnings) = crate::validate::validate_paths_with_warnings(&args.files);
            for w in &warnings {
                println!("warning: {w}");
            }
            for p in &problems {
                println!("{p}");
            }
            if problems.is_empty() {
                println!("no problems found in {} path(s)", args.files.len());
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("crossmesh: {} problem(s) found", problems.len());
                Ok(ExitCode::FAILURE)
            }
        }
        Command::CreateRemoteSecret(args) => {
            let yaml = runtime()?.block_on(crate::sources::remote_secret::create_remote_secret(
                &args.name,
                &args.kubeconfig,
                args.context.as_deref(),
            ))?;
            print!("{yaml}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent(a) => {
            let webhook = a.webhook.options(&a.cluster)?;
            let opts = crate::agent::AgentOptions {
                hub: a.hub,
                cluster: a.cluster,
                token_file: a.token_file,
                root_cert: a.root_cert,
                kubeconfig: a.kubeconfig,
                state_dir: a.state_dir,
                webhook,
                max_inventory_bytes: a.max_inventory_bytes,
            };
            runtime()?.block_on(crate::agent::run(opts))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::WorkloadCerts(a) => {
            let a = *a;
            let opts = crate::workload_certs::Options {
                node_id: format!(
                    "sidecar~{}~{}.{}~{}.svc.{}",
                    a.ip, a.name, a.namespace, a.namespace, a.domain_suffix
                ),
                xds_address: a.xds_address,
                root_cert: a.root_cert,
                token_file: a.token_file,
                namespace: a.namespace,
                service_account: a.service_account,
                cluster_id: a.cluster_id,
                dir: a.cert_dir,
            };
            runtime()?.block_on(crate::workload_certs::run(opts))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Iptables(a) => {
            let capture = a.capture()?;
            // Printed either way: applied, they go to the init container's log,
            // as istio-init's do.
            print!("{}", crate::iptables::dry_run_text(&capture));
            if !a.dry_run {
                crate::iptables::apply(&capture)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::AgentToken(AgentTokenCommand::Revoke(a)) => {
            let n = runtime()?.block_on(async {
                let store = agent_token_store(&a.mesh, &a.cluster)?;
                anyhow::Ok(
                    store
                        .revoke(&a.cluster, std::time::SystemTime::now())
                        .await?,
                )
            })?;
            eprintln!(
                "revoked cluster {}: its certificates are refused from now on; {n} unused token(s) deleted",
                a.cluster
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::AgentToken(AgentTokenCommand::Create(a)) => {
            let token = runtime()?.block_on(async {
                let store = agent_token_store(&a.mesh, &a.cluster)?;
                anyhow::Ok(
                    store
                        .create(&a.cluster, a.ttl, std::time::SystemTime::now())
                        .await?,
                )
            })?;
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_reads_an_env_var() {
        fn walk(cmd: &clap::Command) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if a.is_positional() || id == "help" || id == "version" {
                    continue;
                }
                let want = format!(
                    "CROSSMESH_{}",
                    a.get_long().unwrap_or(id).to_uppercase().replace('-', "_")
                );
                assert_eq!(
                    a.get_env().and_then(|e| e.to_str()),
                    Some(want.as_str()),
                    "{} --{id}",
                    cmd.get_name()
                );
            }
            cmd.get_subcommands().for_each(walk);
        }
        walk(&Cli::command());
    }

    #[test]
    fn bootstrap_flags_parse() {
        let cli = Cli::try_parse_from([
            "crossmesh",
            "bootstrap",
            "--role",
            "sidecar",
            "--name",
            "web-1",
            "--namespace",
            "ns",
            "--ip",
            "127.0.0.5",
            "--labels",
            "app=web,version=v1",
            "--admin-port",
            "15000",
            "--locality",
            "r/z/s",
            "--interception",
            "none",
            "--sotw",
        ])
        .unwrap();
        let Command::Bootstrap(args) = cli.command else {
            panic!("bootstrap")
        };
        let o: BootstrapOptions = (*args).into();
        assert_eq!(o.role, ProxyRole::Sidecar);
        assert_eq!(o.interception, InterceptionMode::None);
        assert!(o.sotw);
        assert_eq!(o.labels["version"], "v1");
        assert_eq!(o.locality.subzone, "s");
        assert_eq!(o.xds_address.to_string(), "127.0.0.1:15010");
        assert_eq!(o.cluster_id, "Kubernetes");
    }

    #[test]
    fn bad_flag_gives_one_line_reason() {
        let e = Cli::try_parse_from(["crossmesh", "serve", "--mesh", "m", "--xds-address", "x"])
            .unwrap_err();
        let reason = clap_reason(&e);
        assert!(reason.contains("--xds-address"), "{reason}");
        assert!(!reason.contains('\n'));
    }
}
