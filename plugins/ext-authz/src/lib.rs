//! `ext-authz`: delegate the allow/deny decision for each request to an HTTP service.
//!
//! The plugin describes the request to the authorization service, either as a JSON `POST`
//! (`{"method","path","query","host","headers":{...}}`) or as a `GET` carrying the configured
//! headers plus `x-forwarded-method`/`-uri`/`-host` (the forward-auth style of nginx
//! `auth_request` and Traefik). The service answers 2xx to allow, optionally with headers that are
//! passed upstream (`upstream_headers`), 403 (or 401) to deny; anything else is a service failure.
//!
//! Decisions are cached in the plugin's kv store for `cache_ttl`, keyed by a SHA-256 of every
//! input the service saw (service URL, method, path, query, host and the configured headers), so
//! a cached answer is never reused for a request the service did not judge. Keys are hashed so
//! credentials never appear in the store. Failures are never cached.
//!
//! When the service cannot be asked (unreachable, timeout, 5xx) the request fails closed with
//! 503, unless `failure_mode_allow = true`, which lets it through and logs a warning.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use weir_plugin_sdk::http::{OutboundRequest, OutboundResponse};
use weir_plugin_sdk::prelude::*;

/// A duration written as `"500ms"`, `"30s"`, `"5m"`, `"1h"` or a number of seconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DurationText {
    Seconds(u64),
    Text(String),
}

fn parse_duration(what: &str, d: &DurationText) -> Result<Duration, String> {
    match d {
        DurationText::Seconds(s) => Ok(Duration::from_secs(*s)),
        DurationText::Text(t) => {
            let t = t.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (num, unit) = t.split_at(split);
            let n: u64 = num
                .parse()
                .map_err(|_| format!("{what}: invalid duration {t:?}, expected e.g. \"30s\""))?;
            let unit_ms: u64 = match unit.trim() {
                "ms" => 1,
                "s" | "" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                other => {
                    return Err(format!(
                        "{what}: invalid duration unit {other:?} in {t:?} (ms, s, m, h)"
                    ));
                }
            };
            Ok(Duration::from_millis(n.saturating_mul(unit_ms)))
        }
    }
}

/// How the service is asked.
#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// `POST {url}` with a JSON description of the request.
    #[default]
    Post,
    /// `GET {url}` with the headers of interest and `x-forwarded-*`.
    Get,
}

fn default_headers() -> Vec<String> {
    vec!["authorization".into()]
}

/// The plugin's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The authorization service (must also be in the route's `http.allow`).
    url: String,
    #[serde(default)]
    mode: Mode,
    /// Request headers sent to the service; they are part of the cache key.
    #[serde(default = "default_headers")]
    headers: Vec<String>,
    /// Headers of an allowing answer that are set on the upstream request.
    #[serde(default)]
    upstream_headers: Vec<String>,
    /// How long decisions are cached; absent or zero = ask every time.
    cache_ttl: Option<DurationText>,
    /// Let requests through when the service cannot be asked.
    #[serde(default)]
    failure_mode_allow: bool,
    /// Timeout of one call (the route's `http.timeout` caps it).
    timeout: Option<DurationText>,
}

/// A decision of the service, as cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "d", rename_all = "lowercase")]
enum Decision {
    Allow {
        headers: Vec<(String, String)>,
    },
    Deny {
        status: u16,
        /// The service's `WWW-Authenticate` on a 401 (RFC 9110 requires one on every 401).
        #[serde(default)]
        challenge: Option<String>,
    },
}

/// The external authorization policy.
pub struct ExtAuthz {
    url: String,
    mode: Mode,
    headers: Vec<String>,
    upstream_headers: Vec<String>,
    cache_ttl: Option<Duration>,
    failure_mode_allow: bool,
    timeout_ms: Option<u32>,
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn header_list(what: &str, names: Vec<String>) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if !valid_header_name(&n) {
            return Err(format!("{what}: invalid header name {n:?}"));
        }
        let n = n.to_ascii_lowercase();
        if matches!(
            n.as_str(),
            "host" | "connection" | "transfer-encoding" | "content-length"
        ) {
            return Err(format!("{what}: `{n}` cannot be used here"));
        }
        // The plugin sets these itself; a client's copy must not reach the service beside them.
        if what == "headers"
            && matches!(
                n.as_str(),
                "x-forwarded-method" | "x-forwarded-uri" | "x-forwarded-host" | "x-request-id"
            )
        {
            return Err(format!("{what}: `{n}` is set by the plugin"));
        }
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}

