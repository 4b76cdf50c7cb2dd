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

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{Access, AppState};
use bifs_k8s::manifest::State as ImageState;
use bifs_node::catalog::Mode;
use bifs_node::events::{self, APPLY_BUCKETS};
use bifs_node::longhorn::status;
use bifs_node::store::Store;

type ModeLabel = [(&'static str, &'static str); 1];

/// The server's own counters. Cheap to clone; every clone counts into the same counters.
#[derive(Clone, Default)]
pub struct Metrics {
    bytes: Family<ModeLabel, Counter<u64, AtomicU64>>,
    open_views: Gauge,
    reads_in_flight: Gauge,
    connections: Gauge,
    send_timeouts: Counter,
    buffered: Gauge,
}

/// Decrements reads in flight when a read ends (however it ends).
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    pub fn bytes_read(&self, mode: Mode, n: u64) {
        self.bytes.get_or_create(&[("mode", mode.name())]).inc_by(n);
    }
    pub fn read_started(&self) -> InFlight {
        self.reads_in_flight.inc();
        InFlight(self.reads_in_flight.clone())
    }
    pub fn handle_opened(&self) {
        self.open_views.inc();
    }
    pub fn handle_closed(&self) {
        self.open_views.dec();
    }
    pub fn connection_opened(&self) {
        self.connections.inc();
    }
    pub fn connection_closed(&self) {
        self.connections.dec();
    }
    pub fn send_timed_out(&self) {
        self.send_timeouts.inc();
    }
    /// Response bytes read from views and not sent yet (`n` may be negative).
    pub fn buffered(&self, n: i64) {
        self.buffered.inc_by(n);
    }

    /// The Prometheus text exposition (format 0.0.4) of the server's counters, the process's
    /// events, `states` (backing images per state, read by the caller) and the key derivation
    /// pool.
    pub fn render(&self, states: StateCounts, pool: bifs_node::kdfpool::PoolStats) -> String {
        let mut registry = Registry::default();
        for mode in Mode::ALL {
            // Every view kind shows, at 0 until read.
            let _ = self.bytes.get_or_create(&[("mode", mode.name())]);
        }
        registry.register(
            "bifs_http_view_bytes_read",
            "Bytes read from views to answer HTTP requests, per view kind",
            self.bytes.clone(),
        );
        registry.register(
            "bifs_http_open_views",
            "Views open for responses being sent",
            self.open_views.clone(),
        );
        registry.register(
            "bifs_http_reads_in_flight",
            "View reads running on the blocking pool",
            self.reads_in_flight.clone(),
        );
        registry.register(
            "bifs_http_connections",
            "Connections open (at most --max-connections)",
            self.connections.clone(),
        );
        registry.register(
            "bifs_http_send_timeouts",
            "Connections closed because the client took no data for --send-timeout",
            self.send_timeouts.clone(),
        );
        registry.register(
            "bifs_http_response_buffer_bytes",
            "View bytes read for responses and not sent yet",
            self.buffered.clone(),
        );
        registry.register_collector(Box::new(EventsCollector(events::snapshot())));
        registry.register_collector(Box::new(states));
        registry.register_collector(Box::new(PoolCollector(pool)));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

/// The process-wide events (headers made, unlock failures, apply durations) as of one scrape.
#[derive(Debug)]
struct EventsCollector(events::Events);

impl Collector for EventsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ev = &self.0;
        let mut m = encoder.encode_descriptor(
            "bifs_encrypt_headers_created",
            "LUKS2 headers made for encrypt views, per image",
            None,
            MetricType::Counter,
        )?;
        for (image, n) in &ev.headers_created {
            ConstCounter::new(*n).encode(m.encode_family(&[("image", image.as_str())])?)?;
        }
        let mut m = encoder.encode_descriptor(
            "bifs_unlock_failures",
            "Passphrases that opened no keyslot, per view kind and image",
            None,
            MetricType::Counter,
        )?;
        for ((mode, image), n) in &ev.unlock_failures {
            let labels = [("mode", *mode), ("image", image.as_str())];
            ConstCounter::new(*n).encode(m.encode_family(&labels)?)?;
        }
        let mut m = encoder.encode_descriptor(
            "bifs_key_derivations",
            "Key derivation jobs (stable encrypt headers, unlocks) per outcome",
            None,
            MetricType::Counter,
        )?;
        for (outcome, n) in &ev.derivations {
            ConstCounter::new(*n).encode(m.encode_family(&[("outcome", *outcome)])?)?;
        }
        let mut m = encoder.encode_descriptor(
            "bifs_apply_duration_seconds",
            "Time to apply one backing image, per outcome",
            None,
            MetricType::Histogram,
        )?;
        for (outcome, h) in &ev.applies {
            let mut buckets: Vec<(f64, u64)> =
                APPLY_BUCKETS.iter().copied().zip(h.buckets).collect();
            let counted: u64 = h.buckets.iter().sum();
            buckets.push((f64::INFINITY, h.count - counted));
            m.encode_family(&[("outcome", *outcome)])?
                .encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)?;
        }
        Ok(())
    }
}

/// The key derivation pool as of one scrape.
#[derive(Debug)]
struct PoolCollector(bifs_node::kdfpool::PoolStats);

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let p = &self.0;
        let mut m = encoder.encode_descriptor(
            "bifs_key_derivations_running",
            "Key derivations running now (at most --max-kdf-jobs)",
            None,
            MetricType::Gauge,
        )?;
        m.encode_gauge(&(p.running as i64))?;
        let mut m = encoder.encode_descriptor(
            "bifs_key_derivations_queued",
            "Key derivation jobs waiting, per queue",
            None,
            MetricType::Gauge,
        )?;
        m.encode_family(&[("queue", "request")])?
            .encode_gauge(&(p.queued_request as i64))?;
        m.encode_family(&[("queue", "background")])?
            .encode_gauge(&(p.queued_background as i64))?;
        let m = encoder.encode_descriptor(
            "bifs_key_derivations_refused",
            "Requests refused because the request queue was full (503)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(p.refused).encode(m)?;
        Ok(())
    }
}

