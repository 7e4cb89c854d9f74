//! Istio's networking API as Istio documents it: every field path of `Gateway`,
//! `VirtualService`, `DestinationRule`, `Sidecar` (and of `AuthorizationPolicy`,
//! `security/v1beta1/authorization.proto`, and `RequestAuthentication`,
//! `security/v1beta1/request_authentication.proto` with `jwt.proto`) is accepted by crossmesh's
//! parser under its documented name and kept (not dropped), a misspelt name is
//! rejected naming it, and the fields crossmesh rejects on purpose
//! (docs/ISTIO_SUPPORT.md) are rejected with their reason, never as an unknown
//! field. Then Istio's own reference examples go through `crossmesh validate`.
//!
//! The field table follows the `istio/api` protos (`networking/v1alpha3/
//! {gateway,virtual_service,destination_rule,sidecar}.proto`, `type/v1beta1/
//! selector.proto`) at commit b8f8791d9653b2edc77a071d48887e582cfe84bf
//! (2026-07-21), which the istio.io reference pages
//! (`docs/reference/config/networking/*/`) are generated from: proto snake_case
//! names are the lowerCamelCase JSON names below. `[]` is a list (one element),
//! `{}` a map (one key, `k`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Map, Value};

use crossmesh::model::istio::{
    parse_object, AuthorizationPolicy, DestinationRule, Gateway, Rejection, RequestAuthentication,
    Sidecar, VirtualService,
};

