//! Builds the first-party plugins (`plugins/`) and the test fixtures (`plugins/fixtures/`) to
//! WebAssembly components, so `weir demo` and the test suite always run the current plugin code.
//! Each workspace has its own target dir, so this never contends with the outer cargo's lock.
//!
//! Set `WEIR_SKIP_PLUGIN_BUILD=1` to skip (the demo then runs without plugins).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let root = manifest.parent().map(Path::to_path_buf).unwrap_or_default();
    let plugins = root.join("plugins");
    let fixtures = plugins.join("fixtures");
    for p in ["plugins", "plugin-sdk", "wit"] {
        watch_tree(&root.join(p));
    }
    println!("cargo:rerun-if-env-changed=WEIR_SKIP_PLUGIN_BUILD");
    println!(
        "cargo:rustc-env=WEIR_PLUGIN_DIR={}",
        plugins.join("target/wasm32-wasip2/release").display()
    );
    println!(
        "cargo:rustc-env=WEIR_FIXTURE_DIR={}",
        fixtures.join("target/wasm32-wasip2/release").display()
    );
    if std::env::var_os("WEIR_SKIP_PLUGIN_BUILD").is_some() {
        return;
    }
    for ws in [&plugins, &fixtures] {
        if !ws.join("Cargo.toml").exists() {
            continue;
        }
        if let Err(e) = build_wasm(ws) {
            println!(
                "cargo:warning=plugins in {} were not built: {e}",
                ws.display()
            );
            println!("cargo:warning=install the target with `rustup target add wasm32-wasip2`");
        }
    }
}

/// Re-run when any source file changes (but not for the build outputs under `target/`).
fn watch_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == "target" || name == "node_modules" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            watch_tree(&p);
        } else {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}

fn build_wasm(ws: &Path) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(ws)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
        .env("CARGO_TARGET_DIR", ws.join("target"));
    // The outer build's settings must not leak into the guest build.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CARGO_") && k != "CARGO_HOME"
            || k == "RUSTFLAGS"
            || k == "RUSTC_WRAPPER"
            || k == "RUSTC_WORKSPACE_WRAPPER"
        {
            cmd.env_remove(&k);
        }
    }
    cmd.env("CARGO_TARGET_DIR", ws.join("target"));
    let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr)
            .lines()
            .take(20)
            .collect::<Vec<_>>()
            .join(" | "))
    }
}
