//! Scale-out: several Weir processes share rate limits and plugin kv state through one Redis.
//!
//! `[cluster] redis = "redis://…"` swaps the policy runtime's in-process backends for
//! [`RedisLimiter`] and [`RedisKv`]. Both go through one [`ClusterBackend`], which owns:
//!
//! - one multiplexed connection (every request pipelines on it; reconnects happen here, not in
//!   a library loop, so every failure is visible to the breaker);
//! - a per-call timeout (default 50 ms, connect included) so a slow Redis bounds request latency;
//! - a circuit breaker: after `breaker_failures` consecutive failures or timeouts it opens and
//!   calls fail at once (a dead Redis then costs nothing per request). After `breaker_cooldown`
//!   a background PING probes Redis; success closes the breaker, so recovery needs no restart.
//!
//! Rate limiting is GCRA evaluated atomically inside Redis by a Lua script (one round trip,
//! server clock, so instances never disagree about time). When Redis cannot answer, each limiter
//! applies its fail mode: `open` admits, `closed` denies, `local` asks this process's own
//! governor limiter. kv errors are handed to the plugin, which decides.
//!
//! Keys: `{prefix}:rl:{namespace}:{limiter}:{key}` and `{prefix}:kv:{namespaced key}`, with `%`
//! and `:` percent-encoded in the namespace and limiter name so no two limiters share a key.

use crate::config::{self, BackendFailMode};
use futures::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, ServerErrorKind};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use weir_wasm_host::{InProcessLimiter, KvBackend, RateDecision, RateLimitBackend, RateQuota};

/// Server-side GCRA. KEYS[1] holds the bucket's theoretical arrival time (µs, server clock).
/// ARGV: emission interval µs, tolerance µs (interval × limit), cost.
/// Returns {allowed 0/1, remaining, reset ms, retry-after ms}.
const GCRA: &str = r#"
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - tolerance
if now < allow_at then
  return {0, 0, math.ceil((tat - now) / 1000), math.ceil((allow_at - now) / 1000)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((tolerance - (new_tat - now)) / interval), math.ceil((new_tat - now) / 1000), 0}
"#;

/// INCRBY whose ttl applies only when the key is created (ARGV[2] < 0: no ttl).
const INCR: &str = r#"
local existed = redis.call('EXISTS', KEYS[1])
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if existed == 0 and tonumber(ARGV[2]) >= 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v
"#;

/// Compare-and-swap. ARGV: expected present 0/1, expected, new, ttl ms (< 0: none).
const CAS: &str = r#"
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if cur ~= ARGV[2] then return 0 end
elseif cur then
  return 0
end
local ttl = tonumber(ARGV[4])
if ttl < 0 then redis.call('SET', KEYS[1], ARGV[3])
elseif ttl == 0 then redis.call('DEL', KEYS[1])
else redis.call('SET', KEYS[1], ARGV[3], 'PX', ttl) end
return 1
"#;

/// A Lua script with its SHA1, run by EVALSHA and, when Redis has not seen it yet (fresh or
/// restarted server), by EVAL, which also caches it.
struct Script {
    src: &'static str,
    sha: String,
}

impl Script {
    fn new(src: &'static str) -> Self {
        Self {
            src,
            sha: redis::Script::new(src).get_hash().to_string(),
        }
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        conn: &mut MultiplexedConnection,
        key: &str,
        args: &[&[u8]],
    ) -> redis::RedisResult<T> {
        let build = |verb: &str, body: &str| {
            let mut c = redis::cmd(verb);
            c.arg(body).arg(1).arg(key);
            for a in args {
                c.arg(*a);
            }
            c
        };
        match build("EVALSHA", &self.sha).query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                build("EVAL", self.src).query_async(conn).await
            }
            r => r,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    mode: &'static str,
}

/// `weir_cluster_*` metrics, registered into the gateway's registry.
#[derive(Default)]
struct ClusterMetrics {
    up: Gauge,
    calls: Family<OpLabel, Counter>,
    failures: Family<OpLabel, Counter>,
    timeouts: Family<OpLabel, Counter>,
    short_circuited: Family<OpLabel, Counter>,
    fallbacks: Family<ModeLabel, Counter>,
}

