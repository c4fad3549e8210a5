//! # Writing Weir policies in Rust
//!
//! A Weir policy is a WebAssembly component that the gateway calls at fixed phases of every
//! request on the routes it is attached to. With this SDK a policy is **one `impl` of
//! [`Policy`]** plus one [`export_policy!`] line; the WIT contract and its generated bindings
//! stay hidden inside the SDK.
//!
//! ## A complete plugin
//!
//! ```
//! use weir_plugin_sdk::prelude::*;
//!
//! /// The route's `config = { ... }` table, deserialised for you before the first request.
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     header: String,
//! }
//!
//! struct AddHeader {
//!     cfg: Config,
//! }
//!
//! impl Policy for AddHeader {
//!     type Config = Config;
//!
//!     /// Runs once per instance; an `Err` rejects the config (shown to the operator).
//!     fn new(cfg: Config) -> Result<Self, String> {
//!         if cfg.header.is_empty() {
//!             return Err("`header` must not be empty".into());
//!         }
//!         Ok(Self { cfg })
//!     }
//!
//!     fn on_request(&self, req: &Request) -> Action {
//!         let who = context::get("consumer").unwrap_or_else(|| "anonymous".into());
//!         log::debug("tagging request", &[("path", &req.path), ("consumer", &who)]);
//!         Action::Continue(RequestEdits::default().set_header(&self.cfg.header, &who))
//!     }
//!     // `info`, `on_response` and `on_log` keep their no-op defaults.
//! }
//!
//! export_policy!(AddHeader);
//! ```
//!
//! `Cargo.toml` of such a plugin:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib", "rlib"]   # cdylib = the component, rlib = native unit tests
//!
//! [dependencies]
//! weir-plugin-sdk = { path = "../../plugin-sdk" }
//! serde = { version = "1", features = ["derive"] }   # `#[derive(Deserialize)]` needs it by name
//!
//! [dev-dependencies]
//! weir-plugin-sdk = { path = "../../plugin-sdk", features = ["testing"] }
//! ```
//!
//! Build the component with `cargo build --release --target wasm32-wasip2`; the output
//! `target/wasm32-wasip2/release/<crate_name>.wasm` is what a route's `wasm = "..."` points to.
//!
//! ## Phases
//!
//! | method | when | may |
//! |---|---|---|
//! | [`Policy::new`] | once per instance, with the route's config | reject the config |
//! | [`Policy::info`] | right after `new` | declare the phases it implements and ask for bodies ([`PluginInfo`]) |
//! | [`Policy::on_request`] | before proxying | edit the request ([`RequestEdits`]) or answer it ([`Response`]) |
//! | [`Policy::on_response`] | before the response head goes to the client | edit the response ([`ResponseEdits`]) |
//! | [`Policy::on_log`] | after the response was sent | observe ([`LogEntry`]) |
//!
//! Only the phases declared in [`PluginInfo`] are called (default: all). Plugins of a route run
//! in order; the first [`Action::Respond`] ends the chain (later plugins and the upstream are
//! skipped). `on_response` runs for every plugin whose `on_request` ran,
//! including for locally produced responses. The gateway may keep an instance for many requests
//! (`isolation = "pooled"`) or create one per request (`isolation = "request"`): keep
//! per-request data in [`context`], never in `self`.
//!
//! ## Capabilities
//!
//! The gateway offers a small set of host functions, exposed here as plain modules:
//! [`log`], [`context`] (request-scoped key/values shared along the chain), [`kv`] (a shared
//! store), [`rate_limit`] (GCRA limiter), [`jwt`] (signature and claims checks against key sets
//! in the gateway config), [`http`] (outbound HTTP, needs a grant) and [`metrics`].
//! A capability that a plugin never calls is not imported by its component, so the gateway
//! knows exactly what each plugin can do.
//!
//! ## Testing
//!
//! With the `testing` feature (a dev-dependency), the capabilities are backed by a native mock
//! host and `testing::Harness` drives a policy like the gateway does:
//!
//! ```
//! # use weir_plugin_sdk::prelude::*;
//! # #[derive(Deserialize)] struct Config { header: String }
//! # struct AddHeader { cfg: Config }
//! # impl Policy for AddHeader {
//! #     type Config = Config;
//! #     fn new(cfg: Config) -> Result<Self, String> { Ok(Self { cfg }) }
//! #     fn on_request(&self, _r: &Request) -> Action {
//! #         let who = context::get("consumer").unwrap_or_else(|| "anonymous".into());
//! #         RequestEdits::default().set_header(&self.cfg.header, &who).into()
//! #     }
//! # }
//! # #[cfg(feature = "testing")] {
//! use weir_plugin_sdk::testing::Harness;
//!
//! let mut h = Harness::<AddHeader>::new(json!({ "header": "x-consumer" })).unwrap();
//! let action = h.on_request_with_context(Request::get("/x"), &[("consumer", "alice")]);
//! assert_eq!(action.edits().unwrap().set_header_value("x-consumer"), Some("alice"));
//! # }
//! ```
//!
//! Run them with plain `cargo test` on the host target. See `testing::MockHost` for programming
//! JWT answers, HTTP responses, kv contents and the clock, and for reading captured logs and
//! metrics.
//!
//! ## Failure
//!
//! A panic or trap inside a plugin fails the request closed (503) unless the route says
//! `on_error = "open"`; the instance is discarded. Prefer returning a [`Response`] over
//! panicking: [`Response::problem`] builds the `application/problem+json` answers the gateway
//! itself uses.

