//! The Longhorn workflow: BackingImage manifests applied to a store laid out as a Longhorn
//! disk, with status records, `get`, `delete`, and key rotation (through
//! [`bifs_core::view::RekeyView`]).
//!
//! The BackingImage object and the manifest-only checks are [`bifs_k8s::manifest`].
//! - [`source`]: download, upload and clone plans, each one pass of the copier.
//! - [`mod@apply`]: the engine (dependency order, Longhorn's webhook rules, states).
//! - [`status`]: records (upgraded from the previous format), observation, `get`, `delete`.
//!
//! The disk itself (image directories, `backing.cfg`, records, locks) is [`crate::store`]'s.
//! Entry points for front ends: [`apply()`] (admit and make), [`status::list`] /
//! [`status::get`], [`status::watch`], [`status::delete`].

pub mod apply;
pub mod download;
pub mod source;
pub mod status;
pub mod upload;

pub use apply::{apply, apply_with, node_name, ApplyOptions, Outcome, Report, Secrets};
pub use bifs_k8s::manifest::{BackingImage, FieldError};
pub use download::{Cidr, DownloadPolicy};
pub use status::{delete, get, list, watch, StatusError};
