//! The mesh file (`crossmesh serve --mesh FILE`, DESIGN.md §2) and the tunables.
//! Parsed once at startup into a typed, immutable `MeshConfig` passed down as `Arc`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod access_log;
pub mod tracing;

/// Default xDS listen address.
pub const DEFAULT_XDS_ADDRESS: &str = "127.0.0.1:15010";
/// Default debug HTTP listen address.
pub const DEFAULT_DEBUG_ADDRESS: &str = "127.0.0.1:15014";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("mesh file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mesh file {path}: {source}")]
    Parse {
        path: PathBuf,
        /// Boxed: the parser's error is large and this enum is returned often.
        source: Box<serde_saphyr::Error>,
    },
    #[error("mesh file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The mesh file as written (camelCase YAML). Unknown fields are an error so a typo
/// never silently changes behaviour.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MeshFile {
    trust_domain: Option<String>,
    domain_suffix: Option<String>,
    xds_address: Option<String>,
    /// The TLS, authenticated xDS port (DESIGN.md §5); off unless set.
    xds_tls_address: Option<String>,
    /// The member-cluster agents' port (DESIGN.md §5); off unless set.
    agent_address: Option<String>,
    /// Extra names of the TLS xDS and agent ports' certificates (see
    /// [`MeshConfig::server_names`]).
    server_names: Option<Vec<String>>,
    debug_address: Option<String>,
    /// The mesh CA (DESIGN.md §5); see [`CaConfig`].
    ca: Option<CaFile>,
    #[serde(default)]
    clusters: Vec<ClusterFile>,
    #[serde(default)]
    config: Vec<ConfigSourceFile>,
    #[serde(default)]
    networks: BTreeMap<String, NetworkFile>,
    #[serde(default)]
    tunables: TunablesFile,
    /// `keep` (default) or `{dropAfter: DURATION}`; see [`MeshConfig::drop_unreachable_after`].
    unreachable_cluster_endpoints: Option<UnreachableFile>,
    /// Namespace of the remote secrets in config clusters.
    remote_secret_namespace: Option<String>,
    /// Audiences a proxy's service-account token must carry (one of).
    token_audiences: Option<Vec<String>>,
    /// Istio's meshConfig `pathNormalization` (see [`PathNormalization`]).
    path_normalization: Option<PathNormalizationFile>,
    /// Istio's meshConfig `outboundTrafficPolicy` (see [`OutboundTrafficPolicy`]).
    outbound_traffic_policy: Option<OutboundTrafficPolicyFile>,
    /// Who may read the debug endpoint (see [`DebugAuth`]).
    debug_auth: Option<DebugAuthFile>,
    /// Istio's meshConfig `accessLogFile` (see [`AccessLog`]).
    access_log_file: Option<String>,
    /// Istio's meshConfig `accessLogEncoding`: `TEXT` (default) or `JSON`.
    access_log_encoding: Option<String>,
    /// Istio's meshConfig `accessLogFormat`.
    access_log_format: Option<String>,
    /// Istio's meshConfig `defaultConfig` (ProxyConfig); only `gatewayTopology`.
    default_config: Option<ProxyConfigFile>,
    /// The live service graph from Envoy's metrics sink (see [`ServiceGraphConfig`]).
    service_graph: Option<ServiceGraphFile>,
    /// Istio's meshConfig `enableTracing`, `extensionProviders` and
    /// `defaultProviders` (see [`tracing::Tracing`]).
    enable_tracing: Option<bool>,
    #[serde(default)]
    extension_providers: Vec<tracing::ExtensionProviderFile>,
    default_providers: Option<tracing::DefaultProvidersFile>,
}

/// `serviceGraph:` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceGraphFile {
    enabled: Option<bool>,
    max_edges_per_proxy: Option<usize>,
    max_edges: Option<usize>,
}

/// `defaultConfig:` as written: the part of Istio's ProxyConfig crossmesh reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProxyConfigFile {
    gateway_topology: Option<GatewayTopologyFile>,
    tracing: Option<tracing::ProxyTracingFile>,
}

/// `defaultConfig.gatewayTopology:` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GatewayTopologyFile {
    num_trusted_proxies: Option<u32>,
    forward_client_cert_details: Option<String>,
}

/// `outboundTrafficPolicy:` as written, Istio's meshConfig shape.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OutboundTrafficPolicyFile {
    mode: Option<String>,
}

/// Istio's meshConfig `outboundTrafficPolicy.mode`: what a sidecar does with
/// traffic to a destination no service of its scope claims. A `Sidecar`'s own
/// `outboundTrafficPolicy` overrides it for the proxies it selects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum OutboundTrafficPolicy {
    /// Pass it through to the original destination (`PassthroughCluster`);
    /// Istio's default.
    #[default]
    AllowAny,
    /// Refuse it (`BlackHoleCluster`; HTTP gets 502 from the `block_all` route).
    RegistryOnly,
}

/// `pathNormalization:` as written, Istio's meshConfig shape.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PathNormalizationFile {
    normalization: Option<String>,
}

/// `debugAuth:` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DebugAuthFile {
    required: Option<bool>,
    token_file: Option<PathBuf>,
    #[serde(default)]
    service_accounts: Vec<String>,
}

/// `ca:` as written.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CaFile {
    dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    #[serde(rename = "workloadCertTTL")]
    workload_cert_ttl: Option<DurationFile>,
    reload_interval: Option<DurationFile>,
    reissue_window: Option<DurationFile>,
    kubernetes_secret: Option<String>,
    #[serde(default)]
    root_cert_namespaces: Vec<String>,
}

/// `unreachableClusterEndpoints`: the word `keep`, or a map `{dropAfter: 60s}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum UnreachableFile {
    Word(String),
    Drop(DropAfterFile),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DropAfterFile {
    drop_after: DurationFile,
}

/// A duration as written: `60s`; a bare number is read so it can be rejected
/// with a reason (it has no unit).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum DurationFile {
    Text(String),
    Number(i64),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClusterFile {
    name: String,
    network: Option<String>,
    manifests: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    /// `true`: the Pod's own service-account credentials (see [`ClusterSource::InCluster`]).
    in_cluster: Option<bool>,
    /// Default locality `region/zone/subzone` for endpoints whose Node has no labels.
    locality: Option<String>,
    /// Verify this cluster's service-account tokens locally (see [`TokenIssuer`]).
    token_issuer: Option<TokenIssuerFile>,
    /// The cluster is fed by a `crossmesh agent` (see [`ClusterSource::Agent`]).
    agent: Option<AgentFile>,
}

