//! Hostile HTTP/1 input through a real gateway, over raw sockets: framing and smuggling tricks,
//! invalid header bytes, Host/target disagreements, unread bodies of local answers, path tricks
//! against a guarded prefix, oversized heads, slow bodies and a client that never reads.
//!
//! Every case checks the exact answer (or the close), that the trick never reached the
//! upstream (it logs every path it receives), and that the gateway still serves afterwards.
//! Content-Length + Transfer-Encoding together, a missing or duplicate Host, and the basic
//! 431/413/414/slow-header limits are covered by `core_hygiene` and `core_limits`.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_testkit::extra_b::{Exchange, RawResponse, exchange};
use weir_testkit::extra_c::{plugin, toml_path};
use weir_testkit::extra_f::{PathLogUpstream, vm_rss_kib};
use weir_testkit::{TestClient, TestGateway};

const IDLE: Duration = Duration::from_millis(1500);

/// A request that must never reach the upstream: it is hidden after or inside another one.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n";

/// Routes (all for host `app.test`, so any other Host gets a local 404):
/// - `/admin`: guarded by ip-filter denying loopback (every test client) → 403;
/// - `/api`: a 1 KiB body limit and a 2 s route timeout;
/// - `/`: open catch-all.
async fn gateway() -> (TestGateway, PathLogUpstream) {
    let up = PathLogUpstream::start().await;
    let gw = TestGateway::start(&format!(
        r#"
version = 1

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[upstreams.echo]
targets = [{{ url = "{url}" }}]

[[routes]]
name = "admin"
match = {{ host = "app.test", path_prefix = "/admin" }}
upstream = "echo"
plugins = [{{ name = "ip-filter", wasm = {ipf}, config = {{ deny = ["127.0.0.0/8", "::1/128"] }} }}]

[[routes]]
name = "api"
match = {{ host = "app.test", path_prefix = "/api" }}
upstream = "echo"
timeout = "2s"
limits = {{ max_body = "1KiB" }}

[[routes]]
name = "open"
match = {{ host = "app.test", path_prefix = "/" }}
upstream = "echo"
"#,
        url = up.url(),
        ipf = toml_path(&plugin("ip_filter")),
    ))
    .await;
    (gw, up)
}

async fn raw(gw: &TestGateway, req: &str) -> Exchange {
    exchange(gw.addr(), req.as_bytes(), IDLE).await
}

/// Exactly one response with `status`, after which the gateway closed the connection.
fn refused(x: &Exchange, status: u16, case: &str) -> RawResponse {
    let rs = x.responses();
    assert_eq!(
        rs.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![status],
        "{case}: {}",
        x.text()
    );
    assert!(x.closed, "{case}: connection left open after a {status}");
    rs.into_iter().next().unwrap()
}

/// The gateway still proxies an ordinary request.
async fn still_serves(gw: &TestGateway, up: &PathLogUpstream) {
    let before = up.count("/still-ok");
    let r = TestClient::new()
        .get_with(&gw.url("/still-ok"), &[("host", "app.test")])
        .await;
    assert_eq!(r.status, 200, "the gateway stopped serving: {}", r.text());
    assert_eq!(r.json()["path"], "/still-ok");
    assert_eq!(up.count("/still-ok"), before + 1);
}

#[tokio::test]
async fn malformed_content_length_is_400() {
    let (gw, up) = gateway().await;
    for cl in [
        "+5",
        "5, 5",
        "0x5",
        "-1",
        "-5",
        "5 5",
        "",
        "99999999999999999999999",
    ] {
        let req = format!(
            "POST /cl HTTP/1.1\r\nHost: app.test\r\nContent-Length: {cl}\r\n\r\nhello{SMUGGLED}"
        );
        let x = raw(&gw, &req).await;
        refused(&x, 400, &format!("Content-Length: {cl:?}"));
    }
    assert!(
        up.paths().is_empty(),
        "reached the upstream: {:?}",
        up.paths()
    );
    still_serves(&gw, &up).await;
}

