//! `weir plugin`: tools for plugin authors.
//!
//! - `weir plugin new NAME --lang rust|js|python` writes a project that builds and tests as is
//!   (templates in `gateway/templates/`, embedded in the binary);
//! - `weir plugin build [DIR]` turns a project into `DIR/dist/NAME.wasm` with the language's
//!   tool (cargo, componentize-qjs, componentize-py);
//! - `weir plugin test PLUGIN.wasm` runs one request through a plugin alone, on the same runtime
//!   and host capabilities the gateway uses, and prints the decision.
//!
//! JavaScript and Python toolchains import every interface of the world they are built for, and
//! the gateway refuses a plugin importing `http-client` without an `http_allow` grant. So the build
//! targets a world holding only the `weir:policy` interfaces the sources import (found by
//! scanning them), written next to the contract in `DIR/.weir/wit/`. Their builds take seconds,
//! so outputs are cached in `DIR/.weir/cache/` by a hash of the sources and tool versions.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Subcommand, ValueEnum};
use sha2::{Digest, Sha256};
use weir_wasm_host::{
    Action, Isolation, PluginSpec, PolicyRequest, PolicyRuntime, RequestContext, RuntimeConfig,
};

/// The `weir plugin` subcommands.
#[derive(Debug, Subcommand)]
pub enum PluginCmd {
    /// Create a plugin project that builds and passes its tests as generated.
    New {
        /// Project and plugin name: lower-case letters, digits and `-`.
        name: String,
        #[arg(long, value_enum)]
        lang: Lang,
        /// Where to create it (default: ./NAME). Must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Rust only: the `weir-plugin-sdk` crate to depend on (default: the SDK of the source
        /// tree this weir was built from).
        #[arg(long, env = "WEIR_PLUGIN_SDK")]
        sdk: Option<PathBuf>,
    },
    /// Build a plugin project to `DIR/dist/NAME.wasm` (prints the path).
    Build {
        /// The project directory (default: the current one).
        dir: Option<PathBuf>,
        /// Write the component here instead of `DIR/dist/NAME.wasm`.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Run one request through a plugin alone and print its decision.
    Test {
        /// The plugin component.
        wasm: PathBuf,
        /// The plugin's config table, as a `.json` or `.toml` file (default: empty).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = "GET")]
        method: String,
        /// Path, optionally with `?query`.
        #[arg(long, default_value = "/")]
        path: String,
        /// A request header `NAME:VALUE` (repeatable).
        #[arg(long = "header", short = 'H', value_name = "NAME:VALUE")]
        headers: Vec<String>,
        /// A file whose bytes are the request body (`-` = stdin).
        #[arg(long)]
        body: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1")]
        client_ip: String,
        /// Host the client asked for.
        #[arg(long, default_value = "localhost")]
        host: String,
        /// Outbound HTTP destination the plugin may reach (repeatable), as in `http.allow`.
        #[arg(long)]
        http_allow: Vec<String>,
        /// Compile the component afresh instead of using the compile cache
        /// (`$WEIR_CACHE_DIR`, else `$XDG_CACHE_HOME/weir` or `~/.cache/weir`).
        #[arg(long)]
        no_cache: bool,
    },
}

/// A plugin project's language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    Rust,
    #[value(alias = "javascript")]
    Js,
    #[value(alias = "py")]
    Python,
}

impl Lang {
    fn as_str(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Js => "JavaScript",
            Lang::Python => "Python",
        }
    }
}

/// Runs a `weir plugin` subcommand; errors are printed, the exit code says whether it worked.
pub async fn run(cmd: PluginCmd) -> ExitCode {
    // Guest log calls are tracing events: show them while testing a plugin.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,weir::plugin=info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let result = match cmd {
        PluginCmd::New {
            name,
            lang,
            dir,
            sdk,
        } => new_project(&name, lang, dir.as_deref(), sdk.as_deref()).map(|(dir, lang)| {
            let next = match lang {
                Lang::Rust => "cargo test",
                Lang::Js => "weir plugin build && npm test",
                Lang::Python => "weir plugin build && python3 -m unittest",
            };
            println!("created {}", dir.display());
            println!("next: cd {} && {next}", dir.display());
        }),
        PluginCmd::Build { dir, out } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from("."));
            tokio::task::spawn_blocking(move || build(&dir, out.as_deref()))
                .await
                .map_err(|e| format!("build task: {e}"))
                .and_then(|r| r)
                .map(|b| {
                    eprintln!(
                        "built {} plugin in {:.1} s{}",
                        b.lang.as_str(),
                        b.elapsed.as_secs_f64(),
                        if b.cached { " (cached)" } else { "" }
                    );
                    println!("{}", b.wasm.display());
                })
        }
        PluginCmd::Test {
            wasm,
            config,
            method,
            path,
            headers,
            body,
            client_ip,
            host,
            http_allow,
            no_cache,
        } => {
            let req = TestInput {
                wasm,
                config,
                method,
                path,
                headers,
                body,
                client_ip,
                host,
                http_allow,
                cache_dir: if no_cache { None } else { user_cache_dir() },
            };
            test_plugin(&req).await.map(|report| print!("{report}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// weir plugin new
// ---------------------------------------------------------------------------------------------

/// The contract every project carries a copy of (JS and Python builds need it on disk).
const POLICY_WIT: &str = include_str!("../../wit/policy.wit");

/// Pinned JavaScript toolchain: the lock file of the example plugins, where it is tested.
const EXAMPLES_LOCK: &str = include_str!("../../plugins/examples/package-lock.json");
const EXAMPLES_LOCK_NAME: &str = "weir-example-plugins";

struct Template {
    path: &'static str,
    body: &'static str,
}

macro_rules! template {
    ($path:literal, $file:literal) => {
        Template {
            path: $path,
            body: include_str!(concat!("../templates/", $file)),
        }
    };
}

const COMMON: &[Template] = &[
    template!("weir.toml", "common/weir.toml.tmpl"),
    template!("config.json", "common/config.json.tmpl"),
    template!("README.md", "common/README.md.tmpl"),
];
const RUST: &[Template] = &[
    template!("Cargo.toml", "rust/Cargo.toml.tmpl"),
    template!("src/lib.rs", "rust/lib.rs.tmpl"),
    template!(".gitignore", "rust/gitignore.tmpl"),
];
const JS: &[Template] = &[
    template!("package.json", "js/package.json.tmpl"),
    template!("policy.js", "js/policy.js.tmpl"),
    template!("test/policy.test.js", "js/policy.test.js.tmpl"),
    // Outside `test/`: `node --test` runs every module under a `test` directory.
    Template {
        path: "test-support/weir-host.mjs",
        body: include_str!("../../plugins/examples/js-test-support/weir-host.mjs"),
    },
    template!(".gitignore", "js/gitignore.tmpl"),
];
const PYTHON: &[Template] = &[
    template!("app.py", "python/app.py.tmpl"),
    template!("test_app.py", "python/test_app.py.tmpl"),
    template!("requirements.txt", "python/requirements.txt.tmpl"),
    template!("pyproject.toml", "python/pyproject.toml.tmpl"),
    template!(".gitignore", "python/gitignore.tmpl"),
];

/// `weir-plugin-sdk` of the source tree this binary was built from.
fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .join("plugin-sdk")
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid plugin name {name:?}: use lower-case letters, digits and `-`, starting with a letter"
        ))
    }
}

