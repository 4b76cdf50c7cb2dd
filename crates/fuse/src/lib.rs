//! The FUSE adapter: kernel requests in, [`Catalog`] calls, replies out. Nothing here decides
//! what a view contains; it maps paths to nodes, handles to views, and errors to errnos.
//!
//! Every callback runs its work under `catch_unwind`: a panic in a worker thread would take
//! the whole mount down, so a bug becomes EIO and a log line instead.
//!
//! With the page cache on ([`CacheMode::KeepCache`], the default) three things keep a reader
//! from ever being served bytes of two versions of a view (docs/mount.md, "Page cache"):
//! - [`binding`]: each inode is bound to one version of its view; an open that finds another
//!   version gets `ESTALE` and the kernel retries it on a new inode, with an empty cache;
//! - bifs checks the source after every read it serves and fails the read (`EIO`) once the
//!   source changed: a page that was not cached is never of another version than those that
//!   were;
//! - [`invalidate`]: inotify on the store and the catalog's Secret-change hook drop the pages
//!   and names of the views a change touched right away, and fail reads of handles whose
//!   source was written in place. As a backstop for changes inotify does not see, the kernel
//!   asks for an image file's attributes again once they are [`CACHED_FILE_ATTR_TTL`] old
//!   (`FUSE_AUTO_INVAL_DATA`), and a bound inode whose source changed reports the source's new
//!   mtime, on which the kernel drops its pages.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, Request,
    SessionACL,
};

use bifs_core::io::ReadAt;
use bifs_node::store::{SourceIdentity, StoredImage};

pub mod binding;
pub mod invalidate;
pub mod tree;

pub use bifs_node::catalog::{Catalog, CatalogError, FileInfo, Mode};
pub use binding::{Binding, Bound, Version};
pub use invalidate::Invalidator;
pub use tree::{Inodes, Node};

/// How long the kernel may cache names, and the attributes of directories (and of every
/// file with direct I/O). Short: the store can change.
const TTL: Duration = Duration::from_secs(1);
/// How long the kernel may cache an image file's attributes with the page cache on. Short,
/// as a backstop to inotify: once they are older, the next `read(2)` asks again
/// (`FUSE_AUTO_INVAL_DATA`) and a changed source's pages are dropped before they are served.
/// Not zero: that asks on every `read(2)`, a round trip to bifs (about 60 us here) that
/// cost `cp` a tenth of its speed and made every cached 4 KiB read 70 times slower than a
/// page-cache hit (docs/performance.md, "The mount").
const CACHED_FILE_ATTR_TTL: Duration = Duration::from_millis(50);
/// `st_blksize`: tools size their reads from it, and big reads keep the XTS engine busy.
const BLKSIZE: u32 = 1 << 20;

/// How open files use the kernel page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// Page cache kept across opens (`FOPEN_KEEP_CACHE`), each inode bound to one version of
    /// its view and its pages dropped when its source or Secret changes: repeated reads are
    /// free and the kernel reads ahead for sequential readers such as `cp`.
    KeepCache,
    /// Every read goes to bifs (`FOPEN_DIRECT_IO`): no page cache, request size = read size.
    DirectIo,
}

/// What `bifs mount` asks of the session.
#[derive(Debug, Clone)]
pub struct MountOptions {
    pub allow_other: bool,
    pub threads: usize,
    pub cache: CacheMode,
}

impl MountOptions {
    /// The fuser session configuration: read-only, kernel permission checks, one request
    /// queue per worker thread (`clone_fd`).
    pub fn fuser_config(&self) -> fuser::Config {
        let mut cfg = fuser::Config::default();
        cfg.mount_options = vec![
            MountOption::FSName("bifs".into()),
            MountOption::Subtype("bifs".into()),
            MountOption::RO,
            MountOption::DefaultPermissions,
            MountOption::NoDev,
            MountOption::NoSuid,
        ];
        cfg.acl = if self.allow_other {
            SessionACL::All
        } else {
            SessionACL::Owner
        };
        cfg.n_threads = Some(self.threads.max(1));
        cfg.clone_fd = true;
        cfg
    }
}