/// Two identical Content-Length headers: hyper merges them into one before the gateway looks,
/// so `check_framing`'s "more than one Content-Length" branch never fires and the request is
/// proxied, while the single-header list `Content-Length: 5, 5` is refused with 400.
#[tokio::test]
async fn duplicate_identical_content_length_is_400() {
    let (gw, up) = gateway().await;
    let req = format!(
        "POST /cl HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello{SMUGGLED}"
    );
    let x = raw(&gw, &req).await;
    refused(&x, 400, "Content-Length: 5 twice");
    assert!(up.paths().is_empty(), "{:?}", up.paths());
    still_serves(&gw, &up).await;
}

#[tokio::test]
async fn obfuscated_transfer_encoding_is_400() {
    let (gw, up) = gateway().await;
    let cases = [
        (
            "chunked, identity",
            "HTTP/1.1",
            "Transfer-Encoding: chunked, identity",
        ),
        ("xchunked", "HTTP/1.1", "Transfer-Encoding: xchunked"),
        ("gzip only", "HTTP/1.1", "Transfer-Encoding: gzip"),
        (
            "space before colon",
            "HTTP/1.1",
            "Transfer-Encoding : chunked",
        ),
        ("TE on HTTP/1.0", "HTTP/1.0", "Transfer-Encoding: chunked"),
        (
            "obs-fold hiding TE",
            "HTTP/1.1",
            "X-Foo: a\r\n Transfer-Encoding: chunked",
        ),
    ];
    for (case, version, header) in cases {
        let req =
            format!("POST /te {version}\r\nHost: app.test\r\n{header}\r\n\r\n0\r\n\r\n{SMUGGLED}");
        let x = raw(&gw, &req).await;
        refused(&x, 400, case);
    }
    assert!(
        up.paths().is_empty(),
        "reached the upstream: {:?}",
        up.paths()
    );
    still_serves(&gw, &up).await;
}

