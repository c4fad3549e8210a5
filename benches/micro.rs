//! Micro-benchmarks of the per-request building blocks, each timed in isolation so a regression
//! can be pinned on one step: route matching over 1,000 routes, header hygiene, path
//! normalisation, one policy call per isolation mode, JWT verification through the host
//! capability, and the in-process rate limiter.
//!
//! `RUST_LIB_BACKTRACE=0 cargo bench -p weir-suite --bench micro -- --warm-up-time 1 --measurement-time 3`
//! (RUST_BACKTRACE=1 adds 15–20 µs to each async Wasm call, GUIDE §1). Results and the machine
//! they were measured on: `benches/README.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use std::collections::HashMap;
use std::hint::black_box;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use weir::config::RouteSpec;
use weir::proxy::hygiene;
use weir::router::Router;
use weir_wasm_host::{
    Action, InProcessLimiter, Isolation, KeySetSpec, PluginSpec, PolicyRequest, PolicyRuntime,
    RateLimitBackend, RateQuota, RequestContext, RuntimeConfig,
};

/// Number of routes in the routing table.
const ROUTES: usize = 1000;

/// A config with `ROUTES` routes in three shapes (exact host + prefix, wildcard host + prefix,
/// regex path without host), given explicit descending priorities so route `i` is the `i`-th
/// tried. Going through `config::parse` makes the specs exactly what the gateway would build.
fn routing_config() -> String {
    let mut t = String::from(
        "version = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nname = \"public\"\n\
         listen = \"127.0.0.1:0\"\n[upstreams.app]\ntargets = [{ url = \"http://127.0.0.1:1\" }]\n",
    );
    for i in 0..ROUTES {
        let m = match i % 3 {
            0 => format!(
                r#"host = "svc{i}.example.com", path_prefix = "/api/v{}/svc{i}""#,
                i % 4
            ),
            1 => format!(r#"host = "*.tenant{i}.example.net", path_prefix = "/t{i}/items""#),
            _ => format!(
                r#"path_regex = "/r{i}/(users|orders)/[0-9]+(/.*)?", methods = ["GET", "POST"]"#
            ),
        };
        t.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\nmatch = {{ {m} }}\nupstream = \"app\"\npriority = {}\n",
            100_000 - i
        ));
    }
    t
}

/// A request (host, path, method) that matches route `i` of [`routing_config`] and no earlier one.
fn request_for(i: usize) -> (String, String, Method) {
    match i % 3 {
        0 => (
            format!("svc{i}.example.com"),
            format!("/api/v{}/svc{i}/resource/42", i % 4),
            Method::GET,
        ),
        1 => (
            format!("eu.tenant{i}.example.net"),
            format!("/t{i}/items/7"),
            Method::GET,
        ),
        _ => (
            "any.example.org".to_string(),
            format!("/r{i}/orders/1234/lines"),
            Method::POST,
        ),
    }
}

fn bench_routing(c: &mut Criterion) {
    let cfg = weir::config::parse(&routing_config(), "bench.toml", Path::new("."), None)
        .expect("routing config is valid");
    let routes: Vec<(Arc<RouteSpec>, ())> =
        cfg.routes.into_iter().map(|r| (Arc::new(r), ())).collect();
    let router = Router::new(routes);
    assert_eq!(router.len(), ROUTES);
    let headers = HeaderMap::new();
    let mut g = c.benchmark_group("route_match_1000");
    for (label, i) in [("first", 0), ("middle", ROUTES / 2), ("last", ROUTES - 1)] {
        let (host, path, method) = request_for(i);
        let found = router
            .find(&host, &path, &method, &headers)
            .map(|(r, _)| r.name.clone());
        assert_eq!(found.as_deref(), Some(format!("r{i}").as_str()), "{label}");
        g.bench_function(label, |b| {
            b.iter(|| {
                router
                    .find(black_box(&host), black_box(&path), &method, &headers)
                    .is_some()
            })
        });
    }
    let (host, path, method) = ("nowhere.example.com", "/no/such/route", Method::GET);
    assert!(router.find(host, path, &method, &headers).is_none());
    g.bench_function("miss", |b| {
        b.iter(|| {
            router
                .find(black_box(host), black_box(path), &method, &headers)
                .is_none()
        })
    });
    g.finish();
}

/// A browser-like 15-header HTTP/1.1 request, with hop-by-hop headers to strip and a client
/// `X-Forwarded-For` to replace or extend.
fn realistic_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "api.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", "en-GB,en;q=0.7,de;q=0.3"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("referer", "https://app.example.com/orders?page=2"),
        ("origin", "https://app.example.com"),
        ("connection", "keep-alive, x-debug"),
        ("keep-alive", "timeout=5"),
        ("x-debug", "1"),
        (
            "cookie",
            "session=5d2f8a0c7e1b4a6f9c3d; theme=dark; consent=1",
        ),
        (
            "authorization",
            "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln",
        ),
        ("x-forwarded-for", "203.0.113.7"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("cache-control", "no-cache"),
    ] {
        h.append(k, HeaderValue::from_static(v));
    }
    h
}

