//! Loopback addresses and ports for parallel tests.
//!
//! Each test claims a `127.A.B.0/24` subnet with a lock file under the temp dir, so
//! tests in one binary, several test binaries, and several engineers' `cargo test`
//! runs on one machine never hand out the same addresses. A lock left by a dead
//! process is reclaimed.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A claimed `127.A.B.0/24`; released on drop.
#[derive(Debug)]
pub struct Subnet {
    a: u8,
    b: u8,
    lock: PathBuf,
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

impl Subnet {
    /// Claim a free subnet. `A` ranges over 64..=250, away from the demo's
    /// `127.0.x.x` addresses and `127.0.0.1`.
    pub fn claim() -> Subnet {
        let dir = std::env::temp_dir().join("crossmesh-test-subnets");
        std::fs::create_dir_all(&dir).expect("create subnet lock dir");
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let slots: u32 = 187 * 256;
        let start = (pid.wrapping_mul(2654435761) ^ n.wrapping_mul(40503)) % slots;
        for i in 0..slots {
            let slot = (start + i) % slots;
            let (a, b) = (64 + (slot / 256) as u8, (slot % 256) as u8);
            let lock = dir.join(format!("127.{a}.{b}"));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    let _ = write!(f, "{pid}");
                    return Subnet { a, b, lock };
                }
                Err(_) => {
                    let owner = std::fs::read_to_string(&lock)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    if let Some(owner) = owner {
                        if !pid_alive(owner) {
                            let _ = std::fs::remove_file(&lock);
                        }
                    }
                }
            }
        }
        panic!("no free 127.A.B.0/24 subnet; clean {}", dir.display());
    }

    /// `127.A.B.host`.
    pub fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, self.a, self.b, host)
    }

    pub fn addr(&self, host: u8, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip(host), port))
    }
}

impl Drop for Subnet {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.lock);
    }
}

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A TCP port that is free on every address (bound on `0.0.0.0:0`, then released),
/// and never handed out twice by this process. Envoy's gateway listeners bind
/// `0.0.0.0:<port>`, so ports must be free on all addresses, not only loopback.
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind(("0.0.0.0", 0)).expect("bind 0.0.0.0:0");
        let port = l.local_addr().expect("local_addr").port();
        let mut g = HANDED_OUT.lock().unwrap();
        if g.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// A machine-wide lock (a lock file holding our pid; a dead owner's lock is
/// reclaimed) for tests that must use fixed addresses, such as `crossmesh demo`.
/// Released on drop.
#[derive(Debug)]
pub struct MachineLock {
    path: PathBuf,
}

impl MachineLock {
    /// Wait (polling, up to `timeout`) until `name` is free, then take it.
    pub fn acquire(name: &str, timeout: std::time::Duration) -> MachineLock {
        let path = std::env::temp_dir().join(format!("crossmesh-test-lock-{name}"));
        let pid = std::process::id();
        let start = std::time::Instant::now();
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    let _ = write!(f, "{pid}");
                    return MachineLock { path };
                }
                Err(_) => {
                    let owner = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    match owner {
                        Some(owner) if !pid_alive(owner) => {
                            let _ = std::fs::remove_file(&path);
                            continue;
                        }
                        _ => {}
                    }
                }
            }
            assert!(
                start.elapsed() < timeout,
                "lock {} still held after {timeout:?}",
                path.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for MachineLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
