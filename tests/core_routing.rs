//! Routing through a real gateway to real upstreams: host (exact, wildcard), path (segment-aware
//! prefix, exact, regex), methods, headers, explicit priority, `strip_prefix`/`rewrite`, and the
//! problem+json 404. Each route has its own upstream, so `x-upstream` names the route that matched.

#![allow(clippy::unwrap_used)]

use http::Method;
use std::collections::HashMap;
use weir_testkit::extra_a::{PREAMBLE, served_by};
use weir_testkit::{TestClient, TestGateway, TestUpstream};

/// Routes as `(name, route body)`; an upstream of the same name is started for each.
const ROUTES: &[(&str, &str)] = &[
    ("host-exact", r#"match = { host = "api.example.com" }"#),
    ("host-wild", r#"match = { host = "*.example.com" }"#),
    ("users", r#"match = { path_prefix = "/users" }"#),
    ("users-me", r#"match = { path = "/users/me" }"#),
    ("items-num", r#"match = { path_regex = "/items/[0-9]+" }"#),
    (
        "m-post",
        r#"match = { path_prefix = "/m", methods = ["POST", "put"] }"#,
    ),
    ("m-any", r#"match = { path_prefix = "/m" }"#),
    (
        "canary",
        r#"match = { path_prefix = "/h", headers = [{ name = "X-Canary", value = "1" }] }"#,
    ),
    (
        "v23",
        r#"match = { path_prefix = "/h", headers = [{ name = "x-version", regex = "v[23]" }] }"#,
    ),
    (
        "no-debug",
        r#"match = { path_prefix = "/h", headers = [{ name = "x-debug", present = false }] }"#,
    ),
    ("h-any", r#"match = { path_prefix = "/h" }"#),
    ("p-exact", r#"match = { path = "/p/x" }"#),
    (
        "p-high",
        "match = { path_prefix = \"/p\" }\npriority = 5000",
    ),
    (
        "strip",
        "match = { path_prefix = \"/strip\" }\nstrip_prefix = true",
    ),
    (
        "strip-slash",
        "match = { path_prefix = \"/slashy/\" }\nstrip_prefix = true",
    ),
    (
        "old",
        "match = { path_prefix = \"/old\" }\nrewrite = \"/new/v2\"",
    ),
    (
        "exact-rw",
        "match = { path = \"/login\" }\nrewrite = \"/auth/login\"",
    ),
    (
        "regex-rw",
        "match = { path_regex = '/r/(\\d+)/detail' }\nrewrite = \"/records/$1\"",
    ),
];

struct Fixture {
    gw: TestGateway,
    client: TestClient,
    _upstreams: Vec<TestUpstream>,
}

async fn fixture() -> Fixture {
    let mut toml = PREAMBLE.to_string();
    let mut upstreams = Vec::new();
    for (name, _) in ROUTES {
        let u = TestUpstream::start(name).await;
        toml.push_str(&format!(
            "\n[upstreams.{name}]\ntargets = [{{ url = \"{}\" }}]\n",
            u.url()
        ));
        upstreams.push(u);
    }
    for (name, body) in ROUTES {
        toml.push_str(&format!(
            "\n[[routes]]\nname = \"{name}\"\nupstream = \"{name}\"\n{body}\n"
        ));
    }
    Fixture {
        gw: TestGateway::start(&toml).await,
        client: TestClient::new(),
        _upstreams: upstreams,
    }
}

impl Fixture {
    /// Which route answered `method path` with `headers`; `None` for a local reply.
    async fn route(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Option<String> {
        let r = self
            .client
            .send(method, &self.gw.url(path), headers, "")
            .await
            .unwrap();
        served_by(&r)
    }

    async fn get(&self, path: &str) -> Option<String> {
        self.route(Method::GET, path, &[]).await
    }

    /// The path the upstream received for `GET path`.
    async fn upstream_uri(&self, path: &str) -> (String, String) {
        let r = self.client.get(&self.gw.url(path)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let j = r.json();
        (
            served_by(&r).unwrap(),
            j["uri"].as_str().unwrap().to_string(),
        )
    }
}

fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

#[tokio::test]
async fn host_exact_and_wildcard() {
    let f = fixture().await;
    let cases = [
        ("api.example.com", some("host-exact")),
        ("API.Example.COM", some("host-exact")),
        ("api.example.com:8080", some("host-exact")),
        ("shop.example.com", some("host-wild")),
        ("a.b.example.com", some("host-wild")),
        ("shop.example.com:443", some("host-wild")),
        // The bare domain is not covered by `*.example.com`, nor is a look-alike suffix.
        ("example.com", None),
        ("evilexample.com", None),
    ];
    for (host, want) in cases {
        let got = f
            .route(Method::GET, "/nothing-else", &[("host", host)])
            .await;
        assert_eq!(got, want, "Host: {host}");
    }
    // Host routes outrank path-only routes by default (more specific).
    assert_eq!(
        f.route(Method::GET, "/users/1", &[("host", "api.example.com")])
            .await,
        some("host-exact")
    );
    f.gw.shutdown().await;
}

#[tokio::test]
async fn path_prefix_is_segment_aware_and_exact_beats_prefix() {
    let f = fixture().await;
    assert_eq!(f.get("/users").await, some("users"));
    assert_eq!(f.get("/users/").await, some("users"));
    assert_eq!(f.get("/users/42").await, some("users"));
    assert_eq!(f.get("/users/42/orders?x=1").await, some("users"));
    assert_eq!(
        f.get("/usersx").await,
        None,
        "prefix must match whole segments"
    );
    assert_eq!(f.get("/user").await, None);
    // An exact path outranks the prefix that also covers it, but only for that exact path.
    assert_eq!(f.get("/users/me").await, some("users-me"));
    assert_eq!(f.get("/users/me/x").await, some("users"));
    assert_eq!(f.get("/users/me?tab=1").await, some("users-me"));
    f.gw.shutdown().await;
}

#[tokio::test]
async fn regex_is_anchored() {
    let f = fixture().await;
    assert_eq!(f.get("/items/7").await, some("items-num"));
    assert_eq!(f.get("/items/123456").await, some("items-num"));
    assert_eq!(f.get("/items/abc").await, None);
    assert_eq!(
        f.get("/items/7/x").await,
        None,
        "regex is anchored at the end"
    );
    assert_eq!(
        f.get("/x/items/7").await,
        None,
        "regex is anchored at the start"
    );
    f.gw.shutdown().await;
}

#[tokio::test]
async fn methods_filter_and_fall_through() {
    let f = fixture().await;
    assert_eq!(f.route(Method::POST, "/m", &[]).await, some("m-post"));
    // Methods are case-normalised in config ("put" → PUT).
    assert_eq!(f.route(Method::PUT, "/m/1", &[]).await, some("m-post"));
    assert_eq!(f.route(Method::GET, "/m", &[]).await, some("m-any"));
    assert_eq!(f.route(Method::DELETE, "/m/1", &[]).await, some("m-any"));
    f.gw.shutdown().await;
}

#[tokio::test]
async fn header_matchers() {
    let f = fixture().await;
    let r = |h: &'static [(&'static str, &'static str)]| f.route(Method::GET, "/h", h);
    assert_eq!(r(&[("x-canary", "1")]).await, some("canary"));
    // Header names are case-insensitive, values exact.
    assert_eq!(r(&[("X-CANARY", "1")]).await, some("canary"));
    assert_eq!(r(&[("x-canary", "10")]).await, some("no-debug"));
    assert_eq!(r(&[("x-version", "v2")]).await, some("v23"));
    assert_eq!(r(&[("x-version", "v3")]).await, some("v23"));
    // Header regexes are anchored: "v23" is not "v2" or "v3".
    assert_eq!(r(&[("x-version", "v23")]).await, some("no-debug"));
    assert_eq!(r(&[("x-version", "v4")]).await, some("no-debug"));
    // `present = false` excludes requests carrying the header; they fall through to h-any.
    assert_eq!(r(&[("x-debug", "on")]).await, some("h-any"));
    assert_eq!(r(&[]).await, some("no-debug"));
    f.gw.shutdown().await;
}

#[tokio::test]
async fn explicit_priority_overrides_specificity() {
    let f = fixture().await;
    // Without the explicit priority, the exact route /p/x would win.
    assert_eq!(f.get("/p/x").await, some("p-high"));
    assert_eq!(f.get("/p").await, some("p-high"));
    assert_eq!(f.get("/p/y").await, some("p-high"));
    f.gw.shutdown().await;
}

#[tokio::test]
async fn strip_prefix_and_rewrite() {
    let f = fixture().await;
    let cases: HashMap<&str, (&str, &str)> = HashMap::from([
        ("/strip/a/b", ("strip", "/a/b")),
        ("/strip", ("strip", "/")),
        ("/strip/", ("strip", "/")),
        ("/strip/a?q=1&r=2", ("strip", "/a?q=1&r=2")),
        ("/slashy/a", ("strip-slash", "/a")),
        ("/old/a/b", ("old", "/new/v2/a/b")),
        ("/old", ("old", "/new/v2")),
        ("/old/x?y=z", ("old", "/new/v2/x?y=z")),
        ("/login", ("exact-rw", "/auth/login")),
        (
            "/login?next=%2Fhome",
            ("exact-rw", "/auth/login?next=%2Fhome"),
        ),
        ("/r/42/detail", ("regex-rw", "/records/42")),
        ("/r/7/detail?full=1", ("regex-rw", "/records/7?full=1")),
        // No rewrite configured: the path is forwarded unchanged.
        ("/users/42?x=1", ("users", "/users/42?x=1")),
    ]);
    for (path, (route, want)) in cases {
        let (got_route, uri) = f.upstream_uri(path).await;
        assert_eq!(got_route, route, "{path}");
        assert_eq!(uri, want, "{path}");
    }
    f.gw.shutdown().await;
}

#[tokio::test]
async fn no_route_is_problem_json_404_with_request_id() {
    let f = fixture().await;
    let r = f.client.get(&f.gw.url("/nowhere/at/all?x=1")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let id = r.header("x-request-id").expect("404 carries x-request-id");
    assert!(!id.is_empty());
    let j = r.json();
    assert_eq!(j["status"], 404);
    assert_eq!(j["type"], "https://weir.dev/problems/no-route");
    assert_eq!(j["title"], "Not Found");
    assert_eq!(j["request_id"], id);
    assert!(j["detail"].as_str().unwrap().contains("/nowhere/at/all"));

    // Every 404 gets its own id; a client-supplied id is kept.
    let r2 = f.client.get(&f.gw.url("/nowhere")).await;
    assert_ne!(r2.header("x-request-id"), Some(id));
    let r3 = f
        .client
        .get_with(&f.gw.url("/nowhere"), &[("x-request-id", "client-abc-123")])
        .await;
    assert_eq!(r3.status, 404);
    assert_eq!(r3.header("x-request-id"), Some("client-abc-123"));
    assert_eq!(r3.json()["request_id"], "client-abc-123");

    // A proxied request carries the same id upstream and back.
    let r4 = f.client.get(&f.gw.url("/users/1")).await;
    let id4 = r4.header("x-request-id").unwrap();
    assert_eq!(r4.json()["headers"]["x-request-id"], id4);
    f.gw.shutdown().await;
}
