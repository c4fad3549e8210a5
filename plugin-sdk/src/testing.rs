//! A native mock of the gateway, for unit tests with plain `cargo test` (feature `testing`).
//!
//! Every capability the SDK offers is backed here by in-memory state that belongs to the current
//! thread. `cargo test` runs each test on its own thread, so tests never see each other's kv
//! entries, limiter state, logs or context. [`MockHost`] programs and inspects that state;
//! [`Harness`] drives a policy through its phases the way the gateway does.
//!
//! ```
//! # use weir_plugin_sdk::prelude::*;
//! # use weir_plugin_sdk::testing::{Harness, MockHost};
//! # #[derive(Deserialize)] struct Config { header: String }
//! # struct AddHeader { cfg: Config }
//! # impl Policy for AddHeader {
//! #     type Config = Config;
//! #     fn new(cfg: Config) -> Result<Self, String> { Ok(Self { cfg }) }
//! #     fn on_request(&self, _req: &Request) -> Action {
//! #         log::info("hit", &[]);
//! #         RequestEdits::default().set_header(&self.cfg.header, "1").into()
//! #     }
//! # }
//! let mut h = Harness::<AddHeader>::new(json!({ "header": "x-a" })).unwrap();
//! let action = h.on_request(Request::get("/x").header("a", "b"));
//! assert_eq!(action.edits().unwrap().set_header_value("x-a"), Some("1"));
//! assert_eq!(MockHost::logs()[0].message, "hit");
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::time::Duration;

use crate::http::{OutboundRequest, OutboundResponse};
use crate::jwt::{VerifyError, VerifyOptions};
use crate::log::Level;
use crate::rate_limit::{Decision, Quota};
use crate::{
    Action, LogEntry, Phases, PluginInfo, Policy, Request, ResponseEdits, ResponseHead, instantiate,
};

/// One captured log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Severity.
    pub level: Level,
    /// Message text.
    pub message: String,
    /// Structured fields in call order.
    pub fields: Vec<(String, String)>,
}

impl LogLine {
    /// The value of field `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Kind of a captured metric update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// `counter_add`.
    Counter,
    /// `histogram_observe`.
    Histogram,
}

/// One captured metric update.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricEvent {
    /// Counter or histogram.
    pub kind: MetricKind,
    /// Metric name.
    pub name: String,
    /// Labels in call order.
    pub labels: Vec<(String, String)>,
    /// Counter increment or observed value.
    pub value: f64,
}

#[derive(Debug, Clone)]
struct KvEntry {
    value: Vec<u8>,
    expires_at_ms: Option<u64>,
}

#[derive(Default)]
struct State {
    now_ms: u64,
    context: BTreeMap<String, String>,
    kv: HashMap<String, KvEntry>,
    kv_failure: Option<String>,
    /// Theoretical arrival time (GCRA) per `(limiter name, key)`, in ms.
    limiter_tat: HashMap<(String, String), u64>,
    limiter_failure: Option<String>,
    limiter_calls: Vec<(String, String, Quota, u32)>,
    jwt: HashMap<String, Result<String, VerifyError>>,
    jwt_calls: Vec<(String, VerifyOptions)>,
    jwt_missing_key_sets: Vec<String>,
    http: HashMap<String, Result<OutboundResponse, String>>,
    http_sent: Vec<OutboundRequest>,
    logs: Vec<LogLine>,
    metrics: Vec<MetricEvent>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    STATE.with(|s| f(&mut s.borrow_mut()))
}