/// `clusters[].agent:` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AgentFile {
    namespaces: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenIssuerFile {
    issuer: String,
    jwks: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConfigSourceFile {
    manifests: Option<PathBuf>,
    cluster: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NetworkFile {
    #[serde(default)]
    gateways: Vec<NetworkGateway>,
}

/// An east-west gateway of a network (mesh file `networks.NAME.gateways[]`, or
/// discovered by the registry from a labelled Service).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkGateway {
    pub address: String,
    pub port: u16,
    /// The member cluster whose Service the gateway was discovered from; `None`
    /// for mesh-file gateways (not settable there, as in Istio's MeshNetworks).
    /// Remote endpoints prefer gateways of their own cluster (Istio's
    /// `selectNetworkGateways`).
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TunablesFile {
    debounce_ms: Option<u64>,
    debounce_max_ms: Option<u64>,
    ready_timeout_ms: Option<u64>,
    jwks_refresh_ms: Option<u64>,
    agent_max_snapshot_bytes: Option<u64>,
}

/// Knobs with their defaults and meaning, in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunables {
    /// Quiet period after the last change before a push starts (Istio's
    /// `PILOT_DEBOUNCE_AFTER`, 100 ms).
    pub debounce: Duration,
    /// Longest a push may be delayed by a continuous stream of changes (Istio's
    /// `PILOT_DEBOUNCE_MAX`, 10 s there). 250 ms here: under steady churn a push
    /// goes out at least four times a second, so no endpoint is stale for long;
    /// pushes are incremental, so the extra pushes cost little (BENCHMARKS.md).
    pub debounce_max: Duration,
    /// How long `/ready` waits for a member cluster that cannot sync.
    pub ready_timeout: Duration,
    /// How often the keys of a RequestAuthentication `jwksUri` are fetched again
    /// (`jwksRefreshMs`; Istio's `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`, 20 min).
    pub jwks_refresh: Duration,
    /// Most object bytes the hub buffers for one agent snapshot before its
    /// end-of-snapshot markers (`agentMaxSnapshotBytes`); a larger snapshot ends
    /// the stream (RESOURCE_EXHAUSTED, on `/debug/clusterz`) and the cluster keeps
    /// its last state. 256 MiB: a 10,000-Pod cluster's snapshot is 3.8 MB (380
    /// bytes per Pod, BENCHMARKS.md), so this holds some 700,000 Pods, far above
    /// Kubernetes' 150,000 per cluster.
    pub agent_max_snapshot_bytes: u64,
}

impl Default for Tunables {
    fn default() -> Self {
        Tunables {
            debounce: Duration::from_millis(100),
            debounce_max: Duration::from_millis(250),
            ready_timeout: Duration::from_secs(30),
            jwks_refresh: Duration::from_secs(20 * 60),
            agent_max_snapshot_bytes: 256 << 20,
        }
    }
}

/// A member cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub name: String,
    /// Empty means the one flat network.
    pub network: String,
    pub source: ClusterSource,
    /// Default locality for endpoints whose Node carries no topology labels.
    pub locality: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterSource {
    /// A directory of Kubernetes YAML, watched.
    Manifests(PathBuf),
    /// A live API server.
    Kubeconfig {
        path: PathBuf,
        context: Option<String>,
    },
    /// The API server of the cluster crossmesh runs in, reached with the Pod's
    /// service-account credentials (mesh file `inCluster: true`), as client-go's
    /// `rest.InClusterConfig`: `KUBERNETES_SERVICE_HOST` / `KUBERNETES_SERVICE_PORT`,
    /// and the token, CA bundle and namespace mounted under
    /// `/var/run/secrets/kubernetes.io/serviceaccount/`. The token and CA files are
    /// re-read while running (kubelet rotates the projected token).
    InCluster,
    /// A `crossmesh agent` in the member cluster dials the hub's `agentAddress`
    /// and streams the cluster's objects (mesh file `agent: {namespaces: [..]}`);
    /// the hub holds no credential for the cluster (`sources::agent`).
    Agent {
        /// The namespaces whose objects the agent may publish; `None`: all.
        /// Nodes (cluster-scoped) are always accepted.
        namespaces: Option<Vec<String>>,
    },
}

/// Mesh file `clusters[].tokenIssuer`: a member cluster's service-account token
/// issuer, so its tokens are verified without calling its API server (the JWT's
/// signature against the issuer's public keys, `iss`, `aud`, `exp`/`nbf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIssuer {
    /// The `iss` claim the cluster's API server puts in its tokens
    /// (`--service-account-issuer`; `GET /.well-known/openid-configuration`).
    pub issuer: String,
    /// A JWKS file (`GET /openid/v1/jwks` of that API server), re-read when it changes.
    pub jwks: PathBuf,
}

/// Istio's default audience of the token a proxy presents (`istio-ca`).
pub const DEFAULT_TOKEN_AUDIENCE: &str = "istio-ca";

/// Where Istio config comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A directory of Istio YAML, watched.
    Manifests(PathBuf),
    /// Istio CRDs watched in a member cluster.
    Cluster(String),
}

/// The typed mesh configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    pub trust_domain: String,
    pub domain_suffix: String,
    pub xds_address: SocketAddr,
    /// `xdsTlsAddress`: where proxies connect over TLS and authenticate with
    /// their service-account token (istiod's 15012); `None` serves no TLS port.
    pub xds_tls_address: Option<SocketAddr>,
    /// `agentAddress`: where member-cluster agents connect (mutual TLS with the
    /// mesh CA); `None` serves no agent port.
    pub agent_address: Option<SocketAddr>,
    /// `serverNames`: DNS names and IP addresses, besides crossmesh's Service
    /// names, that the certificates of the TLS xDS port and the agent port name:
    /// the load balancer's name or address by which proxies and agents in other
    /// networks or accounts dial the hub (Istio's `ISTIOD_CUSTOM_HOST`).
    pub server_names: Vec<String>,
    pub debug_address: SocketAddr,
    /// Mesh file `ca:`.
    pub ca: CaConfig,
    pub clusters: Vec<ClusterConfig>,
    pub config: Vec<ConfigSource>,
    pub networks: BTreeMap<String, Vec<NetworkGateway>>,
    pub tunables: Tunables,
    /// Mesh file `unreachableClusterEndpoints`. `None` (`keep`, the default): a
    /// member cluster whose API server cannot be reached keeps serving its
    /// last-known endpoints, marked stale, until it comes back. `Some(d)`
    /// (`{dropAfter: 60s}`): they are dropped once the cluster has been lost for
    /// `d`, and re-listed when it is reachable again.
    pub drop_unreachable_after: Option<Duration>,
    /// Mesh file `remoteSecretNamespace`: where remote secrets are watched in each
    /// config cluster (default `crossmesh-system`).
    pub remote_secret_namespace: String,
    /// Mesh file `tokenAudiences`: a proxy's service-account token must carry one
    /// of these audiences (default `[istio-ca]`, Istio's `TOKEN_AUDIENCES`).
    pub token_audiences: Vec<String>,
    /// Mesh file `clusters[].tokenIssuer`, by cluster name. A cluster listed here
    /// has its tokens verified locally, even when it also has a kubeconfig.
    pub token_issuers: BTreeMap<String, TokenIssuer>,
    /// Mesh file `pathNormalization.normalization`, applied to every HTTP
    /// connection manager (default `DECODE_AND_MERGE_SLASHES`; Istio's is
    /// `BASE`: see [`PathNormalization`]).
    pub path_normalization: PathNormalization,
    /// Mesh file `outboundTrafficPolicy.mode` (default `ALLOW_ANY`).
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// Mesh file `debugAuth`.
    pub debug_auth: DebugAuth,
    /// Mesh file `accessLogFile`, `accessLogEncoding`, `accessLogFormat`;
    /// `None` (no `accessLogFile`, or an empty one, as Istio): no access logs.
    pub access_log: Option<AccessLog>,
    /// Mesh file `defaultConfig.gatewayTopology`.
    pub gateway_topology: GatewayTopology,
    pub service_graph: ServiceGraphConfig,
    /// Mesh file `extensionProviders` + `defaultProviders.tracing` +
    /// `defaultConfig.tracing`; `None`: no tracing (no provider named).
    pub tracing: Option<tracing::Tracing>,
}