/// Writes a new project; returns its directory.
pub fn new_project(
    name: &str,
    lang: Lang,
    dir: Option<&Path>,
    sdk: Option<&Path>,
) -> Result<(PathBuf, Lang), String> {
    check_name(name)?;
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .next()
            .is_some()
    {
        return Err(format!("{} exists and is not empty", dir.display()));
    }
    let crate_name = name.replace('-', "_");
    let (files, wasm, test_cmd) = match lang {
        Lang::Rust => (RUST, format!("{crate_name}.wasm"), "cargo test"),
        Lang::Js => (JS, format!("{name}.wasm"), "npm test"),
        Lang::Python => (PYTHON, format!("{name}.wasm"), "python3 -m unittest"),
    };
    let mut vars: BTreeMap<&str, String> = BTreeMap::new();
    vars.insert("name", name.to_string());
    vars.insert("wasm", wasm);
    vars.insert("lang", lang.as_str().to_string());
    vars.insert("test_cmd", test_cmd.to_string());
    vars.insert("extra", String::new());
    // Rust projects get the contract through the SDK crate; the others carry a copy.
    vars.insert(
        "contract",
        match lang {
            Lang::Rust => "The `weir:policy` WIT contract between Weir and the plugin comes with \
                           the `weir-plugin-sdk` crate."
                .to_string(),
            Lang::Js | Lang::Python => {
                "`wit/policy.wit` is the contract between Weir and the plugin.".to_string()
            }
        },
    );
    if lang == Lang::Rust {
        let sdk = sdk.map_or_else(default_sdk, Path::to_path_buf);
        let sdk = std::path::absolute(&sdk).map_err(|e| format!("{}: {e}", sdk.display()))?;
        if !sdk.join("Cargo.toml").exists() {
            return Err(format!(
                "the plugin SDK is not at {} (this weir was built elsewhere): pass --sdk PATH/TO/plugin-sdk",
                sdk.display()
            ));
        }
        let sdk = sdk.display().to_string();
        if sdk.contains('"') || sdk.contains('\\') {
            return Err(format!("unsupported characters in the SDK path {sdk}"));
        }
        vars.insert(
            "extra",
            format!(
                "\n\nThe SDK dependency in `Cargo.toml` is the absolute path `{sdk}`, the Weir source tree\n\
                 this project was generated from: change it (both entries) if that tree moves."
            ),
        );
        vars.insert("sdk", sdk);
    }
    let mut out: Vec<(String, String)> = COMMON
        .iter()
        .chain(files)
        .map(|t| (t.path.to_string(), render(t.body, &vars)))
        .collect();
    match lang {
        Lang::Rust => {}
        Lang::Js => {
            out.push(("wit/policy.wit".into(), POLICY_WIT.into()));
            out.push((
                "package-lock.json".into(),
                EXAMPLES_LOCK.replace(
                    &format!("\"name\": \"{EXAMPLES_LOCK_NAME}\""),
                    &format!("\"name\": \"{name}\""),
                ),
            ));
        }
        Lang::Python => out.push(("wit/policy.wit".into(), POLICY_WIT.into())),
    }
    for (rel, text) in out {
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok((dir, lang))
}

/// Replaces `{{key}}` placeholders.
fn render(text: &str, vars: &BTreeMap<&str, String>) -> String {
    let mut s = text.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{{{k}}}}}"), v);
    }
    s
}

// ---------------------------------------------------------------------------------------------
// weir plugin build
// ---------------------------------------------------------------------------------------------

/// The outcome of [`build`].
#[derive(Debug)]
pub struct Built {
    pub lang: Lang,
    /// Absolute path of the component.
    pub wasm: PathBuf,
    /// True when the component came from `.weir/cache` (JS, Python).
    pub cached: bool,
    pub elapsed: Duration,
}

