//! Plain Rust mirrors of the WIT records a policy sees and returns.
//!
//! These are the only data types a plugin author handles: the generated wit-bindgen types never
//! leave the SDK. Header names are ASCII case-insensitive; the builders store them lower-case,
//! as the gateway does on the wire into the plugin.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Header list in wire order: `(lower-case name, value)`. A name may repeat.
pub type Fields = Vec<(String, String)>;

/// First value of header `name` (case-insensitive) in `fields`.
pub fn find_header<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// What a plugin tells the gateway once, after `init`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginInfo {
    /// Buffer the request body (up to the route's body limit) and pass it to `on_request`.
    pub needs_request_body: bool,
    /// Buffer the response body and pass it to `on_response`.
    pub needs_response_body: bool,
    /// The phases the gateway calls (default: all three). Each phase left out saves a guest call
    /// and a copy of the headers on every request.
    pub phases: Phases,
    /// The request headers `on_request` reads, lower-case (`None`, the default: all of them).
    /// The gateway passes only these, so every other header is absent from
    /// [`Request::headers`]; fewer strings are copied into the plugin on every call.
    pub request_headers: Option<Vec<String>>,
}

/// A set of request phases: `Phases::REQUEST | Phases::RESPONSE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Phases(u8);

impl Phases {
    /// No phase (a policy that only validates its config).
    pub const NONE: Phases = Phases(0);
    /// [`Policy::on_request`](crate::Policy::on_request).
    pub const REQUEST: Phases = Phases(1);
    /// [`Policy::on_response`](crate::Policy::on_response).
    pub const RESPONSE: Phases = Phases(2);
    /// [`Policy::on_log`](crate::Policy::on_log).
    pub const LOG: Phases = Phases(4);
    /// Every phase.
    pub const ALL: Phases = Phases(7);

    /// Whether every phase of `other` is in `self`.
    pub const fn contains(self, other: Phases) -> bool {
        self.0 & other.0 == other.0
    }
}

impl Default for Phases {
    /// Every phase: a policy that does not declare its phases is always called.
    fn default() -> Self {
        Phases::ALL
    }
}

impl std::ops::BitOr for Phases {
    type Output = Phases;
    fn bitor(self, rhs: Phases) -> Phases {
        Phases(self.0 | rhs.0)
    }
}

impl PluginInfo {
    /// Declares the phases this policy implements; the gateway skips the others:
    /// `PluginInfo::default().phases(Phases::REQUEST)`.
    pub fn phases(mut self, phases: Phases) -> Self {
        self.phases = phases;
        self
    }

    /// Declares the request headers `on_request` reads (names, any case); the gateway passes
    /// only these: `PluginInfo::default().reads_headers(&["authorization"])`, or `&[]` for none.
    pub fn reads_headers(mut self, names: &[&str]) -> Self {
        self.request_headers = Some(names.iter().map(|n| n.to_ascii_lowercase()).collect());
        self
    }

    /// Ask for the request body in [`Request::body`].
    pub fn with_request_body(mut self) -> Self {
        self.needs_request_body = true;
        self
    }

    /// Ask for the response body in [`ResponseHead::body`].
    pub fn with_response_body(mut self) -> Self {
        self.needs_response_body = true;
        self
    }
}

/// The request as the gateway sees it after routing and path normalisation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// Upper-case method, e.g. `GET`.
    pub method: String,
    /// Normalised path, without the query.
    pub path: String,
    /// Raw query string without `?`, if any.
    pub query: Option<String>,
    /// Headers in wire order, names lower-case.
    pub headers: Fields,
    /// Present only if [`PluginInfo::needs_request_body`] was declared.
    pub body: Option<Vec<u8>>,
    /// Address of the client (the direct peer or the trusted forwarded client).
    pub client_ip: String,
    /// Name of the matched route.
    pub route: String,
    /// The request id Weir forwards as `x-request-id`.
    pub request_id: String,
    /// `http` or `https`.
    pub scheme: String,
    /// Host the client asked for, without port.
    pub host: String,
}

