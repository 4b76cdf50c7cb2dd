//! Counters for `/metrics` (Prometheus text format) and the `/healthz`, `/readyz` probes.
//! Only counts and names: never a Secret's value, and no label but the view kind, the image
//! name, the apply outcome and the backing image state.
//!
//! Two kinds of counters:
//! - [`Metrics`], per server: bytes read, open views, reads in flight of HTTP responses.
//! - The process-wide events of the catalog and the apply engine ([`bifs_node::events`]):
//!   they happen under the FUSE mount, the CLI and the server alike, so they are counted once
//!   per process, as Prometheus counters are; this module only renders them.
//!
//! The backing images per state are read from the store's records at each scrape.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::{Access, AppState};
use bifs_k8s::manifest::State as ImageState;
use bifs_node::catalog::Mode;
use bifs_node::longhorn::status;
use bifs_node::store::Store;

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
        render_events(&mut out);
        out
    }
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The process-wide events in the text format.
fn render_events(out: &mut String) {
    let ev = bifs_node::events::snapshot();
    out.push_str("# HELP bifs_encrypt_headers_created_total LUKS2 headers made for encrypt views, per image.\n# TYPE bifs_encrypt_headers_created_total counter\n");
    for (image, n) in &ev.headers_created {
        let _ = writeln!(
            out,
            "bifs_encrypt_headers_created_total{{image=\"{}\"}} {n}",
            label(image)
        );
    }
    out.push_str("# HELP bifs_unlock_failures_total Passphrases that opened no keyslot, per view kind and image.\n# TYPE bifs_unlock_failures_total counter\n");
    for ((mode, image), n) in &ev.unlock_failures {
        let _ = writeln!(
            out,
            "bifs_unlock_failures_total{{mode=\"{}\",image=\"{}\"}} {n}",
            mode,
            label(image)
        );
    }
    out.push_str("# HELP bifs_key_derivations_total Key derivation jobs (stable encrypt headers, unlocks) per outcome.\n# TYPE bifs_key_derivations_total counter\n");
    for (outcome, n) in &ev.derivations {
        let _ = writeln!(
            out,
            "bifs_key_derivations_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    out.push_str("# HELP bifs_apply_duration_seconds Time to apply one backing image, per outcome.\n# TYPE bifs_apply_duration_seconds histogram\n");
    for (outcome, h) in &ev.applies {
        let mut cumulative = 0;
        for (bound, n) in bifs_node::events::APPLY_BUCKETS.iter().zip(h.buckets) {
            cumulative += n;
            let _ = writeln!(
                out,
                "bifs_apply_duration_seconds_bucket{{outcome=\"{outcome}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "bifs_apply_duration_seconds_bucket{{outcome=\"{outcome}\",le=\"+Inf\"}} {}\nbifs_apply_duration_seconds_sum{{outcome=\"{outcome}\"}} {}\nbifs_apply_duration_seconds_count{{outcome=\"{outcome}\"}} {}",
            h.count, h.sum, h.count
        );
    }
}

/// The store's backing images per state, as their records say (a record left unsettled by
/// an apply that died counts as failed, as `bifs get` reports it). Records only: a scrape
/// never hashes an image.
fn render_states(store: &Store, out: &mut String) {
    let mut counts = [0u64; ImageState::ALL.len()];
    for name in store.record_names().unwrap_or_default() {
        let Ok(Some(rec)) = status::read(store, &name) else {
            continue;
        };
        let rec = status::mark_interrupted(store, rec);
        let Some(st) = rec.status.as_ref() else {
            continue;
        };
        if let Some(i) = ImageState::ALL.iter().position(|s| *s == st.state()) {
            counts[i] += 1;
        }
    }
    out.push_str("# HELP bifs_backing_images Backing images of the store per state of their disk file.\n# TYPE bifs_backing_images gauge\n");
    for (state, n) in ImageState::ALL.iter().zip(counts) {
        let _ = writeln!(
            out,
            "bifs_backing_images{{state=\"{}\"}} {n}",
            state.as_str()
        );
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
}

/// Ready when the store lists, bifs can read all of it, and every view it must serve is
/// prepared: the encrypt views (stable headers) and the unlocks of LUKS images under their
/// own Secret. The body says what is missing. Answered from what the background pass found
/// last (at most a second old): never waits for a derivation, never blocks behind one.
async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let r = state.catalog.readiness();
    let code = if r.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, readiness_text(&r))
}

fn readiness_text(r: &bifs_node::catalog::Readiness) -> String {
    let mut out = String::new();
    if !r.checked {
        out.push_str("starting: the first look at the store is under way\n");
        return out;
    }
    if let Some(e) = &r.store_error {
        let _ = writeln!(out, "store not readable: {e}");
        for w in &r.warnings {
            let _ = writeln!(out, "WARNING: {w}");
        }
        return out;
    }
    let _ = writeln!(
        out,
        "{}: {} images",
        if r.ready() { "ok" } else { "not ready" },
        r.images
    );
    let line = |out: &mut String, what: &str, c: &bifs_node::catalog::Counts| {
        let _ = writeln!(
            out,
            "{what}: {} ready, {} refused, {} preparing",
            c.ready, c.refused, c.preparing
        );
    };
    line(&mut out, "encrypt views", &r.encrypt);
    line(
        &mut out,
        "decrypt views (the image's own Secret)",
        &r.decrypt_own,
    );
    line(
        &mut out,
        "decrypt views (other Secrets, tried in the background)",
        &r.decrypt_other,
    );
    if r.decrypt_skipped > 0 {
        let _ = writeln!(
            out,
            "decrypt views not tried in the background (an unlock would cost more than 4 default keyslots; tried on request): {}",
            r.decrypt_skipped
        );
    }
    let _ = writeln!(
        out,
        "key derivations: {} running of {} at once, {} requests and {} background jobs waiting, {} image digests waiting",
        r.pool.running, r.pool.jobs, r.pool.queued_request, r.pool.queued_background, r.digests_pending
    );
    for w in &r.warnings {
        let _ = writeln!(out, "WARNING: {w}");
    }
    out
}

/// Counts, view kinds and image names (no Secret names or values): image names are what a
/// listing shows, so it needs what a listing needs ([`Access::Read`]).
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = state.authorize(&headers, Access::Read) {
        return e.into_response();
    }
    let catalog = state.catalog.clone();
    let mut body = state.metrics.render();
    let pool = state.catalog.readiness().pool;
    let _ = writeln!(
        body,
        "# HELP bifs_key_derivations_running Key derivations running now (at most --max-kdf-jobs).\n# TYPE bifs_key_derivations_running gauge\nbifs_key_derivations_running {}\n# HELP bifs_key_derivations_queued Key derivation jobs waiting, per queue.\n# TYPE bifs_key_derivations_queued gauge\nbifs_key_derivations_queued{{queue=\"request\"}} {}\nbifs_key_derivations_queued{{queue=\"background\"}} {}\n# HELP bifs_key_derivations_refused_total Requests refused because the request queue was full (503).\n# TYPE bifs_key_derivations_refused_total counter\nbifs_key_derivations_refused_total {}",
        pool.running, pool.queued_request, pool.queued_background, pool.refused
    );
    // Reading the records is blocking I/O.
    if let Ok(states) = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        render_states(catalog.store(), &mut out);
        out
    })
    .await
    {
        body.push_str(&states);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(label("x\ny"), r"x\ny");
    }

    #[test]
    fn histogram_buckets_are_cumulative_when_rendered() {
        bifs_node::events::apply_finished("conflict", Duration::from_millis(50));
        bifs_node::events::apply_finished("conflict", Duration::from_secs(7200));
        let mut out = String::new();
        render_events(&mut out);
        let line = |s: &str| out.lines().any(|l| l == s);
        assert!(
            line("bifs_apply_duration_seconds_bucket{outcome=\"conflict\",le=\"0.1\"} 1"),
            "{out}"
        );
        assert!(
            line("bifs_apply_duration_seconds_bucket{outcome=\"conflict\",le=\"3600\"} 1"),
            "{out}"
        );
        assert!(
            line("bifs_apply_duration_seconds_bucket{outcome=\"conflict\",le=\"+Inf\"} 2"),
            "{out}"
        );
        assert!(
            line("bifs_apply_duration_seconds_count{outcome=\"conflict\"} 2"),
            "{out}"
        );
    }
}
