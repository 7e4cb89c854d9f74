//! CDS for the services of ServiceEntries: the cluster type follows
//! `resolution` as in Istio's `cluster_builder.go` (`NONE` -> `ORIGINAL_DST`,
//! `STATIC` -> `EDS`, `DNS` -> `STRICT_DNS`, `DNS_ROUND_ROBIN` ->
//! `LOGICAL_DNS`), DNS clusters carry their hosts inline with Istio's DNS
//! settings, and `location: MESH_EXTERNAL` turns auto mTLS off (Istio
//! originates Istio mTLS only to services inside the mesh). Applied by
//! `cluster::service_clusters` to every cluster of such a service.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType, DnsLookupFamily, LbPolicy},
    Cluster,
};
use envoy_types::pb::envoy::config::core::v3::{Locality as EnvoyLocality, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::Duration;

use super::mtls;
use super::network::lb_endpoint;
use super::proto::u32_value;
use crate::model::istio::service_entry::{dns_targets, Location, Resolution, ServiceEntry};
use crate::model::istio::{labels_match, workload_entry::parse_locality};

/// Istio's mesh default `dnsRefreshRate` (60s) for DNS clusters.
pub const DNS_REFRESH_RATE_SECS: i64 = 60;

/// Turn the cluster `c` of `se`'s `host` on `port` (subset `subset`, `None` for
/// the port's own cluster) into the cluster type `resolution` asks for.
pub fn apply(
    c: &mut Cluster,
    se: &ServiceEntry,
    host: &str,
    port: u16,
    subset: Option<&BTreeMap<String, String>>,
) {
    if se.location == Location::MeshExternal {
        // Auto mTLS is for endpoints inside the mesh; a DestinationRule's own
        // `tls` (a transport socket) stays.
        c.transport_socket_matches.clear();
    }
    let kind = match se.resolution {
        Resolution::Static => return,
        Resolution::None => {
            c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(
                DiscoveryType::OriginalDst as i32,
            ));
            c.lb_policy = LbPolicy::ClusterProvided as i32;
            c.eds_cluster_config = None;
            // Envoy refuses a load balancer config on an ORIGINAL_DST cluster.
            c.lb_config = None;
            return;
        }
        Resolution::Dns => DiscoveryType::StrictDns,
        Resolution::DnsRoundRobin => DiscoveryType::LogicalDns,
    };
    let Some(sp) = se.ports.iter().find(|p| p.number == u32::from(port)) else {
        return;
    };
    let mut targets = dns_targets(se, host, sp);
    if let Some(labels) = subset {
        targets.retain(|t| labels_match(labels, &t.labels));
    }
    if kind == DiscoveryType::LogicalDns {
        // Envoy's LOGICAL_DNS takes exactly one host.
        targets.truncate(1);
    }
    let mut by_locality: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for t in &targets {
        let mut lb = lb_endpoint(&t.address, u32::from(t.port), u32::from(t.weight));
        if t.labels.get(mtls::TLS_MODE_LABEL).map(String::as_str) == Some("istio") {
            lb.metadata = Some(Metadata {
                filter_metadata: [(
                    mtls::TRANSPORT_SOCKET_MATCH.to_string(),
                    super::network::tls_mode_istio(),
                )]
                .into(),
                ..Default::default()
            });
        }
        by_locality
            .entry(t.locality.clone())
            .or_default()
            .push((lb, u32::from(t.weight)));
    }
    c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(kind as i32));
    c.eds_cluster_config = None;
    // Istio: `V4_ONLY` for proxies without IPv6, DNS answers cached for their
    // TTL, refreshed at the mesh's `dnsRefreshRate`. Envoy 1.40 deprecates
    // these Cluster fields (for the `envoy.clusters.dns` extension) but still
    // honours them with the STRICT_DNS/LOGICAL_DNS types Istio sets.
    #[allow(deprecated)]
    {
        c.dns_lookup_family = DnsLookupFamily::V4Only as i32;
        c.respect_dns_ttl = true;
        c.dns_refresh_rate = Some(Duration {
            seconds: DNS_REFRESH_RATE_SECS,
            nanos: 0,
        });
    }
    c.load_assignment = Some(ClusterLoadAssignment {
        cluster_name: c.name.clone(),
        endpoints: by_locality
            .into_iter()
            .map(|(loc, eps)| {
                let l = parse_locality(&loc);
                // Istio: a locality weighs the sum of its endpoints' weights.
                let weight = eps.iter().fold(0u32, |s, e| s.saturating_add(e.1));
                let eps: Vec<LbEndpoint> = eps.into_iter().map(|e| e.0).collect();
                LocalityLbEndpoints {
                    locality: Some(EnvoyLocality {
                        region: l.region,
                        zone: l.zone,
                        sub_zone: l.subzone,
                    }),
                    load_balancing_weight: Some(u32_value(weight.max(1))),
                    lb_endpoints: eps,
                    ..Default::default()
                }
            })
            .collect(),
        ..Default::default()
    });
}

