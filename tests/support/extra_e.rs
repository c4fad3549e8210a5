//! Helpers for the scale-out tests (`tests/cluster.rs`): a real `redis-server` on a free loopback
//! port that can be killed, restarted on the same port, frozen and thawed; real `weir run`
//! processes; a tiny RESP client to look inside Redis; and a bounded concurrent load driver
//! that records every status and the slowest answer.

use crate::TestClient;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} {pid} failed");
}

/// A `redis-server` child on `127.0.0.1:port`, no persistence (`--save "" --appendonly no`).
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    frozen: bool,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts on a free port; panics with an install hint if `redis-server` is missing.
    pub fn start() -> Self {
        let mut r = Self {
            port: free_port(),
            child: None,
            frozen: false,
            dir: tempfile::tempdir().unwrap(),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}); install it: apt-get install -y redis-server")
            });
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if self.try_cmd(&["PING"]).as_deref() == Some("+PONG\r\n") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis is not running").id()
    }

    /// SIGKILL: the port refuses connections from now on.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "-KILL");
            let _ = c.wait();
        }
        self.frozen = false;
    }

    /// Starts a fresh (empty) server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP: connections stay open, nothing answers.
    pub fn freeze(&mut self) {
        signal(self.pid(), "-STOP");
        self.frozen = true;
    }

    /// SIGCONT after [`freeze`](Self::freeze).
    pub fn thaw(&mut self) {
        signal(self.pid(), "-CONT");
        self.frozen = false;
    }

    /// Sends one command and returns the raw RESP reply, or None if Redis did not answer.
    pub fn try_cmd(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = vec![0u8; 64 * 1024];
        let n = s.read(&mut buf).ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    pub fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args)
            .unwrap_or_else(|| panic!("redis did not answer {args:?}"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.frozen
            && let Some(c) = &self.child
        {
            signal(c.id(), "-CONT");
        }
        self.kill();
    }
}

/// A `weir run -c CONFIG` child process with its own public and admin ports; stderr goes to a
/// log file that is printed if the process does not come up.
pub struct WeirProcess {
    pub name: String,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
    child: Child,
}

impl WeirProcess {
    /// Spawns the binary on a config file whose listener and admin addresses are `addr`/`admin`.
    pub fn spawn(
        bin: &Path,
        name: &str,
        config: &Path,
        addr: SocketAddr,
        admin: SocketAddr,
    ) -> Self {
        let log = config.with_file_name(format!("{name}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(["run", "-c"])
            .arg(config)
            .env("WEIR_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap();
        Self {
            name: name.to_string(),
            addr,
            admin,
            log,
            child,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let c = TestClient::new();
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("{} exited with {st}:\n{}", self.name, self.log_text());
            }
            let r = tokio::time::timeout(
                Duration::from_secs(1),
                c.send(
                    http::Method::GET,
                    &self.admin_url("/readyz"),
                    &[],
                    Bytes::new(),
                ),
            )
            .await;
            if let Ok(Ok(r)) = r
                && r.status == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{} not ready within {timeout:?}:\n{}",
            self.name,
            self.log_text()
        );
    }

    /// `policy_backend` of `/admin/status`.
    pub async fn backend_status(&self) -> serde_json::Value {
        TestClient::new()
            .get(&self.admin_url("/admin/status"))
            .await
            .json()["policy_backend"]
            .clone()
    }

    /// The value of one metric sample line (`name{labels} value`), if present.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = TestClient::new()
            .get(&self.admin_url("/metrics"))
            .await
            .text();
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }
}

impl Drop for WeirProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a burst of requests produced.
#[derive(Debug, Default)]
pub struct Burst {
    /// Count per status code (0 = transport error or client timeout).
    pub statuses: BTreeMap<u16, usize>,
    /// Count of 200s per target URL prefix index.
    pub ok_per_target: Vec<usize>,
    pub slowest: Duration,
    pub elapsed: Duration,
}

impl Burst {
    pub fn count(&self, status: u16) -> usize {
        self.statuses.get(&status).copied().unwrap_or(0)
    }
}

/// Sends `total` GETs of `path` with `headers`, round-robin over `targets` (base URLs), with
/// `concurrency` in flight; every request is bounded by `limit` (a late one counts as status 0).
pub async fn burst(
    targets: &[String],
    path: &str,
    headers: &[(&str, &str)],
    total: usize,
    concurrency: usize,
    limit: Duration,
) -> Burst {
    let client = TestClient::new();
    let next = Arc::new(AtomicUsize::new(0));
    let targets: Arc<Vec<String>> =
        Arc::new(targets.iter().map(|t| format!("{t}{path}")).collect());
    let headers: Arc<Vec<(String, String)>> = Arc::new(
        headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, targets, headers) = (
            client.clone(),
            next.clone(),
            targets.clone(),
            headers.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut out: Vec<(usize, u16, Duration)> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = i % targets.len();
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let began = Instant::now();
                let r = tokio::time::timeout(
                    limit,
                    client.send(http::Method::GET, &targets[t], &h, Bytes::new()),
                )
                .await;
                let status = match r {
                    Ok(Ok(r)) => r.status,
                    _ => 0,
                };
                out.push((t, status, began.elapsed()));
            }
            out
        }));
    }
    let mut b = Burst {
        ok_per_target: vec![0; targets.len()],
        ..Burst::default()
    };
    for t in tasks {
        for (target, status, took) in t.await.unwrap() {
            *b.statuses.entry(status).or_default() += 1;
            if status == 200 {
                b.ok_per_target[target] += 1;
            }
            b.slowest = b.slowest.max(took);
        }
    }
    b.elapsed = start.elapsed();
    b
}

/// One GET bounded by `limit`: (status or 0, latency, response headers, body).
pub async fn timed_get(
    client: &TestClient,
    url: &str,
    headers: &[(&str, &str)],
    limit: Duration,
) -> (u16, Duration, Option<crate::Resp>) {
    let began = Instant::now();
    let r = tokio::time::timeout(
        limit,
        client.send(http::Method::GET, url, headers, Bytes::new()),
    )
    .await;
    match r {
        Ok(Ok(r)) => (r.status, began.elapsed(), Some(r)),
        _ => (0, began.elapsed(), None),
    }
}
