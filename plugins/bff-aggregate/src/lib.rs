//! `bff-aggregate`: a backend-for-frontend endpoint composed by a plugin.
//!
//! One client call becomes one outbound request per configured backend, all sent at once with
//! `http::send_all` (the gateway runs them concurrently, so the latency is that of the slowest
//! backend, not the sum). Each backend's JSON answer goes under its name in a single JSON
//! document, and the plugin answers the client itself (`Action::Respond`), so the route needs no
//! upstream.
//!
//! Backend URLs are templates: `{user}` is replaced by the user the request is for, taken from a
//! header, the last path segment, a query parameter or a context entry set by an earlier plugin
//! (e.g. `consumer` from an auth plugin). The value is percent-encoded, so a client cannot
//! steer the call to another path.
//!
//! A required backend that fails (transport error, refused destination, timeout, non-2xx, or a
//! body that is not JSON) fails the whole call with 502 `application/problem+json` naming it;
//! an optional one is left out and listed in `x-weir-partial`, so the client knows the document
//! is incomplete.

use std::time::Duration;

use serde::Deserialize;
use weir_plugin_sdk::http::{OutboundRequest, OutboundResponse};
use weir_plugin_sdk::prelude::*;

/// The gateway's `send-all` limit; more would fail every call at run time, so it is a config error.
const MAX_BACKENDS: usize = 32;
const PLACEHOLDER: &str = "{user}";

fn default_true() -> bool {
    true
}

/// A duration written as `"500ms"`, `"2s"`, `"1m"` or a number of seconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DurationText {
    Seconds(u64),
    Text(String),
}

fn parse_duration(d: &DurationText) -> Result<Duration, String> {
    let out = match d {
        DurationText::Seconds(s) => Duration::from_secs(*s),
        DurationText::Text(t) => {
            let t = t.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (num, unit) = t.split_at(split);
            let n: u64 = num
                .parse()
                .map_err(|_| format!("invalid duration {t:?}: expected e.g. \"500ms\", \"2s\""))?;
            let unit_ms: u64 = match unit.trim() {
                "ms" => 1,
                "s" | "" => 1_000,
                "m" => 60_000,
                other => {
                    return Err(format!(
                        "invalid duration unit {other:?} in {t:?} (ms, s, m)"
                    ));
                }
            };
            Duration::from_millis(n.saturating_mul(unit_ms))
        }
    };
    if out.is_zero() {
        return Err("duration must be longer than zero".into());
    }
    Ok(out)
}

/// One backend of the `backends` list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendConfig {
    /// Key of this backend's answer in the merged document.
    name: String,
    /// Absolute URL; `{user}` is replaced by the percent-encoded user.
    url: String,
    /// A failing required backend fails the call (502); an optional one is left out.
    #[serde(default = "default_true")]
    required: bool,
    /// Per-call timeout (the route's `http.timeout` caps it).
    timeout: Option<DurationText>,
}

/// The plugin's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    backends: Vec<BackendConfig>,
    /// `"header:NAME"`, `"path"` (last segment), `"query:NAME"` or `"context:KEY"`.
    user_from: Option<String>,
    /// Request headers copied to every backend call (e.g. `authorization`).
    #[serde(default)]
    forward_headers: Vec<String>,
}

/// Where the user a dashboard is for comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UserSource {
    Header(String),
    LastPathSegment,
    Query(String),
    Context(String),
}

impl UserSource {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "path" {
            return Ok(UserSource::LastPathSegment);
        }
        let err = || {
            format!(
                "user_from: expected \"header:NAME\", \"path\", \"query:NAME\" or \"context:KEY\", found {s:?}"
            )
        };
        let (kind, arg) = s.split_once(':').ok_or_else(err)?;
        let arg = arg.trim();
        if arg.is_empty() {
            return Err(err());
        }
        match kind.trim() {
            "header" if valid_header_name(arg) => Ok(UserSource::Header(arg.to_ascii_lowercase())),
            "header" => Err(format!("user_from: invalid header name {arg:?}")),
            "query" => Ok(UserSource::Query(arg.to_string())),
            "context" => Ok(UserSource::Context(arg.to_string())),
            _ => Err(err()),
        }
    }

    fn describe(&self) -> String {
        match self {
            UserSource::Header(h) => format!("header `{h}`"),
            UserSource::LastPathSegment => "the last path segment".into(),
            UserSource::Query(q) => format!("query parameter `{q}`"),
            UserSource::Context(k) => format!("context entry `{k}`"),
        }
    }

    /// The raw (decoded) user, if the request carries one.
    fn extract(&self, req: &Request) -> Option<String> {
        let v = match self {
            UserSource::Header(h) => req.header(h).map(str::to_string),
            UserSource::LastPathSegment => req
                .path
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .map(percent_decode),
            UserSource::Query(q) => req.query_param(q),
            UserSource::Context(k) => context::get(k),
        }?;
        let v = v.trim().to_string();
        (!v.is_empty()).then_some(v)
    }
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes (a path segment: `+` stays `+`).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex_val),
                b.get(i + 2).copied().and_then(hex_val),
            )
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes everything but RFC 3986 unreserved characters, so the value stays one path segment
/// (or one query value) whatever the client sent.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A validated backend.
#[derive(Debug)]
struct Backend {
    name: String,
    url: String,
    required: bool,
    timeout_ms: Option<u32>,
}

