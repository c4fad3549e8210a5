//! Sending a request upstream: target choice, per-try and total timeouts, retries within a
//! budget, passive health reports, and WebSocket splicing after a `101`.

use super::RequestFacts;
use crate::body::{self, ProxyBody};
use crate::config::HashOn;
use crate::error::GatewayError;
use crate::router;
use crate::state::{Gateway, RouteRuntime};
use crate::upstream::{Upstream, balancer::hash_bytes};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Instant;

/// The request as it will go upstream; policies edit it in place.
pub struct Outgoing {
    pub parts: http::request::Parts,
    /// Normalised path (before strip_prefix/rewrite), possibly changed by policies.
    pub path: String,
    pub body: Option<ProxyBody>,
}

/// Largest request body kept in memory so that it can be retried.
const MAX_REPLAY_BODY: u64 = 64 * 1024;

fn declared_len(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn hash_key(
    upstream: &Upstream,
    parts: &http::request::Parts,
    facts: &RequestFacts,
) -> Option<u64> {
    match upstream.spec.hash_on.as_ref()? {
        HashOn::Header(h) => parts.headers.get(h).map(|v| hash_bytes(v.as_bytes())),
        HashOn::ClientIp => Some(hash_bytes(facts.client_ip.to_string().as_bytes())),
        HashOn::Cookie(name) => parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| hash_bytes(v.as_bytes())),
    }
}

