//! Policies written in JavaScript and Python, built from source by `weir plugin build`'s code
//! (`plugins/examples/`) and served by a real gateway in front of a real upstream: the JS A/B
//! router and header validator, the Python JSON body validator, with allow and deny cases.
//!
//! Needs `node`/`npm` and `python3`; the build tools (componentize-qjs from npm, componentize-py
//! from PyPI) are installed into `plugins/examples/` on first use, as `.ci/run` does. Built
//! components are cached by source hash (`plugins/examples/*/.weir/cache`) and compiled ones in
//! `.weir-cache/`, so repeated runs take seconds.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use weir_testkit::extra_a::PREAMBLE;
use weir_testkit::{TestClient, TestGateway, TestUpstream};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn examples() -> PathBuf {
    repo().join("plugins/examples")
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs the pinned build tools into `plugins/examples/` unless they are there (once per
/// process: the tests of this file run in parallel).
fn ensure_toolchain(lang: &str) {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let ex = examples();
    let run = |cmd: &mut Command| {
        let st = cmd.current_dir(&ex).status().unwrap();
        assert!(st.success(), "{cmd:?} failed");
    };
    match lang {
        "js" if !ex.join("node_modules/.bin/componentize-qjs").exists() => {
            run(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]))
        }
        "python" if !ex.join(".venv/bin/componentize-py").exists() => {
            run(Command::new("python3").args(["-m", "venv", ".venv"]));
            run(Command::new(".venv/bin/pip").args(["install", "-q", "-r", "requirements.txt"]));
        }
        _ => {}
    }
}

/// Builds `plugins/examples/NAME` into `dir/NAME.wasm` with the CLI's build code.
async fn build(name: &str, dir: &Path) -> PathBuf {
    let src = examples().join(name);
    let out = dir.join(format!("{name}.wasm"));
    let o = out.clone();
    let built = tokio::task::spawn_blocking(move || weir::plugin_cli::build(&src, Some(&o)))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("building {name}: {e}"));
    assert_eq!(built.wasm, out);
    out
}

/// Skips (with the reason on stderr) when a language's runtime is not installed.
fn skip_without(tools: &[&str]) -> bool {
    for t in tools {
        if !have(t) {
            eprintln!("SKIPPED: `{t}` is not installed; these tests need node/npm and python3");
            return true;
        }
    }
    false
}

fn gateway_toml(upstream: &str, routes: &str) -> String {
    format!(
        "{PREAMBLE}\n[runtime]\ncache_dir = \"{}\"\n\n[upstreams.app]\ntargets = [{{ url = \"{upstream}\" }}]\n\n{routes}",
        repo().join(".weir-cache").display()
    )
}

