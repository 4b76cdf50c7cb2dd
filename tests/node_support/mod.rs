//! Secret volumes as the kubelet writes them, for tests/secret_volumes.rs and
//! tests/node_image.rs.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

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

/// Writes (or updates) the Secret volume `dir` the way the kubelet's atomic writer does: the
/// keys in a new `..<timestamp>` directory, a `..data_tmp` symlink to it renamed over
/// `..data`, `KEY -> ..data/KEY` links, and the previous version removed.
pub fn kubelet_write(dir: &Path, keys: &[(&str, String)]) {
    static VERSION: AtomicU32 = AtomicU32::new(0);
    let v = VERSION.fetch_add(1, Ordering::Relaxed);
    fs::create_dir_all(dir).unwrap();
    let ts = format!("..2026_11_30_21_00_00.{:09}{}", std::process::id(), v);
    let data = dir.join(&ts);
    fs::create_dir(&data).unwrap();
    for (k, val) in keys {
        fs::write(data.join(k), val).unwrap();
        fs::set_permissions(data.join(k), fs::Permissions::from_mode(0o400)).unwrap();
    }
    let old = fs::read_link(dir.join("..data")).ok();
    symlink(&ts, dir.join("..data_tmp")).unwrap();
    fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    for (k, _) in keys {
        let link = dir.join(k);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(k), link).unwrap();
        }
    }
    if let Some(old) = old {
        fs::remove_dir_all(dir.join(old)).unwrap();
    }
}
