//! `weir:policy/kv`: a key-value store shared by every instance of a plugin. The backend is a
//! trait so a clustered deployment can plug in Redis; [`InProcessKv`] is the default. Keys are
//! namespaced per plugin id by the host, so plugins cannot read each other's data.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::bindings::weir::policy::kv::Host;
use crate::state::HostState;

/// Largest key (after namespacing) and value accepted.
pub const MAX_KEY: usize = 1024;
pub const MAX_VALUE: usize = 1024 * 1024;

/// A kv store. Keys arrive already namespaced (`weir/<plugin id>/<key>`). Errors are strings
/// because they are handed to the guest verbatim.
pub trait KvBackend: Send + Sync + std::fmt::Debug + 'static {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, String>>;
    /// `ttl = None` keeps the value until deleted.
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), String>>;
    /// True if the key existed.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, String>>;
    /// Adds `delta` to the decimal integer stored at `key` (missing = 0). `ttl` applies only when
    /// the key is created, so fixed-window counters expire on schedule (like Redis INCR + EXPIRE NX).
    fn increment<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<i64, String>>;
    /// Stores `new` only if the current value equals `expected` (`None` = absent).
    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool, String>>;
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|t| t > now)
    }
}

/// The default backend: one map in this process, expiry checked on access and swept when the
/// map reaches its entry cap.
#[derive(Debug)]
pub struct InProcessKv {
    map: Mutex<HashMap<String, Entry>>,
    max_entries: usize,
}

impl Default for InProcessKv {
    fn default() -> Self {
        Self::new(100_000)
    }
}

impl InProcessKv {
    /// A store holding at most `max_entries` live keys (all plugins together).
    pub fn new(max_entries: usize) -> Self {
        InProcessKv {
            map: Mutex::new(HashMap::new()),
            max_entries,
        }
    }

    fn with_map<R>(&self, f: impl FnOnce(&mut HashMap<String, Entry>, Instant) -> R) -> R {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut map, Instant::now())
    }

    fn insert(
        &self,
        map: &mut HashMap<String, Entry>,
        now: Instant,
        key: &str,
        e: Entry,
    ) -> Result<(), String> {
        if !map.contains_key(key) && map.len() >= self.max_entries {
            map.retain(|_, e| e.live(now));
            if map.len() >= self.max_entries {
                return Err(format!("kv store full ({} keys)", self.max_entries));
            }
        }
        map.insert(key.to_string(), e);
        Ok(())
    }

    fn live_value<'m>(
        map: &'m HashMap<String, Entry>,
        key: &str,
        now: Instant,
    ) -> Option<&'m Entry> {
        map.get(key).filter(|e| e.live(now))
    }
}

fn expiry(now: Instant, ttl: Option<Duration>) -> Option<Instant> {
    ttl.and_then(|t| now.checked_add(t))
}

impl KvBackend for InProcessKv {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, String>> {
        let r = self.with_map(|m, now| Self::live_value(m, key, now).map(|e| e.value.clone()));
        Box::pin(async move { Ok(r) })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), String>> {
        let r = self.with_map(|m, now| {
            self.insert(
                m,
                now,
                key,
                Entry {
                    value,
                    expires: expiry(now, ttl),
                },
            )
        });
        Box::pin(async move { r })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, String>> {
        let r = self.with_map(|m, now| m.remove(key).is_some_and(|e| e.live(now)));
        Box::pin(async move { Ok(r) })
    }

    fn increment<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<i64, String>> {
        let r = self.with_map(|m, now| {
            let (current, expires) = match Self::live_value(m, key, now) {
                Some(e) => {
                    let n = std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                        .ok_or_else(|| "value is not an integer".to_string())?;
                    (n, e.expires)
                }
                None => (0, expiry(now, ttl)),
            };
            let next = current
                .checked_add(delta)
                .ok_or_else(|| "integer overflow".to_string())?;
            self.insert(
                m,
                now,
                key,
                Entry {
                    value: next.to_string().into_bytes(),
                    expires,
                },
            )?;
            Ok(next)
        });
        Box::pin(async move { r })
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool, String>> {
        let r = self.with_map(|m, now| {
            let current = Self::live_value(m, key, now).map(|e| e.value.as_slice());
            if current != expected.as_deref() {
                return Ok(false);
            }
            self.insert(
                m,
                now,
                key,
                Entry {
                    value: new,
                    expires: expiry(now, ttl),
                },
            )?;
            Ok(true)
        });
        Box::pin(async move { r })
    }
}

/// `weir/<id>/` with `%` and `/` escaped in the id, so distinct ids never share a prefix.
pub(crate) fn namespace(plugin_id: &str) -> String {
    let escaped = plugin_id.replace('%', "%25").replace('/', "%2F");
    format!("weir/{escaped}/")
}

impl HostState {
    fn kv_key(&self, key: &str) -> Result<String, String> {
        let full = format!("{}{key}", self.plugin.kv_namespace);
        if full.len() > MAX_KEY {
            return Err(format!("key longer than {MAX_KEY} bytes"));
        }
        Ok(full)
    }
}

fn ttl(ms: Option<u64>) -> Option<Duration> {
    ms.map(Duration::from_millis)
}

fn check_value(v: &[u8]) -> Result<(), String> {
    if v.len() > MAX_VALUE {
        return Err(format!("value larger than {MAX_VALUE} bytes"));
    }
    Ok(())
}

impl Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        let key = self.kv_key(&key)?;
        self.host_call_begin();
        let r = self.plugin.services.kv.get(&key).await;
        self.host_call_end();
        r
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), String> {
        let key = self.kv_key(&key)?;
        check_value(&value)?;
        self.host_call_begin();
        let r = self.plugin.services.kv.set(&key, value, ttl(ttl_ms)).await;
        self.host_call_end();
        r
    }

