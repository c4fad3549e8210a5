//! Prometheus metrics for routes, upstreams, listeners and reloads (plugin metrics are registered
//! by the policy runtime into the same registry). Served on the admin listener at `/metrics`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock, Mutex};

/// A route or upstream name as a label value. Shared, so that labelling a request's metrics
/// costs a reference count, not a string copy.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Name(pub Arc<str>);

impl Name {
    pub fn new(s: &str) -> Self {
        Name(Arc::from(s))
    }

    /// The route label of requests that matched no route.
    pub fn no_route() -> Self {
        static DASH: LazyLock<Name> = LazyLock::new(|| Name::new("-"));
        DASH.clone()
    }
}

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: Name,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    pub upstream: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamOutcome {
    pub upstream: Name,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AggregateLabel {
    pub route: String,
    pub backend: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    pub upstream: String,
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

pub struct Metrics {
    pub requests: Family<RouteStatus, Counter>,
    pub latency: Family<RouteLabel, Histogram>,
    pub upstream_requests: Family<UpstreamOutcome, Counter>,
    pub upstream_latency: Family<UpstreamLabel, Histogram>,
    pub target_healthy: Family<TargetLabel, Gauge>,
    pub target_in_flight: Family<TargetLabel, Gauge>,
    pub connections: Family<ListenerLabel, Gauge>,
    /// Idle HTTP/1 connections parked without hyper's buffers (a subset of `connections`).
    pub parked: Family<ListenerLabel, Gauge>,
    pub reloads: Family<ResultLabel, Counter>,
    pub aggregate_calls: Family<AggregateLabel, Counter>,
    pub aggregate_latency: Family<RouteLabel, Histogram>,
    pub registry: Mutex<Registry>,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
    .into_iter()
}

impl Metrics {
    pub fn new() -> Self {
        let requests = Family::<RouteStatus, Counter>::default();
        let latency = Family::<RouteLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        let upstream_requests = Family::<UpstreamOutcome, Counter>::default();
        let upstream_latency = Family::<UpstreamLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        let target_healthy = Family::<TargetLabel, Gauge>::default();
        let target_in_flight = Family::<TargetLabel, Gauge>::default();
        let connections = Family::<ListenerLabel, Gauge>::default();
        let parked = Family::<ListenerLabel, Gauge>::default();
        let reloads = Family::<ResultLabel, Counter>::default();
        let aggregate_calls = Family::<AggregateLabel, Counter>::default();
        let aggregate_latency = Family::<RouteLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        let mut r = Registry::with_prefix("weir");
        r.register(
            "requests",
            "Requests handled, by route and status",
            requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from request head to response head, by route",
            latency.clone(),
        );
        r.register(
            "upstream_requests",
            "Requests sent upstream, by upstream and outcome",
            upstream_requests.clone(),
        );
        r.register(
            "upstream_duration_seconds",
            "Upstream response time, by upstream",
            upstream_latency.clone(),
        );
        r.register(
            "target_healthy",
            "1 if the target receives traffic",
            target_healthy.clone(),
        );
        r.register(
            "target_in_flight",
            "Requests in flight per target",
            target_in_flight.clone(),
        );
        r.register(
            "connections_active",
            "Open client connections",
            connections.clone(),
        );
        r.register(
            "connections_parked",
            "Idle HTTP/1 client connections waiting for a request without buffers",
            parked.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads by result",
            reloads.clone(),
        );
        r.register(
            "aggregate_backend_calls",
            "Aggregate backend calls by route, backend and outcome",
            aggregate_calls.clone(),
        );
        r.register(
            "aggregate_backend_duration_seconds",
            "Aggregate backend latency, by route/backend",
            aggregate_latency.clone(),
        );
        Self {
            aggregate_calls,
            aggregate_latency,
            requests,
            latency,
            upstream_requests,
            upstream_latency,
            target_healthy,
            target_in_flight,
            connections,
            parked,
            reloads,
            registry: Mutex::new(r),
        }
    }

    /// OpenMetrics text of every registered metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
