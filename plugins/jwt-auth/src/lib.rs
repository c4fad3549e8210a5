//! `jwt-auth`: authenticate requests with a bearer JWT.
//!
//! The token comes from `Authorization: Bearer …` or, if configured, a cookie. The gateway
//! verifies it (`jwt::verify`) against a key set from its own config, with pinned algorithms,
//! issuer, audience, required claims and leeway; key material never enters the plugin.
//!
//! On success the claims go to the request context (`consumer`, `jwt.sub`, `jwt.scope` and
//! `jwt.<claim>` for every scalar claim) for later plugins, and configured claims go to upstream
//! headers (`claims_to_headers`). A configured header whose claim is absent is removed, so a
//! client can never supply it. Missing or invalid tokens get 401, missing scopes 403, both as
//! `application/problem+json` with an RFC 6750 `WWW-Authenticate` challenge.

use std::collections::BTreeMap;

use serde::Deserialize;
use weir_plugin_sdk::jwt::{Claims, VerifyError, VerifyOptions};
use weir_plugin_sdk::prelude::*;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl Default for OneOrMany {
    fn default() -> Self {
        OneOrMany::Many(Vec::new())
    }
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Seconds as a number or as `"30s"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Seconds {
    Number(u32),
    Text(String),
}

impl Seconds {
    fn get(&self) -> Result<u32, String> {
        match self {
            Seconds::Number(n) => Ok(*n),
            Seconds::Text(t) => {
                t.trim().trim_end_matches('s').parse().map_err(|_| {
                    format!("leeway: expected seconds, e.g. 30 or \"30s\", found {t:?}")
                })
            }
        }
    }
}

fn default_leeway() -> Seconds {
    Seconds::Number(30)
}
fn default_true() -> bool {
    true
}
fn default_realm() -> String {
    "weir".into()
}
fn default_consumer_claim() -> String {
    "sub".into()
}

/// The plugin's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[key_sets.NAME]` in the gateway config.
    key_set: String,
    /// Pinned algorithms; empty = those of the key set's keys.
    #[serde(default)]
    algorithms: Vec<String>,
    issuer: Option<String>,
    /// One audience or a list; the token must name one of them.
    #[serde(default)]
    audience: OneOrMany,
    #[serde(default)]
    required_claims: Vec<String>,
    #[serde(default = "default_leeway")]
    leeway: Seconds,
    /// Also look for the token in this cookie when there is no bearer header.
    cookie: Option<String>,
    /// Keep the `Authorization` header on the upstream request.
    #[serde(default = "default_true")]
    forward_token: bool,
    /// Claim name → upstream header name.
    #[serde(default)]
    claims_to_headers: BTreeMap<String, String>,
    /// Every one of these must be in the token's `scope`/`scp`.
    #[serde(default)]
    required_scopes: Vec<String>,
    #[serde(default = "default_realm")]
    realm: String,
    /// Claim whose value becomes the `consumer`.
    #[serde(default = "default_consumer_claim")]
    consumer_claim: String,
    /// Claim whose values become `consumer.groups` (for `acl`'s group rules).
    #[serde(default = "default_groups_claim")]
    groups_claim: String,
}

fn default_groups_claim() -> String {
    "groups".into()
}

/// The JWT authentication policy.
pub struct JwtAuth {
    options: VerifyOptions,
    cookie: Option<String>,
    forward_token: bool,
    claims_to_headers: Vec<(String, String)>,
    required_scopes: Vec<String>,
    realm: String,
    consumer_claim: String,
    groups_claim: String,
}

impl JwtAuth {
    fn challenge(&self, error: &str) -> String {
        format!("Bearer realm=\"{}\", error=\"{error}\"", self.realm)
    }

    fn unauthorized(&self, detail: &str) -> Action {
        metrics::counter_add("jwt_auth_rejected_total", &[("status", "401")], 1);
        Response::problem(401, "Unauthorized", detail)
            .with_header("www-authenticate", &self.challenge("invalid_token"))
            .into()
    }

    fn token<'a>(&self, req: &'a Request) -> Option<(&'a str, bool)> {
        if let Some(t) = req.bearer_token() {
            return Some((t, true));
        }
        let name = self.cookie.as_deref()?;
        req.cookie(name)
            .filter(|t| !t.is_empty())
            .map(|t| (t, false))
    }
}

