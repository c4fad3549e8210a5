//! `rate-limit`: limit requests per key over one or more windows.
//!
//! The key is the authenticated `consumer` (context entry set by an auth plugin earlier in the
//! chain), the client IP, or a request header. Every window is a separate limiter in the
//! gateway (GCRA, global when the gateway is clustered), named after the window's id, so
//! `10/1s` and `1000/1h` are enforced together. A denied request gets a 429
//! `application/problem+json` answer with `Retry-After`; every answer carries the IETF
//! `RateLimit-Limit` / `RateLimit-Remaining` / `RateLimit-Reset` headers of the most
//! restrictive window.

use std::time::Duration;

use serde::Deserialize;
use weir_plugin_sdk::prelude::*;
use weir_plugin_sdk::rate_limit::{Decision, Quota};

/// A duration written as `"500ms"`, `"1s"`, `"5m"`, `"1h"`, `"1d"` or a number of seconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum WindowText {
    Seconds(u64),
    Text(String),
}

fn parse_window(w: &WindowText) -> Result<Duration, String> {
    let d = match w {
        WindowText::Seconds(s) => Duration::from_secs(*s),
        WindowText::Text(t) => {
            let t = t.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (num, unit) = t.split_at(split);
            let n: u64 = num.parse().map_err(|_| {
                format!("invalid window {t:?}: expected e.g. \"1s\", \"5m\", \"1h\"")
            })?;
            let unit_ms: u64 = match unit.trim() {
                "ms" => 1,
                "s" | "" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                other => {
                    return Err(format!(
                        "invalid window unit {other:?} in {t:?} (ms, s, m, h, d)"
                    ));
                }
            };
            Duration::from_millis(n.saturating_mul(unit_ms))
        }
    };
    if d.is_zero() {
        return Err("window must be longer than zero".into());
    }
    Ok(d)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitConfig {
    requests: u32,
    window: WindowText,
    /// Limiter name; defaults to the window as written (e.g. `"1s"`).
    id: Option<String>,
}

/// What to do when the key is absent (e.g. `consumer` on an anonymous request).
#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum OnMissingKey {
    /// Fall back to the client IP.
    #[default]
    Ip,
    /// Let the request through unlimited.
    Allow,
}

/// What to do when the gateway's limiter fails (e.g. Redis down).
#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum OnLimiterError {
    /// Fail open: let the request through, log a warning.
    #[default]
    Allow,
    /// Fail closed: answer 503.
    Deny,
}

/// Whether counters are per route or shared by every route using the same config.
#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Scope {
    #[default]
    Route,
    Global,
}

fn default_true() -> bool {
    true
}

fn default_cost() -> u32 {
    1
}

/// The plugin's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `consumer`, `ip` or `header:NAME`.
    key: String,
    limits: Vec<LimitConfig>,
    #[serde(default)]
    on_missing_key: OnMissingKey,
    #[serde(default)]
    on_limiter_error: OnLimiterError,
    #[serde(default)]
    scope: Scope,
    /// Send `RateLimit-*` headers on allowed responses too.
    #[serde(default = "default_true")]
    headers: bool,
    /// Units each request consumes.
    #[serde(default = "default_cost")]
    cost: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum KeySource {
    Consumer,
    Ip,
    Header(String),
}

#[derive(Debug, Clone)]
struct Limit {
    id: String,
    quota: Quota,
}

/// The rate-limit policy.
pub struct RateLimit {
    source: KeySource,
    limits: Vec<Limit>,
    on_missing_key: OnMissingKey,
    on_limiter_error: OnLimiterError,
    scope: Scope,
    headers: bool,
    cost: u32,
    /// `RateLimit-Policy` value, e.g. `10;w=1, 1000;w=3600`.
    policy_header: String,
}

/// Whole seconds, rounded up (a client waiting the rounded-down value would be refused again).
fn ceil_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).try_into().unwrap_or(u64::MAX)
}

impl RateLimit {
    fn key(&self, req: &Request) -> Option<String> {
        let own = match &self.source {
            KeySource::Consumer => context::get("consumer")
                .filter(|c| !c.is_empty())
                .map(|c| format!("consumer:{c}")),
            KeySource::Ip => Some(format!("ip:{}", req.client_ip)),
            KeySource::Header(name) => req
                .header(name)
                .filter(|v| !v.is_empty())
                .map(|v| format!("header:{name}:{v}")),
        };
        let key = match (own, self.on_missing_key) {
            (Some(k), _) => k,
            (None, OnMissingKey::Ip) => format!("ip:{}", req.client_ip),
            (None, OnMissingKey::Allow) => return None,
        };
        Some(match self.scope {
            Scope::Route => {
                let mut scoped = String::with_capacity(7 + req.route.len() + key.len());
                scoped.push_str("route:");
                scoped.push_str(&req.route);
                scoped.push('|');
                scoped.push_str(&key);
                scoped
            }
            Scope::Global => key,
        })
    }