/// Istio's meshConfig access logging: every HTTP connection manager and TCP
/// proxy writes one line per request or connection to `path` with Envoy's file
/// access logger (istiod's `FileAccessLogFromMeshConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    /// `accessLogFile`, e.g. `/dev/stdout`: a path on the proxy's file system.
    pub path: String,
    pub format: AccessLogFormat,
}

/// `accessLogEncoding` with its `accessLogFormat`, checked against Envoy's
/// format rules when the mesh file is read (`translate::access_log`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// `TEXT`: a format string ending in a newline (Istio appends one when
    /// missing); Istio's `EnvoyTextLogFormat` when `accessLogFormat` is empty.
    Text(String),
    /// `JSON`: keys to format strings (nested objects, lists and numbers
    /// allowed, as Envoy's `json_format`); Istio's `EnvoyJSONLogFormatIstio`
    /// keys when `accessLogFormat` is empty.
    Json(BTreeMap<String, serde_json::Value>),
}

/// `serviceGraph:` the live service graph built from what proxies push to
/// the metrics sink on the xDS ports (`telemetry`, docs/OBSERVABILITY.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceGraphConfig {
    /// Serve the sink (`MetricsService/StreamMetrics`) and `/debug/graphz`;
    /// default true. Off, a proxy's sink stream is answered UNIMPLEMENTED
    /// (turn the sink off in the bootstrap too: `crossmesh bootstrap
    /// --stats-sink false`).
    pub enabled: bool,
    /// Destinations kept per reporting proxy (default 256).
    pub max_edges_per_proxy: usize,
    /// Edges kept over all proxies (default 20000).
    pub max_edges: usize,
}

impl Default for ServiceGraphConfig {
    fn default() -> Self {
        ServiceGraphConfig {
            enabled: true,
            max_edges_per_proxy: 256,
            max_edges: 20_000,
        }
    }
}

/// Istio's ProxyConfig `gatewayTopology`, from the mesh file's `defaultConfig`:
/// how gateways treat `X-Forwarded-For` and `X-Forwarded-Client-Cert`
/// (istiod's `buildGatewayConnectionManager`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayTopology {
    /// `numTrustedProxies`: proxies in front of the gateway whose
    /// `X-Forwarded-For` entries are trusted (the HCM's `xff_num_trusted_hops`;
    /// default 0).
    pub num_trusted_proxies: u32,
    /// `forwardClientCertDetails`; `None` (Istio's `UNDEFINED`): `SANITIZE_SET`.
    pub forward_client_cert_details: Option<ForwardClientCert>,
}

/// Istio's `ForwardClientCertDetails` (and Envoy's HCM enum of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardClientCert {
    Sanitize,
    ForwardOnly,
    AppendForward,
    SanitizeSet,
    AlwaysForwardOnly,
}

/// Istio's meshConfig `pathNormalization.normalization`: how proxies normalize
/// a request's path before routing and authorization (istiod's
/// `buildHTTPConnectionManager`).
///
/// The default is `DECODE_AND_MERGE_SLASHES`, not Istio's `BASE`: under `BASE`
/// an AuthorizationPolicy path rule such as DENY `/admin/*` is bypassed with
/// `//admin/x` or `/admin%2Fx` (both reach the backend, which usually treats
/// them as `/admin/x`). `BASE` stays available for applications that need
/// repeated or encoded slashes passed through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PathNormalization {
    /// No normalization: `/a/../b` reaches routing and authorization as is.
    None,
    /// RFC 3986 normalization (`normalize_path`): `.` and `..` segments
    /// resolved, backslashes to slashes, unreserved percent-encodings decoded.
    Base,
    /// `BASE`, and repeated slashes merged (`merge_slashes`).
    MergeSlashes,
    /// `MERGE_SLASHES`, and `%2F`/`%5C` decoded to `/` and `\\` first
    /// (`path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD`). The default.
    #[default]
    DecodeAndMergeSlashes,
}

/// Mesh file `debugAuth`: who may read the debug endpoint. Loopback-bound, it
/// is open unless `required: true`; bound to any other address, every path but
/// `/ready` and `/healthz` needs `Authorization: Bearer TOKEN` with the token of
/// `tokenFile` or a service-account token of `serviceAccounts` (verified as xDS
/// clients' tokens are); with neither configured those paths answer 401.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DebugAuth {
    /// `required`: `None` means "when the debug address is not loopback";
    /// `false` on a non-loopback address is refused by `serve`.
    pub required: Option<bool>,
    /// `tokenFile`: a file holding one static bearer token (whitespace
    /// trimmed), re-read when it changes; the token is never logged.
    pub token_file: Option<PathBuf>,
    /// `serviceAccounts`: `CLUSTER/NAMESPACE/NAME` entries whose
    /// service-account tokens are accepted.
    pub service_accounts: Vec<DebugServiceAccount>,
}

/// One `debugAuth.serviceAccounts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugServiceAccount {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
}

impl DebugAuth {
    /// Whether every path (but the probes) needs a token when served on `addr`.
    pub fn required_on(&self, addr: &SocketAddr) -> bool {
        self.required.unwrap_or(!addr.ip().is_loopback())
    }
}

/// The mesh CA (mesh file `ca:`, DESIGN.md §5), read by `security::ca::Ca::from_mesh`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaConfig {
    /// The mesh file has a `ca:` section. `serve` starts the CA when it does (or
    /// when a TLS xDS port needs one); without either nothing is generated or read.
    pub configured: bool,
    /// `ca.dir`: a plug-in CA in Istio's `cacerts` layout (`ca-cert.pem`,
    /// `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`). `None`: crossmesh makes a
    /// root on first start and keeps it in `state_dir`.
    pub dir: Option<PathBuf>,
    /// `ca.stateDir`: where a generated root and its key are kept (default
    /// `crossmesh-ca` next to the mesh file). Ignored with `dir`.
    pub state_dir: PathBuf,
    /// `ca.workloadCertTTL`: lifetime of workload certificates (default 24h, as
    /// Istio's `DEFAULT_WORKLOAD_CERT_TTL`).
    pub workload_cert_ttl: Duration,
    /// `ca.reloadInterval`: how often `serve` reads the plug-in directory
    /// (`dir`) for changes (default 5s). Unused for a generated root.
    pub reload_interval: Duration,
    /// `ca.reissueWindow`: once the signing certificate changed, every
    /// connected proxy gets a certificate from the new one within this window,
    /// at a random point of it (default 30s).
    pub reissue_window: Duration,
    /// `ca.kubernetesSecret`: keep a generated root in this Secret of the
    /// namespace `serve` runs in (in-cluster credentials), so that every replica
    /// and every later Pod signs with the same root; `state_dir` is then the
    /// local copy (`security::ca_store`). Not with `dir`.
    pub kubernetes_secret: Option<String>,
    /// `ca.rootCertNamespaces`: namespaces of the cluster `serve` runs in where
    /// the trust bundle is published as ConfigMap `crossmesh-ca-root-cert`
    /// (`security::root_publisher`; istiod's `istio-ca-root-cert`).
    pub root_cert_namespaces: Vec<String>,
}

