//! Istio's validation (`pkg/config/validation`) for the fields crossmesh reads,
//! plus rejection of fields crossmesh does not implement. An error rejects the
//! object; a warning keeps it in force and is shown on `/debug/configz`.
//!
//! This file holds the finding type, the dispatch per kind and the field checks
//! several kinds share (hosts, `exportTo`, string matches and RE2's limits, RFC 3339
//! timestamps). Each networking kind has its own file; the security kinds,
//! ServiceEntry and WorkloadEntry check themselves in their model files
//! (`problems()`), called from [`validate`].

mod destination_rule;
mod gateway;
mod peer_authentication;
mod sidecar;
#[cfg(test)]
mod tests;
mod virtual_service;

use super::common::{Percent, StringMatch, StringMatchKind};
use super::duration::IstioDuration;
use super::IstioObject;

use destination_rule::destination_rule;
pub use gateway::all_wildcard_host;
use gateway::gateway;
use peer_authentication::peer_authentication;
use sidecar::sidecar;
use virtual_service::virtual_service;

/// One validation finding on one field of an Istio object: an error (the object
/// is rejected, as a [`super::Rejection`] naming this field) or a warning (the
/// object stays in force; shown on `/debug/configz`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `spec.http[0].route[1].weight`.
    pub field: String,
    pub reason: String,
    /// A warning keeps the object in force.
    pub warning: bool,
}

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn err(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Finding {
            field: field.into(),
            reason: reason.into(),
            warning: false,
        });
    }
    fn warn(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Finding {
            field: field.into(),
            reason: reason.into(),
            warning: true,
        });
    }
    fn unsupported<T>(&mut self, field: impl Into<String>, v: &Option<T>, why: &str) {
        if v.is_some() {
            self.err(field, format!("not supported by crossmesh: {why}"));
        }
    }
    fn duration(&mut self, field: impl Into<String>, d: &Option<IstioDuration>) {
        if let Some(d) = d {
            if d.is_negative() {
                self.err(field, format!("duration {d} must not be negative"));
            }
        }
    }
    fn percent(&mut self, field: impl Into<String>, p: &Option<Percent>) {
        if let Some(p) = p {
            if !(0.0..=100.0).contains(&p.value) || p.value.is_nan() {
                self.err(
                    field,
                    format!("percentage {} must be between 0 and 100", p.value),
                );
            }
        }
    }
    fn non_negative(&mut self, field: impl Into<String>, v: i64) {
        if v < 0 {
            self.err(field, format!("{v} must not be negative"));
        }
    }
}

