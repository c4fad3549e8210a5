//! Helpers for the core tests (hygiene, limits, TLS, protocols, shutdown): a small test PKI,
//! TLS clients, an HTTP/1 response parser for raw exchanges, HTTP/1 and HTTP/2 clients over any
//! stream that keep trailers, a WebSocket echo upstream, an h2c upstream that answers with
//! trailers, and a way to get the real `weir` binary.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------------
// PKI
// ---------------------------------------------------------------------------------------------

/// A throw-away certificate authority that issues server and client certificates.
pub struct TestPki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// An issued certificate with its private key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestPki {
    pub fn new(common_name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        Self {
            ca: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// A server certificate valid for `names` (the first is also the common name).
    pub fn server_cert(&self, names: &[&str]) -> Leaf {
        let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate for mTLS.
    pub fn client_cert(&self, common_name: &str) -> Leaf {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, params: rcgen::CertificateParams) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

impl Leaf {
    /// Writes `STEM.crt` and `STEM.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

/// A rustls client trusting `roots`, optionally presenting a client certificate, offering `alpn`.
pub fn tls_client_config(
    roots: &[CertificateDer<'static>],
    client: Option<&Leaf>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store);
    let mut cfg = match client {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.der.clone()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

pub type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects and completes a TLS handshake with SNI `sni`.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<ClientTls> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// The leaf certificate the server presented.
pub fn peer_leaf(s: &ClientTls) -> Option<CertificateDer<'static>> {
    s.get_ref()
        .1
        .peer_certificates()?
        .first()
        .map(|c| c.clone().into_owned())
}

/// The ALPN protocol the server chose.
pub fn alpn(s: &ClientTls) -> Option<Vec<u8>> {
    s.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

// ---------------------------------------------------------------------------------------------
// HTTP clients over any stream (responses keep trailers)
// ---------------------------------------------------------------------------------------------

/// A response read fully, with its trailers.
#[derive(Debug)]
pub struct FullResp {
    pub status: u16,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl FullResp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub type H1Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
pub type H2Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// HTTP/1.1 client connection over `io` (the connection task is spawned).
pub async fn h1_handshake<I>(io: I) -> anyhow::Result<H1Sender>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// HTTP/2 client connection over `io` (prior knowledge or after ALPN `h2`).
pub async fn h2_handshake<I>(io: I) -> anyhow::Result<H2Sender>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// Reads a response fully, keeping its trailers.
pub async fn collect_response(res: http::Response<Incoming>) -> anyhow::Result<FullResp> {
    let (parts, body) = res.into_parts();
    let collected = tokio::time::timeout(Duration::from_secs(30), body.collect()).await??;
    let trailers = collected.trailers().cloned();
    Ok(FullResp {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// Sends one request on an HTTP/1 connection and reads the answer.
pub async fn h1_send(
    send: &mut H1Sender,
    req: http::Request<Full<Bytes>>,
) -> anyhow::Result<FullResp> {
    send.ready().await?;
    let res = tokio::time::timeout(Duration::from_secs(30), send.send_request(req)).await??;
    collect_response(res).await
}

/// Sends one request on an HTTP/2 connection and reads the answer.
pub async fn h2_send(
    send: &mut H2Sender,
    req: http::Request<Full<Bytes>>,
) -> anyhow::Result<FullResp> {
    send.ready().await?;
    let res = tokio::time::timeout(Duration::from_secs(30), send.send_request(req)).await??;
    collect_response(res).await
}

/// A GET with an empty body.
pub fn get(uri: &str, headers: &[(&str, &str)]) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::get(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1 exchanges
// ---------------------------------------------------------------------------------------------

/// What a raw exchange read, and whether the peer closed (EOF or reset) before `idle` passed.
pub struct Exchange {
    pub bytes: Vec<u8>,
    pub closed: bool,
}

impl Exchange {
    pub fn responses(&self) -> Vec<RawResponse> {
        parse_responses(&self.bytes)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Writes `bytes` on a fresh connection, then reads until the peer closes or is idle for `idle`.
/// A write error (the server closed early) is not fatal: what was answered is still read.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], idle: Duration) -> Exchange {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let data = bytes.to_vec();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&data).await;
        // Keep the write half open (no FIN): a half-closed client must not be why the server closes.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(w);
    });
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let closed = loop {
        match tokio::time::timeout(idle, r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    writer.abort();
    Exchange { bytes: out, closed }
}

/// One HTTP/1 response parsed from raw bytes.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parses every complete response in `raw` (Content-Length, chunked, or body up to the end).
pub fn parse_responses(raw: &[u8]) -> Vec<RawResponse> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some(end) = find(rest, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let Some(status) = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse::<u16>().ok())
        else {
            break;
        };
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let after = &rest[end + 4..];
        let (body, used) = if (100..200).contains(&status) || status == 204 || status == 304 {
            (Vec::new(), 0)
        } else if get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            match dechunk(after) {
                Some(x) => x,
                None => break,
            }
        } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            if after.len() < n {
                break;
            }
            (after[..n].to_vec(), n)
        } else {
            (after.to_vec(), after.len())
        };
        out.push(RawResponse {
            status,
            headers,
            body,
        });
        rest = &after[used..];
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let start = b.len();
    let mut body = Vec::new();
    loop {
        let eol = find(b, b"\r\n")?;
        let size_txt = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_txt.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            // Trailer section ends with an empty line.
            let end = find(b, b"\r\n\r\n")
                .map(|p| p + 4)
                .or_else(|| b.starts_with(b"\r\n").then_some(2))?;
            b = &b[end..];
            return Some((body, start - b.len()));
        }
        if b.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

// ---------------------------------------------------------------------------------------------
// Upstreams
// ---------------------------------------------------------------------------------------------

/// A WebSocket upstream that echoes every text and binary message; records handshake paths.
pub struct WsEchoUpstream {
    pub addr: SocketAddr,
    pub paths: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WsEchoUpstream {
    pub async fn start() -> Self {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let paths: Arc<Mutex<Vec<String>>> = Arc::default();
        let p = paths.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let p = p.clone();
                tokio::spawn(async move {
                    // The error type is tungstenite's, sized as it is.
                    #[allow(clippy::result_large_err)]
                    let record = move |req: &Request, res: Response| {
                        p.lock().unwrap().push(req.uri().path().to_string());
                        Ok(res)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, record).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_close() {
                            break;
                        }
                        // Pings are answered by tungstenite itself; data is echoed.
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self { addr, paths, task }
    }
}

impl Drop for WsEchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the h2c trailers upstream saw of one request.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub version: http::Version,
    pub path: String,
    pub te: Option<String>,
}

/// An h2c (HTTP/2 prior knowledge) upstream that answers every request with a streamed body
/// (`part-0\n` … `part-N\n`, a few ms apart) followed by trailers `grpc-status: 0` and
/// `grpc-message: ok`, as a gRPC server would.
pub struct H2TrailersUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<SeenRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Number of data frames the trailers upstream sends.
pub const H2_PARTS: usize = 5;

impl H2TrailersUpstream {
    pub async fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<SeenRequest>>> = Arc::default();
        let s2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let seen = s2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<Incoming>| {
                        let seen = seen.clone();
                        async move { Ok::<_, Infallible>(answer_with_trailers(req, &seen).await) }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Self { addr, seen, task }
    }
}

impl Drop for H2TrailersUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type TrailerBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer_with_trailers(
    req: http::Request<Incoming>,
    seen: &Mutex<Vec<SeenRequest>>,
) -> http::Response<TrailerBody> {
    seen.lock().unwrap().push(SeenRequest {
        version: req.version(),
        path: req.uri().path().to_string(),
        te: req
            .headers()
            .get("te")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    });
    let _ = req.into_body().collect().await;
    let frames = futures::stream::unfold(0usize, |i| async move {
        if i > H2_PARTS {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let frame = if i < H2_PARTS {
            Frame::data(Bytes::from(format!("part-{i}\n")))
        } else {
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_static("0"));
            t.insert("grpc-message", http::HeaderValue::from_static("ok"));
            Frame::trailers(t)
        };
        Some((Ok::<_, Infallible>(frame), i + 1))
    });
    let mut res = http::Response::new(StreamBody::new(frames).boxed());
    res.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    res
}

// ---------------------------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------------------------

/// Path of `target/debug/weir`, building it with `cargo build -p weir --bin weir` if it is missing
/// (the suite's own build does not produce another package's binary).
pub fn ensure_weir_bin() -> PathBuf {
    let bin = crate::weir_bin();
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "weir", "--bin", "weir"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "cargo build -p weir --bin weir failed");
    }
    assert!(
        bin.exists(),
        "{} still missing after the build",
        bin.display()
    );
    bin
}
