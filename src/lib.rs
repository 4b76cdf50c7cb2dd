//! bifs: clone disk images as-is, into LUKS2, or out of LUKS2, by reading through views.
//!
//! Data flows one way: a Secret manifest becomes [`view::LuksParams`] (in [`k8s`]); an image file becomes an
//! [`image::ReadAt`] source; a [`view`] transforms a source into another `ReadAt` (LUKS2 of it,
//! plaintext of it); the [`catalog`] names the views of a store; the FUSE adapter (and the CLI, in the
//! binary) only route reads to views.//!
//! Unsafe code is denied except in three audited places, each block with a `SAFETY:` comment:
//! the AVX-512 XTS kernels ([`xts`]), the libcrypto FFI ([`sha512`]) and the libcryptsetup /
//! device-mapper calls ([`verify::libcs`]); plus `mlock` of key material in [`keys`], which no
//! safe API offers. Everything else uses std and `rustix`.
#![deny(unsafe_code)]

pub mod catalog;
pub mod copier;
pub mod fs;
pub mod fsutil;
pub mod http;
pub mod image;
pub mod k8s;
pub mod kdf;
pub mod keys;
pub mod longhorn;
pub mod luks;
pub mod sha512;
pub mod signals;
pub mod store;
pub mod verify;
pub mod view;
pub mod xts;
