//! Protocol hygiene through a real gateway: hop-by-hop stripping, request smuggling, path
//! normalisation, forwarding headers, Host checks, request ids and trace context.
//!
//! Most requests go over raw sockets: a client library would refuse to send them.

use std::time::Duration;
use weir_testkit::extra_b::{Exchange, exchange};
use weir_testkit::{TestClient, TestGateway, TestUpstream};

const IDLE: Duration = Duration::from_secs(2);

/// Two upstreams: `admin` behind `/admin`, `main` behind everything else.
async fn gateway(trusted: bool) -> (TestGateway, TestUpstream, TestUpstream) {
    let admin = TestUpstream::start("admin").await;
    let main = TestUpstream::start("main").await;
    let trusted = if trusted {
        r#"trusted_proxies = ["127.0.0.1"]"#
    } else {
        ""
    };
    let gw = TestGateway::start(&format!(
        r#"
version = 1
{trusted}

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[upstreams.admin]
targets = [{{ url = "{admin}" }}]

[upstreams.main]
targets = [{{ url = "{main}" }}]

[[routes]]
name = "admin"
match = {{ path_prefix = "/admin" }}
upstream = "admin"

[[routes]]
name = "main"
match = {{ path_prefix = "/" }}
upstream = "main"
"#,
        admin = admin.url(),
        main = main.url(),
    ))
    .await;
    (gw, admin, main)
}

/// Sends one raw request (which should ask for `Connection: close`) and returns the exchange.
async fn raw(gw: &TestGateway, req: &str) -> Exchange {
    exchange(gw.addr(), req.as_bytes(), IDLE).await
}

fn only_response(x: &Exchange) -> weir_testkit::extra_b::RawResponse {
    let rs = x.responses();
    assert_eq!(
        rs.len(),
        1,
        "expected exactly one response, got:\n{}",
        x.text()
    );
    rs.into_iter().next().unwrap()
}

#[tokio::test]
async fn headers_named_in_connection_are_stripped() {
    let (gw, _a, main) = gateway(false).await;
    let x = raw(
        &gw,
        "GET /echo HTTP/1.1\r\nHost: example.com\r\nConnection: close, X-Secret, Keep-Alive\r\n\
         Keep-Alive: timeout=5\r\nX-Secret: s3cret\r\nX-Keep: kept\r\nProxy-Connection: keep-alive\r\n\r\n",
    )
    .await;
    let r = only_response(&x);
    assert_eq!(r.status, 200, "{}", x.text());
    let seen = &r.json()["headers"];
    assert_eq!(
        seen["x-keep"], "kept",
        "an ordinary header must pass: {seen}"
    );
    for h in ["x-secret", "keep-alive", "connection", "proxy-connection"] {
        assert!(seen.get(h).is_none(), "{h} reached the upstream: {seen}");
    }
    assert_eq!(main.hits(), 1);
}

/// Both framing headers at once is the classic smuggling vector (RFC 9112 §6.3); the guide and
/// `hygiene::check_framing` say 400. hyper drops Content-Length when Transfer-Encoding is present
/// (either order) before the gateway sees the headers, so the check never fires.
#[tokio::test]
async fn content_length_with_transfer_encoding_is_400_in_both_orders() {
    let (gw, _a, main) = gateway(false).await;
    for head in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    ] {
        let req = format!("POST /echo HTTP/1.1\r\nHost: example.com\r\n{head}\r\n0\r\n\r\n");
        let x = raw(&gw, &req).await;
        let rs = x.responses();
        assert_eq!(
            rs.first().map(|r| r.status),
            Some(400),
            "{head:?}:\n{}",
            x.text()
        );
    }
    assert_eq!(
        main.hits(),
        0,
        "a request with ambiguous framing reached the upstream"
    );
}

/// Whatever the status, a request with both framing headers must not leave the connection usable:
/// the bytes after the (chunked) body must never be parsed as a second request.
#[tokio::test]
async fn content_length_with_transfer_encoding_never_smuggles() {
    let (gw, admin, main) = gateway(false).await;
    for head in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    ] {
        // Read with Content-Length: 5 the body is "0\r\n\r\n"; read chunked it is empty. Either
        // way "GET /admin/smuggled" follows and must not be served on this connection.
        let req = format!(
            "POST /echo HTTP/1.1\r\nHost: example.com\r\n{head}\r\n0\r\n\r\n\
             GET /admin/smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n"
        );
        let x = raw(&gw, &req).await;
        let rs = x.responses();
        assert_eq!(
            rs.len(),
            1,
            "{head:?}: the smuggled request was answered:\n{}",
            x.text()
        );
        assert!(
            x.closed,
            "{head:?}: connection left open after ambiguous framing"
        );
    }
    assert_eq!(
        admin.hits(),
        0,
        "the smuggled request reached the admin upstream"
    );
    let _ = main;
}

