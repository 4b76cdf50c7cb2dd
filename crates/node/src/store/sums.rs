//! The SHA-512 of served views, cached by ETag in the state directory
//! (`STATE/http-sha512/<etag>`), written as every small file of the store is: atomically.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use super::atomic::write_atomic;
use super::state::StateDir;

const SUMS_DIR: &str = "http-sha512";

impl StateDir {
    /// The file of `etag`'s sum; `None` for an ETag that is not plain hex (never one the
    /// server made).
    fn sum_path(&self, etag: &str) -> Option<PathBuf> {
        let etag = etag.trim_matches('"');
        (!etag.is_empty() && etag.len() <= 128 && etag.bytes().all(|c| c.is_ascii_hexdigit()))
            .then(|| self.path().join(SUMS_DIR).join(etag))
    }

    /// The cached SHA-512 (128 hex digits) of the view whose ETag is `etag`, if there is one.
    pub fn view_sum(&self, etag: &str) -> Option<String> {
        let text = fs::read_to_string(self.sum_path(etag)?).ok()?;
        let sum = text.trim();
        (sum.len() == 128 && sum.bytes().all(|c| c.is_ascii_hexdigit())).then(|| sum.to_owned())
    }

    /// Caches `sum` for `etag` (directory 0700, file 0600, temporary file + rename).
    pub fn save_view_sum(&self, etag: &str, sum: &str) -> io::Result<()> {
        let path = self
            .sum_path(etag)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "an ETag is hex digits"))?;
        if let Some(dir) = path.parent() {
            DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        write_atomic(&path, format!("{sum}\n").as_bytes(), 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_roundtrip_and_odd_etags_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let sum = "ab".repeat(64);
        assert!(state.view_sum("\"0123abcd\"").is_none());
        state.save_view_sum("\"0123abcd\"", &sum).unwrap();
        assert_eq!(
            state.view_sum("\"0123abcd\"").as_deref(),
            Some(sum.as_str())
        );
        assert!(state.save_view_sum("../x", &sum).is_err());
        assert!(state.view_sum("../x").is_none());
        let left: Vec<_> = fs::read_dir(dir.path().join(SUMS_DIR)).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left");
    }
}
