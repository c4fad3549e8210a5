//! `weir:policy/rate-limit`: GCRA limiting by the host. [`RateLimitBackend`] is a trait so a
//! cluster can share limits (Redis); [`InProcessLimiter`] keeps one governor keyed limiter per
//! (plugin namespace, limiter name, quota).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::bindings::weir::policy::rate_limit::{Decision, Host, Quota as WitQuota};
use crate::state::HostState;

/// `limit` requests per `window`, bursting up to `limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RateQuota {
    pub limit: u32,
    pub window: Duration,
}

/// The outcome of one check (mirrors the WIT `decision`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    pub limit: u32,
    /// Requests left after this one.
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// When denied: until a request of this cost would pass.
    pub retry_after: Duration,
}

/// A rate limiter. `namespace` isolates plugins from each other (one plugin's "api" limiter is
/// not another's).
pub trait RateLimitBackend: Send + Sync + std::fmt::Debug + 'static {
    fn check<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        key: &'a str,
        quota: RateQuota,
        cost: u32,
    ) -> BoxFuture<'a, Result<RateDecision, String>>;
}

type Keyed =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

#[derive(Debug)]
struct Limiter {
    keyed: Keyed,
    /// Time to earn back one request.
    period: Duration,
    checks: std::sync::atomic::AtomicU64,
}

/// In-process GCRA limiters (governor). Idle keys are dropped every few thousand checks.
#[derive(Debug)]
pub struct InProcessLimiter {
    limiters: RwLock<HashMap<(String, String, RateQuota), Arc<Limiter>>>,
    max_limiters: usize,
}

impl Default for InProcessLimiter {
    fn default() -> Self {
        InProcessLimiter {
            limiters: RwLock::default(),
            max_limiters: 10_000,
        }
    }
}

const SWEEP_EVERY: u64 = 4096;

impl InProcessLimiter {
    fn limiter(
        &self,
        namespace: &str,
        name: &str,
        quota: RateQuota,
    ) -> Result<Arc<Limiter>, String> {
        let id = (namespace.to_string(), name.to_string(), quota);
        if let Some(l) = self
            .limiters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return Ok(l.clone());
        }
        let limit = NonZeroU32::new(quota.limit).ok_or("quota limit must be > 0")?;
        if quota.window.is_zero() {
            return Err("quota window must be > 0".into());
        }
        let period = quota.window / quota.limit;
        let q = Quota::with_period(period.max(Duration::from_nanos(1)))
            .ok_or("quota window too small")?
            .allow_burst(limit);
        let mut map = self.limiters.write().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(&id) && map.len() >= self.max_limiters {
            return Err(format!(
                "too many distinct limiters ({})",
                self.max_limiters
            ));
        }
        let l = map.entry(id).or_insert_with(|| {
            Arc::new(Limiter {
                keyed: RateLimiter::keyed(q).with_middleware::<StateInformationMiddleware>(),
                period,
                checks: Default::default(),
            })
        });
        Ok(l.clone())
    }
}

impl RateLimitBackend for InProcessLimiter {
    fn check<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        key: &'a str,
        quota: RateQuota,
        cost: u32,
    ) -> BoxFuture<'a, Result<RateDecision, String>> {
        let r = (|| {
            let l = self.limiter(namespace, name, quota)?;
            let n = NonZeroU32::new(cost).ok_or("cost must be > 0")?;
            if l.checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SWEEP_EVERY
                == SWEEP_EVERY - 1
            {
                l.keyed.retain_recent();
            }
            let key = key.to_string();
            let d = match l.keyed.check_key_n(&key, n) {
                Ok(Ok(snapshot)) => {
                    let remaining = snapshot.remaining_burst_capacity();
                    RateDecision {
                        allowed: true,
                        limit: quota.limit,
                        remaining,
                        reset: l.period * (quota.limit - remaining.min(quota.limit)),
                        retry_after: Duration::ZERO,
                    }
                }
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(l.keyed.clock().now());
                    RateDecision {
                        allowed: false,
                        limit: quota.limit,
                        remaining: 0,
                        reset: wait + l.period * (quota.limit - cost.min(quota.limit)),
                        retry_after: wait,
                    }
                }
                Err(_) => {
                    return Err(format!(
                        "cost {cost} exceeds the quota limit {}",
                        quota.limit
                    ));
                }
            };
            Ok(d)
        })();
        Box::pin(async move { r })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Host for HostState {
    async fn check(
        &mut self,
        name: String,
        key: String,
        quota: WitQuota,
        cost: u32,
    ) -> Result<Decision, String> {
        let quota = RateQuota {
            limit: quota.limit,
            window: Duration::from_millis(quota.window_ms),
        };
        self.host_call_begin();
        let plugin = self.plugin.clone();
        let r = plugin
            .services
            .limiter
            .check(&plugin.kv_namespace, &name, &key, quota, cost)
            .await;
        self.host_call_end();
        r.map(|d| Decision {
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            reset_ms: millis(d.reset),
            retry_after_ms: millis(d.retry_after),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gcra_allows_burst_then_denies_with_retry_after() {
        let l = InProcessLimiter::default();
        let q = RateQuota {
            limit: 3,
            window: Duration::from_secs(60),
        };
        for expected_remaining in [2, 1, 0] {
            let d = l.check("ns", "api", "k", q, 1).await.unwrap();
            assert!(d.allowed);
            assert_eq!(d.remaining, expected_remaining);
            assert_eq!(d.limit, 3);
        }
        let d = l.check("ns", "api", "k", q, 1).await.unwrap();
        assert!(!d.allowed);
        assert!(
            d.retry_after > Duration::from_secs(15) && d.retry_after <= Duration::from_secs(20),
            "{d:?}"
        );
        // Other keys, names and namespaces have their own buckets.
        assert!(l.check("ns", "api", "other", q, 1).await.unwrap().allowed);
        assert!(l.check("ns", "other", "k", q, 1).await.unwrap().allowed);
        assert!(l.check("ns2", "api", "k", q, 1).await.unwrap().allowed);
        assert!(l.check("ns", "api", "k", q, 4).await.is_err());
        assert!(
            l.check(
                "ns",
                "api",
                "k",
                RateQuota {
                    limit: 0,
                    window: q.window
                },
                1
            )
            .await
            .is_err()
        );
    }
}
