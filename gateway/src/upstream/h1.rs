//! HTTP/1.1 exchanges run in the task of the request they carry.
//!
//! hyper's client drives each connection from a task of its own and passes the request, the
//! response head and the body frames through channels, so each proxied request wakes a second
//! task and back; callgrind put that client at about a quarter of the plain proxy's user-space
//! instructions. A request without a body to a plain-HTTP target needs none of it: [`send`]
//! writes the head and reads the response head, and [`H1Body`] reads the body from the socket
//! as the client side asks for it. Requests with a body (whose upload must run alongside the
//! response), protocol switches and TLS targets keep hyper's client.
//!
//! Responses are framed as RFC 9112 §6.3 says, strictly: `Transfer-Encoding` with
//! `Content-Length`, differing lengths, `chunked` that is not the final coding, or a coding in
//! an HTTP/1.0 response are refused (a 502), because another hop could read the message
//! differently. A connection goes back to its pool only when its response ended exactly where
//! its framing said, with no stray bytes after it, in HTTP/1.1 without `Connection: close`.

use super::pool::{Pool, Reusable};
use crate::body::{BoxError, ProxyBody};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http::{header, response};
use http_body::{Frame, SizeHint};
use smallvec::SmallVec;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head (and trailer section) read; hyper's client allows ~400 KiB, nginx's
/// `proxy_buffer_size` 4–8 KiB.
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a response head, as hyper's default.
const MAX_HEADERS: usize = 100;
/// Room made in the read buffer before each read.
const READ_SIZE: usize = 16 * 1024;
/// Longest chunk-size line (size and extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Most interim (1xx) responses skipped before the final one.
const MAX_INFORMATIONAL: usize = 16;

/// A keep-alive connection to a plain-HTTP target.
pub struct Conn {
    io: TcpStream,
    /// Bytes read and not yet consumed; empty between exchanges.
    rbuf: BytesMut,
    /// The last request head written, kept for its allocation.
    wbuf: Vec<u8>,
}

impl Conn {
    pub fn new(io: TcpStream) -> Self {
        Self {
            io,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
        }
    }
}

