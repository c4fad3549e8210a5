//! Request-scoped metadata shared by the plugins of one route's chain.
//!
//! The context is empty at the start of every request and lives until its `on_log` phase. It is
//! how plugins talk to each other: an auth plugin sets `consumer`, a rate limiter keys on it, a
//! log plugin records it. Conventional keys used by the first-party plugins:
//!
//! | key | set by | meaning |
//! |---|---|---|
//! | `consumer` | `jwt-auth`, `api-key-auth`, `basic-auth` | the authenticated caller |
//! | `consumer.groups` | `api-key-auth` | comma-separated groups of the caller |
//! | `jwt.sub`, `jwt.scope` | `jwt-auth` | claims of the verified token |

use crate::backend;

/// The value of `key`, if set earlier in this request.
pub fn get(key: &str) -> Option<String> {
    backend::context_get(key)
}

/// Sets `key` for the rest of this request (later phases and later plugins).
pub fn set(key: &str, value: &str) {
    backend::context_set(key, value);
}

/// Removes `key`.
pub fn remove(key: &str) {
    backend::context_remove(key);
}

/// Every `(key, value)` set so far in this request.
pub fn entries() -> Vec<(String, String)> {
    backend::context_entries()
}
