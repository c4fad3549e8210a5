//! `request-log`: one structured audit line per request.
//!
//! Emitted in `on_log`, after the response was sent, through the gateway's `log` capability
//! (so it lands in the gateway's tracing output with the plugin name and request id). Fields:
//! `route`, `method`, `path`, `status`, `latency_ms`, `consumer` (from the context, `-` when
//! anonymous), `client_ip`, `request_id`, `upstream`, `bytes_sent`, plus any context keys
//! listed in `context_keys`.

use serde::Deserialize;
use weir_plugin_sdk::log::Level;
use weir_plugin_sdk::prelude::*;

#[derive(Debug, Default, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum LevelConfig {
    Debug,
    #[default]
    Info,
    Warn,
}

fn default_message() -> String {
    "request".into()
}

/// The plugin's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_message")]
    message: String,
    #[serde(default)]
    level: LevelConfig,
    /// Extra context entries to include, logged as `ctx.<key>`.
    #[serde(default)]
    context_keys: Vec<String>,
    /// Log responses with status >= 500 at warn level whatever `level` says.
    #[serde(default)]
    warn_on_server_error: bool,
}

/// The request log policy.
pub struct RequestLog {
    message: String,
    level: Level,
    context_keys: Vec<(String, String)>,
    warn_on_server_error: bool,
}

impl Policy for RequestLog {
    type Config = Config;

    fn new(cfg: Config) -> Result<Self, String> {
        if cfg.message.trim().is_empty() {
            return Err("message must not be empty".into());
        }
        Ok(Self {
            message: cfg.message,
            level: match cfg.level {
                LevelConfig::Debug => Level::Debug,
                LevelConfig::Info => Level::Info,
                LevelConfig::Warn => Level::Warn,
            },
            context_keys: cfg
                .context_keys
                .into_iter()
                .map(|k| (format!("ctx.{k}"), k))
                .collect(),
            warn_on_server_error: cfg.warn_on_server_error,
        })
    }

    fn info(&self) -> PluginInfo {
        PluginInfo::default().phases(Phases::LOG)
    }

    fn on_log(&self, e: &LogEntry) {
        let status = e.status.to_string();
        let latency_ms = format!("{:.3}", e.latency_us as f64 / 1000.0);
        let consumer = context::get("consumer").unwrap_or_else(|| "-".into());
        let bytes = e.bytes_sent.to_string();
        let extra: Vec<(&str, String)> = self
            .context_keys
            .iter()
            .filter_map(|(field, key)| context::get(key).map(|v| (field.as_str(), v)))
            .collect();
        let mut fields: Vec<(&str, &str)> = vec![
            ("route", &e.route),
            ("method", &e.method),
            ("path", &e.path),
            ("status", &status),
            ("latency_ms", &latency_ms),
            ("consumer", &consumer),
            ("client_ip", &e.client_ip),
            ("request_id", &e.request_id),
            ("upstream", e.upstream.as_deref().unwrap_or("-")),
            ("bytes_sent", &bytes),
        ];
        fields.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        let level = if self.warn_on_server_error && e.status >= 500 {
            Level::Warn
        } else {
            self.level
        };
        log::log(level, &self.message, &fields);
    }
}

export_policy!(RequestLog);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::{Harness, MockHost};

    fn entry(status: u16) -> LogEntry {
        LogEntry {
            route: "api".into(),
            method: "GET".into(),
            path: "/users/1".into(),
            status,
            latency_us: 1534,
            client_ip: "10.0.0.1".into(),
            request_id: "r-1".into(),
            upstream: Some("127.0.0.1:9000".into()),
            bytes_sent: 42,
        }
    }

    #[test]
    fn logs_audit_line_with_consumer() {
        let mut h =
            Harness::<RequestLog>::new(json!({ "context_keys": ["jwt.scope", "absent"] })).unwrap();
        assert!(
            h.on_request_with_context(
                Request::get("/users/1"),
                &[("consumer", "alice"), ("jwt.scope", "read")]
            )
            .is_continue()
        );
        assert!(MockHost::logs().is_empty(), "nothing before on_log");
        h.on_log(entry(200));
        let logs = MockHost::logs();
        assert_eq!(logs.len(), 1);
        let l = &logs[0];
        assert_eq!(l.level, Level::Info);
        assert_eq!(l.message, "request");
        for (k, v) in [
            ("route", "api"),
            ("method", "GET"),
            ("path", "/users/1"),
            ("status", "200"),
            ("latency_ms", "1.534"),
            ("consumer", "alice"),
            ("client_ip", "10.0.0.1"),
            ("request_id", "r-1"),
            ("upstream", "127.0.0.1:9000"),
            ("bytes_sent", "42"),
            ("ctx.jwt.scope", "read"),
        ] {
            assert_eq!(l.field(k), Some(v), "{k}");
        }
        assert_eq!(l.field("ctx.absent"), None);
    }

    #[test]
    fn anonymous_and_levels() {
        let mut h = Harness::<RequestLog>::new(json!({
            "message": "audit", "level": "debug", "warn_on_server_error": true
        }))
        .unwrap();
        h.on_request(Request::get("/"));
        h.on_log(LogEntry {
            upstream: None,
            ..entry(200)
        });
        h.on_log(entry(502));
        let logs = MockHost::logs();
        assert_eq!(logs[0].level, Level::Debug);
        assert_eq!(logs[0].message, "audit");
        assert_eq!(logs[0].field("consumer"), Some("-"));
        assert_eq!(logs[0].field("upstream"), Some("-"));
        assert_eq!(logs[1].level, Level::Warn);
    }

    #[test]
    fn config_errors() {
        assert!(Harness::<RequestLog>::new(json!({ "level": "loud" })).is_err());
        assert!(Harness::<RequestLog>::new(json!({ "message": " " })).is_err());
        assert!(Harness::<RequestLog>::new(json!({})).is_ok());
    }
}
