//! Measurement, not an assertion on time: from a Pod becoming Ready in a fake
//! Kubernetes API server until the real Envoy gateway routes a request to it.
//! Median over 20 runs, printed. Ignored by default; run it with:
//!
//! ```text
//! cargo test --release --test kube_ready_latency -- --ignored --nocapture
//! ```
//!
//! Setup: the seed scenario from three fake API servers ([`kube_seed`]). Each run
//! creates `cluster1-pod-b` not Ready and waits until crossmesh has listed it (on
//! `/debug/registryz`, not ready), then flips its Ready condition to True (t0) and
//! sends requests for `cluster1.imroc.cc` in a tight loop until pod-b's backend has
//! seen one. Then the pod is deleted and the run waits until Envoy dropped it. The
//! figure includes the API server's watch event, the kube source, the push debounce
//! (100 ms by default), translation, the Delta xDS push and Envoy applying the EDS.
//!
//! [`pod_ready_flip_routes_and_delete_drops`] (not ignored; no timing) runs the same
//! cycle a few times and checks what each step must do: not Ready, pod-b is listed
//! but neither in Envoy nor answering; Ready, Envoy holds both pods and pod-b
//! answers; not Ready again, and then deleted, Envoy holds pod-a only and pod-b
//! gets nothing more.

mod support;

#[path = "support/kube_api.rs"]
mod kube_api;
#[path = "support/kube_seed.rs"]
mod kube_seed;

use std::time::{Duration, Instant};

use kube_seed::{KubeSeed, Layout};
use support::scenario::host_of;
use support::{http, wait_for, CONVERGE};

const RUNS: usize = 20;

/// One cycle on `cluster1`: pod-b created not Ready, made Ready, made not Ready
/// again, deleted. Checks
/// each step's effect and returns the time from the Ready flip (t0) until pod-b's
/// backend saw a request.
async fn cycle(s: &mut KubeSeed, run: usize) -> Duration {
    let host = host_of("cluster1");
    let pod = s.put_pod(1, 2, "b", false).await;
    wait_for("pod-b listed not ready", CONVERGE, || async {
        let eps = s.registry_endpoints(1).await?;
        if eps.len() == 2 && eps.iter().filter(|e| e["ready"] == true).count() == 1 {
            Ok(())
        } else {
            Err(format!("{eps:?}"))
        }
    })
    .await;
    // Not Ready: not routed.
    s.wait_hosts(1, &[1]).await;
    let before = s.backend(&pod).requests();
    let bodies = http::get_many(s.gw_addr(), &host, 4).await;
    assert_eq!(
        bodies,
        vec!["cluster1-pod-a"; 4],
        "run {run}: pod-b not Ready"
    );
    assert_eq!(
        s.backend(&pod).requests(),
        before,
        "run {run}: pod-b not Ready"
    );

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
    s.wait_hosts(1, &[1, 2]).await;

    // Not Ready again: out of Envoy, no more traffic.
    s.put_pod(1, 2, "b", false).await;
    s.wait_hosts(1, &[1]).await;
    let unready = s.backend(&pod).requests();
    let bodies = http::get_many(s.gw_addr(), &host, 4).await;
    assert_eq!(
        bodies,
        vec!["cluster1-pod-a"; 4],
        "run {run}: pod-b not Ready again"
    );
    assert_eq!(
        s.backend(&pod).requests(),
        unready,
        "run {run}: pod-b not Ready again"
    );

    s.delete_pod(1, "b");
    s.wait_hosts(1, &[1]).await;
    let after = s.backend(&pod).requests();
    let bodies = http::get_many(s.gw_addr(), &host, 4).await;
    assert_eq!(
        bodies,
        vec!["cluster1-pod-a"; 4],
        "run {run}: pod-b deleted"
    );
    assert_eq!(
        s.backend(&pod).requests(),
        after,
        "run {run}: pod-b deleted"
    );
    dt
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_ready_flip_routes_and_delete_drops() {
    let mut s = KubeSeed::start(Layout::default()).await;
    s.wait_answer(1, "cluster1-pod-a").await;
    for run in 0..3 {
        cycle(&mut s, run).await;
    }
    // The other clusters were not touched.
    s.wait_hosts(2, &[1]).await;
    s.wait_hosts(3, &[1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --ignored --nocapture"]
async fn pod_ready_in_api_server_to_traffic() {
    let mut s = KubeSeed::start(Layout::default()).await;
    s.wait_answer(1, "cluster1-pod-a").await;
    let mut samples = Vec::with_capacity(RUNS);
    for run in 0..RUNS {
        samples.push(cycle(&mut s, run).await);
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = (ms(samples[RUNS / 2 - 1]) + ms(samples[RUNS / 2])) / 2.0;
    println!(
        "pod Ready in API server -> traffic at the pod, {RUNS} runs: median {median:.1} ms, min {:.1} ms, p90 {:.1} ms, max {:.1} ms",
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
