//! The live page (issue 10) in a real browser, against the lab's own stack:
//! what an instructor projects while a drill runs.
//!
//! Unlike every other test here, this one uses the lab's shared app tier:
//! Prometheus scrapes the clones `./lab up partN` started, by their pinned
//! ports, so there is nothing private to start. It needs any part's clones
//! up (`./lab test` runs it after its self-test has left part 2's), and it
//! is the one test that stops one of them: it starts it again on every
//! path, failure included (a guard runs `./lab start clone2`).
//!
//! What it does, as an instructor would:
//! 1. loads http://127.0.0.1:18099/ in headless Chromium and waits for the
//!    page to draw clone2's box green;
//! 2. sends requests through HAProxy and waits for the numbers on the page
//!    (HAProxy's box, clone1's box, the requests-per-clone legend) to move;
//! 3. `./lab stop clone2`, and times how long its box takes to turn red
//!    (stated bound: [`RED_WITHIN`]), takes a screenshot
//!    (`target/lab/report/live.png`, with `live.json` saying what was
//!    measured; the report links it);
//! 4. `./lab start clone2`, and times its box back to green
//!    ([`GREEN_WITHIN`]).
//!
//! The bounds are generous on purpose (a busy two-core machine): the page
//! ticks every 2 s and Prometheus scrapes every 2 s, so about 4 s is
//! typical; the measured times are printed and kept in `live.json`.
//!
//! ```text
//! ./lab up part1 && cargo test -p part4-async --test it live::
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fantoccini::Client;
use serde_json::Value;

use crate::browser::{browser_sized, driver};

/// The live page, as `./lab up` serves it (README's port table).
const PAGE: &str = "http://127.0.0.1:18099/";
/// clone2's own health endpoint (port 18080 + 2).
const CLONE2_HEALTH: &str = "http://127.0.0.1:18082/health";
/// Stated: a stopped clone's box is drawn red within this.
const RED_WITHIN: Duration = Duration::from_secs(20);
/// Stated: a started clone's box is drawn green again within this.
const GREEN_WITHIN: Duration = Duration::from_secs(30);
/// How long the page may take to show what Prometheus has.
const WAIT: Duration = Duration::from_secs(60);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate sits in the workspace")
        .to_path_buf()
}

/// Where the report lives, as `lab-report` finds it: `LAB_REPORT_DIR`,
/// else `target/lab/report` (under `CARGO_TARGET_DIR` if set).
fn report_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LAB_REPORT_DIR") {
        return workspace().join(dir);
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("lab/report")
}

/// Runs `./lab <args>`; its output goes to the test's log on failure.
fn lab(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(workspace().join("lab"))
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ./lab: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "./lab {} exited with {}:\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Starts clone2 again when dropped, unless the test already did: the
/// drill undoes itself whatever path the test took.
struct StartAgain {
    armed: bool,
}

impl Drop for StartAgain {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = lab(&["start", "clone2"])
        {
            eprintln!("could not start clone2 again ({e}): run ./lab start clone2");
        }
    }
}

/// The boxes as the page draws them: key -> {class, state, rate}, and the
/// legend of the requests-per-clone chart.
async fn shown(client: &Client) -> Value {
    client
        .execute(
            r#"
            const boxes = {};
            for (const el of document.querySelectorAll('.box[data-key]')) {
              boxes[el.dataset.key] = {
                class: el.className,
                state: el.querySelector('.state').textContent,
                rate: el.querySelector('.rate').textContent.trim(),
              };
            }
            const legend = [...document.querySelectorAll('.panel')]
              .find((p) => p.querySelector('h2').textContent.startsWith('Requests per clone'))
              ?.querySelectorAll('.u-legend .u-label') ?? [];
            return {
              boxes,
              legend: [...legend].map((l) => l.textContent),
              status: document.getElementById('status').textContent,
              stale: document.body.classList.contains('stale'),
            };
            "#,
            vec![],
        )
        .await
        .expect("the page answers a script")
}

/// A box's colour: "up", "down", "warn" or "" (no data).
fn state(page: &Value, key: &str) -> String {
    let class = page["boxes"][key]["class"].as_str().unwrap_or("");
    ["up", "down", "warn"]
        .into_iter()
        .find(|s| class.split_whitespace().any(|c| c == *s))
        .unwrap_or("")
        .to_owned()
}

/// The number a box shows ("12.5 req/s", "1.2k req/s"); `None` for "–".
fn rate(page: &Value, key: &str) -> Option<f64> {
    let text = page["boxes"][key]["rate"].as_str()?;
    let word = text.split_whitespace().next()?;
    match word.strip_suffix('k') {
        Some(n) => n.parse::<f64>().ok().map(|v| v * 1000.0),
        None => word.parse().ok(),
    }
}

