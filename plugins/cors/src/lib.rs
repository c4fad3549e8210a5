//! `cors`: Cross-Origin Resource Sharing at the gateway.
//!
//! Preflights (`OPTIONS` with `Access-Control-Request-Method`) from allowed origins are answered
//! locally with 204 and never reach the upstream; preflights from other origins get 403.
//! Actual requests from allowed origins get `Access-Control-Allow-Origin` (and friends) on the
//! response. Origins are exact (`https://app.example.com`), subdomain wildcards
//! (`https://*.example.com`) or `*`. With `credentials = true` the allowed origin is echoed,
//! as browsers require; `*` together with `credentials = true` is refused at `init`, since it
//! would let every website read credentialed answers. Unless the policy is `*` alone, every
//! response carries `Vary: Origin` (allowed origin, other origin or none), so a shared cache
//! never serves one origin's answer to another.

use serde::Deserialize;
use weir_plugin_sdk::prelude::*;

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        .map(String::from)
        .to_vec()
}
fn default_max_age() -> u32 {
    600
}

/// The plugin's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    origins: Vec<String>,
    #[serde(default = "default_methods")]
    methods: Vec<String>,
    /// Allowed request headers; empty = allow what the preflight asks for.
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    expose_headers: Vec<String>,
    #[serde(default)]
    credentials: bool,
    /// Preflight cache lifetime in seconds.
    #[serde(default = "default_max_age")]
    max_age: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginRule {
    Any,
    Exact(String),
    /// `scheme://*.suffix`: `(scheme://, .suffix)`.
    Subdomains(String, String),
}

impl OriginRule {
    fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim().to_ascii_lowercase();
        if t == "*" {
            return Ok(OriginRule::Any);
        }
        let (scheme, rest) = t
            .split_once("://")
            .ok_or_else(|| format!("origins: {text:?} is not scheme://host[:port] or \"*\""))?;
        if scheme.is_empty() || rest.is_empty() || rest.contains('/') {
            return Err(format!(
                "origins: {text:?} is not scheme://host[:port] (no path)"
            ));
        }
        match rest.strip_prefix("*.") {
            Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => Ok(
                OriginRule::Subdomains(format!("{scheme}://"), format!(".{suffix}")),
            ),
            Some(_) => Err(format!("origins: bad wildcard in {text:?}")),
            None if rest.contains('*') => Err(format!(
                "origins: only a leading `*.` wildcard is supported, found {text:?}"
            )),
            None => Ok(OriginRule::Exact(t)),
        }
    }

    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginRule::Any => true,
            OriginRule::Exact(o) => o == origin,
            OriginRule::Subdomains(scheme, suffix) => origin
                .strip_prefix(scheme.as_str())
                .and_then(|host| host.strip_suffix(suffix.as_str()))
                .is_some_and(|sub| !sub.is_empty() && !sub.contains('/')),
        }
    }
}

/// The CORS policy.
pub struct Cors {
    rules: Vec<OriginRule>,
    methods: String,
    headers: Option<String>,
    expose_headers: Option<String>,
    credentials: bool,
    max_age: String,
}

impl Cors {
    /// The `Access-Control-Allow-Origin` value for `origin`, if it is allowed.
    fn allow_origin(&self, origin: &str) -> Option<String> {
        let lc = origin.to_ascii_lowercase();
        let rule = self.rules.iter().find(|r| r.matches(&lc))?;
        Some(if *rule == OriginRule::Any && !self.credentials {
            "*".to_string()
        } else {
            origin.to_string()
        })
    }

