//! `crossmesh workload-certs`: keeps a proxyless workload's certificate files.
//!
//! A proxyless gRPC application has no Envoy to fetch its workload certificate
//! over SDS; gRPC reads it from files through its `file_watcher` certificate
//! provider (gRFC A29), which `crossmesh bootstrap --role grpc` names. This
//! command fills those files, as Istio's agent does for proxyless pods
//! (`OUTPUT_CERTS`): it connects to the TLS xDS port as the workload (its
//! service-account token, re-read for every connection, proves who it is; the
//! CA signs that identity, never a claimed one), subscribes to the SDS secrets
//! `default` and `ROOTCA` over ADS, and writes
//!
//! - `cert-chain.pem`: the workload certificate and its chain,
//! - `key.pem`: its private key (mode 0600),
//! - `root-cert.pem`: the trust bundle,
//!
//! each through a temporary file and a rename, so gRPC never reads half a file.
//! The stream stays open: a renewed certificate (at half its lifetime) or a new
//! trust bundle (a rotated root) is written when crossmesh pushes it. A broken
//! stream is retried with backoff (1 s doubling to 30 s); the files stay as they
//! were meanwhile. Nothing is logged of the key or the token.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource, Node};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DiscoveryRequest,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use prost::Message;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

use crate::xds::secure::{DEFAULT_SECRET, ROOTCA_SECRET};

const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// The file names, Istio's (`pilot-agent`'s output certificates).
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";
pub const KEY_FILE: &str = "key.pem";
pub const ROOT_CERT_FILE: &str = "root-cert.pem";

/// What `crossmesh workload-certs` runs with.
#[derive(Debug, Clone)]
pub struct Options {
    /// The TLS xDS port, `HOST:PORT`; HOST is the name checked in its certificate.
    pub xds_address: String,
    /// PEM roots the xDS port's certificate must chain to.
    pub root_cert: PathBuf,
    /// The workload's service-account token, read for every connection.
    pub token_file: PathBuf,
    /// The node this workload is (Istio's `sidecar~IP~POD.NS~NS.svc.DOMAIN`).
    pub node_id: String,
    pub namespace: String,
    pub service_account: String,
    pub cluster_id: String,
    /// Where the three files are written.
    pub dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("--root-cert {path}: {reason}")]
    RootCert { path: String, reason: String },
    #[error("--token-file {path}: {reason}")]
    Token { path: String, reason: String },
    #[error("--xds-address {0:?}: expected HOST:PORT")]
    Address(String),
    #[error("connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("xDS stream: {0}")]
    Stream(String),
    #[error("secret {name}: {reason}")]
    Secret { name: &'static str, reason: String },
    #[error("{path}: {reason}")]
    Write { path: String, reason: String },
}

