//! The JWKS fetcher for RequestAuthentication (istiod's
//! `pilot/pkg/model/jwks_resolver.go`): crossmesh fetches the keys of every
//! `jwksUri` in force (or, for a rule with neither `jwks` nor `jwksUri`, the
//! `jwks_uri` of the issuer's OpenID discovery document), caches them, refetches
//! them every `tunables.jwksRefreshMs` (Istio's `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`,
//! 20 minutes), and hands them to the config store (`Registry::set_jwks`); a
//! change of keys is a full push and `translate::jwt` inlines them. It runs
//! beside translation, which stays pure.
//!
//! A failed fetch keeps the last good keys and is retried sooner (one minute,
//! doubling up to the refresh interval or an hour, whichever is shorter); the
//! reason shows as a warning on `/debug/configz`. A source never fetched has no
//! keys, and translation inlines a key no one can sign for
//! (`translate::jwt::UNFETCHED_JWKS`, as istiod inlines its fake key), so
//! tokens are refused (401) until the keys arrive. `https` URLs are verified
//! against the system's CA bundle (`SSL_CERT_FILE`, else the usual
//! distribution paths); redirects are followed; the response body is never
//! logged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::model::istio::request_authentication::{check_jwks, FetchedJwks, JwksSource};
use crate::model::istio::ConfigSnapshot;

/// Redirects followed for one fetch (Go's `http.Client`, istiod's, follows 10).
const MAX_REDIRECTS: usize = 10;
/// Largest JWKS or discovery document read (1 MiB).
const MAX_BODY: usize = 1 << 20;
/// How often the config in force is re-read for new or removed sources.
const CONFIG_POLL: Duration = Duration::from_millis(200);
/// First retry after a failed fetch (istiod's `JwtPubKeyRefreshIntervalOnFailure`),
/// never later than the refresh interval.
const RETRY_FIRST: Duration = Duration::from_secs(60);
/// Cap of the doubling retry interval (istiod's 60-minute reset threshold).
const RETRY_MAX: Duration = Duration::from_secs(3600);

/// CA bundles tried when `SSL_CERT_FILE` is not set (Debian/Ubuntu, Fedora/RHEL,
/// openSUSE, Alpine).
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Url(String),
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("TLS to {authority}: {reason}")]
    Tls { authority: String, reason: String },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("reading the response: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed HTTP response: {0}")]
    Http(String),
    #[error("HTTP status {0}")]
    Status(u16),
    /// A redirect to be followed (`Location`), handled by [`Client::get`].
    #[error("redirected to {0}")]
    Redirect(String),
    #[error("{0}")]
    Redirects(String),
    #[error("{0}")]
    Body(String),
}

/// Where the remote keys of the rules in force come from, with the longest
/// `timeout` any rule sets for that source.
pub fn sources(config: &ConfigSnapshot) -> BTreeMap<JwksSource, Duration> {
    let mut out: BTreeMap<JwksSource, Duration> = BTreeMap::new();
    for p in &config.request_authentications {
        for r in &p.spec.jwt_rules {
            if let Some(src) = r.remote_source() {
                let t = r.fetch_timeout();
                let e = out.entry(src).or_insert(t);
                *e = (*e).max(t);
            }
        }
    }
    out
}

/// What the fetcher holds for one source.
#[derive(Debug)]
struct Entry {
    keys: Option<Arc<str>>,
    /// Why the last fetch failed.
    error: Option<String>,
    next: Instant,
    failures: u32,
}