/// Which language a project is in, from its files.
pub fn detect(dir: &Path) -> Result<Lang, String> {
    if dir.join("Cargo.toml").exists() {
        Ok(Lang::Rust)
    } else if dir.join("package.json").exists() {
        Ok(Lang::Js)
    } else if dir.join("app.py").exists() {
        Ok(Lang::Python)
    } else {
        Err(format!(
            "{}: not a plugin project (no Cargo.toml, package.json or app.py)",
            dir.display()
        ))
    }
}

/// Builds the project in `dir` to `out` (default `dir/dist/NAME.wasm`). Blocking.
pub fn build(dir: &Path, out: Option<&Path>) -> Result<Built, String> {
    let started = Instant::now();
    let dir = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let lang = detect(&dir)?;
    let (produced, name, cached) = match lang {
        Lang::Rust => build_rust(&dir).map(|(p, n)| (p, n, false))?,
        Lang::Js => build_js(&dir)?,
        Lang::Python => build_python(&dir)?,
    };
    let target = match out {
        Some(o) => std::path::absolute(o).map_err(|e| format!("{}: {e}", o.display()))?,
        None => dir.join("dist").join(format!("{name}.wasm")),
    };
    install(&produced, &target)?;
    Ok(Built {
        lang,
        wasm: target,
        cached,
        elapsed: started.elapsed(),
    })
}

/// Copies `from` to `to` through a temporary file and a rename, so a gateway watching `to`
/// never loads a half-written component.
fn install(from: &Path, to: &Path) -> Result<(), String> {
    let parent = to.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let tmp = parent.join(format!(
        ".{}.tmp{}",
        to.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::fs::copy(from, &tmp).map_err(|e| format!("copy to {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, to).map_err(|e| format!("{}: {e}", to.display()))
}

/// Runs a command, failing with its name and exit status. Its output goes to stderr: stdout
/// carries only the result (the component's path), for scripts.
fn run_tool(cmd: &mut Command, what: &str) -> Result<(), String> {
    let status = cmd
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

fn build_rust(dir: &Path) -> Result<(PathBuf, String), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(dir)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build failed ({}); for a missing target run `rustup target add wasm32-wasip2`",
            out.status
        ));
    }
    // The last cdylib artifact with a .wasm file is the component (cargo prints diagnostics on
    // stderr, one JSON message per line on stdout).
    let mut found = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let is_cdylib = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|v| v == "cdylib"));
        let wasm = msg["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .find(|f| f.ends_with(".wasm"));
        if let (true, Some(w)) = (is_cdylib, wasm) {
            let p = PathBuf::from(w);
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            found = Some((p, stem));
        }
    }
    found.ok_or_else(|| {
        "cargo built no .wasm: the crate needs `crate-type = [\"cdylib\", ...]` under [lib]"
            .to_string()
    })
}

/// The `weir:policy` interfaces a world may import, with their names in JS and Python sources.
const INTERFACES: &[(&str, &str)] = &[
    ("log", "log"),
    ("context", "context"),
    ("kv", "kv"),
    ("rate-limit", "rate_limit"),
    ("jwt", "jwt"),
    ("http-client", "http_client"),
    ("metrics", "metrics"),
];

/// A world with the policy exports and only `imports`, in the `weir:policy` package (so it can
/// sit next to the contract). `init_export` is the name the `init` export gets.
fn build_world(imports: &BTreeSet<&str>, init_export: &str) -> String {
    let mut w = String::from(
        "package weir:policy@0.1.0;\n\n\
         // Generated by `weir plugin build`: the policy world with only the imports the sources use.\n\
         world built {\n    use types.{plugin-info, request, action, response-head, response-edits, log-entry};\n",
    );
    for i in imports {
        let _ = writeln!(w, "    import {i};");
    }
    let _ = write!(
        w,
        "    export {init_export}: func(config: string) -> result<plugin-info, string>;\n    \
         export on-request: func(req: request) -> action;\n    \
         export on-response: func(resp: response-head) -> response-edits;\n    \
         export on-log: func(entry: log-entry);\n}}\n"
    );
    w
}

/// Writes `.weir/wit/` (the contract + the trimmed world); the contract comes from the
/// project's `wit/policy.wit` when it has one.
fn write_build_wit(dir: &Path, world: &str) -> Result<PathBuf, String> {
    let wit = dir.join(".weir/wit");
    std::fs::create_dir_all(&wit).map_err(|e| format!("{}: {e}", wit.display()))?;
    let contract = std::fs::read_to_string(dir.join("wit/policy.wit"))
        .unwrap_or_else(|_| POLICY_WIT.to_string());
    std::fs::write(wit.join("policy.wit"), contract).map_err(|e| format!("write wit: {e}"))?;
    std::fs::write(wit.join("built.wit"), world).map_err(|e| format!("write wit: {e}"))?;
    Ok(wit)
}

/// Directories never part of a project's sources.
const SKIP_DIRS: &[&str] = &[
    "node_modules",
    "target",
    "dist",
    "__pycache__",
    ".weir",
    ".venv",
    ".git",
];

/// Source files under `dir` with the given extensions, sorted, skipping tool and output dirs.
fn source_files(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if !SKIP_DIRS.contains(&name.as_str()) && !name.starts_with('.') {
                    stack.push(p);
                }
            } else if exts.iter().any(|x| p.extension().is_some_and(|e| e == *x)) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Hash of the sources and the tool that compiles them: the cache key.
