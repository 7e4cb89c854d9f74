//! The generated code of `proto/crossmesh/agent/v1/agent.proto` (package
//! `crossmesh.agent.v1`): messages, the tonic client used by `crossmesh agent` and
//! the server trait the hub implements (`sources::agent`). The message flow is
//! documented in the `.proto`.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("crossmesh.agent.v1");

/// The message-flow revision this build speaks (`Hello.protocol_version`).
pub const PROTOCOL_VERSION: u32 = 1;
