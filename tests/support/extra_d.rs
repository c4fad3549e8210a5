//! Helpers for the plugin outbound-HTTP tests: a small authorization service that allows or
//! denies on one header and counts every call, a port that refuses connections, and the path of
//! a built first-party plugin.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One call the authorization service received.
#[derive(Clone, Debug)]
pub struct AuthzCall {
    pub method: String,
    pub path: String,
    /// Header names lower-case; repeated headers joined with `, `.
    pub headers: BTreeMap<String, String>,
    pub body: Bytes,
}

impl AuthzCall {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// How the authorization service decides.
#[derive(Clone, Debug)]
pub struct AuthzRules {
    /// The header the decision is made on (lower-case). It is looked up in the request headers
    /// (forward-auth style) and in the JSON body's `headers` object (ext-authz POST style).
    pub header: String,
    /// Allow when the header has exactly this value; deny (403) otherwise.
    pub allow_value: String,
    /// Headers added to an allowing answer.
    pub grant: Vec<(String, String)>,
}

/// A running authorization service on `127.0.0.1`; stops when dropped.
pub struct AuthzServer {
    pub addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<AuthzCall>>>,
    task: tokio::task::JoinHandle<()>,
}

impl AuthzServer {
    pub async fn start(rules: AuthzRules) -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let log: Arc<Mutex<Vec<AuthzCall>>> = Arc::default();
        let rules = Arc::new(rules);
        let (c, lg) = (calls.clone(), log.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let (c, lg, rules) = (c.clone(), lg.clone(), rules.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<Incoming>| {
                        let (c, lg, rules) = (c.clone(), lg.clone(), rules.clone());
                        async move { Ok::<_, Infallible>(decide(req, &c, &lg, &rules).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            calls,
            log,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests it has answered.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Every call so far, in arrival order.
    pub fn log(&self) -> Vec<AuthzCall> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for AuthzServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn decide(
    req: http::Request<Incoming>,
    calls: &AtomicUsize,
    log: &Mutex<Vec<AuthzCall>>,
    rules: &AuthzRules,
) -> http::Response<Full<Bytes>> {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in req.headers() {
        let v = v.to_str().unwrap_or("").to_string();
        headers
            .entry(k.as_str().to_string())
            .and_modify(|old| {
                old.push_str(", ");
                old.push_str(&v);
            })
            .or_insert(v);
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let call = AuthzCall {
        method,
        path,
        headers,
        body,
    };
    let from_body = call.json()["headers"][&rules.header]
        .as_str()
        .map(str::to_string);
    let value = call.headers.get(&rules.header).cloned().or(from_body);
    let allowed = value.as_deref() == Some(rules.allow_value.as_str());
    log.lock().unwrap().push(call);
    calls.fetch_add(1, Ordering::SeqCst);

    let mut res = http::Response::new(Full::new(Bytes::from_static(if allowed {
        b"allow"
    } else {
        b"deny"
    })));
    if allowed {
        for (k, v) in &rules.grant {
            res.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
    } else {
        *res.status_mut() = http::StatusCode::FORBIDDEN;
    }
    res
}

/// A `127.0.0.1` port nothing listens on (bound, then released): connections are refused.
pub fn refused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Absolute path of a built first-party plugin component, e.g. `plugin_wasm("ext_authz")`.
pub fn plugin_wasm(crate_name: &str) -> String {
    let p = crate::plugins_dir().join(format!("{crate_name}.wasm"));
    assert!(
        p.is_file(),
        "{} missing: build the `weir` crate (its build script compiles the plugins)",
        p.display()
    );
    p.display().to_string()
}
