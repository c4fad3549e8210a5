//! Idle HTTP/1 keep-alive connections are parked without hyper's buffers (`gateway/src/park.rs`)
//! and resumed on the next request: on the same socket, with nothing lost or cut. Parking is
//! seen on `/metrics` (`weir_connections_parked`).

use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_testkit::extra_a::{metric, scrape};
use weir_testkit::extra_b::{
    RawResponse, TestPki, parse_responses, tls_client_config, tls_connect,
};
use weir_testkit::{TestGateway, TestUpstream, UpstreamBehavior};

/// Longer than the gateway's park delay (250 ms) plus one period of its idle clock.
const PARKED_AFTER: Duration = Duration::from_secs(3);

/// One listener `public` (with `listener_tls`, a `tls = …` line, if any), one route to `upstream`.
fn config(upstream: &str, listener_tls: &str, limits: &str) -> String {
    format!(
        r#"version = 1

[admin]
listen = "127.0.0.1:0"

[limits]
{limits}

[[listeners]]
name = "public"
listen = "127.0.0.1:0"
{listener_tls}

[upstreams.echo]
targets = [{{ url = "{upstream}" }}]

[[routes]]
name = "all"
match = {{ path_prefix = "/" }}
upstream = "echo"
"#
    )
}

async fn gateway(up: &TestUpstream, limits: &str) -> TestGateway {
    TestGateway::start(&config(&up.url(), "", limits)).await
}

/// A gateway whose listener serves TLS for `localhost` with a certificate from the returned CA.
async fn tls_gateway(up: &TestUpstream, limits: &str) -> (TestGateway, TestPki) {
    let pki = TestPki::new("Weir Test CA");
    let dir = tempfile::tempdir().unwrap();
    pki.server_cert(&["localhost"]).write(dir.path(), "site");
    let toml = config(
        &up.url(),
        r#"tls = { certs = [{ cert = "site.crt", key = "site.key" }] }"#,
        limits,
    );
    (TestGateway::start_in(dir, &toml).await.unwrap(), pki)
}

async fn gauge(gw: &TestGateway, name: &str) -> f64 {
    metric(&scrape(gw).await, name, &[("listener", "public")]).unwrap_or(0.0)
}

/// Waits until `/metrics` shows `want` for the listener's gauge `name`; false after
/// `PARKED_AFTER`.
async fn gauge_becomes(gw: &TestGateway, name: &str, want: f64) -> bool {
    let deadline = Instant::now() + PARKED_AFTER;
    while Instant::now() < deadline {
        if gauge(gw, name).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Waits until `/metrics` shows `want` parked connections; false after `PARKED_AFTER`.
async fn parked_becomes(gw: &TestGateway, want: f64) -> bool {
    gauge_becomes(gw, "weir_connections_parked", want).await
}

/// A connection that made one request and is now parked (the only parked one on `gw`).
async fn parked_connection(gw: &TestGateway) -> TcpStream {
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(get("/once").as_bytes()).await.unwrap();
    read_responses(&mut s, 1).await;
    assert!(
        parked_becomes(gw, 1.0).await,
        "the idle connection was not parked"
    );
    s
}

/// Reads from `s` until `n` complete responses (by Content-Length) have arrived.
async fn read_responses<S: AsyncRead + Unpin>(s: &mut S, n: usize) -> Vec<RawResponse> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = parse_responses(&buf);
        let complete = got.len() >= n
            && got.iter().all(|r| {
                r.header("content-length")
                    .and_then(|v| v.parse::<usize>().ok())
                    .is_some_and(|len| len == r.body.len())
            });
        if complete {
            return got;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(0)) => panic!(
                "connection closed after {} bytes: {}",
                buf.len(),
                String::from_utf8_lossy(&buf)
            ),
            Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
            Ok(Err(e)) => panic!("read failed: {e}"),
            Err(_) => panic!(
                "no {n} complete responses in 10 s: {}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
}

/// Reads until end-of-stream (or an error); how long that took, or None after `limit`.
async fn closed_after<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut b = [0u8; 256];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: park.test\r\n\r\n")
}

/// The echo upstream reports the path it was asked for.
fn echoed_path(r: &RawResponse) -> String {
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    v["path"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_parks_and_serves_its_next_requests() {
    let up = TestUpstream::start("echo").await;
    let gw = gateway(&up, "").await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    // A connection that has not sent a request yet is not counted as parked.
    assert_eq!(gauge(&gw, "weir_connections_parked").await, 0.0);

    s.write_all(get("/first").as_bytes()).await.unwrap();
    let r = read_responses(&mut s, 1).await;
    assert_eq!((r[0].status, echoed_path(&r[0]).as_str()), (200, "/first"));
    assert!(
        parked_becomes(&gw, 1.0).await,
        "the idle connection was not parked"
    );

    // The same socket serves the next request, and two pipelined ones, in order.
    s.write_all(get("/second").as_bytes()).await.unwrap();
    let r = read_responses(&mut s, 1).await;
    assert_eq!((r[0].status, echoed_path(&r[0]).as_str()), (200, "/second"));
    assert!(parked_becomes(&gw, 1.0).await, "not parked again");
    s.write_all(format!("{}{}", get("/third"), get("/fourth")).as_bytes())
        .await
        .unwrap();
    let r = read_responses(&mut s, 2).await;
    let paths: Vec<_> = r.iter().map(|r| (r.status, echoed_path(r))).collect();
    assert_eq!(
        paths,
        [(200, "/third".to_string()), (200, "/fourth".to_string())]
    );
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 4);

    // A client closing a parked connection is seen at once.
    assert!(parked_becomes(&gw, 1.0).await);
    drop(s);
    assert!(
        parked_becomes(&gw, 0.0).await,
        "a closed connection stayed parked"
    );
    gw.shutdown().await;
}

/// Parking only ever happens between whole requests: not while a response is still coming,
/// not inside a request head or body the client is slow to send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_responses_and_slow_requests_are_never_parked_mid_message() {
    let up = TestUpstream::start_with(
        "echo",
        UpstreamBehavior {
            delay: Duration::from_millis(1200),
            ..Default::default()
        },
    )
    .await;
    let gw = gateway(&up, "").await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();

    // 1. A response that takes longer than the park delay arrives whole.
    s.write_all(get("/slow/1").as_bytes()).await.unwrap();
    let r = read_responses(&mut s, 1).await;
    assert_eq!((r[0].status, echoed_path(&r[0]).as_str()), (200, "/slow/1"));

    // 2. A head sent in two parts, a long pause between them.
    s.write_all(b"GET /split-head HTTP/1.1\r\nHost: par")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        gauge(&gw, "weir_connections_parked").await,
        0.0,
        "parked inside a request head"
    );
    s.write_all(b"k.test\r\n\r\n").await.unwrap();
    let r = read_responses(&mut s, 1).await;
    assert_eq!(
        (r[0].status, echoed_path(&r[0]).as_str()),
        (200, "/split-head")
    );

    // 3. A body sent in two parts, a long pause between them.
    s.write_all(b"POST /split-body HTTP/1.1\r\nHost: park.test\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        gauge(&gw, "weir_connections_parked").await,
        0.0,
        "parked inside a request body"
    );
    s.write_all(b"world").await.unwrap();
    let r = read_responses(&mut s, 1).await;
    assert_eq!(r[0].status, 200);
    let echoed: serde_json::Value = serde_json::from_slice(&r[0].body).unwrap();
    assert_eq!(echoed["body_len"], 10, "{echoed}");
    gw.shutdown().await;
}

