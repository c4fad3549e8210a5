//! The request path, in order. Each step is a function below; `handle` reads top to bottom:
//!
//! 1. framing and size checks (smuggling, Host, URI length)      → 400 / 414
//! 2. path normalisation (used for routing, policies, forwarding) → 400
//! 3. routing                                                     → 404
//! 4. request id, trace context, forwarding headers, hop-by-hop stripping
//! 5. body limit                                                  → 413
//! 6. policies: `on-request` (may answer)                         → plugin response / fail mode
//! 7. upstream: pick target, forward, retries, timeouts           → 502 / 503 / 504
//! 8. policies: `on-response`
//! 9. access log, metrics and `on-log` once the body has been sent
//!
//! Every local answer goes through [`crate::error`].

pub mod aggregate;
pub mod forward;
pub mod hygiene;

use crate::body::{self, ProxyBody};
use crate::error::GatewayError;
use crate::policy::{self, PolicyOutcome};
use crate::state::{Gateway, RouteRuntime, Table};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// What the proxy knows about the client connection, and the state the connection's parts
/// share (framing observer, parking IO, response guards). One allocation for all of it: it
/// lives as long as the connection, idle periods included, and each small long-lived
/// allocation pins an allocator page that the freed per-request memory around it cannot leave.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub scheme: &'static str,
    /// The listener's port as `X-Forwarded-Port` sends it: made once per listener and shared
    /// (a clone is a reference count, not a per-request allocation).
    pub forwarded_port: HeaderValue,
    /// Set by [`crate::framing::FramingObserver`] when a request head had ambiguous framing
    /// (hyper resolves it silently, hiding it from us). The connection is then refused.
    pub ambiguous_framing: std::sync::atomic::AtomicBool,
    /// Requests in flight and answered, for [`crate::park`].
    pub requests: crate::park::Requests,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, scheme: &'static str, forwarded_port: HeaderValue) -> Self {
        Self {
            peer,
            scheme,
            forwarded_port,
            ambiguous_framing: std::sync::atomic::AtomicBool::new(false),
            requests: crate::park::Requests::default(),
        }
    }
}

/// Per-request facts gathered along the path, used by logging and policies.
pub struct RequestFacts {
    pub start: Instant,
    pub request_id: String,
    pub trace_id: String,
    pub method: http::Method,
    pub path: String,
    pub host: String,
    pub client_ip: std::net::IpAddr,
    pub route: Option<Arc<RouteRuntime>>,
    pub upstream_target: Option<std::sync::Arc<str>>,
}

