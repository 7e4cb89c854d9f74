//! Kubernetes API clients, shared by the sources (member clusters, config
//! clusters) and security (TokenReview, the CA's Secret, the root ConfigMaps,
//! agent tokens): kubeconfig and in-cluster clients without kube-client's own
//! retries behind a watch pacer, the watch stream that re-lists on HTTP 410, the
//! retry backoff, and errors explained in an operator's terms. The watchers
//! themselves live in `sources::kube`.

pub mod in_cluster;

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::StreamExt;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::Client;
use tokio::sync::mpsc;
use tonic::codegen::http::{Request, Response};
use tracing::debug;

/// A watch that ended sooner than this after it opened counts as "closed at once"
/// for the pacer.
pub const MIN_WATCH_LIFETIME: Duration = Duration::from_secs(1);
/// Longest pacing delay for a watch that keeps closing at once.
pub const MAX_WATCH_PACE: Duration = Duration::from_secs(30);

/// First retry delay of a failed list or watch (see [`WatchBackoff`]).
pub const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest retry delay of a failed list or watch (see [`WatchBackoff`]).
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A failure this long after the previous one starts again from
/// [`WATCH_BACKOFF_MIN`] (see [`WatchBackoff`]).
pub const WATCH_BACKOFF_RESET: Duration = Duration::from_secs(60);

/// Retry delays of every watcher of this crate (member clusters, Istio config,
/// remote secrets) after a failed list or watch request.
///
/// Exponential from [`WATCH_BACKOFF_MIN`], doubling per consecutive failure, capped
/// at [`WATCH_BACKOFF_MAX`]; each delay is jittered *down* by up to a quarter, so
/// clusters lost together do not retry in lockstep and no delay exceeds the cap.
/// It restarts from the minimum on the first event after recovery (kube-rs's
/// `StreamBackoff` resets it on every `Ok`) and, through kube-rs's
/// `ResetTimerBackoff`, when a failure comes [`WATCH_BACKOFF_RESET`] after the
/// previous one.
///
/// Why not kube-rs's `DefaultBackoff` (client-go's reflector values: 800 ms
/// doubling to 30 s, with jitter): it spares a struggling API server, but after an
/// outage of ~20 s the next attempt may come up to 30 s after the server is back,
/// and the cluster's endpoints stay stale all that time. With a 5 s cap a dead
/// cluster is retried at most every ~5 s (≥ 375 ms apart even on the first
/// failures, one request per watched kind): prompt recovery, and still no hot loop.
/// Watches that the server closes cleanly at once are paced by [`WatchPacer`].
pub type WatchBackoff = kube::runtime::utils::ResetTimerBackoff<CappedBackoff>;

/// A fresh [`WatchBackoff`], for `WatchStreamExt::backoff`.
pub fn watch_backoff() -> WatchBackoff {
    kube::runtime::utils::ResetTimerBackoff::new(CappedBackoff::default(), WATCH_BACKOFF_RESET)
}

/// The exponential part of [`WatchBackoff`]: [`WATCH_BACKOFF_MIN`] x 2^n, capped
/// at [`WATCH_BACKOFF_MAX`], minus a random 0-25 %.
#[derive(Debug, Default, Clone)]
pub struct CappedBackoff {
    /// Failures since the last reset.
    failures: u32,
}

impl CappedBackoff {
    /// The delay before jitter after `failures` earlier failures.
    fn base(failures: u32) -> Duration {
        WATCH_BACKOFF_MIN
            .saturating_mul(1u32 << failures.min(16))
            .min(WATCH_BACKOFF_MAX)
    }
}

impl Iterator for CappedBackoff {
    type Item = Duration;

    /// Never `None`: a watcher is retried for as long as its cluster is registered.
    fn next(&mut self) -> Option<Duration> {
        let base = Self::base(self.failures);
        self.failures = self.failures.saturating_add(1);
        Some(base.mul_f64(1.0 - 0.25 * fastrand::f64()))
    }
}

impl kube::runtime::utils::Backoff for CappedBackoff {
    fn reset(&mut self) {
        self.failures = 0;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("kubeconfig {origin}: {reason}")]
    Kubeconfig { origin: String, reason: String },
    #[error("cluster {0:?} is not read from a kubeconfig")]
    NotKubeconfig(String),
}

// ---------------------------------------------------------------------------
// Clients

