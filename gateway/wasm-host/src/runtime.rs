//! The engine, the linker, shared host services, the epoch ticker, and plugin loading
//! (compile or load from the on-disk cache, check imports against grants, pre-instantiate,
//! run `init`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::{Policy, PolicyPre};
use crate::error::{LoadError, LoadErrorKind, PluginErrorKind, RuntimeError};
use crate::host::http::{AllowRule, HttpClient};
use crate::host::jwt::{KeySetSpec, KeySets};
use crate::host::kv::{InProcessKv, KvBackend, namespace};
use crate::host::metrics::CustomMetrics;
use crate::host::rate_limit::{InProcessLimiter, RateLimitBackend};
use crate::metrics::RuntimeMetrics;
use crate::plugin::{LoadedPlugin, PluginCore, PluginShared, PluginSpec};
use crate::state::HostState;
use crate::types::Isolation;

/// Settings of a [`PolicyRuntime`]. `Default` gives in-process kv/limiters and no key sets.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where compiled components are cached (`<sha256>-<engine>.cwasm`); `None` = no cache.
    /// Must be writable only by the gateway: cached code is loaded without re-validation.
    pub cache_dir: Option<PathBuf>,
    /// JWT key sets by name (`[key_sets.NAME]`).
    pub key_sets: HashMap<String, KeySetSpec>,
    pub kv: Arc<dyn KvBackend>,
    pub limiter: Arc<dyn RateLimitBackend>,
    /// Epoch tick: the granularity of CPU deadlines (default 5 ms).
    pub epoch_tick: Duration,
    /// Instance slots of the pooling allocator (all plugins, busy + idle). A request-isolation
    /// session holds its slot for the whole request, so this also bounds concurrent requests
    /// through such plugins; when exhausted, calls fail with `PluginErrorKind::Internal`.
    pub max_instances: u32,
    /// Largest per-plugin `memory_limit` accepted (sizes the pool's memory slots).
    pub max_memory_limit: u64,
    /// Warm instances kept per pooled plugin.
    pub max_idle_per_plugin: usize,
    /// Default and maximum timeout of a plugin's outbound HTTP request.
    pub http_timeout: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            key_sets: HashMap::new(),
            kv: Arc::new(InProcessKv::default()),
            limiter: Arc::new(InProcessLimiter::default()),
            epoch_tick: Duration::from_millis(5),
            max_instances: 1000,
            max_memory_limit: 256 * 1024 * 1024,
            max_idle_per_plugin: 16,
            http_timeout: Duration::from_secs(10),
        }
    }
}

/// Key sets loaded by [`PolicyRuntime::prepare_key_sets`]: a generation of the gateway's
/// `[key_sets]`, held by the plugins loaded with it (a reload's new plugins get new ones while
/// requests on the old table keep verifying with the old).
#[derive(Clone, Debug)]
pub struct PreparedKeySets(Arc<KeySets>);

/// Host services shared by every plugin of a runtime.
pub(crate) struct Services {
    pub(crate) kv: Arc<dyn KvBackend>,
    pub(crate) limiter: Arc<dyn RateLimitBackend>,
    /// The key sets of plugins whose spec names none (see [`PluginSpec::key_sets`]).
    pub(crate) key_sets: Arc<KeySets>,
    pub(crate) http: HttpClient,
    pub(crate) http_timeout: Duration,
    pub(crate) custom_metrics: Arc<CustomMetrics>,
}

/// Advances the engine epoch every tick from a plain thread (works with any executor and keeps
/// ticking while every tokio worker is busy running guests). Stops when the runtime is dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine, tick: Duration) -> Result<Self, RuntimeError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| RuntimeError::Engine(format!("epoch thread: {e}")))?;
        Ok(EpochTicker { stop })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The engine and its linker.
struct Wasm {
    engine: Engine,
    linker: Linker<HostState>,
}

impl Wasm {
    /// The engine (async, epochs, pooling allocator with copy-on-write memory images) and the
    /// linker (restricted WASI p2 + the weir:policy capabilities).
    fn build(max_instances: u32, max_memory_limit: u64) -> Result<Self, RuntimeError> {
        let n = max_instances.max(1);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(n)
            // A Rust guest is one core instance plus wit-component shims; other toolchains more.
            .total_core_instances(n.saturating_mul(4))
            .total_memories(n)
            .total_tables(n.saturating_mul(4))
            .total_stacks(n)
            .max_memory_size(usize::try_from(max_memory_limit).unwrap_or(usize::MAX))
            // Reset the first MiBs of a recycled slot with memset instead of madvise, so the
            // next instance does not page-fault on its heap and stack (GUIDE §1: ~5x faster).
            .linear_memory_keep_resident(4 << 20)
            .table_keep_resident(64 << 10)
            // Linux ≥ 6.7: reset only the pages that were actually touched, instead of
            // memsetting the whole kept-resident prefix on every instance (~45% of a fresh
            // noop request before this).
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .memory_init_cow(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(engine_err)?;

        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_err)?;
        Policy::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(engine_err)?;
        Ok(Wasm { engine, linker })
    }
}

