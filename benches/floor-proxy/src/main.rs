//! `floor-proxy`: how little a Tokio HTTP/1.1 reverse proxy can cost per request on this machine.
//!
//! The load benchmark compares Weir (hyper + tokio) with nginx. Both spend most of each request in
//! the kernel's loopback TCP path, which no user-space change removes. This program measures the
//! rest: it makes the same reads and writes per request as nginx and Weir (read the request,
//! write it upstream, read the response, write it back) and, in user space, only what a proxy
//! cannot skip: parse both heads with `httparse`, drop hop-by-hop headers, add
//! `x-forwarded-for`, keep upstream connections alive in a pool. No routing, no timeouts, no metrics, no hardening
//! beyond refusing what it does not handle. It is a measuring instrument for `benches/README.md`,
//! never a gateway.
//!
//! Handles: `GET` without a body; final responses framed by `Content-Length` (or 204/304).
//! Anything else (other methods, 1xx, chunked or close-delimited bodies) closes the connection.
//! `Connection: close` and HTTP/1.0 are honoured on both sides: such a connection is not reused.
//!
//! Usage: `floor-proxy --listen 127.0.0.1:18083 --upstream 127.0.0.1:18000`

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Headers not forwarded, lower-case: the list Weir strips (`gateway/src/proxy/hygiene.rs`,
/// RFC 9110 §7.6.1 plus the proxy authentication pair), so both do the same work here.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Idle upstream connections, newest last (the runtime is single-threaded: no lock).
#[derive(Default)]
struct Pool(RefCell<Vec<TcpStream>>);

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Appends one `name: value` header line.
fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether a `Connection` header value asks to close.
fn says_close(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads into `buf` until `parse` finds a complete head (parsing it once); `None` at a clean
/// end of stream before any byte of a new head.
async fn read_head<T>(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    mut parse: impl FnMut(&[u8]) -> Result<Option<T>, httparse::Error>,
) -> io::Result<Option<T>> {
    loop {
        if !buf.is_empty() {
            match parse(buf) {
                Ok(Some(v)) => return Ok(Some(v)),
                Ok(None) => {}
                Err(e) => return Err(bad(&e.to_string())),
            }
        }
        if buf.len() >= 64 * 1024 {
            return Err(bad("head too large"));
        }
        buf.reserve(8192);
        if s.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(bad("closed mid-head"))
            };
        }
    }
}

/// Writes the upstream request for the head at the start of `inbuf` into `out`; returns the
/// head's length and whether the client closes after this exchange, `None` while incomplete.
fn build_request(
    inbuf: &[u8],
    peer: &str,
    out: &mut Vec<u8>,
) -> Result<Option<(usize, bool)>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(inbuf)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    // Only GET: a HEAD response's Content-Length describes no bytes, other methods carry bodies.
    if req.method != Some("GET") {
        return Err(httparse::Error::Token);
    }
    let mut close = req.version == Some(0);
    out.clear();
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        let has_body = (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0")
            || h.name.eq_ignore_ascii_case("transfer-encoding");
        if has_body {
            return Err(httparse::Error::Status);
        }
        if is_hop_by_hop(h.name) {
            if h.name.eq_ignore_ascii_case("connection") && says_close(h.value) {
                close = true;
            }
            continue;
        }
        push_header(out, h.name.as_bytes(), h.value);
    }
    push_header(out, b"x-forwarded-for", peer.as_bytes());
    out.extend_from_slice(b"\r\n");
    Ok(Some((n, close)))
}

/// A parsed upstream response head.
struct Head {
    len: usize,
    body: usize,
    /// The upstream keeps the connection open after this response.
    reusable: bool,
}