/// Sets the kernel read-ahead, in KiB, of the mounted file system whose device is `dev`
/// (`major:minor`, as /proc/self/mountinfo gives it). FUSE mounts start at 128 KiB, which
/// splits a `cp` into 256 KiB requests; 512 KiB measured fastest for `cp` from a view (larger
/// windows leave the pages bifs writes out of the CPU cache by the time `cp` copies them:
/// docs/performance.md). Writing /sys needs root.
pub fn set_read_ahead(dev: &str, kib: u32) -> std::io::Result<()> {
    let valid = dev.split_once(':').is_some_and(|(a, b)| {
        [a, b]
            .iter()
            .all(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
    });
    if !valid {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a major:minor device number: {dev:?}"),
        ));
    }
    std::fs::write(
        format!("/sys/class/bdi/{dev}/read_ahead_kb"),
        format!("{kib}\n"),
    )
}

/// What the request handlers and the [`Invalidator`] share.
pub(crate) struct Shared {
    catalog: Arc<Catalog>,
    inodes: Inodes,
    /// Store changes, applied by opens and by the invalidator's thread.
    changes: invalidate::Changes,
    /// Set when the session ends: the invalidator's thread stops.
    stopped: AtomicBool,
}

/// One open file.
struct Handle {
    view: Arc<dyn ReadAt>,
    binding: Arc<Binding>,
    /// The binding's count of in-place writes when this handle was opened.
    writes: u64,
}