impl Request {
    /// Starts building a request for tests: `Request::get("/x").header("a", "b")`.
    pub fn builder(method: &str, path: &str) -> RequestBuilder {
        RequestBuilder::new(method, path)
    }

    /// Starts building a `GET` request (tests).
    pub fn get(path: &str) -> RequestBuilder {
        RequestBuilder::new("GET", path)
    }

    /// Starts building a `POST` request (tests).
    pub fn post(path: &str) -> RequestBuilder {
        RequestBuilder::new("POST", path)
    }

    /// Starts building a `PUT` request (tests).
    pub fn put(path: &str) -> RequestBuilder {
        RequestBuilder::new("PUT", path)
    }

    /// Starts building a `DELETE` request (tests).
    pub fn delete(path: &str) -> RequestBuilder {
        RequestBuilder::new("DELETE", path)
    }

    /// Starts building an `OPTIONS` request (tests; CORS preflights).
    pub fn options(path: &str) -> RequestBuilder {
        RequestBuilder::new("OPTIONS", path)
    }

    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Every value of header `name` (case-insensitive), in wire order.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Percent-decoded value of the first query parameter `name` (`+` decodes to a space).
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(k) == name).then(|| form_decode(v))
        })
    }

    /// Every query parameter, percent-decoded, in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        let Some(query) = self.query.as_deref() else {
            return Vec::new();
        };
        query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (form_decode(k), form_decode(v))
            })
            .collect()
    }

    /// Value of cookie `name` from the `cookie` header(s).
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.header_all("cookie")
            .flat_map(|h| h.split(';'))
            .find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k.trim() == name).then(|| v.trim().trim_matches('"'))
            })
    }

    /// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
    pub fn bearer_token(&self) -> Option<&str> {
        let value = self.header("authorization")?.trim();
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    }

    /// Parses the body as JSON. `Err` if there is no body (did you declare it in `info()`?) or it
    /// is not valid JSON for `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        let body = self
            .body
            .as_deref()
            .ok_or("request body not available: declare it with PluginInfo::with_request_body")?;
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
    }
}

/// Decodes one `application/x-www-form-urlencoded` query component (`%XX` and `+`). Invalid
/// escapes are kept as written; invalid UTF-8 becomes U+FFFD.
pub fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Builds a [`Request`] in tests. Defaults: client `127.0.0.1`, route `test`, scheme `http`,
/// host `localhost`, request id `test-request`.
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    req: Request,
}

impl RequestBuilder {
    /// A request with `method` and `path`; a `?query` in `path` is split off into the query.
    pub fn new(method: &str, path: &str) -> Self {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string())),
            None => (path, None),
        };
        Self {
            req: Request {
                method: method.to_ascii_uppercase(),
                path: path.to_string(),
                query,
                headers: Vec::new(),
                body: None,
                client_ip: "127.0.0.1".into(),
                route: "test".into(),
                request_id: "test-request".into(),
                scheme: "http".into(),
                host: "localhost".into(),
            },
        }
    }

    /// Appends a header (name lower-cased).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.req
            .headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Sets the raw query string (without `?`).
    pub fn query(mut self, query: &str) -> Self {
        self.req.query = Some(query.to_string());
        self
    }

    /// Sets the body bytes.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.req.body = Some(body.into());
        self
    }

    /// Sets a JSON body and `content-type: application/json`.
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_default();
        self.header("content-type", "application/json").body(body)
    }

    /// Sets the client address.
    pub fn client_ip(mut self, ip: &str) -> Self {
        self.req.client_ip = ip.to_string();
        self
    }

    /// Sets the matched route name.
    pub fn route(mut self, route: &str) -> Self {
        self.req.route = route.to_string();
        self
    }

    /// Sets the host the client asked for.
    pub fn host(mut self, host: &str) -> Self {
        self.req.host = host.to_string();
        self
    }

    /// Sets the scheme (`http`/`https`).
    pub fn scheme(mut self, scheme: &str) -> Self {
        self.req.scheme = scheme.to_string();
        self
    }

    /// Sets the request id.
    pub fn request_id(mut self, id: &str) -> Self {
        self.req.request_id = id.to_string();
        self
    }

    /// The finished request.
    pub fn build(self) -> Request {
        self.req
    }
}

