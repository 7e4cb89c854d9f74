//! The Telemetry API from a config cluster (`config: - cluster: NAME`), with the
//! real binary and a real Envoy gateway: a cluster whose API server does not
//! serve `telemetry.istio.io` (404 on `telemetries`, a cluster without the CRD)
//! still delivers its other Istio kinds, and once the kind lists, a Telemetry
//! created in the cluster changes the gateway's connection manager (its
//! `tracing.random_sampling`).

mod support;

#[path = "support/kube_api.rs"]
mod kube_api;

use kube_api::{objects, FakeApiServer, FaultRule};
use serde_json::{json, Value};
use support::control_plane::{bootstrap_gateway, ControlPlane, GatewayProxy};
use support::envoy::Envoy;
use support::net::{free_port, Subnet};
use support::{wait_for, CONVERGE};

/// Every `tracing.random_sampling.value` of the HTTP connection managers on
/// the listener bound to `port` in Envoy's config dump.
fn sampling_on_port(dump: &Value, port: u16) -> Vec<f64> {
    fn walk(v: &Value, out: &mut Vec<f64>) {
        match v {
            Value::Object(m) => {
                if m.get("@type").and_then(Value::as_str).is_some_and(|t| {
                    t.ends_with("http_connection_manager.v3.HttpConnectionManager")
                }) {
                    out.push(
                        m.get("tracing")
                            .and_then(|t| t.get("random_sampling"))
                            .and_then(|r| r.get("value"))
                            .and_then(Value::as_f64)
                            .unwrap_or(-1.0),
                    );
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for l in dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["dynamic_listeners"].as_array().into_iter().flatten())
    {
        let listener = &l["active_state"]["listener"];
        if listener["address"]["socket_address"]["port_value"].as_u64() == Some(port as u64) {
            walk(listener, &mut out);
        }
    }
    out
}

async fn wait_sampling(envoy: &Envoy, port: u16, want: f64, what: &str) {
    wait_for(what, CONVERGE, || async {
        let got = sampling_on_port(&envoy.config_dump().await, port);
        if !got.is_empty() && got.iter().all(|s| *s == want) {
            Ok(())
        } else {
            Err(format!("random_sampling on port {port}: {got:?}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_from_a_config_cluster_and_a_cluster_without_its_crd() {
    let subnet = Subnet::claim();
    let api = FakeApiServer::start("cluster1").await;
    // No telemetry.istio.io: every request for telemetries answers 404.
    api.add_fault(FaultRule::status(404).of("telemetries"));
    api.apply(&objects::node("n1", "r1", "r1-a"));
    let gw_port = free_port();
    api.apply(&json!({
        "apiVersion": "networking.istio.io/v1", "kind": "Gateway",
        "metadata": {"name": "web", "namespace": "istio-system"},
        "spec": {"selector": {"istio": "ingressgateway"}, "servers": [{
            "port": {"number": gw_port, "name": "http", "protocol": "HTTP"},
            "hosts": ["*.example.com"]
        }]}
    }));
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("cluster1.kubeconfig");
    api.write_kubeconfig(&kubeconfig, None, None);
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        format!(
            "clusters:\n- name: cluster1\n  network: n1\n  kubeconfig: {}\n\
             config:\n- cluster: cluster1\n\
             extensionProviders:\n- name: zipkin\n  zipkin: {{service: zipkin.istio-system.svc.cluster.local, port: 9411}}\n\
             defaultProviders: {{tracing: [zipkin]}}\n\
             defaultConfig:\n  tracing: {{sampling: 1}}\n",
            kubeconfig.display()
        ),
    )
    .expect("write mesh file");
    let cp = ControlPlane::start_at(&mesh, subnet.addr(1, 15010), subnet.addr(1, 15014)).await;
    let gw = GatewayProxy::ingress(subnet.ip(2), "cluster1", false);
    let envoy = Envoy::start(
        "gateway-telemetry-kube",
        &bootstrap_gateway(&gw, cp.xds, free_port()),
    )
    .await;
    envoy.wait_ready(CONVERGE).await;
    // The Gateway (networking.istio.io) is served although telemetries 404:
    // the gateway's listener exists, at the mesh default of 1 %.
    wait_sampling(
        &envoy,
        gw_port,
        1.0,
        "the config cluster's Gateway served at the mesh default while telemetries 404",
    )
    .await;
    assert!(
        api.faults_served() > 0,
        "the telemetries 404 was never asked for"
    );

    // The CRD appears; a mesh-wide Telemetry (root namespace) is read from
    // the cluster and reaches the gateway.
    api.clear_faults();
    api.apply(&json!({
        "apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
        "metadata": {"name": "mesh-default", "namespace": "istio-system"},
        "spec": {"tracing": [{"randomSamplingPercentage": 42}]}
    }));
    wait_sampling(
        &envoy,
        gw_port,
        42.0,
        "the cluster's Telemetry raising sampling to 42 %",
    )
    .await;
    let z = cp.json("/debug/configz").await.expect("configz");
    assert!(
        z.to_string().contains("mesh-default"),
        "the Telemetry is not on /debug/configz: {z}"
    );

    // Deleting it in the cluster takes it away again.
    api.delete(
        "telemetry.istio.io",
        "telemetries",
        "istio-system",
        "mesh-default",
    )
    .expect("delete the Telemetry");
    wait_sampling(
        &envoy,
        gw_port,
        1.0,
        "the mesh default back after the Telemetry was deleted",
    )
    .await;
}
