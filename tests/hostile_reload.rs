//! Bad reloads through a real gateway under background load: `.wasm` files that are empty,
//! truncated, 50 MiB of zeros, a core module, a component of another world, or a policy that
//! imports a capability it was not granted; configs that are not TOML, name unknown keys,
//! upstreams or files. Each is refused (`POST /admin/reload` → 422 naming the problem) while
//! the old version keeps serving with zero failed requests. Then a storm of 100 reloads under
//! 8 clients: zero failed requests, flat RSS. (`policy_reload` covers random bytes and a
//! failing `init`.)

#![allow(clippy::unwrap_used)]

use std::time::Duration;
use weir_testkit::extra_c::{
    Load, Sample, admin_get, admin_post, fixture, preamble, replace_atomically,
};
use weir_testkit::extra_f::vm_rss_kib;
use weir_testkit::{TestClient, TestGateway, TestUpstream, eventually};

/// Hard bound on background requests so every load ends.
const MAX_REQUESTS: usize = 200_000;

/// The tests of this file measure this process's RSS: they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Route `/` with one plugin read from `p.wasm` next to the config: the add-header fixture
/// setting `x-policy: VALUE`.
fn config(upstream: &str, value: &str) -> String {
    format!(
        r#"{pre}
[[routes]]
name = "r"
match = {{ path_prefix = "/" }}
upstream = "echo"
plugins = [{{ name = "swap", wasm = "p.wasm", config = {{ header = "x-policy", value = "{value}" }} }}]
"#,
        pre = preamble(upstream)
    )
}

async fn start(up: &TestUpstream) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("add_header"), dir.path().join("p.wasm")).unwrap();
    let gw = TestGateway::start_in(dir, &config(&up.url(), "v1"))
        .await
        .unwrap();
    let r = TestClient::new().get(&gw.url("/")).await;
    assert_eq!(r.header("x-policy"), Some("v1"));
    gw
}

fn failed(samples: &[Sample]) -> Vec<&Sample> {
    samples
        .iter()
        .filter(|s| s.status != 200 || s.error.is_some())
        .collect()
}

/// `POST /admin/reload` is refused with 422 and an error containing every `needles`, and the
/// old version still answers.
async fn refused(gw: &TestGateway, case: &str, needles: &[&str], serving: &str) {
    let r = admin_post(gw, "/admin/reload").await;
    assert_eq!(r.status, 422, "{case}: {}", r.text());
    assert_eq!(r.json()["ok"], false, "{case}");
    let err = r.json()["error"].as_str().unwrap_or_default().to_string();
    for n in needles {
        assert!(
            err.contains(n),
            "{case}: error {err:?} should contain {n:?}"
        );
    }
    let r = TestClient::new().get(&gw.url("/check")).await;
    assert_eq!(r.status, 200, "{case}: {}", r.text());
    assert_eq!(
        r.header("x-policy"),
        Some(serving),
        "{case}: the old version stopped serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_wasm_files_are_refused_while_the_old_version_serves() {
    let _serial = SERIAL.lock().await;
    let up = TestUpstream::start("echo").await;
    let gw = start(&up).await;
    let p = gw.path("p.wasm");
    let good = std::fs::read(fixture("add_header")).unwrap();
    let load = Load::start(gw.url("/bg"), 4, MAX_REQUESTS, &["x-policy"]);
    let rss_before = vm_rss_kib();

    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("empty file", Vec::new(), &["p.wasm"]),
        (
            "truncated component",
            good[..good.len() / 2].to_vec(),
            &["p.wasm", "not a valid WebAssembly component"],
        ),
        (
            "50 MiB of zeros",
            vec![0u8; 50 * 1024 * 1024],
            &["p.wasm", "not a valid WebAssembly component"],
        ),
        (
            // The smallest valid core module: magic and version, no sections.
            "core module",
            b"\0asm\x01\0\0\0".to_vec(),
            &["p.wasm"],
        ),
        (
            "component of another world",
            std::fs::read(fixture("wrong_world")).unwrap(),
            &["p.wasm"],
        ),
        (
            "ungranted http-client import",
            std::fs::read(fixture("uses_http")).unwrap(),
            &["p.wasm", "weir:policy/http-client", "not granted"],
        ),
    ];
    for (case, bytes, needles) in &cases {
        replace_atomically(&p, bytes);
        refused(&gw, case, needles, "v1").await;
    }
    // The file watcher saw the same files: its attempts were refused too.
    let s = admin_get(&gw, "/admin/status").await.json();
    assert_eq!(s["last_reload"]["ok"], false, "{s}");

    // A good file is picked up again.
    replace_atomically(&p, &good);
    std::fs::write(&gw.config_path, config(&up.url(), "v2")).unwrap();
    let r = admin_post(&gw, "/admin/reload").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        TestClient::new().get(&gw.url("/")).await.header("x-policy"),
        Some("v2")
    );

    let samples = load.finish().await;
    let bad = failed(&samples);
    assert!(!samples.is_empty());
    assert!(
        bad.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        bad.len(),
        samples.len(),
        &bad[..bad.len().min(3)]
    );
    // Reading 50 MiB (twice, watcher and admin) must not stick around.
    let grown = vm_rss_kib().saturating_sub(rss_before);
    assert!(grown < 128 * 1024, "RSS grew by {} MiB", grown / 1024);
    gw.shutdown().await;
}

