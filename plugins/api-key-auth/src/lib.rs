//! `api-key-auth`: authenticate requests with an API key.
//!
//! The key comes from a header (default `x-api-key`) or, if configured, a query parameter. It
//! is looked up in the config's `keys` table and then, with `kv = true`, in the plugin's kv
//! store under `apikey:<key>` (a JSON object `{"consumer": "...", "groups": [...]}`), so keys
//! can be provisioned at run time without a reload. The consumer goes to the context as
//! `consumer` (and its groups as `consumer.groups`, comma-separated) for later plugins such as
//! `acl` and `rate-limit`. The credential is stripped before proxying unless
//! `hide_credentials = false`.

use std::collections::BTreeMap;

use serde::Deserialize;
use weir_plugin_sdk::form_decode;
use weir_plugin_sdk::prelude::*;

/// What a key maps to, in config or as kv JSON.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    consumer: String,
    #[serde(default)]
    groups: Vec<String>,
}

fn default_header() -> Option<String> {
    Some("x-api-key".into())
}
fn default_true() -> bool {
    true
}

/// The plugin's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Header carrying the key; `""` disables header lookup.
    #[serde(default = "default_header")]
    header: Option<String>,
    /// Query parameter carrying the key (off unless set).
    query: Option<String>,
    /// Key → consumer.
    #[serde(default)]
    keys: BTreeMap<String, KeyEntry>,
    /// Also look keys up in the kv store (`apikey:<key>` → JSON entry).
    #[serde(default)]
    kv: bool,
    /// Remove the key from the upstream request.
    #[serde(default = "default_true")]
    hide_credentials: bool,
    #[serde(default)]
    realm: Option<String>,
}

/// Where the key was found.
enum Source {
    Header,
    Query,
}

/// The API key policy.
pub struct ApiKeyAuth {
    header: Option<String>,
    query: Option<String>,
    keys: BTreeMap<String, KeyEntry>,
    kv: bool,
    hide_credentials: bool,
    challenge: String,
}

impl ApiKeyAuth {
    fn unauthorized(&self, detail: &str) -> Action {
        metrics::counter_add("api_key_auth_rejected_total", &[], 1);
        Response::problem(401, "Unauthorized", detail)
            .with_header("www-authenticate", &self.challenge)
            .into()
    }

    fn find_key(&self, req: &Request) -> Option<(String, Source)> {
        if let Some(v) = self
            .header
            .as_deref()
            .and_then(|h| req.header(h))
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            return Some((v.to_string(), Source::Header));
        }
        let q = self.query.as_deref()?;
        req.query_param(q)
            .filter(|v| !v.is_empty())
            .map(|v| (v, Source::Query))
    }

    /// `Ok(None)` = unknown key; `Err` = the store failed.
    fn lookup(&self, key: &str) -> Result<Option<KeyEntry>, String> {
        if let Some(entry) = self.keys.get(key) {
            return Ok(Some(entry.clone()));
        }
        if !self.kv {
            return Ok(None);
        }
        let Some(bytes) = kv::get(&format!("apikey:{key}"))? else {
            return Ok(None);
        };
        match serde_json::from_slice::<KeyEntry>(&bytes) {
            Ok(entry) if !entry.consumer.is_empty() => Ok(Some(entry)),
            Ok(_) | Err(_) => {
                // A broken record must not authenticate anyone; the operator needs to know.
                log::error(
                    "api key record in kv is not {\"consumer\", \"groups\"} JSON",
                    &[],
                );
                Ok(None)
            }
        }
    }
}