impl From<RequestBuilder> for Request {
    fn from(b: RequestBuilder) -> Self {
        b.req
    }
}

/// A complete response produced by a plugin instead of proxying.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Headers, names lower-case.
    pub headers: Fields,
    /// Body bytes (may be empty).
    pub body: Vec<u8>,
}

impl Response {
    /// An empty response with `status`.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, body: &str) -> Self {
        Self::new(status)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body.as_bytes().to_vec())
    }

    /// An `application/json` response with `value` serialised as the body.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Self {
        // Serialising plain data (maps, structs of strings/numbers) cannot fail; if a custom
        // `Serialize` impl does, an empty JSON object is a better answer than a trap.
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Self::new(status)
            .with_header("content-type", "application/json")
            .with_body(body)
    }

    /// An RFC 9457 `application/problem+json` response:
    /// `{"type":"about:blank","title":…,"status":…,"detail":…}`.
    pub fn problem(status: u16, title: &str, detail: &str) -> Self {
        let value = serde_json::json!({
            "type": "about:blank",
            "title": title,
            "status": status,
            "detail": detail,
        });
        let body = serde_json::to_vec(&value).unwrap_or_default();
        Self::new(status)
            .with_header("content-type", "application/problem+json")
            .with_body(body)
    }

    /// Sets header `name` (lower-cased), replacing earlier values.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        let name = name.to_ascii_lowercase();
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.to_string()));
        self
    }

    /// Appends a header value, keeping earlier ones.
    pub fn append_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Parses the body as JSON (handy in tests).
    pub fn json_body<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("invalid JSON body: {e}"))
    }
}

/// Changes to apply to the request before it goes on. Unset fields are left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestEdits {
    /// New method.
    pub method: Option<String>,
    /// New path (without query).
    pub path: Option<String>,
    /// New raw query; `Some("")` removes the query.
    pub query: Option<String>,
    /// Replace every value of each named header.
    pub set_headers: Fields,
    /// Add a value, keeping existing ones.
    pub append_headers: Fields,
    /// Headers to remove.
    pub remove_headers: Vec<String>,
    /// New body.
    pub body: Option<Vec<u8>>,
    /// Headers set on the response this request gets (the upstream's, or a later plugin's
    /// local answer) before any `on_response` runs.
    pub set_response_headers: Fields,
    /// Header values added (keeping existing ones) to the response this request gets, before
    /// any `on_response` runs.
    pub append_response_headers: Fields,
}

