//! Idle HTTP/1 keep-alive connections parked without hyper's buffers.
//!
//! hyper's HTTP/1 connection keeps an 8 KiB read and an 8 KiB write buffer (plus its state) for
//! as long as it lives, and it lives for the whole keep-alive connection. nginx frees a
//! connection's request buffers while it waits for the next request; Weir does the same. When
//! an HTTP/1 connection (cleartext or TLS) has been idle for one to two [`PARK_AFTER`] periods
//! (every response finished and flushed, every byte read so far part of a complete request, no
//! byte read or response finished during a whole period), [`ParkIo`] reports end-of-stream to
//! hyper. hyper then finishes that connection as a client close at a message
//! boundary (it flushes what it has written, then calls `poll_shutdown`, which [`ParkIo`] turns
//! into a no-op) and drops its buffers, but the socket is handed back through [`Parked`]. The
//! connection task waits for the socket to become readable, holding nothing else, and starts a
//! new hyper connection on it for the next request.
//!
//! "Every response finished" is counted by [`InFlight`] guards: one per request, held by the
//! response body until hyper has taken its last frame (or dropped it); "and flushed" means a
//! flush completed after the last one finished, because hyper drops the body before writing its
//! last bytes and only goes idle once they are flushed (an end-of-stream before that would be an
//! error for hyper, and the tail of the response would be lost). "Every byte part of a complete
//! request" is the [`FramingObserver`](crate::framing::FramingObserver)'s
//! [`MessageBoundary`]: it follows the framing of every byte hyper read, so a connection with a
//! partly read request or body, or an HTTP/2 or upgraded one, is never parked.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::proxy::ConnInfo;

/// How long a connection stays idle inside hyper before it is parked. Busy keep-alive clients
/// (a request every few ms) never reach it, so they never pay for re-creating hyper's state.
pub const PARK_AFTER: Duration = Duration::from_millis(250);

/// What the framing observer knows about the bytes read so far.
pub trait MessageBoundary {
    /// All bytes read so far belong to complete requests (no partial request or body).
    fn at_message_start(&self) -> bool;
    /// The connection may still reach a message start (false once observing stopped: HTTP/2,
    /// upgrades, framing hyper will refuse), so an idle clock is worth keeping.
    fn may_reach_message_start(&self) -> bool;
}

/// The requests being answered on one connection (kept in its [`ConnInfo`]).
#[derive(Debug, Default)]
pub struct Requests {
    /// Requests handed to the service so far.
    started: AtomicU64,
    /// Responses finished (bodies done or dropped) so far; `started - finished` are in flight.
    finished: AtomicU64,
}

impl Requests {
    /// Requests handed to the service so far on this connection, answered or not.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Acquire)
    }
}

/// One request being answered; dropped when its response body is done (or dropped).
pub struct InFlight(Arc<ConnInfo>);

impl InFlight {
    pub fn new(conn: &Arc<ConnInfo>) -> Self {
        conn.requests.started.fetch_add(1, Ordering::AcqRel);
        Self(conn.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.requests.finished.fetch_add(1, Ordering::AcqRel);
    }
}

/// Where a parking session leaves its stream for the connection task.
pub struct Parked<S>(Mutex<Option<S>>);

impl<S> Default for Parked<S> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<S> Parked<S> {
    /// The stream of a session that parked (once its hyper connection was dropped).
    pub fn take(&self) -> Option<S> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn put(&self, s: S) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
    }
}

/// A response body that holds its request's [`InFlight`] until hyper is done with it.
pub struct GuardedBody<B> {
    inner: B,
    _guard: InFlight,
}

impl<B> GuardedBody<B> {
    pub fn new(inner: B, guard: InFlight) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for GuardedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The IO of one hyper session on a parkable connection (see the module docs).
pub struct ParkIo<S> {
    io: Option<S>,
    conn: Arc<ConnInfo>,
    slot: Arc<Parked<S>>,
    /// Reads that returned data; with finished responses, the activity the idle clock watches.
    reads: u64,
    /// The idle clock, armed at the first read that had to wait, with the activity then.
    clock: Option<(Pin<Box<Sleep>>, u64)>,
    /// Bytes were written and not flushed since.
    unflushed: bool,
    /// `Requests::finished` at the last completed flush: hyper's output is all out only if no
    /// response finished after it (its last bytes may still sit in hyper's buffer otherwise,
    /// and hyper is not idle until it has flushed them).
    flushed_at: u64,
    parked: bool,
}

impl<S> ParkIo<S> {
    pub fn new(io: S, conn: Arc<ConnInfo>, slot: Arc<Parked<S>>) -> Self {
        let flushed_at = conn.requests.finished.load(Ordering::Acquire);
        Self {
            io: Some(io),
            conn,
            slot,
            reads: 0,
            clock: None,
            unflushed: false,
            flushed_at,
            parked: false,
        }
    }

    /// Nothing in flight and everything written flushed: hyper is between requests.
    fn all_answered(&self) -> bool {
        // `finished` first: a request starting or finishing between the two loads makes them
        // differ, so a race can only say "busy", never "idle" with a request in flight.
        let finished = self.conn.requests.finished.load(Ordering::Acquire);
        !self.unflushed
            && self.conn.requests.started.load(Ordering::Acquire) == finished
            && finished == self.flushed_at
    }

