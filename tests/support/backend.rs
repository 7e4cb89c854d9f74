//! A tiny HTTP/1.1 server standing in for a pod: every request gets 200 with the pod's
//! name as the body, and the request's Host, path and headers echoed back as
//! `x-echo-*` response headers. Optional modes for resilience tests: fail the next N
//! requests with a 5xx, or delay every response.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Response, StatusCode};

#[derive(Default)]
struct Shared {
    name: String,
    requests: AtomicU64,
    fail_remaining: AtomicU32,
    fail_status: AtomicU16,
    delay_ms: AtomicU64,
    /// (Host, path) of every request received, in order.
    seen: Mutex<Vec<(String, String)>>,
}

/// A running backend; the server task is aborted on drop.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

async fn handle(State(s): State<Arc<Shared>>, req: Request) -> Response<Body> {
    s.requests.fetch_add(1, Ordering::SeqCst);
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    s.seen.lock().unwrap().push((host.clone(), path.clone()));
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let failing = s
        .fail_remaining
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if failing {
        StatusCode::from_u16(s.fail_status.load(Ordering::SeqCst))
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
    } else {
        StatusCode::OK
    };
    let mut resp = Response::new(Body::from(s.name.clone()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("text/plain"));
    if let Ok(v) = HeaderValue::from_str(&s.name) {
        h.insert("x-backend", v);
    }
    if let Ok(v) = HeaderValue::from_str(&path) {
        h.insert("x-echo-path", v);
    }
    for (k, v) in req.headers() {
        if let Ok(name) = HeaderName::from_bytes(format!("x-echo-{}", k.as_str()).as_bytes()) {
            h.append(name, v.clone());
        }
    }
    resp
}

impl Backend {
    /// Listen on `ip:port` (port 0 picks one) and answer as pod `name`.
    pub async fn start(ip: Ipv4Addr, port: u16, name: &str) -> Backend {
        let listener = tokio::net::TcpListener::bind((ip, port))
            .await
            .unwrap_or_else(|e| panic!("backend {name}: bind {ip}:{port}: {e}"));
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Shared {
            name: name.to_string(),
            fail_status: AtomicU16::new(503),
            ..Default::default()
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Backend {
            name: name.to_string(),
            addr,
            shared,
            task,
        }
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// (Host, path) of every request received.
    pub fn seen(&self) -> Vec<(String, String)> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Answer the next `n` requests with `status` (a 5xx) instead of 200.
    pub fn fail_next(&self, n: u32, status: u16) {
        self.shared.fail_status.store(status, Ordering::SeqCst);
        self.shared.fail_remaining.store(n, Ordering::SeqCst);
    }

    /// Delay every response by `d` (zero turns it off).
    pub fn set_delay(&self, d: Duration) {
        self.shared
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}