/// Leading spaces or tabs before `chunked` are optional whitespace (RFC 9110 §5.6.3) and the
/// coding name is case-insensitive: these are plain chunked bodies, decoded the same way by
/// every compliant parser, so they are proxied with the right body.
#[tokio::test]
async fn transfer_encoding_with_optional_whitespace_is_plain_chunked() {
    let (gw, up) = gateway().await;
    for value in [" chunked", "\tchunked", "  chunked\t", "CHUNKED"] {
        let req = format!(
            "POST /ows HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding:{value}\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let x = raw(&gw, &req).await;
        let r = refused(&x, 200, &format!("{value:?}"));
        assert_eq!(r.json()["body_len"], 5, "{value:?}: {}", r.text());
        assert_eq!(r.json()["path"], "/ows");
    }
    assert_eq!(up.count("/ows"), 4);
    still_serves(&gw, &up).await;
}

/// `chunked` applied twice (two headers, or `chunked, chunked`) is forbidden (RFC 9112 §6.1):
/// a parser that decodes twice and one that decodes once see different bodies. Likewise an
/// unknown coding before `chunked` (`identity, chunked`). hyper decodes once and the gateway
/// proxies them; the bytes after the first `0` chunk are then served as a second request.
#[tokio::test]
async fn transfer_encoding_chunked_twice_is_400() {
    let (gw, up) = gateway().await;
    for header in [
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked, chunked",
        "Transfer-Encoding: identity, chunked",
    ] {
        let req =
            format!("POST /te2 HTTP/1.1\r\nHost: app.test\r\n{header}\r\n\r\n0\r\n\r\n{SMUGGLED}");
        let x = raw(&gw, &req).await;
        refused(&x, 400, header);
    }
    assert!(up.paths().is_empty(), "{:?}", up.paths());
    still_serves(&gw, &up).await;
}

/// Broken chunked bodies: whatever the answer, the connection is closed and nothing after the
/// broken body is ever parsed as a request.
const BROKEN_CHUNKS: [(&str, &str); 5] = [
    ("bad hex size", "zz\r\nhello\r\n0\r\n\r\n"),
    ("missing CRLF after data", "5\r\nhelloX0\r\n\r\n"),
    (
        "size overflows u64",
        "fffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
    ),
    ("bare LF in extension", "5;x\nhello\r\n0\r\n\r\n"),
    ("negative size", "-5\r\nhello\r\n0\r\n\r\n"),
];

fn broken_chunk_request(body: &str) -> String {
    format!(
        "POST /chunks HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n{body}{SMUGGLED}"
    )
}

/// 80 KiB of chunk extensions on one chunk (hyper caps extensions at 16 KiB per body).
fn chunk_extension_abuse() -> String {
    format!(
        "POST /chunks HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5;{}\r\nhello\r\n0\r\n\r\n{SMUGGLED}",
        "ext=val;".repeat(10 * 1024)
    )
}

#[tokio::test]
async fn broken_chunk_framing_closes_and_never_smuggles() {
    let (gw, up) = gateway().await;
    let mut cases: Vec<(String, String)> = BROKEN_CHUNKS
        .iter()
        .map(|(c, b)| (c.to_string(), broken_chunk_request(b)))
        .collect();
    cases.push(("chunk extension abuse".into(), chunk_extension_abuse()));
    for (case, req) in cases {
        let x = raw(&gw, &req).await;
        let rs = x.responses();
        assert_eq!(rs.len(), 1, "{case}: {}", x.text());
        assert!(
            rs[0].status >= 400,
            "{case}: a broken body was answered {}",
            rs[0].status
        );
        assert!(x.closed, "{case}: connection left open");
    }
    assert_eq!(up.count("/smuggled"), 0, "{:?}", up.paths());
    still_serves(&gw, &up).await;
}

/// A body the client framed wrongly is the client's fault: 400, like any other framing error.
/// Today the body error surfaces while the request is being streamed upstream, so
/// `proxy/forward.rs` (the `Ok(Err(e))` arm of `send`) reports it as an upstream failure: 502,
/// counted in `weir_upstream_requests_total{outcome="error"}` and reported to passive health.
#[tokio::test]
async fn broken_chunk_framing_is_400() {
    let (gw, up) = gateway().await;
    let mut cases: Vec<(String, String)> = BROKEN_CHUNKS
        .iter()
        .map(|(c, b)| (c.to_string(), broken_chunk_request(b)))
        .collect();
    cases.push(("chunk extension abuse".into(), chunk_extension_abuse()));
    for (case, req) in cases {
        let x = raw(&gw, &req).await;
        refused(&x, 400, &case);
    }
    still_serves(&gw, &up).await;
}

#[tokio::test]
async fn obs_fold_and_invalid_header_bytes_are_400() {
    let (gw, up) = gateway().await;
    let cases: [(&str, &[u8]); 8] = [
        ("obs-fold", b"X-Folded: a\r\n b"),
        ("obs-fold with tab", b"X-Folded: a\r\n\tb"),
        ("NUL in value", b"X-A: a\0b"),
        ("DEL in value", b"X-A: a\x7fb"),
        ("bare CR in value", b"X-A: a\rb"),
        ("non-ASCII in name", "X-\u{c4}: a".as_bytes()),
        ("space in name", b"X A: a"),
        ("empty name", b": a"),
    ];
    for (case, header) in cases {
        let mut req = b"GET /hdr HTTP/1.1\r\nHost: app.test\r\n".to_vec();
        req.extend_from_slice(header);
        req.extend_from_slice(b"\r\n\r\n");
        let x = exchange(gw.addr(), &req, IDLE).await;
        refused(&x, 400, case);
    }
    assert!(
        up.paths().is_empty(),
        "reached the upstream: {:?}",
        up.paths()
    );
    still_serves(&gw, &up).await;
}

#[tokio::test]
async fn absolute_form_target_must_agree_with_host() {
    let (gw, up) = gateway().await;
    let cases = [
        (
            "authority differs",
            "GET http://evil.test/abs HTTP/1.1\r\nHost: app.test",
        ),
        (
            "userinfo in target",
            "GET http://x@app.test/abs HTTP/1.1\r\nHost: app.test",
        ),
        (
            "port differs",
            "GET http://app.test:81/abs HTTP/1.1\r\nHost: app.test:82",
        ),
        ("userinfo in Host", "GET /abs HTTP/1.1\r\nHost: x@app.test"),
        ("path in Host", "GET /abs HTTP/1.1\r\nHost: app.test/admin"),
        ("space in Host", "GET /abs HTTP/1.1\r\nHost: app.test evil"),
    ];
    for (case, head) in cases {
        let x = raw(&gw, &format!("{head}\r\nConnection: close\r\n\r\n")).await;
        let r = refused(&x, 400, case);
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.contains("problem+json")),
            "{case}: {:?}",
            r.headers
        );
    }
    assert!(
        up.paths().is_empty(),
        "reached the upstream: {:?}",
        up.paths()
    );
    // Control: an absolute-form target that matches Host is proxied (origin-form upstream).
    let x = raw(
        &gw,
        "GET http://app.test/abs HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let r = refused(&x, 200, "matching absolute form");
    assert_eq!(r.json()["uri"], "/abs");
    still_serves(&gw, &up).await;
}

