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

/// Every Envoy API package the source names (`envoy_types::pb::envoy::…::v3`) is
/// vendored in `proto/vendor/`, so `build.rs` compiles its descriptors and
/// `/debug/config_dump` can print its messages (a missing one prints as an error).
#[test]
fn every_envoy_package_used_is_vendored() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut packages = std::collections::BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read source");
        for (i, _) in text.match_indices("envoy_types::pb::") {
            let path: String = text[i + "envoy_types::pb::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | ':' | '#'))
                .collect();
            let mut pkg = Vec::new();
            for seg in path.split("::").map(|s| s.trim_start_matches("r#")) {
                pkg.push(seg);
                let is_version = seg.len() > 1
                    && seg.starts_with('v')
                    && seg[1..].starts_with(|c: char| c.is_ascii_digit());
                if is_version {
                    packages.insert(pkg.join("/"));
                    break;
                }
            }
        }
    }
    assert!(
        packages.contains("envoy/config/cluster/v3"),
        "the scan found no Envoy package: {packages:?}"
    );
    let missing: Vec<&String> = packages
        .iter()
        .filter(|p| !p.starts_with("google/protobuf"))
        .filter(|p| {
            std::fs::read_dir(root.join("proto/vendor").join(p))
                .map(|d| {
                    !d.flatten()
                        .any(|e| e.path().extension().is_some_and(|x| x == "proto"))
                })
                .unwrap_or(true)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "Envoy packages used in src/ but not vendored in proto/vendor/ \
         (copy them from the envoy-types crate's proto/, see proto/vendor/README.md): {missing:?}"
    );
}

fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}
