//! The one place where failures become HTTP responses: every local reply is an
//! `application/problem+json` body (RFC 9457) with a stable `type` slug.

use crate::body::{self, ProxyBody};
use http::{HeaderValue, Response, StatusCode};

/// Why the gateway answered instead of the upstream.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no route matches {method} {host}{path}")]
    NoRoute {
        method: String,
        host: String,
        path: String,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("request URI is longer than {0} bytes")]
    UriTooLong(usize),
    #[error("more than {0} request header fields")]
    TooManyHeaders(usize),
    #[error("request body is larger than {0} bytes")]
    BodyTooLarge(u64),
    #[error("upstream {0:?} has no healthy target")]
    NoHealthyTarget(String),
    #[error("upstream {0:?} is at its concurrency limit")]
    UpstreamOverloaded(String),
    #[error("could not connect to upstream {upstream:?}: {reason}")]
    UpstreamConnect { upstream: String, reason: String },
    #[error("upstream {upstream:?} failed: {reason}")]
    UpstreamFailed { upstream: String, reason: String },
    #[error("upstream {0:?} timed out")]
    UpstreamTimeout(String),
    #[error("policy {plugin:?} failed: {reason}")]
    PluginFailed { plugin: String, reason: String },
    #[error("{0}")]
    Internal(String),
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            NoRoute { .. } => StatusCode::NOT_FOUND,
            BadRequest(_) => StatusCode::BAD_REQUEST,
            UriTooLong(_) => StatusCode::URI_TOO_LONG,
            TooManyHeaders(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            NoHealthyTarget(_) | UpstreamOverloaded(_) | PluginFailed { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            UpstreamConnect { .. } | UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        use GatewayError::*;
        match self {
            NoRoute { .. } => "no-route",
            BadRequest(_) => "bad-request",
            UriTooLong(_) => "uri-too-long",
            TooManyHeaders(_) => "too-many-headers",
            BodyTooLarge(_) => "body-too-large",
            NoHealthyTarget(_) => "no-healthy-target",
            UpstreamOverloaded(_) => "upstream-overloaded",
            UpstreamConnect { .. } => "upstream-connect-failed",
            UpstreamFailed { .. } => "upstream-failed",
            UpstreamTimeout(_) => "upstream-timeout",
            PluginFailed { .. } => "policy-failed",
            Internal(_) => "internal",
        }
    }

    /// Renders the error as a problem+json response. Why an upstream failed (addresses, TLS
    /// and socket errors) is the operator's business: it goes to the log with the request id,
    /// and the client learns which upstream failed, not how.
    pub fn into_response(self, request_id: Option<&str>) -> Response<ProxyBody> {
        let detail = match &self {
            GatewayError::UpstreamConnect { upstream, .. } => {
                log_upstream_error(request_id, &self);
                format!("could not connect to upstream {upstream:?}")
            }
            GatewayError::UpstreamFailed { upstream, .. } => {
                log_upstream_error(request_id, &self);
                format!("upstream {upstream:?} failed")
            }
            _ => self.to_string(),
        };
        problem(self.status(), self.slug(), &detail, request_id)
    }
}

/// Logs why an upstream failed: at `warn` at most once a second (with how many were only logged
/// at `debug` since), so an outage does not flood the log or spend the CPU it needs.
fn log_upstream_error(request_id: Option<&str>, e: &GatewayError) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    static NEXT_WARN_MS: AtomicU64 = AtomicU64::new(0);
    static QUIET: AtomicU64 = AtomicU64::new(0);
    let now = START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64;
    let next = NEXT_WARN_MS.load(Ordering::Relaxed);
    if now >= next
        && NEXT_WARN_MS
            .compare_exchange(next, now + 1000, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let also = QUIET.swap(0, Ordering::Relaxed);
        tracing::warn!(request_id, error = %e, similar_at_debug = also, "upstream request failed");
    } else {
        QUIET.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(request_id, error = %e, "upstream request failed");
    }
}

/// Builds a problem+json response; used by the error type and by protocol-level rejections.
pub fn problem(
    status: StatusCode,
    slug: &str,
    detail: &str,
    request_id: Option<&str>,
) -> Response<ProxyBody> {
    let mut doc = serde_json::json!({
        "type": format!("https://weir.dev/problems/{slug}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    if let (Some(id), Some(obj)) = (request_id, doc.as_object_mut()) {
        obj.insert(
            "request_id".into(),
            serde_json::Value::String(id.to_string()),
        );
    }
    let mut res = Response::new(body::full(doc.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        res.headers_mut().insert("x-request-id", id);
    }
    res
}
