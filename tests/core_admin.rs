//! The admin listener: liveness, readiness, status JSON, the redacted config view, reloads, and
//! `/metrics` checked line by line against the requests actually made.

#![allow(clippy::unwrap_used)]

use http::Method;
use std::time::Duration;
use weir_testkit::extra_a::{PREAMBLE, admin_get, metric, parse_metrics, scrape};
use weir_testkit::{TestClient, TestGateway, TestUpstream, UpstreamBehavior, eventually};

/// Two routes to one upstream each: `api` (answers 200) and `teapot` (answers 418).
async fn gateway(extra: &str) -> (TestGateway, TestUpstream, TestUpstream) {
    let ok = TestUpstream::start("ok").await;
    let teapot = TestUpstream::start_with(
        "teapot",
        UpstreamBehavior {
            status: Some(418),
            ..UpstreamBehavior::default()
        },
    )
    .await;
    let toml = format!(
        "{PREAMBLE}\n[upstreams.pool]\ntargets = [{{ url = \"{}\" }}]\n\n\
         [upstreams.kettle]\ntargets = [{{ url = \"{}\" }}]\n\n\
         [[routes]]\nname = \"api\"\nmatch = {{ path_prefix = \"/api\" }}\nupstream = \"pool\"\n\n\
         [[routes]]\nname = \"teapot\"\nmatch = {{ path_prefix = \"/tea\" }}\nupstream = \"kettle\"\n\n{extra}\n",
        ok.url(),
        teapot.url()
    );
    (TestGateway::start(&toml).await, ok, teapot)
}

#[tokio::test]
async fn health_readiness_and_unknown_endpoints() {
    let (gw, _ok, _t) = gateway("").await;
    let r = admin_get(&gw, "/healthz").await;
    assert_eq!((r.status, r.text().trim()), (200, "ok"));
    let r = admin_get(&gw, "/readyz").await;
    assert_eq!((r.status, r.text().trim()), (200, "ready"));
    let r = admin_get(&gw, "/admin/nope").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    // The admin endpoints are not served on the public listener.
    let r = TestClient::new().get(&gw.url("/healthz")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["type"], "https://weir.dev/problems/no-route");
    gw.shutdown().await;
}

#[tokio::test]
async fn status_reports_routes_upstreams_and_reloads() {
    let (gw, ok, teapot) = gateway("").await;
    let r = admin_get(&gw, "/admin/status").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let s = r.json();
    assert_eq!(s["routes"], serde_json::json!(["api", "teapot"]));
    assert_eq!(s["draining"], false);
    assert_eq!(s["config_file"], gw.config_path.display().to_string());
    assert!(s["version"].as_str().is_some_and(|v| !v.is_empty()));
    assert_eq!(s["last_reload"]["ok"], true);
    assert_eq!(s["last_reload"]["generation"], 0);
    for (name, up) in [("pool", &ok), ("kettle", &teapot)] {
        let targets = s["upstreams"][name]["targets"].as_array().unwrap();
        assert_eq!(targets.len(), 1, "{s}");
        assert_eq!(targets[0]["url"], format!("{}/", up.url()));
        assert_eq!(targets[0]["healthy"], true);
        assert_eq!(targets[0]["available"], true);
        assert_eq!(targets[0]["in_flight"], 0);
    }

    // A broken reload is refused, reported with its location, and the old table keeps serving.
    let good = std::fs::read_to_string(&gw.config_path).unwrap();
    let bad = good.replace("upstream = \"kettle\"", "upstream = \"kettel\"");
    std::fs::write(&gw.config_path, &bad).unwrap();
    let client = TestClient::new();
    let admin = format!("http://{}/admin/reload", gw.admin());
    let r = client.send(Method::POST, &admin, &[], "").await.unwrap();
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["ok"], false);
    let s = admin_get(&gw, "/admin/status").await.json();
    assert_eq!(s["last_reload"]["ok"], false);
    // The file watcher may have seen the edit too; either way the same error is recorded.
    assert!(
        ["admin", "file-watch"].contains(&s["last_reload"]["trigger"].as_str().unwrap()),
        "{s}"
    );
    let err = s["last_reload"]["error"].as_str().unwrap();
    let line = bad.lines().position(|l| l.contains("kettel")).unwrap() + 1;
    assert!(
        err.contains(&format!("{}:{line}:", gw.config_path.display())) && err.contains("kettel"),
        "{err}"
    );
    assert_eq!(client.get(&gw.url("/tea")).await.status, 418);

    // Fixing the file and reloading applies the new routes.
    let renamed = good.replace("name = \"teapot\"", "name = \"kettle-route\"");
    std::fs::write(&gw.config_path, &renamed).unwrap();
    let r = client.send(Method::POST, &admin, &[], "").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let s = admin_get(&gw, "/admin/status").await.json();
    assert_eq!(s["last_reload"]["ok"], true);
    assert_eq!(s["routes"], serde_json::json!(["api", "kettle-route"]));
    gw.shutdown().await;
}