    /// On a read that has to wait: true if the connection may park now, i.e. nothing was read
    /// for a whole [`PARK_AFTER`] period and it is idle. The clock wakes the task when a period
    /// ends (so an idle connection is looked at again even if hyper would not read), and is
    /// polled only when armed: a busy connection pays a flag check per read and one timer reset
    /// per period.
    fn may_park(&mut self, cx: &mut Context<'_>, idle: bool) -> bool {
        let activity = self.reads + self.conn.requests.finished.load(Ordering::Acquire);
        if let Some((sleep, armed_at)) = &mut self.clock {
            if !sleep.is_elapsed() {
                return false;
            }
            if *armed_at == activity && idle {
                return true;
            }
            *armed_at = activity;
            sleep.as_mut().reset(Instant::now() + PARK_AFTER);
            // Registers this task's waker with the timer (a period is never over at once).
            let _ = sleep.as_mut().poll(cx);
            return false;
        }
        let mut sleep = Box::pin(tokio::time::sleep_until(Instant::now() + PARK_AFTER));
        let _ = sleep.as_mut().poll(cx);
        self.clock = Some((sleep, activity));
        false
    }
}

impl<S> Drop for ParkIo<S> {
    fn drop(&mut self) {
        if self.parked
            && let Some(io) = self.io.take()
        {
            self.slot.put(io);
        }
    }
}

impl<S: AsyncRead + MessageBoundary + Unpin> AsyncRead for ParkIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.parked {
            return Poll::Ready(Ok(()));
        }
        let Some(io) = this.io.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let before = buf.filled().len();
        let poll = Pin::new(&mut *io).poll_read(cx, buf);
        match &poll {
            Poll::Pending if !io.may_reach_message_start() => {
                // HTTP/2, an upgrade, framing hyper refuses: never parked, so no clock either.
                this.clock = None;
            }
            Poll::Pending => {
                let idle = io.at_message_start() && this.all_answered();
                if this.may_park(cx, idle) {
                    // End-of-stream for hyper, not for the client: see the module docs.
                    this.parked = true;
                    return Poll::Ready(Ok(()));
                }
            }
            Poll::Ready(Ok(())) if buf.filled().len() > before => this.reads += 1,
            Poll::Ready(_) => {}
        }
        poll
    }
}

/// Largest vectored write copied into one buffer before it goes to the socket.
const COALESCE_MAX: usize = 4096;

/// A small vectored write (a response head and a short body) as one contiguous write: one
/// buffer is cheaper for the kernel than an iovec array, and copying a few KiB costs less
/// than the difference. Larger writes keep `writev`, where the copy would dominate.
fn write_coalesced<S: AsyncWrite + ?Sized>(
    io: Pin<&mut S>,
    cx: &mut Context<'_>,
    bufs: &[std::io::IoSlice<'_>],
) -> Poll<std::io::Result<usize>> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    if bufs.len() < 2 || total > COALESCE_MAX {
        return io.poll_write_vectored(cx, bufs);
    }
    // Inline and left uninitialised: a zeroed `[0u8; COALESCE_MAX]` cost a 4 KiB memset per
    // write (benches/README.md, "Plain path instruction count").
    let mut joined = smallvec::SmallVec::<[u8; COALESCE_MAX]>::new();
    for b in bufs {
        joined.extend_from_slice(b);
    }
    io.poll_write(cx, &joined)
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ParkIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_write(cx, data),
            None => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        };
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.unflushed = true;
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = match self.io.as_mut() {
            Some(io) => write_coalesced(Pin::new(io), cx, bufs),
            None => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        };
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.unflushed = true;
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Read before flushing: a response finishing meanwhile must not count as flushed.
        let finished = self.conn.requests.finished.load(Ordering::Acquire);
        let poll = match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        };
        if let Poll::Ready(Ok(())) = poll {
            self.unflushed = false;
            self.flushed_at = finished;
        }
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // A parked session's end is not the connection's: the socket stays open.
        if self.parked {
            return Poll::Ready(Ok(()));
        }
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::IoSlice;

    /// Records each write call: `(vectored, bytes)`; accepts at most `limit` bytes per call.
    struct Recorder {
        calls: Vec<(bool, Vec<u8>)>,
        limit: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = data.len().min(self.limit);
            self.calls.push((false, data[..n].to_vec()));
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = all.len().min(self.limit);
            self.calls.push((true, all[..n].to_vec()));
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn write(limit: usize, bufs: &[&[u8]]) -> (usize, Vec<(bool, Vec<u8>)>) {
        let mut io = Recorder {
            calls: Vec::new(),
            limit,
        };
        let slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let Poll::Ready(Ok(n)) = write_coalesced(Pin::new(&mut io), &mut cx, &slices) else {
            panic!("the recorder is always ready");
        };
        (n, io.calls)
    }

    #[test]
    fn small_vectored_writes_go_out_as_one_buffer() {
        let (n, calls) = write(usize::MAX, &[b"HTTP/1.1 200 OK\r\n\r\n", b"body"]);
        assert_eq!(n, 23);
        assert_eq!(calls, [(false, b"HTTP/1.1 200 OK\r\n\r\nbody".to_vec())]);
    }

    #[test]
    fn a_short_write_of_the_joined_buffer_reports_what_was_taken() {
        let (n, calls) = write(5, &[b"abc", b"defg"]);
        assert_eq!(n, 5);
        assert_eq!(calls, [(false, b"abcde".to_vec())]);
    }

    #[test]
    fn large_or_single_writes_stay_vectored() {
        let big = vec![b'x'; COALESCE_MAX];
        let (n, calls) = write(usize::MAX, &[b"head", &big]);
        assert_eq!(n, COALESCE_MAX + 4);
        assert!(calls.len() == 1 && calls[0].0, "copied a large write");
        let (_, calls) = write(usize::MAX, &[b"one"]);
        assert!(calls.len() == 1 && calls[0].0);
    }
}
