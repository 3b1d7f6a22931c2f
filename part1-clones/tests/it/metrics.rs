//! `/metrics` parses as Prometheus's text format and carries what the live
//! page reads: requests by route *template* (never the raw path), and the
//! latency histogram's buckets. `/health` and `/metrics` are not counted.
//!
//! The recorder is one per process and tests run in parallel in this
//! binary, so counts are read as "at least what this test sent".

use crate::support::{fresh_username, spawn_app};

/// One sample line: `name{labels} value`, or `name value`.
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parses the text format strictly enough to catch a malformed page:
/// HELP/TYPE comments well formed, each sample `name{k="v",...} value`.
fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let metric_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !s.starts_with(|c: char| c.is_ascii_digit())
    };
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), Some(_)) if metric_name(name) => {}
                (Some("TYPE"), Some(name), Some(kind))
                    if metric_name(name)
                        && ["counter", "gauge", "histogram", "summary", "untyped"]
                            .contains(&kind) => {}
                _ => return Err(format!("bad comment line: {line}")),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("no value: {line}"))?;
        let value: f64 = value.parse().map_err(|_| format!("bad value in: {line}"))?;
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .ok_or_else(|| format!("unclosed labels: {line}"))?;
                let mut labels = Vec::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once("=\"")
                        .ok_or_else(|| format!("bad label in: {line}"))?;
                    if !metric_name(k) {
                        return Err(format!("bad label name {k:?} in: {line}"));
                    }
                    labels.push((k.to_owned(), v.trim_end_matches('"').to_owned()));
                }
                (name, labels)
            }
        };
        if !metric_name(name) {
            return Err(format!("bad metric name in: {line}"));
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(samples)
}

fn label<'a>(s: &'a Sample, key: &str) -> Option<&'a str> {
    s.labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

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
                && label(s, "route") == Some("/users/{username}/avatar")
                && label(s, "method") == Some("GET")
                && label(s, "status") == Some("404")
        })
        .unwrap_or_else(|| panic!("no avatar series:\n{text}"));
    assert!(avatar.value >= 3.0, "{}", avatar.value);
    assert!(
        samples.iter().any(|s| s.name == "lab_http_requests_total"
            && label(s, "route") == Some("unmatched")
            && label(s, "status") == Some("404")),
        "no unmatched series:\n{text}"
    );
    assert!(
        !text.contains(&nobody),
        "a raw path leaked into a label:\n{text}"
    );
    assert!(
        !samples
            .iter()
            .any(|s| matches!(label(s, "route"), Some("/health" | "/metrics"))),
        "polls are not traffic:\n{text}"
    );
    assert!(text.contains("# TYPE lab_http_request_duration_seconds histogram"));
    let buckets: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == "lab_http_request_duration_seconds_bucket"
                && label(s, "route") == Some("/users/{username}/avatar")
        })
        .collect();
    assert!(buckets.len() > 2, "no buckets:\n{text}");
    let inf = buckets
        .iter()
        .find(|s| label(s, "le") == Some("+Inf"))
        .expect("a +Inf bucket");
    assert!(inf.value >= 3.0);
    app.stop().await;
}