/// (kind, field path, a valid YAML value). Every message and leaf field of the
/// four kinds, nested messages expanded where they occur.
const FIELDS: &[(&str, &str, &str)] = &[
    // Gateway
    ("Gateway", "servers[]", "{}"),
    ("Gateway", "servers[].port", "{}"),
    ("Gateway", "servers[].port.number", "1"),
    ("Gateway", "servers[].port.protocol", "x"),
    ("Gateway", "servers[].port.name", "x"),
    ("Gateway", "servers[].port.targetPort", "1"),
    ("Gateway", "servers[].bind", "x"),
    ("Gateway", "servers[].hosts[]", "x"),
    ("Gateway", "servers[].tls", "{}"),
    ("Gateway", "servers[].tls.httpsRedirect", "true"),
    ("Gateway", "servers[].tls.mode", "PASSTHROUGH"),
    ("Gateway", "servers[].tls.serverCertificate", "x"),
    ("Gateway", "servers[].tls.privateKey", "x"),
    ("Gateway", "servers[].tls.caCertificates", "x"),
    ("Gateway", "servers[].tls.caCrl", "x"),
    ("Gateway", "servers[].tls.credentialName", "x"),
    ("Gateway", "servers[].tls.credentialNames[]", "x"),
    ("Gateway", "servers[].tls.caCertCredentialName", "x"),
    ("Gateway", "servers[].tls.tlsCertificates[]", "{}"),
    ("Gateway", "servers[].tls.tlsCertificates[].serverCertificate", "x"),
    ("Gateway", "servers[].tls.tlsCertificates[].privateKey", "x"),
    ("Gateway", "servers[].tls.tlsCertificates[].caCertificates", "x"),
    ("Gateway", "servers[].tls.subjectAltNames[]", "x"),
    ("Gateway", "servers[].tls.verifyCertificateSpki[]", "x"),
    ("Gateway", "servers[].tls.verifyCertificateHash[]", "x"),
    ("Gateway", "servers[].tls.minProtocolVersion", "TLSV1_2"),
    ("Gateway", "servers[].tls.maxProtocolVersion", "TLSV1_2"),
    ("Gateway", "servers[].tls.cipherSuites[]", "x"),
    ("Gateway", "servers[].tls.insecureSkipVerify", "true"),
    ("Gateway", "servers[].defaultEndpoint", "x"),
    ("Gateway", "servers[].name", "x"),
    ("Gateway", "selector", "{k: v}"),
    // VirtualService
    ("VirtualService", "hosts[]", "x"),
    ("VirtualService", "gateways[]", "x"),
    ("VirtualService", "http[]", "{}"),
    ("VirtualService", "http[].name", "x"),
    ("VirtualService", "http[].match[]", "{}"),
    ("VirtualService", "http[].match[].name", "x"),
    ("VirtualService", "http[].match[].uri", "{}"),
    ("VirtualService", "http[].match[].uri.exact", "x"),
    ("VirtualService", "http[].match[].uri.prefix", "x"),
    ("VirtualService", "http[].match[].uri.regex", "x"),
    ("VirtualService", "http[].match[].scheme", "{}"),
    ("VirtualService", "http[].match[].scheme.exact", "x"),
    ("VirtualService", "http[].match[].scheme.prefix", "x"),
    ("VirtualService", "http[].match[].scheme.regex", "x"),
    ("VirtualService", "http[].match[].method", "{}"),
    ("VirtualService", "http[].match[].method.exact", "x"),
    ("VirtualService", "http[].match[].method.prefix", "x"),
    ("VirtualService", "http[].match[].method.regex", "x"),
    ("VirtualService", "http[].match[].authority", "{}"),
    ("VirtualService", "http[].match[].authority.exact", "x"),
    ("VirtualService", "http[].match[].authority.prefix", "x"),
    ("VirtualService", "http[].match[].authority.regex", "x"),
    ("VirtualService", "http[].match[].headers{}", "{}"),
    ("VirtualService", "http[].match[].headers{}.exact", "x"),
    ("VirtualService", "http[].match[].headers{}.prefix", "x"),
    ("VirtualService", "http[].match[].headers{}.regex", "x"),
    ("VirtualService", "http[].match[].port", "1"),
    ("VirtualService", "http[].match[].sourceLabels", "{k: v}"),
    ("VirtualService", "http[].match[].gateways[]", "x"),
    ("VirtualService", "http[].match[].queryParams{}", "{}"),
    ("VirtualService", "http[].match[].queryParams{}.exact", "x"),
    ("VirtualService", "http[].match[].queryParams{}.prefix", "x"),
    ("VirtualService", "http[].match[].queryParams{}.regex", "x"),
    ("VirtualService", "http[].match[].ignoreUriCase", "true"),
    ("VirtualService", "http[].match[].withoutHeaders{}", "{}"),
    ("VirtualService", "http[].match[].withoutHeaders{}.exact", "x"),
    ("VirtualService", "http[].match[].withoutHeaders{}.prefix", "x"),
    ("VirtualService", "http[].match[].withoutHeaders{}.regex", "x"),
    ("VirtualService", "http[].match[].sourceNamespace", "x"),
    ("VirtualService", "http[].match[].statPrefix", "x"),
    ("VirtualService", "http[].route[]", "{}"),
    ("VirtualService", "http[].route[].destination", "{}"),
    ("VirtualService", "http[].route[].destination.host", "x"),
    ("VirtualService", "http[].route[].destination.subset", "x"),
    ("VirtualService", "http[].route[].destination.port", "{}"),
    ("VirtualService", "http[].route[].destination.port.number", "1"),
    ("VirtualService", "http[].route[].weight", "1"),
    ("VirtualService", "http[].route[].headers", "{}"),
    ("VirtualService", "http[].route[].headers.request", "{}"),
    ("VirtualService", "http[].route[].headers.request.set", "{k: v}"),
    ("VirtualService", "http[].route[].headers.request.add", "{k: v}"),
    ("VirtualService", "http[].route[].headers.request.remove[]", "x"),
    ("VirtualService", "http[].route[].headers.response", "{}"),
    ("VirtualService", "http[].route[].headers.response.set", "{k: v}"),
    ("VirtualService", "http[].route[].headers.response.add", "{k: v}"),
    ("VirtualService", "http[].route[].headers.response.remove[]", "x"),
    ("VirtualService", "http[].redirect", "{}"),
    ("VirtualService", "http[].redirect.uri", "x"),
    ("VirtualService", "http[].redirect.authority", "x"),
    ("VirtualService", "http[].redirect.port", "1"),
    ("VirtualService", "http[].redirect.derivePort", "FROM_REQUEST_PORT"),
    ("VirtualService", "http[].redirect.scheme", "x"),
    ("VirtualService", "http[].redirect.redirectCode", "1"),
    ("VirtualService", "http[].redirect.prefixRewrite", "x"),
    ("VirtualService", "http[].directResponse", "{}"),
    ("VirtualService", "http[].directResponse.status", "1"),
    ("VirtualService", "http[].directResponse.body", "{}"),
    ("VirtualService", "http[].directResponse.body.string", "x"),
    ("VirtualService", "http[].directResponse.body.bytes", "YQ=="),
    ("VirtualService", "http[].delegate", "{}"),
    ("VirtualService", "http[].delegate.name", "x"),
    ("VirtualService", "http[].delegate.namespace", "x"),
    ("VirtualService", "http[].rewrite", "{}"),
    ("VirtualService", "http[].rewrite.uri", "x"),
    ("VirtualService", "http[].rewrite.authority", "x"),
    ("VirtualService", "http[].rewrite.uriRegexRewrite", "{}"),
    ("VirtualService", "http[].rewrite.uriRegexRewrite.match", "x"),
    ("VirtualService", "http[].rewrite.uriRegexRewrite.rewrite", "x"),
    ("VirtualService", "http[].timeout", "1s"),
    ("VirtualService", "http[].retries", "{}"),
    ("VirtualService", "http[].retries.attempts", "1"),
    ("VirtualService", "http[].retries.perTryTimeout", "1s"),
    ("VirtualService", "http[].retries.retryOn", "x"),
    ("VirtualService", "http[].retries.retryRemoteLocalities", "true"),
    ("VirtualService", "http[].retries.retryIgnorePreviousHosts", "true"),
    ("VirtualService", "http[].retries.backoff", "1s"),
    ("VirtualService", "http[].fault", "{}"),
    ("VirtualService", "http[].fault.delay", "{}"),
    ("VirtualService", "http[].fault.delay.percent", "1"),
    ("VirtualService", "http[].fault.delay.fixedDelay", "1s"),
    ("VirtualService", "http[].fault.delay.exponentialDelay", "1s"),
    ("VirtualService", "http[].fault.delay.percentage", "{}"),
    ("VirtualService", "http[].fault.delay.percentage.value", "1.5"),
    ("VirtualService", "http[].fault.abort", "{}"),
    ("VirtualService", "http[].fault.abort.httpStatus", "1"),
    ("VirtualService", "http[].fault.abort.grpcStatus", "x"),
    ("VirtualService", "http[].fault.abort.http2Error", "x"),
    ("VirtualService", "http[].fault.abort.percentage", "{}"),
    ("VirtualService", "http[].fault.abort.percentage.value", "1.5"),
    ("VirtualService", "http[].mirror", "{}"),
    ("VirtualService", "http[].mirror.host", "x"),
    ("VirtualService", "http[].mirror.subset", "x"),
    ("VirtualService", "http[].mirror.port", "{}"),
    ("VirtualService", "http[].mirror.port.number", "1"),
    ("VirtualService", "http[].mirrors[]", "{}"),
    ("VirtualService", "http[].mirrors[].destination", "{}"),
    ("VirtualService", "http[].mirrors[].destination.host", "x"),
    ("VirtualService", "http[].mirrors[].destination.subset", "x"),
    ("VirtualService", "http[].mirrors[].destination.port", "{}"),
    ("VirtualService", "http[].mirrors[].destination.port.number", "1"),
    ("VirtualService", "http[].mirrors[].percentage", "{}"),
    ("VirtualService", "http[].mirrors[].percentage.value", "1.5"),
    ("VirtualService", "http[].mirrorPercent", "1"),
    ("VirtualService", "http[].mirrorPercentage", "{}"),
    ("VirtualService", "http[].mirrorPercentage.value", "1.5"),
    ("VirtualService", "http[].corsPolicy", "{}"),
    ("VirtualService", "http[].corsPolicy.allowOrigin[]", "x"),
    ("VirtualService", "http[].corsPolicy.allowOrigins[]", "{}"),
    ("VirtualService", "http[].corsPolicy.allowOrigins[].exact", "x"),
    ("VirtualService", "http[].corsPolicy.allowOrigins[].prefix", "x"),
    ("VirtualService", "http[].corsPolicy.allowOrigins[].regex", "x"),
    ("VirtualService", "http[].corsPolicy.allowMethods[]", "x"),
    ("VirtualService", "http[].corsPolicy.allowHeaders[]", "x"),
    ("VirtualService", "http[].corsPolicy.exposeHeaders[]", "x"),
    ("VirtualService", "http[].corsPolicy.maxAge", "1s"),
    ("VirtualService", "http[].corsPolicy.allowCredentials", "true"),
    ("VirtualService", "http[].corsPolicy.unmatchedPreflights", "FORWARD"),
    ("VirtualService", "http[].headers", "{}"),
    ("VirtualService", "http[].headers.request", "{}"),
    ("VirtualService", "http[].headers.request.set", "{k: v}"),
    ("VirtualService", "http[].headers.request.add", "{k: v}"),
    ("VirtualService", "http[].headers.request.remove[]", "x"),
    ("VirtualService", "http[].headers.response", "{}"),
    ("VirtualService", "http[].headers.response.set", "{k: v}"),
    ("VirtualService", "http[].headers.response.add", "{k: v}"),
    ("VirtualService", "http[].headers.response.remove[]", "x"),
    ("VirtualService", "tls[]", "{}"),
    ("VirtualService", "tls[].match[]", "{}"),
    ("VirtualService", "tls[].match[].sniHosts[]", "x"),
    ("VirtualService", "tls[].match[].destinationSubnets[]", "x"),
    ("VirtualService", "tls[].match[].port", "1"),
    ("VirtualService", "tls[].match[].sourceLabels", "{k: v}"),
    ("VirtualService", "tls[].match[].gateways[]", "x"),
    ("VirtualService", "tls[].match[].sourceNamespace", "x"),
    ("VirtualService", "tls[].route[]", "{}"),
    ("VirtualService", "tls[].route[].destination", "{}"),
    ("VirtualService", "tls[].route[].destination.host", "x"),
    ("VirtualService", "tls[].route[].destination.subset", "x"),
    ("VirtualService", "tls[].route[].destination.port", "{}"),
    ("VirtualService", "tls[].route[].destination.port.number", "1"),
    ("VirtualService", "tls[].route[].weight", "1"),
    ("VirtualService", "tcp[]", "{}"),
    ("VirtualService", "tcp[].match[]", "{}"),
    ("VirtualService", "tcp[].match[].destinationSubnets[]", "x"),
    ("VirtualService", "tcp[].match[].port", "1"),
    ("VirtualService", "tcp[].match[].sourceSubnet", "x"),
    ("VirtualService", "tcp[].match[].sourceLabels", "{k: v}"),
    ("VirtualService", "tcp[].match[].gateways[]", "x"),
    ("VirtualService", "tcp[].match[].sourceNamespace", "x"),
    ("VirtualService", "tcp[].route[]", "{}"),
    ("VirtualService", "tcp[].route[].destination", "{}"),
    ("VirtualService", "tcp[].route[].destination.host", "x"),
    ("VirtualService", "tcp[].route[].destination.subset", "x"),
    ("VirtualService", "tcp[].route[].destination.port", "{}"),
    ("VirtualService", "tcp[].route[].destination.port.number", "1"),
    ("VirtualService", "tcp[].route[].weight", "1"),
    ("VirtualService", "exportTo[]", "x"),
    // DestinationRule
    ("DestinationRule", "host", "x"),
    ("DestinationRule", "trafficPolicy", "{}"),
    ("DestinationRule", "trafficPolicy.loadBalancer", "{}"),
    ("DestinationRule", "trafficPolicy.loadBalancer.simple", "ROUND_ROBIN"),
    ("DestinationRule", "trafficPolicy.loadBalancer.consistentHash", "{}"),
    ("DestinationRule", "trafficPolicy.loadBalancer.consistentHash.httpHeaderName", "x"),
    ("DestinationRule", "trafficPolicy.loadBalancer.consistentHash.httpCookie", "{}"),
    ("DestinationRule", "trafficPolicy.loadBalancer.consistentHash.httpCookie.name", "x"),
    ("DestinationRule", "trafficPolicy.loadBalancer.consistentHash.httpCookie.path", "x"),
    ("DestinationRule", "trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl", "1s"),
    ("DestinationRule", "trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes[]", "{}"),
    ("DestinationRule", "trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes[].name", "x"),
    ("DestinationRule", "trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes[].value", "x"),
    ("DestinationRule", "trafficPolicy.loadBalancer.consistentHash.useSourceIp", "true"),
    ("DestinationRule", "trafficPolicy.loadBalancer.consistentHash.httpQueryParameterName", "x"),
    ("DestinationRule", "trafficPolicy.loadBalancer.consistentHash.ringHash", "{}"),
    ("DestinationRule", "trafficPolicy.loadBalancer.consistentHash.ringHash.minimumRingSize", "1"),
    ("DestinationRule", "trafficPolicy.loadBalancer.consistentHash.maglev", "{}"),
    ("DestinationRule", "trafficPolicy.loadBalancer.consistentHash.maglev.tableSize", "1"),
    ("DestinationRule", "trafficPolicy.loadBalancer.consistentHash.minimumRingSize", "1"),
    ("DestinationRule", "trafficPolicy.loadBalancer.localityLbSetting", "{}"),
    ("DestinationRule", "trafficPolicy.loadBalancer.localityLbSetting.distribute[]", "{}"),
    ("DestinationRule", "trafficPolicy.loadBalancer.localityLbSetting.distribute[].from", "x"),
    ("DestinationRule", "trafficPolicy.loadBalancer.localityLbSetting.distribute[].to", "{k: 1}"),
    ("DestinationRule", "trafficPolicy.loadBalancer.localityLbSetting.failover[]", "{}"),
    ("DestinationRule", "trafficPolicy.loadBalancer.localityLbSetting.failover[].from", "x"),
    ("DestinationRule", "trafficPolicy.loadBalancer.localityLbSetting.failover[].to", "x"),
    ("DestinationRule", "trafficPolicy.loadBalancer.localityLbSetting.failoverPriority[]", "x"),
    ("DestinationRule", "trafficPolicy.loadBalancer.localityLbSetting.enabled", "true"),
    ("DestinationRule", "trafficPolicy.loadBalancer.zoneAwareLbSetting", "{}"),
    ("DestinationRule", "trafficPolicy.loadBalancer.zoneAwareLbSetting.enabled", "true"),
    ("DestinationRule", "trafficPolicy.loadBalancer.zoneAwareLbSetting.failover[]", "{}"),
    ("DestinationRule", "trafficPolicy.loadBalancer.zoneAwareLbSetting.failover[].from", "x"),
    ("DestinationRule", "trafficPolicy.loadBalancer.zoneAwareLbSetting.failover[].to", "x"),
    ("DestinationRule", "trafficPolicy.loadBalancer.zoneAwareLbSetting.failoverPriority[]", "x"),
    ("DestinationRule", "trafficPolicy.loadBalancer.zoneAwareLbSetting.minClusterSize", "1"),
    ("DestinationRule", "trafficPolicy.loadBalancer.warmupDurationSecs", "1s"),
    ("DestinationRule", "trafficPolicy.loadBalancer.warmup", "{}"),
    ("DestinationRule", "trafficPolicy.loadBalancer.warmup.duration", "1s"),
    ("DestinationRule", "trafficPolicy.loadBalancer.warmup.minimumPercent", "1.5"),
    ("DestinationRule", "trafficPolicy.loadBalancer.warmup.aggression", "1.5"),
    ("DestinationRule", "trafficPolicy.connectionPool", "{}"),
    ("DestinationRule", "trafficPolicy.connectionPool.tcp", "{}"),
    ("DestinationRule", "trafficPolicy.connectionPool.tcp.maxConnections", "1"),
    ("DestinationRule", "trafficPolicy.connectionPool.tcp.connectTimeout", "1s"),
    ("DestinationRule", "trafficPolicy.connectionPool.tcp.tcpKeepalive", "{}"),
    ("DestinationRule", "trafficPolicy.connectionPool.tcp.tcpKeepalive.probes", "1"),
    ("DestinationRule", "trafficPolicy.connectionPool.tcp.tcpKeepalive.time", "1s"),
    ("DestinationRule", "trafficPolicy.connectionPool.tcp.tcpKeepalive.interval", "1s"),
    ("DestinationRule", "trafficPolicy.connectionPool.tcp.maxConnectionDuration", "1s"),
    ("DestinationRule", "trafficPolicy.connectionPool.tcp.idleTimeout", "1s"),
    ("DestinationRule", "trafficPolicy.connectionPool.http", "{}"),
    ("DestinationRule", "trafficPolicy.connectionPool.http.http1MaxPendingRequests", "1"),
    ("DestinationRule", "trafficPolicy.connectionPool.http.http2MaxRequests", "1"),
    ("DestinationRule", "trafficPolicy.connectionPool.http.maxRequestsPerConnection", "1"),
    ("DestinationRule", "trafficPolicy.connectionPool.http.maxRetries", "1"),
    ("DestinationRule", "trafficPolicy.connectionPool.http.idleTimeout", "1s"),
    ("DestinationRule", "trafficPolicy.connectionPool.http.h2UpgradePolicy", "UPGRADE"),
    ("DestinationRule", "trafficPolicy.connectionPool.http.useClientProtocol", "true"),
    ("DestinationRule", "trafficPolicy.connectionPool.http.maxConcurrentStreams", "1"),
    ("DestinationRule", "trafficPolicy.connectionPool.http.http2KeepAlive", "{}"),
    ("DestinationRule", "trafficPolicy.connectionPool.http.http2KeepAlive.interval", "1s"),
    ("DestinationRule", "trafficPolicy.connectionPool.http.http2KeepAlive.timeout", "1s"),
    ("DestinationRule", "trafficPolicy.outlierDetection", "{}"),
    ("DestinationRule", "trafficPolicy.outlierDetection.consecutiveErrors", "1"),
    ("DestinationRule", "trafficPolicy.outlierDetection.splitExternalLocalOriginErrors", "true"),
    ("DestinationRule", "trafficPolicy.outlierDetection.consecutiveLocalOriginFailures", "1"),
    ("DestinationRule", "trafficPolicy.outlierDetection.consecutiveGatewayErrors", "1"),
    ("DestinationRule", "trafficPolicy.outlierDetection.consecutive5xxErrors", "1"),
    ("DestinationRule", "trafficPolicy.outlierDetection.interval", "1s"),
    ("DestinationRule", "trafficPolicy.outlierDetection.baseEjectionTime", "1s"),
    ("DestinationRule", "trafficPolicy.outlierDetection.maxEjectionPercent", "1"),
    ("DestinationRule", "trafficPolicy.outlierDetection.minHealthPercent", "1"),
    ("DestinationRule", "trafficPolicy.outlierDetection.outlierDetectionHttpErrorCodes[]", "1"),
    ("DestinationRule", "trafficPolicy.tls", "{}"),
    ("DestinationRule", "trafficPolicy.tls.mode", "DISABLE"),
    ("DestinationRule", "trafficPolicy.tls.clientCertificate", "x"),
    ("DestinationRule", "trafficPolicy.tls.privateKey", "x"),
    ("DestinationRule", "trafficPolicy.tls.caCertificates", "x"),
    ("DestinationRule", "trafficPolicy.tls.credentialName", "x"),
    ("DestinationRule", "trafficPolicy.tls.subjectAltNames[]", "x"),
    ("DestinationRule", "trafficPolicy.tls.sni", "x"),
    ("DestinationRule", "trafficPolicy.tls.insecureSkipVerify", "true"),
    ("DestinationRule", "trafficPolicy.tls.caCrl", "x"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[]", "{}"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].port", "{}"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].port.number", "1"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer", "{}"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.simple", "ROUND_ROBIN"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.consistentHash", "{}"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.httpHeaderName", "x"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.httpCookie", "{}"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.httpCookie.name", "x"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.httpCookie.path", "x"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.httpCookie.ttl", "1s"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.httpCookie.attributes[]", "{}"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.httpCookie.attributes[].name", "x"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.httpCookie.attributes[].value", "x"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.useSourceIp", "true"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.httpQueryParameterName", "x"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.ringHash", "{}"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.ringHash.minimumRingSize", "1"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.maglev", "{}"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.maglev.tableSize", "1"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.minimumRingSize", "1"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.localityLbSetting", "{}"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.localityLbSetting.distribute[]", "{}"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.localityLbSetting.distribute[].from", "x"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.localityLbSetting.distribute[].to", "{k: 1}"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.localityLbSetting.failover[]", "{}"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.localityLbSetting.failover[].from", "x"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.localityLbSetting.failover[].to", "x"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.localityLbSetting.failoverPriority[]", "x"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.localityLbSetting.enabled", "true"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.zoneAwareLbSetting", "{}"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.zoneAwareLbSetting.enabled", "true"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.zoneAwareLbSetting.failover[]", "{}"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.zoneAwareLbSetting.failover[].from", "x"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.zoneAwareLbSetting.failover[].to", "x"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.zoneAwareLbSetting.failoverPriority[]", "x"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.zoneAwareLbSetting.minClusterSize", "1"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.warmupDurationSecs", "1s"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.warmup", "{}"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.warmup.duration", "1s"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.warmup.minimumPercent", "1.5"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].loadBalancer.warmup.aggression", "1.5"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].connectionPool", "{}"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].connectionPool.tcp", "{}"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].connectionPool.tcp.maxConnections", "1"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].connectionPool.tcp.connectTimeout", "1s"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].connectionPool.tcp.tcpKeepalive", "{}"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].connectionPool.tcp.tcpKeepalive.probes", "1"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].connectionPool.tcp.tcpKeepalive.time", "1s"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].connectionPool.tcp.tcpKeepalive.interval", "1s"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].connectionPool.tcp.maxConnectionDuration", "1s"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].connectionPool.tcp.idleTimeout", "1s"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].connectionPool.http", "{}"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].connectionPool.http.http1MaxPendingRequests", "1"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].connectionPool.http.http2MaxRequests", "1"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].connectionPool.http.maxRequestsPerConnection", "1"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].connectionPool.http.maxRetries", "1"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].connectionPool.http.idleTimeout", "1s"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].connectionPool.http.h2UpgradePolicy", "UPGRADE"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].connectionPool.http.useClientProtocol", "true"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].connectionPool.http.maxConcurrentStreams", "1"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].connectionPool.http.http2KeepAlive", "{}"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].connectionPool.http.http2KeepAlive.interval", "1s"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].connectionPool.http.http2KeepAlive.timeout", "1s"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].outlierDetection", "{}"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].outlierDetection.consecutiveErrors", "1"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].outlierDetection.splitExternalLocalOriginErrors", "true"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].outlierDetection.consecutiveLocalOriginFailures", "1"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].outlierDetection.consecutiveGatewayErrors", "1"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].outlierDetection.consecutive5xxErrors", "1"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].outlierDetection.interval", "1s"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].outlierDetection.baseEjectionTime", "1s"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].outlierDetection.maxEjectionPercent", "1"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].outlierDetection.minHealthPercent", "1"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].outlierDetection.outlierDetectionHttpErrorCodes[]", "1"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].tls", "{}"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].tls.mode", "DISABLE"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].tls.clientCertificate", "x"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].tls.privateKey", "x"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].tls.caCertificates", "x"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].tls.credentialName", "x"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].tls.subjectAltNames[]", "x"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].tls.sni", "x"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].tls.insecureSkipVerify", "true"),
    ("DestinationRule", "trafficPolicy.portLevelSettings[].tls.caCrl", "x"),
    ("DestinationRule", "trafficPolicy.tunnel", "{}"),
    ("DestinationRule", "trafficPolicy.tunnel.protocol", "x"),
    ("DestinationRule", "trafficPolicy.tunnel.targetHost", "x"),
    ("DestinationRule", "trafficPolicy.tunnel.targetPort", "1"),
    ("DestinationRule", "trafficPolicy.proxyProtocol", "{}"),
    ("DestinationRule", "trafficPolicy.proxyProtocol.version", "V2"),
    ("DestinationRule", "trafficPolicy.retryBudget", "{}"),
    ("DestinationRule", "trafficPolicy.retryBudget.percent", "1.5"),
    ("DestinationRule", "trafficPolicy.retryBudget.minRetryConcurrency", "1"),
    ("DestinationRule", "trafficPolicy.retryBudget.budgetInterval", "1s"),
    ("DestinationRule", "subsets[]", "{}"),
    ("DestinationRule", "subsets[].name", "x"),
    ("DestinationRule", "subsets[].labels", "{k: v}"),
    ("DestinationRule", "subsets[].trafficPolicy", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.simple", "ROUND_ROBIN"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.consistentHash", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.consistentHash.httpHeaderName", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.consistentHash.httpCookie", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.consistentHash.httpCookie.name", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.consistentHash.httpCookie.path", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes[]", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes[].name", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes[].value", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.consistentHash.useSourceIp", "true"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.consistentHash.httpQueryParameterName", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.consistentHash.ringHash", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.consistentHash.ringHash.minimumRingSize", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.consistentHash.maglev", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.consistentHash.maglev.tableSize", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.consistentHash.minimumRingSize", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.localityLbSetting", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.localityLbSetting.distribute[]", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.localityLbSetting.distribute[].from", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.localityLbSetting.distribute[].to", "{k: 1}"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.localityLbSetting.failover[]", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.localityLbSetting.failover[].from", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.localityLbSetting.failover[].to", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.localityLbSetting.failoverPriority[]", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.localityLbSetting.enabled", "true"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.zoneAwareLbSetting", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.zoneAwareLbSetting.enabled", "true"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.zoneAwareLbSetting.failover[]", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.zoneAwareLbSetting.failover[].from", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.zoneAwareLbSetting.failover[].to", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.zoneAwareLbSetting.failoverPriority[]", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.zoneAwareLbSetting.minClusterSize", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.warmupDurationSecs", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.warmup", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.warmup.duration", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.warmup.minimumPercent", "1.5"),
    ("DestinationRule", "subsets[].trafficPolicy.loadBalancer.warmup.aggression", "1.5"),
    ("DestinationRule", "subsets[].trafficPolicy.connectionPool", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.connectionPool.tcp", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.connectionPool.tcp.maxConnections", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.connectionPool.tcp.connectTimeout", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.connectionPool.tcp.tcpKeepalive", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.connectionPool.tcp.tcpKeepalive.probes", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.connectionPool.tcp.tcpKeepalive.time", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.connectionPool.tcp.tcpKeepalive.interval", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.connectionPool.tcp.maxConnectionDuration", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.connectionPool.tcp.idleTimeout", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.connectionPool.http", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.connectionPool.http.http1MaxPendingRequests", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.connectionPool.http.http2MaxRequests", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.connectionPool.http.maxRequestsPerConnection", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.connectionPool.http.maxRetries", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.connectionPool.http.idleTimeout", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.connectionPool.http.h2UpgradePolicy", "UPGRADE"),
    ("DestinationRule", "subsets[].trafficPolicy.connectionPool.http.useClientProtocol", "true"),
    ("DestinationRule", "subsets[].trafficPolicy.connectionPool.http.maxConcurrentStreams", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.connectionPool.http.http2KeepAlive", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.connectionPool.http.http2KeepAlive.interval", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.connectionPool.http.http2KeepAlive.timeout", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.outlierDetection", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.outlierDetection.consecutiveErrors", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.outlierDetection.splitExternalLocalOriginErrors", "true"),
    ("DestinationRule", "subsets[].trafficPolicy.outlierDetection.consecutiveLocalOriginFailures", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.outlierDetection.consecutiveGatewayErrors", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.outlierDetection.consecutive5xxErrors", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.outlierDetection.interval", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.outlierDetection.baseEjectionTime", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.outlierDetection.maxEjectionPercent", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.outlierDetection.minHealthPercent", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.outlierDetection.outlierDetectionHttpErrorCodes[]", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.tls", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.tls.mode", "DISABLE"),
    ("DestinationRule", "subsets[].trafficPolicy.tls.clientCertificate", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.tls.privateKey", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.tls.caCertificates", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.tls.credentialName", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.tls.subjectAltNames[]", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.tls.sni", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.tls.insecureSkipVerify", "true"),
    ("DestinationRule", "subsets[].trafficPolicy.tls.caCrl", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[]", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].port", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].port.number", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.simple", "ROUND_ROBIN"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.consistentHash", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.httpHeaderName", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.httpCookie", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.httpCookie.name", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.httpCookie.path", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.httpCookie.ttl", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.httpCookie.attributes[]", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.httpCookie.attributes[].name", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.httpCookie.attributes[].value", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.useSourceIp", "true"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.httpQueryParameterName", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.ringHash", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.ringHash.minimumRingSize", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.maglev", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.maglev.tableSize", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.consistentHash.minimumRingSize", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.localityLbSetting", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.localityLbSetting.distribute[]", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.localityLbSetting.distribute[].from", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.localityLbSetting.distribute[].to", "{k: 1}"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.localityLbSetting.failover[]", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.localityLbSetting.failover[].from", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.localityLbSetting.failover[].to", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.localityLbSetting.failoverPriority[]", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.localityLbSetting.enabled", "true"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.zoneAwareLbSetting", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.zoneAwareLbSetting.enabled", "true"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.zoneAwareLbSetting.failover[]", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.zoneAwareLbSetting.failover[].from", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.zoneAwareLbSetting.failover[].to", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.zoneAwareLbSetting.failoverPriority[]", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.zoneAwareLbSetting.minClusterSize", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.warmupDurationSecs", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.warmup", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.warmup.duration", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.warmup.minimumPercent", "1.5"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].loadBalancer.warmup.aggression", "1.5"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].connectionPool", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].connectionPool.tcp", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].connectionPool.tcp.maxConnections", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].connectionPool.tcp.connectTimeout", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].connectionPool.tcp.tcpKeepalive", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].connectionPool.tcp.tcpKeepalive.probes", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].connectionPool.tcp.tcpKeepalive.time", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].connectionPool.tcp.tcpKeepalive.interval", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].connectionPool.tcp.maxConnectionDuration", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].connectionPool.tcp.idleTimeout", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].connectionPool.http", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].connectionPool.http.http1MaxPendingRequests", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].connectionPool.http.http2MaxRequests", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].connectionPool.http.maxRequestsPerConnection", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].connectionPool.http.maxRetries", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].connectionPool.http.idleTimeout", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].connectionPool.http.h2UpgradePolicy", "UPGRADE"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].connectionPool.http.useClientProtocol", "true"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].connectionPool.http.maxConcurrentStreams", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].connectionPool.http.http2KeepAlive", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].connectionPool.http.http2KeepAlive.interval", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].connectionPool.http.http2KeepAlive.timeout", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].outlierDetection", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].outlierDetection.consecutiveErrors", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].outlierDetection.splitExternalLocalOriginErrors", "true"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].outlierDetection.consecutiveLocalOriginFailures", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].outlierDetection.consecutiveGatewayErrors", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].outlierDetection.consecutive5xxErrors", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].outlierDetection.interval", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].outlierDetection.baseEjectionTime", "1s"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].outlierDetection.maxEjectionPercent", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].outlierDetection.minHealthPercent", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].outlierDetection.outlierDetectionHttpErrorCodes[]", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].tls", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].tls.mode", "DISABLE"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].tls.clientCertificate", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].tls.privateKey", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].tls.caCertificates", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].tls.credentialName", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].tls.subjectAltNames[]", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].tls.sni", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].tls.insecureSkipVerify", "true"),
    ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].tls.caCrl", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.tunnel", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.tunnel.protocol", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.tunnel.targetHost", "x"),
    ("DestinationRule", "subsets[].trafficPolicy.tunnel.targetPort", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.proxyProtocol", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.proxyProtocol.version", "V2"),
    ("DestinationRule", "subsets[].trafficPolicy.retryBudget", "{}"),
    ("DestinationRule", "subsets[].trafficPolicy.retryBudget.percent", "1.5"),
    ("DestinationRule", "subsets[].trafficPolicy.retryBudget.minRetryConcurrency", "1"),
    ("DestinationRule", "subsets[].trafficPolicy.retryBudget.budgetInterval", "1s"),
    ("DestinationRule", "exportTo[]", "x"),
    ("DestinationRule", "workloadSelector", "{}"),
    ("DestinationRule", "workloadSelector.matchLabels", "{k: v}"),
    // Sidecar
    ("Sidecar", "workloadSelector", "{}"),
    ("Sidecar", "workloadSelector.labels", "{k: v}"),
    ("Sidecar", "ingress[]", "{}"),
    ("Sidecar", "ingress[].port", "{}"),
    ("Sidecar", "ingress[].port.number", "1"),
    ("Sidecar", "ingress[].port.protocol", "x"),
    ("Sidecar", "ingress[].port.name", "x"),
    ("Sidecar", "ingress[].port.targetPort", "1"),
    ("Sidecar", "ingress[].bind", "x"),
    ("Sidecar", "ingress[].captureMode", "DEFAULT"),
    ("Sidecar", "ingress[].defaultEndpoint", "x"),
    ("Sidecar", "ingress[].tls", "{}"),
    ("Sidecar", "ingress[].tls.httpsRedirect", "true"),
    ("Sidecar", "ingress[].tls.mode", "PASSTHROUGH"),
    ("Sidecar", "ingress[].tls.serverCertificate", "x"),
    ("Sidecar", "ingress[].tls.privateKey", "x"),
    ("Sidecar", "ingress[].tls.caCertificates", "x"),
    ("Sidecar", "ingress[].tls.caCrl", "x"),
    ("Sidecar", "ingress[].tls.credentialName", "x"),
    ("Sidecar", "ingress[].tls.credentialNames[]", "x"),
    ("Sidecar", "ingress[].tls.caCertCredentialName", "x"),
    ("Sidecar", "ingress[].tls.tlsCertificates[]", "{}"),
    ("Sidecar", "ingress[].tls.tlsCertificates[].serverCertificate", "x"),
    ("Sidecar", "ingress[].tls.tlsCertificates[].privateKey", "x"),
    ("Sidecar", "ingress[].tls.tlsCertificates[].caCertificates", "x"),
    ("Sidecar", "ingress[].tls.subjectAltNames[]", "x"),
    ("Sidecar", "ingress[].tls.verifyCertificateSpki[]", "x"),
    ("Sidecar", "ingress[].tls.verifyCertificateHash[]", "x"),
    ("Sidecar", "ingress[].tls.minProtocolVersion", "TLSV1_2"),
    ("Sidecar", "ingress[].tls.maxProtocolVersion", "TLSV1_2"),
    ("Sidecar", "ingress[].tls.cipherSuites[]", "x"),
    ("Sidecar", "ingress[].tls.insecureSkipVerify", "true"),
    ("Sidecar", "ingress[].connectionPool", "{}"),
    ("Sidecar", "ingress[].connectionPool.tcp", "{}"),
    ("Sidecar", "ingress[].connectionPool.tcp.maxConnections", "1"),
    ("Sidecar", "ingress[].connectionPool.tcp.connectTimeout", "1s"),
    ("Sidecar", "ingress[].connectionPool.tcp.tcpKeepalive", "{}"),
    ("Sidecar", "ingress[].connectionPool.tcp.tcpKeepalive.probes", "1"),
    ("Sidecar", "ingress[].connectionPool.tcp.tcpKeepalive.time", "1s"),
    ("Sidecar", "ingress[].connectionPool.tcp.tcpKeepalive.interval", "1s"),
    ("Sidecar", "ingress[].connectionPool.tcp.maxConnectionDuration", "1s"),
    ("Sidecar", "ingress[].connectionPool.tcp.idleTimeout", "1s"),
    ("Sidecar", "ingress[].connectionPool.http", "{}"),
    ("Sidecar", "ingress[].connectionPool.http.http1MaxPendingRequests", "1"),
    ("Sidecar", "ingress[].connectionPool.http.http2MaxRequests", "1"),
    ("Sidecar", "ingress[].connectionPool.http.maxRequestsPerConnection", "1"),
    ("Sidecar", "ingress[].connectionPool.http.maxRetries", "1"),
    ("Sidecar", "ingress[].connectionPool.http.idleTimeout", "1s"),
    ("Sidecar", "ingress[].connectionPool.http.h2UpgradePolicy", "UPGRADE"),
    ("Sidecar", "ingress[].connectionPool.http.useClientProtocol", "true"),
    ("Sidecar", "ingress[].connectionPool.http.maxConcurrentStreams", "1"),
    ("Sidecar", "ingress[].connectionPool.http.http2KeepAlive", "{}"),
    ("Sidecar", "ingress[].connectionPool.http.http2KeepAlive.interval", "1s"),
    ("Sidecar", "ingress[].connectionPool.http.http2KeepAlive.timeout", "1s"),
    ("Sidecar", "egress[]", "{}"),
    ("Sidecar", "egress[].port", "{}"),
    ("Sidecar", "egress[].port.number", "1"),
    ("Sidecar", "egress[].port.protocol", "x"),
    ("Sidecar", "egress[].port.name", "x"),
    ("Sidecar", "egress[].port.targetPort", "1"),
    ("Sidecar", "egress[].bind", "x"),
    ("Sidecar", "egress[].captureMode", "DEFAULT"),
    ("Sidecar", "egress[].hosts[]", "x"),
    ("Sidecar", "inboundConnectionPool", "{}"),
    ("Sidecar", "inboundConnectionPool.tcp", "{}"),
    ("Sidecar", "inboundConnectionPool.tcp.maxConnections", "1"),
    ("Sidecar", "inboundConnectionPool.tcp.connectTimeout", "1s"),
    ("Sidecar", "inboundConnectionPool.tcp.tcpKeepalive", "{}"),
    ("Sidecar", "inboundConnectionPool.tcp.tcpKeepalive.probes", "1"),
    ("Sidecar", "inboundConnectionPool.tcp.tcpKeepalive.time", "1s"),
    ("Sidecar", "inboundConnectionPool.tcp.tcpKeepalive.interval", "1s"),
    ("Sidecar", "inboundConnectionPool.tcp.maxConnectionDuration", "1s"),
    ("Sidecar", "inboundConnectionPool.tcp.idleTimeout", "1s"),
    ("Sidecar", "inboundConnectionPool.http", "{}"),
    ("Sidecar", "inboundConnectionPool.http.http1MaxPendingRequests", "1"),
    ("Sidecar", "inboundConnectionPool.http.http2MaxRequests", "1"),
    ("Sidecar", "inboundConnectionPool.http.maxRequestsPerConnection", "1"),
    ("Sidecar", "inboundConnectionPool.http.maxRetries", "1"),
    ("Sidecar", "inboundConnectionPool.http.idleTimeout", "1s"),
    ("Sidecar", "inboundConnectionPool.http.h2UpgradePolicy", "UPGRADE"),
    ("Sidecar", "inboundConnectionPool.http.useClientProtocol", "true"),
    ("Sidecar", "inboundConnectionPool.http.maxConcurrentStreams", "1"),
    ("Sidecar", "inboundConnectionPool.http.http2KeepAlive", "{}"),
    ("Sidecar", "inboundConnectionPool.http.http2KeepAlive.interval", "1s"),
    ("Sidecar", "inboundConnectionPool.http.http2KeepAlive.timeout", "1s"),
    ("Sidecar", "outboundTrafficPolicy", "{}"),
    ("Sidecar", "outboundTrafficPolicy.mode", "REGISTRY_ONLY"),
    ("Sidecar", "outboundTrafficPolicy.egressProxy", "{}"),
    ("Sidecar", "outboundTrafficPolicy.egressProxy.host", "x"),
    ("Sidecar", "outboundTrafficPolicy.egressProxy.subset", "x"),
    ("Sidecar", "outboundTrafficPolicy.egressProxy.port", "{}"),
    ("Sidecar", "outboundTrafficPolicy.egressProxy.port.number", "1"),
    // AuthorizationPolicy (security.istio.io, `security/v1beta1/authorization.proto`)
    ("AuthorizationPolicy", "selector", "{}"),
    ("AuthorizationPolicy", "selector.matchLabels{}", "x"),
    ("AuthorizationPolicy", "targetRef", "{}"),
    ("AuthorizationPolicy", "targetRef.group", "x"),
    ("AuthorizationPolicy", "targetRef.kind", "x"),
    ("AuthorizationPolicy", "targetRef.name", "x"),
    ("AuthorizationPolicy", "targetRef.namespace", "x"),
    ("AuthorizationPolicy", "targetRefs[]", "{}"),
    ("AuthorizationPolicy", "targetRefs[].group", "x"),
    ("AuthorizationPolicy", "targetRefs[].kind", "x"),
    ("AuthorizationPolicy", "targetRefs[].name", "x"),
    ("AuthorizationPolicy", "targetRefs[].namespace", "x"),
    ("AuthorizationPolicy", "rules[]", "{}"),
    ("AuthorizationPolicy", "rules[].from[]", "{}"),
    ("AuthorizationPolicy", "rules[].from[].source", "{}"),
    ("AuthorizationPolicy", "rules[].from[].source.principals[]", "x"),
    ("AuthorizationPolicy", "rules[].from[].source.notPrincipals[]", "x"),
    ("AuthorizationPolicy", "rules[].from[].source.requestPrincipals[]", "x"),
    ("AuthorizationPolicy", "rules[].from[].source.notRequestPrincipals[]", "x"),
    ("AuthorizationPolicy", "rules[].from[].source.namespaces[]", "x"),
    ("AuthorizationPolicy", "rules[].from[].source.notNamespaces[]", "x"),
    ("AuthorizationPolicy", "rules[].from[].source.serviceAccounts[]", "x"),
    ("AuthorizationPolicy", "rules[].from[].source.notServiceAccounts[]", "x"),
    ("AuthorizationPolicy", "rules[].from[].source.ipBlocks[]", "x"),
    ("AuthorizationPolicy", "rules[].from[].source.notIpBlocks[]", "x"),
    ("AuthorizationPolicy", "rules[].from[].source.remoteIpBlocks[]", "x"),
    ("AuthorizationPolicy", "rules[].from[].source.notRemoteIpBlocks[]", "x"),
    ("AuthorizationPolicy", "rules[].to[]", "{}"),
    ("AuthorizationPolicy", "rules[].to[].operation", "{}"),
    ("AuthorizationPolicy", "rules[].to[].operation.hosts[]", "x"),
    ("AuthorizationPolicy", "rules[].to[].operation.notHosts[]", "x"),
    ("AuthorizationPolicy", "rules[].to[].operation.ports[]", "x"),
    ("AuthorizationPolicy", "rules[].to[].operation.notPorts[]", "x"),
    ("AuthorizationPolicy", "rules[].to[].operation.methods[]", "x"),
    ("AuthorizationPolicy", "rules[].to[].operation.notMethods[]", "x"),
    ("AuthorizationPolicy", "rules[].to[].operation.paths[]", "x"),
    ("AuthorizationPolicy", "rules[].to[].operation.notPaths[]", "x"),
    ("AuthorizationPolicy", "rules[].when[]", "{}"),
    ("AuthorizationPolicy", "rules[].when[].key", "x"),
    ("AuthorizationPolicy", "rules[].when[].values[]", "x"),
    ("AuthorizationPolicy", "rules[].when[].notValues[]", "x"),
    ("AuthorizationPolicy", "action", "DENY"),
    ("AuthorizationPolicy", "provider", "{}"),
    ("AuthorizationPolicy", "provider.name", "x"),
    // RequestAuthentication (`security/v1beta1/request_authentication.proto`,
    // `JWTRule` and friends from `security/v1beta1/jwt.proto`)
    ("RequestAuthentication", "selector", "{}"),
    ("RequestAuthentication", "selector.matchLabels{}", "x"),
    ("RequestAuthentication", "targetRef", "{}"),
    ("RequestAuthentication", "targetRef.group", "x"),
    ("RequestAuthentication", "targetRef.kind", "x"),
    ("RequestAuthentication", "targetRef.name", "x"),
    ("RequestAuthentication", "targetRef.namespace", "x"),
    ("RequestAuthentication", "targetRefs[]", "{}"),
    ("RequestAuthentication", "targetRefs[].group", "x"),
    ("RequestAuthentication", "targetRefs[].kind", "x"),
    ("RequestAuthentication", "targetRefs[].name", "x"),
    ("RequestAuthentication", "targetRefs[].namespace", "x"),
    ("RequestAuthentication", "jwtRules[]", "{}"),
    ("RequestAuthentication", "jwtRules[].issuer", "x"),
    ("RequestAuthentication", "jwtRules[].audiences[]", "x"),
    ("RequestAuthentication", "jwtRules[].jwksUri", "x"),
    ("RequestAuthentication", "jwtRules[].jwks", "x"),
    ("RequestAuthentication", "jwtRules[].fromHeaders[]", "{}"),
    ("RequestAuthentication", "jwtRules[].fromHeaders[].name", "x"),
    ("RequestAuthentication", "jwtRules[].fromHeaders[].prefix", "x"),
    ("RequestAuthentication", "jwtRules[].fromParams[]", "x"),
    ("RequestAuthentication", "jwtRules[].outputPayloadToHeader", "x"),
    ("RequestAuthentication", "jwtRules[].fromCookies[]", "x"),
    ("RequestAuthentication", "jwtRules[].forwardOriginalToken", "true"),
    ("RequestAuthentication", "jwtRules[].outputClaimToHeaders[]", "{}"),
    ("RequestAuthentication", "jwtRules[].outputClaimToHeaders[].header", "x"),
    ("RequestAuthentication", "jwtRules[].outputClaimToHeaders[].claim", "x"),
    ("RequestAuthentication", "jwtRules[].timeout", "1s"),
];

