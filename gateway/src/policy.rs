//! Per-route Wasm policy chains: loading plugins through the runtime (`weir-wasm-host`) and
//! running the request phases. Plugins run in config order (global ones first); they share one
//! request-scoped metadata bag. A failing plugin follows its fail mode: `closed` answers 503,
//! `open` skips it.

use crate::body::{self, ProxyBody};
use crate::config::{self, Config, PluginRef};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::proxy::forward::Outgoing;
use crate::proxy::{ConnInfo, RequestFacts, collect_body, hygiene};
use crate::state::{Gateway, RouteRuntime, Table};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode, header};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use weir_wasm_host as host;

/// Response bodies buffered for a plugin that declared `needs-response-body` are capped here.
const MAX_BUFFERED_RESPONSE: u64 = 8 * 1024 * 1024;

/// A plugin as attached to a route (or globally).
pub struct PluginInstance {
    pub spec: PluginRef,
    /// `global` or `route NAME`.
    pub scope: String,
    pub loaded: Arc<host::LoadedPlugin>,
    /// The request headers `on-request` is shown (`None`: all): what the plugin declared it
    /// reads, narrowed by the operator's `request_headers`.
    pub visible_headers: Option<Vec<HeaderName>>,
}

/// Both lists narrow what a plugin sees: the operator's `request_headers` and the headers the
/// plugin declares it reads. A declared name that is not a valid header name matches nothing.
fn visible_headers(
    operator: Option<&[HeaderName]>,
    declared: Option<&[String]>,
) -> Option<Vec<HeaderName>> {
    let declared: Option<Vec<HeaderName>> = declared.map(|names| {
        names
            .iter()
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect()
    });
    match (operator, declared) {
        (None, None) => None,
        (Some(o), None) => Some(o.to_vec()),
        (None, Some(d)) => Some(d),
        (Some(o), Some(d)) => Some(o.iter().filter(|n| d.contains(n)).cloned().collect()),
    }
}

/// The gateway's handle on the policy runtime.
pub struct Runtime {
    rt: host::PolicyRuntime,
    /// Redis-backed limits and kv when `[cluster]` is configured (fixed until restart).
    cluster: Option<crate::cluster::ClusterBackend>,
}

fn key_set_specs(config: &Config) -> HashMap<String, host::KeySetSpec> {
    config
        .key_sets
        .iter()
        .map(|(name, k)| {
            (
                name.clone(),
                host::KeySetSpec {
                    hmac_secret: k.hmac_secret.clone(),
                    pem_files: k.pem.clone(),
                    jwks_file: k.jwks.clone(),
                    jwks_url: k.jwks_url.clone(),
                },
            )
        })
        .collect()
}

fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("WEIR_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("weir")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/weir")))
}

impl Runtime {
    pub fn new(config: &Config, metrics: &Metrics) -> anyhow::Result<Self> {
        let mut cfg = host::RuntimeConfig {
            cache_dir: config.runtime.cache_dir.clone().or_else(default_cache_dir),
            key_sets: key_set_specs(config),
            max_instances: config.runtime.max_instances,
            ..host::RuntimeConfig::default()
        };
        let cluster = config
            .cluster
            .as_ref()
            .map(crate::cluster::ClusterBackend::new)
            .transpose()?;
        if let Some(c) = &cluster {
            cfg.kv = c.kv();
            cfg.limiter = c.limiter();
        }
        let rt = host::PolicyRuntime::new(cfg)?;
        if let Ok(mut reg) = metrics.registry.lock() {
            rt.register_metrics(&mut reg);
            if let Some(c) = &cluster {
                c.register_metrics(&mut reg);
            }
        }
        Ok(Self { rt, cluster })
    }

    /// Loads (compiles or takes from cache, checks grants, runs `init`) every plugin of a scope;
    /// pooled instances are recycled after `max_uses` calls (`[runtime] pool_max_uses`).
    pub async fn load_all(
        &self,
        refs: &[PluginRef],
        scope: &str,
        max_uses: u64,
        key_sets: &host::PreparedKeySets,
    ) -> anyhow::Result<Vec<Arc<PluginInstance>>> {
        let mut out = Vec::with_capacity(refs.len());
        for (i, r) in refs.iter().enumerate() {
            out.push(self.load_one(r, scope, i, max_uses, Some(key_sets)).await?);
        }
        Ok(out)
    }