/// Feeds one length-prefixed field to the hash, so `("ab","c")` and `("a","bc")` differ.
fn feed(h: &mut Sha256, s: &str) {
    h.update((s.len() as u64).to_be_bytes());
    h.update(s.as_bytes());
}

/// Why the service gave no decision.
struct ServiceError(String);

impl ExtAuthz {
    /// Values of header `name`, joined as one field value.
    fn joined(req: &Request, name: &str) -> Option<String> {
        let values: Vec<&str> = req.header_all(name).collect();
        (!values.is_empty()).then(|| values.join(", "))
    }

    fn cache_key(&self, req: &Request) -> String {
        let mut h = Sha256::new();
        feed(&mut h, &self.url);
        feed(
            &mut h,
            if self.mode == Mode::Post {
                "post"
            } else {
                "get"
            },
        );
        feed(&mut h, &req.method);
        feed(&mut h, &req.path);
        feed(&mut h, req.query.as_deref().unwrap_or("\u{0}none"));
        feed(&mut h, &req.host);
        for name in &self.headers {
            feed(&mut h, name);
            feed(
                &mut h,
                &Self::joined(req, name).unwrap_or_else(|| "\u{0}none".into()),
            );
        }
        format!("authz:{}", hex::encode(h.finalize()))
    }

    fn check_request(&self, req: &Request) -> OutboundRequest {
        let mut out = match self.mode {
            Mode::Post => {
                let mut headers = serde_json::Map::new();
                for name in &self.headers {
                    if let Some(v) = Self::joined(req, name) {
                        headers.insert(name.clone(), Value::String(v));
                    }
                }
                let body = json!({
                    "method": req.method,
                    "path": req.path,
                    "query": req.query,
                    "host": req.host,
                    "headers": headers,
                });
                OutboundRequest::post(&self.url, body.to_string())
                    .header("content-type", "application/json")
            }
            Mode::Get => {
                let uri = match &req.query {
                    Some(q) => format!("{}?{q}", req.path),
                    None => req.path.clone(),
                };
                let mut out = OutboundRequest::get(&self.url)
                    .header("x-forwarded-method", &req.method)
                    .header("x-forwarded-uri", &uri)
                    .header("x-forwarded-host", &req.host);
                for name in &self.headers {
                    for v in req.header_all(name) {
                        out = out.header(name, v);
                    }
                }
                out
            }
        };
        out = out.header("x-request-id", &req.request_id);
        out.timeout_ms = self.timeout_ms;
        out
    }

    fn interpret(&self, r: Result<OutboundResponse, String>) -> Result<Decision, ServiceError> {
        let resp = r.map_err(ServiceError)?;
        match resp.status {
            200..=299 => Ok(Decision::Allow {
                headers: self
                    .upstream_headers
                    .iter()
                    .filter_map(|h| {
                        resp.header(h)
                            .filter(|v| !v.chars().any(char::is_control))
                            .map(|v| (h.clone(), v.to_string()))
                    })
                    .collect(),
            }),
            401 | 403 => Ok(Decision::Deny {
                status: resp.status,
                challenge: resp
                    .header("www-authenticate")
                    .filter(|v| !v.chars().any(char::is_control))
                    .map(str::to_string),
            }),
            s => Err(ServiceError(format!("authorization service answered {s}"))),
        }
    }

    /// A cached decision; a kv failure or an unreadable entry is a miss (the service decides).
    fn cached(key: &str) -> Option<Decision> {
        match kv::get(key) {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).ok(),
            Ok(None) => None,
            Err(e) => {
                log::warn("ext-authz cache read failed", &[("error", &e)]);
                None
            }
        }
    }

    fn remember(&self, key: &str, d: &Decision) {
        let Some(ttl) = self.cache_ttl else { return };
        let Ok(bytes) = serde_json::to_vec(d) else {
            return;
        };
        if let Err(e) = kv::set(key, &bytes, Some(ttl)) {
            log::warn("ext-authz cache write failed", &[("error", &e)]);
        }
    }

    /// Sets the service's headers and removes the configured ones it did not send, so a client
    /// can never supply them itself.
    fn upstream_edits(&self, granted: &[(String, String)]) -> RequestEdits {
        let mut edits = RequestEdits::default();
        for h in &self.upstream_headers {
            match granted.iter().find(|(n, _)| n == h) {
                Some((n, v)) => edits = edits.set_header(n, v),
                None => edits = edits.remove_header(h),
            }
        }
        edits
    }

    fn apply(&self, d: &Decision, source: &str) -> Action {
        match d {
            Decision::Allow { headers } => {
                metrics::counter_add(
                    "ext_authz_decisions_total",
                    &[("decision", "allow"), ("source", source)],
                    1,
                );
                context::set("ext_authz.decision", "allow");
                Action::Continue(self.upstream_edits(headers))
            }
            Decision::Deny { status, challenge } => {
                metrics::counter_add(
                    "ext_authz_decisions_total",
                    &[("decision", "deny"), ("source", source)],
                    1,
                );
                let denied = "denied by the authorization service";
                if *status == 401 {
                    let challenge = challenge.as_deref().unwrap_or("Bearer realm=\"weir\"");
                    return Response::problem(401, "Unauthorized", denied)
                        .with_header("www-authenticate", challenge)
                        .into();
                }
                Response::problem(403, "Forbidden", denied).into()
            }
        }
    }
}