/// The aggregation policy.
pub struct BffAggregate {
    backends: Vec<Backend>,
    user_from: Option<UserSource>,
    forward_headers: Vec<String>,
}

fn check_url(name: &str, url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("backend `{name}`: url must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') || rest.starts_with(PLACEHOLDER) {
        return Err(format!("backend `{name}`: url has no host"));
    }
    let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
    if rest[..host_end].contains(['{', '}', '@']) {
        return Err(format!(
            "backend `{name}`: the host part of the url must be literal (no placeholders, no user info)"
        ));
    }
    let without = url.replace(PLACEHOLDER, "");
    if without.contains(['{', '}']) {
        return Err(format!(
            "backend `{name}`: unknown placeholder in url (only {PLACEHOLDER} is supported)"
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("backend `{name}`: url contains whitespace"));
    }
    Ok(())
}

/// Why one backend's answer is not usable.
enum Failure {
    /// Transport error, refused destination, timeout.
    Call(String),
    Status(u16),
    Body(String),
}

impl Failure {
    fn outcome(&self) -> &'static str {
        match self {
            Failure::Call(_) => "error",
            Failure::Status(_) => "bad_status",
            Failure::Body(_) => "bad_body",
        }
    }

    fn describe(&self) -> String {
        match self {
            Failure::Call(e) => e.clone(),
            Failure::Status(s) => format!("answered {s}"),
            Failure::Body(e) => e.clone(),
        }
    }
}

fn evaluate(r: Result<OutboundResponse, String>) -> Result<Value, Failure> {
    let resp = r.map_err(Failure::Call)?;
    if !(200..300).contains(&resp.status) {
        return Err(Failure::Status(resp.status));
    }
    if resp.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&resp.body).map_err(|_| Failure::Body("response is not JSON".into()))
}

impl BffAggregate {
    fn requests(&self, req: &Request, user: Option<&str>) -> Vec<OutboundRequest> {
        let encoded = user.map(percent_encode).unwrap_or_default();
        self.backends
            .iter()
            .map(|b| {
                let url = b.url.replace(PLACEHOLDER, &encoded);
                let mut out = OutboundRequest::get(&url)
                    .header("accept", "application/json")
                    .header("x-request-id", &req.request_id);
                for h in &self.forward_headers {
                    for v in req.header_all(h) {
                        out = out.header(h, v);
                    }
                }
                out.timeout_ms = b.timeout_ms;
                out
            })
            .collect()
    }
}

impl Policy for BffAggregate {
    type Config = Config;

    fn new(cfg: Config) -> Result<Self, String> {
        if cfg.backends.is_empty() {
            return Err("backends: at least one backend is needed".into());
        }
        if cfg.backends.len() > MAX_BACKENDS {
            return Err(format!(
                "backends: at most {MAX_BACKENDS} backends, found {}",
                cfg.backends.len()
            ));
        }
        let mut backends: Vec<Backend> = Vec::with_capacity(cfg.backends.len());
        for b in cfg.backends {
            if b.name.trim().is_empty() {
                return Err("backends: every backend needs a non-empty name".into());
            }
            if backends.iter().any(|o| o.name == b.name) {
                return Err(format!("backends: duplicate name `{}`", b.name));
            }
            check_url(&b.name, &b.url)?;
            let timeout_ms = match &b.timeout {
                None => None,
                Some(t) => {
                    let d = parse_duration(t).map_err(|e| format!("backend `{}`: {e}", b.name))?;
                    Some(u32::try_from(d.as_millis()).unwrap_or(u32::MAX))
                }
            };
            backends.push(Backend {
                name: b.name,
                url: b.url,
                required: b.required,
                timeout_ms,
            });
        }
        let user_from = cfg
            .user_from
            .as_deref()
            .map(UserSource::parse)
            .transpose()?;
        if user_from.is_none()
            && let Some(b) = backends.iter().find(|b| b.url.contains(PLACEHOLDER))
        {
            return Err(format!(
                "backend `{}` uses {PLACEHOLDER} but `user_from` is not set",
                b.name
            ));
        }
        let mut forward_headers = Vec::new();
        for h in cfg.forward_headers {
            if !valid_header_name(&h) {
                return Err(format!("forward_headers: invalid header name {h:?}"));
            }
            let h = h.to_ascii_lowercase();
            if matches!(
                h.as_str(),
                "host" | "connection" | "transfer-encoding" | "content-length" | "x-request-id"
            ) {
                return Err(format!(
                    "forward_headers: `{h}` is set by the plugin or the gateway"
                ));
            }
            forward_headers.push(h);
        }
        Ok(Self {
            backends,
            user_from,
            forward_headers,
        })
    }

