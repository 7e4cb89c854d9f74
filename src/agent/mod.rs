//! `crossmesh agent`: the member-cluster side of the agent protocol
//! (`proto/crossmesh/agent/v1/agent.proto`, DESIGN.md §5). It runs inside a member
//! cluster, watches the objects the mesh needs there with the kube source's
//! watchers and slimming (`sources::kube`), and streams them to the hub, which
//! never holds a credential for this cluster.

pub mod proto;
