//! The cost of per-locality EDS (issue 5): with locality failover or `distribute`
//! in force, the push engine computes each service's ClusterLoadAssignments once
//! per distinct `EdsView` (the proxy fields EDS reads) and shares equal encodings
//! across views. This bench measures what that costs, from the snapshots the
//! `Pusher` actually hands out.
//!
//! The mesh: S services x 3 clusters x 10 pods, one namespace (`bench`); every
//! cluster has one Node per zone over 2 regions x 3 zones
//! (`topology.kubernetes.io/region|zone` labels) and pod `p` of service `s` in
//! cluster `c` runs in zone `(p + s + c) % 6`. It is written as manifest files and
//! loaded through the real manifest parsers into a `Registry`, as
//! `crossmesh serve` would. P sidecars (one proxy class) connect through the
//! `Pusher` API: proxy `i` is in zone `i % 6`, member cluster `(i / 6) % 3` and
//! subzone `(i / 18) % 3` (none, `sz-a`, `sz-b`), so 54 views share 6 zones.
//!
//! Three configurations:
//! - `none`: no DestinationRule, one global EDS for everybody;
//! - `failover`: a DestinationRule for `*.bench.svc.cluster.local` with
//!   `outlierDetection` (Istio's default locality failover: priorities by zone,
//!   region, other);
//! - `distribute`: the same host with `localityLbSetting.distribute`: from each
//!   zone, 80% to the zone and 20% to its peer zone in the other region.
//!
//! Per configuration it reports the distinct views, the distinct EDS encodings
//! (by content and by allocation), the encoded EDS bytes the engine holds (each
//! allocation once: the global map and every view's map), the bytes the proxies'
//! snapshots would hold without any sharing (sum over proxies), the time to
//! connect every proxy, a full push, and a one-pod endpoint push; and it checks
//! the priorities / weights each zone's proxies get.
//!
//! Run: `cargo bench --bench locality` (1,000 services, 600 proxies, release
//! build). Without `--bench` (as `cargo test --all-targets` runs it) it uses 50
//! services and 60 proxies and only checks correctness, in a few seconds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{address, Locality as PbLocality, Node};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::google::protobuf::{value::Kind, Any, Struct, Value};
use prost::Message;

use crossmesh::model::Proxy;
use crossmesh::push::{ContextSource, PushQueue, PushRequest, Pusher};
use crossmesh::registry::{Event, Registry};
use crossmesh::sources::manifests;
use crossmesh::translate::locality::EdsView;
use crossmesh::xds::{Resource, ResourceMap, SnapshotSource, TypeUrl};

const CLUSTERS: usize = 3;
const PODS: usize = 10;
const NS: &str = "bench";
/// (region, zone) of the 6 zones; zone `k` and zone `(k + 3) % 6` are peers in
/// the other region (the `distribute` target for the 20%).
const ZONES: [(&str, &str); 6] = [
    ("region-1", "zone-1a"),
    ("region-1", "zone-1b"),
    ("region-1", "zone-1c"),
    ("region-2", "zone-2a"),
    ("region-2", "zone-2b"),
    ("region-2", "zone-2c"),
];
const SUBZONES: [&str; 3] = ["", "sz-a", "sz-b"];

type Res<T> = Result<T, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    None,
    Failover,
    Distribute,
}

impl Policy {
    fn label(self) -> &'static str {
        match self {
            Policy::None => "no DestinationRule",
            Policy::Failover => "outlierDetection (failover)",
            Policy::Distribute => "distribute 80/20",
        }
    }

    /// The Istio config directory's content, if any.
    fn rule(self) -> Option<String> {
        let head = format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: locality\n  namespace: {NS}\nspec:\n  host: \"*.{NS}.svc.cluster.local\"\n  trafficPolicy:\n"
        );
        match self {
            Policy::None => None,
            Policy::Failover => Some(format!(
                "{head}    outlierDetection:\n      consecutive5xxErrors: 5\n      interval: 10s\n      baseEjectionTime: 30s\n"
            )),
            Policy::Distribute => {
                let mut y = format!("{head}    loadBalancer:\n      localityLbSetting:\n        distribute:\n");
                for (k, (r, z)) in ZONES.iter().enumerate() {
                    let (pr, pz) = ZONES[(k + 3) % 6];
                    y.push_str(&format!(
                        "        - from: {r}/{z}/*\n          to:\n            {r}/{z}: 80\n            {pr}/{pz}: 20\n"
                    ));
                }
                Some(y)
            }
        }
    }
}

