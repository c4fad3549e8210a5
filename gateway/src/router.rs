//! Route matching on the normalised request: host (exact or `*.` wildcard), path (exact,
//! segment-aware prefix, anchored regex), method and headers. Routes are tried in priority order
//! (explicit `priority`, else more specific first), ties in config order.

use crate::config::{HeaderMatch, HostMatch, PathMatch, RouteSpec};
use http::{HeaderMap, Method};
use std::sync::Arc;

/// An immutable routing table, rebuilt on every reload.
pub struct Router<R> {
    entries: Vec<(Arc<RouteSpec>, R)>,
}

impl<R> Router<R> {
    /// Builds the table; `routes` pairs each spec with the caller's per-route payload.
    pub fn new(routes: Vec<(Arc<RouteSpec>, R)>) -> Self {
        let mut entries: Vec<(usize, (Arc<RouteSpec>, R))> =
            routes.into_iter().enumerate().collect();
        entries.sort_by(|(ia, a), (ib, b)| b.0.priority.cmp(&a.0.priority).then(ia.cmp(ib)));
        Self {
            entries: entries.into_iter().map(|(_, e)| e).collect(),
        }
    }

    /// First matching route. `host` is lower-case without port; `path` is normalised.
    pub fn find(
        &self,
        host: &str,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<&(Arc<RouteSpec>, R)> {
        self.entries
            .iter()
            .find(|(r, _)| matches(r, host, path, method, headers))
    }

    /// Routes in match order.
    pub fn entries(&self) -> impl Iterator<Item = &(Arc<RouteSpec>, R)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn matches(r: &RouteSpec, host: &str, path: &str, method: &Method, headers: &HeaderMap) -> bool {
    if let Some(h) = &r.host {
        let ok = match h {
            HostMatch::Exact(e) => e == host,
            HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        };
        if !ok {
            return false;
        }
    }
    if !path_matches(&r.path, path) {
        return false;
    }
    if let Some(ms) = &r.methods
        && !ms.contains(method)
    {
        return false;
    }
    r.headers.iter().all(|m| match m {
        HeaderMatch::Value(n, v) => headers
            .get_all(n)
            .iter()
            .any(|h| h.as_bytes() == v.as_bytes()),
        HeaderMatch::Regex(n, re) => headers
            .get_all(n)
            .iter()
            .any(|h| h.to_str().is_ok_and(|s| re.is_match(s))),
        HeaderMatch::Present(n, want) => headers.contains_key(n) == *want,
    })
}

/// Segment-aware prefix: `/users` matches `/users` and `/users/1`, not `/usersx`.
pub fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Exact(e) => e == path,
        PathMatch::Regex(re) => re.is_match(path),
        PathMatch::Prefix(p) => {
            path.starts_with(p.as_str())
                && (p.ends_with('/') || path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
        }
    }
}

/// The path to send upstream: `strip_prefix` removes the matched prefix, `rewrite` replaces it
/// (or, for regex routes, is a replacement with `$1`-style captures).
pub fn upstream_path(r: &RouteSpec, path: &str) -> String {
    match (&r.path, &r.rewrite, r.strip_prefix) {
        (PathMatch::Regex(re), Some(rw), _) => re.replace(path, rw.as_str()).into_owned(),
        (PathMatch::Exact(_), Some(rw), _) => rw.clone(),
        (PathMatch::Prefix(p), rw, strip) if rw.is_some() || strip => {
            let rest = path.get(p.trim_end_matches('/').len()..).unwrap_or("");
            let head = rw.as_deref().unwrap_or("").trim_end_matches('/');
            let joined = format!("{head}{rest}");
            if joined.starts_with('/') {
                joined
            } else {
                format!("/{joined}")
            }
        }
        _ => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PathMatch;

    #[test]
    fn prefix_is_segment_aware() {
        let p = PathMatch::Prefix("/users".into());
        assert!(path_matches(&p, "/users"));
        assert!(path_matches(&p, "/users/1"));
        assert!(!path_matches(&p, "/usersx"));
        assert!(path_matches(&PathMatch::Prefix("/".into()), "/anything"));
    }
}
