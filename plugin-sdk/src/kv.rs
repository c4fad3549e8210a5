//! A key-value store shared by every instance of this plugin.
//!
//! In-process, or Redis when the gateway runs clustered. The gateway namespaces keys per plugin,
//! so two plugins cannot read each other's data. Calls can fail (e.g. Redis unreachable): decide
//! per call whether to fail open or closed.

use std::time::Duration;

use crate::backend;

fn ttl_ms(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The value of `key`, or `None` if absent or expired.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, String> {
    backend::kv_get(key)
}

/// Stores `value` under `key`; `ttl = None` keeps it until deleted.
pub fn set(key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), String> {
    backend::kv_set(key, value, ttl_ms(ttl))
}

/// Deletes `key`; true if it existed.
pub fn delete(key: &str) -> Result<bool, String> {
    backend::kv_delete(key)
}

/// Adds `delta` to the integer stored at `key` (absent = 0) and returns the new value. The TTL is
/// applied when the key is created.
pub fn increment(key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, String> {
    backend::kv_increment(key, delta, ttl_ms(ttl))
}

/// Stores `new` only if the current value equals `expected` (`None` = absent). True if swapped.
pub fn compare_and_swap(
    key: &str,
    expected: Option<&[u8]>,
    new: &[u8],
    ttl: Option<Duration>,
) -> Result<bool, String> {
    backend::kv_compare_and_swap(key, expected, new, ttl_ms(ttl))
}
