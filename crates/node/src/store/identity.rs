//! Which version of a stored file a view was built from, and a guard that fails reads once the
//! file changes under an open view (so a reader never gets a silent mix of old and new bytes).

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use bifs_core::io::ReadAt;

/// Size, modification time and inode of a stored file: what changes when it is rewritten in
/// place, replaced by a rename, or truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceIdentity {
    pub size: u64,
    pub mtime_ns: i128,
    pub dev: u64,
    pub ino: u64,
}

impl SourceIdentity {
    pub fn of(meta: &Metadata) -> Self {
        Self {
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
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
pub struct Watched {
    inner: Arc<dyn ReadAt>,
    file: File,
    path: PathBuf,
    identity: SourceIdentity,
    reported: AtomicBool,
}

impl Watched {
    /// Opens `path` for watching (FIFO-safe, see [`bifs_core::image::open_image_file`]) and returns
    /// it with the identity the view is pinned to. Build the view from this same descriptor
    /// (`try_clone` it): a second open by path could meet another inode after a rename.
    pub fn open(path: &Path) -> io::Result<(File, SourceIdentity)> {
        let file = bifs_core::image::open_image_file(path)?;
        let identity = SourceIdentity::of(&file.metadata()?);
        Ok((file, identity))
    }

    pub fn new(
        inner: Arc<dyn ReadAt>,
        file: File,
        path: PathBuf,
        identity: SourceIdentity,
    ) -> Self {
        Self {
            inner,
            file,
            path,
            identity,
            reported: AtomicBool::new(false),
        }
    }

    fn check(&self) -> io::Result<()> {
        let now = SourceIdentity::of(&self.file.metadata()?);
        if now == self.identity {
            return Ok(());
        }
        if !self.reported.swap(true, Ordering::Relaxed) {
            tracing::error!(
                source = %self.path.display(),
                opened_size = self.identity.size, size = now.size,
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