#[tokio::test]
async fn config_view_redacts_hmac_secrets() {
    let secrets = "[key_sets]\nspaced = { hmac_secret = \"inline-secret-2-0123456789abcdef0123456789\" }\n\n\
                   [key_sets.main]\nhmac_secret = \"table-secret-1-0123456789abcdef0123456789\"\n";
    let (gw, _ok, _t) = gateway(secrets).await;
    let r = admin_get(&gw, "/admin/config").await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(
        !text.contains("table-secret-1-0123456789abcdef0123456789"),
        "{text}"
    );
    assert!(
        !text.contains("inline-secret-2-0123456789abcdef0123456789"),
        "{text}"
    );
    assert!(text.contains("<redacted"));
    // The rest of the config is shown as written.
    assert!(text.contains("name = \"teapot\""), "{text}");
    gw.shutdown().await;
}

/// Secrets written in other valid TOML forms must not leak either, and the view should remain
/// the same document (valid TOML, same structure) with only secret values replaced.
#[tokio::test]
async fn config_view_redacts_secrets_in_every_toml_form() {
    let secrets = "[key_sets]\ntight = { hmac_secret=\"tight-secret-3-0123456789abcdef0123456789\" }\n\
                   quoted = { \"hmac_secret\" = \"quoted-secret-4-0123456789abcdef0123456789\" }\n\n\
                   [key_sets.multi]\nhmac_secret = \"\"\"\nmultiline-secret-5-0123456789abcdef0123456789\"\"\"\n";
    let (gw, _ok, _t) = gateway(secrets).await;
    let text = admin_get(&gw, "/admin/config").await.text();
    let leaked: Vec<&str> = ["tight", "quoted", "multiline"]
        .into_iter()
        .filter(|s| text.contains(&format!("{s}-secret-")))
        .collect();
    assert!(leaked.is_empty(), "{leaked:?} secrets leaked:\n{text}");
    // Still the same, valid config: only the secret values differ.
    let cfg = weir::config::parse(&text, "view", gw.dir.path(), None)
        .unwrap_or_else(|e| panic!("the redacted view no longer validates: {e}\n{text}"));
    for name in ["tight", "quoted", "multi"] {
        assert_eq!(
            cfg.key_sets[name].hmac_secret.as_deref(),
            Some("<redacted-by-the-weir-admin-config-view>"),
            "{text}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn metrics_parse_and_count_every_request() {
    let (gw, _ok, _t) = gateway("").await;
    let client = TestClient::new();
    for i in 0..25 {
        assert_eq!(client.get(&gw.url(&format!("/api/{i}"))).await.status, 200);
    }
    for _ in 0..4 {
        assert_eq!(client.get(&gw.url("/tea/pot")).await.status, 418);
    }
    for _ in 0..3 {
        assert_eq!(client.get(&gw.url("/nowhere")).await.status, 404);
    }

    // Requests are counted once their body is sent, so allow the last ones a moment.
    let counted = |samples: &[weir_testkit::extra_a::Sample]| {
        metric(
            samples,
            "weir_requests_total",
            &[("route", "api"), ("status", "200")],
        )
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            counted(&scrape(&gw).await) == Some(25.0)
        })
        .await,
        "weir_requests_total{{route=\"api\",status=\"200\"}} never reached 25"
    );
    let s = scrape(&gw).await;
    assert_eq!(counted(&s), Some(25.0));
    assert_eq!(
        metric(
            &s,
            "weir_requests_total",
            &[("route", "teapot"), ("status", "418")]
        ),
        Some(4.0)
    );
    assert_eq!(
        metric(
            &s,
            "weir_requests_total",
            &[("route", "-"), ("status", "404")]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &s,
            "weir_requests_total",
            &[("route", "api"), ("status", "404")]
        ),
        None,
        "no sample for a status that never happened"
    );
    assert_eq!(
        metric(
            &s,
            "weir_request_duration_seconds_count",
            &[("route", "api")]
        ),
        Some(25.0)
    );
    let inf = metric(
        &s,
        "weir_request_duration_seconds_bucket",
        &[("route", "api"), ("le", "+Inf")],
    );
    assert_eq!(inf, Some(25.0));
    assert_eq!(
        metric(
            &s,
            "weir_upstream_requests_total",
            &[("upstream", "pool"), ("outcome", "2xx")]
        ),
        Some(25.0)
    );
    assert_eq!(
        metric(
            &s,
            "weir_upstream_requests_total",
            &[("upstream", "kettle"), ("outcome", "4xx")]
        ),
        Some(4.0)
    );
    assert_eq!(
        metric(&s, "weir_target_healthy", &[("upstream", "pool")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&s, "weir_config_reloads_total", &[("result", "ok")]),
        None,
        "no reload happened yet"
    );

    // Histogram buckets are cumulative and end with +Inf.
    let mut buckets: Vec<(f64, f64)> = s
        .iter()
        .filter(|x| {
            x.name == "weir_request_duration_seconds_bucket"
                && x.labels.get("route").map(String::as_str) == Some("api")
        })
        .map(|x| {
            (
                x.labels["le"].parse::<f64>().unwrap_or(f64::INFINITY),
                x.value,
            )
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 3);
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(buckets.last().unwrap().0, f64::INFINITY);

    // The exposition is OpenMetrics: the content type says so and it ends with # EOF.
    let r = admin_get(&gw, "/metrics").await;
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        r.header("content-type")
    );
    assert_eq!(r.text().lines().last(), Some("# EOF"));

    // More traffic moves the counter by exactly that much.
    for _ in 0..5 {
        client.get(&gw.url("/api/x")).await;
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            counted(&scrape(&gw).await) == Some(30.0)
        })
        .await
    );
    gw.shutdown().await;
}

