//! Edge limits through a real gateway: head size (431), body size (413, declared and streamed),
//! URI length (414) and the header read timeout (slowloris).

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_testkit::extra_b::{Exchange, exchange};
use weir_testkit::{TestGateway, TestUpstream};

const IDLE: Duration = Duration::from_secs(3);

async fn gateway(limits: &str) -> (TestGateway, TestUpstream) {
    let up = TestUpstream::start("echo").await;
    let gw = TestGateway::start(&format!(
        r#"
version = 1

[limits]
{limits}

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

fn status(x: &Exchange) -> Option<u16> {
    x.responses().first().map(|r| r.status)
}

#[tokio::test]
async fn oversized_request_head_is_431() {
    let (gw, up) = gateway("").await;
    // Ten 7 KiB headers: 70 KiB of head against the 60 KiB default.
    let mut req = String::from("GET /echo HTTP/1.1\r\nHost: example.com\r\n");
    for i in 0..10 {
        req.push_str(&format!("X-Big-{i}: {}\r\n", "a".repeat(7 * 1024)));
    }
    req.push_str("\r\n");
    let x = exchange(gw.addr(), req.as_bytes(), IDLE).await;
    assert_eq!(status(&x), Some(431), "{}", x.text());
    assert_eq!(up.hits(), 0);

    // Control: the same headers at 4 KiB each (40 KiB) pass.
    let mut req = String::from("GET /echo HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n");
    for i in 0..10 {
        req.push_str(&format!("X-Big-{i}: {}\r\n", "a".repeat(4 * 1024)));
    }
    req.push_str("\r\n");
    let x = exchange(gw.addr(), req.as_bytes(), IDLE).await;
    assert_eq!(status(&x), Some(200), "40 KiB of headers must pass");
    assert_eq!(up.hits(), 1);
}

/// Writes the head, then streams `body` in the background (errors ignored: the gateway may stop
/// reading), and returns what came back.
async fn post_streaming(gw: &TestGateway, head: String, body: Vec<u8>) -> (Exchange, Duration) {
    let start = Instant::now();
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        for chunk in body.chunks(16 * 1024) {
            if w.write_all(chunk).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(w);
    });
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let closed = loop {
        match tokio::time::timeout(IDLE, r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    writer.abort();
    (Exchange { bytes: out, closed }, start.elapsed())
}

#[tokio::test]
async fn declared_body_over_the_route_limit_is_413() {
    let (gw, up) = gateway("").await;
    let len = 2 * 1024 * 1024;
    let head =
        format!("POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: {len}\r\n\r\n");
    let (x, _) = post_streaming(&gw, head, vec![b'x'; len]).await;
    let rs = x.responses();
    assert_eq!(rs.first().map(|r| r.status), Some(413), "{}", x.text());
    assert_eq!(
        rs[0].header("connection"),
        Some("close"),
        "{:?}",
        rs[0].headers
    );
    assert!(
        rs[0]
            .header("content-type")
            .is_some_and(|c| c.contains("problem+json")),
        "{:?}",
        rs[0].headers
    );
    assert_eq!(
        rs.len(),
        1,
        "the unread body must not be parsed as more requests"
    );
    assert_eq!(
        up.hits(),
        0,
        "refused on the declared length, before the upstream"
    );

    // Control: 512 KiB is under the 1 MiB default and is forwarded whole.
    let len = 512 * 1024;
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    let (x, _) = post_streaming(&gw, head, vec![b'x'; len]).await;
    let rs = x.responses();
    assert_eq!(rs.first().map(|r| r.status), Some(200), "{}", x.text());
    assert_eq!(rs[0].json()["body_len"], len);
}

fn chunked(total: usize, chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(total + total / chunk * 10 + 8);
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend(std::iter::repeat_n(b'y', n));
        out.extend_from_slice(b"\r\n");
        left -= n;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test]
async fn streamed_body_over_the_route_limit_is_413() {
    let (gw, _up) = gateway("").await;
    let head = "POST /upload HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
        .to_string();
    let (x, _) = post_streaming(&gw, head, chunked(2 * 1024 * 1024, 64 * 1024)).await;
    assert_eq!(
        status(&x),
        Some(413),
        "chunked 2 MiB against 1 MiB:\n{}",
        x.text()
    );

    // Control: a chunked body under the limit arrives whole.
    let head = "POST /upload HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_string();
    let (x, _) = post_streaming(&gw, head, chunked(300 * 1024, 64 * 1024)).await;
    let rs = x.responses();
    assert_eq!(rs.first().map(|r| r.status), Some(200), "{}", x.text());
    assert_eq!(rs[0].json()["body_len"], 300 * 1024);
}

#[tokio::test]
async fn route_body_limit_overrides_the_default() {
    let up = TestUpstream::start("echo").await;
    let gw = TestGateway::start(&format!(
        r#"
version = 1
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
[upstreams.echo]
targets = [{{ url = "{}" }}]
[[routes]]
name = "small"
match = {{ path_prefix = "/small" }}
upstream = "echo"
limits = {{ max_body = "1KiB" }}
[[routes]]
name = "all"
match = {{ path_prefix = "/" }}
upstream = "echo"
"#,
        up.url()
    ))
    .await;
    let body = vec![b'z'; 4096];
    let head = "POST /small HTTP/1.1\r\nHost: e\r\nContent-Length: 4096\r\n\r\n".to_string();
    let (x, _) = post_streaming(&gw, head, body.clone()).await;
    assert_eq!(status(&x), Some(413), "{}", x.text());
    let head = "POST /big HTTP/1.1\r\nHost: e\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n"
        .to_string();
    let (x, _) = post_streaming(&gw, head, body).await;
    assert_eq!(status(&x), Some(200), "{}", x.text());
}

#[tokio::test]
async fn overlong_uri_is_414() {
    let (gw, up) = gateway("").await;
    let req = format!(
        "GET /echo?q={} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
        "a".repeat(9 * 1024)
    );
    let x = exchange(gw.addr(), req.as_bytes(), IDLE).await;
    assert_eq!(status(&x), Some(414), "{}", x.text());
    assert_eq!(up.hits(), 0);

    // Control: 7 KiB is under the 8 KiB default.
    let req = format!(
        "GET /echo?q={} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
        "a".repeat(7 * 1024)
    );
    let x = exchange(gw.addr(), req.as_bytes(), IDLE).await;
    assert_eq!(
        status(&x),
        Some(200),
        "{}",
        &x.text()[..200.min(x.text().len())]
    );
}

#[tokio::test]
async fn slow_headers_are_cut_off_at_the_header_read_timeout() {
    let (gw, up) = gateway(r#"header_read_timeout = "1s""#).await;
    let start = Instant::now();
    let s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut r, mut w) = s.into_split();
    // One byte every 500 ms of a head that never ends.
    let writer = tokio::spawn(async move {
        let head = format!(
            "GET /echo HTTP/1.1\r\nHost: example.com\r\nX-Slow: {}",
            "a".repeat(100)
        );
        for b in head.bytes() {
            if w.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    let closed_after = loop {
        match tokio::time::timeout(Duration::from_secs(15), r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break Some(start.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break None,
        }
    };
    writer.abort();
    let closed_after =
        closed_after.expect("the gateway never closed a connection that trickles its headers");
    assert!(
        closed_after < Duration::from_secs(5),
        "closed only after {closed_after:?} with header_read_timeout = 1s"
    );
    // It was the timeout, not an immediate refusal.
    assert!(
        closed_after >= Duration::from_millis(800),
        "closed after {closed_after:?}"
    );
    assert_eq!(up.hits(), 0);
    let answer = String::from_utf8_lossy(&got);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "unexpected answer to a timed-out head: {answer}"
    );
}