/// Forwards `out` to `upstream`, retrying as the route allows.
pub async fn send(
    gw: &Arc<Gateway>,
    route: &RouteRuntime,
    upstream: &Arc<Upstream>,
    out: Outgoing,
    facts: &mut RequestFacts,
) -> Result<Response<ProxyBody>, GatewayError> {
    let spec = &route.spec;
    let Outgoing {
        mut parts,
        path,
        body,
    } = out;
    let mut body = body.unwrap_or_else(body::empty);
    let mut upath = router::upstream_path(spec, &path);
    // A rewrite (or a policy) may leave no path: the request target is then "/".
    if !upath.starts_with('/') {
        upath.insert(0, '/');
    }
    if let Some(q) = parts.uri.query()
        && !q.is_empty()
    {
        upath.push('?');
        upath.push_str(q);
    }
    // Parsed once for all tries (a `String` becomes its bytes without a copy).
    let path_and_query = http::uri::PathAndQuery::try_from(upath)
        .map_err(|e| GatewayError::BadRequest(format!("cannot build upstream URI: {e}")))?;
    if !parts.headers.contains_key(header::HOST)
        && let Some(a) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    // A body can be sent again only if we hold it: small declared bodies are buffered when the
    // route retries at all. A refused connection never reached the upstream, so connect-failure
    // retries are safe for every method; other retries only for idempotent ones.
    let replay: Option<Bytes> = if body.is_end_stream() {
        Some(Bytes::new())
    } else if spec.retries.attempts > 0
        && declared_len(&parts.headers).is_some_and(|n| n <= MAX_REPLAY_BODY)
    {
        let taken = std::mem::replace(&mut body, body::empty());
        Some(super::collect_body(taken, spec.max_body).await?)
    } else {
        None
    };
    let idempotent = crate::upstream::idempotent(&parts.method);
    let key = hash_key(upstream, &parts, facts);
    let mut started = Instant::now();
    let deadline = started + spec.timeout;
    let policy = &spec.retries;
    let mut tried: Vec<usize> = Vec::new();
    route.budget.record_request();
    let name = upstream.spec.name.as_str();
    // The target of the next try, chosen when a failed try decides to retry: when every target
    // has been tried there is none, and the client gets that try's own outcome.
    let mut next: Option<usize> = None;

    loop {
        let attempt = tried.len() as u32;
        let may_retry = replay.is_some() && attempt < policy.attempts && route.budget.can_retry();
        let idx = match next.take() {
            Some(i) => i,
            None => upstream
                .pick(key, &tried)
                .ok_or_else(|| GatewayError::NoHealthyTarget(name.to_string()))?,
        };
        tried.push(idx);
        let guard = upstream
            .acquire(idx)
            .ok_or_else(|| GatewayError::UpstreamOverloaded(name.to_string()))?;
        let Some(target) = upstream.targets.get(idx) else {
            return Err(GatewayError::Internal("target index out of range".into()));
        };
        let this_body = match &replay {
            Some(b) if b.is_empty() => body::empty(),
            Some(b) => body::full(b.clone()),
            None => std::mem::replace(&mut body, body::empty()),
        };
        let mut req = Request::new(this_body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = http::Uri::from(path_and_query.clone());
        // The last possible try takes the headers; earlier ones send a copy.
        *req.headers_mut() = if may_retry {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        };
        *req.version_mut() = match upstream.spec.protocol {
            crate::config::UpstreamProtocol::H2 => http::Version::HTTP_2,
            crate::config::UpstreamProtocol::Http1 => http::Version::HTTP_11,
        };
        if req.version() == http::Version::HTTP_2 {
            req.headers_mut().remove(header::HOST);
        }
        // The first try starts with the deadline's clock read; a retry reads the clock again.
        if attempt > 0 {
            started = Instant::now();
        }
        let remaining = deadline.saturating_duration_since(started);
        let per_try = spec.per_try_timeout.map_or(remaining, |p| p.min(remaining));
        facts.upstream_target = Some(target.url_text.clone());
        let result = tokio::time::timeout(per_try, upstream.request(idx, req)).await;
        upstream.observe_latency(&gw.metrics, started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(res)) if res.status().as_u16() >= 600 => {
                // HTTP defines 100–599; relaying anything else would hand clients a broken message.
                upstream.report(idx, false);
                return Err(GatewayError::UpstreamFailed {
                    upstream: name.to_string(),
                    reason: format!("invalid status code {}", res.status().as_u16()),
                });
            }
            Ok(Ok(res)) => {
                let status = res.status();
                upstream.report(idx, !matches!(status.as_u16(), 502..=504));
                upstream.count_status(&gw.metrics, status);
                let retry_status = (policy.on_5xx && status.is_server_error())
                    || policy.on_statuses.contains(&status.as_u16());
                if retry_status
                    && may_retry
                    && idempotent
                    && Instant::now() < deadline
                    && let Some(i) = retry_target(upstream, key, &tried, route)
                {
                    next = Some(i);
                    continue;
                }
                let (mut rparts, rbody) = res.into_parts();
                // The client gets the gateway's own HTTP version, not the upstream's (an
                // HTTP/1.0 status line would end the client's keep-alive; RFC 9112 §2.3).
                rparts.version = http::Version::HTTP_11;
                // Keep the in-flight slot until the body has been relayed (least-request, breaker),
                // and cut a body that stalls for longer than the route timeout (like nginx's
                // proxy_read_timeout): a stuck upstream must not hold a client forever.
                let rbody = IdleTimeoutBody::new(
                    rbody.map_frame(move |f| {
                        let _ = &guard;
                        f
                    }),
                    spec.timeout,
                );
                let rbody = body::boxed(rbody);
                return Ok(Response::from_parts(rparts, rbody));
            }
            Ok(Err(e)) => {
                drop(guard);
                // The client's own body failed (too large, or broken chunked framing): a client
                // error, not the upstream's fault.
                if super::is_length_limit(&e) {
                    return Err(GatewayError::BodyTooLarge(spec.max_body));
                }
                if is_request_body_error(&e) {
                    return Err(GatewayError::BadRequest(format!(
                        "invalid request body: {}",
                        error_chain(&e)
                    )));
                }
                let connect = e.is_connect();
                upstream.report(idx, false);
                upstream
                    .count_failure(&gw.metrics, if connect { "connect_error" } else { "error" });
                let retry = if connect {
                    policy.on_connect_failure
                } else {
                    policy.on_reset && idempotent
                };
                if retry
                    && may_retry
                    && Instant::now() < deadline
                    && let Some(i) = retry_target(upstream, key, &tried, route)
                {
                    next = Some(i);
                    continue;
                }
                let reason = error_chain(&e);
                return Err(if connect {
                    GatewayError::UpstreamConnect {
                        upstream: name.to_string(),
                        reason,
                    }
                } else {
                    GatewayError::UpstreamFailed {
                        upstream: name.to_string(),
                        reason,
                    }
                });
            }
            Err(_) => {
                drop(guard);
                upstream.report(idx, false);
                upstream.count_failure(&gw.metrics, "timeout");
                if policy.on_timeout
                    && may_retry
                    && idempotent
                    && Instant::now() < deadline
                    && let Some(i) = retry_target(upstream, key, &tried, route)
                {
                    next = Some(i);
                    continue;
                }
                return Err(GatewayError::UpstreamTimeout(name.to_string()));
            }
        }
    }
}