    async fn delete(&mut self, key: String) -> Result<bool, String> {
        let key = self.kv_key(&key)?;
        self.host_call_begin();
        let r = self.plugin.services.kv.delete(&key).await;
        self.host_call_end();
        r
    }

    async fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, String> {
        let key = self.kv_key(&key)?;
        self.host_call_begin();
        let r = self
            .plugin
            .services
            .kv
            .increment(&key, delta, ttl(ttl_ms))
            .await;
        self.host_call_end();
        r
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, String> {
        let key = self.kv_key(&key)?;
        check_value(&new)?;
        self.host_call_begin();
        let r = self
            .plugin
            .services
            .kv
            .compare_and_swap(&key, expected, new, ttl(ttl_ms))
            .await;
        self.host_call_end();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_process_kv_ttl_increment_cas() {
        let kv = InProcessKv::new(3);
        assert_eq!(kv.increment("n", 2, None).await, Ok(2));
        assert_eq!(kv.increment("n", -5, None).await, Ok(-3));
        kv.set("s", b"x".to_vec(), None).await.unwrap();
        assert!(kv.increment("s", 1, None).await.is_err());
        assert_eq!(
            kv.compare_and_swap("s", Some(b"y".to_vec()), b"z".to_vec(), None)
                .await,
            Ok(false)
        );
        assert_eq!(
            kv.compare_and_swap("s", Some(b"x".to_vec()), b"z".to_vec(), None)
                .await,
            Ok(true)
        );
        assert_eq!(kv.get("s").await, Ok(Some(b"z".to_vec())));
        assert_eq!(
            kv.compare_and_swap("new", None, b"1".to_vec(), None).await,
            Ok(true)
        );
        assert_eq!(
            kv.compare_and_swap("new", None, b"2".to_vec(), None).await,
            Ok(false)
        );
        // Cap reached (n, s, new): a fourth key is refused, replacing an existing one is fine.
        assert!(kv.set("fourth", vec![], None).await.is_err());
        assert!(kv.set("s", vec![], None).await.is_ok());

        kv.set("t", b"v".to_vec(), Some(Duration::from_millis(20)))
            .await
            .ok();
        assert_eq!(kv.delete("new").await, Ok(true));
        assert_eq!(kv.delete("new").await, Ok(false));
        kv.set("t", b"v".to_vec(), Some(Duration::from_millis(20)))
            .await
            .unwrap();
        assert_eq!(kv.get("t").await, Ok(Some(b"v".to_vec())));
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(kv.get("t").await, Ok(None));
        // An expired counter restarts from zero and takes the new ttl.
        assert_eq!(
            kv.increment("t", 1, Some(Duration::from_secs(60))).await,
            Ok(1)
        );
    }

    #[test]
    fn namespaces_do_not_collide() {
        assert_eq!(namespace("auth"), "weir/auth/");
        assert_ne!(namespace("a/b"), namespace("a"));
        assert_ne!(
            format!("{}c", namespace("a/b")),
            format!("{}b/c", namespace("a"))
        );
    }
}
