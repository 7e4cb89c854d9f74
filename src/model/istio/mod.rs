//! Istio's networking and security APIs as plain serde types, plus the validated
//! config snapshot translation reads.

/// The Istio config in force for one push. (Filled in by the translate work.)
#[derive(Debug, Clone, Default)]
pub struct ConfigSnapshot {}
