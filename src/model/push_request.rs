//! The interface between the registry and the push engine, below both: the
//! registry publishes what changed as a `PushRequest` on a `PushQueue`, and the
//! push engine takes merged requests from the queue and reads the mesh through
//! `ContextSource` (implemented by `registry::Registry`). Istio keeps `PushRequest`
//! in its model package (`pilot/pkg/model/push_context.go`) for the same reason:
//! neither side imports the other.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// What changed since the last push. Requests merge: a full push absorbs any
/// endpoint-only one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushRequest {
    /// Config or service shape changed: recompute everything (CDS/LDS/RDS and EDS).
    pub full: bool,
    /// Hostnames whose endpoints changed (EDS only, when `full` is false).
    pub services: BTreeSet<Arc<str>>,
    /// Why, for logs and metrics (`endpoint`, `config`, `service`, `cluster`...).
    pub reasons: BTreeSet<&'static str>,
}

impl PushRequest {
    pub fn full(reason: &'static str) -> Self {
        PushRequest {
            full: true,
            services: BTreeSet::new(),
            reasons: [reason].into(),
        }
    }

    pub fn endpoints(services: impl IntoIterator<Item = Arc<str>>) -> Self {
        PushRequest {
            full: false,
            services: services.into_iter().collect(),
            reasons: ["endpoint"].into(),
        }
    }

    pub fn merge(&mut self, other: PushRequest) {
        self.full |= other.full;
        self.services.extend(other.services);
        self.reasons.extend(other.reasons);
    }
}

/// A merging queue of push requests: producers never block and memory stays
/// bounded by the number of distinct changed services, however fast they change.
///
/// A std `Mutex` because the critical section is a few field updates and never
/// spans an `.await`.
#[derive(Debug, Clone, Default)]
pub struct PushQueue {
    inner: Arc<(Mutex<Option<PushRequest>>, Notify)>,
}

impl PushQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Merge `req` into the pending request and wake the debouncer.
    pub fn push(&self, req: PushRequest) {
        {
            let mut pending = self.inner.0.lock().unwrap_or_else(|e| e.into_inner());
            match pending.as_mut() {
                Some(p) => p.merge(req),
                None => *pending = Some(req),
            }
        }
        self.inner.1.notify_one();
    }

    /// Take the pending request without waiting.
    pub fn try_take(&self) -> Option<PushRequest> {
        self.inner
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Wait until a request is pending, then take it.
    pub async fn next(&self) -> PushRequest {
        loop {
            if let Some(r) = self.try_take() {
                return r;
            }
            self.inner.1.notified().await;
        }
    }

    /// Wait until something new is pushed (used by the debouncer to restart its
    /// quiet period). Does not take the request.
    pub async fn changed(&self) {
        self.inner.1.notified().await
    }
}

/// Where a push reads the mesh from (implemented by `registry::Registry`, read by
/// `push::Pusher`).
pub trait ContextSource: Send + Sync + 'static {
    fn mesh(&self) -> Arc<crate::model::MeshSettings>;
    fn services(&self) -> Arc<crate::model::service::ServiceMap>;
    fn config(&self) -> Arc<crate::model::istio::ConfigSnapshot>;
    /// TLS Secrets for `credentialName` (none unless a source watches them).
    fn credentials(&self) -> Arc<crate::model::credential::Credentials> {
        Arc::default()
    }
    /// The locality of a proxy whose node carries none, from the registry (its
    /// Pod's Node), as istiod's `setTopologyLabels` fills it in; `None` if unknown.
    fn proxy_locality(&self, _proxy: &crate::model::Proxy) -> Option<crate::model::Locality> {
        None
    }
    /// Whether every source has delivered its first complete state (the
    /// registry's `/ready`). A context read before that may lack whole clusters.
    fn ready(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_merge_and_full_absorbs_eds() {
        let q = PushQueue::new();
        q.push(PushRequest::endpoints(["a".into()]));
        q.push(PushRequest::endpoints(["b".into()]));
        q.push(PushRequest::full("config"));
        let r = q.next().await;
        assert!(r.full);
        assert_eq!(r.services.len(), 2);
        assert!(r.reasons.contains("config") && r.reasons.contains("endpoint"));
        assert!(q.try_take().is_none());
    }
}
