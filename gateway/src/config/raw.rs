//! The user-facing TOML shape, exactly as written. Nothing outside `config` sees these types:
//! `model.rs` turns them into the validated internal model. Unknown keys are not refused by serde
//! (that would stop at the first one): `parse` collects them all with `serde_ignored` and reports
//! each with its location, next to every other validation error.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
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
pub struct RawAdmin {
    pub listen: String,
}

#[derive(Debug, Deserialize)]
pub struct RawListener {
    pub name: String,
    pub listen: String,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
pub struct RawTls {
    pub certs: Vec<RawCertPair>,
    pub client_ca: Option<String>,
    pub session_resumption: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct RawCertPair {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
pub struct RawUpstream {
    /// Defaulted so that a typo (`tagets`) is reported as an unknown key, not a parse failure.
    #[serde(default)]
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
pub struct RawTarget {
    pub url: String,
    pub weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct RawHealth {
    pub path: String,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub unhealthy_after: Option<u32>,
    pub healthy_after: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct RawPassive {
    pub consecutive_failures: Option<u32>,
    pub base_ejection: Option<String>,
    pub max_ejection: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawUpstreamTls {
    pub ca: Option<String>,
    pub sni: Option<String>,
}

#[derive(Debug, Deserialize)]
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
pub struct RawHeaderMatch {
    pub name: String,
    pub value: Option<String>,
    pub regex: Option<String>,
    pub present: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct RawRetries {
    pub attempts: u32,
    #[serde(default)]
    pub on: Vec<String>,
    /// Extra retries allowed as a percentage of requests (retry budget), default 20.
    pub budget_percent: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRouteLimits {
    pub max_body: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawPlugin {
    pub name: String,
    pub wasm: String,
    pub config: Option<toml::Value>,
    pub on_error: Option<String>,
    pub isolation: Option<String>,
    #[serde(default)]
    pub limits: RawPluginLimits,
    pub http: Option<RawPluginHttp>,
    pub request_headers: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawPluginLimits {
    pub memory: Option<String>,
    pub cpu: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawPluginHttp {
    #[serde(default)]
    pub allow: Vec<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawKeySet {
    pub hmac_secret: Option<String>,
    #[serde(default)]
    pub pem: Vec<String>,
    pub jwks: Option<String>,
    pub jwks_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
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
pub struct RawLog {
    pub format: Option<String>,
    pub access_log: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct RawRuntime {
    pub cache_dir: Option<String>,
    pub pool_max_uses: Option<u64>,
    pub max_instances: Option<u32>,
}

#[derive(Debug, Deserialize)]
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

/// Every key name of the config structs, for "did you mean" hints on unknown keys. Collected from
/// serde's own field lists, so it cannot drift from the structs above.
pub fn known_keys() -> Vec<&'static str> {
    use serde::de::{self, Visitor};
    #[derive(Debug)]
    struct Fields(&'static [&'static str]);
    impl std::fmt::Display for Fields {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("probe")
        }
    }
    impl std::error::Error for Fields {}
    impl de::Error for Fields {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Fields(&[])
        }
    }
    /// A deserializer that only records the field list it is asked for.
    struct Probe;
    impl<'de> de::Deserializer<'de> for Probe {
        type Error = Fields;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Fields> {
            Err(Fields(&[]))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Fields> {
            Err(Fields(fields))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    fn fields<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
        match T::deserialize(Probe) {
            Err(Fields(f)) => f,
            Ok(_) => &[],
        }
    }
    [
        fields::<RawConfig>(),
        fields::<RawAdmin>(),
        fields::<RawListener>(),
        fields::<RawTls>(),
        fields::<RawCertPair>(),
        fields::<RawUpstream>(),
        fields::<RawTarget>(),
        fields::<RawHealth>(),
        fields::<RawPassive>(),
        fields::<RawUpstreamTls>(),
        fields::<RawRoute>(),
        fields::<RawMatch>(),
        fields::<RawHeaderMatch>(),
        fields::<RawRetries>(),
        fields::<RawRouteLimits>(),
        fields::<RawPlugin>(),
        fields::<RawPluginLimits>(),
        fields::<RawPluginHttp>(),
        fields::<RawKeySet>(),
        fields::<RawLimits>(),
        fields::<RawLog>(),
        fields::<RawRuntime>(),
        fields::<RawCluster>(),
    ]
    .concat()
}
