//! Kubernetes Secrets that carry LUKS parameters (Longhorn's `CRYPTO_*` keys), as manifests
//! and as Secret volumes the kubelet mounts. A Secret becomes plain
//! [`crate::view::LuksParams`] here (inside [`CryptoParams`], with the Secret's name for
//! messages): the views take those and never see a Kubernetes type.

pub mod secret;
pub mod volume;

pub use secret::{load_secrets, CryptoParams, Secret, SecretError, SecretRef};
pub use volume::SecretSource;