struct RuntimeInner {
    /// Built by the first plugin load: the pooling allocator reserves address space for every
    /// instance slot up front, which a gateway without plugins has no use for and which
    /// valgrind (and a tight `ulimit -v`) refuse.
    wasm: Mutex<Option<Arc<Wasm>>>,
    max_instances: u32,
    services: Arc<Services>,
    metrics: RuntimeMetrics,
    cache_dir: Option<PathBuf>,
    epoch_tick: Duration,
    max_memory_limit: u64,
    max_idle: usize,
    /// Started by the first plugin load: a gateway without plugins keeps no thread waking
    /// every `epoch_tick`.
    ticker: Mutex<Option<EpochTicker>>,
}

impl RuntimeInner {
    /// The engine and linker, built on first use.
    fn wasm(&self) -> Result<Arc<Wasm>, RuntimeError> {
        let mut wasm = self.wasm.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = &*wasm {
            return Ok(w.clone());
        }
        let w = Arc::new(Wasm::build(self.max_instances, self.max_memory_limit)?);
        *wasm = Some(w.clone());
        Ok(w)
    }

    fn ensure_ticker(&self, engine: &Engine) -> Result<(), RuntimeError> {
        let mut ticker = self.ticker.lock().unwrap_or_else(|e| e.into_inner());
        if ticker.is_none() {
            *ticker = Some(EpochTicker::start(engine.clone(), self.epoch_tick)?);
        }
        Ok(())
    }
}

/// The Wasm policy runtime: one per gateway process. Cheap to clone.
#[derive(Clone)]
pub struct PolicyRuntime {
    inner: Arc<RuntimeInner>,
}

impl std::fmt::Debug for PolicyRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyRuntime")
            .field("cache_dir", &self.inner.cache_dir)
            .finish_non_exhaustive()
    }
}

fn engine_err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Engine(e.to_string())
}

impl PolicyRuntime {
    /// Loads key sets and prepares the cache; the engine is built by the first plugin load.
    pub fn new(cfg: RuntimeConfig) -> Result<Self, RuntimeError> {
        if cfg.epoch_tick.is_zero() {
            return Err(RuntimeError::Engine("epoch_tick must be > 0".into()));
        }
        if let Some(dir) = &cfg.cache_dir {
            std::fs::create_dir_all(dir).map_err(|source| RuntimeError::CacheDir {
                path: dir.clone(),
                source,
            })?;
        }
        let http = HttpClient::new().map_err(RuntimeError::Engine)?;
        let services = Arc::new(Services {
            kv: cfg.kv,
            limiter: cfg.limiter,
            key_sets: Arc::new(KeySets::load(&cfg.key_sets, http.clone(), None)?),
            http,
            http_timeout: cfg.http_timeout,
            custom_metrics: Arc::new(CustomMetrics::default()),
        });
        Ok(PolicyRuntime {
            inner: Arc::new(RuntimeInner {
                wasm: Mutex::new(None),
                max_instances: cfg.max_instances,
                services,
                metrics: RuntimeMetrics::default(),
                cache_dir: cfg.cache_dir,
                epoch_tick: cfg.epoch_tick,
                max_memory_limit: cfg.max_memory_limit,
                max_idle: cfg.max_idle_per_plugin,
                ticker: Mutex::new(None),
            }),
        })
    }

    /// Loads `specs` (key files read now, so a bad one fails here) for plugins loaded with
    /// them ([`PluginSpec::key_sets`]); remote sets unchanged from `previous` keep their keys.
    pub fn prepare_key_sets(
        &self,
        specs: &HashMap<String, KeySetSpec>,
        previous: Option<&PreparedKeySets>,
    ) -> Result<PreparedKeySets, RuntimeError> {
        let sets = KeySets::load(
            specs,
            self.inner.services.http.clone(),
            previous.map(|p| &*p.0),
        )?;
        Ok(PreparedKeySets(Arc::new(sets)))
    }

    /// The key sets the runtime was created with: those of a plugin whose spec names none.
    pub fn initial_key_sets(&self) -> PreparedKeySets {
        PreparedKeySets(self.inner.services.key_sets.clone())
    }

