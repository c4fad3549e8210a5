//! The fuzz targets' bodies, shared by `fuzz/fuzz_targets/*.rs` (libFuzzer, nightly) and
//! `tests/fuzz_regressions.rs` (stable: replays `fuzz/corpus/<target>/*` and runs a seeded
//! random loop), so both check exactly the same properties. Every function panics on a
//! property violation and on nothing else.
//!
//! - [`config()`] runs `weir::config::parse` on arbitrary text;
//! - [`path()`] runs `hygiene::normalize_path`;
//! - [`headers()`] runs arbitrary header lists through `check_framing`, `request_id`,
//!   `trace_context`, `strip_hop_by_hop` and `forwarded_headers`, then onto the wire;
//! - [`plugin_output()`] runs arbitrary guest output (`RequestEdits`, `LocalResponse`,
//!   `ResponseEdits`) applied by the gateway's own functions, then onto the wire.
//!
//! "Onto the wire" means the resulting message is written by hyper (the gateway's HTTP/1.1
//! client or server) into an in-memory pipe and the bytes are checked by [`wire`], a strict
//! RFC 9112 reader: a message must be well formed, framed unambiguously, and followed by nothing
//! (bytes after it would be read as a second, smuggled message). hyper aborting a message it
//! cannot frame (a truncated message, then a closed connection) is accepted: no peer can take
//! that for a valid message.
//!
//! Input formats are line-based text so seed files can be written and read by people.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use weir::body::{self, ProxyBody};
use weir::proxy::forward::Outgoing;
use weir::proxy::hygiene;
use weir_wasm_host as host;

/// Names of the fuzz targets; also the corpus directory names.
pub const TARGETS: [&str; 4] = ["config", "path", "headers", "plugin_output"];

