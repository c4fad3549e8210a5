//! Scale-out: several REAL `weir run` processes share rate limits and kv state through a REAL
//! `redis-server` (`[cluster]`), and each limiter keeps its declared fail mode when Redis is
//! killed or frozen, then recovers without restarting Weir.
//!
//! Needs `redis-server` on PATH (`.ci/run` installs it) and `target/debug/weir` (built here with
//! `cargo build -p weir --bin weir` when missing; run `cargo build -p weir` first after changing
//! the gateway, or these tests run the old binary). The tests run one at a time: each starts
//! its own Redis and two or three gateways, and timing assertions need the CPU.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use weir_testkit::extra_b::ensure_weir_bin;
use weir_testkit::extra_e::{RedisServer, WeirProcess, burst, free_port, timed_get};
use weir_testkit::{TestClient, TestUpstream, eventually};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A request must never take longer than this, whatever Redis does.
const BOUND: Duration = Duration::from_secs(1);

fn plugin(name: &str) -> String {
    let p = Path::new(weir::bundled::PLUGIN_DIR).join(format!("{name}.wasm"));
    assert!(p.exists(), "{} was not built", p.display());
    format!("{:?}", p.display().to_string())
}

fn fixture(name: &str) -> String {
    let p = Path::new(weir::bundled::FIXTURE_DIR).join(format!("fixture_{name}.wasm"));
    assert!(p.exists(), "{} was not built", p.display());
    format!("{:?}", p.display().to_string())
}

/// A route limited per `x-client` header by the first-party rate-limit plugin; the limiter's
/// name (what `[cluster.limiters]` matches) is `id`.
fn limited_route(name: &str, requests: u32, id: &str) -> String {
    format!(
        r#"
[[routes]]
name = "{name}"
match = {{ path_prefix = "/{name}" }}
upstream = "echo"
plugins = [{{ name = "rate-limit", wasm = {rl}, config = {{ key = "header:x-client", limits = [{{ requests = {requests}, window = "1h", id = "{id}" }}] }} }}]
"#,
        rl = plugin("rate_limit")
    )
}

/// N gateways with identical routes (one config file each, differing only in ports) in one
/// directory, sharing one Redis and one upstream.
struct Cluster {
    redis: RedisServer,
    weirs: Vec<WeirProcess>,
    _upstream: TestUpstream,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(n: usize, cluster_extra: &str, routes: &str) -> Self {
        Self::start_with(n, cluster_extra, routes, true).await
    }

    /// With `redis_up = false` the gateways start while nothing listens on Redis's port
    /// (`redis.restart()` brings it up there later).
    async fn start_with(n: usize, cluster_extra: &str, routes: &str, redis_up: bool) -> Self {
        let bin = ensure_weir_bin();
        let mut redis = RedisServer::start();
        if !redis_up {
            redis.kill();
        }
        let upstream = TestUpstream::start("echo").await;
        let dir = tempfile::tempdir().unwrap();
        let mut weirs = Vec::new();
        for i in 0..n {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let toml = format!(
                r#"version = 1

[admin]
listen = "{admin}"

[[listeners]]
name = "public"
listen = "{addr}"

[log]
access_log = false

[upstreams.echo]
targets = [{{ url = "{up}" }}]

[cluster]
redis = "{redis}"
timeout = "50ms"
breaker_failures = 3
breaker_cooldown = "200ms"
{cluster_extra}
{routes}"#,
                up = upstream.url(),
                redis = redis.url(),
            );
            let path = dir.path().join(format!("weir-{i}.toml"));
            std::fs::write(&path, toml).unwrap();
            weirs.push(WeirProcess::spawn(
                &bin,
                &format!("weir-{i}"),
                &path,
                addr,
                admin,
            ));
        }
        for w in &mut weirs {
            w.wait_ready(Duration::from_secs(60)).await;
        }
        Self {
            redis,
            weirs,
            _upstream: upstream,
            _dir: dir,
        }
    }

    fn bases(&self) -> Vec<String> {
        self.weirs.iter().map(|w| w.url("")).collect()
    }

    /// Waits until every gateway reports its breaker in `state`.
    async fn wait_breaker(&self, state: &str, timeout: Duration) {
        for w in &self.weirs {
            let ok = eventually(timeout, || async {
                w.backend_status().await["breaker"] == state
            })
            .await;
            assert!(
                ok,
                "{}: breaker not {state}: {}",
                w.name,
                w.backend_status().await
            );
        }
    }
}

