//! Hot reload of Wasm policies under load: a route's `.wasm` file is replaced by a component
//! that adds a different header while 16 clients keep sending requests. The reload is picked up
//! by the file watcher, by `POST /admin/reload` and by `Gateway::reload`; no request may fail
//! and every client must switch from the old header to the new one exactly once. Then a corrupt
//! `.wasm` and a config whose plugin `init` fails are rejected while the old version serves.
//!
//! The plugins run with the default 50 ms CPU limit: the runtime charges guests for the thread
//! CPU time they use, so a thread stalled by a contended machine does not fail a microsecond
//! call (`default_cpu_limit_does_not_fail_requests_under_contention` guards that).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;
use weir_testkit::extra_c::{
    Load, Sample, admin_get, admin_post, fixture, last_reload, plugin, preamble, random_bytes,
    replace_atomically,
};
use weir_testkit::{TestClient, TestGateway, TestUpstream, eventually};

const CLIENTS: usize = 16;
/// Requests at least, across the whole run of each load test.
const MIN_REQUESTS: usize = 5_000;
/// Hard bound on requests, so a test whose reload never happens still ends.
const MAX_REQUESTS: usize = 40_000;

/// The plugin CPU limit of the reload tests (see the module docs); `None` = the default.
const RELOAD_CPU: Option<&str> = None;

/// A route `/` to the echo upstream with one plugin read from `p.wasm` in the config's
/// directory, with the CPU limit `cpu` (`None`: the default).
fn config_with(upstream: &str, plugin_config: &str, cpu: Option<&str>) -> String {
    let limits = cpu
        .map(|c| format!(r#", limits = {{ cpu = "{c}" }}"#))
        .unwrap_or_default();
    format!(
        r#"{pre}
[[routes]]
name = "r"
match = {{ path_prefix = "/" }}
upstream = "echo"
plugins = [{{ name = "swap", wasm = "p.wasm", config = {plugin_config}{limits} }}]
"#,
        pre = preamble(upstream)
    )
}

fn config(upstream: &str, plugin_config: &str) -> String {
    config_with(upstream, plugin_config, RELOAD_CPU)
}

/// The add-header fixture's config: adds `x-policy: v1` (request and response).
const V1_CONFIG: &str = r#"{ header = "x-policy", value = "v1" }"#;

/// Starts a gateway whose `p.wasm` is the add-header fixture (`x-policy: v1`).
async fn start_v1(up: &TestUpstream) -> TestGateway {
    start_v1_with(up, RELOAD_CPU).await
}

async fn start_v1_with(up: &TestUpstream, cpu: Option<&str>) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("add_header"), dir.path().join("p.wasm")).unwrap();
    let gw = TestGateway::start_in(dir, &config_with(&up.url(), V1_CONFIG, cpu))
        .await
        .unwrap();
    let r = TestClient::new().get(&gw.url("/")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-policy"), Some("v1"));
    gw
}

/// Which version answered: `old` and `new` are `(recorded header index, value)`.
#[derive(Debug, PartialEq, Clone, Copy)]
enum Version {
    Old,
    New,
}

/// Checks a finished load: enough requests, none failed, each answered by exactly one version,
/// and every client went old → new once (never back), ending on the new one.
fn check_switch(samples: &[Sample], old: (usize, &str), new: (usize, &str)) {
    assert!(
        samples.len() >= MIN_REQUESTS,
        "only {} requests",
        samples.len()
    );
    let failed: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.status != 200 || s.error.is_some())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(3)]
    );
    let mut per_client: HashMap<usize, Vec<Version>> = HashMap::new();
    for s in samples {
        let is = |(i, v): (usize, &str)| s.headers[i].as_deref() == Some(v);
        let version = match (is(old), is(new)) {
            (true, false) => Version::Old,
            (false, true) => Version::New,
            _ => panic!("a response carried neither or both versions: {s:?}"),
        };
        per_client.entry(s.client).or_default().push(version);
    }
    let (mut olds, mut news) = (0, 0);
    for (client, seq) in &per_client {
        let switch = seq.iter().position(|v| *v == Version::New);
        let switch = switch.unwrap_or_else(|| panic!("client {client} never saw the new version"));
        assert!(
            seq[switch..].iter().all(|v| *v == Version::New),
            "client {client} went back to the old version"
        );
        olds += switch;
        news += seq.len() - switch;
    }
    assert!(
        olds > 0 && news > 0,
        "old {olds}, new {news}: no switch under load"
    );
}

