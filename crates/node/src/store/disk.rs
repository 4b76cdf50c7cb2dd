//! Writing backing images into a Longhorn disk, and bifs's records and locks beside them.

use std::fs::TryLockError;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::atomic::sync_dir;
use super::atomic::write_atomic;
use super::cfg::BackingCfg;
use super::layout::{BACKING, BACKING_CFG, BACKING_TMP, IMAGES_DIR};
use super::{io_err, valid_component, Store, StoreError, DEFAULT_STATE_DIR};

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
    pub(super) fn records_dir(&self) -> PathBuf {
        self.root.join(DEFAULT_STATE_DIR).join("records")
    }

    pub(super) fn locks_dir(&self) -> PathBuf {
        self.root.join(DEFAULT_STATE_DIR).join("locks")
    }

    fn record_path(&self, name: &str) -> Result<PathBuf, StoreError> {
        if !valid_component(name) || name.starts_with('.') {
            return Err(StoreError::Name(name.into()));
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

    /// The `backing.cfg` of an image directory, either format.
    pub fn read_cfg(&self, name: &str, uuid: &str) -> Option<BackingCfg> {
        BackingCfg::read(&self.image_dir(name, uuid).join(BACKING_CFG))
    }

    /// Rewrites an image's `backing.cfg` (after its file was validated again).
    pub fn write_cfg(&self, name: &str, uuid: &str, cfg: &BackingCfg) -> Result<(), StoreError> {
        let path = self.image_dir(name, uuid).join(BACKING_CFG);
        cfg.write(&path).map_err(io_err("writing", &path))
    }

    /// The record of `name` as JSON (its shape is the caller's business), if there is one.
    pub fn read_record(&self, name: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let path = self.record_path(name)?;
        let text = fs::read(&path);
        parse_json_if_any(path, text)
    }

    /// The uuid a record gives its image (`status.uuid`), used to pick the ready copy.
    pub(super) fn recorded_uuid(&self, name: &str) -> Option<String> {
        let rec = self.read_record(name).ok()??;
        rec.get("status")?
            .get("uuid")?
            .as_str()
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
    }

    /// Replaces the record atomically: readers never see a half-written record.
    pub fn write_record<T: Serialize>(&self, name: &str, record: &T) -> Result<(), StoreError> {
        write_private_json(&self.record_path(name)?, record)
    }

    pub fn remove_record(&self, name: &str) -> Result<(), StoreError> {
        let path = self.record_path(name)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", &path)(e)),
            _ => {
                sync_dir(&self.records_dir());
                Ok(())
            }
        }
    }

    /// The names that have a record, sorted.
    pub fn record_names(&self) -> Result<Vec<String>, StoreError> {
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
                    .filter(|n| !n.starts_with('.') && valid_component(n))
                    .map(str::to_string)
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Takes the image's lock, waiting for it unless `wait` is false (then `None` if busy).
    pub fn lock(&self, name: &str, mode: LockMode, wait: bool) -> Result<Option<Lock>, StoreError> {
        if !valid_component(name) || name.starts_with('.') {
            return Err(StoreError::Name(name.into()));
        }
        let path = self.locks_dir().join(format!("{name}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("opening lock", &path))?;
        // std's File locks are flock(2) on Linux: released when the file is closed.
        loop {
            let r = match (mode, wait) {
                (LockMode::Exclusive, true) => file.lock().map_err(TryLockError::Error),
                (LockMode::Shared, true) => file.lock_shared().map_err(TryLockError::Error),
                (LockMode::Exclusive, false) => file.try_lock(),
                (LockMode::Shared, false) => file.try_lock_shared(),
            };
            match r {
                Ok(()) => return Ok(Some(Lock { _file: file })),
                Err(TryLockError::WouldBlock) => return Ok(None),
                Err(TryLockError::Error(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(TryLockError::Error(e)) => return Err(io_err("locking", &path)(e)),
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
        match file.try_lock_shared() {
            Ok(()) => Some(false),
            Err(TryLockError::WouldBlock) => Some(true),
            Err(TryLockError::Error(_)) => None,
        }
    }

    /// Makes the image directory and empties it of anything an earlier attempt left
    /// (`backing`, `backing.tmp`, `backing.cfg`): a retry starts from nothing. A directory
    /// that is a symlink is [`StoreError::NotRegular`]: never followed.
    pub fn prepare_dir(&self, name: &str, uuid: &str) -> Result<PathBuf, StoreError> {
        let dir = self.image_dir(name, uuid);
        let images = self.root.join(IMAGES_DIR);
        fs::create_dir_all(&images).map_err(io_err("creating", &images))?;
        match fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(io_err("creating", &dir)(e))
            }
            _ => {}
        }
        let meta = fs::symlink_metadata(&dir).map_err(io_err("looking at", &dir))?;
        if !meta.is_dir() {
            return Err(self.not_regular(&dir));
        }
        for f in [BACKING, BACKING_TMP, BACKING_CFG] {
            remove_if_exists(&dir.join(f))?;
        }
        Ok(dir)
    }

    /// Creates `backing.tmp` afresh (a leftover regular file is replaced), for the copier or
    /// an upload to fill: never through a symlink ([`Store::open_upload`]).
    pub fn create_tmp(&self, dir: &Path) -> Result<(File, PathBuf), StoreError> {
        let path = dir.join(BACKING_TMP);
        let file = self
            .open_upload(&path, true)?
            .ok_or_else(|| self.not_regular(&path))?;
        Ok((file, path))
    }

    /// Finishes an image as backing-image-manager does: `backing.cfg` (whose
    /// `modificationTime` is the file's mtime, which the rename keeps), then `backing.tmp`
    /// renamed to `backing` and the directory synced. `backing` appearing is the last step,
    /// so an interrupted apply never leaves one. `cfg.name` and `modification_time` are
    /// filled in here.
    pub fn commit(&self, dir: &Path, mut cfg: BackingCfg) -> Result<BackingCfg, StoreError> {
        let tmp = dir.join(BACKING_TMP);
        let backing = dir.join(BACKING);
        cfg.name = backing.to_string_lossy().into_owned();
        cfg.modification_time =
            super::cfg::modification_time(&tmp).map_err(io_err("reading", &tmp))?;
        let cfg_path = dir.join(BACKING_CFG);
        cfg.write(&cfg_path).map_err(io_err("writing", &cfg_path))?;
        fs::rename(&tmp, &backing).map_err(io_err("renaming into", &backing))?;
        sync_dir(dir);
        Ok(cfg)
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
    pub fn remove_dir(&self, name: &str, uuid: &str) -> Result<(), StoreError> {
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

/// Bytes allocated on disk for `path` (holes not counted), as backing-image-manager's
/// `GetFileRealSize` counts them.
pub fn allocated(path: &Path) -> io::Result<u64> {
    Ok(fs::metadata(path)?.blocks() * 512)
}

/// The JSON that `read` (a read of `path`) found, or `None` when there was no file.
pub(super) fn parse_json_if_any<T: serde::de::DeserializeOwned>(
    path: PathBuf,
    read: io::Result<Vec<u8>>,
) -> Result<Option<T>, StoreError> {
    let text = match read {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("reading", &path)(e)),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| StoreError::Record {
            path,
            message: e.to_string(),
        })
}

/// `value` as JSON at `path`, replaced atomically, readable by this user only (records and
/// upload tickets: what a reader of the store must not see half-written).
pub(super) fn write_private_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Record {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    write_atomic(path, &json, 0o600).map_err(io_err("writing", path))
}

fn remove_if_exists(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_exclude_and_share() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_disk(dir.path()).unwrap();
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

    #[test]
    fn open_disk_keeps_an_existing_disk_cfg() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = r#"{"diskName":"disk-1","diskUUID":"0f8f2e6c-8a1b-4a49-9d36-3b4b0e1d2c3a","diskDriver":"","state":"ready"}"#;
        fs::write(dir.path().join("longhorn-disk.cfg"), cfg).unwrap();
        let store = Store::open_disk(dir.path()).unwrap();
        assert_eq!(store.disk_uuid(), "0f8f2e6c-8a1b-4a49-9d36-3b4b0e1d2c3a");
        assert_eq!(
            fs::read_to_string(dir.path().join("longhorn-disk.cfg")).unwrap(),
            cfg
        );
        let other = tempfile::tempdir().unwrap();
        let made = Store::open_disk(other.path()).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&fs::read(other.path().join("longhorn-disk.cfg")).unwrap())
                .unwrap();
        assert_eq!(v["diskUUID"], made.disk_uuid());
        assert_eq!(
            Store::open_disk(other.path()).unwrap().disk_uuid(),
            made.disk_uuid()
        );
    }
}