fn fails_mode_config() -> &'static str {
    r#"on_backend_error = "local"

[cluster.limiters]
"open-w" = "open"
"closed-w" = "closed"
"#
}

fn fail_mode_routes() -> String {
    [
        limited_route("open", 5, "open-w"),
        limited_route("closed", 5, "closed-w"),
        limited_route("local", 5, "local-w"),
    ]
    .concat()
}

/// Uses up key `k` on every route through alternating gateways and checks the budget is global.
async fn exhaust_globally(c: &Cluster, client: &TestClient, k: &str) {
    for route in ["open", "closed", "local"] {
        for i in 0..5 {
            let w = &c.weirs[i % c.weirs.len()];
            let (st, _, r) = timed_get(
                client,
                &w.url(&format!("/{route}")),
                &[("x-client", k)],
                BOUND,
            )
            .await;
            let r = r.unwrap_or_else(|| panic!("{route} request {i} via {}: no answer", w.name));
            assert_eq!(st, 200, "{route} request {i} via {}: {}", w.name, r.text());
            // The budget left, as computed in Redis, counts down across instances.
            assert_eq!(
                r.header("ratelimit-remaining"),
                Some((4 - i).to_string().as_str()),
                "{route} request {i} via {}",
                w.name
            );
        }
        for w in &c.weirs {
            let (st, _, r) = timed_get(
                client,
                &w.url(&format!("/{route}")),
                &[("x-client", k)],
                BOUND,
            )
            .await;
            assert_eq!(
                st, 429,
                "{route}: the 6th request via {} must be refused (global budget)",
                w.name
            );
            // 5 per hour: one request comes back every 12 minutes.
            let retry: u64 = r.unwrap().header("retry-after").unwrap().parse().unwrap();
            assert!((710..=720).contains(&retry), "retry-after {retry}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_limit_admits_l_across_three_instances_under_concurrent_load() {
    let _serial = SERIAL.lock().await;
    const L: usize = 200;
    let c = Cluster::start(3, "", &limited_route("api", L as u32, "hour")).await;

    let b = burst(
        &c.bases(),
        "/api/x",
        &[("x-client", "shared")],
        3 * L,
        24,
        BOUND,
    )
    .await;
    eprintln!(
        "global limit {L}: {:?} in {:?}, 200s per instance {:?}, slowest {:?}",
        b.statuses, b.elapsed, b.ok_per_target, b.slowest
    );
    let admitted = b.count(200);
    // GCRA refills one request per 18 s with L per hour: the burst may earn at most one more.
    assert!(
        (L..=L + L / 100).contains(&admitted),
        "admitted {admitted}, expected {L} (±1 %): {:?}",
        b.statuses
    );
    assert_eq!(admitted + b.count(429), 3 * L, "{:?}", b.statuses);
    assert!(
        b.ok_per_target.iter().all(|n| *n > 0 && *n < L),
        "every instance admits part of one shared budget: {:?}",
        b.ok_per_target
    );
    assert!(b.slowest < BOUND, "slowest {:?}", b.slowest);

    // A different key has its own budget; the bucket lives in Redis under the documented name.
    let other = burst(&c.bases(), "/api/x", &[("x-client", "other")], 3, 3, BOUND).await;
    assert_eq!(other.count(200), 3);
    let keys = c.redis.cmd(&["KEYS", "weir:rl:*"]);
    assert!(
        keys.contains(":hour:route:api|header:x-client:shared"),
        "{keys}"
    );
    for w in &c.weirs {
        let s = w.backend_status().await;
        assert_eq!(s["rate_limit"], "redis", "{s}");
        assert_eq!(s["breaker"], "closed", "{s}");
        assert_eq!(w.metric("weir_cluster_backend_up").await, Some(1.0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_redis_killed_each_limiter_applies_its_fail_mode_then_recovers_without_restart() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(2, fails_mode_config(), &fail_mode_routes()).await;
    let client = TestClient::new();
    exhaust_globally(&c, &client, "k").await;

    c.redis.kill();
    let killed = Instant::now();
    // The first answer of each limiter after the kill already follows its fail mode.
    let (a, b) = (&c.weirs[0], &c.weirs[1]);
    for (route, expected) in [("open", 200), ("closed", 429), ("local", 200)] {
        let (st, took, r) = timed_get(
            &client,
            &a.url(&format!("/{route}")),
            &[("x-client", "k")],
            BOUND,
        )
        .await;
        assert_eq!(
            st,
            expected,
            "{route} right after the kill: {:?}",
            r.map(|r| r.text())
        );
        assert!(took < Duration::from_millis(100), "{route}: {took:?}");
    }
    let first_three = killed.elapsed();
    eprintln!("redis killed: three fail-mode answers within {first_three:?}");
    assert!(first_three < Duration::from_millis(300), "{first_three:?}");

    // open: everything admitted; closed: everything refused, with Retry-After.
    for w in [a, b] {
        let open = burst(&[w.url("")], "/open", &[("x-client", "k")], 20, 4, BOUND).await;
        assert_eq!(open.count(200), 20, "{}: {:?}", w.name, open.statuses);
        assert!(
            open.slowest < Duration::from_millis(100),
            "{:?}",
            open.slowest
        );
        let closed = burst(&[w.url("")], "/closed", &[("x-client", "k")], 20, 4, BOUND).await;
        assert_eq!(closed.count(429), 20, "{}: {:?}", w.name, closed.statuses);
        assert!(
            closed.slowest < Duration::from_millis(100),
            "{:?}",
            closed.slowest
        );
    }
    let (_, _, r) = timed_get(&client, &b.url("/closed"), &[("x-client", "k")], BOUND).await;
    assert!(r.unwrap().header("retry-after").is_some());
    // local: each process enforces the full limit on its own (a already used 1 of its 5).
    let la = burst(&[a.url("")], "/local", &[("x-client", "k")], 10, 1, BOUND).await;
    let lb = burst(&[b.url("")], "/local", &[("x-client", "k")], 10, 1, BOUND).await;
    assert_eq!((la.count(200), la.count(429)), (4, 6), "{:?}", la.statuses);
    assert_eq!((lb.count(200), lb.count(429)), (5, 5), "{:?}", lb.statuses);

    for w in [a, b] {
        let s = w.backend_status().await;
        assert_ne!(s["breaker"], "closed", "{}: {s}", w.name);
        assert_eq!(s["up"], false, "{s}");
        assert!(
            s["last_error"].as_str().unwrap_or("").contains("redis"),
            "{s}"
        );
        assert_eq!(w.metric("weir_cluster_backend_up").await, Some(0.0));
        assert!(
            w.metric("weir_cluster_limiter_fallbacks_total{mode=\"closed\"}")
                .await
                .unwrap_or(0.0)
                >= 20.0
        );
    }

    // Redis comes back (empty) on the same port: the breakers close by themselves, no traffic
    // needed, and limits are global again.
    c.redis.restart();
    let back = Instant::now();
    c.wait_breaker("closed", Duration::from_secs(5)).await;
    eprintln!(
        "redis restarted: breakers closed after {:?}",
        back.elapsed()
    );
    let (a, b) = (&c.weirs[0], &c.weirs[1]);
    for i in 0..5 {
        let w = [a, b][i % 2];
        let (st, _, _) =
            timed_get(&client, &w.url("/closed"), &[("x-client", "after")], BOUND).await;
        assert_eq!(st, 200, "request {i} via {}", w.name);
    }
    for w in [a, b] {
        let (st, _, _) =
            timed_get(&client, &w.url("/closed"), &[("x-client", "after")], BOUND).await;
        assert_eq!(st, 429, "{}: global budget of 5 used", w.name);
        assert_eq!(w.metric("weir_cluster_backend_up").await, Some(1.0));
    }
    assert!(c.redis.cmd(&["KEYS", "weir:rl:*"]).contains("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_redis_frozen_timeouts_fire_and_the_fail_mode_applies() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(2, fails_mode_config(), &fail_mode_routes()).await;
    let client = TestClient::new();
    exhaust_globally(&c, &client, "k").await;

    c.redis.freeze();
    let bases = c.bases();
    // Concurrent traffic while Redis is silent: the first calls wait out the 50 ms timeout, the
    // breaker then opens and the rest are answered at once. Nothing hangs.
    let open = burst(&bases, "/open", &[("x-client", "k")], 40, 8, BOUND).await;
    let closed = burst(&bases, "/closed", &[("x-client", "k")], 40, 8, BOUND).await;
    let local = burst(&bases, "/local", &[("x-client", "k")], 20, 4, BOUND).await;
    eprintln!(
        "redis frozen: open {:?} (slowest {:?}), closed {:?} (slowest {:?}), local {:?}",
        open.statuses, open.slowest, closed.statuses, closed.slowest, local.statuses
    );
    assert_eq!(open.count(200), 40, "{:?}", open.statuses);
    assert_eq!(closed.count(429), 40, "{:?}", closed.statuses);
    // 5 per process in local mode.
    assert_eq!(local.count(200), 10, "{:?}", local.statuses);
    for b in [&open, &closed, &local] {
        assert!(b.slowest < Duration::from_millis(500), "{:?}", b.slowest);
    }
    let mut timeouts = 0.0;
    for w in &c.weirs {
        let s = w.backend_status().await;
        assert_ne!(s["breaker"], "closed", "{}: {s}", w.name);
        assert!(
            s["last_error"].as_str().unwrap_or("").contains("timed out"),
            "{s}"
        );
        timeouts += w
            .metric("weir_cluster_backend_timeouts_total{op=\"rate_limit\"}")
            .await
            .unwrap_or(0.0);
    }
    assert!(timeouts >= 2.0, "timeouts counted: {timeouts}");

    // Thawed: the state Redis kept is used again (key `k` is still spent globally).
    c.redis.thaw();
    c.wait_breaker("closed", Duration::from_secs(5)).await;
    for w in &c.weirs {
        let (st, took, _) = timed_get(&client, &w.url("/open"), &[("x-client", "k")], BOUND).await;
        assert_eq!(st, 429, "{}: back on the shared budget", w.name);
        assert!(took < BOUND);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_kv_values_written_through_one_instance_are_read_through_another() {
    let _serial = SERIAL.lock().await;
    let routes = format!(
        r#"
[[routes]]
name = "kv"
match = {{ path_prefix = "/kv" }}
upstream = "echo"
plugins = [{{ name = "kv-counter", wasm = {kv} }}]
"#,
        kv = fixture("kv_counter")
    );
    let mut c = Cluster::start(3, "", &routes).await;
    let client = TestClient::new();
    // One counter, incremented through each instance in turn: every instance sees the others'
    // writes (the fixture forwards the new value as `x-count`).
    for i in 1..=9 {
        let w = &c.weirs[i % 3];
        let (st, _, r) = timed_get(&client, &w.url("/kv"), &[], BOUND).await;
        assert_eq!(st, 200);
        let seen = r.unwrap().json()["headers"]["x-count"].clone();
        assert_eq!(seen, i.to_string(), "request {i} via {}", w.name);
    }
    let keys = c.redis.cmd(&["KEYS", "weir:kv:*"]);
    let key = keys
        .lines()
        .find(|l| l.starts_with("weir:kv:") && l.ends_with("/hits"))
        .unwrap_or_else(|| panic!("no kv key in {keys:?}"))
        .to_string();
    assert!(c.redis.cmd(&["GET", &key]).contains("\r\n9\r\n"));

    // kv errors reach the plugin (which reports them) quickly instead of hanging the request.
    c.redis.kill();
    for w in &c.weirs {
        let (st, took, r) = timed_get(&client, &w.url("/kv"), &[], BOUND).await;
        assert_eq!(st, 200);
        let seen = r.unwrap().json()["headers"]["x-count"].clone();
        assert!(
            seen.as_str().unwrap_or("").starts_with("error: redis"),
            "{}: {seen}",
            w.name
        );
        assert!(took < Duration::from_millis(100), "{took:?}");
    }
    c.redis.restart();
    c.wait_breaker("closed", Duration::from_secs(5)).await;
    let (_, _, r) = timed_get(&client, &c.weirs[0].url("/kv"), &[], BOUND).await;
    // The restarted Redis is empty: the counter starts again.
    assert_eq!(r.unwrap().json()["headers"]["x-count"], "1");
}

#[test]
fn e_cluster_config_errors_are_reported_with_their_location() {
    let text = r#"version = 1

[cluster]
redis = "http://127.0.0.1:6379"
timeout = "0ms"
on_backend_error = "sometimes"
breaker_failures = 0
breaker_cooldown = "soon"
key_prefix = "a b"

[cluster.limiters]
"60s" = "maybe"
"#;
    let errs = weir::config::parse(text, "weir.toml", Path::new("."), None)
        .unwrap_err()
        .to_string();
    for (needle, line) in [
        ("cluster.redis", 4),
        ("cluster.timeout", 5),
        (
            "cluster.on_backend_error: unknown fail mode \"sometimes\"",
            6,
        ),
        ("cluster.breaker_failures", 7),
        ("cluster.breaker_cooldown", 8),
        ("cluster.key_prefix", 9),
        ("cluster.limiters.60s: unknown fail mode \"maybe\"", 12),
    ] {
        assert!(
            errs.lines()
                .any(|l| l.contains(needle) && l.starts_with(&format!("weir.toml:{line}:"))),
            "{needle} at line {line} not in:\n{errs}"
        );
    }

    let unknown = "version = 1\n[cluster]\nredis = \"redis://127.0.0.1\"\nfail = \"open\"\n";
    let e = weir::config::parse(unknown, "weir.toml", Path::new("."), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("weir.toml:4:") && e.contains("fail"), "{e}");

    let ok = "version = 1\n[[listeners]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\n[cluster]\nredis = \"redis://127.0.0.1:6379/2\"\n[cluster.limiters]\n\"1s\" = \"closed\"\n";
    let cfg = weir::config::parse(ok, "weir.toml", Path::new("."), None).unwrap();
    let cl = cfg.cluster.unwrap();
    assert_eq!(cl.timeout, Duration::from_millis(50));
    assert_eq!(cl.on_backend_error, weir::config::BackendFailMode::Local);
    assert_eq!(
        cl.limiters.get("1s"),
        Some(&weir::config::BackendFailMode::Closed)
    );
    assert_eq!((cl.breaker_failures, cl.key_prefix.as_str()), (5, "weir"));
}

/// `examples/cluster/`: both gateway configs validate (plugins load, Redis need not be up) and
/// differ only in their listen addresses, so the two instances enforce the same limits.
#[tokio::test]
async fn f_cluster_examples_validate_and_differ_only_in_ports() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster");
    let strip = |p: &Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("listen = ") && !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    let (a, b) = (dir.join("weir-a.toml"), dir.join("weir-b.toml"));
    assert_eq!(strip(&a), strip(&b));
    for f in [&a, &b] {
        let cfg = weir::config::load_file(f).unwrap_or_else(|e| panic!("{e}"));
        let cl = cfg.cluster.as_ref().unwrap();
        assert_eq!(
            cl.limiters.get("login-per-minute"),
            Some(&weir::config::BackendFailMode::Closed)
        );
        assert_eq!(
            weir::cli::validate(f).await,
            std::process::ExitCode::SUCCESS,
            "{}",
            f.display()
        );
    }
    let haproxy = std::fs::read_to_string(dir.join("haproxy.cfg")).unwrap();
    for backend in [
        "127.0.0.1:8081 check port 9901",
        "127.0.0.1:8082 check port 9902",
    ] {
        assert!(haproxy.contains(backend), "haproxy.cfg lacks {backend}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_gateways_start_while_redis_is_down_and_share_limits_once_it_is_up() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start_with(2, fails_mode_config(), &fail_mode_routes(), false).await;
    let bases = c.bases();
    // Serving from the start, with the fail modes.
    let open = burst(&bases, "/open", &[("x-client", "k")], 12, 2, BOUND).await;
    assert_eq!(open.count(200), 12, "{:?}", open.statuses);
    let closed = burst(&bases, "/closed", &[("x-client", "k")], 12, 2, BOUND).await;
    assert_eq!(closed.count(429), 12, "{:?}", closed.statuses);
    for b in [&open, &closed] {
        assert!(b.slowest < Duration::from_millis(100), "{:?}", b.slowest);
    }
    c.wait_breaker("open", Duration::from_secs(2)).await;

    c.redis.restart();
    c.wait_breaker("closed", Duration::from_secs(5)).await;
    let shared = burst(&bases, "/closed", &[("x-client", "k")], 12, 2, BOUND).await;
    assert_eq!(
        (shared.count(200), shared.count(429)),
        (5, 7),
        "{:?}",
        shared.statuses
    );
}