pub mod context;
pub mod http;
pub mod jwt;
pub mod kv;
pub mod log;
pub mod metrics;
pub mod rate_limit;
mod types;

pub use types::{
    Action, Fields, LogEntry, Phases, PluginInfo, Request, RequestBuilder, RequestEdits, Response,
    ResponseEdits, ResponseHead, find_header, form_decode,
};

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod bindings;
#[cfg(target_arch = "wasm32")]
use bindings as backend;

#[cfg(any(test, all(feature = "allocator", target_arch = "wasm32")))]
mod alloc;

/// The guest's allocator (feature `allocator`, on by default; see [`alloc`]). Only where a
/// guest has no threads, which the allocator relies on.
#[cfg(all(
    feature = "allocator",
    target_arch = "wasm32",
    not(target_feature = "atomics")
))]
#[global_allocator]
static ALLOCATOR: alloc::SizeClasses<std::alloc::System> =
    alloc::SizeClasses::new(std::alloc::System);

#[cfg(all(not(target_arch = "wasm32"), any(test, feature = "testing")))]
pub mod testing;
#[cfg(all(not(target_arch = "wasm32"), any(test, feature = "testing")))]
use testing as backend;

#[cfg(all(not(target_arch = "wasm32"), not(any(test, feature = "testing"))))]
mod unavailable;
#[cfg(all(not(target_arch = "wasm32"), not(any(test, feature = "testing"))))]
use unavailable as backend;

use serde::de::DeserializeOwned;

/// One policy: a typed config and up to four phases, each with a no-op default.
///
/// The gateway creates an instance with [`Policy::new`] from the route's config and then calls
/// the phases for each request. Instances are single-threaded; use `Cell`/`RefCell` for state
/// that must change across requests (and remember an instance may be recycled at any time).
pub trait Policy: Sized + 'static {
    /// The route's `config` table. Absent config deserialises from `{}`; use
    /// `#[serde(deny_unknown_fields)]` so operator typos are reported, and [`NoConfig`] for a
    /// policy without settings.
    type Config: DeserializeOwned;

    /// Builds the policy. An `Err` rejects the configuration with that message.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// What the policy needs from the gateway: request/response bodies, and which phases it
    /// implements. Default: no bodies, every phase called. Declare the phases you implement
    /// (`PluginInfo::default().phases(Phases::REQUEST)`): each one skipped saves a guest call per
    /// request.
    fn info(&self) -> PluginInfo {
        PluginInfo::default()
    }

    /// Decides what happens to the request. Default: continue unchanged.
    fn on_request(&self, req: &Request) -> Action {
        let _ = req;
        Action::default()
    }

    /// Edits the response head (and body, if declared). Default: no change.
    fn on_response(&self, resp: &ResponseHead) -> ResponseEdits {
        let _ = resp;
        ResponseEdits::default()
    }

    /// Observes the finished exchange. Default: nothing.
    fn on_log(&self, entry: &LogEntry) {
        let _ = entry;
    }
}