/// Errors and warnings for one parsed object.
pub fn validate(obj: &IstioObject) -> Vec<Finding> {
    let mut out = Findings::default();
    match obj {
        IstioObject::Gateway(c) => gateway(&c.spec, &mut out),
        IstioObject::VirtualService(c) => virtual_service(&c.spec, &mut out),
        IstioObject::DestinationRule(c) => destination_rule(&c.spec, &mut out),
        IstioObject::Sidecar(c) => sidecar(&c.spec, &mut out),
        IstioObject::PeerAuthentication(c) => peer_authentication(&c.spec, &mut out),
        IstioObject::RequestAuthentication(c) => {
            for (field, reason) in c.spec.problems(&c.meta.namespace) {
                out.err(field, reason);
            }
        }
        IstioObject::AuthorizationPolicy(c) => {
            for (field, reason) in c.spec.problems(&c.meta.namespace) {
                out.err(field, reason);
            }
        }
        IstioObject::ServiceEntry(c) => {
            for (field, reason, warning) in c.spec.problems() {
                if warning {
                    out.warn(field, reason);
                } else {
                    out.err(field, reason);
                }
            }
        }
        IstioObject::WorkloadEntry(c) => {
            for (field, reason) in c.spec.problems("spec", false) {
                out.err(field, reason);
            }
        }
        IstioObject::Telemetry(c) => {
            for (field, reason, warning) in c.spec.problems(&c.meta.namespace) {
                if warning {
                    out.warn(field, reason);
                } else {
                    out.err(field, reason);
                }
            }
        }
    }
    out.0
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, the form Kubernetes writes.
pub fn is_rfc3339_utc(ts: &str) -> bool {
    let b = ts.as_bytes();
    if b.len() < 20 || b[b.len() - 1] != b'Z' {
        return false;
    }
    let shape = b"dddd-dd-ddTdd:dd:dd";
    let fixed = b[..19].iter().zip(shape).all(|(c, s)| match s {
        b'd' => c.is_ascii_digit(),
        s => c == s,
    });
    let rest = &b[19..b.len() - 1];
    fixed
        && (rest.is_empty()
            || (rest[0] == b'.' && rest.len() > 1 && rest[1..].iter().all(u8::is_ascii_digit)))
}

/// Whether `h` is an acceptable host: `*`, `*.suffix` or DNS labels.
fn valid_host(h: &str, allow_wildcard: bool) -> Result<(), String> {
    if h.is_empty() {
        return Err("empty host".into());
    }
    if h == "*" {
        return if allow_wildcard {
            Ok(())
        } else {
            Err("wildcard host * is not allowed here".into())
        };
    }
    let (first, rest) = match h.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (h, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if first == "*" {
        if !allow_wildcard {
            return Err(format!("wildcard host {h:?} is not allowed here"));
        }
    } else if !label_ok(first) {
        return Err(format!(
            "host {h:?}: label {first:?} is not a DNS-1123 label"
        ));
    }
    if let Some(rest) = rest {
        for l in rest.split('.') {
            if !label_ok(l) {
                return Err(format!("host {h:?}: label {l:?} is not a DNS-1123 label"));
            }
        }
    }
    Ok(())
}

/// RE2's repetition limits (Envoy and gRPC use RE2; Rust's `regex` has
/// neither): a count above 1000 in `{m}`, `{m,}` or `{m,n}` is refused, and so
/// is nesting whose counts multiply past 1000 (RE2's `RepetitionWalker`:
/// 1000 divided by each count on the way down, refused when it reaches 0).
/// Called on a pattern `regex` already accepted, so its nesting is bounded.
pub(crate) fn re2_repeat_limits(pattern: &str) -> Result<(), String> {
    use regex_syntax::ast::{Ast, RepetitionKind, RepetitionRange};
    const MAX_REPEAT: u32 = 1000;
    fn walk(ast: &Ast, budget: u32) -> Result<(), String> {
        match ast {
            Ast::Repetition(rep) => {
                let (min, max) = match &rep.op.kind {
                    RepetitionKind::Range(RepetitionRange::Exactly(n)) => (*n, Some(*n)),
                    RepetitionKind::Range(RepetitionRange::AtLeast(n)) => (*n, None),
                    RepetitionKind::Range(RepetitionRange::Bounded(m, n)) => (*m, Some(*n)),
                    _ => return walk(&rep.ast, budget),
                };
                if min > MAX_REPEAT || max.is_some_and(|n| n > MAX_REPEAT) {
                    return Err(format!(
                        "repetition count above {MAX_REPEAT} (RE2, used by Envoy and gRPC, refuses it)"
                    ));
                }
                let m = max.unwrap_or(min);
                let budget = if m > 0 { budget / m } else { budget };
                if budget == 0 {
                    return Err(format!(
                        "nested repetition counts multiply past {MAX_REPEAT} (RE2, used by Envoy and gRPC, refuses it)"
                    ));
                }
                walk(&rep.ast, budget)
            }
            Ast::Group(g) => walk(&g.ast, budget),
            Ast::Alternation(a) => a.asts.iter().try_for_each(|x| walk(x, budget)),
            Ast::Concat(c) => c.asts.iter().try_for_each(|x| walk(x, budget)),
            _ => Ok(()),
        }
    }
    let ast = regex_syntax::ast::parse::Parser::new()
        .parse(pattern)
        .map_err(|e| e.to_string())?;
    walk(&ast, MAX_REPEAT)
}

fn string_match(field: &str, m: &StringMatch, presence_ok: bool, out: &mut Findings) {
    if m.set_count() > 1 {
        out.err(field, "set only one of exact, prefix, regex");
    }
    match m.kind() {
        StringMatchKind::Present if !presence_ok => {
            out.err(field, "set one of exact, prefix, regex")
        }
        StringMatchKind::Regex(r) => {
            if let Err(e) = regex::Regex::new(r) {
                out.err(
                    field,
                    format!(
                        "invalid regex {r:?}: {}",
                        e.to_string().lines().last().unwrap_or("")
                    ),
                );
            } else if let Err(e) = re2_repeat_limits(r) {
                out.err(field, format!("invalid regex {r:?}: {e}"));
            }
        }
        _ => {}
    }
}

/// Istio's `exportTo` entries: `*` (everywhere), `.` (own namespace) or namespace
/// names; `*` cannot be combined with anything else.
fn export_to(field: &str, list: &[String], out: &mut Findings) {
    for (i, e) in list.iter().enumerate() {
        let ok = e == "*" || e == "." || (valid_host(e, false).is_ok() && !e.contains('.'));
        if !ok {
            out.err(
                format!("{field}[{i}]"),
                format!("{e:?} is not *, . or a namespace name"),
            );
        }
    }
    if list.len() > 1 && list.iter().any(|e| e == "*") {
        out.err(
            field,
            "* (everywhere) cannot be combined with other entries",
        );
    }
}