    fn preflight(&self, req: &Request, origin: &str) -> Action {
        let Some(allow) = self.allow_origin(origin) else {
            return Response::problem(403, "Forbidden", "origin not allowed by CORS policy").into();
        };
        let mut resp = Response::new(204)
            .with_header("access-control-allow-origin", &allow)
            .with_header("access-control-allow-methods", &self.methods)
            .with_header("access-control-max-age", &self.max_age)
            .with_header(
                "vary",
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            );
        let headers = match &self.headers {
            Some(h) => Some(h.clone()),
            None => req
                .header("access-control-request-headers")
                .map(str::to_string),
        };
        if let Some(h) = headers.filter(|h| !h.is_empty()) {
            resp = resp.with_header("access-control-allow-headers", &h);
        }
        if self.credentials {
            resp = resp.with_header("access-control-allow-credentials", "true");
        }
        resp.into()
    }
}

impl Policy for Cors {
    type Config = Config;

    fn new(cfg: Config) -> Result<Self, String> {
        if cfg.origins.is_empty() {
            return Err("origins: list at least one origin (or \"*\")".into());
        }
        let rules = cfg
            .origins
            .iter()
            .map(|o| OriginRule::parse(o))
            .collect::<Result<Vec<_>, _>>()?;
        if cfg.methods.is_empty() {
            return Err("methods must not be empty".into());
        }
        if cfg.credentials && rules.contains(&OriginRule::Any) {
            return Err(
                "origins: \"*\" with credentials = true would let every website read \
                        credentialed responses; list the allowed origins"
                    .into(),
            );
        }
        let join = |v: &[String]| (!v.is_empty()).then(|| v.join(", "));
        Ok(Self {
            rules,
            methods: cfg
                .methods
                .iter()
                .map(|m| m.to_ascii_uppercase())
                .collect::<Vec<_>>()
                .join(", "),
            headers: join(&cfg.headers),
            expose_headers: join(&cfg.expose_headers),
            credentials: cfg.credentials,
            max_age: cfg.max_age.to_string(),
        })
    }

    fn info(&self) -> PluginInfo {
        PluginInfo::default()
            .phases(Phases::REQUEST)
            .reads_headers(&[
                "origin",
                "access-control-request-method",
                "access-control-request-headers",
            ])
    }

    fn on_request(&self, req: &Request) -> Action {
        // The answer depends on `Origin` unless every origin gets `*`.
        let varies = self.rules.iter().any(|r| *r != OriginRule::Any);
        let vary_only = || {
            if varies {
                RequestEdits::default()
                    .append_response_header("vary", "Origin")
                    .into()
            } else {
                Action::next()
            }
        };
        let Some(origin) = req.header("origin") else {
            return vary_only();
        };
        if req.method.eq_ignore_ascii_case("OPTIONS")
            && req.header("access-control-request-method").is_some()
        {
            return self.preflight(req, origin);
        }
        let Some(allow) = self.allow_origin(origin) else {
            return vary_only();
        };
        // Response headers decided now: no `on_response` call, and a later plugin's local answer
        // (a 401 from an auth plugin) carries them too, so the browser can read it.
        let mut edits =
            RequestEdits::default().set_response_header("access-control-allow-origin", &allow);
        if allow != "*" {
            edits = edits.append_response_header("vary", "Origin");
        }
        if self.credentials {
            edits = edits.set_response_header("access-control-allow-credentials", "true");
        }
        if let Some(h) = &self.expose_headers {
            edits = edits.set_response_header("access-control-expose-headers", h);
        }
        edits.into()
    }
}

