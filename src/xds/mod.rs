//! The transport: ADS over gRPC, state-of-the-world and Delta, plus the encoded
//! resource types every proxy shares. No translation happens here.

pub mod resource;
pub mod server;

pub use resource::{ProxySnapshot, Resource, ResourceMap, TypeUrl};