    /// Loads every plugin of a scope and returns each failure (`weir validate` reports them all).
    pub async fn check_all(&self, refs: &[PluginRef], scope: &str, max_uses: u64) -> Vec<String> {
        let mut errors = Vec::new();
        for (i, r) in refs.iter().enumerate() {
            if let Err(e) = self.load_one(r, scope, i, max_uses, None).await {
                errors.push(format!("{e:#}"));
            }
        }
        errors
    }

    async fn load_one(
        &self,
        r: &PluginRef,
        scope: &str,
        i: usize,
        max_uses: u64,
        key_sets: Option<&host::PreparedKeySets>,
    ) -> anyhow::Result<Arc<PluginInstance>> {
        let mut spec = host::PluginSpec::new(format!("{scope}/{i}:{}", r.name), r.wasm.clone());
        spec.max_uses = max_uses;
        spec.key_sets = key_sets.cloned();
        spec.name = r.name.clone();
        spec.config_json = r.config_json.clone();
        spec.on_error = match r.on_error {
            config::FailMode::Closed => host::FailMode::Closed,
            config::FailMode::Open => host::FailMode::Open,
        };
        spec.isolation = match r.isolation {
            config::Isolation::Pooled => host::Isolation::Pooled,
            config::Isolation::Request => host::Isolation::Request,
        };
        spec.memory_limit = r.memory;
        spec.cpu_limit = r.cpu;
        spec.http_allow = r.http_allow.clone();
        let loaded = self.rt.load(&spec).await?;
        let visible_headers = visible_headers(
            r.request_headers.as_deref(),
            loaded.info.request_headers.as_deref(),
        );
        Ok(Arc::new(PluginInstance {
            spec: r.clone(),
            scope: scope.to_string(),
            loaded,
            visible_headers,
        }))
    }

    /// Loads the key sets of `config` (reading their key files) for a reload's table; remote
    /// sets unchanged from `previous` keep their fetched keys.
    pub fn prepare_key_sets(
        &self,
        config: &Config,
        previous: Option<&host::PreparedKeySets>,
    ) -> anyhow::Result<host::PreparedKeySets> {
        Ok(self.rt.prepare_key_sets(&key_set_specs(config), previous)?)
    }

    /// The key sets loaded at start (the first table's).
    pub fn initial_key_sets(&self) -> host::PreparedKeySets {
        self.rt.initial_key_sets()
    }

    pub fn backend_status(&self) -> serde_json::Value {
        match &self.cluster {
            Some(c) => c.status(),
            None => serde_json::json!({ "kv": "in-process", "rate_limit": "in-process" }),
        }
    }

    pub fn inner(&self) -> &host::PolicyRuntime {
        &self.rt
    }
}

/// What the request phase decided.
pub enum PolicyOutcome {
    Continue,
    Respond(Response<ProxyBody>),
}

/// The policy side of one request: one session per plugin (so a `request`-isolated plugin keeps
/// its instance for all phases) and the shared metadata bag.
pub struct ChainSession {
    route: Arc<RouteRuntime>,
    sessions: Vec<Option<host::PluginSession>>,
    cx: host::RequestContext,
    /// `set-response-headers` and `append-response-headers` of each plugin's `on-request`, in
    /// chain order, until the response exists.
    response_headers: Vec<(host::Fields, host::Fields)>,
}

