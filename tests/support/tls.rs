//! TLS on the test side: a CA and certificates made at test time (rcgen), a
//! Kubernetes TLS Secret manifest holding them, and a raw HTTP/1.1 client over
//! rustls that reports which certificate the server presented (for gateway TLS
//! and `credentialName` tests). Nothing here is a fixed key: every key is
//! generated when the test runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A test CA.
pub struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub pem: String,
}

/// A certificate chain and its key, PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(cn: &str) -> Ca {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).expect("CA certificate");
        Ca {
            issuer: rcgen::Issuer::new(p, key),
            pem: cert.pem(),
        }
    }

    /// A leaf with subject `CN=cn` and DNS SANs `sans`.
    pub fn leaf(&self, cn: &str, sans: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let mut p =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = p.signed_by(&key, &self.issuer).expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A `v1` Secret manifest with `data` (base64) from `entries`.
pub fn secret(ns: &str, name: &str, ty: &str, entries: &[(&str, &str)]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let data: String = entries
        .iter()
        .map(|(k, v)| format!("  {k}: {}\n", b64.encode(v)))
        .collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\ntype: {ty}\ndata:\n{data}"
    )
}

/// A `kubernetes.io/tls` Secret.
pub fn tls_secret(ns: &str, name: &str, leaf: &Leaf, ca: Option<&str>) -> String {
    let mut entries = vec![
        ("tls.crt", leaf.cert_pem.as_str()),
        ("tls.key", leaf.key_pem.as_str()),
    ];
    if let Some(ca) = ca {
        entries.push(("ca.crt", ca));
    }
    secret(ns, name, "kubernetes.io/tls", &entries)
}

/// A rustls client trusting `ca_pem`, presenting `client` if given.
pub fn client_config(ca_pem: &str, client: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("CA PEM")).expect("add CA");
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots);
    let cfg = match client {
        None => b.with_no_client_auth(),
        Some(l) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(l.cert_pem.as_bytes())
                    .map(|c| c.expect("client PEM"))
                    .collect();
            let key = PrivateKeyDer::from_pem_slice(l.key_pem.as_bytes()).expect("client key");
            b.with_client_auth_cert(chain, key).expect("client cert")
        }
    };
    Arc::new(cfg)
}

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Send one `GET path` with `Host: host` and read one response (Content-Length
/// or chunked body), leaving the connection open for the next.
pub async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
    path: &str,
) -> Result<Reply, String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: crossmesh-test\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "connection closed before a response ({} bytes)",
                buf.len()
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line: {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[head_end..].to_vec();
    let get = |k: &str| {
        headers
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < len {
            let n = s
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read body: {e}"))?;
            if n == 0 {
                return Err("connection closed in the body".into());
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        while !body.windows(5).any(|w| w == b"0\r\n\r\n") {
            let n = s
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read body: {e}"))?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}

/// An open TLS connection and the subject of the certificate the server
/// presented.
pub struct Conn {
    pub stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    pub peer_subject: String,
}

/// Connect to `addr` over TLS with SNI `sni`.
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<Conn, String> {
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let name = ServerName::try_from(sni.to_string()).map_err(|e| format!("SNI {sni}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {addr} (SNI {sni}): {e}"))?;
        let peer_subject = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
            .map(|(_, c)| c.subject().to_string())
            .unwrap_or_default();
        Ok(Conn {
            stream,
            peer_subject,
        })
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| format!("TLS connect to {addr} (SNI {sni}) timed out"))?
}

/// One HTTPS request on a new connection: the reply and the server's
/// certificate subject.
pub async fn https_get(
    addr: SocketAddr,
    sni: &str,
    path: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<(Reply, String), String> {
    let mut c = connect(addr, sni, cfg).await?;
    let r = tokio::time::timeout(Duration::from_secs(5), request(&mut c.stream, sni, path))
        .await
        .map_err(|_| format!("HTTPS GET {path} (SNI {sni}) timed out"))??;
    Ok((r, c.peer_subject))
}

/// One plaintext HTTP request on a new connection.
pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> Result<Reply, String> {
    let fut = async {
        let mut tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        request(&mut tcp, host, path).await
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| format!("GET {path} to {addr} timed out"))?
}

/// A gRPC channel over TLS (h2) to `addr`, verified as that IP address against
/// `roots`, presenting `client` (certificate chain, key) if given: the agent
/// port seen by a raw protocol client. Errors carry their source chain.
pub async fn grpc_channel(
    addr: SocketAddr,
    roots: &str,
    client: Option<(&str, &str)>,
) -> Result<tonic::transport::Channel, String> {
    let mut store = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(roots.as_bytes()) {
        store
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(store);
    let mut cfg = match client {
        None => b.with_no_client_auth(),
        Some((chain, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(chain.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| e.to_string())?;
            b.with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let cfg = Arc::new(cfg);
    let ip = addr.ip();
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_| {
            let cfg = cfg.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let tls = tokio_rustls::TlsConnector::from(cfg)
                    .connect(ServerName::IpAddress(ip.into()), tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(c) = src {
                s.push_str(&format!(": {c}"));
                src = c.source();
            }
            s
        })
}