/// Build a client from kubeconfig YAML. `origin` names it in errors (a file path,
/// or `secret NS/NAME key K`).
pub async fn client_from_kubeconfig(
    text: &str,
    context: Option<&str>,
    origin: &str,
) -> Result<(Client, WatchHealth), KubeSourceError> {
    let bad = |reason: String| KubeSourceError::Kubeconfig {
        origin: origin.to_string(),
        reason,
    };
    let kc =
        Kubeconfig::from_yaml(text).map_err(|e| bad(format!("not a valid kubeconfig: {e}")))?;
    if let Some(ctx) = context {
        if !kc.contexts.iter().any(|c| c.name == ctx) {
            return Err(bad(format!("context {ctx:?} is not defined")));
        }
    }
    let hints = CredentialHints::of(&kc, context);
    let opts = KubeConfigOptions {
        context: context.map(str::to_string),
        ..KubeConfigOptions::default()
    };
    let cfg = kube::Config::from_custom_kubeconfig(kc, &opts)
        .await
        .map_err(|e| bad(hints.refine(describe_chain(&e))))?;
    paced_client(cfg, hints).map_err(bad)
}

/// The client every watcher of this crate uses: kube-client without its own
/// retries ([`without_client_retries`]) behind a [`WatchPacer`]. Errors are
/// explained in the kubeconfig's terms (`hints`).
fn paced_client(
    cfg: kube::Config,
    hints: CredentialHints,
) -> Result<(Client, WatchHealth), String> {
    let ns = cfg.default_namespace.clone();
    let inner = Client::try_from(without_client_retries(cfg))
        .map_err(|e| hints.refine(describe_chain(&e)))?;
    let health = WatchHealth {
        hints: Arc::new(hints),
        ..WatchHealth::default()
    };
    let pacer = WatchPacer {
        inner,
        state: Arc::new(Mutex::new(HashMap::new())),
        health: health.clone(),
    };
    Ok((Client::new(pacer, ns), health))
}

/// Turn off kube-client's own retries of 429, 503 and 504 answers.
///
/// kube-client retries those up to 15 times with a backoff that grows to
/// minutes: an API server answering 503 showed no reason on `/debug/clusterz` for
/// about 4.5 minutes, and its watches were not re-tried on our schedule. The
/// watchers of this crate already retry every failed request with
/// [`WatchBackoff`] (at most 5 s apart), so the failure is reported at once and
/// the cluster is re-tried promptly either way.
fn without_client_retries(mut cfg: kube::Config) -> kube::Config {
    cfg.default_retry = false;
    cfg
}

/// Read a kubeconfig file and build a client.
pub async fn client_from_file(
    path: &Path,
    context: Option<&str>,
) -> Result<(Client, WatchHealth), KubeSourceError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| KubeSourceError::Kubeconfig {
        origin: origin.clone(),
        reason: format!("cannot read: {e}"),
    })?;
    client_from_kubeconfig(&text, context, &origin).await
}

/// Successful watch starts seen by a client's pacer, per resource plural: the
/// signal that a lost cluster is reachable again even when nothing changed in it.
///
/// It also carries what the client's kubeconfig said about trust and
/// credentials ([`CredentialHints`]), so a failure can be explained in the
/// kubeconfig's terms.
#[derive(Debug, Clone, Default)]
pub struct WatchHealth {
    tx: Arc<Mutex<Option<mpsc::UnboundedSender<String>>>>,
    pub(crate) hints: Arc<CredentialHints>,
}

/// What a kubeconfig's chosen context says about trust and credentials, for
/// error messages only (never the secrets themselves).
#[derive(Debug, Clone, Default)]
pub struct CredentialHints {
    /// The cluster entry names no `certificate-authority(-data)`: the server's
    /// certificate is checked against the system roots only.
    pub system_roots_only: bool,
    /// The user's `exec.command`, when it authenticates through a credential
    /// plugin.
    pub exec_command: Option<String>,
}

impl CredentialHints {
    /// Read the hints of `context` (else the current context) of `kc`.
    fn of(kc: &Kubeconfig, context: Option<&str>) -> CredentialHints {
        let ctx_name = context
            .map(str::to_string)
            .or_else(|| kc.current_context.clone());
        let ctx = kc
            .contexts
            .iter()
            .find(|c| Some(&c.name) == ctx_name.as_ref())
            .and_then(|c| c.context.as_ref());
        let cluster = ctx.and_then(|c| {
            kc.clusters
                .iter()
                .find(|n| n.name == c.cluster)
                .and_then(|n| n.cluster.as_ref())
        });
        let user = ctx.and_then(|c| {
            let u = c.user.as_deref()?;
            kc.auth_infos
                .iter()
                .find(|n| n.name == u)
                .and_then(|n| n.auth_info.as_ref())
        });
        CredentialHints {
            system_roots_only: cluster.is_some_and(|c| {
                c.server.as_deref().is_some_and(|s| s.starts_with("https:"))
                    && c.certificate_authority.is_none()
                    && c.certificate_authority_data.is_none()
                    && c.insecure_skip_tls_verify != Some(true)
            }),
            exec_command: user
                .and_then(|u| u.exec.as_ref())
                .and_then(|e| e.command.clone()),
        }
    }

