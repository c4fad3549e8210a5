//! The user-facing TOML shape, exactly as written. Nothing outside `config` sees these types:
//! `model.rs` turns them into the validated internal model.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub version: u32,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Plugins applied to every route, before the route's own.
    #[serde(default)]
    pub plugins: Vec<RawPlugin>,
    #[serde(default)]
    pub key_sets: BTreeMap<String, RawKeySet>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub log: RawLog,
    pub runtime: Option<RawRuntime>,
    pub cluster: Option<RawCluster>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub listen: String,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub certs: Vec<RawCertPair>,
    pub client_ca: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertPair {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub targets: Vec<RawTarget>,
    pub lb: Option<String>,
    pub hash_on: Option<String>,
    pub health: Option<RawHealth>,
    pub passive: Option<RawPassive>,
    /// "http1" (default) or "h2" (prior knowledge on http://, ALPN on https://).
    pub protocol: Option<String>,
    pub tls: Option<RawUpstreamTls>,
    /// Concurrent requests allowed to this upstream before it answers 503 (circuit breaker).
    pub max_concurrent: Option<u32>,
    pub connect_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub url: String,
    pub weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: String,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub unhealthy_after: Option<u32>,
    pub healthy_after: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassive {
    pub consecutive_failures: Option<u32>,
    pub base_ejection: Option<String>,
    pub max_ejection: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub ca: Option<String>,
    pub sni: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    pub upstream: Option<String>,
    #[serde(default)]
    pub strip_prefix: bool,
    pub rewrite: Option<String>,
    pub priority: Option<i32>,
    pub timeout: Option<String>,
    pub per_try_timeout: Option<String>,
    pub retries: Option<RawRetries>,
    #[serde(default)]
    pub limits: RawRouteLimits,
    #[serde(default)]
    pub plugins: Vec<RawPlugin>,
    pub aggregate: Option<Vec<toml::Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub path: Option<String>,
    pub path_regex: Option<String>,
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub headers: Vec<RawHeaderMatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    pub name: String,
    pub value: Option<String>,
    pub regex: Option<String>,
    pub present: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    pub attempts: u32,
    #[serde(default)]
    pub on: Vec<String>,
    /// Extra retries allowed as a percentage of requests (retry budget), default 20.
    pub budget_percent: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteLimits {
    pub max_body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugin {
    pub name: String,
    pub wasm: String,
    pub config: Option<toml::Value>,
    pub on_error: Option<String>,
    pub isolation: Option<String>,
    #[serde(default)]
    pub limits: RawPluginLimits,
    pub http: Option<RawPluginHttp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPluginLimits {
    pub memory: Option<String>,
    pub cpu: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPluginHttp {
    #[serde(default)]
    pub allow: Vec<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeySet {
    pub hmac_secret: Option<String>,
    #[serde(default)]
    pub pem: Vec<String>,
    pub jwks: Option<String>,
    pub jwks_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_request_head: Option<String>,
    pub max_headers: Option<u32>,
    pub max_uri: Option<String>,
    pub max_body: Option<String>,
    pub header_read_timeout: Option<String>,
    pub max_connections: Option<u32>,
    pub h2_max_streams: Option<u32>,
    pub connect_timeout: Option<String>,
    pub route_timeout: Option<String>,
    pub drain_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub access_log: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub cache_dir: Option<String>,
    pub pool_max_uses: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub redis: String,
    /// Bound on every Redis call, connect included (default 50ms).
    pub timeout: Option<String>,
    /// `open`, `closed` or `local` (default): what a limiter does when Redis fails.
    pub on_backend_error: Option<String>,
    /// Per-limiter override of `on_backend_error`, by the limiter name a plugin passes.
    #[serde(default)]
    pub limiters: BTreeMap<String, String>,
    /// Consecutive failures that open the circuit breaker (default 5).
    pub breaker_failures: Option<u32>,
    /// Time the breaker stays open before a background probe (default 1s).
    pub breaker_cooldown: Option<String>,
    /// First segment of every Redis key (default `weir`), to share one Redis between deployments.
    pub key_prefix: Option<String>,
}
