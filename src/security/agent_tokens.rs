//! Enrolment tokens of member-cluster agents (`crossmesh agent-token create`,
//! DESIGN.md §5): single-use, expiring secrets that let a new agent obtain its
//! client certificate once (`sources::agent`, the `Enroll` call).
//!
//! Where they live: `<ca.stateDir>.agent-tokens/` (beside the directory `serve`'s
//! mesh CA keeps its state in, e.g. `crossmesh-ca.agent-tokens` next to the mesh
//! file by default; beside, not inside, so that tokens can be created before the
//! first `serve` generates the root there). The command and the server find the
//! same directory from the same mesh file. Each token is one file named after the
//! SHA-256 of the token, holding only the cluster it was made for and its expiry;
//! the token itself is printed once and never stored.
//!
//! Single use: redeeming renames `<hash>.json` to `<hash>.used` before anything
//! else. `rename` is atomic, so of two redemptions racing (or two replicas sharing
//! the directory) exactly one wins; the loser, and every later attempt, is told the
//! token was already used. An expired or wrong-cluster token is consumed too, and
//! refused.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// Suffix of the token directory, after `ca.stateDir`'s own name.
pub const TOKEN_DIR_SUFFIX: &str = ".agent-tokens";
/// Prefix of every enrolment token (protocol v1), so a token is recognisable in
/// logs and secret scanners and cannot be confused with a service-account JWT.
pub const TOKEN_PREFIX: &str = "cmat1.";
/// Default `--ttl` of `crossmesh agent-token create`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Random bytes in a token (256 bits).
const TOKEN_BYTES: usize = 32;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TokenError {
    #[error("not an enrolment token (expected {TOKEN_PREFIX}... as printed by `crossmesh agent-token create`)")]
    Malformed,
    #[error("unknown enrolment token (never created here, or its record was removed)")]
    Unknown,
    #[error("enrolment token already used: a token is good for one enrolment; create a new one")]
    Used,
    #[error("enrolment token expired at {0}; create a new one")]
    Expired(String),
    #[error("enrolment token was created for cluster {made_for:?}, not {claimed:?}")]
    WrongCluster { made_for: String, claimed: String },
    #[error("agent token store {path}: {reason}")]
    Store { path: PathBuf, reason: String },
}

impl TokenError {
    /// A short label for the refusal metric.
    pub fn label(&self) -> &'static str {
        match self {
            TokenError::Malformed => "token_malformed",
            TokenError::Unknown => "token_unknown",
            TokenError::Used => "token_used",
            TokenError::Expired(_) => "token_expired",
            TokenError::WrongCluster { .. } => "token_wrong_cluster",
            TokenError::Store { .. } => "token_store",
        }
    }
}

/// What is kept per token (never the token).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Record {
    cluster: String,
    created_unix: u64,
    expires_unix: u64,
}

/// The token directory of a mesh CA state directory: `<ca.stateDir>.agent-tokens`.
pub fn token_dir(ca_state_dir: &Path) -> PathBuf {
    let mut name = ca_state_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "crossmesh-ca".into());
    name.push(TOKEN_DIR_SUFFIX);
    ca_state_dir.with_file_name(name)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hash_hex(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `token` has the shape of a token this build creates.
fn well_formed(token: &str) -> bool {
    token.strip_prefix(TOKEN_PREFIX).is_some_and(|rest| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(rest)
            .is_ok_and(|b| b.len() == TOKEN_BYTES)
    })
}

/// Create a token for `cluster` valid for `ttl` from `now`; returns the token
/// (print it; it is not stored).
pub fn create(
    dir: &Path,
    cluster: &str,
    ttl: Duration,
    now: SystemTime,
) -> Result<String, TokenError> {
    let store = |reason: String| TokenError::Store {
        path: dir.to_owned(),
        reason,
    };
    let mut bytes = [0u8; TOKEN_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| store("the system random number generator failed".into()))?;
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    std::fs::create_dir_all(dir).map_err(|e| store(format!("cannot create: {e}")))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let record = Record {
        cluster: cluster.to_string(),
        created_unix: unix(now),
        expires_unix: unix(now + ttl),
    };
    let text = serde_json::to_string(&record).map_err(|e| store(e.to_string()))?;
    let path = dir.join(format!("{}.json", hash_hex(&token)));
    std::fs::write(&path, text)
        .map_err(|e| store(format!("cannot write {}: {e}", path.display())))?;
    Ok(token)
}

/// Redeem `token` for `cluster` at `now`: consumed whatever the outcome, `Ok` only
/// when it was made for `cluster`, unused and unexpired.
pub fn redeem(dir: &Path, cluster: &str, token: &str, now: SystemTime) -> Result<(), TokenError> {
    if !well_formed(token) {
        return Err(TokenError::Malformed);
    }
    let hash = hash_hex(token);
    let fresh = dir.join(format!("{hash}.json"));
    let used = dir.join(format!("{hash}.used"));
    if let Err(e) = std::fs::rename(&fresh, &used) {
        if e.kind() == std::io::ErrorKind::NotFound {
            return Err(if used.exists() {
                TokenError::Used
            } else {
                TokenError::Unknown
            });
        }
        return Err(TokenError::Store {
            path: fresh,
            reason: e.to_string(),
        });
    }
    let text = std::fs::read_to_string(&used).map_err(|e| TokenError::Store {
        path: used.clone(),
        reason: e.to_string(),
    })?;
    let record: Record = serde_json::from_str(&text).map_err(|e| TokenError::Store {
        path: used.clone(),
        reason: format!("not a token record: {e}"),
    })?;
    if unix(now) >= record.expires_unix {
        let at = k8s_openapi::jiff::Timestamp::from_second(record.expires_unix as i64)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| record.expires_unix.to_string());
        return Err(TokenError::Expired(at));
    }
    if record.cluster != cluster {
        return Err(TokenError::WrongCluster {
            made_for: record.cluster,
            claimed: cluster.to_string(),
        });
    }
    Ok(())
}

