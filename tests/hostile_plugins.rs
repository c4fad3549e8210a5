//! Plugin faults through a real gateway: infinite loops, memory bombs and traps all at once
//! under `isolation = "request"` (`policy_e2e` covers them one by one, pooled), and huge
//! arguments across the host boundary from the `huge_args` fixture (10 MiB header values, log
//! lines, stdout, context and kv values, local answers, 100,000 header edits).
//! Ungranted imports are refused at load (`policy_e2e`) and at reload (`hostile_reload`).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use weir_testkit::extra_c::{fixture, preamble, toml_path, upstream_header};
use weir_testkit::extra_f::vm_rss_kib;
use weir_testkit::{Resp, TestClient, TestGateway, TestUpstream};

const TEN_MIB: usize = 10 * 1024 * 1024;

/// The tests of this file measure this process's RSS and latency: they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn route(name: &str, prefix: &str, plugin: &str) -> String {
    format!(
        "\n[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"{prefix}\" }}\nupstream = \"echo\"\nplugins = [{plugin}]\n"
    )
}

/// 503 problem+json naming the plugin and the failure kind.
fn policy_failed(r: &Resp, plugin: &str, kind: &str) {
    assert_eq!(r.status, 503, "{plugin}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let detail = r.json()["detail"].as_str().unwrap_or_default().to_string();
    assert!(
        detail.contains(plugin) && detail.contains(kind),
        "{plugin}: detail {detail:?} should name {kind:?}"
    );
}

/// 16 looping, 8 memory-bombing and 8 trapping requests at once, each plugin in a fresh
/// instance per request, while a plain route is polled: every fault is answered 503 with its
/// kind, the plain route keeps answering quickly, and memory comes back. (The bomb gets 5 s of
/// CPU: the deadline is wall-clock epochs, and 24 busy guests on 2 cores would otherwise stop
/// some bombs by deadline before they reach the memory cap.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_all_at_once_under_request_isolation_are_contained() {
    let _serial = SERIAL.lock().await;
    let up = TestUpstream::start("echo").await;
    let mut toml = preamble(&up.url());
    toml += &route(
        "loop",
        "/loop",
        &format!(
            r#"{{ name = "spinner", wasm = {}, isolation = "request", limits = {{ cpu = "50ms" }} }}"#,
            toml_path(&fixture("loop_forever"))
        ),
    );
    toml += &route(
        "bomb",
        "/bomb",
        &format!(
            r#"{{ name = "bomb", wasm = {}, isolation = "request", limits = {{ memory = "16MiB", cpu = "5s" }} }}"#,
            toml_path(&fixture("mem_bomb"))
        ),
    );
    toml += &route(
        "trap",
        "/trap",
        &format!(
            r#"{{ name = "trapper", wasm = {}, isolation = "request" }}"#,
            toml_path(&fixture("trap"))
        ),
    );
    toml += "\n[[routes]]\nname = \"plain\"\nmatch = { path_prefix = \"/plain\" }\nupstream = \"echo\"\n";
    let gw = TestGateway::start(&toml).await;
    let c = TestClient::new();
    // Warm up every route once so compilation and first instantiation are not measured.
    policy_failed(&c.get(&gw.url("/loop/w")).await, "spinner", "deadline");
    policy_failed(&c.get(&gw.url("/bomb/w")).await, "bomb", "memory_limit");
    policy_failed(&c.get(&gw.url("/trap/w")).await, "trapper", "trap");
    let rss_before = vm_rss_kib();

    let mut faults = Vec::new();
    for (path, n, plugin, kind) in [
        ("/loop/x", 16, "spinner", "deadline"),
        ("/bomb/x", 8, "bomb", "memory_limit"),
        ("/trap/x", 8, "trapper", "trap"),
    ] {
        for _ in 0..n {
            let (c, url) = (c.clone(), gw.url(path));
            faults.push(tokio::spawn(async move {
                let r = c.get(&url).await;
                policy_failed(&r, plugin, kind);
            }));
        }
    }
    let plain_ok = Arc::new(AtomicUsize::new(0));
    let mut worst = Duration::ZERO;
    let end = Instant::now() + Duration::from_secs(1);
    while Instant::now() < end {
        let t = Instant::now();
        let r = c.get(&gw.url("/plain/x")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        worst = worst.max(t.elapsed());
        plain_ok.fetch_add(1, Ordering::SeqCst);
    }
    for f in faults {
        f.await.unwrap();
    }
    assert!(
        plain_ok.load(Ordering::SeqCst) >= 1,
        "plain route starved: {} answers in 1 s",
        plain_ok.load(Ordering::SeqCst)
    );
    assert!(
        worst < Duration::from_secs(5),
        "plain route stalled {worst:?}"
    );
    let grown = vm_rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 256 * 1024,
        "RSS grew by {} MiB after 32 contained faults",
        grown / 1024
    );
    assert_eq!(
        up.hits(),
        plain_ok.load(Ordering::SeqCst),
        "a fault reached the upstream"
    );
    assert_eq!(c.get(&gw.url("/plain/after")).await.status, 200);
    gw.shutdown().await;
}

