//! The access log line, request metrics and the `on-log` policy phase, run once per request
//! after its response body was sent.

use crate::proxy::RequestFacts;
use crate::state::Gateway;
use http::StatusCode;
use std::sync::Arc;
use std::time::Duration;

pub fn record(
    gw: &Arc<Gateway>,
    facts: &RequestFacts,
    chain: Option<crate::policy::ChainSession>,
    status: StatusCode,
    head_latency: Duration,
    bytes: u64,
) {
    let route = facts.route.as_ref().map_or("-", |r| r.spec.name.as_str());
    let upstream = facts
        .route
        .as_ref()
        .and_then(|r| r.spec.upstream.as_deref())
        .unwrap_or("-");
    let total = facts.start.elapsed();
    let label = facts
        .route
        .as_ref()
        .map_or_else(crate::metrics::Name::no_route, |r| r.label.clone());
    let count = || {
        gw.metrics
            .requests
            .get_or_create(&crate::metrics::RouteStatus {
                route: label.clone(),
                status: status.as_u16(),
            })
            .clone()
    };
    match &facts.route {
        Some(r) if status == http::StatusCode::OK => r.ok_count.get_or_init(count).inc(),
        _ => count().inc(),
    };
    match &facts.route {
        Some(r) => r.latency.observe(head_latency.as_secs_f64()),
        None => gw
            .metrics
            .latency
            .get_or_create(&crate::metrics::RouteLabel { route: label })
            .observe(head_latency.as_secs_f64()),
    }
    if gw.table().config.log.access_log {
        tracing::info!(
            target: "weir::access",
            route,
            upstream,
            target_url = facts.upstream_target.as_deref().unwrap_or("-"),
            method = %facts.method,
            host = %facts.host,
            path = %facts.path,
            status = status.as_u16(),
            latency_ms = total.as_secs_f64() * 1000.0,
            bytes,
            client = %facts.client_ip,
            request_id = %facts.request_id,
            trace_id = %facts.trace_id,
        );
    }
    if let Some(chain) = chain
        && chain.wants_log()
    {
        chain.spawn_on_log(crate::policy::log_entry(facts, status, total, bytes));
    }
}
