//! What one FUSE inode of an image view stands for while the kernel caches its pages.
//!
//! The kernel keeps one page cache per inode, shared by every open of it, and with
//! `FOPEN_KEEP_CACHE` across opens. So that no reader can be served pages of two versions of
//! a view, an inode is *bound* at its first open to the version of the view that open
//! produced ([`Version`]: the source's identity and, for an encrypt view, its LUKS2 header),
//! and never serves another: an open that produces a different version marks the inode
//! stale and answers `ESTALE`, on which the kernel looks the name up again
//! (`LOOKUP_REVAL`) and gets a new inode number, with an empty page cache. Every page of an
//! inode was therefore read through a handle of its one version, after which that handle's
//! identity check passed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use bifs_node::store::SourceIdentity;
use fuser::FileAttr;

/// The version of a view's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// The stored file the view reads, with every backing file it reads
    /// ([`SourceIdentity::with_chain`]).
    pub source: SourceIdentity,
    /// A fingerprint of an encrypt view's first 4 KiB (the LUKS2 binary header: a fresh
    /// UUID and the checksum of its metadata, so a new header, after a Secret rotation, is a
    /// new version even when the source did not change).
    pub header: Option<u64>,
}

/// The version an inode was bound to, with what `getattr` reports for it.
#[derive(Debug, Clone)]
pub struct Bound {
    pub version: Version,
    /// The stored file's path when bound (what inotify reports changes by).
    pub path: PathBuf,
    /// A qcow2 image reads its backing files too: a change beside it drops its pages.
    pub qcow2: bool,
    /// The backing files the view reads besides `path` (a qcow2 image's chain under raw/ and
    /// encrypt/): a write to any of them is a write to this view's source.
    pub chain: Vec<PathBuf>,
    /// Size, blocks and mtime of the bound version.
    pub attr: FileAttr,
}

/// Why an open may not use an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stale;

#[derive(Debug, Default)]
pub struct Binding {
    bound: Mutex<Option<Bound>>,
    /// The stored file an open of the still unbound inode is reading.
    opening: Mutex<Option<PathBuf>>,
    /// Bumped each time the source is reported written in place: a handle remembers the
    /// count at its open and fails its reads once it moved.
    writes: AtomicU64,
    /// Set once the inode must take no new opens; the next lookup of its name gets a new
    /// number.
    stale: AtomicBool,
}

impl Binding {
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds an unbound inode to `bound`, or checks that it is bound to the same version.
    /// A different version makes the inode stale.
    pub fn bind(&self, bound: Bound) -> Result<(), Stale> {
        let mut cur = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_stale() {
            return Err(Stale);
        }
        match &*cur {
            None => {
                *cur = Some(bound);
                Ok(())
            }
            Some(b) if b.version == bound.version => Ok(()),
            Some(_) => {
                self.mark_stale();
                Err(Stale)
            }
        }
    }

    pub fn bound(&self) -> Option<Bound> {
        self.bound.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// The source was written in place: reads through handles opened before fail, and no
    /// new open may use this inode.
    pub fn mark_written(&self) {
        self.stale.store(true, Ordering::SeqCst);
        self.writes.fetch_add(1, Ordering::SeqCst);
    }

    /// Records that an open of this inode reads the stored file at `path` (before it takes
    /// the write count and the file's identity).
    pub fn begin_open(&self, path: PathBuf) {
        *self.opening.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
    }

    /// The file an open of the unbound inode reads, if one is in progress.
    pub fn opening(&self) -> Option<PathBuf> {
        self.opening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The file an open of this still unbound inode reads was written: that open fails its
    /// reads (it may have taken the identity before the write and bind after it).
    pub fn note_write(&self) {
        self.writes.fetch_add(1, Ordering::SeqCst);
    }

    /// No new open may use this inode (its name may now lead to another version); handles
    /// already open keep reading their own version.
    pub fn mark_stale(&self) {
        self.stale.store(true, Ordering::SeqCst);
    }

    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    /// Identities of two distinct files (built from real metadata, whatever fields
    /// `SourceIdentity` has).
    fn identities() -> (SourceIdentity, SourceIdentity) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"a").unwrap();
        std::fs::write(dir.path().join("b"), b"bb").unwrap();
        (
            SourceIdentity::of_path(&dir.path().join("a")).unwrap(),
            SourceIdentity::of_path(&dir.path().join("b")).unwrap(),
        )
    }

    fn bound(source: SourceIdentity, header: Option<u64>) -> Bound {
        let t = SystemTime::UNIX_EPOCH;
        let size = 10;
        Bound {
            version: Version { source, header },
            path: "/s/a.img".into(),
            qcow2: false,
            chain: Vec::new(),
            attr: FileAttr {
                ino: fuser::INodeNo(5),
                size,
                blocks: 0,
                atime: t,
                mtime: t,
                ctime: t,
                crtime: t,
                kind: fuser::FileType::RegularFile,
                perm: 0o440,
                nlink: 1,
                uid: 0,
                gid: 0,
                rdev: 0,
                flags: 0,
                blksize: 4096,
            },
        }
    }

    #[test]
    fn one_version_per_inode() {
        let (a, b2) = identities();
        let b = Binding::new();
        assert!(b.bound().is_none());
        b.bind(bound(a, None)).unwrap();
        b.bind(bound(a, None)).unwrap();
        assert!(!b.is_stale());
        // Another source, or the same source under another header: stale for good.
        assert_eq!(b.bind(bound(b2, None)), Err(Stale));
        assert!(b.is_stale());
        assert_eq!(b.bind(bound(a, None)), Err(Stale));
        let b = Binding::new();
        b.bind(bound(a, Some(1))).unwrap();
        assert_eq!(b.bind(bound(a, Some(2))), Err(Stale));
    }

    #[test]
    fn a_write_moves_the_count_and_closes_the_inode() {
        let (a, _) = identities();
        let b = Binding::new();
        b.bind(bound(a, None)).unwrap();
        let at_open = b.writes();
        b.mark_written();
        assert_ne!(b.writes(), at_open);
        assert_eq!(b.bind(bound(a, None)), Err(Stale));
        // A stale mark alone keeps the count: open handles read on.
        let b = Binding::new();
        b.mark_stale();
        assert_eq!(b.writes(), 0);
        assert!(b.is_stale());
    }
}
