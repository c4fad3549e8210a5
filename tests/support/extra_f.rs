//! Helpers for the hostile-input suite (`tests/hostile_*.rs`): an upstream that logs every
//! request path and can stream huge bodies while counting what it produced, raw-TCP upstreams
//! that misbehave on purpose, a raw HTTP/2 frame client (for frames the `h2` crate refuses to
//! send), and this process's resident memory.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------

/// Resident set size of this process in KiB (`VmRSS` of `/proc/self/status`). The gateways of
/// these tests run in-process, so this includes them.
pub fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("no VmRSS line in /proc/self/status")
}

// ---------------------------------------------------------------------------------------------
// An upstream that logs paths
// ---------------------------------------------------------------------------------------------

/// An HTTP/1 + h2c upstream that records the path (with query) of every request it receives and
/// answers `{"path", "uri", "method", "body_len"}`. `GET /big/N` instead streams `N` bytes in
/// 64 KiB chunks, counting in `produced` how many the gateway actually pulled from it.
pub struct PathLogUpstream {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    pub produced: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

type AnyBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

impl PathLogUpstream {
    pub async fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let produced = Arc::new(AtomicU64::new(0));
        let (lg, pr) = (log.clone(), produced.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let (lg, pr) = (lg.clone(), pr.clone());
                conns.spawn(async move {
                    let svc = service_fn(move |req: http::Request<Incoming>| {
                        let (lg, pr) = (lg.clone(), pr.clone());
                        async move { Ok::<_, Infallible>(path_log_answer(req, &lg, &pr).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            log,
            produced,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every path (with query) received so far, in arrival order.
    pub fn paths(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// How many received paths contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.paths().iter().filter(|p| p.contains(needle)).count()
    }
}

impl Drop for PathLogUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn path_log_answer(
    req: http::Request<Incoming>,
    log: &Mutex<Vec<String>>,
    produced: &Arc<AtomicU64>,
) -> http::Response<AnyBody> {
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    log.lock().unwrap().push(pq.clone());
    if let Some(n) = req
        .uri()
        .path()
        .strip_prefix("/big/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        const CHUNK: u64 = 64 * 1024;
        let produced = produced.clone();
        let chunk = Bytes::from(vec![b'b'; CHUNK as usize]);
        let frames = futures::stream::unfold(0u64, move |sent| {
            let (produced, chunk) = (produced.clone(), chunk.clone());
            async move {
                if sent >= n {
                    return None;
                }
                let len = CHUNK.min(n - sent);
                produced.fetch_add(len, Ordering::SeqCst);
                Some((
                    Ok::<_, Infallible>(Frame::data(chunk.slice(..len as usize))),
                    sent + len,
                ))
            }
        });
        let mut res = http::Response::new(StreamBody::new(frames).boxed());
        res.headers_mut()
            .insert("content-length", http::HeaderValue::from(n));
        return res;
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let body_len = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len() as i64,
        Err(_) => -1,
    };
    let doc =
        serde_json::json!({ "path": path, "uri": pq, "method": method, "body_len": body_len });
    let mut res = http::Response::new(Full::new(Bytes::from(doc.to_string())).boxed());
    res.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    res
}

// ---------------------------------------------------------------------------------------------
// Misbehaving upstreams (raw TCP)
// ---------------------------------------------------------------------------------------------

/// What a [`FakeUpstream`] does after reading a request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehavior {
    /// `200` with `Content-Length: 100000`, 1000 bytes of body, then a TCP reset.
    ResetMidBody,
    /// A status line that is not HTTP at all, then close.
    GarbageStatusLine,
    /// `200` chunked whose first chunk size is not hex, then close.
    BadChunked,
    /// Reads the request and never answers (keeps the connection open).
    NeverAnswer,
    /// `200` with `Content-Length: 1000`, 10 bytes of body, then silence (connection open).
    HeadThenHang,
    /// An HTTP/1.0 server: `HTTP/1.0 200 OK`, no length, the body `old`, then close.
    Http10,
}

/// A raw TCP upstream that misbehaves as told; counts the request heads it read.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// Bytes of body a [`Misbehavior::HeadThenHang`] upstream sends before stalling.
pub const HANG_AFTER: usize = 10;

impl FakeUpstream {
    pub async fn start(how: Misbehavior) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let r = requests.clone();
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every connection too.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let r = r.clone();
                conns.spawn(async move { misbehave(s, how, &r).await });
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn misbehave(mut s: TcpStream, how: Misbehavior, requests: &AtomicUsize) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 1024 * 1024 {
            return;
        }
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let hold = Duration::from_secs(120);
    match how {
        Misbehavior::ResetMidBody => {
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
            out.extend(std::iter::repeat_n(b'r', 1000));
            let _ = s.write_all(&out).await;
            let _ = s.flush().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            // Linger 0: close() sends RST instead of FIN (and, with a zero timeout, never blocks,
            // which is why tokio deprecated the general method).
            #[allow(deprecated)]
            let _ = s.set_linger(Some(Duration::ZERO));
            drop(s);
        }
        Misbehavior::Http10 => {
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nold").await;
        }
        Misbehavior::GarbageStatusLine => {
            let _ = s
                .write_all(b"HTPT/9.9 banana split\r\nwhat: ever\r\n\r\n")
                .await;
        }
        Misbehavior::BadChunked => {
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
                )
                .await;
        }
        Misbehavior::NeverAnswer => {
            tokio::time::sleep(hold).await;
        }
        Misbehavior::HeadThenHang => {
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
            out.extend(std::iter::repeat_n(b'h', HANG_AFTER));
            let _ = s.write_all(&out).await;
            tokio::time::sleep(hold).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/2
// ---------------------------------------------------------------------------------------------

/// Frame types (RFC 9113 §6).
pub mod ftype {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
}

/// Error codes (RFC 9113 §7).
pub mod reason {
    pub const NO_ERROR: u32 = 0x0;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const CANCEL: u32 = 0x8;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
}

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

/// One frame read from the server.
#[derive(Debug, Clone)]
pub struct H2Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl H2Frame {
    /// Error code of a RST_STREAM.
    pub fn rst_code(&self) -> Option<u32> {
        (self.kind == ftype::RST_STREAM && self.payload.len() >= 4)
            .then(|| u32::from_be_bytes(self.payload[..4].try_into().unwrap()))
    }

    /// Error code of a GOAWAY.
    pub fn goaway_code(&self) -> Option<u32> {
        (self.kind == ftype::GOAWAY && self.payload.len() >= 8)
            .then(|| u32::from_be_bytes(self.payload[4..8].try_into().unwrap()))
    }

    /// The `:status` of a HEADERS frame, when the server encoded it as the first field in a way
    /// this client decodes: a static-table index (200, 204, 206, 304, 400, 404, 500) or a literal
    /// with the static `:status` name (plain or Huffman-coded digits).
    pub fn status(&self) -> Option<u16> {
        if self.kind != ftype::HEADERS {
            return None;
        }
        let b = &self.payload;
        let first = *b.first()?;
        const STATIC: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];
        if first & 0x80 != 0 {
            let idx = usize::from(first & 0x7f);
            return (8..=14).contains(&idx).then(|| STATIC[idx - 8]);
        }
        // Literal with indexed name 8 (`:status`): with incremental indexing (0x48), without
        // indexing (0x08) or never indexed (0x18).
        if !matches!(first, 0x48 | 0x08 | 0x18) {
            return None;
        }
        let len_byte = *b.get(1)?;
        let len = usize::from(len_byte & 0x7f);
        let raw = b.get(2..2 + len)?;
        let text = if len_byte & 0x80 != 0 {
            huffman_digits(raw)?
        } else {
            String::from_utf8(raw.to_vec()).ok()?
        };
        text.parse().ok()
    }
}

/// Decodes a Huffman-coded string made only of ASCII digits (RFC 7541 Appendix B: `0`–`2` are
/// 5-bit codes `00000`–`00010`, `3`–`9` are 6-bit codes `011001`–`011111`), which is all a
/// `:status` value needs.
fn huffman_digits(raw: &[u8]) -> Option<String> {
    let bits: Vec<u8> = raw
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut i = 0;
    while i < bits.len() {
        // Padding: the rest is all ones (a prefix of EOS) and shorter than 8 bits.
        if bits.len() - i < 8 && bits[i..].iter().all(|&b| b == 1) {
            break;
        }
        let take = |n: usize| -> Option<u8> {
            bits.get(i..i + n)
                .map(|s| s.iter().fold(0u8, |acc, &b| (acc << 1) | b))
        };
        let five = take(5)?;
        if five <= 0b00010 {
            out.push(char::from(b'0' + five));
            i += 5;
            continue;
        }
        let six = take(6)?;
        if (0b011001..=0b011111).contains(&six) {
            out.push(char::from(b'3' + (six - 0b011001)));
            i += 6;
            continue;
        }
        return None;
    }
    Some(out)
}

fn hpack_int(prefix_bits: u8, first: u8, mut n: usize, out: &mut Vec<u8>) {
    let max = (1usize << prefix_bits) - 1;
    if n < max {
        out.push(first | n as u8);
        return;
    }
    out.push(first | max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// HPACK block of literal fields without indexing, new names, no Huffman coding: any byte goes
/// on the wire exactly as given (which is the point: CR, LF, NUL, upper case...).
pub fn hpack_literal(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(7, 0, name.len(), &mut out);
        out.extend_from_slice(name);
        hpack_int(7, 0, value.len(), &mut out);
        out.extend_from_slice(value);
    }
    out
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A HEADERS frame (END_HEADERS set) carrying `fields` as plain literals.
pub fn headers_frame(stream: u32, fields: &[(&[u8], &[u8])], end_stream: bool) -> Vec<u8> {
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    frame(ftype::HEADERS, flags, stream, &hpack_literal(fields))
}

/// A DATA frame.
pub fn data_frame(stream: u32, data: &[u8], end_stream: bool) -> Vec<u8> {
    frame(
        ftype::DATA,
        if end_stream { END_STREAM } else { 0 },
        stream,
        data,
    )
}

/// A RST_STREAM frame.
pub fn rst_frame(stream: u32, code: u32) -> Vec<u8> {
    frame(ftype::RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// The request pseudo-headers of a GET on `path`, followed by `extra`.
pub fn get_fields<'a>(path: &'a [u8], extra: &[(&'a [u8], &'a [u8])]) -> Vec<(&'a [u8], &'a [u8])> {
    let mut f: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"example.com"),
        (b":path", path),
    ];
    f.extend_from_slice(extra);
    f
}

/// A prior-knowledge (h2c) connection that writes hand-made frames and reads frames back. It
/// acknowledges the server's SETTINGS and answers PINGs while reading.
pub struct RawH2 {
    s: TcpStream,
    buf: Vec<u8>,
    /// Whether the server closed the connection (EOF or reset) during a read.
    pub closed: bool,
}

impl RawH2 {
    /// Connects, sends the preface and an empty SETTINGS frame.
    pub async fn connect(addr: SocketAddr) -> Self {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(ftype::SETTINGS, 0, 0, &[]));
        s.write_all(&hello).await.unwrap();
        Self {
            s,
            buf: Vec::new(),
            closed: false,
        }
    }

    /// Writes raw bytes; an error (the server closed) is returned, not a panic.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes).await
    }

    /// Reads frames until `done` returns true for one, the server closes, or `idle` passes
    /// without a new frame. Returns every frame read (SETTINGS and PINGs included).
    pub async fn read_until(
        &mut self,
        idle: Duration,
        mut done: impl FnMut(&H2Frame) -> bool,
    ) -> Vec<H2Frame> {
        let mut out = Vec::new();
        let mut tmp = vec![0u8; 64 * 1024];
        loop {
            while let Some(f) = self.take_frame() {
                if f.kind == ftype::SETTINGS && f.flags & ACK == 0 {
                    let _ = self.s.write_all(&frame(ftype::SETTINGS, ACK, 0, &[])).await;
                }
                if f.kind == ftype::PING && f.flags & ACK == 0 {
                    let _ = self
                        .s
                        .write_all(&frame(ftype::PING, ACK, 0, &f.payload))
                        .await;
                }
                let stop = done(&f);
                out.push(f);
                if stop {
                    return out;
                }
            }
            if self.closed {
                return out;
            }
            match tokio::time::timeout(idle, self.s.read(&mut tmp)).await {
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&tmp[..n]),
                Err(_) => return out,
            }
        }
    }

    fn take_frame(&mut self) -> Option<H2Frame> {
        if self.buf.len() < 9 {
            return None;
        }
        let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
        if self.buf.len() < 9 + len {
            return None;
        }
        let f = H2Frame {
            kind: self.buf[3],
            flags: self.buf[4],
            stream: u32::from_be_bytes(self.buf[5..9].try_into().unwrap()) & 0x7fff_ffff,
            payload: self.buf[9..9 + len].to_vec(),
        };
        self.buf.drain(..9 + len);
        Some(f)
    }

    /// Reads until stream `id` ends (RST_STREAM, or HEADERS/DATA with END_STREAM), a GOAWAY
    /// arrives, or `idle` passes; returns what happened to the stream.
    pub async fn outcome(&mut self, id: u32, idle: Duration) -> StreamOutcome {
        let frames = self
            .read_until(idle, |f| {
                f.kind == ftype::GOAWAY
                    || (f.stream == id
                        && (f.kind == ftype::RST_STREAM
                            || (matches!(f.kind, ftype::HEADERS | ftype::DATA)
                                && f.flags & END_STREAM != 0)))
            })
            .await;
        let mut o = StreamOutcome::default();
        for f in frames {
            if f.stream == id {
                if let Some(c) = f.rst_code() {
                    o.reset = Some(c);
                }
                if f.kind == ftype::HEADERS && o.status.is_none() {
                    o.headers = true;
                    o.status = f.status();
                }
                if f.kind == ftype::DATA {
                    o.data.extend_from_slice(&f.payload);
                }
            }
            if let Some(c) = f.goaway_code() {
                o.goaway = Some(c);
            }
        }
        o.closed = self.closed;
        o
    }
}

/// What became of one stream on a [`RawH2`] connection.
#[derive(Debug, Default, Clone)]
pub struct StreamOutcome {
    /// A response HEADERS frame arrived (its status, if decodable, is in `status`).
    pub headers: bool,
    pub status: Option<u16>,
    pub data: Vec<u8>,
    pub reset: Option<u32>,
    pub goaway: Option<u32>,
    pub closed: bool,
}

// ---------------------------------------------------------------------------------------------
// A certificate a TLS scanner accepts
// ---------------------------------------------------------------------------------------------

/// Civil date (year, month, day) of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

/// Writes `ca.pem`, `server.crt` and `server.key` into `dir`: a test CA and a `localhost` /
/// `127.0.0.1` server certificate shaped like a public one, so a scanner (testssl.sh) judges the
/// gateway's TLS and not the test's certificate: valid from yesterday for 90 days, with a CRL
/// distribution point, digitalSignature key usage and the serverAuth EKU.
pub fn write_scan_grade_cert(dir: &std::path::Path) {
    let today = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400) as i64;
    let date = |offset: i64| {
        let (y, m, d) = civil_from_days(today + offset);
        rcgen::date_time_ymd(y, m, d)
    };
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Weir scan CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    ca.not_before = date(-1);
    ca.not_after = date(365);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let issuer = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();

    let mut leaf =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    leaf.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    leaf.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
        uris: vec!["http://crl.weir.test/ca.crl".to_string()],
    }];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = date(-1);
    leaf.not_after = date(90);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), issuer.pem()).unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}
