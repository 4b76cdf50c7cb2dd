//! SIGINT and SIGTERM: the one place that installs handlers for them. Two ways to hear them:
//!
//! - [`stop_flag`]: a process-wide flag that long work (a copy, `verify`, an apply) polls
//!   between steps, so it can stop cleanly and remove what it left half done;
//! - [`on_stop`]: a callback on a thread of its own (the FUSE mount unmounts itself).
//!
//! Once either is installed, the signals no longer kill the process: the flag or the callback
//! decides what happens.

use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use signal_hook::consts::{SIGINT, SIGTERM};

const STOP_SIGNALS: [i32; 2] = [SIGINT, SIGTERM];

/// Work stopped because SIGINT or SIGTERM arrived (the CLI exits with 130 on it).
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Set by SIGINT/SIGTERM; the handlers are installed by the first call. Work that sees it set
/// stops with [`Interrupted`] and its caller removes its temporary files.
pub fn stop_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    Arc::clone(FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        for sig in STOP_SIGNALS {
            // signal-hook refuses only signals that must not be caught (SIGKILL, SIGSEGV...),
            // never these two.
            if let Err(error) = signal_hook::flag::register(sig, Arc::clone(&flag)) {
                tracing::warn!(signal = sig, %error, "cannot install a signal handler");
            }
        }
        flag
    }))
}

/// Waits for SIGINT/SIGTERM on a thread of its own and calls `action` with the first one.
/// Dropping (or [`StopWatch::close`]) the returned watch stops waiting; `action` is then never
/// called.
pub fn on_stop(action: impl FnOnce(i32) + Send + 'static) -> io::Result<StopWatch> {
    let mut signals = signal_hook::iterator::Signals::new(STOP_SIGNALS)?;
    let handle = signals.handle();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            action(sig);
        }
    });
    Ok(StopWatch(handle))
}

/// The waiting side of [`on_stop`].
pub struct StopWatch(signal_hook::iterator::Handle);

impl StopWatch {
    /// Stops waiting (as dropping does, said out loud).
    pub fn close(self) {}
}

impl Drop for StopWatch {
    fn drop(&mut self) {
        self.0.close();
    }
}