fn source_hash(dir: &Path, files: &[PathBuf], tool: &str) -> Result<String, String> {
    let mut h = Sha256::new();
    h.update(env!("CARGO_PKG_VERSION"));
    h.update([0]);
    // The contract the component is built against (a WIT change must rebuild every plugin).
    h.update(POLICY_WIT);
    h.update([0]);
    h.update(tool);
    h.update([0]);
    for f in files {
        let rel = f.strip_prefix(dir).unwrap_or(f);
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?);
        h.update([0]);
    }
    Ok(hex::encode(&h.finalize()[..16]))
}

/// Keeps the newest few cache entries.
fn prune_cache(cache: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    let mut files: Vec<_> = entries
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort();
    let n = files.len().saturating_sub(keep);
    for (_, p) in files.into_iter().take(n) {
        let _ = std::fs::remove_file(p);
    }
}

/// Looks for `rel` (e.g. `node_modules/.bin/componentize-qjs`) in `dir` and its ancestors.
fn find_up(dir: &Path, rel: &str) -> Option<PathBuf> {
    dir.ancestors().map(|d| d.join(rel)).find(|p| p.exists())
}

fn json_string(v: &serde_json::Value, key: &str) -> Option<String> {
    v.get(key).and_then(|s| s.as_str()).map(str::to_string)
}

fn build_js(dir: &Path) -> Result<(PathBuf, String, bool), String> {
    let pkg_text = std::fs::read_to_string(dir.join("package.json"))
        .map_err(|e| format!("package.json: {e}"))?;
    let pkg: serde_json::Value =
        serde_json::from_str(&pkg_text).map_err(|e| format!("package.json: {e}"))?;
    let name = json_string(&pkg, "name")
        .map(|n| n.rsplit('/').next().unwrap_or(&n).to_string())
        .unwrap_or_else(|| dir_name(dir));
    let main = json_string(&pkg, "main").unwrap_or_else(|| "policy.js".into());
    if !dir.join(&main).exists() {
        return Err(format!(
            "{}: the entry module `{main}` (package.json \"main\") does not exist",
            dir.display()
        ));
    }
    let qjs = match find_up(dir, "node_modules/.bin/componentize-qjs") {
        Some(q) => q,
        None => {
            let ci = dir.join("package-lock.json").exists();
            eprintln!(
                "installing the JavaScript toolchain (npm {})...",
                if ci { "ci" } else { "install" }
            );
            run_tool(
                Command::new("npm").current_dir(dir).args([
                    if ci { "ci" } else { "install" },
                    "--no-audit",
                    "--no-fund",
                ]),
                "npm",
            )?;
            find_up(dir, "node_modules/.bin/componentize-qjs").ok_or(
                "componentize-qjs is not installed: add it to devDependencies and run npm install",
            )?
        }
    };
    let modules = qjs
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let tool = std::fs::read_to_string(modules.join("componentize-qjs/package.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| json_string(&v, "version"))
        .map(|v| format!("componentize-qjs {v}"))
        .unwrap_or_default();

    let sources = source_files(dir, &["js", "mjs"])
        .into_iter()
        .filter(|p| {
            // Tests and their support modules (`test/`, `test-support/`, `*.test.js`) are not
            // part of the component.
            let rel = p.strip_prefix(dir).unwrap_or(p).to_string_lossy();
            !rel.starts_with("test") && !rel.contains(".test.")
        })
        .collect::<Vec<_>>();
    let mut imports = BTreeSet::new();
    for f in &sources {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        scan_js_imports(&text, &mut imports)
            .map_err(|e| format!("{}: {e}", f.strip_prefix(dir).unwrap_or(f).display()))?;
    }
    let mut hashed = sources.clone();
    hashed.push(dir.join("package.json"));
    hashed.extend(
        [dir.join("wit/policy.wit")]
            .into_iter()
            .filter(|p| p.exists()),
    );
    let entry_js = js_entry(&main);
    let key = source_hash(dir, &hashed, &format!("{tool}\n{entry_js}"))?;
    let cache = dir.join(".weir/cache");
    let cached = cache.join(format!("{key}.wasm"));
    if cached.exists() {
        return Ok((cached, name, true));
    }

    // QuickJS's runtime already exports a function named `init`, so the policy's `init` is built
    // as `weir-init` and renamed in the finished component.
    let wit = write_build_wit(dir, &build_world(&imports, "weir-init"))?;
    let entry = dir.join(".weir/entry.js");
    std::fs::write(&entry, entry_js).map_err(|e| format!("write entry: {e}"))?;
    let raw = dir.join(".weir/raw.wasm");
    run_tool(
        Command::new(&qjs)
            .current_dir(dir)
            .arg("--wit")
            .arg(&wit)
            .args(["--world", "built"])
            .arg("--js")
            .arg(&entry)
            // The entry lives in .weir/ and imports the author's modules from the project.
            .arg("--module-root")
            .arg(dir)
            // Exports are synchronous: the gateway does not enable component-model async.
            .arg("--sync")
            .arg("-o")
            .arg(&raw),
        "componentize-qjs",
    )?;
    let bytes = std::fs::read(&raw).map_err(|e| format!("{}: {e}", raw.display()))?;
    let fixed = rename_exports(
        &bytes,
        &[("init", "componentize-qjs-init"), ("weir-init", "init")],
    )?;
    std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    std::fs::write(&cached, fixed).map_err(|e| format!("{}: {e}", cached.display()))?;
    prune_cache(&cache, 8);
    Ok((cached, name, false))
}

fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into())
}

