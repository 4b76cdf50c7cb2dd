//! GET/HEAD of the views at the mount's paths: `/views/<mode>/[<ns>/<secret>/]<image>`.

use axum::Router;

use super::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
}
