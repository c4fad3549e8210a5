//! `headers`: add, set and remove request and response headers.
//!
//! Values are templates: `{name}` is replaced by the request context entry `name` (e.g.
//! `{consumer}` or `{jwt.sub}` set by an auth plugin earlier in the chain);
//! `{request.id}`, `{request.client_ip}`, `{request.route}`, `{request.host}`, `{request.method}`
//! and `{request.path}` are available in both directions. `{{` and `}}` are literal braces.
//! A header whose template refers to a missing value is skipped rather than sent half-filled.

use std::collections::BTreeMap;

use serde::Deserialize;
use weir_plugin_sdk::prelude::*;

/// One value or several (`add` may append a header more than once).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Operations on one direction, as written by the operator.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpsConfig {
    /// Replace every value of the header.
    #[serde(default)]
    set: BTreeMap<String, String>,
    /// Append a value, keeping existing ones.
    #[serde(default)]
    add: BTreeMap<String, OneOrMany>,
    /// Remove the header.
    #[serde(default)]
    remove: Vec<String>,
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

/// A piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(String),
}

/// A header value template, parsed once at config time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template(Vec<Part>);

impl Template {
    fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') | None => {
                                return Err(format!("unclosed `{{` in template {text:?}"));
                            }
                            Some(c) => name.push(c),
                        }
                    }
                    let name = name.trim();
                    if name.is_empty() {
                        return Err(format!("empty `{{}}` in template {text:?}"));
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Var(name.to_string()));
                }
                '}' => {
                    return Err(format!(
                        "unmatched `}}` in template {text:?} (write `}}}}`)"
                    ));
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template(parts))
    }

    /// Names of the variables the template uses.
    fn vars(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v.as_str()),
            Part::Lit(_) => None,
        })
    }

    /// The rendered value, or `None` if a variable is missing or the result could break the
    /// header framing (control characters from untrusted context values).
    fn render(&self, lookup: &dyn Fn(&str) -> Option<String>) -> Option<String> {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Var(name) => out.push_str(&lookup(name)?),
            }
        }
        if out.chars().any(|c| c.is_control() && c != '\t') {
            log::warn(
                "headers: templated value contains control characters, header skipped",
                &[],
            );
            return None;
        }
        Some(out)
    }
}

/// Operations on one direction, validated.
#[derive(Debug, Default)]
struct Ops {
    set: Vec<(String, Template)>,
    add: Vec<(String, Template)>,
    remove: Vec<String>,
}

/// RFC 9110 token characters: what a header name may contain.
fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn checked_name(name: &str, side: &str, op: &str) -> Result<String, String> {
    if valid_header_name(name) {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!("{side}.{op}: invalid header name {name:?}"))
    }
}

impl Ops {
    fn from_config(cfg: OpsConfig, side: &str) -> Result<Self, String> {
        let mut ops = Ops::default();
        for (name, value) in cfg.set {
            let template =
                Template::parse(&value).map_err(|e| format!("{side}.set.{name}: {e}"))?;
            ops.set.push((checked_name(&name, side, "set")?, template));
        }
        for (name, values) in cfg.add {
            let name_lc = checked_name(&name, side, "add")?;
            for value in values.into_vec() {
                let template =
                    Template::parse(&value).map_err(|e| format!("{side}.add.{name}: {e}"))?;
                ops.add.push((name_lc.clone(), template));
            }
        }
        for name in cfg.remove {
            ops.remove.push(checked_name(&name, side, "remove")?);
        }
        Ok(ops)
    }

    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// `{request.*}` template variables, available in both directions.
fn request_var(req: &Request, name: &str) -> Option<String> {
    Some(match name {
        "request.id" => req.request_id.clone(),
        "request.client_ip" => req.client_ip.clone(),
        "request.route" => req.route.clone(),
        "request.host" => req.host.clone(),
        "request.method" => req.method.clone(),
        "request.path" => req.path.clone(),
        _ => return None,
    })
}

/// The headers policy.
pub struct Headers {
    request: Ops,
    response: Ops,
    /// `request.*` variables used by response templates, carried over in the context.
    response_request_vars: Vec<String>,
}

impl Policy for Headers {
    type Config = Config;

    fn new(cfg: Config) -> Result<Self, String> {
        let request = Ops::from_config(cfg.request, "request")?;
        let response = Ops::from_config(cfg.response, "response")?;
        if request.is_empty() && response.is_empty() {
            return Err("nothing to do: configure `request` and/or `response` operations".into());
        }
        let mut response_request_vars: Vec<String> = response
            .set
            .iter()
            .chain(&response.add)
            .flat_map(|(_, t)| t.vars())
            .filter(|v| v.starts_with("request."))
            .map(str::to_string)
            .collect();
        response_request_vars.sort();
        response_request_vars.dedup();
        Ok(Self {
            request,
            response,
            response_request_vars,
        })
    }

    /// Only the directions that have operations are called (`on_request` also when response
    /// templates use `request.*` variables: it hands them over).
    fn info(&self) -> PluginInfo {
        let mut phases = Phases::NONE;
        if !self.request.is_empty() || !self.response_request_vars.is_empty() {
            phases = phases | Phases::REQUEST;
        }
        if !self.response.is_empty() {
            phases = phases | Phases::RESPONSE;
        }
        // Templates read the context and request fields (`request_var`), never headers.
        PluginInfo::default().phases(phases).reads_headers(&[])
    }

