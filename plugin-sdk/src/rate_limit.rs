//! Rate limiting by the gateway (GCRA): in-process, or global through Redis when clustered.
//!
//! ```no_run
//! use std::time::Duration;
//! use weir_plugin_sdk::rate_limit::{self, Quota};
//! let quota = Quota { limit: 10, window: Duration::from_secs(1) };
//! match rate_limit::check("per-second", "alice", quota, 1) {
//!     Ok(d) if !d.allowed => { /* answer 429, Retry-After = d.retry_after */ }
//!     Ok(_) => { /* go on */ }
//!     Err(_) => { /* limiter unavailable: fail open or closed, your call */ }
//! }
//! ```

use std::time::Duration;

use crate::backend;

/// `limit` requests per `window`, bursting up to `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Requests allowed per window.
    pub limit: u32,
    /// Window length (millisecond precision).
    pub window: Duration,
}

/// The outcome of one [`check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// The quota's limit.
    pub limit: u32,
    /// Requests left in the current window after this one.
    pub remaining: u32,
    /// Time until the window is full again.
    pub reset: Duration,
    /// When denied: time until a request of this cost would be allowed.
    pub retry_after: Duration,
}

/// Checks and consumes `cost` units of limiter `name` for `key`. Each `name` is a separate
/// limiter, so one plugin can enforce several windows on the same key.
pub fn check(name: &str, key: &str, quota: Quota, cost: u32) -> Result<Decision, String> {
    backend::rate_limit_check(name, key, quota, cost)
}
