//! TLS credentials from Kubernetes Secrets, as Istio's `credentialName` reads
//! them (`pilot/pkg/credentials/kube/secrets.go`): parsed and checked once, on
//! arrival, so translation only ever names a Secret that Envoy can load.
//!
//! Two layouts are read, as Istio does:
//! - `kubernetes.io/tls` (or any Secret with these keys): `tls.crt`, `tls.key`,
//!   optional `ca.crt` and `ca.crl`;
//! - generic: `cert`, `key`, optional `cacert` and `crl`.
//!
//! A Secret holding only a CA (`ca.crt` or `cacert`) serves the validation
//! context of a MUTUAL server or client (`NAME-cacert`). Private keys are held in
//! `Zeroizing` strings and never printed (`Debug` redacts them).

use std::collections::BTreeMap;
use std::sync::Arc;

use zeroize::Zeroizing;

/// Istio's `kubernetes://` resource prefix for SDS secrets from Kubernetes.
pub const KUBERNETES_PREFIX: &str = "kubernetes://";
/// Istio's suffix of the validation-context secret (`SdsCaSuffix`).
pub const CA_SUFFIX: &str = "-cacert";

/// A Secret's identity: member cluster, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretKey {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cluster {} Secret {}/{}",
            self.cluster, self.namespace, self.name
        )
    }
}

/// A parsed TLS Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsCredential {
    /// Certificate chain (PEM, leaf first) and its private key (PEM); both or
    /// neither.
    pub key_pair: Option<(String, Zeroizing<String>)>,
    /// Trusted CA certificates (PEM).
    pub ca: Option<String>,
    /// Certificate revocation list (PEM) for the CA.
    pub crl: Option<String>,
    /// Subject of the leaf certificate, for the debug endpoints.
    pub subject: String,
}

impl std::fmt::Debug for TlsCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCredential")
            .field("subject", &self.subject)
            .field("key_pair", &self.key_pair.as_ref().map(|_| "[redacted]"))
            .field("ca", &self.ca.is_some())
            .field("crl", &self.crl.is_some())
            .finish()
    }
}

/// A Secret as it is now: served, or rejected with a reason.
pub type SecretState = Result<Arc<TlsCredential>, String>;

/// Every TLS Secret crossmesh knows of, frozen for one push.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Credentials {
    pub secrets: BTreeMap<SecretKey, SecretState>,
}

impl Credentials {
    /// Whether any cluster holds a Secret in `namespace` (a proxy's cluster
    /// then matters to its translation).
    pub fn has_namespace(&self, namespace: &str) -> bool {
        self.secrets.keys().any(|k| k.namespace == namespace)
    }

