//! `weir validate` and the example configs: every file in `examples/` validates and starts, and
//! a broken config reports each of its errors at `file:line:col`, exiting non-zero.
//!
//! Exit codes and messages are checked through the library (`weir::cli::validate`,
//! `weir::config::load_file`), which is exactly what the binary runs. The binary itself is run
//! too when cargo has built a copy at least as new as the gateway sources (it is not a
//! dependency of this package, so `cargo test -p weir-suite` does not build it).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;
use weir_testkit::extra_a::{admin_get, line_col_of};
use weir_testkit::{TestGateway, weir_bin};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Every `examples/*.toml` except the demo (which has placeholders).
fn example_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "demo.toml"))
        .collect();
    v.sort();
    v
}

/// The demo config with its placeholders filled the way `weir demo` fills them (the bundled
/// plugins are the ones the gateway's build step compiled).
fn demo_filled() -> String {
    std::fs::read_to_string(examples_dir().join("demo.toml"))
        .unwrap()
        .replace("{PORT}", "0")
        .replace("{ADMIN_PORT}", "0")
        .replace("{USERS_A}", "127.0.0.1:9")
        .replace("{USERS_B}", "127.0.0.1:9")
        .replace("{ORDERS}", "127.0.0.1:9")
        .replace("{PLUGINS}", weir::bundled::PLUGIN_DIR)
}

/// The weir binary, if cargo built one that is at least as new as every gateway source file.
fn fresh_weir_bin() -> Option<PathBuf> {
    fn newest(dir: &Path) -> SystemTime {
        let mut t = SystemTime::UNIX_EPOCH;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = if p.is_dir() {
                newest(&p)
            } else {
                p.metadata().unwrap().modified().unwrap()
            };
            t = t.max(m);
        }
        t
    }
    let bin = weir_bin();
    let built = bin.metadata().ok()?.modified().ok()?;
    let src = newest(&Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway/src"));
    if built >= src {
        Some(bin)
    } else {
        eprintln!(
            "note: {} is missing or older than gateway/src; binary checks skipped",
            bin.display()
        );
        None
    }
}

#[tokio::test]
async fn every_example_validates() {
    let files = example_files();
    let names: Vec<_> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in ["basic.toml", "tls.toml", "load-balancing.toml"] {
        assert!(
            names.iter().any(|n| n == want),
            "examples/{want} missing: {names:?}"
        );
    }
    for f in &files {
        if let Err(e) = weir::config::load_file(f) {
            panic!("{} does not validate:\n{e}", f.display());
        }
        assert_eq!(
            weir::cli::validate(f).await,
            ExitCode::SUCCESS,
            "{}",
            f.display()
        );
    }
    if let Some(bin) = fresh_weir_bin() {
        for f in &files {
            let out = std::process::Command::new(&bin)
                .args(["validate", "-c"])
                .arg(f)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "weir validate {}: {}",
                f.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains(": ok ("));
        }
    }
}

#[tokio::test]
async fn demo_validates_with_placeholders_filled() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("demo.toml");
    std::fs::write(&p, demo_filled()).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    let left: Vec<&str> = text
        .split('{')
        .skip(1)
        .filter_map(|t| t.split_once('}').map(|(name, _)| name))
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    assert!(left.is_empty(), "placeholders not filled: {left:?}");
    let cfg = weir::config::load_file(&p).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.routes.len(), text.matches("[[routes]]").count());
    assert_eq!(weir::cli::validate(&p).await, ExitCode::SUCCESS);
}

