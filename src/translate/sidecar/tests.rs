//! Sidecar translation unit tests.

use super::*;
use crate::model::istio::{parse_object, Config, IstioObject, Sidecar};
use crate::model::{Endpoint, Locality, Service, ServicePort};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use prost::Message;
use std::path::Path;

fn golden() -> (PushContext, Proxy) {
    crate::translate::golden::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/sidecar_redirect.yaml"),
    )
}

fn sidecar_obj(yaml: &str) -> Arc<Config<Sidecar>> {
    let v: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
    match parse_object("test", &v) {
        Ok(IstioObject::Sidecar(c)) => Arc::new(c),
        other => panic!("{other:?}"),
    }
}

fn with_sidecars(ctx: &PushContext, extra: Vec<Arc<Config<Sidecar>>>) -> PushContext {
    let mut cfg = (*ctx.config).clone();
    cfg.sidecars.extend(extra);
    cfg.sidecars.sort_by(|a, b| a.meta.istio_order(&b.meta));
    PushContext {
        config: Arc::new(cfg),
        ..ctx.clone()
    }
}

fn names<T>(v: &[T], f: impl Fn(&T) -> &str) -> Vec<String> {
    v.iter().map(|x| f(x).to_string()).collect()
}

#[test]
fn none_mode_binds_the_proxy_ip() {
    let (ctx, mut proxy) = golden();
    proxy.interception = InterceptionMode::None;
    proxy.ip = "127.0.0.5".parse().unwrap();
    let g = generate(&proxy, &ctx, false);
    let ls = names(&g.listeners, |l| &l.name);
    assert_eq!(ls, ["127.0.0.5_7000", "127.0.0.5_9000", "127.0.0.5_8080"]);
    assert!(g.listeners.iter().all(|l| l.bind_to_port.is_none()));
    assert_eq!(names(&g.routes, |r| &r.name), ["127.0.0.5:7000"]);
    // ALLOW_ANY has no original destination to pass through to in NONE mode.
    let vhosts = names(&g.routes[0].virtual_hosts, |v| &v.name);
    assert!(!vhosts.iter().any(|v| v == "allow_any"), "{vhosts:?}");
    assert!(!g.clusters.iter().any(|c| c.name == PASSTHROUGH_CLUSTER));
    assert!(g.clusters.iter().any(|c| c.name == "inbound|8080||"));
}

#[test]
fn selector_beats_namespace_wide_beats_root() {
    let (ctx, proxy) = golden();
    let specific = sidecar_obj(
            "apiVersion: networking.istio.io/v1alpha3\nkind: Sidecar\nmetadata: {name: frontend, namespace: base}\nspec:\n  workloadSelector: {labels: {app: frontend}}\n  egress:\n  - hosts: [\"./user.base.svc.cluster.local\"]\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
        );
    let ctx2 = with_sidecars(&ctx, vec![specific.clone()]);
    assert_eq!(select(&proxy, &ctx2).unwrap().meta.name, "frontend");
    let g = generate(&proxy, &ctx2, false);
    let clusters = names(&g.clusters, |c| &c.name);
    assert!(clusters.contains(&"outbound|7000||user.base.svc.cluster.local".into()));
    assert!(
        !clusters.iter().any(|c| c.contains("order")),
        "{clusters:?}"
    );
    let last = g.routes[0].virtual_hosts.last().unwrap();
    assert_eq!(last.name, "block_all");
    // Another workload of the namespace gets the namespace-wide one.
    let mut other = proxy.clone();
    other.labels = [("app".to_string(), "cart".to_string())].into();
    assert_eq!(select(&other, &ctx2).unwrap().meta.name, "default");
    // Another namespace falls back to the root namespace's.
    let root = sidecar_obj(
            "apiVersion: networking.istio.io/v1alpha3\nkind: Sidecar\nmetadata: {name: default, namespace: istio-system}\nspec:\n  egress:\n  - hosts: [\"./*\"]\n",
        );
    let ctx3 = with_sidecars(&ctx, vec![root]);
    other.namespace = "finance".into();
    assert_eq!(
        select(&other, &ctx3).unwrap().meta.namespace,
        "istio-system"
    );
    let g = generate(&other, &ctx3, false);
    // `./*` in the root Sidecar means istio-system: nothing visible here.
    assert!(!g.clusters.iter().any(|c| c.name.starts_with("outbound")));
}

