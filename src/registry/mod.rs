//! The registry: the merged endpoint index across member clusters, and the store of
//! validated Istio config. Sources write here; every write that changes what
//! proxies should see enqueues a `PushRequest`.
