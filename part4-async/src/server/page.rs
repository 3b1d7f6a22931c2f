//! `GET /app`: the jobs page, the seed's frontend that "constantly checks
//! for done signals".
//!
//! The article's second way to stop making users wait: the frontend puts
//! the job on a queue and answers at once ("your job is in work, keep
//! browsing"); workers do it and signal when done; "the frontend, which
//! constantly checks for done signals", tells the user. [`super`] built the
//! queue, the workers and the API; this is the last piece, the page a
//! logged-in user has open: one HTML file, one script, one style sheet,
//! no framework, no CDN, no build step (`part4-async/static/`, compiled
//! into the binary with `include_str!`, so it works offline).
//!
//! Open <http://localhost:18080/app> after `./lab up part4` (or a
//! `part4-server` of your own, with a worker beside it), log in, click
//! "Export my articles", and watch:
//!
//! 1. the click `POST`s `/jobs` `{"kind":"export"}` and the answer comes
//!    back at once (`202 Accepted`): the page says "queued, keep
//!    browsing" while no work has been done yet;
//! 2. a progress bar follows the worker's progress;
//! 3. the page says "done" and links the document (`result_url`), or
//!    "failed" with the reason. A refused job (`503` with `Retry-After`:
//!    the queue is full or unreachable) is said plainly, with when to
//!    try again. The list below shows the user's recent jobs (`GET /jobs`).
//!
//! ## Checking for the done signal: Server-Sent Events, then polling
//!
//! "Constantly checks" can mean two things, and the page does both:
//!
//! - **Polling**: ask `GET /jobs/{id}` every second. Simple, works through
//!   every proxy, survives any restart, and each answer is complete. Its
//!   price: one request per open page per second whether anything changed
//!   or not (a thousand users watching a one-minute job is 60 000 requests),
//!   and the news is up to a second late.
//! - **Server-Sent Events** (`GET /jobs/{id}/events`, see [`super::events`]):
//!   one long-lived response, on which the *server* writes an event when the
//!   job changes. The browser's `EventSource` reads it, and reconnects by
//!   itself if the stream ends early (the server sends `retry: 1000`). One
//!   connection per watching page instead of a request a second, and
//!   progress as it happens. Its price: a connection held open for the
//!   whole job, which every proxy on the way must allow (HAProxy's
//!   `timeout server`/`timeout tunnel`, nginx's buffering), and a server
//!   that must still read the row to know (it polls MariaDB itself, every
//!   `EVENTS_POLL_MS`, once per stream, close to the data).
//!
//! The page opens the stream first, and falls back to polling every
//! second when the stream cannot be opened or fails three times in a row
//! (an old proxy that buffers, a network that cuts long responses). Add
//! `?transport=poll` to the address to watch the polling version in the
//! browser's network tab; the page says which one it uses. A WebSocket
//! would do too, but the traffic here goes one way, server to browser, and
//! SSE is plain HTTP: cookies, HAProxy and `curl -N` work unchanged.
//!
//! ## One click, one job: the `Idempotency-Key`
//!
//! A user double-clicks, a phone loses the answer to its `POST` and the
//! page retries, a tab is reloaded while the request is in flight: without
//! care each is a second export, a second slot on the queue and twice the
//! work. The page makes a random key (`crypto.randomUUID()`) when the user
//! clicks and sends it as `Idempotency-Key` with that request, with every
//! retry of it (three tries on a network error), and with any further click
//! until the job is finished; it keeps the key in `sessionStorage`, so a
//! reload keeps it too. The server stores the key in the job's row, unique
//! per user, and answers a known key with the job it already made
//! (`Idempotent-Replayed: true`), so all of those are *one* job, even when
//! two of them race on two clones. Disabling the button would stop the
//! double click only, in this tab; the key covers every case, at the only
//! place that sees them all.
//!
//! Once the job is done or failed the key is dropped: the next click is a
//! new export. A request refused as it is (a `4xx`) drops it too: sending
//! the same again would not help.
//!
//! ## What the page will not do with the server's text
//!
//! Every text from the server (a job's error, a username) is inserted with
//! `textContent`, never `innerHTML`, and a link built from the server's
//! `result_url` must be a path on this site. The page is served with a
//! strict Content-Security-Policy ([`CSP`]): scripts, styles and requests
//! from this origin only, no inline script, no `eval`, no frames, so even
//! a slip in the script could not run someone else's code.
//!
//! ## Caching
//!
//! The HTML is `no-cache` with an `ETag` (a browser asks each time, and
//! mostly gets `304 Not Modified`): it is tiny, and it names the script and
//! the style sheet by their content's hash (`/app/jobs.js?v=<hash>`). Those
//! two are then `immutable` for a year: a new build changes the hash, the
//! page names the new file, and no user runs an old script against a new
//! API. An address with another hash (an old page asking a new clone
//! mid-deploy) is served `no-cache`.
//!
//! The page is tested in a real headless Chromium (`tests/it/browser.rs`).

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Query;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

/// The page's Content-Security-Policy: everything from this origin only,
/// no inline script or style, no plugins, no frames, no `<base>` games,
/// forms post here only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

/// Where the page is.
pub const PATH: &str = "/app";

const HTML: &str = include_str!("../../static/jobs.html");
const JS: &str = include_str!("../../static/jobs.js");
const CSS: &str = include_str!("../../static/jobs.css");

/// A year: how long a hashed asset may be kept.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Keep, but ask first (with the `ETag`).
const REVALIDATE: &str = "no-cache";