/// The HTTP route domains of a ServiceEntry host on `port` (Istio's
/// `generateVirtualHostDomains` for a non-Kubernetes service): the host and its
/// `addresses` (single IPs; CIDRs name no Host), each with and without `:PORT`.
pub fn domains(se: &ServiceEntry, host: &str, port: u32) -> Vec<String> {
    std::iter::once(host.to_string())
        .chain(se.addresses.iter().filter(|a| !a.contains('/')).cloned())
        .flat_map(|n| [format!("{n}:{port}"), n])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;

    fn se(yaml: &str) -> ServiceEntry {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn addresses(c: &Cluster) -> Vec<String> {
        c.load_assignment
            .iter()
            .flat_map(|a| &a.endpoints)
            .flat_map(|l| &l.lb_endpoints)
            .filter_map(|e| match &e.host_identifier {
                Some(HostIdentifier::Endpoint(ep)) => Some(format!("{:?}", ep.address)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn resolution_picks_the_cluster_type() {
        let types = |yaml: &str| {
            let mut c = Cluster::default();
            apply(&mut c, &se(yaml), "a.example", 80, None);
            c.cluster_discovery_type
        };
        let t = |d: DiscoveryType| Some(ClusterDiscoveryType::Type(d as i32));
        assert_eq!(
            types("{hosts: [a.example], ports: [{number: 80, name: http}]}"),
            t(DiscoveryType::OriginalDst)
        );
        assert_eq!(
            types("{hosts: [a.example], ports: [{number: 80, name: http}], resolution: DNS}"),
            t(DiscoveryType::StrictDns)
        );
        assert_eq!(
            types("{hosts: [a.example], ports: [{number: 80, name: http}], resolution: DNS_ROUND_ROBIN}"),
            t(DiscoveryType::LogicalDns)
        );
        assert_eq!(
            types("{hosts: [a.example], ports: [{number: 80, name: http}], resolution: STATIC}"),
            None
        );
    }

    #[test]
    fn dns_hosts_are_the_endpoints_else_the_host() {
        let mut c = Cluster::default();
        apply(
            &mut c,
            &se("{hosts: [a.example], ports: [{number: 80, name: http, targetPort: 8080}], resolution: DNS}"),
            "a.example",
            80,
            None,
        );
        let a = addresses(&c);
        assert_eq!(a.len(), 1);
        assert!(a[0].contains("a.example") && a[0].contains("8080"), "{a:?}");
        let mut c = Cluster::default();
        let two = se("{hosts: [a.example], ports: [{number: 80, name: http}], resolution: DNS, endpoints: [{address: x.example, labels: {v: one}}, {address: y.example, labels: {v: two}}]}");
        apply(&mut c, &two, "a.example", 80, None);
        assert_eq!(addresses(&c).len(), 2);
        let mut sub = Cluster::default();
        let labels: BTreeMap<String, String> = [("v".to_string(), "two".to_string())].into();
        apply(&mut sub, &two, "a.example", 80, Some(&labels));
        let a = addresses(&sub);
        assert!(a.len() == 1 && a[0].contains("y.example"), "{a:?}");
    }
}
