//! The Longhorn workflow: BackingImage manifests applied to a store laid out as a Longhorn
//! disk, with status records, `get`, `delete`, and key rotation.
//!
//! - [`manifest`]: the BackingImage object, parsing and the manifest-only checks.
//! - [`layout`]: the store on disk (the only module that knows or writes it), locks.
//! - [`source`]: download, upload and clone plans, each one pass of the copier.
//! - [`apply`]: the engine (dependency order, Longhorn's webhook rules, states).
//! - [`status`]: what `get` shows.
//! - [`rekey`]: a new header around the same volume key, data copied unchanged.

pub mod apply;
// Until its flock calls move to std's `File::lock`/`try_lock_shared` (the store rework).
#[allow(unsafe_code)]
pub mod layout;
pub mod manifest;
pub mod rekey;
pub mod source;
pub mod status;

pub use apply::{apply, Outcome, Report, Secrets};
pub use layout::Store;
pub use manifest::{BackingImage, FieldError};
