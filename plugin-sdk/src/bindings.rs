//! The only place that sees wit-bindgen: the generated bindings for the `weir:policy` world,
//! conversions between generated and SDK types, the capability backend for the real host, and the
//! glue that [`export_policy!`](crate::export_policy) expands to.
//!
//! A capability function compiled here but never called by the plugin is removed by the linker,
//! and with it the component import: a plugin only imports the interfaces it uses.

#![allow(
    missing_docs,
    clippy::too_many_arguments,
    reason = "generated bindings"
)]

use std::cell::RefCell;

use crate::http::{OutboundRequest, OutboundResponse};
use crate::jwt::{VerifyError, VerifyOptions};
use crate::log::Level;
use crate::rate_limit::{Decision, Quota};
use crate::{Policy, types as sdk};

wit_bindgen::generate!({
    world: "policy",
    path: "../wit",
    pub_export_macro: true,
    default_bindings_module: "weir_plugin_sdk::__private::bindings",
});

use weir::policy::types as wit;

// ---- generated → SDK ----------------------------------------------------------------------

impl From<wit::Request> for sdk::Request {
    fn from(r: wit::Request) -> Self {
        Self {
            method: r.method,
            path: r.path,
            query: r.query,
            headers: r.headers,
            body: r.body,
            client_ip: r.client_ip,
            route: r.route,
            request_id: r.request_id,
            scheme: r.scheme,
            host: r.host,
        }
    }
}

impl From<wit::ResponseHead> for sdk::ResponseHead {
    fn from(r: wit::ResponseHead) -> Self {
        Self {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }
    }
}

impl From<wit::LogEntry> for sdk::LogEntry {
    fn from(e: wit::LogEntry) -> Self {
        Self {
            route: e.route,
            method: e.method,
            path: e.path,
            status: e.status,
            latency_us: e.latency_us,
            client_ip: e.client_ip,
            request_id: e.request_id,
            upstream: e.upstream,
            bytes_sent: e.bytes_sent,
        }
    }
}

// ---- SDK → generated ----------------------------------------------------------------------

impl From<sdk::PluginInfo> for wit::PluginInfo {
    fn from(i: sdk::PluginInfo) -> Self {
        Self {
            needs_request_body: i.needs_request_body,
            needs_response_body: i.needs_response_body,
            phases: [
                (sdk::Phases::REQUEST, wit::Phases::ON_REQUEST),
                (sdk::Phases::RESPONSE, wit::Phases::ON_RESPONSE),
                (sdk::Phases::LOG, wit::Phases::ON_LOG),
            ]
            .into_iter()
            .filter(|(p, _)| i.phases.contains(*p))
            .fold(wit::Phases::empty(), |acc, (_, w)| acc | w),
            request_headers: i.request_headers,
        }
    }
}

impl From<sdk::Action> for wit::Action {
    fn from(a: sdk::Action) -> Self {
        match a {
            sdk::Action::Continue(e) => wit::Action::Continue(wit::RequestEdits {
                method: e.method,
                path: e.path,
                query: e.query,
                set_headers: e.set_headers,
                append_headers: e.append_headers,
                remove_headers: e.remove_headers,
                body: e.body,
                set_response_headers: e.set_response_headers,
                append_response_headers: e.append_response_headers,
            }),
            sdk::Action::Respond(r) => wit::Action::Respond(wit::Response {
                status: r.status,
                headers: r.headers,
                body: r.body,
            }),
        }
    }
}

impl From<sdk::ResponseEdits> for wit::ResponseEdits {
    fn from(e: sdk::ResponseEdits) -> Self {
        Self {
            status: e.status,
            set_headers: e.set_headers,
            append_headers: e.append_headers,
            remove_headers: e.remove_headers,
            body: e.body,
        }
    }
}

// ---- the exported policy ------------------------------------------------------------------

