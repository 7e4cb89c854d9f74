//! The mesh CA: one root of trust per mesh, workload and xDS-server certificates.
//!
//! The signing certificate comes from one of two places (mesh file `ca:`,
//! DESIGN.md §5):
//! - `ca.dir`: a plug-in CA laid out as Istio's `cacerts` Secret: `ca-cert.pem` (the
//!   signing certificate), `ca-key.pem` (its key, PKCS#8), `root-cert.pem` (every
//!   root in force, several during a rotation) and `cert-chain.pem` (from the
//!   signing certificate up to the root; empty when the signing certificate is
//!   itself the root). Every check that can fail is done at load, so `serve`
//!   refuses to start instead of handing out certificates nobody can verify.
//! - otherwise a root generated on first start (ECDSA P-256, 10 years, O = trust
//!   domain) and kept in `ca.stateDir`, written in the same layout so a restart
//!   keeps the root and another control plane can use the directory as its plug-in.
//!
//! A plug-in directory is also watched while `serve` runs (`Ca::files_digest`,
//! `Ca::reload`): a changed set of files is checked exactly as at start and, if
//! good, replaces the CA in force (the caller swaps its `Arc<Ca>`); a bad set is
//! refused with the file and the reason, and the CA in force keeps signing.
//!
//! Workload certificates follow Istio's: an ECDSA P-256 key, an empty subject, one
//! URI SAN `spiffe://<trustDomain>/ns/<ns>/sa/<sa>`, key usage digitalSignature +
//! keyEncipherment, extended key usage serverAuth + clientAuth, a random serial.
//! The CA never decides who may have which identity: callers pass the identity of
//! an authenticated caller.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use x509_parser::certificate::X509Certificate;
use zeroize::Zeroizing;

use crate::config::MeshConfig;

/// Files of Istio's `cacerts` layout.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";

/// Lifetime of a generated root (Istio's self-signed root: 10 years).
const GENERATED_ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Longest backdating of `notBefore`, for peers whose clock is behind ours.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Service account named in the xDS server certificate's URI SAN.
const SERVER_SERVICE_ACCOUNT: &str = "crossmesh";

/// A workload identity (plain data, defined in the model: a `Proxy` carries one).
pub use crate::model::identity::Identity;

/// The names the server certificate covers: the listen IP (unless a wildcard),
/// loopback, and `names` (DNS names proxies dial; an IP address among them goes
/// into an IP SAN). For the TLS xDS port (`xds::secure`) and the agent port
/// (`sources::agent`).
pub fn server_names(listen: Option<IpAddr>, names: &[String]) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns: Vec<String> = vec!["localhost".into()];
    let mut ips: Vec<IpAddr> = vec![
        IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    ];
    let listen = listen.filter(|ip| !ip.is_unspecified());
    for n in names {
        match n.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(n.clone()),
        }
    }
    ips.extend(listen);
    dns.sort();
    dns.dedup();
    let mut seen = std::collections::BTreeSet::new();
    ips.retain(|ip| seen.insert(*ip));
    (dns, ips)
}

