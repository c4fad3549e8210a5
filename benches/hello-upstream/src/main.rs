//! `hello-upstream`: the upstream half of the side-by-side load benchmark (`benches/load/run.sh`).
//!
//! Every request gets `200 OK` with the same fixed body, over HTTP/1.1 keep-alive or h2c (prior
//! knowledge). It runs on a current-thread Tokio runtime because the harness pins it to one CPU:
//! a work-stealing pool would only add cross-thread wake-ups on a single core.
//!
//! Usage: `hello-upstream --listen 127.0.0.1:18000 [--body-bytes 1024]`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Command-line options.
struct Options {
    listen: SocketAddr,
    body_bytes: usize,
}

fn parse_args() -> Result<Options, String> {
    let mut listen = None;
    let mut body_bytes = 1024usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                listen = Some(v.parse().map_err(|e| format!("--listen {v}: {e}"))?);
            }
            "--body-bytes" => {
                let v = value("--body-bytes")?;
                body_bytes = v.parse().map_err(|e| format!("--body-bytes {v}: {e}"))?;
            }
            "-h" | "--help" => {
                return Err("usage: hello-upstream --listen ADDR:PORT [--body-bytes N]".into());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(Options {
        listen: listen.ok_or("--listen ADDR:PORT is required")?,
        body_bytes,
    })
}

/// Answers one request. The request body is drained first so a POST benchmark measures the same
/// work a real upstream does and hyper can keep the connection alive.
async fn hello(req: Request<Incoming>, body: Bytes) -> Result<Response<Full<Bytes>>, Infallible> {
    // A body read error only means the client went away; the reply is then moot.
    let _ = req.into_body().collect().await;
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(resp)
}

async fn serve(opts: Options) -> std::io::Result<()> {
    let listener = TcpListener::bind(opts.listen).await?;
    eprintln!(
        "hello-upstream listening on {} ({} byte body)",
        listener.local_addr()?,
        opts.body_bytes
    );
    let body = Bytes::from(vec![b'x'; opts.body_bytes]);
    let builder = auto::Builder::new(TokioExecutor::new());
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                // EMFILE and friends: keep serving the connections we have.
                Err(e) => {
                    eprintln!("accept: {e}");
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        // Small responses must not wait for Nagle; latency figures would be meaningless.
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let body = body.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| hello(req, body.clone()));
            // Errors here are clients resetting connections at the end of a run.
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hello-upstream: {e}");
            ExitCode::FAILURE
        }
    }
}