/// Polls the page until `check` says `Some`, or panics after `within` with
/// what the page showed last.
async fn until<T>(
    client: &Client,
    what: &str,
    within: Duration,
    check: impl Fn(&Value) -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let page = shown(client).await;
        if let Some(v) = check(&page) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; the page showed {page:#}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sends requests through HAProxy until `stop` is set: two senders, a
/// request each 50 ms at most (about 40 req/s, light beside the suite's
/// other tests, well above the +10 req/s the page must show).
fn traffic(stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    let lb = common::config::defaults::LB_URL;
    (0..2)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let http = part1_clones::client::http();
                while !stop.load(Ordering::Relaxed) {
                    // A route every part serves and times (a 404 for a
                    // user nobody has): `/health` is not counted as traffic.
                    let _ = http
                        .get(format!("{lb}/users/live-test/avatar"))
                        .send()
                        .await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .collect()
}

#[tokio::test]
async fn the_live_page_moves_with_traffic_and_shows_a_stopped_clone_red() {
    let http = part1_clones::client::http();
    let page_ok = http.get(PAGE).send().await.is_ok_and(|r| r.status() == 200);
    assert!(
        page_ok,
        "the live page is not served on {PAGE}: run ./lab up"
    );
    let clone2_ok = http
        .get(CLONE2_HEALTH)
        .send()
        .await
        .is_ok_and(|r| r.status() == 200);
    assert!(
        clone2_ok,
        "clone2 does not answer {CLONE2_HEALTH}: this test watches the lab's own clones; run ./lab up part1 (or any part) first"
    );

    // A screenshot from an earlier run must not outlive this one: the
    // report shows one only if this run passed.
    let dir = report_dir();
    for file in [
        common::report::LiveShot::PNG,
        common::report::LiveShot::FILE,
    ] {
        let _ = std::fs::remove_file(dir.join(file));
    }

    let driver = driver().await;
    let client = browser_sized(&driver, "1600,1100").await;
    let mut guard = StartAgain { armed: false };
    let stop = Arc::new(AtomicBool::new(false));
    let outcome = async {
        client.goto(PAGE).await.expect("the browser loads the page");
        until(&client, "clone2's box drawn green", WAIT, |p| {
            (state(p, "clone2") == "up" && !p["stale"].as_bool().unwrap_or(true)).then_some(())
        })
        .await;
        let before = shown(&client).await;
        let lb_before = rate(&before, "haproxy").unwrap_or(0.0);

        // Traffic: the balancer's box and each clone's count it.
        let _senders = traffic(stop.clone());
        let moved = until(&client, "the numbers moving with the traffic", WAIT, |p| {
            let lb = rate(p, "haproxy")?;
            let c1 = rate(p, "clone1")?;
            let legend = p["legend"].as_array()?;
            let in_legend = legend
                .iter()
                .any(|l| l.as_str().is_some_and(|l| l.starts_with("clone1 ")));
            (lb >= lb_before + 10.0 && c1 > 0.0 && in_legend).then(|| p.clone())
        })
        .await;
        println!(
            "HAProxy's box: {lb_before} req/s before, {} with traffic",
            rate(&moved, "haproxy").unwrap_or(0.0)
        );

        // The drill: stop clone2 and time its box to red.
        guard.armed = true;
        lab(&["stop", "clone2"]).unwrap_or_else(|e| panic!("{e}"));
        let stopped = Instant::now();
        let red = until(
            &client,
            "clone2's box drawn red after ./lab stop clone2",
            RED_WITHIN,
            |p| (state(p, "clone2") == "down").then(|| p.clone()),
        )
        .await;
        let red_after = stopped.elapsed();
        assert_eq!(state(&red, "clone1"), "up", "clone1 stays green: {red:#}");
        println!("clone2 red {red_after:?} after ./lab stop clone2 (stated bound {RED_WITHIN:?})");
        // Let the charts show the shift before the picture.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let png = client.screenshot().await.expect("a screenshot of the page");

        lab(&["start", "clone2"]).unwrap_or_else(|e| panic!("{e}"));
        guard.armed = false;
        let started = Instant::now();
        until(
            &client,
            "clone2's box green again after ./lab start clone2",
            GREEN_WITHIN,
            |p| (state(p, "clone2") == "up").then_some(()),
        )
        .await;
        let green_after = started.elapsed();
        println!(
            "clone2 green {green_after:?} after ./lab start clone2 (stated bound {GREEN_WITHIN:?})"
        );

        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(common::report::LiveShot::PNG), png).unwrap();
        let shot = common::report::LiveShot {
            taken_at: utc_now(),
            red_after_ms: red_after.as_millis() as u64,
            green_after_ms: green_after.as_millis() as u64,
            revision: common::results::git_rev(),
        };
        std::fs::write(
            dir.join(common::report::LiveShot::FILE),
            serde_json::to_string_pretty(&shot).unwrap(),
        )
        .unwrap();
        println!(
            "screenshot: {}",
            dir.join(common::report::LiveShot::PNG).display()
        );
    };
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(outcome)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
    drop(driver);
    drop(guard);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Now, in RFC 3339 UTC, from `date` (no date crate for one line).
fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