/// Config of a policy without settings: accepts an absent/`null` config or an empty table, and
/// rejects any key (it would be a mistake).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoConfig;

impl<'de> serde::Deserialize<'de> for NoConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(d)?;
        match value {
            serde_json::Value::Null => Ok(NoConfig),
            serde_json::Value::Object(m) if m.is_empty() => Ok(NoConfig),
            serde_json::Value::Object(m) => Err(D::Error::custom(format!(
                "this plugin takes no config, found key(s): {}",
                m.keys().cloned().collect::<Vec<_>>().join(", ")
            ))),
            other => Err(D::Error::custom(format!(
                "this plugin takes no config, found {other}"
            ))),
        }
    }
}

/// Deserialises `config` (JSON text; empty or `null` means `{}`) and builds the policy. The
/// error text goes to the operator, so it names the problem and not the JSON position (the
/// JSON was generated from the operator's TOML, its line numbers mean nothing to them).
#[doc(hidden)]
pub fn instantiate<P: Policy>(config: &str) -> Result<P, String> {
    let text = config.trim();
    let text = if text.is_empty() || text == "null" {
        "{}"
    } else {
        text
    };
    let cfg: P::Config = serde_json::from_str(text).map_err(|e| {
        let msg = e.to_string();
        let msg = match msg.rfind(" at line ") {
            Some(i) => &msg[..i],
            None => &msg,
        };
        format!("invalid plugin config: {msg}")
    })?;
    P::new(cfg)
}

/// The names a plugin usually needs: `use weir_plugin_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Action, LogEntry, NoConfig, Phases, PluginInfo, Policy, Request, RequestEdits, Response,
        ResponseEdits, ResponseHead, context, export_policy, http, jwt, kv, log, metrics,
        rate_limit,
    };
    pub use serde::Deserialize;
    pub use serde_json::{Value, json};
}

/// Re-exports for the code [`export_policy!`] expands to. Not a public API.
#[doc(hidden)]
pub mod __private {
    #[cfg(target_arch = "wasm32")]
    pub use crate::bindings;
    #[cfg(target_arch = "wasm32")]
    pub use crate::bindings::{
        Guest, Slot, WitAction, WitLogEntry, WitPluginInfo, WitRequest, WitResponseEdits,
        WitResponseHead,
    };
}

/// Exports a [`Policy`] type as the component's implementation of the `weir:policy` world.
///
/// Use it once per plugin crate, at the crate root: `export_policy!(MyPolicy);`. On the host
/// target it only checks that the type implements [`Policy`], so the crate still builds for
/// unit tests.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            ::std::thread_local! {
                static __WEIR_POLICY: $crate::__private::Slot<$policy> =
                    const { $crate::__private::Slot::new() };
            }

            struct __WeirPolicy;

            impl $crate::__private::Guest for __WeirPolicy {
                fn init(
                    config: ::std::string::String,
                ) -> ::core::result::Result<$crate::__private::WitPluginInfo, ::std::string::String>
                {
                    __WEIR_POLICY.with(|slot| slot.init(&config))
                }

                fn on_request(req: $crate::__private::WitRequest) -> $crate::__private::WitAction {
                    __WEIR_POLICY.with(|slot| slot.on_request(req))
                }

                fn on_response(
                    resp: $crate::__private::WitResponseHead,
                ) -> $crate::__private::WitResponseEdits {
                    __WEIR_POLICY.with(|slot| slot.on_response(resp))
                }

                fn on_log(entry: $crate::__private::WitLogEntry) {
                    __WEIR_POLICY.with(|slot| slot.on_log(entry))
                }
            }

    $crate::__export_policy_impl!(__WeirPolicy with_types_in $crate::__private::bindings);
        };

        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            fn __weir_assert_policy<P: $crate::Policy>() {}
            let _: fn() = __weir_assert_policy::<$policy>;
        };
    };
}
