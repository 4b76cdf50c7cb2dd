//! Kubernetes manifests: Secrets that carry LUKS parameters (Longhorn's `CRYPTO_*` keys).

pub mod secret;

pub use secret::{load_secrets, CryptoParams, Secret, SecretError, SecretRef};