impl Policy for ExtAuthz {
    type Config = Config;

    fn new(cfg: Config) -> Result<Self, String> {
        let url = cfg.url.trim().to_string();
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or("url must start with http:// or https://")?;
        if rest.is_empty() || rest.starts_with('/') || url.chars().any(char::is_whitespace) {
            return Err(format!("url {url:?} is not a valid absolute URL"));
        }
        let cache_ttl = match &cfg.cache_ttl {
            Some(t) => Some(parse_duration("cache_ttl", t)?).filter(|d| !d.is_zero()),
            None => None,
        };
        let timeout_ms = match &cfg.timeout {
            Some(t) => {
                let d = parse_duration("timeout", t)?;
                if d.is_zero() {
                    return Err("timeout must be longer than zero".into());
                }
                Some(u32::try_from(d.as_millis()).unwrap_or(u32::MAX))
            }
            None => None,
        };
        Ok(Self {
            url,
            mode: cfg.mode,
            headers: header_list("headers", cfg.headers)?,
            upstream_headers: header_list("upstream_headers", cfg.upstream_headers)?,
            cache_ttl,
            failure_mode_allow: cfg.failure_mode_allow,
            timeout_ms,
        })
    }

    fn info(&self) -> PluginInfo {
        PluginInfo::default().phases(Phases::REQUEST)
    }

    fn on_request(&self, req: &Request) -> Action {
        let key = self.cache_ttl.map(|_| self.cache_key(req));
        if let Some(d) = key.as_deref().and_then(Self::cached) {
            return self.apply(&d, "cache");
        }
        match self.interpret(http::send(&self.check_request(req))) {
            Ok(d) => {
                if let Some(key) = &key {
                    self.remember(key, &d);
                }
                self.apply(&d, "service")
            }
            Err(ServiceError(e)) => {
                metrics::counter_add(
                    "ext_authz_decisions_total",
                    &[("decision", "error"), ("source", "service")],
                    1,
                );
                if self.failure_mode_allow {
                    log::warn(
                        "authorization service failed; letting the request through",
                        &[("error", &e), ("url", &self.url)],
                    );
                    context::set("ext_authz.decision", "failed_open");
                    Action::Continue(self.upstream_edits(&[]))
                } else {
                    log::error(
                        "authorization service failed; request refused",
                        &[("error", &e), ("url", &self.url)],
                    );
                    Response::problem(
                        503,
                        "Service Unavailable",
                        "the authorization service cannot be reached",
                    )
                    .into()
                }
            }
        }
    }
}

