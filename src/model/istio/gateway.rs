//! `networking.istio.io` `Gateway`: the ports, protocols and hosts a gateway proxy
//! (selected by labels) exposes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `Gateway.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {
    /// Labels of the gateway pods this applies to, in any namespace.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub servers: Vec<Server>,
    /// Gateway API manual deployment (`Gateway.spec.addresses` of type
    /// `Hostname`): Services (hostnames) whose pods this Gateway applies to
    /// besides those `selector` picks. Set by the Gateway API conversion only:
    /// never read from an Istio Gateway (an unknown field there).
    #[serde(default, skip_deserializing, skip_serializing_if = "Vec::is_empty")]
    pub gateway_services: Vec<String>,
}

/// `Gateway.spec.servers[]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    pub port: ServerPort,
    /// Bind address; rejected by validation (crossmesh binds gateways to 0.0.0.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// `host`, `ns/host`, `./host`, `*/host`, `*.suffix`, `*`.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    /// Rejected by validation: only meaningful for sidecars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// `Server.port`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerPort {
    pub number: u32,
    /// `HTTP`, `HTTPS`, `GRPC`, `HTTP2`, `MONGO`, `TCP`, `TLS` (case-insensitive).
    pub protocol: String,
    #[serde(default)]
    pub name: String,
    /// Rejected by validation (a Kubernetes-gateway-only field in Istio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// `Server.tls`: `httpsRedirect` on HTTP servers, `mode: PASSTHROUGH` (SNI
/// routing by `tls` routes), and termination on HTTPS servers with certificates
/// from the Kubernetes Secret of `credentialName` (`translate::gateway`); the
/// certificate file fields are rejected by validation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    #[serde(default)]
    pub https_redirect: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credential_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_spki: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_hash: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_protocol_version: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_credential_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_certificates: Vec<TlsCertificate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// `ServerTLSSettings.TLSCertificate` (rejected with the other certificate
/// settings).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsCertificate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
}

/// A gateway server's protocol, parsed case-insensitively as Istio does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum ServerProtocol {
    Http,
    Http2,
    Grpc,
    Https,
    Tls,
    Tcp,
    Mongo,
}

impl ServerProtocol {
    /// Istio's protocol names (`protocol.Parse`). `MYSQL` and `REDIS` are proxied
    /// as plain TCP, as Istio does while its MySQL and Redis filters are off (their
    /// default).
    pub fn parse(s: &str) -> Option<ServerProtocol> {
        Some(match s.to_ascii_uppercase().as_str() {
            "HTTP" => ServerProtocol::Http,
            "HTTP2" => ServerProtocol::Http2,
            "GRPC" => ServerProtocol::Grpc,
            "HTTPS" => ServerProtocol::Https,
            "TLS" => ServerProtocol::Tls,
            "TCP" | "MYSQL" | "REDIS" => ServerProtocol::Tcp,
            "MONGO" => ServerProtocol::Mongo,
            _ => return None,
        })
    }

    /// Served by the HTTP connection manager (plain text).
    pub fn is_http(self) -> bool {
        matches!(
            self,
            ServerProtocol::Http | ServerProtocol::Http2 | ServerProtocol::Grpc
        )
    }
}

impl Server {
    /// The validated protocol (validation rejects unknown protocols).
    pub fn protocol(&self) -> Option<ServerProtocol> {
        ServerProtocol::parse(&self.port.protocol)
    }

    /// True for a `TLS`/`HTTPS` server in `PASSTHROUGH` mode (SNI routing).
    pub fn is_passthrough(&self) -> bool {
        self.tls
            .as_ref()
            .and_then(|t| t.mode.as_deref())
            .is_some_and(|m| m.eq_ignore_ascii_case("PASSTHROUGH"))
    }
}