#[test]
fn egress_port_conflict_is_rejected_with_reason() {
    let v: serde_json::Value = serde_saphyr::from_str(
            "apiVersion: networking.istio.io/v1alpha3\nkind: Sidecar\nmetadata: {name: dup, namespace: base}\nspec:\n  egress:\n  - port: {number: 7000, protocol: HTTP, name: a}\n    hosts: [\"./*\"]\n  - port: {number: 7000, protocol: HTTP, name: b}\n    hosts: [\"*/*\"]\n  - hosts: [\"istio-system/*\"]\n",
        )
        .unwrap();
    let errs = parse_object("f.yaml", &v).unwrap_err();
    let text = errs
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        text.contains("Sidecar base/dup")
            && text.contains("spec.egress[1].port")
            && text.contains("already in use by egress[0]"),
        "{text}"
    );
    for (bad, want) in [
            ("  egress:\n  - hosts: [\"user\"]\n", "is not NAMESPACE/HOST"),
            (
                "  ingress:\n  - port: {number: 80, protocol: HTTP, name: h}\n    defaultEndpoint: unix:///x.sock\n",
                "unix sockets",
            ),
            ("  egress:\n  - hosts: [\"*/*\"]\n  - port: {number: 80, protocol: HTTP, name: h}\n    hosts: [\"*/*\"]\n", "must be the last"),
        ] {
            let yaml = format!("apiVersion: networking.istio.io/v1alpha3\nkind: Sidecar\nmetadata: {{name: bad}}\nspec:\n{bad}");
            let v: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
            let e = format!("{:?}", parse_object("f.yaml", &v).unwrap_err());
            assert!(e.contains(want), "{bad}: {e}");
        }
}

/// TLS routes become SNI filter chains on TLS ports, and L4 matches are scoped
/// by `sourceLabels`/`sourceNamespace`/`port` (tests/golden/sidecar_l4_routes).
#[test]
fn l4_routes_follow_sni_and_source_scoping() {
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
        tcp_proxy::ClusterSpecifier as Tcp, TcpProxy,
    };
    let (ctx, mut proxy) = crate::translate::golden::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/sidecar_l4_routes.yaml"),
    );
    let chains = |g: &Generated, name: &str| -> Vec<(Vec<String>, String)> {
        let l = g.listeners.iter().find(|l| l.name == name).expect(name);
        l.filter_chains
            .iter()
            .map(|fc| {
                let sni = fc
                    .filter_chain_match
                    .as_ref()
                    .map(|m| m.server_names.clone())
                    .unwrap_or_default();
                let Some(ConfigType::TypedConfig(any)) = &fc.filters[0].config_type else {
                    panic!("typed config")
                };
                let tp = TcpProxy::decode(any.value.as_slice()).expect("tcp proxy");
                let dest = match tp.cluster_specifier {
                    Some(Tcp::Cluster(c)) => c,
                    Some(Tcp::WeightedClusters(w)) => w
                        .clusters
                        .iter()
                        .map(|c| format!("{}={}", c.name, c.weight))
                        .collect::<Vec<_>>()
                        .join(","),
                    None => String::new(),
                };
                (sni, dest)
            })
            .collect()
    };
    let g = generate(&proxy, &ctx, false);
    // The web redirect: derivePort FROM_REQUEST_PORT and statPrefix.
    let web = g
        .routes
        .iter()
        .find(|r| r.name == "8080")
        .and_then(|r| r.virtual_hosts.iter().find(|v| v.name.starts_with("web.")))
        .expect("web vhost");
    assert_eq!(web.routes[0].stat_prefix, "login");
    match &web.routes[0].action {
        Some(Action::Redirect(r)) => assert_eq!(r.port_redirect, 8080),
        other => panic!("{other:?}"),
    }
    // useSourceIp on db: its TCP proxy hashes on the source address.
    let db = g
        .listeners
        .iter()
        .find(|l| l.name == "0.0.0.0_5432")
        .unwrap();
    let Some(ConfigType::TypedConfig(any)) = &db.filter_chains[0].filters[0].config_type else {
        panic!("typed config")
    };
    let db_proxy = TcpProxy::decode(any.value.as_slice()).unwrap();
    assert_eq!(db_proxy.hash_policy.len(), 1);
    assert_eq!(db_proxy.idle_timeout.map(|d| d.seconds), Some(1800));
    assert_eq!(
        db_proxy
            .max_downstream_connection_duration
            .map(|d| d.seconds),
        Some(7200)
    );
    let tls = chains(&g, "0.0.0.0_9443");
    assert!(g
        .listeners
        .iter()
        .filter(|l| l.name == "0.0.0.0_9443")
        .all(
            |l| l.filter_chains.iter().all(|fc| fc.filters.iter().all(|f| {
                match &f.config_type {
                    Some(ConfigType::TypedConfig(a)) => TcpProxy::decode(a.value.as_slice())
                        .unwrap()
                        .hash_policy
                        .is_empty(),
                    _ => true,
                }
            }))
        ));
    assert_eq!(
            tls,
            [
                (
                    vec!["a.secure.example.com".to_string()],
                    "outbound|9443|v1|secure.base.svc.cluster.local".to_string()
                ),
                (
                    vec!["*.secure.example.com".to_string()],
                    "outbound|9443|v1|secure.base.svc.cluster.local=80,outbound|9443|v2|secure.base.svc.cluster.local=20".to_string()
                ),
                (
                    vec![],
                    "outbound|9443||secure.base.svc.cluster.local".to_string()
                ),
            ]
        );
    assert_eq!(
        chains(&g, "0.0.0.0_5432"),
        [(
            vec![],
            "outbound|5432|v1|db.base.svc.cluster.local".to_string()
        )]
    );
    // Another TLS port gets no chains from a VirtualService for another host.
    assert_eq!(
        chains(&g, "0.0.0.0_8443"),
        [(
            vec![],
            "outbound|8443||vault.base.svc.cluster.local".to_string()
        )]
    );
    // The admin workload matches the first TLS and TCP matches scoped to it.
    proxy.labels = [("app".to_string(), "admin".to_string())].into();
    let g = generate(&proxy, &ctx, false);
    let tls = chains(&g, "0.0.0.0_9443");
    assert!(tls.contains(&(
        vec!["admin.secure.example.com".to_string()],
        "outbound|9443|v2|secure.base.svc.cluster.local".to_string()
    )));
    assert!(!tls
        .iter()
        .any(|(s, _)| s.iter().any(|h| h.starts_with("other-port"))));
    assert_eq!(
        chains(&g, "0.0.0.0_5432"),
        [(
            vec![],
            "outbound|5432|v2|db.base.svc.cluster.local".to_string()
        )]
    );
    // So does any workload of namespace ops (sourceNamespace).
    proxy.labels = [("app".to_string(), "frontend".to_string())].into();
    proxy.namespace = "ops".into();
    let g = generate(&proxy, &ctx, false);
    assert_eq!(
        chains(&g, "0.0.0.0_5432"),
        [(
            vec![],
            "outbound|5432|v2|db.base.svc.cluster.local".to_string()
        )]
    );
}

