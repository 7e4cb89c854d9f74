//! `crossmesh demo` as a user runs it: exit status 0 and one line per seed host
//! naming the cluster that answered. Uses the demo's fixed addresses
//! (127.0.10.1-127.0.30.1:9080, gateway port 8080), which no other test uses; a
//! machine-wide lock keeps concurrent `cargo test` runs from overlapping.

mod support;

use std::process::Command;
use std::time::Duration;

#[test]
fn demo_routes_each_host_to_its_cluster() {
    let _lock = support::net::MachineLock::acquire("demo", Duration::from_secs(120));
    let out = Command::new(support::control_plane::crossmesh_bin())
        .arg("demo")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run crossmesh demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for (n, network) in [(1, "vpc-a"), (2, "vpc-a"), (3, "account-b")] {
        let want = format!(
            "Host: cluster{n}.imroc.cc' http://127.0.0.1:8080/  -> 200 \"cluster{n}\" from pod test/cluster{n}-"
        );
        let line = stdout
            .lines()
            .find(|l| l.contains(&want))
            .unwrap_or_else(|| panic!("no line {want:?} in:\n{stdout}"));
        assert!(
            line.ends_with(&format!("in cluster cluster{n} (network {network})")),
            "{line}"
        );
    }
    assert!(stdout.contains("ok: all 3 hosts"), "{stdout}");
}
