//! Which version of a stored file a view was built from, and a guard that fails reads once the
//! file changes under an open view (so a reader never gets a silent mix of old and new bytes).

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use bifs_core::io::ReadAt;

/// Size, modification time, change time and inode of a stored file: what changes when it is
/// rewritten in place, replaced by a rename, or truncated.
///
/// The change time (`st_ctime`) is what catches a writer that puts the modification time back
/// (`touch -d`, `utimensat`, `rsync --times`): only the kernel sets it, to "now", on every
/// write, truncation and time change. Both times have the file system's timestamp
/// granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceIdentity {
    pub size: u64,
    pub mtime_ns: i128,
    /// 0 in records written before it was kept (they then read as changed once).
    #[serde(default)]
    pub ctime_ns: i128,
    pub dev: u64,
    pub ino: u64,
}

impl SourceIdentity {
    pub fn of(meta: &Metadata) -> Self {
        Self {
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    pub fn of_path(path: &Path) -> io::Result<Self> {
        Ok(Self::of(&std::fs::metadata(path)?))
    }
}

/// A view over a stored file that checks, after every read, that the file is still the one
/// the view was built from. Checked after the read so that a change during it is caught too.
/// It holds its own descriptor: `fstat` on it sees in-place writes and truncation; a file
/// replaced by rename keeps serving the old inode consistently, which is not a mix.
///
/// A change of the link count (the file renamed over, unlinked, or hard-linked) moves the
/// change time without touching the bytes: when the link count moved and only the change time
/// with it, the view goes on from the new change time.
pub struct Watched {
    inner: Arc<dyn ReadAt>,
    file: File,
    path: PathBuf,
    /// The identity reads are checked against, and the link count that goes with it.
    baseline: Mutex<(SourceIdentity, u64)>,
    reported: AtomicBool,
}

impl Watched {
    /// Opens `path` for watching (FIFO-safe, see [`bifs_core::image::open_image_file`]) and returns
    /// it with the identity the view is pinned to. Build the view from this same descriptor
    /// (`try_clone` it): a second open by path could meet another inode after a rename.
    pub fn open(path: &Path) -> io::Result<(File, SourceIdentity)> {
        Self::pin(bifs_core::image::open_image_file(path)?)
    }

    /// [`Self::open`] of a file already opened (by the store, beneath its root).
    pub fn pin(file: File) -> io::Result<(File, SourceIdentity)> {
        let identity = SourceIdentity::of(&file.metadata()?);
        Ok((file, identity))
    }

    pub fn new(
        inner: Arc<dyn ReadAt>,
        file: File,
        path: PathBuf,
        identity: SourceIdentity,
    ) -> Self {
        let nlink = file.metadata().map(|m| m.nlink()).unwrap_or(0);
        Self {
            inner,
            file,
            path,
            baseline: Mutex::new((identity, nlink)),
            reported: AtomicBool::new(false),
        }
    }

    fn check(&self) -> io::Result<()> {
        let meta = self.file.metadata()?;
        let now = SourceIdentity::of(&meta);
        let mut base = self.baseline.lock().unwrap_or_else(|e| e.into_inner());
        if now == base.0 {
            return Ok(());
        }
        let only_ctime = SourceIdentity {
            ctime_ns: base.0.ctime_ns,
            ..now
        } == base.0;
        if only_ctime && meta.nlink() != base.1 {
            *base = (now, meta.nlink());
            return Ok(());
        }
        let opened_size = base.0.size;
        drop(base);
        if !self.reported.swap(true, Ordering::Relaxed) {
            tracing::error!(
                source = ?self.path,
                opened_size, size = now.size,
                "source image changed while a view of it was open; failing its reads with EIO \
                 (close and reopen the file to read the new content)"
            );
        }
        Err(io::Error::from_raw_os_error(libc::EIO))
    }
}

impl ReadAt for Watched {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let r = self.inner.read_at(offset, buf);
        self.check()?;
        r
    }

    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        let r = self.inner.next_data(offset);
        self.check()?;
        r
    }

    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        let r = self.inner.next_hole(offset);
        self.check()?;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{FileTimes, OpenOptions};
    use std::os::unix::fs::FileExt;

    fn watched(path: &Path) -> Watched {
        let (file, id) = Watched::open(path).unwrap();
        let raw = bifs_core::image::raw::RawFile::from_file(file.try_clone().unwrap()).unwrap();
        Watched::new(Arc::new(raw), file, path.to_path_buf(), id)
    }

    #[test]
    fn a_write_whose_mtime_is_put_back_fails_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.img");
        std::fs::write(&path, vec![1u8; 8192]).unwrap();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let view = watched(&path);
        let mut buf = [0u8; 512];
        view.read_at(0, &mut buf).unwrap();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[2u8; 512], 4096).unwrap();
        f.set_times(FileTimes::new().set_modified(mtime)).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
        let e = view.read_at(0, &mut buf).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    }

    #[test]
    fn a_new_link_or_a_rename_over_it_is_not_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.img");
        std::fs::write(&path, vec![1u8; 8192]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let view = watched(&path);
        let mut buf = [0u8; 512];
        std::fs::hard_link(&path, dir.path().join("b.img")).unwrap();
        view.read_at(0, &mut buf).unwrap();
        std::fs::write(dir.path().join("new"), vec![3u8; 8192]).unwrap();
        std::fs::rename(dir.path().join("new"), &path).unwrap();
        std::fs::remove_file(dir.path().join("b.img")).unwrap();
        view.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, [1u8; 512]);
    }
}
