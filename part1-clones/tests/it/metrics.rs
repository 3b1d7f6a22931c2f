//! `/metrics` parses as Prometheus's text format and carries what the live
//! page reads: requests by route *template* (never the raw path), and the
//! latency histogram's buckets. `/health` and `/metrics` are not counted.
//!
//! The recorder is one per process and tests run in parallel in this
//! binary, so counts are read as "at least what this test sent".

use common::testing::prometheus::{Sample, parse};

use crate::support::{fresh_username, spawn_app};

#[tokio::test]
async fn metrics_parse_and_count_requests_by_route_template() {
    let app = spawn_app("redis", |_| {}).await;
    let http = reqwest::Client::new();
    let nobody = fresh_username();
    for _ in 0..3 {
        let r = http
            .get(format!("{}/users/{nobody}/avatar", app.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    let r = http
        .get(format!("{}/no/such/{nobody}", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    http.get(format!("{}/health", app.url))
        .send()
        .await
        .unwrap();

    let r = http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let kind = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("text/plain"), "{kind}");
    let text = r.text().await.unwrap();
    let samples = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

    let avatar = samples
        .iter()
        .find(|s| {
            s.name == "lab_http_requests_total"
                && s.label("route") == Some("/users/{username}/avatar")
                && s.label("method") == Some("GET")
                && s.label("status") == Some("404")
        })
        .unwrap_or_else(|| panic!("no avatar series:\n{text}"));
    assert!(avatar.value >= 3.0, "{}", avatar.value);
    assert!(
        samples.iter().any(|s| s.name == "lab_http_requests_total"
            && s.label("route") == Some("unmatched")
            && s.label("status") == Some("404")),
        "no unmatched series:\n{text}"
    );
    assert!(
        !text.contains(&nobody),
        "a raw path leaked into a label:\n{text}"
    );
    assert!(
        !samples
            .iter()
            .any(|s| matches!(s.label("route"), Some("/health" | "/metrics"))),
        "polls are not traffic:\n{text}"
    );
    // The session series exist from the start (at 0), so the first event
    // shows as a rate on the live page.
    for event in ["created", "found", "missing", "ended"] {
        assert!(
            samples.iter().any(|s| s.name == "lab_sessions_total"
                && s.label("event") == Some(event)
                && s.label("store") == Some("redis")),
            "no lab_sessions_total{{event={event}}}:\n{text}"
        );
    }
    assert!(text.contains("# TYPE lab_http_request_duration_seconds histogram"));
    let buckets: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == "lab_http_request_duration_seconds_bucket"
                && s.label("route") == Some("/users/{username}/avatar")
        })
        .collect();
    assert!(buckets.len() > 2, "no buckets:\n{text}");
    let inf = buckets
        .iter()
        .find(|s| s.label("le") == Some("+Inf"))
        .expect("a +Inf bucket");
    assert!(inf.value >= 3.0);
    app.stop().await;
}