/// Adds the `weir:policy/<interface>` names found in JS source to `out`.
fn scan_js_imports(text: &str, out: &mut BTreeSet<&'static str>) -> Result<(), String> {
    for (i, _) in text.match_indices("weir:policy/") {
        let rest = &text[i + "weir:policy/".len()..];
        let iface: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '-')
            .collect();
        // Only module specifiers (`weir:policy/kv@0.1.0"`), not prose mentioning the package.
        let end = rest[iface.len()..].chars().next();
        if iface.is_empty() || !matches!(end, Some('@' | '"' | '\'' | '`')) {
            continue;
        }
        match INTERFACES.iter().find(|(wit, _)| *wit == iface) {
            Some((wit, _)) => {
                out.insert(wit);
            }
            None if iface == "types" => {}
            None => {
                return Err(format!(
                    "imports `weir:policy/{iface}`, which the weir:policy@0.1.0 world does not have"
                ));
            }
        }
    }
    Ok(())
}

/// The module componentize-qjs compiles: it re-exports the author's module under the world's export names and
/// fills in what the author left out (phases, record fields, string bodies as UTF-8).
fn js_entry(main: &str) -> String {
    format!(
        r#"// Generated by `weir plugin build` from {main}. Do not edit.
import * as policy from "../{main}";

const list = (v) => (Array.isArray(v) ? v : []);
const opt = (v) => (v === undefined ? null : v);

// QuickJS has no TextEncoder.
function utf8(s) {{
  const out = [];
  for (const ch of s) {{
    let c = ch.codePointAt(0);
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }}
  return new Uint8Array(out);
}}
const bytes = (b) => (typeof b === "string" ? utf8(b) : b);

function requestEdits(e) {{
  e = e || {{}};
  return {{
    method: opt(e.method),
    path: opt(e.path),
    query: opt(e.query),
    setHeaders: list(e.setHeaders),
    appendHeaders: list(e.appendHeaders),
    removeHeaders: list(e.removeHeaders),
    body: e.body == null ? null : bytes(e.body),
    setResponseHeaders: list(e.setResponseHeaders),
    appendResponseHeaders: list(e.appendResponseHeaders),
  }};
}}

function response(r) {{
  return {{ status: r.status, headers: list(r.headers), body: r.body == null ? new Uint8Array() : bytes(r.body) }};
}}

export function weirInit(config) {{
  let info;
  try {{
    info = policy.init ? policy.init(config) : undefined;
  }} catch (e) {{
    // The WIT error is a string: an Error becomes its message.
    throw typeof e === "string" ? e : String((e && e.message) || e);
  }}
  // The gateway calls only the phases the module exports (unless init says otherwise).
  const has = (f) => typeof f === "function";
  const phases = (info && info.phases) || {{}};
  const declared = (k, f) => (phases[k] === undefined ? has(f) : !!phases[k]);
  // `requestHeaders: ["authorization"]` shows onRequest only those headers; absent: all.
  const reads = info && Array.isArray(info.requestHeaders) ? info.requestHeaders.map(String) : undefined;
  return {{
    needsRequestBody: !!(info && info.needsRequestBody),
    needsResponseBody: !!(info && info.needsResponseBody),
    requestHeaders: reads,
    phases: {{
      onRequest: declared("onRequest", policy.onRequest),
      onResponse: declared("onResponse", policy.onResponse),
      onLog: declared("onLog", policy.onLog),
    }},
  }};
}}

export function onRequest(req) {{
  const a = policy.onRequest ? policy.onRequest(req) : undefined;
  if (a && a.tag === "respond") return {{ tag: "respond", val: response(a.val) }};
  return {{ tag: "continue", val: requestEdits(a && a.val) }};
}}

export function onResponse(resp) {{
  const e = (policy.onResponse ? policy.onResponse(resp) : undefined) || {{}};
  return {{
    status: opt(e.status),
    setHeaders: list(e.setHeaders),
    appendHeaders: list(e.appendHeaders),
    removeHeaders: list(e.removeHeaders),
    body: e.body == null ? null : bytes(e.body),
  }};
}}

export function onLog(entry) {{
  if (policy.onLog) policy.onLog(entry);
}}
"#
    )
}

/// Renames top-level exports of a component binary (`(from, to)` pairs, applied at once);
/// every `from` must be present. Nested components and all other sections are copied as is.
pub fn rename_exports(bytes: &[u8], renames: &[(&str, &str)]) -> Result<Vec<u8>, String> {
    const PREAMBLE: &[u8] = b"\0asm\x0d\x00\x01\x00";
    const EXPORT_SECTION: u8 = 11;
    if !bytes.starts_with(PREAMBLE) {
        return Err("not a WebAssembly component".into());
    }
    let mut out = PREAMBLE.to_vec();
    let mut r = Reader {
        b: bytes,
        pos: PREAMBLE.len(),
    };
    let mut seen = vec![false; renames.len()];
    while r.pos < bytes.len() {
        let id = r.byte()?;
        let size = r.u32()? as usize;
        let body = r.take(size)?;
        if id != EXPORT_SECTION {
            out.push(id);
            leb(&mut out, size as u32);
            out.extend_from_slice(body);
            continue;
        }
        let mut s = Reader { b: body, pos: 0 };
        let mut new = Vec::new();
        let count = s.u32()?;
        leb(&mut new, count);
        for _ in 0..count {
            let tag = s.byte()?;
            if tag > 1 {
                return Err(format!("unsupported export name encoding {tag:#x}"));
            }
            let len = s.u32()? as usize;
            let name = std::str::from_utf8(s.take(len)?).map_err(|e| e.to_string())?;
            let name = match renames.iter().position(|(from, _)| *from == name) {
                Some(i) => {
                    seen[i] = true;
                    renames[i].1
                }
                None => name,
            };
            new.push(tag);
            leb(&mut new, name.len() as u32);
            new.extend_from_slice(name.as_bytes());
            // sortidx, then an optional type ascription: copied byte for byte.
            let start = s.pos;
            if s.byte()? == 0 {
                s.byte()?; // core sort
            }
            s.u32()?;
            if s.byte()? == 1 {
                match s.byte()? {
                    0x00 => {
                        s.byte()?;
                        s.u32()?;
                    }
                    0x01 | 0x04 | 0x05 => {
                        s.u32()?; // func / component / instance type index
                    }
                    0x03 => {
                        if s.byte()? == 0 {
                            s.u32()?;
                        }
                    }
                    t => return Err(format!("unsupported export type {t:#x}")),
                }
            }
            new.extend_from_slice(&body[start..s.pos]);
        }
        if s.pos != body.len() {
            return Err("trailing bytes in an export section".into());
        }
        out.push(id);
        leb(&mut out, new.len() as u32);
        out.extend_from_slice(&new);
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(format!("the component has no export `{}`", renames[i].0));
    }
    Ok(out)
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let v = *self.b.get(self.pos).ok_or("unexpected end of component")?;
        self.pos += 1;
        Ok(v)
    }
    fn u32(&mut self) -> Result<u32, String> {
        let mut v: u64 = 0;
        for shift in (0..35).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return u32::try_from(v).map_err(|_| "LEB128 value too large".to_string());
            }
        }
        Err("LEB128 value too long".into())
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or("unexpected end of component")?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
}

