//! Measurement, not an assertion on time: how long from writing a Pod file until
//! traffic through the real Envoy gateway reaches the new pod. Median over 20 runs,
//! printed. Ignored by default; run it with (see docs/TESTING.md):
//!
//! ```text
//! cargo test --test e2e_convergence -- --ignored --nocapture
//! ```
//!
//! [`pod_change_reaches_every_proxy`] (not ignored; no timing) checks what the
//! measurement times, on several proxies at once: four Envoy gateways (two Delta,
//! two state of the world) on one crossmesh; one Pod file added, then removed;
//! every proxy ends up with exactly the right endpoints for the changed service,
//! and the other services' endpoints stay as they were.

mod support;

use std::time::{Duration, Instant};

use std::net::{Ipv4Addr, SocketAddr};

use support::control_plane::{bootstrap_gateway, GatewayProxy};
use support::envoy::Envoy;
use support::http;
use support::net::free_port;
use support::scenario::{host_of, outbound_cluster, Seed, CLUSTERS};
use support::{wait_for, CONVERGE};

const RUNS: usize = 20;

/// Wait until every proxy in `proxies` holds exactly `want` for the outbound cluster
/// of service `svc`.
async fn wait_every_proxy(proxies: &[&Envoy], svc: &str, want: &[Ipv4Addr], port: u16) {
    let cluster = outbound_cluster(svc);
    let mut want: Vec<SocketAddr> = want
        .iter()
        .map(|ip| SocketAddr::from((*ip, port)))
        .collect();
    want.sort();
    for e in proxies {
        let what = format!("{} holds {want:?} for {cluster}", e.name);
        let (cluster, want) = (&cluster, &want);
        wait_for(&what, CONVERGE, || async move {
            let mut got = e.cluster_hosts(cluster).await?;
            got.sort();
            if &got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_change_reaches_every_proxy() {
    let mut s = Seed::start(false).await;
    s.wait_all_hosts().await;
    // Three more gateway replicas (`.2`..`.4`), SotW and Delta alternating; the
    // Seed's own gateway is Delta. They share the Gateway's port on 0.0.0.0.
    let mut extra = Vec::new();
    for i in 1..=3u8 {
        let mut gw = GatewayProxy::ingress(s.subnet.ip(1 + i), "cluster1", i % 2 == 1);
        gw.name = format!("istio-ingressgateway-{i}");
        let yaml = bootstrap_gateway(&gw, s.cp.xds, free_port());
        let e = Envoy::start(&format!("gateway-{i}"), &yaml).await;
        e.wait_ready(CONVERGE).await;
        extra.push(e);
    }
    let proxies: Vec<&Envoy> = std::iter::once(&s.envoy).chain(extra.iter()).collect();
    // crossmesh serves four distinct proxies.
    wait_for("four proxies on /debug/syncz", CONVERGE, || async {
        let j = s.cp.json("/debug/syncz").await?;
        let mut ids: Vec<String> = j
            .as_array()
            .or_else(|| j["connections"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|c| c["proxy_id"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids.dedup();
        if ids.len() == 4 {
            Ok(())
        } else {
            Err(format!("{ids:?}: {j}"))
        }
    })
    .await;
    let unchanged = |s: &Seed| [(CLUSTERS[1], s.pod_ip(2, 1)), (CLUSTERS[2], s.pod_ip(3, 1))];
    for (svc, ip) in unchanged(&s) {
        wait_every_proxy(&proxies, svc, &[ip], s.pod_port).await;
    }
    wait_every_proxy(&proxies, CLUSTERS[0], &[s.pod_ip(1, 1)], s.pod_port).await;

    // One Pod added: every proxy gets both pods of cluster1.
    drop(proxies);
    let pod = s.put_pod(1, 2, "b", true).await;
    let proxies: Vec<&Envoy> = std::iter::once(&s.envoy).chain(extra.iter()).collect();
    wait_every_proxy(
        &proxies,
        CLUSTERS[0],
        &[s.pod_ip(1, 1), s.pod_ip(1, 2)],
        s.pod_port,
    )
    .await;
    s.wait_answer(&host_of("cluster1"), &pod, CONVERGE).await;
    // Removed: every proxy is back to pod-a only; nothing else moved.
    s.mesh.remove_cluster_file("cluster1", "pod-b.yaml");
    wait_every_proxy(&proxies, CLUSTERS[0], &[s.pod_ip(1, 1)], s.pod_port).await;
    for (svc, ip) in unchanged(&s) {
        wait_every_proxy(&proxies, svc, &[ip], s.pod_port).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --ignored --nocapture"]
async fn pod_file_change_to_traffic() {
    let mut s = Seed::start(false).await;
    s.wait_all_hosts().await;
    let host = host_of("cluster1");
    // Start the backend once; each run adds and removes only the Pod file.
    let pod = s.put_pod(1, 2, "b", true).await;
    s.wait_answer(&host, &pod, CONVERGE).await;
    s.mesh.remove_cluster_file("cluster1", "pod-b.yaml");
    s.wait_hosts("cluster1", &[s.pod_ip(1, 1)]).await;

    let mut samples = Vec::with_capacity(RUNS);
    for run in 0..RUNS {
        let before = s.backend(&pod).requests();
        let t0 = Instant::now();
        s.put_pod(1, 2, "b", true).await;
        // Tight request loop; round robin over two pods reaches the new one within
        // two requests once Envoy has it.
        loop {
            let _ = http::get(s.gw_addr(), &host, "/").await;
            if s.backend(&pod).requests() > before {
                break;
            }
            assert!(
                t0.elapsed() < CONVERGE,
                "run {run}: pod never received traffic"
            );
        }
        let dt = t0.elapsed();
        samples.push(dt);
        s.mesh.remove_cluster_file("cluster1", "pod-b.yaml");
        s.wait_hosts("cluster1", &[s.pod_ip(1, 1)]).await;
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = (ms(samples[RUNS / 2 - 1]) + ms(samples[RUNS / 2])) / 2.0;
    println!(
        "pod file change -> traffic at the pod, {RUNS} runs: median {median:.1} ms, min {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        ms(samples[0]),
        ms(samples[RUNS * 9 / 10 - 1]),
        ms(samples[RUNS - 1])
    );
    println!(
        "samples (ms): {:?}",
        samples
            .iter()
            .map(|d| (ms(*d) * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
}