thread_local! {
    /// Each worker's read buffer, kept between requests: no allocation or zeroing per read.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

pub struct BifsFs {
    shared: Arc<Shared>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    uid: u32,
    gid: u32,
    mounted_at: SystemTime,
    cache: CacheMode,
}

impl BifsFs {
    pub fn new(catalog: impl Into<Arc<Catalog>>, opts: &MountOptions) -> Self {
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        Self {
            shared: Arc::new(Shared {
                catalog: catalog.into(),
                inodes: Inodes::new(),
                changes: invalidate::Changes::new(),
                stopped: AtomicBool::new(false),
            }),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            uid,
            gid,
            mounted_at: SystemTime::now(),
            cache: opts.cache,
        }
    }

    /// What drops cached pages when sources and Secrets change; start it with the session's
    /// notifier once the session exists ([`Invalidator::start`]).
    pub fn invalidator(&self) -> Invalidator {
        Invalidator::new(self.shared.clone())
    }

    fn catalog(&self) -> &Catalog {
        &self.shared.catalog
    }

    fn inodes(&self) -> &Inodes {
        &self.shared.inodes
    }

    fn dir_attr(&self, ino: u64) -> FileAttr {
        self.attr(ino, FileType::Directory, 0o550, 0, 0, self.mounted_at)
    }

    fn attr(
        &self,
        ino: u64,
        kind: FileType,
        perm: u16,
        size: u64,
        blocks: u64,
        mtime: SystemTime,
    ) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks,
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            flags: 0,
            blksize: BLKSIZE,
        }
    }

    fn file_attr(&self, ino: u64, info: &FileInfo) -> FileAttr {
        self.attr(
            ino,
            FileType::RegularFile,
            0o440,
            info.size,
            info.blocks,
            info.mtime,
        )
    }

    /// How long the kernel may keep `attr`.
    fn attr_ttl(&self, attr: &FileAttr) -> Duration {
        if self.cache == CacheMode::KeepCache && attr.kind == FileType::RegularFile {
            CACHED_FILE_ATTR_TTL
        } else {
            TTL
        }
    }

    /// Checks that `node` exists now and returns its attributes (with the inode number it has
    /// or would get: nothing is allocated here).
    fn stat(&self, node: &Node) -> Result<FileAttr, CatalogError> {
        let ino = self.inodes().ino(node);
        match node {
            Node::Root | Node::Mode(_) => {}
            Node::Namespace(_, ns) => {
                self.catalog().secrets_in(ns)?;
            }
            Node::Secret(_, s) => {
                self.catalog().check_secret(s)?;
            }
            Node::Image { mode, secret, name } => {
                let img = self.catalog().image(*mode, secret.as_ref(), name)?;
                self.retire_if_moved(ino, &img);
                let info = self.catalog().info(*mode, &img)?;
                return Ok(self.file_attr(ino, &info));
            }
        }
        Ok(self.dir_attr(ino))
    }

    /// Marks the binding of `ino` stale when its name now leads to another file, or its file
    /// changed, so that this lookup hands out a new number rather than one whose cached pages
    /// belong to the old version.
    fn retire_if_moved(&self, ino: u64, img: &StoredImage) {
        let Some(binding) = self.inodes().binding(ino) else {
            return;
        };
        let Some(bound) = binding.bound() else {
            return;
        };
        let same = bound.path == img.path
            && current(&bound).is_some_and(|now| now == bound.version.source);
        if !same {
            binding.mark_stale();
        }
    }

    /// The attributes of a bound inode: those of the version it holds (the size its pages
    /// and handles have), with the source's current mtime once the source changed, so that
    /// the kernel (`FUSE_AUTO_INVAL_DATA`) drops the pages it holds before the next read is
    /// served from them. A source that is gone reports the bound version as it was: its open
    /// handles still read the unlinked file.
    fn bound_attr(&self, ino: u64, bound: &Bound) -> FileAttr {
        let mut attr = bound.attr;
        attr.ino = INodeNo(ino);
        if let Some(now) = current(bound) {
            if now != bound.version.source {
                attr.mtime = mtime_of(&now);
                attr.ctime = attr.mtime;
            }
        }
        attr
    }

    /// Names below a directory node.
    fn children(&self, node: &Node) -> Result<Vec<(String, Node)>, CatalogError> {
        let names: Vec<String> = match node {
            Node::Root => Mode::ALL.iter().map(|m| m.name().to_owned()).collect(),
            Node::Mode(m) if m.keyed() => self.catalog().namespaces(),
            Node::Mode(m) | Node::Secret(m, _) => {
                if let Node::Secret(_, s) = node {
                    self.catalog().check_secret(s)?;
                }
                self.catalog()
                    .images(*m)?
                    .into_iter()
                    .map(|i| i.name)
                    .collect()
            }
            Node::Namespace(_, ns) => self.catalog().secrets_in(ns)?,
            Node::Image { .. } => return Ok(Vec::new()),
        };
        Ok(names
            .into_iter()
            .filter_map(|n| node.child(&n).map(|c| (n, c)))
            .collect())
    }

    fn handle<T>(&self, fh: FileHandle, f: impl FnOnce(&Handle) -> T) -> Option<T> {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .map(f)
    }

    fn view(&self, fh: FileHandle) -> Option<Arc<dyn ReadAt>> {
        self.handle(fh, |h| h.view.clone())
    }

    fn node(&self, ino: INodeNo) -> Result<Node, Errno> {
        self.inodes().node(ino.0).ok_or(Errno::ENOENT)
    }

    /// Binds `binding` (of inode `ino`) to the version `view` is of (page-cache mode):
    /// `Err(ESTALE)` when the inode holds another version, so the kernel looks the name up
    /// again.
    fn bind(
        &self,
        ino: u64,
        binding: &Binding,
        node: &Node,
        img: &StoredImage,
        view: &dyn ReadAt,
        source: SourceIdentity,
    ) -> Result<(), Errno> {
        let Node::Image { mode, .. } = node else {
            return Err(Errno::EISDIR);
        };
        let header = if *mode == Mode::Encrypt {
            Some(fingerprint(view).map_err(|e| io_errno(&e))?)
        } else {
            None
        };
        let size = view.len();
        let info = self.catalog().info(*mode, img).ok();
        let mtime = info.as_ref().map_or_else(|| mtime_of(&source), |i| i.mtime);
        let blocks = info
            .as_ref()
            .map_or(size.div_ceil(512), |i| i.blocks.min(size.div_ceil(512)));
        let chain = info.map(|i| i.chain).unwrap_or_default();
        // A backing file outside the directories the store watch covers (a subdirectory of
        // a flat store) is watched from now on.
        self.shared.changes.watch_chain(&chain);
        let bound = Bound {
            version: Version { source, header },
            path: img.path.clone(),
            qcow2: img.format == bifs_core::image::Format::Qcow2,
            chain,
            attr: self.attr(ino, FileType::RegularFile, 0o440, size, blocks, mtime),
        };
        match binding.bind(bound) {
            Ok(()) => Ok(()),
            Err(binding::Stale) => {
                tracing::debug!(
                    path = path_of(node),
                    ino,
                    "the view changed since this inode was bound; ESTALE makes the kernel look it up again"
                );
                Err(Errno::ESTALE)
            }
        }
    }
}