/// Runs the load, calls `swap` once `MIN_REQUESTS / 3` requests are done, waits until
/// `reloaded` holds, then keeps the load going for `MIN_REQUESTS / 3` more requests (and at least
/// `MIN_REQUESTS` in all) before stopping it.
async fn under_load<S, R, RF>(
    gw: &TestGateway,
    record: &[&str],
    swap: S,
    reloaded: R,
) -> Vec<Sample>
where
    S: AsyncFnOnce(),
    R: FnMut() -> RF,
    RF: Future<Output = bool>,
{
    let load = Load::start(gw.url("/items"), CLIENTS, MAX_REQUESTS, record);
    assert!(
        load.wait_for(MIN_REQUESTS / 3, Duration::from_secs(60))
            .await,
        "load too slow: {} requests",
        load.done.load(Ordering::SeqCst)
    );
    swap().await;
    let ok = eventually(Duration::from_secs(30), reloaded).await;
    let at = load.done.load(Ordering::SeqCst);
    let target = (at + MIN_REQUESTS / 3).max(MIN_REQUESTS);
    let enough = load.wait_for(target, Duration::from_secs(60)).await;
    let samples = load.finish().await;
    assert!(ok, "the reload was not observed");
    assert!(
        enough,
        "load stalled after the reload: {} requests",
        samples.len()
    );
    samples
}

fn reload_generation(gw: &TestGateway) -> (u64, bool, String) {
    let l = gw.gateway().last_reload.lock().unwrap();
    (l.generation, l.ok, l.trigger.clone())
}

