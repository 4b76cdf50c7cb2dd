//! What a key derivation is doing while it runs. Argon2 at a Secret's default cost takes
//! seconds (cryptsetup's benchmark aims at 2 s per unlock, more on a busy node), and without a
//! word it looks like a hang. Any step that is still running after [`AFTER`] (or
//! `BIFS_KDF_REPORT_AFTER_MS`) is shown: a
//! spinner with the KDF and its cost on a terminal, else a log line; its end is logged with
//! its time.
//!
//! Steps are reported by [`bifs_core::kdf`] on the thread that runs them, which is blocked in
//! the KDF; one reporter thread here keeps the time.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bifs_core::kdf::{KdfObserver, KdfStep};

/// A step shorter than this is not worth a word.
const AFTER: Duration = Duration::from_secs(1);

/// Overrides [`AFTER`] in milliseconds (0: every step is shown): for tests, which cannot rely
/// on a KDF being slow on every machine, and for whoever wants every derivation logged.
const AFTER_VAR: &str = "BIFS_KDF_REPORT_AFTER_MS";

fn after() -> Duration {
    std::env::var(AFTER_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(AFTER, Duration::from_millis)
}

enum Event {
    Begin { id: u64, what: String, at: Instant },
    End { id: u64 },
}

/// Sends `End` when the step is over.
struct EndOfStep {
    id: u64,
    tx: mpsc::Sender<Event>,
}

impl Drop for EndOfStep {
    fn drop(&mut self) {
        let _ = self.tx.send(Event::End { id: self.id });
    }
}

/// Makes every key derivation of this process reported (once per process).
pub fn install() {
    let (tx, rx) = mpsc::channel::<Event>();
    let spawned = std::thread::Builder::new()
        .name("kdf-report".into())
        .spawn(move || report(rx));
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "no reporter thread: key derivations run without a word");
        return;
    }
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let observer: Arc<KdfObserver> = Arc::new(move |step: &KdfStep| {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let _ = tx.send(Event::Begin {
            id,
            what: step.to_string(),
            at: Instant::now(),
        });
        Box::new(EndOfStep { id, tx: tx.clone() })
    });
    bifs_core::kdf::set_process_observer(observer);
}

struct Running {
    what: String,
    at: Instant,
    shown: Option<Option<indicatif::ProgressBar>>,
}

fn report(rx: mpsc::Receiver<Event>) {
    let terminal = std::io::stderr().is_terminal();
    let after = after();
    let mut running: BTreeMap<u64, Running> = BTreeMap::new();
    loop {
        let next = running
            .values()
            .filter(|r| r.shown.is_none())
            .map(|r| r.at + after)
            .min();
        let event = match next {
            Some(deadline) => {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(e) => Some(e),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            None => match rx.recv() {
                Ok(e) => Some(e),
                Err(_) => return,
            },
        };
        match event {
            Some(Event::Begin { id, what, at }) => {
                // With no delay (`BIFS_KDF_REPORT_AFTER_MS=0`) even a step that ends at once
                // is shown.
                let shown = after.is_zero().then(|| show(&what, terminal));
                running.insert(id, Running { what, at, shown });
            }
            Some(Event::End { id }) => {
                if let Some(Running {
                    what,
                    at,
                    shown: Some(bar),
                }) = running.remove(&id)
                {
                    if let Some(bar) = bar {
                        bar.finish_and_clear();
                    }
                    let seconds = format!("{:.1}", at.elapsed().as_secs_f64());
                    tracing::info!(seconds, "{what}: done");
                }
            }
            None => {
                for r in running.values_mut() {
                    if r.shown.is_none() && r.at.elapsed() >= after {
                        r.shown = Some(show(&r.what, terminal));
                    }
                }
            }
        }
    }
}

/// A spinner on a terminal, a log line otherwise.
fn show(what: &str, terminal: bool) -> Option<indicatif::ProgressBar> {
    if !terminal {
        tracing::info!("{what} (the cost the Secret or the keyslot asks for; this takes a while)");
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    Some(bar)
}
