//! The HTTP/1.1 upstream connection pool, watched from the upstream's side of real sockets:
//! connections are reused, one the upstream closed while idle is replaced without an error,
//! `pool_max_idle` and `pool_idle_timeout` close what they should (also without traffic), and a
//! connection is not reused while its response body is unfinished or while it is still sending
//! a request body the upstream answered early.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_testkit::extra_a::PREAMBLE;
use weir_testkit::extra_b::TestPki;
use weir_testkit::{TestClient, TestGateway, eventually};

/// A raw HTTP/1.1 upstream that counts the connections it accepted and saw closed.
struct CountingUpstream {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    /// Request lines received, in order.
    lines: Arc<std::sync::Mutex<Vec<String>>>,
}

#[derive(Clone, Copy, Default)]
struct Behaviour {
    /// Close the connection this long after each response (an upstream keep-alive timeout).
    close_after: Option<Duration>,
    /// Wait this long before answering.
    delay: Duration,
    /// Body length of each answer.
    body_len: usize,
    /// Answer with a chunked body followed by a trailer field.
    trailers: bool,
}

impl CountingUpstream {
    async fn start(b: Behaviour) -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let lines: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let (a, c, ls) = (accepted.clone(), closed.clone(), lines.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    continue;
                };
                let n = a.fetch_add(1, Ordering::SeqCst) + 1;
                let (c, ls) = (c.clone(), ls.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // One request head at a time (the gateway sends GETs without bodies).
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => {
                                    c.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        ls.lock()
                            .unwrap()
                            .push(head.lines().next().unwrap_or("").to_string());
                        buf.drain(..end);
                        tokio::time::sleep(b.delay).await;
                        let body = "x".repeat(b.body_len);
                        let answer = if b.trailers {
                            format!(
                                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\
                                 x-conn: {n}\r\n\r\n{:x}\r\n{body}\r\n0\r\nx-sum: 42\r\n\r\n",
                                body.len()
                            )
                        } else {
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-conn: {n}\r\n\r\n{body}",
                                body.len()
                            )
                        };
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            c.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        if let Some(after) = b.close_after {
                            tokio::time::sleep(after).await;
                            c.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            accepted,
            closed,
            lines,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

fn config(up: &CountingUpstream, upstream_extra: &str) -> String {
    config_with_route(up, upstream_extra, "")
}

fn config_with_route(up: &CountingUpstream, upstream_extra: &str, route_extra: &str) -> String {
    format!(
        "{PREAMBLE}\n[upstreams.pool]\ntargets = [{{ url = \"http://{}\" }}]\n{upstream_extra}\n\n\
         [[routes]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"pool\"\n{route_extra}\n",
        up.addr
    )
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let up = CountingUpstream::start(Behaviour {
        body_len: 10,
        ..Behaviour::default()
    })
    .await;
    let gw = TestGateway::start(&config(&up, "")).await;
    let client = TestClient::new();
    for _ in 0..20 {
        let r = client.get(&gw.url("/a")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 10);
    }
    assert_eq!(up.accepted(), 1, "each request opened its own connection");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_chunked_response_with_trailers_returns_its_connection() {
    // hyper stops reading a body after its trailers, without asking for the end of the stream.
    let up = CountingUpstream::start(Behaviour {
        body_len: 10,
        trailers: true,
        ..Behaviour::default()
    })
    .await;
    let gw = TestGateway::start(&config(&up, "")).await;
    let client = TestClient::new();
    for i in 0..3 {
        let r = client.get(&gw.url("/t")).await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.body, "x".repeat(10).as_bytes());
    }
    assert_eq!(
        up.accepted(),
        1,
        "a response with trailers did not return its connection"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_replaced() {
    let up = CountingUpstream::start(Behaviour {
        close_after: Some(Duration::from_millis(30)),
        ..Behaviour::default()
    })
    .await;
    let gw = TestGateway::start(&config(&up, "")).await;
    let client = TestClient::new();
    for i in 0..5 {
        let r = client.get(&gw.url("/a")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    assert_eq!(up.accepted(), 5);
    gw.shutdown().await;
}

#[tokio::test]
async fn idle_connections_beyond_pool_max_idle_are_closed() {
    let up = CountingUpstream::start(Behaviour {
        delay: Duration::from_millis(300),
        ..Behaviour::default()
    })
    .await;
    let gw = TestGateway::start(&config(&up, "pool_max_idle = 1")).await;
    let client = TestClient::new();
    let url = gw.url("/a");
    let answers = futures::future::join_all((0..4).map(|_| client.get(&url))).await;
    assert!(answers.iter().all(|r| r.status == 200));
    assert_eq!(
        up.accepted(),
        4,
        "four concurrent requests, four connections"
    );
    assert!(
        eventually(Duration::from_secs(5), || async { up.closed() == 3 }).await,
        "closed {} of 4, want 3 (one kept idle)",
        up.closed()
    );
    // The one kept serves the next request.
    assert_eq!(client.get(&url).await.status, 200);
    assert_eq!(up.accepted(), 4);
    gw.shutdown().await;
}

#[tokio::test]
async fn idle_connections_are_retired_after_pool_idle_timeout() {
    let up = CountingUpstream::start(Behaviour::default()).await;
    let gw = TestGateway::start(&config(&up, "pool_idle_timeout = \"200ms\"")).await;
    let client = TestClient::new();
    assert_eq!(client.get(&gw.url("/a")).await.status, 200);
    assert_eq!(client.get(&gw.url("/a")).await.status, 200);
    assert_eq!(up.accepted(), 1, "reused within the idle timeout");
    // No request comes to find the idle connection: it is closed all the same.
    assert!(
        eventually(Duration::from_secs(5), || async { up.closed() == 1 }).await,
        "an idle connection outlived pool_idle_timeout"
    );
    assert_eq!(client.get(&gw.url("/a")).await.status, 200);
    assert_eq!(up.accepted(), 2, "a retired connection was reused");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_response_the_client_abandoned_does_not_return_its_connection() {
    // A large body the client stops reading: that connection is closed, not reused mid-body.
    let up = CountingUpstream::start(Behaviour {
        body_len: 4 << 20,
        ..Behaviour::default()
    })
    .await;
    let gw = TestGateway::start(&config(&up, "")).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 1024];
    let n = s.read(&mut first).await.unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    drop(s);
    assert!(
        eventually(Duration::from_secs(5), || async { up.closed() == 1 }).await,
        "the abandoned response's upstream connection stayed open"
    );
    let small = TestClient::new().get(&gw.url("/after")).await;
    assert_eq!(small.status, 200);
    assert_eq!(small.body.len(), 4 << 20);
    assert_eq!(up.accepted(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_connection_still_sending_a_request_body_is_not_reused() {
    // The upstream answers every request at once, without reading its body (as a 401 or 413
    // to an upload would). The client's upload stalls, so that connection is still sending it.
    let up = CountingUpstream::start(Behaviour::default()).await;
    let gw = TestGateway::start(&config_with_route(&up, "", "timeout = \"3s\"")).await;
    let mut upload = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    // Larger than what the gateway buffers for retries, so it is streamed.
    upload
        .write_all(b"POST /upload HTTP/1.1\r\nhost: a\r\ncontent-length: 1000000\r\n\r\n")
        .await
        .unwrap();
    upload.write_all(&[b'a'; 4096]).await.unwrap();
    let mut head = [0u8; 256];
    let n = upload.read(&mut head).await.unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    // The next request must get a connection of its own, not wait behind the stalled upload.
    let next = TestClient::new().get(&gw.url("/next")).await;
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(up.accepted(), 2);
    drop(upload);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_empty_rewritten_path_is_sent_as_slash() {
    let up = CountingUpstream::start(Behaviour::default()).await;
    let toml = format!(
        "{PREAMBLE}\n[upstreams.pool]\ntargets = [{{ url = \"http://{}\" }}]\n\n\
         [[routes]]\nname = \"api\"\nmatch = {{ path_regex = \"^/api(/.*)?$\" }}\nupstream = \"pool\"\nrewrite = \"$1\"\n",
        up.addr
    );
    let gw = TestGateway::start(&toml).await;
    let client = TestClient::new();
    assert_eq!(client.get(&gw.url("/api/x?q=1")).await.status, 200);
    assert_eq!(client.get(&gw.url("/api")).await.status, 200);
    assert_eq!(client.get(&gw.url("/api?q=1")).await.status, 200);
    assert_eq!(
        *up.lines.lock().unwrap(),
        [
            "GET /x?q=1 HTTP/1.1",
            "GET / HTTP/1.1",
            "GET /?q=1 HTTP/1.1"
        ]
    );
    gw.shutdown().await;
}

/// An HTTPS upstream for `up.test` (certificate from `pki`); counts TLS connections accepted.
async fn tls_upstream(pki: &TestPki) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use rustls_pki_types::pem::PemObject;
    let leaf = pki.server_cert(&["up.test"]);
    let certs = vec![leaf.der.clone()];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let (acceptor, a) = (acceptor.clone(), a.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"tls-ok")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn https_targets_are_verified_with_the_configured_ca_and_sni_and_pooled() {
    let pki = TestPki::new("upstream-ca");
    let (addr, accepted) = tls_upstream(&pki).await;
    let config = |tls: &str| {
        format!(
            "{PREAMBLE}\n[upstreams.pool]\ntargets = [{{ url = \"https://{addr}\" }}]\n{tls}\n\n\
             [[routes]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"pool\"\n"
        )
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), pki.ca_pem()).unwrap();
    let gw = TestGateway::start_in(dir, &config("tls = { ca = \"ca.pem\", sni = \"up.test\" }"))
        .await
        .unwrap();
    let client = TestClient::new();
    for _ in 0..3 {
        let r = client.get(&gw.url("/a")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "tls-ok");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one pooled TLS connection"
    );
    gw.shutdown().await;

    // Without the CA the upstream's certificate is not trusted, and without `sni` the name
    // checked is the target's address, which the certificate does not cover: 502 both times.
    let gw = TestGateway::start(&config("tls = { sni = \"up.test\" }")).await;
    let r = client.get(&gw.url("/a")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    gw.shutdown().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), pki.ca_pem()).unwrap();
    let gw = TestGateway::start_in(dir, &config("tls = { ca = \"ca.pem\" }"))
        .await
        .unwrap();
    let r = client.get(&gw.url("/a")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "no TLS session was completed"
    );
    gw.shutdown().await;
}