/// Publishes the claims for later plugins of the chain.
/// The groups in claim `name`: an array of strings, or one string of names separated by
/// spaces or commas; joined with commas as `consumer.groups` is written by every auth plugin.
fn groups(claims: &Claims, name: &str) -> Option<String> {
    let list: Vec<&str> = match claims.get(name)? {
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        Value::String(s) => s.split(|c: char| c == ',' || c.is_whitespace()).collect(),
        _ => return None,
    };
    let list: Vec<&str> = list
        .into_iter()
        .map(str::trim)
        .filter(|g| !g.is_empty() && !g.contains(','))
        .collect();
    Some(list.join(","))
}

fn claims_to_context(claims: &Claims, scopes: &[String], consumer_claim: &str, groups_claim: &str) {
    let mut key = String::from("jwt.");
    for (name, value) in &claims.0 {
        let scalar = matches!(
            value,
            Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Array(_)
        );
        if let (true, Some(text)) = (scalar, claims.display(name)) {
            key.truncate("jwt.".len());
            key.push_str(name);
            context::set(&key, &text);
        }
    }
    if !scopes.is_empty() {
        context::set("jwt.scope", &scopes.join(" "));
    }
    if let Some(consumer) = claims.display(consumer_claim) {
        context::set("consumer", &consumer);
    }
    if let Some(groups) = groups(claims, groups_claim) {
        context::set("consumer.groups", &groups);
    }
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Policy for JwtAuth {
    type Config = Config;

    fn new(cfg: Config) -> Result<Self, String> {
        if cfg.key_set.trim().is_empty() {
            return Err("key_set must name a [key_sets.NAME] table".into());
        }
        if jwt::key_set_missing(&cfg.key_set) {
            return Err(format!(
                "key_set: the gateway config has no [key_sets.{}]",
                cfg.key_set
            ));
        }
        let leeway_s = cfg.leeway.get()?;
        let mut claims_to_headers = Vec::new();
        for (claim, header) in cfg.claims_to_headers {
            if !valid_header_name(&header) {
                return Err(format!(
                    "claims_to_headers.{claim}: invalid header name {header:?}"
                ));
            }
            claims_to_headers.push((claim, header.to_ascii_lowercase()));
        }
        if cfg.realm.contains('"') || cfg.realm.contains('\\') {
            return Err("realm must not contain quotes or backslashes".into());
        }
        Ok(Self {
            options: VerifyOptions {
                key_set: cfg.key_set,
                algorithms: cfg.algorithms,
                issuer: cfg.issuer,
                audience: cfg.audience.into_vec(),
                required_claims: cfg.required_claims,
                leeway_s,
            },
            cookie: cfg.cookie,
            forward_token: cfg.forward_token,
            claims_to_headers,
            required_scopes: cfg.required_scopes,
            realm: cfg.realm,
            consumer_claim: cfg.consumer_claim,
            groups_claim: cfg.groups_claim,
        })
    }

    fn info(&self) -> PluginInfo {
        let reads: &[&str] = match self.cookie {
            Some(_) => &["authorization", "cookie"],
            None => &["authorization"],
        };
        PluginInfo::default()
            .phases(Phases::REQUEST)
            .reads_headers(reads)
    }

    fn on_request(&self, req: &Request) -> Action {
        let Some((token, from_header)) = self.token(req) else {
            return self.unauthorized("missing bearer token");
        };
        let claims = match jwt::verify(token, &self.options) {
            Ok(c) => c,
            Err(e @ VerifyError::KeySetUnavailable(_)) => {
                // Our fault, not the client's: a 401 would make clients drop good tokens.
                log::error("jwt key set unavailable", &[("error", &e.to_string())]);
                return Response::problem(
                    503,
                    "Service Unavailable",
                    "cannot verify tokens right now",
                )
                .into();
            }
            Err(e) => {
                log::debug("jwt rejected", &[("reason", &e.to_string())]);
                return self.unauthorized(&e.to_string());
            }
        };
        let scopes = claims.scopes();
        let missing: Vec<&str> = self
            .required_scopes
            .iter()
            .filter(|s| !scopes.contains(s))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            metrics::counter_add("jwt_auth_rejected_total", &[("status", "403")], 1);
            return Response::problem(
                403,
                "Forbidden",
                &format!("token lacks required scope(s): {}", missing.join(" ")),
            )
            .with_header("www-authenticate", &self.challenge("insufficient_scope"))
            .into();
        }

        claims_to_context(&claims, &scopes, &self.consumer_claim, &self.groups_claim);
        let mut edits = RequestEdits::default();
        for (claim, header) in &self.claims_to_headers {
            match claims.display(claim) {
                Some(v) if !v.chars().any(|c| c.is_control()) => {
                    edits = edits.set_header(header, &v)
                }
                _ => edits = edits.remove_header(header),
            }
        }
        if from_header && !self.forward_token {
            edits = edits.remove_header("authorization");
        }
        Action::Continue(edits)
    }
}

