//! Misbehaving upstreams (raw TCP servers that break HTTP on purpose) behind a real gateway: a
//! reset in the middle of the body, a garbage status line, broken chunked framing, an upstream
//! that never answers, and one that sends its head and then stalls the body. Each case checks
//! what the client sees, and that the gateway keeps serving other routes.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};
use weir_testkit::extra_b::{Exchange, exchange};
use weir_testkit::extra_f::{FakeUpstream, HANG_AFTER, Misbehavior, PathLogUpstream};
use weir_testkit::{TestClient, TestGateway};

struct Fixture {
    gw: TestGateway,
    good: PathLogUpstream,
    bad: FakeUpstream,
}

/// Route `/bad` goes to a [`FakeUpstream`] behaving as `how` (route timeout 1 s, no retries),
/// everything else to a well-behaved upstream.
async fn fixture(how: Misbehavior) -> Fixture {
    let good = PathLogUpstream::start().await;
    let bad = FakeUpstream::start(how).await;
    let gw = TestGateway::start(&format!(
        r#"
version = 1

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[upstreams.good]
targets = [{{ url = "{good}" }}]

[upstreams.bad]
targets = [{{ url = "{bad}" }}]

[[routes]]
name = "bad"
match = {{ path_prefix = "/bad" }}
upstream = "bad"
timeout = "1s"

[[routes]]
name = "good"
match = {{ path_prefix = "/" }}
upstream = "good"
"#,
        good = good.url(),
        bad = bad.url()
    ))
    .await;
    Fixture { gw, good, bad }
}

impl Fixture {
    /// GET /bad on a keep-alive connection: only a truncated response makes the gateway close.
    async fn get_bad(&self, idle: Duration) -> (Exchange, Duration) {
        self.get_bad_with(idle, "").await
    }

    async fn get_bad_with(&self, idle: Duration, extra: &str) -> (Exchange, Duration) {
        let t = Instant::now();
        let req = format!("GET /bad HTTP/1.1\r\nHost: app.test\r\n{extra}\r\n");
        let x = exchange(self.gw.addr(), req.as_bytes(), idle).await;
        (x, t.elapsed())
    }

    async fn still_serves(&self) {
        let r = TestClient::new().get(&self.gw.url("/ok")).await;
        assert_eq!(r.status, 200, "the gateway stopped serving: {}", r.text());
        assert_eq!(r.json()["path"], "/ok");
        assert!(self.good.count("/ok") >= 1);
    }
}

/// The response head of a raw exchange: (status, head text, body bytes after the head).
fn head_and_body(x: &Exchange) -> (u16, String, Vec<u8>) {
    let end = x
        .bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {}", x.text()));
    let head = String::from_utf8_lossy(&x.bytes[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, x.bytes[end + 4..].to_vec())
}

/// The upstream sends `200`, `Content-Length: 100000`, 1000 bytes, then resets. The head has
/// already gone to the client, so the only honest signal left is to cut the client connection
/// short: the client gets the 1000 bytes and a close, never a complete response.
#[tokio::test]
async fn upstream_reset_mid_body_cuts_the_client_connection() {
    let f = fixture(Misbehavior::ResetMidBody).await;
    let (x, _) = f.get_bad(Duration::from_secs(3)).await;
    let (status, head, body) = head_and_body(&x);
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 100000"),
        "{head}"
    );
    assert_eq!(body.len(), 1000, "body bytes relayed before the reset");
    assert!(x.closed, "connection left open after a truncated body");
    assert!(x.responses().is_empty(), "a complete response was parsed");
    assert_eq!(
        f.bad.requests(),
        1,
        "retried a request whose body had started"
    );
    f.still_serves().await;
}

#[tokio::test]
async fn garbage_status_line_is_502() {
    let f = fixture(Misbehavior::GarbageStatusLine).await;
    let (x, _) = f.get_bad(Duration::from_secs(3)).await;
    let rs = x.responses();
    assert_eq!(rs.len(), 1, "{}", x.text());
    assert_eq!(rs[0].status, 502, "{}", x.text());
    assert!(
        rs[0]
            .header("content-type")
            .is_some_and(|c| c.contains("problem+json")),
        "{:?}",
        rs[0].headers
    );
    assert!(
        !x.text().contains("banana"),
        "upstream garbage relayed: {}",
        x.text()
    );
    f.still_serves().await;
}