fn owned(fields: &[(&str, &str)]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

/// Programs and inspects the mock gateway of the current test thread.
pub struct MockHost;

impl MockHost {
    /// Forgets everything: kv, limiters, context, programmed answers, captured output, clock.
    pub fn reset() {
        with(|s| *s = State::default());
    }

    // ---- clock ----

    /// Moves the mock clock forward (kv TTLs and rate-limit windows follow it).
    pub fn advance(by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        with(|s| s.now_ms = s.now_ms.saturating_add(ms));
    }

    // ---- context ----

    /// Sets a context entry, as an earlier plugin in the chain would.
    pub fn context_set(key: &str, value: &str) {
        with(|s| s.context.insert(key.to_string(), value.to_string()));
    }

    /// A context entry.
    pub fn context_get(key: &str) -> Option<String> {
        with(|s| s.context.get(key).cloned())
    }

    /// Every context entry, sorted by key.
    pub fn context() -> Vec<(String, String)> {
        with(|s| {
            s.context
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    /// Empties the context (the gateway does this at the start of every request).
    pub fn context_clear() {
        with(|s| s.context.clear());
    }

    // ---- kv ----

    /// Stores a kv value without expiry.
    pub fn kv_put(key: &str, value: impl Into<Vec<u8>>) {
        with(|s| {
            s.kv.insert(
                key.to_string(),
                KvEntry {
                    value: value.into(),
                    expires_at_ms: None,
                },
            )
        });
    }

    /// The live kv value of `key`.
    pub fn kv_value(key: &str) -> Option<Vec<u8>> {
        with(|s| live_kv(s, key).map(|e| e.value.clone()))
    }

    /// Makes every kv call fail with `error` (`None` heals the store).
    pub fn kv_fail(error: Option<&str>) {
        with(|s| s.kv_failure = error.map(str::to_string));
    }

    // ---- rate limiting ----

    /// Makes every limiter check fail with `error` (`None` heals it).
    pub fn rate_limit_fail(error: Option<&str>) {
        with(|s| s.limiter_failure = error.map(str::to_string));
    }

    /// Every `(name, key, quota, cost)` passed to `rate_limit::check`.
    pub fn rate_limit_calls() -> Vec<(String, String, Quota, u32)> {
        with(|s| s.limiter_calls.clone())
    }

    // ---- jwt ----

    /// `jwt::verify(token, _)` will succeed with these claims (JSON object text).
    pub fn jwt_accepts(token: &str, claims_json: &str) {
        with(|s| s.jwt.insert(token.to_string(), Ok(claims_json.to_string())));
    }

    /// `jwt::verify(token, _)` will fail with `error`. Tokens never programmed fail with
    /// [`VerifyError::BadSignature`].
    pub fn jwt_rejects(token: &str, error: VerifyError) {
        with(|s| s.jwt.insert(token.to_string(), Err(error)));
    }

    /// `jwt::key_set_missing(name)` will say the gateway has no such key set (by default every
    /// name exists).
    pub fn jwt_key_set_missing(name: &str) {
        with(|s| s.jwt_missing_key_sets.push(name.to_string()));
    }

    /// Every `(token, options)` passed to `jwt::verify`.
    pub fn jwt_calls() -> Vec<(String, VerifyOptions)> {
        with(|s| s.jwt_calls.clone())
    }

    // ---- http ----

    /// Requests to `url` will get `response`. URLs never programmed fail with an error.
    pub fn http_respond(url: &str, response: OutboundResponse) {
        with(|s| s.http.insert(url.to_string(), Ok(response)));
    }

    /// Requests to `url` will fail with `error` (e.g. a timeout).
    pub fn http_fail(url: &str, error: &str) {
        with(|s| s.http.insert(url.to_string(), Err(error.to_string())));
    }

    /// Every request sent, in order.
    pub fn http_requests() -> Vec<OutboundRequest> {
        with(|s| s.http_sent.clone())
    }

    // ---- output ----

    /// Every log line so far.
    pub fn logs() -> Vec<LogLine> {
        with(|s| s.logs.clone())
    }

    /// Every metric update so far.
    pub fn metrics() -> Vec<MetricEvent> {
        with(|s| s.metrics.clone())
    }

    /// The sum of every `counter_add` to `name` (any labels).
    pub fn counter_total(name: &str) -> u64 {
        with(|s| {
            s.metrics
                .iter()
                .filter(|m| m.kind == MetricKind::Counter && m.name == name)
                .map(|m| m.value as u64)
                .sum()
        })
    }
}

fn live_kv<'a>(s: &'a State, key: &str) -> Option<&'a KvEntry> {
    s.kv.get(key)
        .filter(|e| e.expires_at_ms.is_none_or(|t| t > s.now_ms))
}

fn expiry(s: &State, ttl_ms: Option<u64>) -> Option<u64> {
    ttl_ms.map(|t| s.now_ms.saturating_add(t))
}

// ---- backend functions called by the capability modules ----------------------------------

pub(crate) fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    with(|s| {
        s.logs.push(LogLine {
            level,
            message: message.to_string(),
            fields: owned(fields),
        })
    });
}

pub(crate) fn context_get(key: &str) -> Option<String> {
    MockHost::context_get(key)
}
pub(crate) fn context_set(key: &str, value: &str) {
    MockHost::context_set(key, value);
}
pub(crate) fn context_remove(key: &str) {
    with(|s| s.context.remove(key));
}
pub(crate) fn context_entries() -> Vec<(String, String)> {
    MockHost::context()
}

fn kv_check(s: &State) -> Result<(), String> {
    s.kv_failure.clone().map_or(Ok(()), Err)
}

pub(crate) fn kv_get(key: &str) -> Result<Option<Vec<u8>>, String> {
    with(|s| {
        kv_check(s)?;
        Ok(live_kv(s, key).map(|e| e.value.clone()))
    })
}
pub(crate) fn kv_set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), String> {
    with(|s| {
        kv_check(s)?;
        let expires_at_ms = expiry(s, ttl_ms);
        s.kv.insert(
            key.to_string(),
            KvEntry {
                value: value.to_vec(),
                expires_at_ms,
            },
        );
        Ok(())
    })
}
pub(crate) fn kv_delete(key: &str) -> Result<bool, String> {
    with(|s| {
        kv_check(s)?;
        let existed = live_kv(s, key).is_some();
        s.kv.remove(key);
        Ok(existed)
    })
}
pub(crate) fn kv_increment(key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, String> {
    with(|s| {
        kv_check(s)?;
        let (current, expires_at_ms) = match live_kv(s, key) {
            Some(e) => {
                let text = std::str::from_utf8(&e.value)
                    .map_err(|_| format!("value of {key} is not an integer"))?;
                let n = text
                    .parse::<i64>()
                    .map_err(|_| format!("value of {key} is not an integer"))?;
                (n, e.expires_at_ms)
            }
            None => (0, expiry(s, ttl_ms)),
        };
        let new = current
            .checked_add(delta)
            .ok_or_else(|| format!("increment of {key} overflows"))?;
        s.kv.insert(
            key.to_string(),
            KvEntry {
                value: new.to_string().into_bytes(),
                expires_at_ms,
            },
        );
        Ok(new)
    })
}
pub(crate) fn kv_compare_and_swap(
    key: &str,
    expected: Option<&[u8]>,
    new: &[u8],
    ttl_ms: Option<u64>,
) -> Result<bool, String> {
    with(|s| {
        kv_check(s)?;
        let current = live_kv(s, key).map(|e| e.value.as_slice());
        if current != expected {
            return Ok(false);
        }
        let expires_at_ms = expiry(s, ttl_ms);
        s.kv.insert(
            key.to_string(),
            KvEntry {
                value: new.to_vec(),
                expires_at_ms,
            },
        );
        Ok(true)
    })
}

/// GCRA, like the gateway's limiter: each request advances a theoretical arrival time by
/// `cost * window / limit`; it is allowed while that time stays within one window from now.
pub(crate) fn rate_limit_check(
    name: &str,
    key: &str,
    quota: Quota,
    cost: u32,
) -> Result<Decision, String> {
    with(|s| {
        s.limiter_calls
            .push((name.to_string(), key.to_string(), quota, cost));
        if let Some(e) = &s.limiter_failure {
            return Err(e.clone());
        }
        if quota.limit == 0 || quota.window.is_zero() {
            return Err("quota needs a positive limit and window".into());
        }
        let window = u64::try_from(quota.window.as_millis()).unwrap_or(u64::MAX);
        let interval = (window / u64::from(quota.limit)).max(1);
        let now = s.now_ms;
        let slot = (name.to_string(), key.to_string());
        let tat = s.limiter_tat.get(&slot).copied().unwrap_or(now).max(now);
        let new_tat = tat.saturating_add(interval.saturating_mul(u64::from(cost)));
        let allowed = new_tat - now <= window;
        let after = if allowed { new_tat } else { tat };
        if allowed {
            s.limiter_tat.insert(slot, new_tat);
        }
        let used = after - now;
        let remaining = u32::try_from(window.saturating_sub(used) / interval).unwrap_or(u32::MAX);
        Ok(Decision {
            allowed,
            limit: quota.limit,
            remaining: remaining.min(quota.limit),
            reset: Duration::from_millis(used),
            retry_after: if allowed {
                Duration::ZERO
            } else {
                Duration::from_millis(new_tat - now - window)
            },
        })
    })
}

pub(crate) fn jwt_verify(token: &str, options: &VerifyOptions) -> Result<String, VerifyError> {
    with(|s| {
        s.jwt_calls.push((token.to_string(), options.clone()));
        s.jwt
            .get(token)
            .cloned()
            .unwrap_or(Err(VerifyError::BadSignature))
    })
}

pub(crate) fn jwt_key_set_missing(name: &str) -> bool {
    with(|s| s.jwt_missing_key_sets.iter().any(|n| n == name))
}

pub(crate) fn http_send(request: &OutboundRequest) -> Result<OutboundResponse, String> {
    with(|s| {
        s.http_sent.push(request.clone());
        s.http.get(&request.url).cloned().unwrap_or_else(|| {
            Err(format!(
                "mock host: no response programmed for {}",
                request.url
            ))
        })
    })
}
pub(crate) fn http_send_all(requests: &[OutboundRequest]) -> Vec<Result<OutboundResponse, String>> {
    requests.iter().map(http_send).collect()
}

pub(crate) fn metrics_counter_add(name: &str, labels: &[(&str, &str)], value: u64) {
    with(|s| {
        s.metrics.push(MetricEvent {
            kind: MetricKind::Counter,
            name: name.to_string(),
            labels: owned(labels),
            value: value as f64,
        })
    });
}
pub(crate) fn metrics_histogram_observe(name: &str, labels: &[(&str, &str)], value: f64) {
    with(|s| {
        s.metrics.push(MetricEvent {
            kind: MetricKind::Histogram,
            name: name.to_string(),
            labels: owned(labels),
            value,
        })
    });
}

// ---- harness ----------------------------------------------------------------------------

/// Drives a policy the way the gateway does: `init` with a JSON config, then the phases of one
/// request at a time, with bodies withheld unless the policy declared it needs them.
pub struct Harness<P: Policy> {
    policy: P,
    info: PluginInfo,
    _not_send: PhantomData<*const ()>,
}

impl<P: Policy> Harness<P> {
    /// Instantiates the policy with `config` (the route's `config` table as JSON), exactly as the
    /// gateway's `init` would, including the error text an operator would see.
    pub fn new(config: serde_json::Value) -> Result<Self, String> {
        Self::from_config_str(&config.to_string())
    }

    /// Like [`Harness::new`] from raw config text (e.g. to test malformed input).
    pub fn from_config_str(config: &str) -> Result<Self, String> {
        let policy = instantiate::<P>(config)?;
        let info = policy.info();
        Ok(Self {
            policy,
            info,
            _not_send: PhantomData,
        })
    }

    /// What the policy declared in `info()`.
    pub fn info(&self) -> PluginInfo {
        self.info.clone()
    }

    /// The policy instance.
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// Starts a new request (the context is emptied) and runs `on_request`.
    pub fn on_request(&mut self, req: impl Into<Request>) -> Action {
        self.on_request_with_context(req, &[])
    }

    /// Starts a new request whose context already holds `context` (as set by earlier plugins of
    /// the chain, e.g. `consumer`) and runs `on_request`.
    pub fn on_request_with_context(
        &mut self,
        req: impl Into<Request>,
        context: &[(&str, &str)],
    ) -> Action {
        MockHost::context_clear();
        for (k, v) in context {
            MockHost::context_set(k, v);
        }
        let mut req = req.into();
        if !self.info.needs_request_body {
            req.body = None;
        }
        if let Some(names) = &self.info.request_headers {
            // Like the gateway: headers the policy did not declare never reach it.
            req.headers
                .retain(|(n, _)| names.iter().any(|d| d.eq_ignore_ascii_case(n)));
        }
        if !self.info.phases.contains(Phases::REQUEST) {
            return Action::default();
        }
        self.policy.on_request(&req)
    }

    /// Runs `on_response` in the current request's context (if declared in
    /// [`PluginInfo::phases`]; like the gateway, a no-op otherwise).
    pub fn on_response(&mut self, resp: ResponseHead) -> ResponseEdits {
        let mut resp = resp;
        if !self.info.needs_response_body {
            resp.body = None;
        }
        if !self.info.phases.contains(Phases::RESPONSE) {
            return ResponseEdits::default();
        }
        self.policy.on_response(&resp)
    }

    /// Runs `on_log` in the current request's context (if declared, as the gateway does).
    pub fn on_log(&mut self, entry: LogEntry) {
        if self.info.phases.contains(Phases::LOG) {
            self.policy.on_log(&entry);
        }
    }

    /// The current request's context entries, sorted by key.
    pub fn context(&self) -> Vec<(String, String)> {
        MockHost::context()
    }

    /// One entry of the current request's context.
    pub fn context_get(&self, key: &str) -> Option<String> {
        MockHost::context_get(key)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests may unwrap")]
mod tests {
    use super::*;
    use crate::{NoConfig, kv, rate_limit};

    /// Marks every phase it is called in; declares only `on_request`.
    struct RequestOnly;

    impl Policy for RequestOnly {
        type Config = NoConfig;
        fn new(_: NoConfig) -> Result<Self, String> {
            Ok(RequestOnly)
        }
        fn info(&self) -> PluginInfo {
            PluginInfo::default().phases(Phases::REQUEST)
        }
        fn on_request(&self, _: &Request) -> Action {
            crate::context::set("req", "1");
            Action::default()
        }
        fn on_response(&self, _: &ResponseHead) -> ResponseEdits {
            crate::context::set("resp", "1");
            ResponseEdits::default().set_header("x", "1")
        }
        fn on_log(&self, _: &LogEntry) {
            crate::context::set("log", "1");
        }
    }

    #[test]
    fn harness_skips_undeclared_phases_like_the_gateway() {
        let mut h = Harness::<RequestOnly>::new(serde_json::json!({})).unwrap();
        h.on_request(Request::get("/"));
        assert!(h.on_response(ResponseHead::new(200)).is_empty());
        h.on_log(LogEntry::default());
        assert_eq!(h.context(), vec![("req".to_string(), "1".to_string())]);
    }

    /// Records the request headers it was shown; declares that it reads `X-Token` only.
    struct ReadsToken;

    impl Policy for ReadsToken {
        type Config = NoConfig;
        fn new(_: NoConfig) -> Result<Self, String> {
            Ok(ReadsToken)
        }
        fn info(&self) -> PluginInfo {
            PluginInfo::default().reads_headers(&["X-Token"])
        }
        fn on_request(&self, req: &Request) -> Action {
            let seen: Vec<&str> = req.headers.iter().map(|(n, _)| n.as_str()).collect();
            crate::context::set("seen", &seen.join(","));
            Action::default()
        }
    }

    #[test]
    fn harness_shows_only_declared_headers_like_the_gateway() {
        let mut h = Harness::<ReadsToken>::new(serde_json::json!({})).unwrap();
        assert_eq!(h.info().request_headers, Some(vec!["x-token".to_string()]));
        h.on_request(
            Request::get("/")
                .header("cookie", "a=1")
                .header("x-token", "t")
                .header("authorization", "Bearer b"),
        );
        assert_eq!(h.context_get("seen").as_deref(), Some("x-token"));
    }

    #[test]
    fn kv_ttl_follows_mock_clock() {
        kv::set("a", b"1", Some(Duration::from_secs(1))).unwrap();
        assert_eq!(kv::get("a").unwrap(), Some(b"1".to_vec()));
        MockHost::advance(Duration::from_millis(1000));
        assert_eq!(kv::get("a").unwrap(), None);
        assert!(!kv::delete("a").unwrap());
    }

    #[test]
    fn kv_increment_and_cas() {
        assert_eq!(kv::increment("n", 2, None).unwrap(), 2);
        assert_eq!(kv::increment("n", -5, None).unwrap(), -3);
        assert!(!kv::compare_and_swap("c", Some(b"x"), b"y", None).unwrap());
        assert!(kv::compare_and_swap("c", None, b"y", None).unwrap());
        assert!(kv::compare_and_swap("c", Some(b"y"), b"z", None).unwrap());
        assert_eq!(MockHost::kv_value("c"), Some(b"z".to_vec()));
        MockHost::kv_put("s", "text");
        assert!(kv::increment("s", 1, None).is_err());
        MockHost::kv_fail(Some("down"));
        assert_eq!(kv::get("c"), Err("down".to_string()));
    }

    #[test]
    fn limiter_allows_limit_per_window_then_refills() {
        let q = Quota {
            limit: 3,
            window: Duration::from_secs(3),
        };
        let d: Vec<_> = (0..4)
            .map(|_| rate_limit::check("w", "k", q, 1).unwrap())
            .collect();
        assert!(d[..3].iter().all(|d| d.allowed));
        assert_eq!(
            d.iter().map(|d| d.remaining).collect::<Vec<_>>(),
            [2, 1, 0, 0]
        );
        assert!(!d[3].allowed);
        assert_eq!(d[3].retry_after, Duration::from_secs(1));
        // Another key and another limiter name are independent.
        assert!(rate_limit::check("w", "other", q, 1).unwrap().allowed);
        assert!(rate_limit::check("w2", "k", q, 1).unwrap().allowed);
        MockHost::advance(Duration::from_secs(1));
        assert!(rate_limit::check("w", "k", q, 1).unwrap().allowed);
        assert!(!rate_limit::check("w", "k", q, 1).unwrap().allowed);
    }
}