fn leb(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn build_python(dir: &Path) -> Result<(PathBuf, String, bool), String> {
    let name = std::fs::read_to_string(dir.join("pyproject.toml"))
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| t.get("project")?.get("name")?.as_str().map(str::to_string))
        .unwrap_or_else(|| dir_name(dir));
    let tool = match find_up(dir, ".venv/bin/componentize-py") {
        Some(t) => t,
        None => match which("componentize-py") {
            Some(t) => t,
            None if dir.join("requirements.txt").exists() => {
                eprintln!("installing componentize-py into .venv (requirements.txt)...");
                let python = which("python3").unwrap_or_else(|| PathBuf::from("python3"));
                run_tool(
                    Command::new(python)
                        .current_dir(dir)
                        .args(["-m", "venv", ".venv"]),
                    "python3 -m venv",
                )?;
                run_tool(
                    Command::new(dir.join(".venv/bin/pip"))
                        .current_dir(dir)
                        .args(["install", "-q", "-r", "requirements.txt"]),
                    "pip install",
                )?;
                dir.join(".venv/bin/componentize-py")
            }
            None => {
                return Err("componentize-py not found: `pip install componentize-py==0.25.1` (in .venv or on PATH)".into());
            }
        },
    };
    let version = Command::new(&tool)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    let tool_id = String::from_utf8_lossy(&version.stdout).trim().to_string();

    let sources = source_files(dir, &["py"])
        .into_iter()
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("test"))
        })
        .collect::<Vec<_>>();
    let mut imports = BTreeSet::new();
    for f in &sources {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        scan_py_imports(&text, &mut imports)
            .map_err(|e| format!("{}: {e}", f.strip_prefix(dir).unwrap_or(f).display()))?;
    }
    // Bindings for tests and editors (the full contract, so tests can fake any capability).
    let wit = write_build_wit(dir, &build_world(&imports, "init"))?;
    let bindings = dir.join(".weir/bindings");
    // Regenerated whenever the contract changes (stale bindings would fail at run time).
    let stamp = bindings.join(".contract");
    let contract = std::fs::read_to_string(wit.join("policy.wit")).unwrap_or_default();
    let current = std::fs::read_to_string(&stamp).is_ok_and(|s| s == contract);
    if !current || !bindings.join("wit_world").exists() {
        let _ = std::fs::remove_dir_all(&bindings);
        run_tool(
            Command::new(&tool)
                .current_dir(dir)
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .arg("-d")
                .arg(&wit)
                .args(["-w", "policy", "bindings"])
                .arg(&bindings),
            "componentize-py bindings",
        )?;
        std::fs::write(&stamp, contract).map_err(|e| format!("{}: {e}", stamp.display()))?;
    }
    let mut hashed = sources.clone();
    hashed.extend(
        [dir.join("wit/policy.wit")]
            .into_iter()
            .filter(|p| p.exists()),
    );
    let key = source_hash(dir, &hashed, &tool_id)?;
    let cache = dir.join(".weir/cache");
    let cached = cache.join(format!("{key}.wasm"));
    if cached.exists() {
        return Ok((cached, name, true));
    }
    std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let tmp = cache.join(format!("{key}.wasm.tmp"));
    run_tool(
        Command::new(&tool)
            .current_dir(dir)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .arg("-d")
            .arg(&wit)
            .args(["-w", "built", "componentize", "app", "-p", "."])
            .arg("-o")
            .arg(&tmp),
        "componentize-py",
    )?;
    std::fs::rename(&tmp, &cached).map_err(|e| format!("{}: {e}", cached.display()))?;
    prune_cache(&cache, 8);
    Ok((cached, name, false))
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    })
}