struct Size {
    services: usize,
    proxies: usize,
    /// Repetitions of each timed push (the median is reported).
    rounds: usize,
}

/// One configuration's measurements.
struct Report {
    label: &'static str,
    services: usize,
    proxies: usize,
    views: usize,
    classes: usize,
    view_maps: usize,
    eds_names: usize,
    after_connect: Held,
    after_full: Held,
    after_endpoint: Held,
    snapshot_unique_bytes: u64,
    per_view_bytes: u64,
    per_proxy_bytes: u64,
    connect: Duration,
    full_push: Duration,
    full_encodes: u64,
    endpoint_push: Duration,
    endpoint_encodes: u64,
}

struct Mesh {
    dir: tempfile::TempDir,
    registry: Arc<Registry>,
    queue: PushQueue,
    tunables: crossmesh::config::Tunables,
    next_ip: u32,
}

fn node_yaml() -> String {
    let mut y = String::new();
    for (k, (r, z)) in ZONES.iter().enumerate() {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: node-{k}\n  labels:\n    topology.kubernetes.io/region: {r}\n    topology.kubernetes.io/zone: {z}\n"
        ));
    }
    y
}

fn pod_yaml(s: usize, p: usize, zone: usize, ip: std::net::Ipv4Addr) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: svc-{s}-{p}\n  namespace: {NS}\n  labels:\n    app: svc-{s}\nspec:\n  nodeName: node-{zone}\n  containers:\n  - name: app\n    image: app\nstatus:\n  phase: Running\n  podIP: {ip}\n  conditions:\n  - type: Ready\n    status: \"True\"\n"
    )
}

fn pod_zone(s: usize, p: usize, c: usize) -> usize {
    (p + s + c) % ZONES.len()
}

fn write_mesh(services: usize, policy: Policy) -> Res<Mesh> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let w = |path: std::path::PathBuf, text: String| {
        std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))
    };
    let mut ip = 0x0a00_0001u32;
    for c in 0..CLUSTERS {
        let cdir = dir.path().join(format!("c{c}"));
        std::fs::create_dir_all(&cdir).map_err(|e| format!("mkdir: {e}"))?;
        w(cdir.join("nodes.yaml"), node_yaml())?;
        let mut y = String::new();
        for s in 0..services {
            y.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{s}\n  namespace: {NS}\nspec:\n  ports:\n  - port: 80\n    name: http\n    targetPort: 8080\n  selector:\n    app: svc-{s}\n"
            ));
            for p in 0..PODS {
                ip += 1;
                y.push_str(&pod_yaml(
                    s,
                    p,
                    pod_zone(s, p, c),
                    std::net::Ipv4Addr::from(ip),
                ));
            }
        }
        w(cdir.join("all.yaml"), y)?;
    }
    let clusters: String = (0..CLUSTERS)
        .map(|c| format!("- name: c{c}\n  manifests: c{c}\n"))
        .collect();
    let mut mesh =
        format!("trustDomain: cluster.local\ndomainSuffix: cluster.local\nclusters:\n{clusters}");
    if let Some(rule) = policy.rule() {
        let idir = dir.path().join("istio");
        std::fs::create_dir_all(&idir).map_err(|e| format!("mkdir: {e}"))?;
        w(idir.join("dr.yaml"), rule)?;
        mesh.push_str("config:\n- manifests: istio\n");
    }
    let mesh_file = dir.path().join("mesh.yaml");
    w(mesh_file.clone(), mesh)?;
    let cfg = crossmesh::config::MeshConfig::load(&mesh_file).map_err(|e| e.to_string())?;
    let queue = PushQueue::new();
    let registry = Registry::new(Arc::new(cfg.clone()), queue.clone());
    for c in &cfg.clusters {
        if let crossmesh::config::ClusterSource::Manifests(d) = &c.source {
            if !manifests::ClusterDir::new(&c.name, d.clone()).sync(&registry, true) {
                return Err(format!("cluster {} did not load", c.name));
            }
        }
    }
    for src in &cfg.config {
        if let crossmesh::config::ConfigSource::Manifests(d) = src {
            if !manifests::ConfigDir::new(d.clone()).sync(&registry, true) {
                return Err(format!("config dir {} did not load", d.display()));
            }
        }
    }
    if registry.services().len() != services {
        return Err(format!(
            "{} services loaded, {services} written",
            registry.services().len()
        ));
    }
    let status = registry.config_status();
    if !status.rejected.is_empty() {
        return Err(format!("config rejected: {:?}", status.rejected));
    }
    let want_rules = usize::from(policy.rule().is_some());
    if registry.config().destination_rules.len() != want_rules {
        return Err(format!(
            "{} DestinationRules in force, {want_rules} written",
            registry.config().destination_rules.len()
        ));
    }
    // Every endpoint has its Node's locality.
    for svc in registry.services().values() {
        let n: usize = svc.endpoints.values().map(Vec::len).sum();
        if n != CLUSTERS * PODS {
            return Err(format!("{}: {n} endpoints", svc.hostname));
        }
        if let Some(e) = svc
            .endpoints
            .values()
            .flatten()
            .find(|e| e.locality.zone.is_empty() || !e.ready)
        {
            return Err(format!(
                "{}: endpoint {} without zone or not ready",
                svc.hostname, e.address
            ));
        }
    }
    Ok(Mesh {
        dir,
        registry,
        queue,
        tunables: cfg.tunables,
        next_ip: 0x0b00_0001,
    })
}

