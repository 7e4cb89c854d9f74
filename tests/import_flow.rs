//! The one-way flow of `docs/ARCHITECTURE.md`, enforced on the source.
//!
//! Every `crate::…` and `super::…` path in `src/` is resolved to the top-level
//! module it names and checked against `LAYERS`: a module may use itself and the
//! modules its row lists, nothing else. The table is itself checked to be acyclic,
//! so no row can be widened into a loop. Test code (`#[cfg(test)]` items and the
//! files of `#[cfg(test)] mod NAME;`) is exempt: a harness may drive a lower layer
//! through a higher one (a golden test validates config with the registry's store,
//! as the product does). Comments, doc comments and string literals are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of `src/` and the modules it may import, listed bottom-up.
/// The flow is sources -> registry -> push -> translate -> cache -> xds server, with
/// `model` (plain data, and the `PushRequest` interface between registry and push)
/// below all of them. The registry and push never import each other: the registry
/// publishes on `model::push_request::PushQueue`, push reads through
/// `model::push_request::ContextSource`.
const LAYERS: &[(&str, &[&str])] = &[
    // The process's TLS provider, Prometheus metrics, the istio-init rules.
    ("tls", &[]),
    ("metrics", &[]),
    ("iptables", &[]),
    // The one quiet-period loop (push queue, manifest watcher).
    ("debounce", &[]),
    // The mesh file.
    ("config", &[]),
    // Kubernetes API clients (kubeconfig, in-cluster), the re-listing watch,
    // backoff and error explanations: shared by sources and security.
    ("kube_client", &[]),
    // Plain data.
    ("model", &["config"]),
    // Pure translation model -> Envoy protos.
    ("translate", &["model", "config"]),
    // Mesh identity: the CA, token review, JWKS.
    ("security", &["model", "config", "tls", "kube_client"]),
    // The merged view; publishes PushRequests through the model.
    ("registry", &["model", "config", "metrics"]),
    // Transport, the cache of encoded resources, the seam to push.
    ("xds", &["model", "config", "metrics", "tls", "security"]),
    // Debounce, freeze a PushContext, translate, encode, hand out snapshots.
    (
        "push",
        &["model", "config", "metrics", "debounce", "translate", "xds"],
    ),
    // Envoy and gRPC bootstraps (named by the proxyless certificate files and
    // translation's certificate provider), and the proxyless certificate command.
    (
        "workload_certs",
        &["xds", "security", "model", "config", "tls"],
    ),
    (
        "bootstrap",
        &["workload_certs", "translate", "model", "config"],
    ),
    // Telemetry in from the proxies (metrics sink on the xDS ports, service graph).
    (
        "telemetry",
        &["bootstrap", "xds", "security", "model", "config", "metrics"],
    ),
    // Objects in: manifest directories, API servers, agents.
    (
        "sources",
        &[
            "registry",
            "model",
            "config",
            "metrics",
            "debounce",
            "security",
            "tls",
            "kube_client",
        ],
    ),
    // Debug HTTP reads the registry, the cache, the connections and telemetry.
    (
        "debug",
        &[
            "registry",
            "xds",
            "telemetry",
            "model",
            "config",
            "metrics",
            "security",
        ],
    ),
    // Wiring of the commands, top of the graph.
    (
        "agent",
        &[
            "sources",
            "registry",
            "model",
            "config",
            "metrics",
            "security",
            "tls",
            "bootstrap",
            "iptables",
        ],
    ),
    (
        "validate",
        &["sources", "registry", "translate", "model", "config"],
    ),
    (
        "serve",
        &[
            "sources",
            "registry",
            "push",
            "translate",
            "xds",
            "debug",
            "telemetry",
            "security",
            "model",
            "config",
            "metrics",
            "tls",
        ],
    ),
    (
        "demo",
        &[
            "serve",
            "bootstrap",
            "sources",
            "registry",
            "model",
            "config",
            "tls",
        ],
    ),
    (
        "cli",
        &[
            "agent",
            "bootstrap",
            "config",
            "debug",
            "demo",
            "iptables",
            "model",
            "security",
            "serve",
            "sources",
            "tls",
            "validate",
            "workload_certs",
        ],
    ),
];

