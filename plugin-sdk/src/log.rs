//! Structured logging into the gateway's tracing output.
//!
//! ```no_run
//! use weir_plugin_sdk::log;
//! log::info("token accepted", &[("sub", "alice"), ("kid", "k1")]);
//! ```
//! Lines carry the plugin name and the request id, added by the gateway.

use crate::backend;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very verbose diagnostics.
    Trace,
    /// Diagnostics useful while developing a plugin.
    Debug,
    /// Normal events (e.g. audit lines).
    Info,
    /// Something the operator should look at.
    Warn,
    /// A failure.
    Error,
}

/// Logs `message` at `level` with key/value `fields`.
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    backend::log(level, message, fields);
}

/// Logs at [`Level::Trace`].
pub fn trace(message: &str, fields: &[(&str, &str)]) {
    log(Level::Trace, message, fields);
}

/// Logs at [`Level::Debug`].
pub fn debug(message: &str, fields: &[(&str, &str)]) {
    log(Level::Debug, message, fields);
}

/// Logs at [`Level::Info`].
pub fn info(message: &str, fields: &[(&str, &str)]) {
    log(Level::Info, message, fields);
}

/// Logs at [`Level::Warn`].
pub fn warn(message: &str, fields: &[(&str, &str)]) {
    log(Level::Warn, message, fields);
}

/// Logs at [`Level::Error`].
pub fn error(message: &str, fields: &[(&str, &str)]) {
    log(Level::Error, message, fields);
}
