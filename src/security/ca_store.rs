//! A generated root kept in a Kubernetes Secret (`ca.kubernetesSecret`), so that
//! every replica of `serve` in a cluster signs with the same root and a replaced
//! Pod finds it again (istiod keeps its self-signed root in `istio-ca-secret`
//! the same way).
//!
//! Runs once at start, before the CA is loaded, with the Pod's own service
//! account (`sources::in_cluster`), in the Pod's namespace:
//! 1. the Secret exists: its four files (the `cacerts` layout) replace the local
//!    copy in `ca.stateDir`;
//! 2. it does not: the root in `ca.stateDir` (generated there now if absent) is
//!    written to a new Secret. Two replicas starting at once race on that
//!    create; the loser gets 409 AlreadyExists, reads the winner's Secret and
//!    takes its root (step 1), so both end up with one root.
//!
//! The key travels only between the API server and `ca.stateDir` (mode 0600);
//! nothing here logs the Secret's data.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::{info, warn};

use super::ca::{Ca, CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE};
use crate::config::MeshConfig;
use crate::kube_client::in_cluster;

/// The Secret's keys: the `cacerts` file names.
const FILES: [&str; 4] = [CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE];
/// How long the API server may be unreachable at start before `serve` gives up
/// (the Pod is then restarted by its Deployment).
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaStoreError {
    #[error("ca.kubernetesSecret: {0}")]
    InCluster(#[from] in_cluster::InClusterError),
    #[error("ca.kubernetesSecret: Secret {ns}/{name}: {reason}")]
    Api {
        ns: String,
        name: String,
        reason: String,
        /// The API server was not reached (worth retrying), as opposed to an
        /// answer (forbidden, not found, invalid) that a retry will not change.
        unreachable: bool,
    },
    #[error("ca.kubernetesSecret: Secret {ns}/{name} has no key {key:?} (a root kept by crossmesh has {FILES:?})")]
    MissingKey {
        ns: String,
        name: String,
        key: &'static str,
    },
    #[error("ca.kubernetesSecret: {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Ca(#[from] super::ca::CaError),
}

/// Make `ca.stateDir` hold the root kept in the Secret named by
/// `ca.kubernetesSecret` (creating the Secret from a new root if there is none).
/// Does nothing without `ca.kubernetesSecret` or with a plug-in `ca.dir`.
pub async fn sync_state_dir(mesh: &MeshConfig) -> Result<(), CaStoreError> {
    let Some(name) = mesh.ca.kubernetes_secret.as_deref() else {
        return Ok(());
    };
    if mesh.ca.dir.is_some() {
        return Ok(());
    }
    let (client, _) = in_cluster::client()?;
    let ns = client.default_namespace().to_string();
    let api: Api<Secret> = Api::namespaced(client, &ns);
    let err = |e: kube::Error| {
        let (reason, unreachable) = match &e {
            kube::Error::Api(s) => (format!("{} {}: {}", s.code, s.reason, s.message), false),
            other => (crate::kube_client::describe_chain(other), true),
        };
        CaStoreError::Api {
            ns: ns.clone(),
            name: name.to_string(),
            reason,
            unreachable,
        }
    };
    let state_dir = &mesh.ca.state_dir;
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        let attempt = async {
            if let Some(s) = api.get_opt(name).await.map_err(err)? {
                write_state_dir(state_dir, &files_of(&s, &ns, name)?)?;
                info!(secret = %format!("{ns}/{name}"), "mesh CA: using the root kept in the Secret");
                return Ok(());
            }
            // No Secret yet: ours (generated now if the local copy has none).
            Ca::from_mesh(mesh)?;
            let secret = secret_from_dir(state_dir, name)?;
            match api.create(&PostParams::default(), &secret).await {
                Ok(_) => {
                    info!(secret = %format!("{ns}/{name}"), "mesh CA: root kept in a new Secret");
                    Ok(())
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    // Another replica created it first: its root is the one.
                    let s = api.get(name).await.map_err(err)?;
                    write_state_dir(state_dir, &files_of(&s, &ns, name)?)?;
                    info!(secret = %format!("{ns}/{name}"), "mesh CA: another replica kept its root first; using it");
                    Ok(())
                }
                Err(e) => Err(err(e)),
            }
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            // Retried: the API server may come up after us.
            Err(CaStoreError::Api {
                reason,
                unreachable: true,
                ..
            }) if tokio::time::Instant::now() < deadline => {
                warn!(secret = %format!("{ns}/{name}"), %reason, "mesh CA: cannot reach the Secret yet; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The four `cacerts` files held in `s`.
fn files_of(
    s: &Secret,
    ns: &str,
    name: &str,
) -> Result<BTreeMap<&'static str, Vec<u8>>, CaStoreError> {
    let data = s.data.clone().unwrap_or_default();
    let mut out = BTreeMap::new();
    for key in FILES {
        let v = data.get(key).ok_or(CaStoreError::MissingKey {
            ns: ns.to_string(),
            name: name.to_string(),
            key,
        })?;
        out.insert(key, v.0.clone());
    }
    Ok(out)
}

/// The Secret holding the `cacerts` files of `dir`.
fn secret_from_dir(dir: &Path, name: &str) -> Result<Secret, CaStoreError> {
    let mut data = BTreeMap::new();
    for key in FILES {
        let path = dir.join(key);
        let bytes = std::fs::read(&path).map_err(|source| CaStoreError::Write {
            path: path.display().to_string(),
            source,
        })?;
        data.insert(key.to_string(), ByteString(bytes));
    }
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "crossmesh".to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    })
}

/// Replace `dir` with `files` (mode 0700 directory, 0600 files), written to a
/// sibling first and renamed into place.
fn write_state_dir(
    dir: &Path,
    files: &BTreeMap<&'static str, Vec<u8>>,
) -> Result<(), CaStoreError> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let werr = |path: &Path| {
        let path = path.display().to_string();
        move |source| CaStoreError::Write { path, source }
    };
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(werr(parent))?;
    let base = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "crossmesh-ca".into());
    let tmp = parent.join(format!(".{base}.from-secret-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(werr(&tmp))?;
    for (name, bytes) in files {
        let path = tmp.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(werr(&path))?;
        f.write_all(bytes).map_err(werr(&path))?;
        f.sync_all().map_err(werr(&path))?;
    }
    let old = parent.join(format!(".{base}.old-{}", std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(werr(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(werr(dir))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_is_replaced_whole_with_private_files() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("stale.pem"), "old").unwrap();
        let files = FILES.iter().map(|f| (*f, f.as_bytes().to_vec())).collect();
        write_state_dir(&dir, &files).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want: Vec<String> = FILES.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(names, want);
        let mode = std::fs::metadata(dir.join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read(dir.join(CA_KEY_FILE)).unwrap(),
            CA_KEY_FILE.as_bytes()
        );
        // Nothing left beside it.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_secret_without_a_key_is_named() {
        let s = Secret {
            data: Some(BTreeMap::from([(
                ROOT_CERT_FILE.to_string(),
                ByteString(b"x".to_vec()),
            )])),
            ..Default::default()
        };
        let e = files_of(&s, "crossmesh-system", "crossmesh-ca")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Secret crossmesh-system/crossmesh-ca has no key \"ca-cert.pem\""),
            "{e}"
        );
    }
}
