//! What the suites share. One place for the `bifs` binary's path ([`BIFS`]) and for test
//! noise ([`noise`]); the rest by concern:
//! - [`tier`]: the fast and full tiers (`full_tier_only!`);
//! - [`common`]: cryptsetup, qemu-img, Secret manifests, payloads, the Python XTS oracle,
//!   the parameter matrix (`matrix_tests!`);
//! - [`mount`]: a real `bifs mount` that is always unmounted;
//! - [`apply`]: the Longhorn workflow through the binary, a local HTTP server;
//! - [`server`]: a real `bifs serve` with curl;
//! - [`serve_node`]: `bifs serve` with any flags, its log as it comes, curl with timings;
//! - [`node`]: Secret volumes as the kubelet writes them;
//! - [`longhorn_client`]: backing-image-manager's download client (Go, built once).

#[macro_use]
pub mod tier;
#[macro_use]
pub mod common;
pub mod apply;
#[macro_use]
pub mod longhorn_client;
pub mod mount;
pub mod node;
pub mod serve_node;
pub mod server;

/// The `bifs` binary cargo built for these tests.
pub const BIFS: &str = env!("CARGO_BIN_EXE_bifs");

/// Deterministic pseudo-random bytes (xorshift64): incompressible test data, the same for the
/// same seed on every run.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Sends `signal` to the process `pid` (a child the test started).
pub fn signal(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a child's pid is positive");
    // The child may have exited already: nothing to signal then.
    let _ = rustix::process::kill_process(pid, signal);
}
