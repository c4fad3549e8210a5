//! Declarative fan-out: one client call, every `aggregate` backend called concurrently, their JSON
//! answers merged. A required backend that fails answers 502 (504 on timeout) naming it; an
//! optional one is left out and listed in `x-weir-partial`.

use super::forward::Outgoing;
use super::{RequestFacts, hygiene};
use crate::body::{self, ProxyBody};
use crate::config::AggregateBackend;
use crate::error::GatewayError;
use crate::state::{Gateway, RouteRuntime};
use crate::upstream::Upstream;
use http::{HeaderValue, Request, Response, StatusCode, header};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why one backend did not contribute.
enum Failure {
    Timeout,
    Failed(String),
}

/// Name used in errors, headers and metrics: the group, else the upstream.
fn label(b: &AggregateBackend) -> &str {
    b.group.as_deref().unwrap_or(&b.upstream)
}

/// The query string to send to a backend.
fn backend_query(b: &AggregateBackend, client_query: Option<&str>) -> Option<String> {
    let q = client_query?;
    match &b.forward_query {
        None => Some(q.to_string()),
        Some(keep) => {
            let kept: Vec<&str> = q
                .split('&')
                .filter(|kv| {
                    let k = kv.split('=').next().unwrap_or("");
                    keep.iter().any(|want| want == k)
                })
                .collect();
            (!kept.is_empty()).then(|| kept.join("&"))
        }
    }
}

async fn call_one(
    upstream: &Arc<Upstream>,
    b: &AggregateBackend,
    out: &Outgoing,
    facts: &RequestFacts,
    cap: u64,
) -> Result<serde_json::Value, Failure> {
    let idx = upstream
        .pick(None, &[])
        .ok_or_else(|| Failure::Failed("no healthy target".into()))?;
    let _guard = upstream
        .acquire(idx)
        .ok_or_else(|| Failure::Failed("upstream at its concurrency limit".into()))?;
    let mut pq = b.path.clone();
    if let Some(q) = backend_query(b, out.parts.uri.query()) {
        pq.push(if pq.contains('?') { '&' } else { '?' });
        pq.push_str(&q);
    }
    let uri = http::Uri::builder()
        .path_and_query(pq)
        .build()
        .map_err(|e| Failure::Failed(format!("bad backend URI: {e}")))?;
    let mut req = Request::get(uri)
        .body(body::empty())
        .map_err(|e| Failure::Failed(e.to_string()))?;
    let h = req.headers_mut();
    for name in &b.forward_headers {
        for v in out.parts.headers.get_all(name) {
            h.append(name.clone(), v.clone());
        }
    }
    for name in [
        hygiene::X_REQUEST_ID,
        hygiene::TRACEPARENT,
        hygiene::X_FORWARDED_FOR,
        hygiene::X_FORWARDED_PROTO,
        hygiene::X_FORWARDED_HOST,
    ] {
        if let Some(v) = out.parts.headers.get(&name) {
            h.insert(name, v.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(&facts.host) {
        h.entry(header::HOST).or_insert(v);
    }
    let res = match tokio::time::timeout(b.timeout, upstream.request(idx, req)).await {
        Err(_) => {
            upstream.report(idx, false);
            return Err(Failure::Timeout);
        }
        Ok(Err(e)) => {
            upstream.report(idx, false);
            return Err(Failure::Failed(e.to_string()));
        }
        Ok(Ok(r)) => r,
    };
    let status = res.status();
    upstream.report(idx, !status.is_server_error());
    if !status.is_success() {
        return Err(Failure::Failed(format!("status {}", status.as_u16())));
    }
    let body = match tokio::time::timeout(
        b.timeout,
        super::collect_body(body::boxed(res.into_body()), cap),
    )
    .await
    {
        Err(_) => return Err(Failure::Timeout),
        Ok(Err(GatewayError::BodyTooLarge(n))) => {
            return Err(Failure::Failed(format!("response larger than {n} bytes")));
        }
        Ok(Err(e)) => return Err(Failure::Failed(e.to_string())),
        Ok(Ok(b)) => b,
    };
    serde_json::from_slice(&body).map_err(|e| Failure::Failed(format!("invalid JSON: {e}")))
}

/// Calls every backend of the route concurrently and merges the answers.
pub async fn run(
    gw: &Arc<Gateway>,
    route: &RouteRuntime,
    out: Outgoing,
    facts: &mut RequestFacts,
) -> Result<Response<ProxyBody>, GatewayError> {
    let cap = route.spec.max_body;
    let deadline = route.spec.timeout;
    let calls = route.aggregate.iter().map(|(b, up)| {
        let out = &out;
        let facts = &*facts;
        async move {
            let started = Instant::now();
            let r = call_one(up, b, out, facts, cap).await;
            (b, started.elapsed(), r)
        }
    });
    let results = match tokio::time::timeout(deadline, futures::future::join_all(calls)).await {
        Ok(r) => r,
        Err(_) => {
            return Err(GatewayError::UpstreamTimeout(format!(
                "aggregate {}",
                route.spec.name
            )));
        }
    };
    let mut merged = serde_json::Map::new();
    let mut partial: Vec<&str> = Vec::new();
    for (b, took, r) in results {
        let outcome = match &r {
            Ok(_) => "ok",
            Err(Failure::Timeout) => "timeout",
            Err(Failure::Failed(_)) => "error",
        };
        record(gw, &route.spec.name, label(b), outcome, took);
        match r {
            Ok(v) => match (&b.group, v) {
                (Some(g), v) => {
                    merged.insert(g.clone(), v);
                }
                (None, serde_json::Value::Object(m)) => merged.extend(m),
                (None, other) => {
                    merged.insert(b.upstream.clone(), other);
                }
            },
            Err(f) if b.required => {
                return Err(match f {
                    Failure::Timeout => GatewayError::UpstreamTimeout(label(b).to_string()),
                    Failure::Failed(reason) => GatewayError::UpstreamFailed {
                        upstream: label(b).to_string(),
                        reason,
                    },
                });
            }
            Err(_) => partial.push(label(b)),
        }
    }
    let mut res = Response::new(body::full(serde_json::Value::Object(merged).to_string()));
    *res.status_mut() = StatusCode::OK;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if !partial.is_empty()
        && let Ok(v) = HeaderValue::from_str(&partial.join(","))
    {
        res.headers_mut().insert("x-weir-partial", v);
    }
    facts.upstream_target = Some(format!("aggregate:{}", route.aggregate.len()).into());
    Ok(res)
}

fn record(gw: &Gateway, route: &str, backend: &str, outcome: &str, took: Duration) {
    let l = crate::metrics::AggregateLabel {
        route: route.to_string(),
        backend: backend.to_string(),
        outcome: outcome.to_string(),
    };
    gw.metrics.aggregate_calls.get_or_create(&l).inc();
    gw.metrics
        .aggregate_latency
        .get_or_create(&crate::metrics::RouteLabel {
            route: crate::metrics::Name::new(&format!("{route}/{backend}")),
        })
        .observe(took.as_secs_f64());
}