/// Runs until the task is dropped: reads the sources in force from
/// `config()`, fetches what is due, publishes the keys with `publish` (which
/// returns whether they changed) and the reasons of the sources whose last
/// fetch failed with `report`.
pub async fn run(
    config: impl Fn() -> Arc<ConfigSnapshot>,
    publish: impl Fn(FetchedJwks) -> bool,
    report: impl Fn(BTreeMap<JwksSource, String>),
    refresh: Duration,
) {
    let client = Client::new();
    let mut entries: BTreeMap<JwksSource, Entry> = BTreeMap::new();
    loop {
        let wanted = sources(&config());
        let before: BTreeSet<JwksSource> = entries.keys().cloned().collect();
        entries.retain(|k, _| wanted.contains_key(k));
        let now = Instant::now();
        for k in wanted.keys() {
            entries.entry(k.clone()).or_insert(Entry {
                keys: None,
                error: None,
                next: now,
                failures: 0,
            });
        }
        let due: Vec<(JwksSource, Duration)> = entries
            .iter()
            .filter(|(_, e)| e.next <= now)
            .map(|(k, _)| (k.clone(), wanted[k]))
            .collect();
        let results = futures::future::join_all(
            due.iter()
                .map(|(src, timeout)| client.fetch_keys(src, *timeout)),
        )
        .await;
        let mut changed = before != entries.keys().cloned().collect();
        let mut errors_changed = changed;
        for ((src, _), res) in due.into_iter().zip(results) {
            let Some(e) = entries.get_mut(&src) else {
                continue;
            };
            match res {
                Ok(keys) => {
                    if e.keys.as_deref() != Some(keys.as_str()) {
                        tracing::info!(source = %src, "JWKS fetched");
                        e.keys = Some(Arc::from(keys));
                        changed = true;
                    }
                    e.failures = 0;
                    e.next = Instant::now() + refresh;
                    errors_changed |= e.error.take().is_some();
                }
                Err(err) => {
                    let wait = retry_after(refresh, e.failures);
                    e.failures = e.failures.saturating_add(1);
                    e.next = Instant::now() + wait;
                    tracing::warn!(source = %src, error = %err, retry_in = ?wait,
                        kept_last_keys = e.keys.is_some(), "JWKS fetch failed");
                    let reason = err.to_string();
                    errors_changed |= e.error.as_deref() != Some(reason.as_str());
                    e.error = Some(reason);
                }
            }
        }
        if changed {
            publish(
                entries
                    .iter()
                    .filter_map(|(k, e)| e.keys.clone().map(|v| (k.clone(), v)))
                    .collect(),
            );
        }
        if errors_changed {
            report(
                entries
                    .iter()
                    .filter_map(|(k, e)| e.error.clone().map(|v| (k.clone(), v)))
                    .collect(),
            );
        }
        let next_due = entries.values().map(|e| e.next).min();
        let wake = Instant::now() + CONFIG_POLL;
        tokio::time::sleep_until(next_due.map_or(wake, |n| n.min(wake))).await;
    }
}

/// istiod's backoff: the first retry after one minute (or the refresh interval,
/// when shorter), doubling, never later than the regular refresh (istiod caps
/// at an hour; a retry later than the next refresh would be no retry).
fn retry_after(refresh: Duration, failures: u32) -> Duration {
    let first = refresh.min(RETRY_FIRST);
    first
        .saturating_mul(1u32 << failures.min(16))
        .min(refresh.min(RETRY_MAX))
}

/// A small HTTP/1.1 GET client (plain or TLS with the system's roots).
pub struct Client {
    tls: Result<Arc<rustls::ClientConfig>, String>,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    pub fn new() -> Client {
        Client {
            tls: system_tls_config(),
        }
    }