/// Holds the plugin instance between `init` and the request phases. One per Wasm instance;
/// instances are single-threaded, so a `RefCell` in a thread-local is all the sharing needed.
pub struct Slot<P> {
    policy: RefCell<Option<P>>,
}

impl<P: Policy> Default for Slot<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Policy> Slot<P> {
    pub const fn new() -> Self {
        Self {
            policy: RefCell::new(None),
        }
    }

    pub fn init(&self, config: &str) -> Result<wit::PluginInfo, String> {
        let policy = crate::instantiate::<P>(config)?;
        let info = policy.info();
        let mut slot = self
            .policy
            .try_borrow_mut()
            .map_err(|_| "init called while the policy is running".to_string())?;
        *slot = Some(policy);
        Ok(info.into())
    }

    pub fn on_request(&self, req: wit::Request) -> wit::Action {
        let req = sdk::Request::from(req);
        match self
            .policy
            .try_borrow()
            .ok()
            .as_deref()
            .and_then(Option::as_ref)
        {
            Some(p) => p.on_request(&req).into(),
            // The host always calls `init` first; answering beats trapping if it did not.
            None => sdk::Action::Respond(sdk::Response::problem(
                500,
                "Plugin not initialised",
                "the policy was called before init succeeded",
            ))
            .into(),
        }
    }

    pub fn on_response(&self, resp: wit::ResponseHead) -> wit::ResponseEdits {
        let resp = sdk::ResponseHead::from(resp);
        match self
            .policy
            .try_borrow()
            .ok()
            .as_deref()
            .and_then(Option::as_ref)
        {
            Some(p) => p.on_response(&resp).into(),
            None => wit::ResponseEdits::from(sdk::ResponseEdits::default()),
        }
    }

    pub fn on_log(&self, entry: wit::LogEntry) {
        let entry = sdk::LogEntry::from(entry);
        if let Some(p) = self
            .policy
            .try_borrow()
            .ok()
            .as_deref()
            .and_then(Option::as_ref)
        {
            p.on_log(&entry);
        }
    }
}

pub type WitPluginInfo = wit::PluginInfo;
pub type WitRequest = wit::Request;
pub type WitAction = wit::Action;
pub type WitResponseHead = wit::ResponseHead;
pub type WitResponseEdits = wit::ResponseEdits;
pub type WitLogEntry = wit::LogEntry;

// ---- capability backend -------------------------------------------------------------------

fn owned_fields(fields: &[(&str, &str)]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

pub(crate) fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    use weir::policy::log as l;
    let level = match level {
        Level::Trace => l::Level::Trace,
        Level::Debug => l::Level::Debug,
        Level::Info => l::Level::Info,
        Level::Warn => l::Level::Warn,
        Level::Error => l::Level::Error,
    };
    l::log(level, message, &owned_fields(fields));
}

pub(crate) fn context_get(key: &str) -> Option<String> {
    weir::policy::context::get(key)
}
pub(crate) fn context_set(key: &str, value: &str) {
    weir::policy::context::set(key, value);
}
pub(crate) fn context_remove(key: &str) {
    weir::policy::context::remove(key);
}
pub(crate) fn context_entries() -> Vec<(String, String)> {
    weir::policy::context::entries()
}

