//! Host capabilities driven end to end from real guests (`cap-probe`, `uses-http`): rate limit,
//! kv, outbound HTTP with the allow list, JWT verification (HMAC, RSA PEM, remote JWKS), logs.
//! `tests/keys/rsa-*.pem` is a throwaway key pair made for these tests only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::service::service_fn;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use weir_wasm_host::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";
const JWKS_SECRET: &[u8] = b"jwks-secret-jwks-secret-jwks-secret!";

fn keys_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A local upstream: `/allowed/*` → 200 "hello <path>", `/jwks` → a JWKS with one HMAC key
/// `k1`, anything else 404. Counts JWKS fetches.
async fn serve() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let jwks_hits = Arc::new(AtomicUsize::new(0));
    let hits = jwks_hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let hits = hits.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let hits = hits.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let (status, body) = if path.starts_with("/allowed/") {
                            (200, format!("hello {path}"))
                        } else if path == "/jwks" {
                            hits.fetch_add(1, Ordering::SeqCst);
                            let k = b64url(JWKS_SECRET);
                            (200, json!({"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256", "k": k}]}).to_string())
                        } else {
                            (404, String::new())
                        };
                        let resp = hyper::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from(body)))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    (addr, jwks_hits)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: &serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

async fn jwt_call(plugin: &Arc<LoadedPlugin>, token: &str) -> Result<String, String> {
    let auth = format!("Bearer {token}");
    let action = plugin
        .session()
        .on_request(
            &mut RequestContext::new(),
            request("/jwt", &[("authorization", &auth)]),
        )
        .await
        .unwrap();
    match &action {
        Action::Continue(_) => Ok(set_header(&action, "x-claims").unwrap()),
        Action::Respond(r) => {
            assert_eq!(r.status, 401);
            Err(respond_header(&action, "x-jwt-error").unwrap())
        }
    }
}

async fn probe(rt: &PolicyRuntime, id: &str, config: serde_json::Value) -> Arc<LoadedPlugin> {
    let mut s = spec(id, "cap-probe", Isolation::Pooled);
    s.config_json = config.to_string();
    rt.load(&s).await.unwrap()
}