impl ChainSession {
    pub fn new(route: &Arc<RouteRuntime>) -> Self {
        Self {
            route: route.clone(),
            sessions: route.plugins.iter().map(|_| None).collect(),
            cx: host::RequestContext::new(),
            response_headers: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.route.plugins.is_empty()
    }

    /// The session of plugin `i` (created on first use) and the shared bag, borrowed together.
    fn session(
        &mut self,
        i: usize,
    ) -> Option<(&mut host::PluginSession, &mut host::RequestContext)> {
        let p = self.route.plugins.get(i)?;
        let s = self
            .sessions
            .get_mut(i)?
            .get_or_insert_with(|| p.loaded.session());
        Some((s, &mut self.cx))
    }

    /// Runs `on-request` of every plugin in order; stops at the first that answers.
    pub async fn on_request(
        &mut self,
        _gw: &Arc<Gateway>,
        conn: &ConnInfo,
        facts: &RequestFacts,
        out: &mut Outgoing,
    ) -> Result<PolicyOutcome, GatewayError> {
        if self.is_empty() {
            return Ok(PolicyOutcome::Continue);
        }
        let mut buffered: Option<bytes::Bytes> = None;
        // Formatted once for the chain; each plugin gets a copy.
        let client_ip = facts.client_ip.to_string();
        for i in 0..self.route.plugins.len() {
            let plugin = self.route.plugins[i].clone();
            if !plugin.loaded.info.phases.on_request {
                continue;
            }
            let body = if plugin.loaded.info.needs_request_body {
                if buffered.is_none() {
                    let b = out.body.take().unwrap_or_else(body::empty);
                    buffered = Some(collect_body(b, self.route.spec.max_body).await?);
                }
                buffered.as_ref().map(|b| b.to_vec())
            } else {
                None
            };
            let req = host::PolicyRequest {
                method: out.parts.method.as_str().to_owned(),
                path: out.path.clone(),
                query: out.parts.uri.query().map(str::to_string),
                headers: visible_fields(&out.parts.headers, plugin.visible_headers.as_deref()),
                body,
                client_ip: client_ip.clone(),
                route: self.route.spec.name.clone(),
                request_id: facts.request_id.clone(),
                scheme: conn.scheme.to_string(),
                host: facts.host.clone(),
            };
            let Some((session, cx)) = self.session(i) else {
                break;
            };
            let result = session.on_request(cx, req).await;
            match result {
                Ok(host::Action::Continue(mut edits)) => {
                    let checked = check_edits(
                        &edits.set_headers,
                        &edits.append_headers,
                        &edits.remove_headers,
                    )
                    .and_then(|()| {
                        check_edits(
                            &edits.set_response_headers,
                            &edits.append_response_headers,
                            &[],
                        )
                    });
                    if let Err(why) = checked {
                        bad_output(&plugin, why)?;
                        continue;
                    }
                    if !edits.set_response_headers.is_empty()
                        || !edits.append_response_headers.is_empty()
                    {
                        self.response_headers.push((
                            std::mem::take(&mut edits.set_response_headers),
                            std::mem::take(&mut edits.append_response_headers),
                        ));
                    }
                    if let Some(b) = apply_request_edits(out, edits)? {
                        buffered = Some(b);
                    }
                }
                Ok(host::Action::Respond(r)) => {
                    if let Err(why) = check_edits(&r.headers, &Vec::new(), &[]) {
                        bad_output(&plugin, why)?;
                        continue;
                    }
                    let res = local_response(r, &facts.request_id);
                    // Plugins that already ran still see the local answer (e.g. CORS headers on a 401).
                    self.sessions.truncate(i + 1);
                    let res = self.on_response_upto(facts, res, i + 1).await?;
                    return Ok(PolicyOutcome::Respond(res));
                }
                Err(e) => fail(&plugin, e)?,
            }
        }
        if let Some(b) = buffered {
            out.body = Some(buffered_body(&mut out.parts.headers, b));
        }
        Ok(PolicyOutcome::Continue)
    }

    /// Runs `on-response` of every plugin that took part in the request, in order.
    pub async fn on_response(
        &mut self,
        _gw: &Arc<Gateway>,
        facts: &RequestFacts,
        res: Response<ProxyBody>,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let n = self.sessions.len();
        self.on_response_upto(facts, res, n).await
    }

    async fn on_response_upto(
        &mut self,
        _facts: &RequestFacts,
        res: Response<ProxyBody>,
        upto: usize,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        if self.is_empty() || res.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(res);
        }
        let (mut parts, mut b) = res.into_parts();
        // Decided in `on-request`; set first, so `on-response` phases see (and may change) them.
        for (set, append) in std::mem::take(&mut self.response_headers) {
            edit_headers(&mut parts.headers, set, append, Vec::new());
        }
        let mut buffered: Option<bytes::Bytes> = None;
        for i in 0..upto.min(self.route.plugins.len()) {
            let plugin = self.route.plugins[i].clone();
            if !plugin.loaded.info.phases.on_response {
                continue;
            }
            let body = if plugin.loaded.info.needs_response_body {
                if buffered.is_none() {
                    let taken = std::mem::replace(&mut b, body::empty());
                    buffered = Some(collect_body(taken, MAX_BUFFERED_RESPONSE).await.map_err(
                        |_| GatewayError::UpstreamFailed {
                            upstream: self.route.spec.upstream.clone().unwrap_or_default(),
                            reason: "response body too large for a policy that reads it".into(),
                        },
                    )?);
                }
                buffered.as_ref().map(|x| x.to_vec())
            } else {
                None
            };
            let head = host::ResponseHead {
                status: parts.status.as_u16(),
                headers: to_fields(&parts.headers),
                body,
            };
            let Some((session, cx)) = self.session(i) else {
                break;
            };
            match session.on_response(cx, head).await {
                Ok(edits) => {
                    if let Err(why) = check_edits(
                        &edits.set_headers,
                        &edits.append_headers,
                        &edits.remove_headers,
                    ) {
                        bad_output(&plugin, why)?;
                        continue;
                    }
                    if let Some(nb) = apply_response_edits(&mut parts, edits) {
                        buffered = Some(nb);
                    }
                }
                Err(e) => fail(&plugin, e)?,
            }
        }
        if let Some(bb) = buffered {
            b = buffered_response_body(&mut parts, bb);
        }
        Ok(Response::from_parts(parts, b))
    }