    /// `reason` (from [`explain`]) completed with what the kubeconfig says.
    pub fn refine(&self, reason: String) -> String {
        if reason.contains("certificate verify failed") && self.system_roots_only {
            return format!(
                "{reason} (the kubeconfig names no certificate-authority, so only the \
                 system roots are trusted: add the API server's CA as \
                 certificate-authority-data)"
            );
        }
        if reason.contains("unable to run auth exec") || reason.contains("failed exec auth") {
            if let Some(cmd) = &self.exec_command {
                return format!(
                    "credential plugin {cmd:?} (the kubeconfig user's exec.command) could \
                     not be run; is it installed and on PATH?: {reason}"
                );
            }
        }
        reason
    }
}

impl WatchHealth {
    pub(crate) fn subscribe(&self) -> mpsc::UnboundedReceiver<String> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.tx.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        rx
    }

    fn report(&self, plural: String) {
        if let Some(tx) = &*self.tx.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = tx.send(plural);
        }
    }
}

#[derive(Debug, Default)]
struct Pace {
    /// When the last watch on this path got its 2xx response.
    opened: Option<Instant>,
    delay: Duration,
}

/// A client middleware that paces WATCH requests: a watch that opened fine and
/// ended within [`MIN_WATCH_LIFETIME`] makes the next one on the same path wait,
/// doubling from 200 ms up to [`MAX_WATCH_PACE`]. kube-rs re-watches immediately
/// after a clean end of stream (no error, so its own backoff never applies); a
/// server or proxy that closes every watch at once would otherwise be hit in a
/// tight loop. Failed requests are left to the watcher's own backoff.
#[derive(Clone)]
pub struct WatchPacer {
    inner: Client,
    state: Arc<Mutex<HashMap<String, Pace>>>,
    health: WatchHealth,
}

impl tonic::codegen::Service<Request<kube::client::Body>> for WatchPacer {
    type Response = Response<kube::client::Body>;
    type Error = kube::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, kube::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), kube::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<kube::client::Body>) -> Self::Future {
        let is_watch = req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
        let path = req.uri().path().to_string();
        let inner = self.inner.clone();
        let state = self.state.clone();
        let health = self.health.clone();
        Box::pin(async move {
            if !is_watch {
                return inner.send(req).await;
            }
            let delay = {
                let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                let p = st.entry(path.clone()).or_default();
                match p.opened.take() {
                    Some(t) if t.elapsed() < MIN_WATCH_LIFETIME => {
                        p.delay = (p.delay * 2).clamp(Duration::from_millis(200), MAX_WATCH_PACE);
                    }
                    _ => p.delay = Duration::ZERO,
                }
                p.delay
            };
            if !delay.is_zero() {
                debug!(path, ?delay, "watch closed at once; pacing the next one");
                tokio::time::sleep(delay).await;
            }
            let resp = inner.send(req).await?;
            if resp.status().is_success() {
                state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(path.clone())
                    .or_default()
                    .opened = Some(Instant::now());
                if let Some(plural) = path.rsplit('/').next() {
                    health.report(plural.to_string());
                }
            }
            Ok(resp)
        })
    }
}

// ---------------------------------------------------------------------------
// Errors an operator can act on

