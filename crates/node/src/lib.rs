//! What lives on a node, above the formats: the store, the catalog of views, the Longhorn
//! workflow and the copier. The faces (FUSE, HTTP, the CLI) use this crate; it uses none of
//! them.
//!
//! - [`store`]: the one module that knows the disk (flat or Longhorn layout, `backing.cfg`,
//!   records, locks, persisted headers) and the one that writes it (atomically);
//! - [`catalog`]: which views a store has, opening them, unlocked keys cached per image and
//!   Secret;
//! - [`checksum`]: the one SHA-512 reader (views, stored files);
//! - [`kdfpool`]: the threads key derivations run on, their number and queue bounded;
//! - [`copier`]: a view or a stream into a file: sparse, SHA-512 while writing, progress;
//! - [`longhorn`]: BackingImage manifests applied to a store, status, `get`, `delete`;
//! - [`events`]: process-wide counts of what happened (headers made, unlock failures,
//!   applies), plain numbers that a face may expose (the HTTP face's `/metrics`);
//! - [`signals`]: SIGINT/SIGTERM as a flag that long work polls.

pub mod catalog;
pub mod checksum;
pub mod copier;
pub mod events;
pub mod kdfpool;
pub mod longhorn;
pub mod signals;
pub mod store;
