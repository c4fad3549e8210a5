//! Listeners: accept loop, connection cap, TLS termination, HTTP/1.1 + HTTP/2 (ALPN or h2c prior
//! knowledge) with edge limits, and graceful drain.

use crate::body::ProxyBody;
use crate::config::{Limits, Listener};
use crate::framing::FramingObserver;
use crate::park::{GuardedBody, InFlight, ParkIo, Parked, Requests};
use crate::proxy::{self, ConnInfo};
use crate::state::Gateway;
use crate::tls::{CertPair, TlsSettings, TlsTerminator};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use prometheus_client::metrics::gauge::Gauge;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

/// TLS handshakes that take longer than this are dropped (slowloris on the handshake).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound listener, ready to serve.
pub struct BoundListener {
    pub spec: Listener,
    pub local_addr: SocketAddr,
    listener: TcpListener,
    tls: Option<Arc<TlsTerminator>>,
}

/// Binds a listener socket and loads its certificates (errors name the address or file).
pub async fn bind(spec: &Listener) -> anyhow::Result<BoundListener> {
    let tls = match &spec.tls {
        Some(t) => Some(TlsTerminator::new(TlsSettings {
            certs: t
                .certs
                .iter()
                .map(|(cert, key)| CertPair {
                    cert: cert.clone(),
                    key: key.clone(),
                })
                .collect(),
            client_ca: t.client_ca.clone(),
            session_resumption: t.session_resumption,
        })?),
        None => None,
    };
    let listener = TcpListener::bind(spec.addr)
        .await
        .map_err(|e| anyhow::anyhow!("listener {:?}: cannot bind {}: {e}", spec.name, spec.addr))?;
    let local_addr = listener.local_addr()?;
    Ok(BoundListener {
        spec: spec.clone(),
        local_addr,
        listener,
        tls,
    })
}

/// Builds the HTTP server with the edge limits.
pub fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_request_head)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_header_list_size(limits.max_request_head as u32)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// The hyper service of one connection: the proxy, with each response body holding its
/// request's [`InFlight`] (so an idle connection can tell it has nothing left to send).
#[derive(Clone)]
struct ConnService {
    gw: Arc<Gateway>,
    conn: Arc<ConnInfo>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<GuardedBody<ProxyBody>>;
    type Error = Infallible;
    // Boxed: hyper keeps a slot the size of the service future for the whole connection, and
    // the request path's future is tens of KiB (see benches/README.md, idle connections).
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = InFlight::new(&self.conn);
        let (gw, conn) = (self.gw.clone(), self.conn.clone());
        // The request path's future is created inside the box at the first poll, not moved in.
        Box::pin(async move {
            let res = proxy::handle(gw, conn, req).await?;
            Ok(res.map(|b| GuardedBody::new(b, guard)))
        })
    }
}

/// A client stream whose socket can be waited on alone while the connection is parked.
trait ClientSocket: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {
    /// False if bytes of the first request may already be buffered above the socket.
    const FIRST_REQUEST_ON_SOCKET: bool;
    fn tcp(&self) -> &TcpStream;
}

impl ClientSocket for TcpStream {
    const FIRST_REQUEST_ON_SOCKET: bool = true;
    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// A parked TLS connection keeps its rustls session (keys, sequence numbers); only hyper's
/// buffers go. hyper's read came back empty, so rustls holds no plaintext: what wakes the socket
/// next is the client's next record.
impl ClientSocket for tokio_rustls::server::TlsStream<TcpStream> {
    /// A TLS 1.3 client sends its first request with its Finished: rustls may have read it
    /// during the handshake.
    const FIRST_REQUEST_ON_SOCKET: bool = false;
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// What the connection tasks of one listener share: one pointer in each task, which lives as
/// long as its connection.
struct ListenerCtx {
    builder: auto::Builder<TokioExecutor>,
    /// How long a connection may wait for a request (`header_read_timeout`).
    idle: Duration,
    /// Set, then `drain_notify` fired, when the listener stops accepting.
    draining: AtomicBool,
    drain_notify: Notify,
    parked: Gauge,
    connections: Gauge,
}

impl ListenerCtx {
    /// Resolves once the listener drains.
    async fn drained(&self) {
        let notified = self.drain_notify.notified();
        tokio::pin!(notified);
        // Registered before the flag is read, so a drain between the two still wakes us.
        notified.as_mut().enable();
        if self.draining.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }

    fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        self.drain_notify.notify_waiters();
    }

