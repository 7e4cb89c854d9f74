//! The client side of tests: a curl-equivalent request to a gateway listener with a
//! chosen Host header. No connection pooling, so every request sees Envoy's current
//! listener and routes.

use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("reqwest client")
}

/// `GET http://<addr><path>` with `Host: <host>`.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<Reply, String> {
    let url = format!("http://{addr}{path}");
    let r = client()
        .get(&url)
        .header("host", host)
        .send()
        .await
        .map_err(|e| format!("GET {url} (Host: {host}): {e}"))?;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.map_err(|e| format!("GET {url} body: {e}"))?;
    Ok(Reply {
        status,
        body,
        headers,
    })
}

/// Send `n` requests and return the bodies of those answered with 200 (others are
/// returned as `"<status>"` strings, errors as `"error: ..."`).
pub async fn get_many(addr: SocketAddr, host: &str, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(match get(addr, host, "/").await {
            Ok(r) if r.status == 200 => r.body,
            Ok(r) => format!("<{}>", r.status),
            Err(e) => format!("error: {e}"),
        });
    }
    out
}

/// Send requests for `host` until every one of `pods` has answered 200, at most
/// `max` requests; returns every answer. The gateway balances with
/// LEAST_REQUEST (Istio's default), which picks at random between idle hosts, so
/// a fixed handful of requests can miss one of two healthy pods (6 requests:
/// 3 %); 64 make that chance 2^-63 while a pod that gets no traffic still fails.
pub async fn until_each_answers(
    addr: SocketAddr,
    host: &str,
    pods: &[&str],
    max: usize,
) -> Result<Vec<String>, Vec<String>> {
    let mut out = Vec::new();
    while out.len() < max {
        out.push(match get(addr, host, "/").await {
            Ok(r) if r.status == 200 => r.body,
            Ok(r) => format!("<{}>", r.status),
            Err(e) => format!("error: {e}"),
        });
        if pods.iter().all(|p| out.iter().any(|b| b == p)) {
            return Ok(out);
        }
    }
    Err(out)
}
