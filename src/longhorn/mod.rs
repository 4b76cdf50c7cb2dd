//! The Longhorn workflow: BackingImage manifests applied to a store laid out as a Longhorn
//! disk, with status records, `get`, `delete`, and key rotation (through
//! [`crate::view::RekeyView`]).
//!
//! - [`manifest`]: the BackingImage object, parsing and the manifest-only checks.
//! - [`source`]: download, upload and clone plans, each one pass of the copier.
//! - [`apply`]: the engine (dependency order, Longhorn's webhook rules, states).
//! - [`status`]: records (upgraded from the previous format), observation, `get`, `delete`.
//!
//! The disk itself (image directories, `backing.cfg`, records, locks) is [`crate::store`]'s.
//! Entry points for front ends: [`apply()`] (admit and make), [`status::list`] /
//! [`status::get`], [`status::watch`], [`status::delete`].

pub mod apply;
pub mod manifest;
pub mod source;
pub mod status;

pub use apply::{apply, Outcome, Report, Secrets};
pub use manifest::{BackingImage, FieldError};
pub use status::{delete, get, list, watch, StatusError};
