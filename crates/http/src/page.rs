//! The Backing Image page at `/`: plain HTML, CSS and JavaScript embedded in the binary (no
//! front-end build step). It talks only to the JSON API (`super::api`) and the views.
//!
//! Each file is sent with a strong ETag (the hash of its embedded bytes, computed once) and
//! `Cache-Control: no-cache`: a browser keeps it and asks again each time, and gets a 304 until
//! the binary changes.

use std::sync::LazyLock;

use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use super::conditional;
use super::AppState;

/// An embedded file: its bytes, type and ETag.
struct Asset {
    bytes: &'static str,
    content_type: &'static str,
    etag: LazyLock<String>,
}

macro_rules! asset {
    ($file:literal, $type:literal) => {
        Asset {
            bytes: include_str!($file),
            content_type: $type,
            etag: LazyLock::new(|| conditional::etag_of(include_str!($file).as_bytes())),
        }
    };
}

static INDEX: Asset = asset!("page/index.html", "text/html; charset=utf-8");
static APP_JS: Asset = asset!("page/app.js", "text/javascript; charset=utf-8");
static STYLE: Asset = asset!("page/style.css", "text/css; charset=utf-8");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|h: HeaderMap| async move { send(&INDEX, &h) }))
        .route(
            "/app.js",
            get(|h: HeaderMap| async move { send(&APP_JS, &h) }),
        )
        .route(
            "/style.css",
            get(|h: HeaderMap| async move { send(&STYLE, &h) }),
        )
}

fn send(asset: &'static Asset, request: &HeaderMap) -> Response {
    conditional::fixed(request, &asset.etag, asset.content_type, asset.bytes)
}