#[tokio::test]
async fn jwt_verification_is_strict() {
    let (addr, jwks_hits) = serve().await;
    let mut key_sets = HashMap::new();
    key_sets.insert(
        "hs".to_string(),
        KeySetSpec {
            hmac_secret: Some(SECRET.into()),
            ..Default::default()
        },
    );
    key_sets.insert(
        "rsa".to_string(),
        KeySetSpec {
            pem_files: vec![keys_dir().join("rsa-public.pem")],
            ..Default::default()
        },
    );
    key_sets.insert(
        "remote".to_string(),
        KeySetSpec {
            jwks_url: Some(format!("http://{addr}/jwks")),
            ..Default::default()
        },
    );
    let rt = PolicyRuntime::new(RuntimeConfig {
        key_sets,
        ..RuntimeConfig::default()
    })
    .unwrap();

    let hs = probe(&rt, "jwt-hs", json!({"jwt": {"key_set": "hs", "issuer": "weir-test", "audience": ["api"], "algorithms": ["HS256"]}})).await;
    let good = json!({"sub": "alice", "iss": "weir-test", "aud": "api", "exp": now() + 300});
    let claims = jwt_call(&hs, &hs256(&good, SECRET.as_bytes()))
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&claims).unwrap()["sub"],
        "alice"
    );

    let expired = json!({"sub": "a", "iss": "weir-test", "aud": "api", "exp": now() - 120});
    assert_eq!(
        jwt_call(&hs, &hs256(&expired, SECRET.as_bytes()))
            .await
            .unwrap_err(),
        "expired"
    );

    let bad_sig = hs256(&good, b"another-secret-another-secret-another");
    assert_eq!(jwt_call(&hs, &bad_sig).await.unwrap_err(), "bad-signature");

    // {"alg":"none"} with the good claims and an empty signature.
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(good.to_string().as_bytes())
    );
    assert_eq!(
        jwt_call(&hs, &none).await.unwrap_err(),
        "algorithm-not-allowed: none"
    );

    let wrong_aud = json!({"sub": "a", "iss": "weir-test", "aud": "other", "exp": now() + 300});
    assert!(
        jwt_call(&hs, &hs256(&wrong_aud, SECRET.as_bytes()))
            .await
            .unwrap_err()
            .starts_with("invalid-claim: aud")
    );

    let wrong_iss = json!({"sub": "a", "iss": "mallory", "aud": "api", "exp": now() + 300});
    assert!(
        jwt_call(&hs, &hs256(&wrong_iss, SECRET.as_bytes()))
            .await
            .unwrap_err()
            .starts_with("invalid-claim: iss")
    );

    let future = json!({"sub": "a", "iss": "weir-test", "aud": "api", "exp": now() + 600, "nbf": now() + 300});
    assert_eq!(
        jwt_call(&hs, &hs256(&future, SECRET.as_bytes()))
            .await
            .unwrap_err(),
        "not-yet-valid"
    );

    let no_exp = json!({"sub": "a", "iss": "weir-test", "aud": "api"});
    assert!(
        jwt_call(&hs, &hs256(&no_exp, SECRET.as_bytes()))
            .await
            .unwrap_err()
            .starts_with("invalid-claim: exp")
    );

    let crit_token = format!(
        "{}.{}.sig",
        b64url(br#"{"alg":"HS256","crit":["b64"],"b64":false}"#),
        b64url(good.to_string().as_bytes())
    );
    assert!(
        jwt_call(&hs, &crit_token)
            .await
            .unwrap_err()
            .starts_with("malformed")
    );

    let huge = "a".repeat(17 * 1024);
    assert!(
        jwt_call(&hs, &huge)
            .await
            .unwrap_err()
            .starts_with("malformed")
    );

    // RSA: RS256 verifies; HS256 signed with the public key PEM (key confusion) is refused,
    // even when the plugin pins HS256 among its algorithms.
    let rsa = probe(
        &rt,
        "jwt-rsa",
        json!({"jwt": {"key_set": "rsa", "algorithms": ["RS256", "HS256"]}}),
    )
    .await;
    let private = std::fs::read(keys_dir().join("rsa-private.pem")).unwrap();
    let claims = json!({"sub": "bob", "exp": now() + 300});
    let rs = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&private).unwrap(),
    )
    .unwrap();
    assert!(jwt_call(&rsa, &rs).await.unwrap().contains("bob"));
    let public = std::fs::read(keys_dir().join("rsa-public.pem")).unwrap();
    let confused = hs256(&claims, &public);
    assert!(
        jwt_call(&rsa, &confused)
            .await
            .unwrap_err()
            .starts_with("algorithm-not-allowed: HS256")
    );
    // Not pinned: RS384 is allowed by the key type; PS256 from the pinned list is not.
    let rsa_any = probe(&rt, "jwt-rsa-any", json!({"jwt": {"key_set": "rsa"}})).await;
    let rs384 = jsonwebtoken::encode(
        &Header::new(Algorithm::RS384),
        &claims,
        &EncodingKey::from_rsa_pem(&private).unwrap(),
    )
    .unwrap();
    assert!(jwt_call(&rsa_any, &rs384).await.is_ok());
    assert_eq!(
        jwt_call(&rsa, &rs384).await.unwrap_err(),
        "algorithm-not-allowed: RS384"
    );

    // Remote JWKS: fetched once and cached; an unknown kid triggers at most one refetch per 10 s.
    let remote = probe(&rt, "jwt-remote", json!({"jwt": {"key_set": "remote"}})).await;
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("k1".into());
    let t = jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(JWKS_SECRET)).unwrap();
    assert!(jwt_call(&remote, &t).await.unwrap().contains("bob"));
    assert!(jwt_call(&remote, &t).await.is_ok());
    assert_eq!(jwks_hits.load(Ordering::SeqCst), 1);
    h.kid = Some("k2".into());
    let unknown =
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(JWKS_SECRET)).unwrap();
    assert_eq!(
        jwt_call(&remote, &unknown).await.unwrap_err(),
        "unknown-key"
    );
    assert_eq!(
        jwt_call(&remote, &unknown).await.unwrap_err(),
        "unknown-key"
    );
    assert_eq!(
        jwks_hits.load(Ordering::SeqCst),
        1,
        "first fetch was < 10 s ago: no refetch"
    );

    let missing = probe(&rt, "jwt-missing", json!({"jwt": {"key_set": "nope"}})).await;
    assert!(
        jwt_call(&missing, &t)
            .await
            .unwrap_err()
            .starts_with("key-set-unavailable")
    );
}