/// Adds the interfaces a Python module imports from `wit_world.imports` to `out`.
fn scan_py_imports(text: &str, out: &mut BTreeSet<&'static str>) -> Result<(), String> {
    let mut add = |py: &str| -> Result<(), String> {
        let py = py.trim();
        let py = py.split_whitespace().next().unwrap_or(py); // `x as y`
        if py.is_empty() || py == "types" {
            return Ok(());
        }
        match INTERFACES.iter().find(|(_, p)| *p == py) {
            Some((wit, _)) => {
                out.insert(wit);
                Ok(())
            }
            None => Err(format!(
                "imports `wit_world.imports.{py}`, which the weir:policy@0.1.0 world does not have"
            )),
        }
    };
    for (i, _) in text.match_indices("wit_world.imports") {
        let rest = &text[i + "wit_world.imports".len()..];
        if let Some(sub) = rest.strip_prefix('.') {
            // `wit_world.imports.kv` (in `import` or `from ... import`).
            let name: String = sub
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            add(&name)?;
        } else if let Some(names) = rest.trim_start().strip_prefix("import") {
            // `from wit_world.imports import a, b as c` or with parentheses over lines.
            let names = names.trim_start();
            let list = if let Some(p) = names.strip_prefix('(') {
                p.split(')').next().unwrap_or("")
            } else {
                names.lines().next().unwrap_or("")
            };
            for n in list.split(',') {
                let n = n.split('#').next().unwrap_or("");
                add(n)?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// weir plugin test
// ---------------------------------------------------------------------------------------------

/// One request for [`test_plugin`].
#[derive(Debug, Clone)]
pub struct TestInput {
    pub wasm: PathBuf,
    pub config: Option<PathBuf>,
    pub method: String,
    pub path: String,
    pub headers: Vec<String>,
    pub body: Option<PathBuf>,
    pub client_ip: String,
    pub host: String,
    pub http_allow: Vec<String>,
    /// Compile cache (Python components take seconds to compile); `None` = compile every time.
    pub cache_dir: Option<PathBuf>,
}

/// The user's compile cache for `weir plugin test`: only that user writes it.
fn user_cache_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("WEIR_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("weir")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/weir")))
}

/// Reads a plugin config file (`.toml` or JSON) as JSON text.
fn config_json(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value: serde_json::Value = if path.extension().is_some_and(|e| e == "toml") {
        let t: toml::Table = text
            .parse()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::to_value(t).map_err(|e| format!("{}: {e}", path.display()))?
    } else {
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
    };
    Ok(value.to_string())
}

/// Loads the plugin on a fresh runtime (in-process kv and limiters), runs `on-request` once and
/// describes the decision.
pub async fn test_plugin(input: &TestInput) -> Result<String, String> {
    let config_json = match &input.config {
        Some(p) => config_json(p)?,
        None => "{}".into(),
    };
    let mut headers = Vec::new();
    for h in &input.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("--header {h:?}: expected NAME:VALUE"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let body = match &input.body {
        None => None,
        Some(p) if p.as_os_str() == "-" => {
            use std::io::Read as _;
            let mut b = Vec::new();
            std::io::stdin()
                .read_to_end(&mut b)
                .map_err(|e| format!("stdin: {e}"))?;
            Some(b)
        }
        Some(p) => Some(std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?),
    };
    let (path, query) = match input.path.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (input.path.clone(), None),
    };
    let id = input
        .wasm
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into());
    let rt = PolicyRuntime::new(RuntimeConfig {
        cache_dir: input.cache_dir.clone(),
        ..RuntimeConfig::default()
    })
    .or_else(|e| match input.cache_dir {
        // An unusable cache only costs time.
        Some(_) => PolicyRuntime::new(RuntimeConfig::default()),
        None => Err(e),
    })
    .map_err(|e| e.to_string())?;
    let mut spec = PluginSpec::new(id, &input.wasm);
    spec.config_json = config_json;
    spec.isolation = Isolation::Request;
    spec.http_allow = input.http_allow.clone();
    let loading = Instant::now();
    let plugin = rt.load(&spec).await.map_err(|e| e.to_string())?;
    let load_ms = loading.elapsed().as_secs_f64() * 1e3;
    // Like the gateway: only the headers the plugin declared it reads reach it.
    let headers = match &plugin.info.request_headers {
        Some(names) => headers
            .into_iter()
            .filter(|(n, _)| names.iter().any(|d| d.eq_ignore_ascii_case(n)))
            .collect(),
        None => headers,
    };
    let req = PolicyRequest {
        method: input.method.to_ascii_uppercase(),
        path,
        query,
        headers,
        body: body.filter(|_| plugin.info.needs_request_body),
        client_ip: input.client_ip.clone(),
        route: "test".into(),
        request_id: "weir-plugin-test".into(),
        scheme: "http".into(),
        host: input.host.clone(),
    };
    let before = req.clone();
    let mut cx = RequestContext::new();
    let mut session = Arc::clone(&plugin).session();
    let calling = Instant::now();
    let action = session
        .on_request(&mut cx, req)
        .await
        .map_err(|e| e.to_string())?;
    let call_us = calling.elapsed().as_secs_f64() * 1e6;

    let mut s = String::new();
    let _ = writeln!(
        s,
        "plugin: {} (loaded in {load_ms:.0} ms, needs request body: {}, on-request took {call_us:.0} µs)",
        input.wasm.display(),
        if plugin.info.needs_request_body {
            "yes"
        } else {
            "no"
        }
    );
    describe(&mut s, &before, &action);
    for (k, v) in cx.entries() {
        let _ = writeln!(s, "context: {k} = {v}");
    }
    Ok(s)
}