/// A gateway with the `huge_args` fixture on `/huge` (fresh instance per request, 64 MiB and
/// 5 s of CPU, so the limits under test are the host's, not the guest's).
async fn huge_gateway(up: &TestUpstream) -> TestGateway {
    let mut toml = preamble(&up.url());
    toml += &route(
        "huge",
        "/huge",
        &format!(
            r#"{{ name = "huge", wasm = {}, isolation = "request", limits = {{ memory = "64MiB", cpu = "5s" }} }}"#,
            toml_path(&fixture("huge_args"))
        ),
    );
    toml += "\n[[routes]]\nname = \"plain\"\nmatch = { path_prefix = \"/plain\" }\nupstream = \"echo\"\n";
    TestGateway::start(&toml).await
}

async fn huge(c: &TestClient, gw: &TestGateway, mode: &str, size: usize) -> anyhow::Result<Resp> {
    c.send(
        http::Method::GET,
        &gw.url("/huge/x"),
        &[("x-huge-mode", mode), ("x-huge-size", &size.to_string())],
        bytes::Bytes::new(),
    )
    .await
}

async fn plain_still_serves(c: &TestClient, gw: &TestGateway) {
    let r = c.get(&gw.url("/plain/x")).await;
    assert_eq!(r.status, 200, "the gateway stopped serving: {}", r.text());
}

/// Huge arguments the host bounds itself: a 10 MiB log message and field are cut (the request
/// proceeds), 10 MiB on stdout is line-buffered and cut, a 10 MiB context value is refused
/// (64 KiB bag) and a 10 MiB kv value is refused with an error the plugin sees (1 MiB cap). A
/// 10 MiB local answer body is sent as is (it fit in the plugin's own memory limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_host_call_arguments_are_bounded() {
    let _serial = SERIAL.lock().await;
    let up = TestUpstream::start("echo").await;
    let gw = huge_gateway(&up).await;
    let c = TestClient::new();

    let r = huge(&c, &gw, "log", TEN_MIB).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        upstream_header(&r, "x-logged").as_deref(),
        Some(TEN_MIB.to_string().as_str())
    );
    let r = huge(&c, &gw, "stdout", TEN_MIB).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        upstream_header(&r, "x-printed").as_deref(),
        Some(TEN_MIB.to_string().as_str())
    );
    let r = huge(&c, &gw, "context", TEN_MIB).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream_header(&r, "x-ctx-stored").as_deref(), Some("0"));
    let r = huge(&c, &gw, "kv", TEN_MIB).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let kv = upstream_header(&r, "x-kv").unwrap_or_default();
    assert!(
        kv.starts_with("error") && kv.contains("larger than"),
        "{kv}"
    );
    let r = huge(&c, &gw, "respond-body", TEN_MIB).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), TEN_MIB);
    assert_eq!(
        up.hits(),
        4,
        "only the four proxied requests reach the upstream"
    );

    // Repeating them does not leak: RSS stays within a generous bound.
    let rss_before = vm_rss_kib();
    for _ in 0..5 {
        for mode in ["log", "stdout", "context", "kv", "respond-body"] {
            assert_eq!(
                huge(&c, &gw, mode, TEN_MIB).await.unwrap().status,
                200,
                "{mode}"
            );
        }
    }
    let grown = vm_rss_kib().saturating_sub(rss_before);
    assert!(grown < 128 * 1024, "RSS grew by {} MiB", grown / 1024);
    plain_still_serves(&c, &gw).await;
    gw.shutdown().await;
}