/// A parked connection still has the keep-alive idle limit (`header_read_timeout`): the gateway
/// closes it, and no longer counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_closed_at_the_idle_timeout() {
    let up = TestUpstream::start("echo").await;
    let gw = gateway(&up, r#"header_read_timeout = "2s""#).await;
    let mut s = parked_connection(&gw).await;
    let took = closed_after(&mut s, Duration::from_secs(10))
        .await
        .expect("the parked connection was never closed");
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    assert!(parked_becomes(&gw, 0.0).await);
    gw.shutdown().await;
}

/// A drain closes parked connections at once (and a connection that has not sent a byte yet):
/// they hold no request, so nothing waits for them until the drain deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_parked_and_silent_connections_at_once() {
    let up = TestUpstream::start("echo").await;
    let gw = gateway(&up, r#"drain_timeout = "20s""#).await;
    let mut parked_conn = parked_connection(&gw).await;
    let mut silent = TcpStream::connect(gw.addr()).await.unwrap();
    // Both accepted (not still in the listen backlog, which closing the listener would reset).
    assert!(gauge_becomes(&gw, "weir_connections_active", 2.0).await);
    let started = Instant::now();
    let drained = tokio::spawn(gw.shutdown());
    for s in [&mut parked_conn, &mut silent] {
        closed_after(s, Duration::from_secs(5))
            .await
            .expect("a connection without a request was kept open during the drain");
    }
    tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .expect("the drain waited for connections without a request")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// The same over TLS: the rustls session survives the park (only hyper's buffers go), and the
/// client's next request on its TLS connection is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_connection_parks_and_keeps_its_session() {
    let up = TestUpstream::start("echo").await;
    let (gw, pki) = tls_gateway(&up, "").await;
    let cfg = tls_client_config(&[pki.ca_der()], None, &[b"http/1.1"]);
    let mut s = tls_connect(gw.addr(), "localhost", cfg).await.unwrap();
    // The first request goes out right behind the handshake.
    s.write_all(get("/first").as_bytes()).await.unwrap();
    let r = read_responses(&mut s, 1).await;
    assert_eq!((r[0].status, echoed_path(&r[0]).as_str()), (200, "/first"));
    for path in ["/second", "/third"] {
        assert!(
            parked_becomes(&gw, 1.0).await,
            "the idle TLS connection was not parked"
        );
        s.write_all(get(path).as_bytes()).await.unwrap();
        let r = read_responses(&mut s, 1).await;
        assert_eq!((r[0].status, echoed_path(&r[0]).as_str()), (200, path));
    }
    // A close_notify from the client ends the parked connection.
    assert!(parked_becomes(&gw, 1.0).await);
    s.shutdown().await.unwrap();
    assert!(parked_becomes(&gw, 0.0).await);
    gw.shutdown().await;
}

