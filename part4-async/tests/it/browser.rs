//! The jobs page (`GET /app`) in a real browser: Debian's `chromium`,
//! headless, driven through `chromedriver` (WebDriver) by `fantoccini`.
//!
//! Each test starts its own chromedriver on a free port, an in-process
//! `part4-server` and worker on a queue and a database of the test's own
//! ([`crate::http::Lab`]), logs in through the page's form, clicks, and
//! reads what the page shows. Waits poll the page with a generous
//! deadline: nothing here asserts how fast anything is, only what the user
//! is shown and how many jobs exist.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (`./lab up`
//! installs them; by hand: `apt-get install -y --no-install-recommends
//! chromium chromium-driver`).
//!
//! ```text
//! cargo test -p part4-async --test it browser::
//! ```

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use part4_async::queue::Backend;
use part4_async::server::JobsMode;
use serde_json::{Value, json};

use crate::http::Lab;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const INSTALL: &str = "`./lab up` installs them (or: sudo apt-get install -y --no-install-recommends chromium chromium-driver)";

/// How long a wait may last: a browser on a busy two-core machine.
const WAIT: Duration = Duration::from_secs(90);

/// Ada's password, set for the test (the test database's users have none).
const PASSWORD: &str = "correct-horse-battery-staple";

/// A chromedriver of this test's own, in a process group of its own: the
/// group (chromedriver and the chromium it started) is killed on drop,
/// whatever path the test took.
pub(crate) struct Driver {
    child: tokio::process::Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // The group chromedriver leads (`process_group(0)`): chromium
            // too, if the session was not closed.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Starts chromedriver and waits until it says it is ready.
pub(crate) async fn driver() -> Driver {
    for binary in [CHROMEDRIVER, CHROMIUM] {
        assert!(
            Path::new(binary).exists(),
            "{binary} is missing: the browser tests drive Debian's chromium through chromium-driver; {INSTALL}"
        );
    }
    let mut last = String::new();
    // A free port can be taken between finding it and binding it: try a
    // few.
    for _ in 0..3 {
        let port = free_port();
        let mut child = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}; {INSTALL}"));
        let url = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                last = format!("chromedriver exited: {status}");
                break;
            }
            match part1_clones::client::http()
                .get(format!("{url}/status"))
                .send()
                .await
            {
                Ok(res) => {
                    let v: Value = res.json().await.unwrap_or_default();
                    if v["value"]["ready"] == true {
                        return Driver { child, url };
                    }
                    last = format!("not ready: {v}");
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(Driver { child, url });
    }
    panic!("chromedriver did not become ready: {last}");
}

/// A headless chromium session.
async fn browser(driver: &Driver) -> Client {
    browser_sized(driver, "1024,900").await
}

/// A headless chromium session with a window of `size` ("width,height").
pub(crate) async fn browser_sized(driver: &Driver, size: &str) -> Client {
    let caps = json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-gpu",
                "--no-first-run",
                &format!("--window-size={size}"),
                // The machine's network is closed: no calls home.
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        },
    });
    let caps = match caps {
        Value::Object(m) => m,
        _ => unreachable!(),
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .unwrap_or_else(|e| panic!("chromium did not start under chromedriver: {e}"))
}

