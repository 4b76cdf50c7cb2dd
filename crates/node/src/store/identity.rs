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
    /// For a view that reads a qcow2 image's backing files too (raw/, encrypt/), a digest of
    /// every backing file's identity ([`Self::with_chain`]); 0 for a view of one file.
    #[serde(default)]
    pub chain: u64,
    /// The latest modification time among the backing files (0 without a chain).
    #[serde(default)]
    pub chain_mtime_ns: i128,
}

impl SourceIdentity {
    pub fn of(meta: &Metadata) -> Self {
        Self {
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
            dev: meta.dev(),
            ino: meta.ino(),
            chain: 0,
            chain_mtime_ns: 0,
        }
    }

    /// This identity of a top file, covering the backing files `chain` (their own
    /// identities, in chain order) too: a change of any of them changes it. Unchanged without
    /// a chain.
    pub fn with_chain(self, chain: &[SourceIdentity]) -> Self {
        use sha2::Digest;
        if chain.is_empty() {
            return self;
        }
        let mut h = sha2::Sha256::new();
        for id in chain {
            h.update(id.dev.to_le_bytes());
            h.update(id.ino.to_le_bytes());
            h.update(id.size.to_le_bytes());
            h.update(id.mtime_ns.to_le_bytes());
            h.update(id.ctime_ns.to_le_bytes());
        }
        let mut first = [0u8; 8];
        first.copy_from_slice(&h.finalize()[..8]);
        Self {
            // Never 0, which means "no chain".
            chain: u64::from_le_bytes(first) | 1,
            chain_mtime_ns: chain.iter().map(|c| c.mtime_ns).max().unwrap_or(0),
            ..self
        }
    }

    /// The identity of the top file alone.
    pub fn top(&self) -> Self {
        Self {
            chain: 0,
            chain_mtime_ns: 0,
            ..*self
        }
    }

    /// The latest modification time of the files this identity covers.
    pub fn latest_mtime_ns(&self) -> i128 {
        self.mtime_ns.max(self.chain_mtime_ns)
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
///
/// A view of a qcow2 image also reads its backing files: those are checked the same way
/// ([`Self::with_chain`]), so a backing file written in place fails the reads as the top
/// file would. A view without a chain pays one `fstat` per read, as before.
pub struct Watched {
    inner: Arc<dyn ReadAt>,
    top: Pin,
    chain: Vec<Pin>,
    reported: AtomicBool,
}

/// A file of a qcow2 image's backing chain, as opened for a view: its own descriptor (the
/// one the view reads), its path (normalized: what the store watch reports changes by) and
/// its identity at that open.
#[derive(Debug)]
pub struct ChainFile {
    pub file: File,
    pub path: PathBuf,
    pub identity: SourceIdentity,
}

/// One watched file.
struct Pin {
    file: File,
    path: PathBuf,
    /// The identity reads are checked against, and the link count that goes with it.
    baseline: Mutex<(SourceIdentity, u64)>,
}

impl Pin {
    fn new(file: File, path: PathBuf, identity: SourceIdentity) -> Self {
        let nlink = file.metadata().map(|m| m.nlink()).unwrap_or(0);
        Self {
            file,
            path,
            baseline: Mutex::new((identity, nlink)),
        }
    }

    /// `Err((opened size, size now))` once the file changed.
    fn check(&self) -> io::Result<Result<(), (u64, u64)>> {
        let meta = self.file.metadata()?;
        let now = SourceIdentity::of(&meta);
        let mut base = self.baseline.lock().unwrap_or_else(|e| e.into_inner());
        if now == base.0 {
            return Ok(Ok(()));
        }
        let only_ctime = SourceIdentity {
            ctime_ns: base.0.ctime_ns,
            ..now
        } == base.0;
        if only_ctime && meta.nlink() != base.1 {
            *base = (now, meta.nlink());
            return Ok(Ok(()));
        }
        Ok(Err((base.0.size, now.size)))
    }
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
        Self {
            inner,
            top: Pin::new(file, path, identity.top()),
            chain: Vec::new(),
            reported: AtomicBool::new(false),
        }
    }

    /// Also fails the reads once any of the backing files `chain` changes.
    pub fn with_chain(mut self, chain: Vec<ChainFile>) -> Self {
        self.chain = chain
            .into_iter()
            .map(|c| Pin::new(c.file, c.path, c.identity))
            .collect();
        self
    }

    fn check(&self) -> io::Result<()> {
        for pin in std::iter::once(&self.top).chain(&self.chain) {
            if let Err((opened_size, size)) = pin.check()? {
                if !self.reported.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        source = ?self.top.path,
                        changed = ?pin.path,
                        opened_size, size,
                        "source image changed while a view of it was open; failing its reads \
                         with EIO (close and reopen the file to read the new content)"
                    );
                }
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
        }
        Ok(())
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
    fn a_backing_file_written_fails_reads_and_changes_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let (top, base) = (dir.path().join("top"), dir.path().join("base"));
        std::fs::write(&top, vec![1u8; 8192]).unwrap();
        std::fs::write(&base, vec![1u8; 8192]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let (bfile, bid) = Watched::open(&base).unwrap();
        let top_id = SourceIdentity::of_path(&top).unwrap();
        let id = top_id.with_chain(&[bid]);
        assert_ne!(id, top_id);
        assert_eq!(id.top(), top_id);
        assert_eq!(top_id.with_chain(&[]), top_id);
        let view = watched(&top).with_chain(vec![ChainFile {
            file: bfile,
            path: base.clone(),
            identity: bid,
        }]);
        let mut buf = [0u8; 512];
        view.read_at(0, &mut buf).unwrap();
        let f = OpenOptions::new().write(true).open(&base).unwrap();
        f.write_all_at(&[2u8; 512], 0).unwrap();
        let e = view.read_at(0, &mut buf).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        let now = top_id.with_chain(&[SourceIdentity::of_path(&base).unwrap()]);
        assert_ne!(now, id, "a backing file written keeps the identity");
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
