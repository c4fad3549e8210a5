//! Hostile HTTP/2 input (h2c prior knowledge) through a real gateway: connection-specific
//! headers, CR/LF/NUL and other bytes HTTP/2 forbids in fields, malformed pseudo-headers,
//! content-length that disagrees with DATA, and the rapid-reset attack (CVE-2023-44487).
//!
//! The forbidden frames are written by hand (`extra_f::RawH2`): the `h2` crate refuses to send
//! them. The `h2` crate drives the well-formed traffic: the mismatched content-length (which it
//! does not police on the sending side), the control requests, and the clients that must keep
//! being served while another connection attacks.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use weir_testkit::TestGateway;
use weir_testkit::extra_f::{
    PathLogUpstream, RawH2, StreamOutcome, data_frame, ftype, get_fields, headers_frame, reason,
    rst_frame,
};

const IDLE: Duration = Duration::from_millis(1500);

/// Header fields as raw bytes, written to the wire as given.
type Fields<'a> = Vec<(&'a [u8], &'a [u8])>;

async fn gateway() -> (TestGateway, PathLogUpstream) {
    let up = PathLogUpstream::start().await;
    let gw = TestGateway::start(&format!(
        r#"
version = 1

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[upstreams.echo]
targets = [{{ url = "{}" }}]

[[routes]]
name = "all"
match = {{ path_prefix = "/" }}
upstream = "echo"
"#,
        up.url()
    ))
    .await;
    (gw, up)
}

/// An `h2` crate client connection (prior knowledge); the connection task is spawned.
async fn h2_client(gw: &TestGateway) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// One GET over an `h2` client; returns the status and body.
async fn h2_get(send: &mut h2::client::SendRequest<Bytes>, path: &str) -> (u16, Bytes) {
    let req = http::Request::get(format!("http://app.test{path}"))
        .body(())
        .unwrap();
    let mut ready = send.clone().ready().await.unwrap();
    let (res, _) = ready.send_request(req, true).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), res)
        .await
        .unwrap()
        .unwrap();
    let status = res.status().as_u16();
    let mut body = res.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    (status, Bytes::from(out))
}

