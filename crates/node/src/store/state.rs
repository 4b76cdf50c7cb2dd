//! The state directory: encrypt-view header regions persisted once per (image, Secret) so an
//! encrypt view's bytes (and so a backing image's checksum) stay the same across mounts.
//!
//! Layout: `STATE/headers/<namespace>/<secret>/<image>.luks` (the 16 MiB header region, in
//! which the volume key exists only wrapped by the Secret's passphrase) and `<image>.json`
//! (a [`HeaderRecord`]: what the header was made for). Directories 0700, files 0600, each
//! written to a temporary file and renamed into place so a crash never leaves half a header.

use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::atomic::write_atomic;
use super::identity::SourceIdentity;
use super::valid_component;
use bifs_k8s::SecretRef;

/// What a persisted header was made for. The header is reused while the source's padded size
/// (which fixes the data segment and the sector size) is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderRecord {
    /// The stored file when the header was made or last confirmed.
    pub source: SourceIdentity,
    /// The raw (virtual) size padded to 512 bytes: the data segment's size.
    pub padded_len: u64,
    /// The stored file's SHA-512 (hex) the stable header was made from; absent in records of
    /// earlier bifs versions (random headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_sha512: Option<String>,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Creates the directory (0700) if needed and tightens its mode if it is looser.
    pub fn open(dir: &Path) -> io::Result<Self> {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let mode = fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        Ok(Self {
            dir: dir.canonicalize()?,
        })
    }

    /// The state directory at `dir`, not created (for read-only use).
    pub fn at(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `(header, record)` paths for `image` under `secret`; `None` for names that cannot be
    /// one path component (never true for names the store and manifests hand out).
    pub fn header_paths(&self, image: &str, secret: &SecretRef) -> Option<(PathBuf, PathBuf)> {
        if ![image, &secret.namespace, &secret.name]
            .iter()
            .all(|c| valid_component(c))
        {
            return None;
        }
        let dir = self
            .dir
            .join("headers")
            .join(&secret.namespace)
            .join(&secret.name);
        Some((
            dir.join(format!("{image}.luks")),
            dir.join(format!("{image}.json")),
        ))
    }

    /// The persisted header region of `image` under `secret` and its record, if both exist.
    /// The header comes back as an open file: served with pread, never held in memory.
    pub fn load_header(
        &self,
        image: &str,
        secret: &SecretRef,
    ) -> io::Result<Option<(File, HeaderRecord)>> {
        let Some((header, record)) = self.header_paths(image, secret) else {
            return Ok(None);
        };
        let record: HeaderRecord = match fs::read(&record) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(file = %record.display(), error = %e, "ignoring a damaged header record");
                    return Ok(None);
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match File::open(&header) {
            Ok(f) => Ok(Some((f, record))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Persists a header region and its record (header first: a record always describes the
    /// header beside it). Returns the header, reopened from its final place.
    pub fn save_header(
        &self,
        image: &str,
        secret: &SecretRef,
        header: &[u8],
        record: &HeaderRecord,
    ) -> io::Result<File> {
        let (header_path, record_path) = self.header_paths(image, secret).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "image or Secret name is not a path component",
            )
        })?;
        if let Some(parent) = header_path.parent() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        write_atomic(&header_path, header, 0o600)?;
        let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        write_atomic(&record_path, &json, 0o600)?;
        File::open(&header_path)
    }

    /// Updates only the record (the source changed but its header still fits).
    pub fn save_record(
        &self,
        image: &str,
        secret: &SecretRef,
        record: &HeaderRecord,
    ) -> io::Result<()> {
        let Some((_, record_path)) = self.header_paths(image, secret) else {
            return Ok(());
        };
        let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        write_atomic(&record_path, &json, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_and_load_roundtrip_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("st")).unwrap();
        let secret = SecretRef {
            namespace: "ns".into(),
            name: "s".into(),
        };
        assert!(state.load_header("img", &secret).unwrap().is_none());
        let record = HeaderRecord {
            source: SourceIdentity {
                size: 1,
                mtime_ns: 2,
                ctime_ns: 5,
                dev: 3,
                ino: 4,
                chain: 0,
                chain_mtime_ns: 0,
            },
            padded_len: 512,
            source_sha512: None,
        };
        state.save_header("img", &secret, b"hdr", &record).unwrap();
        let (_, got) = state.load_header("img", &secret).unwrap().unwrap();
        assert_eq!(got, record);
        let (h, _) = state.header_paths("img", &secret).unwrap();
        assert_eq!(
            fs::metadata(&h).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(state.path()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(state.header_paths("..", &secret).is_none());
    }
}
