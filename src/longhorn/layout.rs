//! The one place that knows, and writes, the store's on-disk layout.
//!
//! A store is a Longhorn disk directory:
//!
//! ```text
//! <store>/backing-images/<name>-<uuid>/backing       the image, complete (renamed into place last)
//! <store>/backing-images/<name>-<uuid>/backing.tmp   the image while it is being written
//! <store>/backing-images/<name>-<uuid>/backing.cfg   {"name","uuid","size","expectedChecksum","currentChecksum"}
//! <store>/.bifs/records/<name>.json                  the BackingImage as applied, with its status
//! <store>/.bifs/locks/<name>.lock                    flock: exclusive while applied or deleted,
//!                                                    shared while cloned from
//! ```
//!
//! The first three are what Longhorn's backing-image-manager keeps on a disk, so a Longhorn
//! node could take the result over. bifs' own records stay out of the image directories.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::manifest::{valid_name, BackingImage};
use crate::fsutil::sync_dir;

pub const IMAGES_DIR: &str = "backing-images";
pub const BACKING: &str = "backing";
pub const BACKING_TMP: &str = "backing.tmp";
pub const BACKING_CFG: &str = "backing.cfg";
const STATE_DIR: &str = ".bifs";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("store {}: {source}", .path.display())]
    Store { path: PathBuf, source: io::Error },
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("record {}: {message}", .path.display())]
    Record { path: PathBuf, message: String },
    #[error("invalid backing image name {0:?}")]
    Name(String),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LayoutError {
    let path = path.to_path_buf();
    move |source| LayoutError::Io { what, path, source }
}

/// `backing.cfg`, field for field as Longhorn's backing-image-manager writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackingCfg {
    pub name: String,
    pub uuid: String,
    pub size: i64,
    pub expected_checksum: String,
    pub current_checksum: String,
}

/// A Longhorn disk directory used as a store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// An flock held on a backing image's lock file; released on drop.
pub struct Lock {
    _file: File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Applying or deleting the image.
    Exclusive,
    /// Reading it as a clone source: many at once, but no delete meanwhile.
    Shared,
}

