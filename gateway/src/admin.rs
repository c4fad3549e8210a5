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

pub async fn serve(gw: Arc<Gateway>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
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

/// Stands in for a secret; at least 32 bytes, so a redacted `hmac_secret` still passes the
/// gateway's own checks.
const REDACTED: &str = "<redacted-by-the-weir-admin-config-view>";

/// Key names whose string values never leave the process through the config view (plugin
/// configs included: basic-auth `users`, api-key-auth `keys`, a headers plugin's
/// `authorization`).
fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase().replace('-', "_");
    [
        "secret",
        "password",
        "passwd",
        "token",
        "hmac",
        "authorization",
        "cookie",
        "credential",
        "api_key",
        "apikey",
        "private",
    ]
    .iter()
    .any(|w| k.contains(w))
        || k == "keys"
        || k == "users"
}

/// `scheme://user:password@host…` with the password masked, as `/admin/status` shows the
/// Redis URL; `None` for any other string.
fn mask_url_password(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    let (user, _password) = rest[..at].split_once(':')?;
    Some(format!("{scheme}://{user}:***{}", &rest[at..]))
}

/// The config text with secret values replaced, whatever TOML form they were written in
/// (dotted, inline tables, multi-line strings). Under a secret key, strings and numbers become
/// a placeholder and the keys of tables become `redacted-N` (api-key-auth's `keys` are the API
/// keys themselves, basic-auth's `users` the user names); booleans (`forward_token = false`)
/// are shown. The view stays valid TOML with the same shape, though a plugin that checks the
/// format of a secret would refuse the placeholder. The names of upstreams and key sets are
/// names, not secrets. Falls back to a notice if the text does not parse.
fn redact(text: &str) -> String {
    fn placeholder() -> toml_edit::Value {
        toml_edit::Value::from(REDACTED)
    }
    /// Everything under a secret key.
    fn scrub_value(v: &mut toml_edit::Value) {
        match v {
            toml_edit::Value::String(_)
            | toml_edit::Value::Integer(_)
            | toml_edit::Value::Float(_)
            | toml_edit::Value::Datetime(_) => *v = placeholder(),
            toml_edit::Value::Boolean(_) => {}
            toml_edit::Value::Array(a) => a.iter_mut().for_each(scrub_value),
            toml_edit::Value::InlineTable(t) => {
                let entries: Vec<toml_edit::Value> = std::mem::take(t)
                    .into_iter()
                    .map(|(_, mut v)| {
                        scrub_value(&mut v);
                        v
                    })
                    .collect();
                for (i, v) in entries.into_iter().enumerate() {
                    t.insert(format!("redacted-{}", i + 1), v);
                }
            }
        }
    }
    fn scrub_item(item: &mut toml_edit::Item) {
        match item {
            toml_edit::Item::Value(v) => scrub_value(v),
            toml_edit::Item::Table(t) => {
                let entries: Vec<toml_edit::Item> = std::mem::take(t)
                    .into_iter()
                    .map(|(_, mut i)| {
                        scrub_item(&mut i);
                        i
                    })
                    .collect();
                for (i, item) in entries.into_iter().enumerate() {
                    t.insert(&format!("redacted-{}", i + 1), item);
                }
            }
            toml_edit::Item::ArrayOfTables(a) => a.iter_mut().for_each(|t| {
                for (_, item) in t.iter_mut() {
                    scrub_item(item);
                }
            }),
            toml_edit::Item::None => {}
        }
    }
    /// Outside secret keys only URL passwords are masked.
    fn walk_value(v: &mut toml_edit::Value) {
        match v {
            toml_edit::Value::String(s) => {
                if let Some(masked) = mask_url_password(s.value()) {
                    *v = toml_edit::Value::from(masked);
                }
            }
            toml_edit::Value::InlineTable(t) => {
                for (k, v) in t.iter_mut() {
                    if is_secret_key(k.get()) {
                        scrub_value(v);
                    } else {
                        walk_value(v);
                    }
                }
            }
            toml_edit::Value::Array(a) => a.iter_mut().for_each(walk_value),
            _ => {}
        }
    }
    /// `names`: this table's keys are names chosen by the user (`[upstreams]`, `[key_sets]`).
    fn walk_table(t: &mut toml_edit::Table, names: bool, top: bool) {
        for (k, item) in t.iter_mut() {
            if !names && is_secret_key(k.get()) {
                scrub_item(item);
                continue;
            }
            let child_names = top && matches!(k.get(), "upstreams" | "key_sets");
            match item {
                toml_edit::Item::Table(t) => walk_table(t, child_names, false),
                toml_edit::Item::ArrayOfTables(a) => {
                    a.iter_mut().for_each(|t| walk_table(t, false, false))
                }
                toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) if child_names => {
                    for (_, v) in t.iter_mut() {
                        walk_value(v);
                    }
                }
                toml_edit::Item::Value(v) => walk_value(v),
                toml_edit::Item::None => {}
            }
        }
    }
    match text.parse::<toml_edit::DocumentMut>() {
        Ok(mut doc) => {
            walk_table(doc.as_table_mut(), false, true);
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
        "tls": gw.tls_status(),
        "policy_backend": gw.policies.backend_status(),
    })
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn the_config_view_hides_secrets_and_shows_names_and_flags() {
        let text = r#"
[cluster]
redis = "redis://admin:s3cr3tpass@10.0.0.5:6379/0"

[key_sets.tokens]
hmac_secret = "hmac-secret-value-0123456789abcdef0123"

[upstreams.users]
targets = [{ url = "http://127.0.0.1:9001" }]

[[routes]]
name = "users"
match = { path_prefix = "/users" }
upstream = "users"
plugins = [
  { name = "jwt-auth", wasm = "a.wasm", config = { key_set = "tokens", forward_token = false } },
  { name = "basic-auth", wasm = "b.wasm", config = { users = { alice = "alice-pw" } } },
  { name = "api-key-auth", wasm = "k.wasm", config = { keys = { "sk-live-0123" = { consumer = "svc" } }, pin = 4321 } },
  { name = "headers", wasm = "h.wasm", config = { request = { set = { Authorization = "Basic c2VjcmV0", x-env = "prod" } } } },
]
"#;
        let view = redact(text);
        for secret in [
            "s3cr3tpass",
            "hmac-secret-value",
            "alice-pw",
            "alice",
            "c2VjcmV0",
            "sk-live-0123",
        ] {
            assert!(!view.contains(secret), "{secret} leaked:\n{view}");
        }
        for shown in [
            "redis://admin:***@10.0.0.5:6379/0",
            "[key_sets.tokens]",
            "[upstreams.users]",
            "targets = [{ url = \"http://127.0.0.1:9001\" }]",
            "key_set = \"tokens\"",
            "forward_token = false",
            "redacted-1 = \"<redacted",
            "redacted-1 = { redacted-1 = \"<redacted",
            "pin = 4321",
            "x-env = \"prod\"",
        ] {
            assert!(view.contains(shown), "{shown} missing:\n{view}");
        }
    }
}