/// A certificate and its key, as delivered in the SDS secret `default`.
#[derive(Clone)]
pub struct IssuedCert {
    pub identity: Identity,
    /// Leaf first, then the plug-in `cert-chain.pem` (PEM).
    pub cert_chain_pem: String,
    /// PKCS#8 P-256 key (PEM). Never logged, never in `Debug` output.
    pub key_pem: Zeroizing<String>,
    pub serial_hex: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("identity", &self.identity.spiffe_uri())
            .field("serial_hex", &self.serial_hex)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

/// When to replace `c`: at half its lifetime (counted from `notBefore`), earlier by
/// a random amount up to 10 % of the lifetime so that certificates issued together
/// are not all renewed in the same instant.
pub fn renew_at(c: &IssuedCert) -> SystemTime {
    let lifetime = c
        .not_after
        .duration_since(c.not_before)
        .unwrap_or(Duration::ZERO);
    let max_jitter = lifetime.as_nanos() / 10;
    let jitter = if max_jitter == 0 {
        0
    } else {
        let mut b = [0u8; 16];
        // The system RNG failing is not recoverable anywhere; no jitter then.
        let _ = SystemRandom::new().fill(&mut b);
        u128::from_le_bytes(b) % (max_jitter + 1)
    };
    let jitter = Duration::from_nanos(u64::try_from(jitter).unwrap_or(u64::MAX));
    c.not_before + lifetime / 2 - jitter.min(lifetime / 2)
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A CA file that cannot be used: the file and the reason.
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ca.workloadCertTTL must be longer than zero")]
    ZeroTtl,
    #[error("cannot issue a certificate for {subject}: {reason}")]
    Issue { subject: String, reason: String },
}

impl CaError {
    /// The file (or directory) the error is about, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            CaError::Read { path, .. }
            | CaError::Invalid { path, .. }
            | CaError::Write { path, .. } => Some(path),
            CaError::ZeroTtl | CaError::Issue { .. } => None,
        }
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> CaError {
    CaError::Invalid {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// The mesh CA. Immutable once loaded; `Send + Sync`, shared as `Arc<Ca>`.
pub struct Ca {
    trust_domain: String,
    /// Namespace crossmesh runs in, for the xDS server certificate's SAN.
    server_namespace: String,
    ttl: Duration,
    issuer: Issuer<'static, KeyPair>,
    signing_not_after: SystemTime,
    /// DER of the signing certificate (`ca-cert.pem`).
    signing_der: Vec<u8>,
    /// PEM appended after each leaf.
    chain_pem: String,
    roots_pem: String,
    root_not_after: SystemTime,
    /// Directory the CA was read from (plug-in or state dir).
    dir: PathBuf,
    generated: bool,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .field("dir", &self.dir)
            .field("generated", &self.generated)
            .field("ttl", &self.ttl)
            .field("root_not_after", &self.root_not_after)
            .finish_non_exhaustive()
    }
}

/// One parsed certificate: its DER and the validity read from it.
struct Cert {
    der: Vec<u8>,
}

impl Cert {
    fn parsed(&self) -> X509Certificate<'_> {
        // Parsed once successfully in `read_certs`; the bytes have not changed.
        match x509_parser::parse_x509_certificate(&self.der) {
            Ok((_, c)) => c,
            Err(_) => unreachable!("certificate parsed at load"),
        }
    }
    fn pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.der)
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn read(path: &Path) -> Result<Vec<u8>, CaError> {
    std::fs::read(path).map_err(|source| CaError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every PEM block of `bytes`, each an X.509 certificate.
fn read_certs(path: &Path, bytes: &[u8]) -> Result<Vec<Cert>, CaError> {
    let mut out = Vec::new();
    for (i, block) in x509_parser::pem::Pem::iter_from_buffer(bytes).enumerate() {
        let block = block.map_err(|e| invalid(path, format!("PEM block {}: {e}", i + 1)))?;
        if block.label != "CERTIFICATE" {
            return Err(invalid(
                path,
                format!(
                    "PEM block {} is a {:?}, not a CERTIFICATE",
                    i + 1,
                    block.label
                ),
            ));
        }
        if let Err(e) = x509_parser::parse_x509_certificate(&block.contents) {
            return Err(invalid(
                path,
                format!("certificate {} is not valid X.509: {e}", i + 1),
            ));
        }
        out.push(Cert {
            der: block.contents,
        });
    }
    Ok(out)
}

fn asn1_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

fn subject(c: &X509Certificate<'_>) -> String {
    c.subject().to_string()
}

/// A certificate that signs others: CA basic constraint, keyCertSign if key usage
/// is present, and valid now.
fn check_ca_cert(path: &Path, c: &X509Certificate<'_>, now: SystemTime) -> Result<(), CaError> {
    let name = subject(c);
    if !c.is_ca() {
        return Err(invalid(
            path,
            format!(
                "certificate {name:?} is not a CA certificate (basicConstraints CA is not true)"
            ),
        ));
    }
    if let Ok(Some(ku)) = c.key_usage() {
        if !ku.value.key_cert_sign() {
            return Err(invalid(
                path,
                format!(
                    "certificate {name:?} may not sign certificates (key usage lacks keyCertSign)"
                ),
            ));
        }
    }
    check_validity(path, c, now)
}

fn check_validity(path: &Path, c: &X509Certificate<'_>, now: SystemTime) -> Result<(), CaError> {
    let v = c.validity();
    if asn1_time(v.not_after) <= now {
        return Err(invalid(
            path,
            format!("certificate {:?} expired at {}", subject(c), v.not_after),
        ));
    }
    if asn1_time(v.not_before) > now {
        return Err(invalid(
            path,
            format!(
                "certificate {:?} is not valid before {}",
                subject(c),
                v.not_before
            ),
        ));
    }
    Ok(())
}

/// `child` names `parent` as its issuer and carries a signature `parent`'s key made.
fn signed_by(child: &X509Certificate<'_>, parent: &X509Certificate<'_>) -> bool {
    child.issuer().as_raw() == parent.subject().as_raw()
        && child.verify_signature(Some(parent.public_key())).is_ok()
}

/// Whether `ca`, with intermediates from `chain`, leads to one of `roots`.
fn leads_to_root(ca: &Cert, chain: &[Cert], roots: &[Cert]) -> bool {
    if roots.iter().any(|r| r.der == ca.der) {
        return true;
    }
    let roots: Vec<X509Certificate<'_>> = roots.iter().map(Cert::parsed).collect();
    let chain: Vec<X509Certificate<'_>> = chain.iter().map(Cert::parsed).collect();
    let mut current = ca.parsed();
    // Each step climbs one level; a chain longer than the file is a loop.
    for _ in 0..=chain.len() {
        if roots.iter().any(|r| signed_by(&current, r)) {
            return true;
        }
        match chain
            .iter()
            .find(|c| c.as_ref() != current.as_ref() && signed_by(&current, c))
        {
            Some(next) => current = next.clone(),
            None => return false,
        }
    }
    false
}

/// One DER element of `input`: its tag, its content and what follows it.
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// `OBJECT IDENTIFIER` elements used in key algorithm identifiers.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_RSA_ENCRYPTION: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const DER_NULL: &[u8] = &[0x05, 0x00];

/// PKCS#8 `PrivateKeyInfo` around a key in its algorithm's own format (RFC 5208).
fn pkcs8_wrap(algorithm: &[u8], key: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut body = Zeroizing::new(vec![0x02, 0x01, 0x00]);
    body.extend(der(0x30, algorithm));
    let inner = Zeroizing::new(der(0x04, key));
    body.extend_from_slice(&inner);
    Zeroizing::new(der(0x30, &body))
}

/// A SEC1 `ECPrivateKey` (RFC 5915, `EC PRIVATE KEY`) as PKCS#8. The curve is
/// told by the private key's length (32 bytes P-256, 48 bytes P-384); a curve
/// named in the key's own `parameters` must agree, which ring checks.
fn pkcs8_from_sec1(sec1: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let (0x30, body, _) = der_next(sec1)? else {
        return None;
    };
    let (0x02, _version, rest) = der_next(body)? else {
        return None;
    };
    let (0x04, private, _) = der_next(rest)? else {
        return None;
    };
    let curve = match private.len() {
        32 => OID_P256,
        48 => OID_P384,
        _ => return None,
    };
    Some(pkcs8_wrap(&[OID_EC_PUBLIC_KEY, curve].concat(), sec1))
}

/// The signing key: PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`) or PKCS#1
/// (`RSA PRIVATE KEY`, as in Istio's `samples/certs`).
fn read_key(path: &Path, bytes: &[u8]) -> Result<KeyPair, CaError> {
    let mut blocks = x509_parser::pem::Pem::iter_from_buffer(bytes);
    let block = match blocks.next() {
        Some(Ok(b)) => b,
        Some(Err(e)) => return Err(invalid(path, format!("not a PEM key: {e}"))),
        None => return Err(invalid(path, "holds no PEM key")),
    };
    // Keep the key's DER out of memory once parsed.
    let contents = Zeroizing::new(block.contents);
    let der = match block.label.as_str() {
        "PRIVATE KEY" => contents,
        "EC PRIVATE KEY" => pkcs8_from_sec1(&contents).ok_or_else(|| {
            invalid(
                path,
                "not a SEC1 EC private key on P-256 or P-384 (or its curve is not named)",
            )
        })?,
        "RSA PRIVATE KEY" => pkcs8_wrap(&[OID_RSA_ENCRYPTION, DER_NULL].concat(), &contents),
        l => {
            return Err(invalid(
                path,
                format!("PEM block is a {l:?}, not a PRIVATE KEY"),
            ))
        }
    };
    KeyPair::try_from(der.as_slice()).map_err(|e| {
        invalid(
            path,
            format!("not a usable ECDSA P-256/P-384, Ed25519 or RSA PKCS#8 key: {e}"),
        )
    })
}

/// A CA read from a directory in the `cacerts` layout, checked.
struct Loaded {
    issuer: Issuer<'static, KeyPair>,
    signing_not_after: SystemTime,
    signing_der: Vec<u8>,
    chain_pem: String,
    roots: Vec<Cert>,
}

fn load_dir(dir: &Path) -> Result<Loaded, CaError> {
    let now = SystemTime::now();
    let ca_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let root_path = dir.join(ROOT_CERT_FILE);
    let chain_path = dir.join(CERT_CHAIN_FILE);

    let roots = read_certs(&root_path, &read(&root_path)?)?;
    if roots.is_empty() {
        return Err(invalid(&root_path, "holds no certificate"));
    }
    for r in &roots {
        check_ca_cert(&root_path, &r.parsed(), now)?;
    }

    let mut ca = read_certs(&ca_path, &read(&ca_path)?)?;
    if ca.len() != 1 {
        return Err(invalid(
            &ca_path,
            format!("holds {} certificates; expected exactly one", ca.len()),
        ));
    }
    let ca = ca.remove(0);
    check_ca_cert(&ca_path, &ca.parsed(), now)?;

    let key_bytes = Zeroizing::new(read(&key_path)?);
    let key = read_key(&key_path, &key_bytes)?;
    if ca.parsed().public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(invalid(
            &key_path,
            format!(
                "the key does not match the certificate in {}",
                ca_path.display()
            ),
        ));
    }

    // cert-chain.pem may be missing or empty (the signing certificate is a root).
    let chain = match std::fs::read(&chain_path) {
        Ok(b) => read_certs(&chain_path, &b)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(CaError::Read {
                path: chain_path,
                source,
            })
        }
    };
    for c in &chain {
        let p = c.parsed();
        check_validity(&chain_path, &p, now)?;
        if !p.is_ca() {
            return Err(invalid(
                &chain_path,
                format!("certificate {:?} is not a CA certificate", subject(&p)),
            ));
        }
    }
    if !leads_to_root(&ca, &chain, &roots) {
        let (path, what) = if chain.is_empty() {
            (&ca_path, "the signing certificate")
        } else {
            (&chain_path, "the chain")
        };
        return Err(invalid(
            path,
            format!(
                "{what} does not lead to a root in {} (ca-cert.pem is issued by {:?})",
                root_path.display(),
                ca.parsed().issuer().to_string()
            ),
        ));
    }

    let ca_is_root = roots.iter().any(|r| r.der == ca.der);
    let chain_pem: String = if ca_is_root && chain.is_empty() {
        String::new()
    } else if chain.first().is_some_and(|c| c.der == ca.der) {
        chain.iter().map(Cert::pem).collect()
    } else {
        std::iter::once(&ca).chain(&chain).map(Cert::pem).collect()
    };
    let signing_not_after = asn1_time(ca.parsed().validity().not_after);
    let issuer = Issuer::from_ca_cert_der(&ca.der.as_slice().into(), key)
        .map_err(|e| invalid(&ca_path, format!("cannot sign with this certificate: {e}")))?;
    Ok(Loaded {
        issuer,
        signing_not_after,
        signing_der: ca.der,
        chain_pem,
        roots,
    })
}

fn random_serial() -> Result<SerialNumber, String> {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| "the system random number generator failed".to_string())?;
    // A positive 128-bit integer (RFC 5280: serials are positive).
    b[0] &= 0x7f;
    if b[0] == 0 {
        b[0] = 1;
    }
    Ok(SerialNumber::from_slice(&b))
}