    /// The JWKS text of `src`, checked to be a JWKS document.
    pub async fn fetch_keys(
        &self,
        src: &JwksSource,
        timeout: Duration,
    ) -> Result<String, FetchError> {
        let uri = match src {
            JwksSource::Uri(u) => u.clone(),
            JwksSource::Discovery(issuer) => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let doc = self.get(&url, timeout).await?;
                let v: serde_json::Value = serde_json::from_str(&doc)
                    .map_err(|e| FetchError::Body(format!("OpenID discovery document: {e}")))?;
                v.get("jwks_uri")
                    .and_then(|u| u.as_str())
                    .ok_or_else(|| {
                        FetchError::Body("OpenID discovery document has no jwks_uri".into())
                    })?
                    .to_string()
            }
        };
        let body = self.get(&uri, timeout).await?;
        check_jwks(&body).map_err(FetchError::Body)?;
        Ok(body)
    }

    /// GET `url` within `timeout`; the body of a 2xx answer.
    /// Redirects (301, 302, 303, 307, 308) are followed, at most
    /// [`MAX_REDIRECTS`], never from `https` to `http`.
    pub async fn get(&self, url: &str, timeout: Duration) -> Result<String, FetchError> {
        let follow = async {
            let mut url = url.to_string();
            for _ in 0..=MAX_REDIRECTS {
                match self.get_inner(&url).await {
                    Err(FetchError::Redirect(location)) => {
                        let next = Url::parse(&url)?.join(&location);
                        if url.starts_with("https://") && !next.starts_with("https://") {
                            return Err(FetchError::Redirects(format!(
                                "{url} redirects to {next}, which is not https"
                            )));
                        }
                        url = next;
                    }
                    other => return other,
                }
            }
            Err(FetchError::Redirects(format!(
                "more than {MAX_REDIRECTS} redirects"
            )))
        };
        tokio::time::timeout(timeout, follow)
            .await
            .map_err(|_| FetchError::Timeout(timeout))?
    }

    async fn get_inner(&self, url: &str) -> Result<String, FetchError> {
        let u = Url::parse(url)?;
        let tcp = TcpStream::connect((u.host.as_str(), u.port))
            .await
            .map_err(|source| FetchError::Connect {
                authority: u.authority.clone(),
                source,
            })?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nUser-Agent: crossmesh\r\nConnection: close\r\n\r\n",
            u.path, u.authority
        );
        let raw = if u.https {
            let config = self.tls.clone().map_err(|reason| FetchError::Tls {
                authority: u.authority.clone(),
                reason,
            })?;
            let name = rustls::pki_types::ServerName::try_from(u.host.clone()).map_err(|e| {
                FetchError::Tls {
                    authority: u.authority.clone(),
                    reason: format!("server name: {e}"),
                }
            })?;
            let mut s = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| FetchError::Tls {
                    authority: u.authority.clone(),
                    reason: e.to_string(),
                })?;
            s.write_all(request.as_bytes()).await?;
            read_all(&mut s).await?
        } else {
            let mut s = tcp;
            s.write_all(request.as_bytes()).await?;
            read_all(&mut s).await?
        };
        parse_response(&raw)
    }
}

async fn read_all<S: AsyncReadExt + Unpin>(s: &mut S) -> Result<Vec<u8>, FetchError> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match s.read(&mut buf).await {
            Ok(n) => n,
            // A TLS peer that closes without close_notify after a complete
            // `Connection: close` response.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() > MAX_BODY + 64 * 1024 {
            return Err(FetchError::Body(format!(
                "response larger than {MAX_BODY} bytes"
            )));
        }
    }
}

/// Status, headers and body (Content-Length, chunked, or to the end) of a
/// complete HTTP/1.1 response.
fn parse_response(raw: &[u8]) -> Result<String, FetchError> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| FetchError::Http("no end of headers".into()))?;
    let head = std::str::from_utf8(&raw[..split])
        .map_err(|_| FetchError::Http("headers are not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| FetchError::Http(format!("status line {status_line:?}")))?;
    let mut chunked = false;
    let mut length = None;
    let mut location = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        } else if k.eq_ignore_ascii_case("content-length") {
            length = v.parse::<usize>().ok();
        } else if k.eq_ignore_ascii_case("location") {
            location = Some(v.to_string());
        }
    }
    if let (301 | 302 | 303 | 307 | 308, Some(to)) = (status, location) {
        return Err(FetchError::Redirect(to));
    }
    if !(200..300).contains(&status) {
        return Err(FetchError::Status(status));
    }
    let rest = &raw[split + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or_else(|| FetchError::Http("body shorter than Content-Length".into()))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    String::from_utf8(body).map_err(|_| FetchError::Body("body is not UTF-8".into()))
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, FetchError> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| FetchError::Http("truncated chunk".into()))?;
        let size_text = std::str::from_utf8(&rest[..eol]).unwrap_or("");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| FetchError::Http(format!("chunk size {size_text:?}")))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest
            .get(..size)
            .ok_or_else(|| FetchError::Http("truncated chunk".into()))?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).unwrap_or(&[]);
    }
}

