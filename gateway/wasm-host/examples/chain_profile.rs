//! The load benchmark's policy chain (jwt-auth HS256 + rate-limit + headers, the configs of
//! `benches/load/weir-chain.toml`) called in a loop through the host API, for an instruction
//! count per request that a noisy machine cannot disturb:
//!
//! ```sh
//! (cd plugins && cargo build --release --target wasm32-wasip2)
//! cargo build --release -p weir-wasm-host --example chain_profile
//! target/release/examples/chain_profile 1000        # natively: fills the compile cache
//! valgrind --tool=callgrind --toggle-collect='*chain_profile::run_chain*' \
//!     target/release/examples/chain_profile 2000
//! ```
//!
//! `CHAIN_PROFILE_EVICT_KIB=N` writes over N KiB before each request (outside the printed time,
//! as are the two clock reads per request that time it), as the gateway's network path does
//! between two requests. Leave it unset under callgrind: the eviction runs inside `run_chain`.
//!
//! Divide the collected instructions by the count. The pool is sized for valgrind (it cannot
//! reserve the gateway's default slots) and the epoch tick is an hour; the per-call path is the
//! gateway's.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use weir_wasm_host::*;

/// The gateway's allocator (`gateway/src/main.rs`), so host allocations cost what they do there.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const SECRET: &str = "weir-bench-hs256-secret-0123456789abcdef";

fn token() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({ "sub": "bench", "iat": now, "exp": now + 86_400 });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The request headers wrk sends to the chain route, in its order.
fn wire_headers(token: &str) -> Vec<(String, String)> {
    vec![
        ("host".into(), "127.0.0.1:18080".into()),
        ("authorization".into(), format!("Bearer {token}")),
    ]
}

/// What the gateway builds for each plugin: the request with only the headers it reads.
fn request(plugin: &LoadedPlugin, headers: &[(String, String)]) -> PolicyRequest {
    let visible = headers
        .iter()
        .filter(|(k, _)| {
            plugin
                .info
                .request_headers
                .as_ref()
                .is_none_or(|names| names.iter().any(|n| n == k))
        })
        .cloned()
        .collect();
    PolicyRequest {
        method: "GET".into(),
        path: "/".into(),
        query: None,
        headers: visible,
        body: None,
        client_ip: "127.0.0.1".into(),
        route: "hello".into(),
        request_id: "0123456789abcdef0123456789abcdef".into(),
        scheme: "http".into(),
        host: "127.0.0.1".into(),
    }
}

/// One request through the chain, `n` times; returns the requests that passed and the time
/// spent in the chain. Before each request, `evict` (if not empty) is written over, one byte
/// per cache line: in the gateway the kernel's network path and the proxy's own work run
/// between two requests and push the plugins' code and memory out of the caches.
async fn chain_requests(
    chain: &[Arc<LoadedPlugin>],
    headers: &[(String, String)],
    n: u64,
    evict: &mut [u8],
) -> (u64, std::time::Duration) {
    let mut passed = 0;
    let mut busy = std::time::Duration::ZERO;
    for i in 0..n {
        for line in evict.chunks_mut(64) {
            line[0] = line[0].wrapping_add(i as u8);
        }
        let t = std::time::Instant::now();
        let mut cx = RequestContext::new();
        let mut sessions: Vec<PluginSession> = chain.iter().map(|p| p.session()).collect();
        let mut ok = true;
        for (p, s) in chain.iter().zip(sessions.iter_mut()) {
            let action = s.on_request(&mut cx, request(p, headers)).await;
            ok &= matches!(action, Ok(Action::Continue(_)));
        }
        drop(sessions);
        busy += t.elapsed();
        passed += u64::from(ok);
    }
    (passed, busy)
}

/// [`chain_requests`] to completion; out of line so callgrind can collect it alone.
#[inline(never)]
fn run_chain(
    rt: &tokio::runtime::Runtime,
    chain: &[Arc<LoadedPlugin>],
    headers: &[(String, String)],
    n: u64,
    evict: &mut [u8],
) -> (u64, std::time::Duration) {
    rt.block_on(chain_requests(chain, headers, n, evict))
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("count"))
        .unwrap_or(2000);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    // `CHAIN_PROFILE_PLUGINS`: another build of the plugins, to compare two in one session.
    let dir = std::env::var_os("CHAIN_PROFILE_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("plugins/target/wasm32-wasip2/release"));
    let mut key_sets = HashMap::new();
    key_sets.insert(
        "bench".to_string(),
        KeySetSpec {
            hmac_secret: Some(SECRET.into()),
            ..KeySetSpec::default()
        },
    );
    let runtime = PolicyRuntime::new(RuntimeConfig {
        cache_dir: Some(root.join("target/chain-profile-cache")),
        key_sets,
        max_instances: 8,
        max_memory_limit: 64 << 20,
        // No epoch callback during the run: under valgrind its clock read (rustix's vDSO
        // lookup) faults, and natively a call never lasts a tick anyway.
        epoch_tick: std::time::Duration::from_secs(3600),
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let specs = [
        (
            "jwt-auth",
            "jwt_auth",
            r#"{"key_set":"bench","algorithms":["HS256"]}"#,
        ),
        (
            "rate-limit",
            "rate_limit",
            r#"{"key":"ip","limits":[{"requests":100000000,"window":"1s"}]}"#,
        ),
        (
            "headers",
            "headers",
            r#"{"request":{"set":{"x-bench":"1"}}}"#,
        ),
    ];
    let chain: Vec<Arc<LoadedPlugin>> = specs
        .iter()
        .map(|(id, file, cfg)| {
            let mut spec = PluginSpec::new(*id, dir.join(format!("{file}.wasm")));
            spec.config_json = (*cfg).into();
            rt.block_on(runtime.load(&spec)).expect("load plugin")
        })
        .collect();
    let headers = wire_headers(&token());
    // Warm-up outside `run_chain`: one-time work (clock calibration, first instances) is not counted.
    rt.block_on(chain_requests(&chain, &headers, 50, &mut []));
    let evict_kib: usize = std::env::var("CHAIN_PROFILE_EVICT_KIB")
        .map(|v| v.parse().expect("CHAIN_PROFILE_EVICT_KIB: a number of KiB"))
        .unwrap_or(0);
    let mut evict = vec![0u8; evict_kib * 1024];
    let (passed, busy) = run_chain(&rt, &chain, &headers, n, &mut evict);
    let per = busy / u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    assert_eq!(passed, n, "every request passes the chain");
    println!("{n} requests through the chain, {per:?} each (caches evicted: {evict_kib} KiB)");
    // Where the compiled plugins are mapped, to name the guest functions of a callgrind profile
    // (valgrind does not read the symbols of the `.cwasm` files: add a symbol's value and the
    // `.text` offset from `readelf -S` to the mapping's start).
    if std::env::var_os("CHAIN_PROFILE_MAPS").is_some() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        for line in maps.lines().filter(|l| l.contains(".cwasm")) {
            println!("{line}");
        }
    }
}