/// Default `ca.workloadCertTTL`.
pub const DEFAULT_WORKLOAD_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default `ca.stateDir`, relative to the mesh file's directory.
pub const DEFAULT_CA_STATE_DIR: &str = "crossmesh-ca";
/// Default `ca.reloadInterval`.
pub const DEFAULT_CA_RELOAD_INTERVAL: Duration = Duration::from_secs(5);
/// Default `ca.reissueWindow`.
pub const DEFAULT_CA_REISSUE_WINDOW: Duration = Duration::from_secs(30);

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            configured: false,
            dir: None,
            state_dir: PathBuf::from(DEFAULT_CA_STATE_DIR),
            workload_cert_ttl: DEFAULT_WORKLOAD_CERT_TTL,
            reload_interval: DEFAULT_CA_RELOAD_INTERVAL,
            reissue_window: DEFAULT_CA_REISSUE_WINDOW,
            kubernetes_secret: None,
            root_cert_namespaces: Vec::new(),
        }
    }
}

/// Default namespace of remote secrets (`remoteSecretNamespace`).
pub const DEFAULT_REMOTE_SECRET_NAMESPACE: &str = "crossmesh-system";

/// A duration as written in the mesh file: a positive integer with the unit `ms`,
/// `s`, `m` or `h` (`500ms`, `60s`, `2m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit (use ms, s, m or h, e.g. 60s)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} does not start with a whole number"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        u => return Err(format!("{s:?}: unknown unit {u:?} (use ms, s, m or h)")),
    };
    if d.is_zero() {
        return Err(format!("{s:?} must be longer than zero"));
    }
    Ok(d)
}

/// `serverNames`: each an IP address or a DNS name of RFC 1123 labels (no
/// wildcard: a certificate for `*.x` would let a proxy accept any name).
fn server_names(names: Vec<String>) -> Result<Vec<String>, String> {
    for n in &names {
        if n.parse::<std::net::IpAddr>().is_ok() {
            continue;
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if n.len() > 253 || !n.split('.').all(label_ok) {
            return Err(format!(
                "serverNames: {n:?} is neither an IP address nor a DNS name"
            ));
        }
    }
    Ok(names)
}

/// A Kubernetes namespace name (RFC 1123 label).
fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 63
        && ns
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !ns.starts_with('-')
        && !ns.ends_with('-')
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            trust_domain: "cluster.local".into(),
            domain_suffix: "cluster.local".into(),
            xds_address: DEFAULT_XDS_ADDRESS.parse().expect("constant address"),
            xds_tls_address: None,
            agent_address: None,
            server_names: Vec::new(),
            debug_address: DEFAULT_DEBUG_ADDRESS.parse().expect("constant address"),
            ca: CaConfig::default(),
            clusters: Vec::new(),
            config: Vec::new(),
            networks: BTreeMap::new(),
            tunables: Tunables::default(),
            drop_unreachable_after: None,
            remote_secret_namespace: DEFAULT_REMOTE_SECRET_NAMESPACE.into(),
            token_audiences: vec![DEFAULT_TOKEN_AUDIENCE.into()],
            token_issuers: BTreeMap::new(),
            path_normalization: PathNormalization::default(),
            outbound_traffic_policy: OutboundTrafficPolicy::default(),
            debug_auth: DebugAuth::default(),
            access_log: None,
            gateway_topology: GatewayTopology::default(),
            service_graph: ServiceGraphConfig::default(),
            tracing: None,
        }
    }
}

