//! Configuration: TOML text → [`raw`] (serde, `deny_unknown_fields`) → validated [`model::Config`].
//!
//! Validation collects *every* problem with its location (`file:line:col: key.path: message`), so
//! `weir validate` and a failed reload can show them all at once.

pub mod locate;
pub mod model;
pub mod raw;

use locate::KeyPath;
pub use model::*;
use raw::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Wasm instance slots by default (`[runtime] max_instances`), as `weir_wasm_host::RuntimeConfig`.
const DEFAULT_MAX_INSTANCES: u32 = 1000;
/// Each slot reserves its own linear-memory address range (4 GiB plus guard pages on 64-bit), so
/// 10,000 slots already reserve ~40 TiB of the 128 TiB a Linux process can address.
const MAX_INSTANCES_CAP: u32 = 10_000;

/// One problem found in a config file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub col: Option<usize>,
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let (Some(l), Some(c)) = (self.line, self.col) {
            write!(f, ":{l}:{c}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads and validates a config file. Relative paths inside it are resolved against its directory.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.display().to_string(),
            line: None,
            col: None,
            key: String::new(),
            message: format!("cannot read: {e}"),
        }])
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(
        &text,
        &path.display().to_string(),
        &base,
        Some(path.to_path_buf()),
    )
}

/// Parses and validates config text. `file` is only used in messages; `base` resolves relative paths.
pub fn parse(
    text: &str,
    file: &str,
    base: &Path,
    source: Option<PathBuf>,
) -> Result<Config, ConfigErrors> {
    let mut unknown: Vec<KeyPath> = Vec::new();
    let parsed = toml::Deserializer::parse(text)
        .and_then(|de| serde_ignored::deserialize(de, |path| unknown.push(key_path(&path))));
    let mut v = Validator {
        text,
        file,
        base,
        errors: Vec::new(),
    };
    let raw: RawConfig = match parsed {
        Ok(r) => r,
        Err(e) => {
            // The deserializer stops at its first error; unknown keys met before it are
            // reported with it.
            v.unknown_keys(&unknown);
            let (line, col) = match e.span() {
                Some(s) => {
                    let (l, c) = locate::line_col(text, s.start);
                    (Some(l), Some(c))
                }
                None => (None, None),
            };
            let key = e
                .span()
                .and_then(|s| locate::path_at(text, s.start))
                .map(|p| p.to_string())
                .unwrap_or_default();
            v.errors.push(ConfigError {
                file: file.to_string(),
                line,
                col,
                key,
                message: one_line(e.message()),
            });
            return Err(ConfigErrors(v.errors));
        }
    };
    v.unknown_keys(&unknown);
    let cfg = v.config(raw, source);
    if v.errors.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigErrors(v.errors))
    }
}

impl Validator<'_> {
    fn unknown_keys(&mut self, unknown: &[KeyPath]) {
        if unknown.is_empty() {
            return;
        }
        let known = raw::known_keys();
        for k in unknown {
            let name = match k.0.last() {
                Some(locate::Seg::Key(n)) => n.as_str(),
                _ => "",
            };
            let hint = known
                .iter()
                .filter(|c| edit_distance(name, c) <= 2)
                .min_by_key(|c| edit_distance(name, c))
                .map(|c| format!(" (did you mean `{c}`?)"))
                .unwrap_or_default();
            self.err_at(k, true, format!("unknown key `{name}`{hint}"));
        }
    }
}

