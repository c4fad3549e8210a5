//! Runtime metrics per plugin: calls and latency by phase, failures by kind, instantiations.
//! Handles are resolved once per plugin at load so the request path only bumps atomics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::PluginErrorKind;

/// The exported function a call went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Init,
    OnRequest,
    OnResponse,
    OnLog,
}

impl Phase {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Phase::Init => "init",
            Phase::OnRequest => "on_request",
            Phase::OnResponse => "on_response",
            Phase::OnLog => "on_log",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    plugin: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    plugin: String,
    phase: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

fn latency_histogram() -> Histogram {
    // 1 µs .. ~4 s: a warm call is a few µs, the CPU deadline is tens of ms.
    Histogram::new(exponential_buckets(1e-6, 4.0, 12))
}

/// The families, shared by every plugin of a runtime.
#[derive(Clone, Debug)]
pub(crate) struct RuntimeMetrics {
    calls: Family<CallLabels, Counter>,
    duration: Family<CallLabels, Histogram, fn() -> Histogram>,
    errors: Family<ErrorLabels, Counter>,
    instantiations: Family<PluginLabels, Counter>,
}

impl Default for RuntimeMetrics {
    fn default() -> Self {
        RuntimeMetrics {
            calls: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            errors: Family::default(),
            instantiations: Family::default(),
        }
    }
}

impl RuntimeMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register("plugin_calls", "Plugin export calls", self.calls.clone());
        registry.register(
            "plugin_call_duration_seconds",
            "Plugin call latency (instantiation excluded)",
            self.duration.clone(),
        );
        registry.register(
            "plugin_failures",
            "Failed plugin calls by kind (deadline, memory_limit, trap, internal)",
            self.errors.clone(),
        );
        registry.register(
            "plugin_instantiations",
            "Plugin instances created",
            self.instantiations.clone(),
        );
    }

    pub(crate) fn for_plugin(&self, plugin: &str) -> PluginMetrics {
        let phase = |p: Phase| {
            let l = CallLabels {
                plugin: plugin.to_string(),
                phase: p.as_str().to_string(),
            };
            PhaseMetrics {
                calls: self.calls.get_or_create(&l).clone(),
                duration: self.duration.get_or_create(&l).clone(),
            }
        };
        PluginMetrics {
            plugin: plugin.to_string(),
            phases: [
                phase(Phase::Init),
                phase(Phase::OnRequest),
                phase(Phase::OnResponse),
                phase(Phase::OnLog),
            ],
            errors: self.errors.clone(),
            instantiations: self
                .instantiations
                .get_or_create(&PluginLabels {
                    plugin: plugin.to_string(),
                })
                .clone(),
        }
    }
}

#[derive(Debug)]
struct PhaseMetrics {
    calls: Counter,
    duration: Histogram,
}

/// One plugin's pre-resolved handles.
#[derive(Debug)]
pub(crate) struct PluginMetrics {
    plugin: String,
    phases: [PhaseMetrics; 4],
    errors: Family<ErrorLabels, Counter>,
    pub(crate) instantiations: Counter,
}

impl PluginMetrics {
    pub(crate) fn call(&self, phase: Phase, seconds: f64) {
        let m = &self.phases[phase as usize];
        m.calls.inc();
        m.duration.observe(seconds);
    }

    pub(crate) fn failure(&self, phase: Phase, kind: PluginErrorKind) {
        let l = ErrorLabels {
            plugin: self.plugin.clone(),
            phase: phase.as_str().into(),
            kind: kind.as_str().into(),
        };
        self.errors.get_or_create(&l).inc();
    }
}