fn string(v: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(v.into())),
    }
}

/// Proxy `i`: zone `i % 6`, cluster `(i / 6) % 3`, subzone `(i / 18) % 3`.
fn proxy(i: usize) -> Res<(Proxy, usize)> {
    let zone = i % ZONES.len();
    let cluster = (i / ZONES.len()) % CLUSTERS;
    let subzone = SUBZONES[(i / (ZONES.len() * CLUSTERS)) % SUBZONES.len()];
    let (region, z) = ZONES[zone];
    let node = Node {
        id: format!(
            "sidecar~127.1.{}.{}~load-{i}.{NS}~{NS}.svc.cluster.local",
            i / 250,
            i % 250 + 1
        ),
        locality: Some(PbLocality {
            region: region.into(),
            zone: z.into(),
            sub_zone: subzone.into(),
        }),
        metadata: Some(Struct {
            fields: [
                ("CLUSTER_ID".to_string(), string(&format!("c{cluster}"))),
                ("NAMESPACE".to_string(), string(NS)),
            ]
            .into(),
        }),
        ..Default::default()
    };
    let p = Proxy::from_node(&node).map_err(|e| e.to_string())?;
    Ok((p, zone))
}

fn encodes() -> u64 {
    crossmesh::metrics::metrics().encodes.get()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn decode(r: &Resource) -> Res<ClusterLoadAssignment> {
    let any = Any::decode(r.any.clone()).map_err(|e| format!("{}: {e}", r.name))?;
    ClusterLoadAssignment::decode(any.value.as_slice()).map_err(|e| format!("{}: {e}", r.name))
}

fn endpoint_ip(e: &envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint) -> Option<String> {
    let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
        return None;
    };
    match ep.address.as_ref()?.address.as_ref()? {
        address::Address::SocketAddress(sa) => Some(sa.address.clone()),
        _ => None,
    }
}

/// What a proxy in zone `zone` must see in each assignment, per policy.
fn check_assignment(policy: Policy, zone: usize, cla: &ClusterLoadAssignment) -> Res<()> {
    let (region, z) = ZONES[zone];
    let n: usize = cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum();
    let bad = |why: String| Err(format!("{} for a zone {z} proxy: {why}", cla.cluster_name));
    for l in &cla.endpoints {
        let loc = l.locality.clone().unwrap_or_default();
        let count = l.lb_endpoints.len() as u32;
        let weight = l.load_balancing_weight.as_ref().map_or(0, |w| w.value);
        match policy {
            Policy::None => {
                if l.priority != 0 || weight != count {
                    return bad(format!(
                        "{}/{} priority {} weight {weight}, want 0 and {count}",
                        loc.region, loc.zone, l.priority
                    ));
                }
            }
            Policy::Failover => {
                let want = if loc.zone == z {
                    0
                } else if loc.region == region {
                    1
                } else {
                    2
                };
                if l.priority != want {
                    return bad(format!(
                        "{}/{} priority {}, want {want}",
                        loc.region, loc.zone, l.priority
                    ));
                }
            }
            Policy::Distribute => {
                let peer = ZONES[(zone + 3) % 6].1;
                let want = if loc.zone == z {
                    80
                } else if loc.zone == peer {
                    20
                } else {
                    return bad(format!("{}/{} not dropped", loc.region, loc.zone));
                };
                if weight != want || l.priority != 0 {
                    return bad(format!(
                        "{}/{} weight {weight} priority {}, want {want} and 0",
                        loc.region, loc.zone, l.priority
                    ));
                }
            }
        }
    }
    let want_n = match policy {
        Policy::Distribute => {
            // Endpoints of the zone and its peer only: 5 each.
            2 * CLUSTERS * PODS / ZONES.len()
        }
        _ => CLUSTERS * PODS,
    };
    if n != want_n {
        return bad(format!("{n} endpoints, want {want_n}"));
    }
    Ok(())
}

