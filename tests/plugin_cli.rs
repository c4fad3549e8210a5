//! `weir plugin new/build/test` through the real `weir` binary:
//! - a generated project in each language builds with `weir plugin build` and passes its own
//!   tests (`cargo test`, `node --test`, `python3 -m unittest`) without edits;
//! - `weir plugin test` prints status and headers of a refusal, and the header and path changes
//!   of a request that goes on;
//! - the author loop: with `weir run` watching, an edit of the Rust template, a rebuild and the
//!   new behaviour live, timed.
//!
//! Rust projects build into the shared `target/plugin-cli-tests` (so dependencies compile once);
//! JS and Python projects install their pinned tools from npm and PyPI into the project, as an
//! author's would be.

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use weir_testkit::extra_b::ensure_weir_bin;
use weir_testkit::{TestClient, TestUpstream};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A command with the outer cargo's variables removed, so nested cargo builds behave like an
/// author's and share one target dir.
fn command(program: impl AsRef<std::ffi::OsStr>, dir: &Path) -> Command {
    let mut c = Command::new(program);
    c.current_dir(dir);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_") && k != "CARGO_HOME" || k == "RUSTFLAGS" {
            c.env_remove(&*k);
        }
    }
    c.env("CARGO_TARGET_DIR", repo().join("target/plugin-cli-tests"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("RUST_BACKTRACE", "0");
    c
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Generates a project and builds it; returns (project dir, component path).
fn new_and_build(parent: &Path, name: &str, lang: &str) -> (PathBuf, PathBuf) {
    let weir = ensure_weir_bin();
    let dir = parent.join(name);
    let out = run(command(&weir, parent).args([
        "plugin",
        "new",
        name,
        "--lang",
        lang,
        "--dir",
        dir.to_str().unwrap(),
    ]));
    assert!(stdout(&out).contains("created"), "{}", stdout(&out));
    let out = run(command(&weir, &dir).args(["plugin", "build"]));
    let wasm = PathBuf::from(stdout(&out).trim());
    assert!(wasm.starts_with(dir.join("dist")), "{}", wasm.display());
    let bytes = std::fs::read(&wasm).unwrap();
    assert!(
        bytes.starts_with(b"\0asm\x0d\x00\x01\x00"),
        "not a component"
    );
    (dir, wasm)
}

/// `weir plugin test` with the template's config; returns stdout.
fn plugin_test(wasm: &Path, config: &Path, args: &[&str]) -> String {
    let mut c = command(ensure_weir_bin(), wasm.parent().unwrap());
    c.args(["plugin", "test", wasm.to_str().unwrap(), "--config"])
        .arg(config)
        .args(args);
    stdout(&run(&mut c))
}

/// The template's behaviour through `weir plugin test`: 400 without `x-tenant`, else a header.
fn check_template_decisions(dir: &Path, wasm: &Path) {
    let config = dir.join("config.json");
    let deny = plugin_test(wasm, &config, &["--path", "/x"]);
    assert!(deny.contains("decision: respond"), "{deny}");
    assert!(deny.contains("status: 400"), "{deny}");
    assert!(
        deny.contains("header: content-type: application/problem+json"),
        "{deny}"
    );
    assert!(deny.contains("x-tenant"), "{deny}");
    let allow = plugin_test(wasm, &config, &["--path", "/x", "-H", "x-tenant: acme"]);
    assert!(allow.contains("decision: continue"), "{allow}");
    assert!(allow.contains("set-header: x-greeting: hello"), "{allow}");
}

#[test]
fn rust_template_builds_tests_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, wasm) = new_and_build(tmp.path(), "rust-policy", "rust");
    assert_eq!(wasm.file_name().unwrap(), "rust_policy.wasm");
    let out = run(command("cargo", &dir).arg("test"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3 passed"), "{text}");
    check_template_decisions(&dir, &wasm);
}

#[test]
fn js_template_builds_tests_and_runs() {
    if !have("node") || !have("npm") {
        eprintln!("SKIPPED: node/npm are not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (dir, wasm) = new_and_build(tmp.path(), "js-policy", "js");
    assert!(dir.join("node_modules/.bin/componentize-qjs").exists());
    let out = run(command("node", &dir).arg("--test"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("# pass 3") && text.contains("# fail 0"),
        "{text}"
    );
    check_template_decisions(&dir, &wasm);
}

#[test]
fn python_template_builds_tests_and_runs() {
    if !have("python3") {
        eprintln!("SKIPPED: python3 is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (dir, wasm) = new_and_build(tmp.path(), "py-policy", "python");
    let out = run(command("python3", &dir).args(["-m", "unittest"]));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("Ran 3 tests") && text.contains("OK"),
        "{text}"
    );
    check_template_decisions(&dir, &wasm);
}

/// `weir plugin test` on the JS examples: a path rewrite plus header, and a 403 refusal.
#[test]
fn plugin_test_prints_edits_and_refusals() {
    if !have("node") || !have("npm") {
        eprintln!("SKIPPED: node/npm are not installed");
        return;
    }
    let examples = repo().join("plugins/examples");
    {
        static LOCK: Mutex<()> = Mutex::new(());
        let _g = LOCK.lock().unwrap();
        if !examples.join("node_modules/.bin/componentize-qjs").exists() {
            run(command("npm", &examples).args(["ci", "--no-audit", "--no-fund"]));
        }
    }
    let weir = ensure_weir_bin();
    let tmp = tempfile::tempdir().unwrap();
    let build = |name: &str| {
        let out = tmp.path().join(format!("{name}.wasm"));
        let o = run(command(&weir, &examples).args([
            "plugin",
            "build",
            name,
            "--out",
            out.to_str().unwrap(),
        ]));
        assert_eq!(stdout(&o).trim(), out.to_str().unwrap());
        out
    };
    let ab = build("js-ab-router");
    let rules = build("js-request-validator");
    let ab_cfg = tmp.path().join("ab.toml");
    std::fs::write(
        &ab_cfg,
        "experiment = \"x\"\noverride_header = \"x-force\"\n\
         variants = [{ name = \"a\" }, { name = \"b\", path_prefix = \"/v2\" }]\n",
    )
    .unwrap();
    let out = plugin_test(&ab, &ab_cfg, &["--path", "/cart?id=1", "-H", "x-force:b"]);
    assert!(out.contains("decision: continue"), "{out}");
    assert!(out.contains("path: /cart -> /v2/cart"), "{out}");
    assert!(out.contains("set-header: x-variant: b"), "{out}");
    assert!(out.contains("context: ab.variant = b"), "{out}");

    let rules_cfg = tmp.path().join("rules.json");
    std::fs::write(&rules_cfg, r#"{ "forbidden": ["x-debug"] }"#).unwrap();
    let out = plugin_test(&rules, &rules_cfg, &["-H", "X-Debug: 1"]);
    assert!(out.contains("decision: respond"), "{out}");
    assert!(out.contains("status: 403"), "{out}");
    assert!(
        out.contains("header: content-type: application/problem+json"),
        "{out}"
    );
    assert!(out.contains(r#""title":"forbidden header""#), "{out}");
    let out = plugin_test(&rules, &rules_cfg, &[]);
    assert!(
        out.contains("decision: continue") && out.contains("no changes"),
        "{out}"
    );

    // A config the plugin rejects is an error naming the reason.
    std::fs::write(&rules_cfg, "{}").unwrap();
    let o = command(&weir, tmp.path())
        .args(["plugin", "test", rules.to_str().unwrap(), "--config"])
        .arg(&rules_cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nothing to check"), "{err}");
}

/// Kills the child on drop (the test may fail while `weir run` is up).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Edit → `weir plugin build` → live behind `weir run`, for the Rust template. Prints each
/// round's seconds; the budget is 2 s on an idle machine (asserted with slack for shared CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn author_loop_edit_build_live_rust() {
    let weir = ensure_weir_bin();
    let tmp = tempfile::tempdir().unwrap();
    let (dir, wasm) = tokio::task::spawn_blocking({
        let p = tmp.path().to_path_buf();
        move || new_and_build(&p, "loop-policy", "rust")
    })
    .await
    .unwrap();
    let up = TestUpstream::start("app").await;
    let port = free_port();
    let config = dir.join("weir.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:9901", "127.0.0.1:0")
        .replace("http://127.0.0.1:3000", &up.url());
    std::fs::write(&config, text).unwrap();
    let log = std::fs::File::create(tmp.path().join("weir-run.log")).unwrap();
    let _gw = Child(
        command(&weir, &dir)
            .args(["run", "-c", "weir.toml"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}/x");
    let c = TestClient::new();
    let greeting = |c: TestClient, url: String| async move {
        let r = c
            .send(http::Method::GET, &url, &[("x-tenant", "t")], "")
            .await
            .ok()?;
        r.json()["headers"]["x-greeting"]
            .as_str()
            .map(str::to_string)
    };
    let up_at = Instant::now();
    while greeting(c.clone(), url.clone()).await.as_deref() != Some("hello") {
        assert!(
            up_at.elapsed() < Duration::from_secs(30),
            "weir run did not come up: {}",
            std::fs::read_to_string(tmp.path().join("weir-run.log")).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let src = dir.join("src/lib.rs");
    let mut rounds = Vec::new();
    let mut previous = "hello".to_string();
    for round in 1..=3 {
        let next = format!("edit-{round}");
        let text = std::fs::read_to_string(&src).unwrap().replace(
            &format!("const GREETING: &str = \"{previous}\";"),
            &format!("const GREETING: &str = \"{next}\";"),
        );
        let started = Instant::now();
        std::fs::File::create(&src)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let build = {
            let (weir, dir) = (weir.clone(), dir.clone());
            tokio::task::spawn_blocking(move || run(command(&weir, &dir).args(["plugin", "build"])))
        };
        let out = build.await.unwrap();
        assert_eq!(stdout(&out).trim(), wasm.to_str().unwrap());
        let built = started.elapsed();
        while greeting(c.clone(), url.clone()).await.as_deref() != Some(next.as_str()) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "round {round}: the edit never went live"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let live = started.elapsed();
        eprintln!(
            "author loop round {round}: build {:.2} s, live {:.2} s after the edit",
            built.as_secs_f64(),
            live.as_secs_f64()
        );
        rounds.push(live);
        previous = next;
    }
    rounds.sort();
    let median = rounds[1];
    assert!(
        median < Duration::from_secs(6),
        "edit → live took {median:?} (median of 3); budget 2 s idle"
    );
}
