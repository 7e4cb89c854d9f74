//! `crossmesh status`: `/debug/syncz` of a running control plane as a table in the
//! terminal, like `istioctl proxy-status`: one row per connected proxy stream
//! (sorted by name), per
//! xDS type `SYNCED`, `NOT SENT`, `STALE`, `STALE (Never Acknowledged)` or
//! `NACKED`, with each NACK's error text printed under the table.
//!
//! The states are read from the versions and nonces `/debug/syncz` reports (the
//! same rules the dashboard's Proxy view applies, `ui/app.js` `xdsState`):
//! - no request for the type on the stream, or nothing sent: `NOT SENT`;
//! - a NACK since the last ACK: `NACKED`;
//! - the last nonce sent is the last nonce acknowledged (or, on a resumed Delta
//!   stream, the version the proxy said it holds is the one sent): `SYNCED`;
//! - never acknowledged on this stream: `STALE (Never Acknowledged)`;
//! - otherwise `STALE` (a newer push is not acknowledged yet).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The xDS types in the table's column order, as (column, type URL suffix).
pub const COLUMNS: [(&str, &str); 5] = [
    ("CDS", "envoy.config.cluster.v3.Cluster"),
    ("LDS", "envoy.config.listener.v3.Listener"),
    ("EDS", "envoy.config.endpoint.v3.ClusterLoadAssignment"),
    ("RDS", "envoy.config.route.v3.RouteConfiguration"),
    ("SDS", "envoy.extensions.transport_sockets.tls.v3.Secret"),
];

/// How long `crossmesh status` waits for the debug address.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One type's state as `istioctl proxy-status` names it.
pub fn xds_state(t: Option<&Value>) -> &'static str {
    let Some(t) = t else {
        return "NOT SENT";
    };
    let s = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("");
    if t.get("nacked").is_some_and(|n| !n.is_null()) {
        return "NACKED";
    }
    let (sent_nonce, acked_nonce) = (s("sent_nonce"), s("acked_nonce"));
    let (sent_version, acked_version) = (s("sent_version"), s("acked_version"));
    if sent_nonce.is_empty() && sent_version.is_empty() {
        return "NOT SENT";
    }
    if !sent_nonce.is_empty() && sent_nonce == acked_nonce {
        return "SYNCED";
    }
    if sent_nonce.is_empty() && sent_version == acked_version {
        // A resumed Delta stream: the proxy holds what was recorded as sent.
        return "SYNCED";
    }
    if acked_nonce.is_empty() && acked_version.is_empty() {
        return "STALE (Never Acknowledged)";
    }
    "STALE"
}

/// The NAME column: `POD.NAMESPACE` of a node id `ROLE~IP~POD.NS~NS.svc.SUFFIX`
/// (what istioctl shows), the whole id otherwise.
pub fn proxy_name(id: &str) -> &str {
    match id.split('~').nth(2) {
        Some(n) if !n.is_empty() => n,
        _ => id,
    }
}

