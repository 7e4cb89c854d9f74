//! Measurement, not an assertion on time: how long from writing a Pod file until
//! traffic through the real Envoy gateway reaches the new pod. Median over 20 runs,
//! printed. Ignored by default; run it with (see docs/TESTING.md):
//!
//! ```text
//! cargo test --test e2e_convergence -- --ignored --nocapture
//! ```

mod support;

use std::time::{Duration, Instant};

use support::http;
use support::scenario::{host_of, Seed};
use support::CONVERGE;

const RUNS: usize = 20;

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
