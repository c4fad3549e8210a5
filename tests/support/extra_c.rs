//! Helpers for the policy end-to-end tests (`policy_e2e`, `policy_reload`): paths of the built
//! plugins and fixtures, config boilerplate, JWT minting (HS256, RS256 and deliberately broken
//! tokens), admin calls, atomic file replacement and a bounded concurrent load driver.

use crate::{Resp, TestClient, TestGateway};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A first-party plugin built by `gateway/build.rs`, e.g. `plugin("jwt_auth")`.
pub fn plugin(name: &str) -> PathBuf {
    let p = Path::new(weir::bundled::PLUGIN_DIR).join(format!("{name}.wasm"));
    assert!(p.exists(), "{} was not built", p.display());
    p
}

/// A test fixture built by `gateway/build.rs`, e.g. `fixture("loop_forever")`.
pub fn fixture(name: &str) -> PathBuf {
    let p = Path::new(weir::bundled::FIXTURE_DIR).join(format!("fixture_{name}.wasm"));
    assert!(p.exists(), "{} was not built", p.display());
    p
}

/// `version`, one public listener, an admin listener (port 0) and one upstream `echo` at `url`.
pub fn preamble(upstream_url: &str) -> String {
    format!(
        r#"version = 1

[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[upstreams.echo]
targets = [{{ url = "{upstream_url}" }}]
"#
    )
}

/// A path as a TOML basic string (quotes and backslashes escaped).
pub fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// Headers the echo upstream received, from its JSON answer (empty for a local reply).
pub fn upstream_headers(r: &Resp) -> serde_json::Map<String, serde_json::Value> {
    r.json()["headers"].as_object().cloned().unwrap_or_default()
}

/// One header the echo upstream received.
pub fn upstream_header(r: &Resp, name: &str) -> Option<String> {
    upstream_headers(r)
        .get(name)
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

/// GET on the admin listener.
pub async fn admin_get(gw: &TestGateway, path: &str) -> Resp {
    TestClient::new()
        .get(&format!("http://{}{}", gw.admin(), path))
        .await
}

/// POST on the admin listener.
pub async fn admin_post(gw: &TestGateway, path: &str) -> Resp {
    TestClient::new()
        .send(
            http::Method::POST,
            &format!("http://{}{}", gw.admin(), path),
            &[],
            bytes::Bytes::new(),
        )
        .await
        .unwrap()
}

/// `last_reload` of `GET /admin/status`.
pub async fn last_reload(gw: &TestGateway) -> serde_json::Value {
    admin_get(gw, "/admin/status").await.json()["last_reload"].clone()
}

/// Replaces `dest` atomically (write a sibling temp file, then rename over it), so a watcher
/// never sees a half-written file.
pub fn replace_atomically(dest: &Path, bytes: &[u8]) {
    let tmp = dest.with_extension(format!(
        "tmp{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

/// `n` bytes from the OS random source (a "corrupt" .wasm).
pub fn random_bytes(n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Signs `claims` with HS256 and `secret`.
pub fn hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// Signs `claims` with RS256 and a PEM private key.
pub fn rs256(private_pem: &[u8], claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(private_pem).unwrap(),
    )
    .unwrap()
}

/// An unsigned token (`alg: none`, empty signature).
pub fn alg_none(claims: &serde_json::Value) -> String {
    format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes())
    )
}

/// Unpadded base64url (RFC 4648 §5).
pub fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// An RSA key pair made by the `openssl` CLI: `(private PEM bytes, public PEM bytes)`, both also
/// written to `dir` as `rsa.key` and `rsa.pub.pem`.
pub fn rsa_keypair(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let key = dir.join("rsa.key");
    let public = dir.join("rsa.pub.pem");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("the openssl CLI is needed to make RSA test keys");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["genrsa", "-out", key.to_str().unwrap(), "2048"]);
    run(&[
        "rsa",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (
        std::fs::read(&key).unwrap(),
        std::fs::read(&public).unwrap(),
    )
}

/// What one request of a [`run_load`] saw.
#[derive(Debug, Clone)]
pub struct Sample {
    pub client: usize,
    pub status: u16,
    /// The response headers the caller asked to record (name, value or `None`).
    pub headers: Vec<Option<String>>,
    /// The transport error, if the request failed before a response.
    pub error: Option<String>,
    /// The body of a non-200 response (to diagnose failures).
    pub body: Option<String>,
    /// When the request was sent, since the load started, and how long it took.
    pub sent_at: Duration,
    pub latency: Duration,
}

/// Load driver: `clients` concurrent keep-alive clients send GET `url` until `stop` is set or
/// `max` requests were sent in total (a hard bound so the loop always ends), recording each
/// response's status and the headers named in `record`. `done` counts finished requests.
pub struct Load {
    /// When the load started ([`Sample::sent_at`] counts from here).
    pub started: std::time::Instant,
    pub done: Arc<AtomicUsize>,
    pub stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

impl Load {
    pub fn start(url: String, clients: usize, max: usize, record: &[&str]) -> Self {
        let done = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let record: Arc<Vec<String>> = Arc::new(record.iter().map(|s| s.to_string()).collect());
        let t0 = std::time::Instant::now();
        let tasks = (0..clients)
            .map(|client| {
                let (done, stop, sent, record, url) = (
                    done.clone(),
                    stop.clone(),
                    sent.clone(),
                    record.clone(),
                    url.clone(),
                );
                tokio::spawn(async move {
                    let c = TestClient::new();
                    let mut out = Vec::new();
                    while !stop.load(Ordering::SeqCst) && sent.fetch_add(1, Ordering::SeqCst) < max
                    {
                        let sent_at = t0.elapsed();
                        let s = match c
                            .send(http::Method::GET, &url, &[], bytes::Bytes::new())
                            .await
                        {
                            Ok(r) => Sample {
                                client,
                                status: r.status,
                                headers: record
                                    .iter()
                                    .map(|h| r.header(h).map(str::to_string))
                                    .collect(),
                                error: None,
                                body: (r.status != 200).then(|| r.text()),
                                sent_at,
                                latency: t0.elapsed() - sent_at,
                            },
                            Err(e) => Sample {
                                client,
                                status: 0,
                                headers: Vec::new(),
                                error: Some(format!("{e:#}")),
                                body: None,
                                sent_at,
                                latency: t0.elapsed() - sent_at,
                            },
                        };
                        out.push(s);
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    out
                })
            })
            .collect();
        Self {
            started: t0,
            done,
            stop,
            tasks,
        }
    }

    /// Waits until at least `n` requests finished (or `timeout` passed); returns whether it did.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        crate::eventually(timeout, || async { self.done.load(Ordering::SeqCst) >= n }).await
    }

    /// Stops the clients and returns every sample, per client in request order.
    pub async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap());
        }
        all
    }
}