/// A fresh HTTP/2 connection still gets an ordinary request proxied.
async fn still_serves(gw: &TestGateway, up: &PathLogUpstream) {
    let before = up.count("/still-ok");
    let mut c = h2_client(gw).await;
    let (status, body) = h2_get(&mut c, "/still-ok").await;
    assert_eq!(
        status,
        200,
        "the gateway stopped serving: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(up.count("/still-ok"), before + 1);
}

/// Sends one hand-made request on stream 1 of a fresh raw connection; returns what happened
/// and the connection (to try a valid request on it afterwards).
async fn raw_request(gw: &TestGateway, fields: &[(&[u8], &[u8])]) -> (StreamOutcome, RawH2) {
    let mut conn = RawH2::connect(gw.addr()).await;
    conn.send(&headers_frame(1, fields, true)).await.unwrap();
    let o = conn.outcome(1, IDLE).await;
    (o, conn)
}

/// RFC 9113 §8.2.2: connection-specific fields make a request malformed (TE is allowed only as
/// `trailers`). The server resets the stream with PROTOCOL_ERROR before anything is proxied;
/// the connection stays usable.
#[tokio::test]
async fn connection_specific_headers_reset_the_stream() {
    let (gw, up) = gateway().await;
    let cases: [(&str, &[u8], &[u8]); 7] = [
        ("connection", b"connection", b"keep-alive"),
        ("transfer-encoding", b"transfer-encoding", b"chunked"),
        ("te: gzip", b"te", b"gzip"),
        ("te: trailers, gzip", b"te", b"trailers, gzip"),
        ("keep-alive", b"keep-alive", b"timeout=5"),
        ("upgrade", b"upgrade", b"websocket"),
        ("proxy-connection", b"proxy-connection", b"keep-alive"),
    ];
    for (case, name, value) in cases {
        let (o, mut conn) =
            raw_request(&gw, &get_fields(b"/conn-specific", &[(name, value)])).await;
        assert_eq!(o.reset, Some(reason::PROTOCOL_ERROR), "{case}: {o:?}");
        assert!(!o.headers && o.goaway.is_none(), "{case}: {o:?}");
        // Same connection, next stream: served.
        conn.send(&headers_frame(3, &get_fields(b"/same-conn", &[]), true))
            .await
            .unwrap();
        let o = conn.outcome(3, IDLE).await;
        assert_eq!(o.status, Some(200), "{case}: next stream {o:?}");
    }
    assert_eq!(up.count("/conn-specific"), 0, "{:?}", up.paths());
    // Control: `te: trailers` is the one allowed value (gRPC needs it).
    let (o, _) = raw_request(&gw, &get_fields(b"/te-trailers", &[(b"te", b"trailers")])).await;
    assert_eq!(o.status, Some(200), "{o:?}");
    still_serves(&gw, &up).await;
}

/// CR, LF and NUL are never valid in a field value, nor upper case or `:` in a name (RFC 9113
/// §8.2.1), nor an unknown pseudo-header (§8.3). The HTTP/2 layer treats these as a connection error: GOAWAY PROTOCOL_ERROR, no
/// response, nothing proxied (which is stricter than the stream error the RFC allows).
#[tokio::test]
async fn forbidden_bytes_in_fields_are_a_connection_error() {
    let (gw, up) = gateway().await;
    let cases: [(&str, &[u8], &[u8]); 8] = [
        ("unknown pseudo-header", b":evil", b"1"),
        ("CRLF header injection", b"x-a", b"a\r\nx-injected: 1"),
        ("LF in value", b"x-a", b"a\nb"),
        ("CR in value", b"x-a", b"a\rb"),
        ("NUL in value", b"x-a", b"a\0b"),
        ("upper-case name", b"X-Upper", b"a"),
        ("colon in name", b"x:a", b"a"),
        ("space in name", b"x a", b"a"),
    ];
    for (case, name, value) in cases {
        let (o, _) = raw_request(&gw, &get_fields(b"/bad-field", &[(name, value)])).await;
        assert_eq!(o.goaway, Some(reason::PROTOCOL_ERROR), "{case}: {o:?}");
        assert!(!o.headers, "{case}: answered {o:?}");
    }
    assert_eq!(up.count("/bad-field"), 0, "{:?}", up.paths());
    still_serves(&gw, &up).await;
}

/// Malformed request pseudo-headers and targets: the stream is reset with PROTOCOL_ERROR.
/// An `:authority` that disagrees with `host` is the gateway's own 400.
#[tokio::test]
async fn malformed_pseudo_headers_and_targets_are_refused() {
    let (gw, up) = gateway().await;
    let cases: Vec<(&str, Fields)> = vec![
        ("CRLF in :path", get_fields(b"/p1\r\nx: y", &[])),
        ("space in :path", get_fields(b"/p2 HTTP/1.1", &[])),
        ("empty :path", get_fields(b"", &[])),
        ("relative :path", get_fields(b"admin", &[])),
        (
            "missing :method",
            vec![
                (b":scheme", b"http"),
                (b":authority", b"app.test"),
                (b":path", b"/p3"),
            ],
        ),
        (
            "pseudo-header after a regular one",
            vec![
                (b":method", b"GET"),
                (b"x-a", b"1"),
                (b":scheme", b"http"),
                (b":authority", b"app.test"),
                (b":path", b"/p4"),
            ],
        ),
        (
            "duplicate :path",
            vec![
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", b"app.test"),
                (b":path", b"/p5"),
                (b":path", b"/admin"),
            ],
        ),
    ];
    for (case, fields) in cases {
        let (o, _) = raw_request(&gw, &fields).await;
        assert_eq!(o.reset, Some(reason::PROTOCOL_ERROR), "{case}: {o:?}");
        assert!(!o.headers, "{case}: answered {o:?}");
    }
    let (o, _) = raw_request(&gw, &get_fields(b"/p7", &[(b"host", b"other.test")])).await;
    assert_eq!(o.status, Some(400), "authority vs host: {o:?}");
    assert!(
        String::from_utf8_lossy(&o.data).contains("does not match Host"),
        "{o:?}"
    );
    let leaked: Vec<String> = up
        .paths()
        .into_iter()
        .filter(|p| p.starts_with("/p") || p.contains("admin"))
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");
    still_serves(&gw, &up).await;
}

/// DATA that disagrees with the declared content-length (short or long) is malformed (RFC 9113
/// §8.1.1): the stream is reset with PROTOCOL_ERROR, and the upstream never answers a request
/// with a body of the wrong size.
#[tokio::test]
async fn content_length_mismatch_resets_the_stream() {
    let (gw, up) = gateway().await;
    for (declared, sent) in [
        ("10", &b"hello"[..]),
        ("2", &b"hello"[..]),
        ("0", &b"x"[..]),
    ] {
        // The h2 crate sends what it is given here: it checks content-length only on receipt.
        let mut c = h2_client(&gw).await;
        let req = http::Request::post(format!("http://app.test/cl-{declared}"))
            .header("content-length", declared)
            .body(())
            .unwrap();
        let mut ready = c.clone().ready().await.unwrap();
        let (res, mut body) = ready.send_request(req, false).unwrap();
        body.send_data(Bytes::copy_from_slice(sent), true).unwrap();
        let err = match tokio::time::timeout(Duration::from_secs(5), res)
            .await
            .unwrap()
        {
            Ok(r) => panic!(
                "content-length {declared} with {} bytes answered {}",
                sent.len(),
                r.status()
            ),
            Err(e) => e,
        };
        assert_eq!(
            err.reason(),
            Some(h2::Reason::PROTOCOL_ERROR),
            "content-length {declared}: {err}"
        );
        // The connection itself survives the stream error.
        let (status, _) = h2_get(&mut c, "/after-cl").await;
        assert_eq!(status, 200, "content-length {declared}: next stream");
    }
    // Also byte-exact over a raw connection: 10 declared, 5 sent.
    let mut conn = RawH2::connect(gw.addr()).await;
    let fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"app.test"),
        (b":path", b"/cl-raw"),
        (b"content-length", b"10"),
    ];
    conn.send(&headers_frame(1, &fields, false)).await.unwrap();
    conn.send(&data_frame(1, b"hello", true)).await.unwrap();
    let o = conn.outcome(1, IDLE).await;
    assert_eq!(o.reset, Some(reason::PROTOCOL_ERROR), "{o:?}");
    assert_eq!(up.count("/cl-"), 0, "{:?}", up.paths());
    still_serves(&gw, &up).await;
}

