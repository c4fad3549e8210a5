//! Upstream clusters: targets with health state, a pooled keep-alive client, load balancing,
//! passive ejection and a concurrency cap (circuit breaker).

pub mod balancer;
pub mod h1;
pub mod health;
pub mod pool;

use crate::body::{BoxError, ProxyBody};
use crate::config::{UpstreamProtocol, UpstreamSpec};
use crate::metrics::{Metrics, UpstreamLabel, UpstreamOutcome};
use balancer::Balancer;
use http::{HeaderValue, Request, Response, header};
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pool::{HyperBody, Pool, Release};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Connects TCP, and TLS for `https` targets.
type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
type HttpClient = Client<Connector, ProxyBody>;

/// How requests reach an upstream's targets.
enum Transport {
    /// HTTP/1.1: [`Pool`]s of keep-alive connections per target. Requests without a body to
    /// plain-HTTP targets run in their own task ([`h1`], on connections from `plain`); the rest
    /// go through hyper's client.
    Http1 {
        connector: Connector,
        plain: HttpConnector,
    },
    /// HTTP/2: hyper-util's client, which multiplexes requests on one connection per target.
    Http2(Box<HttpClient>),
}

/// Why a request to a target got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("error trying to connect")]
    Connect(#[source] BoxError),
    #[error("upstream connection failed")]
    Request(#[source] hyper::Error),
    #[error("upstream exchange failed")]
    H1(#[source] h1::Error),
    #[error(transparent)]
    Client(hyper_util::client::legacy::Error),
    #[error("cannot build upstream URI")]
    Uri(#[source] http::uri::InvalidUriParts),
    #[error("no target {0}")]
    NoTarget(usize),
}

impl SendError {
    /// The request never reached the upstream (safe to retry for any method).
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Connect(_) => true,
            SendError::Client(e) => e.is_connect(),
            SendError::Request(_)
            | SendError::H1(_)
            | SendError::Uri(_)
            | SendError::NoTarget(_) => false,
        }
    }
}

/// One backend address of an upstream.
pub struct Target {
    pub url: http::Uri,
    /// `url` as text (access log, `on-log`), made once.
    pub url_text: Arc<str>,
    /// Scheme and authority of `url`, ready to put in each request's URI.
    pub scheme: http::uri::Scheme,
    pub authority: Option<http::uri::Authority>,
    /// `Host` for HTTP/1 requests that carry none (health checks): the authority without a
    /// default port.
    host_header: Option<HeaderValue>,
    /// Idle HTTP/1.1 connections to this target: hyper's, and [`h1`]'s.
    pub pool: Arc<Pool<SendRequest<ProxyBody>>>,
    pub h1_pool: Arc<Pool<h1::Conn>>,
    pub weight: u32,
    /// Active health-check verdict (true until checks say otherwise).
    pub healthy: AtomicBool,
    pub in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// Milliseconds since `Upstream::epoch` until which the target is ejected (0 = not ejected).
    ejected_until_ms: AtomicU64,
}

/// A named group of targets behind one client.
pub struct Upstream {
    pub spec: UpstreamSpec,
    /// The upstream's metric label.
    pub label: crate::metrics::Name,
    pub targets: Vec<Arc<Target>>,
    transport: Transport,
    balancer: Balancer,
    in_flight: AtomicUsize,
    epoch: Instant,
    /// Metric handles, resolved on first use: a family lookup hashes the labels under a lock on
    /// every request otherwise.
    latency: OnceLock<Histogram>,
    by_class: [OnceLock<Counter>; 5],
}

/// Decrements the upstream and target in-flight counters when the request ends.
pub struct InFlight {
    upstream: Arc<Upstream>,
    target: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.upstream.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(t) = self.upstream.targets.get(self.target) {
            t.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("upstream {0:?}: cannot read CA {1}: {2}")]
    Ca(String, String, String),
}

impl Upstream {
    pub fn new(spec: UpstreamSpec) -> Result<Arc<Self>, BuildError> {
        let transport = build_transport(&spec)?;
        let targets: Vec<Arc<Target>> = spec
            .targets
            .iter()
            .map(|t| {
                Arc::new(Target {
                    url_text: Arc::from(t.url.to_string()),
                    scheme: t.url.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP),
                    authority: t.url.authority().cloned(),
                    host_header: host_header(&t.url),
                    pool: Pool::new(spec.pool_max_idle, spec.pool_idle_timeout),
                    h1_pool: Pool::new(spec.pool_max_idle, spec.pool_idle_timeout),
                    url: t.url.clone(),
                    weight: t.weight,
                    healthy: AtomicBool::new(true),
                    in_flight: AtomicUsize::new(0),
                    consecutive_failures: AtomicU32::new(0),
                    ejections: AtomicU32::new(0),
                    ejected_until_ms: AtomicU64::new(0),
                })
            })
            .collect();
        let balancer = Balancer::new(spec.lb, &targets);
        Ok(Arc::new(Self {
            label: crate::metrics::Name::new(&spec.name),
            spec,
            targets,
            transport,
            balancer,
            in_flight: AtomicUsize::new(0),
            epoch: Instant::now(),
            latency: OnceLock::new(),
            by_class: Default::default(),
        }))
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether the target may receive traffic now (healthy and not ejected).
    pub fn available(&self, idx: usize) -> bool {
        self.targets.get(idx).is_some_and(|t| {
            t.healthy.load(Ordering::Relaxed)
                && t.ejected_until_ms.load(Ordering::Relaxed) <= self.now_ms()
        })
    }

    /// Picks a target, skipping `exclude` (targets already tried by this request).
    pub fn pick(&self, hash_key: Option<u64>, exclude: &[usize]) -> Option<usize> {
        let ok = |i: usize| self.available(i) && !exclude.contains(&i);
        let retry = !exclude.is_empty();
        self.balancer
            .pick(&self.targets, hash_key, retry, &ok)
            .or_else(|| {
                // Every target is down or excluded: fall back to any non-excluded target rather than
                // fail outright, as Envoy's panic threshold does.
                self.balancer
                    .pick(&self.targets, hash_key, retry, &|i| !exclude.contains(&i))
            })
    }

    /// Reserves a slot for a request to `target`; `None` if the circuit breaker is open.
    pub fn acquire(self: &Arc<Self>, target: usize) -> Option<InFlight> {
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed);
        if let Some(max) = self.spec.max_concurrent
            && n >= max as usize
        {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        if let Some(t) = self.targets.get(target) {
            t.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        Some(InFlight {
            upstream: self.clone(),
            target,
        })
    }

    /// Passive health: record the outcome of a request to `target`. Consecutive failures eject it
    /// for `base_ejection × 2^n` (capped), and a success resets the count.
    pub fn report(&self, target: usize, success: bool) {
        let Some(t) = self.targets.get(target) else {
            return;
        };
        if success {
            t.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        }
        let n = t.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.spec.passive.consecutive_failures {
            t.consecutive_failures.store(0, Ordering::Relaxed);
            let k = t.ejections.fetch_add(1, Ordering::Relaxed).min(16);
            let base = self.spec.passive.base_ejection.as_millis() as u64;
            let dur = base
                .saturating_mul(1 << k)
                .min(self.spec.passive.max_ejection.as_millis() as u64);
            t.ejected_until_ms
                .store(self.now_ms() + dur, Ordering::Relaxed);
            tracing::warn!(upstream = %self.spec.name, target = %t.url, ejected_ms = dur, "target ejected after consecutive failures");
        }
    }

    /// Marks a target healthy again through active checks; clears its ejection history.
    pub fn set_healthy(&self, target: usize, healthy: bool) {
        if let Some(t) = self.targets.get(target) {
            let was = t.healthy.swap(healthy, Ordering::Relaxed);
            if healthy && !was {
                t.ejected_until_ms.store(0, Ordering::Relaxed);
                t.ejections.store(0, Ordering::Relaxed);
            }
            if was != healthy {
                tracing::info!(upstream = %self.spec.name, target = %t.url, healthy, "target health changed");
            }
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Records how long a try took (`weir_upstream_latency_seconds`).
    pub fn observe_latency(&self, metrics: &Metrics, seconds: f64) {
        self.latency
            .get_or_init(|| {
                metrics
                    .upstream_latency
                    .get_or_create(&UpstreamLabel {
                        upstream: self.label.clone(),
                    })
                    .clone()
            })
            .observe(seconds);
    }

    /// Counts a try that got a response, by status class (`weir_upstream_requests_total`).
    pub fn count_status(&self, metrics: &Metrics, status: http::StatusCode) {
        const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        // Statuses above 599 are refused before this and counted as errors.
        let i = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        let Some(slot) = self.by_class.get(i) else {
            return;
        };
        slot.get_or_init(|| {
            metrics
                .upstream_requests
                .get_or_create(&UpstreamOutcome {
                    upstream: self.label.clone(),
                    outcome: CLASSES[i],
                })
                .clone()
        })
        .inc();
    }

    /// Counts a try that got no response: `connect_error`, `error` or `timeout`.
    pub fn count_failure(&self, metrics: &Metrics, outcome: &'static str) {
        metrics
            .upstream_requests
            .get_or_create(&UpstreamOutcome {
                upstream: self.label.clone(),
                outcome,
            })
            .inc();
    }

    /// Sends `req` (origin-form URI: path and query) to target `idx`. HTTP/1.1 requests take an
    /// idle pooled connection or open one; a reused connection that closed before the request
    /// was written is replaced transparently, as hyper-util's client does, and for requests
    /// without a body (see [`request_h1`]) also one that closed after it, unanswered, for
    /// idempotent methods.
    pub async fn request(
        &self,
        idx: usize,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let Some(target) = self.targets.get(idx) else {
            return Err(SendError::NoTarget(idx));
        };
        let (connector, plain) = match &self.transport {
            Transport::Http2(client) => {
                let mut uri = http::uri::Parts::default();
                uri.scheme = Some(target.scheme.clone());
                uri.authority = target.authority.clone();
                uri.path_and_query = req.uri().path_and_query().cloned();
                *req.uri_mut() = http::Uri::from_parts(uri).map_err(SendError::Uri)?;
                let res = client.request(req).await.map_err(SendError::Client)?;
                return Ok(res.map(|b| UpstreamBody::Left(HyperBody::new(b, None))));
            }
            Transport::Http1 { connector, plain } => (connector, plain),
        };
        if !req.headers().contains_key(header::HOST)
            && let Some(h) = &target.host_header
        {
            req.headers_mut().insert(header::HOST, h.clone());
        }
        if target.scheme == http::uri::Scheme::HTTP && h1::eligible(&req) {
            return request_h1(plain, target, &req).await;
        }
        let (parts, body) = req.into_parts();
        let (body, sent) = pool::track(body);
        let mut req = Request::from_parts(parts, body);
        loop {
            let (mut sender, reused) = match target.pool.take() {
                Some(s) => (s, true),
                // Boxed: the connect future (TCP, TLS) is most of this one's size and rarely runs.
                None => (Box::pin(connect_http1(connector, target)).await?, false),
            };
            // A pooled connection is ready once its task has finished the previous exchange;
            // one that closed meanwhile is dropped.
            if reused && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(res) => {
                    // After a protocol switch the connection belongs to the upgraded stream.
                    let release = (res.status() != http::StatusCode::SWITCHING_PROTOCOLS)
                        .then(|| Release::new(sender, target.pool.clone(), sent.clone()));
                    return Ok(res.map(|b| UpstreamBody::Left(HyperBody::new(b, release))));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Request(e.into_error())),
                },
            }
        }
    }
}

/// `Host` value for a target URL: host, and port unless it is the scheme's default.
fn host_header(url: &http::Uri) -> Option<HeaderValue> {
    let host = url.host()?;
    let default = match url.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let value = match url.port_u16() {
        Some(p) if p != default => format!("{host}:{p}"),
        _ => host.to_string(),
    };
    HeaderValue::from_str(&value).ok()
}

fn build_transport(spec: &UpstreamSpec) -> Result<Transport, BuildError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(spec.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = &spec.tls_ca {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(ca)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                BuildError::Ca(spec.name.clone(), ca.display().to_string(), e.to_string())
            })?;
        for c in certs {
            roots.add(c).map_err(|e| {
                BuildError::Ca(spec.name.clone(), ca.display().to_string(), e.to_string())
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BuildError::Ca(spec.name.clone(), "-".into(), e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let builder = match &spec.tls_sni {
        Some(sni) => builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(
            rustls_pki_types::ServerName::try_from(sni.clone()).map_err(|e| {
                BuildError::Ca(spec.name.clone(), format!("sni {sni}"), e.to_string())
            })?,
        )),
        None => builder,
    };
    if spec.protocol == UpstreamProtocol::Http1 {
        return Ok(Transport::Http1 {
            connector: builder.enable_http1().wrap_connector(http.clone()),
            plain: http,
        });
    }
    let connector = builder.enable_http2().wrap_connector(http);
    let mut cb = Client::builder(TokioExecutor::new());
    cb.pool_idle_timeout(spec.pool_idle_timeout)
        .pool_max_idle_per_host(spec.pool_max_idle)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .http2_only(true);
    Ok(Transport::Http2(Box::new(cb.build(connector))))
}

/// Closes pooled connections idle past `pool_idle_timeout` when no request comes to find them.
/// Holds only a `Weak`, so it ends when a reload drops the upstream.
pub fn spawn_pool_reaper(upstream: &Arc<Upstream>) {
    if !matches!(upstream.transport, Transport::Http1 { .. }) {
        return;
    }
    let period = (upstream.spec.pool_idle_timeout / 2).max(Duration::from_millis(50));
    let weak = Arc::downgrade(upstream);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(up) = weak.upgrade() else { return };
            for t in &up.targets {
                t.pool.retire_idle();
                t.h1_pool.retire_idle();
            }
        }
    });
}

/// Opens a new HTTP/1.1 connection to `target`; its I/O runs in its own task.
async fn connect_http1(
    connector: &Connector,
    target: &Target,
) -> Result<SendRequest<ProxyBody>, SendError> {
    use tower_service::Service;
    let mut connector = connector.clone();
    std::future::poll_fn(|cx| connector.poll_ready(cx))
        .await
        .map_err(SendError::Connect)?;
    let io = connector
        .call(target.url.clone())
        .await
        .map_err(SendError::Connect)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(SendError::Request)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// Methods that may be sent again after a failure that could have reached the upstream
/// (RFC 9110 §9.2.2).
pub fn idempotent(m: &http::Method) -> bool {
    use http::Method;
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Sends a request without a body on an idle [`h1`] connection, or a new one. A reused
/// connection that fails before any byte of a response is replaced once, by a new connection:
/// for every method when the request could not be written, for idempotent ones when it was. The
/// upstream most likely closed that connection while it was idle (a race [`Pool::take`] cannot
/// see) and never read the request; an upstream that drops every request unanswered gets it
/// twice, not once per idle connection.
async fn request_h1(
    plain: &HttpConnector,
    target: &Target,
    req: &Request<ProxyBody>,
) -> Result<Response<UpstreamBody>, SendError> {
    let replayable = idempotent(req.method());
    let mut pooled = target.h1_pool.take();
    loop {
        let (conn, reused) = match pooled.take() {
            Some(c) => (c, true),
            None => (Box::pin(connect_plain(plain, target)).await?, false),
        };
        match h1::send(conn, req, &target.h1_pool).await {
            Ok(res) => return Ok(res.map(UpstreamBody::Right)),
            Err(e) if reused && (e.is_unsent() || replayable && e.is_stale()) => continue,
            Err(e) => return Err(SendError::H1(e)),
        }
    }
}

/// Opens a TCP connection to a plain-HTTP target, with the upstream's connect timeout and
/// socket options.
async fn connect_plain(plain: &HttpConnector, target: &Target) -> Result<h1::Conn, SendError> {
    use tower_service::Service;
    let mut plain = plain.clone();
    let io = plain
        .call(target.url.clone())
        .await
        .map_err(|e| SendError::Connect(Box::new(e)))?;
    Ok(h1::Conn::new(io.into_inner()))
}

/// A response body from either HTTP/1.1 client: hyper's (`Left`) or [`h1`]'s (`Right`).
pub type UpstreamBody = http_body_util::Either<HyperBody, h1::H1Body>;
