//! The Backing Image page for browsers. Owned by serve-ui.

use axum::Router;

use super::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
}