fn bench_hygiene(c: &mut Criterion) {
    let base = realistic_headers();
    assert_eq!(base.len(), 15);
    let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
    let port = http::HeaderValue::from_static("443");
    let untrusted_peer: IpAddr = "198.51.100.20".parse().unwrap();
    let trusted_peer: IpAddr = "10.1.2.3".parse().unwrap();
    let mut g = c.benchmark_group("header_hygiene_15");
    // The clone is the setup of every other case (batched, so not timed there).
    g.bench_function("clone_only", |b| b.iter(|| black_box(&base).clone()));
    g.bench_function("check_framing", |b| {
        b.iter(|| hygiene::check_framing(http::Version::HTTP_11, black_box(&base)).is_ok())
    });
    g.bench_function("strip_hop_by_hop", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |h| hygiene::strip_hop_by_hop(h, false),
            BatchSize::SmallInput,
        )
    });
    for (label, peer) in [
        ("untrusted_peer", untrusted_peer),
        ("trusted_peer", trusted_peer),
    ] {
        g.bench_function(BenchmarkId::new("forwarded_headers", label), |b| {
            b.iter_batched_ref(
                || base.clone(),
                |h| {
                    hygiene::forwarded_headers(h, peer, &trusted, "https", "api.example.com", &port)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.bench_function("request_id_and_trace", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |h| (hygiene::request_id(h), hygiene::trace_context(h)),
            BatchSize::SmallInput,
        )
    });
    // What the request path runs per request, in its order (proxy/mod.rs steps 1, 2, 4).
    g.bench_function("full_request_path", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |h| {
                let ok = hygiene::check_framing(http::Version::HTTP_11, h).is_ok();
                let id = hygiene::request_id(h);
                let trace = hygiene::trace_context(h);
                let upgrade = hygiene::is_upgrade(h);
                hygiene::strip_hop_by_hop(h, upgrade);
                let client = hygiene::forwarded_headers(
                    h,
                    untrusted_peer,
                    &trusted,
                    "https",
                    "api.example.com",
                    &port,
                );
                (ok, id, trace, client)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench_paths(c: &mut Criterion) {
    let mut g = c.benchmark_group("normalize_path");
    for (label, p) in [
        ("clean_short", "/api/users"),
        (
            "clean_long",
            "/api/v1/tenants/acme/projects/42/builds/2024-11-28/artifacts/report.json",
        ),
        (
            "dirty_dots_slashes",
            "/api//v1/./users/../users//42/./orders/",
        ),
        (
            "dirty_escapes",
            "/api/%7Ealice/%2e%2E/b%6fb/files/a%20b%3Cc%3e.txt",
        ),
    ] {
        let want = hygiene::normalize_path(p).expect("bench paths are valid");
        assert!(want.starts_with('/'));
        g.bench_function(label, |b| b.iter(|| hygiene::normalize_path(black_box(p))));
    }
    g.finish();
}

fn policy_request(headers: Vec<(String, String)>) -> PolicyRequest {
    PolicyRequest {
        method: "GET".into(),
        path: "/api/items".into(),
        headers,
        client_ip: "127.0.0.1".into(),
        route: "bench".into(),
        request_id: "0123456789abcdef0123456789abcdef".into(),
        scheme: "http".into(),
        host: "api.example.com".into(),
        ..Default::default()
    }
}

fn plugin_path(name: &str) -> PathBuf {
    let p = Path::new(weir::bundled::PLUGIN_DIR).join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} missing: the gateway build step builds it",
        p.display()
    );
    p
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio")
}

/// Session + `on_request` + drop of the first-party `noop` plugin: the fixed cost the gateway
/// pays per plugin per request.
fn bench_policy_call(c: &mut Criterion) {
    let rt = tokio_rt();
    let runtime = PolicyRuntime::new(RuntimeConfig::default()).expect("runtime");
    let headers = vec![
        ("host".to_string(), "api.example.com".to_string()),
        ("accept".to_string(), "*/*".to_string()),
    ];
    let mut g = c.benchmark_group("policy_noop_on_request");
    for (label, isolation) in [
        ("pooled", Isolation::Pooled),
        ("request", Isolation::Request),
    ] {
        let mut spec = PluginSpec::new(format!("noop-{label}"), plugin_path("noop"));
        spec.isolation = isolation;
        let plugin = rt.block_on(runtime.load(&spec)).expect("load noop");
        g.bench_function(label, |b| {
            b.to_async(&rt).iter(|| async {
                let mut cx = RequestContext::new();
                let mut session = plugin.session();
                let action = session
                    .on_request(&mut cx, policy_request(headers.clone()))
                    .await
                    .expect("noop call");
                drop(session);
                action
            })
        });
    }
    g.finish();
}

const HMAC_SECRET: &str = "bench-hmac-secret-that-is-long-enough-0123456789";

/// A P-256 key pair in PKCS#8/SPKI PEM (private, public) from rcgen.
fn ec_keypair() -> (String, String) {
    let kp = rcgen::KeyPair::generate().expect("P-256 key");
    (kp.serialize_pem(), kp.public_key_pem())
}

fn sign(alg: jsonwebtoken::Algorithm, key: &jsonwebtoken::EncodingKey) -> String {
    let now = weir_testkit::extra_c::now();
    let claims = serde_json::json!({
        "sub": "alice", "aud": "bench", "iss": "https://issuer.bench",
        "iat": now, "exp": now + 24 * 3600, "scope": "orders:read",
    });
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, key).expect("sign")
}

/// JWT verification through the host capability (`weir:policy/jwt.verify`), timed as one
/// `jwt-auth` call per algorithm with a valid token; `noop_pooled` in the same group is the
/// call overhead to subtract. The host's verifier is crate-private, so this is the public way in.
fn bench_jwt(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rsa_private, _) = weir_testkit::extra_c::rsa_keypair(dir.path());
    let (ec_private, ec_public) = ec_keypair();
    let ec_pub_path = dir.path().join("ec.pub.pem");
    std::fs::write(&ec_pub_path, ec_public).expect("write ec key");
    let mut key_sets = HashMap::new();
    key_sets.insert(
        "main".to_string(),
        KeySetSpec {
            hmac_secret: Some(HMAC_SECRET.into()),
            pem_files: vec![dir.path().join("rsa.pub.pem"), ec_pub_path],
            ..KeySetSpec::default()
        },
    );
    let runtime = PolicyRuntime::new(RuntimeConfig {
        key_sets,
        ..RuntimeConfig::default()
    })
    .expect("runtime with key sets");
    let rt = tokio_rt();
    let tokens = [
        (
            "HS256",
            sign(
                jsonwebtoken::Algorithm::HS256,
                &jsonwebtoken::EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
            ),
        ),
        (
            "RS256",
            sign(
                jsonwebtoken::Algorithm::RS256,
                &jsonwebtoken::EncodingKey::from_rsa_pem(&rsa_private).expect("rsa key"),
            ),
        ),
        (
            "ES256",
            sign(
                jsonwebtoken::Algorithm::ES256,
                &jsonwebtoken::EncodingKey::from_ec_pem(ec_private.as_bytes()).expect("ec key"),
            ),
        ),
    ];
    let noop = rt
        .block_on(runtime.load(&PluginSpec::new("noop", plugin_path("noop"))))
        .expect("load noop");
    let mut g = c.benchmark_group("jwt_verify_via_jwt_auth");
    g.bench_function("noop_pooled", |b| {
        b.to_async(&rt).iter(|| async {
            let mut cx = RequestContext::new();
            let mut s = noop.session();
            s.on_request(&mut cx, policy_request(Vec::new()))
                .await
                .expect("noop call")
        })
    });
    for (alg, token) in tokens {
        let mut spec = PluginSpec::new(format!("jwt-{alg}"), plugin_path("jwt_auth"));
        spec.config_json = serde_json::json!({
            "key_set": "main", "algorithms": [alg], "audience": "bench",
            "issuer": "https://issuer.bench", "leeway": 0,
        })
        .to_string();
        let plugin = rt.block_on(runtime.load(&spec)).expect("load jwt-auth");
        let headers = vec![("authorization".to_string(), format!("Bearer {token}"))];
        // A rejected token would time the 401 path instead: check it passes first.
        let first = rt.block_on(async {
            let mut cx = RequestContext::new();
            plugin
                .session()
                .on_request(&mut cx, policy_request(headers.clone()))
                .await
        });
        assert!(
            matches!(first, Ok(Action::Continue(_))),
            "{alg} token refused: {first:?}"
        );
        g.bench_function(alg, |b| {
            b.to_async(&rt).iter(|| async {
                let mut cx = RequestContext::new();
                let mut s = plugin.session();
                s.on_request(&mut cx, policy_request(headers.clone()))
                    .await
                    .expect("jwt call")
            })
        });
    }
    g.finish();
}

fn bench_rate_limit(c: &mut Criterion) {
    let limiter = InProcessLimiter::default();
    let open = RateQuota {
        limit: 1_000_000_000,
        window: Duration::from_secs(1),
    };
    let tight = RateQuota {
        limit: 1,
        window: Duration::from_secs(3600),
    };
    let keys: Vec<String> = (0..10_000).map(|i| format!("client-{i}")).collect();
    let check = |name: &str, key: &str, q: RateQuota| {
        futures::executor::block_on(limiter.check("bench", name, key, q, 1)).expect("check")
    };
    assert!(check("open", "k", open).allowed);
    assert!(check("tight", "k", tight).allowed);
    assert!(!check("tight", "k", tight).allowed);
    let mut g = c.benchmark_group("rate_limit_in_process");
    g.bench_function("allowed_one_key", |b| {
        b.iter(|| check("open", black_box("client-1"), open).allowed)
    });
    let mut i = 0usize;
    g.bench_function("allowed_10k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            check("open", black_box(&keys[i]), open).allowed
        })
    });
    g.bench_function("denied", |b| {
        b.iter(|| check("tight", black_box("k"), tight).allowed)
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_routing,
    bench_hygiene,
    bench_paths,
    bench_policy_call,
    bench_jwt,
    bench_rate_limit
);
criterion_main!(benches);