/// Fields crossmesh rejects on purpose: (kind, path pattern, value to set or
/// `None` for the table's, reason substring). A pattern covers the field where it
/// occurs (also nested, e.g. under `subsets[].trafficPolicy`) and, for a message
/// rejected as a whole, everything under it. The reasons are those of
/// docs/ISTIO_SUPPORT.md.
const REJECTED: &[(&str, &str, Option<&str>, &str)] = &[
    // VirtualService
    (
        "VirtualService",
        "http[].delegate",
        None,
        "delegate VirtualServices are not implemented",
    ),
    (
        "VirtualService",
        "fault.delay.exponentialDelay",
        None,
        "Istio does not implement it either",
    ),
    (
        "VirtualService",
        "fault.abort.http2Error",
        None,
        "not implemented",
    ),
    (
        "VirtualService",
        "tcp[].match[].destinationSubnets[]",
        Some("10.0.0.0/8"),
        "not supported by crossmesh",
    ),
    (
        "VirtualService",
        "tcp[].match[].sourceSubnet",
        None,
        "deprecated; not implemented",
    ),
    (
        "VirtualService",
        "tls[].match[].destinationSubnets[]",
        Some("10.0.0.0/8"),
        "not supported by crossmesh",
    ),
    (
        "VirtualService",
        "redirect.prefixRewrite",
        None,
        "prefix rewrite are not implemented",
    ),
    (
        "VirtualService",
        "retries.retryIgnorePreviousHosts",
        Some("false"),
        "false is not implemented",
    ),
    // DestinationRule
    (
        "DestinationRule",
        "workloadSelector",
        None,
        "workload-scoped rules are not implemented",
    ),
    ("DestinationRule", "tunnel", None, "not implemented"),
    ("DestinationRule", "proxyProtocol", None, "not implemented"),
    (
        "DestinationRule",
        "retryBudget",
        None,
        "retry budgets are not implemented",
    ),
    (
        "DestinationRule",
        "zoneAwareLbSetting",
        None,
        "zone-aware load balancing is not implemented",
    ),
    (
        "DestinationRule",
        "loadBalancer.warmup",
        None,
        "warmup (duration, minimumPercent, aggression) is not implemented",
    ),
    (
        "DestinationRule",
        "httpCookie.attributes[]",
        None,
        "cookie attributes are not implemented",
    ),
    (
        "DestinationRule",
        "http.http2KeepAlive",
        None,
        "HTTP/2 keepalive pings are not implemented",
    ),
    (
        "DestinationRule",
        "outlierDetectionHttpErrorCodes[]",
        Some("503"),
        "custom outlier error codes are not implemented",
    ),
    // Gateway
    (
        "Gateway",
        "servers[].port.targetPort",
        None,
        "listeners bind the server port",
    ),
    (
        "Gateway",
        "servers[].bind",
        None,
        "gateway listeners bind 0.0.0.0",
    ),
    (
        "Gateway",
        "servers[].defaultEndpoint",
        None,
        "only sidecars have default endpoints",
    ),
    (
        "Gateway",
        "servers[].tls.serverCertificate",
        None,
        "not supported by crossmesh: serverCertificate",
    ),
    (
        "Gateway",
        "servers[].tls.privateKey",
        None,
        "not supported by crossmesh: privateKey",
    ),
    (
        "Gateway",
        "servers[].tls.caCertificates",
        None,
        "not supported by crossmesh: caCertificates",
    ),
    (
        "Gateway",
        "servers[].tls.caCrl",
        None,
        "not supported by crossmesh: caCrl",
    ),
    (
        "Gateway",
        "servers[].tls.credentialNames[]",
        None,
        "not supported by crossmesh: credentialNames",
    ),
    (
        "Gateway",
        "servers[].tls.caCertCredentialName",
        None,
        "not supported by crossmesh: caCertCredentialName",
    ),
    (
        "Gateway",
        "servers[].tls.tlsCertificates[]",
        None,
        "not supported by crossmesh: tlsCertificates",
    ),
    (
        "Gateway",
        "servers[].tls.insecureSkipVerify",
        None,
        "not supported by crossmesh: insecureSkipVerify",
    ),
    // Sidecar
    (
        "Sidecar",
        "port.targetPort",
        None,
        "sidecar listeners bind the port number itself",
    ),
    (
        "Sidecar",
        "ingress[].captureMode",
        Some("NONE"),
        "captureMode NONE per listener",
    ),
    (
        "Sidecar",
        "egress[].captureMode",
        Some("IPTABLES"),
        "captureMode IPTABLES per listener",
    ),
    (
        "Sidecar",
        "ingress[].defaultEndpoint",
        Some("unix:///var/run/app.sock"),
        "unix sockets and 0.0.0.0 are not implemented",
    ),
    (
        "Sidecar",
        "ingress[].tls",
        None,
        "inbound TLS termination is not implemented",
    ),
    (
        "Sidecar",
        "http.http2KeepAlive",
        None,
        "HTTP/2 keepalive pings are not implemented",
    ),
    (
        "Sidecar",
        "outboundTrafficPolicy.egressProxy",
        None,
        "egress proxies are not implemented",
    ),
    (
        "Sidecar",
        "egress[].hosts[]",
        Some("~prod/*"),
        "host exclusions",
    ),
    // AuthorizationPolicy
    (
        "AuthorizationPolicy",
        "provider",
        None,
        "provider is only for action CUSTOM",
    ),
    // RequestAuthentication
    (
        "RequestAuthentication",
        "targetRefs[].kind",
        Some("Service"),
        "waypoint proxies",
    ),
];

