//! Mesh identity: the CA that issues workload certificates (`ca`).

pub mod ca;

pub use ca::{renew_at, Ca, CaError, Identity, IssuedCert};
