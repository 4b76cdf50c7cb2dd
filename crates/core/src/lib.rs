//! bifs's formats and transforms, with no I/O policy and no `unsafe` of their own (the SIMD
//! and FFI pieces are in `bifs-sys`).
//!
//! Floors, lowest first; a module uses only those below it:
//! - [`io`]: [`io::ReadAt`], the interface every source and view is read through;
//! - [`xts`], [`kdf`], [`keys`]: the XTS engine, PBKDF2/Argon2 with hostile-cost limits,
//!   zeroized key types;
//! - [`luks`]: the LUKS2 and LUKS1 on-disk formats (parse, validate as cryptsetup does,
//!   unlock, format, dump);
//! - [`image`]: sources: raw files (holes), the qcow2 reader, format detection (above the
//!   formats it detects);
//! - [`view`]: the transforms, each a `ReadAt` over a source: LUKS2 of a raw disk, the
//!   plaintext of a LUKS image, a new header around the same volume key.

pub mod image;
pub mod io;
pub mod kdf;
pub mod keys;
pub mod luks;
pub mod view;
pub mod xts;
