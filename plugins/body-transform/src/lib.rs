//! `body-transform`: reshape JSON request and response bodies.
//!
//! Per direction: `remove` fields, `rename` fields (`{ from = "to" }`), `add` fields only when
//! absent and `set` fields always (values are any JSON), applied in that order. Field names may
//! be dotted paths into nested objects (`user.password`). A top-level array is transformed
//! element by element. Bodies that are not JSON (by `content-type` or by content) pass through
//! untouched. The plugin declares in `info()` only the bodies it needs, so a request-only
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
                put(root, to, v, true);
            }
        }
        for (p, v) in &self.add {
            put(root, p, v.clone(), false);
        }
        for (p, v) in &self.set {
            put(root, p, v.clone(), true);
        }
    }

    /// The transformed body, or `None` to leave it alone (not JSON, or nothing changed).
    fn transform(&self, content_type: Option<&str>, body: Option<&[u8]>) -> Option<Vec<u8>> {
        if self.is_empty() || !is_json(content_type) {
            return None;
        }
        let body = body.filter(|b| !b.is_empty())?;
        let mut value: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                log::debug(
                    "body-transform: body is not JSON, left as is",
                    &[("error", &e.to_string())],
                );
                return None;
            }
        };
        let before = value.clone();
        self.apply(&mut value);
        if value == before {
            return None;
        }
        serde_json::to_vec(&value).ok()
    }
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
/// untouched (the transform never destroys data it was not asked to).
fn put(root: &mut Map<String, Value>, path: &[String], value: Value, overwrite: bool) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = root;
    for seg in parents {
        let next = cur
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(obj) = next.as_object_mut() else {
            return;
        };
        cur = obj;
    }
    if overwrite || !cur.contains_key(last) {
        cur.insert(last.clone(), value);
    }
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
        if !self.request.is_empty() {
            phases = phases | Phases::REQUEST;
        }
        if !self.response.is_empty() {
            phases = phases | Phases::RESPONSE;
        }
        PluginInfo {
            needs_request_body: !self.request.is_empty(),
            needs_response_body: !self.response.is_empty(),
            phases,
            request_headers: Some(vec!["content-type".to_string()]),
        }
    }

    fn on_request(&self, req: &Request) -> Action {
        match self
            .request
            .transform(req.header("content-type"), req.body.as_deref())
        {
            Some(body) => RequestEdits::default().set_body(body).into(),
            None => Action::next(),
        }
    }

    fn on_response(&self, resp: &ResponseHead) -> ResponseEdits {
        match self
            .response
            .transform(resp.header("content-type"), resp.body.as_deref())
        {
            Some(body) => ResponseEdits::default().set_body(body),
            None => ResponseEdits::default(),
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
                request_headers: Some(vec!["content-type".to_string()]),
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
                phases: Phases::RESPONSE,
                request_headers: Some(vec!["content-type".to_string()]),
            }
        );
        assert!(
            h.on_request(Request::post("/").json(&json!({ "internal_id": 1 })))
                .edits()
                .unwrap()
                .is_empty()
        );
        let e = h.on_response(
            ResponseHead::new(200)
                .with_header("content-type", "application/json")
                .with_body(r#"{"internal_id":7,"nm":"x"}"#),
        );
        let v: Value = serde_json::from_slice(e.body.as_deref().unwrap()).unwrap();
        assert_eq!(v, json!({ "name": "x" }));
    }

    #[test]
    fn paths_through_non_objects_are_left_alone() {
        let mut root = json!({ "a": 1 });
        let Value::Object(m) = &mut root else {
            unreachable!()
        };
        put(m, &["a".into(), "b".into()], json!(2), true);
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
