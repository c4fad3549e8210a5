//! Plain Rust mirrors of the WIT records the gateway exchanges with plugins. The gateway builds
//! and consumes these; the runtime converts them to and from the generated bindings.

/// Header list in wire order; names lower-case, a name may repeat.
pub type Fields = Vec<(String, String)>;

/// What a plugin declared from `init`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PluginInfo {
    /// Buffer the request body and pass it to `on_request`.
    pub needs_request_body: bool,
    /// Buffer the response body and pass it to `on_response`.
    pub needs_response_body: bool,
    /// The phases the host calls; the others are skipped without entering the guest.
    pub phases: Phases,
    /// The request headers `on_request` reads, lower-case (`None`: all of them).
    pub request_headers: Option<Vec<String>>,
}

/// The request phases a plugin implements (WIT `phases` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phases {
    pub on_request: bool,
    pub on_response: bool,
    pub on_log: bool,
}

impl Phases {
    /// Every phase: what a plugin gets unless it says otherwise.
    pub const ALL: Phases = Phases {
        on_request: true,
        on_response: true,
        on_log: true,
    };
    /// No phase at all (a plugin that only runs `init`).
    pub const NONE: Phases = Phases {
        on_request: false,
        on_response: false,
        on_log: false,
    };
}

impl Default for Phases {
    fn default() -> Self {
        Phases::ALL
    }
}

/// The request as a plugin sees it (after routing and path normalisation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyRequest {
    pub method: String,
    /// Normalised path, without the query.
    pub path: String,
    /// Raw query without `?`.
    pub query: Option<String>,
    pub headers: Fields,
    /// Only when the plugin declared `needs_request_body`.
    pub body: Option<Vec<u8>>,
    pub client_ip: String,
    pub route: String,
    pub request_id: String,
    /// "http" or "https".
    pub scheme: String,
    /// Host without port.
    pub host: String,
}

/// Changes to the request; `None`/empty fields are left alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestEdits {
    pub method: Option<String>,
    pub path: Option<String>,
    /// `Some("")` removes the query.
    pub query: Option<String>,
    /// Replace every value of each named header.
    pub set_headers: Fields,
    /// Add values, keeping existing ones.
    pub append_headers: Fields,
    pub remove_headers: Vec<String>,
    pub body: Option<Vec<u8>>,
    /// Set on the response before any `on_response` runs (saves the plugin an `on_response`).
    pub set_response_headers: Fields,
    /// Appended to the response before any `on_response` runs.
    pub append_response_headers: Fields,
}

/// A complete response produced by a plugin instead of proxying.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    pub headers: Fields,
    pub body: Vec<u8>,
}

/// The decision of `on_request`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Proxy the request with these edits.
    Continue(RequestEdits),
    /// Answer the client now; later plugins and the upstream are skipped.
    Respond(LocalResponse),
}

/// The response seen by `on_response`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Fields,
    /// Only when the plugin declared `needs_response_body`.
    pub body: Option<Vec<u8>>,
}

/// Changes to the response; `None`/empty fields are left alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseEdits {
    pub status: Option<u16>,
    pub set_headers: Fields,
    pub append_headers: Fields,
    pub remove_headers: Vec<String>,
    pub body: Option<Vec<u8>>,
}

/// Summary handed to `on_log` after the response was sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogEntry {
    pub route: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub latency_us: u64,
    pub client_ip: String,
    pub request_id: String,
    pub upstream: Option<String>,
    pub bytes_sent: u64,
}

/// What the gateway does when a plugin fails (trap, deadline, memory limit, internal error).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailMode {
    /// Answer 503 (problem+json): the default, since a skipped auth plugin is a hole.
    #[default]
    Closed,
    /// Skip the plugin and go on as if it had continued without edits.
    Open,
}

/// How instances are shared between requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Isolation {
    /// A fresh instance per request (`init` runs on it): no state can leak between requests.
    Request,
    /// Warm instances reused across requests, recycled after N uses or any failure. Much
    /// cheaper; guest globals survive between requests.
    #[default]
    Pooled,
}

/// The request-scoped metadata bag shared by the plugins of one chain (the WIT `context`
/// interface). Small and ordered by insertion; empty at the start of every request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestContext {
    entries: Vec<(String, String)>,
    bytes: usize,
}

impl RequestContext {
    /// Upper bound on keys + values, so a plugin cannot grow a request's memory without limit.
    pub const MAX_BYTES: usize = 64 * 1024;

    /// An empty bag.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value for `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key`; returns false (and changes nothing) if the bag would exceed [`Self::MAX_BYTES`].
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) -> bool {
        let (key, value) = (key.into(), value.into());
        if let Some(slot) = self.entries.iter_mut().find(|(k, _)| *k == key) {
            let bytes = self.bytes - slot.1.len() + value.len();
            if bytes > Self::MAX_BYTES {
                return false;
            }
            self.bytes = bytes;
            slot.1 = value;
        } else {
            let bytes = self.bytes + key.len() + value.len();
            if bytes > Self::MAX_BYTES {
                return false;
            }
            self.bytes = bytes;
            self.entries.push((key, value));
        }
        true
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        let (k, v) = self.entries.remove(i);
        self.bytes -= k.len() + v.len();
        Some(v)
    }

    /// Every entry in insertion order.
    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }

    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_set_replace_remove_and_cap() {
        let mut cx = RequestContext::new();
        assert!(cx.set("a", "1"));
        assert!(cx.set("b", "2"));
        assert!(cx.set("a", "3"));
        assert_eq!(cx.get("a"), Some("3"));
        assert_eq!(cx.entries().len(), 2);
        assert_eq!(cx.remove("a").as_deref(), Some("3"));
        assert_eq!(cx.get("a"), None);
        assert!(!cx.set("big", "x".repeat(RequestContext::MAX_BYTES)));
        assert_eq!(cx.entries(), &[("b".to_string(), "2".to_string())]);
    }
}
