//! Keep-alive HTTP/1.1 connections to one target, used last-in first-out.
//!
//! hyper-util's general client keys a shared pool by scheme and authority, races a checkout
//! against a lazy connect and wraps every request in several layers of futures; its bookkeeping
//! was about 5 % of the plain proxy's CPU. Weir already knows the target of each try, so each
//! target keeps its own stacks of idle connections (hyper senders, and the sockets of
//! [`super::h1`]), and a connection goes back on its stack when its response body has been read
//! to the end (see [`HyperBody`]).

use crate::body::{BoxError, ProxyBody};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A connection that can wait in a [`Pool`].
pub trait Reusable {
    /// The connection can no longer carry a request (closed by the peer, or unusable).
    fn is_closed(&self) -> bool;
}

impl Reusable for SendRequest<ProxyBody> {
    fn is_closed(&self) -> bool {
        SendRequest::is_closed(self)
    }
}

/// An idle connection, ready for its next request.
struct Idle<C> {
    conn: C,
    since: Instant,
}

/// The idle connections of one target. Newest at the back: reusing the warmest connection keeps
/// the others idle long enough for the upstream (or `idle_timeout`) to retire them.
pub struct Pool<C> {
    idle: Mutex<VecDeque<Idle<C>>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl<C: Reusable> Pool<C> {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(VecDeque::new()),
            max_idle,
            idle_timeout,
        })
    }

    /// The most recently used idle connection that is still open and young enough.
    pub fn take(&self) -> Option<C> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(c) = idle.pop_back() {
            if !c.conn.is_closed() && c.since.elapsed() < self.idle_timeout {
                return Some(c.conn);
            }
        }
        None
    }

    /// Puts a connection whose last response was read to the end back for reuse, and retires
    /// the ones idle for longer than `idle_timeout`.
    pub fn put(&self, conn: C) {
        if conn.is_closed() || self.max_idle == 0 {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        self.retire_expired(&mut idle, now);
        if idle.len() >= self.max_idle {
            // Full: the oldest goes (dropping it closes the connection).
            idle.pop_front();
        }
        idle.push_back(Idle { conn, since: now });
    }

    /// Closes the connections idle for `idle_timeout` or longer (oldest first, at the front).
    fn retire_expired(&self, idle: &mut VecDeque<Idle<C>>, now: Instant) {
        while idle
            .front()
            .is_some_and(|c| now.duration_since(c.since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
    }

    /// Retires expired idle connections without waiting for the next request (see
    /// [`super::spawn_pool_reaper`]).
    pub fn retire_idle(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        self.retire_expired(&mut idle, Instant::now());
    }
}

/// Whether hyper has been handed the whole request body. An upstream may answer before it read
/// the request (a 401 or 413 to an upload): the connection then keeps writing that body after
/// the response ended, and pooling it would make the next request wait for the upload.
#[derive(Clone, Default)]
pub struct Sent(Option<Arc<AtomicBool>>);

impl Sent {
    fn complete(&self) -> bool {
        self.0.as_ref().is_none_or(|f| f.load(Ordering::Acquire))
    }
}

/// Marks the request body sent.
struct MarkSent(Arc<AtomicBool>);

impl AtEnd for MarkSent {
    fn at_end(self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Wraps a request body so that [`Sent`] learns when its last frame went to hyper. A body that
/// is empty from the start is not wrapped.
pub fn track(body: ProxyBody) -> (ProxyBody, Sent) {
    if body.is_end_stream() {
        return (body, Sent(None));
    }
    let flag = Arc::new(AtomicBool::new(false));
    let tracked = OnEnd::new(body, Some(MarkSent(flag.clone())));
    (crate::body::boxed(tracked), Sent(Some(flag)))
}

/// Gives a connection back to its pool once the exchange on it is complete.
pub struct Release {
    sender: SendRequest<ProxyBody>,
    pool: Arc<Pool<SendRequest<ProxyBody>>>,
    sent: Sent,
}

impl Release {
    pub fn new(
        sender: SendRequest<ProxyBody>,
        pool: Arc<Pool<SendRequest<ProxyBody>>>,
        sent: Sent,
    ) -> Self {
        Self { sender, pool, sent }
    }
}

impl AtEnd for Release {
    /// The response has ended. A connection still writing its request body is not pooled:
    /// dropping its sender lets hyper finish that exchange and close it.
    fn at_end(self) {
        if self.sent.complete() {
            self.pool.put(self.sender);
        }
    }
}

/// A response body from hyper's client that returns its connection to the pool at its end. A
/// body dropped early (client gone, error) drops the sender instead, and hyper closes that
/// connection.
pub type HyperBody = OnEnd<Incoming, Release>;

/// What to do once a body has produced its last frame.
pub trait AtEnd {
    fn at_end(self);
}

/// A body that runs its [`AtEnd`] once, right after its last frame (at once if it starts
/// empty); never after an error or when dropped before the end.
pub struct OnEnd<B, A> {
    inner: B,
    at_end: Option<A>,
}

impl<B: Body, A: AtEnd> OnEnd<B, A> {
    pub fn new(inner: B, at_end: Option<A>) -> Self {
        let mut b = Self { inner, at_end };
        if b.inner.is_end_stream() {
            b.fire();
        }
        b
    }

    fn fire(&mut self) {
        if let Some(a) = self.at_end.take() {
            a.at_end();
        }
    }
}

impl<B, A> Body for OnEnd<B, A>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    A: AtEnd + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.fire();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(f))) => {
                // hyper stops polling a body that says it has ended, and one that yielded its
                // trailers (always the last frame), so neither waits for the `None`.
                if f.is_trailers() || this.inner.is_end_stream() {
                    this.fire();
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.at_end = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