/// Whether table path `path` is, or lies under, the field `pattern` names.
fn covers(pattern: &str, path: &str) -> bool {
    path == pattern
        || path.starts_with(&format!("{pattern}."))
        || path.ends_with(&format!(".{pattern}"))
        || path.contains(&format!(".{pattern}."))
}

/// Fields our types require in a message (Istio marks them REQUIRED), filled in
/// whenever the test creates that message: (kind, path suffix, YAML mapping).
const REQUIRED: &[(&str, &str, &str)] = &[
    (
        "Gateway",
        "servers[]",
        "{port: {number: 443, protocol: HTTPS}, hosts: ['*']}",
    ),
    ("Gateway", "port", "{number: 443, protocol: HTTPS}"),
    ("VirtualService", "route[]", "{destination: {host: a}}"),
    ("VirtualService", "mirrors[]", "{destination: {host: a}}"),
    ("VirtualService", "destination", "{host: a}"),
    ("VirtualService", "mirror", "{host: a}"),
    ("VirtualService", "directResponse", "{status: 200}"),
    (
        "VirtualService",
        "uriRegexRewrite",
        "{match: a, rewrite: b}",
    ),
    ("DestinationRule", "", "{host: h}"),
    ("DestinationRule", "subsets[]", "{name: s}"),
    (
        "DestinationRule",
        "portLevelSettings[]",
        "{port: {number: 80}}",
    ),
    ("DestinationRule", "httpCookie", "{name: c}"),
    ("DestinationRule", "attributes[]", "{name: a}"),
    (
        "Sidecar",
        "ingress[]",
        "{port: {number: 80}, defaultEndpoint: '127.0.0.1:8080'}",
    ),
    ("Sidecar", "egress[]", "{hosts: ['./*']}"),
    ("Sidecar", "port", "{number: 80}"),
    ("Sidecar", "egressProxy", "{host: a}"),
    ("AuthorizationPolicy", "when[]", "{key: source.ip}"),
];

