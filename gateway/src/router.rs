//! Route matching on the normalised request: host (exact or `*.` wildcard), path (exact,
//! segment-aware prefix, anchored regex), method and headers. Routes are tried in priority order
//! (explicit `priority`, else more specific first), ties in config order.

use crate::config::{HeaderMatch, HostMatch, PathMatch, RouteSpec};
use http::{HeaderMap, Method};
use std::collections::HashMap;
use std::sync::Arc;

/// An immutable routing table, rebuilt on every reload.
pub struct Router<R> {
    entries: Vec<(Arc<RouteSpec>, R)>,
    /// Positions in `entries` (ascending) of the routes for each exact host: a request only
    /// tries its own host's routes and `any_host`, not every other host's.
    by_host: HashMap<String, Vec<usize>>,
    /// Positions (ascending) of the routes without an exact host (wildcard or none).
    any_host: Vec<usize>,
}

impl<R> Router<R> {
    /// Builds the table; `routes` pairs each spec with the caller's per-route payload.
    pub fn new(routes: Vec<(Arc<RouteSpec>, R)>) -> Self {
        let mut entries: Vec<(usize, (Arc<RouteSpec>, R))> =
            routes.into_iter().enumerate().collect();
        entries.sort_by(|(ia, a), (ib, b)| b.0.priority.cmp(&a.0.priority).then(ia.cmp(ib)));
        let entries: Vec<(Arc<RouteSpec>, R)> = entries.into_iter().map(|(_, e)| e).collect();
        let mut by_host: HashMap<String, Vec<usize>> = HashMap::new();
        let mut any_host = Vec::new();
        for (i, (r, _)) in entries.iter().enumerate() {
            match &r.host {
                Some(HostMatch::Exact(h)) => by_host.entry(h.clone()).or_default().push(i),
                _ => any_host.push(i),
            }
        }
        Self {
            entries,
            by_host,
            any_host,
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
        // Walk the host's routes and the host-independent ones merged in table order, so the
        // first match is the one a scan of every route would find.
        let own: &[usize] = self.by_host.get(host).map_or(&[], Vec::as_slice);
        let (mut a, mut b) = (own.iter().peekable(), self.any_host.iter().peekable());
        loop {
            let i = match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) if x < y => a.next(),
                (Some(_), Some(_)) | (None, Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, None) => return None,
            };
            let e = self.entries.get(*i?)?;
            if matches(&e.0, host, path, method, headers) {
                return Some(e);
            }
        }
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

    /// The host index finds exactly what a scan of every route in order finds: same-host routes
    /// interleaved with wildcard and host-less ones by priority, and config order on ties.
    #[test]
    fn host_index_agrees_with_a_linear_scan() {
        let mut toml = String::from(
            "version = 1\n[[listeners]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\n\
             [upstreams.u]\ntargets = [{ url = \"http://127.0.0.1:1\" }]\n",
        );
        let shapes = [
            r#"host = "a.example", path_prefix = "/x""#,
            r#"host = "*.example", path_prefix = "/x""#,
            r#"path_prefix = "/x""#,
            r#"host = "b.example", path_prefix = "/""#,
            r#"host = "a.example", path = "/x/1""#,
            r#"path_prefix = "/""#,
        ];
        for i in 0..30 {
            let m = shapes[i % shapes.len()];
            // A few priority levels, so order comes from both priority and position.
            toml.push_str(&format!(
                "[[routes]]\nname = \"r{i}\"\nmatch = {{ {m} }}\nupstream = \"u\"\npriority = {}\n",
                (i * 7) % 4
            ));
        }
        let cfg = crate::config::parse(&toml, "t.toml", std::path::Path::new("."), None)
            .unwrap_or_else(|e| panic!("{e}"));
        let routes: Vec<(Arc<RouteSpec>, ())> =
            cfg.routes.into_iter().map(|r| (Arc::new(r), ())).collect();
        let router = Router::new(routes);
        let h = HeaderMap::new();
        for host in [
            "a.example",
            "b.example",
            "c.example",
            "other.org",
            "x.a.example",
        ] {
            for path in ["/x", "/x/1", "/y", "/"] {
                let scan = router
                    .entries()
                    .find(|(r, _)| matches(r, host, path, &Method::GET, &h))
                    .map(|(r, _)| r.name.clone());
                let found = router
                    .find(host, path, &Method::GET, &h)
                    .map(|(r, _)| r.name.clone());
                assert_eq!(found, scan, "{host}{path}");
            }
        }
    }

    #[test]
    fn prefix_is_segment_aware() {
        let p = PathMatch::Prefix("/users".into());
        assert!(path_matches(&p, "/users"));
        assert!(path_matches(&p, "/users/1"));
        assert!(!path_matches(&p, "/usersx"));
        assert!(path_matches(&PathMatch::Prefix("/".into()), "/anything"));
    }
}