    fn info(&self) -> PluginInfo {
        PluginInfo::default().phases(Phases::REQUEST)
    }

    fn on_request(&self, req: &Request) -> Action {
        let user = match &self.user_from {
            None => None,
            Some(src) => match src.extract(req) {
                Some(u) if u == "." || u == ".." => {
                    return Response::problem(400, "Bad Request", "invalid user").into();
                }
                Some(u) => Some(u),
                // Without an identity from an earlier plugin the caller is not authenticated.
                None if matches!(src, UserSource::Context(_)) => {
                    return Response::problem(
                        401,
                        "Unauthorized",
                        &format!("no user: {} is not set", src.describe()),
                    )
                    .into();
                }
                None => {
                    return Response::problem(
                        400,
                        "Bad Request",
                        &format!("no user: {} is missing", src.describe()),
                    )
                    .into();
                }
            },
        };

        let results = http::send_all(&self.requests(req, user.as_deref()));

        let mut doc = serde_json::Map::new();
        let mut partial: Vec<&str> = Vec::new();
        let mut failed: Vec<(&str, String)> = Vec::new();
        for (b, r) in self.backends.iter().zip(results) {
            match evaluate(r) {
                Ok(v) => {
                    metrics::counter_add(
                        "bff_aggregate_backend_total",
                        &[("backend", &b.name), ("outcome", "ok")],
                        1,
                    );
                    doc.insert(b.name.clone(), v);
                }
                Err(f) => {
                    metrics::counter_add(
                        "bff_aggregate_backend_total",
                        &[("backend", &b.name), ("outcome", f.outcome())],
                        1,
                    );
                    let why = f.describe();
                    log::warn(
                        "aggregate backend failed",
                        &[
                            ("backend", &b.name),
                            ("required", if b.required { "true" } else { "false" }),
                            ("error", &why),
                        ],
                    );
                    if b.required {
                        failed.push((&b.name, why));
                    } else {
                        partial.push(&b.name);
                    }
                }
            }
        }

        if !failed.is_empty() {
            let detail = failed
                .iter()
                .map(|(n, why)| format!("backend `{n}` failed: {why}"))
                .collect::<Vec<_>>()
                .join("; ");
            let names: Vec<&str> = failed.iter().map(|(n, _)| *n).collect();
            let problem = json!({
                "type": "about:blank",
                "title": "Bad Gateway",
                "status": 502,
                "detail": detail,
                "failed": names,
            });
            return Response::json(502, &problem)
                .with_header("content-type", "application/problem+json")
                .into();
        }

        let mut res = Response::json(200, &Value::Object(doc))
            // The document is about one user: no shared cache may keep it.
            .with_header("cache-control", "private, no-store");
        if !partial.is_empty() {
            res = res.with_header("x-weir-partial", &partial.join(","));
        }
        res.into()
    }
}

