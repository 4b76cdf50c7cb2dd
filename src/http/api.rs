//! The JSON API (list, get, create, delete, uploads, live status stream). Owned by serve-ui.

use axum::Router;

use super::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
}
