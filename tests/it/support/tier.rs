//! The two test tiers.
//!
//! `cargo test` alone is the FAST tier: unit tests and the integration tests that need nothing
//! but bifs itself. Tests that need root, FUSE, cryptsetup, qemu-img or the Python oracle start
//! with `full_tier_only!("what they need")`: without `BIFS_TEST_ALL=1` they print a loud
//! `SKIPPED` line (to the terminal, past libtest's output capture) and return. `scripts/test.sh`
//! sets `BIFS_TEST_ALL=1`: then they run, and a missing tool FAILS them with an install hint
//! (`require_tools`), never a silent pass.
use std::io::Write;

/// The variable scripts/test.sh sets to run every test.
pub const FULL_TIER_VAR: &str = "BIFS_TEST_ALL";

/// Whether the full tier runs (`BIFS_TEST_ALL` set to anything but empty or `0`).
pub fn full() -> bool {
    std::env::var_os(FULL_TIER_VAR).is_some_and(|v| !v.is_empty() && v != "0")
}

/// True (after saying so on stderr) when the calling test must be skipped: the fast tier runs
/// and the test needs `needs`.
pub fn skipped(needs: &str) -> bool {
    if full() {
        return false;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    // Straight to fd 2: libtest captures `eprintln!` of passing tests.
    let _ = writeln!(
        std::io::stderr().lock(),
        "*** SKIPPED {test} (needs {needs}; run scripts/test.sh, or set {FULL_TIER_VAR}=1) ***"
    );
    true
}

/// Returns from the calling test in the fast tier; see the module docs.
macro_rules! full_tier_only {
    ($needs:expr) => {
        if crate::support::tier::skipped($needs) {
            return;
        }
    };
}
