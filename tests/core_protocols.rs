//! Protocols through a real gateway: WebSocket upgrade and echo, HTTP/2 with trailers to an h2c
//! upstream (gRPC-style), and h2c prior knowledge from the client.

use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use weir_testkit::extra_b::{
    H2_PARTS, H2TrailersUpstream, WsEchoUpstream, get, h2_handshake, h2_send,
};
use weir_testkit::{TestClient, TestGateway, TestUpstream};

type WsClient =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next message, within a bound.
async fn next(c: &mut WsClient) -> Message {
    tokio::time::timeout(Duration::from_secs(5), c.next())
        .await
        .expect("no echo within 5 s")
        .expect("stream ended")
        .expect("WebSocket error")
}

#[tokio::test]
async fn websocket_echo_through_the_gateway() {
    let ws = WsEchoUpstream::start().await;
    let gw = TestGateway::start(&format!(
        r#"
version = 1
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
[upstreams.ws]
targets = [{{ url = "http://{}" }}]
[[routes]]
name = "ws"
match = {{ path_prefix = "/ws" }}
upstream = "ws"
"#,
        ws.addr
    ))
    .await;

    let url = format!("ws://{}/ws/chat", gw.addr());
    let (mut client, res) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    .expect("WebSocket handshake through the gateway timed out")
    .expect("WebSocket handshake through the gateway failed");
    assert_eq!(res.status(), 101);
    assert_eq!(ws.paths.lock().unwrap().as_slice(), ["/ws/chat"]);

    for i in 0..3 {
        let text = format!("hello {i}");
        client.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(next(&mut client).await, Message::text(text));
    }
    // A large binary message crosses frames and buffers intact.
    let blob: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    client.send(Message::binary(blob.clone())).await.unwrap();
    assert_eq!(next(&mut client).await, Message::binary(blob));
    client.close(None).await.unwrap();
}

async fn h2_gateway(up: &H2TrailersUpstream) -> TestGateway {
    TestGateway::start(&format!(
        r#"
version = 1
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
[upstreams.grpc]
targets = [{{ url = "http://{}" }}]
protocol = "h2"
[[routes]]
name = "grpc"
match = {{ path_prefix = "/" }}
upstream = "grpc"
"#,
        up.addr
    ))
    .await
}

fn expected_body() -> String {
    (0..H2_PARTS).map(|i| format!("part-{i}\n")).collect()
}

#[tokio::test]
async fn h2_trailers_pass_through_to_an_h2c_upstream() {
    let up = H2TrailersUpstream::start().await;
    let gw = h2_gateway(&up).await;

    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let mut send = h2_handshake(tcp).await.unwrap();
    let req = http::Request::post(format!("http://{}/pkg.Service/Method", gw.addr()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"\0\0\0\0\0",
        )))
        .unwrap();
    let r = h2_send(&mut send, req).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    assert_eq!(String::from_utf8_lossy(&r.body), expected_body());
    let trailers = r.trailers.as_ref().expect("the trailers were lost");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("grpc-message").unwrap(), "ok");

    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].version,
        http::Version::HTTP_2,
        "upstream not reached over h2"
    );
    assert_eq!(seen[0].path, "/pkg.Service/Method");
    assert_eq!(
        seen[0].te.as_deref(),
        Some("trailers"),
        "te: trailers must survive hop-by-hop stripping"
    );
}

#[tokio::test]
async fn http1_client_to_an_h2_upstream() {
    let up = H2TrailersUpstream::start().await;
    let gw = h2_gateway(&up).await;
    let r = TestClient::new().get(&gw.url("/any")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), expected_body());
    assert_eq!(up.seen.lock().unwrap()[0].version, http::Version::HTTP_2);
}

#[tokio::test]
async fn h2c_prior_knowledge_from_the_client() {
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
name = "all"
match = {{ path_prefix = "/" }}
upstream = "echo"
"#,
        up.url()
    ))
    .await;
    let c = TestClient::h2c();
    for i in 0..3 {
        let r = c
            .get_with(&gw.url(&format!("/h2c/{i}")), &[("x-n", "1")])
            .await;
        assert_eq!(r.status, 200);
        let doc = r.json();
        assert_eq!(doc["path"], format!("/h2c/{i}"));
        assert_eq!(doc["headers"]["x-n"], "1");
        // The upstream speaks HTTP/1.1; the gateway translated.
        assert_eq!(doc["version"], "HTTP/1.1");
        // :authority became the Host the upstream sees.
        assert_eq!(doc["headers"]["host"], gw.addr().to_string(), "{doc}");
    }
    // Concurrent streams on one connection.
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let send = h2_handshake(tcp).await.unwrap();
    let futs = (0..10).map(|i| {
        let mut s = send.clone();
        let url = gw.url(&format!("/c/{i}"));
        async move { h2_send(&mut s, get(&url, &[])).await.unwrap() }
    });
    let all = futures::future::join_all(futs).await;
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["path"], format!("/c/{i}"));
    }
    assert_eq!(up.hits(), 13);
}