/// The upstream latency histogram says "by upstream" but labels the upstream name `route`.
#[tokio::test]
async fn upstream_latency_is_labelled_by_upstream() {
    let (gw, _ok, _t) = gateway("").await;
    let client = TestClient::new();
    for _ in 0..3 {
        client.get(&gw.url("/api")).await;
    }
    let s = scrape(&gw).await;
    assert_eq!(
        metric(
            &s,
            "weir_upstream_duration_seconds_count",
            &[("upstream", "pool")]
        ),
        Some(3.0)
    );
    gw.shutdown().await;
}

#[test]
fn metrics_parser_accepts_openmetrics_and_rejects_garbage() {
    let text = "# HELP weir_requests Requests.\n# TYPE weir_requests counter\n\
                weir_requests_total{route=\"a\",status=\"200\"} 3\n\
                weir_up 1\n\
                weir_h_bucket{le=\"+Inf\",q=\"a\\\"b\"} 2 # {trace_id=\"x\"} 0.5\n# EOF\n";
    let s = parse_metrics(text).unwrap();
    assert_eq!(s.len(), 3);
    assert_eq!(
        metric(
            &s,
            "weir_requests_total",
            &[("route", "a"), ("status", "200")]
        ),
        Some(3.0)
    );
    assert_eq!(metric(&s, "weir_up", &[]), Some(1.0));
    assert_eq!(metric(&s, "weir_h_bucket", &[("q", "a\"b")]), Some(2.0));
    for bad in [
        "weir_x{route=\"a\"} abc\n",
        "weir_x{route=a} 1\n",
        "9weir 1\n",
        "weir_x 1\n# EOF\nweir_y 2\n",
        "weir_x{a=\"1\",a=\"2\"} 1\n",
        "weir_x\n",
        "weir_x{a=\"1\" 1\n",
        "weir_x 1 2 3\n",
    ] {
        assert!(parse_metrics(bad).is_err(), "accepted {bad:?}");
    }
}
