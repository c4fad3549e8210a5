//! The validated internal model. Everything here has been checked: names resolve, durations and
//! sizes are parsed, regexes compile, files exist. The rest of the gateway only sees these types.

use regex::Regex;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    /// File the config came from (None for the embedded demo).
    pub source: Option<PathBuf>,
    /// The TOML text, served read-only on the admin listener.
    pub text: String,
    pub admin: Option<SocketAddr>,
    pub listeners: Vec<Listener>,
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    pub routes: Vec<RouteSpec>,
    pub global_plugins: Vec<PluginRef>,
    pub key_sets: BTreeMap<String, KeySet>,
    pub limits: Limits,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub log: LogSettings,
    pub runtime: RuntimeSettings,
    pub cluster: Option<Cluster>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub addr: SocketAddr,
    pub tls: Option<ListenerTls>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTls {
    pub certs: Vec<(PathBuf, PathBuf)>,
    pub client_ca: Option<PathBuf>,
    /// Whether returning clients may resume a session (TLS 1.3 tickets, TLS 1.2 session ids).
    pub session_resumption: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
    ConsistentHash,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Header(http::HeaderName),
    Cookie(String),
    ClientIp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    H2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSpec {
    pub name: String,
    pub targets: Vec<TargetSpec>,
    pub lb: LbPolicy,
    pub hash_on: Option<HashOn>,
    pub health: Option<HealthSpec>,
    pub passive: PassiveSpec,
    pub protocol: UpstreamProtocol,
    pub tls_ca: Option<PathBuf>,
    pub tls_sni: Option<String>,
    pub max_concurrent: Option<u32>,
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetSpec {
    pub url: http::Uri,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthSpec {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PassiveSpec {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone)]
pub enum HeaderMatch {
    Value(http::HeaderName, String),
    Regex(http::HeaderName, Regex),
    Present(http::HeaderName, bool),
}

#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: String,
    pub host: Option<HostMatch>,
    pub path: PathMatch,
    pub methods: Option<Vec<http::Method>>,
    pub headers: Vec<HeaderMatch>,
    pub priority: i32,
    pub upstream: Option<String>,
    pub strip_prefix: bool,
    pub rewrite: Option<String>,
    pub timeout: Duration,
    pub per_try_timeout: Option<Duration>,
    pub retries: RetryPolicy,
    pub max_body: u64,
    pub plugins: Vec<PluginRef>,
    pub aggregate: Vec<AggregateBackend>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AggregateBackend {
    pub upstream: String,
    /// Path (and optional query) sent to the backend.
    pub path: String,
    /// Key the backend's JSON goes under; `None` merges its object at the root.
    pub group: Option<String>,
    /// A failed required backend fails the whole call; an optional one is left out.
    pub required: bool,
    pub timeout: Duration,
    /// Client headers copied to this backend.
    pub forward_headers: Vec<http::HeaderName>,
    /// Client query parameters copied (`None` = the whole query string).
    pub forward_query: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default)]
pub struct RetryPolicy {
    /// Total tries = 1 + attempts.
    pub attempts: u32,
    pub on_connect_failure: bool,
    pub on_statuses: Vec<u16>,
    pub on_5xx: bool,
    pub on_timeout: bool,
    pub on_reset: bool,
    pub budget_percent: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    Closed,
    Open,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    Pooled,
    Request,
}

#[derive(Debug, Clone)]
pub struct PluginRef {
    pub name: String,
    pub wasm: PathBuf,
    /// The plugin's `config` table as JSON text, handed to `init`.
    pub config_json: String,
    pub on_error: FailMode,
    pub isolation: Isolation,
    pub memory: u64,
    pub cpu: Duration,
    pub http_allow: Vec<String>,
    pub http_timeout: Duration,
    /// The request headers the plugin is shown (`None`: all of them). Least privilege for
    /// credentials and cookies, and fewer strings copied into the guest on every call.
    pub request_headers: Option<Vec<http::HeaderName>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeySet {
    pub hmac_secret: Option<String>,
    pub pem: Vec<PathBuf>,
    pub jwks: Option<PathBuf>,
    pub jwks_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_request_head: usize,
    pub max_headers: usize,
    pub max_uri: usize,
    pub max_body: u64,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub h2_max_streams: u32,
    pub connect_timeout: Duration,
    pub route_timeout: Duration,
    pub drain_timeout: Duration,
}

impl Default for Limits {
    /// Edge-proxy defaults (see docs): Envoy/nginx-derived.
    fn default() -> Self {
        Self {
            max_request_head: 60 * 1024,
            max_headers: 100,
            max_uri: 8 * 1024,
            max_body: 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            h2_max_streams: 100,
            connect_timeout: Duration::from_secs(5),
            route_timeout: Duration::from_secs(15),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogSettings {
    pub format: LogFormat,
    pub access_log: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeSettings {
    pub cache_dir: Option<PathBuf>,
    pub pool_max_uses: u64,
    /// Instance slots of the Wasm pooling allocator (`[runtime] max_instances`).
    pub max_instances: u32,
}

/// `[cluster]`: rate limits and kv shared by every instance through Redis (see `crate::cluster`).
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub redis: String,
    pub timeout: Duration,
    pub on_backend_error: BackendFailMode,
    pub limiters: BTreeMap<String, BackendFailMode>,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub key_prefix: String,
}

/// What a limiter answers while the shared backend is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendFailMode {
    /// Admit the request (availability over accuracy).
    Open,
    /// Deny the request (429 from the rate-limit plugin).
    Closed,
    /// Fall back to this process's own in-memory limiter (each instance enforces the full limit).
    Local,
}

impl BackendFailMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendFailMode::Open => "open",
            BackendFailMode::Closed => "closed",
            BackendFailMode::Local => "local",
        }
    }
}
