//! `weir demo`: two small demo services on loopback and an embedded config that routes to them,
//! so a fresh clone shows routing, load balancing and policies with nothing else installed.

use crate::body::{self, ProxyBody};
use crate::run;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::path::Path;

const DEMO_CONFIG: &str = include_str!("../../examples/demo.toml");

/// Starts a demo service that echoes what it received as JSON, tagged with its name.
pub async fn spawn_echo_service(name: &'static str) -> anyhow::Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let headers: serde_json::Map<String, serde_json::Value> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                        .collect();
                    let doc = serde_json::json!({
                        "service": name,
                        "method": req.method().as_str(),
                        "path": req.uri().path(),
                        "query": req.uri().query(),
                        "headers": headers,
                    });
                    let mut res = Response::new(body::full(format!("{doc:#}\n")));
                    res.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<Response<ProxyBody>, std::convert::Infallible>(res)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Starts the demo; returns the running gateway and the banner telling what to try.
pub async fn start(port: u16, admin_port: u16) -> anyhow::Result<(run::Running, String)> {
    let users_a = spawn_echo_service("users-a").await?;
    let users_b = spawn_echo_service("users-b").await?;
    let orders = spawn_echo_service("orders").await?;
    let text = DEMO_CONFIG
        .replace("{PORT}", &port.to_string())
        .replace("{ADMIN_PORT}", &admin_port.to_string())
        .replace("{USERS_A}", &users_a.to_string())
        .replace("{USERS_B}", &users_b.to_string())
        .replace("{ORDERS}", &orders.to_string())
        .replace("{PLUGINS}", crate::bundled::PLUGIN_DIR);
    let cfg = crate::config::parse(&text, "<embedded demo config>", Path::new("."), None)?;
    let running = run::start(cfg).await?;
    let token = demo_token()?;
    let banner = banner(port, admin_port, &token);
    Ok((running, banner))
}

/// An HS256 token for the demo key set, valid for one hour.
fn demo_token() -> anyhow::Result<String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let claims = serde_json::json!({ "sub": "demo-user", "exp": exp });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"weir-demo-secret-change-me-to-a-real-one"),
    )?)
}

fn banner(port: u16, admin: u16, token: &str) -> String {
    format!(
        r#"Weir demo is running.
  public listener  http://127.0.0.1:{port}
  admin            http://127.0.0.1:{admin}

Try:
  curl -si http://127.0.0.1:{port}/users/42           # round robin over users-a / users-b, prefix stripped,
                                                       #   x-powered-by added by the `headers` Wasm policy
  curl -si http://127.0.0.1:{port}/orders               # 401: api-key-auth wants a key
  curl -si -H 'x-api-key: demo-key-alice' http://127.0.0.1:{port}/orders
                                                       # 200, x-consumer: alice upstream; the 6th call in 10 s gets 429
  curl -si http://127.0.0.1:{port}/secure               # 401 from jwt-auth
  curl -si -H 'authorization: Bearer {token}' http://127.0.0.1:{port}/secure
                                                       # 200, x-user: demo-user forwarded
  curl -s http://127.0.0.1:{port}/nope                  # JSON 404 (problem+json)
  curl -s http://127.0.0.1:{admin}/metrics             # Prometheus metrics
  curl -s http://127.0.0.1:{admin}/admin/status        # routes, upstream health, plugins
Ctrl-C drains and stops."#
    )
}