/// Keep the files current until the process is stopped.
pub async fn run(o: Options) -> Result<(), CertsError> {
    std::fs::create_dir_all(&o.dir).map_err(|e| CertsError::Write {
        path: o.dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut backoff = Duration::from_secs(1);
    loop {
        match stream_once(&o, &mut backoff).await {
            Ok(()) => warn!("xDS stream ended; reconnecting"),
            Err(e) => warn!(error = %e, "workload certificates: reconnecting"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// One stream: subscribe, write what arrives, ACK it. `backoff` is reset once
/// files were written.
async fn stream_once(o: &Options, backoff: &mut Duration) -> Result<(), CertsError> {
    let token = std::fs::read_to_string(&o.token_file).map_err(|e| CertsError::Token {
        path: o.token_file.display().to_string(),
        reason: e.to_string(),
    })?;
    let token = zeroize::Zeroizing::new(token.trim().to_string());
    let channel = connect(o).await?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let node = node(o);
    let (tx, rx) = tokio::sync::mpsc::channel::<DiscoveryRequest>(4);
    let first = DiscoveryRequest {
        node: Some(node.clone()),
        type_url: SECRET_TYPE.into(),
        resource_names: vec![DEFAULT_SECRET.into(), ROOTCA_SECRET.into()],
        ..Default::default()
    };
    tx.send(first.clone())
        .await
        .map_err(|e| CertsError::Stream(e.to_string()))?;
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let bearer = format!("Bearer {}", token.as_str());
    req.metadata_mut().insert(
        "authorization",
        bearer.parse().map_err(|_| CertsError::Token {
            path: o.token_file.display().to_string(),
            reason: "not a valid header value".into(),
        })?,
    );
    let mut responses = client
        .stream_aggregated_resources(req)
        .await
        .map_err(|s| CertsError::Stream(format!("{}: {}", s.code(), s.message())))?
        .into_inner();
    let mut chain_and_key: Option<(Vec<u8>, Vec<u8>)> = None;
    let mut roots: Option<Vec<u8>> = None;
    loop {
        let resp = match responses.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(s) => return Err(CertsError::Stream(format!("{}: {}", s.code(), s.message()))),
        };
        let mut error = None;
        for any in &resp.resources {
            match read_secret(&any.value) {
                Ok(Got::Workload(c, k)) => chain_and_key = Some((c, k)),
                Ok(Got::Roots(r)) => roots = Some(r),
                Ok(Got::Other) => {}
                Err(e) => error = Some(e),
            }
        }
        if error.is_none() {
            if let (Some((chain, key)), Some(roots)) = (&chain_and_key, &roots) {
                // Roots first: a new chain must never be read before the
                // bundle that verifies peers signed by the same new root.
                let written = write_file(&o.dir, ROOT_CERT_FILE, roots, 0o644)
                    .and_then(|()| write_file(&o.dir, KEY_FILE, key, 0o600))
                    .and_then(|()| write_file(&o.dir, CERT_CHAIN_FILE, chain, 0o644));
                if let Err(e) = written {
                    error = Some(e);
                } else {
                    info!(dir = %o.dir.display(), version = %resp.version_info, "workload certificate files written");
                    *backoff = Duration::from_secs(1);
                }
            }
        }
        let ack = DiscoveryRequest {
            node: None,
            type_url: SECRET_TYPE.into(),
            resource_names: first.resource_names.clone(),
            response_nonce: resp.nonce.clone(),
            version_info: if error.is_none() {
                resp.version_info.clone()
            } else {
                String::new()
            },
            error_detail: error
                .as_ref()
                .map(|e| envoy_types::pb::google::rpc::Status {
                    code: tonic::Code::InvalidArgument as i32,
                    message: e.to_string(),
                    ..Default::default()
                }),
            ..Default::default()
        };
        if let Some(e) = &error {
            warn!(error = %e, "workload certificates: update refused");
        }
        tx.send(ack)
            .await
            .map_err(|e| CertsError::Stream(e.to_string()))?;
    }
}

enum Got {
    Workload(Vec<u8>, Vec<u8>),
    Roots(Vec<u8>),
    Other,
}

fn inline(d: &Option<DataSource>) -> Option<Vec<u8>> {
    match d.as_ref()?.specifier.as_ref()? {
        Specifier::InlineBytes(b) => Some(b.clone()),
        Specifier::InlineString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

fn read_secret(bytes: &[u8]) -> Result<Got, CertsError> {
    let s = Secret::decode(bytes).map_err(|e| CertsError::Secret {
        name: "?",
        reason: e.to_string(),
    })?;
    match (s.name.as_str(), s.r#type) {
        (DEFAULT_SECRET, Some(secret::Type::TlsCertificate(t))) => {
            let bad = |what: &str| CertsError::Secret {
                name: DEFAULT_SECRET,
                reason: format!("no inline {what}"),
            };
            let chain = inline(&t.certificate_chain).ok_or_else(|| bad("certificate_chain"))?;
            let key = inline(&t.private_key).ok_or_else(|| bad("private_key"))?;
            Ok(Got::Workload(chain, key))
        }
        (ROOTCA_SECRET, Some(secret::Type::ValidationContext(v))) => {
            Ok(Got::Roots(inline(&v.trusted_ca).ok_or_else(|| {
                CertsError::Secret {
                    name: ROOTCA_SECRET,
                    reason: "no inline trusted_ca".into(),
                }
            })?))
        }
        _ => Ok(Got::Other),
    }
}

/// Write `dir/name` through a temporary file in `dir` and a rename.
fn write_file(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), CertsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let err = |e: std::io::Error| CertsError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)
}

/// The node as crossmesh reads a proxyless gRPC workload
/// (`model::Proxy::from_node`): it asks for secrets only.
fn node(o: &Options) -> Node {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let mut meta = Struct::default();
    for (k, v) in [
        ("GENERATOR", "grpc"),
        ("NAMESPACE", o.namespace.as_str()),
        ("SERVICE_ACCOUNT", o.service_account.as_str()),
        ("CLUSTER_ID", o.cluster_id.as_str()),
    ] {
        meta.fields.insert(k.to_string(), s(v));
    }
    Node {
        id: o.node_id.clone(),
        metadata: Some(meta),
        ..Default::default()
    }
}

fn client_tls(o: &Options) -> Result<Arc<rustls::ClientConfig>, CertsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bad = |reason: String| CertsError::RootCert {
        path: o.root_cert.display().to_string(),
        reason,
    };
    let pem = std::fs::read(&o.root_cert).map_err(|e| bad(e.to_string()))?;
    let mut store = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&pem) {
        store
            .add(der.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

async fn connect(o: &Options) -> Result<Channel, CertsError> {
    let host = match o.xds_address.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {
            h.trim_start_matches('[').trim_end_matches(']').to_string()
        }
        _ => return Err(CertsError::Address(o.xds_address.clone())),
    };
    let tls = client_tls(o)?;
    let ep = Endpoint::from_shared(format!("http://{}", o.xds_address))
        .map_err(|_| CertsError::Address(o.xds_address.clone()))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30));
    ep.connect_with_connector(crate::tls::TlsConnector {
        addr: o.xds_address.clone(),
        host,
        tls,
    })
    .await
    .map_err(|e| CertsError::Connect {
        addr: o.xds_address.clone(),
        reason: error_chain(&e),
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inline_bytes(b: &[u8]) -> Option<DataSource> {
        Some(DataSource {
            specifier: Some(Specifier::InlineBytes(b.to_vec())),
            ..Default::default()
        })
    }

    #[test]
    fn istios_secrets_are_read_and_others_refused_or_skipped() {
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
            CertificateValidationContext, TlsCertificate,
        };
        let default = Secret {
            name: DEFAULT_SECRET.into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline_bytes(b"CHAIN"),
                private_key: inline_bytes(b"KEY"),
                ..Default::default()
            })),
        };
        match read_secret(&default.encode_to_vec()).unwrap() {
            Got::Workload(c, k) => assert_eq!((c, k), (b"CHAIN".to_vec(), b"KEY".to_vec())),
            _ => panic!("default is the workload certificate"),
        }
        let root = Secret {
            name: ROOTCA_SECRET.into(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: inline_bytes(b"ROOTS"),
                    ..Default::default()
                },
            )),
        };
        assert!(
            matches!(read_secret(&root.encode_to_vec()).unwrap(), Got::Roots(r) if r == b"ROOTS")
        );
        let no_key = Secret {
            name: DEFAULT_SECRET.into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline_bytes(b"CHAIN"),
                ..Default::default()
            })),
        };
        let e = read_secret(&no_key.encode_to_vec()).err().expect("refused");
        assert!(e.to_string().contains("private_key"), "{e}");
        let other = Secret {
            name: "kubernetes://ns/cert".into(),
            ..Default::default()
        };
        assert!(matches!(
            read_secret(&other.encode_to_vec()).unwrap(),
            Got::Other
        ));
    }

    #[test]
    fn files_are_replaced_whole_and_the_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        write_file(d.path(), KEY_FILE, b"one", 0o600).unwrap();
        write_file(d.path(), KEY_FILE, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(d.path().join(KEY_FILE)).unwrap(), b"two");
        let mode = std::fs::metadata(d.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!d.path().join(".key.pem.tmp").exists());
    }
}
