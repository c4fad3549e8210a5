//! Graceful shutdown of the real `weir` binary: on SIGTERM an in-flight request completes, new
//! connections are refused, and the process exits 0.
//!
//! `target/debug/weir` is not produced by `cargo test -p weir-suite`; it is built here with
//! `cargo build -p weir --bin weir` when missing.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use weir_testkit::extra_b::ensure_weir_bin;
use weir_testkit::{TestClient, TestUpstream, UpstreamBehavior};

/// A `weir run` child process; killed if the test fails before it exits.
struct Weir {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Weir {
    fn start(config: &std::path::Path) -> Self {
        let mut child = Command::new(ensure_weir_bin())
            .args(["run", "-c"])
            .arg(config)
            .env("WEIR_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, stderr: rx }
    }

    /// Waits for the JSON log line announcing the listener and returns its address.
    fn listener_addr(&self, timeout: Duration) -> SocketAddr {
        let end = Instant::now() + timeout;
        let mut seen = Vec::new();
        while Instant::now() < end {
            let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "listening"
                && let Some(addr) = v["addr"].as_str().and_then(|a| a.parse().ok())
            {
                return addr;
            }
            seen.push(line);
        }
        panic!(
            "weir did not report its listener within {timeout:?}; stderr:\n{}",
            seen.join("\n")
        );
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn stderr_so_far(&self) -> String {
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let bin = tokio::task::spawn_blocking(ensure_weir_bin).await.unwrap();
    assert!(bin.exists());
    let up = TestUpstream::start_with(
        "slow",
        UpstreamBehavior {
            delay: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            r#"
version = 1

[log]
format = "json"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[upstreams.slow]
targets = [{{ url = "{}" }}]

[[routes]]
name = "all"
match = {{ path_prefix = "/" }}
upstream = "slow"
"#,
            up.url()
        ),
    )
    .unwrap();

    let mut weir = Weir::start(&config);
    let addr = weir.listener_addr(Duration::from_secs(30));
    let client = TestClient::new();
    let url = format!("http://{addr}");
    // Warm-up: the gateway answers before anything else happens.
    assert_eq!(client.get(&format!("{url}/fast")).await.status, 200);

    let slow_client = client.clone();
    let slow_url = format!("{url}/slow");
    let slow = tokio::spawn(async move {
        let started = Instant::now();
        let r = slow_client
            .send(http::Method::GET, &slow_url, &[], bytes::Bytes::new())
            .await;
        (r, started.elapsed())
    });
    // SIGTERM only once the slow request is at the upstream.
    let in_flight = up.in_flight.clone();
    assert!(
        weir_testkit::eventually(Duration::from_secs(5), || {
            let n = in_flight.load(std::sync::atomic::Ordering::SeqCst);
            async move { n == 1 }
        })
        .await,
        "the slow request never reached the upstream"
    );
    let pid = weir.child.id().to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(kill.success());
    let signalled = Instant::now();

    // New connections are refused shortly after, while the slow request is still running.
    let refused = weir_testkit::eventually(Duration::from_millis(1500), || async move {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(
        refused,
        "new connections still accepted 1.5 s after SIGTERM"
    );
    assert!(
        !slow.is_finished(),
        "the slow request ended before the listener closed"
    );

    let (r, took) = slow.await.unwrap();
    let r = r.unwrap_or_else(|e| {
        panic!(
            "in-flight request failed during drain: {e:#}\n{}",
            weir.stderr_so_far()
        )
    });
    assert_eq!(r.status, 200, "in-flight request: {}", r.text());
    assert_eq!(r.json()["path"], "/slow");
    assert!(
        took >= Duration::from_millis(1900),
        "the slow request took only {took:?}"
    );

    let status = tokio::task::block_in_place(|| weir.wait_exit(Duration::from_secs(15)));
    let status = status.unwrap_or_else(|| {
        panic!(
            "weir still running 15 s after SIGTERM\n{}",
            weir.stderr_so_far()
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}\n{}",
        weir.stderr_so_far()
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "drain took {:?} for a 2 s request",
        signalled.elapsed()
    );
}