async fn plugin_sha(gw: &TestGateway) -> String {
    let status = admin_get(gw, "/admin/status").await.json();
    let p = &status["plugins"][0];
    assert!(
        p["wasm"].as_str().unwrap_or_default().ends_with("p.wasm"),
        "{status}"
    );
    p["sha256"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_replaced_under_load_is_picked_up_by_the_file_watcher() {
    let up = TestUpstream::start("echo").await;
    let gw = start_v1(&up).await;
    let sha_before = plugin_sha(&gw).await;
    let p = gw.path("p.wasm");
    // The replacement: the ctx-reader fixture, same config (it ignores it); it adds `x-subject`.
    let new_wasm = std::fs::read(fixture("ctx_reader")).unwrap();
    let samples = under_load(
        &gw,
        &["x-policy", "x-subject"],
        async || replace_atomically(&p, &new_wasm),
        || async {
            let (generation, ok, trigger) = reload_generation(&gw);
            generation >= 1 && ok && trigger == "file-watch"
        },
    )
    .await;
    check_switch(&samples, (0, "v1"), (1, "none"));
    let r = TestClient::new().get(&gw.url("/after")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-subject"), Some("none"));
    assert_eq!(r.header("x-policy"), None);
    assert_ne!(
        plugin_sha(&gw).await,
        sha_before,
        "status shows the old file"
    );
    let last = last_reload(&gw).await;
    assert_eq!(last["ok"], true, "{last}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_and_config_replaced_together_then_admin_reload() {
    let up = TestUpstream::start("echo").await;
    let gw = start_v1(&up).await;
    let p = gw.path("p.wasm");
    let cfg_path = gw.config_path.clone();
    // The replacement: the first-party headers plugin in p.wasm, with a config of its own shape
    // (the add-header config would fail its init), written right after the .wasm.
    let new_wasm = std::fs::read(plugin("headers")).unwrap();
    let new_cfg = config(
        &up.url(),
        r#"{ response = { set = { "x-policy-v2" = "v2" } } }"#,
    );
    let admin_answer = std::sync::Mutex::new(None);
    let samples = under_load(
        &gw,
        &["x-policy", "x-policy-v2"],
        async || {
            replace_atomically(&p, &new_wasm);
            replace_atomically(&cfg_path, new_cfg.as_bytes());
            let r = admin_post(&gw, "/admin/reload").await;
            // Right after a successful admin reload the new version must be serving.
            let next = TestClient::new().get(&gw.url("/check")).await;
            *admin_answer.lock().unwrap() = Some((r, next));
        },
        || async { true },
    )
    .await;
    let (r, next) = admin_answer.lock().unwrap().take().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["ok"], true);
    assert_eq!(next.header("x-policy-v2"), Some("v2"));
    assert_eq!(next.header("x-policy"), None);
    check_switch(&samples, (0, "v1"), (1, "v2"));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reloads_are_rejected_while_the_old_version_serves() {
    let up = TestUpstream::start("echo").await;
    let gw = start_v1(&up).await;
    let p = gw.path("p.wasm");
    // Light background load: nothing below may make a request fail.
    let load = Load::start(gw.url("/bg"), 4, MAX_REQUESTS, &["x-policy", "x-subject"]);
    let c = TestClient::new();

    // 1. A corrupt .wasm (random bytes) through the file watcher, the admin API and the API.
    let sha_v1 = plugin_sha(&gw).await;
    replace_atomically(&p, &random_bytes(4096));
    let watched = eventually(Duration::from_secs(20), || async {
        let l = last_reload(&gw).await;
        l["ok"] == false && l["trigger"] == "file-watch"
    })
    .await;
    let l = last_reload(&gw).await;
    assert!(watched, "corrupt wasm not rejected by the watcher: {l}");
    let err = l["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("p.wasm") && err.contains("not a valid WebAssembly component"),
        "{err}"
    );
    let r = admin_post(&gw, "/admin/reload").await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["ok"], false);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap_or_default()
            .contains("p.wasm")
    );
    let e = gw.gateway().reload("test").await.unwrap_err();
    assert!(e.contains("p.wasm"), "{e}");
    let r = c.get(&gw.url("/x")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-policy"),
        Some("v1"),
        "the old version stopped serving"
    );
    assert_eq!(plugin_sha(&gw).await, sha_v1);

    // 2. A good .wasm again, loaded by a direct `Gateway::reload` (the watcher may also run).
    replace_atomically(&p, &std::fs::read(fixture("ctx_reader")).unwrap());
    gw.gateway().reload("test").await.unwrap();
    let r = c.get(&gw.url("/x")).await;
    assert_eq!(r.header("x-subject"), Some("none"));
    assert_eq!(r.header("x-policy"), None);

    // 3. A config whose plugin `init` fails (jwt-auth without `key_set`).
    std::fs::copy(plugin("jwt_auth"), gw.path("jwt.wasm")).unwrap();
    let broken = config(&up.url(), "{}").replace("p.wasm", "jwt.wasm");
    replace_atomically(&gw.config_path, broken.as_bytes());
    let watched = eventually(Duration::from_secs(20), || async {
        let l = last_reload(&gw).await;
        l["ok"] == false && l["error"].as_str().unwrap_or_default().contains("init")
    })
    .await;
    let l = last_reload(&gw).await;
    assert!(watched, "init failure not rejected by the watcher: {l}");
    let err = l["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("jwt.wasm") && err.contains("key_set"),
        "the error should name the file and the problem: {err}"
    );
    let r = admin_post(&gw, "/admin/reload").await;
    assert_eq!(r.status, 422, "{}", r.text());
    let e = gw.gateway().reload("test").await.unwrap_err();
    assert!(e.contains("init rejected the config"), "{e}");
    let r = c.get(&gw.url("/x")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-subject"),
        Some("none"),
        "the old version stopped serving"
    );

    let samples = load.finish().await;
    let failed = samples
        .iter()
        .filter(|s| s.status != 200 || s.error.is_some())
        .count();
    assert!(!samples.is_empty());
    let first_failed = samples
        .iter()
        .find(|s| s.status != 200 || s.error.is_some());
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed, e.g. {first_failed:?}",
        samples.len()
    );
    let health = c.get(&format!("http://{}/healthz", gw.admin())).await;
    assert_eq!(health.status, 200);
    gw.shutdown().await;
}

/// Three gateways, each swapping its plugin back and forth four times under load, all in this
/// process: the contention a busy host sees. With the default 50 ms limit no trivial call
/// (add-header, ctx-reader: microseconds of CPU) may fail with `deadline` when its thread is
/// stalled (scheduler, page faults): the limit counts guest CPU time, not wall time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_cpu_limit_does_not_fail_requests_under_contention() {
    const SWAPS: usize = 4;
    const PER_GATEWAY: usize = 6_000;
    let up = TestUpstream::start("echo").await;
    let versions = [
        std::fs::read(fixture("ctx_reader")).unwrap(),
        std::fs::read(fixture("add_header")).unwrap(),
    ];
    let one = async |_: usize| {
        let gw = start_v1_with(&up, None).await;
        let load = Load::start(gw.url("/storm"), 8, PER_GATEWAY, &[]);
        for k in 0..SWAPS {
            assert!(
                load.wait_for((k + 1) * PER_GATEWAY / (SWAPS + 1), Duration::from_secs(60))
                    .await
            );
            replace_atomically(&gw.path("p.wasm"), &versions[k % 2]);
            let seen = eventually(Duration::from_secs(20), || async {
                reload_generation(&gw).0 > k as u64
            })
            .await;
            assert!(seen, "reload {k} not observed");
        }
        load.wait_for(PER_GATEWAY, Duration::from_secs(60)).await;
        let samples = load.finish().await;
        gw.shutdown().await;
        samples
    };
    // CPU hogs for the duration, as on a busy host (bounded by the flag and a 2-minute cap).
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            let busy = busy.clone();
            std::thread::spawn(move || {
                let end = std::time::Instant::now() + Duration::from_secs(120);
                let mut x = 0u64;
                while busy.load(Ordering::Relaxed) && std::time::Instant::now() < end {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            })
        })
        .collect();
    let all: Vec<Sample> = futures::future::join_all((0..3).map(one))
        .await
        .into_iter()
        .flatten()
        .collect();
    busy.store(false, Ordering::Relaxed);
    for h in hogs {
        h.join().unwrap();
    }
    let failed: Vec<&Sample> = all.iter().filter(|s| s.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failed.len(),
        all.len(),
        failed.first()
    );
}

