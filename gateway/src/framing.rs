//! A read-side observer of HTTP/1 framing, in front of hyper.
//!
//! hyper resolves some ambiguous framings itself before the handler sees the request: it drops
//! `Content-Length` when `Transfer-Encoding` is present, merges repeated equal `Content-Length`
//! headers, and accepts `chunked` repeated or after other codings. Each is a smuggling vector
//! (another hop may read the message differently) and gets a 400: this wrapper follows the byte
//! stream (request heads, then `Content-Length` or chunked bodies) and flags the connection when a
//! head is ambiguous. It never changes a byte, and on anything it does not understand (HTTP/2 preface,
//! upgrades, malformed framing that hyper will reject anyway) it stops observing.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::proxy::ConnInfo;

/// Heads larger than this are left to hyper's own limit (431).
const MAX_HEAD: usize = 128 * 1024;

enum State {
    Head(Vec<u8>),
    Body(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkCrlf(u8),
    Trailers(Vec<u8>),
    Off,
}

/// Wraps a client stream; the connection's `ambiguous_framing` turns true once a head with both
/// length headers was read.
pub struct FramingObserver<S> {
    inner: S,
    state: State,
    conn: Arc<ConnInfo>,
    /// Request heads seen; parking needs at least one (an HTTP/1 connection, not HTTP/2).
    heads: u64,
}

impl<S> FramingObserver<S> {
    pub fn new(inner: S, conn: Arc<ConnInfo>) -> Self {
        Self {
            inner,
            state: State::Head(Vec::new()),
            conn,
            heads: 0,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            // Fast path: a whole head inside this read is checked where it lies, not copied.
            if matches!(&self.state, State::Head(buf) if buf.is_empty())
                && !data.starts_with(b"PRI * HTTP/2.0")
                && let Some(pos) = memchr::memmem::find(data, b"\r\n\r\n")
                && pos <= MAX_HEAD
            {
                let end = pos + 4;
                self.state = self.after_head(&data[..end]);
                self.heads += 1;
                data = &data[end..];
                continue;
            }
            match &mut self.state {
                State::Off => return,
                State::Head(buf) => {
                    let take = data.len().min(MAX_HEAD + 4 - buf.len().min(MAX_HEAD));
                    let start = buf.len().saturating_sub(3);
                    buf.extend_from_slice(&data[..take]);
                    if buf.len() >= 24 && buf.starts_with(b"PRI * HTTP/2.0") {
                        self.state = State::Off;
                        return;
                    }
                    match find(&buf[start..], b"\r\n\r\n") {
                        Some(pos) => {
                            let end = start + pos + 4;
                            let used = take - (buf.len() - end);
                            let head = std::mem::take(buf);
                            data = &data[used..];
                            self.state = self.after_head(&head[..end]);
                            self.heads += 1;
                        }
                        None if buf.len() > MAX_HEAD => {
                            self.state = State::Off;
                            return;
                        }
                        None => return,
                    }
                }
                State::Body(n) => {
                    let k = (*n).min(data.len() as u64);
                    *n -= k;
                    data = &data[k as usize..];
                    if *n == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkSize(line) => match data.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        line.extend_from_slice(&data[..i]);
                        data = &data[i + 1..];
                        let text = String::from_utf8_lossy(line);
                        let hex = text.split(';').next().unwrap_or("").trim();
                        self.state = match u64::from_str_radix(hex, 16) {
                            Ok(0) => State::Trailers(Vec::new()),
                            Ok(n) => State::ChunkData(n),
                            Err(_) => State::Off,
                        };
                    }
                    None if line.len() > 1024 => self.state = State::Off,
                    None => {
                        line.extend_from_slice(data);
                        return;
                    }
                },
                State::ChunkData(n) => {
                    let k = (*n).min(data.len() as u64);
                    *n -= k;
                    data = &data[k as usize..];
                    if *n == 0 {
                        self.state = State::ChunkCrlf(2);
                    }
                }
                State::ChunkCrlf(left) => {
                    let k = (*left as usize).min(data.len());
                    data = &data[k..];
                    *left -= k as u8;
                    if *left == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::Trailers(line) => match data.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        line.extend_from_slice(&data[..i]);
                        data = &data[i + 1..];
                        let empty = line.iter().all(|b| *b == b'\r');
                        line.clear();
                        if empty {
                            self.state = State::Head(Vec::new());
                        }
                    }
                    None if line.len() > MAX_HEAD => self.state = State::Off,
                    None => {
                        line.extend_from_slice(data);
                        return;
                    }
                },
            }
        }
    }

    /// Decides what follows a complete head, and flags CL + TE.
    fn after_head(&self, head: &[u8]) -> State {
        // Not zeroed: filling 128 empty fields cost a third as much as the parse.
        let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
        let mut req = httparse::Request::new(&mut []);
        if !matches!(
            req.parse_with_uninit_headers(head, &mut headers),
            Ok(httparse::Status::Complete(_))
        ) {
            return State::Off;
        }
        let mut cl: Option<u64> = None;
        let (mut cl_count, mut upgrade) = (0usize, false);
        let mut te_tokens: Vec<String> = Vec::new();
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                cl_count += 1;
                cl = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                te_tokens.extend(
                    v.split(',')
                        .map(|t| t.trim().to_string())
                        .filter(|t| !t.is_empty()),
                );
                if v.trim().is_empty() {
                    te_tokens.push(String::new());
                }
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        let has_cl = cl_count > 0;
        let te = !te_tokens.is_empty();
        // Ambiguous framing that parsers disagree on: both lengths, a repeated Content-Length
        // (hyper merges equal ones), or any Transfer-Encoding other than exactly `chunked`.
        if (has_cl && te) || cl_count > 1 || (te && te_tokens != ["chunked"]) {
            self.conn.ambiguous_framing.store(true, Ordering::Relaxed);
            return State::Off;
        }
        if upgrade || req.method == Some("CONNECT") {
            State::Off
        } else if te {
            State::ChunkSize(Vec::new())
        } else if !has_cl {
            State::Head(Vec::new())
        } else {
            match cl {
                Some(0) => State::Head(Vec::new()),
                Some(n) => State::Body(n),
                None => State::Off,
            }
        }
    }
}