    fn headers_for(&self, d: &Decision) -> [(&'static str, String); 4] {
        [
            ("ratelimit-limit", d.limit.to_string()),
            ("ratelimit-remaining", d.remaining.to_string()),
            ("ratelimit-reset", ceil_secs(d.reset).to_string()),
            ("ratelimit-policy", self.policy_header.clone()),
        ]
    }

    fn denied(&self, limit: &Limit, d: &Decision) -> Response {
        metrics::counter_add("rate_limit_denied_total", &[("window", &limit.id)], 1);
        let retry = ceil_secs(d.retry_after).max(1);
        let mut resp = Response::problem(
            429,
            "Too Many Requests",
            &format!(
                "rate limit of {} requests per {} exceeded; retry in {retry}s",
                limit.quota.limit, limit.id
            ),
        )
        .with_header("retry-after", &retry.to_string());
        for (name, value) in self.headers_for(d) {
            resp = resp.with_header(name, &value);
        }
        resp
    }
}

impl Policy for RateLimit {
    type Config = Config;

    fn new(cfg: Config) -> Result<Self, String> {
        let source = match cfg.key.as_str() {
            "consumer" => KeySource::Consumer,
            "ip" => KeySource::Ip,
            other => match other.strip_prefix("header:") {
                Some(h) if !h.trim().is_empty() => KeySource::Header(h.trim().to_ascii_lowercase()),
                _ => {
                    return Err(format!(
                        "key: expected \"consumer\", \"ip\" or \"header:NAME\", found {other:?}"
                    ));
                }
            },
        };
        if cfg.limits.is_empty() {
            return Err("limits: at least one { requests, window } is required".into());
        }
        if cfg.cost == 0 {
            return Err("cost must be at least 1".into());
        }
        let mut limits = Vec::new();
        for (i, l) in cfg.limits.iter().enumerate() {
            let window = parse_window(&l.window).map_err(|e| format!("limits[{i}]: {e}"))?;
            if l.requests == 0 {
                return Err(format!("limits[{i}]: requests must be at least 1"));
            }
            if cfg.cost > l.requests {
                return Err(format!(
                    "limits[{i}]: cost {} is more than requests {}: no request could ever pass",
                    cfg.cost, l.requests
                ));
            }
            let id = match (&l.id, &l.window) {
                (Some(id), _) => id.clone(),
                (None, WindowText::Text(t)) => t.trim().to_string(),
                (None, WindowText::Seconds(s)) => format!("{s}s"),
            };
            if limits.iter().any(|x: &Limit| x.id == id) {
                return Err(format!("limits[{i}]: duplicate window id {id:?}; set `id`"));
            }
            limits.push(Limit {
                id,
                quota: Quota {
                    limit: l.requests,
                    window,
                },
            });
        }
        let policy_header = limits
            .iter()
            .map(|l| format!("{};w={}", l.quota.limit, ceil_secs(l.quota.window)))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Self {
            source,
            limits,
            on_missing_key: cfg.on_missing_key,
            on_limiter_error: cfg.on_limiter_error,
            scope: cfg.scope,
            headers: cfg.headers,
            cost: cfg.cost,
            policy_header,
        })
    }

    /// `on_response` only adds the `RateLimit-*` headers, so it is skipped when they are off.
    fn info(&self) -> PluginInfo {
        let reads: Vec<&str> = match &self.source {
            KeySource::Header(name) => vec![name.as_str()],
            KeySource::Consumer | KeySource::Ip => Vec::new(),
        };
        // No `on_response`: the RateLimit headers travel as `set_response_header` edits.
        PluginInfo::default()
            .phases(Phases::REQUEST)
            .reads_headers(&reads)
    }