/// A request answered locally without reading its body (404 no route, 403 from a policy, 413
/// too large). The body holds a complete second request; it must be skipped (or the connection
/// closed), never parsed. For 404/403 the gateway drains the declared body and keeps the
/// connection: the request pipelined *after* the body is served, which proves the body was
/// skipped as a body. For 413 it closes.
#[tokio::test]
async fn unread_body_of_a_local_answer_is_never_parsed() {
    let (gw, up) = gateway().await;
    let after = |tag: &str| {
        format!("GET /after-{tag} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    };
    // 404: no route for this Host.
    let req = format!(
        "POST /x HTTP/1.1\r\nHost: nowhere.test\r\nContent-Length: {}\r\n\r\n{SMUGGLED}{}",
        SMUGGLED.len(),
        after("404")
    );
    let x = raw(&gw, &req).await;
    let st: Vec<u16> = x.responses().iter().map(|r| r.status).collect();
    assert_eq!(st, vec![404, 200], "{}", x.text());
    assert_eq!(x.responses()[1].json()["path"], "/after-404");

    // 403: the guard plugin answers.
    let req = format!(
        "POST /admin/x HTTP/1.1\r\nHost: app.test\r\nContent-Length: {}\r\n\r\n{SMUGGLED}{}",
        SMUGGLED.len(),
        after("403")
    );
    let x = raw(&gw, &req).await;
    let st: Vec<u16> = x.responses().iter().map(|r| r.status).collect();
    assert_eq!(st, vec![403, 200], "{}", x.text());

    // 413 on the declared length, and 413 on a chunked body over the limit.
    let big = format!("{SMUGGLED}{}", "x".repeat(2000));
    let req = format!(
        "POST /api/up HTTP/1.1\r\nHost: app.test\r\nContent-Length: {}\r\n\r\n{big}{}",
        big.len(),
        after("413")
    );
    let x = raw(&gw, &req).await;
    refused(&x, 413, "413 declared");
    let req = format!(
        "POST /api/up HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n{}",
        big.len(),
        after("413c")
    );
    let x = raw(&gw, &req).await;
    refused(&x, 413, "413 chunked");

    assert_eq!(up.count("/smuggled"), 0, "{:?}", up.paths());
    assert_eq!(
        up.count("/after-413"),
        0,
        "served after a 413: {:?}",
        up.paths()
    );
    assert_eq!(up.count("/admin"), 0);
    still_serves(&gw, &up).await;
}

/// Path tricks against the guarded `/admin` prefix: each must hit the guard (403) or be
/// refused (400); the upstream never sees an `/admin` path.
#[tokio::test]
async fn guarded_prefix_cannot_be_reached_by_path_tricks() {
    let (gw, up) = gateway().await;
    let cases = [
        ("/admin", 403),
        ("/public/../admin", 403),
        ("/%2e%2e/admin", 403),
        ("/.%2e/admin", 403),
        ("/%2E%2E/admin", 403),
        ("//admin", 403),
        ("///admin//", 403),
        ("/./admin/./", 403),
        ("/%61dmin", 403),
        ("/%61%64%6d%69%6e/x", 403),
        ("/admin?x=/public", 403),
        ("/admin/", 403),
        ("/admin%2Fx", 400),
        ("/%2fadmin", 400),
        ("/public/..%2fadmin", 400),
        ("/public/..%5cadmin", 400),
        ("/admin\\x", 400),
        ("/admin%zz", 400),
    ];
    for (path, want) in cases {
        let x = raw(
            &gw,
            &format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"),
        )
        .await;
        refused(&x, want, path);
    }
    let reached: Vec<String> = up
        .paths()
        .into_iter()
        .filter(|p| p.to_ascii_lowercase().contains("admin"))
        .collect();
    assert!(
        reached.is_empty(),
        "reached the upstream unguarded: {reached:?}"
    );
    still_serves(&gw, &up).await;
}

/// Documented behaviour: routing is case-sensitive (RFC 3986 paths are), so `/ADMIN` and
/// `/%41dmin` (decoded to `/Admin`) are not under `/admin`: they go to the open catch-all and
/// the upstream receives them as sent. A backend that matches paths case-insensitively must
/// not rely on a gateway prefix guard; guard the catch-all too or route case variants to 404.
#[tokio::test]
async fn case_variants_of_a_guarded_prefix_go_to_the_catch_all() {
    let (gw, up) = gateway().await;
    for (path, upstream_path) in [
        ("/ADMIN", "/ADMIN"),
        ("/%41dmin", "/Admin"),
        ("/Admin/x", "/Admin/x"),
    ] {
        let x = raw(
            &gw,
            &format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"),
        )
        .await;
        let r = refused(&x, 200, path);
        assert_eq!(r.json()["path"], upstream_path, "{path}");
    }
    assert_eq!(up.paths().len(), 3);
    still_serves(&gw, &up).await;
}

/// `;` path parameters and NUL: `/admin;x` is not under `/admin` for the router (the segment is
/// `admin;x`), so it reaches the open catch-all and is forwarded as `/admin;x` — which
/// Tomcat/Spring and other servlet backends resolve to `/admin`. Likewise `/public/..;/admin`
/// (servlet containers treat `..;` as `..`) and `/admin%00` (C backends stop at the NUL).
/// Expected: refused (400) or matched against the guarded prefix (403).
#[tokio::test]
async fn semicolon_and_nul_tricks_hit_the_guard_or_are_refused() {
    let (gw, up) = gateway().await;
    for path in [
        "/admin;x",
        "/admin;jsessionid=1/x",
        "/public/..;/admin",
        "/public/%2e%2e;/admin",
        "/admin%00",
        "/admin%00.html",
    ] {
        let x = raw(
            &gw,
            &format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"),
        )
        .await;
        let r = x.responses();
        assert!(
            matches!(r.first().map(|r| r.status), Some(400 | 403)),
            "{path}: {}",
            x.text()
        );
    }
    assert!(
        up.paths().is_empty(),
        "reached the upstream: {:?}",
        up.paths()
    );
    still_serves(&gw, &up).await;
}

#[tokio::test]
async fn too_many_or_too_long_headers_are_431() {
    let (gw, up) = gateway().await;
    // 150 small headers against the 100-header default.
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let x = raw(
        &gw,
        &format!("GET /h HTTP/1.1\r\nHost: app.test\r\n{many}\r\n"),
    )
    .await;
    refused(&x, 431, "150 headers");
    // One 70 KiB header line against the 60 KiB head limit.
    let x = raw(
        &gw,
        &format!(
            "GET /h HTTP/1.1\r\nHost: app.test\r\nX-Long: {}\r\n\r\n",
            "l".repeat(70 * 1024)
        ),
    )
    .await;
    refused(&x, 431, "70 KiB header");
    // A 1 MiB head sent at once: still one 431, and the gateway is not stuck reading it.
    let x = raw(
        &gw,
        &format!(
            "GET /h HTTP/1.1\r\nHost: app.test\r\nX-Long: {}\r\n\r\n",
            "l".repeat(1024 * 1024)
        ),
    )
    .await;
    assert_eq!(
        x.responses().first().map(|r| r.status),
        Some(431),
        "{}",
        &x.text()[..x.text().len().min(300)]
    );
    assert!(x.closed);
    assert!(up.paths().is_empty(), "{:?}", up.paths());
    still_serves(&gw, &up).await;
}

/// A client that declares a body and trickles it (1 byte every 300 ms, 20 bytes ≈ 6 s) on a
/// route with a 2 s timeout. The route timeout runs until the upstream's response headers, and
/// the upstream only answers once it has the whole body, so the gateway answers 504 at ≈ 2 s
/// and closes; nothing waits for the trickle to end.
#[tokio::test]
async fn slow_body_is_cut_by_the_route_timeout() {
    let (gw, up) = gateway().await;
    let start = Instant::now();
    let s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut r, mut w) = s.into_split();
    w.write_all(b"POST /api/slow-body HTTP/1.1\r\nHost: app.test\r\nContent-Length: 20\r\n\r\n")
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if w.write_all(b"s").await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let took = start.elapsed();
    writer.abort();
    let x = Exchange { bytes: out, closed };
    let rs = x.responses();
    assert_eq!(rs.first().map(|r| r.status), Some(504), "{}", x.text());
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(5),
        "answered after {took:?} with a 2 s route timeout"
    );
    assert!(x.closed, "connection left open after a 504 mid-body");
    // The upstream got the request (headers), never a complete body.
    assert_eq!(up.count("/api/slow-body"), 1);
    still_serves(&gw, &up).await;
}

