//! Kubernetes manifests: Secrets that carry LUKS parameters (Longhorn's `CRYPTO_*` keys). A
//! Secret becomes plain [`crate::view::LuksParams`] here (inside [`CryptoParams`], with the
//! Secret's name for messages): the views take those and never see a Kubernetes type.

pub mod secret;

pub use secret::{load_secrets, CryptoParams, Secret, SecretError, SecretRef};