#[tokio::test]
async fn duplicate_content_length_is_400() {
    let (gw, _a, main) = gateway(false).await;
    let x = raw(
        &gw,
        "POST /echo HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    )
    .await;
    assert_eq!(
        x.responses().first().map(|r| r.status),
        Some(400),
        "{}",
        x.text()
    );
    assert_eq!(main.hits(), 0);
}

#[tokio::test]
async fn dot_segments_are_resolved_before_routing_and_forwarding() {
    let (gw, admin, main) = gateway(false).await;
    for path in [
        "/a/../admin",
        "/a/%2e%2e/admin",
        "/a/%2E%2e/admin",
        "/./admin",
        "//admin",
    ] {
        let x = raw(
            &gw,
            &format!("GET {path} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"),
        )
        .await;
        let r = only_response(&x);
        assert_eq!(r.status, 200, "{path}: {}", x.text());
        let doc = r.json();
        assert_eq!(
            doc["service"], "admin",
            "{path} was routed elsewhere: {doc}"
        );
        assert_eq!(doc["path"], "/admin", "{path} forwarded as {}", doc["path"]);
    }
    // Climbing above the root stays at the root.
    let x = raw(
        &gw,
        "GET /../../etc/passwd HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n",
    )
    .await;
    let r = only_response(&x);
    assert_eq!(r.json()["path"], "/etc/passwd");
    assert_eq!(r.json()["service"], "main");
    assert_eq!(admin.hits(), 5);
    assert_eq!(main.hits(), 1);
}

#[tokio::test]
async fn encoded_slash_or_backslash_is_400() {
    let (gw, admin, main) = gateway(false).await;
    for path in [
        "/admin%2Fx",
        "/x/..%2Fadmin",
        "/x/..%2fadmin",
        "/x%5C..%5Cadmin",
    ] {
        let x = raw(
            &gw,
            &format!("GET {path} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"),
        )
        .await;
        let r = only_response(&x);
        assert_eq!(r.status, 400, "{path}: {}", x.text());
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.contains("problem+json")),
            "{path}: {:?}",
            r.headers
        );
    }
    assert_eq!(admin.hits() + main.hits(), 0);
}

