//! Build script: copy the Envoy protobuf descriptor set that the envoy-types crate
//! ships in its source (`src/generated/types.bin`) but does not export, into
//! `OUT_DIR/envoy_types.bin`. `src/debug/json.rs` embeds it to print resources in
//! Envoy's proto-JSON mapping (with `@type`) for `/debug/config_dump`.
//!
//! The crate directory is found from `cargo metadata` (the resolved envoy-types
//! package's `manifest_path`), falling back to `$CARGO_HOME/registry/src/*/` with the
//! version locked in `Cargo.lock`. No build-dependencies: the little JSON and TOML
//! reading needed here is done by hand.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const CRATE: &str = "envoy-types";
const DESCRIPTOR: &str = "src/generated/types.bin";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.lock");

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));

    let mut tried = Vec::new();
    let found = from_cargo_metadata(&manifest_dir, &mut tried)
        .or_else(|| from_registry(&manifest_dir, &mut tried));
    let Some(dir) = found else {
        panic!(
            "cannot find the {CRATE} crate source holding {DESCRIPTOR}; tried: {}",
            tried.join("; ")
        );
    };
    let src = dir.join(DESCRIPTOR);
    let dst = out_dir.join("envoy_types.bin");
    if let Err(e) = fs::copy(&src, &dst) {
        panic!("copy {} to {}: {e}", src.display(), dst.display());
    }
}

/// Whether `dir` is the envoy-types crate source with the descriptor set.
fn is_envoy_types(dir: &Path) -> bool {
    let Ok(toml) = fs::read_to_string(dir.join("Cargo.toml")) else {
        return false;
    };
    toml.lines()
        .any(|l| l.replace(' ', "") == format!("name=\"{CRATE}\""))
        && dir.join(DESCRIPTOR).is_file()
}

/// `cargo metadata --format-version 1 --offline`: every `manifest_path` in the
/// output; the one whose directory is envoy-types wins.
fn from_cargo_metadata(manifest_dir: &Path, tried: &mut Vec<String>) -> Option<PathBuf> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--manifest-path",
        ])
        .arg(manifest_dir.join("Cargo.toml"))
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            tried.push(format!(
                "`{cargo} metadata` failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
            return None;
        }
        Err(e) => {
            tried.push(format!("`{cargo} metadata` did not run: {e}"));
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let key = "\"manifest_path\":\"";
    let mut rest = text.as_ref();
    while let Some(i) = rest.find(key) {
        rest = &rest[i + key.len()..];
        let (path, after) = json_string(rest);
        rest = after;
        let dir = Path::new(&path).parent().map(Path::to_path_buf);
        if let Some(dir) = dir {
            let is_candidate = dir
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(CRATE));
            if is_candidate && is_envoy_types(&dir) {
                return Some(dir);
            }
        }
    }
    tried.push("`cargo metadata` lists no envoy-types package with a descriptor set".into());
    None
}

/// Read a JSON string body (after the opening quote); returns it unescaped and the
/// text after the closing quote.
fn json_string(s: &str) -> (String, &str) {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return (out, &s[i + 1..]),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, 'u')) => {
                    let hex: String = (0..4).filter_map(|_| chars.next().map(|x| x.1)).collect();
                    if let Some(ch) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                        out.push(ch);
                    }
                }
                Some((_, other)) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
    }
    (out, "")
}

/// The locked envoy-types version from `Cargo.lock`, then
/// `$CARGO_HOME/registry/src/*/envoy-types-<version>/`.
fn from_registry(manifest_dir: &Path, tried: &mut Vec<String>) -> Option<PathBuf> {
    let lock = manifest_dir.join("Cargo.lock");
    let version = fs::read_to_string(&lock).ok().and_then(|text| {
        let mut lines = text.lines();
        while let Some(l) = lines.next() {
            if l.trim() == format!("name = \"{CRATE}\"") {
                let v = lines.next()?.trim();
                return v
                    .strip_prefix("version = \"")
                    .and_then(|v| v.strip_suffix('"'))
                    .map(str::to_string);
            }
        }
        None
    });
    let Some(version) = version else {
        tried.push(format!("{} does not lock {CRATE}", lock.display()));
        return None;
    };
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(cargo_home) = cargo_home else {
        tried.push("neither CARGO_HOME nor HOME is set".into());
        return None;
    };
    let registry = cargo_home.join("registry").join("src");
    let Ok(entries) = fs::read_dir(&registry) else {
        tried.push(format!("cannot read {}", registry.display()));
        return None;
    };
    for entry in entries.flatten() {
        let dir = entry.path().join(format!("{CRATE}-{version}"));
        if is_envoy_types(&dir) {
            return Some(dir);
        }
    }
    tried.push(format!(
        "no {CRATE}-{version} with {DESCRIPTOR} under {}",
        registry.display()
    ));
    None
}
