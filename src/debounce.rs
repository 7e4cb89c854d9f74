//! The one quiet-period loop (`settle`): wait until events stop coming for a
//! while, never longer than a maximum. Below both of its users: the push queue's
//! debounce (`push::debounce`) and the manifest file watcher
//! (`sources::manifests`), each waiting on its own kind of event (`Events`).

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

/// How long to wait for quiet, and for how long at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The period without events that ends a wait.
    pub quiet: Duration,
    /// The longest a wait lasts, counted from its first event, however often
    /// events keep coming.
    pub max: Duration,
}

/// What waiting for the next event saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// An event: the quiet period starts again.
    Event,
    /// A wake-up without an event (left over from one already taken).
    Spurious,
    /// The source is gone: stop waiting.
    Closed,
}

/// A source of events to debounce. `next` must be cancel-safe: `settle` drops
/// it when the quiet period ends first.
pub trait Events {
    fn next(&mut self) -> impl Future<Output = Wake> + Send + '_;
}

/// A file watcher's wake-ups (the manifest source): each message is an event.
impl Events for mpsc::Receiver<()> {
    async fn next(&mut self) -> Wake {
        match self.recv().await {
            Some(()) => Wake::Event,
            None => Wake::Closed,
        }
    }
}

/// Wait until `window.quiet` passes without an event, or until `window.max`
/// has passed since `start` (the first event). An event at or after the cap
/// ends the wait too. Returns when the last event was seen (`start` if none).
pub async fn settle(start: Instant, window: Window, events: &mut impl Events) -> Instant {
    let max = start + window.max;
    let mut last = start;
    loop {
        let deadline = std::cmp::min(last + window.quiet, max);
        tokio::select! {
            _ = sleep_until(deadline) => return last,
            wake = events.next() => match wake {
                Wake::Event => {
                    last = Instant::now();
                    if last >= max {
                        return last;
                    }
                }
                Wake::Spurious => {}
                Wake::Closed => return last,
            }
        }
    }
}
