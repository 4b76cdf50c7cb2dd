//! The integration tests: one binary, a module per suite (as ripgrep does), so the workspace
//! is linked once. Run one suite with `cargo test --release --test it SUITE::`, one test by
//! its path, e.g. `BIFS_TEST_ALL=1 cargo test --release --test it
//! interop_cryptsetup::bifs_encrypt_to_cryptsetup::k512_s4096_argon2id_sha512`.
//!
//! Tiers (see `support::tier`): plain `cargo test` is the fast tier; what needs root or system
//! tools says SKIPPED there and runs under `BIFS_TEST_ALL=1` (scripts/test.sh), where a
//! missing tool fails.

#[macro_use]
mod support;

mod apply;
mod browser;
mod cli;
mod deploy_manifests;
mod docs;
mod faults;
mod hardening;
mod hostile;
mod interop_cryptsetup;
mod kdf_budget;
mod keys;
mod layers;
mod longhorn_download;
mod luks_fidelity;
mod mount;
mod node_image;
mod qcow2;
mod redbot;
mod secret_volumes;
mod serve;
mod serve_api;
mod serve_metrics;
mod stable_views;
mod verify;