/// What `crossmesh agent-token revoke` keeps per cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Revocation {
    cluster: String,
    revoked_unix: u64,
}

fn revocation_path(dir: &Path, cluster: &str) -> PathBuf {
    dir.join(format!("revoked-{}.json", hash_hex(cluster)))
}

/// Revoke `cluster` at `now`: every certificate issued to its agent until now is
/// refused from then on (the hub closes its stream within a heartbeat interval),
/// and its unused tokens are deleted. A new token enrols it again.
/// Returns how many unused tokens were deleted.
pub fn revoke(dir: &Path, cluster: &str, now: SystemTime) -> Result<usize, TokenError> {
    let store = |reason: String| TokenError::Store {
        path: dir.to_owned(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| store(format!("cannot create: {e}")))?;
    let rec = Revocation {
        cluster: cluster.to_string(),
        revoked_unix: unix(now),
    };
    let text = serde_json::to_string(&rec).map_err(|e| store(e.to_string()))?;
    let path = revocation_path(dir, cluster);
    std::fs::write(&path, text)
        .map_err(|e| store(format!("cannot write {}: {e}", path.display())))?;
    let mut deleted = 0;
    for e in std::fs::read_dir(dir)
        .map_err(|e| store(e.to_string()))?
        .flatten()
    {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") || p == path {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        if let Ok(r) = serde_json::from_str::<Record>(&text) {
            if r.cluster == cluster && std::fs::remove_file(&p).is_ok() {
                deleted += 1;
            }
        }
    }
    Ok(deleted)
}

/// When `cluster` was last revoked (seconds since the Unix epoch), if ever.
pub fn revoked_at(dir: &Path, cluster: &str) -> Option<u64> {
    let text = std::fs::read_to_string(revocation_path(dir, cluster)).ok()?;
    let r: Revocation = serde_json::from_str(&text).ok()?;
    (r.cluster == cluster).then_some(r.revoked_unix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_use_expiring_and_bound_to_a_cluster() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = token_dir(&tmp.path().join("ca"));
        assert_eq!(dir, tmp.path().join("ca.agent-tokens"));
        let now = SystemTime::now();
        let t = create(&dir, "c3", Duration::from_secs(60), now).unwrap();
        assert!(t.starts_with(TOKEN_PREFIX));
        // Only the hash is on disk.
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let text = std::fs::read_to_string(e.path()).unwrap();
            assert!(!text.contains(&t[TOKEN_PREFIX.len()..]));
            assert!(!e
                .file_name()
                .to_string_lossy()
                .contains(&t[TOKEN_PREFIX.len()..]));
        }
        assert_eq!(redeem(&dir, "c3", &t, now), Ok(()));
        assert_eq!(redeem(&dir, "c3", &t, now), Err(TokenError::Used));

        let expired = create(&dir, "c3", Duration::from_secs(60), now).unwrap();
        let later = now + Duration::from_secs(61);
        assert!(matches!(
            redeem(&dir, "c3", &expired, later),
            Err(TokenError::Expired(_))
        ));

        let other = create(&dir, "c3", Duration::from_secs(60), now).unwrap();
        assert_eq!(
            redeem(&dir, "c4", &other, now),
            Err(TokenError::WrongCluster {
                made_for: "c3".into(),
                claimed: "c4".into()
            })
        );
        // Consumed by the refused attempt.
        assert_eq!(redeem(&dir, "c3", &other, now), Err(TokenError::Used));

        let unknown = format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; TOKEN_BYTES])
        );
        assert_eq!(redeem(&dir, "c3", &unknown, now), Err(TokenError::Unknown));
        assert_eq!(
            redeem(&dir, "c3", "../../etc/passwd", now),
            Err(TokenError::Malformed)
        );

        // Revoking deletes the cluster's unused tokens, not other clusters'.
        let unused = create(&dir, "c3", Duration::from_secs(60), now).unwrap();
        let c4 = create(&dir, "c4", Duration::from_secs(60), now).unwrap();
        assert_eq!(revoked_at(&dir, "c3"), None);
        assert_eq!(revoke(&dir, "c3", now).unwrap(), 1);
        assert_eq!(revoked_at(&dir, "c3"), Some(unix(now)));
        assert_eq!(revoked_at(&dir, "c4"), None);
        assert_eq!(redeem(&dir, "c3", &unused, now), Err(TokenError::Unknown));
        assert_eq!(redeem(&dir, "c4", &c4, now), Ok(()));
    }
}