/// The whole source chain of an error, one line.
pub(crate) fn describe_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// Turn a kube client error into a reason an operator can act on.
pub fn explain(e: &kube::Error) -> String {
    let chain = describe_chain(e);
    let dbg = format!("{e:?}");
    let find_status = |e: &kube::Error| -> Option<(u16, String)> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(x) = cur {
            if let Some(kube::Error::Api(st)) = x.downcast_ref::<kube::Error>() {
                return Some((st.code, st.message.clone()));
            }
            cur = x.source();
        }
        None
    };
    if let Some((code, msg)) = find_status(e) {
        return match code {
            401 => format!(
                "unauthorized (HTTP 401): the kubeconfig's credentials are invalid or expired: {msg}"
            ),
            403 => format!(
                "forbidden (HTTP 403): the credentials lack read RBAC (see deploy/rbac.yaml): {msg}"
            ),
            429 => format!(
                "the API server is throttling requests (HTTP 429 Too Many Requests); \
                 retrying with backoff: {msg}"
            ),
            500..=599 => format!(
                "the API server failed (HTTP {code}); retrying with backoff: {msg}"
            ),
            c => format!("API server answered HTTP {c}: {msg}"),
        };
    }
    if dbg.contains("UnknownIssuer") || dbg.contains("BadSignature") {
        return format!(
            "TLS: certificate verify failed: the API server's certificate is not signed \
             by the kubeconfig's certificate-authority (wrong CA?): {chain}"
        );
    }
    if dbg.contains("NotValidForName") {
        return format!(
            "TLS: certificate verify failed: the API server's certificate does not name \
             its address: {chain}"
        );
    }
    if dbg.contains("Expired") && dbg.contains("Certificate") {
        return format!(
            "TLS: certificate verify failed: the API server's certificate has expired: {chain}"
        );
    }
    // The server sent a TLS alert about our certificate: it wants one, or does not
    // trust the one the kubeconfig presents.
    const CLIENT_CERT_ALERTS: [&str; 6] = [
        "UnknownCA",
        "CertificateRequired",
        "BadCertificate",
        "CertificateUnknown",
        "UnsupportedCertificate",
        "CertificateExpired",
    ];
    if dbg.contains("AlertReceived")
        && CLIENT_CERT_ALERTS
            .iter()
            .any(|a| dbg.contains(&format!("AlertReceived({a})")))
    {
        return format!(
            "TLS: the API server refused the client certificate (the kubeconfig's \
             client-certificate is missing, expired or not signed by a CA the server \
             trusts): {chain}"
        );
    }
    if matches!(e, kube::Error::SerdeError(_)) || dbg.contains("SerdeError") {
        return format!(
            "the API server answered with something that is not Kubernetes JSON (a proxy \
             or a wrong address?): {chain}"
        );
    }
    if dbg.contains("ConnectionRefused") || chain.contains("onnection refused") {
        return format!("cannot connect: connection refused: {chain}");
    }
    chain
}

/// The reason a watcher error gives, and whether it means the cluster is lost
/// (as opposed to the normal 410 Gone that triggers a re-list).
pub(crate) fn explain_watcher(e: &watcher::Error) -> (String, bool) {
    match e {
        watcher::Error::WatchError(st) if st.code == 410 => (
            format!("watch expired (410 Gone), re-listing: {}", st.message),
            false,
        ),
        watcher::Error::WatchStartFailed(kube::Error::Api(st)) if st.code == 410 => (
            format!(
                "watch refused as expired (HTTP 410), re-listing: {}",
                st.message
            ),
            false,
        ),
        watcher::Error::WatchError(st) => (
            format!(
                "watch error HTTP {}: {} ({})",
                st.code, st.message, st.reason
            ),
            true,
        ),
        watcher::Error::InitialListFailed(e) => (format!("list failed: {}", explain(e)), true),
        watcher::Error::WatchStartFailed(e) => (format!("watch failed: {}", explain(e)), true),
        watcher::Error::WatchFailed(e) => (format!("watch broke: {}", explain(e)), true),
        other => (other.to_string(), true),
    }
}

/// The watch stream every watcher of this crate uses: kube-rs's `watcher` that
/// also re-lists when the API server refuses a *resumed* watch with HTTP 410,
/// retried with [`WatchBackoff`].
///
/// A resourceVersion can expire two ways. The watch cache answers HTTP 200 and
/// then an `ERROR` event with code 410; kube-rs re-lists on that. A server that
/// serves the watch from etcd (or through a proxy that maps the status) answers
/// the watch request itself with HTTP 410 `Expired`/`Gone`; kube-rs 5 treats that
/// as a failed watch start and retries the same, expired resourceVersion for
/// ever, so the cluster would never leave its last-known state. client-go's
/// reflector re-lists in both cases (`isExpiredError` on the `Watch` call), and so
/// does this stream: on a watch start failed with 410 it reports the error (the
/// backoff applies, the reason is logged) and starts a fresh watcher, whose first
/// step is a full list (`Init` .. `InitDone`).
pub fn relisting_watcher<K>(
    api: Api<K>,
    cfg: watcher::Config,
) -> BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let fresh = move || watcher(api.clone(), cfg.clone()).boxed();
    let first = fresh();
    let relisting = futures::stream::unfold((first, fresh), |(mut inner, fresh)| async move {
        let ev = inner.next().await?;
        if matches!(&ev, Err(e) if is_expired_watch_start(e)) {
            inner = fresh();
        }
        Some((ev, (inner, fresh)))
    });
    init_after_success(relisting.boxed())
        .backoff(watch_backoff())
        .boxed()
}