export_policy!(JwtAuth);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::{Harness, MockHost};

    const CLAIMS: &str = r#"{"sub":"alice","scope":"read write","email":"a@x.io","groups":["g1","g2"],"exp":9999999999,"nested":{"a":1}}"#;

    fn harness(extra: Value) -> Harness<JwtAuth> {
        let mut cfg =
            json!({ "key_set": "main", "algorithms": ["RS256"], "issuer": "https://issuer" });
        if let (Value::Object(base), Value::Object(more)) = (&mut cfg, extra) {
            base.extend(more);
        }
        Harness::<JwtAuth>::new(cfg).unwrap()
    }

    #[test]
    fn valid_token_sets_context_and_headers() {
        MockHost::jwt_accepts("good", CLAIMS);
        let mut h = harness(json!({
            "audience": "api", "leeway": "45s", "required_claims": ["email"],
            "claims_to_headers": { "sub": "X-User", "groups": "x-groups", "missing": "x-missing" }
        }));
        let a = h.on_request(Request::get("/").header("authorization", "Bearer good"));
        let e = a.edits().expect("continue");
        assert_eq!(e.set_header_value("x-user"), Some("alice"));
        assert_eq!(e.set_header_value("x-groups"), Some("g1 g2"));
        assert_eq!(e.remove_headers, vec!["x-missing"]);
        assert_eq!(h.context_get("consumer").as_deref(), Some("alice"));
        assert_eq!(h.context_get("jwt.sub").as_deref(), Some("alice"));
        assert_eq!(h.context_get("jwt.scope").as_deref(), Some("read write"));
        assert_eq!(h.context_get("jwt.email").as_deref(), Some("a@x.io"));
        assert_eq!(h.context_get("jwt.nested"), None);

        let (token, opts) = MockHost::jwt_calls().remove(0);
        assert_eq!(token, "good");
        assert_eq!(
            opts,
            VerifyOptions {
                key_set: "main".into(),
                algorithms: vec!["RS256".into()],
                issuer: Some("https://issuer".into()),
                audience: vec!["api".into()],
                required_claims: vec!["email".into()],
                leeway_s: 45,
            }
        );
    }

    #[test]
    fn missing_and_invalid_tokens_get_401_challenge() {
        MockHost::jwt_rejects("old", VerifyError::Expired);
        let mut h = harness(json!({}));
        for req in [
            Request::get("/").build(),
            Request::get("/")
                .header("authorization", "Basic abc")
                .build(),
            Request::get("/")
                .header("authorization", "Bearer old")
                .build(),
            Request::get("/")
                .header("authorization", "Bearer forged")
                .build(),
        ] {
            let a = h.on_request(req);
            let r = a.response().expect("rejected");
            assert_eq!(r.status, 401);
            assert_eq!(
                r.header("www-authenticate"),
                Some(r#"Bearer realm="weir", error="invalid_token""#)
            );
            assert_eq!(r.header("content-type"), Some("application/problem+json"));
        }
        assert!(h.context().is_empty());
        let a = h.on_request(Request::get("/").header("authorization", "Bearer old"));
        let body: Value = a.response().unwrap().json_body().unwrap();
        assert_eq!(body["detail"], "token expired");
        assert_eq!(MockHost::counter_total("jwt_auth_rejected_total"), 5);
    }

    #[test]
    fn key_set_unavailable_is_503() {
        MockHost::jwt_rejects("t", VerifyError::KeySetUnavailable("jwks down".into()));
        let mut h = harness(json!({}));
        let a = h.on_request(Request::get("/").header("authorization", "Bearer t"));
        assert_eq!(a.response().unwrap().status, 503);
        assert!(a.response().unwrap().header("www-authenticate").is_none());
    }

    #[test]
    fn scopes_are_enforced_with_403() {
        MockHost::jwt_accepts("good", CLAIMS);
        MockHost::jwt_accepts("scp", r#"{"sub":"bob","scp":["admin","read"]}"#);
        let mut h = harness(json!({ "required_scopes": ["read", "admin"] }));
        let a = h.on_request(Request::get("/").header("authorization", "Bearer good"));
        let r = a.response().expect("forbidden");
        assert_eq!(r.status, 403);
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer realm="weir", error="insufficient_scope""#)
        );
        assert!(
            r.json_body::<Value>().unwrap()["detail"]
                .as_str()
                .unwrap()
                .contains("admin")
        );
        assert!(h.context_get("consumer").is_none());
        let a = h.on_request(Request::get("/").header("authorization", "Bearer scp"));
        assert!(a.is_continue());
        assert_eq!(h.context_get("consumer").as_deref(), Some("bob"));
    }

    #[test]
    fn cookie_source_and_token_forwarding() {
        MockHost::jwt_accepts("c", CLAIMS);
        let mut h = harness(json!({ "cookie": "session", "forward_token": false }));
        let a = h.on_request(Request::get("/").header("cookie", "x=1; session=c"));
        // Token came from the cookie: the Authorization header is not ours to drop.
        assert_eq!(a.edits().unwrap().remove_headers, Vec::<String>::new());
        let a = h.on_request(Request::get("/").header("authorization", "Bearer c"));
        assert_eq!(a.edits().unwrap().remove_headers, vec!["authorization"]);
        let mut keep = harness(json!({}));
        let a = keep.on_request(Request::get("/").header("authorization", "Bearer c"));
        assert!(a.edits().unwrap().is_empty());
    }

    #[test]
    fn consumer_claim_is_configurable() {
        MockHost::jwt_accepts("t", r#"{"sub":"123","client_id":"svc-a"}"#);
        let mut h = harness(json!({ "consumer_claim": "client_id", "realm": "api" }));
        assert!(
            h.on_request(Request::get("/").header("authorization", "Bearer t"))
                .is_continue()
        );
        assert_eq!(h.context_get("consumer").as_deref(), Some("svc-a"));
        let a = h.on_request(Request::get("/"));
        assert_eq!(
            a.response().unwrap().header("www-authenticate"),
            Some(r#"Bearer realm="api", error="invalid_token""#)
        );
    }

    #[test]
    fn groups_claim_becomes_consumer_groups() {
        MockHost::jwt_accepts(
            "g1",
            r#"{"sub":"a","groups":["admin","ops"],"exp":9999999999}"#,
        );
        MockHost::jwt_accepts("g2", r#"{"sub":"b","roles":"dev qa","exp":9999999999}"#);
        let mut h = harness(json!({}));
        h.on_request(Request::get("/").header("authorization", "Bearer g1"));
        assert_eq!(
            h.context_get("consumer.groups").as_deref(),
            Some("admin,ops")
        );
        let mut h = harness(json!({ "groups_claim": "roles" }));
        h.on_request(Request::get("/").header("authorization", "Bearer g2"));
        assert_eq!(h.context_get("consumer.groups").as_deref(), Some("dev,qa"));
    }

    #[test]
    fn config_errors() {
        let err = |v: Value| Harness::<JwtAuth>::new(v).err().unwrap();
        assert!(err(json!({})).contains("missing field `key_set`"));
        assert!(err(json!({ "key_set": "" })).contains("key_set"));
        assert!(err(json!({ "key_set": "k", "leeway": "soon" })).contains("leeway"));
        assert!(
            err(json!({ "key_set": "k", "claims_to_headers": { "sub": "bad header" } }))
                .contains("claims_to_headers.sub")
        );
        assert!(
            err(json!({ "key_set": "k", "issuer": "a", "bogus": 1 }))
                .contains("unknown field `bogus`")
        );
        MockHost::jwt_key_set_missing("typo");
        assert!(err(json!({ "key_set": "typo" })).contains("no [key_sets.typo]"));
    }
}
