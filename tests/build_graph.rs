//! The shipped build's dependency graph, checked with `cargo tree`.
//!
//! `cargo test` builds the crate with its dev-dependencies, and Cargo unifies
//! features across them: a dev-dependency that turns on rustls's `ring` feature
//! makes every test binary able to speak TLS even when `cargo build --release`
//! (what users run) is not. This test asks Cargo for the graph *without* dev edges,
//! which is the release build's graph, so it sees what users get.

use std::process::Command;

/// `cargo tree` over normal and build edges (no dev), inverted on `package`: one
/// line per package that depends on it, each with its enabled features.
fn shipped_tree(package: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--locked",
            "--offline",
            "--manifest-path",
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
            "--edges",
            "normal,build",
            "--invert",
            package,
            "--prefix",
            "none",
            "--format",
            "{p} [{f}]",
        ])
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The enabled features of every version of `package` in `tree`.
fn features_of<'a>(tree: &'a str, package: &str) -> Vec<(&'a str, Vec<&'a str>)> {
    tree.lines()
        .filter(|l| l.starts_with(&format!("{package} v")))
        .map(|l| {
            let (head, feats) = l.split_once(" [").unwrap_or((l, "]"));
            let feats = feats.trim_end_matches(']');
            (head, feats.split(',').filter(|f| !f.is_empty()).collect())
        })
        .collect()
}

#[test]
fn shipped_rustls_has_a_crypto_provider() {
    let tree = shipped_tree("rustls");
    let versions = features_of(&tree, "rustls");
    assert!(
        !versions.is_empty(),
        "rustls is not in the shipped graph at all:\n{tree}"
    );
    for (pkg, feats) in versions {
        assert!(
            feats.contains(&"ring") || feats.contains(&"aws-lc-rs"),
            "{pkg} is built for the release binary without a crypto provider \
             (features {feats:?}): every TLS handshake would panic. Enable `ring` \
             on it through a normal dependency (Cargo.toml), not a dev-dependency."
        );
    }
}

#[test]
fn parses_cargo_tree_lines() {
    // The parser must not pass a graph it misreads.
    let tree = "rustls v0.23.46 [log,std,tls12]\ncrossmesh v0.1.0 (/x) []\n";
    let v = features_of(tree, "rustls");
    assert_eq!(v, vec![("rustls v0.23.46", vec!["log", "std", "tls12"])]);
}