fn ptr(r: &Arc<Resource>) -> usize {
    Arc::as_ptr(r) as usize
}

/// The EDS encodings the engine holds (its global map and every view's map).
#[derive(Debug, Clone, Copy, Default)]
struct Held {
    /// Distinct encodings by content, and their bytes (each content once).
    contents: usize,
    content_bytes: u64,
    /// Distinct allocations (`Arc<Resource>`), and their bytes (each once).
    allocs: usize,
    alloc_bytes: u64,
}

fn held_encodings(pusher: &Pusher) -> Held {
    let held = pusher.eds_maps();
    let allocs: HashMap<usize, &Arc<Resource>> = held
        .iter()
        .flat_map(|m| m.values())
        .map(|r| (ptr(r), r))
        .collect();
    let contents: HashSet<&Bytes> = allocs.values().map(|r| &r.any).collect();
    Held {
        contents: contents.len(),
        content_bytes: contents.iter().map(|b| b.len() as u64).sum(),
        allocs: allocs.len(),
        alloc_bytes: allocs.values().map(|r| r.any.len() as u64).sum(),
    }
}

fn run(policy: Policy, size: &Size) -> Res<Report> {
    let mut mesh = write_mesh(size.services, policy)?;
    let pusher = Pusher::new(
        mesh.registry.clone(),
        mesh.queue.clone(),
        mesh.tunables.clone(),
    );
    pusher.push_now(PushRequest::full("bench"));
    while mesh.queue.try_take().is_some() {}

    // Connect every proxy (the first proxy of a view builds the view's EDS).
    let mut proxies = Vec::with_capacity(size.proxies);
    for i in 0..size.proxies {
        proxies.push(proxy(i)?);
    }
    let t = Instant::now();
    let mut rxs = Vec::with_capacity(size.proxies);
    for (i, (p, _)) in proxies.iter().enumerate() {
        rxs.push(pusher.connect(i as u64, Arc::new(p.clone())));
    }
    let connect = t.elapsed();
    // Encodings held right after the connects, before any full push.
    let after_connect = held_encodings(&pusher);

    // Full pushes with every proxy connected.
    let mut full = Vec::new();
    let mut full_encodes = 0;
    for _ in 0..size.rounds {
        let e0 = encodes();
        let t = Instant::now();
        let s = pusher.push_now(PushRequest::full("bench"));
        full.push(t.elapsed());
        full_encodes = encodes() - e0;
        if s.proxies != size.proxies {
            return Err(format!(
                "full push reached {} proxies, not {}",
                s.proxies, size.proxies
            ));
        }
    }
    let ctx = pusher.context().ok_or("no push context")?;

    // What the proxies hold.
    let views: HashSet<EdsView> = proxies.iter().map(|(p, _)| EdsView::of(p, &ctx)).collect();
    let mut snapshots = Vec::with_capacity(rxs.len());
    for rx in &rxs {
        snapshots.push(rx.borrow().snapshot.clone());
    }
    let classes: HashSet<usize> = snapshots.iter().map(|s| Arc::as_ptr(s) as usize).collect();
    let mut view_maps: HashMap<usize, &ResourceMap> = HashMap::new();
    let mut per_proxy_bytes = 0u64;
    let mut snap_allocs: HashMap<usize, u64> = HashMap::new();
    for s in &snapshots {
        let m = s.get(TypeUrl::Endpoint);
        view_maps.insert(Arc::as_ptr(m) as usize, m);
        for r in m.values() {
            per_proxy_bytes += r.any.len() as u64;
            snap_allocs.insert(ptr(r), r.any.len() as u64);
        }
    }
    let per_view_bytes: u64 = view_maps
        .values()
        .flat_map(|m| m.values())
        .map(|r| r.any.len() as u64)
        .sum();
    let snapshot_unique_bytes: u64 = snap_allocs.values().sum();
    // What the engine holds: the global map and every view's map.
    let after_full = held_encodings(&pusher);
    let names: HashSet<Arc<str>> = pusher
        .eds_maps()
        .iter()
        .flat_map(|m| m.keys().cloned())
        .collect();
    if names.len() != size.services {
        return Err(format!(
            "{} EDS names for {} services",
            names.len(),
            size.services
        ));
    }

    // Priorities / weights: every assignment of every distinct view map (checked
    // once per map), against the zone of a proxy holding it.
    let mut checked = HashSet::new();
    for (s, (_, zone)) in snapshots.iter().zip(&proxies) {
        let m = s.get(TypeUrl::Endpoint);
        if !checked.insert(Arc::as_ptr(m) as usize) {
            continue;
        }
        for r in m.values() {
            check_assignment(policy, *zone, &decode(r)?)?;
        }
    }
    // Sharing: equal zones give equal bytes, whatever the cluster or subzone.
    let zones_in_use: HashSet<usize> = proxies.iter().map(|(_, z)| *z).collect();
    let want_encodings = match policy {
        Policy::None => size.services,
        // The global map (all priority 0) plus one variant per zone in use.
        Policy::Failover | Policy::Distribute => size.services * (1 + zones_in_use.len()),
    };
    if after_full.contents != want_encodings {
        return Err(format!(
            "{} distinct EDS encodings, expected {want_encodings}",
            after_full.contents
        ));
    }

    // One pod changes IP in cluster c0: the registry's own request, pushed.
    let s = size.services / 2;
    let host = format!("svc-{s}.{NS}.svc.cluster.local");
    let mut endpoint = Vec::new();
    let mut endpoint_encodes = 0;
    for round in 0..size.rounds {
        mesh.next_ip += 1;
        let ip = std::net::Ipv4Addr::from(mesh.next_ip);
        let p = round % PODS;
        let docs = manifests::parse_text(&pod_yaml(s, p, pod_zone(s, p, 0), ip))?;
        let obj = manifests::kube_object(docs.first().ok_or("no pod document")?)?;
        if let Some(e) = mesh
            .registry
            .apply("c0", Event::Upsert(obj))
            .map_err(|e| e.to_string())?
        {
            return Err(format!("pod rejected: {e}"));
        }
        let req = mesh.queue.try_take().ok_or("the registry queued no push")?;
        if req.full || !req.services.iter().any(|h| **h == *host) {
            return Err(format!("unexpected request {req:?}"));
        }
        let e0 = encodes();
        let t = Instant::now();
        let sum = pusher.push_now(req);
        endpoint.push(t.elapsed());
        endpoint_encodes = encodes() - e0;
        // Every proxy sees the new IP, at its zone's priority; with `distribute`
        // only the proxies whose zone keeps the pod's zone get a push.
        let name = format!("outbound|80||{host}");
        let pz = pod_zone(s, p, 0);
        let keeps = |zone: usize| {
            policy != Policy::Distribute || pz == zone || pz == (zone + 3) % ZONES.len()
        };
        let reached = proxies.iter().filter(|(_, z)| keeps(*z)).count();
        if sum.proxies != reached || sum.eds_changed == 0 {
            return Err(format!("endpoint push: {sum:?}, want {reached} proxies"));
        }
        for (rx, (_, zone)) in rxs.iter().zip(&proxies) {
            let snap = rx.borrow().snapshot.clone();
            let r = snap
                .get(TypeUrl::Endpoint)
                .get(name.as_str())
                .ok_or_else(|| format!("{name} missing"))?;
            let cla = decode(r)?;
            let has = cla
                .endpoints
                .iter()
                .flat_map(|l| &l.lb_endpoints)
                .any(|e| endpoint_ip(e).as_deref() == Some(ip.to_string().as_str()));
            let kept = keeps(*zone);
            if has != kept {
                return Err(format!("{name}: new IP {ip} present {has}, want {kept}"));
            }
            check_assignment(policy, *zone, &cla)?;
        }
    }
    let after_endpoint = held_encodings(&pusher);
    for i in 0..rxs.len() {
        pusher.disconnect(i as u64);
    }
    drop(mesh.dir);

    Ok(Report {
        label: policy.label(),
        services: size.services,
        proxies: size.proxies,
        views: views.len(),
        classes: classes.len(),
        view_maps: view_maps.len(),
        eds_names: names.len(),
        after_connect,
        after_full,
        after_endpoint,
        snapshot_unique_bytes,
        per_view_bytes,
        per_proxy_bytes,
        connect,
        full_push: median(full),
        full_encodes,
        endpoint_push: median(endpoint),
        endpoint_encodes,
    })
}

