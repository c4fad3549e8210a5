//! `body-transform`: reshape JSON request and response bodies.
//!
//! Per direction: `remove` fields, `rename` fields (`{ from = "to" }`), `add` fields only when
//! absent and `set` fields always (values are any JSON), applied in that order. Field names may
//! be dotted paths into nested objects (`user.password`). A top-level array is transformed
//! element by element. Bodies that are not JSON (by `content-type`, or without one by content)
//! pass through untouched.
//!
//! It fails closed, because `remove` is often there to keep fields away from one side: a body
//! that claims to be JSON (by type, or by its first byte) but does not parse here (numbers out
//! of range, nesting deeper than 128, a byte-order mark), or a compressed one, is refused
//! (request: 400 or 415; response: 502) rather than passed on unchanged. With response
//! operations the plugin drops the client's `Accept-Encoding`, so the upstream answers
//! uncompressed. The plugin declares in `info()` only the bodies it needs, so a request-only
//! transform does not make the gateway buffer responses.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Map;
use weir_plugin_sdk::prelude::*;

/// Operations on one direction, as written by the operator.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpsConfig {
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    rename: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, Value>,
    #[serde(default)]
    set: BTreeMap<String, Value>,
}

/// The plugin's `config` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    request: OpsConfig,
    #[serde(default)]
    response: OpsConfig,
}

type Path = Vec<String>;

fn path(text: &str, what: &str) -> Result<Path, String> {
    let p: Path = text.split('.').map(str::to_string).collect();
    if p.iter().any(String::is_empty) {
        return Err(format!("{what}: bad field path {text:?}"));
    }
    Ok(p)
}

#[derive(Debug, Default)]
struct Ops {
    remove: Vec<Path>,
    rename: Vec<(Path, Path)>,
    add: Vec<(Path, Value)>,
    set: Vec<(Path, Value)>,
}

impl Ops {
    fn from_config(c: OpsConfig, side: &str) -> Result<Self, String> {
        let mut ops = Ops::default();
        for p in &c.remove {
            ops.remove.push(path(p, &format!("{side}.remove"))?);
        }
        for (from, to) in &c.rename {
            let what = format!("{side}.rename.{from}");
            ops.rename.push((path(from, &what)?, path(to, &what)?));
        }
        for (p, v) in c.add {
            ops.add.push((path(&p, &format!("{side}.add"))?, v));
        }
        for (p, v) in c.set {
            ops.set.push((path(&p, &format!("{side}.set"))?, v));
        }
        Ok(ops)
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.add.is_empty()
            && self.set.is_empty()
    }

    fn apply(&self, value: &mut Value) {
        match value {
            Value::Array(items) => items.iter_mut().for_each(|v| self.apply_object(v)),
            v => self.apply_object(v),
        }
    }

    fn apply_object(&self, value: &mut Value) {
        let Value::Object(root) = value else {
            return;
        };
        for p in &self.remove {
            take(root, p);
        }
        for (from, to) in &self.rename {
            if let Some(v) = take(root, from) {
                // A target blocked by a non-object keeps the value where it was.
                if let Err(v) = put(root, to, v, true) {
                    let _ = put(root, from, v, true);
                }
            }
        }
        for (p, v) in &self.add {
            let _ = put(root, p, v.clone(), false);
        }
        for (p, v) in &self.set {
            let _ = put(root, p, v.clone(), true);
        }
    }

    /// What to do with a body: `content_encoding` is the body's `Content-Encoding`, if any.
    fn transform(
        &self,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        body: Option<&[u8]>,
    ) -> Outcome {
        let Some(body) = body.filter(|b| !b.is_empty()) else {
            return Outcome::Unchanged;
        };
        if self.is_empty() || !is_json(content_type) {
            return Outcome::Unchanged;
        }
        // Without a content type only what looks like JSON is JSON.
        if content_type.is_none() && !looks_like_json(body) {
            return Outcome::Unchanged;
        }
        if content_encoding.is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity")) {
            return Outcome::Refuse(Refusal::Encoded);
        }
        let mut value: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                log::info(
                    "body-transform: refused a JSON body it cannot parse",
                    &[("error", &e.to_string())],
                );
                return Outcome::Refuse(Refusal::Invalid);
            }
        };
        let before = value.clone();
        self.apply(&mut value);
        if value == before {
            return Outcome::Unchanged;
        }
        match serde_json::to_vec(&value) {
            Ok(b) => Outcome::Body(b),
            Err(_) => Outcome::Refuse(Refusal::Invalid),
        }
    }
}

