//! Secret volumes as the kubelet writes them, for tests/it/secret_volumes.rs and
//! tests/it/node_image.rs.
pub use bifs_k8s::kubelet::kubelet_write;

/// Cheap but real KDF costs: PBKDF2 with 1000 iterations.
pub fn crypto_keys(passphrase: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CRYPTO_KEY_VALUE", passphrase.to_string()),
        ("CRYPTO_KEY_PROVIDER", "secret".into()),
        ("CRYPTO_KEY_CIPHER", "aes-xts-plain64".into()),
        ("CRYPTO_KEY_HASH", "sha256".into()),
        ("CRYPTO_KEY_SIZE", "256".into()),
        ("CRYPTO_PBKDF", "pbkdf2".into()),
        ("CRYPTO_PBKDF_FORCE_ITERATIONS", "1000".into()),
    ]
}