impl Store {
    /// Opens an existing directory as a store, creating the layout's directories.
    pub fn open(root: &Path) -> Result<Self, LayoutError> {
        let store_err = |source| LayoutError::Store {
            path: root.to_path_buf(),
            source,
        };
        if !fs::metadata(root).map_err(store_err)?.is_dir() {
            return Err(store_err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            )));
        }
        let store = Self {
            root: root.to_path_buf(),
        };
        for dir in [
            store.root.join(IMAGES_DIR),
            store.records_dir(),
            store.locks_dir(),
        ] {
            fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        }
        Ok(store)
    }

    /// Opens a store for reading only: nothing is created.
    pub fn open_read_only(root: &Path) -> Result<Self, LayoutError> {
        let store_err = |source| LayoutError::Store {
            path: root.to_path_buf(),
            source,
        };
        if !fs::metadata(root).map_err(store_err)?.is_dir() {
            return Err(store_err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            )));
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn records_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR).join("records")
    }

    fn locks_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR).join("locks")
    }

    fn record_path(&self, name: &str) -> Result<PathBuf, LayoutError> {
        if !valid_name(name) {
            return Err(LayoutError::Name(name.into()));
        }
        Ok(self.records_dir().join(format!("{name}.json")))
    }

    /// `backing-images/<name>-<uuid>`: Longhorn's directory for one backing image on a disk.
    pub fn image_dir(&self, name: &str, uuid: &str) -> PathBuf {
        self.root.join(IMAGES_DIR).join(format!("{name}-{uuid}"))
    }

    /// The complete image file of a ready backing image.
    pub fn backing_path(&self, name: &str, uuid: &str) -> PathBuf {
        self.image_dir(name, uuid).join(BACKING)
    }

    pub fn read_record(&self, name: &str) -> Result<Option<BackingImage>, LayoutError> {
        let path = self.record_path(name)?;
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| LayoutError::Record {
                path,
                message: e.to_string(),
            })
    }

    /// Replaces the record atomically (unique temporary name + rename): readers never see a
    /// half-written record, and two writers never share a temporary file.
    pub fn write_record(&self, image: &BackingImage) -> Result<(), LayoutError> {
        let path = self.record_path(image.name())?;
        let json = serde_json::to_vec_pretty(image).map_err(|e| LayoutError::Record {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomically(&path, &json)
    }

    pub fn remove_record(&self, name: &str) -> Result<(), LayoutError> {
        let path = self.record_path(name)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Every record, by name.
    pub fn list_records(&self) -> Result<Vec<BackingImage>, LayoutError> {
        let dir = self.records_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("listing", &dir)(e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .map(str::to_string)
            })
            .filter(|n| valid_name(n))
            .collect();
        names.sort();
        let mut out = Vec::new();
        for n in names {
            if let Some(r) = self.read_record(&n)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Takes the image's lock, waiting for it unless `wait` is false (then `None` if busy).
    pub fn lock(
        &self,
        name: &str,
        mode: LockMode,
        wait: bool,
    ) -> Result<Option<Lock>, LayoutError> {
        if !valid_name(name) {
            return Err(LayoutError::Name(name.into()));
        }
        let path = self.locks_dir().join(format!("{name}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("opening lock", &path))?;
        let mut op = match mode {
            LockMode::Exclusive => libc::LOCK_EX,
            LockMode::Shared => libc::LOCK_SH,
        };
        if !wait {
            op |= libc::LOCK_NB;
        }
        loop {
            // SAFETY: flock on an fd we own; no memory is shared with the kernel.
            let r = unsafe { libc::flock(file.as_raw_fd(), op) };
            if r == 0 {
                return Ok(Some(Lock { _file: file }));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) if !wait => return Ok(None),
                _ => return Err(io_err("locking", &path)(e)),
            }
        }
    }

    /// Whether an apply is running on `name` now (its exclusive lock is held). `None` when the
    /// lock cannot be probed (a read-only store).
    pub fn is_busy(&self, name: &str) -> Option<bool> {
        let path = self.locks_dir().join(format!("{name}.lock"));
        let file = match OpenOptions::new().read(true).open(&path) {
            Ok(f) => f,
            // No lock file: nobody ever locked it, so nobody holds it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Some(false),
            Err(_) => return None,
        };
        // SAFETY: as in `lock`.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        Some(r != 0)
    }

    /// Makes the image directory and empties it of anything an earlier attempt left
    /// (`backing`, `backing.tmp`, `backing.cfg`): a retry starts from nothing.
    pub fn prepare_dir(&self, name: &str, uuid: &str) -> Result<PathBuf, LayoutError> {
        let dir = self.image_dir(name, uuid);
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        for f in [BACKING, BACKING_TMP, BACKING_CFG] {
            remove_if_exists(&dir.join(f))?;
        }
        Ok(dir)
    }

    /// Creates `backing.tmp` (replacing a leftover), for the copier to fill.
    pub fn create_tmp(&self, dir: &Path) -> Result<(File, PathBuf), LayoutError> {
        let path = dir.join(BACKING_TMP);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err("creating", &path))?;
        Ok((file, path))
    }

    /// Finishes an image: writes `backing.cfg`, then renames `backing.tmp` to `backing` and
    /// syncs the directory. `backing` appearing is the last step, so an interrupted apply
    /// never leaves one.
    pub fn commit(&self, dir: &Path, cfg: &BackingCfg) -> Result<(), LayoutError> {
        let cfg_path = dir.join(BACKING_CFG);
        let json = serde_json::to_vec(cfg).map_err(|e| LayoutError::Record {
            path: cfg_path.clone(),
            message: e.to_string(),
        })?;
        write_atomically(&cfg_path, &json)?;
        let tmp = dir.join(BACKING_TMP);
        let backing = dir.join(BACKING);
        fs::rename(&tmp, &backing).map_err(io_err("renaming into", &backing))?;
        sync_dir(dir);
        Ok(())
    }

    /// Removes what a failed attempt wrote into the image directory, and the directory when
    /// nothing else is in it.
    pub fn discard(&self, name: &str, uuid: &str) {
        let dir = self.image_dir(name, uuid);
        for f in [BACKING_TMP, BACKING, BACKING_CFG] {
            let _ = fs::remove_file(dir.join(f));
        }
        let _ = fs::remove_dir(&dir);
    }

    /// Removes the image directory and everything in it.
    pub fn remove_dir(&self, name: &str, uuid: &str) -> Result<(), LayoutError> {
        let dir = self.image_dir(name, uuid);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", &dir)(e)),
            _ => {
                sync_dir(&self.root.join(IMAGES_DIR));
                Ok(())
            }
        }
    }
}

/// Bytes allocated on disk for `path` (holes not counted).
pub fn allocated(path: &Path) -> io::Result<u64> {
    Ok(fs::metadata(path)?.blocks() * 512)
}

fn remove_if_exists(path: &Path) -> Result<(), LayoutError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", path)(e)),
        _ => Ok(()),
    }
}

/// Writes `path` through a temporary file unique to this process and thread, then renames.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("writing", path)(e));
    }
    if let Some(parent) = path.parent() {
        sync_dir(parent);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cfg_is_longhorns_json() {
        let cfg = BackingCfg {
            name: "parrot".into(),
            uuid: "1a2b3c4d".into(),
            size: 42,
            expected_checksum: "".into(),
            current_checksum: "ab".into(),
        };
        assert_eq!(
            serde_json::to_string(&cfg).unwrap(),
            r#"{"name":"parrot","uuid":"1a2b3c4d","size":42,"expectedChecksum":"","currentChecksum":"ab"}"#
        );
    }

    #[test]
    fn locks_exclude_and_share() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.lock("img", LockMode::Shared, false).unwrap();
        assert!(a.is_some());
        assert!(store
            .lock("img", LockMode::Shared, false)
            .unwrap()
            .is_some());
        assert!(store
            .lock("img", LockMode::Exclusive, false)
            .unwrap()
            .is_none());
        drop(a);
        let x = store.lock("img", LockMode::Exclusive, false).unwrap();
        assert!(x.is_some());
        assert_eq!(store.is_busy("img"), Some(true));
        drop(x);
        assert_eq!(store.is_busy("img"), Some(false));
    }
}