    /// Whether a plugin that took part implements `on-log` (else no log entry is built).
    pub fn wants_log(&self) -> bool {
        self.route
            .plugins
            .iter()
            .take(self.sessions.len())
            .any(|p| p.loaded.info.phases.on_log)
    }

    /// Runs `on-log` of every plugin that took part, in the background.
    pub fn spawn_on_log(mut self, entry: host::LogEntry) {
        if !self.wants_log() {
            return;
        }
        tokio::spawn(async move {
            for i in 0..self.sessions.len() {
                let plugin = self.route.plugins[i].clone();
                if !plugin.loaded.info.phases.on_log {
                    continue;
                }
                if let Some((s, cx)) = self.session(i)
                    && let Err(e) = s.on_log(cx, entry.clone()).await
                {
                    tracing::warn!(plugin = %plugin.loaded.id, error = %e, "on-log failed");
                }
            }
        });
    }
}

/// Applies the fail mode: `closed` → 503, `open` → logged and skipped.
fn fail(plugin: &PluginInstance, e: host::PluginError) -> Result<(), GatewayError> {
    match plugin.loaded.on_error {
        host::FailMode::Open => {
            tracing::warn!(plugin = %plugin.loaded.id, kind = %e.kind, error = %e, "policy failed; on_error = open, skipping it");
            Ok(())
        }
        host::FailMode::Closed => {
            tracing::error!(plugin = %plugin.loaded.id, kind = %e.kind, error = %e, "policy failed; on_error = closed, answering 503");
            Err(GatewayError::PluginFailed {
                plugin: plugin.spec.name.clone(),
                reason: e.kind.to_string(),
            })
        }
    }
}

/// Most header edits one plugin may return from one phase.
const MAX_HEADER_EDITS: usize = 256;
/// Most header bytes one plugin may add in one phase (the edge's own head limit is 60 KiB).
const MAX_HEADER_EDIT_BYTES: usize = 60 * 1024;

/// Refuses guest output that would build an oversized head: a misbehaving plugin is a plugin
/// failure (its fail mode applies), not a 10 MiB header sent on.
pub fn check_edits(
    set: &host::Fields,
    append: &host::Fields,
    remove: &[String],
) -> Result<(), String> {
    let n = set.len() + append.len() + remove.len();
    if n > MAX_HEADER_EDITS {
        return Err(format!("{n} header edits (at most {MAX_HEADER_EDITS})"));
    }
    let bytes: usize = set
        .iter()
        .chain(append.iter())
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if bytes > MAX_HEADER_EDIT_BYTES {
        return Err(format!(
            "{bytes} bytes of headers (at most {MAX_HEADER_EDIT_BYTES})"
        ));
    }
    Ok(())
}

/// Applies the fail mode to invalid guest output.
fn bad_output(plugin: &PluginInstance, why: String) -> Result<(), GatewayError> {
    match plugin.loaded.on_error {
        host::FailMode::Open => {
            tracing::warn!(plugin = %plugin.loaded.id, error = %why, "policy returned invalid output; on_error = open, ignoring it");
            Ok(())
        }
        host::FailMode::Closed => {
            tracing::error!(plugin = %plugin.loaded.id, error = %why, "policy returned invalid output; answering 503");
            Err(GatewayError::PluginFailed {
                plugin: plugin.spec.name.clone(),
                reason: format!("invalid output: {why}"),
            })
        }
    }
}

