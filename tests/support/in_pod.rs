//! Running `crossmesh serve` as if in a Pod: the kubelet's service-account
//! directory mounted at its fixed path in a private mount namespace
//! (`unshare -r -m`: root or unprivileged user namespaces), and the API server's
//! address in `KUBERNETES_SERVICE_HOST/PORT`.

use std::path::Path;

/// Where the kubelet mounts a Pod's service-account credentials.
pub const SA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// `unshare` arguments (a `StartOptions::wrapper`) that run the binary in a
/// private mount namespace where `/var/run` is an empty tmpfs and, with `sa_dir`,
/// that directory is mounted at [`SA_PATH`].
pub fn in_pod(sa_dir: Option<&Path>) -> Vec<String> {
    let probe = std::process::Command::new("unshare")
        .args(["-r", "-m", "true"])
        .status();
    assert!(
        matches!(probe, Ok(s) if s.success()),
        "the in-cluster tests need `unshare -r -m` (util-linux; root or unprivileged \
         user namespaces): {probe:?}"
    );
    let mut script =
        String::from("set -e; run=$(readlink -f /var/run); mount -t tmpfs tmpfs \"$run\"; ");
    if let Some(d) = sa_dir {
        script.push_str(&format!(
            "mkdir -p {SA_PATH}; mount --bind '{}' {SA_PATH}; ",
            d.display()
        ));
    }
    script.push_str("exec \"$0\" \"$@\"");
    ["unshare", "-r", "-m", "sh", "-c", &script]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The environment the kubelet gives a Pod to find its API server at
/// `127.0.0.1:port`.
pub fn api_env(port: u16) -> Vec<(String, String)> {
    vec![
        ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
        ("KUBERNETES_SERVICE_PORT".into(), port.to_string()),
    ]
}

/// Write `text` to `dir/name` atomically (as the kubelet's atomic writer does).
pub fn write_atomic(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A service-account directory: `token`, the API server's CA `ca_pem`, the
/// Pod's `namespace`.
pub fn sa_dir(dir: &Path, token: &str, ca_pem: &str, namespace: &str) {
    write_atomic(dir, "token", token);
    write_atomic(dir, "ca.crt", ca_pem);
    write_atomic(dir, "namespace", namespace);
}