/// Backing images per state of their disk file, read from the records at one scrape.
#[derive(Debug)]
pub struct StateCounts([u64; ImageState::ALL.len()]);

impl Collector for StateCounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = encoder.encode_descriptor(
            "bifs_backing_images",
            "Backing images of the store per state of their disk file",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in ImageState::ALL.iter().zip(self.0) {
            m.encode_family(&[("state", state.as_str())])?
                .encode_gauge(&(n as i64))?;
        }
        Ok(())
    }
}

/// The store's backing images per state, as their records say (a record left unsettled by
/// an apply that died counts as failed, as `bifs get` reports it). Records only: a scrape
/// never hashes an image.
fn count_states(store: &Store) -> StateCounts {
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
    StateCounts(counts)
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
}

/// Ready when the store lists, bifs can read all of it, and every view it must serve is
/// prepared: the encrypt views (stable headers) and the unlocks of LUKS images under their
/// own Secret. The body says what is missing: as counts to anyone (a probe sends no token),
/// with the details (the store's error, the warnings, which name paths and Secrets) only to a
/// request that may read ([`Access::Read`]); the log has them too. Answered from what the
/// background pass found last (at most a second old): never waits for a derivation, never
/// blocks behind one.
async fn ready(State(state): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let r = state.catalog.readiness();
    let code = if r.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let details = state.authorize(&headers, Access::Read).is_ok();
    (code, readiness_text(&r, details))
}

/// What the details of an unauthorized /readyz become.
const DETAILS_HIDDEN: &str =
    "details need the bearer token (Authorization: Bearer ...); the server log has them";

fn readiness_text(r: &bifs_node::catalog::Readiness, details: bool) -> String {
    let mut out = String::new();
    if !r.checked {
        out.push_str("starting: the first look at the store is under way\n");
        return out;
    }
    let warnings = |out: &mut String| {
        if details {
            for w in &r.warnings {
                let _ = writeln!(out, "WARNING: {w}");
            }
        } else if !r.warnings.is_empty() {
            let _ = writeln!(
                out,
                "WARNING: {} problems ({DETAILS_HIDDEN})",
                r.warnings.len()
            );
        }
    };
    if let Some(e) = &r.store_error {
        if details {
            let _ = writeln!(out, "store not readable: {e}");
        } else {
            let _ = writeln!(out, "store not readable ({DETAILS_HIDDEN})");
        }
        warnings(&mut out);
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
    warnings(&mut out);
    out
}

/// Counts, view kinds and image names (no Secret names or values): image names are what a
/// listing shows, so it needs what a listing needs ([`Access::Read`]).
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = state.authorize(&headers, Access::Read) {
        return e.into_response();
    }
    let catalog = state.catalog.clone();
    // Reading the records is blocking I/O.
    let states = tokio::task::spawn_blocking(move || count_states(catalog.store()))
        .await
        .unwrap_or(StateCounts([0; ImageState::ALL.len()]));
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        state.metrics.render(states, state.catalog.readiness().pool),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lines(out: &str) -> Vec<&str> {
        out.lines().collect()
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        bifs_node::events::header_created("a\"b\\c\nd");
        let out = m.render(StateCounts([0; ImageState::ALL.len()]), Default::default());
        assert!(
            lines(&out).contains(&r#"bifs_encrypt_headers_created_total{image="a\"b\\c\nd"} 1"#),
            "{out}"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_when_rendered() {
        bifs_node::events::apply_finished("conflict", Duration::from_millis(50));
        bifs_node::events::apply_finished("conflict", Duration::from_secs(7200));
        let out =
            Metrics::default().render(StateCounts([0; ImageState::ALL.len()]), Default::default());
        let l = lines(&out);
        for want in [
            "bifs_apply_duration_seconds_bucket{outcome=\"conflict\",le=\"0.1\"} 1",
            "bifs_apply_duration_seconds_bucket{outcome=\"conflict\",le=\"3600\"} 1",
            "bifs_apply_duration_seconds_bucket{outcome=\"conflict\",le=\"+Inf\"} 2",
            "bifs_apply_duration_seconds_count{outcome=\"conflict\"} 2",
        ] {
            assert!(l.contains(&want), "{want} in\n{out}");
        }
    }

    #[test]
    fn server_counters_and_states() {
        let m = Metrics::default();
        m.bytes_read(Mode::Encrypt, 4096);
        let r = m.read_started();
        m.handle_opened();
        let out = m.render(StateCounts([0; ImageState::ALL.len()]), Default::default());
        let l = lines(&out);
        assert!(
            l.contains(&"bifs_http_view_bytes_read_total{mode=\"encrypt\"} 4096"),
            "{out}"
        );
        assert!(
            l.contains(&"bifs_http_view_bytes_read_total{mode=\"raw\"} 0"),
            "{out}"
        );
        assert!(l.contains(&"bifs_http_reads_in_flight 1"), "{out}");
        assert!(l.contains(&"bifs_http_open_views 1"), "{out}");
        drop(r);
        let out = m.render(StateCounts([0; ImageState::ALL.len()]), Default::default());
        assert!(
            lines(&out).contains(&"bifs_http_reads_in_flight 0"),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "bifs_backing_images{{state=\"{}\"}} 0",
                ImageState::ALL[0].as_str()
            )),
            "{out}"
        );
    }
}