    fn on_request(&self, req: &Request) -> Action {
        let Some(key) = self.key(req) else {
            return Action::next();
        };
        // The window with the fewest requests left is the one clients should pace to.
        let mut tightest: Option<Decision> = None;
        for limit in &self.limits {
            let decision = match rate_limit::check(&limit.id, &key, limit.quota, self.cost) {
                Ok(d) => d,
                Err(e) => {
                    log::warn(
                        "rate limiter unavailable",
                        &[("window", &limit.id), ("error", &e)],
                    );
                    return match self.on_limiter_error {
                        OnLimiterError::Allow => Action::next(),
                        OnLimiterError::Deny => Response::problem(
                            503,
                            "Service Unavailable",
                            "rate limiter unavailable",
                        )
                        .into(),
                    };
                }
            };
            if !decision.allowed {
                return self.denied(limit, &decision).into();
            }
            let tighter = tightest.is_none_or(|t| {
                (decision.remaining, std::cmp::Reverse(decision.reset))
                    < (t.remaining, std::cmp::Reverse(t.reset))
            });
            if tighter {
                tightest = Some(decision);
            }
        }
        match (self.headers, tightest) {
            (true, Some(d)) => {
                let mut n = itoa::Buffer::new();
                RequestEdits::default()
                    .set_response_header("ratelimit-limit", n.format(d.limit))
                    .set_response_header("ratelimit-remaining", n.format(d.remaining))
                    .set_response_header("ratelimit-reset", n.format(ceil_secs(d.reset)))
                    .set_response_header("ratelimit-policy", &self.policy_header)
                    .into()
            }
            _ => Action::next(),
        }
    }
}