impl RequestEdits {
    /// Replaces every value of header `name` with `value`.
    pub fn set_header(mut self, name: &str, value: &str) -> Self {
        self.set_headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Adds a value to header `name`, keeping existing ones.
    pub fn append_header(mut self, name: &str, value: &str) -> Self {
        self.append_headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Removes header `name`.
    pub fn remove_header(mut self, name: &str) -> Self {
        self.remove_headers.push(name.to_ascii_lowercase());
        self
    }

    /// Sets header `name` on the response this request will get, replacing the upstream's.
    /// Cheaper than an `on_response` phase when a plugin only decorates the response (the
    /// gateway makes one guest call less per request).
    pub fn set_response_header(mut self, name: &str, value: &str) -> Self {
        self.set_response_headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Adds a value to header `name` on the response this request will get, keeping the
    /// upstream's values (e.g. `vary`). Like [`RequestEdits::set_response_header`], it saves an
    /// `on_response` phase.
    pub fn append_response_header(mut self, name: &str, value: &str) -> Self {
        self.append_response_headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Rewrites the method.
    pub fn set_method(mut self, method: &str) -> Self {
        self.method = Some(method.to_string());
        self
    }

    /// Rewrites the path (without query).
    pub fn set_path(mut self, path: &str) -> Self {
        self.path = Some(path.to_string());
        self
    }

    /// Rewrites the raw query string (without `?`).
    pub fn set_query(mut self, query: &str) -> Self {
        self.query = Some(query.to_string());
        self
    }

    /// Removes the query string.
    pub fn remove_query(mut self) -> Self {
        self.query = Some(String::new());
        self
    }

    /// Replaces the body (the gateway fixes `content-length`).
    pub fn set_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// The value this edit sets for header `name`, if any (tests).
    pub fn set_header_value(&self, name: &str) -> Option<&str> {
        find_header(&self.set_headers, name)
    }

    /// The value this edit sets for response header `name`, if any (tests).
    pub fn response_header_value(&self, name: &str) -> Option<&str> {
        find_header(&self.set_response_headers, name)
    }

    /// The value this edit appends to response header `name`, if any (tests).
    pub fn appended_response_header_value(&self, name: &str) -> Option<&str> {
        find_header(&self.append_response_headers, name)
    }

    /// True if nothing would change.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The decision of `on_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Proxy the request, with these edits.
    Continue(RequestEdits),
    /// Answer the client now; later plugins and the upstream are skipped.
    Respond(Response),
}

impl Default for Action {
    /// Continue without edits.
    fn default() -> Self {
        Action::Continue(RequestEdits::default())
    }
}

impl Action {
    /// Continue without edits.
    pub fn next() -> Self {
        Self::default()
    }

    /// True for [`Action::Continue`].
    pub fn is_continue(&self) -> bool {
        matches!(self, Action::Continue(_))
    }

    /// The local response, if the action is [`Action::Respond`].
    pub fn response(&self) -> Option<&Response> {
        match self {
            Action::Respond(r) => Some(r),
            Action::Continue(_) => None,
        }
    }

    /// The edits, if the action is [`Action::Continue`].
    pub fn edits(&self) -> Option<&RequestEdits> {
        match self {
            Action::Continue(e) => Some(e),
            Action::Respond(_) => None,
        }
    }
}

impl From<RequestEdits> for Action {
    fn from(e: RequestEdits) -> Self {
        Action::Continue(e)
    }
}

impl From<Response> for Action {
    fn from(r: Response) -> Self {
        Action::Respond(r)
    }
}

/// The upstream (or locally produced) response, seen by `on_response`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseHead {
    /// HTTP status code.
    pub status: u16,
    /// Headers, names lower-case.
    pub headers: Fields,
    /// Present only if [`PluginInfo::needs_response_body`] was declared.
    pub body: Option<Vec<u8>>,
}

impl ResponseHead {
    /// A head with `status` and nothing else (tests).
    pub fn new(status: u16) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }

    /// Appends a header (tests).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Sets the body (tests).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Parses the body as JSON. `Err` if there is no body or it is not valid JSON for `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        let body = self
            .body
            .as_deref()
            .ok_or("response body not available: declare it with PluginInfo::with_response_body")?;
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
    }
}

/// Changes to apply to the response. Unset fields are left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseEdits {
    /// New status code.
    pub status: Option<u16>,
    /// Replace every value of each named header.
    pub set_headers: Fields,
    /// Add a value, keeping existing ones.
    pub append_headers: Fields,
    /// Headers to remove.
    pub remove_headers: Vec<String>,
    /// New body (the gateway fixes `content-length`).
    pub body: Option<Vec<u8>>,
}

