//! A user, as the demo and the tests drive the app: HTTP with a cookie jar
//! of one cookie. What a browser does, in a few lines.

use std::sync::Mutex;

use anyhow::Context;
use reqwest::StatusCode;
use reqwest::header::{COOKIE, SET_COOKIE};

use crate::app::{COOKIE_NAME, Cart, Me};

/// One user's client: a base URL (a clone or the load balancer) and the
/// session cookie it was given.
pub struct UserClient {
    http: reqwest::Client,
    base: String,
    cookie: Mutex<Option<String>>,
}

/// A fresh HTTP client with short timeouts (a hung server is an error, not a hang).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .connect_timeout(std::time::Duration::from_secs(2))
        .build()
        .expect("HTTP client")
}

impl UserClient {
    /// A user who talks to `base` (e.g. `http://127.0.0.1:18080`).
    pub fn new(http: reqwest::Client, base: &str) -> Self {
        UserClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
            cookie: Mutex::new(None),
        }
    }

    /// The session cookie's value, if logged in.
    pub fn cookie(&self) -> Option<String> {
        self.cookie.lock().expect("cookie lock").clone()
    }

    /// Sets the cookie by hand (tests of garbage cookies).
    pub fn set_cookie(&self, value: Option<String>) {
        *self.cookie.lock().expect("cookie lock") = value;
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match self.cookie() {
            Some(c) => req.header(COOKIE, format!("{COOKIE_NAME}={c}")),
            None => req,
        }
    }

    fn remember(&self, res: &reqwest::Response) {
        for v in res.headers().get_all(SET_COOKIE) {
            if let Some(value) = v
                .to_str()
                .ok()
                .and_then(|s| s.strip_prefix(&format!("{COOKIE_NAME}=")))
            {
                let value = value.split(';').next().unwrap_or("");
                self.set_cookie((!value.is_empty()).then(|| value.to_owned()));
            }
        }
    }

    /// `POST /signup`; the status (201, 409, 400...).
    pub async fn signup(&self, username: &str, password: &str) -> anyhow::Result<StatusCode> {
        let res = self
            .request(reqwest::Method::POST, "/signup")
            .json(&serde_json::json!({ "username": username, "password": password }))
            .send()
            .await
            .context("POST /signup")?;
        Ok(res.status())
    }

    /// `POST /login`; keeps the cookie. Err on anything but 200.
    pub async fn login(&self, username: &str, password: &str) -> anyhow::Result<Me> {
        let res = self
            .request(reqwest::Method::POST, "/login")
            .json(&serde_json::json!({ "username": username, "password": password }))
            .send()
            .await
            .context("POST /login")?;
        anyhow::ensure!(
            res.status() == StatusCode::OK,
            "login as {username}: {}",
            res.status()
        );
        self.remember(&res);
        res.json().await.context("login body")
    }

    /// `POST /logout`.
    pub async fn logout(&self) -> anyhow::Result<StatusCode> {
        let res = self
            .request(reqwest::Method::POST, "/logout")
            .send()
            .await
            .context("POST /logout")?;
        self.remember(&res);
        Ok(res.status())
    }

    /// `GET /me`: `Ok(Some(me))`, or `Ok(None)` on 401 (no session on that clone).
    pub async fn me(&self) -> anyhow::Result<Option<Me>> {
        let res = self
            .request(reqwest::Method::GET, "/me")
            .send()
            .await
            .context("GET /me")?;
        match res.status() {
            StatusCode::OK => Ok(Some(res.json().await.context("/me body")?)),
            StatusCode::UNAUTHORIZED => Ok(None),
            other => anyhow::bail!("GET /me: {other}"),
        }
    }

    /// `GET /me` for load runs: `Ok` only if the session was found; the
    /// error says why not (401, or the transport failure).
    pub async fn me_required(&self) -> Result<(), String> {
        match self.me().await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err("no session (401)".to_string()),
            Err(e) => Err(format!("{e:#}")),
        }
    }

    /// `POST /cart/items`: the status (201, or 401 when the clone knows no session).
    pub async fn add_item(&self, item: &str) -> anyhow::Result<StatusCode> {
        let res = self
            .request(reqwest::Method::POST, "/cart/items")
            .json(&serde_json::json!({ "item": item }))
            .send()
            .await
            .context("POST /cart/items")?;
        Ok(res.status())
    }

    /// `GET /cart`: `Ok(None)` on 401.
    pub async fn cart(&self) -> anyhow::Result<Option<Cart>> {
        let res = self
            .request(reqwest::Method::GET, "/cart")
            .send()
            .await
            .context("GET /cart")?;
        match res.status() {
            StatusCode::OK => Ok(Some(res.json().await.context("/cart body")?)),
            StatusCode::UNAUTHORIZED => Ok(None),
            other => anyhow::bail!("GET /cart: {other}"),
        }
    }

    /// `PUT /me/avatar` with a content type; the status.
    pub async fn put_avatar(
        &self,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> anyhow::Result<StatusCode> {
        let res = self
            .request(reqwest::Method::PUT, "/me/avatar")
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(bytes)
            .send()
            .await
            .context("PUT /me/avatar")?;
        Ok(res.status())
    }

    /// `GET /users/{username}/avatar`: status, content type, bytes.
    pub async fn avatar(&self, username: &str) -> anyhow::Result<(StatusCode, String, Vec<u8>)> {
        let res = self
            .request(reqwest::Method::GET, &format!("/users/{username}/avatar"))
            .send()
            .await
            .context("GET avatar")?;
        let status = res.status();
        let kind = res
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        Ok((
            status,
            kind,
            res.bytes().await.context("avatar body")?.to_vec(),
        ))
    }

    /// A raw request with this user's cookie, for anything else.
    pub fn raw(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.request(method, path)
    }
}
