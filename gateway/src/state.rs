//! Live gateway state. Everything a reload can change sits in one immutable [`Table`] behind an
//! `ArcSwap`: a reload builds a complete new table off the request path and swaps it in one step,
//! so in-flight requests finish on the table they started with.

use crate::config::{Config, RouteSpec};
use crate::metrics::Metrics;
use crate::policy::{self, PluginInstance};
use crate::router::Router;
use crate::upstream::{self, Upstream};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// Per-route runtime objects.
pub struct RouteRuntime {
    pub spec: Arc<RouteSpec>,
    pub upstream: Option<Arc<Upstream>>,
    /// Global plugins first, then the route's, in config order.
    pub plugins: Vec<Arc<PluginInstance>>,
    pub budget: RetryBudget,
    /// Fan-out backends with their upstreams (empty for a plain proxy route).
    pub aggregate: Vec<(crate::config::AggregateBackend, Arc<Upstream>)>,
    /// The route's metric label and latency histogram, resolved once per reload rather than
    /// looked up by name on every request.
    pub label: crate::metrics::Name,
    pub latency: prometheus_client::metrics::histogram::Histogram,
    /// `weir_requests_total{status="200"}` of this route, resolved on its first 200.
    pub ok_count: std::sync::OnceLock<prometheus_client::metrics::counter::Counter>,
}

/// Everything a reload replaces.
pub struct Table {
    pub config: Arc<Config>,
    pub router: Router<Arc<RouteRuntime>>,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub loaded_at: SystemTime,
    /// This generation's `[key_sets]`, held by its plugins: requests on a table being replaced
    /// keep verifying with its keys, the new table's plugins use the new ones.
    pub key_sets: weir_wasm_host::PreparedKeySets,
}

/// Outcome of the last reload attempt, for `/admin/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadStatus {
    pub ok: bool,
    pub at: String,
    pub trigger: String,
    pub error: Option<String>,
    pub generation: u64,
}

pub struct Gateway {
    table: ArcSwap<Table>,
    pub metrics: Arc<Metrics>,
    pub policies: policy::Runtime,
    draining: AtomicBool,
    pub last_reload: Mutex<ReloadStatus>,
    generation: AtomicU64,
    /// Serialises reloads so two triggers never build tables concurrently.
    reload_lock: tokio::sync::Mutex<()>,
    pub started: Instant,
    /// Each TLS listener's certificates, for the reload outcome on `/admin/status`.
    tls_listeners: Mutex<Vec<(String, Arc<crate::tls::TlsTerminator>)>>,
}

/// Retries allowed as a share of recent requests, so retries cannot multiply an outage.
pub struct RetryBudget {
    percent: u64,
    window_start_ms: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    epoch: Instant,
}

const BUDGET_WINDOW_MS: u64 = 10_000;
const BUDGET_MIN_RETRIES: u64 = 10;