impl MeshConfig {
    /// Read and validate a mesh file; relative paths resolve against its directory.
    pub fn load(path: &Path) -> Result<MeshConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        MeshConfig::parse(&text, base).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            ConfigError::Invalid { reason, .. } => ConfigError::Invalid {
                path: path.to_owned(),
                reason,
            },
            other => other,
        })
    }

    /// Parse mesh file text; `base` resolves relative paths.
    pub fn parse(text: &str, base: &Path) -> Result<MeshConfig, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            path: PathBuf::new(),
            reason,
        };
        let file: MeshFile = if text.trim().is_empty() {
            MeshFile::default()
        } else {
            serde_saphyr::from_str(text).map_err(|source| ConfigError::Parse {
                path: PathBuf::new(),
                source: Box::new(source),
            })?
        };
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        let addr = |field: &str, v: Option<String>, default: &str| {
            let s = v.unwrap_or_else(|| default.to_string());
            s.parse::<SocketAddr>()
                .map_err(|e| invalid(format!("{field} {s:?} is not an IP:port address: {e}")))
        };
        let mut mesh = MeshConfig {
            trust_domain: file.trust_domain.unwrap_or_else(|| "cluster.local".into()),
            domain_suffix: file.domain_suffix.unwrap_or_else(|| "cluster.local".into()),
            xds_address: addr("xdsAddress", file.xds_address, DEFAULT_XDS_ADDRESS)?,
            xds_tls_address: match file.xds_tls_address {
                Some(s) => Some(s.parse::<SocketAddr>().map_err(|e| {
                    invalid(format!(
                        "xdsTlsAddress {s:?} is not an IP:port address: {e}"
                    ))
                })?),
                None => None,
            },
            agent_address: match file.agent_address {
                Some(s) => Some(s.parse::<SocketAddr>().map_err(|e| {
                    invalid(format!("agentAddress {s:?} is not an IP:port address: {e}"))
                })?),
                None => None,
            },
            server_names: server_names(file.server_names.unwrap_or_default()).map_err(invalid)?,
            debug_address: addr("debugAddress", file.debug_address, DEFAULT_DEBUG_ADDRESS)?,
            ..MeshConfig::default()
        };
        let mut seen = std::collections::BTreeSet::new();
        for c in file.clusters {
            if c.name.is_empty() {
                return Err(invalid("clusters[]: a cluster needs a name".into()));
            }
            if !seen.insert(c.name.clone()) {
                return Err(invalid(format!(
                    "clusters[]: cluster name {:?} is used twice",
                    c.name
                )));
            }
            let in_cluster = c.in_cluster.unwrap_or(false);
            if in_cluster && c.context.is_some() {
                return Err(invalid(format!(
                    "cluster {:?}: context applies to a kubeconfig, not to inCluster: true",
                    c.name
                )));
            }
            let source = match (c.manifests, c.kubeconfig, in_cluster) {
                (None, None, false) if c.agent.is_some() => {
                    let namespaces = c.agent.and_then(|a| a.namespaces);
                    if let Some(ns) = namespaces.iter().flatten().find(|n| !valid_namespace(n)) {
                        return Err(invalid(format!(
                            "cluster {:?}: agent.namespaces: {ns:?} is not a Kubernetes \
                             namespace name",
                            c.name
                        )));
                    }
                    if c.context.is_some() {
                        return Err(invalid(format!(
                            "cluster {:?}: context applies to a kubeconfig, not to agent",
                            c.name
                        )));
                    }
                    ClusterSource::Agent { namespaces }
                }
                _ if c.agent.is_some() => {
                    return Err(invalid(format!(
                        "cluster {:?}: set exactly one of manifests, kubeconfig, inCluster: true \
                         or agent",
                        c.name
                    )))
                }
                (Some(m), None, false) => ClusterSource::Manifests(resolve(&m)),
                (None, Some(k), false) => ClusterSource::Kubeconfig {
                    path: resolve(&k),
                    context: c.context,
                },
                (None, None, true) => ClusterSource::InCluster,
                (None, None, false) => {
                    return Err(invalid(format!(
                        "cluster {:?}: needs manifests (a directory), kubeconfig (a file), \
                         inCluster: true or agent",
                        c.name
                    )))
                }
                _ => {
                    return Err(invalid(format!(
                        "cluster {:?}: set exactly one of manifests, kubeconfig or inCluster: true",
                        c.name
                    )))
                }
            };
            if let Some(l) = &c.locality {
                if l.split('/').count() > 3 {
                    return Err(invalid(format!(
                        "cluster {:?}: locality {l:?} has more than region/zone/subzone",
                        c.name
                    )));
                }
            }
            if let Some(t) = c.token_issuer {
                if t.issuer.trim().is_empty() {
                    return Err(invalid(format!(
                        "cluster {:?}: tokenIssuer.issuer is empty",
                        c.name
                    )));
                }
                mesh.token_issuers.insert(
                    c.name.clone(),
                    TokenIssuer {
                        issuer: t.issuer,
                        jwks: resolve(&t.jwks),
                    },
                );
            }
            mesh.clusters.push(ClusterConfig {
                name: c.name,
                network: c.network.unwrap_or_default(),
                source,
                locality: c.locality,
            });
        }
        for (i, s) in file.config.into_iter().enumerate() {
            let src = match (s.manifests, s.cluster) {
                (Some(m), None) => ConfigSource::Manifests(resolve(&m)),
                (None, Some(c)) => {
                    if !seen.contains(&c) {
                        return Err(invalid(format!(
                            "config[{i}]: cluster {c:?} is not in clusters[]"
                        )));
                    }
                    ConfigSource::Cluster(c)
                }
                _ => {
                    return Err(invalid(format!(
                        "config[{i}]: set exactly one of manifests or cluster"
                    )))
                }
            };
            mesh.config.push(src);
        }
        for (name, n) in file.networks {
            mesh.networks.insert(name, n.gateways);
        }
        mesh.drop_unreachable_after = match file.unreachable_cluster_endpoints {
            None => None,
            Some(UnreachableFile::Word(w)) if w == "keep" => None,
            Some(UnreachableFile::Word(w)) => {
                return Err(invalid(format!(
                    "unreachableClusterEndpoints: {w:?} is neither `keep` nor `{{dropAfter: DURATION}}`"
                )))
            }
            Some(UnreachableFile::Drop(d)) => {
                let text = match d.drop_after {
                    DurationFile::Text(t) => t,
                    DurationFile::Number(n) => n.to_string(),
                };
                Some(parse_duration(&text).map_err(|e| {
                    invalid(format!("unreachableClusterEndpoints.dropAfter: {e}"))
                })?)
            }
        };
        mesh.ca = CaConfig {
            state_dir: base.join(DEFAULT_CA_STATE_DIR),
            ..CaConfig::default()
        };
        if let Some(ca) = file.ca {
            if ca.dir.is_some() && ca.state_dir.is_some() {
                return Err(invalid(
                    "ca: set dir (a plug-in CA) or stateDir (where a generated root is kept), \
                     not both"
                        .into(),
                ));
            }
            if let Some(name) = &ca.kubernetes_secret {
                if ca.dir.is_some() {
                    return Err(invalid(
                        "ca: kubernetesSecret keeps a generated root; a plug-in dir is not kept \
                         there: set one of them"
                            .into(),
                    ));
                }
                // A DNS subdomain (RFC 1123), as Kubernetes names Secrets.
                let subdomain = name.len() <= 253 && name.split('.').all(valid_namespace);
                if !subdomain {
                    return Err(invalid(format!(
                        "ca.kubernetesSecret {name:?} is not a Kubernetes Secret name \
                         (lowercase letters, digits, '-' and '.')"
                    )));
                }
            }
            mesh.ca.configured = true;
            mesh.ca.kubernetes_secret = ca.kubernetes_secret.clone();
            if let Some(ns) = ca.root_cert_namespaces.iter().find(|n| !valid_namespace(n)) {
                return Err(invalid(format!(
                    "ca.rootCertNamespaces: {ns:?} is not a Kubernetes namespace name"
                )));
            }
            mesh.ca.root_cert_namespaces = ca.root_cert_namespaces.clone();
            mesh.ca.dir = ca.dir.as_deref().map(resolve);
            if let Some(d) = &ca.state_dir {
                mesh.ca.state_dir = resolve(d);
            }
            if let Some(ttl) = ca.workload_cert_ttl {
                let text = match ttl {
                    DurationFile::Text(t) => t,
                    DurationFile::Number(n) => n.to_string(),
                };
                mesh.ca.workload_cert_ttl = parse_duration(&text)
                    .map_err(|e| invalid(format!("ca.workloadCertTTL: {e}")))?;
            }
            for (field, value, into) in [
                (
                    "ca.reloadInterval",
                    ca.reload_interval,
                    &mut mesh.ca.reload_interval,
                ),
                (
                    "ca.reissueWindow",
                    ca.reissue_window,
                    &mut mesh.ca.reissue_window,
                ),
            ] {
                if let Some(d) = value {
                    let text = match d {
                        DurationFile::Text(t) => t,
                        DurationFile::Number(n) => n.to_string(),
                    };
                    *into = parse_duration(&text).map_err(|e| invalid(format!("{field}: {e}")))?;
                }
            }
        }
        if let Some(ns) = file.remote_secret_namespace {
            if !valid_namespace(&ns) {
                return Err(invalid(format!(
                    "remoteSecretNamespace {ns:?} is not a Kubernetes namespace name"
                )));
            }
            mesh.remote_secret_namespace = ns;
        }
        if let Some(auds) = file.token_audiences {
            if auds.is_empty() {
                return Err(invalid(
                    "tokenAudiences is empty: list at least one audience (default [istio-ca])"
                        .into(),
                ));
            }
            if let Some(a) = auds.iter().find(|a| a.trim().is_empty()) {
                return Err(invalid(format!("tokenAudiences: {a:?} is not an audience")));
            }
            mesh.token_audiences = auds;
        }
        let t = file.tunables;
        let d = Tunables::default();
        mesh.tunables = Tunables {
            debounce: t
                .debounce_ms
                .map(Duration::from_millis)
                .unwrap_or(d.debounce),
            debounce_max: t
                .debounce_max_ms
                .map(Duration::from_millis)
                .unwrap_or(d.debounce_max),
            ready_timeout: t
                .ready_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(d.ready_timeout),
            jwks_refresh: match t.jwks_refresh_ms {
                Some(0) => return Err(invalid("tunables.jwksRefreshMs must be above 0".into())),
                Some(ms) => Duration::from_millis(ms),
                None => d.jwks_refresh,
            },
            agent_max_snapshot_bytes: match t.agent_max_snapshot_bytes {
                Some(0) => {
                    return Err(invalid(
                        "tunables.agentMaxSnapshotBytes must be above 0".into(),
                    ))
                }
                Some(b) => b,
                None => d.agent_max_snapshot_bytes,
            },
        };
        if let Some(p) = file.path_normalization {
            mesh.path_normalization = match p.normalization.as_deref() {
                None => PathNormalization::default(),
                // Istio's DEFAULT is its default, BASE.
                Some("BASE") | Some("DEFAULT") => PathNormalization::Base,
                Some("NONE") => PathNormalization::None,
                Some("MERGE_SLASHES") => PathNormalization::MergeSlashes,
                Some("DECODE_AND_MERGE_SLASHES") => PathNormalization::DecodeAndMergeSlashes,
                Some(other) => {
                    return Err(invalid(format!(
                        "pathNormalization.normalization {other:?} is not one of NONE, BASE, \
                         MERGE_SLASHES, DECODE_AND_MERGE_SLASHES"
                    )))
                }
            };
        }
        if let Some(p) = file.outbound_traffic_policy {
            mesh.outbound_traffic_policy = match p.mode.as_deref() {
                None | Some("ALLOW_ANY") => OutboundTrafficPolicy::AllowAny,
                Some("REGISTRY_ONLY") => OutboundTrafficPolicy::RegistryOnly,
                Some(other) => {
                    return Err(invalid(format!(
                        "outboundTrafficPolicy.mode {other:?} is not ALLOW_ANY or REGISTRY_ONLY"
                    )))
                }
            };
        }
        mesh.access_log = access_log(
            file.access_log_file,
            file.access_log_encoding,
            file.access_log_format,
        )
        .map_err(invalid)?;
        mesh.tracing = tracing::tracing(
            file.enable_tracing,
            file.extension_providers,
            file.default_providers,
            file.default_config.as_ref().and_then(|c| c.tracing.clone()),
        )
        .map_err(invalid)?;
        if let Some(t) = file.default_config.and_then(|c| c.gateway_topology) {
            mesh.gateway_topology = GatewayTopology {
                num_trusted_proxies: t.num_trusted_proxies.unwrap_or(0),
                forward_client_cert_details: match t.forward_client_cert_details.as_deref() {
                    None | Some("UNDEFINED") => None,
                    Some("SANITIZE") => Some(ForwardClientCert::Sanitize),
                    Some("FORWARD_ONLY") => Some(ForwardClientCert::ForwardOnly),
                    Some("APPEND_FORWARD") => Some(ForwardClientCert::AppendForward),
                    Some("SANITIZE_SET") => Some(ForwardClientCert::SanitizeSet),
                    Some("ALWAYS_FORWARD_ONLY") => Some(ForwardClientCert::AlwaysForwardOnly),
                    Some(other) => {
                        return Err(invalid(format!(
                            "defaultConfig.gatewayTopology.forwardClientCertDetails {other:?} is \
                             not one of SANITIZE, FORWARD_ONLY, APPEND_FORWARD, SANITIZE_SET, \
                             ALWAYS_FORWARD_ONLY"
                        )))
                    }
                },
            };
        }
        if let Some(d) = file.debug_auth {
            let mut auth = DebugAuth {
                required: d.required,
                token_file: d.token_file.as_deref().map(resolve),
                service_accounts: Vec::new(),
            };
            for sa in d.service_accounts {
                let parts: Vec<&str> = sa.split('/').collect();
                match parts.as_slice() {
                    [c, ns, name] if !c.is_empty() && valid_namespace(ns) && !name.is_empty() => {
                        if !seen.contains(*c) {
                            return Err(invalid(format!(
                                "debugAuth.serviceAccounts: {sa:?}: cluster {c:?} is not in clusters[]"
                            )));
                        }
                        auth.service_accounts.push(DebugServiceAccount {
                            cluster: c.to_string(),
                            namespace: ns.to_string(),
                            name: name.to_string(),
                        });
                    }
                    _ => {
                        let why = "is not CLUSTER/NAMESPACE/SERVICEACCOUNT";
                        return Err(invalid(format!("debugAuth.serviceAccounts: {sa:?} {why}")));
                    }
                }
            }
            mesh.debug_auth = auth;
        }
        if let Some(g) = file.service_graph {
            let d = ServiceGraphConfig::default();
            mesh.service_graph = ServiceGraphConfig {
                enabled: g.enabled.unwrap_or(d.enabled),
                max_edges_per_proxy: g.max_edges_per_proxy.unwrap_or(d.max_edges_per_proxy),
                max_edges: g.max_edges.unwrap_or(d.max_edges),
            };
            if mesh.service_graph.max_edges_per_proxy == 0 || mesh.service_graph.max_edges == 0 {
                return Err(invalid(
                    "serviceGraph.maxEdgesPerProxy and maxEdges must be at least 1 \
                     (turn the graph off with serviceGraph.enabled: false)"
                        .into(),
                ));
            }
        }
        Ok(mesh)
    }
}

