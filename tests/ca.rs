//! The mesh CA as `crossmesh serve` users see it (mesh file `ca:`, DESIGN.md §5):
//! a plug-in CA that cannot be used stops the start with one line naming the file
//! and the reason; a good one, or a generated root, lets it serve; a generated
//! root survives a restart. All certificates are made here, at test time.

mod support;

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant, SystemTime};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use support::control_plane::crossmesh_bin;

struct TestCa {
    key: KeyPair,
    cert: Certificate,
    params: CertificateParams,
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

fn new_key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key")
}

fn root(cn: &str, not_after: SystemTime) -> TestCa {
    let key = new_key();
    let params = ca_params(cn, not_after);
    let cert = params.self_signed(&key).expect("root");
    TestCa { key, cert, params }
}

fn intermediate(cn: &str, parent: &TestCa) -> TestCa {
    let key = new_key();
    let params = ca_params(cn, in_days(365));
    let cert = params
        .signed_by(&key, &Issuer::from_params(&parent.params, &parent.key))
        .expect("intermediate");
    TestCa { key, cert, params }
}

/// Istio's `cacerts` layout; cert-chain.pem = ca-cert.pem + the rest, as Istio's
/// Makefile writes it.
fn plug_in(dir: &Path, ca: &TestCa, key: &KeyPair, roots: &[&TestCa], chain: &[&TestCa]) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join("ca-cert.pem"), ca.cert.pem()).expect("write");
    std::fs::write(dir.join("ca-key.pem"), key.serialize_pem()).expect("write");
    let roots: String = roots.iter().map(|r| r.cert.pem()).collect();
    std::fs::write(dir.join("root-cert.pem"), roots).expect("write");
    let chain: String = chain.iter().map(|c| c.cert.pem()).collect();
    std::fs::write(dir.join("cert-chain.pem"), chain).expect("write");
}

fn mesh_file(dir: &Path, ca: &str) -> String {
    let p = dir.join("mesh.yaml");
    std::fs::write(&p, format!("clusters: []\nca: {ca}\n")).expect("write mesh");
    p.display().to_string()
}

/// `crossmesh serve --mesh MESH` on ephemeral ports, stderr lines on a channel.
fn spawn_serve(mesh: &str) -> (Child, Receiver<String>) {
    let mut cmd = Command::new(crossmesh_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("CROSSMESH_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(["serve", "--mesh", mesh])
        .args([
            "--xds-address",
            "127.0.0.1:0",
            "--debug-address",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// `serve` must exit on its own, non-zero, with exactly one stderr line.
fn refused(mesh: &str) -> String {
    let (mut child, rx) = spawn_serve(mesh);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let lines: Vec<String> = rx.try_iter().collect();
            panic!("serve kept running with a bad CA: {lines:#?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "{status}");
    // The reader thread ends at EOF; collect everything it read.
    let lines: Vec<String> = rx.iter().collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].starts_with("crossmesh: "), "{lines:#?}");
    lines[0].clone()
}

fn stop(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            assert!(s.success(), "exit after SIGTERM: {s}");
            return;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the `crossmesh serving` line and returns it.
fn serving(rx: &Receiver<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("no `crossmesh serving` log line");
        if line.contains("crossmesh serving") {
            return line;
        }
    }
}

#[test]
fn a_plug_in_ca_key_that_does_not_match_stops_serve() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root_a = root("Root A", in_days(3650));
    let inter = intermediate("Intermediate", &root_a);
    let dir = tmp.path().join("cacerts");
    plug_in(&dir, &inter, &new_key(), &[&root_a], &[&inter, &root_a]);
    let line = refused(&mesh_file(tmp.path(), "{dir: cacerts}"));
    assert!(
        line.contains(&format!("{}: ", dir.join("ca-key.pem").display())),
        "{line}"
    );
    assert!(line.contains("does not match"), "{line}");
}

#[test]
fn an_expired_root_stops_serve() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let old = root("Expired Root", SystemTime::now() - Duration::from_secs(60));
    let dir = tmp.path().join("cacerts");
    plug_in(&dir, &old, &old.key, &[&old], &[]);
    let line = refused(&mesh_file(tmp.path(), "{dir: cacerts}"));
    assert!(
        line.contains(&format!("{}: ", dir.join("root-cert.pem").display())),
        "{line}"
    );
    assert!(line.contains("expired"), "{line}");
}

#[test]
fn a_chain_to_another_root_stops_serve() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root_a = root("Root A", in_days(3650));
    let root_b = root("Root B", in_days(3650));
    let inter = intermediate("Intermediate of A", &root_a);
    let dir = tmp.path().join("cacerts");
    // root-cert.pem names B, the chain climbs to A.
    plug_in(&dir, &inter, &inter.key, &[&root_b], &[&inter, &root_a]);
    let line = refused(&mesh_file(tmp.path(), "{dir: cacerts}"));
    assert!(
        line.contains(&format!("{}: ", dir.join("cert-chain.pem").display())),
        "{line}"
    );
    assert!(line.contains("does not lead to a root"), "{line}");
}

#[test]
fn a_good_plug_in_ca_serves() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root_a = root("Root A", in_days(3650));
    let inter = intermediate("Intermediate", &root_a);
    plug_in(
        &tmp.path().join("cacerts"),
        &inter,
        &inter.key,
        &[&root_a],
        &[&inter, &root_a],
    );
    let (child, rx) = spawn_serve(&mesh_file(
        tmp.path(),
        "{dir: cacerts, workloadCertTTL: 30s}",
    ));
    let line = serving(&rx);
    assert!(line.contains("mesh_ca=true"), "{line}");
    stop(child);
}

#[test]
fn a_generated_root_is_kept_next_to_the_mesh_file_across_restarts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mesh = mesh_file(tmp.path(), "{}");
    let state = tmp.path().join("crossmesh-ca");

    let (child, rx) = spawn_serve(&mesh);
    serving(&rx);
    stop(child);
    let first = std::fs::read_to_string(state.join("root-cert.pem")).expect("root kept");
    let key = std::fs::read_to_string(state.join("ca-key.pem")).expect("key kept");
    assert!(first.starts_with("-----BEGIN CERTIFICATE-----"), "{first}");
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.join("ca-key.pem"))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let (child, rx) = spawn_serve(&mesh);
    serving(&rx);
    stop(child);
    let second = std::fs::read_to_string(state.join("root-cert.pem")).expect("root kept");
    assert_eq!(first, second, "a restart must keep the root");
}