#[test]
fn redirect_ingress_bind_narrows_the_inbound_chain() {
    let (ctx, proxy) = golden();
    let bound = sidecar_obj(
            "apiVersion: networking.istio.io/v1alpha3\nkind: Sidecar\nmetadata: {name: frontend, namespace: base}\nspec:\n  workloadSelector: {labels: {app: frontend}}\n  ingress:\n  - port: {number: 8080, protocol: HTTP, name: http}\n    bind: 10.0.0.1\n    defaultEndpoint: 127.0.0.1:8080\n  - port: {number: 9090, protocol: TCP, name: tcp}\n    bind: 0.0.0.0\n    defaultEndpoint: 127.0.0.1:9090\n",
        );
    let g = generate(&proxy, &with_sidecars(&ctx, vec![bound]), false);
    let inbound = g
        .listeners
        .iter()
        .find(|l| l.name == "virtualInbound")
        .expect("virtualInbound");
    let m = |name: &str| {
        inbound
            .filter_chains
            .iter()
            .find(|fc| fc.name == name)
            .and_then(|fc| fc.filter_chain_match.clone())
            .expect(name)
    };
    let bound = m("inbound|8080||");
    assert_eq!(bound.prefix_ranges.len(), 1);
    assert_eq!(bound.prefix_ranges[0].address_prefix, "10.0.0.1");
    assert_eq!(bound.prefix_ranges[0].prefix_len, Some(u32_value(32)));
    assert!(m("inbound|9090||").prefix_ranges.is_empty());
}

#[test]
fn inbound_connection_pools_become_circuit_breakers() {
    let (ctx, proxy) = golden();
    let sc = sidecar_obj(
            "apiVersion: networking.istio.io/v1alpha3\nkind: Sidecar\nmetadata: {name: frontend, namespace: base}\nspec:\n  workloadSelector: {labels: {app: frontend}}\n  inboundConnectionPool:\n    tcp: {maxConnections: 5}\n  ingress:\n  - port: {number: 8080, protocol: HTTP, name: http}\n    defaultEndpoint: 127.0.0.1:8080\n  - port: {number: 9090, protocol: GRPC, name: grpc}\n    defaultEndpoint: 127.0.0.1:9090\n    connectionPool:\n      http: {http2MaxRequests: 2}\n",
        );
    let g = generate(&proxy, &with_sidecars(&ctx, vec![sc]), false);
    let thresholds = |name: &str| {
        g.clusters
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.circuit_breakers.clone())
            .map(|cb| cb.thresholds[0].clone())
            .expect(name)
    };
    // The Sidecar-wide pool, and Istio's unlimited defaults elsewhere.
    let http = thresholds("inbound|8080||");
    assert_eq!(http.max_connections, Some(u32_value(5)));
    assert_eq!(http.max_requests, Some(u32_value(u32::MAX)));
    // The listener's own pool replaces the Sidecar-wide one.
    let grpc = thresholds("inbound|9090||");
    assert_eq!(grpc.max_requests, Some(u32_value(2)));
    assert_eq!(grpc.max_connections, Some(u32_value(u32::MAX)));
    // gRPC reaches the workload over HTTP/2.
    assert!(g
        .clusters
        .iter()
        .find(|c| c.name == "inbound|9090||")
        .is_some_and(|c| !c.typed_extension_protocol_options.is_empty()));
}

