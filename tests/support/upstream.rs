//! Real upstream servers for tests: an echo service that reports what it received, counts hits,
//! can be slowed down, made to fail, or stopped (its port then refuses connections).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the test upstream answers.
#[derive(Clone, Debug, Default)]
pub struct UpstreamBehavior {
    /// Delay before answering (for requests whose path contains `/slow`, or all if `delay_all`).
    pub delay: Duration,
    pub delay_all: bool,
    /// Answer this status instead of 200.
    pub status: Option<u16>,
}

/// A running test upstream.
pub struct TestUpstream {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub in_flight: Arc<AtomicU64>,
    pub behavior: Arc<Mutex<UpstreamBehavior>>,
    task: Option<tokio::task::JoinHandle<()>>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl TestUpstream {
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, UpstreamBehavior::default()).await
    }

    pub async fn start_with(name: &str, behavior: UpstreamBehavior) -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(name, l, behavior)
    }

    /// Starts again on a given address (to bring a killed target back).
    pub async fn start_at(name: &str, addr: SocketAddr, behavior: UpstreamBehavior) -> Self {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_reuseaddr(true).unwrap();
        sock.bind(addr).unwrap();
        let l = sock.listen(1024).unwrap();
        Self::serve(name, l, behavior)
    }

    fn serve(name: &str, l: tokio::net::TcpListener, behavior: UpstreamBehavior) -> Self {
        let addr = l.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicU64::new(0));
        let behavior = Arc::new(Mutex::new(behavior));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (h, f, b, c) = (
            hits.clone(),
            in_flight.clone(),
            behavior.clone(),
            conns.clone(),
        );
        let name_s = name.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, peer)) = l.accept().await else {
                    continue;
                };
                let (h, f, b, n) = (h.clone(), f.clone(), b.clone(), name_s.clone());
                let jh = tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<Incoming>| {
                        let (h, f, b, n) = (h.clone(), f.clone(), b.clone(), n.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                answer(&n, peer, req, &h, &f, &b).await,
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(s), svc)
                        .await;
                });
                c.lock().unwrap().push(jh.abort_handle());
            }
        });
        Self {
            name: name.to_string(),
            addr,
            hits,
            in_flight,
            behavior,
            task: Some(task),
            conns,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops listening and drops every open connection: the port refuses from now on.
    pub fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn answer(
    name: &str,
    peer: SocketAddr,
    req: http::Request<Incoming>,
    hits: &AtomicUsize,
    in_flight: &AtomicU64,
    behavior: &Mutex<UpstreamBehavior>,
) -> http::Response<Full<Bytes>> {
    hits.fetch_add(1, Ordering::SeqCst);
    in_flight.fetch_add(1, Ordering::SeqCst);
    let b = behavior.lock().unwrap().clone();
    let path = req.uri().path().to_string();
    if path == "/health" {
        in_flight.fetch_sub(1, Ordering::SeqCst);
        return http::Response::new(Full::new(Bytes::from_static(b"ok")));
    }
    if b.delay_all || path.contains("/slow") {
        tokio::time::sleep(if b.delay.is_zero() {
            Duration::from_secs(2)
        } else {
            b.delay
        })
        .await;
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::String(v.to_str().unwrap_or("").to_string()),
            )
        })
        .collect();
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let query = req.uri().query().map(str::to_string);
    let version = format!("{:?}", req.version());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let doc = serde_json::json!({
        "service": name,
        "method": method,
        "path": path,
        "uri": uri,
        "query": query,
        "version": version,
        "headers": headers,
        "body_len": body.len(),
        // Small bodies verbatim (UTF-8, lossy), so tests can see what a policy made of them.
        "body": (body.len() <= 4096).then(|| String::from_utf8_lossy(&body).into_owned()),
        "peer": peer.to_string(),
    });
    in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut res = http::Response::new(Full::new(Bytes::from(doc.to_string())));
    *res.status_mut() = http::StatusCode::from_u16(b.status.unwrap_or(200)).unwrap();
    res.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert("x-upstream", http::HeaderValue::from_str(name).unwrap());
    res
}
