//! Wasm policies through a real gateway with real `.wasm` components: the first-party plugins
//! (jwt-auth, rate-limit, api-key-auth, headers) end to end, chain order and shared metadata,
//! containment of misbehaving plugins (CPU loop, memory bomb, trap) with both fail modes, both
//! isolation modes, and refusal of a plugin that imports a capability it was not granted.

#![allow(clippy::unwrap_used)]

use serde_json::json;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use weir_testkit::extra_c::{
    alg_none, fixture, hs256, now, plugin, preamble, rs256, rsa_keypair, toml_path,
    upstream_header, upstream_headers,
};
use weir_testkit::{Resp, TestClient, TestGateway, TestUpstream};

const HMAC_SECRET: &str = "e2e-hmac-secret-that-is-long-enough-0123456789";
const AUDIENCE: &str = "weir-e2e";
const ISSUER: &str = "https://issuer.e2e.test";

/// Asserts a plugin-made 401/403: status, problem+json, the Bearer challenge, and `detail`
/// containing `why` (so a rejection for the wrong reason fails the test).
fn assert_rejected(r: &Resp, status: u16, challenge_error: &str, why: &str, case: &str) {
    assert_eq!(r.status, status, "{case}: {}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{case}"
    );
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer ")
            && challenge.contains(&format!("error=\"{challenge_error}\"")),
        "{case}: challenge {challenge:?}"
    );
    let detail = r.json()["detail"].as_str().unwrap_or_default().to_string();
    assert!(
        detail.contains(why),
        "{case}: detail {detail:?} should mention {why:?}"
    );
}

