//! What one policy costs per request in each language and isolation mode: the `weir plugin new`
//! template (same logic in Rust, JavaScript and Python: check a header, set a header), built
//! with `weir plugin build`'s code and called like the gateway does (session + `on_request` +
//! drop).
//!
//! ```sh
//! RUST_LIB_BACKTRACE=0 cargo bench -p weir-suite --bench policy_languages
//! ```
//!
//! The projects are generated once into `target/policy-languages-bench/` (delete it to pick up
//! template changes); JS and Python install their pinned tools there on the first run. Compiled
//! components are cached in `.weir-cache/`. A language whose tool (node, python3) is missing is
//! skipped with a message.

#![allow(clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use std::path::{Path, PathBuf};
use std::time::Duration;
use weir::plugin_cli::{Lang, build, new_project};
use weir_wasm_host::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn have(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Generates (once) and builds the template in `lang`; `None` when its toolchain is missing.
fn component(lang: Lang, name: &str) -> Option<PathBuf> {
    let tool = match lang {
        Lang::Rust => "cargo",
        Lang::Js => "npm",
        Lang::Python => "python3",
    };
    if !have(tool) {
        eprintln!("skipping {name}: `{tool}` is not installed");
        return None;
    }
    let dir = root().join("target/policy-languages-bench").join(name);
    if !dir.join("weir.toml").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        new_project(name, lang, Some(&dir), None).unwrap();
    }
    let built = build(&dir, None).unwrap_or_else(|e| panic!("building {name}: {e}"));
    Some(built.wasm)
}

fn request() -> PolicyRequest {
    PolicyRequest {
        method: "GET".into(),
        path: "/api/items".into(),
        headers: vec![
            ("host".into(), "example.com".into()),
            ("accept".into(), "*/*".into()),
            ("x-tenant".into(), "acme".into()),
        ],
        client_ip: "127.0.0.1".into(),
        route: "bench".into(),
        request_id: "req".into(),
        scheme: "http".into(),
        host: "example.com".into(),
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let runtime = PolicyRuntime::new(RuntimeConfig {
        cache_dir: Some(root().join(".weir-cache")),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let mut group = c.benchmark_group("template_on_request");
    group.measurement_time(Duration::from_secs(4));
    for (lang, name) in [
        (Lang::Rust, "bench-rust"),
        (Lang::Js, "bench-js"),
        (Lang::Python, "bench-python"),
    ] {
        let Some(wasm) = component(lang, name) else {
            continue;
        };
        for (label, isolation) in [
            ("pooled", Isolation::Pooled),
            ("request", Isolation::Request),
        ] {
            let mut spec = PluginSpec::new(name, &wasm);
            spec.config_json = r#"{"require_header":"x-tenant"}"#.into();
            spec.isolation = isolation;
            // Measures cost, not limits: a busy shared machine can deschedule a call for longer
            // than the 50 ms default, which the deadline would count.
            spec.cpu_limit = Duration::from_secs(2);
            let plugin = rt.block_on(runtime.load(&spec)).unwrap();
            let lang = name.trim_start_matches("bench-");
            group.bench_function(format!("{lang}/{label}"), |b| {
                b.to_async(&rt).iter(|| async {
                    let mut cx = RequestContext::new();
                    let mut session = plugin.session();
                    let action = session.on_request(&mut cx, request()).await.unwrap();
                    assert!(matches!(action, Action::Continue(_)));
                    drop(session);
                    action
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
