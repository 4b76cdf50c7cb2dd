//! The Kubernetes manifests bifs reads and writes, as plain data with the checks Kubernetes
//! and Longhorn apply to them; no disk layout, no I/O policy beyond reading the files given.
//!
//! - [`secret`]: Secrets that carry LUKS parameters (Longhorn's `CRYPTO_*` keys). A Secret
//!   becomes plain [`bifs_core::view::LuksParams`] here (inside [`CryptoParams`], with the
//!   Secret's name for messages): the views take those and never see a Kubernetes type.
//! - [`volume`]: Secrets from manifest files and from the Secret volumes the kubelet mounts,
//!   re-read when they change.
//! - [`manifest`]: the Longhorn BackingImage object, parsing, and Longhorn's admission rules
//!   that need nothing but the manifest (AutoCorrectName, field checks, the mutator).

pub mod manifest;
pub mod secret;
pub mod time;
pub mod volume;

#[cfg(any(test, feature = "test-support"))]
pub mod kubelet;

pub use secret::{CryptoParams, Secret, SecretError, SecretRef};
pub use volume::{load_secrets, SecretSource};