/// Entry point for every request on every listener. Never fails: errors become responses.
pub async fn handle(
    gw: Arc<Gateway>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    let table = gw.table();
    let start = Instant::now();
    let mut facts = RequestFacts {
        start,
        request_id: String::new(),
        trace_id: String::new(),
        method: req.method().clone(),
        path: req.uri().path().to_string(),
        host: String::new(),
        client_ip: conn.peer.ip(),
        route: None,
        upstream_target: None,
    };
    // The route's policy sessions, kept until `on-log` (apart from `facts`: they are not `Sync`).
    let mut chain: Option<policy::ChainSession> = None;
    let mut res = match route_and_forward(&gw, &table, &conn, req, &mut facts, &mut chain).await {
        Ok(res) => res,
        Err(e) => {
            let id = (!facts.request_id.is_empty()).then_some(facts.request_id.as_str());
            let mut res = e.into_response(id);
            // A local reply may leave the request body unread; never parse it as the next request.
            if res.status() == StatusCode::PAYLOAD_TOO_LARGE
                || res.status() == StatusCode::BAD_REQUEST
            {
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            res
        }
    };
    if gw.is_draining() {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(finish(&gw, facts, chain, res))
}

async fn route_and_forward(
    gw: &Arc<Gateway>,
    table: &Arc<Table>,
    conn: &ConnInfo,
    req: Request<Incoming>,
    facts: &mut RequestFacts,
    chain: &mut Option<policy::ChainSession>,
) -> Result<Response<ProxyBody>, GatewayError> {
    // Counted before the gateway adds its id headers. HTTP/2 clients send each cookie as a
    // field of its own (RFC 9113 §8.2.3): those count as the one line HTTP/1.1 would have.
    let mut req = req;
    let client_headers = if req.version() == http::Version::HTTP_2 {
        let cookies = req.headers().get_all(header::COOKIE).iter().count();
        if cookies > 1 {
            hygiene::join_cookies(req.headers_mut());
        }
        req.headers().len()
    } else {
        0
    };
    // Room for the fields the gateway adds at once, instead of the map growing and rehashing
    // more than once on the way.
    req.headers_mut().reserve(hygiene::GATEWAY_SET_FIELDS);
    // Request identity first, so that every answer, even an early 400, carries an id.
    facts.request_id = hygiene::request_id(req.headers_mut());
    facts.trace_id = hygiene::trace_context(req.headers_mut());

    // 1. Framing and sizes. hyper counts HTTP/1 header fields itself; HTTP/2 only bounds the
    // header list's bytes.
    let limits = &table.config.limits;
    if req.version() == http::Version::HTTP_2 && client_headers > limits.max_headers {
        return Err(GatewayError::TooManyHeaders(limits.max_headers));
    }
    if conn
        .ambiguous_framing
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return Err(GatewayError::BadRequest(
            "ambiguous message framing (Content-Length / Transfer-Encoding)".into(),
        ));
    }
    hygiene::check_framing(req.version(), req.headers())
        .map_err(|m| GatewayError::BadRequest(m.into()))?;
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > limits.max_uri {
        return Err(GatewayError::UriTooLong(limits.max_uri));
    }
    let host = request_host(&req)?;

    // 2. One normalised path for routing, policies and forwarding.
    let path = hygiene::normalize_path(req.uri().path())
        .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    facts.path = path.clone();
    facts.host = host.clone();

    // 3. Routing.
    let Some((_, route)) = table.router.find(&host, &path, req.method(), req.headers()) else {
        return Err(GatewayError::NoRoute {
            method: req.method().to_string(),
            host,
            path,
        });
    };
    let route = route.clone();
    facts.route = Some(route.clone());

    // 4. Forwarding headers. A WebSocket upgrade keeps its handshake headers.
    let on_upgrade = hygiene::is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    hygiene::strip_hop_by_hop(&mut parts.headers, on_upgrade.is_some());
    facts.client_ip = hygiene::forwarded_headers(
        &mut parts.headers,
        conn.peer.ip(),
        &table.config.trusted_proxies,
        conn.scheme,
        &host,
        &conn.forwarded_port,
    );

    // 5. Body limit: refuse early on a declared length, cap a streamed one.
    let max_body = route.spec.max_body;
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max_body
    {
        return Err(GatewayError::BodyTooLarge(max_body));
    }
    let body: ProxyBody = body::boxed(http_body_util::Limited::new(body, max_body as usize));

    let fwd = forward::Outgoing {
        parts,
        path: path.clone(),
        body: Some(body),
    };
    let mut session = policy::ChainSession::new(&route);
    let result = proxy_with_policies(gw, conn, facts, &route, &mut session, fwd, on_upgrade).await;
    *chain = Some(session);
    result
}

/// Steps 6–8: request policies, the upstream, response policies.
async fn proxy_with_policies(
    gw: &Arc<Gateway>,
    conn: &ConnInfo,
    facts: &mut RequestFacts,
    route: &Arc<RouteRuntime>,
    session: &mut policy::ChainSession,
    mut fwd: forward::Outgoing,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Response<ProxyBody>, GatewayError> {
    // The policy and fan-out futures are a few KiB each and boxed, so that a route without
    // them does not carry (and move, several times per request) their space.
    // 6. Policies, in order. They see the normalised path.
    if !session.is_empty()
        && let PolicyOutcome::Respond(res) =
            Box::pin(session.on_request(gw, conn, facts, &mut fwd)).await?
    {
        return Ok(res);
    }

    // 7. Upstream (or the fan-out to several).
    if !route.aggregate.is_empty() {
        let res = Box::pin(aggregate::run(gw, route, fwd, facts)).await?;
        return Box::pin(session.on_response(gw, facts, res)).await;
    }
    let Some(upstream) = route.upstream.clone() else {
        return Err(GatewayError::Internal(format!(
            "route {:?} has no upstream and no policy answered",
            route.spec.name
        )));
    };
    let mut res = forward::send(gw, route, &upstream, fwd, facts).await?;
    let switching = res.status() == StatusCode::SWITCHING_PROTOCOLS;
    hygiene::strip_response_hop_by_hop(res.headers_mut(), switching);
    let res = match (res.status(), on_upgrade) {
        (StatusCode::SWITCHING_PROTOCOLS, Some(down)) => forward::splice_upgrade(res, down),
        (_, _) => res,
    };

    // 8. Response policies.
    if session.is_empty() {
        return Ok(res);
    }
    Box::pin(session.on_response(gw, facts, res)).await
}

/// Host the client addressed: the Host header (HTTP/1) or `:authority`, lower-case, without port.
/// An absolute-form target must agree with Host.
fn request_host(req: &Request<Incoming>) -> Result<String, GatewayError> {
    let from_header = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    let from_uri = req.uri().authority().map(|a| a.as_str());
    let raw = match (from_header, from_uri) {
        (Some(h), Some(u)) if !h.eq_ignore_ascii_case(u) => {
            return Err(GatewayError::BadRequest(
                "request target authority does not match Host".into(),
            ));
        }
        (Some(h), _) => h,
        (None, Some(u)) => u,
        (None, None) => {
            if req.version() == http::Version::HTTP_10 {
                ""
            } else {
                return Err(GatewayError::BadRequest("missing Host".into()));
            }
        }
    };
    let host = match raw.rsplit_once(':') {
        Some((h, port))
            if !h.ends_with(']')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            h
        }
        Some((h, port)) if h.ends_with(']') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => raw,
    };
    if host
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b == b'/' || b == b'@')
    {
        return Err(GatewayError::BadRequest("invalid Host".into()));
    }
    Ok(host.to_ascii_lowercase())
}