export_policy!(RateLimit);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::{Harness, MockHost};

    fn harness(cfg: Value) -> Harness<RateLimit> {
        Harness::<RateLimit>::new(cfg).unwrap()
    }

    #[test]
    fn windows_parse() {
        let ok = |t: &str| parse_window(&WindowText::Text(t.into())).unwrap();
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("1s"), Duration::from_secs(1));
        assert_eq!(ok("5m"), Duration::from_secs(300));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1d"), Duration::from_secs(86400));
        assert_eq!(
            parse_window(&WindowText::Seconds(2)).unwrap(),
            Duration::from_secs(2)
        );
        assert!(parse_window(&WindowText::Text("1w".into())).is_err());
        assert!(parse_window(&WindowText::Text("s".into())).is_err());
        assert!(parse_window(&WindowText::Text("0s".into())).is_err());
    }

    #[test]
    fn denies_over_limit_with_problem_and_retry_after() {
        let mut h = harness(json!({ "key": "ip", "limits": [{ "requests": 2, "window": "10s" }] }));
        for expected_remaining in ["1", "0"] {
            let a = h.on_request(Request::get("/").client_ip("10.0.0.1"));
            let e = a.edits().unwrap();
            assert_eq!(e.response_header_value("ratelimit-limit"), Some("2"));
            assert_eq!(
                e.response_header_value("ratelimit-remaining"),
                Some(expected_remaining)
            );
            assert!(e.response_header_value("ratelimit-reset").is_some());
            assert_eq!(e.response_header_value("ratelimit-policy"), Some("2;w=10"));
            // Nothing else changes: the request goes on untouched, no context written.
            assert!(e.set_headers.is_empty() && e.remove_headers.is_empty());
            assert!(h.context().is_empty());
        }
        let a = h.on_request(Request::get("/").client_ip("10.0.0.1"));
        let r = a.response().unwrap();
        assert_eq!(r.status, 429);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert_eq!(r.header("retry-after"), Some("5"));
        assert_eq!(r.header("ratelimit-remaining"), Some("0"));
        assert_eq!(r.header("ratelimit-reset"), Some("10"));
        // One guest call per request: no `on_response` phase.
        assert!(!h.policy().info().phases.contains(Phases::RESPONSE));
        assert_eq!(MockHost::counter_total("rate_limit_denied_total"), 1);
        // Another client is unaffected.
        assert!(
            h.on_request(Request::get("/").client_ip("10.0.0.2"))
                .is_continue()
        );
        // After the emission interval one more request fits.
        MockHost::advance(Duration::from_secs(5));
        assert!(
            h.on_request(Request::get("/").client_ip("10.0.0.1"))
                .is_continue()
        );
    }

    #[test]
    fn retry_after_rounds_up() {
        let mut h = harness(json!({ "key": "ip", "limits": [{ "requests": 3, "window": "1s" }] }));
        for _ in 0..3 {
            assert!(h.on_request(Request::get("/")).is_continue());
        }
        let r = h.on_request(Request::get("/"));
        assert_eq!(r.response().unwrap().header("retry-after"), Some("1"));
    }

    #[test]
    fn every_window_is_checked_by_id_and_tightest_reported() {
        let mut h = harness(json!({
            "key": "consumer",
            "limits": [{ "requests": 10, "window": "1s" }, { "requests": 3, "window": "1h", "id": "hourly" }]
        }));
        let a = h.on_request_with_context(Request::get("/").route("api"), &[("consumer", "alice")]);
        assert!(a.is_continue());
        let calls = MockHost::rate_limit_calls();
        let names: Vec<_> = calls.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(names, ["1s", "hourly"]);
        assert_eq!(calls[0].1, "route:api|consumer:alice");
        assert_eq!(calls[1].2.window, Duration::from_secs(3600));
        let e = a.edits().unwrap();
        assert_eq!(e.response_header_value("ratelimit-remaining"), Some("2"));
        assert_eq!(e.response_header_value("ratelimit-limit"), Some("3"));
        for _ in 0..2 {
            h.on_request_with_context(Request::get("/").route("api"), &[("consumer", "alice")]);
        }
        let a = h.on_request_with_context(Request::get("/").route("api"), &[("consumer", "alice")]);
        let r = a.response().unwrap();
        assert_eq!(r.status, 429);
        assert_eq!(r.header("retry-after"), Some("1200"));
        assert_eq!(r.header("ratelimit-policy"), Some("10;w=1, 3;w=3600"));
    }

    #[test]
    fn missing_key_falls_back_or_allows() {
        let mut h = harness(
            json!({ "key": "header:X-Tenant", "limits": [{ "requests": 1, "window": 60 }] }),
        );
        assert!(
            h.on_request(Request::get("/").header("x-tenant", "t1"))
                .is_continue()
        );
        assert!(
            !h.on_request(Request::get("/").header("x-tenant", "t1"))
                .is_continue()
        );
        assert!(
            h.on_request(Request::get("/").header("x-tenant", "t2"))
                .is_continue()
        );
        // No header: keyed by IP (first time, allowed; second time, limited).
        assert!(h.on_request(Request::get("/")).is_continue());
        assert!(!h.on_request(Request::get("/")).is_continue());

        MockHost::reset();
        let mut h = harness(json!({
            "key": "consumer", "on_missing_key": "allow", "scope": "global",
            "limits": [{ "requests": 1, "window": "1m" }]
        }));
        for _ in 0..3 {
            assert!(h.on_request(Request::get("/")).is_continue());
        }
        assert!(MockHost::rate_limit_calls().is_empty());
        h.on_request_with_context(Request::get("/"), &[("consumer", "bob")]);
        assert_eq!(MockHost::rate_limit_calls()[0].1, "consumer:bob");
    }

    #[test]
    fn limiter_errors_follow_the_configured_mode() {
        MockHost::rate_limit_fail(Some("redis down"));
        let mut open =
            harness(json!({ "key": "ip", "limits": [{ "requests": 1, "window": "1s" }] }));
        let a = open.on_request(Request::get("/"));
        assert!(a.edits().unwrap().is_empty());
        assert_eq!(MockHost::logs()[0].field("error"), Some("redis down"));
        let mut closed = harness(json!({
            "key": "ip", "on_limiter_error": "deny", "limits": [{ "requests": 1, "window": "1s" }]
        }));
        assert_eq!(
            closed
                .on_request(Request::get("/"))
                .response()
                .unwrap()
                .status,
            503
        );
    }

    #[test]
    fn headers_can_be_disabled() {
        let mut h = harness(
            json!({ "key": "ip", "headers": false, "limits": [{ "requests": 5, "window": "1s" }] }),
        );
        assert!(h.on_request(Request::get("/")).edits().unwrap().is_empty());
    }

    #[test]
    fn config_errors() {
        let err = |v: Value| Harness::<RateLimit>::new(v).err().unwrap();
        assert!(
            err(json!({ "key": "user", "limits": [{ "requests": 1, "window": "1s" }] }))
                .contains("key:")
        );
        assert!(err(json!({ "key": "ip", "limits": [] })).contains("at least one"));
        assert!(
            err(json!({ "key": "ip", "limits": [{ "requests": 0, "window": "1s" }] }))
                .contains("limits[0]")
        );
        assert!(
            err(json!({ "key": "ip", "limits": [{ "requests": 1, "window": "1x" }] }))
                .contains("limits[0]")
        );
        assert!(err(json!({ "key": "ip", "limits": [{ "requests": 1, "window": "1s" }, { "requests": 2, "window": "1s" }] })).contains("duplicate"));
        assert!(err(json!({ "key": "ip" })).contains("missing field `limits`"));
        assert!(
            err(json!({ "key": "ip", "cost": 10, "limits": [{ "requests": 5, "window": "1m" }] }))
                .contains("no request could ever pass")
        );
    }
}
