//! Plain data shared by every step of the flow: services and endpoints as the
//! registry merges them, proxies as they identify themselves, Istio config objects,
//! and the interface the registry publishes changes through (`push_request.rs`).
//! No IO lives here; the one lock is the `PushQueue` mailbox's.

pub mod context;
pub mod credential;
pub mod gateway_api;
pub mod identity;
pub mod istio;
pub mod proxy;
pub mod push_request;
pub mod service;

pub use context::{MeshSettings, PushContext};
pub use proxy::{InterceptionMode, Proxy, ProxyRole};
pub use service::{ClusterId, Endpoint, Locality, Protocol, Service, ServicePort};