pub(crate) fn kv_get(key: &str) -> Result<Option<Vec<u8>>, String> {
    weir::policy::kv::get(key)
}
pub(crate) fn kv_set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), String> {
    weir::policy::kv::set(key, value, ttl_ms)
}
pub(crate) fn kv_delete(key: &str) -> Result<bool, String> {
    weir::policy::kv::delete(key)
}
pub(crate) fn kv_increment(key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, String> {
    weir::policy::kv::increment(key, delta, ttl_ms)
}
pub(crate) fn kv_compare_and_swap(
    key: &str,
    expected: Option<&[u8]>,
    new: &[u8],
    ttl_ms: Option<u64>,
) -> Result<bool, String> {
    weir::policy::kv::compare_and_swap(key, expected, new, ttl_ms)
}

pub(crate) fn rate_limit_check(
    name: &str,
    key: &str,
    quota: Quota,
    cost: u32,
) -> Result<Decision, String> {
    use weir::policy::rate_limit as rl;
    let quota = rl::Quota {
        limit: quota.limit,
        window_ms: u64::try_from(quota.window.as_millis()).unwrap_or(u64::MAX),
    };
    rl::check(name, key, quota, cost).map(|d| Decision {
        allowed: d.allowed,
        limit: d.limit,
        remaining: d.remaining,
        reset: std::time::Duration::from_millis(d.reset_ms),
        retry_after: std::time::Duration::from_millis(d.retry_after_ms),
    })
}

pub(crate) fn jwt_verify(token: &str, options: &VerifyOptions) -> Result<String, VerifyError> {
    use weir::policy::jwt as j;
    let opts = j::VerifyOptions {
        key_set: options.key_set.clone(),
        algorithms: options.algorithms.clone(),
        issuer: options.issuer.clone(),
        audience: options.audience.clone(),
        required_claims: options.required_claims.clone(),
        leeway_s: options.leeway_s,
    };
    j::verify(token, &opts).map_err(|e| match e {
        j::VerifyError::Malformed(m) => VerifyError::Malformed(m),
        j::VerifyError::BadSignature => VerifyError::BadSignature,
        j::VerifyError::UnknownKey => VerifyError::UnknownKey,
        j::VerifyError::AlgorithmNotAllowed(a) => VerifyError::AlgorithmNotAllowed(a),
        j::VerifyError::Expired => VerifyError::Expired,
        j::VerifyError::NotYetValid => VerifyError::NotYetValid,
        j::VerifyError::InvalidClaim(c) => VerifyError::InvalidClaim(c),
        j::VerifyError::KeySetUnavailable(m) => VerifyError::KeySetUnavailable(m),
    })
}

/// Asks with an empty token, which the gateway refuses after looking the key set up and before
/// any other work (no JWKS fetch).
pub(crate) fn jwt_key_set_missing(name: &str) -> bool {
    let opts = weir::policy::jwt::VerifyOptions {
        key_set: name.to_string(),
        algorithms: Vec::new(),
        issuer: None,
        audience: Vec::new(),
        required_claims: Vec::new(),
        leeway_s: 0,
    };
    matches!(
        weir::policy::jwt::verify("", &opts),
        Err(weir::policy::jwt::VerifyError::KeySetUnavailable(m)) if m.starts_with("no key set named")
    )
}

fn outbound(r: &OutboundRequest) -> weir::policy::http_client::OutboundRequest {
    weir::policy::http_client::OutboundRequest {
        method: r.method.clone(),
        url: r.url.clone(),
        headers: r.headers.clone(),
        body: r.body.clone(),
        timeout_ms: r.timeout_ms,
    }
}

fn inbound(r: weir::policy::http_client::OutboundResponse) -> OutboundResponse {
    OutboundResponse {
        status: r.status,
        headers: r.headers,
        body: r.body,
    }
}

pub(crate) fn http_send(request: &OutboundRequest) -> Result<OutboundResponse, String> {
    weir::policy::http_client::send(&outbound(request)).map(inbound)
}
pub(crate) fn http_send_all(requests: &[OutboundRequest]) -> Vec<Result<OutboundResponse, String>> {
    let reqs: Vec<_> = requests.iter().map(outbound).collect();
    weir::policy::http_client::send_all(&reqs)
        .into_iter()
        .map(|r| r.map(inbound))
        .collect()
}

pub(crate) fn metrics_counter_add(name: &str, labels: &[(&str, &str)], value: u64) {
    weir::policy::metrics::counter_add(name, &owned_fields(labels), value);
}
pub(crate) fn metrics_histogram_observe(name: &str, labels: &[(&str, &str)], value: f64) {
    weir::policy::metrics::histogram_observe(name, &owned_fields(labels), value);
}