/// A fingerprint of a view's first 4 KiB (for an encrypt view, its LUKS2 binary header).
fn fingerprint(view: &dyn ReadAt) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 4096.min(usize::try_from(view.len()).unwrap_or(4096))];
    bifs_core::io::read_full_at(view, 0, &mut buf)?;
    // Fixed keys: the same bytes give the same value for the life of the process.
    Ok(BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(&buf))
}

/// The identity the files of `bound` have now, by path (the stored file and its backing
/// chain), or `None` when one of them is gone.
fn current(bound: &Bound) -> Option<SourceIdentity> {
    let top = SourceIdentity::of_path(&bound.path).ok()?;
    if bound.chain.is_empty() {
        return Some(top);
    }
    let chain = bound
        .chain
        .iter()
        .map(|p| SourceIdentity::of_path(p))
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    Some(top.with_chain(&chain))
}

/// The latest modification time of the files `id` covers.
fn mtime_of(id: &SourceIdentity) -> SystemTime {
    let ns = u64::try_from(id.latest_mtime_ns()).unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_nanos(ns)
}

/// Logs why a path was refused and gives its errno. Wrong passphrases are what an operator
/// needs to see, and a refused open; names that do not exist (an unknown image, namespace or
/// Secret) and lookups of refused combinations stay at debug: shells and tools probe names,
/// and anyone who can reach the mount must not be able to fill the log with them.
fn refuse(op: &str, node: &Node, e: &CatalogError) -> Errno {
    let path = path_of(node);
    match e {
        CatalogError::NoImage(_)
        | CatalogError::UnknownSecret(_)
        | CatalogError::UnknownNamespace(_) => tracing::debug!(op, path, "{e}"),
        CatalogError::Refused { .. } if op != "open" => {
            tracing::debug!(op, path, "refused: {e}")
        }
        CatalogError::Refused { .. } => tracing::info!(op, path, "refused: {e}"),
        CatalogError::WrongPassphrase { .. } => tracing::warn!(op, path, "refused: {e}"),
        _ => tracing::error!(op, path, "{e}"),
    }
    Errno::from_i32(e.errno())
}

fn path_of(node: &Node) -> String {
    match node {
        Node::Root => "/".into(),
        Node::Mode(m) => m.name().into(),
        Node::Namespace(m, ns) => format!("{}/{ns}", m.name()),
        Node::Secret(m, s) => format!("{}/{}/{}", m.name(), s.namespace, s.name),
        Node::Image {
            mode,
            secret: None,
            name,
        } => format!("{}/{name}", mode.name()),
        Node::Image {
            mode,
            secret: Some(s),
            name,
        } => {
            format!("{}/{}/{}/{name}", mode.name(), s.namespace, s.name)
        }
    }
}

