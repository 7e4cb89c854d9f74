//! The `Sidecar` in force for a proxy and its egress scopes: which services and
//! VirtualServices the proxy sees on which ports.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::istio::sidecar::IstioEgressListener;
use crate::model::istio::{
    host_matches, labels_match, Config, Sidecar, VirtualService, MESH_GATEWAY, ROOT_NAMESPACE,
};
use crate::model::{Protocol, Proxy, PushContext, Service};

/// The `Sidecar` in force for `proxy` (Istio's `SidecarScope` selection): in the
/// proxy's namespace, the oldest one whose `workloadSelector` matches the proxy's
/// labels; else the namespace's one without selector; else the root namespace's
/// one without selector; else none (everything visible).
pub fn select<'a>(proxy: &Proxy, ctx: &'a PushContext) -> Option<&'a Arc<Config<Sidecar>>> {
    let sidecars = &ctx.config.sidecars;
    let no_selector = |ns: &str| {
        sidecars
            .iter()
            .find(|s| s.meta.namespace == ns && s.spec.workload_selector.is_none())
    };
    sidecars
        .iter()
        .find(|s| {
            s.meta.namespace == proxy.namespace
                && s.spec
                    .workload_selector
                    .as_ref()
                    .is_some_and(|w| labels_match(&w.labels, &proxy.labels))
        })
        .or_else(|| no_selector(&proxy.namespace))
        .or_else(|| no_selector(ROOT_NAMESPACE))
}

/// One egress scope: the port (all ports of the visible services when `None`),
/// the bind address, and the `ns/host` filters.
pub(super) struct Egress {
    pub(super) port: Option<u32>,
    pub(super) protocol: Option<Protocol>,
    pub(super) bind: Option<String>,
    /// (namespace filter, host filter) pairs; namespace `.` is already replaced by
    /// the Sidecar's namespace; `~` matches no namespace.
    pub(super) hosts: Vec<(String, String)>,
}

impl Egress {
    /// Istio's default egress: every namespace, every host.
    fn everything() -> Egress {
        Egress {
            port: None,
            protocol: None,
            bind: None,
            hosts: vec![("*".into(), "*".into())],
        }
    }

    fn from_spec(e: &IstioEgressListener, sidecar_ns: &str) -> Egress {
        Egress {
            port: e.port.as_ref().map(|p| p.number),
            protocol: e
                .port
                .as_ref()
                .filter(|p| !p.protocol.is_empty())
                .map(|p| Protocol::from_port(&p.protocol, None)),
            bind: e.bind.clone().filter(|b| !b.is_empty()),
            hosts: e
                .hosts
                .iter()
                .map(|h| {
                    let (ns, host) = h.split_once('/').unwrap_or(("*", h.as_str()));
                    let ns = if ns == "." { sidecar_ns } else { ns };
                    (ns.to_string(), host.to_ascii_lowercase())
                })
                .collect(),
        }
    }

    /// Whether config or a service in `ns` named `host` is in scope.
    pub(super) fn sees(&self, ns: &str, host: &str) -> bool {
        self.hosts.iter().any(|(fns, fhost)| {
            (fns == "*" || fns == ns) && fns != "~" && host_matches(fhost, host)
        })
    }

    pub(super) fn sees_any(&self, ns: &str, hosts: &[String], ctx: &PushContext) -> bool {
        hosts
            .iter()
            .any(|h| self.sees(ns, &ctx.config.resolve_host(h, ns)))
    }
}

/// What the proxy sees: its egress scopes and their services and VirtualServices.
pub(super) struct Scope<'a> {
    pub(super) egress: Egress,
    pub(super) services: Vec<&'a Arc<Service>>,
    pub(super) virtual_services: Vec<&'a Arc<Config<VirtualService>>>,
}

pub(super) fn scopes<'a>(
    proxy: &Proxy,
    sidecar: Option<&Config<Sidecar>>,
    ctx: &'a PushContext,
) -> Vec<Scope<'a>> {
    let egress: Vec<Egress> = match sidecar {
        Some(sc) if !sc.spec.egress.is_empty() => sc
            .spec
            .egress
            .iter()
            .map(|e| Egress::from_spec(e, &sc.meta.namespace))
            .collect(),
        _ => vec![Egress::everything()],
    };
    egress
        .into_iter()
        .map(|egress| {
            let services = ctx
                .services
                .values()
                .filter(|s| {
                    egress.sees(&s.namespace, &s.hostname)
                        && ctx.config.service_visible(s, &proxy.namespace)
                })
                .collect();
            let mut virtual_services = ctx
                .config
                .virtual_services_for_gateway(MESH_GATEWAY, &proxy.namespace)
                .filter(|vs| egress.sees_any(&vs.meta.namespace, &vs.spec.hosts, ctx))
                .collect();
            // GEP-1426: a consumer route replaces the producer's for its namespace.
            crate::model::gateway_api::convert::consumer_routes_win(
                &mut virtual_services,
                &proxy.namespace,
            );
            Scope {
                egress,
                services,
                virtual_services,
            }
        })
        .collect()
}

/// Istio's outbound traffic policy: the Sidecar's `outboundTrafficPolicy.mode`
/// when it sets one, else the mesh file's (`ALLOW_ANY` by default).
pub(super) fn registry_only(sidecar: Option<&Config<Sidecar>>, ctx: &PushContext) -> bool {
    match sidecar
        .and_then(|s| s.spec.outbound_traffic_policy.as_ref())
        .and_then(|p| p.mode.as_deref())
    {
        Some(mode) => mode == "REGISTRY_ONLY",
        None => {
            ctx.mesh.outbound_traffic_policy == crate::config::OutboundTrafficPolicy::RegistryOnly
        }
    }
}

/// The ports of one egress scope with their protocol: the egress port alone, or
/// every port of every visible service (the first service by hostname decides a
/// port's protocol, as Istio's port merging does).
pub(super) fn egress_ports(scope: &Scope<'_>) -> Vec<(u32, Protocol)> {
    let mut ports: BTreeMap<u32, Protocol> = BTreeMap::new();
    for s in &scope.services {
        for p in &s.ports {
            if scope.egress.port.is_none_or(|want| want == p.port as u32) {
                ports.entry(p.port as u32).or_insert(p.protocol);
            }
        }
    }
    if let Some(p) = scope.egress.port {
        let proto = scope
            .egress
            .protocol
            .or_else(|| ports.get(&p).copied())
            .unwrap_or(Protocol::Http);
        return vec![(p, proto)];
    }
    ports.into_iter().collect()
}
