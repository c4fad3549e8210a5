//! Load balancing, health and failure handling against real upstreams: round robin, weights,
//! least-request, consistent hashing across a reload, ejection of a killed target and its
//! return, the concurrency breaker, and route timeouts.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use weir_testkit::extra_a::{PREAMBLE, admin_get, metric, scrape, served_by, spread};
use weir_testkit::{TestClient, TestGateway, TestUpstream, UpstreamBehavior, eventually};

/// A config with one upstream `pool` over `targets` (`(url, weight)`), extra upstream keys, and a
/// catch-all route `all` with extra route keys.
fn pool_config(targets: &[(String, u32)], upstream_extra: &str, route_extra: &str) -> String {
    let list: Vec<String> = targets
        .iter()
        .map(|(u, w)| format!("{{ url = \"{u}\", weight = {w} }}"))
        .collect();
    format!(
        "{PREAMBLE}\n[upstreams.pool]\ntargets = [{}]\n{upstream_extra}\n\n\
         [[routes]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"pool\"\n{route_extra}\n",
        list.join(", ")
    )
}

fn slow(delay: Duration) -> UpstreamBehavior {
    UpstreamBehavior {
        delay,
        ..UpstreamBehavior::default()
    }
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let ups = [
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
        TestUpstream::start("c").await,
    ];
    let targets: Vec<_> = ups.iter().map(|u| (u.url(), 1)).collect();
    let gw = TestGateway::start(&pool_config(&targets, "lb = \"round_robin\"", "")).await;
    let counts = spread(&TestClient::new(), &gw.url("/x"), &[], 300).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    for name in ["a", "b", "c"] {
        assert_eq!(counts.get(name), Some(&100), "{counts:?}");
    }
    // Round robin rotates request by request, not in bursts.
    let client = TestClient::new();
    let mut seq = Vec::new();
    for _ in 0..6 {
        seq.push(served_by(&client.get(&gw.url("/x")).await).unwrap());
    }
    for w in seq.windows(2) {
        assert_ne!(
            w[0], w[1],
            "consecutive requests hit the same target: {seq:?}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn weighted_round_robin_is_three_to_one() {
    let a = TestUpstream::start("heavy").await;
    let b = TestUpstream::start("light").await;
    let gw = TestGateway::start(&pool_config(&[(a.url(), 3), (b.url(), 1)], "", "")).await;
    let counts = spread(&TestClient::new(), &gw.url("/w"), &[], 400).await;
    let heavy = counts.get("heavy").copied().unwrap_or(0);
    let light = counts.get("light").copied().unwrap_or(0);
    assert_eq!(heavy + light, 400, "{counts:?}");
    assert!((290..=310).contains(&heavy), "{counts:?}");
    assert!((90..=110).contains(&light), "{counts:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn least_request_prefers_the_idle_target() {
    // Both targets hold `/slow` requests for 4 s.
    let a = TestUpstream::start_with("a", slow(Duration::from_secs(4))).await;
    let b = TestUpstream::start_with("b", slow(Duration::from_secs(4))).await;
    let gw = TestGateway::start(&pool_config(
        &[(a.url(), 1), (b.url(), 1)],
        "lb = \"least_request\"",
        "",
    ))
    .await;
    let client = TestClient::new();
    let slow_url = gw.url("/slow/1");
    let c = client.clone();
    let held = tokio::spawn(async move { c.get(&slow_url).await });
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.in_flight.load(Ordering::SeqCst) + b.in_flight.load(Ordering::SeqCst) == 1
        })
        .await,
        "the slow request never reached an upstream"
    );
    let (busy, idle) = if a.in_flight.load(Ordering::SeqCst) == 1 {
        ("a", "b")
    } else {
        ("b", "a")
    };
    let counts = spread(&client, &gw.url("/fast"), &[], 60).await;
    assert_eq!(
        counts,
        HashMap::from([(idle.to_string(), 60)]),
        "{busy} has a request in flight; every fast request should go to {idle}"
    );
    let r = held.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(served_by(&r).as_deref(), Some(busy));
    // Once both are idle again, both receive traffic.
    let counts = spread(&client, &gw.url("/fast"), &[], 200).await;
    assert!(
        counts.get("a").copied().unwrap_or(0) >= 40 && counts.get("b").copied().unwrap_or(0) >= 40,
        "{counts:?}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn consistent_hash_is_sticky_and_only_removed_keys_move() {
    let ups = [
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
        TestUpstream::start("c").await,
    ];
    let targets: Vec<_> = ups.iter().map(|u| (u.url(), 1)).collect();
    let hash = "lb = \"consistent_hash\"\nhash_on = \"header:x-user\"";
    let gw = TestGateway::start(&pool_config(&targets, hash, "")).await;
    let client = TestClient::new();
    let url = gw.url("/session");
    let keys: Vec<String> = (0..120).map(|i| format!("user-{i}")).collect();

    let mut before: HashMap<String, String> = HashMap::new();
    for k in &keys {
        let counts = spread(&client, &url, &[("x-user", k)], 3).await;
        assert_eq!(counts.len(), 1, "key {k} spread over {counts:?}");
        before.insert(k.clone(), counts.into_keys().next().unwrap());
    }
    for name in ["a", "b", "c"] {
        let n = before.values().filter(|v| *v == name).count();
        assert!(
            n >= 15,
            "target {name} owns only {n} of 120 keys: ring badly skewed"
        );
    }

    // Remove target c by reloading a config without it.
    let remaining: Vec<_> = targets[..2].to_vec();
    std::fs::write(&gw.config_path, pool_config(&remaining, hash, "")).unwrap();
    gw.gateway().reload("test").await.unwrap();

    let mut moved = 0;
    for k in &keys {
        let counts = spread(&client, &url, &[("x-user", k)], 2).await;
        assert_eq!(
            counts.len(),
            1,
            "key {k} spread over {counts:?} after reload"
        );
        let now = counts.into_keys().next().unwrap();
        let was = &before[k];
        if was == "c" {
            assert_ne!(now, "c", "key {k} still on the removed target");
            moved += 1;
        } else {
            assert_eq!(&now, was, "key {k} moved although its target stayed");
        }
    }
    assert!(moved >= 15);
    gw.shutdown().await;
}

#[tokio::test]
async fn killed_target_is_ejected_without_errors_and_comes_back() {
    let a = TestUpstream::start("a").await;
    let mut b = TestUpstream::start("b").await;
    let b_addr = b.addr;
    let toml = pool_config(
        &[(a.url(), 1), (b.url(), 1)],
        "health = { path = \"/health\", interval = \"200ms\", unhealthy_after = 2, healthy_after = 1 }",
        "retries = { attempts = 2, on = [\"connect-failure\"] }",
    );
    let gw = TestGateway::start(&toml).await;
    let client = TestClient::new();
    let url = gw.url("/api");

    let counts = spread(&client, &url, &[], 20).await;
    assert_eq!(counts.get("a"), Some(&10), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&10), "{counts:?}");

    // Kill b while four clients keep sending: 200 requests, none may fail.
    b.kill();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (client, url) = (TestClient::new(), url.clone());
            tokio::spawn(async move { spread(&client, &url, &[], 50).await })
        })
        .collect();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for w in workers {
        for (k, n) in w.await.unwrap() {
            *counts.entry(k).or_insert(0) += n;
        }
    }
    assert_eq!(
        counts,
        HashMap::from([("a".to_string(), 200)]),
        "with retries on connect-failure, a dead target must cost no errors"
    );

    // Active checks mark it down.
    let b_url = format!("http://{b_addr}/");
    let target_state = |field: &'static str| {
        let gw = &gw;
        let b_url = b_url.clone();
        async move {
            let s = admin_get(gw, "/admin/status").await.json();
            s["upstreams"]["pool"]["targets"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["url"] == b_url.as_str())
                .map(|t| t[field].as_bool().unwrap())
                .unwrap()
        }
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            !target_state("healthy").await
        })
        .await,
        "health checks never marked the dead target unhealthy"
    );
    let counts = spread(&client, &url, &[], 50).await;
    assert_eq!(counts, HashMap::from([("a".to_string(), 50)]));

    // Bring b back on the same address: one good check makes it available again.
    let _b2 = TestUpstream::start_at("b", b_addr, UpstreamBehavior::default()).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            target_state("available").await
        })
        .await,
        "the restarted target never became available"
    );
    let counts = spread(&client, &url, &[], 40).await;
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!(counts.get("b").copied().unwrap_or(0) >= 15, "{counts:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn circuit_breaker_answers_503_when_full() {
    let u = TestUpstream::start_with("only", slow(Duration::from_secs(2))).await;
    let gw = TestGateway::start(&pool_config(&[(u.url(), 1)], "max_concurrent = 1", "")).await;
    let client = TestClient::new();
    let c = client.clone();
    let slow_url = gw.url("/slow");
    let held = tokio::spawn(async move { c.get(&slow_url).await });
    assert!(
        eventually(Duration::from_secs(5), || async {
            u.in_flight.load(Ordering::SeqCst) == 1
        })
        .await
    );

    let r = client.get(&gw.url("/fast")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let j = r.json();
    assert_eq!(j["status"], 503);
    assert_eq!(j["type"], "https://weir.dev/problems/upstream-overloaded");
    assert!(r.header("x-request-id").is_some());

    // The slow request itself was unaffected, and the slot frees once it finishes.
    assert_eq!(held.await.unwrap().status, 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            client.get(&gw.url("/fast")).await.status == 200
        })
        .await,
        "the breaker never closed again"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn route_timeout_answers_504() {
    let u = TestUpstream::start_with("sluggish", slow(Duration::from_secs(5))).await;
    let gw = TestGateway::start(&pool_config(&[(u.url(), 1)], "", "timeout = \"300ms\"")).await;
    let client = TestClient::new();

    let started = Instant::now();
    let r = client.get(&gw.url("/slow/report")).await;
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(
        r.json()["type"],
        "https://weir.dev/problems/upstream-timeout"
    );
    assert!(took < Duration::from_secs(3), "timeout took {took:?}");

    // Fast requests on the same route still succeed.
    let r = client.get(&gw.url("/quick")).await;
    assert_eq!(r.status, 200);
    gw.shutdown().await;
}

/// A pool with a live target `a` and an address that refuses connections, never ejected
/// (passive threshold out of reach, no active checks), with retries on connect failure.
async fn half_dead_pool() -> (TestGateway, TestUpstream) {
    let a = TestUpstream::start("a").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = TestGateway::start(&pool_config(
        &[(a.url(), 1), (format!("http://{dead}"), 1)],
        "passive = { consecutive_failures = 1000 }",
        "retries = { attempts = 2, on = [\"connect-failure\"] }",
    ))
    .await;
    (gw, a)
}

#[tokio::test]
async fn connect_failure_is_retried_on_another_target() {
    let (gw, _a) = half_dead_pool().await;
    // Round robin sends first tries to the dead address; 8 requests stay within the retry
    // budget's floor (10 retries per window), so every one must be rescued by a retry.
    let counts = spread(&TestClient::new(), &gw.url("/r"), &[], 8).await;
    assert_eq!(counts, HashMap::from([("a".to_string(), 8)]));
    let s = scrape(&gw).await;
    let refused = metric(
        &s,
        "weir_upstream_requests_total",
        &[("upstream", "pool"), ("outcome", "connect_error")],
    );
    assert!(
        refused.is_some_and(|n| n >= 4.0),
        "the dead target was never tried: {refused:?}"
    );
    gw.shutdown().await;
}

/// A retry must not consume the round-robin turn of the next request: with one dead target out
/// of two, it should see about half of the first tries, not nearly all of them.
#[tokio::test]
async fn retries_do_not_shift_round_robin_onto_the_dead_target() {
    let (gw, _a) = half_dead_pool().await;
    let counts = spread(&TestClient::new(), &gw.url("/r"), &[], 10).await;
    assert_eq!(counts, HashMap::from([("a".to_string(), 10)]));
    let s = scrape(&gw).await;
    let refused = metric(
        &s,
        "weir_upstream_requests_total",
        &[("upstream", "pool"), ("outcome", "connect_error")],
    );
    assert!(
        refused.is_some_and(|n| (4.0..=6.0).contains(&n)),
        "10 requests over 2 targets: the dead one should get ~5 first tries, got {refused:?}"
    );
    gw.shutdown().await;
}

/// A refused connection never reached the upstream, so retrying it is safe for any method and
/// any (small, buffered) body, as Envoy does for `connect-failure`.
#[tokio::test]
async fn connect_failure_retry_covers_posts_with_bodies() {
    let (gw, _a) = half_dead_pool().await;
    let client = TestClient::new();
    for i in 0..20 {
        let r = client
            .send(
                http::Method::POST,
                &gw.url("/orders"),
                &[],
                format!("order {i:02}"),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "POST #{i}: {}", r.text());
        assert_eq!(r.json()["body_len"], 8);
    }
    gw.shutdown().await;
}

/// When every target has been tried, the client gets the last try's own outcome: a refused
/// connection is a 502 `upstream-connect-failed`, and an upstream's 503 is relayed as it is, not
/// replaced by the gateway's "no healthy target".
#[tokio::test]
async fn retries_that_run_out_of_targets_report_the_last_outcome() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = TestGateway::start(&pool_config(
        &[(format!("http://{dead}"), 1)],
        "passive = { consecutive_failures = 1000 }",
        "retries = { attempts = 2, on = [\"connect-failure\", \"503\"] }",
    ))
    .await;
    let r = TestClient::new().get(&gw.url("/x")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        r.json()["type"],
        "https://weir.dev/problems/upstream-connect-failed"
    );
    // Which upstream, not how: socket and TLS errors stay in the gateway's log.
    assert_eq!(
        r.json()["detail"],
        "could not connect to upstream \"pool\"",
        "{}",
        r.text()
    );
    gw.shutdown().await;

    let busy = TestUpstream::start_with(
        "busy",
        UpstreamBehavior {
            status: Some(503),
            ..UpstreamBehavior::default()
        },
    )
    .await;
    let gw = TestGateway::start(&pool_config(
        &[(busy.url(), 1)],
        "passive = { consecutive_failures = 1000 }",
        "retries = { attempts = 2, on = [\"connect-failure\", \"503\"] }",
    ))
    .await;
    let r = TestClient::new().get(&gw.url("/x")).await;
    assert_eq!(r.status, 503);
    assert_eq!(served_by(&r).as_deref(), Some("busy"), "{}", r.text());
    assert_eq!(busy.hits.load(Ordering::SeqCst), 1);
    gw.shutdown().await;
}