/// Why a Redis call did not produce a value.
#[derive(Debug, Clone)]
enum CallError {
    /// The breaker is open: no call was made.
    Open,
    Timeout(Duration),
    /// Connection-level failure (refused, reset, protocol, auth…): counts against the breaker.
    Backend(String),
    /// Redis answered with an error (e.g. not an integer): the server is healthy.
    Reply(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Open => write!(f, "redis unavailable (circuit breaker open)"),
            CallError::Timeout(d) => write!(f, "redis call timed out after {d:?}"),
            CallError::Backend(e) => write!(f, "redis unavailable: {e}"),
            CallError::Reply(e) => write!(f, "redis error: {e}"),
        }
    }
}

/// True when the error says the server or the path to it is unhealthy (as opposed to a
/// well-formed error reply about the data).
fn is_backend_failure(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::Server(k) => matches!(
            k,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::NoPerm
        ),
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => false,
        _ => true,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerMode {
    Closed,
    Open {
        until: Instant,
    },
    /// A background probe is in flight; calls still short-circuit.
    HalfOpen,
}

#[derive(Debug)]
struct BreakerState {
    mode: BreakerMode,
    consecutive_failures: u32,
    last_error: Option<(String, SystemTime)>,
    opened_at: Option<SystemTime>,
    times_opened: u64,
}

/// Closed → (N consecutive failures) → Open → (cool-down) → HalfOpen (one probe) → Closed or Open.
#[derive(Debug)]
struct Breaker {
    state: Mutex<BreakerState>,
    failures_to_open: u32,
    cooldown: Duration,
}

enum Admit {
    Call,
    Reject { probe: bool },
}

impl Breaker {
    fn new(failures_to_open: u32, cooldown: Duration) -> Self {
        Self {
            state: Mutex::new(BreakerState {
                mode: BreakerMode::Closed,
                consecutive_failures: 0,
                last_error: None,
                opened_at: None,
                times_opened: 0,
            }),
            failures_to_open: failures_to_open.max(1),
            cooldown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a call may go to Redis; `probe` tells the caller to start the one probe.
    fn admit(&self, now: Instant) -> Admit {
        let mut s = self.lock();
        match s.mode {
            BreakerMode::Closed => Admit::Call,
            BreakerMode::Open { until } if now >= until => {
                s.mode = BreakerMode::HalfOpen;
                Admit::Reject { probe: true }
            }
            BreakerMode::Open { .. } | BreakerMode::HalfOpen => Admit::Reject { probe: false },
        }
    }

    /// Returns true if this closed a breaker that was not closed.
    fn success(&self) -> bool {
        let mut s = self.lock();
        s.consecutive_failures = 0;
        let recovered = s.mode != BreakerMode::Closed;
        s.mode = BreakerMode::Closed;
        recovered
    }

    /// Returns true if this opened a closed breaker.
    fn failure(&self, error: String, now: Instant) -> bool {
        let mut s = self.lock();
        s.last_error = Some((error, SystemTime::now()));
        match s.mode {
            BreakerMode::Closed => {
                s.consecutive_failures = s.consecutive_failures.saturating_add(1);
                if s.consecutive_failures >= self.failures_to_open {
                    s.mode = BreakerMode::Open {
                        until: now + self.cooldown,
                    };
                    s.opened_at = Some(SystemTime::now());
                    s.times_opened += 1;
                    return true;
                }
                false
            }
            BreakerMode::HalfOpen => {
                s.mode = BreakerMode::Open {
                    until: now + self.cooldown,
                };
                false
            }
            BreakerMode::Open { .. } => false,
        }
    }

    /// Puts a half-open breaker back to open (a probe could not be started).
    fn reopen(&self, now: Instant) {
        let mut s = self.lock();
        if s.mode == BreakerMode::HalfOpen {
            s.mode = BreakerMode::Open {
                until: now + self.cooldown,
            };
        }
    }

    fn is_closed(&self) -> bool {
        self.lock().mode == BreakerMode::Closed
    }
}

struct Shared {
    client: redis::Client,
    /// The URL without its password, for status and logs.
    url: String,
    timeout: Duration,
    prefix: String,
    /// The live connection and its generation (so a stale failure never drops a newer one).
    conn: Mutex<Option<(u64, MultiplexedConnection)>>,
    generation: AtomicU64,
    /// One connect at a time; others wait for it (within their own timeout).
    connecting: tokio::sync::Mutex<()>,
    breaker: Breaker,
    metrics: ClusterMetrics,
}

const NO_GEN: u64 = u64::MAX;

impl Shared {
    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn invalidate(&self, generation: u64) {
        let mut c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if c.as_ref()
            .is_some_and(|(g, _)| *g == generation || generation == NO_GEN)
        {
            *c = None;
        }
    }

    async fn connection(&self) -> redis::RedisResult<(u64, MultiplexedConnection)> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(None);
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        let g = self.generation.fetch_add(1, Ordering::Relaxed);
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some((g, conn.clone()));
        Ok((g, conn))
    }

    /// Runs `f` on the connection, bounded by the timeout, without consulting the breaker.
    async fn exec<T, F, Fut>(self: &Arc<Self>, op: &'static str, f: F) -> Result<T, CallError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let label = OpLabel { op };
        self.metrics.calls.get_or_create(&label).inc();
        let used = AtomicU64::new(NO_GEN);
        let work = async {
            let (g, conn) = self.connection().await?;
            used.store(g, Ordering::Relaxed);
            f(conn).await
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(v)) => {
                self.on_success();
                Ok(v)
            }
            Ok(Err(e)) if is_backend_failure(&e) => {
                if e.is_timeout() {
                    // The connect timeout inside the client (a frozen server accepts TCP).
                    self.metrics.timeouts.get_or_create(&label).inc();
                } else {
                    self.metrics.failures.get_or_create(&label).inc();
                }
                self.invalidate(used.load(Ordering::Relaxed));
                let err = CallError::Backend(e.to_string());
                self.on_failure(&err, Instant::now());
                Err(err)
            }
            Ok(Err(e)) => {
                self.on_success();
                Err(CallError::Reply(e.to_string()))
            }
            Err(_) => {
                self.metrics.timeouts.get_or_create(&label).inc();
                // A silent server (frozen, partitioned) may never answer on this socket again.
                self.invalidate(used.load(Ordering::Relaxed));
                let err = CallError::Timeout(self.timeout);
                self.on_failure(&err, Instant::now());
                Err(err)
            }
        }
    }

    fn on_success(&self) {
        if self.breaker.success() {
            self.metrics.up.set(1);
            tracing::info!(redis = %self.url, "cluster backend recovered; circuit breaker closed");
        }
    }

    fn on_failure(self: &Arc<Self>, err: &CallError, now: Instant) {
        if self.breaker.failure(err.to_string(), now) {
            self.metrics.up.set(0);
            tracing::warn!(
                redis = %self.url,
                error = %err,
                cooldown = ?self.breaker.cooldown,
                "cluster backend failing; circuit breaker open, limiters apply their fail mode"
            );
            self.spawn_recovery();
        }
    }

    /// While the breaker is open, probes once per cool-down even without traffic, so the first
    /// requests after Redis returns already go to Redis. Ends when the breaker closes or the
    /// backend is dropped.
    fn spawn_recovery(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(self);
        let cooldown = self.breaker.cooldown;
        rt.spawn(async move {
            loop {
                tokio::time::sleep(cooldown).await;
                let Some(me) = weak.upgrade() else { return };
                if me.breaker.is_closed() {
                    return;
                }
                if let Admit::Reject { probe: true } = me.breaker.admit(Instant::now()) {
                    me.probe().await;
                }
            }
        });
    }

    async fn probe(self: &Arc<Self>) {
        let r = self
            .exec("probe", |mut c| async move {
                redis::cmd("PING").query_async::<String>(&mut c).await
            })
            .await;
        if let Err(e) = r {
            tracing::debug!(redis = %self.url, error = %e, "cluster backend probe failed");
        }
    }

    /// A call through the breaker: short-circuits while it is open.
    async fn call<T, F, Fut>(self: &Arc<Self>, op: &'static str, f: F) -> Result<T, CallError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match self.breaker.admit(Instant::now()) {
            Admit::Call => self.exec(op, f).await,
            Admit::Reject { probe } => {
                self.metrics
                    .short_circuited
                    .get_or_create(&OpLabel { op })
                    .inc();
                if probe {
                    self.spawn_probe();
                }
                Err(CallError::Open)
            }
        }
    }

    /// PINGs Redis in the background; the result closes or re-opens the breaker.
    fn spawn_probe(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.breaker.reopen(Instant::now());
            return;
        };
        let me = self.clone();
        rt.spawn(async move { me.probe().await });
    }

    /// Starts a probe if the breaker's cool-down is over (for callers that make no call).
    fn poke(self: &Arc<Self>) {
        if let Admit::Reject { probe: true } = self.breaker.admit(Instant::now()) {
            self.spawn_probe();
        }
    }
}

