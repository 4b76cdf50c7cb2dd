//! The audited unsafe code of bifs, and nothing else: every other crate of the workspace
//! forbids `unsafe`. Each block here says with `SAFETY:` why it holds
//! (`clippy::undocumented_unsafe_blocks` is denied).
//!
//! - [`sha512`]: SHA-512 through OpenSSL's libcrypto (the copier's one serial stage);
//! - [`mlock`]: locking key buffers in RAM (no safe API offers `mlock`).
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod mlock;
pub mod sha512;
