//! Active health checks: one task per upstream that has `health` configured. The task holds only
//! a `Weak` reference, so it ends by itself when a reload drops the upstream.

use super::Upstream;
use crate::body;
use std::sync::{Arc, Weak};

pub fn spawn(upstream: &Arc<Upstream>) {
    let Some(spec) = upstream.spec.health.clone() else {
        return;
    };
    let weak: Weak<Upstream> = Arc::downgrade(upstream);
    tokio::spawn(async move {
        let n = match weak.upgrade() {
            Some(u) => u.targets.len(),
            None => return,
        };
        let mut ok_streak = vec![0u32; n];
        let mut fail_streak = vec![0u32; n];
        let mut tick = tokio::time::interval(spec.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(up) = weak.upgrade() else { return };
            let checks = (0..up.targets.len()).map(|i| {
                let up = &up;
                let timeout = spec.timeout;
                let path = spec.path.as_str();
                async move {
                    let Ok(req) = http::Request::get(path).body(body::empty()) else {
                        return false;
                    };
                    match tokio::time::timeout(timeout, up.request(i, req)).await {
                        Ok(Ok(res)) => res.status().is_success() || res.status().is_redirection(),
                        _ => false,
                    }
                }
            });
            let results = futures::future::join_all(checks).await;
            for (i, ok) in results.into_iter().enumerate() {
                if ok {
                    ok_streak[i] += 1;
                    fail_streak[i] = 0;
                    if ok_streak[i] >= spec.healthy_after {
                        up.set_healthy(i, true);
                    }
                } else {
                    fail_streak[i] += 1;
                    ok_streak[i] = 0;
                    if fail_streak[i] >= spec.unhealthy_after {
                        up.set_healthy(i, false);
                    }
                }
            }
        }
    });
}
