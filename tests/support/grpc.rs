//! What the proxyless gRPC tests share: the test venv's Python with grpcio, and
//! the Python programs under `tests/grpc/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The test venv's Python (`CROSSMESH_PYTHON` overrides it), if it imports
/// grpcio; `scripts/setup` installs grpcio there.
pub fn python() -> Option<PathBuf> {
    let py = std::env::var_os("CROSSMESH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python3"));
    let ok = Command::new(&py)
        .args(["-c", "import grpc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(py)
}

/// `tests/grpc/NAME`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/grpc")
        .join(name)
}
