//! Fan-out and aggregation: one client call, several real backends (fast, slow, failing).

use std::time::{Duration, Instant};
use weir_testkit::{TestClient, TestGateway, TestUpstream, UpstreamBehavior};

fn slow(d: Duration) -> UpstreamBehavior {
    UpstreamBehavior {
        delay: d,
        delay_all: true,
        status: None,
    }
}

fn failing() -> UpstreamBehavior {
    UpstreamBehavior {
        status: Some(500),
        ..Default::default()
    }
}

fn config(fast: &TestUpstream, slow: &TestUpstream, bad: &TestUpstream, backends: &str) -> String {
    format!(
        r#"
version = 1
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[upstreams.fast]
targets = [{{ url = "{}" }}]
[upstreams.slow]
targets = [{{ url = "{}" }}]
[upstreams.bad]
targets = [{{ url = "{}" }}]
[[routes]]
name = "dash"
match = {{ path = "/dash" }}
timeout = "5s"
aggregate = [{backends}]
"#,
        fast.url(),
        slow.url(),
        bad.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_merge_and_latency_close_to_slowest() {
    let fast = TestUpstream::start("fast").await;
    let slow_a = TestUpstream::start_with("slow-a", slow(Duration::from_millis(600))).await;
    let bad = TestUpstream::start_with("bad", failing()).await;
    // Three slow backends of 600 ms each: sequential would take >= 1.8 s.
    let gw = TestGateway::start(&config(
        &fast,
        &slow_a,
        &bad,
        r#"{ upstream = "fast", path = "/profile", group = "profile", headers = ["authorization"], query = ["id"] },
           { upstream = "slow", path = "/orders", group = "orders" },
           { upstream = "slow", path = "/recs", group = "recs" },
           { upstream = "slow", path = "/ads", group = "ads" }"#,
    ))
    .await;
    let c = TestClient::new();
    let t = Instant::now();
    let r = c
        .get_with(
            &gw.url("/dash?id=7&secret=x"),
            &[("authorization", "Bearer abc"), ("x-other", "no")],
        )
        .await;
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    // Each answer under its group, exactly.
    assert_eq!(v["profile"]["service"], "fast");
    assert_eq!(v["profile"]["path"], "/profile");
    assert_eq!(
        v["profile"]["query"], "id=7",
        "only configured query params are forwarded"
    );
    assert_eq!(v["profile"]["headers"]["authorization"], "Bearer abc");
    assert!(
        v["profile"]["headers"].get("x-other").is_none(),
        "unlisted headers are not forwarded"
    );
    assert_eq!(v["orders"]["path"], "/orders");
    assert_eq!(
        v["orders"]["query"], "id=7&secret=x",
        "without `query` the whole query is forwarded"
    );
    assert_eq!(v["recs"]["path"], "/recs");
    assert_eq!(v["ads"]["path"], "/ads");
    assert_eq!(v.as_object().unwrap().len(), 4);
    assert!(r.header("x-weir-partial").is_none());
    // Concurrency: close to the slowest (600 ms), far from the sum (1.8 s).
    assert!(took >= Duration::from_millis(600), "{took:?}");
    assert!(
        took < Duration::from_millis(1500),
        "backends were not called concurrently: {took:?}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_merge_optional_failure_and_required_failure() {
    let fast = TestUpstream::start("fast").await;
    let slow_a = TestUpstream::start_with("slow", slow(Duration::from_millis(100))).await;
    let bad = TestUpstream::start_with("bad", failing()).await;

    // Merged at the root (no group); an optional failing backend is left out and listed.
    let gw = TestGateway::start(&config(
        &fast,
        &slow_a,
        &bad,
        r#"{ upstream = "fast", path = "/a" },
           { upstream = "bad", path = "/b", group = "extras", required = false }"#,
    ))
    .await;
    let c = TestClient::new();
    let r = c.get(&gw.url("/dash")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        v["service"], "fast",
        "root merge puts the backend's keys at the top level"
    );
    assert!(v.get("extras").is_none());
    assert_eq!(r.header("x-weir-partial"), Some("extras"));
    gw.shutdown().await;

    // A required failing backend fails the call with 502 naming it.
    let gw = TestGateway::start(&config(
        &fast,
        &slow_a,
        &bad,
        r#"{ upstream = "fast", path = "/a", group = "a" },
           { upstream = "bad", path = "/b", group = "billing" }"#,
    ))
    .await;
    let r = c.get(&gw.url("/dash")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert!(r.text().contains("billing"), "{}", r.text());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_fire_at_their_configured_values() {
    let fast = TestUpstream::start("fast").await;
    let slow_a = TestUpstream::start_with("slow", slow(Duration::from_secs(3))).await;
    let bad = TestUpstream::start_with("bad", failing()).await;
    let c = TestClient::new();

    // Required backend with a 300 ms timeout → 504 naming it, after ~300 ms (not 3 s).
    let gw = TestGateway::start(&config(
        &fast,
        &slow_a,
        &bad,
        r#"{ upstream = "fast", path = "/a", group = "a" },
           { upstream = "slow", path = "/s", group = "inventory", timeout = "300ms" }"#,
    ))
    .await;
    let t = Instant::now();
    let r = c.get(&gw.url("/dash")).await;
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("inventory"));
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    gw.shutdown().await;

    // Optional backend times out → left out, the rest answered after ~its timeout.
    let gw = TestGateway::start(&config(
        &fast,
        &slow_a,
        &bad,
        r#"{ upstream = "fast", path = "/a", group = "a" },
           { upstream = "slow", path = "/s", group = "inventory", timeout = "300ms", required = false }"#,
    ))
    .await;
    let t = Instant::now();
    let r = c.get(&gw.url("/dash")).await;
    let took = t.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-weir-partial"), Some("inventory"));
    assert_eq!(r.json()["a"]["service"], "fast");
    assert!(took < Duration::from_millis(2500), "{took:?}");

    // Metrics per backend.
    let m = c
        .get(&format!("http://{}/metrics", gw.admin()))
        .await
        .text();
    assert!(
        m.lines()
            .any(|l| l.starts_with("weir_aggregate_backend_calls_total")
                && l.contains("backend=\"inventory\"")
                && l.contains("outcome=\"timeout\"")),
        "{m}"
    );
    gw.shutdown().await;
}
