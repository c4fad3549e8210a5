//! Load-balancing policies. All are lock-free on the request path.

use super::Target;
use crate::config::LbPolicy;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Virtual nodes per unit of weight on the consistent-hash ring.
const VNODES: u32 = 160;

pub enum Balancer {
    /// Smooth weighted round robin, precomputed as a schedule of target indexes.
    RoundRobin {
        schedule: Vec<usize>,
        next: AtomicUsize,
    },
    /// Power of two random choices on in-flight requests.
    LeastRequest,
    /// Ring of (point, target); falls back to round robin when a request has no key.
    ConsistentHash {
        ring: Vec<(u64, usize)>,
        schedule: Vec<usize>,
        next: AtomicUsize,
    },
}

/// Stable 64-bit hash (SipHash with fixed keys) so every Weir process agrees.
pub fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

fn smooth_schedule(targets: &[Arc<Target>]) -> Vec<usize> {
    let total: i64 = targets.iter().map(|t| t.weight as i64).sum();
    let len = total.clamp(1, 10_000) as usize;
    let mut current = vec![0i64; targets.len()];
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        let mut best = 0;
        for (i, t) in targets.iter().enumerate() {
            current[i] += t.weight as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        if let Some(c) = current.get_mut(best) {
            *c -= total;
        }
        out.push(best);
    }
    out
}

impl Balancer {
    pub fn new(policy: LbPolicy, targets: &[Arc<Target>]) -> Self {
        match policy {
            LbPolicy::RoundRobin => Balancer::RoundRobin {
                schedule: smooth_schedule(targets),
                next: AtomicUsize::new(0),
            },
            LbPolicy::LeastRequest => Balancer::LeastRequest,
            LbPolicy::ConsistentHash => {
                let mut ring = Vec::new();
                for (i, t) in targets.iter().enumerate() {
                    let id = t.url.to_string();
                    for v in 0..VNODES * t.weight {
                        ring.push((hash_bytes(format!("{id}#{v}").as_bytes()), i));
                    }
                }
                ring.sort_unstable();
                Balancer::ConsistentHash {
                    ring,
                    schedule: smooth_schedule(targets),
                    next: AtomicUsize::new(0),
                }
            }
        }
    }

    /// `retry` picks leave the shared round-robin cursor alone, so a retry does not take the
    /// next request's turn (which would push that request onto the target that just failed).
    pub fn pick(
        &self,
        targets: &[Arc<Target>],
        key: Option<u64>,
        retry: bool,
        ok: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        match self {
            Balancer::RoundRobin { schedule, next } => rr(schedule, next, retry, ok),
            Balancer::LeastRequest => {
                let avail: Vec<usize> = (0..targets.len()).filter(|i| ok(*i)).collect();
                match avail.len() {
                    0 => None,
                    1 => Some(avail[0]),
                    n => {
                        let a = rand::random_range(0..n);
                        let mut b = rand::random_range(0..n - 1);
                        if b >= a {
                            b += 1;
                        }
                        let (ta, tb) = (avail[a], avail[b]);
                        let load = |i: usize| {
                            // Weighted: in-flight per unit of weight.
                            let t = &targets[i];
                            (t.in_flight.load(Ordering::Relaxed) as u64 * 1000)
                                / t.weight.max(1) as u64
                        };
                        Some(if load(tb) < load(ta) { tb } else { ta })
                    }
                }
            }
            Balancer::ConsistentHash {
                ring,
                schedule,
                next,
            } => match key {
                None => rr(schedule, next, retry, ok),
                Some(k) => {
                    if ring.is_empty() {
                        return None;
                    }
                    let start = ring.partition_point(|(p, _)| *p < k);
                    (0..ring.len())
                        .map(|off| ring[(start + off) % ring.len()].1)
                        .find(|i| ok(*i))
                }
            },
        }
    }
}

fn rr(
    schedule: &[usize],
    next: &AtomicUsize,
    retry: bool,
    ok: &dyn Fn(usize) -> bool,
) -> Option<usize> {
    if schedule.is_empty() {
        return None;
    }
    if retry {
        let start = next.load(Ordering::Relaxed);
        return (0..schedule.len())
            .map(|i| schedule[(start + i) % schedule.len()])
            .find(|i| ok(*i));
    }
    for _ in 0..schedule.len() {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let i = schedule[n % schedule.len()];
        if ok(i) {
            return Some(i);
        }
    }
    None
}
