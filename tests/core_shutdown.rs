//! The real `weir` binary: graceful shutdown (on SIGTERM an in-flight request completes, new
//! connections are refused, and the process exits 0) and its default log filter.
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
        Self::start_with_log_filter(config, Some("info"))
    }

    /// `weir run` with `WEIR_LOG` set to `filter`, or unset (the built-in default) for `None`.
    fn start_with_log_filter(config: &std::path::Path, filter: Option<&str>) -> Self {
        let mut command = Command::new(ensure_weir_bin());
        match filter {
            Some(f) => command.env("WEIR_LOG", f),
            None => command.env_remove("WEIR_LOG"),
        };
        let mut child = command
            .args(["run", "-c"])
            .arg(config)
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
        self.logged_addr("listening", timeout)
    }

    /// Waits for the JSON log line with `message` and returns its `addr` field.
    fn logged_addr(&self, message: &str, timeout: Duration) -> SocketAddr {
        let end = Instant::now() + timeout;
        let mut seen = Vec::new();
        while Instant::now() < end {
            let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == message
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

    /// SIGTERM, wait for the exit, and return everything it wrote to stderr.
    fn stop_and_collect_stderr(&mut self) -> String {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        if self.wait_exit(Duration::from_secs(15)).is_none() {
            let _ = self.child.kill();
        }
        let mut lines = Vec::new();
        // The reader thread ends when the pipe closes with the process.
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            lines.push(line);
        }
        lines.join("\n")
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

[admin]
listen = "127.0.0.1:0"

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
    let admin = weir.logged_addr("admin listening", Duration::from_secs(30));
    let addr = weir.listener_addr(Duration::from_secs(30));
    let client = TestClient::new();
    let url = format!("http://{addr}");
    let readyz = format!("http://{admin}/readyz");
    // Warm-up: the gateway answers before anything else happens.
    assert_eq!(client.get(&format!("{url}/fast")).await.status, 200);
    assert_eq!(client.get(&readyz).await.status, 200);

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
    // The admin listener still answers, so a load balancer learns the instance is leaving.
    let ready = client.get(&readyz).await;
    assert_eq!((ready.status, ready.text().trim()), (503, "draining"));

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

/// curl and wrk send an IP address as SNI when given one, and rustls warns about each such
/// connection. With `WEIR_LOG` unset that must not reach the log (one line per connection would
/// flood it); an explicit `WEIR_LOG=info` still shows it, which proves the client sent one.
#[test]
fn ip_address_sni_is_kept_out_of_the_default_log() {
    let pki = weir_testkit::extra_b::TestPki::new("Weir Test CA");
    let dir = tempfile::tempdir().unwrap();
    pki.server_cert(&["a.test"]).write(dir.path(), "a");
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        r#"
version = 1

[log]
format = "json"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"
tls = { certs = [{ cert = "a.crt", key = "a.key" }] }

[upstreams.none]
targets = [{ url = "http://127.0.0.1:9" }]

[[routes]]
name = "all"
match = { path_prefix = "/" }
upstream = "none"
"#,
    )
    .unwrap();

    for (filter, warned) in [(Some("info"), true), (None, false)] {
        let mut weir = Weir::start_with_log_filter(&config, filter);
        let addr = weir.listener_addr(Duration::from_secs(30));
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &addr.to_string()])
            .args(["-servername", "127.0.0.1"])
            .stdin(Stdio::null())
            .output()
            .expect("openssl is needed for this test");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("BEGIN CERTIFICATE"),
            "no TLS handshake: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = weir.stop_and_collect_stderr();
        assert_eq!(
            log.contains("Illegal SNI"),
            warned,
            "WEIR_LOG={filter:?}; stderr:\n{log}"
        );
    }
}