impl RetryBudget {
    pub fn new(percent: u32) -> Self {
        Self {
            percent: percent as u64,
            window_start_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn roll(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let start = self.window_start_ms.load(Ordering::Relaxed);
        if now.saturating_sub(start) > BUDGET_WINDOW_MS
            && self
                .window_start_ms
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
    }

    pub fn record_request(&self) {
        self.roll();
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn can_retry(&self) -> bool {
        let allowed =
            BUDGET_MIN_RETRIES + self.requests.load(Ordering::Relaxed) * self.percent / 100;
        self.retries.load(Ordering::Relaxed) < allowed
    }
}

impl Gateway {
    /// Builds the first table; fails if any plugin or upstream cannot be loaded.
    pub async fn new(config: Config, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Self>> {
        let policies = policy::Runtime::new(&config, &metrics)?;
        let table = build_table(config, None, &policies, &metrics).await?;
        Ok(Arc::new(Self {
            table: ArcSwap::from_pointee(table),
            metrics,
            policies,
            draining: AtomicBool::new(false),
            last_reload: Mutex::new(ReloadStatus {
                ok: true,
                at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                trigger: "start".into(),
                error: None,
                generation: 0,
            }),
            generation: AtomicU64::new(0),
            reload_lock: tokio::sync::Mutex::new(()),
            started: Instant::now(),
            tls_listeners: Mutex::new(Vec::new()),
        }))
    }

    /// Records a TLS listener's certificates (called once per listener as it starts serving).
    pub fn register_tls(&self, listener: &str, tls: Arc<crate::tls::TlsTerminator>) {
        if let Ok(mut l) = self.tls_listeners.lock() {
            l.push((listener.to_string(), tls));
        }
    }

    /// The last certificate reload of each TLS listener (`null` until a file changed).
    pub fn tls_status(&self) -> serde_json::Value {
        let Ok(l) = self.tls_listeners.lock() else {
            return serde_json::Value::Null;
        };
        l.iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    serde_json::json!({ "last_certificate_reload": t.last_reload() }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    /// The current table. Requests hold this `Arc` for their whole life.
    pub fn table(&self) -> Arc<Table> {
        self.table.load_full()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Re-reads the config file (or uses `config`), builds a new table and swaps it in. On any
    /// error the old table keeps serving and the error is recorded for `/admin/status`.
    pub async fn reload(&self, trigger: &str) -> Result<(), String> {
        let _guard = self.reload_lock.lock().await;
        let current = self.table();
        let result = async {
            let Some(path) = current.config.source.clone() else {
                return Err("the running config has no file to reload from".to_string());
            };
            let config = crate::config::load_file(&path).map_err(|e| e.to_string())?;
            let mut start_only = Vec::new();
            if config.listeners != current.config.listeners {
                start_only.push("[[listeners]]");
            }
            if config.admin != current.config.admin {
                start_only.push("[admin]");
            }
            if config.log.format != current.config.log.format {
                start_only.push("[log] format");
            }
            if config.cluster != current.config.cluster {
                start_only.push("[cluster]");
            }
            if config.runtime.cache_dir != current.config.runtime.cache_dir {
                start_only.push("[runtime] cache_dir");
            }
            if config.runtime.max_instances != current.config.runtime.max_instances {
                start_only.push("[runtime] max_instances");
            }
            // Limits a listener applies to its connections, set when it starts.
            let (new, old) = (&config.limits, &current.config.limits);
            if new.max_request_head != old.max_request_head
                || new.max_headers != old.max_headers
                || new.header_read_timeout != old.header_read_timeout
                || new.h2_max_streams != old.h2_max_streams
                || new.max_connections != old.max_connections
            {
                start_only.push(
                    "[limits] max_request_head/max_headers/header_read_timeout/h2_max_streams/max_connections",
                );
            }
            if !start_only.is_empty() {
                tracing::warn!(
                    settings = start_only.join(", "),
                    "these settings change at the next restart; everything else is applied"
                );
            }
            build_table(config, Some(&current), &self.policies, &self.metrics)
                .await
                .map_err(|e| format!("{e:#}"))
        }
        .await;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let status = match result {
            Ok(table) => {
                self.table.store(Arc::new(table));
                self.metrics
                    .reloads
                    .get_or_create(&crate::metrics::ResultLabel {
                        result: "ok".into(),
                    })
                    .inc();
                tracing::info!(trigger, generation, "config reloaded");
                ReloadStatus {
                    ok: true,
                    at,
                    trigger: trigger.into(),
                    error: None,
                    generation,
                }
            }
            Err(e) => {
                self.metrics
                    .reloads
                    .get_or_create(&crate::metrics::ResultLabel {
                        result: "error".into(),
                    })
                    .inc();
                tracing::error!(trigger, error = %e, "reload rejected; the previous config keeps serving");
                ReloadStatus {
                    ok: false,
                    at,
                    trigger: trigger.into(),
                    error: Some(e),
                    generation,
                }
            }
        };
        let ok = status.ok;
        let err = status.error.clone();
        if let Ok(mut l) = self.last_reload.lock() {
            *l = status;
        }
        if ok {
            Ok(())
        } else {
            Err(err.unwrap_or_default())
        }
    }
}

/// Builds a table from a validated config. Upstreams whose spec did not change are carried over
/// from `previous` (keeping pools and health state); plugins are loaded (cached by content hash).
pub async fn build_table(
    config: Config,
    previous: Option<&Table>,
    policies: &policy::Runtime,
    metrics: &Metrics,
) -> anyhow::Result<Table> {
    let mut upstreams = HashMap::new();
    for (name, spec) in &config.upstreams {
        let reused = previous
            .and_then(|p| p.upstreams.get(name))
            .filter(|u| &u.spec == spec)
            .cloned();
        let u = match reused {
            Some(u) => u,
            None => {
                let u = Upstream::new(spec.clone())?;
                upstream::health::spawn(&u);
                upstream::spawn_pool_reaper(&u);
                u
            }
        };
        upstreams.insert(name.clone(), u);
    }
    // Re-read on every reload (a key file rotated in place counts); fetched JWKS carry over.
    let key_sets = match previous {
        Some(p) => policies.prepare_key_sets(&config, Some(&p.key_sets))?,
        None => policies.initial_key_sets(),
    };
    let max_uses = config.runtime.pool_max_uses;
    let globals = policies
        .load_all(&config.global_plugins, "global", max_uses, &key_sets)
        .await?;
    let mut routes = Vec::new();
    for r in &config.routes {
        let mut plugins = globals.clone();
        plugins.extend(
            policies
                .load_all(
                    &r.plugins,
                    &format!("route {}", r.name),
                    max_uses,
                    &key_sets,
                )
                .await?,
        );
        let spec = Arc::new(r.clone());
        let label = crate::metrics::Name::new(&r.name);
        let latency = metrics
            .latency
            .get_or_create(&crate::metrics::RouteLabel {
                route: label.clone(),
            })
            .clone();
        let rt = Arc::new(RouteRuntime {
            label,
            latency,
            ok_count: std::sync::OnceLock::new(),
            upstream: r.upstream.as_ref().and_then(|u| upstreams.get(u).cloned()),
            plugins,
            budget: RetryBudget::new(r.retries.budget_percent),
            aggregate: r
                .aggregate
                .iter()
                .filter_map(|a| upstreams.get(&a.upstream).map(|u| (a.clone(), u.clone())))
                .collect(),
            spec: spec.clone(),
        });
        routes.push((spec, rt));
    }
    Ok(Table {
        config: Arc::new(config),
        router: Router::new(routes),
        upstreams,
        loaded_at: SystemTime::now(),
        key_sets,
    })
}