/// The request headers a plugin may see: all of them, or only those in `only`.
fn visible_fields(h: &HeaderMap, only: Option<&[HeaderName]>) -> host::Fields {
    h.iter()
        .filter(|(k, _)| only.is_none_or(|names| names.contains(k)))
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn to_fields(h: &HeaderMap) -> host::Fields {
    visible_fields(h, None)
}

/// A body the chain buffered (and maybe replaced), with the framing headers made to match it.
/// Public for the fuzz targets (`fuzz/`).
pub fn buffered_body(headers: &mut HeaderMap, b: bytes::Bytes) -> ProxyBody {
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
    body::full(b)
}

/// Connection-scoped and framing headers (RFC 9110 §7.6.1, RFC 9112 §6): the gateway strips
/// them from clients and upstreams and hyper writes the framing from the body actually sent, so
/// a plugin may remove them but never set them. A plugin-set `Content-Length` that disagrees
/// with the body makes hyper (release builds) write the header and the whole body: the peer
/// then reads the rest as another message (request smuggling / response splitting).
static GATEWAY_OWNED: [HeaderName; 8] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Applies a plugin's header edits in WIT order (remove, set, append). Names or values the
/// `http` crate refuses, and the [`GATEWAY_OWNED`] headers, are skipped; `Host` stays single
/// (a second one would give the upstream two authorities to choose from). Public for the fuzz
/// targets (`fuzz/`), which feed it arbitrary guest output.
pub fn edit_headers(
    h: &mut HeaderMap,
    set: host::Fields,
    append: host::Fields,
    remove: Vec<String>,
) {
    for name in remove {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            h.remove(n);
        }
    }
    let parse = |k: &str, v: &str| {
        let parsed = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        );
        match parsed {
            (Ok(n), Ok(v)) if !GATEWAY_OWNED.contains(&n) => Some((n, v)),
            _ => {
                tracing::debug!(header = %k, "policy edit of an invalid or gateway-owned header; ignored");
                None
            }
        }
    };
    let mut first_set: Vec<HeaderName> = Vec::new();
    for (k, v) in set {
        let Some((n, v)) = parse(&k, &v) else {
            continue;
        };
        // Several values for one name in `set-headers` all survive (but for Host).
        // `try_*`: a map past its capacity must fail softly, never panic (checked by `check_edits`).
        if first_set.contains(&n) && n != header::HOST {
            let _ = h.try_append(n, v);
        } else {
            first_set.push(n.clone());
            let _ = h.try_insert(n, v);
        }
    }
    for (k, v) in append {
        match parse(&k, &v) {
            Some((n, v)) if n == header::HOST => {
                let _ = h.try_insert(n, v);
            }
            Some((n, v)) => {
                let _ = h.try_append(n, v);
            }
            None => {}
        }
    }
}

/// Applies a plugin's request edits; returns a replacement body if the plugin set one.
/// Public for the fuzz targets (`fuzz/`), which feed it arbitrary guest output.
pub fn apply_request_edits(
    out: &mut Outgoing,
    e: host::RequestEdits,
) -> Result<Option<bytes::Bytes>, GatewayError> {
    if let Some(m) = e.method {
        out.parts.method = http::Method::from_bytes(m.as_bytes())
            .map_err(|_| GatewayError::Internal(format!("policy set an invalid method {m:?}")))?;
    }
    if let Some(p) = e.path {
        out.path = hygiene::normalize_path(&p).map_err(|err| {
            GatewayError::Internal(format!("policy set an invalid path {p:?}: {err}"))
        })?;
    }
    if let Some(q) = e.query {
        let pq = if q.is_empty() {
            out.path.clone()
        } else {
            format!("{}?{q}", out.path)
        };
        out.parts.uri = http::Uri::try_from(pq)
            .map_err(|err| GatewayError::Internal(format!("policy set an invalid query: {err}")))?;
    }
    edit_headers(
        &mut out.parts.headers,
        e.set_headers,
        e.append_headers,
        e.remove_headers,
    );
    Ok(e.body.map(bytes::Bytes::from))
}

/// A status a plugin may answer with: 200–599. 1xx are not final (101 would claim a protocol
/// switch that never happens) and 600–999 are not HTTP (RFC 9110 §15).
fn final_status(s: u16) -> Option<StatusCode> {
    StatusCode::from_u16(s)
        .ok()
        .filter(|s| (200..600).contains(&s.as_u16()))
}