export_policy!(ExtAuthz);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::{Harness, MockHost};

    const URL: &str = "http://authz.svc/check";

    fn harness(extra: Value) -> Harness<ExtAuthz> {
        let mut cfg = json!({
            "url": URL,
            "headers": ["Authorization", "x-tenant"],
            "upstream_headers": ["x-auth-user"],
            "cache_ttl": "30s",
        });
        if let (Value::Object(base), Value::Object(more)) = (&mut cfg, extra) {
            base.extend(more);
        }
        Harness::new(cfg).unwrap()
    }

    fn allow() -> OutboundResponse {
        let mut r = OutboundResponse::new(200, "");
        r.headers.push(("x-auth-user".into(), "alice".into()));
        r.headers.push(("x-internal".into(), "secret".into()));
        r
    }

    fn req(token: &str) -> Request {
        Request::get("/orders/7")
            .query("a=1")
            .host("api.example.com")
            .header("authorization", token)
            .header("x-other", "not sent")
            .request_id("rid")
            .build()
    }

    #[test]
    fn allow_posts_description_and_passes_granted_headers() {
        MockHost::http_respond(URL, allow());
        let mut h = harness(json!({ "timeout": "250ms" }));
        let a = h.on_request(req("Bearer good"));
        let e = a.edits().expect("allowed");
        assert_eq!(e.set_header_value("x-auth-user"), Some("alice"));
        assert!(
            e.set_header_value("x-internal").is_none(),
            "only configured headers"
        );
        assert_eq!(
            h.context_get("ext_authz.decision").as_deref(),
            Some("allow")
        );

        let sent = MockHost::http_requests().remove(0);
        assert_eq!(sent.method, "POST");
        assert_eq!(sent.url, URL);
        assert_eq!(sent.timeout_ms, Some(250));
        assert!(
            sent.headers
                .contains(&("x-request-id".into(), "rid".into()))
        );
        let body: Value = serde_json::from_slice(sent.body.as_deref().unwrap()).unwrap();
        assert_eq!(
            body,
            json!({
                "method": "GET", "path": "/orders/7", "query": "a=1", "host": "api.example.com",
                "headers": { "authorization": "Bearer good" },
            })
        );
    }

    #[test]
    fn get_mode_sends_forward_auth_headers() {
        MockHost::http_respond(URL, OutboundResponse::new(204, ""));
        let mut h = harness(json!({ "mode": "get" }));
        let a = h.on_request(req("Bearer good"));
        // The service sent no x-auth-user: a client-supplied one must not reach the upstream.
        assert_eq!(a.edits().unwrap().remove_headers, vec!["x-auth-user"]);
        let sent = MockHost::http_requests().remove(0);
        assert_eq!(sent.method, "GET");
        assert_eq!(sent.body, None);
        for (k, v) in [
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/orders/7?a=1"),
            ("x-forwarded-host", "api.example.com"),
            ("authorization", "Bearer good"),
        ] {
            assert!(
                sent.headers.contains(&(k.into(), v.into())),
                "{k}: {sent:?}"
            );
        }
        assert!(!sent.headers.iter().any(|(k, _)| k == "x-other"));
    }

    #[test]
    fn deny_is_403_problem_and_401_passes_through() {
        MockHost::http_respond(URL, OutboundResponse::new(403, "no"));
        let mut h = harness(json!({}));
        let a = h.on_request(req("Bearer bad"));
        let r = a.response().expect("denied");
        assert_eq!(r.status, 403);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert!(h.context_get("ext_authz.decision").is_none());

        // A 401 keeps the service's challenge (a default one when it sent none).
        let mut unauthorized = OutboundResponse::new(401, "");
        unauthorized
            .headers
            .push(("www-authenticate".into(), "Basic realm=\"idp\"".into()));
        MockHost::http_respond(URL, unauthorized);
        let a = h.on_request(req("Bearer other"));
        let r = a.response().unwrap();
        assert_eq!(r.status, 401);
        assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"idp\""));
        MockHost::http_respond(URL, OutboundResponse::new(401, ""));
        let a = h.on_request(req("Bearer third"));
        assert_eq!(
            a.response().unwrap().header("www-authenticate"),
            Some("Bearer realm=\"weir\"")
        );
    }

    #[test]
    fn decisions_are_cached_per_inputs_until_ttl() {
        MockHost::http_respond(URL, allow());
        let mut h = harness(json!({}));
        assert!(h.on_request(req("Bearer good")).is_continue());
        // Same inputs: answered from the cache, granted headers included.
        let a = h.on_request(req("Bearer good"));
        assert_eq!(
            a.edits().unwrap().set_header_value("x-auth-user"),
            Some("alice")
        );
        assert_eq!(MockHost::http_requests().len(), 1);
        // Headers outside the configured list do not change the key...
        let mut other_header = req("Bearer good");
        other_header.headers.retain(|(k, _)| k != "x-other");
        other_header
            .headers
            .push(("x-other".into(), "changed".into()));
        let a = h.on_request(other_header);
        assert!(a.is_continue());
        assert_eq!(MockHost::http_requests().len(), 1);
        // ...but every input the service saw does.
        MockHost::http_respond(URL, OutboundResponse::new(403, ""));
        let other_path = Request::get("/orders/8")
            .query("a=1")
            .host("api.example.com")
            .header("authorization", "Bearer good");
        assert_eq!(h.on_request(other_path).response().unwrap().status, 403);
        let mut tenant = req("Bearer good");
        tenant.headers.push(("x-tenant".into(), "t2".into()));
        assert_eq!(h.on_request(tenant).response().unwrap().status, 403);
        assert_eq!(MockHost::http_requests().len(), 3);
        // Denials are cached too.
        assert_eq!(
            h.on_request(req("Bearer bad")).response().unwrap().status,
            403
        );
        assert_eq!(
            h.on_request(req("Bearer bad")).response().unwrap().status,
            403
        );
        assert_eq!(MockHost::http_requests().len(), 4);
        // Expired: asked again (the service now denies the token it allowed before).
        MockHost::advance(Duration::from_secs(30));
        assert_eq!(
            h.on_request(req("Bearer good")).response().unwrap().status,
            403
        );
        assert_eq!(MockHost::http_requests().len(), 5);
        // Keys never contain the credential.
        assert!(MockHost::kv_value("authz:Bearer good").is_none());
        let sources: Vec<String> = MockHost::metrics()
            .iter()
            .filter_map(|m| {
                m.labels
                    .iter()
                    .find(|(k, _)| k == "source")
                    .map(|l| l.1.clone())
            })
            .collect();
        assert_eq!(
            sources,
            [
                "service", "cache", "cache", "service", "service", "service", "cache", "service"
            ]
        );
    }

    #[test]
    fn no_cache_without_ttl_and_kv_failure_is_a_miss() {
        MockHost::http_respond(URL, allow());
        let mut h = Harness::<ExtAuthz>::new(json!({ "url": URL })).unwrap();
        h.on_request(req("Bearer good"));
        h.on_request(req("Bearer good"));
        assert_eq!(MockHost::http_requests().len(), 2);

        let mut h = harness(json!({}));
        MockHost::kv_fail(Some("redis down"));
        assert!(h.on_request(req("Bearer good")).is_continue());
        assert!(h.on_request(req("Bearer good")).is_continue());
        assert_eq!(MockHost::http_requests().len(), 4);
        assert!(
            MockHost::logs()
                .iter()
                .any(|l| l.message == "ext-authz cache read failed")
        );
    }

    #[test]
    fn fails_closed_unless_configured_open_and_never_caches_failures() {
        MockHost::http_fail(URL, "request failed: connection refused");
        let mut h = harness(json!({}));
        let a = h.on_request(req("Bearer good"));
        let r = a.response().expect("refused");
        assert_eq!(r.status, 503);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        MockHost::http_respond(URL, OutboundResponse::new(500, ""));
        assert_eq!(
            h.on_request(req("Bearer good")).response().unwrap().status,
            503
        );
        MockHost::http_respond(URL, allow());
        assert!(
            h.on_request(req("Bearer good")).is_continue(),
            "failure not cached"
        );

        MockHost::reset();
        MockHost::http_fail(URL, "timed out after 1s");
        let mut h = harness(json!({ "failure_mode_allow": true }));
        let a = h.on_request(req("Bearer good"));
        assert_eq!(a.edits().unwrap().remove_headers, vec!["x-auth-user"]);
        assert_eq!(
            h.context_get("ext_authz.decision").as_deref(),
            Some("failed_open")
        );
        let warn = MockHost::logs().remove(0);
        assert_eq!(warn.field("error"), Some("timed out after 1s"));
        assert_eq!(MockHost::counter_total("ext_authz_decisions_total"), 1);
    }

    #[test]
    fn config_errors() {
        let err = |v: Value| Harness::<ExtAuthz>::new(v).err().unwrap();
        assert!(err(json!({})).contains("missing field `url`"));
        assert!(err(json!({ "url": "authz:9000" })).contains("http://"));
        assert!(err(json!({ "url": "http:///x" })).contains("valid"));
        assert!(err(json!({ "url": URL, "mode": "put" })).contains("unknown variant"));
        assert!(err(json!({ "url": URL, "cache_ttl": "soon" })).contains("cache_ttl"));
        assert!(err(json!({ "url": URL, "timeout": "0s" })).contains("timeout"));
        assert!(err(json!({ "url": URL, "headers": ["host"] })).contains("headers"));
        assert!(
            err(json!({ "url": URL, "headers": ["X-Forwarded-Uri"] }))
                .contains("set by the plugin")
        );
        assert!(
            err(json!({ "url": URL, "upstream_headers": ["a b"] })).contains("upstream_headers")
        );
        assert!(err(json!({ "url": URL, "bogus": true })).contains("unknown field `bogus`"));
    }
}