/// The Redis connection, breaker and metrics shared by [`RedisLimiter`] and [`RedisKv`].
#[derive(Clone)]
pub struct ClusterBackend {
    shared: Arc<Shared>,
    cfg: config::Cluster,
}

impl std::fmt::Debug for ClusterBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBackend")
            .field("redis", &self.shared.url)
            .finish_non_exhaustive()
    }
}

/// `redis://user:secret@host` → `redis://user:***@host`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth_end, host_part) = match rest.split_once('@') {
        Some((auth, host)) if !auth.contains('/') => (Some(auth), host),
        _ => (None, rest),
    };
    match auth_end {
        Some(auth) => {
            let user = auth.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{host_part}")
        }
        None => url.to_string(),
    }
}

/// Percent-encodes `%` and `:` so key segments cannot run into each other.
fn segment(s: &str) -> String {
    s.replace('%', "%25").replace(':', "%3A")
}

impl ClusterBackend {
    /// Builds the backend without connecting (the connection is made in the background now,
    /// or by the first call); a Redis that is down at start only makes limiters use their fail
    /// mode until it comes up.
    pub fn new(cfg: &config::Cluster) -> anyhow::Result<Self> {
        let client = redis::Client::open(cfg.redis.as_str())
            .map_err(|e| anyhow::anyhow!("cluster.redis: {e}"))?;
        let shared = Arc::new(Shared {
            client,
            url: redact(&cfg.redis),
            timeout: cfg.timeout,
            prefix: cfg.key_prefix.clone(),
            conn: Mutex::new(None),
            generation: AtomicU64::new(0),
            connecting: tokio::sync::Mutex::new(()),
            breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown),
            metrics: ClusterMetrics::default(),
        });
        shared.metrics.up.set(1);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let warm = shared.clone();
            rt.spawn(async move {
                let r = warm
                    .exec("probe", |mut c| async move {
                        redis::cmd("PING").query_async::<String>(&mut c).await
                    })
                    .await;
                if let Err(e) = r {
                    tracing::warn!(redis = %warm.url, error = %e, "cluster backend not reachable at start");
                }
            });
        }
        Ok(Self {
            shared,
            cfg: cfg.clone(),
        })
    }

    /// The shared rate limiter (with its per-limiter fail modes).
    pub fn limiter(&self) -> Arc<RedisLimiter> {
        Arc::new(RedisLimiter {
            shared: self.shared.clone(),
            script: Script::new(GCRA),
            default_mode: self.cfg.on_backend_error,
            modes: self
                .cfg
                .limiters
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            local: InProcessLimiter::default(),
        })
    }

    /// The shared kv store.
    pub fn kv(&self) -> Arc<RedisKv> {
        Arc::new(RedisKv {
            shared: self.shared.clone(),
            incr: Script::new(INCR),
            cas: Script::new(CAS),
        })
    }

    /// Adds the `weir_cluster_*` metrics to the gateway's registry.
    pub fn register_metrics(&self, reg: &mut Registry) {
        let m = &self.shared.metrics;
        reg.register(
            "cluster_backend_up",
            "1 while the Redis circuit breaker is closed",
            m.up.clone(),
        );
        reg.register(
            "cluster_backend_calls",
            "Redis calls by operation",
            m.calls.clone(),
        );
        reg.register(
            "cluster_backend_failures",
            "Redis calls that failed at the connection level, by operation",
            m.failures.clone(),
        );
        reg.register(
            "cluster_backend_timeouts",
            "Redis calls that hit the cluster timeout, by operation",
            m.timeouts.clone(),
        );
        reg.register(
            "cluster_backend_short_circuited",
            "Calls not sent because the circuit breaker was open, by operation",
            m.short_circuited.clone(),
        );
        reg.register(
            "cluster_limiter_fallbacks",
            "Rate-limit decisions made by a fail mode instead of Redis",
            m.fallbacks.clone(),
        );
    }

    /// Health for `/admin/status` → `policy_backend`.
    pub fn status(&self) -> serde_json::Value {
        self.shared.poke();
        let s = self.shared.breaker.lock();
        let (breaker, retry_in_ms) = match s.mode {
            BreakerMode::Closed => ("closed", None),
            BreakerMode::HalfOpen => ("half-open", None),
            BreakerMode::Open { until } => (
                "open",
                Some(until.saturating_duration_since(Instant::now()).as_millis() as u64),
            ),
        };
        let rfc = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
        serde_json::json!({
            "kv": "redis",
            "rate_limit": "redis",
            "redis": self.shared.url,
            "up": s.mode == BreakerMode::Closed,
            "connected": self.shared.current().is_some(),
            "breaker": breaker,
            "probe_in_ms": retry_in_ms,
            "consecutive_failures": s.consecutive_failures,
            "times_opened": s.times_opened,
            "opened_at": s.opened_at.map(rfc),
            "last_error": s.last_error.as_ref().map(|(e, _)| e.clone()),
            "last_error_at": s.last_error.as_ref().map(|(_, t)| rfc(*t)),
            "timeout_ms": self.cfg.timeout.as_millis() as u64,
            "breaker_failures": self.cfg.breaker_failures,
            "breaker_cooldown_ms": self.cfg.breaker_cooldown.as_millis() as u64,
            "key_prefix": self.cfg.key_prefix,
            "on_backend_error": self.cfg.on_backend_error.as_str(),
            "limiters": self.cfg.limiters.iter().map(|(k, v)| (k.clone(), v.as_str())).collect::<std::collections::BTreeMap<_, _>>(),
        })
    }

    /// True while the breaker is closed.
    pub fn is_up(&self) -> bool {
        self.shared.breaker.is_closed()
    }
}

