//! First-party plugins end to end, as real `.wasm` through a running gateway: `cors`, `acl`,
//! `basic-auth` and `body-transform` (the others are in `policy_e2e.rs`, `hostile_jwt.rs`,
//! `plugin_http.rs` and `cluster.rs`).

use std::sync::atomic::Ordering;
use weir_testkit::extra_c::{plugin, preamble, toml_path, upstream_header};
use weir_testkit::{TestClient, TestGateway, TestUpstream};

/// A gateway in front of the echo upstream with one route per `(name, prefix, plugins)`.
async fn gateway(up: &TestUpstream, routes: &[(&str, &str, String)]) -> TestGateway {
    let mut toml = preamble(&up.url());
    for (name, prefix, plugins) in routes {
        toml.push_str(&format!(
            "\n[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"{prefix}\" }}\nupstream = \"echo\"\nplugins = [{plugins}]\n"
        ));
    }
    TestGateway::start(&toml).await
}

fn wasm(name: &str) -> String {
    toml_path(&plugin(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_locally_and_decorates_every_answer() {
    let up = TestUpstream::start("echo").await;
    let cors = format!(
        r#"{{ name = "cors", wasm = {}, config = {{ origins = ["https://app.example.com"], expose_headers = ["x-request-id"], credentials = true }} }}"#,
        wasm("cors")
    );
    let key = format!(
        r#"{{ name = "api-key-auth", wasm = {}, config = {{ keys = {{ "k1" = {{ consumer = "alice" }} }} }} }}"#,
        wasm("api_key_auth")
    );
    let gw = gateway(
        &up,
        &[
            ("private", "/private", format!("{cors}, {key}")),
            ("public", "/", cors.clone()),
        ],
    )
    .await;
    let c = TestClient::new();
    let origin = ("origin", "https://app.example.com");

    // A preflight is answered by the gateway.
    let r = c
        .send(
            http::Method::OPTIONS,
            &gw.url("/things"),
            &[origin, ("access-control-request-method", "PUT")],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(r.header("access-control-allow-methods").is_some());
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        0,
        "a preflight reached the upstream"
    );

    // An actual request: proxied, the response decorated.
    let r = c.get_with(&gw.url("/things"), &[origin]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-request-id")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    // Response headers only: the upstream saw none of them.
    assert_eq!(upstream_header(&r, "access-control-allow-origin"), None);

    // A later plugin's refusal carries them too, so the browser can read the 401.
    let r = c.get_with(&gw.url("/private/x"), &[origin]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );

    // Other origins and requests without Origin get nothing.
    let r = c
        .get_with(&gw.url("/things"), &[("origin", "https://evil.example")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = c.get(&gw.url("/things")).await;
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = c
        .send(
            http::Method::OPTIONS,
            &gw.url("/things"),
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "PUT"),
            ],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_allows_and_denies_consumers_and_groups() {
    let up = TestUpstream::start("echo").await;
    let chain = format!(
        r#"{{ name = "api-key-auth", wasm = {}, config = {{ keys = {{ "k-admin" = {{ consumer = "alice", groups = ["admin"] }}, "k-user" = {{ consumer = "bob", groups = ["users"] }}, "k-mallory" = {{ consumer = "mallory", groups = ["admin"] }} }} }} }}, {{ name = "acl", wasm = {}, config = {{ allow_groups = ["admin"], deny_consumers = ["mallory"] }} }}"#,
        wasm("api_key_auth"),
        wasm("acl")
    );
    let gw = gateway(&up, &[("admin", "/", chain)]).await;
    let c = TestClient::new();
    let as_key = |k: &'static str| {
        let c = c.clone();
        let url = gw.url("/admin/x");
        async move { c.get_with(&url, &[("x-api-key", k)]).await }
    };
    let r = as_key("k-admin").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = as_key("k-user").await;
    assert_eq!(
        r.status,
        403,
        "a consumer outside the allowed groups: {}",
        r.text()
    );
    let r = as_key("k-mallory").await;
    assert_eq!(
        r.status,
        403,
        "a denied consumer in an allowed group: {}",
        r.text()
    );
    assert_eq!(up.hits.load(Ordering::SeqCst), 1, "only alice got through");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_checks_passwords_and_hides_credentials() {
    let up = TestUpstream::start("echo").await;
    // sha256("abc") = ba7816bf…
    let auth = format!(
        r#"{{ name = "basic-auth", wasm = {}, config = {{ realm = "staff", users = {{ alice = {{ password_sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" }} }} }} }}"#,
        wasm("basic_auth")
    );
    let gw = gateway(&up, &[("staff", "/", auth)]).await;
    let c = TestClient::new();
    // Base64 of "alice:abc", "alice:abd", "bob:abc".
    let basic = |user_pass: &str| {
        let b64 = match user_pass {
            "alice:abc" => "YWxpY2U6YWJj",
            "alice:abd" => "YWxpY2U6YWJk",
            "bob:abc" => "Ym9iOmFiYw==",
            other => panic!("no fixture for {other}"),
        };
        format!("Basic {b64}")
    };
    let r = c
        .get_with(&gw.url("/x"), &[("authorization", &basic("alice:abc"))])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        upstream_header(&r, "authorization"),
        None,
        "credentials were forwarded upstream"
    );
    for bad in [
        basic("alice:abd"),
        basic("bob:abc"),
        "Bearer abc".to_string(),
    ] {
        let r = c.get_with(&gw.url("/x"), &[("authorization", &bad)]).await;
        assert_eq!(r.status, 401, "{bad}: {}", r.text());
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Basic") && v.contains("staff")),
            "{:?}",
            r.header("www-authenticate")
        );
    }
    let r = c.get(&gw.url("/x")).await;
    assert_eq!(r.status, 401);
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_transform_rewrites_json_both_ways() {
    let up = TestUpstream::start("echo").await;
    let transform = format!(
        r#"{{ name = "body-transform", wasm = {}, config = {{ request = {{ remove = ["debug"], rename = {{ userName = "user.name" }}, set = {{ "meta.source" = "weir" }} }}, response = {{ remove = ["peer"], rename = {{ method = "verb" }} }} }} }}"#,
        wasm("body_transform")
    );
    let gw = gateway(&up, &[("json", "/", transform)]).await;
    let c = TestClient::new();
    let r = c
        .send(
            http::Method::POST,
            &gw.url("/users"),
            &[("content-type", "application/json")],
            bytes::Bytes::from_static(br#"{"userName":"alice","debug":true,"age":7}"#),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // The response was rewritten: `method` renamed, `peer` removed.
    let doc = r.json();
    assert_eq!(doc["verb"], "POST", "{doc}");
    assert!(
        doc.get("method").is_none() && doc.get("peer").is_none(),
        "{doc}"
    );
    // The upstream received the rewritten request body, with a length to match.
    let sent: serde_json::Value =
        serde_json::from_str(doc["body"].as_str().expect("body echoed")).unwrap();
    assert_eq!(
        sent,
        serde_json::json!({ "user": { "name": "alice" }, "age": 7, "meta": { "source": "weir" } })
    );
    assert_eq!(
        doc["body_len"].as_u64(),
        Some(doc["body"].as_str().unwrap().len() as u64)
    );
    // Not JSON: passed through untouched.
    let r = c
        .send(
            http::Method::POST,
            &gw.url("/raw"),
            &[("content-type", "text/plain")],
            bytes::Bytes::from_static(b"debug=1"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body"], "debug=1");
    gw.shutdown().await;
}
