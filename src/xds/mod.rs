//! The transport: ADS over gRPC, state-of-the-world and Delta, plus the encoded
//! resource types every proxy shares. No translation happens here.

pub mod codec;
pub mod connection;
pub mod resource;
pub mod secure;
pub mod server;
pub mod source;
pub mod status;

pub use resource::{changed_names, ProxySnapshot, Resource, ResourceMap, TypeUrl};
pub use source::{ConnId, FixedSource, SnapshotChanges, SnapshotSource, Update};
pub use status::Connections;
