//! crossmesh: an Envoy-compatible xDS control plane for meshes that span several
//! Kubernetes clusters, including clusters in other cloud accounts.
//!
//! Data flows one way (see `docs/ARCHITECTURE.md`):
//!
//! ```text
//! sources (manifest dirs | kube API servers)      src/sources/
//!    -> registry: merged endpoint index + config   src/registry/
//!    -> push: debounce, decide what changed         src/push/
//!    -> translate: model -> Envoy protos (pure)     src/translate/
//!    -> cache: encoded resources shared by proxies  src/xds/resource.rs
//!    -> xds server: ADS SotW + Delta                src/xds/
//! debug HTTP reads registry, cache, connections     src/debug/
//! ```
//!
//! `model` (plain data, and `model::push_request`, through which the registry
//! publishes changes and push reads the mesh) sits below every step; no module
//! imports one above it (`tests/import_flow.rs` holds the layer table).

pub mod agent;
pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod debounce;
pub mod debug;
pub mod demo;
pub mod iptables;
pub mod kube_client;
pub mod metrics;
pub mod model;
pub mod push;
pub mod registry;
pub mod security;
pub mod serve;
pub mod sources;
pub mod telemetry;
pub mod tls;
pub mod translate;
pub mod validate;
pub mod workload_certs;
pub mod xds;