    fn get(&self, cluster: &str, namespace: &str, name: &str) -> Option<&SecretState> {
        self.secrets.get(&SecretKey {
            cluster: cluster.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }

    /// The key and certificate of Secret `name` (SDS `kubernetes://NAME`).
    pub fn key_pair(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<TlsCredential>, String> {
        match self.get(cluster, namespace, name) {
            None => Err(format!(
                "Secret {namespace}/{name} not found in cluster {cluster}"
            )),
            Some(Err(e)) => Err(format!(
                "Secret {namespace}/{name} in cluster {cluster} is rejected: {e}"
            )),
            Some(Ok(c)) if c.key_pair.is_none() => Err(format!(
                "Secret {namespace}/{name} in cluster {cluster} holds no certificate and key"
            )),
            Some(Ok(c)) => Ok(c.clone()),
        }
    }

    /// The CA of Secret `name` (SDS `kubernetes://NAME-cacert`): Istio's
    /// `GetCaCert` reads Secret `NAME-cacert` when it exists, else the CA keys
    /// of Secret `NAME`.
    pub fn ca(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<TlsCredential>, String> {
        let own = format!("{name}{CA_SUFFIX}");
        let (n, state) = match self.get(cluster, namespace, &own) {
            Some(s) => (own.as_str(), s),
            None => match self.get(cluster, namespace, name) {
                Some(s) => (name, s),
                None => {
                    return Err(format!(
                        "neither Secret {namespace}/{own} nor {namespace}/{name} found in cluster {cluster}"
                    ))
                }
            },
        };
        match state {
            Err(e) => Err(format!(
                "Secret {namespace}/{n} in cluster {cluster} is rejected: {e}"
            )),
            Ok(c) if c.ca.is_none() => Err(format!(
                "Secret {namespace}/{n} in cluster {cluster} holds no CA certificate (ca.crt or cacert)"
            )),
            Ok(c) => Ok(c.clone()),
        }
    }
}

/// Parse a Secret's `data` (already base64-decoded) into a credential. `None`:
/// the Secret holds neither layout's keys, so it is no TLS Secret and not kept.
pub fn parse_secret(data: &BTreeMap<String, Vec<u8>>) -> Option<Result<TlsCredential, String>> {
    let pick = |a: &'static str, b: &'static str| {
        data.get(a)
            .map(|v| (a, v))
            .or_else(|| data.get(b).map(|v| (b, v)))
    };
    let cert = pick("tls.crt", "cert");
    let key = pick("tls.key", "key");
    let ca = pick("ca.crt", "cacert");
    let crl = pick("ca.crl", "crl");
    if cert.is_none() && key.is_none() && ca.is_none() {
        return None;
    }
    Some(check(cert, key, ca, crl))
}

fn text<'a>(field: &str, bytes: &'a [u8]) -> Result<&'a str, String> {
    std::str::from_utf8(bytes).map_err(|_| format!("{field} is not UTF-8 PEM text"))
}

fn check(
    cert: Option<(&str, &Vec<u8>)>,
    key: Option<(&str, &Vec<u8>)>,
    ca: Option<(&str, &Vec<u8>)>,
    crl: Option<(&str, &Vec<u8>)>,
) -> Result<TlsCredential, String> {
    let mut subject = String::new();
    let key_pair = match (cert, key) {
        (Some((cf, c)), Some((kf, k))) => {
            let certs = certificates(cf, c)?;
            subject = leaf_subject(&certs[0]);
            check_key(kf, k, certs)?;
            Some((
                text(cf, c)?.to_string(),
                Zeroizing::new(text(kf, k)?.to_string()),
            ))
        }
        (Some((cf, _)), None) => {
            return Err(format!(
                "{cf} is set but the private key (tls.key or key) is missing"
            ))
        }
        (None, Some((kf, _))) => {
            return Err(format!(
                "{kf} is set but the certificate (tls.crt or cert) is missing"
            ))
        }
        (None, None) => None,
    };
    let ca = match ca {
        Some((f, v)) => {
            let certs = certificates(f, v)?;
            if subject.is_empty() {
                subject = leaf_subject(&certs[0]);
            }
            Some(text(f, v)?.to_string())
        }
        None => None,
    };
    let crl = match crl {
        Some((f, v)) => {
            let mut n = 0;
            for block in x509_parser::pem::Pem::iter_from_buffer(v) {
                let block = block.map_err(|e| format!("{f}: PEM block {}: {e}", n + 1))?;
                if block.label != "X509 CRL" {
                    return Err(format!(
                        "{f}: PEM block {} is a {:?}, not an X509 CRL",
                        n + 1,
                        block.label
                    ));
                }
                x509_parser::parse_x509_crl(&block.contents)
                    .map_err(|e| format!("{f}: CRL {} is not valid: {e}", n + 1))?;
                n += 1;
            }
            if n == 0 {
                return Err(format!("{f} holds no PEM CRL"));
            }
            if ca.is_none() {
                return Err(format!("{f} is set without a CA (ca.crt or cacert)"));
            }
            Some(text(f, v)?.to_string())
        }
        None => None,
    };
    Ok(TlsCredential {
        key_pair,
        ca,
        crl,
        subject,
    })
}

/// Every PEM block of `bytes`, each an X.509 certificate; at least one.
fn certificates(field: &str, bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for (i, block) in x509_parser::pem::Pem::iter_from_buffer(bytes).enumerate() {
        let block = block.map_err(|e| format!("{field}: PEM block {}: {e}", i + 1))?;
        if block.label != "CERTIFICATE" {
            return Err(format!(
                "{field}: PEM block {} is a {:?}, not a CERTIFICATE",
                i + 1,
                block.label
            ));
        }
        x509_parser::parse_x509_certificate(&block.contents)
            .map_err(|e| format!("{field}: certificate {} is not valid X.509: {e}", i + 1))?;
        out.push(block.contents);
    }
    if out.is_empty() {
        return Err(format!("{field} holds no PEM certificate"));
    }
    Ok(out)
}

fn leaf_subject(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c.subject().to_string())
        .unwrap_or_default()
}

/// The key parses (PKCS#8, PKCS#1 RSA or SEC1 EC, as Envoy accepts) and is the
/// leaf certificate's key. The key bytes never appear in an error.
fn check_key(field: &str, key: &[u8], certs: Vec<Vec<u8>>) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let der = PrivateKeyDer::from_pem_slice(key)
        .map_err(|_| format!("{field} holds no PEM private key (PKCS#8, RSA or EC)"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|_| {
        format!("{field}: the private key is not a supported RSA, ECDSA or Ed25519 key")
    })?;
    let chain: Vec<CertificateDer<'static>> = certs.into_iter().map(CertificateDer::from).collect();
    rustls::sign::CertifiedKey::new(chain, signing)
        .keys_match()
        .map_err(|_| {
            format!("{field}: the private key does not match the certificate (tls.crt or cert)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(cn: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec![cn.to_string()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn data(kv: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn both_layouts_parse_and_a_mismatched_key_is_refused_without_its_bytes() {
        let (c, k) = pair("a.example.com");
        let (c2, k2) = pair("b.example.com");
        let tls = parse_secret(&data(&[("tls.crt", &c), ("tls.key", &k), ("ca.crt", &c2)]))
            .expect("tls secret")
            .expect("valid");
        assert!(tls.subject.contains("a.example.com"), "{}", tls.subject);
        assert_eq!(tls.ca.as_deref(), Some(c2.as_str()));
        let generic = parse_secret(&data(&[("cert", &c2), ("key", &k2)]))
            .expect("generic secret")
            .expect("valid");
        assert!(generic.subject.contains("b.example.com"));
        let e = parse_secret(&data(&[("tls.crt", &c), ("tls.key", &k2)]))
            .expect("tls secret")
            .expect_err("mismatch");
        assert!(e.contains("does not match"), "{e}");
        assert!(!e.contains("PRIVATE KEY"), "{e}");
        let e = parse_secret(&data(&[("tls.crt", "garbage"), ("tls.key", &k)]))
            .expect("tls secret")
            .expect_err("no pem");
        assert!(e.contains("tls.crt"), "{e}");
        assert!(parse_secret(&data(&[("token", "x")])).is_none());
        assert!(format!("{generic:?}").contains("[redacted]"));
    }

    #[test]
    fn the_ca_comes_from_name_cacert_before_name() {
        let (c, k) = pair("a.example.com");
        let (ca, _) = pair("ca.example.com");
        let key = |n: &str| SecretKey {
            cluster: "c1".into(),
            namespace: "ns".into(),
            name: n.into(),
        };
        let mut creds = Credentials::default();
        let only_pair = parse_secret(&data(&[("cert", &c), ("key", &k)]))
            .unwrap()
            .unwrap();
        creds.secrets.insert(key("gw"), Ok(Arc::new(only_pair)));
        assert!(creds.key_pair("c1", "ns", "gw").is_ok());
        assert!(creds.ca("c1", "ns", "gw").unwrap_err().contains("no CA"));
        assert!(creds
            .key_pair("c2", "ns", "gw")
            .unwrap_err()
            .contains("not found"));
        let ca_only = parse_secret(&data(&[("cacert", &ca)])).unwrap().unwrap();
        creds
            .secrets
            .insert(key("gw-cacert"), Ok(Arc::new(ca_only)));
        assert_eq!(
            creds.ca("c1", "ns", "gw").unwrap().ca.as_deref(),
            Some(ca.as_str())
        );
    }
}