    fn on_request(&self, req: &Request) -> Action {
        let lookup = |name: &str| -> Option<String> {
            request_var(req, name).or_else(|| context::get(name))
        };
        // The response phase has no request: hand it the request variables it uses.
        for name in &self.response_request_vars {
            if let Some(v) = request_var(req, name) {
                context::set(name, &v);
            }
        }
        if self.request.is_empty() {
            return Action::next();
        }
        let mut edits = RequestEdits::default();
        // Removal first, so `remove` + `add` of one name replaces client-sent values.
        for name in &self.request.remove {
            edits = edits.remove_header(name);
        }
        for (name, template) in &self.request.set {
            match template.render(&lookup) {
                Some(v) => edits = edits.set_header(name, &v),
                // A header we would have set must not leak through from the client instead.
                None => edits = edits.remove_header(name),
            }
        }
        for (name, template) in &self.request.add {
            if let Some(v) = template.render(&lookup) {
                edits = edits.append_header(name, &v);
            }
        }
        Action::Continue(edits)
    }

    fn on_response(&self, _resp: &ResponseHead) -> ResponseEdits {
        let lookup = |name: &str| context::get(name);
        let mut edits = ResponseEdits::default();
        for name in &self.response.remove {
            edits = edits.remove_header(name);
        }
        for (name, template) in &self.response.set {
            match template.render(&lookup) {
                Some(v) => edits = edits.set_header(name, &v),
                None => edits = edits.remove_header(name),
            }
        }
        for (name, template) in &self.response.add {
            if let Some(v) = template.render(&lookup) {
                edits = edits.append_header(name, &v);
            }
        }
        edits
    }
}

export_policy!(Headers);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::{Harness, MockHost};

    fn pair(n: &str, v: &str) -> (String, String) {
        (n.to_string(), v.to_string())
    }

    #[test]
    fn templates_parse_and_render() {
        let t = Template::parse("Bearer {jwt.sub}-{{x}}").unwrap();
        let got = t.render(&|n| (n == "jwt.sub").then(|| "alice".to_string()));
        assert_eq!(got.as_deref(), Some("Bearer alice-{x}"));
        assert_eq!(t.render(&|_| None), None);
        assert!(Template::parse("{open").is_err());
        assert!(Template::parse("close}").is_err());
        assert!(Template::parse("{}").is_err());
        assert_eq!(
            Template::parse("plain")
                .unwrap()
                .render(&|_| None)
                .as_deref(),
            Some("plain")
        );
    }

    #[test]
    fn request_headers_from_context_and_request() {
        let mut h = Harness::<Headers>::new(json!({
            "request": {
                "set": { "X-Consumer": "{consumer}", "x-sub": "{jwt.sub}", "x-rid": "{request.id}" },
                "add": { "via": ["weir", "{request.route}"] },
                "remove": ["X-Internal"]
            }
        }))
        .unwrap();
        let action = h.on_request_with_context(
            Request::get("/x").route("api").request_id("r1"),
            &[("consumer", "alice")],
        );
        let e = action.edits().unwrap();
        assert_eq!(e.remove_headers, vec!["x-internal", "x-sub"]);
        assert_eq!(
            e.set_headers,
            vec![pair("x-consumer", "alice"), pair("x-rid", "r1")]
        );
        assert_eq!(
            e.append_headers,
            vec![pair("via", "weir"), pair("via", "api")]
        );
    }

    #[test]
    fn response_headers_use_context_of_the_request() {
        let mut h = Harness::<Headers>::new(json!({
            "response": { "set": { "x-served-for": "{consumer}" }, "remove": ["server"] }
        }))
        .unwrap();
        assert!(h.on_request(Request::get("/")).edits().unwrap().is_empty());
        MockHost::context_set("consumer", "bob");
        let e = h.on_response(ResponseHead::new(200));
        assert_eq!(e.set_header_value("x-served-for"), Some("bob"));
        assert_eq!(e.remove_headers, vec!["server"]);
    }

    #[test]
    fn request_variables_reach_the_response() {
        let mut h = Harness::<Headers>::new(json!({
            "response": { "set": { "x-request-id": "{request.id}", "x-route": "{request.route}/{consumer}" } }
        }))
        .unwrap();
        let a = h.on_request_with_context(
            Request::get("/").request_id("rid-9").route("api"),
            &[("consumer", "al")],
        );
        assert!(a.edits().unwrap().is_empty());
        let e = h.on_response(ResponseHead::new(200));
        assert_eq!(e.set_header_value("x-request-id"), Some("rid-9"));
        assert_eq!(e.set_header_value("x-route"), Some("api/al"));
    }

    #[test]
    fn control_characters_from_context_are_not_injected() {
        let mut h =
            Harness::<Headers>::new(json!({ "request": { "add": { "x-a": "{consumer}" } } }))
                .unwrap();
        let action =
            h.on_request_with_context(Request::get("/"), &[("consumer", "a\r\nx-evil: 1")]);
        assert!(action.edits().unwrap().append_headers.is_empty());
        assert_eq!(MockHost::logs().len(), 1);
    }

    #[test]
    fn config_errors_are_reported() {
        let err = |v: Value| Harness::<Headers>::new(v).err().unwrap();
        assert!(err(json!({})).contains("nothing to do"));
        assert!(
            err(json!({ "request": { "set": { "bad name": "1" } } }))
                .contains("invalid header name")
        );
        assert!(err(json!({ "request": { "set": { "x": "{oops" } } })).contains("request.set.x"));
        assert!(err(json!({ "request": { "sett": {} } })).contains("unknown field `sett`"));
    }
}