/// The verified-token cache answers repeat tokens without changing any verdict: a cached token
/// still expires on time, and the same token under other options is checked under those.
#[tokio::test]
async fn cached_tokens_keep_every_verdict() {
    let mut key_sets = HashMap::new();
    key_sets.insert(
        "hs".to_string(),
        KeySetSpec {
            hmac_secret: Some(SECRET.into()),
            ..Default::default()
        },
    );
    let rt = PolicyRuntime::new(RuntimeConfig {
        key_sets,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let api = probe(
        &rt,
        "jwt-api",
        json!({"jwt": {"key_set": "hs", "audience": ["api"]}}),
    )
    .await;
    let other = probe(
        &rt,
        "jwt-other",
        json!({"jwt": {"key_set": "hs", "audience": ["other"]}}),
    )
    .await;

    // Expires within two seconds: valid now (twice: verified, then from the cache)...
    let short = hs256(
        &json!({"sub": "carol", "aud": "api", "exp": now() + 2}),
        SECRET.as_bytes(),
    );
    for _ in 0..2 {
        assert!(jwt_call(&api, &short).await.unwrap().contains("carol"));
    }
    // ...not for a plugin that wants another audience, cached or not...
    for _ in 0..2 {
        assert_eq!(
            jwt_call(&other, &short).await.unwrap_err(),
            "invalid-claim: aud: no accepted audience"
        );
    }
    assert!(
        jwt_call(&api, &short).await.is_ok(),
        "other options did not evict it"
    );
    // ...and expired once its time has passed, although it was cached.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(jwt_call(&api, &short).await.unwrap_err(), "expired");

    // The same claims with a forged signature are not a cache hit.
    let claims = json!({"sub": "dave", "aud": "api", "exp": now() + 300});
    assert!(
        jwt_call(&api, &hs256(&claims, SECRET.as_bytes()))
            .await
            .is_ok()
    );
    let forged = hs256(&claims, b"not-the-secret-but-just-as-long-0123456789");
    assert_eq!(jwt_call(&api, &forged).await.unwrap_err(), "bad-signature");
}

#[tokio::test]
async fn bad_key_sets_fail_at_runtime_creation() {
    let mut key_sets = HashMap::new();
    key_sets.insert(
        "short".to_string(),
        KeySetSpec {
            hmac_secret: Some("short".into()),
            ..Default::default()
        },
    );
    let err = PolicyRuntime::new(RuntimeConfig {
        key_sets,
        ..RuntimeConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("short"), "{err}");

    let mut key_sets = HashMap::new();
    key_sets.insert(
        "pem".to_string(),
        KeySetSpec {
            pem_files: vec![keys_dir().join("rsa-private.pem").with_extension("missing")],
            ..Default::default()
        },
    );
    assert!(
        PolicyRuntime::new(RuntimeConfig {
            key_sets,
            ..RuntimeConfig::default()
        })
        .is_err()
    );
}

#[tokio::test]
async fn rate_limit_allows_the_quota_then_denies_per_key() {
    let rt = runtime();
    let p = probe(&rt, "rl", json!({"rl": {"limit": 2, "window_ms": 60000}})).await;
    let hit = |key: &'static str| {
        let p = p.clone();
        async move {
            p.session()
                .on_request(
                    &mut RequestContext::new(),
                    request("/rl", &[("x-key", key)]),
                )
                .await
                .unwrap()
        }
    };
    let a = hit("k").await;
    assert_eq!(set_header(&a, "x-remaining").as_deref(), Some("1"));
    assert_eq!(set_header(&a, "x-limit").as_deref(), Some("2"));
    assert_eq!(
        set_header(&hit("k").await, "x-remaining").as_deref(),
        Some("0")
    );
    let denied = hit("k").await;
    let retry: u64 = respond_header(&denied, "x-retry-after-ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 20_000 && retry <= 30_000, "{retry}");
    assert_eq!(
        set_header(&hit("other").await, "x-remaining").as_deref(),
        Some("1")
    );
    // Another plugin with the same limiter name has its own buckets.
    let p2 = probe(&rt, "rl2", json!({"rl": {"limit": 2, "window_ms": 60000}})).await;
    let a = p2
        .session()
        .on_request(
            &mut RequestContext::new(),
            request("/rl", &[("x-key", "k")]),
        )
        .await
        .unwrap();
    assert_eq!(set_header(&a, "x-remaining").as_deref(), Some("1"));
}

#[tokio::test]
async fn kv_operations_from_a_guest() {
    let rt = runtime();
    let p = probe(&rt, "kv", json!({})).await;
    let a = p
        .session()
        .on_request(&mut RequestContext::new(), request("/kv", &[]))
        .await
        .unwrap();
    let h = |n: &str| set_header(&a, n).unwrap();
    assert_eq!(h("x-set"), "Ok(())");
    assert_eq!(h("x-get"), "Ok(Some(\"v1\"))");
    assert_eq!(h("x-cas-wrong"), "Ok(false)");
    assert_eq!(h("x-cas-right"), "Ok(true)");
    assert_eq!(h("x-cas-absent"), "Ok(true)");
    assert_eq!(h("x-get-after"), "Ok(Some(\"v2\"))");
    assert_eq!(h("x-incr-bad"), "Err(\"value is not an integer\")");
    assert_eq!(h("x-delete"), "Ok(true)");
    assert_eq!(h("x-delete-again"), "Ok(false)");
}

#[tokio::test]
async fn outbound_http_is_limited_to_the_allow_list() {
    let (addr, _) = serve().await;
    let rt = runtime();
    let mut s = spec("web", "uses-http", Isolation::Request);
    s.http_allow = vec![format!("http://{addr}/allowed")];
    let p = rt.load(&s).await.unwrap();
    let call = |headers: Vec<(&'static str, String)>| {
        let p = p.clone();
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            p.session()
                .on_request(&mut RequestContext::new(), request("/", &h))
                .await
                .unwrap()
        }
    };
    let ok = call(vec![("x-target", format!("http://{addr}/allowed/x"))]).await;
    assert_eq!(set_header(&ok, "x-upstream-status").as_deref(), Some("200"));
    assert_eq!(
        set_header(&ok, "x-upstream-body").as_deref(),
        Some("hello /allowed/x")
    );

    let denied = call(vec![("x-target", format!("http://{addr}/admin"))]).await;
    assert!(
        set_header(&denied, "x-http-error")
            .unwrap()
            .contains("not allowed")
    );
    let traversal = call(vec![(
        "x-target",
        format!("http://{addr}/allowed/../admin"),
    )])
    .await;
    assert!(
        set_header(&traversal, "x-http-error")
            .unwrap()
            .contains("not allowed")
    );

    let all = call(vec![(
        "x-targets",
        format!("http://{addr}/allowed/a,http://{addr}/secret,http://{addr}/allowed/missing/../b"),
    )])
    .await;
    let results = set_header(&all, "x-results").unwrap();
    let parts: Vec<&str> = results.split(';').collect();
    assert_eq!(parts[0], "200");
    assert!(
        parts[1].contains("not allowed") && parts[2].contains("not allowed"),
        "{results}"
    );
}

#[tokio::test]
async fn guest_logs_and_stdio_reach_tracing_with_the_plugin_id() {
    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let rt = runtime();
    let p = probe(&rt, "chatty", json!({})).await;
    p.session()
        .on_request(&mut RequestContext::new(), request("/log", &[]))
        .await
        .unwrap();
    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        out.contains("probe log") && out.contains("plugin=\"chatty\"") && out.contains("answer=42"),
        "{out}"
    );
    assert!(
        out.contains("probe stdout line") && out.contains("stream=\"stdout\""),
        "{out}"
    );
    assert!(
        out.contains("probe stderr line") && out.contains("stream=\"stderr\""),
        "{out}"
    );
}
