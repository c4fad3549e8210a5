//! Engine, loading, isolation modes and limits, with real components from `plugins/fixtures`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use weir_wasm_host::*;

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weir-wasm-host-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn call(
    plugin: &std::sync::Arc<LoadedPlugin>,
    headers: &[(&str, &str)],
) -> Result<Action, PluginError> {
    plugin
        .session()
        .on_request(&mut RequestContext::new(), request("/", headers))
        .await
}

#[tokio::test]
async fn noop_continues_in_both_isolation_modes() {
    let rt = runtime();
    for isolation in [Isolation::Request, Isolation::Pooled] {
        let plugin = rt.load(&spec("noop", "noop", isolation)).await.unwrap();
        assert_eq!(plugin.info, PluginInfo::default());
        assert_eq!(plugin.sha256.len(), 64);
        let mut cx = RequestContext::new();
        let mut s = plugin.session();
        let action = s.on_request(&mut cx, request("/", &[])).await.unwrap();
        assert_eq!(action, Action::Continue(RequestEdits::default()));
        let edits = s
            .on_response(
                &mut cx,
                ResponseHead {
                    status: 200,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(edits, ResponseEdits::default());
        s.on_log(&mut cx, LogEntry::default()).await.unwrap();
    }
}

#[tokio::test]
async fn the_epoch_thread_starts_with_the_first_plugin() {
    let rt = runtime();
    assert!(
        !rt.epoch_ticking(),
        "a runtime without plugins keeps a ticking thread"
    );
    rt.load(&spec("noop", "noop", Isolation::Pooled))
        .await
        .unwrap();
    assert!(rt.epoch_ticking());
}

#[tokio::test]
async fn add_header_uses_its_config_on_request_and_response() {
    let rt = runtime();
    let mut s = spec("add", "add-header", Isolation::Request);
    s.config_json = r#"{"header": "x-version", "value": "v1"}"#.into();
    let plugin = rt.load(&s).await.unwrap();
    let mut session = plugin.session();
    let mut cx = RequestContext::new();
    let action = session
        .on_request(&mut cx, request("/", &[]))
        .await
        .unwrap();
    assert_eq!(set_header(&action, "x-version").as_deref(), Some("v1"));
    let edits = session
        .on_response(
            &mut cx,
            ResponseHead {
                status: 200,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        edits.set_headers,
        vec![("x-version".to_string(), "v1".to_string())]
    );
}

#[tokio::test]
async fn init_error_surfaces_as_load_error_with_the_plugins_message() {
    let rt = runtime();
    let mut s = spec("add", "add-header", Isolation::Pooled);
    s.config_json = "{}".into();
    let err = rt.load(&s).await.unwrap_err();
    assert!(
        matches!(err.kind, LoadErrorKind::Init(ref m) if m.contains("`value` (string) is required")),
        "{err}"
    );
    let shown = err.to_string();
    assert!(
        shown.contains("fixture_add_header.wasm") && shown.contains("plugin `add`"),
        "{shown}"
    );
}

#[tokio::test]
async fn bad_files_are_load_errors_naming_the_file() {
    let rt = runtime();
    let dir = temp_dir("bad");

    let missing = dir.join("missing.wasm");
    let err = rt.load(&PluginSpec::new("m", &missing)).await.unwrap_err();
    assert!(matches!(err.kind, LoadErrorKind::Read(_)));
    assert!(err.to_string().contains("missing.wasm"));

    let garbage = dir.join("garbage.wasm");
    std::fs::write(&garbage, b"definitely not wasm").unwrap();
    let err = rt.load(&PluginSpec::new("g", &garbage)).await.unwrap_err();
    assert!(matches!(err.kind, LoadErrorKind::Compile(_)), "{err}");
    assert!(err.to_string().contains("garbage.wasm"));

    // A valid but empty component: compiles, exports nothing.
    let empty = dir.join("empty.wasm");
    std::fs::write(&empty, b"\0asm\x0d\0\x01\0").unwrap();
    let err = rt.load(&PluginSpec::new("e", &empty)).await.unwrap_err();
    assert!(matches!(err.kind, LoadErrorKind::NotAPolicy(_)), "{err}");
    assert!(err.to_string().contains("empty.wasm"));
}

#[tokio::test]
async fn ungranted_http_import_is_refused_at_load() {
    let rt = runtime();
    let err = rt
        .load(&spec("web", "uses-http", Isolation::Pooled))
        .await
        .unwrap_err();
    match &err.kind {
        LoadErrorKind::ImportNotGranted { import, hint } => {
            assert!(import.starts_with("weir:policy/http-client"), "{import}");
            assert!(hint.contains("http_allow"), "{hint}");
        }
        other => panic!("expected ImportNotGranted, got {other:?}"),
    }
    // Granting it makes the same component load; a bad allow entry is a spec error.
    let mut s = spec("web", "uses-http", Isolation::Pooled);
    s.http_allow = vec!["http://127.0.0.1:9".into()];
    rt.load(&s).await.unwrap();
    s.http_allow = vec!["not a url".into()];
    assert!(matches!(
        rt.load(&s).await.unwrap_err().kind,
        LoadErrorKind::InvalidSpec(_)
    ));
    // An interface the gateway does not provide at all is refused, naming it.
    let err = rt
        .load(&spec("foreign", "foreign-import", Isolation::Pooled))
        .await
        .unwrap_err();
    match &err.kind {
        LoadErrorKind::ImportNotGranted { import, hint } => {
            assert_eq!(import, "test:foreign/secret");
            assert!(hint.contains("weir:policy"), "{hint}");
        }
        other => panic!("expected ImportNotGranted, got {other:?}"),
    }
    assert!(err.to_string().contains("fixture_foreign_import.wasm"));
    // Plugins that do not import http-client need no grant.
    rt.load(&spec("noop", "noop", Isolation::Pooled))
        .await
        .unwrap();
}

#[tokio::test]
async fn deadline_stops_an_infinite_loop_and_the_runtime_keeps_working() {
    let rt = runtime();
    for isolation in [Isolation::Request, Isolation::Pooled] {
        let mut s = spec("spin", "loop-forever", isolation);
        s.cpu_limit = Duration::from_millis(30);
        let plugin = rt.load(&s).await.unwrap();
        let started = std::time::Instant::now();
        let err = call(&plugin, &[]).await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(err.kind, PluginErrorKind::Deadline, "{err}");
        // Stopped by its CPU use (30 ms + a tick or two), long before the 1 s wall backstop.
        assert!(err.message.contains("CPU limit of 30ms"), "{err}");
        assert!(took < Duration::from_millis(900), "{took:?}");
        assert_eq!(
            plugin.idle_instances(),
            0,
            "the interrupted instance is discarded"
        );
        // The plugin itself can be called again (fresh instance) and fails the same way.
        assert_eq!(
            call(&plugin, &[]).await.unwrap_err().kind,
            PluginErrorKind::Deadline
        );
    }
    let noop = rt
        .load(&spec("noop", "noop", Isolation::Pooled))
        .await
        .unwrap();
    call(&noop, &[]).await.unwrap();
}

#[tokio::test]
async fn memory_bomb_hits_the_cap_and_the_runtime_keeps_working() {
    let rt = runtime();
    // A generous CPU limit: touching 32 MiB on a busy 2-core machine must not hit the deadline.
    let bomb = |id: &str, isolation| {
        let mut s = spec(id, "mem-bomb", isolation);
        s.cpu_limit = Duration::from_secs(5);
        s
    };
    for isolation in [Isolation::Request, Isolation::Pooled] {
        let plugin = rt.load(&bomb("bomb", isolation)).await.unwrap();
        let err = call(&plugin, &[]).await.unwrap_err();
        assert_eq!(err.kind, PluginErrorKind::MemoryLimit, "{err}");
        assert_eq!(
            call(&plugin, &[]).await.unwrap_err().kind,
            PluginErrorKind::MemoryLimit
        );
    }
    // With a higher cap the same guest succeeds.
    let mut s = bomb("bomb-big", Isolation::Request);
    s.memory_limit = 128 << 20;
    let plugin = rt.load(&s).await.unwrap();
    let action = call(&plugin, &[]).await.unwrap();
    assert_eq!(
        set_header(&action, "x-allocated").as_deref(),
        Some("67108864")
    );
}

#[tokio::test]
async fn guest_panic_is_a_trap_with_its_message() {
    let rt = runtime();
    let plugin = rt
        .load(&spec("trap", "trap", Isolation::Request))
        .await
        .unwrap();
    let err = call(&plugin, &[]).await.unwrap_err();
    assert_eq!(err.kind, PluginErrorKind::Trap);
    assert!(err.message.contains("boom on /"), "{}", err.message);
    assert_eq!(err.phase, "on_request");
}

#[tokio::test]
async fn pooled_instances_are_reused_and_recycled_after_a_trap() {
    let rt = runtime();
    let mut s = spec("trap", "trap", Isolation::Pooled);
    s.config_json = r#"{"only_when_asked":true}"#.into();
    let plugin = rt.load(&s).await.unwrap();
    assert_eq!(
        plugin.idle_instances(),
        1,
        "the instance that ran init is kept warm"
    );
    let calls = |a: &Action| set_header(a, "x-calls").unwrap();
    assert_eq!(calls(&call(&plugin, &[]).await.unwrap()), "1");
    assert_eq!(
        calls(&call(&plugin, &[]).await.unwrap()),
        "2",
        "same warm instance"
    );
    assert_eq!(
        call(&plugin, &[("x-trap", "1")]).await.unwrap_err().kind,
        PluginErrorKind::Trap
    );
    assert_eq!(plugin.idle_instances(), 0, "the trapped instance is gone");
    assert_eq!(
        calls(&call(&plugin, &[]).await.unwrap()),
        "1",
        "a fresh instance replaced it"
    );
    assert_eq!(plugin.idle_instances(), 1);
}

#[tokio::test]
async fn pooled_instances_are_recycled_after_max_uses() {
    let rt = runtime();
    let mut s = spec("trap", "trap", Isolation::Pooled);
    s.config_json = r#"{"only_when_asked":true}"#.into();
    s.max_uses = 2;
    let plugin = rt.load(&s).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(set_header(&call(&plugin, &[]).await.unwrap(), "x-calls").unwrap());
    }
    // The load-time instance already served `init` (not counted as a use).
    assert_eq!(seen, ["1", "2", "1", "2", "1"]);
}

#[tokio::test]
async fn request_isolation_gives_each_request_a_fresh_instance_shared_by_its_phases() {
    let rt = runtime();
    let mut s = spec("trap", "trap", Isolation::Request);
    s.config_json = r#"{"only_when_asked":true}"#.into();
    let plugin = rt.load(&s).await.unwrap();
    assert_eq!(plugin.idle_instances(), 0);
    for _ in 0..3 {
        let mut session = plugin.session();
        let mut cx = RequestContext::new();
        let a = session
            .on_request(&mut cx, request("/", &[]))
            .await
            .unwrap();
        assert_eq!(set_header(&a, "x-calls").as_deref(), Some("1"));
        let b = session
            .on_request(&mut cx, request("/", &[]))
            .await
            .unwrap();
        assert_eq!(
            set_header(&b, "x-calls").as_deref(),
            Some("2"),
            "same instance within a session"
        );
    }
}

#[tokio::test]
async fn compiled_components_are_cached_on_disk() {
    let dir = temp_dir("cache");
    let cfg = || RuntimeConfig {
        cache_dir: Some(dir.clone()),
        ..RuntimeConfig::default()
    };
    let rt = PolicyRuntime::new(cfg()).unwrap();
    let plugin = rt
        .load(&spec("noop", "noop", Isolation::Pooled))
        .await
        .unwrap();
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    let name = entry.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&plugin.sha256) && name.ends_with(".cwasm"),
        "{name}"
    );

    // A second runtime loads from the cache; a corrupted entry is recompiled and rewritten.
    let rt2 = PolicyRuntime::new(cfg()).unwrap();
    call(
        &rt2.load(&spec("noop", "noop", Isolation::Pooled))
            .await
            .unwrap(),
        &[],
    )
    .await
    .unwrap();
    std::fs::write(entry, b"corrupt").unwrap();
    let rt3 = PolicyRuntime::new(cfg()).unwrap();
    call(
        &rt3.load(&spec("noop", "noop", Isolation::Request))
            .await
            .unwrap(),
        &[],
    )
    .await
    .unwrap();
    assert!(
        std::fs::metadata(entry).unwrap().len() > 1000,
        "cache entry rewritten"
    );
}

