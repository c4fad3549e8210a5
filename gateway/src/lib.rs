//! Weir: an API gateway whose policies are WebAssembly components.
//!
//! The crate is laid out by concern:
//! - [`config`]: TOML → validated model (`weir validate` prints every error with its location);
//! - [`server`] and [`tls`]: listeners, HTTP/1.1 + HTTP/2, TLS termination, graceful drain;
//! - [`proxy`]: the request path, one step per function, in order;
//! - [`router`], [`upstream`]: routing, load balancing, health, pools;
//! - [`policy`]: the per-route Wasm policy chains (runtime in the `weir-wasm-host` crate);
//!   [`cluster`]: their rate limits and kv shared across instances through Redis;
//! - [`state`]: the hot-swappable table and reloads; [`admin`], [`metrics`], [`access`]: observability;
//! - [`error`]: the one place errors become HTTP responses.

pub mod access;
pub mod admin;
pub mod body;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod error;
pub mod framing;
pub mod metrics;
pub mod park;
pub mod plugin_cli;
pub mod policy;
pub mod proxy;
pub mod router;
pub mod run;
pub mod server;
pub mod state;
pub mod tls;
pub mod upstream;

/// Where the build step put the first-party plugins and test fixtures (see `gateway/build.rs`).
pub mod bundled {
    /// `plugins/target/wasm32-wasip2/release` of this source tree.
    pub const PLUGIN_DIR: &str = env!("WEIR_PLUGIN_DIR");
    /// `plugins/fixtures/target/wasm32-wasip2/release` of this source tree.
    pub const FIXTURE_DIR: &str = env!("WEIR_FIXTURE_DIR");
}