/// Component of another world, in detail: the error says what is wrong with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_that_is_not_a_policy_is_named_as_such() {
    let _serial = SERIAL.lock().await;
    let up = TestUpstream::start("echo").await;
    let gw = start(&up).await;
    replace_atomically(
        &gw.path("p.wasm"),
        &std::fs::read(fixture("wrong_world")).unwrap(),
    );
    let r = admin_post(&gw, "/admin/reload").await;
    assert_eq!(r.status, 422, "{}", r.text());
    let err = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(
        err.contains("p.wasm") && (err.contains("on-request") || err.contains("init")),
        "the error should say which export is missing: {err}"
    );
    eprintln!("wrong world reload error: {err}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configs_are_refused_while_the_old_version_serves() {
    let _serial = SERIAL.lock().await;
    let up = TestUpstream::start("echo").await;
    let gw = start(&up).await;
    let load = Load::start(gw.url("/bg"), 4, MAX_REQUESTS, &["x-policy"]);
    let good = config(&up.url(), "v1");
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "not TOML",
            "version = 1\n[[routes]\nname = ".to_string(),
            &["weir.toml"],
        ),
        ("empty file", String::new(), &["weir.toml"]),
        (
            "binary garbage",
            String::from_utf8_lossy(&[0xff, 0xfe, 0x00, 0x01, 0x80, 0x81]).into_owned(),
            &["weir.toml"],
        ),
        (
            "unknown key",
            good.replace("[[routes]]", "[[routes]]\ncolour = \"blue\""),
            &["colour"],
        ),
        (
            "unknown upstream",
            good.replace("upstream = \"echo\"", "upstream = \"nowhere\""),
            &["nowhere"],
        ),
        (
            "bad duration",
            good.replace("[[routes]]", "[[routes]]\ntimeout = \"soon\""),
            &["timeout"],
        ),
        (
            "missing plugin file",
            good.replace("p.wasm", "missing.wasm"),
            &["missing.wasm"],
        ),
        (
            "duplicate route names",
            format!(
                "{good}\n[[routes]]\nname = \"r\"\nmatch = {{ path_prefix = \"/x\" }}\nupstream = \"echo\"\n"
            ),
            &["r"],
        ),
        (
            "wrong version",
            good.replace("version = 1", "version = 99"),
            &["version"],
        ),
        (
            "10 MiB of comments",
            format!("{good}\n{}", "# padding\n".repeat(1024 * 1024)),
            &[],
        ),
    ];
    for (case, text, needles) in &cases {
        replace_atomically(&gw.config_path, text.as_bytes());
        if needles.is_empty() {
            // A valid (if silly) config: accepted.
            let r = admin_post(&gw, "/admin/reload").await;
            assert_eq!(r.status, 200, "{case}: {}", r.text());
            continue;
        }
        refused(&gw, case, needles, "v1").await;
    }
    replace_atomically(&gw.config_path, good.as_bytes());
    let samples = load.finish().await;
    let bad = failed(&samples);
    assert!(
        bad.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        bad.len(),
        samples.len(),
        &bad[..bad.len().min(3)]
    );
    gw.shutdown().await;
}

/// 100 reloads back to back (each one changing the plugin's config, so each swaps in a new
/// table with new plugin instances) while 8 clients send requests: no request fails, every
/// response carries one of the two versions, the last reload wins, RSS stays flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_storm_under_load_fails_nothing_and_leaks_nothing() {
    let _serial = SERIAL.lock().await;
    let up = TestUpstream::start("echo").await;
    let gw = start(&up).await;
    let c = TestClient::new();
    // Warm-up: a few reloads and requests so first-use allocations are not counted as growth.
    for i in 0..10 {
        std::fs::write(&gw.config_path, config(&up.url(), &format!("w{i}"))).unwrap();
        assert_eq!(admin_post(&gw, "/admin/reload").await.status, 200);
        assert_eq!(c.get(&gw.url("/warm")).await.status, 200);
    }
    let rss_before = vm_rss_kib();
    let load = Load::start(gw.url("/storm"), 8, MAX_REQUESTS, &["x-policy"]);
    assert!(load.wait_for(200, Duration::from_secs(30)).await);
    let started = std::time::Instant::now();
    for i in 0..100 {
        let v = if i % 2 == 0 { "a" } else { "b" };
        replace_atomically(&gw.config_path, config(&up.url(), v).as_bytes());
        let r = admin_post(&gw, "/admin/reload").await;
        assert_eq!(r.status, 200, "reload {i}: {}", r.text());
    }
    let storm = started.elapsed();
    let during = load.done.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        load.wait_for(during + 200, Duration::from_secs(30)).await,
        "load stalled after the storm"
    );
    let samples = load.finish().await;
    let bad = failed(&samples);
    assert!(
        bad.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        bad.len(),
        samples.len(),
        &bad[..bad.len().min(3)]
    );
    let versions: std::collections::BTreeSet<String> = samples
        .iter()
        .map(|s| s.headers[0].clone().unwrap_or_default())
        .collect();
    assert!(
        versions
            .iter()
            .all(|v| ["a", "b", "w9"].contains(&v.as_str())),
        "unexpected versions {versions:?}"
    );
    // The file watcher may still be applying the last write; the final state is "b".
    let last_is_b = eventually(Duration::from_secs(10), || async {
        TestClient::new()
            .get(&gw.url("/final"))
            .await
            .header("x-policy")
            == Some("b")
    })
    .await;
    assert!(last_is_b, "the last reload did not win");
    let rss_after = vm_rss_kib();
    let grown = rss_after.saturating_sub(rss_before);
    eprintln!(
        "reload storm: 100 reloads in {storm:?}, {} requests, RSS {rss_before} → {rss_after} KiB",
        samples.len()
    );
    assert!(
        grown < 64 * 1024,
        "RSS grew by {} MiB over 100 reloads",
        grown / 1024
    );
    gw.shutdown().await;
}
