//! Debounce: wait for a quiet period after the last change before pushing, merging
//! every request that arrives meanwhile, but never delay a push by more than the
//! maximum (Istio's `PILOT_DEBOUNCE_AFTER` and `PILOT_DEBOUNCE_MAX`).

use tokio::time::{sleep_until, Instant};

use super::{PushQueue, PushRequest};
use crate::config::Tunables;

/// Wait for the next request, then keep merging until either `tunables.debounce`
/// passes without a new request or `tunables.debounce_max` has passed since the
/// first one. Returns the merged request and when its first part was taken.
pub async fn debounce(queue: &PushQueue, tunables: &Tunables) -> (PushRequest, Instant) {
    let mut req = queue.next().await;
    let start = Instant::now();
    let max = start + tunables.debounce_max;
    let mut last = start;
    loop {
        let deadline = std::cmp::min(last + tunables.debounce, max);
        tokio::select! {
            _ = sleep_until(deadline) => break,
            _ = queue.changed() => {
                // A wake-up may be left over from a request already taken.
                if let Some(more) = queue.try_take() {
                    req.merge(more);
                    last = Instant::now();
                }
            }
        }
    }
    // Anything that slipped in between the deadline and now joins this push.
    if let Some(more) = queue.try_take() {
        req.merge(more);
    }
    (req, start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tunables() -> Tunables {
        Tunables {
            debounce: Duration::from_millis(100),
            debounce_max: Duration::from_millis(1000),
            ..Tunables::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_the_quiet_period_and_merges() {
        let q = PushQueue::new();
        let t0 = Instant::now();
        q.push(PushRequest::endpoints(["a".into()]));
        let q2 = q.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(60)).await;
            q2.push(PushRequest::endpoints(["b".into()]));
        });
        let (req, _) = debounce(&q, &tunables()).await;
        let waited = Instant::now() - t0;
        // The second request restarted the quiet period: 60 + 100 ms.
        assert_eq!(waited, Duration::from_millis(160));
        assert!(!req.full);
        assert_eq!(req.services.len(), 2);
        assert!(q.try_take().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_of_changes_is_cut_at_the_max_delay() {
        let q = PushQueue::new();
        let q2 = q.clone();
        let feeder = tokio::spawn(async move {
            for i in 0..100u32 {
                q2.push(PushRequest::endpoints([format!("s{i}").into()]));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        tokio::task::yield_now().await;
        let t0 = Instant::now();
        let (req, _) = debounce(&q, &tunables()).await;
        let waited = Instant::now() - t0;
        assert!(
            waited >= Duration::from_millis(1000) && waited < Duration::from_millis(1050),
            "{waited:?}"
        );
        assert!(req.services.len() >= 20, "{}", req.services.len());
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn full_absorbs_endpoint_requests() {
        let q = PushQueue::new();
        q.push(PushRequest::endpoints(["a".into()]));
        q.push(PushRequest::full("config"));
        let (req, _) = debounce(&q, &tunables()).await;
        assert!(req.full);
        assert!(req.reasons.contains("config") && req.reasons.contains("endpoint"));
    }
}