fn yaml(v: &str) -> Value {
    serde_saphyr::from_str(v).unwrap_or_else(|e| panic!("test value {v:?}: {e}"))
}

/// The required fields of the message at `path` (empty when none).
fn required(kind: &str, path: &str) -> Map<String, Value> {
    REQUIRED
        .iter()
        .filter(|(k, suffix, _)| {
            *k == kind && (path == *suffix || path.ends_with(&format!(".{suffix}")))
        })
        .flat_map(|(_, _, v)| yaml(v).as_object().cloned().unwrap_or_default())
        .collect()
}

/// A spec for `kind` with `value` at `path`, every message on the way created
/// with its required fields. The last segment is written as `last_key` (a
/// misspelling, for the negative test).
fn spec_with(kind: &str, path: &str, value: Value, last_key: Option<&str>) -> Value {
    let mut spec = Value::Object(required(kind, ""));
    let segs: Vec<&str> = path.split('.').collect();
    let mut node = &mut spec;
    let mut walked = String::new();
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        let (name, kind_of) = if let Some(n) = seg.strip_suffix("[]") {
            (n, "list")
        } else if let Some(n) = seg.strip_suffix("{}") {
            (n, "map")
        } else {
            (*seg, "field")
        };
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(seg);
        let key = if last { last_key.unwrap_or(name) } else { name };
        let obj = node.as_object_mut().expect("an object on the way");
        // A message the test creates starts with its required fields.
        let fresh = |v: Value| -> Value {
            match v {
                Value::Object(mut m) => {
                    for (k, r) in required(kind, &walked) {
                        m.entry(k).or_insert(r);
                    }
                    Value::Object(m)
                }
                other => other,
            }
        };
        let elem = if last {
            fresh(value.clone())
        } else {
            fresh(json!({}))
        };
        let slot = match kind_of {
            "list" => {
                let list = obj.entry(key).or_insert_with(|| json!([]));
                let list = list.as_array_mut().expect("a list");
                if list.is_empty() || last {
                    *list = vec![elem];
                }
                &mut list[0]
            }
            "map" => {
                let map = obj.entry(key).or_insert_with(|| json!({}));
                let map = map.as_object_mut().expect("a map");
                if !map.contains_key("k") || last {
                    map.insert("k".into(), elem);
                }
                map.get_mut("k").expect("just inserted")
            }
            _ => {
                if last || !obj.contains_key(key) {
                    obj.insert(key.to_string(), elem);
                }
                obj.get_mut(key).expect("just inserted")
            }
        };
        node = slot;
    }
    spec
}