/// kube-rs's watcher yields `Event::Init` *before* each list attempt, and
/// `StreamBackoff` resets on every `Ok`: a list that kept failing (a cluster
/// down, a CRD not installed) was retried at the first delay (~0.5 s) for
/// ever instead of backing off to [`WATCH_BACKOFF_MAX`]. This holds each
/// `Init` back until the attempt yields something, and drops it when that is
/// an error (the next attempt yields its own `Init`), so only a list that
/// succeeds resets the backoff.
fn init_after_success<T, E>(
    inner: BoxStream<'static, Result<watcher::Event<T>, E>>,
) -> BoxStream<'static, Result<watcher::Event<T>, E>>
where
    T: Send + 'static,
    E: Send + 'static,
{
    type Item<T, E> = Result<watcher::Event<T>, E>;
    futures::stream::unfold(
        (inner, None::<Item<T, E>>),
        |(mut inner, queued)| async move {
            if let Some(item) = queued {
                return Some((item, (inner, None)));
            }
            let ev = inner.next().await?;
            if !matches!(ev, Ok(watcher::Event::Init)) {
                return Some((ev, (inner, None)));
            }
            match inner.next().await {
                None => Some((ev, (inner, None))),
                Some(Err(e)) => Some((Err(e), (inner, None))),
                Some(next) => Some((ev, (inner, Some(next)))),
            }
        },
    )
    .boxed()
}

/// A watch request answered with HTTP 410: its resourceVersion has expired.
fn is_expired_watch_start(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchStartFailed(kube::Error::Api(st)) if st.code == 410)
}

/// Build a client, with the crate's watch pacing, from an already resolved
/// `kube::Config` (the in-cluster service account, `sources::in_cluster`).
/// `origin` names it in errors.
pub fn client_from_config(
    cfg: kube::Config,
    origin: &str,
) -> Result<(Client, WatchHealth), KubeSourceError> {
    paced_client(cfg, CredentialHints::default()).map_err(|reason| KubeSourceError::Kubeconfig {
        origin: origin.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list that keeps failing backs off to the cap: kube-rs's `Init`
    /// before each attempt must not reset the backoff. A list that succeeds
    /// still delivers its `Init` first, and resets it.
    #[tokio::test(start_paused = true)]
    async fn a_list_that_keeps_failing_backs_off_and_init_comes_only_with_a_list() {
        type Ev = Result<watcher::Event<u32>, &'static str>;
        let mut items: Vec<Ev> = Vec::new();
        for _ in 0..6 {
            items.push(Ok(watcher::Event::Init));
            items.push(Err("list failed"));
        }
        items.push(Ok(watcher::Event::Init));
        items.push(Ok(watcher::Event::InitApply(7)));
        items.push(Ok(watcher::Event::InitDone));
        items.push(Err("watch broke"));
        let mut s = init_after_success(futures::stream::iter(items).boxed())
            .backoff(watch_backoff())
            .boxed();
        let start = tokio::time::Instant::now();
        let mut errors = Vec::new();
        let mut seen = Vec::new();
        while let Some(ev) = s.next().await {
            match ev {
                Err(_) => errors.push(start.elapsed()),
                Ok(watcher::Event::Init) => seen.push("init"),
                Ok(watcher::Event::InitApply(_)) => seen.push("apply"),
                Ok(watcher::Event::InitDone) => seen.push("done"),
                Ok(_) => seen.push("other"),
            }
        }
        assert_eq!(errors.len(), 7);
        let gaps: Vec<Duration> = errors.windows(2).map(|w| w[1] - w[0]).collect();
        // Delays before the 2nd..6th failure: 0.5, 1, 2, 4, 5 s, each minus up
        // to a quarter; with the reset they all stayed at ~0.5 s.
        let floors = [0.375, 0.75, 1.5, 3.0, 3.75];
        for (gap, floor) in gaps.iter().zip(floors) {
            assert!(gap.as_secs_f64() >= floor, "retry gaps {gaps:?}");
        }
        assert_eq!(
            seen,
            ["init", "apply", "done"],
            "an Init of a failed list was delivered"
        );
        // The successful list reset the backoff: the error after it is
        // retried at the first delay again (it ends the stream here, so the
        // gap to it is that of the list's own retry: at most 5 s).
        assert!(gaps[5] <= WATCH_BACKOFF_MAX, "retry gaps {gaps:?}");
    }
}
