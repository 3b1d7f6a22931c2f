//! Readiness follows the session store: a Redis of this test's own is
//! stopped and started again (the shared one is never touched).

use std::process::Stdio;
use std::time::Duration;

use crate::support::spawn_app;

async fn start_redis(port: u16, dir: &std::path::Path) -> tokio::process::Child {
    let child = tokio::process::Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server (installed by ./lab up)");
    common::testing::redis_at(&format!("redis://127.0.0.1:{port}"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    child
}

async fn ready_status(http: &reqwest::Client, url: &str) -> u16 {
    http.get(format!("{url}/ready"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn wait_for(http: &reqwest::Client, url: &str, want: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = ready_status(http, url).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready stayed {got}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn not_ready_without_redis_and_ready_again_when_it_returns() {
    let port = part1_clones::cluster::free_port().unwrap();
    let dir = std::env::temp_dir().join(common::testing::unique_name("redis"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut redis = start_redis(port, &dir).await;
    let app = spawn_app("redis", |c| {
        c.stack.redis_url = format!("redis://127.0.0.1:{port}")
    })
    .await;
    let http = part1_clones::client::http();
    assert_eq!(ready_status(&http, &app.url).await, 200);

    redis.start_kill().unwrap();
    redis.wait().await.unwrap();
    wait_for(&http, &app.url, 503).await;
    let res = http.get(format!("{}/ready", app.url)).send().await.unwrap();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        body["error"], "the session store is unavailable",
        "a clear error, no internals"
    );
    // Alive all the same: the load balancer must not kill it for this.
    assert_eq!(
        http.get(format!("{}/health", app.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // A logged-out request gets 401 and a session request 503, never a 500.
    let res = http
        .get(format!("{}/me", app.url))
        .header("cookie", format!("sid={}", "a".repeat(64)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);

    let _redis = start_redis(port, &dir).await;
    wait_for(&http, &app.url, 200).await;
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