/// Istio's access-log settings as written: off without a file (or with an
/// empty one, as Istio), else the encoding's format, checked as Envoy would.
fn access_log(
    file: Option<String>,
    encoding: Option<String>,
    format: Option<String>,
) -> Result<Option<AccessLog>, String> {
    use self::access_log as al;
    let format = format.filter(|f| !f.is_empty());
    let format = match encoding.as_deref() {
        None | Some("TEXT") => AccessLogFormat::Text(match format {
            None => al::ISTIO_TEXT_FORMAT.to_string(),
            Some(f) => {
                al::check_format(&f).map_err(|e| format!("accessLogFormat: {e}"))?;
                // Istio: "a newline is inserted on all formats (if missing)".
                if f.ends_with('\n') {
                    f
                } else {
                    f + "\n"
                }
            }
        }),
        Some("JSON") => AccessLogFormat::Json(match format {
            None => al::istio_json_format(),
            Some(f) => al::parse_json_format(&f).map_err(|e| format!("accessLogFormat: {e}"))?,
        }),
        Some(other) => {
            return Err(format!(
                "accessLogEncoding {other:?} is not one of TEXT, JSON"
            ))
        }
    };
    Ok(file
        .filter(|f| !f.is_empty())
        .map(|path| AccessLog { path, format }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_dns_names_or_ip_addresses() {
        let m = MeshConfig::parse(
            "serverNames: [hub.crossmesh.example, 10.1.2.3, 'fd00::1']\n",
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(
            m.server_names,
            ["hub.crossmesh.example", "10.1.2.3", "fd00::1"]
        );
        for bad in [
            "'*.crossmesh.example'",
            "'hub..example'",
            "'-hub.example'",
            "'hub_1.example'",
        ] {
            let e = MeshConfig::parse(&format!("serverNames: [{bad}]\n"), Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("serverNames") && e.contains("neither an IP address nor a DNS name"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn parses_design_example_with_relative_paths() {
        let text = r#"
trustDomain: cluster.local
clusters:
- name: cluster1
  network: vpc-a
  manifests: clusters/cluster1
- name: cluster3
  network: account-b
  kubeconfig: /etc/crossmesh/cluster3.kubeconfig
  context: cluster3
config:
- manifests: istio
- cluster: cluster1
"#;
        let m = MeshConfig::parse(text, Path::new("/base")).unwrap();
        assert_eq!(m.xds_address.to_string(), DEFAULT_XDS_ADDRESS);
        assert_eq!(m.clusters.len(), 2);
        assert_eq!(
            m.clusters[0].source,
            ClusterSource::Manifests(PathBuf::from("/base/clusters/cluster1"))
        );
        assert_eq!(m.clusters[1].network, "account-b");
        assert_eq!(
            m.config[0],
            ConfigSource::Manifests(PathBuf::from("/base/istio"))
        );
        assert_eq!(m.config[1], ConfigSource::Cluster("cluster1".into()));
        assert_eq!(m.tunables.debounce, Duration::from_millis(100));
    }

    #[test]
    fn unreachable_cluster_endpoints_and_secret_namespace() {
        let base = Path::new("/");
        let m = MeshConfig::parse("", base).unwrap();
        assert_eq!(m.drop_unreachable_after, None);
        assert_eq!(m.remote_secret_namespace, "crossmesh-system");
        let m = MeshConfig::parse("unreachableClusterEndpoints: keep\n", base).unwrap();
        assert_eq!(m.drop_unreachable_after, None);
        let m = MeshConfig::parse(
            "unreachableClusterEndpoints:\n  dropAfter: 90s\nremoteSecretNamespace: istio-system\n",
            base,
        )
        .unwrap();
        assert_eq!(m.drop_unreachable_after, Some(Duration::from_secs(90)));
        assert_eq!(m.remote_secret_namespace, "istio-system");
        let m =
            MeshConfig::parse("unreachableClusterEndpoints: {dropAfter: 1500ms}\n", base).unwrap();
        assert_eq!(m.drop_unreachable_after, Some(Duration::from_millis(1500)));
        let m = MeshConfig::parse("unreachableClusterEndpoints: {dropAfter: 2m}\n", base).unwrap();
        assert_eq!(m.drop_unreachable_after, Some(Duration::from_secs(120)));
        for (bad, why) in [
            ("unreachableClusterEndpoints: drop\n", "neither `keep`"),
            ("unreachableClusterEndpoints: {dropAfter: 60}\n", "no unit"),
            (
                "unreachableClusterEndpoints: {dropAfter: 0s}\n",
                "longer than zero",
            ),
            (
                "unreachableClusterEndpoints: {dropAfter: 5d}\n",
                "unknown unit",
            ),
            (
                "remoteSecretNamespace: Bad_NS\n",
                "not a Kubernetes namespace",
            ),
        ] {
            let e = MeshConfig::parse(bad, base).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let e = MeshConfig::parse("unreachableClusterEndpoints: {dropAfer: 5s}\n", base)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unreachableClusterEndpoints"), "{e}");
    }

    #[test]
    fn token_audiences_and_issuers() {
        let base = Path::new("/m");
        let m = MeshConfig::parse("clusters:\n- {name: c1, manifests: d}\n", base).unwrap();
        assert_eq!(m.token_audiences, vec!["istio-ca".to_string()]);
        assert!(m.token_issuers.is_empty());
        let m = MeshConfig::parse(
            "tokenAudiences: [a1, a2]\nclusters:\n- name: c1\n  manifests: d\n  tokenIssuer:\n    issuer: https://kubernetes.default.svc.cluster.local\n    jwks: c1-jwks.json\n- {name: c2, manifests: e}\n",
            base,
        )
        .unwrap();
        assert_eq!(m.token_audiences, vec!["a1".to_string(), "a2".to_string()]);
        assert_eq!(
            m.token_issuers.get("c1"),
            Some(&TokenIssuer {
                issuer: "https://kubernetes.default.svc.cluster.local".into(),
                jwks: PathBuf::from("/m/c1-jwks.json"),
            })
        );
        assert!(!m.token_issuers.contains_key("c2"));
        for (bad, why) in [
            ("tokenAudiences: []\n", "tokenAudiences is empty"),
            ("tokenAudiences: [\"\"]\n", "is not an audience"),
            (
                "clusters:\n- {name: c1, manifests: d, tokenIssuer: {issuer: \"\", jwks: j}}\n",
                "tokenIssuer.issuer is empty",
            ),
            (
                "clusters:\n- {name: c1, manifests: d, tokenIssuer: {issuer: i}}\n",
                "jwks",
            ),
        ] {
            let e = MeshConfig::parse(bad, base).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn in_cluster_entries() {
        let base = Path::new("/");
        let m = MeshConfig::parse(
            "clusters:\n- {name: c1, inCluster: true}\nconfig:\n- cluster: c1\n",
            base,
        )
        .unwrap();
        assert_eq!(m.clusters[0].source, ClusterSource::InCluster);
        assert_eq!(m.config[0], ConfigSource::Cluster("c1".into()));
        for (bad, why) in [
            (
                "clusters:\n- {name: c1, inCluster: true, kubeconfig: k}\n",
                "exactly one of manifests, kubeconfig or inCluster",
            ),
            (
                "clusters:\n- {name: c1, inCluster: true, manifests: d}\n",
                "exactly one of manifests, kubeconfig or inCluster",
            ),
            (
                "clusters:\n- {name: c1, inCluster: true, context: x}\n",
                "context applies to a kubeconfig",
            ),
            (
                "clusters:\n- {name: c1, inCluster: false}\n",
                "needs manifests",
            ),
            ("clusters:\n- {name: c1, inCluster: yes please}\n", "c1"),
        ] {
            let e = MeshConfig::parse(bad, base).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        // `inCluster: false` beside a kubeconfig is just the kubeconfig.
        let m = MeshConfig::parse(
            "clusters:\n- {name: c1, inCluster: false, kubeconfig: k}\n",
            base,
        )
        .unwrap();
        assert!(matches!(
            m.clusters[0].source,
            ClusterSource::Kubeconfig { .. }
        ));
    }

    #[test]
    fn agent_entries() {
        let base = Path::new("/");
        let m = MeshConfig::parse(
            "agentAddress: 127.0.0.1:15011\nclusters:\n- {name: c3, agent: {namespaces: [shop, a-b]}}\n- {name: c4, agent: {}}\n",
            base,
        )
        .unwrap();
        assert_eq!(m.agent_address, Some("127.0.0.1:15011".parse().unwrap()));
        assert_eq!(
            m.clusters[0].source,
            ClusterSource::Agent {
                namespaces: Some(vec!["shop".into(), "a-b".into()])
            }
        );
        assert_eq!(
            m.clusters[1].source,
            ClusterSource::Agent { namespaces: None }
        );
        for (bad, why) in [
            (
                "clusters:\n- {name: c3, agent: {}, manifests: d}\n",
                "exactly one of manifests, kubeconfig, inCluster: true or agent",
            ),
            (
                "clusters:\n- {name: c3, agent: {namespaces: [Shop]}}\n",
                "\"Shop\" is not a Kubernetes namespace name",
            ),
            (
                "clusters:\n- {name: c3, agent: {namespace: [shop]}}\n",
                "namespace",
            ),
            ("agentAddress: nowhere\n", "agentAddress \"nowhere\""),
        ] {
            let e = MeshConfig::parse(bad, base).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn rejects_bad_files_with_reason() {
        let base = Path::new("/");
        let dup = "clusters:\n- {name: a, manifests: x}\n- {name: a, manifests: y}\n";
        assert!(MeshConfig::parse(dup, base)
            .unwrap_err()
            .to_string()
            .contains("used twice"));
        let typo = "clustrs: []\n";
        assert!(MeshConfig::parse(typo, base)
            .unwrap_err()
            .to_string()
            .contains("unknown field"));
        let addr = "xdsAddress: nope\n";
        assert!(MeshConfig::parse(addr, base)
            .unwrap_err()
            .to_string()
            .contains("xdsAddress"));
        let unknown = "config:\n- cluster: zz\n";
        assert!(MeshConfig::parse(unknown, base)
            .unwrap_err()
            .to_string()
            .contains("not in clusters"));
    }

    #[test]
    fn outbound_traffic_policy() {
        let base = Path::new("/m");
        let mode = |text: &str| MeshConfig::parse(text, base).map(|m| m.outbound_traffic_policy);
        assert_eq!(mode("").ok(), Some(OutboundTrafficPolicy::AllowAny));
        assert_eq!(
            mode("outboundTrafficPolicy: {mode: REGISTRY_ONLY}").ok(),
            Some(OutboundTrafficPolicy::RegistryOnly)
        );
        assert_eq!(
            mode("outboundTrafficPolicy: {mode: ALLOW_ANY}").ok(),
            Some(OutboundTrafficPolicy::AllowAny)
        );
        let bad = mode("outboundTrafficPolicy: {mode: DENY}")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("outboundTrafficPolicy.mode \"DENY\""), "{bad}");
        assert!(mode("outboundTrafficPolicy: {egressProxy: {host: x}}").is_err());
    }

    #[test]
    fn path_normalization_debug_auth_and_jwks_refresh() {
        let base = Path::new("/m");
        let d = MeshConfig::parse("", base).unwrap();
        assert_eq!(
            d.path_normalization,
            PathNormalization::DecodeAndMergeSlashes
        );
        assert_eq!(d.tunables.jwks_refresh, Duration::from_secs(1200));
        assert_eq!(d.debug_auth, DebugAuth::default());
        assert!(!d.debug_auth.required_on(&"127.0.0.1:1".parse().unwrap()));
        assert!(d.debug_auth.required_on(&"10.0.0.1:1".parse().unwrap()));
        let m = MeshConfig::parse(
            "clusters: [{name: c1, manifests: x}]\n\
             pathNormalization: {normalization: DECODE_AND_MERGE_SLASHES}\n\
             tunables: {jwksRefreshMs: 1500, agentMaxSnapshotBytes: 20000}\n\
             debugAuth: {required: true, tokenFile: tok, serviceAccounts: [c1/istio-system/ops]}\n",
            base,
        )
        .unwrap();
        assert_eq!(
            m.path_normalization,
            PathNormalization::DecodeAndMergeSlashes
        );
        assert_eq!(m.tunables.jwks_refresh, Duration::from_millis(1500));
        assert_eq!(m.tunables.agent_max_snapshot_bytes, 20000);
        assert_eq!(d.tunables.agent_max_snapshot_bytes, 256 << 20);
        assert_eq!(
            m.debug_auth.token_file.as_deref(),
            Some(Path::new("/m/tok"))
        );
        assert_eq!(m.debug_auth.service_accounts[0].name, "ops");
        assert!(m.debug_auth.required_on(&"127.0.0.1:1".parse().unwrap()));
        for (bad, why) in [
            (
                "pathNormalization: {normalization: FULL}\n",
                "is not one of NONE",
            ),
            ("tunables: {jwksRefreshMs: 0}\n", "jwksRefreshMs"),
            (
                "tunables: {agentMaxSnapshotBytes: 0}\n",
                "agentMaxSnapshotBytes",
            ),
            (
                "debugAuth: {serviceAccounts: [ops]}\n",
                "CLUSTER/NAMESPACE/SERVICEACCOUNT",
            ),
            (
                "debugAuth: {serviceAccounts: [zz/ns/ops]}\n",
                "not in clusters",
            ),
            ("debugAuth: {token: abc}\n", "unknown field"),
        ] {
            let e = MeshConfig::parse(bad, base).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn service_graph_knob() {
        let base = Path::new("/m");
        let d = MeshConfig::parse("", base).unwrap();
        assert_eq!(d.service_graph, ServiceGraphConfig::default());
        assert!(d.service_graph.enabled);
        let m = MeshConfig::parse("serviceGraph: {enabled: false, maxEdges: 5}\n", base).unwrap();
        assert!(!m.service_graph.enabled);
        assert_eq!(m.service_graph.max_edges, 5);
        assert_eq!(m.service_graph.max_edges_per_proxy, 256);
        let e = MeshConfig::parse("serviceGraph: {maxEdgesPerProxy: 0}\n", base).unwrap_err();
        assert!(
            e.to_string().contains("serviceGraph.maxEdgesPerProxy"),
            "{e}"
        );
        assert!(MeshConfig::parse("serviceGraph: {enable: true}\n", base).is_err());
    }

    #[test]
    fn access_log_and_gateway_topology() {
        let base = Path::new("/m");
        let d = MeshConfig::parse("", base).unwrap();
        assert_eq!(d.access_log, None, "no accessLogFile: no access log");
        assert_eq!(d.gateway_topology, GatewayTopology::default());
        // A format without accessLogFile is checked, and still logs nothing.
        let m = MeshConfig::parse("accessLogFormat: '%PROTOCOL%'\n", base).unwrap();
        assert_eq!(m.access_log, None);
        let m = MeshConfig::parse("accessLogFile: ''\n", base).unwrap();
        assert_eq!(m.access_log, None, "empty accessLogFile: off, as Istio");
        let m = MeshConfig::parse("accessLogFile: /dev/stdout\n", base).unwrap();
        assert_eq!(
            m.access_log,
            Some(AccessLog {
                path: "/dev/stdout".into(),
                format: AccessLogFormat::Text(access_log::ISTIO_TEXT_FORMAT.into()),
            })
        );
        let m = MeshConfig::parse(
            "accessLogFile: /l\naccessLogFormat: '%PROTOCOL% %%'\n",
            base,
        )
        .unwrap();
        assert_eq!(
            m.access_log.unwrap().format,
            AccessLogFormat::Text("%PROTOCOL% %%\n".into()),
            "a newline is appended"
        );
        let m = MeshConfig::parse("accessLogFile: /l\naccessLogEncoding: JSON\n", base).unwrap();
        let AccessLogFormat::Json(keys) = m.access_log.unwrap().format else {
            panic!("JSON");
        };
        assert_eq!(keys["path"], "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%");
        assert_eq!(keys.len(), 24);
        let m = MeshConfig::parse(
            "defaultConfig: {gatewayTopology: {numTrustedProxies: 2, \
             forwardClientCertDetails: FORWARD_ONLY}}\n",
            base,
        )
        .unwrap();
        assert_eq!(
            m.gateway_topology,
            GatewayTopology {
                num_trusted_proxies: 2,
                forward_client_cert_details: Some(ForwardClientCert::ForwardOnly),
            }
        );
        for (bad, why) in [
            (
                "accessLogFile: /l\naccessLogFormat: '%NOPE%'\n",
                "accessLogFormat: %NOPE% is not an Envoy access log command operator",
            ),
            (
                "accessLogFormat: '100%'\n",
                "accessLogFormat: no command operator at byte 3",
            ),
            ("accessLogEncoding: XML\n", "not one of TEXT, JSON"),
            (
                "accessLogEncoding: JSON\naccessLogFormat: '{\"a\": \"%REQ%\"}'\n",
                "accessLogFormat: key \"a\": %REQ% needs a parameter",
            ),
            (
                "accessLogEncoding: JSON\naccessLogFormat: '%PROTOCOL%'\n",
                "accessLogFormat: is not JSON",
            ),
            (
                "defaultConfig: {gatewayTopology: {forwardClientCertDetails: KEEP}}\n",
                "forwardClientCertDetails \"KEEP\"",
            ),
            ("defaultConfig: {concurrency: 2}\n", "unknown field"),
            (
                "defaultConfig: {gatewayTopology: {numTrustedProxies: -1}}\n",
                "numTrustedProxies",
            ),
        ] {
            let e = MeshConfig::parse(bad, base).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
