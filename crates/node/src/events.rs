//! Process-wide counts of what happened, whoever made it happen (the FUSE mount, the CLI,
//! the HTTP server): LUKS2 headers made for encrypt views, passphrases that opened nothing,
//! applies and how long they took. Plain numbers, recorded here and read by a face that
//! exposes them (the HTTP face's `/metrics`); only counts and image names, never a Secret's
//! name or value.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the apply duration histogram: admission refusals take
/// milliseconds, copies of large images minutes.
pub const APPLY_BUCKETS: [f64; 11] = [
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
];

#[derive(Default, Clone, Debug)]
pub struct Histogram {
    /// Counts per bucket of [`APPLY_BUCKETS`] (not cumulative; summed when rendered).
    pub buckets: [u64; APPLY_BUCKETS.len()],
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        if let Some(i) = APPLY_BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }
}

#[derive(Default, Clone, Debug)]
pub struct Events {
    pub headers_created: BTreeMap<String, u64>,
    pub unlock_failures: BTreeMap<(&'static str, String), u64>,
    pub applies: BTreeMap<&'static str, Histogram>,
    /// Key derivation jobs per outcome (`ready`, `refused`, `failed`, `cancelled`).
    pub derivations: BTreeMap<&'static str, u64>,
}

static EVENTS: Mutex<Events> = Mutex::new(Events {
    headers_created: BTreeMap::new(),
    unlock_failures: BTreeMap::new(),
    applies: BTreeMap::new(),
    derivations: BTreeMap::new(),
});

fn events() -> std::sync::MutexGuard<'static, Events> {
    EVENTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The catalog made (and persisted) a new LUKS2 header for an encrypt view of `image`.
pub fn header_created(image: &str) {
    *events()
        .headers_created
        .entry(image.to_owned())
        .or_default() += 1;
}

/// A passphrase was tried on `image` for a view of kind `mode` (the catalog's view kind
/// name) and opened no keyslot (cached answers to a retry are not counted again: they try
/// nothing).
pub fn unlock_failed(mode: &'static str, image: &str) {
    *events()
        .unlock_failures
        .entry((mode, image.to_owned()))
        .or_default() += 1;
}

/// The apply of one backing image ended with `outcome` (the outcome's label) after `took`.
pub fn apply_finished(outcome: &'static str, took: Duration) {
    events()
        .applies
        .entry(outcome)
        .or_default()
        .observe(took.as_secs_f64());
}

/// A key derivation job (a stable header, an unlock) ended with `outcome`.
pub fn derivation(outcome: &'static str) {
    *events().derivations.entry(outcome).or_default() += 1;
}

/// A copy of every count so far, for a face to render.
pub fn snapshot() -> Events {
    events().clone()
}