/// The status of `GET /x` with `token` as a bearer.
async fn bearer_status(gw: &TestGateway, token: &str) -> u16 {
    TestClient::new()
        .get_with(
            &gw.url("/x"),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
        .status
}

/// `[key_sets]` follow reloads: a rotated HMAC secret takes over without a restart, and a
/// jwt-auth plugin naming a key set the config lacks fails its `init`, so that reload (and
/// `weir validate`) is refused while the previous keys keep verifying.
#[tokio::test]
async fn key_sets_follow_reloads_and_an_unknown_key_set_is_refused() {
    use weir_testkit::extra_c::{hs256, now};
    const OLD: &str = "key-set-reload-old-secret-0123456789abcdef";
    const NEW: &str = "key-set-reload-new-secret-0123456789abcdef";
    let up = TestUpstream::start("echo").await;
    let cfg = |secret: &str, key_set: &str| {
        format!(
            "{pre}\n[key_sets.main]\nhmac_secret = \"{secret}\"\n\n[[routes]]\nname = \"r\"\n\
             match = {{ path_prefix = \"/\" }}\nupstream = \"echo\"\n\
             plugins = [{{ name = \"jwt-auth\", wasm = {wasm:?}, config = {{ key_set = \"{key_set}\" }} }}]\n",
            pre = preamble(&up.url()),
            wasm = plugin("jwt_auth").display().to_string(),
        )
    };
    let gw = TestGateway::start(&cfg(OLD, "main")).await;
    let claims = serde_json::json!({ "sub": "alice", "exp": now() + 600 });
    let (old_token, new_token) = (
        hs256(OLD.as_bytes(), &claims),
        hs256(NEW.as_bytes(), &claims),
    );
    assert_eq!(bearer_status(&gw, &old_token).await, 200);
    assert_eq!(bearer_status(&gw, &new_token).await, 401);

    // A typo in the plugin's key set: refused, the old secret still verifies.
    replace_atomically(&gw.config_path, cfg(NEW, "mian").as_bytes());
    let r = admin_post(&gw, "/admin/reload").await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("no [key_sets.mian]"), "{}", r.text());
    assert_eq!(bearer_status(&gw, &old_token).await, 200);
    assert_eq!(bearer_status(&gw, &new_token).await, 401);
    assert_eq!(
        weir::cli::validate(&gw.config_path).await,
        std::process::ExitCode::FAILURE
    );

    // The rotated secret, without a restart.
    replace_atomically(&gw.config_path, cfg(NEW, "main").as_bytes());
    let r = admin_post(&gw, "/admin/reload").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(bearer_status(&gw, &new_token).await, 200);
    assert_eq!(bearer_status(&gw, &old_token).await, 401);
    gw.shutdown().await;
}