/// The page with its assets' version filled in, and the tags.
struct Built {
    html: String,
    /// The assets' version: a hash of the script and the style sheet.
    version: String,
    html_etag: String,
    js_etag: String,
    css_etag: String,
}

static BUILT: LazyLock<Built> = LazyLock::new(|| {
    let version = format!("{:016x}", fnv1a(&[JS.as_bytes(), CSS.as_bytes()]));
    let html = HTML.replace("{{version}}", &version);
    Built {
        html_etag: format!("\"{:016x}\"", fnv1a(&[html.as_bytes()])),
        js_etag: format!("\"{:016x}\"", fnv1a(&[JS.as_bytes()])),
        css_etag: format!("\"{:016x}\"", fnv1a(&[CSS.as_bytes()])),
        html,
        version,
    }
});

/// FNV-1a, 64 bits: a content tag that is the same on every clone and
/// every build of the same files (not a security hash: nobody gains by
/// forging a cache tag of their own).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The version the page names its script and style sheet with.
pub fn asset_version() -> &'static str {
    &BUILT.version
}

/// The page's routes: `GET /app`, `/app/jobs.js`, `/app/jobs.css`.
pub fn routes() -> Router {
    Router::new()
        .route(PATH, get(page))
        .route("/app/jobs.js", get(script))
        .route("/app/jobs.css", get(style))
}

#[derive(Debug, Deserialize)]
struct Version {
    v: Option<String>,
}

async fn page(headers: HeaderMap) -> Response {
    let b = &*BUILT;
    serve(
        &headers,
        "text/html; charset=utf-8",
        &b.html_etag,
        REVALIDATE,
        b.html.clone(),
    )
}

async fn script(headers: HeaderMap, Query(q): Query<Version>) -> Response {
    let b = &*BUILT;
    serve(
        &headers,
        "text/javascript; charset=utf-8",
        &b.js_etag,
        cache_for(q.v.as_deref()),
        JS.to_owned(),
    )
}

async fn style(headers: HeaderMap, Query(q): Query<Version>) -> Response {
    let b = &*BUILT;
    serve(
        &headers,
        "text/css; charset=utf-8",
        &b.css_etag,
        cache_for(q.v.as_deref()),
        CSS.to_owned(),
    )
}

/// An asset asked for by this build's version may be kept for a year;
/// any other address must be checked again.
fn cache_for(v: Option<&str>) -> &'static str {
    if v == Some(asset_version()) {
        IMMUTABLE
    } else {
        REVALIDATE
    }
}

/// `200` with the body, or `304` when the client's copy is this one.
fn serve(
    headers: &HeaderMap,
    content_type: &'static str,
    etag: &str,
    cache: &'static str,
    body: String,
) -> Response {
    let fresh = headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        });
    let mut res = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body,
        )
            .into_response()
    };
    let h = res.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(tag) = HeaderValue::from_str(etag) {
        h.insert(ETAG, tag);
    }
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(uri: &str, if_none_match: Option<&str>) -> Response {
        let mut req = Request::get(uri);
        if let Some(t) = if_none_match {
            req = req.header(IF_NONE_MATCH, t);
        }
        routes()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn header<'a>(res: &'a Response, name: &str) -> &'a str {
        res.headers().get(name).unwrap().to_str().unwrap()
    }

    #[tokio::test]
    async fn the_page_names_its_assets_by_version_and_is_revalidated() {
        let res = get("/app", None).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(&res, "content-type"), "text/html; charset=utf-8");
        assert_eq!(header(&res, "cache-control"), "no-cache");
        assert_eq!(header(&res, "content-security-policy"), CSP);
        let etag = header(&res, "etag").to_owned();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let html = std::str::from_utf8(&body).unwrap();
        let v = asset_version();
        assert!(html.contains(&format!("/app/jobs.js?v={v}")), "{html}");
        assert!(html.contains(&format!("/app/jobs.css?v={v}")));
        assert!(!html.contains("{{"), "every placeholder filled");

        let again = get("/app", Some(&etag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let weak = get("/app", Some(&format!("\"other\", W/{etag}"))).await;
        assert_eq!(weak.status(), StatusCode::NOT_MODIFIED);
        let other = get("/app", Some("\"other\"")).await;
        assert_eq!(other.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn assets_are_immutable_only_under_their_own_version() {
        let v = asset_version();
        let res = get(&format!("/app/jobs.js?v={v}"), None).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            header(&res, "content-type"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(header(&res, "cache-control"), IMMUTABLE);
        let res = get(&format!("/app/jobs.css?v={v}"), None).await;
        assert_eq!(header(&res, "content-type"), "text/css; charset=utf-8");
        assert_eq!(header(&res, "cache-control"), IMMUTABLE);
        for stale in ["/app/jobs.js?v=0", "/app/jobs.css", "/app/jobs.js?v=&x=1"] {
            let res = get(stale, None).await;
            assert_eq!(res.status(), StatusCode::OK, "{stale}");
            assert_eq!(header(&res, "cache-control"), REVALIDATE, "{stale}");
        }
    }

    #[test]
    fn the_script_never_writes_markup() {
        // The page's rule: server text goes in with textContent. (Its
        // comments may name what it avoids.)
        let code: String = JS
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect();
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!code.contains(banned), "jobs.js uses {banned}");
        }
        assert!(
            !HTML.contains("<script>"),
            "no inline script (the CSP forbids it)"
        );
        assert!(
            !HTML.contains("style="),
            "no inline style (the CSP forbids it)"
        );
        assert!(
            !HTML.contains("http://") && !HTML.contains("https://"),
            "no CDN"
        );
    }
}