    /// Whether the epoch thread (the clock of the plugins' CPU deadlines) runs: from the first
    /// plugin load on.
    pub fn epoch_ticking(&self) -> bool {
        self.inner
            .ticker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Call once per registry; names get the registry's prefix (the gateway's is `weir`, giving
    /// `weir_plugin_calls_total`). Registers the runtime metrics (calls, latency, failures by kind, instantiations) and the
    /// plugins' custom metrics, all labelled with `plugin`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.inner.metrics.register(registry);
        registry.register_collector(Box::new(self.inner.services.custom_metrics.clone()));
    }

    /// Compiles (or loads from the cache), checks imports against grants, pre-instantiates and
    /// runs `init` once. CPU-heavy: call at start or reload, never on the request path.
    pub async fn load(&self, spec: &PluginSpec) -> Result<Arc<LoadedPlugin>, LoadError> {
        let fail = |kind: LoadErrorKind| LoadError {
            plugin: spec.id.clone(),
            file: spec.wasm.clone(),
            kind,
        };
        let inner = &self.inner;
        validate_spec(spec, inner.max_memory_limit)
            .map_err(|e| fail(LoadErrorKind::InvalidSpec(e)))?;
        let wasm = inner
            .wasm()
            .map_err(|e| fail(LoadErrorKind::Instantiate(e.to_string())))?;
        // Guests run from here on (`init` below): their CPU deadline needs the epoch to move.
        inner
            .ensure_ticker(&wasm.engine)
            .map_err(|e| fail(LoadErrorKind::Instantiate(e.to_string())))?;
        let http_allow = spec
            .http_allow
            .iter()
            .map(|e| AllowRule::parse(e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(LoadErrorKind::InvalidSpec(format!("http_allow: {e}"))))?;

        let bytes = tokio::fs::read(&spec.wasm)
            .await
            .map_err(|e| fail(LoadErrorKind::Read(e)))?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let engine = wasm.engine.clone();
        let cache_dir = inner.cache_dir.clone();
        let key = sha256.clone();
        let component = tokio::task::spawn_blocking(move || {
            compile_cached(&engine, cache_dir.as_deref(), &bytes, &key)
        })
        .await
        .map_err(|e| fail(LoadErrorKind::Compile(format!("compile task: {e}"))))?
        .map_err(|e| fail(LoadErrorKind::Compile(e)))?;

        check_grants(&wasm.engine, &component, spec).map_err(fail)?;
        let pre = wasm
            .linker
            .instantiate_pre(&component)
            .map_err(|e| fail(LoadErrorKind::Instantiate(format!("{e:#}"))))?;
        let pre =
            PolicyPre::new(pre).map_err(|e| fail(LoadErrorKind::NotAPolicy(format!("{e:#}"))))?;

        let shared = Arc::new(PluginShared {
            id: Arc::from(spec.id.as_str()),
            kv_namespace: namespace(&spec.id),
            http_allow,
            key_sets: spec
                .key_sets
                .as_ref()
                .map_or_else(|| inner.services.key_sets.clone(), |k| k.0.clone()),
            services: inner.services.clone(),
        });
        let core = PluginCore::new(
            wasm.engine.clone(),
            pre,
            shared,
            spec,
            inner.epoch_tick,
            inner.max_idle,
            inner.metrics.for_plugin(&spec.id),
        );
        let mut plugin = LoadedPlugin {
            id: spec.id.clone(),
            name: spec.name.clone(),
            wasm: spec.wasm.clone(),
            sha256,
            loaded_at: SystemTime::now(),
            info: Default::default(),
            on_error: spec.on_error,
            isolation: spec.isolation,
            core,
        };
        plugin.info = plugin
            .first_instance()
            .await
            .map_err(|(kind, msg)| match kind {
                PluginErrorKind::Internal if msg.starts_with("init failed: ") => fail(
                    LoadErrorKind::Init(msg.trim_start_matches("init failed: ").to_string()),
                ),
                PluginErrorKind::Internal => fail(LoadErrorKind::Instantiate(msg)),
                kind => fail(LoadErrorKind::FirstInstance(kind, msg)),
            })?;
        tracing::info!(
            plugin = %spec.id,
            file = %spec.wasm.display(),
            sha256 = %&plugin.sha256[..12],
            isolation = ?spec.isolation,
            "plugin loaded"
        );
        Ok(Arc::new(plugin))
    }
}

fn validate_spec(spec: &PluginSpec, max_memory: u64) -> Result<(), String> {
    if spec.id.is_empty() {
        return Err("id must not be empty".into());
    }
    if spec.memory_limit == 0 || spec.memory_limit > max_memory {
        return Err(format!(
            "memory_limit must be between 1 and {max_memory} bytes"
        ));
    }
    if spec.cpu_limit.is_zero() {
        return Err("cpu_limit must be > 0".into());
    }
    if spec.isolation == Isolation::Pooled && spec.max_uses == 0 {
        return Err("max_uses must be > 0".into());
    }
    Ok(())
}

/// WASI 0.2 packages the linker provides (filesystem has no preopens, sockets are denied).
const WASI_PACKAGES: &[&str] = &["cli", "io", "clocks", "random", "filesystem", "sockets"];
const POLICY_INTERFACES: &[&str] = &[
    "types",
    "log",
    "context",
    "kv",
    "rate-limit",
    "jwt",
    "metrics",
    "http-client",
];

/// Refuses imports the plugin was not granted, naming the import and how to grant it.
fn check_grants(
    engine: &Engine,
    component: &Component,
    spec: &PluginSpec,
) -> Result<(), LoadErrorKind> {
    for (name, _) in component.component_type().imports(engine) {
        let refuse = |hint: String| {
            Err(LoadErrorKind::ImportNotGranted {
                import: name.to_string(),
                hint,
            })
        };
        let (path, version) = name.split_once('@').unwrap_or((name, ""));
        if let Some(iface) = path.strip_prefix("weir:policy/") {
            if !POLICY_INTERFACES.contains(&iface) {
                return refuse(format!(
                    "this gateway has no weir:policy interface `{iface}` (it provides weir:policy@0.1.0)"
                ));
            }
            if iface == "http-client" && spec.http_allow.is_empty() {
                return refuse(format!(
                    "the plugin makes outbound HTTP calls; list the destinations it may reach in plugin `{}`'s \
                     `http_allow` (e.g. http_allow = [\"https://api.example.com\"])",
                    spec.id
                ));
            }
        } else if let Some(rest) = path.strip_prefix("wasi:") {
            let package = rest.split('/').next().unwrap_or(rest);
            if !WASI_PACKAGES.contains(&package) {
                return refuse(format!(
                    "wasi:{package} is not available to plugins (only wasi:cli, io, clocks, random; \
                     filesystem and sockets are linked but empty); use weir:policy capabilities instead"
                ));
            }
            if !version.starts_with("0.2.") {
                return refuse(format!(
                    "only WASI 0.2 is linked; build the plugin for wasm32-wasip2 (found `{version}`)"
                ));
            }
        } else {
            return refuse(
                "plugins may import only weir:policy/* and WASI 0.2 interfaces; remove the dependency that needs it".into(),
            );
        }
    }
    Ok(())
}

/// Feeds `Hash` output into SHA-256, giving a stable digest of the engine's compile settings.
struct ShaHasher(Sha256);

impl std::hash::Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn engine_fingerprint(engine: &Engine) -> String {
    use std::hash::Hash;
    let mut h = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    hex::encode(&h.0.finalize()[..8])
}

/// Compiles `bytes`, going through `<cache_dir>/<sha256>-<engine>.cwasm` when a cache is set.
/// A cache entry that fails to load is recompiled and rewritten; cache write failures are
/// logged, never fatal.
fn compile_cached(
    engine: &Engine,
    cache_dir: Option<&Path>,
    bytes: &[u8],
    sha256: &str,
) -> Result<Component, String> {
    let Some(dir) = cache_dir else {
        return Component::new(engine, bytes).map_err(|e| format!("{e:#}"));
    };
    let path = dir.join(format!("{sha256}-{}.cwasm", engine_fingerprint(engine)));
    if path.exists() {
        match load_cached(engine, &path) {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unusable cache entry: {e:#}")
            }
        }
    }
    let component = Component::new(engine, bytes).map_err(|e| format!("{e:#}"))?;
    let written = component
        .serialize()
        .map_err(|e| e.to_string())
        .and_then(|data| {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, data)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), "could not write compile cache: {e}");
    }
    Ok(component)
}

/// The only `unsafe` in Weir.
#[allow(unsafe_code)]
fn load_cached(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: `deserialize_file` trusts the file to be a `Component::serialize` output of a
    // compatible engine. Entries are written only by `compile_cached` above (atomically, via
    // rename) into the operator-owned cache directory, and named by the SHA-256 of the source
    // and the engine's compatibility hash, so a file is only ever read by an engine that could
    // have written it. wasmtime additionally checks the header and engine settings and errors
    // (rather than misbehaving) on a mismatch. The directory must not be writable by others.
    unsafe { Component::deserialize_file(engine, path) }
}
