//! The admin listener (loopback by default): health, readiness, Prometheus metrics, a read-only
//! view of the active config, status of plugins/upstreams/reloads, and `POST /admin/reload`.

use crate::body::{self, ProxyBody};
use crate::error::problem;
use crate::state::Gateway;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub async fn serve(gw: Arc<Gateway>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let gw = gw.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(gw.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<ProxyBody> {
    let mut r = Response::new(body::full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn text(status: StatusCode, ctype: &'static str, s: String) -> Response<ProxyBody> {
    let mut r = Response::new(body::full(s));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

async fn handle(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    let res = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") => {
            if gw.is_draining() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "draining\n".into(),
                )
            } else {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            }
        }
        (&Method::GET, "/metrics") => {
            refresh_gauges(&gw);
            text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                gw.metrics.encode(),
            )
        }
        (&Method::GET, "/admin/config") => text(
            StatusCode::OK,
            "application/toml",
            redact(&gw.table().config.text),
        ),
        (&Method::GET, "/admin/status") => json(StatusCode::OK, &status(&gw)),
        (&Method::POST, "/admin/reload") => match gw.reload("admin").await {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({ "ok": true })),
            Err(e) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                &serde_json::json!({ "ok": false, "error": e }),
            ),
        },
        _ => problem(
            StatusCode::NOT_FOUND,
            "not-found",
            "unknown admin endpoint",
            None,
        ),
    };
    Ok(res)
}

/// Hides secrets (HMAC keys) from the config view.
fn redact(text: &str) -> String {
    text.lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("hmac_secret") || t.contains("hmac_secret =") {
                format!("{}hmac_secret = \"<redacted>\"", &l[..l.len() - t.len()])
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn refresh_gauges(gw: &Gateway) {
    let table = gw.table();
    for (name, u) in &table.upstreams {
        for (i, t) in u.targets.iter().enumerate() {
            let label = crate::metrics::TargetLabel {
                upstream: name.clone(),
                target: t.url.to_string(),
            };
            gw.metrics
                .target_healthy
                .get_or_create(&label)
                .set(i64::from(u.available(i)));
            gw.metrics
                .target_in_flight
                .get_or_create(&label)
                .set(t.in_flight.load(Ordering::Relaxed) as i64);
        }
    }
}

fn status(gw: &Gateway) -> serde_json::Value {
    let table = gw.table();
    let upstreams: serde_json::Map<String, serde_json::Value> = table
        .upstreams
        .iter()
        .map(|(name, u)| {
            let targets: Vec<serde_json::Value> = u
                .targets
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    serde_json::json!({
                        "url": t.url.to_string(),
                        "weight": t.weight,
                        "healthy": t.healthy.load(Ordering::Relaxed),
                        "available": u.available(i),
                        "in_flight": t.in_flight.load(Ordering::Relaxed),
                    })
                })
                .collect();
            (
                name.clone(),
                serde_json::json!({ "targets": targets, "in_flight": u.in_flight() }),
            )
        })
        .collect();
    let last = gw.last_reload.lock().map(|l| l.clone()).ok();
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": gw.started.elapsed().as_secs(),
        "draining": gw.is_draining(),
        "config_file": table.config.source.as_ref().map(|p| p.display().to_string()),
        "loaded_at": humantime::format_rfc3339_seconds(table.loaded_at).to_string(),
        "routes": table.config.routes.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
        "upstreams": upstreams,
        "plugins": crate::policy::status(&table),
        "last_reload": last,
        "policy_backend": gw.policies.backend_status(),
    })
}