/// The target of a retry, if one is left untried; the retry is then charged to the budget.
fn retry_target(
    upstream: &Upstream,
    key: Option<u64>,
    tried: &[usize],
    route: &RouteRuntime,
) -> Option<usize> {
    let i = upstream.pick(key, tried)?;
    route.budget.record_retry();
    Some(i)
}

/// hyper marks a failure of the body *we* were streaming as a user error.
fn is_request_body_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(h) = c.downcast_ref::<hyper::Error>()
            && h.is_user()
        {
            return true;
        }
        cur = c.source();
    }
    false
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// After the upstream agreed to switch protocols, connect the two upgraded streams.
pub fn splice_upgrade(
    mut res: Response<ProxyBody>,
    downstream: hyper::upgrade::OnUpgrade,
) -> Response<ProxyBody> {
    let upstream = hyper::upgrade::on(&mut res);
    tokio::spawn(async move {
        match (downstream.await, upstream.await) {
            (Ok(d), Ok(u)) => {
                let mut d = TokioIo::new(d);
                let mut u = TokioIo::new(u);
                if let Err(e) = tokio::io::copy_bidirectional(&mut d, &mut u).await {
                    tracing::debug!(error = %e, "upgraded connection ended with an error");
                }
            }
            (Err(e), _) | (_, Err(e)) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    let (parts, _) = res.into_parts();
    Response::from_parts(parts, body::empty())
}

/// A body that fails if the upstream sends no frame for `idle` while we wait for one. The timer
/// starts when a poll finds no frame ready (most small bodies arrive with the head and never
/// need one), so the wait for the client to take a frame does not count.
struct IdleTimeoutBody<B> {
    inner: B,
    idle: std::time::Duration,
    /// Created at the first wait, re-armed at each new one.
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// The last poll found no frame: the timer runs.
    waiting: bool,
}

impl<B> IdleTimeoutBody<B> {
    fn new(inner: B, idle: std::time::Duration) -> Self {
        Self {
            inner,
            idle,
            sleep: None,
            waiting: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("upstream body stalled for longer than {0:?}")]
struct BodyIdleTimeout(std::time::Duration);

impl<B> http_body::Body for IdleTimeoutBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<body::BoxError>,
{
    type Data = Bytes;
    type Error = body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(f) => {
                this.waiting = false;
                Poll::Ready(f.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                if !this.waiting {
                    // A new wait: (re)arm the timer from now.
                    this.waiting = true;
                    let deadline = tokio::time::Instant::now() + this.idle;
                    match &mut this.sleep {
                        Some(s) => s.as_mut().reset(deadline),
                        None => this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                match this.sleep.as_mut().map(|s| s.as_mut().poll(cx)) {
                    Some(Poll::Ready(())) => {
                        Poll::Ready(Some(Err(Box::new(BodyIdleTimeout(this.idle)))))
                    }
                    _ => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
