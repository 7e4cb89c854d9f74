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
    from: Option<String>,
    filter: Option<String>,
    limit: Option<String>,
}

/// `/debug/servicez` (`super::servicez`): with `?host=HOST[&from=NS]` one
/// service (registry entry, the VirtualServices and DestinationRules that apply
/// with Istio's host matching, the proxies sent a cluster of it); without, the
/// service list (`?filter=`, `?limit=`). The Services view reads only this.
pub(super) async fn servicez(
    State(s): State<Arc<dyn DebugState>>,
    Query(q): Query<ServiceQuery>,
) -> Response {
    let Some(ctx) = s.context() else {
        return super::json_error(StatusCode::NOT_FOUND, "servicez: no registry to read");
    };
    let services = ctx.services();
    let Some(host) = q.host.filter(|h| !h.is_empty()) else {
        let limit = match q.limit.as_deref() {
            None | Some("") => super::servicez::DEFAULT_LIMIT,
            Some(l) => match l.parse::<usize>() {
                Ok(n) => n,
                Err(_) => {
                    return super::json_error(
                        StatusCode::BAD_REQUEST,
                        format!("limit {l:?} is not a number of services"),
                    )
                }
            },
        };
        let filter = q.filter.unwrap_or_default();
        return super::json_ok(&super::servicez::list(&services, &filter, limit));
    };
    let mut page = super::servicez::one(&services, &ctx.config(), &host, q.from.as_deref());
    let lower = host.to_ascii_lowercase();
    page["proxies"] = json!(super::servicez::receivers(&lower, &*s));
    super::json_ok(&page)
}

/// `/debug/meshz` (`super::meshz`): counts, and per network its clusters and
/// east-west gateways. The Mesh view reads this and `/debug/clusterz`.
pub(super) async fn meshz(State(s): State<Arc<dyn DebugState>>) -> Response {
    let Some(ctx) = s.context() else {
        return super::json_error(StatusCode::NOT_FOUND, "meshz: no registry to read");
    };
    let clusterz = s.clusterz();
    let clusters: std::collections::BTreeMap<String, String> = clusterz
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let name = c["name"].as_str()?;
            let net = c["network"]
                .as_str()
                .unwrap_or(super::meshz::DEFAULT_NETWORK);
            Some((name.to_string(), net.to_string()))
        })
        .collect();
    let syncz = s.syncz();
    let proxies: Vec<super::meshz::ProxyRef<'_>> = syncz
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some(super::meshz::ProxyRef {
                id: p["proxy_id"].as_str()?,
                cluster: p["cluster_id"].as_str().unwrap_or(""),
            })
        })
        .collect();
    super::json_ok(&super::meshz::page(
        &ctx.services(),
        &ctx.mesh(),
        &clusters,
        &proxies,
    ))
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
