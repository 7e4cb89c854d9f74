//! Small builders for Envoy protobuf pieces every generator needs: packing typed
//! configs into `Any`, the ADS config source, percentages, Istio's cluster names.
//! Defined once here so generators never repeat Envoy boilerplate.

use envoy_types::pb::envoy::config::core::v3::{
    config_source::ConfigSourceSpecifier, socket_address::PortSpecifier, Address,
    AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress,
};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use envoy_types::pb::google::protobuf::{Any, BoolValue, UInt32Value};
use prost::{Message, Name};

/// Pack a typed config into `google.protobuf.Any` with its `type.googleapis.com/`
/// URL (from `prost::Name`).
pub fn pack<M: Message + Name>(msg: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}

/// `{ads: {}, resource_api_version: V3}`: fetch over the ADS stream the proxy
/// already has.
pub fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// A TCP socket address.
pub fn socket_address(ip: &str, port: u32) -> Address {
    Address {
        address: Some(
            envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(
                SocketAddress {
                    address: ip.to_string(),
                    port_specifier: Some(PortSpecifier::PortValue(port)),
                    ..Default::default()
                },
            ),
        ),
    }
}

/// Istio's percent (a double in [0, 100]) as Envoy's fractional percent per
/// million, as Istio's `translatePercentToFractionalPercent` does.
pub fn percent_per_million(percent: f64) -> FractionalPercent {
    FractionalPercent {
        numerator: (percent * 10_000.0).round().clamp(0.0, 1_000_000.0) as u32,
        denominator: DenominatorType::Million as i32,
    }
}

/// An integer percent (deprecated Istio fields) per hundred.
pub fn percent_per_hundred(percent: u32) -> FractionalPercent {
    FractionalPercent {
        numerator: percent.min(100),
        denominator: DenominatorType::Hundred as i32,
    }
}

pub fn u32_value(v: u32) -> UInt32Value {
    UInt32Value { value: v }
}

pub fn bool_value(v: bool) -> BoolValue {
    BoolValue { value: v }
}

/// Istio's cluster name: `outbound|PORT|SUBSET|HOST` (subset empty for the whole
/// service).
pub fn cluster_name(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// The RDS name of a gateway's HTTP listener on `port` (Istio's `http.<port>`).
pub fn http_route_name(port: u32) -> String {
    format!("http.{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_conversion_matches_istio() {
        assert_eq!(percent_per_million(100.0).numerator, 1_000_000);
        assert_eq!(percent_per_million(0.1).numerator, 1_000);
        assert_eq!(percent_per_million(50.0).numerator, 500_000);
    }

    #[test]
    fn names() {
        assert_eq!(
            cluster_name(80, "", "a.b.svc.cluster.local"),
            "outbound|80||a.b.svc.cluster.local"
        );
        assert_eq!(
            cluster_name(7000, "v1", "order.base.svc.cluster.local"),
            "outbound|7000|v1|order.base.svc.cluster.local"
        );
        let any =
            pack(&envoy_types::pb::envoy::extensions::filters::http::router::v3::Router::default());
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        );
    }
}