export_policy!(Cors);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::Harness;

    fn preflight(origin: &str) -> Request {
        Request::options("/api")
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "content-type, x-token")
            .build()
    }

    #[test]
    fn origin_rules() {
        let r = OriginRule::parse("https://*.Example.com").unwrap();
        assert!(r.matches("https://a.example.com"));
        assert!(r.matches("https://a.b.example.com"));
        assert!(!r.matches("https://example.com"));
        assert!(!r.matches("http://a.example.com"));
        assert!(!r.matches("https://evil.com/.example.com"));
        assert!(!r.matches("https://a.example.com.evil.com"));
        assert!(OriginRule::parse("example.com").is_err());
        assert!(OriginRule::parse("https://a.*.com").is_err());
        assert!(OriginRule::parse("https://a.com/path").is_err());
    }

    #[test]
    fn preflight_from_allowed_origin_is_answered_locally() {
        let mut h = Harness::<Cors>::new(json!({
            "origins": ["https://app.example.com"], "methods": ["get", "put"], "max_age": 60
        }))
        .unwrap();
        let a = h.on_request(preflight("https://app.example.com"));
        let r = a.response().expect("answered locally");
        assert_eq!(r.status, 204);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(r.header("access-control-allow-methods"), Some("GET, PUT"));
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("content-type, x-token")
        );
        assert_eq!(r.header("access-control-max-age"), Some("60"));
        assert!(r.header("vary").unwrap().contains("Origin"));
        assert!(r.header("access-control-allow-credentials").is_none());

        let a = h.on_request(preflight("https://evil.example"));
        assert_eq!(a.response().unwrap().status, 403);
        // Plain OPTIONS (no request-method header) is not a preflight.
        assert!(
            h.on_request(Request::options("/").header("origin", "https://app.example.com"))
                .is_continue()
        );
    }

    #[test]
    fn simple_requests_get_headers_on_response() {
        let mut h = Harness::<Cors>::new(json!({
            "origins": ["https://*.example.com"], "credentials": true,
            "expose_headers": ["x-request-id"], "headers": ["content-type"]
        }))
        .unwrap();
        let a = h.on_request(Request::get("/").header("origin", "https://a.example.com"));
        let e = a.edits().expect("proxied");
        assert_eq!(
            e.response_header_value("access-control-allow-origin"),
            Some("https://a.example.com")
        );
        assert_eq!(
            e.response_header_value("access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(
            e.response_header_value("access-control-expose-headers"),
            Some("x-request-id")
        );
        assert_eq!(
            e.append_response_headers,
            vec![("vary".to_string(), "Origin".to_string())]
        );
        // The request itself goes on untouched, and no `on_response` call is needed.
        assert!(e.set_headers.is_empty() && e.append_headers.is_empty());
        assert!(!h.policy().info().phases.contains(Phases::RESPONSE));

        let a = h.on_request(preflight("https://b.example.com"));
        assert_eq!(
            a.response().unwrap().header("access-control-allow-headers"),
            Some("content-type")
        );

        // Other origins and requests without one get no CORS headers, but `Vary: Origin`.
        for req in [
            Request::get("/").header("origin", "https://other.com"),
            Request::get("/"),
        ] {
            let a = h.on_request(req);
            let e = a.edits().unwrap();
            assert!(e.set_response_headers.is_empty());
            assert_eq!(
                e.append_response_headers,
                vec![("vary".to_string(), "Origin".to_string())]
            );
        }
    }

    #[test]
    fn wildcard_origin() {
        let mut h = Harness::<Cors>::new(json!({ "origins": ["*"] })).unwrap();
        let a = h.on_request(Request::get("/").header("origin", "https://x.io"));
        let e = a.edits().unwrap();
        assert_eq!(
            e.response_header_value("access-control-allow-origin"),
            Some("*")
        );
        assert!(e.append_response_headers.is_empty());
        // `*` alone: nothing varies, requests without an origin are untouched.
        assert!(h.on_request(Request::get("/")).edits().unwrap().is_empty());
        // With credentials, `*` would let every site read credentialed answers: refused.
        let err = Harness::<Cors>::new(json!({ "origins": ["*"], "credentials": true }))
            .err()
            .unwrap();
        assert!(err.contains("credentials"), "{err}");
    }

    #[test]
    fn config_errors() {
        assert!(Harness::<Cors>::new(json!({ "origins": [] })).is_err());
        assert!(
            Harness::<Cors>::new(json!({}))
                .err()
                .unwrap()
                .contains("origins")
        );
        assert!(Harness::<Cors>::new(json!({ "origins": ["*"], "methods": [] })).is_err());
    }
}