/// Runs target `name` on `data` (the regression test's dispatcher).
pub fn run(name: &str, data: &[u8]) {
    match name {
        "config" => config(data),
        "path" => path(data),
        "headers" => headers(data),
        "plugin_output" => plugin_output(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// config

/// `config::parse` never panics; every error it reports points inside the text; a valid config
/// builds a router that can be queried and rewrites paths without panicking.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match weir::config::parse(
        &text,
        "fuzz.toml",
        Path::new("/nonexistent/weir-fuzz"),
        None,
    ) {
        Err(errs) => {
            assert!(!errs.0.is_empty(), "Err with no errors");
            let lines = text.lines().count().max(1) + 1;
            for e in &errs.0 {
                assert!(!e.message.is_empty(), "empty error message: {e:?}");
                if let Some(l) = e.line {
                    assert!(
                        l >= 1 && l <= lines,
                        "line {l} outside the text ({lines}): {e}"
                    );
                }
                let _ = e.to_string();
            }
        }
        Ok(cfg) => {
            let routes: Vec<_> = cfg
                .routes
                .iter()
                .cloned()
                .map(|r| (Arc::new(r), ()))
                .collect();
            let n = routes.len();
            let router = weir::router::Router::new(routes);
            assert_eq!(router.len(), n);
            let h = HeaderMap::new();
            for p in ["/", "/api/users/1", "/a/b/"] {
                let _ = router.find("example.com", p, &Method::GET, &h);
                for (r, _) in router.entries() {
                    let up = weir::router::upstream_path(r, p);
                    if weir::router::path_matches(&r.path, p) && r.rewrite.is_none() {
                        assert!(
                            up.starts_with('/'),
                            "route {} rewrote {p} to {up:?}",
                            r.name
                        );
                    }
                }
            }
        }
    }
}

/// Mirrors `hygiene::GATEWAY_SET` plus Host: never removed because `Connection` names them.
const GATEWAY_SET: [&str; 6] = [
    "host",
    "x-request-id",
    "traceparent",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

// ---------------------------------------------------------------------------------------------
// path

/// `normalize_path` never panics; its output is absolute, has no empty, `.` or `..` segment
/// (not even percent-encoded), no encoded unreserved character, only upper-case escapes, is a
/// fixed point, and is a valid URI path whenever the input was.
pub fn path(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    let result = hygiene::normalize_path(&raw);
    if raw.starts_with('/') && !raw.contains(['%', '\\', ';']) {
        assert!(result.is_ok(), "{raw:?} refused: {result:?}");
    }
    let Ok(p) = result else { return };
    check_normalized(&p);
    assert!(p.len() <= raw.len() + 1, "{raw:?} grew to {p:?}");
    let raw_is_uri_path = !raw.contains(['?', '#'])
        && raw
            .parse::<http::uri::PathAndQuery>()
            .is_ok_and(|pq| pq.as_str() == raw);
    if raw_is_uri_path {
        let pq = p.parse::<http::uri::PathAndQuery>();
        assert!(
            pq.as_ref().is_ok_and(|pq| pq.as_str() == p),
            "{raw:?} → {p:?} is no longer a URI path: {pq:?}"
        );
    }
}

/// What the gateway promises of every normalised path (routing, policies and forwarding rely
/// on it).
fn check_normalized(p: &str) {
    assert!(p.starts_with('/'), "{p:?} is not absolute");
    assert_eq!(
        hygiene::normalize_path(p).as_deref(),
        Ok(p),
        "not a fixed point"
    );
    let inner = p.strip_prefix('/').unwrap_or(p);
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    if inner.is_empty() {
        return;
    }
    for seg in inner.split('/') {
        assert!(!seg.is_empty(), "{p:?} has an empty segment");
        let decoded = percent_decode(seg);
        assert!(
            decoded != b"." && decoded != b"..",
            "{p:?} has a dot segment {seg:?}"
        );
        let b = seg.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                let (h, l) = (b[i + 1], b[i + 2]);
                assert!(
                    h.is_ascii_hexdigit()
                        && l.is_ascii_hexdigit()
                        && !h.is_ascii_lowercase()
                        && !l.is_ascii_lowercase(),
                    "{p:?}: bad escape"
                );
                let c = u8::from_str_radix(&seg[i + 1..i + 3], 16).unwrap();
                assert!(
                    !(c.is_ascii_alphanumeric() || b"-._~/\\".contains(&c)),
                    "{p:?} still encodes {:?}",
                    c as char
                );
                i += 3;
            } else {
                i += 1;
            }
        }
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |j: usize| {
            b.get(j)
                .and_then(|c| (*c as char).to_digit(16))
                .map(|d| d as u8)
        };
        match (b[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push(h * 16 + l);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// input decoding

/// Unescapes `\n`, `\r`, `\t`, `\0`, `\\` and `\xHH` so seed files can hold any byte.
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 1 < s.len() {
            let hex = |j: usize| {
                s.get(j)
                    .and_then(|c| (*c as char).to_digit(16))
                    .map(|d| d as u8)
            };
            match s[i + 1] {
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'0' => out.push(0),
                b'\\' => out.push(b'\\'),
                b'x' => match (hex(i + 2), hex(i + 3)) {
                    (Some(h), Some(l)) => {
                        out.push(h * 16 + l);
                        i += 4;
                        continue;
                    }
                    _ => out.extend_from_slice(b"\\x"),
                },
                c => out.extend_from_slice(&[b'\\', c]),
            }
            i += 2;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// A WIT `string` from fuzz bytes: guests can only hand the host valid UTF-8.
fn wit_string(s: &[u8]) -> String {
    String::from_utf8_lossy(&unescape(s)).into_owned()
}

fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

/// `name: value` → (name, value), both unescaped; the first `:` splits.
fn split_field(line: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let i = line.iter().position(|&b| b == b':')?;
    let v = &line[i + 1..];
    let v = v.strip_prefix(b" ").unwrap_or(v);
    Some((unescape(&line[..i]), unescape(v)))
}

/// Strips optional whitespace (SP and HTAB only, RFC 9110 §5.6.3).
fn trim(b: &[u8]) -> &[u8] {
    let ows = |c: &u8| *c == b' ' || *c == b'\t';
    let s = b.iter().position(|c| !ows(c)).unwrap_or(b.len());
    let e = b.iter().rposition(|c| !ows(c)).map_or(s, |e| e + 1);
    &b[s..e.max(s)]
}

// ---------------------------------------------------------------------------------------------
// headers

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Input: a first line of flags (`h10`/`h2` for the version, else HTTP/1.1; `upgrade`;
/// `trusted` for a peer inside the trusted proxies; `https`), then `name: value` lines as the
/// client sent them (escapes allowed; fields hyper would refuse are dropped, as hyper would).
///
/// Properties: `check_framing` accepts only unambiguous framing; the request id and trace
/// context are well formed; no hop-by-hop header survives stripping (but `TE: trailers` and the
/// upgrade handshake); end-to-end headers survive untouched; the forwarding headers tell the
/// truth; and the message hyper then writes upstream is valid HTTP/1.1.
pub fn headers(data: &[u8]) {
    let mut it = lines(data);
    let flags = String::from_utf8_lossy(it.next().unwrap_or_default()).to_ascii_lowercase();
    let version = if flags.contains("h10") {
        Version::HTTP_10
    } else if flags.contains("h2") {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let mut h = HeaderMap::new();
    for line in it {
        let Some((n, v)) = split_field(line) else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(&n), HeaderValue::from_bytes(&v)) {
            h.append(n, v);
        }
    }
    // hyper's server answers 400 itself to a Content-Length that is not one u64.
    if h.get_all("content-length").iter().any(|v| {
        v.to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_none()
    }) {
        return;
    }
    let original = h.clone();

    // Step 1: framing.
    let framing = hygiene::check_framing(version, &h);
    let cls: Vec<HeaderValue> = h.get_all("content-length").iter().cloned().collect();
    let te = h.contains_key("transfer-encoding");
    if framing.is_ok() {
        assert!(cls.len() <= 1, "several Content-Length accepted");
        assert!(!te || cls.is_empty(), "CL + TE accepted");
        if let Some(v) = cls.first() {
            assert!(
                !v.is_empty() && v.as_bytes().iter().all(u8::is_ascii_digit),
                "Content-Length {v:?} accepted"
            );
        }
        if version == Version::HTTP_11 {
            assert_eq!(h.get_all("host").iter().count(), 1, "Host count accepted");
        }
    } else {
        return;
    }

    // Step 2: identity.
    let id = hygiene::request_id(&mut h);
    assert!(
        !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()),
        "request id {id:?}"
    );
    assert_eq!(
        h.get("x-request-id").map(HeaderValue::as_bytes),
        Some(id.as_bytes())
    );
    let trace = hygiene::trace_context(&mut h);
    let tp = h
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    assert!(
        parts.len() == 4
            && parts[0] == "00"
            && hex(parts[1], 32)
            && parts[1] == trace
            && parts[1].bytes().any(|b| b != b'0')
            && hex(parts[2], 16)
            && parts[2].bytes().any(|b| b != b'0')
            && hex(parts[3], 2),
        "traceparent {tp:?} (trace {trace:?})"
    );

    // Step 4: hop-by-hop and forwarding headers.
    let keep_upgrade = flags.contains("upgrade") && hygiene::is_upgrade(&h);
    let named: Vec<String> = original
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let before = h.clone();
    hygiene::strip_hop_by_hop(&mut h, keep_upgrade);
    for name in HOP_BY_HOP
        .iter()
        .map(|s| s.to_string())
        .chain(named.iter().cloned())
    {
        let vals: Vec<&[u8]> = h
            .get_all(name.as_str())
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        let allowed: &[&[u8]] = match name.as_str() {
            "te" => &[b"trailers"],
            "connection" if keep_upgrade => &[b"upgrade"],
            "upgrade" if keep_upgrade => &[],
            _ => &[],
        };
        if name == "upgrade" && keep_upgrade {
            continue;
        }
        // Headers the gateway sets itself cannot be named away by `Connection`.
        if GATEWAY_SET.contains(&name.as_str()) {
            continue;
        }
        assert!(
            vals.iter().all(|v| allowed.contains(v)) && vals.len() <= 1,
            "{name} survived stripping: {vals:?}"
        );
    }
    for (name, _) in before.iter() {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || named.iter().any(|x| x == n) {
            continue;
        }
        let a: Vec<_> = before.get_all(name).iter().collect();
        let b: Vec<_> = h.get_all(name).iter().collect();
        assert_eq!(a, b, "end-to-end header {n} changed");
    }

    let trusted: Vec<ipnet::IpNet> =
        vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
    let peer: IpAddr = if flags.contains("trusted") {
        "10.9.8.7".parse().unwrap()
    } else {
        "198.51.100.20".parse().unwrap()
    };
    let scheme = if flags.contains("https") {
        "https"
    } else {
        "http"
    };
    let host_hdr = h
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("fallback.example")
        .to_string();
    let prior_xff: Vec<String> = h
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let client = hygiene::forwarded_headers(
        &mut h,
        peer,
        &trusted,
        scheme,
        &host_hdr,
        &HeaderValue::from_static("8080"),
    );
    let xff: Vec<&HeaderValue> = h.get_all("x-forwarded-for").iter().collect();
    assert_eq!(xff.len(), 1, "X-Forwarded-For fields: {xff:?}");
    let chain = xff[0].to_str().unwrap_or_default();
    assert!(
        chain.ends_with(&peer.to_string()),
        "XFF {chain:?} does not end with the peer"
    );
    if trusted.iter().any(|n| n.contains(&peer)) {
        assert!(
            client == peer || prior_xff.iter().any(|a| a.parse::<IpAddr>() == Ok(client)),
            "client {client} is neither the peer nor in the chain"
        );
    } else {
        assert_eq!(
            client, peer,
            "untrusted peer's client address taken from XFF"
        );
        assert_eq!(chain, peer.to_string(), "untrusted XFF kept");
        assert_eq!(
            h.get("x-forwarded-proto").map(HeaderValue::as_bytes),
            Some(scheme.as_bytes())
        );
    }
    assert!(h.contains_key("x-forwarded-proto"));

    // Onto the wire, with the body the client's framing announced.
    if version == Version::HTTP_2 || keep_upgrade {
        return; // h2 → h1 translation and upgrades are not this target's business.
    }
    let body = match (
        te,
        cls.first()
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok()),
    ) {
        (true, _) => unknown_length_body(b"chunk-one chunk-two"),
        (false, Some(n)) if n <= 64 * 1024 => body::full(vec![b'x'; n]),
        (false, Some(_)) => return,
        (false, None) => body::empty(),
    };
    let mut parts = Request::new(()).into_parts().0;
    parts.headers = h;
    let out = Outgoing {
        parts,
        path: "/upstream/path".into(),
        body: Some(body),
    };
    let (bytes, closed) = wire::send_upstream(out);
    wire::check(&bytes, wire::Kind::Request, closed).unwrap_or_else(|e| {
        panic!(
            "invalid upstream request: {e}\n{}",
            String::from_utf8_lossy(&bytes)
        )
    });
}

fn unknown_length_body(data: &'static [u8]) -> ProxyBody {
    let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> = data
        .chunks(9)
        .map(|c| Ok(hyper::body::Frame::data(Bytes::from_static(c))))
        .collect();
    body::boxed(http_body_util::StreamBody::new(futures::stream::iter(
        chunks,
    )))
}

// ---------------------------------------------------------------------------------------------
// plugin output

/// Guest output for one chain, as directives, one per line (values unescaped, WIT strings are
/// UTF-8 so invalid bytes become U+FFFD):
///
/// ```text
/// request POST 11          # the client request: method and body length (optional)
/// next                     # starts the next plugin's request edits
/// method PATCH | path /x/../y | query a=1 | body hello
/// set name: value | append name: value | remove name
/// respond 401              # this plugin answers: status; set/append lines now build it
/// response 200 5           # the upstream's status and body length (when nobody answered)
/// rsp-status 204 | rsp-set n: v | rsp-append n: v | rsp-remove n | rsp-body text
/// ```
///
/// The gateway's own functions apply them (`policy::apply_request_edits`, `buffered_body`,
/// `local_response`, `apply_response_edits`); the upstream request and the client response are
/// then written by hyper and checked by [`wire`]. A plugin value the gateway refuses (an invalid
/// method, path or query) must be an `Internal` error (answered 500), never a panic.
pub fn plugin_output(data: &[u8]) {
    let mut req_method = Method::GET;
    let mut req_body = 0usize;
    let mut chain: Vec<host::RequestEdits> = vec![host::RequestEdits::default()];
    let mut respond: Option<host::LocalResponse> = None;
    let mut rsp = host::ResponseEdits::default();
    let mut upstream = (200u16, 5usize);
    for line in lines(data) {
        let (word, rest) = match line.iter().position(|&b| b == b' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &b""[..]),
        };
        let nums = || -> Vec<usize> {
            String::from_utf8_lossy(rest)
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        };
        if word == b"next" {
            if respond.is_none() && chain.len() < 8 {
                chain.push(host::RequestEdits::default());
            }
            continue;
        }
        let edits = chain.last_mut().expect("never empty");
        match word {
            b"request" => {
                let mut w = rest.split(|&b| b == b' ');
                if let Some(m) = w.next().and_then(|m| Method::from_bytes(m).ok()) {
                    req_method = m;
                }
                req_body = w
                    .next()
                    .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok())
                    .unwrap_or(0)
                    .min(64 * 1024);
            }
            b"method" => edits.method = Some(wit_string(rest)),
            b"path" => edits.path = Some(wit_string(rest)),
            b"query" => edits.query = Some(wit_string(rest)),
            b"body" => edits.body = Some(unescape(rest)),
            b"remove" => edits.remove_headers.push(wit_string(rest)),
            b"set" | b"append" => {
                if let Some((n, v)) = split_field(rest) {
                    let f = (lossy(n), lossy(v));
                    match (&mut respond, word) {
                        (Some(r), _) => r.headers.push(f),
                        (None, b"set") => edits.set_headers.push(f),
                        (None, _) => edits.append_headers.push(f),
                    }
                }
            }
            b"respond" => {
                let status = nums().first().copied().unwrap_or(0).min(u16::MAX as usize) as u16;
                respond = Some(host::LocalResponse {
                    status,
                    headers: Vec::new(),
                    body: Vec::new(),
                });
            }
            b"respond-body" => {
                if let Some(r) = &mut respond {
                    r.body = unescape(rest);
                }
            }
            b"response" => {
                let n = nums();
                // hyper's client hands the gateway 101 or a final 200–599 (it consumes other
                // 1xx itself); relaying an upstream's invalid status is not this target's topic.
                let status = n
                    .first()
                    .copied()
                    .filter(|s| *s == 101 || (200..600).contains(s))
                    .unwrap_or(200);
                upstream = (status as u16, n.get(1).copied().unwrap_or(0).min(64 * 1024));
            }
            b"rsp-status" => {
                rsp.status = nums().first().map(|&s| s.min(u16::MAX as usize) as u16);
            }
            b"rsp-set" | b"rsp-append" => {
                if let Some((n, v)) = split_field(rest) {
                    let f = (lossy(n), lossy(v));
                    if word == b"rsp-set" {
                        rsp.set_headers.push(f);
                    } else {
                        rsp.append_headers.push(f);
                    }
                }
            }
            b"rsp-remove" => rsp.remove_headers.push(wit_string(rest)),
            b"rsp-body" => rsp.body = Some(unescape(rest)),
            _ => {}
        }
    }

    // The request as it leaves the hygiene steps (proxy/mod.rs 1–5).
    let mut req = Request::builder()
        .method(req_method)
        .uri("/orders/42?page=2")
        .header("host", "api.example.com")
        .header("accept", "application/json")
        .header("x-forwarded-for", "198.51.100.20")
        .header("x-request-id", "0123456789abcdef0123456789abcdef")
        .body(())
        .unwrap();
    if req_body > 0 {
        req.headers_mut()
            .insert("content-length", HeaderValue::from(req_body));
    }
    let (parts, ()) = req.into_parts();
    let mut out = Outgoing {
        parts,
        path: "/orders/42".into(),
        body: Some(if req_body > 0 {
            body::full(vec![b'r'; req_body])
        } else {
            body::empty()
        }),
    };

    // Request phase: each plugin's edits in order, as ChainSession::on_request applies them.
    let mut buffered: Option<Bytes> = None;
    for edits in chain {
        match weir::policy::apply_request_edits(&mut out, edits) {
            Ok(Some(b)) => buffered = Some(b),
            Ok(None) => {}
            Err(e) => {
                assert!(
                    matches!(e, weir::error::GatewayError::Internal(_)),
                    "refused plugin output must be an internal error: {e:?}"
                );
                return;
            }
        }
        check_normalized(&out.path);
    }

    let response = match respond {
        Some(r) => weir::policy::local_response(r, "0123456789abcdef0123456789abcdef"),
        None => {
            if let Some(b) = buffered {
                out.body = Some(weir::policy::buffered_body(&mut out.parts.headers, b));
            }
            let (bytes, closed) = wire::send_upstream(out);
            wire::check(&bytes, wire::Kind::Request, closed).unwrap_or_else(|e| {
                panic!(
                    "invalid upstream request: {e}\n{}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            let mut res = Response::new(body::full(vec![b'u'; upstream.1]));
            *res.status_mut() = StatusCode::from_u16(upstream.0).unwrap_or(StatusCode::OK);
            res.headers_mut()
                .insert("content-type", HeaderValue::from_static("text/plain"));
            let switching = res.status() == StatusCode::SWITCHING_PROTOCOLS;
            hygiene::strip_response_hop_by_hop(res.headers_mut(), switching);
            if switching {
                return; // A 101 is spliced into a tunnel, never run through the policies.
            }
            res
        }
    };

    // Response phase (ChainSession::on_response_upto), then what `finish` adds.
    let (mut parts, mut b) = response.into_parts();
    if parts.status != StatusCode::SWITCHING_PROTOCOLS
        && let Some(nb) = weir::policy::apply_response_edits(&mut parts, rsp)
    {
        b = weir::policy::buffered_response_body(&mut parts, nb);
    }
    parts
        .headers
        .entry("x-request-id")
        .or_insert(HeaderValue::from_static("0123456789abcdef0123456789abcdef"));
    let (bytes, closed) = wire::serve(Response::from_parts(parts, b));
    wire::check(&bytes, wire::Kind::Response, closed).unwrap_or_else(|e| {
        panic!(
            "invalid client response: {e}\n{}",
            String::from_utf8_lossy(&bytes)
        )
    });
}

fn lossy(b: Vec<u8>) -> String {
    String::from_utf8_lossy(&b).into_owned()
}

// ---------------------------------------------------------------------------------------------
// wire

/// hyper writing a message into a pipe, and a strict reader of what came out.
pub mod wire {
    use super::*;
    use futures::FutureExt;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
    }

    /// Everything the other side writes until it closes or goes idle. The pipe is in memory
    /// and the writer runs on this thread, so a writer that produced nothing new after a few
    /// scheduler turns is waiting (for a response, or for nothing): it is done. Returns the
    /// bytes and whether the writer closed the connection.
    async fn collect(mut io: DuplexStream) -> (Vec<u8>, bool) {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut idle_turns = 0;
        while idle_turns < 16 && buf.len() < 16 << 20 {
            match io.read(&mut chunk).now_or_never() {
                Some(Ok(0)) | Some(Err(_)) => return (buf, true),
                Some(Ok(n)) => {
                    buf.extend_from_slice(&chunk[..n]);
                    idle_turns = 0;
                }
                None => {
                    idle_turns += 1;
                    tokio::task::yield_now().await;
                }
            }
        }
        (buf, false)
    }

    /// Stops a connection task; a panic inside it is a failure of the property. (hyper's
    /// debug assertions catch a Content-Length header that disagrees with the body; release
    /// builds trust the header and write the body anyway, desynchronising the peer.)
    async fn reap<T>(task: tokio::task::JoinHandle<T>) {
        task.abort();
        if let Err(e) = task.await
            && e.is_panic()
        {
            let p = e.into_panic();
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("hyper panicked writing the message: {msg}");
        }
    }

    /// The request bytes hyper's HTTP/1.1 client writes for `out`, built as
    /// `proxy::forward::send` builds it (upstream URI from path and query, Host from the URI
    /// when absent) and sent in origin form as hyper-util's pooled client does.
    pub fn send_upstream(out: Outgoing) -> (Vec<u8>, bool) {
        let Outgoing {
            mut parts,
            path,
            body,
        } = out;
        let pq = match parts.uri.query() {
            Some(q) if !q.is_empty() => format!("{path}?{q}"),
            _ => path,
        };
        let Ok(uri) = http::Uri::builder()
            .scheme("http")
            .authority("127.0.0.1:8080")
            .path_and_query(pq.as_str())
            .build()
        else {
            return (Vec::new(), true); // forward::send answers 400 without sending anything.
        };
        if !parts.headers.contains_key("host") {
            parts
                .headers
                .insert("host", HeaderValue::from_static("127.0.0.1:8080"));
        }
        // hyper-util's pooled client (the gateway's) sends the origin form.
        let origin = uri.path_and_query().map_or_else(
            || http::Uri::from_static("/"),
            |pq| http::Uri::from(pq.clone()),
        );
        let mut req = Request::new(body.unwrap_or_else(body::empty));
        *req.method_mut() = parts.method;
        *req.uri_mut() = origin;
        *req.headers_mut() = parts.headers;
        *req.version_mut() = Version::HTTP_11;
        RT.with(|rt| {
            rt.block_on(async {
                let (a, b) = tokio::io::duplex(1 << 20);
                let Ok((mut sender, conn)) =
                    hyper::client::conn::http1::handshake::<_, ProxyBody>(TokioIo::new(a)).await
                else {
                    return (Vec::new(), true);
                };
                let conn = tokio::spawn(conn);
                let send = tokio::spawn(sender.send_request(req));
                let got = collect(b).await;
                reap(send).await;
                reap(conn).await;
                got
            })
        })
    }

    /// The response bytes hyper's HTTP/1.1 server writes for `res`, answering a plain GET.
    pub fn serve(res: Response<ProxyBody>) -> (Vec<u8>, bool) {
        RT.with(|rt| {
            rt.block_on(async {
                let (a, mut b) = tokio::io::duplex(1 << 20);
                let slot = std::sync::Mutex::new(Some(res));
                let svc = hyper::service::service_fn(move |_req| {
                    let r = slot.lock().ok().and_then(|mut s| s.take());
                    async move { r.ok_or("second request on a one-shot connection") }
                });
                let conn = tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(a), svc),
                );
                let _ = b
                    .write_all(b"GET /x HTTP/1.1\r\nhost: api.example.com\r\n\r\n")
                    .await;
                let got = collect(b).await;
                reap(conn).await;
                got
            })
        })
    }

    /// Which message `check` expects.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Kind {
        Request,
        /// A response to a GET.
        Response,
    }

    /// Accepts: nothing written; a message cut short by a closed connection (hyper aborted it);
    /// or exactly one complete, valid message and not a byte more. `closed`: the writer closed
    /// the connection after these bytes (else it went idle, waiting).
    pub fn check(bytes: &[u8], kind: Kind, closed: bool) -> Result<(), String> {
        if bytes.is_empty() {
            return Ok(());
        }
        match parse(bytes, kind, closed)? {
            Some(n) if n == bytes.len() => Ok(()),
            Some(n) => Err(format!(
                "{} bytes after the end of the message",
                bytes.len() - n
            )),
            None if closed => Ok(()),
            None => Err("the writer stopped in the middle of a message".into()),
        }
    }

    fn is_tchar(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
    }

    /// Parses one message: `Ok(Some(len))` when complete, `Ok(None)` when more bytes are
    /// needed (or, with `eof`, a close-delimited body ended), `Err` on anything invalid.
    pub fn parse(buf: &[u8], kind: Kind, eof: bool) -> Result<Option<usize>, String> {
        let mut start = 0;
        loop {
            let Some(end) = buf[start..].windows(4).position(|w| w == b"\r\n\r\n") else {
                return Ok(None);
            };
            let head = &buf[start..start + end];
            let body_at = start + end + 4;
            let mut lines = split_crlf(head);
            if lines
                .iter()
                .any(|l| l.contains(&b'\r') || l.contains(&b'\n'))
            {
                return Err("bare CR or LF in the head".into());
            }
            let first = lines.remove(0);
            let mut status = 0u16;
            match kind {
                Kind::Request => {
                    let mut p = first.split(|&b| b == b' ');
                    let (Some(m), Some(t), Some(v), None) =
                        (p.next(), p.next(), p.next(), p.next())
                    else {
                        return Err(format!(
                            "bad request line {:?}",
                            String::from_utf8_lossy(first)
                        ));
                    };
                    if m.is_empty() || !m.iter().all(|&b| is_tchar(b)) {
                        return Err("method is not a token".into());
                    }
                    // Bytes ≥ 0x80 are tolerated, as httparse (hyper's parser) and nginx do:
                    // the gateway passes raw UTF-8 paths through.
                    if !t.starts_with(b"/")
                        || !t.iter().all(|&b| (0x21..0x7f).contains(&b) || b >= 0x80)
                    {
                        return Err(format!(
                            "bad request target {:?}",
                            String::from_utf8_lossy(t)
                        ));
                    }
                    if t.contains(&b'#') {
                        return Err("fragment in the request target".into());
                    }
                    if v != b"HTTP/1.1" {
                        return Err("not HTTP/1.1".into());
                    }
                }
                Kind::Response => {
                    let s = first
                        .strip_prefix(b"HTTP/1.1 ")
                        .ok_or("not an HTTP/1.1 status line")?;
                    if s.len() < 4 || s[3] != b' ' || !s[..3].iter().all(u8::is_ascii_digit) {
                        return Err("bad status line".into());
                    }
                    status = std::str::from_utf8(&s[..3])
                        .unwrap_or("0")
                        .parse()
                        .unwrap_or(0);
                    if !(100..=599).contains(&status) {
                        return Err(format!("status {status}"));
                    }
                    if s[4..]
                        .iter()
                        .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
                    {
                        return Err("control character in the reason phrase".into());
                    }
                }
            }
            let mut cl: Vec<&[u8]> = Vec::new();
            let mut te: Vec<Vec<u8>> = Vec::new();
            let mut hosts = 0;
            for line in lines {
                if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                    return Err("obsolete line folding".into());
                }
                let colon = line
                    .iter()
                    .position(|&b| b == b':')
                    .ok_or("header without ':'")?;
                let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
                if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
                    return Err(format!(
                        "bad field name {:?}",
                        String::from_utf8_lossy(name)
                    ));
                }
                if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                    return Err(format!(
                        "control character in {}",
                        String::from_utf8_lossy(name)
                    ));
                }
                let lname = name.to_ascii_lowercase();
                match lname.as_slice() {
                    b"content-length" => cl.push(value),
                    b"transfer-encoding" => te.extend(
                        value
                            .split(|&b| b == b',')
                            .map(|c| trim(c).to_ascii_lowercase())
                            .filter(|c| !c.is_empty()),
                    ),
                    b"host" => hosts += 1,
                    _ => {}
                }
            }
            if kind == Kind::Request && hosts != 1 {
                return Err(format!("{hosts} Host fields"));
            }
            if cl.len() > 1 {
                return Err("several Content-Length fields".into());
            }
            let len = match cl.first() {
                Some(v) if v.is_empty() || !v.iter().all(u8::is_ascii_digit) => {
                    return Err(format!("Content-Length {:?}", String::from_utf8_lossy(v)));
                }
                Some(v) => Some(
                    std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<usize>().ok())
                        .ok_or("Content-Length overflows")?,
                ),
                None => None,
            };
            if !te.is_empty() && len.is_some() {
                return Err("both Transfer-Encoding and Content-Length".into());
            }
            if kind == Kind::Response {
                if (100..200).contains(&status) {
                    if status == 101 {
                        return Err("101 without a protocol switch".into());
                    }
                    if !te.is_empty() || len.is_some() {
                        return Err("framing header on a 1xx".into());
                    }
                    // Informational: a final response must follow.
                    start = body_at;
                    continue;
                }
                if status == 204 && (!te.is_empty() || len.is_some_and(|l| l != 0)) {
                    return Err("framing header on a 204".into());
                }
                if status == 204 || status == 304 {
                    return Ok(Some(body_at));
                }
            }
            let chunked = te.last().is_some_and(|c| c == b"chunked");
            if !te.is_empty() && !chunked {
                if kind == Kind::Request {
                    return Err("request Transfer-Encoding not ending in chunked".into());
                }
                return Ok(if eof { Some(buf.len()) } else { None });
            }
            if te.iter().filter(|c| c.as_slice() == b"chunked").count() > 1 {
                return Err("chunked applied twice".into());
            }
            if chunked {
                return chunked_end(buf, body_at);
            }
            return Ok(match len {
                Some(n) if buf.len() >= body_at + n => Some(body_at + n),
                Some(_) => None,
                None if kind == Kind::Request => Some(body_at),
                // A response without framing runs to the close.
                None => eof.then_some(buf.len()),
            });
        }
    }

    /// The lines of a head (without its final empty line), split at CRLF only.
    fn split_crlf(head: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut from = 0;
        while let Some(i) = head[from..].windows(2).position(|w| w == b"\r\n") {
            out.push(&head[from..from + i]);
            from += i + 2;
        }
        out.push(&head[from..]);
        out
    }

    /// End of a chunked body starting at `at` (RFC 9112 §7.1), trailers included.
    fn chunked_end(buf: &[u8], mut at: usize) -> Result<Option<usize>, String> {
        loop {
            let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            let line = &buf[at..at + eol];
            let size = line.split(|&b| b == b';').next().unwrap_or_default();
            let size = trim(size);
            if size.is_empty() || !size.iter().all(u8::is_ascii_hexdigit) || size.len() > 15 {
                return Err(format!(
                    "bad chunk size {:?}",
                    String::from_utf8_lossy(line)
                ));
            }
            let n = usize::from_str_radix(std::str::from_utf8(size).unwrap_or("0"), 16)
                .map_err(|e| e.to_string())?;
            at += eol + 2;
            if n == 0 {
                // Trailer section: fields, then an empty line.
                loop {
                    let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                        return Ok(None);
                    };
                    let line = &buf[at..at + eol];
                    at += eol + 2;
                    if line.is_empty() {
                        return Ok(Some(at));
                    }
                    if !line.contains(&b':') {
                        return Err("bad trailer field".into());
                    }
                }
            }
            if buf.len() < at + n + 2 {
                return Ok(None);
            }
            if &buf[at + n..at + n + 2] != b"\r\n" {
                return Err("chunk data not followed by CRLF".into());
            }
            at += n + 2;
        }
    }
}
