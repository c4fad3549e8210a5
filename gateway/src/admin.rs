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

/// Stands in for a secret; long enough that the redacted view still validates (HMAC keys must
/// be at least 32 bytes).
const REDACTED: &str = "<redacted-by-the-weir-admin-config-view>";

/// Key names whose values never leave the process through the config view.
fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    ["secret", "password", "token", "hmac"]
        .iter()
        .any(|w| k.contains(w))
        || k == "keys"
        || k == "users"
}

/// The config text with secret values replaced, whatever TOML form they were written in
/// (dotted, inline tables, multi-line strings). Falls back to a notice if the text does not parse.
fn redact(text: &str) -> String {
    fn walk_value(v: &mut toml_edit::Value) {
        match v {
            toml_edit::Value::InlineTable(t) => {
                for (k, v) in t.iter_mut() {
                    if is_secret_key(k.get()) {
                        *v = toml_edit::Value::from(REDACTED);
                    } else {
                        walk_value(v);
                    }
                }
            }
            toml_edit::Value::Array(a) => a.iter_mut().for_each(walk_value),
            _ => {}
        }
    }
    fn walk_table(t: &mut toml_edit::Table) {
        for (k, item) in t.iter_mut() {
            if is_secret_key(k.get()) {
                *item = toml_edit::value(REDACTED);
                continue;
            }
            match item {
                toml_edit::Item::Table(t) => walk_table(t),
                toml_edit::Item::ArrayOfTables(a) => a.iter_mut().for_each(walk_table),
                toml_edit::Item::Value(v) => walk_value(v),
                toml_edit::Item::None => {}
            }
        }
    }
    match text.parse::<toml_edit::DocumentMut>() {
        Ok(mut doc) => {
            walk_table(doc.as_table_mut());
            doc.to_string()
        }
        Err(_) => "# the active config could not be re-read for display\n".to_string(),
    }
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