    /// Waits until the client sends bytes: false on the idle timeout, an error or a drain.
    /// Polls the socket's readiness directly: `TcpStream::readable` keeps a waiter node in
    /// the future, and this future is what a parked connection's task is made of.
    async fn readable_within(&self, tcp: &TcpStream) -> bool {
        let readable = std::future::poll_fn(|cx| tcp.poll_read_ready(cx));
        tokio::select! {
            r = tokio::time::timeout(self.idle, readable) => matches!(r, Ok(Ok(()))),
            () = self.drained() => false,
        }
    }
}

/// Holds a connection's place in its listener (the `max_connections` permit and the gauge)
/// for as long as its task runs.
struct ConnSlot {
    ctx: Arc<ListenerCtx>,
    _permit: OwnedSemaphorePermit,
}

impl ConnSlot {
    fn new(ctx: Arc<ListenerCtx>, permit: OwnedSemaphorePermit) -> Self {
        ctx.connections.inc();
        Self {
            ctx,
            _permit: permit,
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.ctx.connections.dec();
    }
}

/// Runs one hyper session; when the listener drains it is asked to finish gracefully
/// (`Connection: close` / GOAWAY after the requests in flight). So is a session that has not
/// received a request within `header_read_timeout`, and dropped if it has not finished one
/// period later: hyper's own header timer starts only once it has told HTTP/1 from HTTP/2, and
/// until then a client sending part of the HTTP/2 preface (or nothing, after a TLS handshake)
/// would hold the connection for ever.
async fn drive<C>(
    mut conn: Pin<Box<C>>,
    ctx: &ListenerCtx,
    requests: &Requests,
) -> Result<(), C::Error>
where
    C: GracefulConnection,
{
    let before = requests.started();
    // Boxed: it lives only as long as the session, not in the task of a parked connection.
    let mut timer = Box::pin(tokio::time::sleep(ctx.idle));
    let mut timer_armed = true;
    let mut closing = false;
    loop {
        tokio::select! {
            // hyper first: bytes that arrived with the timer are a request, not a timeout.
            biased;
            r = conn.as_mut() => return r,
            () = ctx.drained(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
                // The listener's drain deadline bounds the rest.
                timer_armed = false;
            }
            () = &mut timer, if timer_armed => {
                if closing {
                    tracing::debug!("session without a request did not close; dropping it");
                    return Ok(());
                }
                if requests.started() == before {
                    tracing::debug!("no request within header_read_timeout; closing");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    timer.as_mut().reset(tokio::time::Instant::now() + ctx.idle);
                } else {
                    timer_armed = false;
                }
            }
        }
    }
}

/// Serves a client connection: hyper sessions, with the stream parked alone in between while
/// the client is idle (HTTP/1 only; see [`crate::park`]). While parked, the task holds the
/// stream, the slot it comes back through, a few pointers and the wait for readability.
async fn serve_parkable<S: ClientSocket>(
    place: ConnSlot,
    mut stream: FramingObserver<S>,
    svc: ConnService,
) {
    let ctx = &*place.ctx;
    // hyper's header timeout takes over once bytes arrive; until then only the stream is held.
    if S::FIRST_REQUEST_ON_SOCKET && !ctx.readable_within(stream.get_ref().tcp()).await {
        return;
    }
    let slot: Arc<Parked<FramingObserver<S>>> = Arc::new(Parked::default());
    loop {
        let io = ParkIo::new(stream, svc.conn.clone(), slot.clone());
        let conn = ctx
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), svc.clone())
            .into_owned();
        if let Err(e) = drive(Box::pin(conn), ctx, &svc.conn.requests).await {
            tracing::debug!(error = %e, "connection ended with an error");
            return;
        }
        stream = match slot.take() {
            Some(s) => s,
            None => return,
        };
        ctx.parked.inc();
        let ready = ctx.readable_within(stream.get_ref().tcp()).await;
        ctx.parked.dec();
        if !ready {
            return;
        }
    }
}

/// Serves one listener until `shutdown` flips, then drains its connections within the deadline.
pub async fn serve(gw: Arc<Gateway>, bound: BoundListener, mut shutdown: watch::Receiver<bool>) {
    let limits = gw.table().config.limits.clone();
    let max_connections = u32::try_from(limits.max_connections).unwrap_or(u32::MAX >> 4);
    let permits = Arc::new(Semaphore::new(max_connections as usize));
    let name: Arc<str> = Arc::from(bound.spec.name.as_str());
    let scheme = if bound.tls.is_some() { "https" } else { "http" };
    let forwarded_port = http::HeaderValue::from(bound.local_addr.port());
    let _watch = bound.tls.as_ref().map(|t| {
        gw.register_tls(&bound.spec.name, t.clone());
        t.watch()
    });
    let label = crate::metrics::ListenerLabel {
        listener: bound.spec.name.clone(),
    };
    let ctx = Arc::new(ListenerCtx {
        builder: http_builder(&limits),
        idle: limits.header_read_timeout,
        draining: AtomicBool::new(false),
        drain_notify: Notify::new(),
        parked: gw.metrics.parked.get_or_create(&label).clone(),
        connections: gw.metrics.connections.get_or_create(&label).clone(),
    });
    tracing::info!(listener = %name, addr = %bound.local_addr, tls = bound.tls.is_some(), "listening");
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            r = bound.listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(ConnInfo::new(peer, scheme, forwarded_port.clone()));
        let svc = ConnService {
            gw: gw.clone(),
            conn: conn.clone(),
        };
        let place = ConnSlot::new(ctx.clone(), permit);
        match &bound.tls {
            None => {
                tokio::spawn(serve_parkable(
                    place,
                    FramingObserver::new(stream, conn),
                    svc,
                ));
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                tokio::spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls_stream)) => {
                            let observed = FramingObserver::new(tls_stream, conn);
                            serve_parkable(place, observed, svc).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    ctx.drain();
    drop(bound.listener);
    tracing::info!(listener = %name, "stopped accepting; draining");
    // Every connection task holds a permit until it ends: all of them back means drained.
    if tokio::time::timeout(limits.drain_timeout, permits.acquire_many(max_connections))
        .await
        .is_err()
    {
        tracing::warn!(listener = %name, "drain deadline passed; closing remaining connections");
    }
}
