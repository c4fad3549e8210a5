//! `weir:policy/http-client`: outbound HTTP for plugins, limited to the destinations in the
//! plugin's `http_allow` list. Each entry is `scheme://host[:port][/path-prefix]`; a request
//! matches when scheme, host and port are equal and its path is under the prefix (segment-wise,
//! with no `..`). Redirects are not followed (the guest sees the 3xx), response bodies are capped.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::bindings::weir::policy::http_client::{Host, OutboundRequest, OutboundResponse};
use crate::plugin::PluginShared;
use crate::state::HostState;

/// Response bodies larger than this fail the call.
pub const MAX_RESPONSE_BODY: usize = 1024 * 1024;
/// Requests per `send-all`.
pub const MAX_BATCH: usize = 32;

/// One allowed destination (parsed `http_allow` entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AllowRule {
    scheme: String,
    host: String,
    port: u16,
    /// Without trailing `/`; empty = any path.
    prefix: String,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

struct Target {
    scheme: String,
    host: String,
    port: u16,
    path: String,
}

fn parse_target(s: &str) -> Result<Target, String> {
    let uri: Uri = s.parse().map_err(|e| format!("invalid URL `{s}`: {e}"))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| format!("URL `{s}` has no scheme"))?
        .to_ascii_lowercase();
    let port_default = default_port(&scheme)
        .ok_or_else(|| format!("URL `{s}`: only http and https are supported"))?;
    let auth = uri
        .authority()
        .ok_or_else(|| format!("URL `{s}` has no host"))?;
    if auth.as_str().contains('@') {
        return Err(format!("URL `{s}`: user info is not allowed"));
    }
    Ok(Target {
        scheme,
        host: auth.host().to_ascii_lowercase(),
        port: auth.port_u16().unwrap_or(port_default),
        path: uri.path().to_string(),
    })
}

impl AllowRule {
    /// Parses one `http_allow` entry.
    pub(crate) fn parse(entry: &str) -> Result<Self, String> {
        let t = parse_target(entry)?;
        if entry.contains('?') || entry.contains('#') {
            return Err(format!(
                "`{entry}`: query or fragment not allowed in http_allow"
            ));
        }
        Ok(AllowRule {
            scheme: t.scheme,
            host: t.host,
            port: t.port,
            prefix: t.path.trim_end_matches('/').to_string(),
        })
    }

    fn matches(&self, t: &Target) -> bool {
        if t.scheme != self.scheme || t.host != self.host || t.port != self.port {
            return false;
        }
        if self.prefix.is_empty() {
            return true;
        }
        let lower = t.path.to_ascii_lowercase();
        let dotty = t.path.split('/').any(|seg| seg == "." || seg == "..")
            || lower.contains("%2e")
            || lower.contains("%2f");
        if dotty {
            return false;
        }
        t.path == self.prefix
            || t.path
                .strip_prefix(&self.prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// Checks a URL against the allow list; the error says why, for the guest.
pub(crate) fn check_allowed(rules: &[AllowRule], url: &str) -> Result<(), String> {
    let t = parse_target(url)?;
    if rules.iter().any(|r| r.matches(&t)) {
        Ok(())
    } else {
        Err(format!(
            "destination `{url}` is not allowed by this plugin's http_allow list"
        ))
    }
}

/// The shared outbound client (HTTP/1.1 and HTTP/2, TLS with webpki roots).
#[derive(Clone, Debug)]
pub(crate) struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpClient {
    pub(crate) fn new() -> Result<Self, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(std::sync::Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .map_err(|e| format!("TLS setup: {e}"))?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Ok(HttpClient { client })
    }

    /// Sends one request; fails on timeout, transport error, or a body over `max_body`.
    pub(crate) async fn send(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<(http::response::Parts, Bytes), String> {
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, max_body)
                .collect()
                .await
                .map_err(|e| format!("response body: {e}"))?
                .to_bytes();
            Ok((parts, body))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| format!("timed out after {timeout:?}"))?
    }

    /// GET helper (JWKS fetches).
    pub(crate) async fn get(
        &self,
        url: &str,
        timeout: Duration,
        max_body: usize,
    ) -> Result<(u16, Bytes), String> {
        let req = Request::get(url)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let (parts, body) = self.send(req, timeout, max_body).await?;
        Ok((parts.status.as_u16(), body))
    }
}

fn build_request(r: OutboundRequest) -> Result<Request<Full<Bytes>>, String> {
    let method = Method::from_bytes(r.method.as_bytes())
        .map_err(|_| format!("invalid method `{}`", r.method))?;
    let mut b = Request::builder().method(method).uri(&r.url);
    for (name, value) in &r.headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name `{name}`"))?;
        if name == http::header::HOST
            || name == http::header::CONNECTION
            || name == http::header::TRANSFER_ENCODING
        {
            return Err(format!("header `{name}` is set by the host"));
        }
        let value = http::HeaderValue::from_str(value)
            .map_err(|_| format!("invalid value for header `{name}`"))?;
        b = b.header(name, value);
    }
    b.body(Full::new(Bytes::from(r.body.unwrap_or_default())))
        .map_err(|e| e.to_string())
}

async fn send_one(plugin: &PluginShared, r: OutboundRequest) -> Result<OutboundResponse, String> {
    check_allowed(&plugin.http_allow, &r.url)?;
    let max = plugin.services.http_timeout;
    let timeout = r
        .timeout_ms
        .map_or(max, |ms| Duration::from_millis(u64::from(ms)).min(max));
    let req = build_request(r)?;
    let (parts, body) = plugin
        .services
        .http
        .send(req, timeout, MAX_RESPONSE_BODY)
        .await?;
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    Ok(OutboundResponse {
        status: parts.status.as_u16(),
        headers,
        body: body.to_vec(),
    })
}

impl Host for HostState {
    async fn send(&mut self, request: OutboundRequest) -> Result<OutboundResponse, String> {
        self.host_call_begin();
        let plugin = self.plugin.clone();
        let r = send_one(&plugin, request).await;
        self.host_call_end();
        r
    }