#[tokio::test]
async fn javascript_ab_router_and_header_validator() {
    if skip_without(&["node", "npm"]) {
        return;
    }
    ensure_toolchain("js");
    let dir = tempfile::tempdir().unwrap();
    let ab = build("js-ab-router", dir.path()).await;
    let validator = build("js-request-validator", dir.path()).await;
    let up = TestUpstream::start("app").await;
    let routes = format!(
        r#"
[[routes]]
name = "shop"
match = {{ path_prefix = "/shop" }}
upstream = "app"
plugins = [{{ name = "ab", wasm = "{}", config = {{ experiment = "checkout", override_header = "x-force-variant", variants = [{{ name = "a", weight = 1 }}, {{ name = "b", weight = 1, path_prefix = "/v2" }}] }} }}]

[[routes]]
name = "api"
match = {{ path_prefix = "/api" }}
upstream = "app"
plugins = [{{ name = "rules", wasm = "{}", config = {{ required = {{ "x-api-version" = ["1", "2"] }}, forbidden = ["x-debug"] }} }}]
"#,
        ab.display(),
        validator.display()
    );
    let gw = TestGateway::start_in(dir, &gateway_toml(&up.url(), &routes))
        .await
        .unwrap();
    let c = TestClient::new();

    // A/B: a forced variant b is prefixed with /v2; the variant goes upstream and back.
    let r = c
        .get_with(&gw.url("/shop/cart"), &[("x-force-variant", "b")])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["path"], "/v2/shop/cart");
    assert_eq!(seen["headers"]["x-variant"], "b");
    assert_eq!(r.header("x-variant"), Some("b"));
    let r = c
        .get_with(&gw.url("/shop/cart"), &[("x-force-variant", "a")])
        .await;
    assert_eq!(
        (r.json()["path"].as_str(), r.header("x-variant")),
        (Some("/shop/cart"), Some("a"))
    );
    // Sticky per user (cookie), and users spread over both variants.
    let mut variants = std::collections::BTreeSet::new();
    for user in 0..40 {
        let cookie = format!("ab_user=user-{user}");
        let first = c.get_with(&gw.url("/shop"), &[("cookie", &cookie)]).await;
        let again = c.get_with(&gw.url("/shop"), &[("cookie", &cookie)]).await;
        let v = first.header("x-variant").unwrap().to_string();
        assert_eq!(again.header("x-variant"), Some(v.as_str()), "user-{user}");
        variants.insert(v);
    }
    assert_eq!(variants.len(), 2, "{variants:?}");

    // Validator: 400 on a missing or invalid header, 403 on a forbidden one, else proxied.
    let hits = up.hits();
    let r = c.get(&gw.url("/api/x")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("x-api-version")
    );
    let r = c
        .get_with(&gw.url("/api/x"), &[("x-api-version", "3")])
        .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("must be one of: 1, 2"), "{}", r.text());
    let r = c
        .get_with(
            &gw.url("/api/x"),
            &[("x-api-version", "2"), ("x-debug", "1")],
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(up.hits(), hits, "refused requests never reach the upstream");
    let r = c
        .get_with(&gw.url("/api/x"), &[("x-api-version", "2")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/api/x");
    assert_eq!(up.hits(), hits + 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn python_json_validator_reads_the_body() {
    if skip_without(&["python3"]) {
        return;
    }
    ensure_toolchain("python");
    let dir = tempfile::tempdir().unwrap();
    let wasm = build("py-json-validator", dir.path()).await;
    let up = TestUpstream::start("app").await;
    let routes = format!(
        r#"
[[routes]]
name = "users"
match = {{ path_prefix = "/users" }}
upstream = "app"
plugins = [{{ name = "json", wasm = "{}", config = {{ required = ["name", "email"], types = {{ age = "integer" }} }} }}]
"#,
        wasm.display()
    );
    let gw = TestGateway::start_in(dir, &gateway_toml(&up.url(), &routes))
        .await
        .unwrap();
    let c = TestClient::new();
    let post = |body: &'static str| {
        let c = c.clone();
        let url = gw.url("/users");
        async move {
            c.send(
                http::Method::POST,
                &url,
                &[("content-type", "application/json")],
                body,
            )
            .await
            .unwrap()
        }
    };

    let r = post(r#"{"name": "Ada"}"#).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.json()["fields"], serde_json::json!(["email"]));
    let r = post(r#"{"name": "Ada", "email": "a@x", "age": "old"}"#).await;
    assert_eq!(
        (r.status, r.json()["fields"].clone()),
        (422, serde_json::json!(["age"]))
    );
    assert_eq!(post("{not json").await.status, 400);
    assert_eq!(up.hits(), 0, "refused requests never reach the upstream");

    let body = r#"{"name": "Ada", "email": "a@x", "age": 36}"#;
    let r = post(body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["body_len"],
        body.len(),
        "the buffered body goes upstream intact"
    );
    // Methods outside the configured ones are not checked.
    assert_eq!(c.get(&gw.url("/users/1")).await.status, 200);
    assert_eq!(up.hits(), 2);
    gw.shutdown().await;
}