/// The value at table path `path` in `v` (first element of lists, key `k` of maps).
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |node, seg| {
        if let Some(n) = seg.strip_suffix("[]") {
            node.get(n)?.get(0)
        } else if let Some(n) = seg.strip_suffix("{}") {
            node.get(n)?.get("k")
        } else {
            node.get(seg)
        }
    })
}

/// `path` as crossmesh names fields in reasons: `spec.http[0].match[0]...`.
fn field_name(path: &str) -> String {
    format!("spec.{}", path.replace("[]", "[0]").replace("{}", ".k"))
}

/// Parse `spec` into the kind's serde type and serialize it back.
fn round_trip(kind: &str, spec: Value) -> Result<Value, String> {
    fn rt<T: serde::de::DeserializeOwned + serde::Serialize>(v: Value) -> Result<Value, String> {
        let t: T = serde_json::from_value(v).map_err(|e| e.to_string())?;
        serde_json::to_value(&t).map_err(|e| e.to_string())
    }
    match kind {
        "Gateway" => rt::<Gateway>(spec),
        "VirtualService" => rt::<VirtualService>(spec),
        "DestinationRule" => rt::<DestinationRule>(spec),
        "Sidecar" => rt::<Sidecar>(spec),
        "AuthorizationPolicy" => rt::<AuthorizationPolicy>(spec),
        "RequestAuthentication" => rt::<RequestAuthentication>(spec),
        other => panic!("kind {other}"),
    }
}