/// The raw query without parameter `name` (compared after decoding, like `query_param`).
fn query_without(req: &Request, name: &str) -> String {
    let Some(q) = req.query.as_deref() else {
        return String::new();
    };
    q.split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !pair.is_empty() && form_decode(k) != name
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl Policy for ApiKeyAuth {
    type Config = Config;

    fn new(cfg: Config) -> Result<Self, String> {
        let header = cfg.header.filter(|h| !h.trim().is_empty());
        let query = cfg.query.filter(|q| !q.trim().is_empty());
        if header.is_none() && query.is_none() {
            return Err(
                "set `header` and/or `query`: there is nowhere to read the key from".into(),
            );
        }
        if cfg.keys.is_empty() && !cfg.kv {
            return Err("no keys: fill `keys` or set `kv = true`".into());
        }
        for (k, entry) in &cfg.keys {
            if k.is_empty() {
                return Err("keys: empty key".into());
            }
            if entry.consumer.is_empty() {
                return Err(format!("keys.{k}: consumer must not be empty"));
            }
        }
        let realm = cfg.realm.unwrap_or_else(|| "weir".into());
        if realm.contains('"') || realm.contains('\\') {
            return Err("realm must not contain quotes or backslashes".into());
        }
        Ok(Self {
            header: header.map(|h| h.to_ascii_lowercase()),
            query,
            keys: cfg.keys,
            kv: cfg.kv,
            hide_credentials: cfg.hide_credentials,
            challenge: format!("ApiKey realm=\"{realm}\""),
        })
    }

    fn info(&self) -> PluginInfo {
        let reads: Vec<&str> = self.header.as_deref().into_iter().collect();
        PluginInfo::default()
            .phases(Phases::REQUEST)
            .reads_headers(&reads)
    }

    fn on_request(&self, req: &Request) -> Action {
        let Some((key, _source)) = self.find_key(req) else {
            return self.unauthorized("missing API key");
        };
        let entry = match self.lookup(&key) {
            Ok(Some(e)) => e,
            Ok(None) => return self.unauthorized("unknown API key"),
            Err(e) => {
                log::error("api key store unavailable", &[("error", &e)]);
                return Response::problem(
                    503,
                    "Service Unavailable",
                    "cannot check API keys right now",
                )
                .into();
            }
        };
        context::set("consumer", &entry.consumer);
        if !entry.groups.is_empty() {
            context::set("consumer.groups", &entry.groups.join(","));
        }
        let mut edits = RequestEdits::default();
        // Both places a key can come from, not only the one used: a second key must not
        // reach the upstream either.
        if self.hide_credentials {
            if let Some(h) = &self.header {
                edits = edits.remove_header(h);
            }
            if let Some(q) = &self.query
                && req.query.is_some()
            {
                edits = match query_without(req, q) {
                    rest if rest.is_empty() => edits.remove_query(),
                    rest if Some(rest.as_str()) == req.query.as_deref() => edits,
                    rest => edits.set_query(&rest),
                };
            }
        }
        Action::Continue(edits)
    }
}

export_policy!(ApiKeyAuth);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::{Harness, MockHost};

    fn harness(cfg: Value) -> Harness<ApiKeyAuth> {
        Harness::<ApiKeyAuth>::new(cfg).unwrap()
    }

    #[test]
    fn config_key_in_header() {
        let mut h = harness(json!({
            "keys": { "k1": { "consumer": "alice", "groups": ["admin", "ops"] }, "k2": { "consumer": "bob" } }
        }));
        let a = h.on_request(Request::get("/").header("X-Api-Key", "k1"));
        assert_eq!(a.edits().unwrap().remove_headers, vec!["x-api-key"]);
        assert_eq!(h.context_get("consumer").as_deref(), Some("alice"));
        assert_eq!(
            h.context_get("consumer.groups").as_deref(),
            Some("admin,ops")
        );
        h.on_request(Request::get("/").header("x-api-key", "k2"));
        assert_eq!(h.context_get("consumer").as_deref(), Some("bob"));
        assert_eq!(h.context_get("consumer.groups"), None);
    }

    #[test]
    fn missing_or_unknown_key_is_401() {
        let mut h = harness(json!({ "keys": { "k1": { "consumer": "alice" } } }));
        for req in [
            Request::get("/").build(),
            Request::get("/").header("x-api-key", "nope").build(),
            // Query lookup is off unless configured.
            Request::get("/?api_key=k1").build(),
        ] {
            let a = h.on_request(req);
            let r = a.response().expect("rejected");
            assert_eq!(r.status, 401);
            assert_eq!(r.header("www-authenticate"), Some("ApiKey realm=\"weir\""));
            assert_eq!(r.header("content-type"), Some("application/problem+json"));
        }
        assert!(h.context().is_empty());
        assert_eq!(MockHost::counter_total("api_key_auth_rejected_total"), 3);
    }

    #[test]
    fn query_key_is_stripped_from_the_query() {
        let mut h =
            harness(json!({ "query": "api_key", "keys": { "k/1": { "consumer": "alice" } } }));
        let a = h.on_request(Request::get("/x?a=1&api_key=k%2F1&b=2"));
        assert_eq!(a.edits().unwrap().query.as_deref(), Some("a=1&b=2"));
        let a = h.on_request(Request::get("/x?api_key=k%2F1"));
        assert_eq!(a.edits().unwrap().query.as_deref(), Some(""));
        let mut keep = harness(
            json!({ "query": "api_key", "hide_credentials": false, "keys": { "k": { "consumer": "c" } } }),
        );
        assert!(
            keep.on_request(Request::get("/x?api_key=k"))
                .edits()
                .unwrap()
                .is_empty()
        );
        // A key in the header, another in the query: neither reaches the upstream.
        let mut both = harness(json!({
            "header": "x-api-key", "query": "api_key", "keys": { "k": { "consumer": "c" } }
        }));
        let a = both.on_request(Request::get("/x?api_key=other&b=2").header("x-api-key", "k"));
        let e = a.edits().unwrap();
        assert_eq!(e.remove_headers, ["x-api-key"]);
        assert_eq!(e.query.as_deref(), Some("b=2"));
    }

    #[test]
    fn kv_keys_are_found_and_broken_records_rejected() {
        MockHost::kv_put("apikey:dyn", r#"{"consumer":"carol","groups":["beta"]}"#);
        MockHost::kv_put("apikey:broken", "not json");
        let mut h = harness(json!({ "kv": true, "header": "authorization-key" }));
        assert!(
            h.on_request(Request::get("/").header("authorization-key", "dyn"))
                .is_continue()
        );
        assert_eq!(h.context_get("consumer").as_deref(), Some("carol"));
        assert_eq!(h.context_get("consumer.groups").as_deref(), Some("beta"));
        let a = h.on_request(Request::get("/").header("authorization-key", "broken"));
        assert_eq!(a.response().unwrap().status, 401);
        assert_eq!(MockHost::logs().len(), 1);
        let a = h.on_request(Request::get("/").header("authorization-key", "absent"));
        assert_eq!(a.response().unwrap().status, 401);
    }

    #[test]
    fn config_keys_win_and_store_failure_is_503() {
        MockHost::kv_fail(Some("redis down"));
        let mut h = harness(json!({ "kv": true, "keys": { "static": { "consumer": "s" } } }));
        assert!(
            h.on_request(Request::get("/").header("x-api-key", "static"))
                .is_continue()
        );
        let a = h.on_request(Request::get("/").header("x-api-key", "other"));
        assert_eq!(a.response().unwrap().status, 503);
    }

    #[test]
    fn config_errors() {
        let err = |v: Value| Harness::<ApiKeyAuth>::new(v).err().unwrap();
        assert!(err(json!({})).contains("no keys"));
        assert!(
            err(json!({ "header": "", "keys": { "k": { "consumer": "a" } } })).contains("nowhere")
        );
        assert!(err(json!({ "keys": { "k": { "consumer": "" } } })).contains("keys.k"));
        assert!(
            err(json!({ "keys": { "k": { "consumer": "a", "group": [] } } }))
                .contains("unknown field `group`")
        );
    }
}
