//! `weir:policy/metrics`: custom counters and histograms defined by plugins at run time, exported
//! as `weir_plugin_custom_<name>` with a `plugin` label (the guest cannot set or forge it).
//! Names and labels are validated, and series per metric are capped to bound cardinality.

use std::collections::HashMap;
use std::sync::RwLock;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use crate::bindings::weir::policy::metrics::Host;
use crate::state::HostState;

type Labels = Vec<(String, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Series (label combinations, plugins included) kept per metric name.
const MAX_SERIES: usize = 1000;
const MAX_LABELS: usize = 8;
const MAX_NAME: usize = 64;
const MAX_LABEL_VALUE: usize = 128;

fn new_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
    ])
}

#[derive(Debug)]
enum Custom {
    Counter(Family<Labels, Counter>),
    Histogram(HistogramFamily),
}

#[derive(Debug)]
struct Entry {
    metric: Custom,
    series_index: std::collections::HashSet<Labels>,
}

/// Every custom metric of every plugin; registered once as a prometheus collector.
#[derive(Debug, Default)]
pub struct CustomMetrics {
    metrics: RwLock<HashMap<String, Entry>>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .enumerate()
            .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()))
}

impl CustomMetrics {
    /// Records one observation; returns why it was dropped, if it was.
    pub(crate) fn record(
        &self,
        plugin: &str,
        name: &str,
        labels: Vec<(String, String)>,
        value: Value,
    ) -> Result<(), String> {
        if !valid_name(name) {
            return Err(format!(
                "invalid metric name `{name}` (use [a-zA-Z_][a-zA-Z0-9_]*, ≤ {MAX_NAME})"
            ));
        }
        // The exporter adds `_total` to counters; a name that already has it keeps one.
        let name = match value {
            Value::Count(_) => name
                .strip_suffix("_total")
                .filter(|n| !n.is_empty())
                .unwrap_or(name),
            Value::Observe(_) => name,
        };
        if labels.len() > MAX_LABELS {
            return Err(format!("too many labels (max {MAX_LABELS})"));
        }
        let mut key: Labels = Vec::with_capacity(labels.len() + 1);
        key.push(("plugin".to_string(), plugin.to_string()));
        for (k, v) in labels {
            if !valid_name(&k) || k == "plugin" || k.starts_with("__") {
                return Err(format!("invalid or reserved label name `{k}`"));
            }
            if v.len() > MAX_LABEL_VALUE {
                return Err(format!(
                    "label `{k}` value longer than {MAX_LABEL_VALUE} bytes"
                ));
            }
            key.push((k, v));
        }
        key[1..].sort();
        if key.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err("duplicate label name".to_string());
        }

        // Fast path: existing metric and series.
        {
            let map = self.metrics.read().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = map.get(name)
                && e.series_index.contains(&key)
            {
                return apply(&e.metric, &key, name, value);
            }
        }
        let mut map = self.metrics.write().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(name.to_string()).or_insert_with(|| Entry {
            metric: match value {
                Value::Count(_) => Custom::Counter(Family::default()),
                Value::Observe(_) => Custom::Histogram(Family::new_with_constructor(new_histogram)),
            },
            series_index: Default::default(),
        });
        if !entry.series_index.contains(&key) {
            if entry.series_index.len() >= MAX_SERIES {
                return Err(format!("metric `{name}` already has {MAX_SERIES} series"));
            }
            entry.series_index.insert(key.clone());
        }
        apply(&entry.metric, &key, name, value)
    }
}

/// One observation of a custom metric.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Value {
    Count(u64),
    Observe(f64),
}

