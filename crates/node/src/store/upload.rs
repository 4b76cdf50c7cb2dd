//! Where an upload's bytes land: in place, in the store's own layout, so completing it is a
//! rename (never a second copy). A Longhorn disk receives it in the image directory's
//! `backing.tmp` ([`Store::prepare_dir`], [`Store::create_tmp`], [`Store::commit`]); a flat
//! store in a hidden file beside the images, `DIR/.<name>.upload`, renamed to `DIR/<name>`
//! (never over an existing file). The upload workflow itself is
//! [`crate::longhorn::upload`].

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::atomic::sync_dir;
use super::layout::BACKING_TMP;
use super::{io_err, valid_component, Store, StoreError, DEFAULT_STATE_DIR};

const FLAT_UPLOAD_SUFFIX: &str = ".upload";

/// What the request that started an upload (offset 0) announced, kept in the store's state
/// directory (`.bifs/uploads/NAME.json`, mode 0600) while the upload waits for its rest:
/// every resume must present `id` and may not change `size` or `checksum`, so two clients
/// never merge their bytes into one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadTicket {
    pub id: String,
    pub size: u64,
    /// The expected SHA-512 the start gave (verified at the end); empty when none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub checksum: String,
    /// A Longhorn disk's image directory uuid (`backing-images/NAME-UUID`); empty in a flat
    /// store.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uuid: String,
}

/// Opens `path` read-write without following a symlink at it or at its directory; `fresh`
/// creates it (`O_CREAT|O_EXCL`, mode 0644).
fn open_no_follow(path: &Path, fresh: bool) -> io::Result<File> {
    use rustix::fs::{openat, Mode, OFlags, CWD};
    let (Some(parent), Some(file_name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    let dir = openat(
        CWD,
        parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if fresh {
        flags |= OFlags::CREATE | OFlags::EXCL;
    }
    Ok(File::from(openat(
        &dir,
        file_name,
        flags,
        Mode::from_raw_mode(0o644),
    )?))
}

fn remove_file_if_exists(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", path)(e)),
        _ => Ok(()),
    }
}

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

    /// Opens an upload's file for writing: created afresh when `fresh` (a leftover regular
    /// file is removed first), else the existing one (`None` when there is none). Mode 0644,
    /// as the copier's files. Never through a symlink, neither the file nor its directory
    /// (`O_NOFOLLOW`; a fresh file is `O_CREAT|O_EXCL`), and only a regular file with one link:
    /// anything else is [`StoreError::NotRegular`] and nothing is written.
    pub fn open_upload(&self, path: &Path, fresh: bool) -> Result<Option<File>, StoreError> {
        if fresh {
            match fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_file() => remove_file_if_exists(path)?,
                Ok(_) => return Err(self.not_regular(path)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("looking at", path)(e)),
            }
        }
        match open_no_follow(path, fresh) {
            Ok(f) => {
                let m = f.metadata().map_err(io_err("reading", path))?;
                if !m.file_type().is_file() || m.nlink() != 1 {
                    return Err(self.not_regular(path));
                }
                Ok(Some(f))
            }
            Err(e) if !fresh && e.kind() == io::ErrorKind::NotFound => Ok(None),
            // A symlink (ELOOP, or ENOTDIR for a linked directory), or one planted between
            // the removal and the creation (EEXIST).
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ELOOP) | Some(libc::ENOTDIR) | Some(libc::EEXIST)
                ) =>
            {
                Err(self.not_regular(path))
            }
            Err(e) => Err(io_err("opening", path)(e)),
        }
    }

    /// [`StoreError::NotRegular`] for `path`, named relative to the store.
    pub fn not_regular(&self, path: &Path) -> StoreError {
        StoreError::NotRegular(path.strip_prefix(&self.root).unwrap_or(path).to_path_buf())
    }

    fn tickets_dir(&self) -> PathBuf {
        self.root.join(DEFAULT_STATE_DIR).join("uploads")
    }

    fn ticket_path(&self, name: &str) -> Result<PathBuf, StoreError> {
        self.flat_name(name)?;
        Ok(self.tickets_dir().join(format!("{name}.json")))
    }

    /// What the start of `name`'s upload announced, if an upload of it is under way.
    pub fn read_ticket(&self, name: &str) -> Result<Option<UploadTicket>, StoreError> {
        let path = self.ticket_path(name)?;
        let text = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .and_then(|mut f| {
                let mut t = Vec::new();
                io::Read::read_to_end(&mut f, &mut t).map(|_| t)
            });
        super::disk::parse_json_if_any(path, text)
    }

    /// Keeps what the start of `name`'s upload announced (mode 0600, beside the records:
    /// never in a view or a listing), replacing an earlier upload's.
    pub fn write_ticket(&self, name: &str, ticket: &UploadTicket) -> Result<(), StoreError> {
        let path = self.ticket_path(name)?;
        let dir = self.tickets_dir();
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        super::disk::write_private_json(&path, ticket)
    }

    /// Forgets `name`'s upload (it completed, failed, or the image was deleted).
    pub fn remove_ticket(&self, name: &str) -> Result<(), StoreError> {
        let path = self.ticket_path(name)?;
        remove_file_if_exists(&path)
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

    #[test]
    fn an_upload_file_is_never_opened_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, b"victim").unwrap();
        let store = Store::open_for_writes(dir.path(), Layout::Flat).unwrap();
        let part = store.flat_upload_path("x.img").unwrap();
        // A symlink: refused fresh and resumed, the target untouched.
        std::os::unix::fs::symlink(&victim, &part).unwrap();
        for fresh in [true, false] {
            match store.open_upload(&part, fresh) {
                Err(StoreError::NotRegular(p)) => assert_eq!(p, Path::new(".x.img.upload")),
                other => panic!("fresh={fresh}: {other:?}"),
            }
        }
        fs::remove_file(&part).unwrap();
        // A hard link (a second name of a file elsewhere on the file system): refused.
        fs::hard_link(&victim, &part)
            .or_else(|_| fs::copy(&victim, &part).map(|_| ()))
            .unwrap();
        if fs::metadata(&part).unwrap().nlink() == 2 {
            assert!(matches!(
                store.open_upload(&part, false),
                Err(StoreError::NotRegular(_))
            ));
        }
        assert_eq!(fs::read(&victim).unwrap(), b"victim");
        // The image directory a symlink: refused (ENOTDIR/ELOOP on the directory).
        let linked = dir.path().join("linked");
        std::os::unix::fs::symlink(outside.path(), &linked).unwrap();
        assert!(matches!(
            store.open_upload(&linked.join("backing.tmp"), true),
            Err(StoreError::NotRegular(_))
        ));
        assert!(!outside.path().join("backing.tmp").exists());
    }

    #[test]
    fn a_ticket_is_kept_private_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_writes(dir.path(), Layout::Flat).unwrap();
        assert_eq!(store.read_ticket("x.img").unwrap(), None);
        let t = UploadTicket {
            id: "0123456789abcdef".into(),
            size: 1024,
            checksum: String::new(),
            uuid: String::new(),
        };
        store.write_ticket("x.img", &t).unwrap();
        assert_eq!(store.read_ticket("x.img").unwrap(), Some(t));
        let path = dir.path().join(".bifs/uploads/x.img.json");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        store.remove_ticket("x.img").unwrap();
        assert_eq!(store.read_ticket("x.img").unwrap(), None);
        assert!(store
            .write_ticket(
                "../x",
                &UploadTicket {
                    id: String::new(),
                    size: 0,
                    checksum: String::new(),
                    uuid: String::new(),
                }
            )
            .is_err());
    }
}