/// A key file rotated in place (same path, new key) is read again by the next reload, with
/// the config file unchanged.
#[tokio::test]
async fn a_key_file_rotated_in_place_is_read_again_on_reload() {
    use weir_testkit::extra_c::{now, rs256, rsa_keypair};
    let up = TestUpstream::start("echo").await;
    let keys = tempfile::tempdir().unwrap();
    let (old_dir, new_dir) = (keys.path().join("old"), keys.path().join("new"));
    std::fs::create_dir_all(&old_dir).unwrap();
    std::fs::create_dir_all(&new_dir).unwrap();
    let (old_private, old_public) = rsa_keypair(&old_dir);
    let (new_private, new_public) = rsa_keypair(&new_dir);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("signer.pub.pem"), &old_public).unwrap();
    let toml = format!(
        "{pre}\n[key_sets.main]\npem = [\"signer.pub.pem\"]\n\n[[routes]]\nname = \"r\"\n\
         match = {{ path_prefix = \"/\" }}\nupstream = \"echo\"\n\
         plugins = [{{ name = \"jwt-auth\", wasm = {wasm:?}, config = {{ key_set = \"main\", algorithms = [\"RS256\"] }} }}]\n",
        pre = preamble(&up.url()),
        wasm = plugin("jwt_auth").display().to_string(),
    );
    let gw = TestGateway::start_in(dir, &toml).await.unwrap();
    let claims = serde_json::json!({ "sub": "alice", "exp": now() + 600 });
    let (old_token, new_token) = (rs256(&old_private, &claims), rs256(&new_private, &claims));
    assert_eq!(bearer_status(&gw, &old_token).await, 200);
    assert_eq!(bearer_status(&gw, &new_token).await, 401);
    replace_atomically(&gw.path("signer.pub.pem"), &new_public);
    let r = admin_post(&gw, "/admin/reload").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(bearer_status(&gw, &new_token).await, 200);
    assert_eq!(bearer_status(&gw, &old_token).await, 401);
    gw.shutdown().await;
}
