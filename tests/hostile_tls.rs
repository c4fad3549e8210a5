//! Hostile input on a TLS listener: a `testssl.sh` scan (protocols, ciphers, known
//! vulnerabilities, certificate, headers) with no finding of severity MEDIUM or above, and raw abuse of
//! the handshake (garbage, plaintext HTTP, a ClientHello that never finishes). `core_tls` covers
//! SNI, TLS 1.1 refusal, ALPN, mTLS and certificate reload.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_testkit::extra_b::{TestPki, get, h1_handshake, h1_send, tls_client_config, tls_connect};
use weir_testkit::extra_c::{plugin, toml_path};
use weir_testkit::extra_f::write_scan_grade_cert;
use weir_testkit::{TestGateway, TestUpstream};

struct TlsFixture {
    gw: TestGateway,
    pki: TestPki,
    _up: TestUpstream,
}

/// A gateway whose only listener is TLS with a `localhost` certificate from a test CA (written
/// to `ca.pem` next to the config), proxying everything to an echo upstream.
async fn tls_gateway() -> TlsFixture {
    let up = TestUpstream::start("echo").await;
    let pki = TestPki::new("Weir hostile-suite CA");
    let dir = tempfile::tempdir().unwrap();
    pki.server_cert(&["localhost", "127.0.0.1"])
        .write(dir.path(), "server");
    std::fs::write(dir.path().join("ca.pem"), pki.ca_pem()).unwrap();
    let gw = TestGateway::start_in(
        dir,
        &format!(
            r#"
version = 1

[[listeners]]
name = "tls"
listen = "127.0.0.1:0"
tls = {{ certs = [{{ cert = "server.crt", key = "server.key" }}] }}

[upstreams.echo]
targets = [{{ url = "{}" }}]

[[routes]]
name = "all"
match = {{ path_prefix = "/" }}
upstream = "echo"
"#,
            up.url()
        ),
    )
    .await
    .unwrap();
    TlsFixture { gw, pki, _up: up }
}

/// An HTTPS GET over a fresh connection succeeds.
async fn https_ok(f: &TlsFixture) {
    let cfg = tls_client_config(&[f.pki.ca_der()], None, &[b"http/1.1"]);
    let tls = tls_connect(f.gw.addr(), "localhost", cfg).await.unwrap();
    let mut send = h1_handshake(tls).await.unwrap();
    let r = h1_send(&mut send, get("/ok", &[("host", "localhost")]))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

/// Severity levels testssl.sh reports, lowest first.
const SEVERITIES: [&str; 7] = ["OK", "INFO", "LOW", "MEDIUM", "HIGH", "CRITICAL", "WARN"];

/// A TLS gateway configured as one would deploy it for a scan: a certificate shaped like a
/// public one (`write_scan_grade_cert`) and the usual security headers on responses (set with
/// the `headers` plugin), so that the findings are about the gateway's TLS.
async fn scan_gateway(up: &TestUpstream) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    write_scan_grade_cert(dir.path());
    let headers = toml_path(&plugin("headers"));
    TestGateway::start_in(
        dir,
        &format!(
            r#"
version = 1

[[listeners]]
name = "tls"
listen = "127.0.0.1:0"
tls = {{ certs = [{{ cert = "server.crt", key = "server.key" }}] }}

[upstreams.echo]
targets = [{{ url = "{}" }}]

[[routes]]
name = "all"
match = {{ path_prefix = "/" }}
upstream = "echo"
plugins = [{{ name = "headers", wasm = {headers}, config = {{ response = {{ set = {{ "strict-transport-security" = "max-age=31536000", "x-frame-options" = "DENY", "x-content-type-options" = "nosniff", "content-security-policy" = "default-src 'none'", "referrer-policy" = "no-referrer" }} }} }} }}]
"#,
            up.url()
        ),
    )
    .await
    .unwrap()
}

/// One testssl.sh scan shared by the tests of this file (it takes over a minute).
static SCAN: tokio::sync::OnceCell<(Vec<serde_json::Value>, Duration)> =
    tokio::sync::OnceCell::const_new();