fn apply(metric: &Custom, key: &Labels, name: &str, value: Value) -> Result<(), String> {
    match (metric, value) {
        (Custom::Counter(f), Value::Count(n)) => {
            f.get_or_create(key).inc_by(n);
            Ok(())
        }
        (Custom::Histogram(f), Value::Observe(v)) if v.is_finite() => {
            f.get_or_create(key).observe(v);
            Ok(())
        }
        (Custom::Histogram(_), Value::Observe(_)) => Err("histogram value must be finite".into()),
        _ => Err(format!("metric `{name}` already exists with another type")),
    }
}

impl Collector for CustomMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let map = self.metrics.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<&String> = map.keys().collect();
        names.sort();
        for name in names {
            let full = format!("plugin_custom_{name}");
            match &map[name].metric {
                Custom::Counter(f) => {
                    let enc = encoder.encode_descriptor(
                        &full,
                        "Custom plugin counter",
                        None,
                        f.metric_type(),
                    )?;
                    f.encode(enc)?;
                }
                Custom::Histogram(f) => {
                    let enc = encoder.encode_descriptor(
                        &full,
                        "Custom plugin histogram",
                        None,
                        f.metric_type(),
                    )?;
                    f.encode(enc)?;
                }
            }
        }
        Ok(())
    }
}

impl HostState {
    fn record_custom(&self, name: &str, labels: Vec<(String, String)>, value: Value) {
        let plugin = &*self.plugin.id;
        if let Err(reason) = self
            .plugin
            .services
            .custom_metrics
            .record(plugin, name, labels, value)
        {
            tracing::warn!(target: "weir::plugin", plugin, metric = name, "metric dropped: {reason}");
        }
    }
}

impl Host for HostState {
    fn counter_add(&mut self, name: String, labels: Vec<(String, String)>, value: u64) {
        self.record_custom(&name, labels, Value::Count(value));
    }

    fn histogram_observe(&mut self, name: String, labels: Vec<(String, String)>, value: f64) {
        self.record_custom(&name, labels, Value::Observe(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use std::sync::Arc;

    #[test]
    fn custom_metrics_validate_and_export_with_plugin_label() {
        let m = Arc::new(CustomMetrics::default());
        let labels = vec![("route".to_string(), "r1".to_string())];
        m.record("p1", "hits", labels.clone(), Value::Count(2))
            .unwrap();
        m.record("p1", "hits", labels.clone(), Value::Count(3))
            .unwrap();
        assert!(m.record("p1", "hits", vec![], Value::Observe(1.0)).is_err());
        assert!(m.record("p1", "bad-name", vec![], Value::Count(1)).is_err());
        assert!(
            m.record(
                "p1",
                "x",
                vec![("plugin".into(), "forged".into())],
                Value::Count(1)
            )
            .is_err()
        );
        m.record("p2", "size", vec![], Value::Observe(0.3)).unwrap();
        // A counter named with the conventional suffix is not exported as `_total_total`.
        m.record("p2", "denied_total", vec![], Value::Count(1))
            .unwrap();
        m.record("p2", "denied", vec![], Value::Count(1)).unwrap();

        let mut reg = Registry::with_prefix("weir");
        reg.register_collector(Box::new(m.clone()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(
            out.contains("weir_plugin_custom_hits_total{plugin=\"p1\",route=\"r1\"} 5"),
            "{out}"
        );
        assert!(
            out.contains("weir_plugin_custom_size_count{plugin=\"p2\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("weir_plugin_custom_denied_total{plugin=\"p2\"} 2"),
            "{out}"
        );
        assert!(!out.contains("_total_total"), "{out}");
    }

    #[test]
    fn series_are_capped() {
        let m = CustomMetrics::default();
        for i in 0..MAX_SERIES {
            m.record("p", "c", vec![("k".into(), i.to_string())], Value::Count(1))
                .unwrap();
        }
        assert!(
            m.record(
                "p",
                "c",
                vec![("k".into(), "one-more".into())],
                Value::Count(1)
            )
            .is_err()
        );
        assert!(
            m.record("p", "c", vec![("k".into(), "0".into())], Value::Count(1))
                .is_ok()
        );
    }
}