#[tokio::test]
async fn context_is_shared_by_the_plugins_of_one_request_only() {
    let rt = runtime();
    let writer = rt
        .load(&spec("writer", "ctx-writer", Isolation::Pooled))
        .await
        .unwrap();
    let reader = rt
        .load(&spec("reader", "ctx-reader", Isolation::Request))
        .await
        .unwrap();

    let mut cx = RequestContext::new();
    let (mut w, mut r) = (writer.session(), reader.session());
    w.on_request(&mut cx, request("/", &[("x-user", "alice")]))
        .await
        .unwrap();
    let a = r.on_request(&mut cx, request("/", &[])).await.unwrap();
    assert_eq!(set_header(&a, "x-subject").as_deref(), Some("alice"));
    assert_eq!(
        set_header(&a, "x-entries").as_deref(),
        Some("subject=alice")
    );
    let head = || ResponseHead {
        status: 200,
        ..Default::default()
    };
    w.on_response(&mut cx, head()).await.unwrap();
    let e = r.on_response(&mut cx, head()).await.unwrap();
    assert!(
        e.set_headers
            .contains(&("x-entries".into(), "subject=alice;phase=response".into())),
        "{e:?}"
    );
    assert_eq!(
        cx.get("subject"),
        Some("alice"),
        "the gateway sees the bag too"
    );

    // The next request starts empty, even on the writer's warm instance.
    let mut cx2 = RequestContext::new();
    let a = reader
        .session()
        .on_request(&mut cx2, request("/", &[]))
        .await
        .unwrap();
    assert_eq!(set_header(&a, "x-subject").as_deref(), Some("none"));
}

