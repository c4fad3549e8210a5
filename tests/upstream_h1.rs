//! The in-task HTTP/1.1 client (`gateway/src/upstream/h1.rs`), which carries requests without
//! a body to plain-HTTP targets, against a scripted raw upstream: strict response framing (a
//! conflict is a 502), interim responses passed over, bodyless responses and chunked bodies
//! with extensions and trailers that keep their connection, responses read a byte at a time,
//! connections retired when a response leaves stray bytes, asks to close, is HTTP/1.0 or runs
//! to the close, and a stale pooled connection retried only for idempotent methods. The
//! requests the upstream read are checked byte for byte where the gateway writes them itself.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use weir_testkit::extra_a::PREAMBLE;
use weir_testkit::extra_b::exchange;
use weir_testkit::{TestClient, TestGateway};

/// How a [`ScriptedUpstream`] answers one request head.
#[derive(Clone, Copy)]
enum Answer {
    /// These bytes in one write; the connection stays open.
    Keep(&'static [u8]),
    /// These bytes, then the connection is closed.
    Close(&'static [u8]),
    /// These bytes one per write, 1 ms apart (every read the gateway makes sees a piece); the
    /// connection stays open.
    Trickle(&'static [u8]),
    /// No answer: the connection is closed (an upstream closing an idle connection just as a
    /// request arrives on it).
    Hangup,
}

/// Answers the n-th request head it reads (over all connections) as `script[n]` says (the last
/// entry once the script runs out).
struct ScriptedUpstream {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedUpstream {
    /// Answers in one write each, keeping connections open.
    async fn start(script: &[&'static [u8]]) -> Self {
        Self::answering(script.iter().map(|b| Answer::Keep(b)).collect()).await
    }

    async fn answering(script: Vec<Answer>) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let (c, h) = (connections.clone(), heads.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (h, script) = (h.clone(), script.clone());
                conns.spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = buf.drain(..end + 4).collect();
                            let n = {
                                let mut heads = h.lock().unwrap();
                                heads.push(String::from_utf8_lossy(&head).into_owned());
                                heads.len() - 1
                            };
                            let answer = *script.get(n).or(script.last()).unwrap();
                            let written = match answer {
                                Answer::Keep(b) => s.write_all(b).await,
                                Answer::Close(b) => {
                                    let _ = s.write_all(b).await;
                                    return;
                                }
                                Answer::Trickle(b) => {
                                    s.set_nodelay(true).unwrap();
                                    let mut r = Ok(());
                                    for byte in b {
                                        r = s.write_all(std::slice::from_ref(byte)).await;
                                        tokio::time::sleep(Duration::from_millis(1)).await;
                                    }
                                    r
                                }
                                Answer::Hangup => return,
                            };
                            if written.is_err() {
                                return;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            heads,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn gateway(up: &ScriptedUpstream) -> TestGateway {
    gateway_with_timeout(up, "2s").await
}

async fn gateway_with_timeout(up: &ScriptedUpstream, timeout: &str) -> TestGateway {
    TestGateway::start(&format!(
        "{PREAMBLE}\n[upstreams.app]\ntargets = [{{ url = \"http://{}\" }}]\n\n\
         [[routes]]\nname = \"app\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\n\
         timeout = \"{timeout}\"\n",
        up.addr
    ))
    .await
}

#[tokio::test]
async fn conflicting_response_framing_is_a_502() {
    for bad in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
        SEVENTEEN_INTERIM,
    ] {
        let up = ScriptedUpstream::start(&[bad, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"])
            .await;
        let gw = gateway(&up).await;
        let client = TestClient::new();
        let r = client.get(&gw.url("/x")).await;
        let shown = String::from_utf8_lossy(bad);
        assert_eq!(r.status, 502, "{shown:?} relayed: {}", r.text());
        assert!(r.text().contains("upstream-failed"), "{}", r.text());
        // The connection that carried the bad response is not reused.
        let r = client.get(&gw.url("/y")).await;
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{shown:?}");
        assert_eq!(up.connections(), 2, "{shown:?}");
    }
}

/// Seventeen `100 Continue`s before the final response: one more than the client passes over.
const SEVENTEEN_INTERIM: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlate";

#[tokio::test]
async fn interim_responses_are_passed_over_and_the_connection_reused() {
    let up = ScriptedUpstream::start(&[
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst",
        b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond",
    ])
    .await;
    let gw = gateway(&up).await;
    let client = TestClient::new();
    let r = client.get(&gw.url("/1")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "first"));
    let r = client.get(&gw.url("/2")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "second"));
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn bodyless_responses_keep_their_connection() {
    let up = ScriptedUpstream::start(&[
        // A HEAD response states the length of the body it does not send.
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n",
        // Nor does a HEAD response that says chunked.
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone",
    ])
    .await;
    let gw = gateway(&up).await;
    let x = exchange(
        gw.addr(),
        b"HEAD /h HTTP/1.1\r\nhost: a\r\n\r\nGET /n HTTP/1.1\r\nhost: a\r\n\r\nGET /m HTTP/1.1\r\nhost: a\r\n\r\nHEAD /c HTTP/1.1\r\nhost: a\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    let text = x.text();
    let heads: Vec<&str> = text.split("\r\n\r\n").collect();
    assert!(heads[0].starts_with("HTTP/1.1 200 "), "{text}");
    assert!(heads[0].contains("content-length: 10"), "{text}");
    assert!(heads[1].starts_with("HTTP/1.1 204 "), "{text}");
    assert!(heads[2].starts_with("HTTP/1.1 304 "), "{text}");
    assert!(heads[3].starts_with("HTTP/1.1 200 "), "{text}");
    assert!(!x.closed, "{text}");
    let r = TestClient::new().get(&gw.url("/last")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "done"));
    assert_eq!(up.connections(), 1, "{:?}", up.heads());
}

/// The trailer section is read (and the connection kept); hyper's HTTP/1 server does not send
/// trailers on to the client, through either client.
#[tokio::test]
async fn chunked_bodies_with_extensions_and_a_trailer_section_keep_their_connection() {
    let up = ScriptedUpstream::start(&[
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;name=value\r\nabc\r\n4 \r\ndefg\r\n0\r\nx-checksum: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ])
    .await;
    let gw = gateway(&up).await;
    let client = TestClient::new();
    let r = client.get(&gw.url("/c")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "abcdefg"));
    let r = client.get(&gw.url("/d")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(up.connections(), 1);
}

/// A chunk-size line that is empty, or has a bare LF in its extension, could end the body where
/// another hop would not: the client connection is closed without a complete response (with no
/// bytes at all when the error comes before hyper flushed the head, as in hostile_upstream.rs).
#[tokio::test]
async fn ambiguous_chunk_lines_cut_the_body() {
    for bad in [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;x\nyz\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
        // Bare LFs in the trailer section: its end, or a field's.
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx: 1\n\r\n",
    ] {
        let up = ScriptedUpstream::start(&[bad]).await;
        // A route timeout longer than the wait below: a body that stalled instead of failing
        // would leave the client connection open.
        let gw = gateway_with_timeout(&up, "30s").await;
        let x = exchange(
            gw.addr(),
            b"GET /c HTTP/1.1\r\nhost: a\r\n\r\n",
            Duration::from_secs(3),
        )
        .await;
        let shown = String::from_utf8_lossy(bad);
        assert!(
            x.bytes.is_empty() || x.text().starts_with("HTTP/1.1 200 "),
            "{shown:?}: {}",
            x.text()
        );
        assert!(x.closed, "{shown:?}: the client connection stayed open");
        assert!(
            x.responses().is_empty(),
            "{shown:?}: a complete response: {}",
            x.text()
        );
    }
}

/// A 204 or 304 that declares a body may send it after its head, where the next request's
/// response would be read: such a connection is not reused (one without a length is).
#[tokio::test]
async fn no_content_responses_that_declare_a_body_retire_the_connection() {
    let up = ScriptedUpstream::start(&[
        b"HTTP/1.1 204 No Content\r\ncontent-length: 4\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ])
    .await;
    let gw = gateway(&up).await;
    let client = TestClient::new();
    for (path, status) in [("/a", 204), ("/b", 304), ("/c", 204), ("/d", 200)] {
        assert_eq!(client.get(&gw.url(path)).await.status, status, "{path}");
    }
    // The first two each closed their connection; the third kept its own for the fourth.
    assert_eq!(up.connections(), 3, "{:?}", up.heads());
}

#[tokio::test]
async fn stray_bytes_or_connection_close_retire_the_connection() {
    let up = ScriptedUpstream::start(&[
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA",
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nbye",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nthird",
    ])
    .await;
    let gw = gateway(&up).await;
    let client = TestClient::new();
    for want in ["ok", "bye", "third"] {
        let r = client.get(&gw.url("/s")).await;
        assert_eq!((r.status, r.text().as_str()), (200, want));
    }
    assert_eq!(up.connections(), 3);
}

/// The request head the gateway writes: origin-form target, HTTP/1.1, the client's headers
/// (hop-by-hop ones removed), and no `content-length` that the client did not send (hyper's
/// client, which carries requests with a body, adds none either).
#[tokio::test]
async fn request_heads_are_written_in_origin_form() {
    let up = ScriptedUpstream::start(&[b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"]).await;
    let gw = gateway(&up).await;
    let x = exchange(
        gw.addr(),
        b"GET /a/b?q=1 HTTP/1.1\r\nhost: shop.test\r\nx-one: 1\r\nkeep-alive: 5\r\n\r\nPOST /p HTTP/1.1\r\nhost: shop.test\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(x.responses().len(), 2, "{}", x.text());
    let heads = up.heads();
    assert!(
        heads[0].starts_with("GET /a/b?q=1 HTTP/1.1\r\n"),
        "{}",
        heads[0]
    );
    let lower = heads[0].to_ascii_lowercase();
    assert!(lower.contains("\r\nhost: shop.test\r\n"), "{}", heads[0]);
    assert!(lower.contains("\r\nx-one: 1\r\n"), "{}", heads[0]);
    assert!(!lower.contains("keep-alive"), "{}", heads[0]);
    assert!(!lower.contains("content-length"), "{}", heads[0]);
    assert!(heads[1].starts_with("POST /p HTTP/1.1\r\n"), "{}", heads[1]);
    assert!(
        !heads[1].to_ascii_lowercase().contains("content-length"),
        "{}",
        heads[1]
    );
    assert_eq!(up.connections(), 1);
}

/// An idle connection the upstream closes just as the next request arrives on it: a GET is sent
/// again on a new connection, a POST (which the upstream may have acted on) is a 502.
#[tokio::test]
async fn a_reused_connection_closed_unanswered_is_retried_only_for_idempotent_methods() {
    let script = || {
        vec![
            Answer::Keep(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst"),
            Answer::Hangup,
            Answer::Keep(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nthird"),
        ]
    };
    let up = ScriptedUpstream::answering(script()).await;
    let gw = gateway(&up).await;
    let client = TestClient::new();
    let r = client.get(&gw.url("/1")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "first"));
    let r = client.get(&gw.url("/2")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "third"));
    assert_eq!((up.connections(), up.heads().len()), (2, 3));

    let up = ScriptedUpstream::answering(script()).await;
    let gw = gateway(&up).await;
    let x = exchange(
        gw.addr(),
        b"GET /1 HTTP/1.1\r\nhost: a\r\n\r\nPOST /2 HTTP/1.1\r\nhost: a\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    let rs = x.responses();
    assert_eq!(rs.len(), 2, "{}", x.text());
    assert_eq!((rs[0].status, rs[1].status), (200, 502), "{}", x.text());
    assert_eq!(up.heads().len(), 2, "the POST was sent again");
}

/// Heads, chunk lines, chunk data, CRLFs and trailers that arrive a byte at a time are read as
/// if they came whole, and the connection is reused.
#[tokio::test]
async fn responses_that_arrive_a_byte_at_a_time_are_read_whole() {
    let up = ScriptedUpstream::answering(vec![
        Answer::Trickle(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;a=b\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 5\r\n\r\n",
        ),
        Answer::Trickle(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfour"),
    ])
    .await;
    let gw = gateway(&up).await;
    let client = TestClient::new();
    let r = client.get(&gw.url("/a")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "abcde"));
    let r = client.get(&gw.url("/b")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "four"));
    assert_eq!(up.connections(), 1);
}

/// Responses whose framing does not allow a next one on the connection: HTTP/1.0 (even with a
/// length) and a body that runs to the close.
#[tokio::test]
async fn http10_and_close_delimited_responses_are_not_reused() {
    let up = ScriptedUpstream::answering(vec![
        Answer::Keep(b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nold"),
        Answer::Close(b"HTTP/1.1 200 OK\r\n\r\nto the end"),
        Answer::Keep(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlast"),
    ])
    .await;
    let gw = gateway(&up).await;
    let client = TestClient::new();
    for want in ["old", "to the end", "last"] {
        let r = client.get(&gw.url("/r")).await;
        assert_eq!((r.status, r.text().as_str()), (200, want));
    }
    assert_eq!(up.connections(), 3);
}

/// A reason phrase other than the standard one reaches the client, as it did through hyper's
/// client.
#[tokio::test]
async fn a_custom_reason_phrase_is_relayed() {
    let up = ScriptedUpstream::start(&[b"HTTP/1.1 200 Fine Thanks\r\ncontent-length: 2\r\n\r\nok"])
        .await;
    let gw = gateway(&up).await;
    let x = exchange(
        gw.addr(),
        b"GET / HTTP/1.1\r\nhost: a\r\n\r\n",
        Duration::from_millis(300),
    )
    .await;
    assert!(
        x.text().starts_with("HTTP/1.1 200 Fine Thanks\r\n"),
        "{}",
        x.text()
    );
}

/// The response head limit (64 KiB), whatever the reads it arrives in: a 60 KiB head is
/// relayed, a 70 KiB one is a 502.
#[tokio::test]
async fn response_heads_over_64_kib_are_a_502() {
    let head = |n: usize| -> &'static [u8] {
        let text = format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok",
            "a".repeat(n)
        );
        Box::leak(text.into_bytes().into_boxed_slice())
    };
    for (size, want) in [(60 * 1024, 200), (70 * 1024, 502)] {
        let up = ScriptedUpstream::start(&[head(size)]).await;
        let gw = gateway(&up).await;
        let r = TestClient::new().get(&gw.url("/big")).await;
        assert_eq!(r.status, want, "a {size}-byte header: {}", r.text());
    }
}

/// An upstream that closes every request unanswered (a crash, nginx's `444`) gets a reused
/// connection's request once more, on a new connection, not once per idle connection.
#[tokio::test]
async fn a_request_closed_unanswered_is_resent_once_not_per_idle_connection() {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    // Three slow answers at once leave three idle connections; then every request is dropped.
    let up = ScriptedUpstream::answering(vec![
        Answer::Trickle(OK),
        Answer::Trickle(OK),
        Answer::Trickle(OK),
        Answer::Hangup,
    ])
    .await;
    let gw = gateway(&up).await;
    let client = TestClient::new();
    let urls: Vec<String> = (0..3).map(|i| gw.url(&format!("/{i}"))).collect();
    let warm = futures::future::join_all(urls.iter().map(|u| client.get(u)));
    for r in warm.await {
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        up.connections(),
        3,
        "the warm-up left three idle connections"
    );
    let r = client.get(&gw.url("/dropped")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    let sent = up
        .heads()
        .iter()
        .filter(|h| h.starts_with("GET /dropped"))
        .count();
    assert_eq!(sent, 2, "a pooled connection, then a new one");
}
