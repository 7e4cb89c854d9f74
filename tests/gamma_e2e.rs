//! Issue 14 item 1, GAMMA (Gateway API for mesh, GEP-1426), end to end: an
//! HTTPRoute whose `parentRef` is the Service `product` routes the real NONE-mode
//! frontend sidecar's traffic to that Service between the Services `product-v1`
//! and `product-v2` (the seed 004 shop of `tests/support/shop.rs`, whose pods
//! answer with their own name), served by the real `crossmesh serve`.
//!
//! Every wait has a deadline (docs/TESTING.md).

mod support;

use support::manifests;
use support::shop::{Shop, NS};
use support::{wait_for, CONVERGE};

/// The producer route (in the Service's namespace): `x-version: v2` goes to
/// product-v2; everything else is split `v1`/`v2` by weight.
fn gamma_route(port: u16, v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: product-split, namespace: {NS}}}
spec:
  parentRefs:
  - {{group: '', kind: Service, name: product, port: {port}}}
  rules:
  - matches:
    - headers: [{{name: x-version, value: v2}}]
    backendRefs: [{{name: product-v2, port: {port}}}]
  - backendRefs:
    - {{name: product-v1, port: {port}, weight: {v1}}}
    - {{name: product-v2, port: {port}, weight: {v2}}}
"
    )
}

/// The shop with Services `product-v1` and `product-v2` (one version's pod
/// each, on product's port) and the GAMMA route.
async fn start(v1: u32, v2: u32) -> Shop {
    let shop = Shop::start(false, 0, "").await;
    let port = shop.ports["product"];
    for v in ["v1", "v2"] {
        shop.mesh.write_cluster(
            "cluster1",
            &format!("svc-product-{v}.yaml"),
            &manifests::service(
                NS,
                &format!("product-{v}"),
                port,
                shop.pod_port,
                &[("app", "product"), ("version", v)],
            ),
        );
    }
    // The backends' clusters first, so that no answer comes from a route to a
    // cluster the sidecar does not have yet.
    for v in ["v1", "v2"] {
        let cluster = format!("outbound|{port}||product-{v}.{NS}.svc.cluster.local");
        shop.wait_hosts(&shop.sidecar, &cluster, 1).await;
    }
    shop.mesh
        .write_istio("gamma.yaml", &gamma_route(port, v1, v2));
    // The route is in force once the header reaches product-v2 20 times in a
    // row (the Service alone answers from either pod).
    wait_for("the GAMMA route in force", CONVERGE, || async {
        for _ in 0..20 {
            let a = shop.call("product", "/", &[("x-version", "v2")]).await;
            if (a.status, a.body.as_str()) != (200, "product-v2") {
                return Err(format!("{} {:?}", a.status, a.body));
            }
        }
        Ok(())
    })
    .await;
    shop
}

