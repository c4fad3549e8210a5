//! Custom metrics, exported on the gateway's admin `/metrics` endpoint with a `plugin` label.
//!
//! Keep label values low-cardinality (route names, status classes), never user ids.

use crate::backend;

/// Adds `value` to counter `name` with `labels`, exported as `weir_plugin_custom_<name>` with
/// one `_total` suffix whether or not `name` ends with it.
pub fn counter_add(name: &str, labels: &[(&str, &str)], value: u64) {
    backend::metrics_counter_add(name, labels, value);
}

/// Records one observation of `value` in histogram `name` with `labels`.
pub fn histogram_observe(name: &str, labels: &[(&str, &str)], value: f64) {
    backend::metrics_histogram_observe(name, labels, value);
}
