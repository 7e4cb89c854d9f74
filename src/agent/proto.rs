//! The agent protocol, defined with the hub's source (`sources::agent_proto`):
//! the generated code of `proto/crossmesh/agent/v1/agent.proto`.

pub use crate::sources::agent_proto::*;