/// Rate limits shared by every instance: GCRA in Redis, per-limiter fail modes.
pub struct RedisLimiter {
    shared: Arc<Shared>,
    script: Script,
    default_mode: BackendFailMode,
    modes: HashMap<String, BackendFailMode>,
    /// Used by limiters in `local` mode while Redis is unavailable.
    local: InProcessLimiter,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("redis", &self.shared.url)
            .field("default_mode", &self.default_mode)
            .field("modes", &self.modes)
            .finish_non_exhaustive()
    }
}

/// Longest window accepted: keeps server-side µs arithmetic exact in Lua's doubles.
const MAX_WINDOW: Duration = Duration::from_secs(10 * 366 * 86_400);

impl RedisLimiter {
    fn mode(&self, name: &str) -> BackendFailMode {
        self.modes.get(name).copied().unwrap_or(self.default_mode)
    }

    fn key(&self, namespace: &str, name: &str, key: &str) -> String {
        format!(
            "{}:rl:{}:{}:{key}",
            self.shared.prefix,
            segment(namespace),
            segment(name)
        )
    }

    async fn check_redis(
        &self,
        bucket: &str,
        quota: RateQuota,
        cost: u32,
    ) -> Result<RateDecision, CallError> {
        let window_us = quota.window.as_micros();
        let interval = (window_us / u128::from(quota.limit)).max(1);
        let tolerance = interval * u128::from(quota.limit);
        let (interval, tolerance, cost_s) = (
            interval.to_string(),
            tolerance.to_string(),
            cost.to_string(),
        );
        let r: Vec<i64> = self
            .shared
            .call("rate_limit", |mut c| async move {
                self.script
                    .run(
                        &mut c,
                        bucket,
                        &[interval.as_bytes(), tolerance.as_bytes(), cost_s.as_bytes()],
                    )
                    .await
            })
            .await?;
        let [allowed, remaining, reset_ms, retry_ms] = r[..] else {
            return Err(CallError::Reply(format!(
                "rate-limit script returned {} values",
                r.len()
            )));
        };
        let ms = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0));
        Ok(RateDecision {
            allowed: allowed == 1,
            limit: quota.limit,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            reset: ms(reset_ms),
            retry_after: ms(retry_ms),
        })
    }
}

