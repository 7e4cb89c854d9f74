//! Debug HTTP: readiness, sync status, config dumps, registry, config and metrics.