/// Each example really starts: listeners bind (TLS certificates load), the admin answers, and
/// the routes it reports are the file's. Listen addresses are moved to port 0 on loopback.
#[tokio::test]
async fn every_example_starts() {
    for f in example_files() {
        let text = std::fs::read_to_string(&f).unwrap();
        let cfg = weir::config::load_file(&f).unwrap();
        let moved = listen_on_port_zero(&text).replace(
            "\"certs/",
            &format!("\"{}/certs/", examples_dir().display()),
        );
        let gw = TestGateway::start(&moved).await;
        assert_eq!(
            admin_get(&gw, "/readyz").await.status,
            200,
            "{}",
            f.display()
        );
        let status = admin_get(&gw, "/admin/status").await.json();
        let routes: Vec<String> = cfg.routes.iter().map(|r| r.name.clone()).collect();
        assert_eq!(
            status["routes"],
            serde_json::json!(routes),
            "{}",
            f.display()
        );
        assert_eq!(
            status["upstreams"].as_object().unwrap().len(),
            cfg.upstreams.len()
        );
        gw.shutdown().await;
    }
}

/// Rewrites every `listen = "..."` line to `127.0.0.1:0`.
fn listen_on_port_zero(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.trim_start().starts_with("listen = ") {
                "listen = \"127.0.0.1:0\""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A config with ten independent mistakes (no syntax or unknown-key error, which stop parsing).
const BROKEN: &str = r#"version = 1

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[listeners.tls.certs]]
cert = "missing/server.crt"
key = "missing/server.key"

[upstreams.app]
targets = [{ url = "http://127.0.0.1:9" }]
lb = "fastest"

[[routes]]
name = "users"
match = { path_prefix = "/users" }
upstream = "app"
timeout = "10 parsecs"
plugins = [{ name = "p", wasm = "p.wasm", request_headers = ["x-ok", "bad header"] }]

[[routes]]
name = "orders"
match = { path_prefix = "/orders" }
upstream = "ordres"

[[routes]]
name = "items"
match = { path_regex = "/items/([0-9]+" }
upstream = "app"
timeout = "soon"

[[routes]]
name = "users"
match = { path_prefix = "/u2" }
upstream = "app"

[runtime]
max_instances = 20000
"#;

/// Runs `weir validate -c path` with the binary, expects exit 1 and returns its stderr.
fn validate_fails(bin: &Path, path: &Path) -> String {
    let out = std::process::Command::new(bin)
        .args(["validate", "-c"])
        .arg(path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes `text` as `broken.toml` in `dir`, next to the (empty) plugin file it names, and returns
/// its path.
fn write_broken(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("broken.toml");
    std::fs::write(&p, text).unwrap();
    std::fs::write(dir.join("p.wasm"), b"").unwrap();
    p
}

/// `(key path, text of the value it must point at, occurrence of that text, words in the message)`.
const EXPECTED: &[(&str, &str, usize, &str)] = &[
    (
        "listeners[0].tls.certs[0].cert",
        "\"missing/server.crt\"",
        0,
        "file not found",
    ),
    (
        "listeners[0].tls.certs[0].key",
        "\"missing/server.key\"",
        0,
        "file not found",
    ),
    ("upstreams.app.lb", "\"fastest\"", 0, "unknown lb"),
    ("routes[0].timeout", "\"10 parsecs\"", 0, "invalid duration"),
    (
        "routes[0].plugins[0].request_headers[1]",
        "\"bad header\"",
        0,
        "not a valid header name",
    ),
    ("routes[1].upstream", "\"ordres\"", 0, "unknown upstream"),
    (
        "routes[2].match.path_regex",
        "\"/items/([0-9]+\"",
        0,
        "invalid regex",
    ),
    // Found although the same route's regex is already wrong.
    ("routes[2].timeout", "\"soon\"", 0, "invalid duration"),
    ("routes[3].name", "\"users\"", 1, "duplicate route name"),
    ("runtime.max_instances", "20000", 0, "between 1 and 10000"),
];

/// 1-based line and column of the `n`th (0-based) occurrence of `needle` in `text`.
fn nth_line_col(text: &str, needle: &str, n: usize) -> (usize, usize) {
    let off = text.match_indices(needle).nth(n).unwrap().0;
    let before = &text[..off];
    let line = before.matches('\n').count() + 1;
    let col = off - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// Checks that `report` has one line per expected error, each with the right location.
fn assert_located(report: &str, file: &str, text: &str) {
    for (key, value, nth, words) in EXPECTED {
        let (line, col) = nth_line_col(text, value, *nth);
        let prefix = format!("{file}:{line}:{col}: {key}: ");
        let hit = report
            .lines()
            .find(|l| l.contains(&prefix))
            .unwrap_or_else(|| panic!("no error `{prefix}…` in:\n{report}"));
        assert!(hit.contains(words), "{hit:?} should say {words:?}");
    }
}

#[tokio::test]
async fn broken_config_reports_every_error_with_location() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_broken(dir.path(), BROKEN);
    let file = p.display().to_string();

    let errs = weir::config::load_file(&p).expect_err("the broken config validated");
    let report = errs.to_string();
    assert_eq!(
        errs.0.len(),
        EXPECTED.len(),
        "unexpected error count:\n{report}"
    );
    assert_located(&report, &file, BROKEN);
    assert_eq!(weir::cli::validate(&p).await, ExitCode::FAILURE);

    if let Some(bin) = fresh_weir_bin() {
        let stderr = validate_fails(&bin, &p);
        assert_located(&stderr, &file, BROKEN);
        assert!(
            stderr.contains(&format!("{file}: {} error(s)", EXPECTED.len())),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn unknown_key_is_located_and_named() {
    let text = "version = 1\n\n[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
                [upstreams.app]\ntagets = [{ url = \"http://127.0.0.1:9\" }]\n";
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("typo.toml");
    std::fs::write(&p, text).unwrap();
    let errs = weir::config::load_file(&p).expect_err("a typo validated");
    let (line, col) = line_col_of(text, "tagets");
    let e = &errs.0[0];
    assert_eq!((e.line, e.col), (Some(line), Some(col)), "{errs}");
    let msg = errs.to_string();
    assert!(
        msg.starts_with(&format!("{}:{line}:{col}: ", p.display())),
        "{msg}"
    );
    assert!(msg.contains("tagets") && msg.contains("targets"), "{msg}");
    assert_eq!(weir::cli::validate(&p).await, ExitCode::FAILURE);
}

#[tokio::test]
async fn missing_config_file_fails_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nope.toml");
    let errs = weir::config::load_file(&p).expect_err("a missing file validated");
    assert!(errs.to_string().contains("nope.toml"), "{errs}");
    assert!(errs.to_string().contains("cannot read"), "{errs}");
    assert_eq!(weir::cli::validate(&p).await, ExitCode::FAILURE);
}

/// An unknown key stops the serde pass, so the file's other mistakes go unreported until it is
/// fixed: an operator fixes one error per `weir validate` run.
#[tokio::test]
async fn unknown_key_does_not_hide_other_errors() {
    let text = BROKEN.replace("lb = \"fastest\"", "lb = \"fastest\"\nretry = 3");
    let dir = tempfile::tempdir().unwrap();
    let p = write_broken(dir.path(), &text);
    let errs = weir::config::load_file(&p).expect_err("the broken config validated");
    let report = errs.to_string();
    assert_eq!(errs.0.len(), EXPECTED.len() + 1, "{report}");
    assert_located(&report, &p.display().to_string(), &text);
    let (line, col) = line_col_of(&text, "retry = 3");
    assert!(
        report.contains(&format!("{}:{line}:{col}", p.display())),
        "{report}"
    );
}

/// Editors and CI problem matchers read one `file:line:col: message` per line; the regex
/// crate's multi-line messages break that (a line reading `error: unclosed group` looks like a
/// separate error with no location).
#[tokio::test]
async fn error_report_is_one_line_per_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_broken(dir.path(), BROKEN);
    let errs = weir::config::load_file(&p).expect_err("the broken config validated");
    let report = errs.to_string();
    assert_eq!(report.lines().count(), errs.0.len(), "{report}");
    let file = p.display().to_string();
    for l in report.lines() {
        assert!(
            l.starts_with(&format!("{file}:")),
            "line without a location: {l:?}"
        );
    }
}

/// Every plugin that fails to load is reported, each reason once: a config its `init` rejects,
/// a jwt-auth key set the config lacks, and a memory limit below the module's own minimum
/// (a matter of `limits`, not of the plugin's config).
#[tokio::test]
async fn every_plugin_failure_is_reported_once() {
    use weir_testkit::extra_c::plugin;
    let text = format!(
        "version = 1\n\n[[listeners]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\n\n\
         [upstreams.u]\ntargets = [{{ url = \"http://127.0.0.1:9\" }}]\n\n\
         [[routes]]\nname = \"r\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"u\"\nplugins = [\n\
         {{ name = \"h\", wasm = {h:?}, config = {{ bogus = 1 }} }},\n\
         {{ name = \"j\", wasm = {j:?}, config = {{ key_set = \"nope\" }} }},\n\
         {{ name = \"m\", wasm = {n:?}, limits = {{ memory = \"64KiB\" }} }},\n]\n",
        h = plugin("headers").display().to_string(),
        j = plugin("jwt_auth").display().to_string(),
        n = plugin("noop").display().to_string(),
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("plugins.toml");
    std::fs::write(&p, &text).unwrap();
    assert_eq!(weir::cli::validate(&p).await, ExitCode::FAILURE);
    // What `weir validate` prints, in process.
    let cfg = weir::config::load_file(&p).unwrap();
    let rt = weir::policy::Runtime::new(&cfg, &weir::metrics::Metrics::new()).unwrap();
    let errors = rt
        .check_all(&cfg.routes[0].plugins, "route r", cfg.runtime.pool_max_uses)
        .await;
    assert_eq!(errors.len(), 3, "{errors:#?}");
    for (e, reason) in errors.iter().zip([
        "unknown field `bogus`",
        "no [key_sets.nope]",
        "the first instance failed (memory_limit",
    ]) {
        assert_eq!(e.matches(reason).count(), 1, "{e}");
    }
    let Some(bin) = fresh_weir_bin() else {
        return;
    };
    let stderr = validate_fails(&bin, &p);
    for (plugin, reason) in [
        ("route r/0:h", "unknown field `bogus`"),
        ("route r/1:j", "no [key_sets.nope]"),
        ("route r/2:m", "the first instance failed (memory_limit"),
    ] {
        let line = stderr
            .lines()
            .find(|l| l.contains(plugin))
            .unwrap_or_else(|| panic!("{plugin} not reported:\n{stderr}"));
        assert_eq!(line.matches(reason).count(), 1, "{line}");
    }
    assert!(
        !stderr.contains("init rejected the config: memory"),
        "{stderr}"
    );
}

/// A value of the wrong type is reported with its key path, and unknown keys met before it are
/// reported with it (the deserializer stops at its first error).
#[tokio::test]
async fn type_errors_name_their_key() {
    let text = "version = 1\n\n[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\nnmae = \"x\"\n\n\
                [upstreams.app]\ntargets = [{ url = \"http://127.0.0.1:9\" }]\n\n\
                [[routes]]\nname = \"r\"\nmatch = { path_prefix = \"/\" }\nupstream = \"app\"\n\
                strip_prefix = \"yes\"\n";
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("types.toml");
    std::fs::write(&p, text).unwrap();
    let report = weir::config::load_file(&p)
        .expect_err("a wrong type validated")
        .to_string();
    let (line, col) = line_col_of(text, "\"yes\"");
    assert!(
        report.contains(&format!(
            ":{line}:{col}: routes[0].strip_prefix: invalid type: string \"yes\", expected a boolean"
        )),
        "{report}"
    );
    assert!(
        report.contains("listeners[0].nmae: unknown key"),
        "{report}"
    );
}