impl RateLimitBackend for RedisLimiter {
    fn check<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        key: &'a str,
        quota: RateQuota,
        cost: u32,
    ) -> BoxFuture<'a, Result<RateDecision, String>> {
        Box::pin(async move {
            // Argument errors are the plugin's, whatever the backend's health.
            if quota.limit == 0 {
                return Err("quota limit must be > 0".into());
            }
            if quota.window.is_zero() || quota.window > MAX_WINDOW {
                return Err("quota window must be > 0 and at most 10 years".into());
            }
            if cost == 0 {
                return Err("cost must be > 0".into());
            }
            if cost > quota.limit {
                return Err(format!(
                    "cost {cost} exceeds the quota limit {}",
                    quota.limit
                ));
            }
            let bucket = self.key(namespace, name, key);
            match self.check_redis(&bucket, quota, cost).await {
                Ok(d) => Ok(d),
                Err(e) => {
                    let mode = self.mode(name);
                    self.shared
                        .metrics
                        .fallbacks
                        .get_or_create(&ModeLabel {
                            mode: mode.as_str(),
                        })
                        .inc();
                    tracing::debug!(limiter = name, error = %e, mode = mode.as_str(), "shared limiter unavailable");
                    match mode {
                        BackendFailMode::Open => Ok(RateDecision {
                            allowed: true,
                            limit: quota.limit,
                            remaining: quota.limit - cost,
                            reset: Duration::ZERO,
                            retry_after: Duration::ZERO,
                        }),
                        BackendFailMode::Closed => {
                            let wait = self.shared.breaker.cooldown.max(Duration::from_secs(1));
                            Ok(RateDecision {
                                allowed: false,
                                limit: quota.limit,
                                remaining: 0,
                                reset: wait,
                                retry_after: wait,
                            })
                        }
                        BackendFailMode::Local => {
                            self.local.check(namespace, name, key, quota, cost).await
                        }
                    }
                }
            }
        })
    }
}