/// Runs `test` with a browser, then closes the browser whatever happened
/// (the panic, if any, goes on after).
async fn with_browser<F, Fut>(test: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = ()>,
{
    let driver = driver().await;
    let client = browser(&driver).await;
    let outcome = AssertUnwindSafe(test(client.clone())).catch_unwind().await;
    let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
    drop(driver);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Gives ada a real password, and waits until the replica has it (login
/// reads credentials from a replica).
async fn set_password(lab: &Lab) {
    let hash = part1_clones::users::hash_password(PASSWORD);
    sqlx::query("UPDATE users SET password_hash = ? WHERE id = 1")
        .bind(&hash)
        .execute(&lab.db.db.pool)
        .await
        .unwrap();
    lab.db.replicated().await;
}

/// Polls `check` until it says `Some`, or panics after [`WAIT`].
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the page shows, read in one round trip.
async fn shown(client: &Client) -> Value {
    client
        .execute(
            r#"
            const $ = (id) => document.getElementById(id);
            return {
              login: !$('login-section').hidden,
              app: !$('app-section').hidden,
              who: $('who').textContent,
              login_error: $('login-error').textContent,
              state: $('status').dataset.state,
              status: $('status').textContent,
              live: $('status').getAttribute('aria-live'),
              progress: $('progress').value,
              progress_text: $('progress-text').textContent,
              job: $('job').dataset.jobId || null,
              link: $('result').hidden ? null : $('result-link').getAttribute('href'),
              transport: $('transport').textContent,
              problem: $('problem').textContent,
              jobs: Array.from(document.querySelectorAll('#jobs-list li'))
                .map((li) => ({ id: li.dataset.jobId, class: li.className, text: li.textContent })),
            };
            "#,
            vec![],
        )
        .await
        .expect("the page's state")
}

/// Opens the page (with `query`) and logs in as ada through its form.
async fn open_and_log_in(client: &Client, lab: &Lab, query: &str) {
    client
        .goto(&format!("{}/app{query}", lab.url))
        .await
        .expect("GET /app");
    wait_for("the login form", || async {
        (shown(client).await["login"] == true).then_some(())
    })
    .await;
    let form = client.find(Locator::Id("username")).await.unwrap();
    form.send_keys("ada").await.unwrap();
    client
        .find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys(PASSWORD)
        .await
        .unwrap();
    client
        .find(Locator::Id("login-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for("logged in", || async {
        let s = shown(client).await;
        assert_eq!(s["login_error"], "", "the login failed: {s}");
        (s["app"] == true && s["who"] == "ada").then_some(())
    })
    .await;
}

async fn click(client: &Client, id: &str) {
    client
        .find(Locator::Id(id))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Waits until the page shows a finished job other than `not`, and
/// returns what it showed, with the states it showed on the way.
async fn until_finished(client: &Client, not: Option<&str>) -> (Value, Vec<Value>) {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = shown(client).await;
        if !s["job"].is_null() && s["job"].as_str() != not {
            seen.push(json!({ "state": s["state"], "progress": s["progress"] }));
            if s["state"] == "done" || s["state"] == "failed" {
                return (s, seen);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page did not say the job was finished within {WAIT:?}: {s}; on the way: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fetches `href` from the page, with its cookie, as a click on the link
/// would.
async fn fetch_in_page(client: &Client, href: &str) -> (u64, String) {
    let got = client
        .execute_async(
            r#"
            const [href, done] = arguments;
            fetch(href, { credentials: 'same-origin' })
              .then(async (r) => done({ status: r.status, body: await r.text() }))
              .catch((e) => done({ status: 0, body: String(e) }));
            "#,
            vec![json!(href)],
        )
        .await
        .expect("fetch in the page");
    (
        got["status"].as_u64().unwrap_or(0),
        got["body"].as_str().unwrap_or("").to_owned(),
    )
}

/// The `Idempotency-Key` of each `POST /jobs` the page sent (recorded by
/// the wrapper the double-click test puts around `fetch`).
async fn posted_keys(client: &Client) -> Vec<String> {
    let v = client
        .execute("return window.jobPosts;", vec![])
        .await
        .unwrap();
    v.as_array()
        .expect("the fetch wrapper is installed")
        .iter()
        .map(|k| k.as_str().unwrap_or("").to_owned())
        .collect()
}

// ---------------------------------------------------------------------

/// Log in, export, watch it progress over Server-Sent Events, be told it
/// is done, fetch the result through the link.
#[tokio::test]
async fn export_progresses_then_links_the_result() {
    let mut lab = Lab::start(Backend::RabbitMq, JobsMode::Async, |_| {}).await;
    // Long enough that the page has progress to show: the export's stated
    // minimum, in ten steps.
    lab.start_worker(Duration::from_secs(4)).await;
    set_password(&lab).await;
    with_browser(|client| async {
        let client = client;
        open_and_log_in(&client, &lab, "").await;
        click(&client, "export-button").await;

        let (last, seen) = until_finished(&client, None).await;
        assert_eq!(last["state"], "done", "{last}");
        assert!(
            last["status"].as_str().unwrap().starts_with("Done"),
            "{last}"
        );
        assert_eq!(last["live"], "polite", "the status is announced");
        assert_eq!(last["progress"], 100);
        assert_eq!(last["progress_text"], "100 %");
        assert!(
            last["transport"]
                .as_str()
                .unwrap()
                .contains("Server-Sent Events"),
            "followed over SSE: {last}"
        );
        // Progress was shown on the way: the 202 said queued, the stream
        // said running with a percentage.
        assert!(
            seen.iter()
                .any(|s| s["state"] == "queued" || s["state"] == "running"),
            "never shown as queued or running: {seen:?}"
        );
        assert!(
            seen.iter().any(|s| s["state"] == "running"
                && s["progress"].as_u64().is_some_and(|p| p > 0 && p < 100)),
            "no progress between 0 and 100 % was shown: {seen:?}"
        );

        let id = last["job"].as_str().unwrap().to_owned();
        let href = last["link"].as_str().expect("a result link").to_owned();
        assert_eq!(href, format!("/jobs/{id}/result"));
        let (status, body) = fetch_in_page(&client, &href).await;
        assert_eq!(status, 200, "{body}");
        let doc: Value = serde_json::from_str(&body).expect("the export is JSON");
        let text = doc.to_string();
        for title in ["article 1", "article 2", "article 3"] {
            assert!(text.contains(title), "{title} missing from {text}");
        }

        // The list of recent jobs shows it, done, with its link.
        let s = wait_for("the list to show the job done", || async {
            let s = shown(&client).await;
            s["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|j| j["id"] == id.as_str() && j["class"] == "state-done")
                .then_some(s)
        })
        .await;
        assert_eq!(s["jobs"].as_array().unwrap().len(), 1, "{s}");
    })
    .await;
    assert_eq!(lab.jobs_of_ada().await, 1);
    lab.stop().await;
}

/// A double click is one job (the page sends one `Idempotency-Key` until
/// the job is finished); the next click after that is a new job. Here
/// the browser's `EventSource` cannot connect (a stand-in that fails at
/// once, as behind a proxy that refuses long responses): the page falls
/// back to polling, and is told all the same.
#[tokio::test]
async fn a_double_click_makes_one_job() {
    let mut lab = Lab::start(Backend::RabbitMq, JobsMode::Async, |_| {}).await;
    lab.start_worker(Duration::from_secs(2)).await;
    set_password(&lab).await;
    with_browser(|client| async {
        let client = client;
        open_and_log_in(&client, &lab, "").await;

        // An EventSource that fails to connect, and a record of the key
        // of every `POST /jobs` the page sends.
        client
            .execute(
                r#"
                window.EventSource = class {
                  static CLOSED = 2;
                  constructor() {
                    this.readyState = 2;
                    setTimeout(() => this.onerror && this.onerror(new Event('error')), 10);
                  }
                  addEventListener() {}
                  close() {}
                };
                window.jobPosts = [];
                const send = window.fetch;
                window.fetch = (url, init) => {
                  if (url === '/jobs' && init && init.method === 'POST') {
                    window.jobPosts.push(init.headers['Idempotency-Key'] || null);
                  }
                  return send(url, init);
                };
                "#,
                vec![],
            )
            .await
            .unwrap();
        // Two clicks in one task: both requests leave before either answer
        // comes back, the race the key is for.
        client
            .execute(
                "const b = document.getElementById('export-button'); b.click(); b.click();",
                vec![],
            )
            .await
            .unwrap();
        let (first, _) = until_finished(&client, None).await;
        assert_eq!(first["state"], "done", "{first}");
        assert!(
            first["transport"]
                .as_str()
                .unwrap()
                .starts_with("Live updates failed"),
            "fell back to polling: {first}"
        );
        assert_eq!(lab.jobs_of_ada().await, 1, "two clicks, one job");
        let keys = posted_keys(&client).await;
        assert_eq!(keys.len(), 2, "two requests sent: {keys:?}");
        assert!(!keys[0].is_empty() && keys[0] == keys[1], "{keys:?}");

        // A user's double click through WebDriver, after the first job is
        // done: one more job, not two.
        let first_id = first["job"].as_str().unwrap().to_owned();
        let button = client.find(Locator::Id("export-button")).await.unwrap();
        button.click().await.unwrap();
        button.click().await.unwrap();
        let (second, _) = until_finished(&client, Some(&first_id)).await;
        assert_eq!(second["state"], "done", "{second}");
        assert_eq!(
            lab.jobs_of_ada().await,
            2,
            "a new job after the first finished, once"
        );
        let again = posted_keys(&client).await;
        assert_eq!(again.len(), 4, "two more requests: {again:?}");
        assert!(
            again[2] == again[3] && again[2] != again[0],
            "one new key for the second export: {again:?}"
        );

        let s = wait_for("the list to show both jobs", || async {
            let s = shown(&client).await;
            (s["jobs"].as_array().unwrap().len() == 2).then_some(s)
        })
        .await;
        assert!(
            s["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|j| j["class"] == "state-done"),
            "{s}"
        );
    })
    .await;
    assert_eq!(lab.jobs_of_ada().await, 2);
    lab.stop().await;
}

/// A full queue (here: a limit of 0) answers 503 with `Retry-After`; the
/// page says so plainly, and nothing was made.
#[tokio::test]
async fn a_refused_job_is_said_plainly() {
    let lab = Lab::start(Backend::RabbitMq, JobsMode::Async, |c| {
        c.max_queue_depth = 0;
        c.retry_after_secs = 7;
    })
    .await;
    set_password(&lab).await;
    with_browser(|client| async {
        let client = client;
        open_and_log_in(&client, &lab, "").await;
        click(&client, "export-button").await;
        let s = wait_for("the page to say the job was refused", || async {
            let s = shown(&client).await;
            (s["state"] == "refused").then_some(s)
        })
        .await;
        let status = s["status"].as_str().unwrap();
        assert!(status.starts_with("Not started:"), "{s}");
        assert!(status.contains("queue is full"), "the server's reason: {s}");
        assert!(
            status.to_lowercase().contains("try again in 7"),
            "when to come back: {s}"
        );
        assert!(s["link"].is_null(), "{s}");
    })
    .await;
    assert_eq!(lab.jobs_of_ada().await, 0, "nothing was made");
    lab.stop().await;
}
