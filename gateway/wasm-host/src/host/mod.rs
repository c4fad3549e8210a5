//! Host capabilities offered to plugins, one module per WIT interface. Each module implements
//! the generated `Host` trait for [`HostState`](crate::state::HostState) and, where the backing
//! service is swappable (kv, rate limiting), defines the backend trait and an in-process impl.

pub mod context;
pub mod http;
pub mod jwt;
pub mod kv;
pub mod log;
pub mod metrics;
pub mod rate_limit;

use crate::bindings::weir::policy::types;
use crate::state::HostState;

// `types` only defines records; the generated trait still needs an (empty) impl.
impl types::Host for HostState {}