struct Url {
    https: bool,
    host: String,
    port: u16,
    authority: String,
    path: String,
}

impl Url {
    /// `location` (absolute, or an absolute path on this URL's server).
    fn join(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            return location.to_string();
        }
        let scheme = if self.https { "https" } else { "http" };
        let path = if location.starts_with('/') {
            location.to_string()
        } else {
            let dir = self.path.rsplit_once('/').map_or("", |(d, _)| d);
            format!("{dir}/{location}")
        };
        format!("{scheme}://{}{path}", self.authority)
    }

    fn parse(url: &str) -> Result<Url, FetchError> {
        let bad = |why: &str| FetchError::Url(format!("{url:?}: {why}"));
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("not an http:// or https:// URL"));
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        let mut path = rest[end..].split('#').next().unwrap_or("").to_string();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        if authority.contains('@') {
            return Err(bad("user information in the URL is not supported"));
        }
        let default_port = if https { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed IPv6 host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("bad port"))?,
                None => default_port,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("bad port"))?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Url {
            https,
            host,
            port,
            authority: authority.to_string(),
            path,
        })
    }
}

/// A TLS client config trusting the system's CA bundle.
fn system_tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let candidates: Vec<std::path::PathBuf> = match std::env::var_os("SSL_CERT_FILE") {
        Some(f) => vec![f.into()],
        None => SYSTEM_BUNDLES.iter().map(Into::into).collect(),
    };
    let mut roots = rustls::RootCertStore::empty();
    let mut read = None;
    for path in &candidates {
        let Ok(pem) = std::fs::read(path) else {
            continue;
        };
        for der in CertificateDer::pem_slice_iter(&pem).flatten() {
            let _ = roots.add(der);
        }
        if !roots.is_empty() {
            read = Some(path.clone());
            break;
        }
    }
    if read.is_none() {
        return Err(format!(
            "no system CA bundle found (tried {}); https jwksUri cannot be verified",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_with_length_chunked_and_errors() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_response(ok).unwrap(), "hello");
        let ch = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n";
        assert_eq!(parse_response(ch).unwrap(), "hello");
        let nf = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(parse_response(nf), Err(FetchError::Status(404))));
        let moved = b"HTTP/1.1 302 Found\r\nLocation: /v2/keys\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(parse_response(moved), Err(FetchError::Redirect(l)) if l == "/v2/keys"));
        let u = Url::parse("https://idp.example.com/a/keys?x").unwrap();
        assert_eq!(u.join("/v2/keys"), "https://idp.example.com/v2/keys");
        assert_eq!(u.join("other"), "https://idp.example.com/a/other");
        assert_eq!(u.join("http://x/y"), "http://x/y");
    }

    #[test]
    fn urls() {
        let u = Url::parse("https://keys.example.com/a/jwks.json?x=1").unwrap();
        assert!(u.https);
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("keys.example.com", 443, "/a/jwks.json?x=1")
        );
        let u = Url::parse("http://[::1]:8080").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 8080, "/")
        );
        assert!(Url::parse("ftp://x").is_err());
    }

    #[test]
    fn retry_backs_off_from_a_minute_or_the_refresh() {
        assert_eq!(
            retry_after(Duration::from_secs(1200), 0),
            Duration::from_secs(60)
        );
        assert_eq!(
            retry_after(Duration::from_secs(1200), 2),
            Duration::from_secs(240)
        );
        assert_eq!(
            retry_after(Duration::from_secs(1200), 20),
            Duration::from_secs(1200)
        );
        assert_eq!(retry_after(Duration::from_secs(7200), 20), RETRY_MAX);
        assert_eq!(
            retry_after(Duration::from_millis(500), 0),
            Duration::from_millis(500)
        );
    }
}