/// A connection that never completes a request is closed at `header_read_timeout`, also where
/// hyper has not started its own header timer: while it is still telling HTTP/1 from HTTP/2 (a
/// client that sends the start of the HTTP/2 preface and stops, on a new connection and after
/// a park), on a TLS connection that sends nothing after its handshake, and on an HTTP/2
/// connection without a request (with a GOAWAY first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_request_are_closed_at_the_header_read_timeout() {
    let up = TestUpstream::start("echo").await;
    // 2 s: the write after a park has to land before the parked connection's own idle timeout.
    let limits = r#"header_read_timeout = "2s""#;
    let plain = gateway(&up, limits).await;
    let (tls, pki) = tls_gateway(&up, limits).await;
    let limit = Duration::from_secs(8);
    let in_time = |case: &str, took: Option<Duration>| {
        let took = took.unwrap_or_else(|| panic!("{case}: still open after {limit:?}"));
        assert!(
            took >= Duration::from_millis(1600),
            "{case}: closed after {took:?}"
        );
        assert!(
            took < Duration::from_secs(6),
            "{case}: closed after {took:?}"
        );
    };

    let mut s = TcpStream::connect(plain.addr()).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    in_time("partial HTTP/2 preface", closed_after(&mut s, limit).await);

    // An HTTP/2 connection (prior knowledge) that never sends a request is told so with a
    // GOAWAY before it is closed.
    let mut s = TcpStream::connect(plain.addr()).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut b = [0u8; 1024];
    while let Ok(Ok(n @ 1..)) = tokio::time::timeout(limit, s.read(&mut b)).await {
        got.extend_from_slice(&b[..n]);
    }
    in_time("HTTP/2 without a request", Some(started.elapsed()));
    let mut frames = Vec::new();
    let mut rest = &got[..];
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        frames.push(rest[3]);
        rest = &rest[(9 + len).min(rest.len())..];
    }
    assert!(
        frames.contains(&7),
        "no GOAWAY among frame types {frames:?}"
    );

    let mut s = parked_connection(&plain).await;
    s.write_all(b"PRI * HTTP/2").await.unwrap();
    in_time(
        "partial HTTP/2 preface after a park",
        closed_after(&mut s, limit).await,
    );

    let cfg = tls_client_config(&[pki.ca_der()], None, &[b"http/1.1"]);
    let mut s = tls_connect(tls.addr(), "localhost", cfg).await.unwrap();
    in_time(
        "nothing after the TLS handshake",
        closed_after(&mut s, limit).await,
    );

    // Both still serve, also a first request that comes late but within the limit.
    let mut s = TcpStream::connect(plain.addr()).await.unwrap();
    s.write_all(get("/after").as_bytes()).await.unwrap();
    let r = read_responses(&mut s, 1).await;
    assert_eq!((r[0].status, echoed_path(&r[0]).as_str()), (200, "/after"));
    let cfg = tls_client_config(&[pki.ca_der()], None, &[b"http/1.1"]);
    let mut s = tls_connect(tls.addr(), "localhost", cfg).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.write_all(get("/late").as_bytes()).await.unwrap();
    let r = read_responses(&mut s, 1).await;
    assert_eq!((r[0].status, echoed_path(&r[0]).as_str()), (200, "/late"));
    plain.shutdown().await;
    tls.shutdown().await;
}

/// A hyper upstream answering every request with `len` bytes of `x` (Content-Length).
async fn big_upstream(len: usize) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let body = bytes::Bytes::from(vec![b'x'; len]);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(body),
                        ))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
            });
        }
    });
    addr
}

/// A response still being written to a slow reader is never cut by parking: hyper drops the
/// response body before its last bytes are flushed, and the connection must not look idle then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_the_whole_response() {
    const LEN: usize = 8 * 1024 * 1024;
    let addr = big_upstream(LEN).await;
    let gw = TestGateway::start(&config(&format!("http://{addr}"), "", "")).await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    // Twice on one connection: the second request also checks the connection survived.
    for round in 0..2 {
        s.write_all(get("/big").as_bytes()).await.unwrap();
        // Read the head, then the body slowly (about 3 MB/s), for several park periods.
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let head_end = loop {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "round {round}: closed before the head");
            got.extend_from_slice(&chunk[..n]);
            if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
        };
        let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains(&format!("content-length: {LEN}")), "{head}");
        let mut body = got.len() - head_end;
        while body < LEN {
            let want = chunk.len().min(LEN - body);
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk[..want]))
                .await
                .expect("stalled")
                .unwrap();
            assert!(n > 0, "round {round}: cut after {body} of {LEN} body bytes");
            body += n;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    gw.shutdown().await;
}
