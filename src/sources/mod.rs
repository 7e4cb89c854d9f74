//! Sources move Kubernetes and Istio objects from the outside world into the
//! registry: manifest directories (watched) and live API servers (kube-rs watchers).

pub mod agent;
pub mod agent_proto;
pub mod gateway_status;
pub mod in_cluster;
pub mod kube;
pub mod manifests;
pub mod remote_secret;
pub mod secrets;