#[tokio::test]
async fn forwarded_for_is_appended_for_trusted_peers() {
    let (gw, _a, _m) = gateway(true).await;
    let c = TestClient::new();
    let r = c
        .get_with(
            &gw.url("/echo"),
            &[
                ("x-forwarded-for", "203.0.113.7"),
                ("x-forwarded-proto", "https"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1", "{h}");
    // A trusted proxy's protocol is kept.
    assert_eq!(h["x-forwarded-proto"], "https", "{h}");
}

#[tokio::test]
async fn forwarded_headers_are_replaced_for_untrusted_peers() {
    let (gw, _a, _m) = gateway(false).await;
    let c = TestClient::new();
    let r = c
        .get_with(
            &gw.url("/echo"),
            &[
                ("host", "Example.COM:8080"),
                ("x-forwarded-for", "203.0.113.7"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.example"),
                ("x-forwarded-port", "1"),
                ("forwarded", "for=203.0.113.7;host=evil.example"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http", "{h}");
    // The gateway reports the host it routed on: lower-case, without the port, which is the
    // listener's in X-Forwarded-Port.
    assert_eq!(h["x-forwarded-host"], "example.com", "{h}");
    assert_eq!(h["x-forwarded-port"], gw.addr().port().to_string(), "{h}");
    assert!(h.get("forwarded").is_none(), "{h}");
}

#[tokio::test]
async fn forwarded_proto_and_host_are_set_when_absent() {
    let (gw, _a, _m) = gateway(true).await;
    let r = TestClient::new()
        .get_with(&gw.url("/echo"), &[("host", "api.example")])
        .await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http", "{h}");
    assert_eq!(h["x-forwarded-host"], "api.example", "{h}");
}

#[tokio::test]
async fn host_must_be_present_once_on_http11() {
    let (gw, _a, main) = gateway(false).await;
    let x = raw(&gw, "GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(only_response(&x).status, 400, "missing Host: {}", x.text());
    let x = raw(
        &gw,
        "GET /echo HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        only_response(&x).status,
        400,
        "duplicate Host: {}",
        x.text()
    );
    assert_eq!(main.hits(), 0);
    // HTTP/1.0 has no Host requirement.
    let x = raw(&gw, "GET /echo HTTP/1.0\r\n\r\n").await;
    assert_eq!(
        only_response(&x).status,
        200,
        "HTTP/1.0 without Host: {}",
        x.text()
    );
    assert_eq!(main.hits(), 1);
}

#[tokio::test]
async fn request_id_is_propagated_or_generated() {
    let (gw, _a, _m) = gateway(false).await;
    let c = TestClient::new();
    let r = c
        .get_with(&gw.url("/echo"), &[("x-request-id", "req-abc-123")])
        .await;
    assert_eq!(r.json()["headers"]["x-request-id"], "req-abc-123");
    assert_eq!(r.header("x-request-id"), Some("req-abc-123"));

    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = c.get(&gw.url("/echo")).await;
        let upstream_saw = r.json()["headers"]["x-request-id"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(!upstream_saw.is_empty(), "no request id generated");
        assert_eq!(
            r.header("x-request-id"),
            Some(upstream_saw.as_str()),
            "client and upstream disagree"
        );
        ids.push(upstream_saw);
    }
    assert_ne!(ids[0], ids[1], "generated ids must differ");
}

#[tokio::test]
async fn local_replies_carry_the_request_id() {
    let (gw, _a, _m) = gateway(false).await;
    // 413 is decided after the id is known.
    let x = raw(
        &gw,
        "POST /echo HTTP/1.1\r\nHost: e\r\nX-Request-Id: local-413\r\nContent-Length: 99999999\r\n\r\n",
    )
    .await;
    let r = only_response(&x);
    assert_eq!(r.status, 413, "{}", x.text());
    assert_eq!(r.header("x-request-id"), Some("local-413"));
    assert_eq!(r.json()["request_id"], "local-413");
}

/// Framing, Host and path refusals happen before `proxy/mod.rs` assigns the request id, so these
/// 400s carry none; a client reporting the failure has nothing to quote.
#[tokio::test]
async fn early_400_replies_carry_the_request_id() {
    let (gw, _a, _m) = gateway(false).await;
    let x = raw(
        &gw,
        "GET /admin%2f HTTP/1.1\r\nHost: e\r\nX-Request-Id: local-400\r\nConnection: close\r\n\r\n",
    )
    .await;
    let r = only_response(&x);
    assert_eq!(r.status, 400, "{}", x.text());
    assert_eq!(
        r.header("x-request-id"),
        Some("local-400"),
        "{:?}",
        r.headers
    );
}

#[tokio::test]
async fn traceparent_is_continued_with_a_new_parent() {
    let (gw, _a, _m) = gateway(false).await;
    let c = TestClient::new();
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = c
        .get_with(&gw.url("/echo"), &[("traceparent", incoming)])
        .await;
    let tp = r.json()["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00");
    assert_eq!(
        parts[1], "4bf92f3577b34da6a3ce929d0e0e4736",
        "trace id changed: {tp}"
    );
    assert_eq!(parts[2].len(), 16);
    assert!(parts[2].bytes().all(|b| b.is_ascii_hexdigit()), "{tp}");
    assert_ne!(parts[2], "00f067aa0ba902b7", "parent id not replaced: {tp}");
    assert_eq!(parts[3], "01", "flags changed: {tp}");

    // Without one (or with a malformed one) a new trace starts.
    for sent in [None, Some("garbage")] {
        let hs: Vec<(&str, &str)> = sent.map(|s| ("traceparent", s)).into_iter().collect();
        let r = c.get_with(&gw.url("/echo"), &hs).await;
        let tp = r.json()["headers"]["traceparent"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let p: Vec<&str> = tp.split('-').collect();
        assert_eq!(p.len(), 4, "{sent:?} → {tp}");
        assert_eq!(p[1].len(), 32, "{tp}");
        assert!(
            p[1].bytes().all(|b| b.is_ascii_hexdigit()) && p[1] != "0".repeat(32),
            "{tp}"
        );
    }
}
