//! The dashboard (`/ui` on the debug address): one page of plain JavaScript that
//! reads the debug JSON endpoints (`/debug/syncz`, `/debug/registryz`,
//! `/debug/configz`, `/debug/clusterz`, `/debug/graphz`, `/debug/config_dump`,
//! `/debug/servicez`) and renders them; it holds no state of its own.
//!
//! The assets are compiled into the binary (`include_str!`), so nothing is
//! fetched from a network at run time. They are served with their content type,
//! `Cache-Control: no-cache` with an `ETag` (a browser revalidates and gets 304
//! until the binary changes) and a Content-Security-Policy that allows scripts,
//! styles and requests from the debug address only.
//!
//! Access: the assets hold no mesh data and are served to anyone who can reach
//! the debug address; every piece of data comes from the JSON endpoints, which
//! keep the debug address's rules (`debugAuth`): off loopback the page asks for
//! the bearer token and sends it with each request.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::json;

use super::DebugState;
use crate::xds::TypeUrl;

const INDEX: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// The page's policy: its own scripts, styles and requests only; no frames, no
/// forms, no plugins.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The asset routes (no state, no data).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route(
            "/ui/",
            get(|h: HeaderMap| async move { asset(&h, INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/app.js",
            get(|h: HeaderMap| async move { asset(&h, APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/app.css",
            get(|h: HeaderMap| async move { asset(&h, APP_CSS, "text/css; charset=utf-8") }),
        )
}

fn etag(body: &str) -> String {
    // FNV-1a: stable across runs and builds of the same content.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

fn asset(req: &HeaderMap, body: &'static str, content_type: &'static str) -> Response {
    let tag = etag(body);
    let matches = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut r = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

#[derive(Debug, Deserialize)]
pub(super) struct ServiceQuery {
    host: Option<String>,
}

/// `/debug/servicez?host=HOST`: which connected proxies were sent a cluster of
/// the service (Istio's `outbound|PORT|SUBSET|HOST` and `inbound|PORT||HOST`
/// names), with those cluster names: the Service view's "received by".
pub(super) async fn servicez(
    State(s): State<Arc<dyn DebugState>>,
    Query(q): Query<ServiceQuery>,
) -> Response {
    let Some(host) = q.host.filter(|h| !h.is_empty()) else {
        return super::json_error(StatusCode::BAD_REQUEST, "servicez needs ?host=HOSTNAME");
    };
    let mut receivers = Vec::new();
    for id in s.proxies() {
        let Some(sent) = s.sent(&id) else { continue };
        let clusters: Vec<&str> = sent
            .get(&TypeUrl::Cluster)
            .map(|rs| {
                rs.iter()
                    .map(|r| &*r.name)
                    .filter(|n| n.rsplit('|').next() == Some(host.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        if !clusters.is_empty() {
            receivers.push(json!({ "proxy_id": id, "clusters": clusters }));
        }
    }
    super::json_ok(&json!({ "host": host, "proxies": receivers }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_changes_with_content_and_assets_are_not_empty() {
        assert_ne!(etag(APP_JS), etag(APP_CSS));
        assert_eq!(etag(INDEX), etag(INDEX));
        assert!(INDEX.contains("app.js") && APP_JS.contains("/debug/syncz"));
    }
}
