//! Test helpers: build the guest fixtures (`plugins/fixtures`, raw wit-bindgen) once per test
//! binary and hand out their paths.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use weir_wasm_host::*;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Builds every fixture with `cargo build --release --target wasm32-wasip2` in the fixtures
/// workspace, with its own target dir (the one `gateway/build.rs` also uses, so they are built
/// once) and none of the outer cargo's CARGO_*/RUSTFLAGS settings.
fn build_fixtures() -> PathBuf {
    let root = repo_root();
    let target = root.join("plugins/fixtures/target");
    let mut cmd = Command::new(env!("CARGO"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CARGO")
            || k.starts_with("RUSTC")
            || k == "RUSTFLAGS"
            || k == "RUSTDOCFLAGS"
        {
            cmd.env_remove(&k);
        }
    }
    let status = cmd
        .current_dir(root.join("plugins/fixtures"))
        .env("CARGO_TARGET_DIR", &target)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
        .status()
        .expect("run cargo for the fixtures");
    assert!(status.success(), "building plugins/fixtures failed");
    target.join("wasm32-wasip2/release")
}

/// Path of fixture `name` (e.g. "kv-counter").
pub fn fixture(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(build_fixtures);
    dir.join(format!("fixture_{}.wasm", name.replace('-', "_")))
}

/// Shared by the tests and the bench (`#[path]`-included there).
pub fn runtime() -> PolicyRuntime {
    PolicyRuntime::new(RuntimeConfig::default()).unwrap()
}

pub fn spec(id: &str, fixture_name: &str, isolation: Isolation) -> PluginSpec {
    let mut s = PluginSpec::new(id, fixture(fixture_name));
    s.isolation = isolation;
    s
}

pub fn request(path: &str, headers: &[(&str, &str)]) -> PolicyRequest {
    PolicyRequest {
        method: "GET".into(),
        path: path.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        client_ip: "127.0.0.1".into(),
        route: "test".into(),
        request_id: "req-1".into(),
        scheme: "http".into(),
        host: "localhost".into(),
        ..Default::default()
    }
}

/// The header `name` of a `Continue` action's set-headers.
pub fn set_header(action: &Action, name: &str) -> Option<String> {
    match action {
        Action::Continue(e) => e
            .set_headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone()),
        Action::Respond(_) => None,
    }
}

/// The header `name` of a `Respond` action.
pub fn respond_header(action: &Action, name: &str) -> Option<String> {
    match action {
        Action::Respond(r) => r
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone()),
        Action::Continue(_) => None,
    }
}