/// A valid `200` chunked head followed by a chunk size that is not hex. The gateway streams
/// bodies, so it commits to the upstream's `200` before it reads the body; the body error then
/// arrives before hyper has flushed that head, and the client connection is closed with no
/// bytes at all (what curl calls "Empty reply from server"). A client never sees a complete
/// response, nor anything after the broken chunk size.
#[tokio::test]
async fn broken_chunked_upstream_body_cuts_the_client_connection() {
    let f = fixture(Misbehavior::BadChunked).await;
    let (x, _) = f.get_bad(Duration::from_secs(3)).await;
    assert!(x.closed, "connection left open after a broken body");
    assert!(
        x.responses().is_empty(),
        "a complete response: {}",
        x.text()
    );
    assert!(
        x.bytes.is_empty() || x.text().starts_with("HTTP/1.1 200"),
        "{}",
        x.text()
    );
    assert!(
        !x.text().contains("hello"),
        "bytes after the broken chunk size were relayed: {}",
        x.text()
    );
    assert_eq!(f.bad.requests(), 1);
    f.still_serves().await;
}

/// An upstream that accepts the request and never answers: 504 at the route timeout (1 s).
#[tokio::test]
async fn upstream_that_never_answers_is_504_at_the_route_timeout() {
    let f = fixture(Misbehavior::NeverAnswer).await;
    let (x, took) = f
        .get_bad_with(Duration::from_secs(5), "Connection: close\r\n")
        .await;
    let rs = x.responses();
    assert_eq!(
        rs.first().map(|r| r.status),
        Some(504),
        "after {took:?}: {}",
        x.text()
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "504 after {took:?} with a 1 s timeout"
    );
    assert!(
        rs[0]
            .header("content-type")
            .is_some_and(|c| c.contains("problem+json"))
    );
    assert_eq!(f.bad.requests(), 1);
    f.still_serves().await;
}

/// The upstream sends its head (`Content-Length: 1000`) and 10 bytes, then nothing, forever.
/// The route timeout only covers the wait for response headers, so the gateway relays the 10
/// bytes and then waits with the client. Other clients are unaffected.
#[tokio::test]
async fn upstream_that_stalls_the_body_does_not_block_others() {
    let f = fixture(Misbehavior::HeadThenHang).await;
    let t = Instant::now();
    let stalled = tokio::spawn({
        let addr = f.gw.addr();
        async move {
            exchange(
                addr,
                b"GET /bad HTTP/1.1\r\nHost: app.test\r\n\r\n",
                Duration::from_secs(3),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        f.still_serves().await;
    }
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "others were slowed down"
    );
    let x = stalled.await.unwrap();
    let (status, head, body) = head_and_body(&x);
    assert_eq!(status, 200, "{head}");
    assert_eq!(body.len(), HANG_AFTER, "bytes relayed before the stall");
    f.still_serves().await;
}

/// What should happen to that stalled body: a gateway needs an idle timeout on upstream body
/// reads (nginx `proxy_read_timeout`, Envoy `idle_timeout`) so a stuck upstream cannot hold a
/// client connection, an upstream connection and an in-flight slot forever. Weir has none: the
/// route timeout stops at the response head, and nothing bounds the body.
#[tokio::test]
async fn stalled_upstream_body_is_cut_after_an_idle_timeout() {
    let f = fixture(Misbehavior::HeadThenHang).await;
    let (x, took) = f.get_bad(Duration::from_secs(3)).await;
    let (status, _, body) = head_and_body(&x);
    assert_eq!(status, 200);
    assert_eq!(body.len(), HANG_AFTER);
    assert!(
        x.closed,
        "the client was still waiting on a stalled body after {took:?}"
    );
    f.still_serves().await;
}

/// An HTTP/1.0 upstream (close-delimited body) answers an HTTP/1.1 client: the client gets the
/// gateway's own version, so its connection stays open for the next request (RFC 9112 §2.3).
#[tokio::test]
async fn an_http10_upstream_answers_in_http11() {
    let f = fixture(Misbehavior::Http10).await;
    let x = exchange(
        f.gw.addr(),
        b"GET /bad/old HTTP/1.1\r\nhost: a\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(x.text().starts_with("HTTP/1.1 200 "), "{}", x.text());
    let rs = x.responses();
    assert_eq!(rs.len(), 1, "{}", x.text());
    assert_eq!(rs[0].body, b"old");
    assert!(!x.closed, "the client connection was closed: {}", x.text());
}