/// A response body the chain buffered or replaced, with framing to match. 204 and 304 have no
/// body (RFC 9110 §15.3.5, §15.4.5): there the body is dropped, and a 204 has no length either.
pub fn buffered_response_body(parts: &mut http::response::Parts, b: bytes::Bytes) -> ProxyBody {
    match parts.status {
        StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED => {
            parts.headers.remove(header::TRANSFER_ENCODING);
            if parts.status == StatusCode::NO_CONTENT {
                parts.headers.remove(header::CONTENT_LENGTH);
            }
            body::empty()
        }
        _ => buffered_body(&mut parts.headers, b),
    }
}

/// Applies a plugin's response edits (status, headers) to `parts`; returns a replacement body if
/// the plugin set one. Public for the fuzz targets (`fuzz/`).
pub fn apply_response_edits(
    parts: &mut http::response::Parts,
    edits: host::ResponseEdits,
) -> Option<bytes::Bytes> {
    if let Some(s) = edits.status.and_then(final_status) {
        parts.status = s;
    } else if let Some(s) = edits.status {
        tracing::debug!(
            status = s,
            "policy set a status that is not a final HTTP status; ignored"
        );
    }
    edit_headers(
        &mut parts.headers,
        edits.set_headers,
        edits.append_headers,
        edits.remove_headers,
    );
    edits.body.map(bytes::Bytes::from)
}

/// The response a plugin answered with instead of proxying. Public for the fuzz targets.
pub fn local_response(r: host::LocalResponse, request_id: &str) -> Response<ProxyBody> {
    let mut res = Response::new(body::full(r.body));
    *res.status_mut() = final_status(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    edit_headers(res.headers_mut(), r.headers, Vec::new(), Vec::new());
    if let Ok(v) = HeaderValue::from_str(request_id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}

/// `on-log` entry for a finished request.
pub fn log_entry(
    facts: &RequestFacts,
    status: StatusCode,
    total: Duration,
    bytes: u64,
) -> host::LogEntry {
    host::LogEntry {
        route: facts
            .route
            .as_ref()
            .map(|r| r.spec.name.clone())
            .unwrap_or_default(),
        method: facts.method.to_string(),
        path: facts.path.clone(),
        status: status.as_u16(),
        latency_us: total.as_micros() as u64,
        client_ip: facts.client_ip.to_string(),
        request_id: facts.request_id.clone(),
        upstream: facts.upstream_target.as_deref().map(str::to_string),
        bytes_sent: bytes,
    }
}

/// Plugins of the active table for `/admin/status`.
pub fn status(table: &Table) -> serde_json::Value {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (_, r) in table.router.entries() {
        for p in &r.plugins {
            if !seen.insert(p.loaded.id.clone()) {
                continue;
            }
            out.push(serde_json::json!({
                "id": p.loaded.id,
                "name": p.spec.name,
                "scope": p.scope,
                "wasm": p.loaded.wasm.display().to_string(),
                "sha256": p.loaded.sha256,
                "loaded_at": humantime::format_rfc3339_seconds(p.loaded.loaded_at).to_string(),
                "isolation": format!("{:?}", p.loaded.isolation).to_lowercase(),
                "on_error": format!("{:?}", p.loaded.on_error).to_lowercase(),
                "needs_request_body": p.loaded.info.needs_request_body,
                "needs_response_body": p.loaded.info.needs_response_body,
            }));
        }
    }
    serde_json::Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<HeaderName> {
        list.iter()
            .map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap())
            .collect()
    }

    #[test]
    fn operator_and_plugin_lists_both_narrow_the_headers_shown() {
        let declared = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(visible_headers(None, None), None);
        let op = names(&["authorization", "x-api-key"]);
        assert_eq!(visible_headers(Some(&op), None), Some(op.clone()));
        assert_eq!(
            visible_headers(None, Some(&declared(&["authorization", "bad name"]))),
            Some(names(&["authorization"]))
        );
        assert_eq!(
            visible_headers(Some(&op), Some(&declared(&["authorization", "cookie"]))),
            Some(names(&["authorization"]))
        );
        assert_eq!(
            visible_headers(Some(&op), Some(&[])),
            Some(vec![]),
            "a plugin that reads no header gets none, whatever the operator allows"
        );
    }
}