export_policy!(BffAggregate);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::{Harness, MockHost};

    const PROFILE: &str = "http://profile.svc/users/";
    const ORDERS: &str = "http://orders.svc/orders?user=";
    const RECS: &str = "http://recs.svc/recs/";

    fn harness(user_from: &str) -> Harness<BffAggregate> {
        Harness::new(json!({
            "user_from": user_from,
            "forward_headers": ["Authorization"],
            "backends": [
                { "name": "profile", "url": format!("{PROFILE}{{user}}") },
                { "name": "orders", "url": format!("{ORDERS}{{user}}"), "timeout": "800ms" },
                { "name": "recommendations", "url": format!("{RECS}{{user}}"), "required": false },
            ]
        }))
        .unwrap()
    }

    fn ok(body: &str) -> OutboundResponse {
        OutboundResponse::new(200, body)
    }

    fn program_all(user: &str) {
        MockHost::http_respond(
            &format!("{PROFILE}{user}"),
            ok(r#"{"id":"u1","name":"Ada"}"#),
        );
        MockHost::http_respond(&format!("{ORDERS}{user}"), ok(r#"[{"id":1},{"id":2}]"#));
        MockHost::http_respond(&format!("{RECS}{user}"), ok(r#"["book"]"#));
    }

    #[test]
    fn merges_every_backend_under_its_name() {
        program_all("u1");
        let mut h = harness("header:x-user");
        let a = h.on_request(
            Request::get("/dashboard")
                .header("x-user", "u1")
                .header("authorization", "Bearer t")
                .request_id("rid-1"),
        );
        let r = a.response().expect("answered locally");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("x-weir-partial"), None);
        let v: Value = r.json_body().unwrap();
        assert_eq!(
            v,
            json!({
                "profile": { "id": "u1", "name": "Ada" },
                "orders": [{ "id": 1 }, { "id": 2 }],
                "recommendations": ["book"],
            })
        );
        // One batch, in config order, with forwarded headers and per-backend timeouts.
        let sent = MockHost::http_requests();
        assert_eq!(sent.len(), 3);
        assert_eq!(sent[0].url, format!("{PROFILE}u1"));
        assert_eq!(sent[1].url, format!("{ORDERS}u1"));
        assert_eq!(sent[1].timeout_ms, Some(800));
        assert_eq!(sent[0].timeout_ms, None);
        for s in &sent {
            assert_eq!(s.method, "GET");
            assert!(
                s.headers
                    .contains(&("authorization".into(), "Bearer t".into()))
            );
            assert!(s.headers.contains(&("x-request-id".into(), "rid-1".into())));
        }
        assert_eq!(MockHost::counter_total("bff_aggregate_backend_total"), 3);
    }

    #[test]
    fn optional_failure_is_left_out_and_listed() {
        program_all("u1");
        MockHost::http_fail(&format!("{RECS}u1"), "timed out after 2s");
        let mut h = harness("header:x-user");
        let a = h.on_request(Request::get("/d").header("x-user", "u1"));
        let r = a.response().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-weir-partial"), Some("recommendations"));
        let v: Value = r.json_body().unwrap();
        assert!(v.get("recommendations").is_none());
        assert_eq!(v["orders"][1]["id"], 2);
        let warn = MockHost::logs()
            .into_iter()
            .find(|l| l.message == "aggregate backend failed")
            .unwrap();
        assert_eq!(warn.field("backend"), Some("recommendations"));
        assert_eq!(warn.field("error"), Some("timed out after 2s"));
    }

    #[test]
    fn required_failures_give_502_naming_them() {
        program_all("u1");
        MockHost::http_respond(&format!("{ORDERS}u1"), OutboundResponse::new(500, "boom"));
        MockHost::http_respond(&format!("{PROFILE}u1"), ok("<html>"));
        MockHost::http_fail(&format!("{RECS}u1"), "connection refused");
        let mut h = harness("header:x-user");
        let a = h.on_request(Request::get("/d").header("x-user", "u1"));
        let r = a.response().unwrap();
        assert_eq!(r.status, 502);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let v: Value = r.json_body().unwrap();
        assert_eq!(v["failed"], json!(["profile", "orders"]));
        let detail = v["detail"].as_str().unwrap();
        assert!(
            detail.contains("backend `orders` failed: answered 500"),
            "{detail}"
        );
        assert!(
            detail.contains("backend `profile` failed: response is not JSON"),
            "{detail}"
        );
        assert!(
            !detail.contains("recommendations"),
            "optional ones are not blamed"
        );
        let outcomes: Vec<String> = MockHost::metrics()
            .iter()
            .filter_map(|m| {
                m.labels
                    .iter()
                    .find(|(k, _)| k == "outcome")
                    .map(|l| l.1.clone())
            })
            .collect();
        assert_eq!(outcomes, ["bad_body", "bad_status", "error"]);
    }

    #[test]
    fn refused_destination_is_named_in_the_problem() {
        program_all("u1");
        let refused =
            format!("destination `{PROFILE}u1` is not allowed by this plugin's http_allow list");
        MockHost::http_fail(&format!("{PROFILE}u1"), &refused);
        let mut h = harness("header:x-user");
        let a = h.on_request(Request::get("/d").header("x-user", "u1"));
        let r = a.response().unwrap();
        assert_eq!(r.status, 502);
        let v: Value = r.json_body().unwrap();
        assert!(v["detail"].as_str().unwrap().contains(&refused));
    }

    #[test]
    fn user_sources_and_encoding() {
        program_all("a%2Fb%20c");
        let mut h = harness("path");
        let a = h.on_request(Request::get("/dashboard/a%2Fb%20c/"));
        assert_eq!(
            a.response().unwrap().status,
            200,
            "{:?}",
            MockHost::http_requests()
        );

        // A header value cannot add path segments or a query to the backend URL.
        program_all("..%2Fadmin%3Fx%3D1");
        let mut h = harness("header:x-user");
        let a = h.on_request(Request::get("/d").header("x-user", "../admin?x=1"));
        assert_eq!(a.response().unwrap().status, 200);
        assert_eq!(
            MockHost::http_requests().last().unwrap().url,
            format!("{RECS}..%2Fadmin%3Fx%3D1")
        );

        program_all("bob");
        let mut h = harness("query:uid");
        let a = h.on_request(Request::get("/d").query("uid=bob"));
        assert_eq!(a.response().unwrap().status, 200);

        let mut h = harness("context:consumer");
        let a = h.on_request_with_context(Request::get("/d"), &[("consumer", "bob")]);
        assert_eq!(a.response().unwrap().status, 200);
    }

    #[test]
    fn missing_or_bad_user_is_rejected_without_calls() {
        let mut h = harness("header:x-user");
        let r = h.on_request(Request::get("/d"));
        assert_eq!(r.response().unwrap().status, 400);
        let v: Value = r.response().unwrap().json_body().unwrap();
        assert!(v["detail"].as_str().unwrap().contains("x-user"));
        let r = h.on_request(Request::get("/d").header("x-user", "  "));
        assert_eq!(r.response().unwrap().status, 400);
        let r = h.on_request(Request::get("/d").header("x-user", ".."));
        assert_eq!(r.response().unwrap().status, 400);
        let mut h = harness("context:consumer");
        assert_eq!(
            h.on_request(Request::get("/d")).response().unwrap().status,
            401
        );
        let mut h = harness("path");
        assert_eq!(
            h.on_request(Request::get("/")).response().unwrap().status,
            400
        );
        assert!(MockHost::http_requests().is_empty());
    }

    #[test]
    fn empty_2xx_body_is_null_and_no_user_needed_without_placeholder() {
        MockHost::http_respond("http://a.svc/x", OutboundResponse::new(204, ""));
        let mut h = Harness::<BffAggregate>::new(json!({
            "backends": [{ "name": "a", "url": "http://a.svc/x" }]
        }))
        .unwrap();
        let a = h.on_request(Request::get("/d"));
        let v: Value = a.response().unwrap().json_body().unwrap();
        assert_eq!(v, json!({ "a": null }));
    }

    #[test]
    fn config_errors() {
        let err = |v: Value| Harness::<BffAggregate>::new(v).err().unwrap();
        let b =
            |url: &str| json!({ "user_from": "path", "backends": [{ "name": "a", "url": url }] });
        assert!(err(json!({ "backends": [] })).contains("at least one"));
        assert!(err(b("ftp://x/{user}")).contains("http://"));
        assert!(err(b("http://{user}.svc/")).contains("host"));
        assert!(err(b("http://x/{id}")).contains("placeholder"));
        assert!(err(b("http://x/ a")).contains("whitespace"));
        assert!(
            err(json!({ "backends": [{ "name": "a", "url": "http://x/{user}" }] }))
                .contains("user_from")
        );
        assert!(
            err(json!({ "user_from": "cookie:x", "backends": [{ "name": "a", "url": "http://x/" }] }))
                .contains("user_from")
        );
        assert!(
            err(json!({ "backends": [
                { "name": "a", "url": "http://x/" }, { "name": "a", "url": "http://y/" }
            ] }))
            .contains("duplicate")
        );
        assert!(
            err(json!({ "backends": [{ "name": "a", "url": "http://x/", "timeout": "2 weeks" }] }))
                .contains("backend `a`")
        );
        assert!(
            err(json!({ "forward_headers": ["host"], "backends": [{ "name": "a", "url": "http://x/" }] }))
                .contains("host")
        );
        let many: Vec<Value> = (0..33)
            .map(|i| json!({ "name": format!("b{i}"), "url": "http://x/" }))
            .collect();
        assert!(err(json!({ "backends": many })).contains("at most 32"));
        assert!(
            err(json!({ "backends": [{ "name": "a", "url": "http://x/", "bogus": 1 }] }))
                .contains("unknown field `bogus`")
        );
    }

    #[test]
    fn percent_coding() {
        assert_eq!(percent_decode("a%2fb%20%zz%"), "a/b %zz%");
        assert_eq!(percent_encode("ä b/?#%"), "%C3%A4%20b%2F%3F%23%25");
        assert_eq!(percent_encode("Az09-._~"), "Az09-._~");
    }
}