#[tokio::test]
async fn kv_counter_is_shared_by_instances_and_namespaced_per_plugin() {
    let rt = runtime();
    let pooled = rt
        .load(&spec("counter", "kv-counter", Isolation::Pooled))
        .await
        .unwrap();
    let fresh = rt
        .load(&spec("counter", "kv-counter", Isolation::Request))
        .await
        .unwrap();
    let other = rt
        .load(&spec("other-counter", "kv-counter", Isolation::Pooled))
        .await
        .unwrap();
    let count = |a: Action| set_header(&a, "x-count").unwrap();
    assert_eq!(count(call(&pooled, &[]).await.unwrap()), "1");
    assert_eq!(
        count(call(&fresh, &[]).await.unwrap()),
        "2",
        "same plugin id, same namespace"
    );
    assert_eq!(count(call(&pooled, &[]).await.unwrap()), "3");
    assert_eq!(
        count(call(&other, &[]).await.unwrap()),
        "1",
        "another plugin id has its own keys"
    );
}

#[tokio::test]
async fn metrics_count_calls_and_failures_per_plugin() {
    let rt = runtime();
    // The gateway's registry carries the `weir` prefix; the runtime's names come without it.
    let mut registry = prometheus_client::registry::Registry::with_prefix("weir");
    rt.register_metrics(&mut registry);
    let noop = rt
        .load(&spec("metered", "noop", Isolation::Pooled))
        .await
        .unwrap();
    call(&noop, &[]).await.unwrap();
    call(&noop, &[]).await.unwrap();
    let trap = rt
        .load(&spec("trapper", "trap", Isolation::Pooled))
        .await
        .unwrap();
    call(&trap, &[]).await.unwrap_err();
    let probe = rt
        .load(&spec("probe", "cap-probe", Isolation::Pooled))
        .await
        .unwrap();
    probe
        .session()
        .on_request(&mut RequestContext::new(), request("/metrics", &[]))
        .await
        .unwrap();

    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
    for needle in [
        r#"weir_plugin_calls_total{plugin="metered",phase="on_request"} 2"#,
        r#"weir_plugin_calls_total{plugin="metered",phase="init"} 1"#,
        r#"weir_plugin_call_duration_seconds_count{plugin="metered",phase="on_request"} 2"#,
        r#"weir_plugin_failures_total{plugin="trapper",phase="on_request",kind="trap"} 1"#,
        r#"weir_plugin_custom_probe_hits_total{plugin="probe",route="r1"} 2"#,
        r#"weir_plugin_custom_probe_size_count{plugin="probe"} 1"#,
    ] {
        assert!(out.contains(needle), "missing {needle} in\n{out}");
    }
}