/// `/debug/syncz` as the table (and the NACK errors under it).
pub fn render(syncz: &Value) -> anyhow::Result<String> {
    let streams = syncz
        .as_array()
        .context("/debug/syncz did not answer a JSON list of streams")?;
    let mut rows: Vec<Vec<String>> = vec![{
        let mut h = vec!["NAME".to_string(), "CLUSTER".to_string()];
        h.extend(COLUMNS.iter().map(|(c, _)| c.to_string()));
        h.push("MODE".to_string());
        h
    }];
    let mut nacks = Vec::new();
    let mut sorted: Vec<&Value> = streams.iter().collect();
    sorted.sort_by_key(|s| {
        (
            proxy_name(s.get("proxy_id").and_then(Value::as_str).unwrap_or("")).to_string(),
            s.get("connection").and_then(Value::as_u64).unwrap_or(0),
        )
    });
    for s in sorted {
        let id = s.get("proxy_id").and_then(Value::as_str).unwrap_or("");
        let types = s.get("types").and_then(Value::as_array);
        let find = |suffix: &str| {
            types.and_then(|ts| {
                ts.iter().find(|t| {
                    t.get("type_url")
                        .and_then(Value::as_str)
                        .is_some_and(|u| u.ends_with(suffix))
                })
            })
        };
        let mut row = vec![
            proxy_name(id).to_string(),
            s.get("cluster_id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        ];
        for (col, suffix) in COLUMNS {
            let t = find(suffix);
            let state = xds_state(t);
            if state == "NACKED" {
                let err = t
                    .and_then(|t| t.pointer("/nacked/error"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                nacks.push(format!("{} {col}: {}", proxy_name(id), one_line(err)));
            }
            row.push(state.to_string());
        }
        row.push(
            s.get("mode")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        );
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    if !nacks.is_empty() {
        out.push_str("\nNACKED:\n");
        for n in nacks {
            out.push_str(&n);
            out.push('\n');
        }
    }
    Ok(out)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// GET `path` on the debug address; the body of a 200 answer.
pub async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let fetch = async {
        let mut conn = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("the debug address {addr} does not answer"))?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        // HTTP/1.0: the server closes the connection after one identity-coded body.
        let req = format!(
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Accept: application/json\r\n\r\n"
        );
        conn.write_all(req.as_bytes())
            .await
            .with_context(|| format!("the debug address {addr} does not answer"))?;
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf)
            .await
            .with_context(|| format!("reading the answer of the debug address {addr}"))?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(TIMEOUT, fetch)
        .await
        .map_err(|_| anyhow::anyhow!("the debug address {addr} did not answer in {TIMEOUT:?}"))??;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("the debug address {addr} did not answer HTTP"))?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let body = buf[split + 4..].to_vec();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .with_context(|| format!("the debug address {addr} did not answer HTTP"))?;
    if status != 200 {
        let text = String::from_utf8_lossy(&body);
        anyhow::bail!(
            "{path} on {addr} answered {status}: {}",
            one_line(&text).chars().take(200).collect::<String>()
        );
    }
    Ok(body)
}

/// `crossmesh status`: print the table of the control plane at `addr`.
pub async fn run(addr: SocketAddr, token: Option<&str>) -> anyhow::Result<String> {
    let body = get(addr, "/debug/syncz", token).await?;
    let syncz: Value = serde_json::from_slice(&body)
        .with_context(|| format!("/debug/syncz on {addr} is not JSON"))?;
    render(&syncz)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(url: &str, sent: &str, acked: &str, nack: Option<&str>) -> Value {
        json!({
            "type_url": format!("type.googleapis.com/{url}"),
            "sent_version": if sent.is_empty() { "" } else { "v1" },
            "sent_nonce": sent,
            "acked_version": if acked.is_empty() { "" } else { "v1" },
            "acked_nonce": acked,
            "nacked": nack.map(|e| json!({"nonce": sent, "version": "v1", "error": e})),
        })
    }

    #[test]
    fn states_follow_istioctl() {
        assert_eq!(xds_state(None), "NOT SENT");
        let c = "envoy.config.cluster.v3.Cluster";
        assert_eq!(xds_state(Some(&t(c, "3", "3", None))), "SYNCED");
        assert_eq!(xds_state(Some(&t(c, "4", "3", None))), "STALE");
        assert_eq!(
            xds_state(Some(&t(c, "1", "", None))),
            "STALE (Never Acknowledged)"
        );
        assert_eq!(xds_state(Some(&t(c, "4", "3", Some("bad")))), "NACKED");
        assert_eq!(xds_state(Some(&t(c, "", "", None))), "NOT SENT");
    }

    #[test]
    fn one_row_per_stream_and_nack_text_under_the_table() {
        let syncz = json!([
            {"proxy_id": "sidecar~10.0.0.2~b-1.shop~shop.svc.cluster.local", "connection": 2,
             "mode": "delta", "cluster_id": "cluster2",
             "types": [t("envoy.config.cluster.v3.Cluster", "5", "5", None),
                       t("envoy.config.listener.v3.Listener", "6", "5",
                         Some("Error adding/updating listener(s) x:\n bad"))]},
            {"proxy_id": "router~10.0.0.1~gw-1.istio-system~istio-system.svc.cluster.local",
             "connection": 1, "mode": "sotw", "cluster_id": "cluster1",
             "types": [t("envoy.config.cluster.v3.Cluster", "2", "2", None)]},
        ]);
        let out = render(&syncz).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{out}");
        let cols = |l: &str| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            cols(lines[1]),
            [
                "b-1.shop", "cluster2", "SYNCED", "NACKED", "NOT SENT", "NOT SENT", "NOT SENT",
                "delta"
            ]
        );
        assert_eq!(
            cols(lines[2]),
            [
                "gw-1.istio-system",
                "cluster1",
                "SYNCED",
                "NOT SENT",
                "NOT SENT",
                "NOT SENT",
                "NOT SENT",
                "sotw"
            ]
        );
        assert!(
            out.contains("b-1.shop LDS: Error adding/updating listener(s) x: bad"),
            "{out}"
        );
    }
}
