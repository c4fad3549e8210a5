//! Listeners: accept loop, connection cap, TLS termination, HTTP/1.1 + HTTP/2 (ALPN or h2c prior
//! knowledge) with edge limits, and graceful drain.

use crate::config::{Limits, Listener};
use crate::framing::FramingObserver;
use crate::proxy::{self, ConnInfo};
use crate::state::Gateway;
use crate::tls::{CertPair, TlsSettings, TlsTerminator};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

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

/// Serves one listener until `shutdown` flips, then drains its connections within the deadline.
pub async fn serve(gw: Arc<Gateway>, bound: BoundListener, mut shutdown: watch::Receiver<bool>) {
    let limits = gw.table().config.limits.clone();
    let builder = Arc::new(http_builder(&limits));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let name: Arc<str> = Arc::from(bound.spec.name.as_str());
    let scheme = if bound.tls.is_some() { "https" } else { "http" };
    let _watch = bound.tls.as_ref().map(|t| t.watch());
    let conns = gw
        .metrics
        .connections
        .get_or_create(&crate::metrics::ListenerLabel {
            listener: bound.spec.name.clone(),
        })
        .clone();
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
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conn = Arc::new(ConnInfo {
            peer,
            scheme,
            listener: name.clone(),
            ambiguous_framing: flag.clone(),
        });
        let gw2 = gw.clone();
        // Boxed: hyper keeps a slot the size of the service future for the whole connection, and
        // the request path's future is tens of KiB; idle keep-alive connections then hold a
        // pointer instead (see benches/README.md, idle connections).
        let svc = service_fn(move |req| Box::pin(proxy::handle(gw2.clone(), conn.clone(), req)));
        let builder = builder.clone();
        let conns = conns.clone();
        conns.inc();
        match &bound.tls {
            None => {
                let fut = graceful.watch(
                    builder
                        .serve_connection_with_upgrades(
                            TokioIo::new(FramingObserver::new(stream, flag)),
                            svc,
                        )
                        .into_owned(),
                );
                tokio::spawn(async move {
                    if let Err(e) = fut.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    conns.dec();
                    drop(permit);
                });
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls_stream)) => {
                            let conn = builder
                                .serve_connection_with_upgrades(
                                    TokioIo::new(FramingObserver::new(tls_stream, flag)),
                                    svc,
                                )
                                .into_owned();
                            if let Err(e) = watcher.watch(conn).await {
                                tracing::debug!(error = %e, "TLS connection ended with an error");
                            }
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                    conns.dec();
                    drop(permit);
                });
            }
        }
    }
    drop(bound.listener);
    tracing::info!(listener = %name, "stopped accepting; draining");
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(listener = %name, "drain deadline passed; closing remaining connections");
    }
}
