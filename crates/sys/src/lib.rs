//! The audited unsafe code of bifs, and nothing else: every other crate of the workspace
//! forbids `unsafe` (bifs-verify's libcryptsetup bindings excepted). Each block here says with
//! `SAFETY:` why it holds (`clippy::undocumented_unsafe_blocks` is denied, and so is
//! `unsafe_op_in_unsafe_fn`), and each module offers safe functions and types only.
//!
//! - [`xts`]: the SIMD half of the XTS engine (x86-64): the VAES engine and the AVX2/AVX-512
//!   tweak kernels, reachable only through values that a run-time CPU check makes and whose
//!   methods check the geometry first; bifs-core's `xts` keeps the rest of the engine;
//! - [`sha512`]: SHA-512 through OpenSSL's libcrypto (the copier's one serial stage);
//! - [`mlock`]: locking key buffers in RAM (no safe API offers `mlock`);
//! - [`malloc`]: the C allocator's one setting a daemon needs (`mallopt`);
//! - [`mapped`]: a file's bytes read through a short-lived mapping of its page cache, with a
//!   SIGBUS guard for a file that shrinks meanwhile.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod malloc;
pub mod mapped;
pub mod mlock;
pub mod sha512;
pub mod xts;
