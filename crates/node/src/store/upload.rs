//! Where an upload's bytes land: in place, in the store's own layout, so completing it is a
//! rename (never a second copy). A Longhorn disk receives it in the image directory's
//! `backing.tmp` ([`Store::prepare_dir`], [`Store::create_tmp`], [`Store::commit`]); a flat
//! store in a hidden file beside the images, `DIR/.<name>.upload`, renamed to `DIR/<name>`
//! (never over an existing file). The upload workflow itself is
//! [`crate::longhorn::upload`].

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::atomic::sync_dir;
use super::layout::BACKING_TMP;
use super::{io_err, valid_component, Store, StoreError};

const FLAT_UPLOAD_SUFFIX: &str = ".upload";

impl Store {
    fn flat_name(&self, name: &str) -> Result<(), StoreError> {
        if !valid_component(name) || name.starts_with('.') {
            return Err(StoreError::Name(name.into()));
        }
        Ok(())
    }

    /// A flat store's partial upload of `name` (hidden: listings skip dotfiles).
    pub fn flat_upload_path(&self, name: &str) -> Result<PathBuf, StoreError> {
        self.flat_name(name)?;
        Ok(self.root.join(format!(".{name}{FLAT_UPLOAD_SUFFIX}")))
    }

    /// Whether a flat store has an entry called `name` (any kind, a dangling link too).
    pub fn flat_exists(&self, name: &str) -> Result<bool, StoreError> {
        self.flat_name(name)?;
        let path = self.root.join(name);
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("looking at", &path)(e)),
        }
    }

    /// Opens an upload's file for writing: created empty when `fresh`, else the existing one
    /// (`None` when there is none). Mode 0644, as the copier's files.
    pub fn open_upload(&self, path: &Path, fresh: bool) -> Result<Option<File>, StoreError> {
        let mut opts = OpenOptions::new();
        opts.write(true).read(true).mode(0o644);
        if fresh {
            opts.create(true).truncate(true);
        }
        match opts.open(path) {
            Ok(f) => Ok(Some(f)),
            Err(e) if !fresh && e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("opening", path)(e)),
        }
    }

    /// The `backing.tmp` of a Longhorn image directory, for an upload that resumes.
    pub fn upload_tmp(&self, name: &str, uuid: &str) -> PathBuf {
        self.image_dir(name, uuid).join(BACKING_TMP)
    }

    /// Publishes a complete flat upload: `partial` renamed to `DIR/<name>` unless that exists
    /// (`renameat2(RENAME_NOREPLACE)`: no check-then-rename race), then the directory synced.
    pub fn publish_flat(&self, partial: &Path, name: &str) -> Result<PathBuf, StoreError> {
        self.flat_name(name)?;
        let target = self.root.join(name);
        let cwd = rustix::fs::CWD;
        match rustix::fs::renameat_with(
            cwd,
            partial,
            cwd,
            &target,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {
                sync_dir(&self.root);
                Ok(target)
            }
            Err(rustix::io::Errno::EXIST) => Err(StoreError::Exists(name.into())),
            Err(e) => Err(io_err("renaming into", &target)(e.into())),
        }
    }

    /// Removes a file of an upload, if it is there.
    pub fn remove_upload(&self, path: &Path) -> Result<(), StoreError> {
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", path)(e)),
            _ => {
                if let Some(dir) = path.parent() {
                    sync_dir(dir);
                }
                Ok(())
            }
        }
    }

    /// Removes a flat store's image `name` (a file or a link; never a directory).
    pub fn remove_flat(&self, name: &str) -> Result<bool, StoreError> {
        self.flat_name(name)?;
        let path = self.root.join(name);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("looking at", &path)(e)),
            Ok(m) if m.is_dir() => return Err(StoreError::Name(name.into())),
            Ok(_) => {}
        }
        self.remove_upload(&path)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Layout;

    #[test]
    fn a_flat_upload_is_published_once_and_never_over_a_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("old.img"), b"old").unwrap();
        let store = Store::open_for_writes(dir.path(), Layout::Flat).unwrap();
        assert!(!dir.path().join("backing-images").exists());
        let part = store.flat_upload_path("new.img").unwrap();
        let mut f = store.open_upload(&part, true).unwrap().unwrap();
        io::Write::write_all(&mut f, b"new").unwrap();
        assert!(store.open_upload(&part, false).unwrap().is_some());
        // Hidden until published: the listing does not show it.
        let names: Vec<_> = store.list().unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["old.img"]);
        store.publish_flat(&part, "new.img").unwrap();
        assert_eq!(fs::read(dir.path().join("new.img")).unwrap(), b"new");
        let again = store.flat_upload_path("old.img").unwrap();
        store.open_upload(&again, true).unwrap();
        assert!(matches!(
            store.publish_flat(&again, "old.img"),
            Err(StoreError::Exists(_))
        ));
        assert_eq!(fs::read(dir.path().join("old.img")).unwrap(), b"old");
        assert!(store.flat_upload_path("../x").is_err());
        assert!(store.remove_flat("new.img").unwrap());
        assert!(!store.remove_flat("new.img").unwrap());
        assert_eq!(Layout::detect(dir.path()), Layout::Flat);
    }
}