/// Converts a path reported by `serde_ignored` into our key path.
fn key_path(p: &serde_ignored::Path<'_>) -> KeyPath {
    use serde_ignored::Path;
    match p {
        Path::Root => KeyPath::default(),
        Path::Seq { parent, index } => key_path(parent).index(*index),
        Path::Map { parent, key } => key_path(parent).key(key),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Library error texts can span lines (regex); a report has one line per error.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

struct Validator<'a> {
    text: &'a str,
    file: &'a str,
    base: &'a Path,
    errors: Vec<ConfigError>,
}

/// Parses durations written as `"15s"`, `"250ms"`, `"2m"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Parses sizes written as `"1MiB"`, `"64KiB"`, `"512"`, `"2MB"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. \"1MiB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1024,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1024 * 1024,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1024 * 1024 * 1024,
        other => return Err(format!("invalid size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

impl Validator<'_> {
    fn err(&mut self, at: &KeyPath, message: impl Into<String>) {
        self.err_at(at, false, message)
    }

    /// Records an error located at the key (`at_key`) or at its value.
    fn err_at(&mut self, at: &KeyPath, at_key: bool, message: impl Into<String>) {
        let (line, col) = match locate::locate(self.text, at, at_key) {
            Some(off) => {
                let (l, c) = locate::line_col(self.text, off);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            col,
            key: at.to_string(),
            message: one_line(&message.into()),
        });
    }

    fn duration(&mut self, at: &KeyPath, v: Option<&String>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match parse_duration(s) {
                Ok(d) => d,
                Err(e) => {
                    self.err(at, e);
                    default
                }
            },
        }
    }

    fn size(&mut self, at: &KeyPath, v: Option<&String>, default: u64) -> u64 {
        match v {
            None => default,
            Some(s) => match parse_size(s) {
                Ok(n) => n,
                Err(e) => {
                    self.err(at, e);
                    default
                }
            },
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn existing_file(&mut self, at: &KeyPath, p: &str) -> PathBuf {
        let full = self.path(p);
        if !full.is_file() {
            self.err(at, format!("file not found: {}", full.display()));
        }
        full
    }

    fn addr(&mut self, at: &KeyPath, s: &str) -> Option<SocketAddr> {
        match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    at,
                    format!("invalid listen address {s:?}: expected IP:PORT"),
                );
                None
            }
        }
    }

    fn config(&mut self, raw: RawConfig, source: Option<PathBuf>) -> Config {
        let root = KeyPath::default();
        if raw.version != 1 {
            self.err(
                &root.key("version"),
                format!("unsupported config version {}: expected 1", raw.version),
            );
        }
        let admin = raw
            .admin
            .as_ref()
            .and_then(|a| self.addr(&root.key("admin").key("listen"), &a.listen));

        let mut listeners = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, l) in raw.listeners.iter().enumerate() {
            let at = root.key("listeners").index(i);
            if !names.insert(l.name.clone()) {
                self.err(
                    &at.key("name"),
                    format!("duplicate listener name {:?}", l.name),
                );
            }
            let Some(addr) = self.addr(&at.key("listen"), &l.listen) else {
                continue;
            };
            let tls = l.tls.as_ref().map(|t| {
                let tat = at.key("tls");
                if t.certs.is_empty() {
                    self.err(&tat.key("certs"), "at least one certificate is required");
                }
                let certs = t
                    .certs
                    .iter()
                    .enumerate()
                    .map(|(j, c)| {
                        let cat = tat.key("certs").index(j);
                        (
                            self.existing_file(&cat.key("cert"), &c.cert),
                            self.existing_file(&cat.key("key"), &c.key),
                        )
                    })
                    .collect();
                let client_ca = t
                    .client_ca
                    .as_ref()
                    .map(|ca| self.existing_file(&tat.key("client_ca"), ca));
                ListenerTls {
                    certs,
                    client_ca,
                    session_resumption: t.session_resumption.unwrap_or(true),
                }
            });
            listeners.push(Listener {
                name: l.name.clone(),
                addr,
                tls,
            });
        }

        let limits = self.limits(&root.key("limits"), &raw.limits);

        let mut upstreams = BTreeMap::new();
        for (name, u) in &raw.upstreams {
            let at = root.key("upstreams").key(name);
            upstreams.insert(name.clone(), self.upstream(&at, name, u, &limits));
        }

        let mut key_sets = BTreeMap::new();
        for (name, k) in &raw.key_sets {
            let at = root.key("key_sets").key(name);
            if k.hmac_secret.is_none()
                && k.pem.is_empty()
                && k.jwks.is_none()
                && k.jwks_url.is_none()
            {
                self.err(&at, "a key set needs hmac_secret, pem, jwks or jwks_url");
            }
            if let Some(secret) = &k.hmac_secret
                && secret.len() < 32
            {
                self.err(
                    &at.key("hmac_secret"),
                    "hmac_secret must be at least 32 bytes (RFC 7518 §3.2)",
                );
            }
            let pem = k
                .pem
                .iter()
                .enumerate()
                .map(|(i, p)| self.existing_file(&at.key("pem").index(i), p))
                .collect();
            let jwks = k
                .jwks
                .as_ref()
                .map(|p| self.existing_file(&at.key("jwks"), p));
            key_sets.insert(
                name.clone(),
                KeySet {
                    hmac_secret: k.hmac_secret.clone(),
                    pem,
                    jwks,
                    jwks_url: k.jwks_url.clone(),
                },
            );
        }

        let global_plugins = raw
            .plugins
            .iter()
            .enumerate()
            .map(|(i, p)| self.plugin(&root.key("plugins").index(i), p))
            .collect();

        let mut routes = Vec::new();
        let mut route_names = std::collections::HashSet::new();
        for (i, r) in raw.routes.iter().enumerate() {
            let at = root.key("routes").index(i);
            if !route_names.insert(r.name.clone()) {
                self.err(
                    &at.key("name"),
                    format!("duplicate route name {:?}", r.name),
                );
            }
            if let Some(route) = self.route(&at, r, &upstreams, &limits) {
                routes.push(route);
            }
        }
        // Only when none was written: a listener with errors has its own messages.
        if raw.listeners.is_empty() {
            self.err(&root, "at least one [[listeners]] entry is required");
        }

        let mut trusted_proxies = Vec::new();
        for (i, cidr) in raw.trusted_proxies.iter().enumerate() {
            let parsed = cidr
                .parse::<ipnet::IpNet>()
                .or_else(|_| cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(n) => trusted_proxies.push(n),
                Err(_) => self.err(
                    &root.key("trusted_proxies").index(i),
                    format!("invalid CIDR or IP {cidr:?}"),
                ),
            }
        }

        let format = match raw.log.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                self.err(
                    &root.key("log").key("format"),
                    format!("unknown log format {other:?}: expected \"text\" or \"json\""),
                );
                LogFormat::Text
            }
        };

        let runtime = RuntimeSettings {
            cache_dir: raw
                .runtime
                .as_ref()
                .and_then(|r| r.cache_dir.as_ref())
                .map(|p| self.path(p)),
            pool_max_uses: match raw.runtime.as_ref().and_then(|r| r.pool_max_uses) {
                Some(0) => {
                    self.err(
                        &root.key("runtime").key("pool_max_uses"),
                        "pool_max_uses must be at least 1",
                    );
                    1
                }
                Some(n) => n,
                None => 10_000,
            },
            max_instances: match raw.runtime.as_ref().and_then(|r| r.max_instances) {
                Some(n) if !(1..=MAX_INSTANCES_CAP).contains(&n) => {
                    self.err(
                        &root.key("runtime").key("max_instances"),
                        format!("max_instances must be between 1 and {MAX_INSTANCES_CAP}"),
                    );
                    1
                }
                Some(n) => n,
                None => DEFAULT_MAX_INSTANCES,
            },
        };
        let cluster = raw
            .cluster
            .as_ref()
            .map(|c| self.cluster(&root.key("cluster"), c));

        Config {
            source,
            text: self.text.to_string(),
            admin,
            listeners,
            upstreams,
            routes,
            global_plugins,
            key_sets,
            limits,
            trusted_proxies,
            log: LogSettings {
                format,
                access_log: raw.log.access_log.unwrap_or(true),
            },
            runtime,
            cluster,
        }
    }

    fn cluster(&mut self, at: &KeyPath, c: &RawCluster) -> Cluster {
        match redis::Client::open(c.redis.as_str()) {
            Err(e) => self.err(
                &at.key("redis"),
                format!("invalid Redis URL: {e} (expected redis://[user:password@]host:port[/db])"),
            ),
            Ok(_) if !c.redis.starts_with("redis://") => self.err(
                &at.key("redis"),
                "expected a redis:// URL (TLS and unix sockets are not supported)",
            ),
            Ok(_) => {}
        }
        let timeout = self.duration(
            &at.key("timeout"),
            c.timeout.as_ref(),
            Duration::from_millis(50),
        );
        if timeout.is_zero() || timeout > Duration::from_secs(5) {
            self.err(
                &at.key("timeout"),
                "must be between 1ms and 5s: it is paid by requests while Redis is slow",
            );
        }
        let fail_mode = |v: &mut Self, key: &KeyPath, s: &str| match s {
            "open" => BackendFailMode::Open,
            "closed" => BackendFailMode::Closed,
            "local" => BackendFailMode::Local,
            other => {
                v.err(
                    key,
                    format!(
                        "unknown fail mode {other:?}: expected \"open\", \"closed\" or \"local\""
                    ),
                );
                BackendFailMode::Local
            }
        };
        let on_backend_error = match &c.on_backend_error {
            Some(s) => fail_mode(self, &at.key("on_backend_error"), s),
            None => BackendFailMode::Local,
        };
        let limiters = c
            .limiters
            .iter()
            .map(|(name, mode)| {
                let m = fail_mode(self, &at.key("limiters").key(name), mode);
                (name.clone(), m)
            })
            .collect();
        let breaker_failures = c.breaker_failures.unwrap_or(5);
        if breaker_failures == 0 {
            self.err(&at.key("breaker_failures"), "must be at least 1");
        }
        let breaker_cooldown = self.duration(
            &at.key("breaker_cooldown"),
            c.breaker_cooldown.as_ref(),
            Duration::from_secs(1),
        );
        if breaker_cooldown < Duration::from_millis(10) {
            self.err(&at.key("breaker_cooldown"), "must be at least 10ms");
        }
        let key_prefix = c.key_prefix.clone().unwrap_or_else(|| "weir".to_string());
        if key_prefix.is_empty() || key_prefix.contains(char::is_whitespace) {
            self.err(
                &at.key("key_prefix"),
                "must be non-empty and contain no whitespace",
            );
        }
        Cluster {
            redis: c.redis.clone(),
            timeout,
            on_backend_error,
            limiters,
            breaker_failures: breaker_failures.max(1),
            breaker_cooldown,
            key_prefix,
        }
    }

    fn limits(&mut self, at: &KeyPath, l: &RawLimits) -> Limits {
        let d = Limits::default();
        let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Limits {
            max_request_head: to_usize(self.size(
                &at.key("max_request_head"),
                l.max_request_head.as_ref(),
                d.max_request_head as u64,
            ))
            .max(8192),
            max_headers: l.max_headers.map_or(d.max_headers, |n| n as usize),
            max_uri: to_usize(self.size(&at.key("max_uri"), l.max_uri.as_ref(), d.max_uri as u64)),
            max_body: self.size(&at.key("max_body"), l.max_body.as_ref(), d.max_body),
            header_read_timeout: self.duration(
                &at.key("header_read_timeout"),
                l.header_read_timeout.as_ref(),
                d.header_read_timeout,
            ),
            max_connections: l.max_connections.map_or(d.max_connections, |n| n as usize),
            h2_max_streams: l.h2_max_streams.unwrap_or(d.h2_max_streams),
            connect_timeout: self.duration(
                &at.key("connect_timeout"),
                l.connect_timeout.as_ref(),
                d.connect_timeout,
            ),
            route_timeout: self.duration(
                &at.key("route_timeout"),
                l.route_timeout.as_ref(),
                d.route_timeout,
            ),
            drain_timeout: self.duration(
                &at.key("drain_timeout"),
                l.drain_timeout.as_ref(),
                d.drain_timeout,
            ),
        }
    }

    fn upstream(
        &mut self,
        at: &KeyPath,
        name: &str,
        u: &RawUpstream,
        limits: &Limits,
    ) -> UpstreamSpec {
        if u.targets.is_empty() {
            self.err(&at.key("targets"), "an upstream needs at least one target");
        }
        let mut targets = Vec::new();
        for (i, t) in u.targets.iter().enumerate() {
            let tat = at.key("targets").index(i);
            match t.url.parse::<http::Uri>() {
                Ok(url)
                    if matches!(url.scheme_str(), Some("http") | Some("https"))
                        && url.authority().is_some() =>
                {
                    if t.weight == Some(0) {
                        self.err(&tat.key("weight"), "weight must be at least 1");
                    }
                    targets.push(TargetSpec {
                        url,
                        weight: t.weight.unwrap_or(1).max(1),
                    });
                }
                _ => self.err(
                    &tat.key("url"),
                    format!(
                        "invalid target URL {:?}: expected http://HOST:PORT or https://HOST:PORT",
                        t.url
                    ),
                ),
            }
        }
        let lb = match u.lb.as_deref() {
            None | Some("round_robin") => LbPolicy::RoundRobin,
            Some("least_request") => LbPolicy::LeastRequest,
            Some("consistent_hash") => LbPolicy::ConsistentHash,
            Some(other) => {
                self.err(
                    &at.key("lb"),
                    format!("unknown lb {other:?}: expected round_robin, least_request or consistent_hash"),
                );
                LbPolicy::RoundRobin
            }
        };
        let hash_on = match u.hash_on.as_deref() {
            None => None,
            Some("ip") | Some("client_ip") => Some(HashOn::ClientIp),
            Some(s) if s.starts_with("header:") => {
                match http::HeaderName::from_bytes(s["header:".len()..].trim().as_bytes()) {
                    Ok(h) => Some(HashOn::Header(h)),
                    Err(_) => {
                        self.err(&at.key("hash_on"), format!("invalid header name in {s:?}"));
                        None
                    }
                }
            }
            Some(s) if s.starts_with("cookie:") => {
                Some(HashOn::Cookie(s["cookie:".len()..].trim().to_string()))
            }
            Some(other) => {
                self.err(
                    &at.key("hash_on"),
                    format!("unknown hash_on {other:?}: expected \"header:NAME\", \"cookie:NAME\" or \"ip\""),
                );
                None
            }
        };
        if lb == LbPolicy::ConsistentHash && hash_on.is_none() {
            self.err(
                &at.key("lb"),
                "consistent_hash needs hash_on (\"header:NAME\", \"cookie:NAME\" or \"ip\")",
            );
        }
        let health = u.health.as_ref().map(|h| {
            let hat = at.key("health");
            if !h.path.starts_with('/') {
                self.err(&hat.key("path"), "health path must start with '/'");
            }
            HealthSpec {
                path: h.path.clone(),
                interval: self.duration(
                    &hat.key("interval"),
                    h.interval.as_ref(),
                    Duration::from_secs(2),
                ),
                timeout: self.duration(
                    &hat.key("timeout"),
                    h.timeout.as_ref(),
                    Duration::from_secs(1),
                ),
                unhealthy_after: h.unhealthy_after.unwrap_or(3).max(1),
                healthy_after: h.healthy_after.unwrap_or(2).max(1),
            }
        });
        let passive = match &u.passive {
            None => PassiveSpec {
                consecutive_failures: 5,
                base_ejection: Duration::from_secs(10),
                max_ejection: Duration::from_secs(300),
            },
            Some(p) => {
                let pat = at.key("passive");
                PassiveSpec {
                    consecutive_failures: p.consecutive_failures.unwrap_or(5).max(1),
                    base_ejection: self.duration(
                        &pat.key("base_ejection"),
                        p.base_ejection.as_ref(),
                        Duration::from_secs(10),
                    ),
                    max_ejection: self.duration(
                        &pat.key("max_ejection"),
                        p.max_ejection.as_ref(),
                        Duration::from_secs(300),
                    ),
                }
            }
        };
        let protocol = match u.protocol.as_deref() {
            None | Some("http1") => UpstreamProtocol::Http1,
            Some("h2") | Some("http2") => UpstreamProtocol::H2,
            Some(other) => {
                self.err(
                    &at.key("protocol"),
                    format!("unknown protocol {other:?}: expected \"http1\" or \"h2\""),
                );
                UpstreamProtocol::Http1
            }
        };
        let tls_ca = u
            .tls
            .as_ref()
            .and_then(|t| t.ca.as_ref())
            .map(|p| self.existing_file(&at.key("tls").key("ca"), p));
        UpstreamSpec {
            name: name.to_string(),
            targets,
            lb,
            hash_on,
            health,
            passive,
            protocol,
            tls_ca,
            tls_sni: u.tls.as_ref().and_then(|t| t.sni.clone()),
            max_concurrent: u.max_concurrent,
            connect_timeout: self.duration(
                &at.key("connect_timeout"),
                u.connect_timeout.as_ref(),
                limits.connect_timeout,
            ),
            pool_idle_timeout: self.duration(
                &at.key("pool_idle_timeout"),
                u.pool_idle_timeout.as_ref(),
                Duration::from_secs(90),
            ),
            pool_max_idle: u.pool_max_idle.map_or(256, |n| n as usize),
        }
    }

    fn route(
        &mut self,
        at: &KeyPath,
        r: &RawRoute,
        upstreams: &BTreeMap<String, UpstreamSpec>,
        limits: &Limits,
    ) -> Option<RouteSpec> {
        let m = &r.matcher;
        let mat = at.key("match");
        let host = m.host.as_ref().map(|h| {
            let h = h.to_ascii_lowercase();
            match h.strip_prefix('*') {
                Some(rest) if rest.starts_with('.') => HostMatch::Suffix(rest.to_string()),
                _ => HostMatch::Exact(h),
            }
        });
        let set = [
            m.path_prefix.is_some(),
            m.path.is_some(),
            m.path_regex.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set > 1 {
            self.err(&mat, "use only one of path_prefix, path and path_regex");
        }
        let path = if let Some(p) = &m.path {
            if !p.starts_with('/') {
                self.err(&mat.key("path"), "path must start with '/'");
            }
            PathMatch::Exact(p.clone())
        } else if let Some(re) = &m.path_regex {
            match regex::Regex::new(&format!("^(?:{re})$")) {
                Ok(r) => PathMatch::Regex(r),
                Err(e) => {
                    self.err(&mat.key("path_regex"), format!("invalid regex: {e}"));
                    // Recorded; the rest of the route is still checked (the config is refused),
                    // as for a regex route (not a prefix: `strip_prefix` stays an error).
                    PathMatch::Exact("/".to_string())
                }
            }
        } else {
            let p = m.path_prefix.clone().unwrap_or_else(|| "/".to_string());
            if !p.starts_with('/') {
                self.err(&mat.key("path_prefix"), "path_prefix must start with '/'");
            }
            PathMatch::Prefix(p)
        };
        let methods = m.methods.as_ref().map(|ms| {
            ms.iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    match http::Method::from_bytes(s.to_ascii_uppercase().as_bytes()) {
                        Ok(m) => Some(m),
                        Err(_) => {
                            self.err(
                                &mat.key("methods").index(i),
                                format!("invalid method {s:?}"),
                            );
                            None
                        }
                    }
                })
                .collect()
        });
        let mut headers = Vec::new();
        for (i, h) in m.headers.iter().enumerate() {
            let hat = mat.key("headers").index(i);
            let Ok(name) = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
            else {
                self.err(
                    &hat.key("name"),
                    format!("invalid header name {:?}", h.name),
                );
                continue;
            };
            match (&h.value, &h.regex, h.present) {
                (Some(v), None, None) => headers.push(HeaderMatch::Value(name, v.clone())),
                (None, Some(re), None) => match regex::Regex::new(&format!("^(?:{re})$")) {
                    Ok(r) => headers.push(HeaderMatch::Regex(name, r)),
                    Err(e) => self.err(&hat.key("regex"), format!("invalid regex: {e}")),
                },
                (None, None, Some(p)) => headers.push(HeaderMatch::Present(name, p)),
                (None, None, None) => headers.push(HeaderMatch::Present(name, true)),
                _ => self.err(&hat, "use only one of value, regex and present"),
            }
        }
        let aggregate = self.aggregate(at, r, upstreams);
        match &r.upstream {
            Some(u) if !upstreams.contains_key(u) => {
                self.err(&at.key("upstream"), format!("unknown upstream {u:?}"));
            }
            None if aggregate.is_empty() && r.plugins.is_empty() => {
                self.err(
                    at,
                    "a route needs an upstream (or aggregate, or plugins that answer)",
                );
            }
            _ => {}
        }
        if r.strip_prefix && !matches!(path, PathMatch::Prefix(_)) {
            self.err(
                &at.key("strip_prefix"),
                "strip_prefix needs match.path_prefix",
            );
        }
        let retries = match &r.retries {
            None => RetryPolicy {
                budget_percent: 20,
                ..RetryPolicy::default()
            },
            Some(rr) => {
                let rat = at.key("retries");
                let mut p = RetryPolicy {
                    attempts: rr.attempts,
                    budget_percent: rr.budget_percent.unwrap_or(20),
                    ..RetryPolicy::default()
                };
                for (i, cond) in rr.on.iter().enumerate() {
                    match cond.as_str() {
                        "connect-failure" => p.on_connect_failure = true,
                        "5xx" => p.on_5xx = true,
                        "timeout" => p.on_timeout = true,
                        "reset" => p.on_reset = true,
                        s => match s.parse::<u16>() {
                            Ok(code) if (100..600).contains(&code) => p.on_statuses.push(code),
                            _ => self.err(
                                &rat.key("on").index(i),
                                format!("unknown retry condition {s:?}: expected connect-failure, 5xx, timeout, reset or a status code"),
                            ),
                        },
                    }
                }
                if rr.on.is_empty() {
                    p.on_connect_failure = true;
                }
                p
            }
        };
        let plugins = r
            .plugins
            .iter()
            .enumerate()
            .map(|(i, p)| self.plugin(&at.key("plugins").index(i), p))
            .collect();
        let default_priority = match (&path, &host) {
            (PathMatch::Exact(_), _) => 3000,
            (PathMatch::Regex(_), _) => 2000,
            (PathMatch::Prefix(p), _) => 1000 + p.len().min(999) as i32,
        } + match &host {
            Some(HostMatch::Exact(_)) => 20_000,
            Some(HostMatch::Suffix(_)) => 10_000,
            None => 0,
        };
        Some(RouteSpec {
            name: r.name.clone(),
            host,
            path,
            methods,
            headers,
            priority: r.priority.unwrap_or(default_priority),
            upstream: r.upstream.clone(),
            strip_prefix: r.strip_prefix,
            rewrite: r.rewrite.clone(),
            timeout: self.duration(&at.key("timeout"), r.timeout.as_ref(), limits.route_timeout),
            per_try_timeout: r
                .per_try_timeout
                .as_ref()
                .map(|s| self.duration(&at.key("per_try_timeout"), Some(s), limits.route_timeout)),
            retries,
            max_body: self.size(
                &at.key("limits").key("max_body"),
                r.limits.max_body.as_ref(),
                limits.max_body,
            ),
            plugins,
            aggregate,
        })
    }

    fn aggregate(
        &mut self,
        at: &KeyPath,
        r: &RawRoute,
        upstreams: &BTreeMap<String, UpstreamSpec>,
    ) -> Vec<AggregateBackend> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawAgg {
            upstream: String,
            path: String,
            group: Option<String>,
            #[serde(default = "yes")]
            required: bool,
            timeout: Option<String>,
            #[serde(default)]
            headers: Vec<String>,
            query: Option<Vec<String>>,
        }
        fn yes() -> bool {
            true
        }
        let Some(list) = &r.aggregate else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, v) in list.iter().enumerate() {
            let aat = at.key("aggregate").index(i);
            match v.clone().try_into::<RawAgg>() {
                Ok(a) => {
                    if !a.path.starts_with('/') {
                        self.err(&aat.key("path"), "path must start with '/'");
                    }
                    if !upstreams.contains_key(&a.upstream) {
                        self.err(
                            &aat.key("upstream"),
                            format!("unknown upstream {:?}", a.upstream),
                        );
                    }
                    out.push(AggregateBackend {
                        timeout: self.duration(
                            &aat.key("timeout"),
                            a.timeout.as_ref(),
                            Duration::from_secs(5),
                        ),
                        upstream: a.upstream,
                        path: a.path,
                        group: a.group,
                        required: a.required,
                        forward_headers: a
                            .headers
                            .iter()
                            .filter_map(|h| {
                                http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok()
                            })
                            .collect(),
                        forward_query: a.query,
                    });
                }
                Err(e) => self.err(&aat, e.to_string()),
            }
        }
        out
    }

    fn plugin(&mut self, at: &KeyPath, p: &RawPlugin) -> PluginRef {
        let wasm = self.existing_file(&at.key("wasm"), &p.wasm);
        let config_json = match &p.config {
            None => "{}".to_string(),
            Some(v) => serde_json::to_string(v).unwrap_or_else(|_| "{}".to_string()),
        };
        let on_error = match p.on_error.as_deref() {
            None | Some("closed") => FailMode::Closed,
            Some("open") => FailMode::Open,
            Some(other) => {
                self.err(
                    &at.key("on_error"),
                    format!("unknown on_error {other:?}: expected \"closed\" or \"open\""),
                );
                FailMode::Closed
            }
        };
        let isolation = match p.isolation.as_deref() {
            None | Some("pooled") => Isolation::Pooled,
            Some("request") => Isolation::Request,
            Some(other) => {
                self.err(
                    &at.key("isolation"),
                    format!("unknown isolation {other:?}: expected \"pooled\" or \"request\""),
                );
                Isolation::Pooled
            }
        };
        let memory = self.size(
            &at.key("limits").key("memory"),
            p.limits.memory.as_ref(),
            32 * 1024 * 1024,
        );
        let cpu = self.duration(
            &at.key("limits").key("cpu"),
            p.limits.cpu.as_ref(),
            Duration::from_millis(50),
        );
        let http_allow = p.http.as_ref().map(|h| h.allow.clone()).unwrap_or_default();
        let http_timeout = self.duration(
            &at.key("http").key("timeout"),
            p.http.as_ref().and_then(|h| h.timeout.as_ref()),
            Duration::from_secs(5),
        );
        let request_headers = p.request_headers.as_ref().map(|names| {
            names
                .iter()
                .enumerate()
                .filter_map(|(i, name)| {
                    let parsed = http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes());
                    if parsed.is_err() {
                        self.err(
                            &at.key("request_headers").index(i),
                            format!("{name:?} is not a valid header name"),
                        );
                    }
                    parsed.ok()
                })
                .collect()
        });
        PluginRef {
            name: p.name.clone(),
            wasm,
            config_json,
            on_error,
            isolation,
            memory,
            cpu,
            http_allow,
            http_timeout,
            request_headers,
        }
    }
}