impl Reusable for Conn {
    /// An idle connection has nothing to read: readable means closed by the peer, or sending
    /// bytes no request asked for. tokio clears read readiness after a short read, so the usual
    /// answer comes without a system call; a stale readiness is settled by one read attempt.
    /// A task out of its coop budget sees `Pending` and takes a closed connection for open;
    /// [`Error::is_stale`] covers that, as it covers a close racing the request.
    fn is_closed(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                !matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write the request: {0}")]
    Write(#[source] io::Error),
    #[error("connection closed before a response")]
    ClosedEarly,
    #[error("connection reset before a response: {0}")]
    ResetEarly(#[source] io::Error),
    #[error("connection closed in the response head")]
    ClosedInHead,
    #[error("connection closed before the end of the response body")]
    ClosedInBody,
    #[error("cannot read the response: {0}")]
    Read(#[source] io::Error),
    #[error("invalid response head: {0}")]
    Parse(#[from] httparse::Error),
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid response: {0}")]
    Invalid(&'static str),
}

impl Error {
    /// The request head was not written in full: the upstream cannot have acted on it.
    pub fn is_unsent(&self) -> bool {
        matches!(self, Error::Write(_))
    }

    /// Nothing came back on a reused connection before it failed: the upstream most likely
    /// closed it while it was idle, without reading the request.
    pub fn is_stale(&self) -> bool {
        matches!(
            self,
            Error::Write(_) | Error::ClosedEarly | Error::ResetEarly(_)
        )
    }
}

/// Whether `req` can be sent by [`send`]: no body and no header announcing one, and no protocol
/// switch or tunnel.
pub fn eligible(req: &Request<ProxyBody>) -> bool {
    use http_body::Body as _;
    let h = req.headers();
    req.body().is_end_stream()
        && req.method() != Method::CONNECT
        && !h.contains_key(header::UPGRADE)
        && !h.contains_key(header::TRANSFER_ENCODING)
        && h.get_all(header::CONTENT_LENGTH)
            .iter()
            .all(|v| v.as_bytes() == b"0")
}

/// Writes the request line and header fields of `req` (origin-form target) into `out`. The
/// fields go as they are: like hyper's client, no `Content-Length: 0` is added to a bodyless
/// POST, so both clients send the same request.
fn encode(req: &Request<ProxyBody>, out: &mut Vec<u8>) {
    out.clear();
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Sends `req` (see [`eligible`]) on `conn` and reads the final response head. The body reads
/// from the connection, and gives it back to `pool` at its end if the response allows reuse.
pub async fn send(
    mut conn: Conn,
    req: &Request<ProxyBody>,
    pool: &Arc<Pool<Conn>>,
) -> Result<Response<H1Body>, Error> {
    let mut wbuf = std::mem::take(&mut conn.wbuf);
    encode(req, &mut wbuf);
    let written = conn.io.write_all(&wbuf).await;
    conn.wbuf = wbuf;
    written.map_err(Error::Write)?;
    let mut received = false;
    let mut informational = 0;
    loop {
        let (parts, state, keep_alive) = read_head(&mut conn, &mut received).await?;
        if parts.status.is_informational() {
            // 100 Continue, 102, 103 Early Hints: interim answers, passed over as hyper does.
            if parts.status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(Error::Invalid("101 to a request that asked for no upgrade"));
            }
            informational += 1;
            if informational > MAX_INFORMATIONAL {
                return Err(Error::Invalid("too many 1xx responses"));
            }
            continue;
        }
        let head = *req.method() == Method::HEAD;
        let no_content =
            parts.status == StatusCode::NO_CONTENT || parts.status == StatusCode::NOT_MODIFIED;
        // A 204 or 304 that declares a body may send it anyway, after this head: its bytes
        // would be read as the next response's head, so the connection is not reused.
        let declares_body = matches!(state, State::ChunkSize | State::Length(1..));
        let (state, keep_alive) = match state {
            _ if !head && no_content && declares_body => (State::Length(0), false),
            // Without a body, a close-delimited framing does not end the connection.
            _ if head || no_content => (State::Length(0), keep_alive),
            State::Close => (State::Close, false),
            s => (s, keep_alive),
        };
        let body = H1Body::new(conn, state, keep_alive.then(|| pool.clone()));
        return Ok(Response::from_parts(parts, body));
    }
}

/// Reads one response head (possibly an interim one) from `conn`.
async fn read_head(
    conn: &mut Conn,
    received: &mut bool,
) -> Result<(response::Parts, State, bool), Error> {
    loop {
        if !conn.rbuf.is_empty() {
            if let Some(head) = parse_head(&mut conn.rbuf)? {
                return Ok(head);
            }
            if conn.rbuf.len() >= MAX_HEAD {
                return Err(Error::HeadTooLarge);
            }
        }
        // Never read past the limit (the buffer is empty when an exchange starts), so a head
        // that ends beyond it is refused, not accepted.
        let room = MAX_HEAD.saturating_sub(conn.rbuf.len()).min(READ_SIZE);
        conn.rbuf.reserve(room);
        let limited = &mut (&mut conn.rbuf).limit(room);
        match conn.io.read_buf(limited).await {
            Ok(0) if !*received => return Err(Error::ClosedEarly),
            Ok(0) => return Err(Error::ClosedInHead),
            Ok(_) => *received = true,
            Err(e) if !*received && is_reset(&e) => return Err(Error::ResetEarly(e)),
            Err(e) => return Err(Error::Read(e)),
        }
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Parses a complete head at the start of `rbuf` and removes it; `None` if more bytes are needed.
/// Header values share the head's buffer instead of being copied one by one.
fn parse_head(rbuf: &mut BytesMut) -> Result<Option<(response::Parts, State, bool)>, Error> {
    // Neither buffer is zeroed: a 100-entry array was half of this function's instructions.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut spans: SmallVec<[(usize, usize, usize, usize); 24]> = SmallVec::new();
    let (len, status, version, reason) = {
        let mut res = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, rbuf, &mut slots)?
        {
            httparse::Status::Partial => return Ok(None),
            httparse::Status::Complete(len) if len > MAX_HEAD => return Err(Error::HeadTooLarge),
            httparse::Status::Complete(len) => len,
        };
        let base = rbuf.as_ptr() as usize;
        for h in res.headers.iter() {
            let name = (h.name.as_ptr() as usize).wrapping_sub(base);
            let value = (h.value.as_ptr() as usize).wrapping_sub(base);
            spans.push((
                name,
                name.saturating_add(h.name.len()),
                value,
                value.saturating_add(h.value.len()),
            ));
        }
        let status = res.code.and_then(|c| StatusCode::from_u16(c).ok());
        let canonical = status.and_then(|s| s.canonical_reason());
        // hyper's server writes a non-canonical reason phrase back from this extension.
        let reason = match res.reason {
            Some(r) if !r.is_empty() && Some(r) != canonical => {
                hyper::ext::ReasonPhrase::try_from(r.as_bytes()).ok()
            }
            _ => None,
        };
        (len, status, res.version, reason)
    };
    let head = rbuf.split_to(len).freeze();
    let status = status.ok_or(Error::Invalid("invalid status code"))?;
    let version = match version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut seen = Framing::default();
    for &(ns, ne, vs, ve) in &spans {
        let name = head
            .get(ns..ne)
            .and_then(|n| HeaderName::from_bytes(n).ok())
            .ok_or(Error::Invalid("invalid header name"))?;
        if vs > ve || ve > head.len() {
            return Err(Error::Invalid("invalid header value"));
        }
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| Error::Invalid("invalid header value"))?;
        seen.connection |= name == header::CONNECTION;
        seen.transfer_encoding |= name == header::TRANSFER_ENCODING;
        seen.content_length |= name == header::CONTENT_LENGTH;
        headers.append(name, value);
    }
    let (state, keep_alive) = framing(&headers, version, seen)?;
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    if let Some(r) = reason {
        parts.extensions.insert(r);
    }
    Ok(Some((parts, state, keep_alive)))
}

/// Runs `f` on each comma-separated token of every `name` field.
fn each_token(
    headers: &HeaderMap,
    name: HeaderName,
    mut f: impl FnMut(&str) -> Result<(), Error>,
) -> Result<(), Error> {
    for v in headers.get_all(name) {
        let s = v
            .to_str()
            .map_err(|_| Error::Invalid("non-ASCII framing header"))?;
        for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            f(t)?;
        }
    }
    Ok(())
}

/// Which framing fields a head has, noted while its fields are collected (a lookup for each
/// costs a hash).
#[derive(Default, Clone, Copy)]
struct Framing {
    connection: bool,
    transfer_encoding: bool,
    content_length: bool,
}

/// The body framing of a response with a body, and whether the connection persists after it.
fn framing(headers: &HeaderMap, version: Version, seen: Framing) -> Result<(State, bool), Error> {
    let mut close = version != Version::HTTP_11;
    if seen.connection {
        each_token(headers, header::CONNECTION, |t| {
            close |= t.eq_ignore_ascii_case("close");
            Ok(())
        })?;
    }
    // HTTP/1.1 without `Connection: close`.
    let keep_alive = !close;
    if seen.transfer_encoding {
        if seen.content_length {
            return Err(Error::Invalid("both Transfer-Encoding and Content-Length"));
        }
        if version != Version::HTTP_11 {
            return Err(Error::Invalid("Transfer-Encoding in an HTTP/1.0 response"));
        }
        let (mut chunked, mut last_chunked) = (0, false);
        each_token(headers, header::TRANSFER_ENCODING, |t| {
            last_chunked = t.eq_ignore_ascii_case("chunked");
            chunked += usize::from(last_chunked);
            Ok(())
        })?;
        return match (chunked, last_chunked) {
            (1, true) => Ok((State::ChunkSize, keep_alive)),
            // Other codings without chunked: the body runs to the end of the connection.
            (0, _) => Ok((State::Close, keep_alive)),
            _ => Err(Error::Invalid("chunked is not the final transfer coding")),
        };
    }
    if !seen.content_length {
        return Ok((State::Close, keep_alive));
    }
    let mut len: Option<u64> = None;
    each_token(headers, header::CONTENT_LENGTH, |t| {
        let n = (t.len() <= 19 && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse::<u64>().ok())
            .flatten()
            .ok_or(Error::Invalid("invalid Content-Length"))?;
        if len.is_some_and(|l| l != n) {
            return Err(Error::Invalid("differing Content-Length values"));
        }
        len = Some(n);
        Ok(())
    })?;
    len.map(|n| (State::Length(n), keep_alive))
        .ok_or(Error::Invalid("invalid Content-Length"))
}

/// Where the body reader stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Bytes left of a `Content-Length` body.
    Length(u64),
    /// Before a chunk-size line.
    ChunkSize,
    /// Bytes left of the current chunk.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// The trailer section after the last chunk.
    Trailers,
    /// Read until the upstream closes.
    Close,
    /// Ended (or failed): the connection is pooled or gone.
    Done,
}

/// A response body read from its connection as it is polled. At its end the connection goes
/// back to its pool; dropped early, or on an error, the connection is closed.
pub struct H1Body {
    conn: Option<Conn>,
    state: State,
    pool: Option<Arc<Pool<Conn>>>,
}

/// What one step of the reader found.
enum Step {
    Frame(Frame<Bytes>),
    /// Parsed framing bytes; go on.
    Continue,
    /// More bytes are needed.
    Fill,
    End,
    Fail(Error),
}

impl H1Body {
    fn new(conn: Conn, state: State, pool: Option<Arc<Pool<Conn>>>) -> Self {
        let mut body = Self {
            conn: Some(conn),
            state,
            pool,
        };
        if state == State::Length(0) {
            body.finish();
        }
        body
    }

    /// The body ended where its framing said: the connection may carry the next request.
    fn finish(&mut self) {
        self.state = State::Done;
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.take())
            && conn.rbuf.is_empty()
        {
            pool.put(conn);
        }
    }

    fn fail(&mut self) {
        self.state = State::Done;
        self.conn = None;
    }

    /// Decodes what is buffered, without reading.
    fn step(&mut self) -> Step {
        let Some(conn) = self.conn.as_mut() else {
            return Step::End;
        };
        let buf = &mut conn.rbuf;
        match self.state {
            State::Done => Step::End,
            State::Length(0) => {
                self.finish();
                Step::End
            }
            State::Length(rem) | State::ChunkData(rem) => {
                if buf.is_empty() {
                    return Step::Fill;
                }
                let n = usize::try_from(rem).map_or(buf.len(), |r| r.min(buf.len()));
                let data = buf.split_to(n).freeze();
                let left = rem - n as u64;
                self.state = match self.state {
                    State::Length(_) => State::Length(left),
                    _ if left == 0 => State::ChunkEnd,
                    _ => State::ChunkData(left),
                };
                if self.state == State::Length(0) {
                    self.finish();
                }
                Step::Frame(Frame::data(data))
            }
            State::ChunkSize => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((used, size))) => {
                    // httparse reads an empty size as 0 and lets a bare LF into an extension:
                    // both could end the body where another hop would not.
                    let line = buf.get(..used).unwrap_or_default();
                    if !line.first().is_some_and(u8::is_ascii_hexdigit)
                        || memchr::memchr(b'\n', line) != Some(used - 1)
                    {
                        return Step::Fail(Error::Invalid("invalid chunk size line"));
                    }
                    buf.advance(used);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                    Step::Continue
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_LINE => Step::Fill,
                _ => Step::Fail(Error::Invalid("invalid chunk size line")),
            },
            State::ChunkEnd => {
                if buf.len() < 2 {
                    return if buf.first().is_none_or(|b| *b == b'\r') {
                        Step::Fill
                    } else {
                        Step::Fail(Error::Invalid("chunk data not followed by CRLF"))
                    };
                }
                if !buf.starts_with(b"\r\n") {
                    return Step::Fail(Error::Invalid("chunk data not followed by CRLF"));
                }
                buf.advance(2);
                self.state = State::ChunkSize;
                Step::Continue
            }
            State::Trailers => {
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                match httparse::parse_headers(buf, &mut fields) {
                    Ok(httparse::Status::Complete((used, _))) if used > MAX_HEAD => {
                        Step::Fail(Error::HeadTooLarge)
                    }
                    // httparse ends lines at a bare LF too; another hop may not.
                    Ok(httparse::Status::Complete((used, _)))
                        if memchr::memchr_iter(b'\n', buf.get(..used).unwrap_or_default())
                            .any(|i| i == 0 || buf.get(i - 1) != Some(&b'\r')) =>
                    {
                        Step::Fail(Error::Invalid("trailer section line without CRLF"))
                    }
                    Ok(httparse::Status::Complete((used, fields))) => {
                        let mut trailers = HeaderMap::with_capacity(fields.len());
                        for f in fields {
                            let (Ok(n), Ok(v)) = (
                                HeaderName::from_bytes(f.name.as_bytes()),
                                HeaderValue::from_bytes(f.value),
                            ) else {
                                return Step::Fail(Error::Invalid("invalid trailer field"));
                            };
                            trailers.append(n, v);
                        }
                        buf.advance(used);
                        self.finish();
                        if trailers.is_empty() {
                            Step::End
                        } else {
                            Step::Frame(Frame::trailers(trailers))
                        }
                    }
                    Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => Step::Fill,
                    Ok(httparse::Status::Partial) => Step::Fail(Error::HeadTooLarge),
                    Err(e) => Step::Fail(Error::Parse(e)),
                }
            }
            State::Close => {
                if buf.is_empty() {
                    Step::Fill
                } else {
                    Step::Frame(Frame::data(buf.split().freeze()))
                }
            }
        }
    }
}

impl http_body::Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.step() {
                Step::Frame(f) => return Poll::Ready(Some(Ok(f))),
                Step::Continue => {}
                Step::End => return Poll::Ready(None),
                Step::Fail(e) => {
                    this.fail();
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Step::Fill => {
                    let Some(conn) = this.conn.as_mut() else {
                        return Poll::Ready(None);
                    };
                    conn.rbuf.reserve(READ_SIZE);
                    let read =
                        tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.rbuf);
                    match read {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(0)) if this.state == State::Close => {
                            this.fail();
                            return Poll::Ready(None);
                        }
                        Poll::Ready(Ok(0)) => {
                            this.fail();
                            return Poll::Ready(Some(Err(Box::new(Error::ClosedInBody))));
                        }
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(e)) => {
                            this.fail();
                            return Poll::Ready(Some(Err(Box::new(Error::Read(e)))));
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<(response::Parts, State, bool)>, Error> {
        parse_head(&mut BytesMut::from(text))
    }

    fn state(text: &str) -> Result<(State, bool), Error> {
        head(text).map(|h| {
            let (_, s, k) = h.unwrap_or_else(|| panic!("partial head: {text:?}"));
            (s, k)
        })
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let ok = |t: &str| state(t).unwrap_or_else(|e| panic!("{t:?}: {e}"));
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
            (State::Length(5), true)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\ncontent-length: 5\r\n\r\n"),
            (State::Length(5), true)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            (State::ChunkSize, true)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"),
            (State::Close, true)
        );
        assert_eq!(ok("HTTP/1.1 200 OK\r\n\r\n"), (State::Close, true));
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n"),
            (State::Length(0), false)
        );
        assert_eq!(
            ok("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n"),
            (State::Length(2), false)
        );
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n",
        ] {
            assert!(state(bad).is_err(), "accepted {bad:?}");
        }
        assert!(matches!(head("HTTP/1.1 200 OK\r\ncontent-le"), Ok(None)));
    }

    #[test]
    fn heads_over_the_limit_are_refused_even_when_read_whole() {
        let big = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(head(&big), Err(Error::HeadTooLarge)));
        let fits = format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n",
            "a".repeat(MAX_HEAD / 2)
        );
        assert!(matches!(head(&fits), Ok(Some(_))));
    }

    #[test]
    fn repeated_fields_are_kept_in_order_and_the_rest_left() {
        let mut buf = BytesMut::from("HTTP/1.1 204 No Content\r\nx-a: 1\r\nX-A: 2\r\n\r\nnext");
        let (parts, _, _) = parse_head(&mut buf)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!());
        assert_eq!(parts.status, StatusCode::NO_CONTENT);
        let all: Vec<_> = parts.headers.get_all("x-a").iter().collect();
        assert_eq!(all, ["1", "2"]);
        assert_eq!(&buf[..], b"next");
    }
}