/// Rapid reset: 5,000 streams opened and cancelled at once on one connection. The server
/// answers GOAWAY ENHANCE_YOUR_CALM (hyper's h2 counts streams reset before they were
/// accepted), none of the cancelled requests reach the upstream, and 4 other clients keep
/// getting answers throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_stopped_and_others_keep_being_served() {
    let (gw, up) = gateway().await;
    // Bystanders: 4 h2 clients looping until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut bystanders = Vec::new();
    for i in 0..4 {
        let mut c = h2_client(&gw).await;
        let (stop, ok) = (stop.clone(), ok.clone());
        bystanders.push(tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < 10_000 {
                let t = Instant::now();
                let (status, _) = h2_get(&mut c, &format!("/bystander-{i}")).await;
                assert_eq!(status, 200);
                worst = worst.max(t.elapsed());
                ok.fetch_add(1, Ordering::SeqCst);
                n += 1;
            }
            worst
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut attacker = RawH2::connect(gw.addr()).await;
    let started = Instant::now();
    let mut burst = Vec::new();
    let mut written = 0u32;
    for i in 0..5_000u32 {
        let id = 1 + 2 * i;
        burst.extend(headers_frame(id, &get_fields(b"/reset-me", &[]), true));
        burst.extend(rst_frame(id, reason::CANCEL));
        if burst.len() >= 64 * 1024 {
            if attacker.send(&burst).await.is_err() {
                break;
            }
            burst.clear();
        }
        written = i + 1;
    }
    let _ = attacker.send(&burst).await;
    let frames = attacker
        .read_until(Duration::from_secs(5), |f| f.kind == ftype::GOAWAY)
        .await;
    let goaway = frames.iter().find_map(|f| f.goaway_code());
    let took = started.elapsed();
    assert_eq!(
        goaway,
        Some(reason::ENHANCE_YOUR_CALM),
        "no GOAWAY ENHANCE_YOUR_CALM after {written} reset streams (closed: {}, {} frames)",
        attacker.closed,
        frames.len()
    );
    assert!(took < Duration::from_secs(5), "GOAWAY only after {took:?}");
    let ok_during = ok.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let mut worst = Duration::ZERO;
    for b in bystanders {
        worst = worst.max(b.await.unwrap());
    }
    assert!(ok.load(Ordering::SeqCst) > ok_during, "bystanders stalled");
    assert!(
        worst < Duration::from_secs(2),
        "a bystander waited {worst:?}"
    );
    let reached = up.count("/reset-me");
    assert!(
        reached <= 100,
        "{reached} cancelled requests reached the upstream"
    );
    eprintln!(
        "rapid reset: GOAWAY ENHANCE_YOUR_CALM after {took:?}, {written} pairs written, \
         {reached} reached the upstream, bystanders {} ok (worst {worst:?})",
        ok.load(Ordering::SeqCst)
    );
    still_serves(&gw, &up).await;
}

/// `max_headers` holds on HTTP/2 as on HTTP/1.1 (hyper only bounds HTTP/2's header-list bytes):
/// more fields than the limit is a 431 problem, nothing is proxied, and the connection serves on.
#[tokio::test]
async fn too_many_header_fields_are_refused_on_http2() {
    let (gw, up) = gateway().await;
    let mut c = h2_client(&gw).await;
    let send = |n: usize| {
        let c = c.clone();
        async move {
            let mut req = http::Request::get("http://app.test/many");
            for i in 0..n {
                req = req.header(format!("x-h{i}"), "v");
            }
            let mut ready = c.ready().await.unwrap();
            let (res, _) = ready.send_request(req.body(()).unwrap(), true).unwrap();
            let res = tokio::time::timeout(Duration::from_secs(10), res)
                .await
                .unwrap()
                .unwrap();
            (res.status().as_u16(), res.headers().clone())
        }
    };
    let (status, headers) = send(300).await;
    assert_eq!(status, 431);
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/problem+json"
    );
    assert_eq!(up.count("/many"), 0, "an oversized request was proxied");
    // Under the limit it goes through, on the same connection (90: the gateway adds its
    // forwarding and id headers, and the test upstream has the same 100-field limit).
    assert_eq!(send(90).await.0, 200);
    assert_eq!(up.count("/many"), 1);
    // Cookies arrive as a field each on HTTP/2: they count as one line, and reach the HTTP/1.1
    // upstream as one `cookie` header.
    let mut req = http::Request::get("http://app.test/cookies");
    for i in 0..150 {
        req = req.header("cookie", format!("c{i}=v"));
    }
    let mut ready = c.clone().ready().await.unwrap();
    let (res, _) = ready.send_request(req.body(()).unwrap(), true).unwrap();
    assert_eq!(res.await.unwrap().status(), 200);
    assert_eq!(up.count("/cookies"), 1);
    let (status, _) = h2_get(&mut c, "/still").await;
    assert_eq!(status, 200);
    still_serves(&gw, &up).await;
}
