//! Cost of one no-op `on_request` per isolation mode: session + call + drop, i.e. what the
//! gateway pays per request per plugin. Uses the `noop` fixture (built like the tests do).
//!
//! `RUST_LIB_BACKTRACE=0 cargo bench -p weir-wasm-host --bench policy_call`
//! (RUST_BACKTRACE=1 adds 15–20 µs to each async call, see GUIDE §1).

use criterion::{Criterion, criterion_group, criterion_main};
use weir_wasm_host::*;

#[path = "../tests/common/mod.rs"]
mod common;

fn request() -> PolicyRequest {
    PolicyRequest {
        method: "GET".into(),
        path: "/api/items".into(),
        headers: vec![
            ("host".into(), "example.com".into()),
            ("accept".into(), "*/*".into()),
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
    let wasm = common::fixture("noop");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let runtime = common::runtime();
    let mut group = c.benchmark_group("noop_on_request");
    for (label, isolation) in [
        ("pooled", Isolation::Pooled),
        ("request", Isolation::Request),
    ] {
        let mut spec = PluginSpec::new("noop", &wasm);
        spec.isolation = isolation;
        let plugin = rt.block_on(runtime.load(&spec)).expect("load noop");
        group.bench_function(label, |b| {
            b.to_async(&rt).iter(|| async {
                let mut cx = RequestContext::new();
                let mut session = plugin.session();
                let action = session.on_request(&mut cx, request()).await.expect("call");
                drop(session);
                action
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
