//! A workload's mesh identity, its SPIFFE ID. Plain data: the model's `Proxy`
//! carries one once the TLS port has authenticated the stream, and
//! `security::ca` issues certificates for it.

use std::fmt;

/// A workload identity: `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl Identity {
    /// The SPIFFE ID carried as the certificate's URI SAN.
    pub fn spiffe_uri(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    /// Each part must be a non-empty run of `a-z 0-9 - . _` (Kubernetes names and
    /// SPIFFE trust domains), so the URI cannot be ambiguous.
    pub(crate) fn check(&self) -> Result<(), String> {
        for (what, v) in [
            ("trust domain", &self.trust_domain),
            ("namespace", &self.namespace),
            ("service account", &self.service_account),
        ] {
            let ok = !v.is_empty()
                && v.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_')
                });
            if !ok {
                return Err(format!("{what} {v:?} is not a valid SPIFFE ID segment"));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spiffe_uri())
    }
}