/// What [`Ops::transform`] decided.
enum Outcome {
    Unchanged,
    Body(Vec<u8>),
    Refuse(Refusal),
}

/// Why a body that should be transformed cannot be.
enum Refusal {
    /// Compressed: its fields cannot be seen.
    Encoded,
    /// Claims to be JSON but does not parse here (and might elsewhere).
    Invalid,
}

/// First non-blank byte `{`, `[` or a UTF-8 byte-order mark.
fn looks_like_json(body: &[u8]) -> bool {
    body.starts_with(b"\xEF\xBB\xBF")
        || body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{' || *b == b'[')
}

/// JSON media types: `application/json`, `*/*+json`; a missing content type is sniffed.
fn is_json(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else {
        return true;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

/// Removes and returns the value at `path`.
fn take(root: &mut Map<String, Value>, path: &[String]) -> Option<Value> {
    let (last, parents) = path.split_last()?;
    let mut cur = root;
    for seg in parents {
        cur = cur.get_mut(seg)?.as_object_mut()?;
    }
    cur.remove(last)
}

/// Stores `value` at `path`, creating intermediate objects; a non-object in the way is left
/// untouched (the transform never destroys data it was not asked to) and `value` comes back.
fn put(
    root: &mut Map<String, Value>,
    path: &[String],
    value: Value,
    overwrite: bool,
) -> Result<(), Value> {
    let Some((last, parents)) = path.split_last() else {
        return Err(value);
    };
    let mut cur = root;
    for seg in parents {
        let next = cur
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(obj) = next.as_object_mut() else {
            return Err(value);
        };
        cur = obj;
    }
    if overwrite || !cur.contains_key(last) {
        cur.insert(last.clone(), value);
    }
    Ok(())
}

/// The body transform policy.
pub struct BodyTransform {
    request: Ops,
    response: Ops,
}

impl Policy for BodyTransform {
    type Config = Config;

    fn new(cfg: Config) -> Result<Self, String> {
        let request = Ops::from_config(cfg.request, "request")?;
        let response = Ops::from_config(cfg.response, "response")?;
        if request.is_empty() && response.is_empty() {
            return Err("nothing to do: configure `request` and/or `response` operations".into());
        }
        Ok(Self { request, response })
    }

    fn info(&self) -> PluginInfo {
        let mut phases = Phases::NONE;
        // Response operations need `on-request` too, to ask for an uncompressed answer.
        if !self.request.is_empty() || !self.response.is_empty() {
            phases = phases | Phases::REQUEST;
        }
        if !self.response.is_empty() {
            phases = phases | Phases::RESPONSE;
        }
        PluginInfo {
            needs_request_body: !self.request.is_empty(),
            needs_response_body: !self.response.is_empty(),
            phases,
            request_headers: Some(vec![
                "content-type".to_string(),
                "content-encoding".to_string(),
            ]),
        }
    }

    fn on_request(&self, req: &Request) -> Action {
        let edits = if self.response.is_empty() {
            RequestEdits::default()
        } else {
            RequestEdits::default().remove_header("accept-encoding")
        };
        match self.request.transform(
            req.header("content-type"),
            req.header("content-encoding"),
            req.body.as_deref(),
        ) {
            Outcome::Unchanged => edits.into(),
            Outcome::Body(body) => edits.set_body(body).into(),
            Outcome::Refuse(Refusal::Encoded) => Response::problem(
                415,
                "Unsupported Media Type",
                "a compressed JSON body cannot be transformed; send it uncompressed",
            )
            .into(),
            Outcome::Refuse(Refusal::Invalid) => {
                Response::problem(400, "Bad Request", "the request body is not valid JSON").into()
            }
        }
    }

    fn on_response(&self, resp: &ResponseHead) -> ResponseEdits {
        match self.response.transform(
            resp.header("content-type"),
            resp.header("content-encoding"),
            resp.body.as_deref(),
        ) {
            Outcome::Unchanged => ResponseEdits::default(),
            Outcome::Body(body) => ResponseEdits::default().set_body(body),
            // Passing it on would hand the client fields the route promised to transform.
            Outcome::Refuse(why) => {
                let detail = match why {
                    Refusal::Encoded => "the upstream answered with a compressed JSON body",
                    Refusal::Invalid => {
                        "the upstream answered with a JSON body that does not parse"
                    }
                };
                log::warn(
                    "body-transform: upstream response refused",
                    &[("why", detail)],
                );
                let problem = Response::problem(502, "Bad Gateway", detail);
                let mut edits = ResponseEdits::default()
                    .set_status(502)
                    .set_body(problem.body.clone())
                    .remove_header("content-encoding");
                for (k, v) in &problem.headers {
                    edits = edits.set_header(k, v);
                }
                edits
            }
        }
    }
}

export_policy!(BodyTransform);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::Harness;

    fn body_of(a: &Action) -> Value {
        serde_json::from_slice(a.edits().unwrap().body.as_deref().expect("body edited")).unwrap()
    }

    #[test]
    fn request_fields_are_transformed_in_order() {
        let mut h = Harness::<BodyTransform>::new(json!({
            "request": {
                "remove": ["password", "user.ssn"],
                "rename": { "userName": "user.name", "missing": "x" },
                "add": { "source": "weir", "user.name": "ignored" },
                "set": { "meta.version": 2 }
            }
        }))
        .unwrap();
        assert_eq!(
            h.info(),
            PluginInfo {
                needs_request_body: true,
                needs_response_body: false,
                phases: Phases::REQUEST,
                request_headers: Some(vec![
                    "content-type".to_string(),
                    "content-encoding".to_string()
                ]),
            }
        );
        let a = h.on_request(Request::post("/users").json(&json!({
            "userName": "al", "password": "x", "user": { "ssn": "1", "age": 3 }, "source": "client"
        })));
        assert_eq!(
            body_of(&a),
            json!({ "user": { "name": "al", "age": 3 }, "source": "client", "meta": { "version": 2 } })
        );
    }

    #[test]
    fn arrays_non_json_and_unchanged_bodies() {
        let mut h =
            Harness::<BodyTransform>::new(json!({ "request": { "remove": ["secret"] } })).unwrap();
        let a =
            h.on_request(Request::post("/").json(&json!([{ "secret": 1, "a": 1 }, { "a": 2 }, 3])));
        assert_eq!(body_of(&a), json!([{ "a": 1 }, { "a": 2 }, 3]));
        // Nothing to change: no body edit at all.
        assert!(
            h.on_request(Request::post("/").json(&json!({ "a": 1 })))
                .edits()
                .unwrap()
                .is_empty()
        );
        // Not JSON by type or by content.
        let text = Request::post("/")
            .header("content-type", "text/plain")
            .body(r#"{"secret":1}"#);
        assert!(h.on_request(text).edits().unwrap().is_empty());
        assert!(
            h.on_request(Request::post("/").body("not json"))
                .edits()
                .unwrap()
                .is_empty()
        );
        assert!(h.on_request(Request::get("/")).edits().unwrap().is_empty());
        // `+json` types count.
        let problem = Request::post("/")
            .header("content-type", "application/problem+json; charset=utf-8")
            .body(r#"{"secret":1}"#);
        assert_eq!(body_of(&h.on_request(problem)), json!({}));
    }

    #[test]
    fn response_bodies() {
        let mut h = Harness::<BodyTransform>::new(json!({
            "response": { "remove": ["internal_id"], "rename": { "nm": "name" } }
        }))
        .unwrap();
        assert_eq!(
            h.info(),
            PluginInfo {
                needs_request_body: false,
                needs_response_body: true,
                phases: Phases::REQUEST | Phases::RESPONSE,
                request_headers: Some(vec![
                    "content-type".to_string(),
                    "content-encoding".to_string()
                ]),
            }
        );
        // The request body is left alone; the client's Accept-Encoding goes, so the upstream
        // answers uncompressed.
        let a = h.on_request(
            Request::post("/")
                .header("accept-encoding", "gzip")
                .json(&json!({ "internal_id": 1 })),
        );
        let edits = a.edits().unwrap();
        assert!(edits.body.is_none());
        assert_eq!(edits.remove_headers, ["accept-encoding"]);
        let e = h.on_response(
            ResponseHead::new(200)
                .with_header("content-type", "application/json")
                .with_body(r#"{"internal_id":7,"nm":"x"}"#),
        );
        let v: Value = serde_json::from_slice(e.body.as_deref().unwrap()).unwrap();
        assert_eq!(v, json!({ "name": "x" }));
        // A compressed or unparsable JSON answer is refused, not passed on with its fields.
        for (encoding, body) in [
            (Some("gzip"), &b"\x1f\x8b\x08\x00"[..]),
            (None, &br#"{"internal_id":7,"x":1e400}"#[..]),
        ] {
            let mut head = ResponseHead::new(200)
                .with_header("content-type", "application/json")
                .with_body(body.to_vec());
            if let Some(enc) = encoding {
                head = head.with_header("content-encoding", enc);
            }
            let e = h.on_response(head);
            assert_eq!(e.status, Some(502), "{encoding:?}");
            assert!(!String::from_utf8_lossy(e.body.as_deref().unwrap()).contains("internal_id"));
        }
    }

    #[test]
    fn request_bodies_that_might_parse_elsewhere_are_refused() {
        let mut h =
            Harness::<BodyTransform>::new(json!({ "request": { "remove": ["debug"] } })).unwrap();
        let deep = format!(
            r#"{{"debug":true,"x":{}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        for body in [
            r#"{"debug":true,"x":1e400}"#.to_string(),
            deep,
            "\u{feff}{\"debug\":true}".to_string(),
        ] {
            for typed in [true, false] {
                let mut req = Request::post("/").body(body.clone());
                if typed {
                    req = req.header("content-type", "application/json");
                }
                let a = h.on_request(req);
                assert_eq!(
                    a.response().map(|r| r.status),
                    Some(400),
                    "{body:.40} {typed}"
                );
            }
        }
        let gz = Request::post("/")
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(r#"{"debug":true}"#);
        assert_eq!(h.on_request(gz).response().map(|r| r.status), Some(415));
    }

    #[test]
    fn a_rename_onto_a_non_object_keeps_the_value() {
        let mut h = Harness::<BodyTransform>::new(
            json!({ "request": { "rename": { "userName": "user.name" } } }),
        )
        .unwrap();
        let a = h.on_request(Request::post("/").json(&json!({ "userName": "ann", "user": "str" })));
        assert!(
            a.edits().unwrap().body.is_none(),
            "changed a body it could not rename in"
        );
    }

    #[test]
    fn paths_through_non_objects_are_left_alone() {
        let mut root = json!({ "a": 1 });
        let Value::Object(m) = &mut root else {
            unreachable!()
        };
        assert_eq!(
            put(m, &["a".into(), "b".into()], json!(2), true),
            Err(json!(2))
        );
        assert_eq!(take(m, &["a".into(), "b".into()]), None);
        assert_eq!(root, json!({ "a": 1 }));
    }

    #[test]
    fn config_errors() {
        let err = |v: Value| Harness::<BodyTransform>::new(v).err().unwrap();
        assert!(err(json!({})).contains("nothing to do"));
        assert!(err(json!({ "request": { "remove": ["a..b"] } })).contains("request.remove"));
        assert!(
            err(json!({ "response": { "rename": { "a": "" } } })).contains("response.rename.a")
        );
    }
}