fn mb(b: u64) -> String {
    format!("{:.2}", b as f64 / 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn print_table(rows: &[Report]) {
    println!(
        "\n| metric | {} |",
        rows.iter().map(|r| r.label).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|{}", "---|".repeat(rows.len()));
    let line = |name: &str, f: &dyn Fn(&Report) -> String| {
        println!(
            "| {name} | {} |",
            rows.iter().map(f).collect::<Vec<_>>().join(" | ")
        );
    };
    line("services / proxies", &|r| {
        format!("{} / {}", r.services, r.proxies)
    });
    line("distinct EdsViews among the proxies", &|r| {
        r.views.to_string()
    });
    line("distinct snapshots / EDS maps handed out", &|r| {
        format!("{} / {}", r.classes, r.view_maps)
    });
    line("EDS resource names", &|r| r.eds_names.to_string());
    line("distinct EDS encodings (by content)", &|r| {
        r.after_full.contents.to_string()
    });
    line("EDS bytes, each distinct encoding once (MB)", &|r| {
        mb(r.after_full.content_bytes)
    });
    let held = |name: &str, f: &dyn Fn(&Report) -> Held| {
        line(&format!("EDS allocations held {name}: count / MB"), &|r| {
            format!("{} / {}", f(r).allocs, mb(f(r).alloc_bytes))
        });
    };
    held("after connecting", &|r| r.after_connect);
    held("after a full push", &|r| r.after_full);
    held("after the endpoint pushes", &|r| r.after_endpoint);
    line(
        "EDS bytes in the snapshots, each allocation once (MB)",
        &|r| mb(r.snapshot_unique_bytes),
    );
    line(
        "EDS bytes without cross-view sharing, sum over views (MB)",
        &|r| mb(r.per_view_bytes),
    );
    line(
        "EDS bytes without any sharing, sum over proxies (MB)",
        &|r| mb(r.per_proxy_bytes),
    );
    line("connect all proxies (ms)", &|r| ms(r.connect));
    line("full push, median (ms) / encodes", &|r| {
        format!("{} / {}", ms(r.full_push), r.full_encodes)
    });
    line("one-pod endpoint push, median (ms) / encodes", &|r| {
        format!("{} / {}", ms(r.endpoint_push), r.endpoint_encodes)
    });
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` passes nothing.
    let bench = std::env::args().any(|a| a == "--bench");
    let size = if bench {
        Size {
            services: 1000,
            proxies: 600,
            rounds: 5,
        }
    } else {
        Size {
            services: 50,
            proxies: 60,
            rounds: 1,
        }
    };
    eprintln!(
        "locality: {} services x {CLUSTERS} clusters x {PODS} pods, {} proxies over {} zones; load {}",
        size.services,
        size.proxies,
        ZONES.len(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let mut rows = Vec::new();
    for policy in [Policy::None, Policy::Failover, Policy::Distribute] {
        match run(policy, &size) {
            Ok(r) => rows.push(r),
            Err(e) => {
                eprintln!("locality: FAILED ({}): {e}", policy.label());
                std::process::exit(1);
            }
        }
    }
    print_table(&rows);
    let per_zone: BTreeMap<&str, usize> =
        (0..size.proxies)
            .map(|i| ZONES[i % ZONES.len()].1)
            .fold(BTreeMap::new(), |mut m, z| {
                *m.entry(z).or_default() += 1;
                m
            });
    eprintln!("proxies per zone: {per_zone:?}");
}