/// Imports against the flow that are known and not fixed yet, as (file, imported
/// module, what would fix it). Each must still occur (the test fails once one is
/// gone, so the list only shrinks); nothing else may be added here.
const NOT_YET: &[(&str, &str, &str)] = &[];

/// One import of a top-level module, where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Use {
    line: usize,
    target: String,
    path: String,
}

/// The characters of Rust code that are not comments, string or char literals
/// (replaced by spaces, newlines kept so line numbers hold).
fn code_only(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || (next == Some('#') && raw_string_start(&b, i + 1)))
            && !ident_char(i.checked_sub(1).map(|p| b[p]))
        {
            // r"…" or r#"…"#
            let mut hashes = 0;
            let mut j = i + 1;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            j += 1; // the opening quote
            out.extend(std::iter::repeat_n(' ', j - i));
            i = j;
            while i < b.len() {
                if b[i] == '"' && (0..hashes).all(|k| b.get(i + 1 + k) == Some(&'#')) {
                    out.extend(std::iter::repeat_n(' ', 1 + hashes));
                    i += 1 + hashes;
                    break;
                }
                out.push(blank(b[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() {
                if b[i] == '\\' {
                    out.push(' ');
                    if let Some(&e) = b.get(i + 1) {
                        out.push(blank(e));
                    }
                    i += 2;
                    continue;
                }
                if b[i] == '"' {
                    out.push(' ');
                    i += 1;
                    break;
                }
                out.push(blank(b[i]));
                i += 1;
            }
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}'); otherwise a lifetime.
            let end = if next == Some('\\') {
                (i + 2..b.len().min(i + 12)).find(|&j| b[j] == '\'')
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(e) => {
                    out.extend(std::iter::repeat_n(' ', e + 1 - i));
                    i = e + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn raw_string_start(b: &[char], mut j: usize) -> bool {
    while b.get(j) == Some(&'#') {
        j += 1;
    }
    b.get(j) == Some(&'"')
}

fn ident_char(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || c == '_')
}

/// `code` with every `#[cfg(test)]` item blanked: up to its `;` if one comes before
/// a `{`, else through the matching `}`.
fn without_test_items(code: &str) -> String {
    const ATTR: &str = "#[cfg(test)]";
    let mut out: Vec<char> = code.chars().collect();
    let text: String = out.iter().collect();
    let mut from = 0;
    while let Some(pos) = text[from..].find(ATTR) {
        let start = from + pos;
        // Work in char indices (the code may hold non-ASCII identifiers).
        let cstart = text[..start].chars().count();
        let mut i = cstart;
        let mut depth = 0usize;
        while i < out.len() {
            match out[i] {
                ';' if depth == 0 => break,
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        let end = i.min(out.len().saturating_sub(1));
        for c in &mut out[cstart..=end] {
            if *c != '\n' {
                *c = ' ';
            }
        }
        from = start + ATTR.len();
    }
    out.into_iter().collect()
}

/// Names declared `#[cfg(test)] mod NAME;` in `code` (test-only files).
fn test_module_files(code: &str) -> Vec<String> {
    let words: Vec<&str> = code.split_whitespace().collect();
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if *w == "#[cfg(test)]" {
            let rest = &words[i + 1..];
            let rest = if rest.first().is_some_and(|w| w.starts_with("pub")) {
                &rest[1..]
            } else {
                rest
            };
            if rest.first() == Some(&"mod") {
                if let Some(name) = rest.get(1).and_then(|n| n.strip_suffix(';')) {
                    out.push(name.to_string());
                }
            }
        }
    }
    out
}

/// The module path of a file under `src/` (`src/a/b.rs` and `src/a/b/mod.rs` are
/// `["a", "b"]`).
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" && stem != "lib" {
            parts.push(stem.to_string());
        }
    }
    parts
}

/// The top-level modules named by `crate::…` and `super::…` paths in `code` (already
/// free of comments, strings and test items), for a file at module path `module`.
fn imports(code: &str, module: &[String]) -> Vec<Use> {
    let mut out = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let rest: String = chars[i..].iter().collect();
            let at_word = !ident_char(i.checked_sub(1).map(|p| chars[p]));
            let (kind, len) = if at_word && rest.starts_with("crate::") {
                ("crate", "crate::".len())
            } else if at_word && rest.starts_with("super::") {
                ("super", "super::".len())
            } else {
                i += 1;
                continue;
            };
            let mut base: Vec<String> = if kind == "crate" {
                Vec::new()
            } else {
                module[..module.len().saturating_sub(1)].to_vec()
            };
            let mut j = i + len;
            if kind == "super" {
                let mut tail: String = chars[j..].iter().collect();
                while tail.starts_with("super::") {
                    base.pop();
                    j += "super::".len();
                    tail = chars[j..].iter().collect();
                }
            }
            let path_text: String = chars[i..]
                .iter()
                .take_while(|c| ident_char(Some(**c)) || matches!(c, ':' | '{' | ',' | ' ' | '}'))
                .collect();
            if !base.is_empty() {
                // Still inside a top-level module: it names itself.
                out.push(Use {
                    line: n + 1,
                    target: base[0].clone(),
                    path: path_text.trim().to_string(),
                });
            } else {
                // `crate::x::…`, `crate::{x, y::z}`, or `super::x` from a top-level file.
                let tail: String = chars[j..].iter().collect();
                for first in first_segments(&tail) {
                    out.push(Use {
                        line: n + 1,
                        target: first,
                        path: path_text.trim().to_string(),
                    });
                }
            }
            i = j;
        }
    }
    out
}

/// The first path segment after `crate::`: one identifier, or the first segment of
/// each entry of a `{…}` group.
fn first_segments(tail: &str) -> Vec<String> {
    let lead = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(group) = tail.strip_prefix('{') else {
        let ident = lead(tail);
        return if ident.is_empty() {
            Vec::new()
        } else {
            vec![ident]
        };
    };
    let mut entries = vec![String::new()];
    let mut depth = 0;
    for c in group.chars() {
        match c {
            '}' if depth == 0 => break,
            ',' if depth == 0 => entries.push(String::new()),
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if depth == 0 && c != ',' && c != '}' {
            if let Some(e) = entries.last_mut() {
                e.push(c);
            }
        }
    }
    entries
        .iter()
        .map(|e| lead(e))
        .filter(|s| !s.is_empty() && s != "self")
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// An import against `LAYERS`.
#[derive(Debug)]
struct Violation {
    file: String,
    target: String,
    text: String,
}

/// Every import against `LAYERS` in `src_dir`.
fn violations(src_dir: &Path) -> Vec<Violation> {
    let table: BTreeMap<&str, BTreeSet<&str>> = LAYERS
        .iter()
        .map(|(m, deps)| (*m, deps.iter().copied().collect()))
        .collect();
    let mut files = Vec::new();
    rust_files(src_dir, &mut files);
    // Files that are test-only, from `#[cfg(test)] mod NAME;` in their parent.
    let mut test_only: BTreeSet<PathBuf> = BTreeSet::new();
    for f in &files {
        let code = code_only(&std::fs::read_to_string(f).unwrap_or_default());
        let dir = if f
            .file_name()
            .is_some_and(|n| n == "mod.rs" || n == "lib.rs")
        {
            f.parent().map(Path::to_path_buf)
        } else {
            f.parent()
                .map(|p| p.join(f.file_stem().unwrap_or_default()))
        };
        let Some(dir) = dir else { continue };
        for name in test_module_files(&code) {
            test_only.insert(dir.join(format!("{name}.rs")));
            test_only.insert(dir.join(&name).join("mod.rs"));
        }
    }
    let mut out = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(src_dir).unwrap_or(f);
        if rel == Path::new("main.rs") || rel == Path::new("lib.rs") || test_only.contains(f) {
            // main.rs is the binary (it uses the library as `crossmesh::`); lib.rs
            // only declares the modules.
            continue;
        }
        let module = module_path(rel);
        let Some(top) = module.first() else { continue };
        let Some(allowed) = table.get(top.as_str()) else {
            out.push(Violation {
                file: format!("src/{}", rel.display()),
                target: String::new(),
                text: format!(
                    "src/{}: module `{top}` has no row in LAYERS (place it in the flow)",
                    rel.display()
                ),
            });
            continue;
        };
        let text =
            std::fs::read_to_string(f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
        let code = without_test_items(&code_only(&text));
        for u in imports(&code, &module) {
            if u.target == *top || allowed.contains(u.target.as_str()) {
                continue;
            }
            out.push(Violation {
                file: format!("src/{}", rel.display()),
                target: u.target.clone(),
                text: format!(
                    "src/{}:{}: `{}` — `{top}` may not import `{}` (it may import {:?})",
                    rel.display(),
                    u.line,
                    u.path,
                    u.target,
                    allowed
                ),
            });
        }
    }
    out
}

#[test]
fn imports_follow_the_flow() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let all = violations(&src);
    let known = |v: &Violation| {
        NOT_YET
            .iter()
            .any(|(f, t, _)| *f == v.file && *t == v.target)
    };
    for (file, target, why) in NOT_YET {
        assert!(
            all.iter().any(|v| v.file == *file && v.target == *target),
            "{file} no longer imports `{target}`: remove it from NOT_YET ({why})"
        );
    }
    let bad: Vec<&str> = all
        .iter()
        .filter(|v| !known(v))
        .map(|v| v.text.as_str())
        .collect();
    assert!(
        bad.is_empty(),
        "{} import(s) against the flow (docs/ARCHITECTURE.md; table in tests/import_flow.rs):\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn every_module_has_a_row_and_the_table_is_acyclic() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("read src/lib.rs");
    let declared: BTreeSet<String> = code_only(&lib)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').trim().to_string())
        .collect();
    assert!(declared.contains("registry"), "src/lib.rs read wrongly");
    let rows: BTreeSet<String> = LAYERS.iter().map(|(m, _)| m.to_string()).collect();
    assert_eq!(declared, rows, "src/lib.rs modules vs LAYERS rows");
    // Each row may only name rows above it in the table (listed bottom-up), so
    // the graph has no cycle.
    for (i, (m, deps)) in LAYERS.iter().enumerate() {
        for d in *deps {
            let below = LAYERS[..i].iter().any(|(n, _)| n == d);
            assert!(
                below,
                "`{m}` may import `{d}`, which is not listed below it"
            );
        }
    }
}

#[test]
fn scanner_reads_paths_not_comments_or_strings() {
    let module = module_path(Path::new("registry/mod.rs"));
    assert_eq!(module, vec!["registry".to_string()]);
    let src = r##"
//! Uses crate::push in a comment.
/// crate::xds in a doc
use crate::model::push_request::{PushQueue, PushRequest};
use crate::{config::MeshConfig, push::{self, Pusher}};
fn f<'a>(x: &'a str) -> char { let _ = "crate::serve"; let _ = r#"crate::cli"#; 'c' }
fn g() { crate::translate::proto::pack(); /* crate::agent */ }
#[cfg(test)]
mod tests {
    use crate::sources::kube;
}
#[cfg(test)]
use crate::debug::json;
fn h() { crate::metrics::inc(); }
"##;
    let code = without_test_items(&code_only(src));
    let got: Vec<(usize, String)> = imports(&code, &module)
        .into_iter()
        .map(|u| (u.line, u.target))
        .collect();
    assert_eq!(
        got,
        vec![
            (4, "model".to_string()),
            (5, "config".to_string()),
            (5, "push".to_string()),
            (7, "translate".to_string()),
            (14, "metrics".to_string()),
        ]
    );
    // `super::` climbs from the file's module path.
    let deep = module_path(Path::new("translate/golden.rs"));
    let got: Vec<String> = imports(
        "use super::proto::pack;\nuse super::super::registry::Registry;\n",
        &deep,
    )
    .into_iter()
    .map(|u| u.target)
    .collect();
    assert_eq!(got, vec!["translate".to_string(), "registry".to_string()]);
    assert_eq!(
        test_module_files("#[cfg(test)]\nmod tests;\n#[cfg(test)] mod other {"),
        vec!["tests".to_string()]
    );
}