/// The route's status on `/debug/configz`: its one parent, the Service.
async fn parent_conditions(shop: &Shop) -> Result<serde_json::Value, String> {
    let j = shop.cp.json("/debug/configz").await?;
    j["gatewayApi"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|s| s["kind"] == "HTTPRoute" && s["name"] == "product-split")
                .cloned()
        })
        .map(|s| s["parents"][0].clone())
        .ok_or_else(|| format!("no status for HTTPRoute product-split: {j}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gamma_route_splits_sidecar_traffic_by_weight() {
    let shop = start(90, 10).await;
    let parent = wait_for("product-split accepted", CONVERGE, || async {
        let p = parent_conditions(&shop).await?;
        let conds = p["conditions"].as_array().cloned().unwrap_or_default();
        let get = |t: &str| {
            conds
                .iter()
                .find(|c| c["type"] == t)
                .map(|c| (c["status"].clone(), c["reason"].clone()))
        };
        if get("Accepted") == Some(("True".into(), "Accepted".into()))
            && get("ResolvedRefs") == Some(("True".into(), "ResolvedRefs".into()))
        {
            Ok(p)
        } else {
            Err(p.to_string())
        }
    })
    .await;
    assert_eq!(
        parent["parentRef"],
        format!("Service {NS}/product:{}", shop.ports["product"])
    );
    let (mut v1, mut v2) = (0, 0);
    for _ in 0..1000 {
        let a = shop.call("product", "/", &[]).await;
        assert_eq!(a.status, 200, "{a:?}");
        match a.body.as_str() {
            "product-v1" => v1 += 1,
            "product-v2" => v2 += 1,
            other => panic!("answered by {other:?}"),
        }
    }
    eprintln!("GAMMA 90/10 over 1000 requests: v1 {v1}, v2 {v2}");
    // 10% of 1,000: mean 100, standard deviation 9.5; 60-140 is over 4 sigma.
    assert!((60..=140).contains(&v2), "v2 got {v2} of 1000 (v1 {v1})");

    // All to v1 by weight: the header still picks v2.
    shop.mesh
        .write_istio("gamma.yaml", &gamma_route(shop.ports["product"], 1, 0));
    // 300 answers from v1 in a row: under the old 90/10 split that happens
    // with probability 0.9^300 (about 2e-14); 20 in a row passed 12 % of the
    // time before the new weights were in force.
    wait_for("product 1/0 in force", CONVERGE, || async {
        for _ in 0..300 {
            let a = shop.call("product", "/", &[]).await;
            if a.body != "product-v1" {
                return Err(a.body);
            }
        }
        Ok(())
    })
    .await;
    for _ in 0..100 {
        assert_eq!(shop.call("product", "/", &[]).await.body, "product-v1");
        let a = shop.call("product", "/", &[("x-version", "v2")]).await;
        assert_eq!((a.status, a.body.as_str()), (200, "product-v2"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gamma_header_match_picks_a_version() {
    let shop = start(1, 0).await;
    for _ in 0..50 {
        let a = shop.call("product", "/", &[("x-version", "v2")]).await;
        assert_eq!((a.status, a.body.as_str()), (200, "product-v2"));
        let a = shop.call("product", "/", &[("x-version", "v1")]).await;
        assert_eq!((a.status, a.body.as_str()), (200, "product-v1"));
    }
    // Removing the route gives the Service back its own endpoints (both pods).
    shop.mesh.write_istio("gamma.yaml", "");
    wait_for("product without the route reaches v2", CONVERGE, || async {
        for _ in 0..40 {
            if shop.call("product", "/", &[]).await.body == "product-v2" {
                return Ok(());
            }
        }
        Err("only product-v1".to_string())
    })
    .await;
}

/// GEP-1426: a consumer route in namespace `shoppers` for the Service
/// base/product sends that namespace's clients to product-v2, while the
/// producer route (in `base`, all to product-v1) keeps serving the frontend
/// in `base`. The producer route sorts first (by name), so a merge of both
/// would give `shoppers` the producer's product-v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_route_wins_for_its_namespace_only() {
    use support::control_plane::bootstrap;
    use support::envoy::Envoy;
    use support::net::free_port;
    use support::shop::request;
    let shop = start(1, 0).await;
    let port = shop.ports["product"];
    let ip = shop.subnet.ip(9);
    shop.mesh.write_cluster(
        "cluster1",
        "pod-shopper.yaml",
        &manifests::pod(
            "shoppers",
            "shopper-0",
            &[("app", "shopper")],
            ip,
            free_port(),
            true,
            None,
        ),
    );
    let args: Vec<String> = [
        "bootstrap",
        "--role",
        "sidecar",
        "--name",
        "shopper-0",
        "--namespace",
        "shoppers",
        "--ip",
        &ip.to_string(),
        "--labels",
        "app=shopper",
        "--xds-address",
        &shop.cp.xds.to_string(),
        "--admin-port",
        &free_port().to_string(),
        "--cluster-id",
        "cluster1",
        "--interception",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let shopper = Envoy::start("shopper-sidecar", &bootstrap(&args)).await;
    shopper.wait_ready(CONVERGE).await;
    // From another namespace the Service's short name is not a domain.
    let host = format!("product.{NS}");
    let from_shoppers = || async {
        request(std::net::SocketAddr::from((ip, port)), &host, "/", &[])
            .await
            .map(|a| (a.status, a.body))
    };
    // Before the consumer route, shoppers get the producer route (product-v1).
    wait_for("shoppers reach product-v1", CONVERGE, || async {
        match from_shoppers().await? {
            (200, b) if b == "product-v1" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    shop.mesh.write_istio(
        "consumer.yaml",
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: shoppers-product, namespace: shoppers}}
spec:
  parentRefs:
  - {{group: '', kind: Service, name: product, namespace: {NS}, port: {port}}}
  rules:
  - backendRefs: [{{name: product-v2, namespace: {NS}, port: {port}}}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {{name: shoppers-use-base, namespace: {NS}}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shoppers}}]
  to: [{{group: '', kind: Service}}]
"
        ),
    );
    wait_for("the consumer route in force", CONVERGE, || async {
        for _ in 0..20 {
            match from_shoppers().await? {
                (200, b) if b == "product-v2" => {}
                other => return Err(format!("{other:?}")),
            }
        }
        Ok(())
    })
    .await;
    for _ in 0..50 {
        assert_eq!(
            from_shoppers().await.unwrap_or_else(|e| panic!("{e}")),
            (200, "product-v2".to_string()),
            "a client in shoppers"
        );
        let a = shop.call("product", "/", &[]).await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (200, "product-v1"),
            "the frontend in {NS}"
        );
    }
    drop(shopper);
}