impl ResponseEdits {
    /// Replaces every value of header `name` with `value`.
    pub fn set_header(mut self, name: &str, value: &str) -> Self {
        self.set_headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Adds a value to header `name`, keeping existing ones.
    pub fn append_header(mut self, name: &str, value: &str) -> Self {
        self.append_headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Removes header `name`.
    pub fn remove_header(mut self, name: &str) -> Self {
        self.remove_headers.push(name.to_ascii_lowercase());
        self
    }

    /// Rewrites the status code.
    pub fn set_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Replaces the body.
    pub fn set_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// The value this edit sets for header `name`, if any (tests).
    pub fn set_header_value(&self, name: &str) -> Option<&str> {
        find_header(&self.set_headers, name)
    }

    /// True if nothing would change.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Summary handed to `on_log` after the response was sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogEntry {
    /// Name of the matched route.
    pub route: String,
    /// Request method.
    pub method: String,
    /// Normalised request path.
    pub path: String,
    /// Status sent to the client.
    pub status: u16,
    /// Time from request head to response end, in microseconds.
    pub latency_us: u64,
    /// Client address.
    pub client_ip: String,
    /// The request id.
    pub request_id: String,
    /// The upstream address, if the request was proxied.
    pub upstream: Option<String>,
    /// Response bytes sent to the client.
    pub bytes_sent: u64,
}

impl LogEntry {
    /// [`LogEntry::latency_us`] as a [`Duration`].
    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests may unwrap")]
mod tests {
    use super::*;

    #[test]
    fn phases_combine_and_default_to_all() {
        let rr = Phases::REQUEST | Phases::RESPONSE;
        assert!(rr.contains(Phases::REQUEST) && rr.contains(Phases::RESPONSE));
        assert!(!rr.contains(Phases::LOG));
        assert!(!rr.contains(Phases::ALL));
        assert_eq!(rr | Phases::LOG, Phases::ALL);
        assert_eq!(PluginInfo::default().phases, Phases::ALL);
        assert!(Phases::NONE.contains(Phases::NONE) && !Phases::NONE.contains(Phases::LOG));
    }

    #[test]
    fn header_lookup_is_case_insensitive() {
        let req = Request::get("/x").header("X-Api-Key", "k").build();
        assert_eq!(req.header("x-api-key"), Some("k"));
        assert_eq!(req.header("X-API-KEY"), Some("k"));
        assert_eq!(req.header("other"), None);
    }

    #[test]
    fn query_params_are_decoded() {
        let req = Request::get("/x?a=1&api_key=a%2Fb+c&empty").build();
        assert_eq!(req.path, "/x");
        assert_eq!(req.query_param("api_key").as_deref(), Some("a/b c"));
        assert_eq!(req.query_param("empty").as_deref(), Some(""));
        assert_eq!(req.query_param("missing"), None);
        let bad = Request::get("/x?k=%zz%4").build();
        assert_eq!(bad.query_param("k").as_deref(), Some("%zz%4"));
    }

    #[test]
    fn cookies_and_bearer() {
        let req = Request::get("/")
            .header("cookie", "a=1; session=\"tok\"")
            .header("authorization", "bearer  abc ")
            .build();
        assert_eq!(req.cookie("session"), Some("tok"));
        assert_eq!(req.cookie("a"), Some("1"));
        assert_eq!(req.cookie("b"), None);
        assert_eq!(req.bearer_token(), Some("abc"));
        let basic = Request::get("/")
            .header("authorization", "Basic xyz")
            .build();
        assert_eq!(basic.bearer_token(), None);
    }

    #[test]
    fn problem_json_shape() {
        let r = Response::problem(401, "Unauthorized", "missing token");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let v: serde_json::Value = r.json_body().unwrap();
        assert_eq!(v["status"], 401);
        assert_eq!(v["title"], "Unauthorized");
        assert_eq!(v["detail"], "missing token");
    }

    #[test]
    fn with_header_replaces() {
        let r = Response::new(200)
            .with_header("A", "1")
            .with_header("a", "2");
        assert_eq!(r.headers, vec![("a".to_string(), "2".to_string())]);
    }
}
