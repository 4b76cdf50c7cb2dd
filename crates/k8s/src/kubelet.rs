//! The kubelet's atomic writer of Secret volumes, for tests only (`cfg(test)` or the
//! `test-support` feature): the one copy for every test that needs a Secret volume (the
//! integration tests and this crate's unit tests), so all of them read the same layout.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

/// Writes (or updates) the Secret volume `dir` the way the kubelet's atomic writer does: the
/// keys in a new `..<timestamp>` directory (files 0400), a `..data_tmp` symlink to it renamed
/// over `..data`, `KEY -> ..data/KEY` links, and the previous version removed.
pub fn kubelet_write<K: AsRef<str>, V: AsRef<[u8]>>(dir: &Path, keys: &[(K, V)]) {
    static VERSION: AtomicU32 = AtomicU32::new(0);
    let v = VERSION.fetch_add(1, Ordering::Relaxed);
    fs::create_dir_all(dir).unwrap();
    let ts = format!("..2026_11_30_21_00_00.{:09}{}", std::process::id(), v);
    let data = dir.join(&ts);
    fs::create_dir(&data).unwrap();
    for (k, val) in keys {
        let file = data.join(k.as_ref());
        fs::write(&file, val).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o400)).unwrap();
    }
    let old = fs::read_link(dir.join("..data")).ok();
    symlink(&ts, dir.join("..data_tmp")).unwrap();
    fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    for (k, _) in keys {
        let link = dir.join(k.as_ref());
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(k.as_ref()), link).unwrap();
        }
    }
    if let Some(old) = old {
        fs::remove_dir_all(dir.join(old)).unwrap();
    }
}
