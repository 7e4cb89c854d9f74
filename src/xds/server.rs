//! The ADS gRPC server: `StreamAggregatedResources` (state of the world) and
//! `DeltaAggregatedResources`.