impl<S> crate::park::MessageBoundary for FramingObserver<S> {
    /// Between HTTP/1 requests: at least one head seen, the last message (head and body) read
    /// whole, no byte of the next one read. Never once observing stopped (HTTP/2, upgrades,
    /// framing hyper will refuse).
    fn at_message_start(&self) -> bool {
        self.heads > 0 && matches!(&self.state, State::Head(buf) if buf.is_empty())
    }

    fn may_reach_message_start(&self) -> bool {
        !matches!(self.state, State::Off)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

impl<S: AsyncRead + Unpin> AsyncRead for FramingObserver<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &poll
            && !matches!(this.state, State::Off)
        {
            this.feed(&buf.filled()[before..]);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FramingObserver<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> bool {
        let conn = Arc::new(ConnInfo::new(
            ([127, 0, 0, 1], 1).into(),
            "http",
            http::HeaderValue::from_static("80"),
        ));
        let mut o = FramingObserver::new((), conn.clone());
        for c in chunks {
            o.feed(c);
        }
        conn.ambiguous_framing.load(Ordering::Relaxed)
    }

    #[test]
    fn flags_cl_and_te_in_either_order_and_split_reads() {
        assert!(run(&[b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"]));
        assert!(run(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: a\r\nContent-Length: 3\r",
            b"\n\r\n"
        ]));
    }

    #[test]
    fn follows_bodies_to_the_next_head() {
        // A CL body whose bytes look like a head must not be read as one.
        let body = b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let head = format!(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        assert!(!run(&[
            head.as_bytes(),
            body,
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        ]));
        // Chunked body with extensions and trailers, then a smuggling head.
        assert!(run(&[
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nabcd\r\n0\r\nT: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ]));
        assert!(!run(&[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n"
        ]));
    }

    #[test]
    fn flags_repeated_lengths_and_odd_codings() {
        assert!(run(&[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"
        ]));
        assert!(run(&[
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"
        ]));
        assert!(run(&[
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n"
        ]));
        assert!(run(&[b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"]));
        assert!(!run(&[
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n"
        ]));
    }

    #[test]
    fn stops_on_h2_preface() {
        assert!(!run(&[
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n"
        ]));
    }
}
