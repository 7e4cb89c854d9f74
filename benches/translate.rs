//! Translation micro-benchmarks (issue 6): S services to every Envoy resource a
//! sidecar sees, and one endpoint change to the EDS of one cluster.
//!
//! The mesh (S services x 3 clusters x 10 pods, one namespace) is written as
//! manifest files and loaded through the real manifest parser into a `Registry`,
//! so the `PushContext` is exactly what `crossmesh serve` would build.
//!
//! Run: `cargo bench --bench translate` (about a minute; small sample sizes).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use envoy_types::pb::envoy::config::core::v3::Node;

use crossmesh::model::{Proxy, PushContext};
use crossmesh::push::{ContextSource, PushQueue, PushRequest, Pusher};
use crossmesh::registry::Registry;
use crossmesh::translate;
use crossmesh::xds::{Resource, TypeUrl};

const CLUSTERS: usize = 3;
const PODS: usize = 10;

struct Mesh {
    _dir: tempfile::TempDir,
    registry: Arc<Registry>,
    queue: PushQueue,
    tunables: crossmesh::config::Tunables,
}

fn write_mesh(services: usize) -> Mesh {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut ip = 0x0a00_0001u32;
    for c in 0..CLUSTERS {
        let cdir = dir.path().join(format!("c{c}"));
        std::fs::create_dir_all(&cdir).expect("mkdir");
        let mut y = String::new();
        for s in 0..services {
            y.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{s}\n  namespace: bench\nspec:\n  ports:\n  - port: 80\n    name: http\n    targetPort: 8080\n  selector:\n    app: svc-{s}\n"
            ));
            for p in 0..PODS {
                ip += 1;
                let a = std::net::Ipv4Addr::from(ip);
                y.push_str(&format!(
                    "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: svc-{s}-{p}\n  namespace: bench\n  labels:\n    app: svc-{s}\nspec:\n  containers:\n  - name: app\n    image: app\nstatus:\n  phase: Running\n  podIP: {a}\n  conditions:\n  - type: Ready\n    status: \"True\"\n"
                ));
            }
        }
        std::fs::write(cdir.join("all.yaml"), y).expect("write");
    }
    let clusters: String = (0..CLUSTERS)
        .map(|c| format!("- name: c{c}\n  manifests: c{c}\n"))
        .collect();
    let mesh_file = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh_file,
        format!("trustDomain: cluster.local\ndomainSuffix: cluster.local\nclusters:\n{clusters}"),
    )
    .expect("write mesh");
    let cfg = crossmesh::config::MeshConfig::load(&mesh_file).expect("mesh file");
    let queue = PushQueue::new();
    let registry = Registry::new(Arc::new(cfg.clone()), queue.clone());
    for c in &cfg.clusters {
        if let crossmesh::config::ClusterSource::Manifests(d) = &c.source {
            crossmesh::sources::manifests::ClusterDir::new(&c.name, d.clone())
                .sync(&registry, true);
        }
    }
    assert_eq!(registry.services().len(), services, "services loaded");
    Mesh {
        _dir: dir,
        registry,
        queue,
        tunables: cfg.tunables,
    }
}

fn context(m: &Mesh) -> PushContext {
    PushContext {
        seq: 1,
        mesh: m.registry.mesh(),
        services: m.registry.services(),
        config: m.registry.config(),
        credentials: m.registry.credentials(),
    }
}

fn sidecar() -> Proxy {
    Proxy::from_node(&Node {
        id: "sidecar~127.0.1.1~load-0.bench~bench.svc.cluster.local".into(),
        ..Default::default()
    })
    .expect("node id")
}

fn bench(c: &mut Criterion) {
    let proxy = sidecar();
    let mut g = c.benchmark_group("translate");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for services in [100usize, 1000] {
        let mesh = write_mesh(services);
        let ctx = context(&mesh);

        // S services -> every resource (CDS/LDS/RDS generate + all EDS), as protos.
        g.bench_with_input(
            BenchmarkId::new("all_resources", services),
            &ctx,
            |b, ctx| {
                b.iter(|| {
                    let g = translate::generate(&proxy, ctx);
                    let eds: usize = ctx
                        .services
                        .values()
                        .map(|s| translate::endpoints(s, ctx).len())
                        .sum();
                    black_box((g, eds))
                })
            },
        );

        // The same, encoded once each into shared `Any` bytes (what a push costs).
        g.bench_with_input(
            BenchmarkId::new("all_resources_encoded", services),
            &ctx,
            |b, ctx| {
                b.iter(|| {
                    let g = translate::generate(&proxy, ctx);
                    let mut n = 0usize;
                    for x in &g.clusters {
                        n += Resource::encode(TypeUrl::Cluster, x.name.as_str(), x)
                            .any
                            .len();
                    }
                    for x in &g.listeners {
                        n += Resource::encode(TypeUrl::Listener, x.name.as_str(), x)
                            .any
                            .len();
                    }
                    for x in &g.routes {
                        n += Resource::encode(TypeUrl::Route, x.name.as_str(), x)
                            .any
                            .len();
                    }
                    for s in ctx.services.values() {
                        for cla in translate::endpoints(s, ctx) {
                            n += Resource::encode(
                                TypeUrl::Endpoint,
                                cla.cluster_name.as_str(),
                                &cla,
                            )
                            .any
                            .len();
                        }
                    }
                    black_box(n)
                })
            },
        );

        // One endpoint change -> the EDS of one cluster (translate + encode).
        let host = ctx.services.keys().next().expect("a service").clone();
        let svc = ctx.services.get(&host).expect("service").clone();
        g.bench_with_input(
            BenchmarkId::new("one_service_eds", services),
            &ctx,
            |b, ctx| {
                b.iter(|| {
                    let v: Vec<_> = translate::endpoints(&svc, ctx)
                        .iter()
                        .map(|cla| {
                            Resource::encode(TypeUrl::Endpoint, cla.cluster_name.as_str(), cla)
                        })
                        .collect();
                    black_box(v)
                })
            },
        );

        // The push engine's endpoint push for that service (new context, EDS
        // recompute, map update), after one full push; no connections.
        let pusher = Pusher::new(
            mesh.registry.clone(),
            mesh.queue.clone(),
            mesh.tunables.clone(),
        );
        pusher.push_now(PushRequest::full("bench"));
        g.bench_function(BenchmarkId::new("engine_endpoint_push", services), |b| {
            b.iter(|| black_box(pusher.push_now(PushRequest::endpoints([host.clone()]))))
        });
        g.bench_function(BenchmarkId::new("engine_full_push", services), |b| {
            b.iter(|| black_box(pusher.push_now(PushRequest::full("bench"))))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
