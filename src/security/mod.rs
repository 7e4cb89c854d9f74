//! Mesh identity: the CA that issues workload certificates (`ca`) and the
//! authentication of proxies by their service-account tokens (`authn`).

pub mod agent_tokens;
pub mod authn;
pub mod ca;
pub mod ca_store;
pub mod jwks;
pub mod root_publisher;

pub use ca::{renew_at, Ca, CaError, Identity, IssuedCert};
