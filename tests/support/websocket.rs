//! A WebSocket echo pod and a WebSocket client (RFC 6455), on plain tokio: the
//! opening handshake (`Sec-WebSocket-Accept` is base64 of SHA-1 of the key and
//! the RFC's GUID) and text frames (client frames masked, server frames not).
//!
//! The pod answers a WebSocket upgrade with `101` and header `x-pod: NAME`,
//! then echoes every text frame; any other request gets `200` with `x-pod` and,
//! as the body, the request head it received (so tests read the headers a
//! proxy forwarded: `x-forwarded-client-cert`, `x-envoy-external-address`).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn accept_key(key: &str) -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(d.as_ref())
}

/// Read an HTTP head (up to the blank line); bytes read past it are returned too.
async fn read_head(s: &mut TcpStream) -> Result<(String, Vec<u8>), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).into_owned();
            return Ok((head, buf[i + 4..].to_vec()));
        }
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "connection closed before the end of the head: {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A header's value from an HTTP head (case-insensitive name).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// One frame: (opcode, payload). `pending` holds bytes already read.
async fn read_frame(s: &mut TcpStream, pending: &mut Vec<u8>) -> Result<(u8, Vec<u8>), String> {
    async fn need(s: &mut TcpStream, pending: &mut Vec<u8>, n: usize) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        while pending.len() < n {
            let r = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if r == 0 {
                return Err("connection closed inside a frame".into());
            }
            pending.extend_from_slice(&chunk[..r]);
        }
        Ok(())
    }
    need(s, pending, 2).await?;
    let opcode = pending[0] & 0x0f;
    let masked = pending[1] & 0x80 != 0;
    let mut len = (pending[1] & 0x7f) as usize;
    let mut at = 2;
    if len == 126 {
        need(s, pending, 4).await?;
        len = u16::from_be_bytes([pending[2], pending[3]]) as usize;
        at = 4;
    } else if len == 127 {
        return Err("64-bit frame lengths are not used here".into());
    }
    let mask_at = at;
    if masked {
        at += 4;
    }
    need(s, pending, at + len).await?;
    let mut payload = pending[at..at + len].to_vec();
    if masked {
        let mask = [
            pending[mask_at],
            pending[mask_at + 1],
            pending[mask_at + 2],
            pending[mask_at + 3],
        ];
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    pending.drain(..at + len);
    Ok((opcode, payload))
}

/// A final frame with `opcode` and `payload`, masked with `mask` when given
/// (clients must mask, servers must not).
fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    if payload.len() < 126 {
        out.push(m | payload.len() as u8);
    } else {
        out.push(m | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// The echo pod.
pub struct EchoPod {
    pub addr: SocketAddr,
    echoed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoPod {
    /// Listen on `ip:port` as pod `name`.
    pub async fn start(ip: Ipv4Addr, port: u16, name: &str) -> EchoPod {
        let listener = tokio::net::TcpListener::bind((ip, port))
            .await
            .unwrap_or_else(|e| panic!("echo pod {name}: bind {ip}:{port}: {e}"));
        let addr = listener.local_addr().expect("local_addr");
        let echoed = Arc::new(AtomicU64::new(0));
        let (name, count) = (name.to_string(), echoed.clone());
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let (name, count) = (name.clone(), count.clone());
                tokio::spawn(async move {
                    let _ = serve(s, &name, &count).await;
                });
            }
        });
        EchoPod { addr, echoed, task }
    }

    /// Text frames echoed so far.
    pub fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::SeqCst)
    }
}

impl Drop for EchoPod {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut s: TcpStream, name: &str, count: &AtomicU64) -> Result<(), String> {
    let (head, mut pending) = read_head(&mut s).await?;
    let upgrade = header(&head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = header(&head, "sec-websocket-key").filter(|_| upgrade) else {
        let resp = format!(
            "HTTP/1.1 200 OK\r\nx-pod: {name}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{head}",
            head.len()
        );
        return s
            .write_all(resp.as_bytes())
            .await
            .map_err(|e| e.to_string());
    };
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-accept: {}\r\nx-pod: {name}\r\n\r\n",
        accept_key(key)
    );
    s.write_all(resp.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let (op, payload) = read_frame(&mut s, &mut pending).await?;
        match op {
            0x1 | 0x2 => {
                s.write_all(&frame(op, &payload, None))
                    .await
                    .map_err(|e| e.to_string())?;
                count.fetch_add(1, Ordering::SeqCst);
            }
            0x8 => {
                let _ = s.write_all(&frame(0x8, &payload, None)).await;
                return Ok(());
            }
            0x9 => s
                .write_all(&frame(0xA, &payload, None))
                .await
                .map_err(|e| e.to_string())?,
            _ => {}
        }
    }
}

/// An open client WebSocket.
pub struct Client {
    s: TcpStream,
    pending: Vec<u8>,
    /// The `101` response head (status line and headers).
    pub response_head: String,
    n: u32,
}

impl Client {
    /// Connect to `addr`, upgrade `GET path` for `host`. Err holds the
    /// response head when the proxy answered anything but `101`.
    pub async fn connect(addr: SocketAddr, host: &str, path: &str) -> Result<Client, String> {
        let io = async {
            let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let key = base64::engine::general_purpose::STANDARD
                .encode(format!("crossmesh-{}", addr.port()).as_bytes());
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            );
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let (head, pending) = read_head(&mut s).await?;
            let status = head.split_whitespace().nth(1).unwrap_or_default();
            if status != "101" {
                return Err(format!("upgrade answered {status}: {head:?}"));
            }
            if header(&head, "sec-websocket-accept") != Some(accept_key(&key).as_str()) {
                return Err(format!("wrong Sec-WebSocket-Accept: {head:?}"));
            }
            Ok(Client {
                s,
                pending,
                response_head: head,
                n: 0,
            })
        };
        tokio::time::timeout(Duration::from_secs(5), io)
            .await
            .map_err(|_| format!("WebSocket to {addr}: timed out"))?
    }

    /// Send `text` and return the text frame that comes back.
    pub async fn echo(&mut self, text: &str) -> Result<String, String> {
        self.n = self.n.wrapping_add(1);
        let mask = (0x9e37_79b9u32.wrapping_mul(self.n)).to_be_bytes();
        let io = async {
            self.s
                .write_all(&frame(0x1, text.as_bytes(), Some(mask)))
                .await
                .map_err(|e| e.to_string())?;
            let (op, payload) = read_frame(&mut self.s, &mut self.pending).await?;
            if op != 0x1 {
                return Err(format!("expected a text frame, got opcode {op}"));
            }
            String::from_utf8(payload).map_err(|e| e.to_string())
        };
        tokio::time::timeout(Duration::from_secs(5), io)
            .await
            .map_err(|_| "echo: timed out".to_string())?
    }

    /// Send a close frame.
    pub async fn close(mut self) {
        let _ = self.s.write_all(&frame(0x8, &[], Some([1, 2, 3, 4]))).await;
    }
}

/// `GET path` for `host` on a fresh connection: (status, response head, body).
pub async fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> Result<(u16, String, String), String> {
    let io = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        for (k, v) in extra {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status in {text:?}"))?;
        Ok::<_, String>((status, head.to_string(), body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| format!("GET {path}: timed out"))?
}