fn object(kind: &str, spec: Value) -> Value {
    let group = match kind {
        "AuthorizationPolicy" | "RequestAuthentication" => "security.istio.io",
        _ => "networking.istio.io",
    };
    json!({
        "apiVersion": format!("{group}/v1"),
        "kind": kind,
        "metadata": {"name": "t", "namespace": "prod"},
        "spec": spec,
    })
}

fn rejections(kind: &str, spec: Value) -> Vec<Rejection> {
    parse_object("t.yaml", &object(kind, spec))
        .err()
        .unwrap_or_default()
}

#[test]
fn every_istio_field_is_parsed_and_kept() {
    let mut failures = Vec::new();
    for (kind, path, value) in FIELDS {
        let spec = spec_with(kind, path, yaml(value), None);
        match round_trip(kind, spec) {
            Err(e) => failures.push(format!("{kind} {path}: not accepted: {e}")),
            Ok(back) => match at(&back, path) {
                None | Some(Value::Null) => {
                    failures.push(format!("{kind} {path}: parsed but not kept: {back}"))
                }
                Some(_) => {}
            },
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_misspelt_field_is_rejected_by_name() {
    let mut failures = Vec::new();
    for (kind, path, value) in FIELDS {
        let last = path.rsplit('.').next().unwrap_or(path);
        let name = last.trim_end_matches("[]").trim_end_matches("{}");
        // A plausible slip: the proto's snake_case name where it differs, else a
        // typo.
        let snake: String = name
            .chars()
            .flat_map(|c| {
                if c.is_ascii_uppercase() {
                    vec!['_', c.to_ascii_lowercase()]
                } else {
                    vec![c]
                }
            })
            .collect();
        let wrong = if snake != name {
            snake
        } else {
            // The last letter typed twice (`prefixx`).
            format!("{name}{}", name.chars().last().unwrap_or('x'))
        };
        let spec = spec_with(kind, path, yaml(value), Some(&wrong));
        let r = rejections(kind, spec);
        let named = r
            .iter()
            .any(|r| r.reason.contains(&format!("unknown field `{wrong}`")));
        if !named {
            failures.push(format!("{kind} {path} as {wrong:?}: {r:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn fields_rejected_on_purpose_are_rejected_with_their_reason() {
    let mut failures = Vec::new();
    for (kind, pattern, set, reason) in REJECTED {
        let rows: Vec<_> = FIELDS
            .iter()
            .filter(|(k, p, _)| k == kind && covers(pattern, p))
            .collect();
        if rows.is_empty() {
            failures.push(format!("{kind} {pattern}: no such field in the table"));
        }
        for (_, path, value) in rows {
            // An explicit value applies to the field the pattern names itself.
            let value = match set {
                Some(v) if path.ends_with(pattern) => v,
                _ => value,
            };
            let r = rejections(kind, spec_with(kind, path, yaml(value), None));
            let field = field_name(path);
            let hit = r
                .iter()
                .any(|r| field.starts_with(&r.field) && r.reason.contains(reason));
            if !hit || r.iter().any(|r| r.reason.contains("unknown field")) {
                failures.push(format!(
                    "{kind} {path} = {value}: want {reason:?} at {field}, got {r:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// One example file and what `crossmesh validate` must say about it: each
/// problem as (object `Kind namespace/name`, reason substring), and the
/// substrings of the only warnings allowed. No problems means the example passes.
struct Example {
    file: &'static str,
    problems: &'static [(&'static str, &'static str)],
    warnings: &'static [&'static str],
}

const fn ok(file: &'static str) -> Example {
    Example {
        file,
        problems: &[],
        warnings: &[],
    }
}

const fn rejected(
    file: &'static str,
    problems: &'static [(&'static str, &'static str)],
) -> Example {
    Example {
        file,
        problems,
        warnings: &[],
    }
}

/// Reasons documented in docs/ISTIO_SUPPORT.md.
const GATEWAY_CERT_FILES: &str = "not supported by crossmesh: serverCertificate, privateKey";
const DELEGATE: &str = "delegate VirtualServices are not implemented";
const CAPTURE_NONE: &str = "captureMode NONE per listener";
const UNIX_ENDPOINT: &str = "unix sockets and 0.0.0.0 are not implemented";
const ZONE_AWARE: &str = "zone-aware load balancing is not implemented";

/// Istio's reference examples (tests/istio_examples/, one file each) and the user
/// seed documents' Istio YAML.
const EXAMPLES: &[Example] = &[
    // Gateway
    rejected("gateway-00-my-gateway.yaml", &[
        ("Gateway some-config-namespace/my-gateway", GATEWAY_CERT_FILES),
    ]),
    ok("gateway-01-bookinfo-rule.yaml"),
    ok("gateway-02-bookinfo-mongo.yaml"),
    ok("gateway-03-my-gateway.yaml"),
    ok("gateway-04-my-ingress.yaml"),
    ok("gateway-05-my-tcp-ingress.yaml"),
    ok("gateway-06-my-tls-ingress.yaml"),
    // VirtualService
    ok("virtual-service-00-reviews-route.yaml"),
    ok("virtual-service-01-reviews-destination.yaml"),
    ok("virtual-service-02-reviews-route.yaml"),
    ok("virtual-service-03-reviews-destination.yaml"),
    ok("virtual-service-04-my-productpage-rule.yaml"),
    // A DNS ServiceEntry for wikipedia.org and the VirtualService on its host.
    ok("virtual-service-05-external-svc-wikipedia.yaml"),
    ok("virtual-service-06-fragment-6.yaml"),
    rejected("virtual-service-07-bookinfo.yaml", &[
        ("VirtualService default/bookinfo", DELEGATE),
        ("VirtualService default/bookinfo", DELEGATE),
    ]),
    // The delegates of the example above: no hosts.
    rejected("virtual-service-08-productpage.yaml", &[("VirtualService nsA/productpage", DELEGATE)]),
    rejected("virtual-service-09-reviews.yaml", &[("VirtualService nsB/reviews", DELEGATE)]),
    ok("virtual-service-10-reviews-route.yaml"),
    ok("virtual-service-11-bookinfo-sni.yaml"),
    ok("virtual-service-12-bookinfo-mongo.yaml"),
    ok("virtual-service-13-ratings-route.yaml"),
    ok("virtual-service-14-reviews-route.yaml"),
    ok("virtual-service-15-reviews-destination.yaml"),
    ok("virtual-service-16-reviews-route-two-domains.yaml"),
    ok("virtual-service-17-ratings-route.yaml"),
    // Istio's page writes the proto name `prefix_rewrite`; Istio's CRD schema and
    // crossmesh know the JSON name `prefixRewrite` only (see the next file).
    rejected("virtual-service-18-foo-redirect.yaml", &[
        ("VirtualService default/foo-redirect", "unknown field `prefix_rewrite`"),
    ]),
    rejected("virtual-service-18b-foo-redirect-json-name.yaml", &[
        ("VirtualService default/foo-redirect", "redirects with a prefix rewrite are not implemented"),
    ]),
    ok("virtual-service-19-ratings-route.yaml"),
    ok("virtual-service-20-ratings-route.yaml"),
    ok("virtual-service-21-ratings-route.yaml"),
    ok("virtual-service-22-ratings-route.yaml"),
    ok("virtual-service-23-ratings-route.yaml"),
    ok("virtual-service-24-ratings-route.yaml"),
    ok("virtual-service-25-reviews-route.yaml"),
    ok("virtual-service-26-ratings-route.yaml"),
    // DestinationRule
    ok("destination-rule-00-bookinfo-ratings.yaml"),
    ok("destination-rule-01-bookinfo-ratings.yaml"),
    ok("destination-rule-02-bookinfo-ratings-port.yaml"),
    rejected("destination-rule-03-configure-client-mtls-dr-with-workloadselector.yaml", &[
        ("DestinationRule default/configure-client-mtls-dr-with-workloadselector", "workload-scoped rules are not implemented"),
    ]),
    ok("destination-rule-04-bookinfo-ratings.yaml"),
    ok("destination-rule-05-bookinfo-ratings.yaml"),
    ok("destination-rule-06-bookinfo-ratings.yaml"),
    ok("destination-rule-07-bookinfo-redis.yaml"),
    ok("destination-rule-08-reviews-cb-policy.yaml"),
    ok("destination-rule-09-db-mtls.yaml"),
    ok("destination-rule-10-tls-foo.yaml"),
    ok("destination-rule-11-ratings-istio-mtls.yaml"),
    ok("destination-rule-12-fragment-12.yaml"),
    ok("destination-rule-13-fragment-13.yaml"),
    ok("destination-rule-14-fragment-14.yaml"),
    ok("destination-rule-15-fragment-15.yaml"),
    rejected("destination-rule-16-ratings-zone-aware.yaml", &[("DestinationRule default/ratings-zone-aware", ZONE_AWARE)]),
    rejected("destination-rule-17-ratings-zone-aware-failover.yaml", &[("DestinationRule default/ratings-zone-aware-failover", ZONE_AWARE)]),
    rejected("destination-rule-18-fragment-18.yaml", &[("DestinationRule default/fragment-18", ZONE_AWARE)]),
    rejected("destination-rule-19-fragment-19.yaml", &[("DestinationRule default/fragment-19", ZONE_AWARE)]),
    // Sidecar
    ok("sidecar-00-default.yaml"),
    ok("sidecar-01-default.yaml"),
    rejected("sidecar-02-default.yaml", &[
        ("Sidecar prod-us1/default", "host exclusions (\"~prod-us2/*\""),
        ("Sidecar prod-us1/default", "host exclusions (\"~prod-apis/foo.example.com\""),
        ("Sidecar prod-us1/default", "host exclusions (\"~/bar.example.com\""),
    ]),
    rejected("sidecar-03-ratings.yaml", &[("Sidecar prod-us1/ratings", UNIX_ENDPOINT)]),
    rejected("sidecar-04-no-ip-tables.yaml", &[
        ("Sidecar prod-us1/no-ip-tables", CAPTURE_NONE),
        ("Sidecar prod-us1/no-ip-tables", CAPTURE_NONE),
    ]),
    ok("sidecar-05-external-svc-mysql.yaml"),
    rejected("sidecar-06-partial-ip-tables.yaml", &[
        ("Sidecar prod-us1/partial-ip-tables", "captureMode IPTABLES per listener"),
        ("Sidecar prod-us1/partial-ip-tables", CAPTURE_NONE),
    ]),
    // The PeerAuthentication beside the Sidecar (workload STRICT, port 80
    // DISABLE) is accepted.
    rejected("sidecar-07-ratings.yaml", &[
        ("Sidecar prod-us1/ratings", UNIX_ENDPOINT),
        ("Sidecar prod-us1/ratings", "inbound TLS termination is not implemented"),
    ]),
    // crossmesh requires defaultEndpoint (docs: ingress[].defaultEndpoint, partial).
    rejected("sidecar-08-connection-pool-settings.yaml", &[
        ("Sidecar prod-us1/connection-pool-settings", "crossmesh needs defaultEndpoint"),
    ]),
    // User seed documents.
    ok("seed-001-002-tencent-cross-account.yaml"),
    Example {
        file: "../golden/istio/seed004_quickstart.yaml",
        problems: &[],
        warnings: &[
            "\"*.*\" is not a valid Istio wildcard (only the first label may be *); treated as \"*\"",
            "consecutiveErrors: deprecated",
        ],
    },
];

/// The binary under test: `CROSSMESH_BIN` (a release build, as users run it) or
/// the test profile's.
fn crossmesh_bin() -> PathBuf {
    match std::env::var("CROSSMESH_BIN") {
        Ok(b) if !b.is_empty() => PathBuf::from(b),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_crossmesh")),
    }
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/istio_examples")
}

#[test]
fn istio_reference_examples_through_crossmesh_validate() {
    let dir = examples_dir();
    // Every example file is listed, so none is skipped silently.
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("tests/istio_examples")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = EXAMPLES
        .iter()
        .map(|e| e.file.to_string())
        .filter(|f| !f.contains('/'))
        .collect();
    listed.sort();
    assert_eq!(on_disk, listed, "tests/istio_examples and EXAMPLES differ");

    let mut failures = Vec::new();
    for ex in EXAMPLES {
        let path = dir.join(ex.file);
        let out = Command::new(crossmesh_bin())
            .arg("validate")
            .arg(&path)
            .env_remove("RUST_LOG")
            .output()
            .expect("run crossmesh validate");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (warnings, problems): (Vec<&str>, Vec<&str>) = stdout
            .lines()
            .filter(|l| !l.starts_with("no problems found"))
            .partition(|l| l.starts_with("warning: "));
        let prefix = format!("{}: ", path.display());
        let mut report = |what: String| failures.push(format!("{}: {what}\n{stdout}", ex.file));
        if out.status.success() != ex.problems.is_empty() {
            report(format!("exit status {}", out.status));
        }
        // Each expected problem matches its own line; no line is left over.
        let mut left: Vec<&str> = problems.clone();
        for (object, reason) in ex.problems {
            let want = format!("{prefix}{object}: ");
            match left
                .iter()
                .position(|l| l.starts_with(&want) && l.contains(reason))
            {
                Some(i) => {
                    left.remove(i);
                }
                None => report(format!("no problem {object}: ...{reason}...")),
            }
        }
        for l in &left {
            report(format!("unexpected problem: {l}"));
        }
        for w in &warnings {
            if !ex.warnings.iter().any(|allowed| w.contains(allowed)) {
                report(format!("unexpected warning: {w}"));
            }
        }
        for allowed in ex.warnings {
            if !warnings.iter().any(|w| w.contains(allowed)) {
                report(format!("missing warning: {allowed}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
