//! Outbound HTTP from a plugin (token introspection, external authz, webhooks).
//!
//! Only destinations granted to the plugin in the route config (`http = { allow = [...] }`)
//! are reachable; a plugin that never calls these functions does not even import the capability.

use crate::backend;
use crate::types::{Fields, find_header};

/// A request to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundRequest {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Absolute URL.
    pub url: String,
    /// Headers to send.
    pub headers: Fields,
    /// Body to send.
    pub body: Option<Vec<u8>>,
    /// Overall timeout in milliseconds (the gateway applies its own cap).
    pub timeout_ms: Option<u32>,
}

impl OutboundRequest {
    /// A `GET` of `url`.
    pub fn get(url: &str) -> Self {
        Self::new("GET", url)
    }

    /// A `POST` of `body` to `url`.
    pub fn post(url: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            body: Some(body.into()),
            ..Self::new("POST", url)
        }
    }

    /// A request with `method` to `url`.
    pub fn new(method: &str, url: &str) -> Self {
        Self {
            method: method.to_string(),
            url: url.to_string(),
            ..Self::default()
        }
    }

    /// Appends a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Sets the timeout.
    pub fn timeout_ms(mut self, ms: u32) -> Self {
        self.timeout_ms = Some(ms);
        self
    }
}

/// A received response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-case.
    pub headers: Fields,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl OutboundResponse {
    /// A response with `status` and `body` (tests).
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Parses the body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("invalid JSON body: {e}"))
    }
}

/// Sends one request and waits for the response.
pub fn send(request: &OutboundRequest) -> Result<OutboundResponse, String> {
    backend::http_send(request)
}

/// Sends every request concurrently; results are in the same order.
pub fn send_all(requests: &[OutboundRequest]) -> Vec<Result<OutboundResponse, String>> {
    backend::http_send_all(requests)
}