    async fn send_all(
        &mut self,
        requests: Vec<OutboundRequest>,
    ) -> Vec<Result<OutboundResponse, String>> {
        if requests.len() > MAX_BATCH {
            let n = requests.len();
            return requests
                .iter()
                .map(|_| {
                    Err(format!(
                        "send-all takes at most {MAX_BATCH} requests, got {n}"
                    ))
                })
                .collect();
        }
        self.host_call_begin();
        let plugin = self.plugin.clone();
        let r =
            futures::future::join_all(requests.into_iter().map(|req| send_one(&plugin, req))).await;
        self.host_call_end();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(entries: &[&str]) -> Vec<AllowRule> {
        entries
            .iter()
            .map(|e| AllowRule::parse(e).unwrap())
            .collect()
    }

    #[test]
    fn allow_list_matching() {
        let r = rules(&["https://api.example.com", "http://127.0.0.1:8080/v1/"]);
        assert!(check_allowed(&r, "https://api.example.com/anything?q=1").is_ok());
        assert!(check_allowed(&r, "https://API.example.com:443/x").is_ok());
        assert!(
            check_allowed(&r, "http://api.example.com/x").is_err(),
            "scheme"
        );
        assert!(
            check_allowed(&r, "https://api.example.com:8443/x").is_err(),
            "port"
        );
        assert!(
            check_allowed(&r, "https://api.example.com.evil.net/").is_err(),
            "host suffix"
        );
        assert!(
            check_allowed(&r, "https://user@api.example.com/").is_err(),
            "userinfo"
        );
        assert!(check_allowed(&r, "http://127.0.0.1:8080/v1").is_ok());
        assert!(check_allowed(&r, "http://127.0.0.1:8080/v1/users").is_ok());
        assert!(
            check_allowed(&r, "http://127.0.0.1:8080/v10").is_err(),
            "segment boundary"
        );
        assert!(
            check_allowed(&r, "http://127.0.0.1:8080/v1/../admin").is_err(),
            "dot segments"
        );
        assert!(
            check_allowed(&r, "http://127.0.0.1:8080/v1/%2e%2e/admin").is_err(),
            "encoded dots"
        );
        assert!(
            check_allowed(&r, "http://127.0.0.1/v1/").is_err(),
            "default port differs"
        );
        assert!(check_allowed(&r, "ftp://api.example.com/").is_err());
        assert!(AllowRule::parse("api.example.com").is_err());
        assert!(AllowRule::parse("https://a.example/?x").is_err());
    }
}