/// Runs testssl.sh (`--fast`: one openssl pass for ciphers, first preferred cipher only) against
/// a fresh scan gateway and returns its flat JSON findings and how long it took.
async fn scan() -> &'static (Vec<serde_json::Value>, Duration) {
    SCAN.get_or_init(|| async {
        let available = std::process::Command::new("testssl")
            .arg("--version")
            .output()
            .is_ok();
        assert!(
            available,
            "testssl.sh is not installed: apt-get install -y testssl.sh"
        );
        let up = TestUpstream::start("echo").await;
        let gw = scan_gateway(&up).await;
        let json = gw.path("testssl.json");
        let started = Instant::now();
        let mut cmd = tokio::process::Command::new("testssl");
        cmd.args(["--quiet", "--color", "0", "--warnings", "off", "--fast"])
            .args(["--connect-timeout", "5", "--openssl-timeout", "5"])
            .args(["--ip", "127.0.0.1"])
            .arg("--add-ca")
            .arg(gw.path("ca.pem"))
            .arg("--jsonfile")
            .arg(&json)
            .arg(format!("https://localhost:{}", gw.addr().port()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
            .await
            .expect("testssl.sh ran for more than 3 minutes")
            .unwrap();
        let took = started.elapsed();
        let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
            panic!(
                "testssl.sh wrote no JSON ({e}); exit {:?}\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let findings: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        let mut summary = std::collections::BTreeMap::<String, usize>::new();
        for v in &findings {
            *summary
                .entry(v["severity"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
        eprintln!(
            "testssl.sh: {} findings in {took:?}: {summary:?}",
            findings.len()
        );
        for v in &findings {
            if !matches!(v["severity"].as_str(), Some("OK" | "INFO")) {
                eprintln!("  {} {}: {}", v["severity"], v["id"], v["finding"]);
            }
        }
        gw.shutdown().await;
        (findings, took)
    })
    .await
}

fn serious(findings: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    findings
        .iter()
        .filter(|v| matches!(v["severity"].as_str(), Some("MEDIUM" | "HIGH" | "CRITICAL")))
        .collect()
}

/// testssl.sh 3.0.8 against the TLS listener, offline (with `--add-ca` the chain of trust is
/// checked against our own CA; OCSP/CRL lookups would need `--phone-out`, which is off). The
/// scan really ran (protocols, ciphers, vulnerability checks are in the output), it stays
/// under the time budget, and it finds nothing of MEDIUM severity or above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testssl_scan_finds_nothing_of_medium_severity_or_above() {
    let (findings, took) = scan().await;
    let ids: Vec<&str> = findings
        .iter()
        .map(|v| v["id"].as_str().unwrap_or_default())
        .collect();
    for must in [
        "SSLv2",
        "SSLv3",
        "TLS1",
        "TLS1_1",
        "TLS1_2",
        "TLS1_3",
        "heartbleed",
        "ROBOT",
        "BEAST",
        "POODLE_SSL",
        "secure_renego",
        "cert_chain_of_trust",
    ] {
        assert!(
            ids.contains(&must),
            "testssl.sh did not report {must}: {ids:?}"
        );
    }
    for v in findings.iter() {
        let sev = v["severity"].as_str().unwrap_or_default();
        assert!(SEVERITIES.contains(&sev), "unknown severity in {v}");
    }
    let by_id = |id: &str| findings.iter().find(|v| v["id"] == id).unwrap();
    // Only TLS 1.2 and 1.3 are offered; the certificate is trusted.
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert_eq!(by_id(old)["finding"], "not offered", "{old}");
    }
    assert_eq!(by_id("cert_chain_of_trust")["severity"], "OK");
    // Nothing of MEDIUM severity or above (the server's cipher order is enforced in tls.rs).
    let left = serious(findings);
    assert!(left.is_empty(), "testssl.sh findings: {left:#?}");
    assert!(*took < Duration::from_secs(150), "scan took {took:?}");
    eprintln!("testssl.sh scan took {took:?}");
}

/// Writes `bytes` to the TLS port and reads until the server closes (or 15 s pass); returns
/// what came back and when the connection ended.
async fn raw_tls_port(
    addr: SocketAddr,
    bytes: &[u8],
    then_wait: bool,
) -> (Vec<u8>, Option<Duration>) {
    let start = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let limit = if then_wait { 15 } else { 5 };
    loop {
        match tokio::time::timeout(Duration::from_secs(limit), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, Some(start.elapsed())),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, None),
        }
    }
}

/// Not TLS at all: random bytes, and plaintext HTTP. rustls answers with a fatal alert (or
/// nothing) and the connection is closed at once; the listener keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_plaintext_on_the_tls_port_are_closed() {
    let f = tls_gateway().await;
    let garbage = weir_testkit::extra_c::random_bytes(4096);
    for (case, bytes) in [
        ("random bytes", garbage.as_slice()),
        (
            "plaintext HTTP",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".as_slice(),
        ),
        // A TLS record header announcing a 16 MiB... record (the maximum is 16 KiB + 2048).
        ("oversized record", b"\x16\x03\x01\xff\xff".as_slice()),
    ] {
        let (out, closed) = raw_tls_port(f.gw.addr(), bytes, false).await;
        let took = closed.unwrap_or_else(|| panic!("{case}: connection left open"));
        assert!(
            took < Duration::from_secs(2),
            "{case}: closed after {took:?}"
        );
        // Either nothing, or one TLS alert record (content type 21), never an HTTP answer.
        assert!(
            out.is_empty() || out[0] == 21,
            "{case}: answered {:?}",
            String::from_utf8_lossy(&out)
        );
        https_ok(&f).await;
    }
    f.gw.shutdown().await;
}

/// A client that sends the first bytes of a ClientHello and then nothing: the handshake is
/// abandoned after the 10 s TLS handshake timeout (`server.rs` TLS_HANDSHAKE_TIMEOUT), and
/// other clients are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshake_is_dropped_at_the_handshake_timeout() {
    let f = tls_gateway().await;
    let addr = f.gw.addr();
    // Handshake record header promising 512 bytes, then only 10 of them.
    let stall = tokio::spawn(async move {
        raw_tls_port(addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03", true).await
    });
    for _ in 0..5 {
        https_ok(&f).await;
    }
    let (out, closed) = stall.await.unwrap();
    let took = closed.expect("a stalled handshake was kept open for 15 s");
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(14),
        "closed after {took:?} (timeout 10 s)"
    );
    assert!(out.is_empty() || out[0] == 21, "{out:?}");
    https_ok(&f).await;
    f.gw.shutdown().await;
}