/// Writes the decision: status, headers and body of a local response, or the edits.
fn describe(s: &mut String, before: &PolicyRequest, action: &Action) {
    match action {
        Action::Respond(r) => {
            let _ = writeln!(s, "decision: respond");
            let _ = writeln!(s, "status: {}", r.status);
            for (k, v) in &r.headers {
                let _ = writeln!(s, "header: {k}: {v}");
            }
            write_body(s, "body", &r.body);
        }
        Action::Continue(e) => {
            let _ = writeln!(s, "decision: continue");
            let mut changed = false;
            let mut line = |t: String| {
                changed = true;
                let _ = writeln!(s, "{t}");
            };
            if let Some(m) = &e.method {
                line(format!("method: {} -> {m}", before.method));
            }
            if let Some(p) = &e.path {
                line(format!("path: {} -> {p}", before.path));
            }
            if let Some(q) = &e.query {
                let old = before.query.as_deref().unwrap_or("");
                line(if q.is_empty() {
                    format!("query: {old} -> (removed)")
                } else {
                    format!("query: {old} -> {q}")
                });
            }
            for (k, v) in &e.set_headers {
                line(format!("set-header: {k}: {v}"));
            }
            for (k, v) in &e.append_headers {
                line(format!("append-header: {k}: {v}"));
            }
            for k in &e.remove_headers {
                line(format!("remove-header: {k}"));
            }
            if let Some(b) = &e.body {
                line(format!("body: replaced ({} bytes)", b.len()));
            }
            for (k, v) in &e.set_response_headers {
                line(format!("set-response-header: {k}: {v}"));
            }
            for (k, v) in &e.append_response_headers {
                line(format!("append-response-header: {k}: {v}"));
            }
            if !changed {
                let _ = writeln!(s, "no changes");
            }
        }
    }
}

fn write_body(s: &mut String, label: &str, body: &[u8]) {
    match std::str::from_utf8(body) {
        Ok("") => {
            let _ = writeln!(s, "{label}: (empty)");
        }
        Ok(text) => {
            let _ = writeln!(s, "{label}: {text}");
        }
        Err(_) => {
            let _ = writeln!(s, "{label}: ({} bytes, not UTF-8)", body.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component preamble + one export section with `names` (func exports, no ascription),
    /// surrounded by an unrelated section.
    fn component(names: &[&str]) -> Vec<u8> {
        let mut sec = Vec::new();
        leb(&mut sec, names.len() as u32);
        for (i, n) in names.iter().enumerate() {
            sec.push(0);
            leb(&mut sec, n.len() as u32);
            sec.extend_from_slice(n.as_bytes());
            sec.push(1); // sort: func
            leb(&mut sec, i as u32 * 200); // multi-byte LEB for i > 0
            sec.push(0); // no type ascription
        }
        let mut c = b"\0asm\x0d\x00\x01\x00".to_vec();
        c.extend_from_slice(&[0, 3, 1, 2, 3]); // custom section
        c.push(11);
        leb(&mut c, sec.len() as u32);
        c.extend_from_slice(&sec);
        c
    }

    #[test]
    fn renames_exports_and_rewrites_the_section_size() {
        let old = component(&["init", "weir-init", "on-request"]);
        let new = rename_exports(
            &old,
            &[("init", "componentize-qjs-init"), ("weir-init", "init")],
        )
        .unwrap();
        assert_eq!(
            new,
            component(&["componentize-qjs-init", "init", "on-request"])
        );
        let err = rename_exports(&old, &[("missing", "x")]).unwrap_err();
        assert!(err.contains("no export `missing`"), "{err}");
        assert!(rename_exports(b"\0asm\x01\0\0\0", &[]).is_err());
        assert!(rename_exports(&old[..old.len() - 2], &[]).is_err());
    }

    #[test]
    fn finds_imported_interfaces() {
        let mut js = BTreeSet::new();
        scan_js_imports(
            "import log from \"weir:policy/log@0.1.0\";\nimport kv from 'weir:policy/kv@0.1.0';",
            &mut js,
        )
        .unwrap();
        assert_eq!(js.into_iter().collect::<Vec<_>>(), ["kv", "log"]);
        let mut bad = BTreeSet::new();
        assert!(scan_js_imports("import x from 'weir:policy/files'", &mut bad).is_err());
        scan_js_imports(
            "// see weir:policy/<interface>@0.1.0 and weir:policy/kv.",
            &mut bad,
        )
        .unwrap();
        assert!(bad.is_empty());

        let mut py = BTreeSet::new();
        scan_py_imports(
            "from wit_world.imports import log, rate_limit as rl\n\
             from wit_world.imports import (\n    kv,  # store\n    types,\n)\n\
             import wit_world.imports.http_client\nfrom wit_world.imports.types import Request\n",
            &mut py,
        )
        .unwrap();
        assert_eq!(
            py.into_iter().collect::<Vec<_>>(),
            ["http-client", "kv", "log", "rate-limit"]
        );
    }

    #[test]
    fn trimmed_world_lists_only_used_imports() {
        let w = build_world(&BTreeSet::from(["log"]), "weir-init");
        assert!(w.contains("import log;"));
        assert!(!w.contains("import kv;"));
        assert!(w.contains("export weir-init: func(config: string)"));
    }

    #[test]
    fn names_are_checked_and_projects_not_overwritten() {
        for bad in ["", "Bad", "1x", "a_b", "x-"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        check_name("my-policy2").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        let err = new_project("p", Lang::Js, Some(dir.path()), None).unwrap_err();
        assert!(err.contains("not empty"), "{err}");
    }

    #[test]
    fn templates_render_without_leftover_placeholders() {
        for lang in [Lang::Rust, Lang::Js, Lang::Python] {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("p");
            new_project("demo-plugin", lang, Some(&p), None).unwrap();
            for f in source_files(&p, &["toml", "rs", "js", "mjs", "py", "md", "json"]) {
                let text = std::fs::read_to_string(&f).unwrap();
                assert!(!text.contains("{{"), "{} has a placeholder", f.display());
            }
            assert_eq!(detect(&p).unwrap(), lang);
        }
    }
}