/// Plugin kv state shared by every instance.
pub struct RedisKv {
    shared: Arc<Shared>,
    incr: Script,
    cas: Script,
}

impl std::fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKv")
            .field("redis", &self.shared.url)
            .finish_non_exhaustive()
    }
}

/// Milliseconds for PX/PEXPIRE; `-1` means no ttl (scripts read a negative value as "none").
fn ttl_arg(ttl: Option<Duration>) -> i64 {
    ttl.map_or(-1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl RedisKv {
    fn key(&self, key: &str) -> String {
        format!("{}:kv:{key}", self.shared.prefix)
    }
}

impl KvBackend for RedisKv {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, String>> {
        Box::pin(async move {
            let k = self.key(key);
            self.shared
                .call("kv_get", |mut c| async move {
                    redis::cmd("GET")
                        .arg(&k)
                        .query_async::<Option<Vec<u8>>>(&mut c)
                        .await
                })
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let k = self.key(key);
            self.shared
                .call("kv_set", |mut c| async move {
                    match ttl_arg(ttl) {
                        // A zero ttl expires at once (as in the in-process store).
                        0 => redis::cmd("DEL").arg(&k).query_async::<()>(&mut c).await,
                        ms if ms > 0 => {
                            redis::cmd("SET")
                                .arg(&k)
                                .arg(value)
                                .arg("PX")
                                .arg(ms)
                                .query_async::<()>(&mut c)
                                .await
                        }
                        _ => {
                            redis::cmd("SET")
                                .arg(&k)
                                .arg(value)
                                .query_async::<()>(&mut c)
                                .await
                        }
                    }
                })
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let k = self.key(key);
            self.shared
                .call("kv_delete", |mut c| async move {
                    redis::cmd("DEL").arg(&k).query_async::<i64>(&mut c).await
                })
                .await
                .map(|n| n > 0)
                .map_err(|e| e.to_string())
        })
    }

    fn increment<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<i64, String>> {
        Box::pin(async move {
            let k = self.key(key);
            let (d, t) = (delta.to_string(), ttl_arg(ttl).to_string());
            self.shared
                .call("kv_increment", |mut c| async move {
                    self.incr
                        .run::<i64>(&mut c, &k, &[d.as_bytes(), t.as_bytes()])
                        .await
                })
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let k = self.key(key);
            let present: &[u8] = if expected.is_some() { b"1" } else { b"0" };
            let exp = expected.unwrap_or_default();
            let t = ttl_arg(ttl).to_string();
            self.shared
                .call("kv_cas", |mut c| async move {
                    self.cas
                        .run::<i64>(&mut c, &k, &[present, &exp, &new, t.as_bytes()])
                        .await
                })
                .await
                .map(|n| n == 1)
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_n_failures_and_probes_after_cooldown() {
        let b = Breaker::new(3, Duration::from_millis(100));
        let t0 = Instant::now();
        assert!(matches!(b.admit(t0), Admit::Call));
        assert!(!b.failure("x".into(), t0));
        assert!(!b.failure("x".into(), t0));
        // A success in between resets the count.
        assert!(!b.success());
        assert!(!b.failure("x".into(), t0));
        assert!(!b.failure("x".into(), t0));
        assert!(b.failure("x".into(), t0));
        assert!(matches!(b.admit(t0), Admit::Reject { probe: false }));
        let later = t0 + Duration::from_millis(150);
        // Exactly one caller gets to start the probe.
        assert!(matches!(b.admit(later), Admit::Reject { probe: true }));
        assert!(matches!(b.admit(later), Admit::Reject { probe: false }));
        // Failed probe: open again for another cool-down.
        assert!(!b.failure("still down".into(), later));
        assert!(matches!(b.admit(later), Admit::Reject { probe: false }));
        let later2 = later + Duration::from_millis(150);
        assert!(matches!(b.admit(later2), Admit::Reject { probe: true }));
        assert!(b.success());
        assert!(matches!(b.admit(later2), Admit::Call));
        assert_eq!(
            b.lock().last_error.as_ref().map(|e| e.0.as_str()),
            Some("still down")
        );
    }

    #[test]
    fn key_segments_cannot_collide() {
        assert_ne!(
            format!("{}:{}:c", segment("a:b"), segment("x")),
            format!("{}:{}:c", segment("a"), segment("b:x"))
        );
        assert_eq!(
            segment("weir/route api/0:rate-limit/"),
            "weir/route api/0%3Arate-limit/"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact("redis://u:secret@h:6379/0"),
            "redis://u:***@h:6379/0"
        );
        assert_eq!(redact("redis://:secret@h"), "redis://:***@h");
    }

    #[test]
    fn reply_errors_do_not_trip_the_breaker() {
        let reply = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "value is not an integer",
        ));
        assert!(!is_backend_failure(&reply));
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(is_backend_failure(&io));
        let loading = RedisError::from((ErrorKind::Server(ServerErrorKind::BusyLoading), "x"));
        assert!(is_backend_failure(&loading));
    }
}