/// Writes the client response head for the upstream head at the start of `rbuf` into `out`.
fn build_response(rbuf: &[u8], out: &mut Vec<u8>) -> Result<Option<Head>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(rbuf)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let code = resp.code.unwrap_or(502);
    // An interim response would need another head read before the final one: out of scope.
    if code < 200 {
        return Err(httparse::Error::Status);
    }
    let mut body = None;
    let mut reusable = resp.version == Some(1);
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    // A status code has three digits (httparse checks).
    out.extend_from_slice(&[
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]);
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or(httparse::Error::HeaderValue)?;
            body = Some(len);
        } else if is_hop_by_hop(h.name) {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(httparse::Error::HeaderValue);
            }
            if h.name.eq_ignore_ascii_case("connection") && says_close(h.value) {
                reusable = false;
            }
            continue;
        }
        push_header(out, h.name.as_bytes(), h.value);
    }
    out.extend_from_slice(b"\r\n");
    let body = match (body, code == 204 || code == 304) {
        (_, true) => 0,
        (Some(len), false) => len,
        // Close-delimited bodies are out of scope.
        (None, false) => return Err(httparse::Error::HeaderValue),
    };
    Ok(Some(Head {
        len: n,
        body,
        reusable,
    }))
}

/// One client connection: requests in sequence, each over a pooled upstream connection.
async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    upstream: SocketAddr,
    pool: Rc<Pool>,
) -> io::Result<()> {
    let peer = peer.ip().to_string();
    let mut inbuf = Vec::with_capacity(8192);
    let mut reqbuf = Vec::with_capacity(8192);
    let mut rbuf = Vec::with_capacity(16384);
    let mut out = Vec::with_capacity(16384);
    loop {
        let head = read_head(&mut client, &mut inbuf, |b| {
            build_request(b, &peer, &mut reqbuf)
        })
        .await?;
        let Some((n, client_closes)) = head else {
            return Ok(());
        };
        inbuf.drain(..n);

        let taken = pool.0.borrow_mut().pop();
        let mut up = match taken {
            Some(c) => c,
            None => {
                let c = TcpStream::connect(upstream).await?;
                c.set_nodelay(true)?;
                c
            }
        };
        up.write_all(&reqbuf).await?;
        rbuf.clear();
        let head = read_head(&mut up, &mut rbuf, |b| build_response(b, &mut out))
            .await?
            .ok_or_else(|| bad("upstream closed"))?;
        let end = head.len + head.body;
        while rbuf.len() < end {
            rbuf.reserve(end - rbuf.len());
            if up.read_buf(&mut rbuf).await? == 0 {
                return Err(bad("upstream closed mid-body"));
            }
        }
        // Reused only if nothing beyond this response was read and the upstream keeps it open.
        if head.reusable && rbuf.len() == end {
            pool.0.borrow_mut().push(up);
        }
        out.extend_from_slice(&rbuf[head.len..end]);
        client.write_all(&out).await?;
        if client_closes {
            return Ok(());
        }
    }
}

fn parse_args() -> Result<(SocketAddr, SocketAddr), String> {
    let (mut listen, mut upstream) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let v = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        let addr = v.parse().map_err(|e| format!("{arg} {v}: {e}"))?;
        match arg.as_str() {
            "--listen" => listen = Some(addr),
            "--upstream" => upstream = Some(addr),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    match (listen, upstream) {
        (Some(l), Some(u)) => Ok((l, u)),
        _ => Err("usage: floor-proxy --listen ADDR:PORT --upstream ADDR:PORT".into()),
    }
}

fn main() -> ExitCode {
    let (listen, upstream) = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    let r: io::Result<()> = local.block_on(&rt, async move {
        let listener = TcpListener::bind(listen).await?;
        let pool = Rc::new(Pool::default());
        loop {
            let (c, peer) = listener.accept().await?;
            c.set_nodelay(true)?;
            let pool = pool.clone();
            tokio::task::spawn_local(async move {
                // A failed exchange only closes that client connection.
                let _ = serve(c, peer, upstream, pool).await;
            });
        }
    });
    if let Err(e) = r {
        eprintln!("floor-proxy: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