fn claims(sub: &str) -> serde_json::Value {
    let t = now();
    json!({
        "sub": sub, "aud": AUDIENCE, "iss": ISSUER, "iat": t, "exp": t + 600,
        "email": format!("{sub}@example.test"), "scope": "orders:read",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_auth_hs256_and_rs256_end_to_end() {
    let up = TestUpstream::start("echo").await;
    let dir = tempfile::tempdir().unwrap();
    let (rsa_private, rsa_public) = rsa_keypair(dir.path());
    let jwt = toml_path(&plugin("jwt_auth"));
    let common = format!(
        r#"key_set = "main", audience = "{AUDIENCE}", issuer = "{ISSUER}", claims_to_headers = {{ sub = "x-user", email = "x-email" }}"#
    );
    let toml = format!(
        r#"{pre}
[key_sets.main]
hmac_secret = "{HMAC_SECRET}"
pem = ["rsa.pub.pem"]

[[routes]]
name = "hs"
match = {{ path_prefix = "/hs" }}
upstream = "echo"
plugins = [{{ name = "jwt-auth", wasm = {jwt}, config = {{ {common}, algorithms = ["HS256"] }} }}]

[[routes]]
name = "rs"
match = {{ path_prefix = "/rs" }}
upstream = "echo"
plugins = [{{ name = "jwt-auth", wasm = {jwt}, config = {{ {common}, algorithms = ["RS256"] }} }}]

[[routes]]
name = "scoped"
match = {{ path_prefix = "/scoped" }}
upstream = "echo"
plugins = [{{ name = "jwt-auth", wasm = {jwt}, config = {{ {common}, algorithms = ["HS256", "RS256"], required_scopes = ["orders:write"] }} }}]
"#,
        pre = preamble(&up.url())
    );
    let gw = TestGateway::start_in(dir, &toml).await.unwrap();
    let c = TestClient::new();
    let secret = HMAC_SECRET.as_bytes();
    let bearer = |t: &str| format!("Bearer {t}");

    // Valid tokens pass with their claims forwarded; a forged claim header is replaced.
    let good_hs = hs256(secret, &claims("alice"));
    let r = c
        .get_with(
            &gw.url("/hs/orders"),
            &[("authorization", &bearer(&good_hs)), ("x-user", "mallory")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream_header(&r, "x-user").as_deref(), Some("alice"));
    assert_eq!(
        upstream_header(&r, "x-email").as_deref(),
        Some("alice@example.test")
    );
    let good_rs = rs256(&rsa_private, &claims("bob"));
    let r = c
        .get_with(
            &gw.url("/rs/orders"),
            &[("authorization", &bearer(&good_rs))],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream_header(&r, "x-user").as_deref(), Some("bob"));

    // A token without the `email` claim: a client-supplied x-email must not reach the upstream.
    let mut no_email = claims("carol");
    no_email.as_object_mut().unwrap().remove("email");
    let r = c
        .get_with(
            &gw.url("/hs/x"),
            &[
                ("authorization", &bearer(&hs256(secret, &no_email))),
                ("x-email", "forged@evil.test"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream_header(&r, "x-user").as_deref(), Some("carol"));
    assert_eq!(upstream_header(&r, "x-email"), None, "forged header leaked");

    let hits_before = up.hits.load(Ordering::SeqCst);
    let t = now();
    let with = |patch: serde_json::Value| {
        let mut c = claims("alice");
        c.as_object_mut()
            .unwrap()
            .extend(patch.as_object().unwrap().clone());
        c
    };
    // Past the plugin's default 30 s leeway.
    let expired = hs256(secret, &with(json!({ "iat": t - 700, "exp": t - 120 })));
    let wrong_secret = hs256(
        b"another-secret-of-enough-length-0123456789",
        &claims("alice"),
    );
    let mut tampered_rs = good_rs.clone();
    // Flip one character in the middle of the signature.
    let mid = good_rs.rfind('.').unwrap() + 20;
    let flipped = if &good_rs[mid..=mid] == "A" { "B" } else { "A" };
    tampered_rs.replace_range(mid..=mid, flipped);
    let none = alg_none(&claims("alice"));
    // Key confusion: HS256 "signed" with the RSA public key's PEM bytes as the HMAC secret.
    let confused = hs256(&rsa_public, &claims("alice"));
    let wrong_aud = hs256(secret, &with(json!({ "aud": "someone-else" })));
    let wrong_aud_rs = rs256(&rsa_private, &with(json!({ "aud": "someone-else" })));
    let not_yet = hs256(secret, &with(json!({ "nbf": t + 600 })));
    let wrong_iss = hs256(secret, &with(json!({ "iss": "https://evil.test" })));

    let cases: Vec<(&str, &str, Option<String>, &str)> = vec![
        ("missing token", "/hs/a", None, "missing bearer token"),
        ("expired", "/hs/a", Some(expired), "expired"),
        (
            "bad signature (HS256)",
            "/hs/a",
            Some(wrong_secret),
            "bad signature",
        ),
        (
            "bad signature (RS256)",
            "/rs/a",
            Some(tampered_rs),
            "bad signature",
        ),
        (
            "alg none (HS route)",
            "/hs/a",
            Some(none.clone()),
            "algorithm none not allowed",
        ),
        (
            "alg none (RS route)",
            "/rs/a",
            Some(none),
            "algorithm none not allowed",
        ),
        (
            "key confusion",
            "/rs/a",
            Some(confused.clone()),
            "algorithm HS256 not allowed",
        ),
        ("wrong aud", "/hs/a", Some(wrong_aud), "aud"),
        ("wrong aud (RS256)", "/rs/a", Some(wrong_aud_rs), "aud"),
        ("nbf in the future", "/hs/a", Some(not_yet), "not yet valid"),
        ("wrong iss", "/hs/a", Some(wrong_iss), "iss"),
        (
            "RS256 token on an HS256-pinned route",
            "/hs/a",
            Some(good_rs.clone()),
            "algorithm RS256 not allowed",
        ),
    ];
    for (case, path, token, why) in &cases {
        let auth = token.as_deref().map(bearer);
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let r = c.get_with(&gw.url(path), &headers).await;
        assert_rejected(&r, 401, "invalid_token", why, case);
    }
    // On a route that does allow HS256, the confused token still fails: the key set's HMAC
    // secret is not the PEM text.
    let r = c
        .get_with(
            &gw.url("/scoped/a"),
            &[("authorization", &bearer(&confused))],
        )
        .await;
    assert_eq!(
        r.status,
        401,
        "confused token on HS256+RS256 route: {}",
        r.text()
    );
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        hits_before,
        "a rejected request reached the upstream"
    );

    // Scopes: a valid token lacking the scope is forbidden, one with it passes (either alg).
    let r = c
        .get_with(
            &gw.url("/scoped/a"),
            &[("authorization", &bearer(&good_hs))],
        )
        .await;
    assert_rejected(
        &r,
        403,
        "insufficient_scope",
        "orders:write",
        "missing scope",
    );
    let writer = with(json!({ "scope": "orders:read orders:write" }));
    for token in [hs256(secret, &writer), rs256(&rsa_private, &writer)] {
        let r = c
            .get_with(&gw.url("/scoped/a"), &[("authorization", &bearer(&token))])
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(upstream_header(&r, "x-user").as_deref(), Some("alice"));
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), hits_before + 2);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_per_key_budgets_and_retry_after() {
    let up = TestUpstream::start("echo").await;
    let toml = format!(
        r#"{pre}
[[routes]]
name = "limited"
match = {{ path_prefix = "/" }}
upstream = "echo"
plugins = [{{ name = "rate-limit", wasm = {rl}, config = {{ key = "header:x-client", limits = [{{ requests = 3, window = "60s" }}] }} }}]
"#,
        pre = preamble(&up.url()),
        rl = toml_path(&plugin("rate_limit"))
    );
    let gw = TestGateway::start(&toml).await;
    let c = TestClient::new();
    let get = |client: &'static str| {
        let c = c.clone();
        let url = gw.url("/things");
        async move { c.get_with(&url, &[("x-client", client)]).await }
    };
    for i in 0..3 {
        let r = get("a").await;
        assert_eq!(r.status, 200, "request {i} of a: {}", r.text());
        assert_eq!(r.header("ratelimit-limit"), Some("3"));
        assert_eq!(
            r.header("ratelimit-remaining"),
            Some((2 - i).to_string().as_str())
        );
    }
    let hits = up.hits.load(Ordering::SeqCst);
    for _ in 0..2 {
        let r = get("a").await;
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let retry: u64 = r
            .header("retry-after")
            .expect("429 without Retry-After")
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
    }
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        hits,
        "a 429 reached the upstream"
    );
    // Another key has its own budget, and is limited the same way.
    for i in 0..3 {
        assert_eq!(get("b").await.status, 200, "request {i} of b");
    }
    assert_eq!(get("b").await.status, 429);
    assert_eq!(get("a").await.status, 429, "a's budget did not come back");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_order_and_shared_metadata() {
    let up = TestUpstream::start("echo").await;
    let toml = format!(
        r#"{pre}
[[routes]]
name = "orders"
match = {{ path_prefix = "/orders" }}
upstream = "echo"
plugins = [
  {{ name = "api-key-auth", wasm = {auth}, config = {{ keys = {{ "key-alice" = {{ consumer = "alice" }}, "key-bob" = {{ consumer = "bob" }} }} }} }},
  {{ name = "rate-limit", wasm = {rl}, config = {{ key = "consumer", limits = [{{ requests = 2, window = "60s" }}] }} }},
  {{ name = "headers", wasm = {hdr}, config = {{ request = {{ set = {{ "x-consumer" = "{{consumer}}" }} }} }} }},
]
"#,
        pre = preamble(&up.url()),
        auth = toml_path(&plugin("api_key_auth")),
        rl = toml_path(&plugin("rate_limit")),
        hdr = toml_path(&plugin("headers")),
    );
    let gw = TestGateway::start(&toml).await;
    let c = TestClient::new();
    let url = gw.url("/orders/1");

    // No key: the first plugin answers, the later ones never count it.
    let r = c.get(&url).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        r.header("www-authenticate")
            .unwrap_or_default()
            .starts_with("ApiKey")
    );
    let r = c.get_with(&url, &[("x-api-key", "key-unknown")]).await;
    assert_eq!(r.status, 401);

    for (key, consumer) in [("key-alice", "alice"), ("key-bob", "bob")] {
        for i in 0..2 {
            // A client-supplied x-consumer is overwritten with the authenticated one.
            let r = c
                .get_with(&url, &[("x-api-key", key), ("x-consumer", "root")])
                .await;
            assert_eq!(r.status, 200, "{consumer} #{i}: {}", r.text());
            let seen = upstream_headers(&r);
            assert_eq!(
                seen.get("x-consumer").and_then(|v| v.as_str()),
                Some(consumer)
            );
            assert!(!seen.contains_key("x-api-key"), "credential forwarded");
        }
        let r = c.get_with(&url, &[("x-api-key", key)]).await;
        assert_eq!(r.status, 429, "{consumer}'s third request: {}", r.text());
        assert!(r.header("retry-after").is_some());
    }
    // The unauthenticated requests earlier did not spend anyone's budget (auth runs first), so
    // both consumers got exactly 2 each: 4 upstream hits in total.
    assert_eq!(up.hits.load(Ordering::SeqCst), 4);
    gw.shutdown().await;
}

/// A plugin is shown only the request headers it declares (`request-headers` in `plugin-info`),
/// narrowed by the operator's `request_headers`; what is forwarded does not change. The probe
/// answers with the names it saw, so every combination is visible from outside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_see_only_declared_and_allowed_headers() {
    let up = TestUpstream::start("echo").await;
    let probe = toml_path(&fixture("cap_probe"));
    let route = |name: &str, declared: &str, operator: &str| {
        format!(
            r#"
[[routes]]
name = "{name}"
match = {{ path_prefix = "/{name}" }}
upstream = "echo"
plugins = [{{ name = "probe", wasm = {probe}{operator}, config = {{ {declared} }} }}]
"#
        )
    };
    let toml = format!(
        "{}{}{}{}{}",
        preamble(&up.url()),
        route("all", "", ""),
        route("declared", r#"reads_headers = ["x-a", "x-c"]"#, ""),
        route(
            "narrowed",
            r#"reads_headers = ["x-a", "x-c"]"#,
            r#", request_headers = ["X-C", "x-b"]"#
        ),
        route("none", "", ", request_headers = []"),
    );
    let gw = TestGateway::start(&toml).await;
    let c = TestClient::new();
    let sent = [("x-a", "1"), ("x-b", "2"), ("x-c", "3")];
    for (route, want) in [
        ("all", None),
        ("declared", Some("x-a,x-c")),
        ("narrowed", Some("x-c")),
        ("none", Some("")),
    ] {
        let r = c
            .get_with(&gw.url(&format!("/{route}/headers")), &sent)
            .await;
        assert_eq!(r.status, 200, "{route}: {}", r.text());
        let seen = r.header("x-seen").unwrap_or_default().to_string();
        match want {
            Some(w) => assert_eq!(seen, w, "{route}"),
            // Undeclared and unrestricted: every header, the gateway's own included.
            None => {
                for (name, _) in sent {
                    assert!(seen.split(',').any(|n| n == name), "{route}: {seen}");
                }
                assert!(seen.contains("x-request-id"), "{route}: {seen}");
            }
        }
    }
    gw.shutdown().await;
}

/// A real plugin under the operator's list: api-key-auth finds its key when `x-api-key` is
/// listed and not when only `authorization` is, though the client sent it; the upstream still
/// gets the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_limit_what_a_plugin_sees() {
    let up = TestUpstream::start("echo").await;
    let route = |name: &str, visible: &str| {
        format!(
            r#"
[[routes]]
name = "{name}"
match = {{ path_prefix = "/{name}" }}
upstream = "echo"
plugins = [
  {{ name = "api-key-auth", wasm = {auth}, request_headers = {visible}, config = {{ keys = {{ "k1" = {{ consumer = "alice" }} }}, hide_credentials = false }} }},
]
"#,
            auth = toml_path(&plugin("api_key_auth")),
        )
    };
    let toml = format!(
        "{}{}{}",
        preamble(&up.url()),
        route("listed", r#"["X-Api-Key"]"#),
        route("hidden", r#"["authorization"]"#),
    );
    let gw = TestGateway::start(&toml).await;
    let c = TestClient::new();

    let r = c.get_with(&gw.url("/listed"), &[("x-api-key", "k1")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        upstream_headers(&r)
            .get("x-api-key")
            .and_then(|v| v.as_str()),
        Some("k1")
    );
    let r = c.get_with(&gw.url("/hidden"), &[("x-api-key", "k1")]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    gw.shutdown().await;
}

/// The problem+json of a fail-closed plugin failure, checking the failure kind it names.
fn assert_policy_failed(r: &Resp, plugin: &str, kind: &str) {
    assert_eq!(r.status, 503, "{plugin}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let doc = r.json();
    assert_eq!(
        doc["type"].as_str(),
        Some("https://weir.dev/problems/policy-failed"),
        "{doc}"
    );
    let detail = doc["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(plugin) && detail.contains(kind),
        "{plugin}: detail {detail:?} should name the plugin and {kind:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn misbehaving_plugins_are_contained() {
    let up = TestUpstream::start("echo").await;
    let route = |name: &str, prefix: &str, plugin: &str| {
        format!(
            "\n[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"{prefix}\" }}\nupstream = \"echo\"\nplugins = [{plugin}]\n"
        )
    };
    let lp = toml_path(&fixture("loop_forever"));
    let bomb = toml_path(&fixture("mem_bomb"));
    let trap = toml_path(&fixture("trap"));
    let mut toml = preamble(&up.url());
    toml += &route(
        "loop",
        "/loop",
        &format!(r#"{{ name = "spinner", wasm = {lp}, limits = {{ cpu = "50ms" }} }}"#),
    );
    toml += &route(
        "loop-open",
        "/loop-open",
        &format!(
            r#"{{ name = "spinner", wasm = {lp}, on_error = "open", limits = {{ cpu = "50ms" }} }}"#
        ),
    );
    toml += &route(
        "bomb",
        "/bomb",
        &format!(r#"{{ name = "bomb", wasm = {bomb}, limits = {{ memory = "8MiB" }} }}"#),
    );
    toml += &route(
        "bomb-open",
        "/bomb-open",
        &format!(
            r#"{{ name = "bomb", wasm = {bomb}, on_error = "open", limits = {{ memory = "8MiB" }} }}"#
        ),
    );
    toml += &route(
        "trap",
        "/trap",
        &format!(r#"{{ name = "trapper", wasm = {trap}, config = {{ only_when_asked = true }} }}"#),
    );
    toml += "\n[[routes]]\nname = \"plain\"\nmatch = { path_prefix = \"/plain\" }\nupstream = \"echo\"\n";
    let gw = TestGateway::start(&toml).await;
    let c = TestClient::new();

    // A looping plugin is stopped at its CPU deadline while another route keeps serving.
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let (c, url) = (c.clone(), gw.url("/loop/x"));
            tokio::spawn(async move {
                let t = Instant::now();
                let r = c.get(&url).await;
                (r, t.elapsed())
            })
        })
        .collect();
    let mut plain_worst = Duration::ZERO;
    let mut plain_ok = 0;
    let plain_end = Instant::now() + Duration::from_millis(500);
    while Instant::now() < plain_end {
        let t = Instant::now();
        let r = c.get(&gw.url("/plain/x")).await;
        plain_worst = plain_worst.max(t.elapsed());
        assert_eq!(r.status, 200);
        plain_ok += 1;
    }
    for l in loops {
        let (r, took) = l.await.unwrap();
        assert_policy_failed(&r, "spinner", "deadline");
        // 50 ms of CPU, measured in epoch ticks; generous for a shared 2-core machine.
        assert!(
            took < Duration::from_secs(2),
            "loop answered after {took:?}"
        );
    }
    assert!(plain_ok >= 5, "only {plain_ok} plain requests in 500 ms");
    assert!(
        plain_worst < Duration::from_secs(1),
        "plain route stalled {plain_worst:?} while plugins looped"
    );

    // Fail open: the failing plugin is skipped and the request proxied.
    let r = c.get(&gw.url("/loop-open/x")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream_header(&r, "x-path"), None);
    let r = c.get(&gw.url("/bomb-open/x")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream_header(&r, "x-allocated"), None);

    // Memory past the cap, and a panic, are contained the same way (fail closed).
    for _ in 0..3 {
        assert_policy_failed(&c.get(&gw.url("/bomb/x")).await, "bomb", "memory_limit");
    }
    let r = c.get_with(&gw.url("/trap/x"), &[("x-trap", "1")]).await;
    assert_policy_failed(&r, "trapper", "trap");
    // The trapped instance was discarded; the plugin serves the next request normally.
    let r = c.get(&gw.url("/trap/x")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(upstream_header(&r, "x-calls").is_some());

    // Repeated failures leak nothing: the gateway keeps containing and serving.
    for _ in 0..10 {
        assert_policy_failed(&c.get(&gw.url("/loop/x")).await, "spinner", "deadline");
        let r = c.get_with(&gw.url("/trap/y"), &[("x-trap", "1")]).await;
        assert_policy_failed(&r, "trapper", "trap");
    }
    for path in ["/plain/after", "/trap/after", "/loop-open/after"] {
        assert_eq!(c.get(&gw.url(path)).await.status, 200, "{path}");
    }
    let health = c.get(&format!("http://{}/healthz", gw.admin())).await;
    assert_eq!(health.status, 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_isolation_gives_each_request_a_fresh_instance() {
    let up = TestUpstream::start("echo").await;
    let trap = toml_path(&fixture("trap"));
    let add = toml_path(&fixture("add_header"));
    let toml = format!(
        r#"{pre}
[[routes]]
name = "fresh"
match = {{ path_prefix = "/fresh" }}
upstream = "echo"
plugins = [
  {{ name = "counter", wasm = {trap}, isolation = "request", config = {{ only_when_asked = true }} }},
  {{ name = "add", wasm = {add}, isolation = "request", config = {{ header = "x-isolated", value = "yes" }} }},
]

[[routes]]
name = "pooled"
match = {{ path_prefix = "/pooled" }}
upstream = "echo"
plugins = [{{ name = "counter", wasm = {trap}, isolation = "pooled", config = {{ only_when_asked = true }} }}]
"#,
        pre = preamble(&up.url())
    );
    let gw = TestGateway::start(&toml).await;
    let c = TestClient::new();
    for i in 0..5 {
        let r = c.get(&gw.url("/fresh/x")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        // The fixture counts calls in a global: a fresh instance always says 1.
        assert_eq!(upstream_header(&r, "x-calls").as_deref(), Some("1"), "#{i}");
        assert_eq!(upstream_header(&r, "x-isolated").as_deref(), Some("yes"));
        assert_eq!(r.header("x-isolated"), Some("yes"), "on-response ran");
    }
    // Control: with pooled isolation the same fixture's global survives between requests.
    let mut max_calls = 0u64;
    for _ in 0..5 {
        let r = c.get(&gw.url("/pooled/x")).await;
        assert_eq!(r.status, 200);
        max_calls = max_calls.max(upstream_header(&r, "x-calls").unwrap().parse().unwrap());
    }
    assert!(max_calls > 1, "pooled instances were never reused");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ungranted_capability_is_refused_at_load() {
    let up = TestUpstream::start("echo").await;
    let config = |grant: &str| {
        format!(
            r#"{pre}
[[routes]]
name = "r"
match = {{ path_prefix = "/" }}
upstream = "echo"
plugins = [{{ name = "caller", wasm = {w}{grant} }}]
"#,
            pre = preamble(&up.url()),
            w = toml_path(&fixture("uses_http"))
        )
    };
    let refused = config("");
    let err = match TestGateway::try_start(&refused).await {
        Ok(gw) => {
            gw.shutdown().await;
            panic!("a plugin importing http-client without a grant was loaded");
        }
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("weir:policy/http-client") && err.contains("not granted"),
        "error should name the import: {err}"
    );
    assert!(
        err.contains("uses_http.wasm"),
        "error should name the file: {err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("refused.toml");
    std::fs::write(&bad, &refused).unwrap();
    assert_eq!(weir::cli::validate(&bad).await, ExitCode::FAILURE);

    // Control: the same plugin with a grant loads, validates and serves.
    let granted = config(&format!(r#", http = {{ allow = ["{}"] }}"#, up.url()));
    let good = dir.path().join("granted.toml");
    std::fs::write(&good, &granted).unwrap();
    assert_eq!(weir::cli::validate(&good).await, ExitCode::SUCCESS);
    let gw = TestGateway::start(&granted).await;
    let r = TestClient::new()
        .get_with(
            &gw.url("/x"),
            &[("x-target", &format!("{}/inner", up.url()))],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        upstream_header(&r, "x-upstream-status").as_deref(),
        Some("200")
    );
    gw.shutdown().await;
}

/// Calls of `phase` to the plugin whose id ends with `:name`, from `/metrics`.
async fn phase_calls(gw: &TestGateway, name: &str, phase: &str) -> f64 {
    let suffix = format!(":{name}");
    weir_testkit::extra_a::scrape(gw)
        .await
        .iter()
        .filter(|s| {
            s.name == "weir_plugin_calls_total"
                && s.labels.get("phase").map(String::as_str) == Some(phase)
                && s.labels.get("plugin").is_some_and(|p| p.ends_with(&suffix))
        })
        .map(|s| s.value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_declared_phases_are_called() {
    let up = TestUpstream::start("echo").await;
    let toml = format!(
        r#"{pre}
[[routes]]
name = "phases"
match = {{ path_prefix = "/" }}
upstream = "echo"
plugins = [
  {{ name = "headers", wasm = {hdr}, config = {{ request = {{ set = {{ "x-a" = "1" }} }} }} }},
  {{ name = "rate-limit", wasm = {rl}, config = {{ key = "ip", limits = [{{ requests = 100, window = "60s" }}] }} }},
  {{ name = "request-log", wasm = {log} }},
]
"#,
        pre = preamble(&up.url()),
        hdr = toml_path(&plugin("headers")),
        rl = toml_path(&plugin("rate_limit")),
        log = toml_path(&plugin("request_log")),
    );
    let gw = TestGateway::start(&toml).await;
    let c = TestClient::new();
    for _ in 0..5 {
        let r = c.get(&gw.url("/x")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        // Declared phases did their work: the request header and the response RateLimit headers.
        assert_eq!(upstream_header(&r, "x-a").as_deref(), Some("1"));
        assert!(r.header("ratelimit-remaining").is_some());
    }
    // on-log runs after the response; wait for the fifth.
    let deadline = Instant::now() + Duration::from_secs(5);
    while phase_calls(&gw, "request-log", "on_log").await < 5.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expect = [
        // headers with request operations only: on-request, nothing else.
        ("headers", [5.0, 0.0, 0.0]),
        // rate-limit: on-request only; its RateLimit headers are `set-response-headers` edits.
        ("rate-limit", [5.0, 0.0, 0.0]),
        // request-log: on-log only.
        ("request-log", [0.0, 0.0, 5.0]),
    ];
    for (name, counts) in expect {
        for (phase, want) in ["on_request", "on_response", "on_log"].iter().zip(counts) {
            assert_eq!(phase_calls(&gw, name, phase).await, want, "{name} {phase}");
        }
    }
    gw.shutdown().await;
}

/// Response headers decided in `on-request` reach every response the request gets: the
/// upstream's, and a later plugin's local answer; `on-response` phases see them and may change them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_headers_set_in_on_request_reach_every_answer() {
    let up = TestUpstream::start("echo").await;
    let toml = format!(
        r#"{pre}
[[routes]]
name = "refused"
match = {{ path_prefix = "/refused" }}
upstream = "echo"
plugins = [
  {{ name = "rate-limit", wasm = {rl}, config = {{ key = "ip", limits = [{{ requests = 100, window = "60s" }}] }} }},
  {{ name = "ip-filter", wasm = {ipf}, config = {{ deny = ["127.0.0.0/8"] }} }},
]

[[routes]]
name = "rewritten"
match = {{ path_prefix = "/" }}
upstream = "echo"
plugins = [
  {{ name = "rate-limit", wasm = {rl}, config = {{ key = "ip", limits = [{{ requests = 100, window = "60s" }}] }} }},
  {{ name = "headers", wasm = {hdr}, config = {{ response = {{ set = {{ "ratelimit-policy" = "hidden" }} }} }} }},
]
"#,
        pre = preamble(&up.url()),
        rl = toml_path(&plugin("rate_limit")),
        ipf = toml_path(&plugin("ip_filter")),
        hdr = toml_path(&plugin("headers")),
    );
    let gw = TestGateway::start(&toml).await;
    let c = TestClient::new();
    let hits = up.hits.load(Ordering::SeqCst);
    let r = c.get(&gw.url("/refused")).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.header("ratelimit-remaining"), Some("99"));
    assert_eq!(r.header("ratelimit-policy"), Some("100;w=60"));
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        hits,
        "a refused request reached the upstream"
    );

    let r = c.get(&gw.url("/ok")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("ratelimit-limit"), Some("100"));
    // Set before `on-response`, so the later plugin's response edit wins.
    assert_eq!(r.header("ratelimit-policy"), Some("hidden"));
    // They are response headers only: the upstream never saw them.
    assert_eq!(upstream_header(&r, "ratelimit-limit"), None);
    gw.shutdown().await;
}

/// `[runtime] pool_max_uses` recycles pooled instances after that many calls.
#[tokio::test]
async fn pool_max_uses_recycles_pooled_instances() {
    use weir_testkit::extra_a::{metric, scrape};
    let up = TestUpstream::start("echo").await;
    let toml = |uses: u64| {
        format!(
            "{pre}\n[runtime]\npool_max_uses = {uses}\n\n[[routes]]\nname = \"r\"\n\
             match = {{ path_prefix = \"/\" }}\nupstream = \"echo\"\n\
             plugins = [{{ name = \"noop\", wasm = {w:?} }}]\n",
            pre = preamble(&up.url()),
            w = plugin("noop").display().to_string(),
        )
    };
    for (uses, at_least, at_most) in [(2, 5.0, 6.0), (10_000, 1.0, 1.0)] {
        let gw = TestGateway::start(&toml(uses)).await;
        let client = TestClient::new();
        for _ in 0..10 {
            assert_eq!(client.get(&gw.url("/x")).await.status, 200);
        }
        let n = metric(
            &scrape(&gw).await,
            "weir_plugin_instantiations_total",
            &[("plugin", "route r/0:noop")],
        )
        .unwrap_or(0.0);
        assert!(
            (at_least..=at_most).contains(&n),
            "pool_max_uses = {uses}: {n} instantiations for 10 calls"
        );
        gw.shutdown().await;
    }
}

/// `[runtime] max_instances` bounds the Wasm instance slots: a `request`-isolation session
/// holds its slot until its response is done, so with one slot a second request that arrives
/// meanwhile finds none (the plugin fails, closed: 503), and with two it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_instances_bounds_concurrent_instances() {
    let up = TestUpstream::start("echo").await;
    let add = toml_path(&fixture("add_header"));
    let toml = |slots: u32| {
        format!(
            "{pre}\n[runtime]\nmax_instances = {slots}\n\n[[routes]]\nname = \"r\"\n\
             match = {{ path_prefix = \"/\" }}\nupstream = \"echo\"\n\
             plugins = [{{ name = \"add\", wasm = {add}, isolation = \"request\", \
             config = {{ header = \"x-isolated\", value = \"yes\" }} }}]\n",
            pre = preamble(&up.url()),
        )
    };
    for (slots, second) in [(1, 503), (2, 200)] {
        let gw = TestGateway::start(&toml(slots)).await;
        let c = TestClient::new();
        // The upstream holds `/slow` for 2 s, and the first session its slot with it.
        let first = tokio::spawn({
            let (c, url) = (c.clone(), gw.url("/slow"));
            async move { c.get(&url).await.status }
        });
        let t0 = Instant::now();
        while up.in_flight.load(Ordering::SeqCst) == 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "first request never reached the upstream"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let r = c.get(&gw.url("/fast")).await;
        assert_eq!(r.status, second, "max_instances = {slots}: {}", r.text());
        if second == 503 {
            assert_policy_failed(&r, "add", "internal");
        }
        assert_eq!(
            first.await.unwrap(),
            200,
            "max_instances = {slots}: first request"
        );
        gw.shutdown().await;
    }
}
