//! Counters for `/metrics` (Prometheus text format) and the `/healthz`, `/readyz` probes.
//! Only counts and names: never a Secret's value.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::AppState;
use crate::catalog::Mode;

#[derive(Default)]
struct Counters {
    bytes: [AtomicU64; 4],
    open_handles: AtomicI64,
    reads_in_flight: AtomicI64,
}

/// Cheap to clone; every clone counts into the same counters.
#[derive(Clone, Default)]
pub struct Metrics(Arc<Counters>);

fn index(mode: Mode) -> usize {
    match mode {
        Mode::Ignore => 0,
        Mode::Raw => 1,
        Mode::Encrypt => 2,
        Mode::Decrypt => 3,
    }
}

/// Decrements reads in flight when a read ends (however it ends).
pub struct InFlight(Metrics);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0 .0.reads_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn bytes_read(&self, mode: Mode, n: u64) {
        self.0.bytes[index(mode)].fetch_add(n, Ordering::Relaxed);
    }
    pub fn read_started(&self) -> InFlight {
        self.0.reads_in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
    pub fn handle_opened(&self) {
        self.0.open_handles.fetch_add(1, Ordering::Relaxed);
    }
    pub fn handle_closed(&self) {
        self.0.open_handles.fetch_sub(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of the counters.
    pub fn render(&self) -> String {
        let c = &self.0;
        let mut out = String::new();
        out.push_str("# HELP bifs_http_view_bytes_read_total Bytes read from views to answer HTTP requests, per view kind.\n# TYPE bifs_http_view_bytes_read_total counter\n");
        for mode in Mode::ALL {
            let _ = writeln!(
                out,
                "bifs_http_view_bytes_read_total{{mode=\"{}\"}} {}",
                mode.name(),
                c.bytes[index(mode)].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP bifs_http_open_views Views open for responses being sent.\n# TYPE bifs_http_open_views gauge\nbifs_http_open_views {}", c.open_handles.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP bifs_http_reads_in_flight View reads running on the blocking pool.\n# TYPE bifs_http_reads_in_flight gauge\nbifs_http_reads_in_flight {}", c.reads_in_flight.load(Ordering::Relaxed));
        out
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
}

/// Ready when the store can be listed.
async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let catalog = state.catalog.clone();
    match tokio::task::spawn_blocking(move || catalog.store().list()).await {
        Ok(Ok(images)) => (StatusCode::OK, format!("ok: {} images\n", images.len())),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store not readable: {e}\n"),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

/// Counts only (no names of images or Secrets), so it needs no token.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
