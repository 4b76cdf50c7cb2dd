//! Kubernetes Secrets that carry LUKS parameters (Longhorn's `CRYPTO_*` keys): as manifests
//! and as Secret volumes the kubelet mounts.

pub mod secret;
pub mod volume;

pub use secret::{load_secrets, CryptoParams, Secret, SecretError, SecretRef};
pub use volume::SecretSource;
