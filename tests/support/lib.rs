//! Test kit for Weir's integration tests and benchmarks: real gateways on real sockets, real
//! upstream servers, a small HTTP client, and raw-socket helpers for protocol abuse.
//!
//! Everything binds `127.0.0.1:0`; nothing here touches another address.

#![allow(clippy::unwrap_used)]

pub mod extra_a;
pub mod extra_b;
pub mod extra_c;
pub mod extra_d;
pub mod extra_e;
pub mod extra_f;
pub mod upstream;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use upstream::{TestUpstream, UpstreamBehavior};

/// A gateway running in this process on ephemeral ports.
pub struct TestGateway {
    pub running: Option<weir::run::Running>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl TestGateway {
    /// Writes `toml` to a temp dir (so relative paths and reloads work) and starts the gateway.
    /// Listener and admin addresses in the text should use port 0.
    pub async fn start(toml: &str) -> Self {
        Self::try_start(toml).await.unwrap()
    }

    pub async fn try_start(toml: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        Self::start_in(dir, toml).await
    }

    /// Like [`start`](Self::start) but in a given directory (which may already hold certs, plugins).
    pub async fn start_in(dir: tempfile::TempDir, toml: &str) -> anyhow::Result<Self> {
        let config_path = dir.path().join("weir.toml");
        std::fs::write(&config_path, toml)?;
        let cfg = weir::config::load_file(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let running = weir::run::start(cfg).await?;
        Ok(Self {
            running: Some(running),
            dir,
            config_path,
        })
    }

    fn r(&self) -> &weir::run::Running {
        self.running.as_ref().unwrap()
    }

    /// Address of the first listener.
    pub fn addr(&self) -> SocketAddr {
        self.r().listeners[0].1
    }

    pub fn listener(&self, name: &str) -> SocketAddr {
        self.r().addr(name).unwrap()
    }

    pub fn admin(&self) -> SocketAddr {
        self.r().admin.unwrap()
    }

    pub fn gateway(&self) -> &std::sync::Arc<weir::state::Gateway> {
        &self.r().gateway
    }

    /// `http://ADDR` of the first listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// A response read fully into memory.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A keep-alive HTTP/1.1 client.
#[derive(Clone)]
pub struct TestClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for TestClient {
    fn default() -> Self {
        Self::new()
    }
}

impl TestClient {
    pub fn new() -> Self {
        Self {
            inner: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// HTTP/2 with prior knowledge (h2c).
    pub fn h2c() -> Self {
        Self {
            inner: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    pub async fn get(&self, url: &str) -> Resp {
        self.send(http::Method::GET, url, &[], Bytes::new())
            .await
            .unwrap()
    }

    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> Resp {
        self.send(http::Method::GET, url, headers, Bytes::new())
            .await
            .unwrap()
    }

    pub async fn send(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Resp> {
        let mut b = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body.into()))?;
        let res = tokio::time::timeout(Duration::from_secs(30), self.inner.request(req)).await??;
        let (parts, body) = res.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }
}

/// Sends raw bytes on a fresh TCP connection and returns everything read until the peer closes
/// or `wait` passes without data.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Status code of the first response in a raw HTTP/1 exchange.
pub fn first_status(raw: &str) -> Option<u16> {
    raw.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
}

/// Directory of the built first-party plugins (`plugins/target/wasm32-wasip2/release`).
pub fn plugins_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/target/wasm32-wasip2/release")
}

/// Path of the weir binary built by cargo for this test run.
pub fn weir_bin() -> PathBuf {
    let mut p = std::env::current_exe().unwrap();
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    p.join("weir")
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
