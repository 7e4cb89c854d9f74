//! Gateway API `allowedRoutes.namespaces.from: Selector` from a config
//! cluster: `crossmesh serve` (the binary users run) watches the cluster's
//! Namespaces, and relabelling a Namespace changes which routes attach.

mod support;

#[path = "support/kube_api.rs"]
mod kube_api;

use kube_api::{objects, FakeApiServer};
use serde_json::{json, Value};
use support::control_plane::ControlPlane;
use support::net::Subnet;
use support::{wait_for, CONVERGE};

fn namespace(name: &str, labels: &[(&str, &str)]) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": objects::labels(labels)}})
}

/// The `Accepted` reason of HTTPRoute `ns/name`'s parent entry on /debug/configz.
async fn accepted(cp: &ControlPlane, ns: &str, name: &str) -> Result<String, String> {
    let z = cp.json("/debug/configz").await?;
    let st = z["gatewayApi"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|s| s["kind"] == "HTTPRoute" && s["namespace"] == ns && s["name"] == name)
        })
        .ok_or_else(|| format!("no status of HTTPRoute {ns}/{name}"))?;
    st["parents"][0]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Accepted"))
        .and_then(|c| c["reason"].as_str())
        .map(str::to_string)
        .ok_or_else(|| st.to_string())
}

async fn wait_accepted(cp: &ControlPlane, ns: &str, name: &str, want: &str) {
    wait_for(
        &format!("HTTPRoute {ns}/{name} Accepted reason {want}"),
        CONVERGE,
        || async {
            let got = accepted(cp, ns, name).await?;
            if got == want {
                Ok(())
            } else {
                Err(got)
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relabelling_a_namespace_changes_which_routes_attach() {
    let subnet = Subnet::claim();
    let api = FakeApiServer::start("c1").await;
    api.apply(&objects::node("n1", "r1", "r1-a"));
    api.apply(&namespace("infra", &[]));
    api.apply(&namespace("team-a", &[("shared-gateway-access", "true")]));
    api.apply(&namespace("team-b", &[]));
    api.apply(&json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "crossmesh"},
        "spec": {"controllerName": "crossmesh.io/gateway-controller"}
    }));
    api.apply(&json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "shared-gw", "namespace": "infra"},
        "spec": {"gatewayClassName": "crossmesh", "listeners": [{
            "name": "http", "port": 8080, "protocol": "HTTP",
            "allowedRoutes": {"namespaces": {"from": "Selector",
                "selector": {"matchLabels": {"shared-gateway-access": "true"}}}}
        }]}
    }));
    for ns in ["team-a", "team-b"] {
        api.apply(&json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": ns},
            "spec": {
                "parentRefs": [{"name": "shared-gw", "namespace": "infra"}],
                "hostnames": [format!("{ns}.example.com")],
                "rules": [{"backendRefs": [{"name": "app", "port": 80}]}]
            }
        }));
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("c1.kubeconfig");
    api.write_kubeconfig(&kubeconfig, None, None);
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        format!(
            "clusters:\n- name: c1\n  network: n1\n  kubeconfig: {}\nconfig:\n- cluster: c1\n",
            kubeconfig.display()
        ),
    )
    .unwrap();
    let cp = ControlPlane::start_at(&mesh, subnet.addr(1, 15010), subnet.addr(1, 15014)).await;

    wait_accepted(&cp, "team-a", "r", "Accepted").await;
    wait_accepted(&cp, "team-b", "r", "NotAllowedByListeners").await;

    // Relabel: team-b gains the label, team-a loses it.
    api.apply(&namespace("team-b", &[("shared-gateway-access", "true")]));
    api.apply(&namespace("team-a", &[("shared-gateway-access", "no")]));
    wait_accepted(&cp, "team-b", "r", "Accepted").await;
    wait_accepted(&cp, "team-a", "r", "NotAllowedByListeners").await;
}