#[test]
fn redirect_sidecars_share_a_class_none_mode_does_not() {
    let (ctx, mut a) = golden();
    let mut b = a.clone();
    b.ip = "10.9.9.9".parse().unwrap();
    b.id = "sidecar~10.9.9.9~x.base~base.svc.cluster.local".into();
    assert_eq!(
        super::super::ProxyClass::of(&a, &ctx),
        super::super::ProxyClass::of(&b, &ctx)
    );
    a.interception = InterceptionMode::None;
    b.interception = InterceptionMode::None;
    assert_ne!(
        super::super::ProxyClass::of(&a, &ctx),
        super::super::ProxyClass::of(&b, &ctx)
    );
}

/// The config-size effect of a namespace-wide Sidecar: 20 namespaces of 10
/// services with 2 ports each; the sidecar sees everything without a Sidecar,
/// and only its own namespace with `egress: ./*`. Printed for the report
/// (`cargo test --lib translate::sidecar -- --nocapture`).
#[test]
fn namespace_sidecar_keeps_config_small() {
    let (ctx, proxy) = golden();
    let mut services = crate::model::service::ServiceMap::new();
    for n in 0..20 {
        let ns = if n == 0 {
            "base".to_string()
        } else {
            format!("ns{n}")
        };
        for i in 0..10 {
            let hostname: Arc<str> = format!("svc{i}.{ns}.svc.cluster.local").into();
            let ep = |port: u16| Endpoint {
                address: format!("10.{n}.{i}.1").parse().unwrap(),
                port,
                labels: Default::default(),
                cluster: "c1".into(),
                network: "".into(),
                locality: Arc::new(Locality::default()),
                ready: true,
                workload: "w".into(),
                service_account: "sa".into(),
                stale: false,
                weight: 1,
            };
            services.insert(
                hostname.clone(),
                Arc::new(Service {
                    hostname,
                    namespace: ns.clone(),
                    name: format!("svc{i}"),
                    ports: vec![
                        ServicePort {
                            name: "http".into(),
                            port: 8000 + i,
                            protocol: Protocol::Http,
                        },
                        ServicePort {
                            name: "tcp".into(),
                            port: 9100 + i,
                            protocol: Protocol::Tcp,
                        },
                    ],
                    endpoints: [
                        (8000 + i, vec![ep(8000 + i)]),
                        (9100 + i, vec![ep(9100 + i)]),
                    ]
                    .into(),
                    clusters: vec!["c1".into()],
                }),
            );
        }
    }
    let mut cfg = (*ctx.config).clone();
    cfg.sidecars.clear();
    let open = PushContext {
        services: Arc::new(services),
        config: Arc::new(cfg),
        ..ctx.clone()
    };
    let scoped = with_sidecars(
            &open,
            vec![sidecar_obj(
                "apiVersion: networking.istio.io/v1alpha3\nkind: Sidecar\nmetadata: {name: default, namespace: base}\nspec:\n  egress:\n  - hosts: [\"./*\"]\n",
            )],
        );
    let size = |g: &Generated| -> usize {
        g.clusters.iter().map(|c| c.encoded_len()).sum::<usize>()
            + g.listeners.iter().map(|l| l.encoded_len()).sum::<usize>()
            + g.routes.iter().map(|r| r.encoded_len()).sum::<usize>()
    };
    let (a, b) = (
        generate(&proxy, &open, false),
        generate(&proxy, &scoped, false),
    );
    eprintln!(
            "sidecar config without Sidecar: {} clusters, {} listeners, {} bytes; with namespace-wide Sidecar (./*): {} clusters, {} listeners, {} bytes",
            a.clusters.len(),
            a.listeners.len(),
            size(&a),
            b.clusters.len(),
            b.listeners.len(),
            size(&b)
        );
    assert_eq!(a.clusters.len(), 3 + 200 * 2 + 0);
    assert_eq!(b.clusters.len(), 3 + 10 * 2);
    assert!(size(&b) * 5 < size(&a));
}
