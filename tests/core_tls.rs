//! TLS termination through a real gateway with real certificates: SNI selection, protocol
//! versions, ALPN h2, mutual TLS, and certificate hot reload.

use std::net::SocketAddr;
use std::time::Duration;
use weir_testkit::extra_b::{
    Leaf, TestPki, alpn, get, h1_handshake, h1_send, h2_handshake, h2_send, peer_leaf,
    tls_client_config, tls_connect,
};
use weir_testkit::{TestGateway, TestUpstream};

/// A gateway with one TLS listener serving `pairs` (written into its directory) and optionally
/// requiring client certificates from `client_ca`.
async fn tls_gateway(
    pairs: &[(&str, &Leaf)],
    client_ca: Option<&TestPki>,
) -> (TestGateway, TestUpstream) {
    let up = TestUpstream::start("echo").await;
    let dir = tempfile::tempdir().unwrap();
    let mut certs = Vec::new();
    for (stem, leaf) in pairs {
        leaf.write(dir.path(), stem);
        certs.push(format!(r#"{{ cert = "{stem}.crt", key = "{stem}.key" }}"#));
    }
    let ca = match client_ca {
        Some(pki) => {
            std::fs::write(dir.path().join("client-ca.pem"), pki.ca_pem()).unwrap();
            r#", client_ca = "client-ca.pem""#
        }
        None => "",
    };
    let toml = format!(
        r#"
version = 1

[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "tls"
listen = "127.0.0.1:0"
tls = {{ certs = [{certs}]{ca} }}

[upstreams.echo]
targets = [{{ url = "{up}" }}]

[[routes]]
name = "all"
match = {{ path_prefix = "/" }}
upstream = "echo"
"#,
        certs = certs.join(", "),
        up = up.url(),
    );
    let gw = TestGateway::start_in(dir, &toml).await.unwrap();
    (gw, up)
}

const H1: &[&[u8]] = &[b"http/1.1"];

/// One HTTP/1.1 GET over a fresh TLS connection; returns the status and the echo document.
async fn https_get(
    addr: SocketAddr,
    sni: &str,
    cfg: std::sync::Arc<rustls::ClientConfig>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let tls = tls_connect(addr, sni, cfg).await?;
    let mut send = h1_handshake(tls).await?;
    let r = h1_send(&mut send, get("/echo", &[("host", sni)])).await?;
    Ok((r.status, r.json()))
}

#[tokio::test]
async fn sni_selects_the_certificate() {
    let pki = TestPki::new("Weir Test CA");
    let a = pki.server_cert(&["a.test"]);
    let b = pki.server_cert(&["b.test", "*.b.test"]);
    let (gw, _up) = tls_gateway(&[("a", &a), ("b", &b)], None).await;
    let cfg = tls_client_config(&[pki.ca_der()], None, H1);

    for (sni, want) in [("a.test", &a), ("b.test", &b), ("api.b.test", &b)] {
        let s = tls_connect(gw.addr(), sni, cfg.clone()).await.unwrap();
        assert_eq!(
            peer_leaf(&s).as_ref(),
            Some(&want.der),
            "SNI {sni} got the wrong certificate"
        );
    }
    assert_ne!(a.der, b.der);

    // And a request over it is proxied, marked as https.
    let (status, doc) = https_get(gw.addr(), "b.test", cfg).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(doc["headers"]["x-forwarded-proto"], "https", "{doc}");
    assert_eq!(doc["headers"]["x-forwarded-host"], "b.test", "{doc}");
}

/// Runs `openssl s_client` with extra `args` against `addr`; returns (success, combined output).
async fn s_client(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let child = tokio::process::Command::new("openssl")
        .arg("s_client")
        .args(["-connect", &addr.to_string(), "-servername", "a.test"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl is needed for this test");
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("openssl s_client hung")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn tls_1_1_is_refused_and_1_2_accepted() {
    let pki = TestPki::new("Weir Test CA");
    let a = pki.server_cert(&["a.test"]);
    let (gw, _up) = tls_gateway(&[("a", &a)], None).await;
    // SECLEVEL=0 lets OpenSSL 3 offer TLS 1.1 at all, so a refusal comes from the gateway.
    let (ok, out) = s_client(gw.addr(), &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]).await;
    assert!(!ok, "TLS 1.1 handshake succeeded:\n{out}");
    assert!(
        !out.contains("no protocols available"),
        "the client never tried TLS 1.1:\n{out}"
    );
    // (s_client prints the attempted protocol even on failure; no cipher means no session.)
    assert!(out.contains("Cipher is (NONE)"), "{out}");
    assert!(
        out.contains("protocol version")
            || out.contains("handshake failure")
            || out.contains("alert"),
        "TLS 1.1 was not refused with an alert:\n{out}"
    );

    let (ok, out) = s_client(gw.addr(), &["-tls1_2"]).await;
    assert!(ok, "TLS 1.2 handshake failed:\n{out}");
    assert!(out.contains("TLSv1.2"), "{out}");
    let (ok, out) = s_client(gw.addr(), &["-tls1_3"]).await;
    assert!(ok, "TLS 1.3 handshake failed:\n{out}");
    assert!(out.contains("TLSv1.3"), "{out}");
}

#[tokio::test]
async fn alpn_negotiates_h2_and_serves_requests() {
    let pki = TestPki::new("Weir Test CA");
    let a = pki.server_cert(&["a.test"]);
    let (gw, up) = tls_gateway(&[("a", &a)], None).await;

    let cfg = tls_client_config(&[pki.ca_der()], None, &[b"h2", b"http/1.1"]);
    let s = tls_connect(gw.addr(), "a.test", cfg).await.unwrap();
    assert_eq!(
        alpn(&s).as_deref(),
        Some(&b"h2"[..]),
        "h2 not chosen when offered first"
    );
    let mut send = h2_handshake(s).await.unwrap();
    // Several streams on the one connection.
    for i in 0..3 {
        let r = h2_send(&mut send, get(&format!("https://a.test/echo/{i}"), &[]))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.version, http::Version::HTTP_2);
        let doc = r.json();
        assert_eq!(doc["path"], format!("/echo/{i}"));
        assert_eq!(doc["headers"]["x-forwarded-proto"], "https", "{doc}");
        assert_eq!(doc["headers"]["x-forwarded-host"], "a.test", "{doc}");
    }
    assert_eq!(up.hits(), 3);

    // A client offering only http/1.1 gets it.
    let cfg = tls_client_config(&[pki.ca_der()], None, H1);
    let s = tls_connect(gw.addr(), "a.test", cfg.clone()).await.unwrap();
    assert_eq!(alpn(&s).as_deref(), Some(&b"http/1.1"[..]));
    drop(s);
    let (status, _) = https_get(gw.addr(), "a.test", cfg).await.unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn mtls_requires_a_certificate_from_the_client_ca() {
    let pki = TestPki::new("Weir Test CA");
    let server = pki.server_cert(&["a.test"]);
    let clients = TestPki::new("Weir Client CA");
    let (gw, up) = tls_gateway(&[("a", &server)], Some(&clients)).await;

    // No client certificate: the handshake (or, with TLS 1.3, the first exchange) fails.
    let cfg = tls_client_config(&[pki.ca_der()], None, H1);
    let r = https_get(gw.addr(), "a.test", cfg).await;
    assert!(r.is_err(), "served a client without a certificate: {r:?}");

    // A certificate from another CA is refused too.
    let stranger = TestPki::new("Someone Else").client_cert("mallory");
    let cfg = tls_client_config(&[pki.ca_der()], Some(&stranger), H1);
    let r = https_get(gw.addr(), "a.test", cfg).await;
    assert!(
        r.is_err(),
        "served a client with a certificate from an unknown CA: {r:?}"
    );
    assert_eq!(up.hits(), 0);

    // A valid client certificate is served.
    let alice = clients.client_cert("alice");
    let cfg = tls_client_config(&[pki.ca_der()], Some(&alice), H1);
    let (status, doc) = https_get(gw.addr(), "a.test", cfg).await.unwrap();
    assert_eq!(status, 200, "{doc}");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn replaced_certificate_files_are_served_without_restart() {
    let pki = TestPki::new("Weir Test CA");
    let old = pki.server_cert(&["a.test"]);
    let new = pki.server_cert(&["a.test"]);
    assert_ne!(old.der, new.der);
    let (gw, _up) = tls_gateway(&[("a", &old)], None).await;
    let cfg = tls_client_config(&[pki.ca_der()], None, H1);

    let s = tls_connect(gw.addr(), "a.test", cfg.clone()).await.unwrap();
    assert_eq!(peer_leaf(&s).as_ref(), Some(&old.der));
    // A connection established before the swap keeps working afterwards.
    let mut live = h1_handshake(s).await.unwrap();
    assert_eq!(
        h1_send(&mut live, get("/echo", &[("host", "a.test")]))
            .await
            .unwrap()
            .status,
        200
    );

    new.write(gw.dir.path(), "a");

    let mut served_new = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let s = tls_connect(gw.addr(), "a.test", cfg.clone()).await.unwrap();
        if peer_leaf(&s).as_ref() == Some(&new.der) {
            served_new = true;
            break;
        }
        assert_eq!(
            peer_leaf(&s).as_ref(),
            Some(&old.der),
            "served neither certificate"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        served_new,
        "new certificate not served within 10 s of replacing the files"
    );
    assert_eq!(
        h1_send(&mut live, get("/echo", &[("host", "a.test")]))
            .await
            .unwrap()
            .status,
        200
    );

    let cert_reload = || async {
        weir_testkit::extra_a::admin_get(&gw, "/admin/status")
            .await
            .json()["tls"]["tls"]["last_certificate_reload"]
            .clone()
    };
    assert_eq!(cert_reload().await["ok"], true);

    // A broken replacement keeps the last good certificate in service, and says so on
    // /admin/status.
    std::fs::write(gw.path("a.crt"), "not a certificate").unwrap();
    let failed = weir_testkit::eventually(Duration::from_secs(10), || async {
        cert_reload().await["ok"] == false
    })
    .await;
    assert!(
        failed,
        "a failed certificate reload is not on /admin/status"
    );
    let error = cert_reload().await["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("a.crt"), "{error}");
    let s = tls_connect(gw.addr(), "a.test", cfg).await.unwrap();
    assert_eq!(peer_leaf(&s).as_ref(), Some(&new.der));
}