/// Adds the request id to the response and arranges the access log, metrics and `on-log` to run
/// once the body has been sent (or the client went away).
fn finish(
    gw: &Arc<Gateway>,
    facts: RequestFacts,
    chain: Option<policy::ChainSession>,
    mut res: Response<ProxyBody>,
) -> Response<ProxyBody> {
    if !facts.request_id.is_empty()
        && let Ok(v) = HeaderValue::from_str(&facts.request_id)
    {
        res.headers_mut().entry(hygiene::X_REQUEST_ID).or_insert(v);
    }
    let status = res.status();
    let head_latency = facts.start.elapsed();
    let gw = gw.clone();
    let (parts, body) = res.into_parts();
    // The mutex only makes the closure `Sync` (plugin sessions are `Send`); it is never contended.
    let facts = std::sync::Mutex::new((facts, chain));
    let body = CountingBody {
        inner: body,
        bytes: 0,
        done: Some(Box::new(move |bytes| {
            if let Ok((facts, chain)) = facts.into_inner() {
                crate::access::record(&gw, &facts, chain, status, head_latency, bytes);
            }
        })),
    };
    Response::from_parts(parts, body::boxed(body))
}

type DoneFn = Box<dyn FnOnce(u64) + Send + Sync>;

/// Counts the bytes of a response body and calls `done` when it is dropped (fully sent or aborted).
struct CountingBody {
    inner: ProxyBody,
    bytes: u64,
    done: Option<DoneFn>,
}

impl http_body::Body for CountingBody {
    type Data = Bytes;
    type Error = body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let poll = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(f))) = &poll
            && let Some(d) = f.data_ref()
        {
            this.bytes += d.len() as u64;
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountingBody {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.bytes);
        }
    }
}

/// Collects a body up to `limit` bytes (used when a policy declared it needs the body).
pub async fn collect_body(mut body: ProxyBody, limit: u64) -> Result<Bytes, GatewayError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if is_length_limit(e.as_ref()) {
                GatewayError::BodyTooLarge(limit)
            } else {
                GatewayError::BadRequest(format!("reading body: {e}"))
            }
        })?;
        if let Ok(data) = frame.into_data() {
            if (buf.len() + data.len()) as u64 > limit {
                return Err(GatewayError::BodyTooLarge(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Whether an error chain contains a body length-limit violation.
pub fn is_length_limit(mut e: &(dyn std::error::Error + 'static)) -> bool {
    loop {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        match e.source() {
            Some(s) => e = s,
            None => return false,
        }
    }
}

/// Compile-time guard: the request future must stay `Send` (hyper spawns it on any worker).
#[allow(dead_code)]
fn _assert_send(gw: Arc<Gateway>, c: Arc<ConnInfo>, r: Request<Incoming>) {
    fn is_send<T: Send>(_: T) {}
    is_send(handle(gw, c, r));
}
