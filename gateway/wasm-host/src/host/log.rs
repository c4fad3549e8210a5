//! `weir:policy/log`: guest log records become tracing events (target `weir::plugin`) carrying
//! the plugin id, so they land in the gateway's log pipeline with its filters and format.

use crate::bindings::weir::policy::log::{Host, Level};
use crate::state::HostState;

/// Longest message or field value kept; the rest is cut so one plugin cannot flood the log.
const MAX_TEXT: usize = 4096;
const MAX_FIELDS: usize = 32;

fn cut(s: &str) -> &str {
    if s.len() <= MAX_TEXT {
        return s;
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `k=v` pairs joined by spaces, values quoted when they contain spaces or quotes.
fn render_fields(fields: &[(String, String)]) -> String {
    let mut out = String::new();
    for (k, v) in fields.iter().take(MAX_FIELDS) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(cut(k));
        out.push('=');
        let v = cut(v);
        if v.is_empty() || v.contains([' ', '"', '=']) {
            out.push_str(&format!("{v:?}"));
        } else {
            out.push_str(v);
        }
    }
    out
}

impl Host for HostState {
    fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        let plugin: &str = &self.plugin.id;
        let message = cut(&message);
        let fields = render_fields(&fields);
        match level {
            Level::Trace => tracing::trace!(target: "weir::plugin", plugin, fields, "{message}"),
            Level::Debug => tracing::debug!(target: "weir::plugin", plugin, fields, "{message}"),
            Level::Info => tracing::info!(target: "weir::plugin", plugin, fields, "{message}"),
            Level::Warn => tracing::warn!(target: "weir::plugin", plugin, fields, "{message}"),
            Level::Error => tracing::error!(target: "weir::plugin", plugin, fields, "{message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_rendered_and_cut() {
        let f = vec![
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "two words".to_string()),
            ("c".to_string(), "é".repeat(MAX_TEXT)),
        ];
        let r = render_fields(&f);
        assert!(r.starts_with("a=1 b=\"two words\" c="));
        assert!(r.len() < MAX_TEXT + 40);
    }
}
