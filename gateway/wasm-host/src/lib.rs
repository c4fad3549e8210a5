//! Weir's WebAssembly policy runtime.
//!
//! A policy is a WebAssembly component implementing the `weir:policy/policy` world
//! (`wit/policy.wit`). The gateway uses this crate in three steps:
//!
//! 1. **Once per process**: [`PolicyRuntime::new`] builds the wasmtime engine (async, pooling
//!    allocator, epoch interruption for CPU deadlines), the linker (restricted WASI + the host
//!    capabilities) and the shared services (kv, rate limiter, JWT key sets, outbound HTTP).
//! 2. **At start and reload**: [`PolicyRuntime::load`] turns a [`PluginSpec`] into an
//!    [`Arc<LoadedPlugin>`]: compile (or load the on-disk cache), refuse ungranted imports,
//!    pre-instantiate, run `init` with the plugin's config. All failures are [`LoadError`]s
//!    naming the plugin and file.
//! 3. **Per request**: [`LoadedPlugin::session`] gives a [`PluginSession`]; call
//!    [`on_request`](PluginSession::on_request), [`on_response`](PluginSession::on_response),
//!    [`on_log`](PluginSession::on_log) with the chain's shared [`RequestContext`]. A failure is
//!    a [`PluginError`] whose [`kind`](PluginErrorKind) the gateway maps through the plugin's
//!    [`FailMode`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use weir_wasm_host::*;
//! let rt = PolicyRuntime::new(RuntimeConfig::default())?;
//! let plugin = rt.load(&PluginSpec::new("auth", "plugins/auth.wasm")).await?;
//! let mut cx = RequestContext::new();
//! let mut session = plugin.session();
//! match session.on_request(&mut cx, PolicyRequest::default()).await? {
//!     Action::Continue(edits) => { /* apply edits, proxy */ }
//!     Action::Respond(resp) => { /* answer now */ }
//! }
//! # Ok(()) }
//! ```
//!
//! Isolation: [`Isolation::Request`] gives each request a fresh instance (no state leaks, ~tens
//! of µs); [`Isolation::Pooled`] reuses warm instances (a few µs), recycling them after
//! `max_uses` calls or any failure. Guest stdout/stderr and `log` calls go to tracing under the
//! target `weir::plugin` with a `plugin` field.

#![deny(unsafe_code)]

mod bindings;
mod error;
pub mod host;
mod metrics;
mod plugin;
mod runtime;
mod state;
mod types;

pub use error::{LoadError, LoadErrorKind, PluginError, PluginErrorKind, RuntimeError};
pub use host::jwt::KeySetSpec;
pub use host::kv::{InProcessKv, KvBackend};
pub use host::rate_limit::{InProcessLimiter, RateDecision, RateLimitBackend, RateQuota};
pub use plugin::{LoadedPlugin, PluginSession, PluginSpec};
pub use runtime::{PolicyRuntime, PreparedKeySets, RuntimeConfig};
pub use types::{
    Action, FailMode, Fields, Isolation, LocalResponse, LogEntry, Phases, PluginInfo,
    PolicyRequest, RequestContext, RequestEdits, ResponseEdits, ResponseHead,
};
