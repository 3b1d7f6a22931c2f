//! The jobs page (being built).

use axum::Router;

/// The page's routes.
pub fn routes() -> Router {
    Router::new()
}
