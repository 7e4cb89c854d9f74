//! PeerAuthentication validation.

use super::Findings;
use crate::model::istio::peer_authentication::PeerAuthentication;

/// Istio's `ValidatePeerAuthentication`: port-level modes only under a
/// workload selector, port keys in 1..=65535, selector labels well formed. An
/// unknown mode is already refused by the schema (`spec.mtls.mode`).
pub(super) fn peer_authentication(pa: &PeerAuthentication, out: &mut Findings) {
    if let Some(sel) = &pa.selector {
        for (k, v) in &sel.match_labels {
            if k.is_empty() {
                out.err("spec.selector.matchLabels", "a label key must not be empty");
            }
            if v.contains('*') {
                out.err(
                    format!("spec.selector.matchLabels.{k}"),
                    "wildcards are not allowed in a workload selector",
                );
            }
        }
    }
    if !pa.port_level_mtls.is_empty() && pa.selector_labels().is_none() {
        out.err(
            "spec.portLevelMtls",
            "mesh/namespace peer authentication cannot have port level mTLS (portLevelMtls needs a selector with matchLabels)",
        );
    }
    for port in pa.port_level_mtls.keys() {
        match port.parse::<u32>() {
            Ok(p) if (1..=65535).contains(&p) => {}
            _ => out.err(
                format!("spec.portLevelMtls.{port}"),
                format!("{port:?} is not a port number in 1..65535 (keys are the workload's target ports)"),
            ),
        }
    }
}
