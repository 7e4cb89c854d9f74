//! Debounce: merge changes that come in quick succession into one push, never
//! delaying a push by more than a maximum (Istio's `PILOT_DEBOUNCE_AFTER` and
//! `PILOT_DEBOUNCE_MAX`), with one difference from Istio: a change that arrives
//! while the queue is idle goes out at once (`Debouncer`).
//!
//! The quiet-period loop itself, `settle`, lives below push and sources
//! (`crate::debounce`): the push queue (`Debouncer`, `debounce`) and the
//! manifest file watcher (`sources::manifests`) both wait through it, each on
//! its own kind of event (`Events`).

use tokio::time::Instant;

use super::{PushQueue, PushRequest};
use crate::config::Tunables;

pub use crate::debounce::{settle, Events, Wake, Window};

impl Window {
    /// The push debounce (`tunables.debounce`, `tunables.debounce_max`).
    pub fn push(tunables: &Tunables) -> Window {
        Window {
            quiet: tunables.debounce,
            max: tunables.debounce_max,
        }
    }
}

/// The push queue during a debounce: each request pushed meanwhile is merged
/// into `req`.
struct Merging<'a> {
    queue: &'a PushQueue,
    req: &'a mut PushRequest,
}

impl Events for Merging<'_> {
    async fn next(&mut self) -> Wake {
        self.queue.changed().await;
        // A wake-up may be left over from a request already taken.
        match self.queue.try_take() {
            Some(more) => {
                self.req.merge(more);
                Wake::Event
            }
            None => Wake::Spurious,
        }
    }
}

/// Istio's debounce, with no fast path: wait for the next request, then keep
/// merging until either `tunables.debounce` passes without a new request or
/// `tunables.debounce_max` has passed since the first one. Returns the merged
/// request and when its first part was taken.
pub async fn debounce(queue: &PushQueue, tunables: &Tunables) -> (PushRequest, Instant) {
    let mut req = queue.next().await;
    let start = Instant::now();
    merge_until_quiet(queue, &mut req, start, Window::push(tunables)).await;
    (req, start)
}

async fn merge_until_quiet(
    queue: &PushQueue,
    req: &mut PushRequest,
    start: Instant,
    window: Window,
) -> Instant {
    let last = settle(
        start,
        window,
        &mut Merging {
            queue,
            req: &mut *req,
        },
    )
    .await;
    // Anything that slipped in between the deadline and now joins this push.
    if let Some(more) = queue.try_take() {
        req.merge(more);
    }
    last
}

/// The push engine's debouncer. The first change after a quiet period (no
/// change for `window.quiet`, and none pending when the previous push ended)
/// is pushed at once; a change that follows another within `window.quiet`
/// starts an ordinary debounce, merging everything that comes until
/// `window.quiet` passes without a change or `window.max` since the first.
/// A burst therefore costs two pushes (its first change, then the rest
/// merged), and churn, where changes never stop, is merged exactly as by
/// `debounce`. Memory stays bounded by the queue's merging.
#[derive(Debug)]
pub struct Debouncer {
    window: Window,
    /// When the last change was taken from the queue.
    last_change: Option<Instant>,
}

impl Debouncer {
    pub fn new(window: Window) -> Debouncer {
        Debouncer {
            window,
            last_change: None,
        }
    }