/// Runs `f`, turning a panic into EIO.
fn guarded<T>(op: &str, f: impl FnOnce() -> Result<T, Errno>) -> Result<T, Errno> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        tracing::error!(op, "bug: a request handler panicked; answering EIO");
        Err(Errno::EIO)
    })
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Filesystem for BifsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Read ahead as far as the kernel allows: `cp` reads sequentially.
        //
        // Deliberately left at their defaults: no writeback cache, fuser's 16 MiB max_write and
        // the kernel's unlimited max_read. Kernels with FUSE large folios ("fuse: enable large
        // folios", not in 6.18) cache a file in folios of up to min(max_write, max_read,
        // max_pages) only under those settings; a small max_write on this read-only mount
        // would keep a first (cold) `cp` allocating 4 KiB pages in the reader's thread, which
        // is most of what it costs over a plain `cp` (docs/performance.md).
        let _ = config
            .set_max_readahead(u32::MAX)
            .or_else(|max| config.set_max_readahead(max));
        if self.cache == CacheMode::KeepCache {
            // A page cache that the kernel drops when a file's mtime or size changes, checked
            // on every read (attributes never cached): see the module documentation.
            if let Err(missing) = config.add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA) {
                tracing::warn!(
                    ?missing,
                    "the kernel lacks FUSE_AUTO_INVAL_DATA: a reader may be served cached pages of \
                     a changed source until inotify's invalidation arrives (never pages of two \
                     versions); use --cache direct-io to rule that out"
                );
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = guarded("lookup", || {
            let parent = self.node(parent)?;
            let node = name
                .to_str()
                .and_then(|n| parent.child(n))
                .ok_or(Errno::ENOENT)?;
            let mut attr = self.stat(&node).map_err(|e| refuse("lookup", &node, &e))?;
            // Only a name that exists gets a number, counted until the kernel forgets it.
            let ino = self.inodes().lookup(&node);
            attr.ino = INodeNo(ino);
            // A number still bound to the current version answers for that version.
            if let Some(bound) = self.inodes().binding(ino).and_then(|b| b.bound()) {
                attr = self.bound_attr(ino, &bound);
            }
            Ok(attr)
        });
        match r {
            Ok(attr) => reply.entry_with_ttls(&self.attr_ttl(&attr), &TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        // fuser's default `batch_forget` calls this once per inode (its argument type is not
        // public, so it cannot be overridden). The kernel dropped the inode's pages with it.
        self.inodes().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = guarded("getattr", || {
            // Asked by a read(2) once the attributes are CACHED_FILE_ATTR_TTL old: a bound
            // inode answers with one stat of its source.
            if let Some(bound) = self.inodes().binding(ino.0).and_then(|b| b.bound()) {
                return Ok(self.bound_attr(ino.0, &bound));
            }
            let node = self.node(ino)?;
            self.stat(&node).map_err(|e| refuse("getattr", &node, &e))
        });
        match r {
            Ok(attr) => reply.attr(&self.attr_ttl(&attr), &attr),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = guarded("open", || {
            if flags.acc_mode() != OpenAccMode::O_RDONLY {
                return Err(Errno::EROFS);
            }
            let node = self.node(ino)?;
            let Node::Image { mode, secret, name } = &node else {
                return Err(Errno::EISDIR);
            };
            // Every write whose event is queued happened before this open: count it now, not
            // against the version this open is about to bind.
            self.shared
                .changes
                .catch_up(self.inodes(), self.catalog().store());
            // The kernel opens only numbers it looked up, and lookup gives image nodes one.
            let binding = self.inodes().binding(ino.0).ok_or(Errno::ESTALE)?;
            if self.cache == CacheMode::KeepCache && binding.is_stale() {
                // Before any work: the kernel retries on a fresh lookup.
                return Err(Errno::ESTALE);
            }
            let img = self
                .catalog()
                .image(*mode, secret.as_ref(), name)
                .map_err(|e| refuse("open", &node, &e))?;
            binding.begin_open(img.path.clone());
            // Taken before the source's identity is: a write reported from here on fails
            // this handle's reads.
            let writes = binding.writes();
            let (view, identity) = self
                .catalog()
                .open(*mode, secret.as_ref(), &img)
                .map_err(|e| refuse("open", &node, &e))?;
            let flags = match self.cache {
                CacheMode::DirectIo => FopenFlags::FOPEN_DIRECT_IO,
                CacheMode::KeepCache => {
                    self.bind(ino.0, &binding, &node, &img, &*view, identity)?;
                    FopenFlags::FOPEN_KEEP_CACHE
                }
            };
            let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
            self.handles
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    fh,
                    Handle {
                        view,
                        binding,
                        writes,
                    },
                );
            Ok((fh, flags))
        });
        match r {
            Ok((fh, flags)) => reply.opened(FileHandle(fh), flags),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        READ_BUF.with_borrow_mut(|buf| {
            let r = guarded("read", || {
                let (view, binding, writes) = self
                    .handle(fh, |h| (h.view.clone(), h.binding.clone(), h.writes))
                    .ok_or(Errno::EBADF)?;
                let want = (size as u64).min(view.len().saturating_sub(offset)) as usize;
                if buf.len() < want {
                    buf.resize(want, 0);
                }
                let mut done = 0;
                loop {
                    // At least one call, also at the end of the file: it checks the source.
                    match view.read_at(offset + done as u64, &mut buf[done..want]) {
                        Ok(0) => break,
                        Ok(n) => done += n,
                        Err(e) => {
                            tracing::error!(ino = ino.0, offset, size, error = %e, "read failed");
                            return Err(io_errno(&e));
                        }
                    }
                    if done >= want {
                        break;
                    }
                }
                // Checked after the read, as the view checks its source: a write reported
                // while it ran fails it.
                if binding.writes() != writes {
                    tracing::debug!(
                        ino = ino.0,
                        offset,
                        "source written in place since this handle was opened; EIO"
                    );
                    return Err(Errno::EIO);
                }
                Ok(done)
            });
            match r {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => reply.error(e),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = guarded("readdir", || {
            let node = self.node(ino)?;
            if !node.is_dir() {
                return Err(Errno::ENOTDIR);
            }
            let children = self
                .children(&node)
                .map_err(|e| refuse("readdir", &node, &e))?;
            let mut entries = vec![
                (ino.0, FileType::Directory, ".".to_owned()),
                (
                    self.inodes().ino(&node.parent()),
                    FileType::Directory,
                    "..".to_owned(),
                ),
            ];
            for (name, child) in children {
                let kind = if child.is_dir() {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                entries.push((self.inodes().ino(&child), kind, name));
            }
            Ok(entries)
        });
        match r {
            Ok(entries) => {
                for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize)
                {
                    if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let r = guarded("lseek", || {
            let view = self.view(fh).ok_or(Errno::EBADF)?;
            let off = u64::try_from(offset).map_err(|_| Errno::ENXIO)?;
            if off >= view.len() {
                return Err(Errno::ENXIO);
            }
            let found = match whence {
                libc::SEEK_DATA => view
                    .next_data(off)
                    .map_err(|e| io_errno(&e))?
                    .ok_or(Errno::ENXIO)?,
                libc::SEEK_HOLE => view.next_hole(off).map_err(|e| io_errno(&e))?,
                // SEEK_SET/CUR/END never reach a FUSE filesystem; the kernel does them.
                _ => return Err(Errno::EINVAL),
            };
            i64::try_from(found).map_err(|_| Errno::EOVERFLOW)
        });
        match r {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    // ENOSYS makes the kernel stop asking for the rest of the mount: no xattrs here.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, BLKSIZE, 255, BLKSIZE);
    }
}