/// A client that asks for a 256 MiB response and never reads it. The gateway must apply
/// backpressure instead of buffering: it pulls only what fits in the kernel socket buffers of
/// both legs plus hyper's write buffers (≈ 10 MiB on loopback here), and this process's RSS
/// stays flat.
#[tokio::test]
async fn slow_reader_does_not_make_the_gateway_buffer() {
    let (gw, up) = gateway().await;
    const SIZE: u64 = 256 * 1024 * 1024;
    let rss_before = vm_rss_kib();
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(format!("GET /big/{SIZE} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Read nothing for 3 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let produced = up.produced.load(std::sync::atomic::Ordering::SeqCst);
    let rss_after = vm_rss_kib();
    assert!(produced > 0, "the upstream was never asked for the body");
    assert!(
        produced < 32 * 1024 * 1024,
        "the gateway pulled {} MiB for a client that reads nothing",
        produced / (1024 * 1024)
    );
    let grown = rss_after.saturating_sub(rss_before);
    assert!(
        grown < 64 * 1024,
        "RSS grew by {} MiB for a client that reads nothing",
        grown / 1024
    );
    // Other clients are served meanwhile.
    still_serves(&gw, &up).await;
    // Reading a bit resumes the stream: backpressure, not a stall.
    let mut buf = vec![0u8; 1024 * 1024];
    let mut got = 0usize;
    while got < 8 * 1024 * 1024 {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the gateway closed the slow reader's connection");
        got += n;
    }
    eprintln!(
        "slow reader: upstream produced {} KiB while the client read nothing; RSS {} → {} KiB",
        produced / 1024,
        rss_before,
        rss_after
    );
    drop(s);
    still_serves(&gw, &up).await;
}