/// A new root, written to `dir` in the `cacerts` layout.
fn generate_root(dir: &Path, trust_domain: &str) -> Result<(), CaError> {
    let fail = |reason: String| invalid(dir, format!("cannot generate a root: {reason}"));
    let key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| fail(e.to_string()))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(
        DnType::CommonName,
        format!("crossmesh root CA {trust_domain}"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - MAX_CLOCK_SKEW).into();
    params.not_after = (now + GENERATED_ROOT_TTL).into();
    params.serial_number = Some(random_serial().map_err(fail)?);
    let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;

    // Written into a fresh sibling directory, then renamed into place: a crash
    // leaves no half-written CA, and of two processes starting at once one wins
    // the rename and the other reads the winner's root.
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|source| CaError::Write {
        path: parent.to_owned(),
        source,
    })?;
    let mut tag = [0u8; 8];
    let _ = SystemRandom::new().fill(&mut tag);
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "crossmesh-ca".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", u64::from_le_bytes(tag)));
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| CaError::Write { path, source }
    };
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(write_err(&tmp))?;
    }
    let cert_pem = cert.pem();
    let key_pem = Zeroizing::new(key.serialize_pem());
    let files: [(&str, &str); 4] = [
        (CA_KEY_FILE, key_pem.as_str()),
        (CA_CERT_FILE, &cert_pem),
        (ROOT_CERT_FILE, &cert_pem),
        (CERT_CHAIN_FILE, ""),
    ];
    let written = (|| {
        for (file, text) in files {
            write_private(&tmp.join(file), text.as_bytes())?;
        }
        Ok::<(), CaError>(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // An empty directory (made by an operator or a volume mount) is taken over.
    if dir.is_dir() && std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none()) {
        let _ = std::fs::remove_dir(dir);
    }
    let renamed = std::fs::rename(&tmp, dir);
    if renamed.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    match renamed {
        Ok(()) => Ok(()),
        // Lost the race to another process: its root is the one.
        Err(_) if dir.join(CA_KEY_FILE).exists() => Ok(()),
        Err(source) => Err(CaError::Write {
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Create `path` readable by the owner only, with `bytes`, flushed to disk.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| CaError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

impl Ca {
    /// The mesh CA from the mesh file's `ca:`: the plug-in directory when `ca.dir`
    /// is set, else the root kept in `ca.stateDir`, generated there on first start.
    pub fn from_mesh(mesh: &MeshConfig) -> Result<Ca, CaError> {
        let cfg = &mesh.ca;
        if cfg.workload_cert_ttl.is_zero() {
            return Err(CaError::ZeroTtl);
        }
        let (dir, generated) = match &cfg.dir {
            Some(d) => (d.clone(), false),
            None => {
                let d = cfg.state_dir.clone();
                if !d.join(CA_KEY_FILE).exists() {
                    generate_root(&d, &mesh.trust_domain)?;
                }
                (d, true)
            }
        };
        let loaded = load_dir(&dir)?;
        Ok(Ca::from_loaded(
            loaded,
            mesh.trust_domain.clone(),
            mesh.remote_secret_namespace.clone(),
            cfg.workload_cert_ttl,
            dir,
            generated,
        ))
    }

    fn from_loaded(
        loaded: Loaded,
        trust_domain: String,
        server_namespace: String,
        ttl: Duration,
        dir: PathBuf,
        generated: bool,
    ) -> Ca {
        let root_not_after = loaded
            .roots
            .iter()
            .map(|r| asn1_time(r.parsed().validity().not_after))
            .min()
            .unwrap_or(UNIX_EPOCH);
        let roots_pem = loaded.roots.iter().map(Cert::pem).collect();
        Ca {
            trust_domain,
            server_namespace,
            ttl,
            issuer: loaded.issuer,
            signing_not_after: loaded.signing_not_after,
            signing_der: loaded.signing_der,
            chain_pem: loaded.chain_pem,
            roots_pem,
            root_not_after,
            dir,
            generated,
        }
    }

    /// The plug-in directory read again, checked exactly as at start (key
    /// matches the certificate, the chain leads to a root, nothing expired),
    /// with this CA's trust domain and lifetime. A generated root is never read
    /// again (only crossmesh writes it).
    pub fn reload(&self) -> Result<Ca, CaError> {
        let loaded = load_dir(&self.dir)?;
        Ok(Ca::from_loaded(
            loaded,
            self.trust_domain.clone(),
            self.server_namespace.clone(),
            self.ttl,
            self.dir.clone(),
            self.generated,
        ))
    }

    /// SHA-256 over the four files of the `cacerts` layout in `dir` (a missing
    /// or unreadable file counts as its own content), so a poller can tell
    /// that something changed without parsing anything.
    pub fn files_digest(dir: &Path) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for file in [CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE] {
            match std::fs::read(dir.join(file)) {
                Ok(b) => {
                    let b = Zeroizing::new(b);
                    ctx.update(&(b.len() as u64).to_be_bytes());
                    ctx.update(&b);
                }
                Err(e) => {
                    ctx.update(&u64::MAX.to_be_bytes());
                    ctx.update(format!("{:?}", e.kind()).as_bytes());
                }
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// Whether `other` signs with the same certificate and chain: if not, every
    /// certificate issued by `self` should be replaced.
    pub fn same_signer(&self, other: &Ca) -> bool {
        self.signing_der == other.signing_der && self.chain_pem == other.chain_pem
    }

    /// SHA-256 (hex) of the signing certificate's DER: names the signer to
    /// agents, which renew when it is not the one their certificate came from.
    pub fn signer_sha256(&self) -> String {
        hex(ring::digest::digest(&ring::digest::SHA256, &self.signing_der).as_ref())
    }

    /// Subject of the signing certificate (`ca-cert.pem`), for logs and
    /// `/debug/certz`.
    pub fn signer_subject(&self) -> String {
        x509_parser::parse_x509_certificate(&self.signing_der)
            .map(|(_, c)| c.subject().to_string())
            .unwrap_or_default()
    }

    /// A workload certificate for `id`, valid for `workload_ttl` (never past the
    /// signing certificate's own expiry). Only identities of the mesh's trust
    /// domain are signed.
    pub fn issue(&self, id: &Identity) -> Result<IssuedCert, CaError> {
        let refuse = |reason: String| CaError::Issue {
            subject: id.spiffe_uri(),
            reason,
        };
        id.check().map_err(refuse)?;
        if id.trust_domain != self.trust_domain {
            return Err(refuse(format!(
                "the mesh's trust domain is {:?}",
                self.trust_domain
            )));
        }
        self.sign(id.clone(), Vec::new())
    }

    /// The certificate of the TLS xDS port: `dns_names` and `ips` as SANs, plus the
    /// URI SAN `spiffe://<td>/ns/<crossmesh namespace>/sa/crossmesh`.
    pub fn issue_server(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
    ) -> Result<IssuedCert, CaError> {
        let id = Identity {
            trust_domain: self.trust_domain.clone(),
            namespace: self.server_namespace.clone(),
            service_account: SERVER_SERVICE_ACCOUNT.into(),
        };
        let mut sans = Vec::new();
        for d in dns_names {
            if rustls::pki_types::DnsName::try_from(d.as_str()).is_err() {
                return Err(CaError::Issue {
                    subject: d.clone(),
                    reason: "not a DNS name".into(),
                });
            }
            let name = d.as_str().try_into().map_err(|e| CaError::Issue {
                subject: d.clone(),
                reason: format!("not a DNS name: {e}"),
            })?;
            sans.push(SanType::DnsName(name));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        self.sign(id, sans)
    }

    fn sign(&self, id: Identity, mut sans: Vec<SanType>) -> Result<IssuedCert, CaError> {
        let uri = id.spiffe_uri();
        let fail = |reason: String| CaError::Issue {
            subject: uri.clone(),
            reason,
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| fail(e.to_string()))?;
        let mut params = CertificateParams::default();
        // Istio leaves the subject empty; the SAN is then critical (RFC 5280 4.2.1.6).
        params.distinguished_name = DistinguishedName::new();
        let uri_san = uri
            .as_str()
            .try_into()
            .map_err(|e| fail(format!("not an IA5 string: {e}")))?;
        sans.push(SanType::URI(uri_san));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        let not_before = now - MAX_CLOCK_SKEW.min(self.ttl / 10);
        let not_after = (now + self.ttl).min(self.signing_not_after);
        if not_after <= now {
            return Err(fail("the signing certificate has expired".into()));
        }
        // X.509 times have whole seconds: round so the fields equal what is encoded.
        let not_before = round_down_secs(not_before);
        let not_after = round_down_secs(not_after);
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let serial = random_serial().map_err(fail)?;
        let serial_hex = hex(serial.to_bytes().as_slice());
        params.serial_number = Some(serial);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| fail(e.to_string()))?;
        let mut chain = cert.pem();
        chain.push_str(&self.chain_pem);
        Ok(IssuedCert {
            identity: id,
            cert_chain_pem: chain,
            key_pem: Zeroizing::new(key.serialize_pem()),
            serial_hex,
            not_before,
            not_after,
        })
    }

    /// Every root in force (PEM, the order of `root-cert.pem`): the `ROOTCA` secret.
    pub fn trust_bundle_pem(&self) -> String {
        self.roots_pem.clone()
    }

    /// `ca.workloadCertTTL`.
    pub fn workload_ttl(&self) -> Duration {
        self.ttl
    }

    /// Expiry of the earliest-expiring root in force.
    pub fn root_not_after(&self) -> SystemTime {
        self.root_not_after
    }

    /// The directory the CA was read from, and whether crossmesh generated it.
    pub fn source(&self) -> (&Path, bool) {
        (&self.dir, self.generated)
    }
}

/// A member-cluster agent's client certificate (`Ca::sign_agent_csr`).
#[derive(Debug, Clone)]
pub struct AgentCert {
    /// The certificate, then the CA's chain (PEM).
    pub cert_chain_pem: String,
    /// Its URI SAN, [`agent_uri`].
    pub uri: String,
    pub serial_hex: String,
    pub not_after: SystemTime,
}

/// Path prefix of an agent's SPIFFE ID, after the trust domain. Workload IDs are
/// `/ns/..`, so the two can never be mistaken for each other.
pub const AGENT_ID_PATH: &str = "/crossmesh/cluster/";
/// How far an agent certificate's `notBefore` is set back from its issue time
/// (clock skew); fixed, so the issue time can be read back from the certificate
/// (revocation refuses certificates issued before it).
pub const AGENT_CERT_BACKDATE: Duration = Duration::from_secs(60);

/// The identity of cluster `cluster`'s agent:
/// `spiffe://<trust domain>/crossmesh/cluster/<cluster>`.
pub fn agent_uri(trust_domain: &str, cluster: &str) -> String {
    format!("spiffe://{trust_domain}{AGENT_ID_PATH}{cluster}")
}

impl Ca {
    /// Sign an agent's PKCS#10 request (PEM) for cluster `cluster`: only the
    /// request's public key is used; the certificate has an empty subject, the
    /// URI SAN [`agent_uri`] and client-auth usage only, and lives `workload_ttl`
    /// (never past the signing certificate).
    pub fn sign_agent_csr(&self, cluster: &str, csr_pem: &str) -> Result<AgentCert, CaError> {
        let uri = agent_uri(&self.trust_domain, cluster);
        let fail = |reason: String| CaError::Issue {
            subject: uri.clone(),
            reason,
        };
        let ok_name = !cluster.is_empty()
            && cluster.len() <= 253
            && cluster
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if !ok_name {
            return Err(fail(format!(
                "cluster name {cluster:?} cannot be a SPIFFE ID segment"
            )));
        }
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| fail(format!("not a PKCS#10 certificate request: {e}")))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri_san = uri
            .as_str()
            .try_into()
            .map_err(|e| fail(format!("not an IA5 string: {e}")))?;
        params.subject_alt_names = vec![SanType::URI(uri_san)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        let not_before = round_down_secs(now - AGENT_CERT_BACKDATE);
        let not_after = (now + self.ttl).min(self.signing_not_after);
        if not_after <= now {
            return Err(fail("the signing certificate has expired".into()));
        }
        let not_after = round_down_secs(not_after);
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let serial = random_serial().map_err(fail)?;
        let serial_hex = hex(serial.to_bytes().as_slice());
        params.serial_number = Some(serial);
        csr.params = params;
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(|e| fail(e.to_string()))?;
        let mut chain = cert.pem();
        chain.push_str(&self.chain_pem);
        Ok(AgentCert {
            cert_chain_pem: chain,
            uri,
            serial_hex,
            not_after,
        })
    }

    /// The mesh's trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }
}

/// The serving certificate of an agent's injection webhook
/// (`Ca::sign_webhook_csr`).
#[derive(Debug, Clone)]
pub struct WebhookCert {
    /// The certificate, then the CA's chain (PEM).
    pub cert_chain_pem: String,
    /// Its DNS SANs, as requested.
    pub dns_names: Vec<String>,
    pub serial_hex: String,
    pub not_after: SystemTime,
}

/// Why `name` is not a Service DNS name `<svc>.<ns>.svc` or
/// `<svc>.<ns>.svc.<domain_suffix>` (each label an RFC 1123 label, as
/// Kubernetes names Services and namespaces); `Ok((svc, ns))` otherwise.
pub fn service_dns_name<'a>(
    name: &'a str,
    domain_suffix: &str,
) -> Result<(&'a str, &'a str), String> {
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let mut parts = name.splitn(3, '.');
    let (svc, ns, rest) = match (parts.next(), parts.next(), parts.next()) {
        (Some(s), Some(n), Some(r)) => (s, n, r),
        _ => {
            return Err(format!(
                "DNS name {name:?} is not <service>.<namespace>.svc"
            ))
        }
    };
    let suffixed = format!("svc.{domain_suffix}");
    if !(rest == "svc" || rest == suffixed) {
        return Err(format!(
            "DNS name {name:?} is not <service>.<namespace>.svc or \
             <service>.<namespace>.{suffixed}"
        ));
    }
    if !label(svc) || !label(ns) {
        return Err(format!(
            "DNS name {name:?}: service and namespace must be RFC 1123 labels"
        ));
    }
    Ok((svc, ns))
}

fn webhook_refusal(reason: String) -> CaError {
    CaError::Issue {
        subject: "webhook serving certificate".into(),
        reason,
    }
}

/// The request of `csr_pem` and its DNS names, checked as
/// [`Ca::sign_webhook_csr`] says, without signing anything (the hub checks an
/// enrolment's webhook request before it spends the token).
pub fn webhook_request(
    csr_pem: &str,
    domain_suffix: &str,
) -> Result<(rcgen::CertificateSigningRequestParams, Vec<String>), CaError> {
    let fail = webhook_refusal;
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| fail(format!("not a PKCS#10 certificate request: {e}")))?;
    let mut dns_names = Vec::new();
    let mut service: Option<(String, String)> = None;
    for san in &csr.params.subject_alt_names {
        let name = match san {
            SanType::DnsName(n) => n.as_str().to_string(),
            SanType::IpAddress(ip) => {
                return Err(fail(format!("IP SAN {ip} refused: DNS names only")))
            }
            SanType::URI(u) => {
                return Err(fail(format!(
                    "URI SAN {:?} refused: DNS names only",
                    u.as_str()
                )))
            }
            SanType::Rfc822Name(e) => {
                return Err(fail(format!(
                    "email SAN {:?} refused: DNS names only",
                    e.as_str()
                )))
            }
            _ => return Err(fail("a SAN other than a DNS name refused".into())),
        };
        let (svc, ns) = service_dns_name(&name, domain_suffix).map_err(&fail)?;
        match &service {
            None => service = Some((svc.to_string(), ns.to_string())),
            Some((s, n)) if s == svc && n == ns => {}
            Some((s, n)) => {
                return Err(fail(format!(
                    "DNS name {name:?} is not of the Service {s}.{n} the other names are"
                )))
            }
        }
        if !dns_names.contains(&name) {
            dns_names.push(name);
        }
    }
    if dns_names.is_empty() {
        return Err(fail("the request names no DNS name".into()));
    }
    Ok((csr, dns_names))
}

impl Ca {
    /// Sign an agent's request (PEM) for its injection webhook's serving
    /// certificate. The request's SANs are the names asked for, and they must all
    /// be DNS names of one Service (`<svc>.<ns>.svc`, or followed by
    /// `.<domain_suffix>`: so two names at most); an IP, URI, email
    /// or other SAN, another form of name, or no name refuses the request. The
    /// certificate carries those DNS names only (no SPIFFE URI, so no mesh
    /// identity), an empty subject, server-auth usage only, and the lifetime of
    /// an agent certificate ([`AGENT_CERT_BACKDATE`], `workload_ttl`, never past
    /// the signing certificate). Only the request's public key and SANs are used.
    pub fn sign_webhook_csr(
        &self,
        csr_pem: &str,
        domain_suffix: &str,
    ) -> Result<WebhookCert, CaError> {
        let (mut csr, dns_names) = webhook_request(csr_pem, domain_suffix)?;
        let fail = webhook_refusal;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = dns_names
            .iter()
            .map(|n| {
                n.as_str()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e| fail(format!("DNS name {n:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        let not_before = round_down_secs(now - AGENT_CERT_BACKDATE);
        let not_after = (now + self.ttl).min(self.signing_not_after);
        if not_after <= now {
            return Err(fail("the signing certificate has expired".into()));
        }
        let not_after = round_down_secs(not_after);
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let serial = random_serial().map_err(&fail)?;
        let serial_hex = hex(serial.to_bytes().as_slice());
        params.serial_number = Some(serial);
        csr.params = params;
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(|e| fail(e.to_string()))?;
        let mut chain = cert.pem();
        chain.push_str(&self.chain_pem);
        Ok(WebhookCert {
            cert_chain_pem: chain,
            dns_names,
            serial_hex,
            not_after,
        })
    }
}

fn round_down_secs(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix_secs(t).max(0) as u64)
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Ca>();
};

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::Certificate;
    use std::time::Instant;
    use x509_parser::extensions::{GeneralName, ParsedExtension};

    /// A CA certificate made at test time: its params (for signing), key and cert.
    struct TestCa {
        key: KeyPair,
        cert: Certificate,
        params: CertificateParams,
    }

    impl TestCa {
        fn issuer(&self) -> Issuer<'_, &KeyPair> {
            Issuer::from_params(&self.params, &self.key)
        }
    }

    fn ca_params(cn: &str, not_after: SystemTime) -> CertificateParams {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = (SystemTime::now() - Duration::from_secs(3600)).into();
        p.not_after = not_after.into();
        p
    }

    fn in_days(d: u64) -> SystemTime {
        SystemTime::now() + Duration::from_secs(d * 86_400)
    }

    fn root(cn: &str, not_after: SystemTime) -> TestCa {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = ca_params(cn, not_after);
        let cert = params.self_signed(&key).unwrap();
        TestCa { key, cert, params }
    }

    fn intermediate(cn: &str, parent: &TestCa) -> TestCa {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = ca_params(cn, in_days(365));
        let cert = params.signed_by(&key, &parent.issuer()).unwrap();
        TestCa { key, cert, params }
    }

    /// Writes a `cacerts` directory.
    fn plug_in(dir: &Path, ca: &TestCa, ca_key: &KeyPair, roots: &[&TestCa], chain: &[&TestCa]) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(CA_CERT_FILE), ca.cert.pem()).unwrap();
        std::fs::write(dir.join(CA_KEY_FILE), ca_key.serialize_pem()).unwrap();
        let roots: String = roots.iter().map(|r| r.cert.pem()).collect();
        std::fs::write(dir.join(ROOT_CERT_FILE), roots).unwrap();
        let chain: String = chain.iter().map(|c| c.cert.pem()).collect();
        std::fs::write(dir.join(CERT_CHAIN_FILE), chain).unwrap();
    }

    fn mesh_with(text: &str, base: &Path) -> MeshConfig {
        MeshConfig::parse(text, base).unwrap()
    }

    fn plug_in_mesh(dir: &Path, ttl: &str) -> MeshConfig {
        mesh_with(
            &format!(
                "trustDomain: example.org\nca:\n  dir: {}\n  workloadCertTTL: {ttl}\n",
                dir.display()
            ),
            dir,
        )
    }

    fn id(ns: &str, sa: &str) -> Identity {
        Identity {
            trust_domain: "example.org".into(),
            namespace: ns.into(),
            service_account: sa.into(),
        }
    }

    fn pem_ders(pem: &str) -> Vec<Vec<u8>> {
        x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
            .map(|p| p.unwrap().contents)
            .collect()
    }

    /// Full path validation as a TLS peer does it (rustls' webpki verifier): the
    /// leaf as a client certificate, the rest of the chain as intermediates.
    fn verify_as_client(bundle_pem: &str, chain_pem: &str) -> Result<(), rustls::Error> {
        use rustls::pki_types::{CertificateDer, UnixTime};
        let mut roots = rustls::RootCertStore::empty();
        for der in pem_ders(bundle_pem) {
            roots.add(CertificateDer::from(der)).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            crate::tls::provider(),
        )
        .build()
        .unwrap();
        let chain: Vec<CertificateDer<'static>> = pem_ders(chain_pem)
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        verifier
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .map(|_| ())
    }

    fn uri_sans(c: &X509Certificate<'_>) -> Vec<String> {
        let mut out = Vec::new();
        for ext in c.extensions() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
                for n in &san.general_names {
                    out.push(match n {
                        GeneralName::URI(u) => format!("URI:{u}"),
                        GeneralName::DNSName(d) => format!("DNS:{d}"),
                        GeneralName::IPAddress(ip) => format!("IP:{ip:?}"),
                        other => format!("{other:?}"),
                    });
                }
            }
        }
        out
    }

    #[test]
    fn workload_certificate_from_a_plug_in_intermediate() {
        let tmp = tempfile::tempdir().unwrap();
        let root = root("Test Root", in_days(3650));
        let inter = intermediate("Test Intermediate", &root);
        // Istio's Makefile writes cert-chain.pem = ca-cert.pem + root-cert.pem.
        plug_in(tmp.path(), &inter, &inter.key, &[&root], &[&inter, &root]);
        let ca = Ca::from_mesh(&plug_in_mesh(tmp.path(), "30s")).unwrap();
        assert_eq!(ca.workload_ttl(), Duration::from_secs(30));

        let before = SystemTime::now();
        let c = ca.issue(&id("ns-a", "sleep")).unwrap();
        let ders = pem_ders(&c.cert_chain_pem);
        // Leaf, then the chain as plugged in.
        assert_eq!(ders.len(), 3);
        assert_eq!(ders[1], inter.cert.der().to_vec());
        assert_eq!(ders[2], root.cert.der().to_vec());

        let (_, leaf) = x509_parser::parse_x509_certificate(&ders[0]).unwrap();
        assert_eq!(
            uri_sans(&leaf),
            vec!["URI:spiffe://example.org/ns/ns-a/sa/sleep".to_string()]
        );
        assert_eq!(
            c.identity.spiffe_uri(),
            "spiffe://example.org/ns/ns-a/sa/sleep"
        );
        assert_eq!(
            leaf.subject().iter().count(),
            0,
            "empty subject, as Istio's"
        );
        assert_eq!(leaf.issuer().as_raw(), {
            let (_, i) = x509_parser::parse_x509_certificate(inter.cert.der()).unwrap();
            i.subject().as_raw().to_vec()
        });
        assert!(!leaf.is_ca());
        // ECDSA on P-256 (id-ecPublicKey with namedCurve prime256v1).
        let spki = leaf.public_key();
        assert_eq!(spki.algorithm.algorithm.to_id_string(), "1.2.840.10045.2.1");
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .unwrap()
            .as_oid()
            .unwrap();
        assert_eq!(curve.to_id_string(), "1.2.840.10045.3.1.7");
        // Key usage and extended key usage.
        let ku = leaf.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        // Lifetime: the TTL from now, notBefore slightly in the past.
        let nb = asn1_time(leaf.validity().not_before);
        let na = asn1_time(leaf.validity().not_after);
        assert_eq!((nb, na), (c.not_before, c.not_after));
        let ttl = na.duration_since(before).unwrap_or_default();
        assert!(
            ttl > Duration::from_secs(28) && ttl <= Duration::from_secs(30),
            "{ttl:?}"
        );
        assert!(nb < before && before.duration_since(nb).unwrap() <= Duration::from_secs(4));
        // Serial: what the field says, 128 bits at most, positive.
        assert_eq!(hex(leaf.raw_serial()), c.serial_hex);
        assert!(leaf.raw_serial().len() <= 17 && c.serial_hex.len() >= 30);
        // The key is the certificate's key, PKCS#8.
        assert!(c.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let key = KeyPair::from_pem(&c.key_pem).unwrap();
        assert_eq!(key.public_key_raw(), spki.subject_public_key.data.as_ref());
        // A TLS peer trusting only the bundle accepts the chain.
        assert_eq!(
            pem_ders(&ca.trust_bundle_pem()),
            vec![root.cert.der().to_vec()]
        );
        verify_as_client(&ca.trust_bundle_pem(), &c.cert_chain_pem).unwrap();
        // Two certificates never share a serial.
        let c2 = ca.issue(&id("ns-a", "sleep")).unwrap();
        assert_ne!(c.serial_hex, c2.serial_hex);
    }

    #[test]
    fn chain_without_cert_chain_file_still_carries_the_intermediate() {
        let tmp = tempfile::tempdir().unwrap();
        let root = root("Test Root", in_days(3650));
        let inter = intermediate("Test Intermediate", &root);
        plug_in(tmp.path(), &inter, &inter.key, &[&root], &[]);
        std::fs::remove_file(tmp.path().join(CERT_CHAIN_FILE)).unwrap();
        let ca = Ca::from_mesh(&plug_in_mesh(tmp.path(), "1h")).unwrap();
        let c = ca.issue(&id("default", "default")).unwrap();
        let ders = pem_ders(&c.cert_chain_pem);
        assert_eq!(ders.len(), 2);
        assert_eq!(ders[1], inter.cert.der().to_vec());
        verify_as_client(&ca.trust_bundle_pem(), &c.cert_chain_pem).unwrap();
        // Without the intermediate the peer cannot build the path: the check bites.
        let leaf_only = c
            .cert_chain_pem
            .split_inclusive("-----END CERTIFICATE-----\n")
            .next()
            .unwrap();
        assert!(verify_as_client(&ca.trust_bundle_pem(), leaf_only).is_err());
    }

    #[test]
    fn a_certificate_from_another_root_is_not_accepted() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let root_a = root("Root A", in_days(3650));
        let root_b = root("Root B", in_days(3650));
        plug_in(&a, &root_a, &root_a.key, &[&root_a], &[]);
        plug_in(&b, &root_b, &root_b.key, &[&root_b], &[]);
        let ca_a = Ca::from_mesh(&plug_in_mesh(&a, "1h")).unwrap();
        let ca_b = Ca::from_mesh(&plug_in_mesh(&b, "1h")).unwrap();
        let c = ca_b.issue(&id("ns", "sa")).unwrap();
        verify_as_client(&ca_b.trust_bundle_pem(), &c.cert_chain_pem).unwrap();
        assert!(verify_as_client(&ca_a.trust_bundle_pem(), &c.cert_chain_pem).is_err());
    }

    #[test]
    fn rotation_bundle_holds_every_root_and_the_earliest_expiry() {
        let tmp = tempfile::tempdir().unwrap();
        let old = root("Old Root", in_days(30));
        let new = root("New Root", in_days(3650));
        // Step 2 of the rotation: both roots trusted, signing with the new one.
        plug_in(tmp.path(), &new, &new.key, &[&old, &new], &[]);
        let ca = Ca::from_mesh(&plug_in_mesh(tmp.path(), "1h")).unwrap();
        assert_eq!(
            pem_ders(&ca.trust_bundle_pem()),
            vec![old.cert.der().to_vec(), new.cert.der().to_vec()]
        );
        let expected = asn1_time(
            x509_parser::parse_x509_certificate(old.cert.der())
                .unwrap()
                .1
                .validity()
                .not_after,
        );
        assert_eq!(ca.root_not_after(), expected);
        let c = ca.issue(&id("ns", "sa")).unwrap();
        // The CA is itself a root: the chain is the leaf alone.
        assert_eq!(pem_ders(&c.cert_chain_pem).len(), 1);
        verify_as_client(&ca.trust_bundle_pem(), &c.cert_chain_pem).unwrap();
        // A peer that only has the old root (not yet updated) would refuse it,
        // which is why the bundle must reach every proxy before the switch.
        assert!(verify_as_client(&old.cert.pem(), &c.cert_chain_pem).is_err());
    }

    /// The rotation steps of docs/SECURITY.md, at the certificate level: at every
    /// step, a certificate issued then is accepted by proxies holding the bundle
    /// of the step before and of the step after, so no connection is refused.
    #[test]
    fn documented_root_rotation_steps_keep_every_pair_of_peers_talking() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cacerts");
        let old_root = root("Old Root", in_days(365));
        let old_int = intermediate("Old Intermediate", &old_root);
        let new_root = root("New Root", in_days(3650));
        let new_int = intermediate("New Intermediate", &new_root);
        let step = |signing: &TestCa, chain: &[&TestCa], roots: &[&TestCa]| {
            plug_in(&dir, signing, &signing.key, roots, chain);
            let ca = Ca::from_mesh(&plug_in_mesh(&dir, "1h")).unwrap();
            let cert = ca.issue(&id("ns", "sa")).unwrap().cert_chain_pem;
            (ca.trust_bundle_pem(), cert)
        };
        // 0: before. 1: add the new root. 2: sign under it. 3: drop the old root.
        let (b0, c0) = step(&old_int, &[&old_int, &old_root], &[&old_root]);
        let (b1, c1) = step(&old_int, &[&old_int, &old_root], &[&old_root, &new_root]);
        let (b2, c2) = step(&new_int, &[&new_int, &new_root], &[&old_root, &new_root]);
        let (b3, c3) = step(&new_int, &[&new_int, &new_root], &[&new_root]);
        // Each step's certificates against the bundles in force around it.
        for (bundle, certs) in [
            (&b0, vec![&c0, &c1]),
            (&b1, vec![&c0, &c1, &c2]),
            (&b2, vec![&c0, &c1, &c2, &c3]),
            (&b3, vec![&c2, &c3]),
        ] {
            for c in certs {
                verify_as_client(bundle, c).unwrap();
            }
        }
        // Skipping a step refuses connections: why each must reach every proxy.
        assert!(
            verify_as_client(&b0, &c2).is_err(),
            "old-only bundle, new cert"
        );
        assert!(
            verify_as_client(&b3, &c1).is_err(),
            "new-only bundle, old cert"
        );
    }

    /// `reload` reads the changed directory with the same settings; the digest
    /// follows the files' contents; `same_signer` tells a new bundle from a
    /// new signer; a bad directory is refused by `reload` as at start.
    #[test]
    fn reload_digest_and_signer_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("cacerts");
        let (old_root, new_root) = (root("Old", in_days(3650)), root("New", in_days(3650)));
        let old_int = intermediate("Old Int", &old_root);
        plug_in(
            &d,
            &old_int,
            &old_int.key,
            &[&old_root],
            &[&old_int, &old_root],
        );
        let ca = Ca::from_mesh(&plug_in_mesh(&d, "1h")).unwrap();
        let digest = Ca::files_digest(&d);
        assert_eq!(Ca::files_digest(&d), digest, "stable while nothing changes");

        plug_in(
            &d,
            &old_int,
            &old_int.key,
            &[&old_root, &new_root],
            &[&old_int, &old_root],
        );
        assert_ne!(Ca::files_digest(&d), digest);
        let bundle = ca.reload().unwrap();
        assert!(bundle.same_signer(&ca));
        assert_ne!(bundle.trust_bundle_pem(), ca.trust_bundle_pem());
        assert_eq!(bundle.workload_ttl(), Duration::from_secs(3600));

        let new_int = intermediate("New Int", &new_root);
        plug_in(
            &d,
            &new_int,
            &new_int.key,
            &[&old_root, &new_root],
            &[&new_int, &new_root],
        );
        let signer = bundle.reload().unwrap();
        assert!(!signer.same_signer(&bundle));
        assert_eq!(signer.signer_subject(), "CN=New Int");
        verify_as_client(
            &bundle.trust_bundle_pem(),
            &signer.issue(&id("ns", "sa")).unwrap().cert_chain_pem,
        )
        .unwrap();

        // A missing file changes the digest too, and reload names it.
        let before = Ca::files_digest(&d);
        std::fs::remove_file(d.join(CA_KEY_FILE)).unwrap();
        assert_ne!(Ca::files_digest(&d), before);
        let e = signer.reload().unwrap_err();
        assert_eq!(e.path(), Some(d.join(CA_KEY_FILE).as_path()));
    }

    fn load_err(dir: &Path) -> String {
        match Ca::from_mesh(&plug_in_mesh(dir, "1h")) {
            Ok(_) => panic!("{} loaded", dir.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_plug_in_cas_are_refused_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let root_a = root("Root A", in_days(3650));
        let inter = intermediate("Intermediate", &root_a);

        // The key of another certificate.
        let d = tmp.path().join("mismatch");
        let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        plug_in(&d, &inter, &other, &[&root_a], &[&inter, &root_a]);
        let e = load_err(&d);
        assert!(e.contains(&format!("{}/ca-key.pem: ", d.display())), "{e}");
        assert!(e.contains("does not match"), "{e}");

        // An expired root.
        let d = tmp.path().join("expired");
        let old = root("Expired Root", SystemTime::now() - Duration::from_secs(60));
        plug_in(&d, &old, &old.key, &[&old], &[]);
        let e = load_err(&d);
        assert!(
            e.contains(&format!("{}/root-cert.pem: ", d.display())),
            "{e}"
        );
        assert!(e.contains("expired"), "{e}");

        // A chain that leads to another root.
        let d = tmp.path().join("elsewhere");
        let root_b = root("Root B", in_days(3650));
        plug_in(&d, &inter, &inter.key, &[&root_b], &[&inter, &root_a]);
        let e = load_err(&d);
        assert!(
            e.contains(&format!("{}/cert-chain.pem: ", d.display())),
            "{e}"
        );
        assert!(e.contains("does not lead to a root"), "{e}");
        // The same without cert-chain.pem names the signing certificate.
        std::fs::write(d.join(CERT_CHAIN_FILE), "").unwrap();
        let e = load_err(&d);
        assert!(e.contains(&format!("{}/ca-cert.pem: ", d.display())), "{e}");

        // A leaf certificate is not a CA.
        let d = tmp.path().join("leaf");
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut lp = CertificateParams::new(vec!["example.org".to_string()]).unwrap();
        lp.is_ca = IsCa::ExplicitNoCa;
        let leaf = TestCa {
            cert: lp.signed_by(&leaf_key, &root_a.issuer()).unwrap(),
            key: leaf_key,
            params: lp,
        };
        plug_in(&d, &leaf, &leaf.key, &[&root_a], &[]);
        let e = load_err(&d);
        assert!(e.contains(&format!("{}/ca-cert.pem: ", d.display())), "{e}");
        assert!(e.contains("not a CA certificate"), "{e}");

        // A missing file, and a key that is not PKCS#8.
        let d = tmp.path().join("missing");
        plug_in(&d, &root_a, &root_a.key, &[&root_a], &[]);
        std::fs::remove_file(d.join(ROOT_CERT_FILE)).unwrap();
        let e = load_err(&d);
        assert!(
            e.contains(&format!("{}/root-cert.pem: ", d.display())),
            "{e}"
        );
        let d = tmp.path().join("sec1");
        plug_in(&d, &root_a, &root_a.key, &[&root_a], &[]);
        std::fs::write(
            d.join(CA_KEY_FILE),
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = load_err(&d);
        assert!(e.contains("ca-key.pem: ") && e.contains("SEC1"), "{e}");
    }

    /// The SEC1 key inside a PKCS#8 one (ring writes it without `parameters`).
    fn sec1_of(key: &KeyPair) -> String {
        let p8 = key.serialize_der();
        let (_, body, _) = der_next(&p8).unwrap();
        let (_, _, rest) = der_next(body).unwrap();
        let (_, _, rest) = der_next(rest).unwrap();
        let (tag, inner, _) = der_next(rest).unwrap();
        assert_eq!(tag, 0x04);
        pem_encode("EC PRIVATE KEY", inner)
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl (needed to make SEC1 and PKCS#1 keys)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A self-signed root whose key openssl made in `file` (any format), read by
    /// rcgen through its PKCS#8 form.
    fn root_with_openssl_key(dir: &Path, file: &str) -> TestCa {
        openssl(
            dir,
            &["pkcs8", "-topk8", "-nocrypt", "-in", file, "-out", "p8.pem"],
        );
        let key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("p8.pem")).unwrap()).unwrap();
        let params = ca_params("OpenSSL Root", in_days(3650));
        let cert = params.self_signed(&key).unwrap();
        TestCa { key, cert, params }
    }

    #[test]
    fn sec1_and_pkcs1_keys_are_read_as_istio_samples_write_them() {
        let tmp = tempfile::tempdir().unwrap();
        let check = |dir: &Path, key_pem: &str, label: &str| {
            assert!(
                key_pem.starts_with(&format!("-----BEGIN {label}-----")),
                "{key_pem}"
            );
            std::fs::write(dir.join(CA_KEY_FILE), key_pem).unwrap();
            let ca = Ca::from_mesh(&plug_in_mesh(dir, "1h")).unwrap();
            let c = ca.issue(&id("ns", "sa")).unwrap();
            verify_as_client(&ca.trust_bundle_pem(), &c.cert_chain_pem).unwrap();
        };
        // SEC1 without the curve named (told by the key's length).
        let d = tmp.path().join("sec1");
        let r = root("Root", in_days(3650));
        plug_in(&d, &r, &r.key, &[&r], &[]);
        check(&d, &sec1_of(&r.key), "EC PRIVATE KEY");
        // ... and a SEC1 key of another certificate still does not match.
        let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        std::fs::write(d.join(CA_KEY_FILE), sec1_of(&other)).unwrap();
        assert!(load_err(&d).contains("does not match"));

        // SEC1 with the curve named, as `openssl ecparam -genkey` writes it.
        let d = tmp.path().join("sec1-named");
        std::fs::create_dir_all(&d).unwrap();
        openssl(
            &d,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "k.pem",
            ],
        );
        let r = root_with_openssl_key(&d, "k.pem");
        plug_in(&d, &r, &r.key, &[&r], &[]);
        check(
            &d,
            &std::fs::read_to_string(d.join("k.pem")).unwrap(),
            "EC PRIVATE KEY",
        );

        // PKCS#1 RSA, as Istio's samples/certs/ca-key.pem.
        let d = tmp.path().join("rsa");
        std::fs::create_dir_all(&d).unwrap();
        openssl(&d, &["genrsa", "-traditional", "-out", "k.pem", "2048"]);
        let r = root_with_openssl_key(&d, "k.pem");
        plug_in(&d, &r, &r.key, &[&r], &[]);
        check(
            &d,
            &std::fs::read_to_string(d.join("k.pem")).unwrap(),
            "RSA PRIVATE KEY",
        );
    }

    #[test]
    fn generated_root_is_kept_across_restarts() {
        let tmp = tempfile::tempdir().unwrap();
        let mesh = mesh_with("trustDomain: example.org\nca: {}\n", tmp.path());
        assert_eq!(mesh.ca.state_dir, tmp.path().join("crossmesh-ca"));
        let first = Ca::from_mesh(&mesh).unwrap();
        let second = Ca::from_mesh(&mesh).unwrap();
        assert_eq!(first.trust_bundle_pem(), second.trust_bundle_pem());
        assert_eq!(
            first.source(),
            (tmp.path().join("crossmesh-ca").as_path(), true)
        );
        // Owner-only files; no temporary directory left behind.
        use std::os::unix::fs::PermissionsExt;
        let dir = tmp.path().join("crossmesh-ca");
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for f in [CA_KEY_FILE, CA_CERT_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE] {
            let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let entries: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(entries.len(), 1);
        // The root: P-256, about 10 years, O = the trust domain, a CA.
        let ders = pem_ders(&first.trust_bundle_pem());
        let (_, r) = x509_parser::parse_x509_certificate(&ders[0]).unwrap();
        assert!(r.is_ca());
        let o: Vec<_> = r
            .subject()
            .iter_organization()
            .map(|o| o.as_str().unwrap().to_string())
            .collect();
        assert_eq!(o, vec!["example.org".to_string()]);
        let life = first
            .root_not_after()
            .duration_since(SystemTime::now())
            .unwrap();
        assert!(life > Duration::from_secs(3649 * 86_400), "{life:?}");
        // Certificates from the first instance verify against the second's bundle.
        let c = first.issue(&id("ns", "sa")).unwrap();
        verify_as_client(&second.trust_bundle_pem(), &c.cert_chain_pem).unwrap();
        // Another state dir makes another root.
        let other = mesh_with(
            "trustDomain: example.org\nca: {stateDir: elsewhere}\n",
            tmp.path(),
        );
        let third = Ca::from_mesh(&other).unwrap();
        assert_ne!(third.trust_bundle_pem(), first.trust_bundle_pem());
    }

    #[test]
    fn a_state_dir_that_cannot_be_written_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("file"), "").unwrap();
        let mesh = mesh_with("ca: {stateDir: file/ca}\n", tmp.path());
        let e = Ca::from_mesh(&mesh).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}", tmp.path().join("file").display())),
            "{e}"
        );
        assert!(e.contains("cannot write"), "{e}");
    }

    #[test]
    fn server_certificate_names_the_given_hosts() {
        let tmp = tempfile::tempdir().unwrap();
        let mesh = mesh_with("trustDomain: example.org\nca: {}\n", tmp.path());
        let ca = Ca::from_mesh(&mesh).unwrap();
        let c = ca
            .issue_server(
                &["crossmesh.example".into()],
                &["127.0.0.1".parse().unwrap()],
            )
            .unwrap();
        let ders = pem_ders(&c.cert_chain_pem);
        let (_, leaf) = x509_parser::parse_x509_certificate(&ders[0]).unwrap();
        assert_eq!(
            uri_sans(&leaf),
            vec![
                "DNS:crossmesh.example".to_string(),
                "IP:[127, 0, 0, 1]".to_string(),
                "URI:spiffe://example.org/ns/crossmesh-system/sa/crossmesh".to_string(),
            ]
        );
        assert!(ca.issue_server(&["not a name!".into()], &[]).is_err());
    }

    #[test]
    fn bad_identities_and_ttls_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::from_mesh(&mesh_with("ca: {}\n", tmp.path())).unwrap();
        for (ns, sa) in [("", "sa"), ("ns", ""), ("ns/x", "sa"), ("ns", "SA")] {
            assert!(ca.issue(&id(ns, sa)).is_err(), "{ns:?} {sa:?}");
        }
        // The mesh file names no trust domain: cluster.local; nothing else is signed.
        let mut local = id("ns", "sa");
        local.trust_domain = "cluster.local".into();
        ca.issue(&local).unwrap();
        let e = ca.issue(&id("ns", "sa")).unwrap_err().to_string();
        assert!(
            e.contains("spiffe://example.org/ns/ns/sa/sa") && e.contains("trust domain"),
            "{e}"
        );
        for bad in [
            "ca: {workloadCertTTL: 0s}",
            "ca: {workloadCertTTL: 30}",
            "ca: {dir: a, stateDir: b}",
            "ca: {reloadInterval: 0s}",
            "ca: {reissueWindow: soon}",
        ] {
            assert!(MeshConfig::parse(bad, tmp.path()).is_err(), "{bad}");
        }
        let tuned = mesh_with(
            "ca: {reloadInterval: 250ms, reissueWindow: 2s}\n",
            tmp.path(),
        );
        assert_eq!(tuned.ca.reload_interval, Duration::from_millis(250));
        assert_eq!(tuned.ca.reissue_window, Duration::from_secs(2));
        // Nothing configured: no CA wanted, default TTL.
        let plain = mesh_with("", tmp.path());
        assert!(!plain.ca.configured);
        assert_eq!(plain.ca.workload_cert_ttl, Duration::from_secs(86_400));
        assert_eq!(plain.ca.reload_interval, Duration::from_secs(5));
        assert_eq!(plain.ca.reissue_window, Duration::from_secs(30));
    }

    #[test]
    fn renewal_at_half_life_with_jitter_and_no_key_in_debug() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::from_mesh(&mesh_with(
            "trustDomain: example.org\nca: {workloadCertTTL: 1h}\n",
            tmp.path(),
        ))
        .unwrap();
        let c = ca.issue(&id("ns", "sa")).unwrap();
        let life = c.not_after.duration_since(c.not_before).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let at = renew_at(&c).duration_since(c.not_before).unwrap();
            assert!(at <= life / 2 && at >= life * 4 / 10, "{at:?} of {life:?}");
            seen.insert(at);
        }
        assert!(seen.len() > 1, "jitter varies");
        let debug = format!("{c:?}");
        let key_body = c.key_pem.lines().nth(1).unwrap();
        assert!(
            !debug.contains(key_body) && debug.contains("redacted"),
            "{debug}"
        );
    }

    #[test]
    fn issuing_is_cheap() {
        // Figure for BENCHMARKS.md: time to issue a workload certificate.
        let tmp = tempfile::tempdir().unwrap();
        let ca =
            Ca::from_mesh(&mesh_with("trustDomain: example.org\nca: {}\n", tmp.path())).unwrap();
        let start = Instant::now();
        for i in 0..200 {
            ca.issue(&id("ns", &format!("sa-{i}"))).unwrap();
        }
        let per = start.elapsed() / 200;
        eprintln!("issue: {per:?} per certificate");
        assert!(per < Duration::from_millis(50), "{per:?}");
    }

    /// A CSR with `sans`, from a fresh key.
    fn webhook_csr(sans: Vec<SanType>) -> String {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = sans;
        p.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn dns(n: &str) -> SanType {
        SanType::DnsName(n.try_into().unwrap())
    }

    #[test]
    fn webhook_certificate_names_only_service_dns_names_and_serves_only() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::from_mesh(&plug_in_mesh_generated(tmp.path())).unwrap();
        let names = [
            "crossmesh-agent.crossmesh-system.svc",
            "crossmesh-agent.crossmesh-system.svc.cluster.local",
        ];
        let c = ca
            .sign_webhook_csr(
                &webhook_csr(names.iter().map(|n| dns(n)).collect()),
                "cluster.local",
            )
            .unwrap();
        assert_eq!(c.dns_names, names);
        let ders = pem_ders(&c.cert_chain_pem);
        let (_, leaf) = x509_parser::parse_x509_certificate(&ders[0]).unwrap();
        let sans: Vec<String> = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|g| format!("{g:?}"))
            .collect();
        assert_eq!(
            sans,
            names
                .iter()
                .map(|n| format!("DNSName({n:?})"))
                .collect::<Vec<_>>(),
            "DNS names only: no SPIFFE URI"
        );
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth, "server auth only");
        assert!(leaf.subject().iter_attributes().next().is_none());
        let life = c.not_after.duration_since(SystemTime::now()).unwrap();
        assert!(life <= ca.workload_ttl(), "{life:?}");

        // Refused, each with the offending name in the reason.
        let refused = |sans: Vec<SanType>, want: &str| {
            let e = ca
                .sign_webhook_csr(&webhook_csr(sans), "cluster.local")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e} should name {want}");
        };
        refused(vec![dns("hub.example.com")], "hub.example.com");
        refused(vec![dns("a.b.svc.evil.example")], "a.b.svc.evil.example");
        refused(vec![dns("a.b.c.svc")], "a.b.c.svc");
        refused(vec![dns("A.b.svc")], "A.b.svc");
        refused(
            vec![dns("a.b.svc"), SanType::IpAddress([10, 0, 0, 1].into())],
            "10.0.0.1",
        );
        refused(
            vec![
                dns("a.b.svc"),
                SanType::URI("spiffe://example.org/ns/b/sa/a".try_into().unwrap()),
            ],
            "spiffe://example.org/ns/b/sa/a",
        );
        refused(vec![dns("a.b.svc"), dns("c.b.svc")], "c.b.svc");
        refused(vec![], "no DNS name");
        let many: Vec<SanType> = (0..5)
            .map(|i| {
                if i % 2 == 0 {
                    dns(&format!(
                        "a.b.svc{}",
                        if i == 0 { "" } else { ".cluster.local" }
                    ))
                } else {
                    dns("a.b.svc")
                }
            })
            .collect();
        // Duplicates collapse: two distinct names are fine.
        assert_eq!(
            ca.sign_webhook_csr(&webhook_csr(many), "cluster.local")
                .unwrap()
                .dns_names
                .len(),
            2
        );
        assert!(ca.sign_webhook_csr("garbage", "cluster.local").is_err());
    }

    fn plug_in_mesh_generated(dir: &Path) -> MeshConfig {
        mesh_with("trustDomain: example.org\nca: {}\n", dir)
    }
}