    /// The next request to push and when its first part was taken.
    pub async fn next(&mut self, queue: &PushQueue) -> (PushRequest, Instant) {
        // A request already pending arrived while the previous push ran:
        // changes are still coming, so it is debounced.
        let (mut req, pending) = match queue.try_take() {
            Some(r) => (r, true),
            None => (queue.next().await, false),
        };
        let start = Instant::now();
        let idle = !pending
            && self
                .last_change
                .is_none_or(|last| start.duration_since(last) >= self.window.quiet);
        let last = if idle {
            start
        } else {
            merge_until_quiet(queue, &mut req, start, self.window).await
        };
        self.last_change = Some(last);
        (req, start)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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

    fn names(req: &PushRequest) -> Vec<&str> {
        req.services.iter().map(|s| &**s).collect()
    }

    /// A change arriving at an idle queue is handed out without any wait, and
    /// so is the next one once a quiet period has passed.
    #[tokio::test(start_paused = true)]
    async fn an_idle_queue_pushes_at_once() {
        let q = PushQueue::new();
        let mut d = Debouncer::new(Window::push(&tunables()));
        let q2 = q.clone();
        let t0 = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            q2.push(PushRequest::endpoints(["a".into()]));
            tokio::time::sleep(Duration::from_millis(300)).await;
            q2.push(PushRequest::endpoints(["b".into()]));
        });
        let (req, started) = d.next(&q).await;
        assert_eq!(names(&req), ["a"]);
        assert_eq!(started - t0, Duration::from_millis(500));
        assert_eq!(
            Instant::now() - t0,
            Duration::from_millis(500),
            "no debounce"
        );
        let (req, _) = d.next(&q).await;
        assert_eq!(names(&req), ["b"]);
        assert_eq!(
            Instant::now() - t0,
            Duration::from_millis(800),
            "no debounce"
        );
    }

    /// In a burst the first change goes out at once and every later one within
    /// the quiet period is merged into a second push, cut at the max delay.
    #[tokio::test(start_paused = true)]
    async fn a_burst_is_merged_after_its_first_change() {
        let q = PushQueue::new();
        let mut d = Debouncer::new(Window::push(&tunables()));
        let q2 = q.clone();
        let t0 = Instant::now();
        // s0 at 0 ms, then s1..s29 every 10 ms (290 ms), then s30 at 2,000 ms.
        tokio::spawn(async move {
            for i in 0..30u32 {
                q2.push(PushRequest::endpoints([format!("s{i:02}").into()]));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep_until(t0 + Duration::from_millis(2000)).await;
            q2.push(PushRequest::endpoints(["s30".into()]));
        });
        let (first, _) = d.next(&q).await;
        assert_eq!(names(&first), ["s00"]);
        assert_eq!(Instant::now() - t0, Duration::ZERO);

        // s01 comes 10 ms after s00: debounced, merged up to s29, pushed 100 ms
        // after s29 (290 + 100 ms).
        let (burst, started) = d.next(&q).await;
        assert_eq!(started - t0, Duration::from_millis(10));
        let want: Vec<String> = (1..30).map(|i| format!("s{i:02}")).collect();
        assert_eq!(names(&burst), want);
        assert_eq!(Instant::now() - t0, Duration::from_millis(390));
        assert!(q.try_take().is_none());

        // Quiet again: the next change goes out at once.
        let (last, _) = d.next(&q).await;
        assert_eq!(names(&last), ["s30"]);
        assert_eq!(Instant::now() - t0, Duration::from_millis(2000));
    }

    /// A change already pending when the engine asks (it came during the
    /// previous push) is debounced, and merging keeps the max delay.
    #[tokio::test(start_paused = true)]
    async fn a_change_pending_after_a_push_is_debounced_and_capped() {
        let q = PushQueue::new();
        let mut d = Debouncer::new(Window::push(&tunables()));
        q.push(PushRequest::endpoints(["a".into()]));
        let q2 = q.clone();
        // Every 30 ms (never quiet), off the 1,000 ms cap: s0 at 30 ms .. s32 at 990 ms.
        let feeder = tokio::spawn(async move {
            for i in 0..100u32 {
                tokio::time::sleep(Duration::from_millis(30)).await;
                q2.push(PushRequest::endpoints([format!("s{i}").into()]));
            }
        });
        let t0 = Instant::now();
        let (req, _) = d.next(&q).await;
        assert_eq!(Instant::now() - t0, Duration::from_millis(1000));
        assert_eq!(req.services.len(), 34, "a plus s0..s32");
        feeder.abort();
    }
}
