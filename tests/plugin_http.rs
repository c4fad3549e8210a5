//! Plugins that call out over HTTP, in a real gateway with real services: `bff-aggregate`
//! composing a dashboard from three backends, `ext-authz` asking an authorization service (and
//! caching its answers), and the gateway refusing a destination outside a plugin's allow list.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};
use weir_testkit::extra_d::{AuthzRules, AuthzServer, plugin_wasm, refused_port};
use weir_testkit::{TestClient, TestGateway, TestUpstream, UpstreamBehavior};

const HEAD: &str = r#"
version = 1
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
"#;

fn slow(d: Duration, status: Option<u16>) -> UpstreamBehavior {
    UpstreamBehavior {
        delay: d,
        delay_all: true,
        status,
    }
}

/// A plugin-only route (no upstream) running `bff-aggregate`.
fn bff_route(name: &str, path: &str, allow: &[String], backends: &str) -> String {
    let allow = allow
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[[routes]]
name = "{name}"
match = {{ path_prefix = "{path}" }}
timeout = "5s"
[[routes.plugins]]
name = "bff-aggregate"
wasm = "{wasm}"
http = {{ allow = [{allow}], timeout = "3s" }}
[routes.plugins.config]
user_from = "header:x-user"
forward_headers = ["authorization"]
backends = [{backends}]
"#,
        wasm = plugin_wasm("bff_aggregate"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bff_aggregate_merges_concurrently_and_reports_partial_results() {
    let profile = TestUpstream::start("profile").await;
    let orders = TestUpstream::start_with("orders", slow(Duration::from_millis(600), None)).await;
    // Fails, and slowly: called one after the other the three would take >= 1.2 s.
    let recs = TestUpstream::start_with("recs", slow(Duration::from_millis(600), Some(500))).await;
    let allow = [profile.url(), orders.url(), recs.url()];
    let backends = |recs_required: bool| {
        format!(
            r#"{{ name = "profile", url = "{}/users/{{user}}" }},
               {{ name = "orders", url = "{}/orders?user={{user}}" }},
               {{ name = "recommendations", url = "{}/recs/{{user}}", required = {recs_required} }}"#,
            profile.url(),
            orders.url(),
            recs.url()
        )
    };
    let toml = format!(
        "{HEAD}{}{}",
        bff_route("dash", "/dashboard", &allow, &backends(false)),
        bff_route("strict", "/strict", &allow, &backends(true)),
    );
    let gw = TestGateway::start(&toml).await;
    let c = TestClient::new();

    let t = Instant::now();
    let r = c
        .get_with(
            &gw.url("/dashboard"),
            &[("x-user", "u 42/x"), ("authorization", "Bearer t")],
        )
        .await;
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-weir-partial"), Some("recommendations"));
    let v = r.json();
    assert_eq!(
        v.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["orders", "profile"],
        "{v}"
    );
    assert_eq!(v["profile"]["service"], "profile");
    // The user is one encoded path segment, whatever the client sent.
    assert_eq!(v["profile"]["path"], "/users/u%2042%2Fx");
    assert_eq!(v["orders"]["service"], "orders");
    assert_eq!(v["orders"]["path"], "/orders");
    assert_eq!(v["orders"]["query"], "user=u%2042%2Fx");
    assert_eq!(v["orders"]["headers"]["authorization"], "Bearer t");
    assert!(v["orders"]["headers"]["x-request-id"].is_string());
    assert_eq!(recs.hits(), 1, "the failing backend was called");
    // Concurrent: close to the slowest (600 ms), well under the sum (1.2 s).
    assert!(took >= Duration::from_millis(600), "{took:?}");
    assert!(
        took < Duration::from_millis(1700),
        "backends were not called concurrently: {took:?}"
    );

    // The same backends with the failing one required: 502 naming it.
    let r = c.get_with(&gw.url("/strict"), &[("x-user", "u1")]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let p = r.json();
    assert_eq!(p["failed"], serde_json::json!(["recommendations"]));
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("backend `recommendations` failed: answered 500"),
        "{p}"
    );

    // No user: 400 before any backend is called.
    let before = profile.hits();
    let r = c.get(&gw.url("/dashboard")).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(profile.hits(), before);
    gw.shutdown().await;
}

/// An `ext-authz` plugin in front of `upstream` on `path`, asking `authz_url`.
fn authz_route(name: &str, path: &str, upstream: &str, allow: &str, config: &str) -> String {
    format!(
        r#"
[[routes]]
name = "{name}"
match = {{ path_prefix = "{path}" }}
upstream = "{upstream}"
[[routes.plugins]]
name = "ext-authz"
wasm = "{wasm}"
http = {{ allow = ["{allow}"], timeout = "2s" }}
config = {{ {config} }}
"#,
        wasm = plugin_wasm("ext_authz"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_allows_denies_and_caches_decisions() {
    let authz = AuthzServer::start(AuthzRules {
        header: "authorization".into(),
        allow_value: "Bearer good".into(),
        grant: vec![("x-auth-user".into(), "alice".into())],
    })
    .await;
    let api = TestUpstream::start("api").await;
    let dead = format!("http://127.0.0.1:{}", refused_port());
    let check = format!("{}/check", authz.url());
    let toml = format!(
        "{HEAD}\n[upstreams.api]\ntargets = [{{ url = \"{}\" }}]\n{}{}{}{}",
        api.url(),
        authz_route(
            "cached",
            "/api",
            "api",
            &authz.url(),
            &format!(
                r#"url = "{check}", headers = ["authorization"], upstream_headers = ["x-auth-user"], cache_ttl = "30s""#
            ),
        ),
        authz_route(
            "forward-auth",
            "/fwd",
            "api",
            &authz.url(),
            &format!(r#"url = "{check}", mode = "get""#),
        ),
        authz_route(
            "closed",
            "/closed",
            "api",
            &dead,
            &format!(r#"url = "{dead}/check""#)
        ),
        authz_route(
            "open",
            "/open",
            "api",
            &dead,
            &format!(
                r#"url = "{dead}/check", upstream_headers = ["x-auth-user"], failure_mode_allow = true"#
            ),
        ),
    );
    let gw = TestGateway::start(&toml).await;
    let c = TestClient::new();
    let good = [
        ("authorization", "Bearer good"),
        // A client cannot claim the identity the service grants.
        ("x-auth-user", "mallory"),
    ];

    // Allow: reaches the upstream with the granted header.
    let r = c.get_with(&gw.url("/api/orders?id=7"), &good).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["service"], "api");
    assert_eq!(r.json()["headers"]["x-auth-user"], "alice");
    assert_eq!((authz.calls(), api.hits()), (1, 1));
    let call = authz.log().remove(0);
    assert_eq!(
        (call.method.as_str(), call.path.as_str()),
        ("POST", "/check")
    );
    let body = call.json();
    assert_eq!(body["method"], "GET");
    assert_eq!(body["path"], "/api/orders");
    assert_eq!(body["query"], "id=7");
    assert_eq!(body["headers"]["authorization"], "Bearer good");
    assert!(
        body["headers"].get("x-auth-user").is_none(),
        "only configured headers"
    );

    // The identical request again: decided from the cache, the service is not called.
    let r = c.get_with(&gw.url("/api/orders?id=7"), &good).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-auth-user"], "alice");
    assert_eq!((authz.calls(), api.hits()), (1, 2));

    // Deny: 403 problem, the upstream is not reached; the denial is cached too.
    for _ in 0..2 {
        let r = c
            .get_with(
                &gw.url("/api/orders?id=7"),
                &[("authorization", "Bearer bad")],
            )
            .await;
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    }
    assert_eq!((authz.calls(), api.hits()), (2, 2));

    // Another path is another decision.
    let r = c.get_with(&gw.url("/api/other"), &good).await;
    assert_eq!(r.status, 200);
    assert_eq!(authz.calls(), 3);

    // Forward-auth mode: a GET with x-forwarded-*; no cache configured, so every request asks.
    for _ in 0..2 {
        let r = c
            .get_with(&gw.url("/fwd/x?q=1"), &[("authorization", "Bearer good")])
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(authz.calls(), 5);
    let call = authz.log().pop().unwrap();
    assert_eq!(call.method, "GET");
    assert_eq!(call.headers["x-forwarded-uri"], "/fwd/x?q=1");
    assert_eq!(call.headers["x-forwarded-method"], "GET");
    let r = c
        .get_with(&gw.url("/fwd/x"), &[("authorization", "Bearer no")])
        .await;
    assert_eq!(r.status, 403);

    // Service unreachable: fail closed (503) by default, through when configured open.
    let hits = api.hits();
    let r = c.get_with(&gw.url("/closed"), &good).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(api.hits(), hits);
    let r = c.get_with(&gw.url("/open"), &good).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["headers"].get("x-auth-user").is_none(),
        "failing open must not keep a client-supplied identity"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_outside_the_allow_list_is_refused() {
    let allowed = AuthzServer::start(AuthzRules {
        header: "authorization".into(),
        allow_value: "Bearer good".into(),
        grant: Vec::new(),
    })
    .await;
    let other = TestUpstream::start("other").await;
    let target = format!("{}/users/u1", other.url());
    let toml = format!(
        "{HEAD}{}",
        bff_route(
            "dash",
            "/dashboard",
            &[allowed.url()],
            &format!(
                r#"{{ name = "profile", url = "{}/users/{{user}}" }}"#,
                other.url()
            ),
        )
    );
    let gw = TestGateway::start(&toml).await;
    let r = TestClient::new()
        .get_with(&gw.url("/dashboard"), &[("x-user", "u1")])
        .await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let detail = r.json()["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains("backend `profile` failed"), "{detail}");
    assert!(
        detail.contains(&target),
        "names the refused destination: {detail}"
    );
    assert!(detail.contains("not allowed"), "{detail}");
    assert_eq!(other.hits(), 0, "the refused destination saw no request");
    assert_eq!(allowed.calls(), 0);
    gw.shutdown().await;
}
