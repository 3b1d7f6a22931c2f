//! One error type for the HTTP surface.
//!
//! The client gets a status and a short, clear message as JSON
//! (`{"error": "..."}`); the cause of a 5xx goes to the log, never to the
//! client, since it may name hosts, queries or keys.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A malformed or invalid request (400).
    #[error("{0}")]
    BadRequest(String),
    /// No session, or a session that is expired, unknown or garbage (401).
    #[error("not logged in")]
    Unauthorized,
    /// Wrong username or password (401), one message for both so the
    /// answer does not tell which usernames exist.
    #[error("wrong username or password")]
    BadCredentials,
    /// Nothing there (404).
    #[error("{0}")]
    NotFound(String),
    /// A unique name already taken (409).
    #[error("{0}")]
    Conflict(String),
    /// A body over the limit (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A body of a type this route does not take (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Too many attempts (429), with how long to wait, sent as `Retry-After`.
    #[error("{message}")]
    TooManyRequests {
        /// What the client did too often.
        message: String,
        /// Seconds until trying again makes sense.
        retry_after_secs: u64,
    },
    /// A shared store (Redis, MariaDB) does not answer (503); the cause is logged.
    #[error("{what} is unavailable")]
    Unavailable {
        /// What is down, as the client may know it ("the session store").
        what: &'static str,
        /// The cause, for the log only.
        cause: String,
    },
    /// A bug or an unexpected failure (500); the cause is logged.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::BadCredentials => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Unavailable { what, cause } => {
                tracing::warn!(%what, %cause, "store unavailable")
            }
            ApiError::Internal(cause) => tracing::error!(%cause, "internal error"),
            _ => {}
        }
        let body = Json(serde_json::json!({ "error": self.to_string() }));
        let mut res = (self.status_code(), body).into_response();
        if let ApiError::TooManyRequests {
            retry_after_secs, ..
        } = &self
        {
            res.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, (*retry_after_secs).into());
        }
        res
    }
}

/// A session store that failed.
#[derive(Debug, thiserror::Error)]
#[error("{store}: {cause}")]
pub struct StoreError {
    /// Which store ("redis", "mariadb").
    pub store: &'static str,
    /// What went wrong.
    pub cause: String,
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Unavailable {
            what: "the session store",
            cause: e.to_string(),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Unavailable {
            what: "the user database",
            cause: e.to_string(),
        }
    }
}