/// A plugin that sets a 10 MiB header. Expected: the gateway refuses the edit (503 policy
/// failure, fail-closed) instead of building a head larger than any peer accepts. Observed:
/// - request header: sent upstream (10 MiB), whose HTTP server answers 431, and that 431 is
///   relayed to a client whose own request was tiny;
/// - response header (`on-response`) or a local answer's header: a 10 MiB response head is
///   written to the client (hyper's client refuses it: "message head is too large").
///
/// `policy.rs` `edit_headers` and `local_response` accept any size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_plugin_header_edits_are_refused() {
    let _serial = SERIAL.lock().await;
    let up = TestUpstream::start("echo").await;
    let gw = huge_gateway(&up).await;
    let c = TestClient::new();
    for mode in [
        "req-header",
        "later-resp-header",
        "resp-header",
        "respond-header",
    ] {
        let r = huge(&c, &gw, mode, TEN_MIB)
            .await
            .unwrap_or_else(|e| panic!("{mode}: no usable response: {e:#}"));
        policy_failed(&r, "huge", "");
        if mode == "req-header" || mode == "later-resp-header" {
            assert_eq!(
                up.hits(),
                0,
                "an oversized request header reached the upstream"
            );
        }
    }
    // Only the response-phase case went upstream (its edit comes after the upstream answered).
    assert_eq!(up.hits(), 1);
    plain_still_serves(&c, &gw).await;
    gw.shutdown().await;
}

/// A plugin that sets 100,000 distinct headers: `http::HeaderMap` panics past 32,768 entries
/// ("size overflows MAX_SIZE", http-1.5.0 src/header/map.rs:1289) inside `policy.rs`
/// `edit_headers` (the `h.insert` at line 375), which unwinds the connection task: the client
/// gets its connection dropped with no response. Expected: the edit is refused (503) without
/// a panic on the request path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_plugin_header_edits_do_not_panic() {
    let _serial = SERIAL.lock().await;
    let up = TestUpstream::start("echo").await;
    let gw = huge_gateway(&up).await;
    let c = TestClient::new();
    let r = huge(&c, &gw, "many-headers", 100_000)
        .await
        .unwrap_or_else(|e| panic!("no response: {e:#}"));
    policy_failed(&r, "huge", "");
    plain_still_serves(&c, &gw).await;
    gw.shutdown().await;
}

/// Whatever the huge edits do to the one request, the gateway survives them and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_survives_oversized_header_edits() {
    let _serial = SERIAL.lock().await;
    let up = TestUpstream::start("echo").await;
    let gw = huge_gateway(&up).await;
    let c = TestClient::new();
    for (mode, size) in [
        ("req-header", TEN_MIB),
        ("resp-header", TEN_MIB),
        ("respond-header", TEN_MIB),
        ("many-headers", 100_000),
    ] {
        let _ = huge(&c, &gw, mode, size).await;
        plain_still_serves(&c, &gw).await;
        let r = huge(&c, &gw, "none", 0).await.unwrap();
        assert_eq!(r.status, 200, "{mode}: the plugin's route stopped serving");
    }
    gw.shutdown().await;
}
